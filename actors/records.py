"""records(step_ids): actions carried out inside PostgreSQL: app-table writes, drafts, waits."""

from __future__ import annotations

from actors.broker import actor
from actors.steps import run_steps


@actor(queue_name="records", max_retries=5, min_backoff=500)
async def records(step_ids: list[int]) -> None:
    await run_steps(step_ids, "records")
