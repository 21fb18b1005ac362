"""Fix and retry in a real browser, with the real daemon and worker: a workflow broken on
the Workflows page makes runs fail for real; support retries one without a fix (the run
page refuses first, "Retry anyway" sends it, it fails again for the same reason); an
operator fixes the workflow on the same page and retries the group from Failures, and
the runs complete through the capture provider."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from playwright.async_api import Dialog, Page, expect

from daemon.demo import load_demo
from tests.browser.conftest import Dashboard, path_of, sign_in, sign_out
from tests.conftest import wait_until
from tests.dashboard_support import make_user

Shot = Callable[[str], Awaitable[Path]]

RIGHT = "Job Completed - {{job.title}}"
TYPO = "Job Completed - {{job.titel}}"
TENANT_1_JOBS = (1, 2)
RUN_TIMEOUT = 30.0

RUNS_OF_JOBS = """
SELECT r.id, r.status, r.error, r.retry_count, r.workflow_version, e.row_id
FROM herald.runs r JOIN herald.events e ON e.id = r.event_id
WHERE r.tenant_id = '1' AND e.row_id = ANY($1::text[]) ORDER BY e.row_id
"""


async def runs_of(conn: asyncpg.Connection, jobs: tuple[int, ...]) -> list[Any]:
    return list(await conn.fetch(RUNS_OF_JOBS, [str(job) for job in jobs]))


def detail_of(row: Any) -> dict[str, Any]:
    detail = row["detail"]
    return dict(json.loads(detail) if isinstance(detail, str) else detail)


def accept_confirms(page: Page) -> None:
    """Buttons with data-confirm ask with window.confirm(); say yes."""
    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("dialog", accept)


async def edit_subject(page: Page, shot: Shot, step: str, old: str, new: str) -> None:
    """Workflows -> "Job Completed" -> Edit; swap the email's subject in the JSON textarea; save.
    Templates reading a column the tables lack are refused until "Save even if..." is ticked."""
    await page.goto("/workflows")
    await page.get_by_role("link", name="Job Completed", exact=True).click()
    await page.wait_for_url(re.compile(r"/workflows/[0-9a-f-]{36}$"))
    await page.get_by_role("link", name="Edit", exact=True).click()
    await page.wait_for_url(re.compile(r"/workflows/[0-9a-f-]{36}/edit$"))
    textarea = page.get_by_label("Definition (JSON)")
    document = json.loads(await textarea.input_value())
    assert document["steps"][0]["config"]["subject"] == old
    document["steps"][0]["config"]["subject"] = new
    await textarea.fill(json.dumps(document, indent=2))
    await shot(f"{step}-edit")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Save", exact=True).click()


async def test_a_failed_run_retried_without_a_fix_fails_again_then_the_fix_completes_it(
    pipeline: Dashboard, page: Page, shot: Shot, conn: asyncpg.Connection,
) -> None:
    await load_demo(conn)
    await make_user(conn, "ops@example.com", "operator", ("1",))
    await make_user(conn, "support@example.com", "support", ("1",))
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    accept_confirms(page)

    # 1. The operator breaks the workflow on the Workflows page: a subject reading job.titel.
    await sign_in(page, "ops@example.com", next_path="/workflows")
    await edit_subject(page, shot, "1", RIGHT, TYPO)
    # job.titel is no column of jobs: refused, the text kept, until the operator insists.
    assert re.search(r"/workflows/[0-9a-f-]{36}/edit$", page.url)
    await expect(page.get_by_role("alert")).to_contain_text("Not saved")
    await expect(page.get_by_label("Definition (JSON)")).to_contain_text("{{job.titel}}")
    await shot("1-refused")
    await page.get_by_label("Save even if templates read columns the tables lack").check()
    async with page.expect_navigation():
        await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator("p.flash")).to_contain_text("Saved as version 2 (was 1)")
    workflow_path = path_of(page).split("?")[0]
    await shot("1-broken")
    await sign_out(page)

    # 2. Two jobs of tenant 1 complete; the real worker fails both runs on the subject.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = ANY($1::int[])", list(TENANT_1_JOBS))

    async def both_failed() -> list[Any] | None:
        runs = await runs_of(conn, TENANT_1_JOBS)
        return runs if len(runs) == 2 and all(r["status"] == "failed" for r in runs) else None

    failed = await wait_until(both_failed, timeout=RUN_TIMEOUT, message="both runs of tenant 1 to fail")
    for run in failed:
        assert "job.titel" in run["error"], run["error"]
        assert run["workflow_version"] == 2
    first = failed[0]
    error = first["error"]
    steps = await conn.fetch("SELECT action, status, attempts, error FROM herald.steps WHERE run_id = $1"
                             " ORDER BY position", first["id"])
    assert (steps[0]["action"], steps[0]["status"]) == ("email", "failed")
    assert steps[0]["attempts"] == 1, "a template error is permanent: never retried on its own"
    assert steps[1]["status"] != "sent"
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE run_id = ANY($1::bigint[])",
                               [r["id"] for r in failed]) == 0

    # A viewer sees the failed run but no way to retry it; a forged POST is refused.
    await sign_in(page, "viewer@example.com", next_path=f"/runs/{first['id']}")
    await expect(page.locator("h1 .badge")).to_have_text("failed")
    await expect(page.get_by_role("button", name=re.compile("Retry"))).to_have_count(0)
    token = await page.locator("input[name=csrf_token]").first.input_value()
    forged = await page.request.post(f"/runs/{first['id']}/retry",
                                     form={"csrf_token": token, "reason": "just because", "force": "1"})
    assert forged.status == 403
    await shot("2-viewer")
    await sign_out(page)

    # 3. Support opens the failure from /failures: one group, two runs, the workflow and the error.
    await sign_in(page, "support@example.com", next_path="/failures")
    group = page.locator("tr[data-group]")
    await expect(group).to_have_count(1)
    await expect(group.locator("td[data-count]")).to_have_text("2")
    await expect(group).to_contain_text("Job Completed")
    await expect(group).to_contain_text("job.titel")
    await shot("3-failures")
    sample = group.get_by_role("link", name=re.compile(r"^run \d+$"))
    run_id = int((await sample.get_attribute("href") or "").rsplit("/", 1)[-1])
    assert run_id in {r["id"] for r in failed}
    error = next(r["error"] for r in failed if r["id"] == run_id)
    await sample.click()
    await page.wait_for_url(f"**/runs/{run_id}")

    # 4. The run page: failed, the error, the email step failed; a retry is refused up front.
    await expect(page.locator("h1 .badge")).to_have_text("failed")
    await expect(page.locator(".run-error")).to_have_text(error)
    email_step = page.locator("section.step-card").first
    await expect(email_step.locator("h3 .badge")).to_have_text("failed")
    await expect(email_step).to_contain_text("job.titel")
    refusal = page.locator(".refusal")
    await expect(refusal).to_contain_text("A retry would fail the same way")
    await expect(refusal).to_contain_text("unchanged since (version 2)")
    await expect(page.get_by_role("button", name="Retry run")).to_have_count(0)
    await shot("4-run-refused")
    # The server refuses too, whatever the form says: 409 and the page again.
    token = await page.locator("input[name=csrf_token]").first.input_value()
    refused = await page.request.post(f"/runs/{run_id}/retry",
                                      form={"csrf_token": token, "reason": "try it", "force": "0"})
    assert refused.status == 409
    assert "would fail again" in await refused.text()

    # 5. "Retry anyway", with a reason.
    reason = "client says nothing changed; retrying to confirm"
    await page.get_by_label("Why retry?").fill(reason)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Retry anyway").click()
    assert path_of(page) == f"/runs/{run_id}?done=retried"
    await expect(page.locator("p.flash")).to_be_visible()
    await shot("5-retried")

    # 6. It fails again, for the same reason (the database first, then the page on reload).
    async def failed_again() -> Any:
        return await conn.fetchrow("SELECT status, error, retry_count FROM herald.runs WHERE id = $1"
                                   " AND status = 'failed' AND retry_count = 1", run_id)

    again = await wait_until(failed_again, timeout=RUN_TIMEOUT, message=f"run {run_id} to fail again")
    assert again["error"] == error
    # A retry starts the step afresh (attempts back to 0): one attempt, the same error, again.
    step = await conn.fetchrow("SELECT status, attempts, error FROM herald.steps WHERE run_id = $1"
                               " AND position = 0", run_id)
    assert (step["status"], step["attempts"]) == ("failed", 1)
    assert step["error"] in error
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE run_id = $1", run_id) == 0
    await page.goto(f"/runs/{run_id}")
    await expect(page.locator("h1 .badge")).to_have_text("failed")
    await expect(page.locator(".run-error")).to_have_text(error)
    history = page.locator("table.retries tbody tr")
    await expect(history).to_have_count(1)
    await expect(history).to_contain_text("support@example.com")
    await expect(history).to_contain_text(reason)
    await shot("6-failed-again")
    await sign_out(page)

    # 7. The operator fixes the workflow on the Workflows page: a new version.
    await sign_in(page, "ops@example.com", next_path="/workflows")
    await edit_subject(page, shot, "7", TYPO, RIGHT)
    assert path_of(page).startswith(workflow_path)
    await expect(page.locator("p.flash")).to_contain_text("Saved as version 3 (was 2)")
    await shot("7-fixed")

    # 8. The operator (operator includes support) retries the group from Failures, preview first.
    await page.goto("/failures")
    group = page.locator("tr[data-group]")
    await expect(group.locator("td[data-count]")).to_have_text("2")
    await group.get_by_role("link", name=re.compile("Open group")).click()
    await page.wait_for_url(re.compile(r"/failures/group/[0-9a-f]{20}"))
    await expect(page.locator("tr[data-run]")).to_have_count(2)
    await shot("8-group")
    await page.get_by_role("link", name="Retry this group…").click()
    await page.wait_for_url(re.compile(r"/failures/group/[0-9a-f]{20}/retry"))
    await expect(page.locator("[data-preview=runs]")).to_have_text("2")
    await expect(page.locator("[data-preview=refused]")).to_have_text("0")
    await shot("8-preview")
    group_reason = "subject typo fixed in version 3"
    await page.get_by_label("Why are you retrying?").fill(group_reason)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Retry 2 runs").click()
    await page.wait_for_url(re.compile(r"/failures/retried/\d+$"))
    await expect(page.locator("[data-result=retried]")).to_have_text("2")
    await expect(page.locator("[data-result=refused]")).to_have_text("0")
    await shot("8-result")

    # 9. Both runs complete through the capture provider; the run page says so; the group is gone.
    async def both_completed() -> list[Any] | None:
        runs = await runs_of(conn, TENANT_1_JOBS)
        return runs if all(r["status"] == "completed" for r in runs) else None

    done = await wait_until(both_completed, timeout=RUN_TIMEOUT, message="both retried runs to complete")
    assert [r["workflow_version"] for r in done] == [3, 3]
    await page.get_by_role("link", name=f"run {run_id}", exact=True).click()
    await page.wait_for_url(f"**/runs/{run_id}")
    await expect(page.locator("h1 .badge")).to_have_text("completed")
    await expect(page.locator("section.step-card h3 .badge")).to_have_text(["sent", "sent"])
    await shot("9-completed")
    await page.goto("/failures")
    await expect(page.locator("tr[data-group]")).to_have_count(0)
    await shot("9-no-failures")

    messages = await conn.fetch(
        "SELECT m.run_id, m.step_id, m.channel, m.subject, m.status, j.title FROM herald.messages m"
        " JOIN herald.runs r ON r.id = m.run_id JOIN herald.events e ON e.id = r.event_id"
        " JOIN jobs j ON j.id = e.row_id::int WHERE m.run_id = ANY($1::bigint[]) ORDER BY m.run_id, m.channel",
        [r["id"] for r in done])
    assert [(m["run_id"], m["channel"], m["status"]) for m in messages] == [
        (r["id"], channel, "captured") for r in done for channel in ("email", "sms")]
    for m in messages:
        if m["channel"] == "email":
            assert m["subject"] == f"Job Completed - {m['title']}"
    assert len({m["step_id"] for m in messages}) == len(messages), "one message per step"

    # 10. The audit trail names who did what, and why.
    audit = await conn.fetch("SELECT actor, action, target, tenant_id, reason, detail FROM herald.audit_log"
                             " WHERE action NOT IN ('login', 'logout') AND actor <> 'tests' ORDER BY id")
    actions = [(a["actor"], a["action"]) for a in audit]
    assert actions == [("ops@example.com", "workflow.save"), ("support@example.com", "run.retry"),
                       ("ops@example.com", "workflow.save"), ("ops@example.com", "failures.retry")], actions
    run_retry = next(a for a in audit if a["action"] == "run.retry")
    assert (run_retry["target"], run_retry["tenant_id"], run_retry["reason"]) == (f"run {run_id}", "1", reason)
    assert detail_of(run_retry)["force"] is True
    bulk = next(a for a in audit if a["action"] == "failures.retry")
    assert (bulk["tenant_id"], bulk["reason"]) == ("1", group_reason)
    assert sorted(detail_of(bulk)["retried"]) == sorted(r["id"] for r in done)
    saves = [detail_of(a) for a in audit if a["action"] == "workflow.save"]
    assert [s["version"] for s in saves] == [2, 3]
