//! The router: which rules could match a method and path, in time independent of the rule count.
//!
//! Path templates (`/orders/{id}`, `/files/{*rest}`) are compiled once into a radix tree
//! (`matchit`, the router axum uses). Templates that differ only in parameter names share one
//! route, so `/orders/{id}` and `/orders/{order_id}` can both be used by different rules; each
//! rule keeps its own names. Where two templates overlap, the more specific one wins
//! (`/orders/new` before `/orders/{id}`), as in matchit.

use percent_encoding::percent_decode_str;

/// One rule reachable through a route, with its own names for the route's parameters.
#[derive(Debug)]
struct Target {
    rule: usize,
    methods: Vec<http::Method>,
    param_names: Vec<String>,
}

/// The rules a request could match, with the path parameters each rule sees.
#[derive(Debug)]
pub struct Candidates {
    pub matches: Vec<(usize, Vec<(String, String)>)>,
    /// The route the request took (an index the rule set keeps per-route facts under).
    pub route: usize,
    /// What these rules can read of the exchange, when the rule set knows it (see
    /// [`super::RuleSet::candidates`]); `None`: the whole document.
    pub reads: Option<std::sync::Arc<super::reads::Reads>>,
}

#[derive(Debug, Default)]
pub struct Router {
    tree: matchit::Router<usize>,
    routes: Vec<Vec<Target>>,
    /// Canonical template → index into `routes`, used while building.
    index: std::collections::HashMap<String, usize>,
}

/// A path template the router cannot take; every message names the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("path template `{0}` must start with `/`")]
    NoLeadingSlash(String),
    #[error("path template `{0}` has an unclosed `{{`")]
    Unclosed(String),
    #[error("path template `{template}`: parameter `{{{param}}}` must be a name of [A-Za-z0-9_]")]
    BadParameter { template: String, param: String },
    #[error("path template `{template}` uses parameter `{name}` twice")]
    Repeated { template: String, name: String },
    #[error("path template `{0}` has a `}}` without `{{`")]
    Unopened(String),
    #[error(
        "path template `{template}` has {count} parameters; at most {MAX_PARAMETERS} are allowed (a `{{*rest}}` catch-all does not count)"
    )]
    TooManyParameters { template: String, count: usize },
    /// What matchit refuses (a catch-all that is not last, a conflict).
    #[error("path template `{template}`: {reason}")]
    Rejected { template: String, reason: String },
}

/// The most `{name}` parameters one template may have: the router (matchit) names them with
/// one letter each internally and panics on the 26th.
pub const MAX_PARAMETERS: usize = 25;

/// A template in canonical form plus its parameter names, in order.
fn canonicalize(template: &str) -> Result<(String, Vec<String>), TemplateError> {
    if !template.starts_with('/') {
        return Err(TemplateError::NoLeadingSlash(template.to_owned()));
    }
    let mut canonical = String::with_capacity(template.len());
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        canonical.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
        let (catch_all, name) = match after[..close].strip_prefix('*') {
            Some(n) => (true, n),
            None => (false, &after[..close]),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(TemplateError::BadParameter {
                template: template.to_owned(),
                param: after[..close].to_owned(),
            });
        }
        if names.iter().any(|n| n == name) {
            return Err(TemplateError::Repeated {
                template: template.to_owned(),
                name: name.to_owned(),
            });
        }
        let star = if catch_all { "*" } else { "" };
        canonical.push_str(&format!("{{{star}p{}}}", names.len()));
        names.push(name.to_owned());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(TemplateError::Unopened(template.to_owned()));
    }
    let count = canonical.matches("{p").count();
    if count > MAX_PARAMETERS {
        return Err(TemplateError::TooManyParameters {
            template: template.to_owned(),
            count,
        });
    }
    canonical.push_str(rest);
    Ok((canonical, names))
}

