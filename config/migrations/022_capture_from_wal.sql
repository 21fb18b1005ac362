-- Capture from the write-ahead log, a table's second capture mode (`herald
-- watch TABLE --capture wal`, daemon/capture.py and daemon/wal_capture.py).
--
-- A table captured this way has no trigger of Herald's: nothing of Herald's
-- runs in the application's transaction. Its changes reach Herald through
-- logical decoding: the table is in the publication herald_capture with
-- REPLICA IDENTITY FULL (so an update's and a delete's old row is whole), and
-- the daemon streams the database's replication slot, writes each change to
-- herald.events as the capture trigger would have written it, and confirms it
-- to the server. A bulk UPDATE costs about what it costs unwatched.
--
-- It needs what least-privileged roles often do not have: wal_level = logical
-- and a role with REPLICATION. `herald watch` checks and says what is missing.
ALTER TABLE herald.watched_tables ADD COLUMN IF NOT EXISTS capture text NOT NULL DEFAULT 'trigger'
    CHECK (capture IN ('trigger', 'wal'));

-- The database's replication slot, while a table is captured from the WAL.
-- read_lsn: the end of the last transaction whose changes are in herald.events,
-- written in the same transaction as its events. Confirming it to the server
-- happens after that commits; a change sent twice (the daemon stopped in
-- between) is recognised by its place before read_lsn and skipped, so each
-- change is one event, once.
CREATE TABLE IF NOT EXISTS herald.wal_capture (
    slot_name   text PRIMARY KEY,
    publication text NOT NULL,
    read_lsn    pg_lsn,
    created_at  timestamptz NOT NULL DEFAULT now()
);
