//! The store contract's test suite: what every [`Store`] backend must do, written once.
//!
//! A backend runs all of it with one line in its tests module:
//!
//! ```ignore
//! crate::store_contract_tests!(|| async {
//!     let guard = ...; // whatever keeps the store's resources alive (a temp dir, a cluster)
//!     (guard, Arc::new(MyStore::connect(...).await) as Arc<dyn Store>)
//! });
//! ```
//!
//! Each check is a plain async function over a fresh, ready store, so a failure names the
//! promise that broke.

use std::collections::HashSet;
use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    AttemptBucket, DeliveryPage, DeliveryQuery, EventQuery, Recorded, Recording, Replaced,
    StatsWindow, Store, Swept,
};
use crate::event::{Attempt, DedupeKey, Delivery, DeliveryState, Event, Topic, unix_ms};
use crate::webhook::{Origin, Webhook, WebhookSpec};

/// Runs every check of the contract as its own `#[tokio::test]`. `$make` builds a fresh,
/// ready store: `|| async { (guard, Arc<dyn Store>) }`, the guard dropped after the test
/// (async, so that a backend can connect to a server while setting up).
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each $make;
            events_and_deliveries_read_back,
            large_payloads_read_back,
            the_queue_is_in_due_order_and_honours_limit_and_skip,
            a_success_leaves_the_queue_and_is_logged,
            a_retry_moves_the_delivery_to_its_new_due_time,
            a_deleted_webhook_is_not_written_back,
            deleting_a_webhook_drops_its_queue,
            requeue_makes_a_finished_delivery_due_again,
            the_sweep_removes_old_finished_records_only,
            events_page_filters_newest_first,
            queue_stats_count_and_age,
            webhooks_are_listed_oldest_first,
            key_heads_are_one_per_key_in_queue_order,
            a_long_ordering_key_is_stored_and_ordered_like_any,
            a_queued_delivery_waits_for_its_due_time,
            a_requeued_key_head_keeps_its_place_and_its_key_waits_for_any_in_flight,
            a_dedupe_claim_holds_for_its_window,
            a_released_dedupe_claim_can_be_claimed_again,
            a_stale_copy_does_not_replace_a_newer_record,
            applying_the_file_keeps_a_change_made_meanwhile,
            requeueing_a_deleted_delivery_says_it_is_gone,
            attempt_stats_count_per_bucket_with_discrete_percentiles,
            an_event_lists_its_deliveries_to_every_webhook,
            events_page_searches_the_payload_text,
            a_page_of_deliveries_counts_every_match,
            a_page_of_deliveries_counts_up_to_its_limit,
            failed_deliveries_are_read_by_creation_window,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        mod contract {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let make = $make;
                    let (_guard, store) = make().await;
                    $crate::store::contract::$name(store).await;
                }
            )*
        }
    };
}

fn spec(name: &str) -> WebhookSpec {
    WebhookSpec::example(name)
}

async fn webhook(store: &Arc<dyn Store>, name: &str) -> Webhook {
    let w = Webhook::new(spec(name), Origin::Api);
    store.put_webhook(&w).await.expect("put webhook");
    w
}

