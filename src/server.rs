//! Wires config, store, dispatcher, proxy and admin API into one pingora server, and shuts it
//! down cleanly.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::delivery::{DeliveryError, Dispatcher};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::{Forwarding, Limits, Proxy, Upstream};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot resolve upstream `{upstream}`: {reason}")]
    Upstream { upstream: String, reason: String },
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("cannot set up TLS on {listen}: {reason}")]
    Tls { listen: SocketAddr, reason: String },
}

/// The delivery loop and its retention sweep.
struct DeliveryService {
    dispatcher: Arc<Dispatcher>,
    retention: Duration,
}

#[async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.dispatcher)
            .run(self.retention, shutdown)
            .await;
    }
}

/// The admin API; a failure to bind is logged and ends the process, since operators rely on it.
struct AdminService {
    listen: SocketAddr,
    state: AdminState,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Err(e) = admin::serve(self.listen, self.state.clone(), shutdown).await {
            tracing::error!(listen = %self.listen, error = %e, "the admin API cannot listen; stopping");
            std::process::exit(1);
        }
    }
}

/// Reloads rules and webhooks on SIGHUP (whose default action would end the process).
struct ReloadOnHangup(Arc<Live>);

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    let live = Arc::clone(&self.0);
                    // The outcome is logged and counted by `reload` itself.
                    let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs the proxy, the delivery loop and the admin API until SIGTERM/SIGINT, then flushes the store.
pub fn run(config: Config) -> Result<(), ServerError> {
    let store_err = |source| ServerError::Store {
        path: config.store.path.display().to_string(),
        source,
    };
    let store = Arc::new(Store::open(&config.store).map_err(store_err)?);
    let synced = store
        .sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace)
        .map_err(store_err)?;
    for (name, dropped) in synced.removed {
        tracing::warn!(webhook = %name, dropped, "webhook removed from the config: deleted with its pending deliveries");
    }
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&store),
        synced.webhooks,
        config.delivery.clone(),
        metrics,
    )?);
    let live = Arc::new(Live::new(
        config.file.clone(),
        config.rules,
        Arc::clone(&dispatcher),
    ));

    let p = &config.proxy;
    // Resolved once at start: the hot path must not wait on DNS.
    let addr = p
        .upstream
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut a| a.next().ok_or_else(|| "no address".to_owned()))
        .map_err(|reason| ServerError::Upstream {
            upstream: p.upstream.clone(),
            reason,
        })?;
    let proxy = Proxy::new(
        Arc::clone(live.rules()),
        Arc::clone(&dispatcher),
        Upstream {
            addr,
            tls: p.upstream_tls,
            sni: p.upstream_sni.clone(),
        },
        Limits {
            max_capture_bytes: p.max_capture_bytes,
            max_decoded_bytes: p.max_decoded_bytes,
        },
        Forwarding {
            headers: p.forwarded_headers,
            tls: p.tls.is_some(),
        },
    );

    // pingora's defaults put the pid file and upgrade socket at fixed /tmp paths, which would
    // collide between two sidecars on one host: keep them beside the store instead.
    let conf = ServerConf {
        threads: p.threads,
        grace_period_seconds: Some(p.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(p.shutdown_timeout.as_secs().max(1)),
        pid_file: config.store.path.join("hooktap.pid").display().to_string(),
        upgrade_sock: config.store.path.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy_service =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "hooktap proxy");
    let listen = p.listen.to_string();
    match &p.tls {
        None => proxy_service.add_tcp(&listen),
        Some((cert, key)) => {
            let tls_err = |reason: String| ServerError::Tls {
                listen: p.listen,
                reason,
            };
            let (cert, key) = (cert.display().to_string(), key.display().to_string());
            let mut tls = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key)
                .map_err(|e| tls_err(e.to_string()))?;
            tls.enable_h2();
            proxy_service.add_tls_with_settings(&listen, None, tls);
        }
    }
    server.add_service(proxy_service);
    server.add_service(background_service(
        "delivery",
        DeliveryService {
            dispatcher,
            retention: config.store.retention,
        },
    ));
    server.add_service(background_service(
        "admin",
        AdminService {
            listen: config.admin.listen,
            state: AdminState::new(Arc::clone(&live), config.admin.token.as_deref(), p.listen),
        },
    ));
    server.add_service(background_service("reload", ReloadOnHangup(live)));

    tracing::info!(listen = %p.listen, upstream = %p.upstream, admin = %config.admin.listen,
        rule_files = config.rule_files.len(), webhooks = config.webhooks.len(), "hooktap started");
    server.run(RunArgs::default());
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "cannot flush the store on shutdown; the last events may be lost");
    }
    tracing::info!("hooktap stopped");
    Ok(())
}
