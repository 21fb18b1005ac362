"""Runs and their steps, one run's whole story, a record's timeline, and delivery
statistics, for the pages and /api/*.

Every query takes the viewer's tenant scope (a list of tenant ids, or None
for every tenant) and filters on it. Lists are newest first and paged by run
id (keyset: ``before`` the last id shown), never by offset."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

# Each rendered value, error or reason in a list of runs is cut to this many
# characters, with "… [truncated: N characters in all]" (herald.clip, migration
# 009): a 10 MB title rendered into a message must not make a page polled
# every two seconds weigh megabytes.
LIST_VALUE_CHARS = 2000
# One run's page shows more of each value, still bounded.
PAGE_VALUE_CHARS = 20_000


def like_pattern(text: str) -> str:
    """``text`` as a literal ILIKE substring pattern (``%`` and ``_`` match themselves)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class RunFilter:
    """What a list of runs is narrowed to (every field optional)."""

    scope: list[str] | None = None
    status: str | None = None
    workflow: str | None = None   # its uuid, document id or name (any case)
    entity: str | None = None
    row_id: str | None = None
    recipient: str | None = None  # part of a step's rendered recipient, any case
    error: str | None = None      # part of the run's or a step's error, any case
    since: dt.datetime | None = None  # created at or after
    until: dt.datetime | None = None  # created before
    before: int | None = None     # keyset: runs older than this id
    after: int | None = None      # live updates: runs newer than this id
    ids: list[int] | None = None  # live updates: these runs (still in scope)


# $1 scope, $2 status, $3 workflow, $4 entity, $5 row id, $6 recipient pattern,
# $7 error pattern, $8 since, $9 until, $10 before, $11 after, $12 ids, $13 limit,
# $14 clip (NULL: whole values).
# The duration is the latest attempt's: from the later of the run's start and
# support's last retry (herald.retries) to its end. execution_time_ms, which
# the actors count from the run's creation, is kept for /api/runs.
RUNS = """
SELECT r.id, r.tenant_id, r.workflow_id, herald.clip(w.name, $14) AS workflow_name, r.workflow_version,
       r.event_id, e.type AS event_type, e.entity, herald.clip(e.row_id, $14) AS row_id, r.status,
       herald.clip(r.error, $14) AS error, herald.clip(r.match_reason ->> 'reason', $14) AS match_reason,
       r.created_at, r.started_at, r.completed_at, r.execution_time_ms, r.retry_count, lr.at AS last_retry_at,
       CASE WHEN r.completed_at IS NOT NULL THEN
                greatest(0, (extract(epoch FROM r.completed_at
                             - coalesce(greatest(r.started_at, lr.at), r.created_at)) * 1000))::bigint
            WHEN r.status NOT IN ('pending', 'running') THEN r.execution_time_ms END AS duration_ms
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
JOIN herald.events e ON e.id = r.event_id
LEFT JOIN LATERAL (SELECT max(t.requested_at) AS at FROM herald.retries t WHERE t.run_id = r.id) lr ON true
WHERE ($1::text[] IS NULL OR r.tenant_id = ANY($1))
  AND ($2::text IS NULL OR r.status = $2)
  AND ($3::text IS NULL OR w.id::text = lower($3) OR w.source_id = $3 OR lower(w.name) = lower($3))
  AND ($4::text IS NULL OR e.entity = $4)
  AND ($5::text IS NULL OR e.row_id = $5)
  AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM herald.steps s WHERE s.run_id = r.id
                                   AND s.rendered ->> 'recipient' ILIKE $6))
  AND ($7::text IS NULL OR r.error ILIKE $7 OR EXISTS (SELECT 1 FROM herald.steps s WHERE s.run_id = r.id
                                                       AND s.error ILIKE $7))
  AND ($8::timestamptz IS NULL OR r.created_at >= $8)
  AND ($9::timestamptz IS NULL OR r.created_at < $9)
  AND ($10::bigint IS NULL OR r.id < $10)
  AND ($11::bigint IS NULL OR r.id > $11)
  AND ($12::bigint[] IS NULL OR r.id = ANY($12))
ORDER BY r.id {order}
LIMIT $13
"""
NEWEST_FIRST, OLDEST_FIRST = RUNS.format(order="DESC"), RUNS.format(order="ASC")

