-- Workflow lifecycle: every saved definition is kept as a numbered version,
-- each run records the version it ran, a retry the version it rendered with,
-- and a deleted workflow is hidden, never removed (its runs stay readable).

-- The current version (the definition in herald.workflows.definition is its copy).
ALTER TABLE herald.workflows ADD COLUMN version integer NOT NULL DEFAULT 1;
-- Deleted (`herald workflows delete`): inactive, out of lists and exports; importing
-- its document id again brings it back.
ALTER TABLE herald.workflows ADD COLUMN deleted_at timestamptz;
ALTER TABLE herald.workflows ADD CONSTRAINT workflows_deleted_inactive
    CHECK (deleted_at IS NULL OR NOT is_active);
CREATE INDEX workflows_tenant_name ON herald.workflows (tenant_id, name) WHERE deleted_at IS NULL;

CREATE TABLE herald.workflow_versions (
    workflow_id uuid NOT NULL REFERENCES herald.workflows (id),
    version     integer NOT NULL CHECK (version >= 1),
    definition  jsonb NOT NULL,              -- the document as written
    saved_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    saved_by    text,                        -- who saved it, when known
    PRIMARY KEY (workflow_id, version)
);

-- What exists now is version 1 of each workflow.
INSERT INTO herald.workflow_versions (workflow_id, version, definition, saved_at)
SELECT id, 1, definition, updated_at FROM herald.workflows;

-- The version each run ran (NULL: the run predates versions).
ALTER TABLE herald.runs ADD COLUMN workflow_version integer;
-- The version whose step configuration a retry sent again (NULL: unknown, as the run ran).
ALTER TABLE herald.retries ADD COLUMN workflow_version integer;

-- Versions are numbered by the database, so every way a definition changes
-- (`herald workflows import`, a direct UPDATE) makes exactly one new version;
-- saving the same definition again makes none. Who saved it is read from the
-- transaction's herald.saved_by setting, when the saver set one.
CREATE FUNCTION herald.number_workflow_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
    ELSIF NEW.definition IS DISTINCT FROM OLD.definition THEN
        NEW.version := OLD.version + 1;
    ELSE
        NEW.version := OLD.version;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER workflows_number_version BEFORE INSERT OR UPDATE ON herald.workflows
    FOR EACH ROW EXECUTE FUNCTION herald.number_workflow_version();

CREATE FUNCTION herald.keep_workflow_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.version <> OLD.version THEN
        INSERT INTO herald.workflow_versions (workflow_id, version, definition, saved_by)
        VALUES (NEW.id, NEW.version, NEW.definition,
                NULLIF(current_setting('herald.saved_by', true), ''));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER workflows_keep_version AFTER INSERT OR UPDATE ON herald.workflows
    FOR EACH ROW EXECUTE FUNCTION herald.keep_workflow_version();
