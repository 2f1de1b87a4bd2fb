//! The client connection beneath pingora's HTTP layer: what hooktap needs to see of a client's
//! bytes and time that pingora's phases do not show.
//!
//! [`Connections`] wraps pingora's proxy app: every accepted connection is counted in
//! ([`Admission`]), its stream is wrapped in a [`ClientStream`] before pingora reads from it, and
//! pingora's handling of it is dropped (closing it) when its [`Clock`] says so. The proxy's
//! phases find the stream again through the session ([`client_stream`]). The bytes pass through
//! unchanged.
//!
//! - [`RequestLines`]: request lines pingora rewrites instead of refusing.
//! - [`Clock`], [`Admission`]: the request head deadline and the cap on open connections.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::admission::{Admission, Admitted, Clock, Closed};
use super::request_line::RequestLines;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;
use crate::store::Durable;

/// How long a client may take to send a request head, and how many connections it may hold.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub head_timeout: Duration,
    pub max_connections: usize,
}

/// pingora's proxy app behind hooktap's admission, deadline and scan of client connections.
pub struct Connections<A> {
    app: Arc<A>,
    limits: ClientLimits,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl<A> Connections<A> {
    pub fn new(app: A, limits: ClientLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            admission: Arc::new(Admission::new(
                limits.max_connections,
                metrics.open_connections("proxy"),
            )),
            metrics,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Connections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2 (negotiated by ALPN on the TLS listener) carries binary frames, not request
        // lines; pingora manages its streams, so it is counted but never timed out nor shed.
        let h2 = stream.selected_alpn_proto() == Some(ALPN::H2);
        let clock = Arc::new(if h2 {
            Clock::busy()
        } else {
            Clock::head(self.limits.head_timeout)
        });
        let (admitted, slot) = self.admission.admit(&clock);
        let max = self.limits.max_connections;
        match admitted {
            Admitted::Room => {}
            Admitted::Shed if self.admission.should_warn() => tracing::warn!(
                max_connections = max,
                "the proxy is at max_connections: closing the connections that have waited longest on their clients (logged once a minute)"
            ),
            Admitted::Shed => {}
            Admitted::Full => {
                self.metrics.connection_closed("proxy", "refused");
                if self.admission.should_warn() {
                    tracing::warn!(
                        max_connections = max,
                        "the proxy is at max_connections, every one with a request in flight: refusing new connections (logged once a minute)"
                    );
                }
            }
        }
        let _slot = slot?;
        let stream: Stream = if h2 {
            stream
        } else {
            Box::new(ClientStream::new(
                stream,
                Arc::clone(&clock),
                Arc::clone(&self.admission),
                self.metrics.store_errors_counter(),
            ))
        };
        tokio::select! {
            reused = self.app.process_new(stream, shutdown) => reused,
            why = clock.closed() => {
                // Dropping pingora's future closes the connection; no request is in flight.
                tracing::debug!(reason = why.label(), "closed a client connection waiting on its client");
                self.metrics.connection_closed("proxy", why.label());
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A client's HTTP/1 stream, read through hooktap's scan and clock.
#[derive(Debug)]
pub struct ClientStream {
    inner: Stream,
    lines: RequestLines,
    clock: Arc<Clock>,
    admission: Arc<Admission>,
    /// Events of the response being written that are not yet on stable storage
    /// (`flush = "every-event"`): no more bytes go to the client until they are.
    hold: Mutex<Option<Durable>>,
    /// `hooktap_store_errors_total`: a held event whose barrier failed.
    store_errors: Counter,
}

impl ClientStream {
    fn new(
        inner: Stream,
        clock: Arc<Clock>,
        admission: Arc<Admission>,
        store_errors: Counter,
    ) -> Self {
        Self {
            inner,
            lines: RequestLines::default(),
            clock,
            admission,
            hold: Mutex::new(None),
            store_errors,
        }
    }

    /// The rest of the response waits until `durable` is on stable storage: its last bytes,
    /// and so its completion, come after the event's barrier, while the connection's task
    /// waits without holding a thread. (Tickets are ordered: the latest covers earlier ones.)
    pub fn hold_until(&self, durable: Durable) {
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = Some(durable);
    }

    /// `Pending` while a held event is not yet durable.
    fn poll_hold(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(durable) = hold.as_ref() else {
            return Poll::Ready(());
        };
        match durable.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
            // The barrier's failure is logged where it happened; the response goes out.
            Poll::Ready(Err(_)) => {
                self.store_errors.inc();
            }
        }
        *hold = None;
        Poll::Ready(())
    }

    /// The request lines this client sent.
    pub fn request_lines(&self) -> &RequestLines {
        &self.lines
    }

    /// A request head is complete: its deadline no longer applies. An error if the connection
    /// was closed meanwhile (its deadline passed, or it was shed): the request must not go on.
    pub fn head_complete(&self) -> Result<(), Closed> {
        self.clock.head_complete()
    }

    /// The exchange is over: the connection waits on its client again.
    pub fn exchange_done(&self) {
        if let Some(since) = self.clock.exchange_done() {
            self.admission.waiting(&self.clock, since);
        }
    }
}

/// The [`ClientStream`] beneath this session: `None` for HTTP/2 sessions.
pub fn client_stream(session: &Session) -> Option<&ClientStream> {
    let stream = session.as_downstream().stream()?;
    (**stream).as_any().downcast_ref::<ClientStream>()
}

/// Whether pingora rewrote this request's line from one the client sent with a control byte, DEL
/// or a space in its target (see [`RequestLines`]).
pub fn request_line_rewritten(session: &Session) -> bool {
    let Some(lines) = client_stream(session).map(ClientStream::request_lines) else {
        return false;
    };
    if !lines.suspects() {
        return false;
    }
    let Some(head) = session
        .as_downstream()
        .as_http1()
        .map(|h1| h1.get_headers_raw_bytes())
    else {
        return false;
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    lines.rewritten(line.strip_suffix(b"\r").unwrap_or(line))
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.clock.bytes_arrived();
                this.lines.feed(read);
            }
        }
        poll
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_hold(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_hold(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_hold(cx));
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_hold(cx));
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// The rest of pingora's transport interface, passed through to the wrapped stream.

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
