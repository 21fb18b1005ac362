"""The runs pages over a real database and Redis: the list's filters and keyset
pages, the live rows fragment, one run's page and /api/runs/{id}, retry and
cancel by support, a record's timeline, and tenant isolation on all of them.

Runs are made by the real matcher and enricher (match_events, enrich_runs);
their steps' outcomes are then written as the delivery actors write them."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest
import redis
from aiohttp.test_utils import TestClient
from markupsafe import escape

from actors.enriching import enrich_runs
from actors.matching import match_events
from actors.workflows_cache import WorkflowCache
from config.settings import Settings
from daemon.demo import load_demo
from tests.conftest import wait_until
from tests.dashboard_support import signed_in

TEMPLATE_ERROR = "step 1 (step-1, email): 'client' has no attribute 'emial'"


@pytest.fixture
async def demo(conn: asyncpg.Connection) -> None:
    await load_demo(conn)


@pytest.fixture
async def admin(aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, demo: None) -> TestClient:
    client, _ = await signed_in(aiohttp_client, settings, conn, "admin@example.com", "admin")
    return client


async def real_run(conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache, job: int,
                   outcome: str = "completed") -> int:
    """Complete ``job``: the matcher makes its run, the enricher its context and steps;
    then the steps end as ``outcome`` says (completed, failed: a template error,
    gave-up: a transient failure that used up its retries, running: first step waiting
    for a retry)."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    async with pool.acquire() as worker:
        [run_id] = (await match_events(worker, [event], cache)).started
        await enrich_runs(worker, [run_id])
    steps = await conn.fetch("SELECT s.id, s.position, r.context FROM herald.steps s JOIN herald.runs r"
                             " ON r.id = s.run_id WHERE s.run_id = $1 ORDER BY s.position", run_id)
    client = steps[0]["context"]["client"]
    email = {"recipient": client["email"], "subject": f"Job Completed - <b>job {job}</b>",
             "message": f"Dear {client['first_name']},\n\nYour job has been completed."}
    sms = {"recipient": client["phone"], "message": "Job completed. Thank you!"}
    first, second = steps[0]["id"], steps[1]["id"]
    if outcome == "completed":
        await sent(conn, run_id, first, "email", email, attempts=2)
        await sent(conn, run_id, second, "sms", sms)
        await conn.execute("UPDATE herald.runs SET status = 'completed', completed_at = started_at"
                           " + interval '1.5 seconds', execution_time_ms = 9999 WHERE id = $1", run_id)
    elif outcome in ("failed", "gave-up"):
        error = ("'client' has no attribute 'emial'" if outcome == "failed"
                 else "gave up after 4 attempts: smtp answered 503")
        await conn.execute("UPDATE herald.steps SET status = 'failed', attempts = $3, error = $2,"
                           " rendered = $4, started_at = clock_timestamp(), completed_at = clock_timestamp()"
                           " WHERE id = $1", first, error, 1 if outcome == "failed" else 4,
                           None if outcome == "failed" else email)
        await conn.execute("UPDATE herald.steps SET status = 'skipped' WHERE id = $1", second)
        await conn.execute("UPDATE herald.runs SET status = 'failed', error = $2, completed_at = clock_timestamp()"
                           " WHERE id = $1", run_id, f"step 1 (step-1, email): {error}")
    elif outcome == "running":
        await conn.execute("UPDATE herald.steps SET attempts = 1, error = 'smtp answered 503', next_attempt_at"
                           " = clock_timestamp() + interval '30 seconds' WHERE id = $1", first)
    return int(run_id)


