//! The PostgreSQL backend: one store shared by every hooktap instance in front of one app.
//!
//! **The request path never waits on PostgreSQL.** [`Store::append`] writes to a sled store in
//! `[store] path` exactly as the sled backend does (the same cost, the same `flush` modes);
//! a shipper moves what was appended to PostgreSQL in batches (one transaction, multi-row
//! inserts, idempotent on the ids) and only then forgets it locally. While PostgreSQL is
//! down or slow the proxy goes on at full speed and the local journal grows on disk; it drains
//! by itself when PostgreSQL is back ([`Store::journal`] says how far behind it is).
//!
//! **Every instance delivers.** [`Store::queued`] leases what it returns to this instance
//! (`FOR UPDATE SKIP LOCKED`, a lease of `[store] lease` on the database's clock); recording
//! the attempt ends the lease. An instance that dies leaves leases that run out, and then
//! another instance sends those deliveries again with the same ids (at least once).
//! [`Store::claim_head`] serves ordered and batch webhooks: nothing while another instance
//! holds a lease on any of the webhook's deliveries, so one request is in flight per webhook
//! across all instances. Work added and webhooks changed elsewhere are announced with
//! `NOTIFY` (see `ship`).
//!
//! Counters are counted in the statement that records attempts, so every instance counts
//! into one set; the failure threshold reads the result. Outcomes are recorded in batches
//! (see `record`): many requests' outcomes per statement when many finish together.
//!
//! - `schema`: versioned migrations, applied under an advisory lock.
//! - `ship`: the shipper (journal → PostgreSQL) and the listener (`LISTEN`).
//! - `record`: the recorder (outcomes → PostgreSQL, in batches).
//! - `sql`: the queries.

#[cfg(test)]
pub mod cluster;
mod import;
mod leased;
mod record;
mod schema;
mod ship;
mod sql;
mod tls;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    Applied, AttemptStats, BarrierStats, DeliveryPage, DeliveryQuery, Durable, EventQuery,
    JournalStats, KeyHeads, Planner, QueueStats, Recorded, Recording, Replaced, Requeued,
    StatsWindow, Store, StoreConfig, StoreError, Swept,
};
use crate::event::{Attempt, DedupeKey, Delivery, Event};
use crate::store::SledStore;
use crate::webhook::Webhook;

pub use import::{Imported, import_sled};
pub use schema::{MigrationStatus, migrate_with, status_with};

/// `[store]` keys of the PostgreSQL backend.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/database` (a secret: never logged).
    pub url: String,
    /// How long a delivery handed to one instance stays its own.
    pub lease: Duration,
    /// Connections to PostgreSQL per instance.
    pub pool_size: usize,
    /// The CAs (PEM) that PostgreSQL's certificate must be signed by, instead of the system's
    /// (see `tls` for what the URL's `sslmode` does with it).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &PgConfig::shown(&self.url))
            .field("lease", &self.lease)
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl PgConfig {
    /// Checks a connection URL (or `key=value` connection string), with its `sslmode` and
    /// the `ca_file` that goes with it.
    pub fn parse_url(url: &str, ca_file: Option<&std::path::Path>) -> Result<(), String> {
        tls::check(url, ca_file)
    }

    /// Checks that a CA file holds PEM certificates.
    pub fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
        tls::ca_certificates(path)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn connector(&self) -> Result<tls::Connector, StoreError> {
        tls::Connector::new(&self.url, self.ca_file.as_deref())
    }

    /// Where a URL points, without its credentials: `host:port/database`.
    pub fn shown(url: &str) -> String {
        let Ok((c, _)) = tls::parse(url, None) else {
            return "(invalid URL)".to_owned();
        };
        let host = c
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        let port = c.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", c.get_dbname().unwrap_or("(default)"))
    }
}

/// Set when PostgreSQL refused a prepared statement because what it returns changed type (a
/// migration such as `V8__records_as_json`, applied by another instance while this one ran):
/// the pool's prepared statements are then dropped before the next connection is taken out
/// ([`connection`]), so the call that met the change fails and the next ones prepare afresh.
/// One flag for the process: it runs one store (tests that run several only clear more).
static STALE_STATEMENTS: AtomicBool = AtomicBool::new(false);

