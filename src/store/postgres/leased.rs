//! The events of deliveries just leased to this instance, read with the lease: the engine
//! asks for each delivery's event when it sends it ([`Store::event`](crate::store::Store::event))
//! and is answered from here without a round trip.
//!
//! An event stays while a delivery leased with it has not asked for it, however many
//! deliveries are held ahead (over every webhook): it leaves when its last delivery takes it
//! or is given back. What is never asked for (a batch gathered before it is due, deliveries
//! forgotten when the store failed or their hold ran out) ages out: past twice the entries the
//! last sweep left (at least [`SWEEP_FROM`], at most [`HARD_MAX`]), those not leased again
//! within a lease are dropped. A delivery is claimed afresh (and its event read with it) once its lease has run
//! out, so nothing is dropped that the engine may still take. [`HARD_MAX`] bounds the rest.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::event::Event;

/// Entries kept before the first sweep, and at least between two.
const SWEEP_FROM: usize = 1024;
/// Entries kept at most, whatever their age (the oldest go first): far above what the
/// engine holds ahead (at most 64 deliveries per webhook).
const HARD_MAX: usize = 1 << 16;

/// One event and the leased deliveries that have not taken it yet.
struct Kept {
    event: Event,
    deliveries: Vec<Uuid>,
    /// When one of them was last leased.
    at: Instant,
}

pub(super) struct LeasedEvents {
    by_event: HashMap<Uuid, Kept>,
    /// Each delivery waiting for its event, to give one back without a search.
    by_delivery: HashMap<Uuid, Uuid>,
    /// How long a lease lasts: past it, an entry is no use.
    lease: Duration,
    /// The size past which the next [`LeasedEvents::keep`] sweeps.
    sweep_at: usize,
}

impl LeasedEvents {
    pub(super) fn new(lease: Duration) -> Self {
        Self {
            by_event: HashMap::new(),
            by_delivery: HashMap::new(),
            lease,
            sweep_at: SWEEP_FROM,
        }
    }

    /// Keeps `event` for `delivery`, leased `now`.
    pub(super) fn keep(&mut self, delivery: Uuid, event: Event, now: Instant) {
        let id = event.id;
        let kept = self.by_event.entry(id).or_insert_with(|| Kept {
            event,
            deliveries: Vec::new(),
            at: now,
        });
        kept.at = now;
        if !kept.deliveries.contains(&delivery) {
            kept.deliveries.push(delivery);
        }
        self.by_delivery.insert(delivery, id);
        if self.by_event.len() > self.sweep_at {
            self.sweep(now);
        }
    }

    /// The event `id` for one of the deliveries waiting for it (it leaves with the last).
    pub(super) fn take(&mut self, id: Uuid) -> Option<Event> {
        let kept = self.by_event.get_mut(&id)?;
        if let Some(delivery) = kept.deliveries.pop() {
            self.by_delivery.remove(&delivery);
        }
        if kept.deliveries.is_empty() {
            return self.by_event.remove(&id).map(|k| k.event);
        }
        Some(kept.event.clone())
    }

    /// Forgets what `deliveries` (given back) were waiting for.
    pub(super) fn give_back(&mut self, deliveries: &[Uuid]) {
        for delivery in deliveries {
            let Some(id) = self.by_delivery.remove(delivery) else {
                continue;
            };
            if let Some(kept) = self.by_event.get_mut(&id) {
                kept.deliveries.retain(|d| d != delivery);
                if kept.deliveries.is_empty() {
                    self.by_event.remove(&id);
                }
            }
        }
    }

