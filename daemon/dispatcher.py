"""Claim pending outbox events in batches and send them to the match actor.

Batches grow with load. While the workers keep up, each event is sent the
moment it is captured, alone. While ``max_in_flight`` earlier messages are
still waiting to be matched, new events stay pending in the outbox and go
together in the next message, so that under load every hop after this one
(match, each step's actor) handles many events per message instead of paying
a message, a thread and a transaction per event, which would leave a worker
that fell behind ever further behind. A message unmatched after
``hold_limit_s`` (lost, or behind a long queue) no longer holds the outbox
back: holding adds at most that much latency. The match actor notifies on the
channel the daemon listens on when it has matched a message, naming the
message by its first event: the dispatcher forgets it without asking
PostgreSQL, and sends what it held. It asks (one query) only when
``max_in_flight`` messages are still unmatched by their notifications, which
can be late or, with a worker of an earlier version, name no message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import structlog

from actors.store import MATCHED_PAYLOAD
from daemon import outbox
from daemon.loops import BROKER_ERRORS, OUTAGES, wait_any
from daemon.metrics import EVENTS_DISPATCHED
from daemon.progress import loop_passed, loop_started

log = structlog.get_logger(__name__)

Send = Callable[[list[int]], object]

# A message unmatched this long stops holding the outbox back.
HOLD_LIMIT_S = 1.0
# While holding, how often to look whether the earlier messages were matched,
# besides when the match actor's notification wakes it.
HOLD_POLL_S = 0.05


@dataclass
class InFlight:
    """A match message sent and not yet seen matched."""

    ids: list[int]
    sent_at: float


class Dispatcher:
    """Drains the outbox whenever woken (by NOTIFY) and on a timer (catch-up)."""

    def __init__(self, pool: asyncpg.Pool, send: Send, *, batch_size: int, idle_s: float,
                 max_in_flight: int, hold_limit_s: float = HOLD_LIMIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.send = send
        self.batch_size = batch_size
        self.idle_s = idle_s
        self.max_in_flight = max_in_flight
        self.hold_limit_s = hold_limit_s
        self.clock = clock
        self.in_flight: list[InFlight] = []
        self.holding = False  # events may be waiting behind unmatched messages
        self._wake = asyncio.Event()

    def notified(self, payload: str) -> None:
        """A notification on the outbox channel: new events (the capture trigger's),
        which wake the dispatcher unless it is holding events back already (they
        go with the held ones), or a match message matched (the match actor's,
        ``matched:`` and the message's first event id), which wakes it only while
        it is holding. Under load the trigger notifies once per commit: waking
        for each while holding would ask PostgreSQL which messages are still
        unmatched hundreds of times a second, for nothing."""
        kind, _, first_id = payload.partition(":")
        if kind != MATCHED_PAYLOAD:
            if not self.holding:
                self._wake.set()
            return
        if first_id.isdigit():
            self.in_flight = [m for m in self.in_flight if m.ids[0] != int(first_id)]
        if self.holding:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        loop_started("dispatcher", self.idle_s)  # it wakes at least every idle_s
        while not stop.is_set():
            await wait_any(self._wake, stop, timeout=HOLD_POLL_S if self.holding else self.idle_s)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                await self.drain()
            except OUTAGES as exc:
                log.warning("dispatch failed; will try again", error=str(exc))
            loop_passed("dispatcher")

    async def drain(self) -> int:
        """Dispatch pending events, a batch at a time, while fewer than
        ``max_in_flight`` earlier messages wait to be matched; return how many."""
        total = 0
        while True:
            self.holding = not await self._room()
            if self.holding:
                return total
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
            self.in_flight.append(InFlight(ids, self.clock()))
            EVENTS_DISPATCHED.inc(len(ids))
            total += len(ids)
            if len(ids) < self.batch_size:
                return total

    async def _room(self) -> bool:
        """Forget the messages matched or past the hold limit; is there room for another?"""
        now = self.clock()
        self.in_flight = [m for m in self.in_flight if now - m.sent_at < self.hold_limit_s]
        if len(self.in_flight) < self.max_in_flight:
            return True
        unmatched = set(await self.pool.fetchval(
            outbox.STILL_DISPATCHED, [i for m in self.in_flight for i in m.ids]))
        self.in_flight = [m for m in self.in_flight if unmatched.intersection(m.ids)]
        return len(self.in_flight) < self.max_in_flight
