"""Carrying out claimed steps: render, record, deliver, advance the run.

A step is claimed (pending -> sending) before anything else, and its message
row, keyed by a deterministic idempotency key, is written before the provider
is called. A step whose message row already exists is never sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import dramatiq
import structlog

from actors import store
from actors.actions import ACTIONS
from actors.broker import settings
from actors.db import get_pool
from actors.providers import OutboundMessage, ProviderResult, get_provider
from actors.templates import as_records
from config.errors import StepError

log = structlog.get_logger(__name__)


def idempotency_key(step: Any) -> str:
    """The same for every attempt at one step of one run: workflow, event, step."""
    return f"{step['workflow_id']}:{step['event_id']}:{step['step_key']}"


async def run_steps(step_ids: list[int], channel: str) -> None:
    """Carry out the pending steps among ``step_ids`` whose action uses ``channel``."""
    actions = [name for name, action in ACTIONS.items() if action.channel == channel]
    pool = await get_pool()
    claimed = await pool.fetch(store.CLAIM_STEPS, step_ids, actions)
    if not claimed:
        return
    outcomes = await asyncio.gather(*(_run_one(pool, step) for step in claimed))
    next_steps: dict[str, list[int]] = defaultdict(list)
    for action, step_id in (outcome for outcome in outcomes if outcome is not None):
        next_steps[action].append(step_id)
    broker = dramatiq.get_broker()
    for action, ids in next_steps.items():
        broker.get_actor(ACTIONS[action].channel).send(ids)


async def _run_one(pool: Any, step: Any) -> tuple[str, int] | None:
    """Run one claimed step; return the next step to send, if any."""
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(
        run_id=step["run_id"], step_id=step["id"], tenant_id=step["tenant_id"]
    ):
        action = ACTIONS[step["action"]]
        rendered: dict[str, str] | None = None
        try:
            rendered = action.render(step["config"], as_records(step["context"]))
            result = await _deliver(pool, step, action.channel, rendered)
        except StepError as exc:
            log.warning("step failed", error=str(exc))
            await _fail(pool, step, rendered, str(exc), _elapsed_ms(started))
            return None
        return await _succeed(pool, step, rendered, result, _elapsed_ms(started))


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _deliver(pool: Any, step: Any, channel: str, rendered: dict[str, str]) -> ProviderResult:
    provider = get_provider(settings.provider_for(channel))
    key = idempotency_key(step)
    message_id = await pool.fetchval(
        store.INSERT_MESSAGE,
        step["tenant_id"], step["run_id"], step["id"], channel, provider.name, key,
        rendered["recipient"], rendered.get("subject"), rendered["message"],
    )
    if message_id is None:
        existing = await pool.fetchrow(store.MESSAGE_BY_KEY, key)
        if existing["status"] in ("sent", "captured"):
            # Delivered by an earlier attempt whose bookkeeping was lost.
            return ProviderResult(existing["status"], existing["provider_message_id"],
                                  {"already_delivered": True})
        raise StepError(
            f"message {key} was handed to the provider before and its outcome is unknown;"
            " not sending it again"
        )
    result = await provider.send(
        OutboundMessage(channel, rendered["recipient"], rendered["message"], key, rendered.get("subject"))
    )
    await pool.execute(store.MESSAGE_DELIVERED, message_id, result.status, result.provider_message_id)
    return result


async def _succeed(
    pool: Any, step: Any, rendered: dict[str, str] | None, result: ProviderResult, elapsed_ms: int
) -> tuple[str, int] | None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(store.STEP_SENT, step["id"], rendered, result.response, elapsed_ms)
        following = await conn.fetchrow(store.NEXT_STEP, step["run_id"], step["position"] + 1)
        if following is None:
            await conn.execute(store.RUN_COMPLETED, step["run_id"])
            log.info("run completed")
            return None
    return following["action"], following["id"]


async def _fail(pool: Any, step: Any, rendered: dict[str, str] | None, error: str, elapsed_ms: int) -> None:
    reason = f"step {step['position'] + 1} ({step['step_key']}, {step['action']}): {error}"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(store.STEP_FAILED, step["id"], "failed", rendered, error, elapsed_ms)
        await conn.execute(store.SKIP_REMAINING, step["run_id"])
        await conn.execute(store.RUN_FAILED, step["run_id"], reason)
