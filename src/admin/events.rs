//! `/events`, `/rules`, the live stream, reload, metrics and health.
//!
//! Every handler reads and answers the types its `#[utoipa::path]` names, so the OpenAPI
//! document is derived from what the handlers use.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};

use super::{AdminState, ApiError, Page, Q};
use crate::event::{Attempt, Delivery, Event};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// A glob over topics, like a webhook's `topics` entries.
    #[param(min_length = 1)]
    topic: Option<String>,
    /// Only events created at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    /// Only events created before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    /// Only events whose payload's JSON text contains this, ignoring case. A search reads at
    /// most the newest 10,000 events, whatever their topic.
    #[param(min_length = 1, max_length = 1000)]
    q: Option<String>,
}

/// The payload search, lower-cased; empty is refused like `topic`.
fn search_text(q: Option<&str>) -> Result<Option<String>, ApiError> {
    match q {
        Some("") => Err(ApiError::invalid("q", "q must not be empty")),
        Some(q) if q.chars().count() > 1000 => {
            Err(ApiError::invalid("q", "q must be at most 1000 characters"))
        }
        Some(q) => Ok(Some(q.to_lowercase())),
        None => Ok(None),
    }
}

/// The `topic` glob, compiled. An empty one is refused like every empty query value: it
/// could match no topic, and is more likely a client's unset variable than a wish for nothing.
fn topic_matcher(topic: Option<&str>) -> Result<Option<globset::GlobMatcher>, ApiError> {
    topic
        .map(|t| {
            if t.is_empty() {
                return Err(ApiError::invalid("topic", "topic must not be empty"));
            }
            globset::Glob::new(t)
                .map(|g| g.compile_matcher())
                .map_err(|e| {
                    ApiError::invalid("topic", format!("topic pattern `{t}` is invalid: {e}"))
                })
        })
        .transpose()
}

#[utoipa::path(get, operation_id = "list_events", path = "/events", tag = "events", summary = "Derived events, newest first; `q` searches the payloads",
    params(EventFilter, Page), responses((status = 200, body = [Event])))]
pub async fn list(
    State(state): State<AdminState>,
    Q(filter): Q<EventFilter>,
    Q(page): Q<Page>,
) -> Result<Json<Vec<crate::event::Event>>, ApiError> {
    let (offset, limit) = page.check()?;
    let topic = topic_matcher(filter.topic.as_deref())?;
    let query = crate::store::EventQuery {
        topic,
        since: filter.since,
        until: filter.until,
        text: search_text(filter.q.as_deref())?,
        offset,
        limit,
    };
    let events = state.live.engine().store().events_page(&query).await?;
    Ok(Json(events))
}

#[utoipa::path(get, operation_id = "get_event", path = "/events/{id}", tag = "events", summary = "Get an event",
    params(("id" = uuid::Uuid, Path, description = "The event's id")), responses((status = 200, body = Event)))]
pub async fn get(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<crate::event::Event>, ApiError> {
    let id = uuid::Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("event"))?;
    let event = state
        .live
        .engine()
        .store()
        .event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    Ok(Json(event))
}

/// One delivery of an event, with its webhook's name and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDelivery {
    delivery: Delivery,
    /// `null` when the webhook was deleted meanwhile.
    webhook_name: Option<String>,
    /// First attempt first: requests and responses with headers and bodies.
    attempts: Vec<Attempt>,
}

#[utoipa::path(get, operation_id = "get_event_deliveries", path = "/events/{id}/deliveries", tag = "events",
    summary = "An event's deliveries to every webhook, oldest first, each with its attempts",
    params(("id" = uuid::Uuid, Path, description = "The event's id")), responses((status = 200, body = [EventDelivery])))]
