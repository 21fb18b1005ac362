-- Retention (daemon/retention.py, `herald prune`): old events, runs and what
-- hangs off them are deleted in small batches. What that needs, and what the
-- hot path's rate-limit count needs.
--
-- Migrations run in a transaction (config/database.py), so these indexes are
-- built without CONCURRENTLY: on a large existing database, build them by hand
-- first (CREATE INDEX CONCURRENTLY IF NOT EXISTS ..., same names) and this
-- migration finds them there.

-- Retention walks runs oldest first, in (created_at, id) order. Events it walks
-- by id (their primary key): an index on herald.events is paid for by every
-- write of a watched table, through the capture trigger.
CREATE INDEX IF NOT EXISTS runs_created ON herald.runs (created_at, id);

-- A pruned run's messages and retries are found by run, and deleting its steps
-- checks that no retry still names them (foreign keys without an index on the
-- referencing side cost a scan of the table per deleted row).
CREATE INDEX IF NOT EXISTS messages_run ON herald.messages (run_id);
CREATE INDEX IF NOT EXISTS retries_step ON herald.retries (step_id) WHERE step_id IS NOT NULL;

-- The per-recipient rate limit (actors/rate_limits.py, RECENT) counts one
-- recipient's recent messages on one channel of one tenant, newest first.
CREATE INDEX IF NOT EXISTS messages_recipient_recent
    ON herald.messages (tenant_id, channel, recipient, created_at DESC);

-- A time trigger's fire names the entity it fired for, so retention can tell
-- a fire that may come again (the entity's latest occurrence: an invoice still
-- overdue, a client still inactive, a cron schedule's last instant) from one
-- a newer occurrence has replaced. Fires recorded before this are named from
-- their events; a fire whose event is gone stays unnamed and is never pruned.
ALTER TABLE herald.schedule_fires ADD COLUMN IF NOT EXISTS row_id text;
UPDATE herald.schedule_fires f SET row_id = e.row_id
FROM herald.events e WHERE e.id = f.event_id AND f.row_id IS NULL;
CREATE INDEX IF NOT EXISTS schedule_fires_entity ON herald.schedule_fires (workflow_id, row_id, fired_at);
CREATE INDEX IF NOT EXISTS schedule_fires_fired ON herald.schedule_fires (fired_at);

-- How many runs of each workflow version retention has deleted, so a
-- workflow's execution count (counted from its runs) does not shrink when
-- they go. Updated once per batch by retention only, never by the hot path.
-- version 0: runs that predate workflow versions.
CREATE TABLE IF NOT EXISTS herald.pruned_runs (
    workflow_id uuid NOT NULL REFERENCES herald.workflows (id),
    version     integer NOT NULL,
    runs        bigint NOT NULL DEFAULT 0,   -- not counting runs skipped as duplicates
    failed      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (workflow_id, version)
);
