"""One tenant can neither stop, slow nor read another (issue 9), through the real
daemon and worker, with fake SMTP and Telnyx servers that record what they got.

* an event whose matching fails (a change too big for the duplicate-check key,
  or any unexpected error) does not hold back the other events of its batch,
  and ends in a final state with its reason instead of being retried forever;
* a huge rendered value does not make the runs page huge;
* a related row (the job's client) is only loaded from the event's tenant.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from config.database import connection, create_pool
from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from daemon import health_reads as health_queries
from daemon.workflows import import_workflow
from dashboard.app import create_app
from dashboard.queries import runs as queries
from tests.conftest import wait_until
from tests.dashboard_support import make_user, sign_in
from tests.e2e.conftest import Processes, running_herald
from tests.fakes import Answer, FakeHTTPServer, FakeSMTPServer

_tenants = itertools.count(900)

SMS_TO_CLIENT = {"id": "sms", "type": "action",
                 "config": {"actionType": "sms", "message": "{{job.title}} done", "recipient": "{{client.phone}}"}}
EMAIL_TO_CLIENT = {"id": "mail", "type": "action",
                   "config": {"actionType": "email", "recipient": "{{client.email}}",
                              "subject": "Job done", "message": "Dear {{client.firstName}}"}}


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[FakeHTTPServer]:
    async with FakeHTTPServer() as server:
        server.answer("/v2/messages", Answer(200, {"data": {"id": "sms-1"}}))
        yield server


@pytest.fixture(scope="module")
def herald(db: str, layout: EmbeddedLayout, http: FakeHTTPServer, smtp: FakeSMTPServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    with running_herald(
        db, layout.redis_url, tmp_path_factory.mktemp("isolation"),
        HERALD_EMAIL_PROVIDER="smtp", HERALD_SMTP_HOST="127.0.0.1", HERALD_SMTP_PORT=str(smtp.port),
        HERALD_EMAIL_FROM="Northwind <office@northwind.example>",
        HERALD_SMS_PROVIDER="telnyx", HERALD_TELNYX_BASE_URL=http.url,
        HERALD_TELNYX_API_KEY="telnyx-key", HERALD_SMS_FROM="+15550000000", HERALD_HTTP_TIMEOUT="2",
    ) as processes:
        yield processes


@pytest.fixture
async def conn(db: str, herald: Processes) -> AsyncIterator[asyncpg.Connection]:
    async with connection(db) as conn:
        yield conn


class Tenant:
    """A fresh organization with one client, and the workflow given (if any)."""

    def __init__(self, tenant: str, client_id: int, email: str, phone: str) -> None:
        self.id, self.client_id, self.email, self.phone = tenant, client_id, email, phone

    async def job(self, conn: asyncpg.Connection, *, client_id: int | None = None,
                  title: str = "Fix sink") -> int:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "INSERT INTO jobs (organization_id, client_id, title, status)"
            " VALUES ($1::text::bigint, $2, $3, 'in_progress') RETURNING id",
            self.id, client_id or self.client_id, title)


async def a_tenant(conn: asyncpg.Connection, workflow: dict[str, Any] | None = None) -> Tenant:
    tenant = str(next(_tenants))
    if workflow is not None:
        await import_workflow(conn, tenant, {"retry": {"base_delay_s": 0.2}, **workflow})
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1::text::bigint, 'Org')", tenant)
    email, phone = f"client-{tenant}@example.com", f"+1555000{int(tenant):04d}"
    client = await conn.fetchval(
        "INSERT INTO clients (organization_id, first_name, last_name, email, phone)"
        " VALUES ($1::text::bigint, 'Client', $1, $2, $3) RETURNING id", tenant, email, phone)
    return Tenant(tenant, client, email, phone)


async def finished_run(conn: asyncpg.Connection, tenant: str, timeout: float = 30) -> asyncpg.Record:
    async def probe() -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT * FROM herald.runs WHERE tenant_id = $1"
                                   " AND status NOT IN ('pending', 'running')", tenant)

    return await wait_until(probe, timeout=timeout, message=f"a finished run for tenant {tenant}")


async def settled_event(conn: asyncpg.Connection, tenant: str) -> asyncpg.Record:
    """The tenant's (only) job event once it is no longer waiting to be matched (making
    the tenant's client was an event too, of the client entity)."""
    async def probe() -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT * FROM herald.events WHERE tenant_id = $1 AND entity = 'job'"
                                   " AND state NOT IN ('pending', 'dispatched')", tenant)

    return await wait_until(probe, timeout=30, message=f"tenant {tenant}'s event to be settled")


