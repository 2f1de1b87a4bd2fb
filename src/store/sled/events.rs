//! Events and the intake: storing an event with its deliveries, reading events back.
//!
//! sled 0.34 keeps large values resident in memory whatever its cache size, so a payload
//! bigger than [`INLINE_PAYLOAD_MAX`] is kept in `payloads/<event id>.json` beside the
//! database, and the record in sled names the file.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use uuid::Uuid;

use super::{Durable, SledStore, fresh, keys, record};
use crate::event::{Delivery, DeliveryState, Event, TraceContext};
use crate::store::{EventQuery, FlushMode, MAX_TEXT_SCAN, StoreError};

/// Payloads bigger than this are kept in a file (measured: inline, +200 MB RSS per 200 MB of
/// 64 KiB values, +31 MB for 1 KiB values).
const INLINE_PAYLOAD_MAX: usize = 4096;

/// An event as sled holds it: a large payload lives in `payloads/<file>` instead, and the
/// record lists the event's deliveries.
#[derive(serde::Deserialize)]
#[serde(from = "Record")]
pub(super) struct StoredEvent {
    pub(super) event: Event,
    pub(super) payload_file: Option<String>,
    /// The ids of the deliveries stored with the event (a delivery of a webhook deleted since
    /// is gone). Empty for an event stored before records listed them: the `v` index lists
    /// those (see [`delivery_ids`]).
    pub(super) deliveries: Vec<Uuid>,
    /// The deliveries stored with it without their `d` records (see [`fresh::Unwritten`]).
    pub(super) held: Vec<HeldRecord>,
}

/// A delivery stored without its `d` record, as its event's record lists it: the fields
/// [`Delivery::new`] did not take from the event (see [`unwritten_form`]).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(super) struct HeldRecord {
    id: Uuid,
    webhook: Uuid,
    due_ms: u64,
    queue_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

impl HeldRecord {
    /// The delivery's record, as it was when its event was stored.
    pub(super) fn delivery(&self, event: &Event) -> Delivery {
        Delivery {
            id: self.id,
            event_id: event.id,
            webhook_id: self.webhook,
            topic: event.topic.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            schedule_start: 0,
            due_ms: self.due_ms,
            queue_ms: self.queue_ms,
            last_summary: None,
            ordering_key: self.key.clone(),
            created_at: event.created_at,
            updated_at: event.created_at,
        }
    }
}

/// Whether `d`, a delivery of `event` about to be stored, is what its event's record can list
/// in its place (a new delivery, as [`Delivery::new`] made it): [`HeldRecord::delivery`]
/// gives it back field for field.
fn unwritten_form(d: &Delivery, event: &Event) -> bool {
    d.event_id == event.id
        && d.topic == event.topic
        && d.state == DeliveryState::Pending
        && d.attempts == 0
        && d.schedule_start == 0
        && d.last_summary.is_none()
        && d.created_at == event.created_at
        && d.updated_at == event.created_at
}

/// The record's fields, read as one flat struct: [`Event`]'s own and the store's beside them.
/// (`#[serde(flatten)]` would buffer the whole record, payload included, before reading it:
/// slower on every event read.)
#[derive(serde::Deserialize)]
struct Record {
    id: Uuid,
    #[serde(with = "crate::event::rfc3339")]
    created_at: time::OffsetDateTime,
    topic: String,
    resource: String,
    event: String,
    rule: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    trace: Option<TraceContext>,
    #[serde(default)]
    payload_file: Option<String>,
    #[serde(default)]
    deliveries: Vec<Uuid>,
    #[serde(default)]
    held: Vec<HeldRecord>,
}

impl From<Record> for StoredEvent {
    fn from(r: Record) -> Self {
        Self {
            // Every field named: a field added to `Event` must be added to the record.
            event: Event {
                id: r.id,
                created_at: r.created_at,
                topic: r.topic,
                resource: r.resource,
                event: r.event,
                rule: r.rule,
                payload: r.payload,
                trace: r.trace,
            },
            payload_file: r.payload_file,
            deliveries: r.deliveries,
            held: r.held,
        }
    }
}

/// What [`Record`] reads, written from borrowed parts.
#[derive(serde::Serialize)]
struct StoredEventRef<'a> {
    id: Uuid,
    #[serde(with = "crate::event::rfc3339")]
    created_at: time::OffsetDateTime,
    topic: &'a str,
    resource: &'a str,
    event: &'a str,
    rule: &'a str,
    payload: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a TraceContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_file: Option<&'a str>,
    #[serde(skip_serializing_if = "DeliveryIds::is_empty")]
    deliveries: DeliveryIds<'a>,
    #[serde(
        skip_serializing_if = "<[Delivery]>::is_empty",
        serialize_with = "held_list"
    )]
    held: &'a [Delivery],
}

