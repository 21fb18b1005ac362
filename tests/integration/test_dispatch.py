"""The daemon's dispatcher and sweeper against a real PostgreSQL.

The Redis side is the e2e tests' business; here ``send`` records what the
daemon would put on the queue.
"""

from __future__ import annotations

import json

import asyncpg
import pytest
import redis

from actors.store import CLAIM_EVENTS
from daemon import outbox
from daemon.dispatcher import Dispatcher
from daemon.sweeper import Sweeper
from tests.conftest import a_run, wait_until


async def make_events(conn: asyncpg.Connection, count: int, tenant: str = "'1'") -> list[int]:
    """``count`` pending events; ``tenant``: the tenant of the g-th (1..count), in SQL."""
    await conn.execute(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new)"
        f" SELECT {tenant}, 'job', 'public.jobs', g::text, 'INSERT', 'job.created', '{{}}'::jsonb"
        " FROM generate_series(1, $1) g", count)
    return [r["id"] for r in await conn.fetch("SELECT id FROM herald.events ORDER BY id")]


async def test_drain_claims_in_batches_in_order(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    ids = await make_events(conn, 450)
    sent: list[list[int]] = []
    dispatcher = Dispatcher(pool, sent.append, batch_size=200, idle_s=1, max_in_flight=5)
    assert await dispatcher.drain() == 450
    assert [len(batch) for batch in sent] == [200, 200, 50]
    assert [i for batch in sent for i in batch] == ids
    assert await dispatcher.drain() == 0
    states = await conn.fetch("SELECT DISTINCT state, dispatch_count FROM herald.events")
    assert [(s["state"], s["dispatch_count"]) for s in states] == [("dispatched", 1)]


async def add_event(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, new)"
        " VALUES ('1', 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', '{}') RETURNING id")


async def test_events_wait_to_go_together_while_earlier_messages_are_unmatched(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    now = [0.0]
    sent: list[list[int]] = []
    dispatcher = Dispatcher(pool, sent.append, batch_size=200, idle_s=1, max_in_flight=2,
                            hold_limit_s=1.0, clock=lambda: now[0])
    # Workers keeping up: each event goes the moment it is drained, alone.
    first, second = await add_event(conn), await add_event(conn)
    assert await dispatcher.drain() == 2
    assert sent == [[first, second]]
    third = await add_event(conn)
    assert await dispatcher.drain() == 1 and sent[-1] == [third]
    # Two messages unmatched: later events wait in the outbox, still pending.
    held = [await add_event(conn) for _ in range(3)]
    assert await dispatcher.drain() == 0 and dispatcher.holding
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE id = ANY($1) AND state = 'pending'",
                               held) == 3
    # New events do not wake a dispatcher holding events back: they go with the
    # held ones, and it does not ask PostgreSQL again for each of them.
    dispatcher.notified("")
    assert not dispatcher._wake.is_set()
    # The match actor's notification wakes a dispatcher holding events back...
    dispatcher.notified("matched")
    assert dispatcher._wake.is_set()
    dispatcher._wake.clear()
    # The first message matched: the held events go out together, in one message.
    await conn.execute("UPDATE herald.events SET state = 'matched' WHERE id = ANY($1)", [first, second])
    assert await dispatcher.drain() == 3
    assert sent[-1] == held and not dispatcher.holding
    # ...and not one holding nothing back (a drain would find nothing), while new
    # events always do.
    dispatcher.notified("matched")
    assert not dispatcher._wake.is_set()
    dispatcher.notified("")
    assert dispatcher._wake.is_set()
    dispatcher._wake.clear()
    # Nothing matched for longer than the hold limit (a lost message): it stops holding.
    late = await add_event(conn)
    assert await dispatcher.drain() == 0
    now[0] = 1.5
    assert await dispatcher.drain() == 1 and sent[-1] == [late]
    assert len(sent) == 4


async def test_the_match_actors_notification_names_the_message_it_matched(
    conn: asyncpg.Connection, pool: asyncpg.Pool, db_url: str
) -> None:
    sent: list[list[int]] = []
    dispatcher = Dispatcher(pool, sent.append, batch_size=200, idle_s=1, max_in_flight=2)
    first = await add_event(conn)
    assert await dispatcher.drain() == 1
    second = await add_event(conn)
    assert await dispatcher.drain() == 1
    held = await add_event(conn)
    assert await dispatcher.drain() == 0 and dispatcher.holding

    # The match actor's claim, as the worker makes it, heard as the daemon hears it.
    heard: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("herald_events", lambda *args: heard.append(args[-1]))
    async with pool.acquire() as worker, worker.transaction():
        assert len(await worker.fetch(CLAIM_EVENTS, [first])) == 1

    async def notification() -> list[str]:
        return heard

    await wait_until(notification, timeout=5, message="the match actor's notification")
    await listener.close()
    assert heard == [f"matched:{first}"]

    # The dispatcher forgets that message on the notification alone: the first
    # event is still 'dispatched' in PostgreSQL, yet the held event goes out.
    dispatcher.notified(heard[0])
    assert dispatcher._wake.is_set()
    assert [m.ids for m in dispatcher.in_flight] == [[second]]
    assert await dispatcher.drain() == 1 and sent[-1] == [held]
    # A notification naming no message it sent, or none at all (a worker of an
    # earlier version), changes nothing it counts.
    dispatcher.notified("matched:999999")
    dispatcher.notified("matched")
    assert [m.ids for m in dispatcher.in_flight] == [[second], [held]]


