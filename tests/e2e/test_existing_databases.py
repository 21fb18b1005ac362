"""Herald in databases shaped the way ORMs and platforms make them, end to end.

Each app has its own database, laid out as its framework creates it (the SQL is
in ``tests/e2e/apps/``), its own daemon and worker, and writes its rows the way
the framework's client does:

* **Supabase**: uuid keys, row level security, and an application role that
  PostgREST switches to, with no rights on schema herald; the seed's
  job-completed workflow runs, unchanged, when that role completes a job.
* **Prisma**: quoted PascalCase tables and camelCase columns, text ids and
  ``updatedAt`` with no database default; the seed's consultation rule,
  unchanged, creates a note and a draft email.
* **Rails**: tables in schema ``crm``, ``created_at`` / ``updated_at`` with no
  default; ``work_order_completed`` and ``work_order_status_changed``.
* **Django**: ``app_model`` tables watched as entity ``job``, so the seed's
  job-completed workflow runs unchanged; no database defaults at all.
* **Phoenix / Ecto**: bigserial ids, ``inserted_at`` / ``updated_at`` with no default.

Every test works in its own tenant; runs are observed in herald.runs, herald.steps
and herald.messages (the capture provider stores what it would have sent).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import secrets
import string
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from config.database import connect, connection
from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from daemon.capture import Relation, watch_table
from daemon.workflows import import_workflow
from tests.conftest import REPO, fresh_database, read_json, wait_until
from tests.e2e.conftest import Processes, running_herald

APPS = Path(__file__).parent / "apps"
SEED_JOB_COMPLETED = REPO / "config" / "examples" / "job-completed.workflow.json"
SEED_CONSULTATION = REPO / "config" / "examples" / "consultation-scheduled.rule.json"

# Each app's Herald has its own Redis database, so one app's queued messages
# can never be taken by another app's worker.
REDIS_DB = {"supabase": 1, "prisma": 2, "rails": 3, "django": 4, "phoenix": 5}


@dataclass
class App:
    """An app's database with Herald watching it, and Herald's processes on it."""

    name: str
    url: str
    db: asyncpg.Connection  # Herald's side (the superuser): setup and assertions
    herald: Processes
    tenants: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)
    extra: dict[str, Any] = field(default_factory=dict)


def app_sql(name: str, **replace: str) -> str:
    sql = (APPS / f"{name}.sql").read_text()
    for old, new in replace.items():
        sql = sql.replace(old, new)
    return sql


@contextlib.asynccontextmanager
async def herald_app(
    name: str, layout: EmbeddedLayout, log_root: Path, prepare: Callable[[asyncpg.Connection, str], Awaitable[None]],
    sql: str | None = None,
) -> AsyncIterator[App]:
    """A fresh database with Herald's schema and the app's tables, ``prepare``d
    (watched), then a daemon and a worker on it."""
    async with fresh_database(layout) as url:
        async with connection(url) as db:
            await db.execute(sql if sql is not None else app_sql(name))
            await prepare(db, url)
            redis_url = f"{layout.redis_url}?db={REDIS_DB[name]}"
            client = redis.Redis.from_url(redis_url)
            client.flushdb()
            client.close()
            log_dir = log_root / name
            log_dir.mkdir(parents=True, exist_ok=True)
            with running_herald(url, redis_url, log_dir) as processes:
                yield App(name, url, db, processes)


# --- Observing runs -----------------------------------------------------------

async def diagnosis(app: App, tenant: str) -> str:
    """What Herald did with the tenant's events, for a failure message."""
    events = await app.db.fetch(
        "SELECT id, tenant_id, entity, type, state, match_report FROM herald.events"
        " WHERE tenant_id = $1 OR id > (SELECT coalesce(max(id), 0) - 5 FROM herald.events) ORDER BY id", tenant)
    runs = await app.db.fetch("SELECT id, status, error FROM herald.runs WHERE tenant_id = $1 ORDER BY id", tenant)
    steps = await app.db.fetch(
        "SELECT run_id, position, action, status, error FROM herald.steps WHERE tenant_id = $1 ORDER BY id", tenant)
    problems = [
        f"{e.get('process', '?')}: {e.get('event')} {e.get('error') or e.get('exception') or ''}".strip()
        for name in ("daemon", "worker") for e in app.herald.log_events(name)
        if e.get("level") in ("warning", "error", "critical")
    ]
    return "\n".join([
        f"events: {[dict(e) for e in events]}",
        f"runs: {[dict(r) for r in runs]}",
        f"steps: {[dict(s) for s in steps]}",
        "log warnings/errors: " + "\n  ".join(problems[-15:]),
    ])


