//! The admin router in process (`oneshot`, no socket): authentication, the shapes of answers
//! and of errors. End-to-end tests in tests/it/ cover the API through the real binary.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::openapi::{document, operations};
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
    // Webhooks reach the loopback receiver only (see `RECEIVER`).
    let guard = crate::ssrf::Guard::new(&["127.0.0.1/32".to_owned()]).expect("a network");
    let engine = Engine::for_tests_with_guard(dir.path(), guard);
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
        body.map(|b| b.to_string()),
        &[("host", "127.0.0.1:9090")],
    )
    .await
}

/// Sends one request with a JSON body given as text (so that it can hold numbers no `Value`
/// holds, or be malformed). An event stream's body is not read: it never ends.
async fn call_with(
    admin: &Admin,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
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
            Body::from(b)
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
    if parts.headers.get(header::CONTENT_TYPE) == Some(&"text/event-stream".parse().expect("hv")) {
        return (parts.status, parts.headers, Value::Null);
    }
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (parts.status, parts.headers, json)
}

/// A receiver on loopback answering every request `204 No Content`, for the whole test
/// binary: the webhooks of these tests point at it, so that a webhook created or set `active`
/// (which pings its URL first) never sends anything off the machine.
static RECEIVER: std::sync::LazyLock<std::net::SocketAddr> = std::sync::LazyLock::new(|| {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer_no_content(stream));
        }
    });
    addr
});

/// Reads HTTP/1.1 requests (head and `content-length` body) off one connection and answers
/// each `204`, until the client closes it.
fn answer_no_content(stream: std::net::TcpStream) {
    use std::io::{BufRead, Read, Write};
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut lines = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            lines += 1;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        if lines == 1 {
            continue;
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err()
            || writer
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .is_err()
        {
            return;
        }
    }
}

/// The URL of [`RECEIVER`].
fn receiver_url() -> String {
    format!("http://{}/hooks", *RECEIVER)
}

fn webhook_body() -> Value {
    // The loopback receiver, so that no name is resolved and nothing leaves the machine; paused,
    // so that creating it sends no activation ping (tests that leave `status` out ping it).
    json!({"name": "crm", "url": receiver_url(), "secret": "s3cret", "topics": ["order.*"], "status": "paused"})
}

/// Creates the webhook of [`webhook_body`] through the API; returns its id.
async fn created_webhook(admin: &Admin) -> uuid::Uuid {
    let (_, _, created) = call(
        admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(webhook_body()),
    )
    .await;
    created["id"].as_str().expect("id").parse().expect("uuid")
}

/// Stores an event with one delivery to `webhook`; returns the delivery.
fn appended(admin: &Admin, webhook: uuid::Uuid) -> crate::event::Delivery {
    let topic = crate::event::Topic::parse("order.created").expect("topic");
    let e = crate::event::Event::new(&topic, "r", json!({}));
    let d = crate::event::Delivery::new(&e, webhook, 0);
    admin
        .engine
        .store()
        .append(&e, std::slice::from_ref(&d))
        .expect("append");
    d
}

/// A webhook's delivery list counts its matches up to 10,000, and leaves the total out past
/// them rather than read the whole history for every page.
#[tokio::test]
async fn a_delivery_list_counts_up_to_ten_thousand() {
    let admin = admin();
    let id = created_webhook(&admin).await;
    let append = |n: u64| {
        for _ in 0..n {
            appended(&admin, id);
        }
    };
    let list = |query: &'static str| {
        let uri = format!("/webhooks/{id}/deliveries?{query}");
        let admin = &admin;
        async move {
            let (status, headers, list) = call(admin, "GET", &uri, Some(TOKEN), None).await;
            assert_eq!(status, StatusCode::OK, "{list}");
            let total = headers
                .get("x-total-count")
                .map(|v| v.to_str().expect("ascii").to_owned());
            (list.as_array().expect("a list").len(), total)
        }
    };
    append(crate::store::DELIVERY_COUNT_CAP);
    assert_eq!(list("per_page=5").await, (5, Some("10000".to_owned())));
    append(1);
    assert_eq!(
        list("per_page=5").await,
        (5, None),
        "one more than it counts"
    );
    assert_eq!(
        list("per_page=5&page=2001").await,
        (1, None),
        "the last page"
    );
    assert_eq!(
        list("per_page=5&outcome=failed").await,
        (0, Some("0".to_owned())),
        "a filter counts its own matches"
    );
}

