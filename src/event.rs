//! The types handed from rules to the store and from the store to delivery.
//!
//! They are plain data: no I/O, no behaviour beyond (de)serialisation and small derivations.
//! Every id is a UUIDv7, so ids sort by creation time and keys built from them do too.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A topic such as `order.created`, split into `resource` (before the last dot) and `event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    full: String,
}

impl Topic {
    /// Checks that `s` is a `resource.event` topic made of `[a-z0-9_-]` words joined by dots.
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid_word = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        if !s.contains('.') || !s.split('.').all(valid_word) {
            return Err(format!(
                "topic `{s}` must look like `resource.event`: lower-case words of [a-z0-9_-] joined by dots"
            ));
        }
        Ok(Self { full: s.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Everything before the last dot: `order` for `order.created`.
    pub fn resource(&self) -> &str {
        self.full.rsplit_once('.').map_or("", |(r, _)| r)
    }

    /// Everything after the last dot: `created` for `order.created`.
    pub fn event(&self) -> &str {
        self.full.rsplit_once('.').map_or("", |(_, e)| e)
    }
}

/// One matched exchange: what a rule derived from a request/response pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    #[serde(with = "crate::event::rfc3339")]
    pub created_at: OffsetDateTime,
    pub topic: String,
    pub resource: String,
    pub event: String,
    /// The name of the rule that produced this event.
    pub rule: String,
    /// What the rule's `payload` selected: any JSON value.
    pub payload: Value,
    /// The W3C trace context of the app's request that caused the event, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// A W3C trace context (`traceparent`, `tracestate`) as the app's request carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The span of the app's request: the parent of the webhook request's span.
    pub parent_id: String,
    /// Two hex digits (`01`: sampled).
    pub flags: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads a `traceparent` header (version `00` or a later one read as `00`, as the
    /// specification asks), with the `tracestate` beside it. `None` when it is not valid: all
    /// zeros ids, wrong lengths, upper-case or non-hex digits.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(parent_id, 16)
            && parent_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
            tracestate: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 512)
                .map(str::to_owned),
        })
    }

    /// The `traceparent` of a child span `span_id` (16 hex digits) in the same trace.
    pub fn child(&self, span_id: &str) -> String {
        format!("00-{}-{span_id}-{}", self.trace_id, self.flags)
    }
}

impl Event {
    pub fn new(topic: &Topic, rule: &str, payload: Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            created_at: OffsetDateTime::now_utc(),
            topic: topic.as_str().to_owned(),
            resource: topic.resource().to_owned(),
            event: topic.event().to_owned(),
            rule: rule.to_owned(),
            payload,
            trace: None,
        }
    }
}

/// What makes two derived events "the same" for a rule's `dedupe`: a digest of the rule's
/// name and the key the rule computed, so that stored keys have one size whatever the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupeKey(pub [u8; 32]);

impl DedupeKey {
    pub fn new(rule: &str, key: &str) -> Self {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(rule.as_bytes());
        hash.update([0]);
        hash.update(key.as_bytes());
        Self(hash.finalize().into())
    }

    /// Lower-case hex, as the PostgreSQL store keeps it.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A rule's claim that an event is not a repeat: its key, kept for `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dedupe {
    pub key: DedupeKey,
    pub window: std::time::Duration,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its due time (first attempt or a retry).
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt of the retry schedule failed.
    Failed,
}

/// One event on its way to one webhook. Its id is stable across retries and restarts, so
/// receivers can deduplicate on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub webhook_id: Uuid,
    pub topic: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The attempt count when the retry schedule (re)started: a redelivery by hand gets the
    /// whole schedule again without renumbering the attempt log.
    #[serde(default)]
    pub schedule_start: u32,
    /// When the next attempt is due, in Unix milliseconds; meaningful while `Pending`.
    pub due_ms: u64,
    /// Its place in the webhook's queue: the due time, except for ordered webhooks, where it
    /// stays the creation time so that a retried delivery keeps its place at the head.
    pub queue_ms: u64,
    /// The last attempt's summary, e.g. `HTTP 500 Internal Server Error: oops`.
    pub last_summary: Option<String>,
    /// The webhook's `ordering_key` read from the payload: deliveries with the same key are
    /// sent one at a time, in order. Absent when the webhook has none or the payload had no
    /// value there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(with = "crate::event::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "crate::event::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Delivery {
    /// A delivery of `event` to `webhook_id`, due after `delay` (0 for realtime webhooks).
    pub fn new(event: &Event, webhook_id: Uuid, delay_ms: u64) -> Self {
        let due_ms = unix_ms(event.created_at).saturating_add(delay_ms);
        Self {
            id: Uuid::now_v7(),
            event_id: event.id,
            webhook_id,
            topic: event.topic.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            schedule_start: 0,
            due_ms,
            queue_ms: due_ms,
            last_summary: None,
            ordering_key: None,
            created_at: event.created_at,
            updated_at: event.created_at,
        }
    }
}

