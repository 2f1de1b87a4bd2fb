//! The store: the contract every backend keeps, and the backends behind it.
//!
//! The engine ([`crate::delivery`]), the admin API and the proxy's intake see the store only
//! through the [`Store`] trait. The store *is* the queue: events, deliveries (with their due
//! times), the attempt log and the webhooks all live in it, and nothing about pending work lives
//! only in memory. `contract` (compiled for tests) is the suite every backend passes; a new
//! backend runs it by invoking `store_contract_tests!` once in its tests module.
//!
//! What the contract promises, whatever the backend:
//! - **Intake never waits on a network.** [`Store::append`] and [`Store::hold`] are synchronous
//!   because the proxy calls them from pingora's body filter; a backend that lives across a
//!   network must journal locally first.
//! - **At least once.** A delivery stays queued until the outcome of its attempt is recorded
//!   ([`Store::record_attempts`]); a crash in between sends it again with the same id.
//! - **A deleted webhook stays deleted.** Recording an attempt or saving a record of a webhook
//!   that no longer exists writes nothing (a send that was in flight during the deletion must
//!   not bring it back), and its deliveries are not queued again (requeued, or taken back at
//!   open) while its history waits to be removed.
//! - **Time order.** Ids are UUIDv7: events, a webhook's deliveries and attempts come back in
//!   the order they were made.
//! - **One claim per dedupe key and window.** [`Store::claim_dedupe`] grants a rule's key once
//!   per window, also to callers racing with it and across a restart.
//!
//! - **Shared or not.** A backend shared by several hooktap instances ([`Store::shared`])
//!   leases what [`Store::queued`] and [`Store::claim_head`] return to the instance that asked,
//!   keeps counters as increments ([`Recording::Shared`]), and the engine then re-reads the
//!   webhooks from it rather than trusting its own copy.
//!
//! Backends:
//! - [`sled`](self::sled): the embedded default, one directory on local disk.
//! - [`postgres`](self::postgres): PostgreSQL shared by many instances, with a sled journal on
//!   local disk in front of it for the request path.
//!
//! This module imports only the shared types ([`crate::event`], [`crate::webhook`]); it knows
//! nothing of the engine, the config file or HTTP.

#[cfg(test)]
pub mod contract;
pub mod postgres;
pub mod sled;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::event::{Attempt, DedupeKey, Delivery, DeliveryState, Event};
use crate::webhook::{Counters, Webhook};

pub use self::postgres::{PgConfig, PgStore};
pub use self::sled::{Durable, SledStore};

/// How eagerly the store reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// The log is flushed every `interval`; a crash can lose the events of the last interval.
    Interval(Duration),
    /// Every event is flushed before the response completes: nothing is lost on a crash.
    EveryEvent,
}

/// Where and how the store keeps its data (`[store]` in hooktap.toml).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub flush: FlushMode,
    /// How long finished events, deliveries and attempts are kept.
    pub retention: Duration,
    /// Below this much free disk space, events are not stored (traffic still flows).
    pub min_free_space: u64,
    /// Which backend holds the data; `path` is the local journal of a shared one.
    pub backend: Backend,
}

/// `[store] backend`.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    #[default]
    Sled,
    Postgres(PgConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store I/O: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("store record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A record in a binary form that does not read back (what, which, and why).
    #[error("store record is corrupt: {0}")]
    CorruptRecord(String),
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
    #[error("a background store task failed: {0}")]
    Task(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A store that a tool cannot use as it is (missing, in use, holding what it cannot move).
    #[error("{0}")]
    Unusable(String),
    #[error("the store's durability barrier failed ({0}); the store is being reopened")]
    Barrier(String),
    #[error(
        "{path} is the local journal of an instance on PostgreSQL and still holds {events} events not moved there: run it with [store] backend = \"postgres\" until hooktap_journal_backlog is 0, or give the sled store another path"
    )]
    UnshippedJournal { path: String, events: usize },
    #[error(
        "{path} is a sled store (it holds webhooks), not the local journal of an instance on PostgreSQL: move it there with `hooktap migrate --from-sled {path}` and give [store] path a new, empty directory (as a journal, its pending deliveries would be lost)"
    )]
    SledStoreAsJournal { path: String },
}

/// One delivery's step: its state before and after an attempt, and the attempt's log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub before: Delivery,
    pub after: Delivery,
    pub attempt: Attempt,
}

/// How often [`Store::apply_webhooks`] plans again when a webhook changed meanwhile.
const APPLY_ROUNDS: usize = 100;

