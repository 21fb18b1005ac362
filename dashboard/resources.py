"""What the dashboard's handlers share, keyed on the application: settings, the
database pool and the Redis client (opened at start, closed at shutdown)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from config.database import create_pool
from dashboard.guard import SETTINGS

POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)

__all__ = ["POOL", "REDIS", "SETTINGS", "resources"]


async def resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[POOL] = await create_pool(settings.database_url, min_size=1, max_size=8)
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s,
                                         socket_connect_timeout=settings.redis_timeout_s)
    yield
    await app[REDIS].aclose()
    await app[POOL].close()
