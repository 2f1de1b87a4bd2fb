//! The queries of the PostgreSQL backend. Each function is one round of work on one
//! connection; those that write more than one row run in one transaction.

use std::collections::HashSet;

use deadpool_postgres::{Client, GenericClient};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::pg_error;
use crate::event::{Attempt, Delivery, DeliveryState, Event, unix_ms};
use crate::store::{
    Applied, AttemptBucket, AttemptStats, CounterChange, EventQuery, KeyHeads, MAX_TEXT_SCAN,
    Planner, QueueStats, Recorded, Recording, StatsWindow, StoreError, Swept, WebhookPlan,
};
use crate::webhook::{Counters, Webhook, WebhookStatus};

/// The channel instances tell each other on: `work` (deliveries added or requeued) and
/// `webhooks` (a webhook changed).
pub const CHANNEL: &str = "hooktap";
/// The advisory lock that serialises applying the config file's webhooks.
const SETUP_LOCK: i64 = 0x686f_6f6b_7461_7002;
/// The advisory lock that serialises moving journals in: deliveries then become visible in
/// the order of their `seq` (without it, a transaction that took a lower `seq` could commit
/// after one with a higher `seq` had been sent, and an ordered webhook would send out of order).
const SHIP_LOCK: i64 = 0x686f_6f6b_7461_7003;
/// Retention sweeps run at most this often over all instances.
const SWEEP_EVERY_MS: i64 = 50 * 60 * 1000;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

// Every statement is prepared once per connection (deadpool keeps the cache): a query then
// costs one round trip and no planning.

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query(&statement, params).await.map_err(pg_error)
}

async fn row_opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query_opt(&statement, params).await.map_err(pg_error)
}

async fn row(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query_one(&statement, params).await.map_err(pg_error)
}

async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.execute(&statement, params).await.map_err(pg_error)
}

/// A record as `jsonb` accepts it: PostgreSQL's `jsonb` cannot hold the character U+0000
/// (a NUL in a captured body or a receiver's answer would make every write of that record
/// fail, jamming the journal or the delivery), so it becomes U+FFFD, as invalid UTF-8 in a
/// body already does.
fn jsonb<T: serde::Serialize>(record: &T) -> Result<Json<serde_json::Value>, StoreError> {
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    let entries = std::mem::take(map);
                    for (k, mut v) in entries {
                        clean(&mut v);
                        map.insert(k.replace('\0', "\u{fffd}"), v);
                    }
                } else {
                    map.values_mut().for_each(clean);
                }
            }
            _ => {}
        }
    }
    let mut value = serde_json::to_value(record)?;
    clean(&mut value);
    Ok(Json(value))
}

/// Reads column `i` of a row as a record; a record that does not decode is an error, not a
/// panic.
fn decode<T: serde::de::DeserializeOwned>(row: &Row, i: usize) -> Result<T, StoreError> {
    row.try_get::<_, Json<T>>(i)
        .map(|Json(v)| v)
        .map_err(|e| StoreError::Postgres(format!("a stored record does not decode: {e}")))
}

