"""Each tenant's active workflows, parsed once and kept until they change.

A trigger on herald.workflows NOTIFYs ``herald_workflows`` with the tenant
id; the worker listens on a dedicated connection and drops that tenant's
entry. Without a live listener nothing is cached (every batch reads the
table), so a change is never missed.
"""

from __future__ import annotations

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
        self._listener: asyncpg.Connection | None = None

    async def for_tenants(
        self, conn: asyncpg.Connection, tenants: Iterable[str]
    ) -> dict[str, list[CachedWorkflow]]:
        await self._ensure_listening()
        wanted = sorted(set(tenants))
        missing = [tenant for tenant in wanted if tenant not in self._entries]
        if missing:
            generations = {tenant: self._generation[tenant] for tenant in missing}
            loaded: dict[str, list[CachedWorkflow]] = {tenant: [] for tenant in missing}
            for row in await conn.fetch(ACTIVE_WORKFLOWS, missing):
                loaded[row["tenant_id"]].append(_parse(row))
            live = self._listener is not None and not self._listener.is_closed()
            for tenant, workflows in loaded.items():
                if live and generations[tenant] == self._generation[tenant]:
                    self._entries[tenant] = workflows
            return {tenant: self._entries.get(tenant, loaded.get(tenant, [])) for tenant in wanted}
        return {tenant: self._entries[tenant] for tenant in wanted}

    def invalidate(self, tenant: str) -> None:
        self._generation[tenant] += 1
        self._entries.pop(tenant, None)

    def clear(self) -> None:
        for tenant in list(self._entries):
            self.invalidate(tenant)

    async def _ensure_listening(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self.clear()
        try:
            self._listener = await connect(self.dsn, server_settings={"application_name": "herald-worker-cache"})
        except HeraldDatabaseError as exc:
            log.warning("workflow cache disabled until the database is back", error=str(exc))
            self._listener = None
            return
        self._listener.add_termination_listener(lambda _conn: self.clear())
        await self._listener.add_listener(CHANNEL, lambda _c, _pid, _ch, tenant: self.invalidate(tenant))
