//! The console: the browser pages at `/` (see docs/console.md). Three static files embedded in
//! the binary (an HTML shell, a script and a style sheet) that carry no data: the script asks
//! for the admin token and calls the API with it. They are served without the token, each with
//! a Content-Security-Policy that allows only these files and requests to this origin (no
//! inline script or style, no other site), so a strict policy needs no `'unsafe-inline'`.
//!
//! Nothing here reads state or the network; the pages' data comes from the API.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page: the sign-in form, the navigation and an empty main area the script fills.
const PAGE: &str = include_str!("console/index.html");
/// Every page of the console: routing, API calls, forms, charts, the live stream.
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// What the console's files may do: load the script and style sheet from here, call this API
/// (`connect-src`), draw inline SVG; nothing inline, no frames, no forms posted elsewhere, and
/// no embedding in another site's frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file with its type and the headers every console file carries.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary may bring new files: the browser asks again rather than mixing versions.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the console's page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The script and style sheet the page loads (the page itself is routed in `router()`).
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads exactly the two embedded files and holds no inline script, style or
    /// event handler, which the policy would block.
    #[test]
    fn the_page_has_nothing_inline_that_the_policy_blocks() {
        assert!(PAGE.contains(r#"<script src="/console.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/console.css">"#));
        assert_eq!(
            PAGE.matches("<script").count(),
            1,
            "one script, from a file"
        );
        assert!(!PAGE.contains("<style"), "no inline style sheet");
        for inline in [" style=", " onclick=", " onsubmit=", "javascript:"] {
            assert!(!PAGE.contains(inline), "{inline} in the page");
        }
        // The script may set element.style (CSSOM, allowed) but never a style attribute.
        assert!(!SCRIPT.contains("setAttribute(\"style\""));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "text is set as text, never as markup"
        );
    }

    /// Each file is served with its type, the policy and `nosniff`, without a token.
    #[tokio::test]
    async fn each_file_is_served_with_its_type_and_the_policy() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let app: Router = Router::new().route("/", get(page)).merge(assets());
        for (path, content_type, body) in [
            ("/", "text/html; charset=utf-8", PAGE),
            ("/console.js", "text/javascript; charset=utf-8", SCRIPT),
            ("/console.css", "text/css; charset=utf-8", STYLE),
        ] {
            let request = Request::get(path).body(Body::empty()).expect("request");
            let r = app.clone().oneshot(request).await.expect("answer");
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(
                h[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY,
                "{path}"
            );
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body");
            assert_eq!(bytes, body.as_bytes(), "{path}");
        }
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_no_other_origin() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(!CONTENT_SECURITY_POLICY.contains("http"));
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
    }
}
