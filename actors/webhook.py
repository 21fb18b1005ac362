"""webhook(step_ids): POST signed webhooks (see actors.actions.webhook)."""

from __future__ import annotations

from actors.broker import actor
from actors.steps import run_steps


@actor(queue_name="webhook", max_retries=5, min_backoff=500)
async def webhook(step_ids: list[int]) -> None:
    await run_steps(step_ids, "webhook")
