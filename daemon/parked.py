"""Parked steps: a person decides what became of a message whose outcome is unknown.

A step is parked (status *unknown*) when a worker handed its message to a
provider that does not drop repeated messages and never heard back: the
provider may or may not have delivered it, so Herald never sends it again on
its own, and the run fails saying so. Someone who checked (with the provider,
or with the person the message was for) decides:

- **resend**: send it again. The run is retried as it ran (daemon.retries:
  the unknown step is reset and its message row reopened, REOPEN_MESSAGES).
- **mark as sent**: it did arrive. The step becomes *sent* and the run goes
  on to its next step, or completes, as after any sent step (actors.steps).
- **give up**: the step fails for good with "given up by <who>: <reason>",
  and so does the run; a later retry of it is refused unless forced.

Each decision needs a reason and is recorded: in the audit log, and on the
step (its provider_response notes who decided what, and why). The functions
take a connection, the tenants the person may act on (None: all) and who
they are, so the dashboard and the command line share them. Sending the
resulting Dramatiq messages is the caller's: each function returns them as
(queue, step id) pairs, to send once its transaction has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from config.errors import HeraldConfigError
from daemon.accounts import audit

DECISIONS = ("resend", "mark_sent", "give_up")
DECISION_LABELS = {"resend": "resend", "mark_sent": "mark as sent", "give_up": "give up"}

# Reasons and names are stored and shown: bounded.
MAX_REASON_CHARS = 500

# Parked steps a person can act on: the step unknown, its run failed.
PARKED_STEPS = """
SELECT s.id, s.run_id, s.tenant_id, s.position, s.step_key, s.action, herald.clip(s.error, 500) AS error,
       s.updated_at AS parked_at, s.attempts, r.workflow_id, herald.clip(w.name, 200) AS workflow_name,
       herald.clip(coalesce(m.recipient, s.rendered ->> 'recipient', s.rendered ->> 'to'), 200) AS recipient,
       m.provider, m.status AS message_status
FROM herald.steps s
JOIN herald.runs r ON r.id = s.run_id
JOIN herald.workflows w ON w.id = r.workflow_id
LEFT JOIN LATERAL (
    SELECT recipient, provider, status FROM herald.messages WHERE step_id = s.id ORDER BY id DESC LIMIT 1
) m ON true
WHERE s.status = 'unknown' AND r.status = 'failed'
  AND ($1::text[] IS NULL OR s.tenant_id = ANY($1))
  AND ($2::uuid IS NULL OR r.workflow_id = $2)
ORDER BY s.updated_at DESC, s.id DESC
LIMIT $3
"""

LOCK_PARKED = """
SELECT s.id, s.run_id, s.tenant_id, s.position, coalesce(s.stage, s.position) AS stage, s.step_key, s.action,
       s.status, r.status AS run_status
FROM herald.steps s
JOIN herald.runs r ON r.id = s.run_id
WHERE s.id = $1 AND ($2::text[] IS NULL OR s.tenant_id = ANY($2))
FOR UPDATE OF s, r
"""

# Who decided what, on the step itself (kept next to whatever the provider said).
NOTE_DECISION = """
UPDATE herald.steps
SET provider_response = coalesce(provider_response, '{}'::jsonb) || jsonb_build_object(
        'decided', jsonb_build_object('decision', $2::text, 'by', $3::text, 'reason', $4::text)),
    updated_at = clock_timestamp()
