//! A JSONPath compiled once and evaluated over exchange documents.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
    query: JpQuery,
}

impl Selector {
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.starts_with('$') {
            return Err(format!("JSONPath `{source}` must start with `$`"));
        }
        let query =
            parse_json_path(source).map_err(|e| describe_parse_error(source, &e.to_string()))?;
        Ok(Self {
            source: source.to_owned(),
            query,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the path selects: `None` when nothing, the value when one node, an array when several.
    pub fn select(&self, doc: &Value) -> Option<Value> {
        let mut found = js_path_process(&self.query, doc).ok()?;
        match found.len() {
            0 => None,
            1 => found.pop().map(|r| r.val().clone()),
            _ => Some(Value::Array(
                found.into_iter().map(|r| r.val().clone()).collect(),
            )),
        }
    }
}

/// The parser's multi-line report, folded into one line with a hint for the common mistake.
fn describe_parse_error(source: &str, report: &str) -> String {
    let at = report
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|pos| pos.rsplit_once(':'))
        .map(|(_, col)| format!(" at character {col}"))
        .unwrap_or_default();
    let expected = report
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("= "))
        .unwrap_or("syntax error");
    // A dotted name with a dash (`.user-agent`), not a negative index (`[-1]`).
    let dotted_dash = source.split('.').skip(1).any(|seg| {
        let name: String = seg.chars().take_while(|c| *c != '[').collect();
        name.contains('-') && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    });
    let hint = if dotted_dash {
        "; names with `-` need brackets: `$.request.headers['user-agent']`"
    } else {
        ""
    };
    format!("invalid JSONPath `{source}`{at}: {expected}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_none_one_or_many() {
        let doc = json!({"a": {"b": 1}, "items": [{"id": 1}, {"id": 2}]});
        let s = |p: &str| Selector::parse(p).expect("valid path").select(&doc);
        assert_eq!(s("$.a.b"), Some(json!(1)));
        assert_eq!(s("$.a.missing"), None);
        assert_eq!(s("$.items[*].id"), Some(json!([1, 2])));
    }

    #[test]
    fn rejects_invalid_paths() {
        assert!(Selector::parse("a.b").is_err());
        assert!(Selector::parse("$.a[").is_err());
        let e = Selector::parse("$.headers.user-agent").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains("at character 15") && e.contains("['user-agent']"),
            "{e}"
        );
    }
}
