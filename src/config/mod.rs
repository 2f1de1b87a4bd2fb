//! hooktap.toml and the rule files it names: loading, validation, and errors that say where.
//!
//! `config` depends on the components it configures ([`crate::rules`] for rule files and their
//! raw types, [`crate::webhook`] for webhook tables, [`crate::ssrf`] for the guard), never the
//! other way round for raw types: it only reads files and assembles the parts.
//!
//! Loading parses the raw files ([`raw`]), then compiles them into a [`Config`] whose parts are
//! all checked: the running code never sees an unvalidated value. Every problem found is kept
//! (not only the first) and reported as `file:line:column: message`.

mod fields;
pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::rules::raw::RawRuleFile;
use crate::rules::test::RuleTest;
use crate::rules::{RuleSet, SpanError};
use crate::ssrf::Guard;
use crate::webhook::{Defaults, FieldError, WebhookInput, WebhookSpec};
use fields::ValueError;
use raw::{RawConfig, RawWebhook};

pub use crate::store::{FlushMode, StoreConfig};

/// One problem in one file, with its place when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Everything wrong with a configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `host:port` of the host application.
    pub upstream: String,
    pub upstream_tls: bool,
    pub upstream_sni: String,
    pub max_capture_bytes: usize,
    pub max_decoded_bytes: usize,
    pub threads: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    /// Terminate TLS on the listener with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Add X-Forwarded-For/-Proto/-Host for the app.
    pub forwarded_headers: bool,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token every endpoint but the health checks requires.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub source: String,
    /// Default per-request timeout of webhooks that set none.
    pub timeout: Duration,
    /// Deliveries in flight at once, over all webhooks.
    pub concurrency: usize,
    /// Reject plain http:// webhook URLs.
    pub https_only: bool,
    /// Which destination addresses deliveries may reach.
    pub guard: Guard,
    /// How long a replaced webhook secret keeps being used for a second signature.
    pub secret_rotation_grace: Duration,
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub file: PathBuf,
    pub proxy: ProxyConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub admin: AdminConfig,
    pub webhooks: Vec<WebhookSpec>,
    pub rules: RuleSet,
    pub tests: Vec<RuleTest>,
    pub rule_files: Vec<PathBuf>,
}

/// Collects problems for one file and turns byte spans into line and column.
struct Reporter<'a> {
    file: &'a Path,
    source: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Reporter<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let start = span.start.min(self.source.len());
        let before = &self.source[..start];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.problems.push(Problem {
            file: self.file.to_owned(),
            position: Some((line, col)),
            message: message.into(),
        });
    }

    fn whole(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            position: None,
            message: message.into(),
        });
    }

    /// The 1-based line `span` starts on.
    fn line(&self, span: Range<usize>) -> usize {
        let start = span.start.min(self.source.len());
        self.source[..start].matches('\n').count() + 1
    }

    fn toml_error(&mut self, e: toml::de::Error) {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => self.at(span, message),
            None => self.whole(message),
        }
    }
}

fn duration(
    r: &mut Reporter,
    v: Option<Spanned<String>>,
    key: &str,
    default: Duration,
) -> Duration {
    match v {
        None => default,
        Some(s) => humantime::parse_duration(s.get_ref()).unwrap_or_else(|e| {
            r.at(
                s.span(),
                format!(
                    "`{key}` = \"{}\" is not a duration such as 500ms, 5s or 1m: {e}",
                    s.get_ref()
                ),
            );
            default
        }),
    }
}

