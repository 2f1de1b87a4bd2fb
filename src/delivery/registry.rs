//! The running set of webhooks: each one's record, compiled topics and sends in flight.
//!
//! The registry is what the intake asks "who gets this event?" on the request path, and what
//! the scheduler walks. The store holds the durable record; a [`Target`] holds the live copy
//! (its counters are written back at most once a second, see the scheduler).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use globset::GlobSet;
use serde_json::Value;
use uuid::Uuid;

use super::breaker::Gates;
use crate::event::Delivery;
use crate::rules::selector::Selector;
use crate::rules::when::Predicate;
use crate::webhook::{
    Mode, TopicsError, Webhook, WebhookSpec, WebhookStatus, check_ordering_key, compile_filter,
    compile_topics, ordering_key_of,
};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A webhook as the engine runs it.
pub struct Target {
    pub id: Uuid,
    /// The live record (status, counters). A plain mutex, never held across an `.await`.
    record: Mutex<Webhook>,
    topics: RwLock<GlobSet>,
    /// The spec's `filter` and `ordering_key`, compiled (the intake evaluates them).
    selection: RwLock<Selection>,
    /// The circuit breaker and the rate limit (see [`super::breaker`]).
    gates: Mutex<Gates>,
    /// Deliveries being sent right now; their queue entries stay until the attempt is recorded.
    in_flight: Mutex<HashSet<Uuid>>,
    /// Requests in flight (a batch is one request carrying many deliveries).
    requests: AtomicUsize,
    /// Requests whose send has ended and whose outcome is being written: they hold no request
    /// slot any more, but their deliveries stay in `in_flight` until written.
    recording: AtomicUsize,
    /// Deliveries a shared store leased to this instance ahead of need, each with the time
    /// until which it is sent from here (well within its lease), in queue order.
    ahead: Mutex<VecDeque<(Delivery, tokio::time::Instant)>>,
    /// When an outcome of this webhook last failed to be written (the store fails), until one
    /// is written again: meanwhile the scheduler sends one request at a time, at most one a
    /// second (see the scheduler's `dispatch_due`).
    store_failed: Mutex<Option<tokio::time::Instant>>,
    /// When the record was last written to the store (`None`: not yet).
    pub(super) saved_at: Mutex<Option<std::time::Instant>>,
    /// Held while an outcome is written to the store and while the webhook is deleted, so
    /// that a send finishing during a deletion cannot write the webhook back. Taken alone,
    /// except by the outcomes of a shared store (see the scheduler's `record`).
    pub(super) writes: tokio::sync::RwLock<()>,
    /// Set (under `writes`) when the webhook is deleted.
    deleted: AtomicBool,
}

impl Target {
    pub fn new(webhook: Webhook) -> Result<Self, TopicsError> {
        let topics = compile_topics(&webhook.spec.topics)?;
        let selection = Selection::compile(&webhook.spec);
        Ok(Self {
            id: webhook.id,
            record: Mutex::new(webhook),
            topics: RwLock::new(topics),
            selection: RwLock::new(selection),
            gates: Mutex::default(),
            in_flight: Mutex::default(),
            requests: AtomicUsize::new(0),
            recording: AtomicUsize::new(0),
            ahead: Mutex::default(),
            store_failed: Mutex::default(),
            saved_at: Mutex::default(),
            writes: tokio::sync::RwLock::new(()),
            deleted: AtomicBool::new(false),
        })
    }

    /// A copy of the current record.
    pub fn webhook(&self) -> Webhook {
        lock(&self.record).clone()
    }

