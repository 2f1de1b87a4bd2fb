//! Webhooks (subscriptions): what a subscriber asked for, and what hooktap keeps about it.
//!
//! A [`WebhookSpec`] is what an operator declares (in hooktap.toml, or later through the admin
//! API); [`Webhook`] is the stored record: the spec plus a stable id, a status, counters and
//! timestamps. The secret is write-only: [`Webhook::view`] is the form to show anywhere, and
//! [`mask_url`] hides credentials in URLs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use url::Url;
use uuid::Uuid;

/// Whether a webhook sends and whether it accepts new deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Deliveries are queued and sent.
    Active,
    /// Deliveries are queued but not sent until resumed.
    Paused,
    /// Nothing is sent and no new deliveries are queued.
    Disabled,
}

impl WebhookStatus {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "paused" => Ok(Self::Paused),
            "disabled" => Ok(Self::Disabled),
            _ => Err(format!(
                "status `{s}` must be \"active\", \"paused\" or \"disabled\""
            )),
        }
    }
}

/// How a webhook's requests are signed, and with which header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// `X-Hooktap-Webhook-*` headers (renamable with `header_prefix`), base64 HMAC-SHA256 of the body.
    Hooktap,
    /// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,...`.
    Standard,
    /// Mautic: `Webhook-Signature`, base64 HMAC-SHA256 of the body.
    Mautic,
}

impl Profile {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "hooktap" => Ok(Self::Hooktap),
            "standard" => Ok(Self::Standard),
            "mautic" => Ok(Self::Mautic),
            _ => Err(format!(
                "signature `{s}` must be \"hooktap\", \"standard\" or \"mautic\""
            )),
        }
    }
}

/// The order of payloads inside one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A webhook as it may be shown: no secret, credentials masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// `realtime` or `batch`; the batch fields are set in batch mode only.
    pub mode: &'static str,
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
            mode: match s.mode {
                Mode::Realtime => "realtime",
                Mode::Batch { .. } => "batch",
            },
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

/// A webhook as an operator writes it (in hooktap.toml or to the admin API): every field is
/// optional and unchecked until [`WebhookInput::apply`] turns it into a [`WebhookSpec`]. Both
/// the config loader and the API go through here, so they validate alike.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub topics: Option<Vec<String>>,
    pub status: Option<String>,
    pub retry: Option<String>,
    pub failure_threshold: Option<u32>,
    pub timeout: Option<String>,
    pub signature: Option<String>,
    pub header_prefix: Option<String>,
    pub mode: Option<String>,
    pub batch_interval: Option<String>,
    pub batch_max: Option<usize>,
    pub batch_order: Option<String>,
    pub ordered: Option<bool>,
    pub concurrency: Option<usize>,
}

/// What a webhook gets when its input leaves a field out.
pub struct Defaults<'a> {
    pub https_only: bool,
    pub guard: &'a crate::delivery::ssrf::Guard,
    pub timeout: Duration,
}

