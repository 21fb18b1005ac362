"""Carrying out claimed steps: execute the action, record the outcome, advance the run.

A step is claimed in PostgreSQL before it runs (pending, or waiting and due,
becomes *sending*); a duplicate Dramatiq message finds nothing to claim.
Actions that only write to PostgreSQL run inside the claiming transaction,
so their effect and the step's status commit together. Actions that call a
provider commit the claim first (see :mod:`actors.actions.delivery`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from actors import metrics
from actors.actions import ACTIONS, Done, Outcome, StepRun, Wait
from actors.actions.delivery import MARK_MESSAGE
from actors.broker import send
from actors.db import get_pool
from actors.http import get_session
from actors.liveness import worker_instance
from actors.model.retry_policy import RetryPolicy
from actors.model.templates import as_records
from config.errors import (
    DeliveryUnknownError,
    HeraldConfigError,
    RateLimitedError,
    StepError,
)
from config.settings import current

log = structlog.get_logger(__name__)

# Dramatiq holds delayed messages in Redis; longer waits are left to the sweeper.
MAX_QUEUE_DELAY_S = 3600

# A step's stage (steps of runs enriched before migration 021 have none: each is a
# stage of its own), and whether another step shares it: then the run's row is
# locked before judging whether the stage has ended (see LOCK_RUN).
STAGE_OF = """coalesce(s.stage, s.position) AS stage,
    EXISTS (SELECT 1 FROM herald.steps g WHERE g.run_id = s.run_id AND g.stage = s.stage AND g.id <> s.id) AS grouped"""

CLAIM_STEPS = f"""
UPDATE herald.steps s
SET status = 'sending',
    attempts = s.attempts + CASE WHEN s.status = 'waiting' THEN 0 ELSE 1 END,
    started_at = coalesce(s.started_at, clock_timestamp()), updated_at = clock_timestamp(),
    next_attempt_at = NULL, claimed_by = $3
FROM herald.runs r
JOIN herald.events e ON e.id = r.event_id
JOIN herald.workflows w ON w.id = r.workflow_id
LEFT JOIN herald.watched_tables wt ON wt.table_name = e.table_name
LEFT JOIN herald.tenant_settings ts ON ts.tenant_id = r.tenant_id
WHERE s.id = ANY($1::bigint[]) AND s.action = ANY($2::text[])
  -- CASE keeps the planner off the partial indexes of unfinished runs and steps (see
  -- actors/store.py CLAIM_RUNS): the claim starts from the steps named, by primary key
  AND r.id = s.run_id AND CASE r.status WHEN 'running' THEN true ELSE false END
  AND CASE s.status WHEN 'pending' THEN s.next_attempt_at IS NULL OR s.next_attempt_at <= clock_timestamp()
                    WHEN 'waiting' THEN s.wake_at <= clock_timestamp()
                    ELSE false END
RETURNING s.id, s.run_id, s.tenant_id, s.position, {STAGE_OF}, s.step_key, s.action, s.config, s.attempts,
          s.wake_at, r.context, r.workflow_id, r.event_id, w.definition -> 'retry' AS retry,
          w.definition -> 'rate_limit' AS rate_limit, ts.rate_limit AS tenant_rate_limit,
          e.table_name, e.row_id, e.entity, wt.id_column, wt.tenant_column, wt.action_targets,
          wt.updatable_columns, wt.fills, wt.capture, w.name AS workflow_name,
          extract(epoch FROM clock_timestamp() - e.created_at)::float8 AS event_age_s
"""

STEP_DONE = """
UPDATE herald.steps
SET status = 'sent', rendered = $2, provider_response = $3, error = NULL,
    completed_at = clock_timestamp(), updated_at = clock_timestamp(), execution_time_ms = $4
WHERE id = $1
"""

STEP_WAITING = """
UPDATE herald.steps
SET status = 'waiting', wake_at = $2, rendered = $3, updated_at = clock_timestamp(),
    execution_time_ms = $4
WHERE id = $1
"""

STEP_RETRY = """
UPDATE herald.steps
SET status = 'pending', next_attempt_at = clock_timestamp() + make_interval(secs => $2),
    attempts = attempts - $3, rendered = $4, error = $5, updated_at = clock_timestamp()
WHERE id = $1
"""

STEP_FAILED = """
UPDATE herald.steps
SET status = $2, rendered = $3, error = $4, completed_at = clock_timestamp(),
    updated_at = clock_timestamp(), execution_time_ms = $5