/// Reads a file as UTF-8 text; invalid UTF-8 is reported at its line and column.
fn read_text(path: &Path) -> Result<String, Problem> {
    let bytes = std::fs::read(path).map_err(|e| Problem {
        file: path.to_owned(),
        position: None,
        message: format!("cannot read: {e}"),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let col = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Problem {
            file: path.to_owned(),
            position: Some((line, col)),
            message: "the file is not valid UTF-8 text".to_owned(),
        }
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    read_text(path).map_err(|p| ConfigError(vec![p]))
}

impl Config {
    /// Loads hooktap.toml and every rule file it names; reports every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = read(path)?;
        let mut problems = Vec::new();
        let mut r = Reporter {
            file: path,
            source: &source,
            problems: &mut problems,
        };
        let Some(raw) = parse::<RawConfig>(&mut r) else {
            return Err(ConfigError(problems));
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let proxy = compile_proxy(&mut r, raw.proxy, base);
        let admin = compile_admin(&mut r, raw.admin);
        let store = compile_store(&mut r, raw.store, base);
        let delivery = compile_delivery(&mut r, raw.delivery, &proxy);
        let webhooks = compile_webhooks(&mut r, raw.webhook, &delivery);
        let rule_files = find_rule_files(&mut r, &raw.rules, base);
        let (rules, tests) = load_rules(&rule_files, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self {
            file: path.to_owned(),
            proxy,
            store,
            delivery,
            admin,
            webhooks,
            rules,
            tests,
            rule_files,
        })
    }
}

/// Deserializes the reporter's file; a TOML or shape error is reported at its place.
fn parse<T: serde::de::DeserializeOwned>(r: &mut Reporter) -> Option<T> {
    toml::from_str(r.source).map_err(|e| r.toml_error(e)).ok()
}

fn compile_store(r: &mut Reporter, s: raw::RawStore, base: &Path) -> StoreConfig {
    let flush_interval = |r: &mut Reporter| {
        duration(
            r,
            s.flush_interval.clone(),
            "flush_interval",
            Duration::from_millis(500),
        )
    };
    let flush = match s.flush {
        None => FlushMode::Interval(flush_interval(r)),
        Some(f) if f.get_ref() == "interval" => FlushMode::Interval(flush_interval(r)),
        Some(f) if f.get_ref() == "every-event" => FlushMode::EveryEvent,
        Some(f) => {
            r.at(
                f.span(),
                format!(
                    "`flush` = \"{}\" must be \"interval\" or \"every-event\"",
                    f.get_ref()
                ),
            );
            FlushMode::EveryEvent
        }
    };
    let min_free_space = match s.min_free_space {
        None => 64 * 1024 * 1024,
        Some(v) => v
            .get_ref()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .unwrap_or_else(|e| {
                r.at(
                    v.span(),
                    format!(
                        "`min_free_space` = \"{}\" is not a size such as 64MiB: {e}",
                        v.get_ref()
                    ),
                );
                0
            }),
    };
    StoreConfig {
        path: base.join(
            s.path
                .map_or_else(|| "data/hooktap".to_owned(), Spanned::into_inner),
        ),
        flush,
        retention: duration(
            r,
            s.retention,
            "retention",
            Duration::from_secs(30 * 24 * 3600),
        ),
        min_free_space,
    }
}

fn compile_delivery(r: &mut Reporter, d: raw::RawDelivery, proxy: &ProxyConfig) -> DeliveryConfig {
    let mut allow = Vec::new();
    for n in &d.allow_networks {
        match Guard::new(std::slice::from_ref(n.get_ref())) {
            Ok(_) => allow.push(n.get_ref().clone()),
            Err(e) => r.at(n.span(), format!("allow_networks: {e}")),
        }
    }
    // Every entry was checked one by one above, so this only fails if one was rejected.
    let guard = Guard::new(&allow).unwrap_or_default();
    DeliveryConfig {
        source: d
            .source
            .map_or_else(|| format!("http://{}/", proxy.listen), Spanned::into_inner),
        timeout: duration(r, d.timeout, "timeout", Duration::from_secs(10)),
        concurrency: positive(r, d.concurrency, "concurrency", 64),
        https_only: d.https_only,
        guard,
        secret_rotation_grace: duration(
            r,
            d.secret_rotation_grace,
            "secret_rotation_grace",
            Duration::from_secs(24 * 3600),
        ),
    }
}

/// The rule files the `rules` globs name (relative to the config file), each once.
fn find_rule_files(r: &mut Reporter, patterns: &[Spanned<String>], base: &Path) -> Vec<PathBuf> {
    let mut rule_files = Vec::new();
    for pattern in patterns {
        let full = base.join(pattern.get_ref());
        let paths = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => paths,
            Err(e) => {
                r.at(
                    pattern.span(),
                    format!("invalid glob `{}`: {e}", pattern.get_ref()),
                );
                continue;
            }
        };
        let before = rule_files.len();
        for p in paths {
            match p {
                Ok(p) if !rule_files.contains(&p) => rule_files.push(p),
                Ok(_) => {}
                Err(e) => r.at(
                    pattern.span(),
                    format!("cannot read {}: {e}", e.path().display()),
                ),
            }
        }
        if rule_files.len() == before {
            r.at(
                pattern.span(),
                format!("`{}` matches no rule file", pattern.get_ref()),
            );
        }
    }
    rule_files
}

/// A test's expected topic, kept until every rule file is loaded (a test may expect a topic
/// of another file's rule).
struct ExpectedTopic {
    file: PathBuf,
    text: String,
    topic: Spanned<String>,
}

/// Compiles the rules and tests of every rule file into one rule set.
fn load_rules(files: &[PathBuf], problems: &mut Vec<Problem>) -> (RuleSet, Vec<RuleTest>) {
    let mut rules = RuleSet::default();
    let mut tests = Vec::new();
    let mut expected = Vec::new();
    let mut rules_failed = false;
    for file in files {
        let text = match read_text(file) {
            Ok(t) => t,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let mut r = Reporter {
            file,
            source: &text,
            problems: &mut *problems,
        };
        let Some(raw) = parse::<RawRuleFile>(&mut r) else {
            continue;
        };
        for rule in raw.rule {
            if let Err(errors) = rules.add(rule) {
                rules_failed = true;
                for SpanError { span, message } in errors {
                    r.at(span, message);
                }
            }
        }
        for test in raw.test {
            let topic = test.expect.get_ref().topic.clone();
            let location = format!("{}:{}", file.display(), r.line(test.name.span()));
            match RuleTest::compile(test, location) {
                Ok(t) => tests.push(t),
                Err(SpanError { span, message }) => r.at(span, message),
            }
            if let Some(topic) = topic {
                expected.push(ExpectedTopic {
                    file: file.clone(),
                    text: text.clone(),
                    topic,
                });
            }
        }
    }
    // A rule that failed to compile has no topic; do not report its tests a second time.
    if !rules_failed {
        check_expected_topics(&rules, expected, problems);
    }
    (rules, tests)
}

fn check_expected_topics(
    rules: &RuleSet,
    expected: Vec<ExpectedTopic>,
    problems: &mut Vec<Problem>,
) {
    for ExpectedTopic { file, text, topic } in expected {
        let produced = rules
            .rules()
            .iter()
            .any(|rule| rule.topic.as_str() == topic.get_ref());
        if !produced {
            Reporter {
                file: &file,
                source: &text,
                problems: &mut *problems,
            }
            .at(
                topic.span(),
                format!(
                    "test expects topic `{}`, which no rule produces",
                    topic.get_ref()
                ),
            );
        }
    }
}

fn positive(r: &mut Reporter, v: Option<Spanned<usize>>, key: &str, default: usize) -> usize {
    match v {
        None => default,
        Some(n) if *n.get_ref() > 0 => n.into_inner(),
        Some(n) => {
            r.at(n.span(), format!("`{key}` must be at least 1"));
            default
        }
    }
}

fn compile_admin(r: &mut Reporter, a: raw::RawAdmin) -> AdminConfig {
    let default = SocketAddr::from(([127, 0, 0, 1], 9090));
    let listen = match &a.listen {
        None => default,
        Some(l) => l.get_ref().parse().unwrap_or_else(|e| {
            r.at(
                l.span(),
                format!(
                    "`listen` = \"{}\" is not an address such as 127.0.0.1:9090: {e}",
                    l.get_ref()
                ),
            );
            default
        }),
    };
    let token = match (a.token, a.token_env) {
        (Some(t), None) if !t.get_ref().is_empty() => Some(t.into_inner()),
        (Some(t), None) => {
            r.at(t.span(), "`token` must not be empty");
            None
        }
        (None, Some(var)) => from_env(r, var.get_ref(), var.span(), ""),
        (Some(t), Some(_)) => {
            r.at(t.span(), "set either `token` or `token_env`, not both");
            None
        }
        (None, None) => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        let span = a.listen.as_ref().map_or(0..0, Spanned::span);
        r.at(
            span,
            format!("the admin API on {listen} needs `token` or `token_env`: without a token it may only listen on loopback"),
        );
    }
    AdminConfig { listen, token }
}

fn compile_proxy(r: &mut Reporter, p: raw::RawProxy, base: &Path) -> ProxyConfig {
    let listen = p.listen.get_ref().parse().unwrap_or_else(|e| {
        r.at(
            p.listen.span(),
            format!(
                "`listen` = \"{}\" is not an address such as 127.0.0.1:8080: {e}",
                p.listen.get_ref()
            ),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let upstream = p.upstream.get_ref().clone();
    let upstream_host = match upstream.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            host.trim_matches(['[', ']']).to_owned()
        }
        _ => {
            r.at(
                p.upstream.span(),
                format!("`upstream` = \"{upstream}\" must be host:port, such as 127.0.0.1:8000"),
            );
            String::new()
        }
    };
    let bytes = |r: &mut Reporter, v: Option<Spanned<u64>>, key: &str, default: usize| match v {
        None => default,
        Some(n) => usize::try_from(*n.get_ref()).unwrap_or_else(|_| {
            r.at(n.span(), format!("`{key}` is too large"));
            default
        }),
    };
    let max_capture_bytes = bytes(r, p.max_capture_bytes, "max_capture_bytes", 1 << 20);
    let tls = match (p.tls_cert, p.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let mut file = |s: &Spanned<String>, what: &str| {
                let path = base.join(s.get_ref());
                if let Err(e) = std::fs::metadata(&path) {
                    r.at(s.span(), format!("{what} `{}`: {e}", path.display()));
                }
                path
            };
            Some((file(&cert, "tls_cert"), file(&key, "tls_key")))
        }
        (Some(s), None) | (None, Some(s)) => {
            r.at(
                s.span(),
                "`tls_cert` and `tls_key` go together: set both or neither",
            );
            None
        }
    };
    ProxyConfig {
        listen,
        upstream,
        upstream_tls: p.upstream_tls,
        upstream_sni: p.upstream_sni.unwrap_or(upstream_host),
        max_capture_bytes,
        max_decoded_bytes: bytes(
            r,
            p.max_decoded_bytes,
            "max_decoded_bytes",
            max_capture_bytes.saturating_mul(8),
        ),
        threads: positive(
            r,
            p.threads,
            "threads",
            std::thread::available_parallelism().map_or(1, usize::from),
        ),
        grace_period: duration(r, p.grace_period, "grace_period", Duration::from_secs(1)),
        shutdown_timeout: duration(
            r,
            p.shutdown_timeout,
            "shutdown_timeout",
            Duration::from_secs(3),
        ),
        tls,
        forwarded_headers: p.forwarded_headers.unwrap_or(true),
    }
}

/// A secret from the environment variable `var` (named at `span`); an unset or empty one is an
/// error (prefixed with `context`) at that place.
fn from_env(r: &mut Reporter, var: &str, span: Range<usize>, context: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            r.at(
                span,
                format!("{context}environment variable `{var}` is not set or empty"),
            );
            None
        }
    }
}

