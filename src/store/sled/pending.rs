//! Events held as files while the database is not open.
//!
//! While another hooktap holds the database (an upgrade hand-over) or the disk cannot be
//! written, each derived event is kept as one file in `<store>/pending/`: written whole and
//! renamed into place (and synced in `every-event` mode), so that a crash leaves either the
//! whole event or nothing. Whichever process holds the database moves them in.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{SledStore, create_private_dir};
use crate::event::Event;
use crate::store::{FlushMode, StoreError};

/// Where events wait while the database is not open, under the store directory.
const PENDING: &str = "pending";

impl SledStore {
    /// How many events wait in `pending/` of the store at `path` (a stopped store's, for
    /// tools: they have no deliveries yet).
    pub fn held_events(path: &Path) -> Result<usize, StoreError> {
        let dir = path.join(PENDING);
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StoreError::Pending {
                file: dir.display().to_string(),
                source,
            }),
        }
    }

    /// Keeps an event in `pending/` while the database is not open: one file per event,
    /// written whole and renamed into place (and synced in `every-event` mode), so that a crash
    /// leaves either the whole event or nothing. [`SledStore::drain_pending`] moves them into the
    /// database once it opens.
    pub fn hold(&self, event: &Event) -> Result<(), StoreError> {
        let result = (|| {
            self.writable()?;
            let dir = self.path.join(PENDING);
            let file = dir.join(format!("{}.json", event.id));
            let io = |source| StoreError::Pending {
                file: file.display().to_string(),
                source,
            };
            // Set up once, not per event (the directory may be missing when the store could
            // never be opened).
            if !dir.is_dir() {
                create_private_dir(&self.path)?;
                std::fs::create_dir_all(&dir).map_err(io)?;
            }
            let mut tmp =
                tempfile::NamedTempFile::with_prefix_in(".incoming-", &dir).map_err(io)?;
            std::io::Write::write_all(&mut tmp, &serde_json::to_vec(event)?).map_err(io)?;
            if self.flush == FlushMode::EveryEvent {
                tmp.as_file().sync_all().map_err(io)?;
            }
            tmp.persist(&file).map_err(|e| io(e.error))?;
            if self.flush == FlushMode::EveryEvent {
                std::fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            Ok(())
        })();
        if result.is_err() {
            self.failed_appends.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Hands every event waiting in `pending/` to `store` (in time order: ids are UUIDv7) and
    /// removes each once `store` succeeded. A crash in between stores that event again on the
    /// next drain: delivery is at least once. Returns how many were moved.
    pub fn drain_pending(
        &self,
        store: &mut dyn FnMut(&Event) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let dir = self.path.join(PENDING);
        let io = |file: &Path| {
            let file = file.display().to_string();
            move |source| StoreError::Pending { file, source }
        };
        let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&dir)(e)),
        };
        files.sort();
        let mut moved = 0;
        for file in files {
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            match serde_json::from_slice::<Event>(&bytes) {
                Ok(event) => store(&event)?,
                Err(e) => {
                    // Keep it for a person to look at rather than lose it or retry forever.
                    let aside = file.with_extension("unreadable");
                    tracing::error!(file = %file.display(), error = %e, kept_as = %aside.display(),
                        "a pending event cannot be read");
                    std::fs::rename(&file, &aside).map_err(io(&file))?;
                    continue;
                }
            }
            std::fs::remove_file(&file).map_err(io(&file))?;
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::super::{open_for_tests as store, test_config as config};
    use super::*;
    use crate::event::Topic;

    fn event_at(created_at: OffsetDateTime) -> Event {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = created_at;
        e
    }

    #[test]
    fn events_held_while_unopened_are_moved_in_order_once_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = SledStore::unopened(&config(dir.path(), FlushMode::EveryEvent));
        assert!(!held.is_ready());
        let (first, second) = (
            event_at(OffsetDateTime::now_utc()),
            event_at(OffsetDateTime::now_utc()),
        );
        held.hold(&first).expect("hold");
        held.hold(&second).expect("hold");
        std::fs::write(dir.path().join("data/pending/zzz.json"), b"{not json").expect("write");

        // Another process (or this one, once open) drains them into the database.
        let s = store(dir.path());
        let mut moved = Vec::new();
        let n = s
            .drain_pending(&mut |e| {
                moved.push(e.id);
                s.append(e, &[])
            })
            .expect("drain");
        assert_eq!(n, 2);
        assert_eq!(moved, vec![first.id, second.id], "in time order");
        assert_eq!(s.event(second.id).expect("read"), Some(second.clone()));
        let left: Vec<String> = std::fs::read_dir(dir.path().join("data/pending"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["zzz.unreadable"],
            "an unreadable file is set aside, not lost"
        );
        assert_eq!(s.drain_pending(&mut |_| Ok(())).expect("drain"), 0);
    }

    #[test]
    fn a_failed_store_write_keeps_the_held_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let held = SledStore::unopened(&config(
            dir.path(),
            FlushMode::Interval(Duration::from_millis(100)),
        ));
        let e = event_at(OffsetDateTime::now_utc());
        held.hold(&e).expect("hold");
        assert!(s.drain_pending(&mut |_| Err(StoreError::NotOpen)).is_err());
        assert_eq!(
            s.drain_pending(&mut |e| s.append(e, &[])).expect("drain"),
            1,
            "still there"
        );
    }
}
