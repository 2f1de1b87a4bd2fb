//! `POST /rules/try`: the loaded rules evaluated on an exchange an operator gives, as a dry run.
//!
//! The exchange is copied and turned into the rules' document exactly as the proxy does
//! ([`crate::capture`], with the proxy's capture limits), routed by the same router, and
//! evaluated by [`RuleSet::explain`](crate::rules::RuleSet::explain), which shares the proxy's
//! evaluation. Nothing is derived into the store: no event, no delivery, no dedupe claim, no
//! metric.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{AdminState, ApiError, json_body};
use crate::capture::{BodyCapture, Exchange, RequestParts, ResponseParts};
use crate::event::HeaderPair;

/// The request half of an exchange to try.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryRequest {
    /// As sent, e.g. `POST` (methods are case-sensitive, as on the wire).
    #[schema(
        min_length = 1,
        pattern = r"^[A-Za-z0-9!#$%&'*+.^_|~-]+$",
        examples("POST")
    )]
    method: String,
    /// The path with its query, e.g. `/orders?source=web`.
    #[schema(min_length = 1, pattern = r"^/[!-~]*$", examples("/orders"))]
    url: String,
    #[serde(default)]
    #[schema(value_type = Vec<HeaderPair>)]
    headers: Vec<(String, String)>,
    /// The body as text (absent: empty).
    #[serde(default)]
    body: String,
}

/// The response half of an exchange to try.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryResponse {
    /// Written `201` or `201.0` (the schema's `integer` admits both).
    #[serde(deserialize_with = "crate::webhook::whole_number")]
    #[schema(value_type = u16, minimum = 100, maximum = 599, examples(201))]
    status: Option<u16>,
    #[serde(default)]
    #[schema(value_type = Vec<HeaderPair>)]
    headers: Vec<(String, String)>,
    /// The body as text (absent: empty).
    #[serde(default)]
    body: String,
}

/// A request/response pair to evaluate the loaded rules on.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TryExchange {
    request: TryRequest,
    response: TryResponse,
}

/// One event a rule would derive.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriedEvent {
    topic: String,
    payload: Value,
}

/// A rule that derives at least one event from the exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriedMatch {
    rule: String,
    /// The rule's topic as written (an expression for a computed one).
    topic: String,
    /// One per item under `for_each`.
    events: Vec<TriedEvent>,
    /// Why some items derived nothing (under `for_each`); empty when all did.
    notes: Vec<String>,
}

/// A rule whose method and path match the exchange but which derives nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriedMiss {
    rule: String,
    /// Why: the status, `when`, a required field, `for_each`, or an expression's error.
    reason: String,
}

/// What the loaded rules make of the exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct TryResult {
    matches: Vec<TriedMatch>,
    misses: Vec<TriedMiss>,
}

/// A 422 naming the part of the exchange at fault.
fn unprocessable(field: &'static str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::invalid(field, message);
    e.status = StatusCode::UNPROCESSABLE_ENTITY;
    e.code = "invalid_exchange";
    e
}

/// Headers as the proxy would hold them; `field` names the list in an error.
fn header_map(pairs: &[(String, String)], field: &'static str) -> Result<HeaderMap, ApiError> {
    let mut map = HeaderMap::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            unprocessable(
                field,
                format!("{field}[{i}]: `{name}` is not a valid header name"),
            )
        })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            unprocessable(
                field,
                format!("{field}[{i}]: the value of `{name}` is not a valid header value"),
            )
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// A body as the proxy copies it: `None` (not captured) past `max_capture_bytes`.
fn captured(body: &str, limit: usize) -> Option<bytes::Bytes> {
    let mut capture = BodyCapture::new(limit);
    capture.push(body.as_bytes());
    capture.into_bytes()
}

#[utoipa::path(post, operation_id = "try_rules", path = "/rules/try", tag = "rules",
    summary = "Evaluate the loaded rules on a request/response pair, deriving nothing (422 invalid_exchange names a bad part)",
    request_body = TryExchange, responses((status = 200, body = TryResult)))]
pub async fn try_exchange(
    State(state): State<AdminState>,
    body: Result<Json<TryExchange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TryResult>, ApiError> {
    let TryExchange { request, response } = json_body(body)?;
    let method = http::Method::from_bytes(request.method.as_bytes()).map_err(|_| {
        unprocessable(
            "request.method",
            format!("`{}` is not an HTTP method", request.method),
        )
    })?;
    let url: http::uri::PathAndQuery = request
        .url
        .parse()
        .ok()
        .filter(|u: &http::uri::PathAndQuery| u.path().starts_with('/'))
        .ok_or_else(|| {
            unprocessable(
                "request.url",
                format!(
                    "`{}` is not a path with an optional query, such as /orders?source=web",
                    request.url
                ),
            )
        })?;
    let status = response
        .status
        .ok_or_else(|| ApiError::invalid("response", "response.status must be a number"))?;
    if !(100..=599).contains(&status) {
        return Err(unprocessable(
            "response.status",
            format!("{status} is not an HTTP status (100-599)"),
        ));
    }
    let request_headers = header_map(&request.headers, "request.headers")?;
    let response_headers = header_map(&response.headers, "response.headers")?;

    let rules = state.live.rules().load_full();
    let Some(candidates) = rules.candidates(&method, url.path()) else {
        return Ok(Json(TryResult {
            matches: Vec::new(),
            misses: Vec::new(),
        }));
    };
    let limit = state.capture.max_capture_bytes;
    let exchange = Exchange {
        request: RequestParts {
            method: method.to_string(),
            path: url.path().to_owned(),
            query: url.query().map(str::to_owned),
            headers: request_headers,
            body: captured(&request.body, limit),
        },
        response: ResponseParts {
            status,
            headers: response_headers,
            body: captured(&response.body, limit),
        },
    };
    let mut doc = exchange.into_document_for(&candidates, state.capture.max_decoded_bytes);
    let mut result = TryResult {
        matches: Vec::new(),
        misses: Vec::new(),
    };
    for explained in rules.explain(&candidates, &mut doc.value) {
        let rule = explained.rule.name.clone();
        if explained.matches.is_empty() {
            let mut reason = explained.reasons.join("; ");
            if reason.is_empty() {
                reason = "no event".to_owned();
            }
            result.misses.push(TriedMiss { rule, reason });
        } else {
            result.matches.push(TriedMatch {
                rule,
                topic: explained.rule.topic.as_str().to_owned(),
                events: explained
                    .matches
                    .into_iter()
                    .map(|m| TriedEvent {
                        topic: m.event.topic,
                        payload: m.event.payload,
                    })
                    .collect(),
                notes: explained.reasons,
            });
        }
    }
    Ok(Json(result))
}
