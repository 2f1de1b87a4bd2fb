//! Operations on webhooks and deliveries: the Rust API that the admin HTTP API serves.
//!
//! Every operation goes through the dispatcher, so that the running loop and the store never
//! disagree: a status change takes effect for the next send, and a deletion drops the queue.

use std::sync::{Arc, PoisonError};

use time::OffsetDateTime;
use uuid::Uuid;

use super::{Dispatcher, Target, disable, lock};
use crate::event::{Attempt, Delivery, DeliveryState, unix_ms};
use crate::store::StoreError;
use crate::webhook::{Counters, Webhook, WebhookStatus};

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
        tracing::warn!(webhook = %name, %id, dropped, "webhook deleted with its pending deliveries");
        Ok(Some(dropped))
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
