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
        let before = rule_files.len();
        match expand(&full) {
            Ok(paths) => {
                for p in paths {
                    if !rule_files.contains(&p) {
                        rule_files.push(p);
                    }
                }
            }
            Err(e) => {
                r.at(pattern.span(), format!("`{}`: {e}", pattern.get_ref()));
                continue;
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

/// The files a glob names, sorted. Directories are walked following symbolic links, with
/// loops detected (a link back to an ancestor is an error, not an endless walk); what matches
/// but is not a file is left to [`super::read_text`], which names it.
fn expand(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let text = pattern.to_string_lossy();
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(&text) {
        return Ok(if pattern.exists() {
            vec![pattern.to_owned()]
        } else {
            Vec::new()
        });
    }
    // Walk from the longest leading part without glob characters.
    let mut root = PathBuf::new();
    let mut depth = 0;
    let mut deep = false;
    for c in pattern.components() {
        let s = c.as_os_str().to_string_lossy();
        if depth == 0 && !is_glob(&s) {
            root.push(c);
        } else {
            depth += 1;
            deep |= s.contains("**");
        }
    }
    let matcher = globset::GlobBuilder::new(&text)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("invalid glob: {}", e.kind()))?
        .compile_matcher();
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .min_depth(1)
        .max_depth(if deep { usize::MAX } else { depth })
        .sort_by_file_name();
    let mut found = Vec::new();
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if let Some(ancestor) = e.loop_ancestor() {
                    return Err(format!(
                        "{} links back to {}: a symbolic link loop",
                        e.path()
                            .map_or_else(String::new, |p| p.display().to_string()),
                        ancestor.display()
                    ));
                }
                // A missing root (nothing to match) is not an error; any other failure is.
                if e.depth() == 0
                    && e.io_error()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                {
                    return Ok(found);
                }
                return Err(format!("cannot read: {e}"));
            }
        };
        if !entry.file_type().is_dir() && matcher.is_match(entry.path()) {
            found.push(entry.into_path());
        }
    }
    Ok(found)
}

/// A test's expected topic, kept until every rule file is loaded (a test may expect a topic
/// of another file's rule). The file's text is shared by all its tests: a copy per test made
/// memory grow with tests × file size (20,000 tests in a 2 MB file: 40 GB).
struct ExpectedTopic {
    file: PathBuf,
    text: std::rc::Rc<str>,
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
        let text: std::rc::Rc<str> = match read_text(file) {
            Ok(t) => t.into(),
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let mut r = Reporter::new(file, &text, &mut *problems);
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
                    text: std::rc::Rc::clone(&text),
                    topic,
                });
            }
        }
    }
    rules.shrink();
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
    let produced: std::collections::HashSet<&str> = rules
        .rules()
        .iter()
        .filter_map(|rule| rule.topic.fixed().map(crate::event::Topic::as_str))
        .collect();
    // A computed topic can be any topic: the test itself says whether it is produced.
    let computed = rules
        .rules()
        .iter()
        .any(|rule| rule.topic.fixed().is_none());
    // One reporter per file (its line index is made once): a file's entries come together.
    for group in expected.chunk_by(|a, b| a.file == b.file) {
        let mut r = Reporter::new(&group[0].file, &group[0].text, &mut *problems);
        for ExpectedTopic { topic, .. } in group {
            if !computed && !produced.contains(topic.get_ref().as_str()) {
                r.at(
                    topic.span(),
                    format!(
                        "test expects topic `{}`, which no rule produces",
                        topic.get_ref()
                    ),
                );
            }
        }
    }
}
