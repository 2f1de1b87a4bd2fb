//! The sled store as the local journal of a shared store (see [`crate::store::postgres`]).
//!
//! The request path appends to sled as it does when sled is the store, without the listing and
//! queue entries (`x`, `q`) that only the sled store's own delivery reads, and hands each new
//! event to the shipper in memory; the shipper takes what was appended, oldest first (reading
//! it back when it was not handed over), moves it to the shared store and then forgets it here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};

use time::OffsetDateTime;

use super::events::{delivery_ids, load_stored_in};
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
    /// What forgetting it removes besides its records (`Default` for an entry that is not
    /// from a journal, such as one moved from a sled store by `hooktap migrate`).
    pub local: Local,
}

/// What the journal keeps of an event beside its records, read with it so that forgetting it
/// need not read its record again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Local {
    /// The file its large payload is kept in.
    payload_file: Option<String>,
    /// Whether `v` entries list its deliveries (stored by a hooktap older than the record's
    /// `deliveries` list).
    indexed: bool,
}

/// At most this many events wait in the [`Handoff`] (the shipper is behind: PostgreSQL is
/// down or slow); past it, events are read back from sled, as after a restart. Each has a
/// payload of at most 4 KiB of JSON (a few times that in memory).
const HANDOFF_MAX: usize = 1024;

