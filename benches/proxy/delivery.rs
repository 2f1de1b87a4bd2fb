//! The delivery benchmark, in process: N events queued while the webhook is paused, then the
//! webhook is resumed and the time until all N are delivered (signed, to the receiver) is taken.
//!
//! It goes through the library exactly as `hooktap run` does: the config is loaded from a
//! hooktap.toml (so every default is the real one), the store is opened from it, the webhooks
//! are synced into it and the engine is built from it. Only the proxy is left out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooktap::config::Backend as Backend_;
use hooktap::config::Config;
use hooktap::delivery::Engine;
use hooktap::event::{Event, Topic};
use hooktap::metrics::Metrics;
use hooktap::store::{PgStore, SledStore, Store};
use hooktap::webhook::WebhookStatus;

pub struct Outcome {
    pub events: u64,
    pub enqueue: Duration,
    /// Until every event was in the store that delivers (for PostgreSQL: moved from the
    /// journals; zero for sled).
    pub ship: Duration,
    pub deliver: Duration,
    pub delivered: u64,
    pub failed: u64,
    /// CPU ticks of this process (hooktap's engine, store and journal shipper) while events
    /// were taken in and moved, and while they were delivered.
    pub cpu_intake: u64,
    pub cpu_deliver: u64,
    /// CPU ticks of the PostgreSQL server in the same two phases.
    pub pg_intake: u64,
    pub pg_deliver: u64,
}

/// Where the benchmark's store lives.
pub struct Backend<'a> {
    /// `None`: sled; else the URL of an empty PostgreSQL database.
    pub postgres: Option<&'a str>,
    /// Instances (engines, each with its own store and journal) sharing it.
    pub instances: usize,
    /// The PostgreSQL server's processes, for their CPU time.
    pub server_pids: &'a dyn Fn() -> Vec<u32>,
    /// The delivery threads' nice value (`[delivery] nice`: the product lowers its delivery
    /// thread's priority as these do).
    pub nice: u8,
}

/// A hooktap.toml for `dir` with one webhook to `receiver`, paused or active.
pub fn config_text(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    receiver: SocketAddr,
    status: &str,
    threads: usize,
) -> String {
    format!(
        r#"rules = ["{rules}/rules/*.toml"]

[proxy]
listen = "{listen}"
upstream = "{upstream}"
threads = {threads}

[store]
path = "{store}"
flush = "interval"

# Port 0: the benchmark does not use the admin API, and a fixed port would collide with any
# other hooktap on the machine.
[admin]
listen = "127.0.0.1:0"

[delivery]
source = "https://tickets.example.com/"
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://{receiver}/hooks"
secret = "s3cret"
topics = ["order.*"]
status = "{status}"
"#,
        rules = env!("CARGO_MANIFEST_DIR"),
        store = dir.join("store").display(),
    )
}

/// Runs the benchmark with `events` events on sled; `threads` tokio workers run the delivery
/// loop.
pub fn run(
    dir: &Path,
    receiver: SocketAddr,
    events: u64,
    threads: usize,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let backend = Backend {
        postgres: None,
        instances: 1,
        server_pids: &Vec::new,
        nice: hooktap::delivery::DEFAULT_NICE,
    };
    run_on(dir, receiver, events, threads, timeout, &backend)
}

/// This process's CPU ticks and the PostgreSQL server's.
fn ticks(backend: &Backend<'_>) -> (u64, u64) {
    (
        crate::cpu_ticks(&[std::process::id()]),
        crate::cpu_ticks(&(backend.server_pids)()),
    )
}

