"""Connections to PostgreSQL and Herald's migrations.

Driver errors are wrapped here (``raise HeraldDatabaseError(...) from exc``)
so callers handle one exception type.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import Any

import asyncpg
import structlog

from config.errors import HeraldDatabaseError
from config.settings import redact_url

log = structlog.get_logger(__name__)

# What a lost or restarting database looks like to a caller that should wait and try again.
# InternalClientError too: a connection the server closes in the middle of an operation
# can leave asyncpg's protocol "another operation is in progress"; the pool drops that
# connection when it comes back, and the next attempt gets a new one.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError,
    HeraldDatabaseError,
)

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Serialises concurrent `herald migrate` runs against one database.
MIGRATION_LOCK_ID = 0x4845_5241  # "HERA"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python objects, not strings.
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog"
        )


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs when it comes back, besides what asyncpg always
    does (roll back a transaction left open, drop listener callbacks): nothing.

    Herald keeps no session state on pooled connections: its settings are
    transaction-local (``set_config(..., true)``), and its LISTENs and session
    advisory locks (listener, scheduler leader, migrations) live on dedicated
    connections. asyncpg's default reset query (``RESET ALL``, ``CLOSE ALL``,
    ``UNLISTEN *``, ``pg_advisory_unlock_all()``) would cost a round trip on
    every release, about ten per event.
    """


def _json_dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _json_loads(value: str) -> Any:
    return json.loads(value)


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(dsn, **kwargs)
    except (OSError, asyncpg.PostgresError) as exc:
        raise HeraldDatabaseError(f"cannot connect to PostgreSQL at {redact_url(dsn)}: {exc}") from exc
    await _init_connection(conn)
    return conn


# The array types Herald's statements take, introspected together when a pooled
# connection opens: asyncpg knows only text[] and oid[] by itself and otherwise
# looks each one up (three round trips and a catalog query each) the first time
# a statement on that connection uses it, in the middle of an event's work.
_ARRAY_TYPES = "SELECT NULL::bigint[], NULL::int[], NULL::uuid[], NULL::jsonb[]"


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      generic_plans: bool = False) -> asyncpg.Pool:
    """A pool of connections set up as :func:`connect`'s; ``generic_plans``: for pools
    whose statements are Herald's own few, by key, run at a high rate (the worker's)."""

    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        await conn.fetchrow(_ARRAY_TYPES)
        if generic_plans:
            # The worker's statements run thousands of times with the same shape,
            # mostly with one id in their array: PostgreSQL would plan
            # each run again (a custom plan is always cheaper for one id than a plan
            # for any number), which cost more than executing them (about 2.5 ms of
            # its CPU per event at 50 events/s, `pg_stat_statements`). Plans made once
            # per connection serve every batch size because the statements reach rows
            # by key (see CLAIM_RUNS in actors/store.py on partial indexes). Not the
            # daemon's: its one statement per event plans in microseconds, and its
            # retention and health queries take ranges, whose plans should see them.
            # A session setting: poolers must pool sessions anyway (README,
            # Connection budgets).
            await conn.execute("SET plan_cache_mode = force_generic_plan")

    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=init, reset=_no_session_state
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise HeraldDatabaseError(f"cannot connect to PostgreSQL at {redact_url(dsn)}: {exc}") from exc
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration shipped with Herald, in order."""
    found = []
    for entry in resources.files("config.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise HeraldDatabaseError(f"two migrations share a number: {versions}")
    return found


# Who is migrating, and what they may do with Herald's schema (NULLs: it does not exist).
MIGRATING_ROLE = """
SELECT current_user AS role, quote_ident(current_user) AS role_sql, current_database() AS database,
       has_database_privilege(current_database(), 'CREATE') AS may_create_schema,
       n.oid IS NOT NULL AS schema_exists,
       pg_get_userbyid(n.nspowner) AS schema_owner,
       has_schema_privilege(n.oid, 'USAGE') AS schema_usage,
       has_schema_privilege(n.oid, 'CREATE') AS schema_create,
       EXISTS (SELECT FROM pg_class c
               WHERE c.relnamespace = n.oid AND c.relname = 'schema_migrations') AS has_record,
       EXISTS (SELECT FROM pg_class c
               WHERE c.relnamespace = n.oid AND c.relname = 'schema_migrations'
                 AND has_table_privilege(c.oid, 'SELECT')) AS reads_record
FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = 'herald'
"""

# Objects in Herald's schema whose owner the migrating role is not (nor a member
# of): a migration that alters one fails with "must be owner of ...". Indexes and
# identity sequences go with their table.
NOT_OWNED = """
SELECT kind, name, pg_get_userbyid(owner) AS owner
FROM (
    SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                          WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
           'herald.' || quote_ident(c.relname) AS name, c.relowner AS owner
    FROM pg_class c
    WHERE c.relnamespace = 'herald'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND NOT c.relispartition
    UNION ALL
    SELECT 'FUNCTION', 'herald.' || quote_ident(p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           p.proowner
    FROM pg_proc p
    WHERE p.pronamespace = 'herald'::regnamespace
) AS o
WHERE NOT pg_has_role(owner, 'USAGE')
ORDER BY kind DESC, name
"""

CREATE_RECORD = """
CREATE TABLE herald.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def _ensure_schema(conn: asyncpg.Connection) -> asyncpg.Record:
    """Herald's schema, made if the role may and it is missing; HeraldDatabaseError naming
    the missing grant, and the SQL that gives it, if the role can do nothing with it."""
    who = await conn.fetchrow(MIGRATING_ROLE)
    role, database = who["role"], who["database"]
    if not who["schema_exists"]:
        if not who["may_create_schema"]:
            raise HeraldDatabaseError(
                f'role "{role}" may not create schema herald in database "{database}" (no CREATE'
                f" privilege on the database): run as the database owner or a superuser:"
                f" CREATE SCHEMA herald AUTHORIZATION {who['role_sql']};"
            )
        await conn.execute("CREATE SCHEMA IF NOT EXISTS herald")
        return await conn.fetchrow(MIGRATING_ROLE)  # type: ignore[no-any-return]
    if not who["schema_usage"] or (not who["has_record"] and not who["schema_create"]):
        raise HeraldDatabaseError(_schema_not_ours(who))
    return who


def _schema_not_ours(who: asyncpg.Record) -> str:
    missing = "USAGE" if not who["schema_usage"] else "CREATE"
    return (
        f'schema herald in database "{who["database"]}" belongs to role "{who["schema_owner"]}"'
        f' and role "{who["role"]}" has no {missing} privilege on it: run as "{who["schema_owner"]}"'
        f" or a superuser: ALTER SCHEMA herald OWNER TO {who['role_sql']};"
    )


async def _check_may_migrate(conn: asyncpg.Connection, who: asyncpg.Record) -> None:
    """Before applying migrations: the role may create in the schema and owns what is in it."""
    not_owned = await conn.fetch(NOT_OWNED)
    if who["schema_create"] and not not_owned:
        return
    if not not_owned:
        raise HeraldDatabaseError(_schema_not_ours(who))
    owners = ", ".join(sorted({f'role "{row["owner"]}"' for row in not_owned}))
    owners_or = " or ".join(sorted({f'"{row["owner"]}"' for row in not_owned}))
    fixes = [] if who["schema_create"] else [f"ALTER SCHEMA herald OWNER TO {who['role_sql']};"]
    fixes += [f"ALTER {row['kind']} {row['name']} OWNER TO {who['role_sql']};" for row in not_owned]
    shown = ", ".join(row["name"].split("(")[0] for row in not_owned[:2])
    more = f" and {len(not_owned) - 2} more" if len(not_owned) > 2 else ""
    raise HeraldDatabaseError(
        f'role "{who["role"]}" does not own Herald\'s objects in schema herald of database'
        f' "{who["database"]}" ({shown}{more} belong to {owners}), so it may not migrate them:'
        f" run as {owners_or} or a superuser: {' '.join(fixes)}"
    )


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks, in order; return their names.

    Each migration runs in its own transaction together with its record, so a
    failed one leaves nothing half-applied. Safe to run twice, and from two
    processes at once (an advisory lock serialises them).

    No superuser is needed: the role needs either CREATE on the database (to
    make the schema) or a schema ``herald`` it owns (``CREATE SCHEMA herald
    AUTHORIZATION role``). A role that cannot is told, in one line, which grant
    is missing and the SQL that gives it. With nothing to apply, reading
    herald.schema_migrations is all it takes.
    """
    applied_now: list[str] = []
    name: str | None = None  # the migration being applied, for the error
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            who = await _ensure_schema(conn)
            if not who["reads_record"]:  # a new schema, or a record this role may not even read
                await _check_may_migrate(conn, who)
            if not who["has_record"]:
                await conn.execute(CREATE_RECORD)
            done = {
                row["version"]
                for row in await conn.fetch("SELECT version FROM herald.schema_migrations")
            }
            pending = [m for m in migration_files() if m[0] not in done]
            if pending and who["reads_record"]:
                await _check_may_migrate(conn, who)
            for version, name, sql in pending:
                with _notes_of(conn, name):
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO herald.schema_migrations (version, name) VALUES ($1, $2)",
                            version,
                            name,
                        )
                log.info("migration applied", migration=name)
                applied_now.append(name)
            name = None
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    except asyncpg.PostgresError as exc:
        where = f"migration {name}" if name else "migration"
        raise HeraldDatabaseError(f"{where} failed: {exc}") from exc
    return applied_now


# A migration says what it could not do, and what to run about it, in a NOTICE
# beginning with this (config/migrations/019_capture_per_statement.sql).
HERALD_NOTICE = "herald: "


@contextlib.contextmanager
def _notes_of(conn: asyncpg.Connection, migration: str) -> Iterator[None]:
    """Log, as warnings, the notices of Herald's own that a migration raises while it
    runs (PostgreSQL's, such as "already exists, skipping", are not for the user)."""
    def note(_conn: Any, message: Any) -> None:
        text = str(getattr(message, "message", message))
        if text.startswith(HERALD_NOTICE):
            log.warning("migration note", migration=migration, note=text.removeprefix(HERALD_NOTICE))

    conn.add_log_listener(note)
    try:
        yield
    finally:
        conn.remove_log_listener(note)


def quote_ident(name: str) -> str:
    """Quote one SQL identifier (a table or column name) safely."""
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(qualified: str) -> str:
    """Quote ``schema.table`` as two identifiers."""
    schema, _, table = qualified.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(table)}"
