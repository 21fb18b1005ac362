"""The failures page over a real database and Redis: groups of failed runs, retry
previews and retries, parked steps (resend, mark as sent, give up)."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest
import redis
from aiohttp.test_utils import TestClient

from config.settings import Settings
from daemon.demo import load_demo
from dashboard.app import create_app
from dashboard.queries.failures import normalise_error
from tests.dashboard_support import (
    PARKED_ERROR,
    failed_run,
    make_user,
    parked_run,
    sign_in,
)

# -- the normaliser (pure) -------------------------------------------------------------


@pytest.mark.parametrize(("one", "other"), [
    ("client 17 has no email", "client 23 has no email"),
    ("recipient 'maria@example.com' refused", "recipient 'li@example.org' refused"),
    ("no e-mail for ana.lopez@example.com", "no e-mail for bo@example.net"),
    ("telnyx: +1 (555) 123-4567 is not a valid number", "telnyx: +44 20 7946 0958 is not a valid number"),
    ("workflow 3f2c1a9e-1b2c-4d5e-8f90-123456789abc deleted", "workflow 00000000-0000-4000-8000-000000000001 deleted"),
    ('job "Fix sink" has no client', 'job "Paint the fence" has no client'),
    ("message 9f8e7d6c5b4a3f2e rejected", "message 0a1b2c3d4e5f6a7b rejected"),
    ("gave up after 4 attempts: timeout at 2026-11-30 09:40:48", "gave up after 2 attempts: timeout at 2025-01-02 10:00:00"),
])
def test_errors_differing_only_in_ids_normalise_alike(one: str, other: str) -> None:
    assert normalise_error(one) == normalise_error(other)
    assert normalise_error(one) != one


@pytest.mark.parametrize(("one", "other"), [
    ("client 17 has no email", "client 17 has no phone"),
    ("telnyx answered 503", "mailgun answered 503"),
    ("template: client.email is undefined", "template: job.title is undefined"),
])
def test_different_errors_stay_apart(one: str, other: str) -> None:
    assert normalise_error(one) != normalise_error(other)


def test_normalised_errors_read_well() -> None:
    assert normalise_error("client 17 has no email") == "client <n> has no email"
    assert normalise_error("send to maria@example.com failed") == "send to <email> failed"
    assert normalise_error(None) == normalise_error("  ") == "(no error recorded)"
    assert len(normalise_error("x" * 100_000)) <= 500


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture
async def app_client(settings: Settings, aiohttp_client: Any, conn: asyncpg.Connection) -> TestClient:
    await load_demo(conn)
    await make_user(conn, "support@example.com", "support", ("1",))
    await make_user(conn, "viewer@example.com", "viewer", ("1",))
    return await aiohttp_client(create_app(settings))


async def signed_in(client: TestClient, email: str) -> str:
    return await sign_in(client, email)


def as_json(value: Any) -> Any:
    """A jsonb value as asyncpg hands it back: decoded by the pool's codec, or text."""
    return json.loads(value) if isinstance(value, str) else value


def groups_of(html: str) -> dict[str, int]:
    """The failures page's groups: their key -> count of runs."""
    return {key: int(count) for key, count in re.findall(
        r'<tr data-group="([0-9a-f]+)">.*?data-count="(\d+)"', html, re.DOTALL)}


def queue_length(settings: Settings, queue: str) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.llen(f"dramatiq:{queue}"))
    finally:
        client.close()


def preview_form(html: str) -> tuple[list[str], str]:
    return re.findall(r'name="run" value="(\d+)"', html), re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


# -- grouping -----------------------------------------------------------------------------

