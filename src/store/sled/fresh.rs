//! The newest part of each webhook's queue, held in memory: deliveries stored by requests
//! that have no `q` entry (yet).
//!
//! Most deliveries are sent, and their new state written, within moments of being stored.
//! Queued here rather than by a `q` entry, and listed in full by its event's record rather
//! than by a `d` record of its own (see [`Unwritten`]), such a delivery costs its request two
//! sled writes fewer, and its delivery the entry's removal. The scheduler reads a webhook's
//! queue as its `q` entries and its entries here, merged in queue order (`SledStore::queued`).
//!
//! An entry leaves when its delivery's state is next written (`record_attempts`, `requeue`:
//! a delivery still pending then gets its `q` entry), or once it has been due for
//! [`SPILL_AFTER_MS`] (a paused or backed-up webhook): the keeper then writes its `q` entry
//! ([`SledStore::spill_fresh`](super::SledStore::spill_fresh)). At most [`MAX_ENTRIES`] are
//! held; past that, deliveries are stored with `q` entries as before.
//!
//! What a crash takes of this memory is found again at open. The checkpoint (the `Q` key, a
//! Unix second) says that every pending delivery whose id, and whose event's id, were made
//! before that second has its `d` record and a `q` entry; so opening writes the records of
//! the deliveries listed by the event records from that second on (ids are UUIDv7, so `e`
//! keys are in time order), then reads the delivery records from that second on and takes
//! back the pending ones without an entry. The checkpoint moves forward as entries leave,
//! never past the second of a delivery held here or being stored, or of its event (see
//! [`held_second`], [`Fresh::reserve`]), and it is written after the records and entries it
//! relies on: sled recovers a prefix of its writes, so a checkpoint found at open has them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use super::{SledStore, keys, record};
use crate::event::{Delivery, DeliveryState};
use crate::store::StoreError;

/// How long a delivery may wait here once due before the keeper gives it a `q` entry (one
/// made now is due at most this long from now, so it is held at most twice as long).
pub(super) const SPILL_AFTER_MS: u64 = 20_000;

/// At most this many deliveries are held (~100 bytes each, ~400 with the record of one
/// stored without a `d` record).
pub(super) const MAX_ENTRIES: usize = 50_000;

/// A webhook whose first delivery held here (the oldest queue time) is older than this is
/// behind: paused, backed up, sending to a receiver slower than this (a delivery in flight
/// stays held until its outcome is written), or keyed with a key held up by a retry (the
/// key's later deliveries stay held). One that keeps up takes each delivery within moments.
/// A batch webhook's deliveries are held with their queue time in the future, the end of
/// its interval, so they do not make it behind; a failing one's leave memory at their first
/// attempt. Only whether its new events are kept for sending hangs on this.
const BEHIND_AFTER_MS: u64 = 2_000;

/// Only deliveries whose ids were made this recently are held: one made earlier (a request
/// that took long between matching and storing) gets a `q` entry.
const RECENT_MS: u64 = 2_000;

/// How an event record that lists deliveries without their records names the list (JSON).
const HELD_FIELD: &[u8] = b"\"held\":";

/// The checkpoint stays this far behind the clock: a delivery whose id is made now is
/// never behind it, even across a small step of the clock.
const CHECKPOINT_LAG_S: u64 = 5;

/// One delivery held here (its webhook, queue time and id are the key it is held under).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub due_ms: u64,
    /// The delivery's ordering key, read by `claim_key_heads` without the record.
    pub key: Option<Arc<str>>,
    /// The second it keeps the checkpoint at: the earlier of its id's and its event's.
    second: u64,
}

/// Whether a new delivery's `d` record is left out of its request's write. It is when its
/// event's record lists it in full (`held`, see `events::HeldRecord`) and the delivery is held here:
/// memory answers for it (`SledStore::delivery`, the listings) until its state is next
/// written, or the keeper, or a clean stop, writes its record; after a crash, opening writes
/// it from the event's record (`recover_fresh`), which the checkpoint keeps in reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unwritten {
    Yes,
    No,
}

/// The second a held delivery keeps the checkpoint at: the earlier of its id's and its
/// event's (opening reads event records from the checkpoint on to find the records of
/// deliveries stored without one). `None` for an id that is not a UUIDv7.
pub(super) fn held_second(d: &Delivery) -> Option<u64> {
    Some(keys::id_second(d.id)?.min(keys::id_second(d.event_id)?))
}

/// An entry with its place in the queue.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Held {
    pub queue_ms: u64,
    pub id: Uuid,
    pub entry: Entry,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each webhook's entries in queue order.
    queues: HashMap<Uuid, BTreeMap<(u64, Uuid), Entry>>,
    len: usize,
    /// The records of the deliveries held without a `d` record, by id...
    unwritten: HashMap<Uuid, Arc<Delivery>>,
    /// ... and their ids by webhook, in id (time) order.
    unwritten_of: BTreeSet<(Uuid, Uuid)>,
    /// How many deliveries, by their [`held_second`], are held here or being stored under a
    /// [`Reservation`]: the checkpoint stays at or before the first.
    seconds: BTreeMap<u64, usize>,
    /// The checkpoint in force; `None` until the database was opened and its checkpoint read
    /// (nothing is held then).
    checkpoint: Option<u64>,
    /// Counts [`Fresh::reset`]s: a reservation taken before one has nothing left to add or
    /// let go of (what it was for is found in the database again).
    generation: u64,
    /// Deliveries taken in so far, and how many had been when the checkpoint last moved: an
    /// idle store does not move (and write) it again.
    admitted: u64,
    admitted_at_move: u64,
}

impl Inner {
    fn hold(&mut self, second: u64) {
        *self.seconds.entry(second).or_default() += 1;
    }

