//! `hooktap demo`: a ticket shop, hooktap in front of it with the example rules, and a receiver
//! that checks signatures, all in one process, with some traffic driven through. It needs
//! nothing but the binary, and leaves the console up until Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

use crate::config::Config;

/// The example rules, built into the binary so the demo runs from anywhere.
const RULES: &str = include_str!("../rules/ticket-shop.toml");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo: {0}")]
    Setup(#[from] std::io::Error),
    #[error("the demo configuration is invalid (a bug): {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

/// The shop's state: order numbers and tickets already scanned.
#[derive(Default)]
struct Shop {
    next_order: AtomicU64,
    scanned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The demo's ticket shop as an axum app, for tests and `hooktap learn` examples.
pub fn shop_app() -> Router {
    shop(Arc::default())
}

fn shop(state: Arc<Shop>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                "The demo ticket shop. Its API: /orders, /scans, /orders/{id}/tickets/{file}\n"
            }),
        )
        .route("/orders", post(create_order))
        .route(
            "/orders/{id}",
            patch(update_order)
                .put(update_order)
                .delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/orders/{id}/refund",
            post(|UrlPath(id): UrlPath<u64>| async move {
                axum::Json(json!({"id": id, "status": "refunded", "amount": 90.0}))
            }),
        )
        .route(
            "/orders/{id}/tickets/{*file}",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/pdf")],
                    "%PDF-1.7 demo tickets",
                )
            }),
        )
        .route("/scans", post(scan))
        .with_state(state)
}

async fn create_order(State(shop): State<Arc<Shop>>, body: Bytes) -> Response {
    let order: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = shop.next_order.fetch_add(1, Ordering::SeqCst) + 1001;
    let tickets = order["tickets"].as_u64().unwrap_or(1);
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        axum::Json(
            json!({"id": id, "status": "new", "tickets": tickets, "total": 45.0 * tickets as f64}),
        ),
    )
        .into_response()
}

async fn update_order(UrlPath(id): UrlPath<u64>, body: Bytes) -> Response {
    let mut order: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    order["id"] = json!(id);
    axum::Json(order).into_response()
}

async fn scan(State(shop): State<Arc<Shop>>, body: Bytes) -> Response {
    let ticket = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "ticket")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let first = shop
        .scanned
        .lock()
        .map(|mut s| s.insert(ticket))
        .unwrap_or(false);
    if first {
        (StatusCode::CREATED, axum::Json(json!({"result": "valid", "scanned_at": time::OffsetDateTime::now_utc().unix_timestamp()}))).into_response()
    } else {
        (
            StatusCode::CONFLICT,
            axum::Json(json!({"result": "already_used"})),
        )
            .into_response()
    }
}

/// The receiver: checks each webhook's signature and prints it.
struct Receiver {
    secret: String,
    received: AtomicUsize,
    valid: AtomicUsize,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let expected = crate::delivery::sign::hmac_sha256_base64(r.secret.as_bytes(), &body);
    let ok = h("x-hooktap-webhook-signature") == expected;
    r.received.fetch_add(1, Ordering::SeqCst);
    if ok {
        r.valid.fetch_add(1, Ordering::SeqCst);
    }
    println!(
        "  webhook  {:<18} signature {}  {}",
        h("x-hooktap-webhook-topic"),
        if ok { "ok " } else { "BAD" },
        String::from_utf8_lossy(&body)
    );
    StatusCode::OK
}

