//! The outcome of one request: a pure function from (deliveries before, webhook, what the
//! request came to, now) to each delivery's next state and attempt record, the webhook's new
//! counters and whether the webhook must be disabled.
//!
//! No clock, no store, no sockets: the scheduler calls [`decide`] under the webhook's lock
//! and then writes, counts and logs what it returns. Everything about retries (the schedule,
//! jitter, `Retry-After`), 410 Gone and the failure threshold is decided here.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::retry;
use super::send::{Answer, Outgoing, SendError, Sent, kept_body};
use crate::event::{Attempt, Delivery, DeliveryState, unix_ms};
use crate::store::{CounterChange, Recorded};
use crate::webhook::{Counters, Webhook, WebhookStatus, mask_url};

/// What happened to one delivery, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Delivered; `lag` from the event's creation to now.
    Delivered { lag: Duration },
    /// Failed; tried again after `delay`.
    Retry { delay: Duration },
    /// Failed and the schedule is used up (or the receiver is gone).
    Failed,
}

/// Everything one request changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Per delivery: before, after, and the attempt's log entry.
    pub changes: Vec<Recorded>,
    pub steps: Vec<Step>,
    /// The webhook's counters after this request.
    pub counters: Counters,
    /// Set when this request disables the webhook: why.
    pub disable: Option<String>,
}

/// Decides what one request to `webhook`, carrying `deliveries`, comes to. `request` is
/// `None` when nothing was sent (the event was missing).
pub fn decide(
    webhook: &Webhook,
    deliveries: &[Delivery],
    request: Option<&Outgoing>,
    sent: &Sent,
    now: OffsetDateTime,
) -> Outcome {
    let answer = sent.result.as_ref().ok();
    let success = answer.is_some_and(Answer::success);
    let gone = answer.is_some_and(|a| a.status == 410);
    let summary = summary(&sent.result);
    let mut changes = Vec::with_capacity(deliveries.len());
    let mut steps = Vec::with_capacity(deliveries.len());
    for (i, before) in deliveries.iter().enumerate() {
        let mut after = before.clone();
        after.attempts += 1;
        after.updated_at = now;
        after.last_summary = Some(summary.clone());
        let step = if success {
            after.state = DeliveryState::Delivered;
            Step::Delivered {
                lag: (now - before.created_at).try_into().unwrap_or_default(),
            }
        } else {
            match retry_delay(webhook, &after, answer, gone) {
                Some(delay) => {
                    after.due_ms = unix_ms(now)
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    // An ordered webhook's retry keeps its place at the head of the queue,
                    // a keyed delivery its place at the head of its key's queue, as long as
                    // the webhook (as it is now) orders: once `ordering_key` is removed, a
                    // delivery stored with a key is sent as any other, at its due time.
                    let keeps_place = webhook.spec.ordered
                        || (webhook.spec.ordering_key.is_some() && before.ordering_key.is_some());
                    if !keeps_place {
                        after.queue_ms = after.due_ms;
                    }
                    Step::Retry { delay }
                }
                None => {
                    after.state = DeliveryState::Failed;
                    Step::Failed
                }
            }
        };
        let attempt = attempt_record(webhook, &after, request, sent, now, i, &deliveries[0]);
        steps.push(step);
        changes.push(Recorded {
            before: before.clone(),
            after,
            attempt,
        });
    }
    // Counted as every backend counts (a request counts once towards failure_threshold,
    // however many deliveries it carried).
    let mut counters = webhook.counters.clone();
    counters.apply(&CounterChange::of(&changes));
    let disable = if webhook.status == WebhookStatus::Disabled || changes.is_empty() {
        None
    } else if gone {
        Some("the receiver answered 410 Gone".to_owned())
    } else {
        threshold_reason(webhook, &counters)
    };
    Outcome {
        changes,
        steps,
        counters,
        disable,
    }
}

/// The early-warning levels, in percent of `failure_threshold`.
pub const WARNING_LEVELS: [u8; 3] = [50, 70, 90];

/// The highest warning level (see [`WARNING_LEVELS`]) that consecutive failures crossed going
/// from `before` to `after`, if any (none when `threshold` is 0).
pub fn warning_level(threshold: u32, before: u64, after: u64) -> Option<u8> {
    let threshold = u64::from(threshold);
    if threshold == 0 || after <= before {
        return None;
    }
    // `count` reached `level` % of the threshold: count * 100 >= level * threshold.
    let reached = |count: u64, level: u8| count * 100 >= u64::from(level) * threshold;
    WARNING_LEVELS
        .iter()
        .rev()
        .find(|&&level| reached(after, level) && !reached(before, level))
        .copied()
}

