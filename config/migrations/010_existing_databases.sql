-- Herald in databases that applications already have.

-- What create_task / create_note fill in when the workflow does not (see
-- `herald watch --fill`): column -> now | uuid | cuid | none, for this watched
-- table's target tables and, on update_record, the table itself.
ALTER TABLE herald.watched_tables ADD COLUMN fills jsonb NOT NULL DEFAULT '{}'::jsonb;

-- An event keeps every column value whole up to this size; a larger value (a
-- document in a text column, a file in a bytea) is replaced by a short text
-- naming its size and hash, so events stay small and a change of the value is
-- still a change.
CREATE FUNCTION herald.event_row(row_value jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN pg_column_size(row_value) <= 16384 THEN row_value
        ELSE (SELECT jsonb_object_agg(k, CASE
                  WHEN pg_column_size(v) <= 16384 THEN v
                  ELSE to_jsonb(format('[left out of the event: %s characters, md5 %s]',
                                       length(v #>> '{}'), md5(v #>> '{}')))
                  END)
              FROM jsonb_each(row_value) AS e(k, v))
    END
$$;

-- The capture trigger runs with Herald's rights, not the writer's: an
-- application role that may write a watched table (under row-level security,
-- with rights on its own tables only) still may, and has no rights at all on
-- Herald's schema. search_path is pinned so the writer's settings cannot
-- change what the function refers to.
--
-- Arguments: entity, id column, tenant column ('' when the table has none),
-- and the watched table (a partition's row is an event of its parent table).
-- A row whose tenant column is missing or empty belongs to no tenant: its event
-- is recorded as failed, with the reason, and matched by no tenant's workflows.
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
    event_id   bigint;
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
        herald.event_row(old_row),
        herald.event_row(new_row),
        nullif(current_setting('herald.origin_run', true), '')::bigint,
        CASE WHEN problem IS NULL THEN 'pending' ELSE 'failed' END,
        CASE WHEN problem IS NULL THEN NULL ELSE clock_timestamp() END,
        CASE WHEN problem IS NULL THEN NULL
             ELSE jsonb_build_object('error', problem, 'workflows', '[]'::jsonb) END
    )
    RETURNING id INTO event_id;
    -- Only the id travels; the daemon reads the row. NOTIFY is delivered at commit.
    IF problem IS NULL THEN
        PERFORM pg_notify('herald_events', event_id::text);
    END IF;
    RETURN NULL;
END;
$$;

-- Only Herald (the function's owner) installs capture: no other role may
-- point a trigger of its own at the function and write events as Herald.
REVOKE ALL ON FUNCTION herald.capture_change() FROM PUBLIC;
REVOKE ALL ON SCHEMA herald FROM PUBLIC;