/// A Unix-millisecond time as PostgreSQL's `bigint`.
pub fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn time_of(ms: Option<i64>) -> Option<OffsetDateTime> {
    ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

fn ms_of(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(|t| ms(unix_ms(t)))
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const WEBHOOK_COLUMNS: &str = "record, delivered, failed, retries, consecutive_failures, \
                               last_delivered_ms, last_failure_ms";

/// The counters of a `WEBHOOK_COLUMNS` row, from offset 1.
fn counters_at(row: &Row, at: usize) -> Counters {
    Counters {
        delivered: count(row.get(at)),
        failed: count(row.get(at + 1)),
        retries: count(row.get(at + 2)),
        consecutive_failures: count(row.get(at + 3)),
        last_delivered_at: time_of(row.get(at + 4)),
        last_failure_at: time_of(row.get(at + 5)),
    }
}

/// A webhook's row as statements bind it: `$1` the id, `$2` the record, `$3`..`$8` the
/// counters in `WEBHOOK_COLUMNS` order.
struct WebhookRow {
    id: Uuid,
    record: Json<serde_json::Value>,
    counts: [i64; 4],
    last: [Option<i64>; 2],
}

impl WebhookRow {
    fn of(w: &Webhook, counters: &Counters) -> Result<Self, StoreError> {
        Ok(Self {
            id: w.id,
            record: jsonb(w)?,
            counts: [
                ms(counters.delivered),
                ms(counters.failed),
                ms(counters.retries),
                ms(counters.consecutive_failures),
            ],
            last: [
                ms_of(counters.last_delivered_at),
                ms_of(counters.last_failure_at),
            ],
        })
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.id,
            &self.record,
            &self.counts[0],
            &self.counts[1],
            &self.counts[2],
            &self.counts[3],
            &self.last[0],
            &self.last[1],
        ]
    }
}

fn webhook_of(row: &Row) -> Webhook {
    let Json(mut w): Json<Webhook> = row.get(0);
    w.counters = counters_at(row, 1);
    w
}

/// Every webhook, oldest first (ids are UUIDv7), or the one with `id`.
pub async fn webhooks(
    c: &impl GenericClient,
    id: Option<Uuid>,
) -> Result<Vec<Webhook>, StoreError> {
    let rows = match id {
        None => {
            c.query(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id"),
                &[],
            )
            .await
        }
        Some(id) => {
            c.query(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"),
                &[&id],
            )
            .await
        }
    }
    .map_err(pg_error)?;
    // A record that does not decode fails the read, as in the sled store.
    rows.iter()
        .map(|r| {
            r.try_get::<_, Json<Webhook>>(0)
                .map_err(|e| StoreError::Postgres(format!("a webhook record is corrupt: {e}")))
                .map(|_| webhook_of(r))
        })
        .collect()
}

/// Creates or replaces a webhook's record. Its counters are written when it is created;
/// afterwards they stay as counted.
pub async fn put_webhook(c: &impl GenericClient, w: &Webhook) -> Result<(), StoreError> {
    exec(
        c,
        &format!(
            "INSERT INTO webhooks (id, {WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record"
        ),
        &WebhookRow::of(w, &w.counters)?.params(),
    )
    .await?;
    notify(c, "webhooks").await
}

/// Replaces the record of a webhook that exists, not its counters (zeroed with `reset`);
/// false, writing nothing, when it does not.
pub async fn replace_webhook(
    c: &impl GenericClient,
    w: &Webhook,
    reset: bool,
) -> Result<bool, StoreError> {
    let sql = if reset {
        "UPDATE webhooks SET record = $2, delivered = 0, failed = 0, retries = 0,
                consecutive_failures = 0, last_delivered_ms = NULL, last_failure_ms = NULL
         WHERE id = $1"
    } else {
        "UPDATE webhooks SET record = $2 WHERE id = $1"
    };
    let n = exec(c, sql, &[&w.id, &jsonb(w)?]).await?;
    if n > 0 {
        notify(c, "webhooks").await?;
    }
    Ok(n > 0)
}

/// Ends this instance's leases on `deliveries` (taken but not sent).
pub async fn unclaim(
    c: &impl GenericClient,
    owner: Uuid,
    deliveries: &[Uuid],
) -> Result<u64, StoreError> {
    exec(
        c,
        "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
         WHERE id = ANY($2) AND lease_owner = $1",
        &[&owner, &deliveries],
    )
    .await
}

/// Ends this instance's leases (it stops): the others may take those deliveries at once.
pub async fn release(c: &impl GenericClient, owner: Uuid) -> Result<u64, StoreError> {
    exec(
        c,
        "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
         WHERE lease_owner = $1 AND pending",
        &[&owner],
    )
    .await
}

/// Replaces the record of a webhook that exists, counters included; false when it does not.
/// (The engine does not call this for a shared store, whose counters are counted in place.)
pub async fn save_webhook(c: &impl GenericClient, w: &Webhook) -> Result<bool, StoreError> {
    let n = exec(
        c,
        "UPDATE webhooks SET record = $2, delivered = $3, failed = $4, retries = $5,
                    consecutive_failures = $6, last_delivered_ms = $7, last_failure_ms = $8
             WHERE id = $1",
        &WebhookRow::of(w, &w.counters)?.params(),
    )
    .await?;
    Ok(n > 0)
}

async fn notify(c: &impl GenericClient, what: &str) -> Result<(), StoreError> {
    exec(c, "SELECT pg_notify($1, $2)", &[&CHANNEL, &what])
        .await
        .map(drop)
}

/// Applies the config file's webhooks under an advisory lock, in one transaction: instances
/// that start together see each other's webhooks, so a file webhook gets one id.
pub async fn apply_webhooks(c: &mut Client, planner: &Planner) -> Result<Applied, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK]).await?;
    let stored = webhooks(&tx, None).await?;
    let WebhookPlan { put, remove } = planner.plan(&stored);
    let mut applied = Applied::default();
    for w in put {
        put_webhook(&tx, &w).await?;
        applied.put.push(w);
    }
    for w in remove {
        let dropped = delete_in(&tx, w.id).await?;
        applied.removed.push((w, dropped));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(applied)
}