    fn release(&mut self, second: u64) {
        if let Some(n) = self.seconds.get_mut(&second) {
            *n -= 1;
            if *n == 0 {
                self.seconds.remove(&second);
            }
        }
    }

    /// Holds `d`, keeping the checkpoint at `second` (a second already held by a reservation
    /// is held once more: the caller lets go of the reservation's).
    fn insert(&mut self, d: &Delivery, second: u64, unwritten: Unwritten) {
        let queue = self.queues.entry(d.webhook_id).or_default();
        let std::collections::btree_map::Entry::Vacant(place) = queue.entry((d.queue_ms, d.id))
        else {
            // Held already (ids are new per append: not expected), as it was.
            return;
        };
        place.insert(Entry {
            due_ms: d.due_ms,
            key: d.ordering_key.as_deref().map(Arc::from),
            second,
        });
        if unwritten == Unwritten::Yes {
            self.unwritten.insert(d.id, Arc::new(d.clone()));
            self.unwritten_of.insert((d.webhook_id, d.id));
        }
        self.len += 1;
        self.hold(second);
    }

    fn remove(&mut self, webhook: Uuid, queue_ms: u64, id: Uuid) -> bool {
        let Some(queue) = self.queues.get_mut(&webhook) else {
            return false;
        };
        let Some(entry) = queue.remove(&(queue_ms, id)) else {
            return false;
        };
        if queue.is_empty() {
            self.queues.remove(&webhook);
        }
        self.len -= 1;
        if self.unwritten.remove(&id).is_some() {
            self.unwritten_of.remove(&(webhook, id));
        }
        self.release(entry.second);
        true
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    inner: Mutex<Inner>,
}

/// Deliveries being stored that will be held here: until [`Reservation::add`] (or its drop,
/// when storing failed) the first of their seconds keeps the checkpoint behind them.
pub(super) struct Reservation<'a> {
    fresh: &'a Fresh,
    /// `None` once added.
    second: Option<u64>,
    generation: u64,
    /// How many of the deliveries have a webhook that is not behind (see
    /// [`BEHIND_AFTER_MS`]): they will be sent within moments.
    pub keeping_up: usize,
}

impl Reservation<'_> {
    /// Whether the database was not reopened since the reservation was taken. Asked by a
    /// write that holds the database: no reopen can happen before it lets go.
    pub(super) fn is_current(&self) -> bool {
        self.fresh.lock().generation == self.generation
    }

    /// The deliveries are stored (`unwritten`: without their `d` records): hold them.
    pub(super) fn add(mut self, deliveries: &[Delivery], unwritten: Unwritten) {
        let mut inner = self.fresh.lock();
        if inner.generation != self.generation {
            // The database was reopened meanwhile: opening found them (and wrote the records
            // of unwritten ones from their event's).
            self.second = None;
            return;
        }
        for d in deliveries {
            if let Some(second) = held_second(d) {
                inner.insert(d, second, unwritten);
            }
        }
        // Held by the entries now.
        if let Some(second) = self.second.take() {
            inner.release(second);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(second) = self.second {
            let mut inner = self.fresh.lock();
            if inner.generation == self.generation {
                inner.release(second);
            }
        }
    }
}

impl Fresh {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets everything and takes `checkpoint` (read at open; `None`: the database is
    /// closed, nothing is held until it is open again).
    pub(super) fn reset(&self, checkpoint: Option<u64>) {
        let mut inner = self.lock();
        *inner = Inner {
            checkpoint,
            generation: inner.generation + 1,
            ..Inner::default()
        };
    }

    /// The checkpoint in force.
    pub(super) fn checkpoint(&self) -> Option<u64> {
        self.lock().checkpoint
    }

    /// Whether `deliveries`, about to be stored, are to be held here rather than given `q`
    /// entries: all of them or none, each pending, due within [`SPILL_AFTER_MS`], with
    /// UUIDv7 ids (its own and its event's) made within [`RECENT_MS`] of `now_ms` and not
    /// before the checkpoint, and room for them. If so, their [`held_second`]s are held from
    /// now on.
    pub(super) fn reserve(&self, deliveries: &[Delivery], now_ms: u64) -> Option<Reservation<'_>> {
        let mut inner = self.lock();
        let checkpoint = inner.checkpoint?;
        if deliveries.is_empty() || inner.len + deliveries.len() > MAX_ENTRIES {
            return None;
        }
        let mut first = u64::MAX;
        let mut keeping_up = 0;
        for d in deliveries {
            let second = held_second(d)?;
            // The first place is the oldest queue time: a look, not a count.
            let behind = inner
                .queues
                .get(&d.webhook_id)
                .and_then(BTreeMap::first_key_value)
                .is_some_and(|(&(queue_ms, _), _)| {
                    queue_ms.saturating_add(BEHIND_AFTER_MS) < now_ms
                });
            if !behind {
                keeping_up += 1;
            }
            let made_ms = second.saturating_mul(1000);
            let eligible = d.state == DeliveryState::Pending
                && second >= checkpoint
                && made_ms.saturating_add(RECENT_MS + 1000) >= now_ms
                && d.due_ms <= now_ms.saturating_add(SPILL_AFTER_MS);
            if !eligible {
                return None;
            }
            first = first.min(second);
        }
        inner.hold(first);
        inner.admitted += deliveries.len() as u64;
        Some(Reservation {
            fresh: self,
            second: Some(first),
            generation: inner.generation,
            keeping_up,
        })
    }

    /// Takes back a pending delivery found without a `q` entry at open; false when there is
    /// no room (it then needs an entry).
    pub(super) fn readmit(&self, d: &Delivery) -> bool {
        let mut inner = self.lock();
        let Some(second) = held_second(d) else {
            return false;
        };
        if inner.len >= MAX_ENTRIES || inner.checkpoint.is_none_or(|c| second < c) {
            return false;
        }
        inner.insert(d, second, Unwritten::No);
        inner.admitted += 1;
        true
    }

