"""Each tenant's active workflows, parsed once and kept until they change.

A trigger on herald.workflows NOTIFYs ``herald_workflows`` with the tenant
id; the worker listens on a dedicated connection and drops that tenant's
entry. Without a live listener nothing is cached (every batch reads the
table), so a change is never missed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from actors.model.workflow import WorkflowSpec, parse_workflow
from config.database import connect
from config.errors import HeraldDatabaseError, WorkflowValidationError

log = structlog.get_logger(__name__)

CHANNEL = "herald_workflows"

ACTIVE_WORKFLOWS = """
SELECT id, tenant_id, name, definition, updated_at
FROM herald.workflows
WHERE is_active AND tenant_id = ANY($1::text[])
ORDER BY created_at, id
"""


@dataclass(frozen=True)
class CachedWorkflow:
    id: Any
    tenant_id: str
    name: str
    spec: WorkflowSpec | WorkflowValidationError  # a bad stored row is reported, not raised


def _parse(row: Any) -> CachedWorkflow:
    try:
        spec: WorkflowSpec | WorkflowValidationError = parse_workflow(row["definition"])
    except WorkflowValidationError as exc:
        log.warning("stored workflow is invalid", workflow_id=str(row["id"]), error=str(exc))
        spec = exc
    return CachedWorkflow(row["id"], row["tenant_id"], row["name"], spec)


class WorkflowCache:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._entries: dict[str, list[CachedWorkflow]] = {}
        # Bumped by every notification, so a load that raced a change is not kept.
        self._generation: dict[str, int] = defaultdict(int)
        # Bumped whenever listening starts or stops: a load begun before is not kept.
        self._epoch = 0
        self._listener: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()

    async def for_tenants(
        self, conn: asyncpg.Connection, tenants: Iterable[str]
    ) -> dict[str, list[CachedWorkflow]]:
        await self._ensure_listening()
        wanted = set(tenants)
        # What is cached is taken now, before any await: a notification (or the
        # listener's loss) while the missing tenants load drops entries, and a
        # tenant dropped then must still get its workflows, never an empty list.
        found = {tenant: self._entries[tenant] for tenant in wanted if tenant in self._entries}
        missing = sorted(wanted - found.keys())
        if missing:
            epoch, generations = self._epoch, {tenant: self._generation[tenant] for tenant in missing}
            loaded: dict[str, list[CachedWorkflow]] = {tenant: [] for tenant in missing}
            for row in await conn.fetch(ACTIVE_WORKFLOWS, missing):
                loaded[row["tenant_id"]].append(_parse(row))
            live = self._listener is not None and not self._listener.is_closed() and epoch == self._epoch
            for tenant, workflows in loaded.items():
                if live and generations[tenant] == self._generation[tenant]:
                    self._entries[tenant] = workflows
            found.update(loaded)
        return found

    def invalidate(self, tenant: str) -> None:
        self._generation[tenant] += 1
        self._entries.pop(tenant, None)

    def clear(self) -> None:
        self._epoch += 1
        for tenant in list(self._entries):
            self.invalidate(tenant)

    async def _ensure_listening(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._connecting:  # one listening connection, however many batches ask
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = None
            self.clear()
            try:
                listener = await connect(self.dsn, server_settings={"application_name": "herald-worker-cache"})
            except HeraldDatabaseError as exc:
                log.warning("workflow cache disabled until the database is back", error=str(exc))
                return
            try:
                listener.add_termination_listener(lambda _conn: self.clear())
                await listener.add_listener(CHANNEL, lambda _c, _pid, _ch, tenant: self.invalidate(tenant))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                listener.terminate()
                log.warning("workflow cache disabled until the database is back", error=str(exc))
                return
            self._listener = listener
            self.clear()  # nothing loaded before this point is kept: a change may have gone unheard
