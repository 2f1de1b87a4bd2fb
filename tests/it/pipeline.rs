//! Rules → stored event → signed webhook, through the real proxy, one test per rule feature.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Once `exchanges` proxied exchanges are finished, the store holds exactly the events of
/// `topics` (in any order): no other event was derived from them.
async fn assert_events_only(proxy: &TestProxy, exchanges: u64, topics: &[&str]) {
    proxy.wait_exchanges(exchanges).await;
    let events = proxy.admin_get("/events?per_page=100").await;
    let mut got: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["topic"].as_str())
        .collect();
    got.sort_unstable();
    let mut want = topics.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the events derived: {events:#}");
}

/// The webhook `name` has exactly `n` deliveries, all done: nothing more will be sent to it.
async fn assert_deliveries_done(proxy: &TestProxy, name: &str, n: usize) {
    let deliveries = proxy.wait_deliveries_final(name, n).await;
    assert_eq!(deliveries.len(), n, "{deliveries:#?}");
}

#[tokio::test]
async fn a_new_order_is_delivered_signed_with_every_header() {
    let (app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "topics = [\"order.*\"]"))
            .await;
    let r = client()
        .post(proxy.url("/orders"))
        .json(&json!({"email": "a@example.com", "event_id": 3, "tickets": 2}))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 201);
    let got = receiver.wait_for(1, WAIT).await;
    let hook = &got[0];
    assert_eq!(
        hook.json(),
        json!({"id": 1, "status": "new", "email": "a@example.com", "event_id": 3, "tickets": 2, "total": 45.5, "location": "1"})
    );
    assert_eq!(hook.header("content-type"), "application/json");
    assert_eq!(
        hook.header("user-agent"),
        format!("hooktap/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(hook.header("x-hooktap-webhook-topic"), "order.created");
    assert_eq!(hook.header("x-hooktap-webhook-resource"), "order");
    assert_eq!(hook.header("x-hooktap-webhook-event"), "created");
    assert_eq!(
        hook.header("x-hooktap-webhook-source"),
        "https://shop.test/"
    );
    assert_eq!(
        hook.header("x-hooktap-webhook-id").len(),
        36,
        "webhook id is a UUID"
    );
    assert_eq!(
        hook.header("x-hooktap-webhook-delivery-id").len(),
        36,
        "delivery id is a UUID"
    );
    assert_eq!(
        hook.header("x-hooktap-webhook-signature"),
        expected_signature("secret-crm", &hook.body)
    );
    assert_eq!(
        app.orders_created.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn a_status_or_when_that_does_not_match_produces_nothing() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream).webhook("all", &receiver, "")).await;
    let c = client();
    // 422: the status does not match `status = [201]`.
    let r = c
        .post(proxy.url("/orders"))
        .json(&json!({"fail": true}))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 422);
    r.bytes().await.expect("body");
    // 201 but `status = "pending"`: the `when` does not hold.
    let r = c
        .post(proxy.url("/orders?status=pending"))
        .json(&json!({"email": "p@example.com"}))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 201);
    r.bytes().await.expect("body");
    // A GET on the same path matches no rule's method.
    let r = c.get(proxy.url("/orders")).send().await.expect("proxied");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("body");
    // The one that matches.
    c.post(proxy.url("/orders"))
        .json(&json!({"email": "ok@example.com"}))
        .send()
        .await
        .expect("proxied")
        .bytes()
        .await
        .expect("body");
    receiver.wait_for(1, WAIT).await;
    assert_events_only(&proxy, 4, &["order.created"]).await;
    assert_deliveries_done(&proxy, "all", 1).await;
    let got = receiver.received();
    assert_eq!(
        got.len(),
        1,
        "only the matching exchange becomes a webhook: {got:#?}"
    );
    assert_eq!(got[0].json()["email"], "ok@example.com");
}

