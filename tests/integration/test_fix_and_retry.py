"""Fix and retry: a retry renders the steps not yet delivered with the workflow's current
version (or, --as-run, as the run had them), records the version it used, refuses a
retry that would fail again, and says why a run cannot be retried."""

from __future__ import annotations

import copy
from typing import Any

import asyncpg
import pytest

from actors.actions.base import Delivered, StepRun
from actors.actions.delivery import deliver
from actors.enriching import enrich_runs
from actors.matching import match_events
from actors.model.templates import as_records, render
from actors.providers import OutboundMessage, ProviderResult
from actors.workflows_cache import WorkflowCache
from config.errors import StepError, TemplateRenderError
from config.settings import Settings
from daemon.demo import demo_workflow, load_demo
from daemon.retries import (
    RetryFilter,
    RetryRefused,
    retry_failed,
    retry_one,
    retry_run,
    why_not_retried,
)
from daemon.workflows import delete_workflow, find_workflow, save_workflow, set_active
from tests.conftest import a_run

TYPO = "Job Completed - {{ job.titel }}"
FIXED = "Job Completed - {{ job.title }}"


def workflow(subject: str, **changes: Any) -> dict[str, Any]:
    """The demo workflow as "done", its email's subject ``subject``."""
    document = copy.deepcopy(demo_workflow())
    document.update(id="done", name="Done")
    document["steps"][0]["config"]["subject"] = subject
    return {**document, **changes}


async def setup(conn: asyncpg.Connection, subject: str = TYPO) -> None:
    """The demo with its own workflow disabled and "done" in its place."""
    await load_demo(conn)
    await set_active(conn, await find_workflow(conn, "1", "Job Completed"), False)
    await save_workflow(conn, "1", workflow(subject), force=True)


