//! `/webhooks`: the subscriptions, their actions and their delivery log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::openapi::{
    CountDoc, DeletedDoc, DeliveryDetailDoc, PingDoc, RedeliveredDoc, RequeuedDoc,
};
use super::{AdminState, ApiError, Page, Q};
use crate::event::{Delivery, DeliveryState};
use crate::webhook::{WebhookInput, WebhookStatus, WebhookView};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusFilter {
    /// Only webhooks in this status.
    #[param(value_type = Option<WebhookStatus>)]
    status: Option<String>,
}

impl StatusFilter {
    /// The status named, parsed by serde (so the error lists the accepted names).
    fn parse(&self) -> Result<Option<WebhookStatus>, ApiError> {
        use serde::de::IntoDeserializer;
        self.status
            .as_deref()
            .map(|s| {
                WebhookStatus::deserialize(s.into_deserializer()).map_err(
                    |e: serde::de::value::Error| {
                        ApiError::invalid("status", format!("status: {e}"))
                    },
                )
            })
            .transpose()
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

/// A JSON body, with serde's complaint turned into a 400 that names the problem and, when it
/// lies in one field (a bad enum name, a wrong type), that field.
fn input(
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<WebhookInput, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let field = rejected_field(&e).unwrap_or("body");
        ApiError::invalid(field, e.body_text())
    })
}

/// The [`WebhookInput`] field a rejected body failed on. axum deserializes with
/// `serde_path_to_error`, whose error (in the rejection's source chain) knows the path.
fn rejected_field(e: &axum::extract::rejection::JsonRejection) -> Option<&'static str> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            let first = p.path().iter().next()?;
            let serde_path_to_error::Segment::Map { key } = first else {
                return None;
            };
            return WebhookInput::fields().iter().copied().find(|f| f == key);
        }
        source = s.source();
    }
    None
}

#[utoipa::path(get, operation_id = "list_webhooks", path = "/webhooks", tag = "webhooks",
    summary = "List webhooks (oldest first); X-Total-Count has the total",
    params(StatusFilter, Page),
    responses((status = 200, body = [WebhookView],
        headers(("x-total-count" = usize, description = "How many match, over all pages")))))]
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

#[utoipa::path(get, operation_id = "count_webhooks", path = "/webhooks/count", tag = "webhooks", summary = "Count webhooks",
    params(StatusFilter), responses((status = 200, body = CountDoc)))]
pub async fn count(
    State(state): State<AdminState>,
    Q(filter): Q<StatusFilter>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"count": views(&state, filter.parse()?).len()})))
}

#[utoipa::path(post, operation_id = "create_webhook", path = "/webhooks", tag = "webhooks", summary = "Create a webhook",
    request_body = WebhookInput, responses((status = 201, body = WebhookView)))]
pub async fn create(
    State(state): State<AdminState>,
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let w = state.live.engine().create_webhook(input(body)?).await?;
    Ok((StatusCode::CREATED, Json(w.view())))
}

#[utoipa::path(get, operation_id = "get_webhook", path = "/webhooks/{id}", tag = "webhooks", summary = "Get a webhook",
    params(("id" = String, Path, description = "The webhook's id")), responses((status = 200, body = WebhookView)))]
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

#[utoipa::path(put, operation_id = "update_webhook", path = "/webhooks/{id}", tag = "webhooks",
    summary = "Change the fields given; activating pings the URL first (409 ping_failed unless 2xx)",
    params(("id" = String, Path, description = "The webhook's id")), request_body = WebhookInput, responses((status = 200, body = WebhookView)))]
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

#[utoipa::path(delete, operation_id = "delete_webhook", path = "/webhooks/{id}", tag = "webhooks",
    summary = "Delete a webhook and drop its pending deliveries",
    params(("id" = String, Path, description = "The webhook's id")), responses((status = 200, body = DeletedDoc)))]
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

#[utoipa::path(post, operation_id = "ping_webhook", path = "/webhooks/{id}/ping", tag = "webhooks",
    summary = "Send a signed test request with an empty body",
    params(("id" = String, Path, description = "The webhook's id")), responses((status = 200, body = PingDoc)))]
