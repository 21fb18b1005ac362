"""`herald test` (workflow test files) and `herald workflows test` (a dry run on a real record).

The runner's functions are called in-process; the command line runs as a
subprocess for what only it does (output, exit codes, JUnit XML). The dry
run works on the demo app in real PostgreSQL and must leave it as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actors.model.workflow import parse_workflow
from config.errors import HeraldConfigError
from config.settings import Settings
from daemon.capture import Relation, watch_table
from daemon.demo import demo_workflow, load_demo
from daemon.dry_run import (
    FAILED,
    NOT_RUN,
    OK,
    WAITING,
    Change,
    dry_run,
    stored_workflow,
)
from daemon.workflow_tests import TestFileError, discover, load_test_file, run_test_file
from tests.conftest import REPO

EXAMPLE = REPO / "config" / "examples" / "job-completed.test.json"

JOB_WORKFLOW = {
    "name": "Job done", "trigger_type": "job_completed",
    "steps": [
        {"id": "mail", "type": "action", "config": {
            "actionType": "email", "recipient": "{{client.email}}", "subject": "Done: {{job.title}}",
            "message": "Hi {{client.firstName}} {{client.lastName}},\nthanks."}},
        {"id": "text", "type": "action", "config": {
            "actionType": "sms", "recipient": "{{client.phone}}", "message": "{{job.title}} is done"}},
    ],
}

CLIENT = {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com", "phone": "+15550101001"}
DEFAULTS = {"tenant": "1", "record": {"id": 7, "title": "Fix sink", "status": "completed"},
            "changes": {"status": {"from": "scheduled", "to": "completed"}}, "related": {"client": CLIENT}}


def write_tests(directory: Path, cases: list[dict[str, Any]], workflow: dict[str, Any] | None = None,
                name: str = "job", defaults: dict[str, Any] | None = None) -> Path:
    (directory / f"{name}.workflow.json").write_text(json.dumps(workflow or JOB_WORKFLOW))
    path = directory / f"{name}.test.json"
    path.write_text(json.dumps({"workflow": f"{name}.workflow.json",
                                "defaults": DEFAULTS if defaults is None else defaults, "cases": cases}))
    return path


def herald(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=cwd or REPO, env=env or base,
                          capture_output=True, text=True, timeout=120)


GOOD = {"name": "emails and texts", "event": {}, "expect": {"steps": {
    "mail": {"recipient": "ann@example.com", "subject": "Done: Fix sink", "body": {"contains": ["Hi Ann Lee", "thanks"]}},
    "text": {"body": "Fix sink is done"}}}}
WRONG = {"name": "wrong subject and body", "event": {}, "expect": {"steps": {
    "mail": {"subject": "Completed: Fix sink", "body": {"contains": "Dear Ann"}}}}}


# -- test files, no database ----------------------------------------------------


async def test_the_example_test_file_passes() -> None:
    result = await run_test_file(EXAMPLE)
    assert result.error is None
    assert [(case.name, case.passed) for case in result.cases] == [
        ("a completed job emails and texts the client", True),
        ("a job scheduled is not completed", True),
        ("a new title on a completed job sends nothing", True),
        ("a job created completed is no status change", True),
    ]
    sent = result.cases[0]
    assert sent.matched and sent.reason == "trigger job_status_changed; new.status equals 'completed'"
    assert [(s.key, s.status, s.result["recipient"]) for s in sent.steps] == [
        ("step-1", OK, "maria.lopez@example.com"), ("step-2", OK, "+15550101001")]
    assert sent.steps[0].result["subject"] == "Job Completed - Replace kitchen faucet"

    done = herald("test", "config/examples")  # every example test file, the CRM rule's too
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "PASS config/examples/job-completed.test.json::a completed job emails and texts the client" in lines
    assert all(line.startswith("PASS config/examples/") for line in lines[:-1])
    assert lines[-1].startswith("7 passed in ") and lines[-1].endswith("s")


async def test_a_step_that_starts_with_a_failing_one_still_runs_and_the_steps_after_do_not(tmp_path: Path) -> None:
    # As on a worker: the SMS started together with the email, so the email's failure does
    # not stop it; the note after the two does not run.
    steps = [*JOB_WORKFLOW["steps"], {"id": "note", "type": "action", "config": {
        "actionType": "webhook", "url": "https://hooks.example.com/done"}}]
    steps[1] = {**steps[1], "with_previous": True}
    path = write_tests(tmp_path, [{"name": "no last name", "event": {"related": {"client": {
        "first_name": "Ann", "email": "ann@example.com", "phone": "+15550101001"}}}}],
        workflow={**JOB_WORKFLOW, "steps": steps})
    [case] = (await run_test_file(path)).cases
    assert [(s.key, s.status) for s in case.steps] == [("mail", FAILED), ("text", OK), ("note", NOT_RUN)]


async def test_a_failing_case_shows_expected_against_got_per_field(tmp_path: Path) -> None:
    path = write_tests(tmp_path, [GOOD, WRONG])
    result = await run_test_file(path)
    good, wrong = result.cases
    assert good.passed and not good.mismatches
    assert not wrong.passed
    assert [(m.where, m.expected, m.got, m.how) for m in wrong.mismatches] == [
        ("mail (email) subject", "Completed: Fix sink", "Done: Fix sink", "equal"),
        ("mail (email) body", "Dear Ann", "Hi Ann Lee,\nthanks.", "contain"),
    ]

    done = herald("test", str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.splitlines()[:8] == [
        f"PASS {path}::emails and texts",
        f"FAIL {path}::wrong subject and body",
        "    mail (email) subject:",
        "      expected: 'Completed: Fix sink'",
        "      got:      'Done: Fix sink'",
        "    mail (email) body:",
        "      expected to contain: 'Dear Ann'",
        "      got:                 'Hi Ann Lee,\\nthanks.'",
    ]
    assert done.stdout.splitlines()[-1].startswith("1 passed, 1 failed in ")


async def test_a_multi_line_body_differs_as_a_diff(tmp_path: Path) -> None:
    path = write_tests(tmp_path, [{"name": "body", "event": {}, "expect": {"steps": {
        "mail": {"body": "Hello Ann Lee,\nthanks."}}}}])
    done = herald("test", str(path))
    assert done.returncode == 1
    assert "\n".join(["      --- expected", "      +++ got", "      @@ -1,2 +1,2 @@", "      -Hello Ann Lee,",
                      "      +Hi Ann Lee,", "       thanks."]) in done.stdout


async def test_a_non_match_is_checked_with_its_reason(tmp_path: Path) -> None:
    cancelled = {"changes": {"status": {"from": "completed", "to": "cancelled"}}}
    path = write_tests(tmp_path, [
        {"name": "cancelled", "event": cancelled,
         "expect": {"matched": False, "reason": "status changed to 'cancelled', not 'completed'"}},
        {"name": "wrong reason", "event": cancelled, "expect": {"matched": False, "reason": "did not change"}},
        {"name": "expected to match", "event": cancelled},
        {"name": "expected not to match", "event": {}, "expect": {"matched": False}},
        {"name": "an insert", "event": {"operation": "insert"},  # the defaults' changes are an update's
         "expect": {"matched": False, "reason": "needs a UPDATE, the event is a INSERT"}},
        {"name": "by hand", "event": {"trigger": "job_completed"}, "expect": {"reason": "trigger job_completed"}},
    ])
    result = await run_test_file(path)
    assert [case.passed for case in result.cases] == [True, False, False, False, True, True]
    assert result.cases[0].steps == []  # nothing rendered for a non-match
    [reason] = result.cases[1].mismatches
    assert (reason.where, reason.expected, reason.got) == (
        "match reason", "did not change", "trigger job_completed: status changed to 'cancelled', not 'completed'")
    [match] = result.cases[2].mismatches
    assert (match.where, match.expected, match.got) == (
        "match", "matched", "not matched: trigger job_completed: status changed to 'cancelled', not 'completed'")
    assert result.cases[3].mismatches[0].got == "matched: trigger job_completed; no conditions"


async def test_a_template_error_fails_its_case_with_the_reason(tmp_path: Path) -> None:
    no_last_name = {"related": {"client": {"first_name": "Ann", "email": "ann@example.com", "phone": "+15550101001"}}}
    path = write_tests(tmp_path, [
        {"name": "no last name", "event": no_last_name, "expect": {"steps": {"text": {"body": "Fix sink is done"}}}},
        {"name": "expected to fail", "event": no_last_name,
         "expect": {"steps": {"mail": {"error": "client.lastName is undefined"}}}},
        {"name": "expected to fail but works", "event": {},
         "expect": {"steps": {"mail": {"error": "client.lastName is undefined"}}}},
        GOOD,
    ], workflow={**JOB_WORKFLOW, "steps": [*JOB_WORKFLOW["steps"][:1], {"id": "text", "type": "action", "config": {
        "actionType": "sms", "recipient": "{{client.phone}}", "message": "{{job.title}} is done"}}]})
    result = await run_test_file(path)
    missing, expected, works, good = result.cases
    assert [(s.key, s.status) for s in missing.steps] == [("mail", FAILED), ("text", NOT_RUN)]
    assert [(m.where, m.got) for m in missing.mismatches] == [
        ("mail (email)", "failed: message: undefined template variable: client.lastName is undefined"),
        ("text (sms)", "not run: an earlier step failed")]
    assert expected.passed
    assert (works.mismatches[0].expected, works.mismatches[0].got) == (
        "to fail with 'client.lastName is undefined'", "the step succeeded")
    assert good.passed

    # The renderer's limits apply as on a worker: the case fails with the reason, the run goes on.
    greedy = {**JOB_WORKFLOW, "steps": [{"id": "mail", "type": "action", "config": {
        "actionType": "email", "recipient": "{{client.email}}", "subject": "Hi",
        "message": "{% for i in range(100000) %}x{% endfor %}"}}]}
    path = write_tests(tmp_path, [{"name": "greedy", "event": {}}, {"name": "again", "event": {}}], greedy, "greedy")
    done = herald("test", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"FAIL {path}::greedy", "    mail (email):",
        "      expected to succeed, got: failed: template for message asks range() for more than 10,000 numbers",
        f"FAIL {path}::again", "    mail (email):",
        "      expected to succeed, got: failed: template for message asks range() for more than 10,000 numbers",
        done.stdout.splitlines()[-1]]
    assert done.stdout.splitlines()[-1].startswith("2 failed in ")


async def test_records_webhooks_drafts_and_delays_without_a_database(tmp_path: Path) -> None:
    workflow = {"name": "All", "trigger": "crm/appointment.created", "actions": [
        {"id": "note", "type": "create_note", "args": {"patientId": "{appointment.patientId}", "content": "Booked"}},
        {"id": "wait", "type": "delay", "args": {"until": "{{appointment.starts_at}}", "offset": "-1d"}},
        {"id": "pause", "type": "delay", "args": {"duration": "2h"}},
        {"id": "draft", "type": "draft_email", "args": {"subject": "See you", "body": "Hi {patient.firstName}"}},
        {"id": "hook", "type": "webhook", "args": {"url": "https://hooks.example.com/a",
                                                   "payload": {"who": "{{patient.first_name}}", "n": 3}}},
        {"id": "mark", "type": "update_record", "args": {"fields": {"notes": "reminded {{patient.first_name}}"}}},
    ]}
    event = {"record": {"id": 3, "patientId": 9, "starts_at": "2024-05-10T15:00:00+00:00"},
             "related": {"patient": {"first_name": "Bo", "email": "bo@example.com"}}, "at": "2024-05-01T09:00:00Z"}
    path = write_tests(tmp_path, [
        {"name": "everything", "event": event, "expect": {"steps": {
            "note": {"row": {"patientId": "9", "content": "Booked"}},
            "wait": {"until": "2024-05-09T15:00:00Z", "wait": "8d 6h"},
            "pause": {"wait": "2h"},
            "draft": {"recipient": "bo@example.com", "subject": "See you", "body": "Hi Bo"},
            "hook": {"url": "https://hooks.example.com/a", "payload": {"who": "Bo", "n": 3}},
            "mark": {"fields": {"notes": "reminded Bo"}}}}},
        {"name": "late", "event": {**event, "at": "2024-05-10T09:00:00Z"}, "expect": {"steps": {
            "wait": {"wait": "1d"}, "note": {"row": {"content": "Cancelled"}}}}},
    ], workflow, "crm", defaults={})
    everything, late = (await run_test_file(path)).cases
    assert everything.passed, everything.mismatches
    assert [s.status for s in everything.steps] == [OK, WAITING, WAITING, OK, OK, OK]
    assert everything.steps[0].result == {"preview": True, "table": None, "row": {"patientId": "9", "content": "Booked"}}
    assert [(m.where, m.expected, m.got) for m in late.mismatches] == [
        ("note (create_note) row.content", "Cancelled", "Booked"),
        ("wait (delay) wait", dt.timedelta(days=1), "no wait (the time has passed)")]


async def test_a_webhook_url_is_judged_as_a_send_would_judge_it(tmp_path: Path) -> None:
    hook = {"name": "Hook", "trigger_type": "job_completed", "steps": [{"id": "hook", "type": "action", "config": {
        "actionType": "webhook", "url": "http://127.0.0.1:9/hook"}}]}
    path = write_tests(tmp_path, [{"name": "local", "event": {}, "expect": {"steps": {
        "hook": {"url": "http://127.0.0.1:9/hook", "payload": {"event": {"type": "job.updated"}, "new": {"id": 7}}}}}}],
        hook, "hook")
    [refused] = (await run_test_file(path)).cases
    assert refused.mismatches[0].got == ("failed: webhook to 127.0.0.1 refused: loopback address;"
                                         " set HERALD_WEBHOOK_ALLOW_PRIVATE=true to allow")
    allowed = Settings(database_url="", redis_url="", webhook_allow_private=True)
    [passed] = (await run_test_file(path, settings=allowed)).cases
    assert passed.passed, passed.mismatches


@pytest.mark.parametrize(("document", "field", "words"), [
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}}}], "extra": 1},
     "extra", "unknown key"),
    ({"workflow": "job.workflow.json", "cases": []}, "cases", "non-empty list"),
    ({"workflow": "nope.workflow.json", "cases": [{"name": "a", "event": {"record": {}}}]}, "workflow",
     "No such file"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}, "changes": {"status": [1, 2]}}}]},
     "cases[0].event.changes.status", 'must be {"from": OLD, "to": NEW}'),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}, "operation": "upsert"}}]},
     "cases[0].event.operation", "must be one of insert, update, delete"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"operation": "update"}}]},
     "cases[0].event.record", "missing"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}, "operation": "update"}}]},
     "cases[0].event.changes", "an update needs the columns it changes"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}}},
                                                {"name": "a", "event": {"record": {}}}]},
     "cases[1].name", "another case is named 'a'"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}},
                                                 "expect": {"steps": {"step-9": {}}}}]},
     "cases[0].expect.steps.step-9", "the workflow has no step 'step-9' (steps: mail, text)"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}},
                                                 "expect": {"steps": {"text": {"subject": "x"}}}}]},
     "cases[0].expect.steps.text.subject", "unknown key (expected one of: body, error, recipient)"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}},
                                                 "expect": {"matched": False, "steps": {"text": {}}}}]},
     "cases[0].expect.steps", "a case that expects no match runs no steps"),
    ({"workflow": "job.workflow.json", "cases": [{"name": "a", "event": {"record": {}},
                                                 "expect": {"steps": {"text": {"body": {"has": "x"}}}}}]},
     "cases[0].expect.steps.text.body", 'must be the exact text, or {"contains"'),
    ({"workflow": "job.workflow.json", "defaults": {"at": "yesterday"}, "cases": [{"name": "a", "event": {"record": {}}}]},
     "defaults.at", "not an ISO time"),
    ({"workflow": "bad.workflow.json", "cases": [{"name": "a", "event": {"record": {}}}]}, "workflow",
     "is an invalid workflow: steps[0].config.actionType: unknown action 'fax'"),
])
def test_an_invalid_test_file_names_the_field_at_fault(
    tmp_path: Path, document: dict[str, Any], field: str, words: str,
) -> None:
    (tmp_path / "job.workflow.json").write_text(json.dumps(JOB_WORKFLOW))
    (tmp_path / "bad.workflow.json").write_text(json.dumps(
        {"name": "x", "trigger_type": "job_completed", "steps": [{"config": {"actionType": "fax"}}]}))
    path = tmp_path / "x.test.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TestFileError) as raised:
        load_test_file(path)
    assert raised.value.field == field
    assert words in raised.value.message


async def test_an_invalid_test_file_exits_2_and_the_others_still_run(tmp_path: Path) -> None:
    write_tests(tmp_path, [GOOD])
    (tmp_path / "broken.test.json").write_text('{"workflow": "job.workflow.json", "cases": [')
    syntax = {**JOB_WORKFLOW, "steps": [{"id": "mail", "type": "action", "config": {
        "actionType": "email", "recipient": "{{client.email}}", "subject": "{{ job.title ", "message": "x"}}]}
    write_tests(tmp_path, [GOOD], syntax, "syntax")
    done = herald("test", str(tmp_path))
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        f"ERROR {tmp_path}/broken.test.json: invalid: not valid JSON (line 1: Expecting value)",
        f"PASS {tmp_path}/job.test.json::emails and texts",
    ]
    assert lines[2].startswith(f"ERROR {tmp_path}/syntax.test.json: invalid: workflow: {tmp_path}/syntax.workflow.json"
                               " is an invalid workflow: steps[0].config.subject: template syntax error at line 1")
    assert lines[3].startswith("1 passed, 2 errors in ")


def test_exit_codes_and_what_is_found(tmp_path: Path) -> None:
    nested = tmp_path / "flows" / "jobs"
    nested.mkdir(parents=True)
    hidden = tmp_path / ".hidden"
    hidden.mkdir()
    write_tests(nested, [GOOD])
    write_tests(hidden, [WRONG])
    assert discover([tmp_path]) == [nested / "job.test.json"]
    assert discover([tmp_path, nested / "job.test.json"]) == [nested / "job.test.json"]

    assert herald("test", cwd=tmp_path).returncode == 0  # the current directory by default
    assert herald("test", str(hidden / "job.test.json")).returncode == 1  # a file as given
    selected = herald("test", str(tmp_path), "-k", "nothing like it")
    assert (selected.returncode, selected.stdout.strip()[:15]) == (5, "no tests ran in")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert herald("test", str(empty)).returncode == 5
    missing = herald("test", str(tmp_path / "nope"))
    assert (missing.returncode, missing.stderr) == (1, f"herald: {tmp_path}/nope: no such file or directory\n")


async def test_junit_xml_for_ci(tmp_path: Path) -> None:
    write_tests(tmp_path, [GOOD, WRONG])
    (tmp_path / "bad.test.json").write_text(json.dumps({"workflow": "job.workflow.json", "cases": [{"name": "x"}]}))
    report = tmp_path / "out" / "junit.xml"
    report.parent.mkdir()
    done = herald("test", str(tmp_path), "--junit-xml", str(report))
    assert done.returncode == 2
    root = ET.fromstring(report.read_text())
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    bad, job = root.findall("testsuite")
    [error] = bad.findall("testcase/error")
    assert error.get("message") == "cases[0].event: missing: the event the case is about"
    cases = job.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        (f"{tmp_path}/job.test.json", "emails and texts"), (f"{tmp_path}/job.test.json", "wrong subject and body")]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "mail (email) subject: expected 'Completed: Fix sink', got 'Done: Fix sink'"
    assert "expected to contain: 'Dear Ann'" in (failure.text or "")


# -- with a database ---------------------------------------------------------------

TASKS = """
CREATE TABLE tasks (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, organization_id bigint NOT NULL,
                    title text NOT NULL, job_id bigint, due_at timestamptz);
