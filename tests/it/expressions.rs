//! Expressions, payload shapes, `for_each`, `dedupe` and computed topics through the real
//! proxy. The app's `/echo` answers with the request's body, so each test's request says what
//! the response carries.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Posts `body` to `/echo` with `headers`; the app answers 200 with the same body.
async fn echo(proxy: &TestProxy, body: &Value, headers: &[(&str, &str)]) {
    let mut req = client().post(proxy.url("/echo")).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("proxied");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("the app's JSON answer"),
        *body
    );
}

/// The events stored once `exchanges` exchanges are finished, oldest first.
async fn events_after(proxy: &TestProxy, exchanges: u64) -> Vec<Value> {
    proxy.wait_exchanges(exchanges).await;
    let mut events = proxy
        .admin_get("/events?per_page=100")
        .await
        .as_array()
        .cloned()
        .expect("events");
    events.reverse();
    events
}

#[tokio::test]
async fn a_cel_when_matches_and_a_runtime_error_is_counted_as_a_miss() {
    let (_app, upstream) = TestUpstream::start().await;
    let rules = r#"
[[rule]]
name = "paid with tickets"
topic = "order.paid"
method = "POST"
path = "/echo"
when = "response.body.status in ['new', 'paid'] && int(request.headers['x-tickets']) > 2"
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules)).await;
    echo(
        &proxy,
        &json!({"status": "paid", "n": 1}),
        &[("x-tickets", "3")],
    )
    .await;
    echo(
        &proxy,
        &json!({"status": "old", "n": 2}),
        &[("x-tickets", "3")],
    )
    .await;
    echo(
        &proxy,
        &json!({"status": "paid", "n": 3}),
        &[("x-tickets", "2")],
    )
    .await;
    // No header: `request.headers['x-tickets']` fails, so the rule does not match.
    echo(&proxy, &json!({"status": "paid", "n": 4}), &[]).await;
    let events = events_after(&proxy, 4).await;
    let got: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e["topic"].as_str().unwrap_or_default(), &e["payload"]["n"]))
        .collect();
    assert_eq!(got, vec![("order.paid", &json!(1))], "{events:#?}");
    assert_eq!(
        proxy.metric_sum("hooktap_rule_misses_total").await,
        1.0,
        "the missing header is one miss"
    );
    assert!(
        proxy.log().contains("rule did not match"),
        "the miss is logged at debug"
    );
}

#[tokio::test]
async fn a_nested_payload_keeps_order_with_constants_and_computed_values() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "order shaped"
topic = "order.created"
method = "POST"
path = "/echo"
required = ["id"]

[rule.payload]
id = "$.response.body.id"
source = { value = "shop" }
total_cents = { expr = "int(response.body.total * 100.0)" }

[rule.payload.customer]
email = { expr = "response.body.email.lowerAscii()" }
vip = { value = true }

[rule.payload.customer.address]
city = "$.response.body.city"
tags = { value = ["a", 1] }
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules).webhook(
        "crm",
        &receiver,
        "topics = [\"order.*\"]",
    ))
    .await;
    echo(
        &proxy,
        &json!({"id": 9, "total": 45.5, "email": "Ann@Example.COM", "city": "Graz"}),
        &[],
    )
    .await;
    // No id: `required` holds the event back.
    echo(&proxy, &json!({"total": 1.0, "email": "x@y"}), &[]).await;
    let got = receiver.wait_for(1, WAIT).await;
    // Compared as text: key order is part of what is promised.
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        r#"{"id":9,"source":"shop","total_cents":4550,"customer":{"email":"ann@example.com","vip":true,"address":{"city":"Graz","tags":["a",1]}}}"#
    );
    assert_eq!(events_after(&proxy, 2).await.len(), 1);
}

#[tokio::test]
async fn a_response_with_two_tickets_derives_two_events() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "tickets issued"
topic = "ticket.issued"
method = "POST"
path = "/echo"
for_each = "$.response.body.tickets[*]"
when = "item.state == 'issued'"

