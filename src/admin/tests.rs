//! The admin router in process (`oneshot`, no socket): authentication, the shapes of answers
//! and of errors. End-to-end tests in tests/it/ cover the API through the real binary.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AdminState, router};
use crate::delivery::Engine;
use crate::live::Live;
use crate::rules::RuleSet;

const TOKEN: &str = "test-token";

struct Admin {
    _dir: tempfile::TempDir,
    router: Router,
    engine: Arc<Engine>,
}

fn admin() -> Admin {
    admin_with(Some(TOKEN))
}

fn admin_with(token: Option<&str>) -> Admin {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::for_tests(dir.path());
    let live = Arc::new(Live::new(
        dir.path().join("hooktap.toml"),
        RuleSet::default(),
        Arc::clone(&engine),
    ));
    let proxy = "127.0.0.1:9".parse().expect("addr");
    Admin {
        router: router(AdminState::new(live, token, proxy)),
        engine,
        _dir: dir,
    }
}

/// Sends one request; returns the status, the headers and the body as JSON (Null if empty).
async fn call(
    admin: &Admin,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    call_with(
        admin,
        method,
        uri,
        token,
        body,
        &[("host", "127.0.0.1:9090")],
    )
    .await
}

async fn call_with(
    admin: &Admin,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let response = admin
        .router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (parts.status, parts.headers, json)
}

fn webhook_body() -> Value {
    // An IP literal the SSRF guard permits, so no name is resolved.
    json!({"name": "crm", "url": "https://93.184.216.34/hooks", "secret": "s3cret", "topics": ["order.*"]})
}

#[tokio::test]
async fn every_endpoint_but_health_needs_the_token() {
    let admin = admin();
    for uri in [
        "/webhooks",
        "/events",
        "/rules",
        "/metrics",
        "/openapi.json",
    ] {
        let (status, headers, body) = call(&admin, "GET", uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["code"], "unauthorized");
        let (status, ..) = call(&admin, "GET", uri, Some("wrong"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
    }
    let (status, _, body) = call(&admin, "GET", "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _, body) = call(&admin, "GET", "/readyz", None, None).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing listens at the proxy address"
    );
    assert_eq!(body, json!({"proxy": false, "store": true}));
}

#[tokio::test]
async fn a_webhook_is_created_listed_and_never_shows_its_secret() {
    let admin = admin();
    let (status, _, created) = call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(webhook_body()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "crm");
    assert_eq!(created["status"], "active");
    assert!(
        !created.to_string().contains("s3cret"),
        "the secret is write-only"
    );
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, headers, list) = call(&admin, "GET", "/webhooks", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-total-count"], "1");
    assert_eq!(list[0]["id"], id.as_str());
    let (_, _, count) = call(
        &admin,
        "GET",
        "/webhooks/count?status=paused",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(count, json!({"count": 0}));

    let (status, _, got) = call(&admin, "GET", &format!("/webhooks/{id}"), Some(TOKEN), None).await;
    assert_eq!(
        (status, &got["url"]),
        (StatusCode::OK, &json!("https://93.184.216.34/hooks"))
    );
    assert_eq!(admin.engine.webhooks().len(), 1, "the engine runs it");

    let (status, _, deleted) = call(
        &admin,
        "DELETE",
        &format!("/webhooks/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({"id": id, "deleted": true, "dropped_deliveries": 0})
    );
    assert!(admin.engine.webhooks().is_empty());
}

#[tokio::test]
async fn errors_name_the_field_and_use_fitting_statuses() {
    let admin = admin();
    let mut bad = webhook_body();
    bad["url"] = json!("ftp://nowhere");
    let (status, _, body) = call(&admin, "POST", "/webhooks", Some(TOKEN), Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (&body["code"], &body["field"]),
        (&json!("invalid"), &json!("url"))
    );

    let (status, _, body) = call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(json!({"url": "https://93.184.216.34/", "unknown": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("unknown"),
        "{body}"
    );

    call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(webhook_body()),
    )
    .await;
    let (status, _, body) = call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(webhook_body()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    for uri in [
        "/webhooks/not-a-uuid",
        "/webhooks/0190b2a4-6d5e-7c1a-8f00-000000000000",
        "/events/nope",
    ] {
        let (status, _, body) = call(&admin, "GET", uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(body["code"], "not_found");
    }
    let (status, _, body) = call(&admin, "GET", "/events?per_page=0", Some(TOKEN), None).await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &json!("per_page"))
    );
}

#[tokio::test]
async fn editing_a_webhook_keeps_the_status_set_through_the_api() {
    let admin = admin();
    let mut body = webhook_body();
    body["status"] = json!("paused");
    let (_, _, created) = call(&admin, "POST", "/webhooks", Some(TOKEN), Some(body)).await;
    let uri = format!("/webhooks/{}", created["id"].as_str().expect("id"));
    assert_eq!(created["status"], "paused");
    let (status, _, edited) = call(
        &admin,
        "PUT",
        &uri,
        Some(TOKEN),
        Some(json!({"retry": "1s,2s"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(edited["status"], "paused");
    assert_eq!(edited["retry"], json!(["1s", "2s"]));
}

#[tokio::test]
async fn a_reload_with_a_broken_config_is_refused_and_keeps_the_running_one() {
    let admin = admin();
    // The config path names no file.
    let (status, _, body) = call(&admin, "POST", "/reload", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "invalid_config");
}

#[tokio::test]
async fn the_openapi_document_lists_the_routes() {
    let admin = admin();
    let (status, _, doc) = call(&admin, "GET", "/openapi.json", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/webhooks",
        "/webhooks/{id}",
        "/events",
        "/reload",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
}

/// Without a token, a web page open on this machine must not reach the API: not by DNS
/// rebinding (a foreign Host) and not cross-site (a foreign Origin).
#[tokio::test]
async fn without_a_token_only_loopback_requests_from_no_other_site_pass() {
    let open = admin_with(None);
    let refused = [
        vec![("host", "attacker.example:9090")],
        vec![
            ("host", "127.0.0.1:9090"),
            ("origin", "http://attacker.example:9090"),
        ],
        vec![
            ("host", "attacker.example"),
            ("origin", "http://127.0.0.1:9090"),
        ],
        vec![("host", "127.0.0.1.attacker.example:9090")],
        vec![("host", "localhost.attacker.example")],
    ];
    for headers in &refused {
        let (status, _, body) = call_with(&open, "POST", "/reload", None, None, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert_eq!(body["code"], "forbidden");
        let (status, ..) = call_with(&open, "GET", "/webhooks", None, None, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    let allowed = [
        vec![("host", "127.0.0.1:9090")],
        vec![
            ("host", "localhost:9090"),
            ("origin", "http://localhost:9090"),
        ],
        vec![("host", "[::1]:9090"), ("origin", "http://[::1]:9090")],
        vec![("host", "dashboard.localhost")],
    ];
    for headers in &allowed {
        let (status, _, body) = call_with(&open, "GET", "/webhooks", None, None, headers).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
    }
    // With a token, the token is what counts.
    let admin = admin();
    let (status, ..) = call_with(
        &admin,
        "GET",
        "/webhooks",
        Some(TOKEN),
        None,
        &[
            ("host", "hooktap.internal:9090"),
            ("origin", "https://ops.example"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