def texts_to(http: FakeHTTPServer, phone: str) -> list[Any]:
    return [call for call in http.on("/v2/messages") if call.json()["to"] == phone]


async def test_a_change_too_big_for_the_duplicate_key_holds_back_no_other_tenant(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    # Tenant A runs a workflow on any job change: its duplicate key holds the changed values.
    poison = await a_tenant(conn, {"name": "any change", "trigger_type": "job_updated",
                                   "steps": [SMS_TO_CLIENT]})
    other = await a_tenant(conn, {"name": "done", "trigger_type": "job_completed", "steps": [SMS_TO_CLIENT]})
    poison_job, other_job = await poison.job(conn), await other.job(conn)
    title = secrets.token_urlsafe(9000)  # about 12 KB that does not compress
    async with conn.transaction():  # one commit, so one batch for the match actor
        await conn.execute("UPDATE jobs SET title = $1 WHERE id = $2", title, poison_job)
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", other_job)

    run = await finished_run(conn, other.id)
    assert run["status"] == "completed", run["error"]
    [text] = texts_to(http, other.phone)
    assert text.json()["text"] == "Fix sink done"

    # The big change is matched too (its key is a fixed-size digest) and is not retried.
    event = await settled_event(conn, poison.id)
    assert event["state"] == "matched", event["match_report"]
    [verdict] = event["match_report"]["workflows"]
    assert verdict["matched"] is True and verdict["reason"]
    poison_run = await finished_run(conn, poison.id)
    assert poison_run["status"] == "completed", poison_run["error"]
    assert len(poison_run["dedupe_key"]) < 200 and len(poison_run["once_key"]) < 200
    assert [c.json()["text"] for c in texts_to(http, poison.phone)] == [f"{title} done"]
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE tenant_id = ANY($1::text[])"
                               " AND state <> 'matched'", [poison.id, other.id]) == 0


REFUSE_RUNS = """
CREATE FUNCTION public.refuse_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tenant_id = TG_ARGV[0] THEN
        RAISE EXCEPTION 'test fault: no runs for tenant %', NEW.tenant_id;
    END IF;
    RETURN NEW;
END;
$$;
"""


async def test_an_event_that_fails_to_match_fails_alone_with_its_reason(
    conn: asyncpg.Connection, http: FakeHTTPServer
) -> None:
    bad = await a_tenant(conn, {"name": "done", "trigger_type": "job_completed", "steps": [SMS_TO_CLIENT]})
    good = await a_tenant(conn, {"name": "done", "trigger_type": "job_completed", "steps": [SMS_TO_CLIENT]})
    bad_job, good_job = await bad.job(conn), await good.job(conn)
    # Any unexpected failure while matching one event: here the database refuses its run.
    await conn.execute(REFUSE_RUNS)
    await conn.execute("CREATE TRIGGER refuse_runs BEFORE INSERT ON herald.runs FOR EACH ROW"
                       f" EXECUTE FUNCTION public.refuse_runs('{bad.id}')")
    try:
        async with conn.transaction():
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", bad_job)
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", good_job)

        run = await finished_run(conn, good.id)
        assert run["status"] == "completed", run["error"]
        assert len(texts_to(http, good.phone)) == 1

        event = await settled_event(conn, bad.id)
        assert event["state"] == "failed"
        assert "test fault: no runs for tenant" in event["match_report"]["error"]
        dispatches = event["dispatch_count"]
    finally:
        await conn.execute("DROP TRIGGER refuse_runs ON herald.runs; DROP FUNCTION public.refuse_runs()")
    assert await conn.fetchval("SELECT count(*) FROM herald.runs WHERE tenant_id = $1", bad.id) == 0
    assert texts_to(http, bad.phone) == []
    # A final state, which neither the dispatcher nor the sweeper sends again,
    # and no backlog for /health.
    assert dispatches == 1

    async def no_backlog() -> bool:
        return (await health_queries.outbox_backlog(conn))["unmatched"] == 0

    await wait_until(no_backlog, message="an empty outbox")


