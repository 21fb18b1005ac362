-- The daemon claims pending events taking turns between tenants (daemon/outbox.py,
-- CLAIM_PENDING). It used to rank every pending event to pick a batch: with
-- 100,000 pending (one bulk UPDATE of a watched table), each claim of 200 took
-- about 180 ms, so draining the backlog cost time that grew with its square.
-- Indexed by tenant, a claim walks the tenants that have pending events and
-- reads only each one's oldest few: its cost follows the batch and the number
-- of tenants waiting, not the backlog.
--
-- Still one index, paid for by every write of a watched table through the
-- capture trigger: it replaces events_pending (id). Built without CONCURRENTLY,
-- as migrations run in a transaction (see 017): on a large database, build it
-- by hand first (CREATE INDEX CONCURRENTLY events_pending_tenant ...) and this
-- migration finds it there.
CREATE INDEX IF NOT EXISTS events_pending_tenant ON herald.events (tenant_id, id) WHERE state = 'pending';
DROP INDEX IF EXISTS herald.events_pending;
