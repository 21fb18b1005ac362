"""The dashboard over a real database and Redis: runs page, /api/runs, /api/stats
(/health has its own tests in test_health.py)."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.errors import HeraldConfigError
from config.settings import Settings
from daemon.demo import load_demo
from dashboard.app import create_app
from tests.dashboard_support import make_user, sign_in


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> TestClient:
    # Settings (and so the test database) first: torn down after the app closes its pool.
    client = await aiohttp_client(create_app(settings))
    await make_user(conn, "admin@example.com", "admin")
    await sign_in(client, "admin@example.com")
    return client


async def record_run(conn: asyncpg.Connection, job_id: int, *, failed: bool = False) -> int:
    """A run as the actors leave it: event, run and two steps."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
    event = await conn.fetchrow("SELECT id, tenant_id FROM herald.events ORDER BY id DESC LIMIT 1")
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", event["tenant_id"])
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error, execution_time_ms)"
        " VALUES ($1, $2, $3, $4, $5, 42) RETURNING id",
        event["tenant_id"], workflow, event["id"], "failed" if failed else "completed",
        "step 1 (step-1, email): client.email is undefined" if failed else None)
    await conn.execute(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        " rendered) VALUES ($1, $2, 0, 'step-1', 'email', 'email', '{}', $3, $4)",
        run_id, event["tenant_id"], "failed" if failed else "sent",
        None if failed else {"recipient": "maria.lopez@example.com", "subject": "Job Completed - <b>x</b>",
                             "message": "Dear Maria"})
    return int(run_id)


