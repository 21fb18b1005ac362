"""A real worker's JSON log lines name what they are about: every line written
while a message is handled carries its actor and message id, and a step's
lines its event, run, step and tenant; one message's ids never show on the
next message's lines (one worker thread, one event loop, two tenants' events
one after the other)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import asyncpg

from config.settings import Settings
from daemon.demo import load_demo
from tests.conftest import wait_until
from tests.e2e.conftest import Processes

IDS = ("event_id", "run_id", "step_id", "tenant_id")


async def chain(conn: asyncpg.Connection, job_id: int) -> dict[str, set[Any]]:
    """The ids of the work one job's completion caused: its event, runs, steps, tenant."""
    rows = await conn.fetch(
        "SELECT e.id AS event_id, e.tenant_id, r.id AS run_id, s.id AS step_id FROM herald.events e"
        " JOIN herald.runs r ON r.event_id = e.id JOIN herald.steps s ON s.run_id = r.id"
        " WHERE e.table_name = 'public.jobs' AND e.row_id = $1", str(job_id))
    assert rows
    return {key: {row[key] for row in rows} for key in IDS}


async def test_worker_lines_carry_their_messages_ids_and_only_theirs(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path,
) -> None:
    await load_demo(conn)
    processes = Processes(settings.child_env() | {
        "HERALD_SWEEP_INTERVAL": "0.5", "HERALD_LEASE": "3", "HERALD_LOG_FORMAT": "json",
        "HERALD_WORKER_PROCESSES": "1", "HERALD_WORKER_THREADS": "1", "HERALD_LOG_LEVELS": "actors=DEBUG",
    }, tmp_path)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    try:
        async def finished(job_id: int) -> bool:
            return bool(await conn.fetchval(
                "SELECT bool_and(r.status = 'completed') FROM herald.events e JOIN herald.runs r ON r.event_id = e.id"
                " WHERE e.table_name = 'public.jobs' AND e.row_id = $1", str(job_id)))

        # Job 1 is tenant 1's, job 4 tenant 2's; the second completes after the first is done.
        for job_id in (1, 4):
            await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
            await wait_until(functools.partial(finished, job_id), timeout=60, interval=0.1,
                             message=f"job {job_id}'s run")
        first, second = await chain(conn, 1), await chain(conn, 4)
    finally:
        processes.stop_all()
    assert first["tenant_id"] == {"1"} and second["tenant_id"] == {"2"}

    lines = [line for line in processes.log_events("worker") if "message_id" in line]
    for ids, other in ((first, second), (second, first)):
        mine = [line for line in lines if any(line.get(key) in ids[key] for key in IDS[:3])]
        # Matched, and each step ended with the run's completion: logged with every id bound.
        [matched] = [line for line in mine if line["event"] == "events matched"]
        assert matched["actor"] == "match" and matched["event_id"] in ids["event_id"]
        assert matched["tenant_id"] in ids["tenant_id"]
        completed = [line for line in mine if line["event"] == "run completed"]
        assert completed and all(line["event_id"] in ids["event_id"] and line["run_id"] in ids["run_id"]
                                 and line["step_id"] in ids["step_id"] and line["tenant_id"] in ids["tenant_id"]
                                 for line in completed), completed
        # Nothing of the other job's work on any of this work's lines.
        for line in mine:
            for key in IDS:
                assert line.get(key) not in other[key], (key, line)
            for key in ("event_ids", "run_ids", "step_ids"):
                assert not set(line.get(key, [])) & other[key.removesuffix("s")], (key, line)
    # Every line logged while handling a message names a message; none is left bound after it.
    assert all(line.get("actor") for line in lines)
    unbound = [line for line in processes.log_events("worker") if "message_id" not in line]
    assert not [line for line in unbound if any(key in line for key in IDS)], unbound
