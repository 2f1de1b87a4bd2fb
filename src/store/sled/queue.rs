//! Deliveries, the queue and the attempt log.
//!
//! A queue entry (`q` webhook, queue ms, delivery id) is written after the delivery it points
//! to and removed after the state that replaces it; an entry that no longer matches its
//! delivery (left by a crash between two writes) is dropped when read.

use std::collections::HashSet;
use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{SledStore, fresh, keys, record};
use crate::event::{Attempt, Delivery, DeliveryState};
use crate::store::{DeliveryPage, DeliveryQuery, KeyHeads, QueueStats, Recorded, StoreError};

/// How deep [`SledStore::claim_key_heads`] looks into a webhook's queue in one round: keys
/// whose first delivery is further back wait until those in front are sent.
const MAX_KEY_SCAN: usize = 10_000;
use crate::webhook::Webhook;

/// The webhooks known to have no `q` entries, so that the scheduler's rounds do not scan an
/// empty range (most rounds find none: new deliveries are held in memory). A scan of the
/// whole queue that finds none marks its webhook, with the count of entries written for it
/// when the scan began; an entry written since (counted after its write) unmarks it.
#[derive(Debug, Default)]
pub(super) struct EmptyQueues(std::sync::Mutex<Counts>);

#[derive(Debug, Default)]
struct Counts {
    by_webhook: std::collections::HashMap<Uuid, Written>,
    /// Counts [`EmptyQueues::clear`]s: a scan begun before one tells nothing after it.
    generation: u64,
}

#[derive(Debug, Default)]
struct Written {
    entries: u64,
    none_at: Option<u64>,
}

/// A webhook's count of `q` entries written, with the generation it belongs to (see
/// [`EmptyQueues::written_now`]).
type WrittenAt = (u64, u64);

/// What [`EmptyQueues::before_scan`] hands to [`EmptyQueues::found_none`].
pub(super) struct Ticket {
    generation: u64,
    entries: u64,
}

impl EmptyQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a `q` entry written for `webhook`.
    fn written(&self, webhook: Uuid) {
        self.lock().by_webhook.entry(webhook).or_default().entries += 1;
    }

    /// The generation and the count of `webhook`'s `q` entries written so far: opening its
    /// entries again is needed when this changed.
    fn written_now(&self, webhook: Uuid) -> WrittenAt {
        let counts = self.lock();
        (
            counts.generation,
            counts.by_webhook.get(&webhook).map_or(0, |w| w.entries),
        )
    }

    /// Whether `webhook` has no `q` entries.
    pub(super) fn none(&self, webhook: Uuid) -> bool {
        self.lock()
            .by_webhook
            .get(&webhook)
            .is_some_and(|w| w.none_at == Some(w.entries))
    }

    /// Taken before scanning `webhook`'s whole queue, for [`EmptyQueues::found_none`].
    pub(super) fn before_scan(&self, webhook: Uuid) -> Ticket {
        let counts = self.lock();
        Ticket {
            generation: counts.generation,
            entries: counts.by_webhook.get(&webhook).map_or(0, |w| w.entries),
        }
    }

    /// A scan begun with `ticket` found no entry.
    pub(super) fn found_none(&self, webhook: Uuid, ticket: &Ticket) {
        let mut counts = self.lock();
        if counts.generation == ticket.generation {
            counts.by_webhook.entry(webhook).or_default().none_at = Some(ticket.entries);
        }
    }

    /// Forgets everything (the database was reopened, or a webhook deleted).
    pub(super) fn clear(&self) {
        let mut counts = self.lock();
        counts.by_webhook.clear();
        counts.generation += 1;
    }
}

impl SledStore {
    /// Writes `d`'s queue entry.
    pub(super) fn put_queue_entry(&self, db: &sled::Db, d: &Delivery) -> Result<(), StoreError> {
        self.put_queue_entry_at(db, d.webhook_id, keys::queue(d), keys::queue_value(d))
    }

    /// Writes the queue entry `key` (of `webhook`'s queue) with `value`.
    pub(super) fn put_queue_entry_at(
        &self,
        db: &sled::Db,
        webhook: Uuid,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        db.insert(key, value)?;
        self.empty_queues.written(webhook);
        Ok(())
    }

    pub fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        delivery_in(&*self.db()?, &self.fresh, id)
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub fn deliveries_of(&self, webhook: Uuid, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let db = self.db()?;
        let mut out = Vec::new();
        self.each_delivery_by_second(&db, webhook, |d| {
            out.push(d);
            out.len() < limit
        })?;
        // Deliveries stored before `X` entries, and any whose id is not a UUIDv7, are listed
        // by `x` entries: both lists are newest first, merged by id (UUIDv7: by time).
        let mut listed = Vec::new();
        each_delivery_by_entry(&db, &self.fresh, webhook, |d| {
            listed.push(d);
            listed.len() < limit
        })?;
        if !listed.is_empty() {
            out.extend(listed);
            out.sort_by_key(|d| std::cmp::Reverse(d.id));
            out.dedup_by_key(|d| d.id);
            out.truncate(limit);
        }
        Ok(out)
    }

    /// `webhook`'s deliveries found through its `X` seconds, newest first, while `more` asks
    /// for more (each decoded: see [`SledStore::each_listed_by_second`]).
    pub(super) fn each_delivery_by_second(
        &self,
        db: &sled::Db,
        webhook: Uuid,
        more: impl FnMut(Delivery) -> bool,
    ) -> Result<(), StoreError> {
        each_delivery_by_second(db, &self.fresh, webhook, more)
    }