/// The `[[webhook]]` tables, each checked as the admin API checks a body; names are unique.
fn compile_webhooks(
    r: &mut Reporter,
    tables: Vec<Spanned<RawWebhook>>,
    delivery: &DeliveryConfig,
) -> Vec<WebhookSpec> {
    let defaults = Defaults {
        https_only: delivery.https_only,
        guard: &delivery.guard,
        timeout: delivery.timeout,
    };
    let mut webhooks: Vec<WebhookSpec> = Vec::new();
    for table in tables {
        let Some((w, name_span)) = compile_webhook(r, table, &defaults) else {
            continue;
        };
        if webhooks.iter().any(|o| o.name == w.name) {
            r.at(name_span, format!("duplicate webhook name `{}`", w.name));
        } else {
            webhooks.push(w);
        }
    }
    webhooks
}

/// The keys a `[[webhook]]` table has beyond [`WebhookInput`]'s.
const FILE_ONLY_KEYS: &[&str] = &["secret_env"];

/// A `[[webhook]]` table read key by key: the accepted keys as a [`WebhookInput`] with where
/// each was written, the keys rejected (already reported), and `secret_env`.
struct WebhookTable {
    input: WebhookInput,
    spans: Vec<(String, Range<usize>)>,
    rejected: Vec<String>,
    secret_env: Option<(String, Range<usize>)>,
}

