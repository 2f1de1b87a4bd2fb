//! Webhooks (subscriptions): what a subscriber asked for, and what hooktap keeps about it.
//!
//! A [`WebhookSpec`] is what an operator declares (in hooktap.toml, or later through the admin
//! API); [`Webhook`] is the stored record: the spec plus a stable id, a status, counters and
//! timestamps. The secret is write-only: [`Webhook::view`] is the form to show anywhere, and
//! [`mask_url`] hides credentials in URLs.
//!
//! - `input`: [`WebhookInput`], the one declaration of a webhook's fields, and its checks.
//! - `destination`: URL checks, masking and topic patterns.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

mod destination;
mod input;
mod settings;
pub mod transform;

pub use destination::{TopicsError, UrlError, check_url, compile_topics, mask_url};
pub use input::{Defaults, FieldError, NewWebhook, WebhookInput, struct_fields, whole_number};
pub use settings::{
    MAX_ORDERING_KEY, RateLimit, bounded_ordering_key, check_headers, check_ordering_key,
    compile_filter, ordering_key_of,
};

use crate::rules::raw::RawWhen;

/// Consecutive failed requests that open a webhook's circuit, unless it sets its own.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 10;
/// How long an open circuit waits before its probe, unless the webhook sets its own.
pub const DEFAULT_CIRCUIT_COOLDOWN: Duration = Duration::from_secs(30);

fn default_circuit_failures() -> u32 {
    DEFAULT_CIRCUIT_FAILURES
}

fn default_circuit_cooldown() -> Duration {
    DEFAULT_CIRCUIT_COOLDOWN
}

/// Whether a webhook sends and whether it accepts new deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Deliveries are queued and sent.
    Active,
    /// Deliveries are queued but not sent until resumed.
    Paused,
    /// Nothing is sent and no new deliveries are queued.
    Disabled,
}

/// How a webhook's requests are signed, and with which header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// `X-Hooktap-Webhook-*` headers (renamable with `header_prefix`), base64 HMAC-SHA256 of the body.
    Hooktap,
    /// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,...`.
    Standard,
    /// Mautic: `Webhook-Signature`, base64 HMAC-SHA256 of the body.
    Mautic,
}

/// The order of payloads inside one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchOrder {
    Chronological,
    Reverse,
}

/// One request per event, or batches of events (Mautic's queue mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Mode {
    Realtime,
    Batch {
        #[serde(with = "millis")]
        interval: Duration,
        max: usize,
        order: BatchOrder,
    },
}

impl Mode {
    pub fn kind(&self) -> ModeKind {
        match self {
            Self::Realtime => ModeKind::Realtime,
            Self::Batch { .. } => ModeKind::Batch,
        }
    }
}

/// A [`Mode`]'s name, as written in a webhook's `mode` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeKind {
    Realtime,
    Batch,
}

/// What an operator declares about a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSpec {
    pub name: String,
    /// May carry `user:password@`, sent as basic auth and masked wherever shown.
    pub url: Url,
    pub secret: String,
    /// Glob patterns over topics: `order.*`, `*`.
    pub topics: Vec<String>,
    /// The status a declaration asks for: applied when a webhook is created and when its
    /// file entry changes, then cleared (the record's `status` is the truth). `None` keeps
    /// the current status (or `active` for a new webhook).
    pub status: Option<WebhookStatus>,
    /// A delay before each retry.
    #[serde(with = "millis_list")]
    pub retry: Vec<Duration>,
    /// Consecutive finally-failed deliveries that disable the webhook; 0 never disables.
    pub failure_threshold: u32,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub signature: Profile,
    /// Prefix of the `hooktap` profile's headers, e.g. `X-WC-Webhook-`.
    pub header_prefix: String,
    pub mode: Mode,
    /// At most one delivery in flight, strictly in event order.
    pub ordered: bool,
    /// Deliveries in flight at once for this webhook.
    pub concurrency: usize,
    /// A JSONPath over the payload: deliveries with the same key are sent strictly in event
    /// order, one in flight per key; other keys are not held up.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// Only events whose payload passes every predicate get a delivery.
    #[serde(default)]
    pub filter: Vec<RawWhen>,
    /// At most this many requests per interval, evenly spaced.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Consecutive failed requests that open the circuit; 0 never opens it.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit waits before it lets one probe through.
    #[serde(default = "default_circuit_cooldown", with = "millis")]
    pub circuit_cooldown: Duration,
    /// Refuse a plain `http://` URL; `None` follows `[delivery] https_only`.
    #[serde(default)]
    pub https_only: Option<bool>,
    /// Extra static headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body's shape for this webhook (`[webhook.transform]`), as written: a JSON object
    /// of fields (see [`transform`]). `None` sends the event's payload as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<serde_json::Value>,
}

