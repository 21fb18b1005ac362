-- What the dashboard's pages look up: a record's events (its timeline, and the
-- Events page's record filter), the runs an event started, and one tenant's
-- runs newest first (the Runs page pages by id).
CREATE INDEX events_record ON herald.events (tenant_id, entity, row_id, id DESC);
CREATE INDEX runs_event ON herald.runs (event_id);
CREATE INDEX runs_tenant_id ON herald.runs (tenant_id, id DESC);
