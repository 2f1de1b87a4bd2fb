//! The PostgreSQL backend against a throwaway cluster: the store contract, and what sharing
//! adds (leases, one request at a time across instances, counters over all instances, the
//! journal while PostgreSQL is away).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::cluster::Cluster;
use super::*;
use crate::event::{DeliveryState, Topic};
use crate::store::{Backend, FlushMode};
use crate::webhook::{Origin, WebhookSpec};

/// What keeps a test's store alive: the cluster and the journal's directory.
pub struct Guard {
    _cluster: Arc<Cluster>,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path, url: &str, lease: Duration) -> (StoreConfig, PgConfig) {
    let pg = PgConfig {
        url: url.to_owned(),
        lease,
        pool_size: 4,
    };
    let store = StoreConfig {
        path: dir.join("journal"),
        flush: FlushMode::Interval(Duration::from_millis(100)),
        retention: Duration::from_secs(3600),
        min_free_space: 0,
        backend: Backend::Postgres(pg.clone()),
    };
    (store, pg)
}

/// A ready store (journal open, schema applied) on `url`, journal under a new directory.
async fn store_on(url: &str, lease: Duration) -> (tempfile::TempDir, PgStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pg) = config(dir.path(), url, lease);
    let s = PgStore::open_now(&store, &pg)
        .await
        .expect("open the store");
    s.mark_ready();
    (dir, s)
}

crate::store_contract_tests!(|| async {
    let cluster = Arc::new(Cluster::start());
    let (dir, store) = store_on(&cluster.database(), Duration::from_secs(60)).await;
    let guard = Guard {
        _cluster: cluster,
        _dir: dir,
    };
    (guard, Arc::new(store) as Arc<dyn Store>)
});

fn event() -> Event {
    Event::new(
        &Topic::parse("order.created").expect("topic"),
        "r",
        serde_json::json!({"n": 1}),
    )
}

async fn webhook(store: &PgStore, name: &str, ordered: bool) -> Webhook {
    let mut spec = WebhookSpec::example(name);
    spec.ordered = ordered;
    let w = Webhook::new(spec, Origin::Api);
    store.put_webhook(&w).await.expect("put");
    w
}

/// Appends `n` events with a delivery each to `w` and moves them to PostgreSQL.
async fn queue(store: &PgStore, w: &Webhook, n: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = event();
        let d = Delivery::new(&e, w.id, 0);
        store.append(&e, std::slice::from_ref(&d)).expect("append");
        out.push(d);
    }
    store.flush().await.expect("ship");
    out
}

fn none() -> HashSet<Uuid> {
    HashSet::new()
}

#[tokio::test]
async fn a_lease_keeps_a_delivery_to_one_instance_until_it_runs_out() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(1)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(1)).await;
    let w = webhook(&a, "shared", false).await;
    let queued = queue(&a, &w, 3).await;

    let got_a = a.queued(w.id, u64::MAX, 2, &none()).await.expect("claim");
    assert_eq!(
        got_a,
        queued[..2],
        "the first instance leases the two oldest"
    );
    let got_b = b.queued(w.id, u64::MAX, 10, &none()).await.expect("claim");
    assert_eq!(
        got_b,
        queued[2..],
        "the second gets only what is not leased"
    );
    assert!(
        b.queued(w.id, u64::MAX, 10, &none())
            .await
            .expect("claim")
            .len()
            <= 1
    );

    // `a` dies with its two leased: nothing is for `b` until the leases run out.
    let b_skips: HashSet<Uuid> = queued[2..].iter().map(|d| d.id).collect();
    assert_eq!(b.next_queued(w.id, &b_skips).await.expect("next"), None);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b.next_queued(w.id, &b_skips).await.expect("next"),
        Some(queued[0].queue_ms)
    );
    let taken_over = b.queued(w.id, u64::MAX, 10, &b_skips).await.expect("claim");
    assert_eq!(taken_over, queued[..2], "same deliveries, same ids");
}

