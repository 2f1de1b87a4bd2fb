//! The scheduler: per active webhook, read what is due from the store and send it within the
//! limits, then record each outcome.
//!
//! Limits are read from each webhook's current spec at every round (so an API change of
//! `concurrency`, `ordered` or `mode` takes effect at once). A webhook may start a request
//! while it has fewer in flight than its own limit and either the global limit has room or
//! it is below its fair share (see the isolation rule in [`crate::delivery`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use super::breaker::{Admit, Change};
use super::outcome::{self, Step};
use super::registry::{Target, lock};
use super::send::{self, Outgoing, SendError, Sent};
use super::{Engine, WEBHOOK_DISABLED_TOPIC, WEBHOOK_FAILING_TOPIC};
use crate::event::{Delivery, Event, Topic, unix_ms};
use crate::store::{CounterChange, Recording, StoreError};
use crate::webhook::transform::Transform;
use crate::webhook::{BatchOrder, CircuitState, Counters, Mode, Webhook, WebhookStatus};

/// How long the loop sleeps when nothing is queued (new work wakes it at once anyway).
const IDLE: Duration = Duration::from_secs(30);
/// The same with a shared store: other instances' news arrive by `NOTIFY`, but a lease that
/// runs out (an instance died) is noticed by looking.
const IDLE_SHARED: Duration = Duration::from_secs(1);
/// How often a webhook's counters are written to the store while attempts go on: a crash can
/// lose this much of them (the deliveries' own states are written with every attempt).
const SAVE_COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before reading the queue again after the store failed.
const ON_STORE_ERROR: Duration = Duration::from_secs(1);
/// A concurrent webhook's requests whose outcomes are still being written, at most, per unit
/// of its `concurrency`: when its sends are faster than the store records them, sending waits.
const RECORDING_PER_SLOT: usize = 4;
/// How many deliveries a shared store leases at once for a concurrent webhook, per unit of its
/// `concurrency` (see [`Engine::claim_due`]).
const AHEAD_PER_SLOT: usize = 4;
/// ... and at most.
const AHEAD_MAX: usize = 64;
/// The longest deliveries leased ahead are held for (half the lease, unless that is longer).
const AHEAD_HOLD_MAX: Duration = Duration::from_secs(600);
/// What a delivery taken from those held ahead has left of its lease, at least, besides the
/// webhook's `timeout`: for waiting for a connection to the store and writing the outcome.
const AHEAD_MARGIN: Duration = Duration::from_secs(2);

/// One request in flight: released (and the loop woken) when dropped, however the send ends.
struct InFlight {
    engine: Arc<Engine>,
    target: Arc<Target>,
    ids: Vec<Uuid>,
    /// Whether the request still holds its slot (see [`InFlight::free_slot`]).
    holding: AtomicBool,
}

