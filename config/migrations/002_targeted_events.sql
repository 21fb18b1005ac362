-- Events that fire one workflow only: time triggers (a scheduled occurrence
-- for a given workflow) and manual triggers aimed at a workflow.
ALTER TABLE herald.events ADD COLUMN workflow_id uuid REFERENCES herald.workflows (id);
ALTER TABLE herald.events DROP CONSTRAINT events_operation_check;
ALTER TABLE herald.events ADD CONSTRAINT events_operation_check
    CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'MANUAL', 'SCHEDULED'));
