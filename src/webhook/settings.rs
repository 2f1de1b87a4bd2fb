//! The per-webhook delivery settings beyond where and what: the rate limit, the circuit
//! breaker, extra static headers, the payload filter and the ordering key. Each has its
//! check here (shared by the config file, the API and the CLI through [`super::WebhookInput`])
//! and, for the filter and the ordering key, the compiled form the intake evaluates.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::rules::raw::RawWhen;
use crate::rules::selector::Selector;
use crate::rules::when::Predicate;

/// `rate_limit = "50/s"`: at most `count` requests per `per`, spaced evenly (one every
/// `per / count`), so that they never come in bursts at the edges of an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    /// The rate limits [`RateLimit::parse`] reads, as the API document states them (`""`,
    /// which clears a webhook's limit, included).
    pub const PATTERN: &str = "^([1-9][0-9]{0,8}/[smh])?$";

    /// Reads `N/s`, `N/m` or `N/h`: N from 1 to 999,999,999, written without sign, spaces or
    /// leading zeros ([`RateLimit::PATTERN`] without the empty string).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "rate_limit `{s}` is not a rate such as 50/s or 600/m (requests per second, minute or hour)"
            )
        };
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let digits = !count.is_empty()
            && count.len() <= 9
            && count.bytes().all(|b| b.is_ascii_digit())
            && !count.starts_with('0');
        if count.bytes().all(|b| b == b'0') && !count.is_empty() {
            return Err(format!(
                "rate_limit `{s}` must allow at least one request (leave it out for no limit)"
            ));
        }
        if !digits {
            return Err(bad());
        }
        let count: u32 = count.parse().map_err(|_| bad())?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Self { count, per })
    }

    /// The spacing between two requests.
    pub fn spacing(&self) -> Duration {
        self.per / self.count
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Header names hooktap sets itself on a webhook request (besides the signature headers):
/// `headers` may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "authorization",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Checks `headers`: valid names and values, none that hooktap sets itself (its signature
/// headers, with `header_prefix`, included).
pub fn check_headers(
    headers: BTreeMap<String, String>,
    header_prefix: &str,
) -> Result<BTreeMap<String, String>, String> {
    let prefix = header_prefix.to_ascii_lowercase();
    for (name, value) in &headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("headers: `{name}` is not a valid header name"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "headers: the value of `{name}` is not a valid header value (visible ASCII and spaces)"
            ));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(&prefix) {
            return Err(format!(
                "headers: `{name}` is set by hooktap itself (content, signature, auth or trace headers) and cannot be replaced"
            ));
        }
    }
    Ok(headers)
}

/// Checks an `ordering_key`: a JSONPath over the payload.
pub fn check_ordering_key(key: &str) -> Result<Selector, String> {
    Selector::parse(key).map_err(|e| format!("ordering_key: {e}"))
}

/// Compiles a `filter`, naming the entry that is wrong.
pub fn compile_filter(filter: &[RawWhen]) -> Result<Vec<Predicate>, String> {
    filter
        .iter()
        .enumerate()
        .map(|(i, w)| Predicate::compile(w.clone()).map_err(|e| format!("filter[{i}]: {e}")))
        .collect()
}

/// The longest ordering key stored as it is; a longer one is stored as its digest (see
/// [`ordering_key_of`]).
pub const MAX_ORDERING_KEY: usize = 256;

