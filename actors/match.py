"""The match actor: a message of event ids, matched by :func:`actors.matching.match_events`.
The runs it starts are enriched in matching's transaction (one commit for both)
and their first steps carried out in the same message: an event needs no other
message unless a step waits or is retried."""

from __future__ import annotations

import asyncio

import structlog

from actors.broker import actor, send
from actors.db import get_pool
from actors.enriching import enrich_in_transaction, enrich_runs
from actors.lazy import PerProcess
from actors.matching import match_events
from actors.steps import message_deadline, start_steps
from actors.workflows_cache import WorkflowCache
from config import log_context
from config.settings import current

log = structlog.get_logger(__name__)

# Each worker process's cache of the tenants' workflows, made on first use.
_cache: PerProcess[WorkflowCache] = PerProcess(lambda: _new_cache())


@actor(queue_name="match", max_retries=5, min_backoff=500)
async def match(event_ids: list[int]) -> None:
    deadline = message_deadline()
    pool = await get_pool()
    async with pool.acquire() as conn:
        # The runs started are enriched in matching's transaction: one commit for both.
        outcome = await match_events(conn, event_ids, await _cache.get(), enrich=enrich_in_transaction)
        first_steps = outcome.first_steps
        # This message's own task: the tenant stays bound for the rest of it (enrich, first steps).
        log_context.bind(tenant_id=outcome.tenants[0] if len(outcome.tenants) == 1 else None)
        if outcome.events:
            log.info("events matched", events=outcome.events, failed=len(outcome.failed),
                     runs=len(outcome.started), skipped=outcome.skipped, cancelled=outcome.cancelled,
                     tenant_ids=outcome.tenants)
        if outcome.started and first_steps is None:
            try:
                first_steps = await enrich_runs(conn, outcome.started)
            except Exception as exc:
                # The runs are committed, pending: this message must not fail now (matching
                # it again finds nothing to do), so they go to the enrich actor and its retries.
                log.warning("could not enrich the runs just started; sending them to the enrich actor",
                            runs=len(outcome.started), error=repr(exc))
    if first_steps is not None:
        await start_steps(first_steps, deadline)  # on connections of their own
    elif outcome.started:
        # Off the event loop: a slow Redis must not stall the other actors. If Redis is
        # down too, the runs stay pending and the daemon's sweeper sends them after the lease.
        await asyncio.to_thread(send, "enrich", outcome.started)


async def _new_cache() -> WorkflowCache:
    return WorkflowCache(current().database_url)