[rule.payload]
ticket = "$.item.code"
seat = { expr = "item.seat + 1" }
order = "$.response.body.order"
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules).webhook(
        "scanner",
        &receiver,
        "topics = [\"ticket.*\"]",
    ))
    .await;
    echo(
        &proxy,
        &json!({"order": 5, "tickets": [
            {"code": "T-1", "seat": 10, "state": "issued"},
            {"code": "T-2", "seat": 11, "state": "issued"},
            {"code": "T-3", "seat": 12, "state": "void"},
        ]}),
        &[],
    )
    .await;
    let mut got: Vec<Value> = receiver
        .wait_for(2, WAIT)
        .await
        .iter()
        .map(Received::json)
        .collect();
    got.sort_by_key(|v| v["ticket"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"ticket": "T-1", "seat": 11, "order": 5}),
            json!({"ticket": "T-2", "seat": 12, "order": 5}),
        ]
    );
    let events = events_after(&proxy, 1).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events.iter().all(|e| e["topic"] == "ticket.issued"));
}

#[tokio::test]
async fn one_idempotency_key_derives_one_event_also_across_a_restart() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "order created once"
topic = "order.created"
method = "POST"
path = "/echo"
dedupe = { key = "$.request.headers['idempotency-key']", window = "10m" }
"#;
    let mut proxy = TestProxy::start(&Setup::new(upstream).rules(rules).webhook(
        "crm",
        &receiver,
        "topics = [\"order.*\"]",
    ))
    .await;
    let order = json!({"email": "a@example.com"});
    echo(&proxy, &order, &[("idempotency-key", "k-1")]).await;
    echo(&proxy, &order, &[("idempotency-key", "k-1")]).await;
    assert_eq!(events_after(&proxy, 2).await.len(), 1);
    assert_eq!(
        proxy.metric_sum("hooktap_events_deduplicated_total").await,
        1.0
    );
    proxy.stop().await;
    proxy.spawn().await;
    // After the restart: the key is still known; another key is a new event.
    echo(&proxy, &order, &[("idempotency-key", "k-1")]).await;
    echo(&proxy, &order, &[("idempotency-key", "k-2")]).await;
    let events = events_after(&proxy, 2).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        proxy.metric_sum("hooktap_events_deduplicated_total").await,
        1.0,
        "the repeat after the restart"
    );
    let rules_view = proxy.admin_get("/rules").await;
    let rule = rules_view
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "order created once")
        .expect("the rule is listed");
    assert_eq!(rule["deduplicated"], 1);
    assert_eq!(
        rule["features"],
        json!(["dedupe $.request.headers['idempotency-key'] within 10m"])
    );
    assert_eq!(receiver.wait_for(2, WAIT).await.len(), 2);
}

#[tokio::test]
async fn a_computed_topic_names_the_event_and_an_invalid_one_is_a_miss() {
    let (_app, upstream) = TestUpstream::start().await;
    let rules = r#"
[[rule]]
name = "order status"
topic = { expr = "'order.' + response.body.status" }
method = "POST"
path = "/echo"
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules)).await;
    echo(&proxy, &json!({"status": "paid"}), &[]).await;
    echo(&proxy, &json!({"status": "Not A Topic"}), &[]).await;
    let events = events_after(&proxy, 2).await;
    let topics: Vec<&str> = events.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert_eq!(topics, vec!["order.paid"]);
    assert_eq!(events[0]["resource"], "order");
    assert_eq!(events[0]["event"], "paid");
    assert_eq!(proxy.metric_sum("hooktap_rule_misses_total").await, 1.0);
    let metrics = proxy.metrics_text().await;
    assert!(
        metrics.contains(r#"hooktap_rule_misses_total{rule="order status",reason="bad_topic"} 1"#),
        "{metrics}"
    );
}

