"""The overview page (/) and /api/overview over a real database and Redis: health
in words, queue depths, throughput per minute, failures of the last day,
providers without their secrets; and dashboard.charts' SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.demo import load_demo
from daemon.health import QUEUES
from dashboard.charts import BOTTOM, HEIGHT, TOP, Series, line_chart, stacked_bars
from dashboard.views.overview import duration
from tests.dashboard_support import signed_in

SVG = "{http://www.w3.org/2000/svg}"
SECRETS = {"mailgun_api_key": "key-mailgun-SECRET-4f1c", "smtp_password": "smtp-SECRET-hunter2",
           "telnyx_api_key": "KEY-telnyx-SECRET-9a9a", "twilio_auth_token": "twilio-SECRET-token",
           "webhook_signing_secret": "whsec-SECRET-abc"}


@pytest.fixture
def overview_settings(settings: Settings) -> Settings:
    # Heartbeats written just before a request stay live on a slow machine.
    return settings.replace(heartbeat_interval_s=60.0, email_provider="mailgun", sms_provider="telnyx",
                            mailgun_domain="mg.example.com", **SECRETS)


@pytest.fixture
async def admin(overview_settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> TestClient:
    await load_demo(conn)
    client, _ = await signed_in(aiohttp_client, overview_settings, conn, "admin@example.com", "admin")
    return client


@pytest.fixture
async def tenant_one(overview_settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection,
                     admin: TestClient) -> TestClient:
    client, _ = await signed_in(aiohttp_client, overview_settings, conn, "viewer1@example.com", "viewer", ("1",))
    return client


async def add_run(conn: asyncpg.Connection, tenant: str, *, age: str, status: str = "completed",
                  error: str | None = None, message: bool = False) -> int:
    """An event, its run and one step created ``age`` ago (and a message if asked)."""
    event = await conn.fetchval(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, state, created_at)"
        " VALUES ($1, 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', 'matched',"
        "         clock_timestamp() - $2::text::interval) RETURNING id", tenant, age)
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", tenant)
    run = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error, created_at, completed_at)"
        " VALUES ($1, $2, $3, $4, $5, clock_timestamp() - $6::text::interval,"
        "         clock_timestamp() - $6::text::interval) RETURNING id",
        tenant, workflow, event, status, error, age)
    step = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status)"
        " VALUES ($1, $2, 0, 'step-1', 'email', 'email', '{}', 'sent') RETURNING id", run, tenant)
    if message:
        await conn.execute(
            "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key,"
            " recipient, body, status, created_at)"
            " VALUES ($1, $2, $3, 'email', 'capture', $5, 'a@example.com', 'hi', 'captured',"
            "         clock_timestamp() - $4::text::interval)", tenant, run, step, age, f"key-{run}")
    return int(run)


async def beat(conn: asyncpg.Connection, instance: str, kind: str) -> None:
    await conn.execute(
        "INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, kind)"
        " VALUES ($1, 'host-a', 4242, clock_timestamp(), clock_timestamp(), $2)", instance, kind)


def svg_of(html: str) -> ET.Element:
    found = re.search(r"<svg.*?</svg>", html, re.S)
    assert found, "no chart on the page"
    return ET.fromstring(found.group(0))


# -- the page ------------------------------------------------------------------------

async def test_overview_names_every_check_and_queue_in_words_and_no_secret(
    admin: TestClient, conn: asyncpg.Connection
) -> None:
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-1", "worker")
    await beat(conn, "worker-2", "worker")
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, created_at)"
        " VALUES ('1', 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', clock_timestamp() - interval '3 seconds')")
    response = await admin.get("/")
    assert response.status == 200
    html = await response.text()
    for name in ("database", "redis", "daemon", "workers", "outbox", "queues", "dead_letters", "stuck_steps"):
        assert f'data-check="{name}"' in html, name
    assert "2 workers live" in html and "1 daemon live" in html
    assert re.search(r"1 event waiting to be matched.*oldest unmatched event \d+ s", html)
    for queue in QUEUES:
        assert f'data-queue="{queue}"' in html, queue
    assert "shared by every tenant" in html
    assert "mailgun" in html and "telnyx" in html and "API key set" in html
    for secret in SECRETS.values():
        assert secret not in html
    assert 'style="' not in html and "<script>" not in html


async def test_queue_depths_count_waiting_delayed_and_dead_messages(
    admin: TestClient, overview_settings: Settings
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(overview_settings.redis_url)
    try:
        await client.rpush("dramatiq:email", "m1", "m2")
        await client.hset("dramatiq:email.msgs", mapping={"m1": "{}", "m2": "{}"})
        await client.hset("dramatiq:sms.DQ.msgs", mapping={"d1": "{}"})
        await client.zadd("dramatiq:webhook.XQ", {"x1": 1.0})
        html = await (await admin.get("/")).text()
    finally:
        await client.delete("dramatiq:email", "dramatiq:email.msgs", "dramatiq:sms.DQ.msgs", "dramatiq:webhook.XQ")
        await client.aclose()
    rows = {name: re.findall(r'data-label="[^"]+">(?:<span class="badge bad">)?(\d+)', row)
            for name, row in re.findall(r'<tr data-queue="(\w+)">(.*?)</tr>', html, re.S)}
    assert rows["email"] == ["2", "0", "0", "0"]
    assert rows["sms"] == ["0", "0", "1", "0"]
    assert rows["webhook"] == ["0", "0", "0", "1"]
    assert "1 dead letter in webhook" in html


async def test_throughput_counts_match_the_rows_per_minute(
    admin: TestClient, tenant_one: TestClient, conn: asyncpg.Connection
) -> None:
    for age in ("2 minutes", "2 minutes", "10 minutes", "59 seconds"):
        await add_run(conn, "1", age=age, message=True)
    await add_run(conn, "1", age="3 hours", message=True)  # outside the hour
    await add_run(conn, "2", age="5 minutes", message=True)  # another tenant
    # The buckets as PostgreSQL computes them, for tenant 1 in the last hour.
    expected: dict[str, dict[str, int]] = {}
    for table, key in (("events", "events"), ("runs", "runs"), ("messages", "messages")):
        for row in await conn.fetch(
            f"SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM herald.{table}"
            " WHERE tenant_id = '1' AND created_at > clock_timestamp() - interval '50 minutes' GROUP BY 1"):
            expected.setdefault(row["minute"].isoformat(), {"events": 0, "runs": 0, "messages": 0})[key] = row["n"]

    body = await (await tenant_one.get("/api/overview")).json()
    minutes = body["throughput"]
    assert len(minutes) == 60
    got = {m["minute"]: {k: m[k] for k in ("events", "runs", "messages")}
           for m in minutes if m["events"] or m["runs"] or m["messages"]}
    assert got == expected
    assert sum(m["runs"] for m in minutes) == 4 and sum(m["messages"] for m in minutes) == 4

    everyone = await (await admin.get("/api/overview")).json()
    assert sum(m["runs"] for m in everyone["throughput"]) == 5

    html = await (await tenant_one.get("/")).text()
    assert '<strong class="num" data-total="runs">4</strong>' in html
    chart = svg_of(html)
    assert chart.get("role") == "img" and "4 runs" in chart.get("aria-label", "")
    assert chart.find(f"{SVG}title") is not None
    series = chart.findall(f".//{SVG}g[@class]")
    lines = [g for g in series if (g.get("class") or "").startswith("series ")]
    assert [g.get("data-series") for g in lines] == ["events", "runs", "messages"]
    for line in lines:
        assert len(line.findall(f"{SVG}circle")) == 60
        assert len(line.find(f"{SVG}polyline").get("points").split()) == 60


async def test_failures_of_the_last_day_link_to_their_runs_within_the_tenant(
    admin: TestClient, tenant_one: TestClient, conn: asyncpg.Connection
) -> None:
    recent = await add_run(conn, "1", age="1 hour", status="failed", error="client.email is undefined")
    await add_run(conn, "1", age="25 hours", status="failed", error="too old to count")
    other = await add_run(conn, "2", age="1 hour", status="failed", error="tenant two's failure")
    await add_run(conn, "1", age="1 hour")
    body = await (await tenant_one.get("/api/overview")).json()
    assert body["failures"]["runs"] == 1
    assert [run["id"] for run in body["failures"]["latest"]] == [recent]
    html = await (await tenant_one.get("/")).text()
    assert f'href="/runs/{recent}"' in html and 'href="/failures"' in html
    assert "client.email is undefined" in html
    assert "tenant two&#39;s failure" not in html and f'href="/runs/{other}"' not in html
    assert "too old to count" not in html

    everyone = await (await admin.get("/api/overview")).json()
    assert everyone["failures"]["runs"] == 2
    assert (await tenant_one.get("/api/overview", params={"tenant": "2"})).status == 404
    assert (await tenant_one.get("/", params={"tenant": "2"})).status == 404


# -- words and charts ----------------------------------------------------------------

def test_durations_read_as_a_person_says_them() -> None:
    assert duration(3) == "3 s"
    assert duration(3.4) == "3.4 s"
    assert duration(125) == "2 min 5 s"
    assert duration(7380) == "2 h 3 min"
    assert duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert duration(None) == "–"


def test_a_line_chart_is_valid_svg_with_a_point_per_value() -> None:
    svg = ET.fromstring(str(line_chart(
        ["a", "b", "c", "d"], [Series("x <&>", [1, None, 3, 4]), Series("y", [0, 0, 0, 0])],
        title="T & t", aria_label="label \"q\"", y_label="n", x_label="when")))
    assert svg.get("class") == "chart" and svg.get("role") == "img" and svg.get("aria-label") == 'label "q"'
    assert svg.find(f"{SVG}title").text == "T & t"
    groups = [g for g in svg.iter(f"{SVG}g") if (g.get("class") or "").startswith("series ")]
    assert [len(g.findall(f"{SVG}circle")) for g in groups] == [3, 4]
    assert groups[0].get("data-series") == "x <&>"
    assert not any("style" in element.attrib for element in svg.iter())


def test_stacked_bars_draw_a_part_per_non_zero_value() -> None:
    svg = ET.fromstring(str(stacked_bars(
        ["d1", "d2", "d3"], [Series("completed", [2, 0, 5]), Series("failed", [1, 0, 0])],
        title="Runs", aria_label="Runs per day", y_label="runs", x_label="day")))
    stacks = [g for g in svg.iter(f"{SVG}g") if g.get("class") == "stack"]
    assert [len(g.findall(f"{SVG}rect")) for g in stacks] == [2, 0, 1]
    assert [g.get("data-total") for g in stacks] == ["3", "0", "5"]
    # The tallest bar reaches the top of the axis (5 -> the axis tops at 5).
    heights = [float(rect.get("height")) for rect in svg.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    assert max(heights) == pytest.approx(HEIGHT - TOP - BOTTOM)
