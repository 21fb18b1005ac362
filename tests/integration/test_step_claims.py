"""Claiming a step: only a pending (or due) step of a running run, by one worker process."""

from __future__ import annotations

import asyncpg
import pytest

from actors.steps import CLAIM_STEPS
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
