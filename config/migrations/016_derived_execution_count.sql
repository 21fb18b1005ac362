-- A workflow's execution count is counted from its runs when exported
-- (daemon/workflows.py, EXPORT). Kept on the workflow's row, it was one row
-- that every matching transaction updated: they queued for its lock, and its
-- dead versions slowed every query that reads the workflow.
ALTER TABLE herald.workflows DROP COLUMN execution_count;
