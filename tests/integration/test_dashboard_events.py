"""The events pages (/events, /events/{id}, /api/events) over a real database:
each event with every workflow's verdict, matched by the real matching code;
filters, keyset pages, tenant scope and bad parameters."""

from __future__ import annotations

import html as html_lib
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from actors.matching import match_events
from actors.workflows_cache import WorkflowCache
from config.settings import Settings
from daemon.demo import load_demo
from tests.dashboard_support import signed_in


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


async def change(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Change a demo row; the id of the event its trigger wrote."""
    await conn.execute(sql, *args)
    return int(await conn.fetchval("SELECT max(id) FROM herald.events"))


async def matched(pool: asyncpg.Pool, cache: WorkflowCache, *event_ids: int) -> None:
    async with pool.acquire() as worker:
        await match_events(worker, list(event_ids), cache)


async def failed_event(conn: asyncpg.Connection, tenant: str, error: str) -> int:
    return int(await conn.fetchval(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, state, matched_at,"
        " match_report) VALUES ($1, 'invoice', 'public.invoices', '7', 'UPDATE', 'invoice.updated', 'failed',"
        " clock_timestamp(), $2) RETURNING id", tenant, {"error": error, "workflows": []}))


@pytest.fixture
async def events(admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool,
                 cache: WorkflowCache) -> dict[str, int]:
    """Tenant 1: a job completed (fires "Job Completed"), a title change (fires
    nothing), a failed and a pending event; tenant 2: a job completed."""
    fired = await change(conn, "UPDATE jobs SET status = 'completed' WHERE id = 1")
    no_match = await change(conn, "UPDATE jobs SET title = 'Replace the kitchen faucet' WHERE id = 2")
    other = await change(conn, "UPDATE jobs SET status = 'completed' WHERE id = 4")
    await matched(pool, cache, fired, no_match, other)
    failed = await failed_event(conn, "1", "AttributeError: 'list' object has no attribute 'get'")
    pending = await change(conn, "UPDATE jobs SET status = 'scheduled' WHERE id = 3")
    return {"fired": fired, "no_match": no_match, "other": other, "failed": failed, "pending": pending}


def ids(body: dict[str, Any]) -> list[int]:
    return [event["id"] for event in body["events"]]


async def test_a_no_match_event_shows_each_workflows_reason(
    admin: TestClient, conn: asyncpg.Connection, events: dict[str, int]
) -> None:
    report = await conn.fetchval("SELECT match_report FROM herald.events WHERE id = $1", events["no_match"])
    (verdict,) = report["workflows"]
    assert verdict["workflow"] == "Job Completed" and not verdict["matched"] and verdict["reason"]
    run = await conn.fetchval("SELECT id FROM herald.runs WHERE event_id = $1", events["fired"])

    body = await (await admin.get("/api/events", params={"tenant": "1"})).json()
    by_id = {event["id"]: event for event in body["events"]}
    assert by_id[events["no_match"]]["outcome"] == "no_match"
    assert by_id[events["no_match"]]["verdicts"] == [{
        "workflow_id": verdict["workflow_id"], "workflow": "Job Completed", "matched": False,
        "reason": verdict["reason"], "run_id": None, "run_status": None}]
    assert by_id[events["fired"]]["outcome"] == "matched"
    assert by_id[events["fired"]]["verdicts"][0]["run_id"] == run
    assert by_id[events["failed"]]["error"].startswith("AttributeError")
    assert by_id[events["pending"]]["outcome"] == "pending"

    page = await (await admin.get("/events")).text()
    row = page.split(f'data-event="{events["no_match"]}"')[1].split("</tr>")[0]
    assert "Job Completed" in row and "did not fire" in row
    assert html_lib.escape(verdict["reason"]) in row
    assert 'href="/records/job/2"' in row and f'href="/events/{events["no_match"]}"' in row
    fired_row = page.split(f'data-event="{events["fired"]}"')[1].split("</tr>")[0]
    assert f'href="/runs/{run}"' in fired_row and "fired" in fired_row


async def test_filters_by_outcome_entity_record_and_type(admin: TestClient, events: dict[str, int]) -> None:
    async def found(**params: str) -> list[int]:
        response = await admin.get("/api/events", params=params)
        assert response.status == 200, await response.text()
        return ids(await response.json())

    assert await found(state="matched") == [events["other"], events["fired"]]
    assert await found(state="no_match") == [events["no_match"]]
    assert await found(state="failed") == [events["failed"]]
    assert await found(state="pending") == [events["pending"]]
    assert await found(entity="invoice") == [events["failed"]]
    assert await found(entity="job", record="2") == [events["no_match"]]
    assert await found(type="invoice.updated") == [events["failed"]]
    assert await found(state="matched", tenant="2") == [events["other"]]
    page = await (await admin.get("/events", params={"state": "no_match"})).text()
    assert f'data-event="{events["no_match"]}"' in page and f'data-event="{events["fired"]}"' not in page
    assert '<option value="no_match" selected>' in page


async def test_keyset_pages_walk_every_event_once(admin: TestClient, events: dict[str, int]) -> None:
    everything = ids(await (await admin.get("/api/events")).json())
    assert everything == sorted(events.values(), reverse=True)
    seen: list[int] = []
    before: int | None = None
    while True:
        params = {"limit": "2", **({"before": str(before)} if before else {})}
        body = await (await admin.get("/api/events", params=params)).json()
        assert len(body["events"]) <= 2
        seen += ids(body)
        before = body["next_before"]
        if before is None:
            break
    assert seen == everything
    page = await (await admin.get("/events", params={"limit": "2", "state": "matched"})).text()
    assert 'rel="next"' not in page  # two matched events: one page
    page = await (await admin.get("/events", params={"limit": "2"})).text()
    assert f'href="/events?limit=2&amp;before={everything[1]}" rel="next"' in page


async def test_the_event_page_has_values_and_every_reason_whole(
    admin: TestClient, conn: asyncpg.Connection, events: dict[str, int]
) -> None:
    page = await (await admin.get(f"/events/{events['no_match']}")).text()
    assert "Replace the kitchen faucet" in page and "Water heater inspection" in page  # new and old title
    assert '<tr class="changed">' in page and "did not fire" in page

    long_reason = "the status is not completed; " * 60  # longer than a list shows
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    event = await conn.fetchval(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, state, match_report)"
        " VALUES ('1', 'job', 'public.jobs', '3', 'UPDATE', 'job.updated', 'matched', $1) RETURNING id",
        {"workflows": [{"workflow_id": str(workflow), "workflow": "Job Completed", "matched": False,
                        "reason": long_reason}]})
    listed = (await (await admin.get("/api/events", params={"record": "3", "entity": "job"})).json())["events"]
    assert "truncated" in listed[0]["verdicts"][0]["reason"]
    whole = await (await admin.get(f"/api/events/{event}")).json()
    assert whole["event"]["verdicts"][0]["reason"] == long_reason
    assert long_reason.strip() in await (await admin.get(f"/events/{event}")).text()

    failed = await (await admin.get(f"/events/{events['failed']}")).text()
    assert "Why matching failed" in failed and "has no attribute" in failed


async def test_a_tenant_viewer_sees_only_their_tenants_events(
    tenant_one: TestClient, events: dict[str, int]
) -> None:
    body = await (await tenant_one.get("/api/events")).json()
    assert events["other"] not in ids(body) and events["fired"] in ids(body)
    page = await (await tenant_one.get("/events")).text()
    assert f'data-event="{events["other"]}"' not in page
    for path in (f"/events/{events['other']}", f"/api/events/{events['other']}", "/events/99999999"):
        assert (await tenant_one.get(path)).status == 404, path
    assert (await tenant_one.get(f"/events/{events['fired']}")).status == 200
    assert (await tenant_one.get("/api/events", params={"tenant": "2"})).status == 404


@pytest.mark.parametrize(("params", "named"), [
    ({"state": "exploded"}, "state"), ({"before": "abc"}, "before"), ({"before": "0"}, "before"),
    ({"before": str(2**70)}, "before"), ({"limit": "0"}, "limit"), ({"limit": "100000"}, "limit"),
    ({"entity": "x" * 201}, "entity"), ({"record": "x" * 201}, "record"), ({"type": "x" * 201}, "type"),
])
async def test_bad_parameters_are_a_400_naming_them(admin: TestClient, params: dict[str, str], named: str) -> None:
    response = await admin.get("/api/events", params=params)
    assert response.status == 400
    assert (await response.json())["error"].startswith(named)
    page = await admin.get("/events", params=params)
    assert page.status == 400 and named in await page.text()


async def test_an_event_id_that_is_not_a_number_is_not_found(admin: TestClient) -> None:
    for path in ("/events/abc", "/events/" + "9" * 30, "/api/events/-1"):
        assert (await admin.get(path)).status == 404, path
