"""Steps that start together (``with_previous``): a stage's steps start at once, and
the next stage, or the run's end, comes once, after the last of them has finished,
however they finish at the same moment."""

from __future__ import annotations

import asyncio

import asyncpg

from actors.actions import Done
from actors.steps import CLAIM_STEPS, FollowUp, _record_outcome
from config.database import connection
from daemon import outbox
from daemon.parked import mark_sent
from daemon.retries import retry_run
from tests.conftest import a_run, wait_until

WORKER = "host:1:abc"


async def run_with_stages(conn: asyncpg.Connection, *steps: tuple[str, int, str], run_status: str = "running",
                          ) -> tuple[int, list[int]]:
    """A run whose steps are (action, stage, status), in position order; its id and its steps' ids."""
    run_id = await a_run(conn, run_status)
    ids = [await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, stage, step_key, action, queue, config, status)"
        " VALUES ($1, '1', $2, $3, $4, $5, $5, '{}', $6) RETURNING id",
        run_id, position, stage, f"step-{position + 1}", action, status)
        for position, (action, stage, status) in enumerate(steps)]
    return run_id, ids


async def claim(conn: asyncpg.Connection, step_id: int, action: str) -> asyncpg.Record:
    step = await conn.fetchrow(CLAIM_STEPS, [step_id], [action], WORKER)
    assert step is not None
    return step


async def waits_for_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid)


async def test_a_claim_says_whether_the_step_shares_its_stage(conn: asyncpg.Connection) -> None:
    run_id, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "pending"), ("sms", 0, "pending"), ("webhook", 1, "pending"))
    claimed = [await claim(conn, email, "email"), await claim(conn, sms, "sms")]
    assert [(step["stage"], step["grouped"]) for step in claimed] == [(0, True), (0, True)]
    await conn.execute("UPDATE herald.steps SET status = 'sent' WHERE run_id = $1 AND stage = 0", run_id)
    alone = await claim(conn, webhook, "webhook")
    assert (alone["stage"], alone["grouped"]) == (1, False)
    # A step of a run enriched before stages existed is a stage of its own: its position.
    await conn.execute("UPDATE herald.steps SET stage = NULL, status = 'pending' WHERE id = $1", email)
    before = await claim(conn, email, "email")
    assert (before["stage"], before["grouped"]) == (0, False)


async def finish_both_at_once(db_url: str, conn: asyncpg.Connection, email: int, sms: int,
                              ) -> tuple[list[FollowUp], list[FollowUp]]:
    """The stage's two steps recorded sent at the same moment: the first one's transaction
    is still open when the second one records; what each returned."""
    first_step, second_step = await claim(conn, email, "email"), await claim(conn, sms, "sms")
    async with connection(db_url) as first, connection(db_url) as second:
        async with first.transaction():
            first_says = await _record_outcome(first, first_step, {}, Done({"id": "e-1"}), 5)
            second_pid = second.get_server_pid()
            second_says = asyncio.create_task(_record_outcome(second, second_step, {}, Done({"id": "s-1"}), 5))


            async def second_waits_or_is_done() -> bool:
                return second_says.done() or await waits_for_a_lock(conn, second_pid)

            await wait_until(second_waits_or_is_done, timeout=10, message="the second step to record")
        return first_says, await second_says


async def test_the_next_stage_starts_once_when_a_stages_steps_finish_together(
    db_url: str, conn: asyncpg.Connection
) -> None:
    run_id, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "pending"), ("sms", 0, "pending"), ("webhook", 1, "pending"))
    first_says, second_says = await finish_both_at_once(db_url, conn, email, sms)
    # The first saw the SMS still sending; the second saw the email sent: it starts the webhook.
    assert (first_says, second_says) == ([], [FollowUp(webhook, "webhook")])
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run_id) == "running"