/// New events handed from the request path to the shipper in memory, so that it need not read
/// back and decode what was just written. Only a shortcut: an event not found here is read
/// from sled (after a restart, past [`HANDOFF_MAX`], an event stored again), so dropping any
/// of it is always safe.
#[derive(Default)]
pub(super) struct Handoff(Mutex<HashMap<Uuid, Entry>>);

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands over a new event with its deliveries, before its record is written (so the
    /// shipper cannot see the record first and leave the entry behind). Only an event whose
    /// payload is kept inline (at most `INLINE_PAYLOAD_MAX` bytes of JSON): a large payload
    /// stays on disk only.
    pub(super) fn offer(&self, event: &Event, deliveries: &[Delivery]) {
        let entry = Entry {
            event: event.clone(),
            deliveries: deliveries.to_vec(),
            dedupe: None,
            local: Local::default(),
        };
        let mut handed = self.lock();
        if handed.len() < HANDOFF_MAX {
            handed.insert(event.id, entry);
        }
    }

    /// Takes the entry of `event` back.
    pub(super) fn take(&self, event: Uuid) -> Option<Entry> {
        self.lock().remove(&event)
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// A dedupe mark's value: the key's digest, then the claim's end (big-endian u64).
fn parse_mark(v: &[u8]) -> Option<(DedupeKey, u64)> {
    let digest: [u8; 32] = v.get(..32)?.try_into().ok()?;
    let ends: [u8; 8] = v.get(32..40)?.try_into().ok()?;
    Some((DedupeKey(digest), u64::from_be_bytes(ends)))
}

/// Fills in the dedupe marks of a batch's events, read in one range scan rather than one
/// lookup per event (most events have none). Called once the batch's events were read: a mark
/// is written before its event's record, so every mark of an event seen is in the range then.
fn marks_of(db: &sled::Db, entries: &mut [Entry]) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let mut marks = db
        .range(keys::dedupe_mark(first.event.id)..=keys::dedupe_mark(last.event.id))
        .peekable();
    // Both in id order: one pass.
    for entry in entries.iter_mut() {
        let wanted = keys::dedupe_mark(entry.event.id);
        while let Some(next) = marks.peek() {
            if let Ok((k, _)) = next
                && k.as_ref() > wanted.as_slice()
            {
                break;
            }
            // A mark up to this event's, or an error: taken.
            let Some(item) = marks.next() else { break };
            let (k, v) = item?;
            if k.as_ref() == wanted.as_slice() {
                entry.dedupe = parse_mark(&v);
                break;
            }
        }
    }
    Ok(())
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
        let mut seen = false;
        for entry in db.scan_prefix([keys::EVENT]).take(limit) {
            let (k, v) = entry?;
            seen = true;
            if let Some(handed) = keys::trailing_id(&k).and_then(|id| self.handoff.take(id)) {
                out.push(handed);
                continue;
            }
            let stored = match load_stored_in(&self.path, &v) {
                Ok(stored) => stored,
                Err(e) => {
                    // It can never be moved: set it aside rather than stop the journal.
                    tracing::error!(key = ?keys::trailing_id(&k), error = %e,
                        "a journalled event cannot be read; it is dropped from the journal");
                    self.write_freeing(|db| {
                        db.remove(&k)?;
                        if let Some(id) = keys::trailing_id(&k) {
                            db.remove(keys::dedupe_mark(id))?;
                        }
                        Ok(())
                    })?;
                    continue;
                }
            };
            let event = stored.event;
            let mut deliveries = Vec::new();
            for (id, _) in delivery_ids(&db, event.id, &stored.deliveries)? {
                deliveries.extend(self.delivery(id)?);
            }
            out.push(Entry {
                event,
                deliveries,
                dedupe: None,
                local: Local {
                    payload_file: stored.payload_file,
                    indexed: stored.deliveries.is_empty(),
                },
            });
        }
        if !seen {
            self.journal_legacy.store(false, Ordering::Relaxed);
            // Whatever is left was never written.
            self.handoff.clear();
        }
        marks_of(&db, &mut out)?;
        Ok(out)
    }

    /// Forgets journalled events (from [`SledStore::journal_batch`]) once the shared store
    /// has them: records, indexes, queue entries and payload files. One batch, so a crash
    /// forgets all of them or none (and those are moved again: the shared store ignores what
    /// it has).
    pub fn journal_forget(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut files = Vec::new();
        // Each removal looks its key up even when it is not there: only those there are made.
        let legacy = self.journal_legacy.load(Ordering::Relaxed);
        for e in entries {
            files.extend(e.local.payload_file.iter().cloned());
            batch.remove(keys::event(e.event.id));
            batch.remove(keys::dedupe_mark(e.event.id));
            for d in &e.deliveries {
                batch.remove(keys::delivery(d.id));
                if legacy || !self.journal {
                    batch.remove(keys::by_webhook(d));
                    batch.remove(keys::queue(d));
                }
                // A journal lists nothing: a second's entry goes with any of its deliveries
                // (a sled store keeps it for the others of that second).
                if legacy
                    && self.journal
                    && let Some(second) = keys::id_second(d.id)
                {
                    batch.remove(keys::webhook_second(d.webhook_id, second));
                }
                if e.local.indexed {
                    batch.remove(keys::by_event(d));
                }
            }
        }
        // Removing only frees space: allowed on a nearly full disk. Flushed before payload
        // files go, so that a crash cannot bring back a record whose file is gone. (Without
        // files, sled's own flush follows within its interval; a crash before it brings the
        // events back, and moving them again changes nothing.)
        self.write_freeing(|db| {
            db.apply_batch(batch)?;
            if !files.is_empty() {
                db.flush()?;
            }
            Ok(())
        })?;
        if !self.journal {
            for d in entries.iter().flat_map(|e| &e.deliveries) {
                self.fresh.remove(d.webhook_id, d.queue_ms, d.id);
            }
        }
        for file in files {
            // An orphan file would only cost disk space; the record is gone either way.
            let _ = std::fs::remove_file(self.payload_path(&file));
        }
        Ok(())
    }

    /// Marks a database just opened with its role, and forgets what was handed over before
    /// it was (re)opened. A journal gets the [`keys::JOURNAL_ROLE`] mark; a directory holding
    /// webhooks (a sled store) is refused as a journal. A sled store refuses
    /// a journal that still holds events (they belong in PostgreSQL: their deliveries name
    /// webhooks by PostgreSQL's ids and were never queued here); an empty one loses the mark.
    pub(super) fn settle_role(&self, db: &sled::Db) -> Result<(), StoreError> {
        self.handoff.clear();
        self.to_send.clear();
        // What was written before reopening is read again from the database.
        self.seconds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let marked = db.contains_key(keys::JOURNAL_ROLE)?;
        if self.journal {
            if !marked {
                // A sled store's webhooks are not PostgreSQL's: shipped from here, its events'
                // deliveries would name webhooks PostgreSQL does not have.
                if db.scan_prefix([keys::WEBHOOK]).next().is_some() {
                    return Err(StoreError::SledStoreAsJournal {
                        path: self.path.display().to_string(),
                    });
                }
                db.insert(keys::JOURNAL_ROLE, &[] as &[u8])?;
            }
            if [keys::BY_WEBHOOK, keys::WEBHOOK_SECOND]
                .iter()
                .any(|p| db.scan_prefix([*p]).next().is_some())
            {
                self.journal_legacy.store(true, Ordering::Relaxed);
            }
            return Ok(());
        }
        if !marked {
            return Ok(());
        }
        let events = db.scan_prefix([keys::EVENT]).keys().count();
        if events > 0 {
            return Err(StoreError::UnshippedJournal {
                path: self.path.display().to_string(),
                events,
            });
        }
        db.remove(keys::JOURNAL_ROLE)?;
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
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::event::Topic;
    use crate::store::{Backend, FlushMode, PgConfig, StoreConfig};

    /// The config of a shared store's journal under `dir` (nothing connects to `url` here).
    fn journal_config(dir: &Path) -> StoreConfig {
        StoreConfig {
            backend: Backend::Postgres(PgConfig {
                url: "postgres://hooktap@127.0.0.1:1/hooktap".to_owned(),
                lease: Duration::from_secs(30),
                pool_size: 1,
                ca_file: None,
            }),
            ..sled_config(dir)
        }
    }

    /// Calls `f` until `done` takes its result, at most 100 times 50 ms apart: sled's
    /// background thread may hold a store's lock a moment after the store was dropped.
    fn retried<T>(mut f: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
        let mut result = f();
        for _ in 0..100 {
            if done(&result) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            result = f();
        }
        result
    }

    /// Opens `config`'s store once a store dropped just before has let go of it.
    fn open_released(config: &StoreConfig) -> SledStore {
        retried(|| SledStore::open(config), Result::is_ok).expect("open the store")
    }

    /// Tries to open `store` until it is refused for good; says whether it was.
    fn refused_for_good(store: &SledStore) -> bool {
        retried(
            || {
                assert!(!store.maintain());
                store.refused.load(Ordering::Relaxed)
            },
            |refused| *refused,
        )
    }

    fn sled_config(dir: &Path) -> StoreConfig {
        super::super::test_config(dir, FlushMode::Interval(Duration::from_millis(100)))
    }

    /// Appends three events with one delivery each (the first and the last with payloads long
    /// enough for files).
    fn append_three(store: &SledStore) -> Vec<(Event, Vec<Delivery>)> {
        append_three_for(store, uuid::Uuid::now_v7())
    }

    fn append_three_for(store: &SledStore, webhook: uuid::Uuid) -> Vec<(Event, Vec<Delivery>)> {
        let topic = Topic::parse("order.created").expect("topic");
        (0..3)
            .map(|i| {
                let pad = if i == 1 { 10 } else { 5000 };
                let event = Event::new(
                    &topic,
                    "r",
                    serde_json::json!({"i": i, "pad": "x".repeat(pad)}),
                );
                let deliveries = vec![Delivery::new(&event, webhook, 0)];
                store.append(&event, &deliveries).expect("append");
                (event, deliveries)
            })
            .collect()
    }

    fn contents(batch: &[Entry]) -> Vec<(Event, Vec<Delivery>)> {
        batch
            .iter()
            .map(|e| (e.event.clone(), e.deliveries.clone()))
            .collect()
    }

    fn keys_under(store: &SledStore, prefix: u8) -> usize {
        store.db().expect("db").scan_prefix([prefix]).count()
    }

    /// Moves the journal in two batches and checks that everything of the first is gone.
    fn forget_in_two_batches(dir: &Path, store: &SledStore, appended: &[(Event, Vec<Delivery>)]) {
        assert_eq!(store.journal_backlog().expect("backlog").0, 3);
        let batch = store.journal_batch(2).expect("batch");
        assert_eq!(contents(&batch), appended[..2]);
        store.journal_forget(&batch).expect("forget");
        assert_eq!(
            contents(&store.journal_batch(10).expect("batch")),
            appended[2..]
        );
        assert_eq!(store.delivery(appended[0].1[0].id).expect("read"), None);
        for prefix in [keys::BY_WEBHOOK, keys::WEBHOOK_SECOND, keys::QUEUE] {
            assert!(
                keys_under(store, prefix) <= 1,
                "the forgotten events' {} entries are gone",
                prefix as char
            );
        }
        let payloads = std::fs::read_dir(dir.join("data").join("payloads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(payloads, 1, "the forgotten events' payload files are gone");
    }

    #[test]
    fn journalled_events_come_back_oldest_first_and_are_forgotten_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_released(&journal_config(dir.path()));
        let appended = append_three(&store);
        // A journal lists and queues nothing: the shared store does.
        assert_eq!(keys_under(&store, keys::BY_WEBHOOK), 0);
        assert_eq!(keys_under(&store, keys::WEBHOOK_SECOND), 0);
        assert_eq!(keys_under(&store, keys::QUEUE), 0);
        // The one with its payload inline is handed to the shipper in memory too.
        assert_eq!(store.handoff.lock().len(), 1);
        forget_in_two_batches(dir.path(), &store, &appended);
        assert_eq!(store.handoff.lock().len(), 0);
    }

    #[test]
    fn journalled_events_are_read_back_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_released(&journal_config(dir.path()));
        let appended = append_three(&store);
        drop(store);
        let store = open_released(&journal_config(dir.path()));
        forget_in_two_batches(dir.path(), &store, &appended);
    }

    #[test]
    fn an_event_stored_again_in_a_journal_is_read_back_with_every_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_released(&journal_config(dir.path()));
        let appended = append_three(&store);
        let (event, first) = &appended[0];
        let second = vec![Delivery::new(event, uuid::Uuid::now_v7(), 0)];
        store.append_again(event, &second).expect("append again");
        let batch = store.journal_batch(1).expect("batch");
        let mut ids: Vec<Uuid> = batch[0].deliveries.iter().map(|d| d.id).collect();
        ids.sort();
        let mut both = vec![first[0].id, second[0].id];
        both.sort();
        assert_eq!(ids, both);
    }

    #[test]
    fn dedupe_marks_come_back_with_their_events_and_go_with_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_released(&journal_config(dir.path()));
        let appended = append_three(&store);
        let key = |i: u8| DedupeKey([i; 32]);
        // Marks of the handed-over middle event and the last one read back (the first has
        // none).
        for i in [1, 2] {
            let id = appended[usize::from(i)].0.id;
            store
                .journal_mark_dedupe(id, &key(i), 1_000 + u64::from(i))
                .expect("mark");
        }
        let batch = store.journal_batch(10).expect("batch");
        let marks: Vec<_> = batch.iter().map(|e| e.dedupe).collect();
        assert_eq!(
            marks,
            vec![None, Some((key(1), 1_001)), Some((key(2), 1_002))]
        );
        store.journal_forget(&batch[..2]).expect("forget");
        let mut rest = store.journal_batch(10).expect("batch");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].dedupe, Some((key(2), 1_002)));
        // Forgetting an event removes its mark whether or not the batch read it.
        rest[0].dedupe = None;
        store.journal_forget(&rest).expect("forget");
        assert_eq!(keys_under(&store, keys::DEDUPE_MARK), 0);
    }

    #[test]
    fn a_journal_written_with_queue_entries_is_forgotten_whole() {
        // Journals written by earlier versions hold `x` and `q` entries, as a sled store does.
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = super::super::open_for_tests(dir.path());
        let appended = append_three(&sled);
        // Each delivery with its record, as those versions wrote them, and queued by
        // entries, as they queued every delivery.
        let db = sled.db().expect("db");
        for (_, deliveries) in &appended {
            for d in deliveries {
                db.insert(
                    keys::delivery(d.id),
                    super::super::record::encode(d).expect("encode"),
                )
                .expect("d");
                sled.put_queue_entry(&db, d).expect("q");
            }
        }
        drop(db);
        assert_eq!(keys_under(&sled, keys::QUEUE), 3);
        // Those versions listed each delivery by an `x` entry (this one by its second's
        // `X` entry: both kinds are forgotten).
        let db = sled.db().expect("db");
        for (_, deliveries) in &appended[..2] {
            for d in deliveries {
                db.insert(keys::by_webhook(d), &[] as &[u8]).expect("x");
            }
        }
        assert!(keys_under(&sled, keys::WEBHOOK_SECOND) >= 1);
        drop((db, sled));
        let store = open_released(&journal_config(dir.path()));
        forget_in_two_batches(dir.path(), &store, &appended);
    }

    #[test]
    fn a_sled_store_is_refused_as_a_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = super::super::open_for_tests(dir.path());
        let webhook = crate::webhook::Webhook::new(
            crate::webhook::WebhookSpec::example("crm"),
            crate::webhook::Origin::Api,
        );
        sled.put_webhook(&webhook).expect("webhook");
        let appended = append_three_for(&sled, webhook.id);
        drop(sled);
        let journal = SledStore::unopened(&journal_config(dir.path()));
        assert!(refused_for_good(&journal));
        assert!(!journal.is_open());
        drop(journal);
        // Still the sled store it was, events and all.
        let sled = open_released(&sled_config(dir.path()));
        let queued = sled
            .queued(
                appended[0].1[0].webhook_id,
                u64::MAX,
                10,
                &std::collections::HashSet::new(),
            )
            .expect("queued");
        assert_eq!(queued.len(), 3);
        assert!(
            !sled
                .db()
                .expect("db")
                .contains_key(keys::JOURNAL_ROLE)
                .expect("read")
        );
    }

    #[test]
    fn a_journal_holding_events_is_no_sled_store_and_an_empty_one_becomes_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open_released(&journal_config(dir.path()));
        append_three(&journal);
        drop(journal);
        let path = dir.path().join("data");
        let e = retried(
            || {
                SledStore::open_stopped(&path)
                    .err()
                    .expect("a journal is no sled store to move")
                    .to_string()
            },
            |e| !e.contains("in use"),
        );
        assert!(
            e.contains("local journal of an instance on PostgreSQL"),
            "{e}"
        );
        let sled_config = sled_config(dir.path());
        let e = retried(
            || SledStore::open(&sled_config),
            |opened| !matches!(opened, Err(StoreError::Sled(_))),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.contains("still holds 3 events not moved"), "{e}");
        // Met when reopening (a start that found the store held by another hooktap): refused
        // once, and not tried again.
        let later = SledStore::unopened(&sled_config);
        assert!(refused_for_good(&later));
        assert!(!later.maintain());
        assert!(!later.is_open());
        drop(later);

        let journal = open_released(&journal_config(dir.path()));
        let batch = journal.journal_batch(10).expect("batch");
        journal.journal_forget(&batch).expect("forget");
        drop(journal);
        let sled = open_released(&sled_config);
        assert!(
            !sled
                .db()
                .expect("db")
                .contains_key(keys::JOURNAL_ROLE)
                .expect("read")
        );
    }
}
