"""The worker process's asyncpg pool, created on first use in the actors' event loop."""

from __future__ import annotations

import asyncpg

from actors.lazy import PerProcess
from config.database import create_pool
from config.settings import current

_pool: PerProcess[asyncpg.Pool] = PerProcess(
    lambda: create_pool(current().database_url, min_size=1, max_size=10, generic_plans=True))


async def get_pool() -> asyncpg.Pool:
    """The process's pool; every async actor runs on the same event loop."""
    return await _pool.get()