"""


async def counts(conn: asyncpg.Connection) -> dict[str, Any]:
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in
            ("herald.events", "herald.runs", "herald.steps", "herald.messages", "tasks")} | {
        "job 1": dict(await conn.fetchrow("SELECT status, title, updated_at FROM jobs WHERE id = 1"))}


@pytest.fixture
async def demo(conn: asyncpg.Connection) -> asyncpg.Connection:
    await load_demo(conn)
    await conn.execute(TASKS)
    await watch_table(conn, "jobs", tenant_column="organization_id", tasks_table="tasks", updatable=("status",),
                      relations=(Relation("client", "clients", "client_id"),
                                 Relation("organization", "organizations", "organization_id")))
    return conn


async def test_the_dry_run_of_demo_job_1_completing_renders_and_changes_nothing(demo: asyncpg.Connection) -> None:
    before = await counts(demo)
    result = await dry_run(demo, parse_workflow(demo_workflow()), "1", "jobs", "1",
                           [Change.parse("status=in_progress:completed")])
    assert result.matched and result.ok
    assert result.reason == "trigger job_status_changed; new.status equals 'completed'"
    assert (result.event["operation"], result.event["type"], result.event["old"]["status"],
            result.event["new"]["status"]) == ("UPDATE", "job.updated", "in_progress", "completed")
    assert result.context["client"]["email"] == "maria.lopez@example.com"
    assert result.context["organization"]["name"] == "Northwind Plumbing"
    email, sms = result.steps
    assert email.result == {"preview": True, "channel": "email", "recipient": "maria.lopez@example.com",
                            "subject": "Job Completed - Replace kitchen faucet",
                            "body": "Dear Maria,\n\nYour job has been completed."}
    assert (sms.result["recipient"], sms.result["body"]) == (
        "+15550101001", "Job Replace kitchen faucet completed. Thank you!")
    assert await counts(demo) == before
    assert not demo.is_in_transaction()


async def test_the_dry_run_of_an_insert_and_its_refusals(demo: asyncpg.Connection) -> None:
    spec = parse_workflow(demo_workflow())
    insert = await dry_run(demo, spec, "1", "jobs", "1")
    assert (insert.matched, insert.ok, insert.steps) == (False, False, [])
    assert insert.reason == "trigger job_status_changed needs a UPDATE, the event is a INSERT"
    for args, words in [
        (("2", "jobs", "1", ()), "public.jobs 1 belongs to tenant 1, not 2"),
        (("1", "jobs", "99", ()), "public.jobs has no row id = '99'"),
        (("1", "jobs", "x", ()), "not an id of public.jobs"),
        (("1", "tasks", "1", ()), "Herald does not watch public.tasks"),
        (("1", "jobs", "1", [Change.parse("stat=a:b")]), "--change stat: public.jobs has no such column"),
        (("1", "jobs", "1", [Change.parse("status=done:done")]), "the old and new values are the same"),
    ]:
        with pytest.raises(HeraldConfigError, match=words):
            await dry_run(demo, spec, *args)  # type: ignore[arg-type]
    assert not demo.is_in_transaction()


def test_change_values_with_colons_are_quoted() -> None:
    assert Change.parse("status=in_progress:completed") == Change("status", "in_progress", "completed")
    change = Change.parse('scheduled_at="2024-05-01T09:00":"2024-05-02T09:00"')
    assert (change.old, change.new) == ("2024-05-01T09:00", "2024-05-02T09:00")
    assert Change.parse("note=:later").old == ""
    with pytest.raises(HeraldConfigError, match="must look like COLUMN=OLD:NEW"):
        Change.parse("status")


async def test_the_dry_run_loads_relations_as_enrich_does(demo: asyncpg.Connection) -> None:
    """A related row of another tenant stays out of the context and fails the step that needs it."""
    await demo.execute("UPDATE jobs SET client_id = 4 WHERE id = 1")  # Tom, of tenant 2
    before = await counts(demo)
    result = await dry_run(demo, parse_workflow(demo_workflow()), "1", "jobs", "1",
                           [Change.parse("status=in_progress:completed")])
    assert result.context["client"] is None
    assert result.refused == {"client": "client 4 belongs to another tenant"}
    assert [(s.status, s.error) for s in result.steps] == [
        (FAILED, "relation client not loaded: client 4 belongs to another tenant"), (NOT_RUN, None)]
    assert not result.ok
    assert await counts(demo) == before


async def test_the_dry_run_names_a_related_table_it_cannot_read_and_loads_the_others(
        demo: asyncpg.Connection) -> None:
    """The relations are read in one query; one table changed under Herald fails only
    the steps that need it, and the others' rows are still in the context."""
    await demo.execute("ALTER TABLE organizations RENAME COLUMN id TO org_no")
    result = await dry_run(demo, parse_workflow(demo_workflow()), "1", "jobs", "1",
                           [Change.parse("status=in_progress:completed")])
    assert result.context["client"]["email"] == "maria.lopez@example.com"
    assert result.context["organization"] is None
    assert result.refused["organization"].startswith("public.organizations cannot be read by id:")
    assert not demo.is_in_transaction()


