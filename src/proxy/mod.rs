//! The pingora glue: each proxy phase hands what it sees to capture, rules and delivery.
//!
//! Only candidate requests (the router found a rule for their method and path) are copied;
//! everything else streams through with one router lookup and no allocation per chunk. Capture
//! fails open: a capture or store problem is logged and counted while the app's traffic flows
//! on unchanged. The one thing this glue refuses is a message whose framing the next party
//! could read differently from hooktap ([`framing`], [`request_line`]): such a request gets
//! 400 or 501, such a response 502, and the connection is closed.
//!
//! - [`framing`]: which framing headers a request or response may be forwarded with.
//! - [`request_line`], [`connection`]: the client's bytes beneath pingora, for the request
//!   lines it rewrites.
//! - [`admission`], [`connection`]: the deadline for request heads and the cap on open client
//!   connections, which pingora does not have.

pub mod admission;
pub mod connection;
pub mod framing;
pub mod request_line;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use self::framing::Framing;
use crate::capture::{BodyCapture, Exchange, RequestParts, ResponseParts};
use crate::delivery::intake::{Enqueued, Intake};
use crate::event::TraceContext;
use crate::rules::RuleSet;
use crate::rules::router::Candidates;
use arc_swap::ArcSwap;

/// Where and how to reach the host application.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub tls: bool,
    pub sni: String,
}

/// Limits on what is copied per exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_capture_bytes: usize,
    pub max_decoded_bytes: usize,
}

/// How long a keep-alive connection may wait idle for its next request.
///
/// pingora 0.9 waits 60 s for a connection's first request, but once an HTTP/1.1 request is read
/// it takes the client's `Keep-Alive: timeout=` or, without one, no limit at all, and the next
/// request on the connection inherits that: an idle keep-alive connection kept its file until
/// the client closed it. So the proxy sets it on every request.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Whole seconds, at least 1 (pingora reads 0 as no limit).
    pub idle_secs: u64,
}

impl KeepAlive {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle_secs: idle.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// How requests are passed on to the app.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    /// Add X-Forwarded-For/-Proto/-Host.
    pub headers: bool,
    /// The listener terminates TLS (X-Forwarded-Proto: https).
    pub tls: bool,
}

pub struct Proxy {
    /// Swapped as a whole on reload; each request keeps the snapshot it started with.
    rules: Arc<ArcSwap<RuleSet>>,
    intake: Arc<Intake>,
    upstream: Upstream,
    limits: Limits,
    forwarding: Forwarding,
    keep_alive: KeepAlive,
    /// Set once this process is handing over to another (an upgrade) or stopping: every
    /// response then closes its connection, so keep-alive clients move to a new connection
    /// (which the new process can accept) while this one still answers, instead of having an
    /// idle connection closed under them when it stops.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn new(
        rules: Arc<ArcSwap<RuleSet>>,
        intake: Arc<Intake>,
        upstream: Upstream,
        limits: Limits,
        forwarding: Forwarding,
        keep_alive: KeepAlive,
    ) -> Self {
        Self {
            rules,
            intake,
            upstream,
            limits,
            forwarding,
            keep_alive,
            draining: Arc::default(),
        }
    }

    /// The flag that makes responses close their connections (see [`Proxy::draining`]).
    pub fn draining(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.draining)
    }
}

/// What is kept of a candidate exchange while it streams.
struct Capture {
    /// The rules the candidates index into (a reload mid-request does not disturb them).
    rules: Arc<RuleSet>,
    candidates: Candidates,
    method: String,
    path: String,
    query: Option<String>,
    request_headers: HeaderMap,
    request_body: BodyCapture,
    response: Option<(u16, HeaderMap)>,
    response_body: Option<BodyCapture>,
    upstream_done: bool,
}

/// Per-request state; `None` for the passthrough case, so it costs one pointer.
#[derive(Default)]
pub struct Ctx {
    capture: Option<Box<Capture>>,
}

