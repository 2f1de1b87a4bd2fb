//! The events of deliveries held in memory (see [`super::fresh`]), kept for the scheduler so
//! that sending a new delivery need not read back and decode the event its request just wrote.
//!
//! Reading an event back cost its delivery a sled lookup and a JSON decode, about 25k
//! instructions (callgrind, matched and delivered), a tenth of what a delivery costs. An event
//! is kept here when all its deliveries were taken into memory, for as many reads as it has
//! deliveries; the last read takes it out without a copy. Like the journal's handoff it is
//! only a shortcut: an event not found here (a retry, one pruned, one past [`MAX_EVENTS`],
//! after a reopen) is read from sled, so dropping any of it is always safe. Events are never
//! changed once stored, so a kept one is the stored one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::event::Event;

/// At most this many events are kept. Each has a payload of at most 4 KiB of JSON (a larger
/// one is kept in a file and never here), a few times that in memory.
const MAX_EVENTS: usize = 256;

/// An event not read this long after it was kept is dropped (its deliveries are waiting:
/// a paused webhook, a batch, one whose webhook was deleted); it is read from sled if it is
/// wanted later.
const KEEP_FOR_MS: u64 = 20_000;

struct Kept {
    event: Event,
    /// Reads left: its deliveries not yet sent.
    reads: usize,
    kept_ms: u64,
}

#[derive(Default)]
pub(super) struct Recent(Mutex<HashMap<Uuid, Kept>>);

impl Recent {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Kept>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `event` for `reads` reads, unless [`MAX_EVENTS`] are kept already.
    pub(super) fn keep(&self, event: &Event, reads: usize, now_ms: u64) {
        if reads == 0 {
            return;
        }
        let mut kept = self.lock();
        if kept.len() < MAX_EVENTS {
            kept.insert(
                event.id,
                Kept {
                    event: event.clone(),
                    reads,
                    kept_ms: now_ms,
                },
            );
        }
    }

    /// The event `id` for one of its deliveries, if kept: the last read takes it out.
    pub(super) fn read(&self, id: Uuid) -> Option<Event> {
        let mut kept = self.lock();
        let entry = kept.get_mut(&id)?;
        entry.reads = entry.reads.saturating_sub(1);
        if entry.reads > 0 {
            return Some(entry.event.clone());
        }
        kept.remove(&id).map(|k| k.event)
    }

    /// Drops what was kept longer than [`KEEP_FOR_MS`] at `now_ms`.
    pub(super) fn prune(&self, now_ms: u64) {
        self.lock()
            .retain(|_, k| k.kept_ms.saturating_add(KEEP_FOR_MS) > now_ms);
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
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

    fn event(i: u64) -> Event {
        Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({ "id": i }),
        )
    }

    #[test]
    fn an_event_is_read_once_per_delivery_then_gone() {
        let r = Recent::default();
        let e = event(1);
        r.keep(&e, 2, 1_000);
        assert_eq!(r.read(e.id), Some(e.clone()));
        assert_eq!(r.read(e.id), Some(e.clone()), "the last read takes it");
        assert_eq!(r.read(e.id), None, "a retry reads it from sled");
        r.keep(&e, 0, 1_000);
        assert_eq!(r.len(), 0, "nothing to keep for no delivery");
    }

    #[test]
    fn at_most_max_events_are_kept_and_old_ones_are_pruned() {
        let r = Recent::default();
        let events: Vec<Event> = (0..MAX_EVENTS as u64 + 5).map(event).collect();
        for (i, e) in events.iter().enumerate() {
            r.keep(e, 1, 1_000 + i as u64);
        }
        assert_eq!(r.len(), MAX_EVENTS);
        assert_eq!(r.read(events[MAX_EVENTS].id), None, "refused when full");
        assert!(r.read(events[0].id).is_some());
        // The first eleven were kept at 1,000..=1,010 ms (one of them read already).
        r.prune(1_010 + KEEP_FOR_MS);
        assert_eq!(r.len(), MAX_EVENTS - 11);
        assert_eq!(r.read(events[10].id), None);
        assert!(r.read(events[11].id).is_some());
        r.clear();
        assert_eq!(r.len(), 0);
    }
}