pub const DEFAULT_HEADER_PREFIX: &str = "X-Hooktap-Webhook-";

/// A secret that was replaced, still accepted (signed with) until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotatedSecret {
    pub secret: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Per-webhook delivery counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Counters {
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    pub consecutive_failures: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_delivered_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure_at: Option<OffsetDateTime>,
}

/// The circuit breaker of a webhook (see docs/delivery.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests go as usual.
    Closed,
    /// Too many requests in a row failed: nothing is sent until the cool-down ends.
    Open,
    /// The cool-down ended: one probe request is out (or about to go); its success closes
    /// the circuit, its failure opens it again.
    HalfOpen,
}

/// Where a webhook was declared: hooktap.toml owns the ones it declares (they are updated at
/// start and removed when they leave the file); API-created ones are left alone by the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
}

/// The stored webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Uuid,
    pub origin: Origin,
    pub spec: WebhookSpec,
    /// For config-declared webhooks: the file's entry as last applied. The file changes the
    /// webhook only when this entry changes, so changes made through the API in between last.
    #[serde(default)]
    pub declared: Option<WebhookSpec>,
    pub status: WebhookStatus,
    /// Why the webhook was disabled, when it was.
    pub disabled_reason: Option<String>,
    pub previous_secret: Option<RotatedSecret>,
    pub counters: Counters,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// How many times the stored record was written: a copy replaces the record only while
    /// the record is still the one it was read from (see [`crate::store::Store::replace_webhook`]).
    #[serde(default)]
    pub version: u64,
}