/// Deletes a webhook with its deliveries and attempts; returns how many deliveries were
/// pending. The webhook's row is locked first, as recording an attempt locks it first, so the
/// two wait for each other rather than deadlock, and nothing recorded meanwhile stays behind.
pub async fn delete_webhook(c: &mut Client, id: Uuid) -> Result<usize, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    let dropped = delete_in(&tx, id).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(dropped)
}

async fn delete_in(tx: &impl GenericClient, id: Uuid) -> Result<usize, StoreError> {
    exec(
        tx,
        "SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    let pending: i64 = row(
        tx,
        "WITH gone AS (DELETE FROM deliveries WHERE webhook_id = $1 RETURNING pending)
             SELECT count(*) FILTER (WHERE pending) FROM gone",
        &[&id],
    )
    .await?
    .get(0);
    exec(tx, "DELETE FROM attempts WHERE webhook_id = $1", &[&id]).await?;
    exec(tx, "DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
    notify(tx, "webhooks").await?;
    Ok(usize::try_from(pending).unwrap_or(0))
}

/// What to lease.
pub struct Claim {
    pub webhook: Uuid,
    pub until_ms: u64,
    pub limit: usize,
    pub owner: Uuid,
    pub lease_ms: i64,
}

/// Leases up to `limit` due deliveries that no other instance holds, skipping `skip`, in
/// queue order.
pub async fn claim(
    c: &impl GenericClient,
    claim: &Claim,
    skip: &HashSet<Uuid>,
) -> Result<Vec<Delivery>, StoreError> {
    claim_in(c, claim, skip, "queue_ms, id").await
}

/// A delivery's due time, read from its record: a keyed delivery's retry keeps its early
/// queue time, and once its webhook's `ordering_key` is removed it must still wait for this.
const DUE_MS: &str = "(record->>'due_ms')::bigint";

/// The same in `order` (columns of `deliveries`). `FOR UPDATE SKIP LOCKED` lets instances
/// take different deliveries at once; in queue-head order (`seq`) a locked head must be waited
/// for, not skipped, or the next one would go first (the advisory lock of `claim_head`
/// already keeps other claimers out).
async fn claim_in(
    c: &impl GenericClient,
    claim: &Claim,
    skip: &HashSet<Uuid>,
    order: &str,
) -> Result<Vec<Delivery>, StoreError> {
    let (lock, due) = if order.starts_with("seq") {
        ("FOR UPDATE", String::new())
    } else {
        ("FOR UPDATE SKIP LOCKED", format!("AND {DUE_MS} <= $2"))
    };
    let skip: Vec<Uuid> = skip.iter().copied().collect();
    let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
    let rows = rows(c, &format!(
                "WITH c AS (
                    SELECT id FROM deliveries
                    WHERE webhook_id = $1 AND pending AND queue_ms <= $2
                      AND (lease_owner IS NULL OR lease_owner = $4 OR lease_until < hooktap_now_ms())
                      AND NOT (id = ANY($5)) {due}
                    ORDER BY {order}
                    LIMIT $3
                    {lock})
                 UPDATE deliveries d SET lease_owner = $4, lease_until = hooktap_now_ms() + $6
                 FROM c WHERE d.id = c.id
                 RETURNING d.record, d.seq"
            ),
            &[
                &claim.webhook,
                &ms(claim.until_ms),
                &limit,
                &claim.owner,
                &skip,
                &claim.lease_ms,
            ],).await?;
    let mut out: Vec<(i64, Delivery)> = rows
        .iter()
        .map(|r| Ok((r.try_get(1).map_err(pg_error)?, decode(r, 0)?)))
        .collect::<Result<_, StoreError>>()?;
    if order.starts_with("seq") {
        out.sort_by_key(|(seq, _)| *seq);
    } else {
        out.sort_by_key(|(_, d)| (d.queue_ms, d.id));
    }
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Leases the head of the queue (up to `limit`), but only while no other instance holds a
/// lease on any of the webhook's deliveries: one request at a time over all instances. The
/// queue is in the order deliveries reached the shared store: the one order all instances
/// agree on (an instance whose journal lags cannot put events before ones already sent).
pub async fn claim_head(c: &mut Client, claim: &Claim) -> Result<Vec<Delivery>, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    // Serialises the check and the lease between instances (a lock per webhook).
    exec(
        &tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&claim.webhook.to_string()],
    )
    .await?;
    let elsewhere: bool = row(
        &tx,
        "SELECT EXISTS (SELECT 1 FROM deliveries
                WHERE webhook_id = $1 AND pending AND lease_owner <> $2
                  AND lease_until >= hooktap_now_ms())",
        &[&claim.webhook, &claim.owner],
    )
    .await?
    .get(0);
    let out = if elsewhere {
        Vec::new()
    } else {
        claim_in(&tx, claim, &HashSet::new(), "seq").await?
    };
    tx.commit().await.map_err(pg_error)?;
    Ok(out)
}

