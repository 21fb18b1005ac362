"""Time triggers and manual triggers on a real PostgreSQL: once per entity per
occurrence, across passes and restarts, by one leader at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
import structlog

from config.errors import WorkflowValidationError
from daemon.capture import watch_table
from daemon.demo import load_demo
from daemon.scheduler import Scheduler, last_cron_instant
from daemon.triggering import fire_event
from daemon.workflows import import_workflow
from tests.conftest import a_run, wait_until

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


# Workflows written straight into the table, as an older Herald or a hand-made
# row would: validation never saw them. The lowest ids sort first, so the
# scheduler meets the broken workflow before the healthy ones.
FIRST_ID = "00000000-0000-0000-0000-000000000001"


async def insert_unchecked(conn: asyncpg.Connection, tenant: str, trigger: str, config: dict[str, Any],
                           workflow_id: str = FIRST_ID) -> str:
    await conn.execute(
        "INSERT INTO herald.workflows (id, tenant_id, name, trigger_type, definition) VALUES ($1, $2, $3, $4, $5)",
        workflow_id, tenant, f"unchecked {workflow_id[-4:]}", trigger,
        {"name": "unchecked", "trigger": trigger, "trigger_config": config, "actions": DRAFT})
    return workflow_id


async def tenant_2_overdue(conn: asyncpg.Connection) -> str:
    """Tenant 2's dunning workflow and one overdue invoice of theirs; its id."""
    await import_workflow(conn, "2", {"name": "dunning", "trigger": "invoice_overdue", "actions": DRAFT})
    return await conn.fetchval(  # type: ignore[no-any-return]
        "UPDATE invoices SET due_date = current_date - 1, status = 'sent' WHERE number = 'BB-2001' RETURNING id::text")


async def schedule_error(conn: asyncpg.Connection, workflow_id: str) -> str | None:
    row = await conn.fetchrow("SELECT schedule_error, schedule_error_at FROM herald.workflows WHERE id = $1",
                              workflow_id)
    assert (row["schedule_error"] is None) == (row["schedule_error_at"] is None)
    return row["schedule_error"]  # type: ignore[no-any-return]


