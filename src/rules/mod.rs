//! The compiled rule set: what turns a request/response pair into events.
//!
//! Rules are compiled once from the raw rule files ([`raw`]): path templates into
//! the [`router::Router`], `when` entries into [`when::Predicate`]s, payload paths into
//! [`selector::Selector`]s. Everything here is pure: no I/O, no clocks beyond event timestamps.

pub mod expr;
pub mod raw;
pub mod router;
pub mod selector;
pub mod test;
pub mod when;

use std::ops::Range;

use regex::Regex;
use serde_json::{Map, Value};

use crate::event::{Event, Topic};
use raw::{RawPayload, RawRule, StatusSpec};
use router::{Candidates, Router};
use selector::Selector;
use when::Predicate;

/// A validation error at a place in a source file (a byte range, turned into a line later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanError {
    pub span: Range<usize>,
    pub message: String,
}

impl SpanError {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Self {
            span,
            message: message.into(),
        }
    }
}

/// `201` or `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl StatusMatch {
    fn parse(spec: &StatusSpec) -> Result<Self, String> {
        match spec {
            StatusSpec::Code(c) if (100..=599).contains(c) => Ok(Self::Exact(*c as u16)),
            StatusSpec::Class(s) => {
                let b = s.as_bytes();
                if b.len() == 3
                    && (b'1'..=b'5').contains(&b[0])
                    && s[1..].eq_ignore_ascii_case("xx")
                {
                    Ok(Self::Class(u16::from(b[0] - b'0')))
                } else {
                    Err(format!(
                        "status `{s}` must be a code such as 201 or a class such as \"2xx\""
                    ))
                }
            }
            StatusSpec::Code(c) => Err(format!("status {c} is not an HTTP status code (100-599)")),
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            Self::Exact(c) => c == status,
            Self::Class(c) => status / 100 == c,
        }
    }
}

/// One payload field: a path, optionally narrowed by a regex's first capture group.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    selector: Selector,
    regex: Option<Regex>,
}

impl Field {
    fn extract(&self, doc: &Value) -> Value {
        let Some(v) = self.selector.select(doc) else {
            return Value::Null;
        };
        let Some(re) = &self.regex else { return v };
        let Some(text) = when::as_text(&v) else {
            return Value::Null;
        };
        re.captures(&text)
            .and_then(|c| c.get(1).or_else(|| c.get(0)))
            .map_or(Value::Null, |m| Value::String(m.as_str().to_owned()))
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Whole(Selector),
    Fields(Vec<Field>),
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub topic: Topic,
    /// Empty means any method.
    pub methods: Vec<http::Method>,
    pub path: String,
    status: Vec<StatusMatch>,
    when: Vec<Predicate>,
    payload: Payload,
    /// Indices into the payload fields that must not be `null`.
    required: Vec<usize>,
}

impl Rule {
    fn status_matches(&self, status: u16) -> bool {
        self.status.iter().any(|s| s.matches(status))
    }

    /// The payload, or `None` when a `when` predicate fails or a required field is missing.
    fn evaluate(&self, doc: &Value) -> Option<Value> {
        if !self.when.iter().all(|p| p.holds(doc)) {
            return None;
        }
        match &self.payload {
            Payload::Whole(s) => Some(s.select(doc).unwrap_or(Value::Null)),
            Payload::Fields(fields) => {
                let values: Vec<Value> = fields.iter().map(|f| f.extract(doc)).collect();
                if self.required.iter().any(|&i| values[i].is_null()) {
                    return None;
                }
                let map: Map<String, Value> =
                    fields.iter().map(|f| f.name.clone()).zip(values).collect();
                Some(Value::Object(map))
            }
        }
    }

