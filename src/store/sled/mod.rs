//! The sled backend: the embedded default store, one directory on local disk.
//!
//! All records live in one sled tree under one-byte prefixes (`keys`). The hot writes
//! (storing an event with its deliveries, recording an attempt) are single writes in an order
//! that makes a crash between them harmless: a queue entry is written after what it points to
//! and removed after the state that replaces it, so a crash can at worst leave a stale queue
//! entry (dropped when read) or send a delivery once more. (One sled batch per event would be
//! atomic but costs a log write of its own: about 3.5× slower, measured.) The key layout:
//!
//! | key | value |
//! |---|---|
//! | `e` event id | [`Event`] (JSON) and `deliveries`: the ids of its deliveries |
//! | `d` delivery id | [`Delivery`](crate::event::Delivery): a version byte and postcard (`record`); JSON in stores written before |
//! | `q` webhook id, queue ms (big-endian u64), delivery id | the ordering key (`k` + key) or empty: the queue (new deliveries are queued in memory at first: `fresh`) |
//! | `Q` | the checkpoint of the queue in memory (Unix second, big-endian u64; see `fresh`) |
//! | `X` webhook id, Unix second (big-endian u64) | empty: the webhook has deliveries whose ids were made in that second (its deliveries are the `d` records of its seconds that name it) |
//! | `x` webhook id, delivery id | empty: a webhook's delivery, for deliveries stored before `X` entries and ids that are not UUIDv7 |
//! | `v` event id, delivery id | empty: an event's deliveries, for events stored before records listed them (no longer written) |
//! | `a` delivery id, attempt number (big-endian u32) | [`Attempt`](crate::event::Attempt) (JSON) |
//! | `t` webhook id, attempt time ms (big-endian u64), delivery id, attempt number | success, duration ms, lag ms (17 bytes): attempt statistics |
//! | `f` webhook id, attempt time ms, delivery id, attempt number | empty: the failed attempts of `t` alone (a webhook's last error) |
//! | `w` webhook id | [`Webhook`](crate::webhook::Webhook) (JSON) |
//! | `k` dedupe key digest | the claim's end, Unix ms (big-endian u64) |
//! | `K` event id | journal only: the event's dedupe key digest and the claim's end |
//! | `J` | journal only: marks the database as a shared store's journal |
//!
//! As the local journal of a shared store (see [`crate::store::postgres`]) the database holds
//! events on their way into it: an event's record and its deliveries' records, without the
//! `X` and `q` entries that only the sled store's own delivery reads.
//!
//! Ids are UUIDv7 and numbers big-endian, so byte order is time order: "what is due for this
//! webhook" is a range scan from the start of its queue prefix.
//!
//! Every write goes through `SledStore::write`, which refuses it while the disk is nearly
//! full and notes a failure inside sled so that [`SledStore::maintain`] reopens the database.
//!
//! - [`keys`]: the key layout.
//! - `events`: events (large payloads as files beside the database) and the intake.
//! - `queue`: deliveries, the queue, a webhook's deliveries and the attempt log.
//! - `fresh`: the newest part of each queue, held in memory, and its checkpoint.
//! - `record`: a delivery's record in its binary form.
//! - `webhooks`: webhook records.
//! - `pending`: events held as files while the database is not open.
//! - `retention`: the sweep of old records.
//! - `dedupe`: the keys of rules' `dedupe` claims.
//! - `stats`: attempt statistics from the `t` index.
//!
//! The `t` index came with the console (issue 15): a store written by an older hooktap has
//! none for its earlier attempts, so statistics count attempts from the upgrade on (the
//! window they show is at most a day, so they are whole a day after the upgrade).

