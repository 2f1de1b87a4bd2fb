//! `/webhooks`: the subscriptions, their actions and their delivery log.
//!
//! Every handler reads and answers the types its `#[utoipa::path]` names, so the OpenAPI
//! document is derived from what the handlers use.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AdminState, ApiError, Page, Q, json_body};
use crate::delivery::manage::Ping;
use crate::event::{Attempt, Delivery, DeliveryState};
use crate::store::Requeued as Redelivery;
use crate::store::{DELIVERY_COUNT_CAP, DeliveryQuery};
use crate::webhook::{NewWebhook, WebhookInput, WebhookStatus, WebhookView};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusFilter {
    /// Only webhooks in this status.
    status: Option<WebhookStatus>,
}

/// The answer to counting webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Count {
    #[schema(format = UInt64)]
    count: usize,
}

/// The answer to deleting a webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    id: Uuid,
    deleted: bool,
    /// Pending deliveries dropped unsent.
    #[schema(format = UInt64)]
    dropped_deliveries: usize,
}

/// A window of creation times, `until` defaulting to now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Inclusive.
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// Exclusive; after `since`. Now when left out or `null`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

/// The answer to a recovery: how many deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    #[schema(format = UInt64)]
    requeued: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutcomeFilter {
    /// Only deliveries in this state.
    outcome: Option<DeliveryState>,
}

/// A delivery with every attempt, the first one first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    delivery: Delivery,
    attempts: Vec<Attempt>,
}

/// The delivery as queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    delivery: Delivery,
}

fn views(state: &AdminState, status: Option<WebhookStatus>) -> Vec<WebhookView> {
    let engine = state.live.engine();
    let mut all: Vec<WebhookView> = engine
        .webhooks()
        .iter()
        .filter(|w| status.is_none_or(|s| w.status == s))
        .map(|w| engine.view(w))
        .collect();
    all.sort_by_key(|w| w.created_at);
    all
}

/// Parses a path id, answering 404 (not 400) for one that cannot exist.
fn id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

#[utoipa::path(get, operation_id = "list_webhooks", path = "/webhooks", tag = "webhooks",
    summary = "List webhooks (oldest first); X-Total-Count has the total",
    params(StatusFilter, Page),
    responses((status = 200, body = [WebhookView],
        headers(("x-total-count" = u64, description = "How many match, over all pages")))))]
pub async fn list(
    State(state): State<AdminState>,
    Q(filter): Q<StatusFilter>,
    Q(page): Q<Page>,
) -> Result<Response, ApiError> {
    let (offset, limit) = page.check()?;
    let all = views(&state, filter.status);
    let total = all.len();
    let items: Vec<WebhookView> = all.into_iter().skip(offset).take(limit).collect();
    Ok(([("x-total-count", total.to_string())], Json(items)).into_response())
}

#[utoipa::path(get, operation_id = "count_webhooks", path = "/webhooks/count", tag = "webhooks", summary = "Count webhooks",
    params(StatusFilter), responses((status = 200, body = Count)))]
pub async fn count(State(state): State<AdminState>, Q(filter): Q<StatusFilter>) -> Json<Count> {
    Json(Count {
        count: views(&state, filter.status).len(),
    })
}

#[utoipa::path(post, operation_id = "create_webhook", path = "/webhooks", tag = "webhooks",
    summary = "Create a webhook; an active one is pinged first (409 ping_failed unless 2xx, nothing created)",
    request_body = NewWebhook, responses((status = 201, body = WebhookView)))]
pub async fn create(
    State(state): State<AdminState>,
    body: Result<Json<NewWebhook>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let NewWebhook(input) = json_body(body)?;
    let w = state.live.engine().create_webhook(input).await?;
    Ok((StatusCode::CREATED, Json(state.live.engine().view(&w))))
}

#[utoipa::path(get, operation_id = "get_webhook", path = "/webhooks/{id}", tag = "webhooks", summary = "Get a webhook",
    params(("id" = Uuid, Path, description = "The webhook's id")), responses((status = 200, body = WebhookView)))]
pub async fn get(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state
        .live
        .engine()
        .webhook(id(&raw, "webhook")?)
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(state.live.engine().view(&w)))
}

#[utoipa::path(put, operation_id = "update_webhook", path = "/webhooks/{id}", tag = "webhooks",
    summary = "Change the fields given; activating pings the URL first (409 ping_failed unless 2xx)",
    params(("id" = Uuid, Path, description = "The webhook's id")), request_body = WebhookInput, responses((status = 200, body = WebhookView)))]
pub async fn update(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    body: Result<Json<WebhookInput>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    let w = state
        .live
        .engine()
        .update_webhook(id(&raw, "webhook")?, json_body(body)?)
        .await?;
    Ok(Json(state.live.engine().view(&w)))
}

#[utoipa::path(delete, operation_id = "delete_webhook", path = "/webhooks/{id}", tag = "webhooks",
    summary = "Delete a webhook and drop its pending deliveries",
    params(("id" = Uuid, Path, description = "The webhook's id")), responses((status = 200, body = Deleted)))]
pub async fn delete(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let id = id(&raw, "webhook")?;
    let dropped = state
        .live
        .engine()
        .delete_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(Deleted {
        id,
        deleted: true,
        dropped_deliveries: dropped,
    }))
}

#[utoipa::path(post, operation_id = "ping_webhook", path = "/webhooks/{id}/ping", tag = "webhooks",
    summary = "Send a signed test request with an empty body",
    params(("id" = Uuid, Path, description = "The webhook's id")), responses((status = 200, body = Ping)))]
