"""The layout in a real browser: a phone's width with no horizontal scroll on any
page, the keyboard path through the header, and the CSP watch itself."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Page, expect

from daemon.demo import load_demo
from tests.browser.conftest import PHONE, Watch, path_of, sign_in
from tests.conftest import wait_until
from tests.dashboard_support import make_user
from tests.integration.test_dashboard import record_run

Shot = Callable[[str], Awaitable[Path]]
NAV_PAGES = ["/", "/runs", "/events", "/failures", "/workflows", "/analytics"]

# How wide the page is, and (when too wide) the elements that stick out, to name in the failure.
MEASURE = """() => {
  const width = window.innerWidth;
  const sticking = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > width + 0.5) {
      const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
        + (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "");
      sticking.push(name + " (right edge " + Math.round(box.right) + "px)");
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width,
          clientWidth: document.documentElement.clientWidth, sticking: sticking.slice(0, 8)};
}"""


async def no_horizontal_scroll(page: Page, viewport_width: int) -> str | None:
    """None when the page fits the phone's width; else what is too wide."""
    measured: dict[str, Any] = await page.evaluate(MEASURE)
    # A phone zooms out to fit a page that is too wide, which widens innerWidth: the
    # screen's own width is the limit.
    limit = min(measured["innerWidth"], measured["clientWidth"], viewport_width)
    if measured["scrollWidth"] <= limit:
        return None
    return (f"{path_of(page)}: {measured['scrollWidth']}px wide on a {viewport_width}px screen;"
            f" sticking out: {', '.join(measured['sticking']) or '(nothing measurable)'}")


@pytest.mark.browser_context(**PHONE)
async def test_no_page_scrolls_sideways_on_a_phone(page: Page, shot: Shot, conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    await record_run(conn, 1)
    await record_run(conn, 4, failed=True)  # a long error message, in tenant 2
    await make_user(conn, "admin.with.a.rather.long.address@example.com", "admin")
    width = PHONE["viewport"]["width"]
    too_wide = []

    response = await page.goto("/login")
    assert response is not None and response.ok
    too_wide.append(await no_horizontal_scroll(page, width))
    await shot("login")

    await sign_in(page, "admin.with.a.rather.long.address@example.com")
    for path in NAV_PAGES:
        response = await page.goto(path)
        assert response is not None and response.ok, f"{path} answered {response and response.status}"
        # Every page has the layout: the header and its nav.
        await expect(page.get_by_role("navigation", name="Pages", exact=True)).to_be_visible()
        too_wide.append(await no_horizontal_scroll(page, width))
        await shot(path.strip("/") or "overview")
    problems = [problem for problem in too_wide if problem]
    assert not problems, "pages scroll sideways on a phone:\n" + "\n".join(problems)


async def test_the_keyboard_reaches_skip_link_first_then_the_nav(
    page: Page, shot: Shot, conn: asyncpg.Connection
) -> None:
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    await sign_in(page, "viewer@example.com", next_path="/runs")
    await page.goto("/runs")

    # The first Tab from the top of the page: "Skip to content", shown on screen.
    await page.keyboard.press("Tab")
    focused = page.locator(":focus")
    await expect(focused).to_have_text("Skip to content")
    box = await focused.bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0, f"the focused skip link is off screen: {box}"
    await shot("skip-link-focused")

    # Then every link of the nav, in order, within the header's first stops.
    nav = page.get_by_role("navigation", name="Pages", exact=True)
    wanted = await nav.get_by_role("link").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert wanted[:6] == NAV_PAGES
    reached = []
    for _ in range(len(wanted) + 3):
        await page.keyboard.press("Tab")
        href = await page.evaluate("() => document.activeElement.closest('nav') && "
                                   "document.activeElement.getAttribute('href')")
        if href:
            reached.append(href)
        if reached == wanted:
            break
    assert reached == wanted, f"Tab reached {reached} of the nav's {wanted}"
    await expect(nav.get_by_role("link", name="Runs")).to_have_attribute("aria-current", "page")

    # The skip link moves the keyboard past the header, to the page's content.
    await page.goto("/runs")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    # The fragment navigation completes after the key press returns: wait for it.
    await expect(page).to_have_url(re.compile(r"#main$"))
    await expect(page.locator("main#main")).to_be_in_viewport()


async def test_the_watch_catches_a_content_security_policy_violation(
    page: Page, watch: Watch, conn: asyncpg.Connection
) -> None:
    """The browser tests would notice a page breaking the CSP: an inline script is refused and reported."""
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    await sign_in(page, "viewer@example.com", next_path="/runs")
    assert watch.problems == []
    ran = await page.evaluate("""() => {
      window.inlineRan = false;
      const script = document.createElement("script");
      script.textContent = "window.inlineRan = true";
      document.body.append(script);
      return window.inlineRan;
    }""")
    assert ran is False

    async def reported() -> bool:
        # Chromium's own console message, and the securitypolicyviolation event the watch listens to.
        return (any("Content Security Policy" in problem for problem in watch.problems)
                and any("CSP violation: script-src" in problem for problem in watch.problems))

    await wait_until(reported, timeout=5, message="the CSP violation to be reported")
    watch.problems.clear()  # provoked on purpose
