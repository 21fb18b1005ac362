"""Trigger names whose entity has an underscore, against a real PostgreSQL: saving reads
``work_order_status_changed`` against the watched tables (work_order / status once
crm.work_orders is watched), and the matcher, whose workflows are parsed without the
database, runs it for status changes of work orders only, each change once.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from actors.matching import match_events
from actors.workflows_cache import WorkflowCache
from daemon.capture import watch_table
from daemon.triggering import fire_event
from daemon.workflows import import_workflow, save_workflow

WORK_ORDERS = """
CREATE SCHEMA crm;
CREATE TABLE crm.work_orders (id bigint PRIMARY KEY, shop text NOT NULL, status text NOT NULL, notes text);
"""

STATUS_CHANGED = {"id": "wo-status", "name": "work order status", "trigger_type": "work_order_status_changed",
                  "steps": [{"id": "sms", "type": "action", "config": {
                      "actionType": "sms", "recipient": "+15550101001",
                      "message": "Order {{work_order.id}}: {{work_order.statuss}}"}}]}
TYPO = "steps[0].config.message: work_order has no column 'statuss' (crm.work_orders)"


async def test_saving_reads_the_trigger_against_the_watched_tables(conn: asyncpg.Connection) -> None:
    await conn.execute(WORK_ORDERS)
    # Not watched yet: no error (it may be watched later), the first word by default, and a warning.
    before = await save_workflow(conn, "s1", STATUS_CHANGED)
    assert (before.spec.trigger.entity, before.spec.trigger.field, before.spec.trigger.resolved) == (
        "work", "order_status", False)
    assert before.warnings == ["trigger work_order_status_changed watches entity work or work_order,"
                               " which no watched table has (watched: none)"]

    await watch_table(conn, "crm.work_orders", tenant_column="shop")
    after = await save_workflow(conn, "s1", STATUS_CHANGED, force=True)  # the typo: refused unless forced
    assert after.workflow_id == before.workflow_id  # the same document: updated in place
    assert (after.spec.trigger.entity, after.spec.trigger.field, after.spec.trigger.resolved) == (
        "work_order", "status", True)
    assert after.spec.trigger.describe() == "entity work_order, field status"
    # The templates are checked against the resolved entity's table.
    assert after.warnings == [TYPO]
    assert await import_workflow(conn, "s1", STATUS_CHANGED, force=True) == after.workflow_id


async def test_an_entity_nothing_watches_is_named_with_what_is_watched(conn: asyncpg.Connection) -> None:
    await conn.execute(WORK_ORDERS)
    await watch_table(conn, "crm.work_orders", tenant_column="shop")
    saved = await save_workflow(conn, "s1", {**STATUS_CHANGED, "trigger_type": "line_item_created"})
    assert saved.spec.trigger.entity == "line_item"
    assert saved.warnings == [
        "trigger line_item_created watches entity line_item, which no watched table has (watched: work_order)"]


async def matched(conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache, change: str) -> Any:
    """Make ``change`` to crm.work_orders, match its event; the outcome and the event's report."""
    await conn.execute(change)
    event = await conn.fetchval("SELECT max(id) FROM herald.events WHERE table_name = 'crm.work_orders'")
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [event], cache)
    report = await conn.fetchval("SELECT match_report FROM herald.events WHERE id = $1", event)
    [workflow] = report["workflows"]
    return outcome, workflow["reason"]


async def test_status_changes_of_work_orders_run_the_workflow_and_other_changes_do_not(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await conn.execute(WORK_ORDERS)
    await watch_table(conn, "crm.work_orders", tenant_column="shop")
    await import_workflow(conn, "s1", STATUS_CHANGED, force=True)

    outcome, reason = await matched(
        conn, pool, cache, "INSERT INTO crm.work_orders VALUES (1, 's1', 'new', 'call first')")
    assert outcome.started == [] and reason == "trigger work_order_status_changed needs a UPDATE, the event is a INSERT"

    outcome, reason = await matched(conn, pool, cache, "UPDATE crm.work_orders SET status = 'scheduled' WHERE id = 1")
    assert len(outcome.started) == 1 and reason.startswith("trigger work_order_status_changed")

    outcome, reason = await matched(conn, pool, cache, "UPDATE crm.work_orders SET notes = 'gate code 42' WHERE id = 1")
    assert outcome.started == [] and reason == "trigger work_order_status_changed: status did not change"

    # Another status change of the same order soon after: a change of its own, not a duplicate.
    outcome, _ = await matched(conn, pool, cache, "UPDATE crm.work_orders SET status = 'completed' WHERE id = 1")
    assert (len(outcome.started), outcome.skipped) == (1, 0)
    keys = await conn.fetch("SELECT dedupe_key FROM herald.runs ORDER BY id")
    assert [row["dedupe_key"].partition("#")[0] for row in keys] == [
        'work_order:1:status:"new"->"scheduled"', 'work_order:1:status:"scheduled"->"completed"']


async def test_firing_the_trigger_by_hand_makes_a_work_order_event(conn: asyncpg.Connection) -> None:
    await conn.execute(WORK_ORDERS)
    await watch_table(conn, "crm.work_orders", tenant_column="shop")
    event_id = await fire_event(conn, tenant_id="s1", trigger_type="work_order_status_changed",
                                payload={"id": 1, "status": "completed"})
    row = await conn.fetchrow("SELECT entity, table_name FROM herald.events WHERE id = $1", event_id)
    assert (row["entity"], row["table_name"]) == ("work_order", "crm.work_orders")