#[tokio::test]
async fn claim_head_gives_one_instance_at_a_time_the_head_of_the_queue() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&a, "ordered", true).await;
    let queued = queue(&a, &w, 2).await;

    let head = a.claim_head(w.id, u64::MAX, 1).await.expect("claim");
    assert_eq!(head, queued[..1]);
    assert!(
        b.claim_head(w.id, u64::MAX, 1)
            .await
            .expect("claim")
            .is_empty(),
        "nothing for another instance while the head is out, not even the second"
    );
    assert_eq!(
        a.claim_head(w.id, u64::MAX, 1).await.expect("claim"),
        head,
        "the holder keeps it"
    );

    let recorded = a
        .record_attempts(w.id, &[recorded(&head[0], 1, true)], None)
        .await
        .expect("record");
    let Recording::Shared(counters) = recorded else {
        panic!("a shared store counts: {recorded:?}");
    };
    assert_eq!(counters.delivered, 1);
    assert_eq!(
        b.claim_head(w.id, u64::MAX, 1).await.expect("claim"),
        queued[1..],
        "once recorded, the next one may go from any instance"
    );
}

/// Per-key ordering over instances: a key whose head one instance holds gives another
/// instance nothing of that key (not its second delivery), while other keys go there.
#[tokio::test]
async fn a_key_in_flight_on_one_instance_is_held_back_on_all() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let mut spec = WebhookSpec::example("keyed");
    spec.ordering_key = Some("$.k".to_owned());
    let w = Webhook::new(spec, Origin::Api);
    a.put_webhook(&w).await.expect("put");
    let mut queued = Vec::new();
    for key in ["A", "A", "B"] {
        let e = event();
        let mut d = Delivery::new(&e, w.id, 0);
        d.ordering_key = Some(key.to_owned());
        a.append(&e, std::slice::from_ref(&d)).expect("append");
        queued.push(d);
    }
    a.flush().await.expect("ship");

    let got_a = a
        .claim_key_heads(w.id, u64::MAX, 1, &none())
        .await
        .expect("claim");
    assert_eq!(got_a.ready, queued[..1], "A's head, leased to `a`");
    let got_b = b
        .claim_key_heads(w.id, u64::MAX, 10, &none())
        .await
        .expect("claim");
    assert_eq!(
        got_b.ready,
        queued[2..],
        "B's head only: A's second waits for its first, held by `a`"
    );
    a.record_attempts(w.id, &[recorded(&queued[0], 1, true)], None)
        .await
        .expect("record");
    let skip: HashSet<Uuid> = [queued[2].id].into();
    let got_b = b
        .claim_key_heads(w.id, u64::MAX, 10, &skip)
        .await
        .expect("claim");
    assert_eq!(
        got_b.ready,
        queued[1..2],
        "once A's first is done, its second may go anywhere"
    );
}

#[tokio::test]
async fn counters_add_up_over_instances_and_a_put_does_not_reset_them() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&a, "counted", false).await;
    let queued = queue(&a, &w, 2).await;
    for (store, d) in [(&a, &queued[0]), (&b, &queued[1])] {
        assert!(store.attempts(d.id).await.expect("read").is_empty());
        let change = recorded(d, 1, false);
        // Each instance's own copy knows nothing of the other's counts.
        store
            .record_attempts(w.id, &[change], Some(&w))
            .await
            .expect("record");
    }
    let stored = b.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(stored.counters.retries, 2, "both instances' retries count");
    b.put_webhook(&w).await.expect("put a stale copy");
    let stored = a.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(stored.counters.retries, 2, "a put keeps the counters");
    a.reset_counters(&w).await.expect("reset");
    let stored = a.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(stored.counters.retries, 0);
}

#[tokio::test]
async fn appends_go_on_while_postgres_is_down_and_move_in_when_it_is_back() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_dir, store) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&store, "a", false).await;
    cluster.kill();
    let mut appended = Vec::new();
    for _ in 0..50 {
        let e = event();
        let d = Delivery::new(&e, w.id, 0);
        store
            .append(&e, std::slice::from_ref(&d))
            .expect("the request path does not need PostgreSQL");
        appended.push(d);
    }
    assert!(store.flush().await.is_err(), "cannot move them now");
    let journal = store.journal().expect("journal");
    assert_eq!(journal.backlog, 50);
    assert!(!journal.connected);

    cluster.start_server();
    let mut moved = false;
    for _ in 0..100 {
        if store.journal().expect("journal").backlog == 0 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the shipper moves the backlog by itself");
    let queued = store
        .queued(w.id, u64::MAX, 100, &none())
        .await
        .expect("claim");
    assert_eq!(queued, appended, "every event, in order, none twice");
}

