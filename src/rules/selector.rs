//! A JSONPath compiled once and evaluated over exchange documents.

use jsonpath_rust::parser::model::{self, JpQuery, Segment};
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
    query: JpQuery,
    /// The path as plain steps when it is only names and indices (`$.response.body.id`,
    /// `$.items[0]`): walked directly, without the general evaluator, which builds a path
    /// string for every node it visits. `None` for anything else (wildcards, filters, ...).
    steps: Option<Vec<Step>>,
    /// Reads the `for_each` item (`$.item...`) rather than the exchange.
    on_item: bool,
}

/// One step of a plain path: an object member or an array element (negative: from the end).
#[derive(Debug, Clone)]
enum Step {
    Name(String),
    Index(i64),
}

impl Step {
    /// The node this step leads to from `v`, as jsonpath-rust's name and index selectors find
    /// it: a name only in an object, an index only in an array.
    fn apply<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        match self {
            Step::Name(name) => member(v.as_object()?, name),
            Step::Index(i) => {
                let array = v.as_array()?;
                let at = if *i >= 0 {
                    usize::try_from(*i).ok()?
                } else {
                    array
                        .len()
                        .checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                };
                array.get(at)
            }
        }
    }
}

/// The member `name` of an object. Objects keep their members in order (an `IndexMap`), and a
/// small one is searched in that order: comparing a few short keys costs less than hashing
/// the name with SipHash, which `get` does (a matched request makes ~24 such lookups, most in
/// objects of one to five members). Keys are unique, so both find the same member.
fn member<'v>(object: &'v serde_json::Map<String, Value>, name: &str) -> Option<&'v Value> {
    const LINEAR_UP_TO: usize = 8;
    if object.len() <= LINEAR_UP_TO {
        object.iter().find_map(|(k, v)| (k == name).then_some(v))
    } else {
        object.get(name)
    }
}

/// The steps of `query` when it has only name and index selectors, one per segment.
fn plain_steps(query: &JpQuery) -> Option<Vec<Step>> {
    query
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Selector(model::Selector::Name(name)) => Some(Step::Name(name.clone())),
            Segment::Selector(model::Selector::Index(i)) => Some(Step::Index(*i)),
            _ => None,
        })
        .collect()
}

/// One step of the path to what a selector reads (see [`Selector::read_prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep<'a> {
    /// An object member.
    Name(&'a str),
    /// An array element (which one is not told apart).
    Index,
}

/// The documents a rule's paths read: the exchange and, under `for_each`, the item, held as
/// `{"item": ...}` beside it (so that the exchange need not be copied for every item).
#[derive(Debug, Clone, Copy)]
pub struct Docs<'a> {
    pub exchange: &'a Value,
    pub item: Option<&'a Value>,
}

impl<'a> Docs<'a> {
    /// The exchange alone.
    pub fn of(exchange: &'a Value) -> Self {
        Self {
            exchange,
            item: None,
        }
    }
}