/// The ordering key of a payload: the text of the value `selector` selects (strings as they
/// are, other values as JSON), or `None` when it selects nothing or `null`: such an event is
/// sent without waiting for others. A text longer than [`MAX_ORDERING_KEY`] bytes becomes
/// `sha256:` and the hex SHA-256 of the text, so that every key fits a store's index (a
/// PostgreSQL btree row holds at most ~2.7 KB) whatever the payload holds.
pub fn ordering_key_of(selector: &Selector, payload: &Value) -> Option<String> {
    let key = match selector.select(payload)? {
        Value::Null => return None,
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(bounded_ordering_key(key))
}

/// `key` as stored: itself up to [`MAX_ORDERING_KEY`] bytes, else `sha256:` and the hex
/// SHA-256 of its text (also for keys journalled before keys were bounded at intake).
pub fn bounded_ordering_key(key: String) -> String {
    if key.len() <= MAX_ORDERING_KEY {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_and_show_as_written() {
        let r = RateLimit::parse("50/s").expect("valid");
        assert_eq!(r.spacing(), Duration::from_millis(20));
        assert_eq!(r.to_string(), "50/s");
        assert_eq!(
            RateLimit::parse("600/m").expect("valid").spacing(),
            Duration::from_millis(100)
        );
        for bad in [
            "50",
            "50/d",
            "x/s",
            "0/s",
            "-1/s",
            "+5/s",
            "05/s",
            " 5/s",
            "5/s ",
            "1000000000/s",
            "",
        ] {
            let e = RateLimit::parse(bad).expect_err(bad);
            assert!(e.contains("rate_limit"), "{e}");
        }
    }

    /// The pattern the API document states admits exactly the rates `parse` reads, and `""`.
    #[test]
    fn the_documented_pattern_is_exactly_what_parse_reads() {
        let re = regex::Regex::new(RateLimit::PATTERN).expect("a regular expression");
        for s in [
            "",
            "1/s",
            "50/s",
            "600/m",
            "10/h",
            "999999999/s",
            "1000000000/s",
            "0/s",
            "05/m",
            "+5/s",
            " 5/s",
            "5/ s",
            "5/d",
            "5",
            "/s",
            "5/s/s",
            "٥/s",
            "5/S",
        ] {
            assert_eq!(
                re.is_match(s),
                s.is_empty() || RateLimit::parse(s).is_ok(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn headers_hooktap_sets_cannot_be_replaced() {
        let ok = BTreeMap::from([("X-Team".to_owned(), "crm".to_owned())]);
        assert!(check_headers(ok, "X-Hooktap-Webhook-").is_ok());
        for name in ["Content-Type", "traceparent", "X-Hooktap-Webhook-Signature"] {
            let h = BTreeMap::from([(name.to_owned(), "x".to_owned())]);
            let e = check_headers(h, "X-Hooktap-Webhook-").expect_err(name);
            assert!(e.contains(name), "{e}");
        }
        let bad = BTreeMap::from([("Bad Name".to_owned(), "x".to_owned())]);
        assert!(check_headers(bad, "X-").is_err());
        let bad = BTreeMap::from([("X-A".to_owned(), "line\nbreak".to_owned())]);
        assert!(check_headers(bad, "X-H-").is_err());
    }

    #[test]
    fn ordering_keys_are_texts_and_nothing_is_no_key() {
        let s = check_ordering_key("$.order_id").expect("valid");
        assert_eq!(
            ordering_key_of(&s, &serde_json::json!({"order_id": "A7"})),
            Some("A7".to_owned())
        );
        assert_eq!(
            ordering_key_of(&s, &serde_json::json!({"order_id": 7})),
            Some("7".to_owned())
        );
        assert_eq!(ordering_key_of(&s, &serde_json::json!({"x": 1})), None);
        assert_eq!(
            ordering_key_of(&s, &serde_json::json!({"order_id": null})),
            None
        );
        assert!(check_ordering_key("order_id").is_err());
    }

    /// A long key becomes a fixed-size digest: the same text the same digest, another text
    /// another digest; a key at the limit stays as it is.
    #[test]
    fn long_ordering_keys_become_digests() {
        let s = check_ordering_key("$.k").expect("valid");
        let at_limit = "a".repeat(MAX_ORDERING_KEY);
        assert_eq!(
            ordering_key_of(&s, &serde_json::json!({ "k": at_limit })),
            Some(at_limit.clone())
        );
        let long = "é".repeat(2048);
        let key = ordering_key_of(&s, &serde_json::json!({ "k": long })).expect("a key");
        assert!(key.starts_with("sha256:"), "{key}");
        assert_eq!(key.len(), 7 + 64);
        assert_eq!(
            ordering_key_of(&s, &serde_json::json!({ "k": long })),
            Some(key.clone())
        );
        let other = format!("{long}x");
        assert_ne!(
            ordering_key_of(&s, &serde_json::json!({ "k": other })),
            Some(key)
        );
    }
}
