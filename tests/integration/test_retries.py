"""Manual retries: one new attempt however many people click, an audit trail, a dry run."""

from __future__ import annotations

import asyncio

import asyncpg

from config.database import connection
from daemon.demo import load_demo
from daemon.retries import RetryFilter, retry_failed, retry_run


async def failed_run(conn: asyncpg.Connection, job_id: int, error: str) -> int:
    """A run whose email was sent and whose SMS failed, as the actors leave it."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
    event = await conn.fetchrow("SELECT id, tenant_id FROM herald.events ORDER BY id DESC LIMIT 1")
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", event["tenant_id"])
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error)"
        " VALUES ($1, $2, $3, 'failed', $4) RETURNING id", event["tenant_id"], workflow, event["id"], error)
    for position, (action, status) in enumerate((("email", "sent"), ("sms", "failed"))):
        await conn.execute(
            "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
            " attempts) VALUES ($1, $2, $3, $4, $5, $5, '{}', $6, 4)", run_id, event["tenant_id"], position,
            f"step-{position + 1}", action, status)
    return int(run_id)


async def test_two_retries_at_once_make_one_attempt(conn: asyncpg.Connection, db_url: str) -> None:
    await load_demo(conn)
    run_id = await failed_run(conn, 1, "step 2 (step-2, sms): telnyx answered 503")
    sent: list[tuple[str, int]] = []

    async def retry(who: str) -> bool:
        async with connection(db_url) as own:
            return await retry_run(own, run_id, requested_by=who, reason="provider back up",
                                   send_step=lambda action, step: sent.append((action, step)))

    outcomes = await asyncio.gather(retry("ana"), retry("ben"))
    assert sorted(outcomes) == [False, True]
    run = await conn.fetchrow("SELECT status, error, retry_count FROM herald.runs WHERE id = $1", run_id)
    assert (run["status"], run["error"], run["retry_count"]) == ("running", None, 1)
    steps = await conn.fetch("SELECT id, status, attempts FROM herald.steps WHERE run_id = $1 ORDER BY position", run_id)
    assert [(s["status"], s["attempts"]) for s in steps] == [("sent", 4), ("pending", 0)]
    assert sent == [("sms", steps[1]["id"])]  # only the step that did not deliver goes again
    audit = await conn.fetch("SELECT requested_by, reason, steps_reset, steps_kept FROM herald.retries")
    assert len(audit) == 1 and audit[0]["requested_by"] in ("ana", "ben")
    assert (audit[0]["reason"], audit[0]["steps_reset"], audit[0]["steps_kept"]) == ("provider back up", 1, 1)


async def test_retry_failed_filters_and_dry_run(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    timeouts = [await failed_run(conn, job, "step 2 (step-2, sms): telnyx unreachable") for job in (1, 2)]
    other = await failed_run(conn, 4, "step 2 (step-2, sms): invalid phone number")
    sent: list[tuple[str, int]] = []
    where = RetryFilter(error="unreachable")
    dry = await retry_failed(conn, where, requested_by="ops", reason="outage over",
                             send_step=lambda a, s: sent.append((a, s)), dry_run=True)
    assert (dry.runs, dry.messages_to_resend, dry.already_delivered, dry.retried) == (2, 2, 2, [])
    assert sent == [] and await conn.fetchval("SELECT count(*) FROM herald.retries") == 0

    done = await retry_failed(conn, where, requested_by="ops", reason="outage over",
                              send_step=lambda a, s: sent.append((a, s)), dry_run=False)
    assert done.retried == timeouts and len(sent) == 2
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", other) == "failed"
    # Tenant scoping: another tenant's run is not touched.
    assert not await retry_run(conn, other, requested_by="ops", reason="x", send_step=lambda a, s: None,
                               tenant_id="1")
