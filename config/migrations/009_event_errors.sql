-- An event whose matching failed for a reason of its own (not a lost database
-- or broker) is marked failed, with the error in its match_report, so that it
-- is neither retried forever nor holding back the other events of its batch.
ALTER TABLE herald.events DROP CONSTRAINT events_state_check;
ALTER TABLE herald.events ADD CONSTRAINT events_state_check
    CHECK (state IN ('pending', 'dispatched', 'matched', 'failed'));
CREATE INDEX events_failed ON herald.events (created_at) WHERE state = 'failed';

-- Lists (the dashboard's runs page, /api/runs) send at most max_chars of a value:
-- a 10 MB rendered message is cut to its start, with its full length noted.
-- max_chars NULL: the value whole.
CREATE FUNCTION herald.clip(value text, max_chars integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN max_chars IS NULL OR length(value) <= max_chars THEN value
        ELSE left(value, max_chars) || '… [truncated: '
             || to_char(length(value), 'FM999,999,999,999') || ' characters in all]'
    END
$$;

-- The same for a JSON value: each string in an object or array (one level
-- deep) is clipped; any other member longer than max_chars as JSON text
-- becomes the clipped text.
CREATE FUNCTION herald.clip(value jsonb, max_chars integer) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN value IS NULL OR max_chars IS NULL THEN value
        WHEN jsonb_typeof(value) = 'string' THEN to_jsonb(herald.clip(value #>> '{}', max_chars))
        WHEN jsonb_typeof(value) = 'object' THEN (
            SELECT coalesce(jsonb_object_agg(k, CASE
                       WHEN jsonb_typeof(v) = 'string' THEN to_jsonb(herald.clip(v #>> '{}', max_chars))
                       WHEN length(v::text) > max_chars THEN to_jsonb(herald.clip(v::text, max_chars))
                       ELSE v END), '{}'::jsonb)
            FROM jsonb_each(value) AS e(k, v))
        WHEN length(value::text) > max_chars THEN to_jsonb(herald.clip(value::text, max_chars))
        ELSE value
    END
$$;