STEPS = """
SELECT id, run_id, position, step_key, action, status, attempts, herald.clip(rendered, $2) AS rendered,
       herald.clip(provider_response, $2) AS provider_response, herald.clip(error, $2) AS error,
       started_at, completed_at, execution_time_ms, next_attempt_at, wake_at
FROM herald.steps
WHERE run_id = ANY($1::bigint[])
ORDER BY run_id, position
"""

# One run, with the event that started it and its workflow; values clipped to $3
# (the context one level deeper: each related record's fields).
RUN = """
SELECT r.id, r.tenant_id, r.status, herald.clip(r.error, $3) AS error,
       herald.clip(r.match_reason, $3) AS match_reason,
       CASE WHEN jsonb_typeof(r.context) = 'object' THEN
                (SELECT coalesce(jsonb_object_agg(k, herald.clip(v, $3)), '{}'::jsonb)
                 FROM jsonb_each(r.context) AS c(k, v))
            ELSE herald.clip(r.context, $3) END AS context,
       length(r.context::text) AS context_chars,
       r.created_at, r.started_at, r.completed_at, r.updated_at, r.execution_time_ms, r.retry_count,
       r.workflow_version, r.dedupe_key, r.once_key,
       w.id AS workflow_id, w.name AS workflow_name, w.source_id AS workflow_source_id,
       w.version AS workflow_current_version, w.deleted_at AS workflow_deleted_at,
       e.id AS event_id, e.type AS event_type, e.entity, e.row_id, e.table_name, e.operation,
       herald.clip(e.old, $3) AS event_old, herald.clip(e.new, $3) AS event_new,
       e.created_at AS event_created_at, e.origin_run_id
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
JOIN herald.events e ON e.id = r.event_id
WHERE r.id = $1 AND ($2::text[] IS NULL OR r.tenant_id = ANY($2))
"""

RUN_STEPS = """
SELECT id, position, coalesce(stage, position) AS stage, step_key, action, status, attempts,
       herald.clip(config, $2) AS config,
       herald.clip(rendered, $2) AS rendered, herald.clip(provider_response, $2) AS provider_response,
       herald.clip(error, $2) AS error, created_at, started_at, completed_at, updated_at,
       execution_time_ms, next_attempt_at, wake_at, claimed_by
FROM herald.steps WHERE run_id = $1 ORDER BY position
"""

# Every message the run's steps handed to a provider (one per idempotency key:
# a resend after a transient failure reuses its row).
RUN_MESSAGES = """
SELECT id, step_id, channel, provider, herald.clip(recipient, $2) AS recipient,
       herald.clip(subject, $2) AS subject, status, herald.clip(provider_message_id, $2) AS provider_message_id,
       resend_safe, created_at
FROM herald.messages WHERE run_id = $1 ORDER BY id
"""

RUN_RETRIES = """
SELECT id, step_id, requested_by, herald.clip(reason, $2) AS reason, requested_at, steps_reset, steps_kept,
       workflow_version
FROM herald.retries WHERE run_id = $1 ORDER BY id
"""

# Whether a retry would be refused (daemon.retries.refusal takes this row).
RETRY_CHECK = """
SELECT r.id, r.error, r.workflow_version, w.version AS current_version, w.name AS workflow_name,
       w.deleted_at,
       EXISTS (SELECT 1 FROM herald.steps s WHERE s.run_id = r.id AND s.status = 'failed'
               AND coalesce(s.error, '') NOT LIKE 'gave up after %') AS permanent
FROM herald.runs r JOIN herald.workflows w ON w.id = r.workflow_id
WHERE r.id = $1
"""

RUN_TENANT = "SELECT tenant_id, status FROM herald.runs WHERE id = $1"

# A record's events (newest first, at most $4) in scope, with the fields each changed.
RECORD_EVENTS = """
SELECT e.id, e.tenant_id, e.type, e.operation, e.table_name, e.created_at, e.state, e.origin_run_id,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(coalesce(e.new, e.old, '{}'::jsonb)) AS k
        WHERE e.old IS NOT NULL AND e.new IS NOT NULL AND (e.old -> k) IS DISTINCT FROM (e.new -> k))
           AS changed
FROM herald.events e
WHERE e.entity = $1 AND e.row_id = $2 AND ($3::text[] IS NULL OR e.tenant_id = ANY($3))
ORDER BY e.id DESC
LIMIT $4
"""

