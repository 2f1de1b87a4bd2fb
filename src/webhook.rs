//! Webhooks (subscriptions): what a subscriber asked for, and what hooktap keeps about it.
//!
//! A [`WebhookSpec`] is what an operator declares (in hooktap.toml, or later through the admin
//! API); [`Webhook`] is the stored record: the spec plus a stable id, a status, counters and
//! timestamps. The secret is write-only: [`Webhook::view`] is the form to show anywhere, and
//! [`mask_url`] hides credentials in URLs.

use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::schedule::{default_schedule, parse_schedule};
use crate::ssrf::{Blocked, Guard};

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
            counters: self.counters.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A webhook as an operator writes it (a `[[webhook]]` table of hooktap.toml, or a request body
/// of the admin API): every field is optional and unchecked until [`WebhookInput::apply`] turns
/// it into a [`WebhookSpec`]. This is the one declaration of a webhook's fields: the config
/// loader deserializes its tables into it, the API its bodies, the client sends it, and the
/// OpenAPI schema is derived from it. Names of enum values are parsed by serde, so a bad one is
/// rejected with the field and the accepted values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub name: Option<String>,
    /// May carry `user:password@`, sent as basic auth and masked wherever shown.
    pub url: Option<String>,
    #[schema(write_only)]
    pub secret: Option<String>,
    /// Glob patterns over topics: `order.*`, `*`.
    pub topics: Option<Vec<String>>,
    pub status: Option<WebhookStatus>,
    /// Retry delays, e.g. `5s,30s,1m`; bare numbers are minutes; empty for no retries.
    #[schema(examples("5s,30s,1m"))]
    pub retry: Option<String>,
    /// Consecutive finally-failed deliveries that disable the webhook; 0 never disables.
    pub failure_threshold: Option<u32>,
    /// Per-request timeout, e.g. `10s`.
    pub timeout: Option<String>,
    pub signature: Option<Profile>,
    /// Prefix of the `hooktap` profile's headers, e.g. `X-WC-Webhook-`.
    pub header_prefix: Option<String>,
    pub mode: Option<ModeKind>,
    /// Batch mode: how long deliveries gather, e.g. `1m`.
    pub batch_interval: Option<String>,
    /// Batch mode: at most this many payloads in one request.
    pub batch_max: Option<usize>,
    pub batch_order: Option<BatchOrder>,
    /// At most one delivery in flight, strictly in event order.
    pub ordered: Option<bool>,
    /// Deliveries in flight at once for this webhook.
    pub concurrency: Option<usize>,
}

/// What a webhook gets when its input leaves a field out.
pub struct Defaults<'a> {
    pub https_only: bool,
    pub guard: &'a Guard,
    pub timeout: Duration,
}

/// A rejected field, named as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// The problems found so far; checking goes on after one, so that every bad field is named.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn note(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError {
            field,
            message: message.into(),
        });
    }

    /// The checked value of a field that was given, else `fallback()` (the base's value or the
    /// default). A rejected value is noted and replaced by the fallback, so checking goes on.
    fn pick<T>(
        &mut self,
        field: &'static str,
        given: Option<Result<T, String>>,
        fallback: impl FnOnce() -> T,
    ) -> T {
        match given {
            Some(Ok(v)) => v,
            Some(Err(message)) => {
                self.note(field, message);
                fallback()
            }
            None => fallback(),
        }
    }

    /// Like [`Self::pick`] for a field without default: `required` is noted when it is
    /// neither given nor in the base.
    fn require<T>(
        &mut self,
        field: &'static str,
        given: Option<Result<T, String>>,
        base: Option<T>,
        required: &str,
    ) -> Option<T> {
        let v = self.pick(field, given.map(|r| r.map(Some)), || base);
        if v.is_none() && !self.0.iter().any(|e| e.field == field) {
            self.note(field, required);
        }
        v
    }
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{field} `{s}` is not a duration such as 500ms, 5s or 1m: {e}"))
}

fn at_least_one(field: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        Err(format!("{field} must be at least 1"))
    } else {
        Ok(n)
    }
}

fn check_name(name: &str) -> Result<String, String> {
    match name.trim() {
        "" => Err("name must not be empty".to_owned()),
        n => Ok(n.to_owned()),
    }
}

fn check_secret(secret: String) -> Result<String, String> {
    if secret.is_empty() {
        Err("secret must not be empty".to_owned())
    } else {
        Ok(secret)
    }
}

fn check_header_prefix(prefix: String) -> Result<String, String> {
    let valid = !prefix.is_empty()
        && http::HeaderName::from_bytes(format!("{prefix}Id").as_bytes()).is_ok();
    if valid {
        Ok(prefix)
    } else {
        Err(format!(
            "header_prefix `{prefix}` does not make valid header names"
        ))
    }
}

