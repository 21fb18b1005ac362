"""The daemon's SQL: claiming outbox events and finding work whose message was lost."""

from __future__ import annotations

from actors.liveness import NOT_LIVE

# Claim pending events, taking turns between tenants (each tenant's oldest first),
# so one tenant's burst does not hold back the others. SKIP LOCKED lets several
# daemons share the outbox.
#
# Its cost follows the batch ($1) and the tenants waiting, not the backlog: the
# tenants with pending events are found one index probe each (events_pending_tenant,
# migration 020), and each offers only its oldest $1 events, fewer when many
# tenants wait (about 2,000 ranked in all), which still fills the batch in turns.
CLAIM_PENDING = """
WITH RECURSIVE tenants AS (
    (SELECT tenant_id FROM herald.events WHERE state = 'pending' ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT e.tenant_id FROM herald.events e
            WHERE e.state = 'pending' AND e.tenant_id > t.tenant_id
            ORDER BY e.tenant_id LIMIT 1)
    FROM tenants t WHERE t.tenant_id IS NOT NULL
),
waiting AS (SELECT tenant_id FROM tenants WHERE tenant_id IS NOT NULL),
share AS (SELECT least($1::int, ceil(greatest($1::int, 2000)::numeric / greatest(count(*), 1))::int) AS n FROM waiting),
offered AS (
    SELECT o.id, o.tenant_id FROM waiting w CROSS JOIN share
    CROSS JOIN LATERAL (
        SELECT e.id, e.tenant_id FROM herald.events e
        WHERE e.state = 'pending' AND e.tenant_id = w.tenant_id
        ORDER BY e.id LIMIT share.n
    ) o
),
next AS (
    SELECT id FROM herald.events
    WHERE id IN (
        SELECT id FROM (
            SELECT id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS turn FROM offered
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

# Which of these events, sent to the match actor, it has not yet matched (by the
# primary key: CASE keeps the planner off events_dispatched, see actors/store.py CLAIM_RUNS).
STILL_DISPATCHED = """
SELECT coalesce(array_agg(id), '{}') FROM herald.events
WHERE id = ANY($1::bigint[]) AND CASE state WHEN 'dispatched' THEN true ELSE false END
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

# The next steps of a running run (every step of an earlier stage finished: sent,
# or skipped by a rate limit), not started within the lease.
STALE_PENDING_STEPS = """
WITH stale AS (
    SELECT s.id FROM herald.steps s
    JOIN herald.runs r ON r.id = s.run_id AND r.status = 'running'
    WHERE s.status = 'pending' AND s.updated_at < clock_timestamp() - make_interval(secs => $1)
      AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= clock_timestamp())
      AND NOT EXISTS (
          SELECT 1 FROM herald.steps p
          WHERE p.run_id = s.run_id AND coalesce(p.stage, p.position) < coalesce(s.stage, s.position)
            AND p.status NOT IN ('sent', 'skipped')
      )
    ORDER BY s.id LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE herald.steps s SET updated_at = clock_timestamp()
FROM stale WHERE s.id = stale.id
RETURNING s.id, s.queue
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
RETURNING s.id, s.queue
"""

# A step still *sending* that nobody is working on any more: its worker process
# is gone (no live heartbeat; $2: seconds without one), or it has been sending
# longer than any actor may run ($1: the actor's time limit cut it off). Whether
# it may be sent again is decided by its message row: none yet, or one that
# failed before reaching the provider, or one whose provider drops repeats of
# the key (resend_safe), may be; one that may have reached a provider that
# does not (sending, unknown) is parked for a person, never resent blindly.
STUCK_STEPS = """
SELECT s.id, s.queue,
       (m.id IS NULL OR m.status IN ('retrying', 'failed', 'sent', 'captured') OR m.resend_safe) AS resend
FROM herald.steps s
LEFT JOIN herald.heartbeats h ON h.instance = s.claimed_by
LEFT JOIN LATERAL (
    SELECT id, status, resend_safe FROM herald.messages WHERE step_id = s.id ORDER BY id DESC LIMIT 1
) m ON true
WHERE s.status = 'sending'
  AND (s.updated_at < clock_timestamp() - make_interval(secs => $1)
       OR (s.claimed_by IS NOT NULL AND s.updated_at < clock_timestamp() - make_interval(secs => $2)
           AND """ + NOT_LIVE.format(seconds="$2") + """))
ORDER BY s.id LIMIT $3
FOR UPDATE OF s SKIP LOCKED
"""

RESEND_STEPS = """
UPDATE herald.steps SET status = 'pending', claimed_by = NULL, updated_at = clock_timestamp()
WHERE id = ANY($1::bigint[]) AND status = 'sending'
"""

PARK_STEPS = """
WITH stuck AS (
    UPDATE herald.steps s
    SET status = 'unknown', updated_at = clock_timestamp(),
        error = 'the worker stopped while handing the message to the provider, which does not drop'
                || ' repeated messages; check with the provider before retrying'
    WHERE s.id = ANY($1::bigint[]) AND s.status = 'sending'
    RETURNING s.run_id, s.position, s.step_key, s.action
)
UPDATE herald.runs r
SET status = 'failed', completed_at = clock_timestamp(), updated_at = clock_timestamp(),
    error = 'step ' || (stuck.position + 1) || ' (' || stuck.step_key || ', ' || stuck.action
            || '): outcome unknown, parked for a person to decide'
FROM stuck WHERE r.id = stuck.run_id AND r.status = 'running'
RETURNING r.id
"""