/// The heads of a keyed webhook's queues (see [`crate::store::Store::claim_key_heads`]): under
/// the webhook's advisory lock (as `claim_head`), the first pending delivery of each key in
/// arrival order; those due, not in `skip` and not leased by another instance are leased here.
/// A key whose head another instance holds has nothing ready, so one delivery per key is in
/// flight over all instances.
pub async fn claim_key_heads(
    c: &mut Client,
    claim: &Claim,
    now_ms: u64,
    skip: &HashSet<Uuid>,
) -> Result<KeyHeads, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    exec(
        &tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))",
        &[&claim.webhook.to_string()],
    )
    .await?;
    // A key with any delivery in `skip` (in flight here) gives nothing, not only one whose
    // head is: a delivery put back in the queue (`requeue`) becomes its key's head again
    // while a later one of the key may be out.
    let skip_ids: Vec<Uuid> = skip.iter().copied().collect();
    let heads = rows(
        &tx,
        "SELECT id, record,
                (lease_owner IS NOT NULL AND lease_owner <> $2 AND lease_until >= hooktap_now_ms()),
                (ordering_key IS NOT NULL AND EXISTS (
                    SELECT 1 FROM deliveries s
                     WHERE s.webhook_id = $1 AND s.pending AND s.ordering_key = heads.ordering_key
                       AND s.id = ANY($3)))
           FROM (SELECT DISTINCT ON (COALESCE('k' || ordering_key, 'i' || id::text))
                        id, record, lease_owner, lease_until, seq, ordering_key
                   FROM deliveries
                  WHERE webhook_id = $1 AND pending
                  ORDER BY COALESCE('k' || ordering_key, 'i' || id::text), seq) heads
          ORDER BY seq",
        &[&claim.webhook, &claim.owner, &skip_ids],
    )
    .await?;
    let mut out = KeyHeads::default();
    for r in &heads {
        let id: Uuid = r.try_get(0).map_err(pg_error)?;
        let elsewhere: bool = r.try_get(2).map_err(pg_error)?;
        let key_in_flight: bool = r.try_get(3).map_err(pg_error)?;
        if elsewhere || key_in_flight || skip.contains(&id) {
            continue;
        }
        let d: Delivery = decode(r, 1)?;
        if d.due_ms > now_ms {
            out.next_due_ms = Some(out.next_due_ms.map_or(d.due_ms, |n| n.min(d.due_ms)));
        } else if out.ready.len() < claim.limit {
            out.ready.push(d);
        }
    }
    let ids: Vec<Uuid> = out.ready.iter().map(|d| d.id).collect();
    if !ids.is_empty() {
        exec(
            &tx,
            "UPDATE deliveries SET lease_owner = $2, lease_until = hooktap_now_ms() + $3
              WHERE id = ANY($1)",
            &[&ids, &claim.owner, &claim.lease_ms],
        )
        .await?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(out)
}

/// When the loop should look at `webhook` again: the queue time of its first queued delivery
/// that this instance may take (one walk down the queue index). Another instance's lease
/// running out is noticed by the loop's once-a-second look.
pub async fn next_queued(
    c: &impl GenericClient,
    webhook: Uuid,
    owner: Uuid,
    skip: &HashSet<Uuid>,
) -> Result<Option<u64>, StoreError> {
    let skip: Vec<Uuid> = skip.iter().copied().collect();
    let next = row_opt(
        c,
        &format!(
            "SELECT min(GREATEST(queue_ms, {DUE_MS})) FROM deliveries
             WHERE webhook_id = $1 AND pending AND NOT (id = ANY($3))
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < hooktap_now_ms())"
        ),
        &[&webhook, &owner, &skip],
    )
    .await?;
    Ok(next.and_then(|r| r.get::<_, Option<i64>>(0)).map(count))
}

pub async fn queue_stats(c: &impl GenericClient, webhook: Uuid) -> Result<QueueStats, StoreError> {
    let row = row(
        c,
        "SELECT count(*), min(created_ms) FROM deliveries WHERE webhook_id = $1 AND pending",
        &[&webhook],
    )
    .await?;
    Ok(QueueStats {
        pending: usize::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        oldest_ms: row.get::<_, Option<i64>>(1).map(count),
    })
}