pub(crate) fn event_at(created_at: OffsetDateTime, topic: &str) -> Event {
    let mut e = Event::new(
        &Topic::parse(topic).expect("topic"),
        "r",
        serde_json::json!({"n": 1}),
    );
    e.created_at = created_at;
    e
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// An event with one delivery to `w`, due `delay_ms` after the event, stored.
async fn queued_event(store: &Arc<dyn Store>, w: &Webhook, delay_ms: u64) -> (Event, Delivery) {
    let e = event_at(now(), "order.created");
    let d = Delivery::new(&e, w.id, delay_ms);
    store
        .append(&e, std::slice::from_ref(&d))
        .expect("append event");
    settle(store).await;
    (e, d)
}

/// Attempt `number` of `d` with its outcome: delivered, or a retry a minute later (its queue
/// place moving with it).
pub(crate) fn recorded(d: &Delivery, number: u32, success: bool) -> Recorded {
    let mut after = d.clone();
    after.attempts = number;
    if success {
        after.state = DeliveryState::Delivered;
    } else {
        after.due_ms += 60_000;
        after.queue_ms = after.due_ms;
    }
    Recorded {
        before: d.clone(),
        after,
        attempt: attempt(d, number, success),
    }
}

pub(crate) fn attempt(d: &Delivery, number: u32, success: bool) -> Attempt {
    Attempt {
        id: Uuid::now_v7(),
        delivery_id: d.id,
        webhook_id: d.webhook_id,
        number,
        created_at: now(),
        duration_ms: 1,
        summary: if success { "HTTP 200 OK" } else { "HTTP 500" }.into(),
        success,
        request_method: "POST".into(),
        request_url: String::new(),
        request_headers: vec![],
        request_body: String::new(),
        response_code: Some(if success { 200 } else { 500 }),
        response_message: String::new(),
        response_headers: vec![],
        response_body: String::new(),
    }
}

/// Records a successful first attempt of `d`.
pub(crate) async fn deliver(store: &Arc<dyn Store>, d: &Delivery) -> Delivery {
    finish(store, d, DeliveryState::Delivered).await
}

/// Records a failed last attempt of `d`: it ends failed.
async fn fail(store: &Arc<dyn Store>, d: &Delivery) -> Delivery {
    finish(store, d, DeliveryState::Failed).await
}

/// Records `d`'s first attempt, after which it is in `state`.
async fn finish(store: &Arc<dyn Store>, d: &Delivery, state: DeliveryState) -> Delivery {
    let mut after = d.clone();
    after.state = state;
    after.attempts = 1;
    let change = Recorded {
        before: d.clone(),
        after: after.clone(),
        attempt: attempt(d, 1, state == DeliveryState::Delivered),
    };
    assert_ne!(
        store
            .record_attempts(d.webhook_id, &[change], None)
            .await
            .expect("record"),
        Recording::Gone
    );
    after
}

/// Seven deliveries to a webhook (newest first): three delivered, two failed and two
/// pending, made in that rotation; and one to another webhook.
async fn mixed_deliveries(store: &Arc<dyn Store>) -> (Webhook, Vec<Delivery>) {
    let w = webhook(store, "a").await;
    let other = webhook(store, "b").await;
    let mut all = Vec::new();
    for i in 0..7 {
        let (_, d) = queued_event(store, &w, 0).await;
        all.push(match i % 3 {
            0 => deliver(store, &d).await,
            1 => fail(store, &d).await,
            _ => d,
        });
    }
    queued_event(store, &other, 0).await;
    all.reverse();
    (w, all)
}

/// Makes what was appended visible to the store's readers (a shared store moves its local
/// journal over).
async fn settle(store: &Arc<dyn Store>) {
    store.flush().await.expect("flush");
}

fn none() -> HashSet<Uuid> {
    HashSet::new()
}

pub async fn events_and_deliveries_read_back(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (e, d) = queued_event(&store, &w, 0).await;
    assert_eq!(store.event(e.id).await.expect("event"), Some(e.clone()));
    assert_eq!(
        store.delivery(d.id).await.expect("delivery"),
        Some(d.clone())
    );
    assert_eq!(store.deliveries_of(w.id, 10).await.expect("list"), vec![d]);
    assert_eq!(store.event(Uuid::now_v7()).await.expect("event"), None);
}

pub async fn large_payloads_read_back(store: Arc<dyn Store>) {
    let mut e = event_at(now(), "order.created");
    e.payload = serde_json::json!({"pad": "x".repeat(100_000), "n": [1, 2, 3]});
    store.append(&e, &[]).expect("append");
    settle(&store).await;
    assert_eq!(store.event(e.id).await.expect("event"), Some(e));
}

pub async fn the_queue_is_in_due_order_and_honours_limit_and_skip(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let other = webhook(&store, "b").await;
    let (_, late) = queued_event(&store, &w, 60_000).await;
    let (_, first) = queued_event(&store, &w, 0).await;
    let (_, second) = queued_event(&store, &w, 0).await;
    let (_, elsewhere) = queued_event(&store, &other, 0).await;
    let now_ms = unix_ms(now()) + 1_000;

    let due = store.queued(w.id, now_ms, 10, &none()).await.expect("due");
    assert_eq!(due, vec![first.clone(), second.clone()], "due, in order");
    let all = store
        .queued(w.id, u64::MAX, 10, &none())
        .await
        .expect("all");
    assert_eq!(all, vec![first.clone(), second.clone(), late.clone()]);
    let one = store.queued(w.id, u64::MAX, 1, &none()).await.expect("one");
    assert_eq!(one, vec![first.clone()]);
    let skip: HashSet<Uuid> = [first.id].into();
    let rest = store.queued(w.id, now_ms, 10, &skip).await.expect("rest");
    assert_eq!(
        rest,
        vec![second.clone()],
        "in-flight deliveries are skipped"
    );
    assert_eq!(
        store.next_queued(w.id, &skip).await.expect("next"),
        Some(second.queue_ms)
    );
    assert_eq!(
        store
            .queued(other.id, now_ms, 10, &none())
            .await
            .expect("b"),
        vec![elsewhere]
    );
}

pub async fn a_success_leaves_the_queue_and_is_logged(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    let after = deliver(&store, &d).await;
    assert!(
        store
            .queued(w.id, u64::MAX, 10, &none())
            .await
            .expect("queue")
            .is_empty()
    );
    assert_eq!(store.delivery(d.id).await.expect("read"), Some(after));
    let attempts = store.attempts(d.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].success);
    assert_eq!(store.next_queued(w.id, &none()).await.expect("next"), None);
}

pub async fn a_retry_moves_the_delivery_to_its_new_due_time(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    let mut after = d.clone();
    after.attempts = 1;
    after.due_ms = d.due_ms + 30_000;
    after.queue_ms = after.due_ms;
    let mut counted = w.clone();
    counted.counters.failed = 0;
    counted.counters.retries = 1;
    let change = Recorded {
        before: d.clone(),
        after: after.clone(),
        attempt: attempt(&d, 1, false),
    };
    assert_ne!(
        store
            .record_attempts(w.id, &[change], Some(&counted))
            .await
            .expect("record"),
        Recording::Gone
    );
    assert!(
        store
            .queued(w.id, d.due_ms + 1, 10, &none())
            .await
            .expect("queue")
            .is_empty(),
        "not due at the old time"
    );
    assert_eq!(
        store
            .queued(w.id, after.due_ms, 10, &none())
            .await
            .expect("queue"),
        vec![after]
    );
    assert_eq!(
        store
            .webhook(w.id)
            .await
            .expect("webhook")
            .map(|w| w.counters.retries),
        Some(1),
        "the webhook's record is written with the attempt"
    );
}

