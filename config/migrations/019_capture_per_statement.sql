-- Capture per statement: one trigger call per INSERT, UPDATE or DELETE statement
-- of a watched table, writing all its rows' events with one set-based INSERT from
-- the statement's transition tables, instead of one trigger call and one INSERT
-- per row. A bulk UPDATE of 100,000 watched rows went from about 14 times the
-- unwatched time to about 5 (tests/bench/run.py, overhead); a single-row write
-- costs what it did. What events hold is unchanged: every changed row is one
-- event, in the statement's row order, with both whole rows.
--
-- `herald watch` installs, on a table:
--   herald_capture         AFTER INSERT, REFERENCING NEW TABLE AS changed_rows
--   herald_capture_update  AFTER UPDATE, REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows
--   herald_capture_delete  AFTER DELETE, REFERENCING OLD TABLE AS changed_rows
-- all FOR EACH STATEMENT. A partitioned table keeps the per-row triggers
-- (herald_capture AFTER INSERT OR DELETE, herald_capture_update AFTER UPDATE):
-- PostgreSQL fires a partitioned table's statement triggers only for statements
-- naming it, while its row triggers also fire for writes naming a partition,
-- including partitions made later. The function serves both.

-- Why a row's event belongs to no tenant, or NULL when it belongs to one. Plain
-- SQL, and STABLE as format() is, so PostgreSQL inlines it into the capture's INSERT.
CREATE OR REPLACE FUNCTION herald.capture_problem(any_row jsonb, tenant_col text, watched text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN tenant_col IS NULL THEN NULL
        WHEN NOT any_row ? tenant_col THEN
            format('%s has no column %s (its tenant column): run `herald watch %s --tenant-column COLUMN` again',
                   watched, tenant_col, watched)
        WHEN coalesce(any_row ->> tenant_col, '') = '' THEN
            format('the row''s tenant column %s is empty: the event belongs to no tenant', tenant_col)
    END
$$;

CREATE OR REPLACE FUNCTION herald.capture_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    entity     text := TG_ARGV[0];
    id_column  text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    watched    text := coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    kind       text := entity || '.' || CASE TG_OP WHEN 'INSERT' THEN 'created'
                                                   WHEN 'UPDATE' THEN 'updated'
                                                   ELSE 'deleted' END;
    origin     bigint := nullif(current_setting('herald.origin_run', true), '')::bigint;
    old_row    jsonb;
    new_row    jsonb;
    any_row    jsonb;
    problem    text;
    written    bigint;
BEGIN
    -- PL/pgSQL resolves a transition table when the statement naming it first
    -- runs, so each trigger runs only statements naming the tables it has: all
    -- three name the statement's new (or deleted) rows changed_rows.
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); END IF;
        IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); END IF;
    ELSE
        -- The count, and the row if it is the only one (most writes are: the
        -- one-row form below is cheaper than a join), in one query.
        IF TG_OP = 'UPDATE' THEN
            SELECT c.n, CASE WHEN c.n = 1 THEN (SELECT to_jsonb(t) FROM old_rows t LIMIT 1) END,
                   CASE WHEN c.n = 1 THEN (SELECT to_jsonb(t) FROM changed_rows t LIMIT 1) END
            INTO written, old_row, new_row
            FROM (SELECT count(*) AS n FROM changed_rows) AS c;
            IF written = 1 AND old_row = new_row THEN  -- the UPDATE left it as it was: no event
                RETURN NULL;
            END IF;
        ELSE
            SELECT c.n, CASE WHEN c.n = 1 THEN (SELECT to_jsonb(t) FROM changed_rows t LIMIT 1) END
            INTO written, any_row
            FROM (SELECT count(*) AS n FROM changed_rows) AS c;
            IF TG_OP = 'INSERT' THEN new_row := any_row; ELSE old_row := any_row; END IF;
        END IF;
        IF written = 0 THEN
            RETURN NULL;
        END IF;
    END IF;

    IF old_row IS NOT NULL OR new_row IS NOT NULL THEN
        any_row := coalesce(new_row, old_row);
        problem := herald.capture_problem(any_row, tenant_col, watched);
        INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new,
                                   origin_run_id, state, matched_at, match_report)
        VALUES (CASE WHEN problem IS NULL THEN coalesce(any_row ->> tenant_col, 'default') ELSE '' END,
                entity, watched, any_row ->> id_column, TG_OP, kind,
                CASE WHEN pg_column_size(old_row) <= 16384 THEN old_row ELSE herald.event_row(old_row) END,
                CASE WHEN pg_column_size(new_row) <= 16384 THEN new_row ELSE herald.event_row(new_row) END,
                origin,
                CASE WHEN problem IS NULL THEN 'pending' ELSE 'failed' END,
                CASE WHEN problem IS NULL THEN NULL ELSE clock_timestamp() END,
                CASE WHEN problem IS NULL THEN NULL
                     ELSE jsonb_build_object('error', problem, 'workflows', '[]'::jsonb) END);
        written := CASE WHEN problem IS NULL THEN 1 ELSE 0 END;
    ELSIF TG_OP = 'UPDATE' THEN
        -- PostgreSQL appends each updated row's old and new versions to the two
        -- transition tables together, so the nth old row is the nth new row's
        -- (paired by position: an UPDATE may change the key itself). A row the
        -- UPDATE left as it was is no event.
        INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new,
                                   origin_run_id, state, matched_at, match_report)
        SELECT CASE WHEN c.problem IS NULL THEN coalesce(c.n ->> tenant_col, 'default') ELSE '' END,
               entity, watched, c.n ->> id_column, TG_OP, kind,
               CASE WHEN pg_column_size(c.o) <= 16384 THEN c.o ELSE herald.event_row(c.o) END,
               CASE WHEN pg_column_size(c.n) <= 16384 THEN c.n ELSE herald.event_row(c.n) END,
               origin,
               CASE WHEN c.problem IS NULL THEN 'pending' ELSE 'failed' END,
               CASE WHEN c.problem IS NULL THEN NULL ELSE clock_timestamp() END,
               CASE WHEN c.problem IS NULL THEN NULL
                    ELSE jsonb_build_object('error', c.problem, 'workflows', '[]'::jsonb) END
        FROM (SELECT o, n, herald.capture_problem(n, tenant_col, watched) AS problem
              FROM (SELECT row_number() OVER () AS i, to_jsonb(t) AS o FROM old_rows t) AS before
              JOIN (SELECT row_number() OVER () AS i, to_jsonb(t) AS n FROM changed_rows t) AS after USING (i)
              WHERE o IS DISTINCT FROM n OFFSET 0) AS c;
        GET DIAGNOSTICS written = ROW_COUNT;
    ELSE
        INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new,
                                   origin_run_id, state, matched_at, match_report)
        SELECT CASE WHEN c.problem IS NULL THEN coalesce(c.r ->> tenant_col, 'default') ELSE '' END,
               entity, watched, c.r ->> id_column, TG_OP, kind,
               CASE WHEN TG_OP = 'DELETE' THEN c.kept END,
               CASE WHEN TG_OP = 'INSERT' THEN c.kept END,
               origin,
               CASE WHEN c.problem IS NULL THEN 'pending' ELSE 'failed' END,
               CASE WHEN c.problem IS NULL THEN NULL ELSE clock_timestamp() END,
               CASE WHEN c.problem IS NULL THEN NULL
                    ELSE jsonb_build_object('error', c.problem, 'workflows', '[]'::jsonb) END
        FROM (SELECT r, CASE WHEN pg_column_size(r) <= 16384 THEN r ELSE herald.event_row(r) END AS kept,
                     herald.capture_problem(r, tenant_col, watched) AS problem
              FROM (SELECT to_jsonb(t) AS r FROM changed_rows t) AS rows OFFSET 0) AS c;
        GET DIAGNOSTICS written = ROW_COUNT;
    END IF;
    -- A wake-up, delivered at commit: the daemon reads the outbox. The same empty
    -- payload every time, so a transaction sends one however many rows it wrote
    -- (migration 018); none for a statement that wrote no event, or whose one
    -- row belongs to no tenant.
    IF written > 0 THEN
        PERFORM pg_notify('herald_events', '');
    END IF;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION herald.capture_change() FROM PUBLIC;