/// Deliveries as their event's record lists them in place of their `d` records
/// ([`HeldRecord`]'s fields).
fn held_list<S: serde::Serializer>(held: &&[Delivery], s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Ref<'a> {
        id: Uuid,
        webhook: Uuid,
        due_ms: u64,
        queue_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    }
    s.collect_seq(held.iter().map(|d| Ref {
        id: d.id,
        webhook: d.webhook_id,
        due_ms: d.due_ms,
        queue_ms: d.queue_ms,
        key: d.ordering_key.as_deref(),
    }))
}

impl<'a> StoredEventRef<'a> {
    /// `event` with `payload` in place of its own (`Null` when it lives in `payload_file`).
    fn new(
        event: &'a Event,
        payload: &'a serde_json::Value,
        payload_file: Option<&'a str>,
        deliveries: DeliveryIds<'a>,
        held: &'a [Delivery],
    ) -> Self {
        // Every field named: a field added to `Event` must be added to the record.
        let Event {
            id,
            created_at,
            topic,
            resource,
            event,
            rule,
            payload: _,
            trace,
        } = event;
        Self {
            id: *id,
            created_at: *created_at,
            topic,
            resource,
            event,
            rule,
            payload,
            trace: trace.as_ref(),
            payload_file,
            deliveries,
            held,
        }
    }
}

/// The ids of an event's deliveries, written as one JSON array: those its record listed
/// already (`earlier`, when it is stored again) and those stored now.
#[derive(Clone, Copy)]
struct DeliveryIds<'a> {
    earlier: &'a [Uuid],
    now: &'a [Delivery],
}

impl DeliveryIds<'_> {
    fn is_empty(&self) -> bool {
        self.earlier.is_empty() && self.now.is_empty()
    }
}

impl serde::Serialize for DeliveryIds<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.earlier
                .iter()
                .copied()
                .chain(self.now.iter().map(|d| d.id)),
        )
    }
}

/// How an event's deliveries are found: from its record, or (an event stored by an earlier
/// version and stored again now) through `v` entries.
#[derive(Clone, Copy)]
enum Listing<'a> {
    Record(DeliveryIds<'a>),
    Index,
}

/// A `Vec` that refuses to grow past its bound: serialising into it stops early.
struct Bounded(Vec<u8>, usize);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An event's deliveries: each one's id, with the `v` index entry that lists it for an event
/// stored before its record listed them (to be removed with it). The deliveries themselves may
/// be gone (their webhook was deleted).
pub(super) fn delivery_ids(
    db: &sled::Db,
    event: Uuid,
    listed: &[Uuid],
) -> Result<Vec<(Uuid, Option<sled::IVec>)>, StoreError> {
    if !listed.is_empty() {
        return Ok(listed.iter().map(|id| (*id, None)).collect());
    }
    let mut out = Vec::new();
    for entry in db.scan_prefix(keys::key(keys::BY_EVENT, &[event.as_bytes()])) {
        let (k, _) = entry?;
        if let Some(id) = keys::trailing_id(&k) {
            out.push((id, Some(k)));
        }
    }
    Ok(out)
}

impl SledStore {
    pub(super) fn payload_path(&self, file: &str) -> std::path::PathBuf {
        self.path.join("payloads").join(file)
    }

