//! The retention sweep: finished records older than `[store] retention` leave.

use time::OffsetDateTime;

use super::events::{StoredEvent, delivery_ids};
use super::{SledStore, keys};
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
                        pending = true;
                        break;
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
            if let Some(file) = stored.payload_file {
                // An orphan file would only cost disk space; the record is gone either way.
                let _ = std::fs::remove_file(self.payload_path(&file));
            }
            swept.events += this.events;
            swept.deliveries += this.deliveries;
            swept.attempts += this.attempts;
        }
        let cutoff_ms = crate::event::unix_ms(cutoff);
        self.sweep_attempt_index(keys::ATTEMPT_BY_TIME, cutoff_ms)?;
        self.sweep_attempt_index(keys::FAILURE_BY_TIME, cutoff_ms)?;
        // Dedupe claims end on their own clock, not the retention's.
        self.sweep_dedupe(crate::event::unix_ms(OffsetDateTime::now_utc()))?;
        Ok(swept)
    }
}