impl Router {
    /// Adds rule `rule` for `template`; `methods` empty means any method. Returns the route's
    /// index (shared by templates that differ only in parameter names).
    pub fn insert(
        &mut self,
        template: &str,
        methods: Vec<http::Method>,
        rule: usize,
    ) -> Result<usize, TemplateError> {
        let (canonical, param_names) = canonicalize(template)?;
        let route = match self.index.get(&canonical) {
            Some(&i) => i,
            None => {
                let i = self.routes.len();
                self.tree
                    .insert(canonical.clone(), i)
                    .map_err(|e| TemplateError::Rejected {
                        template: template.to_owned(),
                        reason: e.to_string(),
                    })?;
                self.routes.push(Vec::new());
                self.index.insert(canonical, i);
                i
            }
        };
        self.routes[route].push(Target {
            rule,
            methods,
            param_names,
        });
        Ok(route)
    }

    /// How many distinct routes (templates up to parameter names) the rules use.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The rules that could match; `None` (the common case) costs one tree lookup and nothing else.
    pub fn candidates(&self, method: &http::Method, path: &str) -> Option<Candidates> {
        let found = self.tree.at(path).ok()?;
        let targets = &self.routes[*found.value];
        if !targets
            .iter()
            .any(|t| t.methods.is_empty() || t.methods.contains(method))
        {
            return None;
        }
        let values: Vec<String> = found
            .params
            .iter()
            .map(|(_, v)| percent_decode_str(v).decode_utf8_lossy().into_owned())
            .collect();
        let matches = targets
            .iter()
            .filter(|t| t.methods.is_empty() || t.methods.contains(method))
            .map(|t| {
                let params = t
                    .param_names
                    .iter()
                    .cloned()
                    .zip(values.iter().cloned())
                    .collect();
                (t.rule, params)
            })
            .collect();
        Some(Candidates {
            matches,
            route: *found.value,
            reads: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn rules_with_different_param_names_share_a_route() {
        let mut r = Router::default();
        r.insert("/orders/{id}", vec![Method::PUT], 0)
            .expect("valid");
        r.insert("/orders/{order_id}", vec![], 1).expect("valid");
        r.insert("/orders/new", vec![Method::POST], 2)
            .expect("valid");
        let c = r
            .candidates(&Method::PUT, "/orders/a%20b")
            .expect("candidates");
        assert_eq!(
            c.matches,
            vec![
                (0, vec![("id".to_owned(), "a b".to_owned())]),
                (1, vec![("order_id".to_owned(), "a b".to_owned())]),
            ]
        );
        let c = r.candidates(&Method::GET, "/orders/7").expect("candidates");
        assert_eq!(c.matches.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1]);
        assert!(r.candidates(&Method::GET, "/orders/new").is_none());
        assert!(r.candidates(&Method::GET, "/other").is_none());
    }

    /// Regression (hostile round two): 26 parameters panicked inside matchit.
    #[test]
    fn too_many_parameters_are_an_error_not_a_panic() {
        let template =
            |n: usize| (0..n).map(|i| format!("/{{p{i}}}")).collect::<String>() + "/{*rest}";
        let mut r = Router::default();
        r.insert(&template(MAX_PARAMETERS), vec![], 0)
            .expect("the limit itself is fine");
        for n in [MAX_PARAMETERS + 1, 100] {
            let e = r.insert(&template(n), vec![], 1).expect_err("too many");
            assert_eq!(
                e,
                TemplateError::TooManyParameters {
                    template: template(n),
                    count: n
                }
            );
            assert!(e.to_string().contains("at most 25"), "{e}");
        }
    }

    #[test]
    fn catch_all_parameters() {
        let mut r = Router::default();
        r.insert("/files/{*rest}", vec![], 0).expect("valid");
        let c = r
            .candidates(&Method::GET, "/files/a/b.pdf")
            .expect("candidates");
        assert_eq!(
            c.matches[0].1,
            vec![("rest".to_owned(), "a/b.pdf".to_owned())]
        );
    }

    #[test]
    fn bad_templates_are_rejected() {
        let mut r = Router::default();
        for bad in [
            "orders",
            "/orders/{",
            "/orders/{}",
            "/a/{x}/{x}",
            "/a/{*rest}/b",
            "/a}",
        ] {
            let e = r.insert(bad, vec![], 0).expect_err(bad);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }
}
