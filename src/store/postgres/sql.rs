//! The queries of the PostgreSQL backend. Each function is one round of work on one
//! connection; those that write more than one row run in one transaction.

use std::collections::HashSet;

use bytes::{BufMut, BytesMut};
use deadpool_postgres::{Client, GenericClient};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, Json, ToSql, Type, accepts, to_sql_checked};
use uuid::Uuid;

use super::pg_error;
use crate::event::{Attempt, Delivery, DeliveryState, Event, unix_ms};
use crate::store::{
    Applied, AttemptBucket, AttemptStats, CounterChange, DeliveryPage, DeliveryQuery, EventQuery,
    KeyHeads, MAX_TEXT_SCAN, Planner, QueueStats, Recorded, Recording, Replaced, StatsWindow,
    StoreError, Swept, WebhookPlan,
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

/// The first column of every row, as uuids.
async fn ids(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(rows(c, sql, params)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.execute(&statement, params).await.map_err(pg_error)
}

/// A record serialised for a `json` (or `jsonb`) parameter: its JSON text, sent as it is.
///
/// PostgreSQL's `jsonb` cannot hold the character U+0000, and `->>` cannot read it out of a
/// `json` text (a NUL in a captured body or a receiver's answer would make every write or read
/// of that record fail, jamming the journal or the delivery; and an older hooktap's `jsonb`
/// parameters are cast to the `json` columns), so it becomes U+FFFD, as invalid UTF-8 in a
/// body already does. Records are
/// written straight to text; only one whose text holds the escape `\u0000` (serde_json writes
/// a NUL so) is rebuilt as a tree and cleaned: the others skip building a `serde_json::Value`
/// per record, which was most of the cost of preparing an outcome.
#[derive(Debug)]
pub struct Jsonb(Vec<u8>);

impl ToSql for Jsonb {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The binary format's version of `jsonb`: 1, then the text.
            out.put_u8(1);
        }
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

fn jsonb<T: serde::Serialize>(record: &T) -> Result<Jsonb, StoreError> {
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
    let text = serde_json::to_vec(record)?;
    // Also found inside an escaped backslash followed by `u0000`: cleaned for nothing then.
    if !text.windows(6).any(|w| w == b"\\u0000") {
        return Ok(Jsonb(text));
    }
    let mut value = serde_json::to_value(record)?;
    clean(&mut value);
    Ok(Jsonb(serde_json::to_vec(&value)?))
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
    record: Jsonb,
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

/// A webhook from a `WEBHOOK_COLUMNS, version` row.
fn webhook_of(row: &Row) -> Webhook {
    let Json(mut w): Json<Webhook> = row.get(0);
    w.counters = counters_at(row, 1);
    w.version = count(row.get(7));
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
                &format!("SELECT {WEBHOOK_COLUMNS}, version FROM webhooks ORDER BY id"),
                &[],
            )
            .await
        }
        Some(id) => {
            c.query(
                &format!("SELECT {WEBHOOK_COLUMNS}, version FROM webhooks WHERE id = $1"),
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

/// Creates or replaces a webhook's record (moving its version on); returns the version
/// stored. Its counters are written when it is created; afterwards they stay as counted.
pub async fn put_webhook(c: &impl GenericClient, w: &Webhook) -> Result<u64, StoreError> {
    let fields = WebhookRow::of(w, &w.counters)?;
    let version = ms(w.version);
    let mut params = fields.params().to_vec();
    params.push(&version);
    let version = row(
        c,
        &format!(
            "INSERT INTO webhooks (id, {WEBHOOK_COLUMNS}, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record,
                                            version = webhooks.version + 1
             RETURNING version"
        ),
        &params,
    )
    .await?
    .get(0);
    notify(c, "webhooks").await?;
    Ok(count(version))
}

/// Writes a webhook with its counters and version unless one with its id is there (an import
/// run again); whether it was written.
pub async fn insert_webhook(c: &impl GenericClient, w: &Webhook) -> Result<bool, StoreError> {
    let fields = WebhookRow::of(w, &w.counters)?;
    let version = ms(w.version);
    let mut params = fields.params().to_vec();
    params.push(&version);
    let n = exec(
        c,
        &format!(
            "INSERT INTO webhooks (id, {WEBHOOK_COLUMNS}, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO NOTHING"
        ),
        &params,
    )
    .await?;
    if n > 0 {
        notify(c, "webhooks").await?;
    }
    Ok(n > 0)
}

/// Replaces the record of a webhook that exists and is still at `w.version`, not its
/// counters.
pub async fn replace_webhook(c: &impl GenericClient, w: &Webhook) -> Result<Replaced, StoreError> {
    let r = row(
        c,
        "WITH replaced AS (
            UPDATE webhooks SET record = $2, version = version + 1
            WHERE id = $1 AND version = $3
            RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM replaced), EXISTS (SELECT 1 FROM webhooks WHERE id = $1)",
        &[&w.id, &jsonb(w)?, &ms(w.version)],
    )
    .await?;
    let (replaced, there): (bool, bool) = (r.get(0), r.get(1));
    if replaced {
        notify(c, "webhooks").await?;
        Ok(Replaced::Done)
    } else if there {
        Ok(Replaced::Stale)
    } else {
        Ok(Replaced::Gone)
    }
}

/// Zeroes a webhook's counters (its record is left as it is).
pub async fn reset_counters(c: &impl GenericClient, id: Uuid) -> Result<(), StoreError> {
    let n = exec(
        c,
        "UPDATE webhooks SET delivered = 0, failed = 0, retries = 0, consecutive_failures = 0,
                last_delivered_ms = NULL, last_failure_ms = NULL
         WHERE id = $1",
        &[&id],
    )
    .await?;
    if n > 0 {
        notify(c, "webhooks").await?;
    }
    Ok(())
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
                    consecutive_failures = $6, last_delivered_ms = $7, last_failure_ms = $8,
                    version = version + 1
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
/// that start together see each other's webhooks, so a file webhook gets one id. The stored
/// webhooks are read under their row locks: a change made meanwhile through another instance
/// (a pause, a failure-threshold disable, all version-checked) waits for the commit and then
/// finds its copy stale, rather than being overwritten by a plan made before it.
pub async fn apply_webhooks(c: &mut Client, planner: &Planner) -> Result<Applied, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK]).await?;
    // Locked first, read after: the read (a statement of its own) sees every change committed
    // before the locks were granted.
    exec(&tx, "SELECT 1 FROM webhooks ORDER BY id FOR UPDATE", &[]).await?;
    let stored = webhooks(&tx, None).await?;
    let WebhookPlan { put, remove } = planner.plan(&stored);
    let mut applied = Applied::default();
    for mut w in put {
        w.version = put_webhook(&tx, &w).await?;
        applied.put.push(w);
    }
    for w in remove {
        let dropped = delete_in(&tx, w.id).await?;
        applied.removed.push((w, dropped));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(applied)
}

/// Starts deleting a webhook (see [`delete_in`]); returns how many of its deliveries were
/// pending. Its history is then removed by [`delete_part`].
pub async fn delete_webhook(c: &mut Client, id: Uuid) -> Result<usize, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    let dropped = delete_in(&tx, id).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(dropped)
}

/// Removes a webhook's row and marks it in `webhook_deletions`, in the caller's transaction;
/// returns how many of its deliveries were pending (0 for a webhook that is not there). The
/// row is locked first, as recording an attempt locks it first, so the two wait for each
/// other rather than deadlock. Once the row is gone nothing more is written for the webhook
/// (recording joins its row, moving journals in checks it, claiming checks it), so its
/// deliveries and attempts can be removed afterwards in parts of bounded size
/// ([`delete_part`]), each a transaction of its own: one transaction over a long history
/// would run into `statement_timeout` (60 s at ~20M deliveries) and hold its locks and WAL
/// meanwhile.
async fn delete_in(tx: &impl GenericClient, id: Uuid) -> Result<usize, StoreError> {
    let there = exec(
        tx,
        "SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    if there == 0 {
        return Ok(0);
    }
    let pending: i64 = row(
        tx,
        "SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND pending",
        &[&id],
    )
    .await?
    .get(0);
    exec(
        tx,
        "INSERT INTO webhook_deletions (webhook_id, since_ms) VALUES ($1, hooktap_now_ms())
         ON CONFLICT (webhook_id) DO NOTHING",
        &[&id],
    )
    .await?;
    exec(tx, "DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
    notify(tx, "webhooks").await?;
    Ok(usize::try_from(pending).unwrap_or(0))
}

/// Set in the transaction of a part of a deletion or of the retention sweep, whose rows go
/// by their ids: the planner reads a table whole for `id = ANY($1)` once the array holds a
/// few per cent of it (10,000 of 200,000 rows here, which made each part a scan of the
/// table), where the index finds each row; off, it takes the index.
const BY_INDEX: &str = "SET LOCAL enable_seqscan = off";

/// How many rows one part of a deletion removes at most (~50 ms of PostgreSQL's time).
pub const DELETE_PART: i64 = 10_000;

/// Removes up to `part` of deleted webhook `id`'s deliveries with their attempts, those with
/// ids after `after` (in id order, through `deliveries_by_webhook`: each part starts where
/// the last ended rather than walking the index entries of the rows removed before it); once
/// they are gone, up to `part` attempts left without a delivery. Returns where the next part
/// starts, or `None` once nothing is left and the webhook's mark in `webhook_deletions` is
/// removed. Each part is a transaction of its own; parts run by two instances at once (or a
/// part and the retention sweep) remove different rows or nothing, and an id list whose
/// rows another transaction removed first still moves the next part on.
///
/// The rows go by their ids (`= ANY`), each table through its own index ([`BY_INDEX`]).
pub async fn delete_part(
    c: &mut Client,
    id: Uuid,
    after: Uuid,
    part: i64,
) -> Result<Option<Uuid>, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    tx.batch_execute(BY_INDEX).await.map_err(pg_error)?;
    let ids = ids(
        &tx,
        "SELECT id FROM deliveries WHERE webhook_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        &[&id, &after, &part],
    )
    .await?;
    let next = if let Some(&last) = ids.last() {
        exec(
            &tx,
            "DELETE FROM attempts WHERE delivery_id = ANY($1)",
            &[&ids],
        )
        .await?;
        exec(&tx, "DELETE FROM deliveries WHERE id = ANY($1)", &[&ids]).await?;
        Some(last)
    } else {
        let n = exec(
            &tx,
            "DELETE FROM attempts WHERE (delivery_id, number) IN
                (SELECT delivery_id, number FROM attempts WHERE webhook_id = $1 LIMIT $2)",
            &[&id, &part],
        )
        .await?;
        if n == 0 {
            exec(
                &tx,
                "DELETE FROM webhook_deletions WHERE webhook_id = $1",
                &[&id],
            )
            .await?;
            None
        } else {
            Some(after)
        }
    };
    tx.commit().await.map_err(pg_error)?;
    Ok(next)
}

/// Runs [`delete_part`] until webhook `id`'s history is gone.
pub async fn delete_parts(c: &mut Client, id: Uuid, part: i64) -> Result<(), StoreError> {
    let mut after = Uuid::nil();
    while let Some(next) = delete_part(c, id, after, part).await? {
        after = next;
    }
    Ok(())
}

/// The webhooks whose history is to be removed: deletions not finished (cut short by a crash,
/// a lost connection or a failed part), and webhooks that have deliveries but no row (left
/// by a deletion before `webhook_deletions`, or by an older hooktap), which are marked here.
/// A mark whose webhook is there again (moved in anew with `migrate --from-sled --force`) is
/// dropped: its history is its own.
pub async fn unfinished_deletions(c: &impl GenericClient) -> Result<Vec<Uuid>, StoreError> {
    exec(
        c,
        "DELETE FROM webhook_deletions x USING webhooks w WHERE w.id = x.webhook_id",
        &[],
    )
    .await?;
    // The webhooks of `deliveries`, one index descent each (a loose index scan).
    exec(
        c,
        "INSERT INTO webhook_deletions (webhook_id, since_ms)
         WITH RECURSIVE w(id) AS (
             (SELECT webhook_id FROM deliveries ORDER BY webhook_id LIMIT 1)
           UNION ALL
             SELECT (SELECT webhook_id FROM deliveries WHERE webhook_id > w.id
                      ORDER BY webhook_id LIMIT 1)
               FROM w WHERE w.id IS NOT NULL)
         SELECT id, hooktap_now_ms() FROM w
          WHERE id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM webhooks x WHERE x.id = w.id)
         ON CONFLICT (webhook_id) DO NOTHING",
        &[],
    )
    .await?;
    ids(
        c,
        "SELECT webhook_id FROM webhook_deletions ORDER BY since_ms",
        &[],
    )
    .await
}

