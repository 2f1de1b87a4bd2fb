-- Rules' `dedupe` claims over every instance: an event whose key another instance claimed
-- within the window is dropped when it moves in from the local journal.
CREATE TABLE dedupe_keys (
    -- Hex SHA-256 of the rule's name and the key it computed.
    key text PRIMARY KEY,
    -- The event that holds the claim: moving the same event in again keeps it.
    event_id uuid NOT NULL,
    -- When the claim ends, in Unix ms.
    ends_ms bigint NOT NULL
);
CREATE INDEX dedupe_keys_ends ON dedupe_keys (ends_ms);
