//! A delivery's record (`d` + id) and an attempt's record (`a` + delivery id + number) in a
//! compact binary form.
//!
//! A delivery record is written for every matched event (on the request path, unless the
//! delivery is held in memory: see `fresh::Unwritten`) and rewritten after every attempt, so its size and encoding cost count twice: sled copies a leaf's values
//! whenever it changes the leaf. As JSON (field names, ids as 36-character text, timestamps as
//! RFC 3339) a record was ~370 bytes and took ~7k instructions to write; as
//! [postcard](https://postcard.jamesmunns.com/wire-format) (ids as 16 bytes, integers as
//! varints, timestamps as `time`'s compact tuple) it is ~110.
//!
//! An attempt record is written once per attempt and holds the request's body, the event's
//! payload as sent: as JSON that body became a string with every quote escaped, which cost
//! ~18k instructions per attempt to write and made the record about a fifth larger than the
//! body; postcard writes it as its length and its bytes.
//!
//! The first byte tells the forms apart: [`BINARY`] (an attempt's: [`ATTEMPT_BINARY`]) here,
//! `{` for the JSON records of stores written before, which are still read (a delivery's is
//! rewritten in this form when it next changes; an attempt's is never rewritten).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{Attempt, Delivery, DeliveryState};
use crate::store::StoreError;

/// The first byte of a binary delivery record (version 1 of the layout below).
const BINARY: u8 = 1;

/// The layout: every field always present and in this order (postcard is not
/// self-describing). A change is a new [`BINARY`] version, the old one still read;
/// [`DeliveryState`]'s variants are written by index, so new ones go last.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    id: Uuid,
    event_id: Uuid,
    webhook_id: Uuid,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    state: DeliveryState,
    attempts: u32,
    schedule_start: u32,
    due_ms: u64,
    queue_ms: u64,
    #[serde(borrow)]
    last_summary: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ordering_key: Option<Cow<'a, str>>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

/// `d` as stored.
pub(super) fn encode(d: &Delivery) -> Result<Vec<u8>, StoreError> {
    let record = Record {
        id: d.id,
        event_id: d.event_id,
        webhook_id: d.webhook_id,
        topic: Cow::Borrowed(&d.topic),
        state: d.state,
        attempts: d.attempts,
        schedule_start: d.schedule_start,
        due_ms: d.due_ms,
        queue_ms: d.queue_ms,
        last_summary: d.last_summary.as_deref().map(Cow::Borrowed),
        ordering_key: d.ordering_key.as_deref().map(Cow::Borrowed),
        created_at: d.created_at,
        updated_at: d.updated_at,
    };
    let mut out = Vec::with_capacity(128 + d.topic.len());
    out.push(BINARY);
    postcard::to_extend(&record, out).map_err(|e| corrupt("cannot encode", d.id, e))
}

/// The delivery `id` as stored (`id` names it in errors), in either form.
pub(super) fn decode(id: Uuid, bytes: &[u8]) -> Result<Delivery, StoreError> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => {
            let r: Record<'_> =
                postcard::from_bytes(rest).map_err(|e| corrupt("cannot read", id, e))?;
            Ok(Delivery {
                id: r.id,
                event_id: r.event_id,
                webhook_id: r.webhook_id,
                topic: r.topic.into_owned(),
                state: r.state,
                attempts: r.attempts,
                schedule_start: r.schedule_start,
                due_ms: r.due_ms,
                queue_ms: r.queue_ms,
                last_summary: r.last_summary.map(Cow::into_owned),
                ordering_key: r.ordering_key.map(Cow::into_owned),
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
        }
        Some((b'{', _)) => Ok(serde_json::from_slice(bytes)?),
        Some((other, _)) => Err(StoreError::CorruptRecord(format!(
            "delivery record {id} is of an unknown form (first byte {other}): written by a newer hooktap?"
        ))),
        None => Err(StoreError::CorruptRecord(format!(
            "delivery record {id} is empty"
        ))),
    }
}

/// The webhook a binary record names, read in place (`None` for a JSON record): postcard
/// writes each id as its length (16, one byte) and its bytes, so the third id, the webhook's,
/// is at a fixed place.
pub(super) fn webhook_of(bytes: &[u8]) -> Option<Uuid> {
    let ids = bytes.strip_prefix(&[BINARY])?;
    // The delivery's, the event's and the webhook's id.
    if [0, 17, 34].iter().any(|&at| ids.get(at) != Some(&16)) {
        return None;
    }
    Uuid::from_slice(ids.get(35..51)?).ok()
}

