//! Rule files as written: serde types that mirror a rule file one to one.
//!
//! Every table denies unknown keys, and every value a later check may reject is `Spanned`, so
//! that the error can name its line. Nothing here is validated; [`super::RuleSet::add`] and
//! [`super::test::RuleTest::compile`] turn these into checked types. [`crate::config`] reads the
//! files and hands these over; nothing here knows about the config file.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    #[serde(default)]
    pub rule: Vec<RawRule>,
    #[serde(default)]
    pub test: Vec<RawTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub topic: Spanned<String>,
    pub method: Option<Spanned<OneOrMany>>,
    pub path: Spanned<String>,
    pub status: Option<Spanned<Vec<StatusSpec>>>,
    #[serde(default)]
    pub when: Vec<Spanned<RawWhen>>,
    pub payload: Option<Spanned<RawPayload>>,
    #[serde(default)]
    pub required: Vec<Spanned<String>>,
}

/// `method = "POST"` or `method = ["PUT", "PATCH"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `201` or `"2xx"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(i64),
    Class(String),
}

/// One list-form predicate: a JSONPath and exactly one operator. Rules' `when` and webhooks'
/// `filter` share it (a webhook stores it as written, so it serializes too).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// A JSONPath starting with `$`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Value>,
    #[serde(rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// A regular expression over the value's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
}

/// `payload = "$.response.body"` or a `[rule.payload]` table of fields.
#[derive(Debug)]
pub enum RawPayload {
    Whole(String),
    Fields(Vec<(String, Spanned<RawField>)>),
}

/// A payload field: `"$.path"` or `{ path = "$.path", regex = "..." }`.
#[derive(Debug)]
pub struct RawField {
    pub path: String,
    pub regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFieldTable {
    path: String,
    regex: Option<String>,
}

// Hand-written rather than `#[serde(untagged)]`: untagged enums buffer their input and so lose
// the spans that `Spanned` fields need for `file:line` errors.
impl<'de> Deserialize<'de> for RawPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = RawPayload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSONPath string or a table of payload fields")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPayload, E> {
                Ok(RawPayload::Whole(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPayload, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    fields.push((key, map.next_value::<Spanned<RawField>>()?));
                }
                Ok(RawPayload::Fields(fields))
            }
        }
        d.deserialize_any(PayloadVisitor)
    }
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSONPath string or a table `{ path = \"...\", regex = \"...\" }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawField, E> {
                Ok(RawField {
                    path: v.to_owned(),
                    regex: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                let t = RawFieldTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawField {
                    path: t.path,
                    regex: t.regex,
                })
            }
        }
        d.deserialize_any(FieldVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: Spanned<String>,
    pub request: Spanned<RawTestRequest>,
    pub response: Spanned<RawTestResponse>,
    pub expect: Spanned<RawExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestRequest {
    pub method: String,
    /// May carry a query string: `/orders?page=2`.
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub topic: Option<Spanned<String>>,
    pub payload: Option<Value>,
    #[serde(default)]
    pub none: bool,
}
