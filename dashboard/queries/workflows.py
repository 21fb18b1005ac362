"""Workflows for the dashboard: the list with last week's runs, one workflow (deleted
ones too, so their page can say so), recent records to test against, and the
messages the capture provider stored.

Every query takes the viewer's tenant scope (a list of tenant ids, or None for
every tenant) or checks the tenant of what it returns; saving, enabling and the
dry run itself are daemon.workflows' and daemon.dry_run's."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

# Runs of the last 7 days (skipped ones are no runs: the workflow did not apply),
# and the share of the finished ones that completed.
LIST = """
SELECT w.id, w.tenant_id, w.source_id, w.name, w.trigger_type, w.version, w.is_active, w.updated_at,
       coalesce(r.runs, 0) AS runs_7d, coalesce(r.completed, 0) AS completed_7d,
       coalesce(r.failed, 0) AS failed_7d, r.last_run_at
FROM herald.workflows w
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE created_at > clock_timestamp() - interval '7 days') AS runs,
           count(*) FILTER (WHERE created_at > clock_timestamp() - interval '7 days'
                            AND status = 'completed') AS completed,
           count(*) FILTER (WHERE created_at > clock_timestamp() - interval '7 days'
                            AND status = 'failed') AS failed,
           max(created_at) AS last_run_at
    FROM herald.runs
    WHERE workflow_id = w.id AND status <> 'skipped'
) r ON true
WHERE w.deleted_at IS NULL AND ($1::text[] IS NULL OR w.tenant_id = ANY($1))
ORDER BY w.tenant_id, w.name, w.id
LIMIT $2
"""

ONE = """
SELECT id, tenant_id, source_id, name, trigger_type, version, is_active, deleted_at, created_at, updated_at,
       definition
FROM herald.workflows WHERE id = $1
"""

# Rows of an entity that changed lately: what a person most likely wants to test with.
RECENT_RECORDS = """
SELECT row_id, max(created_at) AS changed_at, (array_agg(type ORDER BY id DESC))[1] AS last_type
FROM herald.events
WHERE tenant_id = $1 AND entity = $2 AND row_id IS NOT NULL
  AND id > (SELECT coalesce(max(id), 0) - 5000 FROM herald.events)
GROUP BY row_id
ORDER BY max(id) DESC
LIMIT $3
"""

# Messages the capture provider stored (test mode: rendered, never delivered).
CAPTURED = """
SELECT m.id, m.tenant_id, m.run_id, m.channel, herald.clip(m.recipient, $3) AS recipient,
       herald.clip(m.subject, $3) AS subject, herald.clip(m.body, $3) AS body, m.status, m.created_at,
       w.id AS workflow_id, herald.clip(w.name, 200) AS workflow_name
FROM herald.messages m
JOIN herald.runs r ON r.id = m.run_id
JOIN herald.workflows w ON w.id = r.workflow_id
WHERE m.provider = 'capture' AND ($1::text[] IS NULL OR m.tenant_id = ANY($1))
  AND ($4::bigint IS NULL OR m.id < $4)
ORDER BY m.id DESC
LIMIT $2
"""

MAX_WORKFLOWS = 1000
# A captured body is cut to this many characters in the list.
CAPTURED_VALUE_CHARS = 4000


def parse_id(text: str) -> uuid.UUID | None:
    """A workflow's id from a URL; None for anything that is not a uuid."""
    if len(text) > 64:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def success_rate(completed: int, failed: int) -> float | None:
    """The share of finished runs that completed; None when none finished."""
    finished = completed + failed
    return round(completed / finished, 4) if finished else None


async def list_workflows(conn: asyncpg.Connection, scope: list[str] | None) -> list[dict[str, Any]]:
    rows = []
    for row in await conn.fetch(LIST, scope, MAX_WORKFLOWS):
        item = dict(row)
        item["id"] = str(item["id"])
        item["success_rate"] = success_rate(item["completed_7d"], item["failed_7d"])
        rows.append(item)
    return rows


async def workflow_row(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> Any:
    """The workflow (deleted or not), or None."""
    return await conn.fetchrow(ONE, workflow_id)


async def recent_records(conn: asyncpg.Connection, tenant_id: str, entity: str, limit: int = 15) -> list[Any]:
    return list(await conn.fetch(RECENT_RECORDS, tenant_id, entity, limit))


async def captured_messages(
    conn: asyncpg.Connection, scope: list[str] | None, limit: int, before: int | None = None,
) -> list[dict[str, Any]]:
    return [dict(row) for row in await conn.fetch(CAPTURED, scope, limit, CAPTURED_VALUE_CHARS, before)]


def jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: (value.isoformat() if hasattr(value, "isoformat") else
                  str(value) if isinstance(value, uuid.UUID) else value)
            for key, value in row.items()}
