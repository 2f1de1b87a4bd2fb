//! Group commit: the durability barrier of `flush = "every-event"`.
//!
//! sled's own `flush` writes its log buffers and waits for them with `sync_file_range`, which
//! neither flushes the drive's write cache nor the file's size: a power cut can still lose what
//! it wrote. A barrier here is sled's flush followed by an `fdatasync` of sled's log file
//! (`<store>/db`).
//!
//! Writers do not run barriers. After its sled writes, a writer takes a ticket ([`Durable`]) and
//! goes on; one committer thread runs a barrier for every ticket issued so far, then the next
//! one for every ticket issued while the first ran, and so on (the way PostgreSQL and RocksDB
//! group their log flushes). A ticket is durable once a barrier that started after it was
//! issued has returned. Under load, events share barriers in proportion to how many arrive
//! while one runs; a lone event pays one barrier and no added wait: there is no timer.
//!
//! Waiting is asynchronous ([`Durable::poll`]): the proxy holds back the response's last bytes
//! until then without blocking a thread (see `proxy::connection`). [`Durable::wait`] blocks,
//! for callers that have no response to hold.
//!
//! A ticket issued on a tokio runtime does not wake the committer itself: it schedules a *kick*,
//! a task that yields once (to the back of the runtime's queue) and then wakes the committer
//! (one kick at a time per thread). So a barrier starts when the thread has run every task
//! that was ready with the ticket's, and covers the events of them all. Without it, on a busy core the committer woke at the
//! first ticket, preempted the proxy and ran a barrier for one or two events (1.8 per barrier
//! at 64 connections), whose CPU (sled's write, the wake-ups of its I/O threads, the sync)
//! the next events paid again. The kick adds no wait of its own: on a runtime with nothing
//! else to do it runs at once. A ticket issued off a runtime, or waited for by blocking, wakes
//! the committer at once. The first ticket after an idle moment also wakes the committer, only
//! to start a clock: a kick that has not come [`KICK_GRACE`] later (its runtime stopped, or
//! its thread is stuck) no longer holds the barrier. Closing the store runs the last barrier
//! at once.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::store::{BarrierStats, StoreError};

/// How long the committer waits for a kick that was scheduled but has not come (its runtime
/// may have stopped) before it runs the barrier anyway: well above a busy runtime's round
/// (~10 ms at 64 connections on one core), well below a client's patience.
const KICK_GRACE: Duration = Duration::from_millis(50);

/// How long an idle committer keeps sled's file open for the next barrier (the store lets go
/// of it at once when it closes its database: [`Barrier::release_file`]).
const IDLE_CLOSE: Duration = Duration::from_secs(1);

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
    /// The database the next barrier flushes (taken for each barrier, so that the committer
    /// never keeps a closed database alive).
    db: Option<Arc<sled::Db>>,
    /// Tasks waiting for their ticket.
    wakers: Vec<(u64, Waker)>,
    /// The committer waits (for tickets, or for a kick): only then is it notified (a
    /// notification is a `futex` call whether anyone waits or not, and `issue` is on the
    /// request path).
    idle: bool,
    /// The committer waits for a kick, its clock ([`KICK_GRACE`]) running: a new ticket
    /// need not wake it.
    timing_kick: bool,
    /// The store closed its database: the committer drops its descriptor of sled's file.
    release: bool,
    /// The tickets up to this one may go into a barrier: the ones issued when a kick ran, a
    /// ticket was issued off a runtime, or a waiter blocked. (A kick that comes after its
    /// tickets were made durable releases nothing issued later.)
    kicked: u64,
    /// The threads that have a kick scheduled that has not run: each schedules one at most.
    kicks_from: Vec<std::thread::ThreadId>,
    /// Threads blocked in [`Durable::wait`]: only then does a barrier notify `done`.
    blocked: usize,
    /// The committer thread runs.
    running: bool,
    /// The store is gone: the committer thread ends.
    closed: bool,
    /// A barrier failed since the store last asked ([`Barrier::take_failure`]).
    failure: bool,
    stats: BarrierStats,
}

