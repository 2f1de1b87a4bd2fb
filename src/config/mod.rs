//! hooktap.toml and the rule files it names: loading, validation, and errors that say where.
//!
//! Loading parses the raw files ([`raw`]), then compiles them into a [`Config`] whose parts are
//! all checked: the running code never sees an unvalidated value. Every problem found is kept
//! (not only the first) and reported as `file:line:column: message`.

pub mod raw;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::delivery::ssrf::Guard;
use crate::rules::test::RuleTest;
use crate::rules::{RuleSet, SpanError};
use crate::webhook::{Defaults, FieldError, WebhookInput, WebhookSpec};
use raw::{RawConfig, RawRuleFile, RawWebhook};

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
        let raw: RawConfig = match toml::from_str(&source) {
            Ok(raw) => raw,
            Err(e) => {
                r.toml_error(e);
                return Err(ConfigError(problems));
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));

        let proxy = compile_proxy(&mut r, raw.proxy, base);
        let admin = compile_admin(&mut r, raw.admin);
        let store = StoreConfig {
            path: base.join(
                raw.store
                    .path
                    .map_or_else(|| "data/hooktap".to_owned(), Spanned::into_inner),
            ),
            flush: match raw.store.flush {
                None => FlushMode::Interval(duration(
                    &mut r,
                    raw.store.flush_interval,
                    "flush_interval",
                    Duration::from_millis(500),
                )),
                Some(f) if f.get_ref() == "interval" => FlushMode::Interval(duration(
                    &mut r,
                    raw.store.flush_interval,
                    "flush_interval",
                    Duration::from_millis(500),
                )),
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
            },
            retention: duration(
                &mut r,
                raw.store.retention,
                "retention",
                Duration::from_secs(30 * 24 * 3600),
            ),
            min_free_space: match raw.store.min_free_space {
                None => 64 * 1024 * 1024,
                Some(s) => s
                    .get_ref()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| b.as_u64())
                    .unwrap_or_else(|e| {
                        r.at(
                            s.span(),
                            format!(
                                "`min_free_space` = \"{}\" is not a size such as 64MiB: {e}",
                                s.get_ref()
                            ),
                        );
                        0
                    }),
            },
        };
        let mut allow = Vec::new();
        for n in &raw.delivery.allow_networks {
            match Guard::new(std::slice::from_ref(n.get_ref())) {
                Ok(_) => allow.push(n.get_ref().clone()),
                Err(m) => r.at(n.span(), format!("allow_networks: {m}")),
            }
        }
        // Every entry was checked one by one above, so this only fails if one was rejected.
        let guard = Guard::new(&allow).unwrap_or_default();
        let delivery = DeliveryConfig {
            source: raw
                .delivery
                .source
                .map_or_else(|| format!("http://{}/", proxy.listen), Spanned::into_inner),
            timeout: duration(
                &mut r,
                raw.delivery.timeout,
                "timeout",
                Duration::from_secs(10),
            ),
            concurrency: positive(&mut r, raw.delivery.concurrency, "concurrency", 64),
            https_only: raw.delivery.https_only,
            guard,
            secret_rotation_grace: duration(
                &mut r,
                raw.delivery.secret_rotation_grace,
                "secret_rotation_grace",
                Duration::from_secs(24 * 3600),
            ),
        };
        let mut webhooks: Vec<WebhookSpec> = Vec::new();
        for w in raw.webhook {
            let name_span = w.name.span();
            if let Some(w) = compile_webhook(&mut r, w, &delivery) {
                if webhooks.iter().any(|o| o.name == w.name) {
                    r.at(name_span, format!("duplicate webhook name `{}`", w.name));
                } else {
                    webhooks.push(w);
                }
            }
        }

        let mut rule_files = Vec::new();
        for pattern in &raw.rules {
            let full = base.join(pattern.get_ref());
            let full = full.to_string_lossy();
            match glob::glob(&full) {
                Err(e) => r.at(
                    pattern.span(),
                    format!("invalid glob `{}`: {e}", pattern.get_ref()),
                ),
                Ok(paths) => {
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
            }
        }

        let mut rules = RuleSet::default();
        let mut tests = Vec::new();
        let mut test_topics = Vec::new();
        let mut rules_failed = false;
        for file in &rule_files {
            let text = match read_text(file) {
                Ok(t) => t,
                Err(p) => {
                    problems.push(p);
                    continue;
                }
            };
            let mut fr = Reporter {
                file,
                source: &text,
                problems: &mut problems,
            };
            let raw: RawRuleFile = match toml::from_str(&text) {
                Ok(raw) => raw,
                Err(e) => {
                    fr.toml_error(e);
                    continue;
                }
            };
            for rule in raw.rule {
                if let Err(errors) = rules.add(rule) {
                    rules_failed = true;
                    for SpanError { span, message } in errors {
                        fr.at(span, message);
                    }
                }
            }
            for test in raw.test {
                let span = test.name.span();
                let topic = test.expect.get_ref().topic.clone();
                let location = {
                    let start = span.start.min(text.len());
                    format!(
                        "{}:{}",
                        file.display(),
                        text[..start].matches('\n').count() + 1
                    )
                };
                match RuleTest::compile(test, location) {
                    Ok(t) => tests.push(t),
                    Err(SpanError { span, message }) => fr.at(span, message),
                }
                if let Some(topic) = topic {
                    test_topics.push((file.clone(), text.clone(), topic));
                }
            }
        }
        // A rule that failed to compile has no topic; do not report its tests a second time.
        for (file, text, topic) in test_topics.into_iter().filter(|_| !rules_failed) {
            if !rules
                .rules()
                .iter()
                .any(|rule| rule.topic.as_str() == topic.get_ref())
            {
                Reporter {
                    file: &file,
                    source: &text,
                    problems: &mut problems,
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
        (None, Some(var)) => from_env(r, &var, ""),
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

/// A secret from the environment variable named by `var`; an unset or empty one is an error
/// (prefixed with `context`) at the place the variable is named.
fn from_env(r: &mut Reporter, var: &Spanned<String>, context: &str) -> Option<String> {
    match std::env::var(var.get_ref()) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            r.at(
                var.span(),
                format!(
                    "{context}environment variable `{}` is not set or empty",
                    var.get_ref()
                ),
            );
            None
        }
    }
}

/// Unwraps a spanned value, remembering where `field` was written.
fn take<T>(
    spans: &mut Vec<(&'static str, Range<usize>)>,
    field: &'static str,
    v: Option<Spanned<T>>,
) -> Option<T> {
    v.map(|s| {
        spans.push((field, s.span()));
        s.into_inner()
    })
}

fn compile_webhook(
    r: &mut Reporter,
    w: RawWebhook,
    delivery: &DeliveryConfig,
) -> Option<WebhookSpec> {
    let name = w.name.get_ref().trim().to_owned();
    let name_span = w.name.span();
    let mut spans = vec![("name", name_span.clone())];
    // The secret comes from the file or from the environment; the rest is checked by
    // `WebhookInput::apply`, exactly as the admin API checks it.
    let secret = match (w.secret, w.secret_env) {
        (Some(s), None) => take(&mut spans, "secret", Some(s)),
        (None, Some(var)) => Some(from_env(r, &var, &format!("webhook `{name}`: "))?),
        (Some(s), Some(_)) => {
            r.at(
                s.span(),
                format!("webhook `{name}`: set either `secret` or `secret_env`, not both"),
            );
            return None;
        }
        (None, None) => None,
    };
    let input = WebhookInput {
        name: Some(w.name.into_inner()),
        url: take(&mut spans, "url", w.url),
        secret,
        topics: take(&mut spans, "topics", w.topics),
        status: take(&mut spans, "status", w.status),
        retry: take(&mut spans, "retry", w.retry),
        failure_threshold: take(&mut spans, "failure_threshold", w.failure_threshold),
        timeout: take(&mut spans, "timeout", w.timeout),
        signature: take(&mut spans, "signature", w.signature),
        header_prefix: take(&mut spans, "header_prefix", w.header_prefix),
        mode: take(&mut spans, "mode", w.mode),
        batch_interval: take(&mut spans, "batch_interval", w.batch_interval),
        batch_max: take(&mut spans, "batch_max", w.batch_max),
        batch_order: take(&mut spans, "batch_order", w.batch_order),
        ordered: take(&mut spans, "ordered", w.ordered),
        concurrency: take(&mut spans, "concurrency", w.concurrency),
    };
    let defaults = Defaults {
        https_only: delivery.https_only,
        guard: &delivery.guard,
        timeout: delivery.timeout,
    };
    input
        .apply(None, &defaults)
        .map_err(|errors| {
            for FieldError { field, message } in errors {
                let span = spans
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map_or(name_span.clone(), |(_, s)| s.clone());
                r.at(span, format!("webhook `{name}`: {message}"));
            }
        })
        .ok()
}
