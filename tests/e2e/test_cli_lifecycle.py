"""The workflow lifecycle through the real `herald` command, against the test's database
(and, where runs must happen, a real daemon and Dramatiq worker): a newcomer's typo
refused, forced, failing, fixed and retried into a delivered message; `herald trigger`
saying what became of its event; list, show, history, enable, disable, delete; export
read back by import; and the retry command's answers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.demo import load_demo
from tests.conftest import wait_until
from tests.e2e.conftest import Processes

DEMO_ID = "a1e7e5e0-76ef-464f-9b65-ba941a5e5ecd"


@pytest.fixture
def herald(herald_env: dict[str, str]) -> Any:
    """The `herald` command as a person runs it, on the test's database and Redis."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", *args], env=herald_env, capture_output=True,
                              text=True, timeout=120)

    return run


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def job_done(subject: str) -> dict[str, Any]:
    return {"id": "job-done", "name": "Job done", "trigger_type": "job_status_changed",
            "trigger_conditions": {"new_status": "completed"},
            "steps": [{"id": "email", "type": "action", "config": {
                "actionType": "email", "recipient": "{{client.email}}", "subject": subject,
                "message": "Dear {{client.firstName}}, all done."}}]}


def write(path: Path, content: Any) -> str:
    path.write_text(json.dumps(content))
    return str(path)


async def test_a_newcomer_fixes_a_typo_and_retries_the_run_into_a_delivered_message(
    conn: asyncpg.Connection, processes: Processes, herald: Any, tmp_path: Path
) -> None:
    await load_demo(conn)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    disabled = herald("workflows", "disable", "Job Completed", "--tenant", "1")
    assert disabled.returncode == 0 and "disabled" in disabled.stdout, shown(disabled)

    # The newcomer writes the workflow and its test file next to it; `herald test` passes.
    workflow = tmp_path / "job-done.workflow.json"
    write(workflow, job_done("Done: {{ job.title }}"))
    write(tmp_path / "job-done.test.json", {
        "workflow": "job-done.workflow.json",
        "defaults": {"tenant": "1", "record": {"id": 1, "title": "Replace kitchen faucet", "status": "completed"},
                     "related": {"client": {"first_name": "Maria", "email": "maria.lopez@example.com"}}},
        "cases": [
            {"name": "a completed job emails the client",
             "event": {"changes": {"status": {"from": "in_progress", "to": "completed"}}},
             "expect": {"steps": {"email": {"recipient": "maria.lopez@example.com",
                                            "subject": "Done: Replace kitchen faucet",
                                            "body": {"contains": "Dear Maria"}}}}},
            {"name": "a scheduled job sends nothing",
             "event": {"record": {"status": "scheduled"}, "changes": {"status": {"from": "new", "to": "scheduled"}}},
             "expect": {"matched": False, "reason": "was 'scheduled'"}}]})
    tested = herald("test", str(tmp_path))
    assert tested.returncode == 0 and tested.stdout.splitlines()[-1].startswith("2 passed"), shown(tested)
    # An edit slips in a typo: the test file catches it...
    typo = write(workflow, job_done("Done: {{ job.titel }}"))
    caught = herald("test", str(tmp_path))
    assert caught.returncode == 1 and "job.titel" in caught.stdout, shown(caught)
    assert "FAIL" in caught.stdout and "1 passed, 1 failed" in caught.stdout
    # ...and so does import; forced in anyway, it fails every run until fixed.
    refused = herald("workflows", "import", typo, "--tenant", "1")
    assert refused.returncode == 2, shown(refused)
    assert refused.stderr == (f"{typo}: refused: steps[0].config.subject: job has no column 'titel' (public.jobs)"
                              " (--force saves it anyway)\n")
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE source_id = 'job-done'") == 0
    forced = herald("workflows", "import", typo, "--tenant", "1", "--force")
    assert forced.returncode == 0 and "('Job done', version 1, new)" in forced.stdout, shown(forced)
    assert "warning: steps[0].config.subject: job has no column 'titel'" in forced.stderr

    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")

    async def failed() -> Any:
        return await conn.fetchrow("SELECT id, error FROM herald.runs WHERE status = 'failed'")

    run = await wait_until(failed, timeout=30, message="the run to fail on the typo")
    assert "job.titel is undefined" in run["error"]
    again = herald("retry", str(run["id"]))
    assert again.returncode == 1, shown(again)
    assert "would fail again with workflow 'Job done' unchanged since (version 1)" in again.stderr
    assert len(again.stderr.splitlines()) == 1

    fixed = write(workflow, job_done("Done: {{ job.title }}"))
    imported = herald("workflows", "import", fixed, "--tenant", "1")
    assert imported.returncode == 0 and "('Job done', version 2, was 1)" in imported.stdout, shown(imported)
    assert imported.stderr == ""
    retried = herald("retry", str(run["id"]), "--reason", "typo fixed")
    assert retried.returncode == 0, shown(retried)
    assert retried.stdout == (f"run {run['id']}: retrying 1 step with version 2 (it ran version 1);"
                              " 0 delivered kept\n")

    async def completed() -> bool:
        return await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", run["id"]) == "completed"

    await wait_until(completed, timeout=30, message="the retried run to complete")
    message = await conn.fetchrow("SELECT recipient, subject, body FROM herald.messages WHERE run_id = $1", run["id"])
    assert tuple(message) == ("maria.lopez@example.com", "Done: Replace kitchen faucet", "Dear Maria, all done.")
    assert await conn.fetchval("SELECT workflow_version FROM herald.runs WHERE id = $1", run["id"]) == 2
    assert await conn.fetchval("SELECT workflow_version FROM herald.retries WHERE run_id = $1", run["id"]) == 2

    history = herald("workflows", "history", "job-done", "--tenant", "1")
    assert history.returncode == 0, shown(history)
    lines = history.stdout.splitlines()
    assert lines[0] == "workflow 'Job done', id job-done of tenant 1: 2 versions"
    assert lines[2].split()[0] == "2" and lines[2].split()[-2:] == ["1", "current"]  # its one run: version 2 now
    assert lines[3].split()[0] == "1" and lines[3].split()[-1] == "0"