    /// The record to keep in sled for `event` with `deliveries` (`held`: those stored without
    /// their `d` records), writing a large payload to its own file first (a crash between the
    /// two leaves at most an unreferenced file behind). Also says the file's name when there
    /// is one.
    fn stored_form(
        &self,
        event: &Event,
        deliveries: DeliveryIds<'_>,
        held: &[Delivery],
    ) -> Result<(Vec<u8>, Option<String>), StoreError> {
        let inline = StoredEventRef::new(event, &event.payload, None, deliveries, held);
        // A record within the bound holds a payload within it: one serialisation. Past the
        // bound it stops, and the payload alone is measured.
        let mut record = Bounded(Vec::with_capacity(512), INLINE_PAYLOAD_MAX);
        match serde_json::to_writer(&mut record, &inline) {
            Ok(()) => return Ok((record.0, None)),
            Err(e) if e.is_io() => {}
            Err(e) => return Err(e.into()),
        }
        let payload = serde_json::to_vec(&event.payload)?;
        if payload.len() <= INLINE_PAYLOAD_MAX {
            return Ok((serde_json::to_vec(&inline)?, None));
        }
        let file = format!("{}.json", event.id);
        let io = |source| StoreError::Payload {
            file: file.clone(),
            source,
        };
        std::fs::create_dir_all(self.path.join("payloads")).map_err(io)?;
        let mut f = std::fs::File::create(self.payload_path(&file)).map_err(io)?;
        std::io::Write::write_all(&mut f, &payload).map_err(io)?;
        if self.flush == FlushMode::EveryEvent {
            // The file and its name are durable before the record that names it is written.
            f.sync_data().map_err(io)?;
            std::fs::File::open(self.path.join("payloads"))
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let record = serde_json::to_vec(&StoredEventRef::new(
            event,
            &serde_json::Value::Null,
            Some(&file),
            deliveries,
            held,
        ))?;
        Ok((record, Some(file)))
    }

    /// An event from its sled record, reading a large payload back from its file.
    pub(super) fn load_event(&self, bytes: &[u8]) -> Result<Event, StoreError> {
        load_event_in(&self.path, bytes)
    }

    /// [`SledStore::append_deferred`] for the request's own event, which is kept for the
    /// delivery that sends it (see [`super::to_send`]).
    pub fn append_shared(
        &self,
        event: &Arc<Event>,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        let listing = Listing::Record(DeliveryIds {
            earlier: &[],
            now: deliveries,
        });
        self.append_listed(event, deliveries, listing, Some(event))
    }

    /// Stores an event and its deliveries (durably, in `every-event` mode).
    pub fn append(&self, event: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        match self.append_deferred(event, deliveries)? {
            Some(durable) => self.note(durable.wait()),
            None => Ok(()),
        }
    }

    /// Stores an event and its deliveries; in `every-event` mode, returns before they are on
    /// stable storage, with the ticket to wait on.
    pub fn append_deferred(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        let listing = Listing::Record(DeliveryIds {
            earlier: &[],
            now: deliveries,
        });
        self.append_listed(event, deliveries, listing, None)
    }

    /// [`SledStore::append_deferred`] for an event that may be stored already: moving an
    /// event held in `pending/` in again after a crash between storing it and removing its
    /// file, or after the store closed between writing it and making it durable. Its record
    /// keeps the deliveries stored with it the first time (they are queued too), and only a
    /// webhook without one gets one of `deliveries`: a second delivery would reach the
    /// receiver as a second message (another `webhook-id`), which it cannot tell for a repeat.
    pub fn append_again(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        let db = self.db()?;
        let Some(v) = db.get(keys::event(event.id))? else {
            return self.append_deferred(event, deliveries);
        };
        let earlier: StoredEvent = serde_json::from_slice(&v)?;
        let mut served = std::collections::HashSet::new();
        for (id, _) in delivery_ids(&db, event.id, &earlier.deliveries)? {
            match self.delivery(id) {
                Ok(Some(d)) => {
                    served.insert(d.webhook_id);
                }
                // Gone with its deleted webhook: it serves nobody.
                Ok(None) => {}
                // Whose it is cannot be told: a possible second delivery beats an event that
                // never moves in.
                Err(e) => tracing::warn!(event = %event.id, delivery = %id, error = %e,
                    "a delivery of an event stored again cannot be read; its webhook may get a second"),
            }
        }
        let deliveries: Vec<Delivery> = deliveries
            .iter()
            .filter(|d| !served.contains(&d.webhook_id))
            .cloned()
            .collect();
        // Deliveries its record lists in full, stored without their own records, get them
        // now (unless their state was written meanwhile, or their webhook deleted): the
        // record written again lists them by id only.
        if !earlier.held.is_empty() {
            self.write(|db| {
                for h in &earlier.held {
                    let d = h.delivery(&earlier.event);
                    if db.contains_key(keys::webhook(d.webhook_id))? {
                        fresh::put_unless_written(db, &d)?;
                    }
                }
                Ok(())
            })?;
        }
        // Nothing new: the event is stored as it was; durable once a barrier passes.
        if deliveries.is_empty() {
            return match self.flush {
                FlushMode::EveryEvent => self.barrier.issue(&db).map(Some).inspect_err(|_| {
                    self.failed_appends.fetch_add(1, Ordering::Relaxed);
                }),
                FlushMode::Interval(_) => Ok(None),
            };
        }
        let listing = if earlier.deliveries.is_empty() {
            // Stored by an earlier version (or without deliveries): its `v` entries list them,
            // and list the new ones too.
            Listing::Index
        } else {
            Listing::Record(DeliveryIds {
                earlier: &earlier.deliveries,
                now: &deliveries,
            })
        };
        self.append_listed(event, &deliveries, listing, None)
    }

    /// `shared`: the event itself, to keep for its deliveries' first sends.
    fn append_listed(
        &self,
        event: &Event,
        deliveries: &[Delivery],
        listing: Listing<'_>,
        shared: Option<&Arc<Event>>,
    ) -> Result<Option<Durable>, StoreError> {
        // Deliveries stored now are queued in memory rather than by `q` entries, where they
        // may be (see `fresh`); a shared store's journal queues nothing.
        let fresh = if self.journal {
            None
        } else {
            self.fresh.reserve(deliveries, fresh::now_ms())
        };
        // Taken before writing: a reopen after it refuses the keep (one between the
        // reservation and this gave the deliveries `q` entries: a read may miss it).
        let generation = self.to_send.generation();
        let result = self
            .write(|db| {
                // Single writes in a safe order rather than one batch (a sled batch forces a log
                // write of its own: 3.5× slower, measured): the queue entries go last (or the
                // entries in memory, once all is written), so a queue entry never points at a
                // delivery or event that is not stored.
                // The event after its deliveries: whoever sees the event finds all of them (the
                // journal of a shared store ships an event with the deliveries it finds), but
                // for deliveries listed in full by its record, found once held in memory, just
                // after the write. The event's record lists them (no `v` index entries since).
                // A delivery's webhook lists it (through its second's `X` entry) before its
                // record is written, so that no stored delivery is missing from the list.
                // A shared store's journal writes no `X`, `x` and `q` entries: its
                // deliveries are listed and queued in the shared store they move to.
                // A reservation from before a reopen holds nothing in this database (asked
                // here, where no reopen can come before the write ends).
                let current = fresh.as_ref().is_some_and(fresh::Reservation::is_current);
                let new = matches!(listing, Listing::Record(ids) if ids.earlier.is_empty());
                // New deliveries held in memory are listed in full by their event's record,
                // which is written instead of their `d` records: one write per event.
                let unwritten =
                    if current && new && deliveries.iter().all(|d| unwritten_form(d, event)) {
                        fresh::Unwritten::Yes
                    } else {
                        fresh::Unwritten::No
                    };
                let held: &[Delivery] = match unwritten {
                    fresh::Unwritten::Yes => deliveries,
                    fresh::Unwritten::No => &[],
                };
                for d in deliveries {
                    if !self.journal {
                        self.list_under_webhook(db, d)?;
                    }
                    if unwritten == fresh::Unwritten::No {
                        db.insert(keys::delivery(d.id), record::encode(d)?)?;
                    }
                    if let Listing::Index = listing {
                        db.insert(keys::by_event(d), &[] as &[u8])?;
                    }
                }
                let ids = match listing {
                    Listing::Record(ids) => ids,
                    Listing::Index => DeliveryIds {
                        earlier: &[],
                        now: &[],
                    },
                };
                let (record, payload_file) = self.stored_form(event, ids, held)?;
                // A journal hands a new event to its shipper in memory before its record can
                // be seen (so the shipper does not read it back); one stored again, or with
                // its payload in a file, is read back.
                if self.journal {
                    match listing {
                        Listing::Record(ids)
                            if ids.earlier.is_empty() && payload_file.is_none() =>
                        {
                            self.handoff.offer(event, deliveries);
                        }
                        _ => drop(self.handoff.take(event.id)),
                    }
                }
                if let Err(e) = db.insert(keys::event(event.id), record) {
                    if self.journal {
                        self.handoff.take(event.id);
                    }
                    return Err(e.into());
                }
                // Not held in memory: the deliveries get their entries.
                if !self.journal && !current {
                    for d in deliveries {
                        self.put_queue_entry(db, d)?;
                    }
                }
                // A new event whose record holds its payload: the one its deliveries read.
                Ok((new && payload_file.is_none(), unwritten))
            })
            .map(|(keep, unwritten)| {
                if let Some(fresh) = fresh {
                    // Before the deliveries can be found, so that their first read finds it;
                    // not for a webhook that is behind (paused, backed up): it would be
                    // dropped unread.
                    if let Some(shared) = shared.filter(|_| keep) {
                        let reads = fresh.keeping_up;
                        self.to_send
                            .keep(shared, reads, fresh::now_ms(), generation);
                    }
                    fresh.add(deliveries, unwritten);
                }
            })
            .and_then(|()| match self.flush {
                FlushMode::EveryEvent => Ok(Some(self.barrier.issue(&self.db()?)?)),
                FlushMode::Interval(_) => Ok(None),
            });
        if result.is_err() {
            self.failed_appends.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Lists `d` under its webhook: the `X` entry of its id's second, written once per
    /// webhook and second (an `x` entry of its own for an id that is not a UUIDv7).
    fn list_under_webhook(&self, db: &sled::Db, d: &Delivery) -> Result<(), StoreError> {
        let Some(second) = keys::id_second(d.id) else {
            db.insert(keys::by_webhook(d), &[] as &[u8])?;
            return Ok(());
        };
        let seconds = || self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        if seconds().get(&d.webhook_id) == Some(&second) {
            return Ok(());
        }
        db.insert(keys::webhook_second(d.webhook_id, second), &[] as &[u8])?;
        // Only once written: a delivery that finds its second here finds it in the database.
        seconds().insert(d.webhook_id, second);
        Ok(())
    }

    /// [`SledStore::event`] for a delivery about to be sent: from memory when its request
    /// stored it moments ago (see [`super::to_send`]), unless the store is closed or a write
    /// failed inside sled (then what memory holds may not be stored).
    pub fn event_to_send(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        // Closed: `NotOpen`, as a read of the record would say.
        self.db()?;
        if !self.broken.load(Ordering::Relaxed)
            && let Some(e) = self.to_send.read(id)
        {
            return Ok(Some(e));
        }
        self.event(id)
    }

    pub fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        match self.db()?.get(keys::event(id))? {
            Some(v) => Ok(Some(self.load_event(&v)?)),
            None => Ok(None),
        }
    }

    /// Events newest first, filtered by topic, creation time and payload text, skipping
    /// `offset` (see [`events_page_in`]).
    pub fn events_page(&self, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
        events_page_in(&*self.db()?, &self.path, q)
    }
}

/// An event as stored (`bytes`), its payload read from its file under the store's `path`
/// when it has one.
pub(super) fn load_event_in(path: &std::path::Path, bytes: &[u8]) -> Result<Event, StoreError> {
    Ok(load_stored_in(path, bytes)?.event)
}

/// The same with what else the record holds.
pub(super) fn load_stored_in(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<StoredEvent, StoreError> {
    let mut stored: StoredEvent = serde_json::from_slice(bytes)?;
    if let Some(file) = &stored.payload_file {
        let bytes = std::fs::read(path.join("payloads").join(file)).map_err(|source| {
            StoreError::Payload {
                file: file.clone(),
                source,
            }
        })?;
        stored.event.payload = serde_json::from_slice(&bytes)?;
    }
    Ok(stored)
}

/// Events newest first, filtered by topic, creation time and payload text, skipping
/// `offset`. A payload search reads at most [`MAX_TEXT_SCAN`] events (newest first, whatever
/// the other filters make of them).
pub(super) fn events_page_in(
    db: &sled::Db,
    path: &std::path::Path,
    q: &EventQuery,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut searched = 0;
    if q.limit == 0 {
        return Ok(out);
    }
    for entry in db.scan_prefix([keys::EVENT]).rev() {
        let (_, v) = entry?;
        // Filter on the small head; read a payload file only for events that are returned
        // (or searched).
        let stored = serde_json::from_slice::<StoredEvent>(&v)?;
        let event = &stored.event;
        if q.since.is_some_and(|s| event.created_at < s) {
            break;
        }
        if q.text.is_some() {
            // Every event read counts toward the cap, also those the other filters drop: a
            // rare topic must not make a search read the whole store.
            if searched >= MAX_TEXT_SCAN {
                break;
            }
            searched += 1;
        }
        if q.until.is_some_and(|u| event.created_at >= u)
            || q.topic.as_ref().is_some_and(|t| !t.is_match(&event.topic))
        {
            continue;
        }
        if q.text.is_some() {
            let matches = if stored.payload_file.is_some() {
                q.text_matches(&load_event_in(path, &v)?.payload)
            } else {
                q.text_matches(&event.payload)
            };
            if !matches {
                continue;
            }
        }
        if skipped < q.offset {
            skipped += 1;
            continue;
        }
        out.push(load_event_in(path, &v)?);
        if out.len() >= q.limit {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::open_for_tests as open;
    use super::*;
    use crate::event::Topic;

    #[test]
    fn large_payloads_live_in_files_and_leave_with_their_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let mut big = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({"pad": "x".repeat(100_000)}),
        );
        big.created_at = OffsetDateTime::now_utc() - time::Duration::days(40);
        s.append(&big, &[]).expect("append");
        let file = dir
            .path()
            .join("data/payloads")
            .join(format!("{}.json", big.id));
        assert!(file.exists(), "the large payload is a file");
        assert_eq!(s.event(big.id).expect("read"), Some(big.clone()));
        s.sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert!(s.event(big.id).expect("read").is_none());
        assert!(!file.exists(), "the sweep removes the file too");
    }

    #[test]
    fn numbers_read_back_as_they_were_stored() {
        // Computed the way a rule's payload expression computes them: the shortest text of
        // such a double does not always read back to it without a correctly rounded parser.
        let computed: Vec<f64> = (1..400).map(|i| f64::from(i) * 0.7 * 1.1).collect();
        let e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({"price": 345.7 * 1.1, "computed": computed}),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        s.append(&e, &[]).expect("append");
        let back = s.event(e.id).expect("read").expect("stored");
        assert_eq!(back.payload["price"].as_f64(), Some(345.7 * 1.1));
        assert_eq!(
            back, e,
            "the event a delivery sends from memory is the stored one"
        );
    }

    /// Stores `e` as the request path does: shared, so that it may be kept.
    fn shared(s: &SledStore, e: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        assert!(s.append_shared(&Arc::new(e.clone()), deliveries)?.is_none());
        Ok(())
    }

    #[test]
    fn a_new_event_is_sent_from_memory_once_per_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let e = Event::new(&topic, "r", serde_json::json!({"id": 1}));
        let ds = [
            Delivery::new(&e, Uuid::now_v7(), 0),
            Delivery::new(&e, Uuid::now_v7(), 0),
        ];
        shared(&s, &e, &ds).expect("append");
        // Without its record, only memory can answer.
        s.db()
            .expect("db")
            .remove(keys::event(e.id))
            .expect("remove");
        assert_eq!(s.event(e.id).expect("read"), None);
        assert_eq!(s.event_to_send(e.id).expect("read"), Some(e.clone()));
        assert_eq!(s.event_to_send(e.id).expect("read"), Some(e.clone()));
        assert_eq!(
            s.event_to_send(e.id).expect("read"),
            None,
            "two deliveries, two reads; a retry reads the record"
        );

        // Not kept: an event stored without being shared (not the request path's), one with
        // no delivery, one whose payload is a file, one whose deliveries are not held in
        // memory (due later than the queue in memory takes).
        let plain = Event::new(&topic, "r", serde_json::json!({"id": "plain"}));
        s.append(&plain, &[Delivery::new(&plain, Uuid::now_v7(), 0)])
            .expect("append");
        assert_eq!(s.to_send.len(), 0);
        let none = Event::new(&topic, "r", serde_json::json!({"id": 2}));
        shared(&s, &none, &[]).expect("append");
        let big = Event::new(&topic, "r", serde_json::json!({"pad": "x".repeat(10_000)}));
        shared(&s, &big, &[Delivery::new(&big, Uuid::now_v7(), 0)]).expect("append");
        let late = Event::new(&topic, "r", serde_json::json!({"id": 3}));
        shared(
            &s,
            &late,
            &[Delivery::new(&late, Uuid::now_v7(), 3_600_000)],
        )
        .expect("append");
        for gone in [&none, &big, &late] {
            s.db()
                .expect("db")
                .remove(keys::event(gone.id))
                .expect("remove");
            assert_eq!(s.event_to_send(gone.id).expect("read"), None);
        }
        assert_eq!(s.to_send.len(), 0);

        // A store whose write failed inside sled answers from the records only.
        let unsure = Event::new(&topic, "r", serde_json::json!({"id": 5}));
        shared(&s, &unsure, &[Delivery::new(&unsure, Uuid::now_v7(), 0)]).expect("append");
        s.db()
            .expect("db")
            .remove(keys::event(unsure.id))
            .expect("remove");
        s.broken.store(true, Ordering::Relaxed);
        assert_eq!(s.event_to_send(unsure.id).expect("read"), None);
        s.broken.store(false, Ordering::Relaxed);
        s.to_send.clear();

        // Reopening the database forgets what was kept.
        let again = Event::new(&topic, "r", serde_json::json!({"id": 4}));
        shared(&s, &again, &[Delivery::new(&again, Uuid::now_v7(), 0)]).expect("append");
        assert_eq!(s.to_send.len(), 1);
        s.settle_role(&s.db().expect("db")).expect("settle");
        assert_eq!(s.to_send.len(), 0);
        assert_eq!(
            s.event_to_send(again.id).expect("read"),
            Some(again),
            "read from its record"
        );
    }

    #[test]
    fn events_of_a_webhook_that_is_behind_are_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let (behind, sending) = (Uuid::now_v7(), Uuid::now_v7());
        // A delivery of `behind` queued 3 s ago and still not sent: it is paused, say.
        let mut old = Event::new(&topic, "r", serde_json::json!({"id": "old"}));
        old.created_at = OffsetDateTime::now_utc() - time::Duration::seconds(3);
        shared(&s, &old, &[Delivery::new(&old, behind, 0)]).expect("append");
        assert_eq!(s.to_send.len(), 1, "nothing was waiting before it");
        s.to_send.clear();
        let e = Event::new(&topic, "r", serde_json::json!({"id": "new"}));
        shared(&s, &e, &[Delivery::new(&e, behind, 0)]).expect("append");
        assert_eq!(s.to_send.len(), 0, "its webhook is behind");
        // Kept for the delivery whose webhook keeps up only.
        let both = Event::new(&topic, "r", serde_json::json!({"id": "both"}));
        shared(
            &s,
            &both,
            &[
                Delivery::new(&both, sending, 0),
                Delivery::new(&both, behind, 0),
            ],
        )
        .expect("append");
        assert_eq!(s.to_send.len(), 1);
        assert!(s.to_send.read(both.id).is_some());
        assert_eq!(s.to_send.read(both.id), None, "one read");
        // Many deliveries waiting, all with their queue time ahead: a batch webhook waiting
        // out its interval keeps up (whatever this machine's speed, within 10 s).
        let batch = Uuid::now_v7();
        for i in 0..100 {
            let b = Event::new(&topic, "r", serde_json::json!({ "batch": i }));
            shared(&s, &b, &[Delivery::new(&b, batch, 10_000)]).expect("append");
        }
        assert_eq!(s.to_send.len(), 100);
    }

    #[test]
    fn the_retention_sweep_forgets_the_events_it_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let w = super::super::webhook_for_tests(&s, "a");
        let topic = Topic::parse("order.created").expect("topic");
        let e = Event::new(&topic, "r", serde_json::json!({"id": 1}));
        // Two deliveries to one webhook: one read is left once the first is delivered.
        let ds = [Delivery::new(&e, w.id, 0), Delivery::new(&e, w.id, 0)];
        shared(&s, &e, &ds).expect("append");
        for d in &ds {
            let done = crate::store::contract::recorded(d, 1, true);
            assert!(s.record_attempts(w.id, &[done], None).expect("record"));
        }
        assert!(s.to_send.read(e.id).is_some());
        assert_eq!(s.to_send.len(), 1);
        let swept = s
            .sweep(OffsetDateTime::now_utc() + time::Duration::days(1))
            .expect("sweep");
        assert_eq!(swept.events, 1);
        assert_eq!(s.to_send.len(), 0, "a redelivery finds the event gone");
    }

