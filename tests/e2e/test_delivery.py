"""Messages through real providers' protocols, via the real daemon and worker:
SMTP and Telnyx fakes that record what they got, and how each failure is handled."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from config.database import connection
from config.embedded_layout import EmbeddedLayout
from daemon.tenants import set_rate_limit
from daemon.workflows import import_workflow
from tests.conftest import wait_until
from tests.e2e.conftest import Processes, running_herald
from tests.fakes import Answer, FakeHTTPServer, FakeSMTPServer

SECRET = "webhook-signing-secret"
_tenants = itertools.count(300)


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[FakeHTTPServer]:
    async with FakeHTTPServer() as server:
        yield server


@pytest.fixture(scope="module")
def herald(db: str, layout: EmbeddedLayout, http: FakeHTTPServer, smtp: FakeSMTPServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with running_herald(
        db, layout.redis_url, tmp_path_factory.mktemp("delivery"),
        HERALD_EMAIL_PROVIDER="smtp", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port),
        HERALD_EMAIL_FROM="Northwind <office@northwind.example>",
        HERALD_SMS_PROVIDER="telnyx", HERALD_TELNYX_BASE_URL=http.url,
        HERALD_TELNYX_API_KEY="telnyx-key", HERALD_SMS_FROM="+15550000000",
        HERALD_HTTP_TIMEOUT="1", HERALD_WEBHOOK_SIGNING_SECRET=SECRET, HERALD_WEBHOOK_ALLOW_PRIVATE="true",
    ) as processes:
        yield processes


@pytest.fixture
async def conn(db: str, herald: Processes) -> AsyncIterator[asyncpg.Connection]:
    async with connection(db) as conn:
        yield conn


async def complete_a_job(conn: asyncpg.Connection, steps: list[dict[str, Any]]) -> tuple[str, asyncpg.Record]:
    """A fresh tenant whose job completes under a workflow of ``steps``; its finished run."""
    tenant = str(next(_tenants))
    await import_workflow(conn, tenant, {
        "name": "delivery", "trigger_type": "job_completed", "retry": {"base_delay_s": 0.2},
        "steps": steps})
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1::text::bigint, 'Org')", tenant)
    client = await conn.fetchval(
        "INSERT INTO clients (organization_id, first_name, last_name, email, phone) VALUES"
        " ($1::text::bigint, 'Maria', 'Lopez', 'maria@example.com', '+1 555 010 1001') RETURNING id", tenant)
    job = await conn.fetchval("INSERT INTO jobs (organization_id, client_id, title, status) VALUES"
                              " ($1::text::bigint, $2, 'Fix sink', 'in_progress') RETURNING id", tenant, client)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)

    async def finished() -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT * FROM herald.runs WHERE tenant_id = $1"
                                   " AND status NOT IN ('pending', 'running')", tenant)

    return tenant, await wait_until(finished, timeout=30, message="the run to finish")


SMS_STEP = {"id": "sms", "type": "action",
            "config": {"actionType": "sms", "message": "{{job.title}} done", "recipient": "{{client.phone}}"}}


async def steps_of(conn: asyncpg.Connection, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM herald.steps WHERE run_id = $1 ORDER BY position", run_id)


async def test_email_goes_out_over_smtp(conn: asyncpg.Connection, smtp: FakeSMTPServer) -> None:
    before = len(smtp.messages)
    _, run = await complete_a_job(conn, [{"id": "mail", "type": "action", "config": {
        "actionType": "email", "recipient": "{{client.email}}", "subject": "{{job.title}} is done",
        "message": "Dear {{client.firstName}}", "html": "<p>Dear {{client.firstName}}</p>"}}])
    assert run["status"] == "completed", run["error"]
    [mail] = smtp.messages[before:]
    assert (mail["To"], mail["Subject"]) == ("maria@example.com", "Fix sink is done")
    [step] = await steps_of(conn, run["id"])
    assert step["provider_response"]["id"] == mail["Message-ID"]


async def test_a_500_then_200_is_delivered_once_after_a_retry(conn: asyncpg.Connection, http: FakeHTTPServer) -> None:
    http.answer("/v2/messages", Answer(500, {"message": "try again"}), Answer(200, {"data": {"id": "m-1"}}))
    before = len(http.on("/v2/messages"))
    tenant, run = await complete_a_job(conn, [SMS_STEP])
    assert run["status"] == "completed", run["error"]
    calls = http.on("/v2/messages")[before:]
    assert len(calls) == 2 and calls[0].headers["Idempotency-Key"] == calls[1].headers["Idempotency-Key"]
    assert calls[1].json()["to"] == "+15550101001"
    [step] = await steps_of(conn, run["id"])
    assert step["attempts"] == 2 and step["status"] == "sent"
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE tenant_id = $1", tenant) == 1


async def test_a_429_waits_for_retry_after_without_spending_the_budget(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    http.answer("/v2/messages", Answer(429, headers={"Retry-After": "2"}), Answer(200, {"data": {"id": "m-2"}}))
    before = len(http.on("/v2/messages"))
    _, run = await complete_a_job(conn, [SMS_STEP])
    assert run["status"] == "completed", run["error"]
    [step] = await steps_of(conn, run["id"])
    assert step["attempts"] == 1  # the rate-limit wait was not an attempt
    first, second = http.on("/v2/messages")[before:]
    waited = await conn.fetchval(
        "SELECT extract(epoch FROM completed_at - started_at) FROM herald.steps WHERE id = $1", step["id"])
    assert waited >= 2


async def test_a_400_fails_at_once_without_retrying(conn: asyncpg.Connection, http: FakeHTTPServer) -> None:
    http.answer("/v2/messages", Answer(400, {"message": "to: not a mobile number"}))
    before = len(http.on("/v2/messages"))
    _, run = await complete_a_job(conn, [SMS_STEP])
    assert run["status"] == "failed"
    assert "telnyx answered 400: to: not a mobile number" in run["error"]
    assert len(http.on("/v2/messages")) - before == 1
    assert "telnyx-key" not in run["error"]


async def test_no_answer_from_a_provider_that_drops_repeats_is_resent_with_the_same_key(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    # Telnyx drops a repeated Idempotency-Key: sending again is how to find out.
    http.answer("/v2/messages", Answer(200, {"data": {"id": "late"}}, delay_s=3), Answer(200, {"data": {"id": "m1"}}))
    before = len(http.on("/v2/messages"))
    tenant, run = await complete_a_job(conn, [SMS_STEP])
    assert run["status"] == "completed", run["error"]
    [step] = await steps_of(conn, run["id"])
    assert (step["status"], step["attempts"]) == ("sent", 2)
    calls = http.on("/v2/messages")[before:]
    assert len(calls) == 2 and calls[0].headers["Idempotency-Key"] == calls[1].headers["Idempotency-Key"]
    assert calls[0].body == calls[1].body  # Telnyx replays only a byte-identical request
    message = await conn.fetchrow("SELECT status, resend_safe FROM herald.messages WHERE tenant_id = $1", tenant)
    assert (message["status"], message["resend_safe"]) == ("sent", True)


@pytest.mark.parametrize(("receiver_deduplicates", "expected"), [(False, "parked"), (True, "resent")])
async def test_no_answer_from_a_webhook_parks_it_unless_its_receiver_drops_repeats(
    conn: asyncpg.Connection, http: FakeHTTPServer, receiver_deduplicates: bool, expected: str
) -> None:
    path = f"/hooks/slow-{receiver_deduplicates}"
    http.answer(path, Answer(200, delay_s=3), Answer(200))
    config: dict[str, Any] = {"actionType": "webhook", "url": http.url + path}
    if receiver_deduplicates:
        config["receiver_deduplicates"] = True
    tenant, run = await complete_a_job(conn, [{"id": "hook", "type": "action", "config": config}])
    [step] = await steps_of(conn, run["id"])
    calls = http.on(path)
    message = await conn.fetchval("SELECT status FROM herald.messages WHERE tenant_id = $1", tenant)
    if expected == "parked":
        # The receiver may have acted on it: sending again could do it twice. A person decides.
        assert run["status"] == "failed" and "parked for a person" in run["error"]
        assert (step["status"], message, len(calls)) == ("unknown", "unknown", 1)
    else:
        assert run["status"] == "completed", run["error"]
        assert (step["status"], message, len(calls)) == ("sent", "sent", 2)
        assert calls[0].headers["Idempotency-Key"] == calls[1].headers["webhook-id"] == run_key(calls[1])


def run_key(call: Any) -> str:
    return str(call.headers["X-Herald-Idempotency-Key"])


async def test_an_invalid_phone_fails_with_a_reason_and_calls_nobody(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    before = len(http.requests)
    _, run = await complete_a_job(conn, [{"id": "sms", "type": "action", "config": {
        "actionType": "sms", "message": "hi", "recipient": "{{client.lastName}}"}}])
    assert run["status"] == "failed" and "invalid phone number 'Lopez'" in run["error"]
    assert len(http.requests) == before


@pytest.mark.parametrize(("together", "path"), [(True, "/together"), (False, "/one-after-another")])
async def test_steps_that_start_together_reach_their_providers_together(
    conn: asyncpg.Connection, http: FakeHTTPServer, together: bool, path: str
) -> None:
    # The webhook's receiver holds its answer until the SMS has reached Telnyx (at most 0.8 s,
    # within the 1 s HTTP timeout): only steps that start together get there in time.
    sms_before = len(http.on("/v2/messages"))
    http.answer("/v2/messages", Answer(200, {"data": {"id": "m-together"}}))
    http.answer(path, Answer(200, {}, delay_s=0.8, until=lambda: len(http.on("/v2/messages")) > sms_before))
    hook = {"id": "hook", "type": "action", "config": {"actionType": "webhook", "url": http.url + path}}
    _, run = await complete_a_job(conn, [hook, dict(SMS_STEP, with_previous=together)])
    assert run["status"] == "completed", run["error"]
    assert [held for held in http.held if held[0] == path] == [(path, together)]
    steps = await steps_of(conn, run["id"])
    assert [(s["action"], s["status"], s["stage"]) for s in steps] == [
        ("webhook", "sent", 0), ("sms", "sent", 0 if together else 1)]
    assert len(http.on("/v2/messages")) == sms_before + 1


async def test_webhook_is_posted_signed(conn: asyncpg.Connection, http: FakeHTTPServer) -> None:
    _, run = await complete_a_job(conn, [{"id": "hook", "type": "action", "config": {
        "actionType": "webhook", "url": http.url + "/hooks/{{job.id}}",
        "payload": {"job": "{{job.title}}", "client": "{{client.email}}"}}}])
    assert run["status"] == "completed", run["error"]
    [call] = [r for r in http.requests if r.path.startswith("/hooks/")][-1:]
    assert call.json() == {"job": "Fix sink", "client": "maria@example.com"}
    stamp, signature = (p.split("=", 1)[1] for p in call.headers["X-Herald-Signature"].split(","))
    assert signature == hmac.new(SECRET.encode(), f"{stamp}.".encode() + call.body, hashlib.sha256).hexdigest()


async def test_herald_retry_sends_a_failed_run_again(
    conn: asyncpg.Connection, http: FakeHTTPServer, herald: Processes
) -> None:
    http.answer("/v2/messages", Answer(400, {"message": "from-number not provisioned"}))
    tenant, run = await complete_a_job(conn, [SMS_STEP])
    assert run["status"] == "failed"
    http.answer("/v2/messages", Answer(200, {"data": {"id": "m-retried"}}))  # support fixed the number
    retried = subprocess.run(
        [sys.executable, "-m", "daemon", "retry", str(run["id"]), "--reason", "number provisioned", "--by", "ana",
         "--force"],  # a permanent refusal, the workflow unchanged: --force says it was fixed elsewhere
        env=herald.env, capture_output=True, text=True, timeout=60)
    assert retried.returncode == 0 and "retrying" in retried.stdout, retried.stderr

    async def completed() -> bool:
        return await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run["id"]) == "completed"

    await wait_until(completed, message="the retried run to complete")
    message = await conn.fetchrow("SELECT status, provider_message_id FROM herald.messages WHERE tenant_id = $1", tenant)
    assert (message["status"], message["provider_message_id"]) == ("sent", "m-retried")
    audit = await conn.fetchrow("SELECT requested_by, reason FROM herald.retries WHERE run_id = $1", run["id"])
    assert (audit["requested_by"], audit["reason"]) == ("ana", "number provisioned")
    again = subprocess.run([sys.executable, "-m", "daemon", "retry", str(run["id"])], env=herald.env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "is completed, not failed" in again.stderr


async def complete_jobs_for_one_client(conn: asyncpg.Connection, tenant: str, workflow: dict[str, Any],
                                       count: int) -> None:
    await import_workflow(conn, tenant, workflow)
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1::text::bigint, 'Org')", tenant)
    client = await conn.fetchval(
        "INSERT INTO clients (organization_id, first_name, last_name, email, phone) VALUES"
        " ($1::text::bigint, 'Sam', 'Burst', 'sam@example.com', '+15550102222') RETURNING id", tenant)
    await conn.execute(
        "INSERT INTO jobs (organization_id, client_id, title, status) SELECT $1::text::bigint, $2, 'J' || g,"
        " 'in_progress' FROM generate_series(1, $3) g", tenant, client, count)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE client_id = $1", client)


async def test_the_per_recipient_limit_skips_beyond_its_share(conn: asyncpg.Connection, http: FakeHTTPServer) -> None:
    http.answer("/v2/messages", Answer(200, {"data": {"id": "ok"}}))
    tenant = str(next(_tenants))
    await complete_jobs_for_one_client(conn, tenant, {
        "name": "burst", "trigger_type": "job_completed", "steps": [SMS_STEP],
        "rate_limit": {"per_recipient": 3, "window": "1h", "over_limit": "skip"}}, 8)

    async def all_done() -> bool:
        return await conn.fetchval(
            "SELECT count(*) FROM herald.runs WHERE tenant_id = $1 AND status IN ('completed', 'skipped')",
            tenant) == 8

    await wait_until(all_done, message="all eight runs")
    steps = await conn.fetch("SELECT status, error FROM herald.steps WHERE tenant_id = $1", tenant)
    assert sorted(s["status"] for s in steps) == ["sent"] * 3 + ["skipped"] * 5
    assert all("rate limited: 3 sms messages per 1:00:00 to +15550102222; skipped" in s["error"]
               for s in steps if s["status"] == "skipped")
    # A run that sent nothing says so: skipped, with the reason, not "completed".
    runs = await conn.fetch("SELECT status, error FROM herald.runs WHERE tenant_id = $1", tenant)
    assert sorted(r["status"] for r in runs) == ["completed"] * 3 + ["skipped"] * 5
    assert all(r["error"].startswith("nothing sent: every step was skipped (rate limited: 3 sms messages")
               for r in runs if r["status"] == "skipped")
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE tenant_id = $1", tenant) == 3


async def test_over_the_limit_a_message_waits_and_others_are_not_held_up(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    http.answer("/v2/messages", Answer(200, {"data": {"id": "ok"}}))
    busy = str(next(_tenants))
    await complete_jobs_for_one_client(conn, busy, {
        "name": "burst", "trigger_type": "job_completed", "steps": [SMS_STEP],
        "rate_limit": {"per_recipient": 2, "window": "3s"}}, 3)

    async def waiting() -> Any:
        return await conn.fetchrow("SELECT * FROM herald.steps WHERE tenant_id = $1 AND status = 'pending'"
                                   " AND next_attempt_at IS NOT NULL", busy)

    held = await wait_until(waiting, message="the third message to wait for the window")
    assert "rate limited: 2 sms messages" in held["error"]
    # Another client's message goes straight through while that one waits.
    _, other = await complete_a_job(conn, [SMS_STEP])
    assert other["status"] == "completed"
    assert await conn.fetchval("SELECT status FROM herald.steps WHERE id = $1", held["id"]) == "pending"

    async def all_sent() -> bool:
        return await conn.fetchval(
            "SELECT count(*) FROM herald.steps WHERE tenant_id = $1 AND status = 'sent'", busy) == 3

    await wait_until(all_sent, message="the held message after the window")
    step = await conn.fetchrow("SELECT attempts FROM herald.steps WHERE id = $1", held["id"])
    assert step["attempts"] == 1  # waiting on the limit spent no retry
    sent_at = await conn.fetch("SELECT created_at FROM herald.messages WHERE tenant_id = $1 ORDER BY created_at", busy)
    assert (sent_at[2]["created_at"] - sent_at[0]["created_at"]).total_seconds() >= 3


async def test_a_tenant_limit_applies_to_all_its_workflows(conn: asyncpg.Connection, http: FakeHTTPServer) -> None:
    http.answer("/v2/messages", Answer(200, {"data": {"id": "ok"}}))
    tenant = str(next(_tenants))
    await set_rate_limit(conn, tenant, {"per_recipient": 1, "window": "1d", "over_limit": "skip"})
    await complete_jobs_for_one_client(conn, tenant, {
        "name": "two jobs", "trigger_type": "job_completed", "steps": [SMS_STEP]}, 2)

    async def both_done() -> bool:
        return await conn.fetchval("SELECT count(*) FROM herald.runs WHERE tenant_id = $1"
                                   " AND status IN ('completed', 'skipped')", tenant) == 2

    await wait_until(both_done, message="both runs")
    steps = await conn.fetch("SELECT status FROM herald.steps WHERE tenant_id = $1 ORDER BY status", tenant)
    assert [s["status"] for s in steps] == ["sent", "skipped"]
    runs = await conn.fetch("SELECT status FROM herald.runs WHERE tenant_id = $1 ORDER BY status", tenant)
    assert [r["status"] for r in runs] == ["completed", "skipped"]  # the second sent nothing


async def test_a_slow_provider_and_a_batch_larger_than_the_pool_park_nothing(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    # 60 webhook steps in one batch, the receiver taking 0.6 s each, the lease 3 s,
    # the worker's pool 10 connections: a step is claimed only when it can start
    # and holds no connection while the receiver thinks, so nothing looks stalled
    # (claimed all at once and queued for the pool, the last would wait 3.6 s).
    jobs = 60
    path = "/hooks/slow-batch"
    http.answer(path, Answer(200, delay_s=0.6))
    tenant = str(next(_tenants))
    await import_workflow(conn, tenant, {"name": "slow", "trigger_type": "job_completed", "steps": [
        {"id": "hook", "type": "action", "config": {"actionType": "webhook", "url": http.url + path}}]})
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1::text::bigint, 'Org')", tenant)
    client = await conn.fetchval("INSERT INTO clients (organization_id, first_name, last_name) VALUES"
                                 " ($1::text::bigint, 'Ann', 'Lee') RETURNING id", tenant)
    await conn.execute("INSERT INTO jobs (organization_id, client_id, title, status) SELECT $1::text::bigint,"
                       " $2, 'Slow ' || g, 'in_progress' FROM generate_series(1, $3) g", tenant, client, jobs)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE organization_id = $1::text::bigint", tenant)

    async def all_finished() -> bool:
        return await conn.fetchval("SELECT count(*) FROM herald.runs WHERE tenant_id = $1"
                                   " AND status NOT IN ('pending', 'running')", tenant) == jobs

    await wait_until(all_finished, timeout=60, interval=0.2, message="every slow run to finish")
    statuses = await conn.fetch("SELECT status, count(*) FROM herald.runs WHERE tenant_id = $1 GROUP BY 1", tenant)
    assert {row["status"]: row["count"] for row in statuses} == {"completed": jobs}
    assert len(http.on(path)) == jobs  # each delivered once, none parked or resent
