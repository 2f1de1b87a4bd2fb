//! Webhook behaviour through the real binary: statuses, signature profiles, failure handling,
//! modes and isolation, each against real receivers on loopback.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

fn hmac_b64(key: &[u8], message: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_paused_webhook_keeps_its_deliveries_until_resumed() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    // An active webhook beside it: its delivery of the same event shows the delivery loop has
    // been through the queue, where a paused webhook's delivery would have gone out too.
    let witness = TestReceiver::start(200).await;
    let mut proxy = TestProxy::start(
        &Setup::new(upstream)
            .webhook("crm", &receiver, "status = \"paused\"")
            .webhook("witness", &witness, ""),
    )
    .await;
    post_order(&proxy, "p@example.com").await;
    witness.wait_for(1, WAIT).await;
    tokio::time::sleep(QUIET).await;
    assert!(
        receiver.received().is_empty(),
        "a paused webhook sends nothing"
    );
    let kept = proxy.deliveries("crm").await;
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(
        (kept[0]["state"].as_str(), kept[0]["attempts"].as_u64()),
        (Some("pending"), Some(0)),
        "the paused webhook's delivery is kept, never attempted"
    );
    proxy.stop().await;
    let config = std::fs::read_to_string(&proxy.config)
        .expect("config")
        .replace("status = \"paused\"", "status = \"active\"");
    std::fs::write(&proxy.config, config).expect("config");
    proxy.spawn().await;
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].json()["email"],
        "p@example.com",
        "the delivery queued while paused goes out after resuming"
    );
}

#[tokio::test]
async fn gone_disables_at_once_and_ops_are_told() {
    let (_app, upstream) = TestUpstream::start().await;
    let shop = TestReceiver::start(410).await;
    let ops = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook("shop", &shop, "topics = [\"order.*\"]\nretry = \"1s\"")
        .webhook("ops", &ops, "topics = [\"hooktap.*\"]");
    let proxy = TestProxy::start(&setup).await;
    post_order(&proxy, "a@example.com").await;
    let told = ops.wait_for(1, WAIT).await;
    assert_eq!(
        told[0].header("x-hooktap-webhook-topic"),
        "hooktap.webhook.disabled"
    );
    let payload = told[0].json();
    assert_eq!(payload["name"], "shop");
    assert_eq!(payload["reason"], "the receiver answered 410 Gone");
    assert_eq!(payload["id"].as_str().map(str::len), Some(36));
    // The webhook is disabled in the same step that records the 410 attempt as final.
    let first = proxy.deliveries("shop").await;
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(
        (first[0]["state"].as_str(), first[0]["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "410 is not retried (the schedule had one more attempt)"
    );
    post_order(&proxy, "b@example.com").await;
    proxy.wait_exchanges(2).await;
    let after = proxy.deliveries("shop").await;
    assert_eq!(
        after.len(),
        1,
        "a disabled webhook gets no new delivery: {after:#?}"
    );
    assert_eq!(
        shop.received().len(),
        1,
        "410 is not retried and a disabled webhook gets nothing new"
    );
}

#[tokio::test]
async fn consecutive_failed_deliveries_disable_the_webhook() {
    let (_app, upstream) = TestUpstream::start().await;
    let shop = TestReceiver::start(500).await;
    let ops = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "shop",
            &shop,
            "topics = [\"order.*\"]\nretry = \"\"\nfailure_threshold = 2",
        )
        .webhook("ops", &ops, "topics = [\"hooktap.*\"]");
    let proxy = TestProxy::start(&setup).await;
    post_order(&proxy, "1@example.com").await;
    shop.wait_for(1, WAIT).await;
    // Once the failure is recorded as final, the threshold has been checked (in the same step).
    proxy.wait_deliveries_final("shop", 1).await;
    let id = proxy.webhook_id("shop").await;
    let shop_hook = proxy.admin_get(&format!("/webhooks/{id}")).await;
    assert_eq!(
        shop_hook["status"], "active",
        "one failure is below the threshold: {shop_hook}"
    );
    post_order(&proxy, "2@example.com").await;
    // The first failure reached 50 % of the threshold: a `hooktap.webhook.failing` warning.
    let told = ops.wait_for(2, WAIT).await;
    let topics: Vec<&str> = told
        .iter()
        .map(|r| r.header("x-hooktap-webhook-topic"))
        .collect();
    assert_eq!(
        topics,
        ["hooktap.webhook.failing", "hooktap.webhook.disabled"],
        "a warning, then the disabled notice (no warning for the failure that disables)"
    );
    assert_eq!(told[0].json()["percent"], 50);
    assert_eq!(told[1].json()["reason"], "2 consecutive deliveries failed");
    post_order(&proxy, "3@example.com").await;
    proxy.wait_exchanges(3).await;
    let all = proxy.deliveries("shop").await;
    assert_eq!(
        all.len(),
        2,
        "no new deliveries for a disabled webhook: {all:#?}"
    );
    assert_eq!(
        shop.received().len(),
        2,
        "no new deliveries for a disabled webhook"
    );
    let notices = proxy
        .admin_get("/events?topic=hooktap.webhook.disabled")
        .await;
    assert_eq!(
        notices.as_array().map(Vec::len),
        Some(1),
        "one disabled notice, after the second failure only: {notices}"
    );
}

#[tokio::test]
async fn signature_profiles_and_header_prefixes() {
    let (_app, upstream) = TestUpstream::start().await;
    let standard = TestReceiver::start(200).await;
    let mautic = TestReceiver::start(200).await;
    let woo = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "standard",
            &standard,
            "topics = [\"order.*\"]\nsignature = \"standard\"",
        )
        .webhook(
            "mautic",
            &mautic,
            "topics = [\"order.*\"]\nsignature = \"mautic\"",
        )
        .webhook(
            "woo",
            &woo,
            "topics = [\"order.*\"]\nheader_prefix = \"X-WC-Webhook-\"",
        );
    // The standard receiver's secret is in whsec_ form.
    let proxy = TestProxy::start_edited(&setup, |c| {
        c.replace(
            "secret = \"secret-standard\"",
            "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
        )
    })
    .await;
    post_order(&proxy, "s@example.com").await;

    let s = &standard.wait_for(1, WAIT).await[0];
    let id = s.header("webhook-id");
    let ts = s.header("webhook-timestamp");
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&s.body);
    let key = base64::engine::general_purpose::STANDARD
        .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("b64");
    assert_eq!(
        s.header("webhook-signature"),
        format!("v1,{}", hmac_b64(&key, &signed))
    );
    assert!(ts.parse::<i64>().is_ok_and(|t| t > 1_700_000_000));
    assert_eq!(
        s.header("x-hooktap-webhook-signature"),
        "",
        "the standard profile sends only its own headers"
    );

    let m = &mautic.wait_for(1, WAIT).await[0];
    assert_eq!(
        m.header("webhook-signature"),
        hmac_b64(b"secret-mautic", &m.body)
    );

    let w = &woo.wait_for(1, WAIT).await[0];
    assert_eq!(w.header("x-wc-webhook-topic"), "order.created");
    assert_eq!(w.header("x-wc-webhook-resource"), "order");
    assert_eq!(w.header("x-wc-webhook-event"), "created");
    assert_eq!(
        w.header("x-wc-webhook-signature"),
        hmac_b64(b"secret-woo", &w.body)
    );
    assert_eq!(w.header("x-wc-webhook-delivery-id").len(), 36);
}

