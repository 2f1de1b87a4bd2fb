//! The exchange document and rule evaluation: what the proxy does with a completed exchange.
//!
//! Input, as text (bytes are taken as they come):
//!
//! ```text
//! POST /orders?page=2
//! content-type: application/json
//!
//! {"email":"a@b.c"}<NUL>201
//! content-encoding: gzip
//!
//! <body>
//! ```
//!
//! A half without an empty line after its headers has no captured body (it was larger than
//! `max_capture_bytes`). The rules are rules/ticket-shop.toml and fuzz/rules.toml.
#![no_main]

use std::sync::OnceLock;

use hooktap::capture::{Exchange, RequestParts, ResponseParts};
use hooktap::rules::RuleSet;
use hooktap::rules::raw::RawRuleFile;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MAX_DECODED: usize = 64 * 1024;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut set = RuleSet::default();
        for text in [
            include_str!("../../rules/ticket-shop.toml"),
            include_str!("../rules.toml"),
        ] {
            let file: RawRuleFile = toml::from_str(text).expect("the fuzz rules parse");
            for rule in file.rule {
                set.add(rule).expect("the fuzz rules compile");
            }
        }
        set
    })
}

/// One half: its first line, headers (those http accepts) and, after an empty line, the body.
fn half(data: &[u8]) -> (&[u8], HeaderMap, Option<bytes::Bytes>) {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut consumed = first.len() + 1;
    let mut headers = HeaderMap::new();
    let mut body = None;
    for line in lines {
        consumed += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            body = Some(bytes::Bytes::copy_from_slice(
                data.get(consumed..).unwrap_or_default(),
            ));
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    (first, headers, body)
}

fuzz_target!(|data: &[u8]| {
    let rules = rules();
    let (request, response) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b"200\n\n"[..]),
    };
    let (request_line, request_headers, request_body) = half(request);
    let request_line = String::from_utf8_lossy(request_line);
    let (method, target) = request_line.split_once(' ').unwrap_or((&request_line, "/"));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let Some(candidates) = rules.candidates(&method, path) else {
        return;
    };
    let (status_line, response_headers, response_body) = half(response);
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s))
        .unwrap_or(200);
    let _ = rules.wants_response(&candidates, status);
    let exchange = || Exchange {
        request: RequestParts {
            method: method.to_string(),
            path: path.to_owned(),
            query: query.clone(),
            headers: request_headers.clone(),
            body: request_body.clone(),
        },
        response: ResponseParts {
            status,
            headers: response_headers.clone(),
            body: response_body.clone(),
        },
    };
    let mut doc = exchange().into_document(MAX_DECODED);
    assert_eq!(doc.value["request"]["path"], Value::from(path));
    assert_eq!(doc.value["response"]["status"], Value::from(status));
    let matches = rules.evaluate(&candidates, &mut doc.value);
    for m in &matches {
        assert!(m.rule.methods.is_empty() || m.rule.methods.contains(&method));
        // What the store would write and a receiver would read.
        let json = serde_json::to_vec(&m.event).expect("an event serializes");
        let _: hooktap::event::Event = serde_json::from_slice(&json).expect("and reads back");
    }
    // The document the proxy builds (only what the candidates read) derives the same events.
    let mut pruned = exchange().into_document_for(&candidates, MAX_DECODED);
    let derived = |ms: &[hooktap::rules::Match<'_>]| -> Vec<(String, Value, Option<String>)> {
        ms.iter()
            .map(|m| {
                let key = m.dedupe.as_ref().map(|d| format!("{:?}", d.key));
                (m.event.topic.clone(), m.event.payload.clone(), key)
            })
            .collect()
    };
    assert_eq!(
        derived(&matches),
        derived(&rules.evaluate(&candidates, &mut pruned.value))
    );
});
