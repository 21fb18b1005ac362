-- Per-tenant settings, between Herald's defaults and each workflow's own.
CREATE TABLE herald.tenant_settings (
    tenant_id  text PRIMARY KEY,
    -- same shape as a workflow's "rate_limit": per_recipient, window, over_limit
    rate_limit jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
