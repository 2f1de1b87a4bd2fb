-- `attempts_by_time` (V4) leads with `webhook_id`, so it serves every lookup of a webhook's
-- attempts that `attempts_by_webhook` served (deleting a webhook's attempts among them).
-- Recording an attempt then updates three indexes instead of four.
DROP INDEX IF EXISTS attempts_by_webhook;
