//! Rule files as written: serde types that mirror a rule file one to one.
//!
//! Every table denies unknown keys, and every value a later check may reject is `Spanned`, so
//! that the error can name its line. Nothing here is validated; [`super::RuleSet::add`] and
//! [`super::test::RuleTest::compile`] turn these into checked types. [`crate::config`] reads the
//! files and hands these over; nothing here knows about the config file.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

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
    pub topic: Spanned<RawTopic>,
    pub method: Option<Spanned<OneOrMany>>,
    pub path: Spanned<String>,
    pub status: Option<Spanned<Vec<StatusSpec>>>,
    pub when: Option<Spanned<RawWhenSpec>>,
    /// A JSONPath selecting the items to derive one event each from.
    pub for_each: Option<Spanned<String>>,
    pub payload: Option<Spanned<RawPayload>>,
    #[serde(default)]
    pub required: Vec<Spanned<String>>,
    pub dedupe: Option<Spanned<RawDedupe>>,
}

/// `topic = "order.created"` or `topic = { expr = "'order.' + response.body.status" }`.
#[derive(Debug)]
pub enum RawTopic {
    Fixed(String),
    Expr(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExprTable {
    expr: String,
}

impl<'de> Deserialize<'de> for RawTopic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopicVisitor;
        impl<'de> Visitor<'de> for TopicVisitor {
            type Value = RawTopic;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a topic such as \"order.created\" or a table `{ expr = \"...\" }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTopic, E> {
                Ok(RawTopic::Fixed(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTopic, A::Error> {
                let t = RawExprTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawTopic::Expr(t.expr))
            }
        }
        d.deserialize_any(TopicVisitor)
    }
}

/// `when`: a list of predicates (`[[rule.when]]`) or a CEL expression (`when = "..."`).
#[derive(Debug)]
pub enum RawWhenSpec {
    List(Vec<Spanned<RawWhen>>),
    Expr(String),
}

impl<'de> Deserialize<'de> for RawWhenSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WhenVisitor;
        impl<'de> Visitor<'de> for WhenVisitor {
            type Value = RawWhenSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CEL expression or a list of `[[rule.when]]` predicates")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawWhenSpec, E> {
                Ok(RawWhenSpec::Expr(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawWhenSpec, A::Error> {
                let mut list = Vec::new();
                while let Some(w) = seq.next_element::<Spanned<RawWhen>>()? {
                    list.push(w);
                }
                Ok(RawWhenSpec::List(list))
            }
        }
        d.deserialize_any(WhenVisitor)
    }
}

/// `dedupe = { key = "$.request.headers['idempotency-key']", window = "10m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    /// A JSONPath (starting with `$`) or a CEL expression.
    pub key: String,
    pub window: String,
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
    Fields(Vec<(String, RawNode)>),
}

/// A payload (or transform) value as written, before it is known what it is: a string (a
/// JSONPath), another scalar or array, or a table (a field spec such as `{ expr = "..." }`,
/// or a nested object). `span` is where it is written; values from JSON have none.
#[derive(Debug, Clone)]
pub struct RawNode {
    pub span: Option<Range<usize>>,
    pub kind: RawNodeKind,
}

#[derive(Debug, Clone)]
pub enum RawNodeKind {
    Str(String),
    /// Numbers, booleans, dates and arrays, as JSON.
    Other(Value),
    /// Key order as written.
    Table(Vec<(String, RawNode)>),
}

impl RawNode {
    /// The same value from JSON (the admin API): no spans.
    pub fn from_json(v: &Value) -> Self {
        let kind = match v {
            Value::String(s) => RawNodeKind::Str(s.clone()),
            Value::Object(m) => RawNodeKind::Table(
                m.iter()
                    .map(|(k, v)| (k.clone(), RawNode::from_json(v)))
                    .collect(),
            ),
            other => RawNodeKind::Other(other.clone()),
        };
        Self { span: None, kind }
    }

    /// The value as a JSON constant.
    pub fn to_json(&self) -> Value {
        match &self.kind {
            RawNodeKind::Str(s) => Value::String(s.clone()),
            RawNodeKind::Other(v) => v.clone(),
            RawNodeKind::Table(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// The key under which TOML hands a date-time to serde.
const TOML_DATETIME: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for RawNodeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = RawNodeKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSONPath string, a constant or a table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNodeKind, E> {
                Ok(RawNodeKind::Str(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNodeKind, E> {
                Ok(RawNodeKind::Other(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNodeKind, E> {
                Ok(RawNodeKind::Other(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNodeKind, E> {
                Ok(RawNodeKind::Other(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNodeKind, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| RawNodeKind::Other(Value::Number(n)))
                    .ok_or_else(|| E::custom(format!("{v} cannot be a JSON number")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawNodeKind, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<RawNodeKind>()? {
                    items.push(
                        RawNode {
                            span: None,
                            kind: item,
                        }
                        .to_json(),
                    );
                }
                Ok(RawNodeKind::Other(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNodeKind, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == TOML_DATETIME {
                        let text: String = map.next_value()?;
                        return Ok(RawNodeKind::Other(Value::String(text)));
                    }
                    let value = map.next_value::<Spanned<RawNodeKind>>()?;
                    let span = value.span();
                    entries.push((
                        key,
                        RawNode {
                            span: Some(span),
                            kind: value.into_inner(),
                        },
                    ));
                }
                Ok(RawNodeKind::Table(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
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
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPayload, A::Error> {
                match NodeVisitorShim.visit_map(map)? {
                    RawNodeKind::Table(fields) => Ok(RawPayload::Fields(fields)),
                    _ => Err(de::Error::custom("expected a table of payload fields")),
                }
            }
        }
        d.deserialize_any(PayloadVisitor)
    }
}

/// Reads a table as [`RawNodeKind`] from inside another visitor.
struct NodeVisitorShim;

impl NodeVisitorShim {
    fn visit_map<'de, A: MapAccess<'de>>(self, map: A) -> Result<RawNodeKind, A::Error> {
        RawNodeKind::deserialize(de::value::MapAccessDeserializer::new(map))
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
    /// How many events of the topic (with the payload) the exchange must produce; at least
    /// one when not given.
    pub count: Option<usize>,
    #[serde(default)]
    pub none: bool,
}
