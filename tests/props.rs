//! Property tests for the code that reads untrusted or operator-written input: the rule and
//! config parser, the path router, body decoding and payload extraction, and `hooktap learn`
//! over arbitrary recorded traffic.
//!
//! They run on every test run, as an ordinary test binary; coverage-guided fuzzing of the same
//! surfaces (cargo-fuzz, `scripts/fuzz.sh`, targets in `fuzz/`) runs by hand, outside the test
//! command. Each property runs a moderate number of cases so that the whole file takes seconds;
//! run it longer with
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test props
//! ```
//!
//! proptest saves every failing input it finds (shrunk) to `tests/props.proptest-regressions`
//! (commit that file) and replays those first on every run; inputs worth checking on every run
//! are also pinned as plain `#[test]`s in [`edge_inputs`].

use std::collections::BTreeSet;
use std::io::Write;

use hooktap::capture::{
    Exchange, RequestParts, ResponseParts, SkipReason, decode_body, parse_json_reading,
};
use hooktap::config::Config;
use hooktap::rules::RuleSet;
use hooktap::rules::raw::RawRuleFile;
use hooktap::rules::reads::Reads;
use hooktap::rules::router::{Candidates, Router};
use hooktap::rules::selector::Selector;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};

/// `cases` unless `PROPTEST_CASES` asks for another number.
fn cases(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------------------------------
// Generators
// ------------------------------------------------------------------------------------------

/// A TOML basic string holding `s` (escaped as TOML needs).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text that is sometimes what a field expects and often nearly so.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,8}",
        "[a-z]{1,6}\\.[a-z_*-]{1,6}",
        "/[a-z{}*/_0-9]{0,16}",
        "\\$[.\\[\\]a-z*?@0-9:=<>!' ()-]{0,20}",
        "[0-9]{1,3}|[1-6]xx|[0-9x]{1,4}",
        "(GET|POST|PUT|PATCH|DELETE|get|G@T| )",
        "https?://[a-z0-9.:@/\\[\\]%]{0,20}",
        "[0-9]{1,4}(ms|s|m|h|d|x)?",
        "\\PC{0,12}",
        any::<String>(),
    ]
}

/// A TOML value of any type, with texty strings.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        texty().prop_map(|s| toml_str(&s)),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| {
            if f.is_finite() {
                format!("{f:?}")
            } else {
                "nan".to_owned()
            }
        }),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

/// A key of a rule, a `when` or a payload, or something else.
fn rule_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "name", "topic", "method", "path", "status", "when", "payload", "required",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// One line of a rule file: mostly plausible, sometimes anything.
fn rule_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("[[rule]]".to_owned()),
        1 => Just("[[test]]".to_owned()),
        1 => Just("[rule.payload]".to_owned()),
        1 => prop::sample::select(vec!["[[rule]", "[rule", "[[when]]", "[test.request]"])
            .prop_map(str::to_owned),
        12 => (rule_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => ("[a-z_]{1,6}", texty(), prop::option::of(texty())).prop_map(|(k, p, r)| match r {
            None => format!("{k} = {}", toml_str(&p)),
            Some(r) => format!("{k} = {{ path = {}, regex = {} }}", toml_str(&p), toml_str(&r)),
        }),
        2 => (texty(), prop::sample::select(vec!["equals", "not_equals", "in", "exists", "matches", "gt", "lt"]), toml_value())
            .prop_map(|(p, op, v)| format!("when = [{{ path = {}, {op} = {v} }}]", toml_str(&p))),
        1 => Just("request = { method = \"POST\", path = \"/orders\" }\nresponse = { status = 201 }\nexpect = { topic = \"order.created\" }".to_owned()),
        1 => "\\PC{0,30}",
    ]
}

/// Mostly `valid`, sometimes anything [`texty`]: deep enough to pass the parser, wrong often
/// enough to reach every error path.
fn mostly(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![9 => valid, 1 => texty()].boxed()
}

/// A plausible rule: each field valid most of the time, so that whole rules compile often
/// enough to reach the router and the evaluator.
fn plausible_rule() -> impl Strategy<Value = String> {
    (
        "[a-z ]{1,12}",
        mostly("[a-z]{1,5}\\.[a-z]{1,5}"),
        prop::option::of(mostly("(GET|POST|PUT)")),
        mostly("(/[a-z]{1,3}|/\\{[a-z]{1,3}\\}){0,3}(/\\{\\*[a-z]{1,3}\\})?")
            .prop_map(|p| if p.is_empty() { "/".to_owned() } else { p }),
        prop::option::of(prop::collection::vec(
            mostly(prop_oneof!["[1-5]xx", "[1-5][0-9][0-9]"]),
            1..3,
        )),
        prop::collection::vec((selector_source(), "[a-z0-9]{0,3}", regex_source()), 0..3),
        prop::collection::vec((selector_source(), prop::option::of(regex_source())), 0..4),
        prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec("f[0-3]", 1..2)],
    )
        .prop_map(
            |(name, topic, method, path, status, when, payload, required)| {
                let mut r = format!(
                    "[[rule]]\nname = {}\ntopic = {}\npath = {}\n",
                    toml_str(&name),
                    toml_str(&topic),
                    toml_str(&path)
                );
                if let Some(m) = method {
                    r.push_str(&format!("method = {}\n", toml_str(&m)));
                }
                if let Some(s) = status {
                    let list: Vec<String> = s
                        .iter()
                        .map(|s| {
                            if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
                                s.clone()
                            } else {
                                toml_str(s)
                            }
                        })
                        .collect();
                    r.push_str(&format!("status = [{}]\n", list.join(", ")));
                }
                if !when.is_empty() {
                    let entries: Vec<String> = when
                        .iter()
                        .enumerate()
                        .map(|(i, (p, v, re))| {
                            let (op, value) = match i % 6 {
                                0 => ("equals", toml_str(v)),
                                1 => ("matches", toml_str(re)),
                                2 => ("exists", "true".to_owned()),
                                3 => ("gt", "1.5".to_owned()),
                                4 => ("in", format!("[{}, 7, true]", toml_str(v))),
                                _ => ("not_equals", "{ a = [1, 2] }".to_owned()),
                            };
                            format!("{{ path = {}, {op} = {value} }}", toml_str(p))
                        })
                        .collect();
                    r.push_str(&format!("when = [{}]\n", entries.join(", ")));
                }
                if !required.is_empty() {
                    let list: Vec<String> = required.iter().map(|f| toml_str(f)).collect();
                    r.push_str(&format!("required = [{}]\n", list.join(", ")));
                }
                if !payload.is_empty() {
                    r.push_str("[rule.payload]\n");
                    for (i, (p, re)) in payload.iter().enumerate() {
                        match re {
                            None => r.push_str(&format!("f{i} = {}\n", toml_str(p))),
                            Some(re) => r.push_str(&format!(
                                "f{i} = {{ path = {}, regex = {} }}\n",
                                toml_str(p),
                                toml_str(re)
                            )),
                        }
                    }
                }
                r
            },
        )
}

