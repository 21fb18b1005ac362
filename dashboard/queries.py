"""The dashboard's SQL: read-only views of runs, steps and health."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

# Values a list sends are cut to $5 characters (herald.clip, migration 009): a
# 10 MB title rendered into a message must not make a page polled every second
# weigh megabytes. NULL: whole values, e.g. for one run ($4).
RUNS = """
SELECT r.id, r.tenant_id, r.workflow_id, herald.clip(w.name, $5) AS workflow_name, r.event_id,
       e.type AS event_type, e.entity, herald.clip(e.row_id, $5) AS row_id, r.status,
       herald.clip(r.error, $5) AS error, herald.clip(r.match_reason ->> 'reason', $5) AS match_reason,
       r.created_at, r.started_at, r.completed_at, r.execution_time_ms
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
JOIN herald.events e ON e.id = r.event_id
WHERE ($1::text IS NULL OR r.tenant_id = $1)
  AND ($2::text IS NULL OR r.status = $2)
  AND ($4::bigint IS NULL OR r.id = $4)
ORDER BY r.id DESC
LIMIT $3
"""

STEPS = """
SELECT run_id, position, step_key, action, status, attempts, herald.clip(rendered, $2) AS rendered,
       herald.clip(provider_response, $2) AS provider_response, herald.clip(error, $2) AS error,
       started_at, completed_at, execution_time_ms
FROM herald.steps
WHERE run_id = ANY($1::bigint[])
ORDER BY run_id, position
"""

# Each rendered value, error or reason in a list of runs is cut to this many
# characters, with "… [truncated: N characters in all]".
LIST_VALUE_CHARS = 2000

# Health: events not yet matched. Two arms so that each uses its partial index
# (events_pending, events_dispatched) instead of scanning every matched event.
# Events whose matching failed (state 'failed', final, the error in their
# match_report) are not waiting for anything, so they are not backlog.
OUTBOX_BACKLOG = """
SELECT count(*) AS unmatched,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'dispatched') AS dispatched,
       extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS oldest_s
FROM (
    SELECT state, created_at FROM herald.events WHERE state = 'pending'
    UNION ALL
    SELECT state, created_at FROM herald.events WHERE state = 'dispatched'
) unmatched
"""

# Health: daemon and worker processes that have not said they stopped and were
# seen in the last $2 seconds (older rows are processes that died long ago), each
# with whether it is live (beat within $1 seconds). All are counted; the $3 most
# recent of each kind are listed.
HEARTBEATS = """
WITH clock AS (SELECT clock_timestamp() AS now),
beats AS (
    SELECT h.kind, h.instance, h.hostname, h.pid, h.last_seen_at,
           extract(epoch FROM clock.now - h.last_seen_at)::float8 AS age_s,
           h.last_seen_at > clock.now - make_interval(secs => $1) AS live
    FROM herald.heartbeats h, clock
    WHERE h.stopped_at IS NULL AND h.last_seen_at > clock.now - make_interval(secs => $2)
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY kind ORDER BY last_seen_at DESC) AS rank,
           count(*) FILTER (WHERE live) OVER (PARTITION BY kind) AS live_count,
           count(*) FILTER (WHERE NOT live) OVER (PARTITION BY kind) AS stale_count
    FROM beats
)
SELECT kind, instance, hostname, pid, age_s, live, live_count, stale_count
FROM ranked WHERE rank <= $3
ORDER BY kind, last_seen_at DESC
"""

# Health: steps that need a person or a sweeper. Parked with an unknown outcome
# in the last day, or still "sending" although the worker process that claimed
# them (claimed_by) is not live (no heartbeat within $1 seconds) or for longer
# than the lease ($2 seconds; no actor may run that long, and rows from before
# claimed_by existed have no claimant to ask). Counts, and the $3 oldest listed.
STUCK_STEPS = """
WITH clock AS (SELECT clock_timestamp() AS now),
stuck AS (
    SELECT s.id, s.run_id, s.status, s.claimed_by,
           extract(epoch FROM clock.now - s.updated_at)::float8 AS age_s
    FROM herald.steps s, clock
    WHERE s.status = 'unknown' AND s.updated_at > clock.now - interval '24 hours'
    UNION ALL
    SELECT s.id, s.run_id, s.status, s.claimed_by,
           extract(epoch FROM clock.now - s.updated_at)::float8 AS age_s
    FROM herald.steps s, clock
    WHERE s.status = 'sending'
      AND (s.updated_at < clock.now - make_interval(secs => $2)
           OR (s.claimed_by IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM herald.heartbeats h
                   WHERE h.instance = s.claimed_by AND h.stopped_at IS NULL
                     AND h.last_seen_at > clock.now - make_interval(secs => $1))))
)
SELECT (SELECT count(*) FROM stuck WHERE status = 'unknown') AS unknown,
       (SELECT count(*) FROM stuck WHERE status = 'sending') AS sending_stalled,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'step_id', o.id, 'run_id', o.run_id, 'status', o.status,
                   'claimed_by', o.claimed_by, 'seconds_since_update', round(o.age_s::numeric, 1))), '[]')
        FROM (SELECT * FROM stuck ORDER BY age_s DESC LIMIT $3) o) AS oldest
