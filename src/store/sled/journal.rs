//! The sled store as the local journal of a shared store (see [`crate::store::postgres`]).
//!
//! The request path appends to sled exactly as it does when sled is the store; a shipper reads
//! what was appended, oldest first, moves it to the shared store and then forgets it here.

use time::OffsetDateTime;

use super::events::{StoredEvent, delivery_ids, load_stored_in};
use super::{SledStore, keys};
use uuid::Uuid;

use crate::event::{DedupeKey, Delivery, Event};
use crate::store::StoreError;

/// One journalled event with the deliveries it was stored with.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub event: Event,
    pub deliveries: Vec<Delivery>,
    /// The rule's dedupe claim for this event, to be claimed again across instances when the
    /// event moves into the shared store: the key and when the claim ends (Unix ms).
    pub dedupe: Option<(DedupeKey, u64)>,
}

/// A dedupe mark's value: the key's digest, then the claim's end (big-endian u64).
fn parse_mark(v: &[u8]) -> Option<(DedupeKey, u64)> {
    let digest: [u8; 32] = v.get(..32)?.try_into().ok()?;
    let ends: [u8; 8] = v.get(32..40)?.try_into().ok()?;
    Some((DedupeKey(digest), u64::from_be_bytes(ends)))
}

impl SledStore {
    /// Notes that `event` carries the dedupe claim `key` until `ends_ms`, for the shipper.
    pub fn journal_mark_dedupe(
        &self,
        event: Uuid,
        key: &DedupeKey,
        ends_ms: u64,
    ) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&key.0);
        v.extend_from_slice(&ends_ms.to_be_bytes());
        self.write(|db| Ok(db.insert(keys::dedupe_mark(event), v).map(drop)?))
    }

    /// Forgets the mark of an event that was not stored.
    pub fn journal_unmark_dedupe(&self, event: Uuid) -> Result<(), StoreError> {
        self.write_freeing(|db| Ok(db.remove(keys::dedupe_mark(event)).map(drop)?))
    }

    /// Up to `limit` events, oldest first, each with its deliveries.
    pub fn journal_batch(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let db = self.db()?;
        let mut out = Vec::new();
        for entry in db.scan_prefix([keys::EVENT]).take(limit) {
            let (k, v) = entry?;
            let stored = match load_stored_in(&self.path, &v) {
                Ok(stored) => stored,
                Err(e) => {
                    // It can never be moved: set it aside rather than stop the journal.
                    tracing::error!(key = ?keys::trailing_id(&k), error = %e,
                        "a journalled event cannot be read; it is dropped from the journal");
                    self.write_freeing(|db| Ok(db.remove(&k)?))?;
                    continue;
                }
            };
            let event = stored.event;
            let mut deliveries = Vec::new();
            for (id, _) in delivery_ids(&db, event.id, &stored.deliveries)? {
                deliveries.extend(self.delivery(id)?);
            }
            let dedupe = db
                .get(keys::dedupe_mark(event.id))?
                .and_then(|v| parse_mark(&v));
            out.push(Entry {
                event,
                deliveries,
                dedupe,
            });
        }
        Ok(out)
    }

    /// Forgets journalled events once the shared store has them: records, indexes, queue
    /// entries and payload files. One batch, so a crash forgets all of them or none (and
    /// those are moved again: the shared store ignores what it has).
    pub fn journal_forget(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut files = Vec::new();
        let db = self.db()?;
        for e in entries {
            let key = keys::event(e.event.id);
            // An event whose record lists its deliveries has no `v` entries to remove.
            let mut indexed = true;
            if let Some(v) = db.get(&key)? {
                let stored: StoredEvent = serde_json::from_slice(&v)?;
                files.extend(stored.payload_file);
                indexed = stored.deliveries.is_empty();
            }
            batch.remove(key);
            batch.remove(keys::dedupe_mark(e.event.id));
            for d in &e.deliveries {
                batch.remove(keys::delivery(d.id));
                batch.remove(keys::by_webhook(d));
                if indexed {
                    batch.remove(keys::by_event(d));
                }
                batch.remove(keys::queue(d));
            }
        }
        // Removing only frees space: allowed on a nearly full disk. Flushed before the payload
        // files go, so that a crash cannot bring back a record whose file is gone.
        self.write_freeing(|db| {
            db.apply_batch(batch)?;
            db.flush()?;
            Ok(())
        })?;
        for file in files {
            // An orphan file would only cost disk space; the record is gone either way.
            let _ = std::fs::remove_file(self.payload_path(&file));
        }
        Ok(())
    }

    /// How many events the journal holds, and when the oldest was created (a scan: at start).
    pub fn journal_backlog(&self) -> Result<(u64, Option<OffsetDateTime>), StoreError> {
        let count = self.db()?.scan_prefix([keys::EVENT]).keys().count();
        Ok((
            u64::try_from(count).unwrap_or(u64::MAX),
            self.journal_oldest()?,
        ))
    }

    /// When the journal's oldest event was created (from its UUIDv7 id: one key read).
    pub fn journal_oldest(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let Some(first) = self.db()?.scan_prefix([keys::EVENT]).keys().next() else {
            return Ok(None);
        };
        Ok(keys::trailing_id(&first?)
            .and_then(|id| id.get_timestamp())
            .and_then(|ts| {
                let (secs, nanos) = ts.to_unix();
                OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?)
                    .ok()
                    .map(|t| t + time::Duration::nanoseconds(i64::from(nanos)))
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Topic;

    #[test]
    fn journalled_events_come_back_oldest_first_and_are_forgotten_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::super::open_for_tests(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let mut entries = Vec::new();
        for i in 0..3 {
            let event = Event::new(
                &topic,
                "r",
                serde_json::json!({"i": i, "pad": "x".repeat(5000)}),
            );
            let deliveries = vec![Delivery::new(&event, uuid::Uuid::now_v7(), 0)];
            store.append(&event, &deliveries).expect("append");
            entries.push(Entry {
                event,
                deliveries,
                dedupe: None,
            });
        }
        assert_eq!(store.journal_backlog().expect("backlog").0, 3);
        let batch = store.journal_batch(2).expect("batch");
        assert_eq!(batch, entries[..2]);
        store.journal_forget(&batch).expect("forget");
        assert_eq!(store.journal_batch(10).expect("batch"), entries[2..]);
        assert_eq!(
            store.delivery(entries[0].deliveries[0].id).expect("read"),
            None
        );
        let payloads = std::fs::read_dir(dir.path().join("data").join("payloads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(payloads, 1, "the forgotten events' payload files are gone");
    }
}
