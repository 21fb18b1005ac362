"""Record that this daemon is alive; the dashboard's health check reads it."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import uuid

import asyncpg
import structlog

from config.database import DATABASE_ERRORS

from daemon import outbox

log = structlog.get_logger(__name__)


class Heartbeat:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started_at = dt.datetime.now(dt.UTC)

    async def beat(self) -> None:
        await self.pool.execute(
            outbox.HEARTBEAT, self.instance, socket.gethostname(), os.getpid(), self.started_at
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.beat()
            except DATABASE_ERRORS as exc:
                log.warning("heartbeat failed", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
        try:
            await self.pool.execute(outbox.HEARTBEAT_STOPPED, self.instance)
        except DATABASE_ERRORS:
            pass
