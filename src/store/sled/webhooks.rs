//! Webhook records (`w` webhook id).

use std::collections::HashSet;

use serde::Deserialize;
use uuid::Uuid;

use super::{SledStore, keys, record};
use crate::event::{Delivery, DeliveryState};
use crate::store::{Replaced, StoreError};
use crate::webhook::Webhook;

/// How many deliveries (or index entries) one part of a webhook's deletion removes at most.
const DELETE_PART: usize = 1_000;

/// How long one round of the keeper goes on with deletions left to it (parts of ~20 ms; the
/// last part may end past it): the keeper rests 200 ms between rounds, so a deletion takes
/// about a third of its time rather than a tenth, and the round's other work waits little.
pub(super) const DELETION_BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// were still pending (dropped unsent). See [`SledStore::delete_webhook_start`] and
    /// [`SledStore::delete_webhook_part`]; the async store runs the parts with a yield between
    /// them.
    pub fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        let mut deletion = self.delete_webhook_start(id)?;
        while deletion.part()? {}
        Ok(deletion.pending())
    }

    /// The first step of a deletion: the webhook's record goes, with a `D` mark that stays
    /// until its history is gone, so that a deletion left to the keeper (by
    /// `Store::delete_webhook_in_background`, a crash, a caller that went away) is finished
    /// by it ([`SledStore::finish_deletions`]) rather than leaving deliveries that nothing
    /// removes; then memory lets go of its deliveries.
    pub(super) fn delete_webhook_start(&self, id: Uuid) -> Result<Deletion<'_>, StoreError> {
        // Before the mark can be seen: the keeper leaves this deletion to its callers (two
        // may race: an admin request and a reload of the file, say).
        *self
            .deleting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_default() += 1;
        let mut deletion = Deletion {
            store: self,
            webhook: id,
            unwritten: HashSet::new(),
            pending: 0,
        };
        self.write(|db| {
            let mut batch = sled::Batch::default();
            batch.remove(keys::webhook(id));
            batch.insert(keys::deleting(id), &[] as &[u8]);
            db.apply_batch(batch)?;
            // A delivery stored from now on lists itself anew (an `X` entry that the parts
            // below find and remove).
            self.seconds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            Ok(())
        })?;
        // After the record: a keeper spill that wrote a delivery's record before this finds
        // it let go of, sees the webhook gone and removes what it wrote; one that let go of
        // it before this left its record to the parts below.
        deletion.unwritten = self.fresh.forget_webhook(id);
        Ok(deletion)
    }

    /// Parts of deletions left to the keeper (whose caller went away, that a crash cut short,
    /// or of webhooks that left the config file), for as long as `budget`, at least one part:
    /// the keeper calls this a few times a second.
    pub(super) fn finish_deletions(&self, budget: std::time::Duration) -> Result<(), StoreError> {
        let start = std::time::Instant::now();
        // Each turn is one part; the loop's condition does the work.
        while self.finish_deletion()? && start.elapsed() < budget {}
        Ok(())
    }

    /// One part of the first deletion in progress that no caller runs; false when there is
    /// none.
    fn finish_deletion(&self) -> Result<bool, StoreError> {
        let db = self.db()?;
        for mark in db.scan_prefix([keys::DELETING]).keys() {
            let Some(webhook) = keys::trailing_id(&mark?) else {
                continue;
            };
            let running = self
                .deleting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(&webhook);
            if running {
                continue;
            }
            // Anything of it memory took since goes too: deliveries of events matched between
            // the removal of its record and its caller's letting go of it.
            self.fresh.forget_webhook(webhook);
            if self
                .delete_webhook_part(webhook, &HashSet::new())?
                .is_none()
            {
                tracing::info!(%webhook, "the rest of a deleted webhook's history is removed");
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes the next part of a deleted webhook's deliveries (at most [`DELETE_PART`], with
    /// their attempts and the `X` entries of the seconds they empty; then the `x` entries and
    /// the attempt indexes) in one batch; returns how many of them were pending, or `None` once nothing
    /// is left. sled holds every other write while it applies a batch, and keeps each
    /// batch's garbage until it ends: one batch for a webhook's whole history held the
    /// proxy's writes for seconds and took a GB of memory (100k deliveries: 3.5 s, 1.1 GB).
    ///
    /// `counted`: deliveries counted as pending already (held in memory without a record when
    /// the deletion began, whose record a keeper spill may have written since).
    pub(super) fn delete_webhook_part(
        &self,
        id: Uuid,
        counted: &HashSet<Uuid>,
    ) -> Result<Option<usize>, StoreError> {
        self.write_freeing(|db| {
            let mut batch = sled::Batch::default();
            let (mut visited, mut removed, mut pending) = (0, 0, 0);
            // Those removed by this part: one listed both by an `X` second and an `x` entry
            // is counted once.
            let mut done = HashSet::new();
            let mut remove_delivery = |batch: &mut sled::Batch,
                                       k: sled::IVec,
                                       d: Option<Delivery>,
                                       delivery: Uuid|
             -> Result<(), StoreError> {
                if !done.insert(delivery) {
                    return Ok(());
                }
                if let Some(d) = d {
                    if d.state == DeliveryState::Pending {
                        if !counted.contains(&delivery) {
                            pending += 1;
                        }
                        batch.remove(keys::queue(&d));
                    }
                    batch.remove(keys::by_event(&d));
                }
                batch.remove(k);
                for a in db
                    .scan_prefix(keys::key(keys::ATTEMPT, &[delivery.as_bytes()]))
                    .keys()
                {
                    batch.remove(a?);
                }
                Ok(())
            };
            for second in db
                .scan_prefix(keys::key(keys::WEBHOOK_SECOND, &[id.as_bytes()]))
                .keys()
            {
                let second = second?;
                let mut whole = true;
                if let Some(at) = keys::second_of_key(&second) {
                    let (start, end) = keys::deliveries_in_second(at);
                    for entry in db.range(start..end) {
                        if visited + removed >= DELETE_PART {
                            // The rest of the second in the next part, which reads it again.
                            whole = false;
                            break;
                        }
                        let (k, v) = entry?;
                        let delivery = keys::trailing_id(&k).unwrap_or_default();
                        let d = match record::webhook_of(&v) {
                            Some(w) if w != id => continue,
                            // Its webhook's, whether or not the rest reads.
                            Some(_) => record::decode(delivery, &v).ok(),
                            None => match record::decode(delivery, &v) {
                                Ok(d) if d.webhook_id == id => Some(d),
                                // Another webhook's, or whose it is cannot be told.
                                _ => continue,
                            },
                        };
                        remove_delivery(&mut batch, k, d, delivery)?;
                        visited += 1;
                    }
                }
                if whole {
                    batch.remove(second);
                    removed += 1;
                }
                if visited + removed >= DELETE_PART {
                    break;
                }
            }
            // Listed by `x` entries (stores before `X` entries): their attempts go even where
            // the delivery itself is gone.
            if visited + removed < DELETE_PART {
                for entry in db
                    .scan_prefix(keys::key(keys::BY_WEBHOOK, &[id.as_bytes()]))
                    .keys()
                    .take(DELETE_PART.saturating_sub(visited + removed))
                {
                    let entry = entry?;
                    if let Some(delivery) = keys::trailing_id(&entry) {
                        let k = keys::delivery(delivery);
                        let d = match db.get(&k)? {
                            Some(v) => record::decode(delivery, &v).ok(),
                            None => None,
                        };
                        remove_delivery(&mut batch, k.into(), d, delivery)?;
                    }
                    batch.remove(entry);
                    visited += 1;
                }
            }
            if visited + removed < DELETE_PART {
                // Queue entries last: one whose delivery went first (an append that raced the
                // deletion writes its queue entry after the record) is found by nothing else.
                for prefix in [keys::ATTEMPT_BY_TIME, keys::FAILURE_BY_TIME, keys::QUEUE] {
                    for k in db
                        .scan_prefix(keys::key(prefix, &[id.as_bytes()]))
                        .keys()
                        .take(DELETE_PART.saturating_sub(visited + removed))
                    {
                        batch.remove(k?);
                        visited += 1;
                    }
                }
            }
            if visited == 0 && removed == 0 {
                db.remove(keys::deleting(id))?;
                // Besides a reopen, the only way a webhook's count leaves that map (a write
                // racing the deletion may bring one back, until the next clear); the others are
                // marked again at their next empty scan.
                self.empty_queues.clear();
                return Ok(None);
            }
            db.apply_batch(batch)?;
            Ok(Some(pending))
        })
    }
}

/// A webhook's deletion run by its caller, part by part (see [`SledStore::delete_webhook`]).
/// Dropped before the end, it leaves the rest to the keeper.
pub(super) struct Deletion<'a> {
    store: &'a SledStore,
    webhook: Uuid,
    /// Its deliveries held in memory without a record when it began: pending, dropped.
    unwritten: HashSet<Uuid>,
    /// Pending deliveries with records removed so far.
    pending: usize,
}

impl Deletion<'_> {
    /// Removes the next part; false once nothing is left.
    pub(super) fn part(&mut self) -> Result<bool, StoreError> {
        // Events matched meanwhile may still have brought the webhook deliveries (it runs
        // until its caller lets it go): held in memory, they would be sent. They are dropped
        // too.
        self.unwritten
            .extend(self.store.fresh.forget_webhook(self.webhook));
        match self
            .store
            .delete_webhook_part(self.webhook, &self.unwritten)?
        {
            Some(pending) => {
                self.pending += pending;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// How many pending deliveries were dropped.
    pub(super) fn pending(&self) -> usize {
        self.pending + self.unwritten.len()
    }
}

impl Drop for Deletion<'_> {
    fn drop(&mut self) {
        let mut deleting = self
            .store
            .deleting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut callers) =
            deleting.entry(self.webhook)
        {
            *callers.get_mut() -= 1;
            if *callers.get() == 0 {
                callers.remove();
            }
        }
    }
}