/// A connection from `pool`, its prepared statements dropped first when the schema changed
/// under them (see [`STALE_STATEMENTS`]).
pub(crate) async fn connection(pool: &Pool) -> Result<Object, deadpool_postgres::PoolError> {
    if STALE_STATEMENTS.swap(false, Ordering::AcqRel) {
        pool.manager().statement_caches.clear();
        tracing::info!(
            "the shared store's schema changed under this instance's prepared statements; preparing them again"
        );
    }
    pool.get().await
}

/// Notes in [`STALE_STATEMENTS`] whether `e` (or what it wraps) is PostgreSQL refusing a
/// prepared statement whose result changed type.
fn note_stale(e: &(dyn std::error::Error + 'static)) {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(db) = e
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
            && *db.code() == tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
            && db
                .message()
                .contains("cached plan must not change result type")
        {
            STALE_STATEMENTS.store(true, Ordering::Release);
            return;
        }
        next = e.source();
    }
}

/// A PostgreSQL error with what it says (tokio-postgres puts the server's message in the
/// error's source).
pub(crate) fn pg_error(e: impl std::error::Error + 'static) -> StoreError {
    note_stale(&e);
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    StoreError::Postgres(text)
}

/// What the shipper and listener share with the store.
#[derive(Default)]
struct Status {
    /// Whether PostgreSQL answered the last time it was asked.
    connected: AtomicBool,
    /// Events in the local journal: counted at start, then one up per append and down per
    /// event moved (signed: a move can be counted before the append that it moved).
    backlog: AtomicI64,
    /// When the oldest of them was created (Unix ms, 0: none).
    oldest_ms: AtomicU64,
    /// Whether the schema has been brought up to date by this process.
    migrated: AtomicBool,
    /// Held while journalled events are being moved (see `ship::ship_all`).
    moving: tokio::sync::Mutex<()>,
}

