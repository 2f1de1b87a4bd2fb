//! Which client connections the proxy keeps open: a deadline for every request head, and a cap
//! on open connections that closes the clients keeping the proxy waiting before it turns a new
//! client away.
//!
//! pingora 0.9 bounds the reading of a request head only per read: each read of a head waits at
//! most its keep-alive timeout, and every byte starts that wait again, so a client that
//! sends a header line every few seconds keeps its connection, and a file, for as long as it
//! likes. No phase runs before the head is complete. So each connection here has a [`Clock`]:
//! the connection's stream tells it when the first byte of a head arrives, the proxy's phases
//! when the head is complete and when the exchange is over, and [`Clock::closed`] resolves when
//! a head is overdue or the connection is shed to make room; [`super::connection`] then drops
//! the connection. A connection with a request in flight is never closed here.
//!
//! [`Admission`] counts the open connections. At its cap, a new connection first sheds the one
//! that has waited longest on its client (reading a head, or idle between requests); only when
//! every open connection has a request in flight is the new one refused.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection was closed by its [`Clock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Its request head was not complete within the deadline.
    HeadTimeout,
    /// It was waiting on its client when the proxy was at its connection cap.
    Shed,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::HeadTimeout => "header_timeout",
            Self::Shed => "shed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for or reading a request head, due `head_timeout` after `started` (the accept, or
    /// the head's first byte); waiting on the client since `waiting_since`.
    Head {
        started: Instant,
        waiting_since: Instant,
    },
    /// Between two exchanges, before the next head's first byte (the keep-alive timeout the
    /// proxy sets on pingora's session bounds this wait).
    Idle {
        waiting_since: Instant,
    },
    /// A request is in flight, or the connection is HTTP/2 (whose streams pingora manages).
    Busy,
    Closed(Closed),
}

/// The deadline and state of one client connection.
#[derive(Debug)]
pub struct Clock {
    phase: Mutex<Phase>,
    /// Signalled when a deadline starts or the connection is closed.
    changed: Notify,
    head_timeout: Duration,
}

impl Clock {
    /// A new HTTP/1 connection: its first head is due `head_timeout` from now.
    pub fn head(head_timeout: Duration) -> Self {
        let now = Instant::now();
        Self::with(
            Phase::Head {
                started: now,
                waiting_since: now,
            },
            head_timeout,
        )
    }

    /// A connection that is never shed nor timed out here (HTTP/2).
    pub fn busy() -> Self {
        Self::with(Phase::Busy, Duration::MAX)
    }

