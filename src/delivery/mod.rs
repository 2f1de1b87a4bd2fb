//! The delivery engine: from stored event to signed POST, with retries, states and modes.
//!
//! The data path through it, one unit per stage:
//! - [`intake`]: what the proxy holds. One [`Delivery`](crate::event::Delivery) per webhook
//!   that accepts the event's topic, appended to the store, and a wake-up: no network I/O.
//! - [`registry`]: the running webhooks (record, topics, sends in flight).
//! - [`scheduler`]: the loop that reads what is due and sends it within the limits, then
//!   records each outcome.
//! - [`outcome`]: a pure function deciding what one request comes to (next state, attempt
//!   record, counters, whether to disable the webhook).
//! - [`send`], [`sign`], [`retry`]: one request, the signing profiles, the retry schedule.
//! - [`keeper`]: keeps the store open and usable, moves held events in, sweeps old records.
//! - [`manage`]: what the admin API asks of webhooks and deliveries; [`sync`] decides how the
//!   config file's webhooks meet the API's.
//!
//! Delivery is at-least-once: a queue entry is removed only when its attempt is recorded, so a
//! crash mid-send means the delivery is sent again after restart, with the same delivery id.
//!
//! **Isolation.** `[delivery] concurrency` bounds the requests in flight over all webhooks,
//! a webhook's `concurrency` its own. Every active webhook is guaranteed its fair share of
//! the global limit (the limit divided by the number of active webhooks, at least one, at
//! most its own concurrency) even when the global limit is used up: receivers that hang can
//! only use up their own shares, never a healthy webhook's.

pub mod breaker;
pub mod intake;
pub mod keeper;
pub mod manage;
pub mod outcome;
pub mod registry;
pub mod retry;
pub mod scheduler;
pub mod send;
pub mod sign;
pub mod sync;

use crate::ssrf::{self, Guard};

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::event::Event;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::webhook::Webhook;
use intake::Intake;
use registry::{Registry, Target};

/// The topic of the operational event emitted when a webhook becomes disabled.
pub const WEBHOOK_DISABLED_TOPIC: &str = "hooktap.webhook.disabled";
/// The topic of the early warning emitted when a webhook's consecutive failures reach 50, 70
/// and 90 % of its `failure_threshold`.
pub const WEBHOOK_FAILING_TOPIC: &str = "hooktap.webhook.failing";

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("webhook `{name}`: {source}")]
    Webhook {
        name: String,
        source: crate::webhook::TopicsError,
    },
}

/// `[delivery]`: what the engine needs from hooktap.toml (built by [`crate::config`]).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub source: String,
    /// Default per-request timeout of webhooks that set none.
    pub timeout: Duration,
    /// Deliveries in flight at once, over all webhooks.
    pub concurrency: usize,
    /// Reject plain http:// webhook URLs.
    pub https_only: bool,
    /// Which destination addresses deliveries may reach.
    pub guard: Guard,
    /// How long a replaced webhook secret keeps being used for a second signature.
    pub secret_rotation_grace: Duration,
    /// How many nice levels below the proxy's priority the delivery loop's thread runs (0–19;
    /// see [`lower_priority`]).
    pub nice: u8,
}

/// How far below the proxy's priority the delivery thread runs when `[delivery] nice` is unset:
/// 10 nice levels, so that under a CPU shortage the proxy's threads get about nine times its
/// share (scheduler weights 1,024 against 110); with idle CPU it costs nothing. Measured against
/// 5 and 19 in benches/RESULTS.md.
pub const DEFAULT_NICE: u8 = 10;

/// Lowers the calling thread's priority to `nice` levels below the process's (its main
/// thread's), to at most 19, the lowest; a thread already that low (one started by a lowered
/// thread inherits its nice value) is left as it is, so calling it again, or from a runtime's
/// `on_thread_start`, lowers nothing twice. The delivery runtime's thread calls it before the
/// loop starts, so that under a CPU shortage sending webhooks yields to proxying (the store
/// keeps what waits; with idle CPU the nice value changes nothing). A failure is logged and
/// changes nothing else; on systems other than Linux nothing is changed.
pub fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpid, getpriority_process, setpriority_process};
        // On Linux a "process" id here is a thread id: the process's own is its main thread's.
        let me = Some(rustix::thread::gettid());
        let set = getpriority_process(Some(getpid())).and_then(|base| {
            let to = base.saturating_add(i32::from(nice)).min(19);
            if getpriority_process(me)? >= to {
                return Ok((base, None));
            }
            setpriority_process(me, to).map(|()| (base, Some(to)))
        });
        // Every thread of the runtimes calls this: a warning is said once per process.
        static WARNED: std::sync::Once = std::sync::Once::new();
        match set {
            Ok((base, Some(to))) => tracing::debug!(
                process = base,
                thread = to,
                "a background thread runs at a lower CPU priority (nice value) than the proxy"
            ),
            Ok((19, None)) => WARNED.call_once(|| {
                tracing::warn!(
                    "the process already runs at the lowest CPU priority (nice 19): delivery cannot run lower than the proxy"
                );
            }),
            Ok((_, None)) => {}
            Err(e) => WARNED.call_once(|| {
                tracing::warn!(nice, error = %e,
                    "cannot lower a background thread's CPU priority; it runs at the proxy's");
            }),
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(
        nice,
        "[delivery] nice applies on Linux only: delivery runs at the proxy's priority"
    );
}

