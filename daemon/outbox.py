"""The daemon's SQL: claiming outbox events and finding work whose message was lost."""

from __future__ import annotations

# Claim pending events, taking turns between tenants (each tenant's oldest first),
# so one tenant's burst does not hold back the others. SKIP LOCKED lets several
# daemons share the outbox.
CLAIM_PENDING = """
WITH next AS (
    SELECT id FROM herald.events
    WHERE id IN (
        SELECT id FROM (
            SELECT id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS turn
            FROM herald.events WHERE state = 'pending'
        ) ranked
        ORDER BY turn, id
        LIMIT $1
    ) AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
UPDATE herald.events e
SET state = 'dispatched', dispatched_at = clock_timestamp(), dispatch_count = e.dispatch_count + 1
FROM next WHERE e.id = next.id
RETURNING e.id
"""

# The message could not be sent: leave the events for the next attempt.
UNCLAIM = "UPDATE herald.events SET state = 'pending' WHERE id = ANY($1::bigint[]) AND state = 'dispatched'"

# Dispatched, but no worker matched them within the lease: send again.
STALE_DISPATCHED = """
WITH stale AS (
    SELECT id FROM herald.events
    WHERE state = 'dispatched' AND dispatched_at < clock_timestamp() - make_interval(secs => $1)
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE herald.events e
SET dispatched_at = clock_timestamp(), dispatch_count = e.dispatch_count + 1
FROM stale WHERE e.id = stale.id
RETURNING e.id
"""

# Runs created but never enriched.
STALE_PENDING_RUNS = """
WITH stale AS (
    SELECT id FROM herald.runs
    WHERE status = 'pending' AND updated_at < clock_timestamp() - make_interval(secs => $1)
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE herald.runs r SET updated_at = clock_timestamp()
FROM stale WHERE r.id = stale.id
RETURNING r.id
"""

# The next step of a running run, not started within the lease.
STALE_PENDING_STEPS = """
WITH stale AS (
    SELECT s.id FROM herald.steps s
    JOIN herald.runs r ON r.id = s.run_id AND r.status = 'running'
    WHERE s.status = 'pending' AND s.updated_at < clock_timestamp() - make_interval(secs => $1)
      AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= clock_timestamp())
      AND NOT EXISTS (
          SELECT 1 FROM herald.steps p
          WHERE p.run_id = s.run_id AND p.position < s.position AND p.status <> 'sent'
      )
    ORDER BY s.id LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE herald.steps s SET updated_at = clock_timestamp()
FROM stale WHERE s.id = stale.id
RETURNING s.id, s.action
"""

# Retries and delays that fell due: their delayed Dramatiq message normally
# arrives on time; this is the backstop for one that was lost (or too far out
# to queue), a second after it was due.
DUE_STEPS = """
WITH due AS (
    SELECT s.id FROM herald.steps s
    JOIN herald.runs r ON r.id = s.run_id AND r.status = 'running'
    WHERE (s.status = 'waiting' AND s.wake_at < clock_timestamp() - interval '1 second')
       OR (s.status = 'pending' AND s.next_attempt_at < clock_timestamp() - interval '1 second'
           AND s.updated_at < clock_timestamp() - interval '1 second')
    ORDER BY s.id LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE herald.steps s SET updated_at = clock_timestamp()
FROM due WHERE s.id = due.id
RETURNING s.id, s.action
"""

# A step still "sending" after its lease: its worker died mid-call. If its
# provider deduplicates by idempotency key ($2: those actions) it is sent again
# with the same key; otherwise whether the provider got it is unknown, so it is
# parked for a person, never resent blindly.
RESEND_STUCK_STEPS = """
UPDATE herald.steps s
SET status = 'pending', updated_at = clock_timestamp()
WHERE s.status = 'sending' AND s.updated_at < clock_timestamp() - make_interval(secs => $1)
  AND s.action = ANY($2::text[])
RETURNING s.id, s.action
"""

PARK_UNKNOWN_STEPS = """
WITH stuck AS (
    UPDATE herald.steps s
    SET status = 'unknown', updated_at = clock_timestamp(),
        error = 'the worker stopped while handing the message to the provider;'
                || ' check with the provider before retrying'
    WHERE s.status = 'sending' AND s.updated_at < clock_timestamp() - make_interval(secs => $1)
      AND NOT s.action = ANY($2::text[])
    RETURNING s.run_id, s.position, s.step_key, s.action
)
UPDATE herald.runs r
SET status = 'failed', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    error = 'step ' || (stuck.position + 1) || ' (' || stuck.step_key || ', ' || stuck.action
            || '): outcome unknown, parked for a person to decide'
FROM stuck WHERE r.id = stuck.run_id AND r.status = 'running'
RETURNING r.id
"""

HEARTBEAT = """
INSERT INTO herald.heartbeats (instance, hostname, pid, started_at, last_seen_at)
VALUES ($1, $2, $3, $4, clock_timestamp())
ON CONFLICT (instance) DO UPDATE SET last_seen_at = clock_timestamp(), stopped_at = NULL
"""

HEARTBEAT_STOPPED = "UPDATE herald.heartbeats SET stopped_at = clock_timestamp() WHERE instance = $1"
