-- hooktap's shared store. Records are kept whole as JSON (`record`), as the sled store keeps
-- them; the columns beside them are what queries filter, order and count on.

-- Milliseconds since the Unix epoch on the database's clock: leases are compared on one
-- clock, whatever the instances' clocks say.
CREATE FUNCTION hooktap_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    record jsonb NOT NULL,
    -- Counted here, as increments, by whichever instance records an attempt.
    delivered bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    retries bigint NOT NULL DEFAULT 0,
    consecutive_failures bigint NOT NULL DEFAULT 0,
    last_delivered_ms bigint,
    last_failure_ms bigint
);

CREATE TABLE events (
    id uuid PRIMARY KEY,
    created_ms bigint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX events_created ON events (created_ms, id);

CREATE TABLE deliveries (
    id uuid PRIMARY KEY,
    event_id uuid NOT NULL,
    webhook_id uuid NOT NULL,
    created_ms bigint NOT NULL,
    -- The order in which deliveries reached the shared store: the order of an ordered
    -- webhook's queue over all instances (each instance moves its events in in their order).
    seq bigserial NOT NULL,
    pending boolean NOT NULL,
    queue_ms bigint NOT NULL,
    -- The instance sending it (or about to), until `lease_until` (hooktap_now_ms()).
    lease_owner uuid,
    lease_until bigint,
    record jsonb NOT NULL
);
CREATE INDEX deliveries_queue ON deliveries (webhook_id, queue_ms, id) WHERE pending;
CREATE INDEX deliveries_arrival ON deliveries (webhook_id, seq) WHERE pending;
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);

CREATE TABLE attempts (
    delivery_id uuid NOT NULL,
    number integer NOT NULL,
    webhook_id uuid NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (delivery_id, number)
);
CREATE INDEX attempts_by_webhook ON attempts (webhook_id);

-- Small shared facts, such as when the retention sweep last ran.
CREATE TABLE hooktap_state (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
