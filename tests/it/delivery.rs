//! Delivery outcomes: retries along the schedule, redirects, final failure, restarts.

use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_delivery_id_and_body() {
    let (_app, upstream) = TestUpstream::start().await;
    // 500 to the first attempt, 200 after: the schedule still has a retry left when it succeeds.
    let receiver = TestReceiver::start(200).await;
    receiver.script(&[500]);
    let proxy = TestProxy::start(&Setup::new(upstream).webhook(
        "crm",
        &receiver,
        "retry = \"200ms,200ms\"",
    ))
    .await;
    post_order(&proxy, "r@example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[0].header("x-hooktap-webhook-delivery-id"),
        got[1].header("x-hooktap-webhook-delivery-id")
    );
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(
        got[1].header("x-hooktap-webhook-signature"),
        expected_signature("secret-crm", &got[1].body)
    );
    let done = proxy.wait_deliveries_final("crm", 1).await;
    assert_eq!(
        (done[0]["state"].as_str(), done[0]["attempts"].as_u64()),
        (Some("delivered"), Some(2)),
        "{done:#?}"
    );
    assert_eq!(
        receiver.received().len(),
        2,
        "a delivered webhook is not sent again"
    );
}

#[tokio::test]
async fn redirects_are_failures_and_are_not_followed() {
    let (_app, upstream) = TestUpstream::start().await;
    // A redirect to the first attempt, 204 to the retry.
    let receiver = TestReceiver::start(204).await;
    receiver.script(&[302]);
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"200ms\""))
            .await;
    post_order(&proxy, "r@example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert!(
        got.iter().all(|r| r.path == "/hooks"),
        "the Location was never requested: {got:#?}"
    );
}

#[tokio::test]
async fn a_delivery_fails_finally_when_the_schedule_is_used_up() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(503).await;
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"500ms\""))
            .await;
    post_order(&proxy, "r@example.com").await;
    receiver.wait_for(2, WAIT).await;
    let done = proxy.wait_deliveries_final("crm", 1).await;
    assert_eq!(
        (done[0]["state"].as_str(), done[0]["attempts"].as_u64()),
        (Some("failed"), Some(2)),
        "{done:#?}"
    );
    assert_eq!(
        receiver.received().len(),
        2,
        "one attempt plus one retry, then no more"
    );
    assert!(
        proxy.log().contains("delivery failed finally"),
        "the final failure is logged:\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let mut proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"2s\"")).await;
    post_order(&proxy, "r@example.com").await;
    let first = receiver.wait_for(1, WAIT).await;
    // The failed attempt is recorded, with its retry 2 s later, before the restart: what
    // survives is a scheduled retry (a stop mid-attempt would send it again anyway).
    wait_until(WAIT, "the failed first attempt being recorded", || async {
        let d = proxy.deliveries("crm").await;
        d.len() == 1 && d[0]["attempts"] == 1
    })
    .await;
    proxy.stop().await;
    assert_eq!(
        receiver.received().len(),
        1,
        "the retry came before the stop: this test needs a longer schedule"
    );
    receiver.set_status(200);
    proxy.spawn().await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].header("x-hooktap-webhook-delivery-id"),
        first[0].header("x-hooktap-webhook-delivery-id")
    );
    assert_eq!(got[1].json()["email"], "r@example.com");
    let done = proxy.wait_deliveries_final("crm", 1).await;
    assert_eq!(
        (done[0]["state"].as_str(), done[0]["attempts"].as_u64()),
        (Some("delivered"), Some(2)),
        "the retry after the restart delivered it: {done:#?}"
    );
}

#[tokio::test]
async fn a_webhook_keeps_its_id_across_restarts() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let mut proxy = TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "")).await;
    post_order(&proxy, "r@example.com").await;
    receiver.wait_for(1, WAIT).await;
    // Recorded as delivered before the stop: a stop mid-attempt sends it again after the
    // restart, with the same delivery id (at-least-once).
    proxy.wait_deliveries_final("crm", 1).await;
    proxy.stop().await;
    proxy.spawn().await;
    post_order(&proxy, "r@example.com").await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[0].header("x-hooktap-webhook-id"),
        got[1].header("x-hooktap-webhook-id")
    );
    assert_ne!(
        got[0].header("x-hooktap-webhook-delivery-id"),
        got[1].header("x-hooktap-webhook-delivery-id")
    );
}

#[tokio::test]
async fn delivery_runs_below_the_processs_priority_and_the_rest_at_it() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let setup = Setup::new(upstream).webhook("crm", &receiver, "");
    let proxy = TestProxy::start_edited(&setup, |c| {
        c.replace("[delivery]\n", "[delivery]\nnice = 7\n")
    })
    .await;
    let pid = proxy.pid().expect("running");
    // The process's own (inherited from this test, which may run under `nice` itself).
    let base = process_nice(pid);
    // The durability barrier's thread is started with the store, at the process's priority
    // (a thread inherits its creator's: started by delivery's first event, it would run low).
    let before = threads_nice(pid);
    assert_eq!(nice_of(&before, "hooktap-commit"), [base], "{before:?}");
    // Delivery works at the lower priority (and its thread has started some sends).
    post_order(&proxy, "n@example.com").await;
    receiver.wait_for(1, WAIT).await;
    let threads = threads_nice(pid);
    let delivery = nice_of(&threads, "BG delivery");
    assert!(!delivery.is_empty(), "a delivery thread: {threads:?}");
    assert!(
        delivery.iter().all(|nice| *nice == (base + 7).min(19)),
        "every delivery thread 7 levels below the process: {threads:?}"
    );
    let proxying = nice_of(&threads, "hooktap proxy");
    assert!(!proxying.is_empty(), "proxy threads: {threads:?}");
    assert!(
        proxying
            .iter()
            .chain(&nice_of(&threads, "hooktap-commit"))
            .all(|nice| *nice == base),
        "the proxy's and the barrier's threads keep the process's priority: {threads:?}"
    );
}