/// Records one request's outcome in one statement (one round trip, one transaction): the
/// deliveries' new states (ending their leases), the attempts, and the webhook's counters as
/// increments; a webhook the engine disabled is marked disabled. The webhook's row is locked
/// first, and nothing is written when it is gone (deleted meanwhile).
pub async fn record_attempts(
    c: &mut Client,
    webhook: Uuid,
    owner: Uuid,
    changes: &[Recorded],
    record: Option<&Webhook>,
) -> Result<Recording, StoreError> {
    let ids: Vec<Uuid> = changes.iter().map(|r| r.after.id).collect();
    let records = changes
        .iter()
        .map(|r| jsonb(&r.after))
        .collect::<Result<Vec<_>, _>>()?;
    let pending: Vec<bool> = changes
        .iter()
        .map(|r| r.after.state == DeliveryState::Pending)
        .collect();
    let queue: Vec<i64> = changes.iter().map(|r| ms(r.after.queue_ms)).collect();
    let numbers: Vec<i32> = changes
        .iter()
        .map(|r| i32::try_from(r.attempt.number).unwrap_or(i32::MAX))
        .collect();
    let attempts = changes
        .iter()
        .map(|r| jsonb(&r.attempt))
        .collect::<Result<Vec<_>, _>>()?;
    // What statistics read, as columns (see V4__console.sql).
    let attempt_ms: Vec<i64> = changes
        .iter()
        .map(|r| ms(unix_ms(r.attempt.created_at)))
        .collect();
    let successes: Vec<bool> = changes.iter().map(|r| r.attempt.success).collect();
    let durations: Vec<i64> = changes.iter().map(|r| ms(r.attempt.duration_ms)).collect();
    let lags: Vec<i64> = changes
        .iter()
        .map(|r| ms(unix_ms(r.attempt.created_at).saturating_sub(unix_ms(r.before.created_at))))
        .collect();
    let change = CounterChange::of(changes);
    let disabled = record
        .filter(|w| w.status == WebhookStatus::Disabled)
        .map(|w| {
            (
                w.disabled_reason.clone().unwrap_or_default(),
                w.updated_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            )
        });
    let at = ms_of(change.at);
    let row = row_opt(
        c,
        "WITH w AS (SELECT id FROM webhooks WHERE id = $1 FOR UPDATE),
             states AS (
                UPDATE deliveries d SET record = u.record, pending = u.pending,
                       queue_ms = u.queue_ms, lease_owner = NULL, lease_until = NULL
                FROM UNNEST($10::uuid[], $11::jsonb[], $12::bool[], $13::int8[])
                     AS u(id, record, pending, queue_ms), w
                -- Fencing: only a delivery still pending and not leased to another instance
                -- (an instance whose lease ran out and was taken over records nothing).
                WHERE d.id = u.id AND d.pending
                  AND (d.lease_owner IS NULL OR d.lease_owner = $16)
                RETURNING d.id),
             logged AS (
                INSERT INTO attempts (delivery_id, number, webhook_id, record,
                                      created_ms, success, duration_ms, lag_ms)
                SELECT u.delivery_id, u.number, w.id, u.record,
                       u.created_ms, u.success, u.duration_ms, u.lag_ms
                FROM UNNEST($10::uuid[], $14::int4[], $15::jsonb[], $17::int8[], $18::bool[],
                            $19::int8[], $20::int8[])
                     AS u(delivery_id, number, record, created_ms, success, duration_ms, lag_ms)
                JOIN states ON states.id = u.delivery_id, w
                ON CONFLICT (delivery_id, number) DO UPDATE SET record = EXCLUDED.record,
                    created_ms = EXCLUDED.created_ms, success = EXCLUDED.success,
                    duration_ms = EXCLUDED.duration_ms, lag_ms = EXCLUDED.lag_ms
                RETURNING 1)
             UPDATE webhooks SET
                delivered = delivered + $2, failed = failed + $3, retries = retries + $4,
                consecutive_failures = CASE WHEN $5 THEN 0
                                            WHEN $6 THEN consecutive_failures + 1
                                            ELSE consecutive_failures END,
                last_delivered_ms = CASE WHEN $5 THEN $7 ELSE last_delivered_ms END,
                last_failure_ms = CASE WHEN NOT $5 AND $3 + $4 > 0 THEN $7 ELSE last_failure_ms END,
                record = CASE WHEN $8::text IS NOT NULL AND record->>'status' <> 'disabled'
                              THEN record || jsonb_build_object('status', 'disabled',
                                   'disabled_reason', $8::text, 'updated_at', $9::text)
                              ELSE record END
             FROM w WHERE webhooks.id = w.id
             RETURNING (SELECT count(*) FROM states) + (SELECT count(*) FROM logged),
                       delivered, failed, retries, consecutive_failures,
                       last_delivered_ms, last_failure_ms",
        &[
            &webhook,
            &ms(change.delivered),
            &ms(change.failed),
            &ms(change.retries),
            &change.success,
            &change.final_failure,
            &at,
            &disabled.as_ref().map(|d| d.0.as_str()),
            &disabled.as_ref().map(|d| d.1.as_str()),
            &ids,
            &records,
            &pending,
            &queue,
            &numbers,
            &attempts,
            &owner,
            &attempt_ms,
            &successes,
            &durations,
            &lags,
        ],
    )
    .await?;
    let Some(row) = row else {
        return Ok(Recording::Gone);
    };
    if disabled.is_some() {
        notify(&*c, "webhooks").await?;
    }
    Ok(Recording::Shared(counters_at(&row, 1)))
}

