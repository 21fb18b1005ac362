"""The ids a log line carries: which event, run, step and tenant it is about.

Herald binds them with structlog's context variables, so every line logged
while an event, run or step is handled carries them, whoever logs it
(Herald's own modules, Dramatiq, asyncpg, aiohttp). Context variables belong
to the asyncio task (or thread) that binds them: each actor message and each
dashboard request runs in its own task, or clears what it bound when it ends,
so one message's ids never show on the next message's lines.

Actor messages carry batches of ids. A batch of one binds the singular id
(``event_id``...); every batch binds the list (``event_ids``...), and the
tenant when the whole batch is one tenant's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog

# Longest id list put on a log line: a batch of hundreds is summarised, not listed.
MAX_IDS = 50


def batch_ids(kind: str, ids: Iterable[Any]) -> dict[str, Any]:
    """``{kind}_ids`` (and ``{kind}_id`` for a batch of one) for a batch of ``ids``."""
    listed = list(ids)
    found: dict[str, Any] = {f"{kind}_ids": listed[:MAX_IDS]}
    if len(listed) == 1:
        found[f"{kind}_id"] = listed[0]
    return found


def rows_ids(kind: str, rows: Iterable[Mapping[str, Any]], *, tenant_key: str = "tenant_id",
             event_key: str | None = None) -> dict[str, Any]:
    """The ids of a batch of claimed rows: the rows' own (:func:`batch_ids` of
    ``id``), the tenant when all are one tenant's, and, with ``event_key``, the
    event when all come from one."""
    rows = list(rows)
    found = batch_ids(kind, [row["id"] for row in rows])
    tenants = {row[tenant_key] for row in rows}
    if len(tenants) == 1:
        found["tenant_id"] = next(iter(tenants))
    if event_key is not None:
        events = {row[event_key] for row in rows}
        if len(events) == 1:
            found["event_id"] = next(iter(events))
    return found


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Bind ``ids`` (those not None) for the block, then restore what was bound before."""
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in ids.items() if v is not None}):
        yield


def bind(**ids: Any) -> None:
    """Bind ``ids`` (those not None) until the current task or message ends.

    Only where the caller owns the context: an actor's coroutine (its own
    task) or a dashboard request (cleared when it ends)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


def clear() -> None:
    """Forget every id bound in this context (between messages and requests)."""
    structlog.contextvars.clear_contextvars()
