"""Time triggers: invoice overdue, client inactive, cron.

One daemon at a time evaluates them: the leader holds a PostgreSQL advisory
lock on a dedicated connection, and when it dies the lock is released with
its session and another daemon takes over. Each pass writes an ordinary
outbox event (operation SCHEDULED, aimed at the one workflow) for every
entity that has become due, together with a row in herald.schedule_fires
keyed by entity and occurrence, so nothing fires twice across passes or
restarts. The usual dispatcher and workers take it from there.

One tenant's workflow can neither stop nor block the others: each workflow's
pass runs in its own transaction, and a workflow that fails for a reason of
its own (a schedule that never comes, a column that is gone, a table it may
not read) is logged, marked in herald.workflows.schedule_error and skipped
until it is saved again. Only a lost database ends the pass early.

A time trigger reads only tables Herald watches (herald.watched_tables), never
Herald's own schema, and only the rows of its workflow's tenant: a row whose
tenant column is NULL belongs to nobody, and a watched table without a tenant
column belongs to the ``default`` tenant, as its events do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from croniter import croniter

from actors.model.triggers import PRIVATE_SCHEMAS, TIME_TRIGGERS, Trigger, parse_trigger
from config.database import DATABASE_ERRORS, connect, quote_ident, quote_qualified
from config.errors import HeraldDatabaseError, WorkflowValidationError
from daemon.loops import every

log = structlog.get_logger(__name__)

LEADER_LOCK = 0x4845_5253  # "HERS": the scheduler's advisory lock

# Marked workflows are skipped until they are saved again (import clears the mark).
TIME_WORKFLOWS = """
SELECT id, tenant_id, definition, created_at, updated_at FROM herald.workflows
WHERE is_active AND schedule_error IS NULL AND trigger_type = ANY($1::text[])
ORDER BY id
"""

# Only if the workflow is still the one that failed: a save in between wins.
MARK_ERROR = """
UPDATE herald.workflows SET schedule_error = $3, schedule_error_at = clock_timestamp()
WHERE id = $1 AND updated_at = $2 AND schedule_error IS NULL
"""

# A table as the scheduler may read it: resolved, and whether (and how) Herald watches it.
RESOLVE_SOURCE = """
SELECT n.nspname AS schema_name, n.nspname || '.' || c.relname AS table_name,
       w.table_name IS NOT NULL AS watched, w.id_column, w.tenant_column
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN herald.watched_tables w ON w.table_name = n.nspname || '.' || c.relname
WHERE c.oid = to_regclass($1)
"""

HAS_COLUMN = """
SELECT EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped)
"""

# SQLSTATE classes that mean a workflow's own query is wrong (22: a value out of
# range; 42: an undefined table or column, no privilege; 0A: not supported),
# not that the database is in trouble: such a workflow is marked, not retried.
WORKFLOW_FAULTS = ("22", "42", "0A")

# A fire not recorded yet for this workflow and occurrence: the unique key makes it once only.
# The entity (row_id) tells retention which fires a newer occurrence replaced (daemon/retention.py).
RECORD_FIRES = """
INSERT INTO herald.schedule_fires (workflow_id, fire_key, row_id)
SELECT $1, k, r FROM unnest($2::text[], $3::text[]) AS f(k, r)
ON CONFLICT DO NOTHING
RETURNING fire_key
"""

WRITE_EVENT = """
INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new, workflow_id)
VALUES ($1, $2, $3, $4, 'SCHEDULED', $5, $6, $7)
RETURNING id
"""

LINK_FIRE = "UPDATE herald.schedule_fires SET event_id = $3 WHERE workflow_id = $1 AND fire_key = $2"

NOTIFY = "SELECT pg_notify('herald_events', $1::text)"


@dataclass(frozen=True)
class Source:
    """A table a time trigger may read: watched by Herald, outside Herald's schema."""

    table: str  # schema-qualified, as in herald.watched_tables
    id_column: str
    tenant_column: str | None  # None: every row is the default tenant's, as its events are

    def tenant_filter(self, alias: str, param: str) -> str:
        """SQL keeping only the rows of the tenant in ``param`` (a NULL tenant matches nobody)."""
        if self.tenant_column is None:
            return f"{param}::text = 'default'"
        return f"{alias}.{quote_ident(self.tenant_column)}::text = {param}::text"


async def readable_source(conn: asyncpg.Connection, table: str, field: str) -> Source:
    """The watched table ``table`` names; WorkflowValidationError if a time trigger may not read it."""
    row = await conn.fetchrow(RESOLVE_SOURCE, table)
    if row is None:
        raise WorkflowValidationError(field, f"table {table!r} does not exist")
    if row["schema_name"] in PRIVATE_SCHEMAS or row["schema_name"].startswith("pg_"):
        raise WorkflowValidationError(
            field, f"{row['table_name']} is one of Herald's own or the system's tables; "
            "a time trigger reads only tables Herald watches")
    if not row["watched"]:
        raise WorkflowValidationError(
            field, f"{row['table_name']} is not watched by Herald; a time trigger reads only watched tables"
            f" (herald watch {row['table_name']})")
    return Source(row["table_name"], row["id_column"], row["tenant_column"])