async def test_a_run_whose_last_stage_finishes_together_completes_once(db_url: str, conn: asyncpg.Connection) -> None:
    run_id, (email, sms) = await run_with_stages(conn, ("email", 0, "pending"), ("sms", 0, "pending"))
    assert await finish_both_at_once(db_url, conn, email, sms) == ([], [])
    run = await conn.fetchrow("SELECT status, completed_at FROM herald.runs WHERE id = $1", run_id)
    assert run["status"] == "completed" and run["completed_at"] is not None


async def test_a_step_done_while_its_sibling_waits_for_a_retry_starts_nothing(conn: asyncpg.Connection) -> None:
    run_id, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "pending"), ("sms", 0, "pending"), ("webhook", 1, "pending"))
    email_step = await claim(conn, email, "email")
    await conn.execute("UPDATE herald.steps SET next_attempt_at = now() + interval '1 minute' WHERE id = $1", sms)
    assert await _record_outcome(conn, email_step, {}, Done({}), 5) == []
    # The sweeper does not start the next stage early either; the retried step, when it is due.
    await conn.execute("UPDATE herald.steps SET updated_at = now() - interval '1 hour'")
    assert await conn.fetch(outbox.STALE_PENDING_STEPS, 30, 100) == []
    await conn.execute("UPDATE herald.steps SET next_attempt_at = NULL WHERE id = $1", sms)
    assert [row["id"] for row in await conn.fetch(outbox.STALE_PENDING_STEPS, 30, 100)] == [sms]
    # The SMS is sent at last: now the webhook starts.
    assert await _record_outcome(conn, await claim(conn, sms, "sms"), {}, Done({}), 5) == [
        FollowUp(webhook, "webhook")]
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run_id) == "running"


async def test_the_sweeper_starts_every_step_of_a_stage_that_was_not_started(conn: asyncpg.Connection) -> None:
    _, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "pending"), ("sms", 0, "pending"), ("webhook", 1, "pending"))
    await conn.execute("UPDATE herald.steps SET updated_at = now() - interval '1 hour'")
    assert sorted(row["id"] for row in await conn.fetch(outbox.STALE_PENDING_STEPS, 30, 100)) == [email, sms]
    # Once the stage is over, sent or skipped by a rate limit, the next one.
    await conn.execute("UPDATE herald.steps SET status = 'sent' WHERE id = $1", email)
    await conn.execute("UPDATE herald.steps SET status = 'skipped', completed_at = now() WHERE id = $1", sms)
    await conn.execute("UPDATE herald.steps SET updated_at = now() - interval '1 hour'")
    assert [row["id"] for row in await conn.fetch(outbox.STALE_PENDING_STEPS, 30, 100)] == [webhook]


async def test_marking_a_parked_step_sent_starts_its_stage_again(conn: asyncpg.Connection) -> None:
    # The email's outcome was unknown (parked); the SMS of its stage was waiting for a retry
    # when the run failed, so it was skipped, as was the webhook after them.
    run_id, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "unknown"), ("sms", 0, "skipped"), ("webhook", 1, "skipped"), run_status="failed")
    decided = await mark_sent(conn, email, scope=None, who="ana", reason="the customer got it")
    assert decided.run_status == "running"
    assert decided.to_send == [("sms", sms)]  # the webhook waits for the SMS
    statuses = await conn.fetch("SELECT id, status FROM herald.steps WHERE run_id = $1 ORDER BY position", run_id)
    assert [(row["id"], row["status"]) for row in statuses] == [
        (email, "sent"), (sms, "pending"), (webhook, "pending")]


async def test_a_retried_run_starts_every_step_of_its_first_unfinished_stage(conn: asyncpg.Connection) -> None:
    run_id, (email, sms, webhook) = await run_with_stages(
        conn, ("email", 0, "failed"), ("sms", 0, "skipped"), ("webhook", 1, "skipped"), run_status="failed")
    sent: list[tuple[str, int]] = []
    assert await retry_run(conn, run_id, requested_by="ana", reason="fixed the address",
                           send_step=lambda queue, step: sent.append((queue, step)))
    assert sent == [("email", email), ("sms", sms)]
