"""A workflow's life: versions on every change, the version each run ran, one name per
tenant among active workflows, finding a workflow by id, name or uuid, export and
import of the same shape, enable/disable, delete that keeps runs readable, and
templates checked when the workflow is saved."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import asyncpg
import pytest

from actors.enriching import enrich_runs
from actors.matching import match_events
from actors.model.workflow import parse_workflow
from actors.workflows_cache import WorkflowCache
from config.errors import HeraldConfigError, WorkflowValidationError
from daemon.demo import demo_workflow, load_demo
from daemon.workflows import (
    UnknownColumns,
    delete_workflow,
    export_workflows,
    find_workflow,
    list_workflows,
    save_workflow,
    set_active,
    workflow_entries,
    workflow_history,
)

DEMO_ID = "a1e7e5e0-76ef-464f-9b65-ba941a5e5ecd"  # the demo document's own id


def with_subject(subject: str, **changes: Any) -> dict[str, Any]:
    """The demo workflow with another email subject (and other top-level changes)."""
    document = copy.deepcopy(demo_workflow())
    document["steps"][0]["config"]["subject"] = subject
    return {**document, **changes}


async def complete_job(conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache, job: int) -> Any:
    """Complete a job, match its event and enrich its runs, as the workers would; its tenant-1 run."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job)
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [event], cache)
        await enrich_runs(worker, outcome.started)
    return await conn.fetchrow("SELECT * FROM herald.runs WHERE event_id = $1", event)


# -- versions ----------------------------------------------------------------------


