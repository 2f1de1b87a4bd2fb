//! Samples → proposed rules: one per kind of successful write.
//!
//! Exchanges are grouped by inferred template and what the write does ([`naming`]): PUT, PATCH
//! and POST on one item are one group (`order.updated`). A group with at least one 2xx answer
//! becomes a rule whose `status` lists the 2xx codes seen; reads and groups that only failed
//! make none (they are listed in the file's header comment). Each rule carries the
//! identifiers (path parameters, an `id`/`code` field of the response, `Location`), the
//! response body when it is JSON, a comment saying what it was learned from, a `when` hint
//! when a `status`-like field took a few values, and one or two tests made from real
//! exchanges with credentials removed ([`secrets`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::naming::{self, Naming};
use super::secrets::{self, Vault};
use super::template::{Template, Templates};
use super::{Sample, Skipped};

/// A status in a rule: a code seen, or a class (OpenAPI's `2XX`, `default`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Code(u16),
    Class(u8),
}

/// One proposed `[[test]]`: a real exchange, trimmed and without credentials.
#[derive(Debug, Clone)]
pub struct ProposedTest {
    pub name: String,
    pub method: String,
    pub path: String,
    pub request_headers: Vec<(String, String)>,
    /// A string is sent as it is (a form); anything else as JSON.
    pub request_body: Option<Value>,
    pub status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<Value>,
    /// True: the rule's topic (payload filled in by [`super::emit`]); false: no event.
    pub expect_event: bool,
}

/// One proposed `[[rule]]`.
#[derive(Debug, Clone)]
pub struct ProposedRule {
    pub name: String,
    pub topic: String,
    pub methods: Vec<String>,
    pub path: String,
    pub statuses: Vec<Status>,
    /// Payload fields: name → JSONPath, in order.
    pub fields: Vec<(String, String)>,
    pub required: Vec<String>,
    /// Comment lines above the rule (without `# `).
    pub comments: Vec<String>,
    /// `when` proposals: the field's path and the values seen, with counts.
    pub when_hint: Option<(String, Vec<(String, usize)>)>,
    pub tests: Vec<ProposedTest>,
    /// Fields whose values the tests expect (params, ids, location), filled by emit.
    pub expect_fields: Vec<String>,
}

/// What `learn` proposes, with what it noticed on the way.
#[derive(Debug, Default)]
pub struct Proposal {
    pub rules: Vec<ProposedRule>,
    /// Header comment lines: sources, counts, what made no rule.
    pub notes: Vec<String>,
    /// Credentials seen in the input; the output must contain none.
    pub vault: Vault,
}

/// The groups key: template text and event kind.
struct Group<'a> {
    template: Template,
    naming: Naming,
    methods: BTreeSet<String>,
    ok: Vec<&'a Sample>,
    failed: Vec<&'a Sample>,
}

/// Fields that name the item a write created or changed, in order of preference.
const ID_FIELDS: &[&str] = &["id", "code", "uuid", "number", "reference", "ref", "key"];
/// Fields whose few values tell outcomes apart.
const OUTCOME_FIELDS: &[&str] = &["status", "state", "result", "outcome"];

