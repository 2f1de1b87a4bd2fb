//! The recording proxy behind `hooktap learn --listen ADDR --upstream ADDR`.
//!
//! A plain reverse proxy (axum in, reqwest out) that a user puts in front of an app for a while
//! (a staging app, a test run, a few clicks in the browser): every exchange passes through
//! unchanged and a copy, bounded by `max_body`, becomes a [`Sample`]. Recording stops at
//! Ctrl-C or SIGTERM, after `duration`, or after `requests` exchanges; then `learn` proposes rules from
//! what passed. It is deliberately not hooktap's pingora proxy: learning needs every body,
//! while the real proxy copies only what rules ask for.
//!
//! Request bodies are read whole before they are forwarded (up to `max_body`; a bigger one is
//! answered `413`); response bodies stream through, copied up to `max_body`.
//!
//! Bounds ([`Limits`]): the upstream gets a connect and a read timeout (an app that hangs is
//! answered `502`, the exchange counted); at most `concurrency` exchanges are in flight (others
//! wait their turn before their body is read), so the copies in flight stay in proportion to
//! `concurrency × max_body`; recorded bodies share a total budget, beyond which exchanges
//! are recorded without their bodies and counted. The client's `Host` header is not forwarded:
//! the upstream gets its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Sample, Skipped};
use crate::capture::BodyCapture;

/// How `hooktap learn --listen` records.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// `host:port` or `http(s)://host:port`.
    pub upstream: String,
    pub duration: Option<Duration>,
    pub requests: Option<usize>,
    pub max_body: usize,
}

/// The recording proxy's bounds (see the module documentation).
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// Between reads of the upstream's answer (also before its head arrives).
    pub read_timeout: Duration,
    /// Exchanges in flight at once.
    pub concurrency: usize,
    /// Bytes of recorded bodies (request and response, decoded) over the whole recording.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            concurrency: 64,
            body_budget: 512 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("--upstream `{0}` is not an address such as 127.0.0.1:8000 or http://app:8000")]
    Upstream(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("the recording proxy stopped: {0}")]
    Serve(std::io::Error),
}

struct Recorder {
    base: String,
    client: reqwest::Client,
    max_body: usize,
    samples: Mutex<Vec<Sample>>,
    skipped: Mutex<Skipped>,
    count: AtomicUsize,
    /// Bytes of bodies recorded so far (under the `samples` lock).
    body_bytes: AtomicUsize,
    body_budget: usize,
    in_flight: Arc<tokio::sync::Semaphore>,
    enough: Option<usize>,
    done: tokio::sync::Notify,
}

/// Headers that belong to one connection, not to the exchange.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
    )
}

fn copy_headers(from: &HeaderMap) -> HeaderMap {
    from.iter()
        .filter(|(n, _)| !hop_by_hop(n.as_str()) && *n != axum::http::header::HOST)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// Records samples until Ctrl-C, `duration` or `requests`; returns them.
pub async fn record(o: Options) -> Result<(Vec<Sample>, Skipped), RecordError> {
    let listener = tokio::net::TcpListener::bind(o.listen)
        .await
        .map_err(|source| RecordError::Bind {
            addr: o.listen,
            source,
        })?;
    record_on(listener, o, Limits::default()).await
}

/// [`record`] on a bound listener (`o.listen` is then not used), with the given bounds.
pub async fn record_on(
    listener: tokio::net::TcpListener,
    o: Options,
    limits: Limits,
) -> Result<(Vec<Sample>, Skipped), RecordError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = if o.upstream.contains("://") {
        o.upstream.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", o.upstream)
    };
    match url::Url::parse(&base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => return Err(RecordError::Upstream(o.upstream.clone())),
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        .build()
        .map_err(|e| RecordError::Client(e.to_string()))?;
    let recorder = Arc::new(Recorder {
        base: base.clone(),
        client,
        max_body: o.max_body,
        samples: Mutex::new(Vec::new()),
        skipped: Mutex::new(Skipped::default()),
        count: AtomicUsize::new(0),
        body_bytes: AtomicUsize::new(0),
        body_budget: limits.body_budget,
        in_flight: Arc::new(tokio::sync::Semaphore::new(limits.concurrency.max(1))),
        enough: o.requests,
        done: tokio::sync::Notify::new(),
    });
    let addr = listener.local_addr().map_err(RecordError::Serve)?;
    eprintln!(
        "hooktap: recording on http://{addr}, forwarding to {base}; stop with Ctrl-C{}{}",
        o.duration
            .map(|d| format!(", after {}", humantime::format_duration(d)))
            .unwrap_or_default(),
        o.requests
            .map(|n| format!(", after {n} exchanges"))
            .unwrap_or_default(),
    );
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(Arc::clone(&recorder));
    let stop = {
        let recorder = Arc::clone(&recorder);
        async move {
            let enough = async {
                if o.requests.is_some() {
                    recorder.done.notified().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let timer = async {
                match o.duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate => {}
                () = enough => {}
                () = timer => {}
            }
        }
    };
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stop.await;
                let _ = stopped_tx.send(());
            })
            .await
    });
    let _ = stopped_rx.await;
    // Connections get a moment to finish what they are sending; then recording ends.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), server).await {
        return Err(RecordError::Serve(e));
    }
    let samples = std::mem::take(&mut *lock(&recorder.samples));
    let skipped = std::mem::take(&mut *lock(&recorder.skipped));
    Ok((samples, skipped))
}