WHERE id = $1
"""

STEP_MARKED_SENT = """
UPDATE herald.steps
SET status = 'sent', error = NULL, completed_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE id = $1
"""

MESSAGE_CONFIRMED = """
UPDATE herald.messages SET status = 'sent'
WHERE step_id = $1 AND status IN ('unknown', 'sending', 'retrying')
"""

# The steps not started yet when the run failed were skipped (actors.steps
# SKIP_REMAINING, which leaves completed_at empty): those after the parked one,
# and those of its own stage ($2) waiting for a retry. They never ran, so they are
# pending again. A step a rate limit skipped had run: it stays skipped.
REOPEN_FOLLOWING = """
UPDATE herald.steps SET status = 'pending', error = NULL, updated_at = clock_timestamp()
WHERE run_id = $1 AND coalesce(stage, position) >= $2 AND id <> $3 AND status = 'skipped' AND completed_at IS NULL
RETURNING id, action, coalesce(stage, position) = $2 AS same_stage
"""

RUN_GOES_ON = """
UPDATE herald.runs
SET status = 'running', error = NULL, completed_at = NULL, execution_time_ms = NULL, updated_at = clock_timestamp()
WHERE id = $1 AND status = 'failed'
"""

STEP_GIVEN_UP = """
UPDATE herald.steps
SET status = 'failed', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE id = $1
"""

RUN_GIVEN_UP = "UPDATE herald.runs SET error = $2, updated_at = clock_timestamp() WHERE id = $1"

RETRY_OF_STEP = """
UPDATE herald.retries SET step_id = $2
WHERE id = (SELECT id FROM herald.retries WHERE run_id = $1 ORDER BY id DESC LIMIT 1)
"""

QUEUE_OF = "SELECT queue FROM herald.steps WHERE id = $1"


class ParkedError(HeraldConfigError):
    """A decision that cannot be made (the step is not parked any more, no reason...)."""


class ParkedStepNotFound(ParkedError):
    """No such step among the tenants the person may act on (the same answer for both)."""


@dataclass
class Decided:
    """What a decision did: the step, its run's status now, and the messages to send."""

    step_id: int
    run_id: int
    tenant_id: str
    decision: str
    run_status: str
    to_send: list[tuple[str, int]] = field(default_factory=list)  # (queue, step id), after commit


async def parked_steps(conn: asyncpg.Connection, scope: list[str] | None, *, workflow_id: str | None = None,
                       limit: int = 200) -> list[dict[str, Any]]:
    """Parked steps of failed runs in ``scope``, the most recently parked first."""
    return [dict(row) for row in await conn.fetch(PARKED_STEPS, scope, workflow_id, limit)]


def check_reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise ParkedError("give a reason: it is recorded with the decision")
    if len(text) > MAX_REASON_CHARS:
        raise ParkedError(f"the reason must be at most {MAX_REASON_CHARS} characters")
    return text


async def _lock(conn: asyncpg.Connection, step_id: int, scope: list[str] | None) -> Any:
    if not 1 <= step_id <= 2**63 - 1:
        raise ParkedStepNotFound(f"step {step_id} does not exist")
    step = await conn.fetchrow(LOCK_PARKED, step_id, scope)
    if step is None:
        raise ParkedStepNotFound(f"step {step_id} does not exist")
    if step["status"] != "unknown" or step["run_status"] != "failed":
        raise ParkedError(f"step {step_id} is not parked any more (it is {step['status']},"
                          f" its run {step['run_status']}): someone decided already")
    return step


async def _record(conn: asyncpg.Connection, step: Any, decision: str, who: str, reason: str,
                  detail: dict[str, Any] | None = None) -> None:
    await audit(conn, who, f"parked.{decision}", target=f"step {step['id']} of run {step['run_id']}",
                tenant_id=step["tenant_id"], reason=reason,
                detail={"run_id": step["run_id"], "step_id": step["id"], "step_key": step["step_key"],
                        "action": step["action"], **(detail or {})})


async def decide(conn: asyncpg.Connection, step_id: int, decision: str, *, scope: list[str] | None, who: str,
                 reason: str) -> Decided:
    """Carry out ``decision`` (one of DECISIONS) on parked step ``step_id``."""
    if decision == "resend":
        return await resend(conn, step_id, scope=scope, who=who, reason=reason)
    if decision == "mark_sent":
        return await mark_sent(conn, step_id, scope=scope, who=who, reason=reason)
    if decision == "give_up":
        return await give_up(conn, step_id, scope=scope, who=who, reason=reason)
    raise ParkedError(f"the decision must be one of {', '.join(DECISIONS)}")