impl WebhookInput {
    /// The field names as serde reads them, taken from the derived `Deserialize` (so that the
    /// list is not written a second time).
    pub fn fields() -> &'static [&'static str] {
        struct_fields::<Self>()
    }

    /// Checks every field and builds a spec: over `base` for a partial update (fields left out
    /// keep their value), else from the defaults. Reports every bad field, not only the first.
    pub fn apply(
        self,
        base: Option<&WebhookSpec>,
        d: &Defaults<'_>,
    ) -> Result<WebhookSpec, Vec<FieldError>> {
        let mut p = Problems::default();
        let name = p.pick("name", self.name.as_deref().map(check_name), || {
            base.map_or_else(
                || format!("Webhook created on {}", OffsetDateTime::now_utc().date()),
                |b| b.name.clone(),
            )
        });
        let target = self.target(base, d, &mut p);
        let retry = p.pick(
            "retry",
            self.retry
                .as_deref()
                .map(|r| parse_schedule(r).map_err(|e| e.to_string())),
            || base.map_or_else(default_schedule, |b| b.retry.clone()),
        );
        let timeout = p.pick(
            "timeout",
            self.timeout
                .as_deref()
                .map(|t| parse_duration("timeout", t)),
            || base.map_or(d.timeout, |b| b.timeout),
        );
        let header_prefix = p.pick(
            "header_prefix",
            self.header_prefix.clone().map(check_header_prefix),
            || {
                base.map_or_else(
                    || DEFAULT_HEADER_PREFIX.to_owned(),
                    |b| b.header_prefix.clone(),
                )
            },
        );
        let mode = self.mode_over(base.map(|b| b.mode), &mut p);
        let ordered = self.ordered.or(base.map(|b| b.ordered)).unwrap_or(false);
        if ordered && mode.kind() == ModeKind::Batch {
            p.note(
                "ordered",
                "ordered cannot be combined with batch mode, which already sends one batch at a time",
            );
        }
        let concurrency = p.pick(
            "concurrency",
            self.concurrency.map(|c| at_least_one("concurrency", c)),
            || base.map_or(8, |b| b.concurrency),
        );
        match target {
            Some((url, secret, topics)) if p.0.is_empty() => Ok(WebhookSpec {
                name,
                url,
                secret,
                topics,
                status: self.status,
                retry,
                failure_threshold: self
                    .failure_threshold
                    .or(base.map(|b| b.failure_threshold))
                    .unwrap_or(5),
                timeout,
                signature: self
                    .signature
                    .or(base.map(|b| b.signature))
                    .unwrap_or(Profile::Hooktap),
                header_prefix,
                mode,
                ordered,
                concurrency,
            }),
            _ => Err(p.0),
        }
    }

    /// The fields without default: where to send, the signing secret, which topics. `None`
    /// when one is neither given nor in `base`, or was rejected (noted in `p`).
    fn target(
        &self,
        base: Option<&WebhookSpec>,
        d: &Defaults<'_>,
        p: &mut Problems,
    ) -> Option<(Url, String, Vec<String>)> {
        let url = p.require(
            "url",
            self.url
                .as_deref()
                .map(|u| check_url(u, d.https_only, d.guard).map_err(|e| e.to_string())),
            base.map(|b| b.url.clone()),
            "url is required",
        );
        let secret = p.require(
            "secret",
            self.secret.clone().map(check_secret),
            base.map(|b| b.secret.clone()),
            "secret is required",
        );
        let topics = p.require(
            "topics",
            self.topics.clone().map(|t| compile_topics(&t).map(|_| t)),
            base.map(|b| b.topics.clone()),
            "topics is required, such as [\"order.*\"]",
        );
        Some((url?, secret?, topics?))
    }

    /// The mode with its batch settings: those given, else the base's (when it batches too),
    /// else the defaults. Batch settings without batch mode are an error.
    fn mode_over(&self, base: Option<Mode>, p: &mut Problems) -> Mode {
        let base_batch = match base {
            Some(Mode::Batch {
                interval,
                max,
                order,
            }) => Some((interval, max, order)),
            _ => None,
        };
        let kind = self.mode.unwrap_or(if base_batch.is_some() {
            ModeKind::Batch
        } else {
            ModeKind::Realtime
        });
        match kind {
            ModeKind::Realtime => {
                if self.batch_interval.is_some()
                    || self.batch_max.is_some()
                    || self.batch_order.is_some()
                {
                    p.note(
                        "mode",
                        "batch_interval, batch_max and batch_order need mode = \"batch\"",
                    );
                }
                Mode::Realtime
            }
            ModeKind::Batch => {
                let (interval, max, order) =
                    base_batch.unwrap_or((Duration::from_secs(60), 100, BatchOrder::Chronological));
                Mode::Batch {
                    interval: p.pick(
                        "batch_interval",
                        self.batch_interval
                            .as_deref()
                            .map(|i| parse_duration("batch_interval", i)),
                        || interval,
                    ),
                    max: p.pick(
                        "batch_max",
                        self.batch_max.map(|m| at_least_one("batch_max", m)),
                        || max,
                    ),
                    order: self.batch_order.unwrap_or(order),
                }
            }
        }
    }
}

