//! Group commit: the durability barrier of `flush = "every-event"`.
//!
//! sled's own `flush` writes its log buffers and waits for them with `sync_file_range`, which
//! neither flushes the drive's write cache nor the file's size: a power cut can still lose what
//! it wrote. The barrier adds an `fdatasync` of sled's log file (`<store>/db`) after the flush.
//!
//! One barrier serves every write that finished before it started. A writer takes a ticket
//! after its sled writes; if no barrier runs, it runs one itself for every ticket issued so far;
//! if one runs, it waits, and the next barrier (run by one of the waiters) covers it and everyone
//! who arrived meanwhile. Under load, events share barriers in proportion to how many arrive
//! while one runs (the way PostgreSQL and RocksDB group their log flushes); a lone event pays one
//! barrier and no added wait: there is no timer.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::store::{BarrierStats, StoreError};

#[derive(Default)]
struct State {
    /// Tickets handed out: each is one finished write waiting to be durable.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// The tickets up to this one were covered by a barrier that failed.
    failed: u64,
    /// The error of that barrier.
    error: Option<String>,
    /// A barrier is running.
    running: bool,
    /// sled's log file, opened by the first barrier.
    file: Option<File>,
    stats: BarrierStats,
}

/// The group commit of one sled database (see the module documentation).
pub struct Barrier {
    /// sled's log file.
    path: PathBuf,
    state: Mutex<State>,
    done: Condvar,
}

impl Barrier {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    pub fn stats(&self) -> BarrierStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once everything written to `db` before this call is on stable storage. Blocks;
    /// on a worker thread of a multi-threaded tokio runtime (pingora's), the thread's other
    /// tasks move to another thread while it waits.
    pub fn commit(&self, db: &sled::Db) -> Result<(), StoreError> {
        let wait = || self.wait(db);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    fn wait(&self, db: &sled::Db) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.failed >= ticket {
                return Err(StoreError::Barrier(
                    state
                        .error
                        .clone()
                        .unwrap_or_else(|| "unknown error".into()),
                ));
            }
            if state.running {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // Run a barrier for every ticket issued so far: each was issued after its write.
            state.running = true;
            let upto = state.issued;
            let file = state.file.take();
            drop(state);
            let (file, result) = self.sync(db, file);
            state = self.lock();
            state.running = false;
            state.file = file;
            match result {
                Ok(()) => {
                    state.stats.syncs += 1;
                    state.stats.writes += upto - state.durable.max(state.failed);
                    state.durable = upto;
                }
                Err(e) => {
                    state.failed = upto;
                    state.error = Some(e);
                }
            }
            self.done.notify_all();
        }
    }

    /// One barrier: sled writes its buffers, then the file's data reach stable storage.
    fn sync(&self, db: &sled::Db, file: Option<File>) -> (Option<File>, Result<(), String>) {
        if let Err(e) = db.flush() {
            return (file, Err(format!("sled flush: {e}")));
        }
        let file = match file {
            Some(f) => f,
            // fsync acts on the file, whichever descriptor names it: sled's own is not exposed.
            None => match File::open(&self.path) {
                Ok(f) => f,
                Err(e) => return (None, Err(format!("open {}: {e}", self.path.display()))),
            },
        };
        match file.sync_data() {
            Ok(()) => (Some(file), Ok(())),
            // A descriptor whose sync failed may have lost its error state: open a new one.
            Err(e) => (None, Err(format!("fdatasync {}: {e}", self.path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn open() -> (tempfile::TempDir, sled::Db, Arc<Barrier>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let barrier = Arc::new(Barrier::new(dir.path().join("db")));
        (dir, db, barrier)
    }

    #[test]
    fn a_lone_write_runs_its_own_barrier() {
        let (_dir, db, barrier) = open();
        for i in 0u32..3 {
            db.insert(i.to_be_bytes(), &[1u8][..]).expect("insert");
            barrier.commit(&db).expect("commit");
        }
        assert_eq!(
            barrier.stats(),
            BarrierStats {
                syncs: 3,
                writes: 3
            }
        );
    }

    /// Writers that arrive while a barrier runs share the next one; every writer returns only
    /// after a barrier that started after its write.
    #[test]
    fn concurrent_writers_share_barriers() {
        let (_dir, db, barrier) = open();
        let threads: Vec<_> = (0u32..16)
            .map(|t| {
                let (db, barrier) = (db.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    for i in 0u32..50 {
                        db.insert([t.to_be_bytes(), i.to_be_bytes()].concat(), &[0u8; 64][..])
                            .expect("insert");
                        barrier.commit(&db).expect("commit");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let stats = barrier.stats();
        assert_eq!(stats.writes, 16 * 50);
        assert!(stats.syncs >= 1 && stats.syncs <= stats.writes, "{stats:?}");
    }

    #[test]
    fn a_failed_barrier_fails_its_writers_and_the_next_one_runs_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .expect("open sled");
        // The log file is not where the barrier looks: its fdatasync cannot run.
        let barrier = Barrier::new(dir.path().join("missing"));
        db.insert(b"k", &b"v"[..]).expect("insert");
        let err = barrier.commit(&db).expect_err("no file to sync");
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(barrier.stats().syncs, 0);
        std::fs::write(dir.path().join("missing"), b"").expect("create");
        barrier.commit(&db).expect("the next barrier runs");
        assert_eq!(barrier.stats().syncs, 1);
    }
}
