"""The dashboard over a real database and Redis: runs page, /api/runs, /api/stats
(/health has its own tests in test_health.py)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.demo import load_demo
from dashboard.app import create_app


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any) -> TestClient:
    # Settings (and so the test database) first: torn down after the app closes its pool.
    return await aiohttp_client(create_app(settings))


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
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config, status, rendered)"
        " VALUES ($1, $2, 0, 'step-1', 'email', '{}', $3, $4)",
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
    html = await (await client.get("/")).text()
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
