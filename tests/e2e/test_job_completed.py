"""The walking skeleton end to end: a job completed with SQL becomes one email and
one SMS, through the real daemon and a real Dramatiq worker process."""

from __future__ import annotations

from typing import Any

import asyncpg

from daemon.capture import watch_table
from daemon.demo import WATCHES, load_demo
from daemon.workflows import export_workflows
from tests.conftest import wait_until
from tests.e2e.conftest import Processes

MESSAGES_FOR_JOB = """
SELECT m.channel, m.recipient, m.subject, m.body, m.status, m.provider
FROM herald.messages m
JOIN herald.runs r ON r.id = m.run_id
JOIN herald.events e ON e.id = r.event_id
WHERE e.entity = 'job' AND e.row_id = $1
ORDER BY m.channel
"""


async def test_completed_job_sends_one_email_and_one_sms(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    await load_demo(conn)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")

    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")

    async def run_finished() -> Any:
        return await conn.fetchrow(
            "SELECT r.* FROM herald.runs r JOIN herald.events e ON e.id = r.event_id"
            " WHERE e.row_id = '1' AND r.status IN ('completed', 'failed')")

    run = await wait_until(run_finished, timeout=30, message="the job-1 run to finish")
    assert run["status"] == "completed", run["error"]
    assert run["execution_time_ms"] is not None and run["context"]["client"]["first_name"] == "Maria"

    messages = await conn.fetch(MESSAGES_FOR_JOB, "1")
    assert [dict(m) for m in messages] == [
        {"channel": "email", "recipient": "maria.lopez@example.com",
         "subject": "Job Completed - Replace kitchen faucet",
         "body": "Dear Maria,\n\nYour job has been completed.", "status": "captured",
         "provider": "capture"},
        {"channel": "sms", "recipient": "+15550101001", "subject": None,
         "body": "Job Replace kitchen faucet completed. Thank you!", "status": "captured",
         "provider": "capture"},
    ]
    steps = await conn.fetch(
        "SELECT action, status, attempts, execution_time_ms FROM herald.steps WHERE run_id = $1"
        " ORDER BY position", run["id"])
    assert [(s["action"], s["status"], s["attempts"]) for s in steps] == [
        ("email", "sent", 1), ("sms", "sent", 1)]

    # A job that is merely scheduled runs nothing, and the event says why.
    await conn.execute("UPDATE jobs SET status = 'scheduled' WHERE id = 3")

    async def scheduled_event_matched() -> Any:
        return await conn.fetchrow(
            "SELECT id, match_report FROM herald.events WHERE row_id = '3' AND state = 'matched'")

    event = await wait_until(scheduled_event_matched, timeout=30, message="job 3's event to be matched")
    assert await conn.fetchval("SELECT count(*) FROM herald.runs WHERE event_id = $1", event["id"]) == 0
    assert await conn.fetch(MESSAGES_FOR_JOB, "3") == []
    [verdict] = event["match_report"]["workflows"]
    assert verdict["matched"] is False and "was 'scheduled'" in verdict["reason"]
    assert await conn.fetchval("SELECT count(*) FROM herald.messages") == 2
    [exported] = await export_workflows(conn, "1")
    assert exported["execution_count"] == 1


async def test_events_written_while_the_daemon_was_down_are_caught_up(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    await load_demo(conn)
    # Both jobs complete before any Herald process runs: nothing is lost.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id IN (2, 4)")
    processes.start("worker", "worker")
    processes.start("daemon", "daemon")

    async def both_runs_completed() -> bool:
        return await conn.fetchval(
            "SELECT count(*) FROM herald.runs WHERE status = 'completed'") == 2

    await wait_until(both_runs_completed, timeout=30, message="both runs to complete")
    tenants = await conn.fetch("SELECT DISTINCT tenant_id FROM herald.messages ORDER BY 1")
    assert [t["tenant_id"] for t in tenants] == ["1", "2"]
    assert await conn.fetchval("SELECT count(*) FROM herald.messages") == 4


async def test_a_job_table_captured_from_the_wal_runs_its_workflow_once(
    conn: asyncpg.Connection, processes: Processes
) -> None:
    await load_demo(conn)
    jobs_relations = dict(WATCHES)["jobs"]
    await watch_table(conn, "jobs", tenant_column="organization_id", relations=jobs_relations, capture="wal")
    triggers = await conn.fetch("SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal")
    assert triggers == []  # nothing of Herald's runs in the application's transaction
    # One job completes before any Herald process runs (the slot keeps it), one after.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 2")
    processes.start("worker", "worker")
    processes.start("daemon", "daemon")
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")

    async def both_runs_completed() -> bool:
        return await conn.fetchval("SELECT count(*) FROM herald.runs WHERE status = 'completed'") == 2

    await wait_until(both_runs_completed, timeout=30, message="both runs to complete")
    for job in ("1", "2"):
        messages = await conn.fetch(MESSAGES_FOR_JOB, job)
        assert [(m["channel"], m["status"]) for m in messages] == [("email", "captured"), ("sms", "captured")]
    events = await conn.fetch("SELECT row_id, old ->> 'status' AS was, new ->> 'status' AS now"
                              " FROM herald.events WHERE entity = 'job' ORDER BY id")
    assert [tuple(e) for e in events] == [("2", "scheduled", "completed"), ("1", "in_progress", "completed")]
    # The daemon streams the slot (it is not polling it), and recorded where it has written to.
    slot = await conn.fetchrow(
        "SELECT w.read_lsn, a.application_name FROM herald.wal_capture w"
        " JOIN pg_replication_slots s USING (slot_name) JOIN pg_stat_activity a ON a.pid = s.active_pid")
    assert slot["application_name"] == "herald-wal-capture" and slot["read_lsn"] is not None
