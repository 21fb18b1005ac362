"""The overview's tenant-scoped numbers: throughput per minute over the last
hour, and failures of the last 24 hours.

Every query takes the viewer's tenant scope ($1: tenant ids, or NULL for every
tenant)."""

from __future__ import annotations

from typing import Any

import asyncpg

THROUGHPUT_MINUTES = 60

# Events, runs and messages created per minute over the last $2 minutes (the
# current, unfinished minute last), every minute present even with nothing in it.
# Each table is read through its (tenant_id, created_at) index.
THROUGHPUT = """
WITH clock AS (SELECT date_trunc('minute', clock_timestamp()) AS now),
minutes AS (
    SELECT generate_series(clock.now - make_interval(mins => $2 - 1), clock.now, interval '1 minute') AS minute
    FROM clock
),
since AS (SELECT min(minute) AS start FROM minutes),
e AS (SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM herald.events, since
      WHERE ($1::text[] IS NULL OR tenant_id = ANY($1)) AND created_at >= since.start GROUP BY 1),
r AS (SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM herald.runs, since
      WHERE ($1::text[] IS NULL OR tenant_id = ANY($1)) AND created_at >= since.start GROUP BY 1),
m AS (SELECT date_trunc('minute', created_at) AS minute, count(*) AS n FROM herald.messages, since
      WHERE ($1::text[] IS NULL OR tenant_id = ANY($1)) AND created_at >= since.start GROUP BY 1)
SELECT minutes.minute, coalesce(e.n, 0) AS events, coalesce(r.n, 0) AS runs, coalesce(m.n, 0) AS messages
FROM minutes
LEFT JOIN e USING (minute) LEFT JOIN r USING (minute) LEFT JOIN m USING (minute)
ORDER BY minutes.minute
"""

# Runs that failed, and events whose matching failed, in the last 24 hours; the
# $2 latest failed runs, their error cut to $3 characters.
FAILURES = """
WITH failed AS (
    SELECT r.id, r.tenant_id, r.workflow_id, r.event_id, r.error,
           coalesce(r.completed_at, r.updated_at) AS failed_at
    FROM herald.runs r
    WHERE ($1::text[] IS NULL OR r.tenant_id = ANY($1)) AND r.status = 'failed'
      AND coalesce(r.completed_at, r.updated_at) > clock_timestamp() - interval '24 hours'
)
SELECT (SELECT count(*) FROM failed) AS runs,
       (SELECT count(*) FROM herald.events e
        WHERE ($1::text[] IS NULL OR e.tenant_id = ANY($1)) AND e.state = 'failed'
          AND e.created_at > clock_timestamp() - interval '24 hours') AS events,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', f.id, 'tenant_id', f.tenant_id, 'workflow', herald.clip(w.name, 200),
                   'event_id', f.event_id, 'error', herald.clip(f.error, $3), 'failed_at', f.failed_at)
                   ORDER BY f.failed_at DESC, f.id DESC), '[]')
        FROM (SELECT * FROM failed ORDER BY failed_at DESC, id DESC LIMIT $2) f
        JOIN herald.workflows w ON w.id = f.workflow_id) AS latest
"""

LATEST_FAILURES = 5
ERROR_CHARS = 300


async def throughput(pool: asyncpg.Pool, *, scope: list[str] | None,
                     minutes: int = THROUGHPUT_MINUTES) -> list[dict[str, Any]]:
    """One row per minute, oldest first: minute (start), events, runs, messages."""
    return [{"minute": row["minute"].isoformat(), "events": row["events"], "runs": row["runs"],
             "messages": row["messages"]}
            for row in await pool.fetch(THROUGHPUT, scope, minutes)]


async def failures(pool: asyncpg.Pool, *, scope: list[str] | None) -> dict[str, Any]:
    """Failed runs and failed events of the last 24 hours, and the latest failed runs."""
    row = await pool.fetchrow(FAILURES, scope, LATEST_FAILURES, ERROR_CHARS)
    return {"hours": 24, "runs": row["runs"], "events": row["events"], "latest": row["latest"]}