RECORDS_WORKFLOW = {"name": "Follow up", "trigger_type": "job_completed", "steps": [
    {"id": "task", "type": "action", "config": {"actionType": "create_task", "title": "Call {{client.firstName}}",
                                                  "jobId": "{{job.id}}"}},
    {"id": "close", "type": "action", "config": {"actionType": "update_record", "fields": {"status": "cancelled"}}},
    {"id": "later", "type": "delay", "config": {"duration": "1d"}},
]}


async def test_records_are_computed_from_the_real_tables_and_never_written(demo: asyncpg.Connection) -> None:
    before = await counts(demo)
    result = await dry_run(demo, parse_workflow(RECORDS_WORKFLOW), "1", "jobs", "1",
                           [Change.parse("status=in_progress:completed")])
    task, close, later = result.steps
    assert task.result == {"preview": True, "table": "public.tasks", "filled": {},
                           "row": {"title": "Call Maria", "job_id": "1", "organization_id": "1"}}
    assert close.result["fields"] == {"status": "cancelled"}
    assert close.result["filled"] == {}
    assert later.status == WAITING
    assert (later.until - dt.datetime.fromisoformat(result.event["created_at"])).total_seconds() == 86400

    # What the database would refuse, the preview refuses too, without writing.
    refused = {**RECORDS_WORKFLOW, "steps": [
        {"id": "task", "type": "action", "config": {"actionType": "create_task", "title": "x", "due_at": "soon"}}]}
    bad_type = await dry_run(demo, parse_workflow(refused), "1", "jobs", "1", [Change.parse("status=in_progress:completed")])
    assert bad_type.steps[0].status == FAILED
    assert bad_type.steps[0].error.startswith("public.tasks would refuse the row: invalid input syntax for type timestamp")
    not_allowed = {**RECORDS_WORKFLOW, "steps": [
        {"id": "close", "type": "action", "config": {"actionType": "update_record", "fields": {"title": "x"}}}]}
    [step] = (await dry_run(demo, parse_workflow(not_allowed), "1", "jobs", "1", [Change.parse("status=in_progress:completed")])).steps
    assert step.error == "update_record may not change 'title' on public.jobs (allowed: status; see `herald watch public.jobs --updatable`)"
    assert await counts(demo) == before


