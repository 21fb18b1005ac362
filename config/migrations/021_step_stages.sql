-- Steps that start together: a workflow step with "with_previous": true shares
-- the stage of the step before it (actors/model/workflow.py, stages). A stage's
-- steps are started together; the next stage starts once every step of this
-- one has finished. A run's steps carry their stage from when the run is
-- enriched. NULL: a step of a run enriched before this migration, which is a
-- stage of its own, its position (the queries read coalesce(stage, position)).
-- Adding a column with no default rewrites nothing, whatever the table's size.
ALTER TABLE herald.steps ADD COLUMN IF NOT EXISTS stage integer;
