"""sms(step_ids): render and deliver SMS steps through the configured provider."""

from __future__ import annotations

from actors.broker import actor
from actors.steps import run_steps


@actor(queue_name="sms", max_retries=5, min_backoff=500, recipient_limited=True)
async def sms(step_ids: list[int]) -> None:
    await run_steps(step_ids, "sms")