async def failed_run(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache, job: int, *,
    transient: str | None = None, error: str | None = None,
) -> int:
    """Complete ``job``; its run's first step fails as the email actor records it: the
    template's own error, ``error``, or (``transient``) a provider error that used up its retries."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    async with pool.acquire() as worker:
        [run_id] = (await match_events(worker, [event], cache)).started
        await enrich_runs(worker, [run_id])
    step = await conn.fetchrow("SELECT s.id, s.config, r.context FROM herald.steps s JOIN herald.runs r"
                               " ON r.id = s.run_id WHERE s.run_id = $1 AND s.position = 0", run_id)
    if error is not None:
        pass
    elif transient is None:
        with pytest.raises(TemplateRenderError) as caught:
            render(step["config"]["subject"], as_records(step["context"]), field="subject")
        error = str(caught.value)
    else:
        error = f"gave up after 4 attempts: {transient}"
    await conn.execute("UPDATE herald.steps SET status = 'failed', attempts = 1, error = $2 WHERE id = $1",
                       step["id"], error)
    await conn.execute("UPDATE herald.steps SET status = 'skipped' WHERE run_id = $1 AND position > 0", run_id)
    await conn.execute("UPDATE herald.runs SET status = 'failed', error = $2, completed_at = now() WHERE id = $1",
                       run_id, f"step 1 (step-1, email): {error}")
    return int(run_id)


async def steps_of(conn: asyncpg.Connection, run_id: int) -> list[Any]:
    return list(await conn.fetch(
        "SELECT id, step_key, action, status, config ->> 'subject' AS subject, config ->> 'message' AS message"
        " FROM herald.steps WHERE run_id = $1 ORDER BY position", run_id))


async def test_a_fixed_workflow_is_retried_with_its_current_version(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn)
    run_id = await failed_run(conn, pool, cache, 1)
    assert "job.titel is undefined" in await conn.fetchval("SELECT error FROM herald.runs WHERE id = $1", run_id)
    sent: list[tuple[str, int]] = []

    # Nothing changed: it would fail the same way, so nothing happens.
    with pytest.raises(RetryRefused) as refused:
        await retry_one(conn, run_id, requested_by="ana", reason="fixed", send_step=lambda a, s: sent.append((a, s)))
    assert str(refused.value).startswith(f"run {run_id} failed permanently (step 1 (step-1, email): subject:")
    assert "would fail again with workflow 'Done' unchanged since (version 1): fix the workflow" in str(refused.value)
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run_id) == "failed"
    assert sent == [] and await conn.fetchval("SELECT count(*) FROM herald.retries") == 0

    fixed = await save_workflow(conn, "1", workflow(FIXED, steps=[
        *workflow(FIXED)["steps"][:1],
        {"id": "step-2", "type": "action", "config": {
            "actionType": "sms", "message": "Thanks, {{client.firstName}}!", "recipient": "{{client.phone}}"}}]))
    assert fixed.version == 2
    retried = await retry_one(conn, run_id, requested_by="ana", reason="typo fixed",
                              send_step=lambda a, s: sent.append((a, s)))
    assert retried is not None
    assert (retried.version, retried.previous_version, retried.steps_reset, retried.steps_kept) == (2, 1, 2, 0)
    assert retried.updated == ["step-1", "step-2"] and retried.kept_as_run == []
    steps = await steps_of(conn, run_id)
    assert [(s["status"], s["subject"], s["message"]) for s in steps] == [
        ("pending", FIXED, "Dear {{client.firstName}},\n\nYour job has been completed."),
        ("pending", None, "Thanks, {{client.firstName}}!")]
    assert sent == [("email", steps[0]["id"])]
    run = await conn.fetchrow("SELECT status, error, workflow_version FROM herald.runs WHERE id = $1", run_id)
    assert (run["status"], run["error"], run["workflow_version"]) == ("running", None, 2)
    audit = await conn.fetchrow("SELECT requested_by, reason, steps_reset, workflow_version FROM herald.retries")
    assert tuple(audit) == ("ana", "typo fixed", 2, 2)


async def test_as_run_keeps_the_configuration_the_run_had(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn, FIXED)
    run_id = await failed_run(conn, pool, cache, 1, transient="telnyx answered 503")
    await save_workflow(conn, "1", workflow("A new subject {{ job.title }}"))

    retried = await retry_one(conn, run_id, requested_by="ana", reason="outage over", as_run=True,
                              send_step=lambda a, s: None)
    assert retried is not None and (retried.version, retried.updated) == (1, [])
    assert [s["subject"] for s in await steps_of(conn, run_id)][0] == FIXED
    assert await conn.fetchval("SELECT workflow_version FROM herald.runs WHERE id = $1", run_id) == 1
    assert await conn.fetchval("SELECT workflow_version FROM herald.retries") == 1


async def test_a_transient_failure_is_retried_though_nothing_changed(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn, FIXED)
    run_id = await failed_run(conn, pool, cache, 1, transient="telnyx answered 503")
    assert await retry_run(conn, run_id, requested_by="ana", reason="outage over", send_step=lambda a, s: None)
    assert await conn.fetchval("SELECT workflow_version FROM herald.retries") == 1


async def test_force_retries_a_run_that_would_fail_again_and_as_run_is_no_fix(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn)
    run_id = await failed_run(conn, pool, cache, 1)
    await save_workflow(conn, "1", workflow(FIXED))
    with pytest.raises(RetryRefused, match="would fail again with the same configuration \\(--as-run\\)"):
        await retry_one(conn, run_id, requested_by="ana", reason="x", as_run=True, send_step=lambda a, s: None)
    forced = await retry_one(conn, run_id, requested_by="ana", reason="x", as_run=True, force=True,
                             send_step=lambda a, s: None)
    assert forced is not None and [s["subject"] for s in await steps_of(conn, run_id)][0] == TYPO


async def test_steps_are_matched_by_key_then_position_and_a_removed_one_runs_as_it_ran(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn)
    run_id = await failed_run(conn, pool, cache, 1)
    email, sms = workflow(FIXED)["steps"]
    # step-1 renamed "mail" (found in its place); step-2 gone.
    await save_workflow(conn, "1", workflow(FIXED, steps=[{**email, "id": "mail"}]))
    retried = await retry_one(conn, run_id, requested_by="ana", reason="x", send_step=lambda a, s: None)
    assert retried is not None and (retried.updated, retried.kept_as_run) == (["step-1"], ["step-2"])
    steps = await steps_of(conn, run_id)
    assert [(s["step_key"], s["subject"], s["message"]) for s in steps] == [
        ("step-1", FIXED, email["config"]["message"]), ("step-2", None, sms["config"]["message"])]


async def test_why_a_run_cannot_be_retried(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn, FIXED)
    run_id = await failed_run(conn, pool, cache, 1, transient="telnyx answered 503")
    assert await why_not_retried(conn, 999) == "run 999 does not exist"
    assert await why_not_retried(conn, run_id, "2") == f"run {run_id} is not one of tenant 2's runs"
    assert await retry_one(conn, run_id, requested_by="ana", reason="x", send_step=lambda a, s: None,
                           tenant_id="2") is None
    await conn.execute("UPDATE herald.runs SET status = 'completed' WHERE id = $1", run_id)
    assert await retry_one(conn, run_id, requested_by="ana", reason="x", send_step=lambda a, s: None) is None
    assert await why_not_retried(conn, run_id) == f"run {run_id} is completed, not failed"


async def test_a_deleted_workflows_run_is_not_retried_unless_forced(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn, FIXED)
    run_id = await failed_run(conn, pool, cache, 1, transient="telnyx answered 503")
    await delete_workflow(conn, await find_workflow(conn, "1", "done"), force=False, by="ana")
    with pytest.raises(RetryRefused, match=f"^run {run_id}: its workflow 'Done' was deleted"):
        await retry_one(conn, run_id, requested_by="ana", reason="x", send_step=lambda a, s: None)


async def test_bulk_retry_groups_runs_by_error_and_leaves_those_that_would_fail_again(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await setup(conn)
    typos = [await failed_run(conn, pool, cache, job) for job in (1, 2)]
    await save_workflow(conn, "1", workflow(FIXED))  # version 2: the typo runs ran version 1
    outage = await failed_run(conn, pool, cache, 3, transient="telnyx answered 503")

    sent: list[tuple[str, int]] = []
    dry = await retry_failed(conn, RetryFilter(tenant_id="1", workflow_id="Done"), requested_by="ops",
                             reason="fixed", send_step=lambda a, s: sent.append((a, s)), dry_run=True)
    typo_error = await conn.fetchval("SELECT error FROM herald.runs WHERE id = $1", typos[0])
    assert "job.titel is undefined" in typo_error
    assert dry.by_error == {typo_error: typos,
                            "step 1 (step-1, email): gave up after 4 attempts: telnyx answered 503": [outage]}
    assert (dry.runs, dry.messages_to_resend, dry.refused, sent) == (3, 6, {}, [])
    assert await conn.fetchval("SELECT count(*) FROM herald.runs WHERE status = 'failed'") == 3

    # A permanent failure under version 2, which is still current: it would fail again.
    await conn.execute("INSERT INTO jobs (id, organization_id, client_id, title, status)"
                       " VALUES (7, 1, 1, 'Late', 'in_progress')")
    late = await failed_run(conn, pool, cache, 7, error="recipient: invalid email address 'maria@'")
    done = await retry_failed(conn, RetryFilter(tenant_id="1", workflow_id="done"), requested_by="ops",
                              reason="fixed", send_step=lambda a, s: sent.append((a, s)), dry_run=False)
    assert done.retried == [*typos, outage]
    assert done.refused == {"failed permanently; would fail again: workflow 'Done' unchanged since": [late]}
    assert len(sent) == 3
    versions = await conn.fetch("SELECT id, status, workflow_version FROM herald.runs ORDER BY id")
    assert [tuple(row) for row in versions] == [
        (typos[0], "running", 2), (typos[1], "running", 2), (outage, "running", 2), (late, "failed", 2)]


async def test_a_message_sent_again_records_what_this_attempt_sent(conn: asyncpg.Connection,
                                                                   pool: asyncpg.Pool) -> None:
    """After a transient failure (or support's retry of a refused message) the fixed
    text goes out under the same key, and the messages row shows that text."""
    run_id = await a_run(conn)
    step_id = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config)"
        " VALUES ($1, '1', 0, 'email', 'email', 'email', '{}') RETURNING id", run_id)
    run = StepRun({"tenant_id": "1", "run_id": run_id, "id": step_id}, {},
                  Settings(database_url="postgresql://unused", redis_url="redis://unused", embedded=False),
                  pool, None)  # type: ignore[arg-type]
    sent: list[OutboundMessage] = []

    async def down(message: OutboundMessage) -> ProviderResult:
        raise StepError("provider down", permanent=False)

    async def up(message: OutboundMessage) -> ProviderResult:
        sent.append(message)
        return ProviderResult("sent", "m-1")

    first = OutboundMessage("email", "ann@example.com", "Dear {{ job.titel }}", "key-1", subject="Done: ?")
    with pytest.raises(StepError):
        await deliver(run, first, "smtp", down)
    fixed = OutboundMessage("email", "ann@example.com", "Dear Ann", "key-1", subject="Done: Fix sink")
    done = await deliver(run, fixed, "smtp", up)
    row = await conn.fetchrow("SELECT id, subject, body FROM herald.messages")
    assert tuple(row)[1:] == ("Done: Fix sink", "Dear Ann")
    # The provider's answer marks the row when the step is recorded sent (STEP_SENT).
    assert done.delivered == Delivered(row["id"], "sent", "m-1")
    assert [m.subject for m in sent] == ["Done: Fix sink"]
    assert await conn.fetchval("SELECT count(*) FROM herald.messages") == 1
