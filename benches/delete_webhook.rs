//! Deleting a webhook with a long history, against the writes that go on meanwhile:
//! `cargo bench --bench delete_webhook [-- DELIVERIES]` (default 100,000); `-- --background`
//! deletes as for a webhook that left the config file, the keeper's rounds removing the history.
//!
//! Fills a sled store with DELIVERIES delivered deliveries of one webhook (each with its
//! event and one attempt), then deletes the webhook while another thread appends an event
//! for a second webhook every millisecond, as the proxy would. Prints the deletion's time, the
//! process's peak RSS before and after it, and the longest of those appends: sled holds every
//! other write while it applies a batch, so a deletion in one batch stalls the proxy.
//!
//! `-- --postgres [DELIVERIES]` (default 1,000,000): in a throwaway PostgreSQL cluster
//! (filled in SQL, then vacuumed), a webhook with DELIVERIES deliveries interleaved with as
//! many of another webhook's is deleted; then the retention sweep meets DELIVERIES expired
//! events, one in ten of them kept by a pending delivery. Each first as one transaction (the
//! statements hooktap ran before 2026-12-02, kept here), then as hooktap runs it now, every
//! session under a `statement_timeout` of 1 s (`HOOKTAP_BENCH_TIMEOUT_MS`): a small-scale
//! copy of a store whose one transaction outlasts the default 60 s.

#[path = "../src/store/postgres/cluster.rs"]
mod pg_cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hooktap::event::{Attempt, Delivery, DeliveryState, Event, Topic};
use hooktap::store::{
    Backend, FlushMode, PgConfig, PgStore, Recorded, SledStore, Store, StoreConfig,
};
use hooktap::webhook::{Origin, Webhook};

fn main() {
    let number = std::env::args().skip(1).find_map(|a| a.parse().ok());
    if std::env::args().any(|a| a == "--postgres") {
        postgres(number.unwrap_or(1_000_000));
    } else {
        sled(number.unwrap_or(100_000));
    }
}

fn sled(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = bench_config(dir.path());
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
        let attempt = delivered_attempt(&d, "{\"id\":1}".into());
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
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let dropped = if std::env::args().any(|a| a == "--background") {
        // As a webhook that left the config file: the keeper's rounds, every 200 ms, remove
        // the history.
        let dropped = runtime
            .block_on(hooktap::store::Store::delete_webhook_in_background(
                store.as_ref(),
                busy,
            ))
            .expect("delete");
        println!("the webhook gone in {:.1?}", started.elapsed());
        while !store.deliveries_of(busy, 1).expect("read").is_empty() {
            std::thread::sleep(hooktap::delivery::keeper::KEEP_STORE_EVERY);
            store.maintain();
        }
        dropped
    } else {
        store.delete_webhook(busy).expect("delete")
    };
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

/// A first attempt of `d` that delivered `body`.
fn delivered_attempt(d: &Delivery, body: String) -> Attempt {
    Attempt {
        id: uuid::Uuid::now_v7(),
        delivery_id: d.id,
        webhook_id: d.webhook_id,
        number: 1,
        created_at: time::OffsetDateTime::now_utc(),
        duration_ms: 1,
        summary: "HTTP 200 OK".into(),
        success: true,
        request_method: "POST".into(),
        request_url: "https://crm.example/hooks".into(),
        request_headers: vec![],
        request_body: body,
        response_code: Some(200),
        response_message: "OK".into(),
        response_headers: vec![],
        response_body: "ok".into(),
    }
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

/// A config with two webhooks, `busy` and `other`, and a sled store under `dir`.
fn bench_config(dir: &std::path::Path) -> hooktap::config::Config {
    let file = dir.join("hooktap.toml");
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
            dir.join("store").display(),
            hook("busy"),
            hook("other"),
        ),
    )
    .expect("write config");
    hooktap::config::Config::load(&file).expect("bench config loads")
}

/// The statement timeout of every PostgreSQL session in the bench, ms (`HOOKTAP_BENCH_TIMEOUT_MS`
/// overrides; 0: none, to compare the times of both ways to the end).
const TIMEOUT_MS: u64 = 1_000;

