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
        ca_file: None,
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

/// The pool's connections are driven on the store's own runtime, whoever asks for one: one
/// asked for from another runtime (as the delivery loop's, at a lower CPU priority, asks)
/// answers another caller while that runtime does not run at all. (It hung when `client`
/// took connections on the caller's runtime.)
#[test]
fn a_pooled_connection_does_not_depend_on_the_runtime_that_opened_it() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (store_config, mut pg) = config(dir.path(), &cluster.database(), Duration::from_secs(60));
    pg.pool_size = 1;
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .expect("runtime")
    };
    // The store's own tasks leave the pool alone until the journal is ready: its one
    // connection is opened here, then this runtime stops running (a task of it would not be
    // polled again).
    let store = PgStore::open(&store_config, &pg).expect("set the store up");
    let opener = runtime("opener");
    opener
        .block_on(store.client())
        .map(drop)
        .expect("a connection");
    let other = runtime("other");
    let migrated = other
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), store.migrate()).await });
    assert!(
        matches!(migrated, Ok(Ok(_))),
        "the store answers through the connection opened from the idle runtime: {migrated:?}"
    );
    drop(store);
    drop(opener);
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

/// hooktap's session settings (no JIT, a statement timeout, generic plans) hold on every pooled connection,
/// and the URL's own `options` are kept and win over them.
#[tokio::test]
async fn sessions_run_without_jit_and_keep_the_urls_options() {
    let cluster = Cluster::start();
    let show = |store: &PgStore, setting: &'static str| {
        let pool = store.pool.clone();
        async move {
            let c = pool.get().await.expect("a connection");
            let row = c
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .expect("SHOW");
            row.get::<_, String>(0)
        }
    };
    let (_dir, plain) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    assert_eq!(show(&plain, "jit").await, "off");
    assert_eq!(show(&plain, "statement_timeout").await, "1min");
    assert_eq!(show(&plain, "plan_cache_mode").await, "force_generic_plan");
    let own = format!(
        "{}?options=-c%20work_mem%3D5MB%20-c%20statement_timeout%3D2min",
        cluster.database()
    );
    let (_dir, tuned) = store_on(&own, Duration::from_secs(30)).await;
    assert_eq!(show(&tuned, "jit").await, "off");
    assert_eq!(show(&tuned, "work_mem").await, "5MB");
    assert_eq!(show(&tuned, "statement_timeout").await, "2min");
}

/// Recording an attempt updates three indexes of `attempts`: the key, the console's index by
/// webhook and time (which also serves deleting a webhook's attempts), and failures alone.
#[tokio::test]
async fn attempts_carry_three_indexes() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let c = store.pool.get().await.expect("a connection");
    let rows = c
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'attempts' ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_indexes");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        ["attempts_by_time", "attempts_failures", "attempts_pkey"]
    );
}

/// A recorded attempt of `d` (attempt `number`), with `success`, whose response body holds a
/// NUL (which PostgreSQL's text refuses).
fn recorded(d: &Delivery, number: u32, success: bool) -> Recorded {
    let mut r = crate::store::contract::recorded(d, number, success);
    r.attempt.response_body = "a NUL \u{0} in the answer".into();
    r
}

#[tokio::test]
async fn an_event_stored_again_after_it_moved_in_gets_no_second_delivery() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let (a, b) = (
        webhook(&store, "a", false).await,
        webhook(&store, "b", false).await,
    );
    let e = event();
    let first = Delivery::new(&e, a.id, 0);
    store
        .append(&e, std::slice::from_ref(&first))
        .expect("append");
    store.flush().await.expect("moved in");
    assert_eq!(
        store.journal().expect("journal").backlog,
        0,
        "and forgotten"
    );
    // Held in `pending/` as well (the store closed before its barrier), it is stored again:
    // the journal no longer knows it, so its deliveries come with new ids.
    let again = [Delivery::new(&e, a.id, 0), Delivery::new(&e, b.id, 0)];
    Store::append_again(&store, &e, &again).expect("append again");
    store.flush().await.expect("moved in again");
    let mut got: Vec<(Uuid, Uuid)> = store
        .deliveries_of_event(e.id)
        .await
        .expect("list")
        .iter()
        .map(|d| (d.webhook_id, d.id))
        .collect();
    got.sort();
    let mut want = vec![(a.id, first.id), (b.id, again[1].id)];
    want.sort();
    assert_eq!(got, want, "a keeps its delivery, b gets one");
    assert_eq!(store.event(e.id).await.expect("read"), Some(e));
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