    fn with(phase: Phase, head_timeout: Duration) -> Self {
        Self {
            phase: Mutex::new(phase),
            changed: Notify::new(),
            head_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client sent bytes: after an exchange, they start the next head and its deadline.
    pub fn bytes_arrived(&self) {
        let mut phase = self.lock();
        if let Phase::Idle { waiting_since } = *phase {
            *phase = Phase::Head {
                started: Instant::now(),
                waiting_since,
            };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request head is complete. An error if the connection was closed meanwhile: the request
    /// must not be forwarded.
    pub fn head_complete(&self) -> Result<(), Closed> {
        let mut phase = self.lock();
        if let Phase::Closed(why) = *phase {
            return Err(why);
        }
        *phase = Phase::Busy;
        Ok(())
    }

    /// The exchange is over: the connection waits on its client again. Returns since when,
    /// for the [`Admission`] queue (`None` if it was closed meanwhile).
    pub fn exchange_done(&self) -> Option<Instant> {
        let mut phase = self.lock();
        match *phase {
            Phase::Closed(_) => None,
            Phase::Head { waiting_since, .. } | Phase::Idle { waiting_since } => {
                Some(waiting_since)
            }
            Phase::Busy => {
                let now = Instant::now();
                *phase = Phase::Idle { waiting_since: now };
                Some(now)
            }
        }
    }

    /// Since when the connection has waited on its client, if it is waiting.
    fn waiting_since(&self) -> Option<Instant> {
        match *self.lock() {
            Phase::Head { waiting_since, .. } | Phase::Idle { waiting_since } => {
                Some(waiting_since)
            }
            Phase::Busy | Phase::Closed(_) => None,
        }
    }

    /// Closes the connection if it still waits on its client since `since`.
    fn shed(&self, since: Instant) -> bool {
        let mut phase = self.lock();
        match *phase {
            Phase::Head { waiting_since, .. } | Phase::Idle { waiting_since }
                if waiting_since == since =>
            {
                *phase = Phase::Closed(Closed::Shed);
                drop(phase);
                self.changed.notify_one();
                true
            }
            _ => false,
        }
    }

    /// Resolves when the connection must be closed: its head is overdue, or it was shed.
    /// Never while a request is in flight.
    pub async fn closed(&self) -> Closed {
        loop {
            let changed = self.changed.notified();
            let due = match *self.lock() {
                Phase::Closed(why) => return why,
                Phase::Head { started, .. } => started.checked_add(self.head_timeout),
                Phase::Idle { .. } | Phase::Busy => None,
            };
            let Some(due) = due else {
                changed.await;
                continue;
            };
            tokio::select! {
                () = tokio::time::sleep_until(due) => {
                    let mut phase = self.lock();
                    // The head may have completed, or the next one started, meanwhile.
                    if let Phase::Head { started, .. } = *phase {
                        if started + self.head_timeout <= Instant::now() {
                            *phase = Phase::Closed(Closed::HeadTimeout);
                            return Closed::HeadTimeout;
                        }
                    }
                }
                () = changed => {}
            }
        }
    }
}

/// The proxy's open client connections, at most `max`.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    queue: Mutex<Queue>,
    /// `hooktap_open_connections{listener="proxy"}`.
    gauge: Gauge,
}

#[derive(Debug, Default)]
struct Queue {
    open: usize,
    /// Connections in the order they began to wait on their clients. An entry is stale once
    /// its connection stopped waiting (or waits since a later time, with a later entry).
    waiting: VecDeque<(Weak<Clock>, Instant)>,
    /// When a refusal or a shed was last logged.
    last_warning: Option<Instant>,
}

/// What admitting a new connection did.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// There was room.
    Room,
    /// The proxy was full: a connection waiting on its client was shed to make room.
    Shed,
    /// The proxy was full of connections with requests in flight: refuse the new one.
    Full,
}

/// A connection counted as open until this is dropped.
#[derive(Debug)]
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.open = queue.open.saturating_sub(1);
        self.0.gauge.dec();
    }
}

