//! The compiled rule set: what turns a request/response pair into events.
//!
//! Rules are compiled once from the raw rule files ([`raw`]): path templates into
//! the [`router::Router`], `when` entries into [`when::Predicate`]s or one CEL [`expr::Expr`],
//! payloads into [`shape::Shape`]s of [`selector::Selector`]s, expressions and constants,
//! `for_each`, `dedupe` keys and computed topics. Everything here is pure: no I/O, no clocks
//! beyond event timestamps. What a rule did not derive because an expression failed is reported
//! to the caller as a [`Miss`]; de-duplication is the store's part (a [`Match`] carries its key).

pub mod expr;
pub mod raw;
pub mod reads;
pub mod router;
pub mod selector;
pub mod shape;
pub mod test;
pub mod when;

use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::event::{Dedupe, DedupeKey, Event, Topic};
use expr::{EvalError, Expr, Needs, Scope, Vars, Want};
use raw::{RawPayload, RawRule, RawTopic, RawWhenSpec, StatusSpec};
use reads::Reads;
use router::{Candidates, Router};
use selector::{Docs, Selector};
use shape::Shape;
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

#[derive(Debug, Clone)]
enum Payload {
    Whole(Selector),
    Shape(Shape),
}

/// A rule's `when`: the list of predicates, or one CEL expression.
#[derive(Debug, Clone)]
enum When {
    List(Vec<Predicate>),
    Expr(Expr),
}

/// A rule's topic: fixed, or computed per event.
#[derive(Debug, Clone)]
pub enum RuleTopic {
    Fixed(Topic),
    Computed(Expr),
}

impl RuleTopic {
    /// The topic, or for a computed one the expression (`{ expr = "..." }` as written).
    pub fn as_str(&self) -> &str {
        match self {
            RuleTopic::Fixed(t) => t.as_str(),
            RuleTopic::Computed(e) => e.source(),
        }
    }

    pub fn fixed(&self) -> Option<&Topic> {
        match self {
            RuleTopic::Fixed(t) => Some(t),
            RuleTopic::Computed(_) => None,
        }
    }
}

/// The longest topic a rule may compute.
pub const MAX_COMPUTED_TOPIC: usize = 128;

/// The `topic` label of the events metric for a computed topic: the values a request computes
/// are not bounded, so such a rule's events are counted under its name only.
pub const COMPUTED_TOPIC_LABEL: &str = "computed";

/// Checks a computed topic: a valid topic, at most [`MAX_COMPUTED_TOPIC`] bytes, and not in
/// hooktap's own `hooktap.*` namespace (its operational events, which a request must not fake).
fn computed_topic(text: &str) -> Result<Topic, String> {
    if text.len() > MAX_COMPUTED_TOPIC {
        return Err(format!(
            "the computed topic is {} bytes long; at most {MAX_COMPUTED_TOPIC} are allowed",
            text.len()
        ));
    }
    if text == "hooktap" || text.starts_with("hooktap.") {
        return Err(format!(
            "topic `{text}` is in the reserved `hooktap.*` namespace (hooktap's own events)"
        ));
    }
    Topic::parse(text)
}

/// Where a `dedupe` key comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Path(Selector),
    Expr(Expr),
}

#[derive(Debug, Clone)]
struct DedupeSpec {
    key: KeySource,
    window: std::time::Duration,
}

/// Why a candidate rule derived nothing although it was evaluated: counted and logged, since
/// it is the rule file (or the traffic) that needs a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissKind {
    /// An expression failed (a missing key, a wrong type at run time).
    Error,
    /// A computed topic is not a valid topic.
    BadTopic,
    /// `for_each` selected something that is not an array.
    NotArray,
}

impl MissKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            MissKind::Error => "error",
            MissKind::BadTopic => "bad_topic",
            MissKind::NotArray => "not_array",
        }
    }
}

/// A rule that did not match because of a [`MissKind`].
#[derive(Debug, Clone)]
pub struct Miss<'a> {
    pub rule: &'a Rule,
    pub kind: MissKind,
    pub detail: String,
}