/// Deserializes each key into [`WebhookInput`] on its own, so that every bad value is
/// reported at its line (`shown` names the webhook in messages).
fn read_webhook_table(
    r: &mut Reporter,
    shown: &str,
    entries: Vec<(Spanned<String>, Spanned<toml::Value>)>,
) -> Result<WebhookTable, ValueError> {
    let mut good = toml::Table::new();
    let mut spans = Vec::new();
    let mut rejected = Vec::new();
    let mut secret_env = None;
    for (key, value) in entries {
        let (key_span, key) = (key.span(), key.into_inner());
        let (value_span, value) = (value.span(), value.into_inner());
        if key == "secret_env" {
            match value {
                toml::Value::String(var) => secret_env = Some((var, value_span)),
                _ => r.at(
                    value_span,
                    format!("webhook `{shown}`: secret_env must be a string"),
                ),
            }
            continue;
        }
        match fields::from_entry::<WebhookInput>(&key, &value) {
            Ok(_) => {
                spans.push((key.clone(), value_span));
                good.insert(key, value);
            }
            Err(e) => {
                let e = e.also_accepting(FILE_ONLY_KEYS);
                let span = match e {
                    ValueError::UnknownField { .. } => key_span,
                    _ => value_span,
                };
                r.at(span, format!("webhook `{shown}`: {}", e.about(&key)));
                rejected.push(key);
            }
        }
    }
    Ok(WebhookTable {
        input: fields::from_table(good)?,
        spans,
        rejected,
        secret_env,
    })
}