async def resend(conn: asyncpg.Connection, step_id: int, *, scope: list[str] | None, who: str,
                 reason: str) -> Decided:
    """Send the parked step's message again: its run is retried as it ran (the
    unknown step reset, its message row reopened, delivered steps kept)."""
    from daemon.retries import RetryRefused, retry_one

    reason = check_reason(reason)
    to_send: list[tuple[str, int]] = []
    async with conn.transaction():
        step = await _lock(conn, step_id, scope)
        await conn.execute(NOTE_DECISION, step_id, "resend", who, reason)
        try:
            retried = await retry_one(
                conn, step["run_id"], requested_by=who, reason=f"resend of parked step {step_id}: {reason}",
                send_step=lambda queue, sid: to_send.append((queue, sid)), tenant_id=step["tenant_id"],
                as_run=True, force=True)
        except RetryRefused as exc:
            raise ParkedError(str(exc)) from None
        if retried is None:
            raise ParkedError(f"step {step_id}'s run {step['run_id']} changed meanwhile; try again")
        await conn.execute(RETRY_OF_STEP, step["run_id"], step_id)
        await _record(conn, step, "resend", who, reason, {"steps_reset": retried.steps_reset,
                                                           "steps_kept": retried.steps_kept})
    return Decided(step_id, step["run_id"], step["tenant_id"], "resend", "running", to_send)


async def mark_sent(conn: asyncpg.Connection, step_id: int, *, scope: list[str] | None, who: str,
                    reason: str) -> Decided:
    """The message did arrive: the step is sent, and the run goes on as after any
    sent step (its next step starts, or it completes)."""
    from actors.steps import FollowUp, advance

    reason = check_reason(reason)
    async with conn.transaction():
        step = await _lock(conn, step_id, scope)
        await conn.execute(STEP_MARKED_SENT, step_id)
        await conn.execute(NOTE_DECISION, step_id, "mark_sent", who, reason)
        await conn.execute(MESSAGE_CONFIRMED, step_id)
        reopened = await conn.fetch(REOPEN_FOLLOWING, step["run_id"], step["stage"], step_id)
        await conn.execute(RUN_GOES_ON, step["run_id"])
        # The steps of its own stage start again now; the next stage once they are all done.
        follow_ups = [FollowUp(row["id"], row["action"]) for row in reopened if row["same_stage"]]
        follow_ups += await advance(conn, step)
        to_send = [(await conn.fetchval(QUEUE_OF, f.step_id), f.step_id) for f in follow_ups]
        run_status = await conn.fetchval("SELECT status FROM herald.runs WHERE id = $1", step["run_id"])
        await _record(conn, step, "mark_sent", who, reason, {"run_status": run_status})
    return Decided(step_id, step["run_id"], step["tenant_id"], "mark_sent", run_status, to_send)


async def give_up(conn: asyncpg.Connection, step_id: int, *, scope: list[str] | None, who: str,
                  reason: str) -> Decided:
    """The step fails for good ("given up by <who>: <reason>"), and its run stays failed saying so."""
    reason = check_reason(reason)
    async with conn.transaction():
        step = await _lock(conn, step_id, scope)
        error = f"given up by {who}: {reason}"
        await conn.execute(STEP_GIVEN_UP, step_id, error)
        await conn.execute(NOTE_DECISION, step_id, "give_up", who, reason)
        await conn.execute(RUN_GIVEN_UP, step["run_id"],
                           f"step {step['position'] + 1} ({step['step_key']}, {step['action']}): {error}")
        await _record(conn, step, "give_up", who, reason)
    return Decided(step_id, step["run_id"], step["tenant_id"], "give_up", "failed")