mod barrier;
pub use barrier::Durable;
mod dedupe;
mod events;
mod fresh;
mod journal;
pub use journal::{Entry, Local};
mod keys;
mod pending;
mod queue;
mod record;
mod retention;
mod stats;
mod to_send;
mod webhooks;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AttemptStats, BarrierStats, DeliveryPage, DeliveryQuery, EventQuery, FlushMode, KeyHeads,
    QueueStats, Recorded, Recording, Replaced, Requeued, StatsWindow, Store, StoreConfig,
    StoreError, Swept,
};
use crate::event::{Attempt, DedupeKey, Delivery, Event};
use crate::webhook::Webhook;

/// The file naming the process that holds the store.
pub const PID_FILE: &str = "hooktap.pid";

/// The file `hooktap migrate --from-sled` leaves in a sled store it has moved into PostgreSQL:
/// it names where to and when. `hooktap run` refuses such a store (its engine would send the
/// moved deliveries again beside the instances on PostgreSQL), and a second `--from-sled`
/// needs `--force`.
pub const MOVED_FILE: &str = "MOVED-TO-POSTGRES";

pub struct SledStore {
    /// `None` until the database could be opened (another hooktap holds it during an upgrade;
    /// the disk is read-only...) and while it is reopened after a failure.
    db: arc_swap::ArcSwapOption<sled::Db>,
    /// Whether events go into sled: set once the database is open and its webhooks applied.
    /// Until then events wait as files in `pending/` (see [`SledStore::drain_pending`]).
    ready: AtomicBool,
    /// The last error from opening the database, to log it when it changes rather than on
    /// every try.
    open_error: Mutex<Option<String>>,
    /// How to open it again.
    sled_config: sled::Config,
    /// Set when a write failed in sled itself: sled 0.34 then keeps failing until reopened.
    broken: AtomicBool,
    path: std::path::PathBuf,
    flush: FlushMode,
    /// Appends that failed (the proxy keeps serving; this is what operators watch).
    failed_appends: AtomicU64,
    /// Below this much free space, writes are refused before they reach sled.
    min_free_space: u64,
    /// When [`SledStore::maintain`] last flushed (interval mode), to find sled's background
    /// flush failing: sled keeps accepting writes into memory after a failed flush and only
    /// a flush reports the failure.
    flushed_at: Mutex<std::time::Instant>,
    /// The group commit of `every-event` mode.
    barrier: barrier::Barrier,
    /// Whether the last check found enough free space (see [`SledStore::check_space`]).
    space_ok: AtomicBool,
    /// Whether this is the local journal of a shared store (`[store] backend = "postgres"`):
    /// it writes no `X`, `x` or `q` entries.
    journal: bool,
    /// Whether the journal may hold events written with `x` and `q` entries (by a hooktap
    /// older than journals without them), which forgetting them must remove too: found at
    /// open, cleared once the journal was empty.
    journal_legacy: AtomicBool,
    /// A journal's new events, handed to the shipper in memory.
    handoff: journal::Handoff,
    /// The last second whose `X` entry each webhook's deliveries wrote, since the database
    /// was opened: the next delivery of that webhook in the same second writes none.
    seconds: Mutex<std::collections::HashMap<Uuid, u64>>,
    /// The newest deliveries of each webhook's queue, held in memory without `q` entries.
    /// Shared with reads run on a blocking thread ([`SledStore::off_thread`]).
    fresh: Arc<fresh::Fresh>,
    /// The webhooks known to have no `q` entries.
    empty_queues: queue::EmptyQueues,
    /// The events of deliveries held in `fresh`, for the scheduler that sends them.
    to_send: to_send::ToSend,
    /// Webhooks whose deletion callers are running part by part, with how many: the keeper
    /// leaves them to those (and finishes one whose callers went away, see
    /// `webhooks::Deletion`).
    deleting: Mutex<std::collections::HashMap<Uuid, usize>>,
    /// Set when opening refused the directory for good (a journal still holding events opened
    /// as a sled store, a sled store opened as a journal): [`SledStore::maintain`] stops
    /// trying.
    refused: AtomicBool,
}