/// Why a candidate rule derived nothing although nothing failed: the rule simply does not
/// apply. The proxy neither counts nor logs these; a dry run ([`RuleSet::explain`]) tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet<'a> {
    /// The response's status is not one the rule takes.
    Status(u16),
    /// `when` did not hold (under `for_each`: for one item).
    When,
    /// A `required` payload field was missing or `null`.
    Required(&'a str),
    /// `for_each` selected nothing, `null` or an empty array.
    NoItems,
}

/// What one candidate rule made of an exchange in a dry run (see [`RuleSet::explain`]).
#[derive(Debug, Clone)]
pub struct Explained<'a> {
    pub rule: &'a Rule,
    /// The events it derives (several under `for_each`), as the proxy would store them.
    pub matches: Vec<Match<'a>>,
    /// Why it derived nothing (or nothing for some items), in words, in the order met.
    pub reasons: Vec<String>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub topic: RuleTopic,
    /// Empty means any method.
    pub methods: Vec<http::Method>,
    pub path: String,
    status: Vec<StatusMatch>,
    when: When,
    for_each: Option<Selector>,
    payload: Payload,
    /// Top-level payload fields that must not be `null`.
    required: Vec<String>,
    dedupe: Option<DedupeSpec>,
    /// What the rule's CEL expressions read of the exchange: only that is converted to CEL
    /// values for an evaluation (nothing for a rule without CEL).
    needs: Needs,
}

/// One event a rule derived, before it becomes an [`Event`].
struct Derived {
    topic: Topic,
    payload: Value,
    dedupe: Option<Dedupe>,
}

impl Rule {
    fn status_matches(&self, status: u16) -> bool {
        self.status.iter().any(|s| s.matches(status))
    }

    /// The statuses the rule takes, as written: `201`, `2xx`.
    pub fn statuses(&self) -> Vec<String> {
        self.status
            .iter()
            .map(|s| match s {
                StatusMatch::Exact(c) => c.to_string(),
                StatusMatch::Class(c) => format!("{c}xx"),
            })
            .collect()
    }

    /// A [`Quiet`] reason in words.
    fn quiet_reason(&self, quiet: Quiet<'_>) -> String {
        match quiet {
            Quiet::Status(s) => format!(
                "status {s} is not one the rule takes ({})",
                self.statuses().join(", ")
            ),
            Quiet::When => match (&self.when, &self.for_each) {
                (When::Expr(e), None) => format!("`when` {} did not hold", e.source()),
                (When::Expr(e), Some(_)) => {
                    format!("`when` {} did not hold for an item", e.source())
                }
                (When::List(_), None) => "`when` did not hold".to_owned(),
                (When::List(_), Some(_)) => "`when` did not hold for an item".to_owned(),
            },
            Quiet::Required(field) => {
                format!("required payload field `{field}` is missing or null")
            }
            Quiet::NoItems => match &self.for_each {
                Some(s) => format!("for_each `{}` selected no items", s.source()),
                None => "no items".to_owned(),
            },
        }
    }

    /// How the rule reads, for listings: `for_each`, CEL and dedupe in a few words.
    /// The `topic` label of this rule's events in the events metric: the topic when it is
    /// fixed, [`COMPUTED_TOPIC_LABEL`] when computed (bounded label values).
    pub fn metric_topic<'a>(&'a self, event: &'a Event) -> &'a str {
        match self.topic {
            RuleTopic::Fixed(_) => &event.topic,
            RuleTopic::Computed(_) => COMPUTED_TOPIC_LABEL,
        }
    }

    pub fn features(&self) -> Vec<String> {
        let mut f = Vec::new();
        if let When::Expr(e) = &self.when {
            f.push(format!("when {}", e.source()));
        }
        if let Some(s) = &self.for_each {
            f.push(format!("for_each {}", s.source()));
        }
        if let Some(d) = &self.dedupe {
            let key = match &d.key {
                KeySource::Path(s) => s.source(),
                KeySource::Expr(e) => e.source(),
            };
            f.push(format!(
                "dedupe {key} within {}",
                humantime::format_duration(d.window)
            ));
        }
        f
    }

