//! `hooktap learn` and `hooktap test --har` end to end: traffic recorded through the recording
//! proxy from two real apps (the demo's ticket shop, and a booking API with nested codes,
//! action endpoints and 4xx answers), rules learned from it, and those rules run by the real
//! proxy in front of the same app on new traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::common::*;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// The token the booking API's login hands out and every later request carries.
const SESSION_TOKEN: &str = "tok_9fQ2xLmZ7pR4vW8sK1nB6yT3";
const PASSWORD: &str = "correct-horse-battery-staple";

/// A booking API in another URL style: `/v2/venues/{CODE}/bookings/{CODE}`, actions
/// (`/confirm`, `/cancel`), a login that hands out a token, and 4xx answers.
#[derive(Clone, Default)]
struct Bookings {
    /// booking code → status.
    state: Arc<Mutex<BTreeMap<String, String>>>,
    next: Arc<Mutex<u32>>,
}

fn bookings_app() -> Router {
    let app = Bookings::default();
    Router::new()
        .route("/v2/sessions", post(login))
        .route(
            "/v2/venues/{venue}",
            get(|UrlPath(v): UrlPath<String>| async move {
                axum::Json(json!({"code": v, "name": "Hall"}))
            }),
        )
        .route(
            "/v2/venues/{venue}/bookings",
            post(book).get(|| async { axum::Json(json!([])) }),
        )
        .route(
            "/v2/venues/{venue}/bookings/{code}",
            get(show).patch(change).delete(remove),
        )
        .route("/v2/venues/{venue}/bookings/{code}/confirm", post(confirm))
        .route("/v2/venues/{venue}/bookings/{code}/cancel", post(cancel))
        .with_state(app)
}

fn authorized(h: &HeaderMap) -> bool {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {SESSION_TOKEN}"))
}

async fn login(body: Bytes) -> Response {
    let b: Value = serde_json::from_slice(&body).unwrap_or_default();
    if b["password"] != PASSWORD {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "bad login"})),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"user": b["username"], "token": SESSION_TOKEN, "expires_in": 3600})),
    )
        .into_response()
}

async fn book(
    State(app): State<Bookings>,
    UrlPath(venue): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let b: Value = serde_json::from_slice(&body).unwrap_or_default();
    if b["seats"].as_u64().unwrap_or(0) == 0 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": "seats must be positive"})),
        )
            .into_response();
    }
    let code = {
        let mut n = app.next.lock().expect("lock");
        *n += 1;
        format!("BK{}Q{}X", *n * 7, *n)
    };
    app.state
        .lock()
        .expect("lock")
        .insert(code.clone(), "held".into());
    (
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/v2/venues/{venue}/bookings/{code}"),
        )],
        axum::Json(json!({"code": code, "venue": venue, "seats": b["seats"], "status": "held"})),
    )
        .into_response()
}

