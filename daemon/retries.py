"""Manual retries: support sends a failed run (or a filtered set of them) again.

A retry claims the run in PostgreSQL (failed -> running) so two retries of the
same run at once make one new attempt; it resets the steps that did not
deliver (failed, skipped, and unknown ones a person has now decided to resend)
and keeps those that did. Who retried, why, what was reset and with which
workflow version is recorded in herald.retries.

Fix and retry: by default the reset steps are rendered with the workflow's
*current* version (each gets the configuration of the current version's step
with the same key, else at the same position; one the current version lacks
keeps what it ran with) and the run records that version. ``as_run`` keeps the
configuration the run had. A run that failed permanently (a template error, a
refusal: anything but a transient failure that used up its retries or a step
parked as unknown) would fail the same way again when nothing changed: the
workflow is still at the version the run ran (or ``as_run``). Such a retry is
refused unless ``force``; so is one of a deleted workflow's run.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from config.errors import HeraldConfigError, WorkflowValidationError

# Run ids are PostgreSQL bigints: a larger number is no run (and asyncpg could not send it).
MAX_RUN_ID = 2**63 - 1

# A step failed for a reason a new attempt does not change: not a transient failure
# that used up its retries ("gave up after N attempts: ..."), not parked as unknown.
PERMANENT = """
EXISTS (SELECT 1 FROM herald.steps s WHERE s.run_id = r.id AND s.status = 'failed'
        AND coalesce(s.error, '') NOT LIKE 'gave up after %')
"""

# The run as it is, locked: a second retry at the same moment waits, then finds it running.
LOCK_RUN = f"""
SELECT r.id, r.tenant_id, r.status, r.error, r.workflow_id, r.workflow_version, {PERMANENT} AS permanent,
       w.version AS current_version, w.name AS workflow_name, w.source_id, w.definition, w.deleted_at
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
WHERE r.id = $1 AND ($2::text IS NULL OR r.tenant_id = $2)
FOR UPDATE OF r
"""

CLAIM_RUN = """
UPDATE herald.runs
SET status = 'running', error = NULL, completed_at = NULL, execution_time_ms = NULL,
    retry_count = retry_count + 1, updated_at = clock_timestamp()
WHERE id = $1 AND status = 'failed'
RETURNING id, tenant_id
"""

RUN_STATUS = "SELECT status, tenant_id FROM herald.runs WHERE id = $1"

RESET_STEPS = """
UPDATE herald.steps
SET status = 'pending', attempts = 0, next_attempt_at = NULL, error = NULL,
    completed_at = NULL, updated_at = clock_timestamp()
WHERE run_id = $1 AND status IN ('failed', 'skipped', 'unknown')
RETURNING id, position, step_key, action, config
"""

NEW_CONFIG = "UPDATE herald.steps SET action = $2, config = $3, queue = $4 WHERE id = $1"

RUN_STEP_KEYS = "SELECT step_key FROM herald.steps WHERE run_id = $1"

SET_RUN_VERSION = "UPDATE herald.runs SET workflow_version = $2 WHERE id = $1"

# A person decided to send an unknown message again: its row may be retried.
REOPEN_MESSAGES = """
UPDATE herald.messages SET status = 'retrying'
WHERE step_id = ANY($1::bigint[]) AND status IN ('unknown', 'sending', 'failed')
"""

KEPT_STEPS = "SELECT count(*) FROM herald.steps WHERE run_id = $1 AND status = 'sent'"

# The steps of the run's first stage with a pending step: they start together.
FIRST_PENDING = """
WITH pending AS (SELECT id, queue, coalesce(stage, position) AS stage FROM herald.steps
                 WHERE run_id = $1 AND status = 'pending')
SELECT id, queue FROM pending WHERE stage = (SELECT min(stage) FROM pending) ORDER BY id
"""

AUDIT = """
INSERT INTO herald.retries (tenant_id, run_id, requested_by, reason, steps_reset, steps_kept, workflow_version)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

FAILED_RUNS = f"""
SELECT r.id, r.error, r.workflow_id, r.workflow_version, {PERMANENT} AS permanent,
       w.version AS current_version, w.name AS workflow_name, w.source_id, w.deleted_at,
       (SELECT count(*) FROM herald.steps s WHERE s.run_id = r.id
         AND s.status IN ('failed', 'skipped', 'unknown')) AS to_resend,
       (SELECT count(*) FROM herald.steps s WHERE s.run_id = r.id AND s.status = 'sent') AS delivered
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
WHERE r.status = 'failed'
  AND ($1::text IS NULL OR r.tenant_id = $1)
  AND ($2::uuid IS NULL OR r.workflow_id = $2)
  AND ($3::text IS NULL OR r.error ILIKE '%' || $3 || '%')
  AND ($4::timestamptz IS NULL OR r.completed_at >= $4)
  AND ($5::timestamptz IS NULL OR r.completed_at < $5)
  AND ($6::bigint IS NULL OR r.id = $6)
ORDER BY r.id
"""

