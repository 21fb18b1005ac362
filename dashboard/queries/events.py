"""Events (herald.events, the outbox) with what matching made of each: every
workflow's verdict and reason, and the run a matching workflow started.

Every query takes the viewer's tenant scope ($1: tenant ids, or NULL for every
tenant). herald.events.match_report is ``{"workflows": [{"workflow_id",
"workflow", "matched", "reason"}], "error"?}`` (actors/matching.py).
"""

from __future__ import annotations

from typing import Any

import asyncpg

# matched: some workflow matched; no_match: matched against every workflow, none
# did; failed: matching failed (the error in match_report); pending: not yet matched.
EVENT_STATES = ("matched", "no_match", "failed", "pending")

# Each workflow's verdict, in the report's order, the first $LIMIT of them, with
# the run it started (found through the (workflow_id, event_id) unique index).
_VERDICTS = """
(SELECT coalesce(jsonb_agg(jsonb_build_object(
            'workflow_id', v.w ->> 'workflow_id', 'workflow', herald.clip(v.w ->> 'workflow', {clip}),
            'matched', coalesce(v.w -> 'matched' = 'true'::jsonb, false),
            'reason', herald.clip(v.w ->> 'reason', {clip}),
            'run_id', run.id, 'run_status', run.status) ORDER BY v.ord), '[]'::jsonb)
 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(e.match_report -> 'workflows') = 'array'
                                THEN e.match_report -> 'workflows' ELSE '[]'::jsonb END)
      WITH ORDINALITY AS v(w, ord)
 LEFT JOIN LATERAL (
     SELECT r.id, r.status FROM herald.runs r
     WHERE v.w -> 'matched' = 'true'::jsonb
       AND v.w ->> 'workflow_id' ~ '^[0-9a-fA-F-]{{36}}$'
       AND r.workflow_id = (v.w ->> 'workflow_id')::uuid AND r.event_id = e.id
 ) run ON true
 WHERE {limit} IS NULL OR v.ord <= {limit})
"""

_ANY_MATCHED = "(e.match_report -> 'workflows') @> '[{\"matched\": true}]'::jsonb"

EVENTS = f"""
SELECT e.id, e.tenant_id, e.entity, e.table_name, herald.clip(e.row_id, $10) AS row_id, e.operation, e.type,
       e.state, e.created_at, e.matched_at, e.dispatch_count, e.workflow_id, e.origin_run_id,
       {_ANY_MATCHED} IS TRUE AS any_matched,
       CASE WHEN jsonb_typeof(e.match_report -> 'workflows') = 'array'
            THEN jsonb_array_length(e.match_report -> 'workflows') ELSE 0 END AS workflow_count,
       herald.clip(e.match_report ->> 'error', $8) AS error,
       {_VERDICTS.format(clip="$8", limit="$9::int")} AS verdicts
FROM herald.events e
WHERE ($1::text[] IS NULL OR e.tenant_id = ANY($1))
  AND ($2::text IS NULL
       OR ($2 = 'pending' AND e.state IN ('pending', 'dispatched'))
       OR ($2 = 'failed' AND e.state = 'failed')
       OR ($2 = 'matched' AND e.state = 'matched' AND {_ANY_MATCHED})
       OR ($2 = 'no_match' AND e.state = 'matched' AND NOT coalesce({_ANY_MATCHED}, false)))
  AND ($3::text IS NULL OR e.entity = $3)
  AND ($4::text IS NULL OR e.row_id = $4)
  AND ($5::text IS NULL OR e.type = $5)
  AND ($6::bigint IS NULL OR e.id < $6)
ORDER BY e.id DESC
LIMIT $7
"""

# One event whole: its values, every verdict and reason, the error in full.
EVENT = f"""
SELECT e.id, e.tenant_id, e.entity, e.table_name, e.row_id, e.operation, e.type, e.state, e.created_at,
       e.dispatched_at, e.matched_at, e.dispatch_count, e.workflow_id, e.origin_run_id, e.old, e.new,
       {_ANY_MATCHED} IS TRUE AS any_matched,
       CASE WHEN jsonb_typeof(e.match_report -> 'workflows') = 'array'
            THEN jsonb_array_length(e.match_report -> 'workflows') ELSE 0 END AS workflow_count,
       e.match_report ->> 'error' AS error,
       {_VERDICTS.format(clip="NULL::int", limit="NULL::int")} AS verdicts
FROM herald.events e
WHERE e.id = $2 AND ($1::text[] IS NULL OR e.tenant_id = ANY($1))
"""

# Each reason or error in a list is cut to this many characters (the event's page has them whole).
LIST_VALUE_CHARS = 500
# A record id longer than this is cut in a list (and has no timeline link there).
MAX_ROW_ID_CHARS = 200
# A list shows this many workflows' verdicts per event; the event's page has them all.
LIST_VERDICTS = 12
COLUMNS = ("id", "tenant_id", "entity", "table_name", "row_id", "operation", "type", "state",
           "created_at", "matched_at", "dispatch_count", "origin_run_id", "any_matched",
           "workflow_count", "error", "verdicts")


def outcome(row: Any) -> str:
    """The event's state for people: matched, no_match, failed or pending."""
    if row["state"] == "matched":
        return "matched" if row["any_matched"] else "no_match"
    return "failed" if row["state"] == "failed" else "pending"


def _plain(row: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    event = {key: (row[key].isoformat() if hasattr(row[key], "isoformat") else row[key]) for key in columns}
    event["workflow_id"] = None if row["workflow_id"] is None else str(row["workflow_id"])
    event["outcome"] = outcome(row)
    return event


async def recent_events(
    pool: asyncpg.Pool, *, scope: list[str] | None, state: str | None, entity: str | None,
    row_id: str | None, type: str | None, before: int | None, limit: int,
) -> list[dict[str, Any]]:
    """The latest events (ids below ``before`` when given), newest first."""
    rows = await pool.fetch(EVENTS, scope, state, entity, row_id, type, before, limit,
                            LIST_VALUE_CHARS, LIST_VERDICTS, MAX_ROW_ID_CHARS)
    return [_plain(row, COLUMNS) for row in rows]


async def one_event(pool: asyncpg.Pool, *, scope: list[str] | None, event_id: int) -> dict[str, Any] | None:
    """The event whole, or None when it does not exist or is of a tenant out of ``scope``."""
    row = await pool.fetchrow(EVENT, scope, event_id)
    if row is None:
        return None
    event = _plain(row, (*COLUMNS, "dispatched_at"))
    event["old"], event["new"] = row["old"], row["new"]
    return event