async def check_time_trigger(conn: asyncpg.Connection, trigger: Trigger) -> None:
    """Check a time trigger against the database, as a workflow is saved: its tables
    are watched and readable and have the columns it names. No-op for other triggers."""
    if trigger.config is None or trigger.name not in FINDERS:
        return
    config = trigger.config
    if trigger.name == "invoice_overdue":
        tables = {"table": ("due_column", "status_column")}
    else:
        tables = {"table": ("created_column",), "activity_table": ("activity_column", "activity_foreign_key")}
    for table_key, column_keys in tables.items():
        source = await readable_source(conn, config[table_key], f"trigger_config.{table_key}")
        for key in column_keys:
            if not await conn.fetchval(HAS_COLUMN, quote_qualified(source.table), config[key]):
                raise WorkflowValidationError(
                    f"trigger_config.{key}", f"{source.table} has no column {config[key]!r}")


async def overdue_invoices(conn: asyncpg.Connection, config: dict[str, Any], tenant: str,
                           now: dt.datetime) -> tuple[str, list[Any]]:
    source = await readable_source(conn, config["table"], "trigger_config.table")
    due = quote_ident(config["due_column"])
    rows = await conn.fetch(
        f"SELECT t.{quote_ident(source.id_column)}::text AS row_id, t.{due}::text AS occurrence,"
        f" to_jsonb(t) AS row"
        f" FROM {quote_qualified(source.table)} t"
        f" WHERE t.{due} + make_interval(days => $1) < $2::timestamptz"
        f" AND NOT (t.{quote_ident(config['status_column'])}::text = ANY($3::text[]))"
        f" AND {source.tenant_filter('t', '$4')}",
        config["days"], now, config["settled_statuses"], tenant)
    return source.table, list(rows)


async def inactive_clients(conn: asyncpg.Connection, config: dict[str, Any], tenant: str,
                           now: dt.datetime) -> tuple[str, list[Any]]:
    clients = await readable_source(conn, config["table"], "trigger_config.table")
    activity = await readable_source(conn, config["activity_table"], "trigger_config.activity_table")
    client_id = f"c.{quote_ident(clients.id_column)}"
    last = (f"coalesce(max(a.{quote_ident(config['activity_column'])}),"
            f" c.{quote_ident(config['created_column'])})")
    # Another tenant's activity rows never count, even if they name this client.
    rows = await conn.fetch(
        f"SELECT {client_id}::text AS row_id, {last}::text AS occurrence, to_jsonb(c) AS row"
        f" FROM {quote_qualified(clients.table)} c"
        f" LEFT JOIN {quote_qualified(activity.table)} a"
        f" ON a.{quote_ident(config['activity_foreign_key'])} = {client_id}"
        f" AND {activity.tenant_filter('a', '$3')}"
        f" WHERE {clients.tenant_filter('c', '$3')}"
        f" GROUP BY {client_id} HAVING {last} < $1::timestamptz - make_interval(days => $2)",
        now, config["days"], tenant)
    return clients.table, list(rows)


def last_cron_instant(config: dict[str, Any], now: dt.datetime) -> dt.datetime:
    """The latest scheduled instant at or before ``now`` (missed ones before it are not replayed)."""
    local = now.astimezone(ZoneInfo(config["timezone"]))
    if croniter.match(config["schedule"], local.replace(second=0, microsecond=0)):
        return local.replace(second=0, microsecond=0).astimezone(dt.UTC)
    instant: dt.datetime = croniter(config["schedule"], local).get_prev(dt.datetime)
    return instant.astimezone(dt.UTC)


Finder = Callable[[asyncpg.Connection, dict[str, Any], str, dt.datetime], Any]
FINDERS: dict[str, Finder] = {"invoice_overdue": overdue_invoices, "client_inactive": inactive_clients}


