//! `/webhooks/{id}/stats` and `/overview`: how deliveries are going, per minute, from the
//! store's own records (the attempt log, through the store's index by webhook and time), so
//! every instance sharing a store shows the same figures. Nothing here comes from the
//! in-memory metrics or from anywhere outside hooktap.
//!
//! Every handler reads and answers the types its `#[utoipa::path]` names, so the OpenAPI
//! document is derived from what the handlers use.

use axum::Json;
use axum::extract::{Path, State};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AdminState, ApiError, Q};
use crate::event::unix_ms;
use crate::store::{AttemptBucket, StatsWindow, Store, StoreError};
use crate::webhook::{Webhook, WebhookStatus};

/// One minute: the width of every bucket.
const BUCKET_MS: u64 = 60_000;
/// How far back `last_error` looks, whatever the window: a day.
const LAST_ERROR_MS: u64 = 24 * 60 * 60 * 1000;

/// Which stretch of time the statistics cover, up to the current minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    /// The last 60 minutes (60 buckets).
    #[default]
    Hour,
    /// The last 1,440 minutes (1,440 buckets).
    Day,
}

impl Span {
    fn buckets(self) -> usize {
        match self {
            Span::Hour => 60,
            Span::Day => 1440,
        }
    }

    /// The window ending with the current minute (the last bucket is the minute under way).
    fn window(self, now: OffsetDateTime) -> StatsWindow {
        let until = (unix_ms(now) / BUCKET_MS + 1) * BUCKET_MS;
        let buckets = self.buckets();
        StatsWindow {
            since_ms: until.saturating_sub(BUCKET_MS * buckets as u64),
            bucket_ms: BUCKET_MS,
            buckets,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// `hour` (the default) or `day`.
    #[serde(default)]
    window: Span,
}

/// One minute of a webhook's attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsBucket {
    /// The minute's start.
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    /// Attempts answered 2xx.
    succeeded: u64,
    /// Attempts that failed (a retry or the last one).
    failed: u64,
    /// The receiver's response time (an attempt's `duration_ms`), median; `null` without
    /// attempts.
    p50_ms: Option<u64>,
    p99_ms: Option<u64>,
    /// From the event's creation to the attempt's end, median; `null` without attempts.
    lag_p50_ms: Option<u64>,
    lag_p99_ms: Option<u64>,
}

/// The whole window's attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsTotals {
    succeeded: u64,
    failed: u64,
    p50_ms: Option<u64>,
    p99_ms: Option<u64>,
    lag_p50_ms: Option<u64>,
    lag_p99_ms: Option<u64>,
}

impl From<&AttemptBucket> for StatsTotals {
    fn from(b: &AttemptBucket) -> Self {
        Self {
            succeeded: b.succeeded,
            failed: b.failed,
            p50_ms: b.p50_ms,
            p99_ms: b.p99_ms,
            lag_p50_ms: b.lag_p50_ms,
            lag_p99_ms: b.lag_p99_ms,
        }
    }
}

/// The most recent failed attempt of the last day.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastError {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    /// `HTTP 500 Internal Server Error: ...`, or the transport error.
    summary: String,
    /// The delivery it belongs to.
    delivery_id: Uuid,
}

/// How a webhook's deliveries went, minute by minute.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookStats {
    webhook_id: Uuid,
    window: Span,
    /// Always 60.
    bucket_seconds: u32,
    /// The first bucket's start.
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// The last bucket's end (the end of the current minute).
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
    /// Dense, oldest first: 60 for an hour, 1,440 for a day.
    buckets: Vec<StatsBucket>,
    totals: StatsTotals,
    /// Deliveries waiting to be sent now (retries included).
    #[schema(format = UInt64)]
    pending: usize,
    last_error: Option<LastError>,
}

fn time_of_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

async fn last_error(
    store: &dyn Store,
    webhook: Uuid,
    now: OffsetDateTime,
) -> Result<Option<LastError>, StoreError> {
    let since = unix_ms(now).saturating_sub(LAST_ERROR_MS);
    Ok(store
        .last_failure(webhook, since)
        .await?
        .map(|a| LastError {
            at: a.created_at,
            summary: a.summary,
            delivery_id: a.delivery_id,
        }))
}

#[utoipa::path(get, operation_id = "webhook_stats", path = "/webhooks/{id}/stats", tag = "webhooks",
    summary = "Attempts per minute over the last hour or day: successes, failures, response time and lag",
    params(("id" = Uuid, Path, description = "The webhook's id"), StatsQuery),
    responses((status = 200, body = WebhookStats)))]
pub async fn stats(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    Q(query): Q<StatsQuery>,
) -> Result<Json<WebhookStats>, ApiError> {
    let id = Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("webhook"))?;
    let engine = state.live.engine();
    if engine.webhook(id).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let store = engine.store();
    let now = OffsetDateTime::now_utc();
    let window = query.window.window(now);
    let stats = store.attempt_stats(id, &window).await?;
    let buckets = stats
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| StatsBucket {
            start: time_of_ms(window.since_ms + BUCKET_MS * i as u64),
            succeeded: b.succeeded,
            failed: b.failed,
            p50_ms: b.p50_ms,
            p99_ms: b.p99_ms,
            lag_p50_ms: b.lag_p50_ms,
            lag_p99_ms: b.lag_p99_ms,
        })
        .collect();
    Ok(Json(WebhookStats {
        webhook_id: id,
        window: query.window,
        bucket_seconds: 60,
        since: time_of_ms(window.since_ms),
        until: time_of_ms(window.until_ms()),
        buckets,
        totals: StatsTotals::from(&stats.totals),
        pending: store.queue_stats(id).await?.pending,
        last_error: last_error(store.as_ref(), id, now).await?,
    }))
}

