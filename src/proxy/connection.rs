//! The client connection beneath pingora's HTTP layer: what hooktap needs to see of a client's
//! bytes that pingora's phases do not show.
//!
//! [`Connections`] wraps pingora's proxy app: every accepted connection's stream is wrapped in a
//! [`ClientStream`] before pingora reads from it, and the proxy's phases find it again through
//! the session ([`client_stream`]). It only observes: the bytes pass through unchanged.
//!
//! - [`RequestLines`]: request lines pingora rewrites instead of refusing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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

use super::request_line::RequestLines;

/// pingora's proxy app with every HTTP/1 client stream wrapped in a [`ClientStream`].
pub struct Connections<A> {
    app: Arc<A>,
}

impl<A> Connections<A> {
    pub fn new(app: A) -> Self {
        Self { app: Arc::new(app) }
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
        // lines, and pingora does not rewrite its targets.
        let stream: Stream = if stream.selected_alpn_proto() == Some(ALPN::H2) {
            stream
        } else {
            Box::new(ClientStream::new(stream))
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A client's HTTP/1 stream, read through hooktap's scan.
#[derive(Debug)]
pub struct ClientStream {
    inner: Stream,
    lines: RequestLines,
}

impl ClientStream {
    fn new(inner: Stream) -> Self {
        Self {
            inner,
            lines: RequestLines::default(),
        }
    }

    /// The request lines this client sent.
    pub fn request_lines(&self) -> &RequestLines {
        &self.lines
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
            this.lines.feed(&buf.filled()[before..]);
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
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
