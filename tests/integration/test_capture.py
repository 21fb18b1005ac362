"""Migrations and `herald watch` on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from config.database import migrate, migration_files
from config.errors import HeraldConfigError
from daemon.capture import Relation, watch_table
from daemon.demo import load_demo


async def test_migrate_twice_applies_nothing_the_second_time(conn: asyncpg.Connection) -> None:
    # The template database is already migrated; running again is a no-op.
    assert await migrate(conn) == []
    recorded = await conn.fetch("SELECT version, name FROM herald.schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in recorded] == [(v, n) for v, n, _ in migration_files()]
    tables = {r["table_name"] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'herald'")}
    assert {"events", "runs", "steps", "messages", "workflows", "watched_tables"} <= tables


async def test_demo_tables_are_watched_with_relations(conn: asyncpg.Connection) -> None:
    assert await load_demo(conn) is True
    assert await load_demo(conn) is False  # second load changes nothing
    watched = {r["table_name"]: r for r in await conn.fetch("SELECT * FROM herald.watched_tables")}
    assert set(watched) == {"public.jobs", "public.clients", "public.invoices"}
    jobs = watched["public.jobs"]
    assert jobs["entity"] == "job" and jobs["tenant_column"] == "organization_id"
    assert jobs["relations"]["client"] == {
        "table": "public.clients", "column": "client_id", "key": "id", "key_type": "bigint"}
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE is_active") == 2


async def test_changes_become_events_in_the_same_transaction(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    notified: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("herald_events", lambda *args: notified.put_nowait(args[3]))
    async with conn.transaction():
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
        await conn.execute("UPDATE jobs SET status = status WHERE id = 2")  # changes nothing
        await conn.execute(
            "INSERT INTO jobs (id, organization_id, client_id, title) VALUES (50, 2, 4, 'New job')")
        await conn.execute("DELETE FROM jobs WHERE id = 50")
    events = await conn.fetch("SELECT * FROM herald.events ORDER BY id")
    assert [(e["type"], e["operation"], e["row_id"], e["tenant_id"]) for e in events] == [
        ("job.updated", "UPDATE", "1", "1"),
        ("job.created", "INSERT", "50", "2"),
        ("job.deleted", "DELETE", "50", "2"),
    ]
    update = events[0]
    assert update["old"]["status"] == "in_progress" and update["new"]["status"] == "completed"
    assert events[1]["old"] is None and events[2]["new"] is None
    assert all(e["state"] == "pending" for e in events)
    # One wake-up per transaction, however many rows it changed, delivered at commit:
    # the next transaction's is the only other one that arrives.
    assert await asyncio.wait_for(notified.get(), 5) == ""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 2")
    assert await asyncio.wait_for(notified.get(), 5) == ""
    assert notified.empty()


async def test_rolled_back_change_leaves_no_event(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        async with conn.transaction():
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
            await conn.execute("UPDATE jobs SET status = 'exploded' WHERE id = 2")
    assert await conn.fetchval("SELECT count(*) FROM herald.events") == 0


async def test_watch_rejects_what_does_not_exist(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    with pytest.raises(HeraldConfigError, match="does not exist"):
        await watch_table(conn, "public.nope")
    with pytest.raises(HeraldConfigError, match="no column 'org'"):
        await watch_table(conn, "jobs", tenant_column="org")
    with pytest.raises(HeraldConfigError, match="no column 'customer_id'"):
        await watch_table(conn, "jobs", relations=(Relation("client", "clients", "customer_id"),))
    with pytest.raises(HeraldConfigError, match="NAME=TABLE:COLUMN"):
        Relation.parse("client-clients")


async def test_table_without_tenant_column_uses_default_tenant(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    assert (await watch_table(conn, "notes")).table == "public.notes"
    await conn.execute("INSERT INTO notes (body) VALUES ('hello')")
    event = await conn.fetchrow("SELECT entity, tenant_id, new FROM herald.events")
    assert (event["entity"], event["tenant_id"], event["new"]["body"]) == ("note", "default", "hello")
