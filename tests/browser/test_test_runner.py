"""The workflow test runner in a real browser on a real record: it shows the match and
each rendered step and sends nothing (no run, step, message or event row, no Redis
message); and the detail pages fit a phone's width."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Page, expect

from daemon.demo import load_demo
from tests.browser.conftest import PHONE, Dashboard, sign_in, sign_out
from tests.browser.test_layout import no_horizontal_scroll
from tests.dashboard_support import make_user
from tests.integration.test_dashboard import record_run

Shot = Callable[[str], Awaitable[Path]]

COUNTS = """
SELECT (SELECT count(*) FROM herald.runs) AS runs, (SELECT count(*) FROM herald.steps) AS steps,
       (SELECT count(*) FROM herald.messages) AS messages, (SELECT count(*) FROM herald.events) AS events
"""


async def redis_sizes(url: str) -> dict[str, int]:
    """Every Redis key with its length (lists, hashes, sets, sorted sets, streams): a queued
    Dramatiq message would grow one (its queue's list and its .msgs hash)."""
    client = aioredis.Redis.from_url(url)
    try:
        sizes = {}
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            length = {"list": client.llen, "hash": client.hlen, "set": client.scard, "zset": client.zcard,
                      "stream": client.xlen}.get(kind)
            sizes[key.decode()] = await length(key) if length else 1
        return sizes
    finally:
        await client.aclose()


async def run_test(page: Page, record_id: str, changes: str = "") -> None:
    form = page.locator("form.wf-test-form")
    await form.get_by_label("A real record").check()
    await form.get_by_label("Record id").fill(record_id)
    await form.get_by_label("Change (one per line").fill(changes)
    async with page.expect_navigation():
        await form.get_by_role("button", name="Run the test").click()


async def test_the_test_runner_on_a_real_record_sends_nothing(
    dashboard: Dashboard, page: Page, shot: Shot, conn: asyncpg.Connection,
) -> None:
    await load_demo(conn)
    await make_user(conn, "ops@example.com", "operator", ("1",))
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    # A real record in the state the trigger wants (no daemon runs here: its event just waits).
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
    before = dict(await conn.fetchrow(COUNTS))
    queues_before = await redis_sizes(dashboard.settings.redis_url)

    # 1. Workflows -> Job Completed -> Test.
    await sign_in(page, "ops@example.com", next_path="/workflows")
    await page.get_by_role("link", name="Job Completed", exact=True).click()
    await page.wait_for_url(re.compile(r"/workflows/[0-9a-f-]{36}$"))
    await page.get_by_role("link", name="Test", exact=True).click()
    await page.wait_for_url(re.compile(r"/workflows/[0-9a-f-]{36}/test$"))
    test_path = page.url
    await expect(page.get_by_role("heading", level=1)).to_have_text("Test Job Completed")
    await shot("1-test-page")

    # 2. Job 1 as it is now, the change the trigger watches for.
    await run_test(page, "1", "status=in_progress:completed")
    result = page.locator("section.wf-result")
    await expect(result.get_by_role("status")).to_contain_text("Nothing was sent.")
    await expect(result.locator("#result-title")).to_contain_text("matched")
    await expect(result.locator("#result-title .badge")).to_have_text("matched")
    await expect(result.locator(".wf-reason")).not_to_be_empty()
    steps = result.locator("li.wf-step")
    await expect(steps).to_have_count(2)
    email, sms = steps.nth(0), steps.nth(1)
    await expect(email).to_contain_text("email")
    await expect(email.locator(".badge")).to_have_text("would send")
    await expect(email).to_contain_text("maria.lopez@example.com")
    await expect(email).to_contain_text("Job Completed - Replace kitchen faucet")
    await expect(email).to_contain_text(re.compile(r"Dear Maria,\s+Your job has been completed\."))
    await expect(sms.locator(".badge")).to_have_text("would send")
    await expect(sms).to_contain_text("+15550101001")
    await expect(sms).to_contain_text("Job Replace kitchen faucet completed. Thank you!")
    await shot("2-matched")

    # 3. Nothing was written or queued; the captured messages list nothing.
    assert dict(await conn.fetchrow(COUNTS)) == before
    assert await redis_sizes(dashboard.settings.redis_url) == queues_before
    await page.goto("/workflows/captured")
    await expect(page.locator("main table tbody tr")).to_have_count(0)
    await expect(page.locator("main .empty")).to_contain_text("No captured messages")
    await shot("3-captured")

    # 4. A record that does not match (job 3 is "new"), and one of another tenant (job 4).
    await page.goto(test_path)
    await run_test(page, "3", "status=scheduled:new")
    await expect(result.locator("#result-title .badge")).to_have_text("did not match")
    await expect(result.locator(".wf-reason")).to_contain_text("new")
    await expect(result.locator("li.wf-step")).to_have_count(0)
    await shot("4-no-match")
    await run_test(page, "4")
    # Refused, with none of the record's data (its title, its client) shown.
    await expect(page.get_by_role("alert")).to_contain_text("record")
    await expect(page.locator("main")).not_to_contain_text("Install EV charger")
    await expect(page.locator("main")).not_to_contain_text("@example.com")
    await expect(page.locator("section.wf-result")).to_have_count(0)
    await shot("4-other-tenant")
    assert dict(await conn.fetchrow(COUNTS)) == before
    assert await redis_sizes(dashboard.settings.redis_url) == queues_before

    # Each test is audited (who tried what), and wrote nothing else.
    audit = await conn.fetch("SELECT actor, action, tenant_id FROM herald.audit_log WHERE action LIKE 'workflow.%'"
                             " ORDER BY id")
    assert [tuple(a) for a in audit] == [("ops@example.com", "workflow.test", "1")] * 2

    # 5. A viewer may not use the test runner.
    await sign_out(page)
    await sign_in(page, "viewer@example.com")
    response = await page.goto(test_path)
    assert response is not None and response.status == 403
    await shot("5-viewer")


@pytest.mark.browser_context(**PHONE)
async def test_detail_pages_fit_a_phone(dashboard: Dashboard, page: Page, shot: Shot,
                                        conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    run_id = await record_run(conn, 1, failed=True)
    # A long error with no spaces must wrap, not widen the page.
    await conn.execute("UPDATE herald.runs SET error = 'step 1 (step-1, email): ' || repeat('nospaces', 40)"
                       " WHERE id = $1", run_id)
    await conn.execute("UPDATE herald.steps SET error = repeat('nospaces', 40) WHERE run_id = $1", run_id)
    await make_user(conn, "ops@example.com", "operator", ("1",))
    workflow_id = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    width = PHONE["viewport"]["width"]

    await sign_in(page, "ops@example.com", next_path="/failures")
    await page.locator("tr[data-group]").get_by_role("link", name=re.compile("Open group")).click()
    await page.wait_for_url(re.compile(r"/failures/group/[0-9a-f]{20}"))
    problems = [await no_horizontal_scroll(page, width)]
    await shot("failure-group")
    for name, path in (("run", f"/runs/{run_id}"), ("record", "/records/job/1"),
                       ("workflow", f"/workflows/{workflow_id}"), ("edit", f"/workflows/{workflow_id}/edit"),
                       ("test", f"/workflows/{workflow_id}/test")):
        response = await page.goto(path)
        assert response is not None and response.ok, f"{path} answered {response and response.status}"
        problems.append(await no_horizontal_scroll(page, width))
        await shot(name)
    # The test runner's result, too.
    await run_test(page, "1", "status=in_progress:completed")
    await expect(page.locator("section.wf-result li.wf-step")).to_have_count(2)
    problems.append(await no_horizontal_scroll(page, width))
    await shot("test-result")
    found = [problem for problem in problems if problem]
    assert not found, "pages scroll sideways on a phone:\n" + "\n".join(found)