/// What [`Store::requeue`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Requeued {
    /// Queued again, due at once.
    Done(Delivery),
    /// Nothing written: another instance holds a live lease on it (it is being sent now).
    InFlight,
    /// Nothing written: the delivery is gone (deleted with its webhook, or swept), or its
    /// webhook is deleted and its history not yet removed.
    Gone,
}

impl Requeued {
    /// The requeued delivery, if it was requeued.
    pub fn done(self) -> Option<Delivery> {
        match self {
            Self::Done(d) => Some(d),
            Self::InFlight | Self::Gone => None,
        }
    }
}

/// What [`Store::replace_webhook`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// Written: the stored version is the copy's plus one.
    Done,
    /// Nothing written: the webhook is gone (deleted meanwhile).
    Gone,
    /// Nothing written: the record changed since the copy was read (read it again).
    Stale,
}

/// What recording an outcome came to (see [`Store::record_attempts`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Recording {
    /// The webhook no longer exists: nothing was written.
    Gone,
    /// Written; the engine's copy of the counters is the one to keep.
    Saved,
    /// Written to a shared store, which counted the outcome itself: these are the webhook's
    /// counters now, over every instance.
    Shared(Counters),
}

/// How one request's outcome moves a webhook's counters: [`Counters::apply`] applies it in
/// memory, a shared store as increments in one statement. Derived from the recorded changes
/// alone, so every backend counts the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterChange {
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    /// The request succeeded: consecutive failures start again from zero.
    pub success: bool,
    /// The request finally failed a delivery: one more consecutive failure (a request counts
    /// once, however many deliveries it carried).
    pub final_failure: bool,
    /// When the attempt was made.
    pub at: Option<OffsetDateTime>,
}

impl CounterChange {
    pub fn of(changes: &[Recorded]) -> Self {
        let mut c = Self::default();
        for r in changes {
            c.at = Some(c.at.map_or(r.attempt.created_at, |at| at.max(r.attempt.created_at)));
            match r.after.state {
                crate::event::DeliveryState::Delivered => {
                    c.delivered += 1;
                    c.success = true;
                }
                crate::event::DeliveryState::Failed => {
                    c.failed += 1;
                    c.final_failure = true;
                }
                crate::event::DeliveryState::Pending => c.retries += 1,
            }
        }
        c
    }
}

impl Counters {
    /// The counters after `change`.
    pub fn apply(&mut self, change: &CounterChange) {
        self.delivered += change.delivered;
        self.failed += change.failed;
        self.retries += change.retries;
        if change.success {
            self.consecutive_failures = 0;
            self.last_delivered_at = change.at.or(self.last_delivered_at);
        } else {
            if change.final_failure {
                self.consecutive_failures += 1;
            }
            if change.failed + change.retries > 0 {
                self.last_failure_at = change.at.or(self.last_failure_at);
            }
        }
    }
}

/// How the config file's webhooks meet the stored ones: computed from what is stored by
/// [`Store::apply_webhooks`] (see [`crate::delivery::sync`] for the policy).
#[derive(Debug, Default)]
pub struct WebhookPlan {
    /// Webhooks to create or replace.
    pub put: Vec<Webhook>,
    /// Webhooks declared by the file that left it.
    pub remove: Vec<Webhook>,
}

/// Decides a [`WebhookPlan`] from the stored webhooks (see [`Store::apply_webhooks`]).
pub struct Planner(pub Box<PlanFn>);

/// The function inside a [`Planner`].
pub type PlanFn = dyn Fn(&[Webhook]) -> WebhookPlan + Send + Sync;

impl Planner {
    pub fn plan(&self, stored: &[Webhook]) -> WebhookPlan {
        (self.0)(stored)
    }
}

/// What applying a [`WebhookPlan`] did: the webhooks written, and those removed with how many
/// of their deliveries were still pending.
#[derive(Debug, Default)]
pub struct Applied {
    pub put: Vec<Webhook>,
    pub removed: Vec<(Webhook, usize)>,
}

/// The local journal of a shared store: events stored here and not yet moved to the shared
/// store (see [`Store::journal`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// Events waiting to be moved.
    pub backlog: u64,
    /// How long the oldest of them has waited.
    pub behind: Duration,
    /// Whether the shared store answered the last time it was asked.
    pub connected: bool,
}