/// A webhook as it may be shown: no secret, credentials masked. The admin API answers with it
/// and the command line client reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Webhook)]
pub struct WebhookView {
    pub id: Uuid,
    pub origin: Origin,
    pub name: String,
    pub url: String,
    pub topics: Vec<String>,
    pub status: WebhookStatus,
    pub disabled_reason: Option<String>,
    pub retry: Vec<String>,
    pub failure_threshold: u32,
    pub timeout: String,
    pub signature: Profile,
    pub header_prefix: String,
    /// The batch fields are set in batch mode only.
    pub mode: ModeKind,
    pub batch_interval: Option<String>,
    pub batch_max: Option<usize>,
    pub batch_order: Option<BatchOrder>,
    pub ordered: bool,
    pub concurrency: usize,
    pub ordering_key: Option<String>,
    pub filter: Vec<RawWhen>,
    /// E.g. `50/s`.
    pub rate_limit: Option<String>,
    pub circuit_failures: u32,
    pub circuit_cooldown: String,
    /// Where the circuit breaker stands on this instance.
    pub circuit: CircuitState,
    /// While the circuit is open: when its probe may go.
    #[serde(with = "time::serde::rfc3339::option")]
    pub circuit_open_until: Option<OffsetDateTime>,
    /// The webhook's own setting; absent when it follows `[delivery] https_only`.
    pub https_only: Option<bool>,
    pub headers: BTreeMap<String, String>,
    /// The body's shape for this webhook, as set: fields as in a rule's payload, over
    /// `payload`, `topic`, `event_id` and `time`. Absent: the event's payload as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub transform: Option<serde_json::Value>,
    pub counters: Counters,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Webhook {
    /// A new webhook from `spec`, `active` unless the spec says otherwise.
    pub fn new(mut spec: WebhookSpec, origin: Origin) -> Self {
        let now = OffsetDateTime::now_utc();
        // The status lives in the record; a spec only carries one on its way in.
        let status = spec.status.take().unwrap_or(WebhookStatus::Active);
        Self {
            id: Uuid::now_v7(),
            origin,
            declared: None,
            status,
            spec,
            disabled_reason: None,
            previous_secret: None,
            counters: Counters::default(),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    }

    /// Applies the file's entry for this webhook, unless it is the entry last applied: its
    /// fields, and its `status` when it sets one. So a change made through the API lasts
    /// until the file's entry changes.
    pub fn apply_declared(&mut self, spec: WebhookSpec, grace: Duration) {
        if self.declared.as_ref() == Some(&spec) {
            return;
        }
        self.declared = Some(spec.clone());
        if let Some(status) = spec.status.filter(|s| *s != self.status) {
            self.status = status;
            self.disabled_reason =
                (status == WebhookStatus::Disabled).then(|| "disabled by configuration".to_owned());
            self.updated_at = OffsetDateTime::now_utc();
        }
        self.update(spec, grace);
    }

    /// Applies a new spec, keeping id, status and counters: a status is changed only on its
    /// own (see [`Webhook::apply_declared`] and the engine's `set_status`), never as a side
    /// effect of editing other fields. A changed secret keeps the old one valid for `grace`,
    /// so receivers can switch without losing events.
    pub fn update(&mut self, mut spec: WebhookSpec, grace: Duration) {
        spec.status = None;
        // Records written before the status left the spec may still carry one.
        self.spec.status = None;
        if spec == self.spec {
            return;
        }
        let now = OffsetDateTime::now_utc();
        if spec.secret != self.spec.secret && !grace.is_zero() {
            self.previous_secret = Some(RotatedSecret {
                secret: std::mem::take(&mut self.spec.secret),
                until: now + grace,
            });
        }
        self.spec = spec;
        self.updated_at = now;
    }

    /// The previous secret while its grace period lasts.
    pub fn previous_secret_at(&self, now: OffsetDateTime) -> Option<&str> {
        self.previous_secret
            .as_ref()
            .filter(|p| p.until > now)
            .map(|p| p.secret.as_str())
    }

    pub fn view(&self) -> WebhookView {
        let s = &self.spec;
        WebhookView {
            id: self.id,
            origin: self.origin,
            name: s.name.clone(),
            url: mask_url(&s.url),
            topics: s.topics.clone(),
            status: self.status,
            disabled_reason: self.disabled_reason.clone(),
            retry: s
                .retry
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect(),
            failure_threshold: s.failure_threshold,
            timeout: humantime::format_duration(s.timeout).to_string(),
            signature: s.signature,
            header_prefix: s.header_prefix.clone(),
            mode: s.mode.kind(),
            batch_interval: match s.mode {
                Mode::Batch { interval, .. } => {
                    Some(humantime::format_duration(interval).to_string())
                }
                Mode::Realtime => None,
            },
            batch_max: match s.mode {
                Mode::Batch { max, .. } => Some(max),
                Mode::Realtime => None,
            },
            batch_order: match s.mode {
                Mode::Batch { order, .. } => Some(order),
                Mode::Realtime => None,
            },
            ordered: s.ordered,
            concurrency: s.concurrency,
            ordering_key: s.ordering_key.clone(),
            filter: s.filter.clone(),
            rate_limit: s.rate_limit.map(|r| r.to_string()),
            circuit_failures: s.circuit_failures,
            circuit_cooldown: humantime::format_duration(s.circuit_cooldown).to_string(),
            circuit: CircuitState::Closed,
            circuit_open_until: None,
            https_only: s.https_only,
            headers: s.headers.clone(),
            transform: s.transform.clone(),
            counters: self.counters.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[cfg(test)]
impl WebhookSpec {
    /// A valid spec named `name` (every topic, no retries, one request at a time) for tests.
    pub(crate) fn example(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: "https://hooks.example.com/in".parse().expect("a valid URL"),
            secret: "s".to_owned(),
            topics: vec!["*".to_owned()],
            status: None,
            retry: vec![],
            failure_threshold: 0,
            timeout: Duration::from_secs(1),
            signature: Profile::Hooktap,
            header_prefix: DEFAULT_HEADER_PREFIX.to_owned(),
            mode: Mode::Realtime,
            ordered: false,
            concurrency: 1,
            ordering_key: None,
            filter: Vec::new(),
            rate_limit: None,
            circuit_failures: DEFAULT_CIRCUIT_FAILURES,
            circuit_cooldown: DEFAULT_CIRCUIT_COOLDOWN,
            https_only: None,
            headers: BTreeMap::new(),
            transform: None,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod millis_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            list.iter()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(Duration::from_millis).collect())
    }
}