RECORD_RUNS = """
SELECT r.id, r.event_id, r.status, herald.clip(r.error, $2) AS error, r.created_at, r.started_at,
       r.completed_at, r.retry_count, r.workflow_id, w.name AS workflow_name, r.workflow_version
FROM herald.runs r JOIN herald.workflows w ON w.id = r.workflow_id
WHERE r.event_id = ANY($1::bigint[])
ORDER BY r.id DESC
"""

# Delivery and retry statistics over the last $2 hours.
STATS = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'completed') AS completed,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.status = 'skipped') AS skipped,
       count(*) FILTER (WHERE r.status = 'completed' AND (r.retry_count > 0 OR EXISTS (
           SELECT 1 FROM herald.steps s WHERE s.run_id = r.id AND s.attempts > 1))) AS completed_after_retry,
       coalesce(sum((SELECT sum(s.attempts) FROM herald.steps s WHERE s.run_id = r.id)), 0)::bigint AS attempts,
       count(*) FILTER (WHERE r.retry_count > 0) AS retried_by_support
FROM herald.runs r
WHERE ($1::text[] IS NULL OR r.tenant_id = ANY($1))
  AND r.created_at > clock_timestamp() - make_interval(hours => $2)
"""

RUN_COLUMNS = (
    "id", "tenant_id", "status", "error", "created_at", "started_at", "completed_at",
    "execution_time_ms", "duration_ms", "retry_count", "last_retry_at", "workflow_version",
)
STEP_COLUMNS = (
    "position", "step_key", "action", "status", "attempts", "rendered", "provider_response",
    "error", "started_at", "completed_at", "execution_time_ms", "next_attempt_at", "wake_at",
)


def human_ms(ms: int | None) -> str | None:
    """``340 ms``, ``2.4 s``, ``3 min 12 s``, ``2 h 5 min``."""
    if ms is None:
        return None
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _plain(row: Any) -> dict[str, Any]:
    return {key: _iso(value) for key, value in dict(row).items()}


async def delivery_stats(pool: asyncpg.Pool, *, scope: list[str] | None, hours: int) -> dict[str, Any]:
    """Runs by outcome, attempts, and the share of completed runs that needed a retry."""
    row = dict(await pool.fetchrow(STATS, scope, hours))
    row["share_completed_after_retry"] = (
        round(row["completed_after_retry"] / row["completed"], 4) if row["completed"] else 0.0)
    return {"hours": hours, "tenants": scope, **row}


async def list_runs(
    pool: asyncpg.Pool, where: RunFilter, *, limit: int, clip: int | None = LIST_VALUE_CHARS,
) -> list[dict[str, Any]]:
    """Runs ``where`` selects, newest first (``after``: the oldest ``limit`` newer ones,
    still newest first), each with its steps; values cut to ``clip`` characters."""
    runs = await pool.fetch(
        NEWEST_FIRST if where.after is None else OLDEST_FIRST, where.scope, where.status, where.workflow, where.entity, where.row_id,
        like_pattern(where.recipient) if where.recipient else None,
        like_pattern(where.error) if where.error else None,
        where.since, where.until, where.before, where.after, where.ids, limit, clip)
    if where.after is not None:
        runs = list(reversed(runs))
    steps_by_run: dict[int, list[dict[str, Any]]] = {run["id"]: [] for run in runs}
    if runs:
        for step in await pool.fetch(STEPS, list(steps_by_run), clip):
            steps_by_run[step["run_id"]].append({key: _iso(step[key]) for key in STEP_COLUMNS})
    return [
        {
            **{key: _iso(run[key]) for key in RUN_COLUMNS},
            "duration": human_ms(run["duration_ms"]),
            "workflow": {"id": str(run["workflow_id"]), "name": run["workflow_name"]},
            "event": {"id": run["event_id"], "type": run["event_type"],
                      "entity": run["entity"], "row_id": run["row_id"]},
            "match_reason": run["match_reason"],
            "steps": steps_by_run[run["id"]],
        }
        for run in runs
    ]


async def recent_runs(
    pool: asyncpg.Pool, *, scope: list[str] | None = None, tenant: str | None = None,
    status: str | None = None, limit: int, run_id: int | None = None, clip: int | None = LIST_VALUE_CHARS,
) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its steps (only run ``run_id`` if given).
    ``tenant`` narrows ``scope`` to one tenant. ``clip=None``: values whole."""
    if tenant is not None:
        scope = [tenant] if scope is None or tenant in scope else []
    where = RunFilter(scope=scope, status=status, ids=None if run_id is None else [run_id])
    return await list_runs(pool, where, limit=limit, clip=clip)


