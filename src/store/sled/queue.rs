//! Deliveries, the queue and the attempt log.
//!
//! A queue entry (`q` webhook, queue ms, delivery id) is written after the delivery it points
//! to and removed after the state that replaces it; an entry that no longer matches its
//! delivery (left by a crash between two writes) is dropped when read.

use std::collections::HashSet;

use uuid::Uuid;

use super::{SledStore, keys, record};
use crate::event::{Attempt, Delivery, DeliveryState};
use crate::store::{KeyHeads, QueueStats, Recorded, StoreError};

/// How deep [`SledStore::claim_key_heads`] looks into a webhook's queue in one round: keys
/// whose first delivery is further back wait until those in front are sent.
const MAX_KEY_SCAN: usize = 10_000;
use crate::webhook::Webhook;

impl SledStore {
    pub fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        match self.db()?.get(keys::delivery(id))? {
            Some(v) => Ok(Some(record::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub fn deliveries_of(&self, webhook: Uuid, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        let prefix = keys::key(keys::BY_WEBHOOK, &[webhook.as_bytes()]);
        for entry in self.db()?.scan_prefix(prefix).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            if let Some(d) = keys::trailing_id(&k)
                .map(|id| self.delivery(id))
                .transpose()?
                .flatten()
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The attempts of one delivery, first attempt first.
    pub fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
        self.scan(keys::key(keys::ATTEMPT, &[delivery.as_bytes()]))
    }

    /// Up to `limit` queued deliveries of `webhook` whose queue time is at most `until_ms`,
    /// in queue order, leaving out those in `skip` (deliveries already in flight) and those
    /// not due by `until_ms` (a keyed delivery's retry keeps its early queue time; when the
    /// webhook's `ordering_key` is removed it must still wait for its due time).
    pub fn queued(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = keys::key(keys::QUEUE, &[webhook.as_bytes()]);
        let end = keys::key(
            keys::QUEUE,
            &[
                webhook.as_bytes(),
                &until_ms.saturating_add(1).to_be_bytes(),
            ],
        );
        let mut out = Vec::new();
        for entry in self.db()?.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let Some(id) = keys::trailing_id(&k) else {
                continue;
            };
            if skip.contains(&id) {
                continue;
            }
            match self.delivery(id)? {
                Some(d) if d.state == DeliveryState::Pending && keys::queue(&d) == k.as_ref() => {
                    if d.due_ms <= until_ms {
                        out.push(d);
                    }
                }
                // An entry left behind by a crash between two writes of `record_attempts`:
                // the delivery has moved on (or is gone). Dropping it is tidying only, so a
                // refused write (a full disk) does not fail the read.
                _ => {
                    let _ = self.write(|db| Ok(db.remove(&k)?));
                }
            }
        }
        Ok(out)
    }

    /// The head of each key's queue that is due by `now_ms`, at most `limit`, and when the
    /// first head not yet due is due (see [`crate::store::Store::claim_key_heads`]). Reads
    /// the keys from the queue entries' values and only the heads' records; looks at most
    /// [`MAX_KEY_SCAN`] entries deep.
    pub fn claim_key_heads(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<KeyHeads, StoreError> {
        let mut heads = KeyHeads::default();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let prefix = keys::key(keys::QUEUE, &[webhook.as_bytes()]);
        for entry in self.db()?.scan_prefix(prefix).take(MAX_KEY_SCAN) {
            if heads.ready.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            let Some(id) = keys::trailing_id(&k) else {
                continue;
            };
            // A key is seen at its first entry: later ones wait behind it.
            if let Some(key) = keys::queue_value_key(&v) {
                if !seen.insert(key.to_vec()) {
                    continue;
                }
            }
            if skip.contains(&id) {
                continue;
            }
            match self.delivery(id)? {
                Some(d) if d.state == DeliveryState::Pending && keys::queue(&d) == k.as_ref() => {
                    if d.due_ms <= now_ms {
                        heads.ready.push(d);
                    } else {
                        heads.next_due_ms =
                            Some(heads.next_due_ms.map_or(d.due_ms, |n| n.min(d.due_ms)));
                    }
                }
                // A stale entry (see `queued`): it holds no key's place.
                _ => {
                    if let Some(key) = keys::queue_value_key(&v) {
                        seen.remove(key);
                    }
                    let _ = self.write(|db| Ok(db.remove(&k)?));
                }
            }
        }
        Ok(heads)
    }

    /// When the first queued delivery of `webhook` not in `skip` may go: the later of its
    /// queue and due times (a delivery queued early, stored with an ordering key the webhook
    /// no longer has, waits for its due time), the earliest over the queue. Reads records only
    /// while their queue times are before the earliest found, at most [`MAX_KEY_SCAN`].
    pub fn next_queued(
        &self,
        webhook: Uuid,
        skip: &HashSet<Uuid>,
    ) -> Result<Option<u64>, StoreError> {
        let mut next: Option<u64> = None;
        for entry in self
            .db()?
            .scan_prefix(keys::key(keys::QUEUE, &[webhook.as_bytes()]))
            .take(MAX_KEY_SCAN)
        {
            let (k, _) = entry?;
            let (Some(id), Some(queue_ms)) = (keys::trailing_id(&k), keys::queue_ms(&k)) else {
                continue;
            };
            if next.is_some_and(|n| queue_ms >= n) {
                break;
            }
            if skip.contains(&id) {
                continue;
            }
            let due_ms = self.delivery(id)?.map_or(queue_ms, |d| d.due_ms);
            let at = queue_ms.max(due_ms);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        Ok(next)
    }

    /// How many deliveries are queued for `webhook`, and when the oldest was created (read
    /// from the UUIDv7 delivery ids in the keys, so no record is decoded).
    pub fn queue_stats(&self, webhook: Uuid) -> Result<QueueStats, StoreError> {
        queue_stats_in(&*self.db()?, webhook)
    }

    /// Records attempts with the new states of their deliveries and, when given, the
    /// webhook's record; queue entries follow the new states. Writes nothing, and returns
    /// false, when the webhook no longer exists (it was deleted while the request was out).
    pub fn record_attempts(
        &self,
        webhook: Uuid,
        changes: &[Recorded],
        record: Option<&Webhook>,
    ) -> Result<bool, StoreError> {
        self.write(|db| {
            if !db.contains_key(keys::webhook(webhook))? {
                return Ok(false);
            }
            // Single writes in a safe order (see `append`): the new state first, the new queue
            // entry next, the old queue entry last. A crash in between leaves at worst an extra
            // queue entry, which `queued` drops, or a delivery sent once more.
            for c in changes {
                db.insert(
                    keys::attempt(c.attempt.delivery_id, c.attempt.number),
                    serde_json::to_vec(&c.attempt)?,
                )?;
                let (index, sample) = Self::attempt_index(&c.before, &c.attempt);
                if !c.attempt.success {
                    db.insert(keys::failure_by_time(&index), &[] as &[u8])?;
                }
                db.insert(index, &sample[..])?;
                db.insert(keys::delivery(c.after.id), record::encode(&c.after)?)?;
            }
            if let Some(w) = record {
                Self::update_webhook(db, w)?;
            }
            for c in changes {
                let pending = c.after.state == DeliveryState::Pending;
                if pending {
                    db.insert(keys::queue(&c.after), keys::queue_value(&c.after))?;
                }
                if !pending || keys::queue(&c.after) != keys::queue(&c.before) {
                    db.remove(keys::queue(&c.before))?;
                }
            }
            Ok(true)
        })
    }

    /// Puts a delivery back in the queue, due at `now_ms` (a redelivery keeps its id). A
    /// delivery still pending keeps an earlier queue time: a keyed or ordered head waiting for
    /// its retry stays in front of its key's later deliveries.
    pub fn requeue(
        &self,
        delivery: &Delivery,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        // As stored: an attempt recorded since `delivery` was read is built on.
        let Some(delivery) = self.delivery(delivery.id)? else {
            return Ok(None);
        };
        let delivery = &delivery;
        let d = crate::store::requeued(delivery, now_ms);
        self.write(|db| {
            // The same order as `record_attempts`: state, new entry, old entry.
            db.insert(keys::delivery(d.id), record::encode(&d)?)?;
            db.insert(keys::queue(&d), keys::queue_value(&d))?;
            if delivery.state == DeliveryState::Pending && keys::queue(delivery) != keys::queue(&d)
            {
                db.remove(keys::queue(delivery))?;
            }
            Ok(())
        })?;
        Ok(Some(d))
    }
}

/// How many deliveries are queued for `webhook`, and when the oldest was created.
pub(super) fn queue_stats_in(db: &sled::Db, webhook: Uuid) -> Result<QueueStats, StoreError> {
    let mut stats = QueueStats::default();
    for entry in db.scan_prefix(keys::key(keys::QUEUE, &[webhook.as_bytes()])) {
        let (k, _) = entry?;
        stats.pending += 1;
        let created = keys::trailing_id(&k)
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            });
        if let Some(c) = created {
            stats.oldest_ms = Some(stats.oldest_ms.map_or(c, |o| o.min(c)));
        }
    }
    Ok(stats)
}