/// Opens a store on `url` trusting `ca_file`; the error if it cannot.
async fn open_tls(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<(tempfile::TempDir, PgStore), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut pg) = config(dir.path(), url, Duration::from_secs(30));
    pg.ca_file = ca_file.map(std::path::Path::to_path_buf);
    match PgStore::open_now(&store, &pg).await {
        Ok(s) => Ok((dir, s)),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the store's connections are encrypted, as the server sees them.
async fn encrypted(store: &PgStore) -> bool {
    let client = store.client().await.expect("a connection");
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn sslmode_is_honoured_as_libpq_means_it() {
    // The server's certificate names `localhost` only.
    let cluster = Cluster::start_tls(&["localhost"]);
    let by_ip = cluster.database();
    let by_name = by_ip.replace("127.0.0.1", "localhost");
    let ca = cluster.ca_file();
    let with = |url: &str, mode: &str| format!("{url}?sslmode={mode}");

    // verify-full: the right CA and the name in the certificate.
    let (_d, store) = open_tls(&with(&by_name, "verify-full"), Some(&ca))
        .await
        .expect("verify-full with the server's CA");
    assert!(encrypted(&store).await, "verify-full connects over TLS");

    // verify-full refuses an address the certificate was not issued for; verify-ca checks
    // the CA only.
    let e = open_tls(&with(&by_ip, "verify-full"), Some(&ca))
        .await
        .err()
        .expect("127.0.0.1 is not in the certificate");
    assert!(
        e.contains("certificate not valid for name \"127.0.0.1\"") && e.contains("verify-full"),
        "{e}"
    );
    let (_d, store) = open_tls(&with(&by_ip, "verify-ca"), Some(&ca))
        .await
        .expect("verify-ca ignores the name");
    assert!(encrypted(&store).await);

    // Another CA: refused, naming the problem and the CA file.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = other.path().join("other-ca.pem");
    std::fs::write(&other_ca, cluster::Certificates::new(&["localhost"]).ca).expect("write");
    let e = open_tls(&with(&by_name, "verify-full"), Some(&other_ca))
        .await
        .err()
        .expect("a certificate from another CA");
    assert!(
        e.contains("invalid peer certificate")
            && e.contains("UnknownIssuer")
            && e.contains("not signed by a trusted CA")
            && e.contains("other-ca.pem"),
        "{e}"
    );
    // `require` with a CA file checks the CA, as libpq does with a root certificate.
    let e = open_tls(&with(&by_ip, "require"), Some(&other_ca))
        .await
        .err()
        .expect("require with a CA file checks it");
    assert!(e.contains("UnknownIssuer"), "{e}");

    // require without a CA, and the default (prefer): encrypted, unchecked.
    let (_d, store) = open_tls(&with(&by_ip, "require"), None)
        .await
        .expect("require");
    assert!(encrypted(&store).await);
    let (_d, store) = open_tls(&by_ip, None).await.expect("prefer");
    assert!(
        encrypted(&store).await,
        "prefer uses TLS when the server has it"
    );
    let (_d, store) = open_tls(&with(&by_ip, "disable"), None)
        .await
        .expect("disable");
    assert!(!encrypted(&store).await, "disable never uses TLS");
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_and_prefer_goes_plain() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let e = open_tls(&format!("{url}?sslmode=require"), None)
        .await
        .err()
        .expect("the server has no TLS");
    assert!(e.contains("TLS") && e.contains("sslmode=require"), "{e}");
    let (_d, store) = open_tls(&url, None).await.expect("prefer");
    assert!(!encrypted(&store).await);
}

#[tokio::test]
async fn a_requeue_waits_for_a_live_lease_builds_on_the_stored_delivery_and_fences_out_a_late_outcome()
 {
    let cluster = Cluster::start();
    let url = cluster.database();
    // `a` sends (short leases); `b` is the instance whose admin API redelivers.
    let (_a_dir, a) = store_on(&url, Duration::from_millis(500)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&a, "redelivered", false).await;
    let queued = queue(&a, &w, 2).await;
    let claimed = a.queued(w.id, u64::MAX, 2, &none()).await.expect("claim");
    assert_eq!(claimed, queued, "a leases both");
    let now_ms = crate::event::unix_ms(OffsetDateTime::now_utc());

    // a's lease runs: a is sending it, so b does not requeue it.
    assert_eq!(
        b.requeue(&queued[0], now_ms).await.expect("requeue"),
        crate::store::Requeued::InFlight
    );

    // a records a failed attempt; b requeues from the copy it read before: the requeue is
    // built on the attempt, not on b's copy.
    a.record_attempts(w.id, &[recorded(&claimed[0], 1, false)], None)
        .await
        .expect("record");
    let again = b
        .requeue(&queued[0], now_ms)
        .await
        .expect("requeue")
        .done()
        .expect("requeued once a recorded its attempt");
    assert_eq!(
        (again.attempts, again.schedule_start, again.due_ms),
        (1, 1, now_ms),
        "the recorded attempt is kept and the requeue is due now"
    );
    assert_eq!(b.attempts(queued[0].id).await.expect("log").len(), 1);

    // a's lease on the second runs out while a still sends it (paused past its lease); b
    // requeues it; a's late success must not overwrite the requeue.
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.requeue(&queued[1], now_ms)
        .await
        .expect("requeue")
        .done()
        .expect("requeued: the lease ran out");
    let before = webhook_counters_of(&b, w.id).await;
    a.record_attempts(w.id, &[recorded(&claimed[1], 1, true)], None)
        .await
        .expect("record");
    let stored = b
        .delivery(queued[1].id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(
        (stored.state, stored.due_ms),
        (DeliveryState::Pending, now_ms),
        "the requeue stands"
    );
    assert!(
        b.attempts(queued[1].id).await.expect("log").is_empty(),
        "the fenced-out outcome is not logged"
    );
    let taken = b.queued(w.id, u64::MAX, 10, &none()).await.expect("claim");
    assert!(
        taken.iter().any(|d| d.id == queued[1].id),
        "any instance can send the requeued delivery at once: {taken:?}"
    );
    // Once b holds it, a's outcome stays fenced out too, a failure as well as a success.
    a.record_attempts(w.id, &[recorded(&claimed[1], 1, true)], None)
        .await
        .expect("record");
    a.record_attempts(w.id, &[recorded(&claimed[1], 2, false)], None)
        .await
        .expect("record");
    assert!(b.attempts(queued[1].id).await.expect("log").is_empty());
    assert_eq!(
        webhook_counters_of(&b, w.id).await,
        before,
        "fenced-out outcomes count nothing: the instance holding the lease counts its own"
    );
}

/// A webhook's counters as stored.
async fn webhook_counters_of(store: &PgStore, id: Uuid) -> crate::webhook::Counters {
    store
        .webhook(id)
        .await
        .expect("read")
        .expect("there")
        .counters
}

#[tokio::test]
async fn a_raw_long_key_journalled_before_keys_were_bounded_moves_in_as_its_digest() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let mut spec = WebhookSpec::example("keyed");
    spec.ordering_key = Some("$.k".to_owned());
    let w = Webhook::new(spec, Origin::Api);
    store.put_webhook(&w).await.expect("put");
    // 4 KB that does not compress below a btree row's limit.
    let text: String = std::iter::repeat_with(|| *Uuid::new_v4().as_bytes())
        .flatten()
        .take(4096)
        .map(|b| char::from(b'!' + b % 94))
        .collect();
    // As a hooktap from before the digest journalled it: the raw text as the key.
    let old = event();
    let mut raw = Delivery::new(&old, w.id, 0);
    raw.ordering_key = Some(text.clone());
    store
        .append(&old, std::slice::from_ref(&raw))
        .expect("append");
    // As this one journals the same key.
    let new = event();
    let mut bounded = Delivery::new(&new, w.id, 0);
    let selector = crate::webhook::check_ordering_key("$.k").expect("selector");
    bounded.ordering_key =
        crate::webhook::ordering_key_of(&selector, &serde_json::json!({ "k": text }));
    store
        .append(&new, std::slice::from_ref(&bounded))
        .expect("append");

    tokio::time::timeout(Duration::from_secs(30), store.flush())
        .await
        .expect("the move ends")
        .expect("the journal moves in, the raw key with it");
    assert_eq!(store.journal().map(|j| j.backlog), Some(0));
    let now_ms = crate::event::unix_ms(OffsetDateTime::now_utc()) + 1_000;
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &none())
        .await
        .expect("heads");
    let ready: Vec<Uuid> = heads.ready.iter().map(|d| d.id).collect();
    assert_eq!(
        ready,
        [raw.id],
        "one key: the old delivery first, the new one waits"
    );
    assert_eq!(
        heads.ready[0].ordering_key, bounded.ordering_key,
        "stored as the digest that intake makes now"
    );
}

#[tokio::test]
async fn an_import_refuses_a_name_taken_under_another_id_and_events_without_deliveries() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let sled_dir = tempfile::tempdir().expect("tempdir");
    let sled_id = {
        let sled = crate::store::sled::open_for_tests(sled_dir.path());
        let w = Webhook::new(WebhookSpec::example("crm"), Origin::Config);
        sled.put_webhook(&w).expect("put");
        sled.flush().expect("flush");
        w.id
    };
    let (_dir, store) = store_on(&url, Duration::from_secs(30)).await;
    // An instance started on PostgreSQL first: its own `crm`.
    let other = webhook(&store, "crm", false).await;
    let (_, pg) = config(_dir.path(), &url, Duration::from_secs(30));

    let path = sled_dir.path().join("data");
    let e = SledStore::open_stopped(sled_dir.path())
        .err()
        .expect("no store there")
        .to_string();
    assert!(e.contains("no sled store at"), "{e}");
    let sled = open_released(&path).await;
    let e = import_sled(&pg, &sled, &path, false)
        .await
        .expect_err("the name is taken")
        .to_string();
    assert!(
        e.contains("`crm`")
            && e.contains(&other.id.to_string())
            && e.contains(&sled_id.to_string()),
        "{e}"
    );
    store.delete_webhook(other.id).await.expect("delete");

    // An event waiting in pending/ has no deliveries yet: the import says what to do.
    let held = path.join("pending");
    std::fs::create_dir_all(&held).expect("mkdir");
    std::fs::write(held.join(format!("{}.json", Uuid::now_v7())), "{}").expect("write");
    let e = import_sled(&pg, &sled, &path, false)
        .await
        .expect_err("held events")
        .to_string();
    assert!(
        e.contains("1 events wait in") && e.contains("start hooktap once"),
        "{e}"
    );
    std::fs::remove_dir_all(&held).expect("rm");

    let done = import_sled(&pg, &sled, &path, false).await.expect("import");
    assert_eq!((done.webhooks, done.deliveries), (1, 0));
    assert_eq!(
        store
            .webhook(sled_id)
            .await
            .expect("read")
            .map(|w| w.spec.name),
        Some("crm".to_owned())
    );
}