pub async fn a_deleted_webhook_is_not_written_back(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    assert_eq!(store.delete_webhook(w.id).await.expect("delete"), 1);
    // A send that was in flight during the deletion finishes now.
    let mut after = d.clone();
    after.state = DeliveryState::Delivered;
    after.attempts = 1;
    let change = Recorded {
        before: d.clone(),
        after,
        attempt: attempt(&d, 1, true),
    };
    let written = store
        .record_attempts(w.id, &[change], Some(&w))
        .await
        .expect("record");
    assert_eq!(
        written,
        Recording::Gone,
        "nothing is recorded for a deleted webhook"
    );
    assert!(!store.save_webhook(&w).await.expect("save"));
    assert_eq!(store.webhook(w.id).await.expect("read"), None);
    assert!(store.webhooks().await.expect("list").is_empty());
    assert_eq!(store.delivery(d.id).await.expect("read"), None);
    assert!(store.attempts(d.id).await.expect("read").is_empty());
    assert!(
        store
            .queued(w.id, u64::MAX, 10, &none())
            .await
            .expect("queue")
            .is_empty()
    );
}

pub async fn deleting_a_webhook_drops_its_queue(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let keep = webhook(&store, "b").await;
    let (_, done) = queued_event(&store, &w, 0).await;
    deliver(&store, &done).await;
    queued_event(&store, &w, 0).await;
    queued_event(&store, &w, 0).await;
    let (_, kept) = queued_event(&store, &keep, 0).await;
    assert_eq!(store.delete_webhook(w.id).await.expect("delete"), 2);
    assert!(
        store
            .deliveries_of(w.id, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(store.queue_stats(w.id).await.expect("stats").pending, 0);
    assert_eq!(
        store
            .queued(keep.id, u64::MAX, 10, &none())
            .await
            .expect("other queue"),
        vec![kept]
    );
    assert_eq!(store.delete_webhook(w.id).await.expect("again"), 0);
}

pub async fn requeue_makes_a_finished_delivery_due_again(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    let done = deliver(&store, &d).await;
    let at = unix_ms(now()) + 5;
    let again = store
        .requeue(&done, at)
        .await
        .expect("requeue")
        .done()
        .expect("requeued");
    assert_eq!(again.id, d.id, "the same id");
    assert_eq!(again.state, DeliveryState::Pending);
    assert_eq!(
        (again.due_ms, again.schedule_start, again.attempts),
        (at, 1, 1)
    );
    assert_eq!(
        store.queued(w.id, at, 10, &none()).await.expect("queue"),
        vec![again.clone()]
    );
    // Requeueing a pending delivery moves it rather than queueing it twice.
    let later = store
        .requeue(&again, at + 10)
        .await
        .expect("requeue")
        .done()
        .expect("requeued");
    assert_eq!(
        store
            .queued(w.id, u64::MAX, 10, &none())
            .await
            .expect("queue"),
        vec![later]
    );
}

pub async fn the_sweep_removes_old_finished_records_only(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let old = now() - time::Duration::days(40);

    let old_done = event_at(old, "order.created");
    let d1 = Delivery::new(&old_done, w.id, 0);
    store
        .append(&old_done, std::slice::from_ref(&d1))
        .expect("append");
    settle(&store).await;
    deliver(&store, &d1).await;

    let old_pending = event_at(old + time::Duration::seconds(1), "order.created");
    let d2 = Delivery::new(&old_pending, w.id, 0);
    store
        .append(&old_pending, std::slice::from_ref(&d2))
        .expect("append");

    let young = event_at(now(), "order.created");
    let d3 = Delivery::new(&young, w.id, 0);
    store
        .append(&young, std::slice::from_ref(&d3))
        .expect("append");
    settle(&store).await;
    deliver(&store, &d3).await;

    let swept = store
        .sweep(now() - time::Duration::days(30))
        .expect("sweep");
    assert_eq!(
        swept,
        Swept {
            events: 1,
            deliveries: 1,
            attempts: 1
        }
    );
    assert!(store.event(old_done.id).await.expect("read").is_none());
    assert!(store.delivery(d1.id).await.expect("read").is_none());
    assert!(store.attempts(d1.id).await.expect("read").is_empty());
    assert!(
        store.event(old_pending.id).await.expect("read").is_some(),
        "a pending delivery keeps its event"
    );
    assert!(store.event(young.id).await.expect("read").is_some());
    assert_eq!(store.deliveries_of(w.id, 10).await.expect("list").len(), 2);
}

pub async fn events_page_filters_newest_first(store: Arc<dyn Store>) {
    let t0 = now() - time::Duration::minutes(10);
    let a = event_at(t0, "order.created");
    let b = event_at(t0 + time::Duration::minutes(1), "scan.created");
    let c = event_at(t0 + time::Duration::minutes(2), "order.deleted");
    for e in [&a, &b, &c] {
        store.append(e, &[]).expect("append");
    }
    settle(&store).await;
    let page = |q: EventQuery| {
        let store = Arc::clone(&store);
        async move { store.events_page(&q).await.expect("page") }
    };
    let all = EventQuery {
        limit: 10,
        ..EventQuery::default()
    };
    assert_eq!(
        page(all.clone()).await,
        vec![c.clone(), b.clone(), a.clone()]
    );
    let orders = EventQuery {
        topic: Some(
            globset::Glob::new("order.*")
                .expect("glob")
                .compile_matcher(),
        ),
        ..all.clone()
    };
    assert_eq!(page(orders.clone()).await, vec![c.clone(), a.clone()]);
    assert_eq!(
        page(EventQuery {
            offset: 1,
            ..orders
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        page(EventQuery {
            since: Some(b.created_at),
            until: Some(c.created_at),
            ..all.clone()
        })
        .await,
        vec![b.clone()]
    );
    assert_eq!(page(EventQuery { limit: 1, ..all }).await, vec![c]);
}

pub async fn queue_stats_count_and_age(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    assert_eq!(
        store.queue_stats(w.id).await.expect("stats"),
        super::QueueStats::default()
    );
    let before = unix_ms(now());
    queued_event(&store, &w, 0).await;
    queued_event(&store, &w, 60_000).await;
    let stats = store.queue_stats(w.id).await.expect("stats");
    assert_eq!(stats.pending, 2);
    let oldest = stats.oldest_ms.expect("an oldest delivery");
    assert!(
        oldest >= before.saturating_sub(1) && oldest <= unix_ms(now()),
        "the oldest delivery's creation time ({oldest}) is around now ({before})"
    );
}

pub async fn webhooks_are_listed_oldest_first(store: Arc<dyn Store>) {
    let a = webhook(&store, "a").await;
    let mut b = webhook(&store, "b").await;
    assert_eq!(
        store.webhooks().await.expect("list"),
        vec![a.clone(), b.clone()]
    );
    b.counters.delivered = 7;
    assert!(store.save_webhook(&b).await.expect("save"));
    b.version += 1;
    assert_eq!(store.webhook(b.id).await.expect("read"), Some(b));
    assert_eq!(store.webhook(Uuid::now_v7()).await.expect("read"), None);
}

/// An event with one delivery to `w` whose ordering key is `key`, stored.
async fn keyed_event(store: &Arc<dyn Store>, w: &Webhook, key: Option<&str>) -> Delivery {
    let e = event_at(now(), "order.created");
    let mut d = Delivery::new(&e, w.id, 0);
    d.ordering_key = key.map(str::to_owned);
    store
        .append(&e, std::slice::from_ref(&d))
        .expect("append event");
    d
}

/// Per-key ordering: one head per key, in queue order; a key whose head is in flight, or
/// waits for its retry, holds up only itself; a delivery without a key is a head of its own.
pub async fn key_heads_are_one_per_key_in_queue_order(store: Arc<dyn Store>) {
    let mut keyed = spec("keyed");
    keyed.ordering_key = Some("$.k".to_owned());
    let w = Webhook::new(keyed, Origin::Api);
    store.put_webhook(&w).await.expect("put webhook");
    let a1 = keyed_event(&store, &w, Some("A")).await;
    let b1 = keyed_event(&store, &w, Some("B")).await;
    let a2 = keyed_event(&store, &w, Some("A")).await;
    let free = keyed_event(&store, &w, None).await;
    let b2 = keyed_event(&store, &w, Some("B")).await;
    settle(&store).await;
    let ids = |ds: &[Delivery]| ds.iter().map(|d| d.id).collect::<Vec<_>>();
    let now_ms = unix_ms(now()) + 1_000;

    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &none())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [a1.id, b1.id, free.id]);
    assert_eq!(heads.ready[0].ordering_key.as_deref(), Some("A"));
    let limited = store
        .claim_key_heads(w.id, now_ms, 1, &none())
        .await
        .expect("heads");
    assert_eq!(ids(&limited.ready), [a1.id], "at most `limit`");

    // Every head in flight: nothing else may go, not even the keys' next deliveries.
    let in_flight: HashSet<Uuid> = [a1.id, b1.id, free.id].into();
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &in_flight)
        .await
        .expect("heads");
    assert_eq!(heads.ready, vec![], "one in flight per key");

    // A1 fails and waits for its retry at the head of A's queue; B1 is delivered.
    let mut retried = a1.clone();
    retried.attempts = 1;
    retried.due_ms = now_ms + 60_000;
    let change = Recorded {
        before: a1.clone(),
        after: retried.clone(),
        attempt: attempt(&a1, 1, false),
    };
    store
        .record_attempts(w.id, &[change], None)
        .await
        .expect("record");
    deliver(&store, &b1).await;
    let in_flight: HashSet<Uuid> = [free.id].into();
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &in_flight)
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [b2.id], "B flows while A waits");
    assert_eq!(
        heads.next_due_ms,
        Some(retried.due_ms),
        "A's retry is due then"
    );

    // A1's retry succeeds: A2 is next.
    deliver(&store, &retried).await;
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &[free.id, b2.id].into())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [a2.id]);
    assert_eq!(heads.next_due_ms, None);
}