/// The field names a derived `Deserialize` passes to `deserialize_struct`.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, value::Error> {
            *self.0 = fields;
            Err(value::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    // The probe always fails: it stops as soon as it has the names.
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// A webhook URL that deliveries cannot use; credentials are masked in every message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url `{url}` is not a valid URL: {reason}")]
    Invalid {
        url: String,
        reason: url::ParseError,
    },
    #[error("url `{0}` must be an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error("url `{0}` is plain http, but [delivery] https_only = true")]
    PlainHttp(String),
    #[error("url `{url}`: {blocked}")]
    Blocked { url: String, blocked: Blocked },
}

/// Checks a webhook URL: http(s) with a host, https when `https_only`, and (for IP literals)
/// a destination the SSRF guard permits. Hostnames are checked when they are resolved.
pub fn check_url(url: &str, https_only: bool, guard: &Guard) -> Result<Url, UrlError> {
    let parsed = Url::parse(url).map_err(|reason| UrlError::Invalid {
        url: url.to_owned(),
        reason,
    })?;
    let shown = mask_url(&parsed);
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(UrlError::NotHttp(shown));
    }
    if https_only && parsed.scheme() != "https" {
        return Err(UrlError::PlainHttp(shown));
    }
    guard
        .check_url(&parsed)
        .map_err(|blocked| UrlError::Blocked {
            url: shown,
            blocked,
        })?;
    Ok(parsed)
}

/// Compiles topic glob patterns (`order.*`, `*`); at least one is required.
pub fn compile_topics(topics: &[String]) -> Result<globset::GlobSet, String> {
    if topics.is_empty() {
        return Err("`topics` must list at least one pattern".to_owned());
    }
    let mut set = globset::GlobSetBuilder::new();
    for t in topics {
        // Topics are lower-case `[a-z0-9_.-]`; a pattern with other letters can never match.
        if t.chars().any(|c| c.is_uppercase() || c.is_whitespace()) {
            return Err(format!(
                "topic pattern `{t}` can never match: topics are lower-case, without spaces"
            ));
        }
        set.add(globset::Glob::new(t).map_err(|e| format!("topic pattern `{t}` is invalid: {e}"))?);
    }
    set.build()
        .map_err(|e| format!("topic patterns are invalid: {e}"))
}

