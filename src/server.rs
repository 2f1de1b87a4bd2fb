//! Wires config, store, dispatcher, proxy and admin API into one pingora server, and shuts it
//! down cleanly.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
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
    #[error(
        "another hooktap{} holds the store at {path}; stop it first, or take over from it without dropping a connection with `hooktap run --upgrade`",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { path: String, pid: Option<u32> },
    #[error(
        "--upgrade: no running hooktap holds the store at {path} (it is not locked, or hooktap.pid names no live process); start without --upgrade"
    )]
    NothingToUpgrade { path: String },
    #[error("--upgrade: cannot signal the running hooktap (pid {pid}): {reason}")]
    Signal { pid: u32, reason: String },
}

/// Keeps the store open and usable (see [`Dispatcher::keep_store`]).
struct StoreService {
    dispatcher: Arc<Dispatcher>,
    webhooks: Vec<crate::webhook::WebhookSpec>,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for StoreService {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.dispatcher)
            .keep_store(self.webhooks.clone(), self.grace, shutdown)
            .await;
    }
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
    /// During an upgrade the old process keeps the admin port until it stops: how long to
    /// keep trying to bind it.
    wait_for_port: Duration,
    /// During an upgrade: listen only once this process holds the store, so that the API
    /// never answers from an empty set of webhooks while the old process finishes.
    wait_for_store: Option<Arc<Store>>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(store) = &self.wait_for_store {
            while !store.is_ready() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.wait_for_port;
        loop {
            match admin::serve(self.listen, self.state.clone(), shutdown.clone()).await {
                Ok(()) => return,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::error!(listen = %self.listen, error = %e, "the admin API cannot listen; stopping");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Sets the proxy's draining flag when pingora starts handing the sockets over (SIGQUIT) or
/// stopping (SIGTERM): see `Proxy::draining`.
struct DrainOnHandOver {
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl BackgroundService for DrainOnHandOver {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let phases = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut phases) = phases else { return };
        loop {
            match phases.recv().await {
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulUpgradeCloseTimeout
                    | ExecutionPhase::GracefulTerminate,
                ) => {
                    self.draining
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("closing keep-alive connections after their current response");
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
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
///
/// With `upgrade`, takes over from the hooktap that holds the same store without dropping a
/// connection: it receives that process's listening sockets (pingora's graceful upgrade),
/// which then stops accepting, finishes its requests and exits. Events matched meanwhile wait
/// in `pending/` until the old process lets go of the store.
pub fn run(config: Config, upgrade: bool) -> Result<(), ServerError> {
    let path = config.store.path.display().to_string();
    let previous = if upgrade {
        // Signal only a process that holds the store's lock: a stale pid file may name an
        // unrelated process that got the same pid.
        let pid = Store::locked_by_another(&config.store.path)
            .then(|| Store::holder(&config.store.path))
            .flatten()
            .ok_or_else(|| ServerError::NothingToUpgrade { path: path.clone() })?;
        Some(pid)
    } else {
        None
    };
    let store = match Store::open(&config.store) {
        Ok(store) => Some(store),
        Err(_) if upgrade => None,
        Err(_) if Store::locked_by_another(&config.store.path) => {
            return Err(ServerError::AlreadyRunning {
                pid: Store::holder(&config.store.path),
                path,
            });
        }
        Err(e) => {
            // A sidecar must not take the app down with it: serve, and keep trying.
            tracing::error!(path = %path, error = %e,
                "cannot open the store: proxying anyway, without storing events until it opens");
            None
        }
    };
    let store = Arc::new(store.unwrap_or_else(|| Store::unopened(&config.store)));
    let webhooks = if store.is_ready() {
        let synced = store
            .sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace)
            .map_err(|source| ServerError::Store {
                path: path.clone(),
                source,
            })?;
        for (name, dropped) in synced.removed {
            tracing::warn!(webhook = %name, dropped, "webhook removed from the config: deleted with its pending deliveries");
        }
        synced.webhooks
    } else {
        // Applied by the store service once the store opens.
        Vec::new()
    };
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&store),
        webhooks,
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
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let draining = proxy.draining();
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let phases = server.watch_execution_phase();
    if let Some(pid) = previous {
        signal_upgrade(pid)?;
    }
    // With `upgrade`, waits here for the old process's listening sockets.
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
        "store",
        StoreService {
            dispatcher: Arc::clone(&dispatcher),
            webhooks: config.webhooks.clone(),
            grace: config.delivery.secret_rotation_grace,
        },
    ));
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
            // The old process stops accepting after pingora's 5 s hand-over, then waits out
            // its grace period and shutdown timeout.
            wait_for_port: if upgrade {
                Duration::from_secs(5)
                    + p.grace_period
                    + p.shutdown_timeout
                    + Duration::from_secs(10)
            } else {
                Duration::ZERO
            },
            wait_for_store: upgrade.then(|| Arc::clone(&store)),
        },
    ));
    server.add_service(background_service(
        "reload",
        ReloadOnHangup(Arc::clone(&live)),
    ));
    server.add_service(background_service(
        "drain",
        DrainOnHandOver {
            phases: std::sync::Mutex::new(Some(phases)),
            draining,
        },
    ));

    tracing::info!(listen = %p.listen, upstream = %p.upstream, admin = %config.admin.listen,
        rule_files = config.rule_files.len(), webhooks = config.webhooks.len(), "hooktap started");
    server.run(RunArgs::default());
    // Sends that finished after the delivery loop stopped updated the counters too.
    live.dispatcher().save_counters();
    if !store.is_open() {
        tracing::warn!(
            "stopping before the store opened: held events stay in pending/ for the next start"
        );
    } else if let Err(e) = store.flush() {
        tracing::error!(error = %e, "cannot flush the store on shutdown; the last events may be lost");
    }
    tracing::info!("hooktap stopped");
    Ok(())
}

/// Asks the running hooktap to hand its listening sockets over (SIGQUIT, pingora's graceful
/// upgrade). Sent just before this process starts waiting for them: the old process keeps
/// trying to connect for a few seconds, so the order does not matter.
fn signal_upgrade(pid: u32) -> Result<(), ServerError> {
    use nix::sys::signal::{Signal, kill};
    let reason = |reason: String| ServerError::Signal { pid, reason };
    let target = i32::try_from(pid)
        .map(nix::unistd::Pid::from_raw)
        .map_err(|e| reason(e.to_string()))?;
    kill(target, Signal::SIGQUIT).map_err(|e| reason(e.to_string()))?;
    tracing::info!(pid, "asked the running hooktap to hand over its sockets");
    Ok(())
}