/// Puts a delivery back in the queue, due at `now_ms`, with a fresh retry schedule.
pub async fn requeue(
    c: &impl GenericClient,
    delivery: &Delivery,
    now_ms: u64,
) -> Result<Delivery, StoreError> {
    let mut d = delivery.clone();
    d.state = DeliveryState::Pending;
    d.schedule_start = d.attempts;
    d.due_ms = now_ms;
    d.queue_ms = crate::store::requeued_at(delivery, now_ms);
    d.updated_at = OffsetDateTime::now_utc();
    exec(
        c,
        "UPDATE deliveries SET record = $2, pending = true, queue_ms = $3,
                lease_owner = NULL, lease_until = NULL
         WHERE id = $1",
        &[&d.id, &jsonb(&d)?, &ms(d.queue_ms)],
    )
    .await?;
    notify(c, "work").await?;
    Ok(d)
}

pub async fn event(c: &impl GenericClient, id: Uuid) -> Result<Option<Event>, StoreError> {
    let row = row_opt(c, "SELECT record FROM events WHERE id = $1", &[&id]).await?;
    row.map(|r| decode(&r, 0)).transpose()
}

/// Events newest first, filtered; the topic glob is applied here, page by page.
pub async fn events_page(c: &impl GenericClient, q: &EventQuery) -> Result<Vec<Event>, StoreError> {
    const CHUNK: i64 = 500;
    let mut out = Vec::new();
    if q.limit == 0 {
        return Ok(out);
    }
    let since = q.since.map_or(i64::MIN, |t| ms(unix_ms(t)));
    let until = q.until.map_or(i64::MAX, |t| ms(unix_ms(t)));
    let mut skipped = 0;
    let mut searched = 0;
    // Keyset pagination: (created_ms, id) of the last row seen.
    let mut before: (i64, Uuid) = (i64::MAX, Uuid::max());
    loop {
        let rows = rows(
            c,
            "SELECT record, created_ms, id FROM events
                 WHERE created_ms >= $1 AND created_ms < $2 AND (created_ms, id) < ($3, $4)
                 ORDER BY created_ms DESC, id DESC LIMIT $5",
            &[&since, &until, &before.0, &before.1, &CHUNK],
        )
        .await?;
        for r in &rows {
            before = (r.get(1), r.get(2));
            let e: Event = decode(r, 0)?;
            if q.topic.as_ref().is_some_and(|g| !g.is_match(&e.topic)) {
                continue;
            }
            if q.text.is_some() {
                // Matched here, on the decoded payload, as the sled store does: jsonb's own
                // text (its key order and spacing) is not the payload's JSON text.
                if searched >= MAX_TEXT_SCAN {
                    return Ok(out);
                }
                searched += 1;
                if !q.text_matches(&e.payload) {
                    continue;
                }
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            out.push(e);
            if out.len() >= q.limit {
                return Ok(out);
            }
        }
        if i64::try_from(rows.len()).unwrap_or(0) < CHUNK {
            return Ok(out);
        }
    }
}

pub async fn delivery(c: &impl GenericClient, id: Uuid) -> Result<Option<Delivery>, StoreError> {
    let row = row_opt(c, "SELECT record FROM deliveries WHERE id = $1", &[&id]).await?;
    row.map(|r| decode(&r, 0)).transpose()
}

pub async fn deliveries_of(
    c: &impl GenericClient,
    webhook: Uuid,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let rows = rows(
        c,
        "SELECT record FROM deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
        &[&webhook, &i64::try_from(limit).unwrap_or(i64::MAX)],
    )
    .await?;
    rows.iter().map(|r| decode(r, 0)).collect()
}

/// An event's deliveries, oldest first.
pub async fn deliveries_of_event(
    c: &impl GenericClient,
    event: Uuid,
) -> Result<Vec<Delivery>, StoreError> {
    let rows = rows(
        c,
        "SELECT record FROM deliveries WHERE event_id = $1 ORDER BY id",
        &[&event],
    )
    .await?;
    rows.iter().map(|r| decode(r, 0)).collect()
}

/// A webhook's attempts over a window, per bucket and in total, aggregated by PostgreSQL
/// (`GROUPING SETS`, `percentile_disc`) from the `attempts_by_time` index: one row per bucket
/// with attempts and one for the window.
pub async fn attempt_stats(
    c: &impl GenericClient,
    webhook: Uuid,
    window: &StatsWindow,
) -> Result<AttemptStats, StoreError> {
    let rows = rows(
        c,
        "SELECT (created_ms - $2) / $3 AS bucket,
                count(*) FILTER (WHERE success), count(*) FILTER (WHERE NOT success),
                percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms),
                percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms),
                percentile_disc(0.5) WITHIN GROUP (ORDER BY lag_ms),
                percentile_disc(0.99) WITHIN GROUP (ORDER BY lag_ms),
                GROUPING((created_ms - $2) / $3)
         FROM attempts
         WHERE webhook_id = $1 AND created_ms >= $2 AND created_ms < $4
         GROUP BY GROUPING SETS (((created_ms - $2) / $3), ())",
        &[
            &webhook,
            &ms(window.since_ms),
            &ms(window.bucket_ms.max(1)),
            &ms(window.until_ms()),
        ],
    )
    .await?;
    let mut stats = AttemptStats {
        buckets: vec![AttemptBucket::default(); window.buckets],
        totals: AttemptBucket::default(),
    };
    for r in &rows {
        let bucket = AttemptBucket {
            succeeded: count(r.get(1)),
            failed: count(r.get(2)),
            p50_ms: r.get::<_, Option<i64>>(3).map(count),
            p99_ms: r.get::<_, Option<i64>>(4).map(count),
            lag_p50_ms: r.get::<_, Option<i64>>(5).map(count),
            lag_p99_ms: r.get::<_, Option<i64>>(6).map(count),
        };
        if r.get::<_, i32>(7) == 1 {
            stats.totals = bucket;
        } else if let Some(slot) = r
            .get::<_, Option<i64>>(0)
            .and_then(|b| usize::try_from(b).ok())
            .and_then(|b| stats.buckets.get_mut(b))
        {
            *slot = bucket;
        }
    }
    Ok(stats)
}

