//! Operations on webhooks and deliveries: the Rust API that the admin HTTP API serves.
//!
//! Every operation goes through the dispatcher, so that the running loop and the store never
//! disagree: a status change takes effect for the next send, and a deletion drops the queue.

use std::sync::{Arc, PoisonError};

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::send::{self, Outgoing};
use super::{Dispatcher, Target, disable, lock};
use crate::event::{Attempt, Delivery, DeliveryState, unix_ms};
use crate::store::StoreError;
use crate::webhook::{
    Counters, Defaults, FieldError, Origin, Webhook, WebhookInput, WebhookStatus,
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A test request and what came back, for operators checking a receiver.
#[derive(Debug, Clone, Serialize)]
pub struct Ping {
    pub success: bool,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub summary: String,
    pub request_url: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
}

impl Dispatcher {
    /// Every webhook, as stored (use [`Webhook::view`] to show one).
    pub fn webhooks(&self) -> Vec<Webhook> {
        self.targets().iter().map(|t| t.webhook()).collect()
    }

    pub fn webhook(&self, id: Uuid) -> Option<Webhook> {
        self.target(id).map(|t| t.webhook())
    }

    /// Sets a webhook's status. Resuming wakes the loop, so queued deliveries go out at once;
    /// disabling emits `hooktap.webhook.disabled`.
    pub fn set_status(
        &self,
        id: Uuid,
        status: WebhookStatus,
    ) -> Result<Option<Webhook>, StoreError> {
        let Some(target) = self.target(id) else {
            return Ok(None);
        };
        let (updated, became_disabled) = {
            let mut w = lock(&target.state);
            let was = w.status;
            if status == WebhookStatus::Disabled {
                if was != WebhookStatus::Disabled {
                    disable(&mut w, "disabled by an operator".to_owned());
                }
            } else {
                w.status = status;
                w.disabled_reason = None;
                w.updated_at = OffsetDateTime::now_utc();
            }
            self.store.put_webhook(&w)?;
            (
                w.clone(),
                was != WebhookStatus::Disabled && w.status == WebhookStatus::Disabled,
            )
        };
        tracing::info!(webhook = %updated.spec.name, status = ?updated.status, "webhook status changed");
        if became_disabled {
            self.announce_disabled(&updated);
        }
        self.wake.notify_one();
        Ok(Some(updated))
    }

    /// Zeroes a webhook's counters.
    pub fn reset_counters(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        let Some(target) = self.target(id) else {
            return Ok(None);
        };
        let mut w = lock(&target.state);
        w.counters = Counters::default();
        self.store.put_webhook(&w)?;
        Ok(Some(w.clone()))
    }

    /// Deletes a webhook and everything queued for it; returns how many pending deliveries were
    /// dropped unsent (also logged).
    pub fn delete_webhook(&self, id: Uuid) -> Result<Option<usize>, StoreError> {
        let Some(target) = self.target(id) else {
            return Ok(None);
        };
        let name = lock(&target.state).spec.name.clone();
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| t.id != id);
        let dropped = self.store.delete_webhook(id)?;
        self.metrics.forget_webhook(&name);
        tracing::warn!(webhook = %name, %id, dropped, "webhook deleted with its pending deliveries");
        Ok(Some(dropped))
    }

    /// Applies hooktap.toml's webhooks to the store and the running set (see
    /// [`Store::sync_webhooks`](crate::store::Store::sync_webhooks)); returns the removed ones.
    pub fn sync_webhooks(
        &self,
        specs: &[crate::webhook::WebhookSpec],
        grace: std::time::Duration,
    ) -> Result<Vec<(String, usize)>, StoreError> {
        let synced = self.store.sync_webhooks(specs, grace)?;
        let mut targets = self.targets.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(synced.webhooks.len());
        for stored in synced.webhooks {
            match targets.iter().find(|t| t.id == stored.id) {
                Some(t) => {
                    // The running record's counters are the freshest: keep them.
                    let mut w = lock(&t.state);
                    let counters = std::mem::take(&mut w.counters);
                    *w = stored;
                    w.counters = counters;
                    if let Ok(topics) = crate::webhook::compile_topics(&w.spec.topics) {
                        *t.topics.write().unwrap_or_else(PoisonError::into_inner) = topics;
                    }
                    drop(w);
                    next.push(Arc::clone(t));
                }
                None => match Target::new(stored) {
                    Ok(t) => next.push(Arc::new(t)),
                    Err(e) => tracing::error!(error = %e, "cannot run a stored webhook"),
                },
            }
        }
        for (name, _) in &synced.removed {
            self.metrics.forget_webhook(name);
        }
        *targets = next;
        drop(targets);
        self.wake.notify_one();
        Ok(synced.removed)
    }

    fn defaults(&self) -> Defaults<'_> {
        Defaults {
            https_only: self.config.https_only,
            guard: &self.config.guard,
            timeout: self.config.timeout,
        }
    }

    fn name_taken(&self, name: &str, except: Option<Uuid>) -> bool {
        self.targets()
            .iter()
            .any(|t| Some(t.id) != except && lock(&t.state).spec.name == name)
    }

    /// Creates a webhook from API input, validated like the config file.
    pub fn create_webhook(&self, input: WebhookInput) -> Result<Webhook, ManageError> {
        let spec = input
            .apply(None, &self.defaults())
            .map_err(ManageError::Invalid)?;
        if self.name_taken(&spec.name, None) {
            return Err(ManageError::NameTaken(spec.name));
        }
        let webhook = Webhook::new(spec, Origin::Api);
        self.store.put_webhook(&webhook)?;
        self.add_webhook(webhook.clone()).map_err(|message| {
            ManageError::Invalid(vec![FieldError {
                field: "topics",
                message,
            }])
        })?;
        tracing::info!(webhook = %webhook.spec.name, id = %webhook.id, "webhook created");
        Ok(webhook)
    }

    /// Changes the fields `input` sets. Activating a webhook that is not active pings its URL
    /// first and refuses unless it answers 2xx, so a dead URL is not switched on.
    pub async fn update_webhook(
        &self,
        id: Uuid,
        input: WebhookInput,
    ) -> Result<Webhook, ManageError> {
        let target = self.target(id).ok_or(ManageError::NotFound(id))?;
        let current = target.webhook();
        let mut spec = input
            .apply(Some(&current.spec), &self.defaults())
            .map_err(ManageError::Invalid)?;
        if self.name_taken(&spec.name, Some(id)) {
            return Err(ManageError::NameTaken(spec.name));
        }
        let activating =
            spec.status == Some(WebhookStatus::Active) && current.status != WebhookStatus::Active;
        if activating {
            let mut probe = current.clone();
            probe.spec = spec.clone();
            let ping = self.ping_webhook(&probe).await;
            if !ping.success {
                return Err(ManageError::PingFailed(ping.summary));
            }
        }
        let topics = crate::webhook::compile_topics(&spec.topics).map_err(|message| {
            ManageError::Invalid(vec![FieldError {
                field: "topics",
                message,
            }])
        })?;
        // A status change goes through set_status (reasons, the disabled event); the spec keeps
        // only what the operator declares.
        let status = spec.status.take();
        {
            let mut w = lock(&target.state);
            spec.status = w.spec.status;
            w.update(spec, self.config.secret_rotation_grace);
            self.store.put_webhook(&w)?;
        }
        *target
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner) = topics;
        if let Some(status) = status.filter(|s| *s != current.status) {
            self.set_status(id, status)?;
        }
        self.wake.notify_one();
        self.webhook(id).ok_or(ManageError::NotFound(id))
    }

    /// A copy of a webhook under a new id, named "<name> (copy)", that starts disabled.
    pub fn duplicate_webhook(&self, id: Uuid) -> Result<Webhook, ManageError> {
        let source = self.webhook(id).ok_or(ManageError::NotFound(id))?;
        let mut spec = source.spec.clone();
        let mut name = format!("{} (copy)", spec.name);
        let mut n = 2;
        while self.name_taken(&name, None) {
            name = format!("{} (copy {n})", spec.name);
            n += 1;
        }
        spec.name = name;
        spec.status = Some(WebhookStatus::Disabled);
        let mut copy = Webhook::new(spec, Origin::Api);
        copy.disabled_reason = Some("a new copy starts disabled".to_owned());
        self.store.put_webhook(&copy)?;
        self.add_webhook(copy.clone()).map_err(|message| {
            ManageError::Invalid(vec![FieldError {
                field: "topics",
                message,
            }])
        })?;
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
        );
        let (result, elapsed) = send::send(&self.client, &self.config.guard, &out).await;
        let (status, summary, headers, body) = match result {
            Ok(a) => (
                Some(a.status),
                a.summary(),
                a.headers.clone(),
                a.body.clone(),
            ),
            Err(e) => (None, e, Vec::new(), String::new()),
        };
        Ping {
            success: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            summary,
            request_url: out.shown_url.clone(),
            request_headers: out.shown_headers(),
            request_body: String::new(),
            response_headers: headers,
            response_body: body,
        }
    }

    /// Adds a webhook (already stored) to the running set.
    pub fn add_webhook(&self, webhook: Webhook) -> Result<(), String> {
        let target = Arc::new(Target::new(webhook)?);
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(target);
        self.wake.notify_one();
        Ok(())
    }

    /// Brings the queue gauges (pending deliveries, oldest age) up to date, before a scrape.
    pub fn refresh_queue_metrics(&self) -> Result<(), StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        for t in self.targets() {
            let name = lock(&t.state).spec.name.clone();
            let (pending, oldest) = self.store.queue_stats(t.id)?;
            let age = oldest.map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0);
            self.metrics.queue(&name, pending, age);
        }
        Ok(())
    }

    /// A webhook's deliveries, newest first.
    pub fn deliveries(&self, webhook: Uuid, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.store.deliveries_of(webhook, limit)
    }

    /// A delivery with every attempt made for it.
    pub fn delivery(&self, id: Uuid) -> Result<Option<(Delivery, Vec<Attempt>)>, StoreError> {
        match self.store.delivery(id)? {
            Some(d) => Ok(Some((d, self.store.attempts(id)?))),
            None => Ok(None),
        }
    }

    /// Sends a delivery again, now, with the same id (a delivered one too: receivers that
    /// lost it asked for it). Returns `None` for an unknown delivery or one already in flight.
    pub fn redeliver(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        let Some(d) = self.store.delivery(id)? else {
            return Ok(None);
        };
        if self
            .target(d.webhook_id)
            .is_some_and(|t| t.is_in_flight(&d.id))
        {
            return Ok(None);
        }
        let d = self.store.requeue(&d, unix_ms(OffsetDateTime::now_utc()))?;
        self.wake.notify_one();
        Ok(Some(d))
    }

    /// Re-queues every failed delivery of `webhook` created in `[since, until)`, as Svix's
    /// recover does after an outage; returns how many.
    pub fn recover(
        &self,
        webhook: Uuid,
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let mut n = 0;
        for d in self.store.deliveries_of(webhook, usize::MAX)? {
            if d.state == DeliveryState::Failed && d.created_at >= since && d.created_at < until {
                self.store.requeue(&d, now)?;
                n += 1;
            }
        }
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }
}
