//! What a subscriber asks for, through the real binary and real receivers: per-key ordering,
//! payload filters, rate limits, circuit breaking with early warnings, trace context, and the
//! activation ping when a webhook is created.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(20);

/// `POST /echo` makes an `echo.sent` event whose payload is the request's JSON body, so a
/// test chooses each payload.
const ECHO_RULE: &str = r#"
[[rule]]
name = "echo"
topic = "echo.sent"
method = "POST"
path = "/echo"
payload = "$.request.body"
"#;

/// Sends `body` through the proxy as `POST /echo` and reads the whole answer.
async fn echo(proxy: &TestProxy, body: &Value) {
    echo_with(proxy, body, &[]).await;
}

async fn echo_with(proxy: &TestProxy, body: &Value, headers: &[(&str, &str)]) {
    let mut request = client().post(proxy.url("/echo")).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("proxied: {e}; hooktap log:\n{}", proxy.log()));
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("echo body");
}

/// The `(k, n)` of each request that got `status`, in arrival order.
fn keyed(received: &[Received], ok: impl Fn(&Received) -> bool) -> Vec<(String, u64)> {
    received
        .iter()
        .filter(|r| ok(r))
        .map(|r| {
            let p = r.json();
            (
                p["k"].as_str().unwrap_or_default().to_owned(),
                p["n"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn of_key(list: &[(String, u64)], key: &str) -> Vec<u64> {
    list.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, n)| *n)
        .collect()
}

/// A key whose receiver fails holds up only that key: the others arrive, each in order, while
/// it waits, and a restart changes nothing of that; once it recovers, the failing key's
/// deliveries arrive in order too.
#[tokio::test]
async fn a_failing_key_blocks_only_itself_and_is_delivered_in_order_after_it_recovers() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    receiver.fail_bodies_containing(Some((r#""k":"A""#, 500)));
    let setup = Setup::new(upstream)
        .webhook(
            "keyed",
            &receiver,
            &format!(
                "topics = [\"echo.*\"]\nordering_key = \"$.k\"\nconcurrency = 4\nfailure_threshold = 0\ncircuit_failures = 0\nretry = \"{}\"",
                // Retries every 100 ms for a minute: A keeps failing until the test lets it.
                vec!["100ms"; 600].join(",")
            ),
        )
        .rules(ECHO_RULE);
    let mut proxy = TestProxy::start(&setup).await;
    let sequence = [
        ("A", 1),
        ("B", 1),
        ("A", 2),
        ("C", 1),
        ("B", 2),
        ("A", 3),
        ("C", 2),
        ("B", 3),
    ];
    for (k, n) in sequence {
        echo(&proxy, &json!({"k": k, "n": n})).await;
    }
    // B and C flow while A fails and retries.
    wait_until(WAIT, "B and C delivered while A fails", || async {
        let ok = keyed(&receiver.received(), |r| !r.json()["k"].eq("A"));
        ok.len() >= 5
    })
    .await;
    let a_attempts = wait_for_value(WAIT, "A retried at least 3 times", || async {
        let a = of_key(&keyed(&receiver.received(), |_| true), "A");
        (a.len() >= 3).then_some(a)
    })
    .await;
    let others = keyed(&receiver.received(), |r| !r.json()["k"].eq("A"));
    assert_eq!(of_key(&others, "B"), [1, 2, 3], "B in event order");
    assert_eq!(of_key(&others, "C"), [1, 2], "C in event order");
    assert!(
        a_attempts.iter().all(|n| *n == 1),
        "only A's first event is tried while it fails: {a_attempts:?}"
    );

    // A restart keeps the keys: A's later events still wait behind its first.
    proxy.stop().await;
    let before_restart = receiver.received().len();
    proxy.spawn().await;
    wait_until(WAIT, "A retried after the restart", || async {
        receiver.received().len() > before_restart
    })
    .await;
    assert!(
        of_key(&keyed(&receiver.received(), |_| true), "A")
            .iter()
            .all(|n| *n == 1),
        "after the restart too, only A's first event is tried"
    );

    // A recovers: its three events arrive, in order, the first one first.
    receiver.fail_bodies_containing(None);
    let delivered = proxy.wait_deliveries_final("keyed", 8).await;
    assert!(
        delivered.iter().all(|d| d["state"] == "delivered"),
        "{delivered:#?}"
    );
    let all = keyed(&receiver.received(), |_| true);
    let a = of_key(&all, "A");
    let first_try_of = |n: u64| a.iter().position(|m| *m == n).expect("sent");
    assert!(
        first_try_of(1) < first_try_of(2) && first_try_of(2) < first_try_of(3),
        "A's events were first sent in order: {a:?}"
    );
    assert_eq!(
        a.iter().filter(|n| **n != 1).count(),
        2,
        "A's later events were each sent once, after the first was delivered: {a:?}"
    );
}

/// A webhook with a filter gets exactly the events whose payload passes all its
/// predicates; a webhook without one gets them all (and shows every event went through).
#[tokio::test]
async fn a_filter_lets_through_exactly_the_matching_events() {
    let (_app, upstream) = TestUpstream::start().await;
    let filtered = TestReceiver::start(200).await;
    let witness = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "big-gold",
            &filtered,
            "topics = [\"echo.*\"]\nfilter = [{ path = \"$.total\", gt = 100 }, { path = \"$.tier\", in = [\"gold\", \"platinum\"] }]",
        )
        .webhook("all", &witness, "topics = [\"echo.*\"]")
        .rules(ECHO_RULE);
    let proxy = TestProxy::start(&setup).await;
    let events = [
        json!({"n": 1, "total": 150, "tier": "gold"}),
        json!({"n": 2, "total": 50, "tier": "gold"}),
        json!({"n": 3, "total": 500, "tier": "silver"}),
        json!({"n": 4, "total": "250", "tier": "platinum"}),
        json!({"n": 5, "tier": "gold"}),
        json!({"n": 6, "total": 101, "tier": "gold"}),
    ];
    for e in &events {
        echo(&proxy, e).await;
    }
    // A bad filter is refused through the API too, naming the field and the entry.
    for (filter, says) in [
        (
            json!([{"path": "$.total", "gt": 1}, {"path": "$.tier"}]),
            "filter[1]: `when` on `$.tier` needs one operator",
        ),
        (
            json!([{"path": "$.a", "matches": "("}]),
            "filter[0]: invalid regex",
        ),
        (
            json!([{"path": "$.a", "above": 1}]),
            "unknown field `above`",
        ),
    ] {
        let r = client()
            .post(proxy.admin_url("/webhooks"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"url": witness.url(), "secret": "s", "topics": ["*"], "filter": filter, "status": "paused"}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.expect("json");
        assert!(
            e["field"] == "filter" && e["message"].as_str().unwrap_or_default().contains(says),
            "{filter}: {e}"
        );
    }
    witness.wait_for(events.len(), WAIT).await;
    proxy.wait_deliveries_final("all", events.len()).await;
    tokio::time::sleep(QUIET).await;
    let mut got: Vec<u64> = filtered
        .received()
        .iter()
        .map(|r| r.json()["n"].as_u64().expect("n"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [1, 4, 6], "total > 100 and a gold or platinum tier");
    assert_eq!(
        proxy.deliveries("big-gold").await.len(),
        3,
        "events that do not pass get no delivery at all"
    );
}

/// `rate_limit = "5/s"`: 24 deliveries queued at once go out one every 200 ms or more, none
/// lost; the wait shows in the age of the oldest pending delivery meanwhile.
#[tokio::test]
async fn a_rate_limit_spreads_deliveries_evenly_and_loses_none() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook(
            "paced",
            &receiver,
            "topics = [\"echo.*\"]\nrate_limit = \"5/s\"\nconcurrency = 8\nstatus = \"paused\"",
        )
        .rules(ECHO_RULE);
    let proxy = TestProxy::start(&setup).await;
    // Queued while paused, so that all 24 are waiting when sending starts.
    for n in 0..24 {
        echo(&proxy, &json!({"n": n})).await;
    }
    let id = proxy.webhook_id("paced").await;
    let r = client()
        .put(proxy.admin_url(&format!("/webhooks/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"status": "active"}))
        .send()
        .await
        .expect("resume");
    // The activation ping is the first request.
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let got = receiver.wait_for(25, WAIT).await;
    let deliveries: Vec<&Received> = got.iter().filter(|r| !r.body.is_empty()).collect();
    assert_eq!(deliveries.len(), 24);
    let mut ns: Vec<u64> = deliveries
        .iter()
        .map(|r| r.json()["n"].as_u64().expect("n"))
        .collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..24).collect::<Vec<_>>(), "none lost, none twice");
    let spread = deliveries[23].at - deliveries[0].at;
    assert!(
        spread > Duration::from_secs(3),
        "24 requests at 5/s take 23 spacings of 200 ms: {spread:?}"
    );
    // Smoothed: no two requests close together (a burst at an interval's edge would be).
    let closest = deliveries
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .min()
        .expect("pairs");
    assert!(
        closest >= Duration::from_millis(150),
        "requests are spaced, not bursts: {closest:?}"
    );
    proxy.wait_deliveries_final("paced", 24).await;
}

/// A `traceparent` on the app's request reaches the webhook in the same trace, with a new
/// span id (the webhook request's own), the same flags and the `tracestate` as it came.
#[tokio::test]
async fn the_apps_trace_context_reaches_the_webhook() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook("traced", &receiver, "topics = [\"echo.*\"]")
        .rules(ECHO_RULE);
    let proxy = TestProxy::start(&setup).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    echo_with(
        &proxy,
        &json!({"n": 1}),
        &[
            ("traceparent", &format!("00-{trace_id}-{app_span}-01")),
            ("tracestate", "shop=checkout"),
        ],
    )
    .await;
    echo(&proxy, &json!({"n": 2})).await;
    let got = receiver.wait_for(2, WAIT).await;
    let traced = got.iter().find(|r| r.json()["n"] == 1).expect("traced");
    let parts: Vec<&str> = traced.header("traceparent").split('-').collect();
    assert_eq!(parts.len(), 4, "{:?}", traced.header("traceparent"));
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"));
    assert_eq!(parts[2].len(), 16);
    assert_ne!(
        parts[2], app_span,
        "the webhook request is a span of its own"
    );
    assert_eq!(traced.header("tracestate"), "shop=checkout");
    let untraced = got.iter().find(|r| r.json()["n"] == 2).expect("untraced");
    assert_eq!(
        untraced.header("traceparent"),
        "",
        "no trace context, none invented"
    );
}

/// Creating an active webhook pings it first: a failing URL is refused with 409 and
/// nothing is created; created paused, it is not pinged. The CLI reads the secret from an
/// environment variable or standard input, and gets the same refusal.
#[tokio::test]
async fn an_active_create_against_a_failing_url_is_refused_and_creates_nothing() {
    let (_app, upstream) = TestUpstream::start().await;
    let failing = TestReceiver::start(500).await;
    let healthy = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream)).await;
    proxy.admin_ready().await;
    let create = |body: Value| {
        client()
            .post(proxy.admin_url("/webhooks"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let r = create(json!({"name": "dead", "url": failing.url(), "secret": "s", "topics": ["*"]}))
        .await
        .expect("create");
    assert_eq!(r.status(), 409);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(answer["code"], "ping_failed", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{answer}"
    );
    assert_eq!(failing.received().len(), 1, "one ping");
    assert_eq!(
        proxy.admin_get("/webhooks/count").await,
        json!({"count": 0}),
        "nothing was created"
    );

    let r = create(json!({"name": "later", "url": failing.url(), "secret": "s", "topics": ["*"], "status": "paused"}))
        .await
        .expect("create");
    assert_eq!(r.status(), 201, "paused: created without a ping");
    assert_eq!(failing.received().len(), 1, "no second ping");

    // The CLI: the secret from the environment, or from standard input, never on the line.
    let url = healthy.url();
    let out = cli(
        &proxy,
        &[
            "webhooks",
            "add",
            "--name",
            "from-env",
            "--url",
            &url,
            "--topics",
            "echo.*",
            "--secret-env",
            "CRM_SECRET",
            "--rate-limit",
            "50/s",
            "--ordering-key",
            "$.k",
            "--header",
            "X-Team: crm",
        ],
        Some(("CRM_SECRET", "from-the-environment")),
        None,
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("\"rate_limit\": \"50/s\"")
            && stdout.contains("\"ordering_key\": \"$.k\"")
            && !stdout.contains("from-the-environment"),
        "{stdout}"
    );
    let out = cli(
        &proxy,
        &[
            "webhooks",
            "add",
            "--name",
            "from-stdin",
            "--url",
            &url,
            "--topics",
            "echo.*",
            "--secret-stdin",
        ],
        None,
        Some("typed-secret\n"),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failing_url = failing.url();
    let out = cli(
        &proxy,
        &[
            "webhooks",
            "add",
            "--name",
            "dead",
            "--url",
            &failing_url,
            "--topics",
            "*",
            "--secret-stdin",
        ],
        None,
        Some("x\n"),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("409"), "{stderr}");

    assert_eq!(
        proxy.admin_get("/webhooks/count").await,
        json!({"count": 3}),
        "later, from-env and from-stdin"
    );
    let pings = healthy.received();
    assert_eq!(pings.len(), 2, "each active create pinged once");
    assert_eq!(
        pings[0].header("x-team"),
        "crm",
        "static headers go with every request"
    );
    assert_eq!(
        pings[1].header("x-hooktap-webhook-signature"),
        expected_signature("typed-secret", &pings[1].body),
        "the secret read from standard input signs"
    );
}

/// Runs `hooktap <args> -c <config>` with `env` set and `stdin` written to it.
async fn cli(
    proxy: &TestProxy,
    args: &[&str],
    env: Option<(&str, &str)>,
    stdin: Option<&str>,
) -> std::process::Output {
    let mut command = Command::new(hooktap_bin());
    command
        .args(args)
        .arg("-c")
        .arg(&proxy.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((k, v)) = env {
        command.env(k, v);
    }
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("run hooktap");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(pipe);
        child.wait_with_output().expect("hooktap output")
    })
    .await
    .expect("join")
}

/// After `circuit_failures` failed requests in a row the circuit opens: nothing is sent
/// for the cool-down, then one probe; a failed probe opens it again, a successful one closes
/// it and the rest flows. Meanwhile `hooktap.webhook.failing` warns at 50 % and 70 % of
/// `failure_threshold`, before the webhook is disabled.
#[tokio::test]
async fn the_circuit_opens_probes_and_closes_with_early_warnings_before_disabling() {
    let (_app, upstream) = TestUpstream::start().await;
    let flaky = TestReceiver::start(500).await;
    let ops = TestReceiver::start(200).await;
    let cooldown = Duration::from_millis(600);
    let setup = Setup::new(upstream)
        .webhook(
            "flaky",
            &flaky,
            "topics = [\"echo.*\"]\nretry = \"\"\nfailure_threshold = 10\ncircuit_failures = 3\ncircuit_cooldown = \"600ms\"\nconcurrency = 1",
        )
        .webhook("ops", &ops, "topics = [\"hooktap.webhook.*\"]")
        .rules(ECHO_RULE);
    let proxy = TestProxy::start(&setup).await;
    let id = proxy.webhook_id("flaky").await;
    for n in 0..10 {
        echo(&proxy, &json!({"n": n})).await;
    }
    // Three failures open the circuit.
    flaky.wait_for(3, WAIT).await;
    let view = wait_for_value(WAIT, "the circuit open", || async {
        let w = proxy.admin_get(&format!("/webhooks/{id}")).await;
        (w["circuit"] == "open").then_some(w)
    })
    .await;
    assert!(view["circuit_open_until"].is_string(), "{view}");
    // Probes, one per cool-down, each failing, until 7 requests failed in all.
    let got = flaky.wait_for(7, WAIT).await;
    for pair in got[2..7].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= cooldown - Duration::from_millis(50),
            "while open nothing is sent; one probe per cool-down: {gap:?}"
        );
    }
    // The receiver recovers: the next probe closes the circuit and the rest flows.
    flaky.set_status(200);
    let done = proxy.wait_deliveries_final("flaky", 10).await;
    let delivered = done.iter().filter(|d| d["state"] == "delivered").count();
    assert!(delivered >= 3, "{done:#?}");
    let w = proxy.admin_get(&format!("/webhooks/{id}")).await;
    assert_eq!(
        (w["circuit"].as_str(), w["status"].as_str()),
        (Some("closed"), Some("active")),
        "{w}"
    );
    // The early warnings: 5 and 7 consecutive failures of 10.
    let warnings = wait_for_value(WAIT, "two failing warnings", || async {
        let list: Vec<Value> = ops
            .received()
            .iter()
            .filter(|r| r.header("x-hooktap-webhook-topic") == "hooktap.webhook.failing")
            .map(Received::json)
            .collect();
        (list.len() >= 2).then_some(list)
    })
    .await;
    let percents: Vec<u64> = warnings
        .iter()
        .map(|w| w["percent"].as_u64().expect("percent"))
        .collect();
    assert_eq!(percents, [50, 70], "{warnings:#?}");
    assert_eq!(warnings[0]["name"], "flaky");
    assert_eq!(warnings[0]["consecutive_failures"], 5);
    assert_eq!(warnings[1]["failure_threshold"], 10);
}
