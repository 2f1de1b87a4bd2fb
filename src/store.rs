//! The durable store: events, deliveries, the delivery queue, the attempt log and webhooks, in sled.
//!
//! All records live in one sled tree under one-byte prefixes. The hot writes (storing an event
//! with its deliveries, recording an attempt) are single writes in an order that makes a crash
//! between them harmless: a queue entry is written after what it points to and removed after
//! the state that replaces it, so a crash can at worst leave a stale queue entry (dropped when
//! read) or send a delivery once more. (One sled batch per event would be atomic but costs a
//! log write of its own: about 3.5× slower, measured.) The key layout:
//!
//! | key | value |
//! |---|---|
//! | `e` event id | [`Event`] (JSON) |
//! | `d` delivery id | [`Delivery`] (JSON) |
//! | `q` webhook id, queue ms (big-endian u64), delivery id | empty: the queue |
//! | `x` webhook id, delivery id | empty: a webhook's deliveries, in time order |
//! | `v` event id, delivery id | empty: an event's deliveries |
//! | `a` delivery id, attempt number (big-endian u32) | [`Attempt`] (JSON) |
//! | `w` webhook id | [`Webhook`] (JSON) |
//! | `n` webhook name | webhook id |
//!
//! Ids are UUIDv7 and numbers big-endian, so byte order is time order: "what is due for this
//! webhook" is a range scan from the start of its queue prefix. The store is the queue; nothing
//! about pending work lives only in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{FlushMode, StoreConfig};
use crate::event::{Attempt, Delivery, DeliveryState, Event};
use crate::webhook::{Origin, Webhook, WebhookSpec};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the store is not open (waiting for it to open; see the log)")]
    NotOpen,
    #[error("cannot read or write the payload file {file}: {source}")]
    Payload {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot write or read the pending event {file}: {source}")]
    Pending {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "the store's disk is nearly full ({available} bytes free, min_free_space is {required}); writes resume when space is freed"
    )]
    DiskFull { available: u64, required: u64 },
}

pub struct Store {
    /// `None` until the database could be opened (another hooktap holds it during an upgrade;
    /// the disk is read-only...) and while it is reopened after a failure.
    db: arc_swap::ArcSwapOption<sled::Db>,
    /// Whether events go into sled: set once the database is open and its webhooks applied.
    /// Until then events wait as files in `pending/` (see [`Store::drain_pending`]).
    ready: std::sync::atomic::AtomicBool,
    /// The last error from opening the database, to log it when it changes rather than on
    /// every try.
    open_error: std::sync::Mutex<Option<String>>,
    /// How to open it again.
    sled_config: sled::Config,
    /// Set when a write failed in sled itself: sled 0.34 then keeps failing until reopened.
    broken: std::sync::atomic::AtomicBool,
    path: std::path::PathBuf,
    flush: FlushMode,
    /// Appends that failed (the proxy keeps serving; this is what operators watch).
    failed_appends: AtomicU64,
    /// Below this much free space, writes are refused before they reach sled.
    min_free_space: u64,
    /// When [`Store::maintain`] last flushed (interval mode), to find sled's background
    /// flush failing: sled keeps accepting writes into memory after a failed flush and only
    /// a flush reports the failure.
    flushed_at: std::sync::Mutex<std::time::Instant>,
    /// Whether the last check found enough free space (see [`Store::check_space`]).
    space_ok: std::sync::atomic::AtomicBool,
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn queue_key(d: &Delivery) -> Vec<u8> {
    key(
        b'q',
        &[
            d.webhook_id.as_bytes(),
            &d.queue_ms.to_be_bytes(),
            d.id.as_bytes(),
        ],
    )
}

fn attempt_key(delivery: Uuid, number: u32) -> Vec<u8> {
    key(b'a', &[delivery.as_bytes(), &number.to_be_bytes()])
}

/// The id at the end of a key (every index key ends with the 16-byte id it points to).
fn trailing_id(k: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(k.get(k.len().checked_sub(16)?..)?).ok()
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

/// Payloads bigger than this are kept in a file beside the database rather than in sled:
/// sled 0.34 keeps large values resident in memory whatever its cache size, so storing them
/// inline would grow memory with every large event (measured: +200 MB RSS per 200 MB of
/// 64 KiB values, +31 MB for 1 KiB values).
const INLINE_PAYLOAD_MAX: usize = 4096;

/// The file naming the process that holds the store.
pub const PID_FILE: &str = "hooktap.pid";

/// Where events wait while the database is not open, under the store directory.
const PENDING: &str = "pending";

/// An event as sled holds it: a large payload lives in `payloads/<file>` instead.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEvent {
    #[serde(flatten)]
    event: Event,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_file: Option<String>,
}

/// The outcome of applying hooktap.toml's webhooks.
#[derive(Debug)]
pub struct Synced {
    /// Every stored webhook, from the file or the API.
    pub webhooks: Vec<Webhook>,
    /// Config-declared webhooks no longer in the file: name and pending deliveries dropped.
    pub removed: Vec<(String, usize)>,
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub events: usize,
    pub deliveries: usize,
    pub attempts: usize,
}

impl Store {
    /// Opens the store, ready for events.
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let store = Self::unopened(config);
        create_private_dir(&config.path)?;
        store.db.store(Some(Arc::new(store.sled_config.open()?)));
        store.check_space();
        store.mark_ready();
        Ok(store)
    }

