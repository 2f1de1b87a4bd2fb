//! A bare pingora 0.9 reverse proxy with no filters at all: the reference that tells what
//! pingora itself costs, apart from anything hooktap adds. Same server options as hooktap
//! (`threads`, a pid file and upgrade socket of its own), everything else pingora's defaults.

use std::net::SocketAddr;
use std::path::Path;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// Serves until SIGTERM.
pub fn serve(listen: SocketAddr, upstream: SocketAddr, threads: usize, dir: &Path) {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: dir.join("bare.pid").display().to_string(),
        upgrade_sock: dir.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever();
}
