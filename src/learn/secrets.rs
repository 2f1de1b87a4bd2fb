//! Credentials: recognising them, and keeping them out of everything `learn` prints.
//!
//! Two layers. [`Redactor`] takes credentials out of what goes into a proposal: credential
//! headers are never copied, JSON and form fields whose name says credential (`password`,
//! `api_key`, `accessToken`, `session_id`, ...) are dropped, string values that look like
//! tokens (JWTs, `sk_live_...`, long random strings) are replaced. [`Vault`] then remembers every
//! credential value seen in the input and refuses output that contains one: a proposal that
//! would leak is an error, never printed.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde_json::{Map, Value};

/// What replaces a value that looks like a credential.
pub const REDACTED: &str = "redacted";

/// Headers that carry credentials, by name (lower-case).
pub fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie" | "set-cookie2"
    ) || is_secret_key(&n)
}

/// The words of a name: `accessToken`, `access_token`, `access-token` → `access`, `token`.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "pass",
    "secret",
    "token",
    "apikey",
    "auth",
    "authorization",
    "authentication",
    "cookie",
    "session",
    "sessionid",
    "sid",
    "credential",
    "credentials",
    "cvv",
    "cvc",
    "otp",
    "pin",
    "jwt",
    "bearer",
    "signature",
    "sig",
    "key",
    "privatekey",
    "csrf",
    "xsrf",
    "nonce",
    "cardnumber",
    "pan",
    "iban",
    "ssn",
];

/// Words that certainly name a credential: what [`Vault`] remembers (a narrower list than
/// [`SECRET_WORDS`], so that a field such as `key` or `pin` holding an ordinary value does not
/// make the vault refuse output that repeats that value elsewhere).
const CREDENTIAL_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "cvv",
    "cvc",
    "jwt",
    "bearer",
    "privatekey",
    "csrf",
    "xsrf",
    "sessionid",
];

/// A name that certainly says credential (`password`, `access_token`, `api_key`, `session_id`).
pub fn is_credential_key(name: &str) -> bool {
    let w = words(name);
    let pair = |a: &str, b: &str| w.windows(2).any(|p| p[0] == a && p[1] == b);
    w.iter()
        .any(|word| CREDENTIAL_WORDS.contains(&word.as_str()))
        || pair("api", "key")
        || pair("private", "key")
        || pair("session", "id")
        || pair("access", "key")
        || pair("secret", "key")
}

/// A field, header or query name that says it holds a credential.
pub fn is_secret_key(name: &str) -> bool {
    let w = words(name);
    let joined = w.concat();
    w.iter().any(|word| SECRET_WORDS.contains(&word.as_str()))
        || [
            "password",
            "secret",
            "token",
            "apikey",
            "credential",
            "privatekey",
        ]
        .iter()
        .any(|s| joined.contains(s))
}

/// A string value that looks like a credential whatever its name: a bearer or basic
/// authorization, a JWT, a key with a well-known prefix, a long random string.
pub fn looks_like_secret(s: &str) -> bool {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") || lower.starts_with("token ") {
        return true;
    }
    if t.starts_with("eyJ") && t.matches('.').count() >= 2 {
        return true;
    }
    const PREFIXES: &[&str] = &[
        "sk_",
        "pk_live",
        "rk_",
        "ghp_",
        "gho_",
        "ghs_",
        "github_pat_",
        "xox",
        "akia",
        "asia",
        "glpat-",
        "shpat_",
        "sq0",
        "ya29.",
    ];
    if t.len() >= 12 && PREFIXES.iter().any(|p| lower.starts_with(p)) {
        return true;
    }
    if t.len() < 24 || t.contains(char::is_whitespace) {
        return false;
    }
    let token_chars = t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.+/=".contains(&b));
    if !token_chars || t.starts_with('/') || t.contains("://") {
        return false;
    }
    let upper = t.bytes().any(|b| b.is_ascii_uppercase());
    let lower_c = t.bytes().any(|b| b.is_ascii_lowercase());
    let digit = t.bytes().any(|b| b.is_ascii_digit());
    let hex_only = t.bytes().all(|b| b.is_ascii_hexdigit());
    (upper && lower_c && digit) || (hex_only && t.len() >= 40)
}

