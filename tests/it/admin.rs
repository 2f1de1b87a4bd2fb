//! The admin API over real HTTP against the running binary.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

/// A request to the admin API with the token.
fn admin(proxy: &TestProxy, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, proxy.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
}

async fn json_of(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("admin request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn started(setup: &Setup<'_>) -> TestProxy {
    let proxy = TestProxy::start(setup).await;
    proxy.admin_ready().await;
    proxy
}

#[tokio::test]
async fn every_documented_endpoint_exists_and_requires_the_token() {
    let (_app, upstream) = TestUpstream::start().await;
    let proxy = started(&Setup::new(upstream)).await;
    let c = client();
    let some_id = uuid::Uuid::now_v7().to_string();
    for (method, path) in hooktap::admin::openapi::operations() {
        let path = path
            .replace("{id}", &some_id)
            .replace("{delivery_id}", &some_id);
        let method: reqwest::Method = method.parse().expect("method");
        let anonymous = c
            .request(method.clone(), proxy.admin_url(&path))
            .send()
            .await
            .expect("request");
        if path == "/healthz" || path == "/readyz" {
            assert_eq!(anonymous.status(), 200, "{path} answers without a token");
            continue;
        }
        assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
        assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
        let wrong = c
            .request(method.clone(), proxy.admin_url(&path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .expect("request");
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
    }
    let page = c.get(proxy.admin_url("/")).send().await.expect("dashboard");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("<title>hooktap</title>")
    );
    let (status, doc) = json_of(admin(&proxy, reqwest::Method::GET, "/openapi.json")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
}

#[tokio::test]
async fn webhooks_are_managed_over_http() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = started(&Setup::new(upstream)).await;

    let (status, created) = json_of(admin(&proxy, Method::POST, "/webhooks").json(&json!({
        "url": receiver.url(), "secret": "api-secret", "topics": ["order.*"], "retry": "1s"
    })))
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(
        created["name"]
            .as_str()
            .expect("name")
            .starts_with("Webhook created on ")
    );
    assert_eq!(
        (created["status"].as_str(), created["origin"].as_str()),
        (Some("active"), Some("api"))
    );
    assert!(
        !created.to_string().contains("api-secret"),
        "the secret is never returned"
    );
    let pinged = receiver.wait_for(1, WAIT).await;
    assert!(
        pinged[0].body.is_empty(),
        "creating an active webhook pinged it first"
    );

    // Validation names the field; unknown fields and name clashes are refused.
    let (status, e) = json_of(
        admin(&proxy, Method::POST, "/webhooks")
            .json(&json!({"url": "ftp://x", "secret": "s", "topics": ["a.*"]})),
    )
    .await;
    assert_eq!(
        (status, e["code"].as_str(), e["field"].as_str()),
        (400, Some("invalid"), Some("url"))
    );
    let (status, e) =
        json_of(admin(&proxy, Method::POST, "/webhooks").json(&json!({"colour": "red"}))).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().expect("message").contains("colour"));
    let (status, _) = json_of(
        admin(&proxy, Method::PUT, &format!("/webhooks/{id}")).json(&json!({"retry": "soon"})),
    )
    .await;
    assert_eq!(status, 400);

    let (_, listed) = json_of(admin(&proxy, Method::GET, "/webhooks?status=active")).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let (_, count) = json_of(admin(&proxy, Method::GET, "/webhooks/count?status=paused")).await;
    assert_eq!(count["count"], 0);

    // Traffic is delivered to the API-created webhook.
    post_order(&proxy, "api@example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].header("x-hooktap-webhook-signature"),
        expected_signature("api-secret", &got[1].body)
    );

    // A partial update keeps everything else.
    let (status, updated) = json_of(
        admin(&proxy, Method::PUT, &format!("/webhooks/{id}"))
            .json(&json!({"name": "crm", "topics": ["order.*", "scan.*"]})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (updated["name"].as_str(), updated["retry"][0].as_str()),
        (Some("crm"), Some("1s"))
    );

    // Ping sends an empty, signed body and shows both sides.
    let (status, ping) =
        json_of(admin(&proxy, Method::POST, &format!("/webhooks/{id}/ping"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (ping["success"].as_bool(), ping["status"].as_u64()),
        (Some(true), Some(200))
    );
    assert!(
        ping["request_headers"]
            .to_string()
            .contains("X-Hooktap-Webhook-Signature")
    );
    let pinged = receiver.wait_for(3, WAIT).await;
    assert!(pinged[2].body.is_empty());

    // A copy starts disabled; activating it pings first and refuses a failing URL.
    let (status, copy) = json_of(admin(
        &proxy,
        Method::POST,
        &format!("/webhooks/{id}/duplicate"),
    ))
    .await;
    assert_eq!(
        (status, copy["status"].as_str(), copy["name"].as_str()),
        (201, Some("disabled"), Some("crm (copy)"))
    );
    let copy_id = copy["id"].as_str().expect("id").to_owned();
    receiver.set_status(500);
    let (status, e) = json_of(
        admin(&proxy, Method::PUT, &format!("/webhooks/{copy_id}"))
            .json(&json!({"status": "active"})),
    )
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (409, Some("ping_failed")),
        "{e}"
    );
    receiver.set_status(200);
    let (status, activated) = json_of(
        admin(&proxy, Method::PUT, &format!("/webhooks/{copy_id}"))
            .json(&json!({"status": "active"})),
    )
    .await;
    assert_eq!(
        (status, activated["status"].as_str()),
        (200, Some("active"))
    );
    let (_, e) = json_of(
        admin(&proxy, Method::PUT, &format!("/webhooks/{copy_id}")).json(&json!({"name": "crm"})),
    )
    .await;
    assert_eq!(e["code"], "conflict");

    // Counters, reset, delete.
    let (_, w) = json_of(admin(&proxy, Method::GET, &format!("/webhooks/{id}"))).await;
    assert_eq!(w["counters"]["delivered"], 1);
    let (_, w) = json_of(admin(
        &proxy,
        Method::POST,
        &format!("/webhooks/{id}/reset"),
    ))
    .await;
    assert_eq!(w["counters"]["delivered"], 0);
    let (status, deleted) = json_of(admin(
        &proxy,
        Method::DELETE,
        &format!("/webhooks/{copy_id}"),
    ))
    .await;
    assert_eq!(
        (status, deleted["dropped_deliveries"].as_u64()),
        (200, Some(0))
    );
    let (status, e) = json_of(admin(&proxy, Method::GET, &format!("/webhooks/{copy_id}"))).await;
    assert_eq!((status, e["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn deliveries_can_be_inspected_redelivered_and_recovered() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let proxy = started(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"\"")).await;
    let (_, hooks) = json_of(admin(&proxy, Method::GET, "/webhooks")).await;
    let id = hooks[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(hooks[0]["origin"], "config");
    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    post_order(&proxy, "recover@example.com").await;
    receiver.wait_for(1, WAIT).await;

    let failed = wait_for_value(WAIT, "a failed delivery listed", || async {
        let (_, list) = json_of(admin(
            &proxy,
            Method::GET,
            &format!("/webhooks/{id}/deliveries?outcome=failed"),
        ))
        .await;
        list.as_array().and_then(|l| l.first()).cloned()
    })
    .await;
    let delivery_id = failed["id"].as_str().expect("id").to_owned();
    let (status, detail) = json_of(admin(
        &proxy,
        Method::GET,
        &format!("/webhooks/{id}/deliveries/{delivery_id}"),
    ))
    .await;
    assert_eq!(status, 200);
    let attempt = &detail["attempts"][0];
    assert_eq!(
        (
            attempt["response_code"].as_u64(),
            attempt["summary"].as_str()
        ),
        (
            Some(500),
            Some("HTTP 500 Internal Server Error: answer body")
        )
    );
    assert!(
        attempt["request_body"]
            .as_str()
            .expect("body")
            .contains("recover@example.com")
    );
    let (status, _) = json_of(admin(
        &proxy,
        Method::GET,
        "/webhooks/not-a-uuid/deliveries",
    ))
    .await;
    assert_eq!(status, 404);
    let (status, e) = json_of(admin(
        &proxy,
        Method::GET,
        &format!("/webhooks/{id}/deliveries?outcome=lost"),
    ))
    .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("outcome")));

    receiver.set_status(200);
    let until = (time::OffsetDateTime::now_utc() + time::Duration::seconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let since = since
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (status, r) = json_of(
        admin(&proxy, Method::POST, &format!("/webhooks/{id}/recover"))
            .json(&json!({"since": since, "until": until})),
    )
    .await;
    assert_eq!((status, r["requeued"].as_u64()), (200, Some(1)), "{r}");
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got[1].header("x-hooktap-webhook-delivery-id"), delivery_id);

    let (status, _) = json_of(admin(
        &proxy,
        Method::POST,
        &format!("/webhooks/{id}/deliveries/{delivery_id}/redeliver"),
    ))
    .await;
    assert_eq!(status, 200);
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got[2].header("x-hooktap-webhook-delivery-id"), delivery_id);
}

#[tokio::test]
async fn events_rules_metrics_and_the_live_stream() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = started(&Setup::new(upstream).webhook("crm", &receiver, "")).await;

    let mut stream = admin(&proxy, Method::GET, "/events/stream?topic=order.*")
        .send()
        .await
        .expect("stream");
    post_order(&proxy, "live@example.com").await;
    let mut seen = String::new();
    while !seen.contains("live@example.com") {
        let chunk = tokio::time::timeout(WAIT, stream.chunk())
            .await
            .expect("an event in time")
            .expect("chunk")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("event: event") && seen.contains("\"topic\":\"order.created\""),
        "{seen}"
    );

    let (_, events) = json_of(admin(&proxy, Method::GET, "/events?topic=order.*")).await;
    let event = &events[0];
    assert_eq!(
        (event["topic"].as_str(), event["rule"].as_str()),
        (Some("order.created"), Some("order created"))
    );
    let (status, one) = json_of(admin(
        &proxy,
        Method::GET,
        &format!("/events/{}", event["id"].as_str().expect("id")),
    ))
    .await;
    assert_eq!((status, &one), (200, event));
    let (_, none) = json_of(admin(&proxy, Method::GET, "/events?topic=scan.*")).await;
    assert_eq!(none.as_array().map(Vec::len), Some(0));

    let (_, rules) = json_of(admin(&proxy, Method::GET, "/rules")).await;
    let created = rules
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["name"] == "order created")
        .expect("rule")
        .clone();
    assert_eq!(created["events"], 1);

    receiver.wait_for(1, WAIT).await;
    let metrics = admin(&proxy, Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for expected in [
        "hooktap_proxy_requests_total{class=\"2xx\"}",
        "hooktap_events_total{topic=\"order.created\",rule=\"order created\"} 1",
        "hooktap_deliveries_total{webhook=\"crm\",outcome=\"delivered\"} 1",
        "hooktap_pending_deliveries{webhook=\"crm\"} 0",
        "hooktap_delivery_lag_seconds_count 1",
        "hooktap_attempt_duration_seconds_count{webhook=\"crm\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    let ready = client()
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_reload_swaps_rules_and_a_bad_one_keeps_the_running_config() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let extra =
        "[[rule]]\nname = \"echo\"\ntopic = \"echo.v1\"\nmethod = \"POST\"\npath = \"/echo\"\n";
    let mut proxy = started(
        &Setup::new(upstream)
            .webhook("all", &receiver, "")
            .rules(extra),
    )
    .await;
    let rules_file = proxy.dir.path().join("extra-0.toml");
    let echo = |proxy: &TestProxy| {
        client()
            .post(proxy.url("/echo"))
            .json(&json!({"n": 1}))
            .send()
    };

    echo(&proxy).await.expect("proxied");
    assert_eq!(
        receiver.wait_for(1, WAIT).await[0].header("x-hooktap-webhook-topic"),
        "echo.v1"
    );

    std::fs::write(&rules_file, extra.replace("echo.v1", "echo.v2")).expect("write rules");
    let (status, r) = json_of(admin(&proxy, Method::POST, "/reload")).await;
    assert_eq!((status, r["reloaded"].as_bool()), (200, Some(true)), "{r}");
    echo(&proxy).await.expect("proxied");
    assert_eq!(
        receiver.wait_for(2, WAIT).await[1].header("x-hooktap-webhook-topic"),
        "echo.v2"
    );

    std::fs::write(&rules_file, "[[rule]]\nname = \"broken\"\n").expect("write rules");
    let (status, e) = json_of(admin(&proxy, Method::POST, "/reload")).await;
    assert_eq!((status, e["code"].as_str()), (422, Some("invalid_config")));
    assert!(
        e["message"]
            .as_str()
            .expect("message")
            .contains("extra-0.toml"),
        "{e}"
    );
    echo(&proxy).await.expect("proxied");
    assert_eq!(
        receiver.wait_for(3, WAIT).await[2].header("x-hooktap-webhook-topic"),
        "echo.v2",
        "the running rules stay"
    );

    // SIGHUP reloads too (and does not end the process).
    std::fs::write(&rules_file, extra.replace("echo.v1", "echo.v3")).expect("write rules");
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        echo(&proxy).await.expect("still serving after SIGHUP");
        let got = receiver.wait_for(4, WAIT).await;
        if got
            .last()
            .is_some_and(|r| r.header("x-hooktap-webhook-topic") == "echo.v3")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = admin(&proxy, Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hooktap_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_app_gets_forwarding_headers() {
    let (_app, upstream) = TestUpstream::start().await;
    let proxy = started(&Setup::new(upstream)).await;
    let r: Value = client()
        .get(proxy.url("/whoami"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("proxied")
        .json()
        .await
        .expect("json");
    assert_eq!(r["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(r["x-forwarded-proto"], "http");
    assert_eq!(r["x-forwarded-host"], proxy.addr.to_string());
    assert_eq!(
        r["host"],
        proxy.addr.to_string(),
        "the Host header passes unchanged"
    );

    let off = TestProxy::start(&Setup::new(upstream).proxy("forwarded_headers = false")).await;
    let r: Value = client()
        .get(off.url("/whoami"))
        .send()
        .await
        .expect("proxied")
        .json()
        .await
        .expect("json");
    assert_eq!(r["x-forwarded-for"], Value::Null);
}

#[tokio::test]
async fn reloads_under_load_fail_no_request() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy =
        started(&Setup::new(upstream).webhook("crm", &receiver, "topics = [\"order.*\"]")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (proxy.url("/orders"), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c
                    .post(&url)
                    .json(&json!({"email": "load@example.com"}))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, r) = json_of(admin(&proxy, Method::POST, "/reload")).await;
        assert_eq!(status, 200, "{r}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for l in load {
        let (o, f) = l.await.expect("join");
        ok += o;
        failed += f;
    }
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    receiver.wait_for(ok as usize, WAIT).await;
}

#[tokio::test]
async fn logs_can_be_json_lines() {
    let (_app, upstream) = TestUpstream::start().await;
    let mut proxy =
        TestProxy::start_with_args(&Setup::new(upstream), &["--log-format", "json"]).await;
    proxy.stop().await;
    let log = proxy.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "hooktap started"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}

#[tokio::test]
async fn secrets_never_appear_in_output_logs_or_metrics() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let mut setup = Setup::new(upstream).webhook("crm", &receiver, "retry = \"\"");
    setup.webhooks[0].1 = setup.webhooks[0]
        .1
        .replace("http://", "http://shop:url-pass-7731@")
        .replace("secret-crm", "signing-secret-9931");
    let proxy = started(&setup).await;
    post_order(&proxy, "secret@example.com").await;
    receiver.wait_for(1, WAIT).await;
    let (_, hooks) = json_of(admin(&proxy, Method::GET, "/webhooks")).await;
    let id = hooks[0]["id"].as_str().expect("id").to_owned();
    // The ping's answer shows the request it sent: it is API output too.
    let (_, ping) = json_of(admin(&proxy, Method::POST, &format!("/webhooks/{id}/ping"))).await;
    // The failed attempt is recorded (with what was sent) once the delivery is final.
    proxy.wait_deliveries_final("crm", 1).await;
    let mut seen = ping.to_string();
    for path in [
        "/webhooks".to_owned(),
        format!("/webhooks/{id}"),
        format!("/webhooks/{id}/deliveries"),
        "/events".to_owned(),
        "/rules".to_owned(),
        "/metrics".to_owned(),
        "/openapi.json".to_owned(),
    ] {
        seen.push_str(
            &admin(&proxy, Method::GET, &path)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("text"),
        );
    }
    let (_, list) = json_of(admin(
        &proxy,
        Method::GET,
        &format!("/webhooks/{id}/deliveries"),
    ))
    .await;
    for d in list.as_array().into_iter().flatten() {
        let path = format!(
            "/webhooks/{id}/deliveries/{}",
            d["id"].as_str().expect("id")
        );
        seen.push_str(
            &admin(&proxy, Method::GET, &path)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("text"),
        );
    }
    seen.push_str(
        &client()
            .get(proxy.admin_url("/"))
            .send()
            .await
            .expect("dashboard")
            .text()
            .await
            .expect("html"),
    );
    seen.push_str(&proxy.log());
    assert!(
        seen.contains("shop:****") || seen.contains("****@"),
        "credentials appear masked"
    );
    for secret in ["url-pass-7731", "signing-secret-9931", ADMIN_TOKEN] {
        assert!(
            !seen.contains(secret),
            "`{secret}` leaked into API output, the dashboard, metrics or the log"
        );
    }
}

/// Sums one field over a stats answer's buckets.
fn bucket_sum(stats: &Value, field: &str) -> u64 {
    stats["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b[field].as_u64())
        .sum()
}

/// Orders through the real proxy, delivered to a real receiver that fails the first attempt
/// and answers slowly: the console's statistics, overview and event page show those attempts.
#[tokio::test]
async fn stats_overview_and_an_events_deliveries_come_from_real_attempts() {
    use reqwest::Method;
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    receiver.script(&[500]);
    receiver.set_delay(Duration::from_millis(40));
    let proxy = started(&Setup::new(upstream).webhook(
        "crm",
        &receiver,
        "retry = \"100ms\"\ntopics = [\"order.*\"]",
    ))
    .await;
    post_order(&proxy, "ada@example.com").await;
    post_order(&proxy, "bob@example.com").await;
    let deliveries = proxy.wait_deliveries_final("crm", 2).await;
    assert!(
        deliveries.iter().all(|d| d["state"] == "delivered"),
        "{deliveries:?}"
    );
    let id = proxy.webhook_id("crm").await;

    for (window, buckets) in [("hour", 60), ("day", 1440)] {
        let stats = proxy
            .admin_get(&format!("/webhooks/{id}/stats?window={window}"))
            .await;
        assert_eq!(stats["window"], window);
        assert_eq!(stats["bucket_seconds"], 60);
        assert_eq!(stats["buckets"].as_array().map(Vec::len), Some(buckets));
        // Two successes and the one failed first attempt, in the window's last minutes.
        assert_eq!(
            (
                bucket_sum(&stats, "succeeded"),
                bucket_sum(&stats, "failed")
            ),
            (2, 1),
            "{window}"
        );
        let totals = &stats["totals"];
        assert_eq!(
            (&totals["succeeded"], &totals["failed"]),
            (&json!(2), &json!(1))
        );
        let p50 = totals["p50_ms"].as_u64().expect("a median response time");
        let p99 = totals["p99_ms"].as_u64().expect("a p99 response time");
        assert!(
            p50 >= 40 && p99 >= p50,
            "the receiver waits 40 ms: {totals}"
        );
        let lag = totals["lag_p99_ms"].as_u64().expect("a lag");
        assert!(
            lag >= 100 + 40,
            "the retry waited 100 ms after a 40 ms attempt: {totals}"
        );
        assert_eq!(stats["pending"], 0);
        assert!(
            stats["last_error"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains("500")),
            "{}",
            stats["last_error"]
        );
        let empty = stats["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["succeeded"] == 0 && b["failed"] == 0)
            .expect("a minute without attempts");
        assert_eq!(empty["p50_ms"], Value::Null);
    }

    let overview = proxy.admin_get("/overview").await;
    assert_eq!(overview["store"]["backend"], "sled");
    assert_eq!(overview["store"]["journal_backlog"], Value::Null);
    assert_eq!(overview["store"]["pending"], 0);
    let crm = &overview["webhooks"][0];
    assert_eq!((&crm["name"], &crm["id"]), (&json!("crm"), &json!(id)));
    assert_eq!((&crm["succeeded"], &crm["failed"]), (&json!(2), &json!(1)));
    let spark = |k: &str| -> Vec<u64> {
        crm["sparkline"][k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect()
    };
    assert_eq!(spark("succeeded").len(), 60);
    assert_eq!(spark("succeeded").iter().sum::<u64>(), 2);
    assert_eq!(spark("failed").iter().sum::<u64>(), 1);

    // The event whose first attempt failed: its page lists the delivery with both attempts.
    let failed_first = deliveries
        .iter()
        .find(|d| d["attempts"] == 2)
        .expect("the delivery that was retried");
    let event_id = failed_first["event_id"].as_str().expect("event id");
    let listed = proxy
        .admin_get(&format!("/events/{event_id}/deliveries"))
        .await;
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["webhook_name"], "crm");
    assert_eq!(listed[0]["delivery"]["id"], failed_first["id"]);
    let attempts = listed[0]["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["response_code"].clone())
            .collect::<Vec<_>>(),
        vec![json!(500), json!(200)]
    );
    assert!(
        attempts[0]["request_body"]
            .as_str()
            .is_some_and(|b| b.contains("@example.com")),
        "{}",
        attempts[0]
    );
    assert!(
        attempts[0]["request_headers"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    );

    // The payload search finds each order by its customer.
    let found = proxy.admin_get("/events?q=ADA%40EXAMPLE").await;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert!(found[0]["payload"].to_string().contains("ada@example.com"));
    let (status, body) = json_of(admin(&proxy, Method::GET, "/events?q=")).await;
    assert_eq!((status, &body["field"]), (400, &json!("q")));

    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/webhooks/{unknown}/stats"),
        format!("/events/{unknown}/deliveries"),
    ] {
        let (status, body) = json_of(admin(&proxy, Method::GET, &path)).await;
        assert_eq!(
            (status, &body["code"]),
            (404, &json!("not_found")),
            "{path}"
        );
    }
    let (status, body) = json_of(admin(
        &proxy,
        Method::GET,
        &format!("/webhooks/{id}/stats?window=week"),
    ))
    .await;
    assert_eq!((status, &body["field"]), (400, &json!("window")), "{body}");
}

/// A rule beside the example rules that derives one event per valid ticket.
const TICKET_RULES: &str = r#"
[[rule]]
name = "tickets issued"
topic = "ticket.issued"
method = "POST"
path = "/orders/{id}/tickets"
status = [201]
for_each = "$.response.body.tickets"
when = [{ path = "$.item.valid", equals = true }]
[rule.payload]
order = "$.params.id"
ticket = "$.item.code"
"#;

/// `POST /rules/try` with `exchange`; the status and the JSON answer.
async fn try_rules(proxy: &TestProxy, exchange: Value) -> (u16, Value) {
    json_of(admin(proxy, reqwest::Method::POST, "/rules/try").json(&exchange)).await
}

/// An order exchange as the shop answers it: `status` and the order's state.
fn order_exchange(status: u16, state: &str) -> Value {
    json!({
        "request": {"method": "POST", "url": "/orders?source=web",
                    "headers": [["content-type", "application/json"]],
                    "body": "{\"email\": \"ada@example.com\", \"tickets\": 2}"},
        "response": {"status": status,
                     "headers": [["content-type", "application/json"], ["location", "/orders/7"]],
                     "body": format!("{{\"id\": 7, \"status\": \"{state}\", \"total\": 40}}")}
    })
}

/// The loaded rules (the example rules and a `for_each` rule) tried on pasted exchanges: the
/// matches carry the payloads the proxy would derive, the misses say why, and nothing is
/// stored or counted.
#[tokio::test]
async fn trying_rules_on_an_exchange_derives_nothing() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = started(
        &Setup::new(upstream)
            .rules(TICKET_RULES)
            .webhook("crm", &receiver, ""),
    )
    .await;

    let (status, tried) = try_rules(&proxy, order_exchange(201, "new")).await;
    assert_eq!(status, 200, "{tried}");
    assert_eq!(tried["misses"], json!([]));
    assert_eq!(
        tried["matches"],
        json!([{"rule": "order created", "topic": "order.created", "notes": [],
                "events": [{"topic": "order.created", "payload": {
                    "id": 7, "status": "new", "email": "ada@example.com", "event_id": null,
                    "tickets": 2, "total": 40, "location": "7"}}]}])
    );

    // A miss on `when`, and one on the status.
    let (_, tried) = try_rules(&proxy, order_exchange(201, "cancelled")).await;
    assert_eq!(tried["matches"], json!([]));
    assert_eq!(tried["misses"][0]["rule"], "order created");
    assert_eq!(tried["misses"][0]["reason"], "`when` did not hold");
    let (_, tried) = try_rules(&proxy, order_exchange(400, "new")).await;
    assert_eq!(
        tried["misses"],
        json!([{"rule": "order created", "reason": "status 400 is not one the rule takes (201)"}])
    );

    // for_each: one event per valid ticket, with the path parameter.
    let tickets = json!({
        "request": {"method": "POST", "url": "/orders/42/tickets"},
        "response": {"status": 201, "headers": [["content-type", "application/json"]],
                     "body": "{\"tickets\": [{\"code\": \"A\", \"valid\": true}, {\"code\": \"B\", \"valid\": false}, {\"code\": \"C\", \"valid\": true}]}"}
    });
    let (status, tried) = try_rules(&proxy, tickets).await;
    assert_eq!(status, 200, "{tried}");
    assert_eq!(
        tried["matches"],
        json!([{"rule": "tickets issued", "topic": "ticket.issued",
                "notes": ["`when` did not hold for an item"],
                "events": [
                    {"topic": "ticket.issued", "payload": {"order": "42", "ticket": "A"}},
                    {"topic": "ticket.issued", "payload": {"order": "42", "ticket": "C"}}]}])
    );

    // No rule for this path: nothing to say.
    let (_, tried) = try_rules(
        &proxy,
        json!({"request": {"method": "GET", "url": "/health"}, "response": {"status": 200}}),
    )
    .await;
    assert_eq!(tried, json!({"matches": [], "misses": []}));

    // A malformed exchange names its part.
    for (exchange, field) in [
        (
            json!({"request": {"method": "POST", "url": "orders"}, "response": {"status": 201}}),
            "request.url",
        ),
        (
            json!({"request": {"method": "P OST", "url": "/orders"}, "response": {"status": 201}}),
            "request.method",
        ),
        (
            json!({"request": {"method": "POST", "url": "/orders", "headers": [["bad name", "x"]]},
                   "response": {"status": 201}}),
            "request.headers",
        ),
        (
            json!({"request": {"method": "POST", "url": "/orders"}, "response": {"status": 99}}),
            "response.status",
        ),
    ] {
        let (status, body) = try_rules(&proxy, exchange).await;
        assert_eq!(
            (status, &body["code"], &body["field"]),
            (422, &json!("invalid_exchange"), &json!(field)),
            "{body}"
        );
    }
    let (status, body) =
        try_rules(&proxy, json!({"request": {"method": "POST", "url": "/"}})).await;
    assert_eq!(status, 400, "{body}");

    // Nothing was derived: no event, no delivery, no count.
    assert_eq!(proxy.admin_get("/events").await, json!([]));
    let rules = proxy.admin_get("/rules").await;
    assert!(
        rules
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["events"] == 0),
        "{rules}"
    );
    assert_eq!(proxy.metric_sum("hooktap_events_total").await, 0.0);
    assert!(receiver.received().is_empty());
}
