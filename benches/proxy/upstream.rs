//! The benchmark's upstream and webhook receiver: one small hyper HTTP/1.1 server, keep-alive.
//!
//! - `GET /download/{n}`: `n` bytes of `application/octet-stream`, streamed in 64 KiB chunks.
//! - `GET /stats`: what the receiver saw since the last reset (JSON); `GET /stats/arrivals`: every
//!   webhook's arrival and lag (CSV); `POST /stats/reset`.
//! - any other `GET`: 200 with a fixed ~1 KB JSON body.
//! - `POST /orders`: reads the body, answers 201 with `Location` and a ~1 KB JSON order whose
//!   `id` is the Unix time in microseconds at which the answer was made (unique, increasing):
//!   the receiver turns it back into the end-to-end lag.
//! - `POST /hooks`: the webhook receiver: counts, checks for a signature header, reads `id`
//!   from the payload and records `now - id` as the lag; answers 200.
//! - any other `POST`/`PUT`: reads and discards the body, answers 200 with the byte count.
//!
//! It stops by itself after `--lifetime` seconds, so a crashed benchmark leaves nothing running.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The ~1 KB JSON answered to every plain GET.
pub const GET_BODY: &str = concat!(
    r#"{"id":1,"status":"paid","event_id":3,"email":"buyer@example.com","currency":"EUR","#,
    r#""total":90.0,"created_at":"2026-06-01T18:00:00Z","customer":{"name":"Ada Lovelace","#,
    r#""phone":"+44 20 7946 0000","address":{"street":"12 Analytical Row","city":"London","#,
    r#""postcode":"N1 9GU","country":"GB"}},"tickets":[{"id":"T-1001","seat":"A12","#,
    r#""price":45.0,"type":"adult","barcode":"8f14e45fceea167a5a36dedd4bea2543"},"#,
    r#"{"id":"T-1002","seat":"A13","price":45.0,"type":"adult","#,
    r#""barcode":"c9f0f895fb98ab9159f51fd0297e236d"}],"event":{"id":3,"#,
    r#""name":"Symphony No. 9 - Opening Night","venue":"Royal Festival Hall","#,
    r#""starts_at":"2026-06-01T19:30:00Z","doors_at":"2026-06-01T18:45:00Z"},"#,
    r#""payment":{"method":"card","brand":"visa","last4":"4242","#,
    r#""authorised_at":"2026-06-01T18:00:02Z","reference":"pi_3PqR5sT6uV7wX8yZ9aB0cD1e"},"#,
    r#""notes":"Wheelchair space requested for seat A12; please contact the box office "#,
    r#"before the performance. Tickets are non-transferable.","links":{"#,
    r#""self":"/orders/1","tickets":"/orders/1/tickets/all.pdf","refund":"/orders/1/refund"}}"#
);

/// Everything of an order answer but its `id`, which is made per request.
const ORDER_TAIL: &str = concat!(
    r#","status":"paid","total":90.0,"currency":"EUR","created_at":"2026-06-01T18:00:00Z","#,
    r#""customer":{"name":"Ada Lovelace","phone":"+44 20 7946 0000","address":{"#,
    r#""street":"12 Analytical Row","city":"London","postcode":"N1 9GU","country":"GB"}},"#,
    r#""tickets":[{"id":"T-1001","seat":"A12","price":45.0,"type":"adult","#,
    r#""barcode":"8f14e45fceea167a5a36dedd4bea2543"},{"id":"T-1002","seat":"A13","#,
    r#""price":45.0,"type":"adult","barcode":"c9f0f895fb98ab9159f51fd0297e236d"}],"#,
    r#""event":{"id":3,"name":"Symphony No. 9 - Opening Night","venue":"Royal Festival Hall","#,
    r#""starts_at":"2026-06-01T19:30:00Z","doors_at":"2026-06-01T18:45:00Z"},"#,
    r#""payment":{"method":"card","brand":"visa","last4":"4242","#,
    r#""authorised_at":"2026-06-01T18:00:02Z","reference":"pi_3PqR5sT6uV7wX8yZ9aB0cD1e"},"#,
    r#""notes":"Wheelchair space requested for seat A12; please contact the box office "#,
    r#"before the performance. Tickets are non-transferable.","channel":"online","#,
    r#""lang":"en-GB","source":"box-office-web","affiliate":null,"gift":false}"#
);

const CHUNK: usize = 64 * 1024;
static ZEROES: [u8; CHUNK] = [b'x'; CHUNK];

/// A body of `remaining` bytes, sent in 64 KiB chunks without allocating them.
pub struct Download {
    remaining: u64,
}

impl Body for Download {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        let chunk = Bytes::from_static(&ZEROES).slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

type Answer = Response<Either<Full<Bytes>, Download>>;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    lags_us: Vec<u64>,
    /// (arrival, lag) of every webhook with a lag, in arrival order.
    arrivals: Vec<(u64, u64)>,
    unsigned: u64,
    first_us: u64,
    last_us: u64,
}

#[derive(Default)]
struct State {
    next_id: AtomicU64,
    hooks: AtomicU64,
    seen: Mutex<Seen>,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Either::Left(Full::new(body.into())))
        .expect("static response parts are valid")
}

