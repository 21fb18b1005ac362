"""Manual retries: support sends a failed run (or a filtered set of them) again.

A retry claims the run in PostgreSQL (failed -> running) so two retries of the
same run at once make one new attempt; it resets the steps that did not
deliver (failed, skipped, and unknown ones a person has now decided to resend)
and keeps those that did. Who retried, why, and what was reset is recorded in
herald.retries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from daemon.triggering import check_workflow_id

# Run ids are PostgreSQL bigints: a larger number is no run (and asyncpg could not send it).
MAX_RUN_ID = 2**63 - 1

CLAIM_RUN = """
UPDATE herald.runs
SET status = 'running', error = NULL, completed_at = NULL, execution_time_ms = NULL,
    retry_count = retry_count + 1, updated_at = clock_timestamp()
WHERE id = $1 AND status = 'failed' AND ($2::text IS NULL OR tenant_id = $2)
RETURNING id, tenant_id
"""

RESET_STEPS = """
UPDATE herald.steps
SET status = 'pending', attempts = 0, next_attempt_at = NULL, error = NULL,
    completed_at = NULL, updated_at = clock_timestamp()
WHERE run_id = $1 AND status IN ('failed', 'skipped', 'unknown')
RETURNING id
"""

# A person decided to send an unknown message again: its row may be retried.
REOPEN_MESSAGES = """
UPDATE herald.messages SET status = 'retrying'
WHERE step_id = ANY($1::bigint[]) AND status IN ('unknown', 'sending', 'failed')
"""

KEPT_STEPS = "SELECT count(*) FROM herald.steps WHERE run_id = $1 AND status = 'sent'"

FIRST_PENDING = """
SELECT id, action FROM herald.steps WHERE run_id = $1 AND status = 'pending' ORDER BY position LIMIT 1
"""

AUDIT = """
INSERT INTO herald.retries (tenant_id, run_id, requested_by, reason, steps_reset, steps_kept)
VALUES ($1, $2, $3, $4, $5, $6)
"""

FAILED_RUNS = """
SELECT r.id,
       (SELECT count(*) FROM herald.steps s WHERE s.run_id = r.id
         AND s.status IN ('failed', 'skipped', 'unknown')) AS to_resend,
       (SELECT count(*) FROM herald.steps s WHERE s.run_id = r.id AND s.status = 'sent') AS delivered
FROM herald.runs r
WHERE r.status = 'failed'
  AND ($1::text IS NULL OR r.tenant_id = $1)
  AND ($2::uuid IS NULL OR r.workflow_id = $2)
  AND ($3::text IS NULL OR r.error ILIKE '%' || $3 || '%')
  AND ($4::timestamptz IS NULL OR r.completed_at >= $4)
  AND ($5::timestamptz IS NULL OR r.completed_at < $5)
ORDER BY r.id
"""

SendStep = Callable[[str, int], object]  # (action, step id)


@dataclass(frozen=True)
class RetryFilter:
    tenant_id: str | None = None
    workflow_id: str | None = None
    error: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass
class RetrySummary:
    runs: int = 0
    messages_to_resend: int = 0
    already_delivered: int = 0
    retried: list[int] = field(default_factory=list)
    not_retried: list[int] = field(default_factory=list)  # retried by someone else meanwhile


async def retry_run(
    conn: asyncpg.Connection, run_id: int, *, requested_by: str, reason: str,
    send_step: SendStep, tenant_id: str | None = None,
) -> bool:
    """Retry one failed run; False when it is not failed (any more) or not the tenant's."""
    if not 1 <= run_id <= MAX_RUN_ID:
        return False
    async with conn.transaction():
        run = await conn.fetchrow(CLAIM_RUN, run_id, tenant_id)
        if run is None:
            return False
        reset = [row["id"] for row in await conn.fetch(RESET_STEPS, run_id)]
        await conn.execute(REOPEN_MESSAGES, reset)
        kept = await conn.fetchval(KEPT_STEPS, run_id)
        await conn.execute(AUDIT, run["tenant_id"], run_id, requested_by, reason, len(reset), kept)
        first = await conn.fetchrow(FIRST_PENDING, run_id)
    if first is not None:
        send_step(first["action"], first["id"])
    return True


async def retry_failed(
    conn: asyncpg.Connection, where: RetryFilter, *, requested_by: str, reason: str,
    send_step: SendStep, dry_run: bool,
) -> RetrySummary:
    """Retry every failed run the filter selects (or, with ``dry_run``, count them)."""
    summary = RetrySummary()
    workflow_id = None if where.workflow_id is None else check_workflow_id(where.workflow_id)
    rows: list[Any] = await conn.fetch(
        FAILED_RUNS, where.tenant_id, workflow_id, where.error, where.since, where.until)
    for row in rows:
        summary.runs += 1
        summary.messages_to_resend += row["to_resend"]
        summary.already_delivered += row["delivered"]
        if dry_run:
            continue
        done = await retry_run(conn, row["id"], requested_by=requested_by, reason=reason,
                               send_step=send_step, tenant_id=where.tenant_id)
        (summary.retried if done else summary.not_retried).append(row["id"])
    return summary
