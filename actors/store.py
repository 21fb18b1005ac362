"""The actors' SQL, in one place. Every claim is an UPDATE/SELECT that only
one worker can win, so a duplicate Dramatiq message finds nothing to do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import asyncpg

from config.database import quote_ident, quote_qualified
from config.errors import HeraldDatabaseError

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_ ]*(\([0-9, ]+\))?")

# -- match ---------------------------------------------------------------------

# SKIP LOCKED: a duplicate message running at the same moment leaves the
# events to the worker that holds them; if that worker dies, its transaction
# rolls back and the sweeper sends them again.
CLAIM_EVENTS = """
SELECT id, tenant_id, entity, table_name, row_id, operation, type, old, new, created_at, workflow_id
FROM herald.events
WHERE id = ANY($1::bigint[]) AND state <> 'matched'
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

ACTIVE_WORKFLOWS = """
SELECT id, tenant_id, name, definition, updated_at
FROM herald.workflows
WHERE is_active AND tenant_id = ANY($1::text[])
ORDER BY created_at, id
"""

MARK_MATCHED = """
UPDATE herald.events
SET state = 'matched', matched_at = clock_timestamp(), match_report = $2
WHERE id = $1
"""

INSERT_RUNS = """
INSERT INTO herald.runs (tenant_id, workflow_id, event_id, match_reason)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::jsonb[])
ON CONFLICT (workflow_id, event_id) DO NOTHING
RETURNING id, workflow_id
"""

COUNT_EXECUTIONS = """
UPDATE herald.workflows w
SET execution_count = w.execution_count + c.n
FROM (SELECT workflow_id, count(*) AS n FROM unnest($1::uuid[]) AS workflow_id GROUP BY 1) c
WHERE w.id = c.workflow_id
"""

# -- enrich --------------------------------------------------------------------

CLAIM_RUNS = """
UPDATE herald.runs r
SET status = 'running', started_at = clock_timestamp(), updated_at = clock_timestamp()
FROM herald.events e, herald.workflows w
WHERE r.id = ANY($1::bigint[]) AND r.status = 'pending'
  AND e.id = r.event_id AND w.id = r.workflow_id
RETURNING r.id, r.tenant_id, r.workflow_id, r.event_id, w.definition,
          e.entity, e.table_name, e.row_id, e.operation, e.type, e.old, e.new, e.tenant_id AS event_tenant
"""

WATCHED_RELATIONS = """
SELECT table_name, relations FROM herald.watched_tables WHERE table_name = ANY($1::text[])
"""

SET_CONTEXT = "UPDATE herald.runs SET context = $2 WHERE id = $1"

INSERT_STEPS = """
INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::jsonb[])
ON CONFLICT (run_id, position) DO NOTHING
RETURNING id, run_id, position, action
"""

# -- steps ---------------------------------------------------------------------

CLAIM_STEPS = """
UPDATE herald.steps s
SET status = 'sending', attempts = s.attempts + 1,
    started_at = clock_timestamp(), updated_at = clock_timestamp()
FROM herald.runs r
WHERE s.id = ANY($1::bigint[]) AND s.status = 'pending' AND s.action = ANY($2::text[])
  AND r.id = s.run_id AND r.status = 'running'
RETURNING s.id, s.run_id, s.tenant_id, s.position, s.step_key, s.action, s.config,
          r.context, r.workflow_id, r.event_id
"""

INSERT_MESSAGE = """
INSERT INTO herald.messages
    (tenant_id, run_id, step_id, channel, provider, idempotency_key, recipient, subject, body, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'sending')
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

MESSAGE_BY_KEY = "SELECT id, status, provider_message_id FROM herald.messages WHERE idempotency_key = $1"

MESSAGE_DELIVERED = """
UPDATE herald.messages SET status = $2, provider_message_id = $3 WHERE id = $1
"""

STEP_SENT = """
UPDATE herald.steps
SET status = 'sent', rendered = $2, provider_response = $3, error = NULL,
    completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = $4
WHERE id = $1 AND status = 'sending'
"""

STEP_FAILED = """
UPDATE herald.steps
SET status = $2, rendered = $3, error = $4,
    completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = $5
WHERE id = $1 AND status = 'sending'
"""

NEXT_STEP = """
SELECT id, action FROM herald.steps WHERE run_id = $1 AND position = $2 AND status = 'pending'
"""

RUN_COMPLETED = """
UPDATE herald.runs
SET status = 'completed', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = $1 AND status = 'running'
"""

RUN_FAILED = """
UPDATE herald.runs
SET status = 'failed', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = $1 AND status = 'running'
"""

SKIP_REMAINING = """
UPDATE herald.steps SET status = 'skipped', updated_at = clock_timestamp()
WHERE run_id = $1 AND status = 'pending'
"""


async def load_related(
    conn: asyncpg.Connection, relation: dict[str, Any], keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Rows of a related table by key, in one query: {key as text: row}."""
    table = quote_qualified(relation["table"])
    key = quote_ident(relation.get("key", "id"))
    key_type = relation.get("key_type", "text")  # read from the catalog by `herald watch`
    if not _TYPE_NAME.fullmatch(key_type):
        raise HeraldDatabaseError(f"relation {relation['table']}: unexpected key type {key_type!r}")
    rows = await conn.fetch(
        f"SELECT {key}::text AS key, to_jsonb(t) AS row FROM {table} t "
        f"WHERE {key} = ANY($1::text[]::{key_type}[])",
        list(keys),
    )
    return {row["key"]: row["row"] for row in rows}