/// Why `webhook` must be disabled by its counters: `failure_threshold` consecutive failed
/// requests (0 disables never).
pub fn threshold_reason(webhook: &Webhook, counters: &Counters) -> Option<String> {
    let threshold = u64::from(webhook.spec.failure_threshold);
    let failures = counters.consecutive_failures;
    (threshold > 0 && failures >= threshold && webhook.status != WebhookStatus::Disabled)
        .then(|| format!("{failures} consecutive deliveries failed"))
}

/// `HTTP 200 OK: ok`, or the transport error.
fn summary(result: &Result<Answer, SendError>) -> String {
    match result {
        Ok(a) => a.summary(),
        Err(e) => e.to_string(),
    }
}

/// The delay before the next attempt of `after` (which counts the failed attempt), or `None`
/// when it has finally failed: the schedule is used up or the receiver is gone. A
/// `Retry-After` (429, 503) replaces the scheduled delay; otherwise up to 10 % jitter is added.
fn retry_delay(
    webhook: &Webhook,
    after: &Delivery,
    answer: Option<&Answer>,
    gone: bool,
) -> Option<Duration> {
    if gone {
        return None;
    }
    let scheduled = retry::next_delay(&webhook.spec.retry, after.attempts - after.schedule_start)?;
    Some(answer.and_then(|a| a.retry_after).unwrap_or_else(|| {
        retry::with_jitter(scheduled, after.id.as_u128() ^ u128::from(after.attempts))
    }))
}

/// The attempt log entry of one delivery in one request. Its id is derived from the delivery
/// and the attempt number, so recording the same attempt twice (after a crash) writes the same
/// entry.
fn attempt_record(
    webhook: &Webhook,
    after: &Delivery,
    request: Option<&Outgoing>,
    sent: &Sent,
    now: OffsetDateTime,
    index_in_batch: usize,
    first: &Delivery,
) -> Attempt {
    let answer = sent.result.as_ref().ok();
    Attempt {
        id: attempt_id(after.id, after.attempts),
        delivery_id: after.id,
        webhook_id: webhook.id,
        number: after.attempts,
        created_at: now,
        duration_ms: u64::try_from(sent.elapsed.as_millis()).unwrap_or(u64::MAX),
        summary: after.last_summary.clone().unwrap_or_default(),
        success: after.state == DeliveryState::Delivered,
        request_method: "POST".to_owned(),
        request_url: request.map_or_else(|| mask_url(&webhook.spec.url), |o| o.shown_url.clone()),
        request_headers: request.map(Outgoing::shown_headers).unwrap_or_default(),
        // A batch's body is kept once, with its first delivery.
        request_body: match (request, index_in_batch) {
            (Some(o), 0) => kept_body(&o.body),
            (Some(_), _) => format!("(sent in one batch with delivery {})", first.id),
            (None, _) => String::new(),
        },
        response_code: answer.map(|a| a.status),
        response_message: answer.map(|a| a.reason.clone()).unwrap_or_default(),
        response_headers: answer.map(|a| a.headers.clone()).unwrap_or_default(),
        response_body: answer.map(|a| a.body.clone()).unwrap_or_default(),
    }
}

