"""The dashboard's SQL: read-only views of runs, steps and health."""

from __future__ import annotations

from typing import Any

import asyncpg

RUNS = """
SELECT r.id, r.tenant_id, r.workflow_id, w.name AS workflow_name, r.event_id,
       e.type AS event_type, e.entity, e.row_id, r.status, r.error, r.match_reason,
       r.created_at, r.started_at, r.completed_at, r.execution_time_ms
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
JOIN herald.events e ON e.id = r.event_id
WHERE ($1::text IS NULL OR r.tenant_id = $1)
  AND ($2::text IS NULL OR r.status = $2)
ORDER BY r.id DESC
LIMIT $3
"""

STEPS = """
SELECT run_id, position, step_key, action, status, attempts, rendered, provider_response,
       error, started_at, completed_at, execution_time_ms
FROM herald.steps
WHERE run_id = ANY($1::bigint[])
ORDER BY run_id, position
"""

OUTBOX_BACKLOG = """
SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'dispatched') AS dispatched,
       extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS oldest_s
FROM herald.events WHERE state <> 'matched'
"""

LIVE_DAEMONS = """
SELECT instance, last_seen_at, extract(epoch FROM clock_timestamp() - last_seen_at)::float8 AS age_s
FROM herald.heartbeats WHERE stopped_at IS NULL
ORDER BY last_seen_at DESC
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
WHERE ($1::text IS NULL OR r.tenant_id = $1)
  AND r.created_at > clock_timestamp() - make_interval(hours => $2)
"""

RUN_COLUMNS = (
    "id", "tenant_id", "status", "error", "created_at", "started_at", "completed_at",
    "execution_time_ms",
)
STEP_COLUMNS = (
    "position", "step_key", "action", "status", "attempts", "rendered", "provider_response",
    "error", "started_at", "completed_at", "execution_time_ms",
)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def delivery_stats(pool: asyncpg.Pool, *, tenant: str | None, hours: int) -> dict[str, Any]:
    """Runs by outcome, attempts, and the share of completed runs that needed a retry."""
    row = dict(await pool.fetchrow(STATS, tenant, hours))
    row["share_completed_after_retry"] = (
        round(row["completed_after_retry"] / row["completed"], 4) if row["completed"] else 0.0)
    return {"hours": hours, "tenant": tenant, **row}


async def recent_runs(
    pool: asyncpg.Pool, *, tenant: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its steps."""
    runs = await pool.fetch(RUNS, tenant, status, limit)
    steps_by_run: dict[int, list[dict[str, Any]]] = {run["id"]: [] for run in runs}
    if runs:
        for step in await pool.fetch(STEPS, list(steps_by_run)):
            steps_by_run[step["run_id"]].append({key: _iso(step[key]) for key in STEP_COLUMNS})
    return [
        {
            **{key: _iso(run[key]) for key in RUN_COLUMNS},
            "workflow": {"id": str(run["workflow_id"]), "name": run["workflow_name"]},
            "event": {"id": run["event_id"], "type": run["event_type"],
                      "entity": run["entity"], "row_id": run["row_id"]},
            "match_reason": (run["match_reason"] or {}).get("reason"),
            "steps": steps_by_run[run["id"]],
        }
        for run in runs
    ]
