//! Real servers on loopback for the integration tests: the host app ([`TestUpstream`]), a
//! webhook receiver ([`TestReceiver`]) and the hooktap binary itself ([`TestProxy`]).
//! Every server listens on a port the OS picked; every file lives in a temp directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

/// Binds a listener on 127.0.0.1 port 0 and serves `app` on it in the background.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    addr
}

/// A port that was free a moment ago (the proxy needs an address before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A small ticket shop: the host application hooktap stands in front of.
#[derive(Clone, Default)]
pub struct TestUpstream {
    next_id: Arc<AtomicU64>,
    /// How many 2xx answers the app gave to POST /orders: its own record of what happened.
    pub orders_created: Arc<AtomicU64>,
}

pub const BIG_BODY_LEN: usize = 2 * 1024 * 1024;

/// The deterministic 2 MB body of GET /big.
pub fn big_body() -> Vec<u8> {
    (0..BIG_BODY_LEN).map(|i| (i % 251) as u8).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip to Vec");
    enc.finish().expect("gzip finish")
}

impl TestUpstream {
    pub async fn start() -> (Self, SocketAddr) {
        let app = Self::default();
        let router = Router::new()
            .route(
                "/orders",
                post(create_order).get(|| async { axum::Json(json!([])) }),
            )
            .route(
                "/orders/{id}",
                patch(update_order)
                    .put(update_order)
                    .delete(|| async { StatusCode::NO_CONTENT }),
            )
            .route("/orders/{id}/refund", post(refund))
            .route("/scans", post(scan))
            .route("/orders/{id}/tickets/{*file}", get(tickets))
            .route("/big", get(big).post(echo))
            .route("/echo", post(echo))
            .route("/headers", get(many_headers))
            .route("/whoami", get(whoami))
            .with_state(app.clone());
        let addr = serve(router).await;
        (app, addr)
    }
}

/// POST /orders: 201 with the new order, or 422 when the body asks to fail.
/// `?gzip=1` answers gzip-encoded; `?status=pending` makes an order that is not yet `new`.
async fn create_order(
    State(app): State<TestUpstream>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if req.get("fail").is_some() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": "sold out"})),
        )
            .into_response();
    }
    let id = app.next_id.fetch_add(1, Ordering::SeqCst) + 1;
    let status = q.get("status").map_or("new", String::as_str);
    let order = json!({"id": id, "status": status, "total": 45.5, "email": req.get("email")});
    app.orders_created.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::to_vec(&order).expect("json");
    let mut builder = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::LOCATION, format!("/orders/{id}"));
    let body = if q.contains_key("gzip") {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        gzip(&body)
    } else {
        body
    };
    builder.body(Body::from(body)).expect("response")
}

async fn update_order(UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
    let mut order: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    order["id"] = json!(id);
    axum::Json(order).into_response()
}

async fn refund(UrlPath(_id): UrlPath<String>) -> Response {
    axum::Json(json!({"status": "refunded", "amount": 45.5})).into_response()
}

/// POST /scans with a form body `ticket=...&gate=...`.
async fn scan(body: Bytes) -> Response {
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if form.get("ticket").is_some_and(|t| t.starts_with("USED")) {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({"result": "already_used"})),
        )
            .into_response();
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"result": "valid", "scanned_at": "2026-06-01T19:00:00Z"})),
    )
        .into_response()
}

async fn tickets() -> Response {
    (
        [(header::CONTENT_TYPE, "application/pdf")],
        "%PDF-1.7 tickets",
    )
        .into_response()
}

/// GET /big: 2 MB in 64 KiB chunks, streamed (no Content-Length).
async fn big() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = big_body()
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

async fn echo(headers: HeaderMap, body: Bytes) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).cloned();
    let mut r = body.into_response();
    if let Some(ct) = ct {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

/// The forwarding headers the app received.
async fn whoami(headers: HeaderMap) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    axum::Json(json!({
        "x-forwarded-for": h("x-forwarded-for"),
        "x-forwarded-proto": h("x-forwarded-proto"),
        "x-forwarded-host": h("x-forwarded-host"),
        "host": h("host"),
    }))
    .into_response()
}

