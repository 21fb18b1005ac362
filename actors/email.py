"""email(step_ids): render and deliver email steps through the configured provider."""

from __future__ import annotations

from actors.broker import actor
from actors.steps import run_steps


@actor(queue_name="email", max_retries=5, min_backoff=500, recipient_limited=True)
async def email(step_ids: list[int]) -> None:
    await run_steps(step_ids, "email")