/// One HTTP attempt of a delivery, with the fields WooCommerce's delivery log shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    /// 1 for the first attempt.
    pub number: u32,
    #[serde(with = "crate::event::rfc3339")]
    pub created_at: OffsetDateTime,
    pub duration_ms: u64,
    /// `HTTP 200 OK: ok`, or the transport error.
    pub summary: String,
    pub success: bool,
    pub request_method: String,
    /// Credentials masked.
    pub request_url: String,
    /// Credentials masked.
    #[schema(value_type = Vec<HeaderPair>)]
    pub request_headers: Vec<(String, String)>,
    pub request_body: String,
    /// Absent when no response arrived.
    pub response_code: Option<u16>,
    pub response_message: String,
    #[schema(value_type = Vec<HeaderPair>)]
    pub response_headers: Vec<(String, String)>,
    /// Truncated to a few KiB.
    pub response_body: String,
}

/// The schema of a header as a `(String, String)` holds it: a `[name, value]` array of two
/// strings. (utoipa derives a tuple's schema with `prefixItems`, which is exact but more than
/// two strings need, and more than schemathesis 4 can check answers against.)
pub struct HeaderPair;

impl utoipa::PartialSchema for HeaderPair {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::schema::Object::with_type(
                utoipa::openapi::schema::Type::String,
            ))
            .min_items(Some(2))
            .max_items(Some(2))
            .description(Some("A header: `[name, value]`."))
            .into()
    }
}

impl ToSchema for HeaderPair {}

/// Milliseconds since the Unix epoch; times before 1970 clamp to 0.
pub fn unix_ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// RFC 3339 timestamps for serde, for the records written on the request path: the text
/// `time`'s `Rfc3339` writes (a test compares the two), written on the stack instead of into
/// a `String` of its own (an event with one delivery writes three timestamps into sled and,
/// with PostgreSQL, three more). Read back by `time`.
pub mod rfc3339 {
    use time::OffsetDateTime;

    /// The longest text: `9999-12-31T23:59:59.999999999+23:59`.
    const MAX: usize = 35;