/// A webhook's most recent failed attempt at or after `since_ms`.
pub async fn last_failure(
    c: &impl GenericClient,
    webhook: Uuid,
    since_ms: u64,
) -> Result<Option<Attempt>, StoreError> {
    let row = row_opt(
        c,
        "SELECT record FROM attempts
         WHERE webhook_id = $1 AND created_ms >= $2 AND NOT success
         ORDER BY created_ms DESC, delivery_id DESC, number DESC LIMIT 1",
        &[&webhook, &ms(since_ms)],
    )
    .await?;
    row.map(|r| decode(&r, 0)).transpose()
}

pub async fn attempts(c: &impl GenericClient, delivery: Uuid) -> Result<Vec<Attempt>, StoreError> {
    let rows = rows(
        c,
        "SELECT record FROM attempts WHERE delivery_id = $1 ORDER BY number",
        &[&delivery],
    )
    .await?;
    rows.iter().map(|r| decode(r, 0)).collect()
}

/// Moves journalled events and their deliveries in, in one transaction. Ids already there
/// are left alone (a batch moved before a crash is moved again), and deliveries to a webhook
/// deleted meanwhile are dropped.
pub async fn insert_events(
    c: &mut Client,
    entries: &[crate::store::sled::Entry],
) -> Result<usize, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&SHIP_LOCK]).await?;
    // Dedupe claims first: an event whose key another instance holds is a repeat.
    let mut keys = Vec::new();
    let mut claimants = Vec::new();
    let mut ends = Vec::new();
    for e in entries {
        if let Some((key, until)) = &e.dedupe {
            let hex = key.hex();
            // One claim per key and batch (a second would be the same row twice); a later
            // event with the same key passed its own journal's window, so it stands.
            if !keys.contains(&hex) {
                keys.push(hex);
                claimants.push(e.event.id);
                ends.push(ms(*until));
            }
        }
    }
    let mut repeats = std::collections::HashSet::new();
    if !keys.is_empty() {
        let granted: std::collections::HashSet<Uuid> = tx
            .query(
                "INSERT INTO dedupe_keys (key, event_id, ends_ms)
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int8[])
                 ON CONFLICT (key) DO UPDATE
                   SET event_id = EXCLUDED.event_id, ends_ms = EXCLUDED.ends_ms
                   WHERE dedupe_keys.ends_ms <= hooktap_now_ms()
                      OR dedupe_keys.event_id = EXCLUDED.event_id
                 RETURNING event_id",
                &[&keys, &claimants, &ends],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get::<_, Uuid>(0))
            .collect();
        repeats.extend(claimants.into_iter().filter(|id| !granted.contains(id)));
    }
    let entries: Vec<&crate::store::sled::Entry> = entries
        .iter()
        .filter(|e| !repeats.contains(&e.event.id))
        .collect();
    let event_ids: Vec<Uuid> = entries.iter().map(|e| e.event.id).collect();
    let created: Vec<i64> = entries
        .iter()
        .map(|e| ms(unix_ms(e.event.created_at)))
        .collect();
    let events = entries
        .iter()
        .map(|e| jsonb(&e.event))
        .collect::<Result<Vec<_>, _>>()?;
    let all: Vec<&Delivery> = entries.iter().flat_map(|e| &e.deliveries).collect();
    let ids: Vec<Uuid> = all.iter().map(|d| d.id).collect();
    let of_event: Vec<Uuid> = all.iter().map(|d| d.event_id).collect();
    let webhook: Vec<Uuid> = all.iter().map(|d| d.webhook_id).collect();
    let d_created: Vec<i64> = all.iter().map(|d| ms(unix_ms(d.created_at))).collect();
    let queue: Vec<i64> = all.iter().map(|d| ms(d.queue_ms)).collect();
    let records = all
        .iter()
        .map(|d| jsonb(*d))
        .collect::<Result<Vec<_>, _>>()?;

    exec(
        &tx,
        "INSERT INTO events (id, created_ms, record)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::jsonb[])
         ON CONFLICT (id) DO NOTHING",
        &[&event_ids, &created, &events],
    )
    .await?;
    if !ids.is_empty() {
        exec(&tx, "INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record, ordering_key)
             SELECT u.id, u.event_id, u.webhook_id, u.created_ms, true, u.queue_ms, u.record, u.record->>'ordering_key'
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::int8[], $6::jsonb[])
                  WITH ORDINALITY AS u(id, event_id, webhook_id, created_ms, queue_ms, record, n)
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = u.webhook_id FOR KEY SHARE)
             ORDER BY u.n
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &of_event, &webhook, &d_created, &queue, &records],).await?;
        notify(&tx, "work").await?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(repeats.len())
}

