//! `hooktap migrate --from-sled DIR`: moves a stopped single instance's sled store into the
//! shared store, so that its webhooks keep their ids (receivers that check them see no change)
//! and what it had not delivered yet is delivered by the instances on PostgreSQL.
//!
//! Moved: every webhook (same id, secret, status, counters) and every pending delivery with
//! its event (same ids, attempts made so far, due time). Not moved: finished deliveries and
//! the delivery log, which stay in the sled directory. Afterwards the sled directory is marked
//! as moved: `hooktap run` refuses it, and moving it again needs `--force` (rows already there
//! are left as they are, but rows PostgreSQL has swept since would come back).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{PgConfig, migrate_with, pg_error, pool, sql};
use crate::event::{Delivery, Event};
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
    /// Pending deliveries written now (those already there are left as they are).
    pub deliveries: usize,
    /// The events written now with them.
    pub events: usize,
}

/// Moves the stopped sled store `sled` (at `path`) into the PostgreSQL store of `pg`, applying
/// its schema first, then marks the sled store as moved ([`MOVED_FILE`](crate::store::sled::MOVED_FILE)). A store marked so
/// is refused unless `force`: PostgreSQL's retention sweep may have deleted what was moved,
/// and moving it again would queue old deliveries again.
pub async fn import_sled(
    pg: &PgConfig,
    sled: &SledStore,
    path: &std::path::Path,
    force: bool,
) -> Result<Imported, StoreError> {
    if let Some(note) = SledStore::moved(path)?
        && !force
    {
        return Err(StoreError::Unusable(format!(
            "the sled store at {} was moved already ({note}): moving it again would queue again what PostgreSQL has delivered and swept since; pass --force to move it anyway",
            path.display()
        )));
    }
    let held = SledStore::held_events(path)?;
    if held > 0 {
        return Err(StoreError::Unusable(format!(
            "{held} events wait in {}/pending/ without their deliveries yet: start hooktap once on the sled store (it takes them in), stop it, and migrate again",
            path.display()
        )));
    }
    let webhooks = sled.webhooks()?;
    // Every pending delivery, one entry each (with its event; an event's row is written by
    // its first entry), in queue order: PostgreSQL queues a webhook's deliveries in the order
    // they are inserted, and an ordered or keyed webhook sends them in that order.
    let mut pending: Vec<Delivery> = Vec::new();
    for w in &webhooks {
        // The webhook's queue: its pending deliveries, without reading its history.
        pending.extend(sled.queued(w.id, u64::MAX, usize::MAX, &HashSet::new())?);
    }
    pending.sort_by_key(|d| (d.queue_ms, d.id));
    let mut events: HashMap<Uuid, Option<Event>> = HashMap::new();
    let mut entries = Vec::with_capacity(pending.len());
    for d in pending {
        let event = match events.entry(d.event_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(sled.event(d.event_id)?).clone()
            }
        };
        let Some(event) = event else {
            // Swept or never written whole: nothing to send.
            tracing::warn!(event = %d.event_id, delivery = %d.id, "a pending delivery's event is missing; it is not moved");
            continue;
        };
        entries.push(Entry {
            event,
            deliveries: vec![d],
            dedupe: None,
            local: Default::default(),
        });
    }

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
        let inserted = sql::insert_entries(&mut client, batch).await?;
        done.events += inserted.events;
        done.deliveries += inserted.deliveries;
    }
    let when = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    SledStore::mark_moved(
        path,
        &format!(
            "by hooktap migrate --from-sled into PostgreSQL at {} on {when}",
            PgConfig::shown(&pg.url)
        ),
    )?;
    Ok(done)
}
