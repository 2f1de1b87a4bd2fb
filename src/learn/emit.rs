//! Proposals → a rule file, and the proof that it is valid before anyone sees it.
//!
//! Every value is written by the `toml` serializer (strings escaped, inline tables quoted as
//! needed); only keys this module chooses and comment text (control characters removed) are
//! written directly. The text is then loaded with the same compiler `hooktap check` uses, each
//! test's expected payload is taken from what the compiled rules derive from its exchange, every
//! test is run, and the text is searched for any credential seen in the input. Failing any of
//! these is an [`EmitError`], not output.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::propose::{Proposal, ProposedRule, ProposedTest, Status};
use crate::capture::{Exchange, RequestParts, ResponseParts};
use crate::rules::RuleSet;
use crate::rules::raw::RawRuleFile;
use crate::rules::test::RuleTest;

/// Why a proposal could not be printed. Each is a bug in `learn`, reported rather than hidden.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the proposed rules do not load (a bug in learn): {0}")]
    Invalid(String),
    #[error("a proposed test fails (a bug in learn): {0}")]
    TestFails(String),
    #[error(
        "refusing to print the proposal: it would contain a credential seen in the input (a bug in learn; the value starts with `{0}`)"
    )]
    Leak(String),
}

/// JSON as TOML; `null` has no TOML form and is left out (also inside arrays and tables).
pub fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
    })
}

fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        string(k)
    }
}

/// A comment line: `# ` and the text with control characters made spaces.
fn comment(out: &mut String, text: &str) {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.is_empty() {
        out.push_str("#\n");
    } else {
        out.push_str("# ");
        out.push_str(&clean);
        out.push('\n');
    }
}