class Scheduler:
    """Fires time triggers while this daemon is the leader."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, interval_s: float) -> None:
        self.dsn = dsn
        self.pool = pool
        self.interval_s = interval_s
        self._leader_conn: asyncpg.Connection | None = None

    async def is_leader(self) -> bool:
        """Hold (or try to take) the leader lock on a dedicated connection."""
        if self._leader_conn is not None and not self._leader_conn.is_closed():
            return True
        self._leader_conn = None
        conn = await connect(self.dsn, server_settings={"application_name": "herald-scheduler"})
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
            self._leader_conn = conn
            log.info("scheduler leads")
            return True
        await conn.close()
        return False

    async def close(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except (*DATABASE_ERRORS, TimeoutError):
                conn.terminate()  # the server is gone: drop the socket

    async def run(self, stop: asyncio.Event) -> None:
        async def lead() -> None:
            if await self.is_leader():
                await self.tick()

        try:
            # After an outage the leader connection is dropped and the lock taken anew.
            await every(self.interval_s, lead, stop, name="scheduler pass", on_outage=self.close)
        finally:
            await self.close()

    async def tick(self, now: dt.datetime | None = None) -> int:
        """One pass over every active time-triggered workflow; returns events written.

        Each workflow is evaluated in its own transaction: one that fails is rolled
        back, recorded (see :meth:`_failed`) and the pass goes on with the others.
        """
        now = now or dt.datetime.now(dt.UTC)
        written = 0
        async with self.pool.acquire() as conn:
            for workflow in await conn.fetch(TIME_WORKFLOWS, sorted(TIME_TRIGGERS)):
                try:
                    async with conn.transaction():
                        written += await self._fire(conn, workflow, _trigger(workflow), now)
                except Exception as exc:  # whatever one workflow raises stays with that workflow
                    if _is_outage(exc, conn):
                        raise  # the loop waits for the database to come back; no workflow is at fault
                    await self._failed(conn, workflow, exc)
        if written:
            log.info("time triggers fired", events=written)
        return written

    async def _failed(self, conn: asyncpg.Connection, workflow: Any, exc: Exception) -> None:
        """Log why the workflow's pass failed and mark it invalid, unless the failure may pass."""
        ids = {"workflow_id": str(workflow["id"]), "tenant_id": workflow["tenant_id"]}
        if isinstance(exc, asyncpg.PostgresError) and not str(exc.sqlstate or "").startswith(WORKFLOW_FAULTS):
            # Deadlock, lock or statement timeout, out of memory...: try it again next pass.
            log.warning("time trigger failed; will try again", **ids, error=str(exc),
                        error_type=type(exc).__name__)
            return
        reason = _reason(exc)
        log.error("time trigger failed; workflow marked invalid until it is saved again",
                  **ids, error=reason, error_type=type(exc).__name__)
        await conn.execute(MARK_ERROR, workflow["id"], workflow["updated_at"], reason)

    async def _fire(self, conn: asyncpg.Connection, workflow: Any, trigger: Trigger, now: dt.datetime) -> int:
        assert trigger.config is not None and trigger.scheduled_type is not None
        if trigger.name == "cron":
            instant = last_cron_instant(trigger.config, now)
            if instant < workflow["created_at"]:
                return 0  # the schedule's first instant after the workflow was made is still ahead
            table, rows = "", [{"row_id": "schedule", "occurrence": instant.isoformat(),
                                "row": {"scheduled_for": instant.isoformat(), "schedule": trigger.config["schedule"]}}]
        else:
            table, rows = await FINDERS[trigger.name](conn, trigger.config, workflow["tenant_id"], now)
        if not rows:
            return 0
        by_key = {f"{r['row_id']}:{r['occurrence']}": r for r in rows}
        # In the workflow's transaction (see tick): fires and their events commit together.
        fresh = await conn.fetch(RECORD_FIRES, workflow["id"], list(by_key),
                                 [row["row_id"] for row in by_key.values()])
        for record in fresh:
            row = by_key[record["fire_key"]]
            event_id = await conn.fetchval(
                WRITE_EVENT, workflow["tenant_id"], trigger.entity, table or "schedule",
                row["row_id"], trigger.scheduled_type, row["row"], workflow["id"])
            await conn.execute(LINK_FIRE, workflow["id"], record["fire_key"], event_id)
            await conn.execute(NOTIFY, str(event_id))  # delivered at commit, like the capture trigger's
        return len(fresh)


def _trigger(workflow: Any) -> Trigger:
    """The workflow's time trigger, validated as on import (the row may predate the rules)."""
    definition = workflow["definition"]
    if not isinstance(definition, dict):
        raise WorkflowValidationError("(document)", "a workflow must be a JSON object")
    name = definition.get("trigger_type") or definition.get("trigger")
    return parse_trigger(name, "trigger", definition.get("trigger_config"))


def _is_outage(exc: Exception, conn: asyncpg.Connection) -> bool:
    """Whether ``exc`` says the database (not the workflow) is in trouble: the pass ends."""
    if conn.is_closed():
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(exc, asyncpg.PostgresConnectionError) or str(exc.sqlstate or "").startswith("57P")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False  # a query argument the driver cannot send (e.g. out of range): the workflow's
    return isinstance(exc, (asyncpg.InterfaceError, OSError, TimeoutError, HeraldDatabaseError))


def _reason(exc: Exception) -> str:
    """What is wrong, for people reading the workflow's mark."""
    if isinstance(exc, WorkflowValidationError):
        reason = str(exc)
    elif isinstance(exc, asyncpg.PostgresError):
        reason = f"database error: {exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return reason[:1000]