async def finished_runs(app: App, tenant: str, count: int = 1, timeout: float = 30) -> list[asyncpg.Record]:
    """The tenant's first ``count`` runs, once each has finished (completed, failed...)."""

    async def probe() -> list[asyncpg.Record]:
        rows = await app.db.fetch(
            "SELECT * FROM herald.runs WHERE tenant_id = $1 AND status NOT IN ('pending', 'running')"
            " ORDER BY id", tenant)
        return list(rows) if len(rows) >= count else []

    try:
        return await wait_until(probe, timeout=timeout, message=f"{count} finished run(s) of tenant {tenant}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(app, tenant)}") from None


async def completed_run(app: App, tenant: str) -> asyncpg.Record:
    [run] = await finished_runs(app, tenant)
    assert run["status"] == "completed", f"{run['status']}: {run['error']}\n{await diagnosis(app, tenant)}"
    return run


async def step_outcomes(app: App, run_id: int) -> list[tuple[str, str]]:
    steps = await app.db.fetch(
        "SELECT action, status, error FROM herald.steps WHERE run_id = $1 ORDER BY position", run_id)
    assert all(s["error"] is None for s in steps), [dict(s) for s in steps]
    return [(s["action"], s["status"]) for s in steps]


async def messages(app: App, tenant: str) -> list[dict[str, Any]]:
    rows = await app.db.fetch(
        "SELECT channel, recipient, subject, body, status, provider FROM herald.messages"
        " WHERE tenant_id = $1 ORDER BY channel, id", tenant)
    return [dict(row) for row in rows]


def seed_job_completed_messages(title: str, first_name: str, email: str, phone: str) -> list[dict[str, Any]]:
    """What the seed's job-completed workflow sends for a job (captured, not delivered)."""
    return [
        {"channel": "email", "recipient": email, "subject": f"Job Completed - {title}",
         "body": f"Dear {first_name},\n\nYour job has been completed.", "status": "captured",
         "provider": "capture"},
        {"channel": "sms", "recipient": phone, "subject": None, "body": f"Job {title} completed. Thank you!",
         "status": "captured", "provider": "capture"},
    ]


def assert_just_now(value: Any, what: str) -> None:
    """A timestamp Herald filled in: set, and the current time (UTC; naive columns hold UTC here)."""
    assert value is not None, f"{what} was not set"
    now = dt.datetime.now(dt.timezone.utc)
    if value.tzinfo is None:
        now = now.replace(tzinfo=None)
    assert abs(now - value) < dt.timedelta(minutes=5), f"{what} = {value}, now is {now}"


# --- Supabase ------------------------------------------------------------------

@pytest.fixture(scope="class")
async def supabase_role(servers: Any, layout: EmbeddedLayout) -> AsyncIterator[str]:
    """A role like Supabase's ``authenticated``, with a name of this test session's
    (roles belong to the whole server, which other sessions may share); dropped
    after the app's database (which holds its grants) is gone."""
    role = f"authenticated_{secrets.token_hex(6)}"
    async with connection(layout.database_url) as admin:
        await admin.execute(f"CREATE ROLE {role} NOLOGIN NOINHERIT")
    try:
        yield role
    finally:
        async with connection(layout.database_url) as admin:
            await admin.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="class")
