"""The one periodic-loop helper every daemon timer task uses (sweep, schedule, heartbeat).

A pass that fails because PostgreSQL or Redis is away is logged and tried
again on the next tick: an outage slows Herald down, it never stops a loop.
Anything else is a bug: it propagates, and the daemon logs its traceback and
exits non-zero so that its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import dramatiq.errors
import redis
import structlog

from config.database import DATABASE_ERRORS
from daemon.progress import loop_passed, loop_started

log = structlog.get_logger(__name__)

# What a lost or restarting Redis looks like when Herald sends a message.
BROKER_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, dramatiq.errors.BrokerError)

OUTAGES: tuple[type[Exception], ...] = (*DATABASE_ERRORS, *BROKER_ERRORS)


async def every(interval_s: float, work: Callable[[], Awaitable[object]], stop: asyncio.Event, *,
                name: str, on_outage: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``work`` every ``interval_s`` until ``stop`` is set, surviving outages.

    Each pass, failed or not, counts as progress for systemd's watchdog (see daemon.progress).
    """
    loop_started(name, interval_s)
    while not stop.is_set():
        try:
            await work()
        except OUTAGES as exc:
            log.warning(f"{name} failed; will try again", error=str(exc), error_type=type(exc).__name__)
            if on_outage is not None:
                await on_outage()
        loop_passed(name)
        await sleep_until_stopped(stop, interval_s)


async def sleep_until_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