async def test_every_change_is_a_version_and_each_run_records_the_one_it_ran(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await load_demo(conn)
    first = await save_workflow(conn, "1", demo_workflow(), saved_by="ana@desk")
    assert (first.version, first.previous_version, first.changed) == (1, 1, False)  # the demo saved it first
    run_1 = await complete_job(conn, pool, cache, 1)
    assert run_1["workflow_version"] == 1

    second = await save_workflow(conn, "1", with_subject("Done: {{job.title}}"), saved_by="ben@desk")
    assert (second.workflow_id, second.version, second.previous_version, second.changed) == (
        first.workflow_id, 2, 1, True)
    same = await save_workflow(conn, "1", with_subject("Done: {{job.title}}"))
    assert (same.version, same.changed) == (2, False)  # saving what is there makes no version

    run_2 = await complete_job(conn, pool, cache, 2)
    assert run_2["workflow_version"] == 2
    steps = await conn.fetch("SELECT config FROM herald.steps WHERE run_id = $1 ORDER BY position", run_2["id"])
    assert steps[0]["config"]["subject"] == "Done: {{job.title}}"

    history = await workflow_history(conn, uuid.UUID(first.workflow_id))
    assert [(v["version"], v["saved_by"], v["runs"]) for v in history] == [(2, "ben@desk", 1), (1, None, 1)]
    definitions = await conn.fetch(
        "SELECT version, definition FROM herald.workflow_versions WHERE workflow_id = $1 ORDER BY version",
        uuid.UUID(first.workflow_id))
    assert definitions[0]["definition"] == demo_workflow()
    assert definitions[1]["definition"]["steps"][0]["config"]["subject"] == "Done: {{job.title}}"


async def test_a_run_renders_the_version_it_was_matched_with_whatever_is_saved_next(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await load_demo(conn)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    async with pool.acquire() as worker:
        outcome = await match_events(worker, [event], cache)
    # Saved between matching and enriching: the run still gets the version it recorded.
    await save_workflow(conn, "1", with_subject("Version two"))
    async with pool.acquire() as worker:
        await enrich_runs(worker, outcome.started)
    [run_id] = outcome.started
    assert await conn.fetchval("SELECT workflow_version FROM herald.runs WHERE id = $1", run_id) == 1
    subject = await conn.fetchval(
        "SELECT config ->> 'subject' FROM herald.steps WHERE run_id = $1 AND position = 0", run_id)
    assert subject == "Job Completed - {{job.title}}"


async def test_a_direct_update_of_the_definition_is_a_version_too(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    await conn.execute("UPDATE herald.workflows SET definition = definition || '{\"dedupe\": {\"window_s\": 0}}'"
                       " WHERE tenant_id = '1'")
    await conn.execute("UPDATE herald.workflows SET is_active = false WHERE tenant_id = '1'")  # not a version
    assert await conn.fetchval("SELECT version FROM herald.workflows WHERE tenant_id = '1'") == 2
    assert await conn.fetchval("SELECT count(*) FROM herald.workflow_versions v JOIN herald.workflows w"
                               " ON w.id = v.workflow_id WHERE w.tenant_id = '1'") == 2


# -- names and finding ---------------------------------------------------------------


async def test_two_active_workflows_of_a_tenant_cannot_share_a_name(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    twin = with_subject("Twin", id="twin")
    with pytest.raises(WorkflowValidationError) as refused:
        await save_workflow(conn, "1", twin)
    assert refused.value.field == "name"
    assert f"already has an active workflow named 'Job Completed' ('Job Completed', id {DEMO_ID})" in str(
        refused.value)
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE tenant_id = '1'") == 1
    # Another tenant may use the name; a disabled workflow does not hold it.
    await save_workflow(conn, "3", twin)
    saved = await save_workflow(conn, "1", twin, active=False)
    assert saved.is_active is False
    twin_row = await find_workflow(conn, "1", "twin")
    with pytest.raises(HeraldConfigError, match="cannot be enabled: tenant 1 already has an active workflow"):
        await set_active(conn, twin_row, True)
    demo = await find_workflow(conn, "1", DEMO_ID)
    assert await set_active(conn, demo, False) is True
    assert await set_active(conn, demo, False) is False  # already
    assert await set_active(conn, twin_row, True) is True


async def test_a_document_without_an_id_is_found_again_by_its_name(conn: asyncpg.Connection) -> None:
    document = {"name": "Hello", "trigger": "job_created", "actions": [
        {"type": "sms", "args": {"recipient": "+15550101001", "message": "hi"}}]}
    first = await save_workflow(conn, "1", document)
    again = await save_workflow(conn, "1", {**document, "actions": [
        {"type": "sms", "args": {"recipient": "+15550101001", "message": "hello"}}]})
    assert (again.workflow_id, again.version) == (first.workflow_id, 2)


async def test_a_workflow_is_found_by_its_document_id_its_name_or_its_uuid(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    await save_workflow(conn, "1", with_subject("Other", id="other", name="Other one"))
    demo_uuid = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1' AND source_id = $1",
                                    DEMO_ID)
    for ref in (DEMO_ID, "Job Completed", "job completed", str(demo_uuid), str(demo_uuid).upper()):
        assert (await find_workflow(conn, "1", ref))["id"] == demo_uuid, ref
    assert (await find_workflow(conn, "1", "other"))["name"] == "Other one"
    # Tenant 2's copy of the demo is not tenant 1's.
    other_tenants = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '2'")
    with pytest.raises(HeraldConfigError) as missing:
        await find_workflow(conn, "1", str(other_tenants), "--workflow")
    assert str(missing.value) == (
        f"--workflow '{other_tenants}': tenant 1 has no workflow with that id, name or uuid"
        f" (its workflows: 'Job Completed', id {DEMO_ID}, 'Other one', id other)")
    with pytest.raises(HeraldConfigError, match="^workflow 'Job Complete': tenant 1 has no workflow with"):
        await find_workflow(conn, "1", "Job Complete")
    with pytest.raises(HeraldConfigError, match="^workflow 'x': tenant 9 has no workflows$"):
        await find_workflow(conn, "9", "x")


# -- enable, disable, delete ----------------------------------------------------------


async def test_delete_keeps_runs_readable_refuses_runs_under_way_and_import_brings_it_back(
    conn: asyncpg.Connection, pool: asyncpg.Pool, cache: WorkflowCache
) -> None:
    await load_demo(conn)
    finished = await complete_job(conn, pool, cache, 1)
    await conn.execute("UPDATE herald.runs SET status = 'completed' WHERE id = $1", finished["id"])
    under_way = await complete_job(conn, pool, cache, 2)
    assert under_way["status"] == "running"
    workflow = await find_workflow(conn, "1", "Job Completed")

    with pytest.raises(HeraldConfigError) as refused:
        await delete_workflow(conn, workflow, force=False, by="ana")
    assert str(refused.value) == (
        f"workflow 'Job Completed', id {DEMO_ID} has 1 run under way ({under_way['id']}): disable it and let"
        " them finish, or delete it with --force to cancel them")
    deleted = await delete_workflow(conn, workflow, force=True, by="ana")
    assert (deleted.runs_kept, deleted.cancelled) == (2, [under_way["id"]])
    run = await conn.fetchrow("SELECT status, error FROM herald.runs WHERE id = $1", under_way["id"])
    assert (run["status"], run["error"]) == ("cancelled", "cancelled: the workflow was deleted by ana")
    assert await conn.fetch("SELECT status FROM herald.steps WHERE run_id = $1 AND status = 'pending'",
                            under_way["id"]) == []

    # Gone from lists, exports and lookups; the runs are still there, with their workflow.
    assert [row["tenant_id"] for row in await list_workflows(conn, None)] == ["2"]
    assert [entry["tenant_id"] for entry in await export_workflows(conn, None)] == ["2"]
    with pytest.raises(HeraldConfigError, match="was deleted .*import its document again to bring it back"):
        await find_workflow(conn, "1", "Job Completed")
    assert await conn.fetchval("SELECT count(*) FROM herald.runs r JOIN herald.workflows w"
                               " ON w.id = r.workflow_id WHERE w.tenant_id = '1'") == 2
    # A deleted workflow matches nothing.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 3")
    event = await conn.fetchval("SELECT max(id) FROM herald.events")
    async with pool.acquire() as worker:
        assert (await match_events(worker, [event], cache)).started == []

    back = await save_workflow(conn, "1", demo_workflow())
    assert (back.workflow_id, back.is_active, back.version, back.restored) == (str(workflow["id"]), True, 1, True)
    assert (await find_workflow(conn, "1", "Job Completed"))["deleted_at"] is None


# -- export and import --------------------------------------------------------------------


async def test_export_is_what_import_reads_keeping_the_active_flag(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    await save_workflow(conn, "1", with_subject("Quiet", id="quiet", name="Quiet"), active=False)
    exported = await export_workflows(conn, "1")
    assert [(e["name"], e["is_active"], e["version"], e["source_id"]) for e in exported] == [
        ("Job Completed", True, 1, DEMO_ID), ("Quiet", False, 1, "quiet")]

    entries = workflow_entries("backup.json", exported)
    assert [(e.label, e.is_active, e.tenant_id) for e in entries] == [
        ("backup.json[0]", True, "1"), ("backup.json[1]", False, "1")]
    for entry in entries:
        await save_workflow(conn, "5", entry.document, active=entry.is_active)
    copied = await export_workflows(conn, "5")
    assert [(e["definition"], e["is_active"]) for e in copied] == [(e["definition"], e["is_active"]) for e in exported]
    # The same shapes, read back: a single document, an array of them, and {"workflows": [...]}.
    assert [e.document for e in workflow_entries("one.json", demo_workflow())] == [demo_workflow()]
    assert len(workflow_entries("two.json", [demo_workflow(), demo_workflow()])) == 2
    assert [e.is_active for e in workflow_entries("w.json", {"workflows": exported})] == [True, False]
    with pytest.raises(HeraldConfigError, match=r"^w.json\[0\].is_active: must be true or false$"):
        workflow_entries("w.json", [{"definition": demo_workflow(), "is_active": "yes"}])


# -- checks when saving ------------------------------------------------------------------------


async def test_templates_reading_missing_columns_are_refused_unless_forced(conn: asyncpg.Connection) -> None:
    await load_demo(conn)
    typo = with_subject("Done: {{ job.titel }}", id="typo", name="Typo")
    with pytest.raises(UnknownColumns) as refused:
        await save_workflow(conn, "1", typo)
    assert str(refused.value) == (
        "steps[0].config.subject: job has no column 'titel' (public.jobs) (--force saves it anyway)")
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE source_id = 'typo'") == 0
    forced = await save_workflow(conn, "1", typo, force=True)
    assert forced.warnings == ["steps[0].config.subject: job has no column 'titel' (public.jobs)"]


@pytest.mark.parametrize(("document", "message"), [
    ({"name": "x", "trigger_type": "job_completed", "steps": [{"type": "action", "config": {
        "actionType": "email", "recipient": "{{client.email}}", "message": "hi", "subject": "Hi {{ job.title"}}]},
     "steps[0].config.subject: template syntax error at line 1: unexpected end of template,"
     " expected 'end of print statement'"),
    ({"name": "x", "trigger_type": "job_completed", "steps": [{"type": "action", "config": {
        "actionType": "sms", "recipient": "{{client.phone}}",
        "message": "Dear {{ client.firstName }},\n{% if job.title %}done{% endfor %}"}}]},
     "steps[0].config.message: template syntax error at line 2: Encountered unknown tag 'endfor'"),
    ({"name": "x", "trigger": "job_completed", "actions": [{"type": "email", "args": {
        "recipient": "{client.email}", "subject": "Hi {job.title}", "body": "{{ job.title | shout }}"}}]},
     "actions[0].args.body: template syntax error at line 1: No filter named 'shout'"),
], ids=["unclosed", "wrong-end-tag", "unknown-filter"])
def test_template_syntax_errors_are_refused_naming_the_field_and_line(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(WorkflowValidationError) as refused:
        parse_workflow(document)
    assert str(refused.value).startswith(message), str(refused.value)


def test_single_brace_templates_are_checked_as_they_are_rendered() -> None:
    fine = {"name": "x", "trigger": "job_completed", "actions": [{"type": "email", "args": {
        "recipient": "{client.email}", "subject": "Job {job.title} done", "body": "Price: {not a template}"}}]}
    spec = parse_workflow(fine)
    assert spec.steps[0].config["subject"] == "Job {{job.title}} done"
