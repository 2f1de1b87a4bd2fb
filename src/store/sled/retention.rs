//! The retention sweep: finished records older than `[store] retention` leave.

use std::ops::Bound;

use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{StoredEvent, delivery_ids};
use super::{SledStore, keys, record};
use crate::event::DeliveryState;
use crate::store::{StoreError, Swept};

impl SledStore {
    /// Removes every event created before `cutoff` none of whose deliveries is still pending,
    /// with its deliveries and their attempts. Events are scanned oldest first, so the sweep
    /// stops at the first event younger than the cutoff. The statistics index loses its
    /// entries older than the cutoff (those of a pending delivery's attempts too: statistics
    /// cover at most a day).
    pub fn sweep(&self, cutoff: OffsetDateTime) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        // Whether each webhook met is still there: a pending delivery of a deleted one is
        // never sent (one left behind by a requeue or an append racing the deletion), and
        // must not keep its event forever.
        let mut known = std::collections::HashMap::new();
        for entry in self.db()?.scan_prefix([keys::EVENT]) {
            let (k, v) = entry?;
            let stored: StoredEvent = serde_json::from_slice(&v)?;
            let event = stored.event;
            if event.created_at >= cutoff {
                break;
            }
            let mut batch = sled::Batch::default();
            let mut this = Swept {
                events: 1,
                ..Swept::default()
            };
            let mut pending = false;
            for (delivery_id, index) in delivery_ids(&*self.db()?, event.id, &stored.deliveries)? {
                if let Some(d) = self.delivery(delivery_id)? {
                    if d.state == DeliveryState::Pending {
                        let exists = match known.get(&d.webhook_id) {
                            Some(&exists) => exists,
                            None => {
                                let exists = self.journal
                                    || self.db()?.contains_key(keys::webhook(d.webhook_id))?;
                                known.insert(d.webhook_id, exists);
                                exists
                            }
                        };
                        if exists {
                            pending = true;
                            break;
                        }
                        batch.remove(keys::queue(&d));
                    }
                    batch.remove(keys::delivery(d.id));
                    batch.remove(keys::by_webhook(&d));
                    this.deliveries += 1;
                }
                for a in self
                    .db()?
                    .scan_prefix(keys::key(keys::ATTEMPT, &[delivery_id.as_bytes()]))
                {
                    batch.remove(a?.0);
                    this.attempts += 1;
                }
                if let Some(index) = index {
                    batch.remove(index);
                }
            }
            if pending {
                continue;
            }
            batch.remove(k);
            self.write(|db| Ok(db.apply_batch(batch)?))?;
            self.to_send.forget(event.id);
            if let Some(file) = stored.payload_file {
                // An orphan file would only cost disk space; the record is gone either way.
                let _ = std::fs::remove_file(self.payload_path(&file));
            }
            swept.events += this.events;
            swept.deliveries += this.deliveries;
            swept.attempts += this.attempts;
        }
        self.sweep_webhook_seconds(cutoff)?;
        let cutoff_ms = crate::event::unix_ms(cutoff);
        self.sweep_attempt_index(keys::ATTEMPT_BY_TIME, cutoff_ms)?;
        self.sweep_attempt_index(keys::FAILURE_BY_TIME, cutoff_ms)?;
        // Dedupe claims end on their own clock, not the retention's.
        self.sweep_dedupe(crate::event::unix_ms(OffsetDateTime::now_utc()))?;
        Ok(swept)
    }

    /// Removes the `X` entries of seconds before `cutoff` in which their webhook has no
    /// delivery left (one still pending keeps its second listed). Seconds of the last minute
    /// are kept whatever the retention: a delivery is stored within moments of its id.
    fn sweep_webhook_seconds(&self, cutoff: OffsetDateTime) -> Result<(), StoreError> {
        let recent = OffsetDateTime::now_utc() - time::Duration::MINUTE;
        let before = u64::try_from(cutoff.min(recent).unix_timestamp()).unwrap_or(0);
        let db = self.db()?;
        let mut from = Bound::Included(vec![keys::WEBHOOK_SECOND]);
        while let Some(entry) = db.range::<Vec<u8>, _>((from, Bound::Unbounded)).next() {
            let (k, _) = entry?;
            if k.first() != Some(&keys::WEBHOOK_SECOND) {
                break;
            }
            from = Bound::Excluded(k.to_vec());
            let webhook = k.get(1..17).and_then(|b| Uuid::from_slice(b).ok());
            let (Some(webhook), Some(second)) = (webhook, keys::second_of_key(&k)) else {
                continue;
            };
            if second >= before {
                // The webhook's later seconds are younger still: on to the next webhook.
                from = Bound::Excluded(keys::webhook_second(webhook, u64::MAX));
                continue;
            }
            // A delivery held in memory without its record is listed by this entry too: asked
            // before the records are read, as a delivery leaving memory is written first.
            let mut kept = !self.fresh.unwritten_in_second(webhook, second).is_empty();
            let (start, end) = keys::deliveries_in_second(second);
            for entry in db.range(start..end) {
                if kept {
                    break;
                }
                let (k, v) = entry?;
                // A record that does not read is kept listed, to be seen.
                let id = keys::trailing_id(&k).unwrap_or_default();
                kept = record::webhook_of(&v).map_or_else(
                    || record::decode(id, &v).map_or(true, |d| d.webhook_id == webhook),
                    |w| w == webhook,
                );
                if kept {
                    break;
                }
            }
            if !kept {
                self.write_freeing(|db| Ok(db.remove(&k).map(drop)?))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use uuid::{NoContext, Timestamp, Uuid};

    use super::super::{fresh, keys, open_for_tests, record, webhook_for_tests};
    use crate::event::{Delivery, Event, Topic};

    #[test]
    fn a_pending_delivery_of_a_deleted_webhook_does_not_keep_its_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let kept = webhook_for_tests(&store, "crm").id;
        let gone = Uuid::now_v7();
        let topic = Topic::parse("order.created").expect("topic");
        let old = || {
            let mut e = Event::new(&topic, "r", serde_json::json!({}));
            e.created_at = OffsetDateTime::now_utc() - time::Duration::days(40);
            e
        };
        let (left, waiting) = (old(), old());
        let orphan = Delivery::new(&left, gone, 0);
        let pending = Delivery::new(&waiting, kept, 0);
        store
            .append(&waiting, std::slice::from_ref(&pending))
            .expect("append");
        // Left behind by a requeue racing its webhook's deletion: its record, its queue entry
        // and its event's `v` entry.
        store.append(&left, &[]).expect("append");
        let db = store.db().expect("db");
        db.insert(
            keys::delivery(orphan.id),
            record::encode(&orphan).expect("encode"),
        )
        .expect("d");
        db.insert(keys::by_event(&orphan), &[] as &[u8]).expect("v");
        store.put_queue_entry(&db, &orphan).expect("q");

        let swept = store
            .sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert_eq!((swept.events, swept.deliveries), (1, 1));
        assert_eq!(store.event(left.id).expect("read"), None);
        assert_eq!(store.delivery(orphan.id).expect("read"), None);
        assert!(!db.contains_key(keys::queue(&orphan)).expect("read"));
        assert!(!db.contains_key(keys::by_event(&orphan)).expect("read"));
        assert_eq!(
            store.delivery(pending.id).expect("read"),
            Some(pending.clone())
        );
        assert!(
            store.event(waiting.id).expect("read").is_some(),
            "still pending"
        );
    }

    #[test]
    fn a_second_listing_a_delivery_held_without_its_record_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook_for_tests(&store, "crm").id;
        // A delivery made ten minutes ago and still held in memory without its record (the
        // keeper's spills failing, say), listed by its second's `X` entry only.
        let made_ms = fresh::now_ms() - 600_000;
        let at = |ms: u64| Uuid::new_v7(Timestamp::from_unix(NoContext, ms / 1000, 0));
        let topic = Topic::parse("order.created").expect("topic");
        let mut event = Event::new(&topic, "r", serde_json::json!({}));
        event.id = at(made_ms);
        event.created_at =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(made_ms) * 1_000_000)
                .expect("time");
        let mut d = Delivery::new(&event, w, 0);
        d.id = at(made_ms);
        store.fresh.reset(Some(0));
        store
            .fresh
            .reserve(std::slice::from_ref(&d), made_ms)
            .expect("room")
            .add(std::slice::from_ref(&d), fresh::Unwritten::Yes);
        let db = store.db().expect("db");
        let listing = keys::webhook_second(w, made_ms / 1000);
        db.insert(&listing, &[] as &[u8]).expect("X");

        store.sweep(OffsetDateTime::now_utc()).expect("sweep");
        assert!(db.contains_key(&listing).expect("read"));
        assert_eq!(store.deliveries_of(w, 10).expect("list"), vec![d.clone()]);
        // Let go of without a record (as by its webhook's deletion): nothing is left to list.
        assert!(store.fresh.remove(w, d.queue_ms, d.id));
        store.sweep(OffsetDateTime::now_utc()).expect("sweep");
        assert!(!db.contains_key(&listing).expect("read"));
    }
}