/// The head of [`Record`], up to its state: what a listing filters on, read without
/// allocating (postcard reads a prefix and leaves the rest).
#[derive(Deserialize)]
struct Head<'a> {
    _id: Uuid,
    _event_id: Uuid,
    _webhook_id: Uuid,
    #[serde(borrow)]
    _topic: &'a str,
    state: DeliveryState,
}

/// The state of the delivery `id` as stored, read without decoding the rest of a binary
/// record (a JSON record is decoded).
pub(super) fn state_of(id: Uuid, bytes: &[u8]) -> Result<DeliveryState, StoreError> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => postcard::from_bytes::<Head<'_>>(rest)
            .map(|h| h.state)
            .map_err(|e| corrupt("cannot read", id, e)),
        _ => decode(id, bytes).map(|d| d.state),
    }
}

fn corrupt(what: &str, id: Uuid, e: postcard::Error) -> StoreError {
    StoreError::CorruptRecord(format!("{what} delivery record {id}: {e}"))
}

/// The first byte of a binary attempt record (version 1 of [`AttemptRecord`]); versioned
/// apart from the delivery record's [`BINARY`].
const ATTEMPT_BINARY: u8 = 1;

/// An attempt's layout, under the same rules as [`Record`]'s.
#[derive(Serialize, Deserialize)]
struct AttemptRecord<'a> {
    id: Uuid,
    delivery_id: Uuid,
    webhook_id: Uuid,
    number: u32,
    created_at: OffsetDateTime,
    duration_ms: u64,
    #[serde(borrow)]
    summary: Cow<'a, str>,
    success: bool,
    #[serde(borrow)]
    request_method: Cow<'a, str>,
    #[serde(borrow)]
    request_url: Cow<'a, str>,
    #[serde(borrow)]
    request_headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow)]
    request_body: Cow<'a, str>,
    response_code: Option<u16>,
    #[serde(borrow)]
    response_message: Cow<'a, str>,
    #[serde(borrow)]
    response_headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow)]
    response_body: Cow<'a, str>,
}

fn borrowed(headers: &[(String, String)]) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    headers
        .iter()
        .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str())))
        .collect()
}

fn owned(headers: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

/// `a` as stored.
pub(super) fn encode_attempt(a: &Attempt) -> Result<Vec<u8>, StoreError> {
    let record = AttemptRecord {
        id: a.id,
        delivery_id: a.delivery_id,
        webhook_id: a.webhook_id,
        number: a.number,
        created_at: a.created_at,
        duration_ms: a.duration_ms,
        summary: Cow::Borrowed(&a.summary),
        success: a.success,
        request_method: Cow::Borrowed(&a.request_method),
        request_url: Cow::Borrowed(&a.request_url),
        request_headers: borrowed(&a.request_headers),
        request_body: Cow::Borrowed(&a.request_body),
        response_code: a.response_code,
        response_message: Cow::Borrowed(&a.response_message),
        response_headers: borrowed(&a.response_headers),
        response_body: Cow::Borrowed(&a.response_body),
    };
    let texts = a.request_body.len() + a.response_body.len() + a.request_url.len();
    let mut out = Vec::with_capacity(256 + texts);
    out.push(ATTEMPT_BINARY);
    postcard::to_extend(&record, out).map_err(|e| corrupt_attempt("cannot encode", a.id, e))
}

/// An attempt as stored, in either form; `key` (its `a` key) names it in errors.
pub(super) fn decode_attempt(key: &[u8], bytes: &[u8]) -> Result<Attempt, StoreError> {
    let named = || match super::keys::attempt_parts(key) {
        Some((delivery, number)) => format!("attempt {number} of delivery {delivery}"),
        None => "an attempt".to_owned(),
    };
    match bytes.split_first() {
        Some((&ATTEMPT_BINARY, rest)) => {
            let r: AttemptRecord<'_> = postcard::from_bytes(rest).map_err(|e| {
                StoreError::CorruptRecord(format!("cannot read the record of {}: {e}", named()))
            })?;
            Ok(Attempt {
                id: r.id,
                delivery_id: r.delivery_id,
                webhook_id: r.webhook_id,
                number: r.number,
                created_at: r.created_at,
                duration_ms: r.duration_ms,
                summary: r.summary.into_owned(),
                success: r.success,
                request_method: r.request_method.into_owned(),
                request_url: r.request_url.into_owned(),
                request_headers: owned(r.request_headers),
                request_body: r.request_body.into_owned(),
                response_code: r.response_code,
                response_message: r.response_message.into_owned(),
                response_headers: owned(r.response_headers),
                response_body: r.response_body.into_owned(),
            })
        }
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| {
            StoreError::CorruptRecord(format!("cannot read the record of {}: {e}", named()))
        }),
        Some((other, _)) => Err(StoreError::CorruptRecord(format!(
            "the record of {} is of an unknown form (first byte {other}): written by a newer hooktap?",
            named()
        ))),
        None => Err(StoreError::CorruptRecord(format!(
            "the record of {} is empty",
            named()
        ))),
    }
}

