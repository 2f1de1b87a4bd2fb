//! Attempt statistics: the `t` index (webhook, time) and what is read from it.
//!
//! `record_attempts` writes one small entry per attempt beside the attempt log; statistics
//! over a window are one range scan of it, decoding 17 bytes per attempt and no record. The
//! retention sweep prunes it by time, and deleting a webhook drops its entries.

use uuid::Uuid;

use super::events::{StoredEvent, delivery_ids};
use super::{SledStore, keys, record};
use crate::event::{Attempt, Delivery, unix_ms};
use crate::store::{AttemptSample, AttemptStats, StatsAccumulator, StatsWindow, StoreError};

impl SledStore {
    /// The index entry of `attempt` of `delivery` (the delivery as it was before the attempt:
    /// its creation time is the event's).
    pub(super) fn attempt_index(delivery: &Delivery, attempt: &Attempt) -> (Vec<u8>, [u8; 17]) {
        let at_ms = unix_ms(attempt.created_at);
        let sample = AttemptSample {
            success: attempt.success,
            duration_ms: attempt.duration_ms,
            lag_ms: at_ms.saturating_sub(unix_ms(delivery.created_at)),
        };
        (
            keys::attempt_by_time(
                attempt.webhook_id,
                at_ms,
                attempt.delivery_id,
                attempt.number,
            ),
            keys::attempt_sample(&sample),
        )
    }

    /// `webhook`'s attempts within `window`, bucket by bucket: one range scan of the index.
    pub fn attempt_stats(
        &self,
        webhook: Uuid,
        window: &StatsWindow,
    ) -> Result<AttemptStats, StoreError> {
        attempt_stats_in(&*self.db()?, webhook, window)
    }

    /// `webhook`'s most recent failed attempt made at or after `since_ms`.
    pub fn last_failure(
        &self,
        webhook: Uuid,
        since_ms: u64,
    ) -> Result<Option<Attempt>, StoreError> {
        last_failure_in(&*self.db()?, webhook, since_ms)
    }

    /// Removes the entries of attempts made before `cutoff_ms` from a by-time index (`t`, `f`), webhook by webhook: a
    /// range per webhook, so the sweep reads only what it removes (and one key per webhook).
    pub(super) fn sweep_attempt_index(
        &self,
        prefix: u8,
        cutoff_ms: u64,
    ) -> Result<usize, StoreError> {
        let db = self.db()?;
        let mut removed = 0;
        let mut from = vec![prefix];
        loop {
            let Some(first) = db
                .range(from.clone()..)
                .keys()
                .next()
                .transpose()?
                .filter(|k| k.first() == Some(&prefix))
            else {
                break;
            };
            let Some(webhook) = first.get(1..17).and_then(|b| Uuid::from_slice(b).ok()) else {
                break;
            };
            let mut batch = sled::Batch::default();
            for k in db
                .range(
                    keys::by_time_from(prefix, webhook, 0)
                        ..keys::by_time_from(prefix, webhook, cutoff_ms),
                )
                .keys()
            {
                batch.remove(k?);
                removed += 1;
            }
            self.write_freeing(|db| Ok(db.apply_batch(batch)?))?;
            // The next webhook's entries start at the next id.
            let Some(next) = webhook.as_u128().checked_add(1) else {
                break;
            };
            from = keys::key(prefix, &[Uuid::from_u128(next).as_bytes()]);
        }
        Ok(removed)
    }

