"""The actors' SQL, in one place. Every claim is an UPDATE/SELECT that only
one worker can win, so a duplicate Dramatiq message finds nothing to do."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from config.database import quote_ident, quote_qualified
from config.errors import HeraldDatabaseError

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_ ]*(\([0-9, ]+\))?")

# -- match ---------------------------------------------------------------------

# SKIP LOCKED: a duplicate message running at the same moment leaves the
# events to the worker that holds them; if that worker dies, its transaction
# rolls back and the sweeper sends them again.
#
# Claiming also tells the daemon's dispatcher which match message was matched
# ("matched:" and the message's first id), so that it stops counting it as
# waiting, and events it held back go out now (daemon/dispatcher.py): a
# notification delivered at commit, on the channel the capture trigger wakes it
# on, once per transaction however many events it claimed (PostgreSQL folds
# identical ones), and none when it claimed nothing.
MATCHED_PAYLOAD = "matched"

# Each claimed event comes with the delayed steps on its record that it could
# cancel (``waiting``, a list, or null): the claim is matching's only read.
# Those with a cancel_on are read from their own partial index
# (steps_cancellable, migration 023), for the claimed events' tenants only (an
# array, not IN (SELECT ...): the index is searched by tenant, not read whole),
# each looked up with its run and event by primary key (LATERAL ... LIMIT 1:
# never a hash join reading the tables whole, which a generic plan's estimate
# of many waits would choose; CASE: see CLAIM_RUNS), then kept on the claimed
# records. So the cost follows what waits to be cancelled, not the tenants'
# history: filtered by the records sooner, the planner would start from the
# events table instead.
CLAIM_EVENTS = f"""
WITH claimed AS (
    SELECT id, tenant_id, entity, table_name, row_id, operation, type, old, new, created_at, workflow_id,
           origin_run_id, pg_notify('herald_events', '{MATCHED_PAYLOAD}:' || ($1::bigint[])[1])::text AS notified
    FROM herald.events
    WHERE id = ANY($1::bigint[]) AND state IN ('pending', 'dispatched')
    ORDER BY id
    FOR UPDATE SKIP LOCKED
),
cancellable AS MATERIALIZED (
    SELECT id, run_id, config FROM herald.steps
    WHERE status = 'waiting' AND config ? 'cancel_on'
      AND tenant_id = ANY(ARRAY(SELECT DISTINCT tenant_id FROM claimed))
),
waiting AS MATERIALIZED (
    SELECT s.id, s.run_id, s.config, x.tenant_id, x.event_id, x.entity, x.row_id
    FROM cancellable s
    CROSS JOIN LATERAL (
        SELECT r.tenant_id, r.event_id, e.entity, e.row_id
        FROM herald.runs r JOIN herald.events e ON e.id = r.event_id
        WHERE r.id = s.run_id AND CASE r.status WHEN 'running' THEN true ELSE false END
        LIMIT 1
    ) AS x
),
by_record AS (
    SELECT tenant_id, entity, row_id,
           jsonb_agg(jsonb_build_object('id', id, 'run_id', run_id, 'config', config, 'event_id', event_id)
                     ORDER BY id) AS waiting
    FROM waiting GROUP BY tenant_id, entity, row_id
)
SELECT c.*, w.waiting
FROM claimed c
LEFT JOIN by_record w ON (w.tenant_id, w.entity, w.row_id) = (c.tenant_id, c.entity, c.row_id)
ORDER BY c.id
"""

# Matching this event failed for a reason of its own: final, with the error.
MARK_FAILED = """
UPDATE herald.events
SET state = 'failed', matched_at = clock_timestamp(), match_report = $2
WHERE id = $1
"""

# A batch's events matched, each with its report ($9, $10), and a run inserted per
# workflow matched ($1-$8, none when no workflow matched): one round trip. Each
# run records the workflow's version it runs (its steps are that version's).
INSERT_RUNS = """
WITH matched AS (
    UPDATE herald.events e
    SET state = 'matched', matched_at = clock_timestamp(), match_report = u.report
    FROM unnest($9::bigint[], $10::jsonb[]) AS u(id, report) WHERE e.id = u.id
)
INSERT INTO herald.runs
    (tenant_id, workflow_id, event_id, match_reason, dedupe_key, once_key, status, error, completed_at,
     workflow_version)
