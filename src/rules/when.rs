//! `when` predicates: conditions on the exchange document that must all hold for a rule to match.
//!
//! Each entry names a JSONPath and exactly one operator. Comparisons are strict about types
//! (`equals = "7"` does not match the number 7), except that numbers compare by value (`7` equals
//! `7.0`) and `gt`/`lt` also read numeric strings, since form bodies and headers are strings.

use regex::Regex;
use serde_json::Value;

use super::raw::RawWhen;
use super::selector::Selector;

#[derive(Debug, Clone)]
enum Op {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    Exists(bool),
    Matches(Regex),
    Gt(f64),
    Lt(f64),
}

#[derive(Debug, Clone)]
pub struct Predicate {
    selector: Selector,
    op: Op,
}

/// Compiles a regex with a size limit; the `regex` crate runs in linear time, so a pattern
/// cannot backtrack catastrophically, and the limit bounds its memory.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex `{pattern}`: {e}"))
}

impl Predicate {
    pub fn compile(raw: RawWhen) -> Result<Self, String> {
        let selector = Selector::parse(&raw.path)?;
        let mut ops = Vec::new();
        if let Some(v) = raw.equals {
            ops.push(Op::Equals(v));
        }
        if let Some(v) = raw.not_equals {
            ops.push(Op::NotEquals(v));
        }
        if let Some(v) = raw.in_ {
            ops.push(Op::In(v));
        }
        if let Some(v) = raw.exists {
            ops.push(Op::Exists(v));
        }
        if let Some(v) = raw.matches {
            ops.push(Op::Matches(compile_regex(&v)?));
        }
        if let Some(v) = raw.gt {
            ops.push(Op::Gt(v));
        }
        if let Some(v) = raw.lt {
            ops.push(Op::Lt(v));
        }
        match (ops.pop(), ops.is_empty()) {
            (Some(op), true) => Ok(Self { selector, op }),
            (None, _) => Err(format!(
                "`when` on `{}` needs one operator: equals, not_equals, in, exists, matches, gt or lt",
                raw.path
            )),
            (Some(_), false) => Err(format!(
                "`when` on `{}` has several operators; write one entry per condition",
                raw.path
            )),
        }
    }

    /// The path the predicate reads.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Whether the predicate reads the `for_each` item (`$.item...`).
    pub fn on_item(&self) -> bool {
        self.selector.on_item()
    }

    pub fn holds(&self, doc: &Value) -> bool {
        let found = self.selector.select(doc);
        let found = found.as_ref().filter(|v| !v.is_null());
        match &self.op {
            Op::Equals(want) => found.is_some_and(|v| same(v, want)),
            Op::NotEquals(want) => !found.is_some_and(|v| same(v, want)),
            Op::In(set) => found.is_some_and(|v| set.iter().any(|w| same(v, w))),
            Op::Exists(want) => found.is_some() == *want,
            Op::Matches(re) => found.and_then(as_text).is_some_and(|s| re.is_match(&s)),
            Op::Gt(n) => found.and_then(as_number).is_some_and(|v| v > *n),
            Op::Lt(n) => found.and_then(as_number).is_some_and(|v| v < *n),
        }
    }
}

/// JSON equality where numbers compare by value at any depth (`7` equals `7.0`).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Strings as they are, numbers and booleans as written; other values have no text.
pub fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(s.into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn when(toml_src: &str) -> Result<Predicate, String> {
        let raw: RawWhen = toml::from_str(toml_src).map_err(|e| e.to_string())?;
        Predicate::compile(raw)
    }

    #[test]
    fn every_operator() {
        let doc = json!({"s": "new", "n": 7, "t": "12.5", "z": null});
        let cases = [
            (
                r#"path = "$.s"
equals = "new""#,
                true,
            ),
            (
                r#"path = "$.n"
equals = 7.0"#,
                true,
            ),
            (
                r#"path = "$.n"
equals = "7""#,
                false,
            ),
            (
                r#"path = "$.s"
not_equals = "old""#,
                true,
            ),
            (
                r#"path = "$.missing"
not_equals = "old""#,
                true,
            ),
            (
                r#"path = "$.s"
in = ["old", "new"]"#,
                true,
            ),
            (
                r#"path = "$.s"
exists = true"#,
                true,
            ),
            (
                r#"path = "$.z"
exists = true"#,
                false,
            ),
            (
                r#"path = "$.missing"
exists = false"#,
                true,
            ),
            (
                r#"path = "$.s"
matches = "^n.w$""#,
                true,
            ),
            (
                r#"path = "$.n"
matches = "^7$""#,
                true,
            ),
            (
                r#"path = "$.n"
gt = 6"#,
                true,
            ),
            (
                r#"path = "$.t"
gt = 12"#,
                true,
            ),
            (
                r#"path = "$.n"
lt = 7"#,
                false,
            ),
            (
                r#"path = "$.missing"
lt = 7"#,
                false,
            ),
        ];
        for (src, expected) in cases {
            assert_eq!(when(src).expect(src).holds(&doc), expected, "{src}");
        }
    }

    #[test]
    fn needs_exactly_one_operator() {
        assert!(
            when(r#"path = "$.s""#)
                .unwrap_err()
                .contains("needs one operator")
        );
        assert!(
            when("path = \"$.s\"\nequals = 1\nlt = 2")
                .unwrap_err()
                .contains("several")
        );
        assert!(
            when("path = \"$.s\"\nmatches = \"(\"")
                .unwrap_err()
                .contains("invalid regex")
        );
    }
}
