//! The delivery engine's Rust API (what the admin API serves), run in-process against a real
//! store in a temp directory and real receivers: status changes, deletion, counters,
//! redelivery, recovery, the attempt log, secret rotation and the SSRF guard.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hooktap::config::{DeliveryConfig, FlushMode, StoreConfig};
use hooktap::delivery::Engine;
use hooktap::event::{DeliveryState, Event, Topic};
use hooktap::ssrf::Guard;
use hooktap::store::{SledStore, Store};
use hooktap::webhook::{Mode, Profile, WebhookSpec, WebhookStatus};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

fn spec(name: &str, url: &str) -> WebhookSpec {
    WebhookSpec {
        name: name.to_owned(),
        url: url.parse().expect("url"),
        secret: format!("secret-{name}"),
        topics: vec!["order.*".to_owned()],
        status: None,
        retry: vec![],
        failure_threshold: 0,
        timeout: Duration::from_secs(5),
        signature: Profile::Hooktap,
        header_prefix: "X-Hooktap-Webhook-".to_owned(),
        mode: Mode::Realtime,
        ordered: false,
        concurrency: 4,
        ordering_key: None,
        filter: Vec::new(),
        rate_limit: None,
        circuit_failures: hooktap::webhook::DEFAULT_CIRCUIT_FAILURES,
        circuit_cooldown: hooktap::webhook::DEFAULT_CIRCUIT_COOLDOWN,
        https_only: None,
        headers: Default::default(),
        transform: None,
    }
}

/// A store in a temp directory and a running engine over it.
struct Running {
    _dir: tempfile::TempDir,
    dispatcher: Arc<Engine>,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn delivery_config(allow: &[&str]) -> DeliveryConfig {
    DeliveryConfig {
        source: "https://shop.test/".to_owned(),
        timeout: Duration::from_secs(5),
        concurrency: 16,
        https_only: false,
        guard: Guard::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("allow list"),
        secret_rotation_grace: Duration::from_secs(3600),
        nice: 0,
    }
}

impl Running {
    async fn start(specs: &[WebhookSpec], allow: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, specs, allow).await
    }

    async fn start_in(dir: tempfile::TempDir, specs: &[WebhookSpec], allow: &[&str]) -> Self {
        Self::start_with(dir, specs, delivery_config(allow)).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        specs: &[WebhookSpec],
        config: DeliveryConfig,
    ) -> Self {
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(&StoreConfig {
                path: dir.path().join("data"),
                flush: FlushMode::Interval(Duration::from_millis(100)),
                retention: Duration::from_secs(3600),
                min_free_space: 0,
                backend: Default::default(),
            })
            .expect("open store"),
        );
        let grace = config.secret_rotation_grace;
        let dispatcher =
            Arc::new(Engine::new(store, Vec::new(), config, Default::default()).expect("engine"));
        dispatcher.sync_webhooks(specs, grace).await.expect("sync");
        let (stop, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(Arc::clone(&dispatcher).run(Duration::from_secs(3600), watch));
        Self {
            _dir: dir,
            dispatcher,
            _stop: stop,
        }
    }

    fn id(&self, name: &str) -> Uuid {
        self.dispatcher
            .webhooks()
            .into_iter()
            .find(|w| w.spec.name == name)
            .expect("webhook")
            .id
    }

