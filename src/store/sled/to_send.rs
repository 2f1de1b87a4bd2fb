//! The events of deliveries held in memory (see [`super::fresh`]), kept for the scheduler so
//! that sending a new delivery need not read back and decode the event its request just wrote.
//!
//! Reading an event back cost its delivery a sled lookup and a JSON decode, about 25k
//! instructions (callgrind, matched and delivered), a tenth of what a delivery costs. An event
//! is kept here when all its deliveries were taken into memory, for as many reads as it has
//! deliveries whose webhooks keep up (see `fresh::Reservation::keeping_up`: a paused
//! webhook's events would only be dropped unread); with none, it is not kept. It is the
//! request's own event, shared (`Store::append_shared`), so keeping it copies nothing, and
//! the last read takes it out without a copy.
//!
//! It is only a shortcut: an event not found here (a retry, one dropped for age or room, one
//! stored before a reopen) is read from sled, so dropping any of it is always safe. What is
//! kept is what was stored: events are never changed once stored, and serde_json reads every
//! number back as it was written (`float_roundtrip`), so a delivery's first attempt and its
//! retries send the same body.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::event::Event;

/// At most this many events are kept; past it, the oldest makes room. Each has a payload of
/// at most 4 KiB of JSON (a larger one is kept in a file and never here), a few times that in
/// memory.
const MAX_EVENTS: usize = 256;

/// An event not read this long after it was kept is dropped (its deliveries are waiting: a
/// paused webhook, a batch, one whose webhook was deleted); it is read from sled if it is
/// wanted later.
const KEEP_FOR_MS: u64 = 20_000;

struct Kept {
    event: Arc<Event>,
    /// Reads left: its deliveries not yet sent.
    reads: usize,
    kept_ms: u64,
}

/// Kept events by id: UUIDv7, so in the order their requests made them.
#[derive(Default)]
pub(super) struct ToSend {
    kept: Mutex<BTreeMap<Uuid, Kept>>,
    /// Moves on [`ToSend::clear`]: a keep that began before is refused.
    generation: AtomicU64,
}

impl ToSend {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Uuid, Kept>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a store write that may keep an event takes before it writes.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `event` for `reads` reads, unless the store was cleared since `generation` was
    /// taken; the oldest event kept makes room past [`MAX_EVENTS`].
    pub(super) fn keep(&self, event: &Arc<Event>, reads: usize, now_ms: u64, generation: u64) {
        if reads == 0 {
            return;
        }
        let event = Arc::clone(event);
        let mut kept = self.lock();
        if self.generation() != generation {
            return;
        }
        while kept.len() >= MAX_EVENTS {
            kept.pop_first();
        }
        kept.insert(
            event.id,
            Kept {
                event,
                reads,
                kept_ms: now_ms,
            },
        );
    }

    /// The event `id` for one of its deliveries, if kept: the last read takes it out (a copy
    /// only while someone else still shares it: the live stream, another delivery's read).
    pub(super) fn read(&self, id: Uuid) -> Option<Event> {
        let event = {
            let mut kept = self.lock();
            let entry = kept.get_mut(&id)?;
            entry.reads = entry.reads.saturating_sub(1);
            if entry.reads > 0 {
                Arc::clone(&entry.event)
            } else {
                kept.remove(&id)?.event
            }
        };
        Some(Arc::try_unwrap(event).unwrap_or_else(|shared| Event::clone(&shared)))
    }

    /// Forgets `id` (its record was removed).
    pub(super) fn forget(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    /// Drops what was kept longer than [`KEEP_FOR_MS`] at `now_ms`.
    pub(super) fn prune(&self, now_ms: u64) {
        self.lock()
            .retain(|_, k| k.kept_ms.saturating_add(KEEP_FOR_MS) > now_ms);
    }

    /// Forgets everything, and refuses the keeps of writes that began before.
    pub(super) fn clear(&self) {
        let mut kept = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        kept.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Topic;

    fn event(i: u64) -> Arc<Event> {
        Arc::new(Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({ "id": i }),
        ))
    }

    #[test]
    fn an_event_is_read_once_per_delivery_then_gone() {
        let r = ToSend::default();
        let e = event(1);
        r.keep(&e, 2, 1_000, r.generation());
        assert_eq!(r.read(e.id).as_ref(), Some(&*e));
        assert_eq!(r.read(e.id).as_ref(), Some(&*e), "the last read takes it");
        assert_eq!(r.read(e.id), None, "a retry reads it from sled");
        r.keep(&e, 0, 1_000, r.generation());
        assert_eq!(r.len(), 0, "nothing to keep for no delivery");
        r.keep(&e, 1, 1_000, r.generation());
        r.forget(e.id);
        assert_eq!(r.read(e.id), None, "its record was removed");
    }

    #[test]
    fn the_oldest_make_room_and_old_ones_are_pruned() {
        let r = ToSend::default();
        let events: Vec<Arc<Event>> = (0..MAX_EVENTS as u64 + 5).map(event).collect();
        for (i, e) in events.iter().enumerate() {
            r.keep(e, 1, 1_000 + i as u64, r.generation());
        }
        assert_eq!(r.len(), MAX_EVENTS);
        for e in &events[..5] {
            assert_eq!(r.read(e.id), None, "the oldest made room");
        }
        assert!(r.read(events[MAX_EVENTS + 4].id).is_some(), "the newest");
        // Kept at 1,005..=1,010 ms: six, all of them in the map.
        r.prune(1_010 + KEEP_FOR_MS);
        assert_eq!(r.len(), MAX_EVENTS - 1 - 6);
        assert_eq!(r.read(events[10].id), None);
        assert!(r.read(events[11].id).is_some());
    }

    #[test]
    fn a_keep_from_before_a_clear_is_refused() {
        let r = ToSend::default();
        let before = r.generation();
        r.clear();
        let e = event(1);
        r.keep(&e, 1, 1_000, before);
        assert_eq!(r.len(), 0);
        r.keep(&e, 1, 1_000, r.generation());
        assert_eq!(r.len(), 1);
    }
}
