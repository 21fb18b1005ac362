"""An operator's bad week, in a minute: 600 jobs of 3 tenants complete one per
transaction at about 60 a second while the SMS provider misbehaves on about
8% of requests (a 500; the message taken and then a 500; the connection closed
or reset without an answer after the whole request, the message taken or
not) and, meanwhile, every process and server is killed once or twice:
one worker process, the worker's parent alone, the whole worker group, the
daemon (twice), redis-server (restarted with its data deleted) and PostgreSQL
(an immediate stop). Dead processes are restarted as systemd's
``Restart=always`` would. Every job's SMS must arrive exactly once and every
run must complete; nothing parked.

Prints ``events, delivered, duplicates, missing, parked``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from daemon.demo import load_demo
from daemon.embedded import EmbeddedServers
from daemon.workflows import import_workflow
from tests.conftest import wait_until
from tests.e2e.conftest import Processes
from tests.fakes import FlakyProvider

JOBS_PER_TENANT = 200
TENANTS = ("1", "2", "3")
EVENTS = JOBS_PER_TENANT * len(TENANTS)
RATE_PER_S = 60
MISBEHAVIOURS = ("500", "take_500", "close", "take_close", "reset", "take_reset")


def misbehaving(seed: int) -> tuple[object, object]:
    """About 8% of requests misbehave, each way as often; 5-50 ms to answer."""
    faults = random.Random(seed)
    plan = [faults.choice(MISBEHAVIOURS) if faults.random() < 0.08 else "ok" for _ in range(20_000)]
    latencies = random.Random(seed + 1)
    delays = [latencies.uniform(0.005, 0.05) for _ in range(20_000)]
    return (lambda n: plan[n % len(plan)]), (lambda n: delays[n % len(delays)])


@pytest.fixture
async def provider() -> AsyncIterator[FlakyProvider]:
    fault, latency = misbehaving(seed=8)
    async with FlakyProvider(dedupes=True, fault=fault, latency=latency) as flaky:
        yield flaky


async def prepare(pool: asyncpg.Pool) -> None:
    """Three tenants, each job with its own client, phone and title; an SMS-only workflow each."""
    async with pool.acquire() as conn:
        await load_demo(conn)
        await conn.execute("UPDATE herald.workflows SET is_active = false")
        await conn.execute("INSERT INTO organizations (id, name) VALUES (3, 'Third Co') ON CONFLICT DO NOTHING")
        for tenant in TENANTS:
            await import_workflow(conn, tenant, {
                "name": "sms only", "trigger_type": "job_completed",
                "retry": {"max_retries": 8, "base_delay_s": 0.2, "max_delay_s": 2},
                "steps": [{"id": "sms", "type": "action", "config": {
                    "actionType": "sms", "message": "Job {{job.title}} completed",
                    "recipient": "{{client.phone}}"}}]})
        await conn.execute(
            "WITH c AS (INSERT INTO clients (organization_id, first_name, last_name, email, phone)"
            "  SELECT 1 + (g - 1) % 3, 'C' || g, 'Week', 'c' || g || '@example.com', '+1555' || lpad(g::text, 7, '0')"
            "  FROM generate_series(1, $1) g RETURNING id, organization_id, first_name)"
            " INSERT INTO jobs (organization_id, client_id, title, status)"
            " SELECT organization_id, id, 'Wk' || substr(first_name, 2), 'in_progress' FROM c", EVENTS)


class Systemd:
    """Restarts any Herald process that died, as ``Restart=always`` would."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.restarts: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, process in list(self.processes.running.items()):
                if process.poll() is not None:
                    self.restarts[name] += 1
                    self.processes.start(name, name)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.2)
            except TimeoutError:
                pass


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def kill(pid: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def test_a_bad_week_loses_nothing_and_sends_nothing_twice(
    pool: asyncpg.Pool, provider: FlakyProvider, settings: Settings, servers: EmbeddedServers,
    layout: EmbeddedLayout, tmp_path: Path,
) -> None:
    await prepare(pool)
    processes = Processes(settings.child_env() | {
        "HERALD_SWEEP_INTERVAL": "0.5", "HERALD_HEARTBEAT_INTERVAL": "0.5", "HERALD_LEASE": "10",
        "HERALD_ACTOR_TIME_LIMIT": "8", "HERALD_HTTP_TIMEOUT": "2", "HERALD_LOG_FORMAT": "json",
        "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_BASE_URL": provider.url,
        "HERALD_TELNYX_API_KEY": "key", "HERALD_SMS_FROM": "+15550000000",
        "HERALD_WORKER_PROCESSES": "2", "HERALD_WORKER_THREADS": "4", "HERALD_RECIPIENT_LIMIT": "0",
    }, tmp_path)
    processes.start("daemon", "daemon")
    processes.start("worker", "worker")
    systemd = Systemd(processes)
    stop = asyncio.Event()
    restarter = asyncio.create_task(systemd.run(stop))

    async def feed() -> None:
        ids = [r["id"] for r in await pool.fetch("SELECT id FROM jobs WHERE title LIKE 'Wk%' ORDER BY id")]
        for job_id in ids:  # one transaction per job, as an application does
            try:
                await pool.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                # PostgreSQL is down for a moment: the application retries its write.
                await wait_until(lambda: _completes(pool, job_id), timeout=60, interval=0.2,
                                 message="PostgreSQL back for the application")
            await asyncio.sleep(1 / RATE_PER_S)  # the application's pace, not a synchronisation

    async def delivered(count: int) -> None:
        async def reached() -> bool:
            return len(provider.delivered) >= count
        await wait_until(reached, timeout=120, interval=0.05, message=f"{count} SMS delivered")

    async def faults() -> None:
        await delivered(40)
        worker = processes.running["worker"]
        kill(children_of(worker.pid)[0])  # one worker process
        await delivered(100)
        kill(processes.running["worker"].pid)  # the worker's parent alone: its children must go too
        await delivered(160)
        kill(processes.running["worker"].pid, group=True)  # the whole worker group
        await delivered(220)
        kill(processes.running["daemon"].pid, group=True)
        await delivered(280)
        redis_pid = servers.redis_pid()
        assert redis_pid is not None
        kill(redis_pid)

        async def redis_gone() -> bool:
            return not servers.redis_running()

        await wait_until(redis_gone, timeout=30, message="redis-server gone")
        shutil.rmtree(layout.redis_dir, ignore_errors=True)  # restarted with its data deleted
        layout.redis_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(servers.ensure_redis)
        await delivered(340)
        postmaster = servers.postmaster_pid()
        assert postmaster is not None
        os.kill(postmaster, signal.SIGQUIT)  # pg_ctl -m immediate
        await wait_until(lambda: _gone(postmaster), timeout=30, message="PostgreSQL down")
        await asyncio.to_thread(servers.ensure_postgres)
        await delivered(420)
        kill(processes.running["daemon"].pid, group=True)

    try:
        await asyncio.gather(feed(), faults())

        async def all_settled() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM herald.runs WHERE status NOT IN ('pending', 'running')")
            return done >= EVENTS and len(provider.delivered) >= EVENTS

        try:
            await wait_until(all_settled, timeout=240, interval=0.5, message="every job's run to finish")
        finally:
            per_job = Counter(text.split()[1] for text in provider.texts())
            duplicates = sum(n - 1 for n in per_job.values() if n > 1)
            titles = [r["title"] for r in await pool.fetch("SELECT title FROM jobs WHERE title LIKE 'Wk%'")]
            missing = sum(1 for title in titles if title not in per_job)
            parked = await pool.fetchval("SELECT count(*) FROM herald.steps WHERE status = 'unknown'")
            unfinished = await pool.fetch(
                "SELECT r.id, r.status, r.error, s.status AS step, s.attempts, s.error AS step_error"
                " FROM herald.runs r LEFT JOIN herald.steps s ON s.run_id = r.id WHERE r.status <> 'completed'")
            strays = [text for text in provider.texts() if text.split()[1] not in titles]
            unmatched = await pool.fetchval("SELECT count(*) FROM herald.events WHERE state <> 'matched'")
            print(f"\nunfinished runs: {[dict(r) for r in unfinished][:5]} strays: {strays[:5]}"
                  f" unmatched events: {unmatched}")
            missing_titles = [title for title in titles if title not in per_job][:3]
            for title in missing_titles:  # where the work of a job that got no SMS stopped
                trail = await pool.fetch(
                    "SELECT j.status AS job, e.id AS event, e.state, e.type, e.dispatch_count,"
                    " e.match_report::text AS report, r.id AS run, r.status AS run_status,"
                    " s.status AS step, s.attempts, s.error, m.status AS message"
                    " FROM jobs j LEFT JOIN herald.events e ON e.row_id = j.id::text AND e.table_name = 'public.jobs'"
                    " LEFT JOIN herald.runs r ON r.event_id = e.id LEFT JOIN herald.steps s ON s.run_id = r.id"
                    " LEFT JOIN herald.messages m ON m.step_id = s.id WHERE j.title = $1", title)
                print(f"missing {title}: {[dict(r) for r in trail]}")
            print(f"\nbad week: events={EVENTS} delivered={len(provider.delivered)} duplicates={duplicates}"
                  f" missing={missing} parked={parked} requests={provider.requests}"
                  f" faults={dict(provider.faults)} replays={provider.replays} restarts={dict(systemd.restarts)}")
        statuses = await pool.fetch("SELECT status, count(*) FROM herald.runs GROUP BY 1")
        assert (duplicates, missing, parked) == (0, 0, 0)
        assert {row["status"]: row["count"] for row in statuses} == {"completed": EVENTS}
    finally:
        stop.set()
        await restarter
        processes.stop_all()


async def _completes(pool: asyncpg.Pool, job_id: int) -> bool:
    try:
        await pool.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


async def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