/// An import queues every webhook's deliveries in their own queue order (not by the earliest
/// delivery of their event), counts the rows it wrote, and marks the sled store: moving it
/// again is refused without `force`, and with it brings back only what is gone.
#[tokio::test]
async fn an_import_keeps_each_queue_in_order_counts_what_it_wrote_and_marks_the_store() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let database = url.rsplit('/').next().expect("database").to_owned();
    let sled_dir = tempfile::tempdir().expect("tempdir");
    let (b, first_b, second_b) = {
        let sled = crate::store::sled::open_for_tests(sled_dir.path());
        let a = Webhook::new(WebhookSpec::example("a"), Origin::Config);
        let mut spec = WebhookSpec::example("b");
        spec.ordered = true;
        let b = Webhook::new(spec, Origin::Config);
        sled.put_webhook(&a).expect("put");
        sled.put_webhook(&b).expect("put");
        // Event 1 reaches `a` first of all but `b` after event 2.
        let at = |e: &Event, w: &Webhook, queue_ms: u64| {
            let mut d = Delivery::new(e, w.id, 0);
            (d.due_ms, d.queue_ms) = (queue_ms, queue_ms);
            d
        };
        let (e1, e2) = (event(), event());
        let (d1a, d1b) = (at(&e1, &a, 10), at(&e1, &b, 30));
        let d2b = at(&e2, &b, 20);
        sled.append(&e1, &[d1a, d1b.clone()]).expect("append");
        sled.append(&e2, std::slice::from_ref(&d2b))
            .expect("append");
        sled.flush().expect("flush");
        (b.id, d2b.id, d1b.id)
    };
    let path = sled_dir.path().join("data");
    let sled = open_released(&path).await;
    let (_dir, pg) = config(sled_dir.path(), &url, Duration::from_secs(30));

    let done = import_sled(&pg, &sled, &path, false).await.expect("import");
    assert_eq!(
        done,
        Imported {
            webhooks: 2,
            webhooks_there: 0,
            deliveries: 3,
            events: 2
        }
    );
    let queue_of_b = cluster.psql(
        &database,
        &format!("SELECT id FROM deliveries WHERE webhook_id = '{b}' ORDER BY seq"),
    );
    let order: Vec<&str> = queue_of_b
        .lines()
        .map(str::trim)
        .filter(|l| Uuid::parse_str(l).is_ok())
        .collect();
    assert_eq!(
        order,
        [first_b.to_string(), second_b.to_string()],
        "`b` queues in its own order"
    );
    let note = SledStore::moved(&path)
        .expect("read the marker")
        .expect("the store is marked");
    assert!(note.contains(&database), "{note}");

    let e = import_sled(&pg, &sled, &path, false)
        .await
        .expect_err("a marked store is refused")
        .to_string();
    assert!(
        e.contains("was moved already") && e.contains("--force"),
        "{e}"
    );

    // The retention sweep (or a delete) took one delivery: a forced run brings back that one.
    cluster.psql(
        &database,
        &format!("DELETE FROM deliveries WHERE id = '{first_b}'"),
    );
    let again = import_sled(&pg, &sled, &path, true)
        .await
        .expect("forced import");
    assert_eq!(
        again,
        Imported {
            webhooks: 0,
            webhooks_there: 2,
            deliveries: 1,
            events: 0
        }
    );
}

