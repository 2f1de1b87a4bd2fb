//! The durable store: events, deliveries, the delivery queue and the attempt log, in sled.
//!
//! All records live in one sled tree under one-byte prefixes, so that an event and all of its
//! deliveries are written in one atomic batch (sled batches are atomic within a tree):
//!
//! | key | value |
//! |---|---|
//! | `e` event id | [`Event`] (JSON) |
//! | `d` delivery id | [`Delivery`] (JSON) |
//! | `q` webhook id, due ms (big-endian u64), delivery id | empty: the queue |
//! | `a` delivery id, attempt number (big-endian u32) | [`Attempt`] (JSON) |
//! | `w` webhook id | [`WebhookRecord`] (JSON) |
//! | `n` webhook name | webhook id |
//!
//! Ids are UUIDv7 and numbers big-endian, so byte order is time order: "what is due for this
//! webhook" is a range scan from the start of its queue prefix. The store is the queue; nothing
//! about pending work lives only in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{FlushMode, StoreConfig, WebhookConfig};
use crate::event::{Attempt, Delivery, DeliveryState, Event};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("store record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// What the store keeps about a webhook between runs: its stable id and when it appeared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub topics: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

pub struct Store {
    db: sled::Db,
    flush: FlushMode,
    /// Appends that failed (the proxy keeps serving; this is what operators watch).
    failed_appends: AtomicU64,
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn queue_key(d: &Delivery) -> Vec<u8> {
    key(
        b'q',
        &[
            d.webhook_id.as_bytes(),
            &d.due_ms.to_be_bytes(),
            d.id.as_bytes(),
        ],
    )
}

fn attempt_key(delivery: Uuid, number: u32) -> Vec<u8> {
    key(b'a', &[delivery.as_bytes(), &number.to_be_bytes()])
}

/// The delivery id at the end of a queue key.
fn queued_delivery(k: &[u8]) -> Option<(u64, Uuid)> {
    let due = u64::from_be_bytes(k.get(17..25)?.try_into().ok()?);
    let id = Uuid::from_slice(k.get(25..41)?).ok()?;
    Some((due, id))
}

/// Creates the directory readable by its owner only: it holds payloads and the delivery log.
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StoreError::CreateDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    // An existing directory keeps its mode under `create`: tighten it as well.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        create_private_dir(&config.path)?;
        // In every-event mode events are flushed explicitly; the background flush still runs so
        // that delivery outcomes reach the disk too.
        let flush_every_ms = match config.flush {
            FlushMode::Interval(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            FlushMode::EveryEvent => Some(500),
        };
        let db = sled::Config::new()
            .path(&config.path)
            .flush_every_ms(flush_every_ms)
            .open()?;
        Ok(Self {
            db,
            flush: config.flush,
            failed_appends: AtomicU64::new(0),
        })
    }

    /// Gives every configured webhook its stable id (kept across restarts, matched by name).
    pub fn upsert_webhooks(
        &self,
        configs: &[WebhookConfig],
    ) -> Result<Vec<WebhookRecord>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::with_capacity(configs.len());
        for c in configs {
            let existing = match self.db.get(key(b'n', &[c.name.as_bytes()]))? {
                Some(id) => match self.db.get(key(b'w', &[&id]))? {
                    Some(v) => Some(serde_json::from_slice::<WebhookRecord>(&v)?),
                    None => None,
                },
                None => None,
            };
            let url = c.url.to_string();
            let record = match existing {
                Some(r) if r.url == url && r.topics == c.topics => r,
                Some(r) => WebhookRecord {
                    url,
                    topics: c.topics.clone(),
                    updated_at: now,
                    ..r
                },
                None => WebhookRecord {
                    id: Uuid::now_v7(),
                    name: c.name.clone(),
                    url,
                    topics: c.topics.clone(),
                    created_at: now,
                    updated_at: now,
                },
            };
            let mut batch = sled::Batch::default();
            batch.insert(
                key(b'w', &[record.id.as_bytes()]),
                serde_json::to_vec(&record)?,
            );
            batch.insert(
                key(b'n', &[c.name.as_bytes()]),
                record.id.as_bytes().as_slice(),
            );
            self.db.apply_batch(batch)?;
            out.push(record);
        }
        Ok(out)
    }

    /// Stores an event and its deliveries atomically (and durably, in `every-event` mode).
    pub fn append(&self, event: &Event, deliveries: &[Delivery]) -> Result<(), StoreError> {
        let result = (|| {
            let mut batch = sled::Batch::default();
            batch.insert(
                key(b'e', &[event.id.as_bytes()]),
                serde_json::to_vec(event)?,
            );
            for d in deliveries {
                batch.insert(key(b'd', &[d.id.as_bytes()]), serde_json::to_vec(d)?);
                batch.insert(queue_key(d), &[] as &[u8]);
            }
            self.db.apply_batch(batch)?;
            if self.flush == FlushMode::EveryEvent {
                self.db.flush()?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.failed_appends.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// How many appends have failed since start.
    pub fn failed_appends(&self) -> u64 {
        self.failed_appends.load(Ordering::Relaxed)
    }

    /// Up to `limit` deliveries of `webhook` due at `now_ms`, oldest due first, leaving out
    /// those `skip` names (deliveries already in flight).
    pub fn due(
        &self,
        webhook: Uuid,
        now_ms: u64,
        limit: usize,
        skip: impl Fn(&Uuid) -> bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = key(b'q', &[webhook.as_bytes()]);
        let end = key(
            b'q',
            &[webhook.as_bytes(), &now_ms.saturating_add(1).to_be_bytes()],
        );
        let mut out = Vec::new();
        for entry in self.db.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry?;
            let Some((_, id)) = queued_delivery(&k) else {
                continue;
            };
            if skip(&id) {
                continue;
            }
            if let Some(d) = self.delivery(id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// When the earliest queued delivery of `webhook` not named by `skip` is due.
    pub fn next_due(
        &self,
        webhook: Uuid,
        skip: impl Fn(&Uuid) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        for entry in self.db.scan_prefix(key(b'q', &[webhook.as_bytes()])) {
            let (k, _) = entry?;
            if let Some((due, id)) = queued_delivery(&k) {
                if !skip(&id) {
                    return Ok(Some(due));
                }
            }
        }
        Ok(None)
    }

    /// Number of deliveries queued for `webhook` (pending, due now or later).
    pub fn queued(&self, webhook: Uuid) -> usize {
        self.db
            .scan_prefix(key(b'q', &[webhook.as_bytes()]))
            .count()
    }

    pub fn event(&self, id: Uuid) -> Result<Option<Event>, StoreError> {
        self.get(key(b'e', &[id.as_bytes()]))
    }

    pub fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        self.get(key(b'd', &[id.as_bytes()]))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, k: Vec<u8>) -> Result<Option<T>, StoreError> {
        match self.db.get(k)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Result<Vec<Event>, StoreError> {
        self.db
            .scan_prefix([b'e'])
            .map(|entry| Ok(serde_json::from_slice(&entry?.1)?))
            .collect()
    }

    /// Every delivery, oldest first.
    pub fn deliveries(&self) -> Result<Vec<Delivery>, StoreError> {
        self.db
            .scan_prefix([b'd'])
            .map(|entry| Ok(serde_json::from_slice(&entry?.1)?))
            .collect()
    }

    /// The attempts of one delivery, first attempt first.
    pub fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
        self.db
            .scan_prefix(key(b'a', &[delivery.as_bytes()]))
            .map(|entry| Ok(serde_json::from_slice(&entry?.1)?))
            .collect()
    }

    /// Records an attempt and the delivery's new state in one batch: the old queue entry goes,
    /// a new one is added if the delivery is still pending.
    pub fn record_attempt(
        &self,
        before: &Delivery,
        after: &Delivery,
        attempt: &Attempt,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(queue_key(before));
        if after.state == DeliveryState::Pending {
            batch.insert(queue_key(after), &[] as &[u8]);
        }
        batch.insert(
            key(b'd', &[after.id.as_bytes()]),
            serde_json::to_vec(after)?,
        );
        batch.insert(
            attempt_key(attempt.delivery_id, attempt.number),
            serde_json::to_vec(attempt)?,
        );
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Writes everything buffered to disk (called on shutdown and in tests).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
