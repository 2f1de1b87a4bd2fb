//! [`WebhookInput`]: a webhook as an operator writes it, and the checks that turn it into a
//! [`WebhookSpec`]. The config file and the admin API both go through here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

use url::Url;

use super::{
    BatchOrder, DEFAULT_CIRCUIT_COOLDOWN, DEFAULT_CIRCUIT_FAILURES, DEFAULT_HEADER_PREFIX, Mode,
    ModeKind, Profile, RateLimit, WebhookSpec, WebhookStatus, check_headers, check_ordering_key,
    check_url, compile_filter, compile_topics,
};
use crate::rules::raw::RawWhen;
use crate::schedule::{default_schedule, parse_schedule};
use crate::ssrf::Guard;

/// A webhook as an operator writes it (a `[[webhook]]` table of hooktap.toml, or a request body
/// of the admin API): every field is optional and unchecked until [`WebhookInput::apply`] turns
/// it into a [`WebhookSpec`]. This is the one declaration of a webhook's fields: the config
/// loader deserializes its tables into it, the API its bodies, the client sends it, and the
/// OpenAPI schema is derived from it. Names of enum values are parsed by serde, so a bad one is
/// rejected with the field and the accepted values.
///
/// The schema attributes state every rule of `apply` that JSON Schema can state (non-empty
/// strings, bounds, the header name alphabet); the others (a URL the SSRF guard permits,
/// durations, globs, batch settings only in batch mode) are in the descriptions, and a value
/// that breaks one is a 400 naming the field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Unique; surrounding whitespace is trimmed, and something must be left.
    // The pattern: a character that `char::is_whitespace` (what `trim` strips) says is not.
    #[schema(pattern = r"[^\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]")]
    pub name: Option<String>,
    /// An `http://` or `https://` URL with a host, which the SSRF guard permits. May carry
    /// `user:password@`, sent as basic auth and masked wherever shown.
    pub url: Option<String>,
    /// Not empty; never shown.
    #[schema(write_only, min_length = 1)]
    pub secret: Option<String>,
    /// Glob patterns over topics: `order.*`, `*`. Topics are lower-case, without spaces.
    #[schema(min_items = 1, max_items = 1000)]
    pub topics: Option<Vec<String>>,
    pub status: Option<WebhookStatus>,
    /// Retry delays, e.g. `5s,30s,1m`; bare numbers are minutes; empty for no retries.
    #[schema(examples("5s,30s,1m"))]
    pub retry: Option<String>,
    /// Consecutive finally-failed deliveries that disable the webhook; 0 never disables.
    #[serde(default, deserialize_with = "whole_number")]
    pub failure_threshold: Option<u32>,
    /// Per-request timeout, e.g. `10s`.
    pub timeout: Option<String>,
    pub signature: Option<Profile>,
    /// Prefix of the `hooktap` profile's headers, e.g. `X-WC-Webhook-`: header name characters.
    #[schema(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", max_length = 65533)]
    pub header_prefix: Option<String>,
    pub mode: Option<ModeKind>,
    /// Batch mode: how long deliveries gather, e.g. `1m`.
    pub batch_interval: Option<String>,
    /// Batch mode: at most this many payloads in one request.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(format = UInt64, minimum = 1)]
    pub batch_max: Option<usize>,
    pub batch_order: Option<BatchOrder>,
    /// At most one delivery in flight, strictly in event order.
    pub ordered: Option<bool>,
    /// Deliveries in flight at once for this webhook.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(format = UInt64, minimum = 1)]
    pub concurrency: Option<usize>,
    /// A JSONPath over the event payload, e.g. `$.order_id`: deliveries with the same key
    /// are sent strictly in event order, one in flight per key, while other keys flow. An
    /// event whose payload has no such value is sent without waiting. Empty for none; not
    /// with `ordered` or batch mode.
    #[schema(examples("$.order_id"))]
    pub ordering_key: Option<String>,
    /// Predicates over the event payload (`$`), written as a rule's `when` list: only events
    /// that pass every one get a delivery. Empty for none.
    pub filter: Option<Vec<RawWhen>>,
    /// At most this many requests, evenly spaced: `50/s`, `600/m` or `10/h`. Deliveries wait
    /// for their turn, none is dropped. Empty for no limit.
    #[schema(examples("50/s"), pattern = "^([1-9][0-9]{0,8}/[smh])?$")]
    pub rate_limit: Option<String>,
    /// Consecutive failed requests that open the circuit (nothing sent until the cool-down
    /// ends, then one probe); 0 never opens it.
    #[serde(default, deserialize_with = "whole_number")]
    pub circuit_failures: Option<u32>,
    /// How long an open circuit waits before its probe, e.g. `30s`.
    pub circuit_cooldown: Option<String>,
    /// Refuse a plain `http://` URL. `null` gives the choice back to `[delivery] https_only`
    /// (as leaving it out does when creating); left out of a `PUT`, it is unchanged.
    #[serde(
        default,
        deserialize_with = "null_clears",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<bool>)]
    pub https_only: Option<Option<bool>>,
    /// Extra static headers sent with every request, e.g. `{"X-Team": "crm"}`; not those
    /// hooktap sets itself (content, signature, auth and trace headers).
    pub headers: Option<BTreeMap<String, String>>,
    /// The body's shape for this webhook: fields as in a rule's `[rule.payload]` (a JSONPath,
    /// `{ "path", "regex" }`, `{ "expr": CEL }`, `{ "value": constant }`, or a nested object),
    /// over `payload`, `topic`, `event_id` and `time`. `{}` removes it.
    #[schema(value_type = Option<Object>)]
    pub transform: Option<serde_json::Value>,
}