/// Instance A applies the config file while instance B pauses the webhook: B's pause waits
/// for A's apply and then stands (A's plan, made before it, does not overwrite it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_another_instance_during_an_apply_stands() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let b = Arc::new(b);
    let w = Webhook::new(WebhookSpec::example("filed"), Origin::Config);
    a.put_webhook(&w).await.expect("put");
    let pausing: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let planner = {
        let pausing = Arc::clone(&pausing);
        let first = std::sync::atomic::AtomicBool::new(true);
        let handle = tokio::runtime::Handle::current();
        Planner(Box::new(move |stored: &[Webhook]| {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                // B pauses while A plans (on the other worker thread); the plan waits for it
                // a while, as a slow plan would.
                let b = Arc::clone(&b);
                let (done, finished) = std::sync::mpsc::channel();
                let task = handle.spawn(async move {
                    crate::store::contract::pause(b.as_ref(), w.id)
                        .await
                        .expect("pause");
                    let _ = done.send(());
                });
                let _ = finished.recv_timeout(Duration::from_secs(1));
                *pausing.lock().expect("lock") = Some(task);
            }
            crate::store::WebhookPlan {
                put: stored
                    .iter()
                    .map(|w| {
                        let mut w = w.clone();
                        w.spec.failure_threshold = 9;
                        w
                    })
                    .collect(),
                remove: Vec::new(),
            }
        }))
    };
    a.apply_webhooks(&planner).await.expect("apply");
    let task = pausing.lock().expect("lock").take().expect("planned");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the pause finishes")
        .expect("join");
    let after = a.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(
        after.status,
        crate::webhook::WebhookStatus::Paused,
        "the pause stands"
    );
    assert_eq!(
        after.spec.failure_threshold, 9,
        "the file's change is applied"
    );
}

/// The outcome of a request carrying `d` that failed finally (its schedule used up).
fn failed_finally(d: &Delivery, number: u32) -> Recorded {
    let mut r = recorded(d, number, false);
    r.after.state = DeliveryState::Failed;
    r
}

/// Many requests recorded in one statement count in their order, as one statement per
/// request would: each gets the counters as they are after it (a success in the middle of
/// the batch ends the run of consecutive failures), and a request to a webhook deleted
/// meanwhile writes nothing, beside others that do.
#[tokio::test]
async fn a_batch_of_outcomes_counts_each_request_in_order() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let w = webhook(&store, "batched", false).await;
    let gone = webhook(&store, "deleted", false).await;
    let queued = queue(&store, &w, 5).await;
    let lost = queue(&store, &gone, 1).await;
    assert_eq!(
        store
            .queued(w.id, u64::MAX, 5, &none())
            .await
            .expect("claim")
            .len(),
        5
    );
    store.delete_webhook(gone.id).await.expect("delete");
    let changes = [
        failed_finally(&queued[0], 1),
        failed_finally(&queued[1], 1),
        recorded(&queued[2], 1, true),
        failed_finally(&queued[3], 1),
        recorded(&queued[4], 1, false),
    ];
    let mut outcomes: Vec<sql::Outcome> = changes
        .iter()
        .map(|c| sql::Outcome::of(w.id, std::slice::from_ref(c), None).expect("outcome"))
        .collect();
    outcomes.insert(
        1,
        sql::Outcome::of(gone.id, &[recorded(&lost[0], 1, true)], None).expect("outcome"),
    );
    let client = store.client().await.expect("connect");
    let recordings = sql::record_many(&client, store.instance, &outcomes)
        .await
        .map_err(sql::RecordError::into_store)
        .expect("record");
    let counted: Vec<Option<(u64, u64, u64, u64)>> = recordings
        .iter()
        .map(|r| match r {
            Recording::Shared(c) => {
                Some((c.delivered, c.failed, c.retries, c.consecutive_failures))
            }
            Recording::Gone => None,
            Recording::Saved => panic!("a shared store counts: {r:?}"),
        })
        .collect();
    assert_eq!(
        counted,
        [
            Some((0, 1, 0, 1)),
            None,
            Some((0, 2, 0, 2)),
            Some((1, 2, 0, 0)),
            Some((1, 3, 0, 1)),
            Some((1, 3, 1, 1)),
        ],
        "(delivered, failed, retries, consecutive failures) after each request"
    );
    let stored = store.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(
        (
            stored.counters.delivered,
            stored.counters.failed,
            stored.counters.retries,
            stored.counters.consecutive_failures
        ),
        (1, 3, 1, 1),
        "the webhook keeps the counters after the last request"
    );
    let mut expected = webhook_counters(&changes);
    expected.last_delivered_at = expected.last_delivered_at.map(whole_ms);
    expected.last_failure_at = expected.last_failure_at.map(whole_ms);
    assert_eq!(stored.counters, expected, "as Counters::apply counts");
    for (d, state) in queued.iter().zip([
        DeliveryState::Failed,
        DeliveryState::Failed,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Pending,
    ]) {
        let now = store.delivery(d.id).await.expect("read").expect("there");
        assert_eq!(now.state, state);
        assert_eq!(store.attempts(d.id).await.expect("attempts").len(), 1);
    }
    assert_eq!(store.delivery(lost[0].id).await.expect("read"), None);
    assert!(store.attempts(lost[0].id).await.expect("read").is_empty());
}