/// A key of 4 KB of random text (which no index compresses below its row limit) is stored
/// as its digest and orders its deliveries like any key.
pub async fn a_long_ordering_key_is_stored_and_ordered_like_any(store: Arc<dyn Store>) {
    let mut keyed = spec("keyed");
    keyed.ordering_key = Some("$.k".to_owned());
    let w = Webhook::new(keyed, Origin::Api);
    store.put_webhook(&w).await.expect("put webhook");
    let text: String = std::iter::repeat_with(|| *Uuid::new_v4().as_bytes())
        .flatten()
        .take(4096)
        .map(|b| char::from(b'!' + b % 94))
        .collect();
    let selector = crate::webhook::check_ordering_key("$.k").expect("selector");
    let key = crate::webhook::ordering_key_of(&selector, &serde_json::json!({ "k": text }));
    let first = keyed_event(&store, &w, key.as_deref()).await;
    let second = keyed_event(&store, &w, key.as_deref()).await;
    let other = keyed_event(&store, &w, Some("B")).await;
    settle(&store).await;
    let ids = |ds: &[Delivery]| ds.iter().map(|d| d.id).collect::<Vec<_>>();
    let now_ms = unix_ms(now()) + 1_000;
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &none())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [first.id, other.id], "one head per key");
    assert_eq!(heads.ready[0].ordering_key, key);
    deliver(&store, &first).await;
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &[other.id].into())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [second.id], "then the key's next");
}

