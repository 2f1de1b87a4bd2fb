//! The delivery engine's Rust API (what the admin API serves), run in-process against a real
//! store in a temp directory and real receivers: status changes, deletion, counters,
//! redelivery, recovery, the attempt log, secret rotation and the SSRF guard.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hooktap::config::{DeliveryConfig, FlushMode, StoreConfig};
use hooktap::delivery::Dispatcher;
use hooktap::delivery::ssrf::Guard;
use hooktap::event::{DeliveryState, Event, Topic};
use hooktap::store::Store;
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
    }
}

/// A store in a temp directory and a running dispatcher over it.
struct Running {
    _dir: tempfile::TempDir,
    dispatcher: Arc<Dispatcher>,
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
    }
}

impl Running {
    fn start(specs: &[WebhookSpec], allow: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, specs, allow)
    }

    fn start_in(dir: tempfile::TempDir, specs: &[WebhookSpec], allow: &[&str]) -> Self {
        let store = Arc::new(
            Store::open(&StoreConfig {
                path: dir.path().join("data"),
                flush: FlushMode::Interval(Duration::from_millis(100)),
                retention: Duration::from_secs(3600),
                min_free_space: 0,
            })
            .expect("open store"),
        );
        let config = delivery_config(allow);
        let synced = store
            .sync_webhooks(specs, config.secret_rotation_grace)
            .expect("sync");
        let dispatcher = Arc::new(
            Dispatcher::new(store, synced.webhooks, config, Default::default())
                .expect("dispatcher"),
        );
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
        self.dispatcher.enqueue(&event).expect("enqueue");
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
    );
    let id = engine.id("crm");
    let d = &engine.dispatcher;

    d.set_status(id, WebhookStatus::Paused).expect("pause");
    engine.order(1);
    engine.order(2);
    witness.wait_for(2, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert!(receiver.received().is_empty(), "paused: nothing is sent");
    let kept = d.deliveries(id, 10).expect("deliveries");
    assert_eq!(kept.len(), 2, "paused: deliveries are kept");
    assert!(
        kept.iter()
            .all(|k| k.state == DeliveryState::Pending && k.attempts == 0),
        "paused: never attempted: {kept:#?}"
    );

    d.set_status(id, WebhookStatus::Active).expect("resume");
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
            .expect("reset")
            .expect("found")
            .counters
            .delivered,
        0
    );
    assert_eq!(
        d.store()
            .webhook(id)
            .expect("read")
            .expect("stored")
            .counters
            .delivered,
        0,
        "the reset is stored"
    );

    d.set_status(id, WebhookStatus::Disabled).expect("disable");
    engine.order(3);
    assert_eq!(
        d.deliveries(id, 10).expect("deliveries").len(),
        2,
        "disabled: no new deliveries are queued"
    );

    d.set_status(id, WebhookStatus::Paused).expect("pause");
    engine.order(4);
    engine.order(5);
    assert_eq!(
        d.delete_webhook(id).expect("delete"),
        Some(2),
        "the two pending deliveries are dropped"
    );
    assert!(d.webhook(id).is_none());
    assert!(d.deliveries(id, 10).expect("deliveries").is_empty());
    assert_eq!(d.delete_webhook(id).expect("delete"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_log_has_woocommerce_fields_with_credentials_masked() {
    let receiver = TestReceiver::start(500).await;
    let url = receiver.url().replace("http://", "http://shop:pa55@");
    let engine = Running::start(&[spec("crm", &url)], &["127.0.0.0/8"]);
    let id = engine.id("crm");
    engine.order(7);
    receiver.wait_for(1, WAIT).await;
    let (delivery, attempts) = wait_for_value(WAIT, "the delivery failing", || async {
        let list = engine.dispatcher.deliveries(id, 1).expect("deliveries");
        let d = list.first().filter(|d| d.state == DeliveryState::Failed)?;
        Some(
            engine
                .dispatcher
                .delivery(d.id)
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
    let engine = Running::start(&[spec("crm", &receiver.url())], &["127.0.0.0/8"]);
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

    let first = engine.dispatcher.deliveries(id, 10).expect("deliveries")[0].clone();
    wait_until(WAIT, "the recovered delivery being delivered", || async {
        engine
            .dispatcher
            .delivery(first.id)
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
        .expect("redeliver")
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
            .expect("redeliver")
            .is_none()
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
        let store = Store::open(&StoreConfig {
            path: dir.path().join("data"),
            flush: FlushMode::EveryEvent,
            retention: Duration::from_secs(3600),
            min_free_space: 0,
        })
        .expect("open");
        store
            .sync_webhooks(std::slice::from_ref(&s), Duration::from_secs(3600))
            .expect("sync");
        store.flush().expect("flush");
    }
    s.secret = "whsec_bmV3IHNlY3JldCBuZXcgc2VjcmV0".to_owned();
    let engine = Running::start_in(dir, &[s], &["127.0.0.0/8"]);
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
    let engine = Running::start(&[spec("crm", &url)], &[]);
    let id = engine.id("crm");
    engine.order(1);
    let attempts = wait_for_value(WAIT, "an attempt being recorded", || async {
        let list = engine.dispatcher.deliveries(id, 1).expect("deliveries");
        let (_, attempts) = engine
            .dispatcher
            .delivery(list.first()?.id)
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

    let allowed = Running::start(&[spec("crm", &url)], &["127.0.0.0/8", "::1/128"]);
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
    );
    let id = engine.id("tls");
    engine.order(1);
    let summary = wait_for_value(WAIT, "an attempt being recorded", || async {
        let list = engine.dispatcher.deliveries(id, 1).expect("deliveries");
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
