"""Retention: old rows go in small batches, nothing newer than the cut-off and
nothing still needed is touched, only the leader prunes, and `herald prune`.

Rows are written with explicit timestamps relative to one ``NOW``, so the tests
control the clock and pass at any hour in any time zone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from config.database import connection
from config.settings import Settings
from daemon.cli import main as herald
from daemon.retention import Retention, RetentionPolicy, prune
from daemon.scheduler import Scheduler
from daemon.workflows import EXPORT

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = RetentionPolicy(keep=30 * DAY, keep_failed=90 * DAY, pause_s=0)


def ago(days: float) -> dt.datetime:
    return NOW - days * DAY


async def a_workflow(conn: asyncpg.Connection, tenant: str = "t", **definition: Any) -> uuid.UUID:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO herald.workflows (tenant_id, source_id, name, trigger_type, definition)"
        " VALUES ($1, $2, $2, 'job_completed', $3) RETURNING id",
        tenant, f"wf-{uuid.uuid4().hex[:8]}", {"name": "w", **definition})


async def an_event(conn: asyncpg.Connection, days: float, state: str = "matched", tenant: str = "t") -> int:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, state,"
        " created_at, matched_at) VALUES ($1, 'job', 'public.jobs', '1', 'UPDATE', 'job.updated', $2, $3,"
        " CASE WHEN $2 IN ('matched', 'failed') THEN $3::timestamptz END) RETURNING id",
        tenant, state, ago(days))


async def a_run(conn: asyncpg.Connection, workflow: uuid.UUID, days: float, status: str = "completed", *,
                step: str = "sent", event: int | None = None, tenant: str = "t") -> int:
    """A run finished ``days`` ago, from an event of the same age, with one step, its
    message (to ann@example.com) and a retry."""
    at = ago(days)
    event = event or await an_event(conn, days, tenant=tenant)
    run = await conn.fetchval(
        "INSERT INTO herald.runs (tenant_id, workflow_id, event_id, status, created_at, updated_at, completed_at)"
        " VALUES ($1, $2, $3, $4, $5, $5, $5) RETURNING id", tenant, workflow, event, status, at)
    step_id = await conn.fetchval(
        "INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, queue, config, status,"
        " created_at, updated_at) VALUES ($1, $2, 0, 'email', 'email', 'email', '{}', $3, $4, $4) RETURNING id",
        run, tenant, step, at)
    await conn.execute(
        "INSERT INTO herald.messages (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient,"
        " body, status, created_at) VALUES ($1, $2, $3, 'email', 'capture', $4, 'ann@example.com', 'hi',"
        " 'sent', $5)", tenant, run, step_id, f"key-{run}", at)
    await conn.execute(
        "INSERT INTO herald.retries (tenant_id, run_id, step_id, requested_by, reason, requested_at,"
        " steps_reset, steps_kept) VALUES ($1, $2, $3, 'ops', 'test', $4, 1, 0)", tenant, run, step_id, at)
    return run  # type: ignore[no-any-return]


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {table: await conn.fetchval(f"SELECT count(*) FROM herald.{table}")
            for table in ("runs", "steps", "messages", "retries", "events", "schedule_fires", "heartbeats")}


async def existing(conn: asyncpg.Connection, runs: list[int]) -> set[int]:
    return {r["id"] for r in await conn.fetch("SELECT id FROM herald.runs WHERE id = ANY($1::bigint[])", runs)}


async def test_old_finished_runs_go_with_their_rows_and_nothing_newer_is_touched(conn: asyncpg.Connection) -> None:
    workflow = await a_workflow(conn)
    old = [await a_run(conn, workflow, 31), await a_run(conn, workflow, 45, "cancelled"),
           await a_run(conn, workflow, 400, "skipped")]
    new = [await a_run(conn, workflow, 29.9), await a_run(conn, workflow, 0)]
    lone_old, lone_new = await an_event(conn, 31), await an_event(conn, 29)  # events that matched nothing
    before = await counts(conn)
    [exported] = await conn.fetch(EXPORT, "t")

    report = await prune(conn, POLICY, now=NOW)

    assert report.deleted == {"runs": 3, "steps": 3, "messages": 3, "retries": 3, "events": 4,
                              "schedule_fires": 0, "heartbeats": 0}
    assert await existing(conn, old + new) == set(new)
    after = await counts(conn)
    assert {t: before[t] - after[t] for t in after} == report.deleted
    events = {r["id"] for r in await conn.fetch("SELECT id FROM herald.events")}
    assert lone_new in events and lone_old not in events
    # The newer runs' rows are whole.
    for run in new:
        assert await conn.fetchval("SELECT count(*) FROM herald.steps WHERE run_id = $1", run) == 1
        assert await conn.fetchval("SELECT count(*) FROM herald.messages WHERE run_id = $1", run) == 1
    # A workflow's execution count does not shrink when its runs are pruned (skipped ones never counted).
    [still] = await conn.fetch(EXPORT, "t")
    assert still["execution_count"] == exported["execution_count"] == 4


async def test_what_is_in_flight_parked_or_failed_recently_is_kept(conn: asyncpg.Connection) -> None:
    workflow = await a_workflow(conn)
    kept = [
        await a_run(conn, workflow, 200, "running", step="waiting"),  # a delay step, its event too
        await a_run(conn, workflow, 200, "pending", step="pending"),
        await a_run(conn, workflow, 200, "failed", step="unknown"),  # parked: a person decides
        await a_run(conn, workflow, 60, "failed", step="failed"),  # failed: kept 90 days
        await a_run(conn, workflow, 200, "completed", step="sending"),  # a step still in flight
    ]
    gone = await a_run(conn, workflow, 91, "failed", step="failed")
    pending, dispatched = await an_event(conn, 200, "pending"), await an_event(conn, 200, "dispatched")

    report = await prune(conn, POLICY, now=NOW)

    assert (report.deleted["runs"], report.deleted["events"]) == (1, 1)
    assert await existing(conn, [*kept, gone]) == set(kept)
    kept_events = await conn.fetchval(
        "SELECT count(*) FROM herald.events e WHERE EXISTS (SELECT FROM herald.runs r WHERE r.event_id = e.id)")
    assert kept_events == len(kept)
    assert await conn.fetchval("SELECT count(*) FROM herald.events WHERE id = ANY($1::bigint[])",
                               [pending, dispatched]) == 2
    # Failed runs kept for ever when their retention is off.
    forever = RetentionPolicy(keep=30 * DAY, keep_failed=None, pause_s=0)
    old_failed = await a_run(conn, workflow, 3000, "failed", step="failed")
    assert (await prune(conn, forever, now=NOW)).deleted["runs"] == 0
    assert await existing(conn, [old_failed]) == {old_failed}


async def test_runs_a_rate_limit_or_once_per_period_still_counts_are_kept(conn: asyncpg.Connection) -> None:
    plain = await a_workflow(conn, tenant="t")
    # One workflow of tenant u counts messages over 60 days: all of u's runs count towards it.
    await a_workflow(conn, tenant="u", rate_limit={"per_recipient": 3, "window": "60d"})
    other_u = await a_workflow(conn, tenant="u")
    once = await a_workflow(conn, tenant="t", dedupe={"once_per": "45d"})
    await conn.execute("INSERT INTO herald.tenant_settings (tenant_id, rate_limit) VALUES ('v', $1)",
                       {"per_recipient": 1, "window": "50d"})
    in_v = await a_workflow(conn, tenant="v")

    gone = [await a_run(conn, plain, 40), await a_run(conn, once, 46), await a_run(conn, other_u, 61, tenant="u"),
            await a_run(conn, in_v, 51, tenant="v")]
    kept = [await a_run(conn, other_u, 40, tenant="u"), await a_run(conn, once, 40),
            await a_run(conn, in_v, 40, tenant="v")]

    await prune(conn, POLICY, now=NOW)

    assert await existing(conn, gone + kept) == set(kept)


async def test_pruning_goes_in_batches_and_a_dry_run_counts_the_same_and_deletes_nothing(
    conn: asyncpg.Connection,
) -> None:
    workflow = await a_workflow(conn)
    for _ in range(35):
        await a_run(conn, workflow, 40)
    small = RetentionPolicy(keep=30 * DAY, keep_failed=90 * DAY, batch_size=10, pause_s=0)
    before = await counts(conn)

    dry = await prune(conn, small, now=NOW, dry_run=True)

    assert await counts(conn) == before
    assert dry.deleted["runs"] == dry.deleted["events"] == dry.deleted["messages"] == 35
    real = await prune(conn, small, now=NOW)
    assert real.deleted == dry.deleted
    assert real.batches == dry.batches == [("runs", 10), ("runs", 10), ("runs", 10), ("runs", 5),
                                           ("events", 10), ("events", 10), ("events", 10), ("events", 5)]
    assert (await counts(conn))["runs"] == 0

    # A budget of batches per pass leaves the rest for the next pass.
    for _ in range(25):
        await a_run(conn, workflow, 40)
    budget = RetentionPolicy(keep=30 * DAY, keep_failed=None, batch_size=10, pause_s=0, max_batches=2)
    first = await prune(conn, budget, now=NOW)
    assert (first.deleted["runs"], first.complete) == (20, False)
    assert (await prune(conn, budget, now=NOW)).deleted["runs"] == 5


async def test_replaced_schedule_fires_and_long_stopped_heartbeats_go(conn: asyncpg.Connection) -> None:
    workflow = await a_workflow(conn)
    fires = [("42:2026-01-01", "42", 200), ("42:2026-02-01", "42", 100),  # replaced by the next one
             ("42:2026-03-01", "42", 40),  # the entity's latest: it would fire again without it
             ("7:2026-01-01", "7", 300),  # still the only one for its entity (an invoice still overdue)
             ("9:a", None, 300), ("9:b", None, 200)]  # unnamed (recorded before 017): kept
    for key, row_id, days in fires:
        await conn.execute("INSERT INTO herald.schedule_fires (workflow_id, fire_key, row_id, fired_at)"
                           " VALUES ($1, $2, $3, $4)", workflow, key, row_id, ago(days))
    for instance, seen, stopped in (("gone", 31, 31), ("crashed", 45, None), ("live", 0, None), ("recent", 2, 2)):
        await conn.execute("INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at,"
                           " stopped_at) VALUES ($1, 'h', 1, $2, $2, $3)", instance, ago(seen),
                           ago(stopped) if stopped is not None else None)

    report = await prune(conn, POLICY, now=NOW)

    assert (report.deleted["schedule_fires"], report.deleted["heartbeats"]) == (2, 2)
    left = {r["fire_key"] for r in await conn.fetch("SELECT fire_key FROM herald.schedule_fires")}
    assert left == {"42:2026-03-01", "7:2026-01-01", "9:a", "9:b"}
    beats = {r["instance"] for r in await conn.fetch("SELECT instance FROM herald.heartbeats")}
    assert beats == {"live", "recent"}


async def test_only_the_leader_prunes(pool: asyncpg.Pool, db_url: str, conn: asyncpg.Connection) -> None:
    workflow = await a_workflow(conn)
    for _ in range(3):
        await a_run(conn, workflow, 40)
    schedulers = [Scheduler(db_url, pool, interval_s=60) for _ in range(2)]
    try:
        daemons = [Retention(pool, POLICY, scheduler.is_leader) for scheduler in schedulers]
        reports = await asyncio.gather(*(daemon.tick() for daemon in daemons))
        leaders = [i for i, report in enumerate(reports) if report is not None]
        assert len(leaders) == 1
        assert reports[leaders[0]] is not None and reports[leaders[0]].deleted["runs"] == 3
        assert await conn.fetchval("SELECT count(*) FROM herald.runs") == 0
        # The other keeps not pruning while the leader lives; it takes over when the leader is gone.
        follower = daemons[1 - leaders[0]]
        assert await follower.tick() is None
        await schedulers[leaders[0]].close()
        assert await follower.tick() is not None
    finally:
        for scheduler in schedulers:
            await scheduler.close()


async def test_a_daemon_with_retention_off_prunes_nothing_and_keeps_running(pool: asyncpg.Pool) -> None:
    async def never() -> bool:
        raise AssertionError("retention off asks nobody for the lead")

    stop = asyncio.Event()
    task = asyncio.create_task(Retention(pool, None, never).run(stop))
    await asyncio.sleep(0)
    assert not task.done()  # a daemon task that ends is taken for a crash
    stop.set()
    await asyncio.wait_for(task, 5)


def test_retention_settings() -> None:
    settings = Settings.from_env({"HERALD_RETENTION": "7d", "HERALD_RETENTION_FAILED": "2d"})
    policy = RetentionPolicy.from_settings(settings)
    assert policy is not None and policy.keep == policy.keep_failed == 7 * DAY  # failed: never sooner
    assert RetentionPolicy.from_settings(Settings.from_env({"HERALD_RETENTION": "off"})) is None
    default = RetentionPolicy.from_settings(Settings.from_env({}))
    assert default is not None and (default.keep, default.keep_failed) == (30 * DAY, 90 * DAY)
    off = RetentionPolicy.from_settings(Settings.from_env({"HERALD_RETENTION_FAILED": "off"}))
    assert off is not None and off.keep_failed is None


def test_herald_prune_from_the_command_line(settings: Settings, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("HERALD_REDIS_URL", settings.redis_url)

    async def setup() -> None:
        async with connection(settings.database_url) as conn:
            workflow = await a_workflow(conn)
            await a_run(conn, workflow, 40)
            await a_run(conn, workflow, 41)
            await a_run(conn, workflow, 1)

    async def runs() -> int:
        async with connection(settings.database_url) as conn:
            return await conn.fetchval("SELECT count(*) FROM herald.runs")  # type: ignore[no-any-return]

    asyncio.run(setup())

    assert herald(["prune", "--older-than", "30d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: counting rows older than ")
    assert "  would delete 2 runs\n" in out and "  would delete 2 events\n" in out
    assert "would delete in all:\n  2 runs\n  2 steps\n  2 messages\n  2 retries\n  2 events\n" \
           "  0 schedule fires\n  0 heartbeats\nnothing was deleted (dry run)\n" in out
    assert asyncio.run(runs()) == 3

    assert herald(["prune", "--older-than", "40d12h", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("herald: --older-than must be an age like '30d'")
    assert herald(["prune", "--older-than", "30", "--dry-run"]) == 2  # seconds or days? refused
    assert "(got '30')" in capsys.readouterr().err
    assert herald(["prune", "--older-than", "30d", "--failed-older-than", "soon"]) == 2
    assert capsys.readouterr().err.startswith("herald: --failed-older-than must be")
    assert asyncio.run(runs()) == 3

    assert herald(["prune", "--older-than", "972h", "--batch-size", "1"]) == 0  # 40.5 days
    out = capsys.readouterr().out
    assert "  deleted 1 run\n" in out and "deleted in all:\n  1 run\n  1 step\n  1 message\n  1 retry\n" \
           "  1 event\n" in out
    assert asyncio.run(runs()) == 2
    assert settings.database_url not in out
