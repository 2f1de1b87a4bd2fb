//! [`WebhookInput`]: a webhook as an operator writes it, and the checks that turn it into a
//! [`WebhookSpec`]. The config file and the admin API both go through here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use url::Url;

use super::{
    BatchOrder, DEFAULT_HEADER_PREFIX, Mode, ModeKind, Profile, WebhookSpec, WebhookStatus,
    check_url, compile_topics,
};
use crate::schedule::{default_schedule, parse_schedule};
use crate::ssrf::Guard;

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
            self.topics
                .clone()
                .map(|t| compile_topics(&t).map(|_| t).map_err(|e| e.to_string())),
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
}
