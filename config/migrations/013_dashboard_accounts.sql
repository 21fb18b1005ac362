-- The dashboard's people: users with a role and the tenants they see, their
-- sessions, login attempts (to slow password guessing), per-tenant API tokens
-- and an audit log of every write made through the dashboard or the CLI.

CREATE TABLE herald.users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    name          text,
    -- viewer: read; support: retry runs, resolve parked steps; operator: workflows,
    -- test runner; admin: users and every tenant.
    role          text NOT NULL CHECK (role IN ('viewer', 'support', 'operator', 'admin')),
    -- The tenants this user sees (an admin sees every tenant whatever this holds).
    tenants       text[] NOT NULL DEFAULT '{}',
    password_hash text NOT NULL,              -- argon2id, never the password
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_login_at timestamptz
);
CREATE UNIQUE INDEX users_email ON herald.users (email);

-- The cookie holds a random token; only its sha256 is stored, so a copy of this
-- table logs nobody in.
CREATE TABLE herald.sessions (
    token_hash   text PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES herald.users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    -- The tenant the user is looking at; NULL: every tenant they see.
    tenant_id    text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_user ON herald.sessions (user_id);
CREATE INDEX sessions_expires ON herald.sessions (expires_at);

-- Failed logins, by e-mail address and by client address: too many within a
-- window and further attempts are refused until it passes.
CREATE TABLE herald.login_failures (
    id        bigserial PRIMARY KEY,
    email     text NOT NULL,
    client    text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_email ON herald.login_failures (email, failed_at);
CREATE INDEX login_failures_client ON herald.login_failures (client, failed_at);

-- Tokens for /api/*, each for one tenant. Only the sha256 of the token is kept;
-- the token itself is shown once, when it is made.
CREATE TABLE herald.api_tokens (
    id           bigserial PRIMARY KEY,
    tenant_id    text NOT NULL,
    name         text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Who changed what, when, and why: every write through the dashboard (retries,
-- parked steps, workflows, users, logins) and the CLI's user commands.
CREATE TABLE herald.audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text NOT NULL,           -- a user's e-mail, "cli:<os user>" or "token:<name>"
    tenant_id text,                    -- the tenant the change touched, when one
    action    text NOT NULL,           -- e.g. "run.retry", "workflow.save", "user.add"
    target    text,                    -- e.g. "run 42", "workflow Job Completed"
    reason    text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON herald.audit_log (at DESC);
CREATE INDEX audit_log_tenant ON herald.audit_log (tenant_id, at DESC);
