//! One webhook request: building it from a webhook and a body, sending it, reading the answer.
//!
//! Nothing here touches the store: the scheduler decides what to send and records the outcome.

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;
use url::Url;

use super::retry;
use super::sign::{self, Message};
use crate::event::TraceContext;
use crate::ssrf::{Blocked, Guard};
use crate::webhook::{Webhook, mask_url};

/// How much of a receiver's answer is read; the rest is left unread.
const MAX_RESPONSE_READ: usize = 64 * 1024;
/// How much of it is kept in the attempt log.
pub const MAX_RESPONSE_KEPT: usize = 4 * 1024;

/// A request ready to send.
pub struct Outgoing {
    /// Without credentials: those travel in the Authorization header.
    pub url: Url,
    /// For logs and the attempt log: credentials masked.
    pub shown_url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// Refuse to send to a plain `http://` URL: the webhook's own `https_only`, else the
    /// caller's default (see [`Outgoing::https_only_by_default`]).
    pub https_only: Option<bool>,
}

impl Outgoing {
    /// Builds the request for `body` to `webhook`, signed per its profile.
    pub fn new(
        webhook: &Webhook,
        delivery_id: &str,
        topic: Option<&str>,
        source: &str,
        body: Vec<u8>,
    ) -> Self {
        let spec = &webhook.spec;
        let now = time::OffsetDateTime::now_utc();
        let webhook_id = webhook.id.to_string();
        let message = Message {
            webhook_id: &webhook_id,
            delivery_id,
            topic,
            source,
            timestamp: now.unix_timestamp(),
            body: &body,
        };
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), crate::USER_AGENT.to_owned()),
        ];
        headers.extend(sign::headers(
            spec.signature,
            &spec.header_prefix,
            &spec.secret,
            webhook.previous_secret_at(now),
            &message,
        ));
        let mut url = spec.url.clone();
        if !url.username().is_empty() || url.password().is_some() {
            let user = percent_decode_str(url.username())
                .decode_utf8_lossy()
                .into_owned();
            let pass = url
                .password()
                .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned());
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", pass.unwrap_or_default()));
            headers.push(("Authorization".to_owned(), format!("Basic {token}")));
            // Only URLs without a host cannot carry credentials; webhook URLs always have one.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        // The webhook's own static headers; `headers` refused the names set above.
        headers.extend(spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self {
            url,
            shown_url: mask_url(&spec.url),
            headers,
            body,
            timeout: spec.timeout,
            https_only: spec.https_only,
        }
    }

    /// `[delivery] https_only` for a webhook that does not set its own.
    pub fn https_only_by_default(mut self, default: bool) -> Self {
        self.https_only.get_or_insert(default);
        self
    }

    /// Carries the W3C trace context of the app's request on: a `traceparent` in the same
    /// trace with a new span id (this request's), and the `tracestate` as it came.
    pub fn with_trace(mut self, trace: Option<&TraceContext>) -> Self {
        if let Some(t) = trace {
            self.headers
                .push(("traceparent".to_owned(), t.child(&new_span_id())));
            if let Some(state) = &t.tracestate {
                self.headers.push(("tracestate".to_owned(), state.clone()));
            }
        }
        self
    }

    /// The headers as the attempt log shows them: credentials masked.
    pub fn shown_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("authorization") {
                    "Basic ****".to_owned()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// A random span id: 16 hex digits, not all zero.
fn new_span_id() -> String {
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let id: String = bytes[..8].iter().map(|b| format!("{b:02x}")).collect();
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

/// A body as the attempt log keeps it: the first [`MAX_RESPONSE_KEPT`] bytes, lossily decoded,
/// with a note when cut (the whole request body is the event's payload, kept with the event).
pub fn kept_body(body: &[u8]) -> String {
    if body.len() <= MAX_RESPONSE_KEPT {
        return String::from_utf8_lossy(body).into_owned();
    }
    format!(
        "{}… ({} bytes in all; truncated)",
        String::from_utf8_lossy(&body[..MAX_RESPONSE_KEPT]),
        body.len()
    )
}

/// What the receiver answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// The first [`MAX_RESPONSE_KEPT`] bytes, lossily decoded.
    pub body: String,
    /// Honoured on 429 and 503.
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `HTTP 200 OK: ok`, as WooCommerce's delivery log words it.
    pub fn summary(&self) -> String {
        let snippet: String = self.body.chars().take(100).collect();
        let snippet = snippet.trim();
        if snippet.is_empty() {
            format!("HTTP {} {}", self.status, self.reason)
        } else {
            format!("HTTP {} {}: {snippet}", self.status, self.reason)
        }
    }
}

/// Why no answer came back, in words an operator can act on. The text after the kind is
/// the transport error with its causes, e.g. `connection failed: ...: Connection refused`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    /// Not sent: plain `http://` while `https_only` is set.
    #[error("refused: the URL is plain http:// and https_only is set")]
    HttpsOnly,
    /// Not sent: the delivery's event is not in the store.
    #[error("the event is missing from the store")]
    EventMissing,
}

/// What one request came to: the answer or why there was none, and how long it took.
#[derive(Debug, Clone)]
pub struct Sent {
    pub result: Result<Answer, SendError>,
    pub elapsed: Duration,
}

/// Sends `out`.
pub async fn send(client: &reqwest::Client, guard: &Guard, out: &Outgoing) -> Sent {
    let started = Instant::now();
    let done = |result| Sent {
        result,
        elapsed: started.elapsed(),
    };
    if out.https_only == Some(true) && out.url.scheme() != "https" {
        return done(Err(SendError::HttpsOnly));
    }
    // IP-literal hosts never reach the resolver, so they are checked here.
    if let Err(blocked) = guard.check_url(&out.url) {
        return done(Err(blocked.into()));
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &out.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    let result = client
        .post(out.url.clone())
        .headers(headers)
        .timeout(out.timeout)
        .body(out.body.clone())
        .send()
        .await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => return done(Err(describe_error(&e))),
    };
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let retry_after = if matches!(status.as_u16(), 429 | 503) {
        response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    // Read a bounded part of the answer; reading it to the end lets the connection be reused.
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_READ {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_RESPONSE_KEPT);
    let answer = Answer {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        retry_after,
    };
    done(Ok(answer))
}

/// A transport error with its causes.
fn describe_error(e: &reqwest::Error) -> SendError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    if e.is_timeout() {
        SendError::Timeout(message)
    } else if e.is_connect() {
        SendError::Connect(message)
    } else {
        SendError::Request(message)
    }
}
