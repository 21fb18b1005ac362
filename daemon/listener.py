"""LISTEN herald_events on a dedicated connection, reconnecting when it drops.

A notification only wakes the dispatcher: NOTIFY is a hint, the outbox is the
truth, so a notification lost while reconnecting costs nothing but a moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from config.database import DATABASE_ERRORS, connect
from daemon.loops import wait_any
from daemon.progress import loop_passed, loop_started

log = structlog.get_logger(__name__)

CHANNEL = "herald_events"
KEEPALIVE_S = 10.0
APPLICATION_NAME = "herald-listener"  # how the connection shows in pg_stat_activity
MAX_BACKOFF_S = 10.0


async def listen(dsn: str, notified: Callable[[str], None], stop: asyncio.Event, *,
                 on_listening: Callable[[], None] | None = None) -> None:
    """Call ``notified`` with every notification's payload until ``stop`` is set,
    and with an empty one on (re)connecting; ``on_listening`` each time the LISTEN
    connection is (re)established (the daemon's readiness)."""
    backoff = 0.5
    loop_started("listener", KEEPALIVE_S + MAX_BACKOFF_S)  # a keepalive, or a reconnection attempt
    while not stop.is_set():
        conn: asyncpg.Connection | None = None
        lost = asyncio.Event()
        try:
            conn = await connect(dsn, server_settings={"application_name": APPLICATION_NAME})
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: notified(payload))
            log.info("listening", channel=CHANNEL)
            backoff = 0.5
            notified("")  # catch up on whatever arrived while not listening
            if on_listening is not None:
                on_listening()
            loop_passed("listener")
            while not stop.is_set() and not lost.is_set():
                await wait_any(stop, lost, timeout=KEEPALIVE_S)
                if not stop.is_set() and not lost.is_set():
                    await conn.execute("SELECT 1")  # keepalive: finds a dead link
                loop_passed("listener")
        except DATABASE_ERRORS as exc:
            log.warning("listen connection lost", error=str(exc), retry_in_s=backoff)
        finally:
            if conn is not None and not conn.is_closed():
                await conn.close()
        loop_passed("listener")  # an attempt that failed is progress too: it will try again
        if not stop.is_set():
            await wait_any(stop, timeout=backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
