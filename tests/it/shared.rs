//! Three hooktap instances on one PostgreSQL store, one app and one receiver: shared webhook
//! ids, a change on one instance seen on the others, orders spread over the three proxies
//! while one instance is SIGKILLed and restarted, PostgreSQL is stopped hard and started
//! again, and one instance is paused (SIGSTOP) past its lease. Every order the app confirmed reaches the receiver, the ordered webhook receives
//! them in queue order, and the duplicates are counted. Part of `scripts/reliability.sh`.
//! Beside it, quick: the shared store's runtime runs at delivery's lowered priority.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::crash::{Outcome, load};
use crate::pg_cluster::Cluster;

/// Starts an instance of `setup` on the shared store at `url`.
async fn instance(setup: &Setup<'_>, url: &str) -> TestProxy {
    // every-event: a SIGKILL loses nothing from the journal (interval mode may lose its
    // last interval, as with sled alone).
    let lines = format!(
        "flush = \"every-event\"\nbackend = \"postgres\"\nurl = \"{url}\"\nlease = \"2s\"\npool_size = 4"
    );
    TestProxy::start_edited(setup, |c| {
        c.replace(
            "[store]\npath = \"data\"",
            &format!("[store]\npath = \"data\"\n{lines}"),
        )
    })
    .await
}

/// What a receiver got, without the pings (empty bodies) of activating a webhook.
fn deliveries(received: Vec<Received>) -> Vec<Received> {
    received
        .into_iter()
        .filter(|r| !r.body.is_empty())
        .collect()
}

/// The order ids in what a receiver got.
fn order_ids(received: &[Received]) -> HashSet<u64> {
    received
        .iter()
        .filter_map(|r| r.json()["id"].as_u64())
        .collect()
}