    /// Lets go of a delivery (its state was written; it has a `q` entry if it is still
    /// pending). Returns whether it was held.
    pub(super) fn remove(&self, webhook: Uuid, queue_ms: u64, id: Uuid) -> bool {
        self.lock().remove(webhook, queue_ms, id)
    }

    /// Lets go of a deleted webhook's deliveries; returns those that had no record.
    pub(super) fn forget_webhook(&self, webhook: Uuid) -> std::collections::HashSet<Uuid> {
        let mut inner = self.lock();
        let mut unwritten = std::collections::HashSet::new();
        if let Some(queue) = inner.queues.remove(&webhook) {
            inner.len -= queue.len();
            for ((_, id), entry) in queue {
                if inner.unwritten.remove(&id).is_some() {
                    inner.unwritten_of.remove(&(webhook, id));
                    unwritten.insert(id);
                }
                inner.release(entry.second);
            }
        }
        unwritten
    }

    /// The record of a delivery held without a `d` record.
    pub(super) fn unwritten(&self, id: Uuid) -> Option<Arc<Delivery>> {
        self.lock().unwritten.get(&id).cloned()
    }

    /// The records of `webhook`'s deliveries held without a `d` record whose ids were made
    /// in `second`.
    pub(super) fn unwritten_in_second(&self, webhook: Uuid, second: u64) -> Vec<Arc<Delivery>> {
        let inner = self.lock();
        let from = keys::first_id_of_second(second);
        let to = keys::first_id_of_second(second.saturating_add(1));
        if from >= to {
            return Vec::new();
        }
        inner
            .unwritten_of
            .range((webhook, from)..(webhook, to))
            .filter_map(|(_, id)| inner.unwritten.get(id).cloned())
            .collect()
    }

