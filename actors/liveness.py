"""Who is alive: every daemon and every worker process beats in herald.heartbeats.

A step being sent names the worker process that claimed it (``claimed_by``),
so the sweeper can tell a step whose worker died (settle it now) from one
whose worker is still at it (leave it alone). The beat runs in its own
thread with its own connection: it says the process is alive, while the
worker's watchdog deals with an event loop that stopped making progress.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import threading
import uuid

import asyncpg
import structlog

from config.database import DATABASE_ERRORS, connect

log = structlog.get_logger(__name__)

BEAT = """
INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at, kind)
VALUES ($1, $2, $3, $4, clock_timestamp(), $5)
ON CONFLICT (instance) DO UPDATE SET last_seen_at = clock_timestamp(), stopped_at = NULL
"""

STOPPED = "UPDATE herald.heartbeats SET stopped_at = clock_timestamp() WHERE instance = $1"

# A process is taken for dead when its heartbeat is older than $1 seconds, or it said it stopped.
NOT_LIVE = """
(h.instance IS NULL OR h.stopped_at IS NOT NULL
 OR h.last_seen_at < clock_timestamp() - make_interval(secs => {seconds}))
"""

_instance: tuple[int, str] | None = None


def new_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_instance() -> str:
    """This worker process's name in herald.heartbeats (a forked child gets its own)."""
    global _instance
    if _instance is None or _instance[0] != os.getpid():
        _instance = (os.getpid(), new_instance())
    return _instance[1]


async def beat(conn: asyncpg.Connection | asyncpg.Pool, instance: str, kind: str, started_at: dt.datetime) -> None:
    await conn.execute(BEAT, instance, socket.gethostname(), os.getpid(), started_at, kind)


class HeartbeatThread(threading.Thread):
    """Beats for this process every ``interval_s`` on a connection of its own."""

    def __init__(self, dsn: str, instance: str, *, kind: str, interval_s: float) -> None:
        super().__init__(name="herald-heartbeat", daemon=True)
        self.dsn = dsn
        self.instance = instance
        self.kind = kind
        self.interval_s = interval_s
        self.started_at = dt.datetime.now(dt.UTC)
        self.first_beat = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        self._loop.run_until_complete(self._beat_until_stopped())
        self._loop.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Record that this process stopped (so nobody waits for its lease) and end the thread."""
        if self._stopping is not None and self.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self.join(timeout_s)

    async def _beat_until_stopped(self) -> None:
        self._stopping = asyncio.Event()
        conn: asyncpg.Connection | None = None
        while not self._stopping.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await connect(self.dsn, server_settings={"application_name": f"herald-{self.kind}-heartbeat"})
                await beat(conn, self.instance, self.kind, self.started_at)
                self.first_beat.set()
            except (*DATABASE_ERRORS, OSError, asyncio.TimeoutError) as exc:
                log.warning("heartbeat failed; will try again", error=str(exc))
                conn = None
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
        try:
            if conn is not None and not conn.is_closed():
                await conn.execute(STOPPED, self.instance)
                await conn.close()
        except (*DATABASE_ERRORS, OSError):
            pass