SendStep = Callable[[str, int], object]  # (the step's queue: its actor's name, step id)


class RetryRefused(HeraldConfigError):
    """A retry that would change nothing (or that no one can make): the message says why."""


@dataclass(frozen=True)
class RetryFilter:
    tenant_id: str | None = None
    workflow_id: str | None = None  # its uuid, or (with tenant_id) its document id or name
    error: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    run_id: int | None = None


@dataclass
class RetrySummary:
    runs: int = 0
    messages_to_resend: int = 0
    already_delivered: int = 0
    retried: list[int] = field(default_factory=list)
    not_retried: list[int] = field(default_factory=list)  # retried by someone else meanwhile
    # The runs selected, by their error (what a dry run lists).
    by_error: dict[str, list[int]] = field(default_factory=dict)
    # Runs left alone, by why (would fail again, workflow deleted): they need --force.
    refused: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Retried:
    """One run sent again: what was reset and kept, and the version its reset steps have."""

    run_id: int
    steps_reset: int
    steps_kept: int
    version: int | None           # whose step configuration the reset steps now have
    previous_version: int | None  # the version the run had before
    updated: list[str] = field(default_factory=list)  # reset steps given the current version's config
    kept_as_run: list[str] = field(default_factory=list)  # reset steps the current version lacks


def _label(row: Any) -> str:
    return f"{row['workflow_name']!r}"