/// What the durability barrier of `flush = "every-event"` has done since start (see
/// [`Store::barrier`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BarrierStats {
    /// Barriers run: each one writes sled's buffers and `fdatasync`s its log file.
    pub syncs: u64,
    /// Events made durable by them (`writes / syncs` is the mean group size).
    pub writes: u64,
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub events: usize,
    pub deliveries: usize,
    pub attempts: usize,
}

/// What [`Store::claim_key_heads`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyHeads {
    /// Heads due now, in queue order.
    pub ready: Vec<Delivery>,
    /// When the first head not yet due is due.
    pub next_due_ms: Option<u64>,
}

/// A webhook's queue at a glance.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries waiting to be sent (retries included).
    pub pending: usize,
    /// When the oldest of them was created, in Unix milliseconds.
    pub oldest_ms: Option<u64>,
}

/// A window of a webhook's attempts cut into `buckets` equal buckets of `bucket_ms`, from
/// `since_ms` (see [`Store::attempt_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsWindow {
    pub since_ms: u64,
    pub bucket_ms: u64,
    pub buckets: usize,
}

impl StatsWindow {
    /// Where the window ends (exclusive).
    pub fn until_ms(&self) -> u64 {
        self.since_ms.saturating_add(
            self.bucket_ms
                .saturating_mul(u64::try_from(self.buckets).unwrap_or(u64::MAX)),
        )
    }

    /// The bucket an attempt made at `at_ms` falls in, if it is in the window.
    pub fn bucket_of(&self, at_ms: u64) -> Option<usize> {
        if at_ms < self.since_ms || at_ms >= self.until_ms() || self.bucket_ms == 0 {
            return None;
        }
        usize::try_from((at_ms - self.since_ms) / self.bucket_ms).ok()
    }
}

/// What the attempts of one bucket (or of a whole window) came to. An attempt's *lag* is the
/// time from its event's creation to the attempt's end (when its outcome was recorded), as
/// the `delivery_lag_seconds` metric measures it, but over every attempt, failed ones too.
/// Percentiles are discrete (the smallest value with at least that share of the attempts at
/// or below it, PostgreSQL's `percentile_disc`), `None` without attempts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttemptBucket {
    pub succeeded: u64,
    pub failed: u64,
    /// The receiver's response time (the attempt's `duration_ms`).
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub lag_p50_ms: Option<u64>,
    pub lag_p99_ms: Option<u64>,
}

/// One attempt as statistics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptSample {
    pub success: bool,
    pub duration_ms: u64,
    pub lag_ms: u64,
}

impl AttemptBucket {
    /// The bucket of these attempts (their order does not matter).
    pub fn of(samples: &[AttemptSample]) -> Self {
        let mut durations: Vec<u64> = samples.iter().map(|s| s.duration_ms).collect();
        let mut lags: Vec<u64> = samples.iter().map(|s| s.lag_ms).collect();
        durations.sort_unstable();
        lags.sort_unstable();
        let succeeded = samples.iter().filter(|s| s.success).count() as u64;
        Self {
            succeeded,
            failed: samples.len() as u64 - succeeded,
            p50_ms: percentile_disc(&durations, 50),
            p99_ms: percentile_disc(&durations, 99),
            lag_p50_ms: percentile_disc(&lags, 50),
            lag_p99_ms: percentile_disc(&lags, 99),
        }
    }
}

/// PostgreSQL's `percentile_disc(percent / 100)` over sorted values: the first value whose
/// position (from 1) is at least `percent` % of the count. In integers, so that both backends
/// agree to the row.
pub fn percentile_disc(sorted: &[u64], percent: u64) -> Option<u64> {
    let n = u64::try_from(sorted.len()).ok()?;
    if n == 0 {
        return None;
    }
    let position = (n * percent).div_ceil(100).max(1);
    sorted.get(usize::try_from(position - 1).ok()?).copied()
}

/// A webhook's attempts over a [`StatsWindow`]: one entry per bucket, oldest first (dense:
/// empty buckets too), and the whole window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttemptStats {
    pub buckets: Vec<AttemptBucket>,
    pub totals: AttemptBucket,
}

impl AttemptStats {
    /// The statistics of `samples`, each with the time it was made (Unix ms); samples outside
    /// the window are left out.
    pub fn of(
        window: &StatsWindow,
        samples: impl IntoIterator<Item = (u64, AttemptSample)>,
    ) -> Self {
        let mut acc = StatsAccumulator::new(window);
        for (at_ms, sample) in samples {
            acc.add(at_ms, sample);
        }
        acc.finish()
    }
}

