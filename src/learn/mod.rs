//! `hooktap learn` and `hooktap test --har`: rules proposed from traffic, and a dry run of the
//! configured rules over recorded traffic with a coverage report.
//!
//! # Layout
//!
//! - [`har`]: reads HTTP Archive (HAR 1.2) files entry by entry into [`Sample`]s; what it cannot
//!   use it counts in [`Skipped`], it never fails on one bad entry.
//! - [`record`]: the recording proxy behind `hooktap learn --listen`: live traffic into samples
//!   (and optionally a HAR file).
//! - [`template`]: path templates inferred from many paths (`/orders/17` → `/orders/{order}`).
//! - [`naming`]: REST naming: `POST /orders` → `order.created`, `/orders/{order}/refund` →
//!   `order.refunded`.
//! - [`secrets`]: what counts as a credential, and taking it out of what is printed.
//! - [`propose`]: samples → proposed rules (groups, statuses, payload, `when` hints, tests).
//! - [`openapi`]: the same proposals from an OpenAPI 3.0/3.1 document.
//! - [`emit`]: proposals → a rule file (TOML through the `toml` serializer), checked by loading
//!   it with the real rule compiler and running its tests before it is printed.
//! - [`coverage`]: `hooktap test --har`: which events the rules derive per exchange and which
//!   successful writes no rule covers.
//!
//! Nothing here runs on the proxy path; `learn` is an offline tool (the recording proxy is its
//! own small server, not hooktap's pingora proxy).

pub mod coverage;
pub mod emit;
pub mod har;
pub mod naming;
pub mod openapi;
pub mod propose;
pub mod record;
pub mod secrets;
pub mod template;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::capture::{Exchange, RequestParts, ResponseParts};

/// How large a body `learn` reads by default (decoded); larger bodies are left out and counted.
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// One recorded request/response pair, bodies decoded (`Content-Encoding` undone, the header
/// removed) so that every source (HAR, the recording proxy) looks the same from here on.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Upper-case.
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub query: Option<String>,
    pub request_headers: HeaderMap,
    /// `None` when the source had no body or it was left out (too big, undecodable).
    pub request_body: Option<Bytes>,
    pub status: u16,
    pub response_headers: HeaderMap,
    pub response_body: Option<Bytes>,
    /// Where it came from, for comments and messages: `shop.har entry 12`.
    pub origin: String,
}

impl Sample {
    /// The exchange as the proxy would have captured it.
    pub fn exchange(&self) -> Exchange {
        Exchange {
            request: RequestParts {
                method: self.method.clone(),
                path: self.path.clone(),
                query: self.query.clone(),
                headers: self.request_headers.clone(),
                body: Some(self.request_body.clone().unwrap_or_default()),
            },
            response: ResponseParts {
                status: self.status,
                headers: self.response_headers.clone(),
                body: Some(self.response_body.clone().unwrap_or_default()),
            },
        }
    }

    /// The request body as rules see it (JSON, a form object, a string, or `null`).
    pub fn request_value(&self) -> Value {
        body_value(self.request_body.as_ref(), &self.request_headers)
    }

    /// The response body as rules see it.
    pub fn response_value(&self) -> Value {
        body_value(self.response_body.as_ref(), &self.response_headers)
    }

    pub fn is_write(&self) -> bool {
        is_write(&self.method)
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// POST, PUT, PATCH and DELETE change something; everything else reads.
pub fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

fn body_value(body: Option<&Bytes>, headers: &HeaderMap) -> Value {
    match body {
        None => Value::Null,
        // Bodies are stored decoded, so no cap is needed a second time.
        Some(b) => crate::capture::decode_body(b, headers, usize::MAX).unwrap_or(Value::Null),
    }
}

/// What a source could not use, by reason, with a count each: reported, never fatal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    counts: BTreeMap<String, usize>,
    /// The first place each reason was seen, to point the user at an example.
    first: BTreeMap<String, String>,
}

impl Skipped {
    pub fn add(&mut self, reason: impl Into<String>, place: &str) {
        let reason = reason.into();
        self.first
            .entry(reason.clone())
            .or_insert_with(|| place.to_owned());
        *self.counts.entry(reason).or_default() += 1;
    }

    pub fn merge(&mut self, other: Skipped) {
        for (reason, n) in other.counts {
            *self.counts.entry(reason.clone()).or_default() += n;
            if let Some(p) = other.first.get(&reason) {
                self.first.entry(reason).or_insert_with(|| p.clone());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn count(&self, reason_prefix: &str) -> usize {
        self.counts
            .iter()
            .filter(|(r, _)| r.starts_with(reason_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// One line per reason: `3 × response body not JSON though declared JSON (first: a.har entry 4)`.
    pub fn lines(&self) -> Vec<String> {
        self.counts
            .iter()
            .map(|(reason, n)| {
                let first = self.first.get(reason).map_or("", String::as_str);
                format!("{n} × {reason} (first: {first})")
            })
            .collect()
    }
}

/// Reads HAR files in order; returns the samples, what was left out, and the files' names.
pub fn read_hars(
    paths: &[std::path::PathBuf],
    max_body: usize,
) -> Result<(Vec<Sample>, Skipped, String), har::HarError> {
    let mut samples = Vec::new();
    let mut skipped = Skipped::default();
    let mut names = Vec::new();
    for p in paths {
        let (s, k) = har::read(p, max_body)?;
        samples.extend(s);
        skipped.merge(k);
        names.push(p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ));
    }
    Ok((samples, skipped, names.join(", ")))
}
