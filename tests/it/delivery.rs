//! Delivery outcomes: retries along the schedule, redirects, final failure, restarts.

use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_failed_attempt_is_retried_with_the_same_delivery_id_and_body() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(500).await;
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"1s,1s\""))
            .await;
    post_order(&proxy, "r@example.com").await;
    receiver.wait_for(1, WAIT).await;
    receiver.set_status(200);
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "a delivered webhook is not sent again"
    );
}

#[tokio::test]
async fn redirects_are_failures_and_are_not_followed() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(302).await;
    let proxy =
        TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "retry = \"1s\"")).await;
    post_order(&proxy, "r@example.com").await;
    receiver.wait_for(1, WAIT).await;
    receiver.set_status(204);
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
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    proxy.stop().await;
    receiver.set_status(200);
    proxy.spawn().await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(
        got[1].header("x-hooktap-webhook-delivery-id"),
        first[0].header("x-hooktap-webhook-delivery-id")
    );
    assert_eq!(got[1].json()["email"], "r@example.com");
}

#[tokio::test]
async fn a_webhook_keeps_its_id_across_restarts() {
    let (_app, upstream) = TestUpstream::start().await;
    let receiver = TestReceiver::start(200).await;
    let mut proxy = TestProxy::start(&Setup::new(upstream).webhook("crm", &receiver, "")).await;
    post_order(&proxy, "r@example.com").await;
    receiver.wait_for(1, WAIT).await;
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
