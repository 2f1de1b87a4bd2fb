-- A webhook being deleted: its row in `webhooks` is gone, its deliveries and attempts are
-- removed in parts (bounded transactions, see `sql::delete_webhook`). The row stays until
-- the last part, so that a deletion cut short (a crash, a lost connection) is finished by
-- any instance later.
CREATE TABLE webhook_deletions (
    webhook_id uuid PRIMARY KEY,
    since_ms bigint NOT NULL
);