/// The delivery client: no redirects followed, every name resolved through the SSRF guard.
pub(crate) fn client_builder(
    https_only: bool,
    resolver: Arc<ssrf::GuardedResolver>,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(crate::USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https_only)
        .dns_resolver(resolver)
        // Through a proxy only the proxy's name would be resolved here, unchecked.
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
}

/// The engine: the parts above, sharing one store, registry and wake-up.
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    intake: Arc<Intake>,
    wake: Arc<Notify>,
    config: DeliveryConfig,
    client: reqwest::Client,
    /// Requests in flight over all webhooks (see the isolation rule in the module doc).
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        webhooks: Vec<Webhook>,
        config: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeliveryError> {
        // pingora already links rustls with ring; use the same provider rather than a second one.
        // Installing fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `https_only` is decided per webhook, at send time (see `Outgoing::https_only`).
        let client = client_builder(false, config.guard.resolver()).build()?;
        let targets = webhooks
            .into_iter()
            .map(|w| {
                let name = w.spec.name.clone();
                Target::new(w)
                    .map(Arc::new)
                    .map_err(|source| DeliveryError::Webhook { name, source })
            })
            .collect::<Result<_, _>>()?;
        let registry = Arc::new(Registry::new(targets));
        let wake = Arc::new(Notify::new());
        let intake = Arc::new(Intake::new(
            Arc::clone(&store),
            Arc::clone(&registry),
            Arc::clone(&wake),
            Arc::clone(&metrics),
        ));
        Ok(Self {
            store,
            registry,
            intake,
            wake,
            config,
            client,
            in_flight: AtomicUsize::new(0),
            metrics,
        })
    }

    /// What the proxy holds.
    pub fn intake(&self) -> &Arc<Intake> {
        &self.intake
    }

    /// Live events as they are stored.
    pub fn tap(&self) -> broadcast::Receiver<Arc<Event>> {
        self.intake.tap()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Requests being sent right now, over all webhooks.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// An engine over a sled store in `dir`, with no webhooks and loopback blocked (tests).
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &std::path::Path) -> Arc<Self> {
        Self::for_tests_with_guard(dir, Guard::default())
    }

    /// [`Engine::for_tests`] with `guard` deciding which addresses webhooks may reach.
    #[cfg(test)]
    pub(crate) fn for_tests_with_guard(dir: &std::path::Path, guard: Guard) -> Arc<Self> {
        let config = DeliveryConfig {
            source: "https://shop.test/".to_owned(),
            timeout: Duration::from_secs(1),
            concurrency: 4,
            https_only: false,
            guard,
            secret_rotation_grace: Duration::ZERO,
            nice: 0,
        };
        let store = crate::store::sled::open_for_tests(dir);
        let engine = Self::new(Arc::new(store), Vec::new(), config, Default::default());
        Arc::new(engine.expect("engine"))
    }

    /// Wakes the scheduler (new work, a changed webhook).
    fn wake(&self) {
        self.wake.notify_one();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::lower_priority;

    /// The calling thread's nice value.
    fn nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
    }

    #[test]
    fn lowering_priority_goes_below_the_processs_once_and_changes_only_that_thread() {
        let before = nice();
        let lowered = std::thread::spawn(|| {
            lower_priority(12);
            let once = nice();
            // Again, or in a thread started by a lowered one: not lower.
            lower_priority(12);
            let again = nice();
            let inherited = std::thread::spawn(|| {
                lower_priority(12);
                nice()
            })
            .join()
            .expect("thread");
            (once, again, inherited)
        })
        .join()
        .expect("thread");
        let low = (before + 12).min(19);
        assert_eq!(lowered, (low, low, low));
        assert_eq!(nice(), before, "the other threads keep theirs");
    }
}
