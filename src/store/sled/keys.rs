//! The key layout of the sled backend: one tree, one-byte prefixes, big-endian numbers, so
//! byte order is time order (see the table in the parent module).

use uuid::Uuid;

use crate::event::{DedupeKey, Delivery};

pub(super) const EVENT: u8 = b'e';
pub(super) const DELIVERY: u8 = b'd';
pub(super) const QUEUE: u8 = b'q';
pub(super) const BY_WEBHOOK: u8 = b'x';
/// A second in which a webhook has deliveries (see [`webhook_second`]).
pub(super) const WEBHOOK_SECOND: u8 = b'X';
pub(super) const BY_EVENT: u8 = b'v';
pub(super) const ATTEMPT: u8 = b'a';
pub(super) const WEBHOOK: u8 = b'w';
pub(super) const DEDUPE: u8 = b'k';
/// A webhook's attempts by time, for statistics.
pub(super) const ATTEMPT_BY_TIME: u8 = b't';
/// A webhook's failed attempts by time (the `t` key of each, under this prefix): its last
/// error without reading its successes.
pub(super) const FAILURE_BY_TIME: u8 = b'f';
/// A webhook being deleted (`D` + its id): set with the removal of its record, removed with
/// the last of its history, so that a deletion cut short (a crash, a dropped request) is
/// finished by the keeper (see `SledStore::delete_webhook_part`).
pub(super) const DELETING: u8 = b'D';
/// A journalled event's dedupe claim (shared stores: claimed again when the event moves in).
pub(super) const DEDUPE_MARK: u8 = b'K';
/// Present while the database is the local journal of a shared store, whose events have no
/// `x` or `q` entries (see `SledStore::settle_role`).
pub(super) const JOURNAL_ROLE: &[u8] = b"J";
/// The checkpoint of the deliveries queued in memory (a Unix second, big-endian u64): every
/// pending delivery whose id, and whose event's id, were made before it has its `d` record and
/// a `q` entry (see `fresh`).
pub(super) const FRESH_CHECKPOINT: &[u8] = b"Q";

pub(super) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(super) fn event(id: Uuid) -> Vec<u8> {
    key(EVENT, &[id.as_bytes()])
}

pub(super) fn delivery(id: Uuid) -> Vec<u8> {
    key(DELIVERY, &[id.as_bytes()])
}

pub(super) fn dedupe(k: &DedupeKey) -> Vec<u8> {
    key(DEDUPE, &[&k.0])
}

pub(super) fn dedupe_mark(event: Uuid) -> Vec<u8> {
    key(DEDUPE_MARK, &[event.as_bytes()])
}

pub(super) fn deleting(webhook: Uuid) -> Vec<u8> {
    key(DELETING, &[webhook.as_bytes()])
}

pub(super) fn webhook(id: Uuid) -> Vec<u8> {
    key(WEBHOOK, &[id.as_bytes()])
}

/// `q` webhook id, queue ms, delivery id: the webhook's queue in queue order.
pub(super) fn queue(d: &Delivery) -> Vec<u8> {
    queue_at(d.webhook_id, d.queue_ms, d.id)
}

/// The `q` key of delivery `id` of `webhook` queued at `queue_ms`.
pub(super) fn queue_at(webhook: Uuid, queue_ms: u64, id: Uuid) -> Vec<u8> {
    key(
        QUEUE,
        &[webhook.as_bytes(), &queue_ms.to_be_bytes(), id.as_bytes()],
    )
}

/// The value of a queue entry: the delivery's ordering key, so that the heads of the keys
/// are found without reading every delivery (`k` + the key; empty: none).
pub(super) fn queue_value(d: &Delivery) -> Vec<u8> {
    queue_value_of(d.ordering_key.as_deref())
}

/// The value of a queue entry for a delivery with ordering key `key`.
pub(super) fn queue_value_of(key: Option<&str>) -> Vec<u8> {
    key.map_or_else(Vec::new, |k| {
        let mut v = Vec::with_capacity(1 + k.len());
        v.push(b'k');
        v.extend_from_slice(k.as_bytes());
        v
    })
}

/// The ordering key a queue entry's value holds (entries written before keys existed and
/// deliveries without one have none).
pub(super) fn queue_value_key(v: &[u8]) -> Option<&[u8]> {
    v.strip_prefix(b"k")
}

/// The queue time in a queue key.
pub(super) fn queue_ms(k: &[u8]) -> Option<u64> {
    number_after_webhook(k)
}

/// The big-endian number after the prefix and webhook id of a `q` or `X` key.
fn number_after_webhook(k: &[u8]) -> Option<u64> {
    k.get(17..25)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

pub(super) fn by_webhook(d: &Delivery) -> Vec<u8> {
    key(BY_WEBHOOK, &[d.webhook_id.as_bytes(), d.id.as_bytes()])
}

/// `X` webhook id, second: the webhook has deliveries whose ids (UUIDv7, so `d` keys sort
/// by time) fall in that Unix second. A webhook's deliveries are the `d` records of its
/// seconds' [`deliveries_in_second`] ranges that name it: one index write per webhook and
/// second rather than an `x` entry per delivery.
pub(super) fn webhook_second(webhook: Uuid, second: u64) -> Vec<u8> {
    key(WEBHOOK_SECOND, &[webhook.as_bytes(), &second.to_be_bytes()])
}

/// The second in a [`webhook_second`] key.
pub(super) fn second_of_key(k: &[u8]) -> Option<u64> {
    number_after_webhook(k)
}

/// The Unix second a UUIDv7 was made in (its first 48 bits are Unix milliseconds); `None`
/// for an id of another version, which is listed by an `x` entry instead.
pub(super) fn id_second(id: Uuid) -> Option<u64> {
    if id.get_version_num() != 7 {
        return None;
    }
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id.as_bytes()[..6]);
    Some(u64::from_be_bytes(ms) / 1000)
}