#[tokio::test]
async fn instances_starting_together_give_a_file_webhook_one_id() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, pg) = config(dir.path(), &url, Duration::from_secs(30));
        stores.push((dir, Arc::new(PgStore::open(&store, &pg).expect("open"))));
    }
    let spec = WebhookSpec::example("from-the-file");
    let plan = Arc::new(crate::store::Planner(Box::new(
        move |stored: &[Webhook]| {
            crate::delivery::sync::plan(stored, std::slice::from_ref(&spec), Duration::ZERO)
        },
    )));
    let runs = stores.iter().map(|(_, s)| {
        let s = Arc::clone(s);
        let plan = Arc::clone(&plan);
        tokio::spawn(async move { s.apply_webhooks(&plan).await.expect("apply").put })
    });
    let mut ids = HashSet::new();
    for run in runs {
        for w in run.await.expect("join") {
            ids.insert(w.id);
        }
    }
    assert_eq!(ids.len(), 1, "one id on every instance: {ids:?}");
    assert_eq!(stores[0].1.webhooks().await.expect("list").len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error() {
    let cluster = Cluster::start();
    let url = cluster.database().replace(cluster::PASSWORD, "wrong");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, pg) = config(dir.path(), &url, Duration::from_secs(30));
    let error = match PgStore::open_now(&store, &pg).await {
        Ok(_) => panic!("opened with a wrong password"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("password authentication failed"), "{error}");
}

/// A recorded attempt of `d` (attempt `number`), with `success`.
fn recorded(d: &Delivery, number: u32, success: bool) -> Recorded {
    let mut after = d.clone();
    after.attempts = number;
    if success {
        after.state = DeliveryState::Delivered;
    } else {
        after.due_ms += 60_000;
        after.queue_ms = after.due_ms;
    }
    Recorded {
        before: d.clone(),
        after: after.clone(),
        attempt: Attempt {
            response_body: "a NUL \u{0} in the answer".into(),
            ..crate::store::contract::attempt(d, number, success)
        },
    }
}

#[tokio::test]
async fn a_nul_character_does_not_jam_the_journal_or_the_log() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let w = webhook(&store, "a", false).await;
    let mut e = event();
    e.payload = serde_json::json!({"note": "a\u{0}b", "k\u{0}": 1});
    let d = Delivery::new(&e, w.id, 0);
    store.append(&e, std::slice::from_ref(&d)).expect("append");
    store.flush().await.expect("moved in despite the NUL");
    let stored = store.event(e.id).await.expect("read").expect("there");
    assert_eq!(
        stored.payload,
        serde_json::json!({"note": "a\u{fffd}b", "k\u{fffd}": 1})
    );
    let recording = store
        .record_attempts(w.id, &[recorded(&d, 1, true)], None)
        .await
        .expect("a NUL in the receiver's answer is recorded");
    assert!(matches!(recording, Recording::Shared(_)));
    assert_eq!(store.journal().expect("journal").backlog, 0);
}

#[tokio::test]
async fn an_instance_whose_lease_was_taken_over_records_nothing() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(1)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(1)).await;
    let w = webhook(&a, "fenced", false).await;
    let queued = queue(&a, &w, 1).await;
    assert_eq!(
        a.queued(w.id, u64::MAX, 1, &none()).await.expect("claim"),
        queued
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b.queued(w.id, u64::MAX, 1, &none()).await.expect("claim"),
        queued
    );
    b.record_attempts(w.id, &[recorded(&queued[0], 1, true)], None)
        .await
        .expect("record");
    // `a` wakes up and records its (failed) attempt late.
    a.record_attempts(w.id, &[recorded(&queued[0], 1, false)], None)
        .await
        .expect("record");
    let d = a
        .delivery(queued[0].id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(
        d.state,
        DeliveryState::Delivered,
        "the late record changed nothing"
    );
    let attempts = a.attempts(d.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0].success,
        "the attempt log keeps the recorded success"
    );
}

#[tokio::test]
async fn deliveries_taken_but_not_sent_are_given_back() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(60)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(60)).await;
    let w = webhook(&a, "given-back", false).await;
    let queued = queue(&a, &w, 2).await;
    assert_eq!(
        a.queued(w.id, u64::MAX, 2, &none()).await.expect("claim"),
        queued
    );
    assert!(
        b.queued(w.id, u64::MAX, 2, &none())
            .await
            .expect("claim")
            .is_empty()
    );
    a.unclaim(&[queued[1].id]).await.expect("unclaim");
    assert_eq!(
        b.queued(w.id, u64::MAX, 2, &none()).await.expect("claim"),
        queued[1..],
        "the other instance need not wait for the lease to run out"
    );
    a.release().await.expect("release");
    assert_eq!(
        b.queued(w.id, u64::MAX, 2, &none()).await.expect("claim"),
        queued,
        "a stopping instance gives up the rest"
    );
}

