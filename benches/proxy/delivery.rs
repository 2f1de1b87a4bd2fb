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

use hooktap::config::Config;
use hooktap::delivery::Engine;
use hooktap::event::{Event, Topic};
use hooktap::metrics::Metrics;
use hooktap::store::{SledStore, Store};
use hooktap::webhook::WebhookStatus;

pub struct Outcome {
    pub events: u64,
    pub enqueue: Duration,
    pub deliver: Duration,
    pub delivered: u64,
    pub failed: u64,
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

/// Runs the benchmark with `events` events; `threads` tokio workers run the delivery loop.
pub fn run(
    dir: &Path,
    receiver: SocketAddr,
    events: u64,
    threads: usize,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let unused: SocketAddr = "127.0.0.1:9".parse()?;
    let file = dir.join("hooktap.toml");
    std::fs::write(
        &file,
        config_text(dir, unused, unused, receiver, "paused", threads),
    )?;
    let config = Config::load(&file).map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.store)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        Vec::new(),
        config.delivery.clone(),
        Arc::new(Metrics::new()),
    )?);
    rt.block_on(engine.sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace))?;
    let webhook = engine
        .webhooks()
        .iter()
        .find(|w| w.spec.name == "crm")
        .ok_or_else(|| anyhow::anyhow!("webhook crm was not stored"))?
        .id;

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
        engine
            .intake()
            .enqueue(&Event::new(&topic, "order created", payload))?;
    }
    let enqueue = started.elapsed();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let outcome = rt.block_on(async {
        let looping = tokio::spawn(Arc::clone(&engine).run(config.store.retention, stopped));
        let started = Instant::now();
        engine.set_status(webhook, WebhookStatus::Active).await?;
        let (delivered, failed) = loop {
            let counters = engine
                .webhook(webhook)
                .map(|w| w.counters)
                .unwrap_or_default();
            if counters.delivered + counters.failed >= events || started.elapsed() > timeout {
                break (counters.delivered, counters.failed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let deliver = started.elapsed();
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), looping).await;
        anyhow::Ok(Outcome {
            events,
            enqueue,
            deliver,
            delivered,
            failed,
        })
    })?;
    Ok(outcome)
}