pub async fn ping(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ping = state.live.engine().ping(id(&raw, "webhook")?).await?;
    Ok(Json(serde_json::to_value(ping).unwrap_or_default()))
}

#[utoipa::path(post, operation_id = "duplicate_webhook", path = "/webhooks/{id}/duplicate", tag = "webhooks",
    summary = "Copy a webhook; the copy starts disabled",
    params(("id" = String, Path, description = "The webhook's id")), responses((status = 201, body = WebhookView)))]
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

#[utoipa::path(post, operation_id = "reset_webhook", path = "/webhooks/{id}/reset", tag = "webhooks",
    summary = "Reset the webhook's counters",
    params(("id" = String, Path, description = "The webhook's id")), responses((status = 200, body = WebhookView)))]
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

/// A window of creation times, `until` defaulting to now.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

#[utoipa::path(post, operation_id = "recover_deliveries", path = "/webhooks/{id}/recover", tag = "webhooks",
    summary = "Re-queue every failed delivery created in [since, until)",
    params(("id" = String, Path, description = "The webhook's id")), request_body = Window, responses((status = 200, body = RequeuedDoc)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutcomeFilter {
    /// Only deliveries in this state.
    #[param(value_type = Option<DeliveryState>)]
    outcome: Option<String>,
}

#[utoipa::path(get, operation_id = "list_deliveries", path = "/webhooks/{id}/deliveries", tag = "deliveries",
    summary = "A webhook's deliveries, newest first; X-Total-Count has the total",
    params(("id" = String, Path, description = "The webhook's id"), OutcomeFilter, Page),
    responses((status = 200, body = [Delivery],
        headers(("x-total-count" = usize, description = "How many match, over all pages")))))]
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

#[utoipa::path(get, operation_id = "get_delivery", path = "/webhooks/{id}/deliveries/{delivery_id}", tag = "deliveries",
    summary = "A delivery with every attempt",
    params(("id" = String, Path, description = "The webhook's id"), ("delivery_id" = String, Path, description = "The delivery's id")), responses((status = 200, body = DeliveryDetailDoc)))]
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

#[utoipa::path(post, operation_id = "redeliver", path = "/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "deliveries",
    summary = "Send a delivery again now, with the same id (409 in_flight while it is being sent)",
    params(("id" = String, Path, description = "The webhook's id"), ("delivery_id" = String, Path, description = "The delivery's id")), responses((status = 200, body = RedeliveredDoc)))]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(body: &str) -> ApiError {
        let parsed = Json::<WebhookInput>::from_bytes(body.as_bytes());
        input(parsed).expect_err("rejected")
    }

    #[test]
    fn a_bad_enum_name_is_rejected_with_its_field_and_the_accepted_names() {
        let e = rejected(r#"{"url": "https://x/", "signature": "hmac"}"#);
        assert_eq!((e.code, e.field), ("invalid", Some("signature")));
        assert!(
            e.message.contains("unknown variant `hmac`")
                && e.message.contains("`hooktap`, `standard`, `mautic`"),
            "{}",
            e.message
        );
        let e = rejected(r#"{"status": "on"}"#);
        assert_eq!(e.field, Some("status"));
        let e = rejected(r#"{"batch_max": "many"}"#);
        assert_eq!(e.field, Some("batch_max"));
    }

    #[test]
    fn other_body_problems_name_the_body() {
        let e = rejected(r#"{"colour": "red"}"#);
        assert_eq!(e.field, Some("body"));
        assert!(e.message.contains("colour"), "{}", e.message);
        assert_eq!(rejected("{").field, Some("body"));
    }

    #[test]
    fn a_bad_status_filter_names_the_accepted_names() {
        let filter = StatusFilter {
            status: Some("on".into()),
        };
        let e = filter.parse().expect_err("rejected");
        assert_eq!(e.field, Some("status"));
        assert!(
            e.message.contains("`active`, `paused`, `disabled`"),
            "{}",
            e.message
        );
        let filter = StatusFilter {
            status: Some("paused".into()),
        };
        assert_eq!(filter.parse().expect("valid"), Some(WebhookStatus::Paused));
    }
}