/// Which store backend holds the data.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    Sled,
    Postgres,
}

/// The store at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreOverview {
    backend: BackendName,
    /// Whether events go into the store now (not waiting in `pending/`).
    ready: bool,
    /// Deliveries waiting to be sent, over every webhook.
    #[schema(format = UInt64)]
    pending: usize,
    /// PostgreSQL: events in this instance's local journal not yet moved in; `null` for sled.
    journal_backlog: Option<u64>,
    /// PostgreSQL: whether it answered the last time it was asked; `null` for sled.
    journal_connected: Option<bool>,
    /// Appends that failed since start (events lost to a failing store).
    failed_appends: u64,
}

/// The last hour per minute, oldest first (60 each).
#[derive(Debug, Serialize, ToSchema)]
pub struct Sparkline {
    succeeded: Vec<u64>,
    failed: Vec<u64>,
}

/// One webhook's health at a glance: the last hour.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookHealth {
    id: Uuid,
    name: String,
    /// Credentials masked.
    url: String,
    status: WebhookStatus,
    #[schema(format = UInt64)]
    pending: usize,
    /// Attempts in the last hour.
    succeeded: u64,
    failed: u64,
    /// The receiver's response time over the last hour; `null` without attempts.
    p99_ms: Option<u64>,
    last_error: Option<LastError>,
    sparkline: Sparkline,
}

/// Everything the overview page shows, in one answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    store: StoreOverview,
    /// Oldest first.
    webhooks: Vec<WebhookHealth>,
}

async fn health(
    state: &AdminState,
    w: &Webhook,
    window: &StatsWindow,
    now: OffsetDateTime,
) -> Result<WebhookHealth, StoreError> {
    let store = state.live.engine().store();
    let stats = store.attempt_stats(w.id, window).await?;
    let view = state.live.engine().view(w);
    Ok(WebhookHealth {
        id: w.id,
        name: view.name,
        url: view.url,
        status: view.status,
        pending: store.queue_stats(w.id).await?.pending,
        succeeded: stats.totals.succeeded,
        failed: stats.totals.failed,
        p99_ms: stats.totals.p99_ms,
        last_error: last_error(store.as_ref(), w.id, now).await?,
        sparkline: Sparkline {
            succeeded: stats.buckets.iter().map(|b| b.succeeded).collect(),
            failed: stats.buckets.iter().map(|b| b.failed).collect(),
        },
    })
}

/// How many webhooks' statistics `/overview` reads at a time.
const OVERVIEW_READS_AT_ONCE: usize = 4;

#[utoipa::path(get, operation_id = "overview", path = "/overview", tag = "webhooks",
    summary = "Every webhook's last hour per minute, and the store's backlog: the overview page in one answer",
    responses((status = 200, body = Overview)))]
pub async fn overview(State(state): State<AdminState>) -> Result<Json<Overview>, ApiError> {
    let engine = state.live.engine();
    let now = OffsetDateTime::now_utc();
    let window = Span::Hour.window(now);
    let mut webhooks = engine.webhooks();
    webhooks.sort_by_key(|w| w.created_at);
    // A few webhooks at a time, in order: each costs the store three reads, and all of them
    // at once would queue a burst as long as the webhook list on the store's threads.
    // (The futures are made first: a closure in the stream would not be `Send` for axum.)
    let reads: Vec<_> = webhooks
        .iter()
        .map(|w| health(&state, w, &window, now))
        .collect();
    let healths: Vec<WebhookHealth> = futures_util::stream::iter(reads)
        .buffered(OVERVIEW_READS_AT_ONCE)
        .try_collect()
        .await?;
    let store = engine.store();
    let journal = store.journal();
    Ok(Json(Overview {
        store: StoreOverview {
            backend: if store.shared() {
                BackendName::Postgres
            } else {
                BackendName::Sled
            },
            ready: store.is_ready(),
            pending: healths.iter().map(|h| h.pending).sum(),
            journal_backlog: journal.map(|j| j.backlog),
            journal_connected: journal.map(|j| j.connected),
            failed_appends: store.failed_appends(),
        },
        webhooks: healths,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_ends_with_the_current_minute() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_030).expect("time");
        let w = Span::Hour.window(now);
        assert_eq!(
            w.until_ms(),
            1_700_000_040_000,
            "the end of the minute under way"
        );
        assert_eq!(w.since_ms, 1_700_000_040_000 - 3_600_000);
        assert_eq!(
            w.bucket_of(unix_ms(now)),
            Some(59),
            "now is in the last bucket"
        );
        assert_eq!(Span::Day.window(now).buckets, 1440);
    }
}