/// Proposes rules from samples. `sources` names where they came from (for the header).
pub fn learn(samples: &[Sample], sources: &str, skipped: &Skipped) -> Proposal {
    let templates = Templates::infer(samples.iter().map(|s| s.path.as_str()));
    let mut vault = Vault::default();
    for s in samples {
        remember(&mut vault, s);
    }
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut reads = 0;
    for s in samples {
        if !s.is_write() {
            reads += 1;
            continue;
        }
        let template = templates.of(&s.path);
        let mut naming = naming::name(&template, &s.method);
        if s.method == "POST" && naming::post_to_item(&template) {
            naming.event = "updated".into();
        }
        let key = (template.text(), naming.event.clone());
        let g = groups.entry(key).or_insert_with(|| Group {
            template,
            naming,
            methods: BTreeSet::new(),
            ok: Vec::new(),
            failed: Vec::new(),
        });
        g.methods.insert(s.method.clone());
        if s.succeeded() {
            g.ok.push(s);
        } else {
            g.failed.push(s);
        }
    }
    let writes: usize = groups.values().map(|g| g.ok.len() + g.failed.len()).sum();
    let mut notes = vec![
        format!(
            "Rules proposed by `hooktap learn` from {} ({sources}): {} and {}.",
            exchanges(samples.len()),
            plural(reads, "read"),
            plural(writes, "write"),
        ),
        "Review them before use: names, payloads and statuses are guesses from the traffic seen."
            .into(),
    ];
    if !skipped.is_empty() {
        notes.push("Not used from the input:".into());
        notes.extend(skipped.lines().into_iter().map(|l| format!("  {l}")));
    }
    let mut rules = Vec::new();
    let mut unused = Vec::new();
    let mut ordered: Vec<Group> = groups.into_values().collect();
    // Shorter templates claim a topic first, so `/orders` keeps `order.created` and
    // `/shops/{shop}/orders` becomes `shop_order.created`.
    ordered.sort_by_key(|g| (g.template.segments.len(), g.template.text()));
    let mut topics: BTreeSet<String> = BTreeSet::new();
    let mut too_many = TooManyParams::default();
    for g in ordered {
        if too_many.left_out(&g.template, g.ok.len() + g.failed.len()) {
            continue;
        }
        if g.ok.is_empty() {
            unused.push(format!(
                "{} {}: {} ({}), no rule",
                join(&g.methods),
                g.template.text(),
                exchanges(g.failed.len()).replace("exchange", "failed write"),
                status_counts(&g.failed)
            ));
            continue;
        }
        let topic = unique_topic(&g.naming, &mut topics);
        rules.push(rule(&g, topic));
    }
    rules.sort_by(|a, b| (&a.path, &a.methods).cmp(&(&b.path, &b.methods)));
    notes.extend(too_many.notes("exchange"));
    if !unused.is_empty() {
        notes.push("Writes that never succeeded:".into());
        notes.extend(unused.into_iter().map(|l| format!("  {l}")));
    }
    Proposal {
        rules,
        notes,
        vault,
    }
}

/// Templates with more parameters than the router accepts
/// ([`MAX_PARAMETERS`](crate::rules::router::MAX_PARAMETERS)): one such rule would make the
/// whole file fail to load, so they are left out and counted in the header.
#[derive(Debug, Default)]
pub(crate) struct TooManyParams {
    templates: usize,
    exchanges: usize,
    /// The first one, shortened, as an example.
    example: Option<String>,
}

impl TooManyParams {
    /// Whether `template` is left out (and then counts it, with the `n` exchanges or
    /// operations under it).
    pub(crate) fn left_out(&mut self, template: &Template, n: usize) -> bool {
        let params = template.params().count();
        if params <= crate::rules::router::MAX_PARAMETERS {
            return false;
        }
        self.templates += 1;
        self.exchanges += n;
        self.example.get_or_insert_with(|| {
            let text = template.text();
            let short: String = text.chars().take(80).collect();
            let more = if short.len() < text.len() { "…" } else { "" };
            format!("{short}{more} ({params} parameters)")
        });
        true
    }

    /// The header note; `unit` names what was counted (`exchange`, `operation`).
    pub(crate) fn notes(&self, unit: &str) -> Vec<String> {
        let Some(example) = &self.example else {
            return Vec::new();
        };
        vec![format!(
            "Left out: {} with more than {} path parameters (the router's limit), {}; e.g. {example}",
            plural(self.templates, "path template"),
            crate::rules::router::MAX_PARAMETERS,
            plural(self.exchanges, unit),
        )]
    }
}

fn join(methods: &BTreeSet<String>) -> String {
    methods.iter().cloned().collect::<Vec<_>>().join("/")
}

/// `1 exchange`, `3 exchanges`.
pub(crate) fn exchanges(n: usize) -> String {
    plural(n, "exchange")
}

/// `1 read`, `0 reads`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `201 ×4, 200 ×1`.
fn status_counts(samples: &[&Sample]) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in samples {
        *counts.entry(s.status).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{s} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The topic, unique among `taken`: qualified by the parent collection, else numbered.
pub fn unique_topic(naming: &Naming, taken: &mut BTreeSet<String>) -> String {
    let mut candidates = vec![naming.topic()];
    if let Some(q) = &naming.qualified {
        candidates.push(format!("{q}.{}", naming.event));
    }
    for c in &candidates {
        if taken.insert(c.clone()) {
            return c.clone();
        }
    }
    let base = candidates.last().cloned().unwrap_or_else(|| naming.topic());
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|c| taken.insert(c.clone()))
        .unwrap_or(base)
}