    /// What the rule can read of the exchange document (see [`reads`]).
    pub fn reads(&self) -> Reads {
        let mut reads = Reads::default();
        // Under `for_each` the items are read whole, so `$.item` paths read nothing more.
        let covered = self.for_each.is_some();
        let mut path = |s: &Selector| {
            if !(covered && s.on_item()) {
                reads.add_selector(s);
            }
        };
        if let Some(s) = &self.for_each {
            path(s);
        }
        if let When::List(list) = &self.when {
            list.iter().for_each(|p| path(p.selector()));
        }
        match &self.payload {
            Payload::Whole(s) => path(s),
            Payload::Shape(shape) => shape.each_selector(&mut path),
        }
        if let Some(DedupeSpec {
            key: KeySource::Path(s),
            ..
        }) = &self.dedupe
        {
            path(s);
        }
        // Every CEL expression of the rule (`when`, topic, payload, dedupe).
        reads.add_needs(&self.needs);
        reads
    }

    /// The events this rule derives from `doc`: none when `when` fails or a required field is
    /// missing, one per item under `for_each`.
    fn derive(
        &self,
        doc: &Value,
        misses: &mut dyn FnMut(Miss<'_>),
        quiet: &mut dyn FnMut(Quiet<'_>),
    ) -> Vec<Derived> {
        let mut miss = |kind: MissKind, detail: String| {
            misses(Miss {
                rule: self,
                kind,
                detail,
            })
        };
        // Each item as `{"item": ...}`, which `$.item` paths read (see `Docs`).
        let items: Option<Vec<Value>> = match &self.for_each {
            None => None,
            Some(selector) => {
                let mut items = selector.select_all(doc);
                if !selector.is_multi() {
                    match items.pop() {
                        None | Some(Value::Null) => {
                            quiet(Quiet::NoItems);
                            return Vec::new();
                        }
                        Some(Value::Array(a)) => items = a,
                        Some(other) => {
                            miss(
                                MissKind::NotArray,
                                format!(
                                    "for_each `{}` selected {}, not an array",
                                    selector.source(),
                                    kind_of(&other)
                                ),
                            );
                            return Vec::new();
                        }
                    }
                }
                Some(
                    items
                        .into_iter()
                        .map(|item| Value::Object(Map::from_iter([("item".to_owned(), item)])))
                        .collect(),
                )
            }
        };
        let mut vars = Vars::new();
        for name in ["request", "response", "params"] {
            vars.set_needed(name, &doc[name], &self.needs);
        }
        let Some(items) = &items else {
            return self
                .derive_one(Docs::of(doc), &vars, &mut miss, quiet)
                .into_iter()
                .collect();
        };
        if items.is_empty() {
            quiet(Quiet::NoItems);
        }
        let mut out = Vec::with_capacity(items.len());
        for wrapper in items {
            vars.set_needed("item", &wrapper["item"], &self.needs);
            let docs = Docs {
                exchange: doc,
                item: Some(wrapper),
            };
            out.extend(self.derive_one(docs, &vars, &mut miss, quiet));
        }
        out
    }

    fn derive_one(
        &self,
        docs: Docs<'_>,
        vars: &Vars<'_>,
        miss: &mut dyn FnMut(MissKind, String),
        quiet: &mut dyn FnMut(Quiet<'_>),
    ) -> Option<Derived> {
        let failed = |miss: &mut dyn FnMut(MissKind, String), e: EvalError| {
            miss(MissKind::Error, e.to_string());
            None
        };
        let holds = match &self.when {
            When::List(list) => list.iter().all(|p| {
                let doc = match (p.on_item(), docs.item) {
                    (true, Some(item)) => item,
                    _ => docs.exchange,
                };
                p.holds(doc)
            }),
            When::Expr(e) => match e.holds(vars) {
                Ok(b) => b,
                Err(e) => return failed(miss, e),
            },
        };
        if !holds {
            quiet(Quiet::When);
            return None;
        }
        let payload = match &self.payload {
            Payload::Whole(s) => s.select_in(docs).unwrap_or(Value::Null),
            Payload::Shape(shape) => match shape.eval(docs, vars) {
                Ok(v) => v,
                Err(e) => return failed(miss, e),
            },
        };
        if let Value::Object(fields) = &payload
            && let Some(name) = self
                .required
                .iter()
                .find(|name| fields.get(*name).is_none_or(Value::is_null))
        {
            quiet(Quiet::Required(name));
            return None;
        }
        let topic = match &self.topic {
            RuleTopic::Fixed(t) => t.clone(),
            RuleTopic::Computed(e) => {
                let text = match e.eval(vars) {
                    Ok(v) => v,
                    Err(e) => return failed(miss, e),
                };
                match computed_topic(&expr::text_of(&text)) {
                    Ok(t) => t,
                    Err(m) => {
                        miss(MissKind::BadTopic, format!("`{}`: {m}", e.source()));
                        return None;
                    }
                }
            }
        };
        let dedupe = match &self.dedupe {
            None => None,
            Some(d) => {
                let key = match &d.key {
                    KeySource::Path(s) => s.select_in(docs).unwrap_or(Value::Null),
                    KeySource::Expr(e) => match e.eval(vars) {
                        Ok(v) => v,
                        Err(e) => return failed(miss, e),
                    },
                };
                // No key, nothing to compare: the event is derived.
                (!key.is_null()).then(|| Dedupe {
                    key: DedupeKey::new(&self.name, &expr::text_of(&key)),
                    window: d.window,
                })
            }
        };
        Some(Derived {
            topic,
            payload,
            dedupe,
        })
    }

    fn compile(raw: RawRule) -> Result<Self, Vec<SpanError>> {
        let mut errors = Vec::new();
        let mut err = |span: Range<usize>, m: String| errors.push(SpanError::new(span, m));

        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            err(raw.name.span(), "rule name must not be empty".into());
        }
        let for_each = raw.for_each.and_then(|f| {
            let span = f.span();
            match Selector::parse(f.get_ref()) {
                Ok(s) => match static_kind(&s) {
                    Some(kind) => {
                        err(
                            span,
                            format!("for_each `{}` selects {kind}, not an array", f.get_ref()),
                        );
                        None
                    }
                    None => Some(s),
                },
                Err(m) => {
                    err(span, format!("for_each: {m}"));
                    None
                }
            }
        });
        let scope = Scope::exchange(for_each.is_some());
        let topic_span = raw.topic.span();
        let topic = match raw.topic.into_inner() {
            RawTopic::Fixed(t) => Topic::parse(&t)
                .map(RuleTopic::Fixed)
                .map_err(|m| err(topic_span, m))
                .ok(),
            RawTopic::Expr(src) => Expr::compile(&src, &scope, Want::String)
                .map(RuleTopic::Computed)
                .map_err(|m| err(topic_span, format!("topic: {m}")))
                .ok(),
        };
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
        let when = match raw.when {
            None => When::List(Vec::new()),
            Some(w) => {
                let span = w.span();
                match w.into_inner() {
                    RawWhenSpec::List(list) => When::List(
                        list.into_iter()
                            .filter_map(|w| {
                                let span = w.span();
                                Predicate::compile(w.into_inner())
                                    .map_err(|m| err(span, m))
                                    .ok()
                            })
                            .collect(),
                    ),
                    RawWhenSpec::Expr(src) => match Expr::compile(&src, &scope, Want::Bool) {
                        Ok(e) => When::Expr(e),
                        Err(m) => {
                            err(span, format!("when: {m}"));
                            When::List(Vec::new())
                        }
                    },
                }
            }
        };
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
                        let mut shape_errors = Vec::new();
                        let shape = Shape::object(raw_fields, &scope, "payload", &mut shape_errors);
                        for e in shape_errors {
                            err(e.span.unwrap_or_else(|| span.clone()), e.message);
                        }
                        Some(Payload::Shape(shape))
                    }
                }
            }
        };
        let mut required = Vec::new();
        for r in &raw.required {
            match &payload {
                Some(Payload::Shape(shape)) => {
                    match shape.field_names().iter().find(|f| **f == r.get_ref()) {
                        Some(f) => required.push((*f).to_owned()),
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
        let dedupe = raw.dedupe.and_then(|d| {
            let span = d.span();
            let d = d.into_inner();
            let key = if d.key.starts_with('$') {
                Selector::parse(&d.key).map(KeySource::Path)
            } else {
                Expr::compile(&d.key, &scope, Want::Any).map(KeySource::Expr)
            }
            .map_err(|m| err(span.clone(), format!("dedupe key: {m}")))
            .ok();
            let window = match humantime::parse_duration(&d.window) {
                Ok(w) if !w.is_zero() => Some(w),
                Ok(_) => {
                    err(span.clone(), "dedupe window must be longer than 0".into());
                    None
                }
                Err(e) => {
                    err(
                        span.clone(),
                        format!("dedupe window `{}`: {e} (write e.g. \"10m\")", d.window),
                    );
                    None
                }
            };
            Some(DedupeSpec {
                key: key?,
                window: window?,
            })
        });
        let mut needs = Needs::default();
        if let When::Expr(e) = &when {
            needs.merge(e.needs());
        }
        if let Some(RuleTopic::Computed(e)) = &topic {
            needs.merge(e.needs());
        }
        if let Some(Payload::Shape(s)) = &payload {
            s.collect_needs(&mut needs);
        }
        if let Some(DedupeSpec {
            key: KeySource::Expr(e),
            ..
        }) = &dedupe
        {
            needs.merge(e.needs());
        }
        match (topic, payload) {
            (Some(topic), Some(payload)) if errors.is_empty() => Ok(Self {
                name,
                topic,
                methods,
                path: raw.path.into_inner(),
                status,
                when,
                for_each,
                payload,
                required,
                dedupe,
                needs,
            }),
            _ => Err(errors),
        }
    }
}

/// What a value is, in words: "an object", "a string".
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a path into the exchange's fixed parts selects, when that is known without traffic
/// and is not an array: `$.response.status` is a number, `$.request.headers` an object.
fn static_kind(s: &Selector) -> Option<&'static str> {
    if s.is_multi() {
        return None;
    }
    let path = s
        .source()
        .replace("['", ".")
        .replace("\']", "")
        .replace("[\"", ".")
        .replace("\"]", "");
    let parts: Vec<&str> = path
        .trim_start_matches('$')
        .split('.')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [] | ["request"] | ["response"] | ["params"] => Some("an object"),
        ["request", "headers" | "query"] | ["response", "headers"] => Some("an object"),
        ["request", "method" | "path"]
        | ["request", "headers", _]
        | ["response", "headers", _]
        | ["params", _] => Some("a string"),
        ["response", "status"] => Some("a number"),
        _ => None,
    }
}

