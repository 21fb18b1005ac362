"""The health checks' SQL and Redis reads: outbox backlog, heartbeats, stuck
steps and Dramatiq queue depths. :mod:`daemon.health` judges them for `/health`
and `herald status`; the dashboard's `/metrics` reports them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import redis.asyncio as aioredis

# Health: events not yet matched. Two arms so that each uses its partial index
# (events_pending_tenant, events_dispatched) instead of scanning every matched event.
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

# Health: capture from the WAL (migration 022). How many tables are captured so,
# and of their slot: whether the server has it, still usable (wal_status 'lost':
# it removed WAL the slot needed), being streamed, how much WAL the daemon has
# not confirmed reading, and how much the server keeps for it (from the slot's
# restart point; `herald doctor` warns on it). pg_replication_slots is readable
# by any role.
WAL_CAPTURE = """
SELECT (SELECT count(*) FROM herald.watched_tables WHERE capture = 'wal') AS tables,
       current_setting('wal_level') AS wal_level, w.slot_name AS slot,
       s.slot_name IS NOT NULL AS slot_exists, s.wal_status, coalesce(s.active, false) AS streaming,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::float8 AS unread_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::float8 AS retained_bytes
FROM (SELECT 1) AS one
LEFT JOIN (SELECT slot_name FROM herald.wal_capture LIMIT 1) AS w ON true
LEFT JOIN pg_replication_slots s ON s.slot_name = w.slot_name
"""

# Dramatiq's Redis broker (namespace "dramatiq", see dramatiq/brokers/redis/dispatch.lua):
# a queue's waiting message ids are the list "<ns>:<queue>", every message not yet
# acknowledged is in the hash "<ns>:<queue>.msgs"; delayed messages live in the
# queue "<queue>.DQ" the same way; dead letters are the sorted set "<ns>:<queue>.XQ".
DRAMATIQ_NAMESPACE = "dramatiq"
# Stopped-but-unsaid processes older than this are not listed on /health.
HEARTBEAT_HORIZON_S = 24 * 3600.0
HEALTH_LISTED = 20

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


async def wal_capture(conn: asyncpg.Connection) -> dict[str, Any]:
    """Tables captured from the WAL and the state of their slot (unread_bytes and
    retained_bytes None: no slot)."""
    return dict(await conn.fetchrow(WAL_CAPTURE))


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
