"""The SQL behind /metrics: Herald's state as PostgreSQL holds it, read at scrape time.

Every query is bounded by an index (partial indexes on the few unfinished rows,
the heartbeats' live index, a sequence) rather than by the size of the
history, and runs under a short statement timeout, so a scrape stays cheap
however many events, runs and steps retention keeps.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from daemon.health_reads import OUTBOX_BACKLOG

# The last id the events' identity sequence handed out: every change captured so
# far (a business transaction that rolled back also used one). A counter that
# retention's deletes never lower, unlike a count of rows.
EVENTS_CAPTURED = """
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('herald.events', 'id')::regclass), 0)::bigint
"""

# Processes that have not said they stopped, seen in the last $2 seconds: live
# (beat within $1 seconds) or stale (silent since, not yet given up for dead).
PROCESSES = """
SELECT kind,
       count(*) FILTER (WHERE last_seen_at > clock_timestamp() - make_interval(secs => $1)) AS live,
       count(*) FILTER (WHERE last_seen_at <= clock_timestamp() - make_interval(secs => $1)) AS stale
FROM herald.heartbeats
WHERE stopped_at IS NULL AND last_seen_at > clock_timestamp() - make_interval(secs => $2)
GROUP BY kind
"""

UNFINISHED_RUNS = """
SELECT status, count(*) AS n FROM herald.runs WHERE status IN ('pending', 'running') GROUP BY status
"""

# Each arm on its own partial index (steps_unfinished, steps_waiting, steps_unknown).
UNFINISHED_STEPS = """
SELECT 'pending' AS status, count(*) AS n FROM herald.steps WHERE status = 'pending'
UNION ALL SELECT 'sending', count(*) FROM herald.steps WHERE status = 'sending'
UNION ALL SELECT 'waiting', count(*) FROM herald.steps WHERE status = 'waiting'
UNION ALL SELECT 'unknown', count(*) FROM herald.steps WHERE status = 'unknown'
"""

STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '{ms}ms'"


async def state(conn: asyncpg.Connection, *, liveness_s: float, horizon_s: float,
                timeout_ms: int) -> dict[str, Any]:
    """Backlog, events captured, processes, unfinished runs and steps, in one read-only transaction."""
    async with conn.transaction(readonly=True):
        await conn.execute(STATEMENT_TIMEOUT.format(ms=int(timeout_ms)))
        backlog = dict(await conn.fetchrow(OUTBOX_BACKLOG))
        captured = await conn.fetchval(EVENTS_CAPTURED)
        processes = {row["kind"]: (row["live"], row["stale"])
                     for row in await conn.fetch(PROCESSES, liveness_s, horizon_s)}
        runs = {row["status"]: row["n"] for row in await conn.fetch(UNFINISHED_RUNS)}
        steps = {row["status"]: row["n"] for row in await conn.fetch(UNFINISHED_STEPS)}
    return {"backlog": backlog, "captured": captured, "processes": processes, "runs": runs, "steps": steps}
