//! Delivery: from stored event to signed POST, with retries, states and modes.
//!
//! The [`Dispatcher`] owns both ends of the queue. [`Dispatcher::enqueue`] is called on the
//! proxy path: it creates one [`Delivery`] per webhook that accepts the topic, appends event and
//! deliveries to the store and wakes the loop — no network I/O. [`Dispatcher::run`]
//! is the loop: per active webhook it reads what is due from the store and sends it within a
//! global and a per-webhook concurrency limit (a slow endpoint fills its own slots, not
//! everyone's), then records each attempt together with the delivery's next state and the
//! webhook's counters.
//!
//! Delivery is at-least-once: a queue entry is removed only when its attempt is recorded, so a
//! crash mid-send means the delivery is sent again after restart, with the same delivery id.
//!
//! - [`send`]: one request: building, signing, sending, reading the answer.
//! - [`sign`]: the signing profiles.
//! - [`retry`]: the retry schedule, jitter and `Retry-After`.
//! - [`ssrf`]: which destinations deliveries may reach.
//! - [`manage`]: operations on webhooks and deliveries (pause, delete, redeliver, ...).

pub mod manage;
pub mod retry;
pub mod send;
pub mod sign;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use globset::GlobSet;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use uuid::Uuid;

use crate::config::DeliveryConfig;
use crate::event::{Attempt, Delivery, DeliveryState, Event, Topic, unix_ms};
use crate::metrics::Metrics;
use crate::ssrf;
use crate::store::{Store, StoreError};
use crate::webhook::{BatchOrder, Mode, Webhook, WebhookSpec, WebhookStatus, compile_topics};
use send::{Answer, Outgoing};

/// The topic of the operational event emitted when a webhook becomes disabled.
pub const WEBHOOK_DISABLED_TOPIC: &str = "hooktap.webhook.disabled";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A webhook as the dispatcher runs it: its record, compiled topics, slots and sends in flight.
pub struct Target {
    pub id: Uuid,
    /// The record (status, counters); locked while an attempt's outcome is recorded, so the
    /// record is written by one outcome at a time.
    state: Mutex<Webhook>,
    topics: RwLock<GlobSet>,
    slots: Arc<Semaphore>,
    /// Deliveries being sent right now; their queue entries stay until the attempt is recorded.
    in_flight: Mutex<HashSet<Uuid>>,
    /// When this process last wrote the record to the store (`None`: not yet). Counters change
    /// with every attempt but are written at most every [`SAVE_COUNTERS_EVERY`]; a status
    /// change is written at once.
    saved_at: Mutex<Option<std::time::Instant>>,
}

impl Target {
    fn new(webhook: Webhook) -> Result<Self, String> {
        let topics = compile_topics(&webhook.spec.topics)?;
        // Ordered and batch webhooks have one request in flight at a time.
        let slots = match (webhook.spec.ordered, webhook.spec.mode) {
            (false, Mode::Realtime) => webhook.spec.concurrency,
            _ => 1,
        };
        Ok(Self {
            id: webhook.id,
            state: Mutex::new(webhook),
            topics: RwLock::new(topics),
            slots: Arc::new(Semaphore::new(slots)),
            in_flight: Mutex::default(),
            saved_at: Mutex::default(),
        })
    }

    /// A copy of the current record.
    pub fn webhook(&self) -> Webhook {
        lock(&self.state).clone()
    }

    /// Whether a new event of `topic` gets a delivery to this webhook.
    fn accepts(&self, topic: &str) -> bool {
        lock(&self.state).status != WebhookStatus::Disabled
            && self
                .topics
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_match(topic)
    }

    fn is_in_flight(&self, id: &Uuid) -> bool {
        lock(&self.in_flight).contains(id)
    }

    fn any_in_flight(&self) -> bool {
        !lock(&self.in_flight).is_empty()
    }

    fn set_in_flight(&self, ids: impl IntoIterator<Item = Uuid>, on: bool) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            if on {
                set.insert(id);
            } else {
                set.remove(&id);
            }
        }
    }
}

