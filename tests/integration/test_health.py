"""/health over a real database and Redis: each check fails on its own, and says so."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis
from aiohttp.test_utils import TestClient
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from config.database import connection
from config.embedded_layout import EmbeddedLayout
from config.settings import Settings
from dashboard.app import create_app

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def health_settings(settings: Settings) -> Settings:
    # A liveness of minutes, so that a heartbeat written just before the request
    # is live however slow the machine is; stale rows are written hours old.
    return settings.replace(heartbeat_interval_s=60.0)


@pytest.fixture
def make_client(health_settings: Settings, aiohttp_client: Any) -> MakeClient:
    # Settings (and so the test database) first: torn down after the apps close their pools.
    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(health_settings.replace(**changes)))
    return make


async def beat(conn: asyncpg.Connection, instance: str, kind: str, *, age: str = "0 seconds",
               stopped: bool = False) -> None:
    """A heartbeat row as a daemon or worker process writes it, last seen ``age`` ago."""
    await conn.execute(
        "INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, stopped_at, kind)"
        " VALUES ($1, 'host-a', 4242, clock_timestamp() - interval '1 day',"
        "         clock_timestamp() - $2::text::interval, CASE WHEN $3 THEN clock_timestamp() END, $4)",
        instance, age, stopped, kind)


async def everything_running(conn: asyncpg.Connection) -> None:
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-1", "worker")


async def get_health(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health")
    return response.status, await response.json()


async def test_healthy_when_daemon_and_worker_beat_and_nothing_waits(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await everything_running(conn)
    status, body = await get_health(await make_client())
    assert (status, body["ok"], body["failing"]) == (200, True, [])
    checks = body["checks"]
    assert list(checks) == ["database", "redis", "daemon", "workers", "outbox", "wal_capture", "queues",
                            "dead_letters", "stuck_steps"]
    assert checks["wal_capture"] == {"ok": True, "tables": 0}
    assert all(check["ok"] for check in checks.values())
    assert [d["instance"] for d in checks["daemon"]["instances"]] == ["daemon-1"]
    assert checks["workers"]["processes"] == [{
        "instance": "worker-1", "hostname": "host-a", "pid": 4242, "live": True,
        "seconds_since_heartbeat": checks["workers"]["processes"][0]["seconds_since_heartbeat"]}]
    assert checks["outbox"]["unmatched"] == 0 and checks["outbox"]["oldest_unmatched_s"] is None
    assert set(checks["queues"]["depth"]) == {"match", "enrich", "email", "sms", "webhook", "records"}
    assert checks["dead_letters"]["total"] == 0 and checks["stuck_steps"]["total"] == 0


async def test_nothing_running_fails_daemon_and_workers(make_client: MakeClient) -> None:
    status, body = await get_health(await make_client())
    assert (status, body["ok"], body["failing"]) == (503, False, ["daemon", "workers"])
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]


async def test_no_worker_process_fails_workers(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-gone", "worker", stopped=True)  # said it stopped: not a worker
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["workers"])
    assert body["checks"]["workers"]["live"] == 0 and body["checks"]["workers"]["processes"] == []


async def test_stale_worker_heartbeat_fails_workers(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await beat(conn, "daemon-1", "daemon")
    await beat(conn, "worker-hung", "worker", age="10 minutes")  # liveness is 3 minutes
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["workers"])
    workers = body["checks"]["workers"]
    assert (workers["live"], workers["stale"], workers["liveness_s"]) == (0, 1, 180.0)
    [process] = workers["processes"]
    assert process["instance"] == "worker-hung" and process["live"] is False
    assert process["seconds_since_heartbeat"] >= 600


async def test_stale_daemon_heartbeat_fails_daemon(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await beat(conn, "daemon-hung", "daemon", age="10 minutes")
    await beat(conn, "worker-1", "worker")
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["daemon"])
    assert body["checks"]["daemon"]["instances"][0]["live"] is False


async def insert_events(conn: asyncpg.Connection, count: int, *, age: str, state: str = "pending") -> None:
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, operation, type, created_at, state)"
        " SELECT '1', 'job', 'public.jobs', 'UPDATE', 'job.updated', clock_timestamp() - $2::text::interval, $3"
        " FROM generate_series(1, $1)", count, age, state)


async def test_old_pending_events_fail_outbox(make_client: MakeClient, conn: asyncpg.Connection) -> None:
    await everything_running(conn)
    await insert_events(conn, 5000, age="1 hour", state="matched")  # done: not a backlog
    await insert_events(conn, 1000, age="5 minutes")  # the lag limit is 60 s
    await insert_events(conn, 3, age="0 seconds", state="dispatched")
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["outbox"])
    outbox = body["checks"]["outbox"]
    assert (outbox["unmatched"], outbox["pending"], outbox["dispatched"]) == (1003, 1000, 3)
    assert 300 <= outbox["oldest_unmatched_s"] < 3600 and outbox["max_lag_s"] == 60.0


async def test_too_many_waiting_events_fail_outbox(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await everything_running(conn)
    await insert_events(conn, 1000, age="0 seconds")
    status, body = await get_health(await make_client())
    assert status == 200  # fresh, and within the default backlog of 10,000
    status, body = await get_health(await make_client(health_backlog=999))
    assert (status, body["failing"]) == (503, ["outbox"])
    assert body["checks"]["outbox"]["max_unmatched"] == 999


async def test_a_dead_letter_fails_dead_letters(
    make_client: MakeClient, conn: asyncpg.Connection, redis_url: str
) -> None:
    await everything_running(conn)
    client = redis.Redis.from_url(redis_url)
    try:
        client.zadd("dramatiq:sms.XQ", {"message-1": 1})
    finally:
        client.close()
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["dead_letters"])
    dead = body["checks"]["dead_letters"]
    assert (dead["total"], dead["by_queue"]) == (1, {"sms": 1})
    assert body["checks"]["queues"]["depth"]["sms"]["dead"] == 1


async def test_queue_depth_over_the_limit_fails_queues(
    make_client: MakeClient, conn: asyncpg.Connection, redis_url: str
) -> None:
    await everything_running(conn)
    # Messages put where Dramatiq's own Redis broker puts them: 4 ready on "email",
    # 10 delayed on "email" (its queue email.DQ), which are not ready work.
    broker = RedisBroker(url=redis_url)
    try:
        for number in range(4):
            broker.enqueue(Message(queue_name="email", actor_name="email", args=(number,),
                                   kwargs={}, options={}))
        for number in range(10):
            broker.enqueue(Message(queue_name="email", actor_name="email", args=(number,),
                                   kwargs={}, options={}), delay=600_000)
    finally:
        broker.close()
    status, body = await get_health(await make_client(health_queue_depth=4))
    assert status == 200  # at the limit, not over it
    assert body["checks"]["queues"]["depth"]["email"] == {"ready": 4, "unacked": 0, "delayed": 10, "dead": 0}
    status, body = await get_health(await make_client(health_queue_depth=3))
    assert (status, body["failing"]) == (503, ["queues"])
    assert body["checks"]["queues"]["over_max"] == ["email"]


async def add_step(conn: asyncpg.Connection, run_id: int, position: int, status: str, *,
                   claimed_by: str | None = None, age: str = "0 seconds") -> int:
    return int(await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        "                          claimed_by, updated_at)"
        " VALUES ($1, '1', $2::int, 'step-' || $2::int, 'sms', 'sms', '{}', $3, $4, clock_timestamp() - $5::text::interval)"
        " RETURNING id", run_id, position, status, claimed_by, age))


async def test_a_step_sending_on_a_dead_worker_fails_stuck_steps(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await everything_running(conn)
    await beat(conn, "worker-dead", "worker", age="10 minutes")
    workflow = await conn.fetchval(
        "INSERT INTO herald.workflows (tenant_id, name, trigger_type, definition)"
        " VALUES ('1', 'Job Completed', 'job.updated', '{}') RETURNING id")
    await insert_events(conn, 1, age="0 seconds", state="matched")
    run_id = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status)"
        " SELECT '1', $1, max(id), 'running' FROM herald.events RETURNING id", workflow)
    await add_step(conn, run_id, 0, "sending", claimed_by="worker-1")  # its worker is live
    await add_step(conn, run_id, 1, "sending")  # no claimant recorded, within the lease
    await add_step(conn, run_id, 2, "unknown", age="2 days")  # parked before the last day
    status, body = await get_health(await make_client())
    assert status == 200 and body["checks"]["stuck_steps"]["total"] == 0

    orphan = await add_step(conn, run_id, 3, "sending", claimed_by="worker-dead")
    status, body = await get_health(await make_client())
    assert (status, body["failing"]) == (503, ["stuck_steps"])
    stuck = body["checks"]["stuck_steps"]
    assert (stuck["sending_stalled"], stuck["unknown_last_24h"], stuck["total"]) == (1, 0, 1)
    assert [(s["step_id"], s["status"], s["claimed_by"]) for s in stuck["oldest"]] == [
        (orphan, "sending", "worker-dead")]

    await add_step(conn, run_id, 4, "unknown", age="1 hour")
    status, body = await get_health(await make_client(health_stuck_steps=1))
    assert (status, body["failing"]) == (503, ["stuck_steps"])
    assert body["checks"]["stuck_steps"]["unknown_last_24h"] == 1
    status, body = await get_health(await make_client(health_stuck_steps=2))
    assert status == 200

    # Sending for longer than the lease (2 s here): stuck whoever claimed it.
    await add_step(conn, run_id, 5, "sending", claimed_by="worker-1", age="1 minute")
    await add_step(conn, run_id, 6, "sending", age="1 minute")
    status, body = await get_health(await make_client(health_stuck_steps=2))
    assert (status, body["failing"]) == (503, ["stuck_steps"])
    assert body["checks"]["stuck_steps"]["sending_stalled"] == 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redis_unreachable_fails_redis_and_database_checks_still_answer(
    make_client: MakeClient, conn: asyncpg.Connection
) -> None:
    await everything_running(conn)
    await insert_events(conn, 2, age="0 seconds")
    client = await make_client(redis_url=f"redis://:s3cret-pass@127.0.0.1:{closed_port()}/0")
    response = await client.get("/health")
    text = await response.text()
    body = await response.json()
    assert (response.status, body["failing"]) == (503, ["redis", "queues", "dead_letters"])
    assert body["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}
    assert body["checks"]["database"]["ok"] and body["checks"]["workers"]["live"] == 1
    assert body["checks"]["outbox"]["unmatched"] == 2
    assert "s3cret" not in text and "127.0.0.1" not in text


async def test_database_unreachable_fails_database_and_redis_checks_still_answer(
    make_client: MakeClient, db_url: str, layout: EmbeddedLayout, redis_url: str
) -> None:
    client = await make_client()  # its pool is open
    name = urlsplit(db_url).path.lstrip("/")
    async with connection(layout.database_url) as admin:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    status, body = await get_health(client)
    assert status == 503
    assert body["failing"] == ["database", "daemon", "workers", "outbox", "wal_capture", "stuck_steps"]
    assert body["checks"]["daemon"] == {"ok": False, "error": "database unavailable"}
    assert body["checks"]["redis"]["ok"] and body["checks"]["queues"]["ok"]