impl Selector {
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.starts_with('$') {
            return Err(format!("JSONPath `{source}` must start with `$`"));
        }
        let query =
            parse_json_path(source).map_err(|e| describe_parse_error(source, &e.to_string()))?;
        let on_item = ["$.item", "$['item']", "$[\"item\"]"].iter().any(|p| {
            source
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        });
        Ok(Self {
            source: source.to_owned(),
            steps: plain_steps(&query),
            query,
            on_item,
        })
    }

    /// Whether the path reads the `for_each` item.
    pub fn on_item(&self) -> bool {
        self.on_item
    }

    /// [`Selector::select`] over the document this path reads.
    pub fn select_in(&self, docs: Docs<'_>) -> Option<Value> {
        match (self.on_item, docs.item) {
            (true, Some(item)) => self.select(item),
            _ => self.select(docs.exchange),
        }
    }

    /// Every node the path selects, in order (no collapsing of one node into a value).
    pub fn select_all(&self, doc: &Value) -> Vec<Value> {
        if let Some(steps) = &self.steps {
            return walk(steps, doc).cloned().into_iter().collect();
        }
        js_path_process(&self.query, doc)
            .map(|found| found.into_iter().map(|r| r.val().clone()).collect())
            .unwrap_or_default()
    }

    /// Whether the path can select several nodes (a wildcard, filter, slice, union or
    /// descent), rather than one place.
    pub fn is_multi(&self) -> bool {
        let s = &self.source;
        s.contains("[*]")
            || s.contains(".*")
            || s.contains("[?")
            || s.contains("..")
            || s.contains(':')
            || s.contains(',')
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The path to the node under which everything this selector can read lies: the whole
    /// path when it is only names and indices, else its leading names and indices (a wildcard,
    /// filter, slice, union or descent reads within the node they apply to). Empty (the whole
    /// document) when a filter holds an absolute path (`$` anywhere after the start), which can
    /// read any part of the document.
    pub fn read_prefix(&self) -> Vec<ReadStep<'_>> {
        if self.source[1..].contains('$') {
            return Vec::new();
        }
        self.query
            .segments
            .iter()
            .map_while(|segment| match segment {
                Segment::Selector(model::Selector::Name(name)) => Some(ReadStep::Name(name)),
                Segment::Selector(model::Selector::Index(_)) => Some(ReadStep::Index),
                _ => None,
            })
            .collect()
    }

    /// What the path selects: `None` when nothing, the value when one node, an array when several.
    pub fn select(&self, doc: &Value) -> Option<Value> {
        if let Some(steps) = &self.steps {
            return walk(steps, doc).cloned();
        }
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

/// The node a plain path leads to, if any.
fn walk<'v>(steps: &[Step], doc: &'v Value) -> Option<&'v Value> {
    steps.iter().try_fold(doc, |v, step| step.apply(v))
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
    fn a_member_is_found_as_get_finds_it_in_small_and_large_objects() {
        for size in [0, 1, 3, 8, 9, 40] {
            let object: serde_json::Map<String, Value> =
                (0..size).map(|i| (format!("k{i}"), json!(i))).collect();
            for name in ["k0", "k2", "k7", "k8", "k39", "", "k", "k00", "K0"] {
                assert_eq!(member(&object, name), object.get(name), "{name} of {size}");
            }
        }
        // A repeated key's last value, as serde_json keeps it.
        let repeated: Value = serde_json::from_str(r#"{"a": 1, "b": 2, "a": 3}"#).expect("json");
        let object = repeated.as_object().expect("object");
        assert_eq!(member(object, "a"), Some(&json!(3)));
    }

    #[test]
    fn selects_none_one_or_many() {
        let doc = json!({"a": {"b": 1}, "items": [{"id": 1}, {"id": 2}]});
        let s = |p: &str| Selector::parse(p).expect("valid path").select(&doc);
        assert_eq!(s("$.a.b"), Some(json!(1)));
        assert_eq!(s("$.a.missing"), None);
        assert_eq!(s("$.items[*].id"), Some(json!([1, 2])));
    }

    /// Plain paths are walked directly; they must select what the general evaluator selects.
    #[test]
    fn plain_paths_select_what_the_evaluator_selects() {
        let doc = json!({
            "a": {"b": 1, "n": null, "user-agent": "x", "0": "zero"},
            "items": [{"id": 1}, {"id": 2}, {"id": 3}],
            "s": "text",
        });
        let paths = [
            "$",
            "$.a",
            "$.a.b",
            "$.a.n",
            "$.a.missing",
            "$.a.b.c",
            "$['a']['user-agent']",
            "$[\"a\"].b",
            "$.a['0']",
            "$.a[0]",
            "$.items[0]",
            "$.items[2].id",
            "$.items[3]",
            "$.items[-1]",
            "$.items[-3].id",
            "$.items[-4]",
            "$.items.id",
            "$.items['0']",
            "$.s[0]",
            "$.s.length",
            "$.missing[0]",
        ];
        for path in paths {
            let s = Selector::parse(path).expect("valid path");
            assert!(s.steps.is_some(), "{path} is a plain path");
            let general = Selector {
                steps: None,
                ..s.clone()
            };
            assert_eq!(s.select(&doc), general.select(&doc), "{path}");
            assert_eq!(s.select_all(&doc), general.select_all(&doc), "{path}");
        }
        for path in [
            "$.items[*].id",
            "$..id",
            "$.items[0,1]",
            "$.items[1:]",
            "$.items[?@.id > 1]",
        ] {
            let s = Selector::parse(path).expect("valid path");
            assert!(s.steps.is_none(), "{path} is evaluated by jsonpath-rust");
        }
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