    fn compile(raw: RawRule) -> Result<Self, Vec<SpanError>> {
        let mut errors = Vec::new();
        let mut err = |span: Range<usize>, m: String| errors.push(SpanError::new(span, m));

        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            err(raw.name.span(), "rule name must not be empty".into());
        }
        let topic = Topic::parse(raw.topic.get_ref())
            .map_err(|m| err(raw.topic.span(), m))
            .ok();
        let mut methods = Vec::new();
        if let Some(m) = raw.method {
            let span = m.span();
            for s in m.into_inner().into_vec() {
                match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => err(span.clone(), format!("`{s}` is not an HTTP method")),
                }
            }
        }
        let status = match raw.status {
            None => vec![StatusMatch::Class(2)],
            Some(s) => {
                let span = s.span();
                let list: Vec<StatusMatch> = s
                    .get_ref()
                    .iter()
                    .filter_map(|spec| {
                        StatusMatch::parse(spec)
                            .map_err(|m| err(span.clone(), m))
                            .ok()
                    })
                    .collect();
                if s.get_ref().is_empty() {
                    err(span, "status must list at least one code or class".into());
                }
                list
            }
        };
        let when: Vec<Predicate> = raw
            .when
            .into_iter()
            .filter_map(|w| {
                let span = w.span();
                Predicate::compile(w.into_inner())
                    .map_err(|m| err(span, m))
                    .ok()
            })
            .collect();
        let payload = match raw.payload {
            None => Selector::parse("$.response.body").ok().map(Payload::Whole),
            Some(p) => {
                let span = p.span();
                match p.into_inner() {
                    RawPayload::Whole(path) => Selector::parse(&path)
                        .map(Payload::Whole)
                        .map_err(|m| err(span, m))
                        .ok(),
                    RawPayload::Fields(raw_fields) => {
                        let mut fields = Vec::new();
                        for (name, f) in raw_fields {
                            let span = f.span();
                            let f = f.into_inner();
                            let selector = Selector::parse(&f.path).map_err(|m| {
                                err(span.clone(), format!("payload field `{name}`: {m}"))
                            });
                            let regex = f
                                .regex
                                .map(|r| {
                                    when::compile_regex(&r).map_err(|m| {
                                        err(span.clone(), format!("payload field `{name}`: {m}"))
                                    })
                                })
                                .transpose();
                            if let (Ok(selector), Ok(regex)) = (selector, regex) {
                                fields.push(Field {
                                    name,
                                    selector,
                                    regex,
                                });
                            }
                        }
                        Some(Payload::Fields(fields))
                    }
                }
            }
        };
        let mut required = Vec::new();
        for r in &raw.required {
            match &payload {
                Some(Payload::Fields(fields)) => {
                    match fields.iter().position(|f| f.name == *r.get_ref()) {
                        Some(i) => required.push(i),
                        None => err(
                            r.span(),
                            format!(
                                "required field `{}` is not a payload field of this rule",
                                r.get_ref()
                            ),
                        ),
                    }
                }
                _ => err(
                    r.span(),
                    "`required` needs a `[rule.payload]` table of fields".into(),
                ),
            }
        }
        match (topic, payload) {
            (Some(topic), Some(payload)) if errors.is_empty() => Ok(Self {
                name,
                topic,
                methods,
                path: raw.path.into_inner(),
                status,
                when,
                payload,
                required,
            }),
            _ => Err(errors),
        }
    }
}

/// What a rule made of an exchange.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub rule: &'a Rule,
    pub event: Event,
}

/// All rules, routed.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// The rules' names, for the duplicate check (a scan of `rules` made loading quadratic).
    names: std::collections::HashSet<String>,
    router: Router,
}

impl RuleSet {
    /// Compiles and adds one raw rule; names must be unique across the set.
    pub fn add(&mut self, raw: RawRule) -> Result<(), Vec<SpanError>> {
        let name_span = raw.name.span();
        let path_span = raw.path.span();
        let rule = Rule::compile(raw)?;
        if self.names.contains(&rule.name) {
            return Err(vec![SpanError::new(
                name_span,
                format!("duplicate rule name `{}`", rule.name),
            )]);
        }
        self.router
            .insert(&rule.path, rule.methods.clone(), self.rules.len())
            .map_err(|e| vec![SpanError::new(path_span, e.to_string())])?;
        self.names.insert(rule.name.clone());
        self.rules.push(rule);
        Ok(())
    }

    /// How many distinct routes the router holds.
    pub fn route_count(&self) -> usize {
        self.router.route_count()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules that could match this request, or `None` for the common passthrough case.
    pub fn candidates(&self, method: &http::Method, path: &str) -> Option<Candidates> {
        self.router.candidates(method, path)
    }

    /// Whether any candidate still matches once the status is known (else skip the body copy).
    pub fn wants_response(&self, candidates: &Candidates, status: u16) -> bool {
        candidates
            .matches
            .iter()
            .any(|(rule, _)| self.rules[*rule].status_matches(status))
    }

    /// Evaluates every candidate over the exchange document; each matching rule makes one event.
    pub fn evaluate(&self, candidates: &Candidates, doc: &mut Value) -> Vec<Match<'_>> {
        let status = doc
            .pointer("/response/status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let mut out = Vec::new();
        for (index, params) in &candidates.matches {
            let rule = &self.rules[*index];
            if !rule.status_matches(status) {
                continue;
            }
            doc["params"] = Value::Object(
                params
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            );
            if let Some(payload) = rule.evaluate(doc) {
                out.push(Match {
                    rule,
                    event: Event::new(&rule.topic, &rule.name, payload),
                });
            }
        }
        out
    }
}