pub struct PgStore {
    /// The local journal: what the request path writes.
    journal: Arc<SledStore>,
    pool: Pool,
    /// The store's own runtime: PostgreSQL connections live on it, whichever runtime (the
    /// proxy's, the admin API's, a test's) uses them. Taken when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Spawns on that runtime.
    handle: tokio::runtime::Handle,
    /// This process's id in leases.
    instance: Uuid,
    lease_ms: i64,
    /// Wakes the shipper (an append).
    ship_now: Arc<Notify>,
    /// Signalled when another instance added work or changed a webhook.
    remote: Arc<Notify>,
    /// Signalled when a webhook was changed (by any instance).
    webhooks_changed: Arc<Notify>,
    /// Where outcomes go to be recorded (see `record`).
    recorder: tokio::sync::mpsc::UnboundedSender<record::Message>,
    /// The events of deliveries just leased, read with the lease: the engine asks for each
    /// next ([`Store::event`]), and is answered from here without a round trip.
    leased: std::sync::Mutex<leased::LeasedEvents>,
    /// Events read from PostgreSQL by [`Store::event`] (not found among those leased).
    events_read: AtomicU64,
    status: Arc<Status>,
    /// Where the store is, for messages (no credentials).
    shown: String,
    /// How to connect (TLS included), for errors about the certificate.
    connector: tls::Connector,
    /// One deleted webhook's history removed at a time ([`PgStore::remove_history`]): each
    /// holds a pooled connection until its history is gone, and deletions one after another
    /// must not take the pool from the claims and recordings.
    removing: Arc<tokio::sync::Semaphore>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // In the background: dropping a runtime inside another one (a test's, pingora's)
        // would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Counts an event just written to the journal and wakes the shipper.
    fn journalled(&self, event: &Event) {
        self.status.backlog.fetch_add(1, Ordering::Relaxed);
        let _ = self.status.oldest_ms.compare_exchange(
            0,
            crate::event::unix_ms(event.created_at),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.ship_now.notify_one();
    }

    /// Sets the store up without connecting: the journal opens like a sled store (see
    /// [`SledStore::unopened`]), the pool connects on first use and the shipper and listener
    /// start on the store's runtime. PostgreSQL may be down: the proxy serves regardless.
    pub fn open(config: &StoreConfig, pg: &PgConfig) -> Result<Self, StoreError> {
        Self::with_journal(Arc::new(SledStore::unopened(config)), pg)
    }

    /// The same over a journal opened by the caller (unready: see [`Store::mark_ready`]).
    pub fn with_journal(journal: Arc<SledStore>, pg: &PgConfig) -> Result<Self, StoreError> {
        Self::with_journal_below(journal, pg, 0)
    }

    /// The same with the store's runtime (the shipper, the recorder, the listener and every
    /// pooled connection) running `nice` levels below the process's priority, as the delivery
    /// loop does (see [`crate::delivery::lower_priority`]): none of it is on the request path,
    /// which only writes the journal.
    pub fn with_journal_below(
        journal: Arc<SledStore>,
        pg: &PgConfig,
        nice: u8,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hooktap-pg")
            .on_thread_start(move || crate::delivery::lower_priority(nice))
            .enable_all()
            .build()
            .map_err(|e| StoreError::Task(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let connector = pg.connector()?;
        let pool = pool(&connector, pg.pool_size)?;
        let instance = Uuid::now_v7();
        let (recorder, jobs) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(record::run(pool.clone(), instance, jobs));
        let store = Self {
            journal,
            pool,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            instance,
            recorder,
            leased: std::sync::Mutex::new(leased::LeasedEvents::new(pg.lease)),
            events_read: AtomicU64::new(0),
            lease_ms: i64::try_from(pg.lease.as_millis()).unwrap_or(i64::MAX),
            ship_now: Arc::new(Notify::new()),
            remote: Arc::new(Notify::new()),
            webhooks_changed: Arc::new(Notify::new()),
            status: Arc::new(Status::default()),
            shown: PgConfig::shown(&pg.url),
            connector,
            removing: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        store.handle.spawn(ship::listen(
            store.connector.clone(),
            Arc::clone(&store.remote),
            Arc::clone(&store.webhooks_changed),
            Arc::clone(&store.status),
        ));
        store.handle.spawn(ship::ship(
            Arc::clone(&store.journal),
            store.pool.clone(),
            Arc::clone(&store.ship_now),
            Arc::clone(&store.status),
        ));
        Ok(store)
    }

    /// Opens the journal at once and applies the migrations (tests and tools).
    pub async fn open_now(config: &StoreConfig, pg: &PgConfig) -> Result<Self, StoreError> {
        let store = Self::open(config, pg)?;
        store.journal.maintain();
        store.migrate().await?;
        Ok(store)
    }

    /// Where the store is, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A pooled connection. Taken on the store's runtime, so that a new connection's task
    /// lives there rather than on the caller's (possibly short-lived) runtime.
    async fn client(&self) -> Result<Object, StoreError> {
        let pool = self.pool.clone();
        let got = self
            .handle
            .spawn(async move { connection(&pool).await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        match got {
            Ok(c) => {
                self.status.connected.store(true, Ordering::Relaxed);
                Ok(c)
            }
            Err(e) => {
                self.status.connected.store(false, Ordering::Relaxed);
                Err(self.connector.explain(pg_error(e)))
            }
        }
    }

    /// Removes deleted webhook `id`'s deliveries and attempts, part by part
    /// ([`sql::delete_part`]), on a task of the store's runtime: a caller that goes away (an
    /// HTTP client that hung up) does not cut it short, and one that need not wait drops the
    /// handle. One history at a time: the next waits. A part that fails, or a crash, leaves
    /// the rest to the next retention sweep ([`sql::unfinished_deletions`]).
    fn remove_history(&self, id: Uuid) -> tokio::task::JoinHandle<()> {
        let pool = self.pool.clone();
        let removing = Arc::clone(&self.removing);
        self.handle.spawn(async move {
            // Never closed: the permit comes.
            let _one_at_a_time = removing.acquire().await;
            let removed = async {
                let mut client = connection(&pool).await.map_err(pg_error)?;
                sql::delete_parts(&mut client, id, sql::DELETE_PART).await
            };
            if let Err(e) = removed.await {
                tracing::warn!(webhook = %id, error = %e, "cannot remove a deleted webhook's history yet; the next retention sweep goes on with it");
            }
        })
    }

    /// Runs `f` on the store's runtime and waits for it from a thread that may block (the
    /// store's synchronous methods).
    fn block_on<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Task("the PostgreSQL runtime stopped".to_owned()))?
    }

    /// Brings the schema up to date (once per process; under an advisory lock, so instances
    /// starting together apply each migration once).
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        if self.status.migrated.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let applied = migrate_with(&mut client).await?;
        self.status.migrated.store(true, Ordering::Release);
        Ok(applied)
    }

    /// The events read with leases, locked.
    fn leased(&self) -> std::sync::MutexGuard<'_, leased::LeasedEvents> {
        self.leased
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the events read with a lease for [`Store::event_to_send`]; returns the deliveries.
    fn keep_events(&self, leased: Vec<sql::Leased>) -> Vec<Delivery> {
        let now = tokio::time::Instant::now();
        let mut kept = self.leased();
        leased
            .into_iter()
            .map(|(d, e)| {
                if let Some(e) = e {
                    kept.keep(d.id, e, now);
                }
                d
            })
            .collect()
    }

    /// How many events [`Store::event`] read from PostgreSQL, for [`Store::event_to_send`] or
    /// any other reader (tests: those leased are sent without).
    #[cfg(test)]
    pub(crate) fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    /// Moves everything journalled so far to PostgreSQL now.
    pub async fn ship_all(&self) -> Result<usize, StoreError> {
        let journal = Arc::clone(&self.journal);
        let pool = self.pool.clone();
        let status = Arc::clone(&self.status);
        self.handle
            .spawn(async move { ship::ship_all(&journal, &pool, &status).await })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Connects once and reads the schema's state: what `hooktap check` reports.
pub async fn probe(pg: &PgConfig) -> Result<Vec<MigrationStatus>, StoreError> {
    with_connection(
        pg,
        |mut client| async move { status_with(&mut client).await },
    )
    .await
}

/// Connects once and applies the missing migrations (`hooktap migrate`).
pub async fn apply(pg: &PgConfig) -> Result<Vec<String>, StoreError> {
    with_connection(
        pg,
        |mut client| async move { migrate_with(&mut client).await },
    )
    .await
}

/// Runs `f` on one connection of its own (tools: no pool, no background tasks).
async fn with_connection<T, F, Fut>(pg: &PgConfig, f: F) -> Result<T, StoreError>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let connector = pg.connector()?;
    let mut config = connector.config.clone();
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("hooktap-tool");
    let (client, connection) = config
        .connect(connector.tls.clone())
        .await
        .map_err(|e| connector.explain(pg_error(e)))?;
    let driver = tokio::spawn(connection);
    let result = f(client).await;
    // `f` dropped the client: the connection ends.
    let _ = driver.await;
    result
}

/// The session settings of hooktap's connections, given before the URL's own `options` (the
/// later setting wins, so a URL can override them):
/// - `statement_timeout`: no statement runs on for ever (see [`bounded`]).
/// - `jit = off`: hooktap's statements are short, and a plan whose estimate crosses
///   `jit_above_cost` (a fresh table without statistics is enough) is compiled with LLVM on
///   every execution: the retention sweep at startup took 230-1,160 ms of compiling for a
///   statement that then ran in under a millisecond (benches/RESULTS.md).
/// - `plan_cache_mode = force_generic_plan`: every statement is prepared once per connection
///   and planned once, for its shape (each is written for the index it walks), not for the
///   values of each call. A custom plan made for the values saw, on a table whose statistics
///   lag behind a backlog, that every pending delivery was due, and claimed 64 of 20,000 by
///   reading, filtering and sorting all 20,000 (75 ms) instead of walking the queue's index
///   in order (2 ms); PostgreSQL makes five such plans per connection before it compares.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=60000 -c jit=off -c plan_cache_mode=force_generic_plan";

/// Bounds every wait on PostgreSQL: connecting, a statement on the server, and a peer that
/// vanished without closing the connection (a partition), so that no loop hangs on it (leases
/// run out meanwhile and other instances carry on). Sets [`SESSION_OPTIONS`].
pub(crate) fn bounded(config: &mut tokio_postgres::Config) {
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(30));
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{SESSION_OPTIONS} {own}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config.options(options);
}

/// The connection pool: connections are made on demand, each connect bounded.
fn pool(connector: &tls::Connector, pool_size: usize) -> Result<Pool, StoreError> {
    let mut config = connector.config.clone();
    bounded(&mut config);
    config.application_name("hooktap");
    let manager = Manager::from_config(
        config,
        connector.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Postgres(format!("cannot set up the connection pool: {e}")))
}

#[async_trait]
impl Store for PgStore {
    fn is_ready(&self) -> bool {
        self.journal.is_ready()
    }

    fn needs_setup(&self) -> bool {
        self.journal.needs_setup()
    }

    fn mark_ready(&self) {
        // What an earlier run left in the journal; appends begin only after `mark_ready`, and
        // the shipper waits for it too, so nothing is counted twice or missed.
        match self.journal.journal_backlog() {
            Ok((count, oldest)) => {
                self.status
                    .backlog
                    .store(i64::try_from(count).unwrap_or(i64::MAX), Ordering::Relaxed);
                self.status
                    .oldest_ms
                    .store(oldest.map_or(0, crate::event::unix_ms), Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the local journal"),
        }
        self.journal.mark_ready();
        self.ship_now.notify_one();
    }

    fn maintain(&self) -> bool {
        self.journal.maintain()
    }

    fn drain_held(
        &self,
        store: &mut dyn FnMut(&Event) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        self.journal.drain_pending(store)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.journal.ping()?;
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(pg_error)?;
        Ok(())
    }

    fn barrier(&self) -> Option<BarrierStats> {
        self.journal.barrier()
    }

    fn failed_appends(&self) -> u64 {
        self.journal.failed_appends()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.journal.flush()?;
        self.ship_all().await.map(drop)
    }

    fn shared(&self) -> bool {
        true
    }

    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            u64::try_from(self.lease_ms).unwrap_or(0),
        ))
    }

    fn remote_changes(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.remote))
    }