    fn order(&self, n: u32) -> Event {
        let topic = Topic::parse("order.created").expect("topic");
        let event = Event::new(&topic, "test", json!({"order": n}));
        self.dispatcher
            .intake()
            .enqueue(event.clone())
            .expect("enqueue");
        event
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_delete_and_counters() {
    let receiver = TestReceiver::start(200).await;
    // An active webhook for the same events: its deliveries show the loop has been through
    // the queue, where a paused webhook's deliveries would have gone out too.
    let witness = TestReceiver::start(200).await;
    let engine = Running::start(
        &[
            spec("crm", &receiver.url()),
            spec("witness", &witness.url()),
        ],
        &["127.0.0.0/8"],
    )
    .await;
    let id = engine.id("crm");
    let d = &engine.dispatcher;

    d.set_status(id, WebhookStatus::Paused)
        .await
        .expect("pause");
    engine.order(1);
    engine.order(2);
    witness.wait_for(2, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert!(receiver.received().is_empty(), "paused: nothing is sent");
    let kept = d.deliveries(id, 10).await.expect("deliveries");
    assert_eq!(kept.len(), 2, "paused: deliveries are kept");
    assert!(
        kept.iter()
            .all(|k| k.state == DeliveryState::Pending && k.attempts == 0),
        "paused: never attempted: {kept:#?}"
    );

    d.set_status(id, WebhookStatus::Active)
        .await
        .expect("resume");
    receiver.wait_for(2, WAIT).await;
    wait_until(WAIT, "the delivered counter reaching 2", || async {
        d.webhook(id).expect("webhook").counters.delivered >= 2
    })
    .await;
    let c = d.webhook(id).expect("webhook").counters;
    assert!(c.last_delivered_at.is_some());
    assert_eq!((c.failed, c.retries, c.consecutive_failures), (0, 0, 0));
    assert_eq!(
        d.reset_counters(id)
            .await
            .expect("reset")
            .expect("found")
            .counters
            .delivered,
        0
    );
    assert_eq!(
        d.store()
            .webhook(id)
            .await
            .expect("read")
            .expect("stored")
            .counters
            .delivered,
        0,
        "the reset is stored"
    );

    d.set_status(id, WebhookStatus::Disabled)
        .await
        .expect("disable");
    engine.order(3);
    assert_eq!(
        d.deliveries(id, 10).await.expect("deliveries").len(),
        2,
        "disabled: no new deliveries are queued"
    );

    d.set_status(id, WebhookStatus::Paused)
        .await
        .expect("pause");
    engine.order(4);
    engine.order(5);
    assert_eq!(
        d.delete_webhook(id).await.expect("delete"),
        Some(2),
        "the two pending deliveries are dropped"
    );
    assert!(d.webhook(id).is_none());
    // The history goes in the background: in the keeper's rounds (this engine runs none).
    assert_eq!(
        d.deliveries(id, 10).await.expect("deliveries").len(),
        2,
        "its earlier deliveries until the keeper's round (the pending ones held in memory went at once)"
    );
    d.store().maintain();
    assert!(d.deliveries(id, 10).await.expect("deliveries").is_empty());
    assert_eq!(d.delete_webhook(id).await.expect("delete"), None);
}

/// A runtime shut down while the engine is busy sending ends: the sends it cancels wake the
/// loop, which must not start them again and again inside one poll (the runtime waits for
/// that poll to return; it hung the test runtime of `pause_resume_delete_and_counters`).
#[test]
fn a_runtime_shut_down_with_sends_in_flight_stops() {
    for round in 0..5 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let kept = runtime.block_on(async {
            let receiver = TestReceiver::start(200).await;
            let mut webhook = spec("crm", &receiver.url());
            webhook.concurrency = 16;
            let engine = Running::start(&[webhook], &["127.0.0.0/8"]).await;
            for n in 0..2_000 {
                engine.order(n);
            }
            // Stopped while the loop is taking from a long queue with sends under way.
            receiver.wait_for(50, WAIT).await;
            (engine, receiver)
        });
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(runtime);
            let _ = done.send(());
        });
        assert!(
            stopped.recv_timeout(Duration::from_secs(60)).is_ok(),
            "round {round}: the runtime did not stop within a minute"
        );
        drop(kept);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_log_has_woocommerce_fields_with_credentials_masked() {
    let receiver = TestReceiver::start(500).await;
    let url = receiver.url().replace("http://", "http://shop:pa55@");
    let engine = Running::start(&[spec("crm", &url)], &["127.0.0.0/8"]).await;
    let id = engine.id("crm");
    engine.order(7);
    receiver.wait_for(1, WAIT).await;
    let (delivery, attempts) = wait_for_value(WAIT, "the delivery failing", || async {
        let list = engine
            .dispatcher
            .deliveries(id, 1)
            .await
            .expect("deliveries");
        let d = list.first().filter(|d| d.state == DeliveryState::Failed)?;
        Some(
            engine
                .dispatcher
                .delivery(d.id)
                .await
                .expect("read")
                .expect("found"),
        )
    })
    .await;
    assert_eq!(delivery.attempts, 1);
    let a = &attempts[0];
    assert_eq!(
        (a.number, a.delivery_id, a.webhook_id),
        (1, delivery.id, id)
    );
    assert_eq!(a.summary, "HTTP 500 Internal Server Error: answer body");
    assert!(!a.success);
    assert_eq!(a.request_method, "POST");
    assert_eq!(
        a.request_url,
        format!("http://****@{}/hooks", receiver.addr)
    );
    assert!(
        a.request_headers
            .iter()
            .any(|(k, v)| k == "Authorization" && v == "Basic ****")
    );
    assert!(
        a.request_headers
            .iter()
            .any(|(k, v)| k == "X-Hooktap-Webhook-Topic" && v == "order.created")
    );
    assert_eq!(a.request_body, r#"{"order":7}"#);
    assert_eq!(a.response_code, Some(500));
    assert_eq!(a.response_message, "Internal Server Error");
    assert!(
        a.response_headers
            .iter()
            .any(|(k, _)| k == "content-length")
    );
    assert_eq!(a.response_body, "answer body");
    let everything = format!(
        "{attempts:?}{:?}",
        engine.dispatcher.webhook(id).expect("webhook").view()
    );
    assert!(
        !everything.contains("pa55") && !everything.contains("secret-crm"),
        "no secret is shown: {everything}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_and_recover_send_again_with_the_same_delivery_id() {
    let receiver = TestReceiver::start(503).await;
    let engine = Running::start(&[spec("crm", &receiver.url())], &["127.0.0.0/8"]).await;
    let id = engine.id("crm");
    let since = OffsetDateTime::now_utc();
    engine.order(1);
    engine.order(2);
    receiver.wait_for(2, WAIT).await;
    wait_until(WAIT, "both deliveries failing", || async {
        engine
            .dispatcher
            .webhook(id)
            .expect("webhook")
            .counters
            .failed
            >= 2
    })
    .await;
    receiver.set_status(200);
    let until = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    assert_eq!(
        engine
            .dispatcher
            .recover(id, since, until)
            .await
            .expect("recover"),
        2
    );
    let got = receiver.wait_for(4, WAIT).await;
    let ids = |r: &[Received]| {
        let mut v: Vec<String> = r
            .iter()
            .map(|r| r.header("x-hooktap-webhook-delivery-id").to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&got[..2]),
        ids(&got[2..4]),
        "recovered deliveries keep their ids"
    );

    let first = engine
        .dispatcher
        .deliveries(id, 10)
        .await
        .expect("deliveries")[0]
        .clone();
    wait_until(WAIT, "the recovered delivery being delivered", || async {
        engine
            .dispatcher
            .delivery(first.id)
            .await
            .expect("read")
            .expect("found")
            .0
            .state
            == DeliveryState::Delivered
    })
    .await;
    engine
        .dispatcher
        .redeliver(first.id)
        .await
        .expect("redeliver")
        .done()
        .expect("found");
    let got = receiver.wait_for(5, WAIT).await;
    assert_eq!(
        got[4].header("x-hooktap-webhook-delivery-id"),
        first.id.to_string()
    );
    assert!(
        engine
            .dispatcher
            .redeliver(Uuid::now_v7())
            .await
            .expect("redeliver")
            == hooktap::store::Requeued::Gone
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_signs_too_during_its_grace_period() {
    let receiver = TestReceiver::start(200).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec("std", &receiver.url());
    s.signature = Profile::Standard;
    s.secret = "whsec_b2xkIHNlY3JldCBvbGQgc2VjcmV0".to_owned();
    {
        // The first run knows the old secret only.
        let store = SledStore::open(&StoreConfig {
            path: dir.path().join("data"),
            flush: FlushMode::EveryEvent,
            retention: Duration::from_secs(3600),
            min_free_space: 0,
            backend: Default::default(),
        })
        .expect("open");
        let engine = Engine::new(
            Arc::new(store),
            Vec::new(),
            delivery_config(&[]),
            Default::default(),
        )
        .expect("engine");
        engine
            .sync_webhooks(std::slice::from_ref(&s), Duration::from_secs(3600))
            .await
            .expect("sync");
        engine.store().flush().await.expect("flush");
    }
    // sled lets go of its file lock once its background flusher has stopped, which may be a
    // moment after the last handle is dropped.
    let db = dir.path().join("data");
    wait_until(WAIT, "the first run letting go of the store", || async {
        !SledStore::locked_by_another(&db)
    })
    .await;
    s.secret = "whsec_bmV3IHNlY3JldCBuZXcgc2VjcmV0".to_owned();
    let engine = Running::start_in(dir, &[s], &["127.0.0.0/8"]).await;
    engine.order(1);
    let got = receiver.wait_for(1, WAIT).await;
    let r = &got[0];
    let mut signed = format!(
        "{}.{}.",
        r.header("webhook-id"),
        r.header("webhook-timestamp")
    )
    .into_bytes();
    signed.extend_from_slice(&r.body);
    let sign = |b64: &str| {
        use hmac::Mac;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
        mac.update(&signed);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    };
    let expected = format!(
        "{} {}",
        sign("bmV3IHNlY3JldCBuZXcgc2VjcmV0"),
        sign("b2xkIHNlY3JldCBvbGQgc2VjcmV0")
    );
    assert_eq!(r.header("webhook-signature"), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_resolving_to_loopback_is_blocked_unless_allowed() {
    let receiver = TestReceiver::start(200).await;
    let url = format!("http://localhost:{}/hooks", receiver.addr.port());
    let engine = Running::start(&[spec("crm", &url)], &[]).await;
    let id = engine.id("crm");
    engine.order(1);
    let attempts = wait_for_value(WAIT, "an attempt being recorded", || async {
        let list = engine
            .dispatcher
            .deliveries(id, 1)
            .await
            .expect("deliveries");
        let (_, attempts) = engine
            .dispatcher
            .delivery(list.first()?.id)
            .await
            .expect("read")
            .expect("found");
        (!attempts.is_empty()).then_some(attempts)
    })
    .await;
    assert!(
        attempts[0]
            .summary
            .contains("are blocked: it is a loopback address"),
        "{}",
        attempts[0].summary
    );
    assert!(receiver.received().is_empty(), "the request never left");

    let allowed = Running::start(&[spec("crm", &url)], &["127.0.0.0/8", "::1/128"]).await;
    allowed.order(2);
    receiver.wait_for(1, WAIT).await;
}

/// An HTTPS receiver with a self-signed certificate: hooktap must refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_certificate_fails_the_delivery() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            if acceptor.accept(socket).await.is_ok() {
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let engine = Running::start(
        &[spec(
            "tls",
            &format!("https://127.0.0.1:{}/hooks", addr.port()),
        )],
        &["127.0.0.0/8"],
    )
    .await;
    let id = engine.id("tls");
    engine.order(1);
    let summary = wait_for_value(WAIT, "an attempt being recorded", || async {
        let list = engine
            .dispatcher
            .deliveries(id, 1)
            .await
            .expect("deliveries");
        list.first()?.last_summary.clone()
    })
    .await;
    assert!(summary.contains("certificate"), "{summary}");
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no TLS session was established"
    );
}

/// A webhook as the admin API would receive it.
fn input(value: serde_json::Value) -> hooktap::webhook::WebhookInput {
    serde_json::from_value(value).expect("webhook input")
}

/// Regression: a status set through the API reverted when another field was edited (the
/// stored spec carried the creation-time status and re-applied it).
#[tokio::test(flavor = "multi_thread")]
async fn a_status_set_through_the_api_survives_editing_other_fields() {
    let receiver = TestReceiver::start(200).await;
    let engine = Running::start(&[], &["127.0.0.0/8"]).await;
    let d = &engine.dispatcher;
    let created = d
        .create_webhook(input(json!({
            "name": "crm", "url": receiver.url(), "secret": "s", "topics": ["order.*"],
            "status": "paused"
        })))
        .await
        .expect("create");
    assert_eq!(created.status, WebhookStatus::Paused);
    let active = d
        .update_webhook(created.id, input(json!({"status": "active"})))
        .await
        .expect("activate");
    assert_eq!(active.status, WebhookStatus::Active);
    let edited = d
        .update_webhook(created.id, input(json!({"retry": "1s,2s"})))
        .await
        .expect("edit");
    assert_eq!(
        edited.status,
        WebhookStatus::Active,
        "editing retry keeps the status"
    );
    assert_eq!(
        d.store()
            .webhook(created.id)
            .await
            .expect("read")
            .map(|w| w.status),
        Some(WebhookStatus::Active),
        "and so does the stored record"
    );

    // A duplicate starts disabled; once activated, editing its topics keeps it active.
    let copy = d.duplicate_webhook(created.id).await.expect("duplicate");
    assert_eq!(copy.status, WebhookStatus::Disabled);
    d.update_webhook(copy.id, input(json!({"status": "active"})))
        .await
        .expect("activate the copy");
    let copy = d
        .update_webhook(copy.id, input(json!({"topics": ["order.created"]})))
        .await
        .expect("edit the copy");
    assert_eq!(copy.status, WebhookStatus::Active);
    assert_eq!(copy.disabled_reason, None);
}

/// Regression: a webhook deleted while one of its sends was in flight was written back when
/// the send finished, and came back (active) after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_deleted_during_a_send_stays_deleted() {
    let receiver = TestReceiver::start(200).await;
    receiver.set_delay(Duration::from_millis(1500));
    let engine = Running::start(&[spec("crm", &receiver.url())], &["127.0.0.0/8"]).await;
    let id = engine.id("crm");
    let d = &engine.dispatcher;
    engine.order(1);
    receiver.wait_for(1, WAIT).await;
    assert_eq!(d.requests_in_flight(), 1, "the send is out");
    d.delete_webhook(id).await.expect("delete").expect("found");
    // The receiver answers now; wait for the send to finish.
    let deadline = std::time::Instant::now() + WAIT;
    while d.requests_in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the send never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.store().webhook(id).await.expect("read"), None);
    assert!(d.store().webhooks().await.expect("list").is_empty());
    assert!(d.webhook(id).is_none());
}

/// Regression: `concurrency` (and `ordered`, `mode`) changed through the API took effect only
/// after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_change_takes_effect_at_once() {
    let receiver = TestReceiver::start(200).await;
    // Every request hangs far longer than the test waits.
    receiver.set_delay(Duration::from_secs(60));
    let mut one = spec("crm", &receiver.url());
    one.concurrency = 1;
    // No timeout frees a slot while the test waits.
    one.timeout = Duration::from_secs(120);
    let engine = Running::start(&[one], &["127.0.0.0/8"]).await;
    let id = engine.id("crm");
    for n in 0..3 {
        engine.order(n);
    }
    receiver.wait_for(1, WAIT).await;
    engine
        .dispatcher
        .update_webhook(id, input(json!({"concurrency": 3})))
        .await
        .expect("update");
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "three requests in flight at once");
}

/// Regression: receivers that hang held every global slot (8 webhooks × 8 slots = the default
/// 64), and a healthy webhook's deliveries waited until they timed out.
#[tokio::test(flavor = "multi_thread")]
async fn hanging_receivers_do_not_starve_a_healthy_one() {
    let hanging = TestReceiver::start(200).await;
    hanging.set_delay(Duration::from_secs(60));
    let healthy = TestReceiver::start(200).await;
    let mut specs: Vec<WebhookSpec> = (0..8)
        .map(|i| {
            let mut s = spec(&format!("stuck {i}"), &hanging.url());
            s.concurrency = 8;
            s.timeout = Duration::from_secs(120);
            s
        })
        .collect();
    let mut ok = spec("healthy", &healthy.url());
    ok.topics = vec!["scan.*".to_owned()];
    specs.push(ok);
    let mut config = delivery_config(&["127.0.0.0/8"]);
    config.concurrency = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Running::start_with(dir, &specs, config).await;
    for n in 0..8 {
        engine.order(n);
    }
    let stuck = hanging.wait_for(64, WAIT).await;
    assert_eq!(
        stuck.len(),
        64,
        "every global slot is held by a hanging receiver"
    );
    let topic = Topic::parse("scan.created").expect("topic");
    engine
        .dispatcher
        .intake()
        .enqueue(Event::new(&topic, "test", json!({"scan": 1})))
        .expect("enqueue");
    // The hanging receivers answer after 60 s; the healthy one gets its event long before.
    let got = healthy.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "the healthy webhook got its delivery");
}
