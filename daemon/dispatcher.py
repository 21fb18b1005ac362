"""Claim pending outbox events in batches and send them to the match actor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from daemon import outbox
from daemon.loops import BROKER_ERRORS, OUTAGES

log = structlog.get_logger(__name__)

Send = Callable[[list[int]], object]


class Dispatcher:
    """Drains the outbox whenever woken (by NOTIFY) and on a timer (catch-up)."""

    def __init__(self, pool: asyncpg.Pool, send: Send, *, batch_size: int, idle_s: float) -> None:
        self.pool = pool
        self.send = send
        self.batch_size = batch_size
        self.idle_s = idle_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    [waking, stopping], timeout=self.idle_s, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
                self._wake.clear()
                if stop.is_set():
                    break
                try:
                    await self.drain()
                except OUTAGES as exc:
                    log.warning("dispatch failed; will try again", error=str(exc))
        finally:
            stopping.cancel()

    async def drain(self) -> int:
        """Dispatch every pending event, a batch at a time; return how many."""
        total = 0
        while True:
            rows = await self.pool.fetch(outbox.CLAIM_PENDING, self.batch_size)
            if not rows:
                return total
            ids = [row["id"] for row in rows]
            try:
                # Off the event loop: a Redis that hangs must not stall the listener.
                await asyncio.to_thread(self.send, ids)
            except BROKER_ERRORS as exc:
                # Redis is unreachable: put the events back; they wait in Postgres.
                await self.pool.execute(outbox.UNCLAIM, ids)
                log.warning("could not send match message", events=len(ids), error=str(exc))
                return total
            total += len(ids)
            if len(ids) < self.batch_size:
                return total