/// What to lease.
pub struct Claim {
    pub webhook: Uuid,
    pub until_ms: u64,
    pub limit: usize,
    pub owner: Uuid,
    pub lease_ms: i64,
}

/// A leased delivery and its event, read in the same statement (`None`: not there).
pub type Leased = (Delivery, Option<Event>);

/// Leases up to `limit` due deliveries that no other instance holds, skipping `skip`, in
/// queue order.
pub async fn claim(
    c: &impl GenericClient,
    claim: &Claim,
    skip: &HashSet<Uuid>,
) -> Result<Vec<Leased>, StoreError> {
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
) -> Result<Vec<Leased>, StoreError> {
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
                      -- A deleted webhook's deliveries stay until its deletion's parts remove them.
                      AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = $1)
                    ORDER BY {order}
                    LIMIT $3
                    {lock})
                 UPDATE deliveries d SET lease_owner = $4, lease_until = hooktap_now_ms() + $6
                 FROM c WHERE d.id = c.id
                 RETURNING d.record, d.seq,
                           (SELECT e.record FROM events e WHERE e.id = d.event_id)"
            ),
            &[
                &claim.webhook,
                &ms(claim.until_ms),
                &limit,
                &claim.owner,
                &skip,
                &claim.lease_ms,
            ],).await?;
    let mut out: Vec<(i64, Leased)> = rows
        .iter()
        .map(|r| {
            let event = match r.try_get::<_, Option<Json<Event>>>(2) {
                Ok(e) => e.map(|Json(e)| e),
                // Read again on its own, where a record that does not decode is reported.
                Err(_) => None,
            };
            Ok((r.try_get(1).map_err(pg_error)?, (decode(r, 0)?, event)))
        })
        .collect::<Result<_, StoreError>>()?;
    if order.starts_with("seq") {
        out.sort_by_key(|(seq, _)| *seq);
    } else {
        out.sort_by_key(|(_, (d, _))| (d.queue_ms, d.id));
    }
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// Leases the head of the queue (up to `limit`), but only while no other instance holds a
/// lease on any of the webhook's deliveries: one request at a time over all instances. The
/// queue is in the order deliveries reached the shared store: the one order all instances
/// agree on (an instance whose journal lags cannot put events before ones already sent).
pub async fn claim_head(c: &mut Client, claim: &Claim) -> Result<Vec<Leased>, StoreError> {
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
                    AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = $1)
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

