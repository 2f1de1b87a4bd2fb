//! CEL expressions: compiled and checked once at load, evaluated over JSON documents.
//!
//! The implementation is the `cel` crate of the cel-rust project (parser and interpreter). It
//! has no type checker, so [`check`] below does the part of one a rule file needs: every
//! variable is one the place allows, every field of the exchange's fixed parts exists
//! (`response.bdy` is an error), every function is known, and operators get operands of types
//! they accept wherever the types are known (`'a' + 1`, `response.status > 'x'`). What comes
//! from a body is dynamic and checked when evaluated; an error then is a
//! [`EvalError`], which makes the rule not match.
//!
//! Evaluation is bounded: CEL has no loops, only comprehensions over finite lists.
//! Nothing here does I/O.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program};
use serde_json::{Map, Value};

/// The standard library plus the strings extension (`lowerAscii`, `split`, `replace`, ...).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Only fails when a name is declared twice; the standard environment declares none of
    // the extension's, so a failure leaves the standard library in place.
    if let Err(e) = env.add_extension(cel::extensions::strings) {
        tracing::warn!(error = %e, "CEL strings extension not available");
    }
    Arc::new(env)
});

/// A static type, as far as it is known before a document is seen.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// Only known when evaluated (bodies, items).
    Dyn,
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    Null,
    List(Box<Ty>),
    /// A map with string keys and values of one type.
    Map(Box<Ty>),
    /// An object with fixed fields, such as `request`.
    Record(&'static [(&'static str, Ty)]),
}

impl Ty {
    fn name(&self) -> &'static str {
        match self {
            Ty::Dyn => "dyn",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::UInt => "uint",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List(_) => "list",
            Ty::Map(_) | Ty::Record(_) => "map",
        }
    }

    /// The name with its article: "an int", "a string".
    fn a_name(&self) -> String {
        let n = self.name();
        let article = if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {n}")
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::UInt | Ty::Double)
    }

    fn known(&self) -> bool {
        *self != Ty::Dyn
    }
}

fn strings() -> Ty {
    Ty::Map(Box::new(Ty::String))
}

/// The exchange document's fixed parts (see [`crate::capture::Exchange::into_document`]).
pub static REQUEST: LazyLock<Ty> = LazyLock::new(|| {
    static FIELDS: LazyLock<[(&str, Ty); 5]> = LazyLock::new(|| {
        [
            ("method", Ty::String),
            ("path", Ty::String),
            ("query", Ty::Map(Box::new(Ty::Dyn))),
            ("headers", strings()),
            ("body", Ty::Dyn),
        ]
    });
    Ty::Record(&*FIELDS)
});

pub static RESPONSE: LazyLock<Ty> = LazyLock::new(|| {
    static FIELDS: LazyLock<[(&str, Ty); 3]> = LazyLock::new(|| {
        [
            ("status", Ty::Int),
            ("headers", strings()),
            ("body", Ty::Dyn),
        ]
    });
    Ty::Record(&*FIELDS)
});

/// Which variables an expression may use, and their types.
#[derive(Debug, Clone)]
pub struct Scope {
    vars: Vec<(&'static str, Ty)>,
}

impl Scope {
    /// A rule's expressions: `request`, `response`, `params`, and `item` under `for_each`.
    pub fn exchange(with_item: bool) -> Self {
        let mut vars = vec![
            ("request", REQUEST.clone()),
            ("response", RESPONSE.clone()),
            ("params", strings()),
        ];
        if with_item {
            vars.push(("item", Ty::Dyn));
        }
        Self { vars }
    }

    /// A webhook transform's expressions: `payload`, `topic`, `event_id`, `time`.
    pub fn transform() -> Self {
        Self {
            vars: vec![
                ("payload", Ty::Dyn),
                ("topic", Ty::String),
                ("event_id", Ty::String),
                ("time", Ty::String),
            ],
        }
    }