/// Creates the directory readable by its owner only: it holds payloads, secrets and the
/// delivery log.
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StoreError::CreateDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    // An existing directory keeps its mode under `create`: tighten it as well.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

impl SledStore {
    /// Opens the store, ready for events.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let store = Self::unopened(config);
        create_private_dir(&config.path)?;
        let db = store.sled_config.open()?;
        store.settle_role(&db)?;
        store.recover_fresh(&db)?;
        store.db.store(Some(Arc::new(db)));
        store.check_space();
        store.mark_ready();
        Ok(store)
    }

    /// Opens the sled store at `path` for reading by a tool (`hooktap migrate --from-sled`):
    /// only if it exists and no process holds it, and without claiming it (no pid file).
    pub fn open_stopped(path: &Path) -> Result<Self, StoreError> {
        if !path.join("db").is_file() {
            return Err(StoreError::Unusable(format!(
                "there is no sled store at {} (no `db` file)",
                path.display()
            )));
        }
        if Self::locked_by_another(path) {
            let by = Self::holder(path).map_or_else(String::new, |pid| format!(" (pid {pid})"));
            return Err(StoreError::Unusable(format!(
                "the sled store at {} is in use by a running hooktap{by}: stop it first",
                path.display()
            )));
        }
        let store = Self::unopened(&StoreConfig {
            path: path.to_path_buf(),
            flush: FlushMode::Interval(Duration::from_millis(500)),
            retention: Duration::MAX,
            min_free_space: 0,
            backend: super::Backend::Sled,
        });
        let db = store.sled_config.open()?;
        if db.contains_key(keys::JOURNAL_ROLE)? {
            return Err(StoreError::Unusable(format!(
                "{} is the local journal of an instance on PostgreSQL, not a sled store: what it holds moves into PostgreSQL when that instance runs",
                path.display()
            )));
        }
        // Its queue as `queued` reads it: deliveries stored without `q` entries included.
        store.recover_fresh(&db)?;
        store.db.store(Some(Arc::new(db)));
        Ok(store)
    }

    /// What the [`MOVED_FILE`] of the sled store at `path` says, if there is one.
    pub fn moved(path: &Path) -> Result<Option<String>, StoreError> {
        let file = path.join(MOVED_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Unusable(format!(
                "cannot read {}: {e}",
                file.display()
            ))),
        }
    }

    /// Marks the sled store at `path` as moved (see [`MOVED_FILE`]): written whole and
    /// synced, so that a crash leaves the old marker, a whole one or none.
    pub fn mark_moved(path: &Path, note: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let file = path.join(MOVED_FILE);
        let part = path.join(format!("{MOVED_FILE}.part"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&part)?;
            f.write_all(note.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&part, &file)?;
            std::fs::File::open(path)?.sync_all()
        };
        write().map_err(|e| StoreError::Unusable(format!("cannot write {}: {e}", file.display())))
    }

    /// A store whose database is not open yet: events wait in `pending/` until
    /// [`SledStore::maintain`] opens it and [`SledStore::mark_ready`] is called. This is how hooktap
    /// starts while another hooktap still holds the database (an upgrade) or while the disk
    /// cannot be written: the proxy serves either way.
    pub fn unopened(config: &StoreConfig) -> Self {
        // In every-event mode events are flushed explicitly; the background flush still runs so
        // that delivery outcomes reach the disk too.
        let flush_every_ms = match config.flush {
            FlushMode::Interval(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            FlushMode::EveryEvent => Some(500),
        };
        let barrier = barrier::Barrier::new(config.path.join("db"));
        if config.flush == FlushMode::EveryEvent
            && let Err(e) = barrier.start()
        {
            // The first event tries again (and fails the same way, so it is not confirmed).
            tracing::warn!(error = %e, "cannot start the durability barrier's thread yet");
        }
        Self {
            db: arc_swap::ArcSwapOption::empty(),
            ready: std::sync::atomic::AtomicBool::new(false),
            open_error: std::sync::Mutex::new(None),
            sled_config: sled::Config::new()
                .path(&config.path)
                .flush_every_ms(flush_every_ms),
            broken: std::sync::atomic::AtomicBool::new(false),
            path: config.path.clone(),
            flush: config.flush,
            failed_appends: AtomicU64::new(0),
            min_free_space: config.min_free_space,
            space_ok: std::sync::atomic::AtomicBool::new(true),
            flushed_at: std::sync::Mutex::new(std::time::Instant::now()),
            barrier,
            journal: matches!(config.backend, super::Backend::Postgres(_)),
            journal_legacy: AtomicBool::new(false),
            handoff: journal::Handoff::default(),
            seconds: Mutex::default(),
            fresh: Arc::default(),
            empty_queues: queue::EmptyQueues::default(),
            to_send: to_send::ToSend::default(),
            deleting: Mutex::default(),
            refused: AtomicBool::new(false),
        }
    }

    /// Whether another process holds the database's lock (a running hooktap).
    pub fn locked_by_another(path: &Path) -> bool {
        use fs2::FileExt;
        match std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("db"))
        {
            // The lock is released when `f` is closed.
            Ok(f) => f.try_lock_exclusive().is_err(),
            Err(_) => false,
        }
    }

    /// Events go into sled from now on (the webhooks have been applied). Records this
    /// process as the store's holder in `hooktap.pid`, which `hooktap run --upgrade` reads.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
        let pid_file = self.path.join(PID_FILE);
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the pid file");
        }
    }

    /// Whether the database is open but its webhooks not yet applied.
    pub fn needs_setup(&self) -> bool {
        self.is_open() && !self.ready.load(Ordering::Acquire)
    }

    /// The pid of the process that holds the store, from `hooktap.pid`, if it is running.
    pub fn holder(path: &Path) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(path.join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    }

    /// Whether the database is open.
    pub fn is_open(&self) -> bool {
        self.db.load().is_some()
    }

    /// The database, unless it is being reopened.
    fn db(&self) -> Result<Arc<sled::Db>, StoreError> {
        self.db.load_full().ok_or(StoreError::NotOpen)
    }

    /// Notes a failed write: an I/O error inside sled means it must be reopened.
    pub(super) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(
            StoreError::Sled(sled::Error::Io(_) | sled::Error::ReportableBug(_))
            | StoreError::Barrier(_),
        ) = &result
        {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Closes sled after a write failed inside it; waits for operations in flight to let go
    /// of the handle first, since sled holds an exclusive file lock until it is dropped.
    fn close(&self) {
        let Some(mut old) = self.db.swap(None) else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    self.barrier.release_file();
                    // Taken back from the database when it opens again.
                    self.fresh.reset(None);
                    self.to_send.clear();
                    self.broken.store(false, Ordering::Relaxed);
                    return;
                }
                Err(shared) if std::time::Instant::now() < deadline => {
                    old = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(shared) => {
                    // Still in use: keep it and try again on the next maintenance round.
                    self.db.store(Some(shared));
                    return;
                }
            }
        }
    }

    /// Keeps the database usable; called a few times a second. Removes deleted webhooks'
    /// history (for ~100 ms a round, see [`SledStore::finish_deletions`]), checks free space
    /// (see [`SledStore::check_space`]), closes a database that failed and opens one that is
    /// not open. Returns true when it opened the database.
    pub fn maintain(&self) -> bool {
        // Before the space check: it only removes, and so frees space.
        if self.is_open()
            && let Err(e) = self.finish_deletions(webhooks::DELETION_BUDGET)
        {
            tracing::warn!(error = %e, "cannot go on removing a deleted webhook's history yet; trying again");
        }
        if !self.check_space() {
            return false;
        }
        if let FlushMode::Interval(every) = self.flush {
            let mut at = self
                .flushed_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if at.elapsed() >= every {
                *at = std::time::Instant::now();
                if let Ok(db) = self.db() {
                    if let Err(e) = db.flush() {
                        tracing::error!(path = %self.path.display(), error = %e,
                            "the store cannot write to disk: events since the last flush are lost; reopening it");
                        self.broken.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        if self.barrier.take_failure() {
            self.broken.store(true, Ordering::Relaxed);
        }
        if self.broken.load(Ordering::Relaxed) {
            self.close();
        }
        self.to_send.prune(fresh::now_ms());
        if self.is_open()
            && let Err(e) = self.spill_fresh()
        {
            tracing::warn!(error = %e, "cannot give waiting deliveries their queue entries yet; trying again");
        }
        if self.is_open() || self.refused.load(Ordering::Relaxed) {
            return false;
        }
        let opened = create_private_dir(&self.path).and_then(|()| {
            let db = self.sled_config.open()?;
            self.settle_role(&db)?;
            self.recover_fresh(&db)?;
            Ok(db)
        });
        let mut last = self
            .open_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match opened {
            Ok(db) => {
                self.db.store(Some(Arc::new(db)));
                *last = None;
                tracing::warn!(path = %self.path.display(), "the store is open: events are stored again");
                true
            }
            Err(
                e @ (StoreError::UnshippedJournal { .. } | StoreError::SledStoreAsJournal { .. }),
            ) => {
                // Not a passing failure: trying again cannot help (it only reads the journal
                // again and again). Said loudly, once.
                self.refused.store(true, Ordering::Relaxed);
                tracing::error!(path = %self.path.display(), error = %e,
                    "the store will not open with this config: events wait in pending/ until the config is fixed and hooktap restarted");
                false
            }
            Err(e) => {
                let message = e.to_string();
                if last.as_deref() != Some(message.as_str()) {
                    if Self::locked_by_another(&self.path) {
                        tracing::info!(path = %self.path.display(), holder = ?Self::holder(&self.path),
                            "waiting for the hooktap holding the store to exit; events wait in pending/ meanwhile");
                    } else {
                        tracing::error!(path = %self.path.display(), error = %message,
                            "cannot open the store; trying again (traffic still flows; events wait in pending/ if that can be written)");
                    }
                    *last = Some(message);
                }
                false
            }
        }
    }

    /// Measures the free space of the store's disk (from [`SledStore::maintain`]).
    ///
    /// sled 0.34 keeps failing after one write hits a full disk, even once space is freed. So
    /// hooktap refuses writes itself while free space is below `min_free_space`: sled never
    /// sees the full disk, and writing resumes by itself when space returns.
    pub fn check_space(&self) -> bool {
        let available = fs2::available_space(&self.path).unwrap_or(u64::MAX);
        let ok = available >= self.min_free_space;
        // When space returns, find out whether sled failed meanwhile (in its background flush,
        // say): a flush reports the failure it is stuck on.
        if ok && !self.space_ok.load(Ordering::Relaxed) {
            if let Ok(db) = self.db() {
                if db.flush().is_err() {
                    self.broken.store(true, Ordering::Relaxed);
                }
            }
        }
        let was = self.space_ok.swap(ok, Ordering::Relaxed);
        if was && !ok {
            tracing::error!(path = %self.path.display(), available, min_free_space = self.min_free_space,
                "the store's disk is nearly full: new events are not stored (traffic still flows) until space is freed");
        } else if !was && ok {
            tracing::warn!(path = %self.path.display(), available, "the store's disk has space again: events are stored again");
        }
        ok
    }

    /// `Err(DiskFull)` while the last space check found too little room.
    fn writable(&self) -> Result<(), StoreError> {
        if self.space_ok.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(StoreError::DiskFull {
                available: fs2::available_space(&self.path).unwrap_or(0),
                required: self.min_free_space,
            })
        }
    }

    /// Runs one write (or a group of writes) on the database: refused while the disk is
    /// nearly full, and a failure inside sled marks the database for reopening. Every write
    /// goes through here.
    fn write<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.writable()?;
        let result = self.db().and_then(|db| f(&db));
        self.note(result)
    }

    /// A write that only removes, and so frees space: not refused while the disk is nearly
    /// full (the journal of a shared store must drain then most of all).
    fn write_freeing<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = self.db().and_then(|db| f(&db));
        self.note(result)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, k: Vec<u8>) -> Result<Option<T>, StoreError> {
        match self.db()?.get(k)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: Vec<u8>) -> Result<Vec<T>, StoreError> {
        self.db()?
            .scan_prefix(prefix)
            .map(|entry| Ok(serde_json::from_slice(&entry?.1)?))
            .collect()
    }

    /// Runs a read off the async runtime, on tokio's blocking pool: the admin API shares a
    /// one-thread runtime with the health checks, metrics and the live stream, and a read over
    /// a day of a busy webhook's attempts (or a payload search) takes long enough to stall
    /// them.
    async fn off_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce(&sled::Db, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read(&db, &path))
            .await
            .map_err(|e| StoreError::Task(format!("a store read failed: {e}")))?
    }

    /// Whether events go into sled (rather than wait in `pending/`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.is_open()
    }

    /// How many appends have failed since start.
    pub fn failed_appends(&self) -> u64 {
        self.failed_appends.load(Ordering::Relaxed)
    }

    /// A cheap read that fails when the store does (for readiness checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.db()?.get(b"ping")?;
        Ok(())
    }

    /// Writes everything buffered to disk (called on shutdown and in tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db()?.flush()?;
        Ok(())
    }
}

