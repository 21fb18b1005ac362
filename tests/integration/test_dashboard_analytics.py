"""The analytics page and /api/analytics over a real database: per workflow and
UTC day, runs, success rate, p50/p95 duration and retries equal a hand
computation over the rows; messages per channel and provider; charts; tenant
scope and bad parameters.

Rows are placed at noon (UTC) of past days, and the expected days are read
from PostgreSQL, so no assertion depends on the hour the tests run at.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.demo import load_demo
from tests.dashboard_support import signed_in

SVG = "{http://www.w3.org/2000/svg}"
# Today's UTC midnight by the database's clock, read once per test: every row is
# placed at noon of a day counted back from it.
TODAY = "SELECT date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"


@pytest.fixture
async def admin(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> TestClient:
    await load_demo(conn)
    client, _ = await signed_in(aiohttp_client, settings, conn, "admin@example.com", "admin")
    return client


@pytest.fixture
async def tenant_one(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection,
                     admin: TestClient) -> TestClient:
    client, _ = await signed_in(aiohttp_client, settings, conn, "viewer1@example.com", "viewer", ("1",))
    return client


async def add_run(conn: asyncpg.Connection, tenant: str, at: dt.datetime, status: str, ms: int | None, *,
                  retry_count: int = 0, attempts: int = 1,
                  messages: tuple[tuple[str, str, str], ...] = ()) -> int:
    """A run created ``at``, its event, one step and its messages (channel, provider, status)."""
    event = await conn.fetchval(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, state, created_at)"
        " VALUES ($2, 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', 'matched', $1)"
        " RETURNING id", at, tenant)
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", tenant)
    run = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, execution_time_ms, retry_count,"
        " created_at, completed_at) VALUES ($2, $3, $4, $5, $6, $7, $1, $1)"
        " RETURNING id", at, tenant, workflow, event, status, ms, retry_count)
    step = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status, attempts)"
        " VALUES ($1, $2, 0, 'step-1', 'email', 'email', '{}', 'sent', $3) RETURNING id", run, tenant, attempts)
    for index, (channel, provider, state) in enumerate(messages):
        await conn.execute(
            "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key,"
            " recipient, body, status, created_at) VALUES ($2, $3, $4, $5, $6, $7, 'a@example.com', 'hi', $8,"
            " $1)", at, tenant, run, step, channel, provider, f"key-{run}-{index}", state)
    return int(run)


def percentile_cont(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.fixture
async def runs(admin: TestClient, conn: asyncpg.Connection) -> dict[str, Any]:
    """Tenant 1: five runs two days ago, four three days ago, one 10 days ago; tenant 2: two runs.
    All at noon UTC; the window (7 days) holds days 2 and 3 whenever the request comes."""
    today = await conn.fetchval(TODAY)

    def noon(days_ago: int) -> dt.datetime:
        return today - dt.timedelta(days=days_ago) + dt.timedelta(hours=12)
    first = [("completed", 100), ("completed", 200), ("completed", 300), ("completed", 1000), ("failed", 400)]
    for index, (status, ms) in enumerate(first):
        await add_run(conn, "1", noon(2), status, ms, retry_count=1 if index == 0 else 0, attempts=2 if index == 1 else 1,
                      messages=(("email", "capture", "captured"),) if status == "completed" else ())
    second = [("completed", 50), ("completed", 70), ("skipped", None), ("failed", 90)]
    for status, ms in second:
        await add_run(conn, "1", noon(3), status, ms, messages=(("sms", "telnyx", "sent" if status == "completed"
                                                           else "failed"),) if ms else ())
    await add_run(conn, "1", noon(10), "completed", 5000)
    await add_run(conn, "2", noon(2), "failed", 9000, messages=(("email", "mailgun", "sent"),))
    await add_run(conn, "2", noon(2), "failed", 8000)
    days = {days_ago: noon(days_ago).astimezone(dt.UTC).date().isoformat() for days_ago in (2, 3, 10)}
    return {"first": first, "second": second, "days": days}


def expected(rows: list[tuple[str, int | None]], retried: int = 0) -> dict[str, Any]:
    durations = [ms for _, ms in rows if ms is not None]
    completed = sum(status == "completed" for status, _ in rows)
    failed = sum(status == "failed" for status, _ in rows)
    return {"runs": len(rows), "completed": completed, "failed": failed,
            "success_rate": round(completed / (completed + failed), 4),
            "p50_ms": round(percentile_cont(durations, 0.5), 1),
            "p95_ms": round(percentile_cont(durations, 0.95), 1), "retried": retried}


def picked(numbers: dict[str, Any]) -> dict[str, Any]:
    return {key: numbers[key] for key in ("runs", "completed", "failed", "success_rate", "p50_ms", "p95_ms",
                                          "retried")}


async def test_numbers_per_workflow_and_day_equal_a_hand_computation(
    tenant_one: TestClient, runs: dict[str, Any]
) -> None:
    body = await (await tenant_one.get("/api/analytics", params={"days": "7"})).json()
    assert body["days"] == 7 and len(body["per_day"]) == 7
    (workflow,) = body["workflows"]
    assert workflow["name"] == "Job Completed"
    by_day = {day["day"]: day for day in workflow["days"]}
    assert set(by_day) == {runs["days"][2], runs["days"][3]}  # the run 10 days ago is outside
    assert picked(by_day[runs["days"][2]]) == expected(runs["first"], retried=2)
    assert picked(by_day[runs["days"][3]]) == expected(runs["second"])
    assert by_day[runs["days"][3]]["skipped"] == 1
    assert picked(workflow["totals"]) == expected(runs["first"] + runs["second"], retried=2)
    assert picked(body["totals"]) == picked(workflow["totals"])
    per_day = {day["day"]: day for day in body["per_day"]}
    assert per_day[runs["days"][2]]["runs"] == 5 and sum(day["runs"] for day in body["per_day"]) == 9

    messages = {(m["channel"], m["provider"]): m for m in body["messages"]}
    assert set(messages) == {("email", "capture"), ("sms", "telnyx")}
    assert messages[("email", "capture")]["total"] == 4
    assert messages[("sms", "telnyx")]["by_status"] == {"sent": 2, "failed": 1}

    longer = await (await tenant_one.get("/api/analytics", params={"days": "30"})).json()
    assert longer["totals"]["runs"] == 10 and len(longer["per_day"]) == 30


async def test_the_page_shows_the_numbers_and_charts_in_utc_days(
    tenant_one: TestClient, runs: dict[str, Any]
) -> None:
    response = await tenant_one.get("/analytics", params={"days": "7"})
    assert response.status == 200
    page = await response.text()
    assert "Days are UTC days" in page and 'style="' not in page
    totals = expected(runs["first"] + runs["second"], retried=2)
    assert f'data-total="runs">{totals["runs"]}<' in page
    assert f'{totals["success_rate"] * 100:.1f} %' in page
    day_row = page.split(f'data-day="{runs["days"][2]}"')[1].split("</tr>")[0]
    assert re.search(r'data-label="Runs">5<', day_row) and "80.0 %" in day_row
    assert 'data-provider="telnyx"' in page

    charts = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.S)]
    assert len(charts) == 2
    bars, durations = charts
    for chart in charts:
        assert chart.get("role") == "img" and chart.get("aria-label") and chart.find(f"{SVG}title") is not None
    stacks = [g for g in bars.iter(f"{SVG}g") if g.get("class") == "stack"]
    assert len(stacks) == 7
    totals_by_day = {g.get("data-label"): g.get("data-total") for g in stacks}
    assert totals_by_day[runs["days"][2][5:]] == "5" and totals_by_day[runs["days"][3][5:]] == "4"
    assert sum(len(g.findall(f"{SVG}rect")) for g in stacks) == 2 + 3  # completed+failed; completed+skipped+failed
    p95 = next(g for g in durations.iter(f"{SVG}g") if g.get("data-series") == "p95")
    assert len(p95.findall(f"{SVG}circle")) == 2  # the two days with runs


async def test_a_tenant_viewer_counts_only_their_tenant(
    admin: TestClient, tenant_one: TestClient, runs: dict[str, Any]
) -> None:
    mine = await (await tenant_one.get("/api/analytics")).json()
    everyone = await (await admin.get("/api/analytics")).json()
    assert mine["totals"]["runs"] == 9 and everyone["totals"]["runs"] == 11
    assert ("email", "mailgun") not in {(m["channel"], m["provider"]) for m in mine["messages"]}
    two = await (await admin.get("/api/analytics", params={"tenant": "2"})).json()
    assert (two["totals"]["runs"], two["totals"]["success_rate"]) == (2, 0.0)
    assert two["totals"]["p95_ms"] == round(percentile_cont([9000, 8000], 0.95), 1)
    assert (await tenant_one.get("/api/analytics", params={"tenant": "2"})).status == 404
    assert (await tenant_one.get("/analytics", params={"tenant": "2"})).status == 404
    assert "9,000 ms" not in await (await tenant_one.get("/analytics")).text()


async def test_no_runs_is_an_empty_page_not_an_error(tenant_one: TestClient) -> None:
    body = await (await tenant_one.get("/api/analytics", params={"days": "1"})).json()
    assert body["totals"]["runs"] == 0 and body["totals"]["success_rate"] is None and body["workflows"] == []
    page = await (await tenant_one.get("/analytics")).text()
    assert "No runs in these days." in page


@pytest.mark.parametrize("days", ["0", "91", "abc", "-3"])
async def test_bad_days_are_a_400_naming_the_parameter(admin: TestClient, days: str) -> None:
    response = await admin.get("/api/analytics", params={"days": days})
    assert response.status == 400 and (await response.json())["error"].startswith("days")
    page = await admin.get("/analytics", params={"days": days})
    assert page.status == 400 and "days must" in await page.text()
