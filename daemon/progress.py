"""Whether the daemon's loops are making progress, for systemd's watchdog.

Each loop (listener, dispatcher, sweep, heartbeat, scheduler) reports when it
starts and each time it finishes a pass, successful or not: a pass that fails
because PostgreSQL or Redis is away still counts, since the loop is alive and
will catch up, and restarting the daemon would not bring the database back.
A loop that has not finished a pass within its own interval plus
``stall_s`` (HERALD_WATCHDOG) is stuck, for example on a query that never
returns; the daemon then stops feeding systemd's watchdog, and systemd
restarts it. The feeding task runs on the daemon's event loop, so a blocked
event loop stops the feeding too.

The loops find the daemon's tracker through a context variable, set by
:func:`daemon.service.run_daemon` before it starts their tasks (which copy
the context); a loop run on its own (as in tests) reports nowhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from config.sd_notify import Notifier

log = structlog.get_logger(__name__)

# Without systemd's watchdog, how often stuck loops are looked for (and logged).
CHECK_INTERVAL_S = 5.0


@dataclass
class _Loop:
    interval_s: float
    last_pass: float


class Progress:
    """The last pass of each of the daemon's loops."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self._loops: dict[str, _Loop] = {}
        self._reported: frozenset[str] = frozenset()

    def started(self, name: str, interval_s: float) -> None:
        """A loop that passes at least every ``interval_s`` (when not stuck) has started."""
        self._loops[name] = _Loop(interval_s, self.clock())

    def passed(self, name: str) -> None:
        loop = self._loops.get(name)
        if loop is not None:
            loop.last_pass = self.clock()

    def stalled(self) -> dict[str, float]:
        """Stuck loops, with the seconds since each last finished a pass."""
        now = self.clock()
        return {name: round(now - loop.last_pass, 1) for name, loop in self._loops.items()
                if now - loop.last_pass > loop.interval_s + self.stall_s}

    def healthy(self) -> bool:
        """Whether every loop has passed recently; a change is logged once."""
        stalled = self.stalled()
        names = frozenset(stalled)
        if names != self._reported:
            if names:
                log.error("daemon loops are stuck; no longer feeding systemd's watchdog", loops=stalled,
                          stall_s=self.stall_s)
            else:
                log.info("daemon loops are making progress again")
            self._reported = names
        return not stalled

    def describe(self) -> str:
        stalled = self.stalled()
        if not stalled:
            return "running"
        return "stuck: " + ", ".join(f"{name} (no pass for {age:g}s)" for name, age in sorted(stalled.items()))


CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("herald_progress", default=None)


def loop_started(name: str, interval_s: float) -> None:
    """Called by a loop as it starts (see :data:`CURRENT`)."""
    progress = CURRENT.get()
    if progress is not None:
        progress.started(name, interval_s)


def loop_passed(name: str) -> None:
    """Called by a loop each time it finishes a pass."""
    progress = CURRENT.get()
    if progress is not None:
        progress.passed(name)


async def watch(progress: Progress, notifier: Notifier, stop: asyncio.Event) -> None:
    """The daemon's watchdog task: feed systemd's watchdog while every loop makes
    progress (and this event loop runs this task), until ``stop`` is set.

    Checks at half systemd's watchdog interval, or every CHECK_INTERVAL_S
    without one (stuck loops are logged either way); ``systemctl status`` shows
    which loops are stuck.
    """
    interval = notifier.feed_interval_s or CHECK_INTERVAL_S
    shown = "running"
    while not stop.is_set():
        if progress.healthy():
            notifier.watchdog()
        described = progress.describe()
        if described != shown:
            notifier.status(described)
            shown = described
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