WHERE id = $1
"""

# Another step of run {run} (not {step}) is still to finish{among}.
_UNFINISHED = """SELECT 1 FROM herald.steps o
WHERE o.run_id = {run} AND o.id <> {step} AND o.status IN ('pending', 'sending', 'waiting'){among}"""

# The next stage's steps, to start once step {step} of stage {stage} has finished:
# none while another step of its stage is still to finish.
_FOLLOWING = """SELECT id, action FROM herald.steps
WHERE run_id = {run} AND coalesce(stage, position) = {stage} + 1 AND status = 'pending'
  AND NOT EXISTS ({unfinished})"""


def _following(run: str, step: str, stage: str) -> str:
    among = f" AND coalesce(o.stage, o.position) = {stage}"
    return _FOLLOWING.format(run=run, stage=stage,
                             unfinished=_UNFINISHED.format(run=run, step=step, among=among))


# $1 the run, $2 the stage, $3 the step that has finished.
FOLLOWING = _following("$1", "$3", "$2")

# Taken before judging, in the same transaction, whether a stage of several steps
# has ended: two of its steps finishing at once then see each other, and exactly
# one of them starts the next stage (or completes the run).
LOCK_RUN = "SELECT 1 FROM herald.runs WHERE id = $1 FOR UPDATE"

# A run whose every step was skipped (a rate limit's "skip") sent and wrote
# nothing: it ends *skipped*, saying why, not *completed*. {run}: the run;
# {sent}: a step of it sent in the same statement (whose update the statement
# does not see), or NULL; {also}: a further condition.
_RUN_COMPLETED = """
UPDATE herald.runs r
SET status = CASE WHEN done.any THEN 'completed' ELSE 'skipped' END,
    error = CASE WHEN done.any THEN NULL ELSE 'nothing sent: every step was skipped ('
                 || coalesce(done.first_reason, 'no reason recorded') || ')' END,
    completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - r.created_at) * 1000)::int
FROM (SELECT coalesce(bool_or(s.status = 'sent' OR s.id = {sent}), false) AS any,
             (array_agg(s.error ORDER BY s.position)
                 FILTER (WHERE s.status = 'skipped' AND s.id IS DISTINCT FROM {sent}))[1] AS first_reason
      FROM herald.steps s WHERE s.run_id = {run}) AS done
WHERE r.id = {run} AND r.status = 'running'{also}
RETURNING r.status, r.execution_time_ms
"""

# The run completed once no step but {step} is still to finish.
def _run_completed(run: str, step: str, sent: str) -> str:
    also = f" AND NOT EXISTS ({_UNFINISHED.format(run=run, step=step, among='')})"
    return _RUN_COMPLETED.format(run=run, sent=sent, also=also).strip()


# $1 the run, $2 the step that has finished (and been recorded so).
RUN_COMPLETED = _run_completed("$1", "$2", "NULL::bigint")

# A step sent, and what follows in the same statement (one round trip): the
# message it delivered marked with the provider's answer, the next stage's steps
# to start, or, after the last, the run completed. $1-$4: STEP_DONE's; $5 the run,
# $6 the step's stage; $7-$9 the message (Delivered: its id, status and provider
# id; NULLs for a step that sent none). A row per step to start, or one row with
# the run's end (or none of either). {following}, {ended}: what a step alone in
# its stage needs, or, for a stage of several (in a transaction, after LOCK_RUN),
# the checks that the others have finished.
_STEP_SENT = f"""
WITH done AS ({STEP_DONE.strip()}),
delivered AS ({MARK_MESSAGE.format(id="$7::bigint", status="$8::text", provider_id="$9::text")}),
following AS ({{following}}),
ended AS ({{ended}})
SELECT f.id, f.action, e.status, e.execution_time_ms
FROM (SELECT) AS one LEFT JOIN following f ON true LEFT JOIN ended e ON true
"""

# Alone in its stage, the step started after every earlier stage had finished.
STEP_SENT = _STEP_SENT.format(
    following="SELECT id, action FROM herald.steps"
              " WHERE run_id = $5 AND coalesce(stage, position) = $6 + 1 AND status = 'pending'",
    ended=_RUN_COMPLETED.format(run="$5", sent="$1", also=" AND NOT EXISTS (SELECT 1 FROM following)").strip())

GROUP_STEP_SENT = _STEP_SENT.format(following=_following("$5", "$1", "$6"), ended=_run_completed("$5", "$1", "$1"))

RUN_FAILED = """
UPDATE herald.runs
SET status = 'failed', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = $1 AND status = 'running'
RETURNING status, execution_time_ms
"""

SKIP_REMAINING = """
UPDATE herald.steps SET status = 'skipped', updated_at = clock_timestamp()
WHERE run_id = $1 AND status = 'pending'
"""


@dataclass(frozen=True)
class FollowUp:
    """A message to send once the step's transaction has committed."""

    step_id: int
    action: str
    delay_s: float = 0.0