/// Reads a body to the end, keeping at most `keep` bytes of it; returns (kept, total length).
async fn drain(body: Incoming, keep: usize) -> (Vec<u8>, u64) {
    let mut body = body;
    let mut kept = Vec::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if kept.len() < keep {
                let n = data.len().min(keep - kept.len());
                kept.extend_from_slice(&data[..n]);
            }
        }
    }
    (kept, total)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let answer = match (&parts.method, path) {
        (&Method::GET, "/stats") => {
            let mut seen = state.seen.lock().expect("stats lock");
            seen.lags_us.sort_unstable();
            let l = &seen.lags_us;
            // The slowest webhooks: when they arrived (ms after the first) and their lag (ms).
            let mut worst = seen.arrivals.clone();
            worst.sort_unstable_by_key(|&(_, lag)| std::cmp::Reverse(lag));
            let worst: Vec<String> = worst
                .iter()
                .take(12)
                .map(|&(at, lag)| {
                    format!(
                        "[{},{}]",
                        at.saturating_sub(seen.first_us) / 1000,
                        lag / 1000
                    )
                })
                .collect();
            let json = format!(
                r#"{{"hooks":{},"unsigned":{},"lag_count":{},"lag_p50_us":{},"lag_p90_us":{},"lag_p99_us":{},"lag_p999_us":{},"lag_max_us":{},"first_us":{},"last_us":{},"worst_at_ms_lag_ms":[{}]}}"#,
                state.hooks.load(Ordering::Relaxed),
                seen.unsigned,
                l.len(),
                percentile(l, 50.0),
                percentile(l, 90.0),
                percentile(l, 99.0),
                percentile(l, 99.9),
                l.last().copied().unwrap_or(0),
                seen.first_us,
                seen.last_us,
                worst.join(","),
            );
            full(StatusCode::OK, "application/json", json)
        }
        (&Method::GET, "/stats/arrivals") => {
            // Every webhook with a lag: "ms after the first, lag µs", one a line.
            let seen = state.seen.lock().expect("stats lock");
            let mut csv = String::new();
            for &(at, lag) in &seen.arrivals {
                csv.push_str(&format!(
                    "{},{lag}\n",
                    at.saturating_sub(seen.first_us) / 1000
                ));
            }
            full(StatusCode::OK, "text/csv", csv)
        }
        (&Method::POST, "/stats/reset") => {
            *state.seen.lock().expect("stats lock") = Seen::default();
            state.hooks.store(0, Ordering::Relaxed);
            full(StatusCode::OK, "application/json", "{}")
        }
        (&Method::GET, p) if p.starts_with("/download/") => {
            let n = p["/download/".len()..].parse::<u64>().unwrap_or(0);
            Response::builder()
                .status(StatusCode::OK)
                .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                .body(Either::Right(Download { remaining: n }))
                .expect("static response parts are valid")
        }
        (&Method::GET, _) => full(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(GET_BODY.as_bytes()),
        ),
        (&Method::POST, "/orders") => {
            drain(body, 0).await;
            let now = now_us();
            // Unique and increasing, and still "the time this answer was made" to within 1 µs
            // per order made in the same microsecond.
            let prev = state.next_id.fetch_max(now, Ordering::Relaxed);
            let id = if prev >= now {
                state.next_id.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                now
            };
            let mut json = String::with_capacity(ORDER_TAIL.len() + 32);
            json.push_str(r#"{"id":"#);
            json.push_str(&id.to_string());
            json.push_str(ORDER_TAIL);
            Response::builder()
                .status(StatusCode::CREATED)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::LOCATION, format!("/orders/{id}"))
                .body(Either::Left(Full::new(Bytes::from(json))))
                .expect("static response parts are valid")
        }
        (&Method::POST, "/hooks") => {
            let signed = parts.headers.keys().any(|k| {
                let k = k.as_str();
                k.ends_with("-signature") || k.ends_with("webhook-signature")
            });
            let (payload, _) = drain(body, 64 * 1024).await;
            let now = now_us();
            let id = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
            state.hooks.fetch_add(1, Ordering::Relaxed);
            let mut seen = state.seen.lock().expect("stats lock");
            if seen.first_us == 0 {
                seen.first_us = now;
            }
            seen.last_us = now;
            if !signed {
                seen.unsigned += 1;
            }
            // Only ids that are timestamps (made by POST /orders above) say anything about lag.
            if let Some(id) = id.filter(|&id| id > 1_000_000_000_000_000) {
                seen.lags_us.push(now.saturating_sub(id));
                seen.arrivals.push((now, now.saturating_sub(id)));
            }
            drop(seen);
            full(StatusCode::OK, "text/plain", "ok")
        }
        _ => {
            let (_, n) = drain(body, 0).await;
            full(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"received":{n}}}"#),
            )
        }
    };
    Ok(answer)
}

/// Serves until `lifetime` has passed. `threads` 0 is a current-thread runtime.
pub fn serve(listen: SocketAddr, threads: usize, lifetime: Duration) -> std::io::Result<()> {
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let state = Arc::new(State::default());
        let accept = async {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("upstream: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            () = tokio::time::sleep(lifetime) => eprintln!("upstream: lifetime over, stopping"),
        }
        Ok(())
    })
}
