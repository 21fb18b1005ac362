-- Duplicate prevention, manual retries and their audit trail.

ALTER TABLE herald.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE herald.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'skipped'));
-- Same workflow, same record, same transition (e.g. status:in_progress->completed).
ALTER TABLE herald.runs ADD COLUMN dedupe_key text;
-- Same workflow, same record, same resulting state, for "at most once per period".
ALTER TABLE herald.runs ADD COLUMN once_key text;
-- How many times support retried this run.
ALTER TABLE herald.runs ADD COLUMN retry_count integer NOT NULL DEFAULT 0;
CREATE INDEX runs_dedupe ON herald.runs (workflow_id, dedupe_key, created_at DESC) WHERE dedupe_key IS NOT NULL;
CREATE INDEX runs_once ON herald.runs (workflow_id, once_key, created_at DESC) WHERE once_key IS NOT NULL;
CREATE INDEX runs_failed ON herald.runs (tenant_id, completed_at) WHERE status = 'failed';

-- Who retried what, when and why.
CREATE TABLE herald.retries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text NOT NULL,
    run_id       bigint NOT NULL REFERENCES herald.runs (id),
    step_id      bigint REFERENCES herald.steps (id),
    requested_by text NOT NULL,
    reason       text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- what was reset: steps sent again and steps already delivered (kept)
    steps_reset  integer NOT NULL,
    steps_kept   integer NOT NULL
);
CREATE INDEX retries_run ON herald.retries (run_id);