/// What a rule made of an exchange.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub rule: &'a Rule,
    pub event: Event,
    /// The rule's `dedupe` claim, when it has one and the key was found: the event is to be
    /// stored only if the store has not seen the key within the window.
    pub dedupe: Option<Dedupe>,
}

/// All rules, routed.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// The rules' names, for the duplicate check (a scan of `rules` made loading quadratic).
    names: std::collections::HashSet<String>,
    router: Router,
    /// Per route (the router's index): what its candidate rules read of the exchange.
    route_reads: Vec<RouteReads>,
}

/// What the rules of one route read, per request method (the candidates depend on it).
#[derive(Debug, Default)]
struct RouteReads {
    /// The rules that take any method.
    any: Arc<Reads>,
    /// Per method some rule names: that method's rules and the `any` rules.
    by_method: Vec<(http::Method, Arc<Reads>)>,
}

impl RouteReads {
    fn add(&mut self, methods: &[http::Method], reads: &Reads) {
        // Not shrunk per rule (a reallocation of the whole tree each time made loading many
        // rules of one route quadratic): [`RuleSet::shrink`] does it once, when all are in.
        let merge = |into: &mut Arc<Reads>| Arc::make_mut(into).merge(reads);
        if methods.is_empty() {
            merge(&mut self.any);
            self.by_method.iter_mut().for_each(|(_, r)| merge(r));
            return;
        }
        for method in methods {
            let at = match self.by_method.iter().position(|(m, _)| m == method) {
                Some(at) => at,
                None => {
                    let any = Reads::clone(&self.any);
                    self.by_method.push((method.clone(), Arc::new(any)));
                    self.by_method.len() - 1
                }
            };
            merge(&mut self.by_method[at].1);
        }
    }