impl Admission {
    pub fn new(max: usize, gauge: Gauge) -> Self {
        Self {
            max: max.max(1),
            queue: Mutex::default(),
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection in, shedding the longest-waiting one at the cap.
    pub fn admit(self: &Arc<Self>, clock: &Arc<Clock>) -> (Admitted, Option<Slot>) {
        let mut queue = self.lock();
        let mut admitted = Admitted::Room;
        if queue.open >= self.max {
            if !queue.shed_longest_waiting() {
                return (Admitted::Full, None);
            }
            admitted = Admitted::Shed;
        }
        queue.open += 1;
        self.gauge.inc();
        if let Some(since) = clock.waiting_since() {
            queue.push(clock, since);
        }
        (admitted, Some(Slot(Arc::clone(self))))
    }

    /// The connection waits on its client again since `since` (see [`Clock::exchange_done`]).
    pub fn waiting(&self, clock: &Arc<Clock>, since: Instant) {
        self.lock().push(clock, since);
    }

    /// Whether to log a refusal or shed now: at most once a minute.
    pub fn should_warn(&self) -> bool {
        let mut queue = self.lock();
        let now = Instant::now();
        let due = queue
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if due {
            queue.last_warning = Some(now);
        }
        due
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.lock().open
    }
}

impl Queue {
    fn push(&mut self, clock: &Arc<Clock>, since: Instant) {
        // Stale entries pile up while the proxy is below its cap; drop them now and then, so
        // the queue stays proportional to the open connections.
        if self.waiting.len() >= 2 * self.open + 64 {
            self.waiting.retain(|(clock, since)| {
                clock
                    .upgrade()
                    .is_some_and(|c| c.waiting_since() == Some(*since))
            });
        }
        self.waiting.push_back((Arc::downgrade(clock), since));
    }

    fn shed_longest_waiting(&mut self) -> bool {
        while let Some((clock, since)) = self.waiting.pop_front() {
            if clock.upgrade().is_some_and(|c| c.shed(since)) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);

    fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
        futures_util::FutureExt::now_or_never(f)
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_due_after_the_timeout_however_it_trickles() {
        let clock = Clock::head(HEAD);
        let closed = clock.closed();
        tokio::pin!(closed);
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            clock.bytes_arrived();
            assert_eq!(now_or_never(closed.as_mut()), None);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(closed.await, Closed::HeadTimeout);
        assert_eq!(
            clock.head_complete(),
            Err(Closed::HeadTimeout),
            "not forwarded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_in_flight_is_never_closed() {
        let clock = Clock::head(HEAD);
        clock.head_complete().expect("open");
        let closed = clock.closed();
        tokio::pin!(closed);
        tokio::time::advance(HEAD * 100).await;
        assert_eq!(now_or_never(closed.as_mut()), None);
        assert!(!clock.shed(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_head_is_due_from_its_first_byte_not_from_the_idle_wait() {
        let clock = Clock::head(HEAD);
        clock.head_complete().expect("open");
        clock.exchange_done();
        let closed = clock.closed();
        tokio::pin!(closed);
        tokio::time::advance(HEAD * 3).await;
        assert_eq!(
            now_or_never(closed.as_mut()),
            None,
            "idle: the keep-alive timeout's"
        );
        clock.bytes_arrived();
        tokio::time::advance(HEAD - Duration::from_millis(1)).await;
        assert_eq!(now_or_never(closed.as_mut()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(closed.await, Closed::HeadTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_waiting_connection_is_shed() {
        let admission = Arc::new(Admission::new(3, Gauge::default()));
        let busy = Arc::new(Clock::head(HEAD));
        let (_, busy_slot) = admission.admit(&busy);
        busy.head_complete().expect("open");
        tokio::time::advance(Duration::from_secs(1)).await;
        let oldest = Arc::new(Clock::head(HEAD));
        let (_, oldest_slot) = admission.admit(&oldest);
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = Arc::new(Clock::head(HEAD));
        let (_, _newer_slot) = admission.admit(&newer);

        let fourth = Arc::new(Clock::head(HEAD));
        let (admitted, slot) = admission.admit(&fourth);
        assert_eq!(admitted, Admitted::Shed);
        assert!(slot.is_some());
        assert_eq!(now_or_never(oldest.closed()), Some(Closed::Shed));
        assert_eq!(now_or_never(newer.closed()), None);
        assert_eq!(now_or_never(busy.closed()), None, "in flight: never shed");
        drop(oldest_slot);
        assert_eq!(admission.open(), 3);
        drop(busy_slot);
        assert_eq!(admission.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_after_its_exchange_is_shed_before_a_newer_one() {
        let admission = Arc::new(Admission::new(2, Gauge::default()));
        let keep_alive = Arc::new(Clock::head(HEAD));
        let _a = admission.admit(&keep_alive);
        keep_alive.head_complete().expect("open");
        let fresh = Arc::new(Clock::head(HEAD));
        let _b = admission.admit(&fresh);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Idle since now: later than `fresh` began to wait.
        let since = keep_alive.exchange_done().expect("waiting");
        admission.waiting(&keep_alive, since);
        let _c = admission.admit(&Arc::new(Clock::head(HEAD)));
        assert_eq!(now_or_never(fresh.closed()), Some(Closed::Shed));
        assert_eq!(now_or_never(keep_alive.closed()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_proxy_of_requests_in_flight_refuses_the_new_connection() {
        let admission = Arc::new(Admission::new(2, Gauge::default()));
        let mut slots = Vec::new();
        for _ in 0..2 {
            let clock = Arc::new(Clock::head(HEAD));
            slots.push(admission.admit(&clock));
            clock.head_complete().expect("open");
        }
        let (admitted, slot) = admission.admit(&Arc::new(Clock::head(HEAD)));
        assert_eq!(admitted, Admitted::Full);
        assert!(slot.is_none());
        assert_eq!(admission.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_do_not_pile_up() {
        let admission = Arc::new(Admission::new(1000, Gauge::default()));
        let clock = Arc::new(Clock::head(HEAD));
        let _slot = admission.admit(&clock);
        for _ in 0..10_000 {
            clock.head_complete().expect("open");
            tokio::time::advance(Duration::from_millis(1)).await;
            let since = clock.exchange_done().expect("waiting");
            admission.waiting(&clock, since);
            clock.bytes_arrived();
        }
        assert!(admission.lock().waiting.len() <= 2 + 64, "compacted");
    }
}