async def test_trigger_says_which_workflows_ran_and_why_the_others_did_not(
    conn: asyncpg.Connection, processes: Processes, herald: Any, tmp_path: Path
) -> None:
    await load_demo(conn)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    # The README's example: the demo workflow's trigger, and a payload whose status meets its condition.
    job = write(tmp_path / "job.json", {"id": 1, "client_id": 1, "organization_id": 1,
                                        "title": "Replace kitchen faucet", "status": "completed"})
    fired = herald("trigger", "job_status_changed", "--payload", job, "--tenant", "1", "--wait", "30")
    assert fired.returncode == 0, shown(fired)
    first, matched = fired.stdout.splitlines()
    event_id = int(first.split()[1])
    assert first == f"event {event_id} fired (job_status_changed, tenant 1)"
    run_id = await conn.fetchval("SELECT id FROM herald.runs WHERE event_id = $1", event_id)
    assert matched == f"'Job Completed': matched: run {run_id}"

    async def delivered() -> Any:
        return await conn.fetchval("SELECT subject FROM herald.messages WHERE run_id = $1 AND channel = 'email'",
                                   run_id)

    assert await wait_until(delivered, timeout=30, message="the email") == "Job Completed - Replace kitchen faucet"

    scheduled = write(tmp_path / "scheduled.json", {"id": 2, "client_id": 2, "status": "scheduled"})
    nothing = herald("trigger", "job_status_changed", "--payload", scheduled, "--tenant", "1", "--wait", "30")
    assert nothing.returncode == 0, shown(nothing)
    assert nothing.stdout.splitlines()[1:] == [
        "nothing matched (1 active workflow of tenant 1):",
        "'Job Completed': not matched: condition failed: new.status equals 'completed': was 'scheduled'"]

    # --workflow by the document's id, its name, its uuid (one record each: no duplicates).
    workflow_uuid = str(await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'"))
    for row_id, ref in ((3, DEMO_ID), (4, "Job Completed"), (5, workflow_uuid)):
        payload = write(tmp_path / f"job-{row_id}.json", {"id": row_id, "client_id": 1, "status": "completed"})
        targeted = herald("trigger", "job_status_changed", "--payload", payload, "--tenant", "1",
                          "--workflow", ref, "--wait", "30")
        assert targeted.returncode == 0 and "'Job Completed': matched: run " in targeted.stdout, shown(targeted)
    bad = herald("trigger", "job_status_changed", "--payload", job, "--tenant", "1", "--workflow", "Job Complete")
    assert bad.returncode == 1, shown(bad)
    assert bad.stderr == ("herald: --workflow 'Job Complete': tenant 1 has no workflow with that id, name or uuid"
                          f" (its workflows: 'Job Completed', id {DEMO_ID})\n")


async def test_trigger_says_when_no_worker_picked_the_event_up(
    conn: asyncpg.Connection, herald: Any, tmp_path: Path
) -> None:
    await load_demo(conn)
    job = write(tmp_path / "job.json", {"id": 1, "status": "completed"})
    waiting = herald("trigger", "job_status_changed", "--payload", job, "--tenant", "1", "--wait", "0.3")
    assert waiting.returncode == 0, shown(waiting)
    event_id = await conn.fetchval("SELECT max(id) FROM herald.events")
    assert waiting.stdout.splitlines()[1].startswith(
        f"event {event_id} is waiting to be matched after 0.3 s: is a worker running?")


async def test_list_show_history_enable_disable_delete(conn: asyncpg.Connection, herald: Any, tmp_path: Path) -> None:
    await load_demo(conn)
    other = write(tmp_path / "other.json", {**job_done("Hi {{ job.title }}"), "id": "other", "name": "Other"})
    assert herald("workflows", "import", other, "--tenant", "1").returncode == 0
    demo_uuid = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1' AND source_id = $1",
                                    DEMO_ID)
    other_uuid = await conn.fetchval("SELECT id FROM herald.workflows WHERE source_id = 'other'")

    listed = herald("workflows", "list", "--tenant", "1")
    assert listed.returncode == 0, shown(listed)
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["ID", "SOURCE", "ID", "NAME", "TRIGGER", "VERSION", "ACTIVE", "RUNS", "FAILED"],
        [str(demo_uuid), DEMO_ID, "Job", "Completed", "job_status_changed", "1", "yes", "0", "0"],
        [str(other_uuid), "other", "Other", "job_status_changed", "1", "yes", "0", "0"]]

    shown_json = herald("workflows", "show", "Other", "--tenant", "1")
    assert shown_json.returncode == 0, shown(shown_json)
    document = json.loads(shown_json.stdout)
    assert (document["version"], document["is_active"], document["source_id"]) == (1, True, "other")
    assert document["definition"]["steps"][0]["config"]["subject"] == "Hi {{ job.title }}"

    write(tmp_path / "other.json", {**job_done("Hello {{ job.title }}"), "id": "other", "name": "Other"})
    assert "version 2, was 1" in herald("workflows", "import", other, "--tenant", "1").stdout
    old = json.loads(herald("workflows", "show", str(other_uuid), "--tenant", "1", "--version", "1").stdout)
    assert (old["version"], old["current_version"]) == (1, 2)
    assert old["definition"]["steps"][0]["config"]["subject"] == "Hi {{ job.title }}"
    history = herald("workflows", "history", "other", "--tenant", "1")
    assert [line.split()[0] for line in history.stdout.splitlines()[1:]] == ["VERSION", "2", "1"]

    assert herald("workflows", "disable", "other", "--tenant", "1").stdout == (
        "workflow 'Other', id other of tenant 1 disabled\n")
    assert herald("workflows", "disable", "other", "--tenant", "1").stdout.endswith("was disabled already\n")
    assert not await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1", other_uuid)
    assert herald("workflows", "enable", "other", "--tenant", "1").returncode == 0
    assert await conn.fetchval("SELECT is_active FROM herald.workflows WHERE id = $1", other_uuid)

    deleted = herald("workflows", "delete", "Other", "--tenant", "1")
    assert deleted.returncode == 0, shown(deleted)
    assert deleted.stdout == ("workflow 'Other', id other of tenant 1 deleted; its 0 runs stay readable"
                              " (importing its document again brings it back)\n")
    assert "Other" not in herald("workflows", "list", "--tenant", "1").stdout
    gone = herald("workflows", "show", "other", "--tenant", "1")
    assert gone.returncode == 1 and "was deleted" in gone.stderr and len(gone.stderr.splitlines()) == 1
    back = herald("workflows", "import", other, "--tenant", "1")
    assert "('Other', version 2, unchanged, restored after being deleted)" in back.stdout, shown(back)
    assert herald("workflows", "delete", "Other", "--tenant", "1").returncode == 0
    unknown = herald("workflows", "enable", "nope", "--tenant", "1")
    assert unknown.returncode == 1, shown(unknown)
    assert unknown.stderr == ("herald: workflow 'nope': tenant 1 has no workflow with that id, name or uuid"
                              f" (its workflows: 'Job Completed', id {DEMO_ID})\n")