impl Proxy {
    /// The exchange is complete: derive events and store them. Never fails the request. In
    /// `every-event` mode the rest of the response to `session` waits until the events are on
    /// stable storage (`None`: the response is out already).
    fn commit(&self, capture: Box<Capture>, session: Option<&Session>) {
        let Some((status, response_headers)) = capture.response else {
            return;
        };
        let trace = trace_context(&capture.request_headers);
        let exchange = Exchange {
            request: RequestParts {
                method: capture.method,
                path: capture.path,
                query: capture.query,
                headers: capture.request_headers,
                body: capture.request_body.into_bytes(),
            },
            response: ResponseParts {
                status,
                headers: response_headers,
                body: capture.response_body.and_then(BodyCapture::into_bytes),
            },
        };
        let mut doc =
            exchange.into_document_for(&capture.candidates, self.limits.max_decoded_bytes);
        for (side, reason) in &doc.skipped {
            tracing::debug!(side, %reason, "body not captured");
            self.intake.metrics().capture_skipped(side, reason.label());
        }
        let metrics = self.intake.metrics();
        let matches =
            capture
                .rules
                .evaluate_reporting(&capture.candidates, &mut doc.value, &mut |miss| {
                    tracing::debug!(rule = %miss.rule.name, reason = miss.kind.label(),
                    detail = %miss.detail, "rule did not match");
                    metrics.rule_miss(&miss.rule.name, miss.kind.label());
                });
        let mut last = None;
        for m in matches {
            let mut event = m.event;
            event.trace = trace.clone();
            // Shared with the store, which may keep it for the delivery that sends it.
            let event = Arc::new(event);
            match self.intake.enqueue_derived(
                &event,
                m.dedupe.as_ref(),
                m.rule.metric_topic(&event),
            ) {
                Ok(Enqueued::Stored(deliveries, durable)) => {
                    tracing::debug!(event = %event.id, topic = %event.topic, rule = %m.rule.name,
                    deliveries = deliveries.len(), "event stored");
                    last = durable.or(last);
                }
                Ok(Enqueued::Repeat) => {
                    tracing::debug!(topic = %event.topic, rule = %m.rule.name,
                        "event not derived: a repeat within the rule's dedupe window")
                }
                Err(e) => tracing::error!(topic = %event.topic, rule = %m.rule.name, error = %e,
                    "cannot store event; the request was proxied but this event is lost"),
            }
        }
        let (Some(durable), Some(session)) = (last, session) else {
            return;
        };
        match connection::client_stream(session) {
            Some(client) => client.hold_until(durable),
            // HTTP/2: no stream of hooktap's own beneath the session; this thread waits.
            None => {
                if durable.wait().is_err() {
                    self.intake.metrics().store_error();
                }
            }
        }
    }
}

