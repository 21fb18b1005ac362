"""Claiming a step: only a pending (or due) step of a running run, by one worker process."""

from __future__ import annotations

import json

import asyncpg
import pytest

from actors.steps import CLAIM_STEPS
from config.database import create_pool
from tests.conftest import a_run


async def make_step(conn: asyncpg.Connection, run_status: str, *, retry_in_s: int | None = None) -> int:
    run_id = await a_run(conn, run_status)
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        " next_attempt_at) VALUES ($1, '1', 1, 'step-2', 'sms', 'sms', '{}', 'pending',"
        " now() + make_interval(secs => $2)) RETURNING id", run_id, retry_in_s)


async def test_a_pending_step_of_a_running_run_is_claimed_by_the_worker(conn: asyncpg.Connection) -> None:
    step_id = await make_step(conn, "running")
    claimed = await conn.fetchrow(CLAIM_STEPS, [step_id], ["sms"], "host:1:abc")
    assert claimed is not None and claimed["id"] == step_id
    step = await conn.fetchrow("SELECT status, attempts, claimed_by FROM herald.steps WHERE id = $1", step_id)
    assert dict(step) == {"status": "sending", "attempts": 1, "claimed_by": "host:1:abc"}
    # A duplicate message finds nothing left to claim.
    assert await conn.fetchrow(CLAIM_STEPS, [step_id], ["sms"], "host:2:def") is None


@pytest.mark.parametrize("run_status", ["failed", "completed", "cancelled", "pending"])
async def test_a_stray_message_cannot_start_a_step_of_a_run_that_is_not_running(
    conn: asyncpg.Connection, run_status: str
) -> None:
    # E.g. the run failed at an earlier step while a message for this one was still queued.
    step_id = await make_step(conn, run_status)
    assert await conn.fetchrow(CLAIM_STEPS, [step_id], ["sms"], "host:1:abc") is None
    assert await conn.fetchval("SELECT status FROM herald.steps WHERE id = $1", step_id) == "pending"


async def test_a_step_waiting_for_its_retry_is_not_claimed_early(conn: asyncpg.Connection) -> None:
    step_id = await make_step(conn, "running", retry_in_s=60)
    assert await conn.fetchrow(CLAIM_STEPS, [step_id], ["sms"], "host:1:abc") is None
    assert await conn.fetchrow(CLAIM_STEPS, [step_id], ["email"], "host:1:abc") is None


async def test_a_claim_reads_the_steps_it_names_not_every_unfinished_run(db_url: str) -> None:
    # The worker plans its statements once per connection (generic plans, config.database).
    # A plan that reached the step through the partial index of unfinished runs would read
    # every entry of it, and between vacuums its statistics say it is nearly empty.
    pool = await create_pool(db_url, min_size=1, max_size=1, generic_plans=True)
    try:
        async with pool.acquire() as conn:
            step_id = await make_step(conn, "running")
            await conn.execute("ALTER TABLE herald.runs SET (autovacuum_enabled = false)")
            await conn.execute(
                "WITH events AS ("
                "  INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new, state)"
                "  SELECT e.tenant_id, e.entity, e.table_name, e.row_id, e.operation, e.type, e.new, 'matched'"
                "  FROM (SELECT * FROM herald.events LIMIT 1) e, generate_series(1, 3000) RETURNING id)"
                " INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, context)"
                " SELECT '1', (SELECT workflow_id FROM herald.runs LIMIT 1), id, 'completed', '{}' FROM events")
            await conn.execute(
                "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status)"
                " SELECT r.id, '1', p, 'step-' || p, 'sms', 'sms', '{}', 'sent'"
                " FROM herald.runs r, generate_series(0, 1) AS p WHERE r.status = 'completed'")
            await conn.execute("ANALYZE herald.runs, herald.steps")  # statistics from before they started
            await conn.execute("UPDATE herald.runs SET status = 'running' WHERE status = 'completed'")
            await conn.execute(f"PREPARE claim AS {CLAIM_STEPS}")
            plan = await conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claim('{{{step_id}}}', '{{sms}}', 'host:1:abc')")
            top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
            assert top["Actual Rows"] == 1
            # By primary keys: a few dozen pages; through runs_unfinished, thousands.
            assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] < 100, top
    finally:
        await pool.close()