    fn webhook_changes(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.webhooks_changed))
    }

    fn journal(&self) -> Option<JournalStats> {
        let oldest = self.status.oldest_ms.load(Ordering::Relaxed);
        let now = crate::event::unix_ms(OffsetDateTime::now_utc());
        Some(JournalStats {
            backlog: u64::try_from(self.status.backlog.load(Ordering::Relaxed)).unwrap_or(0),
            behind: if oldest == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(now.saturating_sub(oldest))
            },
            connected: self.status.connected.load(Ordering::Relaxed),
        })
    }

    fn append_deferred(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        let durable = self.journal.append_deferred(event, deliveries)?;
        self.journalled(event);
        Ok(durable)
    }

    fn append_again(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        let durable = self.journal.append_again(event, deliveries)?;
        self.journalled(event);
        Ok(durable)
    }

    fn hold(&self, event: &Event) -> Result<(), StoreError> {
        self.journal.hold(event)
    }

    fn claim_dedupe(
        &self,
        key: &DedupeKey,
        event: Uuid,
        now_ms: u64,
        window: Duration,
    ) -> Result<bool, StoreError> {
        // This instance's repeats (and those from before a restart) stop here, without a
        // network round trip; other instances' are caught when the event moves in.
        if !self.journal.claim_dedupe(key, event, now_ms, window)? {
            return Ok(false);
        }
        let ends = now_ms.saturating_add(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        if let Err(e) = self.journal.journal_mark_dedupe(event, key, ends) {
            let _ = self.journal.release_dedupe(key, event);
            return Err(e);
        }
        Ok(true)
    }

    fn release_dedupe(&self, key: &DedupeKey, event: Uuid) -> Result<(), StoreError> {
        self.journal.journal_unmark_dedupe(event)?;
        self.journal.release_dedupe(key, event)
    }

    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        sql::webhooks(&self.client().await?, None).await
    }

    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        Ok(sql::webhooks(&self.client().await?, Some(id)).await?.pop())
    }

    async fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        sql::put_webhook(&self.client().await?, webhook)
            .await
            .map(drop)
    }

    async fn reset_counters(&self, webhook: &Webhook) -> Result<(), StoreError> {
        sql::reset_counters(&self.client().await?, webhook.id).await
    }

    async fn replace_webhook(&self, webhook: &Webhook) -> Result<Replaced, StoreError> {
        sql::replace_webhook(&self.client().await?, webhook).await
    }

    async fn unclaim(&self, deliveries: &[Uuid]) -> Result<(), StoreError> {
        self.leased().give_back(deliveries);
        sql::unclaim(&self.client().await?, self.instance, deliveries)
            .await
            .map(drop)
    }

    async fn release(&self) -> Result<(), StoreError> {
        // Behind the outcomes already queued (see `record`): a delivery whose outcome waits
        // to be written must not be claimed by another instance meanwhile.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Task("the PostgreSQL runtime stopped".to_owned());
        self.recorder
            .send(record::Message::Release(reply))
            .map_err(|_| stopped())?;
        let released = answer.await.map_err(|_| stopped())??;
        if released > 0 {
            tracing::info!(deliveries = released, "gave up this instance's leases");
        }
        Ok(())
    }

    async fn apply_webhooks(&self, planner: &Planner) -> Result<Applied, StoreError> {
        self.migrate().await?;
        let mut client = self.client().await?;
        let applied = sql::apply_webhooks(&mut client, planner).await?;
        // In the background: a start or a reload does not wait for a long history to go.
        for (w, _) in &applied.removed {
            drop(self.remove_history(w.id));
        }
        Ok(applied)
    }

    async fn save_webhook(&self, webhook: &Webhook) -> Result<bool, StoreError> {
        sql::save_webhook(&self.client().await?, webhook).await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError> {
        let dropped = sql::delete_webhook(&mut self.client().await?, id).await?;
        // The webhook is deleted: a part that fails is retried by the next retention sweep.
        if let Err(e) = self.remove_history(id).await {
            tracing::warn!(webhook = %id, error = %e, "removing a deleted webhook's history panicked");
        }
        Ok(dropped)
    }

    async fn delete_webhook_in_background(&self, id: Uuid) -> Result<usize, StoreError> {
        let dropped = sql::delete_webhook(&mut self.client().await?, id).await?;
        drop(self.remove_history(id));
        Ok(dropped)
    }

    async fn queued(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claim = sql::Claim {
            webhook,
            until_ms,
            limit,
            owner: self.instance,
            lease_ms: self.lease_ms,
        };
        let leased = sql::claim(&self.client().await?, &claim, skip).await?;
        Ok(self.keep_events(leased))
    }

    async fn claim_head(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let claim = sql::Claim {
            webhook,
            until_ms,
            limit,
            owner: self.instance,
            lease_ms: self.lease_ms,
        };
        let mut client = self.client().await?;
        let leased = sql::claim_head(&mut client, &claim).await?;
        Ok(self.keep_events(leased))
    }

    async fn claim_key_heads(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<KeyHeads, StoreError> {
        let claim = sql::Claim {
            webhook,
            until_ms: now_ms,
            limit,
            owner: self.instance,
            lease_ms: self.lease_ms,
        };
        let mut client = self.client().await?;
        sql::claim_key_heads(&mut client, &claim, now_ms, skip).await
    }

    async fn next_queued(
        &self,
        webhook: Uuid,
        skip: &HashSet<Uuid>,
    ) -> Result<Option<u64>, StoreError> {
        sql::next_queued(&self.client().await?, webhook, self.instance, skip).await
    }

    async fn queue_stats(&self, webhook: Uuid) -> Result<QueueStats, StoreError> {
        sql::queue_stats(&self.client().await?, webhook).await
    }

    async fn record_attempts(
        &self,
        webhook: Uuid,
        changes: &[Recorded],
        record: Option<&Webhook>,
    ) -> Result<Recording, StoreError> {
        let outcome = sql::Outcome::of(webhook, changes, record)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Task("the PostgreSQL runtime stopped".to_owned());
        self.recorder
            .send(record::Message::Record(record::Job { outcome, reply }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn requeue(&self, delivery: &Delivery, now_ms: u64) -> Result<Requeued, StoreError> {
        let mut client = self.client().await?;
        match sql::requeue(&mut client, self.instance, delivery.id, now_ms).await? {
            sql::Requeue::Done(d) => return Ok(Requeued::Done(d)),
            sql::Requeue::InFlight => return Ok(Requeued::InFlight),
            sql::Requeue::Missing => {}
        }
        // Still in this instance's journal (moved in within milliseconds): move it now.
        if self.journal.delivery(delivery.id)?.is_none() {
            return Ok(Requeued::Gone);
        }
        drop(client);
        self.ship_all().await?;
        let mut client = self.client().await?;
        Ok(
            match sql::requeue(&mut client, self.instance, delivery.id, now_ms).await? {
                sql::Requeue::Done(d) => Requeued::Done(d),
                sql::Requeue::InFlight => Requeued::InFlight,
                sql::Requeue::Missing => Requeued::Gone,
            },
        )
    }

    async fn event_to_send(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        // Kept with the lease of the delivery about to be sent.
        if let Some(kept) = self.leased().take(id) {
            return Ok(Some(kept));
        }
        self.event(id).await
    }

    async fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        self.events_read.fetch_add(1, Ordering::Relaxed);
        match sql::event(&self.client().await?, id).await? {
            Some(e) => Ok(Some(e)),
            // Not moved over yet: still in this instance's journal.
            None => self.journal.event(id),
        }
    }

    async fn events_page(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        sql::events_page(&self.client().await?, query).await
    }

    async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        match sql::delivery(&self.client().await?, id).await? {
            Some(d) => Ok(Some(d)),
            None => self.journal.delivery(id),
        }
    }

    async fn deliveries_of_event(&self, event: Uuid) -> Result<Vec<Delivery>, StoreError> {
        sql::deliveries_of_event(&self.client().await?, event).await
    }

    async fn attempt_stats(
        &self,
        webhook: Uuid,
        window: &StatsWindow,
    ) -> Result<AttemptStats, StoreError> {
        sql::attempt_stats(&self.client().await?, webhook, window).await
    }

    async fn last_failure(
        &self,
        webhook: Uuid,
        since_ms: u64,
    ) -> Result<Option<Attempt>, StoreError> {
        sql::last_failure(&self.client().await?, webhook, since_ms).await
    }

    async fn deliveries_of(
        &self,
        webhook: Uuid,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        sql::deliveries_of(&self.client().await?, webhook, limit).await
    }

    async fn deliveries_page(
        &self,
        webhook: Uuid,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        sql::deliveries_page(&mut self.client().await?, webhook, query).await
    }

    async fn failed_deliveries(
        &self,
        webhook: Uuid,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<Delivery>, StoreError> {
        sql::failed_deliveries(&self.client().await?, webhook, since, until).await
    }

    async fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
        sql::attempts(&self.client().await?, delivery).await
    }

    fn sweep(&self, cutoff: OffsetDateTime) -> Result<Swept, StoreError> {
        self.journal
            .sweep_dedupe(crate::event::unix_ms(OffsetDateTime::now_utc()))?;
        let pool = self.pool.clone();
        self.block_on(async move {
            let mut client = connection(&pool).await.map_err(pg_error)?;
            // Deletions a crash cut short (every instance may look: the parts are idempotent).
            // (A deletion that keeps failing does not hold retention up.)
            for id in sql::unfinished_deletions(&client).await? {
                match sql::delete_parts(&mut client, id, sql::DELETE_PART).await {
                    Ok(()) => {
                        tracing::info!(webhook = %id, "removed the rest of a deleted webhook's history");
                    }
                    Err(e) => {
                        tracing::warn!(webhook = %id, error = %e, "cannot remove a deleted webhook's history");
                    }
                }
            }
            sql::sweep(&mut client, cutoff, sql::SWEEP_PART).await
        })
    }
}

#[cfg(test)]
mod tests;
