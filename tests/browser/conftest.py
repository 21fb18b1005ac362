"""Herald's dashboard in a real browser: Debian's chromium driven by Playwright,
against the REAL dashboard process (`python -m daemon dashboard`) on the test's
own database, and, for scenarios that need runs to happen, the real daemon and
worker too.

What every browser test gets:
- ``page``: a fresh browser context and page (1280x800 unless the test is marked
  ``@pytest.mark.browser_context(viewport=..., is_mobile=..., ...)``), whose
  relative URLs go to the test's dashboard. Console errors, uncaught page errors,
  CSP violations and failed sub-resource loads (a script, a stylesheet, a fetch())
  fail the test at teardown. On failure the page's URL and an excerpt of its HTML,
  and the log of each Herald process, are printed.
- ``shot(step)``: a full-page screenshot to
  ``test-artifacts/screenshots/<test name>-<step>.png``; each test also gets a
  ``-final`` one when it ends.
- ``dashboard``: the running dashboard (``.url``, ``.processes``);
  ``dashboard.start_pipeline()`` (or the ``pipeline`` fixture) starts the daemon
  and a worker as well.
- ``sign_in(page, email)``: signs in through the real login form.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

from config.settings import Settings
from tests.conftest import REPO, wait_until
from tests.dashboard_support import PASSWORD
from tests.e2e import conftest as e2e
from tests.e2e.conftest import Processes, free_port

CHROMIUM = os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DEFAULT_CONTEXT: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
# Phones: the layout must work at 390 px wide with no horizontal scroll.
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
STARTUP_TIMEOUT = 20.0
HTML_EXCERPT = 4000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser_context(**options): options for the test's Playwright browser context"
                   " (viewport, is_mobile, has_touch, ...), replacing the 1280x800 default")


PHASES = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(PHASES, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    phases = request.node.stash.get(PHASES, {})
    return any(report.failed for report in phases.values())


# -- the browser ----------------------------------------------------------------

@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"The browser tests need Debian's chromium at {CHROMIUM}, which is missing:"
                    " install it with `apt-get install -y chromium` (they are never skipped).", pytrace=False)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


# -- Herald's processes ---------------------------------------------------------

# The environment of Herald's child processes in the end-to-end tests (quick sweeps, JSON logs).
herald_env = e2e.herald_env


@dataclass
class Dashboard:
    """The real dashboard process (and, once started, the daemon and a worker)."""

    url: str
    processes: Processes
    settings: Settings

    def start_pipeline(self) -> None:
        """Start the daemon and a worker on the same database, so events become runs."""
        for name in ("daemon", "worker"):
            if name not in self.processes.running:
                self.processes.start(name, name)

    def logs(self) -> str:
        parts = []
        for name in self.processes.running:
            text = self.processes.output(name)
            parts.append(f"----- {name} log (last 6000 characters) -----\n{text[-6000:] or '(empty)'}")
        return "\n".join(parts)


async def _answers(url: str, process: Any, processes: Processes) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the dashboard exited with status {process.returncode} before answering:\n"
                             + processes.output("dashboard")[-6000:])
    try:
        async with aiohttp.ClientSession() as session, session.get(
                f"{url}/login", allow_redirects=False, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@pytest.fixture
async def dashboard(settings: Settings, herald_env: dict[str, str], tmp_path: Path,
                    request: pytest.FixtureRequest) -> AsyncIterator[Dashboard]:
    """`python -m daemon dashboard --port <free port>` on the test's database, answering."""
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = Processes(herald_env | {"HERALD_DASHBOARD_PORT": str(port)}, logs)
    url = f"http://127.0.0.1:{port}"
    running = Dashboard(url=url, processes=processes, settings=settings)
    try:
        process = processes.start("dashboard", "dashboard", "--port", str(port))
        if "pipeline" in request.fixturenames:
            running.start_pipeline()  # while the dashboard starts
        await wait_until(lambda: _answers(url, process, processes), timeout=STARTUP_TIMEOUT, interval=0.05,
                         message=f"the dashboard to answer GET {url}/login")
        yield running
    finally:
        processes.stop_all()


@pytest.fixture
def pipeline(dashboard: Dashboard) -> Dashboard:
    """The dashboard, the daemon and a worker: changes to watched tables become runs."""
    dashboard.start_pipeline()
    return dashboard


# -- pages ------------------------------------------------------------------------

@dataclass
class Watch:
    """What went wrong in the browser while a test ran."""

    problems: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # A failed load is reported (with its URL and whether it was the page itself)
        # by on_response below; the console's copy names no URL.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console error: {message.text} (at {message.location.get('url')})")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"uncaught error in the page: {error}")

    def on_response(self, response: Response) -> None:
        request = response.request
        # The page itself may be an error page on purpose (a wrong password is a 401);
        # tests check navigations. Anything the page loads must load.
        if response.status >= 400 and not request.is_navigation_request() and not _is_favicon(request.url):
            self.problems.append(f"{request.resource_type} {request.method} {request.url} answered {response.status}")

    def on_request_failed(self, request: Request) -> None:
        failure = request.failure or ""
        # Leaving a page cancels what it was still loading (a live table's next refresh).
        if "ERR_ABORTED" not in failure and not request.is_navigation_request() and not _is_favicon(request.url):
            self.problems.append(f"{request.resource_type} {request.method} {request.url} failed: {failure}")


