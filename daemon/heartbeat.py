"""Record that this daemon is alive; health checks read it (see actors.liveness)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from actors.liveness import STOPPED, beat, new_instance
from config.database import DATABASE_ERRORS
from daemon.loops import every


class Heartbeat:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.instance = new_instance()
        self.started_at = dt.datetime.now(dt.UTC)

    async def beat(self) -> None:
        await beat(self.pool, self.instance, "daemon", self.started_at)

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.interval_s, self.beat, stop, name="heartbeat")
        try:
            await self.pool.execute(STOPPED, self.instance)
        except DATABASE_ERRORS:
            pass
