"""The worker process's aiohttp session, shared by every provider call."""

from __future__ import annotations

import aiohttp

from actors.lazy import PerProcess


async def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


_session: PerProcess[aiohttp.ClientSession] = PerProcess(_new_session)


async def get_session() -> aiohttp.ClientSession:
    """One ClientSession per process, created on the actors' event loop."""
    return await _session.get()