/// The URL with any password (and user name) replaced by `****`, for logs and output.
pub fn mask_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut masked = url.clone();
    // Setting credentials only fails for URLs that cannot have them (no host), which a
    // validated webhook URL always has; fall back to dropping them entirely.
    if masked
        .set_username("****")
        .and(masked.set_password(None))
        .is_err()
    {
        return format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    }
    masked.to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(guard: &Guard) -> Defaults<'_> {
        Defaults {
            https_only: false,
            guard,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn input_fills_defaults_and_reports_every_bad_field() {
        let guard = Guard::default();
        let input = WebhookInput {
            url: Some("https://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            ..WebhookInput::default()
        };
        let spec = input.apply(None, &defaults(&guard)).expect("valid");
        assert!(spec.name.starts_with("Webhook created on "));
        assert_eq!(
            (
                spec.signature,
                spec.mode,
                spec.concurrency,
                spec.failure_threshold
            ),
            (Profile::Hooktap, Mode::Realtime, 8, 5)
        );
        assert_eq!(spec.retry.len(), 11);

        let bad = WebhookInput {
            url: Some("ftp://x".into()),
            topics: Some(vec![]),
            retry: Some("5s,soon".into()),
            mode: Some(ModeKind::Batch),
            ordered: Some(true),
            ..WebhookInput::default()
        };
        let fields: Vec<&str> = bad
            .apply(None, &defaults(&guard))
            .unwrap_err()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["url", "secret", "topics", "retry", "ordered"]);
    }

    #[test]
    fn a_partial_update_keeps_what_it_leaves_out() {
        let guard = Guard::default();
        let base = WebhookInput {
            name: Some("crm".into()),
            url: Some("https://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            mode: Some(ModeKind::Batch),
            batch_max: Some(7),
            ..WebhookInput::default()
        }
        .apply(None, &defaults(&guard))
        .expect("valid");
        let update = WebhookInput {
            batch_interval: Some("5s".into()),
            ..WebhookInput::default()
        };
        let spec = update.apply(Some(&base), &defaults(&guard)).expect("valid");
        assert_eq!(spec.name, "crm");
        assert_eq!(
            spec.mode,
            Mode::Batch {
                interval: Duration::from_secs(5),
                max: 7,
                order: BatchOrder::Chronological
            }
        );
    }

    #[test]
    fn input_parses_enum_names_with_serde_and_names_the_field() {
        let input: WebhookInput = serde_json::from_str(
            r#"{"status": "paused", "signature": "standard", "mode": "batch", "batch_order": "reverse"}"#,
        )
        .expect("valid");
        assert_eq!(
            (input.status, input.signature, input.mode, input.batch_order),
            (
                Some(WebhookStatus::Paused),
                Some(Profile::Standard),
                Some(ModeKind::Batch),
                Some(BatchOrder::Reverse)
            )
        );
        let mut de =
            serde_json::Deserializer::from_str(r#"{"url": "https://x/", "signature": "hmac"}"#);
        let e = serde_path_to_error::deserialize::<_, WebhookInput>(&mut de).unwrap_err();
        assert_eq!(e.path().to_string(), "signature");
        let message = e.inner().to_string();
        assert!(
            message.contains("unknown variant `hmac`")
                && message.contains("`hooktap`, `standard`, `mautic`"),
            "{message}"
        );
        assert!(serde_json::from_str::<WebhookInput>(r#"{"colour": "red"}"#).is_err());
    }

    #[test]
    fn input_fields_are_the_serde_names() {
        let fields = WebhookInput::fields();
        assert_eq!(fields.len(), 16);
        assert_eq!(fields[0], "name");
        assert!(fields.contains(&"batch_order") && fields.contains(&"concurrency"));
    }

    #[test]
    fn an_input_round_trips_through_json_for_the_client() {
        let input = WebhookInput {
            status: Some(WebhookStatus::Paused),
            signature: Some(Profile::Mautic),
            ..WebhookInput::default()
        };
        let json = serde_json::to_string(&input).expect("serializes");
        assert!(json.contains(r#""status":"paused""#) && json.contains(r#""signature":"mautic""#));
        assert_eq!(
            serde_json::from_str::<WebhookInput>(&json).expect("parses"),
            input
        );
    }

    #[test]
    fn realtime_mode_rejects_batch_settings_and_batch_checks_them() {
        let guard = Guard::default();
        let base = WebhookInput {
            url: Some("https://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            ..WebhookInput::default()
        };
        let e = WebhookInput {
            batch_max: Some(3),
            ..base.clone()
        }
        .apply(None, &defaults(&guard))
        .unwrap_err();
        assert_eq!(e[0].field, "mode");
        let e = WebhookInput {
            mode: Some(ModeKind::Batch),
            batch_max: Some(0),
            batch_interval: Some("soon".into()),
            header_prefix: Some("Bad Prefix".into()),
            ..base.clone()
        }
        .apply(None, &defaults(&guard))
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["header_prefix", "batch_interval", "batch_max"]);
        let spec = WebhookInput {
            status: Some(WebhookStatus::Disabled),
            mode: Some(ModeKind::Batch),
            ..base
        }
        .apply(None, &defaults(&guard))
        .expect("valid");
        assert_eq!(spec.status, Some(WebhookStatus::Disabled));
        assert_eq!(spec.mode.kind(), ModeKind::Batch);
    }

    #[test]
    fn url_errors_say_why_with_credentials_masked() {
        let guard = Guard::default();
        let e = check_url("http://shop:pa55@hooks.example.com/in", true, &guard).unwrap_err();
        assert_eq!(
            e,
            UrlError::PlainHttp("http://****@hooks.example.com/in".into())
        );
        assert!(!e.to_string().contains("pa55"));
        assert!(matches!(
            check_url("ftp://x/", false, &guard),
            Err(UrlError::NotHttp(_))
        ));
        assert!(matches!(
            check_url("http://127.0.0.1/", false, &guard),
            Err(UrlError::Blocked { .. })
        ));
        assert!(matches!(
            check_url("not a url", false, &guard),
            Err(UrlError::Invalid { .. })
        ));
        assert!(check_url("https://hooks.example.com/in", true, &guard).is_ok());
    }

    #[test]
    fn credentials_are_masked() {
        let u = Url::parse("https://shop:pa55@hooks.example.com/in?x=1").expect("valid");
        let m = mask_url(&u);
        assert_eq!(m, "https://****@hooks.example.com/in?x=1");
        assert!(!m.contains("pa55") && !m.contains("shop"));
        let u = Url::parse("https://hooks.example.com/in").expect("valid");
        assert_eq!(mask_url(&u), "https://hooks.example.com/in");
    }
}