/// A computed topic in hooktap's own `hooktap.*` namespace, or longer than 128 bytes, is a
/// `bad_topic` miss; the events metric counts a computed-topic rule's events under the rule
/// only (topic label `computed`), so requests cannot make up label values.
#[tokio::test]
async fn computed_topics_stay_out_of_hooktap_and_out_of_metric_labels() {
    let (_app, upstream) = TestUpstream::start().await;
    let rules = r#"
[[rule]]
name = "any topic"
topic = { expr = "response.body.topic" }
method = "POST"
path = "/echo"
"#;
    let proxy = TestProxy::start(&Setup::new(upstream).rules(rules)).await;
    let long = format!("order.{}", "x".repeat(123));
    assert_eq!(long.len(), 129);
    for topic in ["order.paid", "hooktap.webhook.disabled", long.as_str()] {
        echo(&proxy, &json!({ "topic": topic }), &[]).await;
    }
    let events = events_after(&proxy, 3).await;
    let topics: Vec<&str> = events.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert_eq!(topics, vec!["order.paid"]);
    let metrics = proxy.metrics_text().await;
    assert!(
        metrics.contains(r#"hooktap_rule_misses_total{rule="any topic",reason="bad_topic"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hooktap_events_total{topic="computed",rule="any topic"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"topic="order.paid""#), "{metrics}");
}

/// Runs `hooktap <command>` on a project with `rules` as its one rule file.
fn run_on(rules: &str, command: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
    std::fs::write(dir.path().join("hooktap.toml"), CONFIG).expect("write");
    std::fs::write(dir.path().join("rules/shop.toml"), rules).expect("write");
    std::process::Command::new(hooktap_bin())
        .args([command, "-c"])
        .arg(dir.path().join("hooktap.toml"))
        .output()
        .expect("run hooktap")
}

/// `check` fails with a line naming `place` and containing every one of `words`.
fn assert_check_says(rules: &str, place: &str, words: &[&str]) {
    let out = run_on(rules, "check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check should fail:\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(place) && words.iter().all(|w| l.contains(w))),
        "expected a line with `{place}` and {words:?} in:\n{stderr}"
    );
}

#[test]
fn bad_expressions_are_config_errors_naming_file_line_and_expression() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "when = \"response.body.status ==\"\n",
            "rules/shop.toml:7:",
            &[
                "when: invalid expression `response.body.status ==`",
                "syntax error",
            ],
        ),
        (
            "when = \"respons.body.status == 'paid'\"\n",
            "rules/shop.toml:7:",
            &[
                "`respons.body.status == 'paid'`",
                "unknown variable `respons`",
            ],
        ),
        (
            "when = \"response.status > 'x'\"\n",
            "rules/shop.toml:7:",
            &["`response.status > 'x'`", "no `>` for (int, string)"],
        ),
        (
            "when = \"response.status + 1\"\n",
            "rules/shop.toml:7:",
            &["must be a bool"],
        ),
        (
            "when = \"item.id == 1\"\n",
            "rules/shop.toml:7:",
            &["unknown variable `item`"],
        ),
        (
            "for_each = \"$.response.status\"\n",
            "rules/shop.toml:7:",
            &["for_each `$.response.status` selects a number, not an array"],
        ),
        (
            "dedupe = { key = \"request.headers['k'] +\", window = \"10m\" }\n",
            "rules/shop.toml:7:",
            &["dedupe key: invalid expression `request.headers['k'] +`"],
        ),
        (
            "dedupe = { key = \"$.request.headers['k']\", window = \"soon\" }\n",
            "rules/shop.toml:7:",
            &["dedupe window `soon`"],
        ),
        (
            "[rule.payload]\nid = \"$.response.body.id\"\nlabel = { expr = \"'n' + response.status\" }\n",
            "rules/shop.toml:9:",
            &["payload field `label`: invalid expression", "no `+`"],
        ),
        (
            "[rule.payload.customer]\nname = { expr = \"request.bdy.name\" }\n",
            "rules/shop.toml:8:",
            &["payload field `customer.name`", "no field `bdy`"],
        ),
    ];
    for (extra, place, words) in cases {
        assert_check_says(&format!("{GOOD_RULE}{extra}"), place, words);
    }
    assert_check_says(
        &GOOD_RULE.replace(
            "topic = \"order.created\"",
            "topic = { expr = \"response.status\" }",
        ),
        "rules/shop.toml:3:",
        &[
            "topic: invalid expression `response.status`",
            "must be a string",
        ],
    );
}