/// Regex sources: mostly valid, some invalid, "catastrophic" and oversized.
fn regex_source() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "(a+)+$", "(\\d+)", "^n.w$", "/orders/(\\d+)", "(?i)VIP", "(a|aa)+$", "", "x*",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["(", "\\w{10000}", "[z-a]", "(?P<n>", "a{2,1}"])
            .prop_map(str::to_owned),
        2 => "[a-z()+*?|\\\\{}0-9\\[\\]^$.]{0,12}",
    ]
}

/// One JSONPath segment, from the RFC 9535 grammar and around it.
fn segment() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        -3i64..5,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-(1i64 << 53)),
        Just(1i64 << 53),
        any::<i64>()
    ];
    let name = prop_oneof![
        prop::sample::select(vec![
            "request", "response", "body", "params", "a", "b", "id"
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,4}",
    ];
    prop_oneof![
        name.clone().prop_map(|n| format!(".{n}")),
        name.clone().prop_map(|n| format!("..{n}")),
        Just(".*".to_owned()),
        Just("..*".to_owned()),
        Just("[*]".to_owned()),
        int.clone().prop_map(|i| format!("[{i}]")),
        (int.clone(), int.clone()).prop_map(|(a, b)| format!("[{a},{b}]")),
        (
            prop::option::of(int.clone()),
            prop::option::of(int.clone()),
            prop::option::of(int.clone())
        )
            .prop_map(|(a, b, c)| {
                let s = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
                match c {
                    None => format!("[{}:{}]", s(a), s(b)),
                    Some(c) => format!("[{}:{}:{c}]", s(a), s(b)),
                }
            }),
        "[a-z' \\\\\"]{0,6}".prop_map(|n| format!("['{n}']")),
        (
            name.clone(),
            prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
            prop_oneof![
                int.prop_map(|i| i.to_string()),
                Just("'x'".to_owned()),
                Just("true".to_owned()),
                Just("null".to_owned()),
                Just("1e308".to_owned()),
                Just("-0.0".to_owned())
            ]
        )
            .prop_map(|(n, op, v)| format!("[?@.{n} {op} {v}]")),
        name.clone().prop_map(|n| format!("[?@.{n}]")),
        name.clone().prop_map(|n| format!("[?length(@.{n}) > 1]")),
        name.clone()
            .prop_map(|n| format!("[?count(@.{n}[*]) >= 0]")),
        (name.clone(), regex_source())
            .prop_map(|(n, r)| format!("[?match(@.{n}, '{}')]", r.replace('\'', ""))),
        (name, regex_source())
            .prop_map(|(n, r)| format!("[?search(@.{n}, '{}')]", r.replace('\'', ""))),
        Just("[?value(@..a) == 1]".to_owned()),
        Just("[?!@.a && (@.b || @.c)]".to_owned()),
        Just("[?@ == $.a]".to_owned()),
    ]
}

/// A JSONPath: built from segments, or any text after `$`.
fn selector_source() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(
            prop::sample::select(vec![".request", ".response", ".body", ".params", ".a", ".status", "[0]", "[*]"]),
            1..4,
        )
        .prop_map(|s| format!("${}", s.concat())),
        6 => prop::collection::vec(segment(), 0..5).prop_map(|s| format!("${}", s.concat())),
        1 => "\\$\\PC{0,16}",
        1 => "\\PC{0,8}",
    ]
}

/// JSON documents with the keys the paths above use.
fn json_doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|i| json!(i)),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::String),
        prop::sample::select(vec!["a", "aaaa!", "123", "-1.5", "new"]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(vec![
                            "request", "response", "body", "params", "a", "b", "c", "id", "status"
                        ])
                        .prop_map(str::to_owned),
                        "\\PC{0,4}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An exchange document as the proxy builds it, with arbitrary parts.
fn exchange_doc() -> impl Strategy<Value = Value> {
    (json_doc(), json_doc(), json_doc(), 0u16..1000).prop_map(|(req, resp, headers, status)| {
        json!({
            "request": {"method": "POST", "path": "/x", "query": {}, "headers": headers, "body": req},
            "response": {"status": status, "headers": {}, "body": resp},
            "params": {},
        })
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token")),
    ]
}

/// A request path, often one the templates above could match.
fn request_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-z]{1,3}){0,4}",
        "(/[a-z%0-9.{}*]{0,4}){0,5}/?",
        "/\\PC{0,16}",
        "\\PC{0,16}",
    ]
}

// ------------------------------------------------------------------------------------------
// The rule and config parser
// ------------------------------------------------------------------------------------------

/// A project directory with hooktap.toml (`config`) and rules/shop.toml (`rules`).
fn load(config: &str, rules: &str) -> Result<Config, hooktap::config::ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir rules");
    std::fs::write(dir.path().join("hooktap.toml"), config).expect("write hooktap.toml");
    std::fs::write(dir.path().join("rules/shop.toml"), rules).expect("write rules");
    Config::load(&dir.path().join("hooktap.toml"))
}

const CONFIG: &str = "rules = [\"rules/*.toml\"]\n\n[proxy]\nlisten = \"127.0.0.1:18080\"\nupstream = \"127.0.0.1:18000\"\n\n[delivery]\nallow_networks = [\"127.0.0.0/8\"]\n";

/// Every problem has a place that exists in its file (1-based, within the text).
fn assert_places_exist(e: &hooktap::config::ConfigError, config: &str, rules: &str) {
    for p in &e.0 {
        let Some((line, col)) = p.position else {
            continue;
        };
        let text = if p.file.ends_with("hooktap.toml") {
            config
        } else {
            rules
        };
        let lines = text.split('\n').count();
        assert!(
            line >= 1 && line <= lines.max(1) && col >= 1,
            "{p} is outside the file ({lines} lines)"
        );
    }
}

