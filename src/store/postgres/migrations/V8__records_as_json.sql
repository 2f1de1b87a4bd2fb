-- Records are written and read back whole; the only field a statement reads out of one is a
-- delivery's `due_ms` (claims, the next due time). As `jsonb` every write parsed the record
-- into PostgreSQL's binary form and every read printed it back to text (an attempt holds the
-- body it sent as an escaped string: most of its bytes are escapes). As `json` the text
-- hooktap sent is checked and kept as it is, and read back as it is; `->>` reads a field of
-- it by scanning the text, cheap for a delivery's few hundred bytes. Webhooks stay `jsonb`
-- (few, small, and changed with jsonb operators). PostgreSQL casts `jsonb` to `json` on
-- assignment, so an instance of an older hooktap still writes these columns. (Rewrites the
-- three tables once.)
-- On a large store the rewrite outlasts the session's 60 s statement timeout: not here (LOCAL:
-- this migration's own transaction).
SET LOCAL statement_timeout = 0;
ALTER TABLE events ALTER COLUMN record TYPE json USING record::json;
ALTER TABLE deliveries ALTER COLUMN record TYPE json USING record::json;
ALTER TABLE attempts ALTER COLUMN record TYPE json USING record::json;