    /// An event's deliveries, oldest first.
    pub fn deliveries_of_event(&self, event: Uuid) -> Result<Vec<Delivery>, StoreError> {
        let db = self.db()?;
        let listed = match db.get(keys::event(event))? {
            Some(v) => serde_json::from_slice::<StoredEvent>(&v)?.deliveries,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        for (id, _) in delivery_ids(&db, event, &listed)? {
            out.extend(self.delivery(id)?);
        }
        Ok(out)
    }
}

/// `webhook`'s attempts within `window`: one range scan of the index, each entry counted
/// into its bucket as it is read.
pub(super) fn attempt_stats_in(
    db: &sled::Db,
    webhook: Uuid,
    window: &StatsWindow,
) -> Result<AttemptStats, StoreError> {
    let range = keys::attempt_by_time_from(webhook, window.since_ms)
        ..keys::attempt_by_time_from(webhook, window.until_ms());
    let mut acc = StatsAccumulator::new(window);
    for entry in db.range(range) {
        let (k, v) = entry?;
        if let (Some((at, ..)), Some(sample)) =
            (keys::attempt_by_time_parts(&k), keys::attempt_sample_of(&v))
        {
            acc.add(at, sample);
        }
    }
    Ok(acc.finish())
}

/// `webhook`'s most recent failed attempt made at or after `since_ms`: the failures index
/// read backwards from now (no success is read), one attempt record decoded.
pub(super) fn last_failure_in(
    db: &sled::Db,
    webhook: Uuid,
    since_ms: u64,
) -> Result<Option<Attempt>, StoreError> {
    let range = keys::by_time_from(keys::FAILURE_BY_TIME, webhook, since_ms)
        ..keys::by_time_from(keys::FAILURE_BY_TIME, webhook, u64::MAX);
    for entry in db.range(range).rev() {
        let (k, _) = entry?;
        if let Some((_, delivery, number)) = keys::attempt_by_time_parts(&k) {
            let key = keys::attempt(delivery, number);
            if let Some(a) = db.get(&key)? {
                return record::decode_attempt(&key, &a).map(Some);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::open_for_tests as open;
    use super::*;
    use crate::event::{DeliveryState, Event, Topic};
    use crate::store::Recorded;
    use crate::webhook::{Origin, Webhook, WebhookSpec};

    /// One attempt made `days_ago`, recorded for a new event's delivery to `w`.
    fn attempt_days_ago(s: &SledStore, w: &Webhook, days_ago: i64) -> Delivery {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = OffsetDateTime::now_utc() - time::Duration::days(days_ago);
        let d = Delivery::new(&e, w.id, 0);
        s.append(&e, std::slice::from_ref(&d)).expect("append");
        let mut after = d.clone();
        after.state = DeliveryState::Pending;
        after.attempts = 1;
        let mut a = crate::store::contract::attempt(&d, 1, false);
        a.created_at = e.created_at + time::Duration::seconds(1);
        let change = Recorded {
            before: d.clone(),
            after,
            attempt: a,
        };
        assert!(s.record_attempts(w.id, &[change], None).expect("record"));
        d
    }

    fn index_len(s: &SledStore) -> usize {
        prefix_len(s, keys::ATTEMPT_BY_TIME)
    }

    fn prefix_len(s: &SledStore, prefix: u8) -> usize {
        s.db().expect("open").scan_prefix([prefix]).count()
    }

    #[test]
    fn the_sweep_prunes_the_index_by_time_for_every_webhook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let a = Webhook::new(WebhookSpec::example("a"), Origin::Api);
        let b = Webhook::new(WebhookSpec::example("b"), Origin::Api);
        for w in [&a, &b] {
            s.put_webhook(w).expect("put");
            attempt_days_ago(&s, w, 40);
            attempt_days_ago(&s, w, 0);
        }
        // A webhook deleted without its index entries (a store written mid-crash).
        let gone = Webhook::new(WebhookSpec::example("gone"), Origin::Api);
        s.put_webhook(&gone).expect("put");
        attempt_days_ago(&s, &gone, 40);
        assert_eq!(index_len(&s), 5);
        // The old deliveries are still pending, so their records stay; their index goes.
        s.sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert_eq!(index_len(&s), 2, "one young attempt per webhook is left");
        let window = StatsWindow {
            since_ms: unix_ms(OffsetDateTime::now_utc()) - 3_600_000,
            bucket_ms: 60_000,
            buckets: 61,
        };
        for w in [&a, &b] {
            assert_eq!(
                s.attempt_stats(w.id, &window).expect("stats").totals.failed,
                1
            );
        }
    }

    #[test]
    fn attempts_written_as_json_by_earlier_stores_are_read_beside_binary_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let w = Webhook::new(WebhookSpec::example("a"), Origin::Api);
        s.put_webhook(&w).expect("put");
        let d = attempt_days_ago(&s, &w, 0);
        // Attempt 1 was written in binary; attempt 2 as a store before this version wrote it,
        // with its index entries.
        let mut old = crate::store::contract::attempt(&d, 2, false);
        old.request_body = r#"{"id":1,"note":"\"quoted\""}"#.into();
        // After attempt 1 (made a second after its event): the newest failure.
        old.created_at = OffsetDateTime::now_utc() + time::Duration::seconds(2);
        let db = s.db().expect("open");
        db.insert(
            keys::attempt(d.id, 2),
            serde_json::to_vec(&old).expect("json"),
        )
        .expect("insert");
        let (index, sample) = SledStore::attempt_index(&d, &old);
        db.insert(keys::failure_by_time(&index), &[] as &[u8])
            .expect("insert");
        db.insert(index, &sample[..]).expect("insert");
        assert_eq!(
            db.get(keys::attempt(d.id, 1))
                .expect("get")
                .expect("attempt 1")[0],
            1,
            "a new attempt is binary"
        );

        let both = s.attempts(d.id).expect("read");
        assert_eq!(
            both.iter().map(|a| a.number).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(both[1], old);
        assert_eq!(s.last_failure(w.id, 0).expect("read"), Some(old));
    }

    #[test]
    fn failed_attempts_are_indexed_apart_and_leave_with_sweep_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path());
        let w = Webhook::new(WebhookSpec::example("a"), Origin::Api);
        s.put_webhook(&w).expect("put");
        attempt_days_ago(&s, &w, 40);
        let young = attempt_days_ago(&s, &w, 0);
        // A success after the failures: only the `t` index has it.
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = OffsetDateTime::now_utc();
        let d = Delivery::new(&e, w.id, 0);
        s.append(&e, std::slice::from_ref(&d)).expect("append");
        let mut after = d.clone();
        after.state = DeliveryState::Delivered;
        after.attempts = 1;
        let ok = Recorded {
            before: d.clone(),
            after,
            attempt: crate::store::contract::attempt(&d, 1, true),
        };
        assert!(s.record_attempts(w.id, &[ok], None).expect("record"));
        assert_eq!(index_len(&s), 3);
        assert_eq!(prefix_len(&s, keys::FAILURE_BY_TIME), 2, "the two failures");
        let last = s.last_failure(w.id, 0).expect("read").expect("a failure");
        assert_eq!(last.delivery_id, young.id, "the newest failure");
        s.sweep(OffsetDateTime::now_utc() - time::Duration::days(30))
            .expect("sweep");
        assert_eq!(
            prefix_len(&s, keys::FAILURE_BY_TIME),
            1,
            "the sweep prunes it"
        );
        s.delete_webhook(w.id).expect("delete");
        assert_eq!(prefix_len(&s, keys::FAILURE_BY_TIME), 0, "delete drops it");
        assert_eq!(index_len(&s), 0);
    }
}
