//! hooktap.toml as written: serde types that mirror it one to one.
//!
//! Every table denies unknown keys, and every value a later check may reject is `Spanned`, so
//! that the error can name its line. Nothing here is validated; [`super`] compiles these into
//! checked types. Rule files have their own raw types beside the rules ([`crate::rules::raw`]).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub rules: Vec<Spanned<String>>,
    pub proxy: RawProxy,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub webhook: Vec<Spanned<RawWebhook>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub token_env: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Spanned<String>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub upstream_tls: bool,
    pub upstream_sni: Option<String>,
    pub max_capture_bytes: Option<Spanned<u64>>,
    pub max_decoded_bytes: Option<Spanned<u64>>,
    pub threads: Option<Spanned<usize>>,
    pub grace_period: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub forwarded_headers: Option<bool>,
    pub header_timeout: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub path: Option<Spanned<String>>,
    pub retention: Option<Spanned<String>>,
    pub min_free_space: Option<Spanned<String>>,
    pub flush: Option<Spanned<String>>,
    pub flush_interval: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub lease: Option<Spanned<String>>,
    pub pool_size: Option<Spanned<usize>>,
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub source: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub concurrency: Option<Spanned<usize>>,
    #[serde(default)]
    pub https_only: bool,
    #[serde(default)]
    pub allow_networks: Vec<Spanned<String>>,
    pub secret_rotation_grace: Option<Spanned<String>>,
    pub nice: Option<Spanned<i64>>,
}

/// A `[[webhook]]` table: its keys and values as written, each with its place. The keys are
/// those of [`crate::webhook::WebhookInput`] (the one declaration of a webhook's fields) plus the
/// file-only `secret_env`; the loader deserializes them into a `WebhookInput` one by one,
/// so that every bad value is reported at its own line.
#[derive(Debug, Default)]
pub struct RawWebhook {
    pub entries: Vec<(Spanned<String>, Spanned<toml::Value>)>,
}

impl<'de> Deserialize<'de> for RawWebhook {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = RawWebhook;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a webhook table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawWebhook, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(RawWebhook { entries })
            }
        }
        d.deserialize_map(TableVisitor)
    }
}