/// The same on `backend`: events are taken in round-robin by its instances, and every
/// instance's delivery loop runs.
pub fn run_on(
    dir: &Path,
    receiver: SocketAddr,
    events: u64,
    threads: usize,
    timeout: Duration,
    backend: &Backend<'_>,
) -> anyhow::Result<Outcome> {
    let unused: SocketAddr = "127.0.0.1:9".parse()?;
    let nice = backend.nice;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .on_thread_start(move || hooktap::delivery::lower_priority(nice))
        .enable_all()
        .build()?;
    let mut engines = Vec::new();
    let mut config = None;
    for i in 0..backend.instances.max(1) {
        let own = dir.join(format!("instance-{i}"));
        std::fs::create_dir_all(&own)?;
        let file = own.join("hooktap.toml");
        let mut text = config_text(&own, unused, unused, receiver, "paused", threads);
        if let Some(url) = backend.postgres {
            text = text.replace(
                "[store]\n",
                &format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
            );
        }
        std::fs::write(&file, text)?;
        let c = Config::load(&file).map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
        let store: Arc<dyn Store> = match &c.store.backend {
            Backend_::Sled => Arc::new(SledStore::open(&c.store)?),
            Backend_::Postgres(pg) => {
                let s = rt.block_on(PgStore::open_now(&c.store, pg))?;
                Arc::new(s)
            }
        };
        let engine = Arc::new(Engine::new(
            Arc::clone(&store),
            Vec::new(),
            c.delivery.clone(),
            Arc::new(Metrics::new()),
        )?);
        rt.block_on(engine.sync_webhooks(&c.webhooks, c.delivery.secret_rotation_grace))?;
        store.mark_ready();
        engines.push(engine);
        config.get_or_insert(c);
    }
    let config = config.ok_or_else(|| anyhow::anyhow!("no instance"))?;
    let engine = Arc::clone(&engines[0]);
    let webhook = engine
        .webhooks()
        .iter()
        .find(|w| w.spec.name == "crm")
        .ok_or_else(|| anyhow::anyhow!("webhook crm was not stored"))?
        .id;
    let before = ticks(backend);

    let topic = Topic::parse("order.created").map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    for i in 0..events {
        let payload = serde_json::json!({
            "id": i,
            "status": "paid",
            "email": "buyer@example.com",
            "event_id": 3,
            "tickets": 2,
            "total": 90.0,
            "location": i.to_string(),
        });
        engines[usize::try_from(i).unwrap_or(0) % engines.len()]
            .intake()
            .enqueue(Event::new(&topic, "order created", payload))?;
    }
    let enqueue = started.elapsed();
    // A shared store delivers what reached it: wait until every journal is moved.
    for e in &engines {
        rt.block_on(e.store().flush())?;
    }
    let ship = started.elapsed() - enqueue;
    let after_intake = ticks(backend);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let outcome = rt.block_on(async {
        let loops: Vec<_> = engines
            .iter()
            .map(|e| tokio::spawn(Arc::clone(e).run(config.store.retention, stopped.clone())))
            .collect();
        let started = Instant::now();
        engine.set_status(webhook, WebhookStatus::Active).await?;
        for other in &engines[1..] {
            // What each instance's store keeper does every 200 ms.
            other.refresh_webhooks().await?;
        }
        let (delivered, failed) = loop {
            // A shared store counts over all instances; sled's own copy is the engine's.
            let counters = if backend.postgres.is_some() {
                engine.store().webhook(webhook).await?.map(|w| w.counters)
            } else {
                engine.webhook(webhook).map(|w| w.counters)
            }
            .unwrap_or_default();
            if counters.delivered + counters.failed >= events || started.elapsed() > timeout {
                break (counters.delivered, counters.failed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let deliver = started.elapsed();
        let after = ticks(backend);
        let _ = stop.send(true);
        for looping in loops {
            let _ = tokio::time::timeout(Duration::from_secs(5), looping).await;
        }
        anyhow::Ok(Outcome {
            events,
            enqueue,
            ship,
            deliver,
            delivered,
            failed,
            // PostgreSQL's processes that ended meanwhile take their ticks with them.
            cpu_intake: after_intake.0.saturating_sub(before.0),
            cpu_deliver: after.0.saturating_sub(after_intake.0),
            pg_intake: after_intake.1.saturating_sub(before.1),
            pg_deliver: after.1.saturating_sub(after_intake.1),
        })
    })?;
    Ok(outcome)
}