/// When a UUIDv7 id was made, in Unix milliseconds.
pub(super) fn created_ms(id: Uuid) -> Option<u64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// The `d` keys of deliveries whose UUIDv7 ids were made in `second`: `start..end`.
pub(super) fn deliveries_in_second(second: u64) -> (Vec<u8>, Vec<u8>) {
    made_in_second(DELIVERY, second)
}

/// The first `e` key of an event whose UUIDv7 id was made in `second` or later.
pub(super) fn events_from_second(second: u64) -> Vec<u8> {
    made_in_second(EVENT, second).0
}

/// The lowest UUIDv7 id made in `second` (ids made in it are `first(second)..first(second + 1)`).
pub(super) fn first_id_of_second(second: u64) -> Uuid {
    let ms = second.saturating_mul(1000).to_be_bytes();
    let mut bytes = [0; 16];
    // The low 48 bits of the milliseconds, as a UUIDv7 holds them.
    bytes[..6].copy_from_slice(&ms[2..]);
    Uuid::from_bytes(bytes)
}

/// The keys under `prefix` + UUIDv7 id of ids made in `second`: `start..end`.
fn made_in_second(prefix: u8, second: u64) -> (Vec<u8>, Vec<u8>) {
    let bound = |second: u64| {
        let ms = second.saturating_mul(1000).to_be_bytes();
        let mut k = Vec::with_capacity(17);
        k.push(prefix);
        // The low 48 bits of the milliseconds, as a UUIDv7 holds them, then the lowest id.
        k.extend_from_slice(&ms[2..]);
        k.extend_from_slice(&[0; 10]);
        k
    };
    (bound(second), bound(second.saturating_add(1)))
}

pub(super) fn by_event(d: &Delivery) -> Vec<u8> {
    key(BY_EVENT, &[d.event_id.as_bytes(), d.id.as_bytes()])
}

pub(super) fn attempt(delivery: Uuid, number: u32) -> Vec<u8> {
    key(ATTEMPT, &[delivery.as_bytes(), &number.to_be_bytes()])
}

/// The delivery id and attempt number of an `a` key.
pub(super) fn attempt_parts(k: &[u8]) -> Option<(Uuid, u32)> {
    let delivery = Uuid::from_slice(k.get(1..17)?).ok()?;
    let number = u32::from_be_bytes(k.get(17..21)?.try_into().ok()?);
    Some((delivery, number))
}

/// `t` webhook id, attempt time (Unix ms, big-endian u64), delivery id, attempt number: a
/// webhook's attempts in time order.
pub(super) fn attempt_by_time(webhook: Uuid, at_ms: u64, delivery: Uuid, number: u32) -> Vec<u8> {
    key(
        ATTEMPT_BY_TIME,
        &[
            webhook.as_bytes(),
            &at_ms.to_be_bytes(),
            delivery.as_bytes(),
            &number.to_be_bytes(),
        ],
    )
}

/// The start of `webhook`'s attempts made at or after `at_ms`.
pub(super) fn attempt_by_time_from(webhook: Uuid, at_ms: u64) -> Vec<u8> {
    by_time_from(ATTEMPT_BY_TIME, webhook, at_ms)
}

/// The start of `webhook`'s entries made at or after `at_ms` in a by-time index (`t`, `f`).
pub(super) fn by_time_from(prefix: u8, webhook: Uuid, at_ms: u64) -> Vec<u8> {
    key(prefix, &[webhook.as_bytes(), &at_ms.to_be_bytes()])
}

/// The `f` entry beside an attempt's `t` entry: the same key under the other prefix.
pub(super) fn failure_by_time(attempt_by_time: &[u8]) -> Vec<u8> {
    let mut k = attempt_by_time.to_vec();
    if let Some(p) = k.first_mut() {
        *p = FAILURE_BY_TIME;
    }
    k
}

/// The time, delivery and number in an `attempt_by_time` key.
pub(super) fn attempt_by_time_parts(k: &[u8]) -> Option<(u64, Uuid, u32)> {
    let at = u64::from_be_bytes(k.get(17..25)?.try_into().ok()?);
    let delivery = Uuid::from_slice(k.get(25..41)?).ok()?;
    let number = u32::from_be_bytes(k.get(41..45)?.try_into().ok()?);
    Some((at, delivery, number))
}

/// The value of an `attempt_by_time` entry: success (1 byte), duration ms and lag ms
/// (big-endian u64 each): all statistics read, so no attempt record is decoded for them.
pub(super) fn attempt_sample(s: &crate::store::AttemptSample) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = u8::from(s.success);
    v[1..9].copy_from_slice(&s.duration_ms.to_be_bytes());
    v[9..17].copy_from_slice(&s.lag_ms.to_be_bytes());
    v
}

/// The sample an `attempt_by_time` value holds.
pub(super) fn attempt_sample_of(v: &[u8]) -> Option<crate::store::AttemptSample> {
    Some(crate::store::AttemptSample {
        success: *v.first()? == 1,
        duration_ms: u64::from_be_bytes(v.get(1..9)?.try_into().ok()?),
        lag_ms: u64::from_be_bytes(v.get(9..17)?.try_into().ok()?),
    })
}

/// The id at the end of a key (every index key ends with the 16-byte id it points to).
pub(super) fn trailing_id(k: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(k.get(k.len().checked_sub(16)?..)?).ok()
}