    /// A store whose database is not open yet: events wait in `pending/` until
    /// [`Store::maintain`] opens it and [`Store::mark_ready`] is called. This is how hooktap
    /// starts while another hooktap still holds the database (an upgrade) or while the disk
    /// cannot be written: the proxy serves either way.
    pub fn unopened(config: &StoreConfig) -> Self {
        // In every-event mode events are flushed explicitly; the background flush still runs so
        // that delivery outcomes reach the disk too.
        let flush_every_ms = match config.flush {
            FlushMode::Interval(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            FlushMode::EveryEvent => Some(500),
        };
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
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Sled(sled::Error::Io(_) | sled::Error::ReportableBug(_))) = &result {
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

    /// Keeps the database usable; called a few times a second. Checks free space (see
    /// [`Store::check_space`]), closes a database that failed and opens one that is not open.
    /// Returns true when it opened the database.
    pub fn maintain(&self) -> bool {
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
        if self.broken.load(Ordering::Relaxed) {
            self.close();
        }
        if self.is_open() {
            return false;
        }
        let opened = create_private_dir(&self.path).and_then(|()| Ok(self.sled_config.open()?));
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

    /// Measures the free space of the store's disk (from [`Store::maintain`]).
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

    // --- webhooks ---------------------------------------------------------------------------

    pub fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        self.scan(vec![b'w'])
    }

    pub fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        self.get(key(b'w', &[id.as_bytes()]))
    }

    pub fn webhook_by_name(&self, name: &str) -> Result<Option<Webhook>, StoreError> {
        match self.db()?.get(key(b'n', &[name.as_bytes()]))? {
            Some(id) => match Uuid::from_slice(&id) {
                Ok(id) => self.webhook(id),
                Err(_) => Ok(None),
            },
            None => Ok(None),
        }
    }

    pub fn put_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        if let Some(old) = self.webhook(w.id)? {
            if old.spec.name != w.spec.name {
                batch.remove(key(b'n', &[old.spec.name.as_bytes()]));
            }
        }
        batch.insert(key(b'w', &[w.id.as_bytes()]), serde_json::to_vec(w)?);
        batch.insert(
            key(b'n', &[w.spec.name.as_bytes()]),
            w.id.as_bytes().as_slice(),
        );
        self.db()?.apply_batch(batch)?;
        Ok(())
    }

    /// Writes a webhook's record (its counters and status) when the name is unchanged.
    pub fn save_webhook(&self, w: &Webhook) -> Result<(), StoreError> {
        self.writable()?;
        let result = (|| {
            self.db()?
                .insert(key(b'w', &[w.id.as_bytes()]), serde_json::to_vec(w)?)?;
            Ok(())
        })();
        self.note(result)
    }

