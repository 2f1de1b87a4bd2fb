-- Leasing a delivery changes only `lease_owner` and `lease_until`, which no index holds: when
-- its page has room, PostgreSQL writes the new row version beside the old one (a HOT update)
-- and adds nothing to the table's six indexes. Deliveries are moved in in batches that fill
-- their pages; keeping a part of each new page free lets their leases be taken in place.
-- (Recording an attempt changes `pending` and `queue_ms`, which are indexed: no help there.)
ALTER TABLE deliveries SET (fillfactor = 70);