async def test_export_is_read_back_by_import_and_validate(conn: asyncpg.Connection, herald: Any,
                                                          tmp_path: Path) -> None:
    await load_demo(conn)
    quiet = write(tmp_path / "quiet.json", {**job_done("Hi {{ job.title }}"), "id": "quiet", "name": "Quiet"})
    assert herald("workflows", "import", quiet, "--tenant", "1").returncode == 0
    assert herald("workflows", "disable", "quiet", "--tenant", "1").returncode == 0

    exported = herald("workflows", "export", "--tenant", "1")
    assert exported.returncode == 0, shown(exported)
    backup = tmp_path / "backup.json"
    backup.write_text(exported.stdout)
    valid = herald("workflows", "validate", str(backup))
    assert valid.returncode == 0, shown(valid)
    assert [line.split(":")[0] for line in valid.stdout.splitlines()] == [f"{backup}[0]", f"{backup}[1]"]

    imported = herald("workflows", "import", str(backup), "--tenant", "3")
    assert imported.returncode == 0, shown(imported)
    assert "('Quiet', version 1, new, disabled)" in imported.stdout
    again = herald("workflows", "export", "--tenant", "3")
    strip = [({k: v for k, v in e.items() if k not in ("tenant_id", "workflow_id")})
             for e in json.loads(again.stdout)]
    assert strip == [{k: v for k, v in e.items() if k not in ("tenant_id", "workflow_id")}
                     for e in json.loads(exported.stdout)]
    # Importing the backup over the same tenant changes nothing.
    same = herald("workflows", "import", str(backup), "--tenant", "1")
    assert same.stdout.count("unchanged") == 2, shown(same)

    # A file with two tenants' workflows is refused in one line.
    everyone = tmp_path / "everyone.json"
    everyone.write_text(herald("workflows", "export").stdout)
    mixed = herald("workflows", "import", str(everyone), "--tenant", "4")
    assert mixed.returncode == 2 and mixed.stderr == (
        f"{everyone}: invalid: holds workflows of tenants 1, 2, 3: export and import one tenant's at a time"
        " (export --tenant T)\n"), shown(mixed)
    # A name another active workflow has is refused, naming the other, and nothing of the file is saved.
    clash = write(tmp_path / "clash.json", [{**job_done("x"), "id": "a", "name": "A"},
                                            {**job_done("x"), "id": "b", "name": "Job Completed"}])
    refused = herald("workflows", "import", clash, "--tenant", "1")
    assert refused.returncode == 2, shown(refused)
    assert refused.stderr.splitlines() == [
        f"{clash}[1]: refused: name: tenant 1 already has an active workflow named 'Job Completed'"
        f" ('Job Completed', id {DEMO_ID}); rename one of them, or disable the other first",
        "nothing imported: 1 workflow of 2 refused"]
    assert await conn.fetchval("SELECT count(*) FROM herald.workflows WHERE source_id IN ('a', 'b')") == 0