    pub fn serialize<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; MAX];
        match write(t, &mut buf) {
            Some(n) => {
                s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
            }
            // Outside what RFC 3339 can say (a year past 9999, an offset with seconds):
            // `time`'s error.
            None => time::serde::rfc3339::serialize(t, s),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        time::serde::rfc3339::deserialize(d)
    }

    /// Writes `t` into `out`; `None` when RFC 3339 cannot say it.
    fn write(t: &OffsetDateTime, out: &mut [u8; MAX]) -> Option<usize> {
        let (year, month, day) = t.to_calendar_date();
        let (hour, minute, second, nanos) = t.to_hms_nano();
        let offset = t.offset();
        let year = u32::try_from(year).ok().filter(|y| *y < 10_000)?;
        if offset.seconds_past_minute() != 0 || offset.whole_hours().unsigned_abs() > 23 {
            return None;
        }
        let mut w = Digits { out, len: 0 };
        w.number(year, 4);
        w.byte(b'-');
        w.number(u32::from(u8::from(month)), 2);
        w.byte(b'-');
        w.number(u32::from(day), 2);
        w.byte(b'T');
        w.number(u32::from(hour), 2);
        w.byte(b':');
        w.number(u32::from(minute), 2);
        w.byte(b':');
        w.number(u32::from(second), 2);
        if nanos != 0 {
            // The fraction without its trailing zeros.
            let (mut fraction, mut digits) = (nanos, 9);
            while fraction % 10 == 0 {
                fraction /= 10;
                digits -= 1;
            }
            w.byte(b'.');
            w.number(fraction, digits);
        }
        if offset.is_utc() {
            w.byte(b'Z');
        } else {
            w.byte(if offset.is_negative() { b'-' } else { b'+' });
            w.number(u32::from(offset.whole_hours().unsigned_abs()), 2);
            w.byte(b':');
            w.number(u32::from(offset.minutes_past_hour().unsigned_abs()), 2);
        }
        Some(w.len)
    }

    struct Digits<'a> {
        out: &'a mut [u8; MAX],
        len: usize,
    }

    impl Digits<'_> {
        fn byte(&mut self, b: u8) {
            if let Some(slot) = self.out.get_mut(self.len) {
                *slot = b;
            }
            self.len += 1;
        }

        /// `n` in `width` digits, zero-padded (`n` has at most `width` digits).
        fn number(&mut self, mut n: u32, width: usize) {
            let end = self.len + width;
            for i in (self.len..end).rev() {
                if let Some(slot) = self.out.get_mut(i) {
                    // `n % 10` is a digit: the cast cannot truncate.
                    *slot = b'0' + (n % 10) as u8;
                }
                n /= 10;
            }
            self.len = end;
        }
    }

    #[cfg(test)]
    mod tests {
        use time::format_description::well_known::Rfc3339;
        use time::{Duration, OffsetDateTime, UtcOffset};

        #[test]
        fn writes_what_time_writes() {
            let offsets = [
                UtcOffset::UTC,
                UtcOffset::from_hms(2, 0, 0).expect("offset"),
                UtcOffset::from_hms(-9, -30, 0).expect("offset"),
                UtcOffset::from_hms(23, 59, 0).expect("offset"),
            ];
            let nanos = [
                0,
                1,
                10,
                120,
                1_000,
                5_000_000,
                123_456_789,
                100_000_000,
                999_999_999,
                20,
            ];
            let mut t = OffsetDateTime::UNIX_EPOCH - Duration::days(719_162); // 0001-01-01
            let mut checked = 0;
            // Steps of about 397 days and 7 hours across years 1 to 9999 and around now.
            while t.year() < 9_999 {
                for offset in offsets {
                    for n in nanos {
                        let at = t.replace_nanosecond(n).expect("nanos").to_offset(offset);
                        let ours = serde_json::to_string(&Wrap(at)).expect("ours");
                        let theirs = format!("{:?}", at.format(&Rfc3339).expect("time"));
                        assert_eq!(ours, theirs, "{at:?}");
                        let back: Wrap = serde_json::from_str(&ours).expect("read back");
                        assert_eq!(back.0, at);
                        checked += 1;
                    }
                }
                t += Duration::hours(397 * 24 + 7) + Duration::seconds(61);
            }
            assert!(checked > 10_000, "{checked}");
        }

        #[test]
        fn what_rfc3339_cannot_say_is_refused_as_time_refuses_it() {
            let t = OffsetDateTime::UNIX_EPOCH.replace_year(-1).expect("year");
            assert!(serde_json::to_string(&Wrap(t)).is_err());
            let odd = UtcOffset::from_hms(1, 0, 30).expect("offset");
            assert!(
                serde_json::to_string(&Wrap(OffsetDateTime::UNIX_EPOCH.to_offset(odd))).is_err()
            );
        }

        #[derive(serde::Serialize, serde::Deserialize)]
        struct Wrap(#[serde(with = "super")] OffsetDateTime);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_splits_at_the_last_dot() {
        let t = Topic::parse("hooktap.webhook.disabled").expect("valid topic");
        assert_eq!((t.resource(), t.event()), ("hooktap.webhook", "disabled"));
        let t = Topic::parse("order.created").expect("valid topic");
        assert_eq!((t.resource(), t.event()), ("order", "created"));
    }

    #[test]
    fn a_traceparent_is_read_strictly_and_a_child_keeps_the_trace() {
        let t = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("congo=t61rcWkgMzE"),
        )
        .expect("valid");
        assert_eq!(
            t.child("b7ad6b7169203331"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01"
        );
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
                None
            )
            .is_some()
        );
    }

    #[test]
    fn topic_rejects_malformed_names() {
        for bad in [
            "order",
            "Order.created",
            "order..created",
            ".created",
            "order.cre ated",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
