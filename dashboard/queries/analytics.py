"""Analytics over the last N UTC days: runs per workflow and day with outcomes,
success rate, p50/p95 duration and retries, and messages per channel and
provider.

A run counts on the UTC day it was created. Success rate is completed runs
over finished ones (completed + failed); skipped, cancelled and unfinished runs
count as runs but not towards it. Duration is the run's execution_time_ms.
"Needed a retry": support retried it (retry_count > 0) or a step took more
than one attempt. Every query takes the viewer's tenant scope ($1).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

MAX_DAYS = 90

# The first UTC day of the window ($2 days, today included) and today.
WINDOW = """
SELECT (date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') - make_interval(days => $1 - 1))::date AS first_day,
       (clock_timestamp() AT TIME ZONE 'UTC')::date AS today
"""

# One row per (day, workflow), per workflow, per day and overall (grouping sets).
RUNS = """
SELECT (r.created_at AT TIME ZONE 'UTC')::date AS day, r.workflow_id, w.name AS workflow, w.tenant_id,
       GROUPING((r.created_at AT TIME ZONE 'UTC')::date) = 1 AS all_days,
       GROUPING(r.workflow_id, w.name, w.tenant_id) = 7 AS all_workflows,
       count(*) AS runs,
       count(*) FILTER (WHERE r.status = 'completed') AS completed,
       count(*) FILTER (WHERE r.status = 'failed') AS failed,
       count(*) FILTER (WHERE r.status = 'skipped') AS skipped,
       count(*) FILTER (WHERE r.status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE r.status IN ('pending', 'running')) AS unfinished,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY r.execution_time_ms) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.execution_time_ms) AS p95_ms,
       count(*) FILTER (WHERE r.retry_count > 0 OR EXISTS (
           SELECT 1 FROM herald.steps s WHERE s.run_id = r.id AND s.attempts > 1)) AS retried
FROM herald.runs r
JOIN herald.workflows w ON w.id = r.workflow_id
WHERE ($1::text[] IS NULL OR r.tenant_id = ANY($1))
  AND r.created_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
GROUP BY GROUPING SETS (((r.created_at AT TIME ZONE 'UTC')::date, r.workflow_id, w.name, w.tenant_id),
                        (r.workflow_id, w.name, w.tenant_id),
                        ((r.created_at AT TIME ZONE 'UTC')::date),
                        ())
"""

MESSAGES = """
SELECT m.channel, m.provider, m.status, count(*) AS n
FROM herald.messages m
WHERE ($1::text[] IS NULL OR m.tenant_id = ANY($1))
  AND m.created_at >= ($2::date)::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

COUNTS = ("runs", "completed", "failed", "skipped", "cancelled", "unfinished", "retried")


def _numbers(row: Any) -> dict[str, Any]:
    numbers = {key: row[key] for key in COUNTS}
    finished = row["completed"] + row["failed"]
    numbers["success_rate"] = round(row["completed"] / finished, 4) if finished else None
    for key in ("p50_ms", "p95_ms"):
        numbers[key] = None if row[key] is None else round(float(row[key]), 1)
    return numbers


def _empty() -> dict[str, Any]:
    return {**{key: 0 for key in COUNTS}, "success_rate": None, "p50_ms": None, "p95_ms": None}


async def analytics(pool: asyncpg.Pool, *, scope: list[str] | None, days: int) -> dict[str, Any]:
    """Totals, per day, per workflow (with its days) and messages, over the last ``days`` UTC days."""
    async with pool.acquire() as conn:
        window = await conn.fetchrow(WINDOW, days)
        first_day: dt.date = window["first_day"]
        rows = await conn.fetch(RUNS, scope, first_day)
        message_rows = await conn.fetch(MESSAGES, scope, first_day)
    day_list = [first_day + dt.timedelta(days=offset) for offset in range(days)]
    totals = _empty()
    per_day = {day: {"day": day.isoformat(), **_empty()} for day in day_list}
    workflows: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["all_workflows"] and row["all_days"]:
            totals = _numbers(row)
        elif row["all_workflows"]:
            # A run created "today" by a clock a moment ahead of WINDOW's still counts.
            per_day.setdefault(row["day"], {"day": row["day"].isoformat(), **_empty()}).update(_numbers(row))
        else:
            key = str(row["workflow_id"])
            entry = workflows.setdefault(key, {"id": key, "name": row["workflow"], "tenant_id": row["tenant_id"],
                                               "totals": _empty(), "days": {}})
            if row["all_days"]:
                entry["totals"] = _numbers(row)
            else:
                entry["days"][row["day"].isoformat()] = {"day": row["day"].isoformat(), **_numbers(row)}
    listed = sorted(workflows.values(), key=lambda w: (-w["totals"]["runs"], w["name"], w["id"]))
    for entry in listed:
        entry["days"] = [entry["days"][day] for day in sorted(entry["days"])]
    messages: dict[tuple[str, str], dict[str, Any]] = {}
    for row in message_rows:
        entry = messages.setdefault((row["channel"], row["provider"]), {
            "channel": row["channel"], "provider": row["provider"], "total": 0, "by_status": {}})
        entry["total"] += row["n"]
        entry["by_status"][row["status"]] = row["n"]
    return {
        "days": days, "first_day": first_day.isoformat(), "today": window["today"].isoformat(),
        "tenants": scope, "totals": totals,
        "per_day": [per_day[day] for day in sorted(per_day)],
        "workflows": listed, "messages": list(messages.values()),
    }