async def test_events_go_back_to_pending_when_the_queue_is_down(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await make_events(conn, 3)

    def redis_down(ids: list[int]) -> None:
        raise redis.ConnectionError("Error 111 connecting to redis")

    assert await Dispatcher(pool, redis_down, batch_size=10, idle_s=1, max_in_flight=2).drain() == 0
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE state = 'pending'") == 3


async def test_sweeper_resends_lost_messages_after_the_lease(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    ids = await make_events(conn, 3)
    await Dispatcher(pool, lambda ids: None, batch_size=10, idle_s=1, max_in_flight=2).drain()  # message lost
    resent: list[tuple[str, list[int]]] = []
    sweeper = Sweeper(pool, lambda actor, ids: resent.append((actor, ids)), lease_s=60, interval_s=1,
                      liveness_s=15, abandoned_s=30)
    assert (await sweeper.sweep())["events"] == 0  # still within the lease
    await conn.execute("UPDATE herald.events SET dispatched_at = now() - interval '2 minutes'")
    assert (await sweeper.sweep())["events"] == 3
    assert resent == [("match", ids)]
    assert await conn.fetchval("SELECT max(dispatch_count) FROM herald.events") == 2


LIVE, DEAD = "live-worker", "dead-worker"


@pytest.mark.parametrize(
    ("claimed_by", "sending_for_s", "message", "expected"),
    [
        # The worker that claimed it is gone: settle it at once, by what its message row says.
        (DEAD, 20, None, "resent"),  # never reached the provider
        (DEAD, 20, ("sending", False), "parked"),  # may have reached one that does not drop repeats
        (DEAD, 20, ("unknown", False), "parked"),
        (DEAD, 20, ("sending", True), "resent"),  # the provider drops repeats of the key
        (DEAD, 20, ("retrying", False), "resent"),  # failed before the provider took it
        (DEAD, 20, ("sent", False), "resent"),  # delivered; the resend only records it
        # Its worker is alive and within the actor's time limit: a slow provider, not a stall.
        (LIVE, 20, ("sending", False), "left"),
        (LIVE, 20, None, "left"),
        # Longer than any actor may run: abandoned even by a live worker.
        (LIVE, 120, ("sending", False), "parked"),
        (LIVE, 120, ("sending", True), "resent"),
        # Claimed before workers beat (no claimant): the lease alone decides.
        (None, 20, ("sending", False), "left"),
        (None, 120, ("sending", False), "parked"),
    ],
)
async def test_sweeper_settles_a_step_stuck_sending_by_its_worker_and_its_message(
    conn: asyncpg.Connection, pool: asyncpg.Pool, claimed_by: str | None, sending_for_s: int,
    message: tuple[str, bool] | None, expected: str,
) -> None:
    run_id = await a_run(conn)
    for instance, age_s in ((LIVE, 1), (DEAD, 60)):
        await conn.execute(
            "INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, kind)"
            " VALUES ($1, 'host', 1, now(), now() - make_interval(secs => $2), 'worker')", instance, age_s)
    step_id = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        " claimed_by, updated_at) VALUES ($1, '1', 0, 'step-1', 'sms', 'sms', '{}', 'sending', $2,"
        " now() - make_interval(secs => $3)) RETURNING id", run_id, claimed_by, sending_for_s)
    if message is not None:
        await conn.execute(
            "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key,"
            " recipient, body, status, resend_safe) VALUES ('1', $1, $2, 'sms', 'p', 'k', '+1555', 'hi', $3, $4)",
            run_id, step_id, *message)
    resent: list[tuple[str, list[int]]] = []
    sweeper = Sweeper(pool, lambda a, i: resent.append((a, i)), lease_s=30, interval_s=1,
                      liveness_s=15, abandoned_s=60)
    counts = await sweeper.sweep()
    step = await conn.fetchrow("SELECT status, claimed_by FROM herald.steps WHERE id = $1", step_id)
    run = await conn.fetchrow("SELECT status, error FROM herald.runs WHERE id = $1", run_id)
    if expected == "resent":
        assert (counts["resent"], counts["parked"]) == (1, 0)
        assert resent == [("sms", [step_id])]
        assert (step["status"], step["claimed_by"], run["status"]) == ("pending", None, "running")
    elif expected == "parked":
        assert (counts["resent"], counts["parked"]) == (0, 1) and resent == []
        assert step["status"] == "unknown"
        assert run["status"] == "failed" and "outcome unknown" in run["error"]
    else:
        assert (counts["resent"], counts["parked"]) == (0, 0) and resent == []
        assert (step["status"], run["status"]) == ("sending", "running")


async def test_sweeper_resends_a_pending_step_nobody_started(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    run_id = await a_run(conn)
    step_id = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        " updated_at) VALUES ($1, '1', 0, 'step-1', 'email', 'email', '{}', 'pending', now() - interval '1 hour')"
        " RETURNING id", run_id)
    resent: list[tuple[str, list[int]]] = []
    sweeper = Sweeper(pool, lambda a, i: resent.append((a, i)), lease_s=30, interval_s=1,
                      liveness_s=15, abandoned_s=60)
    assert (await sweeper.sweep())["steps"] == 1
    assert resent == [("email", [step_id])]


async def test_tenants_take_turns_when_one_bursts(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    await make_events(conn, 303, tenant="CASE WHEN g <= 300 THEN 'busy' ELSE 'quiet' END")
    sent: list[list[int]] = []
    await Dispatcher(pool, sent.append, batch_size=10, idle_s=1, max_in_flight=100).drain()
    first = await conn.fetch("SELECT tenant_id FROM herald.events WHERE id = ANY($1)", sent[0])
    # The quiet tenant's three events go out in the first batch, not after the busy one's 300.
    assert sorted(r["tenant_id"] for r in first).count("quiet") == 3
    assert sum(len(batch) for batch in sent) == 303


async def test_many_tenants_waiting_fill_each_batch_in_turns(conn: asyncpg.Connection, pool: asyncpg.Pool) -> None:
    # 300 tenants with two events each, and one with 500: more tenants than a
    # batch holds, so each offers only its oldest few.
    await make_events(conn, 1100, tenant="CASE WHEN g <= 500 THEN 'busy' ELSE 't' || (g % 300) END")
    sent: list[list[int]] = []
    await Dispatcher(pool, sent.append, batch_size=200, idle_s=1, max_in_flight=100).drain()
    assert sorted(i for batch in sent for i in batch) == [
        r["id"] for r in await conn.fetch("SELECT id FROM herald.events ORDER BY id")]
    assert all(len(batch) == 200 for batch in sent[:-1])
    tenant_of = {r["id"]: r["tenant_id"] for r in await conn.fetch("SELECT id, tenant_id FROM herald.events")}
    # The first batch is 200 tenants' oldest events, one each: the busy tenant's 500 wait their turns.
    assert len({tenant_of[i] for i in sent[0]}) == 200
    assert [tenant_of[i] for i in sent[0]].count("busy") == 1
    # Every small tenant's first event goes out before any one's second.
    order = {i: n for n, i in enumerate(i for batch in sent for i in batch)}
    small = sorted((i for i in order if tenant_of[i] != "busy"))
    firsts = {min(i for i in small if tenant_of[i] == t) for t in {tenant_of[i] for i in small}}
    assert max(order[i] for i in firsts) < min(order[i] for i in small if i not in firsts)


async def test_a_claim_reads_what_its_batch_needs_not_the_backlog(conn: asyncpg.Connection) -> None:
    # A bulk UPDATE of a watched table leaves a long backlog: claiming from it
    # must not rank every pending event each time (draining would cost its square).
    async def backlog(count: int) -> None:
        await make_events(conn, count, tenant="CASE WHEN g % 100 = 0 THEN 'other' ELSE 'bulk' END")
        await conn.execute("ANALYZE herald.events")

    async def pages_read_by_a_claim() -> int:
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {outbox.CLAIM_PENDING}", 10)
        top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
        assert top["Actual Rows"] == 10
        return top["Shared Hit Blocks"] + top["Shared Read Blocks"]

    await backlog(2_000)
    await pages_read_by_a_claim()  # the first claim after the load sets hint bits: not counted
    small = await pages_read_by_a_claim()
    await backlog(30_000)
    await pages_read_by_a_claim()
    large = await pages_read_by_a_claim()
    # Ranking the whole backlog read its index and heap: some 800 more pages for 30,000 more events.
    assert large - small < 50, (small, large)