#[async_trait]
impl Store for SledStore {
    fn is_ready(&self) -> bool {
        SledStore::is_ready(self)
    }

    fn needs_setup(&self) -> bool {
        SledStore::needs_setup(self)
    }

    fn mark_ready(&self) {
        SledStore::mark_ready(self);
    }

    fn maintain(&self) -> bool {
        SledStore::maintain(self)
    }

    fn drain_held(
        &self,
        store: &mut dyn FnMut(&Event) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        self.drain_pending(store)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        SledStore::ping(self)
    }

    fn barrier(&self) -> Option<BarrierStats> {
        (self.flush == FlushMode::EveryEvent).then(|| self.barrier.stats())
    }

    fn failed_appends(&self) -> u64 {
        SledStore::failed_appends(self)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // At shutdown every pending delivery gets its record and queue entry: the next start has nothing
        // to look for, and a hooktap that holds no deliveries in memory finds them all.
        self.spill_fresh_all()?;
        SledStore::flush(self)
    }

    fn append(&self, event: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        SledStore::append(self, event, deliveries)
    }

    fn append_deferred(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        SledStore::append_deferred(self, event, deliveries)
    }

    fn append_shared(
        &self,
        event: &Arc<Event>,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        SledStore::append_shared(self, event, deliveries)
    }