/// The rule name for a topic: `order created`.
pub fn rule_name(topic: &str) -> String {
    topic.replace('.', " ")
}

fn remember(vault: &mut Vault, s: &Sample) {
    vault.headers(&s.request_headers);
    vault.headers(&s.response_headers);
    if let Some(q) = &s.query {
        vault.pairs(q);
    }
    for (value, raw) in [
        (s.request_value(), &s.request_body),
        (s.response_value(), &s.response_body),
    ] {
        match value {
            Value::Object(_) | Value::Array(_) => vault.json(&value),
            Value::String(text) => {
                if let Some(raw) = raw {
                    if let Ok(t) = std::str::from_utf8(raw) {
                        if t.contains('=') {
                            vault.pairs(t);
                        }
                    }
                }
                if secrets::looks_like_secret(&text) {
                    vault.value(&text);
                }
            }
            _ => {}
        }
    }
    for seg in s.path.split('/') {
        if secrets::looks_like_secret(seg) {
            vault.value(seg);
        }
    }
}

/// Where an id lives in a response body: `id` or `data.id` (JSON:API style wrappers).
fn id_path(bodies: &[Value]) -> Option<(String, String, usize)> {
    for key in ID_FIELDS {
        for (prefix, at) in [("", None), ("data.", Some("data"))] {
            let present = bodies
                .iter()
                .filter(|b| {
                    let obj = match at {
                        None => Some(*b),
                        Some(w) => b.get(w),
                    };
                    obj.and_then(|o| o.get(key))
                        .is_some_and(|v| v.is_string() || v.is_number())
                })
                .count();
            if present > 0 {
                return Some((
                    (*key).to_owned(),
                    format!("$.response.body.{prefix}{key}"),
                    present,
                ));
            }
        }
    }
    None
}

/// A plain field name usable as `$.x.name` and as a payload field name.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// The payload fields for a JSON body at `base` (`$.response.body`): the whole body as `name`,
/// or, when some sample's body holds a credential anywhere (`{"data": {"token": ..}}`), each
/// top-level field on its own whose whole subtree is free of credentials in every sample.
fn body_fields(
    bodies: &[Value],
    base: &str,
    name: &str,
    taken: &mut Vec<String>,
) -> Vec<(String, String)> {
    let objects: Vec<&serde_json::Map<String, Value>> =
        bodies.iter().filter_map(Value::as_object).collect();
    if !bodies.iter().any(secrets::holds_secret) {
        if taken.iter().any(|t| t == name) {
            return Vec::new();
        }
        taken.push(name.to_owned());
        return vec![(name.to_owned(), base.to_owned())];
    }
    let tainted = |k: &str| {
        secrets::is_secret_key(k)
            || objects
                .iter()
                .any(|o| o.get(k).is_some_and(secrets::holds_secret))
    };
    let mut out = Vec::new();
    for o in &objects {
        for k in o.keys() {
            if !plain(k) || taken.iter().any(|t| t == k) || tainted(k) {
                continue;
            }
            taken.push(k.clone());
            out.push((k.clone(), format!("{base}.{k}")));
        }
    }
    out
}