async def sent(conn: asyncpg.Connection, run_id: int, step_id: int, channel: str, rendered: dict[str, Any],
               attempts: int = 1) -> None:
    await conn.execute(
        "UPDATE herald.steps SET status = 'sent', attempts = $2, rendered = $3, provider_response = $4,"
        " started_at = clock_timestamp(), completed_at = clock_timestamp(), execution_time_ms = 20"
        " WHERE id = $1", step_id, attempts, rendered, {"id": f"prov-{step_id}", "accepted": True})
    await conn.execute(
        "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient,"
        " subject, body, status, provider_message_id) SELECT tenant_id, $1, $2, $3, 'capture', $4, $5, $6, $7,"
        " 'sent', $8 FROM herald.runs WHERE id = $1", run_id, step_id, channel, f"key-{step_id}",
        rendered["recipient"], rendered.get("subject"), rendered["message"], f"prov-{step_id}")


async def bare_runs(conn: asyncpg.Connection, count: int, *, tenant: str = "1", status: str = "completed") -> list[int]:
    """``count`` runs of their own events (rows only, no steps), oldest first."""
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = $1", tenant)
    ids = []
    for n in range(count):
        event = await conn.fetchval(
            "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new, state)"
            " VALUES ($1, 'job', 'public.jobs', $2, 'UPDATE', 'job.updated', '{}', '{}', 'matched') RETURNING id",
            tenant, str(1000 + n))
        ids.append(await conn.fetchval(
            "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status) VALUES ($1, $2, $3, $4)"
            " RETURNING id", tenant, workflow, event, status))
    return ids


async def listed(client: TestClient, **params: str) -> list[int]:
    response = await client.get("/api/runs", params=params)
    assert response.status == 200, await response.text()
    return [run["id"] for run in (await response.json())["runs"]]


def row_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr class="run" data-run-id="(\d+)"', html)]


# -- the list ---------------------------------------------------------------------

