//! The intake: what the proxy holds. It turns a derived event into stored deliveries and wakes
//! the scheduler, with no network I/O: a registry lookup and a few local store writes.

use std::sync::Arc;

use tokio::sync::{Notify, broadcast};

use super::registry::Registry;
use crate::event::{Dedupe, Delivery, Event};
use crate::metrics::Metrics;
use crate::store::{Durable, Store, StoreError};
use crate::webhook::Mode;

/// What became of a derived event.
#[derive(Debug)]
pub enum Enqueued {
    /// Stored (or held), with these deliveries, and in `every-event` mode what to wait on
    /// before the event is durable (see [`Intake::enqueue_deferred`]).
    Stored(Vec<Delivery>, Option<Durable>),
    /// A repeat within its rule's dedupe window: not stored.
    Repeat,
}

pub struct Intake {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// Wakes the scheduler: new work, a finished send, a changed webhook.
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Every stored event, for live viewers (`hooktap tap`); sending costs nothing when
    /// nobody listens.
    tap: broadcast::Sender<Arc<Event>>,
}

impl Intake {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            registry,
            wake,
            metrics,
            tap: broadcast::channel(1024).0,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Live events as they are stored (a slow viewer misses events rather than slowing hooktap).
    pub fn tap(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tap.subscribe()
    }

    /// Stores a derived event unless its rule's dedupe key was claimed within the window: a
    /// repeat is counted and dropped. The claim comes first, so that two requests racing with
    /// one key store one event; it is given back when the event cannot be stored. When the
    /// claim cannot be checked (the store failing), the event is stored: a possible duplicate
    /// beats a lost event. The events metric counts it under `metric_topic` (see
    /// [`crate::rules::Rule::metric_topic`]).
    pub fn enqueue_derived(
        &self,
        event: &Arc<Event>,
        dedupe: Option<&Dedupe>,
        metric_topic: &str,
    ) -> Result<Enqueued, StoreError> {
        let claimed = match dedupe {
            None => None,
            Some(d) => {
                let now_ms = crate::event::unix_ms(event.created_at);
                match self.store.claim_dedupe(&d.key, event.id, now_ms, d.window) {
                    Ok(true) => Some(d.key),
                    Ok(false) => {
                        self.metrics.deduplicated(&event.rule);
                        return Ok(Enqueued::Repeat);
                    }
                    Err(e) => {
                        tracing::warn!(rule = %event.rule, error = %e,
                            "cannot check the dedupe key; the event is stored and may be a repeat");
                        None
                    }
                }
            }
        };
        match self.enqueue_labelled(event, metric_topic) {
            Ok((deliveries, durable)) => Ok(Enqueued::Stored(deliveries, durable)),
            Err(e) => {
                if let Some(key) = claimed
                    && let Err(release) = self.store.release_dedupe(&key, event.id)
                {
                    tracing::warn!(rule = %event.rule, error = %release,
                        "cannot give back a dedupe claim; a retry within the window counts as a repeat");
                }
                Err(e)
            }
        }
    }

    /// Stores `event` with one delivery per webhook that accepts its topic and wakes the
    /// scheduler; while the store is not ready, holds the event instead (no deliveries yet).
    /// Returns once the event is durable (in `every-event` mode).
    pub fn enqueue(&self, event: Event) -> Result<Vec<Delivery>, StoreError> {
        let (deliveries, durable) = self.enqueue_deferred(event)?;
        if let Some(durable) = durable {
            if let Err(e) = durable.wait() {
                self.metrics.store_error();
                return Err(e);
            }
        }
        Ok(deliveries)
    }

    /// [`Intake::enqueue`], returning before the event is durable with what to wait on (see
    /// [`Store::append_deferred`]); the scheduler may send it meanwhile.
    pub fn enqueue_deferred(
        &self,
        event: Event,
    ) -> Result<(Vec<Delivery>, Option<Durable>), StoreError> {
        let event = Arc::new(event);
        self.enqueue_labelled(&event, &event.topic)
    }

    /// [`Intake::enqueue_deferred`], counting the event under `metric_topic`.
    fn enqueue_labelled(
        &self,
        event: &Arc<Event>,
        metric_topic: &str,
    ) -> Result<(Vec<Delivery>, Option<Durable>), StoreError> {
        let result = if self.store.is_ready() {
            match self.store_with_deliveries(event) {
                // The store closed meanwhile (a failure, being reopened): hold it instead.
                Err(StoreError::NotOpen) => self.store.hold(event).map(|()| (Vec::new(), None)),
                other => other,
            }
        } else {
            self.store.hold(event).map(|()| (Vec::new(), None))
        };
        if result.is_err() {
            self.metrics.store_error();
            return result;
        }
        self.metrics.event(metric_topic, &event.rule);
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(Arc::clone(event));
        }
        result
    }

    /// Stores `event` with one delivery per webhook that accepts its topic and whose filter
    /// its payload passes, each with its ordering key.
    pub(super) fn store_with_deliveries(
        &self,
        event: &Arc<Event>,
    ) -> Result<(Vec<Delivery>, Option<Durable>), StoreError> {
        let deliveries = self.deliveries_for(event);
        let durable = self.store.append_shared(event, &deliveries)?;
        if !deliveries.is_empty() {
            self.wake.notify_one();
        }
        Ok((deliveries, durable))
    }

    /// The same for an event held in `pending/`, which may be stored already (see
    /// [`Store::append_again`]).
    pub(super) fn store_held(&self, event: &Event) -> Result<Option<Durable>, StoreError> {
        let deliveries = self.deliveries_for(event);
        let durable = self.store.append_again(event, &deliveries)?;
        if !deliveries.is_empty() {
            self.wake.notify_one();
        }
        Ok(durable)
    }

    /// One delivery of `event` per webhook that accepts its topic and whose filter its
    /// payload passes, each with its ordering key.
    fn deliveries_for(&self, event: &Event) -> Vec<Delivery> {
        self.registry
            .all()
            .iter()
            .filter(|t| t.accepts(&event.topic))
            .filter_map(|t| {
                let ordering_key = t.select(&event.payload)?;
                let delay = match t.record().spec.mode {
                    Mode::Batch { interval, .. } => {
                        u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
                    }
                    Mode::Realtime => 0,
                };
                let mut d = Delivery::new(event, t.id, delay);
                d.ordering_key = ordering_key;
                Some(d)
            })
            .collect()
    }
}