/// Reads a field whose `null` means something: left out is `None` (unchanged), `null` is
/// `Some(None)` (back to the default), a value is `Some(Some(value))`.
fn null_clears<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Reads an optional whole number written as `8` or as `8.0`: the schema's `integer` admits
/// both (JSON Schema compares values, not spellings, and a Python client writes a float that
/// holds 8 as `8.0`), serde on its own only the first. Anything else, or a number `T` cannot
/// hold, is refused as serde refuses it.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::{Error, Unexpected, Visitor};

    struct WholeNumber<T>(std::marker::PhantomData<T>);

    impl<'de, T: TryFrom<u64>> Visitor<'de> for WholeNumber<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a whole number that fits {}", std::any::type_name::<T>())
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            T::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            // 2^64 as a float: every whole float below it converts to a u64 exactly.
            const TWO_TO_THE_64: f64 = 18_446_744_073_709_551_616.0;
            if v.fract() == 0.0 && (0.0..TWO_TO_THE_64).contains(&v) {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                self.visit_u64(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    deserializer.deserialize_option(WholeNumber(std::marker::PhantomData))
}

/// `schema_type` without `null`.
fn not_null(schema_type: &SchemaType) -> SchemaType {
    match schema_type {
        SchemaType::Array(types) => {
            let types: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            match types.as_slice() {
                [one] => SchemaType::Type(one.clone()),
                _ => SchemaType::Array(types),
            }
        }
        other => other.clone(),
    }
}

/// The body of `POST /webhooks`: a [`WebhookInput`] in which the fields without default
/// ([`NewWebhook::REQUIRED`]) must be given. It reads exactly as a [`WebhookInput`] (`apply`
/// over no base reports the missing ones); only its schema says more.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct NewWebhook(pub WebhookInput);

impl NewWebhook {
    /// The fields a new webhook must be given: they have no default.
    pub const REQUIRED: [&str; 3] = ["url", "secret", "topics"];
}

impl ToSchema for NewWebhook {}

impl PartialSchema for NewWebhook {
    /// [`WebhookInput`]'s schema with [`NewWebhook::REQUIRED`] required and not nullable.
    fn schema() -> RefOr<Schema> {
        let mut schema = WebhookInput::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.description = Some(
                "A new webhook: a webhook input in which `url`, `secret` and `topics` are required."
                    .to_owned(),
            );
            for field in Self::REQUIRED {
                let schema_type = match object.properties.get_mut(field) {
                    Some(RefOr::T(Schema::Object(property))) => Some(&mut property.schema_type),
                    Some(RefOr::T(Schema::Array(property))) => Some(&mut property.schema_type),
                    _ => None,
                };
                if let Some(schema_type) = schema_type {
                    *schema_type = not_null(schema_type);
                }
                object.required.push(field.to_owned());
            }
        }
        schema
    }
}

