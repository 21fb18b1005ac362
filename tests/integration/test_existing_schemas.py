"""Herald in databases shaped by their applications (issue 10), against a real
PostgreSQL: capture with Herald's rights under least-privilege roles and RLS,
what `herald watch` checks and says, events of odd tables, and rows written
into ORM-made tables (actions run directly, with the claimed step's fields).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from actors.actions import ACTIONS
from actors.actions.base import StepRun
from actors.model.templates import as_records
from config.errors import HeraldConfigError, StepError, WorkflowValidationError
from config.settings import Settings
from daemon.capture import (
    Relation,
    default_entity,
    parse_fills,
    unwatch_table,
    watch_table,
)
from daemon.workflows import import_workflow
from tests.conftest import REPO


@pytest.fixture
async def role(conn: asyncpg.Connection) -> AsyncIterator[str]:
    """A cluster-wide role of this test's own, NOLOGIN, dropped afterwards."""
    name = f"app_{secrets.token_hex(4)}"
    await conn.execute(f"CREATE ROLE {name} NOLOGIN")
    yield name
    await conn.execute(f"DROP OWNED BY {name}")
    await conn.execute(f"DROP ROLE {name}")


async def test_an_application_role_without_rights_on_herald_still_writes_its_tables(
    conn: asyncpg.Connection, role: str
) -> None:
    await conn.execute("""
        CREATE TABLE jobs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), organization_id uuid NOT NULL,
                           title text, status text);
        ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
    """)
    await conn.execute(f"""
        GRANT SELECT, INSERT, UPDATE ON jobs TO {role};
        CREATE POLICY own_org ON jobs TO {role}
            USING (organization_id = current_setting('app.org')::uuid)
            WITH CHECK (organization_id = current_setting('app.org')::uuid);
    """)
    await watch_table(conn, "jobs", tenant_column="organization_id")
    org = "6c1c6c0e-4f52-4c55-9a57-0d5b1d7e7a10"
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute("SELECT set_config('app.org', $1, true)", org)
        job = await conn.fetchval(
            "INSERT INTO jobs (organization_id, title, status) VALUES ($1, 'Fix boiler', 'open') RETURNING id", org)
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)
    events = await conn.fetch("SELECT tenant_id, row_id, type, state FROM herald.events ORDER BY id")
    assert [tuple(e) for e in events] == [(org, str(job), "job.created", "pending"),
                                          (org, str(job), "job.updated", "pending")]

    # ...and the role can neither read Herald's tables nor point a trigger at its capture function.
    for statement in ("SELECT count(*) FROM herald.events",
                      "INSERT INTO herald.events (tenant_id, entity, table_name, operation, type)"
                      " VALUES ('x', 'job', 'public.jobs', 'INSERT', 'job.created')"):
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    await conn.execute(f"CREATE TABLE own (id int); ALTER TABLE own OWNER TO {role}")
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TRIGGER forged AFTER INSERT ON own FOR EACH ROW"
                               " EXECUTE FUNCTION herald.capture_change('job', 'id', '', 'public.jobs')")