    /// Up to `max` of `webhook`'s entries in queue order after the place `after` (from the
    /// first without), those queued by `until_ms` only.
    pub(super) fn entries(
        &self,
        webhook: Uuid,
        after: Option<(u64, Uuid)>,
        until_ms: u64,
        max: usize,
    ) -> Vec<Held> {
        use std::ops::Bound;
        let inner = self.lock();
        let Some(queue) = inner.queues.get(&webhook) else {
            return Vec::new();
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        queue
            .range((from, Bound::Included((until_ms, Uuid::max()))))
            .take(max)
            .map(|(&(queue_ms, id), entry)| Held {
                queue_ms,
                id,
                entry: entry.clone(),
            })
            .collect()
    }

    /// When the first of `webhook`'s entries not in `skip` may go: the later of its queue
    /// and due times, the earliest over the entries.
    pub(super) fn next_at(&self, webhook: Uuid, skip: &HashSet<Uuid>) -> Option<u64> {
        let inner = self.lock();
        let mut next: Option<u64> = None;
        for (&(queue_ms, id), entry) in inner.queues.get(&webhook)? {
            if next.is_some_and(|n| queue_ms >= n) {
                break;
            }
            if skip.contains(&id) {
                continue;
            }
            let at = queue_ms.max(entry.due_ms);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }

    /// How many of `webhook`'s deliveries are held, and when the oldest was created.
    pub(super) fn count(&self, webhook: Uuid) -> (usize, Option<u64>) {
        let inner = self.lock();
        let Some(queue) = inner.queues.get(&webhook) else {
            return (0, None);
        };
        let oldest = queue
            .keys()
            .filter_map(|(_, id)| keys::created_ms(*id))
            .min();
        (queue.len(), oldest)
    }

    /// The deliveries due for longer than [`SPILL_AFTER_MS`] at `now_ms` (their queue time
    /// is that far back), with their webhooks: the front of each webhook's queue.
    /// (`None`: all of them).
    pub(super) fn overdue(&self, now_ms: Option<u64>) -> Vec<(Uuid, Held)> {
        let inner = self.lock();
        let until = now_ms.map(|now| now.saturating_sub(SPILL_AFTER_MS));
        let mut out = Vec::new();
        for (webhook, queue) in &inner.queues {
            for (&(queue_ms, id), entry) in queue {
                if until.is_some_and(|until| queue_ms >= until) {
                    break;
                }
                let held = Held {
                    queue_ms,
                    id,
                    entry: entry.clone(),
                };
                out.push((*webhook, held));
            }
        }
        out
    }

    /// Moves the checkpoint as far as it may go at `now_ms`: to the first second held, at
    /// most [`CHECKPOINT_LAG_S`] behind the clock. Returns the new checkpoint when it moved
    /// (to be written); admissions see it at once.
    pub(super) fn advance(&self, now_ms: u64) -> Option<u64> {
        let mut inner = self.lock();
        let current = inner.checkpoint?;
        // Nothing taken in since it last moved and nothing held: every delivery stored since
        // has a `q` entry, so the checkpoint can stay (an idle store writes nothing).
        if inner.seconds.is_empty() && inner.admitted == inner.admitted_at_move {
            return None;
        }
        let mut to = (now_ms / 1000).saturating_sub(CHECKPOINT_LAG_S);
        if let Some((&first, _)) = inner.seconds.first_key_value() {
            to = to.min(first);
        }
        if to <= current {
            return None;
        }
        inner.checkpoint = Some(to);
        inner.admitted_at_move = inner.admitted;
        Some(to)
    }
}

/// Writes `d`'s record, stored without one (see [`Unwritten`]), unless a record is there
/// already (its state was written meanwhile: never overwritten). Returns whether it wrote.
pub(super) fn put_unless_written(db: &sled::Db, d: &Delivery) -> Result<bool, StoreError> {
    let absent: Option<&[u8]> = None;
    Ok(db
        .compare_and_swap(keys::delivery(d.id), absent, Some(record::encode(d)?))?
        .is_ok())
}

/// The clock in Unix milliseconds.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SledStore {
    /// Reads the checkpoint of the database just opened, writes the records of the
    /// deliveries stored since then without one, and takes back the pending deliveries stored
    /// since then without a `q` entry (see the module documentation): held
    /// here while there is room, given their entry otherwise. A database without a
    /// checkpoint (a new one, or one written by a hooktap that wrote a `q` entry for every
    /// delivery) gets one at the current second.
    pub(super) fn recover_fresh(&self, db: &sled::Db) -> Result<(), StoreError> {
        self.empty_queues.clear();
        if self.journal {
            self.fresh.reset(None);
            return Ok(());
        }
        let checkpoint = match db.get(keys::FRESH_CHECKPOINT)? {
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => u64::from_be_bytes(b),
                Err(_) => {
                    tracing::warn!(path = %self.path.display(),
                        "the store's queue checkpoint is unreadable: reading every delivery record for the queue");
                    0
                }
            },
            None => {
                let now = now_ms() / 1000;
                db.insert(keys::FRESH_CHECKPOINT, &now.to_be_bytes())?;
                now
            }
        };
        self.fresh.reset(Some(checkpoint));
        let written = self.write_unwritten_records(db, checkpoint)?;
        let (start, _) = keys::deliveries_in_second(checkpoint);
        let end = [keys::DELIVERY + 1];
        let (mut held, mut queued) = (0usize, 0usize);
        let now = now_ms();
        for entry in db.range(start.as_slice()..end.as_slice()) {
            let (k, v) = entry?;
            let Some(id) = keys::trailing_id(&k) else {
                continue;
            };
            let d = match record::decode(id, &v) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(delivery = %id, error = %e, "a delivery record cannot be read; not queued");
                    continue;
                }
            };
            // A deleted webhook's (its history goes in the keeper's parts, which a stop may
            // have cut short) is not taken back: nothing would send it.
            if d.state != DeliveryState::Pending
                || db.contains_key(keys::queue(&d))?
                || !db.contains_key(keys::webhook(d.webhook_id))?
            {
                continue;
            }
            // Held again only as `reserve` would hold it: due soon (a retry whose entry a
            // crash kept from being written waits for its time by an entry), and not yet
            // overdue (one the keeper would spill at once gets its entry now).
            let held_again = d.due_ms <= now.saturating_add(SPILL_AFTER_MS)
                && d.queue_ms.saturating_add(SPILL_AFTER_MS) > now
                && self.fresh.readmit(&d);
            if held_again {
                held += 1;
            } else {
                self.put_queue_entry(db, &d)?;
                queued += 1;
            }
        }
        if held + queued > 0 {
            tracing::info!(
                held,
                queued,
                records = written,
                "queued again the deliveries stored before the last stop without a queue entry"
            );
        }
        Ok(())
    }

    /// Writes the records of the deliveries stored without one (see [`Unwritten`]) that a
    /// crash left in their events' records only: those of the events made from `checkpoint`
    /// on (a held delivery keeps the checkpoint at its [`held_second`]), unless the delivery
    /// has its record or its webhook was deleted. Returns how many it wrote.
    fn write_unwritten_records(&self, db: &sled::Db, checkpoint: u64) -> Result<usize, StoreError> {
        let start = keys::events_from_second(checkpoint);
        let end = [keys::EVENT + 1];
        let mut written = 0;
        for entry in db.range(start.as_slice()..end.as_slice()) {
            let (k, v) = entry?;
            // Only records that list a delivery without its own are read in full.
            if !v.windows(HELD_FIELD.len()).any(|w| w == HELD_FIELD) {
                continue;
            }
            let stored: super::events::StoredEvent = match serde_json::from_slice(&v) {
                Ok(s) => s,
                Err(e) => {
                    let id = keys::trailing_id(&k).unwrap_or_default();
                    tracing::warn!(event = %id, error = %e, "an event record cannot be read; its deliveries stored without a record are not queued");
                    continue;
                }
            };
            for h in &stored.held {
                let d = h.delivery(&stored.event);
                if db.contains_key(keys::webhook(d.webhook_id))? && put_unless_written(db, &d)? {
                    written += 1;
                }
            }
        }
        Ok(written)
    }

    /// The keeper's round: gives the deliveries due for longer than [`SPILL_AFTER_MS`] their
    /// records (those stored without one) and `q` entries, then moves the checkpoint and writes it (after those entries).
    pub(super) fn spill_fresh(&self) -> Result<(), StoreError> {
        if self.journal || self.fresh.checkpoint().is_none() {
            return Ok(());
        }
        let now = now_ms();
        self.spill_held_before(now)?;
        self.advance_checkpoint(now)
    }

    /// Moves the checkpoint as far as it may go at `now_ms` and writes it, after a flush:
    /// the `q` entries it relies on are then on disk whatever sled's recovery keeps (a flush
    /// is sled's documented promise; the checkpoint moves about once a second).
    fn advance_checkpoint(&self, now_ms: u64) -> Result<(), StoreError> {
        if let Some(checkpoint) = self.fresh.advance(now_ms) {
            self.write(|db| {
                db.flush()?;
                db.insert(keys::FRESH_CHECKPOINT, &checkpoint.to_be_bytes())?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Gives every delivery held its record (one stored without) and `q` entry, and moves the
    /// checkpoint up to the clock (shutdown).
    pub(super) fn spill_fresh_all(&self) -> Result<(), StoreError> {
        if self.journal || self.fresh.checkpoint().is_none() {
            return Ok(());
        }
        self.spill_held(None)?;
        self.advance_checkpoint(now_ms())
    }

    /// Gives the deliveries due for longer than [`SPILL_AFTER_MS`] at `now_ms` their records
    /// (those stored without one) and `q` entries, and lets go of them.
    pub(super) fn spill_held_before(&self, now_ms: u64) -> Result<(), StoreError> {
        self.spill_held(Some(now_ms))
    }

    /// [`SledStore::spill_held_before`] `now_ms`, or every delivery held (`None`).
    fn spill_held(&self, now_ms: Option<u64>) -> Result<(), StoreError> {
        // From what is held, without reading the record: one whose record moved on is
        // queued where the record says when this entry is read (see `still_queued`), and one
        // sent meanwhile leaves an entry that is dropped when read.
        // Not for a webhook deleted since the snapshot (nothing would read the entry): looked
        // up once per webhook (the snapshot lists each webhook's deliveries together).
        let mut exists: Option<(Uuid, bool)> = None;
        for (webhook, held) in self.fresh.overdue(now_ms) {
            let key = keys::queue_at(webhook, held.queue_ms, held.id);
            let value = keys::queue_value_of(held.entry.key.as_deref());
            // Taken after the snapshot: one let go of since has its record written.
            let record = self.fresh.unwritten(held.id);
            self.write(|db| {
                let known = match exists {
                    Some((w, known)) if w == webhook => known,
                    _ => {
                        let known = db.contains_key(keys::webhook(webhook))?;
                        exists = Some((webhook, known));
                        known
                    }
                };
                if known {
                    // Its record first, so that the entry never names a missing one; not over
                    // a record its state was written to meanwhile.
                    if let Some(record) = &record {
                        put_unless_written(db, record)?;
                    }
                    self.put_queue_entry_at(db, webhook, key.clone(), value)?;
                }
                Ok(())
            })?;
            // Let go of meanwhile: by its own state's write, or by its webhook's deletion, after
            // which nothing would ever read or remove the entry just written, nor the record
            // (the deletion may have listed the delivery from memory, before it was written).
            if !self.fresh.remove(webhook, held.queue_ms, held.id) {
                self.write_freeing(|db| {
                    if !db.contains_key(keys::webhook(webhook))? {
                        db.remove(&key)?;
                        db.remove(keys::delivery(held.id))?;
                        exists = Some((webhook, false));
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::{open_for_tests, reopen_for_tests};
    use super::*;
    use crate::event::{Event, Topic};
    use crate::store::Recorded;

    fn webhook(store: &SledStore) -> Uuid {
        super::super::webhook_for_tests(store, "crm").id
    }

    fn append(store: &SledStore, webhook: Uuid, key: Option<&str>) -> Delivery {
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({"n": 1}));
        let mut d = Delivery::new(&event, webhook, 0);
        d.ordering_key = key.map(str::to_owned);
        store
            .append(&event, std::slice::from_ref(&d))
            .expect("append");
        d
    }

    fn queue_entries(store: &SledStore) -> usize {
        store.db().expect("db").scan_prefix([keys::QUEUE]).count()
    }

    fn queued(store: &SledStore, webhook: Uuid) -> Vec<Uuid> {
        store
            .queued(webhook, u64::MAX, 100, &HashSet::new())
            .expect("queued")
            .iter()
            .map(|d| d.id)
            .collect()
    }

    fn recorded(d: &Delivery, success: bool) -> Recorded {
        crate::store::contract::recorded(d, 1, success)
    }

    #[test]
    fn a_new_delivery_is_queued_in_memory_and_sent_without_a_queue_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        assert_eq!(queue_entries(&store), 0);
        assert_eq!(queued(&store, w), vec![d.id]);
        assert_eq!(store.fresh.count(w).0, 1);
        assert!(
            store
                .record_attempts(w, &[recorded(&d, true)], None)
                .expect("record")
        );
        assert_eq!(queued(&store, w), Vec::<Uuid>::new());
        assert_eq!(store.fresh.count(w).0, 0);
        assert_eq!(queue_entries(&store), 0);
    }

    #[test]
    fn a_retry_gets_a_queue_entry_and_is_queued_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        // A look at the whole queue finds no entry: later reads skip the empty range...
        assert_eq!(
            store.next_queued(w, &HashSet::new()).expect("next"),
            Some(d.queue_ms.max(d.due_ms))
        );
        assert!(store.empty_queues.none(w));
        let change = recorded(&d, false);
        assert!(
            store
                .record_attempts(w, std::slice::from_ref(&change), None)
                .expect("record")
        );
        // ... until an entry is written.
        assert!(!store.empty_queues.none(w));
        assert_eq!(queue_entries(&store), 1);
        assert_eq!(store.fresh.count(w).0, 0);
        assert_eq!(queued(&store, w), vec![d.id]);
        // Requeued by hand: still one place in the queue.
        store.requeue(&change.after, 1).expect("requeue");
        assert_eq!(queued(&store, w), vec![d.id]);
        assert_eq!(queue_entries(&store), 1);
    }

    #[test]
    fn entries_and_deliveries_in_memory_are_read_in_queue_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let a = append(&store, w, Some("k1"));
        let b = append(&store, w, Some("k2"));
        let c = append(&store, w, Some("k1"));
        // `b` waits for a retry with a queue entry at its own queue time: in front of `c`,
        // which is still in memory.
        let mut retry = recorded(&b, false);
        retry.after.queue_ms = b.queue_ms;
        retry.after.due_ms = 0;
        assert!(store.record_attempts(w, &[retry], None).expect("record"));
        assert_eq!(queue_entries(&store), 1);
        assert_eq!(queued(&store, w), vec![a.id, b.id, c.id]);
        // One head per key, across both: `a` for k1 (not `c`), `b` for k2.
        let heads = store
            .claim_key_heads(w, u64::MAX, 10, &HashSet::new())
            .expect("heads");
        let ids: Vec<Uuid> = heads.ready.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![a.id, b.id]);
        // In flight, `a` holds its key: `c` waits.
        let heads = store
            .claim_key_heads(w, u64::MAX, 10, &HashSet::from([a.id]))
            .expect("heads");
        let ids: Vec<Uuid> = heads.ready.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![b.id]);
        assert_eq!(
            store.next_queued(w, &HashSet::new()).expect("next"),
            Some(a.queue_ms)
        );
    }

    #[test]
    fn what_memory_held_is_queued_again_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let sent = append(&store, w, None);
        let waiting = append(&store, w, Some("k"));
        assert!(
            store
                .record_attempts(w, &[recorded(&sent, true)], None)
                .expect("record")
        );
        assert_eq!(queue_entries(&store), 0);
        store.flush().expect("flush");
        // The process ends without a word to the store: its memory is gone.
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(queued(&store, w), vec![waiting.id]);
        let held = store.fresh.entries(w, None, u64::MAX, 10);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].entry.key.as_deref(), Some("k"));
    }

    /// A stop cut short a deletion (its history goes in the keeper's parts): opening does not
    /// take the deleted webhook's pending deliveries back into the queue.
    #[test]
    fn a_deleted_webhooks_pending_deliveries_are_not_queued_again_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (kept, gone) = (webhook(&store), webhook(&store));
        let waiting = append(&store, kept, None);
        let dropped = append(&store, gone, None);
        // Both pending with their records, without entries (as the keeper's spill of what it
        // lets go of leaves them for a moment, and a crash for good).
        overwrite(&store, &waiting);
        overwrite(&store, &dropped);
        // The deletion's first step: the record goes, the mark stays.
        let db = store.db().expect("db");
        db.remove(keys::webhook(gone)).expect("remove");
        db.insert(keys::deleting(gone), &[] as &[u8]).expect("mark");
        store.flush().expect("flush");
        drop((db, store));
        let store = reopen_for_tests(dir.path());
        assert_eq!(queued(&store, kept), vec![waiting.id]);
        assert_eq!(queued(&store, gone), Vec::<Uuid>::new());
        assert_eq!(store.fresh.count(gone).0, 0);
        assert_eq!(queue_entries(&store), 0);
    }

    #[test]
    fn a_retry_found_at_open_without_its_entry_waits_by_an_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        // Its retry, an hour away, was written; the crash came before its entry.
        let mut retry = recorded(&d, false).after;
        retry.due_ms += 3_600_000;
        retry.queue_ms = retry.due_ms;
        overwrite(&store, &retry);
        store.flush().expect("flush");
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(store.fresh.count(w).0, 0);
        assert!(
            store
                .db()
                .expect("db")
                .contains_key(keys::queue(&retry))
                .expect("read")
        );
        assert_eq!(
            store.next_queued(w, &HashSet::new()).expect("next"),
            Some(retry.due_ms)
        );
    }

    #[test]
    fn a_scan_begun_before_a_reopen_marks_nothing() {
        let queues = super::super::queue::EmptyQueues::default();
        let w = Uuid::now_v7();
        let ticket = queues.before_scan(w);
        queues.clear();
        queues.found_none(w, &ticket);
        assert!(!queues.none(w));
        let ticket = queues.before_scan(w);
        queues.found_none(w, &ticket);
        assert!(queues.none(w));
    }

    #[test]
    fn the_checkpoint_stays_at_the_first_delivery_held_and_overdue_ones_get_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        let second = keys::id_second(d.id).expect("v7");
        // Far in the future, the clock would take the checkpoint past it: the delivery holds
        // it back.
        store.fresh.advance(u64::MAX);
        assert!(store.fresh.checkpoint().is_some_and(|c| c <= second));
        // Overdue: given its queue entry, let go, and the checkpoint moves on.
        store
            .spill_held_before(second * 1000 + SPILL_AFTER_MS + 2000)
            .expect("spill");
        assert_eq!(store.fresh.count(w).0, 0);
        assert_eq!(queue_entries(&store), 1);
        assert_eq!(queued(&store, w), vec![d.id]);
        let later = (second + 100) * 1000;
        assert_eq!(
            store.fresh.advance(later),
            Some(second + 100 - CHECKPOINT_LAG_S)
        );
        // A delivery made before the checkpoint is queued by an entry.
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({}));
        let old = Delivery::new(&event, w, 0);
        assert!(
            store
                .fresh
                .reserve(std::slice::from_ref(&old), later)
                .is_none()
        );
        store.append(&event, &[old]).expect("append");
        assert_eq!(queue_entries(&store), 2);
    }

    /// Writes `d`'s record as it is, without anything else (a write of `record_attempts`
    /// that stopped halfway).
    fn overwrite(store: &SledStore, d: &Delivery) {
        store
            .db()
            .expect("db")
            .insert(keys::delivery(d.id), record::encode(d).expect("encode"))
            .expect("insert");
    }

    #[test]
    fn no_later_entry_overtakes_a_held_delivery_behind_many_stale_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let all: Vec<Delivery> = (0..20).map(|_| append(&store, w, None)).collect();
        // The first 17 were sent but are still held (their letting go failed), more than a
        // batch of held entries; the last has a queue entry at its own place.
        for d in &all[..17] {
            let mut sent = d.clone();
            sent.state = DeliveryState::Delivered;
            overwrite(&store, &sent);
        }
        let last = &all[19];
        let mut retry = recorded(last, false);
        retry.after.queue_ms = last.queue_ms;
        assert!(store.record_attempts(w, &[retry], None).expect("record"));
        let head = store
            .queued(w, u64::MAX, 1, &HashSet::new())
            .expect("queued");
        assert_eq!(
            head.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![all[17].id]
        );
        // The stale ones were let go on the way.
        assert_eq!(store.fresh.count(w).0, 2);
    }

    #[test]
    fn a_held_delivery_whose_record_moved_on_is_queued_where_the_record_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        let retry = recorded(&d, false);
        overwrite(&store, &retry.after);
        // Spilled at its place in memory, which its record has left.
        store.spill_held_before(u64::MAX).expect("spill");
        assert_eq!(store.fresh.count(w).0, 0);
        assert!(
            store
                .db()
                .expect("db")
                .contains_key(keys::queue(&d))
                .expect("read")
        );
        // Read, that entry gives way to one where the record says.
        let _ = queued(&store, w);
        let db = store.db().expect("db");
        assert!(!db.contains_key(keys::queue(&d)).expect("read"));
        assert!(db.contains_key(keys::queue(&retry.after)).expect("read"));
        assert_eq!(queued(&store, w), vec![d.id]);
    }

    #[test]
    fn a_reservation_from_before_a_reopen_touches_nothing_after_it() {
        let fresh = Fresh::default();
        fresh.reset(Some(0));
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({}));
        let d = Delivery::new(&event, Uuid::now_v7(), 0);
        let second = keys::id_second(d.id).expect("v7");
        let reservation = fresh
            .reserve(std::slice::from_ref(&d), now_ms())
            .expect("room");
        assert!(reservation.is_current());
        // Reopened meanwhile, and opening took the delivery back from the database.
        fresh.reset(Some(0));
        // A write after the reopen gives the deliveries their entries.
        assert!(!reservation.is_current());
        assert!(fresh.readmit(&d));
        reservation.add(std::slice::from_ref(&d), Unwritten::Yes);
        fresh.advance(u64::MAX);
        assert!(fresh.checkpoint().is_some_and(|c| c <= second));
        assert_eq!(fresh.count(d.webhook_id).0, 1);
        // The same for one dropped (its append failed after the reopen).
        let reservation = fresh.reserve(std::slice::from_ref(&d), now_ms());
        fresh.reset(Some(0));
        assert!(fresh.readmit(&d));
        drop(reservation);
        fresh.advance(u64::MAX);
        assert!(fresh.checkpoint().is_some_and(|c| c <= second));
    }

    #[tokio::test]
    async fn a_clean_stop_gives_every_held_delivery_its_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, None);
        crate::store::Store::flush(&store).await.expect("flush");
        assert_eq!(store.fresh.count(w).0, 0);
        assert_eq!(queue_entries(&store), 1);
        assert_eq!(queued(&store, w), vec![d.id]);
    }

    #[test]
    fn the_checkpoint_written_is_read_at_open_and_a_store_without_one_gets_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let at_open = store.fresh.checkpoint().expect("checkpoint");
        let now = now_ms() / 1000;
        assert!(at_open <= now && at_open + 60 > now, "{at_open} vs {now}");
        store
            .db()
            .expect("db")
            .insert(keys::FRESH_CHECKPOINT, &7u64.to_be_bytes())
            .expect("insert");
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(store.fresh.checkpoint(), Some(7));
    }

    #[test]
    fn a_failed_append_lets_go_of_its_second_and_a_full_memory_takes_no_more() {
        let fresh = Fresh::default();
        fresh.reset(Some(0));
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({}));
        let w = Uuid::now_v7();
        let d = Delivery::new(&event, w, 0);
        let now = now_ms();
        let second = keys::id_second(d.id).expect("v7");
        let reservation = fresh.reserve(std::slice::from_ref(&d), now).expect("room");
        assert_eq!(fresh.advance(u64::MAX), Some(second));
        drop(reservation);
        assert!(fresh.lock().seconds.is_empty());
        // Nothing taken in since and nothing held: the checkpoint stays where it is.
        assert_eq!(fresh.advance(u64::MAX), None);
        let fresh = Fresh::default();
        fresh.reset(Some(0));
        for _ in 0..MAX_ENTRIES {
            let mut d = Delivery::new(&event, w, 0);
            d.id = Uuid::now_v7();
            assert!(fresh.readmit(&d));
        }
        assert!(fresh.reserve(std::slice::from_ref(&d), now).is_none());
        assert!(!fresh.readmit(&d));
    }

    fn records(store: &SledStore) -> usize {
        store
            .db()
            .expect("db")
            .scan_prefix([keys::DELIVERY])
            .count()
    }

    #[test]
    fn a_new_delivery_lives_in_its_events_record_and_memory_until_its_state_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let d = append(&store, w, Some("k"));
        // One write for the event: its record lists the delivery, which has none of its own.
        assert_eq!(records(&store), 0);
        assert_eq!(store.delivery(d.id).expect("read"), Some(d.clone()));
        assert_eq!(store.deliveries_of(w, 10).expect("list"), vec![d.clone()]);
        assert_eq!(
            store.deliveries_of_event(d.event_id).expect("list"),
            vec![d.clone()]
        );
        // Its state written, it has its record and leaves memory.
        let change = recorded(&d, true);
        assert!(
            store
                .record_attempts(w, std::slice::from_ref(&change), None)
                .expect("record")
        );
        assert_eq!(records(&store), 1);
        assert!(store.fresh.unwritten(d.id).is_none());
        assert_eq!(
            store.delivery(d.id).expect("read"),
            Some(change.after.clone())
        );
        assert_eq!(
            store.deliveries_of(w, 10).expect("list"),
            vec![change.after]
        );
    }

    #[test]
    fn a_webhooks_deliveries_are_listed_newest_first_whether_held_or_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let other = super::super::webhook_for_tests(&store, "erp").id;
        let mut expected = Vec::new();
        for i in 0..6 {
            let d = append(&store, w, None);
            append(&store, other, None);
            // Every other one sent: written, out of memory.
            if i % 2 == 0 {
                let change = recorded(&d, true);
                assert!(
                    store
                        .record_attempts(w, std::slice::from_ref(&change), None)
                        .expect("record")
                );
                expected.push(change.after);
            } else {
                expected.push(d);
            }
        }
        expected.reverse();
        assert_eq!(records(&store), 3);
        assert_eq!(store.deliveries_of(w, 10).expect("list"), expected);
        assert_eq!(store.deliveries_of(w, 4).expect("list"), expected[..4]);
    }

    #[test]
    fn a_crash_leaves_held_deliveries_their_records_in_their_events_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let gone = super::super::webhook_for_tests(&store, "erp").id;
        let plain = append(&store, w, None);
        let keyed = append(&store, w, Some("k"));
        let mut later = append(&store, w, None);
        append(&store, gone, None);
        assert_eq!(records(&store), 0);
        // Deleted with its delivery held: nothing of it comes back.
        assert_eq!(store.delete_webhook(gone).expect("delete"), 1);
        store.flush().expect("flush");
        // The process ends without a word to the store: its memory is gone.
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(records(&store), 3);
        assert_eq!(store.delivery(plain.id).expect("read"), Some(plain.clone()));
        assert_eq!(store.delivery(keyed.id).expect("read"), Some(keyed.clone()));
        assert_eq!(queued(&store, w), vec![plain.id, keyed.id, later.id]);
        assert!(queued(&store, gone).is_empty());
        // A record written since is not overwritten by the event's.
        let change = recorded(&later, false);
        assert!(
            store
                .record_attempts(w, std::slice::from_ref(&change), None)
                .expect("record")
        );
        later = change.after;
        store.flush().expect("flush");
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(store.delivery(later.id).expect("read"), Some(later));
    }

    #[test]
    fn the_keeper_and_a_clean_stop_write_the_records_of_what_they_let_go_of() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let first = append(&store, w, None);
        // Overdue: the keeper gives it its record, then its entry.
        store
            .spill_held_before(first.queue_ms + SPILL_AFTER_MS + 1)
            .expect("spill");
        assert_eq!(records(&store), 1);
        assert_eq!(queue_entries(&store), 1);
        assert_eq!(store.delivery(first.id).expect("read"), Some(first.clone()));
        let second = append(&store, w, Some("k"));
        store.spill_fresh_all().expect("clean stop");
        assert_eq!(records(&store), 2);
        assert_eq!(
            store.delivery(second.id).expect("read"),
            Some(second.clone())
        );
        assert_eq!(queued(&store, w), vec![first.id, second.id]);
        assert_eq!(store.fresh.count(w).0, 0);
    }

    #[test]
    fn an_event_stored_again_gives_its_held_deliveries_their_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let w = webhook(&store);
        let added = super::super::webhook_for_tests(&store, "erp").id;
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({"n": 1}));
        let first = Delivery::new(&event, w, 0);
        store
            .append(&event, std::slice::from_ref(&first))
            .expect("append");
        assert_eq!(records(&store), 0);
        // Stored again from `pending/` (the store closed before the barrier): `w` has its
        // delivery; `added`, a webhook added since, gets one. The record written again
        // lists deliveries by id only, so the held one gets its own record first.
        let again = [Delivery::new(&event, w, 0), Delivery::new(&event, added, 0)];
        store.append_again(&event, &again).expect("again");
        assert_eq!(records(&store), 2);
        store.flush().expect("flush");
        // A crash: memory is gone, the records are not.
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(store.delivery(first.id).expect("read"), Some(first.clone()));
        assert_eq!(
            store.deliveries_of_event(event.id).expect("read"),
            vec![first.clone(), again[1].clone()]
        );
        assert_eq!(queued(&store, w), vec![first.id]);
        assert_eq!(queued(&store, added), vec![again[1].id]);
    }

    #[test]
    fn unwritten_records_are_found_by_the_second_of_their_ids() {
        use uuid::{NoContext, Timestamp};
        let fresh = Fresh::default();
        fresh.reset(Some(0));
        let topic = Topic::parse("order.created").expect("topic");
        let w = Uuid::now_v7();
        let at = |ms: u64| {
            let nanos = u32::try_from(ms % 1000).expect("ms") * 1_000_000;
            Uuid::new_v7(Timestamp::from_unix(NoContext, ms / 1000, nanos))
        };
        let second: u64 = 1_800_000_000;
        let mut held = Vec::new();
        // Either side of both ends of the second.
        for ms in [
            second * 1000 - 1,
            second * 1000,
            second * 1000 + 999,
            (second + 1) * 1000,
        ] {
            let mut event = Event::new(&topic, "r", serde_json::json!({}));
            event.id = at(ms);
            let mut d = Delivery::new(&event, w, 0);
            d.id = at(ms);
            let reservation = fresh.reserve(std::slice::from_ref(&d), ms).expect("room");
            reservation.add(std::slice::from_ref(&d), Unwritten::Yes);
            held.push(d);
        }
        let ids = |second: u64| -> Vec<Uuid> {
            fresh
                .unwritten_in_second(w, second)
                .iter()
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(ids(second), vec![held[1].id, held[2].id]);
        assert_eq!(ids(second - 1), vec![held[0].id]);
        assert_eq!(ids(second + 1), vec![held[3].id]);
        assert!(fresh.unwritten_in_second(Uuid::now_v7(), second).is_empty());
        assert!(fresh.unwritten_in_second(w, u64::MAX).is_empty());
        // Let go of, it is found no more.
        assert!(fresh.remove(w, held[1].queue_ms, held[1].id));
        assert_eq!(ids(second), vec![held[2].id]);
        assert!(fresh.unwritten(held[1].id).is_none());
    }
}