fn attempt_id(delivery: Uuid, number: u32) -> Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(delivery.as_bytes())
        .chain_update(number.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Topic};
    use crate::webhook::{Mode, Origin, Profile, WebhookSpec};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-30 12:00:00 UTC);

    fn webhook(retry: &[u64], failure_threshold: u32, ordered: bool) -> Webhook {
        Webhook::new(
            WebhookSpec {
                name: "crm".into(),
                url: "https://hooks.example.com/in".parse().expect("url"),
                secret: "s".into(),
                topics: vec!["*".into()],
                status: None,
                retry: retry.iter().map(|s| Duration::from_secs(*s)).collect(),
                failure_threshold,
                timeout: Duration::from_secs(5),
                signature: Profile::Hooktap,
                header_prefix: "X-Hooktap-Webhook-".into(),
                mode: Mode::Realtime,
                ordered,
                concurrency: 8,
                ..WebhookSpec::example("crm")
            },
            Origin::Api,
        )
    }

    fn delivery(w: &Webhook, created: OffsetDateTime) -> Delivery {
        let mut e = Event::new(
            &Topic::parse("order.created").expect("topic"),
            "r",
            serde_json::json!({}),
        );
        e.created_at = created;
        Delivery::new(&e, w.id, 0)
    }

    fn answer(status: u16, retry_after: Option<u64>) -> Sent {
        Sent {
            result: Ok(Answer {
                status,
                reason: http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .into(),
                headers: vec![],
                body: String::new(),
                retry_after: retry_after.map(Duration::from_secs),
            }),
            elapsed: Duration::from_millis(12),
        }
    }

    fn refused() -> Sent {
        Sent {
            result: Err(SendError::Connect("Connection refused".into())),
            elapsed: Duration::from_millis(1),
        }
    }

    /// The delay a failed first attempt was given.
    fn delay_of(o: &Outcome) -> Duration {
        match o.steps[..] {
            [Step::Retry { delay }] => delay,
            ref other => panic!("expected one retry, got {other:?}"),
        }
    }

    #[test]
    fn a_2xx_delivers_and_resets_the_failure_run() {
        let mut w = webhook(&[5], 3, false);
        w.counters.consecutive_failures = 2;
        let d = delivery(&w, NOW - time::Duration::seconds(2));
        let o = decide(&w, std::slice::from_ref(&d), None, &answer(204, None), NOW);
        let after = &o.changes[0].after;
        assert_eq!(after.state, DeliveryState::Delivered);
        assert_eq!(after.attempts, 1);
        assert_eq!(
            o.steps,
            [Step::Delivered {
                lag: Duration::from_secs(2)
            }]
        );
        assert_eq!(o.counters.delivered, 1);
        assert_eq!(o.counters.consecutive_failures, 0);
        assert_eq!(o.counters.last_delivered_at, Some(NOW));
        assert_eq!(o.disable, None);
        let a = &o.changes[0].attempt;
        assert!(a.success);
        assert_eq!((a.number, a.response_code), (1, Some(204)));
        assert_eq!(a.summary, "HTTP 204 No Content");
    }

    #[test]
    fn a_failure_retries_along_the_schedule_with_bounded_jitter() {
        let w = webhook(&[10, 60], 0, false);
        let d = delivery(&w, NOW);
        let o = decide(&w, std::slice::from_ref(&d), None, &answer(500, None), NOW);
        let delay = delay_of(&o);
        assert!(
            delay >= Duration::from_secs(10) && delay < Duration::from_secs(11),
            "10 s plus at most 10 % jitter, got {delay:?}"
        );
        let after = &o.changes[0].after;
        assert_eq!(after.state, DeliveryState::Pending);
        assert_eq!(
            after.due_ms,
            unix_ms(NOW) + u64::try_from(delay.as_millis()).expect("ms")
        );
        assert_eq!(after.queue_ms, after.due_ms, "it moves in the queue");
        assert_eq!((o.counters.retries, o.counters.failed), (1, 0));
        assert_eq!(o.counters.last_failure_at, Some(NOW));

        // The second failure takes the second delay; the third has none left.
        let second = decide(&w, std::slice::from_ref(after), None, &refused(), NOW);
        let delay = delay_of(&second);
        assert!(delay >= Duration::from_secs(60) && delay < Duration::from_secs(66));
        assert_eq!(
            second.changes[0].attempt.summary,
            "connection failed: Connection refused"
        );
        let third = decide(
            &w,
            std::slice::from_ref(&second.changes[0].after),
            None,
            &refused(),
            NOW,
        );
        assert_eq!(third.steps, [Step::Failed]);
        assert_eq!(third.changes[0].after.state, DeliveryState::Failed);
        assert_eq!(third.changes[0].after.attempts, 3);
        assert_eq!(third.counters.failed, 1);
    }

    #[test]
    fn jitter_differs_between_deliveries_and_stays_within_ten_percent() {
        let w = webhook(&[100], 0, false);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| {
                let d = delivery(&w, NOW);
                delay_of(&decide(&w, &[d], None, &answer(503, None), NOW))
            })
            .inspect(|d| {
                assert!(*d >= Duration::from_secs(100) && *d <= Duration::from_secs(110));
            })
            .collect();
        assert!(delays.len() > 40, "retries are spread: {}", delays.len());
    }

    #[test]
    fn retry_after_replaces_the_scheduled_delay() {
        let w = webhook(&[5], 0, false);
        let d = delivery(&w, NOW);
        let o = decide(&w, &[d], None, &answer(429, Some(120)), NOW);
        assert_eq!(delay_of(&o), Duration::from_secs(120));
    }

    #[test]
    fn gone_fails_at_once_and_disables() {
        let w = webhook(&[5, 10], 0, false);
        let d = delivery(&w, NOW);
        let o = decide(&w, &[d], None, &answer(410, None), NOW);
        assert_eq!(o.steps, [Step::Failed]);
        assert_eq!(o.disable.as_deref(), Some("the receiver answered 410 Gone"));
    }

    #[test]
    fn a_redirect_is_a_failure() {
        let w = webhook(&[5], 0, false);
        let d = delivery(&w, NOW);
        let o = decide(&w, &[d], None, &answer(302, None), NOW);
        assert!(matches!(o.steps[..], [Step::Retry { .. }]));
        assert!(!o.changes[0].attempt.success);
    }

    #[test]
    fn the_failure_threshold_disables_after_consecutive_final_failures() {
        let mut w = webhook(&[], 3, false);
        for run in 1..=3u64 {
            let d = delivery(&w, NOW);
            let o = decide(&w, &[d], None, &answer(500, None), NOW);
            assert_eq!(o.counters.consecutive_failures, run);
            w.counters = o.counters;
            let expected = (run == 3).then(|| "3 consecutive deliveries failed".to_owned());
            assert_eq!(o.disable, expected, "after {run} failures");
        }
        // An already disabled webhook is not disabled again.
        w.status = WebhookStatus::Disabled;
        let d = delivery(&w, NOW);
        assert_eq!(
            decide(&w, &[d], None, &answer(500, None), NOW).disable,
            None
        );
    }

    #[test]
    fn a_batch_counts_once_towards_the_threshold_and_keeps_its_body_once() {
        let w = webhook(&[], 2, false);
        let (a, b) = (delivery(&w, NOW), delivery(&w, NOW));
        let out = Outgoing::new(
            &w,
            "batch",
            None,
            "test",
            b"{\"order.created\":[]}".to_vec(),
        );
        let o = decide(&w, &[a.clone(), b], Some(&out), &answer(500, None), NOW);
        assert_eq!(o.steps, [Step::Failed, Step::Failed]);
        assert_eq!(o.counters.consecutive_failures, 1);
        assert_eq!(o.counters.failed, 2);
        assert_eq!(o.changes[0].attempt.request_body, "{\"order.created\":[]}");
        assert_eq!(
            o.changes[1].attempt.request_body,
            format!("(sent in one batch with delivery {})", a.id)
        );
    }

    #[test]
    fn warnings_come_at_50_70_and_90_percent_once_each() {
        let levels: Vec<Option<u8>> = (0..10).map(|n| warning_level(10, n, n + 1)).collect();
        assert_eq!(
            levels,
            [
                None,
                None,
                None,
                None,
                Some(50),
                None,
                Some(70),
                None,
                Some(90),
                None
            ]
        );
        // A threshold of 5: 2.5, 3.5 and 4.5 failures, so the 3rd, 4th and 5th.
        let levels: Vec<Option<u8>> = (0..5).map(|n| warning_level(5, n, n + 1)).collect();
        assert_eq!(levels, [None, None, Some(50), Some(70), Some(90)]);
        assert_eq!(warning_level(0, 0, 100), None, "never disabled: no warning");
        assert_eq!(warning_level(10, 8, 0), None, "a success resets");
        assert_eq!(
            warning_level(10, 0, 10),
            Some(90),
            "a jump warns once, at its highest"
        );
    }

    #[test]
    fn an_ordered_retry_keeps_its_place() {
        let w = webhook(&[30], 0, true);
        let d = delivery(&w, NOW);
        let o = decide(&w, std::slice::from_ref(&d), None, &refused(), NOW);
        assert_eq!(o.changes[0].after.queue_ms, d.queue_ms);
        assert!(o.changes[0].after.due_ms > d.due_ms);
    }

    /// A keyed retry keeps its place while the webhook has an `ordering_key`; once it is
    /// removed, a delivery stored with a key moves to its due time like any other.
    #[test]
    fn a_keyed_retry_keeps_its_place_only_while_the_webhook_has_a_key() {
        let mut w = webhook(&[30], 0, false);
        w.spec.ordering_key = Some("$.k".to_owned());
        let mut d = delivery(&w, NOW);
        d.ordering_key = Some("A".to_owned());
        let o = decide(&w, std::slice::from_ref(&d), None, &refused(), NOW);
        assert_eq!(
            o.changes[0].after.queue_ms, d.queue_ms,
            "keyed: keeps its place"
        );
        w.spec.ordering_key = None;
        let o = decide(&w, std::slice::from_ref(&d), None, &refused(), NOW);
        let after = &o.changes[0].after;
        assert!(after.due_ms > d.due_ms);
        assert_eq!(
            after.queue_ms, after.due_ms,
            "key removed: queued at its due time"
        );
    }

    #[test]
    fn a_manual_redelivery_gets_the_whole_schedule_again() {
        let w = webhook(&[5], 0, false);
        let mut d = delivery(&w, NOW);
        d.attempts = 4;
        d.schedule_start = 4;
        let o = decide(&w, &[d], None, &refused(), NOW);
        assert!(matches!(o.steps[..], [Step::Retry { .. }]));
        assert_eq!(o.changes[0].attempt.number, 5);
    }

    #[test]
    fn the_same_attempt_gets_the_same_id() {
        let w = webhook(&[5], 0, false);
        let d = delivery(&w, NOW);
        let first = decide(&w, std::slice::from_ref(&d), None, &refused(), NOW);
        let again = decide(&w, std::slice::from_ref(&d), None, &refused(), NOW);
        assert_eq!(first.changes[0].attempt.id, again.changes[0].attempt.id);
    }
}