async def test_rows_without_a_tenant_are_recorded_as_failed_events_not_filed_under_a_tenant(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute("CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, org text, title text)")
    await watch_table(conn, "jobs", tenant_column="org")
    await conn.execute("INSERT INTO jobs (org, title) VALUES (NULL, 'a'), ('', 'b'), ('acme', 'c')")
    await conn.execute("ALTER TABLE jobs RENAME COLUMN org TO organization")
    await conn.execute("INSERT INTO jobs (organization, title) VALUES ('acme', 'd')")
    events = await conn.fetch("SELECT tenant_id, state, match_report FROM herald.events ORDER BY id")
    assert [(e["tenant_id"], e["state"]) for e in events] == [
        ("", "failed"), ("", "failed"), ("acme", "pending"), ("", "failed")]
    assert "tenant column org is empty" in events[0]["match_report"]["error"]
    assert "public.jobs has no column org (its tenant column)" in events[3]["match_report"]["error"]


async def test_a_partitioned_table_s_events_are_its_own_not_its_partitions(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        CREATE TABLE visits (id bigint NOT NULL, tenant text NOT NULL, day date NOT NULL, status text,
                             PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
        CREATE TABLE visits_2026 PARTITION OF visits FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    """)
    watched = await watch_table(conn, "visits", tenant_column="tenant", id_column="id")
    assert (watched.table, watched.entity, watched.id_column) == ("public.visits", "visit", "id")
    await conn.execute("INSERT INTO visits VALUES (1, 't', '2026-11-30', 'booked')")
    await conn.execute("UPDATE visits SET status = 'booked' WHERE id = 1")  # no change: no event
    await conn.execute("UPDATE visits SET status = 'done' WHERE id = 1")
    # Writes naming a partition, one made after the watch among them, and a column
    # of a type without equality (json), are captured all the same.
    await conn.execute("ALTER TABLE visits ADD COLUMN notes json")
    await conn.execute("CREATE TABLE visits_2027 PARTITION OF visits FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')")
    await conn.execute("INSERT INTO visits_2027 VALUES (2, 't', '2027-02-01', 'booked', '{}')")
    await conn.execute("""UPDATE visits_2027 SET notes = '{"gate": 4}' WHERE id = 2""")
    await conn.execute("DELETE FROM visits_2026 WHERE id = 1")
    events = await conn.fetch("SELECT table_name, entity, row_id, type FROM herald.events ORDER BY id")
    assert [tuple(e) for e in events] == [("public.visits", "visit", "1", "visit.created"),
                                          ("public.visits", "visit", "1", "visit.updated"),
                                          ("public.visits", "visit", "2", "visit.created"),
                                          ("public.visits", "visit", "2", "visit.updated"),
                                          ("public.visits", "visit", "1", "visit.deleted")]


async def test_large_values_are_left_out_of_events_but_their_changes_still_show(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE docs (id serial PRIMARY KEY, title text, body text, scan bytea, meta jsonb)")
    await watch_table(conn, "docs")
    big = "x" * 100_000
    await conn.execute("INSERT INTO docs (title, body, scan, meta) VALUES ('t', $1, $2, $3)",
                       big, b"\x00" * 50_000, {"k": big})
    await conn.execute("UPDATE docs SET body = body || 'y'")
    events = await conn.fetch("SELECT old, new FROM herald.events ORDER BY id")
    created = events[0]["new"]
    assert created["title"] == "t"
    for column in ("body", "scan", "meta"):
        assert re.fullmatch(r"\[left out of the event: \d+ characters, md5 [0-9a-f]{32}\]", created[column])
    assert "100000 characters" in created["body"]
    assert events[1]["old"]["body"] != events[1]["new"]["body"]  # a field_changed trigger still sees it
    assert events[1]["old"]["scan"] == events[1]["new"]["scan"]
    size = await conn.fetchval("SELECT pg_column_size(new) FROM herald.events ORDER BY id LIMIT 1")
    assert size < 2_000
    # The same for rows written several to a statement (captured as a set).
    await conn.execute("INSERT INTO docs (title, body) VALUES ('u', $1), ('v', 'short')", big)
    await conn.execute("UPDATE docs SET body = body || 'z' WHERE title IN ('u', 'v')")
    await conn.execute("DELETE FROM docs WHERE title IN ('u', 'v')")
    rows = await conn.fetch("SELECT type, coalesce(new, old) ->> 'title' AS title, old ->> 'body' AS was,"
                            " new ->> 'body' AS body FROM herald.events WHERE id > $1 ORDER BY id",
                            await conn.fetchval("SELECT min(id) + 1 FROM herald.events"))
    shown = {(r["type"], r["title"]): (r["was"], r["body"]) for r in rows}
    assert shown[("doc.created", "v")] == (None, "short")
    assert shown[("doc.updated", "v")] == ("short", "shortz")
    assert "100000 characters" in shown[("doc.created", "u")][1]
    was, now = shown[("doc.updated", "u")]
    assert "100000 characters" in was and "100001 characters" in now
    assert "100001 characters" in shown[("doc.deleted", "u")][0] and len(rows) == 6


async def test_watch_finds_tables_as_orms_name_them(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        CREATE SCHEMA crm;
        CREATE TABLE "Appointment" (id text PRIMARY KEY, "practiceId" text NOT NULL, "visitType" text);
        CREATE TABLE crm.work_orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, account_id bigint);
        CREATE TABLE crm."LineItems" (sku text PRIMARY KEY, qty int);
        CREATE VIEW open_orders AS SELECT * FROM crm.work_orders;
    """)
    assert default_entity("WorkOrders") == "work_order"
    appointment = await watch_table(conn, "Appointment", tenant_column="practice_id")
    assert (appointment.table, appointment.entity) == ("public.Appointment", "appointment")
    orders = await watch_table(conn, "crm.work_orders", tenant_column="account_id")
    assert (orders.table, orders.entity, orders.id_column) == ("crm.work_orders", "work_order", "id")
    items = await watch_table(conn, 'crm."LineItems"')
    assert (items.entity, items.id_column) == ("line_item", "sku")
    rows = await conn.fetch("SELECT table_name, tenant_column FROM herald.watched_tables ORDER BY 1")
    assert [tuple(r) for r in rows] == [("crm.LineItems", None), ("crm.work_orders", "account_id"),
                                        ("public.Appointment", "practiceId")]
    await conn.execute("""INSERT INTO "Appointment" VALUES ('ckx1', 'p1', 'Consultation')""")
    assert await conn.fetchval("SELECT tenant_id FROM herald.events") == "p1"

    with pytest.raises(HeraldConfigError, match="is a view, not a table"):
        await watch_table(conn, "open_orders")
    with pytest.raises(HeraldConfigError, match="entity 'work_order' is already crm.work_orders's"):
        await watch_table(conn, '"Appointment"', entity="work_order")
    with pytest.raises(HeraldConfigError, match=r"entity 'Bad-Name' must be lower-case"):
        await watch_table(conn, '"Appointment"', entity="Bad-Name")
    with pytest.raises(HeraldConfigError, match=r"no column 'nope' for --tenant-column \(columns: id, practiceId"):
        await watch_table(conn, '"Appointment"', tenant_column="nope")


async def test_unwatch_removes_the_triggers_and_keeps_the_events(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE jobs (id serial PRIMARY KEY, status text)")
    await watch_table(conn, "jobs")
    await conn.execute("INSERT INTO jobs (status) VALUES ('open')")
    assert await unwatch_table(conn, "jobs") == ("public.jobs", 0)
    await conn.execute("INSERT INTO jobs (status) VALUES ('open')")
    assert await conn.fetchval("SELECT count(*) FROM herald.events") == 1
    assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass") == 0
    assert await conn.fetchval("SELECT count(*) FROM herald.watched_tables") == 0
    with pytest.raises(HeraldConfigError, match="public.jobs is not watched"):
        await unwatch_table(conn, "jobs")


async def test_watch_as_a_least_privilege_role_names_every_missing_grant(
    conn: asyncpg.Connection, role: str
) -> None:
    await conn.execute("""
        CREATE TABLE clients (id bigserial PRIMARY KEY, org bigint, email text);
        CREATE TABLE jobs (id bigserial PRIMARY KEY, org bigint, client_id bigint, status text);
        CREATE TABLE tasks (id bigserial PRIMARY KEY, org bigint, title text);
    """)
    # Herald's capture function belongs to whoever ran the migrations; this role may use it.
    await conn.execute(f"GRANT USAGE ON SCHEMA herald TO {role};"
                       f" GRANT SELECT, INSERT, UPDATE ON herald.watched_tables TO {role};"
                       f" GRANT EXECUTE ON FUNCTION herald.capture_change() TO {role}")

    async def watch_as_role() -> Any:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            return await watch_table(conn, "jobs", tenant_column="org",
                                     relations=(Relation("client", "clients", "client_id"),),
                                     tasks_table="tasks", updatable=("status",))

    with pytest.raises(HeraldConfigError) as refused:
        await watch_as_role()
    message = str(refused.value)
    assert f'role "{role}" lacks what Herald needs here' in message
    for grant in (f'GRANT SELECT ON "public"."clients" TO "{role}";',
                  f'GRANT INSERT ON "public"."tasks" TO "{role}";',
                  f'GRANT SELECT ("id") ON "public"."tasks" TO "{role}";',
                  f'GRANT SELECT, TRIGGER ON "public"."jobs" TO "{role}";',
                  f'GRANT UPDATE ("status") ON "public"."jobs" TO "{role}";'):
        assert grant in message, (grant, message)

    await conn.execute(f"GRANT SELECT ON clients, jobs, tasks TO {role}; GRANT INSERT ON tasks TO {role};"
                       f" GRANT TRIGGER ON jobs TO {role}; GRANT UPDATE (status) ON jobs TO {role}")
    await conn.execute("ALTER TABLE clients ENABLE ROW LEVEL SECURITY")
    with pytest.raises(HeraldConfigError, match=r"row-level security on \"public\".\"clients\" hides every row"):
        await watch_as_role()
    await conn.execute(f"CREATE POLICY mine ON clients TO {role} USING (org = 1)")
    watched = await watch_as_role()
    assert len(watched.warnings) == 1 and "lets" in watched.warnings[0] and "(mine)" in watched.warnings[0]
    await conn.execute(f"CREATE POLICY herald_select ON clients FOR SELECT TO {role} USING (true)")
    assert (await watch_as_role()).warnings == []


def test_fills_are_parsed_and_checked() -> None:
    assert parse_fills(["updatedAt=now", "id=cuid"]) == {"updatedAt": "now", "id": "cuid"}
    with pytest.raises(HeraldConfigError, match="COLUMN=KIND, KIND one of now, uuid, cuid, none"):
        parse_fills(["id=serial"])


# -- rows in ORM-made tables -----------------------------------------------------


async def execute(conn: asyncpg.Connection, action: str, config: dict[str, Any], context: dict[str, Any],
                  watched: str, row_id: str = "1", tenant: str = "t1") -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one atomic action as the worker would, for a run of an event on ``watched``;
    return (its response, what it rendered)."""
    wt = await conn.fetchrow("SELECT * FROM herald.watched_tables WHERE table_name = $1", watched)
    step = {"id": 1, "run_id": 1, "tenant_id": tenant, "config": {"actionType": action, **config},
            "table_name": watched, "row_id": row_id, "entity": wt["entity"], "id_column": wt["id_column"],
            "tenant_column": wt["tenant_column"], "action_targets": wt["action_targets"],
            "updatable_columns": wt["updatable_columns"], "fills": wt["fills"],
            "workflow_id": "w", "event_id": 1, "step_key": "s"}
    run = StepRun(step, as_records(context), Settings(database_url="postgresql://unused", redis_url="redis://unused", embedded=False), None, None, conn)  # type: ignore[arg-type]
    async with conn.transaction():
        done = await ACTIONS[action].execute(run)
    return done.response, run.rendered


PRISMA = """
CREATE TABLE "Patient" (id text PRIMARY KEY, "practiceId" text NOT NULL, "firstName" text, email text);
CREATE TABLE "Appointment" (id text PRIMARY KEY, "practiceId" text NOT NULL, "patientId" text NOT NULL,
    status text NOT NULL, "visitType" text NOT NULL,
    "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updatedAt" timestamp(3) NOT NULL);
CREATE TABLE "Note" (id text PRIMARY KEY, "practiceId" text NOT NULL, "patientId" text NOT NULL,
    type text, content text NOT NULL, "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" timestamp(3) NOT NULL);
"""


async def test_a_note_in_a_prisma_table_gets_its_columns_by_their_spelling_and_what_prisma_fills(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(PRISMA)
    await watch_table(conn, '"Appointment"', tenant_column="practiceId", notes_table='"Note"',
                      relations=(Relation("patient", '"Patient"', "patientId"),), updatable=("status",))
    context = {"appointment": {"id": "ca1", "patientId": "cp1", "practiceId": "t1"}}
    response, rendered = await execute(conn, "create_note", {
        "patientId": "{{appointment.patientId}}", "type": "appointment", "content": "Consultation scheduled"},
        context, "public.Appointment")
    note = await conn.fetchrow('SELECT * FROM "Note"')
    assert (note["patientId"], note["practiceId"], note["type"]) == ("cp1", "t1", "appointment")
    assert re.fullmatch(r"c[0-9a-z]{24}", note["id"]) and response["id"] == note["id"]
    assert note["updatedAt"] is not None and response["filled"] == ["id", "updatedAt"]
    assert rendered["patientId"] == "cp1"

    # snake_case keys find camelCase columns too; update_record moves "updatedAt" as Prisma would.
    await conn.execute("""INSERT INTO "Appointment" (id, "practiceId", "patientId", status, "visitType", "updatedAt")
                          VALUES ('ca1', 't1', 'cp1', 'scheduled', 'Consultation', '2020-01-01')""")
    response, _ = await execute(conn, "update_record", {"fields": {"status": "confirmed"}}, context,
                                "public.Appointment", row_id="ca1")
    row = await conn.fetchrow("""SELECT status, "updatedAt" > '2021-01-01' AS touched FROM "Appointment" """)
    assert (row["status"], row["touched"], response["filled"]) == ("confirmed", True, ["updatedAt"])


async def test_rails_and_phoenix_timestamps_and_uuid_keys_are_filled(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        CREATE SCHEMA crm;
        CREATE TABLE crm.work_orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, account_id bigint);
        CREATE TABLE crm.tasks (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, account_id bigint,
            title text NOT NULL, created_at timestamp(6) NOT NULL, updated_at timestamp(6) NOT NULL);
        CREATE TABLE reminders (id uuid PRIMARY KEY, account_id bigint, body text,
            inserted_at timestamp(0) NOT NULL, updated_at timestamp(0) NOT NULL,
            slug text GENERATED ALWAYS AS (lower(body)) STORED);
    """)
    await watch_table(conn, "crm.work_orders", tenant_column="account_id", tasks_table="crm.tasks",
                      notes_table="reminders")
    context = {"work_order": {"id": 7, "account_id": 3}}
    await execute(conn, "create_task", {"title": "Call back"}, context, "crm.work_orders", tenant="3")
    task = await conn.fetchrow("SELECT * FROM crm.tasks")
    assert (task["title"], task["account_id"]) == ("Call back", 3)
    assert task["created_at"] is not None and task["updated_at"] is not None
    response, _ = await execute(conn, "create_note", {"body": "Hello"}, context, "crm.work_orders", tenant="3")
    reminder = await conn.fetchrow("SELECT * FROM reminders")
    assert str(reminder["id"]) == response["id"] and reminder["slug"] == "hello"
    assert reminder["inserted_at"] is not None

    with pytest.raises(StepError, match=r"reminders.slug is a generated column"):
        await execute(conn, "create_note", {"body": "x", "slug": "y"}, context, "crm.work_orders", tenant="3")
    with pytest.raises(StepError, match=r"crm.tasks has no column 'owner' for create_task \(columns: id, account_id"):
        await execute(conn, "create_task", {"title": "x", "owner": "me"}, context, "crm.work_orders", tenant="3")


async def test_fills_set_per_table_and_keys_herald_cannot_make_up(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        CREATE TABLE jobs (id bigserial PRIMARY KEY, org text);
        CREATE TABLE tasks (id bigint PRIMARY KEY, org text, title text, due_on timestamptz, ref text);
    """)
    watched = await watch_table(conn, "jobs", tenant_column="org", tasks_table="tasks",
                                fills={"due_on": "now", "ref": "uuid"})
    assert "public.tasks.id (bigint) has no default" in watched.warnings[0]
    context = {"job": {"id": 1, "org": "t1"}}
    with pytest.raises(StepError, match=r"public.tasks.id \(bigint\) has no default and Herald cannot make up"):
        await execute(conn, "create_task", {"title": "x"}, context, "public.jobs")
    await execute(conn, "create_task", {"id": "5", "title": "x"}, context, "public.jobs")
    task = await conn.fetchrow("SELECT * FROM tasks")
    assert task["id"] == 5 and task["due_on"] is not None and re.fullmatch(r"[0-9a-f-]{36}", task["ref"])
    with pytest.raises(HeraldConfigError, match=r"--fill title=now: public.tasks.title is text"):
        await watch_table(conn, "jobs", tasks_table="tasks", fills={"title": "now"})
    with pytest.raises(HeraldConfigError, match=r"--fill nope: no column 'nope'"):
        await watch_table(conn, "jobs", tasks_table="tasks", fills={"nope": "now"})


async def test_import_refuses_a_step_naming_a_column_the_real_table_lacks(conn: asyncpg.Connection) -> None:
    await conn.execute(PRISMA + 'ALTER TABLE "Note" ADD COLUMN patient_id text;')
    await watch_table(conn, '"Appointment"', tenant_column="practiceId", notes_table='"Note"',
                      updatable=("status",))
    rule = json.loads((REPO / "config" / "examples" / "consultation-scheduled.rule.json").read_text())
    # "Note" has both "patientId" and patient_id: the seed's exact key picks "patientId".
    await import_workflow(conn, "t1", rule)

    rule["actions"][0]["args"]["patient_ident"] = "{appointment.patientId}"
    with pytest.raises(WorkflowValidationError) as refused:
        await import_workflow(conn, "t1", rule)
    assert refused.value.field == "actions[0].args.patient_ident"
    assert "has no column 'patient_ident' for create_note (columns: id, practiceId, patientId" in refused.value.message

    del rule["actions"][0]["args"]["patient_ident"]
    rule["actions"][0]["args"]["PatientID"] = "x"
    with pytest.raises(WorkflowValidationError, match=r"actions\[0\].args.PatientID: .*could be any of 'patientId', 'patient_id'"):
        await import_workflow(conn, "t1", rule)

    update = {"name": "u", "trigger": "appointment_updated",
              "actions": [{"type": "update_record", "args": {"fields": {"visit_kind": "x"}}}]}
    with pytest.raises(WorkflowValidationError, match=r"actions\[0\].args.fields.visit_kind: public.Appointment has no column"):
        await import_workflow(conn, "t1", update)


async def test_a_column_dropped_after_import_fails_the_run_with_its_name(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        CREATE TABLE jobs (id bigserial PRIMARY KEY, org text, status text, priority text);
        CREATE TABLE tasks (id bigserial PRIMARY KEY, org text, title text, job_ref bigint);
    """)
    await watch_table(conn, "jobs", tenant_column="org", tasks_table="tasks", updatable=("status", "priority"))
    await conn.execute("ALTER TABLE tasks RENAME COLUMN job_ref TO job_id; ALTER TABLE jobs DROP COLUMN priority")
    context = {"job": {"id": 1, "org": "t1"}}
    with pytest.raises(StepError, match=r"public.tasks has no column 'jobRef' for create_task \(columns: id, org, title, job_id\)"):
        await execute(conn, "create_task", {"title": "x", "jobRef": "1"}, context, "public.jobs")
    with pytest.raises(StepError, match=r"public.jobs has no column 'priority' for update_record"):
        await execute(conn, "update_record", {"fields": {"priority": "high"}}, context, "public.jobs")
