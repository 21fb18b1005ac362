"""Runs and their steps, and delivery statistics, for the pages and /api/*.

Every query takes the viewer's tenant scope (a list of tenant ids, or None
for every tenant) and filters on it."""

from __future__ import annotations

from typing import Any

import asyncpg

# Values a list sends are cut to $5 characters (herald.clip, migration 009): a
# 10 MB title rendered into a message must not make a page polled every second
# weigh megabytes. NULL: whole values, e.g. for one run ($4).
RUNS = """
SELECT r.id, r.tenant_id, r.workflow_id, herald.clip(w.name, $5) AS workflow_name, r.event_id,
       e.type AS event_type, e.entity, herald.clip(e.row_id, $5) AS row_id, r.status,
       herald.clip(r.error, $5) AS error, herald.clip(r.match_reason ->> 'reason', $5) AS match_reason,
       r.created_at, r.started_at, r.completed_at, r.execution_time_ms
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
JOIN herald.events e ON e.id = r.event_id
WHERE ($1::text[] IS NULL OR r.tenant_id = ANY($1))
  AND ($2::text IS NULL OR r.status = $2)
  AND ($4::bigint IS NULL OR r.id = $4)
ORDER BY r.id DESC
LIMIT $3
"""

STEPS = """
SELECT run_id, position, step_key, action, status, attempts, herald.clip(rendered, $2) AS rendered,
       herald.clip(provider_response, $2) AS provider_response, herald.clip(error, $2) AS error,
       started_at, completed_at, execution_time_ms
FROM herald.steps
WHERE run_id = ANY($1::bigint[])
ORDER BY run_id, position
"""

# Each rendered value, error or reason in a list of runs is cut to this many
# characters, with "… [truncated: N characters in all]".
LIST_VALUE_CHARS = 2000

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
    "execution_time_ms",
)
STEP_COLUMNS = (
    "position", "step_key", "action", "status", "attempts", "rendered", "provider_response",
    "error", "started_at", "completed_at", "execution_time_ms",
)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


async def delivery_stats(pool: asyncpg.Pool, *, scope: list[str] | None, hours: int) -> dict[str, Any]:
    """Runs by outcome, attempts, and the share of completed runs that needed a retry."""
    row = dict(await pool.fetchrow(STATS, scope, hours))
    row["share_completed_after_retry"] = (
        round(row["completed_after_retry"] / row["completed"], 4) if row["completed"] else 0.0)
    return {"hours": hours, "tenants": scope, **row}


async def recent_runs(
    pool: asyncpg.Pool, *, scope: list[str] | None, status: str | None, limit: int,
    run_id: int | None = None, clip: int | None = LIST_VALUE_CHARS,
) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its steps (only run ``run_id`` if given).

    Long values (rendered messages, provider responses, errors, the match
    reason) are cut to ``clip`` characters with their full length noted;
    ``clip=None`` returns them whole (for a single run's page).
    """
    runs = await pool.fetch(RUNS, scope, status, limit, run_id, clip)
    steps_by_run: dict[int, list[dict[str, Any]]] = {run["id"]: [] for run in runs}
    if runs:
        for step in await pool.fetch(STEPS, list(steps_by_run), clip):
            steps_by_run[step["run_id"]].append({key: _iso(step[key]) for key in STEP_COLUMNS})
    return [
        {
            **{key: _iso(run[key]) for key in RUN_COLUMNS},
            "workflow": {"id": str(run["workflow_id"]), "name": run["workflow_name"]},
            "event": {"id": run["event_id"], "type": run["event_type"],
                      "entity": run["entity"], "row_id": run["row_id"]},
            "match_reason": run["match_reason"],
            "steps": steps_by_run[run["id"]],
        }
        for run in runs
    ]