    /// Applies hooktap.toml's webhooks: each is created or updated by name (keeping its id,
    /// status and counters); config-declared webhooks no longer in the file are deleted.
    pub fn sync_webhooks(
        &self,
        specs: &[WebhookSpec],
        grace: Duration,
    ) -> Result<Synced, StoreError> {
        let stored = self.webhooks()?;
        // A file entry is matched by the name it was declared with (an API rename keeps the
        // match), else by the current name (a webhook the file now takes over).
        let declared_name = |w: &Webhook| {
            w.declared
                .as_ref()
                .map_or(w.spec.name.clone(), |d| d.name.clone())
        };
        for spec in specs {
            let existing = stored
                .iter()
                .find(|w| w.origin == Origin::Config && declared_name(w) == spec.name)
                .cloned()
                .map_or_else(|| self.webhook_by_name(&spec.name), |w| Ok(Some(w)))?;
            let webhook = match existing {
                Some(mut w) => {
                    w.origin = Origin::Config;
                    w.apply_declared(spec.clone(), grace);
                    w
                }
                None => {
                    let mut w = Webhook::new(spec.clone(), Origin::Config);
                    w.declared = Some(spec.clone());
                    w
                }
            };
            self.put_webhook(&webhook)?;
        }
        let mut removed = Vec::new();
        for w in self.webhooks()? {
            if w.origin == Origin::Config && !specs.iter().any(|s| s.name == declared_name(&w)) {
                removed.push((w.spec.name.clone(), self.delete_webhook(w.id)?));
            }
        }
        Ok(Synced {
            webhooks: self.webhooks()?,
            removed,
        })
    }