/// A rejected field, named as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl WebhookInput {
    /// Checks every field and builds a spec: over `base` for a partial update (fields left out
    /// keep their value), else from the defaults. Reports every bad field, not only the first.
    pub fn apply(
        self,
        base: Option<&WebhookSpec>,
        d: &Defaults<'_>,
    ) -> Result<WebhookSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = match (self.name, base) {
            (Some(n), _) if n.trim().is_empty() => check(
                &mut errors,
                "name",
                Err("name must not be empty".to_owned()),
            ),
            (Some(n), _) => Some(n.trim().to_owned()),
            (None, Some(b)) => Some(b.name.clone()),
            (None, None) => Some(format!(
                "Webhook created on {}",
                OffsetDateTime::now_utc().date()
            )),
        };
        let url = match (self.url, base) {
            (Some(u), _) => check(&mut errors, "url", check_url(&u, d.https_only, d.guard)),
            (None, Some(b)) => Some(b.url.clone()),
            (None, None) => check(&mut errors, "url", Err("url is required".to_owned())),
        };
        let secret = match (self.secret, base) {
            (Some(s), _) if s.is_empty() => check(
                &mut errors,
                "secret",
                Err("secret must not be empty".to_owned()),
            ),
            (Some(s), _) => Some(s),
            (None, Some(b)) => Some(b.secret.clone()),
            (None, None) => check(&mut errors, "secret", Err("secret is required".to_owned())),
        };
        let topics = match (self.topics, base) {
            (Some(t), _) => check(&mut errors, "topics", compile_topics(&t).map(|_| t)),
            (None, Some(b)) => Some(b.topics.clone()),
            (None, None) => check(
                &mut errors,
                "topics",
                Err("topics is required, such as [\"order.*\"]".to_owned()),
            ),
        };
        let status = match self.status {
            Some(s) => check(&mut errors, "status", WebhookStatus::parse(&s).map(Some)),
            None => Some(None),
        };
        let retry = match (self.retry, base) {
            (Some(r), _) => check(
                &mut errors,
                "retry",
                crate::delivery::retry::parse_schedule(&r),
            ),
            (None, Some(b)) => Some(b.retry.clone()),
            (None, None) => {
                crate::delivery::retry::parse_schedule(crate::delivery::retry::DEFAULT_SCHEDULE)
                    .ok()
            }
        };
        let parse_duration = |field: &str, s: &str| {
            humantime::parse_duration(s).map_err(|e| {
                format!("{field} `{s}` is not a duration such as 500ms, 5s or 1m: {e}")
            })
        };
        let timeout = match (self.timeout, base) {
            (Some(t), _) => check(&mut errors, "timeout", parse_duration("timeout", &t)),
            (None, Some(b)) => Some(b.timeout),
            (None, None) => Some(d.timeout),
        };
        let signature = match (self.signature, base) {
            (Some(s), _) => check(&mut errors, "signature", Profile::parse(&s)),
            (None, Some(b)) => Some(b.signature),
            (None, None) => Some(Profile::Hooktap),
        };
        let header_prefix = match (self.header_prefix, base) {
            (Some(p), _) => {
                let valid = !p.is_empty()
                    && http::HeaderName::from_bytes(format!("{p}Id").as_bytes()).is_ok();
                check(
                    &mut errors,
                    "header_prefix",
                    if valid {
                        Ok(p)
                    } else {
                        Err(format!(
                            "header_prefix `{p}` does not make valid header names"
                        ))
                    },
                )
            }
            (None, Some(b)) => Some(b.header_prefix.clone()),
            (None, None) => Some(DEFAULT_HEADER_PREFIX.to_owned()),
        };
        let base_batch = match base.map(|b| b.mode) {
            Some(Mode::Batch {
                interval,
                max,
                order,
            }) => Some((interval, max, order)),
            _ => None,
        };
        let mode_name = self.mode.clone().unwrap_or_else(|| {
            if base_batch.is_some() {
                "batch"
            } else {
                "realtime"
            }
            .to_owned()
        });
        let mode = match mode_name.as_str() {
            "realtime" => {
                if self.batch_interval.is_some()
                    || self.batch_max.is_some()
                    || self.batch_order.is_some()
                {
                    check(
                        &mut errors,
                        "mode",
                        Err(
                            "batch_interval, batch_max and batch_order need mode = \"batch\""
                                .to_owned(),
                        ),
                    )
                } else {
                    Some(Mode::Realtime)
                }
            }
            "batch" => {
                let interval = match self.batch_interval {
                    Some(i) => check(
                        &mut errors,
                        "batch_interval",
                        parse_duration("batch_interval", &i),
                    ),
                    None => Some(base_batch.map_or(Duration::from_secs(60), |b| b.0)),
                };
                let max = match self.batch_max {
                    Some(0) => check(
                        &mut errors,
                        "batch_max",
                        Err("batch_max must be at least 1".to_owned()),
                    ),
                    Some(m) => Some(m),
                    None => Some(base_batch.map_or(100, |b| b.1)),
                };
                let order = match self.batch_order.as_deref() {
                    Some("chronological") => Some(BatchOrder::Chronological),
                    Some("reverse") => Some(BatchOrder::Reverse),
                    Some(o) => check(
                        &mut errors,
                        "batch_order",
                        Err(format!(
                            "batch_order `{o}` must be \"chronological\" or \"reverse\""
                        )),
                    ),
                    None => Some(base_batch.map_or(BatchOrder::Chronological, |b| b.2)),
                };
                match (interval, max, order) {
                    (Some(interval), Some(max), Some(order)) => Some(Mode::Batch {
                        interval,
                        max,
                        order,
                    }),
                    _ => None,
                }
            }
            other => check(
                &mut errors,
                "mode",
                Err(format!("mode `{other}` must be \"realtime\" or \"batch\"")),
            ),
        };
        let ordered = self.ordered.or(base.map(|b| b.ordered)).unwrap_or(false);
        if ordered && matches!(mode, Some(Mode::Batch { .. })) {
            check::<()>(&mut errors, "ordered", Err("ordered cannot be combined with batch mode, which already sends one batch at a time".to_owned()));
        }
        let concurrency = match (self.concurrency, base) {
            (Some(0), _) => check(
                &mut errors,
                "concurrency",
                Err("concurrency must be at least 1".to_owned()),
            ),
            (Some(c), _) => Some(c),
            (None, Some(b)) => Some(b.concurrency),
            (None, None) => Some(8),
        };
        let failure_threshold = self
            .failure_threshold
            .or(base.map(|b| b.failure_threshold))
            .unwrap_or(5);
        match (
            name,
            url,
            secret,
            topics,
            status,
            retry,
            timeout,
            signature,
            header_prefix,
            mode,
            concurrency,
        ) {
            (
                Some(name),
                Some(url),
                Some(secret),
                Some(topics),
                Some(status),
                Some(retry),
                Some(timeout),
                Some(signature),
                Some(header_prefix),
                Some(mode),
                Some(concurrency),
            ) if errors.is_empty() => Ok(WebhookSpec {
                name,
                url,
                secret,
                topics,
                status,
                retry,
                failure_threshold,
                timeout,
                signature,
                header_prefix,
                mode,
                ordered,
                concurrency,
            }),
            _ => Err(errors),
        }
    }
}

