//! Prometheus metrics: what the proxy, the rules and the delivery loop count.
//!
//! One [`Metrics`] is shared by all of them; `GET /metrics` on the admin API encodes it. The
//! proxy's per-request counter is looked up once at start (one atomic add per request, no label
//! hashing on the hot path); everything else is rarer and uses labelled families.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;

fn histogram_seconds() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    /// Indexed by status class: 1xx..5xx, then anything else (including failed proxying).
    requests_by_class: [Counter; 6],
    events: Family<Labels, Counter>,
    /// Events by rule alone (for the admin API's rule list; a computed topic has no single
    /// topic to look the count up by). Not exported: `events` has the same counts.
    rule_events: Family<Labels, Counter>,
    rule_misses: Family<Labels, Counter>,
    deduplicated: Family<Labels, Counter>,
    capture_skipped: Family<Labels, Counter>,
    store_errors: Counter,
    store_up: Gauge,
    deliveries: Family<Labels, Counter>,
    attempt_duration: Family<Labels, Histogram, fn() -> Histogram>,
    lag: Histogram,
    reloads: Family<Labels, Counter>,
    pending: Family<Labels, Gauge>,
    oldest_pending: Family<Labels, Gauge<f64, AtomicU64>>,
    circuit: Family<Labels, Gauge>,
    journal_backlog: Gauge,
    journal_behind: Gauge<f64, AtomicU64>,
    store_syncs: Counter,
    store_synced_events: Counter,
    open_connections: Family<Labels, Gauge>,
    connections_closed: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hooktap");
        let requests: Family<Labels, Counter> = Family::default();
        let requests_by_class = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
            .map(|class| requests.get_or_create_owned(&vec![("class", class.to_owned())]));
        registry.register(
            "proxy_requests",
            "Requests proxied, by response status class",
            requests,
        );
        let events = Family::default();
        registry.register(
            "events",
            "Events derived from traffic, by topic and rule",
            events.clone(),
        );
        let rule_misses = Family::default();
        registry.register(
            "rule_misses",
            "Candidate rules that derived nothing because of an error, by rule and reason (error: an expression failed; bad_topic: a computed topic is not a valid topic; not_array: for_each selected something else than an array)",
            rule_misses.clone(),
        );
        let deduplicated = Family::default();
        registry.register(
            "events_deduplicated",
            "Events not derived because the rule's dedupe key was seen within its window, by rule",
            deduplicated.clone(),
        );
        let capture_skipped = Family::default();
        registry.register(
            "capture_skipped",
            "Bodies not captured, by side and reason (too_big, decoded_too_big, unsupported_encoding, undecodable)",
            capture_skipped.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Events that could not be stored (the request was still proxied)",
            store_errors.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the store is open and storing events, 0 while it is not (events are then held in pending/ or lost; see store_errors)",
            store_up.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Delivery attempts by webhook and outcome (delivered, retry, failed)",
            deliveries.clone(),
        );
        let attempt_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(histogram_seconds);
        registry.register(
            "attempt_duration_seconds",
            "Duration of delivery attempts, by webhook",
            attempt_duration.clone(),
        );
        let lag = histogram_seconds();
        registry.register(
            "delivery_lag_seconds",
            "From event creation to successful delivery",
            lag.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "reloads",
            "Configuration reloads by result (ok, failed)",
            reloads.clone(),
        );
        let pending = Family::default();
        registry.register(
            "pending_deliveries",
            "Deliveries queued, by webhook",
            pending.clone(),
        );
        let oldest_pending = Family::default();
        registry.register(
            "oldest_pending_delivery_age_seconds",
            "Age of the oldest queued delivery, by webhook",
            oldest_pending.clone(),
        );
        let circuit = Family::default();
        registry.register(
            "circuit_state",
            "Each webhook's circuit breaker on this instance: 0 closed, 1 open, 2 half-open",
            circuit.clone(),
        );
        let journal_backlog = Gauge::default();
        registry.register(
            "journal_backlog",
            "Shared store only: events in this instance's local journal not yet moved to PostgreSQL",
            journal_backlog.clone(),
        );
        let journal_behind = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "journal_behind_seconds",
            "Shared store only: how long the oldest event in the local journal has waited",
            journal_behind.clone(),
        );
        let store_syncs = Counter::default();
        registry.register(
            "store_syncs",
            "flush = \"every-event\" only: durability barriers run (sled flush + fdatasync), each shared by the events that arrived while the one before ran",
            store_syncs.clone(),
        );
        let store_synced_events = Counter::default();
        registry.register(
            "store_synced_events",
            "flush = \"every-event\" only: events made durable by those barriers (divided by store_syncs: the mean group size)",
            store_synced_events.clone(),
        );
        let open_connections = Family::default();
        registry.register(
            "open_connections",
            "Client connections open, by listener (proxy, admin)",
            open_connections.clone(),
        );
        let connections_closed = Family::default();
        registry.register(
            "connections_closed",
            "Client connections closed by hooktap before their request, by listener and reason (header_timeout, shed, refused)",
            connections_closed.clone(),
        );
        Self {
            journal_backlog,
            journal_behind,
            store_syncs,
            store_synced_events,
            registry,
            requests_by_class,
            events,
            rule_events: Family::default(),
            rule_misses,
            deduplicated,
            capture_skipped,
            store_errors,
            store_up,
            deliveries,
            attempt_duration,
            lag,
            reloads,
            pending,
            oldest_pending,
            circuit,
            open_connections,
            connections_closed,
        }
    }

    /// One proxied request answered with `status` (0 when no response was sent).
    pub fn request(&self, status: u16) {
        let i = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.requests_by_class[i].inc();
    }

    pub fn event(&self, topic: &str, rule: &str) {
        self.events
            .get_or_create(&vec![
                ("topic", topic.to_owned()),
                ("rule", rule.to_owned()),
            ])
            .inc();
        self.rule_events
            .get_or_create(&vec![("rule", rule.to_owned())])
            .inc();
    }

    /// Events produced by `rule` since start, whatever their topics.
    pub fn events_of_rule(&self, rule: &str) -> u64 {
        self.rule_events
            .get_or_create(&vec![("rule", rule.to_owned())])
            .get()
    }

    /// A candidate rule derived nothing because of `reason` (see [`crate::rules::MissKind`]).
    pub fn rule_miss(&self, rule: &str, reason: &str) {
        self.rule_misses
            .get_or_create(&vec![
                ("rule", rule.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    pub fn rule_misses(&self, rule: &str, reason: &str) -> u64 {
        self.rule_misses
            .get_or_create(&vec![
                ("rule", rule.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .get()
    }

    /// An event of `rule` was a repeat within its dedupe window.
    pub fn deduplicated(&self, rule: &str) {
        self.deduplicated
            .get_or_create(&vec![("rule", rule.to_owned())])
            .inc();
    }

    pub fn deduplicated_of(&self, rule: &str) -> u64 {
        self.deduplicated
            .get_or_create(&vec![("rule", rule.to_owned())])
            .get()
    }

    pub fn capture_skipped(&self, side: &str, reason: &str) {
        self.capture_skipped
            .get_or_create(&vec![
                ("side", side.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// The counter of events that could not be stored, for code that counts them later.
    pub fn store_errors_counter(&self) -> Counter {
        self.store_errors.clone()
    }

    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    pub fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn store_errors(&self) -> u64 {
        self.store_errors.get()
    }

    /// One attempt's outcome for one delivery: `delivered`, `retry` or `failed`.
    pub fn delivery(&self, webhook: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&vec![
                ("webhook", webhook.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn attempt_duration(&self, webhook: &str, seconds: f64) {
        self.attempt_duration
            .get_or_create(&vec![("webhook", webhook.to_owned())])
            .observe(seconds);
    }

    pub fn lag(&self, seconds: f64) {
        self.lag.observe(seconds);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    /// Sets the queue gauges of one webhook (refreshed before each scrape).
    pub fn queue(&self, webhook: &str, pending: usize, oldest_age_seconds: f64) {
        let labels = vec![("webhook", webhook.to_owned())];
        self.pending
            .get_or_create(&labels)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.oldest_pending
            .get_or_create(&labels)
            .set(oldest_age_seconds);
    }

    /// Sets a webhook's circuit gauge.
    pub fn circuit(&self, webhook: &str, state: crate::webhook::CircuitState) {
        let value = match state {
            crate::webhook::CircuitState::Closed => 0,
            crate::webhook::CircuitState::Open => 1,
            crate::webhook::CircuitState::HalfOpen => 2,
        };
        self.circuit
            .get_or_create(&vec![("webhook", webhook.to_owned())])
            .set(value);
    }

    /// Sets the journal gauges of a shared store.
    pub fn journal(&self, backlog: u64, behind_seconds: f64) {
        self.journal_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.journal_behind.set(behind_seconds);
    }

    /// Brings the barrier counters up to the store's figures (read before each scrape).
    pub fn barrier(&self, syncs: u64, events: u64) {
        for (counter, now) in [
            (&self.store_syncs, syncs),
            (&self.store_synced_events, events),
        ] {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// Removes a deleted webhook's queue gauges.
    pub fn forget_webhook(&self, webhook: &str) {
        let labels = vec![("webhook", webhook.to_owned())];
        self.pending.remove(&labels);
        self.oldest_pending.remove(&labels);
        self.circuit.remove(&labels);
    }

    /// The gauge of the client connections open on `listener` (`proxy`, `admin`).
    pub fn open_connections(&self, listener: &str) -> Gauge {
        self.open_connections
            .get_or_create(&vec![("listener", listener.to_owned())])
            .clone()
    }

    /// hooktap closed a client connection on `listener` before a request: its head was late
    /// (`header_timeout`), it waited on its client at the cap (`shed`), or the cap was full
    /// of requests in flight (`refused`).
    pub fn connection_closed(&self, listener: &str, reason: &str) {
        self.connections_closed
            .get_or_create(&vec![
                ("listener", listener.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_exposition() {
        let m = Metrics::new();
        m.request(201);
        m.request(201);
        m.request(0);
        m.event("order.created", "order created");
        m.delivery("crm", "delivered");
        m.queue("crm", 3, 1.5);
        let text = m.encode();
        assert!(
            text.contains("hooktap_proxy_requests_total{class=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hooktap_proxy_requests_total{class=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hooktap_events_total{topic=\"order.created\",rule=\"order created\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hooktap_deliveries_total{webhook=\"crm\",outcome=\"delivered\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hooktap_pending_deliveries{webhook=\"crm\"} 3"),
            "{text}"
        );
        assert_eq!(m.events_of_rule("order created"), 1);
    }
}
