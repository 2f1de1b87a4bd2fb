//! Webhook records (`w` webhook id).

use uuid::Uuid;

use super::{SledStore, keys};
use crate::event::DeliveryState;
use crate::store::StoreError;
use crate::webhook::Webhook;

impl SledStore {
    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.scan(vec![keys::WEBHOOK])
    }

    pub fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        self.get(keys::webhook(id))
    }

    pub fn put_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
        self.write(|db| {
            db.insert(keys::webhook(w.id), serde_json::to_vec(w)?)?;
            Ok(())
        })
    }

    /// Replaces the record of a webhook that exists; false when it does not.
    pub fn save_webhook(&self, w: &Webhook) -> Result<bool, StoreError> {
        self.write(|db| Self::update_webhook(db, w))
    }

    /// Replaces a webhook's record in one atomic step, only if it is there: a deletion that
    /// happens meanwhile wins.
    pub(super) fn update_webhook(db: &sled::Db, w: &Webhook) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(w)?;
        let previous = db.fetch_and_update(keys::webhook(w.id), |old| {
            old.map(|_| sled::IVec::from(bytes.as_slice()))
        })?;
        Ok(previous.is_some())
    }

    /// Deletes a webhook with all its deliveries and attempts; returns how many deliveries
    /// were still pending (dropped unsent). The record goes first, so that a crash part-way
    /// leaves deliveries of a missing webhook (never sent, swept by retention) rather than a
    /// webhook that lost part of its history.
    pub fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        self.write(|db| {
            db.remove(keys::webhook(id))?;
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for entry in db.scan_prefix(keys::key(keys::BY_WEBHOOK, &[id.as_bytes()])) {
                let (k, _) = entry?;
                batch.remove(k.clone());
                let Some(delivery_id) = keys::trailing_id(&k) else {
                    continue;
                };
                if let Some(d) = self.delivery(delivery_id)? {
                    if d.state == DeliveryState::Pending {
                        pending += 1;
                        batch.remove(keys::queue(&d));
                    }
                    batch.remove(keys::by_event(&d));
                    batch.remove(keys::delivery(d.id));
                }
                for a in db.scan_prefix(keys::key(keys::ATTEMPT, &[delivery_id.as_bytes()])) {
                    batch.remove(a?.0);
                }
            }
            for entry in db.scan_prefix(keys::key(keys::ATTEMPT_BY_TIME, &[id.as_bytes()])) {
                batch.remove(entry?.0);
            }
            db.apply_batch(batch)?;
            Ok(pending)
        })
    }
}
