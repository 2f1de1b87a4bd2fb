//! Wires config, store, dispatcher and proxy into one pingora server, and shuts it down cleanly.

use std::net::ToSocketAddrs;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::config::Config;
use crate::delivery::{DeliveryError, Dispatcher};
use crate::proxy::{Limits, Proxy, Upstream};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot resolve upstream `{upstream}`: {reason}")]
    Upstream { upstream: String, reason: String },
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

struct DeliveryService {
    dispatcher: Arc<Dispatcher>,
    retention: std::time::Duration,
}

#[async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.dispatcher)
            .run(self.retention, shutdown)
            .await;
    }
}

/// Runs the proxy and the delivery loop until SIGTERM/SIGINT, then flushes the store.
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
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&store),
        synced.webhooks,
        config.delivery.clone(),
    )?);

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
        Arc::new(config.rules),
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
    proxy_service.add_tcp(&p.listen.to_string());
    server.add_service(proxy_service);
    server.add_service(background_service(
        "delivery",
        DeliveryService {
            dispatcher,
            retention: config.store.retention,
        },
    ));

    tracing::info!(listen = %p.listen, upstream = %p.upstream, rule_files = config.rule_files.len(), webhooks = config.webhooks.len(), "hooktap started");
    server.run(RunArgs::default());
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "cannot flush the store on shutdown; the last events may be lost");
    }
    tracing::info!("hooktap stopped");
    Ok(())
}