fn rule(g: &Group, topic: String) -> ProposedRule {
    let methods: Vec<String> = g.methods.iter().cloned().collect();
    let statuses: BTreeSet<u16> = g.ok.iter().map(|s| s.status).collect();
    let mut fields = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let mut expect_fields = Vec::new();
    for p in g.template.params() {
        fields.push((p.to_owned(), format!("$.params.{p}")));
        taken.push(p.to_owned());
        expect_fields.push(p.to_owned());
    }
    let responses: Vec<Value> = g.ok.iter().map(|s| s.response_value()).collect();
    let mut required = Vec::new();
    if let Some((key, path, present)) = id_path(&responses) {
        let name = if taken.contains(&key) {
            format!("{}_{key}", g.naming.resource)
        } else {
            key
        };
        if !taken.contains(&name) {
            if present == g.ok.len() {
                required.push(name.clone());
            }
            taken.push(name.clone());
            expect_fields.push(name.clone());
            fields.push((name, path));
        }
    }
    if g.ok
        .iter()
        .any(|s| s.response_headers.contains_key(http::header::LOCATION))
        && !taken.iter().any(|t| t == "location")
    {
        taken.push("location".into());
        expect_fields.push("location".into());
        fields.push(("location".into(), "$.response.headers.location".into()));
    }
    let json_responses: Vec<Value> = responses
        .iter()
        .filter(|v| v.is_object() || v.is_array())
        .cloned()
        .collect();
    if !json_responses.is_empty() {
        fields.extend(body_fields(
            &json_responses,
            "$.response.body",
            "body",
            &mut taken,
        ));
    } else {
        let requests: Vec<Value> =
            g.ok.iter()
                .map(|s| s.request_value())
                .filter(|v| v.is_object() || v.is_array())
                .collect();
        if !requests.is_empty() {
            fields.extend(body_fields(
                &requests,
                "$.request.body",
                "request",
                &mut taken,
            ));
        }
    }
    if fields.is_empty() && responses.iter().any(secrets::holds_secret) {
        // An empty payload means the whole answer (see `emit`): give the status instead.
        fields.push(("status".into(), "$.response.status".into()));
    }
    let when_hint = outcome_hint(&responses, g.ok.len());
    let mut comments = vec![format!(
        "{} {}: learned from {} answered {}.",
        methods.join("/"),
        g.template.text(),
        exchanges(g.ok.len()),
        status_counts(&g.ok)
    )];
    if !g.failed.is_empty() {
        comments.push(format!(
            "{} ({}) {} no event.",
            exchanges(g.failed.len()).replace("exchange", "failed write"),
            status_counts(&g.failed),
            if g.failed.len() == 1 { "makes" } else { "make" }
        ));
    }
    let name = rule_name(&topic);
    let mut tests = Vec::new();
    if let Some(best) =
        g.ok.iter()
            .min_by_key(|s| s.response_body.as_ref().map_or(0, |b| b.len()))
    {
        tests.push(test_from(
            best,
            &g.template,
            format!("{name}: {}", best.origin),
            true,
        ));
    }
    if let Some(f) = g.failed.first() {
        tests.push(test_from(
            f,
            &g.template,
            format!("{name}: a {} is no event ({})", f.status, f.origin),
            false,
        ));
    }
    ProposedRule {
        name,
        topic,
        methods,
        path: g.template.text(),
        statuses: statuses.into_iter().map(Status::Code).collect(),
        fields,
        required,
        comments,
        when_hint,
        tests,
        expect_fields,
    }
}

/// A `status`-like field that took 2 to 5 string values over 2+ answers: maybe outcomes.
fn outcome_hint(responses: &[Value], n: usize) -> Option<(String, Vec<(String, usize)>)> {
    if n < 2 {
        return None;
    }
    for key in OUTCOME_FIELDS {
        for (prefix, at) in [("", None), ("data.", Some("data"))] {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for r in responses {
                let obj = match at {
                    None => Some(r),
                    Some(w) => r.get(w),
                };
                if let Some(Value::String(v)) = obj.and_then(|o| o.get(key)) {
                    *counts.entry(v.clone()).or_default() += 1;
                }
            }
            let usable = counts
                .keys()
                .all(|v| v.len() <= 40 && !secrets::looks_like_secret(v));
            if (2..=5).contains(&counts.len()) && usable {
                let mut values: Vec<(String, usize)> = counts.into_iter().collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                return Some((format!("$.response.body.{prefix}{key}"), values));
            }
        }
    }
    None
}