async def test_failures_group_by_workflow_step_and_normalised_error(
    app_client: TestClient, conn: asyncpg.Connection
) -> None:
    first = await failed_run(conn, "1", "client 17 has no email")
    second = await failed_run(conn, "1", "client 23 has no email")
    other = await failed_run(conn, "1", "telnyx answered 503")
    await failed_run(conn, "2", "client 99 has no email")  # another tenant's
    await conn.execute("UPDATE herald.runs SET completed_at = clock_timestamp() - interval '3 days' WHERE id = $1",
                       first)
    await signed_in(app_client, "viewer@example.com")
    html = await (await app_client.get("/failures")).text()
    groups = groups_of(html)
    assert sorted(groups.values()) == [1, 2]  # tenant 2's run is not counted
    assert "client &lt;n&gt; has no email" in html and "telnyx answered &lt;n&gt;" in html
    assert f'href="/runs/{second}"' in html and f'href="/runs/{other}"' in html  # the most recent is the sample
    big = next(key for key, count in groups.items() if count == 2)
    row = re.search(rf'<tr data-group="{big}">(.*?)</tr>', html, re.DOTALL).group(1)
    times = re.findall(r'<time datetime="([^"]+)"', row)
    stamps = await conn.fetch("SELECT completed_at FROM herald.runs WHERE id = ANY($1) ORDER BY completed_at",
                              [first, second])
    assert times == [stamps[0]["completed_at"].isoformat(), stamps[1]["completed_at"].isoformat()]

    # The last 24 hours leave the older run out; the group's page lists its runs.
    recent = groups_of(await (await app_client.get("/failures", params={"window": "24h"})).text())
    assert sorted(recent.values()) == [1, 1]
    page = await (await app_client.get(f"/failures/group/{big}", params={"window": "30d"})).text()
    assert f'data-run="{first}"' in page and f'data-run="{second}"' in page and f'data-run="{other}"' not in page
    assert "Retry this group" not in page  # a viewer does not retry
    assert (await app_client.get("/failures", params={"window": "1y"})).status == 400
    assert (await app_client.get("/failures", params={"workflow": "nope"})).status == 400


# -- retry: preview, then exactly the runs previewed --------------------------------------------

async def test_preview_then_retry_exactly_the_previewed_runs(
    app_client: TestClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    runs = [await failed_run(conn, "1", f"telnyx unreachable for client {n}") for n in (1, 2)]
    foreign = await failed_run(conn, "2", "telnyx unreachable for client 3")
    csrf = await signed_in(app_client, "support@example.com")
    key = next(iter(groups_of(await (await app_client.get("/failures")).text())))
    html = await (await app_client.get(f"/failures/group/{key}/retry")).text()
    # Each run: one sent step kept, one failed step sent again.
    assert re.search(r'data-preview="runs">2<', html) and re.search(r'data-preview="resend">2<', html)
    assert re.search(r'data-preview="kept">2<', html) and re.search(r'data-preview="refused">0<', html)
    ids, _ = preview_form(html)
    assert sorted(map(int, ids)) == runs
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0  # a preview changes nothing

    # The form posted with another tenant's run added: that one is left alone.
    response = await app_client.post("/failures/retry", data=[
        ("csrf_token", csrf), *[("run", i) for i in ids], ("run", str(foreign)), ("reason", "telnyx back up"),
        ("group", key)], allow_redirects=False)
    assert response.status == 303, await response.text()
    result = await (await app_client.get(response.headers["Location"])).text()
    assert re.search(r'data-result="retried">2<', result) and re.search(r'data-result="not-retried">1<', result)
    statuses = dict(await conn.fetch("SELECT id, status FROM herald.runs WHERE id = ANY($1)", [*runs, foreign]))
    assert statuses == {runs[0]: "running", runs[1]: "running", foreign: "failed"}
    retries = await conn.fetch("SELECT run_id, requested_by, reason, steps_reset, steps_kept FROM herald.retries"
                               " ORDER BY run_id")
    assert [tuple(r) for r in retries] == [(run, "support@example.com", "telnyx back up", 1, 1) for run in runs]
    audit = await conn.fetchrow("SELECT actor, tenant_id, reason, detail FROM herald.audit_log"
                                " WHERE action = 'failures.retry'")
    detail = as_json(audit["detail"])
    assert (audit["actor"], audit["tenant_id"], audit["reason"]) == ("support@example.com", "1", "telnyx back up")
    assert detail["retried"] == runs and list(detail["not_retried"]) == [str(foreign)]
    # The messages really went to Redis: one batch on the queue of the steps sent again.
    queues = await conn.fetch("SELECT DISTINCT queue FROM herald.steps WHERE run_id = ANY($1) AND status = 'pending'",
                              runs)
    assert len(queues) == 1 and queue_length(settings, queues[0]["queue"]) == 1


async def test_a_refused_permanent_failure_is_retried_only_when_asked(
    app_client: TestClient, conn: asyncpg.Connection
) -> None:
    run = await failed_run(conn, "1", "template: client.email is undefined", same_version=True)
    csrf = await signed_in(app_client, "support@example.com")
    html = await (await app_client.get(f"/failures/runs/{run}/retry")).text()
    assert re.search(r'data-preview="refused">1<', html) and re.search(r'data-preview="runs">0<', html)
    assert f'data-refused="{run}"' in html and "failed permanently" in html and "retry anyway" in html
    ids, _ = preview_form(html)
    assert ids == [str(run)]

    plain = await app_client.post("/failures/retry", data={"csrf_token": csrf, "run": ids, "reason": "try"},
                                  allow_redirects=False)
    result = await (await app_client.get(plain.headers["Location"])).text()
    assert re.search(r'data-result="refused">1<', result) and "failed permanently" in result
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run) == "failed"

    forced = await app_client.post("/failures/retry", data={"csrf_token": csrf, "run": ids, "force": "yes",
                                                            "reason": "client fixed the address"},
                                   allow_redirects=False)
    result = await (await app_client.get(forced.headers["Location"])).text()
    assert re.search(r'data-result="retried">1<', result)
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run) == "running"


