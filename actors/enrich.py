"""The enrich actor: a message of run ids, enriched by :func:`actors.enriching.enrich_runs`,
then each run's first step sent to its action's actor.

The match actor enriches the runs it starts itself (:func:`enrich_and_start`,
on its own connection, right after matching commits), which saves each event
a message, a queue wait and a worker thread; this actor takes the runs it
could not enrich, and those the daemon's sweeper finds left pending.
"""

from __future__ import annotations

import asyncio

import asyncpg

from actors.actions import ACTIONS
from actors.broker import actor, send
from actors.db import get_pool
from actors.enriching import enrich_runs


@actor(queue_name="enrich", max_retries=5, min_backoff=500)
async def enrich(run_ids: list[int]) -> None:
    pool = await get_pool()
    async with pool.acquire() as conn:
        await enrich_and_start(conn, run_ids)


async def enrich_and_start(conn: asyncpg.Connection, run_ids: list[int]) -> None:
    """Enrich the pending runs among ``run_ids`` and send each one's first step to its actor."""
    first_steps = await enrich_runs(conn, run_ids)
    for action, step_ids in first_steps.items():
        # Off the event loop: a slow Redis must not stall the other actors.
        await asyncio.to_thread(send, ACTIONS[action].actor, step_ids)