/// Keeps a test body readable: 2 array items, 20 fields, 3 levels, 120-character strings.
pub fn trim(value: &Value, depth: usize) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(s) if s.chars().count() > 120 => {
            Some(Value::String(s.chars().take(120).collect::<String>() + "…"))
        }
        // TOML integers are i64: a larger one is written as a float, so the test's exchange
        // must carry that float too, or the expected payload (taken from this value) differs.
        Value::Number(n) if n.as_i64().is_none() => n.as_f64().map(|f| json!(f)),
        Value::Array(items) if depth < 3 => Some(Value::Array(
            items
                .iter()
                .filter_map(|v| trim(v, depth + 1))
                .take(2)
                .collect(),
        )),
        Value::Object(map) if depth < 3 => {
            let mut out = serde_json::Map::new();
            for (i, (k, v)) in map.iter().enumerate() {
                let keep = i < 20
                    || ID_FIELDS.contains(&k.as_str())
                    || OUTCOME_FIELDS.contains(&k.as_str());
                if keep {
                    if let Some(v) = trim(v, depth + 1) {
                        out.insert(k.clone(), v);
                    }
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(_) | Value::Object(_) => None,
        other => Some(other.clone()),
    }
}

fn content_type(h: &http::HeaderMap) -> Option<String> {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A test from a real exchange: no query, no headers but the content type and `Location`,
/// bodies trimmed and without credentials; a path segment that looks like a credential is
/// replaced.
fn test_from(s: &Sample, template: &Template, name: String, expect_event: bool) -> ProposedTest {
    use super::template::Segment;
    let mut path = String::new();
    let parts: Vec<&str> = s
        .path
        .strip_prefix('/')
        .unwrap_or(&s.path)
        .split('/')
        .collect();
    for (i, part) in parts.iter().enumerate() {
        path.push('/');
        let after_secret = i > 0 && secrets::is_secret_key(parts[i - 1]);
        let is_param = matches!(template.segments.get(i), Some(Segment::Param(_)));
        if is_param && (after_secret || secrets::looks_like_secret(part)) {
            path.push_str(secrets::REDACTED);
        } else {
            path.push_str(part);
        }
    }
    if s.path == "/" {
        path = "/".into();
    }
    let body = |value: Value,
                raw: Option<&bytes::Bytes>,
                headers: &http::HeaderMap|
     -> (Option<Value>, Vec<(String, String)>) {
        let ct = content_type(headers);
        let form = ct
            .as_deref()
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        match value {
            Value::Object(_) | Value::Array(_) if !form => {
                match trim(&secrets::redact_json(&value), 0) {
                    Some(v) => (
                        Some(v),
                        vec![(
                            "content-type".into(),
                            ct.unwrap_or_else(|| "application/json".into()),
                        )],
                    ),
                    None => (None, Vec::new()),
                }
            }
            _ if form => {
                let text = raw.and_then(|r| std::str::from_utf8(r).ok()).unwrap_or("");
                let form = secrets::redact_pairs(text);
                let form: String = form.chars().take(1000).collect();
                (
                    Some(Value::String(form)),
                    vec![(
                        "content-type".into(),
                        "application/x-www-form-urlencoded".into(),
                    )],
                )
            }
            _ => (None, Vec::new()),
        }
    };
    let (request_body, request_headers) = body(
        s.request_value(),
        s.request_body.as_ref(),
        &s.request_headers,
    );
    let (response_body, mut response_headers) = body(
        s.response_value(),
        s.response_body.as_ref(),
        &s.response_headers,
    );
    if let Some(loc) = s
        .response_headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        let loc = loc.split(['?', '#']).next().unwrap_or_default();
        let loc: Vec<&str> = loc
            .split('/')
            .map(|seg| {
                if secrets::looks_like_secret(seg) {
                    secrets::REDACTED
                } else {
                    seg
                }
            })
            .collect();
        response_headers.push(("location".into(), loc.join("/")));
    }
    ProposedTest {
        name,
        method: s.method.clone(),
        path,
        request_headers,
        request_body,
        status: s.status,
        response_headers,
        response_body,
        expect_event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use serde_json::json;

    fn sample(
        method: &str,
        path: &str,
        status: u16,
        req: Option<Value>,
        resp: Option<Value>,
    ) -> Sample {
        let json_headers = || {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            );
            h
        };
        Sample {
            method: method.into(),
            path: path.into(),
            query: None,
            request_headers: if req.is_some() {
                json_headers()
            } else {
                HeaderMap::new()
            },
            request_body: req.map(|v| Bytes::from(v.to_string())),
            status,
            response_headers: if resp.is_some() {
                json_headers()
            } else {
                HeaderMap::new()
            },
            response_body: resp.map(|v| Bytes::from(v.to_string())),
            origin: format!("test {method} {path}"),
        }
    }

    fn topics(p: &Proposal) -> Vec<(String, String)> {
        p.rules
            .iter()
            .map(|r| (r.path.clone(), r.topic.clone()))
            .collect()
    }

    #[test]
    fn topics_stay_unique_and_reads_and_failures_make_no_rule() {
        let samples = vec![
            sample("GET", "/orders", 200, None, Some(json!([]))),
            sample("POST", "/orders", 201, None, Some(json!({"id": 1}))),
            sample(
                "POST",
                "/shops/ABCD/orders",
                201,
                None,
                Some(json!({"id": 2})),
            ),
            sample(
                "POST",
                "/orders/5/refund",
                409,
                None,
                Some(json!({"error": "no"})),
            ),
            sample("PUT", "/orders/5", 200, None, None),
            sample("POST", "/orders/6", 200, None, None),
        ];
        let p = learn(&samples, "test", &Skipped::default());
        assert_eq!(
            topics(&p),
            [
                ("/orders".to_owned(), "order.created".to_owned()),
                ("/orders/{order}".to_owned(), "order.updated".to_owned()),
                (
                    "/shops/{shop}/orders".to_owned(),
                    "shop_order.created".to_owned()
                ),
            ]
        );
        assert_eq!(p.rules[1].methods, ["POST", "PUT"]);
        assert!(
            p.notes.iter().any(
                |n| n.contains("POST /orders/{order}/refund: 1 failed write (409 ×1), no rule")
            ),
            "{:?}",
            p.notes
        );
        assert!(
            p.notes[0].contains("6 exchanges (test): 1 read and 5 writes"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn credentials_in_an_answer_make_the_payload_field_by_field_and_outcomes_are_hinted() {
        let samples = vec![
            sample(
                "POST",
                "/sessions",
                201,
                Some(json!({"user": "ada", "password": "pw-planted-1"})),
                Some(json!({"user": "ada", "access_token": "at-planted-2", "expires_in": 60})),
            ),
            sample(
                "POST",
                "/payments",
                201,
                None,
                Some(json!({"id": "p1", "status": "succeeded"})),
            ),
            sample(
                "POST",
                "/payments",
                201,
                None,
                Some(json!({"id": "p2", "status": "failed"})),
            ),
            sample(
                "POST",
                "/payments",
                201,
                None,
                Some(json!({"id": "p3", "status": "succeeded"})),
            ),
        ];
        let p = learn(&samples, "test", &Skipped::default());
        let session = p
            .rules
            .iter()
            .find(|r| r.topic == "session.created")
            .expect("session rule");
        let fields: Vec<&str> = session.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(fields, ["user", "expires_in"]);
        let payments = p
            .rules
            .iter()
            .find(|r| r.topic == "payment.created")
            .expect("payment rule");
        assert_eq!(payments.required, ["id"]);
        assert_eq!(
            payments.when_hint,
            Some((
                "$.response.body.status".to_owned(),
                vec![("succeeded".to_owned(), 2), ("failed".to_owned(), 1)]
            ))
        );
        let text = super::super::emit::render(&p, 1 << 20).expect("renders");
        assert!(!text.contains("planted"), "{text}");
        assert!(
            text.contains(
                "#   when = [{ path = \"$.response.body.status\", equals = \"failed\" }]"
            ),
            "{text}"
        );
    }

    #[test]
    fn nested_credentials_keep_their_whole_subtree_out_of_the_payload() {
        let samples = vec![
            sample(
                "POST",
                "/logins",
                201,
                None,
                Some(
                    json!({"id": 7, "data": {"token": "tk-planted-1"}, "name": "ada",
                    "items": [{"sku": "a", "api_key": "ak-planted-2"}]}),
                ),
            ),
            // No answer body: the request body is the payload, with the same care.
            sample(
                "POST",
                "/users",
                204,
                Some(json!({"user": {"name": "ada", "password": "pw-planted-3"}, "plan": "pro"})),
                None,
            ),
            sample(
                "POST",
                "/notes",
                201,
                None,
                Some(json!({"id": 1, "data": {"text": "hi"}})),
            ),
        ];
        let p = learn(&samples, "test", &Skipped::default());
        let fields = |topic: &str| -> Vec<(String, String)> {
            p.rules
                .iter()
                .find(|r| r.topic == topic)
                .unwrap_or_else(|| panic!("{topic}: {:?}", topics(&p)))
                .fields
                .clone()
        };
        let pair = |n: &str, path: &str| (n.to_owned(), path.to_owned());
        assert_eq!(
            fields("login.created"),
            [
                pair("id", "$.response.body.id"),
                pair("name", "$.response.body.name")
            ]
        );
        assert_eq!(
            fields("user.created"),
            [pair("plan", "$.request.body.plan")]
        );
        // A clean body is still passed whole.
        assert!(fields("note.created").contains(&pair("body", "$.response.body")));
        let text = super::super::emit::render(&p, 1 << 20).expect("renders");
        assert!(!text.contains("planted"), "{text}");
    }

    #[test]
    fn a_session_cookie_does_not_stop_a_session_rule_from_printing() {
        let mut s = sample("POST", "/sessions", 201, None, Some(json!({"id": 4})));
        s.request_headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("session=ck-planted-1"),
        );
        s.response_headers.insert(
            http::header::SET_COOKIE,
            HeaderValue::from_static(
                "session=sc-planted-2; Path=/; Expires=Wednesday, 21-Oct-2026 07:28:00 GMT; Secure",
            ),
        );
        let p = learn(&[s], "test", &Skipped::default());
        let text = super::super::emit::render(&p, 1 << 20).expect("renders");
        assert!(text.contains("topic = \"session.created\""), "{text}");
        assert!(!text.contains("planted"), "{text}");
    }

    #[test]
    fn templates_with_more_parameters_than_the_router_takes_are_left_out_and_noted() {
        let over = "/x/1".repeat(crate::rules::router::MAX_PARAMETERS + 1);
        let at = "/y/1".repeat(crate::rules::router::MAX_PARAMETERS);
        let samples = vec![
            sample("POST", &over, 201, None, Some(json!({"id": 1}))),
            sample("PUT", &over, 500, None, None),
            sample("POST", &at, 201, None, Some(json!({"id": 2}))),
            sample("POST", "/orders", 201, None, Some(json!({"id": 3}))),
        ];
        let p = learn(&samples, "test", &Skipped::default());
        let text = super::super::emit::render(&p, 1 << 20).expect("the rest loads");
        assert_eq!(text.matches("[[rule]]").count(), 2, "{text}");
        assert!(text.contains("topic = \"order.created\""), "{text}");
        assert!(
            text.contains(
                "Left out: 1 path template with more than 25 path parameters (the router's \
                 limit), 2 exchanges; e.g. /x/{x}/x/{x2}/x/{x3}"
            ),
            "{text}"
        );
        assert!(text.contains("(26 parameters)"), "{text}");
    }

    #[test]
    fn an_id_that_looks_like_a_token_is_redacted_in_the_test_and_the_location() {
        let id = "Xk9QmZ2pL7vR4tW8yB3nC6dF";
        let mut s = sample("POST", "/invites", 201, None, Some(json!({"id": id})));
        s.response_headers.insert(
            http::header::LOCATION,
            HeaderValue::from_str(&format!("https://x.test/invites/{id}?sig=abc")).expect("value"),
        );
        let p = learn(&[s], "test", &Skipped::default());
        let text = super::super::emit::render(&p, 1 << 20).expect("renders without the id");
        assert!(!text.contains(id), "{text}");
        assert!(
            text.contains("location = \"https://x.test/invites/redacted\""),
            "{text}"
        );
    }

    #[test]
    fn hostile_names_and_values_are_escaped_by_the_serializer() {
        let nasty = "'''\"\"\"\n[[rule]]\nname = \"injected\"";
        let samples = vec![sample(
            "POST",
            "/notes/%22x%0A",
            201,
            Some(json!({nasty: nasty, "ok": "\u{7f}\u{0}"})),
            Some(json!({"id": nasty, "a\"b\nc": [nasty, null, 1.5]})),
        )];
        let p = learn(
            &samples,
            "a \"file\"\nwith [[rule]] in its name",
            &Skipped::default(),
        );
        let text = super::super::emit::render(&p, 1 << 20).expect("renders, loads and tests");
        let doc: toml::Table = toml::from_str(&text).expect("TOML");
        assert_eq!(doc["rule"].as_array().map(Vec::len), Some(1), "{text}");
        assert_eq!(doc["test"].as_array().map(Vec::len), Some(1), "{text}");
        let body = &doc["test"][0]["request"]["body"];
        assert_eq!(body[nasty].as_str(), Some(nasty), "{text}");
    }
}