/// Two instances each derive an event with the same dedupe key: each journal sees the key
/// for the first time, so both claim it locally, and PostgreSQL keeps the first event that
/// moves in. The same event moved in again (a crash before the journal forgot it) keeps its
/// claim.
#[tokio::test]
async fn a_dedupe_key_claimed_by_another_instance_drops_the_repeat_when_it_moves_in() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&a, "dedupe", false).await;
    let key = crate::event::DedupeKey::new("order-created", "idem-1");
    let window = Duration::from_secs(600);
    let now = crate::event::unix_ms(time::OffsetDateTime::now_utc());
    let mut ids = Vec::new();
    for store in [&a, &b] {
        let e = event();
        assert!(
            store.claim_dedupe(&key, e.id, now, window).expect("claim"),
            "each journal sees the key first"
        );
        let d = Delivery::new(&e, w.id, 0);
        store.append(&e, std::slice::from_ref(&d)).expect("append");
        store.flush().await.expect("move in");
        ids.push(e.id);
    }
    assert!(
        a.event(ids[0]).await.expect("read").is_some(),
        "the first stays"
    );
    assert_eq!(
        b.event(ids[1]).await.expect("read"),
        None,
        "the repeat is dropped"
    );
    assert_eq!(
        b.journal().map(|j| j.backlog),
        Some(0),
        "and gone from the journal"
    );
    assert_eq!(
        a.queue_stats(w.id).await.expect("stats").pending,
        1,
        "one delivery"
    );
    // An unrelated key on the second instance moves in as usual.
    let e = event();
    let other = crate::event::DedupeKey::new("order-created", "idem-2");
    assert!(b.claim_dedupe(&other, e.id, now, window).expect("claim"));
    b.append(&e, &[]).expect("append");
    b.flush().await.expect("move in");
    assert!(b.event(e.id).await.expect("read").is_some());
}

/// `V4__console` gives the attempts an older hooktap recorded what statistics read, from their
/// records: after the upgrade they count like new ones.
#[tokio::test]
async fn the_console_migration_fills_in_the_statistics_of_older_attempts() {
    let cluster = Arc::new(Cluster::start());
    let url = cluster.database();
    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    super::schema::migrate_to(&mut client, 3)
        .await
        .expect("V1 to V3");
    let minute = 60_000;
    let since_ms = (crate::event::unix_ms(OffsetDateTime::now_utc()) / minute - 5) * minute;
    let e = event();
    let d = Delivery::new(&e, Uuid::now_v7(), 0);
    let mut a = crate::store::contract::attempt(&d, 1, false);
    a.created_at = OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(since_ms + 2 * minute + 2_000) * 1_000_000,
    )
    .expect("a time");
    a.duration_ms = 33;
    a.summary = "HTTP 503".to_owned();
    let created_ms = i64::try_from(since_ms + 2 * minute).expect("ms");
    client
        .execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record)
             VALUES ($1, $2, $3, $4, false, $4, '{}'::jsonb)",
            &[&d.id, &e.id, &d.webhook_id, &created_ms],
        )
        .await
        .expect("an old delivery");
    client
        .execute(
            "INSERT INTO attempts (delivery_id, number, webhook_id, record) VALUES ($1, 1, $2, $3)",
            &[
                &d.id,
                &d.webhook_id,
                &tokio_postgres::types::Json(serde_json::to_value(&a).expect("json")),
            ],
        )
        .await
        .expect("an old attempt");
    drop(client);
    connection.abort();

    // Opening the store applies V4.
    let (_dir, store) = store_on(&url, Duration::from_secs(60)).await;
    let window = crate::store::StatsWindow {
        since_ms,
        bucket_ms: minute,
        buckets: 5,
    };
    let stats = store
        .attempt_stats(d.webhook_id, &window)
        .await
        .expect("stats");
    assert_eq!(
        stats.buckets[2],
        crate::store::AttemptBucket {
            succeeded: 0,
            failed: 1,
            p50_ms: Some(33),
            p99_ms: Some(33),
            lag_p50_ms: Some(2_000),
            lag_p99_ms: Some(2_000),
        }
    );
    assert_eq!(
        store
            .last_failure(d.webhook_id, since_ms)
            .await
            .expect("last failure")
            .map(|a| a.summary),
        Some("HTTP 503".to_owned())
    );
}