/// When the loop should look at `webhook` again: the earliest time at which one of its queued
/// deliveries that this instance may take is both queued and due. Another instance's lease
/// running out is noticed by the loop's once-a-second look.
///
/// Two short walks down the queue index rather than a look at every pending delivery (whose
/// records would all be read): the first delivery in queue order gives a time `t` (its due
/// time, at least its queue time), and only deliveries queued by `t` can come earlier (a
/// delivery's time is never before its queue time). Usually `t` is the first's queue time and
/// the second walk stops at once; a retry that kept its place (keyed, or ordered before
/// `ordering_key` was removed) is due later than it is queued, and the walk goes on to `t`.
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
            "WITH first AS (
                SELECT GREATEST(queue_ms, {DUE_MS}) AS at FROM deliveries
                 WHERE webhook_id = $1 AND pending AND NOT (id = ANY($3))
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < hooktap_now_ms())
                 ORDER BY queue_ms, id
                 LIMIT 1)
             SELECT min(GREATEST(d.queue_ms, (d.record->>'due_ms')::bigint))
               FROM deliveries d, first
              WHERE d.webhook_id = $1 AND d.pending AND d.queue_ms <= first.at
                AND NOT (d.id = ANY($3))
                AND (d.lease_owner IS NULL OR d.lease_owner = $2
                     OR d.lease_until < hooktap_now_ms())"
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