struct Shared {
    /// sled's log file.
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes the committer: a ticket was issued after an idle moment, a kick came, a waiter
    /// blocks, the store let go of its database, or it closed.
    work: Condvar,
    /// Wakes blocking waiters: a barrier returned.
    done: Condvar,
    /// [`IDLE_CLOSE`] and [`KICK_GRACE`] (other values in tests).
    idle_close: Duration,
    kick_grace: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The group commit of one sled store (see the module documentation).
pub struct Barrier {
    shared: Arc<Shared>,
}

/// A write waiting to be on stable storage: a ticket of the group commit.
#[derive(Clone)]
pub struct Durable {
    shared: Arc<Shared>,
    ticket: u64,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Barrier {
    pub fn new(path: PathBuf) -> Self {
        Self::with_waits(path, IDLE_CLOSE, KICK_GRACE)
    }

    fn with_waits(path: PathBuf, idle_close: Duration, kick_grace: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                done: Condvar::new(),
                idle_close,
                kick_grace,
            }),
        }
    }

    pub fn stats(&self) -> BarrierStats {
        self.shared.lock().stats
    }

    /// Whether a barrier failed since the last call: after a failed `fdatasync` the kernel may
    /// have dropped the unwritten pages, so the store reopens the database.
    pub fn take_failure(&self) -> bool {
        std::mem::take(&mut self.shared.lock().failure)
    }

    /// Starts the committer thread, if it does not run. The store calls this when it is set up,
    /// so that the thread takes the priority of the thread that sets the store up (the
    /// process's): a thread inherits its creator's nice value, and the first ticket may come
    /// from the delivery loop, whose thread runs lower (`[delivery] nice`).
    pub fn start(&self) -> Result<(), StoreError> {
        self.start_locked(&mut self.shared.lock())
    }

    fn start_locked(&self, state: &mut State) -> Result<(), StoreError> {
        if !state.running {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("hooktap-commit".into())
                .spawn(move || commit_loop(&shared))
                .map_err(|e| StoreError::Barrier(format!("cannot start the commit thread: {e}")))?;
            state.running = true;
        }
        Ok(())
    }

    /// Everything written to `db` so far is to be made durable: the ticket to wait on.
    ///
    /// On a tokio runtime the barrier starts once the runtime's ready tasks have run (see the
    /// module documentation); elsewhere at once.
    pub fn issue(&self, db: &Arc<sled::Db>) -> Result<Durable, StoreError> {
        let mut state = self.shared.lock();
        self.start_locked(&mut state)?;
        state.issued += 1;
        state.db = Some(Arc::clone(db));
        let ticket = state.issued;
        let notify = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let thread = std::thread::current().id();
                if !state.kicks_from.contains(&thread) {
                    state.kicks_from.push(thread);
                    let shared = Arc::clone(&self.shared);
                    runtime.spawn(async move {
                        tokio::task::yield_now().await;
                        shared.kick(Some(thread));
                    });
                }
                // An idle committer starts its clock for the kick; one that already runs it,
                // or runs a barrier, is left alone.
                !state.timing_kick && std::mem::take(&mut state.idle)
            }
            Err(_) => {
                state.kicked = ticket;
                std::mem::take(&mut state.idle)
            }
        };
        drop(state);
        if notify {
            self.shared.work.notify_one();
        }
        Ok(Durable {
            shared: Arc::clone(&self.shared),
            ticket,
        })
    }
}

impl Barrier {
    /// The store closed its database: the committer lets go of sled's file now rather than
    /// after its idle second (a disk being repaired must be free of hooktap's files).
    pub fn release_file(&self) {
        let mut state = self.shared.lock();
        state.release = true;
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        if idle {
            self.shared.work.notify_one();
        }
    }
}

