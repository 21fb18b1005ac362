"""/health: every check with its numbers, 503 naming the failing ones.

Public (load balancers and monitors probe it), so it names no tenant and no
secret: counts, ages and process ids only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from config.database import DATABASE_ERRORS
from config.settings import Settings
from dashboard.auth import public
from dashboard.queries import health as queries
from dashboard.resources import POOL, REDIS, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

QUEUES = ("match", "enrich", "email", "sms", "webhook", "records")
HEALTH_CHECKS = ("database", "redis", "daemon", "workers", "outbox", "queues", "dead_letters",
                 "stuck_steps")
# /health answers within about this long even when a server hangs.
HEALTH_TIMEOUT_S = 2.0


def _database_down(error: str) -> dict[str, dict[str, Any]]:
    unknown = {"ok": False, "error": "database unavailable"}
    return {"database": {"ok": False, "error": error},
            **{name: dict(unknown) for name in ("daemon", "workers", "outbox", "stuck_steps")}}


async def _database_checks(pool: asyncpg.Pool, settings: Settings) -> dict[str, dict[str, Any]]:
    """database, daemon, workers, outbox and stuck_steps: one connection, a query each."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), pool.acquire() as conn:
            beats = await queries.heartbeats(conn, liveness_s=settings.liveness_s)
            outbox = await queries.outbox_backlog(conn)
            stuck = await queries.stuck_steps(
                conn, liveness_s=settings.liveness_s, lease_s=settings.lease_s)
    except (*DATABASE_ERRORS, TimeoutError) as exc:
        # The type only: driver messages can name hosts, and never belong on a public page.
        log.warning("health: database check failed", error=type(exc).__name__)
        return _database_down(type(exc).__name__)
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
        "stuck_steps": {"ok": stuck["total"] <= settings.health_stuck_steps,
                        "max": settings.health_stuck_steps, **stuck},
    }


async def _redis_checks(client: aioredis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    """redis, queues and dead_letters from one pipelined round trip."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            depths = await queries.queue_depths(client, QUEUES)
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        log.warning("health: redis check failed", error=type(exc).__name__)
        unknown = {"ok": False, "error": "redis unavailable"}
        return {"redis": {"ok": False, "error": type(exc).__name__},
                "queues": dict(unknown), "dead_letters": dict(unknown)}
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


async def checks(request: web.Request) -> dict[str, Any]:
    """Every check, from the database and Redis read concurrently, each within
    HEALTH_TIMEOUT_S; one being down fails its checks without stopping the others."""
    settings = request.app[SETTINGS]
    from_db, from_redis = await asyncio.gather(
        _database_checks(request.app[POOL], settings), _redis_checks(request.app[REDIS], settings))
    found = {**from_db, **from_redis}
    return {name: found[name] for name in HEALTH_CHECKS}


@routes.get("/health", name="health")
@public
async def health(request: web.Request) -> web.Response:
    """Every check with its numbers; 503 naming the failing ones when any fails.

    The database and Redis are read concurrently, each within HEALTH_TIMEOUT_S,
    and one being down fails its checks without stopping the others.
    """
    found = await checks(request)
    failing = [name for name, check in found.items() if not check["ok"]]
    return web.json_response({"ok": not failing, "failing": failing, "checks": found},
                             status=503 if failing else 200)
