"""`herald watch TABLE --capture wal`: what capture from the write-ahead log needs
on the server and the table, checked and set up (daemon/wal_capture.py reads it).

The database gets one logical replication slot (``herald_<database>``, made
when the first table is captured this way, dropped by the daemon once none is
and it has read the slot to its end) and the publication ``herald_capture``.
Each table captured from the WAL is in the publication and has REPLICA
IDENTITY FULL, and no trigger of Herald's.
"""

from __future__ import annotations

import re

import asyncpg

from config.database import quote_ident, quote_qualified
from config.errors import HeraldConfigError
from daemon.wal_capture import PUBLICATION

CHECKS = """
SELECT current_setting('wal_level') AS wal_level, current_user AS role,
       (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) AS may_replicate,
       pg_has_role(c.relowner, 'USAGE') AS owns_table, pg_get_userbyid(c.relowner) AS owner,
       has_database_privilege(current_database(), 'CREATE') AS may_create,
       EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2) AS publication_exists,
       EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE p.pubname = $2 AND pr.prrelid = c.oid) AS published,
       current_database() AS database, current_setting('server_version_num')::int AS version,
       c.relkind::text AS kind
FROM pg_class c WHERE c.oid = $1::regclass
"""
SLOT = "SELECT slot_name FROM herald.wal_capture"
SLOT_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
CREATE_SLOT = "SELECT pg_create_logical_replication_slot($1, 'pgoutput')"
RECORD_SLOT = "INSERT INTO herald.wal_capture (slot_name, publication) VALUES ($1, $2) ON CONFLICT DO NOTHING"
LOCK_SLOT = "SELECT slot_name FROM herald.wal_capture FOR UPDATE"


def slot_name(database: str) -> str:
    """The database's slot: slot names are the server's, [a-z0-9_] and at most 63 characters."""
    return ("herald_" + re.sub(r"[^a-z0-9_]", "_", database.lower()))[:63]


async def check(conn: asyncpg.Connection, table: str) -> asyncpg.Record:
    """What the server and Herald's role have for capturing ``table`` from the WAL;
    raises HeraldConfigError naming everything missing."""
    have = await conn.fetchrow(CHECKS, quote_qualified(table), PUBLICATION)
    missing = []
    if have["kind"] == "p":
        missing.append(f"{table} is partitioned: capture it with triggers (without --capture wal)")
    if have["wal_level"] != "logical":
        missing.append(f"the server's wal_level is {have['wal_level']}, and reading changes from the WAL needs"
                       " logical: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
    if not have["may_replicate"]:
        missing.append(f"Herald's role {have['role']} may not read a replication slot:"
                       f" ALTER ROLE {quote_ident(have['role'])} REPLICATION;")
    if not have["owns_table"]:
        missing.append(f"only {table}'s owner ({have['owner']}) may publish it and set its replica identity:"
                       f" GRANT {quote_ident(have['owner'])} TO {quote_ident(have['role'])}; or run this as the owner")
    if not have["publication_exists"] and not have["may_create"]:
        missing.append(f"Herald's role may not create the publication {PUBLICATION}:"
                       f" GRANT CREATE ON DATABASE {quote_ident(have['database'])} TO {quote_ident(have['role'])};")
    if missing:
        raise HeraldConfigError("--capture wal: " + "; ".join(missing))
    return have


async def ensure_slot(conn: asyncpg.Connection, database: str) -> str:
    """The database's slot, made if there is none. Outside a transaction: PostgreSQL
    makes a logical slot only in a transaction that has written nothing."""
    name = await conn.fetchval(SLOT) or slot_name(database)
    if not await conn.fetchval(SLOT_EXISTS, name):  # none yet, or lost: made (again)
        try:
            await conn.execute(CREATE_SLOT, name)
        except asyncpg.DuplicateObjectError:
            pass  # another `herald watch` made it meanwhile
    await conn.execute(RECORD_SLOT, name, PUBLICATION)
    return name


async def install(conn: asyncpg.Connection, table: str, have: asyncpg.Record, triggers: tuple[str, ...]) -> None:
    """In the caller's transaction: ``table`` captured from the WAL from its commit on.

    Its capture ``triggers`` go in the same transaction (which waits for the
    application's open writes to the table), so every change is captured by
    exactly one of the two: a trigger's event before, the slot's after.
    """
    if await conn.fetchval(LOCK_SLOT) is None:
        raise HeraldConfigError("the daemon dropped the unused replication slot meanwhile: run the command again")
    target = quote_qualified(table)
    for trigger in triggers:
        await conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(trigger)} ON {target}")
    await conn.execute(f"ALTER TABLE {target} REPLICA IDENTITY FULL")
    if not have["publication_exists"]:
        # Generated columns too (PostgreSQL 18), as to_jsonb(row) in the trigger has them.
        options = " WITH (publish_generated_columns = stored)" if have["version"] >= 180000 else ""
        await conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {target}{options}")
    elif not have["published"]:
        await conn.execute(f"ALTER PUBLICATION {PUBLICATION} ADD TABLE {target}")


async def remove(conn: asyncpg.Connection, table: str) -> bool:
    """In the caller's transaction: ``table`` no longer captured from the WAL (its
    changes committed before are still read). Whether it was."""
    published = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid"
        " WHERE p.pubname = $2 AND pr.prrelid = $1::regclass)", quote_qualified(table), PUBLICATION)
    if published:
        await conn.execute(f"ALTER PUBLICATION {PUBLICATION} DROP TABLE {quote_qualified(table)}")
    return bool(published)