async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "demo server stopped");
        }
    });
    Ok(addr)
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The traffic a shop sees in a few seconds: orders, a change, a refund, scans, a download.
async fn drive(proxy: SocketAddr) -> usize {
    let c = reqwest::Client::new();
    let base = format!("http://{proxy}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(proxy).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let json = |v: Value| v.to_string();
    let form = "application/x-www-form-urlencoded";
    let requests: Vec<(&str, String, &str, String)> = vec![
        (
            "POST",
            "/orders".into(),
            "application/json",
            json(json!({"email": "ada@example.com", "event_id": 7, "tickets": 2})),
        ),
        (
            "POST",
            "/orders".into(),
            "application/json",
            json(json!({"email": "linus@example.com", "event_id": 7, "tickets": 1})),
        ),
        (
            "PATCH",
            "/orders/1001".into(),
            "application/json",
            json(json!({"tickets": 3})),
        ),
        (
            "POST",
            "/orders/1002/refund".into(),
            "application/json",
            json(json!({"reason": "cannot come"})),
        ),
        (
            "POST",
            "/scans".into(),
            form,
            "ticket=T-1001-1&gate=north".into(),
        ),
        (
            "POST",
            "/scans".into(),
            form,
            "ticket=T-1001-1&gate=south".into(),
        ),
        (
            "GET",
            "/orders/1001/tickets/all.pdf".into(),
            "",
            String::new(),
        ),
        ("DELETE", "/orders/1002".into(), "", String::new()),
        ("GET", "/".into(), "", String::new()),
    ];
    let mut sent = 0;
    for (method, path, content_type, body) in requests {
        let method: reqwest::Method = method.parse().unwrap_or(reqwest::Method::GET);
        let mut r = c.request(method.clone(), format!("{base}{path}"));
        if !content_type.is_empty() {
            r = r.header(header::CONTENT_TYPE, content_type).body(body);
        }
        match r.send().await {
            Ok(resp) => println!("  request  {method} {path} -> {}", resp.status().as_u16()),
            Err(e) => println!("  request  {method} {path} failed: {e}"),
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    sent
}

/// Runs the demo until Ctrl-C. `dir` holds its config and store.
pub fn run(listen: SocketAddr, admin: SocketAddr, dir: &Path) -> Result<(), DemoError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = random_token();
    let token = random_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let receiver = Arc::new(Receiver {
        secret: secret.clone(),
        received: AtomicUsize::new(0),
        valid: AtomicUsize::new(0),
    });
    let (shop_addr, receiver_addr) = runtime.block_on(async {
        let shop_addr = serve(shop(Arc::default())).await?;
        let receiver_app = Router::new()
            .route("/hooks", post(receive))
            .with_state(Arc::clone(&receiver));
        let receiver_addr = serve(receiver_app).await?;
        Ok::<_, std::io::Error>((shop_addr, receiver_addr))
    })?;

    std::fs::create_dir_all(dir.join("rules"))?;
    std::fs::write(dir.join("rules/ticket-shop.toml"), RULES)?;
    let config = format!(
        r#"rules = ["rules/*.toml"]

[proxy]
listen = "{listen}"
upstream = "{shop_addr}"
grace_period = "0s"
shutdown_timeout = "1s"

[store]
path = "data"

[delivery]
source = "http://{listen}/"
allow_networks = ["127.0.0.0/8"]

[admin]
listen = "{admin}"
token = "{token}"

[[webhook]]
name = "demo receiver"
url = "http://{receiver_addr}/hooks"
secret = "{secret}"
topics = ["*"]
retry = "1s,5s"
"#
    );
    let config_path = dir.join("hooktap.toml");
    std::fs::write(&config_path, config)?;
    let config = Config::load(&config_path)?;
    let expected_webhooks = 8;

    println!("hooktap demo");
    println!("  shop app       http://{shop_addr}  (the app, unchanged)");
    println!(
        "  hooktap proxy  http://{listen}  (in front of the shop, rules from rules/ticket-shop.toml)"
    );
    println!("  receiver       http://{receiver_addr}/hooks  (checks every signature)");
    println!();
    let driver_receiver = Arc::clone(&receiver);
    runtime.spawn(async move {
        let requests = drive(listen).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while driver_receiver.received.load(Ordering::SeqCst) < expected_webhooks && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let received = driver_receiver.received.load(Ordering::SeqCst);
        let valid = driver_receiver.valid.load(Ordering::SeqCst);
        println!();
        println!("summary: {requests} requests through the proxy, {received} webhooks delivered, {valid} with a valid signature");
        println!("console: http://{admin}/  (token: {token})");
        println!("try: curl -X POST http://{listen}/orders -H 'content-type: application/json' -d '{{\"email\":\"you@example.com\"}}'");
        println!("Ctrl-C to stop.");
    });
    crate::server::run(config, false)?;
    drop(runtime);
    Ok(())
}