/// [`AttemptStats`] gathered while scanning: each sample is kept once, as a duration and a
/// lag in its bucket's vectors; the window's percentiles are found in the sorted buckets
/// without copying them into one.
pub struct StatsAccumulator {
    window: StatsWindow,
    buckets: Vec<BucketSamples>,
}

#[derive(Default, Clone)]
struct BucketSamples {
    succeeded: u64,
    durations: Vec<u64>,
    lags: Vec<u64>,
}

impl StatsAccumulator {
    pub fn new(window: &StatsWindow) -> Self {
        Self {
            window: *window,
            buckets: vec![BucketSamples::default(); window.buckets],
        }
    }

    /// Counts an attempt made at `at_ms`; one outside the window is left out.
    pub fn add(&mut self, at_ms: u64, sample: AttemptSample) {
        if let Some(b) = self
            .window
            .bucket_of(at_ms)
            .and_then(|b| self.buckets.get_mut(b))
        {
            b.succeeded += u64::from(sample.success);
            b.durations.push(sample.duration_ms);
            b.lags.push(sample.lag_ms);
        }
    }

    pub fn finish(mut self) -> AttemptStats {
        for b in &mut self.buckets {
            b.durations.sort_unstable();
            b.lags.sort_unstable();
        }
        let bucket = |b: &BucketSamples| AttemptBucket {
            succeeded: b.succeeded,
            failed: b.durations.len() as u64 - b.succeeded,
            p50_ms: percentile_disc(&b.durations, 50),
            p99_ms: percentile_disc(&b.durations, 99),
            lag_p50_ms: percentile_disc(&b.lags, 50),
            lag_p99_ms: percentile_disc(&b.lags, 99),
        };
        let durations: Vec<&[u64]> = self.buckets.iter().map(|b| &b.durations[..]).collect();
        let lags: Vec<&[u64]> = self.buckets.iter().map(|b| &b.lags[..]).collect();
        let succeeded: u64 = self.buckets.iter().map(|b| b.succeeded).sum();
        let count: u64 = self.buckets.iter().map(|b| b.durations.len() as u64).sum();
        AttemptStats {
            buckets: self.buckets.iter().map(bucket).collect(),
            totals: AttemptBucket {
                succeeded,
                failed: count - succeeded,
                p50_ms: percentile_disc_of_sorted(&durations, 50),
                p99_ms: percentile_disc_of_sorted(&durations, 99),
                lag_p50_ms: percentile_disc_of_sorted(&lags, 50),
                lag_p99_ms: percentile_disc_of_sorted(&lags, 99),
            },
        }
    }
}

