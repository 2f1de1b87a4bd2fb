//! A bare pingora 0.9 reverse proxy with no filters at all: the reference that tells what
//! pingora itself costs, apart from anything hooktap adds. Same server options as hooktap
//! (`threads`, a pid file and upgrade socket of its own), everything else pingora's defaults
//! unless one of the [`Knobs`] changes it (`--bare-arg` of the end-to-end benchmark).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// pingora's settings that the benchmark can change, each left at pingora's default when absent.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Knobs {
    /// `ServerConf::work_stealing = false`: each thread runs its own current-thread runtime.
    #[arg(long)]
    no_work_stealing: bool,
    /// `ServerConf::upstream_keepalive_pool_size` (pingora's default: 128).
    #[arg(long)]
    keepalive_pool: Option<usize>,
    /// `ServerConf::listener_tasks_per_fd` (pingora's default: 1).
    #[arg(long)]
    listener_tasks: Option<usize>,
    /// Listener `TcpSocketOptions::tcp_snd_buf` (SO_SNDBUF of accepted connections), bytes.
    #[arg(long)]
    sndbuf: Option<usize>,
    /// Listener `TcpSocketOptions::tcp_recv_buf` (SO_RCVBUF of accepted connections), bytes.
    #[arg(long)]
    rcvbuf: Option<usize>,
    /// Listener `TcpSocketOptions::so_reuseport`.
    #[arg(long)]
    reuseport: bool,
    /// Listener `TcpSocketOptions::tcp_fastopen` backlog.
    #[arg(long)]
    fastopen: Option<usize>,
    /// `PeerOptions::tcp_recv_buf` of upstream connections, bytes.
    #[arg(long)]
    peer_rcvbuf: Option<usize>,
    /// `PeerOptions::idle_timeout` of pooled upstream connections, seconds.
    #[arg(long)]
    peer_idle_timeout: Option<u64>,
}

struct Bare {
    upstream: SocketAddr,
    knobs: Knobs,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.tcp_recv_buf = self.knobs.peer_rcvbuf;
        peer.options.idle_timeout = self.knobs.peer_idle_timeout.map(Duration::from_secs);
        Ok(Box::new(peer))
    }
}

/// Serves until SIGTERM.
pub fn serve(listen: SocketAddr, upstream: SocketAddr, threads: usize, dir: &Path, knobs: Knobs) {
    let defaults = ServerConf::default();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: dir.join("bare.pid").display().to_string(),
        upgrade_sock: dir.join("upgrade.sock").display().to_string(),
        work_stealing: !knobs.no_work_stealing,
        upstream_keepalive_pool_size: knobs
            .keepalive_pool
            .unwrap_or(defaults.upstream_keepalive_pool_size),
        listener_tasks_per_fd: knobs
            .listener_tasks
            .unwrap_or(defaults.listener_tasks_per_fd),
        ..defaults
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut socket = TcpSocketOptions::default();
    socket.tcp_snd_buf = knobs.sndbuf;
    socket.tcp_recv_buf = knobs.rcvbuf;
    socket.so_reuseport = knobs.reuseport.then_some(true);
    socket.tcp_fastopen = knobs.fastopen;
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream, knobs });
    service.add_tcp_with_settings(&listen.to_string(), socket);
    server.add_service(service);
    server.run_forever();
}
