-- Herald's own schema, apart from the business tables, is made by `herald migrate`
-- itself (config/database.py), so a least-privilege role whose schema a DBA made
-- can apply this file. No migration creates schemas or extensions.

-- Tables whose changes Herald captures (see `herald watch`).
CREATE TABLE herald.watched_tables (
    table_name    text PRIMARY KEY,          -- schema-qualified, e.g. public.jobs
    entity        text NOT NULL UNIQUE,      -- event entity, e.g. job
    id_column     text NOT NULL DEFAULT 'id',
    tenant_column text,
    -- name -> {"table": "public.clients", "column": "client_id"}
    relations     jsonb NOT NULL DEFAULT '{}'::jsonb,
    installed_at  timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per business change, written in the same transaction.
CREATE TABLE herald.events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL,             -- 'default' for tables without a tenant column
    entity        text NOT NULL,
    table_name    text NOT NULL,
    row_id        text,
    operation     text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'MANUAL')),
    type          text NOT NULL,             -- job.created, job.updated, job.deleted
    old           jsonb,
    new           jsonb,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- pending -> dispatched (a match message was sent) -> matched
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'dispatched', 'matched')),
    dispatched_at timestamptz,
    dispatch_count integer NOT NULL DEFAULT 0,
    matched_at    timestamptz,
    -- why each workflow of the tenant did or did not match
    match_report  jsonb
);
CREATE INDEX events_pending ON herald.events (id) WHERE state = 'pending';
CREATE INDEX events_dispatched ON herald.events (dispatched_at) WHERE state = 'dispatched';
CREATE INDEX events_tenant_created ON herald.events (tenant_id, created_at DESC);

CREATE TABLE herald.workflows (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       text NOT NULL,
    source_id       text,                    -- the id in the imported document
    name            text NOT NULL,
    trigger_type    text NOT NULL,
    definition      jsonb NOT NULL,          -- the document as written
    is_active       boolean NOT NULL DEFAULT true,
    execution_count bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, source_id)
);
CREATE INDEX workflows_tenant_active ON herald.workflows (tenant_id) WHERE is_active;

CREATE TABLE herald.runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         text NOT NULL,
    workflow_id       uuid NOT NULL REFERENCES herald.workflows (id),
    event_id          bigint NOT NULL REFERENCES herald.events (id),
    -- pending -> running -> completed | failed
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    match_reason      jsonb,
    context           jsonb,                 -- snapshot used by every step
    error             text,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    completed_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_time_ms integer,
    UNIQUE (workflow_id, event_id)
);
CREATE INDEX runs_tenant_created ON herald.runs (tenant_id, created_at DESC);
CREATE INDEX runs_unfinished ON herald.runs (updated_at) WHERE status IN ('pending', 'running');

CREATE TABLE herald.steps (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            bigint NOT NULL REFERENCES herald.runs (id),
    tenant_id         text NOT NULL,
    position          integer NOT NULL,
    step_key          text NOT NULL,
    action            text NOT NULL,
    config            jsonb NOT NULL,
    -- pending -> sending -> sent | failed; sending past its lease -> unknown
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'unknown')),
    attempts          integer NOT NULL DEFAULT 0,
    rendered          jsonb,
    provider_response jsonb,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    completed_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    execution_time_ms integer,
    UNIQUE (run_id, position)
);
CREATE INDEX steps_unfinished ON herald.steps (updated_at) WHERE status IN ('pending', 'sending');

-- Every outbound message, keyed so that it is sent at most once.
CREATE TABLE herald.messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           text NOT NULL,
    run_id              bigint NOT NULL REFERENCES herald.runs (id),
    step_id             bigint NOT NULL REFERENCES herald.steps (id),
    channel             text NOT NULL,       -- email, sms
    provider            text NOT NULL,       -- capture, smtp, mailgun, telnyx
    idempotency_key     text NOT NULL UNIQUE,
    recipient           text NOT NULL,
    subject             text,
    body                text NOT NULL,
    status              text NOT NULL,       -- captured, sent
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX messages_tenant_created ON herald.messages (tenant_id, created_at DESC);

-- Daemons record that they are alive, for health checks.
CREATE TABLE herald.heartbeats (
    instance     text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    stopped_at   timestamptz
);

-- The trigger function installed on every watched table.
-- Arguments: entity, id column, tenant column ('' when the table has none).
CREATE FUNCTION herald.capture_change() RETURNS trigger
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
    INSERT INTO herald.events (tenant_id, entity, table_name, row_id, operation, type, old, new)
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
        new_row
    )
    RETURNING id INTO event_id;
    -- Only the id travels; the daemon reads the row. NOTIFY is delivered at commit.
    PERFORM pg_notify('herald_events', event_id::text);
    RETURN NULL;
END;
$$;
