//! Operations on webhooks and deliveries: the Rust API that the admin HTTP API serves.
//!
//! Every operation goes through the engine, so that the running loop and the store never
//! disagree: every change takes effect for the next send, and a deletion drops the queue.
//! Changes to a webhook's record are made under its `writes` lock, the same one the
//! scheduler holds while it records an outcome, so neither overwrites the other. They are
//! made on the record as stored, not on the running copy (which a change through another
//! instance can be 200 ms ahead of), and written only while the stored record is still the
//! version read; when another writer came in between, the change is made again on its
//! result (see [`Engine::change_record`]).

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Engine;
use super::registry::Target;
use super::send::{self, Outgoing};
use crate::event::{Attempt, Delivery, unix_ms};
use crate::store::{DeliveryPage, DeliveryQuery, Planner, Replaced, Requeued, StoreError};
use crate::webhook::{
    Counters, Defaults, FieldError, Origin, TopicsError, Webhook, WebhookInput, WebhookSpec,
    WebhookStatus, WebhookView, compile_topics,
};

/// Why a management operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no webhook with id {0}")]
    NotFound(Uuid),
    #[error("invalid webhook")]
    Invalid(Vec<FieldError>),
    #[error("a webhook named `{0}` exists already")]
    NameTaken(String),
    #[error("the webhook was not activated: its URL did not answer the ping with 2xx ({0})")]
    PingFailed(String),
    #[error(
        "webhook {0} was changed by other requests {CHANGE_TRIES} times while this change was being made; nothing was changed, try again"
    )]
    Conflict(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A test request and what came back, for operators checking a receiver.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Ping {
    /// A 2xx answer came.
    pub success: bool,
    /// Absent when no answer came.
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// `HTTP 200 OK`, or the transport error.
    pub summary: String,
    /// Credentials masked.
    pub request_url: String,
    #[schema(value_type = Vec<crate::event::HeaderPair>)]
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    #[schema(value_type = Vec<crate::event::HeaderPair>)]
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
}

/// How many times a change is made again on a record that another writer changed meanwhile
/// before it is refused ([`ManageError::Conflict`]).
pub(super) const CHANGE_TRIES: usize = 5;

/// Marks a webhook disabled, with the reason.
pub(super) fn disable(webhook: &mut Webhook, reason: String) {
    webhook.status = WebhookStatus::Disabled;
    webhook.disabled_reason = Some(reason);
    webhook.updated_at = OffsetDateTime::now_utc();
}

fn topics_error(e: TopicsError) -> ManageError {
    ManageError::Invalid(vec![FieldError {
        field: "topics",
        message: e.to_string(),
    }])
}

impl Engine {
    /// Every webhook, as running (use [`Webhook::view`] to show one).
    pub fn webhooks(&self) -> Vec<Webhook> {
        self.registry.all().iter().map(|t| t.webhook()).collect()
    }

    pub fn webhook(&self, id: Uuid) -> Option<Webhook> {
        self.registry.get(id).map(|t| t.webhook())
    }

    /// A webhook as it may be shown, with where its circuit breaker stands on this instance.
    pub fn view(&self, webhook: &Webhook) -> WebhookView {
        let mut view = webhook.view();
        if let Some(t) = self.registry.get(webhook.id) {
            let (state, until) = t.gates().circuit();
            view.circuit = state;
            view.circuit_open_until = until.map(|u| {
                OffsetDateTime::now_utc() + u.saturating_duration_since(tokio::time::Instant::now())
            });
        }
        view
    }

    /// Sets a webhook's status. Resuming wakes the loop, so queued deliveries go out at once;
    /// disabling emits `hooktap.webhook.disabled`.
    pub async fn set_status(
        &self,
        id: Uuid,
        status: WebhookStatus,
    ) -> Result<Option<Webhook>, ManageError> {
        let Some(target) = self.registry.get(id) else {
            return Ok(None);
        };
        let _writing = target.writes.write().await;
        let mut was = status;
        let changed = self
            .change_record(&target, |w| {
                was = w.status;
                if status == WebhookStatus::Disabled {
                    if was != WebhookStatus::Disabled {
                        disable(w, "disabled by an operator".to_owned());
                    }
                } else {
                    w.status = status;
                    w.disabled_reason = None;
                    w.updated_at = OffsetDateTime::now_utc();
                }
                Ok(())
            })
            .await?;
        let Some(updated) = changed else {
            return Ok(None);
        };
        if status == WebhookStatus::Active && was != WebhookStatus::Active {
            // Resumed by an operator (after a ping, through the API): start afresh.
            target.gates().reset_circuit();
        }
        let became_disabled = was != WebhookStatus::Disabled && status == WebhookStatus::Disabled;
        tracing::info!(webhook = %updated.spec.name, status = ?updated.status, "webhook status changed");
        if became_disabled {
            self.announce_disabled(&updated);
        }
        self.wake();
        Ok(Some(updated))
    }

    /// Zeroes a webhook's counters.
    pub async fn reset_counters(&self, id: Uuid) -> Result<Option<Webhook>, ManageError> {
        let Some(target) = self.registry.get(id) else {
            return Ok(None);
        };
        let _writing = target.writes.write().await;
        if !self.store.shared() {
            // The counters are in the record: a change of the record like any other.
            target.record().counters = Counters::default();
            return self
                .change_record(&target, |w| {
                    w.counters = Counters::default();
                    Ok(())
                })
                .await;
        }
        // A shared store zeroes its counter columns; the record is not written.
        let w = {
            let mut w = target.record();
            w.counters = Counters::default();
            w.clone()
        };
        self.store.reset_counters(&w).await?;
        Ok(Some(w))
    }

    /// Changes webhook `target`'s record with `change` and runs the result; the caller holds
    /// `target.writes`. The change is made on the record as stored (this instance's counters
    /// kept, for a store that is not shared) and written only if the stored record is still
    /// the version read; if another writer (another instance, the config file, the engine
    /// disabling the webhook) came in between, it is made again on the newer record, so a
    /// change never overwrites another unseen. After [`CHANGE_TRIES`] such races it is
    /// refused as a [`ManageError::Conflict`]. `None`: the webhook is gone.
    pub(super) async fn change_record(
        &self,
        target: &Target,
        mut change: impl FnMut(&mut Webhook) -> Result<(), ManageError>,
    ) -> Result<Option<Webhook>, ManageError> {
        for _ in 0..CHANGE_TRIES {
            let Some(mut w) = self.store.webhook(target.id).await? else {
                return Ok(None);
            };
            if !self.store.shared() {
                // This instance counts, and saves its counters now and then: its running
                // counters are ahead of the stored ones.
                w.counters = target.record().counters.clone();
            }
            change(&mut w)?;
            match self.store.replace_webhook(&w).await? {
                Replaced::Done => {
                    w.version += 1;
                    self.run_record(target, w.clone());
                    return Ok(Some(w));
                }
                Replaced::Gone => return Ok(None),
                Replaced::Stale => {
                    tracing::debug!(webhook = %target.id, "the webhook's record changed meanwhile; changing the newer record");
                }
            }
        }
        Err(ManageError::Conflict(target.id))
    }

    /// Disables the webhook on its stored record, as [`Dispatcher::change_record`] changes it,
    /// unless the stored record is disabled already (another instance's outcome did it): then
    /// nothing is written and the running copy takes the stored record. The running copy is
    /// changed only after the store. Returns the record and whether this call disabled it;
    /// `None` when the webhook was deleted.
    pub(super) async fn disable_record(
        &self,
        target: &Target,
        reason: &str,
    ) -> Result<Option<(Webhook, bool)>, ManageError> {
        for _ in 0..CHANGE_TRIES {
            let Some(mut w) = self.store.webhook(target.id).await? else {
                return Ok(None);
            };
            if !self.store.shared() {
                w.counters = target.record().counters.clone();
            }
            if w.status == WebhookStatus::Disabled {
                self.run_record(target, w.clone());
                return Ok(Some((w, false)));
            }
            disable(&mut w, reason.to_owned());
            match self.store.replace_webhook(&w).await? {
                Replaced::Done => {
                    w.version += 1;
                    self.run_record(target, w.clone());
                    return Ok(Some((w, true)));
                }
                Replaced::Gone => return Ok(None),
                Replaced::Stale => {
                    tracing::debug!(webhook = %target.id, "the webhook's record changed meanwhile; disabling the newer record");
                }
            }
        }
        Err(ManageError::Conflict(target.id))
    }

    /// Deletes a webhook and everything queued for it; returns how many pending deliveries were
    /// dropped unsent (also logged). A send in flight finishes, but its outcome is dropped. Its
    /// history is removed in the background ([`crate::store::Store::delete_webhook_in_background`]).
    pub async fn delete_webhook(&self, id: Uuid) -> Result<Option<usize>, StoreError> {
        let Some(target) = self.registry.get(id) else {
            return Ok(None);
        };
        let name = self.remove_target(&target).await;
        // The history goes after the answer: a long one takes seconds per 100k deliveries.
        let dropped = self.store.delete_webhook_in_background(id).await?;
        tracing::warn!(webhook = %name, %id, dropped, "webhook deleted with its pending deliveries");
        Ok(Some(dropped))
    }

    /// Takes a webhook out of the running set for good; returns its name.
    async fn remove_target(&self, target: &Target) -> String {
        let _writing = target.writes.write().await;
        target.mark_deleted();
        self.registry.remove(target.id);
        let name = target.record().spec.name.clone();
        self.metrics.forget_webhook(&name);
        name
    }

    /// Applies hooktap.toml's webhooks to the store and the running set (see
    /// [`super::sync`]); returns the removed ones with their dropped pending deliveries.
    pub async fn sync_webhooks(
        &self,
        specs: &[WebhookSpec],
        grace: std::time::Duration,
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let registry = Arc::clone(&self.registry);
        let specs = specs.to_vec();
        let shared = self.store.shared();
        let planner = Planner(Box::new(move |stored: &[Webhook]| {
            let mut plan = super::sync::plan(stored, &specs, grace);
            if !shared {
                // The running record's counters are fresher than the stored ones (a shared
                // store counts itself, and its counters are the ones to keep).
                for w in &mut plan.put {
                    if let Some(t) = registry.get(w.id) {
                        w.counters = t.record().counters.clone();
                    }
                }
            }
            plan
        }));
        let applied = self.store.apply_webhooks(&planner).await?;
        for webhook in applied.put {
            self.run_stored(webhook).await;
        }
        let mut removed = Vec::with_capacity(applied.removed.len());
        for (w, dropped) in applied.removed {
            if let Some(t) = self.registry.get(w.id) {
                self.remove_target(&t).await;
            }
            removed.push((w.spec.name.clone(), dropped));
        }
        // Webhooks stored but not running (created by another process meanwhile) join too.
        for w in self.store.webhooks().await? {
            if self.registry.get(w.id).is_none() {
                self.run_stored(w).await;
            }
        }
        self.wake();
        Ok(removed)
    }

    /// Runs a webhook as stored: replaces the running record (keeping its counters unless the
    /// store is shared) or starts running it.
    async fn run_stored(&self, mut webhook: Webhook) {
        match self.registry.get(webhook.id) {
            Some(t) => {
                let _writing = t.writes.write().await;
                if t.is_deleted() {
                    return;
                }
                if !self.store.shared() {
                    webhook.counters = t.record().counters.clone();
                }
                self.run_record(&t, webhook);
            }
            None => match Target::new(webhook) {
                Ok(t) => {
                    self.registry.add(Arc::new(t));
                    self.wake();
                }
                Err(e) => tracing::error!(error = %e, "cannot run a stored webhook"),
            },
        }
    }

    /// Makes `webhook` the running record of `t` (under `t.writes`): its topics, filter and
    /// ordering key take effect, and a webhook that became active is woken.
    fn run_record(&self, t: &Target, webhook: Webhook) {
        let resumed = {
            let running = t.record();
            if running.spec.topics != webhook.spec.topics {
                if let Ok(topics) = compile_topics(&webhook.spec.topics) {
                    t.set_topics(topics);
                }
            }
            if running.spec.filter != webhook.spec.filter
                || running.spec.ordering_key != webhook.spec.ordering_key
            {
                t.set_selection(&webhook.spec);
            }
            running.status != WebhookStatus::Active && webhook.status == WebhookStatus::Active
        };
        *t.record() = webhook;
        if resumed {
            self.wake();
        }
    }

    /// Makes the running set match a shared store, where other instances change webhooks:
    /// new ones start, deleted ones stop, changed ones (spec, status, counters) are replaced.
    pub async fn refresh_webhooks(&self) -> Result<(), StoreError> {
        let stored = self.store.webhooks().await?;
        let ids: std::collections::HashSet<Uuid> = stored.iter().map(|w| w.id).collect();
        for t in self.registry.all() {
            // Not in the list: deleted elsewhere, or created here after the list was read
            // (a second look tells them apart).
            if !ids.contains(&t.id) && self.store.webhook(t.id).await?.is_none() {
                let name = self.remove_target(&t).await;
                tracing::info!(webhook = %name, id = %t.id, "webhook deleted by another instance");
            }
        }
        for w in stored {
            self.run_stored(w).await;
        }
        Ok(())
    }

    fn defaults(&self) -> Defaults<'_> {
        Defaults {
            https_only: self.config.https_only,
            guard: &self.config.guard,
            timeout: self.config.timeout,
        }
    }

    /// Creates a webhook from API input, validated like the config file. One created active
    /// (the default) is pinged first, as activating one is: unless its URL answers 2xx,
    /// nothing is created. One created `paused` or `disabled` is not pinged.
    pub async fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, ManageError> {
        let spec = input
            .apply(None, &self.defaults())
            .map_err(ManageError::Invalid)?;
        if self.registry.name_taken(&spec.name, None) {
            return Err(ManageError::NameTaken(spec.name));
        }
        let webhook = Webhook::new(spec, Origin::Api);
        if webhook.status == WebhookStatus::Active {
            let ping = self.ping_webhook(&webhook).await;
            if !ping.success {
                return Err(ManageError::PingFailed(ping.summary));
            }
            // Another request may have taken the name while the ping was out.
            if self.registry.name_taken(&webhook.spec.name, None) {
                return Err(ManageError::NameTaken(webhook.spec.name));
            }
        }
        let target = Target::new(webhook.clone()).map_err(topics_error)?;
        self.store.put_webhook(&webhook).await?;
        self.registry.add(Arc::new(target));
        self.wake();
        tracing::info!(webhook = %webhook.spec.name, id = %webhook.id, "webhook created");
        Ok(webhook)
    }

    /// Changes the fields `input` sets; every change takes effect for the next send. A
    /// status in `input` goes through [`Engine::set_status`]; other fields never change the
    /// status. Activating a webhook that is not active pings its URL first and refuses unless
    /// it answers 2xx, so a dead URL is not switched on.
    pub async fn update_webhook(
        &self,
        id: Uuid,
        input: WebhookInput,
    ) -> Result<Webhook, ManageError> {
        let target = self.registry.get(id).ok_or(ManageError::NotFound(id))?;
        let current = target.webhook();
        let mut spec = input
            .clone()
            .apply(Some(&current.spec), &self.defaults())
            .map_err(ManageError::Invalid)?;
        if self.registry.name_taken(&spec.name, Some(id)) {
            return Err(ManageError::NameTaken(spec.name));
        }
        // The status asked for is compared with the stored record's, not with this instance's
        // running copy: that can be ~200 ms behind a change made through another instance (a
        // resume right after another instance's pause would otherwise look like no change).
        let stored = self
            .store
            .webhook(id)
            .await?
            .ok_or(ManageError::NotFound(id))?;
        let status = spec.status.take().filter(|s| *s != stored.status);
        if status == Some(WebhookStatus::Active) {
            let mut probe = current.clone();
            probe.spec = spec.clone();
            let ping = self.ping_webhook(&probe).await;
            if !ping.success {
                return Err(ManageError::PingFailed(ping.summary));
            }
        }
        compile_topics(&spec.topics).map_err(topics_error)?;
        {
            let _writing = target.writes.write().await;
            let changed = self
                .change_record(&target, |w| {
                    // The input is applied to the record as stored: the fields it leaves out
                    // keep what another instance may have changed meanwhile.
                    let spec = input
                        .clone()
                        .apply(Some(&w.spec), &self.defaults())
                        .map_err(ManageError::Invalid)?;
                    compile_topics(&spec.topics).map_err(topics_error)?;
                    w.update(spec, self.config.secret_rotation_grace);
                    Ok(())
                })
                .await?;
            if changed.is_none() {
                return Err(ManageError::NotFound(id));
            }
        }
        if let Some(status) = status {
            self.set_status(id, status).await?;
        }
        self.wake();
        self.webhook(id).ok_or(ManageError::NotFound(id))
    }

    /// A copy of a webhook under a new id, named "<name> (copy)", that starts disabled.
    pub async fn duplicate_webhook(&self, id: Uuid) -> Result<Webhook, ManageError> {
        let source = self.webhook(id).ok_or(ManageError::NotFound(id))?;
        let mut spec = source.spec.clone();
        let mut name = format!("{} (copy)", spec.name);
        let mut n = 2;
        while self.registry.name_taken(&name, None) {
            name = format!("{} (copy {n})", spec.name);
            n += 1;
        }
        spec.name = name;
        spec.status = Some(WebhookStatus::Disabled);
        let mut copy = Webhook::new(spec, Origin::Api);
        copy.disabled_reason = Some("a new copy starts disabled".to_owned());
        let target = Target::new(copy.clone()).map_err(topics_error)?;
        self.store.put_webhook(&copy).await?;
        self.registry.add(Arc::new(target));
        Ok(copy)
    }

    /// Sends a test request with an empty body, signed like a delivery, and reports everything.
    pub async fn ping(&self, id: Uuid) -> Result<Ping, ManageError> {
        let webhook = self.webhook(id).ok_or(ManageError::NotFound(id))?;
        Ok(self.ping_webhook(&webhook).await)
    }

    async fn ping_webhook(&self, webhook: &Webhook) -> Ping {
        let out = Outgoing::new(
            webhook,
            &Uuid::now_v7().to_string(),
            None,
            &self.config.source,
            Vec::new(),
        )
        .https_only_by_default(self.config.https_only);
        let sent = send::send(&self.client, &self.config.guard, &out).await;
        let (status, summary, headers, body) = match sent.result {
            Ok(a) => (Some(a.status), a.summary(), a.headers, a.body),
            Err(e) => (None, e.to_string(), Vec::new(), String::new()),
        };
        Ping {
            success: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            duration_ms: u64::try_from(sent.elapsed.as_millis()).unwrap_or(u64::MAX),
            summary,
            request_url: out.shown_url.clone(),
            request_headers: out.shown_headers(),
            request_body: String::new(),
            response_headers: headers,
            response_body: body,
        }
    }

    /// Brings the queue gauges (pending deliveries, oldest age) up to date, before a scrape.
    pub async fn refresh_queue_metrics(&self) -> Result<(), StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        for t in self.registry.all() {
            let name = t.record().spec.name.clone();
            let stats = self.store.queue_stats(t.id).await?;
            let age = stats
                .oldest_ms
                .map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0);
            self.metrics.queue(&name, stats.pending, age);
        }
        Ok(())
    }

    /// A webhook's deliveries, newest first, at most `limit`.
    pub async fn deliveries(
        &self,
        webhook: Uuid,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.store.deliveries_of(webhook, limit).await
    }

    /// One page of a webhook's deliveries, newest first, and how many match in all.
    pub async fn deliveries_page(
        &self,
        webhook: Uuid,
        query: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        self.store.deliveries_page(webhook, query).await
    }

    /// A delivery with every attempt made for it.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        match self.store.delivery(id).await? {
            Some(d) => Ok(Some((d, self.store.attempts(id).await?))),
            None => Ok(None),
        }
    }

    /// Sends a delivery again, now, with the same id (a delivered one too: receivers that
    /// lost it asked for it). [`Requeued::Gone`] for an unknown delivery (or one deleted
    /// meanwhile), [`Requeued::InFlight`] for one being sent by this or another instance.
    pub async fn redeliver(&self, id: Uuid) -> Result<Requeued, StoreError> {
        let Some(d) = self.store.delivery(id).await? else {
            return Ok(Requeued::Gone);
        };
        if self
            .registry
            .get(d.webhook_id)
            .is_some_and(|t| t.is_in_flight(&d.id))
        {
            return Ok(Requeued::InFlight);
        }
        let requeued = self
            .store
            .requeue(&d, unix_ms(OffsetDateTime::now_utc()))
            .await?;
        if matches!(requeued, Requeued::Done(_)) {
            self.wake();
        }
        Ok(requeued)
    }

    /// Re-queues every failed delivery of `webhook` created in `[since, until)`, as Svix's
    /// recover does after an outage; returns how many.
    pub async fn recover(
        &self,
        webhook: Uuid,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let mut n = 0;
        for d in self.store.failed_deliveries(webhook, since, until).await? {
            // One being sent by another instance right now is left to that send.
            if matches!(self.store.requeue(&d, now).await?, Requeued::Done(_)) {
                n += 1;
            }
        }
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::delivery::DeliveryConfig;
    use crate::ssrf::Guard;
    use crate::store::postgres::cluster::Cluster;
    use crate::store::{Backend, FlushMode, PgConfig, PgStore, SledStore, Store, StoreConfig};

    fn delivery_config() -> DeliveryConfig {
        DeliveryConfig {
            source: "https://shop.test/".to_owned(),
            timeout: Duration::from_secs(1),
            concurrency: 4,
            https_only: false,
            guard: Guard::default(),
            secret_rotation_grace: Duration::ZERO,
            nice: 0,
        }
    }

    /// An engine on the shared store at `url`, its journal under `dir`. Its loop is not run,
    /// so its running copies are refreshed by nothing: as stale as they can get.
    /// Two instances on the database at `url`, both running the file webhook `crm`: their
    /// directories (kept while they run), the instances, and the webhook's one id.
    async fn two_instances(url: &str) -> ([tempfile::TempDir; 2], Arc<Engine>, Arc<Engine>, Uuid) {
        let dirs = [
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        ];
        let a = instance(url, dirs[0].path()).await;
        let b = instance(url, dirs[1].path()).await;
        let spec = WebhookSpec::example("crm");
        a.sync_webhooks(std::slice::from_ref(&spec), Duration::ZERO)
            .await
            .expect("sync a");
        b.sync_webhooks(std::slice::from_ref(&spec), Duration::ZERO)
            .await
            .expect("sync b");
        let id = a.webhooks()[0].id;
        (dirs, a, b, id)
    }

    async fn instance(url: &str, dir: &std::path::Path) -> Arc<Engine> {
        let pg = PgConfig {
            url: url.to_owned(),
            lease: Duration::from_secs(30),
            pool_size: 2,
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
        let engine = Engine::new(
            Arc::new(store),
            Vec::new(),
            delivery_config(),
            Default::default(),
        );
        Arc::new(engine.expect("engine"))
    }

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(1), Duration::from_secs(7)]
    }

    fn input() -> WebhookInput {
        WebhookInput::default()
    }

    /// A status asked for through one instance is compared with the stored record, not with
    /// that instance's running copy: B's copy still says paused after A resumed the webhook,
    /// and B's pause must not be taken for "no change".
    #[tokio::test(flavor = "multi_thread")]
    async fn a_status_asked_for_through_a_stale_copy_is_still_set() {
        let cluster = Cluster::start();
        let url = cluster.database();
        let (_dirs, a, b, id) = two_instances(&url).await;
        b.set_status(id, WebhookStatus::Paused)
            .await
            .expect("pause on b")
            .expect("found");
        a.set_status(id, WebhookStatus::Active)
            .await
            .expect("resume on a")
            .expect("found");
        assert_eq!(
            b.webhook(id).expect("b's copy").status,
            WebhookStatus::Paused,
            "b's copy is stale"
        );
        b.update_webhook(
            id,
            WebhookInput {
                status: Some(WebhookStatus::Paused),
                ..input()
            },
        )
        .await
        .expect("pause on b again");
        let stored = a.store().webhook(id).await.expect("read").expect("there");
        assert_eq!(stored.status, WebhookStatus::Paused, "b's pause is stored");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_change_on_one_instance_survives_another_instances_stale_copy() {
        let cluster = Cluster::start();
        let url = cluster.database();
        let (_dirs, a, b, id) = two_instances(&url).await;
        assert_eq!(b.webhooks()[0].id, id, "one id on both instances");

        // A changes the retry schedule; B still runs the copy from before.
        a.update_webhook(
            id,
            WebhookInput {
                retry: Some("1s, 7s".to_owned()),
                ..input()
            },
        )
        .await
        .expect("update on a");
        let stale = b.webhook(id).expect("b's copy");
        assert_ne!(stale.spec.retry, schedule(), "b's copy is stale");

        // B pauses it and changes its timeout from that stale copy: A's change stays.
        b.set_status(id, WebhookStatus::Paused)
            .await
            .expect("pause on b")
            .expect("found");
        b.update_webhook(
            id,
            WebhookInput {
                timeout: Some("3s".to_owned()),
                ..input()
            },
        )
        .await
        .expect("update on b");
        let stored = a.store().webhook(id).await.expect("read").expect("there");
        assert_eq!(
            stored.spec.retry,
            schedule(),
            "a's change survives b's changes"
        );
        assert_eq!(stored.status, WebhookStatus::Paused, "b's pause is there");
        assert_eq!(
            stored.spec.timeout,
            Duration::from_secs(3),
            "b's change is there"
        );
        let running = b.webhook(id).expect("b's copy");
        assert_eq!(
            (running.spec.retry.clone(), running.status),
            (schedule(), WebhookStatus::Paused),
            "b runs the record as written"
        );

        // And back: A (its copy now stale) resumes; B's timeout stays.
        a.set_status(id, WebhookStatus::Active)
            .await
            .expect("resume on a")
            .expect("found");
        let stored = b.store().webhook(id).await.expect("read").expect("there");
        assert_eq!(stored.status, WebhookStatus::Active);
        assert_eq!(stored.spec.timeout, Duration::from_secs(3));
        assert_eq!(stored.spec.retry, schedule());
    }

    /// A's failures reach the threshold after B's did: B disabled the webhook, A writes
    /// nothing (no new version, B's reason stays) and says it did not disable it, so that
    /// only B announces `hooktap.webhook.disabled`.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_webhook_another_instance_disabled_is_not_disabled_again() {
        let cluster = Cluster::start();
        let url = cluster.database();
        let (_dirs, a, b, id) = two_instances(&url).await;
        let (ta, tb) = (
            a.registry.get(id).expect("a runs it"),
            b.registry.get(id).expect("b runs it"),
        );

        let (by_b, disabled_by_b) = b
            .disable_record(&tb, "b's failures")
            .await
            .expect("disable on b")
            .expect("there");
        assert!(disabled_by_b, "b disabled it");
        assert_eq!(
            a.webhook(id).expect("a's copy").status,
            WebhookStatus::Active
        );

        let (seen, disabled_by_a) = a
            .disable_record(&ta, "a's failures")
            .await
            .expect("disable on a")
            .expect("there");
        assert!(!disabled_by_a, "a did not disable it again");
        let stored = a.store().webhook(id).await.expect("read").expect("there");
        assert_eq!(stored.version, by_b.version, "a wrote nothing");
        assert_eq!(stored.disabled_reason.as_deref(), Some("b's failures"));
        assert_eq!(seen.version, stored.version);
        assert_eq!(
            a.webhook(id).expect("a's copy").status,
            WebhookStatus::Disabled,
            "a runs the stored record"
        );
    }

    #[tokio::test]
    async fn a_change_that_other_writers_keep_overtaking_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(crate::store::sled::open_for_tests(dir.path()));
        let engine = Engine::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Vec::new(),
            delivery_config(),
            Default::default(),
        )
        .expect("engine");
        engine
            .sync_webhooks(&[WebhookSpec::example("crm")], Duration::ZERO)
            .await
            .expect("sync");
        let id = engine.webhooks()[0].id;
        let target = engine.registry.get(id).expect("target");
        let _writing = target.writes.write().await;
        let mut tries = 0;
        let result = engine
            .change_record(&target, |w| {
                tries += 1;
                // Another writer gets in between every read and write.
                let mut other = w.clone();
                other.spec.failure_threshold = tries;
                SledStore::put_webhook(&store, &other).map_err(ManageError::Store)?;
                w.status = WebhookStatus::Paused;
                Ok(())
            })
            .await;
        let e = result.expect_err("refused");
        assert!(matches!(e, ManageError::Conflict(i) if i == id), "{e}");
        assert!(e.to_string().contains("try again"), "{e}");
        assert_eq!(tries, CHANGE_TRIES as u32);
        let stored = store.webhook(id).expect("read").expect("there");
        assert_eq!(
            stored.status,
            WebhookStatus::Active,
            "nothing of the change"
        );
        assert_eq!(
            stored.spec.failure_threshold, CHANGE_TRIES as u32,
            "the others' last write stays"
        );
    }
}