/// A value for a config key, mostly of the kind the key wants.
fn config_value(key: &str) -> BoxedStrategy<String> {
    let quoted = |s: &'static str| -> BoxedStrategy<String> {
        prop_oneof![9 => proptest::string::string_regex(s).expect("regex").prop_map(|v| toml_str(&v)), 1 => toml_value()].boxed()
    };
    let number =
        || prop_oneof![9 => (0u64..100_000).prop_map(|n| n.to_string()), 1 => toml_value()].boxed();
    let boolean =
        || prop_oneof![9 => any::<bool>().prop_map(|b| b.to_string()), 1 => toml_value()].boxed();
    let list = |s: &'static str| -> BoxedStrategy<String> {
        prop_oneof![
            9 => prop::collection::vec(proptest::string::string_regex(s).expect("regex"), 0..3)
                .prop_map(|v| format!("[{}]", v.iter().map(|x| toml_str(x)).collect::<Vec<_>>().join(", "))),
            1 => toml_value(),
        ]
        .boxed()
    };
    match key {
        "listen" => quoted("(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|localhost):[0-9]{1,5}"),
        "upstream" => quoted("[a-z0-9.:\\[\\]]{0,12}:[0-9]{1,5}"),
        "threads" | "max_capture_bytes" | "max_decoded_bytes" | "concurrency" | "batch_max"
        | "failure_threshold" => number(),
        "upstream_tls" | "forwarded_headers" | "https_only" | "ordered" => boolean(),
        "grace_period"
        | "shutdown_timeout"
        | "flush_interval"
        | "retention"
        | "timeout"
        | "secret_rotation_grace"
        | "batch_interval" => quoted("[0-9]{1,4}(ms|s|m|h|d|x|)"),
        "flush" => quoted("interval|every-event|sometimes"),
        "allow_networks" => {
            list("(10\\.0\\.0\\.0/8|127\\.0\\.0\\.0/[0-9]{1,2}|::1/128|[0-9./:a-f]{1,12})")
        }
        "url" => quoted(
            "(https?|ftp)://(127\\.0\\.0\\.1|10\\.1\\.2\\.3|\\[::1\\]|example\\.com|user:pw@169\\.254\\.169\\.254)(:[0-9]{1,5})?/[a-z]{0,4}",
        ),
        "topics" => list("[a-z*]{1,5}\\.[a-z*]{1,5}|\\*|\\[x"),
        "retry" => quoted("([0-9]{1,3}(s|m|ms|x)?,?){0,4}"),
        "signature" => quoted("hooktap|standard|mautic|hmac"),
        "mode" => quoted("single|batch|bulk"),
        "status" => quoted("active|paused|disabled|gone"),
        "name" | "secret" | "token" | "source" | "path" | "header_prefix" => {
            quoted("[a-zA-Z0-9 /:.-]{0,10}")
        }
        _ => toml_value().boxed(),
    }
}

