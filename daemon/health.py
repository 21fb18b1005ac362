"""Is Herald all right? The health checks, judged in one place.

The dashboard's ``/health``, ``herald status`` and anything else that asks
read the same numbers (:mod:`daemon.health_reads`) and judge them here
against the same ``HERALD_HEALTH_*`` thresholds, so a monitor, an operator's
shell and the dashboard never disagree about what "healthy" means.

Each check is a dict with ``ok`` and its numbers. Reading raises the driver's
errors; the caller decides what an unreachable server means for it (a 503 on
``/health``, exit status 2 for ``herald status``). Nothing here imports
aiohttp, so the command line can use it.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from config.settings import Settings
from daemon import health_reads as reads

# Herald's Dramatiq queues, one per actor (see actors/).
QUEUES = ("match", "enrich", "email", "sms", "webhook", "records")
# The checks, in the order /health and `herald status` show them.
HEALTH_CHECKS = ("database", "redis", "daemon", "workers", "outbox", "wal_capture", "queues", "dead_letters",
                 "stuck_steps")
DATABASE_CHECKS = ("database", "daemon", "workers", "outbox", "wal_capture", "stuck_steps")
REDIS_CHECKS = ("redis", "queues", "dead_letters")

# Runs and events that failed within the last $1 seconds (for `herald status`).
RECENT_FAILURES = """
SELECT (SELECT count(*) FROM herald.runs
        WHERE status = 'failed'
          AND coalesce(completed_at, updated_at) > clock_timestamp() - make_interval(secs => $1)) AS runs,
       (SELECT count(*) FROM herald.events
        WHERE state = 'failed' AND created_at > clock_timestamp() - make_interval(secs => $1)) AS events
"""

# Parked steps (see daemon.parked): a message of unknown outcome waiting for a person,
# however old, and how long the longest-waiting one has waited.
PARKED = """
SELECT count(*) AS steps,
       extract(epoch FROM clock_timestamp() - min(s.updated_at))::float8 AS oldest_s
FROM herald.steps s JOIN herald.runs r ON r.id = s.run_id
WHERE s.status = 'unknown' AND r.status = 'failed'
"""


def database_down(error: str) -> dict[str, dict[str, Any]]:
    """The database's checks when it cannot be read: ``error`` names why (a type, not a message)."""
    unknown = {"ok": False, "error": "database unavailable"}
    return {"database": {"ok": False, "error": error},
            **{name: dict(unknown) for name in DATABASE_CHECKS if name != "database"}}


def redis_down(error: str) -> dict[str, dict[str, Any]]:
    """Redis's checks when it cannot be read."""
    unknown = {"ok": False, "error": "redis unavailable"}
    return {"redis": {"ok": False, "error": error},
            **{name: dict(unknown) for name in REDIS_CHECKS if name != "redis"}}


async def database_checks(
    conn: asyncpg.Connection, settings: Settings, *, started: float | None = None
) -> dict[str, dict[str, Any]]:
    """database, daemon, workers, outbox, wal_capture and stuck_steps: a query each on ``conn``.

    ``started`` (a ``time.monotonic()``) is when the caller began reaching the
    database, for ``elapsed_ms``; by default, now.
    """
    started = time.monotonic() if started is None else started
    beats = await reads.heartbeats(conn, liveness_s=settings.liveness_s)
    outbox = await reads.outbox_backlog(conn)
    stuck = await reads.stuck_steps(conn, liveness_s=settings.liveness_s, lease_s=settings.lease_s)
    wal = await reads.wal_capture(conn)
    oldest = outbox["oldest_s"]
    daemons, workers = beats["daemon"], beats["worker"]
    return {
        "database": {"ok": True, "elapsed_ms": round((time.monotonic() - started) * 1000, 2)},
        "daemon": {"ok": daemons["live"] > 0, "live": daemons["live"], "stale": daemons["stale"],
                   "liveness_s": settings.liveness_s, "instances": daemons["processes"]},
        "workers": {"ok": workers["live"] > 0, "live": workers["live"], "stale": workers["stale"],
                    "liveness_s": settings.liveness_s, "processes": workers["processes"]},
        "outbox": {
            "ok": outbox["unmatched"] <= settings.health_backlog
                  and (oldest is None or oldest <= settings.health_outbox_lag_s),
            "unmatched": outbox["unmatched"], "pending": outbox["pending"],
            "dispatched": outbox["dispatched"],
            "oldest_unmatched_s": None if oldest is None else round(oldest, 1),
            "max_unmatched": settings.health_backlog, "max_lag_s": settings.health_outbox_lag_s,
        },
        "wal_capture": _wal_capture(wal, settings),
        "stuck_steps": {"ok": stuck["total"] <= settings.health_stuck_steps,
                        "max": settings.health_stuck_steps, **stuck},
    }