pub async fn deliveries(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Vec<EventDelivery>>, ApiError> {
    let id = uuid::Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("event"))?;
    let engine = state.live.engine();
    let store = engine.store();
    if store.event(id).await?.is_none() {
        return Err(ApiError::not_found("event"));
    }
    let mut out = Vec::new();
    for delivery in store.deliveries_of_event(id).await? {
        out.push(EventDelivery {
            webhook_name: engine.webhook(delivery.webhook_id).map(|w| w.spec.name),
            attempts: store.attempts(delivery.id).await?,
            delivery,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamFilter {
    /// A glob over topics, like a webhook's `topics` entries.
    #[param(min_length = 1)]
    topic: Option<String>,
}

/// Server-sent events: one `event` message (JSON) per stored event, as it is stored.
#[utoipa::path(get, operation_id = "stream_events", path = "/events/stream", tag = "events",
    summary = "Server-sent events: one `event` message per stored event (and `lagged` with the number missed by a slow reader)",
    params(StreamFilter),
    responses((status = 200, content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AdminState>,
    Q(filter): Q<StreamFilter>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let topic = topic_matcher(filter.topic.as_deref())?;
    let rx = state.live.engine().tap();
    let events = futures_util::stream::unfold((rx, topic), |(mut rx, topic)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if topic.as_ref().is_none_or(|t| t.is_match(&e.topic)) => {
                    let msg = SseEvent::default()
                        .event("event")
                        .json_data(&*e)
                        .unwrap_or_default();
                    return Some((Ok(msg), (rx, topic)));
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    let msg = SseEvent::default().event("lagged").data(n.to_string());
                    return Some((Ok(msg), (rx, topic)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A loaded rule and how many events it produced.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleSummary {
    name: String,
    topic: String,
    /// Empty when the rule accepts any method.
    methods: Vec<String>,
    path: String,
    /// Events produced since hooktap started.
    events: u64,
    /// Events not derived since start because their dedupe key was seen within the window.
    deduplicated: u64,
    /// What the rule does beyond method, path and topic, in a few words each: a CEL `when`,
    /// `for_each`, `dedupe`. A computed topic shows as its expression in `topic`.
    features: Vec<String>,
}

#[utoipa::path(get, operation_id = "list_rules", path = "/rules", tag = "rules",
    summary = "The loaded rules and how many events each produced",
    responses((status = 200, body = [RuleSummary])))]
pub async fn rules(State(state): State<AdminState>) -> Json<Vec<RuleSummary>> {
    let rules = state.live.rules().load();
    let metrics = state.live.engine().metrics();
    Json(
        rules
            .rules()
            .iter()
            .map(|r| RuleSummary {
                name: r.name.clone(),
                topic: r.topic.as_str().to_owned(),
                methods: r.methods.iter().map(ToString::to_string).collect(),
                path: r.path.clone(),
                events: metrics.events_of_rule(&r.name),
                deduplicated: metrics.deduplicated_of(&r.name),
                features: r.features(),
            })
            .collect(),
    )
}

/// What a reload loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    reloaded: bool,
    #[schema(format = UInt64)]
    rules: usize,
    #[schema(format = UInt64)]
    webhooks: usize,
    /// `[name, dropped pending deliveries]` of each file-declared webhook that left the file.
    #[schema(value_type = Vec<RemovedPair>)]
    removed: Vec<(String, usize)>,
}

/// The schema of a `(String, usize)` as `removed` holds it: a `[name, number]` array. (utoipa
/// derives `prefixItems` for a tuple, which schemathesis 4 cannot check answers against.)
pub struct RemovedPair;

impl utoipa::PartialSchema for RemovedPair {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, Object, OneOfBuilder, Type};
        ArrayBuilder::new()
            .items(
                OneOfBuilder::new()
                    .item(Object::with_type(Type::String))
                    .item(Object::with_type(Type::Integer)),
            )
            .min_items(Some(2))
            .max_items(Some(2))
            .description(Some("`[name, dropped pending deliveries]`"))
            .into()
    }
}

impl ToSchema for RemovedPair {}

#[utoipa::path(post, operation_id = "reload", path = "/reload", tag = "rules",
    summary = "Reload rules and file-declared webhooks (422 invalid_config keeps the running ones)",
    responses((status = 200, body = Reloaded)))]
pub async fn reload(State(state): State<AdminState>) -> Result<Json<Reloaded>, ApiError> {
    match state.live.reload().await {
        Ok(r) => Ok(Json(Reloaded {
            reloaded: true,
            rules: r.rules,
            webhooks: r.webhooks,
            removed: r.removed,
        })),
        Err(e @ crate::live::ReloadError::Invalid(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )),
        // Not the operator's config: the details stay in the log (see `Live::reload`).
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the configuration is valid but could not be applied; see hooktap's log",
        )),
    }
}

#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "meta", summary = "Prometheus metrics (text exposition)",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let d = state.live.engine();
    // Metrics matter most when the store fails: serve them anyway, with the queue gauges as
    // last read and `store_up` at 0.
    let queue = d.refresh_queue_metrics().await;
    if let Err(e) = &queue {
        tracing::debug!(error = %e, "queue metrics not refreshed");
    }
    d.metrics().store_up(queue.is_ok() && d.store().is_ready());
    if let Some(j) = d.store().journal() {
        d.metrics().journal(j.backlog, j.behind.as_secs_f64());
    }
    if let Some(b) = d.store().barrier() {
        d.metrics().barrier(b.syncs, b.writes);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics().encode(),
    )
        .into_response())
}

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    status: Alive,
}

/// Always `ok`: an answer means the admin API is alive.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Alive {
    Ok,
}

/// Alive whenever the admin API answers.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "meta", security(),
    summary = "Alive (no token needed)",
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// The answer of `/readyz`: which part is ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// The proxy's `listen` address accepts a TCP connection within one second.
    proxy: bool,
    /// The store is open and answers a read.
    store: bool,
}

/// Ready when the proxy accepts connections and the store answers.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "meta", security(),
    summary = "Ready: proxy listening and store open (no token needed; 503 when not)",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AdminState>) -> (StatusCode, Json<Readiness>) {
    let proxy = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(state.proxy_addr),
    )
    .await
    .is_ok_and(|c| c.is_ok());
    let store = state.live.engine().store();
    // For a shared store, `ping` reaches PostgreSQL too.
    let store = store.is_ready() && store.ping().await.is_ok();
    let status = if proxy && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { proxy, store }))
}