/// [`percentile_disc`] over the union of several sorted lists, without merging them: the
/// smallest value with at least the wanted position's count at or below it (a binary search
/// over values, counting with a binary search in each list).
fn percentile_disc_of_sorted(lists: &[&[u64]], percent: u64) -> Option<u64> {
    let n: u64 = lists.iter().map(|l| l.len() as u64).sum();
    if n == 0 {
        return None;
    }
    let position = (n * percent).div_ceil(100).max(1);
    let at_or_below = |v: u64| -> u64 {
        lists
            .iter()
            .map(|l| l.partition_point(|&x| x <= v) as u64)
            .sum()
    };
    let (mut lo, mut hi) = (0u64, lists.iter().filter_map(|l| l.last()).copied().max()?);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at_or_below(mid) >= position {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// The most events a payload search ([`EventQuery::text`]) reads: it looks at the newest
/// events that pass the other filters, this many at most, so that one search costs a bounded
/// amount of work whatever the store holds. Narrow `since`/`until` to look further back.
pub const MAX_TEXT_SCAN: usize = 10_000;

/// Whether `payload`'s JSON text (compact, as hooktap writes it) contains `needle`, which is
/// lower-case, ignoring case. Both backends match this way, on the decoded payload, so they
/// agree whatever their storage formats.
pub fn payload_contains(payload: &serde_json::Value, needle: &str) -> bool {
    serde_json::to_string(payload).is_ok_and(|text| text.to_lowercase().contains(needle))
}

/// Which events to list: newest first, filtered.
#[derive(Debug, Default, Clone)]
pub struct EventQuery {
    /// A glob over topics.
    pub topic: Option<globset::GlobMatcher>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// Only events whose payload's JSON text contains this, ignoring case (lower-case here);
    /// at most [`MAX_TEXT_SCAN`] events are read for it, each counted whether or not the other
    /// filters keep it.
    pub text: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

impl EventQuery {
    /// Whether an event passes the payload search (always, without one).
    pub fn text_matches(&self, payload: &serde_json::Value) -> bool {
        self.text
            .as_deref()
            .is_none_or(|needle| payload_contains(payload, needle))
    }
}

/// Which of a webhook's deliveries to list: newest first, in one state or any, one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryQuery {
    pub state: Option<DeliveryState>,
    pub offset: usize,
    pub limit: usize,
    /// How many matches to count at most: once the page is read and more than this many
    /// match, counting stops and the total is not known. An exact count reads the whole
    /// history (a million deliveries: ~0.7 s on sled), which a page refreshed every few
    /// seconds should not.
    pub count_up_to: u64,
}

/// What the admin API counts a webhook's deliveries up to ([`DeliveryQuery::count_up_to`]).
pub const DELIVERY_COUNT_CAP: u64 = 10_000;

/// One page of a webhook's deliveries and how many match over all pages: `None` when more
/// than [`DeliveryQuery::count_up_to`] do.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPage {
    pub items: Vec<Delivery>,
    pub total: Option<u64>,
}

/// The store contract. See the module documentation for the promises; `contract` tests them.
///
/// Methods that the request path calls are synchronous; the rest are `async` so that a
/// backend across a network can serve them without blocking the engine's runtime. The
/// lifecycle methods ([`Store::maintain`], [`Store::sweep`]) run on a blocking thread.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- lifecycle -----------------------------------------------------------------------

    /// Whether new events go into the store itself (rather than wait, see [`Store::hold`]).
    fn is_ready(&self) -> bool;

    /// Whether the store opened but its webhooks are not applied yet: the keeper applies
    /// them, then calls [`Store::mark_ready`].
    fn needs_setup(&self) -> bool;

    /// Events go into the store from now on.
    fn mark_ready(&self);

    /// Looks after the backend (reopening it after a failure, checking disk space, removing
    /// deleted webhooks' history on sled, ...); called on a blocking thread a few times a
    /// second. Returns true when it opened.
    fn maintain(&self) -> bool;

    /// Hands every held event to `store`, oldest first, and forgets each once `store`
    /// succeeded. Returns how many were moved. Called on a blocking thread.
    fn drain_held(
        &self,
        store: &mut dyn FnMut(&Event) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError>;

    /// A cheap read that fails when the store does (readiness checks).
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many appends (and holds) failed since start.
    fn failed_appends(&self) -> u64;

    /// Writes everything buffered to stable storage (shutdown, tests); a shared store also
    /// moves its local journal into the shared store.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Whether other hooktap instances share this store (see the module documentation).
    fn shared(&self) -> bool {
        false
    }

    /// How long a delivery that [`Store::queued`] returned stays this instance's own (shared
    /// stores: its lease). `None`: nobody else can take it, and the scheduler claims only what
    /// it starts at once; `Some`: it may claim ahead of need and hold the rest locally for part
    /// of this time (see the scheduler's `claim_due`).
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Signalled when another instance added work or changed a webhook (shared stores).
    fn remote_changes(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Signalled when a webhook was changed (created, changed, paused, deleted, disabled) by
    /// any instance (shared stores): the running set is then out of date until it is read
    /// again.
    fn webhook_changes(&self) -> Option<Arc<Notify>> {
        None
    }

    /// The local journal of a shared store.
    fn journal(&self) -> Option<JournalStats> {
        None
    }

    /// What the durability barrier of `flush = "every-event"` has done (`None` in other modes).
    fn barrier(&self) -> Option<BarrierStats> {
        None
    }

    // --- intake: the request path ------------------------------------------------------------

    /// Stores an event with its deliveries (durably in `every-event` mode). Their queue
    /// entries become visible last, so the queue never points at something missing.
    fn append(&self, event: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        match self.append_deferred(event, deliveries)? {
            Some(durable) => durable.wait(),
            None => Ok(()),
        }
    }

    /// [`Store::append`], except that in `every-event` mode it returns once the writes are
    /// done, before they are on stable storage, with the [`Durable`] to wait on: the proxy holds
    /// back the response's last bytes until then without blocking a thread.
    fn append_deferred(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError>;

    /// [`Store::append_deferred`] for an event the caller shares: a store may keep it for the
    /// delivery that sends it without copying it (see [`Store::event_to_send`]).
    fn append_shared(
        &self,
        event: &Arc<Event>,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        self.append_deferred(event, deliveries)
    }

    /// [`Store::append_deferred`] for an event that may be stored already (one held in
    /// `pending/` is stored again when a crash came between storing it and forgetting it):
    /// the deliveries stored with it before stay its own, and of `deliveries` only those for
    /// a webhook without one are added (a second would reach its receiver as a second
    /// message).
    fn append_again(
        &self,
        event: &Event,
        deliveries: &[Delivery],
    ) -> Result<Option<Durable>, StoreError> {
        self.append_deferred(event, deliveries)
    }

    /// Claims a rule's de-duplication key for `window` from `now_ms`, for `event` (the event
    /// about to be appended if the claim succeeds): true when the key was
    /// not claimed within its window (the event is new and is to be stored), false for a
    /// repeat. One key lookup, and one write for a new key; two callers racing with one key
    /// get one `true`. The claim outlives a restart. A shared store claims on its local
    /// journal here and again, across instances, when it moves the event in (an event whose
    /// key another instance claimed within the window is then dropped).
    fn claim_dedupe(
        &self,
        key: &DedupeKey,
        event: Uuid,
        now_ms: u64,
        window: Duration,
    ) -> Result<bool, StoreError>;

    /// Gives back a claim whose event could not be stored, so that a retry is not a repeat.
    fn release_dedupe(&self, key: &DedupeKey, event: Uuid) -> Result<(), StoreError>;

    /// Keeps an event while the store is not ready, so that it is not lost;
    /// [`Store::drain_held`] hands it back once the store is ready.
    fn hold(&self, event: &Event) -> Result<(), StoreError>;

    // --- webhooks ------------------------------------------------------------------------------

    /// Every webhook, oldest first.
    async fn webhooks(&self) -> Result<Vec<Webhook>, StoreError>;

    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError>;

    /// Creates or replaces a webhook. A shared store keeps its own counters (see
    /// [`Store::reset_counters`]). Replacing one moves its version on (see
    /// [`Store::replace_webhook`]).
    async fn put_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;

    /// Zeroes a webhook's counters (nothing when it was deleted). A shared store zeroes its
    /// counters only; others write `webhook` (its counters zeroed by the caller).
    async fn reset_counters(&self, webhook: &Webhook) -> Result<(), StoreError> {
        self.save_webhook(webhook).await.map(drop)
    }

    /// Replaces the record of a webhook that exists (a shared store keeps its counters) if
    /// the stored record is still at `webhook.version`, the version the copy was read at;
    /// the stored version is then `webhook.version + 1`. Every other write of the record
    /// moves the version on too, so a copy read before any change (through another
    /// instance, the config file, or the engine disabling the webhook) is refused as
    /// [`Replaced::Stale`] instead of overwriting that change.
    async fn replace_webhook(&self, webhook: &Webhook) -> Result<Replaced, StoreError>;

    /// Gives up the leases on deliveries [`Store::queued`] returned but that were not sent
    /// (the concurrency limits filled up meanwhile).
    async fn unclaim(&self, _deliveries: &[Uuid]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Gives up what this instance holds in a shared store (its leases) when it stops, so
    /// that the other instances need not wait for them to run out.
    async fn release(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Applies the config file's webhooks: `plan` decides from what is stored, and the store
    /// writes it. A shared store does both under one lock, so instances starting together
    /// agree on one id per webhook. A change made to a stored webhook meanwhile (an admin
    /// PUT, a pause, a failure-threshold disable) is never overwritten by a plan made before
    /// it: here stored webhooks are written version-checked, and the plan is made again from
    /// what is stored when one was changed (or deleted) in between.
    async fn apply_webhooks(&self, planner: &Planner) -> Result<Applied, StoreError> {
        'plan: for _ in 0..APPLY_ROUNDS {
            let stored = self.webhooks().await?;
            let plan = planner.plan(&stored);
            let mut applied = Applied::default();
            for mut w in plan.put {
                if stored.iter().any(|s| s.id == w.id) {
                    match self.replace_webhook(&w).await? {
                        Replaced::Done => w.version += 1,
                        Replaced::Stale | Replaced::Gone => continue 'plan,
                    }
                } else {
                    self.put_webhook(&w).await?;
                }
                applied.put.push(w);
            }
            for w in plan.remove {
                let dropped = self.delete_webhook_in_background(w.id).await?;
                applied.removed.push((w, dropped));
            }
            return Ok(applied);
        }
        Err(StoreError::Unusable(format!(
            "the webhooks changed under every one of {APPLY_ROUNDS} attempts to apply the config file's webhooks"
        )))
    }

    /// Replaces the record of a webhook that exists (counters, status), whatever its version
    /// (moving it on); returns false, and writes nothing, when it was deleted.
    async fn save_webhook(&self, webhook: &Webhook) -> Result<bool, StoreError>;

    /// Deletes a webhook with its deliveries and attempts; returns how many deliveries were
    /// still pending (dropped unsent).
    async fn delete_webhook(&self, id: Uuid) -> Result<usize, StoreError>;

    /// [`Store::delete_webhook`] without waiting for the history: the webhook's record is gone
    /// when this returns, its deliveries and attempts may be removed afterwards (until then a
    /// queued delivery may still be handed out, so the caller stops running the webhook just
    /// before or after), so that neither `DELETE /webhooks/{id}` nor a start or a reload
    /// waits for a long history. The count of pending deliveries may be the queue's count
    /// before the deletion.
    async fn delete_webhook_in_background(&self, id: Uuid) -> Result<usize, StoreError> {
        self.delete_webhook(id).await
    }

    // --- the queue -----------------------------------------------------------------------------

    /// Up to `limit` queued deliveries of `webhook` whose queue time is at most `until_ms`,
    /// in queue order, leaving out those in `skip` (in flight) and those not due by
    /// `until_ms` (a keyed retry keeps its early queue time after the webhook's
    /// `ordering_key` is removed). A shared store leaves out
    /// those leased to other instances and leases what it returns to this one.
    async fn queued(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Like [`Store::queued`] with nothing skipped, for webhooks that send one request at a
    /// time (ordered, batch): a shared store returns nothing while another instance holds a
    /// lease on any of the webhook's deliveries.
    async fn claim_head(
        &self,
        webhook: Uuid,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.queued(webhook, until_ms, limit, &HashSet::new()).await
    }

    /// For a webhook with an `ordering_key`: the head of each key's queue (the key's first
    /// queued delivery, in queue order; in arrival order for a shared store) that is due by
    /// `now_ms`, at most `limit`, and when the first head not yet due is due. A key whose head
    /// is in `skip` (in flight here) or leased by another instance has nothing ready, so one
    /// delivery per key is in flight over all instances; a delivery without a key is a head
    /// on its own. A shared store leases what it returns.
    async fn claim_key_heads(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<Uuid>,
    ) -> Result<KeyHeads, StoreError>;

    /// When the first queued delivery of `webhook` not in `skip` may go: the later of its
    /// queue and due times, the earliest over the queue (for a shared
    /// store: the first one this instance may take; another instance's lease running out is
    /// noticed by the scheduler's once-a-second look).
    async fn next_queued(
        &self,
        webhook: Uuid,
        skip: &HashSet<Uuid>,
    ) -> Result<Option<u64>, StoreError>;

    async fn queue_stats(&self, webhook: Uuid) -> Result<QueueStats, StoreError>;

    /// Records the outcome of one request to `webhook`: each delivery's attempt and next
    /// state (the queue follows the state, and a lease ends), and the webhook's record when
    /// given (a shared store takes only a newly disabled status from it: it counts itself).
    /// Writes nothing when the webhook no longer exists.
    async fn record_attempts(
        &self,
        webhook: Uuid,
        changes: &[Recorded],
        record: Option<&Webhook>,
    ) -> Result<Recording, StoreError>;

    /// Puts a delivery back in the queue, due at `now_ms`, with a fresh retry schedule and
    /// the same id. It is built on the delivery as stored (`delivery` names it), so an attempt
    /// recorded since `delivery` was read is kept. Nothing is written when it is gone
    /// ([`Requeued::Gone`]) or another instance holds a live lease on it (it is being sent
    /// right now: [`Requeued::InFlight`]). A shared
    /// store fences out the late outcome of a send whose lease ran out, or of this instance's
    /// own send, so that the requeue stands (the delivery is sent again: at least once).
    async fn requeue(&self, delivery: &Delivery, now_ms: u64) -> Result<Requeued, StoreError>;

    // --- reads ---------------------------------------------------------------------------------

    async fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError>;

    /// The event of a delivery about to be sent: [`Store::event`], which a store may answer
    /// from memory (the sled store for an event its request stored moments ago, see
    /// `src/store/sled/to_send.rs`; PostgreSQL for one read with the delivery's lease). It is
    /// one call per delivery sent, and may use up what memory held for it: every other read
    /// (the admin API, the keeper) uses [`Store::event`].
    async fn event_to_send(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        self.event(id).await
    }

    async fn events_page(&self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// The deliveries of one event (to every webhook), oldest first.
    async fn deliveries_of_event(&self, event: Uuid) -> Result<Vec<Delivery>, StoreError>;

    /// What `webhook`'s attempts made within `window` came to, bucket by bucket. Reads only
    /// the window's attempts, through an index by webhook and time on both backends.
    async fn attempt_stats(
        &self,
        webhook: Uuid,
        window: &StatsWindow,
    ) -> Result<AttemptStats, StoreError>;

    /// `webhook`'s most recent failed attempt made at or after `since_ms`.
    async fn last_failure(
        &self,
        webhook: Uuid,
        since_ms: u64,
    ) -> Result<Option<Attempt>, StoreError>;

    async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError>;

    /// A webhook's deliveries, newest first, at most `limit`.
    async fn deliveries_of(&self, webhook: Uuid, limit: usize)
    -> Result<Vec<Delivery>, StoreError>;

    /// One page of a webhook's deliveries (the admin API's listing), newest first, with how
    /// many match over all pages, counted up to [`DeliveryQuery::count_up_to`]. Counting
    /// reads only each delivery's state, and only the page's deliveries are decoded: the
    /// webhook's history is not held in memory (on sled, but for a webhook with deliveries
    /// listed by the `x` entries of stores written before 2026-12-01).
    async fn deliveries_page(
        &self,
        webhook: Uuid,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError>;

    /// `webhook`'s failed deliveries created in `[since, until)`, newest first (what
    /// `recover` sends again).
    async fn failed_deliveries(
        &self,
        webhook: Uuid,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// The attempts of one delivery, first attempt first.
    async fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError>;

    // --- retention -------------------------------------------------------------------------------

    /// Removes every event created before `cutoff` none of whose deliveries is pending, with
    /// its deliveries and their attempts. Runs on a blocking thread.
    fn sweep(&self, cutoff: OffsetDateTime) -> Result<Swept, StoreError>;
}

/// `delivery` (as stored) put back in the queue at `now_ms` (see [`Store::requeue`]).
pub(crate) fn requeued(delivery: &Delivery, now_ms: u64) -> Delivery {
    let mut d = delivery.clone();
    d.state = DeliveryState::Pending;
    d.schedule_start = d.attempts;
    d.due_ms = now_ms;
    d.queue_ms = requeued_at(delivery, now_ms);
    d.updated_at = OffsetDateTime::now_utc();
    d
}

/// The queue time of a delivery put back in the queue at `now_ms`: a finished one joins at
/// the end, a pending one keeps its place if that is earlier (a keyed or ordered head waiting
/// for its retry stays in front of its key's later deliveries).
pub(crate) fn requeued_at(delivery: &Delivery, now_ms: u64) -> u64 {
    if delivery.state == DeliveryState::Pending {
        delivery.queue_ms.min(now_ms)
    } else {
        now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_totals_found_in_the_buckets_equal_those_of_all_samples() {
        let window = StatsWindow {
            since_ms: 1_000_000,
            bucket_ms: 60_000,
            buckets: 60,
        };
        // A deterministic spread of samples, with duplicates, across most buckets.
        let mut x: u64 = 7;
        let mut samples = Vec::new();
        for i in 0..5_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let sample = AttemptSample {
                success: x % 5 != 0,
                duration_ms: (x >> 33) % 2_000,
                lag_ms: (x >> 20) % 50_000 + i % 3,
            };
            samples.push((
                window.since_ms + (x >> 40) % (window.bucket_ms * 55),
                sample,
            ));
        }
        let stats = AttemptStats::of(&window, samples.clone());
        let all: Vec<AttemptSample> = samples.iter().map(|(_, s)| *s).collect();
        assert_eq!(stats.totals, AttemptBucket::of(&all));
        for (b, bucket) in stats.buckets.iter().enumerate() {
            let inside: Vec<AttemptSample> = samples
                .iter()
                .filter(|(at, _)| window.bucket_of(*at) == Some(b))
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(*bucket, AttemptBucket::of(&inside), "bucket {b}");
        }
        // One sample, and none.
        let one = [(window.since_ms, all[0])];
        assert_eq!(
            AttemptStats::of(&window, one).totals,
            AttemptBucket::of(&all[..1])
        );
        assert_eq!(
            AttemptStats::of(&window, []).totals,
            AttemptBucket::default()
        );
    }
}