SELECT t, w, e, m, d, o, s, x, CASE WHEN s = 'skipped' THEN clock_timestamp() END,
       (SELECT version FROM herald.workflows WHERE id = w)
FROM unnest($1::text[], $2::uuid[], $3::bigint[], $4::jsonb[], $5::text[], $6::text[], $7::text[],
            $8::text[]) AS u(t, w, e, m, d, o, s, x)
ON CONFLICT (workflow_id, event_id) DO NOTHING
RETURNING id, workflow_id, status
"""

# Earlier runs of these workflows that a new run could duplicate, and the time
# they are judged at: a row of NULLs with it when there are none.
RECENT_RUNS = """
SELECT now.at AS now, r.workflow_id, r.dedupe_key, r.once_key, r.created_at
FROM (SELECT clock_timestamp() AS at) AS now
LEFT JOIN herald.runs r
  ON r.workflow_id = ANY($1::uuid[]) AND r.status <> 'skipped'
 AND (r.dedupe_key = ANY($2::text[]) OR r.once_key = ANY($3::text[]))
 AND r.created_at > now.at - make_interval(secs => $4)
"""

LOCK_RECORDS = """
SELECT pg_advisory_xact_lock(hashtextextended(k, 0))
FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY k) AS sorted
"""

RUN_WORKFLOWS = "SELECT id, workflow_id FROM herald.runs WHERE id = ANY($1::bigint[])"

CANCEL_RUN = """
WITH steps AS (
    UPDATE herald.steps SET status = 'cancelled', updated_at = clock_timestamp()
    WHERE run_id = $1 AND status IN ('waiting', 'pending')
)
UPDATE herald.runs
SET status = 'cancelled', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = $1 AND status = 'running'
"""

# -- enrich --------------------------------------------------------------------

# The watched tables of these runs' events, their relations, and for each related
# table the column that says which tenant its rows belong to (``owners``: related
# table -> column, or null when it has none): the table's own tenant column when
# Herald watches it, else a column named like the event table's tenant column.
# Related tables are named as `herald watch` stores them (schema.table), quoted
# here as config.database.quote_qualified quotes them, for to_regclass.
_WATCHED_RELATIONS = """
SELECT w.table_name, w.relations, w.tenant_column,
       (SELECT jsonb_object_agg(r.t, coalesce(
                   (SELECT o.tenant_column FROM herald.watched_tables o WHERE o.table_name = r.t),
                   (SELECT a.attname::text FROM pg_attribute a
                    WHERE a.attrelid = to_regclass(r.q) AND a.attname = w.tenant_column
                      AND a.attnum > 0 AND NOT a.attisdropped)))
        FROM (SELECT DISTINCT related.t,
                     '"' || replace(split_part(related.t, '.', 1), '"', '""') || '"."'
                     || replace(CASE WHEN strpos(related.t, '.') > 0 THEN substr(related.t, strpos(related.t, '.') + 1)
                                     ELSE '' END, '"', '""') || '"' AS q
              FROM (SELECT rel ->> 'table' AS t FROM jsonb_each(w.relations) AS e(name, rel)) AS related) AS r
       ) AS owners
