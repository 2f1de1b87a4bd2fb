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
//! - `dashboard`: the dashboard in headless Chromium.
//! - `hostile`: the catalogue of malformed and hostile input, config and traffic.
//! - `demo`: `hooktap demo` from an empty directory.
//! - `crash`: SIGKILL/SIGTERM loops under load (ignored by default: scripts/reliability.sh).
//! - `cli`: `hooktap check` and `hooktap test` as an operator runs them.

mod admin;
mod cli;
mod common;
mod crash;
mod dashboard;
mod delivery;
mod demo;
mod expressions;
mod hostile;
mod manage;
mod passthrough;
#[path = "../../src/store/postgres/cluster.rs"]
mod pg_cluster;
mod pipeline;
mod shared;
mod webhooks;