    /// The `v` keys in the store.
    fn index_entries(s: &SledStore) -> usize {
        s.db().expect("db").scan_prefix([keys::BY_EVENT]).count()
    }

    #[test]
    fn an_event_lists_its_deliveries_in_its_record_and_writes_no_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut e = Event::new(&topic, "r", serde_json::json!({"id": 1}));
        e.created_at = OffsetDateTime::now_utc() - time::Duration::days(40);
        let ds = [Delivery::new(&e, a, 0), Delivery::new(&e, b, 0)];
        s.append(&e, &ds).expect("append");
        assert_eq!(index_entries(&s), 0, "no `v` entries");
        assert_eq!(s.deliveries_of_event(e.id).expect("read"), ds.to_vec());
        assert_eq!(s.event(e.id).expect("read"), Some(e.clone()));
        let entry = s.journal_batch(10).expect("journal");
        assert_eq!(entry.len(), 1);
        assert_eq!(entry[0].deliveries, ds.to_vec());

        // A deleted webhook takes its delivery; the record still names it, readers skip it.
        assert_eq!(s.delete_webhook(a).expect("delete"), 1);
        assert_eq!(
            s.deliveries_of_event(e.id).expect("read"),
            vec![ds[1].clone()]
        );
        assert_eq!(
            s.journal_batch(10).expect("journal")[0].deliveries,
            vec![ds[1].clone()]
        );

