//! The two background tasks of the PostgreSQL backend, both on the store's runtime:
//! - the **shipper** moves the local journal into PostgreSQL in batches, woken by every
//!   append, and retries every second while PostgreSQL is away;
//! - the **listener** holds a connection of its own that `LISTEN`s on [`sql::CHANNEL`], and
//!   wakes the engine when another instance added work or changed a webhook.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::tls::Connector;
use super::{Status, pg_error, sql};
use crate::event::unix_ms;
use crate::store::{SledStore, StoreError};

/// Events moved per transaction at most.
const BATCH: usize = 200;
/// How long to wait after a failure before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the shipper looks even when nothing woke it (events moved in from `pending/`).
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// Moves the journal into PostgreSQL until the store is dropped (its runtime with it).
pub async fn ship(journal: Arc<SledStore>, pool: Pool, now: Arc<Notify>, status: Arc<Status>) {
    let mut failing: Option<String> = None;
    loop {
        tokio::select! {
            _ = now.notified() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
        // Ready: the journal is open and counted (see `PgStore::mark_ready`).
        if !journal.is_ready() {
            continue;
        }
        match ship_all(&journal, &pool, &status).await {
            Ok(_) => {
                if failing.take().is_some() {
                    tracing::info!(
                        "the shared store answers again; the local journal is being moved into it"
                    );
                }
            }
            Err(e) => {
                let reader = Arc::clone(&journal);
                if let Ok(oldest) = blocking(move || reader.journal_oldest()).await {
                    status
                        .oldest_ms
                        .store(oldest.map_or(0, unix_ms), Ordering::Relaxed);
                }
                let message = e.to_string();
                if failing.as_deref() != Some(message.as_str()) {
                    tracing::error!(error = %message,
                        backlog = status.backlog.load(Ordering::Relaxed),
                        "cannot move events into the shared store; they wait in the local journal and move when it is back");
                }
                failing = Some(message);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Moves everything journalled so far; returns how many events were moved. One mover at a
/// time (the shipper, or a flush), so that no batch is moved and counted twice. The journal's
/// disk work runs on blocking threads, off the runtime that serves the connections.
pub async fn ship_all(
    journal: &Arc<SledStore>,
    pool: &Pool,
    status: &Status,
) -> Result<usize, StoreError> {
    let _moving = status.moving.lock().await;
    let mut moved = 0;
    loop {
        let reader = Arc::clone(journal);
        let batch = blocking(move || reader.journal_batch(BATCH)).await?;
        if batch.is_empty() {
            status.oldest_ms.store(0, Ordering::Relaxed);
            return Ok(moved);
        }
        let inserted = async {
            let mut client = super::connection(pool).await.map_err(pg_error)?;
            sql::insert_events(&mut client, &batch).await
        }
        .await;
        status.connected.store(inserted.is_ok(), Ordering::Relaxed);
        let repeats = inserted?;
        if repeats > 0 {
            tracing::info!(
                repeats,
                "events dropped as repeats: another instance derived an event with the same dedupe key within the window"
            );
        }
        let n = batch.len();
        let writer = Arc::clone(journal);
        let oldest = blocking(move || {
            writer.journal_forget(&batch)?;
            writer.journal_oldest()
        })
        .await?;
        moved += n;
        status
            .backlog
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
        status
            .oldest_ms
            .store(oldest.map_or(0, unix_ms), Ordering::Relaxed);
    }
}

/// Runs journal work on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// The payload of the notification `sql` sends when a webhook changed (as opposed to new work).
const WEBHOOKS_CHANGED: &str = "webhooks";

/// Listens for other instances' news until the store is dropped, reconnecting as needed.
/// `webhooks` is signalled for a change of a webhook, `remote` for that and any other news.
pub async fn listen(
    connector: Connector,
    remote: Arc<Notify>,
    webhooks: Arc<Notify>,
    status: Arc<Status>,
) {
    let mut failing: Option<String> = None;
    loop {
        if let Err(e) = listen_once(&connector, &remote, &webhooks, &status).await {
            let message = e.to_string();
            if failing.as_deref() != Some(message.as_str()) {
                tracing::warn!(error = %message, "not listening for other instances' changes; trying again every second");
            }
            failing = Some(message);
        }
        // Whatever was announced while not listening: look now.
        remote.notify_one();
        webhooks.notify_one();
        tokio::time::sleep(RETRY).await;
    }
}

async fn listen_once(
    connector: &Connector,
    remote: &Notify,
    webhooks: &Notify,
    status: &Status,
) -> Result<(), StoreError> {
    let mut config = connector.config.clone();
    super::bounded(&mut config);
    config.application_name("hooktap-listen");
    let (client, mut connection) = config
        .connect(connector.tls.clone())
        .await
        .map_err(|e| connector.explain(pg_error(e)))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection delivers notifications only while it is polled.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload() == WEBHOOKS_CHANGED).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(pg_error(e)),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {}", sql::CHANNEL))
        .await
        .map_err(pg_error)?;
    status.connected.store(true, Ordering::Relaxed);
    remote.notify_one();
    webhooks.notify_one();
    while let Some(webhook) = rx.recv().await {
        if webhook {
            webhooks.notify_one();
        }
        remote.notify_one();
    }
    drop(client);
    driver
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .and(Err(StoreError::Postgres(
            "the listening connection closed".to_owned(),
        )))
}
