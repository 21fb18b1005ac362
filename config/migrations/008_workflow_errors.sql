-- A time-triggered workflow the scheduler could not evaluate (a schedule that
-- never comes, a column or table that is gone, a table it may not read) is
-- marked with the reason and skipped, so one workflow never stops or slows the
-- scheduler for every tenant. Saving (importing) the workflow again clears it.
ALTER TABLE herald.workflows ADD COLUMN schedule_error text;     -- NULL: fine
ALTER TABLE herald.workflows ADD COLUMN schedule_error_at timestamptz;
ALTER TABLE herald.workflows ADD CONSTRAINT workflows_schedule_error_when
    CHECK ((schedule_error IS NULL) = (schedule_error_at IS NULL));