/// The lock's data, also after a panic elsewhere (the data stay usable: they are appended to).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    fn add(&self, mut sample: Sample) {
        let mut samples = lock(&self.samples);
        let size = sample.request_body.as_ref().map_or(0, Bytes::len)
            + sample.response_body.as_ref().map_or(0, Bytes::len);
        let used = self.body_bytes.load(Ordering::SeqCst);
        if used.saturating_add(size) > self.body_budget {
            sample.request_body = None;
            sample.response_body = None;
            self.skip(
                &format!(
                    "bodies over the recording's budget of {} bytes, recorded without them",
                    self.body_budget
                ),
                &format!("{} {}", sample.method, sample.path),
            );
        } else {
            self.body_bytes.store(used + size, Ordering::SeqCst);
        }
        sample.origin = format!("recorded exchange {}", samples.len() + 1);
        samples.push(sample);
        drop(samples);
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.enough.is_some_and(|enough| n >= enough) {
            self.done.notify_one();
        }
    }

    fn skip(&self, reason: &str, place: &str) {
        lock(&self.skipped).add(reason, place);
    }
}

/// A body copy as a sample keeps it: `Content-Encoding` undone (and removed from `headers`).
fn plain(copy: BodyCapture, headers: &mut HeaderMap, max: usize) -> Option<Bytes> {
    let bytes = copy.into_bytes()?;
    let out = crate::capture::decode_content(&bytes, headers, max)
        .ok()
        .map(|b| Bytes::from(b.into_owned()));
    headers.remove(axum::http::header::CONTENT_ENCODING);
    out
}

async fn forward(State(r): State<Arc<Recorder>>, req: Request) -> Response {
    // Held until the answer has streamed through (it moves into the `Tee`).
    let Ok(permit) = Arc::clone(&r.in_flight).acquire_owned().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "hooktap learn is stopping\n",
        )
            .into_response();
    };
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let place = format!("{method} {path}");
    let body = match axum::body::to_bytes(body, r.max_body).await {
        Ok(b) => b,
        Err(_) => {
            r.skip("request body over --max-body, answered 413", &place);
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large for hooktap learn\n",
            )
                .into_response();
        }
    };
    let url = match &query {
        Some(q) => format!("{}{path}?{q}", r.base),
        None => format!("{}{path}", r.base),
    };
    let request_headers = copy_headers(&parts.headers);
    let sent = r
        .client
        .request(parts.method.clone(), &url)
        .headers(request_headers.clone())
        .body(body.clone())
        .send()
        .await;
    let upstream = match sent {
        Ok(resp) => resp,
        Err(e) => {
            r.skip("the app did not answer, answered 502", &place);
            tracing::warn!(error = %e, %place, "the app did not answer");
            return (
                StatusCode::BAD_GATEWAY,
                "the app did not answer hooktap learn\n",
            )
                .into_response();
        }
    };
    let status = upstream.status();
    let response_headers = copy_headers(upstream.headers());
    let mut request_copy = BodyCapture::new(r.max_body);
    request_copy.push(&body);
    let mut sample = Sample {
        method,
        path,
        query,
        request_headers,
        request_body: None,
        status: status.as_u16(),
        response_headers: response_headers.clone(),
        response_body: None,
        origin: String::new(),
    };
    sample.request_body = plain(request_copy, &mut sample.request_headers, r.max_body);
    let tee = Tee {
        upstream,
        copy: BodyCapture::new(r.max_body),
        sample: Some(sample),
        recorder: Arc::clone(&r),
        _permit: permit,
    };
    let stream = futures_util::stream::unfold(Some(tee), |state| async move {
        let mut tee = state?;
        match tee.upstream.chunk().await {
            Ok(Some(chunk)) => {
                tee.copy.push(&chunk);
                Some((Ok::<Bytes, reqwest::Error>(chunk), Some(tee)))
            }
            Ok(None) => {
                tee.finish();
                None
            }
            Err(e) => {
                if let Some(sample) = tee.sample.take() {
                    let place = format!("{} {}", sample.method, sample.path);
                    tee.recorder
                        .skip("the app's answer broke off, not recorded", &place);
                }
                Some((Err(e), None))
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    *resp.headers_mut() = response_headers;
    resp
}

/// A response streaming through while its copy is taken; recorded when it is complete.
struct Tee {
    upstream: reqwest::Response,
    copy: BodyCapture,
    /// Taken when recorded.
    sample: Option<Sample>,
    recorder: Arc<Recorder>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Tee {
    fn finish(&mut self) {
        let Some(mut sample) = self.sample.take() else {
            return;
        };
        let copy = std::mem::replace(&mut self.copy, BodyCapture::new(0));
        if copy.overflowed() {
            self.recorder.skip(
                "response body over --max-body, recorded without it",
                &format!("{} {}", sample.method, sample.path),
            );
        }
        sample.response_body = plain(copy, &mut sample.response_headers, self.recorder.max_body);
        self.recorder.add(sample);
    }
}

impl Drop for Tee {
    /// A body the server never reads (204, 304, an answer to HEAD) still completes the
    /// exchange; any other body dropped early means the client went away.
    fn drop(&mut self) {
        let Some(sample) = &self.sample else { return };
        let bodyless = matches!(sample.status, 204 | 304) || sample.method == "HEAD";
        if bodyless {
            self.finish();
        } else {
            let place = format!("{} {}", sample.method, sample.path);
            self.recorder.skip(
                "the client left before the answer ended, not recorded",
                &place,
            );
        }
    }
}