    /// The attempts of one delivery, first attempt first.
    pub fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
        self.db()?
            .scan_prefix(keys::key(keys::ATTEMPT, &[delivery.as_bytes()]))
            .map(|entry| {
                let (k, v) = entry?;
                record::decode_attempt(&k, &v)
            })
            .collect()
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
        let db = self.db()?;
        let batch = limit.saturating_add(skip.len());
        let mut out = Vec::new();
        let merged = Merged::new(&db, self, webhook, until_ms, batch);
        for queued in merged {
            if out.len() >= limit {
                break;
            }
            let queued = queued?;
            if skip.contains(&queued.id()) {
                continue;
            }
            if let Some(d) = self.still_queued(webhook, &queued)?
                && d.due_ms <= until_ms
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The delivery `queued` stands for, if it is still queued there. An entry left behind
    /// (by a crash between two writes of `record_attempts`, or a write that failed) is let
    /// go: the delivery has moved on or is gone. Dropping a `q` entry is tidying only, so a
    /// refused write (a full disk) does not fail the read. A delivery held in memory whose
    /// record is queued elsewhere gets its `q` entry (it has one unless a write failed).
    fn still_queued(&self, webhook: Uuid, queued: &Queued) -> Result<Option<Delivery>, StoreError> {
        let d = self.delivery(queued.id())?;
        match queued {
            Queued::Entry { key, .. } => match d {
                Some(d) if d.state == DeliveryState::Pending && keys::queue(&d) == key.as_ref() => {
                    Ok(Some(d))
                }
                // Pending at another place (an entry written for a held delivery whose
                // record had moved on in a write that failed halfway): queued where its record
                // says before this entry goes; while that cannot be written, this one stays.
                Some(d)
                    if d.state == DeliveryState::Pending
                        && d.webhook_id == webhook
                        && self.write(|db| self.put_queue_entry(db, &d)).is_err() =>
                {
                    Ok(None)
                }
                _ => {
                    let _ = self.write(|db| Ok(db.remove(key)?));
                    Ok(None)
                }
            },
            Queued::Held(held) => {
                match d {
                    Some(d)
                        if d.state == DeliveryState::Pending
                            && d.webhook_id == webhook
                            && d.queue_ms == held.queue_ms =>
                    {
                        return Ok(Some(d));
                    }
                    // Kept here while its entry cannot be written (a full disk): the keeper
                    // tries again.
                    Some(d)
                        if d.state == DeliveryState::Pending
                            && d.webhook_id == webhook
                            && self.write(|db| self.put_queue_entry(db, &d)).is_err() =>
                    {
                        return Ok(None);
                    }
                    _ => {}
                }
                self.fresh.remove(webhook, held.queue_ms, held.id);
                Ok(None)
            }
        }
    }

    /// The head of each key's queue that is due by `now_ms`, at most `limit`, and when the
    /// first head not yet due is due (see [`crate::store::Store::claim_key_heads`]). Reads
    /// the keys from the queue entries' values (and the entries in memory) and only the
    /// heads' records; looks at most [`MAX_KEY_SCAN`] entries deep.
    pub fn claim_key_heads(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<KeyHeads, StoreError> {
        let mut heads = KeyHeads::default();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let db = self.db()?;
        // As `next_queued` does: a whole queue read without a `q` entry marks the webhook's
        // entries empty, so the next rounds read memory only.
        let ticket = self.empty_queues.before_scan(webhook);
        let (mut read, mut entries, mut whole) = (0usize, false, true);
        let merged = Merged::new(&db, self, webhook, u64::MAX, 256);
        for queued in merged {
            if heads.ready.len() >= limit || read >= MAX_KEY_SCAN {
                whole = false;
                break;
            }
            read += 1;
            let queued = queued?;
            entries |= matches!(queued, Queued::Entry { .. });
            // A key is seen at its first entry: later ones wait behind it.
            if let Some(key) = queued.ordering_key() {
                if !seen.insert(key.to_vec()) {
                    continue;
                }
            }
            if skip.contains(&queued.id()) {
                continue;
            }
            match self.still_queued(webhook, &queued)? {
                Some(d) => {
                    if d.due_ms <= now_ms {
                        heads.ready.push(d);
                    } else {
                        heads.next_due_ms =
                            Some(heads.next_due_ms.map_or(d.due_ms, |n| n.min(d.due_ms)));
                    }
                }
                // A stale entry: it holds no key's place.
                None => {
                    if let Some(key) = queued.ordering_key() {
                        seen.remove(key);
                    }
                }
            }
        }
        if whole && !entries {
            self.empty_queues.found_none(webhook, &ticket);
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
        let mut next: Option<u64> = self.fresh.next_at(webhook, skip);
        if self.empty_queues.none(webhook) {
            return Ok(next);
        }
        let ticket = self.empty_queues.before_scan(webhook);
        let mut seen = false;
        for entry in self
            .db()?
            .scan_prefix(keys::key(keys::QUEUE, &[webhook.as_bytes()]))
            .take(MAX_KEY_SCAN)
        {
            let (k, _) = entry?;
            seen = true;
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
        if !seen {
            self.empty_queues.found_none(webhook, &ticket);
        }
        Ok(next)
    }

    /// How many deliveries are queued for `webhook`, and when the oldest was created (read
    /// from the UUIDv7 delivery ids in the keys, so no record is decoded).
    pub fn queue_stats(&self, webhook: Uuid) -> Result<QueueStats, StoreError> {
        Ok(self.with_held(queue_stats_in(&*self.db()?, webhook)?, webhook))
    }

    /// `stats` of the queue entries with the deliveries held in memory added.
    pub(super) fn with_held(&self, mut stats: QueueStats, webhook: Uuid) -> QueueStats {
        let (held, oldest) = self.fresh.count(webhook);
        stats.pending += held;
        stats.oldest_ms = match (stats.oldest_ms, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        stats
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
                // Whatever memory still holds of it would be sent again and again.
                self.fresh.forget_webhook(webhook);
                return Ok(false);
            }
            // Single writes in a safe order (see `append`): the new state first, the new queue
            // entry next, the old queue entry last. A crash in between leaves at worst an extra
            // queue entry, which `queued` drops, or a delivery sent once more.
            for c in changes {
                db.insert(
                    keys::attempt(c.attempt.delivery_id, c.attempt.number),
                    record::encode_attempt(&c.attempt)?,
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
                    self.put_queue_entry(db, &c.after)?;
                }
                // A delivery held in memory has no entry to remove: it is let go below.
                if self.fresh.remove(webhook, c.before.queue_ms, c.before.id) {
                    continue;
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
        let requeued = self.write(|db| {
            // Deleted with its webhook, whose history the keeper has not reached yet.
            if !db.contains_key(keys::webhook(d.webhook_id))? {
                return Ok(false);
            }
            // The same order as `record_attempts`: state, new entry, old entry.
            db.insert(keys::delivery(d.id), record::encode(&d)?)?;
            self.put_queue_entry(db, &d)?;
            // One held in memory has no entry to remove.
            let held = delivery.state == DeliveryState::Pending
                && self
                    .fresh
                    .remove(delivery.webhook_id, delivery.queue_ms, delivery.id);
            if delivery.state == DeliveryState::Pending
                && !held
                && keys::queue(delivery) != keys::queue(&d)
            {
                db.remove(keys::queue(delivery))?;
            }
            Ok(true)
        })?;
        Ok(requeued.then_some(d))
    }
}

/// A place in a webhook's queue: a `q` entry, or a delivery held in memory.
enum Queued {
    Entry { key: sled::IVec, value: sled::IVec },
    Held(fresh::Held),
}

impl Queued {
    fn id(&self) -> Uuid {
        match self {
            Queued::Entry { key, .. } => keys::trailing_id(key).unwrap_or_default(),
            Queued::Held(h) => h.id,
        }
    }

    /// Queue time and id: the queue's order.
    fn place(&self) -> (u64, Uuid) {
        match self {
            Queued::Entry { key, .. } => entry_place(key),
            Queued::Held(h) => (h.queue_ms, h.id),
        }
    }

    fn ordering_key(&self) -> Option<&[u8]> {
        match self {
            Queued::Entry { value, .. } => keys::queue_value_key(value),
            Queued::Held(h) => h.entry.key.as_deref().map(str::as_bytes),
        }
    }
}

/// Queue time and id of a `q` entry's key: the queue's order.
fn entry_place(key: &[u8]) -> (u64, Uuid) {
    (
        keys::queue_ms(key).unwrap_or_default(),
        keys::trailing_id(key).unwrap_or_default(),
    )
}

/// A webhook's `q` entries and its deliveries held in memory, merged in queue order. The
/// held ones are read a batch at a time, each after the last place read, so that however many
/// of them a reader passes over (in flight, stale, not due), none is overtaken by a later
/// entry.
///
/// A delivery can move from memory to a `q` entry while it is read (the keeper's spill, a
/// retry's write): its entry is written and counted ([`EmptyQueues`]) before it leaves
/// memory. So after each batch of held deliveries is read, the count is looked at: the
/// entries are first read once the webhook is not known to have none, and read again from
/// just after the last place returned whenever the count changed since they were opened (a
/// sled iterator works on a copy of its current leaf and would miss such an entry). Nothing
/// at or before the last place returned is returned again (an entry written meanwhile for a
/// delivery already returned from memory, or one found in both for a moment).
struct Merged<'a> {
    db: &'a sled::Db,
    store: &'a SledStore,
    webhook: Uuid,
    until_ms: u64,
    batch: usize,
    /// The `q` entries, once opened, with the count of entries written when they were.
    entries: Option<(std::iter::Peekable<sled::Iter>, WrittenAt)>,
    held: std::collections::VecDeque<fresh::Held>,
    /// The place of the last held entry read.
    held_after: Option<(u64, Uuid)>,
    held_done: bool,
    /// Whether a batch of held deliveries was read since the count was last looked at.
    look: bool,
    /// The place of the last one returned.
    last: Option<(u64, Uuid)>,
}

impl<'a> Merged<'a> {
    /// `webhook`'s `q` entries and held deliveries queued by `until_ms`, the held ones read
    /// `batch` at a time.
    fn new(
        db: &'a sled::Db,
        store: &'a SledStore,
        webhook: Uuid,
        until_ms: u64,
        batch: usize,
    ) -> Self {
        Self {
            db,
            store,
            webhook,
            until_ms,
            batch: batch.clamp(16, 1024),
            entries: None,
            held: std::collections::VecDeque::new(),
            held_after: None,
            held_done: false,
            look: true,
            last: None,
        }
    }

    /// The place of the next held delivery, reading the next batch when needed.
    fn next_held_place(&mut self) -> Option<(u64, Uuid)> {
        if self.held.is_empty() && !self.held_done {
            let more =
                self.store
                    .fresh
                    .entries(self.webhook, self.held_after, self.until_ms, self.batch);
            self.held_done = more.len() < self.batch;
            if let Some(h) = more.last() {
                self.held_after = Some((h.queue_ms, h.id));
            }
            self.held.extend(more);
            self.look = true;
        }
        self.held.front().map(|h| (h.queue_ms, h.id))
    }

    /// Opens the `q` entries (again) when the count says so (see above).
    fn look_at_entries(&mut self) {
        if !std::mem::take(&mut self.look) {
            return;
        }
        let written = self.store.empty_queues.written_now(self.webhook);
        let open = match &self.entries {
            None => !self.store.empty_queues.none(self.webhook),
            Some((_, at)) => *at != written,
        };
        if !open {
            return;
        }
        let start = match self.last {
            Some((queue_ms, id)) => {
                std::ops::Bound::Excluded(keys::queue_at(self.webhook, queue_ms, id))
            }
            None => std::ops::Bound::Included(keys::key(keys::QUEUE, &[self.webhook.as_bytes()])),
        };
        let end =
            std::ops::Bound::Included(keys::queue_at(self.webhook, self.until_ms, Uuid::max()));
        self.entries = Some((self.db.range((start, end)).peekable(), written));
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<Queued, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // Memory first, then the entries (see above).
            let held = self.next_held_place();
            self.look_at_entries();
            let entry = self.entries.as_mut().and_then(|(e, _)| e.peek());
            let from_entries = match (entry, held) {
                (None, None) => return None,
                (None, Some(_)) => false,
                (Some(Ok((key, _))), Some(place)) => entry_place(key) <= place,
                (Some(_), _) => true,
            };
            let queued = if from_entries {
                match self.entries.as_mut()?.0.next()? {
                    Ok((key, value)) => Queued::Entry { key, value },
                    Err(e) => return Some(Err(e.into())),
                }
            } else {
                Queued::Held(self.held.pop_front()?)
            };
            let place = queued.place();
            if self.last.is_some_and(|last| place <= last) {
                continue;
            }
            self.last = Some(place);
            return Some(Ok(queued));
        }
    }
}

/// How many deliveries are queued for `webhook`, and when the oldest was created.
pub(super) fn queue_stats_in(db: &sled::Db, webhook: Uuid) -> Result<QueueStats, StoreError> {
    let mut stats = QueueStats::default();
    for entry in db.scan_prefix(keys::key(keys::QUEUE, &[webhook.as_bytes()])) {
        let (k, _) = entry?;
        stats.pending += 1;
        if let Some(c) = keys::trailing_id(&k).and_then(keys::created_ms) {
            stats.oldest_ms = Some(stats.oldest_ms.map_or(c, |o| o.min(c)));
        }
    }
    Ok(stats)
}

/// The delivery `id`: its record, else held in memory without one (see `fresh::Unwritten`).
/// Once let go of, its record is written, before: so a miss in memory finds the record on a
/// second look.
pub(super) fn delivery_in(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    id: Uuid,
) -> Result<Option<Delivery>, StoreError> {
    let read = || -> Result<Option<Delivery>, StoreError> {
        match db.get(keys::delivery(id))? {
            Some(v) => Ok(Some(record::decode(id, &v)?)),
            None => Ok(None),
        }
    };
    if let Some(d) = read()? {
        return Ok(Some(d));
    }
    match fresh.unwritten(id) {
        Some(d) => Ok(Some(Delivery::clone(&d))),
        None => read(),
    }
}

/// One page of `webhook`'s deliveries, newest first, and how many match in all, counted up
/// to `q.count_up_to`: deliveries are visited until the page is read and more than that many
/// match (or the history ends), and only their state is read, unless they are on the page.
pub(super) fn deliveries_page_in(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    q: &DeliveryQuery,
) -> Result<DeliveryPage, StoreError> {
    if has_entries(db, webhook)? {
        return deliveries_page_with_entries(db, fresh, webhook, q);
    }
    let page = q.offset..q.offset.saturating_add(q.limit);
    let mut total: u64 = 0;
    let mut items = Vec::new();
    each_listed_by_second(db, fresh, webhook, |listed| {
        let state = match listed.state() {
            Ok(s) => s,
            Err(e) => {
                left_out(&e);
                return true;
            }
        };
        if q.state.is_some_and(|s| s != state) {
            return true;
        }
        // Counted whether or not the rest reads, so that every page counts alike and a
        // record that does not read leaves a gap on its page rather than shift the others.
        if usize::try_from(total).is_ok_and(|n| page.contains(&n)) {
            items.extend(listed.read());
        }
        total += 1;
        counts_on(total, q)
    })?;
    Ok(DeliveryPage {
        items,
        total: counted(total, q),
    })
}

/// Whether a listing that has counted `total` matches goes on: until the page is read and
/// more than `q` counts up to have matched.
fn counts_on(total: u64, q: &DeliveryQuery) -> bool {
    total <= q.count_up_to
        || usize::try_from(total).is_ok_and(|n| n < q.offset.saturating_add(q.limit))
}

/// A count of matches as a page reports it: `None` past what `q` counts up to.
fn counted(total: u64, q: &DeliveryQuery) -> Option<u64> {
    (total <= q.count_up_to).then_some(total)
}

/// [`deliveries_page_in`] for a webhook with deliveries listed by `x` entries (stores before
/// `X` entries, and ids that are not UUIDv7s): both lists read whole and merged, as before.
fn deliveries_page_with_entries(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    q: &DeliveryQuery,
) -> Result<DeliveryPage, StoreError> {
    let mut all = Vec::new();
    each_delivery_by_second(db, fresh, webhook, |d| {
        all.push(d);
        true
    })?;
    each_delivery_by_entry(db, fresh, webhook, |d| {
        all.push(d);
        true
    })?;
    all.sort_by_key(|d| std::cmp::Reverse(d.id));
    all.dedup_by_key(|d| d.id);
    all.retain(|d| q.state.is_none_or(|s| s == d.state));
    let total = counted(all.len() as u64, q);
    let items = all.into_iter().skip(q.offset).take(q.limit).collect();
    Ok(DeliveryPage { items, total })
}

/// `webhook`'s failed deliveries created in `[since, until)`, newest first: only their
/// state is read of the others.
pub(super) fn failed_deliveries_in(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Vec<Delivery>, StoreError> {
    let within = |d: &Delivery| {
        d.state == DeliveryState::Failed && d.created_at >= since && d.created_at < until
    };
    if has_entries(db, webhook)? {
        let mut page = deliveries_page_with_entries(
            db,
            fresh,
            webhook,
            &DeliveryQuery {
                state: Some(DeliveryState::Failed),
                offset: 0,
                limit: usize::MAX,
                count_up_to: u64::MAX,
            },
        )?;
        page.items.retain(within);
        return Ok(page.items);
    }
    let mut out = Vec::new();
    each_listed_by_second(db, fresh, webhook, |listed| {
        match listed.state() {
            Ok(DeliveryState::Failed) => {}
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "a delivery record cannot be read; not recovered");
                return true;
            }
        }
        match listed.delivery() {
            Ok(d) if within(&d) => out.push(d),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a delivery record cannot be read; not recovered");
            }
        }
        true
    })?;
    Ok(out)
}

/// A delivery as a listing through `X` seconds meets it.
pub(super) enum Listed<'a> {
    /// A binary record of the webhook's, not decoded.
    Record(Uuid, &'a [u8]),
    /// A record of an earlier form, decoded to tell its webhook.
    Decoded(Delivery),
    /// Held in memory without a record (see `fresh::Unwritten`).
    Held(Arc<Delivery>),
}

impl Listed<'_> {
    /// Its state, without decoding the rest of a binary record.
    pub(super) fn state(&self) -> Result<DeliveryState, StoreError> {
        match self {
            Listed::Record(id, bytes) => record::state_of(*id, bytes),
            Listed::Decoded(d) => Ok(d.state),
            Listed::Held(d) => Ok(d.state),
        }
    }

    /// [`Listed::delivery`], or `None` (said in the log) when its record does not read.
    fn read(self) -> Option<Delivery> {
        self.delivery().inspect_err(left_out).ok()
    }

    pub(super) fn delivery(self) -> Result<Delivery, StoreError> {
        match self {
            Listed::Record(id, bytes) => record::decode(id, bytes),
            Listed::Decoded(d) => Ok(d),
            Listed::Held(d) => Ok(Delivery::clone(&d)),
        }
    }
}

/// Says that a delivery record that cannot be read is left out of a listing (its webhook's,
/// or another's: its own reads report it).
fn left_out(e: &StoreError) {
    tracing::warn!(error = %e, "a delivery record cannot be read; left out of the webhook's deliveries");
}

/// `webhook`'s deliveries found through its `X` seconds, newest first and decoded, while
/// `more` asks for more (see [`each_listed_by_second`]).
pub(super) fn each_delivery_by_second(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    mut more: impl FnMut(Delivery) -> bool,
) -> Result<(), StoreError> {
    each_listed_by_second(db, fresh, webhook, |listed| {
        listed.read().is_none_or(&mut more)
    })
}

/// `webhook`'s deliveries listed by `x` entries, newest first, while `more` asks for more.
fn each_delivery_by_entry(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    mut more: impl FnMut(Delivery) -> bool,
) -> Result<(), StoreError> {
    let prefix = keys::key(keys::BY_WEBHOOK, &[webhook.as_bytes()]);
    for entry in db.scan_prefix(prefix).rev() {
        let (k, _) = entry?;
        let Some(id) = keys::trailing_id(&k) else {
            continue;
        };
        if let Some(d) = delivery_in(db, fresh, id)?
            && !more(d)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether deliveries of `webhook` are listed by `x` entries (stores before `X` entries, and
/// deliveries whose id is not a UUIDv7).
fn has_entries(db: &sled::Db, webhook: Uuid) -> Result<bool, StoreError> {
    let prefix = keys::key(keys::BY_WEBHOOK, &[webhook.as_bytes()]);
    Ok(db.scan_prefix(prefix).keys().next().transpose()?.is_some())
}

/// `webhook`'s deliveries found through its `X` seconds, newest first, while `more` asks for
/// more. A second's range holds every webhook's deliveries made in it: a binary record's
/// webhook is read without decoding the rest, and the rest is left to `more`.
pub(super) fn each_listed_by_second(
    db: &sled::Db,
    fresh: &fresh::Fresh,
    webhook: Uuid,
    mut more: impl FnMut(Listed<'_>) -> bool,
) -> Result<(), StoreError> {
    let prefix = keys::key(keys::WEBHOOK_SECOND, &[webhook.as_bytes()]);
    for entry in db.scan_prefix(prefix).rev() {
        let (k, _) = entry?;
        let Some(second) = keys::second_of_key(&k) else {
            continue;
        };
        // Deliveries held in memory without their records are listed with the rest, newest
        // first: taken before the records are read, so that one let go of meanwhile is found
        // by its record (and listed once).
        let mut unwritten = fresh.unwritten_in_second(webhook, second);
        unwritten.sort_by_key(|d| std::cmp::Reverse(d.id));
        let mut unwritten = unwritten.into_iter().peekable();
        let (start, end) = keys::deliveries_in_second(second);
        for entry in db.range(start..end).rev() {
            let (k, v) = entry?;
            let id = keys::trailing_id(&k).unwrap_or_default();
            let listed = match record::webhook_of(&v) {
                Some(w) if w != webhook => continue,
                Some(_) => Listed::Record(id, &v),
                None => match record::decode(id, &v) {
                    Ok(d) if d.webhook_id == webhook => Listed::Decoded(d),
                    Ok(_) => continue,
                    // Whose it is cannot be told: listing this webhook goes on without it (it
                    // may be another webhook's; its own reads report it).
                    Err(e) => {
                        tracing::warn!(delivery = %id, error = %e, "a delivery record cannot be read; left out of the webhook's deliveries");
                        continue;
                    }
                },
            };
            while let Some(held) = unwritten.next_if(|h| h.id >= id) {
                if held.id != id && !more(Listed::Held(held)) {
                    return Ok(());
                }
            }
            if !more(listed) {
                return Ok(());
            }
        }
        for held in unwritten {
            if !more(Listed::Held(held)) {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use uuid::{NoContext, Timestamp};

    use super::super::{open_for_tests, reopen_for_tests, webhook_for_tests};
    use super::*;
    use crate::event::{Event, Topic};

    #[test]
    fn a_keyed_read_of_a_queue_without_entries_marks_it_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = webhook_for_tests(&store, "crm");
        let w = webhook.id;
        let topic = Topic::parse("order.created").expect("topic");
        let keyed = |delay: u64, key: &str| {
            let event = Event::new(&topic, "r", serde_json::json!({}));
            let mut d = Delivery::new(&event, w, delay);
            d.ordering_key = Some(key.to_owned());
            store
                .append(&event, std::slice::from_ref(&d))
                .expect("append");
            d
        };
        // A second ahead: every delivery made by then is due.
        let now = || fresh::now_ms() + 1_000;
        let none = HashSet::new();
        // Held in memory only.
        keyed(0, "a");
        keyed(0, "b");
        assert!(!store.empty_queues.none(w), "not read yet");
        let heads = store.claim_key_heads(w, now(), 10, &none).expect("read");
        assert_eq!(heads.ready.len(), 2);
        assert!(
            store.empty_queues.none(w),
            "the whole queue was read: no entries"
        );
        // One due in an hour gets a `q` entry.
        let later = keyed(3_600_000, "c");
        assert!(!store.empty_queues.none(w));
        let heads = store.claim_key_heads(w, now(), 10, &none).expect("read");
        assert_eq!(heads.ready.len(), 2);
        assert_eq!(heads.next_due_ms, Some(later.due_ms), "the entry was read");
        assert!(!store.empty_queues.none(w), "it has an entry");
        // A read cut short by its limit says nothing about the rest.
        store.delete_webhook(w).expect("delete");
        store.put_webhook(&webhook).expect("webhook");
        keyed(0, "a");
        keyed(0, "b");
        let heads = store.claim_key_heads(w, now(), 1, &none).expect("read");
        assert_eq!(heads.ready.len(), 1);
        assert!(!store.empty_queues.none(w), "not read to its end");
    }

    #[test]
    fn a_deleted_webhook_leaves_no_count_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = webhook_for_tests(&store, "crm");
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({}));
        // A delivery due in an hour is not held in memory: it gets a `q` entry, counted.
        let d = Delivery::new(&event, webhook.id, 3_600_000);
        store
            .append(&event, std::slice::from_ref(&d))
            .expect("append");
        let before = store.empty_queues.written_now(webhook.id);
        assert_eq!(before.1, 1);
        store.delete_webhook(webhook.id).expect("delete");
        assert!(store.empty_queues.lock().by_webhook.is_empty());
        assert_ne!(
            store.empty_queues.written_now(webhook.id).0,
            before.0,
            "a reader that opened the queue before opens it again"
        );
    }

    #[test]
    fn a_delivery_that_leaves_memory_while_its_queue_is_read_is_not_overtaken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = webhook_for_tests(&store, "crm");
        let w = webhook.id;
        let topic = Topic::parse("order.created").expect("topic");
        let all: Vec<Delivery> = (0..40)
            .map(|i| {
                let event = Event::new(&topic, "r", serde_json::json!({"i": i}));
                let d = Delivery::new(&event, w, 0);
                store
                    .append(&event, std::slice::from_ref(&d))
                    .expect("append");
                d
            })
            .collect();
        // The first waits for a retry at its own place: the queue has an entry.
        let mut retry = crate::store::contract::recorded(&all[0], 1, false);
        retry.after.queue_ms = all[0].queue_ms;
        assert!(store.record_attempts(w, &[retry], None).expect("record"));
        let db = store.db().expect("db");
        let mut merged = Merged::new(&db, &store, w, u64::MAX, 16);
        // The entry and the first batch of 16 held ones.
        let first: Vec<Uuid> = merged
            .by_ref()
            .take(17)
            .map(|q| q.expect("read").id())
            .collect();
        assert_eq!(first, all[..17].iter().map(|d| d.id).collect::<Vec<_>>());
        // Now the keeper gives the next one its entry and lets go of it.
        store.put_queue_entry(&db, &all[17]).expect("q");
        assert!(store.fresh.remove(w, all[17].queue_ms, all[17].id));
        let rest: Vec<Uuid> = merged.map(|q| q.expect("read").id()).collect();
        assert_eq!(rest, all[17..].iter().map(|d| d.id).collect::<Vec<_>>());
    }

    /// The current Unix second: each test reads it once and places its ids by it.
    fn now() -> u64 {
        u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).expect("now")
    }

    /// A delivery to `webhook` whose id was made in Unix `second`, `ms` into it (`None`: a
    /// UUIDv4, which has no time).
    fn delivery(webhook: Uuid, second: Option<u64>, ms: u32) -> (Event, Delivery) {
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "r", serde_json::json!({"ms": ms}));
        let mut d = Delivery::new(&event, webhook, 0);
        d.id = match second {
            Some(second) => Uuid::new_v7(Timestamp::from_unix(NoContext, second, ms * 1_000_000)),
            None => Uuid::new_v4(),
        };
        (event, d)
    }

    fn keys_under(store: &SledStore, prefix: u8) -> usize {
        store.db().expect("db").scan_prefix([prefix]).count()
    }

    fn newest_first(mut ds: Vec<Delivery>) -> Vec<Delivery> {
        ds.sort_by_key(|d| std::cmp::Reverse(d.id));
        ds
    }

    #[test]
    fn a_webhook_lists_its_deliveries_through_one_entry_per_second() {
        let now = now();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // Interleaved in three seconds, one UUIDv4 (listed by an `x` entry of its own).
        // The first and last millisecond of a second are in it.
        let plan = [
            (a, Some(now - 30), 0),
            (b, Some(now - 30), 500),
            (a, Some(now - 30), 999),
            (a, Some(now - 29), 0),
            (b, Some(now - 27), 999),
            (a, Some(now - 27), 0),
            (a, None, 0),
            (a, Some(now - 27), 999),
        ];
        let mut stored = Vec::new();
        for (webhook, ago, n) in plan {
            let (event, d) = delivery(webhook, ago, n);
            store
                .append(&event, std::slice::from_ref(&d))
                .expect("append");
            stored.push(d);
        }
        // a: seconds 30, 29, 27; b: 30, 27.
        assert_eq!(keys_under(&store, keys::WEBHOOK_SECOND), 5);
        assert_eq!(keys_under(&store, keys::BY_WEBHOOK), 1);
        let of = |w: Uuid| {
            newest_first(
                stored
                    .iter()
                    .filter(|d| d.webhook_id == w)
                    .cloned()
                    .collect(),
            )
        };
        assert_eq!(store.deliveries_of(a, 100).expect("list"), of(a));
        assert_eq!(store.deliveries_of(b, 100).expect("list"), of(b));
        assert_eq!(store.deliveries_of(a, 2).expect("list"), of(a)[..2]);
        assert_eq!(store.deliveries_of(a, 0).expect("list"), []);
        assert_eq!(store.deliveries_of(Uuid::now_v7(), 10).expect("list"), []);
    }

    /// Three seconds of 600 deliveries each to `gone`, every other one pending (with its
    /// queue entry), each with an attempt, a `v` entry and both attempt index entries; and
    /// one pending delivery to `kept` in the same seconds with all of those too.
    fn two_histories(store: &SledStore, gone: Uuid, kept: Uuid, first: u64) -> Delivery {
        let db = store.db().expect("db");
        let write = |d: &Delivery| write_history(store, d, first);
        for second in first..first + 3 {
            for ms in 0..600 {
                let (_, mut d) = delivery(gone, Some(second), ms);
                if ms % 2 == 0 {
                    d.state = DeliveryState::Delivered;
                }
                write(&d);
            }
            db.insert(keys::webhook_second(gone, second), &[] as &[u8])
                .expect("X");
        }
        let (_, other) = delivery(kept, Some(first + 1), 5);
        write(&other);
        db.insert(keys::webhook_second(kept, first + 1), &[] as &[u8])
            .expect("X");
        other
    }

    /// `d`'s record, with its queue entry when pending, a `v` entry, an attempt, and both
    /// attempt index entries (at `second`).
    fn write_history(store: &SledStore, d: &Delivery, second: u64) {
        let db = store.db().expect("db");
        if d.state == DeliveryState::Pending {
            store.put_queue_entry(&db, d).expect("q");
        }
        db.insert(keys::delivery(d.id), record::encode(d).expect("encode"))
            .expect("d");
        db.insert(keys::by_event(d), &[] as &[u8]).expect("v");
        db.insert(
            keys::key(keys::ATTEMPT, &[d.id.as_bytes(), &[0, 0, 0, 1]]),
            &[1u8] as &[u8],
        )
        .expect("a");
        for index in [keys::ATTEMPT_BY_TIME, keys::FAILURE_BY_TIME] {
            let at = keys::key(
                index,
                &[
                    d.webhook_id.as_bytes(),
                    &second.to_be_bytes(),
                    d.id.as_bytes(),
                ],
            );
            db.insert(at, &[] as &[u8]).expect("index");
        }
    }

    /// What is left once `gone`'s history is gone: `other`'s keys only.
    fn only_the_other_is_left(store: &SledStore, other: &Delivery) {
        assert_eq!(keys_under(store, keys::DELIVERY), 1);
        assert_eq!(store.delivery(other.id).expect("read"), Some(other.clone()));
        for prefix in [
            keys::QUEUE,
            keys::WEBHOOK_SECOND,
            keys::BY_EVENT,
            keys::ATTEMPT,
            keys::ATTEMPT_BY_TIME,
            keys::FAILURE_BY_TIME,
        ] {
            assert_eq!(keys_under(store, prefix), 1, "{}", char::from(prefix));
        }
        assert_eq!(keys_under(store, keys::DELETING), 0, "the mark is gone");
        assert_eq!(keys_under(store, keys::BY_WEBHOOK), 0);
    }

    #[test]
    fn a_deleted_webhooks_history_goes_in_parts_and_leaves_other_webhooks_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let first = now() - 100;
        let other = two_histories(&store, gone, kept, first);
        // A pending one listed both by its second and by an `x` entry (counted once), and one
        // listed by an `x` entry only (a store before `X` entries; an id without a time).
        let db = store.db().expect("db");
        let (_, twice) = delivery(gone, Some(first), 700);
        let (_, legacy) = delivery(gone, None, 0);
        for d in [&twice, &legacy] {
            write_history(&store, d, first);
            db.insert(keys::by_webhook(d), &[] as &[u8]).expect("x");
        }
        // And one held in memory without a record (its event's record lists it).
        let (event, held) = delivery(gone, Some(now()), 1);
        store
            .append(&event, std::slice::from_ref(&held))
            .expect("append");
        assert_eq!(store.fresh.unwritten(held.id).map(|d| d.id), Some(held.id));
        // A queue entry whose delivery is gone (an append racing an earlier deletion wrote it
        // last): nothing else lists it.
        db.insert(keys::queue_at(gone, 5, Uuid::now_v7()), &[] as &[u8])
            .expect("q");

        let mut deletion = store.delete_webhook_start(gone).expect("start");
        assert!(deletion.part().expect("part"));
        // An event matched meanwhile (a reload of the file that deletes the webhook lets it
        // run until the deletion ends): its delivery is let go of at the next part.
        let (event, late) = delivery(gone, Some(now()), 2);
        store
            .append(&event, std::slice::from_ref(&late))
            .expect("append");
        let mut parts = 1;
        while deletion.part().expect("part") {
            parts += 1;
        }
        assert_eq!(store.fresh.unwritten(late.id), None, "not held to be sent");
        // 1,800 deliveries, 3,600 index entries and the `X` entries, at most 1,000 a part.
        assert!(parts >= 6, "{parts} parts");
        assert_eq!(
            deletion.pending(),
            900 + 2 + 1 + 1,
            "the two listed by `x` entries once each, and the two held in memory"
        );
        drop(deletion);
        assert_eq!(store.fresh.unwritten(held.id), None);
        only_the_other_is_left(&store, &other);
    }

    /// A delivery held in memory for a webhook deleted meanwhile is sent at most once: the
    /// outcome that finds the webhook gone lets go of what memory holds of it.
    #[test]
    fn an_outcome_for_a_deleted_webhook_lets_go_of_what_memory_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let gone = Uuid::now_v7();
        let (_, before) = delivery(gone, Some(now()), 1);
        write_history(&store, &before, now());
        store.delete_webhook(gone).expect("delete");
        // Matched before the webhook was let go of (a reload runs it until its deletion ends).
        let (event, late) = delivery(gone, Some(now()), 2);
        store
            .append(&event, std::slice::from_ref(&late))
            .expect("append");
        let due = store
            .queued(gone, u64::MAX, 10, &HashSet::new())
            .expect("queued");
        assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), [late.id]);
        let mut after = late.clone();
        after.state = DeliveryState::Delivered;
        after.attempts = 1;
        let change = Recorded {
            attempt: crate::store::contract::recorded(&late, 1, true).attempt,
            before: late.clone(),
            after,
        };
        assert!(
            !store
                .record_attempts(gone, &[change], None)
                .expect("record")
        );
        assert!(
            store
                .queued(gone, u64::MAX, 10, &HashSet::new())
                .expect("queued")
                .is_empty(),
            "not sent again"
        );
    }

    /// [`Store::delete_webhook_in_background`], as the engine calls it.
    fn delete_in_background(store: &SledStore, id: Uuid) -> usize {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(crate::store::Store::delete_webhook_in_background(store, id))
            .expect("delete")
    }

    /// A webhook that left the config file is gone at once, with what memory holds of it and
    /// its pending deliveries counted; the keeper removes its history in rounds of ~100 ms.
    #[test]
    fn a_webhook_deleted_in_the_background_is_gone_at_once_and_its_history_soon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let other = two_histories(&store, gone, kept, now() - 100);
        store
            .put_webhook(&crate::webhook::Webhook {
                id: gone,
                ..crate::webhook::Webhook::new(
                    crate::webhook::WebhookSpec::example("gone"),
                    crate::webhook::Origin::Config,
                )
            })
            .expect("webhook");
        let (event, held) = delivery(gone, Some(now()), 1);
        store
            .append(&event, std::slice::from_ref(&held))
            .expect("append");
        let history = keys_under(&store, keys::DELIVERY);

        assert_eq!(
            delete_in_background(&store, gone),
            900 + 1,
            "the pending ones with records, and the one held in memory"
        );
        assert_eq!(store.webhook(gone).expect("read"), None, "gone at once");
        assert_eq!(store.fresh.unwritten(held.id), None, "not held to be sent");
        assert_eq!(keys_under(&store, keys::DELETING), 1);
        assert_eq!(
            keys_under(&store, keys::DELIVERY),
            history,
            "left to the keeper"
        );
        // The keeper's round: parts one after another while its time lasts.
        store
            .finish_deletions(std::time::Duration::ZERO)
            .expect("one part");
        let after_one = keys_under(&store, keys::DELIVERY);
        assert!(
            after_one < history && after_one > 1,
            "{after_one} of {history} left"
        );
        store
            .finish_deletions(std::time::Duration::from_secs(600))
            .expect("the rest in one round");
        only_the_other_is_left(&store, &other);
    }

    /// The keeper (`maintain`) finishes a deletion left to it.
    #[test]
    fn the_keeper_finishes_a_deletion_left_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let other = two_histories(&store, gone, kept, now() - 100);
        delete_in_background(&store, gone);
        for _ in 0..1_000 {
            if keys_under(&store, keys::DELETING) == 0 {
                break;
            }
            store.maintain();
        }
        only_the_other_is_left(&store, &other);
    }

    #[test]
    fn a_deletion_cut_short_is_finished_by_the_keeper_after_a_reopen_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
        let other = two_histories(&store, gone, kept, now() - 100);
        // Every key the deletion removes.
        let history = || {
            [
                keys::DELIVERY,
                keys::QUEUE,
                keys::WEBHOOK_SECOND,
                keys::BY_EVENT,
                keys::ATTEMPT,
                keys::ATTEMPT_BY_TIME,
                keys::FAILURE_BY_TIME,
            ]
            .into_iter()
            .map(|prefix| keys_under(&store, prefix))
            .sum::<usize>()
        };
        let mut deletion = store.delete_webhook_start(gone).expect("start");
        assert!(deletion.part().expect("part"));
        // A second caller racing the first (a reload of the file, say) ends first.
        drop(store.delete_webhook_start(gone).expect("start again"));
        let left = history();
        assert!(left > 7);
        store
            .finish_deletions(std::time::Duration::ZERO)
            .expect("keeper");
        assert_eq!(history(), left, "left to its caller while it runs");
        // The caller goes away after one more part: the keeper goes on.
        assert!(deletion.part().expect("part"));
        drop(deletion);
        let left = history();
        store
            .finish_deletions(std::time::Duration::ZERO)
            .expect("keeper");
        assert!(history() < left, "the keeper's part");
        // Then the process stops.
        drop(store);
        let store = reopen_for_tests(dir.path());
        assert_eq!(keys_under(&store, keys::DELETING), 1, "the mark survives");
        for _ in 0..100 {
            if keys_under(&store, keys::DELETING) == 0 {
                break;
            }
            store
                .finish_deletions(std::time::Duration::ZERO)
                .expect("keeper");
        }
        only_the_other_is_left(&store, &other);
    }

    /// A listing stops once its page is read and one more than it counts up to matched:
    /// a first page of a long history reads a bounded part of it.
    #[test]
    fn a_listing_stops_counting_past_its_page_and_its_count() {
        let q = |offset, limit, count_up_to| DeliveryQuery {
            state: None,
            offset,
            limit,
            count_up_to,
        };
        let last = |q: DeliveryQuery| (1..=1_000_000).find(|&n| !counts_on(n, &q));
        assert_eq!(last(q(0, 20, 10_000)), Some(10_001), "one past the count");
        assert_eq!(last(q(0, 20, 5)), Some(20), "the page is read first");
        assert_eq!(last(q(40, 20, 5)), Some(60), "a later page too");
        assert_eq!(last(q(0, 20, u64::MAX)), None, "counting every match");
        assert_eq!(last(q(0, usize::MAX, 0)), None, "a page without end");
    }

    #[test]
    fn a_record_that_does_not_read_counts_on_every_page_and_leaves_a_gap_on_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let db = store.db().expect("db");
        let (webhook, second) = (Uuid::now_v7(), now() - 10);
        let ds: Vec<Delivery> = (1..=3)
            .map(|ms| delivery(webhook, Some(second), ms).1)
            .collect();
        for d in &ds {
            db.insert(keys::delivery(d.id), record::encode(d).expect("encode"))
                .expect("d");
        }
        db.insert(keys::webhook_second(webhook, second), &[] as &[u8])
            .expect("X");
        // The middle one's record is cut just after its state: the state reads, the rest not.
        let whole = record::encode(&ds[1]).expect("encode");
        let head = 1 + 3 * 17 + 1 + ds[1].topic.len() + 1;
        db.insert(keys::delivery(ds[1].id), &whole[..head])
            .expect("cut");
        let page = |offset| {
            let q = DeliveryQuery {
                state: None,
                offset,
                limit: 1,
                count_up_to: 3,
            };
            deliveries_page_in(&db, &store.fresh, webhook, &q).expect("page")
        };
        let of = |items: Vec<Delivery>| DeliveryPage {
            items,
            total: Some(3),
        };
        assert_eq!(page(0), of(vec![ds[2].clone()]));
        assert_eq!(page(1), of(vec![]), "its own page has a gap");
        assert_eq!(page(2), of(vec![ds[0].clone()]), "the next is not shifted");
    }

    #[test]
    fn deliveries_listed_by_x_entries_of_earlier_stores_are_listed_with_the_new_ones() {
        let now = now();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = Uuid::now_v7();
        // As a store before `X` entries wrote it: a JSON record and an `x` entry.
        let (old_event, mut old) = delivery(webhook, Some(now - 100), 1);
        old.state = DeliveryState::Failed;
        let db = store.db().expect("db");
        db.insert(
            keys::delivery(old.id),
            serde_json::to_vec(&old).expect("json"),
        )
        .expect("d");
        db.insert(keys::by_webhook(&old), &[] as &[u8]).expect("x");
        db.insert(
            keys::event(old_event.id),
            serde_json::to_vec(&old_event).expect("json"),
        )
        .expect("e");
        let (e1, new1) = delivery(webhook, Some(now - 50), 2);
        let (e2, new2) = delivery(webhook, Some(now - 150), 3);
        store
            .append(&e1, std::slice::from_ref(&new1))
            .expect("append");
        store
            .append(&e2, std::slice::from_ref(&new2))
            .expect("append");
        let all = newest_first(vec![old.clone(), new1.clone(), new2.clone()]);
        assert_eq!(store.deliveries_of(webhook, 10).expect("list"), all);
        assert_eq!(store.deliveries_of(webhook, 2).expect("list"), all[..2]);
        assert_eq!(store.deliveries_of(webhook, 1).expect("list"), [new1]);
        // A page counts and lists them merged too, and filters them.
        let page = |state, offset, limit| {
            let q = DeliveryQuery {
                state,
                offset,
                limit,
                count_up_to: 3,
            };
            deliveries_page_in(&db, &store.fresh, webhook, &q).expect("page")
        };
        assert_eq!(
            page(None, 1, 5),
            DeliveryPage {
                items: all[1..].to_vec(),
                total: Some(3)
            }
        );
        assert_eq!(
            page(Some(DeliveryState::Failed), 0, 5),
            DeliveryPage {
                items: vec![old.clone()],
                total: Some(1)
            }
        );
        assert_eq!(
            page(Some(DeliveryState::Pending), 1, 5),
            DeliveryPage {
                items: vec![new2.clone()],
                total: Some(2)
            }
        );
        let failed = failed_deliveries_in(
            &db,
            &store.fresh,
            webhook,
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::now_utc() + time::Duration::HOUR,
        )
        .expect("failed");
        assert_eq!(failed, vec![old.clone()]);
    }

    #[test]
    fn deleting_a_webhook_removes_what_lists_it_and_a_new_delivery_is_listed_again() {
        let now = now();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut kept = Vec::new();
        for (webhook, ago, n) in [
            (a, Some(now - 5), 1),
            (b, Some(now - 5), 2),
            (a, Some(now), 3),
            (a, None, 4),
        ] {
            let (event, d) = delivery(webhook, ago, n);
            store
                .append(&event, std::slice::from_ref(&d))
                .expect("append");
            if webhook == b {
                kept.push(d);
            }
        }
        assert_eq!(store.delete_webhook(a).expect("delete"), 3);
        assert_eq!(store.deliveries_of(a, 10).expect("list"), []);
        assert_eq!(store.deliveries_of(b, 10).expect("list"), kept);
        assert_eq!(keys_under(&store, keys::WEBHOOK_SECOND), 1);
        assert_eq!(keys_under(&store, keys::BY_WEBHOOK), 0);
        assert_eq!(keys_under(&store, keys::DELIVERY), 1);
        assert_eq!(keys_under(&store, keys::QUEUE), 1);
        // The same webhook id again (a file webhook declared anew), in a second it had.
        let (event, d) = delivery(a, Some(now), 5);
        store
            .append(&event, std::slice::from_ref(&d))
            .expect("append");
        assert_eq!(store.deliveries_of(a, 10).expect("list"), [d]);
    }

    #[test]
    fn the_sweep_drops_a_seconds_entry_once_its_webhook_has_no_delivery_left_there() {
        let now = now();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let (a, b) = (
            webhook_for_tests(&store, "a").id,
            webhook_for_tests(&store, "b").id,
        );
        let (e_gone, gone) = delivery(a, Some(now - 7200), 1);
        let (e_pending, pending) = delivery(a, Some(now - 3600), 2);
        let (e_other, other) = delivery(b, Some(now - 7200), 3);
        let (e_recent, recent) = delivery(a, Some(now), 4);
        for (e, d) in [
            (&e_gone, &gone),
            (&e_pending, &pending),
            (&e_other, &other),
            (&e_recent, &recent),
        ] {
            store.append(e, std::slice::from_ref(d)).expect("append");
        }
        // `gone` was swept with its event (its delivery finished); `b`'s delivery in the same
        // second stays and must not keep `a`'s second listed.
        let db = store.db().expect("db");
        db.remove(keys::delivery(gone.id)).expect("remove");
        db.remove(keys::queue(&gone)).expect("remove");
        store.sweep(OffsetDateTime::now_utc()).expect("sweep");
        let left: Vec<_> = db
            .scan_prefix([keys::WEBHOOK_SECOND])
            .keys()
            .map(|k| {
                let k = k.expect("key");
                (
                    Uuid::from_slice(&k[1..17]).expect("id"),
                    keys::second_of_key(&k),
                )
            })
            .collect();
        let second = |d: &Delivery| (d.webhook_id, keys::id_second(d.id));
        assert_eq!(left.len(), 3, "{left:?}");
        for d in [&pending, &other, &recent] {
            assert!(left.contains(&second(d)), "{d:?} {left:?}");
        }
        assert_eq!(store.deliveries_of(a, 10).expect("list"), [recent, pending]);
    }

    #[test]
    fn deliveries_stored_from_several_threads_at_once_are_all_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = Uuid::now_v7();
        let stored: Vec<Delivery> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..150)
                            .map(|i| {
                                let topic = Topic::parse("order.created").expect("topic");
                                let event = Event::new(&topic, "r", serde_json::json!({"i": i}));
                                let d = Delivery::new(&event, webhook, 0);
                                store
                                    .append(&event, std::slice::from_ref(&d))
                                    .expect("append");
                                d
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(
            store.deliveries_of(webhook, usize::MAX).expect("list"),
            newest_first(stored)
        );
    }

    #[test]
    fn the_sweep_keeps_the_last_minutes_seconds() {
        let now = now();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_for_tests(dir.path());
        let webhook = Uuid::now_v7();
        let db = store.db().expect("db");
        for ago in [120, 10] {
            let (e, d) = delivery(webhook, Some(now - ago), 0);
            store.append(&e, std::slice::from_ref(&d)).expect("append");
            // Gone as the sweep would remove it with its event, its second's entry left.
            db.remove(keys::delivery(d.id)).expect("remove");
            db.remove(keys::queue(&d)).expect("remove");
        }
        store.sweep(OffsetDateTime::now_utc()).expect("sweep");
        let left: Vec<_> = db
            .scan_prefix([keys::WEBHOOK_SECOND])
            .keys()
            .map(|k| keys::second_of_key(&k.expect("key")))
            .collect();
        assert_eq!(left, [Some(now - 10)]);
    }
}
