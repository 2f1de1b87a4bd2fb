//! The store keeper: keeps the store open and usable while hooktap runs, applies the config
//! file's webhooks the first time it opens, moves held events in, removes deleted webhooks'
//! history (sled), and sweeps old records.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::Engine;
use crate::webhook::WebhookSpec;

/// How often the store is looked after.
pub const KEEP_STORE_EVERY: Duration = Duration::from_millis(200);
/// How often old events, deliveries and attempts are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

impl Engine {
    /// Keeps the store usable until shutdown: checks free space, opens the database when it
    /// is not open (at start during an upgrade or on a read-only disk; after a failure),
    /// applies `webhooks` the first time it opens, and moves held events into it.
    pub async fn keep_store(
        self: Arc<Self>,
        webhooks: Vec<WebhookSpec>,
        grace: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            self.look_after(&webhooks, grace).await;
            tokio::select! {
                _ = tokio::time::sleep(KEEP_STORE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn look_after(self: &Arc<Self>, webhooks: &[WebhookSpec], grace: Duration) {
        let store = Arc::clone(&self.store);
        if let Err(e) = tokio::task::spawn_blocking(move || store.maintain()).await {
            tracing::error!(error = %e, "store maintenance panicked");
        }
        if self.store.needs_setup() {
            match self.sync_webhooks(webhooks, grace).await {
                Ok(removed) => {
                    for (name, dropped) in removed {
                        tracing::warn!(webhook = %name, dropped, "webhook removed from the config: deleted with its pending deliveries");
                    }
                    self.store.mark_ready();
                    self.wake();
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot apply the webhooks to the store; trying again");
                    return;
                }
            }
        }
        if !self.store.is_ready() {
            return;
        }
        if self.store.shared() {
            // Other instances change webhooks too: the running set follows the store.
            if let Err(e) = self.refresh_webhooks().await {
                tracing::debug!(error = %e, "cannot read the webhooks from the shared store");
            }
        }
        let this = Arc::clone(self);
        let drained = tokio::task::spawn_blocking(move || {
            this.store.drain_held(&mut |e| {
                // Durable before its file in `pending/` is removed.
                match this.intake.store_held(e)? {
                    Some(durable) => durable.wait(),
                    None => Ok(()),
                }
            })
        })
        .await;
        match drained {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(events = n, "moved events held in pending/ into the store"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot move held events into the store; trying again")
            }
            Err(e) => tracing::error!(error = %e, "moving held events panicked"),
        }
    }

    pub(super) async fn sweep_loop(self: Arc<Self>, retention: Duration) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Topic};

    const RETENTION: Duration = Duration::from_secs(30 * 86_400);

    /// An event past the retention period, with no delivery left pending.
    fn old_event(engine: &Engine) -> Event {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = OffsetDateTime::now_utc() - time::Duration::days(40);
        engine.store().append(&e, &[]).expect("append");
        e
    }

    /// Waits (in paused time, a few virtual milliseconds at a time) until `e` is swept.
    async fn swept(engine: &Engine, e: &Event) -> bool {
        for _ in 0..1000 {
            if engine.store().event(e.id).await.expect("read").is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn old_records_are_swept_at_start_and_then_once_an_hour() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::for_tests(dir.path());
        let first = old_event(&engine);
        let sweeper = tokio::spawn(Arc::clone(&engine).sweep_loop(RETENTION));
        assert!(swept(&engine, &first).await, "swept at start");

        let second = old_event(&engine);
        tokio::time::sleep(Duration::from_secs(55 * 60)).await;
        assert!(
            engine
                .store()
                .event(second.id)
                .await
                .expect("read")
                .is_some(),
            "not swept again within the hour"
        );
        tokio::time::sleep(Duration::from_secs(6 * 60)).await;
        assert!(swept(&engine, &second).await, "swept an hour later");
        sweeper.abort();
    }
}