/// Every credential value seen in the input; output containing one is refused.
#[derive(Debug, Default)]
pub struct Vault {
    values: BTreeSet<String>,
}

/// Shorter values are too common to search for without false alarms (`1`, `yes`).
const MIN_REMEMBERED: usize = 6;

impl Vault {
    fn remember(&mut self, value: &str) {
        let v = value.trim();
        if v.len() >= MIN_REMEMBERED {
            self.values.insert(v.to_owned());
        }
        // The credential inside `Bearer xyz`, `a=1; sid=xyz`.
        for part in v.split([' ', ';', ',', '=', '&']) {
            let part = part.trim();
            if part.len() >= MIN_REMEMBERED && !is_scheme(part) {
                self.values.insert(part.to_owned());
            }
        }
    }

    /// Remembers the credentials in a set of headers.
    pub fn headers(&mut self, headers: &HeaderMap) {
        for (name, value) in headers {
            let v = String::from_utf8_lossy(value.as_bytes());
            let n = name.as_str();
            match n {
                // Only the values: cookie names (`session`), attributes (`Path`, `HttpOnly`)
                // and dates are ordinary words that also appear in rules (`session.created`).
                "cookie" => {
                    for pair in v.split(';') {
                        if let Some((_, value)) = pair.split_once('=') {
                            self.remember(value);
                        }
                    }
                    continue;
                }
                "set-cookie" => {
                    let first = v.split(';').next().unwrap_or_default();
                    if let Some((_, value)) = first.split_once('=') {
                        self.remember(value);
                    }
                    continue;
                }
                _ => {}
            }
            let credential =
                matches!(n, "authorization" | "proxy-authorization") || is_credential_key(n);
            if credential || looks_like_secret(&v) {
                self.remember(&v);
            }
        }
    }

    /// Remembers the credentials in a query string or form body.
    pub fn pairs(&mut self, text: &str) {
        for (k, v) in form_urlencoded::parse(text.as_bytes()) {
            if is_credential_key(&k) || looks_like_secret(&v) {
                self.remember(&v);
            }
        }
    }

    /// Remembers the credentials in a JSON value (by field name or by look).
    pub fn json(&mut self, value: &Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(_) | Value::Number(_) if is_credential_key(k) => {
                            self.scalar(v);
                        }
                        Value::Array(items) if is_credential_key(k) => {
                            items.iter().for_each(|i| self.scalar(i));
                        }
                        _ => self.json(v),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.json(v)),
            Value::String(s) if looks_like_secret(s) => self.remember(s),
            _ => {}
        }
    }

    fn scalar(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.remember(s),
            Value::Number(n) => self.remember(&n.to_string()),
            other => self.json(other),
        }
    }

    /// Remembers a path segment that holds a credential.
    pub fn value(&mut self, s: &str) {
        self.remember(s);
    }

    /// The first remembered credential that appears in `text`, if any.
    pub fn leak_in(&self, text: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|v| text.contains(v.as_str()))
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

fn is_scheme(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "bearer" | "basic" | "token"
    )
}

/// Whether a field anywhere in `value` (at any depth, in arrays too) is named as a credential:
/// `{"data": {"token": ..}}`, `{"users": [{"password": ..}]}`.
pub fn holds_secret(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| is_secret_key(k) || holds_secret(v)),
        Value::Array(items) => items.iter().any(holds_secret),
        _ => false,
    }
}