/// A table with some of its keys (and, rarely, a key it does not have).
fn config_table(table: &'static str, keys: &'static [&'static str]) -> BoxedStrategy<String> {
    let entry = prop_oneof![
        19 => prop::sample::select(keys).prop_flat_map(|k| config_value(k).prop_map(move |v| format!("{k} = {v}"))),
        1 => toml_value().prop_map(|v| format!("colour = {v}")),
    ];
    prop::collection::vec(entry, 0..keys.len().min(6))
        .prop_map(move |lines| {
            // A key twice is a TOML error that would hide everything else: keep the first.
            let mut seen = BTreeSet::new();
            let lines: Vec<String> = lines
                .into_iter()
                .filter(|l| seen.insert(l.split(" = ").next().unwrap_or_default().to_owned()))
                .collect();
            format!("{table}\n{}\n", lines.join("\n"))
        })
        .boxed()
}

/// A hooktap.toml whose tables and keys are real and whose values are mostly of the right kind.
fn plausible_config() -> impl Strategy<Value = String> {
    (
        (config_value("listen"), config_value("upstream")),
        config_table("", &["threads", "max_capture_bytes", "max_decoded_bytes", "grace_period",
            "shutdown_timeout", "forwarded_headers", "upstream_tls"]),
        prop::option::of(config_table("[store]", &["path", "flush", "flush_interval", "retention"])),
        prop::option::of(config_table("[delivery]", &["source", "timeout", "concurrency",
            "https_only", "allow_networks", "secret_rotation_grace"])),
        prop::option::of(config_table("[admin]", &["listen", "token"])),
        prop::collection::vec(
            (
                "[a-z]{1,3}",
                (config_value("url"), config_value("secret"), config_value("topics")),
                config_table("", &["retry", "timeout", "signature",
                    "mode", "batch_max", "batch_interval", "ordered", "concurrency", "status",
                    "failure_threshold", "header_prefix"]),
            ),
            0..3,
        ),
    )
        .prop_map(|((listen, upstream), proxy_extra, store, delivery, admin, webhooks)| {
            let mut c = format!(
                "rules = [\"rules/*.toml\"]\n[proxy]\nlisten = {listen}\nupstream = {upstream}{proxy_extra}"
            );
            for t in [store, delivery, admin].into_iter().flatten() {
                c.push_str(&t);
            }
            for (name, (url, secret, topics), rest) in webhooks {
                c.push_str(&format!(
                    "[[webhook]]\nname = {}\nurl = {url}\nsecret = {secret}\ntopics = {topics}{rest}",
                    toml_str(&name)
                ));
            }
            c
        })
}

/// A rule file made of plausible rules, then damaged a little: lines dropped, repeated or
/// inserted, the text cut short or a character replaced.
fn damaged_rule_file() -> impl Strategy<Value = String> {
    #[derive(Debug, Clone)]
    enum Damage {
        Drop(prop::sample::Index),
        Repeat(prop::sample::Index),
        Insert(prop::sample::Index, String),
        Cut(prop::sample::Index),
        Replace(prop::sample::Index, char),
    }
    let damage = prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Drop),
        any::<prop::sample::Index>().prop_map(Damage::Repeat),
        (any::<prop::sample::Index>(), rule_line()).prop_map(|(i, l)| Damage::Insert(i, l)),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
        (
            any::<prop::sample::Index>(),
            prop_oneof![Just('"'), Just('['), Just('='), Just('\n'), any::<char>()]
        )
            .prop_map(|(i, c)| Damage::Replace(i, c)),
    ];
    (
        prop::collection::vec(plausible_rule(), 1..4),
        prop::collection::vec(damage, 0..3),
    )
        .prop_map(|(rules, damage)| {
            let mut lines: Vec<String> = rules.concat().lines().map(str::to_owned).collect();
            for d in damage {
                if lines.is_empty() {
                    break;
                }
                match d {
                    Damage::Drop(i) => {
                        lines.remove(i.index(lines.len()));
                    }
                    Damage::Repeat(i) => {
                        let l = lines[i.index(lines.len())].clone();
                        lines.insert(i.index(lines.len()), l);
                    }
                    Damage::Insert(i, l) => lines.insert(i.index(lines.len() + 1), l),
                    Damage::Cut(i) => {
                        let text = lines.join("\n");
                        let chars: Vec<char> = text.chars().collect();
                        let cut: String = chars[..i.index(chars.len() + 1)].iter().collect();
                        lines = cut.lines().map(str::to_owned).collect();
                    }
                    Damage::Replace(i, c) => {
                        let text = lines.join("\n");
                        let mut chars: Vec<char> = text.chars().collect();
                        if !chars.is_empty() {
                            let at = i.index(chars.len());
                            chars[at] = c;
                        }
                        lines = chars
                            .iter()
                            .collect::<String>()
                            .lines()
                            .map(str::to_owned)
                            .collect();
                    }
                }
            }
            lines.join("\n")
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any text as hooktap.toml: an error or a config, never a panic.
    #[test]
    fn config_parser_survives_any_text(text in prop_oneof![any::<String>(), "\\PC{0,200}"]) {
        if let Err(e) = load(&text, "") {
            assert_places_exist(&e, &text, "");
        }
    }

    /// Plausible configs: every table and key, values mostly of the right kind.
    #[test]
    fn config_parser_survives_plausible_configs(config in plausible_config()) {
        if let Err(e) = load(&config, "") {
            assert_places_exist(&e, &config, "");
        }
    }

    /// Rule files, plausible then damaged, through `Config::load`: problems have places in
    /// the file, and the undamaged ones' `[[test]]`s run.
    #[test]
    fn rule_parser_survives_damaged_rule_files(rules in damaged_rule_file()) {
        match load(CONFIG, &rules) {
            Err(e) => assert_places_exist(&e, CONFIG, &rules),
            Ok(config) => {
                for t in &config.tests {
                    let _ = t.run(&config.rules, config.proxy.max_decoded_bytes);
                }
            }
        }
    }

    /// Rule files of arbitrary rule-shaped lines.
    #[test]
    fn rule_parser_survives_rule_shaped_lines(
        lines in prop::collection::vec(rule_line(), 0..24),
    ) {
        let rules = lines.join("\n");
        if let Err(e) = load(CONFIG, &rules) {
            assert_places_exist(&e, CONFIG, &rules);
        }
    }

    /// Plausible rules compile or are rejected; the compiled ones route and evaluate any
    /// exchange without panicking, and `[[test]]`s run.
    #[test]
    fn rules_compile_route_and_evaluate(
        rules in prop::collection::vec(plausible_rule(), 1..5),
        probes in prop::collection::vec((method(), request_path()), 1..6),
        doc in exchange_doc(),
    ) {
        let text = rules.concat();
        let Ok(raw) = toml::from_str::<RawRuleFile>(&text) else {
            return Ok(());
        };
        let mut set = RuleSet::default();
        for rule in raw.rule {
            let _ = set.add(rule);
        }
        // The probes, and each rule's own template taken literally as a path.
        let mut probes = probes;
        probes.extend(set.rules().iter().map(|r| (Method::POST, r.path.clone())));
        for (method, path) in &probes {
            if let Some(c) = set.candidates(method, path) {
                let status = doc["response"]["status"].as_u64().unwrap_or(0) as u16;
                let _ = set.wants_response(&c, status);
                let mut doc = doc.clone();
                for m in set.evaluate(&c, &mut doc) {
                    prop_assert!(set.rules().iter().any(|r| r.name == m.rule.name));
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The path router
// ------------------------------------------------------------------------------------------

/// A template segment: literal text, a parameter, or (last only) a catch-all.
#[derive(Debug, Clone)]
enum Seg {
    Lit(String),
    Param,
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

proptest! {
    #![proptest_config(cases(512))]

    /// Any templates, any paths: insert and lookup return, they never panic.
    #[test]
    fn router_survives_any_templates_and_paths(
        templates in prop::collection::vec(
            prop_oneof![
                "(/([a-z]{0,3}|\\{\\*?[a-z_0-9]{0,3}\\}?|[{}*:%.])){0,6}",
                "/\\PC{0,16}",
                "\\PC{0,12}",
            ],
            1..8,
        ),
        probes in prop::collection::vec((method(), request_path()), 1..8),
    ) {
        let mut router = Router::default();
        for (i, t) in templates.iter().enumerate() {
            let _ = router.insert(t, Vec::new(), i);
        }
        for (m, p) in &probes {
            if let Some(c) = router.candidates(m, p) {
                prop_assert!(c.matches.iter().all(|(rule, _)| *rule < templates.len()));
            }
        }
        for t in &templates {
            let _ = router.candidates(&Method::GET, t);
        }
    }

    /// A path built from a template with any parameter values (percent-encoded) matches it,
    /// and the router hands back the values decoded.
    #[test]
    fn paths_built_from_a_template_match_it_with_their_values(
        segs in prop::collection::vec(
            prop_oneof![
                "[a-z0-9_.-]{1,6}".prop_map(Seg::Lit),
                Just(Seg::Param),
            ],
            0..6,
        ),
        catch_all in prop::option::of("\\PC{1,24}"),
        values in prop::collection::vec("\\PC{1,12}", 6),
        method in method(),
    ) {
        let mut template = String::new();
        let mut path = String::new();
        let mut expected = Vec::new();
        for seg in &segs {
            match seg {
                Seg::Lit(l) => {
                    template.push_str(&format!("/{l}"));
                    path.push_str(&format!("/{}", encode(l, false)));
                }
                Seg::Param => {
                    let name = format!("p{}", expected.len());
                    let value = &values[expected.len()];
                    template.push_str(&format!("/{{{name}}}"));
                    path.push_str(&format!("/{}", encode(value, false)));
                    expected.push((name, value.clone()));
                }
            }
        }
        if let Some(rest) = &catch_all {
            template.push_str("/{*rest}");
            path.push_str(&format!("/{}", encode(rest, true)));
            expected.push(("rest".to_owned(), rest.clone()));
        }
        if template.is_empty() {
            template.push('/');
            path.push('/');
        }
        let mut router = Router::default();
        router.insert(&template, Vec::new(), 0).expect("a well-formed template");
        let c = router.candidates(&method, &path);
        prop_assert!(c.is_some(), "{path} does not match {template}");
        let c = c.expect("checked");
        prop_assert_eq!(c.matches.len(), 1);
        prop_assert_eq!(&c.matches[0].1, &expected);
        // A rule for another method is not a candidate.
        let mut only_put = Router::default();
        only_put.insert(&template, vec![Method::PUT], 0).expect("valid");
        prop_assert_eq!(only_put.candidates(&method, &path).is_some(), method == Method::PUT);
    }
}

// ------------------------------------------------------------------------------------------
// Body decoding
// ------------------------------------------------------------------------------------------

fn headers(encoding: Option<&[u8]>, content_type: Option<&[u8]>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        (http::header::CONTENT_ENCODING, encoding),
        (http::header::CONTENT_TYPE, content_type),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            h.append::<HeaderName>(name, v);
        }
    }
    h
}

fn encoding_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "gzip",
            "x-gzip",
            "deflate",
            "br",
            "identity",
            "GZIP",
            "gzip, br",
            "br, gzip",
            "deflate, deflate",
            "gzip,,identity",
            " , ",
            "zstd",
            "compress",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[a-z, -]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

fn content_type_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "APPLICATION/JSON",
            "application/x-www-form-urlencoded",
            "text/plain",
            ";",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..20),
    ]
}

/// How many characters a decoded body holds: each came from at least one decoded byte.
fn decoded_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(decoded_chars).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.chars().count() + decoded_chars(v))
            .sum(),
        _ => 0,
    }
}