        // Finished, it is swept with its event (its state written, it leaves memory, as
        // `record_attempts` does).
        let mut done = ds[1].clone();
        done.state = crate::event::DeliveryState::Delivered;
        s.db()
            .expect("db")
            .insert(
                keys::delivery(done.id),
                serde_json::to_vec(&done).expect("json"),
            )
            .expect("insert");
        assert!(s.fresh.remove(done.webhook_id, done.queue_ms, done.id));
        let swept = s
            .sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert_eq!((swept.events, swept.deliveries), (1, 1));
        assert!(s.event(e.id).expect("read").is_none());
        assert!(s.delivery(done.id).expect("read").is_none());
    }

    #[test]
    fn events_stored_before_records_listed_deliveries_are_read_and_swept_through_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let mut e = Event::new(&topic, "r", serde_json::json!({"id": 2}));
        e.created_at = OffsetDateTime::now_utc() - time::Duration::days(40);
        // Of webhooks that exist: a pending delivery of a deleted one would not keep its event.
        let mut ds = vec![
            Delivery::new(&e, super::super::webhook_for_tests(&s, "a").id, 0),
            Delivery::new(&e, super::super::webhook_for_tests(&s, "b").id, 0),
        ];
        // The layout of earlier versions: a plain event record and a `v` entry per delivery.
        let db = s.db().expect("db");
        for d in &ds {
            db.insert(keys::delivery(d.id), serde_json::to_vec(d).expect("json"))
                .expect("insert");
            db.insert(keys::by_webhook(d), &[] as &[u8])
                .expect("insert");
            db.insert(keys::by_event(d), &[] as &[u8]).expect("insert");
        }
        db.insert(keys::event(e.id), serde_json::to_vec(&e).expect("json"))
            .expect("insert");
        assert_eq!(s.deliveries_of_event(e.id).expect("read"), ds);
        assert_eq!(s.journal_batch(10).expect("journal")[0].deliveries, ds);

        // A pending delivery keeps the event; once both are finished, all of it goes.
        let sweep = || {
            s.sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
                .expect("sweep")
        };
        assert_eq!(sweep().events, 0);
        for d in &mut ds {
            d.state = crate::event::DeliveryState::Delivered;
            db.insert(keys::delivery(d.id), serde_json::to_vec(&*d).expect("json"))
                .expect("insert");
        }
        let swept = sweep();
        assert_eq!((swept.events, swept.deliveries), (1, 2));
        assert_eq!(index_entries(&s), 0, "the `v` entries go with the event");
        assert!(s.deliveries_of_event(e.id).expect("read").is_empty());
    }

    #[test]
    fn an_event_stored_again_keeps_its_deliveries_and_adds_none_for_a_webhook_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        let w = Uuid::now_v7();
        let later = Uuid::now_v7();
        let e = Event::new(&topic, "r", serde_json::json!({"id": 3}));
        let first = [Delivery::new(&e, w, 0)];
        s.append(&e, &first).expect("append");
        // A crash before its file in `pending/` was removed: the drain stores it again, with a
        // delivery for each webhook that accepts it now. `w` has one: its receiver would get
        // the event twice, under two delivery ids. `later` (added since) gets its first.
        let second = [Delivery::new(&e, w, 0), Delivery::new(&e, later, 0)];
        s.append_again(&e, &second).expect("append again");
        let kept = vec![first[0].clone(), second[1].clone()];
        assert_eq!(s.deliveries_of_event(e.id).expect("read"), kept);
        assert_eq!(s.journal_batch(10).expect("journal")[0].deliveries, kept);
        assert_eq!(index_entries(&s), 0);
        // Again, with nothing new: the event keeps its two.
        s.append_again(&e, &second).expect("append again");
        assert_eq!(s.deliveries_of_event(e.id).expect("read"), kept);

        // Stored by an earlier version (its `v` entries list its deliveries), then again.
        let old = Event::new(&topic, "r", serde_json::json!({"id": 4}));
        let d = Delivery::new(&old, w, 0);
        let db = s.db().expect("db");
        db.insert(keys::delivery(d.id), serde_json::to_vec(&d).expect("json"))
            .expect("insert");
        db.insert(keys::by_event(&d), &[] as &[u8]).expect("insert");
        db.insert(keys::event(old.id), serde_json::to_vec(&old).expect("json"))
            .expect("insert");
        let again = [Delivery::new(&old, w, 0), Delivery::new(&old, later, 0)];
        s.append_again(&old, &again).expect("append again");
        assert_eq!(
            s.deliveries_of_event(old.id).expect("read"),
            vec![d, again[1].clone()]
        );
        // Not stored before: as a first append.
        let fresh = Event::new(&topic, "r", serde_json::json!({"id": 5}));
        let ds = [Delivery::new(&fresh, w, 0)];
        s.append_again(&fresh, &ds).expect("append again");
        assert_eq!(s.deliveries_of_event(fresh.id).expect("read"), ds.to_vec());

        // Moved into a shared store, all of it is forgotten, `v` entries too.
        let entries = s.journal_batch(10).expect("journal");
        assert_eq!(entries.len(), 3);
        s.journal_forget(&entries).expect("forget");
        assert_eq!(index_entries(&s), 0);
        assert!(db.scan_prefix([keys::DELIVERY]).next().is_none());
        assert!(db.scan_prefix([keys::QUEUE]).next().is_none());
    }

    #[test]
    fn a_record_reads_back_as_the_event_it_was_written_from() {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({"id": 1, "items": [{"sku": "A"}]}),
        );
        e.trace = Some(TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            parent_id: "00f067aa0ba902b7".to_owned(),
            flags: "01".to_owned(),
            tracestate: None,
        });
        let ids = [Uuid::now_v7()];
        let bytes = serde_json::to_vec(&StoredEventRef::new(
            &e,
            &e.payload,
            None,
            DeliveryIds {
                earlier: &ids,
                now: &[],
            },
            &[],
        ))
        .expect("json");
        let back: StoredEvent = serde_json::from_slice(&bytes).expect("read");
        assert_eq!(back.event, e);
        assert_eq!(back.deliveries, ids);
        assert_eq!(back.payload_file, None);
        // A record is an event's JSON with the store's fields beside it.
        let as_event: Event = serde_json::from_slice(&bytes).expect("an event");
        assert_eq!(as_event, e);
    }

    #[test]
    fn payloads_up_to_the_bound_stay_inline_and_longer_ones_go_to_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let topic = Topic::parse("order.created").expect("topic");
        // `{"pad":"…"}` is 10 bytes around the padding.
        for (len, in_file) in [
            (100, false),
            (INLINE_PAYLOAD_MAX - 10, false),
            (INLINE_PAYLOAD_MAX - 9, true),
            (100_000, true),
        ] {
            let payload = serde_json::json!({"pad": "x".repeat(len)});
            let mut e = Event::new(&topic, "r", payload);
            // Every field of the event comes back, inline or not.
            e.trace = Some(TraceContext {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                parent_id: "00f067aa0ba902b7".to_owned(),
                flags: "01".to_owned(),
                tracestate: Some("vendor=x".to_owned()),
            });
            let d = Delivery::new(&e, Uuid::now_v7(), 0);
            s.append(&e, std::slice::from_ref(&d)).expect("append");
            let file = dir
                .path()
                .join("data/payloads")
                .join(format!("{}.json", e.id));
            assert_eq!(file.exists(), in_file, "padding of {len}");
            assert_eq!(s.event(e.id).expect("read"), Some(e.clone()));
            assert_eq!(s.deliveries_of_event(e.id).expect("read"), vec![d]);
        }
    }

    #[test]
    fn a_payload_search_counts_every_event_read_toward_its_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let rare = Event::new(
            &Topic::parse("rare.thing").expect("topic"),
            "r",
            serde_json::json!({"needle": true}),
        );
        s.append(&rare, &[]).expect("append");
        let common = Topic::parse("common.thing").expect("topic");
        for _ in 0..MAX_TEXT_SCAN {
            s.append(&Event::new(&common, "r", serde_json::json!({})), &[])
                .expect("append");
        }
        let q = |text: Option<&str>| EventQuery {
            topic: Some(
                globset::Glob::new("rare.*")
                    .expect("glob")
                    .compile_matcher(),
            ),
            text: text.map(str::to_owned),
            limit: 10,
            ..EventQuery::default()
        };
        // Without text the topic filter alone walks the store and finds it.
        assert_eq!(s.events_page(&q(None)).expect("page").len(), 1);
        // A search stops after the newest MAX_TEXT_SCAN events, all of another topic.
        assert!(s.events_page(&q(Some("needle"))).expect("page").is_empty());
    }
}
