//! The admin HTTP API: manage webhooks, inspect deliveries and events, metrics, live tap, the
//! console. It asks the delivery engine ([`crate::delivery::Engine`]) and the store; it
//! never sends webhooks itself.
//!
//! Every endpoint but `/healthz` and `/readyz` requires `Authorization: Bearer <token>`; the
//! console's files (`/`, `/console.js`, `/console.css`) are static (a sign-in form and the
//! script that calls the API with the token) and carry no data. Errors are
//! `{"code": "...", "message": "...", "field": "..."}`.
//!
//! - [`console`]: the browser console's embedded files and their Content-Security-Policy.
//! - [`webhooks`]: webhooks, their actions and deliveries.
//! - [`events`]: events, rules, the live stream, reload, metrics and health.
//! - [`stats`]: delivery statistics per webhook and the overview, from the store's records.
//! - [`rules`]: trying the loaded rules on an exchange (a dry run).
//! - [`openapi`]: the OpenAPI document of all of the above.

mod console;
mod events;
pub mod openapi;
mod rules;
mod stats;
#[cfg(test)]
mod tests;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::delivery::manage::ManageError;
use crate::live::Live;
use crate::store::StoreError;
use crate::webhook::struct_fields;

/// What every handler can reach.
#[derive(Clone)]
pub struct AdminState {
    pub live: Arc<Live>,
    /// SHA-256 of the token: compared in constant time, and equal-length whatever was sent.
    token_hash: Option<[u8; 32]>,
    /// Where the proxy listens, for `/readyz`.
    pub proxy_addr: SocketAddr,
    /// What the proxy copies of an exchange: `/rules/try` copies as much, so that it derives
    /// what the proxy would.
    pub capture: crate::proxy::Limits,
}

impl AdminState {
    pub fn new(live: Arc<Live>, token: Option<&str>, proxy_addr: SocketAddr) -> Self {
        Self {
            live,
            token_hash: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            proxy_addr,
            // `[proxy]`'s defaults, until `with_capture` sets the configured ones.
            capture: crate::proxy::Limits {
                max_capture_bytes: 1 << 20,
                max_decoded_bytes: 8 << 20,
            },
        }
    }

    /// The proxy's capture limits (`[proxy] max_capture_bytes`, `max_decoded_bytes`).
    pub fn with_capture(mut self, capture: crate::proxy::Limits) -> Self {
        self.capture = capture;
        self
    }
}

/// An error at the HTTP edge: a code for programs, a message for people, a fitting status.
/// Client mistakes are not logged; internal errors are, and their details stay in the log.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with that id"),
        )
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid", message)
        }
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// For programs: `invalid`, `unauthorized`, `not_found`, `conflict`, `ping_failed`, ...
    #[schema(examples("invalid", "not_found"))]
    code: &'static str,
    /// For people.
    message: String,
    /// The input field that was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            field: self.field,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "admin API: store error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the store failed; see hooktap's log",
        )
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound(_) => Self::not_found("webhook"),
            ManageError::Invalid(errors) => {
                let field = errors.first().map_or("body", |e| e.field);
                let message = errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                Self::invalid(field, message)
            }
            ManageError::NameTaken(_) | ManageError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ManageError::PingFailed(_) => {
                Self::new(StatusCode::CONFLICT, "ping_failed", e.to_string())
            }
            ManageError::Store(s) => s.into(),
        }
    }
}

/// A query string, rejected as a JSON error (not axum's plain text) when it does not parse.
/// The error names the parameter at fault (`"field": "page"`), or `query` when no single one is.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Q(v))
            .map_err(|e| {
                let field = rejected_field::<T, serde::de::value::Error>(&e).unwrap_or("query");
                ApiError::invalid(field, e.body_text())
            })
    }
}

/// The field of `T` that a rejected body or query string failed on. axum deserializes both
/// with `serde_path_to_error`, whose error (in the rejection's source chain, with the
/// deserializer's error type `E`) knows the path; only a field `T` declares is named.
fn rejected_field<T: DeserializeOwned, E: std::error::Error + 'static>(
    rejection: &(dyn std::error::Error + 'static),
) -> Option<&'static str> {
    let mut source = rejection.source();
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<serde_path_to_error::Error<E>>() {
            let serde_path_to_error::Segment::Map { key } = p.path().iter().next()? else {
                return None;
            };
            return struct_fields::<T>().iter().copied().find(|f| f == key);
        }
        source = s.source();
    }
    None
}

/// A JSON body, with serde's complaint turned into a 400 that names the problem and, when it
/// lies in one field (a bad enum name, a wrong type), that field; else `body`.
fn json_body<T: DeserializeOwned>(
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        let field = rejected_field::<T, serde_json::Error>(&e).unwrap_or("body");
        ApiError::invalid(field, e.body_text())
    })
}

/// The most items one page holds.
const MAX_PER_PAGE: u32 = 100;

