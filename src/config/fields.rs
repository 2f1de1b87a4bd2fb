//! Deserializing a TOML table into a struct one key at a time, so that every bad value is
//! reported at its own line (serde stops at the first), with an error that keeps serde's
//! structured complaints: which value, which accepted names.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, Visitor};

/// Why one value was rejected. `Display` is the complaint without the key; [`Self::about`]
/// puts the key in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A name that is not one of an enum's.
    #[error("`{value}` must be {}", one_of(expected, "\""))]
    UnknownVariant {
        value: String,
        expected: &'static [&'static str],
    },
    #[error("unknown field `{field}`, expected {}", one_of(expected, "`"))]
    UnknownField {
        field: String,
        expected: Vec<&'static str>,
    },
    /// Anything else serde says (wrong type, out of range).
    #[error("{0}")]
    Other(String),
}

impl ValueError {
    /// The same error with more accepted keys (those a wrapper handles itself).
    pub fn also_accepting(mut self, more: &[&'static str]) -> Self {
        if let Self::UnknownField { expected, .. } = &mut self {
            expected.extend_from_slice(more);
        }
        self
    }

    /// The complaint about the value of `key`: "signature `hmac` must be ...".
    pub fn about(&self, key: &str) -> String {
        match self {
            Self::UnknownVariant { .. } => format!("{key} {self}"),
            Self::UnknownField { .. } => self.to_string(),
            Self::Other(_) => format!("{key}: {self}"),
        }
    }
}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Other(msg.to_string())
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownVariant {
            value: variant.to_owned(),
            expected,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownField {
            field: field.to_owned(),
            expected: expected.to_vec(),
        }
    }
}

/// `"a", "b" or "c"` (with `quote` around each name).
fn one_of(names: &[&str], quote: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{quote}{n}{quote}")).collect();
    match quoted.split_last() {
        None => "nothing".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Deserializes `T` from the single entry `key = value`, as it would be from a whole table
/// holding it: for a struct whose fields are all optional, this checks one field.
pub fn from_entry<T: for<'de> Deserialize<'de>>(
    key: &str,
    value: &toml::Value,
) -> Result<T, ValueError> {
    let mut table = toml::Table::new();
    table.insert(key.to_owned(), value.clone());
    from_table(table)
}

/// Deserializes `T` from a table of values.
pub fn from_table<T: for<'de> Deserialize<'de>>(table: toml::Table) -> Result<T, ValueError> {
    T::deserialize(Value(toml::Value::Table(table)))
}

/// A TOML value as a deserializer whose error is [`ValueError`].
struct Value(toml::Value);

impl<'de> IntoDeserializer<'de, ValueError> for Value {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self.0 {
            toml::Value::String(s) => visitor.visit_string(s),
            toml::Value::Integer(i) => visitor.visit_i64(i),
            toml::Value::Float(f) => visitor.visit_f64(f),
            toml::Value::Boolean(b) => visitor.visit_bool(b),
            toml::Value::Datetime(d) => visitor.visit_string(d.to_string()),
            toml::Value::Array(a) => {
                let mut seq = SeqDeserializer::new(a.into_iter().map(Value));
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            toml::Value::Table(t) => {
                let mut map = MapDeserializer::new(t.into_iter().map(|(k, v)| (k, Value(v))));
                let v = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(v)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            toml::Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            other => Value(other).deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Profile, WebhookInput};

    #[test]
    fn each_entry_is_checked_with_its_key_named() {
        let ok: WebhookInput =
            from_entry("signature", &toml::Value::String("mautic".into())).expect("valid");
        assert_eq!(ok.signature, Some(Profile::Mautic));
        let e = from_entry::<WebhookInput>("signature", &toml::Value::String("hmac".into()))
            .unwrap_err();
        assert_eq!(
            e.about("signature"),
            "signature `hmac` must be \"hooktap\", \"standard\" or \"mautic\""
        );
        let e = from_entry::<WebhookInput>("colour", &toml::Value::Boolean(true)).unwrap_err();
        assert!(
            e.about("colour")
                .starts_with("unknown field `colour`, expected `name`, ")
        );
        let e = from_entry::<WebhookInput>("batch_max", &toml::Value::Integer(-1)).unwrap_err();
        assert!(
            e.about("batch_max").starts_with("batch_max: invalid value"),
            "{e}"
        );
        let all: WebhookInput = from_table(toml::Table::from_iter([
            ("topics".to_owned(), toml::Value::Array(vec!["a.*".into()])),
            ("ordered".to_owned(), toml::Value::Boolean(true)),
        ]))
        .expect("valid");
        assert_eq!(
            (all.topics, all.ordered),
            (Some(vec!["a.*".to_owned()]), Some(true))
        );
    }
}