/// `Some(value)`, or `None` with the error noted against `field`.
fn check<T>(errors: &mut Vec<FieldError>, field: &'static str, r: Result<T, String>) -> Option<T> {
    r.map_err(|message| errors.push(FieldError { field, message }))
        .ok()
}

/// Checks a webhook URL: http(s) with a host, https when `https_only`, and (for IP literals)
/// a destination the SSRF guard permits. Hostnames are checked when they are resolved.
pub fn check_url(
    url: &str,
    https_only: bool,
    guard: &crate::delivery::ssrf::Guard,
) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("url `{url}` is not a valid URL: {e}"))?;
    let shown = mask_url(&parsed);
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "url `{shown}` must be an http:// or https:// URL with a host"
        ));
    }
    if https_only && parsed.scheme() != "https" {
        return Err(format!(
            "url `{shown}` is plain http, but [delivery] https_only = true"
        ));
    }
    guard
        .check_url(&parsed)
        .map_err(|e| format!("url `{shown}`: {e}"))?;
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

    fn defaults(guard: &crate::delivery::ssrf::Guard) -> Defaults<'_> {
        Defaults {
            https_only: false,
            guard,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn input_fills_defaults_and_reports_every_bad_field() {
        let guard = crate::delivery::ssrf::Guard::default();
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
            mode: Some("batch".into()),
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
        let guard = crate::delivery::ssrf::Guard::default();
        let base = WebhookInput {
            name: Some("crm".into()),
            url: Some("https://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            mode: Some("batch".into()),
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
    fn credentials_are_masked() {
        let u = Url::parse("https://shop:pa55@hooks.example.com/in?x=1").expect("valid");
        let m = mask_url(&u);
        assert_eq!(m, "https://****@hooks.example.com/in?x=1");
        assert!(!m.contains("pa55") && !m.contains("shop"));
        let u = Url::parse("https://hooks.example.com/in").expect("valid");
        assert_eq!(mask_url(&u), "https://hooks.example.com/in");
    }
}