pub struct Dispatcher {
    store: Arc<Store>,
    targets: RwLock<Vec<Arc<Target>>>,
    config: DeliveryConfig,
    client: reqwest::Client,
    global: Arc<Semaphore>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Every stored event, for live viewers (`hooktap tap`); sending costs nothing when
    /// nobody listens.
    tap: broadcast::Sender<Arc<Event>>,
}

/// How long the loop sleeps when nothing is queued (new work wakes it at once anyway).
const IDLE: Duration = Duration::from_secs(30);
/// How often a webhook's counters are written to the store while attempts go on: a crash can
/// lose this much of them (the deliveries' own states are written with every attempt).
const SAVE_COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// How often the store is looked after (see `keep_store`).
const KEEP_STORE_EVERY: Duration = Duration::from_millis(200);
/// How often old events, deliveries and attempts are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("webhook `{name}`: {message}")]
    Webhook { name: String, message: String },
}

/// The delivery client: no redirects followed, every name resolved through the SSRF guard.
pub(crate) fn client_builder(
    https_only: bool,
    resolver: Arc<ssrf::GuardedResolver>,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https_only)
        .dns_resolver(resolver)
        // Through a proxy only the proxy's name would be resolved here, unchecked.
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
}

/// Slots held by one send; released when it finishes.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        webhooks: Vec<Webhook>,
        config: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeliveryError> {
        // pingora already links rustls with ring; use the same provider rather than a second one.
        // Installing fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = client_builder(config.https_only, config.guard.resolver()).build()?;
        let targets = webhooks
            .into_iter()
            .map(|w| {
                let name = w.spec.name.clone();
                Target::new(w)
                    .map(Arc::new)
                    .map_err(|message| DeliveryError::Webhook { name, message })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            store,
            targets: RwLock::new(targets),
            global: Arc::new(Semaphore::new(config.concurrency)),
            config,
            client,
            wake: Notify::new(),
            metrics,
            tap: broadcast::channel(1024).0,
        })
    }

    /// Live events as they are stored (a slow viewer misses events rather than slowing hooktap).
    pub fn tap(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tap.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn targets(&self) -> Vec<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn target(&self, id: Uuid) -> Option<Arc<Target>> {
        self.targets().into_iter().find(|t| t.id == id)
    }

    /// Stores `event` with one delivery per webhook that accepts its topic and wakes the loop.
    /// Called on the proxy path: no network I/O, a few store writes.
    pub fn enqueue(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        let result = if self.store.is_ready() {
            match self.store_with_deliveries(event) {
                // The database closed meanwhile (a failure, being reopened): hold it instead.
                Err(StoreError::NotOpen) => self.store.hold(event).map(|()| Vec::new()),
                other => other,
            }
        } else {
            self.store.hold(event).map(|()| Vec::new())
        };
        if result.is_err() {
            self.metrics.store_error();
            return result;
        }
        self.metrics.event(&event.topic, &event.rule);
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(Arc::new(event.clone()));
        }
        result
    }

    /// Stores `event` in the database with one delivery per webhook that accepts its topic.
    fn store_with_deliveries(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        let deliveries: Vec<Delivery> = self
            .targets()
            .iter()
            .filter(|t| t.accepts(&event.topic))
            .map(|t| {
                let delay = match lock(&t.state).spec.mode {
                    Mode::Batch { interval, .. } => {
                        u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
                    }
                    Mode::Realtime => 0,
                };
                Delivery::new(event, t.id, delay)
            })
            .collect();
        self.store.append(event, &deliveries)?;
        if !deliveries.is_empty() {
            self.wake.notify_one();
        }
        Ok(deliveries)
    }

    /// The loop: send what is due, then sleep until the next due time, new work or shutdown.
    /// Also sweeps the store of what is older than the retention period, once an hour.
    pub async fn run(self: Arc<Self>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
        // Nothing to send before the store is open (see `keep_store`).
        while !self.store.is_ready() {
            tokio::select! {
                _ = tokio::time::sleep(KEEP_STORE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
        tracing::info!(webhooks = self.targets().len(), "delivery loop started");
        let sweeper = tokio::spawn(Arc::clone(&self).sweep_loop(retention));
        loop {
            let sleep = match self.dispatch_due() {
                Ok(next) => next.unwrap_or(IDLE).min(IDLE),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the delivery queue; retrying in 1s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }
        sweeper.abort();
        self.save_counters();
        tracing::info!("delivery loop stopped");
    }

    async fn sweep_loop(self: Arc<Self>, retention: Duration) {
        loop {
            let store = Arc::clone(&self.store);
            let cutoff = OffsetDateTime::now_utc() - retention;
            match tokio::task::spawn_blocking(move || store.sweep(cutoff)).await {
                Ok(Ok(s)) if s.events > 0 => tracing::info!(
                    events = s.events,
                    deliveries = s.deliveries,
                    attempts = s.attempts,
                    "removed records older than the retention period"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
                Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
            }
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    }

    /// Keeps the store usable until shutdown: checks free space, opens the database when it
    /// is not open (at start during an upgrade or on a read-only disk; after a failure),
    /// applies `webhooks` the first time it opens, and moves events held in `pending/` into it.
    pub async fn keep_store(
        self: Arc<Self>,
        webhooks: Vec<WebhookSpec>,
        grace: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let webhooks = Arc::new(webhooks);
        loop {
            let (this, webhooks) = (Arc::clone(&self), Arc::clone(&webhooks));
            if let Err(e) =
                tokio::task::spawn_blocking(move || this.maintain(&webhooks, grace)).await
            {
                tracing::error!(error = %e, "store maintenance panicked");
            }
            tokio::select! {
                _ = tokio::time::sleep(KEEP_STORE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn maintain(&self, webhooks: &[WebhookSpec], grace: Duration) {
        self.store.maintain();
        if self.store.needs_setup() {
            match self.sync_webhooks(webhooks, grace) {
                Ok(removed) => {
                    for (name, dropped) in removed {
                        tracing::warn!(webhook = %name, dropped, "webhook removed from the config: deleted with its pending deliveries");
                    }
                    self.store.mark_ready();
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot apply the webhooks to the store; trying again");
                    return;
                }
            }
        }
        if self.store.is_ready() {
            match self
                .store
                .drain_pending(|e| self.store_with_deliveries(e).map(drop))
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "moved events held in pending/ into the store"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot move held events into the store; trying again")
                }
            }
        }
    }

    /// Starts every due send there is a slot for; returns how long until the next one is due.
    fn dispatch_due(self: &Arc<Self>) -> Result<Option<Duration>, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let mut next: Option<u64> = None;
        let mut wake_at = |ms: u64| next = Some(next.map_or(ms, |n| n.min(ms)));
        for target in self.targets() {
            let (status, ordered, mode) = {
                let w = lock(&target.state);
                (w.status, w.spec.ordered, w.spec.mode)
            };
            if status != WebhookStatus::Active {
                continue;
            }
            let skip = |id: &Uuid| target.is_in_flight(id);
            match mode {
                Mode::Realtime if !ordered => {
                    let free = target.slots.available_permits();
                    let mut started = 0;
                    if free > 0 {
                        for delivery in self.store.queued(target.id, now, free, skip)? {
                            let Some(permits) = self.permits(&target) else {
                                break;
                            };
                            self.start(&target, vec![delivery], permits);
                            started += 1;
                        }
                    }
                    // When every slot is busy (or the global limit stopped us), a finishing
                    // send wakes the loop: only with a slot left over does the next due time
                    // matter. (This also saves a queue scan per event under load.)
                    if started < free && self.global.available_permits() > 0 {
                        if let Some(ms) = self.store.next_queued(target.id, skip)? {
                            wake_at(ms);
                        }
                    }
                }
                Mode::Realtime => {
                    // Ordered: only the head may go, and only when it is due.
                    if target.any_in_flight() {
                        continue;
                    }
                    if let Some(head) = self.store.queued(target.id, u64::MAX, 1, |_| false)?.pop()
                    {
                        if head.due_ms > now {
                            wake_at(head.due_ms);
                        } else if let Some(permits) = self.permits(&target) {
                            self.start(&target, vec![head], permits);
                        }
                    }
                }
                Mode::Batch { interval, max, .. } => {
                    if target.any_in_flight() {
                        continue;
                    }
                    // New deliveries are queued `interval` after their event: everything queued
                    // until now + interval has been gathered so far.
                    let horizon =
                        now.saturating_add(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
                    let gathered = self.store.queued(target.id, horizon, max, |_| false)?;
                    let Some(head) = gathered.first() else {
                        continue;
                    };
                    if head.queue_ms <= now || gathered.len() >= max {
                        // A retried delivery waits for its own due time.
                        let batch: Vec<Delivery> = gathered
                            .into_iter()
                            .filter(|d| d.attempts == 0 || d.due_ms <= now)
                            .collect();
                        if !batch.is_empty() {
                            if let Some(permits) = self.permits(&target) {
                                self.start(&target, batch, permits);
                            }
                        }
                    } else {
                        wake_at(head.queue_ms);
                    }
                }
            }
        }
        Ok(next.map(|due| Duration::from_millis(due.saturating_sub(now))))
    }

    /// A global and a per-webhook slot, or `None` when either is taken (a finishing send wakes
    /// the loop again).
    fn permits(&self, target: &Target) -> Option<Permits> {
        let global = Arc::clone(&self.global).try_acquire_owned().ok()?;
        let local = Arc::clone(&target.slots).try_acquire_owned().ok()?;
        Some((global, local))
    }

    fn start(self: &Arc<Self>, target: &Arc<Target>, deliveries: Vec<Delivery>, permits: Permits) {
        target.set_in_flight(deliveries.iter().map(|d| d.id), true);
        let (this, target) = (Arc::clone(self), Arc::clone(target));
        tokio::spawn(async move {
            let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
            if let Err(e) = this.deliver(&target, deliveries).await {
                tracing::error!(webhook = %target.id, error = %e,
                    "cannot record a delivery attempt; the deliveries stay queued and will be sent again");
            }
            drop(permits);
            target.set_in_flight(ids, false);
            this.wake.notify_one();
        });
    }

    /// Sends one delivery, or one batch of them, and records the outcome.
    async fn deliver(&self, target: &Target, deliveries: Vec<Delivery>) -> Result<(), StoreError> {
        let webhook = target.webhook();
        let mut events = Vec::with_capacity(deliveries.len());
        let mut kept = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match self.store.event(d.event_id)? {
                Some(e) => {
                    events.push(e);
                    kept.push(d);
                }
                None => {
                    tracing::error!(delivery = %d.id, event = %d.event_id, "the event of a queued delivery is missing; it is marked failed");
                    self.record(
                        target,
                        &[d],
                        None,
                        Err("the event is missing from the store".into()),
                        Duration::ZERO,
                    )?;
                }
            }
        }
        let Some(first) = kept.first() else {
            return Ok(());
        };
        let (body, topic) = match webhook.spec.mode {
            Mode::Realtime => (
                serde_json::to_vec(&events[0].payload)?,
                Some(events[0].topic.as_str()),
            ),
            Mode::Batch { order, .. } => {
                let mut by_topic: Map<String, Value> = Map::new();
                let ordered: Box<dyn Iterator<Item = &Event>> = match order {
                    BatchOrder::Chronological => Box::new(events.iter()),
                    BatchOrder::Reverse => Box::new(events.iter().rev()),
                };
                for e in ordered {
                    let list = by_topic
                        .entry(e.topic.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = list {
                        items.push(e.payload.clone());
                    }
                }
                let topic = events
                    .iter()
                    .all(|e| e.topic == events[0].topic)
                    .then_some(events[0].topic.as_str());
                (serde_json::to_vec(&by_topic)?, topic)
            }
        };
        let message_id = match webhook.spec.mode {
            Mode::Realtime => first.id,
            Mode::Batch { .. } => batch_id(&kept),
        };
        let out = Outgoing::new(
            &webhook,
            &message_id.to_string(),
            topic,
            &self.config.source,
            body,
        );
        let (result, elapsed) = send::send(&self.client, &self.config.guard, &out).await;
        self.record(target, &kept, Some(&out), result, elapsed)
    }

    /// Records the outcome of one request for each delivery it carried: next state, attempt log,
    /// counters, and the webhook's status (410 and the failure threshold disable it).
    fn record(
        &self,
        target: &Target,
        deliveries: &[Delivery],
        out: Option<&Outgoing>,
        result: Result<Answer, String>,
        elapsed: Duration,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let answer = result.as_ref().ok();
        let success = answer.is_some_and(Answer::success);
        let gone = answer.is_some_and(|a| a.status == 410);
        let summary = match &result {
            Ok(a) => a.summary(),
            Err(e) => e.clone(),
        };
        let disabled = {
            let mut guard = lock(&target.state);
            // Through a plain reference, so that fields can be borrowed one by one.
            let webhook: &mut Webhook = &mut guard;
            let was = webhook.status;
            let mut changes = Vec::with_capacity(deliveries.len());
            // A request counts once towards failure_threshold, however many deliveries it carried.
            let mut finally_failed = false;
            for (i, before) in deliveries.iter().enumerate() {
                let mut after = before.clone();
                after.attempts += 1;
                after.updated_at = now;
                after.last_summary = Some(summary.clone());
                let c = &mut webhook.counters;
                if success {
                    after.state = DeliveryState::Delivered;
                    self.metrics.delivery(&webhook.spec.name, "delivered");
                    self.metrics
                        .lag((now - before.created_at).as_seconds_f64().max(0.0));
                    c.delivered += 1;
                    c.last_delivered_at = Some(now);
                } else {
                    c.last_failure_at = Some(now);
                    let delay = (!gone)
                        .then(|| {
                            retry::next_delay(
                                &webhook.spec.retry,
                                after.attempts - after.schedule_start,
                            )
                        })
                        .flatten()
                        .map(|d| {
                            answer.and_then(|a| a.retry_after).unwrap_or_else(|| {
                                retry::with_jitter(
                                    d,
                                    after.id.as_u128() ^ u128::from(after.attempts),
                                )
                            })
                        });
                    match delay {
                        Some(delay) => {
                            after.due_ms = unix_ms(now).saturating_add(
                                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            );
                            if !webhook.spec.ordered {
                                after.queue_ms = after.due_ms;
                            }
                            c.retries += 1;
                            self.metrics.delivery(&webhook.spec.name, "retry");
                            tracing::warn!(delivery = %after.id, webhook = %webhook.spec.name, attempt = after.attempts, %summary,
                                retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), "delivery attempt failed");
                        }
                        None => {
                            after.state = DeliveryState::Failed;
                            c.failed += 1;
                            self.metrics.delivery(&webhook.spec.name, "failed");
                            finally_failed = true;
                            tracing::error!(delivery = %after.id, webhook = %webhook.spec.name, attempts = after.attempts, %summary,
                                "delivery failed finally; it can be redelivered by hand");
                        }
                    }
                }
                let attempt = attempt_record(
                    webhook,
                    before,
                    &after,
                    out,
                    &result,
                    elapsed,
                    now,
                    i,
                    &deliveries[0],
                );
                changes.push((before, after, attempt));
            }
            if success {
                webhook.counters.consecutive_failures = 0;
            } else if finally_failed {
                webhook.counters.consecutive_failures += 1;
            }
            if out.is_some() {
                self.metrics
                    .attempt_duration(&webhook.spec.name, elapsed.as_secs_f64());
            }
            let threshold = u64::from(webhook.spec.failure_threshold);
            if was != WebhookStatus::Disabled {
                if gone {
                    disable(webhook, "the receiver answered 410 Gone".to_owned());
                } else if threshold > 0 && webhook.counters.consecutive_failures >= threshold {
                    let reason = format!(
                        "{} consecutive deliveries failed",
                        webhook.counters.consecutive_failures
                    );
                    disable(webhook, reason);
                }
            }
            let mut saved_at = lock(&target.saved_at);
            let save = webhook.status != was
                || saved_at.is_none_or(|at| at.elapsed() >= SAVE_COUNTERS_EVERY);
            self.store
                .record_attempts(&changes, save.then_some(&*webhook))?;
            if save {
                *saved_at = Some(std::time::Instant::now());
            }
            (was != WebhookStatus::Disabled && webhook.status == WebhookStatus::Disabled)
                .then(|| webhook.clone())
        };
        if let Some(w) = disabled {
            self.announce_disabled(&w);
        }
        Ok(())
    }

    /// Writes every webhook's record with its latest counters (at shutdown).
    pub fn save_counters(&self) {
        for target in self.targets() {
            let webhook = lock(&target.state);
            if let Err(e) = self.store.save_webhook(&webhook) {
                tracing::warn!(webhook = %webhook.spec.name, error = %e, "cannot save the webhook's counters");
            }
        }
    }

    /// Emits `hooktap.webhook.disabled` so that ops, subscribed through any webhook, are told.
    fn announce_disabled(&self, w: &Webhook) {
        let reason = w.disabled_reason.clone().unwrap_or_default();
        tracing::error!(webhook = %w.spec.name, id = %w.id, %reason, "webhook disabled: no deliveries are sent or queued for it");
        let Ok(topic) = Topic::parse(WEBHOOK_DISABLED_TOPIC) else {
            return;
        };
        let payload = serde_json::json!({"id": w.id, "name": w.spec.name, "reason": reason});
        if let Err(e) = self.enqueue(&Event::new(&topic, "hooktap", payload)) {
            tracing::error!(error = %e, "cannot store the webhook.disabled event");
        }
    }
}

/// The id of a batch request: derived from the ids of the deliveries it carries, so a retry of
/// the same batch has the same id (receivers deduplicate on it) and a batch whose contents
/// changed has a new one.
fn batch_id(deliveries: &[Delivery]) -> Uuid {
    use sha2::Digest;
    let mut ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    ids.sort();
    let mut hash = sha2::Sha256::new();
    for id in ids {
        hash.update(id.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

fn disable(webhook: &mut Webhook, reason: String) {
    webhook.status = WebhookStatus::Disabled;
    webhook.disabled_reason = Some(reason);
    webhook.updated_at = OffsetDateTime::now_utc();
}

/// The attempt log entry of one delivery in one request.
#[allow(clippy::too_many_arguments)]
fn attempt_record(
    webhook: &Webhook,
    before: &Delivery,
    after: &Delivery,
    out: Option<&Outgoing>,
    result: &Result<Answer, String>,
    elapsed: Duration,
    now: OffsetDateTime,
    index_in_batch: usize,
    first: &Delivery,
) -> Attempt {
    let answer = result.as_ref().ok();
    Attempt {
        id: Uuid::now_v7(),
        delivery_id: before.id,
        webhook_id: webhook.id,
        number: after.attempts,
        created_at: now,
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        summary: after.last_summary.clone().unwrap_or_default(),
        success: after.state == DeliveryState::Delivered,
        request_method: "POST".to_owned(),
        request_url: out.map_or_else(
            || crate::webhook::mask_url(&webhook.spec.url),
            |o| o.shown_url.clone(),
        ),
        request_headers: out.map(Outgoing::shown_headers).unwrap_or_default(),
        // A batch's body is kept once, with its first delivery.
        request_body: match (out, index_in_batch) {
            (Some(o), 0) => send::kept_body(&o.body),
            (Some(_), _) => format!("(sent in one batch with delivery {})", first.id),
            (None, _) => String::new(),
        },
        response_code: answer.map(|a| a.status),
        response_message: answer.map(|a| a.reason.clone()).unwrap_or_default(),
        response_headers: answer.map(|a| a.headers.clone()).unwrap_or_default(),
        response_body: answer.map(|a| a.body.clone()).unwrap_or_default(),
    }
}