async def test_api_runs_lists_runs_with_steps(client: TestClient, conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    first = await record_run(conn, 1)
    second = await record_run(conn, 4, failed=True)
    response = await client.get("/api/runs")
    assert response.status == 200
    runs = (await response.json())["runs"]
    assert [run["id"] for run in runs] == [second, first]
    done = runs[1]
    assert done["workflow"]["name"] == "Job Completed" and done["status"] == "completed"
    assert done["event"] == {"id": done["event"]["id"], "type": "job.updated", "entity": "job", "row_id": "1"}
    assert done["execution_time_ms"] == 42
    assert done["steps"][0]["rendered"]["recipient"] == "maria.lopez@example.com"

    only_failed = await (await client.get("/api/runs", params={"status": "failed"})).json()
    assert [run["id"] for run in only_failed["runs"]] == [second]
    tenant_one = await (await client.get("/api/runs", params={"tenant": "1"})).json()
    assert [run["id"] for run in tenant_one["runs"]] == [first]


async def test_bad_filters_are_refused(client: TestClient) -> None:
    assert (await client.get("/api/runs", params={"status": "exploded"})).status == 400
    assert (await client.get("/api/runs", params={"limit": "100000"})).status == 400


async def test_runs_page_shows_the_rendered_message_escaped(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    await load_demo(conn)
    await record_run(conn, 1)
    await record_run(conn, 4, failed=True)
    html = await (await client.get("/runs")).text()
    assert "Job Completed" in html and "maria.lopez@example.com" in html
    assert "Job Completed - &lt;b&gt;x&lt;/b&gt;" in html  # a rendered message is data, not markup
    assert "client.email is undefined" in html
    fragment = await (await client.get("/runs/table")).text()
    assert fragment.count("<tr class=\"run") == 2


async def test_stats_count_outcomes_and_retries(client: TestClient, conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    first = await record_run(conn, 1)
    await record_run(conn, 2)
    await record_run(conn, 4, failed=True)
    await conn.execute("UPDATE herald.steps SET attempts = 2 WHERE run_id = $1", first)  # needed a retry
    stats = await (await client.get("/api/stats")).json()
    assert (stats["runs"], stats["completed"], stats["failed"], stats["completed_after_retry"]) == (3, 2, 1, 1)
    assert stats["share_completed_after_retry"] == 0.5 and stats["attempts"] == 2
    tenant_two = await (await client.get("/api/stats", params={"tenant": "2"})).json()
    assert (tenant_two["runs"], tenant_two["failed"]) == (1, 1)


# -- who may ask, and what every answer carries --------------------------------

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def assert_hardened(response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers.get(name))
    policy = {directive.split()[0]: directive.split()[1:]
              for directive in response.headers["Content-Security-Policy"].split(";") if directive.strip()}
    assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert not any("'unsafe-inline'" in sources or "'unsafe-eval'" in sources for sources in policy.values())
    server = response.headers.get("Server", "")
    assert "Python" not in server and "aiohttp" not in server and not any(ch.isdigit() for ch in server)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
async def test_loopback_names_on_the_dashboards_port_are_served(client: TestClient, host: str) -> None:
    response = await client.get("/api/runs", headers={"Host": host.format(port=client.port)})
    assert response.status == 200
    assert_hardened(response)


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example:{port}",
    "localhost:{other}", "127.0.0.1:{other}", "0.0.0.0:{port}", "localhost.:{port}", "::1", "[::1", "",
    "localhost:{port}:1", "localhost:abc",
])
async def test_any_other_host_header_is_refused(client: TestClient, conn: asyncpg.Connection, host: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``; it must learn nothing, from any page."""
    await load_demo(conn)
    await record_run(conn, 1)
    header = host.format(port=client.port, other=client.port + 1)
    for path in ("/", "/api/runs", "/api/stats", "/runs/table", "/health", "/static/runs.js", "/nope"):
        response = await client.get(path, headers={"Host": header})
        text = await response.text()
        assert response.status == 400, (path, response.status)
        assert "maria" not in text and "Job Completed" not in text and len(text) < 200
        assert "\n" not in text.strip() and "Traceback" not in text
        assert_hardened(response)


async def test_configured_host_names_are_served(settings: Settings, aiohttp_client: Any) -> None:
    configured = settings.replace(dashboard_host="0.0.0.0", dashboard_allowed_hosts=(
        "herald.example.com", "ops.example.com:8443", "[fd00::5]"))
    client = await aiohttp_client(create_app(configured))
    for host, status in [("herald.example.com", 200), ("Herald.Example.com:443", 200), ("ops.example.com:8443", 200),
                         ("ops.example.com", 400), ("ops.example.com:9999", 400), ("[fd00::5]:80", 200),
                         ("0.0.0.0:{port}", 400), ("evil.example.com", 400), ("127.0.0.1:{port}", 200)]:
        response = await client.get("/login", headers={"Host": host.format(port=client.port)})
        assert response.status == status, host


def test_allowed_hosts_come_from_the_environment() -> None:
    settings = Settings.from_env({"HERALD_DASHBOARD_ALLOWED_HOSTS": " Herald.example.com ,10.0.0.5:8080,[::1] "})
    assert settings.dashboard_allowed_hosts == ("herald.example.com", "10.0.0.5:8080", "[::1]")
    assert Settings.from_env({}).dashboard_allowed_hosts == ()
    for bad in ("http://herald.example.com/", "herald example.com", "herald.example.com:port", ","):
        with pytest.raises(HeraldConfigError, match="HERALD_DASHBOARD_ALLOWED_HOSTS must be a comma-separated"):
            Settings.from_env({"HERALD_DASHBOARD_ALLOWED_HOSTS": bad})


async def test_every_response_is_hardened_and_the_page_runs_no_inline_script(
    client: TestClient, conn: asyncpg.Connection
) -> None:
    await load_demo(conn)
    await record_run(conn, 1)
    page = await client.get("/")
    html = await page.text()
    assert page.status == 200
    # The CSP allows scripts from the dashboard's own files only: every <script> must load one.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL | re.IGNORECASE)
    assert scripts and all('src="/static/' in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.IGNORECASE)  # no inline event handlers
    assert not re.search(r"\sstyle\s*=", html, flags=re.IGNORECASE)  # no inline styles either
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        asset = await client.get(path)
        assert asset.status == 200, path
        assert_hardened(asset)
    for path in ("/", "/runs/table", "/api/runs", "/api/stats", "/health", "/nope", "/api/runs?limit=x"):
        assert_hardened(await client.get(path))


@pytest.mark.parametrize("query", [
    "tenant=%00", "tenant=1%00", "tenant=%0a", "tenant=a%0d%0ab", "tenant=%1b[31m", "tenant=%e2%80%a8",
    "%00=1", "status=%00", "limit=%00",
])
async def test_control_characters_in_the_query_are_a_clear_400(client: TestClient, query: str) -> None:
    for path in ("/api/runs", "/api/stats", "/", "/runs/table"):
        response = await client.get(f"{path}?{query}")
        text = await response.text()
        assert response.status == 400, (path, query, response.status)
        assert len(text) < 200 and "Traceback" not in text and "\n" not in text.strip()
