//! `hooktap test --har`: runs the configured rules over recorded exchanges, prints the events
//! each exchange would derive, then which successful writes no rule covers, by template.
//!
//! Exchanges go through the same router, body decoding and evaluation as live traffic (as the
//! `[[test]]` runner does), so what this prints is what the proxy would derive.

use std::collections::BTreeMap;

use super::Sample;
use super::template::Templates;
use crate::rules::RuleSet;

/// What one exchange derived.
#[derive(Debug, Clone)]
pub struct Derived {
    pub origin: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// `(topic, payload)` per event.
    pub events: Vec<(String, serde_json::Value)>,
}

/// Successful writes that derived no event, grouped by template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncovered {
    pub method: String,
    pub template: String,
    pub count: usize,
    /// The 2xx codes seen.
    pub statuses: Vec<u16>,
    /// One example, `shop.har entry 4`.
    pub example: String,
}

/// The dry run's result.
#[derive(Debug, Clone)]
pub struct Report {
    pub exchanges: Vec<Derived>,
    /// Successful writes (2xx POST/PUT/PATCH/DELETE).
    pub writes: usize,
    pub covered: usize,
    pub uncovered: Vec<Uncovered>,
}

/// Runs `rules` over `samples`.
pub fn dry_run(rules: &RuleSet, samples: &[Sample], max_decoded: usize) -> Report {
    let templates = Templates::infer(samples.iter().map(|s| s.path.as_str()));
    let mut exchanges = Vec::new();
    let (mut writes, mut covered) = (0, 0);
    let mut missing: BTreeMap<(String, String), Uncovered> = BTreeMap::new();
    for s in samples {
        let events: Vec<(String, serde_json::Value)> = match rules.candidates(
            &http::Method::from_bytes(s.method.as_bytes()).unwrap_or(http::Method::GET),
            &s.path,
        ) {
            None => Vec::new(),
            Some(c) => {
                let mut doc = s.exchange().into_document(max_decoded).value;
                rules
                    .evaluate(&c, &mut doc)
                    .into_iter()
                    .map(|m| (m.event.topic, m.event.payload))
                    .collect()
            }
        };
        if s.is_write() && s.succeeded() {
            writes += 1;
            if events.is_empty() {
                let template = templates.of(&s.path).text();
                let u = missing
                    .entry((template.clone(), s.method.clone()))
                    .or_insert_with(|| Uncovered {
                        method: s.method.clone(),
                        template,
                        count: 0,
                        statuses: Vec::new(),
                        example: s.origin.clone(),
                    });
                u.count += 1;
                if !u.statuses.contains(&s.status) {
                    u.statuses.push(s.status);
                    u.statuses.sort_unstable();
                }
            } else {
                covered += 1;
            }
        }
        exchanges.push(Derived {
            origin: s.origin.clone(),
            method: s.method.clone(),
            path: s.path.clone(),
            status: s.status,
            events,
        });
    }
    Report {
        exchanges,
        writes,
        covered,
        uncovered: missing.into_values().collect(),
    }
}

impl Report {
    /// The report as printed: one line per exchange, then the coverage.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.exchanges {
            let head = format!("{}  {} {} -> {}", d.origin, d.method, d.path, d.status);
            if d.events.is_empty() {
                out.push(format!("{head}: no event"));
            }
            for (topic, payload) in &d.events {
                out.push(format!("{head}: {topic} {payload}"));
            }
        }
        out.push(String::new());
        out.push(format!(
            "coverage: {} of {} successful writes derive an event",
            self.covered, self.writes
        ));
        if self.uncovered.is_empty() {
            if self.writes > 0 {
                out.push("every successful write is covered".into());
            }
        } else {
            out.push("not covered (successful writes no rule matches):".into());
            for u in &self.uncovered {
                let statuses: Vec<String> = u.statuses.iter().map(u16::to_string).collect();
                out.push(format!(
                    "  {} {}  {} ({}), e.g. {}",
                    u.method,
                    u.template,
                    super::propose::exchanges(u.count),
                    statuses.join(", "),
                    u.example
                ));
            }
        }
        out
    }
}