async def test_a_huge_title_does_not_make_the_runs_page_huge(
    conn: asyncpg.Connection, db: str, layout: EmbeddedLayout, aiohttp_client: Any
) -> None:
    tenant = await a_tenant(conn, {
        "name": "done", "trigger_type": "job_status_changed", "trigger_conditions": {"new_status": "completed"},
        "steps": [
            {"id": "draft", "type": "action", "config": {
                "actionType": "draft_email", "recipient": "{{client.email}}", "subject": "{{job.title}}",
                "message": "Dear {{client.firstName}}, {{job.title}} is done"}},
            {"id": "sms", "type": "action", "config": {
                "actionType": "sms", "message": "{{job.title | money}}", "recipient": "{{client.phone}}"}},
        ]})
    # The reported 10 MB title (an event keeps a value only up to 16 KB: the run sees a
    # note of its size instead), and one an event keeps whole, rendered into messages.
    huge, long = "x" * (10 * 1024 * 1024), "y" * 15_000
    runs = {}
    for title in (huge, long):
        job = await tenant.job(conn, title=title)
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)

        async def finished(job: int = job) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT r.* FROM herald.runs r JOIN herald.events e ON e.id = r.event_id"
                " WHERE e.table_name = 'public.jobs' AND e.row_id = $1::bigint::text"
                " AND r.status NOT IN ('pending', 'running')", job)

        runs[title] = await wait_until(finished, timeout=60, message=f"the run of job {job}")
    run = runs[long]
    assert run["status"] == "failed", run["error"]  # at its second step, which sent nothing
    drafted = await conn.fetchrow("SELECT subject, body FROM herald.messages WHERE run_id = $1", run["id"])
    assert drafted["subject"] == long

    client: TestClient = await aiohttp_client(create_app(
        Settings(database_url=db, redis_url=layout.redis_url, embedded=False)))
    await make_user(conn, "root@example.com", "admin")
    await sign_in(client, "root@example.com")
    limit = 200_000  # the whole list, whatever is in it: each value is cut to a few KB
    for path in ("/runs", "/runs/table", "/api/runs"):
        response = await client.get(path)
        body = await response.read()
        assert response.status == 200 and len(body) < limit, (path, len(body))
        assert "truncated: 15,000 characters in all" in body.decode(), path
    listed = {r["id"]: r for r in (await (await client.get("/api/runs")).json())["runs"]}
    assert listed[runs[huge]["id"]]["status"] == "failed"
    subject = listed[run["id"]]["steps"][0]["rendered"]["subject"]
    assert subject.startswith("yyy") and len(subject) < 5000

    # The full values stay available for one run.
    pool = await create_pool(db, min_size=1, max_size=1)
    try:
        [full] = await queries.recent_runs(pool, tenant=tenant.id, status=None, limit=1,
                                           run_id=run["id"], clip=None)
    finally:
        await pool.close()
    assert full["error"] == run["error"] and full["steps"][0]["rendered"]["subject"] == long


async def test_a_job_pointing_at_another_tenants_client_sends_them_nothing(
    conn: asyncpg.Connection, http: FakeHTTPServer, smtp: FakeSMTPServer
) -> None:
    mine = await a_tenant(conn, {"name": "done", "trigger_type": "job_completed",
                                 "steps": [EMAIL_TO_CLIENT, SMS_TO_CLIENT]})
    theirs = await a_tenant(conn)
    job = await mine.job(conn, client_id=theirs.client_id)  # the app let a foreign id through
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)

    run = await finished_run(conn, mine.id)
    assert run["status"] == "failed"
    assert f"client {theirs.client_id} belongs to another tenant" in run["error"], run["error"]
    assert "relation client" in run["error"]
    assert run["context"]["client"] is None  # never loaded, so never shown or rendered
    assert theirs.email not in str(run["context"]) and theirs.phone not in str(run["context"])
    assert [m for m in smtp.messages if m["To"] == theirs.email] == []
    assert texts_to(http, theirs.phone) == []
    assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE run_id = $1", run["id"]) == 0
    steps = await conn.fetch("SELECT status, error FROM herald.steps WHERE run_id = $1 ORDER BY position",
                             run["id"])
    assert steps[0]["status"] == "failed" and "belongs to another tenant" in steps[0]["error"]
    assert [s["status"] for s in steps[1:]] == ["skipped"]

    # Its own client is still loaded as before.
    job = await mine.job(conn)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)

    async def second_run() -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT * FROM herald.runs WHERE tenant_id = $1 AND id <> $2"
                                   " AND status NOT IN ('pending', 'running')", mine.id, run["id"])

    done = await wait_until(second_run, timeout=30, message="the second run")
    assert done["status"] == "completed", done["error"]
    assert [m["To"] for m in smtp.messages if m["To"] == mine.email] == [mine.email]
