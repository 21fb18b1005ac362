-- One notification per transaction instead of one per captured row. The daemon's
-- listener only wakes on it (the payload was never read: the outbox is the
-- truth), and PostgreSQL folds identical notifications of one transaction into
-- one, so a bulk write of 100,000 watched rows queues one notification, not
-- 100,000 that each take memory, are checked for duplicates and are delivered
-- to every listener. The function is otherwise migration 015's.
CREATE OR REPLACE FUNCTION herald.capture_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity     text := TG_ARGV[0];
    id_column  text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    watched    text := coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    old_row    jsonb;
    new_row    jsonb;
    any_row    jsonb;
    tenant     text := 'default';
    problem    text;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    any_row := coalesce(new_row, old_row);
    IF tenant_col IS NOT NULL THEN
        tenant := any_row ->> tenant_col;
        IF NOT any_row ? tenant_col THEN
            problem := format('%s has no column %s (its tenant column): run `herald watch %s'
                              ' --tenant-column COLUMN` again', watched, tenant_col, watched);
        ELSIF coalesce(tenant, '') = '' THEN
            problem := format('the row''s tenant column %s is empty: the event belongs to no tenant',
                              tenant_col);
        END IF;
    END IF;
    INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new,
                               origin_run_id, state, matched_at, match_report)
    VALUES (
        CASE WHEN problem IS NULL THEN tenant ELSE '' END,
        entity,
        watched,
        any_row ->> id_column,
        TG_OP,
        entity || '.' || CASE TG_OP WHEN 'INSERT' THEN 'created'
                                    WHEN 'UPDATE' THEN 'updated'
                                    ELSE 'deleted' END,
        -- herald.event_row only for a row too big to keep whole: a function call per
        -- row costs the application's bulk writes about a fifth of their trigger time.
        CASE WHEN pg_column_size(old_row) <= 16384 THEN old_row ELSE herald.event_row(old_row) END,
        CASE WHEN pg_column_size(new_row) <= 16384 THEN new_row ELSE herald.event_row(new_row) END,
        nullif(current_setting('herald.origin_run', true), '')::bigint,
        CASE WHEN problem IS NULL THEN 'pending' ELSE 'failed' END,
        CASE WHEN problem IS NULL THEN NULL ELSE clock_timestamp() END,
        CASE WHEN problem IS NULL THEN NULL
             ELSE jsonb_build_object('error', problem, 'workflows', '[]'::jsonb) END
    );
    -- A wake-up, delivered at commit: the daemon reads the outbox. The same payload
    -- for every row, so a transaction sends one however many rows it wrote.
    IF problem IS NULL THEN
        PERFORM pg_notify('herald_events', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Only Herald (the function's owner) installs capture: no other role may
-- point a trigger of its own at the function and write events as Herald.
REVOKE ALL ON FUNCTION herald.capture_change() FROM PUBLIC;