#[test]
fn check_lists_and_test_runs_the_new_rule_forms() {
    let rules = r#"[[rule]]
name = "tickets"
topic = { expr = "'ticket.' + item.state" }
method = "POST"
path = "/orders"
for_each = "$.response.body.tickets"
when = "item.seat > 0"
dedupe = { key = "item.code", window = "1h" }

[rule.payload]
code = "$.item.code"

[[test]]
name = "two tickets"
request = { method = "POST", path = "/orders" }
response = { status = 201, body = { tickets = [{ code = "A", seat = 1, state = "issued" }, { code = "B", seat = 2, state = "issued" }, { code = "C", seat = 0, state = "issued" }] } }
expect = { topic = "ticket.issued", count = 2 }

[[test]]
name = "a seat that is not a number"
request = { method = "POST", path = "/orders" }
response = { status = 201, body = { tickets = [{ code = "A", seat = "x", state = "issued" }] } }
expect = { topic = "ticket.issued" }
"#;
    let out = run_on(rules, "check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("topic = 'ticket.' + item.state: tickets"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "rule tickets: when item.seat > 0; for_each $.response.body.tickets; dedupe item.code within 1h"
        ),
        "{stdout}"
    );
    let out = run_on(rules, "test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok   two tickets"), "{stdout}");
    assert!(
        stdout.contains("FAIL a seat that is not a number")
            && stdout.contains("rule `tickets` did not match (error: `item.seat > 0`:"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_transform_reshapes_one_webhooks_body_while_another_gets_the_original() {
    let (_app, upstream) = TestUpstream::start().await;
    let shaped = TestReceiver::start(200).await;
    let plain = TestReceiver::start(200).await;
    let by_api = TestReceiver::start(200).await;
    let proxy = TestProxy::start(
        &Setup::new(upstream)
            .webhook(
                "shaped",
                &shaped,
                "topics = [\"order.*\"]\n\
                 [webhook.transform]\n\
                 order_id = \"$.payload.id\"\n\
                 kind = { expr = \"topic.split('.')[1]\" }\n\
                 event = { expr = \"event_id\" }\n\
                 [webhook.transform.billing]\n\
                 email = { expr = \"payload.email.upperAscii()\" }\n\
                 currency = { value = \"EUR\" }\n",
            )
            .webhook("plain", &plain, "topics = [\"order.*\"]"),
    )
    .await;
    proxy.admin_ready().await;
    // The same through the API, and a bad one refused with the field named.
    let api = |method: reqwest::Method, path: &str| {
        client()
            .request(method, proxy.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
    };
    let r = api(reqwest::Method::POST, "/webhooks")
        .json(
            &json!({"name": "api", "url": by_api.url(), "secret": "s", "topics": ["order.*"],
                      "transform": {"id": {"expr": "payload.id"}, "v": {"value": 1}}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    assert_eq!(
        created["transform"],
        json!({"id": {"expr": "payload.id"}, "v": {"value": 1}})
    );
    let r = api(reqwest::Method::POST, "/webhooks")
        .json(
            &json!({"url": by_api.url(), "secret": "s", "topics": ["order.*"],
                      "transform": {"id": {"expr": "response.body.id"}}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["field"], "transform", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown variable `response`")),
        "{e}"
    );

    post_order(&proxy, "a@example.com").await;
    let events = events_after(&proxy, 1).await;
    let event_id = events[0]["id"].as_str().expect("event id");
    let got = shaped.wait_for(1, WAIT).await;
    assert_eq!(
        String::from_utf8_lossy(&got[0].body),
        format!(
            r#"{{"order_id":1,"kind":"created","event":"{event_id}","billing":{{"email":"A@EXAMPLE.COM","currency":"EUR"}}}}"#
        )
    );
    assert_eq!(
        got[0].header("x-hooktap-webhook-signature"),
        expected_signature("secret-shaped", &got[0].body),
        "the shaped body is what is signed"
    );
    assert_eq!(
        plain.wait_for(1, WAIT).await[0].json(),
        events[0]["payload"]
    );
    // The first request `by_api` got is the ping that creating an active webhook sends (an
    // empty body); the event follows.
    let got = by_api.wait_for(2, WAIT).await;
    assert!(got[0].body.is_empty(), "the creation ping comes first");
    assert_eq!(got[1].json(), json!({"id": 1, "v": 1}));
    // `{}` removes the transform: the next event arrives as its payload.
    let id = created["id"].as_str().expect("id");
    let r = api(reqwest::Method::PUT, &format!("/webhooks/{id}"))
        .json(&json!({"transform": {}}))
        .send()
        .await
        .expect("update");
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.expect("json");
    assert!(updated.get("transform").is_none(), "{updated}");
    post_order(&proxy, "b@example.com").await;
    let second = by_api.wait_for(3, WAIT).await;
    assert_eq!(second[2].json()["email"], "b@example.com");
}