    /// The live record, locked; keep the guard short and never across an `.await`.
    pub(super) fn record(&self) -> MutexGuard<'_, Webhook> {
        lock(&self.record)
    }

    /// Replaces the topics after the spec's topics changed.
    pub(super) fn set_topics(&self, topics: GlobSet) {
        *self.topics.write().unwrap_or_else(PoisonError::into_inner) = topics;
    }

    /// Recompiles the filter and the ordering key after the spec changed.
    pub(super) fn set_selection(&self, spec: &WebhookSpec) {
        *self
            .selection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Selection::compile(spec);
    }

    /// Whether a new event of `topic` gets a delivery to this webhook.
    pub(super) fn accepts(&self, topic: &str) -> bool {
        self.record().status != WebhookStatus::Disabled
            && self
                .topics
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_match(topic)
    }

    /// Whether an event of an accepted topic passes the webhook's filter; if so, its
    /// ordering key (`Some(None)`: passes, no key).
    pub(super) fn select(&self, payload: &Value) -> Option<Option<String>> {
        let s = self
            .selection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        (!s.broken && s.filter.iter().all(|p| p.holds(payload)))
            .then(|| s.key.as_ref().and_then(|k| ordering_key_of(k, payload)))
    }

    /// The circuit breaker and the rate limit; keep the guard short, never across an `.await`.
    pub(super) fn gates(&self) -> MutexGuard<'_, Gates> {
        lock(&self.gates)
    }

    /// How many requests may be in flight for this webhook, from its current spec: ordered
    /// and batch webhooks send one at a time. Read at every scheduling round, so a change
    /// through the API takes effect at once.
    pub(super) fn limit(&self) -> usize {
        let w = self.record();
        match (w.spec.ordered, w.spec.mode) {
            (false, Mode::Realtime) => w.spec.concurrency.max(1),
            _ => 1,
        }
    }

    pub(super) fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    pub(super) fn in_flight(&self) -> HashSet<Uuid> {
        lock(&self.in_flight).clone()
    }

    /// Whether `id` is being sent or recorded, or held ahead to be sent from here (and its
    /// local time has not run out: past it, it is claimed afresh like any queued delivery).
    pub(super) fn is_in_flight(&self, id: &Uuid) -> bool {
        let now = tokio::time::Instant::now();
        lock(&self.in_flight).contains(id)
            || lock(&self.ahead)
                .iter()
                .any(|(d, until)| d.id == *id && *until > now)
    }

    /// Marks a request carrying `ids` as started (`on`) or finished.
    pub(super) fn set_in_flight(&self, ids: &[Uuid], on: bool) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            if on {
                set.insert(*id);
            } else {
                set.remove(id);
            }
        }
        if on {
            self.requests.fetch_add(1, Ordering::AcqRel);
        } else {
            self.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Moves a request from sending to recording: its slot is free, its deliveries stay in
    /// flight until [`Target::recorded`].
    pub(super) fn sent(&self) {
        self.recording.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_sub(1, Ordering::AcqRel);
    }

    /// A request that [`Target::sent`] let go of has its outcome written (or given up).
    pub(super) fn recorded(&self, ids: &[Uuid]) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            set.remove(id);
        }
        self.recording.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests whose outcomes are being written after their slots were freed.
    pub(super) fn recording(&self) -> usize {
        self.recording.load(Ordering::Acquire)
    }

    /// Up to `n` of the deliveries leased ahead whose local time has not run out, each with
    /// that time (those whose has are forgotten: their lease still names this instance, so
    /// the next claim takes them again, or another instance once the lease ends).
    pub(super) fn take_ahead(
        &self,
        n: usize,
        now: tokio::time::Instant,
    ) -> Vec<(Delivery, tokio::time::Instant)> {
        let mut ahead = lock(&self.ahead);
        ahead.retain(|(_, until)| *until > now);
        let n = n.min(ahead.len());
        ahead.drain(..n).collect()
    }

    /// Puts deliveries taken from (or claimed for) the held set back at its front, in their
    /// order, each with its own time: they were not started after all (a gate held them).
    pub(super) fn put_back(&self, deliveries: Vec<(Delivery, tokio::time::Instant)>) {
        let mut ahead = lock(&self.ahead);
        for entry in deliveries.into_iter().rev() {
            ahead.push_front(entry);
        }
    }

    /// Keeps `deliveries` (leased ahead of need) to be sent from here until `until`.
    pub(super) fn keep_ahead(&self, deliveries: Vec<Delivery>, until: tokio::time::Instant) {
        lock(&self.ahead).extend(deliveries.into_iter().map(|d| (d, until)));
    }

    /// The ids of the deliveries held ahead.
    #[cfg(test)]
    pub(super) fn ahead_ids(&self) -> Vec<Uuid> {
        lock(&self.ahead).iter().map(|(d, _)| d.id).collect()
    }

    /// Empties the deliveries held ahead and returns their ids (to give their leases back).
    pub(super) fn drop_ahead(&self) -> Vec<Uuid> {
        lock(&self.ahead).drain(..).map(|(d, _)| d.id).collect()
    }

    /// An outcome of this webhook could not be written; whether this is the first failure
    /// since one was written.
    pub(super) fn store_failed(&self, at: tokio::time::Instant) -> bool {
        lock(&self.store_failed).replace(at).is_none()
    }

    /// An outcome of this webhook was written: sending goes on as usual. Whether the store had
    /// failed to write one before.
    pub(super) fn store_recorded(&self) -> bool {
        lock(&self.store_failed).take().is_some()
    }

    /// When an outcome last failed to be written, if none has been written since.
    pub(super) fn store_failing(&self) -> Option<tokio::time::Instant> {
        *lock(&self.store_failed)
    }

    pub(super) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }
}

/// A webhook's compiled `filter` and `ordering_key`.
struct Selection {
    filter: Vec<Predicate>,
    key: Option<Selector>,
    /// The stored spec did not compile: nothing passes.
    broken: bool,
}

impl Selection {
    /// Both were checked when the spec was made; a stored spec that no longer compiles (an
    /// older binary's record) lets no event through rather than the wrong ones.
    fn compile(spec: &WebhookSpec) -> Self {
        let filter = compile_filter(&spec.filter);
        let key = spec
            .ordering_key
            .as_deref()
            .map(check_ordering_key)
            .transpose();
        match (filter, key) {
            (Ok(filter), Ok(key)) => Self {
                filter,
                key,
                broken: false,
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(webhook = %spec.name, error = %e,
                    "the webhook's filter or ordering key does not compile; it receives no events until it is fixed");
                Self {
                    filter: Vec::new(),
                    key: None,
                    broken: true,
                }
            }
        }
    }
}

/// The running webhooks, in the order they were added.
#[derive(Default)]
pub struct Registry {
    targets: RwLock<Vec<Arc<Target>>>,
}

impl Registry {
    pub fn new(targets: Vec<Arc<Target>>) -> Self {
        Self {
            targets: RwLock::new(targets),
        }
    }

    pub fn all(&self) -> Vec<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn add(&self, target: Arc<Target>) {
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(target);
    }

    pub fn remove(&self, id: Uuid) {
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| t.id != id);
    }

    pub fn replace(&self, targets: Vec<Arc<Target>>) {
        *self.targets.write().unwrap_or_else(PoisonError::into_inner) = targets;
    }

    /// Whether a webhook other than `except` has this name.
    pub fn name_taken(&self, name: &str, except: Option<Uuid>) -> bool {
        self.all()
            .iter()
            .any(|t| Some(t.id) != except && t.record().spec.name == name)
    }

    /// The targets whose status is active.
    pub fn active(&self) -> Vec<Arc<Target>> {
        self.all()
            .into_iter()
            .filter(|t| t.record().status == WebhookStatus::Active)
            .collect()
    }
}