async def supabase(
    supabase_role: str, template_database: str, layout: EmbeddedLayout, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    async def prepare(db: asyncpg.Connection, url: str) -> None:
        await watch_table(db, "public.jobs", tenant_column="organization_id",
                          relations=(Relation("client", "public.clients", "client_id"),
                                     Relation("organization", "public.organizations", "organization_id")),
                          tasks_table="public.tasks")

    sql = app_sql("supabase", authenticated=supabase_role)
    async with herald_app("supabase", layout, tmp_path_factory.mktemp("apps"), prepare, sql=sql) as app:
        app.extra["role"] = supabase_role
        yield app


@contextlib.asynccontextmanager
async def postgrest(app: App, org: uuid.UUID, method: str, path: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction as PostgREST opens one for a signed-in member of ``org``:
    the role and the JWT's claims set for the transaction only."""
    async with connection(app.url) as api:
        async with api.transaction():
            claims = {"sub": str(uuid.uuid4()), "role": app.extra["role"], "org_id": str(org),
                      "aud": "authenticated", "email": "member@example.com"}
            await api.execute(
                "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true),"
                " set_config('request.method', $3, true), set_config('request.path', $4, true)",
                app.extra["role"], json.dumps(claims), method, path)
            yield api


async def rest_insert(api: asyncpg.Connection, table: str, body: dict[str, Any]) -> uuid.UUID:
    """POST /rest/v1/<table>, as PostgREST writes it: the JSON body through json_populate_record."""
    columns = ", ".join(f'"{c}"' for c in body)
    picked = ", ".join(f'pgrst_body."{c}"' for c in body)
    return await api.fetchval(  # type: ignore[no-any-return]
        f'INSERT INTO "public"."{table}"({columns}) SELECT {picked}'
        f" FROM (SELECT $1::json AS json_data) pgrst_payload,"
        f' LATERAL (SELECT {columns} FROM json_populate_record(null::"public"."{table}", pgrst_payload.json_data))'
        f' pgrst_body RETURNING "public"."{table}"."id"', body)


async def rest_update(api: asyncpg.Connection, table: str, row_id: uuid.UUID, body: dict[str, Any]) -> int:
    """PATCH /rest/v1/<table>?id=eq.<row_id>; the number of rows changed."""
    columns = ", ".join(f'"{c}"' for c in body)
    assignments = ", ".join(f'"{c}" = pgrst_body."{c}"' for c in body)
    return await api.fetchval(  # type: ignore[no-any-return]
        f'WITH pgrst_source AS (UPDATE "public"."{table}" SET {assignments}'
        f" FROM (SELECT $1::json AS json_data) pgrst_payload,"
        f' LATERAL (SELECT {columns} FROM json_populate_record(null::"public"."{table}", pgrst_payload.json_data))'
        f' pgrst_body WHERE "public"."{table}"."id" = $2::uuid RETURNING 1) SELECT count(*) FROM pgrst_source',
        body, row_id)


async def supabase_org_with_job(app: App, title: str) -> tuple[uuid.UUID, uuid.UUID, dict[str, str]]:
    """A new organization (made by the sign-up flow, with the service role) whose
    member adds a client and a job through the API."""
    n = app.tenants()
    org = await app.db.fetchval("INSERT INTO organizations (name) VALUES ($1) RETURNING id", f"Org {n}")
    person = {"first_name": "Maria", "email": f"maria{n}@example.com", "phone": f"+1555010{n:04d}"}
    async with postgrest(app, org, "POST", "/clients") as api:
        client = await rest_insert(api, "clients", {"organization_id": str(org), "last_name": "Lopez", **person})
    async with postgrest(app, org, "POST", "/jobs") as api:
        job = await rest_insert(api, "jobs", {
            "organization_id": str(org), "client_id": str(client), "title": title, "status": "in_progress"})
    return org, job, person


class TestSupabase:
    async def test_the_seed_workflow_runs_when_the_app_role_completes_a_job(self, supabase: App) -> None:
        app = supabase
        org, job, person = await supabase_org_with_job(app, "Replace kitchen faucet")
        tenant = str(org)
        await import_workflow(app.db, tenant, read_json(SEED_JOB_COMPLETED))

        # Row level security is really on: a member of another organization changes nothing.
        other, _, _ = await supabase_org_with_job(app, "Someone else's job")
        async with postgrest(app, other, "PATCH", "/jobs") as api:
            assert await rest_update(api, "jobs", job, {"status": "cancelled"}) == 0

        async with postgrest(app, org, "PATCH", "/jobs") as api:
            assert await rest_update(api, "jobs", job, {"status": "completed"}) == 1

        run = await completed_run(app, tenant)
        assert await step_outcomes(app, run["id"]) == [("email", "sent"), ("sms", "sent")]
        assert await messages(app, tenant) == seed_job_completed_messages(
            "Replace kitchen faucet", person["first_name"], person["email"], person["phone"])
        event = await app.db.fetchrow("SELECT entity, row_id FROM herald.events WHERE id = $1", run["event_id"])
        assert dict(event) == {"entity": "job", "row_id": str(job)}

    async def test_the_app_role_still_cannot_read_herald(self, supabase: App) -> None:
        app = supabase
        org, _, _ = await supabase_org_with_job(app, "Nosy job")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            async with postgrest(app, org, "GET", "/events") as api:
                await api.fetch("SELECT * FROM herald.events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            async with postgrest(app, org, "GET", "/messages") as api:
                await api.fetch("SELECT * FROM herald.messages")

    async def test_create_task_lands_in_the_organizations_tasks(self, supabase: App) -> None:
        app = supabase
        org, job, _ = await supabase_org_with_job(app, "Water heater inspection")
        tenant = str(org)
        await import_workflow(app.db, tenant, {
            "name": "Follow up", "trigger_type": "job_completed", "steps": [
                {"id": "task", "type": "action", "config": {
                    "actionType": "create_task", "title": "Call {{client.firstName}} about {{job.title}}",
                    "jobId": "{{job.id}}"}}]})
        async with postgrest(app, org, "PATCH", "/jobs") as api:
            assert await rest_update(api, "jobs", job, {"status": "completed"}) == 1

        await completed_run(app, tenant)
        # The member sees Herald's task through the app's own policies.
        async with postgrest(app, org, "GET", "/tasks") as api:
            tasks = await api.fetch("SELECT organization_id, job_id, title, done FROM tasks")
        assert [dict(t) for t in tasks] == [{"organization_id": org, "job_id": job, "done": False,
                                             "title": "Call Maria about Water heater inspection"}]


# --- Prisma --------------------------------------------------------------------

def cuid() -> str:
    """An id like Prisma's @default(cuid()): 'c' and 24 lower-case letters and digits."""
    return "c" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24))


@pytest.fixture(scope="class")
async def prisma(
    template_database: str, layout: EmbeddedLayout, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    async def prepare(db: asyncpg.Connection, url: str) -> None:
        await watch_table(db, '"Appointment"', tenant_column="practiceId",
                          relations=(Relation("patient", '"Patient"', "patientId"),), notes_table='"Note"')

    async with herald_app("prisma", layout, tmp_path_factory.mktemp("apps"), prepare) as app:
        yield app


async def prisma_create(conn: asyncpg.Connection, model: str, data: dict[str, Any]) -> str:
    """prisma.<model>.create(): the client generates the id and sets @updatedAt."""
    data = {"id": cuid(), **data, "updatedAt": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)}
    columns = ",".join(f'"{c}"' for c in data)
    values = ",".join(f"${i + 1}" for i in range(len(data)))
    return await conn.fetchval(  # type: ignore[no-any-return]
        f'INSERT INTO "public"."{model}" ({columns}) VALUES ({values}) RETURNING "public"."{model}"."id"',
        *data.values())


class TestPrisma:
    async def test_the_seed_consultation_rule_creates_a_note_and_a_draft(self, prisma: App) -> None:
        app = prisma
        async with connection(app.url) as client:  # the app's own connection
            practice = await prisma_create(client, "Practice", {"name": f"Smile Dental {app.tenants()}"})
            await import_workflow(app.db, practice, read_json(SEED_CONSULTATION))
            patient = await prisma_create(client, "Patient", {
                "firstName": "Ana", "lastName": "Silva", "email": "ana.silva@example.com",
                "phone": "+15550109999", "practiceId": practice})
            starts = dt.datetime(2030, 5, 6, 9, 30)
            await prisma_create(client, "Appointment", {
                "patientId": patient, "practiceId": practice, "visitType": "Follow-up", "startsAt": starts})
            consultation = await prisma_create(client, "Appointment", {
                "patientId": patient, "practiceId": practice, "visitType": "Consultation", "startsAt": starts})

        run = await completed_run(app, practice)
        event = await app.db.fetchrow("SELECT entity, row_id FROM herald.events WHERE id = $1", run["event_id"])
        assert dict(event) == {"entity": "appointment", "row_id": consultation}
        notes = await app.db.fetch('SELECT * FROM "Note" WHERE "practiceId" = $1', practice)
        assert len(notes) == 1, [dict(n) for n in notes]
        note = notes[0]
        assert (note["patientId"], note["practiceId"], note["type"], note["content"]) == (
            patient, practice, "appointment", "Consultation appointment scheduled")
        assert note["id"], "the note has no id"
        assert_just_now(note["updatedAt"], '"Note"."updatedAt"')
        assert_just_now(note["createdAt"], '"Note"."createdAt"')

        draft = await app.db.fetchrow("SELECT * FROM herald.messages WHERE tenant_id = $1", practice)
        assert (draft["status"], draft["channel"], draft["recipient"], draft["subject"], draft["body"]) == (
            "draft", "email", "ana.silva@example.com", "Appointment Confirmation",
            "Your consultation appointment has been scheduled.")
        # The follow-up ran nothing, and its event says why.
        reports = await app.db.fetch(
            "SELECT match_report FROM herald.events WHERE tenant_id = $1 AND row_id <> $2", practice, consultation)
        assert len(reports) == 1 and "was 'Follow-up'" in reports[0]["match_report"]["workflows"][0]["reason"]


# --- Rails ---------------------------------------------------------------------

@pytest.fixture(scope="class")
async def rails(
    template_database: str, layout: EmbeddedLayout, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    async def prepare(db: asyncpg.Connection, url: str) -> None:
        # As an operator would: `herald watch` on the schema-qualified table.
        env = Settings(database_url=url, redis_url=f"{layout.redis_url}?db={REDIS_DB['rails']}",
                       embedded=False).child_env()
        watched = subprocess.run(
            [sys.executable, "-m", "daemon", "watch", "crm.work_orders", "--tenant-column", "account_id",
             "--relation", "customer=crm.customers:customer_id", "--tasks-table", "crm.tasks"],
            env=env, capture_output=True, text=True, timeout=60)
        assert watched.returncode == 0, watched.stderr
        assert "watching crm.work_orders" in watched.stdout, watched.stdout

    async with herald_app("rails", layout, tmp_path_factory.mktemp("apps"), prepare) as app:
        # Active Record's connection: schema_search_path crm, unqualified names.
        app.extra["ar"] = await connect(app.url, server_settings={"search_path": "crm"})
        try:
            yield app
        finally:
            await app.extra["ar"].close()


def rails_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


async def rails_account_with_work_order(app: App, title: str) -> tuple[int, int, str]:
    """Account.create!, Customer.create!, WorkOrder.create!: Active Record sets the timestamps."""
    ar: asyncpg.Connection = app.extra["ar"]
    n = app.tenants()
    now = rails_now()
    account = await ar.fetchval(
        'INSERT INTO "accounts" ("name", "created_at", "updated_at") VALUES ($1, $2, $3) RETURNING "id"',
        f"Account {n}", now, now)
    customer = await ar.fetchval(
        'INSERT INTO "customers" ("account_id", "first_name", "last_name", "email", "phone", "created_at",'
        ' "updated_at") VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING "id"',
        account, "Dana", "Reyes", f"dana{n}@example.com", f"+1555020{n:04d}", now, now)
    work_order = await ar.fetchval(
        'INSERT INTO "work_orders" ("account_id", "customer_id", "title", "created_at", "updated_at")'
        ' VALUES ($1, $2, $3, $4, $5) RETURNING "id"', account, customer, title, now, now)
    return account, work_order, f"dana{n}@example.com"


async def rails_update_status(app: App, work_order: int, status: str) -> None:
    """work_order.update!(status: ...)."""
    await app.extra["ar"].execute(
        'UPDATE "work_orders" SET "status" = $1, "updated_at" = $2 WHERE "work_orders"."id" = $3',
        status, rails_now(), work_order)


class TestRails:
    async def test_work_order_completed_creates_a_task_with_its_timestamps(self, rails: App) -> None:
        app = rails
        account, work_order, _ = await rails_account_with_work_order(app, "Replace roof flashing")
        tenant = str(account)
        await import_workflow(app.db, tenant, {
            "name": "Invoice finished work", "trigger_type": "work_order_completed", "steps": [
                {"id": "task", "type": "action", "config": {
                    "actionType": "create_task",
                    "title": "Invoice {{customer.firstName}} for {{work_order.title}}",
                    "workOrderId": "{{work_order.id}}"}}]})
        await rails_update_status(app, work_order, "in_progress")
        await rails_update_status(app, work_order, "completed")

        run = await completed_run(app, tenant)
        assert await app.db.fetchval("SELECT entity FROM herald.events WHERE id = $1", run["event_id"]) == "work_order"
        tasks = await app.db.fetch("SELECT * FROM crm.tasks WHERE account_id = $1", account)
        assert [(t["work_order_id"], t["title"], t["completed"]) for t in tasks] == [
            (work_order, "Invoice Dana for Replace roof flashing", False)]
        assert_just_now(tasks[0]["created_at"], "crm.tasks.created_at")
        assert_just_now(tasks[0]["updated_at"], "crm.tasks.updated_at")

    async def test_work_order_status_changed_emails_the_customer(self, rails: App) -> None:
        app = rails
        account, work_order, email = await rails_account_with_work_order(app, "Gutter cleaning")
        tenant = str(account)
        await import_workflow(app.db, tenant, {
            "name": "Status updates", "trigger": "work_order_status_changed", "actions": [
                {"type": "email", "args": {
                    "recipient": "{{customer.email}}",
                    "subject": "{{work_order.title}}: {{old.status}} -> {{new.status}}",
                    "message": "Hi {{customer.firstName}}, work order #{{work_order.id}} is now {{new.status}}."}}]})
        await rails_update_status(app, work_order, "scheduled")

        run = await completed_run(app, tenant)
        assert await step_outcomes(app, run["id"]) == [("email", "sent")]
        assert await messages(app, tenant) == [
            {"channel": "email", "recipient": email, "subject": "Gutter cleaning: open -> scheduled",
             "body": f"Hi Dana, work order #{work_order} is now scheduled.", "status": "captured",
             "provider": "capture"}]


# --- Django --------------------------------------------------------------------

@pytest.fixture(scope="class")
async def django(
    template_database: str, layout: EmbeddedLayout, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    async def prepare(db: asyncpg.Connection, url: str) -> None:
        await watch_table(db, "fieldops_job", entity="job", tenant_column="organization_id",
                          relations=(Relation("client", "fieldops_client", "client_id"),),
                          tasks_table="fieldops_task")

    async with herald_app("django", layout, tmp_path_factory.mktemp("apps"), prepare) as app:
        yield app


async def django_org_with_job(app: App, title: str) -> tuple[int, int, dict[str, str]]:
    """Organization.objects.create(...), Client..., Job...: Django sets every column itself."""
    n = app.tenants()
    now = dt.datetime.now(dt.timezone.utc)
    async with connection(app.url) as orm:
        org = await orm.fetchval(
            'INSERT INTO "fieldops_organization" ("name", "created_at") VALUES ($1, $2) RETURNING'
            ' "fieldops_organization"."id"', f"Org {n}", now)
        person = {"first_name": "Lee", "email": f"lee{n}@example.com", "phone": f"+1555030{n:04d}"}
        client = await orm.fetchval(
            'INSERT INTO "fieldops_client" ("first_name", "last_name", "email", "phone", "created_at",'
            ' "organization_id") VALUES ($1, $2, $3, $4, $5, $6) RETURNING "fieldops_client"."id"',
            person["first_name"], "Park", person["email"], person["phone"], now, org)
        job = await orm.fetchval(
            'INSERT INTO "fieldops_job" ("title", "status", "scheduled_for", "created_at", "updated_at",'
            ' "client_id", "organization_id") VALUES ($1, $2, NULL, $3, $3, $4, $5) RETURNING "fieldops_job"."id"',
            title, "in_progress", now, client, org)
    return org, job, person


async def django_save_job(app: App, job: int, status: str) -> None:
    """job.status = ...; job.save(): Django's UPDATE writes every column back."""
    async with connection(app.url) as orm:
        row = await orm.fetchrow('SELECT * FROM "fieldops_job" WHERE "fieldops_job"."id" = $1', job)
        await orm.execute(
            'UPDATE "fieldops_job" SET "title" = $1, "status" = $2, "scheduled_for" = $3, "created_at" = $4,'
            ' "updated_at" = $5, "client_id" = $6, "organization_id" = $7 WHERE "fieldops_job"."id" = $8',
            row["title"], status, row["scheduled_for"], row["created_at"], dt.datetime.now(dt.timezone.utc),
            row["client_id"], row["organization_id"], job)


class TestDjango:
    async def test_the_seed_workflow_runs_on_app_model_tables(self, django: App) -> None:
        app = django
        org, job, person = await django_org_with_job(app, "Fix boiler")
        tenant = str(org)
        await import_workflow(app.db, tenant, read_json(SEED_JOB_COMPLETED))
        await django_save_job(app, job, "completed")

        run = await completed_run(app, tenant)
        assert await step_outcomes(app, run["id"]) == [("email", "sent"), ("sms", "sent")]
        assert await messages(app, tenant) == seed_job_completed_messages(
            "Fix boiler", person["first_name"], person["email"], person["phone"])

    async def test_create_task_fills_created_at(self, django: App) -> None:
        app = django
        org, job, _ = await django_org_with_job(app, "Annual service")
        tenant = str(org)
        await import_workflow(app.db, tenant, {
            "name": "Ask for a review", "trigger": "job_completed", "actions": [
                {"type": "create_task", "args": {"title": "Ask {{client.firstName}} for a review of {{job.title}}",
                                                 "jobId": "{{job.id}}", "done": False}}]})
        await django_save_job(app, job, "completed")

        await completed_run(app, tenant)
        tasks = await app.db.fetch('SELECT * FROM "fieldops_task" WHERE "organization_id" = $1', org)
        assert [(t["job_id"], t["title"], t["done"]) for t in tasks] == [
            (job, "Ask Lee for a review of Annual service", False)]
        assert_just_now(tasks[0]["created_at"], "fieldops_task.created_at")


# --- Phoenix / Ecto --------------------------------------------------------------

@pytest.fixture(scope="class")
async def phoenix(
    template_database: str, layout: EmbeddedLayout, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[App]:
    async def prepare(db: asyncpg.Connection, url: str) -> None:
        await watch_table(db, "bookings", tenant_column="team_id",
                          relations=(Relation("customer", "customers", "customer_id"),), tasks_table="tasks")

    async with herald_app("phoenix", layout, tmp_path_factory.mktemp("apps"), prepare) as app:
        yield app


def ecto_now() -> dt.datetime:
    """NaiveDateTime.utc_now() truncated to the second, as timestamps() stores it."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


class TestPhoenix:
    async def test_booking_completed_creates_a_task_with_ecto_timestamps(self, phoenix: App) -> None:
        app = phoenix
        n = app.tenants()
        async with connection(app.url) as repo:  # Repo.insert!/update!
            now = ecto_now()
            team = await repo.fetchval(
                'INSERT INTO "teams" ("name","inserted_at","updated_at") VALUES ($1,$2,$3) RETURNING "id"',
                f"Team {n}", now, now)
            customer = await repo.fetchval(
                'INSERT INTO "customers" ("email","name","phone","team_id","inserted_at","updated_at")'
                ' VALUES ($1,$2,$3,$4,$5,$6) RETURNING "id"',
                "sam@example.com", "Sam Okafor", "+15550401234", team, now, now)
            booking = await repo.fetchval(
                'INSERT INTO "bookings" ("customer_id","service","team_id","inserted_at","updated_at")'
                ' VALUES ($1,$2,$3,$4,$5) RETURNING "id"', customer, "Deep clean", team, now, now)
            tenant = str(team)
            await import_workflow(app.db, tenant, {
                "name": "Invoice after the visit", "trigger_type": "booking_completed", "steps": [
                    {"id": "task", "type": "action", "config": {
                        "actionType": "create_task", "title": "Invoice {{customer.name}} for {{booking.service}}",
                        "bookingId": "{{booking.id}}"}}]})
            await repo.execute('UPDATE "bookings" SET "status" = $1, "updated_at" = $2 WHERE "id" = $3',
                               "completed", ecto_now(), booking)

        await completed_run(app, tenant)
        tasks = await app.db.fetch("SELECT * FROM tasks WHERE team_id = $1", team)
        assert [(t["booking_id"], t["title"], t["done"]) for t in tasks] == [
            (booking, "Invoice Sam Okafor for Deep clean", False)]
        assert_just_now(tasks[0]["inserted_at"], "tasks.inserted_at")
        assert_just_now(tasks[0]["updated_at"], "tasks.updated_at")
