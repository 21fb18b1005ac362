"""Resend work whose Dramatiq message was lost, and park steps whose outcome is unknown.

Postgres holds every state, so a flushed Redis or a killed worker costs at
most one lease before the work moves again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from config.database import DATABASE_ERRORS

from daemon import outbox

log = structlog.get_logger(__name__)

SWEEP_BATCH = 500

SendTo = Callable[[str, list[int]], object]  # (actor name, ids)


class Sweeper:
    """``actor_of`` maps a step's action to the actor that carries it out."""

    def __init__(
        self, pool: asyncpg.Pool, send_to: SendTo, *, lease_s: float, interval_s: float,
        actor_of: Callable[[str], str] = lambda action: action, resend_safe: Sequence[str] = (),
    ) -> None:
        self.pool = pool
        self.send_to = send_to
        self.actor_of = actor_of
        self.resend_safe = list(resend_safe)
        self.lease_s = lease_s
        self.interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except DATABASE_ERRORS as exc:
                log.warning("sweep failed; will try again", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass

    async def sweep(self) -> dict[str, int]:
        """One pass; returns how many items of each kind were sent again or parked."""
        counts: dict[str, int] = {}
        events = await self.pool.fetch(outbox.STALE_DISPATCHED, self.lease_s, SWEEP_BATCH)
        if events:
            self.send_to("match", [row["id"] for row in events])
        counts["events"] = len(events)
        runs = await self.pool.fetch(outbox.STALE_PENDING_RUNS, self.lease_s, SWEEP_BATCH)
        if runs:
            self.send_to("enrich", [row["id"] for row in runs])
        counts["runs"] = len(runs)
        steps = await self.pool.fetch(outbox.STALE_PENDING_STEPS, self.lease_s, SWEEP_BATCH)
        self._send_steps(steps)
        counts["steps"] = len(steps)
        due = await self.pool.fetch(outbox.DUE_STEPS, SWEEP_BATCH)
        self._send_steps(due)
        counts["due"] = len(due)
        resent = await self.pool.fetch(outbox.RESEND_STUCK_STEPS, self.lease_s, self.resend_safe)
        self._send_steps(resent)
        counts["resent"] = len(resent)
        parked = await self.pool.fetch(outbox.PARK_UNKNOWN_STEPS, self.lease_s, self.resend_safe)
        counts["parked"] = len(parked)
        if any(counts.values()):
            log.info("sweep resent lost work", **counts)
        return counts

    def _send_steps(self, rows: list[asyncpg.Record]) -> None:
        by_actor: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_actor[self.actor_of(row["action"])].append(row["id"])
        for actor, ids in by_actor.items():
            self.send_to(actor, ids)