async def failed_run(conn: asyncpg.Connection, job_id: int, error: str) -> int:
    """A run whose email was sent and whose SMS failed, as the actors leave it."""
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
    event = await conn.fetchrow("SELECT id, tenant_id FROM herald.events ORDER BY id DESC LIMIT 1")
    workflow = await conn.fetchrow("SELECT id, version FROM herald.workflows WHERE tenant_id = $1",
                                   event["tenant_id"])
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, error, workflow_version)"
        " VALUES ($1, $2, $3, 'failed', $4, $5) RETURNING id", event["tenant_id"], workflow["id"], event["id"],
        f"step 2 (step-2, sms): {error}", workflow["version"])
    for position, (action, status) in enumerate((("email", "sent"), ("sms", "failed"))):
        await conn.execute(
            "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
            " attempts, error) VALUES ($1, $2, $3, $4, $5, $5, '{}', $6, 4, $7)", run_id, event["tenant_id"], position,
            f"step-{position + 1}", action, status, error if status == "failed" else None)
    return int(run_id)


async def test_retry_answers(conn: asyncpg.Connection, herald: Any) -> None:
    await load_demo(conn)
    outage = [await failed_run(conn, job, "gave up after 4 attempts: telnyx unreachable") for job in (1, 2)]
    bad_number = await failed_run(conn, 3, "invalid phone number 'Lopez'")
    await conn.execute("UPDATE herald.runs SET status = 'completed', error = NULL WHERE id = $1", outage[1])
    done = outage.pop()

    assert herald("retry", "999").stderr == "herald: run 999 does not exist\n"
    assert herald("retry", str(done)).stderr == f"herald: run {done} is completed, not failed\n"
    assert herald("retry", str(outage[0]), "--tenant", "2").stderr == (
        f"herald: run {outage[0]} is not one of tenant 2's runs\n")

    dry = herald("retry", "--failed", "--tenant", "1", "--workflow", "Job Completed", "--dry-run")
    assert dry.returncode == 0, shown(dry)
    assert dry.stdout.splitlines() == [
        "would retry 1 run: 1 step to send again, 1 already delivered (kept)",
        f"  1 run: step 2 (step-2, sms): gave up after 4 attempts: telnyx unreachable (run {outage[0]})"]
    assert dry.stderr == (
        "not retried without --force: 1 run: failed permanently; would fail again: workflow 'Job Completed'"
        f" unchanged since (run {bad_number})\n")
    forced = herald("retry", "--failed", "--workflow", DEMO_ID, "--tenant", "1", "--force", "--dry-run")
    assert forced.stdout.splitlines()[1:] == [
        f"  1 run: step 2 (step-2, sms): gave up after 4 attempts: telnyx unreachable (run {outage[0]})",
        f"  1 run: step 2 (step-2, sms): invalid phone number 'Lopez' (run {bad_number})"]
    assert await conn.fetchval("SELECT count(*) FROM herald.retries") == 0

    one = herald("retry", str(outage[0]), "--dry-run")
    assert one.returncode == 0 and one.stdout.splitlines()[0] == (
        f"would retry run {outage[0]}: 1 step to send again with version 1, 1 already delivered (kept)"), shown(one)
    would_fail = herald("retry", str(bad_number), "--dry-run")
    assert would_fail.returncode == 1 and "would fail again" in would_fail.stderr, shown(would_fail)

    needs_tenant = herald("retry", "--failed", "--workflow", "Job Completed")
    assert needs_tenant.returncode == 1 and needs_tenant.stderr == (
        "herald: --workflow 'Job Completed': give --tenant to find a workflow by its id or name"
        " (or give its uuid)\n")
    by_uuid = herald("retry", "--failed", "--workflow", str(uuid.uuid4()), "--dry-run")
    assert by_uuid.stdout.startswith("would retry 0 runs"), shown(by_uuid)

    retried = herald("retry", "--failed", "--tenant", "1", "--reason", "outage over")
    assert retried.returncode == 0, shown(retried)
    assert retried.stdout.splitlines()[0] == "retried 1 run: 1 step to send again, 1 already delivered (kept)"
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", outage[0]) == "running"
    assert await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", bad_number) == "failed"
    only_refused = herald("retry", "--failed", "--tenant", "1")
    assert only_refused.returncode == 1, shown(only_refused)