fn corrupt_attempt(what: &str, id: Uuid, e: postcard::Error) -> StoreError {
    StoreError::CorruptRecord(format!("{what} attempt record {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn delivery() -> Delivery {
        Delivery {
            id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            webhook_id: Uuid::now_v7(),
            topic: "order.created".into(),
            state: DeliveryState::Pending,
            attempts: 0,
            schedule_start: 0,
            due_ms: 1_796_128_814_090,
            queue_ms: 1_796_128_814_090,
            last_summary: None,
            ordering_key: None,
            created_at: datetime!(2026-12-01 12:40:14.090036965 UTC),
            updated_at: datetime!(2026-12-01 12:40:14.090036965 UTC),
        }
    }

    #[test]
    fn every_field_comes_back_and_the_record_is_small() {
        let plain = delivery();
        let bytes = encode(&plain).expect("encode");
        assert_eq!(bytes[0], BINARY);
        assert!(bytes.len() <= 120, "{} bytes", bytes.len());
        assert!(serde_json::to_vec(&plain).expect("json").len() > 3 * bytes.len());
        assert_eq!(decode(plain.id, &bytes).expect("decode"), plain);
        assert_eq!(webhook_of(&bytes), Some(plain.webhook_id));
        assert_eq!(webhook_of(&serde_json::to_vec(&plain).expect("json")), None);
        assert_eq!(webhook_of(&bytes[..51]), None);

        let full = Delivery {
            state: DeliveryState::Failed,
            attempts: 11,
            schedule_start: 3,
            due_ms: u64::MAX,
            queue_ms: 0,
            last_summary: Some("HTTP 500 Internal Server Error: ünïcode \"quoted\"".into()),
            ordering_key: Some(String::new()),
            // An offset other than UTC, and the extremes `time` allows: kept as they are.
            created_at: datetime!(-9999-01-01 00:00:00 +05:30),
            updated_at: datetime!(+9999-12-31 23:59:59.999999999 -23:59:59),
            ..plain
        };
        let back = decode(full.id, &encode(&full).expect("encode")).expect("decode");
        assert_eq!(back, full);
        assert_eq!(back.created_at.offset(), full.created_at.offset());
        for state in [DeliveryState::Delivered, DeliveryState::Failed] {
            let d = Delivery {
                state,
                ..delivery()
            };
            assert_eq!(
                decode(d.id, &encode(&d).expect("encode")).expect("decode"),
                d
            );
        }
    }

    #[test]
    fn a_listing_reads_the_state_alone_from_either_form() {
        for state in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            let d = Delivery {
                state,
                topic: "a.long.topic.with.many.parts".repeat(9),
                last_summary: Some("x".repeat(300)),
                ..delivery()
            };
            let bytes = encode(&d).expect("encode");
            assert_eq!(state_of(d.id, &bytes).expect("binary"), state);
            let json = serde_json::to_vec(&d).expect("json");
            assert_eq!(state_of(d.id, &json).expect("json"), state);
        }
        let bytes = encode(&delivery()).expect("encode");
        let err = state_of(Uuid::nil(), &bytes[..40]).expect_err("cut short");
        assert!(err.to_string().contains(&Uuid::nil().to_string()), "{err}");
    }

    #[test]
    fn json_records_of_earlier_stores_are_read() {
        let d = Delivery {
            ordering_key: Some("customer-7".into()),
            ..delivery()
        };
        let json = serde_json::to_vec(&d).expect("json");
        assert_eq!(decode(d.id, &json).expect("decode"), d);
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_delivery() {
        let d = delivery();
        let bytes = encode(&d).expect("encode");
        let named = |err: StoreError| {
            assert!(matches!(err, StoreError::CorruptRecord(_)), "{err}");
            assert!(err.to_string().contains(&d.id.to_string()), "{err}");
        };
        for cut in [1, 17, bytes.len() - 1] {
            named(decode(d.id, &bytes[..cut]).expect_err("truncated"));
        }
        let mut bad_state = bytes.clone();
        // id, event, webhook (16 bytes and a length each), the topic's length and text.
        bad_state[1 + 3 * 17 + 1 + d.topic.len()] = 9;
        named(decode(d.id, &bad_state).expect_err("no such state"));
        named(decode(d.id, b"").expect_err("empty"));
        let mut newer = bytes;
        newer[0] = 2;
        let err = decode(d.id, &newer).expect_err("unknown form");
        assert!(err.to_string().contains("newer hooktap"), "{err}");
        named(err);
        assert!(matches!(
            decode(d.id, b"{\"id\":").expect_err("json"),
            StoreError::Corrupt(_)
        ));
    }

    fn attempt() -> Attempt {
        Attempt {
            id: Uuid::now_v7(),
            delivery_id: Uuid::now_v7(),
            webhook_id: Uuid::now_v7(),
            number: 3,
            created_at: datetime!(2026-12-01 12:40:14.090036965 UTC),
            duration_ms: 12,
            summary: "HTTP 500 Internal Server Error: \"no\"".into(),
            success: false,
            request_method: "POST".into(),
            request_url: "https://crm.example/hooks?token=***".into(),
            request_headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Hooktap-Signature".into(), "c2lnbmF0dXJl".into()),
            ],
            request_body: r#"{"id":7,"email":"ünïcode@example.com","items":[{"sku":"A\"1"}]}"#
                .repeat(20),
            response_code: Some(500),
            response_message: "Internal Server Error".into(),
            response_headers: vec![("content-length".into(), "2".into())],
            response_body: "no".into(),
        }
    }

    #[test]
    fn every_field_of_an_attempt_comes_back_in_a_smaller_record() {
        let a = attempt();
        let key = super::super::keys::attempt(a.delivery_id, a.number);
        let bytes = encode_attempt(&a).expect("encode");
        assert_eq!(bytes[0], ATTEMPT_BINARY);
        let json = serde_json::to_vec(&a).expect("json");
        assert!(
            bytes.len() + 300 < json.len(),
            "{} bytes against {} as JSON",
            bytes.len(),
            json.len()
        );
        assert_eq!(decode_attempt(&key, &bytes).expect("decode"), a);
        // No response: a transport error.
        let cut = Attempt {
            response_code: None,
            response_headers: vec![],
            request_headers: vec![],
            success: true,
            created_at: datetime!(+9999-12-31 23:59:59.999999999 -23:59:59),
            ..attempt()
        };
        let back = decode_attempt(&key, &encode_attempt(&cut).expect("encode")).expect("decode");
        assert_eq!(back, cut);
        assert_eq!(back.created_at.offset(), cut.created_at.offset());
    }

    #[test]
    fn json_attempts_of_earlier_stores_are_read_and_damaged_ones_are_named() {
        let a = attempt();
        let key = super::super::keys::attempt(a.delivery_id, a.number);
        let json = serde_json::to_vec(&a).expect("json");
        assert_eq!(decode_attempt(&key, &json).expect("decode"), a);

        let bytes = encode_attempt(&a).expect("encode");
        let named = |err: StoreError| {
            assert!(matches!(err, StoreError::CorruptRecord(_)), "{err}");
            let text = err.to_string();
            assert!(text.contains(&a.delivery_id.to_string()), "{text}");
            assert!(text.contains("attempt 3"), "{text}");
        };
        for cut in [1, 40, bytes.len() - 1] {
            named(decode_attempt(&key, &bytes[..cut]).expect_err("truncated"));
        }
        named(decode_attempt(&key, b"").expect_err("empty"));
        named(decode_attempt(&key, &json[..json.len() / 2]).expect_err("cut JSON"));
        let mut newer = bytes;
        newer[0] = 2;
        let err = decode_attempt(&key, &newer).expect_err("unknown form");
        assert!(err.to_string().contains("newer hooktap"), "{err}");
        named(err);
    }
}
