-- The console's attempt statistics (issue 15): what they read of an attempt, as columns, and
-- an index by webhook and time that holds them, so that a day of a busy webhook's attempts is
-- one index range read without a record (and its bodies) read from the table.
--   created_ms  when the attempt ended (its outcome was recorded), Unix ms
--   success     whether it delivered
--   duration_ms the receiver's response time
--   lag_ms      from the event's creation to created_ms
-- Attempts recorded before this migration get them from their records here.
ALTER TABLE attempts
    ADD COLUMN created_ms bigint,
    ADD COLUMN success boolean,
    ADD COLUMN duration_ms bigint,
    ADD COLUMN lag_ms bigint;
UPDATE attempts a SET
    created_ms = (extract(epoch FROM (a.record->>'created_at')::timestamptz) * 1000)::bigint,
    success = (a.record->>'success')::boolean,
    duration_ms = (a.record->>'duration_ms')::bigint,
    lag_ms = greatest(0, (extract(epoch FROM (a.record->>'created_at')::timestamptz) * 1000)::bigint
                         - d.created_ms)
FROM deliveries d WHERE d.id = a.delivery_id;
CREATE INDEX attempts_by_time ON attempts (webhook_id, created_ms)
    INCLUDE (success, duration_ms, lag_ms);
-- A webhook's failed attempts alone, newest first in the order `last_failure` reads them: a
-- healthy webhook's last error is found without walking a day of its successes.
CREATE INDEX attempts_failures ON attempts (webhook_id, created_ms, delivery_id, number)
    WHERE NOT success;
