//! The rule files hooktap.toml names: found by glob, loaded, and checked against the topics
//! the webhooks expect.

use super::*;

/// The rule files the `rules` globs name (relative to the config file), each once.
pub(super) fn find_rule_files(
    r: &mut Reporter,
    patterns: &[Spanned<String>],
    base: &Path,
) -> Vec<PathBuf> {
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
pub(super) fn load_rules(
    files: &[PathBuf],
    problems: &mut Vec<Problem>,
) -> (RuleSet, Vec<RuleTest>) {
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