#[tokio::test]
async fn basic_auth_in_the_url_is_sent_and_never_logged() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let mut setup = Setup::new(upstream).webhook("crm", &receiver, "retry = \"300ms\"");
    setup.webhooks[0].1 = setup.webhooks[0]
        .1
        .replace("http://", "http://shop:pa55w0rd@");
    let proxy = TestProxy::start(&setup).await;
    post_order(&proxy, "auth@example.com").await;
    receiver.set_status(500);
    let got = receiver.wait_for(2, WAIT).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("shop:pa55w0rd")
    );
    assert_eq!(got[0].header("authorization"), expected);
    assert!(
        proxy.log().contains("delivery attempt failed"),
        "{}",
        proxy.log()
    );
    assert!(
        !proxy.log().contains("pa55w0rd"),
        "credentials never reach the log:\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    receiver.script(&[429]);
    receiver.add_header("retry-after", "1");
    // The schedule alone would wait an hour.
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"1h\"")).await;
    post_order(&proxy, "slow-down@example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[0].header("x-hooktap-webhook-delivery-id"),
        got[1].header("x-hooktap-webhook-delivery-id")
    );
}

#[tokio::test]
async fn timeouts_and_dropped_connections_are_retried() {
    let (_app, upstream) = TestUpstream::start().await;
    let slow = TestReceiver::start(200).await;
    slow.set_delay(Duration::from_secs(3));
    // A receiver that accepts connections and closes them without answering.
    let dropper = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dropper_addr = dropper.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = dropper.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let mut setup = Setup::new(upstream)
        .webhook(
            "slow",
            &slow,
            "topics = [\"order.*\"]\ntimeout = \"300ms\"\nretry = \"200ms,200ms,200ms\"",
        )
        .webhook(
            "dropper",
            &slow,
            "topics = [\"order.*\"]\nretry = \"200ms,200ms\"",
        );
    setup.webhooks[1].1 = setup.webhooks[1]
        .1
        .replace(&slow.url(), &format!("http://{dropper_addr}/hooks"));
    let proxy = TestProxy::start(&setup).await;
    post_order(&proxy, "t@example.com").await;
    slow.wait_for(1, WAIT).await;
    slow.set_delay(Duration::ZERO);
    slow.wait_for(2, WAIT).await;
    wait_until(WAIT, "the dropping receiver retried twice", || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    // The third failure is recorded (and logged) after its connection was dropped.
    let dropped = proxy.wait_deliveries_final("dropper", 1).await;
    assert_eq!(
        (
            dropped[0]["state"].as_str(),
            dropped[0]["attempts"].as_u64()
        ),
        (Some("failed"), Some(3)),
        "the dropped delivery fails after its schedule: {dropped:#?}"
    );
    let log = proxy.log();
    assert!(log.contains("timed out"), "{log}");
    assert!(
        log.contains("delivery failed finally"),
        "the dropped deliveries fail after their schedule:\n{log}"
    );
}

#[tokio::test]
async fn a_stuck_receiver_does_not_delay_a_healthy_one() {
    let (_app, upstream) = TestUpstream::start().await;
    let stuck = TestReceiver::start(200).await;
    stuck.set_delay(Duration::from_secs(120));
    let healthy = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "stuck",
            &stuck,
            "topics = [\"order.*\"]\nconcurrency = 2\ntimeout = \"60s\"",
        )
        .webhook("healthy", &healthy, "topics = [\"order.*\"]");
    let proxy = TestProxy::start(&setup).await;
    let mut sent = std::collections::HashMap::new();
    for i in 0..20 {
        let email = format!("{i}@example.com");
        post_order(&proxy, &email).await;
        sent.insert(email, std::time::Instant::now());
    }
    let got = healthy.wait_for(20, WAIT).await;
    assert_eq!(got.len(), 20);
    assert_eq!(
        stuck.received().len(),
        2,
        "the stuck webhook holds only its own two slots"
    );
    // The healthy receiver's lag (response to the client → webhook arrival) while the other hangs.
    let mut lags: Vec<f64> = got
        .iter()
        .filter_map(|r| {
            let email = r.json()["email"].as_str()?.to_owned();
            Some(
                r.at.saturating_duration_since(*sent.get(&email)?)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    assert_eq!(lags.len(), 20);
    println!(
        "RESULT healthy-receiver-lag-ms while another hangs: p50={:.1} max={:.1}",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
}

#[tokio::test]
async fn batch_mode_gathers_deliveries_into_one_request() {
    let (_app, upstream) = TestUpstream::start().await;
    let chrono = TestReceiver::start(200).await;
    let reverse = TestReceiver::start(200).await;
    let by_count = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook("chrono", &chrono, "topics = [\"order.*\", \"scan.*\"]\nmode = \"batch\"\nbatch_interval = \"1s\"")
        .webhook("reverse", &reverse, "topics = [\"order.*\"]\nmode = \"batch\"\nbatch_interval = \"1s\"\nbatch_order = \"reverse\"")
        // An interval longer than the test: only reaching batch_max can send this batch.
        .webhook("by-count", &by_count, "topics = [\"order.*\"]\nmode = \"batch\"\nbatch_interval = \"1h\"\nbatch_max = 2");
    let proxy = TestProxy::start(&setup).await;
    post_order(&proxy, "first@example.com").await;
    post_order(&proxy, "second@example.com").await;
    client()
        .post(proxy.url("/scans"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("ticket=T-1&gate=east")
        .send()
        .await
        .expect("proxied");
    let emails = |v: &Value| -> Vec<String> {
        v["order.created"].as_array().map_or_else(Vec::new, |a| {
            a.iter()
                .map(|p| p["email"].as_str().unwrap_or("").to_owned())
                .collect()
        })
    };
    let got = chrono.wait_for(1, WAIT).await;
    let body = got[0].json();
    assert_eq!(emails(&body), ["first@example.com", "second@example.com"]);
    assert_eq!(body["scan.created"][0]["ticket"], "T-1");
    assert_eq!(
        got[0].header("x-hooktap-webhook-topic"),
        "",
        "a batch of several topics names none"
    );
    assert_eq!(
        got[0].header("x-hooktap-webhook-signature"),
        expected_signature("secret-chrono", &got[0].body)
    );
    let got = reverse.wait_for(1, WAIT).await;
    assert_eq!(
        emails(&got[0].json()),
        ["second@example.com", "first@example.com"]
    );
    assert_eq!(got[0].header("x-hooktap-webhook-topic"), "order.created");
    let got = by_count.wait_for(1, WAIT).await;
    assert_eq!(emails(&got[0].json()).len(), 2);
    // All three of chrono's deliveries are done: nothing is left to send in another request.
    let done = proxy.wait_deliveries_final("chrono", 3).await;
    assert!(
        done.len() == 3 && done.iter().all(|d| d["state"] == "delivered"),
        "{done:#?}"
    );
    assert_eq!(
        chrono.received().len(),
        1,
        "one request for the whole batch"
    );
}

#[tokio::test]
async fn an_ordered_webhook_sends_strictly_in_event_order() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    receiver.script(&[500, 500]);
    let setup = Setup::new(upstream).webhook(
        "ledger",
        &receiver,
        "topics = [\"order.*\"]\nordered = true\nretry = \"300ms,300ms\"",
    );
    let proxy = TestProxy::start(&setup).await;
    for i in 1..=4 {
        post_order(&proxy, &format!("{i}@example.com")).await;
    }
    let got = receiver.wait_for(6, WAIT).await;
    let sequence: Vec<String> = got
        .iter()
        .map(|r| r.json()["email"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        sequence,
        [
            "1@example.com",
            "1@example.com",
            "1@example.com",
            "2@example.com",
            "3@example.com",
            "4@example.com"
        ],
        "the failing head blocks the rest until it succeeds"
    );
}