    fn append_again(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        SledStore::append_again(self, event, deliveries)
    }

    fn hold(&self, event: &Event) -> Result<(), StoreError> {
        SledStore::hold(self, event)
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        SledStore::webhooks(self)
    }

    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        SledStore::webhook(self, id)
    }

    async fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        SledStore::put_webhook(self, webhook)
    }

    async fn save_webhook(&self, webhook: &Webhook) -> Result<bool, StoreError> {
        SledStore::save_webhook(self, webhook)
    }

    async fn replace_webhook(&self, webhook: &Webhook) -> Result<Replaced, StoreError> {
        SledStore::replace_webhook(self, webhook)
    }

    /// The webhook's record goes and memory lets go of its deliveries now; the keeper
    /// removes the rest ([`SledStore::finish_deletions`]). The pending deliveries are counted
    /// as the queue (off the caller's runtime: the admin API's one thread; a paused webhook's
    /// queue may be long) holds them just before; those the webhook still gets before its
    /// caller stops running it are dropped uncounted.
    async fn delete_webhook_in_background(&self, id: Uuid) -> Result<usize, StoreError> {
        let pending = Store::queue_stats(self, id).await?.pending;
        drop(self.delete_webhook_start(id)?);
        Ok(pending)
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        // Part by part, yielding between them: a long history does not hold up the tasks
        // that share the caller's runtime (the admin API's health checks, for one). Dropped
        // part-way (the request went away), the keeper finishes it.
        let mut deletion = self.delete_webhook_start(id)?;
        while deletion.part()? {
            tokio::task::yield_now().await;
        }
        Ok(deletion.pending())
    }

    async fn queued(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<Vec<Delivery>, StoreError> {
        SledStore::queued(self, webhook, until_ms, limit, skip)
    }

    async fn claim_key_heads(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<KeyHeads, StoreError> {
        SledStore::claim_key_heads(self, webhook, now_ms, limit, skip)
    }

    async fn next_queued(
        &self,
        webhook: Uuid,
        skip: &HashSet<Uuid>,
    ) -> Result<Option<u64>, StoreError> {
        SledStore::next_queued(self, webhook, skip)
    }

    async fn queue_stats(&self, webhook: Uuid) -> Result<QueueStats, StoreError> {
        let stats = self
            .off_thread(move |db, _| queue::queue_stats_in(db, webhook))
            .await?;
        Ok(self.with_held(stats, webhook))
    }

    async fn record_attempts(
        &self,
        webhook: Uuid,
        changes: &[Recorded],
        record: Option<&Webhook>,
    ) -> Result<Recording, StoreError> {
        SledStore::record_attempts(self, webhook, changes, record).map(|written| {
            if written {
                Recording::Saved
            } else {
                Recording::Gone
            }
        })
    }

    async fn requeue(&self, delivery: &Delivery, now_ms: u64) -> Result<Requeued, StoreError> {
        Ok(SledStore::requeue(self, delivery, now_ms)?.map_or(Requeued::Gone, Requeued::Done))
    }

    async fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        SledStore::event(self, id)
    }

    async fn event_to_send(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        SledStore::event_to_send(self, id)
    }

    async fn events_page(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let query = query.clone();
        self.off_thread(move |db, path| events::events_page_in(db, path, &query))
            .await
    }

    async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        SledStore::delivery(self, id)
    }

    async fn deliveries_of_event(&self, event: Uuid) -> Result<Vec<Delivery>, StoreError> {
        SledStore::deliveries_of_event(self, event)
    }

    async fn attempt_stats(
        &self,
        webhook: Uuid,
        window: &StatsWindow,
    ) -> Result<AttemptStats, StoreError> {
        let window = *window;
        self.off_thread(move |db, _| stats::attempt_stats_in(db, webhook, &window))
            .await
    }

    async fn last_failure(
        &self,
        webhook: Uuid,
        since_ms: u64,
    ) -> Result<Option<Attempt>, StoreError> {
        self.off_thread(move |db, _| stats::last_failure_in(db, webhook, since_ms))
            .await
    }

    async fn deliveries_of(
        &self,
        webhook: Uuid,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        SledStore::deliveries_of(self, webhook, limit)
    }

    async fn deliveries_page(
        &self,
        webhook: Uuid,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        let (fresh, query) = (Arc::clone(&self.fresh), *query);
        self.off_thread(move |db, _| queue::deliveries_page_in(db, &fresh, webhook, &query))
            .await
    }

    async fn failed_deliveries(
        &self,
        webhook: Uuid,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<Delivery>, StoreError> {
        let fresh = Arc::clone(&self.fresh);
        self.off_thread(move |db, _| queue::failed_deliveries_in(db, &fresh, webhook, since, until))
            .await
    }

    async fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
        SledStore::attempts(self, delivery)
    }

    fn sweep(&self, cutoff: OffsetDateTime) -> Result<Swept, StoreError> {
        SledStore::sweep(self, cutoff)
    }

    fn claim_dedupe(
        &self,
        key: &DedupeKey,
        event: Uuid,
        now_ms: u64,
        window: Duration,
    ) -> Result<bool, StoreError> {
        SledStore::claim_dedupe(self, key, event, now_ms, window)
    }

    fn release_dedupe(&self, key: &DedupeKey, event: Uuid) -> Result<(), StoreError> {
        SledStore::release_dedupe(self, key, event)
    }
}

