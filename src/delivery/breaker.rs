//! Per-webhook gates in front of every request: the circuit breaker and the rate limit.
//!
//! Both are pure state machines over a clock reading (tokio's [`Instant`], so tests run them
//! on paused time); the scheduler asks [`Gates::admit`] right before it starts a request and
//! tells [`Gates::record`] how it ended. A webhook that must wait holds no delivery slot: the
//! scheduler simply does not start the request, and wakes up when the gate opens.
//!
//! Circuit states (docs/delivery.md has the operator's view):
//! - **closed**: requests go; `circuit_failures` failed requests in a row open it.
//! - **open**: nothing goes until `circuit_cooldown` has passed.
//! - **half-open**: one probe request goes; a success closes the circuit, a failure opens it
//!   again for another cool-down.
//!
//! The state lives in memory, per instance: a restart starts closed.

use std::time::Duration;

use tokio::time::Instant;

use crate::webhook::{CircuitState, RateLimit};

/// What the gates say about starting a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go (the rate limit's slot is taken).
    Go,
    /// Go as the half-open circuit's probe (the rate limit's slot is taken, the probe is
    /// marked out): only this request's end may release it.
    Probe,
    /// Not before this instant.
    Wait(Instant),
    /// Not until a request in flight (the probe) ends.
    Busy,
}

/// A change of the circuit, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// The circuit breaker and the rate limit of one webhook.
#[derive(Debug)]
pub struct Gates {
    state: State,
    /// Failed requests in a row.
    failures: u32,
    /// When the rate limit lets the next request go.
    next_slot: Option<Instant>,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            state: State::Closed,
            failures: 0,
            next_slot: None,
        }
    }
}

impl Gates {
    /// Whether a request may start at `now`; when it may, its rate slot is taken and, in the
    /// half-open state, it becomes the probe.
    pub fn admit(&mut self, now: Instant, rate: Option<RateLimit>) -> Admit {
        match self.state {
            State::Open { until } if now < until => return Admit::Wait(until),
            State::Open { .. } => self.state = State::HalfOpen { probing: false },
            State::HalfOpen { probing: true } => return Admit::Busy,
            State::Closed | State::HalfOpen { probing: false } => {}
        }
        if let Some(rate) = rate {
            match self.next_slot {
                Some(at) if at > now => return Admit::Wait(at),
                // Spaced from now when idle: no credit builds up, so no burst follows a pause.
                _ => self.next_slot = Some(now + rate.spacing()),
            }
        }
        if let State::HalfOpen { .. } = self.state {
            self.state = State::HalfOpen { probing: true };
            return Admit::Probe;
        }
        Admit::Go
    }

    /// What [`Gates::admit`] would say at `now`, without taking anything: `None` when a
    /// request could go. Lets the scheduler skip reading the queue of a webhook that waits.
    pub fn blocked(&self, now: Instant, rate: Option<RateLimit>) -> Option<Admit> {
        match self.state {
            State::Open { until } if now < until => return Some(Admit::Wait(until)),
            State::HalfOpen { probing: true } => return Some(Admit::Busy),
            _ => {}
        }
        match self.next_slot {
            Some(at) if rate.is_some() && at > now => Some(Admit::Wait(at)),
            _ => None,
        }
    }

    /// Notes how a request ended (`threshold` 0: the breaker is off).
    pub fn record(
        &mut self,
        success: bool,
        now: Instant,
        threshold: u32,
        cooldown: Duration,
    ) -> Option<Change> {
        if success {
            self.failures = 0;
            let was_closed = self.state == State::Closed;
            self.state = State::Closed;
            return (!was_closed).then_some(Change::Closed);
        }
        self.failures = self.failures.saturating_add(1);
        let reopen = match self.state {
            State::HalfOpen { .. } => true,
            State::Closed => threshold > 0 && self.failures >= threshold,
            // A request that was in flight when the circuit opened: already open.
            State::Open { .. } => false,
        };
        if reopen {
            self.state = State::Open {
                until: now + cooldown,
            };
            return Some(Change::Opened);
        }
        None
    }