    /// Deletes a webhook with all its deliveries and attempts; returns how many deliveries
    /// were still pending (dropped unsent).
    pub fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for entry in self.db()?.scan_prefix(key(b'x', &[id.as_bytes()])) {
            let (k, _) = entry?;
            batch.remove(k.clone());
            let Some(delivery_id) = trailing_id(&k) else {
                continue;
            };
            if let Some(d) = self.delivery(delivery_id)? {
                if d.state == DeliveryState::Pending {
                    pending += 1;
                    batch.remove(queue_key(&d));
                }
                batch.remove(key(b'v', &[d.event_id.as_bytes(), d.id.as_bytes()]));
                batch.remove(key(b'd', &[d.id.as_bytes()]));
            }
            for a in self.db()?.scan_prefix(key(b'a', &[delivery_id.as_bytes()])) {
                batch.remove(a?.0);
            }
        }
        if let Some(w) = self.webhook(id)? {
            batch.remove(key(b'n', &[w.spec.name.as_bytes()]));
        }
        batch.remove(key(b'w', &[id.as_bytes()]));
        self.db()?.apply_batch(batch)?;
        Ok(pending)
    }

    // --- events and deliveries --------------------------------------------------------------

    fn payload_path(&self, file: &str) -> std::path::PathBuf {
        self.path.join("payloads").join(file)
    }

    /// The record to keep in sled for `event`, writing a large payload to its own file first
    /// (a crash between the two leaves at most an unreferenced file behind).
    fn stored_form(&self, event: &Event) -> Result<Vec<u8>, StoreError> {
        let payload = serde_json::to_vec(&event.payload)?;
        if payload.len() <= INLINE_PAYLOAD_MAX {
            return Ok(serde_json::to_vec(event)?);
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
            f.sync_all().map_err(io)?;
        }
        let head = StoredEvent {
            event: Event {
                payload: serde_json::Value::Null,
                ..event.clone()
            },
            payload_file: Some(file),
        };
        Ok(serde_json::to_vec(&head)?)
    }

    /// An event from its sled record, reading a large payload back from its file.
    fn load_event(&self, bytes: &[u8]) -> Result<Event, StoreError> {
        let stored: StoredEvent = serde_json::from_slice(bytes)?;
        let mut event = stored.event;
        if let Some(file) = stored.payload_file {
            let bytes = std::fs::read(self.payload_path(&file))
                .map_err(|source| StoreError::Payload { file, source })?;
            event.payload = serde_json::from_slice(&bytes)?;
        }
        Ok(event)
    }

    /// Stores an event and its deliveries atomically (and durably, in `every-event` mode).
    pub fn append(&self, event: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        let result = (|| {
            self.writable()?;
            let db = self.db()?;
            // Single writes in a safe order rather than one batch (a sled batch forces a log
            // write of its own: 3.5× slower, measured): the queue entries go last, so a queue
            // entry never points at a delivery or event that is not stored.
            db.insert(key(b'e', &[event.id.as_bytes()]), self.stored_form(event)?)?;
            for d in deliveries {
                db.insert(key(b'd', &[d.id.as_bytes()]), serde_json::to_vec(d)?)?;
                db.insert(
                    key(b'x', &[d.webhook_id.as_bytes(), d.id.as_bytes()]),
                    &[] as &[u8],
                )?;
                db.insert(
                    key(b'v', &[event.id.as_bytes(), d.id.as_bytes()]),
                    &[] as &[u8],
                )?;
            }
            for d in deliveries {
                db.insert(queue_key(d), &[] as &[u8])?;
            }
            if self.flush == FlushMode::EveryEvent {
                db.flush()?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.failed_appends.fetch_add(1, Ordering::Relaxed);
        }
        self.note(result)
    }

    /// Whether events go into sled (rather than wait in `pending/`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.is_open()
    }

    /// Keeps an event in `pending/` while the database is not open: one file per event,
    /// written whole and renamed into place (and synced in `every-event` mode), so that a crash
    /// leaves either the whole event or nothing. [`Store::drain_pending`] moves them into the
    /// database once it opens.
    pub fn hold(&self, event: &Event) -> Result<(), StoreError> {
        let result = (|| {
            self.writable()?;
            let dir = self.path.join(PENDING);
            let file = dir.join(format!("{}.json", event.id));
            let io = |source| StoreError::Pending {
                file: file.display().to_string(),
                source,
            };
            // Set up once, not per event (the directory may be missing when the store could
            // never be opened).
            if !dir.is_dir() {
                create_private_dir(&self.path)?;
                std::fs::create_dir_all(&dir).map_err(io)?;
            }
            let mut tmp =
                tempfile::NamedTempFile::with_prefix_in(".incoming-", &dir).map_err(io)?;
            std::io::Write::write_all(&mut tmp, &serde_json::to_vec(event)?).map_err(io)?;
            if self.flush == FlushMode::EveryEvent {
                tmp.as_file().sync_all().map_err(io)?;
            }
            tmp.persist(&file).map_err(|e| io(e.error))?;
            if self.flush == FlushMode::EveryEvent {
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.failed_appends.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Hands every event waiting in `pending/` to `store` (in time order: ids are UUIDv7) and
    /// removes each once `store` succeeded. A crash in between stores that event again on the
    /// next drain: delivery is at least once. Returns how many were moved.
    pub fn drain_pending(
        &self,
        mut store: impl FnMut(&Event) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let dir = self.path.join(PENDING);
        let io = |file: &Path| {
            let file = file.display().to_string();
            move |source| StoreError::Pending { file, source }
        };
        let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir)(e)),
        };
        files.sort();
        let mut moved = 0;
        for file in files {
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            match serde_json::from_slice::<Event>(&bytes) {
                Ok(event) => store(&event)?,
                Err(e) => {
                    // Keep it for a person to look at rather than lose it or retry forever.
                    let aside = file.with_extension("unreadable");
                    tracing::error!(file = %file.display(), error = %e, kept_as = %aside.display(),
                        "a pending event cannot be read");
                    std::fs::rename(&file, &aside).map_err(io(&file))?;
                    continue;
                }
            }
            std::fs::remove_file(&file).map_err(io(&file))?;
            moved += 1;
        }
        Ok(moved)
    }

    /// How many appends have failed since start.
    pub fn failed_appends(&self) -> u64 {
        self.failed_appends.load(Ordering::Relaxed)
    }

    /// Up to `limit` queued deliveries of `webhook` whose queue time is at most `until_ms`,
    /// in queue order, leaving out those `skip` names (deliveries already in flight).
    pub fn queued(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
        skip: impl Fn(&Uuid) -> bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = key(b'q', &[webhook.as_bytes()]);
        let end = key(
            b'q',
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
            let Some(id) = trailing_id(&k) else { continue };
            if skip(&id) {
                continue;
            }
            match self.delivery(id)? {
                // An entry left behind by a crash between two writes of `record_attempts`:
                // the delivery has moved on (or is gone). Drop it.
                Some(d) if d.state != DeliveryState::Pending || queue_key(&d) != k.as_ref() => {
                    self.db()?.remove(&k)?;
                }
                None => {
                    self.db()?.remove(&k)?;
                }
                Some(d) => out.push(d),
            }
        }
        Ok(out)
    }

    /// The queue time of the first queued delivery of `webhook` not named by `skip`.
    pub fn next_queued(
        &self,
        webhook: Uuid,
        skip: impl Fn(&Uuid) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        for entry in self.db()?.scan_prefix(key(b'q', &[webhook.as_bytes()])) {
            let (k, _) = entry?;
            let Some(id) = trailing_id(&k) else { continue };
            if !skip(&id) {
                let ms = k
                    .get(17..25)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                return Ok(ms);
            }
        }
        Ok(None)
    }

    /// How many deliveries are queued for `webhook`.
    pub fn queue_len(&self, webhook: Uuid) -> Result<usize, StoreError> {
        Ok(self
            .db()?
            .scan_prefix(key(b'q', &[webhook.as_bytes()]))
            .count())
    }

    /// How many deliveries are queued for `webhook`, and when the oldest was created (Unix ms;
    /// read from the UUIDv7 delivery ids in the keys, so no record is decoded).
    pub fn queue_stats(&self, webhook: Uuid) -> Result<(usize, Option<u64>), StoreError> {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        for entry in self.db()?.scan_prefix(key(b'q', &[webhook.as_bytes()])) {
            let (k, _) = entry?;
            count += 1;
            let created = trailing_id(&k).and_then(|id| id.get_timestamp()).map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            });
            if let Some(c) = created {
                oldest = Some(oldest.map_or(c, |o| o.min(c)));
            }
        }
        Ok((count, oldest))
    }

    /// A cheap read that fails when the store does (for readiness checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.db()?.get(b"ping")?;
        Ok(())
    }

    pub fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        match self.db()?.get(key(b'e', &[id.as_bytes()]))? {
            Some(v) => Ok(Some(self.load_event(&v)?)),
            None => Ok(None),
        }
    }

    pub fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        self.get(key(b'd', &[id.as_bytes()]))
    }

    /// Events newest first, filtered by `topic` (a glob) and creation time, skipping `offset`.
    pub fn events_page(
        &self,
        topic: Option<&globset::GlobMatcher>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let mut skipped = 0;
        for entry in self.db()?.scan_prefix([b'e']).rev() {
            let (_, v) = entry?;
            // Filter on the small head; read a payload file only for events that are returned.
            let event = serde_json::from_slice::<StoredEvent>(&v)?.event;
            if since.is_some_and(|s| event.created_at < s) {
                break;
            }
            if until.is_some_and(|u| event.created_at >= u)
                || topic.is_some_and(|t| !t.is_match(&event.topic))
            {
                continue;
            }
            if skipped < offset {
                skipped += 1;
                continue;
            }
            out.push(self.load_event(&v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Result<Vec<Event>, StoreError> {
        self.db()?
            .scan_prefix([b'e'])
            .map(|entry| self.load_event(&entry?.1))
            .collect()
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub fn deliveries_of(&self, webhook: Uuid, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .db()?
            .scan_prefix(key(b'x', &[webhook.as_bytes()]))
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            if let Some(d) = trailing_id(&k)
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
        self.scan(key(b'a', &[delivery.as_bytes()]))
    }

    /// Records attempts with the new states of their deliveries and the webhook's updated
    /// record (counters, status); queue entries follow the new states (see the module doc for
    /// the write order that keeps a crash harmless).
    pub fn record_attempts(
        &self,
        changes: &[(&Delivery, Delivery, Attempt)],
        webhook: Option<&Webhook>,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let result = (|| {
            let db = self.db()?;
            // Single writes in a safe order (see `append`): the new state first, the new queue
            // entry next, the old queue entry last. A crash in between leaves at worst an extra
            // queue entry, which `queued` drops, or a delivery sent once more.
            for (_, after, attempt) in changes {
                db.insert(
                    attempt_key(attempt.delivery_id, attempt.number),
                    serde_json::to_vec(attempt)?,
                )?;
                db.insert(
                    key(b'd', &[after.id.as_bytes()]),
                    serde_json::to_vec(after)?,
                )?;
            }
            if let Some(webhook) = webhook {
                db.insert(
                    key(b'w', &[webhook.id.as_bytes()]),
                    serde_json::to_vec(webhook)?,
                )?;
            }
            for (before, after, _) in changes {
                let pending = after.state == DeliveryState::Pending;
                if pending {
                    db.insert(queue_key(after), &[] as &[u8])?;
                }
                if !pending || queue_key(after) != queue_key(before) {
                    db.remove(queue_key(before))?;
                }
            }
            Ok(())
        })();
        self.note(result)
    }

    /// Puts a finished delivery back in the queue, due at once (a redelivery keeps its id).
    pub fn requeue(&self, delivery: &Delivery, now_ms: u64) -> Result<Delivery, StoreError> {
        let mut batch = sled::Batch::default();
        if delivery.state == DeliveryState::Pending {
            batch.remove(queue_key(delivery));
        }
        let mut d = delivery.clone();
        d.state = DeliveryState::Pending;
        d.schedule_start = d.attempts;
        d.due_ms = now_ms;
        d.queue_ms = now_ms;
        d.updated_at = OffsetDateTime::now_utc();
        batch.insert(queue_key(&d), &[] as &[u8]);
        batch.insert(key(b'd', &[d.id.as_bytes()]), serde_json::to_vec(&d)?);
        self.db()?.apply_batch(batch)?;
        Ok(d)
    }

    /// Removes every event created before `cutoff` none of whose deliveries is still pending,
    /// with its deliveries and their attempts. Events are scanned oldest first, so the sweep
    /// stops at the first event younger than the cutoff.
    pub fn sweep(&self, cutoff: OffsetDateTime) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        for entry in self.db()?.scan_prefix([b'e']) {
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
            for index in self.db()?.scan_prefix(key(b'v', &[event.id.as_bytes()])) {
                let (ik, _) = index?;
                let Some(delivery_id) = trailing_id(&ik) else {
                    continue;
                };
                if let Some(d) = self.delivery(delivery_id)? {
                    if d.state == DeliveryState::Pending {
                        pending = true;
                        break;
                    }
                    batch.remove(key(b'd', &[d.id.as_bytes()]));
                    batch.remove(key(b'x', &[d.webhook_id.as_bytes(), d.id.as_bytes()]));
                    this.deliveries += 1;
                }
                for a in self.db()?.scan_prefix(key(b'a', &[delivery_id.as_bytes()])) {
                    batch.remove(a?.0);
                    this.attempts += 1;
                }
                batch.remove(ik);
            }
            if pending {
                continue;
            }
            batch.remove(k);
            self.db()?.apply_batch(batch)?;
            if let Some(file) = stored.payload_file {
                // An orphan file would only cost disk space; the record is gone either way.
                let _ = std::fs::remove_file(self.payload_path(&file));
            }
            swept.events += this.events;
            swept.deliveries += this.deliveries;
            swept.attempts += this.attempts;
        }
        Ok(swept)
    }

    /// Writes everything buffered to disk (called on shutdown and in tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db()?.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Topic;
    use crate::webhook::{Mode, Profile, WebhookStatus};

    fn store(dir: &Path) -> Store {
        Store::open(&StoreConfig {
            path: dir.join("data"),
            flush: FlushMode::Interval(Duration::from_millis(100)),
            retention: Duration::from_secs(60),
            min_free_space: 0,
        })
        .expect("open store")
    }

    fn spec(name: &str) -> WebhookSpec {
        WebhookSpec {
            name: name.to_owned(),
            url: "https://hooks.example.com/in".parse().expect("url"),
            secret: "s".to_owned(),
            topics: vec!["*".to_owned()],
            status: None,
            retry: vec![],
            failure_threshold: 0,
            timeout: Duration::from_secs(1),
            signature: Profile::Hooktap,
            header_prefix: "X-Hooktap-Webhook-".to_owned(),
            mode: Mode::Realtime,
            ordered: false,
            concurrency: 1,
        }
    }

    fn event_at(created_at: OffsetDateTime) -> Event {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = created_at;
        e
    }

    fn finish(s: &Store, d: &Delivery, webhook: &Webhook) {
        let mut after = d.clone();
        after.state = DeliveryState::Delivered;
        after.attempts = 1;
        let attempt = Attempt {
            id: Uuid::now_v7(),
            delivery_id: d.id,
            webhook_id: d.webhook_id,
            number: 1,
            created_at: d.created_at,
            duration_ms: 1,
            summary: "HTTP 200 OK".into(),
            success: true,
            request_method: "POST".into(),
            request_url: String::new(),
            request_headers: vec![],
            request_body: String::new(),
            response_code: Some(200),
            response_message: "OK".into(),
            response_headers: vec![],
            response_body: String::new(),
        };
        s.record_attempts(&[(d, after, attempt)], Some(webhook))
            .expect("record");
    }

    #[test]
    fn events_held_while_unopened_are_moved_in_order_once_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            path: dir.path().join("data"),
            flush: FlushMode::EveryEvent,
            retention: Duration::from_secs(60),
            min_free_space: 0,
        };
        let held = Store::unopened(&config);
        assert!(!held.is_ready());
        let (first, second) = (
            event_at(OffsetDateTime::now_utc()),
            event_at(OffsetDateTime::now_utc()),
        );
        held.hold(&first).expect("hold");
        held.hold(&second).expect("hold");
        std::fs::write(dir.path().join("data/pending/zzz.json"), b"{not json").expect("write");

        // Another process (or this one, once open) drains them into the database.
        let s = store(dir.path());
        let mut moved = Vec::new();
        let n = s
            .drain_pending(|e| {
                moved.push(e.id);
                s.append(e, &[])
            })
            .expect("drain");
        assert_eq!(n, 2);
        assert_eq!(moved, vec![first.id, second.id], "in time order");
        assert_eq!(s.event(second.id).expect("read"), Some(second.clone()));
        let left: Vec<String> = std::fs::read_dir(dir.path().join("data/pending"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["zzz.unreadable"],
            "an unreadable file is set aside, not lost"
        );
        assert_eq!(s.drain_pending(|_| Ok(())).expect("drain"), 0);
    }

    #[test]
    fn a_failed_store_write_keeps_the_held_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let held = Store::unopened(&StoreConfig {
            path: dir.path().join("data"),
            flush: FlushMode::Interval(Duration::from_millis(100)),
            retention: Duration::from_secs(60),
            min_free_space: 0,
        });
        let e = event_at(OffsetDateTime::now_utc());
        held.hold(&e).expect("hold");
        assert!(s.drain_pending(|_| Err(StoreError::NotOpen)).is_err());
        assert_eq!(
            s.drain_pending(|e| s.append(e, &[])).expect("drain"),
            1,
            "still there"
        );
    }

    #[test]
    fn large_payloads_live_in_files_and_leave_with_their_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let mut big = event_at(OffsetDateTime::now_utc() - time::Duration::days(40));
        big.payload = serde_json::json!({"pad": "x".repeat(100_000)});
        let small = event_at(OffsetDateTime::now_utc());
        s.append(&big, &[]).expect("append");
        s.append(&small, &[]).expect("append");
        let file = dir
            .path()
            .join("data/payloads")
            .join(format!("{}.json", big.id));
        assert!(file.exists(), "the large payload is a file");
        assert_eq!(s.event(big.id).expect("read"), Some(big.clone()));
        assert_eq!(
            s.events_page(None, None, None, 0, 10).expect("page"),
            vec![small.clone(), big.clone()]
        );
        s.sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert!(s.event(big.id).expect("read").is_none());
        assert!(!file.exists(), "the sweep removes the file too");
    }

    #[test]
    fn the_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = store(dir.path());
        let mode = std::fs::metadata(dir.path().join("data"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn webhooks_keep_their_id_by_name_and_leave_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let first = s
            .sync_webhooks(&[spec("a"), spec("b")], Duration::ZERO)
            .expect("sync");
        let a = first
            .webhooks
            .iter()
            .find(|w| w.spec.name == "a")
            .expect("a")
            .clone();
        let b = first
            .webhooks
            .iter()
            .find(|w| w.spec.name == "b")
            .expect("b")
            .clone();
        let event = event_at(OffsetDateTime::now_utc());
        s.append(&event, &[Delivery::new(&event, b.id, 0)])
            .expect("append");

        let mut changed = spec("a");
        changed.url = "https://elsewhere.example.com/".parse().expect("url");
        changed.status = Some(WebhookStatus::Paused);
        let second = s.sync_webhooks(&[changed], Duration::ZERO).expect("sync");
        assert_eq!(second.webhooks.len(), 1);
        let a2 = &second.webhooks[0];
        assert_eq!(a2.id, a.id, "the id survives a change of the file");
        assert_eq!(a2.spec.url.as_str(), "https://elsewhere.example.com/");
        assert_eq!(a2.status, WebhookStatus::Paused);
        assert_eq!(
            second.removed,
            vec![("b".to_owned(), 1)],
            "b left the file with one pending delivery"
        );
        assert_eq!(s.queue_len(b.id).expect("queue"), 0);
    }

    #[test]
    fn api_changes_to_a_file_webhook_last_until_its_entry_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let mut w = s
            .sync_webhooks(&[spec("a")], Duration::ZERO)
            .expect("sync")
            .webhooks
            .remove(0);
        // An operator changes the URL and the name through the API.
        w.spec.url = "https://changed.example.com/".parse().expect("url");
        w.spec.name = "renamed".to_owned();
        s.put_webhook(&w).expect("put");
        let again = s.sync_webhooks(&[spec("a")], Duration::ZERO).expect("sync");
        assert_eq!(again.webhooks.len(), 1);
        assert_eq!(
            again.webhooks[0].id, w.id,
            "the rename keeps the file's match"
        );
        assert_eq!(
            again.webhooks[0].spec.url.as_str(),
            "https://changed.example.com/",
            "an unchanged file keeps the API's change"
        );
        assert!(again.removed.is_empty());
        let mut edited = spec("a");
        edited.url = "https://from-the-file.example.com/".parse().expect("url");
        let third = s.sync_webhooks(&[edited], Duration::ZERO).expect("sync");
        assert_eq!(
            third.webhooks[0].spec.url.as_str(),
            "https://from-the-file.example.com/",
            "a changed entry wins"
        );
    }

    #[test]
    fn the_sweep_removes_old_finished_records_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let w = s
            .sync_webhooks(&[spec("a")], Duration::ZERO)
            .expect("sync")
            .webhooks
            .remove(0);
        let now = OffsetDateTime::now_utc();
        let old = now - time::Duration::days(40);

        let old_done = event_at(old);
        let d1 = Delivery::new(&old_done, w.id, 0);
        s.append(&old_done, std::slice::from_ref(&d1))
            .expect("append");
        finish(&s, &d1, &w);

        let old_pending = event_at(old + time::Duration::seconds(1));
        let d2 = Delivery::new(&old_pending, w.id, 0);
        s.append(&old_pending, std::slice::from_ref(&d2))
            .expect("append");

        let young = event_at(now);
        let d3 = Delivery::new(&young, w.id, 0);
        s.append(&young, std::slice::from_ref(&d3)).expect("append");
        finish(&s, &d3, &w);

        let swept = s.sweep(now - time::Duration::days(30)).expect("sweep");
        assert_eq!(
            swept,
            Swept {
                events: 1,
                deliveries: 1,
                attempts: 1
            }
        );
        assert!(s.event(old_done.id).expect("read").is_none());
        assert!(s.delivery(d1.id).expect("read").is_none());
        assert!(s.attempts(d1.id).expect("read").is_empty());
        assert!(
            s.event(old_pending.id).expect("read").is_some(),
            "a pending delivery keeps its event"
        );
        assert!(s.event(young.id).expect("read").is_some());
        assert_eq!(s.deliveries_of(w.id, 10).expect("list").len(), 2);
    }
}