/// Applies `encodings` in order (so `Content-Encoding` lists them in this order).
fn compress(data: &[u8], encodings: &[&str]) -> Vec<u8> {
    let mut out = data.to_vec();
    for e in encodings {
        out = match *e {
            "gzip" => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&out).expect("gzip to a Vec");
                w.finish().expect("finish gzip")
            }
            "deflate" => {
                let mut w =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&out).expect("zlib to a Vec");
                w.finish().expect("finish zlib")
            }
            "br" => {
                let mut v = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut v, 4096, 1, 20);
                    w.write_all(&out).expect("brotli to a Vec");
                }
                v
            }
            other => unreachable!("{other}"),
        };
    }
    out
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Any bytes under any Content-Encoding and Content-Type: a value or a skip reason, never
    /// a panic; once anything was decompressed, the value holds at most `max` characters.
    #[test]
    fn decode_body_survives_anything_and_respects_the_cap(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            // Corrupted real streams get further into the decoders than random bytes.
            (prop::collection::vec(any::<u8>(), 0..512), prop::sample::select(vec!["gzip", "deflate", "br"]), any::<prop::sample::Index>(), any::<u8>())
                .prop_map(|(d, e, i, b)| {
                    let mut c = compress(&d, &[e]);
                    let at = i.index(c.len());
                    c[at] ^= b;
                    c
                }),
        ],
        encoding in prop::option::of(encoding_value()),
        content_type in prop::option::of(content_type_value()),
        max in 0usize..1024,
    ) {
        let h = headers(encoding.as_deref(), content_type.as_deref());
        let decoding = h
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|e| !e.trim().is_empty() && !e.trim().eq_ignore_ascii_case("identity"));
        match decode_body(&body, &h, max) {
            Ok(v) if decoding => prop_assert!(decoded_chars(&v) <= max, "{} > {max}", decoded_chars(&v)),
            Ok(v) => prop_assert!(decoded_chars(&v) <= body.len()),
            Err(SkipReason::TooBig) => prop_assert!(false, "decode_body never says TooBig"),
            Err(_) => {}
        }
    }

    /// Real compressed bodies (also chains such as `gzip, br`) decode to exactly the data when
    /// it fits in `max`, and to `DecodedTooBig` when it does not: bombs included.
    #[test]
    fn compressed_bodies_round_trip_up_to_the_cap(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            (any::<u8>(), 0usize..200_000).prop_map(|(b, n)| vec![b; n]),
        ],
        chain in prop::collection::vec(prop::sample::select(vec!["gzip", "deflate", "br"]), 1..3),
        max in prop_oneof![0usize..4096, 100_000usize..300_000],
    ) {
        let body = compress(&data, &chain);
        let h = headers(Some(chain.join(", ").as_bytes()), Some(b"text/plain"));
        // Each layer is capped: an intermediate layer larger than `max` is also too big.
        let mut sizes = vec![data.len()];
        let mut layer = data.clone();
        for e in &chain[..chain.len() - 1] {
            layer = compress(&layer, &[e]);
            sizes.push(layer.len());
        }
        let fits = sizes.iter().all(|&s| s <= max);
        match decode_body(&body, &h, max) {
            Ok(Value::Null) => prop_assert!(data.is_empty() && fits),
            Ok(Value::String(s)) => {
                prop_assert!(fits);
                prop_assert_eq!(s, String::from_utf8_lossy(&data).into_owned());
            }
            Ok(other) => prop_assert!(false, "text/plain decoded to {other}"),
            Err(SkipReason::DecodedTooBig) => prop_assert!(!fits),
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// Form bodies: every pair survives, repeated keys become arrays, nothing panics.
    #[test]
    fn form_bodies_decode_to_objects(pairs in prop::collection::vec(("\\PC{1,6}", "\\PC{0,6}"), 1..6)) {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
        let h = headers(None, Some(b"application/x-www-form-urlencoded"));
        let v = decode_body(body.as_bytes(), &h, 0).expect("no encoding, no cap");
        let keys: BTreeSet<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let obj = v.as_object().expect("an object");
        prop_assert_eq!(obj.len(), keys.len());
        for (k, value) in &pairs {
            let got = &obj[k.as_str()];
            prop_assert!(got == value || got.as_array().is_some_and(|a| a.contains(&json!(value))));
        }
    }
}

// ------------------------------------------------------------------------------------------
// Payload extraction
// ------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1024))]

    /// Any JSONPath either fails to parse with a one-line message or selects from any JSON
    /// document without panicking.
    #[test]
    fn selectors_parse_or_fail_and_select_without_panicking(
        source in selector_source(),
        doc in json_doc(),
    ) {
        match Selector::parse(&source) {
            Err(message) => prop_assert!(!message.contains('\n'), "{message}"),
            Ok(selector) => {
                prop_assert_eq!(selector.source(), source.as_str());
                let _ = selector.select(&doc);
            }
        }
    }

    /// Selecting a key that is present returns its value.
    #[test]
    fn selecting_a_present_key_returns_it(key in "[a-z][a-z0-9_]{0,8}", value in json_doc(), other in json_doc()) {
        let doc = json!({ "wrap": { key.clone(): value.clone() }, "other": other });
        let selector = Selector::parse(&format!("$.wrap.{key}")).expect("a simple path");
        prop_assert_eq!(selector.select(&doc), Some(value));
    }
}

