//! A delivery's record (`d` + id) in a compact binary form.
//!
//! Written on the request path for every matched event and rewritten after every attempt, so
//! its size and encoding cost count twice: sled copies a leaf's values whenever it changes the
//! leaf. As JSON (field names, ids as 36-character text, timestamps as RFC 3339) a record was
//! ~370 bytes and took ~7k instructions to write; as [postcard](https://postcard.jamesmunns.com/wire-format)
//! (ids as 16 bytes, integers as varints, timestamps as `time`'s compact tuple) it is ~110.
//!
//! The first byte tells the forms apart: [`BINARY`] here, `{` for the JSON records of stores
//! written before, which are still read (and rewritten in this form when next updated).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{Delivery, DeliveryState};
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

fn corrupt(what: &str, id: Uuid, e: postcard::Error) -> StoreError {
    StoreError::CorruptRecord(format!("{what} delivery record {id}: {e}"))
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
}