/// A deleted webhook's deliveries answer `404` at once, though its history is removed only
/// afterwards (this engine runs no keeper: it stays).
#[tokio::test]
async fn a_deleted_webhooks_deliveries_are_gone_from_the_api_at_once() {
    let admin = admin();
    let id = created_webhook(&admin).await;
    let d = appended(&admin, id);
    // Delivered: its record is written (a new one is held in memory, let go of at once).
    crate::store::contract::deliver(admin.engine.store(), &d).await;
    let one = format!("/webhooks/{id}/deliveries/{}", d.id);
    let (status, _, _) = call(&admin, "GET", &one, Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &admin,
        "DELETE",
        &format!("/webhooks/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        admin
            .engine
            .store()
            .delivery(d.id)
            .await
            .expect("read")
            .is_some(),
        "the history is still there"
    );
    for (method, uri) in [("GET", one.clone()), ("POST", format!("{one}/redeliver"))] {
        let (status, _, body) = call(&admin, method, &uri, Some(TOKEN), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
    }
}

/// The token is required exactly where the document says: every operation but those whose
/// `security` is empty (`/healthz`, `/readyz`).
#[tokio::test]
async fn the_token_is_required_exactly_where_the_document_says() {
    let admin = admin();
    let doc = document();
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let mut public = Vec::new();
    for (method, path) in operations() {
        let uri = with_ids(&path, SOME_ID, SOME_ID);
        let (status, headers, body) = call(&admin, &method, &uri, None, None).await;
        if doc["paths"][&path][method.to_lowercase()]["security"] == json!([]) {
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            public.push(path);
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["code"], "unauthorized");
        let (status, ..) = call(&admin, &method, &uri, Some("wrong"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
    }
    assert_eq!(public, ["/healthz", "/readyz"]);
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
    assert_eq!(created["status"], "paused");
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
        "/webhooks/count?status=active",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(count, json!({"count": 0}));

    let (status, _, got) = call(&admin, "GET", &format!("/webhooks/{id}"), Some(TOKEN), None).await;
    assert_eq!(
        (status, &got["url"]),
        (StatusCode::OK, &json!(receiver_url()))
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
        Some(json!({"url": receiver_url(), "unknown": 1})),
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
    // A query value serde refuses names its parameter, and the message the accepted names.
    let (status, _, body) = call(
        &admin,
        "GET",
        "/webhooks/count?status=on",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &json!("status"))
    );
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("`active`, `paused`, `disabled`"),
        "{message}"
    );
}

/// An active webhook is pinged when created: these tests' webhooks answer from loopback.
#[tokio::test]
async fn creating_an_active_webhook_pings_the_loopback_receiver() {
    let admin = admin();
    let mut body = webhook_body();
    body.as_object_mut().expect("an object").remove("status");
    let (status, _, created) = call(&admin, "POST", "/webhooks", Some(TOKEN), Some(body)).await;
    assert_eq!(
        (status, &created["status"]),
        (StatusCode::CREATED, &json!("active")),
        "{created}"
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

// --- the document against the router -------------------------------------------------------

/// A well-formed id that names nothing.
const SOME_ID: &str = "0190b2a4-6d5e-7c1a-8f00-000000000000";

/// `path` with its `{id}` and `{delivery_id}` filled in.
fn with_ids(path: &str, id: &str, delivery_id: &str) -> String {
    path.replace("{id}", id)
        .replace("{delivery_id}", delivery_id)
}

/// `value` with a `$ref` followed (within the document).
fn resolved(value: &Value) -> &Value {
    match value["$ref"].as_str() {
        Some(r) => document()
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{r} is not defined")),
        None => value,
    }
}

/// Asserts that the document lists `status` for `method path` (exactly, or as `4XX`/`5XX`),
/// with the media type the answer carries.
fn assert_documented(
    method: &str,
    path: &str,
    status: StatusCode,
    headers: &axum::http::HeaderMap,
) {
    let responses = &document()["paths"][path][method.to_lowercase()]["responses"];
    let class = format!("{}XX", status.as_u16() / 100);
    let documented = responses
        .get(status.as_str())
        .or_else(|| responses.get(&class))
        .map(resolved)
        .unwrap_or_else(|| panic!("{method} {path}: {status} is not documented"));
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    let content = documented["content"].as_object();
    match (media, content) {
        (Some(media), Some(content)) => assert!(
            content.contains_key(media),
            "{method} {path} {status}: answered {media}, documented {:?}",
            content.keys().collect::<Vec<_>>()
        ),
        (None, None) => {}
        (media, content) => {
            panic!("{method} {path} {status}: answered {media:?}, documented {content:?}")
        }
    }
}

/// Every operation answers with a status and a media type its document lists: calls each
/// one (but the ping, which would leave the machine, and the endless stream) on a webhook.
#[tokio::test]
async fn every_answer_has_a_documented_status_and_media_type() {
    let admin = admin();
    let (status, headers, created) = call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(webhook_body()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_documented("POST", "/webhooks", status, &headers);
    let id = created["id"].as_str().expect("id").to_owned();
    let calls: [(&str, &str, Option<Value>, StatusCode); 24] = [
        ("GET", "/webhooks", None, StatusCode::OK),
        ("GET", "/webhooks/count", None, StatusCode::OK),
        ("GET", "/webhooks/{id}", None, StatusCode::OK),
        (
            "PUT",
            "/webhooks/{id}",
            Some(json!({"retry": "1s"})),
            StatusCode::OK,
        ),
        (
            "POST",
            "/webhooks/{id}/duplicate",
            None,
            StatusCode::CREATED,
        ),
        ("POST", "/webhooks/{id}/reset", None, StatusCode::OK),
        (
            "POST",
            "/webhooks/{id}/recover",
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
            StatusCode::OK,
        ),
        ("GET", "/webhooks/{id}/deliveries", None, StatusCode::OK),
        ("GET", "/webhooks/{id}/stats", None, StatusCode::OK),
        ("GET", "/overview", None, StatusCode::OK),
        (
            "GET",
            "/webhooks/{id}/deliveries/{delivery_id}",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            None,
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/events", None, StatusCode::OK),
        ("GET", "/events/{id}", None, StatusCode::NOT_FOUND),
        (
            "GET",
            "/events/{id}/deliveries",
            None,
            StatusCode::NOT_FOUND,
        ),
        ("GET", "/rules", None, StatusCode::OK),
        (
            "POST",
            "/rules/try",
            Some(json!({"request": {"method": "POST", "url": "/orders"},
                        "response": {"status": 201}})),
            StatusCode::OK,
        ),
        (
            "POST",
            "/rules/try",
            Some(json!({"request": {"method": "POST", "url": "orders"},
                        "response": {"status": 201}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        // The fixture's config path names no file.
        ("POST", "/reload", None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/metrics", None, StatusCode::OK),
        ("GET", "/openapi.json", None, StatusCode::OK),
        ("GET", "/healthz", None, StatusCode::OK),
        ("GET", "/readyz", None, StatusCode::SERVICE_UNAVAILABLE),
        ("DELETE", "/webhooks/{id}", None, StatusCode::OK),
    ];
    let mut called = vec![("POST".to_owned(), "/webhooks".to_owned())];
    for (method, path, body, expected) in calls {
        let id = if path.starts_with("/events/") {
            SOME_ID
        } else {
            &id
        };
        let uri = with_ids(path, id, SOME_ID);
        let (status, headers, answer) = call(&admin, method, &uri, Some(TOKEN), body).await;
        assert_eq!(status, expected, "{method} {uri}: {answer}");
        assert_documented(method, path, status, &headers);
        called.push((method.to_owned(), path.to_owned()));
    }
    let mut documented = operations();
    documented.retain(|op| !called.contains(op));
    documented.sort();
    assert_eq!(
        documented,
        [
            ("GET".to_owned(), "/events/stream".to_owned()),
            ("POST".to_owned(), "/webhooks/{id}/ping".to_owned())
        ],
        "every other operation is called above"
    );
}

/// Values a parameter's schema admits and values it does not: the bounds of an integer, the
/// names of an enum, a time and not-a-time. An empty value is admitted only where the schema
/// admits the empty string (nowhere: an empty value is refused, not taken for no value).
fn query_samples(schema: &Value) -> (Vec<String>, Vec<String>) {
    let schema = resolved(schema);
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if let Some(names) = schema["enum"].as_array() {
        let valid = names.iter().filter_map(Value::as_str).map(str::to_owned);
        return (valid.collect(), strings(&["", "nope"]));
    }
    match (schema["type"].as_str(), schema["format"].as_str()) {
        (Some("integer"), _) => {
            let bound = |k: &str| {
                schema[k]
                    .as_i64()
                    .map(i128::from)
                    .unwrap_or_else(|| panic!("integer parameter without {k}: {schema}"))
            };
            let (min, max) = (bound("minimum"), bound("maximum"));
            (
                vec![min.to_string(), max.to_string()],
                vec![
                    (min - 1).to_string(),
                    (max + 1).to_string(),
                    String::new(),
                    "two".into(),
                ],
            )
        }
        (Some("string"), Some("date-time")) => (
            strings(&["2026-11-23T02:00:00Z", "2026-11-23T04:00:00.5+02:00"]),
            strings(&["", "yesterday", "2026-11-23"]),
        ),
        (Some("string"), None) => match schema["minLength"].as_u64() {
            Some(1) => (strings(&["x", "order.*"]), strings(&[""])),
            None => (strings(&["", "x"]), Vec::new()),
            Some(n) => panic!("no samples for minLength {n}"),
        },
        _ => panic!("no samples for {schema}"),
    }
}

/// Each query parameter takes exactly the values its schema admits: an admitted one is never
/// refused for that parameter, any other is a 400 that names it. Regression: `page` far past
/// the end (it overflowed the offset and panicked), an empty `?topic=` (taken as a glob that
/// matches nothing), `page` beyond `u32` (refused, undocumented).
#[tokio::test]
async fn query_parameters_take_exactly_the_values_the_document_admits() {
    let admin = admin();
    let mut checked = 0;
    for (method, path) in operations() {
        let operation = &document()["paths"][&path][method.to_lowercase()];
        let uri = with_ids(&path, SOME_ID, SOME_ID);
        let query = operation["parameters"].as_array().into_iter().flatten();
        for parameter in query.filter(|p| p["in"] == "query") {
            let name = parameter["name"].as_str().expect("a name");
            let (valid, invalid) = query_samples(&parameter["schema"]);
            for (value, admitted) in valid
                .iter()
                .map(|v| (v, true))
                .chain(invalid.iter().map(|v| (v, false)))
            {
                let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
                let uri = format!("{uri}?{name}={encoded}");
                let (status, _, body) = call(&admin, &method, &uri, Some(TOKEN), None).await;
                let refused = status == StatusCode::BAD_REQUEST && body["field"] == name;
                assert_eq!(!refused, admitted, "{method} {uri}: {status} {body}");
                if !admitted {
                    assert_eq!(body["code"], "invalid", "{method} {uri}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "{checked}");
    let (status, _, body) = call(
        &admin,
        "GET",
        "/webhooks?page=4294967295&per_page=100",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
}

/// A request body: `base` with `field` set to the JSON text `value` (or removed for `None`).
fn body_with(base: &Value, field: &str, value: Option<&str>) -> String {
    let mut body = base.clone();
    let object = body.as_object_mut().expect("an object");
    object.remove(field);
    let text = body.to_string();
    match value {
        None => text,
        Some(value) => {
            let field = serde_json::to_string(field).expect("a string serializes");
            let rest = text.strip_prefix('{').expect("an object");
            let separator = if rest == "}" { "" } else { "," };
            format!("{{{field}:{value}{separator}{rest}")
        }
    }
}

/// A body `POST /webhooks` accepts, under a name not used before.
fn new_webhook_body(names: &mut u32) -> Value {
    *names += 1;
    let mut body = webhook_body();
    body["name"] = json!(format!("webhook {names}"));
    body
}

/// Sends `body` and asserts that it is refused with a 400 naming `field` exactly when it is
/// not `admitted`.
async fn assert_body_answer(
    admin: &Admin,
    (method, uri): (&str, &str),
    body: String,
    field: &str,
    admitted: bool,
) {
    let (status, _, answer) =
        call_with(admin, method, uri, Some(TOKEN), Some(body.clone()), &[]).await;
    let refused = status == StatusCode::BAD_REQUEST && answer["field"] == field;
    assert_eq!(
        !refused, admitted,
        "{method} {uri} {body}: {status} {answer}"
    );
    if admitted {
        assert_ne!(answer["field"], "body", "{method} {uri} {body}: {answer}");
    }
}

/// Each request body takes exactly the values its schema admits, as far as the schema can
/// say: no property it does not list, every required property (and not `null`), `null` for
/// the nullable ones, integers within their bounds, strings of at least `minLength`. A value
/// it admits is never refused for that field; one it does not is a 400 that names it.
#[tokio::test]
async fn request_bodies_take_exactly_the_values_the_document_admits() {
    let admin = admin();
    let mut names = 0;
    let (_, _, created) = call(
        &admin,
        "POST",
        "/webhooks",
        Some(TOKEN),
        Some(new_webhook_body(&mut names)),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut checked = 0;
    for (method, path) in operations() {
        let operation = &document()["paths"][&path][method.to_lowercase()];
        let Some(schema) = operation["requestBody"]["content"]["application/json"].get("schema")
        else {
            continue;
        };
        let schema = resolved(schema);
        let uri = with_ids(&path, &id, SOME_ID);
        let target = (method.as_str(), uri.as_str());
        // A body the operation accepts, to change one field of; the batch settings need
        // batch mode, a rule the schema does not state.
        let mut valid = |field: &str| {
            let mut body = match path.as_str() {
                "/webhooks" => new_webhook_body(&mut names),
                "/webhooks/{id}" => json!({}),
                "/webhooks/{id}/recover" => json!({"since": "2026-01-01T00:00:00Z"}),
                "/rules/try" => json!({"request": {"method": "POST", "url": "/orders"},
                                       "response": {"status": 201}}),
                other => panic!("no valid body for {other}"),
            };
            if field.starts_with("batch_") {
                body["mode"] = json!("batch");
            }
            body
        };
        assert_eq!(schema["additionalProperties"], false, "{path}");
        let unknown = body_with(&valid(""), "colour", Some("1"));
        assert_body_answer(&admin, target, unknown, "body", false).await;
        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let properties = schema["properties"].as_object().expect("properties");
        for (field, property) in properties {
            let property = resolved(property);
            let is_required = required.contains(&field.as_str());
            if is_required {
                // serde names no field for a missing one; `apply` does.
                let body = body_with(&valid(field), field, None);
                let (status, _, answer) =
                    call_with(&admin, &method, &uri, Some(TOKEN), Some(body), &[]).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{path} without {field}");
                assert!(answer["field"] == field.as_str() || answer["field"] == "body");
            }
            let types = &property["type"];
            let is =
                |t: &str| types == t || types.as_array().is_some_and(|a| a.contains(&json!(t)));
            let nullable = is("null")
                || property["oneOf"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!({"type": "null"})));
            let null = body_with(&valid(field), field, Some("null"));
            assert_body_answer(&admin, target, null, field, nullable && !is_required).await;
            checked += 1;
            if is("integer") {
                let bound = |k: &str| {
                    property[k]
                        .as_i64()
                        .map(i128::from)
                        .or_else(|| property[k].as_u64().map(i128::from))
                        .unwrap_or_else(|| panic!("{path} {field} without {k}"))
                };
                let (min, max) = (bound("minimum"), bound("maximum"));
                for (n, admitted) in [(min, true), (max, true), (min - 1, false), (max + 1, false)]
                {
                    let body = body_with(&valid(field), field, Some(&n.to_string()));
                    assert_body_answer(&admin, target, body, field, admitted).await;
                    checked += 1;
                }
            }
            if let Some(min) = property["minLength"].as_u64() {
                let short = "x".repeat(usize::try_from(min).expect("small") - 1);
                let body = body_with(&valid(field), field, Some(&json!(short).to_string()));
                assert_body_answer(&admin, target, body, field, false).await;
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "{checked}");
}
