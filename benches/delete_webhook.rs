//! Deleting a webhook with a long history, against the writes that go on meanwhile:
//! `cargo bench --bench delete_webhook [-- DELIVERIES]` (default 100,000).
//!
//! Fills a sled store with DELIVERIES delivered deliveries of one webhook (each with its
//! event and one attempt), then deletes the webhook while another thread appends an event
//! for a second webhook every millisecond, as the proxy would. Prints the deletion's time, the
//! process's peak RSS before and after it, and the longest of those appends: sled holds every
//! other write while it applies a batch, so a deletion in one batch stalls the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hooktap::event::{Attempt, Delivery, DeliveryState, Event, Topic};
use hooktap::store::{Recorded, SledStore};
use hooktap::webhook::{Origin, Webhook};

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hooktap.toml");
    let hook = |name: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"https://crm.example/hooks\"\nsecret = \"s\"\ntopics = [\"*\"]\n"
        )
    };
    std::fs::write(
        &file,
        format!(
            "rules = [\"{}/rules/*.toml\"]\n[proxy]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n[store]\npath = \"{}\"\nflush = \"interval\"\n{}{}",
            env!("CARGO_MANIFEST_DIR"),
            dir.path().join("store").display(),
            hook("busy"),
            hook("other"),
        ),
    )
    .expect("write config");
    let config = hooktap::config::Config::load(&file).expect("bench config loads");
    let store = Arc::new(SledStore::open(&config.store).expect("open store"));
    let hooks: Vec<Webhook> = config
        .webhooks
        .iter()
        .map(|spec| Webhook::new(spec.clone(), Origin::Config))
        .collect();
    for h in &hooks {
        store.put_webhook(h).expect("webhook");
    }
    let topic = Topic::parse("order.created").expect("topic");
    let (busy, other) = (hooks[0].id, hooks[1].id);
    let started = Instant::now();
    for i in 0..n {
        let e = Event::new(&topic, "order created", serde_json::json!({"id": i}));
        let d = Delivery::new(&e, busy, 0);
        store.append(&e, std::slice::from_ref(&d)).expect("append");
        let mut after = d.clone();
        after.attempts = 1;
        after.state = DeliveryState::Delivered;
        let attempt = Attempt {
            id: uuid::Uuid::now_v7(),
            delivery_id: d.id,
            webhook_id: busy,
            number: 1,
            created_at: time::OffsetDateTime::now_utc(),
            duration_ms: 1,
            summary: "HTTP 200 OK".into(),
            success: true,
            request_method: "POST".into(),
            request_url: "https://crm.example/hooks".into(),
            request_headers: vec![],
            request_body: "{\"id\":1}".into(),
            response_code: Some(200),
            response_message: "OK".into(),
            response_headers: vec![],
            response_body: "ok".into(),
        };
        let change = Recorded {
            before: d,
            after,
            attempt,
        };
        store
            .record_attempts(busy, &[change], None)
            .expect("record");
    }
    println!(
        "stored {n} delivered deliveries in {:.1?}",
        started.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (store, stop, topic) = (Arc::clone(&store), Arc::clone(&stop), topic.clone());
        std::thread::spawn(move || {
            let (mut worst, mut count) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let e = Event::new(&topic, "order created", serde_json::json!({"id": 1}));
                let d = Delivery::new(&e, other, 0);
                let t = Instant::now();
                store.append(&e, std::slice::from_ref(&d)).expect("append");
                worst = worst.max(t.elapsed());
                count += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (worst, count)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let before = peak_rss_kib();
    let started = Instant::now();
    let dropped = store.delete_webhook(busy).expect("delete");
    let took = started.elapsed();
    let after = peak_rss_kib();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (worst, count) = appender.join().expect("appender");
    println!(
        "delete_webhook: {took:.1?} ({dropped} pending dropped); peak RSS {} -> {} MiB; \
         appends meanwhile: {count}, the longest {worst:.1?}",
        before / 1024,
        after / 1024
    );
}

/// The process's peak resident set so far (`VmHWM`), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
