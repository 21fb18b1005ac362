-- Matching an event looks for delayed runs on the same record that it should
-- cancel (a delay step's "cancel_on", actors/matching.py). The lookup used to
-- start from the events' tenants and read every run each tenant ever had
-- (runs_tenant_id), so matching slowed as a tenant's history grew: about
-- 130 ms a batch at 14,000 runs, whether or not anything was waiting.
--
-- Only waiting steps with a cancel_on can be cancelled. Indexed by tenant,
-- the lookup reads those of the events' tenants and nothing else: nothing
-- when no run waits to be cancelled, and never another tenant's waits.
-- Small (only such steps are in it), so built without CONCURRENTLY.
CREATE INDEX IF NOT EXISTS steps_cancellable ON herald.steps (tenant_id)
    WHERE status = 'waiting' AND config ? 'cancel_on';
