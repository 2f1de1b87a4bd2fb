//! The `[[test]]` runner: rule files carry example exchanges and what they must produce.
//!
//! A test goes through the same router, body decoding and evaluation as live traffic, so a
//! passing test means the proxy would derive the same event from the same exchange.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::raw::RawTest;
use super::{RuleSet, SpanError};
use crate::capture::{Exchange, RequestParts, ResponseParts};

#[derive(Debug, Clone)]
pub enum Expect {
    /// The exchange must produce no event.
    Nothing,
    /// Some event must have this topic, and its payload must contain these fields.
    Event {
        topic: String,
        payload: Option<Value>,
        /// Exactly this many such events (`for_each`), when given.
        count: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    /// Where the test is written, for the report: `rules/shop.toml:42`.
    pub location: String,
    method: http::Method,
    path: String,
    query: Option<String>,
    request_headers: HeaderMap,
    request_body: Bytes,
    status: u16,
    response_headers: HeaderMap,
    response_body: Bytes,
    pub expect: Expect,
}

fn header_map(pairs: &std::collections::BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("`{k}` is not a header name"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("header `{k}` has an invalid value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A string body is sent as is; any other value as JSON (with a JSON content type unless set).
fn body_bytes(body: Option<Value>, headers: &mut HeaderMap) -> Bytes {
    match body {
        None => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(s),
        Some(v) => {
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
            Bytes::from(v.to_string())
        }
    }
}

impl RuleTest {
    pub fn compile(raw: RawTest, location: String) -> Result<Self, SpanError> {
        let name = raw.name.into_inner();
        let (req_span, req) = (raw.request.span(), raw.request.into_inner());
        let (resp_span, resp) = (raw.response.span(), raw.response.into_inner());
        let (expect_span, expect) = (raw.expect.span(), raw.expect.into_inner());
        let method =
            http::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                SpanError::new(
                    req_span.clone(),
                    format!("`{}` is not an HTTP method", req.method),
                )
            })?;
        let (path, query) = match req.path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (req.path.clone(), None),
        };
        if !path.starts_with('/') {
            return Err(SpanError::new(
                req_span,
                format!("request path `{path}` must start with `/`"),
            ));
        }
        let mut request_headers =
            header_map(&req.headers).map_err(|m| SpanError::new(req_span.clone(), m))?;
        let request_body = body_bytes(req.body, &mut request_headers);
        if !(100..=599).contains(&resp.status) {
            return Err(SpanError::new(
                resp_span,
                format!("status {} is not an HTTP status code", resp.status),
            ));
        }
        let mut response_headers =
            header_map(&resp.headers).map_err(|m| SpanError::new(resp_span.clone(), m))?;
        let response_body = body_bytes(resp.body, &mut response_headers);
        let expect = match (expect.none, expect.topic) {
            (true, None) if expect.payload.is_none() && expect.count.is_none() => Expect::Nothing,
            (false, Some(topic)) => Expect::Event {
                topic: topic.into_inner(),
                payload: expect.payload,
                count: expect.count,
            },
            _ => {
                return Err(SpanError::new(
                    expect_span,
                    "expect needs either `topic` (and optionally `payload`, `count`) or `none = true`",
                ));
            }
        };
        Ok(Self {
            name,
            location,
            method,
            path,
            query,
            request_headers,
            request_body,
            status: resp.status,
            response_headers,
            response_body,
            expect,
        })
    }

    /// Runs the test; `Err` says what was produced instead.
    pub fn run(&self, rules: &RuleSet, max_decoded: usize) -> Result<(), TestFailure> {
        let mut misses = Vec::new();
        let produced = match rules.candidates(&self.method, &self.path) {
            None => Vec::new(),
            Some(candidates) => {
                let exchange = Exchange {
                    request: RequestParts {
                        method: self.method.to_string(),
                        path: self.path.clone(),
                        query: self.query.clone(),
                        headers: self.request_headers.clone(),
                        body: Some(self.request_body.clone()),
                    },
                    response: ResponseParts {
                        status: self.status,
                        headers: self.response_headers.clone(),
                        body: Some(self.response_body.clone()),
                    },
                };
                let mut doc = exchange.into_document_for(&candidates, max_decoded).value;
                rules
                    .evaluate_reporting(&candidates, &mut doc, &mut |m| {
                        misses.push(format!(
                            "rule `{}` did not match ({}: {})",
                            m.rule.name,
                            m.kind.label(),
                            m.detail
                        ));
                    })
                    .into_iter()
                    .map(|m| m.event)
                    .collect()
            }
        };
        let got = Produced(
            produced
                .iter()
                .map(|e| format!("{} {}", e.topic, e.payload))
                .chain(misses)
                .collect(),
        );
        match &self.expect {
            Expect::Nothing if produced.is_empty() => Ok(()),
            Expect::Nothing => Err(TestFailure::UnexpectedEvent { got }),
            Expect::Event {
                topic,
                payload,
                count,
            } => {
                let found = produced
                    .iter()
                    .filter(|e| {
                        e.topic == *topic
                            && payload
                                .as_ref()
                                .is_none_or(|want| contains(&e.payload, want))
                    })
                    .count();
                let ok = match count {
                    None => found > 0,
                    Some(n) => found == *n,
                };
                if ok {
                    Ok(())
                } else {
                    Err(TestFailure::Missing {
                        topic: topic.clone(),
                        payload: payload.clone().map(Box::new),
                        count: *count,
                        got,
                    })
                }
            }
        }
    }
}

/// Why a `[[test]]` failed: what it expected and what the rules produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TestFailure {
    #[error("expected no event, got {got}")]
    UnexpectedEvent { got: Produced },
    #[error("expected {}{topic}{}, got {got}",
        count.map_or(String::new(), |n| format!("{n} × ")),
        payload.as_ref().map_or(String::new(), |p| format!(" with payload {p}")))]
    Missing {
        topic: String,
        payload: Option<Box<Value>>,
        count: Option<usize>,
        got: Produced,
    },
}

/// The events a test's exchange produced, as `topic payload` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced(pub Vec<String>);

impl std::fmt::Display for Produced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("no event")
        } else {
            f.write_str(&self.0.join("; "))
        }
    }
}

/// Whether `actual` contains every field of `want` (recursively for objects; exact otherwise).
fn contains(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (Value::Object(a), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| a.get(k).is_some_and(|av| contains(av, wv))),
        _ => super::when::same(actual, want),
    }
}
