"""What the dashboard's handlers share, keyed on the application: settings, the
database pool and the Redis client (opened at start, closed at shutdown)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
import dramatiq
import redis
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from config.database import create_pool
from dashboard.guard import SETTINGS

POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
BROKER = web.AppKey("broker", dramatiq.Broker)

__all__ = ["BROKER", "POOL", "REDIS", "SETTINGS", "resources", "send_steps"]

log = structlog.get_logger(__name__)


def _send_now(broker: dramatiq.Broker, to_send: list[tuple[str, int]]) -> None:
    from actors.broker import send

    by_queue: dict[str, list[int]] = defaultdict(list)
    for queue, step_id in to_send:
        by_queue[queue].append(step_id)
    for queue, ids in by_queue.items():
        send(queue, ids, broker=broker)


async def send_steps(request: web.Request, to_send: list[tuple[str, int]]) -> bool:
    """Send steps (queue, step id) to their actors, a batch of ids per queue, through
    the dashboard's Dramatiq broker, off the event loop. False when Redis refused:
    the steps wait in PostgreSQL, pending, and the daemon's sweeper sends them, so
    what the person asked for still happens."""
    if not to_send:
        return True
    try:
        await asyncio.to_thread(_send_now, request.app[BROKER], to_send)
    except (redis.RedisError, dramatiq.errors.DramatiqError, OSError) as exc:
        log.warning("steps not sent now; the sweeper will send them", steps=len(to_send),
                    error=type(exc).__name__)
        return False
    return True


async def resources(app: web.Application) -> AsyncIterator[None]:
    from actors.broker import make_broker

    settings = app[SETTINGS]
    # The dashboard's own broker (not the process's global one): retries send their
    # first step through it, to this app's Redis.
    app[BROKER] = make_broker(settings)
    app[POOL] = await create_pool(settings.database_url, min_size=1, max_size=8)
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                         socket_connect_timeout=settings.redis_timeout_s)
    yield
    await app[REDIS].aclose()
    await app[POOL].close()
    app[BROKER].close()