def _short(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else f"{text[:limit]}…"


def refusal(row: Any, *, as_run: bool, force: bool) -> str | None:
    """Why retrying this failed run (a LOCK_RUN or FAILED_RUNS row) would be in vain, or None."""
    if force:
        return None
    if row["deleted_at"] is not None:
        return (f"run {row['id']}: its workflow {_label(row)} was deleted; import it again, or --force to"
                " send the run as it is")
    if not row["permanent"]:
        return None
    if as_run:
        unchanged = "the same configuration (--as-run)"
    elif row["workflow_version"] is not None and row["workflow_version"] == row["current_version"]:
        unchanged = f"workflow {_label(row)} unchanged since (version {row['current_version']})"
    else:
        return None
    return (f"run {row['id']} failed permanently ({_short(row['error'])}) and would fail again with"
            f" {unchanged}: fix the workflow and import it, or --force if what failed was fixed elsewhere")


async def why_not_retried(conn: asyncpg.Connection, run_id: int, tenant_id: str | None = None) -> str:
    """Why run ``run_id`` cannot be retried, in one line (it does not exist, is not failed...)."""
    if not 1 <= run_id <= MAX_RUN_ID:
        return f"run {run_id} does not exist"
    row = await conn.fetchrow(RUN_STATUS, run_id)
    if row is None:
        return f"run {run_id} does not exist"
    if tenant_id is not None and row["tenant_id"] != tenant_id:
        return f"run {run_id} is not one of tenant {tenant_id}'s runs"
    if row["status"] == "running":
        return f"run {run_id} is running, not failed (being retried already?)"
    if row["status"] == "failed":
        return f"run {run_id} is failed but was changed meanwhile; try again"
    return f"run {run_id} is {row['status']}, not failed"


async def retry_run(
    conn: asyncpg.Connection, run_id: int, *, requested_by: str, reason: str,
    send_step: SendStep, tenant_id: str | None = None, as_run: bool = False, force: bool = False,
) -> bool:
    """Retry one failed run; False when it is not failed (any more) or not the tenant's.
    Raises RetryRefused when it would fail again (see :func:`retry_one`)."""
    return await retry_one(conn, run_id, requested_by=requested_by, reason=reason, send_step=send_step,
                           tenant_id=tenant_id, as_run=as_run, force=force) is not None


async def retry_one(
    conn: asyncpg.Connection, run_id: int, *, requested_by: str, reason: str,
    send_step: SendStep, tenant_id: str | None = None, as_run: bool = False, force: bool = False,
) -> Retried | None:
    """Retry one failed run with its workflow's current version (``as_run``: as it ran).

    None when it is not failed (any more) or not the tenant's (:func:`why_not_retried`
    says which). Raises RetryRefused, changing nothing, when it would fail again or
    has nothing to send, unless ``force``.
    """
    if not 1 <= run_id <= MAX_RUN_ID:
        return None
    async with conn.transaction():
        run = await conn.fetchrow(LOCK_RUN, run_id, tenant_id)
        if run is None or run["status"] != "failed":
            return None
        why = refusal(run, as_run=as_run, force=force)
        if why is not None:
            raise RetryRefused(why)
        await conn.execute(CLAIM_RUN, run_id)
        reset = list(await conn.fetch(RESET_STEPS, run_id))
        if not reset:
            raise RetryRefused(f"run {run_id} has no step to send again")
        version, updated, kept_as_run = run["workflow_version"], [], []
        if not as_run:
            version = run["current_version"]
            updated, kept_as_run = await _use_current_version(conn, run, reset)
            await conn.execute(SET_RUN_VERSION, run_id, version)
        await conn.execute(REOPEN_MESSAGES, [step["id"] for step in reset])
        kept = await conn.fetchval(KEPT_STEPS, run_id)
        await conn.execute(AUDIT, run["tenant_id"], run_id, requested_by, reason, len(reset), kept, version)
        first = await conn.fetch(FIRST_PENDING, run_id)
    for step in first:
        send_step(step["queue"], step["id"])
    return Retried(run_id, len(reset), int(kept), version, run["workflow_version"], updated, kept_as_run)


async def _use_current_version(
    conn: asyncpg.Connection, run: Any, reset: list[Any],
) -> tuple[list[str], list[str]]:
    """Give each reset step the configuration of the current version's step with the
    same key (else at the same position); return the keys updated and those kept."""
    from actors.model.actions import SPECS
    from actors.model.workflow import parse_workflow

    try:
        steps = parse_workflow(run["definition"]).steps
    except WorkflowValidationError as exc:
        raise RetryRefused(f"run {run['id']}: version {run['current_version']} of workflow {_label(run)}"
                           f" is invalid ({exc}); retry it --as-run") from None
    by_key = {step.key: step for step in steps}
    run_keys = {row["step_key"] for row in await conn.fetch(RUN_STEP_KEYS, run["id"])}
    updated, kept = [], []
    for row in reset:
        step = by_key.get(row["step_key"])
        if step is None and row["position"] < len(steps) and steps[row["position"]].key not in run_keys:
            step = steps[row["position"]]  # renamed: the step in its place, unless the run has that one too
        if step is None:
            kept.append(row["step_key"])
            continue
        # The key stays the run's: it makes the message's idempotency key, so an
        # unknown outcome is still sent again under the same key.
        await conn.execute(NEW_CONFIG, row["id"], step.action, step.config, SPECS[step.action].actor)
        updated.append(row["step_key"])
    return updated, kept


async def retry_failed(
    conn: asyncpg.Connection, where: RetryFilter, *, requested_by: str, reason: str,
    send_step: SendStep, dry_run: bool, as_run: bool = False, force: bool = False,
) -> RetrySummary:
    """Retry every failed run the filter selects (or, with ``dry_run``, say what that
    would do). Runs that would fail again (see :func:`refusal`) are left alone and
    listed in ``refused`` unless ``force``."""
    summary = RetrySummary()
    workflow_id = None
    if where.workflow_id is not None:
        workflow_id = await resolve_workflow(conn, where.workflow_id, where.tenant_id)
    rows: list[Any] = await conn.fetch(
        FAILED_RUNS, where.tenant_id, workflow_id, where.error, where.since, where.until, where.run_id)
    for row in rows:
        why = refusal(row, as_run=as_run, force=force)
        if why is not None:
            summary.refused.setdefault(_refusal_kind(row, as_run), []).append(row["id"])
            continue
        summary.runs += 1
        summary.messages_to_resend += row["to_resend"]
        summary.already_delivered += row["delivered"]
        summary.by_error.setdefault(row["error"] or "(no error recorded)", []).append(row["id"])
        if dry_run:
            continue
        try:
            done = await retry_one(conn, row["id"], requested_by=requested_by, reason=reason,
                                   send_step=send_step, tenant_id=where.tenant_id, as_run=as_run, force=force)
        except RetryRefused as exc:
            summary.refused.setdefault(str(exc).partition(": ")[2] or str(exc), []).append(row["id"])
            continue
        (summary.retried if done else summary.not_retried).append(row["id"])
    return summary


def _refusal_kind(row: Any, as_run: bool) -> str:
    if row["deleted_at"] is not None:
        return f"workflow {_label(row)} was deleted"
    if as_run:
        return "failed permanently; would fail again with the same configuration (--as-run)"
    return f"failed permanently; would fail again: workflow {_label(row)} unchanged since"


async def resolve_workflow(conn: asyncpg.Connection, ref: str, tenant_id: str | None) -> str:
    """The uuid of the workflow ``--workflow`` names: its uuid, or, for a tenant, its
    document id or name (see :func:`daemon.workflows.find_workflow`)."""
    from daemon.workflows import find_workflow

    if tenant_id is None:
        return workflow_uuid(ref)
    return str((await find_workflow(conn, tenant_id, ref, "--workflow"))["id"])


def workflow_uuid(ref: str) -> str:
    """``--workflow`` without a tenant: only a uuid names one workflow."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        raise HeraldConfigError(f"--workflow {ref[:80]!r}: give --tenant to find a workflow by its id or"
                                " name (or give its uuid)") from None