// ------------------------------------------------------------------------------------------
// The document built only as far as the rules read it
// ------------------------------------------------------------------------------------------

/// A JSONPath into the exchange: a part of it, then any segments (names, indices, wildcards,
/// slices, unions, filters, descents, a filter with an absolute path).
fn exchange_selector() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "$.response.body",
            "$.request.body",
            "$.response.body",
            "$.request.headers",
            "$.response.headers",
            "$.request.query",
            "$.item",
            "$.item",
            "$.request",
            "$",
            "$.params",
        ]),
        prop::collection::vec(segment(), 0..3),
    )
        .prop_map(|(start, segments)| format!("{start}{}", segments.concat()))
}

/// A CEL expression reading the exchange (or the `for_each` item) in the ways CEL can: member
/// chains, `has`, `in`, sizes, indices (static and dynamic), comprehensions, whole values.
fn exchange_expr() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec!["a", "b", "id", "status", "body", "c"]);
    let var = prop::sample::select(vec![
        "response.body",
        "request.body",
        "item",
        "response.body.a",
    ]);
    (var, name.clone(), name, 0usize..14).prop_map(|(v, n, m, form)| match form {
        0 => format!("{v}.{n}"),
        1 => format!("{v}.{n}.{m}"),
        2 => format!("has({v}.{n})"),
        3 => format!("size({v}.{n})"),
        4 => format!("{v}.{n} == {v}.{m}"),
        5 => format!("{v}[request.body.{n}]"),
        6 => format!("{v}.{n}[0]"),
        7 => format!("{v}.{n}.exists(x, x.{m} == 1)"),
        8 => format!("request.headers['x-{n}']"),
        9 => format!("'{n}' in {v}"),
        10 => v.to_owned(),
        11 => format!("string({v}.{n})"),
        // The size only: iterating a map (an object) goes in no fixed order, so a list made
        // from its keys can differ between two evaluations of the same document.
        12 => format!("size({v}.map(k, k))"),
        _ => format!("response.headers['content-type'] + string({v}.{n})"),
    })
}

/// A rule on `/x` using every kind of read the rules language has: `for_each`, `when` paths
/// or a CEL `when`, payload paths, expressions and constants (or the default whole body, or
/// one path), a computed topic, a dedupe key by path or expression.
fn reading_rule(index: usize) -> impl Strategy<Value = String> {
    (
        prop::option::of(exchange_selector()),
        prop::collection::vec((exchange_selector(), 0usize..4), 0..3),
        prop::option::of(exchange_expr()),
        prop::collection::vec(
            prop_oneof![
                3 => exchange_selector().prop_map(|p| toml_str(&p)),
                2 => exchange_expr().prop_map(|e| format!("{{ expr = {} }}", toml_str(&e))),
                1 => Just("{ value = 1 }".to_owned()),
            ],
            0..4,
        ),
        prop_oneof![
            3 => Just(None),
            1 => exchange_selector().prop_map(Some),
        ],
        prop_oneof![
            3 => Just(None),
            1 => exchange_selector().prop_map(Some),
            1 => exchange_expr().prop_map(Some),
        ],
        any::<bool>(),
    )
        .prop_map(
            move |(for_each, when, when_expr, fields, whole, dedupe, topic_expr)| {
                let mut r = format!("[[rule]]\nname = \"r{index}\"\npath = \"/x\"\n");
                if topic_expr {
                    r.push_str("topic = { expr = \"'t.' + string(response.status)\" }\n");
                } else {
                    r.push_str("topic = \"t.x\"\n");
                }
                if let Some(f) = for_each {
                    r.push_str(&format!("for_each = {}\n", toml_str(&f)));
                }
                match when_expr {
                    Some(e) => {
                        r.push_str(&format!("when = {}\n", toml_str(&format!("({e}) != null"))))
                    }
                    None if !when.is_empty() => {
                        let entries: Vec<String> = when
                            .iter()
                            .map(|(p, op)| {
                                let op = match op {
                                    0 => "exists = true",
                                    1 => "equals = 1",
                                    2 => "matches = \"^a\"",
                                    _ => "not_equals = \"b\"",
                                };
                                format!("{{ path = {}, {op} }}", toml_str(p))
                            })
                            .collect();
                        r.push_str(&format!("when = [{}]\n", entries.join(", ")));
                    }
                    None => {}
                }
                if let Some(d) = dedupe {
                    r.push_str(&format!(
                        "dedupe = {{ key = {}, window = \"1m\" }}\n",
                        toml_str(&d)
                    ));
                }
                if let Some(w) = whole {
                    r.push_str(&format!("payload = {}\n", toml_str(&w)));
                } else if !fields.is_empty() {
                    r.push_str("[rule.payload]\n");
                    for (i, f) in fields.iter().enumerate() {
                        r.push_str(&format!("f{i} = {f}\n"));
                    }
                }
                r
            },
        )
}