/// The delivery ids a receiver got, first arrivals only, in arrival order.
fn first_arrivals(received: &[Received]) -> Vec<String> {
    let mut seen = HashSet::new();
    received
        .iter()
        .map(|r| r.header("x-hooktap-webhook-delivery-id").to_owned())
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn duplicates(received: &[Received]) -> usize {
    let mut per_delivery: HashMap<&str, usize> = HashMap::new();
    for r in received {
        *per_delivery
            .entry(r.header("x-hooktap-webhook-delivery-id"))
            .or_default() += 1;
    }
    per_delivery.values().map(|n| n - 1).sum()
}

/// The ordered webhook's deliveries in the shared queue's order (the order they reached
/// PostgreSQL), read from PostgreSQL itself.
async fn queue_order(url: &str, webhook: &str) -> Vec<String> {
    let client = crate::pg_cluster::connect(url).await;
    let id: uuid::Uuid = webhook.parse().expect("a webhook id");
    client
        .query(
            "SELECT id FROM deliveries WHERE webhook_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .expect("query")
        .iter()
        .map(|r| r.get::<_, uuid::Uuid>(0).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: part of scripts/reliability.sh"]
async fn three_instances_share_one_store_through_a_peer_kill_an_outage_and_a_pause() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let ordered = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "crm",
            &receiver,
            "topics = [\"order.*\"]\nretry = \"200ms,500ms,1s,1s,1s\"\nconcurrency = 8",
        )
        .webhook(
            "ledger",
            &ordered,
            "topics = [\"order.*\"]\nordered = true\nretry = \"200ms,500ms,1s,1s,1s\"",
        );
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(instance(&setup, &url).await);
    }

    // The webhooks are applied to the shared store once each instance's keeper reaches it.
    for p in &proxies {
        wait_until(
            Duration::from_secs(10),
            "the file's webhooks are applied",
            || async {
                p.admin_get("/webhooks")
                    .await
                    .as_array()
                    .is_some_and(|l| l.len() == 2)
            },
        )
        .await;
    }

    // One id per file webhook, on every instance.
    let mut ids = HashSet::new();
    for p in &proxies {
        ids.insert(p.webhook_id("crm").await);
    }
    assert_eq!(
        ids.len(),
        1,
        "the crm webhook has one id everywhere: {ids:?}"
    );
    let crm = ids.into_iter().next().expect("an id");

    // A change through one instance's API is seen by the others within a second.
    let paused = client()
        .put(proxies[0].admin_url(&format!("/webhooks/{crm}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "paused"}))
        .send()
        .await
        .expect("pause");
    assert!(paused.status().is_success(), "{}", paused.status());
    let started = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the pause is seen on the third instance",
        || async { proxies[2].admin_get(&format!("/webhooks/{crm}")).await["status"] == "paused" },
    )
    .await;
    println!(
        "a pause on one instance was seen on another after {:?}",
        started.elapsed()
    );
    let resumed = client()
        .put(proxies[1].admin_url(&format!("/webhooks/{crm}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"status": "active"}))
        .send()
        .await
        .expect("resume");
    assert!(resumed.status().is_success(), "{}", resumed.status());

    // Orders spread over the three proxies.
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = Arc::new(Outcome::default());
    let loaders: Vec<_> = proxies
        .iter()
        .map(|p| load(p.url("/orders"), 20, stop.clone(), outcome.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxies[1].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxies[1].spawn().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_server();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A lease holder paused past its lease (2 s): the others take its deliveries over.
    proxies[0].signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxies[0].signal("CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.await.expect("load");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirmed = outcome.confirmed.lock().expect("lock").clone();
    assert!(
        confirmed.len() > 300,
        "the load ran ({} confirmed)",
        confirmed.len()
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !(confirmed.is_subset(&order_ids(&deliveries(receiver.received())))
            && confirmed.is_subset(&order_ids(&deliveries(ordered.received()))))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = deliveries(receiver.received());
    let got_ordered = deliveries(ordered.received());
    let lost = confirmed.difference(&order_ids(&got)).count();
    let lost_ordered = confirmed.difference(&order_ids(&got_ordered)).count();
    let ledger = proxies[0].webhook_id("ledger").await;
    let expected_order = queue_order(&url, &ledger).await;
    let arrivals = first_arrivals(&got_ordered);
    let in_order = expected_order
        .iter()
        .filter(|id| arrivals.contains(id))
        .cloned()
        .collect::<Vec<_>>()
        == arrivals;
    println!(
        "RESULT shared-store instances=3 app_created={} client_confirmed={} lost={lost} lost_ordered={lost_ordered} duplicates={} duplicates_ordered={} ordered_in_order={in_order} refused={} cut={}",
        app.orders_created.load(Ordering::SeqCst),
        confirmed.len(),
        duplicates(&got),
        duplicates(&got_ordered),
        outcome.refused.load(Ordering::SeqCst),
        outcome.cut.load(Ordering::SeqCst),
    );
    if !in_order {
        let expected: Vec<usize> = arrivals
            .iter()
            .filter_map(|a| expected_order.iter().position(|e| e == a))
            .collect();
        println!("the ordered receiver's first arrivals, by queue position: {expected:?}");
    }
    if lost + lost_ordered > 0 {
        let got_ids = order_ids(&got);
        let missing: Vec<_> = confirmed.difference(&got_ids).collect();
        println!("missing orders: {missing:?}");
        let got_ids = order_ids(&got_ordered);
        let missing: Vec<_> = confirmed.difference(&got_ids).copied().collect();
        println!("missing ordered orders: {missing:?}");
        let (pg, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        for id in missing {
            let rows = pg
                .query(
                    "SELECT d.webhook_id::text, d.record::text, d.lease_owner::text, d.seq FROM events e
                     LEFT JOIN deliveries d ON d.event_id = e.id
                     WHERE (e.record->'payload'->>'id')::bigint = $1",
                    &[&i64::try_from(id).unwrap_or(0)],
                )
                .await
                .expect("query");
            for r in rows {
                println!(
                    "order {id}: {:?} {:?} {:?} {:?}",
                    r.get::<_, Option<String>>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, Option<i64>>(3)
                );
            }
        }

        for (i, p) in proxies.iter().enumerate() {
            for line in p
                .log()
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            {
                println!("instance {i}: {line}");
            }
        }
    }
    for p in &mut proxies {
        p.stop().await;
    }
    assert_eq!(lost, 0, "every confirmed order reached the receiver");
    assert_eq!(
        lost_ordered, 0,
        "every confirmed order reached the ordered receiver"
    );
    assert!(
        in_order,
        "the ordered webhook received its deliveries in queue order"
    );
}

/// `hooktap migrate --from-sled DIR -c CONFIG`.
fn migrate_from_sled(config: &std::path::Path, sled: &std::path::Path) -> std::process::Output {
    std::process::Command::new(hooktap_bin())
        .args(["migrate", "--from-sled"])
        .arg(sled)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run hooktap migrate")
}

/// A single instance on sled holds undelivered orders (its receiver fails); `hooktap migrate
/// --from-sled` refuses the store while it runs, moves it once stopped (twice: nothing moves
/// twice), and an instance on PostgreSQL delivers the orders with the same webhook id and
/// delivery ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_sled_store_moves_into_postgres_and_its_pending_deliveries_go_out() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let setup = Setup::new(upstream).webhook(
        "crm",
        &receiver,
        "topics = [\"order.*\"]\nretry = \"1s,1s,1s,1s,1s,1s,1s,1s,1s,1s\"\nfailure_threshold = 0",
    );
    let mut sled = TestProxy::start(&setup).await;
    let crm = sled.webhook_id("crm").await;
    for n in 0..3 {
        post_order(&sled, &format!("buyer{n}@example.com")).await;
    }
    let pending: HashSet<String> = wait_for_value(
        Duration::from_secs(15),
        "three deliveries tried and pending",
        || async {
            let list = sled.deliveries("crm").await;
            let tried = list
                .iter()
                .filter(|d| d["state"] == "pending" && d["attempts"].as_u64() >= Some(1))
                .count();
            (list.len() == 3 && tried == 3).then(|| {
                list.iter()
                    .filter_map(|d| d["id"].as_str().map(str::to_owned))
                    .collect()
            })
        },
    )
    .await;

    // The PostgreSQL instance's config: the same webhooks, its own journal.
    let pg_dir = tempfile::tempdir().expect("tempdir");
    let pg_config = pg_dir.path().join("hooktap.toml");
    let text = std::fs::read_to_string(&sled.config).expect("read config");
    let pg_lines = format!("[store]\npath = \"journal\"\nbackend = \"postgres\"\nurl = \"{url}\"");
    std::fs::write(
        &pg_config,
        text.replace("[store]\npath = \"data\"", &pg_lines),
    )
    .expect("write config");
    let sled_store = sled.dir.path().join("data");

    let refused = migrate_from_sled(&pg_config, &sled_store);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a store in use is refused");
    assert!(stderr.contains("in use by a running hooktap"), "{stderr}");

    sled.stop().await;
    let moved = migrate_from_sled(&pg_config, &sled_store);
    let stdout = String::from_utf8_lossy(&moved.stdout);
    assert!(
        moved.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(
        stdout.contains(
            "moved 1 webhooks (0 were there already) and 3 pending deliveries of 3 events"
        ),
        "{stdout}"
    );
    // The old store is marked: running it again would send the moved deliveries twice.
    let mut old = std::process::Command::new(hooktap_bin())
        .arg("run")
        .arg("-c")
        .arg(&sled.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start hooktap run");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = old.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            old.kill().expect("kill");
            old.wait().expect("wait");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut old.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        status.is_some_and(|s| !s.success()),
        "run on a moved store is refused: {stderr}"
    );
    assert!(stderr.contains("was moved into PostgreSQL"), "{stderr}");

    let refused = migrate_from_sled(&pg_config, &sled_store);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a second move needs --force");
    assert!(stderr.contains("was moved already"), "{stderr}");
    let again = std::process::Command::new(hooktap_bin())
        .args(["migrate", "--force", "--from-sled"])
        .arg(&sled_store)
        .arg("-c")
        .arg(&pg_config)
        .output()
        .expect("run hooktap migrate");
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(
            "moved 0 webhooks (1 were there already) and 0 pending deliveries of 0 events"
        ),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let rows = cluster.psql(
        url.rsplit('/').next().expect("database"),
        "SELECT count(*) FROM deliveries WHERE pending",
    );
    assert!(
        rows.lines().any(|l| l.trim() == "3"),
        "nothing moved twice: {rows}"
    );

    // The receiver is back; an instance on PostgreSQL sends what the sled instance held.
    let tried = deliveries(receiver.received()).len();
    receiver.set_status(200);
    let pg =
        TestProxy::start_edited(&setup, |c| c.replace("[store]\npath = \"data\"", &pg_lines)).await;
    wait_until(
        Duration::from_secs(10),
        "the file's webhooks are applied",
        || async {
            pg.admin_get("/webhooks")
                .await
                .as_array()
                .is_some_and(|l| !l.is_empty())
        },
    )
    .await;
    assert_eq!(pg.webhook_id("crm").await, crm, "the webhook keeps its id");
    wait_until(
        Duration::from_secs(20),
        "the three pending deliveries delivered from PostgreSQL",
        || async {
            let list = pg.deliveries("crm").await;
            list.len() == 3 && list.iter().all(|d| d["state"] == "delivered")
        },
    )
    .await;
    let after: Vec<Received> = deliveries(receiver.received())
        .into_iter()
        .skip(tried)
        .collect();
    let sent: HashSet<String> = after
        .iter()
        .filter(|r| r.header("x-hooktap-webhook-id") == crm)
        .map(|r| r.header("x-hooktap-webhook-delivery-id").to_owned())
        .collect();
    assert_eq!(
        sent, pending,
        "the same deliveries, under the same webhook id"
    );
}

/// On PostgreSQL the store's own runtime (shipping the journal, recording outcomes, every
/// pooled connection) runs as low as the delivery loop: none of it is on the request path.
#[tokio::test]
async fn the_shared_stores_runtime_runs_below_the_process_as_delivery_does() {
    let cluster = Cluster::start();
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let setup = Setup::new(upstream).webhook("crm", &receiver, "");
    let url = cluster.database();
    let lines = format!("backend = \"postgres\"\nurl = \"{url}\"");
    let proxy = TestProxy::start_edited(&setup, |c| {
        c.replace(
            "[store]\npath = \"data\"",
            &format!("[store]\npath = \"data\"\n{lines}"),
        )
        .replace("[delivery]\n", "[delivery]\nnice = 6\n")
    })
    .await;
    post_order(&proxy, "pg@example.com").await;
    receiver.wait_for(1, Duration::from_secs(15)).await;
    let pid = proxy.pid().expect("running");
    let base = process_nice(pid);
    let threads = threads_nice(pid);
    let low = (base + 6).min(19);
    for name in ["hooktap-pg", "BG delivery"] {
        let at = nice_of(&threads, name);
        assert!(
            !at.is_empty() && at.iter().all(|nice| *nice == low),
            "{name} at nice {low}: {threads:?}"
        );
    }
    assert!(
        nice_of(&threads, "hooktap proxy")
            .iter()
            .all(|nice| *nice == base),
        "the proxy keeps the process's priority: {threads:?}"
    );
}