async fn many_headers() -> Response {
    Response::builder()
        .status(StatusCode::IM_A_TEAPOT)
        .header("x-custom", "one")
        .header(header::SET_COOKIE, "a=1")
        .header(header::SET_COOKIE, "b=2")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from("short and stout"))
        .expect("response")
}

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// A webhook receiver that records every request and answers with a settable status.
#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// How the receiver answers; settable while it runs.
#[derive(Default)]
struct Behaviour {
    status: AtomicU16,
    /// Statuses to answer first, one per request, before falling back to `status`.
    script: Mutex<std::collections::VecDeque<u16>>,
    /// Extra headers on every answer (e.g. Retry-After).
    headers: Mutex<Vec<(String, String)>>,
    /// How long to wait before answering.
    delay_ms: AtomicU64,
    /// Answer this status to requests whose body contains this text (a receiver that fails
    /// for some events only).
    fail_bodies: Mutex<Option<(Vec<u8>, u16)>>,
}

impl TestReceiver {
    pub async fn start(status: u16) -> Self {
        Self::start_at("127.0.0.1:0", status).await
    }

    /// Listens on a given address (to bring a receiver back on the same port after an outage).
    pub async fn start_at(addr: &str, status: u16) -> Self {
        let behaviour = Arc::new(Behaviour {
            status: AtomicU16::new(status),
            ..Behaviour::default()
        });
        let received = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (behaviour.clone(), received.clone());
        let app =
            Router::new().fallback(
                move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                    let (b, r) = (b.clone(), r.clone());
                    async move {
                        r.lock().expect("lock").push(Received {
                            at: Instant::now(),
                            path: uri.path().to_owned(),
                            headers,
                            body: body.clone(),
                        });
                        let delay = b.delay_ms.load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let scripted = b.script.lock().expect("lock").pop_front();
                        let failed = b.fail_bodies.lock().expect("lock").as_ref().and_then(
                            |(needle, code)| {
                                body.windows(needle.len().max(1))
                                    .any(|w| w == needle.as_slice())
                                    .then_some(*code)
                            },
                        );
                        let code = failed
                            .or(scripted)
                            .unwrap_or_else(|| b.status.load(Ordering::SeqCst));
                        let mut resp = (StatusCode::from_u16(code).expect("status"), "answer body")
                            .into_response();
                        if (300..400).contains(&code) {
                            resp.headers_mut()
                                .insert(header::LOCATION, "/elsewhere".parse().expect("header"));
                        }
                        for (k, v) in b.headers.lock().expect("lock").iter() {
                            resp.headers_mut().insert(
                                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                                v.parse().expect("value"),
                            );
                        }
                        resp
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Self {
            addr,
            behaviour,
            received,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Answers these statuses first, one per request.
    pub fn script(&self, statuses: &[u16]) {
        self.behaviour.script.lock().expect("lock").extend(statuses);
    }

    /// Answers `status` to every request whose body contains `needle`; `None` stops it.
    pub fn fail_bodies_containing(&self, failing: Option<(&str, u16)>) {
        *self.behaviour.fail_bodies.lock().expect("lock") =
            failing.map(|(needle, code)| (needle.as_bytes().to_vec(), code));
    }

    pub fn add_header(&self, name: &str, value: &str) {
        self.behaviour
            .headers
            .lock()
            .expect("lock")
            .push((name.to_owned(), value.to_owned()));
    }

    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until at least `n` requests arrived (failing the test after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} webhooks within {within:?}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How often the bounded waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, and returns that; fails the test, naming `what`, when
/// `within` has passed first. For waiting on something that must happen.
pub async fn wait_for_value<T, F, Fut>(
    within: Duration,
    what: impl std::fmt::Display,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: did not happen within {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `check` until it is true; fails the test, naming `what`, when `within` has passed first.
pub async fn wait_until<F, Fut>(within: Duration, what: impl std::fmt::Display, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for_value(within, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// How long to keep watching for an unwanted effect (a request that must not arrive) once a
/// positive marker has shown that the system went past the point where it would have started.
/// Not a wait for work to finish: only the last leg of such an effect (a send already under
/// way) can still be in flight.
pub const QUIET: Duration = Duration::from_millis(150);

/// A hooktap.toml for `hooktap check` cases (nothing listens); the webhook's `url` is on line 12.
pub const CONFIG: &str = r#"rules = ["rules/*.toml"]

[proxy]
listen = "127.0.0.1:18080"
upstream = "127.0.0.1:18000"

[delivery]
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://127.0.0.1:9000/hooks"
secret = "s"
topics = ["order.*"]
"#;

/// A valid rule file of six lines.
pub const GOOD_RULE: &str = r#"[[rule]]
name = "order created"
topic = "order.created"
method = "POST"
path = "/orders"
status = [201]
"#;

/// The lines a child process writes to stdout, as they come (read on a thread of their own).
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The admin token of every test config.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The hooktap binary, running with a config written to a temp directory.
pub struct TestProxy {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Extra arguments for `hooktap run`.
    pub args: Vec<String>,
    child: Option<Child>,
}

/// The rule files of this repository: the tests run the shipped example rules.
pub fn example_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/ticket-shop.toml")
}

pub fn hooktap_bin() -> &'static str {
    match std::env::var("HOOKTAP_TEST_BIN") {
        Ok(b) => Box::leak(b.into_boxed_str()),
        Err(_) => env!("CARGO_BIN_EXE_hooktap"),
    }
}

/// What a test wants in hooktap.toml beyond the proxy section.
pub struct Setup<'a> {
    pub upstream: SocketAddr,
    pub webhooks: Vec<(String, String)>,
    /// Extra rule files (their TOML text), added to the example rules.
    pub extra_rules: Vec<&'a str>,
    /// Extra lines for `[proxy]`.
    pub proxy_extra: &'a str,
}

impl<'a> Setup<'a> {
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            webhooks: Vec::new(),
            extra_rules: Vec::new(),
            proxy_extra: "",
        }
    }

    /// A webhook named `name` for `receiver` with `extra` TOML lines (topics default to all).
    pub fn webhook(mut self, name: &str, receiver: &TestReceiver, extra: &str) -> Self {
        let topics = if extra.contains("topics") {
            ""
        } else {
            "topics = [\"*\"]\n"
        };
        self.webhooks.push((
            name.to_owned(),
            format!("[[webhook]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"secret-{name}\"\n{topics}{extra}\n", receiver.url()),
        ));
        self
    }

    pub fn rules(mut self, toml: &'a str) -> Self {
        self.extra_rules.push(toml);
        self
    }

    pub fn proxy(mut self, extra: &'a str) -> Self {
        self.proxy_extra = extra;
        self
    }

    /// Writes the config into a new temp directory; returns it with the proxy's address (the
    /// admin API listens on the next free port, with [`ADMIN_TOKEN`]).
    pub fn write(&self) -> (tempfile::TempDir, PathBuf, SocketAddr, SocketAddr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_port = free_port();
        let mut rules = vec![example_rules().display().to_string()];
        for (i, text) in self.extra_rules.iter().enumerate() {
            let p = dir.path().join(format!("extra-{i}.toml"));
            std::fs::write(&p, text).expect("write rules");
            rules.push(p.display().to_string());
        }
        let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
        let webhooks: String = self.webhooks.iter().map(|(_, w)| w.as_str()).collect();
        let config = format!(
            "rules = [{}]\n\n[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{}\"\nthreads = 2\ngrace_period = \"0s\"\nshutdown_timeout = \"1s\"\n{}\n\n[store]\npath = \"data\"\n\n[delivery]\nsource = \"https://shop.test/\"\nallow_networks = [\"127.0.0.0/8\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n\n{webhooks}",
            rules.join(", "),
            self.upstream,
            self.proxy_extra,
        );
        let path = dir.path().join("hooktap.toml");
        std::fs::write(&path, config).expect("write config");
        (
            dir,
            path,
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from(([127, 0, 0, 1], admin_port)),
        )
    }
}

impl TestProxy {
    pub async fn start(setup: &Setup<'_>) -> Self {
        Self::start_edited(setup, str::to_owned).await
    }

    /// Starts with the written config passed through `edit` first.
    pub async fn start_edited(setup: &Setup<'_>, edit: impl Fn(&str) -> String) -> Self {
        Self::start_full(setup, edit, &[]).await
    }

    /// Starts with extra arguments for `hooktap run`.
    pub async fn start_with_args(setup: &Setup<'_>, args: &[&str]) -> Self {
        Self::start_full(setup, str::to_owned, args).await
    }

    async fn start_full(setup: &Setup<'_>, edit: impl Fn(&str) -> String, args: &[&str]) -> Self {
        // A port picked free can be taken by a parallel test before hooktap binds it: then
        // start again on other ports.
        for attempt in 1.. {
            let (dir, config, addr, admin) = setup.write();
            let text = std::fs::read_to_string(&config).expect("read config");
            std::fs::write(&config, edit(&text)).expect("write config");
            let mut proxy = Self {
                dir,
                config,
                addr,
                admin,
                args: args.iter().map(|a| a.to_string()).collect(),
                child: None,
            };
            match proxy.try_spawn(true).await {
                Ok(()) => return proxy,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts (or restarts) the binary and waits until the proxy and the admin API accept
    /// connections.
    pub async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn(false).await {
            panic!("{log}");
        }
    }

    /// Starts the binary with this proxy's config and log.
    fn start_child(&self, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hooktap.log"))
            .expect("log file");
        Command::new(hooktap_bin())
            .args(["run", "-c"])
            .arg(&self.config)
            .args(&self.args)
            .args(extra)
            .env("HOOKTAP_LOG", "info,hooktap=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn hooktap")
    }

    /// Replaces the running binary with a new one through `hooktap run --upgrade`; returns
    /// once the old one has exited cleanly and the new one holds the store. Returns the
    /// wall time of the hand-over.
    pub async fn upgrade(&mut self) -> Duration {
        let started = Instant::now();
        let mut old = self.child.take().expect("a running hooktap to upgrade");
        let old_pid = old.id();
        self.child = Some(self.start_child(&["--upgrade"]));
        let exit = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || old.wait()),
        )
        .await
        .expect("the old hooktap exits after an upgrade")
        .expect("join")
        .expect("wait");
        assert!(
            exit.success(),
            "the old hooktap exited with {exit}; log:\n{}",
            self.log()
        );
        let pid_file = self.dir.path().join("data/hooktap.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let holder = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if holder.trim() != old_pid.to_string() && !holder.trim().is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new hooktap did not take the store over; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        started.elapsed()
    }

    /// Like [`TestProxy::spawn`], but an early exit is returned (with the log) instead; with
    /// `fresh_ports` (ports just picked free), so is a port found taken.
    async fn try_spawn(&mut self, fresh_ports: bool) -> Result<(), String> {
        self.child = Some(self.start_child(&[]));
        let pid = self.child.as_ref().map(Child::id).expect("just started");
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [self.addr, self.admin] {
            // This process must hold the listener: a connection could reach another process
            // that took the port since it was picked (and that may close it any time), while
            // this hooktap exits (admin API) or keeps retrying to bind it (proxy).
            while !listens_on(pid, addr).await {
                assert!(
                    Instant::now() < deadline,
                    "hooktap did not start listening on {addr}; log:\n{}",
                    self.log()
                );
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    return Err(format!(
                        "hooktap exited with {status}; log:\n{}",
                        self.log()
                    ));
                }
                if fresh_ports && self.log().contains(&format!("{addr} is in use")) {
                    self.kill();
                    return Err(format!(
                        "Address already in use: {addr} was taken; log:\n{}",
                        self.log()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits until the admin API answers (it starts beside the proxy).
    pub async fn admin_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while client()
            .get(self.admin_url("/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the admin API did not start; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GET `path` on the admin API with the token; the JSON answer (a non-2xx answer fails the test).
    pub async fn admin_get(&self, path: &str) -> Value {
        let r = client()
            .get(self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin API: {e}"));
        let status = r.status();
        let text = r.text().await.expect("admin answer");
        assert!(
            status.is_success(),
            "GET {path} on the admin API: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// The sum of every series of the metric `name` (e.g. `hooktap_proxy_requests_total`).
    /// The Prometheus exposition of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until hooktap has finished `n` proxied exchanges (its per-request counter, which
    /// counts an exchange in its last phase, after any event of it is stored): from then on,
    /// what the store holds is all these exchanges derived.
    pub async fn wait_exchanges(&self, n: u64) {
        wait_until(
            Duration::from_secs(15),
            format!("hooktap finishing {n} proxied exchanges"),
            || async { self.metric_sum("hooktap_proxy_requests_total").await >= n as f64 },
        )
        .await;
    }

    /// The id of the webhook named `name`, from the admin API.
    pub async fn webhook_id(&self, name: &str) -> String {
        let list = self.admin_get("/webhooks?per_page=100").await;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|w| w["name"] == name)
            .and_then(|w| w["id"].as_str())
            .unwrap_or_else(|| panic!("no webhook named {name} in {list}"))
            .to_owned()
    }

    /// Every delivery the store holds for the webhook named `name` (newest first).
    pub async fn deliveries(&self, name: &str) -> Vec<Value> {
        let id = self.webhook_id(name).await;
        let list = self
            .admin_get(&format!("/webhooks/{id}/deliveries?per_page=100"))
            .await;
        list.as_array().cloned().unwrap_or_default()
    }

    /// Waits until the webhook named `name` has `n` deliveries and none is pending (each was
    /// delivered or failed finally, with its attempts recorded): nothing more will be sent for
    /// them. Returns them, newest first.
    pub async fn wait_deliveries_final(&self, name: &str, n: usize) -> Vec<Value> {
        wait_for_value(
            Duration::from_secs(15),
            format!("{n} deliveries of webhook {name} delivered or failed finally"),
            || async {
                let list = self.deliveries(name).await;
                (list.len() >= n && list.iter().all(|d| d["state"] != "pending")).then_some(list)
            },
        )
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hooktap.log")).unwrap_or_default()
    }

    /// The running binary's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (`HUP`, `KILL`, ...) to the running binary.
    pub fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{name}"), &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Kills the binary with SIGKILL (no chance to flush) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            let exit = tokio::task::spawn_blocking(move || child.wait())
                .await
                .expect("join")
                .expect("wait");
            assert!(
                exit.success(),
                "hooktap exited with {exit} after SIGTERM; log:\n{}",
                self.log()
            );
        }
    }
}

/// Whether process `pid` holds a socket listening on `addr` (on Linux, from /proc: the
/// socket's inode among the process's descriptors); elsewhere, whether `addr` accepts.
async fn listens_on(pid: u32, addr: SocketAddr) -> bool {
    let mut sockets = Vec::new();
    let mut have_proc = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        have_proc = true;
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for f in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            let port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f.len() > 9 && f[3] == "0A" && port == Some(addr.port()) {
                sockets.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if !have_proc {
        return tokio::net::TcpStream::connect(addr).await.is_ok();
    }
    !sockets.is_empty()
        && std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|link| sockets.iter().any(|s| link.as_os_str() == s.as_str()))
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Places an order through the proxy and checks the app created it.
pub async fn post_order(proxy: &TestProxy, email: &str) {
    let r = client()
        .post(proxy.url("/orders"))
        .json(&serde_json::json!({"email": email}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("proxied: {e}; hooktap log:\n{}", proxy.log()));
    assert_eq!(r.status(), 201);
    // The whole answer, as a client would read it (an exchange cut short derives no event).
    r.bytes().await.expect("order body");
}

/// base64(HMAC-SHA256(secret, body)), computed independently of hooktap's code.
pub fn expected_signature(secret: &str, body: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A plain HTTP client for talking to the proxy and the upstream.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The name and nice value in a `/proc/<pid>[/task/<tid>]/stat` text: `pid (comm) state ...`,
/// where the comm may hold spaces and the nice value is the 19th field.
fn name_and_nice(stat: &str) -> Option<(String, i64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("", |(_, n)| n).to_owned();
    let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
    Some((name, nice))
}

/// The threads of a running process by name, each with its nice value (from /proc).
pub fn threads_nice(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .flatten()
        // A thread that ended meanwhile has no stat any more.
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .map(|stat| name_and_nice(&stat).expect("a stat line"))
        .collect()
}

/// The nice value of process `pid` (its main thread's: what its threads start with).
pub fn process_nice(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| name_and_nice(&stat))
        .expect("the process's stat")
        .1
}

/// The nice values of the threads named `name` in `threads` (from [`threads_nice`]).
pub fn nice_of(threads: &[(String, i64)], name: &str) -> Vec<i64> {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, nice)| *nice)
        .collect()
}
