"""Fault tests: break things on purpose while 500 completed jobs flow, and
check that every job's SMS is delivered exactly once.

Each test prints ``events, delivered, duplicates, missing``. The SMS provider
is a local Telnyx fake that, like Telnyx, delivers each Idempotency-Key once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from daemon.demo import load_demo
from daemon.embedded import EmbeddedServers
from daemon.workflows import import_workflow
from tests.conftest import wait_until
from tests.e2e.conftest import Processes
from tests.fakes import FakeTelnyx

EVENTS = 500
# The message text names the job: "Job T17 completed. Thank you!"
TITLE = "T{}"


@pytest.fixture
async def telnyx() -> AsyncIterator[FakeTelnyx]:
    async with FakeTelnyx() as fake:
        yield fake


@pytest.fixture
def herald(settings: Settings, telnyx: FakeTelnyx, tmp_path: Path) -> Iterator[Processes]:
    env = settings.child_env() | {
        "HERALD_SWEEP_INTERVAL": "0.5", "HERALD_LEASE": "3", "HERALD_LOG_FORMAT": "json",
        "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_BASE_URL": telnyx.url,
        "HERALD_TELNYX_API_KEY": "key", "HERALD_SMS_FROM": "+15550000000",
        "HERALD_WORKER_THREADS": "4", "HERALD_RECIPIENT_LIMIT": "0",
    }
    processes = Processes(env, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


async def prepare(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await load_demo(conn)
        await conn.execute(
            "INSERT INTO jobs (organization_id, client_id, title, status)"
            " SELECT 1, 1 + g % 3, 'T' || g, 'in_progress' FROM generate_series(1, $1) g", EVENTS)


async def flow_with_fault(
    pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx, name: str,
    fault: Callable[[], Awaitable[None]], *, fault_after: int = 50, extra_runs: int = 0,
) -> None:
    """Complete every job, break something once ``fault_after`` SMS are out, then
    wait for all of them and check each job got exactly one."""
    await prepare(pool)
    herald.start("daemon", "daemon")
    herald.start("worker", "worker")
    await pool.execute("UPDATE jobs SET status = 'completed' WHERE title LIKE 'T%'")

    async def some_delivered() -> bool:
        return len(telnyx.delivered) >= fault_after

    await wait_until(some_delivered, timeout=60, message=f"{fault_after} SMS before the fault")
    await fault()

    async def all_runs_done() -> bool:
        return len(telnyx.delivered) >= EVENTS + extra_runs and await pool.fetchval(
            "SELECT count(*) FROM herald.runs WHERE status = 'completed'") >= EVENTS + extra_runs

    try:
        await wait_until(all_runs_done, timeout=120, interval=0.2, message="every job's SMS")
    finally:
        per_job = Counter(text.split()[1] for text in telnyx.delivered.values())
        duplicates = sum(n - 1 for n in per_job.values() if n > 1)
        missing = sum(1 for n in range(1, EVENTS + 1) if TITLE.format(n) not in per_job)
        parked = await pool.fetchval("SELECT count(*) FROM herald.steps WHERE status = 'unknown'")
        print(f"\n{name}: events={EVENTS} delivered={len(telnyx.delivered)} duplicates={duplicates}"
              f" missing={missing} parked={parked} (provider saw {telnyx.replays} repeated keys)")
        if missing:
            print(await where_they_are(pool))
    assert (duplicates, missing, parked) == (0, 0, 0)
    statuses = await pool.fetch("SELECT status, count(*) FROM herald.runs GROUP BY 1")
    assert {row["status"]: row["count"] for row in statuses} == {"completed": EVENTS + extra_runs}


async def where_they_are(pool: asyncpg.Pool) -> str:
    """Where the work of a failed flow stands: events, runs and SMS steps by state."""
    counts = await pool.fetch(
        "SELECT 'event ' || state AS what, count(*) FROM herald.events GROUP BY 1"
        " UNION ALL SELECT 'run ' || status, count(*) FROM herald.runs GROUP BY 1"
        " UNION ALL SELECT 'step ' || status || ' attempts ' || attempts, count(*)"
        " FROM herald.steps GROUP BY 1 ORDER BY 1")
    stuck = await pool.fetch(
        "SELECT s.run_id, s.status, s.attempts, s.claimed_by, s.updated_at, s.error"
        " FROM herald.steps s WHERE s.status <> 'completed' ORDER BY s.run_id LIMIT 5")
    return "\n".join([*(f"  {row['what']}: {row['count']}" for row in counts),
                      *(f"  {dict(row)}" for row in stuck)])


def kill_group(process_pid: int) -> None:
    os.killpg(process_pid, signal.SIGKILL)


async def test_kill_9_a_worker_mid_flow(pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx) -> None:
    async def fault() -> None:
        worker = herald.running["worker"]
        kill_group(worker.pid)
        worker.wait()
        herald.start("worker", "worker")

    await flow_with_fault(pool, herald, telnyx, "kill -9 worker", fault)


async def test_kill_9_the_daemon_then_restart_it(
    pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx
) -> None:
    async def fault() -> None:
        daemon = herald.running["daemon"]
        kill_group(daemon.pid)
        daemon.wait()
        # More work arrives while no daemon runs; it waits in the outbox.
        await pool.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
        herald.start("daemon", "daemon")

    await flow_with_fault(pool, herald, telnyx, "kill -9 daemon", fault, fault_after=1, extra_runs=1)


async def test_restart_postgresql_mid_flow(
    pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx, servers: EmbeddedServers
) -> None:
    async def fault() -> None:
        await asyncio.to_thread(servers.restart_postgres)

    await flow_with_fault(pool, herald, telnyx, "restart postgresql", fault)


async def test_flushall_redis_mid_flow(
    pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx, layout: EmbeddedLayout
) -> None:
    async def fault() -> None:
        client = redis.Redis.from_url(layout.redis_url)
        client.flushall()
        client.close()

    await flow_with_fault(pool, herald, telnyx, "FLUSHALL redis", fault)


BURST = 5000


async def test_a_burst_for_one_client_keeps_its_limit_and_delays_nobody_else(
    pool: asyncpg.Pool, herald: Processes, telnyx: FakeTelnyx, layout: EmbeddedLayout
) -> None:
    async with pool.acquire() as conn:
        await load_demo(conn)
        await conn.execute("UPDATE herald.workflows SET is_active = false")
        await import_workflow(conn, "1", {
            "name": "burst", "trigger_type": "job_completed", "rate_limit": {"per_recipient": 5, "window": "1h"},
            "steps": [{"id": "sms", "type": "action", "config": {
                "actionType": "sms", "message": "Job {{job.title}} completed", "recipient": "{{client.phone}}"}}]})
        await import_workflow(conn, "2", {
            "name": "normal", "trigger_type": "job_completed", "steps": [{"id": "sms", "type": "action", "config": {
                "actionType": "sms", "message": "Job {{job.title}} completed", "recipient": "{{client.phone}}"}}]})
        await conn.execute(
            "INSERT INTO jobs (organization_id, client_id, title, status)"
            " SELECT 1, 1, 'B' || g, 'in_progress' FROM generate_series(1, $1) g", BURST)
    herald.start("daemon", "daemon")
    herald.start("worker", "worker")
    await pool.execute("UPDATE jobs SET status = 'completed' WHERE title LIKE 'B%'")

    async def burst_underway() -> bool:
        return len(telnyx.delivered) >= 1

    await wait_until(burst_underway, timeout=60, message="the burst to start")
    # Another tenant's client completes a job in the middle of the burst.
    await pool.execute("UPDATE jobs SET status = 'completed' WHERE id = 4")

    async def other_delivered() -> bool:
        return any("Install EV charger" in text for text in telnyx.delivered.values())

    await wait_until(other_delivered, timeout=30, message="the other tenant's SMS during the burst")

    async def burst_decided() -> bool:
        # Every burst run has been matched, enriched and its SMS either sent or waiting for the window.
        return await pool.fetchval(
            "SELECT count(*) FROM herald.steps s JOIN herald.runs r ON r.id = s.run_id WHERE r.tenant_id = '1'"
            " AND (s.status = 'sent' OR (s.status = 'pending' AND s.next_attempt_at IS NOT NULL))") == BURST

    await wait_until(burst_decided, timeout=240, interval=0.5, message="every burst message sent or waiting")
    to_client = [text for text in telnyx.delivered.values() if text.startswith("Job B")]
    waiting = await pool.fetchval("SELECT count(*) FROM herald.steps WHERE status = 'pending'"
                                  " AND error LIKE 'rate limited: 5 sms messages per 1:00:00%'")
    client = redis.Redis.from_url(layout.redis_url)
    dead = sum(client.zcard(key) for key in client.scan_iter("dramatiq:*.XQ"))
    client.close()
    print(f"\nburst: events={BURST} delivered_to_client={len(to_client)} waiting={waiting} dead_lettered={dead}")
    assert len(to_client) == 5 and waiting == BURST - 5 and dead == 0
