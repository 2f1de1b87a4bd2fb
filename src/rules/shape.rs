//! Payload shapes: what `[rule.payload]` and `[webhook.transform]` build, field by field.
//!
//! A field is a JSONPath (`"$.response.body.id"`), a JSONPath narrowed by a regex
//! (`{ path = "...", regex = "..." }`), a computed value (`{ expr = "CEL" }`), a constant of
//! any type (`{ value = ... }`), or a nested table, which becomes a nested object. Key order is
//! kept as written. A table is a field spec when its only key is `expr` or `value`, or its keys
//! are `path` (a string) and optionally `regex`; any other table is a nested object.

use std::ops::Range;

use regex::Regex;
use serde_json::{Map, Value};

use super::expr::{EvalError, Expr, Needs, Scope, Vars, Want};
use super::raw::{RawNode, RawNodeKind};
use super::selector::{Docs, Selector};
use super::when;

/// A compiled shape.
#[derive(Debug, Clone)]
pub enum Shape {
    Path {
        selector: Selector,
        regex: Option<Regex>,
    },
    Expr(Expr),
    Const(Value),
    Object(Vec<(String, Shape)>),
}

/// A problem in a shape: where (when known), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl Shape {
    /// Compiles the fields of an object; `what` names it in errors ("payload", "transform").
    pub fn object(
        fields: Vec<(String, RawNode)>,
        scope: &Scope,
        what: &str,
        errors: &mut Vec<ShapeError>,
    ) -> Shape {
        Shape::Object(
            fields
                .into_iter()
                .filter_map(|(name, node)| {
                    Shape::field(node, scope, what, &name, errors).map(|s| (name, s))
                })
                .collect(),
        )
    }

    fn field(
        node: RawNode,
        scope: &Scope,
        what: &str,
        path: &str,
        errors: &mut Vec<ShapeError>,
    ) -> Option<Shape> {
        let label = format!("{what} field `{path}`");
        let span = node.span.clone();
        let mut fail = |m: String| {
            errors.push(ShapeError {
                span: span.clone(),
                message: format!("{label}: {m}"),
            });
            None
        };
        match node.kind {
            RawNodeKind::Str(path) => match Selector::parse(&path) {
                Ok(selector) => Some(Shape::Path {
                    selector,
                    regex: None,
                }),
                Err(m) => fail(m),
            },
            RawNodeKind::Other(v) => fail(format!(
                "{v} is not a JSONPath; write a constant as `{{ value = {v} }}`"
            )),
            RawNodeKind::Table(entries) => {
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                let string_at = |key: &str| {
                    entries
                        .iter()
                        .find(|(k, _)| k == key)
                        .and_then(|(_, n)| match &n.kind {
                            RawNodeKind::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                };
                match keys.as_slice() {
                    ["value"] => Some(Shape::Const(entries[0].1.to_json())),
                    ["expr"] => match string_at("expr") {
                        Some(src) => match Expr::compile(&src, scope, Want::Any) {
                            Ok(e) => Some(Shape::Expr(e)),
                            Err(m) => fail(m),
                        },
                        None => fail("`expr` must be a string holding a CEL expression".into()),
                    },
                    ["path"] | ["path", "regex"] | ["regex", "path"]
                        if string_at("path").is_some() =>
                    {
                        let path = string_at("path").unwrap_or_default();
                        let selector = Selector::parse(&path).map_err(&mut fail).ok()?;
                        let regex = match keys.len() {
                            1 => None,
                            _ => match string_at("regex") {
                                Some(r) => Some(when::compile_regex(&r).map_err(&mut fail).ok()?),
                                None => return fail("`regex` must be a string".into()),
                            },
                        };
                        Some(Shape::Path { selector, regex })
                    }
                    _ if keys.contains(&"expr") || keys.contains(&"value") => fail(format!(
                        "`expr` and `value` stand alone in a field, found keys {}",
                        keys.join(", ")
                    )),
                    _ => {
                        let mut nested = Vec::new();
                        for (name, node) in entries {
                            let path = format!("{path}.{name}");
                            if let Some(s) = Shape::field(node, scope, what, &path, errors) {
                                nested.push((name, s));
                            }
                        }
                        Some(Shape::Object(nested))
                    }
                }
            }
        }
    }

    /// The top-level field names of an object shape.
    pub fn field_names(&self) -> Vec<&str> {
        match self {
            Shape::Object(fields) => fields.iter().map(|(n, _)| n.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Adds what the shape's expressions read to `needs`.
    pub fn collect_needs(&self, needs: &mut Needs) {
        match self {
            Shape::Expr(e) => needs.merge(e.needs()),
            Shape::Object(fields) => fields.iter().for_each(|(_, s)| s.collect_needs(needs)),
            _ => {}
        }
    }

    /// Hands `f` every JSONPath of the shape.
    pub fn each_selector(&self, f: &mut dyn FnMut(&Selector)) {
        match self {
            Shape::Path { selector, .. } => f(selector),
            Shape::Object(fields) => fields.iter().for_each(|(_, s)| s.each_selector(f)),
            Shape::Expr(_) | Shape::Const(_) => {}
        }
    }

    /// Like [`Shape::eval`], but a failing expression is `null` and its error is kept in
    /// `errors` (a webhook transform sends what it can rather than nothing).
    pub fn eval_lenient(
        &self,
        docs: Docs<'_>,
        vars: &Vars<'_>,
        errors: &mut Vec<EvalError>,
    ) -> Value {
        match self {
            Shape::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(name, shape)| (name.clone(), shape.eval_lenient(docs, vars, errors)))
                    .collect(),
            ),
            other => other.eval(docs, vars).unwrap_or_else(|e| {
                errors.push(e);
                Value::Null
            }),
        }
    }

    /// The value over `doc` (JSONPaths) and `vars` (expressions). A path that selects nothing
    /// is `null`; an expression that fails is an error.
    pub fn eval(&self, docs: Docs<'_>, vars: &Vars<'_>) -> Result<Value, EvalError> {
        Ok(match self {
            Shape::Path { selector, regex } => {
                let Some(v) = selector.select_in(docs) else {
                    return Ok(Value::Null);
                };
                let Some(re) = regex else { return Ok(v) };
                let Some(text) = when::as_text(&v) else {
                    return Ok(Value::Null);
                };
                re.captures(&text)
                    .and_then(|c| c.get(1).or_else(|| c.get(0)))
                    .map_or(Value::Null, |m| Value::String(m.as_str().to_owned()))
            }
            Shape::Expr(e) => e.eval(vars)?,
            Shape::Const(v) => v.clone(),
            Shape::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (name, shape) in fields {
                    map.insert(name.clone(), shape.eval(docs, vars)?);
                }
                Value::Object(map)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(json: Value) -> Result<Shape, Vec<ShapeError>> {
        let RawNodeKind::Table(fields) = RawNode::from_json(&json).kind else {
            panic!("a table");
        };
        let mut errors = Vec::new();
        let s = Shape::object(fields, &Scope::exchange(false), "payload", &mut errors);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn nested_constants_and_computed_values_in_order() {
        let shape = compile(json!({
            "z": "$.response.body.id",
            "customer": {"name": {"expr": "response.body.name.upperAscii()"},
                         "tier": {"value": "gold"}},
            "a": {"value": [1, {"x": true}]},
            "code": {"path": "$.response.body.ref", "regex": "R-(\\d+)"},
            "path": {"path": {"value": 1}},
        }))
        .expect("valid");
        let doc = json!({"response": {"body": {"id": 7, "name": "ann", "ref": "R-42"}}});
        let mut vars = Vars::new();
        vars.set("response", &doc["response"]);
        let v = shape.eval(Docs::of(&doc), &vars).expect("evaluates");
        assert_eq!(
            serde_json::to_string(&v).expect("json"),
            r#"{"z":7,"customer":{"name":"ANN","tier":"gold"},"a":[1,{"x":true}],"code":"42","path":{"path":1}}"#
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(json!({"c": {"n": {"expr": "respons.x"}}, "k": 3})).expect_err("invalid");
        let messages: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
        assert!(
            messages[0].starts_with("payload field `c.n`: invalid expression `respons.x`"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("write a constant as `{ value = 3 }`"),
            "{messages:?}"
        );
        let e = compile(json!({"c": {"expr": "1", "value": 2}})).expect_err("mixed");
        assert!(e[0].message.contains("stand alone"), "{e:?}");
    }
}