/// The counters `changes` (one request each) come to, counted in memory.
fn webhook_counters(changes: &[Recorded]) -> crate::webhook::Counters {
    let mut c = crate::webhook::Counters::default();
    for change in changes {
        c.apply(&crate::store::CounterChange::of(std::slice::from_ref(
            change,
        )));
    }
    c
}

/// A time as PostgreSQL keeps it: whole milliseconds.
fn whole_ms(t: time::OffsetDateTime) -> time::OffsetDateTime {
    let ms = i128::from(crate::event::unix_ms(t));
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).expect("a time")
}

/// Two instances record a hundred requests each at once (the recorder gathers them into
/// batches): every delivery is recorded once, the counters add up, and each request got its
/// own place in the count (the `delivered` it saw is one of 1..=200, none twice).
#[tokio::test]
async fn concurrent_recordings_on_two_instances_count_every_request_once() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(30)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(30)).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let w = webhook(&a, "busy", false).await;
    let queued = queue(&a, &w, 200).await;
    let mut tasks = Vec::new();
    for store in [&a, &b] {
        let claimed = store
            .queued(w.id, u64::MAX, 100, &none())
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 100);
        for d in claimed {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                store
                    .record_attempts(w.id, &[recorded(&d, 1, true)], None)
                    .await
                    .expect("record")
            }));
        }
    }
    let mut seen = HashSet::new();
    for task in tasks {
        match task.await.expect("join") {
            Recording::Shared(c) => assert!(seen.insert(c.delivered), "{} twice", c.delivered),
            other => panic!("a shared store counts: {other:?}"),
        }
    }
    assert_eq!(seen, (1..=200).collect::<HashSet<u64>>());
    let stored = a.webhook(w.id).await.expect("read").expect("there");
    assert_eq!(stored.counters.delivered, 200);
    for d in &queued {
        let now = a.delivery(d.id).await.expect("read").expect("there");
        assert_eq!(now.state, DeliveryState::Delivered);
        assert_eq!(a.attempts(d.id).await.expect("attempts").len(), 1);
    }
    assert_eq!(a.queue_stats(w.id).await.expect("stats").pending, 0);
}

/// A batch that PostgreSQL rejects is rolled back whole and recorded one request at a time,
/// so the one that cannot be written does not take the others down with it. Here two
/// requests log the same attempt of one delivery (which one statement cannot do twice): the
/// first is recorded, the second finds the delivery no longer pending and writes nothing,
/// and the request beside them is recorded as usual.
#[tokio::test]
async fn a_rejected_batch_is_recorded_one_request_at_a_time() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let w = webhook(&store, "rejected", false).await;
    let queued = queue(&store, &w, 2).await;
    assert_eq!(
        store
            .queued(w.id, u64::MAX, 2, &none())
            .await
            .expect("claim")
            .len(),
        2
    );
    let changes = [
        recorded(&queued[0], 1, true),
        recorded(&queued[0], 1, false),
        recorded(&queued[1], 1, true),
    ];
    let mut jobs = Vec::new();
    let mut answers = Vec::new();
    for c in &changes {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let outcome = sql::Outcome::of(w.id, std::slice::from_ref(c), None).expect("outcome");
        jobs.push(record::Job { outcome, reply });
        answers.push(answer);
    }
    let outcomes: Vec<sql::Outcome> = changes
        .iter()
        .map(|c| sql::Outcome::of(w.id, std::slice::from_ref(c), None).expect("outcome"))
        .collect();
    let client = store.client().await.expect("connect");
    assert!(
        matches!(
            sql::record_many(&client, store.instance, &outcomes).await,
            Err(sql::RecordError::Rejected(_))
        ),
        "one statement cannot log one attempt twice"
    );
    drop(client);
    record::record(&store.pool, store.instance, jobs).await;
    for answer in answers {
        let recording = answer.await.expect("answered").expect("recorded");
        assert!(matches!(recording, Recording::Shared(_)), "{recording:?}");
    }
    for d in &queued {
        let now = store.delivery(d.id).await.expect("read").expect("there");
        assert_eq!(
            now.state,
            DeliveryState::Delivered,
            "the first outcome stands"
        );
        let attempts = store.attempts(d.id).await.expect("attempts");
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0].success);
    }
}

/// The queue's next time walks the queue index only as far as it must: behind a retry that
/// kept its place (queued early, due late) a delivery queued later but due sooner is found.
#[tokio::test]
async fn the_next_time_is_the_earliest_due_even_behind_a_retry_that_kept_its_place() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let w = webhook(&store, "kept", false).await;
    let queued = queue(&store, &w, 2).await;
    assert_eq!(
        store
            .queued(w.id, u64::MAX, 1, &none())
            .await
            .expect("claim"),
        queued[..1]
    );
    let mut change = recorded(&queued[0], 1, false);
    // A keyed retry keeps its queue time and waits for its due time.
    change.after.queue_ms = queued[0].queue_ms;
    change.after.due_ms = queued[1].queue_ms + 60_000;
    store
        .record_attempts(w.id, &[change.clone()], None)
        .await
        .expect("record");
    assert_eq!(
        store.next_queued(w.id, &none()).await.expect("next"),
        Some(queued[1].queue_ms),
        "the second is due before the first's retry"
    );
    let skip: HashSet<Uuid> = [queued[1].id].into();
    assert_eq!(
        store.next_queued(w.id, &skip).await.expect("next"),
        Some(change.after.due_ms),
        "then the retry, at its due time, not its queue time"
    );
}

