"""Resend work whose Dramatiq message was lost, and settle steps whose worker is gone.

Postgres holds every state, so a flushed Redis costs at most one lease before
the work moves again, and a killed worker costs the time its heartbeat takes
to go stale (HERALD_HEARTBEAT_INTERVAL x 3).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence

import asyncpg
import structlog

from config.log_context import MAX_IDS
from daemon import metrics, outbox
from daemon.loops import every

log = structlog.get_logger(__name__)

SWEEP_BATCH = 500

SendTo = Callable[[str, list[int]], object]  # (actor name, ids)


class Sweeper:
    """Each step is sent to the actor its row names (``queue``).

    ``liveness_s``: a worker without a heartbeat for this long is gone, and
    the steps it was sending are settled at once. ``abandoned_s``: no actor
    runs longer than this (its time limit), so a step sending for longer has
    been abandoned even by a live worker.
    """

    def __init__(
        self, pool: asyncpg.Pool, send_to: SendTo, *, lease_s: float, interval_s: float,
        liveness_s: float, abandoned_s: float,
    ) -> None:
        self.pool = pool
        self.send_to = send_to
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.liveness_s = liveness_s
        self.abandoned_s = max(abandoned_s, lease_s)

    async def run(self, stop: asyncio.Event) -> None:
        await every(self.interval_s, self.sweep, stop, name="sweep")

    async def sweep(self) -> dict[str, int]:
        """One pass; returns how many items of each kind were sent again or parked."""
        counts: dict[str, int] = {}
        events = await self.pool.fetch(outbox.STALE_DISPATCHED, self.lease_s, SWEEP_BATCH)
        if events:
            await self._send("match", [row["id"] for row in events])
        counts["events"] = len(events)
        runs = await self.pool.fetch(outbox.STALE_PENDING_RUNS, self.lease_s, SWEEP_BATCH)
        if runs:
            await self._send("enrich", [row["id"] for row in runs])
        counts["runs"] = len(runs)
        steps = await self.pool.fetch(outbox.STALE_PENDING_STEPS, self.lease_s, SWEEP_BATCH)
        await self._send_steps(steps)
        counts["steps"] = len(steps)
        due = await self.pool.fetch(outbox.DUE_STEPS, SWEEP_BATCH)
        await self._send_steps(due)
        counts["due"] = len(due)
        async with self.pool.acquire() as conn, conn.transaction():
            stuck = await conn.fetch(outbox.STUCK_STEPS, self.abandoned_s, self.liveness_s, SWEEP_BATCH)
            resend = [row for row in stuck if row["resend"]]
            park = [row["id"] for row in stuck if not row["resend"]]
            if resend:
                await conn.execute(outbox.RESEND_STEPS, [row["id"] for row in resend])
            if park:
                await conn.execute(outbox.PARK_STEPS, park)
        await self._send_steps(resend)
        counts["resent"] = len(resend)
        counts["parked"] = len(park)
        metrics.record_sweep(counts)
        if any(counts.values()):
            # Which ones, so that a run's trail through the logs shows the re-send.
            log.info("sweep resent lost work", **counts,
                     **_listed(event_ids=events, run_ids=runs, step_ids=[*steps, *due, *resend], parked_step_ids=park))
        return counts

    async def _send(self, actor: str, ids: list[int]) -> None:
        # Off the event loop: a Redis that hangs must not stall the daemon's other tasks.
        await asyncio.to_thread(self.send_to, actor, ids)

    async def _send_steps(self, rows: Sequence[asyncpg.Record]) -> None:
        by_actor: dict[str, list[int]] = defaultdict(list)
        for row in rows:
            by_actor[row["queue"]].append(row["id"])
        for actor, ids in by_actor.items():
            await self._send(actor, ids)


def _listed(**found: Sequence[asyncpg.Record | int]) -> dict[str, list[int]]:
    """The ids of each non-empty kind, at most MAX_IDS of each, for a log line."""
    return {name: [row if isinstance(row, int) else row["id"] for row in rows][:MAX_IDS]
            for name, rows in found.items() if rows}
