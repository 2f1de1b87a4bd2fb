//! Where a webhook sends: URL checks (with the SSRF guard), credential masking, and the
//! topic patterns it subscribes to.

use url::Url;

use crate::ssrf::{Blocked, Guard};

/// A webhook URL that deliveries cannot use; credentials are masked in every message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url `{url}` is not a valid URL: {reason}")]
    Invalid {
        url: String,
        reason: url::ParseError,
    },
    #[error("url `{0}` must be an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error("url `{0}` is plain http, but [delivery] https_only = true")]
    PlainHttp(String),
    #[error("url `{url}`: {blocked}")]
    Blocked { url: String, blocked: Blocked },
}

/// Checks a webhook URL: http(s) with a host, https when `https_only`, and (for IP literals)
/// a destination the SSRF guard permits. Hostnames are checked when they are resolved.
pub fn check_url(url: &str, https_only: bool, guard: &Guard) -> Result<Url, UrlError> {
    let parsed = Url::parse(url).map_err(|reason| UrlError::Invalid {
        url: url.to_owned(),
        reason,
    })?;
    let shown = mask_url(&parsed);
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(UrlError::NotHttp(shown));
    }
    if https_only && parsed.scheme() != "https" {
        return Err(UrlError::PlainHttp(shown));
    }
    guard
        .check_url(&parsed)
        .map_err(|blocked| UrlError::Blocked {
            url: shown,
            blocked,
        })?;
    Ok(parsed)
}

/// Topic patterns a webhook cannot subscribe with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TopicsError {
    #[error("`topics` must list at least one pattern")]
    Empty,
    #[error(
        "`topics` lists {0} patterns; at most {MAX_TOPIC_PATTERNS} are allowed (use a glob such as `order.*`)"
    )]
    TooMany(usize),
    #[error("topic pattern `{0}` can never match: topics are lower-case, without spaces")]
    NeverMatches(String),
    #[error("topic pattern `{pattern}` is invalid: {source}")]
    Invalid {
        pattern: String,
        source: globset::Error,
    },
    #[error("topic patterns are invalid: {0}")]
    Set(globset::Error),
}

/// The most topic patterns one webhook may list: far more than a subscription needs (globs
/// cover families of topics), and a bound on the time and memory a webhook costs to compile
/// (100,000 patterns took 7.6 s and 67 MB).
pub const MAX_TOPIC_PATTERNS: usize = 1000;

/// Compiles topic glob patterns (`order.*`, `*`); at least one is required.
pub fn compile_topics(topics: &[String]) -> Result<globset::GlobSet, TopicsError> {
    if topics.is_empty() {
        return Err(TopicsError::Empty);
    }
    if topics.len() > MAX_TOPIC_PATTERNS {
        return Err(TopicsError::TooMany(topics.len()));
    }
    let mut set = globset::GlobSetBuilder::new();
    for t in topics {
        // Topics are lower-case `[a-z0-9_.-]`; a pattern with other letters can never match.
        if t.chars().any(|c| c.is_uppercase() || c.is_whitespace()) {
            return Err(TopicsError::NeverMatches(t.clone()));
        }
        set.add(
            globset::Glob::new(t).map_err(|source| TopicsError::Invalid {
                pattern: t.clone(),
                source,
            })?,
        );
    }
    set.build().map_err(TopicsError::Set)
}

/// The URL with any password (and user name) replaced by `****`, for logs and output.
pub fn mask_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut masked = url.clone();
    // Setting credentials only fails for URLs that cannot have them (no host), which a
    // validated webhook URL always has; fall back to dropping them entirely.
    if masked
        .set_username("****")
        .and(masked.set_password(None))
        .is_err()
    {
        return format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    }
    masked.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_say_why_with_credentials_masked() {
        let guard = Guard::default();
        let e = check_url("http://shop:pa55@hooks.example.com/in", true, &guard).unwrap_err();
        assert_eq!(
            e,
            UrlError::PlainHttp("http://****@hooks.example.com/in".into())
        );
        assert!(!e.to_string().contains("pa55"));
        assert!(matches!(
            check_url("ftp://x/", false, &guard),
            Err(UrlError::NotHttp(_))
        ));
        assert!(matches!(
            check_url("http://127.0.0.1/", false, &guard),
            Err(UrlError::Blocked { .. })
        ));
        assert!(matches!(
            check_url("not a url", false, &guard),
            Err(UrlError::Invalid { .. })
        ));
        assert!(check_url("https://hooks.example.com/in", true, &guard).is_ok());
    }

    #[test]
    fn credentials_are_masked() {
        let u = Url::parse("https://shop:pa55@hooks.example.com/in?x=1").expect("valid");
        let m = mask_url(&u);
        assert_eq!(m, "https://****@hooks.example.com/in?x=1");
        assert!(!m.contains("pa55") && !m.contains("shop"));
        let u = Url::parse("https://hooks.example.com/in").expect("valid");
        assert_eq!(mask_url(&u), "https://hooks.example.com/in");
    }

    /// Regression (hostile round two): a webhook with 100,000 topic globs took seconds and
    /// tens of MB to create.
    #[test]
    fn topic_lists_are_bounded() {
        let topics = |n: usize| (0..n).map(|i| format!("t{i}.*")).collect::<Vec<_>>();
        assert!(compile_topics(&topics(MAX_TOPIC_PATTERNS)).is_ok());
        let e = compile_topics(&topics(100_000)).expect_err("too many");
        assert!(
            e.to_string().contains("100000 patterns; at most 1000"),
            "{e}"
        );
    }
}