impl InFlight {
    /// The send has ended and the circuit breaker has noted it: the slot goes to the next
    /// request while the outcome is written. The deliveries stay in flight (not queued again)
    /// until the guard is dropped.
    fn free_slot(&self) {
        if self.holding.swap(false, Ordering::AcqRel) {
            self.target.sent();
            self.engine.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.engine.wake();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.holding.load(Ordering::Acquire) {
            self.target.set_in_flight(&self.ids, false);
            self.engine.in_flight.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.target.recorded(&self.ids);
        }
        self.engine.wake();
    }
}

/// The loop's view of one round: the time, and the earliest due time seen so far.
struct Round {
    now: u64,
    next: Option<u64>,
    /// Each active webhook's guaranteed share of the global limit.
    fair: usize,
}

impl Round {
    fn wake_at(&mut self, ms: u64) {
        self.next = Some(self.next.map_or(ms, |n| n.min(ms)));
    }
}

impl Engine {
    /// The loop: send what is due, then sleep until the next due time, new work or shutdown.
    pub async fn run(self: Arc<Self>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
        // Nothing to send before the store is open (see the keeper).
        while !self.store.is_ready() {
            tokio::select! {
                _ = tokio::time::sleep(super::keeper::KEEP_STORE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
        tracing::info!(
            webhooks = self.registry.all().len(),
            "delivery loop started"
        );
        let sweeper = tokio::spawn(Arc::clone(&self).sweep_loop(retention));
        let idle = if self.store.shared() {
            IDLE_SHARED
        } else {
            IDLE
        };
        let remote = self.store.remote_changes().unwrap_or_default();
        let webhooks = self.store.webhook_changes();
        let mut failing: Option<String> = None;
        loop {
            // A round can run without anything in it ever waiting (a store of one's own
            // answers at once) and end with a wake already stored (`Notify` spends no
            // budget): without this, such rounds could follow one another inside one poll
            // forever. That happened when the runtime shut down with sends in flight: each
            // send started was cancelled at once, its guard woke the loop, which started it
            // again, and the runtime waited forever for this poll to return.
            tokio::task::consume_budget().await;
            let sleep = match self.dispatch_due().await {
                Ok(next) => {
                    if failing.take().is_some() {
                        tracing::info!("the delivery queue can be read again");
                    }
                    next.unwrap_or(idle).min(idle)
                }
                Err(e) => {
                    let message = e.to_string();
                    if failing.as_deref() != Some(message.as_str()) {
                        tracing::error!(error = %message, "cannot read the delivery queue; retrying every second");
                    }
                    failing = Some(message);
                    // New work does not help while the store fails: wait out the pause.
                    tokio::select! {
                        _ = tokio::time::sleep(ON_STORE_ERROR) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            };
            tokio::select! {
                // First: a change that arrived during the round is taken in before the next.
                biased;
                () = changed(webhooks.as_deref()) => self.take_in_webhook_changes().await,
                _ = self.wake.notified() => {}
                _ = remote.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => break,
            }
        }
        sweeper.abort();
        self.save_counters().await;
        tracing::info!("delivery loop stopped");
    }

    /// A webhook was changed (by this instance or another): before the next round, what is
    /// held ahead for a webhook whose stored record is no longer the running one (deleted,
    /// paused, changed elsewhere) is given back, so that none of it is sent on the old record
    /// until the store keeper's next look runs the new one (the running set is not changed
    /// here: that waits for the outcomes being written). If the webhooks cannot be read, what
    /// is held ahead is forgotten (the leases stay this instance's: the next claim takes them
    /// again, if their webhook is still there).
    async fn take_in_webhook_changes(&self) {
        let stored = match self.store.webhooks().await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the changed webhooks; forgetting the deliveries held ahead");
                for target in self.registry.all() {
                    target.drop_ahead();
                }
                return;
            }
        };
        let versions: std::collections::HashMap<Uuid, u64> =
            stored.iter().map(|w| (w.id, w.version)).collect();
        let mut held = Vec::new();
        for target in self.registry.all() {
            let running = target.record().version;
            if versions.get(&target.id) != Some(&running) {
                held.extend(target.drop_ahead());
            }
        }
        // Only this task takes from (and claims for) what is held: none of these is being
        // sent, so none loses its lease mid-send.
        if !held.is_empty()
            && let Err(e) = self.store.unclaim(&held).await
        {
            tracing::debug!(error = %e, "cannot give back the deliveries held for changed webhooks; their leases run out");
        }
    }

    /// Whether `target` may start one more request now.
    fn may_start(&self, target: &Target, fair: usize) -> bool {
        let mine = target.requests();
        mine < target.limit()
            && (mine < fair.min(target.limit())
                || self.in_flight.load(Ordering::Acquire) < self.config.concurrency)
    }

    /// Starts every due send there is room for; returns how long until the next one is due.
    pub(super) async fn dispatch_due(self: &Arc<Self>) -> Result<Option<Duration>, StoreError> {
        let (active, stopped): (Vec<_>, Vec<_>) = self
            .registry
            .all()
            .into_iter()
            .partition(|t| t.record().status == WebhookStatus::Active);
        for target in stopped {
            // Paused or disabled while deliveries were held ahead for it: the other instances
            // may take them (and a redelivery by hand is not refused as in flight).
            let held = target.drop_ahead();
            if !held.is_empty() {
                self.store.unclaim(&held).await?;
            }
        }
        let mut round = Round {
            now: unix_ms(OffsetDateTime::now_utc()),
            next: None,
            fair: (self.config.concurrency / active.len().max(1)).max(1),
        };
        for target in active {
            let (ordered, keyed, mode) = {
                let w = target.record();
                (w.spec.ordered, w.spec.ordering_key.is_some(), w.spec.mode)
            };
            if keyed || ordered || !matches!(mode, Mode::Realtime) {
                // Held ahead while the webhook was concurrent: its spec changed since.
                let ahead = target.drop_ahead();
                if !ahead.is_empty() {
                    self.store.unclaim(&ahead).await?;
                }
            }
            if let Some(failed) = target.store_failing() {
                // An outcome of this webhook could not be written: nothing more goes until
                // what is out has ended, then one request a second (without claiming ahead or
                // freeing its slot early) until an outcome is written again, so that a store
                // that claims but cannot record does not have deliveries sent unrecorded.
                if target.requests() + target.recording() > 0 {
                    continue;
                }
                let now = tokio::time::Instant::now();
                let at = failed + ON_STORE_ERROR;
                if at > now {
                    round.wake_at(wake_ms(&round, now, at));
                    continue;
                }
            }
            let dispatched = match mode {
                Mode::Realtime if keyed => self.dispatch_keyed(&target, &mut round).await,
                Mode::Realtime if !ordered => self.dispatch_concurrent(&target, &mut round).await,
                Mode::Realtime => self.dispatch_ordered(&target, &mut round).await,
                Mode::Batch { interval, max, .. } => {
                    self.dispatch_batch(&target, interval, max, &mut round)
                        .await
                }
            };
            if let Err(e) = dispatched {
                // The store fails: what is held ahead is not sent while nothing can be
                // recorded (it is forgotten, its leases run out or are claimed again).
                target.drop_ahead();
                return Err(e);
            }
        }
        Ok(round
            .next
            .map(|due| Duration::from_millis(due.saturating_sub(round.now))))
    }

    /// Any due delivery may go, up to the webhook's limit.
    async fn dispatch_concurrent(
        self: &Arc<Self>,
        target: &Arc<Target>,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        if waiting(target, round) {
            if circuit_shut(target) {
                // Nothing goes until the cool-down ends (or the probe is back): the other
                // instances may take what is held here (they see the same failures, or not).
                let held = target.drop_ahead();
                if !held.is_empty() {
                    self.store.unclaim(&held).await?;
                }
            }
            return Ok(());
        }
        // Sends faster than their outcomes are written wait for the writing (a finished
        // recording wakes the loop): requests in flight and outcomes waiting to be written
        // are at most RECORDING_PER_SLOT × the limit together.
        let limit = target.limit();
        let busy = target.recording().saturating_add(target.requests());
        let cap = limit.saturating_mul(RECORDING_PER_SLOT);
        if busy >= cap {
            return Ok(());
        }
        let probing = target.store_failing().is_some();
        let mut room = limit.saturating_sub(target.requests()).min(cap - busy);
        if probing {
            room = room.min(1);
        }
        let mut gated = false;
        // The store gave as many as there was room for: more may be due, and the sends and
        // recordings now under way wake the loop to take them.
        let mut filled = false;
        if room > 0 && self.may_start(target, round.fair) {
            let due = self.claim_due(target, round, room).await?;
            filled = due.len() >= room;
            let mut due = due.into_iter();
            for (delivery, until) in due.by_ref() {
                let admitted = if self.may_start(target, round.fair) {
                    let a = admit(target, round);
                    gated = a.is_none();
                    a
                } else {
                    None
                };
                let Some(probe) = admitted else {
                    // Not started after all. Held back by the rate limit or the global limit:
                    // kept here for the next round (no lease churns). By an open circuit or a
                    // probe out: a shared store's other instances may take them, and what is
                    // held ahead. A store of one's own holds nothing ahead (`until` is `None`).
                    let shut = circuit_shut(target);
                    let mut left = Vec::new();
                    let mut keep = Vec::new();
                    for (d, until) in std::iter::once((delivery, until)).chain(due.by_ref()) {
                        match until {
                            Some(until) if !shut => keep.push((d, until)),
                            _ => left.push(d.id),
                        }
                    }
                    target.put_back(keep);
                    if shut {
                        left.extend(target.drop_ahead());
                    }
                    if !left.is_empty() {
                        self.store.unclaim(&left).await?;
                    }
                    break;
                };
                self.start(target, vec![delivery], probe, !probing);
            }
        }
        // With room left and nothing more due now, the next due time matters; without room,
        // or with the room filled (the recordings' limit binds), a finishing send or
        // recording wakes the loop (this saves a queue scan per round under load: on
        // PostgreSQL it was more statements than the claims). A gate that closed noted when
        // it opens again: what is due waits for that.
        if !gated && !filled && self.may_start(target, round.fair) {
            if let Some(ms) = self
                .store
                .next_queued(target.id, &target.in_flight())
                .await?
            {
                round.wake_at(ms);
            }
        }
        Ok(())
    }

    /// Up to `room` due deliveries of a concurrent webhook, leased to this instance, each with
    /// the time until which it may be held here if it is not started now (`None`: it may not
    /// be held, give its lease back). A store of its own is read for just these. A shared
    /// store is asked for more at once, up to [`AHEAD_PER_SLOT`] times the webhook's
    /// `concurrency` (at most [`AHEAD_MAX`]), in one statement: the rest are held here and
    /// handed to the next free slots for [`hold`] (at most half the lease, and short enough
    /// that one taken at the end still has the webhook's `timeout` and [`AHEAD_MARGIN`] left
    /// of its lease), so that most sends need no round trip to claim. Those not sent by then
    /// are forgotten here and claimed afresh (by this instance or, once the lease ends, by
    /// another); an instance that dies leaves them to the others after the lease, like any
    /// delivery it leased. A lease too short for that holds nothing ahead.
    async fn claim_due(
        &self,
        target: &Target,
        round: &Round,
        room: usize,
    ) -> Result<Vec<(Delivery, Option<tokio::time::Instant>)>, StoreError> {
        // Nothing is held ahead while outcomes of the webhook cannot be written.
        let hold = self
            .store
            .lease()
            .map(|lease| hold(lease, target.record().spec.timeout))
            .filter(|hold| !hold.is_zero() && target.store_failing().is_none());
        let Some(hold) = hold else {
            let due = self
                .store
                .queued(target.id, round.now, room, &target.in_flight())
                .await?;
            return Ok(due.into_iter().map(|d| (d, None)).collect());
        };
        let now = tokio::time::Instant::now();
        let mut due: Vec<_> = target
            .take_ahead(room, now)
            .into_iter()
            .map(|(d, until)| (d, Some(until)))
            .collect();
        if due.len() < room {
            // Nothing is left ahead: lease the next ones, not those in hand (this instance's
            // leases are its own to take again).
            let mut skip = target.in_flight();
            skip.extend(due.iter().map(|(d, _)| d.id));
            let want = ahead(target.limit()).max(room) - due.len();
            let mut claimed = self.store.queued(target.id, round.now, want, &skip).await?;
            let rest = claimed.split_off((room - due.len()).min(claimed.len()));
            let until = now + hold;
            due.extend(claimed.into_iter().map(|d| (d, Some(until))));
            target.keep_ahead(rest, until);
        }
        Ok(due)
    }

    /// Only the head of the queue may go, and only when it is due.
    async fn dispatch_ordered(
        self: &Arc<Self>,
        target: &Arc<Target>,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        // `recording`: only after a change from concurrent (its outcomes are written first).
        if target.requests() > 0 || target.recording() > 0 || waiting(target, round) {
            return Ok(());
        }
        let head = self.store.claim_head(target.id, u64::MAX, 1).await?.pop();
        if let Some(head) = head {
            if head.due_ms > round.now {
                round.wake_at(head.due_ms);
            } else if self.may_start(target, round.fair) {
                if let Some(probe) = admit(target, round) {
                    self.start(target, vec![head], probe, false);
                } else {
                    // Gated here: a shared store's other instances may send it meanwhile.
                    self.store.unclaim(&[head.id]).await?;
                }
            }
        }
        Ok(())
    }

    /// The head of each key's queue may go when it is due, one in flight per key, up to the
    /// webhook's limit: a key that fails (or waits for its retry) holds up only itself.
    async fn dispatch_keyed(
        self: &Arc<Self>,
        target: &Arc<Target>,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        let mut room = target.limit().saturating_sub(target.requests());
        if target.store_failing().is_some() {
            room = room.min(1);
        }
        if room == 0
            || target.recording() > 0
            || !self.may_start(target, round.fair)
            || waiting(target, round)
        {
            return Ok(());
        }
        let heads = self
            .store
            .claim_key_heads(target.id, round.now, room, &target.in_flight())
            .await?;
        if let Some(ms) = heads.next_due_ms {
            round.wake_at(ms);
        }
        let mut ready = heads.ready.into_iter();
        for delivery in ready.by_ref() {
            let admitted = if self.may_start(target, round.fair) {
                admit(target, round)
            } else {
                None
            };
            let Some(probe) = admitted else {
                let mut left = vec![delivery.id];
                left.extend(ready.by_ref().map(|d| d.id));
                self.store.unclaim(&left).await?;
                break;
            };
            self.start(target, vec![delivery], probe, false);
        }
        Ok(())
    }

    /// One batch at a time, once its oldest delivery has waited `interval` or `max` are
    /// gathered.
    async fn dispatch_batch(
        self: &Arc<Self>,
        target: &Arc<Target>,
        interval: Duration,
        max: usize,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        if target.requests() > 0 || target.recording() > 0 || waiting(target, round) {
            return Ok(());
        }
        // New deliveries are queued `interval` after their event: everything queued until
        // now + interval has been gathered so far.
        let horizon = round
            .now
            .saturating_add(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
        let gathered = self.store.claim_head(target.id, horizon, max).await?;
        let Some(head) = gathered.first() else {
            return Ok(());
        };
        if head.queue_ms <= round.now || gathered.len() >= max {
            // A retried delivery waits for its own due time.
            let now = round.now;
            let batch: Vec<Delivery> = gathered
                .into_iter()
                .filter(|d| d.attempts == 0 || d.due_ms <= now)
                .collect();
            if !batch.is_empty()
                && self.may_start(target, round.fair)
                && let Some(probe) = admit(target, round)
            {
                self.start(target, batch, probe, false);
            }
        } else {
            round.wake_at(head.queue_ms);
        }
        Ok(())
    }

    /// Starts the request for `deliveries`; `probe`: it was admitted as the circuit's probe;
    /// `early`: its slot is freed once the send has ended, before the outcome is written
    /// (only where order does not matter: an ordered or keyed webhook's next delivery must
    /// see this one's outcome first).
    fn start(
        self: &Arc<Self>,
        target: &Arc<Target>,
        deliveries: Vec<Delivery>,
        probe: bool,
        early: bool,
    ) {
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        target.set_in_flight(&ids, true);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight {
            engine: Arc::clone(self),
            target: Arc::clone(target),
            ids,
            holding: AtomicBool::new(true),
        };
        tokio::spawn(async move {
            let slot = early.then_some(&guard);
            if let Err(e) = guard.engine.deliver(&guard.target, deliveries, slot).await {
                // Nothing is sent from what is held ahead while outcomes cannot be written,
                // and little else until one is (see `dispatch_due`).
                guard.target.drop_ahead();
                if guard.target.store_failed(tokio::time::Instant::now()) {
                    tracing::error!(webhook = %guard.target.id, error = %e,
                        "cannot record a delivery attempt; the deliveries stay queued and will be sent again; until an attempt is recorded, one request a second goes to this webhook");
                } else {
                    tracing::debug!(webhook = %guard.target.id, error = %e,
                        "cannot record a delivery attempt yet");
                }
            }
            ended(&guard.target, probe);
            drop(guard);
        });
    }

    /// Sends one delivery, or one batch of them, and records the outcome; `slot`: freed once
    /// the send has ended.
    async fn deliver(
        &self,
        target: &Target,
        deliveries: Vec<Delivery>,
        slot: Option<&InFlight>,
    ) -> Result<(), StoreError> {
        let webhook = target.webhook();
        let mut events = Vec::with_capacity(deliveries.len());
        let mut kept = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match self.store.event_to_send(d.event_id).await? {
                Some(e) => {
                    events.push(e);
                    kept.push(d);
                }
                None => {
                    tracing::error!(delivery = %d.id, event = %d.event_id, "the event of a queued delivery is missing; it is marked failed");
                    let missing = Sent {
                        result: Err(SendError::EventMissing),
                        elapsed: Duration::ZERO,
                    };
                    self.record(target, &[d], None, missing, None).await?;
                }
            }
        }
        let Some(first) = kept.first() else {
            return Ok(());
        };
        let (body, topic) = body(&webhook, &events)?;
        let message_id = match webhook.spec.mode {
            Mode::Realtime => first.id,
            Mode::Batch { .. } => batch_id(&kept),
        };
        // A batch carries many events' traces: only a single event's goes on.
        let trace = match webhook.spec.mode {
            Mode::Realtime => events.first().and_then(|e| e.trace.as_ref()),
            Mode::Batch { .. } => None,
        };
        let out = Outgoing::new(
            &webhook,
            &message_id.to_string(),
            topic.as_deref(),
            &self.config.source,
            body,
        )
        .https_only_by_default(self.config.https_only)
        .with_trace(trace);
        // Deleted while this round held it (or read its events): its outcome would be dropped.
        if target.is_deleted() {
            tracing::debug!(webhook = %target.id, deliveries = kept.len(),
                "the webhook was deleted before the send; nothing is sent");
            return Ok(());
        }
        let sent = send::send(&self.client, &self.config.guard, &out).await;
        self.record(target, &kept, Some(&out), sent, slot).await
    }

    /// Records what one request came to (see [`outcome::decide`]): writes it, counts it, logs
    /// it, and announces a webhook it disabled. Nothing is written for a deleted webhook.
    /// `slot`: the request's, freed once the circuit breaker has noted the send.
    async fn record(
        &self,
        target: &Target,
        deliveries: &[Delivery],
        request: Option<&Outgoing>,
        sent: Sent,
        slot: Option<&InFlight>,
    ) -> Result<(), StoreError> {
        let shared = self.store.shared();
        // A shared store records many outcomes of one webhook at once (gathered into batches)
        // and checks itself that the webhook still exists: its recordings share the lock, which
        // a deletion or a change through the API takes alone. A store of one's own writes the
        // engine's copy of the record, one outcome at a time.
        let _writing = if shared {
            (Some(target.writes.read().await), None)
        } else {
            (None, Some(target.writes.write().await))
        };
        if target.is_deleted() {
            tracing::debug!(webhook = %target.id, "the webhook was deleted during the send; its outcome is dropped");
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let (decided, webhook, save, mut failures_before) = {
            let mut w = target.record();
            let failures_before = w.counters.consecutive_failures;
            let mut decided = outcome::decide(&w, deliveries, request, &sent, now);
            if shared && !sent.result.as_ref().is_ok_and(|a| a.status == 410) {
                // This copy's counters can be stale: the shared store's counters decide the
                // failure threshold (below), only a 410 disables from here.
                decided.disable = None;
            }
            w.counters = decided.counters.clone();
            if let Some(reason) = &decided.disable {
                super::manage::disable(&mut w, reason.clone());
            }
            // A shared store counts itself: its record is written only to disable it.
            let save = decided.disable.is_some()
                || (!shared
                    && lock(&target.saved_at).is_none_or(|at| at.elapsed() >= SAVE_COUNTERS_EVERY));
            (decided, w.clone(), save, failures_before)
        };
        if request.is_some() {
            self.note_circuit(
                target,
                &webhook,
                sent.result.as_ref().is_ok_and(|a| a.success()),
            );
        }
        // Only a success frees its slot before its outcome is written: a failure's record can
        // reach `failure_threshold` and disable the webhook, and must before the next request
        // goes (or the threshold is overshot by the requests sent meanwhile).
        if let Some(slot) = slot.filter(|_| sent.result.as_ref().is_ok_and(|a| a.success())) {
            slot.free_slot();
        }
        let recording = self
            .store
            .record_attempts(target.id, &decided.changes, save.then_some(&webhook))
            .await?;
        if target.store_recorded() {
            tracing::info!(webhook = %target.id, "delivery attempts are recorded again; sending resumes");
        }
        let mut webhook = webhook;
        let mut disabled = decided.disable.is_some();
        match recording {
            Recording::Gone => return Ok(()),
            Recording::Saved => {}
            Recording::Shared(counters) => {
                // Counted over every instance, in the order the store recorded the requests:
                // these counters, as they are after this request, are the truth, and the
                // failure threshold and its warnings read them (other instances' failures
                // count too). This request's own final failure is the last one counted.
                let change = CounterChange::of(&decided.changes);
                failures_before = counters
                    .consecutive_failures
                    .saturating_sub(u64::from(change.final_failure && !change.success));
                let reason = {
                    let mut w = target.record();
                    let reason = (!disabled && w.status != WebhookStatus::Disabled)
                        .then(|| outcome::threshold_reason(&w, &counters))
                        .flatten();
                    // Recordings finish in any order: the copy keeps the latest counts.
                    if attempts_counted(&counters) >= attempts_counted(&w.counters) {
                        w.counters = counters.clone();
                    }
                    webhook = w.clone();
                    webhook.counters = counters;
                    reason
                };
                if let Some(reason) = reason {
                    // On the stored record, so that a change another instance made meanwhile
                    // is not overwritten by this copy; the running copy follows the store.
                    // Announced only by the instance that disabled it.
                    match self.disable_record(target, &reason).await {
                        Ok(Some((w, by_this))) => {
                            webhook = w;
                            if !by_this {
                                // Another instance disabled it and announced it.
                                self.count(&webhook, &decided, request.is_some(), sent.elapsed);
                                return Ok(());
                            }
                        }
                        // Deleted meanwhile (by another instance): nothing left to disable.
                        Ok(None) => return Ok(()),
                        Err(super::manage::ManageError::Store(e)) => return Err(e),
                        Err(e) => {
                            tracing::warn!(webhook = %webhook.spec.name, error = %e, "cannot disable the webhook now; its failures will disable it at the next outcome");
                            return Ok(());
                        }
                    }
                    disabled = true;
                }
            }
        }
        if save {
            *lock(&target.saved_at) = Some(std::time::Instant::now());
        }
        self.count(&webhook, &decided, request.is_some(), sent.elapsed);
        // The failure that disables the webhook is announced as that, not as a warning.
        let warning = outcome::warning_level(
            webhook.spec.failure_threshold,
            failures_before,
            webhook.counters.consecutive_failures,
        );
        if let Some(percent) = warning.filter(|_| !disabled) {
            self.announce_failing(&webhook, percent);
        }
        if disabled {
            self.announce_disabled(&webhook);
        }
        Ok(())
    }

    /// Tells the circuit breaker how a request ended; logs and shows a change.
    fn note_circuit(&self, target: &Target, webhook: &Webhook, success: bool) {
        let (change, state) = {
            let mut gates = target.gates();
            let change = gates.record(
                success,
                tokio::time::Instant::now(),
                webhook.spec.circuit_failures,
                webhook.spec.circuit_cooldown,
            );
            (change, gates.circuit().0)
        };
        let name = &webhook.spec.name;
        match change {
            Some(Change::Opened) => {
                tracing::warn!(webhook = %name, failures = webhook.spec.circuit_failures,
                    cooldown = %humantime::format_duration(webhook.spec.circuit_cooldown),
                    "circuit open: requests to the webhook failed in a row; nothing is sent until the cool-down ends, then one probe");
            }
            Some(Change::Closed) => {
                tracing::info!(webhook = %name, "circuit closed: the probe succeeded; sending resumes");
            }
            None => return,
        }
        self.metrics.circuit(name, state);
    }

    /// Emits `hooktap.webhook.failing`: the webhook's consecutive failures reached `percent`
    /// of its `failure_threshold`, an early warning before it is disabled.
    fn announce_failing(&self, w: &Webhook, percent: u8) {
        let failures = w.counters.consecutive_failures;
        let threshold = w.spec.failure_threshold;
        tracing::warn!(webhook = %w.spec.name, id = %w.id, failures, threshold, percent,
            "webhook failing: it is disabled when its consecutive failures reach failure_threshold");
        let Ok(topic) = Topic::parse(WEBHOOK_FAILING_TOPIC) else {
            return;
        };
        let payload = serde_json::json!({
            "id": w.id,
            "name": w.spec.name,
            "consecutive_failures": failures,
            "failure_threshold": threshold,
            "percent": percent,
            "last_failure": w.counters.last_failure_at
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        });
        if let Err(e) = self.intake.enqueue(Event::new(&topic, "hooktap", payload)) {
            tracing::error!(error = %e, "cannot store the webhook.failing event");
        }
    }

    /// Metrics and logs of one recorded outcome.
    fn count(&self, w: &Webhook, decided: &outcome::Outcome, sent: bool, elapsed: Duration) {
        let name = &w.spec.name;
        for (step, change) in decided.steps.iter().zip(&decided.changes) {
            let d = &change.after;
            let summary = d.last_summary.as_deref().unwrap_or_default();
            match step {
                Step::Delivered { lag } => {
                    self.metrics.delivery(name, "delivered");
                    self.metrics.lag(lag.as_secs_f64());
                }
                Step::Retry { delay } => {
                    self.metrics.delivery(name, "retry");
                    tracing::warn!(delivery = %d.id, webhook = %name, attempt = d.attempts, %summary,
                        retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                        "delivery attempt failed");
                }
                Step::Failed => {
                    self.metrics.delivery(name, "failed");
                    tracing::error!(delivery = %d.id, webhook = %name, attempts = d.attempts, %summary,
                        "delivery failed finally; it can be redelivered by hand");
                }
            }
        }
        if sent {
            self.metrics.attempt_duration(name, elapsed.as_secs_f64());
        }
    }

    /// Writes every webhook's record with its latest counters (at shutdown; a shared store
    /// counts as it goes).
    pub async fn save_counters(&self) {
        if self.store.shared() {
            return;
        }
        for target in self.registry.all() {
            let _writing = target.writes.write().await;
            if target.is_deleted() {
                continue;
            }
            let webhook = target.webhook();
            if let Err(e) = self.store.save_webhook(&webhook).await {
                tracing::warn!(webhook = %webhook.spec.name, error = %e, "cannot save the webhook's counters");
            }
        }
    }

    /// Emits `hooktap.webhook.disabled` so that ops, subscribed through any webhook, are told.
    pub(super) fn announce_disabled(&self, w: &Webhook) {
        let reason = w.disabled_reason.clone().unwrap_or_default();
        tracing::error!(webhook = %w.spec.name, id = %w.id, %reason, "webhook disabled: no deliveries are sent or queued for it");
        debug_assert_eq!(w.status, WebhookStatus::Disabled);
        let Ok(topic) = Topic::parse(WEBHOOK_DISABLED_TOPIC) else {
            return;
        };
        let payload = serde_json::json!({"id": w.id, "name": w.spec.name, "reason": reason});
        if let Err(e) = self.intake.enqueue(Event::new(&topic, "hooktap", payload)) {
            tracing::error!(error = %e, "cannot store the webhook.disabled event");
        }
    }
}

/// How many deliveries of a concurrent webhook with `limit` requests in flight a shared store
/// leases at once.
fn ahead(limit: usize) -> usize {
    limit.saturating_mul(AHEAD_PER_SLOT).min(AHEAD_MAX)
}

/// How long deliveries leased ahead for a webhook with `timeout` may be held when the lease is
/// `lease`: half of it (at most [`AHEAD_HOLD_MAX`]), but no longer than leaves the `timeout`
/// and [`AHEAD_MARGIN`] of the lease to a delivery taken at the end (zero: hold none).
fn hold(lease: Duration, timeout: Duration) -> Duration {
    (lease / 2)
        .min(AHEAD_HOLD_MAX)
        .min(lease.saturating_sub(timeout).saturating_sub(AHEAD_MARGIN))
}

/// Resolves when `changes` is signalled; never without it (a store of one's own).
async fn changed(changes: Option<&tokio::sync::Notify>) {
    match changes {
        Some(changes) => changes.notified().await,
        None => std::future::pending().await,
    }
}

/// Whether `target`'s circuit holds every request back (open, or half-open with its probe
/// out), as opposed to its rate limit.
fn circuit_shut(target: &Target) -> bool {
    target.gates().circuit().0 != CircuitState::Closed
}

/// How many attempts `counters` have counted: they only grow (until a reset).
fn attempts_counted(counters: &Counters) -> u64 {
    counters.delivered + counters.failed + counters.retries
}

/// Whether `target`'s gates hold every request back now (its circuit is open, its probe is
/// out, or its rate limit's next slot is still to come); if so, notes when to look again, so
/// that the queue is not read (nor, in a shared store, leased) in vain.
fn waiting(target: &Target, round: &mut Round) -> bool {
    let rate = target.record().spec.rate_limit;
    let now = tokio::time::Instant::now();
    let blocked = target.gates().blocked(now, rate);
    match blocked {
        None => false,
        Some(Admit::Wait(at)) => {
            round.wake_at(wake_ms(round, now, at));
            true
        }
        // The probe's end wakes the loop.
        Some(_) => true,
    }
}

/// The wall-clock time in `round` at which tokio's `at` comes, at least a millisecond ahead
/// (so that the loop does not spin on a wait rounded down to nothing).
fn wake_ms(round: &Round, now: tokio::time::Instant, at: tokio::time::Instant) -> u64 {
    let wait = u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX);
    round.now.saturating_add(wait.max(1))
}

/// Asks `target`'s gates (circuit breaker, rate limit) whether a request may start now:
/// `Some(probe)` when it may (`probe`: as the half-open circuit's probe); when not, notes when
/// to look again.
fn admit(target: &Target, round: &mut Round) -> Option<bool> {
    let rate = target.record().spec.rate_limit;
    let now = tokio::time::Instant::now();
    match target.gates().admit(now, rate) {
        Admit::Go => Some(false),
        Admit::Probe => Some(true),
        Admit::Wait(at) => {
            round.wake_at(wake_ms(round, now, at));
            None
        }
        // The probe's end wakes the loop.
        Admit::Busy => None,
    }
}

/// A request to `target` ended. A probe whose outcome was recorded has moved the circuit on;
/// one that never went (its event was missing, the store failed) must not hold the circuit
/// half-open. Any other request (one that went before the circuit opened) leaves the probe be.
fn ended(target: &Target, probe: bool) {
    if probe {
        target.gates().release_probe();
    }
}

/// What `webhook` receives of `event`: its payload, or the webhook's transform of it.
fn shaped(webhook: &Webhook, event: &Event) -> Value {
    let Some(raw) = &webhook.spec.transform else {
        return event.payload.clone();
    };
    match Transform::cached(raw) {
        Ok(t) => {
            let (v, errors) = t.apply(event);
            for e in errors {
                tracing::warn!(webhook = %webhook.spec.name, event = %event.id, error = %e,
                    "a transform field failed; it is sent as null");
            }
            v
        }
        // Checked when the webhook was set; a record from elsewhere may still hold a bad one.
        Err(e) => {
            tracing::warn!(webhook = %webhook.spec.name, error = %e,
                "the webhook's transform is invalid; the payload is sent as it is");
            event.payload.clone()
        }
    }
}

/// The request body for `events` and the topic header (absent for a batch of mixed topics).
fn body(webhook: &Webhook, events: &[Event]) -> Result<(Vec<u8>, Option<String>), StoreError> {
    let first_topic = events.first().map(|e| e.topic.clone());
    match webhook.spec.mode {
        Mode::Realtime => {
            let payload = events.first().map_or(Value::Null, |e| shaped(webhook, e));
            Ok((serde_json::to_vec(&payload)?, first_topic))
        }
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
                    items.push(shaped(webhook, e));
                }
            }
            let single = events
                .iter()
                .all(|e| Some(&e.topic) == first_topic.as_ref());
            Ok((
                serde_json::to_vec(&by_topic)?,
                first_topic.filter(|_| single),
            ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Origin, RateLimit, WebhookSpec};

    fn round(now: u64) -> Round {
        Round {
            now,
            next: None,
            fair: 1,
        }
    }

    /// A webhook that must wait for its rate limit or its open circuit is not started (so it
    /// holds no slot), and the loop is told when to look again: when the gate opens.
    #[tokio::test(start_paused = true)]
    async fn a_gated_webhook_is_not_started_and_wakes_the_loop_when_its_gate_opens() {
        let mut spec = WebhookSpec::example("paced");
        spec.rate_limit = Some(RateLimit::parse("5/s").expect("valid"));
        spec.circuit_failures = 2;
        spec.circuit_cooldown = Duration::from_secs(30);
        let target = Target::new(Webhook::new(spec, Origin::Api)).expect("target");
        let now_ms = 1_000_000;

        let mut r = round(now_ms);
        assert_eq!(
            admit(&target, &mut r),
            Some(false),
            "the first request goes at once"
        );
        assert_eq!(
            admit(&target, &mut r),
            None,
            "the second waits for its slot"
        );
        assert_eq!(r.next, Some(now_ms + 200), "woken when the slot comes");
        let mut r = round(now_ms);
        assert!(waiting(&target, &mut r), "the queue need not be read");
        assert_eq!(r.next, Some(now_ms + 200));
        assert_eq!(target.requests(), 0, "waiting takes no slot");

        tokio::time::advance(Duration::from_millis(200)).await;
        let mut r = round(now_ms + 200);
        assert_eq!(admit(&target, &mut r), Some(false));

        // Two failures open the circuit: nothing goes until the cool-down ends.
        let w = target.webhook();
        for _ in 0..2 {
            target.gates().record(
                false,
                tokio::time::Instant::now(),
                w.spec.circuit_failures,
                w.spec.circuit_cooldown,
            );
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut r = round(now_ms + 1_200);
        assert_eq!(admit(&target, &mut r), None);
        assert_eq!(r.next, Some(now_ms + 1_200 + 29_000), "woken for the probe");
        tokio::time::advance(Duration::from_secs(29)).await;
        let mut r = round(now_ms + 30_200);
        assert_eq!(admit(&target, &mut r), Some(true), "the probe");
        assert_eq!(admit(&target, &mut r), None, "one probe at a time");
        assert_eq!(r.next, None, "the probe's end wakes the loop");
    }

    /// A webhook deleted while a round holds its deliveries gets nothing more: the send
    /// checks first (the round had claimed them before the deletion).
    #[tokio::test]
    async fn a_webhook_deleted_during_a_round_is_not_sent_to() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(crate::store::sled::open_for_tests(dir.path()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let delivery = crate::delivery::DeliveryConfig {
            source: "https://shop.test/".to_owned(),
            timeout: Duration::from_secs(5),
            concurrency: 4,
            https_only: false,
            guard: crate::ssrf::Guard::new(&["127.0.0.0/8".to_owned()]).expect("guard"),
            secret_rotation_grace: Duration::ZERO,
            nice: 0,
        };
        let engine = Engine::new(store, Vec::new(), delivery, Default::default()).expect("engine");
        let mut spec = WebhookSpec::example("deleted");
        spec.url = format!("http://{addr}/in").parse().expect("url");
        engine
            .sync_webhooks(&[spec], Duration::ZERO)
            .await
            .expect("sync");
        let id = engine.webhooks()[0].id;
        let topic = Topic::parse("order.created").expect("topic");
        let queued: Vec<Delivery> = (0..2)
            .map(|i| {
                let e = Event::new(&topic, "r", serde_json::json!({ "n": i }));
                let d = Delivery::new(&e, id, 0);
                engine
                    .store()
                    .append(&e, std::slice::from_ref(&d))
                    .expect("append");
                d
            })
            .collect();
        let target = engine.registry.get(id).expect("target");
        engine
            .deliver(&target, vec![queued[0].clone()], None)
            .await
            .expect("deliver");
        assert_eq!(requests.load(Ordering::SeqCst), 1, "the receiver answers");
        // What a deletion does to the running copy while a round holds the second delivery.
        target.mark_deleted();
        engine
            .deliver(&target, vec![queued[1].clone()], None)
            .await
            .expect("deliver");
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "nothing sent to a deleted webhook"
        );
    }

    /// Only the probe's own end releases it: a request that went before the circuit opened
    /// and ends while the probe is out leaves the circuit with one probe.
    #[tokio::test(start_paused = true)]
    async fn only_the_probe_releases_the_probe() {
        let mut spec = WebhookSpec::example("breaker");
        spec.circuit_failures = 1;
        spec.circuit_cooldown = Duration::from_secs(30);
        let target = Target::new(Webhook::new(spec, Origin::Api)).expect("target");
        let now_ms = 1_000_000;
        let mut r = round(now_ms);
        let early = admit(&target, &mut r).expect("closed: goes");
        assert!(!early, "not a probe");
        let failing = admit(&target, &mut r).expect("closed: goes");
        let w = target.webhook();
        target.gates().record(
            false,
            tokio::time::Instant::now(),
            w.spec.circuit_failures,
            w.spec.circuit_cooldown,
        );
        ended(&target, failing);
        tokio::time::advance(Duration::from_secs(30)).await;
        let mut r = round(now_ms + 30_000);
        let probe = admit(&target, &mut r).expect("the probe goes");
        assert!(probe);
        // The early request ends (its outcome not recorded): the probe is still out.
        ended(&target, early);
        assert_eq!(admit(&target, &mut r), None, "still one probe at a time");
        // The probe ends without moving the circuit on: another may go.
        ended(&target, probe);
        assert_eq!(admit(&target, &mut r), Some(true), "the next probe");
    }

    /// Held deliveries are kept at most half the lease, and never so long that one taken at
    /// the end of its hold has less than the webhook's timeout and the margin left.
    #[test]
    fn the_hold_leaves_the_timeout_and_a_margin_of_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(hold(s(60), s(10)), s(30), "the default: half the lease");
        assert_eq!(hold(s(60), s(40)), s(18), "60 - 40 - 2");
        assert_eq!(hold(s(4), s(3)), Duration::ZERO, "too short: nothing held");
        assert_eq!(hold(s(5), s(1)), s(2));
        assert_eq!(hold(s(7200), s(10)), AHEAD_HOLD_MAX);
    }

    /// The scheduler on a shared store (PostgreSQL), against a throwaway cluster.
    mod shared {
        use std::collections::HashSet;
        use std::net::SocketAddr;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::sync::watch;
        use uuid::Uuid;

        use super::super::{AHEAD_PER_SLOT, Engine, RECORDING_PER_SLOT, Round, ahead};
        use crate::delivery::DeliveryConfig;
        use crate::event::{Delivery, DeliveryState, Event, Topic};
        use crate::ssrf::Guard;
        use crate::store::postgres::cluster::Cluster;
        use crate::store::{Backend, FlushMode, PgConfig, PgStore, Store, StoreConfig};
        use crate::webhook::{RateLimit, WebhookSpec, WebhookStatus};

        /// The delivery id (`X-Hooktap-Webhook-Delivery-Id`) of every request a loopback receiver got, in arrival order.
        type Got = Arc<Mutex<Vec<String>>>;

        /// A receiver on a free loopback port that answers 200 and notes each request's id.
        async fn receiver() -> (SocketAddr, Got) {
            answering("200 OK").await
        }

        /// A receiver on a free loopback port that answers `status` (as in `200 OK`) and notes
        /// each request's id.
        async fn answering(status: &'static str) -> (SocketAddr, Got) {
            answering_after(status, Duration::ZERO).await
        }

        /// [`answering`], but each answer goes `delay` after the request arrived (its id is
        /// noted on arrival).
        async fn answering_after(status: &'static str, delay: Duration) -> (SocketAddr, Got) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let got: Got = Arc::default();
            let noted = Arc::clone(&got);
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let noted = Arc::clone(&noted);
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head).to_lowercase();
                        if let Some(id) = text
                            .lines()
                            .find_map(|l| l.strip_prefix("x-hooktap-webhook-delivery-id:"))
                            .map(|v| v.trim().to_owned())
                        {
                            noted.lock().expect("lock").push(id);
                        }
                        tokio::time::sleep(delay).await;
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            });
            (addr, got)
        }

        /// An engine on the shared store at `url` (leases of `lease`), journal under `dir`.
        async fn instance(url: &str, dir: &std::path::Path, lease: Duration) -> Arc<Engine> {
            instance_with_store(url, dir, lease).await.0
        }

        /// [`instance`], and its store.
        async fn instance_with_store(
            url: &str,
            dir: &std::path::Path,
            lease: Duration,
        ) -> (Arc<Engine>, Arc<PgStore>) {
            let pg = PgConfig {
                url: url.to_owned(),
                lease,
                pool_size: 4,
                ca_file: None,
            };
            let config = StoreConfig {
                path: dir.join("journal"),
                flush: FlushMode::Interval(Duration::from_millis(100)),
                retention: Duration::from_secs(3600),
                min_free_space: 0,
                backend: Backend::Postgres(pg.clone()),
            };
            let store = PgStore::open_now(&config, &pg).await.expect("open");
            store.mark_ready();
            let delivery = DeliveryConfig {
                source: "https://shop.test/".to_owned(),
                timeout: Duration::from_secs(5),
                concurrency: 16,
                https_only: false,
                guard: Guard::new(&["127.0.0.0/8".to_owned()]).expect("guard"),
                secret_rotation_grace: Duration::ZERO,
                nice: 0,
            };
            let store = Arc::new(store);
            let shared: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
            let engine = Engine::new(shared, Vec::new(), delivery, Default::default());
            (Arc::new(engine.expect("engine")), store)
        }

        /// The file webhook `name` to `receiver` on `engine` (one id on every instance).
        /// Two instances on one throwaway cluster, each with its own journal directory and
        /// `lease`, and a receiver that answers 200. A test moves the engines and the receiver
        /// out and keeps the rest (the cluster, the directories) alive until it ends, after the
        /// engines.
        struct Pair {
            a: Arc<Engine>,
            b: Arc<Engine>,
            addr: SocketAddr,
            got: Got,
            url: String,
            _dirs: [tempfile::TempDir; 2],
            _cluster: Cluster,
        }

        async fn pair(lease: Duration) -> Pair {
            let cluster = Cluster::start();
            let url = cluster.database();
            let (addr, got) = receiver().await;
            let dirs = [
                tempfile::tempdir().expect("dir"),
                tempfile::tempdir().expect("dir"),
            ];
            Pair {
                a: instance(&url, dirs[0].path(), lease).await,
                b: instance(&url, dirs[1].path(), lease).await,
                addr,
                got,
                url,
                _dirs: dirs,
                _cluster: cluster,
            }
        }

        async fn webhook(engine: &Engine, spec: &WebhookSpec) -> Uuid {
            engine
                .sync_webhooks(std::slice::from_ref(spec), Duration::ZERO)
                .await
                .expect("sync");
            engine
                .webhooks()
                .iter()
                .find(|w| w.spec.name == spec.name)
                .expect("synced")
                .id
        }

        fn spec(name: &str, receiver: SocketAddr) -> WebhookSpec {
            let mut spec = WebhookSpec::example(name);
            spec.url = format!("http://{receiver}/in").parse().expect("url");
            spec
        }

        /// Queues `n` events with a delivery each to `webhook` and moves them to PostgreSQL.
        async fn queue(engine: &Engine, webhook: Uuid, n: usize) -> Vec<Delivery> {
            let topic = Topic::parse("order.created").expect("topic");
            let mut queued = Vec::new();
            for i in 0..n {
                let e = Event::new(&topic, "r", serde_json::json!({"n": i}));
                let d = Delivery::new(&e, webhook, 0);
                engine
                    .store()
                    .append(&e, std::slice::from_ref(&d))
                    .expect("append");
                queued.push(d);
            }
            engine.store().flush().await.expect("ship");
            queued
        }

        /// Waits (at most 30 s) until `got` holds `n` distinct ids.
        async fn wait_for(got: &Got, n: usize) -> HashSet<String> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let ids: HashSet<String> = got.lock().expect("lock").iter().cloned().collect();
                if ids.len() >= n || tokio::time::Instant::now() > deadline {
                    return ids;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Runs `engine`'s loop until the returned sender is dropped or sent `true`; the handle
        /// ends with the loop.
        fn run(engine: &Arc<Engine>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
            let (stop, stopped) = watch::channel(false);
            let handle = tokio::spawn(Arc::clone(engine).run(Duration::from_secs(3600), stopped));
            (stop, handle)
        }

        /// A round as the loop starts it now (`fair`: 1).
        fn round_now() -> Round {
            Round {
                now: crate::event::unix_ms(time::OffsetDateTime::now_utc()),
                next: None,
                fair: 1,
            }
        }

        /// How many of `webhook`'s deliveries `engine` (another instance than the one under
        /// test: an instance may take its own leases again) could claim now; given straight
        /// back.
        async fn claimable(engine: &Engine, webhook: Uuid) -> usize {
            let none = HashSet::new();
            let got = engine
                .store()
                .queued(webhook, u64::MAX, 1000, &none)
                .await
                .expect("claim");
            engine
                .store()
                .unclaim(&got.iter().map(|d| d.id).collect::<Vec<_>>())
                .await
                .expect("unclaim");
            got.len()
        }

        /// A concurrent webhook's deliveries are leased several at a time, more than its free
        /// slots: the rest are held by the instance. One that dies holding them (no sends, no
        /// release) leaves them to another once the lease runs out: every one is sent, with
        /// its own id.
        #[tokio::test(flavor = "multi_thread")]
        async fn deliveries_leased_ahead_by_an_instance_that_dies_are_sent_by_another() {
            // Long enough to hold ahead (the webhook's timeout is 1 s) and for the claims below
            // to be made well within it on a loaded machine.
            let two = pair(Duration::from_secs(5)).await;
            let (a, b, addr, got) = (two.a, two.b, two.addr, two.got);
            let mut spec = spec("ahead", addr);
            spec.concurrency = 2;
            let id = webhook(&a, &spec).await;
            assert_eq!(webhook(&b, &spec).await, id, "one id on both");
            let queued = queue(&a, id, 20).await;

            // `a` has room for one request: it leases AHEAD_PER_SLOT × 2 in one go.
            let target = a.registry.get(id).expect("target");
            let now = crate::event::unix_ms(time::OffsetDateTime::now_utc());
            let round = Round {
                now,
                next: None,
                fair: 1,
            };
            let due = a.claim_due(&target, &round, 1).await.expect("claim");
            let k = ahead(2);
            assert_eq!(k, 2 * AHEAD_PER_SLOT);
            assert_eq!(due.len(), 1, "only what there is room for is handed out");
            assert_eq!(target.ahead_ids().len(), k - 1, "the rest is held ahead");
            let none = HashSet::new();
            let rest = b
                .store()
                .queued(id, u64::MAX, 100, &none)
                .await
                .expect("b claims");
            assert_eq!(rest.len(), 20 - k, "b gets only what `a` did not lease");
            b.store()
                .unclaim(&rest.iter().map(|d| d.id).collect::<Vec<_>>())
                .await
                .expect("unclaim");

            // `a` dies with its leases: its store goes, nothing is released.
            drop(target);
            drop(a);
            let (_stop, _loop) = run(&b);
            let ids = wait_for(&got, queued.len()).await;
            let want: HashSet<String> = queued.iter().map(|d| d.id.to_string()).collect();
            assert_eq!(
                ids, want,
                "every delivery reaches the receiver under its own id"
            );
            // And each is recorded as delivered.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            for d in &queued {
                loop {
                    let stored = b.store().delivery(d.id).await.expect("read").expect("kept");
                    if stored.state == DeliveryState::Delivered {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} not recorded as delivered: {:?}",
                        d.id,
                        stored.state
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }

        /// Holds the webhook's row locked so that no outcome of it can be recorded (the
        /// recording statement locks that row) until the returned client is dropped.
        async fn block_recording(url: &str, webhook: Uuid) -> tokio_postgres::Client {
            let client = crate::store::postgres::cluster::connect(url).await;
            client.batch_execute("BEGIN").await.expect("begin");
            client
                .execute(
                    "SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE",
                    &[&webhook],
                )
                .await
                .expect("lock the webhook's row");
            client
        }

        /// A concurrent webhook's request slot is free once the send has ended, before its
        /// outcome is written: with `concurrency = 1` and recording held up, the second
        /// delivery goes anyway. An ordered webhook's next delivery waits for its
        /// predecessor's record: with recording held up, only the first goes. Once recording
        /// goes on, both of each are recorded as delivered.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_concurrent_slot_is_free_before_the_record_and_an_ordered_one_is_not() {
            let cluster = Cluster::start();
            let url = cluster.database();
            let dir = tempfile::tempdir().expect("dir");
            let engine = instance(&url, dir.path(), Duration::from_secs(30)).await;
            for ordered in [false, true] {
                let (addr, got) = receiver().await;
                let mut spec = spec(if ordered { "ordered" } else { "concurrent" }, addr);
                spec.concurrency = 1;
                spec.ordered = ordered;
                let id = webhook(&engine, &spec).await;
                let queued = queue(&engine, id, 2).await;
                let lock = block_recording(&url, id).await;
                let (stop, running) = run(&engine);
                if ordered {
                    assert_eq!(wait_for(&got, 1).await.len(), 1, "the head goes");
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    assert_eq!(
                        got.lock().expect("lock").len(),
                        1,
                        "the next waits for the head's record"
                    );
                } else {
                    assert_eq!(
                        wait_for(&got, 2).await.len(),
                        2,
                        "the slot was free before the first outcome was written"
                    );
                }
                for d in &queued {
                    let stored = engine.store().delivery(d.id).await.expect("read");
                    assert_eq!(
                        stored.map(|d| d.state),
                        Some(DeliveryState::Pending),
                        "nothing is recorded while the row is locked"
                    );
                }
                drop(lock);
                assert_eq!(wait_for(&got, 2).await.len(), 2);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                for d in &queued {
                    loop {
                        let stored = engine.store().delivery(d.id).await.expect("read");
                        if stored.as_ref().map(|d| d.state) == Some(DeliveryState::Delivered) {
                            break;
                        }
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "not recorded: {stored:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                // The next pass starts its loop only once this one has stopped (two loops on one
                // engine could both claim the ordered head).
                let _ = stop.send(true);
                running.await.expect("the loop ends");
                let order: Vec<String> = got.lock().expect("lock").clone();
                let want: Vec<String> = queued.iter().map(|d| d.id.to_string()).collect();
                if ordered {
                    assert_eq!(order, want, "in queue order");
                }
            }
        }

        /// A lease too short for the webhook's `timeout` to fit in what is left of it after
        /// half of it holds nothing ahead: a held delivery taken late would still be sending
        /// when another instance may take it over. Only what there is room for is leased.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_lease_too_short_for_the_timeout_holds_nothing_ahead() {
            let two = pair(Duration::from_secs(4)).await;
            let (a, b, addr, _got) = (two.a, two.b, two.addr, two.got);
            let mut spec = spec("slow", addr);
            spec.concurrency = 2;
            spec.timeout = Duration::from_secs(3);
            let id = webhook(&a, &spec).await;
            queue(&a, id, 20).await;
            let target = a.registry.get(id).expect("target");
            let due = a.claim_due(&target, &round_now(), 1).await.expect("claim");
            assert_eq!(due.len(), 1);
            assert!(due[0].1.is_none(), "not to be held if not started");
            assert!(target.ahead_ids().is_empty(), "nothing held ahead");
            assert_eq!(
                claimable(&b, id).await,
                19,
                "only the one in hand is leased"
            );
        }

        /// Deliveries held ahead for a webhook that is paused are given back at the next round:
        /// another instance may take them, and they are not "in flight" any more.
        #[tokio::test(flavor = "multi_thread")]
        async fn held_deliveries_of_a_paused_webhook_are_given_back() {
            let two = pair(Duration::from_secs(30)).await;
            let (a, b, addr, _got) = (two.a, two.b, two.addr, two.got);
            let mut spec = spec("paused", addr);
            spec.concurrency = 2;
            let id = webhook(&a, &spec).await;
            queue(&a, id, 20).await;
            let target = a.registry.get(id).expect("target");
            let due = a.claim_due(&target, &round_now(), 1).await.expect("claim");
            let held = target.ahead_ids();
            assert_eq!(held.len(), ahead(2) - 1);
            assert!(target.is_in_flight(&held[0]));
            a.store()
                .unclaim(&due.iter().map(|(d, _)| d.id).collect::<Vec<_>>())
                .await
                .expect("unclaim");
            assert_eq!(claimable(&b, id).await, 20 - (ahead(2) - 1));

            a.set_status(id, WebhookStatus::Paused)
                .await
                .expect("pause")
                .expect("known");
            a.dispatch_due().await.expect("round");
            assert!(
                target.ahead_ids().is_empty(),
                "nothing held for a paused webhook"
            );
            assert!(
                !target.is_in_flight(&held[0]),
                "a redelivery is not refused"
            );
            assert_eq!(claimable(&b, id).await, 20, "every delivery can be claimed");
        }

        /// A rate-limited webhook does not give back (and claim again) what it holds ahead each
        /// time its rate limit holds a request back: the first goes, the rest stay held.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_rate_limit_keeps_what_is_held_ahead() {
            let two = pair(Duration::from_secs(30)).await;
            let (a, b, addr, got) = (two.a, two.b, two.addr, two.got);
            let mut spec = spec("paced", addr);
            spec.concurrency = 2;
            spec.rate_limit = Some(RateLimit::parse("1/m").expect("rate"));
            let id = webhook(&a, &spec).await;
            queue(&a, id, 20).await;
            let target = a.registry.get(id).expect("target");
            a.dispatch_due().await.expect("first round");
            assert_eq!(wait_for(&got, 1).await.len(), 1, "the first goes");
            assert_eq!(
                target.ahead_ids().len(),
                ahead(2) - 1,
                "the rest of the claim is kept"
            );
            a.dispatch_due().await.expect("second round");
            assert_eq!(
                target.ahead_ids().len(),
                ahead(2) - 1,
                "and not claimed again"
            );
            // The one sent is recorded (its lease cleared) in a moment: the others stay leased.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while target.recording() + target.requests() > 0 {
                assert!(tokio::time::Instant::now() < deadline, "not recorded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(claimable(&b, id).await, 20 - ahead(2));
        }

        /// A failed send keeps its request slot until its outcome is written: with recording
        /// held up, a webhook with `concurrency = 4` whose receiver fails sends 4 requests and
        /// no more (so `failure_threshold` is not overshot by sends made while failures wait
        /// to be counted). Once recording goes on, the threshold disables it.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_failed_send_keeps_its_slot_until_its_outcome_is_written() {
            let cluster = Cluster::start();
            let url = cluster.database();
            let (addr, got) = answering("500 Internal Server Error").await;
            let dir = tempfile::tempdir().expect("dir");
            let engine = instance(&url, dir.path(), Duration::from_secs(30)).await;
            let mut spec = spec("failing", addr);
            spec.concurrency = 4;
            spec.failure_threshold = 3;
            spec.circuit_failures = 0;
            let id = webhook(&engine, &spec).await;
            queue(&engine, id, 20).await;
            let lock = block_recording(&url, id).await;
            let (stop, running) = run(&engine);
            assert_eq!(wait_for(&got, 4).await.len(), 4, "one request per slot");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                got.lock().expect("lock").len(),
                4,
                "no slot is free while the failures are not recorded"
            );
            drop(lock);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while engine.registry.get(id).expect("target").record().status
                != WebhookStatus::Disabled
            {
                assert!(tokio::time::Instant::now() < deadline, "not disabled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop.send(true);
            running.await.expect("the loop ends");
        }

        /// Waits (at most 30 s) until every one of `queued` is recorded as delivered.
        async fn all_delivered(engine: &Engine, queued: &[Delivery]) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            for d in queued {
                loop {
                    let stored = engine.store().delivery(d.id).await.expect("read");
                    if stored.as_ref().map(|d| d.state) == Some(DeliveryState::Delivered) {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} not recorded as delivered: {stored:?}",
                        d.id
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }

        /// How many requests `got` holds, and whether some id came twice.
        fn received(got: &Got) -> (usize, usize) {
            let all = got.lock().expect("lock").clone();
            let distinct: HashSet<&String> = all.iter().collect();
            (all.len(), distinct.len())
        }

        /// A graceful stop gives this instance's leases up only after the outcomes already
        /// waiting in the recorder are written: with recording held up, `a` sends what its
        /// recording allowance lets it and stops; `b`, running meanwhile, cannot claim (and
        /// send again) any of those, even once `a` asked to give its leases up. Once recording
        /// goes on, every delivery arrives exactly once.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_stop_gives_leases_up_only_after_the_outcomes_waiting_to_be_written() {
            let two = pair(Duration::from_secs(30)).await;
            let (a, b, addr, got, url) = (two.a, two.b, two.addr, two.got, two.url.clone());
            let mut spec = spec("stopping", addr);
            spec.concurrency = 2;
            let id = webhook(&a, &spec).await;
            assert_eq!(webhook(&b, &spec).await, id, "one id on both");
            let queued = queue(&a, id, 20).await;
            let lock = block_recording(&url, id).await;
            let (stop, running) = run(&a);
            // Requests in flight and outcomes waiting to be written: at most 4 × 2.
            let cap = RECORDING_PER_SLOT * 2;
            assert_eq!(wait_for(&got, cap).await.len(), cap);
            let target = a.registry.get(id).expect("target");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while target.recording() < cap {
                assert!(tokio::time::Instant::now() < deadline, "not all sent");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop.send(true);
            running.await.expect("the loop ends");
            // As `hooktap run` stops: the leases are given up.
            let releasing = {
                let a = Arc::clone(&a);
                tokio::spawn(async move { a.store().release().await })
            };
            let (_stop_b, _b) = run(&b);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (all, distinct) = received(&got);
            assert_eq!(all, distinct, "b sent nothing that a had sent");
            drop(lock);
            releasing
                .await
                .expect("the release ends")
                .expect("released");
            assert_eq!(wait_for(&got, queued.len()).await.len(), queued.len());
            all_delivered(&b, &queued).await;
            assert_eq!(
                received(&got),
                (queued.len(), queued.len()),
                "no delivery was sent twice"
            );
        }

        /// The events of deliveries held ahead are read with their leases only, however many
        /// webhooks hold deliveries (the cache of those events once dropped everything past
        /// 1,024, that is, past 16 webhooks holding 64 each).
        #[tokio::test(flavor = "multi_thread")]
        async fn events_held_ahead_for_many_webhooks_are_read_only_with_their_leases() {
            let cluster = Cluster::start();
            let url = cluster.database();
            let dir = tempfile::tempdir().expect("dir");
            let (engine, store) =
                instance_with_store(&url, dir.path(), Duration::from_secs(30)).await;
            let (addr, got) = receiver().await;
            let specs: Vec<WebhookSpec> = (0..18)
                .map(|i| {
                    let mut spec = spec(&format!("busy-{i}"), addr);
                    spec.concurrency = 16;
                    spec
                })
                .collect();
            engine
                .sync_webhooks(&specs, Duration::ZERO)
                .await
                .expect("sync");
            let per = ahead(16);
            let mut queued = Vec::new();
            for w in engine.webhooks() {
                queued.extend(queue(&engine, w.id, per).await);
            }
            assert_eq!(queued.len(), 18 * per);
            // Each webhook holds all of its deliveries ahead: 1,152 in all.
            for target in engine.registry.all() {
                let due = engine
                    .claim_due(&target, &round_now(), 1)
                    .await
                    .expect("claim");
                target.put_back(
                    due.into_iter()
                        .map(|(d, until)| (d, until.expect("held")))
                        .collect(),
                );
                assert_eq!(target.ahead_ids().len(), per);
            }
            let before = store.events_read();
            let (_stop, _loop) = run(&engine);
            assert_eq!(wait_for(&got, queued.len()).await.len(), queued.len());
            assert_eq!(
                store.events_read() - before,
                0,
                "no event was read a second time"
            );
        }

        /// PostgreSQL stopped hard while an instance sends and holds deliveries ahead: the
        /// receiver gets at most `concurrency` + 1 requests that cannot be recorded (each slot
        /// takes one more of those held before the first failed recording is known; then
        /// nothing is sent from them), and once PostgreSQL is back every delivery arrives
        /// and is recorded.
        #[tokio::test(flavor = "multi_thread")]
        async fn postgresql_stopped_hard_mid_run_gets_few_unrecorded_requests() {
            let cluster = Arc::new(Cluster::start());
            let url = cluster.database();
            let dir = tempfile::tempdir().expect("dir");
            let engine = instance(&url, dir.path(), Duration::from_secs(30)).await;
            let (addr, got) = answering_after("200 OK", Duration::from_millis(300)).await;
            let mut spec = spec("outage", addr);
            spec.concurrency = 4;
            let id = webhook(&engine, &spec).await;
            let queued = queue(&engine, id, 60).await;
            let (_stop, _loop) = run(&engine);
            wait_for(&got, 4).await;
            let target = engine.registry.get(id).expect("target");
            assert!(!target.ahead_ids().is_empty(), "deliveries are held ahead");
            let down = Arc::clone(&cluster);
            tokio::task::spawn_blocking(move || down.kill())
                .await
                .expect("stopped");
            let (at_stop, _) = received(&got);
            tokio::time::sleep(Duration::from_secs(4)).await;
            let (while_down, _) = received(&got);
            assert!(
                while_down - at_stop <= spec.concurrency + 1,
                "{} requests while PostgreSQL was down",
                while_down - at_stop
            );
            let up = Arc::clone(&cluster);
            tokio::task::spawn_blocking(move || up.start_server())
                .await
                .expect("started");
            assert_eq!(wait_for(&got, queued.len()).await.len(), queued.len());
            all_delivered(&engine, &queued).await;
        }

        /// A store that claims but cannot record (a trigger refuses every attempt): after the
        /// requests sent before the first failed recording was known, the webhook gets one
        /// request a second, not `concurrency` per round; once recording works again every
        /// delivery arrives and is recorded.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_store_that_cannot_record_gets_one_request_a_second() {
            let cluster = Cluster::start();
            let url = cluster.database();
            let dir = tempfile::tempdir().expect("dir");
            let engine = instance(&url, dir.path(), Duration::from_secs(30)).await;
            let (addr, got) = answering_after("200 OK", Duration::from_millis(300)).await;
            let mut spec = spec("unrecorded", addr);
            spec.concurrency = 4;
            let id = webhook(&engine, &spec).await;
            let queued = queue(&engine, id, 40).await;
            let client = crate::store::postgres::cluster::connect(&url).await;
            client
                .batch_execute(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
                     CREATE TRIGGER refuse BEFORE INSERT ON attempts
                         FOR EACH ROW EXECUTE FUNCTION refuse();",
                )
                .await
                .expect("refuse attempts");
            let (_stop, _loop) = run(&engine);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (sent, _) = received(&got);
            // Two rounds of `concurrency` (the second taken from those held ahead before the
            // first recording failed), then one a second.
            assert!(
                sent <= 2 * spec.concurrency + 3,
                "{sent} requests in 3 s while nothing could be recorded"
            );
            let target = engine.registry.get(id).expect("target");
            assert!(target.ahead_ids().is_empty(), "nothing held ahead");
            client
                .batch_execute("DROP TRIGGER refuse ON attempts")
                .await
                .expect("record again");
            assert_eq!(wait_for(&got, queued.len()).await.len(), queued.len());
            all_delivered(&engine, &queued).await;
        }

        /// A webhook deleted through another instance gets nothing more from what this one
        /// holds ahead for it: on the change's notification, what is held for a webhook whose
        /// stored record changed is given back before the next round (without it, held
        /// deliveries went on being sent until the store keeper's next look; the keeper does
        /// not run here).
        #[tokio::test(flavor = "multi_thread")]
        async fn a_webhook_deleted_elsewhere_gets_nothing_more_of_what_is_held() {
            let two = pair(Duration::from_secs(30)).await;
            let (a, b) = (two.a, two.b);
            let (addr, got) = answering_after("200 OK", Duration::from_millis(500)).await;
            let mut spec = spec("deleted", addr);
            spec.concurrency = 2;
            let id = webhook(&a, &spec).await;
            assert_eq!(webhook(&b, &spec).await, id);
            // As the store keeper's look does: `a` runs the record as `b` last wrote it.
            a.refresh_webhooks().await.expect("refresh");
            queue(&a, id, 20).await;
            let (_stop, _loop) = run(&a);
            assert_eq!(wait_for(&got, 2).await.len(), 2);
            let target = a.registry.get(id).expect("target");
            assert!(!target.ahead_ids().is_empty(), "deliveries are held ahead");
            b.delete_webhook(id).await.expect("delete").expect("known");
            let (at_delete, _) = received(&got);
            // The two in flight end (500 ms): nothing follows them.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                received(&got).0,
                at_delete,
                "nothing sent after the deletion"
            );
            assert!(target.ahead_ids().is_empty(), "nothing held for it");
        }
    }
}