/// A delivery's event comes with its lease: the engine reads it next without another round
/// trip (here PostgreSQL is gone by then), once; a second read goes to PostgreSQL again, as
/// does the read of a delivery given back.
#[tokio::test]
async fn a_leased_delivery_brings_its_event_along() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let w = webhook(&store, "along", false).await;
    let queued = queue(&store, &w, 2).await;
    let expected = store
        .event(queued[0].event_id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(
        store
            .queued(w.id, u64::MAX, 2, &none())
            .await
            .expect("claim"),
        queued
    );
    store.unclaim(&[queued[1].id]).await.expect("give back");
    cluster.kill();
    assert!(
        store.event(queued[0].event_id).await.is_err(),
        "a read other than the sending one goes to PostgreSQL, which is down"
    );
    assert_eq!(
        store
            .event_to_send(queued[0].event_id)
            .await
            .expect("read with the lease"),
        Some(expected)
    );
    assert!(
        store.event_to_send(queued[0].event_id).await.is_err(),
        "read again from PostgreSQL, which is down"
    );
    assert!(
        store.event_to_send(queued[1].event_id).await.is_err(),
        "a delivery given back left nothing behind"
    );
}

/// An outcome that cannot be recorded (PostgreSQL went away mid-run) is an error for the
/// engine, not a loss: the deliveries stay leased and pending, and once the lease runs out
/// another instance takes them again, with the same ids.
#[tokio::test]
async fn an_outcome_that_cannot_be_recorded_leaves_its_deliveries_to_be_sent_again() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_a_dir, a) = store_on(&url, Duration::from_secs(1)).await;
    let (_b_dir, b) = store_on(&url, Duration::from_secs(1)).await;
    let w = webhook(&a, "unrecorded", false).await;
    let queued = queue(&a, &w, 2).await;
    assert_eq!(
        a.queued(w.id, u64::MAX, 2, &none()).await.expect("claim"),
        queued
    );
    cluster.kill();
    for d in &queued {
        assert!(
            a.record_attempts(w.id, &[recorded(d, 1, true)], None)
                .await
                .is_err(),
            "nothing recorded while PostgreSQL is down"
        );
    }
    cluster.start_server();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = b.queued(w.id, u64::MAX, 10, &none()).await.expect("claim");
    assert_eq!(
        again, queued,
        "pending still, taken over when the lease ran out"
    );
    for d in &queued {
        assert!(b.attempts(d.id).await.expect("attempts").is_empty());
    }
}

/// `V4__console` gives the attempts an older hooktap recorded what statistics read, from their
/// records: after the upgrade they count like new ones.
#[tokio::test]
async fn the_console_migration_fills_in_the_statistics_of_older_attempts() {
    let cluster = Arc::new(Cluster::start());
    let url = cluster.database();
    let mut client = super::cluster::connect(&url).await;
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

/// `V8__records_as_json` turns the `jsonb` records an older hooktap wrote into `json`: after
/// the upgrade they read back unchanged, a pending one is still claimed (its `due_ms` is read
/// out of the text), and an older hooktap's `jsonb` parameters still write the columns.
#[tokio::test]
async fn records_stored_as_jsonb_before_v8_read_back_unchanged_and_older_writers_still_write() {
    let cluster = Arc::new(Cluster::start());
    let url = cluster.database();
    let mut client = super::cluster::connect(&url).await;
    super::schema::migrate_to(&mut client, 7)
        .await
        .expect("V1 to V7");
    let e = event();
    let w = Webhook::new(WebhookSpec::example("a"), Origin::Api);
    let webhook = w.id;
    let d = Delivery::new(&e, webhook, 0);
    let a = crate::store::contract::attempt(&d, 1, false);
    fn json<T: serde::Serialize>(record: &T) -> tokio_postgres::types::Json<serde_json::Value> {
        tokio_postgres::types::Json(serde_json::to_value(record).expect("json"))
    }
    // Its webhook (claims take only deliveries of a webhook that is there).
    client
        .execute(
            "INSERT INTO webhooks (id, record) VALUES ($1, $2::jsonb)",
            &[&w.id, &json(&w)],
        )
        .await
        .expect("a webhook");
    let insert_delivery = "INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending,
                                                   queue_ms, record)
                           VALUES ($1, $2, $3, $4, true, $5, $6::jsonb)";
    let created_ms = i64::try_from(crate::event::unix_ms(d.created_at)).expect("ms");
    let queue_ms = i64::try_from(d.queue_ms).expect("ms");
    client
        .execute(
            "INSERT INTO events (id, created_ms, record) VALUES ($1, $2, $3::jsonb)",
            &[&e.id, &created_ms, &json(&e)],
        )
        .await
        .expect("an old event");
    client
        .execute(
            insert_delivery,
            &[&d.id, &e.id, &webhook, &created_ms, &queue_ms, &json(&d)],
        )
        .await
        .expect("an old delivery");
    client
        .execute(
            "INSERT INTO attempts (delivery_id, number, webhook_id, record)
             VALUES ($1, 1, $2, $3::jsonb)",
            &[&d.id, &webhook, &json(&a)],
        )
        .await
        .expect("an old attempt");

    // Opening the store applies V8.
    let (_dir, store) = store_on(&url, Duration::from_secs(60)).await;
    assert_eq!(store.event(e.id).await.expect("event"), Some(e.clone()));
    assert_eq!(
        store.delivery(d.id).await.expect("delivery"),
        Some(d.clone())
    );
    assert_eq!(store.attempts(d.id).await.expect("attempts"), vec![a]);
    let now = crate::event::unix_ms(OffsetDateTime::now_utc());
    let claimed = store
        .queued(webhook, now, 10, &HashSet::new())
        .await
        .expect("claim");
    assert_eq!(claimed, vec![d]);

    // An instance of an older hooktap, still running beside the upgraded ones.
    let later = Delivery::new(&e, webhook, 0);
    let created_ms = i64::try_from(crate::event::unix_ms(later.created_at)).expect("ms");
    let queue_ms = i64::try_from(later.queue_ms).expect("ms");
    client
        .execute(
            insert_delivery,
            &[
                &later.id,
                &e.id,
                &webhook,
                &created_ms,
                &queue_ms,
                &json(&later),
            ],
        )
        .await
        .expect("an older instance writes a jsonb record into the json column");
    assert_eq!(
        store.delivery(later.id).await.expect("delivery"),
        Some(later)
    );
    drop(client);
}

