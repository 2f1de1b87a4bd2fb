//! Delivery: from stored event to signed POST, with retries.
//!
//! The [`Dispatcher`] owns both ends of the queue. [`Dispatcher::enqueue`] is called on the
//! proxy path: it creates one [`Delivery`] per subscribed webhook, appends event and deliveries
//! to the store in one batch and wakes the loop — no network I/O. [`Dispatcher::run`] is the
//! loop: it reads what is due per webhook from the store, sends within a global and a
//! per-webhook concurrency limit (a slow endpoint fills its own slots, not everyone's), and
//! records each attempt, rescheduling failures along the webhook's retry schedule.
//!
//! Delivery is at-least-once: the queue entry is removed only when the attempt is recorded, so
//! a crash mid-send means the delivery is sent again after restart, with the same delivery id.

pub mod retry;
pub mod sign;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use uuid::Uuid;

use crate::config::{DeliveryConfig, WebhookConfig};
use crate::event::{Attempt, Delivery, DeliveryState, Event, unix_ms};
use crate::store::{Store, StoreError, WebhookRecord};

/// A webhook as the dispatcher runs it: stable id, configuration, and its own slots.
pub struct Target {
    pub id: Uuid,
    pub config: WebhookConfig,
    slots: Arc<Semaphore>,
    /// Deliveries being sent right now; their queue entries stay until the attempt is recorded.
    in_flight: Mutex<HashSet<Uuid>>,
}