async def test_another_tenants_run_is_not_found(app_client: TestClient, conn: asyncpg.Connection) -> None:
    foreign = await failed_run(conn, "2", "telnyx unreachable")
    await signed_in(app_client, "support@example.com")
    assert (await app_client.get(f"/failures/runs/{foreign}/retry")).status == 404
    assert (await app_client.get("/failures/runs/999999/retry")).status == 404


# -- who may write -----------------------------------------------------------------------------

async def test_viewers_and_forms_without_a_token_are_refused(app_client: TestClient, conn: asyncpg.Connection) -> None:
    run = await failed_run(conn, "1", "telnyx unreachable", steps=(("sms", "unknown", None),))
    step = await conn.fetchval("SELECT id FROM herald.steps WHERE run_id = $1", run)
    posts = [("/failures/retry", {"run": str(run), "reason": "r"}),
             (f"/failures/parked/{step}", {"decision": "give_up", "reason": "r"})]
    csrf = await signed_in(app_client, "viewer@example.com")
    for path, data in posts:
        assert (await app_client.post(path, data={**data, "csrf_token": csrf})).status == 403, path
    assert (await app_client.get(f"/failures/runs/{run}/retry")).status == 403
    await signed_in(app_client, "support@example.com")
    for path, data in posts:
        assert (await app_client.post(path, data=data)).status == 403, path  # no CSRF token
    assert await conn.fetchval("SELECT status FROM herald.steps WHERE id = $1", step) == "unknown"
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0


# -- parked steps -----------------------------------------------------------------------------

async def decide(client: TestClient, csrf: str, step: int, decision: str, reason: str) -> Any:
    return await client.post(f"/failures/parked/{step}", data={"csrf_token": csrf, "decision": decision,
                                                               "reason": reason}, allow_redirects=False)