/// A migration applied by another instance while this one runs may change the type of what
/// a statement this one prepared returns (V8 did): PostgreSQL refuses such a statement
/// ("cached plan must not change result type") for as long as the connection keeps it. The
/// call that meets the change fails; the store then prepares its statements again.
#[tokio::test]
async fn statements_prepared_before_another_instance_migrated_are_prepared_again() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, mut pg) = config(dir.path(), &url, Duration::from_secs(60));
    // One connection, so that every call below meets the statements the first one prepared.
    pg.pool_size = 1;
    let store = PgStore::open_now(&config, &pg).await.expect("open");
    store.mark_ready();
    let e = event();
    let d = Delivery::new(&e, Uuid::now_v7(), 0);
    let client = super::cluster::connect(&url).await;
    client
        .execute(
            "INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record)
             VALUES ($1, $2, $3, 0, true, 0, $4)",
            &[
                &d.id,
                &e.id,
                &d.webhook_id,
                &tokio_postgres::types::Json(serde_json::to_value(&d).expect("json")),
            ],
        )
        .await
        .expect("a delivery");
    assert_eq!(store.delivery(d.id).await.expect("read"), Some(d.clone()));

    // Another instance's migration changes the column's type.
    client
        .batch_execute("ALTER TABLE deliveries ALTER COLUMN record TYPE jsonb USING record::jsonb")
        .await
        .expect("alter");
    let first = store.delivery(d.id).await;
    assert!(
        first.as_ref().is_err_and(|e| e
            .to_string()
            .contains("cached plan must not change result type")),
        "the statement prepared before is refused: {first:?}"
    );
    for _ in 0..3 {
        assert_eq!(
            store.delivery(d.id).await.expect("prepared again"),
            Some(d.clone())
        );
    }
}

/// Opens the stopped sled store at `path` that a test has just dropped: sled's background
/// threads may hold its file lock a moment longer (a hooktap that exited has released it).
async fn open_released(path: &std::path::Path) -> SledStore {
    let mut opened = SledStore::open_stopped(path);
    for _ in 0..100 {
        if opened.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        opened = SledStore::open_stopped(path);
    }
    opened.expect("open the stopped store")
}

/// How many rows of `table` belong to webhook `id`.
async fn rows_of(store: &PgStore, table: &str, id: Uuid) -> i64 {
    let c = store.client().await.expect("client");
    c.query_one(
        &format!("SELECT count(*) FROM {table} WHERE webhook_id = $1"),
        &[&id],
    )
    .await
    .expect("count")
    .get(0)
}

/// `DELETE /webhooks/{id}` (and a webhook leaving the config file) answers once the webhook's
/// row is gone; the store's own task removes its history afterwards.
#[tokio::test]
async fn a_deletion_in_the_background_removes_the_row_then_the_history() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    let (gone, kept) = (
        webhook(&store, "gone", false).await,
        webhook(&store, "kept", false).await,
    );
    let sent = queue(&store, &gone, 3).await;
    crate::store::contract::deliver(&shared, &sent[0]).await;
    queue(&store, &kept, 1).await;
    assert_eq!(
        shared
            .delete_webhook_in_background(gone.id)
            .await
            .expect("delete"),
        2,
        "two were pending"
    );
    assert_eq!(store.webhook(gone.id).await.expect("read"), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rows_of(&store, "deliveries", gone.id).await > 0
        || rows_of(&store, "webhook_deletions", gone.id).await > 0
    {
        assert!(std::time::Instant::now() < deadline, "the history stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows_of(&store, "attempts", gone.id).await, 0);
    assert_eq!(rows_of(&store, "deliveries", kept.id).await, 1);
}

/// A deleted webhook's delivery whose row is still there (its history not yet removed) is
/// not queued again.
#[tokio::test]
async fn a_deleted_webhooks_delivery_is_not_requeued_before_its_history_goes() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    let gone = webhook(&store, "gone", false).await;
    let sent = queue(&store, &gone, 1).await;
    let done = crate::store::contract::deliver(&shared, &sent[0]).await;
    // The deletion's first step only: the row goes, the history stays.
    sql::delete_webhook(&mut store.client().await.expect("client"), gone.id)
        .await
        .expect("delete");
    assert_eq!(rows_of(&store, "deliveries", gone.id).await, 1);
    assert_eq!(
        shared
            .requeue(
                &done,
                crate::event::unix_ms(time::OffsetDateTime::now_utc())
            )
            .await
            .expect("requeue"),
        crate::store::Requeued::Gone
    );
}

/// Deleting a webhook removes its row at once and its history in parts of bounded size,
/// each a transaction of its own; a deletion cut short after its first step (a crash) leaves
/// nothing that can be sent, and the retention sweep (run at startup and every hour)
/// finishes it.
#[tokio::test]
async fn a_deletion_goes_in_parts_and_one_cut_short_is_finished_by_the_sweep() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    let (gone, kept) = (
        webhook(&store, "gone", false).await,
        webhook(&store, "kept", false).await,
    );
    let sent = queue(&store, &gone, 5).await;
    for d in &sent[..3] {
        crate::store::contract::deliver(&shared, d).await;
    }
    let theirs = queue(&store, &kept, 1).await;

    let dropped = sql::delete_webhook(&mut store.client().await.expect("client"), gone.id)
        .await
        .expect("delete");
    assert_eq!(dropped, 2, "two were pending");
    assert_eq!(store.webhook(gone.id).await.expect("read"), None);
    assert_eq!(
        (
            rows_of(&store, "deliveries", gone.id).await,
            rows_of(&store, "attempts", gone.id).await,
            rows_of(&store, "webhook_deletions", gone.id).await,
        ),
        (5, 3, 1),
        "the history is still there, and the deletion is marked"
    );
    assert!(
        store
            .queued(gone.id, u64::MAX, 10, &none())
            .await
            .expect("claim")
            .is_empty(),
        "a deleted webhook's pending deliveries are not claimed"
    );
    assert!(
        store
            .claim_key_heads(gone.id, u64::MAX, 10, &none())
            .await
            .expect("claim heads")
            .ready
            .is_empty()
    );

    // A part: deliveries in id order with their attempts.
    let mut c = store.client().await.expect("client");
    let next = sql::delete_part(&mut c, gone.id, Uuid::nil(), 2)
        .await
        .expect("part");
    assert_eq!(next, Some(sent[1].id), "two deliveries and their attempts");
    assert_eq!(rows_of(&store, "deliveries", gone.id).await, 3);
    assert_eq!(rows_of(&store, "attempts", gone.id).await, 1);
    // An attempt whose delivery is gone (nothing lists it but its webhook).
    c.execute(
        "INSERT INTO attempts (delivery_id, number, webhook_id, record)
         VALUES (gen_random_uuid(), 1, $1, '{}')",
        &[&gone.id],
    )
    .await
    .expect("stray attempt");
    drop(c);

    let swept = Store::sweep(
        &*store,
        OffsetDateTime::now_utc() - time::Duration::days(30),
    )
    .expect("sweep");
    assert_eq!(swept, Swept::default(), "nothing had expired");
    assert_eq!(
        (
            rows_of(&store, "deliveries", gone.id).await,
            rows_of(&store, "attempts", gone.id).await,
            rows_of(&store, "webhook_deletions", gone.id).await,
        ),
        (0, 0, 0),
        "the sweep finished the deletion"
    );
    assert_eq!(
        store.deliveries_of(kept.id, 10).await.expect("list"),
        theirs,
        "another webhook's deliveries stay"
    );

    // Deliveries without a webhook (an older hooktap's leftovers) go with the next sweep; a
    // mark on a webhook that is there (moved in again) is dropped, and its history stays.
    let orphan = Uuid::now_v7();
    let c = store.client().await.expect("client");
    c.batch_execute(&format!(
        "INSERT INTO events (id, created_ms, record) VALUES ('{e}', 0, '{{}}');
         INSERT INTO deliveries (id, event_id, webhook_id, created_ms, pending, queue_ms, record)
           VALUES ('{d}', '{e}', '{orphan}', 0, true, 0, '{{}}');
         INSERT INTO webhook_deletions (webhook_id, since_ms) VALUES ('{kept}', 0);",
        e = Uuid::now_v7(),
        d = Uuid::now_v7(),
        kept = kept.id,
    ))
    .await
    .expect("leftovers");
    drop(c);
    Store::sweep(
        &*store,
        OffsetDateTime::now_utc() - time::Duration::days(30),
    )
    .expect("sweep");
    assert_eq!(rows_of(&store, "deliveries", orphan).await, 0);
    assert_eq!(rows_of(&store, "webhook_deletions", kept.id).await, 0);
    assert_eq!(
        store.deliveries_of(kept.id, 10).await.expect("list"),
        theirs
    );

    // Through the store, the parts run before the call returns.
    let third = webhook(&store, "third", false).await;
    let ds = queue(&store, &third, 3).await;
    crate::store::contract::deliver(&shared, &ds[0]).await;
    assert_eq!(store.delete_webhook(third.id).await.expect("delete"), 2);
    assert_eq!(
        (
            rows_of(&store, "deliveries", third.id).await,
            rows_of(&store, "attempts", third.id).await,
            rows_of(&store, "webhook_deletions", third.id).await,
        ),
        (0, 0, 0)
    );
}