#[tokio::test]
async fn path_parameters_form_bodies_and_catch_all_routes() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream).webhook("all", &receiver, "")).await;
    let c = client();
    c.patch(proxy.url("/orders/42"))
        .json(&json!({"tickets": 3}))
        .send()
        .await
        .expect("proxied");
    c.post(proxy.url("/scans"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("ticket=T-100&gate=north")
        .send()
        .await
        .expect("proxied");
    c.get(proxy.url("/orders/42/tickets/2026/all.pdf"))
        .header("user-agent", "scanner/1")
        .send()
        .await
        .expect("proxied");
    let got = receiver.wait_for(3, WAIT).await;
    let by_topic = |t: &str| {
        got.iter()
            .find(|r| r.header("x-hooktap-webhook-topic") == t)
            .unwrap_or_else(|| panic!("no {t} webhook in {got:#?}"))
            .json()
    };
    assert_eq!(
        by_topic("order.updated"),
        json!({"id": "42", "changes": {"tickets": 3}, "order": {"id": "42", "tickets": 3}})
    );
    let scan = by_topic("scan.created");
    assert_eq!(
        (scan["ticket"].as_str(), scan["gate"].as_str()),
        (Some("T-100"), Some("north"))
    );
    let download = by_topic("download.tickets");
    assert_eq!(download["order"], "42");
    assert_eq!(download["file"], "2026/all.pdf");
    assert_eq!(download["user_agent"], "scanner/1");
}

#[tokio::test]
async fn several_rules_can_match_one_exchange_and_webhooks_filter_by_topic() {
    let (_app, upstream) = TestUpstream::start().await;
    let orders = TestReceiver::start(200).await;
    let audit = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "audit every order"
topic = "audit.order"
method = "POST"
path = "/orders"
status = ["2xx", "4xx"]
payload = "$.request.body"
"#;
    let setup = Setup::new(upstream)
        .webhook("orders", &orders, "topics = [\"order.*\"]")
        .webhook("audit", &audit, "topics = [\"audit.*\"]")
        .rules(rules);
    let proxy = TestProxy::start(&setup).await;
    let c = client();
    c.post(proxy.url("/orders"))
        .json(&json!({"email": "two@example.com"}))
        .send()
        .await
        .expect("proxied")
        .bytes()
        .await
        .expect("body");
    c.post(proxy.url("/orders"))
        .json(&json!({"fail": true}))
        .send()
        .await
        .expect("proxied")
        .bytes()
        .await
        .expect("body");
    let got = audit.wait_for(2, WAIT).await;
    assert!(
        got.iter()
            .all(|r| r.header("x-hooktap-webhook-topic") == "audit.order")
    );
    assert_eq!(
        got.iter()
            .filter(|r| r.json() == json!({"fail": true}))
            .count(),
        1
    );
    let got = orders.wait_for(1, WAIT).await;
    assert_events_only(&proxy, 2, &["audit.order", "audit.order", "order.created"]).await;
    assert_deliveries_done(&proxy, "orders", 1).await;
    assert_eq!(orders.received().len(), 1, "the 422 is no order.created");
    assert_eq!(got[0].header("x-hooktap-webhook-topic"), "order.created");
    assert_eq!(got[0].json()["email"], "two@example.com");
}

#[tokio::test]
async fn required_fields_query_strings_and_text_bodies() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let rules = r#"
[[rule]]
name = "echo with token"
topic = "echo.received"
method = "POST"
path = "/echo"
required = ["token"]
[rule.payload]
token = "$.request.body.token"
page = "$.request.query.page"
text = "$.response.body"
"#;
    let setup = Setup::new(upstream)
        .webhook("all", &receiver, "")
        .rules(rules);
    let proxy = TestProxy::start(&setup).await;
    let c = client();
    let r = c
        .post(proxy.url("/echo"))
        .json(&json!({"no_token": 1}))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 200);
    r.bytes().await.expect("body");
    c.post(proxy.url("/echo?page=2"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=abc")
        .send()
        .await
        .expect("proxied")
        .bytes()
        .await
        .expect("body");
    let got = receiver.wait_for(1, WAIT).await;
    assert_events_only(&proxy, 2, &["echo.received"]).await;
    assert_deliveries_done(&proxy, "all", 1).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "without the required token there is no event"
    );
    assert_eq!(
        got[0].json(),
        json!({"token": "abc", "page": "2", "text": {"token": "abc"}})
    );
}

#[tokio::test]
async fn a_bodyless_204_answer_is_an_event() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let proxy = TestProxy::start(&Setup::new(upstream).webhook("all", &receiver, "")).await;
    let r = client()
        .delete(proxy.url("/orders/9"))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 204);
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("x-hooktap-webhook-topic"), "order.deleted");
    assert_eq!(got[0].json(), json!({"id": "9"}));
}
