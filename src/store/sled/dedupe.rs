//! De-duplication keys: which keys a rule's `dedupe` has claimed, and until when.
//!
//! One record per key, `k` + the key's digest → the claim's end (Unix ms, big-endian). A claim
//! is one lookup and, for a new key, one compare-and-swap, so two requests racing with the same
//! key derive one event. Expired claims are overwritten when claimed again and removed by the
//! retention sweep.

use std::time::Duration;

use uuid::Uuid;

use super::{FlushMode, SledStore, keys};
use crate::event::DedupeKey;
use crate::store::StoreError;

fn ends_ms(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl SledStore {
    /// See [`crate::store::Store::claim_dedupe`].
    pub fn claim_dedupe(
        &self,
        key: &DedupeKey,
        _event: Uuid,
        now_ms: u64,
        window: Duration,
    ) -> Result<bool, StoreError> {
        let k = keys::dedupe(key);
        let ends = now_ms
            .saturating_add(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            .to_be_bytes();
        self.write(|db| {
            let current = db.get(&k)?;
            if current.as_deref().is_some_and(|v| ends_ms(v) > now_ms) {
                return Ok(false);
            }
            // Lost to a request that claimed the same key in between: a repeat.
            if db.compare_and_swap(&k, current, Some(&ends[..]))?.is_err() {
                return Ok(false);
            }
            if self.flush == FlushMode::EveryEvent {
                db.flush()?;
            }
            Ok(true)
        })
    }

    /// See [`crate::store::Store::release_dedupe`].
    pub fn release_dedupe(&self, key: &DedupeKey, _event: Uuid) -> Result<(), StoreError> {
        self.write_freeing(|db| Ok(db.remove(keys::dedupe(key)).map(drop)?))
    }

    /// Removes claims that ended at or before `now_ms`; returns how many.
    pub fn sweep_dedupe(&self, now_ms: u64) -> Result<usize, StoreError> {
        let db = self.db()?;
        let mut removed = 0;
        for entry in db.scan_prefix([keys::DEDUPE]) {
            let (k, v) = entry?;
            if ends_ms(&v) <= now_ms {
                // Only if unchanged: a claim made meanwhile stays.
                let gone = self.write_freeing(|db| {
                    Ok(db.compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?)
                })?;
                removed += usize::from(gone.is_ok());
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_holds_for_its_window_then_is_swept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::super::open_for_tests(dir.path());
        let a = DedupeKey::new("r", "a");
        let w = Duration::from_secs(10);
        assert_eq!(
            store.claim_dedupe(&a, Uuid::nil(), 1_000, w).ok(),
            Some(true)
        );
        assert_eq!(
            store.claim_dedupe(&a, Uuid::nil(), 5_000, w).ok(),
            Some(false)
        );
        assert_eq!(
            store
                .claim_dedupe(&DedupeKey::new("other", "a"), Uuid::nil(), 5_000, w)
                .ok(),
            Some(true),
            "another rule's key is another key"
        );
        assert_eq!(store.sweep_dedupe(10_999).ok(), Some(0));
        assert_eq!(store.sweep_dedupe(11_000).ok(), Some(1));
        assert_eq!(
            store.claim_dedupe(&a, Uuid::nil(), 11_000, w).ok(),
            Some(true)
        );
        store.release_dedupe(&a, Uuid::nil()).expect("release");
        assert_eq!(
            store.claim_dedupe(&a, Uuid::nil(), 11_001, w).ok(),
            Some(true)
        );
    }
}
