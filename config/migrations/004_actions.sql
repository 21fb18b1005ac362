-- Every action of the workflow engine: waits, retries, drafts, app-table writes.

-- Runs can be cancelled (a delayed step's cancel event happened).
ALTER TABLE herald.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE herald.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled'));

-- Steps wait (delay), come back for a retry, or are cancelled with their run.
ALTER TABLE herald.steps DROP CONSTRAINT steps_status_check;
ALTER TABLE herald.steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'unknown',
                      'waiting', 'cancelled'));
ALTER TABLE herald.steps ADD COLUMN next_attempt_at timestamptz;  -- a transient failure's retry
ALTER TABLE herald.steps ADD COLUMN wake_at timestamptz;          -- a delay's end
CREATE INDEX steps_due_retry ON herald.steps (next_attempt_at) WHERE status = 'pending' AND next_attempt_at IS NOT NULL;
CREATE INDEX steps_waiting ON herald.steps (wake_at) WHERE status = 'waiting';

-- Drafts are stored, not sent, and may not know their recipient yet.
ALTER TABLE herald.messages ALTER COLUMN recipient DROP NOT NULL;
ALTER TABLE herald.messages ADD COLUMN html_body text;

-- Per watched table: where create_task / create_note write, and which columns
-- update_record may change.
ALTER TABLE herald.watched_tables ADD COLUMN action_targets jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE herald.watched_tables ADD COLUMN updatable_columns text[] NOT NULL DEFAULT '{}';

-- A change Herald itself made (update_record) remembers the run that made it,
-- so a workflow is never re-triggered by its own update.
ALTER TABLE herald.events ADD COLUMN origin_run_id bigint;

CREATE OR REPLACE FUNCTION herald.capture_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entity     text := TG_ARGV[0];
    id_column  text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    old_row    jsonb;
    new_row    jsonb;
    any_row    jsonb;
    event_id   bigint;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    any_row := coalesce(new_row, old_row);
    INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new, origin_run_id)
    VALUES (
        coalesce(CASE WHEN tenant_col IS NULL THEN NULL ELSE any_row ->> tenant_col END, 'default'),
        entity,
        TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
        any_row ->> id_column,
        TG_OP,
        entity || '.' || CASE TG_OP WHEN 'INSERT' THEN 'created'
                                    WHEN 'UPDATE' THEN 'updated'
                                    ELSE 'deleted' END,
        old_row,
        new_row,
        nullif(current_setting('herald.origin_run', true), '')::bigint
    )
    RETURNING id INTO event_id;
    -- Only the id travels; the daemon reads the row. NOTIFY is delivered at commit.
    PERFORM pg_notify('herald_events', event_id::text);
    RETURN NULL;
END;
$$;

-- Workers cache each tenant's workflows; a change tells them to reload.
CREATE FUNCTION herald.notify_workflow_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_workflows', coalesce(NEW.tenant_id, OLD.tenant_id));
    RETURN NULL;
END;
$$;
CREATE TRIGGER workflows_changed AFTER INSERT OR UPDATE OR DELETE ON herald.workflows
    FOR EACH ROW EXECUTE FUNCTION herald.notify_workflow_change();