/// One request's outcome, ready to be recorded (see [`record_many`]): built by the caller, so
/// that turning records into JSON happens on its threads, not the store's.
pub struct Outcome {
    webhook: Uuid,
    /// The counter change (see [`CounterChange`]).
    delivered: i64,
    failed: i64,
    retries: i64,
    at: Option<i64>,
    /// The webhook was disabled by this request: why and when (RFC 3339).
    disable: Option<(String, String)>,
    ids: Vec<Uuid>,
    records: Vec<Jsonb>,
    pending: Vec<bool>,
    queue: Vec<i64>,
    numbers: Vec<i32>,
    attempts: Vec<Jsonb>,
    /// What statistics read, as columns (see V4__console.sql): when each attempt was made,
    /// whether it succeeded, how long it took, and how long after its delivery was created.
    attempt_ms: Vec<i64>,
    successes: Vec<bool>,
    durations: Vec<i64>,
    lags: Vec<i64>,
}

impl Outcome {
    /// The outcome of one request to `webhook`; `record`: the engine's copy of the webhook,
    /// given when the request disabled it.
    pub fn of(
        webhook: Uuid,
        changes: &[Recorded],
        record: Option<&Webhook>,
    ) -> Result<Self, StoreError> {
        let change = CounterChange::of(changes);
        let disable = record
            .filter(|w| w.status == WebhookStatus::Disabled)
            .map(|w| {
                (
                    w.disabled_reason.clone().unwrap_or_default(),
                    w.updated_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                )
            });
        Ok(Self {
            webhook,
            delivered: ms(change.delivered),
            failed: ms(change.failed),
            retries: ms(change.retries),
            at: ms_of(change.at),
            disable,
            ids: changes.iter().map(|r| r.after.id).collect(),
            records: changes
                .iter()
                .map(|r| jsonb(&r.after))
                .collect::<Result<_, _>>()?,
            pending: changes
                .iter()
                .map(|r| r.after.state == DeliveryState::Pending)
                .collect(),
            queue: changes.iter().map(|r| ms(r.after.queue_ms)).collect(),
            numbers: changes
                .iter()
                .map(|r| i32::try_from(r.attempt.number).unwrap_or(i32::MAX))
                .collect(),
            attempts: changes
                .iter()
                .map(|r| jsonb(&r.attempt))
                .collect::<Result<_, _>>()?,
            attempt_ms: changes
                .iter()
                .map(|r| ms(unix_ms(r.attempt.created_at)))
                .collect(),
            successes: changes.iter().map(|r| r.attempt.success).collect(),
            durations: changes.iter().map(|r| ms(r.attempt.duration_ms)).collect(),
            lags: changes
                .iter()
                .map(|r| {
                    ms(unix_ms(r.attempt.created_at).saturating_sub(unix_ms(r.before.created_at)))
                })
                .collect(),
        })
    }

    /// How many deliveries it records.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Why [`record_many`] failed.
#[derive(Debug)]
pub enum RecordError {
    /// PostgreSQL rejected the statement: nothing of it was written.
    Rejected(StoreError),
    /// No connection, or the connection broke: what was written is not known.
    Failed(StoreError),
}

impl RecordError {
    pub fn into_store(self) -> StoreError {
        match self {
            Self::Rejected(e) | Self::Failed(e) => e,
        }
    }
}

/// Records many requests' outcomes in one statement (one round trip, one transaction), in
/// their order: the deliveries' new states (ending their leases), the attempts, and each
/// webhook's counters; a webhook a request disabled is marked disabled. The webhooks' rows
/// are locked first (`FOR NO KEY UPDATE`, in id order, so that batches of several instances
/// wait for each other rather than deadlock, and journals moving in are not held up), and
/// nothing is written for a webhook that is gone (deleted meanwhile): its requests come back
/// [`Recording::Gone`]. Each request gets the counters as they are after it, counted in order
/// as [`crate::webhook::Counters::apply`] counts (a success ends a run of consecutive failures
/// within the batch too), so the failure threshold sees every request.
pub async fn record_many(
    c: &impl GenericClient,
    owner: Uuid,
    outcomes: &[Outcome],
) -> Result<Vec<Recording>, RecordError> {
    let n = outcomes.len();
    let req: Vec<i32> = (0..n)
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let webhook: Vec<Uuid> = outcomes.iter().map(|o| o.webhook).collect();
    let delivered: Vec<i64> = outcomes.iter().map(|o| o.delivered).collect();
    let failed: Vec<i64> = outcomes.iter().map(|o| o.failed).collect();
    let retries: Vec<i64> = outcomes.iter().map(|o| o.retries).collect();
    let at: Vec<Option<i64>> = outcomes.iter().map(|o| o.at).collect();
    let disable: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.disable.as_ref().map(|d| d.0.as_str()))
        .collect();
    let updated: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| o.disable.as_ref().map(|d| d.1.as_str()))
        .collect();
    let of_req: Vec<i32> = outcomes
        .iter()
        .zip(&req)
        .flat_map(|(o, r)| std::iter::repeat_n(*r, o.len()))
        .collect();
    let ids: Vec<Uuid> = outcomes
        .iter()
        .flat_map(|o| o.ids.iter().copied())
        .collect();
    let records: Vec<&Jsonb> = outcomes.iter().flat_map(|o| o.records.iter()).collect();
    let pending: Vec<bool> = outcomes
        .iter()
        .flat_map(|o| o.pending.iter().copied())
        .collect();
    let queue: Vec<i64> = outcomes
        .iter()
        .flat_map(|o| o.queue.iter().copied())
        .collect();
    let numbers: Vec<i32> = outcomes
        .iter()
        .flat_map(|o| o.numbers.iter().copied())
        .collect();
    let attempts: Vec<&Jsonb> = outcomes.iter().flat_map(|o| o.attempts.iter()).collect();
    let flat_i64 = |f: fn(&Outcome) -> &Vec<i64>| -> Vec<i64> {
        outcomes.iter().flat_map(|o| f(o).iter().copied()).collect()
    };
    let attempt_ms = flat_i64(|o| &o.attempt_ms);
    let durations = flat_i64(|o| &o.durations);
    let lags = flat_i64(|o| &o.lags);
    let successes: Vec<bool> = outcomes
        .iter()
        .flat_map(|o| o.successes.iter().copied())
        .collect();
    let statement = c.prepare_cached(RECORD_MANY).await.map_err(record_error)?;
    let rows = c
        .query(
            &statement,
            &[
                &req,
                &webhook,
                &delivered,
                &failed,
                &retries,
                &at,
                &disable,
                &updated,
                &of_req,
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
        .await
        .map_err(record_error)?;
    let mut out = vec![Recording::Gone; n];
    let mut disabled = false;
    for r in &rows {
        let i: i32 = r.try_get(0).map_err(|e| RecordError::Failed(pg_error(e)))?;
        let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) else {
            continue;
        };
        *slot = Recording::Shared(counters_at(r, 1));
        disabled |= outcomes[usize::try_from(i).unwrap_or(0)].disable.is_some();
    }
    if disabled {
        notify(c, "webhooks").await.map_err(RecordError::Failed)?;
    }
    Ok(out)
}