impl Shared {
    /// The tickets issued so far may go into a barrier now: `from`, the thread whose
    /// scheduled kick this is; `None`, a waiter that cannot wait for one.
    fn kick(&self, from: Option<std::thread::ThreadId>) {
        let mut state = self.lock();
        if let Some(thread) = from {
            state.kicks_from.retain(|t| *t != thread);
        }
        state.kicked = state.issued;
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        if idle {
            self.work.notify_one();
        }
    }
}

impl Drop for Barrier {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
    }
}

impl Durable {
    /// `Ready` once the write is on stable storage (or its barrier failed).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        let mut state = self.shared.lock();
        match outcome(&state, self.ticket) {
            Some(result) => Poll::Ready(result),
            None => {
                state.wakers.push((self.ticket, cx.waker().clone()));
                Poll::Pending
            }
        }
    }

    /// Waits until the write is on stable storage.
    pub async fn wait_async(&self) -> Result<(), StoreError> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }

    /// Blocks until the write is on stable storage. On a worker thread of a multi-threaded
    /// tokio runtime, the thread's other tasks move to another thread meanwhile.
    pub fn wait(&self) -> Result<(), StoreError> {
        // A kick scheduled on this thread's runtime cannot run while the thread blocks.
        if outcome(&self.shared.lock(), self.ticket).is_none() {
            self.shared.kick(None);
        }
        let block = || {
            let mut state = self.shared.lock();
            loop {
                if let Some(result) = outcome(&state, self.ticket) {
                    return result;
                }
                state.blocked += 1;
                state = self
                    .shared
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.blocked -= 1;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(block)
            }
            _ => block(),
        }
    }
}

/// What became of `ticket`, if its barrier has returned.
///
/// A failure is checked first: after a failed `fdatasync` the kernel may have dropped the
/// pages it could not write, and the store reopens the database, so a later barrier that
/// succeeds does not cover the tickets of the failed one. (A ticket of a successful barrier
/// between two failed ones then reads as failed too: the safe side.)
fn outcome(state: &State, ticket: u64) -> Option<Result<(), StoreError>> {
    if state.failed >= ticket {
        Some(Err(StoreError::Barrier(
            state.error.clone().unwrap_or_default(),
        )))
    } else if state.durable >= ticket {
        Some(Ok(()))
    } else {
        None
    }
}

/// The committer thread: one barrier for every ticket issued since the last.
fn commit_loop(shared: &Shared) {
    // sled's file, open while barriers follow one another (see `LogFile`).
    let mut log: Option<LogFile> = None;
    let mut state = shared.lock();
    loop {
        loop {
            if std::mem::take(&mut state.release) {
                log = None;
            }
            let waiting = state.issued > state.durable.max(state.failed);
            // A closing store does not wait for kicks: its last barrier runs now.
            if waiting && (state.kicked > state.durable.max(state.failed) || state.closed) {
                break;
            }
            if !waiting && state.closed {
                state.running = false;
                return;
            }
            state.idle = true;
            state.timing_kick = waiting;
            let timeout;
            (state, timeout) = shared
                .work
                .wait_timeout(
                    state,
                    if waiting {
                        shared.kick_grace
                    } else {
                        shared.idle_close
                    },
                )
                .unwrap_or_else(PoisonError::into_inner);
            state.idle = false;
            state.timing_kick = false;
            if timeout.timed_out() {
                if waiting {
                    // The kicks have not come (their runtime may have stopped): go on without
                    // them, and let their threads schedule new ones.
                    state.kicks_from.clear();
                    break;
                }
                // Idle a while: no descriptor is kept (a store closed after a failure must
                // hold none of its files, or the disk cannot be unmounted and repaired).
                log = None;
            }
        }
        let upto = state.issued;
        let db = state.db.take();
        drop(state);
        let result = match db {
            Some(db) => sync(&shared.path, &db, &mut log),
            None => Err("no database to flush".to_owned()),
        };
        if result.is_err() {
            // A descriptor whose sync failed may have lost its error state: the next barrier
            // opens a new one (of the reopened database).
            log = None;
        }
        state = shared.lock();
        let covered = upto - state.durable.max(state.failed);
        match result {
            Ok(()) => {
                state.stats.syncs += 1;
                state.stats.writes += covered;
                state.durable = upto;
            }
            Err(e) => {
                tracing::error!(error = %e, events = covered,
                    "the store's durability barrier failed: these events may not survive a power cut; the store is being reopened");
                state.failed = upto;
                state.error = Some(e);
                state.failure = true;
            }
        }
        let mut ready = Vec::new();
        state.wakers.retain(|(ticket, waker)| {
            let keep = *ticket > upto;
            if !keep {
                ready.push(waker.clone());
            }
            keep
        });
        if state.blocked > 0 {
            shared.done.notify_all();
        }
        drop(state);
        for waker in ready {
            waker.wake();
        }
        state = shared.lock();
    }
}