    /// Events kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_event.len()
    }

    /// Drops what was not leased again within a lease; then, if still more than [`HARD_MAX`],
    /// the oldest.
    fn sweep(&mut self, now: Instant) {
        let lease = self.lease;
        self.by_event
            .retain(|_, k| now.saturating_duration_since(k.at) < lease);
        if self.by_event.len() > HARD_MAX {
            let mut ages: Vec<(Instant, Uuid)> =
                self.by_event.iter().map(|(id, k)| (k.at, *id)).collect();
            ages.sort_unstable();
            let excess = self.by_event.len() - HARD_MAX / 2;
            for (_, id) in ages.into_iter().take(excess) {
                self.by_event.remove(&id);
            }
        }
        let by_event = &self.by_event;
        self.by_delivery.retain(|_, id| by_event.contains_key(id));
        self.sweep_at = (self.by_event.len() * 2).clamp(SWEEP_FROM, HARD_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Topic;

    fn event() -> Event {
        Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        )
    }

    /// Far more events than the old bound of 1,024, all leased within the lease: every one is
    /// answered from here, once per delivery.
    #[test]
    fn every_event_leased_within_the_lease_stays_until_taken() {
        let now = Instant::now();
        let mut kept = LeasedEvents::new(Duration::from_secs(60));
        let events: Vec<Event> = (0..5000).map(|_| event()).collect();
        for e in &events {
            kept.keep(Uuid::now_v7(), e.clone(), now);
        }
        assert_eq!(kept.len(), 5000);
        for e in &events {
            assert_eq!(kept.take(e.id).map(|k| k.id), Some(e.id));
        }
        assert_eq!(kept.len(), 0, "each leaves once taken");
    }

    /// An event delivered to two webhooks is answered from here for both deliveries.
    #[test]
    fn an_event_stays_for_each_of_its_deliveries() {
        let now = Instant::now();
        let mut kept = LeasedEvents::new(Duration::from_secs(60));
        let e = event();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        kept.keep(a, e.clone(), now);
        kept.keep(b, e.clone(), now);
        kept.keep(b, e.clone(), now);
        assert!(kept.take(e.id).is_some());
        assert!(kept.take(e.id).is_some(), "the second delivery's");
        assert!(
            kept.take(e.id).is_none(),
            "a lease again does not count twice"
        );
        kept.keep(a, e.clone(), now);
        kept.keep(c, e.clone(), now);
        kept.give_back(&[a]);
        assert!(kept.take(e.id).is_some(), "c's is still there");
        assert_eq!(kept.len(), 0);
    }

    /// Events never asked for do not pile up: once past twice the last size, those not leased
    /// again within a lease go; those still within it stay.
    #[test]
    fn events_never_asked_for_age_out_after_a_lease() {
        let lease = Duration::from_secs(60);
        let start = Instant::now();
        let mut kept = LeasedEvents::new(lease);
        for _ in 0..SWEEP_FROM {
            kept.keep(Uuid::now_v7(), event(), start);
        }
        let later = start + lease;
        let fresh: Vec<Event> = (0..10).map(|_| event()).collect();
        for e in &fresh {
            kept.keep(Uuid::now_v7(), e.clone(), later);
        }
        assert_eq!(kept.len(), 10, "the stale ones went at the first sweep");
        for e in &fresh {
            assert!(kept.take(e.id).is_some());
        }
        // Within the lease, nothing goes however many there are.
        for round in 0..20u64 {
            let now = later + Duration::from_millis(round);
            for _ in 0..500 {
                kept.keep(Uuid::now_v7(), event(), now);
            }
        }
        assert_eq!(kept.len(), 10_000);
        // A lease on, they go as soon as the size has doubled since the last sweep.
        let much_later = later + lease * 2;
        let n = kept.sweep_at + 1 - kept.len();
        for _ in 0..n {
            kept.keep(Uuid::now_v7(), event(), much_later);
        }
        assert_eq!(kept.len(), n, "only those leased a lease later are left");
        assert_eq!(kept.by_delivery.len(), n);
    }

    /// However young, no more than [`HARD_MAX`] are kept: past it, the oldest half goes.
    #[test]
    fn at_most_hard_max_are_kept() {
        let start = Instant::now();
        let mut kept = LeasedEvents::new(Duration::from_secs(3600));
        let first = event();
        kept.keep(Uuid::now_v7(), first.clone(), start);
        for i in 0..HARD_MAX as u64 + 1 {
            kept.keep(
                Uuid::now_v7(),
                event(),
                start + Duration::from_micros(i + 1),
            );
        }
        assert!(kept.len() <= HARD_MAX, "{}", kept.len());
        assert!(kept.take(first.id).is_none(), "the oldest went first");
    }
}
