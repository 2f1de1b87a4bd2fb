//! `hooktap migrate --from-sled DIR`: moves a stopped single instance's sled store into the
//! shared store, so that its webhooks keep their ids (receivers that check them see no change)
//! and what it had not delivered yet is delivered by the instances on PostgreSQL.
//!
//! Moved: every webhook (same id, secret, status, counters) and every pending delivery with
//! its event (same ids, attempts made so far, due time). Not moved: finished deliveries and
//! the delivery log, which stay readable in the sled directory. Running it again moves
//! nothing twice: rows already there are left as they are (PostgreSQL's instances may have
//! changed them since).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{PgConfig, migrate_with, pg_error, pool, sql};
use crate::event::{Delivery, DeliveryState};
use crate::store::sled::Entry;
use crate::store::{SledStore, StoreError};

/// Events moved per transaction at most (as the shipper does).
const BATCH: usize = 200;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Webhooks written now.
    pub webhooks: usize,
    /// Webhooks that were there already (an earlier run).
    pub webhooks_there: usize,
    /// Pending deliveries handed over (those already there are left as they are).
    pub deliveries: usize,
    /// The events they belong to.
    pub events: usize,
}

/// Moves the stopped sled store `sled` (at `path`, for messages) into the PostgreSQL store of
/// `pg`, applying its schema first.
pub async fn import_sled(
    pg: &PgConfig,
    sled: &SledStore,
    path: &std::path::Path,
) -> Result<Imported, StoreError> {
    let held = SledStore::held_events(path)?;
    if held > 0 {
        return Err(StoreError::Unusable(format!(
            "{held} events wait in {}/pending/ without their deliveries yet: start hooktap once on the sled store (it takes them in), stop it, and migrate again",
            path.display()
        )));
    }
    let webhooks = sled.webhooks()?;
    // Every pending delivery with its event, in queue order: an ordered webhook's queue in
    // PostgreSQL is the order in which deliveries reach it.
    let mut by_event: BTreeMap<Uuid, Vec<Delivery>> = BTreeMap::new();
    for w in &webhooks {
        for d in sled.deliveries_of(w.id, usize::MAX)? {
            if d.state == DeliveryState::Pending {
                by_event.entry(d.event_id).or_default().push(d);
            }
        }
    }
    let mut entries = Vec::with_capacity(by_event.len());
    for (event_id, deliveries) in by_event {
        let Some(event) = sled.event(event_id)? else {
            // Swept or never written whole: nothing to send.
            tracing::warn!(event = %event_id, "a pending delivery's event is missing; it is not moved");
            continue;
        };
        entries.push(Entry {
            event,
            deliveries,
            dedupe: None,
        });
    }
    entries.sort_by_key(|e| {
        e.deliveries
            .iter()
            .map(|d| (d.queue_ms, d.id))
            .min()
            .unwrap_or_default()
    });

    // One pooled connection: the queries take deadpool's client, as the store's do.
    let connector = pg.connector()?;
    let mut client = pool(&connector, 1)?
        .get()
        .await
        .map_err(|e| connector.explain(pg_error(e)))?;
    migrate_with(&mut client).await?;
    let mut done = Imported::default();
    {
        let tx = client.transaction().await.map_err(pg_error)?;
        for w in &webhooks {
            // A webhook of the same name under another id: the PostgreSQL store was set up
            // without this import (an instance started on it first).
            let other: Option<Uuid> = tx
                .query_opt(
                    "SELECT id FROM webhooks WHERE record->'spec'->>'name' = $1 AND id <> $2",
                    &[&w.spec.name, &w.id],
                )
                .await
                .map_err(pg_error)?
                .map(|r| r.get(0));
            if let Some(other) = other {
                return Err(StoreError::Unusable(format!(
                    "PostgreSQL already has a webhook named `{}` with another id ({other}, the sled store's is {}): migrate into a store no instance has started on, or delete that webhook first",
                    w.spec.name, w.id
                )));
            }
            if sql::insert_webhook(&tx, w).await? {
                done.webhooks += 1;
            } else {
                done.webhooks_there += 1;
            }
        }
        tx.commit().await.map_err(pg_error)?;
    }
    for batch in entries.chunks(BATCH) {
        sql::insert_events(&mut client, batch).await?;
        done.events += batch.len();
        done.deliveries += batch.iter().map(|e| e.deliveries.len()).sum::<usize>();
    }
    Ok(done)
}