    fn get(&self, name: &str) -> Option<&Ty> {
        self.vars.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.vars.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

/// How deeply an expression may nest (operators, calls, field selections). Evaluation recurses
/// once per level on the proxy's threads, so the depth is bounded at load.
const MAX_DEPTH: usize = 100;

/// The parser recurses deeper than the nesting it is given (an `a.a.a...` of a few thousand
/// levels overflowed a main thread's stack), so parsing, and dropping what is refused, run on a
/// thread with a stack of their own.
const PARSE_STACK: usize = 256 << 20;

/// `source` as shown in messages: at most 120 characters.
fn shown(source: &str) -> Cow<'_, str> {
    match source.char_indices().nth(120) {
        None => Cow::Borrowed(source),
        Some((cut, _)) => Cow::Owned(format!("{}…", &source[..cut])),
    }
}

/// Parses `source` with the standard environment; refuses nesting deeper than [`MAX_DEPTH`].
fn parse(source: &str) -> Result<Program, String> {
    let owned = source.to_owned();
    let parsed = std::thread::Builder::new()
        .name("cel-parse".to_owned())
        .stack_size(PARSE_STACK)
        .spawn(move || {
            let program = ENV.compile(&owned).map_err(|e| {
                e.errors.first().map_or_else(
                    || e.to_string(),
                    |p| format!("syntax error at character {}: {}", p.pos.1 + 1, p.msg),
                )
            })?;
            match depth(program.expression(), MAX_DEPTH + 1) {
                d if d > MAX_DEPTH => Err(format!(
                    "nested more than {MAX_DEPTH} levels deep; split it up"
                )),
                _ => Ok(program),
            }
        })
        .map_err(|e| format!("cannot start the parser's thread: {e}"))?
        .join();
    parsed.unwrap_or_else(|_| Err("the expression could not be parsed".to_owned()))
}

/// The nesting depth of `e`, counted up to `limit` (not past it, so that counting a very deep
/// tree is cheap).
fn depth(e: &IdedExpr, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    let children: Vec<&IdedExpr> = match &e.expr {
        Node::Call(c) => c.target.iter().map(|t| &**t).chain(&c.args).collect(),
        Node::Select(s) => vec![&s.operand],
        Node::List(l) => l.elements.iter().collect(),
        Node::Map(m) => m
            .entries
            .iter()
            .flat_map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Node::Struct(st) => st
            .entries
            .iter()
            .filter_map(|en| match &en.expr {
                EntryExpr::StructField(f) => Some(&f.value),
                EntryExpr::MapEntry(_) => None,
            })
            .collect(),
        Node::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Node::Ident(_) | Node::Literal(_) | Node::Unspecified => Vec::new(),
    };
    1 + children
        .into_iter()
        .map(|c| depth(c, limit - 1))
        .max()
        .unwrap_or(0)
}

/// What the place an expression stands in needs it to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Bool,
    String,
    Any,
}

/// A compiled, checked CEL expression.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    /// The parts of the variables the expression reads (see [`Needs`]).
    needs: Arc<Needs>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Why an expression could not be evaluated over one document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{expr}`: {message}")]
pub struct EvalError {
    pub expr: String,
    pub message: String,
}

impl Expr {
    /// Parses and checks `source`; the error names the expression.
    pub fn compile(source: &str, scope: &Scope, want: Want) -> Result<Self, String> {
        let shown = shown(source);
        let program = parse(source).map_err(|m| format!("invalid expression `{shown}`: {m}"))?;
        let ty = Checker { scope }
            .check(program.expression(), &mut Vec::new())
            .map_err(|m| format!("invalid expression `{shown}`: {m}"))?;
        match (want, &ty) {
            (Want::Bool, Ty::Bool | Ty::Dyn) | (Want::String, Ty::String | Ty::Dyn) => {}
            (Want::Any, _) => {}
            (Want::Bool, t) => {
                return Err(format!(
                    "invalid expression `{shown}`: a condition must be a bool, this is {}",
                    t.a_name()
                ));
            }
            (Want::String, t) => {
                return Err(format!(
                    "invalid expression `{shown}`: must be a string, this is {}",
                    t.a_name()
                ));
            }
        }
        let mut needs = Needs::default();
        collect_needs(program.expression(), scope, &mut Vec::new(), &mut needs);
        Ok(Self {
            source: source.into(),
            program: Arc::new(program),
            needs: Arc::new(needs),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parts of the variables this expression reads.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// Evaluates over `vars`; the result as CEL holds it.
    pub fn eval_raw(&self, vars: &Vars<'_>) -> Result<cel::Value, EvalError> {
        let mut ctx = Context::with_env(Arc::clone(&ENV));
        ctx.set_variable_resolver(vars);
        self.program
            .execute(&ctx)
            .map_err(|e| self.error(e.to_string()))
    }

    /// Evaluates over `vars` to JSON.
    pub fn eval(&self, vars: &Vars<'_>) -> Result<Value, EvalError> {
        let v = self.eval_raw(vars)?;
        to_json(&v).map_err(|m| self.error(m))
    }

    /// Evaluates a condition: anything but `true` (a bool) is an error.
    pub fn holds(&self, vars: &Vars<'_>) -> Result<bool, EvalError> {
        match self.eval_raw(vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(self.error(format!(
                "a condition must be a bool, got {}",
                other.type_of()
            ))),
        }
    }

    fn error(&self, message: String) -> EvalError {
        EvalError {
            expr: self.source.to_string(),
            message,
        }
    }
}

/// The variables of one evaluation, converted from JSON once and lent to every expression
/// evaluated over them (strings are borrowed, not copied).
#[derive(Default)]
pub struct Vars<'a> {
    vars: Vec<(&'static str, Box<dyn Val + 'a>)>,
}

impl<'a> Vars<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `name` to `value`, replacing an earlier binding.
    pub fn set(&mut self, name: &'static str, value: &'a Value) {
        self.set_val(name, to_val(value));
    }

    /// Binds `name` to the parts of `value` that `needs` says are read, if any are.
    pub fn set_needed(&mut self, name: &'static str, value: &'a Value, needs: &Needs) {
        if let Some(n) = needs.field(name) {
            self.set_val(name, to_val_needed(value, n));
        }
    }

    pub fn set_val(&mut self, name: &'static str, value: Box<dyn Val + 'a>) {
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        self.vars
            .iter()
            .find(|(n, _)| *n == variable)
            .map(|(_, v)| CowVal::Borrowed(v.as_ref()))
    }
}

/// Which parts of the variables some expressions read: a tree of field names from the variable
/// down, where `whole` means the value is used as a whole (compared, iterated, passed on). The
/// variables are converted to CEL values only as far as read: an expression that reads
/// `response.body.status` does not pay for converting the rest of the body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    whole: bool,
    fields: std::collections::BTreeMap<String, Needs>,
}

impl Needs {
    /// Adds what `other` reads.
    pub fn merge(&mut self, other: &Needs) {
        self.whole |= other.whole;
        for (k, v) in &other.fields {
            self.fields.entry(k.clone()).or_default().merge(v);
        }
    }

    /// What is read of the field (or variable) `name`, if anything.
    pub fn field(&self, name: &str) -> Option<&Needs> {
        self.fields.get(name)
    }

    /// Whether the value is used as a whole.
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// The fields read, with what is read of each.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Needs)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn add(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.whole = true,
            Some((first, rest)) => self.fields.entry(first.clone()).or_default().add(rest),
        }
    }
}

/// `value` converted as far as `needs` reads it: objects keep only the fields read.
pub fn to_val_needed<'a>(v: &'a Value, needs: &Needs) -> Box<dyn Val + 'a> {
    match v {
        Value::Object(m) if !needs.whole => Box::new(CelMap::from(
            needs
                .fields
                .iter()
                .filter_map(|(k, n)| {
                    m.get_key_value(k.as_str())
                        .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val_needed(v, n)))
                })
                .collect::<HashMap<_, _>>(),
        )),
        _ => to_val(v),
    }
}

/// The chain of static field names `e` spells from a variable: `request.headers['x-a']` is
/// `request`, `headers`, `x-a`.
fn static_chain(e: &IdedExpr) -> Option<Vec<String>> {
    match &e.expr {
        Node::Ident(name) => Some(vec![name.clone()]),
        Node::Select(s) if !s.test => {
            let mut chain = static_chain(&s.operand)?;
            chain.push(s.field.clone());
            Some(chain)
        }
        Node::Call(c) if c.func_name == "_[_]" && c.target.is_none() && c.args.len() == 2 => {
            match &c.args[1].expr {
                Node::Literal(LiteralValue::String(k)) => {
                    let mut chain = static_chain(&c.args[0])?;
                    chain.push(k.inner().to_owned());
                    Some(chain)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Adds to `needs` every part of a scope variable that `e` reads.
fn collect_needs(e: &IdedExpr, scope: &Scope, locals: &mut Vec<String>, needs: &mut Needs) {
    if let Some(chain) = static_chain(e) {
        if scope.get(&chain[0]).is_some() && !locals.contains(&chain[0]) {
            needs.add(&chain);
        }
        return;
    }
    let mut walk = |e: &IdedExpr, locals: &mut Vec<String>| collect_needs(e, scope, locals, needs);
    match &e.expr {
        Node::Select(s) => {
            // `has(a.b.c)`: `a.b` must show whether it has `c`.
            match static_chain(&s.operand) {
                Some(mut chain) if s.test => {
                    if scope.get(&chain[0]).is_some() && !locals.contains(&chain[0]) {
                        chain.push(s.field.clone());
                        needs.add(&chain);
                    }
                }
                _ => walk(&s.operand, locals),
            }
        }
        Node::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, locals);
            }
            for a in &c.args {
                walk(a, locals);
            }
        }
        Node::List(l) => l.elements.iter().for_each(|x| walk(x, locals)),
        Node::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, locals);
                    walk(&me.value, locals);
                }
            }
        }
        Node::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, locals);
                }
            }
        }
        Node::Comprehension(c) => {
            walk(&c.iter_range, locals);
            walk(&c.accu_init, locals);
            let depth = locals.len();
            locals.push(c.iter_var.clone());
            locals.extend(c.iter_var2.clone());
            locals.push(c.accu_var.clone());
            walk(&c.loop_cond, locals);
            walk(&c.loop_step, locals);
            walk(&c.result, locals);
            locals.truncate(depth);
        }
        Node::Ident(_) | Node::Literal(_) | Node::Unspecified => {}
    }
}

/// A JSON value as CEL sees it: numbers that fit an int are ints, others doubles.
pub fn to_val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(to_val).collect::<Vec<_>>())),
        Value::Object(m) => Box::new(CelMap::from(
            m.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// A CEL value as JSON. Bytes become base64; maps get string keys.
pub fn to_json(v: &cel::Value) -> Result<Value, String> {
    use base64::Engine as _;
    Ok(match v {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"))?,
        cel::Value::String(s) => Value::String(s.as_str().to_owned()),
        cel::Value::Bytes(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        cel::Value::List(l) => Value::Array(l.iter().map(to_json).collect::<Result<_, _>>()?),
        cel::Value::Map(m) => {
            let mut entries: Vec<(String, Value)> = m
                .map
                .iter()
                .map(|(k, v)| Ok((key_text(k), to_json(v)?)))
                .collect::<Result<_, String>>()?;
            // CEL maps are unordered: sort, so that the same map always reads the same.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect::<Map<_, _>>())
        }
        other => return Err(format!("a {} has no JSON form", other.type_of())),
    })
}

fn key_text(k: &cel::objects::Key) -> String {
    match k {
        cel::objects::Key::Int(i) => i.to_string(),
        cel::objects::Key::Uint(u) => u.to_string(),
        cel::objects::Key::Bool(b) => b.to_string(),
        cel::objects::Key::String(s) => s.as_str().to_owned(),
    }
}

/// The static check (see the module documentation).
struct Checker<'s> {
    scope: &'s Scope,
}

/// Local variables of comprehensions, innermost last.
type Locals = Vec<(String, Ty)>;

impl Checker<'_> {
    fn check(&self, e: &IdedExpr, locals: &mut Locals) -> Result<Ty, String> {
        match &e.expr {
            Node::Unspecified => Ok(Ty::Dyn),
            Node::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::UInt,
            }),
            Node::Ident(name) => {
                if let Some((_, t)) = locals.iter().rev().find(|(n, _)| n == name) {
                    return Ok(t.clone());
                }
                self.scope.get(name).cloned().ok_or_else(|| {
                    format!(
                        "unknown variable `{name}`; this expression can use {}",
                        self.scope.names()
                    )
                })
            }
            Node::Select(s) => {
                let operand = self.check(&s.operand, locals)?;
                let field = field_of(&operand, &s.field)?;
                Ok(if s.test { Ty::Bool } else { field })
            }
            Node::List(l) => {
                let mut elem: Option<Ty> = None;
                for item in &l.elements {
                    let t = self.check(item, locals)?;
                    elem = Some(match elem {
                        None => t,
                        Some(prev) if prev == t => prev,
                        Some(_) => Ty::Dyn,
                    });
                }
                Ok(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))))
            }
            Node::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.check(&me.key, locals)?;
                        self.check(&me.value, locals)?;
                    }
                }
                Ok(Ty::Map(Box::new(Ty::Dyn)))
            }
            Node::Struct(s) => Err(format!(
                "message construction (`{}{{...}}`) is not supported; use a map literal",
                s.type_name
            )),
            Node::Comprehension(c) => {
                let range = self.check(&c.iter_range, locals)?;
                let (first, second) = match &range {
                    Ty::List(e) => (Ty::Int, (**e).clone()),
                    Ty::Map(v) => (Ty::String, (**v).clone()),
                    Ty::Record(_) => (Ty::String, Ty::Dyn),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    t => return Err(format!("cannot iterate over a {}", t.name())),
                };
                let accu = self.check(&c.accu_init, locals)?;
                let depth = locals.len();
                match &c.iter_var2 {
                    // `list.all(i, v, ...)`: index and value; `map.all(k, v, ...)`: key and value.
                    Some(v2) => {
                        locals.push((c.iter_var.clone(), first));
                        locals.push((v2.clone(), second));
                    }
                    None => {
                        let only = if matches!(range, Ty::List(_)) {
                            second
                        } else {
                            first
                        };
                        locals.push((c.iter_var.clone(), only));
                    }
                }
                locals.push((c.accu_var.clone(), accu));
                let checked = (|| {
                    self.check(&c.loop_cond, locals)?;
                    self.check(&c.loop_step, locals)?;
                    self.check(&c.result, locals)
                })();
                locals.truncate(depth);
                checked
            }
            Node::Call(call) => {
                let target = call
                    .target
                    .as_ref()
                    .map(|t| self.check(t, locals))
                    .transpose()?;
                let args = call
                    .args
                    .iter()
                    .map(|a| self.check(a, locals))
                    .collect::<Result<Vec<_>, _>>()?;
                call_type(&call.func_name, target.as_ref(), &args, &call.args)
            }
        }
    }
}

/// The type of `operand.field`.
fn field_of(operand: &Ty, field: &str) -> Result<Ty, String> {
    match operand {
        Ty::Record(fields) => fields
            .iter()
            .find(|(n, _)| *n == field)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                format!("no field `{field}` here; there are {}", names.join(", "))
            }),
        Ty::Map(v) => Ok((**v).clone()),
        Ty::Dyn => Ok(Ty::Dyn),
        t => Err(format!("cannot select `.{field}` of a {}", t.name())),
    }
}

/// Whether two known types can be compared with `==` or `<`.
fn comparable(a: &Ty, b: &Ty) -> bool {
    !a.known()
        || !b.known()
        || *a == Ty::Null
        || *b == Ty::Null
        || (a.numeric() && b.numeric())
        || a.name() == b.name()
}

fn call_type(name: &str, target: Option<&Ty>, args: &[Ty], raw: &[IdedExpr]) -> Result<Ty, String> {
    let no_overload = |op: &str| {
        let types: Vec<&str> = target.into_iter().chain(args).map(Ty::name).collect();
        Err(format!("no `{op}` for ({})", types.join(", ")))
    };
    let is = |t: &Ty, want: Ty| !t.known() || *t == want;
    let arity = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "`{name}` takes {n} argument(s), got {}",
                args.len()
            ))
        }
    };
    // The receiver of a member function, or the first argument of a global one.
    let subject = target.or(args.first()).cloned().unwrap_or(Ty::Dyn);
    match name {
        "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
            if args.iter().all(|a| is(a, Ty::Bool)) {
                Ok(Ty::Bool)
            } else {
                no_overload(match name {
                    "_&&_" => "&&",
                    "_||_" => "||",
                    _ => "!",
                })
            }
        }
        "_?_:_" => {
            if !is(&args[0], Ty::Bool) {
                return Err(format!(
                    "the condition of `? :` must be a bool, this is a {}",
                    args[0].name()
                ));
            }
            Ok(if args[1] == args[2] {
                args[1].clone()
            } else {
                Ty::Dyn
            })
        }
        "_==_" | "_!=_" => {
            if comparable(&args[0], &args[1]) {
                Ok(Ty::Bool)
            } else {
                Err(format!(
                    "comparing a {} with a {} is always {}",
                    args[0].name(),
                    args[1].name(),
                    name == "_!=_"
                ))
            }
        }
        "_<_" | "_<=_" | "_>_" | "_>=_" => {
            let orderable = |t: &Ty| {
                !t.known() || t.numeric() || matches!(t, Ty::String | Ty::Bytes | Ty::Bool)
            };
            if orderable(&args[0])
                && orderable(&args[1])
                && comparable(&args[0], &args[1])
                && args[0] != Ty::Null
                && args[1] != Ty::Null
            {
                Ok(Ty::Bool)
            } else {
                no_overload(&name[1..name.len() - 1])
            }
        }
        "_+_" => match (&args[0], &args[1]) {
            (a, b) if !a.known() || !b.known() => Ok(Ty::Dyn),
            (Ty::List(_), Ty::List(_)) => Ok(Ty::List(Box::new(Ty::Dyn))),
            (a, b) if a == b && (a.numeric() || matches!(a, Ty::String | Ty::Bytes)) => {
                Ok(a.clone())
            }
            _ => no_overload("+"),
        },
        "_-_" | "_*_" | "_/_" | "_%_" => match (&args[0], &args[1]) {
            (a, b) if !a.known() || !b.known() => Ok(Ty::Dyn),
            (a, b) if a == b && a.numeric() && !(name == "_%_" && *a == Ty::Double) => {
                Ok(a.clone())
            }
            _ => no_overload(&name[1..name.len() - 1]),
        },
        "-_" => match &args[0] {
            Ty::Dyn | Ty::Int | Ty::Double => Ok(args[0].clone()),
            _ => no_overload("-"),
        },
        "_[_]" | "_[?_]" => match (&args[0], &args[1]) {
            (Ty::List(e), i) if is(i, Ty::Int) || *i == Ty::UInt => Ok((**e).clone()),
            (Ty::Map(v), k) if !k.known() || *k == Ty::String => Ok((**v).clone()),
            (Ty::Record(_), k) if !k.known() || *k == Ty::String => {
                match raw.get(1).map(|r| &r.expr) {
                    Some(Node::Literal(LiteralValue::String(s))) => field_of(&args[0], s.inner()),
                    _ => Ok(Ty::Dyn),
                }
            }
            (Ty::Dyn, _) => Ok(Ty::Dyn),
            _ => no_overload("[]"),
        },
        "@in" => match &args[1] {
            Ty::List(_) | Ty::Map(_) | Ty::Record(_) | Ty::Dyn => Ok(Ty::Bool),
            t => Err(format!(
                "`in` needs a list or a map, this is a {}",
                t.name()
            )),
        },
        "size" => match subject {
            Ty::Dyn | Ty::String | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Record(_) => {
                Ok(Ty::Int)
            }
            t => Err(format!("no `size` of a {}", t.name())),
        },
        "int" | "uint" | "double" | "string" | "bool" | "bytes" | "dyn" | "type" => {
            arity(1)?;
            Ok(match name {
                "int" => Ty::Int,
                "uint" => Ty::UInt,
                "double" => Ty::Double,
                "string" => Ty::String,
                "bool" => Ty::Bool,
                "bytes" => Ty::Bytes,
                _ => Ty::Dyn,
            })
        }
        "contains" | "startsWith" | "endsWith" | "matches" | "lowerAscii" | "upperAscii"
        | "trim" | "replace" | "split" | "substring" | "indexOf" | "lastIndexOf" | "charAt"
        | "reverse" | "format" => {
            if !is(&subject, Ty::String) {
                return Err(format!(
                    "`{name}` works on strings, this is a {}",
                    subject.name()
                ));
            }
            Ok(match name {
                "contains" | "startsWith" | "endsWith" | "matches" => Ty::Bool,
                "indexOf" | "lastIndexOf" => Ty::Int,
                "split" => Ty::List(Box::new(Ty::String)),
                _ => Ty::String,
            })
        }
        "join" => match subject {
            Ty::Dyn | Ty::List(_) => Ok(Ty::String),
            t => Err(format!("`join` works on lists, this is a {}", t.name())),
        },
        _ => Err(format!("unknown function `{name}`")),
    }
}

/// The text a value stands for in a key or a topic: strings as they are, others as JSON.
pub fn text_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(src: &str) -> Result<Expr, String> {
        Expr::compile(src, &Scope::exchange(false), Want::Any)
    }

    fn doc() -> Value {
        json!({
            "request": {"method": "POST", "path": "/orders", "query": {},
                        "headers": {"x-tickets": "3"}, "body": {"n": 2}},
            "response": {"status": 201, "headers": {}, "body": {"status": "paid", "id": 7,
                         "lines": [{"q": 1}, {"q": 2}]}},
            "params": {"id": "7"},
        })
    }

    fn eval(src: &str) -> Result<Value, EvalError> {
        let d = doc();
        let mut vars = Vars::new();
        for name in ["request", "response", "params"] {
            vars.set(name, &d[name]);
        }
        compile(src).expect(src).eval(&vars)
    }

    #[test]
    fn evaluates_over_the_exchange() {
        assert_eq!(
            eval(
                "response.body.status in ['new', 'paid'] && int(request.headers['x-tickets']) > 2"
            ),
            Ok(json!(true))
        );
        assert_eq!(
            eval("'order.' + response.body.status"),
            Ok(json!("order.paid"))
        );
        assert_eq!(
            eval("response.body.lines.map(l, l.q * 10)"),
            Ok(json!([10, 20]))
        );
        assert_eq!(
            eval("{'b': 1, 'a': params.id}"),
            Ok(json!({"a": "7", "b": 1}))
        );
        assert_eq!(eval("response.status == 201"), Ok(json!(true)));
    }

    #[test]
    fn runtime_errors_name_the_expression() {
        let e = eval("response.body.missing > 1").unwrap_err();
        assert_eq!(e.expr, "response.body.missing > 1");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(eval("int(response.body.status) > 1").is_err());
    }

    #[test]
    fn load_time_errors() {
        let err = |src: &str| compile(src).expect_err(src);
        assert!(err("response.body.status ==").contains("syntax error"));
        assert!(err("respons.body").contains("unknown variable `respons`"));
        assert!(err("item.id").contains("unknown variable `item`"));
        assert!(err("response.bdy").contains("no field `bdy`"));
        assert!(err("'a' + 1").contains("no `+` for (string, int)"));
        assert!(err("response.status > 'x'").contains("no `>`"));
        assert!(err("response.status == 'x'").contains("always false"));
        assert!(err("frobnicate(1)").contains("unknown function `frobnicate`"));
        assert!(err("request.method.size() + 'x'").contains("no `+`"));
        // Deep nesting is refused at load, not a stack overflow there or at run time.
        let deep = format!("{}true{}", "(".repeat(5000), ")".repeat(5000));
        assert!(!err(&deep).is_empty());
        let chain = format!("request{} == 1", ".a".repeat(5000));
        assert!(
            err(&chain).contains("nested more than 100 levels"),
            "{}",
            err(&chain)
        );
        // The parser folds repeated negations: this one is shallow, and fine.
        let nots = format!("{}true", "!".repeat(5000));
        assert!(compile(&nots).is_ok());
        assert!(
            err(&chain).len() < 400,
            "a long expression is shortened in messages"
        );
        let e = Expr::compile("response.status + 1", &Scope::exchange(false), Want::Bool)
            .expect_err("not a bool");
        assert!(e.contains("must be a bool, this is an int"), "{e}");
        assert!(Expr::compile("item.id", &Scope::exchange(true), Want::Any).is_ok());
        assert!(compile("response.body.lines.all(l, l.q > 0)").is_ok());
        assert!(compile("has(response.body.x) && request.method.lowerAscii() == 'post'").is_ok());
    }

    #[test]
    fn only_what_is_read_is_converted() {
        let e = compile(
            "response.body.status == 'paid' && has(request.body.n) && \
             request.headers['x-tickets'] != '' && response.body.lines.all(l, l.q > 0) && \
             [1].exists(params, params > 0)",
        )
        .expect("valid");
        let mut want = Needs::default();
        for path in [
            &["response", "body", "status"][..],
            &["request", "body", "n"],
            &["request", "headers", "x-tickets"],
            &["response", "body", "lines"],
        ] {
            want.add(&path.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        assert_eq!(
            *e.needs(),
            want,
            "`params` inside the macro is its own variable"
        );
        let d = doc();
        let mut vars = Vars::new();
        for name in ["request", "response", "params"] {
            vars.set_needed(name, &d[name], e.needs());
        }
        assert_eq!(e.eval(&vars), Ok(json!(true)));
        // What is not read is not there.
        let peek = compile("response.body").expect("valid");
        assert_eq!(
            peek.eval(&vars),
            Ok(json!({"lines": [{"q": 1}, {"q": 2}], "status": "paid"}))
        );
    }
}