/// One `[[webhook]]` table, read key by key, then checked whole by `WebhookInput::apply` as
/// the admin API checks a body. Returns the spec and where its name is written.
fn compile_webhook(
    r: &mut Reporter,
    table: Spanned<RawWebhook>,
    defaults: &Defaults<'_>,
) -> Option<(WebhookSpec, Range<usize>)> {
    let table_span = table.span();
    let entries = table.into_inner().entries;
    let Some((_, name)) = entries.iter().find(|(k, _)| k.get_ref() == "name") else {
        r.at(table_span, "missing field `name`");
        return None;
    };
    let name_span = name.span();
    let shown = match name.get_ref() {
        toml::Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    let mut t = read_webhook_table(r, &shown, entries)
        .map_err(|e| r.at(table_span, format!("webhook `{shown}`: {e}")))
        .ok()?;
    // The secret comes from the file or from the environment.
    if let Some((var, span)) = t.secret_env.take() {
        if let Some((_, secret_span)) = t.spans.iter().find(|(k, _)| k == "secret") {
            r.at(
                secret_span.clone(),
                format!("webhook `{shown}`: set either `secret` or `secret_env`, not both"),
            );
            return None;
        }
        t.input.secret = Some(from_env(r, &var, span, &format!("webhook `{shown}`: "))?);
    }
    let spec = t.input.apply(None, defaults).map_err(|errors| {
        // A field whose value was rejected above is not reported a second time.
        for FieldError { field, message } in errors {
            if t.rejected.iter().any(|k| k == field) {
                continue;
            }
            let span = t
                .spans
                .iter()
                .find(|(k, _)| k == field)
                .map_or(name_span.clone(), |(_, s)| s.clone());
            r.at(span, format!("webhook `{shown}`: {message}"));
        }
    });
    let spec = spec.ok()?;
    t.rejected.is_empty().then_some((spec, name_span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"rules = ["rules/*.toml"]

[proxy]
listen = "127.0.0.1:18080"
upstream = "127.0.0.1:18000"

[delivery]
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://127.0.0.1:9000/hooks"
secret = "s"
topics = ["order.*"]
"#;

    const RULE: &str = r#"[[rule]]
name = "order created"
topic = "order.created"
method = "POST"
path = "/orders"
status = [201]
"#;

    /// Loads `config` with one rule file; the problems as `file:line:col: message` lines, with
    /// the temporary directory left out.
    fn load(config: &str, rule: &str) -> Result<Config, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
        std::fs::write(dir.path().join("hooktap.toml"), config).expect("write");
        std::fs::write(dir.path().join("rules/shop.toml"), rule).expect("write");
        Config::load(&dir.path().join("hooktap.toml")).map_err(|e| {
            e.0.iter()
                .map(|p| {
                    let file = p.file.strip_prefix(dir.path()).unwrap_or(&p.file);
                    Problem {
                        file: file.to_owned(),
                        ..p.clone()
                    }
                    .to_string()
                })
                .collect()
        })
    }

    #[test]
    fn a_valid_config_loads() {
        let c = load(CONFIG, RULE).expect("valid");
        assert_eq!(c.webhooks.len(), 1);
        assert_eq!(c.webhooks[0].name, "crm");
        assert_eq!(c.rules.rules().len(), 1);
    }

    #[test]
    fn bad_enum_values_in_a_webhook_table_are_each_reported_at_their_line() {
        let config = CONFIG.replace(
            "topics = [\"order.*\"]",
            "topics = [\"order.*\"]\nsignature = \"hmac\"\nstatus = \"on\"\nmode = \"batch\"\nbatch_order = \"random\"",
        );
        let problems = load(&config, RULE).unwrap_err();
        assert_eq!(
            problems,
            [
                "hooktap.toml:15:13: webhook `crm`: signature `hmac` must be \"hooktap\", \"standard\" or \"mautic\"",
                "hooktap.toml:16:10: webhook `crm`: status `on` must be \"active\", \"paused\" or \"disabled\"",
                "hooktap.toml:18:15: webhook `crm`: batch_order `random` must be \"chronological\" or \"reverse\"",
            ]
        );
    }

    #[test]
    fn webhook_values_of_the_wrong_type_or_unknown_keys_are_reported_at_their_place() {
        let config = CONFIG.replace(
            "topics = [\"order.*\"]",
            "topics = \"order.*\"\ncolour = \"red\"\nsecret_env = \"HOOKTAP_TEST_UNSET_VARIABLE\"",
        );
        let problems = load(&config, RULE).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0]
                .starts_with("hooktap.toml:14:10: webhook `crm`: topics: invalid type: string"),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("hooktap.toml:15:1: webhook `crm`: unknown field `colour`")
                && problems[1].ends_with("or `secret_env`"),
            "{problems:#?}"
        );
        assert_eq!(
            problems[2],
            "hooktap.toml:13:10: webhook `crm`: set either `secret` or `secret_env`, not both"
        );
    }

    #[test]
    fn webhook_checks_name_the_field_line() {
        let config = CONFIG.replace("secret = \"s\"\n", "retry = \"5s,soon\"\nconcurrency = 0\n");
        let problems = load(&config, RULE).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert_eq!(
            problems[0],
            "hooktap.toml:11:8: webhook `crm`: secret is required"
        );
        assert!(problems[1].starts_with("hooktap.toml:13:9: webhook `crm`: retry delay `soon`"));
        assert_eq!(
            problems[2],
            "hooktap.toml:14:15: webhook `crm`: concurrency must be at least 1"
        );
        let config = format!("{CONFIG}\n[[webhook]]\nurl = \"http://127.0.0.1:9000/\"\n");
        let problems = load(&config, RULE).unwrap_err();
        assert_eq!(problems, ["hooktap.toml:16:1: missing field `name`"]);
    }

    #[test]
    fn bad_values_in_a_rule_file_are_reported_at_their_line() {
        let problems = load(CONFIG, &RULE.replace("[201]", "[\"6xx\"]")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("rules/shop.toml:6:10: status `6xx` must be"),
            "{problems:#?}"
        );
        let problems = load(CONFIG, &RULE.replace("[201]", "[true]")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("rules/shop.toml:6:"),
            "{problems:#?}"
        );
        let problems = load(CONFIG, &format!("{RULE}colour = \"red\"\n")).unwrap_err();
        assert!(
            problems[0].starts_with("rules/shop.toml:7:1: unknown field `colour`"),
            "{problems:#?}"
        );
    }
}