/// A body as the app may send it: JSON of the keys the rules read (sometimes with a repeated
/// key, sometimes invalid JSON that rules then see as text), or text.
fn reading_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json_doc().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => (json_doc(), json_doc()).prop_map(|(a, b)| {
            format!(
                "{{\"a\": {}, \"b\": 2, \"a\": {}}}",
                serde_json::to_string(&a).unwrap_or_default(),
                serde_json::to_string(&b).unwrap_or_default()
            )
            .into_bytes()
        }),
        1 => prop::sample::select(vec![
            &b"{\"a\": 1, \"b\": \"\xff\"}"[..],
            b"{\"a\": 1, \"b\": 1e400}",
            b"{\"a\": 1, \"b\": \"\\ud800\"}",
            b"{\"a\": 1} x",
            b"{\"a\": 1, \"b\": [}",
            b"",
            b"plain text",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => (1usize..200).prop_map(|depth| {
            format!("{{\"a\": 1, \"b\": {}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }),
    ]
}

/// The exchange of a POST /x with these bodies and a few headers.
fn reading_exchange(request: &[u8], response: &[u8], query: &str) -> Exchange {
    let mut request_headers = headers(None, Some(b"application/json"));
    request_headers.append("x-a", HeaderValue::from_static("one"));
    request_headers.append("x-a", HeaderValue::from_static("two"));
    request_headers.append("x-b", HeaderValue::from_static("b"));
    let response_headers = headers(None, Some(b"application/json"));
    Exchange {
        request: RequestParts {
            method: "POST".to_owned(),
            path: "/x".to_owned(),
            query: Some(query.to_owned()),
            headers: request_headers,
            body: Some(bytes::Bytes::copy_from_slice(request)),
        },
        response: ResponseParts {
            status: 201,
            headers: response_headers,
            body: Some(bytes::Bytes::copy_from_slice(response)),
        },
    }
}

/// What a dry run tells of every candidate: its events (topic, payload, dedupe key) and why
/// it derived nothing.
fn told(set: &RuleSet, candidates: &Candidates, doc: &mut Value) -> Vec<String> {
    set.explain(candidates, doc)
        .into_iter()
        .map(|e| {
            let events: Vec<String> = e
                .matches
                .iter()
                .map(|m| {
                    format!(
                        "{} {} {:?}",
                        m.event.topic,
                        m.event.payload,
                        m.dedupe.as_ref().map(|d| &d.key)
                    )
                })
                .collect();
            format!("{}: {events:?} {:?}", e.rule.name, e.reasons)
        })
        .collect()
}

proptest! {
    #![proptest_config(cases(512))]

    /// The document built only as far as the candidate rules read it gives every rule exactly
    /// what the full document gives: the same events, payloads, topics, dedupe keys and the
    /// same reasons for deriving nothing.
    #[test]
    fn rules_derive_the_same_from_the_pruned_document_as_from_the_full_one(
        rules in (0usize..4).prop_flat_map(|n| (0..=n).map(reading_rule).collect::<Vec<_>>()),
        request in reading_body(),
        response in reading_body(),
        query in "(a=1&a=2|b=x|)",
    ) {
        let mut set = RuleSet::default();
        let raw: RawRuleFile = toml::from_str(&rules.concat()).expect("generated rules parse");
        for rule in raw.rule {
            let _ = set.add(rule);
        }
        let Some(candidates) = set.candidates(&Method::POST, "/x") else {
            return Ok(());
        };
        let mut full = reading_exchange(&request, &response, &query).into_document(1 << 20).value;
        let mut pruned = reading_exchange(&request, &response, &query)
            .into_document_for(&candidates, 1 << 20)
            .value;
        prop_assert_eq!(
            told(&set, &candidates, &mut full),
            told(&set, &candidates, &mut pruned),
            "rules:\n{}\nfull: {}\npruned: {}", rules.concat(), full, pruned
        );
    }

    /// A JSON body parsed as far as some reads go fails exactly when the full parse fails, and
    /// otherwise every plain path selects the same from both.
    #[test]
    fn pruned_json_fails_when_full_json_fails_and_selects_the_same(
        body in reading_body(),
        paths in prop::collection::vec(
            prop::collection::vec(prop::sample::select(vec![".a", ".b", ".c", ".id", "[0]", "[-1]", "[1]"]), 0..4),
            0..4,
        ),
    ) {
        let paths: Vec<String> = paths.iter().map(|p| format!("${}", p.concat())).collect();
        let selectors: Vec<Selector> = paths.iter().map(|p| Selector::parse(p).expect("plain path")).collect();
        let mut reads = Reads::default();
        for s in &selectors {
            reads.add_selector(s);
        }
        let full = serde_json::from_slice::<Value>(&body);
        let pruned = parse_json_reading(&body, &reads);
        prop_assert_eq!(full.is_ok(), pruned.is_ok(), "{:?} {:?}", full, pruned);
        if let (Ok(full), Ok(pruned)) = (full, pruned) {
            for s in &selectors {
                prop_assert_eq!(s.select(&full), s.select(&pruned), "{}", s.source());
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Edge inputs, pinned
// ------------------------------------------------------------------------------------------

/// Inputs the generators above reach only by chance, pinned so they are always checked. The
/// long runs (20,000 cases per property, and 200,000 for the cheap ones) found no failing
/// input; one that fails in the future belongs here too.
mod edge_inputs {
    use super::*;

    fn select(path: &str, doc: &Value) -> Option<Value> {
        Selector::parse(path).expect("a valid path").select(doc)
    }

    #[test]
    fn slices_with_step_zero_or_backwards_select_nothing() {
        let doc = json!({"a": [1, 2, 3, 4]});
        assert_eq!(select("$.a[::0]", &doc), None);
        assert_eq!(select("$.a[1:3:-1]", &doc), None);
        assert_eq!(select("$.a[-1]", &doc), Some(json!(4)));
        assert_eq!(select("$.a[9007199254740991]", &doc), None);
    }

    #[test]
    fn indexes_outside_the_i_json_range_are_rejected_not_wrapped() {
        for p in [
            "$.a[9223372036854775807]",
            "$.a[-9223372036854775808]",
            "$.a[9007199254740993]",
            "$.a[-9223372036854775808:9223372036854775807:-9223372036854775808]",
            "$.a[-0]",
            "$.a[01]",
        ] {
            let e = Selector::parse(p).expect_err(p);
            assert!(
                e.starts_with("invalid JSONPath") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn filters_with_catastrophic_or_invalid_regexes_select_nothing() {
        let doc = json!({"a": ["a".repeat(10_000) + "!"], "b": {"c": "x"}});
        assert_eq!(select("$.a[?search(@, '(a+)+$')]", &doc), None);
        assert_eq!(select("$.b[?match(@, '(')]", &doc), None);
    }

    #[test]
    fn templates_with_two_parameters_in_a_segment_are_rejected() {
        let mut r = Router::default();
        for t in ["/{a}{b}", "/{a}.{b}", "/a/{*b}/"] {
            assert!(r.insert(t, Vec::new(), 0).is_err(), "{t}");
        }
        r.insert("/x{a}", Vec::new(), 0)
            .expect("a prefix before a parameter");
        let c = r.candidates(&Method::GET, "/x%FF").expect("matches");
        assert_eq!(
            c.matches[0].1,
            vec![("a".to_owned(), "\u{fffd}".to_owned())]
        );
    }

    #[test]
    fn every_layer_of_a_nested_bomb_is_capped() {
        let member = compress(&vec![0; 1 << 20], &["gzip"]);
        let inner = member.repeat(64);
        let body = compress(&inner, &["gzip"]);
        let h = headers(Some(b"gzip, gzip"), Some(b"application/json"));
        assert_eq!(
            decode_body(&body, &h, 4 << 20),
            Err(SkipReason::DecodedTooBig)
        );
        assert!(
            matches!(
                decode_body(&body[..body.len() / 2], &h, 4 << 20),
                Err(SkipReason::Undecodable { .. })
            ),
            "a cut-off stream is undecodable"
        );
    }

    #[test]
    fn json_deeper_than_the_parser_limit_becomes_text() {
        let body = "[".repeat(100_000);
        let h = headers(None, Some(b"application/json"));
        assert_eq!(decode_body(body.as_bytes(), &h, 0), Ok(Value::String(body)));
    }
}

// ------------------------------------------------------------------------------------------
// hooktap learn over arbitrary traffic
// ------------------------------------------------------------------------------------------

/// Credentials planted in every generated exchange; none may reach a proposal.
const PLANTED: [&str; 6] = [
    "planted-bearer-9x8y7z",
    "planted-cookie-6w5v4u",
    "planted-password-3t2s1r",
    "planted-apikey-0q9p8o",
    "planted-nested-token-5m4l3k",
    "planted-request-secret-2j1h0g",
];

/// `credential` under a credential name, nested as `shape` says: `{"data": {"session":
/// {"access_token": ..}}}`, `{"items": [{"x": 1, "secret": ..}]}`, or one level down.
fn nested_credential(shape: usize, credential: &str) -> (String, Value) {
    match shape % 3 {
        0 => (
            "data".into(),
            json!({"session": {"access_token": credential}, "kind": "login"}),
        ),
        1 => (
            "items".into(),
            json!([{"x": 1}, {"x": 2, "client_secret": credential}]),
        ),
        _ => (
            "user".into(),
            json!({"name": "ada", "password": credential}),
        ),
    }
}

/// A HAR entry with arbitrary method, path, status and JSON bodies, and planted credentials.
fn har_entry() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
        prop_oneof![
            "(/[a-z]{1,6}(/[0-9]{1,4})?){1,3}(/[a-z]{1,5})?",
            "(/[a-zA-Z0-9%{}*.~_-]{0,6}){0,5}/?",
        ],
        prop::sample::select(vec![200u16, 201, 204, 400, 404, 409, 422, 500]),
        json_doc(),
        json_doc(),
        0usize..6,
    )
        .prop_map(|(method, path, status, mut req, mut resp, shape)| {
            match &mut resp {
                Value::Object(map) => {
                    map.insert("password".into(), json!(PLANTED[2]));
                    let (k, v) = nested_credential(shape, PLANTED[4]);
                    map.insert(k, v);
                }
                Value::Array(items) => items.push(nested_credential(shape, PLANTED[4]).1),
                _ => {}
            }
            // Request bodies are the payload when the answer has none (204): plant there too,
            // nested only, so a body without a top-level credential must still be split.
            match &mut req {
                Value::Object(map) => {
                    let (k, v) = nested_credential(shape / 3 + 1, PLANTED[5]);
                    map.insert(k, v);
                }
                Value::Array(items) => items.push(nested_credential(shape, PLANTED[5]).1),
                _ => {}
            }
            json!({
                "request": {
                    "method": method, "url": format!("http://shop.test{path}?api_key={}", PLANTED[3]),
                    "headers": [
                        {"name": "Authorization", "value": format!("Bearer {}", PLANTED[0])},
                        {"name": "Cookie", "value": format!("sid={}", PLANTED[1])},
                    ],
                    "postData": {"mimeType": "application/json", "text": req.to_string()},
                },
                "response": {
                    "status": status,
                    "headers": [{"name": "Content-Type", "value": "application/json"}],
                    "content": {"mimeType": "application/json", "text": resp.to_string()},
                },
            })
        })
}

proptest! {
    #![proptest_config(cases(64))]

    /// Any recorded traffic: learn proposes a rule file that loads, whose tests pass (render
    /// checks both), and that holds no credential of the input; and the events its rules
    /// derive from that same traffic (what subscribers would get) hold none either, also
    /// where credentials were nested in response and request bodies.
    #[test]
    fn learn_proposes_valid_rules_without_credentials(
        entries in prop::collection::vec(har_entry(), 1..24)
    ) {
        use hooktap::learn::{emit, har, propose};
        let text = json!({"log": {"entries": entries}}).to_string();
        let (samples, skipped) = har::read_from(text.as_bytes(), "p.har", "p.har", 1 << 20)
            .expect("a HAR file");
        let proposal = propose::learn(&samples, "p.har", &skipped);
        let out = emit::render(&proposal, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}\ninput: {text}"));
        for p in PLANTED {
            prop_assert!(!out.contains(p), "{p} leaked:\n{out}");
        }
        let (rules, _) = emit::compile(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let report = hooktap::learn::coverage::dry_run(&rules, &samples, 1 << 20);
        for d in &report.exchanges {
            for (topic, payload) in &d.events {
                let payload = payload.to_string();
                for p in PLANTED {
                    prop_assert!(
                        !payload.contains(p),
                        "{p} reaches subscribers of {topic}: {payload}\nrules:\n{out}"
                    );
                }
            }
        }
    }
}