async def test_an_impossible_schedule_is_refused_and_never_stops_the_scheduler(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    await load_demo(conn)
    never = {"schedule": "0 0 31 2 *"}  # 31 February
    with pytest.raises(WorkflowValidationError) as caught:
        await import_workflow(conn, "1", {"name": "never", "trigger": "cron", "trigger_config": never,
                                          "actions": DRAFT})
    assert caught.value.field == "trigger_config.schedule"

    broken = await insert_unchecked(conn, "1", "cron", never)
    invoice = await tenant_2_overdue(conn)
    scheduler = Scheduler(db_url, pool, interval_s=1)
    with structlog.testing.capture_logs() as logs:
        assert await scheduler.tick(NOW) == 1  # the same pass went on to tenant 2's invoice
    assert await scheduled(conn) == [("2", "invoice.overdue", invoice)]
    reason = await schedule_error(conn, broken)
    assert reason is not None and "trigger_config.schedule" in reason and "never" in reason
    [logged] = [entry for entry in logs if entry.get("workflow_id") == broken]
    assert logged["log_level"] == "error" and logged["tenant_id"] == "1" and logged["error"] == reason

    # Marked, it is skipped (not retried and logged every pass) until it is saved again.
    with structlog.testing.capture_logs() as logs:
        assert await scheduler.tick(NOW + dt.timedelta(days=400)) == 0
    assert not [entry for entry in logs if entry.get("workflow_id") == broken]
    await scheduler.close()


@pytest.mark.parametrize(("config", "field", "reason"), [
    ({"due_column": "no_such_column"}, "trigger_config.due_column", "no_such_column"),
    ({"days": 1_000_000_000_000}, "trigger_config.days", "between 0 and 36500"),
], ids=["undefined-column", "huge-days"])
async def test_a_broken_time_trigger_is_marked_and_the_pass_goes_on(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str, config: dict[str, Any], field: str, reason: str
) -> None:
    await load_demo(conn)
    with pytest.raises(WorkflowValidationError) as caught:
        await import_workflow(conn, "1", {"name": "bad", "trigger": "invoice_overdue", "trigger_config": config,
                                          "actions": DRAFT})
    assert caught.value.field == field

    broken = await insert_unchecked(conn, "1", "invoice_overdue", config)
    invoice = await tenant_2_overdue(conn)
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 1
    assert await scheduled(conn) == [("2", "invoice.overdue", invoice)]
    assert reason in (await schedule_error(conn, broken) or "")
    # The failed workflow's work was rolled back whole: no fire recorded for it.
    assert await conn.fetchval("SELECT count(*) FROM herald.schedule_fires WHERE workflow_id = $1", broken) == 0
    # Later passes still serve everyone else: a new overdue invoice of tenant 2 fires.
    await conn.execute("INSERT INTO invoices (organization_id, client_id, number, amount_cents, due_date, status)"
                       " VALUES (2, 5, 'BB-2002', 100, current_date - 2, 'sent')")
    assert await scheduler.tick(NOW) == 1
    await scheduler.close()


async def test_time_triggers_read_only_watched_rows_of_their_own_tenant(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    await a_run(conn)  # the demo, and a run of tenant 1 that sent a message
    run = await conn.fetchval("SELECT id FROM herald.runs")
    step = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config)"
        " VALUES ($1, '1', 0, 'email', 'email', 'email', '{}') RETURNING id", run)
    await conn.execute(
        "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient,"
        " body, status) VALUES ('1', $1, $2, 'email', 'capture', 'k1', 'maria@example.com', 'secret', 'sent')",
        run, step)
    # A business table Herald does not watch, with rows of two tenants and of nobody.
    await conn.execute(
        "CREATE TABLE bills (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, org text, due date NOT NULL,"
        " state text NOT NULL DEFAULT 'open');"
        "INSERT INTO bills (org, due) VALUES (NULL, current_date - 5), ('default', current_date - 5),"
        " ('1', current_date - 5)")
    messages = {"table": "herald.messages", "due_column": "created_at", "status_column": "status",
                "settled_statuses": []}
    bills = {"table": "bills", "due_column": "due", "status_column": "state", "settled_statuses": ["paid"]}
    for config, why in ((messages, "Herald's own"), (bills, "not watched")):
        with pytest.raises(WorkflowValidationError, match=why) as caught:
            await import_workflow(conn, "default", {"name": "peek", "trigger": "invoice_overdue",
                                                    "trigger_config": config, "actions": DRAFT})
        assert caught.value.field == "trigger_config.table"

    peek_messages = await insert_unchecked(conn, "default", "invoice_overdue", messages)
    peek_bills = await insert_unchecked(conn, "default", "invoice_overdue", bills,
                                        workflow_id="00000000-0000-0000-0000-000000000002")
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 0
    assert await scheduled(conn) == []
    assert "Herald's own" in (await schedule_error(conn, peek_messages) or "")
    assert "not watched" in (await schedule_error(conn, peek_bills) or "")

    # Watched with a tenant column, each tenant reads its own rows; a row of nobody fires for nobody.
    await watch_table(conn, "bills", tenant_column="org")
    own = {"1": await conn.fetchval("SELECT id::text FROM bills WHERE org = '1'"),
           "default": await conn.fetchval("SELECT id::text FROM bills WHERE org = 'default'")}
    for tenant in ("default", "1"):
        await import_workflow(conn, tenant, {"name": "bills", "trigger": "invoice_overdue",
                                             "trigger_config": bills, "actions": DRAFT})
    assert await scheduler.tick(NOW) == 2
    assert sorted(await scheduled(conn)) == [("1", "invoice.overdue", own["1"]),
                                             ("default", "invoice.overdue", own["default"])]
    # Herald's tables stay out of reach even if one were registered as watched
    # (here for the tenant whose messages they are), or found on the search path.
    await conn.execute("INSERT INTO herald.watched_tables (table_name, entity, tenant_column)"
                       " VALUES ('herald.messages', 'message', 'tenant_id')")
    await conn.execute("UPDATE herald.workflows SET tenant_id = '1', schedule_error = NULL, schedule_error_at = NULL"
                       " WHERE id = $1", peek_messages)
    assert await scheduler.tick(NOW) == 0
    assert "Herald's own" in (await schedule_error(conn, peek_messages) or "")
    await conn.execute("SET search_path = public, herald")
    with pytest.raises(WorkflowValidationError, match="herald.messages is one of Herald's own"):
        await import_workflow(conn, "1", {"name": "peek", "trigger": "invoice_overdue",
                                          "trigger_config": {**messages, "table": "messages"}, "actions": DRAFT})
    await scheduler.close()


async def test_inactive_clients_never_count_another_tenants_activity(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    await load_demo(conn)
    await import_workflow(conn, "2", {"name": "win back", "trigger": "client_inactive",
                                      "trigger_config": {"days": 30}, "actions": DRAFT})
    await conn.execute("UPDATE clients SET created_at = now() - interval '60 days'")
    await conn.execute("UPDATE jobs SET created_at = now() - interval '40 days' WHERE organization_id = 2")
    # A job of tenant 1 naming tenant 2's client 4 must not make that client look active.
    await conn.execute("INSERT INTO jobs (organization_id, client_id, title) VALUES (1, 4, 'Not yours')")
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 2
    assert sorted(await scheduled(conn)) == [("2", "client.inactive", "4"), ("2", "client.inactive", "5")]
    await scheduler.close()


async def test_saving_a_marked_workflow_again_clears_its_error(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    await load_demo(conn)
    document = {"id": "dunning", "name": "dunning", "trigger": "invoice_overdue", "actions": DRAFT}
    workflow = await import_workflow(conn, "1", document)
    # Its column is renamed under it: the scheduler marks it and leaves it be.
    await conn.execute("ALTER TABLE invoices RENAME COLUMN due_date TO due_on")
    scheduler = Scheduler(db_url, pool, interval_s=1)
    assert await scheduler.tick(NOW) == 0
    assert "due_date" in (await schedule_error(conn, workflow) or "")
    assert await scheduler.tick(NOW) == 0

    fixed = {**document, "trigger_config": {"due_column": "due_on"}}
    assert await import_workflow(conn, "1", fixed) == workflow
    assert await schedule_error(conn, workflow) is None
    assert await scheduler.tick(NOW) == 1  # NW-1002, three days late
    await scheduler.close()
