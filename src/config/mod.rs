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
mod rule_files;
mod sections;
mod webhooks;

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
use raw::RawConfig;
use rule_files::{find_rule_files, load_rules};
use sections::{compile_admin, compile_delivery, compile_proxy, compile_store};
use webhooks::compile_webhooks;

pub use crate::delivery::DeliveryConfig;
pub use crate::store::{Backend, FlushMode, PgConfig, StoreConfig};

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
    /// How long a client may take to send a request head.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may stay idle between requests.
    pub keepalive_timeout: Duration,
    /// The most client connections open at once; `None`: derived from the open-file limit at
    /// start ([`crate::open_files`]).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token every endpoint but the health checks requires.
    pub token: Option<String>,
    /// How long a client may take to send a request head (and may stay idle between requests).
    pub header_timeout: Duration,
    /// The most connections open at once; more wait to be accepted.
    pub max_connections: usize,
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
    /// Where each line starts, made on first use: counting from the start of the file for
    /// each place made loading quadratic in the number of `[[test]]`s or problems.
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl<'a> Reporter<'a> {
    fn new(file: &'a Path, source: &'a str, problems: &'a mut Vec<Problem>) -> Self {
        Self {
            file,
            source,
            problems,
            line_starts: std::cell::OnceCell::new(),
        }
    }

    /// The 1-based line of byte `offset` and the byte where that line starts.
    fn line_of(&self, offset: usize) -> (usize, usize) {
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(memchr::memchr_iter(b'\n', self.source.as_bytes()).map(|i| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&s| s <= offset);
        (line, starts[line - 1])
    }

    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let start = span.start.min(self.source.len());
        let (line, line_start) = self.line_of(start);
        let col = String::from_utf8_lossy(&self.source.as_bytes()[line_start..start])
            .chars()
            .count()
            + 1;
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
        self.line_of(span.start.min(self.source.len())).0
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

/// A duration that must be more than zero (a zero deadline would refuse everything).
fn positive_duration(
    r: &mut Reporter,
    v: Option<Spanned<String>>,
    key: &str,
    default: Duration,
) -> Duration {
    let span = v.as_ref().map(Spanned::span);
    let d = duration(r, v, key, default);
    match span {
        Some(span) if d.is_zero() => {
            r.at(span, format!("`{key}` must be more than 0s"));
            default
        }
        _ => d,
    }
}

/// Reads a file as UTF-8 text; invalid UTF-8 is reported at its line and column.
/// The largest config or rule file read: far above any real one (a 5 MB rules file loads in a
/// fraction of a second), and what stands between a mistaken path and memory running out.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

fn read_text(path: &Path) -> Result<String, Problem> {
    let problem = |message: String| Problem {
        file: path.to_owned(),
        position: None,
        message,
    };
    // Only regular files: a FIFO would block the read forever, a device such as /dev/zero
    // would never end.
    let meta = std::fs::metadata(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(problem(format!(
            "not a regular file (a {}): config and rule files must be regular files",
            kind_of(&meta.file_type())
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(problem(format!(
            "the file is {} bytes; config and rule files may be at most {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES + 1), &mut bytes)
        })
        .map_err(|e| problem(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(format!(
            "the file grew past {MAX_FILE_BYTES} bytes while it was read"
        )));
    }
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

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    read_text(path).map_err(|p| ConfigError(vec![p]))
}

impl Config {
    /// Loads hooktap.toml and every rule file it names; reports every problem found.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = read(path)?;
        let mut problems = Vec::new();
        let mut r = Reporter::new(path, &source, &mut problems);
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
    fn bad_delivery_settings_are_each_reported_at_their_line() {
        let config = CONFIG.replace(
            "topics = [\"order.*\"]",
            "topics = [\"order.*\"]\nfilter = [{ path = \"$.total\", gt = 1 }, { path = \"total\", exists = true }]\nrate_limit = \"fast\"\nordering_key = \"$.[\"\nheaders = { \"X-Hooktap-Webhook-Id\" = \"mine\" }\ncircuit_cooldown = \"soon\"",
        );
        let problems = load(&config, RULE).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let expected = [
            ("hooktap.toml:15:10: webhook `crm`: filter[1]: JSONPath `total` must start with `$`"),
            ("hooktap.toml:16:14: webhook `crm`: rate_limit `fast` is not a rate"),
            ("hooktap.toml:17:16: webhook `crm`: ordering_key: "),
            ("hooktap.toml:18:11: webhook `crm`: headers: `X-Hooktap-Webhook-Id` is set by hooktap"),
            ("hooktap.toml:19:20: webhook `crm`: circuit_cooldown `soon`"),
        ];
        for want in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{want}: {problems:#?}"
            );
        }
        // A filter entry with an unknown operator is refused with its key named.
        let config = CONFIG.replace(
            "topics = [\"order.*\"]",
            "topics = [\"order.*\"]\nfilter = [{ path = \"$.total\", above = 1 }]",
        );
        let problems = load(&config, RULE).unwrap_err();
        assert!(
            problems.len() == 1
                && problems[0].starts_with("hooktap.toml:15:10: webhook `crm`: filter")
                && problems[0].contains("above"),
            "{problems:#?}"
        );
        let config = CONFIG.replace(
            "topics = [\"order.*\"]",
            "topics = [\"order.*\"]\nordered = true\nordering_key = \"$.id\"",
        );
        let problems = load(&config, RULE).unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].contains("ordering_key cannot be combined"),
            "{problems:#?}"
        );
    }

    #[test]
    fn the_delivery_nice_value_defaults_to_10_and_is_checked() {
        assert_eq!(load(CONFIG, RULE).expect("valid").delivery.nice, 10);
        let config = |nice: &str| CONFIG.replace("[delivery]\n", &format!("[delivery]\n{nice}\n"));
        assert_eq!(
            load(&config("nice = 0"), RULE)
                .expect("valid")
                .delivery
                .nice,
            0
        );
        for bad in ["nice = 20", "nice = -5"] {
            let value = bad.trim_start_matches("nice = ");
            assert_eq!(
                load(&config(bad), RULE).unwrap_err(),
                [format!(
                    "hooktap.toml:8:8: `nice` = {value} must be between 0 and 19 (nice levels below the proxy's priority)"
                )],
                "{bad}"
            );
        }
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

    /// Regression (hostile round two): a rule path with 26 parameters panicked `check`.
    #[test]
    fn a_path_with_too_many_parameters_is_an_error_at_its_line() {
        let path: String = (0..26).map(|i| format!("/{{p{i}}}")).collect();
        let rule = RULE.replace("path = \"/orders\"", &format!("path = \"{path}\""));
        let problems = load(CONFIG, &rule).expect_err("too many parameters");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("rules/shop.toml:5:") && problems[0].contains("at most 25"),
            "{problems:?}"
        );
    }

    /// Loads a config whose `rules` glob is `pattern`, after `setup` shaped `rules/`; returns
    /// the problems, and fails if loading takes more than a few seconds (it used to spin).
    fn load_rules_dir(pattern: &str, setup: impl FnOnce(&Path)) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).expect("mkdir");
        std::fs::write(rules.join("shop.toml"), RULE).expect("write");
        setup(&rules);
        let config = CONFIG.replace("rules/*.toml", pattern);
        std::fs::write(dir.path().join("hooktap.toml"), config).expect("write");
        let file = dir.path().join("hooktap.toml");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Config::load(&file).err().map(|e| e.to_string()));
        });
        let outcome = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("loading finishes");
        let dir_text = dir.path().display().to_string();
        outcome
            .map(|e| {
                e.replace(&dir_text, "")
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Regression (hostile round two): two links to `.` made `rules/**/*.toml` spin forever.
    #[test]
    fn a_symlink_loop_among_rule_files_is_an_error() {
        let problems = load_rules_dir("rules/**/*.toml", |rules| {
            std::os::unix::fs::symlink(".", rules.join("a")).expect("link");
            std::os::unix::fs::symlink(".", rules.join("b")).expect("link");
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("symbolic link loop") && problems[0].contains("hooktap.toml:1:"),
            "{problems:?}"
        );
    }

    /// Regression (found reading the loader while setting up fuzzing): every `[[test]]` with an
    /// `expect.topic` kept its own copy of its rule file's text until all files were loaded, so
    /// memory grew with tests × file size (these 20,000 tests in a 2.5 MB file asked for 50 GB),
    /// and each test's line, and each problem's, was counted from the start of the file, so
    /// time grew with tests × file size too (70 s for this test in a debug build).
    #[test]
    fn many_tests_load_in_time_and_memory_linear_in_the_file() {
        let test = "[[test]]\nname = \"t\"\nrequest = { method = \"POST\", path = \"/orders\" }\n\
                    response = { status = 201 }\nexpect = { topic = \"order.created\" }\n";
        let rules = format!("{RULE}{}", test.repeat(20_000));
        assert!(rules.len() > 2_000_000);
        let started = std::time::Instant::now();
        let c = load(CONFIG, &rules).expect("valid");
        assert_eq!(c.tests.len(), 20_000);
        assert_eq!(c.tests[19_999].location.rsplit(':').next(), Some("100003"));
        // Every test expecting a topic no rule produces: 20,000 problems, each at its place.
        let problems = load(
            CONFIG,
            &rules.replace("\"order.created\" }", "\"order.gone\" }"),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 20_000);
        assert_eq!(
            problems[19_999],
            "rules/shop.toml:100006:20: test expects topic `order.gone`, which no rule produces"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    /// Regression (hostile round two): a FIFO named x.toml hung loading, and a rule file linked
    /// to /dev/zero was read until memory ran out.
    #[test]
    fn only_regular_files_are_read() {
        let problems = load_rules_dir("rules/*.toml", |rules| {
            let fifo = std::process::Command::new("mkfifo")
                .arg(rules.join("x.toml"))
                .status()
                .expect("mkfifo");
            assert!(fifo.success());
            std::os::unix::fs::symlink("/dev/zero", rules.join("zero.toml")).expect("link");
        });
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("x.toml: not a regular file (a FIFO)")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("zero.toml: not a regular file (a device)")),
            "{problems:?}"
        );
    }

    #[test]
    fn globs_match_within_and_below_directories() {
        let problems = load_rules_dir("rules/**/*.toml", |rules| {
            std::fs::create_dir_all(rules.join("a/b")).expect("mkdir");
            std::fs::write(
                rules.join("a/b/deep.toml"),
                RULE.replace("order created", "deep"),
            )
            .expect("write");
        });
        assert!(problems.is_empty(), "{problems:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("rules/sub")).expect("mkdir");
        std::fs::write(dir.path().join("rules/top.toml"), RULE).expect("write");
        std::fs::write(
            dir.path().join("rules/sub/below.toml"),
            RULE.replace("order created", "below"),
        )
        .expect("write");
        std::fs::write(dir.path().join("hooktap.toml"), CONFIG).expect("write");
        let config = Config::load(&dir.path().join("hooktap.toml")).expect("loads");
        assert_eq!(
            config.rule_files,
            vec![dir.path().join("rules/top.toml")],
            "`*` does not cross directories"
        );
    }
}
