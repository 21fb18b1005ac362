-- Time triggers fire once per entity per occurrence: the fire is recorded in
-- the same transaction as its event, so a restart never fires it again.
CREATE TABLE herald.schedule_fires (
    workflow_id uuid NOT NULL REFERENCES herald.workflows (id),
    fire_key    text NOT NULL,          -- entity id and occurrence, e.g. 42:2026-11-30
    event_id    bigint,
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, fire_key)
);
