"""The enrich actor: a message of run ids, enriched by :func:`actors.enriching.enrich_runs`,
then each run's first step carried out (:func:`actors.steps.start_steps`).

The match actor enriches the runs it starts itself, in matching's transaction,
which saves each event a message, a queue wait, a worker thread and a commit;
this actor takes the runs it could not enrich, and those the daemon's sweeper
finds left pending.
"""

from __future__ import annotations

from actors.broker import actor
from actors.db import get_pool
from actors.enriching import enrich_runs
from actors.steps import message_deadline, start_steps


@actor(queue_name="enrich", max_retries=5, min_backoff=500)
async def enrich(run_ids: list[int]) -> None:
    deadline = message_deadline()
    pool = await get_pool()
    async with pool.acquire() as conn:
        first_steps = await enrich_runs(conn, run_ids)
    await start_steps(first_steps, deadline)  # on connections of their own
