"""/health: every check with its numbers, 503 naming the failing ones.

Public (load balancers and monitors probe it), so it names no tenant and no
secret: counts, ages and process ids only. The checks are read and judged in
daemon.health, which `herald status` shares.
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
from daemon import health as judged
from dashboard.auth import public
from dashboard.resources import POOL, REDIS, SETTINGS

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

# /health answers within about this long even when a server hangs.
HEALTH_TIMEOUT_S = 2.0


async def _database_checks(pool: asyncpg.Pool, settings: Settings) -> dict[str, dict[str, Any]]:
    """database, daemon, workers, outbox and stuck_steps: one connection, a query each."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), pool.acquire() as conn:
            return await judged.database_checks(conn, settings, started=started)
    except (*DATABASE_ERRORS, TimeoutError) as exc:
        # The type only: driver messages can name hosts, and never belong on a public page.
        log.warning("health: database check failed", error=type(exc).__name__)
        return judged.database_down(type(exc).__name__)


async def _redis_checks(client: aioredis.Redis, settings: Settings) -> dict[str, dict[str, Any]]:
    """redis, queues and dead_letters from one pipelined round trip."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            return await judged.redis_checks(client, settings)
    except (aioredis.RedisError, OSError, TimeoutError) as exc:
        log.warning("health: redis check failed", error=type(exc).__name__)
        return judged.redis_down(type(exc).__name__)


async def checks(request: web.Request) -> dict[str, Any]:
    """Every check, from the database and Redis read concurrently, each within
    HEALTH_TIMEOUT_S; one being down fails its checks without stopping the others."""
    settings = request.app[SETTINGS]
    from_db, from_redis = await asyncio.gather(
        _database_checks(request.app[POOL], settings), _redis_checks(request.app[REDIS], settings))
    return judged.in_order({**from_db, **from_redis})


@routes.get("/health", name="health")
@public
async def health(request: web.Request) -> web.Response:
    """Every check with its numbers; 503 naming the failing ones when any fails.

    The database and Redis are read concurrently, each within HEALTH_TIMEOUT_S,
    and one being down fails its checks without stopping the others.
    """
    found = await checks(request)
    failing = judged.failing(found)
    return web.json_response({"ok": not failing, "failing": failing, "checks": found},
                             status=503 if failing else 200)