/// The retention sweep, run by one instance per period: removes every event created before
/// `cutoff` none of whose deliveries is pending, with its deliveries and their attempts, and
/// deliveries left behind by a webhook deleted while they were being moved in.
pub async fn sweep(c: &mut Client, cutoff: OffsetDateTime) -> Result<Swept, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    let due = exec(
        &tx,
        "INSERT INTO hooktap_state (key, value) VALUES ('last_sweep_ms', hooktap_now_ms())
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
             WHERE hooktap_state.value < hooktap_now_ms() - $1",
        &[&SWEEP_EVERY_MS],
    )
    .await?;
    if due == 0 {
        // Another instance swept within the period.
        tx.commit().await.map_err(pg_error)?;
        return Ok(Swept::default());
    }
    let cutoff = ms(unix_ms(cutoff));
    let row = row(&tx, "WITH old AS (
                SELECT e.id FROM events e
                WHERE e.created_ms < $1
                  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.pending)),
             gone_deliveries AS (
                DELETE FROM deliveries d USING old WHERE d.event_id = old.id RETURNING d.id),
             gone_attempts AS (
                DELETE FROM attempts a USING gone_deliveries g WHERE a.delivery_id = g.id
                RETURNING 1),
             gone_events AS (
                DELETE FROM events e USING old WHERE e.id = old.id RETURNING 1)
             SELECT (SELECT count(*) FROM gone_events), (SELECT count(*) FROM gone_deliveries),
                    (SELECT count(*) FROM gone_attempts)",
            &[&cutoff],).await?;
    exec(
        &tx,
        "DELETE FROM deliveries d WHERE d.created_ms < $1
           AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.id = d.webhook_id)",
        &[&cutoff],
    )
    .await?;
    exec(
        &tx,
        "DELETE FROM dedupe_keys WHERE ends_ms <= hooktap_now_ms()",
        &[],
    )
    .await?;
    tx.commit().await.map_err(pg_error)?;
    let n = |i: usize| usize::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(Swept {
        events: n(0),
        deliveries: n(1),
        attempts: n(2),
    })
}