async def run_detail(
    pool: asyncpg.Pool, run_id: int, *, scope: list[str] | None, clip: int | None = PAGE_VALUE_CHARS,
) -> dict[str, Any] | None:
    """Everything about one run (None when it does not exist or is out of scope): the
    event (old and new values), why it matched, the context it used, its workflow and
    version, each step with its messages, and support's retries."""
    async with pool.acquire() as conn:
        run = await conn.fetchrow(RUN, run_id, scope, clip)
        if run is None:
            return None
        steps = [_plain(step) for step in await conn.fetch(RUN_STEPS, run_id, clip)]
        messages = [_plain(message) for message in await conn.fetch(RUN_MESSAGES, run_id, clip)]
        retries = [_plain(retry) for retry in await conn.fetch(RUN_RETRIES, run_id, clip)]
    for step in steps:
        step["messages"] = [message for message in messages if message["step_id"] == step["id"]]
    # The latest attempt began at the run's start or support's last retry, whichever is later.
    started = max(filter(None, (run["started_at"], *(dt.datetime.fromisoformat(retry["requested_at"])
                                                        for retry in retries))), default=None)
    duration_ms = None
    if run["completed_at"] is not None:
        begin = started or run["created_at"]
        duration_ms = max(0, int((run["completed_at"] - begin).total_seconds() * 1000))
    elif run["status"] not in ("pending", "running"):
        duration_ms = run["execution_time_ms"]
    old, new = run["event_old"], run["event_new"]
    return {
        "id": run["id"], "tenant_id": run["tenant_id"], "status": run["status"], "error": run["error"],
        "match_reason": run["match_reason"], "context": run["context"],
        "context_chars": run["context_chars"],
        **{key: _iso(run[key]) for key in ("created_at", "started_at", "completed_at", "updated_at")},
        "execution_time_ms": run["execution_time_ms"], "duration_ms": duration_ms,
        "duration": human_ms(duration_ms),
        "attempt_started_at": _iso(started), "retry_count": run["retry_count"],
        "dedupe_key": run["dedupe_key"], "once_key": run["once_key"],
        "workflow": {"id": str(run["workflow_id"]), "name": run["workflow_name"],
                     "source_id": run["workflow_source_id"], "version": run["workflow_version"],
                     "current_version": run["workflow_current_version"],
                     "deleted_at": _iso(run["workflow_deleted_at"])},
        "event": {"id": run["event_id"], "type": run["event_type"], "entity": run["entity"],
                  "row_id": run["row_id"], "table": run["table_name"], "operation": run["operation"],
                  "old": old, "new": new, "changed": changed_fields(old, new),
                  "created_at": _iso(run["event_created_at"]), "origin_run_id": run["origin_run_id"]},
        "steps": steps,
        "retries": retries,
    }


def changed_fields(old: Any, new: Any) -> list[str]:
    """The fields whose values differ between an event's old and new row."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


async def retry_check_row(conn: asyncpg.Connection, run_id: int) -> Any:
    """The row daemon.retries.refusal reads, without locking the run."""
    return await conn.fetchrow(RETRY_CHECK, run_id)


async def run_tenant(conn: asyncpg.Connection, run_id: int) -> Any:
    return await conn.fetchrow(RUN_TENANT, run_id)


async def record_timeline(
    pool: asyncpg.Pool, entity: str, row_id: str, *, scope: list[str] | None, limit: int,
) -> list[dict[str, Any]]:
    """The events of one record in scope, newest first, each with the runs it started."""
    async with pool.acquire() as conn:
        events = [_plain(event) for event in await conn.fetch(RECORD_EVENTS, entity, row_id, scope, limit)]
        runs = await conn.fetch(RECORD_RUNS, [event["id"] for event in events], LIST_VALUE_CHARS) if events else []
    by_event: dict[int, list[dict[str, Any]]] = {event["id"]: [] for event in events}
    for run in runs:
        item = _plain(run)
        item["workflow_id"] = str(run["workflow_id"])
        by_event[run["event_id"]].append(item)
    for event in events:
        event["changed"] = event["changed"] or []
        event["runs"] = by_event[event["id"]]
    return events
