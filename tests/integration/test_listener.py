"""The daemon's LISTEN connection wakes the dispatcher and survives losing its backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from daemon.demo import load_demo
from daemon.listener import APPLICATION_NAME, listen
from tests.conftest import wait_until

LISTENER_PID = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"


async def test_listener_reconnects_and_keeps_waking(conn: asyncpg.Connection, db_url: str) -> None:
    await load_demo(conn)
    wakes: list[None] = []

    def woken(count: int) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return len(wakes) >= count

        return probe

    stop = asyncio.Event()
    task = asyncio.create_task(listen(db_url, lambda _payload: wakes.append(None), stop))
    try:
        first_pid = await wait_until(lambda: conn.fetchval(LISTENER_PID, APPLICATION_NAME),
                                     message="the listener to connect")
        await wait_until(woken(1), message="the catch-up wake")
        before = len(wakes)
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 1")
        await wait_until(woken(before + 1), message="a wake for the NOTIFY")

        # The server drops the listening backend; the listener comes back on its own.
        await conn.execute("SELECT pg_terminate_backend($1)", first_pid)

        async def new_backend() -> bool:
            pid = await conn.fetchval(LISTENER_PID, APPLICATION_NAME)
            return pid is not None and pid != first_pid

        await wait_until(new_backend, timeout=20, message="the listener to reconnect")
        before = len(wakes)
        await conn.execute("UPDATE jobs SET status = 'completed' WHERE id = 4")
        await wait_until(woken(before + 1), message="a wake after reconnecting")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

