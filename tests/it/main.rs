//! Integration tests: one binary, real servers on loopback, the real hooktap binary.
//!
//! - `common`: the test upstream (a ticket shop), receiver and proxy harness.
//! - `admin`: the admin API over HTTP: auth, webhooks, deliveries, events, metrics, reload.
//! - `passthrough`: the app's traffic is unchanged by the proxy.
//! - `pipeline`: rules → stored event → signed webhook, one test per rule feature.
//! - `expressions`: CEL `when`, payload shapes, `for_each`, `dedupe`, computed topics.
//! - `delivery`: retries, restarts and failure outcomes.
//! - `manage`: the delivery engine's Rust API in-process (status, delete, redeliver, ...).
//! - `webhooks`: statuses, signature profiles, failure handling, modes, isolation.
//! - `hostile`: the catalogue of malformed and hostile input, config and traffic.
//! - `demo`: `hooktap demo` from an empty directory.
//! - `crash`: SIGKILL/SIGTERM loops under load (ignored by default: scripts/reliability.sh).
//! - `cli`: `hooktap check` and `hooktap test` as an operator runs them.
//! - `durability`: `flush = "every-event"` syncs every confirmed event, traced with strace.
//! - `learn`: `hooktap learn` from live traffic of two apps, its rules run by the real proxy;
//!   `hooktap test --har`; HAR files that are damaged, compressed, huge or full of credentials.
//! - `subscribers`: what a subscriber asks for: per-key ordering, payload filters, rate
//!   limits, circuit breaking with early warnings, trace context, ping-on-create.

mod admin;
mod cli;
mod common;
mod crash;
mod delivery;
mod demo;
mod durability;
mod expressions;
mod hostile;
mod learn;
mod manage;
mod passthrough;
#[path = "../../src/store/postgres/cluster.rs"]
mod pg_cluster;
mod pipeline;
mod shared;
mod subscribers;
mod webhooks;