-- Capture on a table, as `herald watch` installs it (daemon/capture.py) and as
-- this migration moves tables already watched to it. Runs with the caller's
-- rights, so any role may call it: creating the triggers takes TRIGGER on the
-- table and EXECUTE on herald.capture_change(), as it did before.
CREATE OR REPLACE FUNCTION herald.install_capture(target regclass, entity text, id_column text,
                                                  tenant_column text, watched text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    args text := format('%L, %L, %L, %L', entity, id_column, coalesce(tenant_column, ''), watched);
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = target) = 'p' THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT OR DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION herald.capture_change(%s)', target, args);
        -- An UPDATE that changes nothing is not an event. Compared byte for byte
        -- (*=): a column of a type without equality (json, point, xml) made
        -- IS DISTINCT FROM fail the application's UPDATE.
        EXECUTE format('CREATE OR REPLACE TRIGGER herald_capture_update AFTER UPDATE ON %s'
                       ' FOR EACH ROW WHEN (NOT (OLD *= NEW))'
                       ' EXECUTE FUNCTION herald.capture_change(%s)', target, args);
    ELSE
        EXECUTE format('CREATE OR REPLACE TRIGGER herald_capture AFTER INSERT ON %s'
                       ' REFERENCING NEW TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION herald.capture_change(%s)', target, args);
        EXECUTE format('CREATE OR REPLACE TRIGGER herald_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION herald.capture_change(%s)', target, args);
        EXECUTE format('CREATE OR REPLACE TRIGGER herald_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION herald.capture_change(%s)', target, args);
    END IF;
END;
$$;


-- Tables already watched move to capture per statement, each in one step with
-- its triggers as `herald watch` left them (enabled). A table this role may no
-- longer put triggers on, or that stays locked by the application for 5 s,
-- keeps capturing per row, which loses nothing; `herald watch TABLE` again
-- moves it later.
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN
        SELECT wt.table_name, wt.entity, wt.id_column, wt.tenant_column, rel.oid AS target
        FROM herald.watched_tables wt
        CROSS JOIN LATERAL (
            SELECT to_regclass(format('%I.%I', split_part(wt.table_name, '.', 1),
                                      substr(wt.table_name, strpos(wt.table_name, '.') + 1))) AS oid
        ) rel
        WHERE rel.oid IS NOT NULL
          AND (SELECT count(*) FROM pg_trigger t
               WHERE t.tgrelid = rel.oid AND t.tgname IN ('herald_capture', 'herald_capture_update')
                 AND t.tgenabled = 'O' AND t.tgfoid = 'herald.capture_change()'::regprocedure) = 2
    LOOP
        BEGIN
            SET LOCAL lock_timeout = '5s';
            PERFORM herald.install_capture(w.target, w.entity, w.id_column, w.tenant_column, w.table_name);
        EXCEPTION WHEN insufficient_privilege OR lock_not_available THEN
            RAISE NOTICE 'herald: % keeps capturing per row (%): run `herald watch %` again to move it',
                w.table_name, SQLERRM, w.table_name;
        END;
    END LOOP;
END;
$$;