    /// A request admitted as [`Admit::Probe`] ended without moving the circuit on (it was not
    /// sent after all, or its outcome was not recorded). Only the probe's own end calls this.
    pub fn release_probe(&mut self) {
        if self.state == (State::HalfOpen { probing: true }) {
            self.state = State::HalfOpen { probing: false };
        }
    }

    /// Closes the circuit (the breaker was switched off, the webhook resumed by hand).
    pub fn reset_circuit(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
    }

    /// The state to show, with when an open circuit lets its probe go.
    pub fn circuit(&self) -> (CircuitState, Option<Instant>) {
        match self.state {
            State::Closed => (CircuitState::Closed, None),
            State::Open { until } => (CircuitState::Open, Some(until)),
            State::HalfOpen { .. } => (CircuitState::HalfOpen, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_probes_after_the_cooldown_and_closes_on_success() {
        let mut g = Gates::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(g.admit(t0, None), Admit::Go);
            assert_eq!(g.record(false, t0, 3, COOL), None);
        }
        assert_eq!(g.record(false, t0, 3, COOL), Some(Change::Opened));
        assert_eq!(g.circuit(), (CircuitState::Open, Some(t0 + COOL)));
        assert_eq!(g.blocked(t0 + COOL / 2, None), Some(Admit::Wait(t0 + COOL)));
        assert_eq!(g.admit(t0 + COOL / 2, None), Admit::Wait(t0 + COOL));
        tokio::time::advance(COOL).await;
        let now = Instant::now();
        assert_eq!(g.admit(now, None), Admit::Probe, "the probe");
        assert_eq!(g.circuit().0, CircuitState::HalfOpen);
        assert_eq!(g.admit(now, None), Admit::Busy, "one probe at a time");
        assert_eq!(g.blocked(now, None), Some(Admit::Busy));
        // The probe fails: open again for a whole cool-down.
        assert_eq!(g.record(false, now, 3, COOL), Some(Change::Opened));
        assert_eq!(g.admit(now, None), Admit::Wait(now + COOL));
        tokio::time::advance(COOL).await;
        let now = Instant::now();
        assert_eq!(g.admit(now, None), Admit::Probe);
        assert_eq!(g.record(true, now, 3, COOL), Some(Change::Closed));
        assert_eq!(g.circuit(), (CircuitState::Closed, None));
        assert_eq!(g.admit(now, None), Admit::Go);
        assert_eq!(g.admit(now, None), Admit::Go, "closed: no probe limit");
    }

    #[test]
    fn a_success_resets_the_count_and_zero_never_opens() {
        let now = Instant::now();
        let mut g = Gates::default();
        g.record(false, now, 2, COOL);
        g.record(true, now, 2, COOL);
        assert_eq!(
            g.record(false, now, 2, COOL),
            None,
            "the count started again"
        );
        let mut off = Gates::default();
        for _ in 0..100 {
            assert_eq!(off.record(false, now, 0, COOL), None);
        }
        assert_eq!(off.admit(now, None), Admit::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_requests_evenly_without_bursts() {
        let rate = RateLimit::parse("5/s").expect("valid");
        let mut g = Gates::default();
        let t0 = Instant::now();
        assert_eq!(g.admit(t0, Some(rate)), Admit::Go);
        let spacing = Duration::from_millis(200);
        assert_eq!(g.admit(t0, Some(rate)), Admit::Wait(t0 + spacing));
        assert_eq!(g.blocked(t0, Some(rate)), Some(Admit::Wait(t0 + spacing)));
        assert_eq!(g.blocked(t0 + spacing, Some(rate)), None);
        // 24 requests, each admitted as soon as it may: 23 spacings from the first to the last.
        let mut sent = 1;
        let mut now = t0;
        while sent < 24 {
            match g.admit(now, Some(rate)) {
                Admit::Go => sent += 1,
                Admit::Wait(at) => now = at,
                Admit::Busy | Admit::Probe => unreachable!("no probe without a failure"),
            }
        }
        assert_eq!(now - t0, spacing * 23);
        // After a long pause, still one at a time: no credit was saved up.
        let later = now + Duration::from_secs(60);
        assert_eq!(g.admit(later, Some(rate)), Admit::Go);
        assert_eq!(g.admit(later, Some(rate)), Admit::Wait(later + spacing));
    }
}