pub async fn ping(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<Json<Ping>, ApiError> {
    Ok(Json(state.live.engine().ping(id(&raw, "webhook")?).await?))
}

#[utoipa::path(post, operation_id = "duplicate_webhook", path = "/webhooks/{id}/duplicate", tag = "webhooks",
    summary = "Copy a webhook; the copy starts disabled",
    params(("id" = Uuid, Path, description = "The webhook's id")), responses((status = 201, body = WebhookView)))]
pub async fn duplicate(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let w = state
        .live
        .engine()
        .duplicate_webhook(id(&raw, "webhook")?)
        .await?;
    Ok((StatusCode::CREATED, Json(state.live.engine().view(&w))))
}

#[utoipa::path(post, operation_id = "reset_webhook", path = "/webhooks/{id}/reset", tag = "webhooks",
    summary = "Reset the webhook's counters",
    params(("id" = Uuid, Path, description = "The webhook's id")), responses((status = 200, body = WebhookView)))]
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
    Ok(Json(state.live.engine().view(&w)))
}

#[utoipa::path(post, operation_id = "recover_deliveries", path = "/webhooks/{id}/recover", tag = "webhooks",
    summary = "Re-queue every failed delivery created in [since, until)",
    params(("id" = Uuid, Path, description = "The webhook's id")), request_body = Window, responses((status = 200, body = Requeued)))]
pub async fn recover(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    body: Result<Json<Window>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Requeued>, ApiError> {
    let id = id(&raw, "webhook")?;
    let window = json_body(body)?;
    let d = state.live.engine();
    if d.webhook(id).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let until = window.until.unwrap_or_else(OffsetDateTime::now_utc);
    if until <= window.since {
        return Err(ApiError::invalid("until", "until must be after since"));
    }
    let requeued = d.recover(id, window.since, until).await?;
    Ok(Json(Requeued { requeued }))
}

#[utoipa::path(get, operation_id = "list_deliveries", path = "/webhooks/{id}/deliveries", tag = "deliveries",
    summary = "A webhook's deliveries, newest first; X-Total-Count has the total, up to 10,000",
    params(("id" = Uuid, Path, description = "The webhook's id"), OutcomeFilter, Page),
    responses((status = 200, body = [Delivery],
        headers(("x-total-count" = u64, description = "How many match, over all pages; left out when more than 10,000 do")))))]
pub async fn deliveries(
    State(state): State<AdminState>,
    Path(raw): Path<String>,
    Q(filter): Q<OutcomeFilter>,
    Q(page): Q<Page>,
) -> Result<Response, ApiError> {
    let id = id(&raw, "webhook")?;
    let (offset, limit) = page.check()?;
    let d = state.live.engine();
    if d.webhook(id).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let query = DeliveryQuery {
        state: filter.outcome,
        offset,
        limit,
        count_up_to: DELIVERY_COUNT_CAP,
    };
    let page = d.deliveries_page(id, &query).await?;
    let mut response = Json(page.items).into_response();
    if let Some(total) = page.total {
        response
            .headers_mut()
            .insert("x-total-count", HeaderValue::from(total));
    }
    Ok(response)
}

#[utoipa::path(get, operation_id = "get_delivery", path = "/webhooks/{id}/deliveries/{delivery_id}", tag = "deliveries",
    summary = "A delivery with every attempt",
    params(("id" = Uuid, Path, description = "The webhook's id"), ("delivery_id" = Uuid, Path, description = "The delivery's id")), responses((status = 200, body = DeliveryDetail)))]
pub async fn delivery(
    State(state): State<AdminState>,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let (webhook, delivery_id) = (id(&raw, "webhook")?, id(&raw_delivery, "delivery")?);
    // A deleted webhook's history outlives its answer for a while (it goes in the background).
    if state.live.engine().webhook(webhook).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let (delivery, attempts) = state
        .live
        .engine()
        .delivery(delivery_id)
        .await?
        .filter(|(d, _)| d.webhook_id == webhook)
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(Json(DeliveryDetail { delivery, attempts }))
}

#[utoipa::path(post, operation_id = "redeliver", path = "/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "deliveries",
    summary = "Send a delivery again now, with the same id (409 in_flight while it is being sent)",
    params(("id" = Uuid, Path, description = "The webhook's id"), ("delivery_id" = Uuid, Path, description = "The delivery's id")), responses((status = 200, body = Redelivered)))]
pub async fn redeliver(
    State(state): State<AdminState>,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> Result<Json<Redelivered>, ApiError> {
    let (webhook, delivery_id) = (id(&raw, "webhook")?, id(&raw_delivery, "delivery")?);
    let d = state.live.engine();
    if d.webhook(webhook).is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    match d.delivery(delivery_id).await? {
        Some((x, _)) if x.webhook_id == webhook => {}
        _ => return Err(ApiError::not_found("delivery")),
    }
    match d.redeliver(delivery_id).await? {
        Redelivery::Done(delivery) => Ok(Json(Redelivered { delivery })),
        // Deleted (with its webhook) since it was read.
        Redelivery::Gone => Err(ApiError::not_found("delivery")),
        Redelivery::InFlight => Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_flight",
            "the delivery is being sent right now",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(body: &str) -> ApiError {
        json_body(Json::<WebhookInput>::from_bytes(body.as_bytes())).expect_err("rejected")
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
    fn a_new_webhook_reads_as_its_input_and_names_its_fields() {
        let body = br#"{"url": "https://x/", "concurrency": -1}"#;
        let e = json_body(Json::<NewWebhook>::from_bytes(body)).expect_err("rejected");
        assert_eq!(e.field, Some("concurrency"));
        let body = br#"{"url": "https://x/"}"#;
        let NewWebhook(input) = json_body(Json::<NewWebhook>::from_bytes(body)).expect("reads");
        assert_eq!(input.url.as_deref(), Some("https://x/"));
    }
}