def _wal_capture(wal: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Passes with no table captured from the WAL; else the server must log enough to
    decode (wal_level logical), the slot be there and usable, and the WAL the daemon
    has not confirmed reading stay within HERALD_HEALTH_WAL_UNREAD (MB): past it, the
    daemon is down or behind and the server keeps that WAL for it."""
    if not wal["tables"]:
        return {"ok": True, "tables": 0}
    usable = wal["slot_exists"] and wal["wal_status"] != "lost"
    unread_mb = None if wal["unread_bytes"] is None else round(wal["unread_bytes"] / (1 << 20), 1)
    problem = ("wal_level is not logical" if wal["wal_level"] != "logical"
               else "the replication slot was invalidated" if wal["slot_exists"] and not usable
               else "the replication slot is missing" if not usable else None)
    return {
        "ok": problem is None and (unread_mb or 0) <= settings.health_wal_unread_mb,
        "tables": wal["tables"], "slot": wal["slot"], "streaming": wal["streaming"],
        "unread_mb": unread_mb, "max_unread_mb": settings.health_wal_unread_mb,
        **({"problem": problem} if problem else {}),
    }


async def redis_checks(client: aioredis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    """redis, queues and dead_letters from one pipelined round trip."""
    depths = await reads.queue_depths(client, QUEUES)
    queues = depths["queues"]
    over = [queue for queue, depth in queues.items() if depth["ready"] > settings.health_queue_depth]
    dead = {queue: depth["dead"] for queue, depth in queues.items() if depth["dead"]}
    return {
        "redis": {"ok": True, "round_trip_ms": depths["round_trip_ms"]},
        "queues": {"ok": not over, "over_max": over, "max_ready": settings.health_queue_depth,
                   "depth": queues},
        "dead_letters": {"ok": sum(dead.values()) <= settings.health_dead_letters,
                         "total": sum(dead.values()), "max": settings.health_dead_letters,
                         "by_queue": dead},
    }


def wal_capture_detail(check: dict[str, Any]) -> str:
    """The wal_capture check in a few words, for `herald status` and the overview page."""
    if not check["tables"]:
        return "no table captured from the WAL"
    tables = f"{check['tables']} table{'s' if check['tables'] != 1 else ''}"
    if "problem" in check:
        return f"{tables}: {check['problem']} (`herald doctor` says what to do)"
    state = "streaming" if check["streaming"] else "not being read"
    return (f"{tables}, slot {check['slot']} {state}, {check['unread_mb']:g} MB of WAL unread"
            f" (max {check['max_unread_mb']:,} MB)")


def in_order(found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every check of ``found``, in HEALTH_CHECKS order."""
    return {name: found[name] for name in HEALTH_CHECKS}


def failing(checks: dict[str, dict[str, Any]]) -> list[str]:
    """The names of the checks that fail."""
    return [name for name, check in checks.items() if not check["ok"]]


async def recent_failures(conn: asyncpg.Connection, *, seconds: float = 3600.0) -> dict[str, Any]:
    """Runs and events that failed within the last ``seconds``."""
    row = await conn.fetchrow(RECENT_FAILURES, seconds)
    return {"seconds": seconds, "runs": row["runs"], "events": row["events"]}


async def parked_steps(conn: asyncpg.Connection) -> dict[str, Any]:
    """Steps parked for a person to decide (daemon.parked), and the longest wait."""
    row = await conn.fetchrow(PARKED)
    oldest = row["oldest_s"]
    return {"steps": row["steps"], "oldest_s": None if oldest is None else round(oldest, 1)}
