"""Per-process resources created on first use, on the actors' event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """Holds one resource (a pool, a session) built by ``factory`` the first time it is needed."""

    def __init__(self, factory: Callable[[], Awaitable[T]]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        if self._value is None:
            async with self._lock:
                if self._value is None:
                    self._value = await self._factory()
        return self._value

    def peek(self) -> T | None:
        """The resource if it was built, without building it."""
        return self._value