/// A failed statement: rejected by the server (rolled back), or of unknown fate.
fn record_error(e: tokio_postgres::Error) -> RecordError {
    if e.code().is_some() {
        RecordError::Rejected(pg_error(e))
    } else {
        RecordError::Failed(pg_error(e))
    }
}

/// The statement of [`record_many`]. `r`: the requests; `u`: their deliveries. The counters
/// after each request: sums of the changes so far, and the consecutive failures since the
/// webhook's last success (`since` numbers the successes so far: a request after the `k`th
/// counts the final failures since it, one before any counts on from the stored value).
const RECORD_MANY: &str = "
WITH r AS MATERIALIZED (
    SELECT * FROM UNNEST($1::int4[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[],
                         $6::int8[], $7::text[], $8::text[])
        AS r(req, webhook_id, delivered, failed, retries, at, disable, updated)),
w AS MATERIALIZED (
    SELECT id, delivered, failed, retries, consecutive_failures,
           last_delivered_ms, last_failure_ms
      FROM webhooks WHERE id IN (SELECT webhook_id FROM r)
     ORDER BY id
       FOR NO KEY UPDATE),
u AS MATERIALIZED (
    SELECT u.*, r.webhook_id
      FROM UNNEST($9::int4[], $10::uuid[], $11::json[], $12::bool[], $13::int8[],
                  $14::int4[], $15::json[], $17::int8[], $18::bool[], $19::int8[],
                  $20::int8[])
           AS u(req, id, record, pending, queue_ms, number, attempt, created_ms, success,
                duration_ms, lag_ms)
      JOIN r ON r.req = u.req
      JOIN w ON w.id = r.webhook_id),
states AS (
    UPDATE deliveries d SET record = u.record, pending = u.pending, queue_ms = u.queue_ms,
           lease_owner = NULL, lease_until = NULL
      FROM u
    -- Fencing: only a delivery still pending and not leased to another instance (an
    -- instance whose lease ran out and was taken over records nothing).
     WHERE d.id = u.id AND d.webhook_id = u.webhook_id AND d.pending
       AND (d.lease_owner IS NULL OR d.lease_owner = $16)
    RETURNING d.id),
logged AS (
    INSERT INTO attempts (delivery_id, number, webhook_id, record,
                          created_ms, success, duration_ms, lag_ms)
    SELECT u.id, u.number, u.webhook_id, u.attempt,
           u.created_ms, u.success, u.duration_ms, u.lag_ms
      FROM u JOIN states ON states.id = u.id
    ON CONFLICT (delivery_id, number) DO UPDATE SET record = EXCLUDED.record,
        created_ms = EXCLUDED.created_ms, success = EXCLUDED.success,
        duration_ms = EXCLUDED.duration_ms, lag_ms = EXCLUDED.lag_ms
    RETURNING 1),
-- A request whose deliveries were all fenced out (its lease was taken over) changes no
-- counter: the instance that took the delivery over counts its own attempt.
kept AS (
    SELECT r.req, r.webhook_id, r.at, r.disable, r.updated,
           CASE WHEN k.req IS NULL THEN 0 ELSE r.delivered END AS delivered,
           CASE WHEN k.req IS NULL THEN 0 ELSE r.failed END AS failed,
           CASE WHEN k.req IS NULL THEN 0 ELSE r.retries END AS retries
      FROM r LEFT JOIN (SELECT DISTINCT u.req FROM u JOIN states ON states.id = u.id) k
        ON k.req = r.req),
runs AS (
    SELECT kept.*, count(*) FILTER (WHERE kept.delivered > 0)
                     OVER (PARTITION BY kept.webhook_id ORDER BY kept.req) AS since
      FROM kept),
after AS (
    SELECT x.req, x.webhook_id,
           (w.delivered + sum(x.delivered) OVER run)::int8 AS delivered,
           (w.failed + sum(x.failed) OVER run)::int8 AS failed,
           (w.retries + sum(x.retries) OVER run)::int8 AS retries,
           CASE WHEN x.since = 0 THEN w.consecutive_failures ELSE 0 END
             + count(*) FILTER (WHERE x.delivered = 0 AND x.failed > 0)
                 OVER (PARTITION BY x.webhook_id, x.since ORDER BY x.req)
             AS consecutive_failures,
           COALESCE(max(x.at) FILTER (WHERE x.delivered > 0) OVER run,
                    w.last_delivered_ms) AS last_delivered_ms,
           COALESCE(max(x.at) FILTER (WHERE x.delivered = 0 AND x.failed + x.retries > 0)
                      OVER run,
                    w.last_failure_ms) AS last_failure_ms
      FROM runs x JOIN w ON w.id = x.webhook_id
    WINDOW run AS (PARTITION BY x.webhook_id ORDER BY x.req)),
last AS (
    SELECT DISTINCT ON (webhook_id) * FROM after ORDER BY webhook_id, req DESC),
disabling AS (
    SELECT DISTINCT ON (webhook_id) webhook_id, disable, updated FROM r
     WHERE disable IS NOT NULL ORDER BY webhook_id, req),
saved AS (
    UPDATE webhooks SET
           delivered = last.delivered, failed = last.failed, retries = last.retries,
           consecutive_failures = last.consecutive_failures,
           last_delivered_ms = last.last_delivered_ms, last_failure_ms = last.last_failure_ms,
           record = CASE WHEN disabling.disable IS NOT NULL
                              AND webhooks.record->>'status' <> 'disabled'
                         THEN webhooks.record || jsonb_build_object('status', 'disabled',
                              'disabled_reason', disabling.disable,
                              'updated_at', disabling.updated)
                         ELSE webhooks.record END,
           -- Disabling is a change of the record: a copy read before it is stale.
           version = CASE WHEN disabling.disable IS NOT NULL
                               AND webhooks.record->>'status' <> 'disabled'
                          THEN webhooks.version + 1 ELSE webhooks.version END
      FROM last LEFT JOIN disabling ON disabling.webhook_id = last.webhook_id
     WHERE webhooks.id = last.webhook_id
    RETURNING 1)
SELECT req, delivered, failed, retries, consecutive_failures, last_delivered_ms,
       last_failure_ms, (SELECT count(*) FROM logged), (SELECT count(*) FROM saved)
  FROM after";

/// What [`requeue`] did.
pub enum Requeue {
    Done(Delivery),
    /// Another instance's lease on it still runs: it is being sent now.
    InFlight,
    /// Not in PostgreSQL (deleted, or still in an instance's journal).
    Missing,
}

/// Puts delivery `id` back in the queue, due at `now_ms`, with a fresh retry schedule: built
/// on its record as stored, under the row's lock, so an attempt recorded meanwhile is kept.
/// Nothing is written when it is missing or another instance's lease on it still runs.
///
/// A lease that ran out (its holder may still be sending: paused, partitioned) or this
/// instance's own is handed to no one (the nil owner, run out at 0): the delivery can be
/// claimed at once, and the holder's late outcome is fenced out by `record_many` (which
/// records only for the lease's owner or a delivery with no owner), so it cannot overwrite
/// the requeue. The holder's send then counts as one more delivery of the same id.
pub async fn requeue(
    c: &mut Client,
    owner: Uuid,
    id: Uuid,
    now_ms: u64,
) -> Result<Requeue, StoreError> {
    let tx = c.transaction().await.map_err(pg_error)?;
    let Some(r) = row_opt(
        &tx,
        "SELECT record, lease_owner,
                lease_owner IS NOT NULL AND lease_owner <> $2 AND lease_until >= hooktap_now_ms()
         FROM deliveries WHERE id = $1
          AND EXISTS (SELECT FROM webhooks w WHERE w.id = deliveries.webhook_id)
         FOR UPDATE",
        &[&id, &owner],
    )
    .await?
    else {
        return Ok(Requeue::Missing);
    };
    let (held, in_flight): (Option<Uuid>, bool) = (r.get(1), r.get(2));
    if in_flight {
        return Ok(Requeue::InFlight);
    }
    let d = crate::store::requeued(&decode::<Delivery>(&r, 0)?, now_ms);
    exec(
        &tx,
        "UPDATE deliveries SET record = $2, pending = true, queue_ms = $3,
                lease_owner = $4, lease_until = CASE WHEN $4::uuid IS NULL THEN NULL ELSE 0 END
         WHERE id = $1",
        &[
            &d.id,
            &jsonb(&d)?,
            &ms(d.queue_ms),
            &held.map(|_| Uuid::nil()),
        ],
    )
    .await?;
    notify(&tx, "work").await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(Requeue::Done(d))
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
            if q.text.is_some() {
                // Every event read counts toward the cap, also those the topic drops (as in
                // the sled store): a rare topic must not make a search read the whole table.
                if searched >= MAX_TEXT_SCAN {
                    return Ok(out);
                }
                searched += 1;
            }
            let e: Event = decode(r, 0)?;
            if q.topic.as_ref().is_some_and(|g| !g.is_match(&e.topic)) {
                continue;
            }
            if q.text.is_some() {
                // Matched here, on the decoded payload, as the sled store does: the text of
                // an event stored before V8 is jsonb's (its key order and spacing), not the
                // payload's JSON text.
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

/// One page of `webhook`'s deliveries, newest first (through `deliveries_by_webhook`), and
/// how many match in all, counted up to `q.count_up_to` (one more is counted, to tell "more
/// than"): both read in one snapshot (a read-only repeatable-read transaction), so that the
/// page and the total agree.
pub async fn deliveries_page(
    c: &mut Client,
    webhook: Uuid,
    q: &DeliveryQuery,
) -> Result<DeliveryPage, StoreError> {
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    let c = &tx;
    let state = q.state.map(state_text);
    let total: i64 = row(
        c,
        "SELECT count(*) FROM (SELECT FROM deliveries
         WHERE webhook_id = $1 AND ($2::text IS NULL OR record->>'state' = $2) LIMIT $3) m",
        &[
            &webhook,
            &state,
            &i64::try_from(q.count_up_to.saturating_add(1)).unwrap_or(i64::MAX),
        ],
    )
    .await?
    .get(0);
    let rows = rows(
        c,
        "SELECT record FROM deliveries
         WHERE webhook_id = $1 AND ($2::text IS NULL OR record->>'state' = $2)
         ORDER BY id DESC OFFSET $3 LIMIT $4",
        &[
            &webhook,
            &state,
            &i64::try_from(q.offset).unwrap_or(i64::MAX),
            &i64::try_from(q.limit).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    let items = rows
        .iter()
        .map(|r| decode(r, 0))
        .collect::<Result<_, _>>()?;
    tx.commit().await.map_err(pg_error)?;
    Ok(DeliveryPage {
        items,
        total: u64::try_from(total).ok().filter(|&n| n <= q.count_up_to),
    })
}

/// `webhook`'s failed deliveries created in `[since, until)`, newest first. `created_ms` is
/// the creation time cut to the millisecond: the window is widened to whole milliseconds in
/// the statement and applied exactly to the records read.
pub async fn failed_deliveries(
    c: &impl GenericClient,
    webhook: Uuid,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Vec<Delivery>, StoreError> {
    let ms = |t: OffsetDateTime| i64::try_from(unix_ms(t)).unwrap_or(i64::MAX);
    let rows = rows(
        c,
        "SELECT record FROM deliveries
         WHERE webhook_id = $1 AND record->>'state' = $2 AND created_ms >= $3 AND created_ms <= $4
         ORDER BY id DESC",
        &[
            &webhook,
            &state_text(DeliveryState::Failed),
            &ms(since),
            &ms(until),
        ],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let d: Delivery = decode(r, 0)?;
        if d.created_at >= since && d.created_at < until {
            out.push(d);
        }
    }
    Ok(out)
}

/// A state as delivery records spell it.
fn state_text(state: DeliveryState) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{state:?}").to_lowercase(),
    }
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
/// are left alone (a batch moved before a crash is moved again); a webhook that has a
/// delivery of the event already gets no second one (an event held in `pending/` is stored
/// again after its journal moved it in and forgot it, with deliveries under new ids: a second
/// would reach the receiver as a second message); deliveries to a webhook deleted meanwhile
/// are dropped.
pub async fn insert_events(
    c: &mut Client,
    entries: &[crate::store::sled::Entry],
) -> Result<usize, StoreError> {
    insert_entries(c, entries).await.map(|i| i.repeats)
}

/// What [`insert_entries`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Events dropped as repeats of another instance's (their dedupe key was taken).
    pub repeats: usize,
    /// Events written now (not there already).
    pub events: usize,
    /// Deliveries written now (not there already, their webhook there).
    pub deliveries: usize,
}

/// [`insert_events`], saying how many rows it wrote.
pub async fn insert_entries(
    c: &mut Client,
    entries: &[crate::store::sled::Entry],
) -> Result<Inserted, StoreError> {
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
    // A key journalled raw before keys were bounded at intake (over MAX_ORDERING_KEY bytes)
    // would not fit the key index, and the batch would fail again and again: bound it here.
    let all: Vec<std::borrow::Cow<'_, Delivery>> = entries
        .iter()
        .flat_map(|e| &e.deliveries)
        .map(|d| match &d.ordering_key {
            Some(k) if k.len() > crate::webhook::MAX_ORDERING_KEY => {
                let mut d = d.clone();
                d.ordering_key = d
                    .ordering_key
                    .take()
                    .map(crate::webhook::bounded_ordering_key);
                std::borrow::Cow::Owned(d)
            }
            _ => std::borrow::Cow::Borrowed(d),
        })
        .collect();
    let ids: Vec<Uuid> = all.iter().map(|d| d.id).collect();
    let of_event: Vec<Uuid> = all.iter().map(|d| d.event_id).collect();
    let webhook: Vec<Uuid> = all.iter().map(|d| d.webhook_id).collect();
    let d_created: Vec<i64> = all.iter().map(|d| ms(unix_ms(d.created_at))).collect();
    let queue: Vec<i64> = all.iter().map(|d| ms(d.queue_ms)).collect();
    let records = all
        .iter()
        .map(|d| jsonb(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;

    let new_events = exec(
        &tx,
        "INSERT INTO events (id, created_ms, record)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::json[])
         ON CONFLICT (id) DO NOTHING",
        &[&event_ids, &created, &events],
    )
    .await?;
    let mut new_deliveries = 0;
    if !ids.is_empty() {
        new_deliveries = exec(&tx, "INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record, ordering_key)
             SELECT u.id, u.event_id, u.webhook_id, u.created_ms, true, u.queue_ms, u.record, u.record->>'ordering_key'
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::int8[], $6::json[])
                  WITH ORDINALITY AS u(id, event_id, webhook_id, created_ms, queue_ms, record, n)
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = u.webhook_id FOR KEY SHARE)
               AND NOT EXISTS (SELECT 1 FROM deliveries x
                               WHERE x.event_id = u.event_id AND x.webhook_id = u.webhook_id)
             ORDER BY u.n
             ON CONFLICT (id) DO NOTHING",
            &[&ids, &of_event, &webhook, &d_created, &queue, &records],).await?;
        notify(&tx, "work").await?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(Inserted {
        repeats: repeats.len(),
        events: usize::try_from(new_events).unwrap_or(usize::MAX),
        deliveries: usize::try_from(new_deliveries).unwrap_or(usize::MAX),
    })
}

/// How many expired events one transaction of the retention sweep removes at most (with
/// their deliveries and attempts).
pub const SWEEP_PART: i64 = 5_000;

/// The retention sweep, run by one instance per period: removes every event created before
/// `cutoff` none of whose deliveries is pending, with its deliveries and their attempts.
/// (Deliveries of a deleted webhook go with its deletion: see [`unfinished_deletions`].)
///
/// Events go oldest first, at most `part` per transaction: the first sweep of a large store
/// (or the first after a long stop) removes millions of rows, which one transaction would
/// do past `statement_timeout`, failing every period again. Each part reads at most `part`
/// expired events and continues after the last one it read, so events kept for a pending
/// delivery are read once.
pub async fn sweep(c: &mut Client, cutoff: OffsetDateTime, part: i64) -> Result<Swept, StoreError> {
    let due = exec(
        &*c,
        "INSERT INTO hooktap_state (key, value) VALUES ('last_sweep_ms', hooktap_now_ms())
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
             WHERE hooktap_state.value < hooktap_now_ms() - $1",
        &[&SWEEP_EVERY_MS],
    )
    .await?;
    if due == 0 {
        // Another instance swept within the period.
        return Ok(Swept::default());
    }
    let cutoff = ms(unix_ms(cutoff));
    let mut swept = Swept::default();
    let mut after: (i64, Uuid) = (i64::MIN, Uuid::nil());
    loop {
        let tx = c.transaction().await.map_err(pg_error)?;
        // Planned for this cutoff (the session plans generically): the expired slice of
        // `events` is a range of its time index; a plan made without the value would assume a
        // third of the table.
        tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
            .await
            .map_err(pg_error)?;
        tx.batch_execute(BY_INDEX).await.map_err(pg_error)?;
        // A part reads at most `part` expired events, those kept for a pending delivery
        // among them (a paused webhook's backlog can be millions long).
        let scanned = rows(
            &tx,
            "SELECT id, created_ms FROM events
              WHERE created_ms < $1 AND (created_ms, id) > ($2, $3)
              ORDER BY created_ms, id
              LIMIT $4",
            &[&cutoff, &after.0, &after.1, &part],
        )
        .await?;
        let Some(last) = scanned.last() else {
            tx.commit().await.map_err(pg_error)?;
            break;
        };
        after = (last.get(1), last.get(0));
        let scanned: Vec<Uuid> = scanned.iter().map(|r| r.get(0)).collect();
        let held: HashSet<Uuid> = ids(
            &tx,
            "SELECT event_id FROM deliveries WHERE event_id = ANY($1) AND pending",
            &[&scanned],
        )
        .await?
        .into_iter()
        .collect();
        let events: Vec<Uuid> = scanned
            .iter()
            .copied()
            .filter(|e| !held.contains(e))
            .collect();
        // By ids, each table through its own index ([`BY_INDEX`]).
        let deliveries = ids(
            &tx,
            "SELECT id FROM deliveries WHERE event_id = ANY($1)",
            &[&events],
        )
        .await?;
        let attempts = exec(
            &tx,
            "DELETE FROM attempts WHERE delivery_id = ANY($1)",
            &[&deliveries],
        )
        .await?;
        let gone_deliveries = exec(
            &tx,
            "DELETE FROM deliveries WHERE id = ANY($1)",
            &[&deliveries],
        )
        .await?;
        let gone_events = exec(&tx, "DELETE FROM events WHERE id = ANY($1)", &[&events]).await?;
        tx.commit().await.map_err(pg_error)?;
        let n = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        swept.events += n(gone_events);
        swept.deliveries += n(gone_deliveries);
        swept.attempts += n(attempts);
        if i64::try_from(scanned.len()).unwrap_or(i64::MAX) < part {
            break;
        }
    }
    exec(
        &*c,
        "DELETE FROM dedupe_keys WHERE ends_ms <= hooktap_now_ms()",
        &[],
    )
    .await?;
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(j: &Jsonb) -> String {
        String::from_utf8(j.0.clone()).expect("UTF-8")
    }

    #[test]
    fn records_are_sent_as_their_json_text_with_nuls_replaced() {
        let plain = serde_json::json!({"a": "b", "n": [1, 2]});
        assert_eq!(text(&jsonb(&plain).expect("plain")), plain.to_string());

        let nul = serde_json::json!({"body": "x\u{0}y", "k\u{0}": ["\u{0}"]});
        let cleaned: serde_json::Value =
            serde_json::from_str(&text(&jsonb(&nul).expect("nul"))).expect("JSON");
        assert_eq!(
            cleaned,
            serde_json::json!({"body": "x\u{fffd}y", "k\u{fffd}": ["\u{fffd}"]})
        );

        // A backslash followed by `u0000` is text, not a NUL: kept as it is.
        let escaped = serde_json::json!({"body": "\\u0000"});
        let kept: serde_json::Value =
            serde_json::from_str(&text(&jsonb(&escaped).expect("escaped"))).expect("JSON");
        assert_eq!(kept, escaped);
    }
}