/// `?page=1&per_page=20`: which slice of a list to answer. `page` is any `u32` from 1 (a page
/// past the end is empty), `per_page` 1 to [`MAX_PER_PAGE`]; the document states both.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// From 1.
    #[serde(default = "first_page")]
    #[param(default = 1, minimum = 1)]
    page: u32,
    /// From 1 to 100.
    #[serde(default = "default_per_page")]
    #[param(default = 20, minimum = 1, maximum = 100)]
    per_page: u32,
}

fn first_page() -> u32 {
    1
}

fn default_per_page() -> u32 {
    20
}

impl Page {
    /// The (offset, limit) to read. The offset is computed in `u64`, which no `u32` page of at
    /// most 100 items overflows (it overflowed `usize` before, and panicked), then clamped.
    fn check(&self) -> Result<(usize, usize), ApiError> {
        if self.page == 0 {
            return Err(ApiError::invalid("page", "page starts at 1"));
        }
        if !(1..=MAX_PER_PAGE).contains(&self.per_page) {
            return Err(ApiError::invalid(
                "per_page",
                format!("per_page must be between 1 and {MAX_PER_PAGE}"),
            ));
        }
        let offset = u64::from(self.page - 1) * u64::from(self.per_page);
        Ok((
            usize::try_from(offset).unwrap_or(usize::MAX),
            self.per_page as usize,
        ))
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (state.token_hash, given) {
        (Some(expected), Some(given)) => {
            let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            bool::from(expected.ct_eq(&given))
        }
        // No token configured: the config only allows that on a loopback address.
        (None, _) => true,
        (Some(_), None) => false,
    };
    if ok {
        next.run(request).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

/// Without a token, only this machine may use the API: loopback is the only address it
/// listens on, but a web page open in a browser here could still send requests to it. So a
/// request is refused unless its `Host` is a loopback name or address (against DNS rebinding:
/// a page of attacker.example resolved to 127.0.0.1) and any `Origin` it carries is too
/// (against cross-site requests). With a token, a page cannot learn it, and both pass.
async fn loopback_only(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if state.token_hash.is_some() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host_ok = host.is_none_or(is_loopback_authority);
    let origin_ok = origin.is_none_or(|o| {
        url::Url::parse(o).is_ok_and(|u| u.host_str().is_some_and(is_loopback_host))
    });
    if host_ok && origin_ok {
        return next.run(request).await;
    }
    tracing::warn!(
        host,
        origin,
        "admin API: refused a request from outside this machine (no token is set)"
    );
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "without [admin] token the admin API answers only requests addressed to a loopback name \
         (Host: 127.0.0.1, [::1] or localhost) that come from no other site (Origin); set a \
         token to reach it otherwise",
    )
    .into_response()
}

/// `host[:port]` whose host is a loopback name or address.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        // `[::1]:9090`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    is_loopback_host(host)
}

/// `localhost`, `*.localhost` (RFC 6761) or a loopback IP (brackets allowed).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lower = host.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/webhooks/count", get(webhooks::count))
        .route(
            "/webhooks/{id}",
            get(webhooks::get)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/webhooks/{id}/ping", post(webhooks::ping))
        .route("/webhooks/{id}/duplicate", post(webhooks::duplicate))
        .route("/webhooks/{id}/reset", post(webhooks::reset))
        .route("/webhooks/{id}/recover", post(webhooks::recover))
        .route("/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/webhooks/{id}/stats", get(stats::stats))
        .route("/overview", get(stats::overview))
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}",
            get(webhooks::delivery),
        )
        .route(
            "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/events", get(events::list))
        .route("/events/stream", get(events::stream))
        .route("/events/{id}", get(events::get))
        .route("/events/{id}/deliveries", get(events::deliveries))
        .route("/rules", get(events::rules))
        .route("/rules/try", post(rules::try_exchange))
        .route("/reload", post(events::reload))
        .route("/metrics", get(events::metrics))
        .route("/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(console::page))
        .merge(console::assets())
        .route("/healthz", get(events::health))
        .route("/readyz", get(events::ready))
        .merge(api)
        .layer(middleware::from_fn_with_state(state.clone(), loopback_only))
        .with_state(state)
}

/// How the admin API treats its clients. It shares the process's open files with the proxy, so
/// it holds at most `max_connections` (further clients wait in the listen backlog, which holds
/// no file of this process), and a client must send each request head within
/// `header_timeout` (hyper's `header_read_timeout`, which also closes a connection idle that
/// long between requests).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: std::time::Duration,
    pub max_connections: usize,
}

/// Serves the admin API on `listen` until `shutdown` flips, then waits for its connections.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    limits: Limits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // The address bound, which tells the port the OS picked for `listen` port 0.
    let listen = listener.local_addr()?;
    tracing::info!(%listen, "admin API listening");
    let metrics = Arc::clone(state.live.engine().metrics());
    let open = metrics.open_connections("admin");
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(std::io::Error::other)?,
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of files, most likely: wait for some to be released.
                    tracing::warn!(error = %e, "admin API: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        let (metrics, open) = (Arc::clone(&metrics), open.clone());
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                if e.is_timeout() {
                    metrics.connection_closed("admin", "header_timeout");
                }
                tracing::debug!(error = %e, "admin API connection ended");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
