-- Per-key ordering: a delivery's `ordering_key` (read from its event's payload at intake,
-- kept in its record too). The heads of a webhook's keys are the first pending delivery of
-- each key in arrival order (`seq`); a delivery without a key is a head on its own.
ALTER TABLE deliveries ADD COLUMN ordering_key text;
CREATE INDEX deliveries_key_heads ON deliveries (webhook_id, ordering_key, seq) WHERE pending;
