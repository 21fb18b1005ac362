"""The runs list, live, in a real browser with the real daemon and worker: a run appears
without reloading and turns completed; another tenant's run never appears; a status
redraw keeps an open step open; Pause (by keyboard) stops updates and Resume brings
them; a filter applies to the live rows too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Frame, Page, Request, Response, expect

from daemon.demo import load_demo
from tests.browser.conftest import Dashboard, path_of, sign_in
from tests.conftest import wait_until
from tests.dashboard_support import make_user

Shot = Callable[[str], Awaitable[Path]]
RUN_TIMEOUT = 30.0
LIVE_TIMEOUT = 20_000  # ms: the page asks every 2 s; a run takes a few seconds through the pipeline
ZONE = "Asia/Tokyo"

# Counts the live table's timer ticks (runs.js waits 2000 ms between refreshes), so a test can
# wait for "two refreshes would have happened" as a condition instead of sleeping.
COUNT_TICKS = """
window.__heraldTicks = 0;
const realSetTimeout = window.setTimeout;
window.setTimeout = function (callback, ms, ...rest) {
  if (ms === 2000 && typeof callback === "function") {
    return realSetTimeout(function (...args) { window.__heraldTicks += 1; return callback(...args); }, ms, ...rest);
  }
  return realSetTimeout(callback, ms, ...rest);
};
"""

RUN_OF_JOB = """
SELECT r.id, r.status, r.tenant_id FROM herald.runs r JOIN herald.events e ON e.id = r.event_id
WHERE e.row_id = $1 AND e.entity = 'job' ORDER BY r.id DESC LIMIT 1
"""


async def completed_run(conn: asyncpg.Connection, job: int) -> Any:
    async def done() -> Any:
        row = await conn.fetchrow(RUN_OF_JOB, str(job))
        return row if row is not None and row["status"] == "completed" else None

    return await wait_until(done, timeout=RUN_TIMEOUT, message=f"the run of job {job} to complete")


async def two_more_ticks(page: Page) -> None:
    """Wait until the live table's timer has fired twice more: any refresh it was going to
    make after now has begun."""
    now = await page.evaluate("window.__heraldTicks")
    await page.wait_for_function("(least) => window.__heraldTicks >= least", arg=now + 2, timeout=LIVE_TIMEOUT)


@pytest.mark.browser_context(viewport={"width": 1280, "height": 800}, timezone_id=ZONE)
async def test_runs_appear_live_without_reloading(
    pipeline: Dashboard, page: Page, shot: Shot, conn: asyncpg.Connection,
) -> None:
    await load_demo(conn)
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    await page.add_init_script(COUNT_TICKS)
    rows_requests: list[str] = []
    rows_responses: list[str] = []

    def on_request(request: Request) -> None:
        if "/runs/rows" in request.url:
            rows_requests.append(request.url)

    def on_response(response: Response) -> None:
        # The question "any runs newer than the newest shown?" (one per refresh).
        if "/runs/rows" in response.url and "ids=" not in response.url:
            rows_responses.append(response.url)

    page.on("request", on_request)
    page.on("response", on_response)

    async def two_more_refreshes() -> None:
        """Two more answers of /runs/rows: the second was asked for after now."""
        seen = len(rows_responses)

        async def answered() -> bool:
            return len(rows_responses) >= seen + 2

        await wait_until(answered, timeout=LIVE_TIMEOUT / 1000, message="two more refreshes of the runs list")

    # 1. The viewer opens /runs: nothing yet. A reload from here on would be noticed.
    await sign_in(page, "viewer@example.com", next_path="/runs")
    await expect(page.locator("tr.empty-row")).to_contain_text("No runs yet")
    await page.evaluate("window.herald_no_reload = 1")
    navigations: list[str] = []

    def on_navigated(frame: Frame) -> None:
        if frame == page.main_frame:
            navigations.append(frame.url)

    page.on("framenavigated", on_navigated)
    await shot("1-empty")

    # 2. Job 1 completes in the database; the pipeline runs its workflow.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")

    # 3. The run appears and turns completed, with both steps sent, all without a reload.
    rows = page.locator("tr.run")
    await expect(rows).to_have_count(1, timeout=LIVE_TIMEOUT)
    await expect(page.locator("tr.empty-row")).to_have_count(0)
    row = rows.first
    await expect(row).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT)
    run = await completed_run(conn, 1)
    assert await row.get_attribute("data-run-id") == str(run["id"])
    await expect(row.locator("details.step summary .badge")).to_have_text(["sent", "sent"])
    await expect(row.locator("details.step summary")).to_contain_text(
        ["maria.lopez@example.com", "+15550101001"])
    # The inserted row's times are in the reader's zone (herald.js ran on it too).
    times = row.locator("time")
    assert await times.count() >= 1
    for index in range(await times.count()):
        await expect(times.nth(index)).to_have_attribute("data-local", "1")
        assert ZONE in (await times.nth(index).get_attribute("title") or "")
        assert "UTC" not in await times.nth(index).inner_text()
    assert await page.evaluate("window.herald_no_reload") == 1
    assert navigations == []
    await shot("3-live-row")

    # 4. A run of tenant 2 completes, but never shows on tenant 1's viewer's page.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 4")
    other = await completed_run(conn, 4)
    assert other["tenant_id"] == "2"
    await two_more_refreshes()
    assert [await r.get_attribute("data-run-id") for r in await rows.all()] == [str(run["id"])]
    assert await page.evaluate("window.herald_no_reload") == 1
    assert navigations == []

    # 5. An open step stays open when its row's status is redrawn. (Reloading now, on purpose:
    # a run shown as running is one the page asks about; the daemon leaves alone a running
    # run whose steps are all sent.)
    await conn.execute("UPDATE herald.runs SET status = 'running' WHERE id = $1", run["id"])
    await page.reload()
    row = page.locator(f'tr.run[data-run-id="{run["id"]}"]')
    await expect(row).to_have_attribute("data-status", "running")
    await row.locator('details.step[data-key="0"] summary').click()
    await expect(row.locator('details.step[data-key="0"]')).to_have_attribute("open", "")
    await row.evaluate("(element) => { element.dataset.before = 'redraw'; }")
    await conn.execute("UPDATE herald.runs SET status = 'completed' WHERE id = $1", run["id"])
    await expect(row).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT)
    assert await row.get_attribute("data-before") is None, "the row was redrawn, not patched"
    await expect(row.locator('details.step[data-key="0"]')).to_have_attribute("open", "")
    await expect(row.locator('details.step[data-key="1"]')).not_to_have_attribute("open", "")
    await shot("5-open-step-kept")

    # 6. Pause, by keyboard: nothing is asked for or added until Resume.
    pause = page.get_by_role("button", name="Pause")
    await pause.focus()
    await page.keyboard.press("Enter")
    resume = page.get_by_role("button", name="Resume")
    await expect(resume).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#runs-updated")).to_have_text("paused")
    asked_before = len(rows_requests)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 2")
    second = await completed_run(conn, 2)
    await two_more_ticks(page)
    assert len(rows_requests) == asked_before, "a paused page asked for rows"
    await expect(rows).to_have_count(1)
    await shot("6-paused")
    await resume.focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Pause")).to_have_attribute("aria-pressed", "false")
    await expect(page.locator(f'tr.run[data-run-id="{second["id"]}"]')).to_have_attribute(
        "data-status", "completed", timeout=LIVE_TIMEOUT)
    await expect(rows).to_have_count(2)
    await shot("6-resumed")

    # 7. A filter applies to the live rows: a completed run is not added to failed runs.
    await page.goto("/runs?status=failed")
    assert path_of(page) == "/runs?status=failed"
    await expect(page.locator("tr.empty-row")).to_be_visible()
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 3")
    await completed_run(conn, 3)
    await two_more_refreshes()
    assert any("status=failed" in url for url in rows_requests[-2:])
    await expect(rows).to_have_count(0)
    await shot("7-filtered")
