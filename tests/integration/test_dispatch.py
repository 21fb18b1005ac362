"""The daemon's dispatcher and sweeper against a real PostgreSQL.

The Redis side is the e2e tests' business; here ``send`` records what the
daemon would put on the queue.
"""

from __future__ import annotations

import asyncpg
import pytest

from config.database import create_pool
from daemon.demo import load_demo
from daemon.dispatcher import Dispatcher
from daemon.sweeper import Sweeper


@pytest.fixture
async def pool(db_url: str) -> asyncpg.Pool:
    pool = await create_pool(db_url, min_size=1, max_size=3)
    yield pool
    await pool.close()


async def make_events(conn: asyncpg.Connection, count: int) -> list[int]:
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new)"
        " SELECT '1', 'job', 'public.jobs', g::text, 'INSERT', 'job.created', '{}'::jsonb"
        " FROM generate_series(1, $1) g", count)
    return [r["id"] for r in await conn.fetch("SELECT id FROM herald.events ORDER BY id")]


async def test_drain_claims_in_batches_in_order(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    ids = await make_events(conn, 450)
    sent: list[list[int]] = []
    dispatcher = Dispatcher(pool, sent.append, batch_size=200, idle_s=1)
    assert await dispatcher.drain() == 450
    assert [len(batch) for batch in sent] == [200, 200, 50]
    assert [i for batch in sent for i in batch] == ids
    assert await dispatcher.drain() == 0
    states = await conn.fetch("SELECT DISTINCT state, dispatch_count FROM herald.events")
    assert [(s["state"], s["dispatch_count"]) for s in states] == [("dispatched", 1)]


async def test_events_go_back_to_pending_when_the_queue_is_down(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await make_events(conn, 3)

    def redis_down(ids: list[int]) -> None:
        raise ConnectionError("redis is down")

    assert await Dispatcher(pool, redis_down, batch_size=10, idle_s=1).drain() == 0
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE state = 'pending'") == 3


async def test_sweeper_resends_lost_messages_after_the_lease(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    ids = await make_events(conn, 3)
    await Dispatcher(pool, lambda ids: None, batch_size=10, idle_s=1).drain()  # message lost
    resent: list[tuple[str, list[int]]] = []
    sweeper = Sweeper(pool, lambda actor, ids: resent.append((actor, ids)), lease_s=60, interval_s=1)
    assert (await sweeper.sweep())["events"] == 0  # still within the lease
    await conn.execute("UPDATE herald.events SET dispatched_at = now() - interval '2 minutes'")
    assert (await sweeper.sweep())["events"] == 3
    assert resent == [("match", ids)]
    assert await conn.fetchval("SELECT max(dispatch_count) FROM herald.events") == 2


@pytest.mark.parametrize("idempotent_provider", [False, True])
async def test_sweeper_handles_a_step_stuck_sending_and_resends_a_pending_one(
    conn: asyncpg.Connection, pool: asyncpg.Pool, idempotent_provider: bool
) -> None:
    await load_demo(conn)
    await conn.execute("UPDATE jobs SET status = 'completed' WHERE id IN (1, 2)")
    workflow = await conn.fetchval("SELECT id FROM herald.workflows WHERE tenant_id = '1'")
    run_ids = []
    for event_id in [r["id"] for r in await conn.fetch("SELECT id FROM herald.events ORDER BY id")]:
        run_ids.append(await conn.fetchval(
            "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status) VALUES ('1', $1, $2, 'running')"
            " RETURNING id", workflow, event_id))
    stuck, waiting = run_ids
    step_ids = {}
    for run_id, status in ((stuck, "sending"), (waiting, "pending")):
        step_ids[run_id] = await conn.fetchval(
            "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config, status,"
            " updated_at) VALUES ($1, '1', 0, 'step-1', 'email', '{}', $2, now() - interval '1 hour')"
            " RETURNING id", run_id, status)
    resent: list[tuple[str, list[int]]] = []
    sweeper = Sweeper(pool, lambda a, i: resent.append((a, i)), lease_s=30, interval_s=1,
                      resend_safe=["email"] if idempotent_provider else [])
    counts = await sweeper.sweep()
    assert counts["steps"] == 1
    run = await conn.fetchrow("SELECT status, error FROM herald.runs WHERE id = $1", stuck)
    stuck_status = await conn.fetchval("SELECT status FROM herald.steps WHERE id = $1", step_ids[stuck])
    if idempotent_provider:
        # The provider deduplicates by key: send it again rather than bother a person.
        assert counts["resent"] == 1 and counts["parked"] == 0
        assert sorted(resent) == [("email", [step_ids[stuck]]), ("email", [step_ids[waiting]])]
        assert (run["status"], stuck_status) == ("running", "pending")
    else:
        assert counts["parked"] == 1 and counts["resent"] == 0
        assert resent == [("email", [step_ids[waiting]])]
        assert run["status"] == "failed" and "outcome unknown" in run["error"]
        assert stuck_status == "unknown"


async def test_tenants_take_turns_when_one_bursts(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new)"
        " SELECT CASE WHEN g <= 300 THEN 'busy' ELSE 'quiet' END, 'job', 'public.jobs', g::text, 'INSERT',"
        " 'job.created', '{}'::jsonb FROM generate_series(1, 303) g")
    sent: list[list[int]] = []
    await Dispatcher(pool, sent.append, batch_size=10, idle_s=1).drain()
    first = await conn.fetch("SELECT tenant_id FROM herald.events WHERE id = ANY($1)", sent[0])
    # The quiet tenant's three events go out in the first batch, not after the busy one's 300.
    assert sorted(r["tenant_id"] for r in first).count("quiet") == 3
    assert sum(len(batch) for batch in sent) == 303