/// Deleting a webhook as one transaction (hooktap before 2026-12-02).
const DELETE_AT_ONCE: &str = "
BEGIN;
SELECT 1 FROM webhooks WHERE id = $ID FOR UPDATE;
WITH gone AS (DELETE FROM deliveries WHERE webhook_id = $ID RETURNING pending)
    SELECT count(*) FILTER (WHERE pending) FROM gone;
DELETE FROM attempts WHERE webhook_id = $ID;
DELETE FROM webhooks WHERE id = $ID;
COMMIT;";

/// The retention sweep's removal as one transaction (hooktap before 2026-12-02).
const SWEEP_AT_ONCE: &str = "
BEGIN;
WITH old AS (
        SELECT e.id FROM events e
        WHERE e.created_ms < $CUTOFF
          AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.pending)),
     gone_deliveries AS (
        DELETE FROM deliveries d USING old WHERE d.event_id = old.id RETURNING d.id),
     gone_attempts AS (
        DELETE FROM attempts a USING gone_deliveries g WHERE a.delivery_id = g.id RETURNING 1),
     gone_events AS (
        DELETE FROM events e USING old WHERE e.id = old.id RETURNING 1)
SELECT (SELECT count(*) FROM gone_events);
COMMIT;";

/// `n` events of `webhook`, created `age_ms` ago, each with a delivered delivery and an
/// attempt whose records are hooktap's own JSON.
async fn fill(
    c: &tokio_postgres::Client,
    webhooks: &[uuid::Uuid],
    n: u64,
    age_ms: i64,
    pending_every: i64,
) {
    let webhook = webhooks[0];
    let topic = Topic::parse("order.created").expect("topic");
    let e = Event::new(
        &topic,
        "order created",
        serde_json::json!({"id": 1, "total": "49.00"}),
    );
    let mut d = Delivery::new(&e, webhook, 0);
    d.state = DeliveryState::Delivered;
    d.attempts = 1;
    let a = delivered_attempt(&d, serde_json::to_string(&e.payload).expect("json"));
    let json = |v: serde_json::Value| v.to_string();
    let (e, d, a) = (
        json(serde_json::to_value(&e).expect("event")),
        json(serde_json::to_value(&d).expect("delivery")),
        json(serde_json::to_value(&a).expect("attempt")),
    );
    let n = i64::try_from(n).expect("n");
    let from = i64::try_from(hooktap::event::unix_ms(time::OffsetDateTime::now_utc())).expect("ms")
        - age_ms;
    c.execute(
        // Ids made as hooktap makes them (UUIDv7: the time first), so rows of neighbouring ids
        // lie in neighbouring pages, as in a real store.
        "CREATE TEMP TABLE made AS
           SELECT (lpad(to_hex($2::int8 + g), 12, '0') || '7' || substr(md5('e' || g), 1, 19))::uuid
                    AS event,
                  (lpad(to_hex($2::int8 + g), 12, '0') || '7' || substr(md5('d' || g), 1, 19))::uuid
                    AS delivery,
                  $2::int8 + g AS at,
                  ($3::uuid[])[1 + g % cardinality($3::uuid[])] AS webhook,
                  $4::int8 > 0 AND g % $4::int8 = 0 AS pending
             FROM generate_series(1, $1::int8) g",
        &[&n, &from, &webhooks, &pending_every],
    )
    .await
    .expect("ids");
    for (sql, record) in [
        ("INSERT INTO events (id, created_ms, record) SELECT event, at, $1::text::json FROM made", e),
        ("INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record)
          SELECT delivery, event, webhook, at, pending, at, $1::text::json FROM made", d),
        ("INSERT INTO attempts (delivery_id, number, webhook_id, record, created_ms, success,
                               duration_ms, lag_ms)
          SELECT delivery, 1, webhook, $1::text::json, at, true, 1, 0 FROM made", a),
    ] {
        c.execute(sql, &[&record]).await.expect("fill");
    }
    // As autovacuum would have left the tables (no dead rows of a previous run in the way).
    c.batch_execute("DROP TABLE made").await.expect("drop");
    c.batch_execute("VACUUM ANALYZE").await.expect("vacuum");
}

/// Runs `sql` (a transaction) on a session with the bench's statement timeout; says how long
/// it took and how it ended.
async fn at_once(url: &str, sql: &str) -> String {
    let c = pg_cluster::connect(url).await;
    let started = Instant::now();
    let ended = c.batch_execute(sql).await;
    let took = started.elapsed();
    match ended {
        Ok(()) => format!("{took:.2?}, done"),
        Err(e) => format!(
            "{took:.2?}, failed: {}",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        ),
    }
}

fn postgres(n: u64) {
    let cluster = pg_cluster::Cluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let timeout_ms: u64 = std::env::var("HOOKTAP_BENCH_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TIMEOUT_MS);
    runtime.block_on(async {
        let plain = cluster.database();
        let url = format!("{plain}?options=-c%20statement_timeout%3D{timeout_ms}");
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = PgConfig {
            url: url.clone(),
            lease: Duration::from_secs(60),
            pool_size: 4,
            ca_file: None,
        };
        let config = StoreConfig {
            path: dir.path().join("journal"),
            flush: FlushMode::Interval(Duration::from_millis(100)),
            retention: Duration::from_secs(3600),
            min_free_space: 0,
            backend: Backend::Postgres(pg.clone()),
        };
        let store = Arc::new(
            PgStore::open_now(&config, &pg)
                .await
                .expect("open the store"),
        );
        store.mark_ready();
        let filler = pg_cluster::connect(&plain).await;
        let specs = bench_config(dir.path()).webhooks;
        println!(
            "PostgreSQL, statement_timeout = {timeout_ms} ms, {n} deliveries with an attempt each"
        );

        let busy = Webhook::new(specs[0].clone(), Origin::Api);
        let other = Webhook::new(specs[1].clone(), Origin::Api);
        store.put_webhook(&busy).await.expect("webhook");
        store.put_webhook(&other).await.expect("webhook");
        fill(&filler, &[busy.id, other.id], 2 * n, 0, 0).await;
        // The admin API's first page of the webhook's deliveries, counting every match and
        // counting up to the admin API's cap (the better of three each).
        for count_up_to in [u64::MAX, hooktap::store::DELIVERY_COUNT_CAP] {
            let q = hooktap::store::DeliveryQuery {
                state: None,
                offset: 0,
                limit: 25,
                count_up_to,
            };
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let started = Instant::now();
                store.deliveries_page(busy.id, &q).await.expect("page");
                best = best.min(started.elapsed());
            }
            println!("deliveries page 1, counted up to {count_up_to}: {best:.2?}");
        }
        let before = at_once(
            &url,
            &DELETE_AT_ONCE.replace("$ID", &format!("'{}'", busy.id)),
        )
        .await;
        println!("delete, one transaction: {before}");
        if before.ends_with("done") {
            store.put_webhook(&busy).await.expect("webhook");
            fill(&filler, &[busy.id, other.id], 2 * n, 0, 0).await;
        }
        let started = Instant::now();
        let ended = store.delete_webhook(busy.id).await;
        let took = started.elapsed();
        let left: i64 = filler
            .query_one(
                "SELECT count(*) FROM deliveries WHERE webhook_id = $1",
                &[&busy.id],
            )
            .await
            .expect("count")
            .get(0);
        println!(
            "delete, in parts: {took:.2?}, {}, {left} deliveries left",
            ended.map_or_else(|e| format!("failed: {e}"), |_| "done".to_owned())
        );

        let day_ms = 24 * 3600 * 1000;
        fill(&filler, &[other.id], n, 40 * day_ms, 10).await;
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        let cutoff_ms = hooktap::event::unix_ms(cutoff);
        let before = at_once(
            &url,
            &SWEEP_AT_ONCE.replace("$CUTOFF", &cutoff_ms.to_string()),
        )
        .await;
        println!("sweep, one transaction: {before}");
        if before.ends_with("done") {
            fill(&filler, &[other.id], n, 40 * day_ms, 10).await;
        }
        let sweeper = Arc::clone(&store);
        let started = Instant::now();
        let swept = tokio::task::spawn_blocking(move || sweeper.sweep(cutoff))
            .await
            .expect("sweep task");
        println!(
            "sweep, in parts: {:.2?}, {}",
            started.elapsed(),
            swept.map_or_else(
                |e| format!("failed: {e}"),
                |s| format!("{} events removed", s.events)
            )
        );
    });
}