async def test_parked_steps_are_listed_and_resent(
    app_client: TestClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    run, email, _sms = await parked_run(conn)
    foreign_run, foreign_step, _ = await parked_run(conn, "2")
    csrf = await signed_in(app_client, "support@example.com")
    html = await (await app_client.get("/failures")).text()
    assert f'data-step="{email}"' in html and f'data-step="{foreign_step}"' not in html
    assert "maria@example.com" in html and PARKED_ERROR in html

    assert (await decide(app_client, csrf, email, "resend", "")).status == 400  # a reason is required
    assert (await decide(app_client, csrf, foreign_step, "resend", "mine now")).status == 404
    response = await decide(app_client, csrf, email, "resend", "smtp log shows nothing went out")
    assert response.status == 303
    assert "sent again" in await (await app_client.get(response.headers["Location"])).text()
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run) == "running"
    steps = await conn.fetch("SELECT status, provider_response FROM herald.steps WHERE run_id = $1 ORDER BY position", run)
    assert [s["status"] for s in steps] == ["pending", "pending"]
    assert as_json(steps[0]["provider_response"])["decided"]["by"] == "support@example.com"
    assert await conn.fetchval("SELECT status FROM herald.messages WHERE step_id = $1", email) == "retrying"
    retry = await conn.fetchrow("SELECT step_id, requested_by, reason FROM herald.retries WHERE run_id = $1", run)
    assert retry["step_id"] == email and "smtp log shows nothing went out" in retry["reason"]
    assert await conn.fetchval("SELECT count(*) FROM herald.audit_log WHERE action = 'parked.resend'") == 1
    assert queue_length(settings, "email") == 1
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", foreign_run) == "failed"
    # Decided once: a second decision on the same step is refused.
    assert (await decide(app_client, csrf, email, "give_up", "late")).status == 409


async def test_mark_sent_goes_on_to_the_next_step(
    app_client: TestClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    run, email, _sms = await parked_run(conn)
    csrf = await signed_in(app_client, "support@example.com")
    response = await decide(app_client, csrf, email, "mark_sent", "Maria confirmed she got it")
    assert response.status == 303
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run) == "running"
    steps = await conn.fetch("SELECT status, error, provider_response FROM herald.steps WHERE run_id = $1"
                             " ORDER BY position", run)
    assert [s["status"] for s in steps] == ["sent", "pending"]
    assert as_json(steps[0]["provider_response"])["decided"] == {
        "decision": "mark_sent", "by": "support@example.com", "reason": "Maria confirmed she got it"}
    assert await conn.fetchval("SELECT status FROM herald.messages WHERE step_id = $1", email) == "sent"
    assert queue_length(settings, "sms") == 1  # the next step was sent to its actor
    assert await conn.fetchval("SELECT count(*) FROM herald.audit_log WHERE action = 'parked.mark_sent'") == 1


async def test_mark_sent_on_the_last_step_completes_the_run(app_client: TestClient, conn: asyncpg.Connection) -> None:
    run = await failed_run(conn, "1", "step 2 (step-2, sms): outcome unknown",
                           steps=(("email", "sent", None), ("sms", "unknown", PARKED_ERROR)))
    step = await conn.fetchval("SELECT id FROM herald.steps WHERE run_id = $1 AND status = 'unknown'", run)
    csrf = await signed_in(app_client, "support@example.com")
    assert (await decide(app_client, csrf, step, "mark_sent", "delivery report arrived")).status == 303
    row = await conn.fetchrow("SELECT status, error, completed_at FROM herald.runs WHERE id = $1", run)
    assert (row["status"], row["error"]) == ("completed", None) and row["completed_at"] is not None


async def test_give_up_fails_the_step_and_the_run_for_good(app_client: TestClient, conn: asyncpg.Connection) -> None:
    run, email, sms = await parked_run(conn)
    csrf = await signed_in(app_client, "support@example.com")
    assert (await decide(app_client, csrf, email, "give_up", "too late to matter")).status == 303
    step = await conn.fetchrow("SELECT status, error FROM herald.steps WHERE id = $1", email)
    assert (step["status"], step["error"]) == ("failed", "given up by support@example.com: too late to matter")
    run_row = await conn.fetchrow("SELECT status, error FROM herald.runs WHERE id = $1", run)
    assert run_row["status"] == "failed" and "given up by support@example.com" in run_row["error"]
    assert await conn.fetchval("SELECT status FROM herald.steps WHERE id = $1", sms) == "skipped"
    entry = await conn.fetchrow("SELECT actor, tenant_id, reason FROM herald.audit_log WHERE action = 'parked.give_up'")
    assert tuple(entry) == ("support@example.com", "1", "too late to matter")
    html = await (await app_client.get("/failures")).text()
    assert f'data-step="{email}"' not in html  # no longer parked
