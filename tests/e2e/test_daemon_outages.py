"""The daemon survives a Redis outage, and a daemon task that dies for any
other reason stops the daemon with a non-zero status and its traceback."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncpg
import pytest
import structlog

from config.settings import Settings
from daemon.demo import load_demo
from daemon.embedded import EmbeddedServers
from daemon.service import run_daemon
from daemon.sweeper import Sweeper
from tests.conftest import wait_until
from tests.e2e.conftest import Processes


async def test_redis_down_during_sweeps_and_dispatch_then_back(
    conn: asyncpg.Connection, processes: Processes, servers: EmbeddedServers
) -> None:
    await load_demo(conn)
    daemon = processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    redis_pid = servers.redis_pid()
    assert redis_pid is not None
    os.kill(redis_pid, signal.SIGKILL)

    async def redis_gone() -> bool:
        return not servers.redis_running()

    await wait_until(redis_gone, message="redis-server gone")
    # Work arrives while Redis is away (the dispatcher's), and an event whose
    # message was lost is due for the sweeper.
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new, state,"
        " dispatched_at) SELECT tenant_id, entity, table_name, row_id, operation, type, old, new, 'dispatched',"
        " now() - interval '1 hour' FROM herald.events ORDER BY id LIMIT 1")

    async def failed_twice() -> bool:
        events = [str(e.get("event", "")) for e in processes.log_events("daemon")]
        return events.count("sweep failed; will try again") >= 2 and "could not send match message" in events

    try:
        await wait_until(failed_twice, timeout=30, message="the daemon's loops to fail on Redis and go on")
        assert daemon.poll() is None, processes.output("daemon")[-2000:]
    finally:
        await asyncio.to_thread(servers.ensure_redis)

    async def all_matched() -> bool:
        return await conn.fetchval("SELECT bool_and(state = 'matched') FROM herald.events") and \
            await conn.fetchval("SELECT count(*) FROM herald.runs WHERE status = 'completed'") >= 1

    await wait_until(all_matched, timeout=30, interval=0.1, message="the work once Redis is back")
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 20) == 0


async def test_a_daemon_task_that_dies_of_a_bug_stops_the_daemon_non_zero(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def bug(self: Sweeper) -> dict[str, int]:
        raise RuntimeError("a bug in the sweeper")

    monkeypatch.setattr(Sweeper, "sweep", bug)
    with structlog.testing.capture_logs() as logs:
        status = await asyncio.wait_for(run_daemon(settings), timeout=30)
    assert status == 1
    [crash] = [entry for entry in logs if entry["event"] == "daemon task ended unexpectedly; stopping"]
    assert crash["task"] == "sweeper" and isinstance(crash["exc_info"], RuntimeError)
