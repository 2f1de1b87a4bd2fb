//! Webhook records (`w` webhook id).

use serde::Deserialize;
use uuid::Uuid;

use super::{SledStore, keys};
use crate::event::DeliveryState;
use crate::store::{Replaced, StoreError};
use crate::webhook::Webhook;

/// A stored record's version (records from before versions count as 0).
#[derive(Deserialize)]
struct Versioned {
    #[serde(default)]
    version: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Create or replace.
    Put,
    /// Replace, if there.
    IfThere,
    /// Replace, if there and still at the copy's version.
    IfVersion,
}

impl SledStore {
    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.scan(vec![keys::WEBHOOK])
    }

    pub fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        self.get(keys::webhook(id))
    }

    /// Creates a webhook, or replaces its record (moving its version on).
    pub fn put_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
        self.write(|db| Self::write_webhook(db, w, Write::Put).map(drop))
    }

    /// Replaces the record of a webhook that exists; false when it does not.
    pub fn save_webhook(&self, w: &Webhook) -> Result<bool, StoreError> {
        self.write(|db| Self::update_webhook(db, w))
    }

    /// Replaces the record of a webhook that exists and is still at `w.version`.
    pub fn replace_webhook(&self, w: &Webhook) -> Result<Replaced, StoreError> {
        self.write(|db| Self::write_webhook(db, w, Write::IfVersion))
    }

    /// Replaces a webhook's record in one atomic step, only if it is there: a deletion that
    /// happens meanwhile wins.
    pub(super) fn update_webhook(db: &sled::Db, w: &Webhook) -> Result<bool, StoreError> {
        Ok(Self::write_webhook(db, w, Write::IfThere)? == Replaced::Done)
    }

    /// Writes `w` with the stored version plus one (a compare-and-swap on the stored bytes,
    /// so that nothing written in between is overwritten unseen).
    fn write_webhook(db: &sled::Db, w: &Webhook, how: Write) -> Result<Replaced, StoreError> {
        let key = keys::webhook(w.id);
        loop {
            let old = db.get(&key)?;
            let mut next = w.clone();
            match &old {
                None if how != Write::Put => return Ok(Replaced::Gone),
                None => {}
                Some(bytes) => {
                    let stored = serde_json::from_slice::<Versioned>(bytes)?.version;
                    if how == Write::IfVersion && stored != w.version {
                        return Ok(Replaced::Stale);
                    }
                    next.version = stored + 1;
                }
            }
            let bytes = serde_json::to_vec(&next)?;
            if db.compare_and_swap(&key, old, Some(bytes))?.is_ok() {
                return Ok(Replaced::Done);
            }
        }
    }

    /// Deletes a webhook with all its deliveries and attempts; returns how many deliveries
    /// were still pending (dropped unsent). The record goes first, so that a crash part-way
    /// leaves deliveries of a missing webhook (never sent, swept by retention) rather than a
    /// webhook that lost part of its history.
    pub fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        self.write(|db| {
            db.remove(keys::webhook(id))?;
            // First: a delivery stored from now on lists itself anew, and its `X` entry,
            // written after the scan below, is not among those removed.
            self.seconds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            let seconds: Vec<sled::IVec> = db
                .scan_prefix(keys::key(keys::WEBHOOK_SECOND, &[id.as_bytes()]))
                .keys()
                .collect::<Result<_, _>>()?;
            let mut deliveries = Vec::new();
            self.each_delivery_by_second(db, id, |d| {
                deliveries.push(d);
                true
            })?;
            // Listed by `x` entries (stores before `X` entries): their attempts go even where
            // the delivery itself is gone.
            let mut ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
            for entry in db.scan_prefix(keys::key(keys::BY_WEBHOOK, &[id.as_bytes()])) {
                if let Some(listed) = keys::trailing_id(&entry?.0) {
                    ids.push(listed);
                    deliveries.extend(self.delivery(listed)?);
                }
            }
            // Memory lets go of them before their records go: a spill that writes one after the
            // scan above then finds it let go of, and removes what it wrote.
            self.fresh.forget_webhook(id);
            deliveries.sort_by_key(|d| d.id);
            deliveries.dedup_by_key(|d| d.id);
            ids.sort_unstable();
            ids.dedup();
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for d in deliveries {
                if d.state == DeliveryState::Pending {
                    pending += 1;
                    batch.remove(keys::queue(&d));
                }
                batch.remove(keys::by_event(&d));
                batch.remove(keys::delivery(d.id));
            }
            for delivery in ids {
                for a in db.scan_prefix(keys::key(keys::ATTEMPT, &[delivery.as_bytes()])) {
                    batch.remove(a?.0);
                }
            }
            for k in seconds {
                batch.remove(k);
            }
            for prefix in [
                keys::BY_WEBHOOK,
                keys::ATTEMPT_BY_TIME,
                keys::FAILURE_BY_TIME,
            ] {
                for entry in db.scan_prefix(keys::key(prefix, &[id.as_bytes()])) {
                    batch.remove(entry?.0);
                }
            }
            db.apply_batch(batch)?;
            // Besides a reopen, the only way a webhook's count leaves that map (a write racing
            // the deletion may bring one back, until the next clear); the others are marked
            // again at their next empty scan.
            self.empty_queues.clear();
            Ok(pending)
        })
    }
}