# Steps one worker process carries out at once. A step is claimed only when a
# slot is free, so its lease covers work that is really running.
DELIVERY_SLOTS = 32


class Slots:
    """A per-process count of free delivery slots, taken several at a time so
    that a batch of steps is claimed in one query when the slots are there.

    Used from the one event loop of a worker process; giving a slot back is
    synchronous, so a step cancelled mid-way (the actor's time limit) still
    returns its slot.
    """

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def take(self, most: int) -> int:
        """Wait for a free slot; take up to ``most`` of the free ones."""
        while self.free <= 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        taken = min(most, self.free)
        self.free -= taken
        return taken

    def give(self, count: int = 1) -> None:
        self.free += count
        for waiter in list(self._waiters)[:max(self.free, 0)]:
            if not waiter.done():
                waiter.set_result(None)


_slots: dict[int, Slots] = {}


def _slots_of_this_process() -> Slots:
    return _slots.setdefault(os.getpid(), Slots(DELIVERY_SLOTS))


async def run_steps(step_ids: list[int], actor_name: str, deadline: float | None = None) -> None:
    """Carry out the claimable steps among ``step_ids`` whose action runs on ``actor_name``,
    then the steps that follow them at once (see :func:`_hand_on`).

    ``deadline`` (``time.monotonic()``): no step starts after it, so that none is
    cut off by the actor's time limit in the middle of a provider call; those not
    started go back to the queue. By default, the time limit of a message that
    starts now, less a provider call's timeout.
    """
    if deadline is None:
        deadline = message_deadline()
    names = [name for name, action in ACTIONS.items() if action.actor == actor_name]
    pool = await get_pool()
    follow_ups: list[FollowUp] = []
    if ACTIONS[names[0]].atomic:
        for step_id in step_ids:
            async with pool.acquire() as conn, conn.transaction():
                step = await conn.fetchrow(CLAIM_STEPS, [step_id], names, worker_instance())
                if step is not None:
                    follow_ups += await _run(pool, step, conn)
        await _hand_on(follow_ups, deadline)
        return
    slots = _slots_of_this_process()
    waiting = list(step_ids)
    running: list[asyncio.Task[list[FollowUp]]] = []

    async def one(step: asyncpg.Record) -> list[FollowUp]:
        try:
            return await _run(pool, step)
        finally:
            slots.give()

    try:
        while waiting and time.monotonic() <= deadline:
            taken = await slots.take(len(waiting))
            batch, waiting = waiting[:taken], waiting[taken:]
            try:
                claimed = await pool.fetch(CLAIM_STEPS, batch, names, worker_instance())
            except BaseException:
                slots.give(taken)
                raise
            slots.give(taken - len(claimed))  # done already, or someone else's
            running += [asyncio.create_task(one(step)) for step in claimed]
    finally:
        results = await asyncio.gather(*running, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        follow_ups += [f for result in results if not isinstance(result, BaseException) for f in result]
        follow_ups += [FollowUp(step_id, names[0]) for step_id in waiting]  # not started by the deadline
        # The siblings' follow-ups go on even when one step failed unexpectedly.
        await _hand_on(follow_ups, deadline)
    for failure in failures:
        log.error("step crashed", error=repr(failure), exc_info=failure)
    if failures:
        raise failures[0]


def message_deadline() -> float:
    """When a message that starts now must start its last step (``time.monotonic()``):
    the actor's time limit, less a provider call's timeout and a margin."""
    settings = current()
    return time.monotonic() + max(settings.actor_time_limit_s - settings.http_timeout_s - 2.0,
                                  settings.actor_time_limit_s / 2)


async def start_steps(first_steps: Mapping[str, list[int]], deadline: float) -> None:
    """Carry out runs' first steps (by action) in this message, as :func:`_hand_on` does."""
    await _hand_on([FollowUp(step_id, action) for action, step_ids in first_steps.items()
                    for step_id in step_ids], deadline)


async def _hand_on(follow_ups: list[FollowUp], deadline: float) -> None:
    """Carry out, in this message, the steps that follow at once (the next step of a
    run, with no wait or retry delay before it) while the message's time allows;
    send the others to their actors.

    The next step is claimed like any other, so this changes who runs it, not
    whether it runs once: a run's steps go one after another in one worker
    without a message, a queue wait and a thread each. The steps of different
    actors (a stage's email and SMS) are carried out at the same time.
    """
    now: dict[str, list[int]] = {}
    later: list[FollowUp] = []
    # A message being cancelled (a worker stopping) starts nothing more: its follow-ups are queued.
    task = asyncio.current_task()
    on_time = time.monotonic() < deadline and not (task is not None and task.cancelling())
    for follow_up in follow_ups:
        if on_time and follow_up.delay_s <= 0:
            now.setdefault(ACTIONS[follow_up.action].actor, []).append(follow_up.step_id)
        else:
            later.append(follow_up)
    await _send(later)

    async def carry_out(actor_name: str, step_ids: list[int]) -> None:
        try:
            await run_steps(step_ids, actor_name, deadline)
        except Exception:
            # PostgreSQL away, say: the steps go to their actor, whose message is retried
            # (a step already claimed is not claimed twice).
            await asyncio.to_thread(send, actor_name, step_ids)
            raise

    if len(now) == 1:  # the usual case: no task of its own needed
        [(actor_name, step_ids)] = now.items()
        await carry_out(actor_name, step_ids)
        return
    # Each actor's steps at the same time: a group's email and SMS go out together.
    results = await asyncio.gather(*(carry_out(actor_name, step_ids) for actor_name, step_ids in now.items()),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancelled: the message stops here
    failures = [result for result in results if isinstance(result, Exception)]
    if failures:
        raise failures[0]


async def _send(follow_ups: list[FollowUp]) -> None:
    """Send follow-up messages off the event loop: a slow Redis does not stall other steps."""
    if follow_ups:
        await asyncio.to_thread(_send_now, follow_ups)


def _send_now(follow_ups: list[FollowUp]) -> None:
    grouped: dict[tuple[str, int], list[int]] = {}
    for follow_up in follow_ups:
        delay_ms = int(follow_up.delay_s * 1000)
        if delay_ms <= MAX_QUEUE_DELAY_S * 1000:
            grouped.setdefault((ACTIONS[follow_up.action].actor, delay_ms), []).append(follow_up.step_id)
    for (actor_name, delay_ms), ids in grouped.items():
        send(actor_name, ids, delay_ms=delay_ms)


async def _run(pool: asyncpg.Pool, step: Mapping[str, Any],
               conn: asyncpg.Connection | None = None) -> list[FollowUp]:
    """Execute one claimed step and record what happened; return messages to send.

    ``conn``: the claiming transaction's connection, for atomic actions. Other
    actions hold no connection while they run and record on one taken after.
    """
    started = time.monotonic()
    action = ACTIONS[step["action"]]
    run = StepRun(step, as_records(step["context"]), current(), pool, await get_session(), conn)
    # Restored when the step ends: the next step this task carries out binds its own.
    with structlog.contextvars.bound_contextvars(
        event_id=step["event_id"], run_id=step["run_id"], step_id=step["id"], tenant_id=step["tenant_id"],
        workflow_id=str(step["workflow_id"]), action=step["action"]
    ):
        outcome: Outcome | StepError
        try:
            if conn is not None:
                async with conn.transaction():  # a savepoint: a failed write leaves nothing behind
                    outcome = await action.execute(run)
            else:
                outcome = await action.execute(run)
        except HeraldConfigError as exc:
            # A provider that is not configured: fixable by a person, not by retrying.
            outcome = StepError(str(exc))
        except StepError as exc:
            outcome = exc
        elapsed_ms = _elapsed_ms(started)
        if conn is not None:
            return await _record(conn, step, run.rendered, outcome, elapsed_ms)
        async with pool.acquire() as record_conn:
            return await _record(record_conn, step, run.rendered, outcome, elapsed_ms)


async def _record(conn: asyncpg.Connection, step: Mapping[str, Any], rendered: dict[str, Any],
                  outcome: Outcome | StepError, elapsed_ms: int) -> list[FollowUp]:
    if isinstance(outcome, StepError):
        return await _record_error(conn, step, rendered, outcome, elapsed_ms)
    return await _record_outcome(conn, step, rendered, outcome, elapsed_ms)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _record_outcome(
    conn: asyncpg.Connection, step: Mapping[str, Any], rendered: dict[str, Any], outcome: Outcome,
    elapsed_ms: int,
) -> list[FollowUp]:
    if isinstance(outcome, Wait):
        await conn.execute(STEP_WAITING, step["id"], outcome.until, rendered, elapsed_ms)
        metrics.STEPS.labels(step["action"], "waiting").inc()
        delay = (outcome.until - dt.datetime.now(dt.UTC)).total_seconds()
        log.info("step waiting", until=outcome.until.isoformat())
        return [FollowUp(step["id"], step["action"], max(delay, 0.0))]
    assert isinstance(outcome, Done)
    delivered = outcome.delivered
    values = (step["id"], rendered, outcome.response, elapsed_ms, step["run_id"], step["stage"],
              *((delivered.message_id, delivered.status, delivered.provider_message_id)
                if delivered is not None else (None, None, None)))
    if step["grouped"]:
        async with conn.transaction():
            await conn.execute(LOCK_RUN, step["run_id"])
            sent = await conn.fetch(GROUP_STEP_SENT, *values)
    else:
        sent = await conn.fetch(STEP_SENT, *values)
    metrics.STEPS.labels(step["action"], "sent").inc()
    if sent[0]["id"] is not None:
        return [FollowUp(row["id"], row["action"]) for row in sent]
    if sent[0]["status"] is not None:
        _run_ended(sent[0], step)
    return []


async def advance(conn: asyncpg.Connection, step: Mapping[str, Any]) -> list[FollowUp]:
    """After a step is done (or skipped), in the transaction that recorded it: start
    the next stage's steps, or complete the run, once no other step of its stage
    is still to finish."""
    await conn.execute(LOCK_RUN, step["run_id"])
    following = await conn.fetch(FOLLOWING, step["run_id"], step["stage"], step["id"])
    if following:
        return [FollowUp(row["id"], row["action"]) for row in following]
    ended = await conn.fetchrow(RUN_COMPLETED, step["run_id"], step["id"])
    if ended is not None:
        _run_ended(ended, step)
    return []


def _run_ended(ended: asyncpg.Record, step: Mapping[str, Any]) -> None:
    """After a run's last step: count the run it ended."""
    _run_finished(ended, step)
    log.info("run completed")


async def _record_error(
    conn: asyncpg.Connection, step: Mapping[str, Any], rendered: dict[str, Any], exc: StepError,
    elapsed_ms: int,
) -> list[FollowUp]:
    if isinstance(exc, RateLimitedError) and exc.skip:
        # Over the recipient's limit with the skip policy: record why and go on.
        log.info("step skipped by rate limit", reason=str(exc))
        metrics.STEPS.labels(step["action"], "skipped").inc()
        async with conn.transaction():
            await conn.execute(STEP_FAILED, step["id"], "skipped", rendered, str(exc), elapsed_ms)
            return await advance(conn, step)
    policy = RetryPolicy.from_config(step["retry"])
    # A wait the provider asked for (429) is not an attempt.
    spent = 0 if exc.retry_after is not None else 1
    retries_used = step["attempts"] - 1
    if not exc.permanent and (spent == 0 or retries_used < policy.max_retries):
        delay = exc.retry_after if exc.retry_after is not None else policy.delay_s(retries_used + 1)
        await conn.execute(STEP_RETRY, step["id"], delay, 1 - spent, rendered, str(exc))
        (metrics.RETRIES if spent else metrics.RATE_LIMIT_WAITS).labels(step["action"]).inc()
        metrics.STEPS.labels(step["action"], "retry" if spent else "rate_limited").inc()
        log.warning("step will be retried", error=str(exc), retry_in_s=round(delay, 2))
        return [FollowUp(step["id"], step["action"], delay)]
    status = "unknown" if isinstance(exc, DeliveryUnknownError) else "failed"
    error = str(exc)
    if not exc.permanent:
        error = f"gave up after {step['attempts']} attempts: {error}"
    reason = f"step {step['position'] + 1} ({step['step_key']}, {step['action']}): {error}"
    if status == "unknown":
        reason += "; parked for a person to decide"
    log.warning("step failed", error=error, status=status)
    async with conn.transaction():
        await conn.execute(STEP_FAILED, step["id"], status, rendered, error, elapsed_ms)
        await conn.execute(SKIP_REMAINING, step["run_id"])
        _run_finished(await conn.fetchrow(RUN_FAILED, step["run_id"], reason), step)
    metrics.STEPS.labels(step["action"], status).inc()
    return []


def _run_finished(ended: asyncpg.Record | None, step: Mapping[str, Any]) -> None:
    """Count a run this step ended (None: it had ended already)."""
    if ended is not None:
        elapsed_ms = ended["execution_time_ms"]
        metrics.record_run_finished(ended["status"], None if elapsed_ms is None else elapsed_ms / 1000,
                                    step["tenant_id"], step.get("workflow_name") or str(step.get("workflow_id")))
