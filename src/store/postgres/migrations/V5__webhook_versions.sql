-- A webhook's record is replaced whole from a copy an instance read earlier (its running
-- copy, refreshed every 200 ms). `version` moves on with every write of the record, and a
-- replacement names the version its copy was read at: one made from a copy that another
-- instance's change has overtaken writes nothing (the change is made again on fresh data).
ALTER TABLE webhooks ADD COLUMN version bigint NOT NULL DEFAULT 0;