/// A delivery whose queue time is early but whose retry is not due yet (a keyed retry kept
/// its place, then the webhook's `ordering_key` was removed) is not returned by `queued`,
/// and the queue's next time is its due time, not its queue time.
pub async fn a_queued_delivery_waits_for_its_due_time(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let d = keyed_event(&store, &w, Some("A")).await;
    settle(&store).await;
    let now_ms = unix_ms(now()) + 1_000;
    let mut retried = d.clone();
    retried.attempts = 1;
    retried.due_ms = now_ms + 60_000;
    let change = Recorded {
        before: d.clone(),
        after: retried.clone(),
        attempt: attempt(&d, 1, false),
    };
    store
        .record_attempts(w.id, &[change], None)
        .await
        .expect("record");
    assert_eq!(
        store
            .queued(w.id, now_ms, 10, &none())
            .await
            .expect("queue"),
        vec![],
        "not due yet"
    );
    assert_eq!(
        store.next_queued(w.id, &none()).await.expect("next"),
        Some(retried.due_ms)
    );
    assert_eq!(
        store
            .queued(w.id, retried.due_ms, 10, &none())
            .await
            .expect("queue"),
        vec![retried],
        "due then"
    );
}

/// Redelivering a keyed head that waits for its retry keeps it in front of its key's later
/// deliveries; and a key gives nothing while any of its deliveries is in flight, also when a
/// finished one is redelivered while a later one is out.
pub async fn a_requeued_key_head_keeps_its_place_and_its_key_waits_for_any_in_flight(
    store: Arc<dyn Store>,
) {
    let mut keyed = spec("keyed");
    keyed.ordering_key = Some("$.k".to_owned());
    let w = Webhook::new(keyed, Origin::Api);
    store.put_webhook(&w).await.expect("put webhook");
    let a1 = keyed_event(&store, &w, Some("A")).await;
    let a2 = keyed_event(&store, &w, Some("A")).await;
    settle(&store).await;
    let ids = |ds: &[Delivery]| ds.iter().map(|d| d.id).collect::<Vec<_>>();
    let now_ms = unix_ms(now()) + 1_000;

    // A1 fails and waits for its retry; redelivered by hand, it is due now, still first.
    let mut retried = a1.clone();
    retried.attempts = 1;
    retried.due_ms = now_ms + 60_000;
    let change = Recorded {
        before: a1.clone(),
        after: retried.clone(),
        attempt: attempt(&a1, 1, false),
    };
    store
        .record_attempts(w.id, &[change], None)
        .await
        .expect("record");
    let again = store
        .requeue(&retried, now_ms)
        .await
        .expect("requeue")
        .done()
        .expect("requeued");
    assert_eq!(again.queue_ms, a1.queue_ms, "keeps its place");
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &none())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [a1.id], "A1 is still A's head");

    // A1 is delivered; A2 goes out; A1 is redelivered meanwhile: A waits for A2.
    deliver(&store, &again).await;
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &none())
        .await
        .expect("heads");
    assert_eq!(ids(&heads.ready), [a2.id]);
    let done = store.delivery(a1.id).await.expect("read").expect("A1");
    store
        .requeue(&done, now_ms)
        .await
        .expect("requeue")
        .done()
        .expect("requeued");
    let heads = store
        .claim_key_heads(w.id, now_ms, 10, &[a2.id].into())
        .await
        .expect("heads");
    assert_eq!(heads.ready, vec![], "A2 is in flight: nothing else of A");
}

/// A key claimed once is a repeat until its window ends; other keys are not; a repeat does
/// not extend the window.
pub async fn a_dedupe_claim_holds_for_its_window(store: Arc<dyn Store>) {
    let key = DedupeKey::new("order-created", "idem-1");
    let window = std::time::Duration::from_secs(600);
    let t0 = unix_ms(now());
    let claim = |k: &DedupeKey, at: u64| store.claim_dedupe(k, Uuid::now_v7(), at, window);
    assert!(claim(&key, t0).expect("claim"), "a new key is claimed");
    assert!(
        !claim(&key, t0 + 1).expect("claim"),
        "the same key is a repeat"
    );
    assert!(
        !claim(&key, t0 + 599_999).expect("claim"),
        "still a repeat at the end of the window"
    );
    assert!(
        claim(&DedupeKey::new("order-created", "idem-2"), t0 + 1).expect("claim"),
        "another key is new"
    );
    assert!(
        claim(&DedupeKey::new("other-rule", "idem-1"), t0 + 1).expect("claim"),
        "the same key of another rule is new"
    );
    assert!(
        claim(&key, t0 + 600_000).expect("claim"),
        "new again once the window has passed"
    );
}

/// A claim given back (its event could not be stored) does not make the next one a repeat.
pub async fn a_released_dedupe_claim_can_be_claimed_again(store: Arc<dyn Store>) {
    let key = DedupeKey::new("r", "k");
    let window = std::time::Duration::from_secs(60);
    let event = Uuid::now_v7();
    let t0 = unix_ms(now());
    assert!(store.claim_dedupe(&key, event, t0, window).expect("claim"));
    store.release_dedupe(&key, event).expect("release");
    assert!(
        store
            .claim_dedupe(&key, Uuid::now_v7(), t0 + 1, window)
            .expect("claim")
    );
}