async def test_test_files_can_read_the_tables_from_the_database(demo: asyncpg.Connection, tmp_path: Path) -> None:
    path = write_tests(tmp_path, [
        {"name": "task", "event": {}, "expect": {"steps": {
            "task": {"table": "public.tasks", "row": {"title": "Call Ann", "job_id": 7, "organization_id": "1"}},
            "close": {"fields": {"status": "cancelled"}}}}},
    ], RECORDS_WORKFLOW)
    before = await counts(demo)
    without = (await run_test_file(path)).cases[0]
    assert [m.where for m in without.mismatches] == ["task (create_task) table", "task (create_task) row.organization_id"]
    with_database = (await run_test_file(path, conn=demo)).cases[0]
    assert with_database.passed, with_database.mismatches
    assert await counts(demo) == before


async def test_a_stored_workflow_by_its_id_name_or_uuid(demo: asyncpg.Connection) -> None:
    workflow_id = await demo.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    for reference in (str(workflow_id), "Job Completed", "a1e7e5e0-76ef-464f-9b65-ba941a5e5ecd"):
        assert (await stored_workflow(demo, reference, "1"))["name"] == "Job Completed"
    with pytest.raises(HeraldConfigError, match="WORKFLOW 'job-finished': tenant 1 has no workflow with that id"):
        await stored_workflow(demo, "job-finished", "1")