def _is_favicon(url: str) -> bool:
    return url.split("?", 1)[0].endswith("/favicon.ico")


# Chromium reports CSP violations on the console too; this also catches those it
# reports only as an event (and says which directive was broken).
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " blocked " + (event.blockedURI || "inline")
                + " at " + event.sourceFile + ":" + event.lineNumber);
});
"""


@pytest.fixture
def watch() -> Watch:
    """The browser problems of the test; they fail it at teardown (a test that
    provokes one on purpose removes it from ``watch.problems``)."""
    return Watch()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def screenshot_path(request: pytest.FixtureRequest, step: str) -> Path:
    return SCREENSHOTS / f"{_safe(request.node.name)}-{_safe(step)}.png"


@pytest.fixture
async def page(browser: Browser, dashboard: Dashboard, watch: Watch,
               request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    _forget_screenshots(request)
    marker = request.node.get_closest_marker("browser_context")
    options = dict(marker.kwargs) if marker else dict(DEFAULT_CONTEXT)
    context = await browser.new_context(base_url=dashboard.url, **options)
    context.set_default_timeout(10_000)
    context.set_default_navigation_timeout(15_000)
    await context.add_init_script(CSP_LISTENER)
    page = await context.new_page()
    page.on("console", watch.on_console)
    page.on("pageerror", watch.on_page_error)
    page.on("response", watch.on_response)
    page.on("requestfailed", watch.on_request_failed)
    try:
        yield page
        if _failed(request):
            await _report_failure(page, dashboard, request)
        else:
            await _screenshot(page, screenshot_path(request, "final"))
        assert not watch.problems, "the browser reported problems:\n" + "\n".join(watch.problems)
    finally:
        await context.close()


async def _screenshot(page: Page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)


async def _report_failure(page: Page, dashboard: Dashboard, request: pytest.FixtureRequest) -> None:
    """Print what a person needs to see why a browser test failed (shown with the failure)."""
    lines = [f"===== browser page at failure: {page.url}"]
    try:
        path = screenshot_path(request, "failure")
        await _screenshot(page, path)
        lines.append(f"screenshot: {path}")
        html = await page.content()
        main = re.search(r"<main\b.*?</main>", html, re.DOTALL)
        excerpt = main.group(0) if main else html
        lines.append(f"HTML ({'<main>' if main else 'page'}, first {HTML_EXCERPT} characters):\n"
                     f"{excerpt[:HTML_EXCERPT]}")
    except PlaywrightError as exc:  # the page may be gone; the logs below still help
        lines.append(f"(could not read the page: {exc})")
    lines.append(dashboard.logs())
    print("\n".join(lines), file=sys.stderr)


@pytest.fixture
def shot(page: Page, request: pytest.FixtureRequest) -> Callable[[str], Awaitable[Path]]:
    """``await shot("step")``: a full-page screenshot of where the page is now."""
    async def take(step: str) -> Path:
        path = screenshot_path(request, step)
        await _screenshot(page, path)
        return path

    return take


def _forget_screenshots(request: pytest.FixtureRequest) -> None:
    """A test's screenshots from an earlier run go (a step it no longer takes leaves none behind);
    other tests' stay, as other sessions may be running them."""
    for old in SCREENSHOTS.glob(f"{glob.escape(_safe(request.node.name))}-*.png"):
        old.unlink(missing_ok=True)


# -- people -------------------------------------------------------------------------

async def sign_in(page: Page, email: str, password: str = PASSWORD, *, next_path: str | None = None) -> None:
    """Sign in through the real login form (at /login?next=... when ``next_path`` is given)."""
    await page.goto("/login" if next_path is None else f"/login?next={next_path}")
    await fill_login(page, email, password)
    await page.wait_for_url(lambda url: not _path(url).startswith("/login"))


async def fill_login(page: Page, email: str, password: str) -> None:
    form = page.locator("form[action='/login']")
    await form.get_by_label("E-mail").fill(email)
    await form.get_by_label("Password").fill(password)
    async with page.expect_navigation():
        await form.get_by_role("button", name="Sign in").click()


async def sign_out(page: Page) -> None:
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{unquote(parts.query)}" if parts.query else "")


def path_of(page: Page) -> str:
    """The page's path and query, unquoted: ``/login?next=/runs``."""
    return _path(page.url)


async def run_ids_shown(page: Page) -> set[int]:
    """The ids of the runs a page lists: rows marked ``data-run-id`` and links to ``/runs/<id>``."""
    return set(await page.evaluate("""() => {
      const ids = [...document.querySelectorAll("main [data-run-id]")].map((el) => el.dataset.runId);
      for (const a of document.querySelectorAll("main a[href]")) {
        const m = new URL(a.href).pathname.match(/^\\/runs\\/(\\d+)$/);
        if (m) ids.push(m[1]);
      }
      return [...new Set(ids.map(Number))];
    }"""))
