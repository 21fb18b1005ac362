"""Herald on several machines, played on one: two `herald daemon` processes and
two `herald worker` groups (each its own Dramatiq process tree, started
separately, as on two hosts) against one PostgreSQL and one Redis.

- Jobs of three tenants complete one per transaction; every job's SMS reaches
  the provider exactly once (the fake provider takes every request it gets as
  a delivery, so a second request for one message would show), and both worker
  groups carry out steps.
- Time triggers: only one daemon leads (holds the scheduler's advisory lock)
  and only it evaluates; overdue invoices and a cron schedule fire once per
  slot. The leader is killed with SIGKILL: the other daemon takes the lock,
  and the invoices that fell due meanwhile and after, and the cron minutes,
  still fire exactly once, none missed. Jobs completed after the kill are
  delivered by the surviving daemon alone.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from config.settings import Settings
from daemon.demo import load_demo
from daemon.scheduler import LEADER_LOCK
from daemon.workflows import import_workflow
from tests.conftest import wait_until
from tests.e2e.conftest import Processes
from tests.e2e.test_supervision import descendants
from tests.fakes import FlakyProvider

TENANTS = ("1", "2", "3")
JOBS_BEFORE = 240  # completed while both daemons run
JOBS_AFTER = 60  # completed after the leader was killed
JOBS = JOBS_BEFORE + JOBS_AFTER
INVOICES_PER_BATCH = 12  # 4 per tenant; three batches: before the kill, in the gap, after
DAEMONS = ("daemon_a", "daemon_b")
WORKERS = ("workers_a", "workers_b")
TICK_PHONE = "+15550009999"

# The holder of the scheduler's lock: pg_try_advisory_lock(bigint) puts the key's
# high 32 bits in classid and the low ones in objid.
LOCK_HOLDERS = """
SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = $1 AND l.objsubid = 1
"""


@pytest.fixture
async def provider() -> AsyncIterator[FlakyProvider]:
    # No faults; without dedupes every request it takes is a delivery.
    async with FlakyProvider(dedupes=False, latency=lambda n: 0.005) as fake:
        yield fake


async def prepare(pool: asyncpg.Pool) -> None:
    """Three tenants; per tenant an SMS on job completed and one on invoice overdue;
    one cron workflow texting a fixed number every minute. Each job and invoice its own client."""
    async with pool.acquire() as conn:
        await load_demo(conn)
        await conn.execute("UPDATE herald.workflows SET is_active = false")
        await conn.execute("UPDATE invoices SET status = 'paid'")  # the demo's own: not overdue
        await conn.execute("INSERT INTO organizations (id, name) VALUES (3, 'Third Co') ON CONFLICT DO NOTHING")
        retry = {"max_retries": 8, "base_delay_s": 0.2, "max_delay_s": 2}
        for tenant in TENANTS:
            await import_workflow(conn, tenant, {
                "name": "job sms", "trigger_type": "job_completed", "retry": retry,
                "steps": [{"id": "sms", "type": "action", "config": {
                    "actionType": "sms", "message": "Job {{job.title}} completed",
                    "recipient": "{{client.phone}}"}}]})
            await import_workflow(conn, tenant, {
                "name": "dunning", "trigger_type": "invoice_overdue", "retry": retry,
                "steps": [{"id": "sms", "type": "action", "config": {
                    "actionType": "sms", "message": "Invoice {{invoice.number}} overdue",
                    "recipient": "{{client.phone}}"}}]})
        tick = await import_workflow(conn, "1", {
            "name": "tick", "trigger_type": "cron", "trigger_config": {"schedule": "* * * * *"}, "retry": retry,
            "steps": [{"id": "sms", "type": "action", "config": {
                "actionType": "sms", "message": "Tick {{schedule.scheduled_for}}", "recipient": TICK_PHONE}}]})
        # Made a while ago: the minute in progress is already one of its slots.
        await conn.execute("UPDATE herald.workflows SET created_at = created_at - interval '10 minutes'"
                           " WHERE id = $1", tick)
        await conn.execute(
            "WITH c AS (INSERT INTO clients (organization_id, first_name, last_name, email, phone)"
            "  SELECT 1 + (g - 1) % 3, 'C' || g, 'Scale', 'c' || g || '@example.com', '+1555' || lpad(g::text, 7, '0')"
            "  FROM generate_series(1, $1) g RETURNING id, organization_id, first_name)"
            " INSERT INTO jobs (organization_id, client_id, title, status)"
            " SELECT organization_id, id, 'Sc' || substr(first_name, 2), 'in_progress' FROM c", JOBS)


async def complete_jobs(pool: asyncpg.Pool, ids: list[int]) -> None:
    for job_id in ids:  # one transaction per job, as an application does
        await pool.execute("UPDATE jobs SET status = 'completed' WHERE id = $1", job_id)


async def add_overdue_invoices(pool: asyncpg.Pool, batch: int) -> list[str]:
    """A batch of invoices, overdue already (two days: any hour, any time zone), over the tenants."""
    rows = await pool.fetch(
        "INSERT INTO invoices (organization_id, client_id, number, amount_cents, due_date, status)"
        " SELECT c.organization_id, c.id, 'INV-' || $1::int || '-' || c.id, 100, current_date - 2, 'sent'"
        " FROM (SELECT id, organization_id, row_number() OVER (PARTITION BY organization_id ORDER BY id) AS n"
        "       FROM clients WHERE last_name = 'Scale') c"
        " WHERE c.n - $1::int IN (1, 4, 7, 10)"
        " RETURNING number", batch * 20)
    assert len(rows) == INVOICES_PER_BATCH
    return [row["number"] for row in rows]


def logged(processes: Processes, name: str, event: str) -> list[dict[str, object]]:
    return [line for line in processes.log_events(name) if line.get("event") == event]


async def test_two_daemons_and_two_worker_groups_deliver_once_and_hand_over_the_schedule(
    pool: asyncpg.Pool, provider: FlakyProvider, settings: Settings, tmp_path: Path,
) -> None:
    await prepare(pool)
    processes = Processes(settings.child_env() | {
        "HERALD_SWEEP_INTERVAL": "0.5", "HERALD_HEARTBEAT_INTERVAL": "0.5", "HERALD_LEASE": "5",
        "HERALD_ACTOR_TIME_LIMIT": "4", "HERALD_HTTP_TIMEOUT": "2", "HERALD_LOG_FORMAT": "json",
        "HERALD_SMS_PROVIDER": "telnyx", "HERALD_TELNYX_BASE_URL": provider.url,
        "HERALD_TELNYX_API_KEY": "key", "HERALD_SMS_FROM": "+15550000000",
        "HERALD_WORKER_PROCESSES": "1", "HERALD_WORKER_THREADS": "4", "HERALD_RECIPIENT_LIMIT": "0",
    }, tmp_path)
    try:
        for name in DAEMONS:
            processes.start(name, "daemon")
        for name in WORKERS:
            processes.start(name, "worker")
        await _run(pool, provider, processes)
    finally:
        processes.stop_all()


async def _run(pool: asyncpg.Pool, provider: FlakyProvider, processes: Processes) -> None:
    async def live(kind: str, count: int) -> bool:
        return bool(await pool.fetchval(
            "SELECT count(*) >= $2 FROM herald.heartbeats WHERE kind = $1 AND stopped_at IS NULL"
            " AND last_seen_at > clock_timestamp() - interval '5 seconds'", kind, count))

    await wait_until(lambda: live("daemon", 2), timeout=60, interval=0.1, message="both daemons beating")
    await wait_until(lambda: live("worker", 2), timeout=60, interval=0.1, message="both worker groups beating")

    # -- one leader ----------------------------------------------------------------
    async def leaders() -> list[str]:
        return [name for name in DAEMONS if logged(processes, name, "scheduler leads")]

    [leader] = await wait_until(leaders, timeout=30, interval=0.1, message="a scheduler leader")
    follower = next(name for name in DAEMONS if name != leader)
    holders = await pool.fetch(LOCK_HOLDERS, LEADER_LOCK)
    assert [h["application_name"] for h in holders] == ["herald-scheduler"]

    # -- jobs, with both daemons and both worker groups ------------------------------
    job_ids = [r["id"] for r in await pool.fetch("SELECT id FROM jobs WHERE title LIKE 'Sc%' ORDER BY id")]
    await complete_jobs(pool, job_ids[:JOBS_BEFORE])
    first_invoices = await add_overdue_invoices(pool, 0)

    def texts(prefix: str) -> list[str]:
        return [text for text in provider.texts() if text.startswith(prefix)]

    async def delivered(prefix: str, count: int) -> bool:
        return len(texts(prefix)) >= count

    await wait_until(lambda: delivered("Job ", JOBS_BEFORE), timeout=90, interval=0.1,
                     message=f"{JOBS_BEFORE} job SMS delivered")
    await wait_until(lambda: delivered("Invoice ", INVOICES_PER_BATCH), timeout=30, interval=0.1,
                     message="the first overdue invoices' SMS")
    assert not logged(processes, follower, "time triggers fired"), "the follower evaluated time triggers"
    assert logged(processes, leader, "time triggers fired")

    # Both groups did the work: the steps name the worker process that claimed them.
    group_of = {pid: group for group in WORKERS for pid in descendants(processes.running[group].pid)}
    by_group: Counter[str] = Counter()
    for row in await pool.fetch("SELECT claimed_by, count(*) FROM herald.steps GROUP BY 1"):
        by_group[group_of.get(int(row["claimed_by"].split(":")[1]), "other")] += row["count"]
    assert set(by_group) == set(WORKERS) and min(by_group.values()) > 0, by_group

    # -- the leader dies -------------------------------------------------------------
    os.killpg(processes.running[leader].pid, signal.SIGKILL)
    processes.running[leader].wait()
    gap_invoices = await add_overdue_invoices(pool, 1)  # due while nobody may lead yet
    await complete_jobs(pool, job_ids[JOBS_BEFORE:])

    async def follower_leads() -> bool:
        holders = await pool.fetch(LOCK_HOLDERS, LEADER_LOCK)
        return len(holders) == 1 and bool(logged(processes, follower, "scheduler leads"))

    await wait_until(follower_leads, timeout=30, interval=0.1, message="the other daemon to take the lead")
    later_invoices = await add_overdue_invoices(pool, 2)
    invoices = first_invoices + gap_invoices + later_invoices
    await wait_until(lambda: delivered("Job ", JOBS), timeout=90, interval=0.1, message=f"{JOBS} job SMS delivered")
    await wait_until(lambda: delivered("Invoice ", len(invoices)), timeout=60, interval=0.1,
                     message="every overdue invoice's SMS")

    # The cron slot of the minute in progress is fired by whoever leads now.
    async def current_minute_ticked() -> bool:
        minute = await pool.fetchval("SELECT date_trunc('minute', now())")
        return f"Tick {minute.astimezone(dt.UTC).isoformat()}" in texts("Tick ")

    await wait_until(current_minute_ticked, timeout=30, interval=0.1, message="this minute's cron slot")

    async def settled() -> bool:
        return not await pool.fetchval(
            "SELECT count(*) FROM herald.runs WHERE status NOT IN ('completed', 'failed', 'skipped')")

    await wait_until(settled, timeout=60, interval=0.1, message="every run to finish")

    # -- exactly once, none missed ---------------------------------------------------
    titles = [r["title"] for r in await pool.fetch("SELECT title FROM jobs WHERE title LIKE 'Sc%'")]
    assert Counter(text.split()[1] for text in texts("Job ")) == Counter(titles)
    assert Counter(text.split()[1] for text in texts("Invoice ")) == Counter(invoices)
    ticks = Counter(text.split()[1] for text in texts("Tick "))
    assert set(ticks.values()) == {1}, ticks
    minutes = sorted(dt.datetime.fromisoformat(tick) for tick in ticks)
    assert minutes == [minutes[0] + dt.timedelta(minutes=n) for n in range(len(minutes))], minutes  # no gap
    fires = await pool.fetch(
        "SELECT f.fire_key, count(e.id) AS events FROM herald.schedule_fires f"
        " LEFT JOIN herald.events e ON e.id = f.event_id GROUP BY 1")
    assert all(row["events"] == 1 for row in fires)
    assert len(fires) == len(invoices) + len(minutes)
    statuses = {r["status"]: r["count"] for r in await pool.fetch("SELECT status, count(*) FROM herald.runs GROUP BY 1")}
    assert statuses == {"completed": JOBS + len(invoices) + len(minutes)}
    assert provider.requests == len(provider.delivered)  # not one request more than messages

    # After the kill, only the new leader evaluated: its fires of the gap and later batches are in its log.
    assert logged(processes, follower, "time triggers fired")
    assert processes.running[follower].poll() is None, processes.output(follower)[-3000:]
    print(f"\nscale-out: jobs={JOBS} invoices={len(invoices)} cron minutes={len(minutes)}"
          f" steps by worker group={dict(by_group)} leader={leader} -> {follower}")