/// A copy replaces the record only while the record is the version the copy was read at;
/// every write moves the version on.
pub async fn a_stale_copy_does_not_replace_a_newer_record(store: Arc<dyn Store>) {
    let w = Webhook::new(spec("versioned"), Origin::Api);
    store.put_webhook(&w).await.expect("put webhook");
    let read = |store: Arc<dyn Store>| async move {
        store
            .webhook(w.id)
            .await
            .expect("read")
            .expect("the webhook is there")
    };
    let first = read(Arc::clone(&store)).await;
    let stale = first.clone();

    let mut changed = first.clone();
    changed.spec.failure_threshold = 7;
    assert_eq!(
        store.replace_webhook(&changed).await.expect("replace"),
        Replaced::Done
    );
    let second = read(Arc::clone(&store)).await;
    assert_eq!(second.spec.failure_threshold, 7);
    assert_eq!(
        second.version,
        first.version + 1,
        "a replacement moves the version on"
    );

    let mut overtaken = stale.clone();
    overtaken.status = crate::webhook::WebhookStatus::Paused;
    assert_eq!(
        store.replace_webhook(&overtaken).await.expect("replace"),
        Replaced::Stale,
        "a copy read before the change is refused"
    );
    let after = read(Arc::clone(&store)).await;
    assert_eq!(after.spec.failure_threshold, 7, "the change stays");
    assert_eq!(after.status, crate::webhook::WebhookStatus::Active);

    // A put (the config file's) and a save move the version on too.
    store.put_webhook(&after).await.expect("put again");
    let put = read(Arc::clone(&store)).await;
    assert!(put.version > after.version, "a put moves the version on");
    assert_eq!(
        store.replace_webhook(&after).await.expect("replace"),
        Replaced::Stale
    );
    assert!(store.save_webhook(&put).await.expect("save"));
    assert!(read(Arc::clone(&store)).await.version > put.version);

    store.delete_webhook(w.id).await.expect("delete");
    assert_eq!(
        store.replace_webhook(&put).await.expect("replace"),
        Replaced::Gone
    );
}

/// Pauses webhook `id` as the admin API does: read, change, replace if not changed since
/// (again when it was).
pub async fn pause(store: &dyn Store, id: Uuid) -> Result<(), super::StoreError> {
    loop {
        let Some(mut w) = store.webhook(id).await? else {
            return Ok(());
        };
        w.status = crate::webhook::WebhookStatus::Paused;
        if store.replace_webhook(&w).await? != Replaced::Stale {
            return Ok(());
        }
    }
}

