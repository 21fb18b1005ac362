-- Each step records the Dramatiq actor (and queue) that carries it out, so the
-- daemon's sweeper and `herald retry` can send it again by name, without the
-- worker's map of actions.
ALTER TABLE herald.steps ADD COLUMN queue text;
UPDATE herald.steps SET queue = CASE action
    WHEN 'email' THEN 'email' WHEN 'sms' THEN 'sms' WHEN 'webhook' THEN 'webhook' ELSE 'records' END;
ALTER TABLE herald.steps ALTER COLUMN queue SET NOT NULL;