    fn of(&self, method: &http::Method) -> &Arc<Reads> {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map_or(&self.any, |(_, r)| r)
    }
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
        let route = self
            .router
            .insert(&rule.path, rule.methods.clone(), self.rules.len())
            .map_err(|e| vec![SpanError::new(path_span, e.to_string())])?;
        if route == self.route_reads.len() {
            self.route_reads.push(RouteReads::default());
        }
        self.route_reads[route].add(&rule.methods, &rule.reads());
        self.names.insert(rule.name.clone());
        self.rules.push(rule);
        Ok(())
    }

    /// Gives back the spare capacity of what the routes read, once every rule is added (the
    /// trees are kept for as long as the rule set).
    pub fn shrink(&mut self) {
        for route in &mut self.route_reads {
            Arc::make_mut(&mut route.any).shrink();
            for (_, reads) in &mut route.by_method {
                Arc::make_mut(reads).shrink();
            }
        }
    }

    /// How many distinct routes the router holds.
    pub fn route_count(&self) -> usize {
        self.router.route_count()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules that could match this request, or `None` for the common passthrough case;
    /// with what they can read of the exchange (computed when the rules were loaded).
    pub fn candidates(&self, method: &http::Method, path: &str) -> Option<Candidates> {
        let mut candidates = self.router.candidates(method, path)?;
        candidates.reads = self
            .route_reads
            .get(candidates.route)
            .map(|r| Arc::clone(r.of(method)));
        Some(candidates)
    }

    /// Whether any candidate still matches once the status is known (else skip the body copy).
    pub fn wants_response(&self, candidates: &Candidates, status: u16) -> bool {
        candidates
            .matches
            .iter()
            .any(|(rule, _)| self.rules[*rule].status_matches(status))
    }

    /// Evaluates every candidate over the exchange document; each matching rule makes one event
    /// (one per item under `for_each`). Misses are logged at debug.
    pub fn evaluate(&self, candidates: &Candidates, doc: &mut Value) -> Vec<Match<'_>> {
        self.evaluate_reporting(candidates, doc, &mut |m| {
            tracing::debug!(rule = %m.rule.name, reason = m.kind.label(), detail = %m.detail,
                "rule did not match");
        })
    }

    /// [`RuleSet::evaluate`], handing every [`Miss`] to `misses`.
    pub fn evaluate_reporting(
        &self,
        candidates: &Candidates,
        doc: &mut Value,
        misses: &mut dyn FnMut(Miss<'_>),
    ) -> Vec<Match<'_>> {
        let mut out = Vec::new();
        self.evaluate_each(candidates, doc, false, &mut |rule, matches, failed, _| {
            for (kind, detail) in failed {
                misses(Miss { rule, kind, detail });
            }
            out.extend(matches);
        });
        out
    }

    /// A dry run: what every candidate rule makes of the exchange, by the same evaluation as
    /// [`RuleSet::evaluate`] (the proxy's), with why a rule derived nothing. Nothing is
    /// counted, logged or claimed: a match's dedupe claim is only described.
    pub fn explain(&self, candidates: &Candidates, doc: &mut Value) -> Vec<Explained<'_>> {
        let mut out = Vec::new();
        self.evaluate_each(
            candidates,
            doc,
            true,
            &mut |rule, matches, failed, quiet| {
                let mut reasons: Vec<String> = failed
                    .into_iter()
                    .map(|(kind, detail)| format!("{detail} ({})", kind.label()))
                    .collect();
                reasons.extend(quiet);
                out.push(Explained {
                    rule,
                    matches,
                    reasons,
                });
            },
        );
        out
    }

    /// Evaluates each candidate rule in turn, handing `each` the rule, its matches, its
    /// failures ([`MissKind`] and detail) and, when `explain` is set, the [`Quiet`] reasons
    /// in words (the proxy does not build them).
    #[allow(clippy::type_complexity)]
    fn evaluate_each<'s>(
        &'s self,
        candidates: &Candidates,
        doc: &mut Value,
        explain: bool,
        each: &mut dyn FnMut(&'s Rule, Vec<Match<'s>>, Vec<(MissKind, String)>, Vec<String>),
    ) {
        // Member by member: `Value::pointer` splits and unescapes its path on every call.
        let status = doc
            .get("response")
            .and_then(|r| r.get("status"))
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        for (index, params) in &candidates.matches {
            let rule = &self.rules[*index];
            let mut quiet = Vec::new();
            if !rule.status_matches(status) {
                if explain {
                    quiet.push(rule.quiet_reason(Quiet::Status(status)));
                    each(rule, Vec::new(), Vec::new(), quiet);
                }
                continue;
            }
            doc["params"] = Value::Object(
                params
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            );
            let mut failed = Vec::new();
            let derived = rule.derive(
                doc,
                &mut |m: Miss<'_>| failed.push((m.kind, m.detail)),
                &mut |q: Quiet<'_>| {
                    if explain {
                        let reason = rule.quiet_reason(q);
                        // Under `for_each` the same reason can come once per item.
                        if !quiet.contains(&reason) {
                            quiet.push(reason);
                        }
                    }
                },
            );
            let matches = derived
                .into_iter()
                .map(|d| Match {
                    rule,
                    event: Event::new(&d.topic, &rule.name, d.payload),
                    dedupe: d.dedupe,
                })
                .collect();
            each(rule, matches, failed, quiet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_src: &str) -> RuleSet {
        let file: raw::RawRuleFile = toml::from_str(toml_src).expect("rule file parses");
        let mut set = RuleSet::default();
        for r in file.rule {
            set.add(r).expect("rule compiles");
        }
        set
    }

    /// Evaluates `body` as the response to `POST /x`: the events' payloads and the misses.
    fn run(set: &RuleSet, body: Value) -> (Vec<Value>, Vec<(MissKind, String)>) {
        let mut doc = json!({
            "request": {"method": "POST", "path": "/x", "query": {}, "headers": {}, "body": null},
            "response": {"status": 200, "headers": {}, "body": body},
            "params": {},
        });
        let candidates = set
            .candidates(&http::Method::POST, "/x")
            .expect("a candidate");
        let mut misses = Vec::new();
        let events = set
            .evaluate_reporting(&candidates, &mut doc, &mut |m| {
                misses.push((m.kind, m.detail.clone()))
            })
            .into_iter()
            .map(|m| m.event.payload)
            .collect();
        (events, misses)
    }

    #[test]
    fn for_each_takes_the_elements_of_one_array_or_every_node_selected() {
        let whole = rules(
            "[[rule]]\nname = \"a\"\ntopic = \"t.a\"\npath = \"/x\"\nfor_each = \"$.response.body.items\"\npayload = \"$.item\"\n",
        );
        assert_eq!(
            run(&whole, json!({"items": [1, 2]})).0,
            vec![json!(1), json!(2)]
        );
        assert_eq!(run(&whole, json!({"items": []})).0, Vec::<Value>::new());
        assert_eq!(
            run(&whole, json!({})).0,
            Vec::<Value>::new(),
            "absent: nothing"
        );
        let (events, misses) = run(&whole, json!({"items": {"a": 1}}));
        assert!(events.is_empty());
        assert_eq!(misses[0].0, MissKind::NotArray);
        assert!(
            misses[0].1.contains("selected an object, not an array"),
            "{misses:?}"
        );

        let filtered = rules(
            "[[rule]]\nname = \"b\"\ntopic = \"t.b\"\npath = \"/x\"\nfor_each = \"$.response.body.items[?@.ok == true]\"\n[rule.payload]\nid = \"$.item.id\"\n",
        );
        let body = json!({"items": [{"id": 1, "ok": true}, {"id": 2, "ok": false}, {"id": 3, "ok": true}]});
        assert_eq!(
            run(&filtered, body).0,
            vec![json!({"id": 1}), json!({"id": 3})]
        );
    }

    #[test]
    fn a_dry_run_tells_what_each_candidate_made_and_why_not() {
        let set = rules(
            "[[rule]]\nname = \"each\"\ntopic = \"t.each\"\npath = \"/x\"\nfor_each = \"$.response.body.items\"\nwhen = [{ path = \"$.item.ok\", equals = true }]\npayload = \"$.item.id\"\n\n\
             [[rule]]\nname = \"created\"\ntopic = \"t.created\"\npath = \"/x\"\nstatus = [201]\n\n\
             [[rule]]\nname = \"needs\"\ntopic = \"t.needs\"\npath = \"/x\"\nrequired = [\"ref\"]\n[rule.payload]\nref = \"$.response.body.ref\"\n\n\
             [[rule]]\nname = \"empty\"\ntopic = \"t.empty\"\npath = \"/x\"\nfor_each = \"$.response.body.none\"\n",
        );
        let mut doc = json!({
            "request": {"method": "POST", "path": "/x", "query": {}, "headers": {}, "body": null},
            "response": {"status": 200, "headers": {}, "body": {"items": [
                {"id": 1, "ok": true}, {"id": 2, "ok": false}, {"id": 3, "ok": true}]}},
            "params": {},
        });
        let candidates = set
            .candidates(&http::Method::POST, "/x")
            .expect("a candidate");
        let explained = set.explain(&candidates, &mut doc);
        let by_name = |n: &str| {
            explained
                .iter()
                .find(|e| e.rule.name == n)
                .unwrap_or_else(|| panic!("{n} explained"))
        };
        let each = by_name("each");
        assert_eq!(
            each.matches
                .iter()
                .map(|m| m.event.payload.clone())
                .collect::<Vec<_>>(),
            vec![json!(1), json!(3)]
        );
        assert_eq!(each.reasons, vec!["`when` did not hold for an item"]);
        assert_eq!(
            by_name("created").reasons,
            vec!["status 200 is not one the rule takes (201)"]
        );
        assert!(by_name("created").matches.is_empty());
        assert_eq!(
            by_name("needs").reasons,
            vec!["required payload field `ref` is missing or null"]
        );
        assert_eq!(
            by_name("empty").reasons,
            vec!["for_each `$.response.body.none` selected no items"]
        );
        // The same evaluation as the proxy's.
        let evaluated: Vec<Value> = set
            .evaluate(&candidates, &mut doc)
            .into_iter()
            .map(|m| m.event.payload)
            .collect();
        assert_eq!(evaluated, vec![json!(1), json!(3)]);
    }

    #[test]
    fn dedupe_keys_are_per_rule_and_absent_keys_do_not_dedupe() {
        let set = rules(
            "[[rule]]\nname = \"a\"\ntopic = \"t.a\"\npath = \"/x\"\ndedupe = { key = \"response.body.id\", window = \"1m\" }\n\n\
             [[rule]]\nname = \"b\"\ntopic = \"t.b\"\npath = \"/x\"\ndedupe = { key = \"$.response.body.ref\", window = \"1m\" }\n",
        );
        let mut doc = json!({
            "request": {"method": "POST", "path": "/x", "query": {}, "headers": {}, "body": null},
            "response": {"status": 200, "headers": {}, "body": {"id": 7}},
            "params": {},
        });
        let candidates = set
            .candidates(&http::Method::POST, "/x")
            .expect("a candidate");
        let matches = set.evaluate(&candidates, &mut doc);
        assert_eq!(matches.len(), 2);
        assert_eq!(
            matches[0].dedupe.map(|d| (d.key, d.window)),
            Some((DedupeKey::new("a", "7"), std::time::Duration::from_secs(60)))
        );
        assert_eq!(matches[1].dedupe, None, "no `ref`: nothing to compare");
    }
}