/// A webhook paused while the config file's webhooks are being applied (through the admin
/// API of this or another instance) stays paused: the apply does not write back a plan made
/// before the pause, and what the file changes is applied too.
pub async fn applying_the_file_keeps_a_change_made_meanwhile(store: Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, mpsc};
    let w = Webhook::new(spec("filed"), Origin::Config);
    store.put_webhook(&w).await.expect("put webhook");
    let pausing: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    let planner = {
        let store = Arc::clone(&store);
        let pausing = Arc::clone(&pausing);
        let first = AtomicBool::new(true);
        super::Planner(Box::new(move |stored: &[Webhook]| {
            if first.swap(false, Ordering::SeqCst) {
                // The pause comes while the plan is made, in a thread of its own: a shared
                // store holds it back until the apply has committed.
                let store = Arc::clone(&store);
                let (done, finished) = mpsc::channel();
                let thread = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime
                        .block_on(pause(store.as_ref(), w.id))
                        .expect("pause");
                    let _ = done.send(());
                });
                let _ = finished.recv_timeout(std::time::Duration::from_secs(1));
                *pausing.lock().expect("lock") = Some(thread);
            }
            super::WebhookPlan {
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
    store.apply_webhooks(&planner).await.expect("apply");
    let thread = pausing
        .lock()
        .expect("lock")
        .take()
        .expect("the plan was made");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("the pause finished");
    let after = store
        .webhook(w.id)
        .await
        .expect("read")
        .expect("the webhook is there");
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

/// A delivery deleted (with its webhook) after it was read is reported gone by requeue (the
/// admin API answers 404), not as being sent (409).
pub async fn requeueing_a_deleted_delivery_says_it_is_gone(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    let done = deliver(&store, &d).await;
    store.delete_webhook(w.id).await.expect("delete");
    assert_eq!(
        store.requeue(&done, unix_ms(now())).await.expect("requeue"),
        super::Requeued::Gone
    );
    // Deleted in the background: gone too while its history is still there.
    let w = webhook(&store, "b").await;
    let (_, d) = queued_event(&store, &w, 0).await;
    let done = deliver(&store, &d).await;
    store
        .delete_webhook_in_background(w.id)
        .await
        .expect("delete");
    assert_eq!(
        store.requeue(&done, unix_ms(now())).await.expect("requeue"),
        super::Requeued::Gone
    );
}

/// Records one attempt of a fresh pending delivery `d`, made at `at` and lasting
/// `duration_ms`; it finishes the delivery (delivered or failed).
async fn attempt_at(
    store: &Arc<dyn Store>,
    d: &Delivery,
    at: OffsetDateTime,
    duration_ms: u64,
    success: bool,
) {
    let mut after = d.clone();
    after.attempts = 1;
    after.state = if success {
        DeliveryState::Delivered
    } else {
        DeliveryState::Failed
    };
    let mut a = attempt(d, 1, success);
    a.created_at = at;
    a.duration_ms = duration_ms;
    a.summary = format!(
        "HTTP {} after {duration_ms} ms",
        if success { 200 } else { 500 }
    );
    let change = Recorded {
        before: d.clone(),
        after,
        attempt: a,
    };
    assert_ne!(
        store
            .record_attempts(d.webhook_id, &[change], None)
            .await
            .expect("record"),
        Recording::Gone
    );
}

pub async fn attempt_stats_count_per_bucket_with_discrete_percentiles(store: Arc<dyn Store>) {
    let w = webhook(&store, "a").await;
    let other = webhook(&store, "b").await;
    // Ten one-minute buckets ending at the start of this minute.
    let minute = 60_000;
    let since_ms = (unix_ms(now()) / minute - 10) * minute;
    let window = StatsWindow {
        since_ms,
        bucket_ms: minute,
        buckets: 10,
    };
    let at = |offset_ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(
            (i128::from(since_ms as i64) + i128::from(offset_ms)) * 1_000_000,
        )
        .expect("a time")
    };
    // The event five seconds before the window: lags are offset + 5 s.
    let e = event_at(at(-5_000), "order.created");
    let ds: Vec<Delivery> = (0..8).map(|_| Delivery::new(&e, w.id, 0)).collect();
    let theirs = Delivery::new(&e, other.id, 0);
    let mut all = ds.clone();
    all.push(theirs.clone());
    store.append(&e, &all).expect("append");
    settle(&store).await;
    // Bucket 0: four successes; bucket 2: two failures; one before and one after the window.
    attempt_at(&store, &ds[0], at(1_000), 30, true).await;
    attempt_at(&store, &ds[1], at(2_000), 10, true).await;
    attempt_at(&store, &ds[2], at(3_000), 40, true).await;
    attempt_at(&store, &ds[3], at(4_000), 20, true).await;
    attempt_at(&store, &ds[4], at(2 * minute as i64 + 500), 100, false).await;
    attempt_at(&store, &ds[5], at(2 * minute as i64 + 9_000), 5, false).await;
    attempt_at(&store, &ds[6], at(-1), 7, false).await;
    attempt_at(&store, &ds[7], at(10 * minute as i64), 7, false).await;
    attempt_at(&store, &theirs, at(1_500), 999, true).await;

    let stats = store.attempt_stats(w.id, &window).await.expect("stats");
    assert_eq!(stats.buckets.len(), 10, "dense");
    assert_eq!(
        stats.buckets[0],
        AttemptBucket {
            succeeded: 4,
            failed: 0,
            p50_ms: Some(20),
            p99_ms: Some(40),
            lag_p50_ms: Some(7_000),
            lag_p99_ms: Some(9_000),
        }
    );
    assert_eq!(
        stats.buckets[1],
        AttemptBucket::default(),
        "empty: no percentiles"
    );
    assert_eq!(
        stats.buckets[2],
        AttemptBucket {
            succeeded: 0,
            failed: 2,
            p50_ms: Some(5),
            p99_ms: Some(100),
            lag_p50_ms: Some(125_500),
            lag_p99_ms: Some(134_000),
        }
    );
    assert!(
        stats.buckets[3..]
            .iter()
            .all(|b| *b == AttemptBucket::default())
    );
    assert_eq!(
        stats.totals,
        AttemptBucket {
            succeeded: 4,
            failed: 2,
            p50_ms: Some(20),
            p99_ms: Some(100),
            lag_p50_ms: Some(8_000),
            lag_p99_ms: Some(134_000),
        }
    );

    let last = store
        .last_failure(w.id, since_ms)
        .await
        .expect("last failure")
        .expect("a failure");
    assert_eq!(
        last.delivery_id, ds[7].id,
        "the latest, after the window too"
    );
    assert_eq!(
        last.summary, "HTTP 500 after 7 ms",
        "the attempt record, whole"
    );
    assert_eq!(
        store
            .last_failure(w.id, since_ms + 10 * minute + 1)
            .await
            .expect("read"),
        None,
        "nothing failed since"
    );
    assert_eq!(
        store.last_failure(other.id, 0).await.expect("read"),
        None,
        "the other webhook never failed"
    );

    store.delete_webhook(w.id).await.expect("delete");
    let gone = store.attempt_stats(w.id, &window).await.expect("stats");
    assert_eq!(
        gone.totals,
        AttemptBucket::default(),
        "deleted with the webhook"
    );
    assert_eq!(store.last_failure(w.id, 0).await.expect("read"), None);
    let theirs_stats = store.attempt_stats(other.id, &window).await.expect("stats");
    assert_eq!(
        (
            theirs_stats.buckets[0].succeeded,
            theirs_stats.buckets[0].p50_ms
        ),
        (1, Some(999))
    );
}

pub async fn an_event_lists_its_deliveries_to_every_webhook(store: Arc<dyn Store>) {
    let a = webhook(&store, "a").await;
    let b = webhook(&store, "b").await;
    let e = event_at(now(), "order.created");
    let (da, db) = (Delivery::new(&e, a.id, 0), Delivery::new(&e, b.id, 0));
    store.append(&e, &[da.clone(), db.clone()]).expect("append");
    let (_, unrelated) = queued_event(&store, &a, 0).await;
    settle(&store).await;
    let listed = store.deliveries_of_event(e.id).await.expect("list");
    assert_eq!(listed, vec![da, db], "both webhooks', oldest first");
    assert!(!listed.contains(&unrelated));
    assert!(
        store
            .deliveries_of_event(Uuid::now_v7())
            .await
            .expect("list")
            .is_empty()
    );
}

pub async fn events_page_searches_the_payload_text(store: Arc<dyn Store>) {
    let t0 = now() - time::Duration::minutes(10);
    let mut ada = event_at(t0, "order.created");
    ada.payload = serde_json::json!({"customer": "Ada Lovelace", "total": 12});
    let mut bob = event_at(t0 + time::Duration::minutes(1), "order.created");
    bob.payload = serde_json::json!({"note": "BOB", "n": [1, 2]});
    let mut big = event_at(t0 + time::Duration::minutes(2), "scan.created");
    big.payload = serde_json::json!({"pad": "x".repeat(10_000), "tag": "needle"});
    for e in [&ada, &bob, &big] {
        store.append(e, &[]).expect("append");
    }
    settle(&store).await;
    let search = |text: &str, topic: Option<&str>| {
        let store = Arc::clone(&store);
        let q = EventQuery {
            text: Some(text.to_lowercase()),
            topic: topic.map(|t| globset::Glob::new(t).expect("glob").compile_matcher()),
            limit: 10,
            ..EventQuery::default()
        };
        async move { store.events_page(&q).await.expect("search") }
    };
    assert_eq!(search("LOVELACE", None).await, vec![ada.clone()]);
    // The compact JSON text: keys and values as hooktap writes them, whatever the backend.
    assert_eq!(search(r#""note":"bob""#, None).await, vec![bob.clone()]);
    assert_eq!(search(r#"[1,2]"#, None).await, vec![bob.clone()]);
    assert_eq!(
        search("needle", None).await,
        vec![big.clone()],
        "a large payload too"
    );
    assert_eq!(search("needle", Some("order.*")).await, vec![]);
    assert_eq!(
        search("created", None).await,
        vec![],
        "the topic is not the payload"
    );
    assert_eq!(
        search("\"", None).await.len(),
        3,
        "every payload has a quote"
    );
}

/// One page of `webhook`'s deliveries.
async fn page_of(
    store: &Arc<dyn Store>,
    webhook: Uuid,
    state: Option<DeliveryState>,
    offset: usize,
    limit: usize,
    count_up_to: u64,
) -> DeliveryPage {
    let q = DeliveryQuery {
        state,
        offset,
        limit,
        count_up_to,
    };
    store.deliveries_page(webhook, &q).await.expect("page")
}

pub async fn a_page_of_deliveries_counts_every_match(store: Arc<dyn Store>) {
    let (w, all) = mixed_deliveries(&store).await;
    let page = |state, offset, limit| page_of(&store, w.id, state, offset, limit, 7);
    let of = |items: &[Delivery]| DeliveryPage {
        items: items.to_vec(),
        total: Some(7),
    };
    assert_eq!(page(None, 0, 3).await, of(&all[..3]));
    assert_eq!(page(None, 3, 3).await, of(&all[3..6]));
    assert_eq!(page(None, 5, 3).await, of(&all[5..]), "the last page");
    assert_eq!(
        page(None, 7, 3).await,
        of(&[]),
        "past the end: the total still"
    );
    for state in [
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Pending,
    ] {
        let matching: Vec<Delivery> = all.iter().filter(|d| d.state == state).cloned().collect();
        let total = matching.len() as u64;
        assert!(total >= 2, "{state:?}");
        assert_eq!(
            page(Some(state), 0, 10).await,
            DeliveryPage {
                items: matching.clone(),
                total: Some(total)
            },
            "{state:?}"
        );
        assert_eq!(
            page(Some(state), 1, 1).await,
            DeliveryPage {
                items: matching[1..2].to_vec(),
                total: Some(total)
            },
            "{state:?}, second page of one"
        );
    }
    let nobody = store
        .deliveries_page(
            Uuid::now_v7(),
            &DeliveryQuery {
                state: None,
                offset: 0,
                limit: 10,
                count_up_to: 0,
            },
        )
        .await
        .expect("page");
    assert_eq!(
        nobody,
        DeliveryPage {
            items: vec![],
            total: Some(0)
        }
    );
}

pub async fn a_page_of_deliveries_counts_up_to_its_limit(store: Arc<dyn Store>) {
    let (w, all) = mixed_deliveries(&store).await;
    let page = |state, offset, limit, count_up_to| {
        page_of(&store, w.id, state, offset, limit, count_up_to)
    };
    let page_of = |items: &[Delivery], total| DeliveryPage {
        items: items.to_vec(),
        total,
    };
    assert_eq!(
        page(None, 0, 2, 7).await,
        page_of(&all[..2], Some(7)),
        "all counted"
    );
    assert_eq!(
        page(None, 0, 2, 6).await,
        page_of(&all[..2], None),
        "one too many"
    );
    assert_eq!(page(None, 0, 2, 1).await, page_of(&all[..2], None));
    assert_eq!(
        page(None, 5, 3, 2).await,
        page_of(&all[5..], None),
        "a page past the count is read all the same"
    );
    assert_eq!(
        page(None, 0, 100, 0).await,
        page_of(&all, None),
        "a page longer than the count"
    );
    let failed: Vec<Delivery> = all
        .iter()
        .filter(|d| d.state == DeliveryState::Failed)
        .cloned()
        .collect();
    let n = failed.len() as u64;
    assert!(n >= 2);
    assert_eq!(
        page(Some(DeliveryState::Failed), 0, 1, n).await,
        page_of(&failed[..1], Some(n)),
        "a filter counts its matches only"
    );
    assert_eq!(
        page(Some(DeliveryState::Failed), 0, 1, n - 1).await,
        page_of(&failed[..1], None)
    );
}

pub async fn failed_deliveries_are_read_by_creation_window(store: Arc<dyn Store>) {
    let (w, all) = mixed_deliveries(&store).await;
    let failed: Vec<Delivery> = all
        .iter()
        .filter(|d| d.state == DeliveryState::Failed)
        .cloned()
        .collect();
    let [newer, older] = &failed[..] else {
        panic!("two failed: {failed:?}");
    };
    let read = |since, until| {
        let store = Arc::clone(&store);
        async move {
            store
                .failed_deliveries(w.id, since, until)
                .await
                .expect("failed deliveries")
        }
    };
    let everything = (
        older.created_at - time::Duration::HOUR,
        now() + time::Duration::HOUR,
    );
    assert_eq!(read(everything.0, everything.1).await, failed);
    // Half-open: from its creation on, up to (not including) the newer's.
    assert_eq!(
        read(older.created_at, newer.created_at).await,
        vec![older.clone()]
    );
    assert_eq!(
        read(newer.created_at, everything.1).await,
        vec![newer.clone()]
    );
    assert_eq!(read(everything.0, older.created_at).await, vec![]);
}