FROM herald.watched_tables w WHERE w.table_name {tables}
"""
WATCHED_RELATIONS = _WATCHED_RELATIONS.format(tables="= ANY($1::text[])")

# The definition of the version the run recorded when it was created (runs from
# before versions: the workflow's current one).
#
# A claim by ids tests the status with CASE, not `status = 'pending'`: that
# would let the planner take the partial index of unfinished runs, which it
# believes small, though until the next vacuum it keeps an entry for every run
# that has passed through it (thousands at 50 events/s), each visited on every
# claim; CASE leaves it the primary key. The same in actors/steps.py CLAIM_STEPS
# and daemon/outbox.py STILL_DISPATCHED.
#
# The claim locks the pending runs (a concurrent claim waits, then finds them
# running); INSERT_STEPS marks them running with their contexts, in one update
# of each run's row. It returns, with each run, its event table's watch
# (WATCHED_RELATIONS: watched_table is null when Herald no longer watches it),
# saving enrichment a round trip.
CLAIM_RUNS = f"""
WITH claimed AS (
    SELECT r.id, r.tenant_id, r.workflow_id, r.event_id, r.workflow_version,
           coalesce((SELECT v.definition FROM herald.workflow_versions v
                     WHERE v.workflow_id = r.workflow_id AND v.version = r.workflow_version),
                    w.definition) AS definition,
           e.entity, e.table_name, e.row_id, e.operation, e.type, e.old, e.new, e.tenant_id AS event_tenant
    FROM herald.runs r
    JOIN herald.events e ON e.id = r.event_id
    JOIN herald.workflows w ON w.id = r.workflow_id
    WHERE r.id = ANY($1::bigint[]) AND CASE r.status WHEN 'pending' THEN true ELSE false END
    FOR UPDATE OF r
),
watched AS ({_WATCHED_RELATIONS.format(tables="IN (SELECT table_name FROM claimed)").strip()})
SELECT c.*, w.table_name AS watched_table, w.relations, w.tenant_column, w.owners
FROM claimed c LEFT JOIN watched w ON w.table_name = c.table_name
"""

# The claimed runs started with their contexts ($11, $12), and their steps
# ($1-$10), in one statement.
INSERT_STEPS = """
WITH contexts AS (
    UPDATE herald.runs r
    SET status = 'running', started_at = clock_timestamp(), updated_at = clock_timestamp(), context = u.context
    FROM unnest($11::bigint[], $12::jsonb[]) AS u(id, context) WHERE r.id = u.id
)
INSERT INTO herald.steps (run_id, tenant_id, position, step_key, action, config, status, error, completed_at,
                          queue, stage)
SELECT r, t, p, k, a, c, s, x, CASE WHEN s <> 'pending' THEN clock_timestamp() END, q, g
FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::jsonb[], $7::text[],
            $8::text[], $9::text[], $10::int[]) AS u(r, t, p, k, a, c, s, x, q, g)
ON CONFLICT (run_id, position) DO NOTHING
RETURNING id, run_id, stage, action, status
"""

# A run that cannot start (a step needs a relation that was refused).
FAIL_RUN = """
UPDATE herald.runs
SET status = 'failed', error = $2, completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    execution_time_ms = (extract(epoch FROM clock_timestamp() - created_at) * 1000)::int
WHERE id = $1 AND status = 'running'
"""


@dataclass(frozen=True)
class RelatedRead:
    """Rows of one related table by key, each with its tenant: the text of its
    ``tenant_column`` ('default' when NULL, as the capture trigger reads an
    event's), None when the table has none."""

    table: str
    key: str
    key_type: str  # read from the catalog by `herald watch`
    keys: Sequence[str]
    tenant_column: str | None


async def load_related(
    conn: asyncpg.Connection, reads: Sequence[RelatedRead],
) -> list[dict[str, tuple[dict[str, Any], str | None]]]:
    """The rows of every read in one query (one round trip however many related
    tables): for each read, {key as text: (row, its tenant)}."""
    branches: list[str] = []
    params: list[Any] = []
    for part, read in enumerate(reads):
        if not _TYPE_NAME.fullmatch(read.key_type):
            raise HeraldDatabaseError(f"relation {read.table}: unexpected key type {read.key_type!r}")
        params += [list(read.keys), read.tenant_column]
        keys, tenant = f"${len(params) - 1}", f"${len(params)}::text"
        key = quote_ident(read.key)
        branches.append(
            f"(SELECT {part} AS part, {key}::text AS key, to_jsonb(t) AS row,"
            f" CASE WHEN {tenant} IS NOT NULL THEN coalesce(to_jsonb(t) ->> {tenant}, 'default') END AS tenant"
            f" FROM {quote_qualified(read.table)} t WHERE {key} = ANY({keys}::text[]::{read.key_type}[]))")
    found: list[dict[str, tuple[dict[str, Any], str | None]]] = [{} for _ in reads]
    if reads:
        for row in await conn.fetch(" UNION ALL ".join(branches), *params):
            found[row["part"]][row["key"]] = (row["row"], row["tenant"])
    return found