"""

# Dramatiq's Redis broker (namespace "dramatiq", see dramatiq/brokers/redis/dispatch.lua):
# a queue's waiting message ids are the list "<ns>:<queue>", every message not yet
# acknowledged is in the hash "<ns>:<queue>.msgs"; delayed messages live in the
# queue "<queue>.DQ" the same way; dead letters are the sorted set "<ns>:<queue>.XQ".
DRAMATIQ_NAMESPACE = "dramatiq"
# Stopped-but-unsaid processes older than this are not listed on /health.
HEARTBEAT_HORIZON_S = 24 * 3600.0
HEALTH_LISTED = 20

# Delivery and retry statistics over the last $2 hours.
STATS = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'completed') AS completed,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.status = 'skipped') AS skipped,
       count(*) FILTER (WHERE r.status = 'completed' AND (r.retry_count > 0 OR EXISTS (
           SELECT 1 FROM herald.steps s WHERE s.run_id = r.id AND s.attempts > 1))) AS completed_after_retry,
       coalesce(sum((SELECT sum(s.attempts) FROM herald.steps s WHERE s.run_id = r.id)), 0)::bigint AS attempts,
       count(*) FILTER (WHERE r.retry_count > 0) AS retried_by_support
FROM herald.runs r
WHERE ($1::text IS NULL OR r.tenant_id = $1)
  AND r.created_at > clock_timestamp() - make_interval(hours => $2)
"""

RUN_COLUMNS = (
    "id", "tenant_id", "status", "error", "created_at", "started_at", "completed_at",
    "execution_time_ms",
)
STEP_COLUMNS = (
    "position", "step_key", "action", "status", "attempts", "rendered", "provider_response",
    "error", "started_at", "completed_at", "execution_time_ms",
)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def delivery_stats(pool: asyncpg.Pool, *, tenant: str | None, hours: int) -> dict[str, Any]:
    """Runs by outcome, attempts, and the share of completed runs that needed a retry."""
    row = dict(await pool.fetchrow(STATS, tenant, hours))
    row["share_completed_after_retry"] = (
        round(row["completed_after_retry"] / row["completed"], 4) if row["completed"] else 0.0)
    return {"hours": hours, "tenant": tenant, **row}