/// The checked delivery settings of [`WebhookInput::delivery_settings`].
struct DeliverySettings {
    ordering_key: Option<String>,
    filter: Vec<RawWhen>,
    rate_limit: Option<RateLimit>,
    circuit_failures: u32,
    circuit_cooldown: Duration,
    headers: BTreeMap<String, String>,
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
        let delivery = self.delivery_settings(base, &header_prefix, &mut p);
        if delivery.ordering_key.is_some() && (ordered || mode.kind() == ModeKind::Batch) {
            p.note(
                "ordering_key",
                "ordering_key cannot be combined with ordered = true or batch mode, which already send one request at a time",
            );
        }
        let transform = p.pick(
            "transform",
            self.transform.map(|t| match &t {
                serde_json::Value::Object(m) if m.is_empty() => Ok(None),
                _ => super::transform::Transform::compile(&t).map(|_| Some(t)),
            }),
            || base.and_then(|b| b.transform.clone()),
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
                ordering_key: delivery.ordering_key,
                filter: delivery.filter,
                rate_limit: delivery.rate_limit,
                circuit_failures: delivery.circuit_failures,
                circuit_cooldown: delivery.circuit_cooldown,
                https_only: self.https_only.unwrap_or(base.and_then(|b| b.https_only)),
                headers: delivery.headers,
                transform,
            }),
            _ => Err(p.0),
        }
    }

    /// The ordering key, filter, rate limit, circuit breaker and headers: given, else the
    /// base's, else the defaults. An empty `ordering_key` or `rate_limit` clears it.
    fn delivery_settings(
        &self,
        base: Option<&WebhookSpec>,
        header_prefix: &str,
        p: &mut Problems,
    ) -> DeliverySettings {
        let ordering_key = p.pick(
            "ordering_key",
            self.ordering_key.as_deref().map(|k| match k.trim() {
                "" => Ok(None),
                k => check_ordering_key(k).map(|_| Some(k.to_owned())),
            }),
            || base.and_then(|b| b.ordering_key.clone()),
        );
        let filter = p.pick(
            "filter",
            self.filter.clone().map(|f| compile_filter(&f).map(|_| f)),
            || base.map(|b| b.filter.clone()).unwrap_or_default(),
        );
        let rate_limit = p.pick(
            "rate_limit",
            self.rate_limit.as_deref().map(|r| match r {
                "" => Ok(None),
                r => RateLimit::parse(r).map(Some),
            }),
            || base.and_then(|b| b.rate_limit),
        );
        let circuit_cooldown = p.pick(
            "circuit_cooldown",
            self.circuit_cooldown
                .as_deref()
                .map(|c| parse_duration("circuit_cooldown", c)),
            || base.map_or(DEFAULT_CIRCUIT_COOLDOWN, |b| b.circuit_cooldown),
        );
        // Headers are checked against the prefix in force, so a new prefix is checked too.
        let headers = p.pick(
            "headers",
            self.headers
                .clone()
                .or_else(|| {
                    self.header_prefix
                        .as_ref()
                        .and(base.map(|b| b.headers.clone()))
                })
                .map(|h| check_headers(h, header_prefix)),
            || base.map(|b| b.headers.clone()).unwrap_or_default(),
        );
        DeliverySettings {
            ordering_key,
            filter,
            rate_limit,
            circuit_failures: self
                .circuit_failures
                .or(base.map(|b| b.circuit_failures))
                .unwrap_or(DEFAULT_CIRCUIT_FAILURES),
            circuit_cooldown,
            headers,
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
        // The webhook's own `https_only`, else the global default.
        let https_only = self
            .https_only
            .unwrap_or(base.and_then(|b| b.https_only))
            .unwrap_or(d.https_only);
        let url = p.require(
            "url",
            self.url
                .as_deref()
                .map(|u| check_url(u, https_only, d.guard).map_err(|e| e.to_string())),
            base.map(|b| b.url.clone()),
            "url is required",
        );
        if self.url.is_none() && https_only && url.as_ref().is_some_and(|u| u.scheme() != "https") {
            p.note(
                "https_only",
                "https_only is set but the webhook's URL is plain http://; give an https:// url too",
            );
        }
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

/// The field names a derived `Deserialize` passes to `deserialize_struct` (for a
/// `#[serde(transparent)]` wrapper: those of the struct inside).
pub fn struct_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
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
    use crate::webhook::destination::MAX_TOPIC_PATTERNS;

    fn defaults(guard: &Guard) -> Defaults<'_> {
        Defaults {
            https_only: false,
            guard,
            timeout: Duration::from_secs(10),
        }
    }

    /// A property of a schema, as the document serves it.
    fn property<T: PartialSchema>(field: &str) -> serde_json::Value {
        let schema = serde_json::to_value(T::schema()).expect("a schema serializes");
        schema["properties"][field].clone()
    }

    /// Every character, each as a string.
    fn every_char() -> impl Iterator<Item = String> {
        (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .map(String::from)
    }

    /// The document's pattern for `name` admits exactly the names `check_name` keeps: its
    /// character class must be `char::is_whitespace`'s, which `trim` strips.
    #[test]
    fn the_name_pattern_is_exactly_what_trim_leaves_something_of() {
        let pattern = property::<WebhookInput>("name")["pattern"]
            .as_str()
            .expect("name has a pattern")
            .to_owned();
        let re = regex::Regex::new(&pattern).expect("the pattern is a regular expression");
        for c in every_char() {
            assert_eq!(re.is_match(&c), check_name(&c).is_ok(), "{c:?}");
        }
        assert!(!re.is_match(" \u{85}\u{3000} ") && check_name(" \u{85}\u{3000} ").is_err());
    }

    /// The document's pattern and length for `header_prefix` admit exactly the prefixes that
    /// make valid header names.
    #[test]
    fn the_header_prefix_pattern_is_exactly_the_header_name_alphabet() {
        let schema = property::<WebhookInput>("header_prefix");
        let re = regex::Regex::new(schema["pattern"].as_str().expect("a pattern"))
            .expect("the pattern is a regular expression");
        for c in every_char() {
            assert_eq!(
                re.is_match(&c),
                check_header_prefix(c.clone()).is_ok(),
                "{c:?}"
            );
        }
        let longest =
            usize::try_from(schema["maxLength"].as_u64().expect("a maxLength")).expect("fits");
        assert!(check_header_prefix("a".repeat(longest)).is_ok());
        assert!(check_header_prefix("a".repeat(longest + 1)).is_err());
        assert!(check_header_prefix(String::new()).is_err() && !re.is_match(""));
    }

    /// The bounds the document states are the ones `apply` checks.
    #[test]
    fn the_documented_bounds_are_the_checked_ones() {
        assert_eq!(property::<WebhookInput>("secret")["minLength"], 1);
        assert_eq!(
            property::<WebhookInput>("rate_limit")["pattern"],
            super::super::RateLimit::PATTERN
        );
        assert!(check_secret(String::new()).is_err() && check_secret("s".into()).is_ok());
        let topics = property::<WebhookInput>("topics");
        assert_eq!(topics["minItems"], 1);
        assert!(compile_topics(&[]).is_err());
        assert_eq!(topics["maxItems"], MAX_TOPIC_PATTERNS);
        for field in ["batch_max", "concurrency"] {
            assert_eq!(property::<WebhookInput>(field)["minimum"], 1, "{field}");
            assert!(at_least_one(field, 0).is_err() && at_least_one(field, 1).is_ok());
        }
    }

    /// A whole number reads from `8` and from `8.0`, and nothing else does: JSON Schema's
    /// `integer`, which the document states, admits both spellings.
    #[test]
    fn whole_numbers_read_as_integers_or_integral_floats() {
        let read = |json: &str| serde_json::from_str::<WebhookInput>(json);
        let input = read(r#"{"failure_threshold": 7.0, "concurrency": 8, "batch_max": 1e3}"#)
            .expect("whole numbers");
        assert_eq!(
            (input.failure_threshold, input.concurrency, input.batch_max),
            (Some(7), Some(8), Some(1000))
        );
        assert_eq!(
            read(r#"{"concurrency": null}"#).expect("null").concurrency,
            None
        );
        assert_eq!(read("{}").expect("absent").concurrency, None);
        for bad in [
            r#"{"failure_threshold": 7.5}"#,
            r#"{"failure_threshold": -1}"#,
            r#"{"failure_threshold": -1.0}"#,
            r#"{"failure_threshold": 4294967296}"#,
            r#"{"concurrency": 18446744073709551616}"#,
            r#"{"concurrency": "8"}"#,
            r#"{"concurrency": true}"#,
        ] {
            let e = read(bad).expect_err(bad).to_string();
            assert!(e.contains("a whole number that fits"), "{bad}: {e}");
        }
    }

    /// `POST /webhooks` requires exactly the fields `apply` cannot default, and they may not
    /// be `null` there.
    #[test]
    fn a_new_webhook_requires_exactly_the_fields_without_default() {
        let guard = Guard::default();
        let missing: Vec<&str> = WebhookInput::default()
            .apply(None, &defaults(&guard))
            .unwrap_err()
            .iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(missing, NewWebhook::REQUIRED);
        let schema = serde_json::to_value(NewWebhook::schema()).expect("serializes");
        assert_eq!(schema["required"], serde_json::json!(NewWebhook::REQUIRED));
        assert_eq!(schema["additionalProperties"], false);
        for field in NewWebhook::REQUIRED {
            let types = &schema["properties"][field]["type"];
            assert!(types.is_string() && types != "null", "{field}: {types}");
        }
        assert_eq!(
            schema["properties"]["name"]["type"],
            serde_json::json!(["string", "null"])
        );
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

    /// A webhook's own `https_only` wins over the global default, both ways, and turning it
    /// on over a plain http:// URL is refused on the field.
    #[test]
    fn https_only_per_webhook_overrides_the_default() {
        let guard = Guard::default();
        let strict = Defaults {
            https_only: true,
            ..defaults(&guard)
        };
        let http = WebhookInput {
            url: Some("http://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            ..WebhookInput::default()
        };
        let e = http.clone().apply(None, &strict).unwrap_err();
        assert_eq!(e[0].field, "url");
        let allowed = WebhookInput {
            https_only: Some(Some(false)),
            ..http.clone()
        }
        .apply(None, &strict)
        .expect("the webhook allows http");
        assert_eq!(allowed.https_only, Some(false));
        let base = http.clone().apply(None, &defaults(&guard)).expect("valid");
        let e = WebhookInput {
            https_only: Some(Some(true)),
            ..WebhookInput::default()
        }
        .apply(Some(&base), &defaults(&guard))
        .unwrap_err();
        assert_eq!(e[0].field, "https_only", "{e:?}");
        let e = WebhookInput {
            https_only: Some(Some(true)),
            ..http
        }
        .apply(None, &defaults(&guard))
        .unwrap_err();
        assert_eq!(e[0].field, "url");
    }

    /// `null` gives `https_only` back to the global default; left out, the webhook's own
    /// setting stays; and the CLI's input, serialised, leaves out what it does not set.
    #[test]
    fn https_only_null_returns_to_the_default() {
        let guard = Guard::default();
        let d = defaults(&guard);
        let read = |json: &str| serde_json::from_str::<WebhookInput>(json).expect("input");
        let base = read(
            r#"{"url": "https://hooks.example.com/in", "secret": "s", "topics": ["a"], "https_only": true}"#,
        )
        .apply(None, &d)
        .expect("valid");
        assert_eq!(base.https_only, Some(true));
        let kept = read(r#"{"name": "renamed"}"#)
            .apply(Some(&base), &d)
            .expect("valid");
        assert_eq!(kept.https_only, Some(true));
        let cleared = read(r#"{"https_only": null}"#)
            .apply(Some(&base), &d)
            .expect("valid");
        assert_eq!(cleared.https_only, None);
        let unset = WebhookInput {
            name: Some("n".into()),
            ..WebhookInput::default()
        };
        let json = serde_json::to_value(&unset).expect("serialise");
        assert!(json.get("https_only").is_none(), "{json}");
        assert_eq!(read(&json.to_string()), unset);
    }

    #[test]
    fn delivery_settings_are_checked_kept_and_cleared() {
        let guard = Guard::default();
        let base = WebhookInput {
            url: Some("https://hooks.example.com/in".into()),
            secret: Some("s".into()),
            topics: Some(vec!["order.*".into()]),
            ordering_key: Some("$.order_id".into()),
            rate_limit: Some("50/s".into()),
            headers: Some(BTreeMap::from([("X-Team".into(), "crm".into())])),
            ..WebhookInput::default()
        }
        .apply(None, &defaults(&guard))
        .expect("valid");
        assert_eq!(base.ordering_key.as_deref(), Some("$.order_id"));
        assert_eq!(base.circuit_failures, DEFAULT_CIRCUIT_FAILURES);
        let kept = WebhookInput {
            circuit_failures: Some(0),
            ..WebhookInput::default()
        }
        .apply(Some(&base), &defaults(&guard))
        .expect("valid");
        assert_eq!(
            (kept.rate_limit, kept.headers.len(), kept.circuit_failures),
            (base.rate_limit, 1, 0)
        );
        let cleared = WebhookInput {
            ordering_key: Some(String::new()),
            rate_limit: Some(String::new()),
            headers: Some(BTreeMap::new()),
            ..WebhookInput::default()
        }
        .apply(Some(&base), &defaults(&guard))
        .expect("valid");
        assert_eq!(
            (
                cleared.ordering_key,
                cleared.rate_limit,
                cleared.headers.len()
            ),
            (None, None, 0)
        );
        // A new header_prefix is checked against the headers kept.
        let e = WebhookInput {
            header_prefix: Some("X-Team".into()),
            ..WebhookInput::default()
        }
        .apply(Some(&base), &defaults(&guard))
        .unwrap_err();
        assert_eq!(e[0].field, "headers", "{e:?}");
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
        assert_eq!(fields.len(), 24);
        assert_eq!(fields[0], "name");
        assert!(fields.contains(&"batch_order") && fields.contains(&"concurrency"));
        assert!(fields.contains(&"transform"));
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