async fn show(
    State(app): State<Bookings>,
    UrlPath((venue, code)): UrlPath<(String, String)>,
) -> Response {
    match app.state.lock().expect("lock").get(&code) {
        Some(s) => axum::Json(json!({"code": code, "venue": venue, "status": s})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn change(
    State(app): State<Bookings>,
    UrlPath((venue, code)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    if !app.state.lock().expect("lock").contains_key(&code) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such booking"})),
        )
            .into_response();
    }
    let b: Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(json!({"code": code, "venue": venue, "seats": b["seats"]})).into_response()
}

async fn remove(
    State(app): State<Bookings>,
    UrlPath((_venue, code)): UrlPath<(String, String)>,
) -> StatusCode {
    match app.state.lock().expect("lock").remove(&code) {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

/// An action: a held booking becomes confirmed; anything else is a 409.
async fn confirm(
    State(app): State<Bookings>,
    UrlPath((_venue, code)): UrlPath<(String, String)>,
) -> Response {
    let mut state = app.state.lock().expect("lock");
    match state.get_mut(&code) {
        Some(s) if s == "held" => {
            *s = "confirmed".into();
            axum::Json(json!({"code": code, "status": "confirmed"})).into_response()
        }
        Some(_) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "not held"})),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn cancel(
    State(app): State<Bookings>,
    UrlPath((_venue, code)): UrlPath<(String, String)>,
) -> Response {
    match app.state.lock().expect("lock").get_mut(&code) {
        Some(s) => {
            *s = "cancelled".into();
            axum::Json(json!({"code": code, "status": "cancelled"})).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A `hooktap learn` process that is killed if the test fails before it exits.
struct Learner(Option<std::process::Child>);

impl Learner {
    fn child(&mut self) -> &mut std::process::Child {
        self.0
            .as_mut()
            .expect("the process is held until the test takes it")
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request: method, path, optional JSON or form body, optional bearer token.
struct Call {
    method: &'static str,
    path: String,
    json: Option<Value>,
    form: Option<&'static str>,
    token: bool,
}

fn call(method: &'static str, path: impl Into<String>) -> Call {
    Call {
        method,
        path: path.into(),
        json: None,
        form: None,
        token: false,
    }
}

impl Call {
    fn json(mut self, v: Value) -> Self {
        self.json = Some(v);
        self
    }
    fn form(mut self, f: &'static str) -> Self {
        self.form = Some(f);
        self
    }
    fn auth(mut self) -> Self {
        self.token = true;
        self
    }
}

/// Sends a call to `base`; returns the status.
async fn send(base: &str, c: &Call) -> u16 {
    let method: reqwest::Method = c.method.parse().expect("method");
    let mut r = client()
        .request(method, format!("{base}{}", c.path))
        .header(header::COOKIE, "sid=cookie-session-4242xyz");
    if c.token {
        r = r.bearer_auth(SESSION_TOKEN);
    }
    if let Some(j) = &c.json {
        r = r.json(j);
    }
    if let Some(f) = c.form {
        r = r
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(f);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", c.method, c.path));
    let status = resp.status().as_u16();
    resp.bytes().await.expect("body");
    status
}

/// `hooktap learn --listen` in front of `upstream` for `calls`; returns the rule file's text
/// and the saved HAR's path (in `dir`).
async fn learn_live(dir: &Path, upstream: SocketAddr, calls: &[Call]) -> (String, PathBuf) {
    let rules = dir.join("learned.toml");
    let har = dir.join("recorded.har");
    let mut child = Learner(Some(
        Command::new(hooktap_bin())
            .args(["learn", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(upstream.to_string())
            .args([
                "--requests",
                &calls.len().to_string(),
                "--duration",
                "60s",
                "-o",
            ])
            .arg(&rules)
            .arg("--save-har")
            .arg(&har)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hooktap learn"),
    ));
    let stderr = child.child().stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("learn did not say where it records: {log:?}"));
        if let Some(rest) = line.strip_prefix("hooktap: recording on http://") {
            break rest.split(',').next().expect("address").to_owned();
        }
        log.push(line);
    };
    let base = format!("http://{addr}");
    for c in calls {
        send(&base, c).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.child().try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "learn did not stop after {} requests",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    log.extend(rx.try_iter());
    assert!(status.success(), "hooktap learn failed: {log:#?}");
    let text = std::fs::read_to_string(&rules).expect("learned rules written");
    (text, har)
}

/// Every rule's (methods, path) → topic in a rule file's text.
fn rules_of(text: &str) -> Vec<(Vec<String>, String, String)> {
    let doc: toml::Table = toml::from_str(text).expect("learned rules are TOML");
    doc.get("rule")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .map(|r| {
            let methods = match &r["method"] {
                toml::Value::String(s) => vec![s.clone()],
                toml::Value::Array(a) => a
                    .iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect(),
                other => panic!("method {other}"),
            };
            (
                methods,
                r["path"].as_str().expect("path").to_owned(),
                r["topic"].as_str().expect("topic").to_owned(),
            )
        })
        .collect()
}

/// A project directory whose hooktap.toml loads only `rules` (no example rules).
fn project(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
    std::fs::write(dir.path().join("rules/learned.toml"), rules).expect("write");
    std::fs::write(dir.path().join("hooktap.toml"), CONFIG).expect("write");
    dir
}

fn hooktap(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(hooktap_bin())
        .args(args)
        .arg("-c")
        .arg(dir.join("hooktap.toml"))
        .output()
        .expect("run hooktap");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The learned rules pass `check` and `test` as they are.
fn assert_checks_and_tests(rules: &str) {
    let dir = project(rules);
    let (ok, out) = hooktap(dir.path(), &["check"]);
    assert!(ok, "check failed:\n{out}\n{rules}");
    let (ok, out) = hooktap(dir.path(), &["test"]);
    assert!(ok, "test failed:\n{out}\n{rules}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

/// Runs the learned rules in the real proxy in front of `upstream`; sends `calls` one by one and
/// returns, per call, the topics of the webhooks it caused.
async fn run_learned(
    rules: &str,
    upstream: SocketAddr,
    calls: &[Call],
) -> Vec<(String, u16, Vec<String>)> {
    let receiver = TestReceiver::start(200).await;
    let setup = Setup::new(upstream)
        .webhook("all", &receiver, "")
        .rules(rules);
    let example = format!("{:?}, ", example_rules().display().to_string());
    let proxy = TestProxy::start_edited(&setup, |c| c.replace(&example, "")).await;
    let base = format!("http://{}", proxy.addr);
    let mut out = Vec::new();
    let mut seen = 0;
    for (i, c) in calls.iter().enumerate() {
        let status = send(&base, c).await;
        proxy.wait_exchanges(i as u64 + 1).await;
        // Every event of this exchange is stored now; wait for its deliveries.
        let deliveries = proxy.deliveries("all").await.len();
        let got = receiver.wait_for(deliveries, Duration::from_secs(15)).await;
        let topics: Vec<String> = got[seen..]
            .iter()
            .map(|r| r.header("x-hooktap-webhook-topic").to_owned())
            .collect();
        seen = got.len();
        out.push((format!("{} {}", c.method, c.path), status, topics));
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        receiver.received().len(),
        seen,
        "late webhooks; log:\n{}",
        proxy.log()
    );
    out
}

/// Kind of write → the distinct topics its successful calls derived; reads and failures must
/// derive nothing.
fn topics_per_kind(
    results: &[(String, u16, Vec<String>)],
    kind_of: impl Fn(&str) -> Option<&'static str>,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut per_kind: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    for (call, status, topics) in results {
        let kind = kind_of(call);
        match kind {
            Some(k) if (200..300).contains(status) => {
                assert_eq!(
                    topics.len(),
                    1,
                    "{call} -> {status} must derive exactly one event: {topics:?}"
                );
                per_kind
                    .entry(k)
                    .or_default()
                    .extend(topics.iter().cloned());
            }
            _ => assert!(
                topics.is_empty(),
                "{call} -> {status} (a read or a failure) derived {topics:?}"
            ),
        }
    }
    per_kind
}

/// Each kind has one topic, and no two kinds share one.
fn assert_one_distinct_topic_each(
    per_kind: &BTreeMap<&'static str, BTreeSet<String>>,
    kinds: usize,
) {
    assert_eq!(per_kind.len(), kinds, "{per_kind:#?}");
    let mut all = BTreeSet::new();
    for (kind, topics) in per_kind {
        assert_eq!(topics.len(), 1, "{kind}: {topics:?}");
        assert!(
            all.insert(topics.iter().next().cloned()),
            "{kind} shares a topic: {per_kind:#?}"
        );
    }
}

fn shop_kind(call: &str) -> Option<&'static str> {
    let (method, path) = call.split_once(' ')?;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match (method, parts.as_slice()) {
        ("POST", ["orders"]) => "create order",
        ("PATCH" | "PUT", ["orders", _]) => "update order",
        ("DELETE", ["orders", _]) => "delete order",
        ("POST", ["orders", _, "refund"]) => "refund order",
        ("POST", ["scans"]) => "scan",
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_the_demo_shop_and_its_rules_derive_one_topic_per_kind_of_write() {
    let shop = serve(hooktap::demo::shop_app()).await;
    let json = |v: Value| v;
    let training = vec![
        call("GET", "/"),
        call("POST", "/orders").json(json(
            json!({"email": "ada@example.com", "event_id": 7, "tickets": 2}),
        )),
        call("POST", "/orders")
            .json(json!({"email": "linus@example.com", "event_id": 7, "tickets": 1})),
        call("POST", "/orders")
            .json(json!({"email": "grace@example.com", "event_id": 8, "tickets": 4})),
        call("PATCH", "/orders/1001").json(json!({"tickets": 3})),
        call("PUT", "/orders/1002").json(json!({"tickets": 1})),
        call("PATCH", "/orders/not-a-number").json(json!({"tickets": 1})),
        call("POST", "/orders/1002/refund").json(json!({"reason": "cannot come"})),
        call("DELETE", "/orders/1003"),
        call("POST", "/scans").form("ticket=T-1001-1&gate=north"),
        call("POST", "/scans").form("ticket=T-1001-1&gate=south"),
        call("POST", "/scans").form("ticket=T-1001-2&gate=north"),
        call("GET", "/orders/1001/tickets/all.pdf"),
        call("GET", "/orders/1002/tickets/all.pdf"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let (rules, har) = learn_live(dir.path(), shop, &training).await;
    let learned = rules_of(&rules);
    let topics: BTreeSet<&str> = learned.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(
        topics,
        BTreeSet::from([
            "order.created",
            "order.updated",
            "order.deleted",
            "order.refunded",
            "scan.created"
        ]),
        "{rules}"
    );
    assert_eq!(learned.len(), 5, "one rule per kind of write:\n{rules}");
    assert!(
        learned
            .iter()
            .all(|(m, _, _)| !m.iter().any(|m| m == "GET")),
        "{rules}"
    );
    assert!(rules.contains("path = \"/orders/{order}\""), "{rules}");
    assert!(
        rules.contains("1 failed write (409 ×1) makes no event"),
        "{rules}"
    );
    assert!(!rules.contains("cookie-session-4242xyz"), "{rules}");
    assert!(har.exists());
    assert_checks_and_tests(&rules);

    let new_traffic = vec![
        call("POST", "/orders").json(json!({"email": "new@example.com", "tickets": 5})),
        call("GET", "/"),
        call("PATCH", "/orders/1001").json(json!({"tickets": 2})),
        call("PUT", "/orders/1001").json(json!({"tickets": 9})),
        call("PATCH", "/orders/oops").json(json!({"tickets": 1})),
        call("POST", "/orders/1001/refund").json(json!({"reason": "ill"})),
        call("POST", "/scans").form("ticket=T-9-1&gate=east"),
        call("POST", "/scans").form("ticket=T-9-1&gate=east"),
        call("DELETE", "/orders/1001"),
        call("GET", "/orders/1001/tickets/all.pdf"),
    ];
    let results = run_learned(&rules, shop, &new_traffic).await;
    let per_kind = topics_per_kind(&results, shop_kind);
    assert_one_distinct_topic_each(&per_kind, 5);
    assert_eq!(
        per_kind["refund order"],
        BTreeSet::from(["order.refunded".to_owned()])
    );
}

fn booking_kind(call: &str) -> Option<&'static str> {
    let (method, path) = call.split_once(' ')?;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match (method, parts.as_slice()) {
        ("POST", ["v2", "sessions"]) => "login",
        ("POST", ["v2", "venues", _, "bookings"]) => "book",
        ("PATCH", ["v2", "venues", _, "bookings", _]) => "change",
        ("DELETE", ["v2", "venues", _, "bookings", _]) => "remove",
        ("POST", ["v2", "venues", _, "bookings", _, "confirm"]) => "confirm",
        ("POST", ["v2", "venues", _, "bookings", _, "cancel"]) => "cancel",
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_a_nested_api_with_codes_and_actions_without_leaking_credentials() {
    let api = serve(bookings_app()).await;
    let login =
        || call("POST", "/v2/sessions").json(json!({"username": "ops", "password": PASSWORD}));
    let training = vec![
        login(),
        call("POST", "/v2/sessions")
            .json(json!({"username": "ops", "password": "wrong-password-123"})),
        call("GET", "/v2/venues/QVMCL"),
        call(
            "GET",
            "/v2/venues/QVMCL?access_token=qk-planted-5555&lang=en",
        ),
        call("POST", "/v2/venues/QVMCL/bookings")
            .json(json!({"seats": 2}))
            .auth(),
        call("POST", "/v2/venues/QVMCL/bookings")
            .json(json!({"seats": 0}))
            .auth(),
        call("POST", "/v2/venues/HXKTR/bookings")
            .json(json!({"seats": 4}))
            .auth(),
        call("POST", "/v2/venues/HXKTR/bookings")
            .json(json!({"seats": 1}))
            .auth(),
        call("GET", "/v2/venues/QVMCL/bookings/BK7Q1X"),
        call("PATCH", "/v2/venues/QVMCL/bookings/BK7Q1X")
            .json(json!({"seats": 3}))
            .auth(),
        call("PATCH", "/v2/venues/QVMCL/bookings/BK99Q9X")
            .json(json!({"seats": 3}))
            .auth(),
        call("POST", "/v2/venues/QVMCL/bookings/BK7Q1X/confirm").auth(),
        call("POST", "/v2/venues/QVMCL/bookings/BK7Q1X/confirm").auth(),
        call("POST", "/v2/venues/HXKTR/bookings/BK14Q2X/cancel").auth(),
        call("DELETE", "/v2/venues/HXKTR/bookings/BK21Q3X").auth(),
        call("DELETE", "/v2/venues/HXKTR/bookings/BK21Q3X").auth(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let (rules, har) = learn_live(dir.path(), api, &training).await;
    let learned = rules_of(&rules);
    let topics: BTreeSet<&str> = learned.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(
        topics,
        BTreeSet::from([
            "session.created",
            "booking.created",
            "booking.updated",
            "booking.deleted",
            "booking.confirmed",
            "booking.cancelled",
        ]),
        "{rules}"
    );
    assert!(
        rules.contains("path = \"/v2/venues/{venue}/bookings/{booking}/confirm\""),
        "{rules}"
    );
    for secret in [
        SESSION_TOKEN,
        PASSWORD,
        "wrong-password-123",
        "cookie-session-4242xyz",
    ] {
        assert!(!rules.contains(secret), "{secret} leaked into:\n{rules}");
    }
    // The saved HAR keeps bodies but no credential headers, no credentials in bodies or query
    // strings, and only its owner may read it.
    let har_text = std::fs::read_to_string(&har).expect("har");
    for secret in [
        SESSION_TOKEN,
        PASSWORD,
        "wrong-password-123",
        "cookie-session-4242xyz",
        "qk-planted-5555",
    ] {
        assert!(!har_text.contains(secret), "{secret} kept in the HAR");
    }
    assert!(har_text.contains(r#"\"seats\":2"#), "bodies are kept");
    assert!(har_text.contains("lang=en"), "queries are kept");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&har).expect("har").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    assert_checks_and_tests(&rules);

    let new_traffic = vec![
        login(),
        call("POST", "/v2/venues/ZZTOP/bookings")
            .json(json!({"seats": 6}))
            .auth(),
        call("POST", "/v2/venues/ZZTOP/bookings")
            .json(json!({"seats": 0}))
            .auth(),
        call("GET", "/v2/venues/ZZTOP/bookings/BK28Q4X"),
        call("PATCH", "/v2/venues/ZZTOP/bookings/BK28Q4X")
            .json(json!({"seats": 5}))
            .auth(),
        call("POST", "/v2/venues/ZZTOP/bookings/BK28Q4X/confirm").auth(),
        call("POST", "/v2/venues/ZZTOP/bookings/BK28Q4X/confirm").auth(),
        call("POST", "/v2/venues/ZZTOP/bookings/BK28Q4X/cancel").auth(),
        call("DELETE", "/v2/venues/ZZTOP/bookings/BK28Q4X").auth(),
        call("DELETE", "/v2/venues/ZZTOP/bookings/BK28Q4X").auth(),
    ];
    let results = run_learned(&rules, api, &new_traffic).await;
    let per_kind = topics_per_kind(&results, booking_kind);
    assert_one_distinct_topic_each(&per_kind, 6);
    assert_eq!(
        per_kind["confirm"],
        BTreeSet::from(["booking.confirmed".to_owned()])
    );

    // The dry run over the recording: with only the shop's example rules, every booking write
    // is uncovered, grouped by template.
    let (ok, out) = {
        let o = Command::new(hooktap_bin())
            .args(["test", "-c"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooktap.toml"))
            .arg("--har")
            .arg(&har)
            .output()
            .expect("run");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert!(ok, "{out}");
    assert!(
        out.contains("coverage: 0 of 8 successful writes derive an event"),
        "{out}"
    );
    let strict = Command::new(hooktap_bin())
        .args(["test", "--strict", "-c"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooktap.toml"))
        .arg("--har")
        .arg(&har)
        .output()
        .expect("run");
    assert_eq!(
        strict.status.code(),
        Some(1),
        "uncovered writes fail --strict"
    );
    assert!(
        out.contains("  POST /v2/venues/{venue}/bookings  3 exchanges (201)"),
        "{out}"
    );
    assert!(
        out.contains("  POST /v2/venues/{venue}/bookings/{booking}/confirm  1 exchange (200)"),
        "{out}"
    );
    // With the learned rules, all of them are.
    let project = project(&rules);
    let o = Command::new(hooktap_bin())
        .args(["test", "-c"])
        .arg(project.path().join("hooktap.toml"))
        .arg("--har")
        .arg(&har)
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        out.contains("coverage: 8 of 8 successful writes derive an event"),
        "{out}"
    );
    assert!(out.contains("every successful write is covered"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with(
            "recorded.har entry 5  POST /v2/venues/QVMCL/bookings -> 201: booking.created {\"venue\":\"QVMCL\",\"code\":\"BK7Q1X\""
        )),
        "{out}"
    );
    assert!(
        out.contains("recorded.har entry 6  POST /v2/venues/QVMCL/bookings -> 422: no event"),
        "{out}"
    );
}

/// A HAR entry for `learn_from_damaged_har_files`.
fn entry(method: &str, url: &str, status: i64, request: Option<Value>, response: Value) -> Value {
    let mut req = json!({
        "method": method, "url": url, "httpVersion": "HTTP/1.1",
        "headers": [
            {"name": "Authorization", "value": "Bearer planted-bearer-SECRET-1a2b3c"},
            {"name": "Cookie", "value": "session=planted-cookie-SECRET-4d5e6f"},
            {"name": "X-Api-Key", "value": "planted-apikey-SECRET-7g8h9i"},
            {":authority": "ignored", "name": ":authority", "value": "shop.test"}
        ],
        "queryString": [],
    });
    if let Some(r) = request {
        req["postData"] = r;
    }
    json!({"request": req, "response": {
        "status": status,
        "headers": [{"name": "Set-Cookie", "value": "sid=planted-setcookie-SECRET-0j1k2l"}],
        "content": response,
    }})
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn learn_from_damaged_har_files_skips_with_counts_and_never_prints_a_credential() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let order = |id: u32| {
        json!({"id": id, "status": "new", "email": "a@example.com",
        "access_token": "planted-token-SECRET-mn0pq1", "password": "planted-password-SECRET"})
    };
    let json_req = |v: Value| Some(json!({"mimeType": "application/json", "text": v.to_string()}));
    let big = "x".repeat(64 * 1024);
    let mut gz_entry = entry(
        "POST",
        "https://shop.test/orders?api_key=planted-query-SECRET-zz9",
        201,
        json_req(json!({"email": "a@example.com", "password": "planted-password-SECRET"})),
        json!({"mimeType": "application/json", "encoding": "base64", "text": b64(&gzip(order(2).to_string().as_bytes()))}),
    );
    gz_entry["response"]["headers"]
        .as_array_mut()
        .expect("headers")
        .push(json!({"name": "Content-Encoding", "value": "gzip"}));
    // As browsers store it: the header says gzip, the text is already decoded.
    let mut decoded_entry = entry(
        "POST",
        "https://shop.test/orders",
        201,
        json_req(json!({"email": "b@example.com"})),
        json!({"mimeType": "application/json", "text": order(3).to_string()}),
    );
    decoded_entry["response"]["headers"]
        .as_array_mut()
        .expect("headers")
        .push(json!({"name": "Content-Encoding", "value": "br"}));
    let entries = vec![
        // Plain, base64, compressed (two ways): all usable.
        entry(
            "POST",
            "https://shop.test/orders",
            201,
            json_req(json!({"email": "a@example.com"})),
            json!({"mimeType": "application/json", "text": order(1).to_string()}),
        ),
        gz_entry,
        decoded_entry,
        entry(
            "PATCH",
            "https://shop.test/orders/1",
            200,
            json_req(json!({"tickets": 2})),
            json!({"mimeType": "application/json", "encoding": "base64", "text": b64(br#"{"id":1,"tickets":2}"#)}),
        ),
        // Missing bodies: no postData, no content text though a size.
        entry(
            "DELETE",
            "https://shop.test/orders/2",
            204,
            None,
            json!({"size": 0, "mimeType": ""}),
        ),
        entry(
            "POST",
            "https://shop.test/orders/3/refund",
            200,
            None,
            json!({"size": 120, "mimeType": "application/json"}),
        ),
        // Huge (over --max-body), non-JSON, broken JSON, bad base64.
        entry(
            "POST",
            "https://shop.test/uploads",
            201,
            Some(json!({"mimeType": "text/plain", "text": big})),
            json!({"mimeType": "text/html", "text": "<p>stored</p>"}),
        ),
        entry(
            "POST",
            "https://shop.test/notes",
            201,
            json_req(json!({"text": "hi"})),
            json!({"mimeType": "application/json", "text": "{\"id\": 5, broken"}),
        ),
        entry(
            "POST",
            "https://shop.test/notes",
            201,
            None,
            json!({"mimeType": "application/json", "encoding": "base64", "text": "!!not base64!!"}),
        ),
        // No response (blocked in the browser), a bad URL, an entry that is not one.
        entry("POST", "https://shop.test/orders", 0, None, json!({})),
        entry("POST", "http://[::1/orders", 201, None, json!({})),
        json!({"request": "nonsense"}),
        // A failed write and a read.
        entry(
            "POST",
            "https://shop.test/orders",
            422,
            json_req(json!({"password": "planted-password-SECRET"})),
            json!({"mimeType": "application/json", "text": "{\"error\":\"sold out\"}"}),
        ),
        entry(
            "GET",
            "https://shop.test/orders",
            200,
            None,
            json!({"mimeType": "application/json", "text": "[]"}),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let har = dir.path().join("damaged.har");
    std::fs::write(
        &har,
        json!({"log": {"version": "1.2", "creator": {"name": "t"}, "entries": entries}})
            .to_string(),
    )
    .expect("write har");
    let out = Command::new(hooktap_bin())
        .args(["learn", "--max-body", "16KiB", "--har"])
        .arg(&har)
        .output()
        .expect("run learn");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    for said in [
        "1 × entry without a response (status 0 or invalid) (first: damaged.har entry 10)",
        "1 × entry with an unusable URL (first: damaged.har entry 11)",
        "1 × entry not usable: `request` is not an object (first: damaged.har entry",
        "1 × request body over 16384 bytes, left out (first: damaged.har entry 7)",
        "1 × response body declared JSON is not valid JSON (kept as text) (first: damaged.har entry 8)",
        "1 × response body: invalid base64, left out (first: damaged.har entry 9)",
        "1 × response body not recorded in the file (first: damaged.har entry 6)",
    ] {
        assert!(stderr.contains(said), "stderr lacks `{said}`:\n{stderr}");
        assert!(
            stdout.contains(said),
            "the file's header lacks `{said}`:\n{stdout}"
        );
    }
    // Where an entry goes wrong is said, never the value there (it may be a credential).
    assert!(!stderr.contains("nonsense"), "{stderr}");
    let topics: BTreeSet<String> = rules_of(&stdout).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(
        topics,
        BTreeSet::from(
            [
                "order.created",
                "order.updated",
                "order.deleted",
                "order.refunded",
                "upload.created",
                "note.created"
            ]
            .map(str::to_owned)
        ),
        "{stdout}"
    );
    // The compressed answers were read: the ids of orders 2 and 3 reached the proposal's tests
    // or the rule (order.created requires `id`, seen in all three answers).
    assert!(stdout.contains("required = [\"id\"]"), "{stdout}");
    assert!(
        !stdout.contains("SECRET"),
        "a planted credential leaked:\n{stdout}"
    );
    assert!(
        !stderr.contains("SECRET"),
        "a planted credential leaked:\n{stderr}"
    );
    assert_checks_and_tests(&stdout);

    // A file that is not a HAR: named with line and column, exit 1, nothing printed.
    std::fs::write(&har, "{\"log\": {\"entries\": [ {\"request\": ").expect("write");
    let out = Command::new(hooktap_bin())
        .args(["learn", "--har"])
        .arg(&har)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged.har:1:34: not a HAR file (invalid JSON)"),
        "{stderr}"
    );
    std::fs::write(&har, "{\"entries\": []}").expect("write");
    let out = Command::new(hooktap_bin())
        .args(["learn", "--har"])
        .arg(&har)
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("not a HAR file: there is no `log.entries` array")
    );
}

#[test]
fn learn_from_an_openapi_document_and_from_no_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("shop.yaml");
    std::fs::write(
        &spec,
        r##"openapi: 3.0.3
info: {title: shop, version: "1"}
paths:
  /orders:
    post:
      operationId: createOrder
      responses:
        "201":
          description: created
          content: {application/json: {schema: {$ref: "#/components/schemas/Order"}}}
  /orders/{id}/cancel:
    post:
      responses: {"200": {description: cancelled}}
  /orders/{id}:
    get:
      responses: {"200": {description: one order}}
components:
  schemas:
    Order:
      type: object
      properties: {id: {type: integer}, status: {type: string, enum: [new, paid, pending]}}
"##,
    )
    .expect("write");
    let out = Command::new(hooktap_bin())
        .args(["learn", "--openapi"])
        .arg(&spec)
        .output()
        .expect("run learn");
    let rules = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topics: BTreeSet<String> = rules_of(&rules).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(
        topics,
        BTreeSet::from(["order.created".to_owned(), "order.cancelled".to_owned()]),
        "{rules}"
    );
    assert!(rules.contains("equals = \"pending\""), "{rules}");
    assert_checks_and_tests(&rules);

    let out = Command::new(hooktap_bin())
        .arg("learn")
        .output()
        .expect("run learn");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--har <FILE>") && stderr.contains("--openapi <FILE>"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_proxy_refuses_bodies_over_its_limit_and_stops_on_sigterm() {
    let shop = serve(hooktap::demo::shop_app()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("learned.toml");
    let mut child = Learner(Some(
        Command::new(hooktap_bin())
            .args([
                "learn",
                "--listen",
                "127.0.0.1:0",
                "--max-body",
                "1KiB",
                "--upstream",
            ])
            .arg(shop.to_string())
            .arg("-o")
            .arg(&rules)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    ));
    let mut lines = std::io::BufReader::new(child.child().stderr.take().expect("stderr")).lines();
    let first = lines.next().expect("a line").expect("text");
    let addr = first
        .strip_prefix("hooktap: recording on http://")
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let base = format!("http://{addr}");
    let big = json!({"email": "x".repeat(4096)});
    assert_eq!(send(&base, &call("POST", "/orders").json(big)).await, 413);
    assert_eq!(
        send(
            &base,
            &call("POST", "/orders").json(json!({"email": "a@b.c"}))
        )
        .await,
        201
    );
    // A read streams through unchanged.
    let r = client()
        .get(format!("{base}/orders/1/tickets/a.pdf"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        b"%PDF-1.7 demo tickets"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.child().id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = child.child().try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "learn did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(exit.success(), "{rest:#?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("1 × request body over --max-body, answered 413")),
        "{rest:#?}"
    );
    let text = std::fs::read_to_string(&rules).expect("rules written after SIGTERM");
    let topics: Vec<String> = rules_of(&text).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(topics, ["order.created"], "{text}");
}

/// The recording proxy's bounds, run in process on a listener bound to port 0: an upstream that
/// never answers is cut off by the read timeout (`502`, counted), no more exchanges than the
/// limit are in flight at the upstream, bodies beyond the total budget are left out and
/// counted, and the upstream gets its own `Host`, not the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_proxy_times_out_limits_concurrency_budgets_bodies_and_sets_host() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[derive(Clone, Default)]
    struct Seen {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }
    let seen = Seen::default();
    let app = Router::new()
        .route(
            "/host",
            get(|h: HeaderMap| async move {
                h.get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            }),
        )
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route("/echo", post(|b: Bytes| async move { b }))
        .route(
            "/slow",
            post(|State(s): State<Seen>| async move {
                let n = s.now.fetch_add(1, Ordering::SeqCst) + 1;
                s.most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                s.now.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .with_state(seen.clone());
    let upstream = serve(app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let options = hooktap::learn::record::Options {
        listen: listener.local_addr().expect("addr"),
        upstream: upstream.to_string(),
        duration: Some(Duration::from_secs(60)),
        requests: Some(1 + 3 + 4),
        max_body: 1 << 20,
    };
    let limits = hooktap::learn::record::Limits {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_millis(300),
        concurrency: 1,
        body_budget: 2500,
    };
    let recording = tokio::spawn(hooktap::learn::record::record_on(listener, options, limits));
    let c = client();
    let host = c
        .get(format!("{base}/host"))
        .header(header::HOST, "evil.example:1")
        .send()
        .await
        .expect("host");
    assert_eq!(host.text().await.expect("text"), upstream.to_string());
    let hang = c.get(format!("{base}/hang")).send().await.expect("hang");
    assert_eq!(hang.status(), StatusCode::BAD_GATEWAY);
    for _ in 0..3 {
        let r = c
            .post(format!("{base}/echo"))
            .body("e".repeat(1000))
            .send()
            .await
            .expect("echo");
        assert_eq!(
            r.bytes().await.expect("body").len(),
            1000,
            "passes through whole"
        );
    }
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), format!("{base}/slow"));
            tokio::spawn(async move { c.post(url).send().await.map(|r| r.status()) })
        })
        .collect();
    for s in slow {
        assert_eq!(s.await.expect("task").expect("slow"), StatusCode::OK);
    }
    assert_eq!(
        seen.most.load(Ordering::SeqCst),
        1,
        "one exchange in flight at a time"
    );
    let (samples, skipped) = tokio::time::timeout(Duration::from_secs(30), recording)
        .await
        .expect("recording stops after its requests")
        .expect("task")
        .expect("recorded");
    let lines = skipped.lines().join("\n");
    assert_eq!(skipped.count("the app did not answer"), 1, "{lines}");
    assert_eq!(
        skipped.count("bodies over the recording's budget of 2500 bytes"),
        2,
        "{lines}"
    );
    let echoes: Vec<Option<usize>> = samples
        .iter()
        .filter(|s| s.path == "/echo")
        .map(|s| s.request_body.as_ref().map(|b| b.len()))
        .collect();
    assert_eq!(echoes, [Some(1000), None, None]);
    let host = samples
        .iter()
        .find(|s| s.path == "/host")
        .expect("host sample");
    assert!(!host.request_headers.contains_key(header::HOST));
}