/// The retention sweep removes expired events a part at a time, oldest first, and goes on
/// past events kept for a pending delivery (between parts, and at a part's end).
#[tokio::test]
async fn the_sweep_goes_in_parts_past_events_kept_for_pending_deliveries() {
    let cluster = Cluster::start();
    let (_dir, store) = store_on(&cluster.database(), Duration::from_secs(30)).await;
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    let w = webhook(&store, "a", false).await;
    let old = OffsetDateTime::now_utc() - time::Duration::days(40);
    let mut events = Vec::new();
    for i in 0..7 {
        let e = crate::store::contract::event_at(old + time::Duration::seconds(i), "order.created");
        let d = Delivery::new(&e, w.id, 0);
        store.append(&e, std::slice::from_ref(&d)).expect("append");
        events.push((e, d));
    }
    store.flush().await.expect("ship");
    let pending = [1, 2, 5];
    for (i, (_, d)) in events.iter().enumerate() {
        if !pending.contains(&i) {
            crate::store::contract::deliver(&shared, d).await;
        }
    }
    let young = event();
    store.append(&young, &[]).expect("append");
    store.flush().await.expect("ship");

    let mut c = store.client().await.expect("client");
    let swept = sql::sweep(
        &mut c,
        OffsetDateTime::now_utc() - time::Duration::days(30),
        2,
    )
    .await
    .expect("sweep");
    assert_eq!(
        swept,
        Swept {
            events: 4,
            deliveries: 4,
            attempts: 4
        }
    );
    for (i, (e, d)) in events.iter().enumerate() {
        let kept = pending.contains(&i);
        assert_eq!(
            store.event(e.id).await.expect("read").is_some(),
            kept,
            "event {i}"
        );
        assert_eq!(store.delivery(d.id).await.expect("read").is_some(), kept);
    }
    assert!(store.event(young.id).await.expect("read").is_some());
}

/// An instance of this version starts (and applies its config) on a database that a newer
/// hooktap has migrated further: a rolling upgrade does not lock the older instances out.
#[tokio::test]
async fn a_database_migrated_by_a_newer_hooktap_still_opens() {
    let cluster = Cluster::start();
    let url = cluster.database();
    let (_dir, first) = store_on(&url, Duration::from_secs(30)).await;
    let c = first.client().await.expect("client");
    c.execute(
        "INSERT INTO hooktap_schema_history (version, name, applied_on, checksum)
         VALUES (99, 'from_a_newer_hooktap', '2026-12-02T00:00:00Z', '1')",
        &[],
    )
    .await
    .expect("a later migration");
    drop(c);
    let (_dir, second) = store_on(&url, Duration::from_secs(30)).await;
    let w = webhook(&second, "a", false).await;
    assert_eq!(
        first.webhook(w.id).await.expect("read").map(|w| w.id),
        Some(w.id)
    );
    second.migrate().await.expect("migrate again");
}
