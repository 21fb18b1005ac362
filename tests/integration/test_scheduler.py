"""Time triggers and manual triggers on a real PostgreSQL: once per entity per
occurrence, across passes and restarts, by one leader at a time."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from daemon.demo import load_demo
from daemon.scheduler import Scheduler, last_cron_instant
from daemon.triggering import fire_event
from daemon.workflows import import_workflow
from tests.conftest import wait_until

NOW = dt.datetime.now(dt.UTC)
DRAFT = [{"type": "draft_email", "args": {"subject": "Overdue", "body": "Please pay"}}]


async def scheduled(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch("SELECT tenant_id, type, row_id FROM herald.events WHERE operation = 'SCHEDULED'"
                            " ORDER BY id")
    return [(r["tenant_id"], r["type"], r["row_id"]) for r in rows]


async def test_an_overdue_invoice_fires_once_per_due_date(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    await load_demo(conn)
    await import_workflow(conn, "1", {"name": "dunning", "trigger": "invoice_overdue", "actions": DRAFT})
    overdue = await conn.fetchval("SELECT id::text FROM invoices WHERE number = 'NW-1002'")
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 1
    assert await scheduler.tick(NOW) == 0  # the same occurrence never fires twice
    restarted = Scheduler(db_url, pool, interval_s=1)
    assert await restarted.tick(NOW) == 0
    assert await scheduled(conn) == [("1", "invoice.overdue", overdue)]
    event = await conn.fetchrow("SELECT * FROM herald.events WHERE operation = 'SCHEDULED'")
    assert event["new"]["number"] == "NW-1002" and event["workflow_id"] is not None

    # Paid invoices and other tenants' invoices never fire; a new due date that passes fires again.
    await conn.execute("UPDATE invoices SET status = 'paid' WHERE number = 'NW-1002'")
    await conn.execute("UPDATE invoices SET due_date = current_date - 1 WHERE number = 'BB-2001'")
    assert await scheduler.tick(NOW) == 0
    await conn.execute("UPDATE invoices SET status = 'sent', due_date = current_date - 1 WHERE number = 'NW-1002'")
    assert await scheduler.tick(NOW) == 1
    await scheduler.close()


async def test_grace_days_delay_the_overdue_fire(conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str) -> None:
    await load_demo(conn)
    await import_workflow(conn, "1", {"name": "late", "trigger": "invoice_overdue",
                                      "trigger_config": {"days": 5}, "actions": DRAFT})
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 0  # NW-1002 is 3 days late, grace is 5
    assert await scheduler.tick(NOW + dt.timedelta(days=3)) == 1
    await scheduler.close()


async def test_inactive_clients_by_days_and_tenant(conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str) -> None:
    await load_demo(conn)
    await import_workflow(conn, "2", {"name": "win back", "trigger": "client_inactive",
                                      "trigger_config": {"days": 30}, "actions": DRAFT})
    await conn.execute("UPDATE jobs SET created_at = now() - interval '40 days' WHERE client_id = 4")
    await conn.execute("UPDATE clients SET created_at = now() - interval '60 days'")
    scheduler = Scheduler(db_url, pool, interval_s=1)
    # Client 5 (tenant 2) has one recent job; client 4's jobs are all 40 days old.
    assert await scheduler.tick(NOW) == 1
    assert await scheduled(conn) == [("2", "client.inactive", "4")]
    assert await scheduler.tick(NOW) == 0
    await conn.execute("INSERT INTO jobs (organization_id, client_id, title) VALUES (2, 4, 'Back again')")
    await conn.execute("UPDATE jobs SET created_at = now() - interval '35 days' WHERE title = 'Back again'")
    assert await scheduler.tick(NOW) == 1  # a new last activity is a new occurrence
    await scheduler.close()


@pytest.mark.parametrize("created", [
    dt.datetime(2026, 3, 2, 4, 30, tzinfo=dt.UTC),  # before the day's 09:00: it fires that day
    dt.datetime(2026, 3, 2, 15, 0, tzinfo=dt.UTC),  # after it: the first fire is the next day's
], ids=["made-before-09", "made-after-09"])
async def test_cron_fires_once_per_instant_without_catching_up(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str, created: dt.datetime
) -> None:
    await load_demo(conn)
    await import_workflow(conn, "1", {"name": "weekly", "trigger": "cron",
                                      "trigger_config": {"schedule": "0 9 * * *"}, "actions": DRAFT})
    # The test owns the clock: the workflow was made at ``created``, and every pass says when it runs.
    await conn.execute("UPDATE herald.workflows SET created_at = $1 WHERE name = 'weekly'", created)
    scheduler = Scheduler(db_url, pool, interval_s=1)
    first = created.replace(hour=9, minute=0, second=0, microsecond=0)
    if first < created:
        first += dt.timedelta(days=1)
    assert await scheduler.tick(created) == 0  # made after the latest instant: nothing to catch up
    assert await scheduler.tick(first - dt.timedelta(minutes=1)) == 0  # before the first instant
    assert await scheduler.tick(first + dt.timedelta(minutes=5)) == 1
    assert await scheduler.tick(first + dt.timedelta(hours=3)) == 0
    # Down for three days: only the latest missed instant fires.
    assert await scheduler.tick(first + dt.timedelta(days=3, hours=1)) == 1
    rows = await conn.fetch("SELECT new FROM herald.events WHERE operation = 'SCHEDULED' ORDER BY id")
    assert [r["new"]["scheduled_for"] for r in rows] == [
        first.isoformat(), (first + dt.timedelta(days=3)).isoformat()]
    assert last_cron_instant({"schedule": "0 9 * * *", "timezone": "UTC"}, first) == first
    await scheduler.close()


async def test_one_leader_at_a_time(conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str) -> None:
    await load_demo(conn)
    await import_workflow(conn, "1", {"name": "dunning", "trigger": "invoice_overdue", "actions": DRAFT})
    first, second = Scheduler(db_url, pool, interval_s=1), Scheduler(db_url, pool, interval_s=1)
    assert await first.is_leader() and not await second.is_leader()
    await first.close()  # the leader's session ends: its lock goes with it
    assert await second.is_leader()
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))

    async def fired() -> bool:
        return bool(await scheduled(conn))

    await wait_until(fired, message="the new leader to fire")
    stop.set()
    await task


async def test_fire_event_writes_a_manual_event_and_notifies(conn: asyncpg.Connection, db_url: str) -> None:
    await load_demo(conn)
    notified: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("herald_events", lambda *args: notified.put_nowait(args[3]))
    event_id = await fire_event(conn, tenant_id="1", trigger_type="job_completed",
                                payload={"id": 2, "title": "Test", "client_id": 2})
    event = await conn.fetchrow("SELECT * FROM herald.events WHERE id = $1", event_id)
    assert (event["operation"], event["type"], event["entity"], event["table_name"], event["row_id"]) == (
        "MANUAL", "job_completed", "job", "public.jobs", "2")
    assert event["new"] == {"id": 2, "title": "Test", "client_id": 2}
    assert await asyncio.wait_for(notified.get(), 5) == str(event_id)