async def test_herald_workflows_test_prints_the_dry_run(demo: asyncpg.Connection, db_url: str, redis_url: str,
                                                        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")} | {
        "HERALD_DATABASE_URL": db_url, "HERALD_REDIS_URL": redis_url, "HERALD_DATA_DIR": str(tmp_path / "unused")}
    workflow_id = await demo.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    before = await counts(demo)
    done = herald("workflows", "test", "config/examples/job-completed.workflow.json", "--tenant", "1",
                  "--record", "jobs:1", "--change", "status=in_progress:completed", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "workflow: Job Completed (config/examples/job-completed.workflow.json)",
        'event: job 1 of tenant 1: update (job.updated); status: "in_progress" -> "completed"',
        "match: matched: trigger job_status_changed; new.status equals 'completed'",
    ]
    assert lines[3] == "context:"
    assert any(line.startswith('  client: {"created_at": ') and '"first_name": "Maria"' in line for line in lines)
    start = lines.index("step 1 step-1 (email): would send")
    assert lines[start:start + 9] == [
        "step 1 step-1 (email): would send",
        "    recipient: maria.lopez@example.com",
        "    subject: Job Completed - Replace kitchen faucet",
        "    body: |",
        "      Dear Maria,",
        "      ",
        "      Your job has been completed.",
        "step 2 step-2 (sms): would send",
        "    recipient: +15550101001",
    ]
    assert lines[-1] == "nothing was sent or written (dry run)"

    stored = herald("workflows", "test", str(workflow_id), "--tenant", "1", "--record", "jobs:1", "--json", env=env)
    assert stored.returncode == 1, stored.stderr  # an insert does not match a status change
    report = json.loads(stored.stdout)
    assert (report["matched"], report["steps"], report["event"]["operation"]) == (False, [], "INSERT")

    other = herald("workflows", "test", "Job Completed", "--tenant", "2", "--record", "jobs:1", env=env)
    assert (other.returncode, other.stderr) == (1, "herald: public.jobs 1 belongs to tenant 1, not 2\n")
    bad = herald("workflows", "test", "config/examples/job-completed.workflow.json", "--tenant", "1",
                 "--record", "jobs", env=env)
    assert (bad.returncode, bad.stderr) == (1, "herald: --record 'jobs' must look like TABLE:ID, e.g. jobs:1\n")
    assert await counts(demo) == before