fn render_rule(out: &mut String, r: &ProposedRule) {
    out.push('\n');
    for c in &r.comments {
        comment(out, c);
    }
    if let Some((path, values)) = &r.when_hint {
        let field = path.rsplit('.').next().unwrap_or(path);
        let seen: Vec<String> = values
            .iter()
            .map(|(v, n)| match n {
                0 => string(v),
                n => format!("{} ×{n}", string(v)),
            })
            .collect();
        comment(
            out,
            &format!(
                "The answers' `{field}` takes {} values: {}. If they mean different outcomes,",
                values.len(),
                seen.join(", ")
            ),
        );
        comment(
            out,
            "copy this rule once per outcome, each with its own topic and one of these:",
        );
        for (v, _) in values {
            let mut cond = toml::Table::new();
            cond.insert("path".into(), toml::Value::String(path.clone()));
            cond.insert("equals".into(), toml::Value::String(v.clone()));
            let when = toml::Value::Array(vec![toml::Value::Table(cond)]);
            comment(out, &format!("  when = {when}"));
        }
    }
    out.push_str("[[rule]]\n");
    out.push_str(&format!("name = {}\n", string(&r.name)));
    out.push_str(&format!("topic = {}\n", string(&r.topic)));
    let methods = if r.methods.len() == 1 {
        string(&r.methods[0])
    } else {
        toml::Value::Array(
            r.methods
                .iter()
                .map(|m| toml::Value::String(m.clone()))
                .collect(),
        )
        .to_string()
    };
    out.push_str(&format!("method = {methods}\n"));
    out.push_str(&format!("path = {}\n", string(&r.path)));
    let statuses = toml::Value::Array(
        r.statuses
            .iter()
            .map(|s| match s {
                Status::Code(c) => toml::Value::Integer(i64::from(*c)),
                Status::Class(c) => toml::Value::String(format!("{c}xx")),
            })
            .collect(),
    );
    out.push_str(&format!("status = {statuses}\n"));
    if !r.required.is_empty() {
        let req = toml::Value::Array(
            r.required
                .iter()
                .map(|f| toml::Value::String(f.clone()))
                .collect(),
        );
        out.push_str(&format!("required = {req}\n"));
    }
    if r.fields.is_empty() {
        out.push_str("payload = \"$.response.body\"\n");
    } else {
        out.push_str("[rule.payload]\n");
        for (name, path) in &r.fields {
            out.push_str(&format!("{} = {}\n", key(name), string(path)));
        }
    }
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// A body as the test runner sends it: a string as it is, anything else as JSON.
fn body_bytes(body: &Option<Value>, headers: &mut HeaderMap) -> Bytes {
    match body {
        None => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(v) => {
            headers
                .entry(http::header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
            Bytes::from(v.to_string())
        }
    }
}

/// The payload fields a test should expect: what the compiled rules derive from its exchange,
/// narrowed to the rule's identifying fields. `None` when the exchange does not give what the
/// test is meant to show.
fn expected(rules: &RuleSet, r: &ProposedRule, t: &ProposedTest, max: usize) -> Option<Value> {
    let method = http::Method::from_bytes(t.method.as_bytes()).ok()?;
    let mut req_headers = header_map(&t.request_headers);
    let req_body = body_bytes(&t.request_body, &mut req_headers);
    let mut resp_headers = header_map(&t.response_headers);
    let resp_body = body_bytes(&t.response_body, &mut resp_headers);
    let events = match rules.candidates(&method, &t.path) {
        None => Vec::new(),
        Some(c) => {
            let exchange = Exchange {
                request: RequestParts {
                    method: t.method.clone(),
                    path: t.path.clone(),
                    query: None,
                    headers: req_headers,
                    body: Some(req_body),
                },
                response: ResponseParts {
                    status: t.status,
                    headers: resp_headers,
                    body: Some(resp_body),
                },
            };
            let mut doc = exchange.into_document(max).value;
            rules
                .evaluate(&c, &mut doc)
                .into_iter()
                .map(|m| m.event)
                .collect()
        }
    };
    if !t.expect_event {
        return events.is_empty().then(|| Value::Bool(true));
    }
    let event = events.into_iter().find(|e| e.topic == r.topic)?;
    let mut want = serde_json::Map::new();
    for f in &r.expect_fields {
        if let Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) =
            event.payload.get(f)
        {
            want.insert(f.clone(), v.clone());
        }
    }
    Some(Value::Object(want))
}

fn render_test(out: &mut String, r: &ProposedRule, t: &ProposedTest, want: &Value) {
    let mut request = toml::Table::new();
    request.insert("method".into(), toml::Value::String(t.method.clone()));
    request.insert("path".into(), toml::Value::String(t.path.clone()));
    let headers = |pairs: &[(String, String)]| {
        toml::Value::Table(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect(),
        )
    };
    if !t.request_headers.is_empty() {
        request.insert("headers".into(), headers(&t.request_headers));
    }
    if let Some(b) = t.request_body.as_ref().and_then(to_toml) {
        request.insert("body".into(), b);
    }
    let mut response = toml::Table::new();
    response.insert("status".into(), toml::Value::Integer(i64::from(t.status)));
    if !t.response_headers.is_empty() {
        response.insert("headers".into(), headers(&t.response_headers));
    }
    if let Some(b) = t.response_body.as_ref().and_then(to_toml) {
        response.insert("body".into(), b);
    }
    let mut expect = toml::Table::new();
    if t.expect_event {
        expect.insert("topic".into(), toml::Value::String(r.topic.clone()));
        if let Some(p) = to_toml(want).filter(|p| p.as_table().is_some_and(|t| !t.is_empty())) {
            expect.insert("payload".into(), p);
        }
    } else {
        expect.insert("none".into(), toml::Value::Boolean(true));
    }
    out.push_str("\n[[test]]\n");
    out.push_str(&format!("name = {}\n", string(&t.name)));
    out.push_str(&format!("request = {}\n", toml::Value::Table(request)));
    out.push_str(&format!("response = {}\n", toml::Value::Table(response)));
    out.push_str(&format!("expect = {}\n", toml::Value::Table(expect)));
}

/// Compiles rule-file text with the real rule compiler (the rules and their `[[test]]`s).
pub fn compile(text: &str) -> Result<(RuleSet, Vec<RuleTest>), EmitError> {
    let raw: RawRuleFile = toml::from_str(text).map_err(|e| EmitError::Invalid(e.to_string()))?;
    let mut rules = RuleSet::default();
    for r in raw.rule {
        rules
            .add(r)
            .map_err(|e| EmitError::Invalid(format!("{e:?}")))?;
    }
    let mut tests = Vec::new();
    for t in raw.test {
        let span = t.name.span();
        let line = text[..span.start.min(text.len())].lines().count();
        tests.push(
            RuleTest::compile(t, format!("line {line}"))
                .map_err(|e| EmitError::Invalid(e.message))?,
        );
    }
    Ok((rules, tests))
}

/// The rule file for a proposal, loaded, tested and searched for credentials first.
pub fn render(p: &Proposal, max_decoded: usize) -> Result<String, EmitError> {
    let mut head = String::new();
    for n in &p.notes {
        comment(&mut head, n);
    }
    if p.rules.is_empty() {
        comment(
            &mut head,
            "No successful write was seen, so no rule is proposed.",
        );
    }
    let mut rules_only = head.clone();
    for r in &p.rules {
        render_rule(&mut rules_only, r);
    }
    let (rules, _) = compile(&rules_only)?;
    let mut out = head;
    for r in &p.rules {
        render_rule(&mut out, r);
        for t in &r.tests {
            match expected(&rules, r, t, max_decoded) {
                Some(want) => render_test(&mut out, r, t, &want),
                None => comment(
                    &mut out,
                    &format!(
                        "(no test from {}: its trimmed exchange does not show the rule)",
                        t.name
                    ),
                ),
            }
        }
    }
    let (rules, tests) = compile(&out)?;
    for t in &tests {
        t.run(&rules, max_decoded)
            .map_err(|e| EmitError::TestFails(format!("{} ({}): {e}", t.name, t.location)))?;
    }
    if let Some(leak) = p.vault.leak_in(&out) {
        return Err(EmitError::Leak(leak.chars().take(3).collect()));
    }
    Ok(out)
}
