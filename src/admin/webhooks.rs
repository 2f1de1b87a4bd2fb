//! `/webhooks`: the subscriptions, their actions and their delivery log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{AdminState, ApiError, Page, Q};
use crate::event::DeliveryState;
use crate::webhook::{WebhookInput, WebhookStatus, WebhookView};

#[derive(Debug, Deserialize)]
pub struct StatusFilter {
    status: Option<String>,
}

impl StatusFilter {
    fn parse(&self) -> Result<Option<WebhookStatus>, ApiError> {
        self.status
            .as_deref()
            .map(WebhookStatus::parse)
            .transpose()
            .map_err(|m| ApiError::invalid("status", m))
    }
}

fn views(state: &AdminState, status: Option<WebhookStatus>) -> Vec<WebhookView> {
    let mut all: Vec<WebhookView> = state
        .live
        .engine()
        .webhooks()
        .iter()
        .filter(|w| status.is_none_or(|s| w.status == s))
        .map(|w| w.view())
        .collect();
    all.sort_by_key(|w| w.created_at);
    all
}

/// Parses a path id, answering 404 (not 400) for one that cannot exist.
fn id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

/// A JSON body, with serde's complaint turned into a 400 that names the problem.
fn input(
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<WebhookInput, ApiError> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::invalid("body", e.body_text()))
}

pub async fn list(
    State(state): State<AdminState>,
    Q(filter): Q<StatusFilter>,
    Q(page): Q<Page>,
) -> Result<Response, ApiError> {
    let (offset, limit) = page.check()?;
    let all = views(&state, filter.parse()?);
    let total = all.len();
    let items: Vec<WebhookView> = all.into_iter().skip(offset).take(limit).collect();
    Ok(([("x-total-count", total.to_string())], Json(items)).into_response())
}

pub async fn count(
    State(state): State<AdminState>,
    Q(filter): Q<StatusFilter>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"count": views(&state, filter.parse()?).len()})))
}

pub async fn create(
    State(state): State<AdminState>,
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let w = state.live.engine().create_webhook(input(body)?).await?;
    Ok((StatusCode::CREATED, Json(w.view())))
}

pub async fn get(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state
        .live
        .engine()
        .webhook(id(&raw, "webhook")?)
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(w.view()))
}

pub async fn update(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state
        .live
        .engine()
        .update_webhook(id(&raw, "webhook")?, input(body)?)
        .await?;
    Ok(Json(w.view()))
}

pub async fn delete(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = id(&raw, "webhook")?;
    let dropped = state
        .live
        .engine()
        .delete_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(
        json!({"id": id, "deleted": true, "dropped_deliveries": dropped}),
    ))
}

pub async fn ping(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ping = state.live.engine().ping(id(&raw, "webhook")?).await?;
    Ok(Json(serde_json::to_value(ping).unwrap_or_default()))
}

pub async fn duplicate(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let w = state
        .live
        .engine()
        .duplicate_webhook(id(&raw, "webhook")?)
        .await?;
    Ok((StatusCode::CREATED, Json(w.view())))
}

pub async fn reset(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state
        .live
        .engine()
        .reset_counters(id(&raw, "webhook")?)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(w.view()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

pub async fn recover(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    body: Result<Json<Window>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id(&raw, "webhook")?;
    let Json(window) = body.map_err(|e| ApiError::invalid("body", e.body_text()))?;
    let d = state.live.engine();
    if d.webhook(id).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let until = window.until.unwrap_or_else(OffsetDateTime::now_utc);
    if until <= window.since {
        return Err(ApiError::invalid("until", "until must be after since"));
    }
    let requeued = d.recover(id, window.since, until).await?;
    Ok(Json(json!({"requeued": requeued})))
}

#[derive(Debug, Deserialize)]
pub struct OutcomeFilter {
    outcome: Option<String>,
}

pub async fn deliveries(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    Q(filter): Q<OutcomeFilter>,
    Q(page): Q<Page>,
) -> Result<Response, ApiError> {
    let id = id(&raw, "webhook")?;
    let (offset, limit) = page.check()?;
    let outcome = match filter.outcome.as_deref() {
        None => None,
        Some("pending") => Some(DeliveryState::Pending),
        Some("delivered") => Some(DeliveryState::Delivered),
        Some("failed") => Some(DeliveryState::Failed),
        Some(o) => {
            return Err(ApiError::invalid(
                "outcome",
                format!("outcome `{o}` must be pending, delivered or failed"),
            ));
        }
    };
    let d = state.live.engine();
    if d.webhook(id).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let all: Vec<_> = d
        .deliveries(id, usize::MAX)
        .await?
        .into_iter()
        .filter(|x| outcome.is_none_or(|o| x.state == o))
        .collect();
    let total = all.len();
    let page: Vec<_> = all.into_iter().skip(offset).take(limit).collect();
    Ok(([("x-total-count", total.to_string())], Json(page)).into_response())
}

pub async fn delivery(
    State(state): State<AdminState>,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (webhook, delivery_id) = (id(&raw, "webhook")?, id(&raw_delivery, "delivery")?);
    let (delivery, attempts) = state
        .live
        .engine()
        .delivery(delivery_id)
        .await?
        .filter(|(d, _)| d.webhook_id == webhook)
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(Json(json!({"delivery": delivery, "attempts": attempts})))
}

pub async fn redeliver(
    State(state): State<AdminState>,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (webhook, delivery_id) = (id(&raw, "webhook")?, id(&raw_delivery, "delivery")?);
    let d = state.live.engine();
    match d.delivery(delivery_id).await? {
        Some((x, _)) if x.webhook_id == webhook => {}
        _ => return Err(ApiError::not_found("delivery")),
    }
    let requeued = d.redeliver(delivery_id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "in_flight",
            "the delivery is being sent right now",
        )
    })?;
    Ok(Json(json!({"delivery": requeued})))
}
