-- Liveness per process: daemons and every Dramatiq worker process beat here,
-- and a step being sent names the worker process that claimed it, so stall
-- detection asks "is that worker alive?" rather than "is the step old?".

ALTER TABLE herald.heartbeats ADD COLUMN kind text NOT NULL DEFAULT 'daemon'
    CHECK (kind IN ('daemon', 'worker'));
CREATE INDEX heartbeats_live ON herald.heartbeats (kind, last_seen_at) WHERE stopped_at IS NULL;

-- The worker process (herald.heartbeats.instance) carrying out a step now.
ALTER TABLE herald.steps ADD COLUMN claimed_by text;
CREATE INDEX steps_sending ON herald.steps (claimed_by) WHERE status = 'sending';

-- A messages row may wait for a resend after an ambiguous attempt.
COMMENT ON COLUMN herald.messages.status IS
    'sending | sent | captured | retrying (transient failure, resend with the same key) | '
    'unknown (may have reached the provider; never resent blindly) | failed';

-- Whether the provider (or webhook receiver) drops repeats of the message's
-- idempotency key, as decided when the message was handed over: an attempt of
-- unknown outcome may then be sent again; otherwise it waits for a person.
ALTER TABLE herald.messages ADD COLUMN resend_safe boolean NOT NULL DEFAULT false;
CREATE INDEX messages_step ON herald.messages (step_id);

-- /health counts steps parked with an unknown outcome.
CREATE INDEX steps_unknown ON herald.steps (updated_at) WHERE status = 'unknown';