impl Target {
    fn is_in_flight(&self, id: &Uuid) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    fn set_in_flight(&self, id: Uuid, on: bool) {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if on {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }
}

pub struct Dispatcher {
    store: Arc<Store>,
    targets: Vec<Arc<Target>>,
    config: DeliveryConfig,
    client: reqwest::Client,
    global: Arc<Semaphore>,
    wake: Notify,
}

/// How long the loop sleeps when nothing is queued (new work wakes it at once anyway).
const IDLE: Duration = Duration::from_secs(30);
/// How much of a receiver's answer is read (and, later, kept).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        webhooks: Vec<(WebhookRecord, WebhookConfig)>,
        config: DeliveryConfig,
    ) -> Result<Self, DeliveryError> {
        // pingora already links rustls with ring; use the same provider rather than a second one.
        // Installing fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let targets = webhooks
            .into_iter()
            .map(|(record, config)| {
                Arc::new(Target {
                    id: record.id,
                    slots: Arc::new(Semaphore::new(config.concurrency)),
                    config,
                    in_flight: Mutex::default(),
                })
            })
            .collect();
        Ok(Self {
            store,
            targets,
            global: Arc::new(Semaphore::new(config.concurrency)),
            config,
            client,
            wake: Notify::new(),
        })
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Stores `event` with one delivery per subscribed webhook and wakes the loop.
    /// Called on the proxy path: no network I/O, one store batch.
    pub fn enqueue(&self, event: &Event) -> Result<Vec<Delivery>, StoreError> {
        let deliveries: Vec<Delivery> = self
            .targets
            .iter()
            .filter(|t| t.config.subscribes_to(&event.topic))
            .map(|t| Delivery::new(event, t.id))
            .collect();
        self.store.append(event, &deliveries)?;
        if !deliveries.is_empty() {
            self.wake.notify_one();
        }
        Ok(deliveries)
    }

    /// The loop: send what is due, then sleep until the next due time, new work or shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(webhooks = self.targets.len(), "delivery loop started");
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
        tracing::info!("delivery loop stopped");
    }

    /// Starts every due delivery there is a slot for; returns how long until the next one is due.
    fn dispatch_due(self: &Arc<Self>) -> Result<Option<Duration>, StoreError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let mut next: Option<u64> = None;
        for target in &self.targets {
            let free = target.slots.available_permits();
            if free > 0 {
                for delivery in self
                    .store
                    .due(target.id, now, free, |id| target.is_in_flight(id))?
                {
                    // Out of global slots: a finishing send wakes the loop.
                    let Ok(global) = self.global.clone().try_acquire_owned() else {
                        return Ok(None);
                    };
                    let Ok(local) = target.slots.clone().try_acquire_owned() else {
                        break;
                    };
                    target.set_in_flight(delivery.id, true);
                    tokio::spawn(Arc::clone(self).send(
                        Arc::clone(target),
                        delivery,
                        (global, local),
                    ));
                }
            }
            if let Some(due) = self
                .store
                .next_due(target.id, |id| target.is_in_flight(id))?
            {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next.map(|due| Duration::from_millis(due.saturating_sub(now))))
    }

    async fn send(
        self: Arc<Self>,
        target: Arc<Target>,
        delivery: Delivery,
        _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) {
        if let Err(e) = self.attempt(&target, &delivery).await {
            tracing::error!(delivery = %delivery.id, webhook = %target.config.name, error = %e,
                "cannot record a delivery attempt; it stays queued and will be retried");
        }
        target.set_in_flight(delivery.id, false);
        self.wake.notify_one();
    }

    async fn attempt(&self, target: &Target, delivery: &Delivery) -> Result<(), StoreError> {
        let Some(event) = self.store.event(delivery.event_id)? else {
            tracing::error!(delivery = %delivery.id, event = %delivery.event_id, "event of a queued delivery is missing; dropping it");
            let mut after = delivery.clone();
            after.state = DeliveryState::Failed;
            return self.store.record_attempt(
                delivery,
                &after,
                &self.attempt_record(
                    target,
                    delivery,
                    0,
                    None,
                    "event missing from store".into(),
                    false,
                ),
            );
        };
        let body = serde_json::to_vec(&event.payload)?;
        let headers = self.headers(target, delivery, &event, &body);
        let started = Instant::now();
        let outcome = self
            .client
            .post(target.config.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let (status, summary) = match outcome {
            Ok(mut response) => {
                let status = response.status();
                // Read (a bounded part of) the answer so the connection can be reused.
                let mut read = 0;
                while read < MAX_RESPONSE_BODY {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                let reason = status.canonical_reason().unwrap_or("");
                (
                    Some(status.as_u16()),
                    format!("HTTP {} {reason}", status.as_u16()),
                )
            }
            Err(e) => (None, describe_error(&e)),
        };
        let elapsed = started.elapsed();
        let success = status.is_some_and(|s| (200..300).contains(&s));
        let mut after = delivery.clone();
        after.attempts += 1;
        after.updated_at = OffsetDateTime::now_utc();
        if success {
            after.state = DeliveryState::Delivered;
            tracing::debug!(delivery = %delivery.id, webhook = %target.config.name, topic = %event.topic, ms = elapsed.as_millis() as u64, "delivered");
        } else {
            match retry::next_delay(&target.config.retry, after.attempts) {
                Some(delay) => {
                    after.due_ms = unix_ms(after.updated_at)
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    tracing::warn!(delivery = %delivery.id, webhook = %target.config.name, attempt = after.attempts, %summary,
                        retry_in = %humantime::format_duration(delay), "delivery attempt failed");
                }
                None => {
                    after.state = DeliveryState::Failed;
                    tracing::error!(delivery = %delivery.id, webhook = %target.config.name, attempts = after.attempts, %summary,
                        "delivery failed after its last retry");
                }
            }
        }
        let attempt = self.attempt_record(
            target,
            delivery,
            elapsed.as_millis() as u64,
            status,
            summary,
            success,
        );
        self.store.record_attempt(delivery, &after, &attempt)
    }

    fn attempt_record(
        &self,
        target: &Target,
        delivery: &Delivery,
        duration_ms: u64,
        response_code: Option<u16>,
        summary: String,
        success: bool,
    ) -> Attempt {
        Attempt {
            delivery_id: delivery.id,
            webhook_id: target.id,
            number: delivery.attempts + 1,
            created_at: OffsetDateTime::now_utc(),
            duration_ms,
            url: target.config.url.to_string(),
            response_code,
            summary,
            success,
        }
    }

    fn headers(
        &self,
        target: &Target,
        delivery: &Delivery,
        event: &Event,
        body: &[u8],
    ) -> HeaderMap {
        let signature = sign::hmac_sha256_base64(target.config.secret.as_bytes(), body);
        let id = target.id.to_string();
        let delivery_id = delivery.id.to_string();
        let fields: [(&str, &str); 7] = [
            ("id", &id),
            ("topic", &event.topic),
            ("resource", &event.resource),
            ("event", &event.event),
            ("delivery-id", &delivery_id),
            ("source", &self.config.source),
            ("signature", &signature),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in fields {
            let name = HeaderName::try_from(format!("x-hooktap-webhook-{name}"));
            // Topics, ids and base64 are ASCII; the source comes from validated config. A value
            // that is still not a valid header is skipped rather than failing the delivery.
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(value)) {
                headers.insert(name, value);
            }
        }
        headers
    }
}

/// A transport error in words an operator can act on.
fn describe_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}