async def recent_runs(
    pool: asyncpg.Pool, *, tenant: str | None, status: str | None, limit: int,
    run_id: int | None = None, clip: int | None = LIST_VALUE_CHARS,
) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its steps (only run ``run_id`` if given).

    Long values (rendered messages, provider responses, errors, the match
    reason) are cut to ``clip`` characters with their full length noted;
    ``clip=None`` returns them whole (for a single run's page).
    """
    runs = await pool.fetch(RUNS, tenant, status, limit, run_id, clip)
    steps_by_run: dict[int, list[dict[str, Any]]] = {run["id"]: [] for run in runs}
    if runs:
        for step in await pool.fetch(STEPS, list(steps_by_run), clip):
            steps_by_run[step["run_id"]].append({key: _iso(step[key]) for key in STEP_COLUMNS})
    return [
        {
            **{key: _iso(run[key]) for key in RUN_COLUMNS},
            "workflow": {"id": str(run["workflow_id"]), "name": run["workflow_name"]},
            "event": {"id": run["event_id"], "type": run["event_type"],
                      "entity": run["entity"], "row_id": run["row_id"]},
            "match_reason": run["match_reason"],
            "steps": steps_by_run[run["id"]],
        }
        for run in runs
    ]


async def outbox_backlog(conn: asyncpg.Connection) -> dict[str, Any]:
    """Events not yet matched: how many, by state, and the age of the oldest (None if none)."""
    return dict(await conn.fetchrow(OUTBOX_BACKLOG))


async def heartbeats(conn: asyncpg.Connection, *, liveness_s: float) -> dict[str, dict[str, Any]]:
    """Per kind ("daemon", "worker"): live and stale counts and the latest processes."""
    rows = await conn.fetch(HEARTBEATS, liveness_s, HEARTBEAT_HORIZON_S, HEALTH_LISTED)
    kinds: dict[str, dict[str, Any]] = {
        kind: {"live": 0, "stale": 0, "processes": []} for kind in ("daemon", "worker")}
    for row in rows:
        kind = kinds.setdefault(row["kind"], {"live": 0, "stale": 0, "processes": []})
        kind["live"], kind["stale"] = row["live_count"], row["stale_count"]
        kind["processes"].append({
            "instance": row["instance"], "hostname": row["hostname"], "pid": row["pid"],
            "live": row["live"], "seconds_since_heartbeat": round(row["age_s"], 1),
        })
    return kinds


async def stuck_steps(
    conn: asyncpg.Connection, *, liveness_s: float, lease_s: float
) -> dict[str, Any]:
    """Steps parked as unknown in the last day, and "sending" steps whose worker is gone
    or that have been sending for longer than the lease."""
    row = await conn.fetchrow(STUCK_STEPS, liveness_s, lease_s, HEALTH_LISTED)
    return {"unknown_last_24h": row["unknown"], "sending_stalled": row["sending_stalled"],
            "total": row["unknown"] + row["sending_stalled"], "oldest": row["oldest"]}


async def queue_depths(client: aioredis.Redis, queues: Iterable[str]) -> dict[str, Any]:
    """Per Dramatiq queue: ready, unacked (fetched by a worker), delayed and dead messages.

    One pipelined round trip (MULTI/EXEC, so the counts are one snapshot), which
    also pings; ``round_trip_ms`` is its time.
    """
    names = list(queues)
    started = time.monotonic()
    async with client.pipeline(transaction=True) as pipe:
        pipe.ping()
        for queue in names:
            key = f"{DRAMATIQ_NAMESPACE}:{queue}"
            pipe.llen(key)
            pipe.hlen(f"{key}.msgs")
            pipe.hlen(f"{key}.DQ.msgs")
            pipe.zcard(f"{key}.XQ")
        results = await pipe.execute()
    round_trip_ms = round((time.monotonic() - started) * 1000, 2)
    depths: dict[str, dict[str, int]] = {}
    for index, queue in enumerate(names):
        ready, unacked, delayed, dead = (int(value) for value in results[1 + 4 * index: 5 + 4 * index])
        # A delayed message stays in its hash while a worker holds it until its eta,
        # so the hash, not the list, counts them all.
        depths[queue] = {"ready": ready, "unacked": max(unacked - ready, 0),
                         "delayed": delayed, "dead": dead}
    return {"round_trip_ms": round_trip_ms, "queues": depths}