/// sled's log file, opened for one database instance and kept while barriers follow one
/// another. A descriptor open when a write-back error happens reports it to its next
/// `fdatasync`; one opened afterwards may not (sled's own flusher thread syncs the file too and
/// can take the error first), so the same descriptor serves consecutive barriers. It is not
/// kept across idle periods, across a failed sync, or for another database instance.
struct LogFile {
    /// The database it belongs to (held weakly, so that its address is not reused).
    db: Weak<sled::Db>,
    file: File,
}

/// One barrier: sled writes its buffers, then the file's data reach stable storage.
fn sync(
    path: &std::path::Path,
    db: &Arc<sled::Db>,
    log: &mut Option<LogFile>,
) -> Result<(), String> {
    db.flush().map_err(|e| format!("sled flush: {e}"))?;
    // fsync acts on the file, whichever descriptor names it: sled's own is not exposed.
    let open = match log.take() {
        Some(kept) if std::ptr::eq(kept.db.as_ptr(), Arc::as_ptr(db)) => kept,
        _ => LogFile {
            db: Arc::downgrade(db),
            file: File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?,
        },
    };
    let open = log.insert(open);
    open.file
        .sync_data()
        .map_err(|e| format!("fdatasync {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Arc<sled::Db>, Arc<Barrier>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let barrier = Arc::new(Barrier::new(dir.path().join("db")));
        (dir, Arc::new(db), barrier)
    }

    /// Descriptors of this process open on `file`.
    fn open_descriptors(file: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == file)
            .count()
    }

    /// The committer keeps sled's file open while barriers follow one another, and holds no
    /// descriptor of it once it has nothing to do (a store closed after a failure must hold
    /// none of its files, or its disk cannot be unmounted).
    #[test]
    fn an_idle_committer_holds_no_descriptor_of_the_store() {
        let (dir, db, barrier) = open();
        let file = dir.path().join("db").canonicalize().expect("sled's file");
        let sled_own = open_descriptors(&file);
        for i in 0u32..5 {
            db.insert(i.to_be_bytes(), &[1u8][..]).expect("insert");
            barrier.issue(&db).expect("issue").wait().expect("durable");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while open_descriptors(&file) > sled_own {
            assert!(
                std::time::Instant::now() < deadline,
                "the idle committer still holds sled's file open"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lone_write_runs_its_own_barrier() {
        let (_dir, db, barrier) = open();
        for i in 0u32..3 {
            db.insert(i.to_be_bytes(), &[1u8][..]).expect("insert");
            barrier.issue(&db).expect("issue").wait().expect("durable");
        }
        assert_eq!(
            barrier.stats(),
            BarrierStats {
                syncs: 3,
                writes: 3
            }
        );
    }

    /// Writers that arrive while a barrier runs share the next one.
    #[test]
    fn concurrent_writers_share_barriers() {
        let (_dir, db, barrier) = open();
        let threads: Vec<_> = (0u32..16)
            .map(|t| {
                let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    for i in 0u32..50 {
                        db.insert([t.to_be_bytes(), i.to_be_bytes()].concat(), &[0u8; 64][..])
                            .expect("insert");
                        barrier.issue(&db).expect("issue").wait().expect("durable");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        let stats = barrier.stats();
        assert_eq!(stats.writes, 16 * 50);
        assert!(stats.syncs >= 1 && stats.syncs < stats.writes, "{stats:?}");
    }

    /// Tasks wait without a thread each: many tickets, one runtime thread.
    #[tokio::test(flavor = "current_thread")]
    async fn tasks_wait_asynchronously() {
        let (_dir, db, barrier) = open();
        let waits: Vec<_> = (0u32..200)
            .map(|i| {
                db.insert(i.to_be_bytes(), &[2u8][..]).expect("insert");
                let durable = barrier.issue(&db).expect("issue");
                tokio::spawn(async move { durable.wait_async().await })
            })
            .collect();
        for w in waits {
            w.await.expect("join").expect("durable");
        }
        assert_eq!(barrier.stats().writes, 200);
    }

    /// Two writes in one round of a current-thread runtime: the first ticket, then a task made
    /// ready after its kick was scheduled (only the kick's yield puts it behind), which writes
    /// after 5 ms of work, the way a busy proxy thread serves its other connections; both wait
    /// (30 s at most) until durable.
    async fn one_round_of_two_writes(db: &Arc<sled::Db>, barrier: &Arc<Barrier>) {
        let write = |key: &'static [u8]| {
            let (db, barrier) = (Arc::clone(db), Arc::clone(barrier));
            move || {
                db.insert(key, &[3u8][..]).expect("insert");
                barrier.issue(&db).expect("issue")
            }
        };
        let (first, second) = (write(b"round-1"), write(b"round-2"));
        let both = tokio::spawn(async move {
            let durable = first();
            let other = tokio::spawn(async move {
                std::thread::sleep(std::time::Duration::from_millis(5));
                second().wait_async().await
            });
            durable.wait_async().await.expect("durable");
            other.await.expect("join").expect("durable");
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), both)
            .await
            .expect("still waiting after 30 s")
            .expect("join");
    }

    /// On a runtime, a barrier waits for the tasks that were ready with its first ticket: a
    /// write of a task that runs after the first ticket's shares its barrier instead of paying
    /// one of its own.
    #[tokio::test(flavor = "current_thread")]
    async fn a_barrier_covers_the_tasks_ready_with_its_first_ticket() {
        let (dir, db, _) = open();
        let hour = std::time::Duration::from_secs(3600);
        // Only a kick starts a barrier here: no clock runs out.
        let barrier = Arc::new(Barrier::with_waits(dir.path().join("db"), hour, hour));
        one_round_of_two_writes(&db, &barrier).await;
        assert_eq!(
            barrier.stats(),
            BarrierStats {
                syncs: 1,
                writes: 2
            }
        );
    }

    /// A kick that comes after its ticket's barrier (here: a blocking wait ran it) releases
    /// nothing issued later: the next barrier still waits for the round.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_kick_does_not_start_the_next_barrier_early() {
        let (dir, db, _) = open();
        let hour = std::time::Duration::from_secs(3600);
        let barrier = Arc::new(Barrier::with_waits(dir.path().join("db"), hour, hour));
        db.insert(b"k0", &b"v"[..]).expect("insert");
        barrier.issue(&db).expect("issue").wait().expect("durable");
        // The ticket's kick runs now, after its barrier.
        while !barrier.shared.lock().kicks_from.is_empty() {
            tokio::task::yield_now().await;
        }
        one_round_of_two_writes(&db, &barrier).await;
        assert_eq!(
            barrier.stats(),
            BarrierStats {
                syncs: 2,
                writes: 3
            }
        );
    }

    /// When the store closes its database, the committer lets go of sled's file at once (it
    /// keeps it open between barriers otherwise).
    #[test]
    fn a_released_file_is_closed_at_once() {
        let (dir, db, _) = open();
        let hour = std::time::Duration::from_secs(3600);
        let barrier = Barrier::with_waits(dir.path().join("db"), hour, hour);
        let file = dir.path().join("db").canonicalize().expect("sled's file");
        let sled_own = open_descriptors(&file);
        db.insert(b"k", &b"v"[..]).expect("insert");
        barrier.issue(&db).expect("issue").wait().expect("durable");
        assert_eq!(
            open_descriptors(&file),
            sled_own + 1,
            "kept open between barriers"
        );
        barrier.release_file();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while open_descriptors(&file) > sled_own {
            assert!(
                std::time::Instant::now() < deadline,
                "the committer still holds sled's file open"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A blocking wait does not wait for the kick, which may be scheduled on a runtime that
    /// cannot run it meanwhile (here: the runtime's one thread waits for the waiter).
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_wait_does_not_wait_for_the_kick() {
        let (dir, db, _) = open();
        let hour = std::time::Duration::from_secs(3600);
        // Without its kick, the committer would sleep for an hour.
        let barrier = Barrier::with_waits(dir.path().join("db"), hour, hour);
        db.insert(b"k", &b"v"[..]).expect("insert");
        let durable = barrier.issue(&db).expect("issue");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(durable.wait()));
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("the blocking waiter is still waiting after 30 s")
            .expect("durable");
        assert_eq!(barrier.stats().syncs, 1);
    }

    /// Each thread's tickets wait for its own kick only: a runtime whose thread is busy
    /// elsewhere (here: blocked) does not hold another runtime's barrier, which also covers
    /// the busy one's write.
    #[test]
    fn a_thread_does_not_wait_for_the_kick_of_another() {
        let (dir, db, _) = open();
        let hour = std::time::Duration::from_secs(3600);
        // A ticket left waiting for a kick would wait an hour.
        let barrier = Arc::new(Barrier::with_waits(dir.path().join("db"), hour, hour));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
        };
        let (issued, a_issued) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let a = {
            let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
            std::thread::spawn(move || {
                runtime().block_on(async {
                    db.insert(b"a", &b"1"[..]).expect("insert");
                    let durable = barrier.issue(&db).expect("issue");
                    issued.send(()).expect("send");
                    // The runtime's one thread is busy: its kick cannot run.
                    released.recv().expect("released");
                    durable.wait_async().await
                })
            })
        };
        a_issued.recv().expect("a issued its ticket");
        let (done, b_done) = std::sync::mpsc::channel();
        {
            let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let result = runtime().block_on(async {
                    db.insert(b"b", &b"2"[..]).expect("insert");
                    barrier.issue(&db).expect("issue").wait_async().await
                });
                done.send(result).expect("send");
            });
        }
        b_done
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("b's ticket still waits after 30 s")
            .expect("durable");
        release.send(()).expect("release a");
        a.join().expect("a").expect("durable");
        assert_eq!(
            barrier.stats(),
            BarrierStats {
                syncs: 1,
                writes: 2
            }
        );
    }

    #[test]
    fn a_failed_barrier_fails_its_writers_and_the_next_one_runs_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(
            sled::Config::new()
                .path(dir.path().join("sled"))
                .open()
                .expect("open sled"),
        );
        // The log file is not where the barrier looks: its fdatasync cannot run.
        let barrier = Barrier::new(dir.path().join("missing"));
        db.insert(b"k", &b"v"[..]).expect("insert");
        let failed = barrier.issue(&db).expect("issue");
        let err = failed.wait().expect_err("no file to sync");
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(barrier.stats().syncs, 0);
        std::fs::write(dir.path().join("missing"), b"").expect("create");
        barrier
            .issue(&db)
            .expect("issue")
            .wait()
            .expect("the next barrier runs");
        assert_eq!(barrier.stats().syncs, 1);
        // A later barrier that succeeds does not make the failed one's write durable.
        failed
            .wait()
            .expect_err("still failed after a later barrier succeeded");
    }
}