/// The W3C trace context of the app's request, when it carries a valid `traceparent`.
fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let parent = headers.get("traceparent")?.to_str().ok()?;
    // Several `tracestate` lines are one list.
    let state: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    TraceContext::parse(
        parent,
        (!state.is_empty()).then(|| state.join(",")).as_deref(),
    )
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // The head is complete: its deadline no longer applies. If the connection was closed
        // in this very moment (its head too late, or shed at the connection cap), the request
        // must not reach the app: the connection goes without an answer.
        match connection::client_stream(session).map(connection::ClientStream::head_complete) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(pingora::Error::explain(
                pingora::ErrorType::HTTPStatus(match why {
                    admission::Closed::HeadTimeout => 408,
                    admission::Closed::Shed => 503,
                }),
                "the connection was closed before its request",
            )),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(status) = refusal(session)? {
            // What follows on this connection cannot be trusted to start where hooktap thinks
            // it does: answer, then close.
            session.set_keepalive(None);
            if let Err(e) = session.respond_error(status).await {
                tracing::debug!(error = %e, "cannot answer a refused request");
            }
            return Ok(true);
        }
        // Answer pipelined HTTP/1.1 requests in order, as the app would, rather than closing
        // the connection after the first (pingora's default).
        session.set_pipelining_enabled(true);
        // How long the connection may wait for the next request (see `KeepAlive`), only where
        // pingora keeps it open: never reopen one it closes (`Connection: close`, HTTP/1.0, or
        // both Transfer-Encoding and Content-Length, RFC 9112 6.1).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keep_alive.idle_secs));
        }
        let rules = self.rules.load();
        let req = session.req_header();
        if let Some(candidates) = rules.candidates(&req.method, req.uri.path()) {
            ctx.capture = Some(Box::new(Capture {
                rules: arc_swap::Guard::into_inner(rules),
                candidates,
                method: req.method.to_string(),
                path: req.uri.path().to_owned(),
                query: req.uri.query().map(str::to_owned),
                request_headers: req.headers.clone(),
                request_body: BodyCapture::new(self.limits.max_capture_bytes),
                response: None,
                response_body: None,
                upstream_done: false,
            }));
        }
        Ok(false)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if !self.forwarding.headers {
            return Ok(());
        }
        // X-Forwarded-For is a chain: append this hop's client. Proto and Host describe the
        // request as this listener received it, so they are set, not trusted from the client.
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let chain = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) => format!("{prior}, {ip}"),
                None => ip.to_string(),
            };
            upstream_request.insert_header("x-forwarded-for", chain)?;
        }
        let proto = if self.forwarding.tls { "https" } else { "http" };
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        let host = upstream_request
            .headers
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                upstream_request
                    .uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            });
        if let Some(host) = host {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Called once per upstream attempt; pingora re-sends the body on a retry.
        if let Some(c) = ctx.capture.as_mut() {
            c.request_body.reset();
        }
        Ok(Box::new(HttpPeer::new(
            self.upstream.addr,
            self.upstream.tls,
            self.upstream.sni.clone(),
        )))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(c), Some(chunk)) = (ctx.capture.as_mut(), body.as_ref()) {
            c.request_body.push(chunk);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        if status < 200 {
            // 1xx (e.g. 100 Continue) is not the final answer, and has no body.
            return Ok(());
        }
        match framing::framing(&response.headers) {
            Ok(None) => {}
            Ok(Some(framing)) => set_response_framing(response, framing)?,
            Err(e) => {
                tracing::warn!(status, error = %e,
                    "the app answered with framing hooktap does not pass on; the client gets 502");
                // An error here closes the upstream connection (what follows on it cannot be
                // trusted to be the next response) and, through `fail_to_proxy`, answers 502
                // and closes the client's connection.
                return Err(pingora::Error::explain(
                    pingora::ErrorType::Custom(BAD_UPSTREAM_FRAMING),
                    e.to_string(),
                )
                .into_up());
            }
        }
        let Some(c) = ctx.capture.as_mut() else {
            return Ok(());
        };
        if c.rules.wants_response(&c.candidates, status) {
            c.response = Some((status, response.headers.clone()));
            c.response_body = Some(BodyCapture::new(self.limits.max_capture_bytes));
        } else {
            // No rule can match this status: stop copying.
            ctx.capture = None;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        // A response without a body never reaches response_body_filter: store its event now,
        // before the headers (its last bytes) go to the client.
        let bodyless = session.req_header().method == http::Method::HEAD
            || matches!(response.status.as_u16(), 204 | 304)
            || response
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        if bodyless && ctx.capture.as_ref().is_some_and(|c| c.response.is_some()) {
            if let Some(c) = ctx.capture.take() {
                self.commit(c, Some(session));
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(c) = ctx.capture.as_mut() {
            if let (Some(copy), Some(chunk)) = (c.response_body.as_mut(), body.as_ref()) {
                copy.push(chunk);
            }
            c.upstream_done |= end_of_stream;
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // Store before the last byte reaches the client: once the client has the whole answer,
        // its event is in the store.
        if end_of_stream && ctx.capture.as_ref().is_some_and(|c| c.response.is_some()) {
            if let Some(c) = ctx.capture.take() {
                self.commit(c, Some(session));
            }
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &pingora::Error) -> bool {
        // Logged where they were found: a bad response as a warning with its reason, a
        // connection closed before its request in `connection`.
        matches!(
            error.etype(),
            pingora::ErrorType::Custom(BAD_UPSTREAM_FRAMING)
                | pingora::ErrorType::HTTPStatus(408 | 503)
        )
    }

    async fn logging(&self, session: &mut Session, error: Option<&pingora::Error>, ctx: &mut Ctx) {
        if let Some(client) = connection::client_stream(session) {
            client.exchange_done();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.intake.metrics().request(status);
        // The response ended without a final body chunk passing response_body_filter (no body,
        // or the client went away after the app had answered in full): the app did act, so the
        // event is still derived.
        if let Some(c) = ctx.capture.take() {
            if c.response.is_some() && (c.upstream_done || error.is_none()) {
                self.commit(c, None);
            }
        }
    }
}

/// The pingora error of a response refused for its framing.
const BAD_UPSTREAM_FRAMING: &str = "bad upstream framing";

/// The status to refuse this request with, or `None` to forward it, with its framing headers
/// made canonical.
fn refusal(session: &mut Session) -> Result<Option<u16>> {
    if connection::request_line_rewritten(session) {
        tracing::debug!(
            "refused a request line with a control byte or a space in its target (400)"
        );
        return Ok(Some(400));
    }
    match framing::framing(&session.req_header().headers) {
        Ok(None) => Ok(None),
        Ok(Some(framing)) => {
            set_request_framing(session.req_header_mut(), framing)?;
            Ok(None)
        }
        Err(e) => {
            let status = e.request_status();
            tracing::debug!(error = %e, status, "refused a request for its framing");
            Ok(Some(status))
        }
    }
}

/// The one framing header a request is forwarded with.
fn set_request_framing(request: &mut RequestHeader, framing: Framing) -> Result<()> {
    request.remove_header(&http::header::TRANSFER_ENCODING);
    request.remove_header(&http::header::CONTENT_LENGTH);
    match framing {
        Framing::Chunked => request.insert_header(http::header::TRANSFER_ENCODING, "chunked"),
        Framing::Length(n) => request.insert_header(http::header::CONTENT_LENGTH, n.to_string()),
    }
}

/// The one framing header a response is forwarded with.
fn set_response_framing(response: &mut ResponseHeader, framing: Framing) -> Result<()> {
    response.remove_header(&http::header::TRANSFER_ENCODING);
    response.remove_header(&http::header::CONTENT_LENGTH);
    match framing {
        Framing::Chunked => response.insert_header(http::header::TRANSFER_ENCODING, "chunked"),
        Framing::Length(n) => response.insert_header(http::header::CONTENT_LENGTH, n.to_string()),
    }
}
