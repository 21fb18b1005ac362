"""The worker process's asyncpg pool, created on first use in the actors' event loop."""

from __future__ import annotations

import asyncio

import asyncpg

from actors.broker import settings
from config.database import create_pool

_pool: asyncpg.Pool | None = None
_lock = asyncio.Lock()


async def get_pool() -> asyncpg.Pool:
    """The process's pool; every async actor runs on the same event loop."""
    global _pool
    if _pool is None:
        async with _lock:
            if _pool is None:
                _pool = await create_pool(settings.database_url, min_size=1, max_size=10)
    return _pool
