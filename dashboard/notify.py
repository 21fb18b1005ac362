"""The dashboard's side of systemd's notify protocol (``herald-dashboard.service``).

READY=1 once the site listens: the application's resources (its database pool,
Redis client and broker) are set up before aiohttp starts listening, and aiohttp
calls its ``print`` hook once every site is listening, which is where
:func:`serving` sends READY=1. WATCHDOG=1 comes from a task on the dashboard's
event loop (so a blocked loop stops it); the dashboard's pages survive database
and Redis outages (``/health`` reports them), so only the loop's answering
counts. STOPPING=1 as the application shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from config.sd_notify import Notifier, feed_while


def serving(app: web.Application, notifier: Notifier, where: str) -> Callable[..., None]:
    """Attach the watchdog and STOPPING=1 to ``app``; return the hook to give
    ``web.run_app`` as ``print``, which sends READY=1 once the site listens."""

    async def watchdog(_app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(feed_while(notifier, stop), name="systemd-watchdog")
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stopping(_app: web.Application) -> None:
        notifier.stopping()

    app.cleanup_ctx.append(watchdog)
    app.on_shutdown.append(stopping)

    def listening(*_args: object, **_kwargs: object) -> None:
        notifier.ready(f"listening on {where}")

    return listening