async def test_each_filter_narrows_the_list(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    done = await real_run(conn, pool, cache, 1)                 # tenant 1, maria
    broken = await real_run(conn, pool, cache, 2, "failed")     # tenant 1, james: template error
    gave_up = await real_run(conn, pool, cache, 4, "gave-up")   # tenant 2, tom: smtp 503
    waiting = await real_run(conn, pool, cache, 5, "running")   # tenant 2, yuki
    [skipped] = await bare_runs(conn, 1, tenant="2", status="skipped")
    [cancelled] = await bare_runs(conn, 1, tenant="1", status="cancelled")
    everything = [cancelled, skipped, waiting, gave_up, broken, done]
    assert await listed(admin) == everything

    for status, expected in [("completed", [done]), ("failed", [gave_up, broken]), ("running", [waiting]),
                             ("skipped", [skipped]), ("cancelled", [cancelled]), ("pending", [])]:
        assert await listed(admin, status=status) == expected, status
    assert await listed(admin, tenant="2") == [skipped, waiting, gave_up]
    assert await listed(admin, workflow="job completed") == everything  # by name, any case
    workflow_two = await conn.fetchval("SELECT id::text FROM herald.workflows WHERE tenant_id = '2'")
    assert await listed(admin, workflow=workflow_two) == [skipped, waiting, gave_up]  # by id
    assert await listed(admin, workflow="no such workflow") == []
    assert await listed(admin, entity="job", record="4") == [gave_up]
    assert await listed(admin, entity="invoice") == []
    assert await listed(admin, recipient="MARIA.lopez") == [done]    # a step's rendered recipient
    assert await listed(admin, recipient="+15550101001") == [done]   # the SMS step's
    assert await listed(admin, recipient="%") == []                 # a literal, not a wildcard
    assert await listed(admin, error="emial") == [broken]            # the run's error
    await conn.execute("UPDATE herald.runs SET error = NULL WHERE id = $1", gave_up)
    # A step's error only (the waiting run's first step failed once, too).
    assert await listed(admin, error="SMTP answered") == [waiting, gave_up]

    await conn.execute("UPDATE herald.runs SET created_at = '2026-01-10 12:00Z' WHERE id = $1", done)
    await conn.execute("UPDATE herald.runs SET created_at = '2026-01-11 23:59Z' WHERE id = $1", broken)
    await conn.execute("UPDATE herald.runs SET created_at = '2026-01-12 00:00Z' WHERE id = $1", gave_up)
    assert await listed(admin, **{"from": "2026-01-10", "to": "2026-01-11"}) == [broken, done]
    assert await listed(admin, **{"from": "2026-01-11", "to": "2026-01-12"}) == [gave_up, broken]
    assert await listed(admin, **{"from": "2026-01-11T12:00", "to": "2026-01-12"}) == [gave_up, broken]

    page = await (await admin.get("/runs", params={"status": "skipped"})).text()
    assert row_ids(page) == [skipped] and 'option value="skipped" selected' in page


async def test_rows_show_started_duration_and_retries(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    done = await real_run(conn, pool, cache, 1)
    [run] = (await (await admin.get("/api/runs")).json())["runs"]
    assert run["id"] == done and run["duration_ms"] == 1500 and run["duration"] == "1.5 s"
    assert run["execution_time_ms"] == 9999 and run["started_at"] is not None
    # Retried by support an hour after it began: its duration is the latest attempt's.
    await conn.execute(
        "INSERT INTO herald.retries (tenant_id, run_id, requested_by, reason, requested_at, steps_reset, steps_kept)"
        " SELECT tenant_id, id, 'sam@example.com', 'smtp fixed', started_at + interval '1 hour', 1, 1"
        " FROM herald.runs WHERE id = $1", done)
    await conn.execute("UPDATE herald.runs SET retry_count = 1, completed_at = started_at + interval"
                       " '1 hour 2 seconds' WHERE id = $1", done)
    [run] = (await (await admin.get("/api/runs")).json())["runs"]
    assert run["duration_ms"] == 2000 and run["retry_count"] == 1
    html = await (await admin.get("/runs")).text()
    started = await conn.fetchval("SELECT started_at FROM herald.runs WHERE id = $1", done)
    assert f'<time datetime="{started.isoformat()}">' in html
    assert "retried 1×" in html and "2.0 s" in html
    assert f'href="/runs/{done}"' in html and 'href="/records/job/1"' in html
    assert "Job Completed - &lt;b&gt;job 1&lt;/b&gt;" in html  # a rendered message is data, not markup


async def test_keyset_pages_have_no_duplicates_or_gaps(admin: TestClient, conn: asyncpg.Connection) -> None:
    ids = await bare_runs(conn, 23)
    seen: list[int] = []
    before: int | None = None
    pages = 0
    while True:
        params = {"limit": "10", **({"before": str(before)} if before else {})}
        body = await (await admin.get("/api/runs", params=params)).json()
        seen += [run["id"] for run in body["runs"]]
        pages += 1
        before = body["next_before"]
        if before is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3

    # The page links to the next one, keeping its filters.
    html = await (await admin.get("/runs", params={"limit": "10", "status": "completed"})).text()
    assert row_ids(html) == seen[:10]
    older = re.search(r'href="(/runs\?[^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    assert f"before={seen[9]}" in older and "status=completed" in older
    second = await (await admin.get(older)).text()
    assert row_ids(second) == seen[10:20]
    assert "data-live" not in second  # older pages do not update live
    assert (await admin.get("/api/runs", params={"limit": "201"})).status == 400


async def test_empty_states_say_which(admin: TestClient, conn: asyncpg.Connection) -> None:
    assert "No runs yet" in await (await admin.get("/runs")).text()
    await bare_runs(conn, 1)
    html = await (await admin.get("/runs", params={"status": "failed"})).text()
    assert "No runs match these filters" in html and "No runs yet" not in html


@pytest.mark.parametrize(("query", "named"), [
    ("status=exploded", "status"), ("limit=0", "limit"), ("limit=x", "limit"), ("before=abc", "before"),
    ("before=-1", "before"), ("before=99999999999999999999", "before"), ("from=yesterday", "from"),
    ("to=2026-13-01", "to"), ("from=2026-02-02&to=2026-02-01", "from"), ("error=" + "x" * 201, "error"),
    ("recipient=" + "x" * 201, "recipient"), ("workflow=" + "w" * 201, "workflow"),
])
async def test_bad_filters_are_a_400_naming_the_parameter(admin: TestClient, query: str, named: str) -> None:
    api = await admin.get(f"/api/runs?{query}")
    assert api.status == 400 and (await api.json())["error"].startswith(named)
    page = await admin.get(f"/runs?{query}")
    assert page.status == 400 and "text/html" in page.headers["Content-Type"]
    assert named in await page.text()


async def test_rows_fragment_sends_only_newer_runs_and_asked_ids(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    first, second, third = await bare_runs(conn, 3)
    assert row_ids(await (await admin.get("/runs/rows", params={"after": str(first)})).text()) == [third, second]
    assert row_ids(await (await admin.get("/runs/rows", params={"after": str(third)})).text()) == []
    # The oldest of many new runs first (no gap), shown newest first.
    assert row_ids(await (await admin.get("/runs/rows", params={"after": str(first), "limit": "1"})).text()) == [second]
    # With the list's filters.
    await conn.execute("UPDATE herald.runs SET status = 'failed' WHERE id = $1", third)
    assert row_ids(await (await admin.get("/runs/rows", params={"after": str(first), "status": "failed"})).text()) == [third]
    # Runs shown, asked about by id whatever the filters (their status changed).
    fragment = await (await admin.get("/runs/rows", params={"ids": f"{first},{third}", "status": "completed"})).text()
    assert row_ids(fragment) == [third, first] and 'data-status="failed"' in fragment
    assert "<html" not in fragment
    assert (await admin.get("/runs/rows", params={"ids": "1,x"})).status == 400
    assert (await admin.get("/runs/rows", params={"ids": ",".join(["1"] * 201)})).status == 400


# -- tenants ----------------------------------------------------------------------

async def test_a_tenant_one_user_sees_nothing_of_tenant_two(
    aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool,
    cache: WorkflowCache, demo: None,
) -> None:
    mine = await real_run(conn, pool, cache, 1, "failed")
    theirs = await real_run(conn, pool, cache, 4, "failed")
    client, csrf = await signed_in(aiohttp_client, settings, conn, "one@example.com", "support", ("1",))

    assert await listed(client) == [mine]
    assert await listed(client, error="emial") == [mine]
    assert (await client.get("/api/runs", params={"tenant": "2"})).status == 404
    assert row_ids(await (await client.get("/runs")).text()) == [mine]
    assert theirs > mine and row_ids(await (await client.get("/runs/rows", params={"after": str(mine)})).text()) == []
    assert row_ids(await (await client.get("/runs/rows", params={"ids": f"{mine},{theirs}"})).text()) == [mine]
    for path in (f"/runs/{theirs}", f"/api/runs/{theirs}", "/records/job/4"):
        response = await client.get(path)
        text = await response.text()
        assert response.status == 404, path
        assert "tom.becker" not in text and "Install EV charger" not in text
    assert (await client.get("/records/job/1")).status == 200
    for action in ("retry", "cancel"):
        response = await client.post(f"/runs/{theirs}/{action}", data={"csrf_token": csrf, "reason": "x"},
                                     allow_redirects=False)
        assert response.status == 404, action
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", theirs) == "failed"
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0


# -- one run ----------------------------------------------------------------------

async def test_run_page_explains_the_run(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    run_id = await real_run(conn, pool, cache, 1)
    await conn.execute(
        "INSERT INTO herald.retries (tenant_id, run_id, requested_by, reason, steps_reset, steps_kept,"
        " workflow_version) VALUES ('1', $1, 'sam@example.com', 'smtp <password> fixed', 1, 1, 1)", run_id)
    await conn.execute("UPDATE herald.runs SET retry_count = 1 WHERE id = $1", run_id)
    workflow = await conn.fetchval("SELECT id::text FROM herald.workflows WHERE tenant_id = '1'")
    response = await admin.get(f"/runs/{run_id}")
    html = await response.text()
    assert response.status == 200
    # The event: its type, record, and the field that changed, old and new.
    assert "job.updated" in html and 'href="/records/job/1"' in html
    assert re.search(r"<code>status</code></td>\s*<td[^>]*><pre>in_progress</pre></td>\s*<td[^>]*><pre>completed</pre>",
                     html)
    # Why it matched, the context snapshot, the workflow and its version.
    reason = (await conn.fetchval("SELECT match_reason FROM herald.runs WHERE id = $1", run_id))["reason"]
    assert reason and str(escape(reason)) in html
    assert "Lopez" in html  # the client loaded into the context
    assert f'href="/workflows/{workflow}"' in html and "ran version 1" in html
    # Each step: rendered message (escaped), provider response, attempts, messages.
    assert "Job Completed - &lt;b&gt;job 1&lt;/b&gt;" in html and "<b>job 1</b>" not in html
    assert "maria.lopez@example.com" in html and "+15550101001" in html
    assert html.count('class="card step-card"') == 2 and "prov-" in html
    assert re.search(r"<dt>Attempts</dt><dd>2;", html)
    # Retry history: who, why, what was reset and kept.
    assert "sam@example.com" in html and "smtp &lt;password&gt; fixed" in html

    data = await (await admin.get(f"/api/runs/{run_id}")).json()
    assert data["event"]["old"]["status"] == "in_progress" and data["event"]["new"]["status"] == "completed"
    assert data["event"]["changed"] == ["status"]
    assert data["match_reason"]["reason"] == reason and data["context"]["client"]["email"] == "maria.lopez@example.com"
    assert data["workflow"] == {"id": workflow, "name": "Job Completed", "source_id": data["workflow"]["source_id"],
                                "version": 1, "current_version": 1, "deleted_at": None}
    assert [step["status"] for step in data["steps"]] == ["sent", "sent"]
    assert data["steps"][0]["attempts"] == 2 and data["steps"][0]["messages"][0]["status"] == "sent"
    assert data["retries"][0]["requested_by"] == "sam@example.com" and data["retries"][0]["steps_kept"] == 1

    assert (await admin.get(f"/runs/{run_id + 100}")).status == 404
    assert (await admin.get("/runs/99999999999999999999")).status == 404
    assert (await admin.get("/api/runs/abc")).status == 400
    assert (await admin.get(f"/api/runs/{run_id + 100}")).status == 404


async def test_a_run_page_says_which_steps_started_together(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    one_after_another = await real_run(conn, pool, cache, 1)
    await conn.execute("UPDATE herald.workflows SET definition = jsonb_set(definition, '{steps,1,with_previous}',"
                       " 'true') WHERE tenant_id = '1'")
    cache.invalidate("1")  # as the workflow change notification would
    together = await real_run(conn, pool, cache, 2)
    started_with = "<dt>Started</dt><dd>together with step 1"
    assert started_with not in await (await admin.get(f"/runs/{one_after_another}")).text()
    html = await (await admin.get(f"/runs/{together}")).text()
    assert html.count(started_with) == 1 and html.index(started_with) > html.index('id="step-1"')
    data = await (await admin.get(f"/api/runs/{together}")).json()
    assert [(step["position"], step["stage"]) for step in data["steps"]] == [(0, 0), (1, 0)]


async def test_a_huge_value_is_cut_with_its_length_noted(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    run_id = await real_run(conn, pool, cache, 1)
    await conn.execute("UPDATE herald.steps SET rendered = jsonb_set(rendered, '{message}', to_jsonb(repeat('m', 300000)))"
                       " WHERE run_id = $1 AND position = 0", run_id)
    response = await admin.get(f"/runs/{run_id}")
    html = await response.text()
    assert "truncated: 300,000 characters in all" in html and len(html) < 200_000
    listing = await (await admin.get("/runs")).text()
    assert "truncated: 300,000 characters in all" in listing and len(listing) < 50_000


# -- retry and cancel -------------------------------------------------------------

async def test_support_retries_a_failed_run_and_it_is_sent_again(
    aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool,
    cache: WorkflowCache, demo: None,
) -> None:
    run_id = await real_run(conn, pool, cache, 1, "gave-up")
    client, csrf = await signed_in(aiohttp_client, settings, conn, "sam@example.com", "support", ("1",))
    page = await (await client.get(f"/runs/{run_id}")).text()
    assert f'action="/runs/{run_id}/retry"' in page and "Retry anyway" not in page

    response = await client.post(f"/runs/{run_id}/retry", data={"csrf_token": csrf, "reason": "smtp is back"},
                                 allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == f"/runs/{run_id}?done=retried"
    run = await conn.fetchrow("SELECT status, retry_count FROM herald.runs WHERE id = $1", run_id)
    assert (run["status"], run["retry_count"]) == ("running", 1)
    retry = await conn.fetchrow("SELECT requested_by, reason, steps_reset, steps_kept FROM herald.retries")
    assert dict(retry) == {"requested_by": "sam@example.com", "reason": "smtp is back",
                           "steps_reset": 2, "steps_kept": 0}
    logged = await conn.fetchrow("SELECT actor, action, target, tenant_id, reason FROM herald.audit_log"
                                 " WHERE action = 'run.retry'")
    assert dict(logged) == {"actor": "sam@example.com", "action": "run.retry", "target": f"run {run_id}",
                            "tenant_id": "1", "reason": "smtp is back"}
    # The first step went to its actor's queue, as `herald retry` sends it.
    step = await conn.fetchval("SELECT id FROM herald.steps WHERE run_id = $1 AND position = 0", run_id)
    queued = redis.Redis.from_url(settings.redis_url)
    try:
        async def enqueued() -> bool:
            return any(json.loads(body)["args"] == [[step]] for body in queued.hvals("dramatiq:email.msgs"))
        await wait_until(enqueued, timeout=5, message="the retried step's message")
    finally:
        queued.close()
    shown = await (await client.get(response.headers["Location"])).text()
    assert "The run was sent again" in shown and "smtp is back" in shown

    again = await client.post(f"/runs/{run_id}/retry", data={"csrf_token": csrf, "reason": "twice"},
                              allow_redirects=False)
    assert again.headers["Location"] == f"/runs/{run_id}?done=not-failed"
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 1


async def test_a_viewer_may_not_retry_or_cancel(
    aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool,
    cache: WorkflowCache, demo: None,
) -> None:
    failed = await real_run(conn, pool, cache, 1, "gave-up")
    running = await real_run(conn, pool, cache, 2, "running")
    client, csrf = await signed_in(aiohttp_client, settings, conn, "vic@example.com", "viewer", ("1",))
    assert "/retry" not in await (await client.get(f"/runs/{failed}")).text()
    assert "/cancel" not in await (await client.get(f"/runs/{running}")).text()
    for run_id, action in ((failed, "retry"), (running, "cancel")):
        response = await client.post(f"/runs/{run_id}/{action}", data={"csrf_token": csrf, "reason": "x"},
                                     allow_redirects=False)
        assert response.status == 403, action
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0
    assert [r["status"] for r in await conn.fetch("SELECT status FROM herald.runs ORDER BY id")] == [
        "failed", "running"]


async def test_a_permanent_failure_is_refused_unless_forced(
    aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool,
    cache: WorkflowCache, demo: None,
) -> None:
    run_id = await real_run(conn, pool, cache, 1, "failed")
    client, csrf = await signed_in(aiohttp_client, settings, conn, "sam@example.com", "support", ("1",))
    page = await (await client.get(f"/runs/{run_id}")).text()
    assert "A retry would fail the same way" in page and "would fail again" in page
    assert "Retry anyway" in page and 'name="force" value="1"' in page

    refused = await client.post(f"/runs/{run_id}/retry",
                                data={"csrf_token": csrf, "reason": "try it", "force": "0"})
    text = await refused.text()
    assert refused.status == 409 and "would fail again" in text and "try it</textarea>" in text
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run_id) == "failed"
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0

    forced = await client.post(f"/runs/{run_id}/retry", data={"csrf_token": csrf, "reason": "fixed the client's"
                                                              " address in the app", "force": "1"},
                               allow_redirects=False)
    assert forced.status == 303
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run_id) == "running"
    detail = await conn.fetchval("SELECT detail FROM herald.audit_log WHERE action = 'run.retry'")
    assert detail["force"] is True

    missing = await client.post(f"/runs/{run_id}/retry", data={"csrf_token": csrf, "reason": "  "})
    assert missing.status == 400 and "reason" in await missing.text()


async def test_support_cancels_a_running_run(
    aiohttp_client: Any, settings: Settings, conn: asyncpg.Connection, pool: asyncpg.Pool,
    cache: WorkflowCache, demo: None,
) -> None:
    run_id = await real_run(conn, pool, cache, 1, "running")
    client, csrf = await signed_in(aiohttp_client, settings, conn, "sam@example.com", "support", ("1",))
    response = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf, "reason": "client asked"},
                                 allow_redirects=False)
    assert response.headers["Location"] == f"/runs/{run_id}?done=cancelled"
    run = await conn.fetchrow("SELECT status, error FROM herald.runs WHERE id = $1", run_id)
    assert run["status"] == "cancelled" and "sam@example.com" in run["error"] and "client asked" in run["error"]
    steps = [r["status"] for r in await conn.fetch("SELECT status FROM herald.steps WHERE run_id = $1", run_id)]
    assert steps == ["cancelled", "cancelled"]
    assert await conn.fetchval("SELECT reason FROM herald.audit_log WHERE action = 'run.cancel'") == "client asked"
    again = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": csrf, "reason": "again"},
                              allow_redirects=False)
    assert again.headers["Location"] == f"/runs/{run_id}?done=not-running"


# -- a record's timeline ----------------------------------------------------------

async def test_record_timeline_lists_its_events_and_runs(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await conn.execute("UPDATE jobs SET title = 'Replace the kitchen faucet' WHERE id = 1")
    run_id = await real_run(conn, pool, cache, 1)
    response = await admin.get("/records/job/1")
    html = await response.text()
    assert response.status == 200
    assert html.count("<strong>job.updated</strong>") == 2
    assert "<code>title</code>" in html and "<code>status</code>" in html
    assert f'href="/runs/{run_id}"' in html and "started no run" in html
    assert html.index(f'href="/runs/{run_id}"') < html.index("<code>title</code>")  # newest first
    assert (await admin.get("/records/job/999")).status == 404
    assert (await admin.get("/records/invoice/1")).status == 404


async def test_the_pages_run_no_inline_script_or_style(
    admin: TestClient, conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    run_id = await real_run(conn, pool, cache, 1, "failed")
    for path in ("/runs", f"/runs/{run_id}", "/records/job/1", "/runs?status=failed&before=99"):
        response = await admin.get(path)
        html = await response.text()
        assert response.status == 200, path
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL | re.IGNORECASE)
        assert all('src="/static/' in attributes and not body.strip() for attributes, body in scripts), path
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.IGNORECASE), path
        assert not re.search(r"\sstyle\s*=", html, flags=re.IGNORECASE), path
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert (await admin.get(asset)).status == 200, asset