/// A JSON value with credentials taken out: secret-named fields dropped, token-like strings
/// replaced by [`REDACTED`].
pub fn redact_json(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !is_secret_key(k))
                .map(|(k, v)| (k.clone(), redact_json(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        Value::String(s) if looks_like_secret(s) => Value::String(REDACTED.into()),
        other => other.clone(),
    }
}

/// A form body or query string with secret-named pairs dropped and token-like values replaced.
pub fn redact_pairs(text: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            form_urlencoded::parse(text.as_bytes())
                .filter(|(k, _)| !is_secret_key(k))
                .map(|(k, v)| {
                    let v = if looks_like_secret(&v) {
                        REDACTED.into()
                    } else {
                        v
                    };
                    (k, v)
                }),
        )
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_give_their_values_not_their_names_attributes_or_dates() {
        let mut vault = Vault::default();
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            http::HeaderValue::from_static("session=ck-planted-1; preferences=dark-mode-on"),
        );
        h.append(
            "set-cookie",
            http::HeaderValue::from_static(
                "session=sc-planted-2; Path=/; Domain=shop.example; \
                 Expires=Wednesday, 21-Oct-2026 07:28:00 GMT; HttpOnly; Secure; SameSite=Strict",
            ),
        );
        vault.headers(&h);
        assert_eq!(vault.leak_in("x ck-planted-1"), Some("ck-planted-1"));
        assert_eq!(vault.leak_in("x sc-planted-2"), Some("sc-planted-2"));
        assert_eq!(vault.leak_in("x dark-mode-on"), Some("dark-mode-on"));
        for ordinary in [
            "topic = \"session.created\"",
            "preferences",
            "shop.example",
            "Wednesday",
            "07:28:00",
            "HttpOnly SameSite Strict",
        ] {
            assert_eq!(vault.leak_in(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn names_that_say_credential() {
        for k in [
            "password",
            "new_password",
            "accessToken",
            "api_key",
            "X-Api-Key",
            "client_secret",
            "sessionId",
            "refresh-token",
            "card_cvc",
            "Authorization",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "email",
            "author",
            "status",
            "order_id",
            "passenger",
            "tickets",
            "keyboard_layout",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn the_vault_remembers_credentials_not_ordinary_values_under_loose_names() {
        let mut vault = Vault::default();
        vault.json(&serde_json::json!({
            "key": "summer-festival",
            "pin": "north-gate",
            "session": {"user": "ada@example.com", "id": "s-123456"},
            "api_key": "k-planted-1",
            "user": {"password": ["old-planted-2"]},
        }));
        assert_eq!(
            vault.leak_in("/events/summer-festival north-gate ada@example.com"),
            None
        );
        assert_eq!(vault.leak_in("x k-planted-1"), Some("k-planted-1"));
        assert_eq!(vault.leak_in("x old-planted-2"), Some("old-planted-2"));
        let mut h = HeaderMap::new();
        h.insert(
            "x-auth-token",
            http::HeaderValue::from_static("hdr-planted-3"),
        );
        h.insert(
            "x-request-key",
            http::HeaderValue::from_static("ordinary-value"),
        );
        vault.headers(&h);
        assert_eq!(vault.leak_in("hdr-planted-3"), Some("hdr-planted-3"));
        assert_eq!(vault.leak_in("ordinary-value"), None);
    }

    #[test]
    fn values_that_look_like_credentials() {
        for v in [
            "Bearer abc",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "sk_live_51HxYzAbCdEf",
            "ghp_A1b2C3d4E5f6G7h8",
            "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA",
        ] {
            assert!(looks_like_secret(v), "{v}");
        }
        for v in [
            "0b6e3f5a-4d52-4a8e-9c43-0f1b2a3c4d5e",
            "ada@example.com",
            "QVMCL",
            "/orders/7",
            "2026-06-01T19:00:00Z",
            "a perfectly ordinary sentence of words",
        ] {
            assert!(!looks_like_secret(v), "{v}");
        }
    }

    #[test]
    fn redaction_drops_and_replaces() {
        let v = serde_json::json!({"email": "a@b.c", "password": "hunter22", "nested": {"token": "t0k3n-value", "note": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"}});
        assert_eq!(
            redact_json(&v),
            serde_json::json!({"email": "a@b.c", "nested": {"note": "redacted"}})
        );
        assert_eq!(
            redact_pairs("user=ada&password=x&gate=n"),
            "user=ada&gate=n"
        );
        let mut vault = Vault::default();
        vault.json(&v);
        vault.pairs("password=hunter2-form");
        assert_eq!(vault.leak_in("… hunter22 …"), Some("hunter22"));
        assert_eq!(vault.leak_in("x hunter2-form"), Some("hunter2-form"));
        assert_eq!(vault.leak_in("nothing here"), None);
    }
}