/// A store config under `dir` for tests.
#[cfg(test)]
pub(crate) fn test_config(dir: &Path, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        path: dir.join("data"),
        flush,
        retention: Duration::from_secs(3600),
        min_free_space: 0,
        backend: super::Backend::Sled,
    }
}

/// A store opened under `dir` for tests, flushed every 100 ms.
#[cfg(test)]
pub(crate) fn open_for_tests(dir: &Path) -> SledStore {
    SledStore::open(&test_config(
        dir,
        FlushMode::Interval(Duration::from_millis(100)),
    ))
    .expect("open store")
}

/// A webhook made from the example spec named `name`, stored in `store`.
#[cfg(test)]
pub(crate) fn webhook_for_tests(store: &SledStore, name: &str) -> Webhook {
    let w = Webhook::new(
        crate::webhook::WebhookSpec::example(name),
        crate::webhook::Origin::Api,
    );
    store.put_webhook(&w).expect("webhook");
    w
}

/// [`open_for_tests`] once a store dropped just before has let go of the directory (sled
/// releases its file lock from its flusher thread, a moment after the drop).
#[cfg(test)]
pub(crate) fn reopen_for_tests(dir: &Path) -> SledStore {
    let config = test_config(dir, FlushMode::Interval(Duration::from_millis(100)));
    for _ in 0..100 {
        if let Ok(store) = SledStore::open(&config) {
            return store;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    open_for_tests(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> SledStore {
        open_for_tests(dir)
    }

    crate::store_contract_tests!(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        (dir, Arc::new(store) as Arc<dyn Store>)
    });

    /// The console's reads leave the async runtime: on a one-thread runtime their futures
    /// are pending (the read runs on the blocking pool) instead of finishing in their first
    /// poll, which would hold every other task on that thread meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn console_reads_run_off_the_async_runtime() {
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Poll};

        // A read made inline is never pending; one on the blocking pool is, unless its thread
        // finishes before the first poll returns (an empty store is read that fast now and
        // then): pending at least once in twenty tries.
        fn first_poll_is_pending<F: Future>(make: impl Fn() -> F) -> bool {
            (0..20).any(|_| {
                let mut f = pin!(make());
                let mut cx = Context::from_waker(std::task::Waker::noop());
                matches!(f.as_mut().poll(&mut cx), Poll::Pending)
            })
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let s: &dyn Store = &store;
        let w = Uuid::now_v7();
        let window = StatsWindow {
            since_ms: 0,
            bucket_ms: 60_000,
            buckets: 60,
        };
        let query = EventQuery {
            limit: 10,
            ..EventQuery::default()
        };
        assert!(first_poll_is_pending(|| s.attempt_stats(w, &window)));
        assert!(first_poll_is_pending(|| s.last_failure(w, 0)));
        assert!(first_poll_is_pending(|| s.events_page(&query)));
        assert!(first_poll_is_pending(|| s.queue_stats(w)));
        // And they still answer.
        assert_eq!(
            s.attempt_stats(w, &window)
                .await
                .expect("stats")
                .totals
                .failed,
            0
        );
        assert!(s.events_page(&query).await.expect("events").is_empty());
    }

    #[test]
    fn the_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = open(dir.path());
        let mode = std::fs::metadata(dir.path().join("data"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
