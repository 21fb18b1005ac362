"""Migrations and `herald watch` on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import structlog

from config.database import connection, migrate, migration_files
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


# -- capture per statement (migration 019) ------------------------------------------------------

ITEMS = """
CREATE TABLE items (id int PRIMARY KEY, org text, n int NOT NULL DEFAULT 0, meta json, spot point)
"""


async def test_every_row_of_a_statement_is_an_event_with_its_own_old_and_new(conn: asyncpg.Connection) -> None:
    await conn.execute(ITEMS)
    await watch_table(conn, "items", tenant_column="org")
    await conn.execute("INSERT INTO items (id, org, meta, spot) SELECT g, CASE WHEN g = 7 THEN '' ELSE 'acme' END,"
                       " json_build_object('g', g), point(g, g) FROM generate_series(1, 300) g")
    # One UPDATE changing every third row (the others it leaves as they were: no
    # event), a json column among them, and one moving rows to new keys.
    await conn.execute("UPDATE items SET n = CASE WHEN id % 3 = 0 THEN id ELSE n END,"
                       " meta = CASE WHEN id % 3 = 0 THEN json_build_object('changed', id) ELSE meta END")
    await conn.execute("UPDATE items SET id = id + 1000 WHERE id > 290")
    await conn.execute("DELETE FROM items WHERE id > 1295")
    events = await conn.fetch("SELECT type, row_id, tenant_id, state, old, new FROM herald.events ORDER BY id")
    by_type: dict[str, list[asyncpg.Record]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    created = by_type["item.created"]
    assert [e["row_id"] for e in created] == [str(g) for g in range(1, 301)]
    assert all(e["old"] is None and e["new"]["id"] == int(e["row_id"]) for e in created)
    assert [(e["tenant_id"], e["state"]) for e in created if e["row_id"] == "7"] == [("", "failed")]
    assert {(e["tenant_id"], e["state"]) for e in created if e["row_id"] != "7"} == {("acme", "pending")}

    updated = by_type["item.updated"]
    changed = [e for e in updated if e["old"]["id"] == e["new"]["id"]]
    assert sorted(int(e["row_id"]) for e in changed) == list(range(3, 301, 3))
    for event in changed:  # each event's old row is the same row's, before
        row = int(event["row_id"])
        assert (event["old"]["n"], event["new"]["n"]) == (0, row)
        assert (event["old"]["meta"], event["new"]["meta"]) == ({"g": row}, {"changed": row})
    moved = [e for e in updated if e["old"]["id"] != e["new"]["id"]]
    assert sorted((e["old"]["id"], e["new"]["id"], e["row_id"]) for e in moved) == [
        (g, g + 1000, str(g + 1000)) for g in range(291, 301)]
    assert all(e["old"]["spot"] == e["new"]["spot"] for e in moved)

    deleted = by_type["item.deleted"]
    assert sorted(e["row_id"] for e in deleted) == [str(g) for g in range(1296, 1301)]
    assert all(e["new"] is None and e["old"]["id"] == int(e["row_id"]) for e in deleted)
    assert len(events) == 300 + 100 + 10 + 5


async def test_a_statement_that_changes_nothing_writes_and_wakes_nothing(conn: asyncpg.Connection) -> None:
    await conn.execute(ITEMS)
    await watch_table(conn, "items", tenant_column="org")
    await conn.execute("INSERT INTO items (id, org) VALUES (1, 'acme')")
    notified: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("herald_events", lambda *args: notified.put_nowait(args[3]))
    await conn.execute("UPDATE items SET n = n")
    await conn.execute("UPDATE items SET n = 1 WHERE id = 999")
    await conn.execute("DELETE FROM items WHERE id = 999")
    await conn.execute("INSERT INTO items (id, org) VALUES (1, 'acme') ON CONFLICT DO NOTHING")
    await conn.execute("UPDATE items SET n = 2")  # the one that does: its wake-up is the only one
    assert await asyncio.wait_for(notified.get(), 5) == ""
    assert notified.empty()
    assert await conn.fetchval("SELECT count(*) FROM herald.events") == 2


async def test_upserts_capture_the_rows_inserted_and_the_rows_updated(conn: asyncpg.Connection) -> None:
    await conn.execute(ITEMS)
    await watch_table(conn, "items", tenant_column="org")
    await conn.execute("INSERT INTO items (id, org, n) VALUES (1, 'acme', 1), (2, 'acme', 2)")
    await conn.execute("INSERT INTO items (id, org, n) VALUES (2, 'acme', 20), (3, 'acme', 3)"
                       " ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n")
    await conn.execute("MERGE INTO items i USING (VALUES (3, 30), (4, 4)) AS v (id, n) ON i.id = v.id"
                       " WHEN MATCHED THEN UPDATE SET n = v.n"
                       " WHEN NOT MATCHED THEN INSERT (id, org, n) VALUES (v.id, 'acme', v.n)")
    events = await conn.fetch("SELECT type, row_id, old ->> 'n' AS was, new ->> 'n' AS now"
                              " FROM herald.events ORDER BY id")
    assert sorted(tuple(e) for e in events[2:]) == [
        ("item.created", "3", None, "3"), ("item.created", "4", None, "4"),
        ("item.updated", "2", "2", "20"), ("item.updated", "3", "3", "30")]


async def demo_captured_per_row(conn: asyncpg.Connection) -> None:
    """The demo, with jobs and clients captured as a Herald before migration 019 did: per row."""
    await load_demo(conn)
    for table, entity in (("jobs", "job"), ("clients", "client")):
        args = f"'{entity}', 'id', 'organization_id', 'public.{table}'"
        await conn.execute(f"DROP TRIGGER herald_capture_delete ON {table}")
        await conn.execute(f"CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT OR DELETE ON {table}"
                           f" FOR EACH ROW EXECUTE FUNCTION herald.capture_change({args})")
        await conn.execute(f"CREATE OR REPLACE TRIGGER herald_capture_update AFTER UPDATE ON {table}"
                           f" FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)"
                           f" EXECUTE FUNCTION herald.capture_change({args})")


async def per_row_triggers(conn: asyncpg.Connection) -> dict[tuple[str, str], bool]:
    """jobs' and clients' capture triggers: whether each fires per row."""
    return {(r["table"], r["name"]): r["per_row"] for r in await conn.fetch(
        "SELECT tgrelid::regclass::text AS table, tgname AS name, (tgtype & 1) = 1 AS per_row FROM pg_trigger"
        " WHERE tgname LIKE 'herald_capture%' AND tgrelid IN ('jobs'::regclass, 'clients'::regclass)")}


async def test_migration_019_moves_tables_captured_per_row_to_per_statement(conn: asyncpg.Connection) -> None:
    # Tables watched by a Herald before migration 019 have per-row triggers;
    # applying it again here moves those left as `herald watch` made them, and
    # leaves one whose owner disabled a trigger as it is.
    await demo_captured_per_row(conn)
    await conn.execute("ALTER TABLE clients DISABLE TRIGGER herald_capture_update")
    sql = next(sql for _version, name, sql in migration_files() if name == "019_capture_per_statement.sql")
    async with conn.transaction():
        await conn.execute(sql)
    assert await per_row_triggers(conn) == {
        ("jobs", "herald_capture"): False, ("jobs", "herald_capture_update"): False,
        ("jobs", "herald_capture_delete"): False,
        ("clients", "herald_capture"): True, ("clients", "herald_capture_update"): True}
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id IN (1, 2)")
    await conn.execute("DELETE FROM jobs WHERE id = 3")
    events = await conn.fetch("SELECT type, row_id FROM herald.events ORDER BY id")
    assert sorted(tuple(e) for e in events) == [("job.deleted", "3"), ("job.updated", "1"), ("job.updated", "2")]


async def test_migrate_says_which_table_it_left_captured_per_row(conn: asyncpg.Connection, db_url: str) -> None:
    # The application holds a lock on clients for longer than migration 019 waits
    # (5 s): clients keeps its per-row capture, the others move, and `herald
    # migrate` says so, with what to run.
    await demo_captured_per_row(conn)
    version = next(v for v, name, _sql in migration_files() if name == "019_capture_per_statement.sql")
    await conn.execute("DELETE FROM herald.schema_migrations WHERE version = $1", version)
    async with connection(db_url) as app:
        async with app.transaction():
            await app.execute("LOCK TABLE clients IN ACCESS EXCLUSIVE MODE")
            with structlog.testing.capture_logs() as logs:
                assert await migrate(conn) == ["019_capture_per_statement.sql"]
    notes = [line for line in logs if line["event"] == "migration note"]
    assert [(n["log_level"], n["migration"]) for n in notes] == [("warning", "019_capture_per_statement.sql")]
    assert notes[0]["note"] == ("public.clients keeps capturing per row (canceling statement due to lock timeout):"
                                " run `herald watch public.clients` again to move it")
    assert await per_row_triggers(conn) == {
        ("jobs", "herald_capture"): False, ("jobs", "herald_capture_update"): False,
        ("jobs", "herald_capture_delete"): False,
        ("clients", "herald_capture"): True, ("clients", "herald_capture_update"): True}
