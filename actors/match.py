"""match(event_ids): which workflows each event runs, one run per (workflow, event).

Every event records, for each active workflow of its tenant, whether it
matched and why or why not.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import dramatiq
import structlog

from actors import store
from actors.db import get_pool
from actors.workflow import evaluate
from actors.workflows_cache import spec_for
from config.errors import WorkflowValidationError

log = structlog.get_logger(__name__)


@dramatiq.actor(queue_name="match", max_retries=5, min_backoff=500)
async def match(event_ids: list[int]) -> None:
    pool = await get_pool()
    async with pool.acquire() as conn, conn.transaction():
        events = await conn.fetch(store.CLAIM_EVENTS, event_ids)
        if not events:
            return
        tenants = sorted({event["tenant_id"] for event in events})
        workflows_by_tenant: dict[str, list[Any]] = defaultdict(list)
        for row in await conn.fetch(store.ACTIVE_WORKFLOWS, tenants):
            workflows_by_tenant[row["tenant_id"]].append(row)

        runs: list[tuple[str, Any, int, dict[str, Any]]] = []
        for event in events:
            report = []
            for row in workflows_by_tenant[event["tenant_id"]]:
                spec = spec_for(dict(row))
                if event["workflow_id"] is not None and event["workflow_id"] != row["id"]:
                    matched, reason = False, "the event was fired for another workflow"
                elif isinstance(spec, WorkflowValidationError):
                    matched, reason = False, f"workflow is invalid: {spec}"
                else:
                    verdict = evaluate(spec, dict(event))
                    matched, reason = verdict.matched, verdict.reason
                report.append({
                    "workflow_id": str(row["id"]), "workflow": row["name"],
                    "matched": matched, "reason": reason,
                })
                if matched:
                    runs.append((event["tenant_id"], row["id"], event["id"], {"reason": reason}))
            await conn.execute(store.MARK_MATCHED, event["id"], {"workflows": report})

        created = []
        if runs:
            tenant_ids, workflow_ids, run_event_ids, reasons = map(list, zip(*runs))
            created = await conn.fetch(store.INSERT_RUNS, tenant_ids, workflow_ids, run_event_ids, reasons)
            if created:
                await conn.execute(store.COUNT_EXECUTIONS, [row["workflow_id"] for row in created])
    log.info("events matched", events=len(events), runs=len(created))
    if created:
        dramatiq.get_broker().get_actor("enrich").send([row["id"] for row in created])
