//! hooktap derives webhooks from HTTP traffic, without a line of code changed in the app.
//!
//! # The data path
//!
//! 1. [`proxy`] stands in front of the host application (pingora) and asks the [`rules`] router
//!    whether a request could match any rule; only such *candidates* are copied ([`capture`]).
//! 2. When the response is complete, [`capture`] builds the exchange document and [`rules`]
//!    evaluates status, `when` predicates and payload paths into [`event::Event`]s.
//! 3. The [`delivery::intake`] (all the proxy holds of the engine) appends each event and one
//!    [`event::Delivery`] per subscribed webhook to the [`store`], before the last byte of the
//!    response reaches the client, and wakes the scheduler.
//! 4. The [`delivery::scheduler`] reads what is due, signs and POSTs it, and records every
//!    [`event::Attempt`] as [`delivery::outcome`] decides: delivered, retried along the
//!    webhook's schedule, or failed.
//!
//! # Layout
//!
//! Dependencies point one way: `config` assembles the components; the engine and the admin
//! API use the [`store::Store`] contract, never a backend's internals.
//!
//! - [`admin`]: the admin HTTP API, console, metrics and live tap.
//! - [`client`]: the admin API client behind the `webhooks`, `deliveries` and `tap` commands.
//! - [`config`]: loads hooktap.toml and the rule files and assembles the checked parts; every
//!   error says `file:line`.
//! - [`rules`]: rule files' raw types and the compiled rule set: router, `when` predicates,
//!   payload, the `[[test]]` runner.
//! - [`capture`]: bounded body copies, content decoding, the exchange document.
//! - [`event`]: the types handed between rules, store and delivery.
//! - [`metrics`]: Prometheus counters shared by proxy, rules and delivery.
//! - [`proxy`]: the pingora glue; fails open, except for framing the next party could read
//!   differently (refused).
//! - [`live`]: reloading rules and webhooks while running.
//! - [`store`]: the store contract, its test suite and the sled backend.
//! - [`webhook`]: webhook subscriptions: input, spec, stored record, status, counters.
//! - [`schedule`]: parsing retry schedules such as `5s,30s,1m`.
//! - [`ssrf`]: which destination addresses deliveries may reach.
//! - [`delivery`]: the engine: intake, registry, scheduler, outcome, sending, signing, retries,
//!   the store keeper and management.
//! - [`demo`]: `hooktap demo`: a shop, the proxy and a receiver in one process.
//! - [`learn`]: `hooktap learn` (rules proposed from HAR files, live traffic or OpenAPI) and
//!   the `hooktap test --har` dry run; offline, never on the proxy path.
//! - [`open_files`]: the open-file limit and the share of it the proxy's client connections get.
//! - [`server`]: wires the above into one pingora server with graceful shutdown.
//!
//! # Dependency direction
//!
//! Imports point one way (an arrow reads "imports"); nothing imports back up:
//!
//! ```text
//! server, demo ──→ admin, live, proxy, delivery, store, config, open_files
//! learn ─────────→ rules, capture (a tool beside the data path; nothing imports it)
//! admin ─────────→ live, delivery, store (the Store contract), webhook, event
//! live ──────────→ config, delivery, rules, store
//! client ────────→ config (AdminConfig), webhook, event
//! delivery ──────→ store, webhook, event, metrics, ssrf (it owns DeliveryConfig)
//! store ─────────→ webhook, event (it owns StoreConfig; config builds it)
//! proxy ─────────→ delivery (the intake only), rules, capture, metrics
//! config ────────→ rules (rules::raw for rule files), webhook (WebhookInput), store, delivery (their configs), ssrf
//! rules ─────────→ capture, event
//! webhook ───────→ ssrf, schedule
//! leaves: ssrf, schedule, capture, event, metrics, open_files
//! ```
//!
//! `config` reads the files and assembles: it uses the components' own types (the rule
//! files' raw types live in [`rules::raw`], a webhook table is read into
//! [`webhook::WebhookInput`]) and hands each component its compiled `*Config`. A component
//! never imports `config` for raw types, `webhook` never imports `delivery`, and `ssrf` and
//! `schedule` import nothing from the crate.

pub mod admin;
pub mod capture;
pub mod client;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod event;
pub mod learn;
pub mod live;
pub mod metrics;
pub mod open_files;
pub mod proxy;
pub mod rules;
pub mod schedule;
pub mod server;
pub mod ssrf;
pub mod store;
pub mod webhook;

/// The `User-Agent` hooktap sends with every webhook.
pub const USER_AGENT: &str = concat!("hooktap/", env!("CARGO_PKG_VERSION"));
