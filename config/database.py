"""Connections to PostgreSQL and Herald's migrations.

Driver errors are wrapped here (``raise HeraldDatabaseError(...) from exc``)
so callers handle one exception type.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import asyncpg
import structlog

from config.errors import HeraldDatabaseError
from config.settings import redact_url

log = structlog.get_logger(__name__)

# What a lost or restarting database looks like to a caller that should wait and try again.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, OSError, HeraldDatabaseError,
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


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection
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


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks, in order; return their names.

    Each migration runs in its own transaction together with its record, so a
    failed one leaves nothing half-applied. Safe to run twice, and from two
    processes at once (an advisory lock serialises them).
    """
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """
                CREATE SCHEMA IF NOT EXISTS herald;
                CREATE TABLE IF NOT EXISTS herald.schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            done = {
                row["version"]
                for row in await conn.fetch("SELECT version FROM herald.schema_migrations")
            }
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO herald.schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("migration applied", migration=name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    except asyncpg.PostgresError as exc:
        raise HeraldDatabaseError(f"migration failed: {exc}") from exc
    return applied_now


def quote_ident(name: str) -> str:
    """Quote one SQL identifier (a table or column name) safely."""
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(qualified: str) -> str:
    """Quote ``schema.table`` as two identifiers."""
    schema, _, table = qualified.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(table)}"
