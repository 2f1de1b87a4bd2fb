//! Wires config, store, dispatcher, proxy and admin API into one pingora server, and shuts it
//! down cleanly.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::delivery::{DeliveryError, Engine};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::open_files;
use crate::proxy::connection::{ClientLimits, Connections};
use crate::proxy::{Forwarding, KeepAlive, Limits, Proxy, Upstream};
use crate::store::sled::PID_FILE;
use crate::store::{Backend, PgConfig, PgStore, SledStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot resolve upstream `{upstream}`: {source}")]
    Upstream {
        upstream: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error("cannot set up TLS on {listen}: {source}")]
    Tls {
        listen: SocketAddr,
        source: Box<pingora::Error>,
    },
    #[error(
        "another hooktap{} holds the store at {path}; stop it first, or take over from it without dropping a connection with `hooktap run --upgrade`",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    AlreadyRunning { path: String, pid: Option<u32> },
    #[error(
        "the store at {path} was moved into PostgreSQL ({note}): running on it would send its moved deliveries again beside the instances on PostgreSQL. Set [store] backend = \"postgres\" with a new, empty path; to use this store on its own again anyway, delete {path}/{file} (its pending deliveries will be sent again)",
        file = crate::store::sled::MOVED_FILE
    )]
    Moved { path: String, note: String },
    #[error(
        "--upgrade: no running hooktap holds the store at {path} (it is not locked, or hooktap.pid names no live process); start without --upgrade"
    )]
    NothingToUpgrade { path: String },
    #[error("--upgrade: cannot signal the running hooktap (pid {pid}): {source}")]
    Signal { pid: u32, source: nix::errno::Errno },
    #[error("cannot start a runtime for the store: {0}")]
    Runtime(std::io::Error),
}

/// Keeps the store open and usable (see [`Engine::keep_store`]).
struct StoreService {
    engine: Arc<Engine>,
    webhooks: Vec<crate::webhook::WebhookSpec>,
    grace: Duration,
}

#[async_trait]
impl BackgroundService for StoreService {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.engine)
            .keep_store(self.webhooks.clone(), self.grace, shutdown)
            .await;
    }
}

/// The delivery loop and its retention sweep.
struct DeliveryService {
    engine: Arc<Engine>,
    retention: Duration,
    /// `[delivery] nice`: the runtime's one thread (and the threads it starts: its blocking
    /// pool) run this many nice levels below the process.
    nice: u8,
}

#[async_trait]
impl BackgroundService for DeliveryService {
    async fn start(&self, shutdown: ShutdownWatch) {
        crate::delivery::lower_priority(self.nice);
        Arc::clone(&self.engine).run(self.retention, shutdown).await;
    }
}

/// The admin API; a failure to bind is logged and ends the process, since operators rely on it.
struct AdminService {
    listen: SocketAddr,
    state: AdminState,
    limits: admin::Limits,
    /// During an upgrade the old process keeps the admin port until it stops: how long to
    /// keep trying to bind it.
    wait_for_port: Duration,
    /// During an upgrade: listen only once this process holds the store, so that the API
    /// never answers from an empty set of webhooks while the old process finishes.
    wait_for_store: Option<Arc<dyn Store>>,
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
            match admin::serve(
                self.listen,
                self.state.clone(),
                self.limits,
                shutdown.clone(),
            )
            .await
            {
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
                    // The outcome is logged and counted by `reload` itself.
                    let _ = self.0.reload().await;
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
pub fn run(mut config: Config, upgrade: bool) -> Result<(), ServerError> {
    // Refused rather than run with delivery off: such an instance would go on taking events
    // that nothing ever sends.
    if let Some(note) =
        SledStore::moved(&config.store.path).map_err(|source| ServerError::Store {
            path: config.store.path.display().to_string(),
            source,
        })?
    {
        return Err(ServerError::Moved {
            path: config.store.path.display().to_string(),
            note,
        });
    }
    let previous = upgrade
        .then(|| previous_holder(&config.store.path))
        .transpose()?;
    let Opened { store, local } = open_store(&config, upgrade)?;
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        Vec::new(),
        config.delivery.clone(),
        metrics,
    )?);
    // A short-lived runtime for the store work before and after pingora's own runtimes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    if store.is_ready() {
        // Otherwise the store keeper applies them once the store opens.
        let removed = runtime
            .block_on(engine.sync_webhooks(&config.webhooks, config.delivery.secret_rotation_grace))
            .map_err(|source| ServerError::Store {
                path: config.store.path.display().to_string(),
                source,
            })?;
        for (name, dropped) in removed {
            tracing::warn!(webhook = %name, dropped, "webhook removed from the config: deleted with its pending deliveries");
        }
    }
    let live = Arc::new(Live::new(
        config.file.clone(),
        std::mem::take(&mut config.rules),
        Arc::clone(&engine),
    ));
    let proxy = build_proxy(&config, &live)?;
    let draining = proxy.draining();

    let p = &config.proxy;
    // pingora's defaults put the pid file and upgrade socket at fixed /tmp paths, which would
    // collide between two sidecars on one host: keep them beside the store instead.
    let conf = ServerConf {
        threads: p.threads,
        grace_period_seconds: Some(p.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(p.shutdown_timeout.as_secs().max(1)),
        pid_file: config.store.path.join(PID_FILE).display().to_string(),
        upgrade_sock: config.store.path.join("upgrade.sock").display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let phases = server.watch_execution_phase();
    if let Some(pid) = previous {
        signal_upgrade(pid)?;
    }
    // With `upgrade`, waits here for the old process's listening sockets.
    server.bootstrap();
    let mut proxy_app = pingora::proxy::HttpProxy::new(proxy, Arc::clone(&server.configuration));
    proxy_app.handle_init_modules();
    let limits = client_limits(&config, server.configuration.upstream_keepalive_pool_size);
    let mut proxy_service = pingora::services::listening::Service::new(
        "hooktap proxy".to_owned(),
        Connections::new(proxy_app, limits, Arc::clone(engine.metrics())),
    );
    listen(&mut proxy_service, p)?;
    server.add_service(proxy_service);
    add_background_services(&mut server, &config, &live, &store, upgrade);
    server.add_service(background_service(
        "drain",
        DrainOnHandOver {
            phases: std::sync::Mutex::new(Some(phases)),
            draining,
        },
    ));

    tracing::info!(listen = %p.listen, upstream = %p.upstream, admin = %config.admin.listen,
        rule_files = config.rule_files.len(), webhooks = config.webhooks.len(),
        delivery_nice = config.delivery.nice, "hooktap started");
    server.run(RunArgs::default());
    // Sends that finished after the delivery loop stopped updated the counters too.
    runtime.block_on(engine.save_counters());
    // A shared store gives the leases up behind the outcomes still being written (so that no
    // other instance sends those deliveries again), waiting for them at most `shutdown_timeout`.
    let wait = p.shutdown_timeout.max(Duration::from_secs(1));
    // (Made inside the runtime: a timer needs one.)
    match runtime.block_on(async { tokio::time::timeout(wait, store.release()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot give up this instance's leases; the other instances take its deliveries when the leases run out");
        }
        Err(_) => {
            tracing::warn!(timeout = %humantime::format_duration(wait),
                "outcomes still being written at shutdown_timeout: this instance's leases are not given up; the other instances take its deliveries when the leases run out");
        }
    }
    if !local.is_open() {
        tracing::warn!(
            "stopping before the store opened: held events stay in pending/ for the next start"
        );
    } else if let Err(e) = runtime.block_on(store.flush()) {
        tracing::error!(error = %e, "cannot flush the store on shutdown; the last events may be lost");
    }
    tracing::info!("hooktap stopped");
    Ok(())
}

/// The proxy's limits on its clients. Raises the open-file limit first, and derives the default
/// `max_connections` from it (see [`open_files`]).
fn client_limits(config: &Config, upstream_pool: usize) -> ClientLimits {
    let p = &config.proxy;
    let reserve = open_files::reserve(
        p.threads,
        config.admin.max_connections,
        config.delivery.concurrency,
        upstream_pool,
    );
    let limit = match open_files::raise_limit() {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            None
        }
    };
    let max_connections = match (p.max_connections, limit) {
        (Some(max), _) => max,
        (None, Some(limit)) => open_files::proxy_connections(limit, reserve),
        // Without a known limit: what a common soft limit of 1024 gives.
        (None, None) => open_files::proxy_connections(1024, reserve),
    };
    if let Some(limit) = limit {
        let needed = open_files::needed(max_connections, reserve);
        if needed > limit {
            tracing::warn!(
                open_files = limit,
                needed,
                max_connections,
                "[proxy] max_connections may need more open files than the limit allows: raise the limit (LimitNOFILE=) or lower max_connections"
            );
        }
    }
    tracing::info!(open_files = limit, max_connections, header_timeout = ?p.header_timeout,
        "proxy client limits");
    ClientLimits {
        head_timeout: p.header_timeout,
        max_connections,
    }
}

/// The pid of the hooktap to take over from (`run --upgrade`). Signals only a process that
/// holds the store's lock: a stale pid file may name an unrelated process with the same pid.
fn previous_holder(path: &Path) -> Result<u32, ServerError> {
    SledStore::locked_by_another(path)
        .then(|| SledStore::holder(path))
        .flatten()
        .ok_or_else(|| ServerError::NothingToUpgrade {
            path: path.display().to_string(),
        })
}

/// Opens the store, or starts it unopened (events wait in `pending/`) when another hooktap
/// hands over to this one or the store cannot be opened yet: a sidecar must not take the app
/// down with it. Refuses to start beside another hooktap that holds the store.
fn open_store(config: &Config, upgrade: bool) -> Result<Opened, ServerError> {
    let path = &config.store.path;
    let local = match &config.store.backend {
        // The journal of a shared store opens unready: events wait in `pending/` until the
        // keeper has applied the webhooks to the shared store (only then do events get their
        // deliveries).
        Backend::Postgres(_) if !upgrade && SledStore::locked_by_another(path) => {
            return Err(ServerError::AlreadyRunning {
                pid: SledStore::holder(path),
                path: path.display().to_string(),
            });
        }
        Backend::Postgres(_) => SledStore::unopened(&config.store),
        Backend::Sled => match SledStore::open(&config.store) {
            Ok(store) => store,
            // A configuration mistake, not a passing failure: said at start.
            Err(source @ StoreError::UnshippedJournal { .. }) => {
                return Err(ServerError::Store {
                    path: path.display().to_string(),
                    source,
                });
            }
            Err(_) if upgrade => SledStore::unopened(&config.store),
            Err(_) if SledStore::locked_by_another(path) => {
                return Err(ServerError::AlreadyRunning {
                    pid: SledStore::holder(path),
                    path: path.display().to_string(),
                });
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    "cannot open the store: proxying anyway, without storing events until it opens");
                SledStore::unopened(&config.store)
            }
        },
    };
    let local = Arc::new(local);
    let store: Arc<dyn Store> = match &config.store.backend {
        Backend::Sled => Arc::clone(&local) as Arc<dyn Store>,
        Backend::Postgres(pg) => {
            let store = PgStore::with_journal_below(Arc::clone(&local), pg, config.delivery.nice)
                .map_err(|source| ServerError::Store {
                path: PgConfig::shown(&pg.url),
                source,
            })?;
            tracing::info!(store = %store.shown(), journal = %path.display(), "the store is PostgreSQL, shared with other instances");
            Arc::new(store)
        }
    };
    Ok(Opened { store, local })
}

/// The store, and the sled store on local disk: the store itself, or a shared store's journal.
struct Opened {
    store: Arc<dyn Store>,
    local: Arc<SledStore>,
}

/// The proxy, with the upstream resolved once at start: the hot path must not wait on DNS.
fn build_proxy(config: &Config, live: &Arc<Live>) -> Result<Proxy, ServerError> {
    let p = &config.proxy;
    let addr = p
        .upstream
        .to_socket_addrs()
        .and_then(|mut a| {
            a.next().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
            })
        })
        .map_err(|source| ServerError::Upstream {
            upstream: p.upstream.clone(),
            source,
        })?;
    Ok(Proxy::new(
        Arc::clone(live.rules()),
        Arc::clone(live.engine().intake()),
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
        KeepAlive::new(p.keepalive_timeout),
    ))
}

/// Adds the proxy's listener: plain TCP, or TLS with HTTP/2.
fn listen(
    service: &mut pingora::services::listening::Service<
        Connections<pingora::proxy::HttpProxy<Proxy>>,
    >,
    p: &crate::config::ProxyConfig,
) -> Result<(), ServerError> {
    let listen = p.listen.to_string();
    match &p.tls {
        None => service.add_tcp(&listen),
        Some((cert, key)) => {
            let (cert, key) = (cert.display().to_string(), key.display().to_string());
            let mut tls =
                pingora::listeners::tls::TlsSettings::intermediate(&cert, &key).map_err(|e| {
                    ServerError::Tls {
                        listen: p.listen,
                        source: e,
                    }
                })?;
            tls.enable_h2();
            service.add_tls_with_settings(&listen, None, tls);
        }
    }
    Ok(())
}

/// The store keeper, the delivery loop, the admin API and the SIGHUP reload.
fn add_background_services(
    server: &mut Server,
    config: &Config,
    live: &Arc<Live>,
    store: &Arc<dyn Store>,
    upgrade: bool,
) {
    let p = &config.proxy;
    let engine = live.engine();
    server.add_service(background_service(
        "store",
        StoreService {
            engine: Arc::clone(engine),
            webhooks: config.webhooks.clone(),
            grace: config.delivery.secret_rotation_grace,
        },
    ));
    server.add_service(background_service(
        "delivery",
        DeliveryService {
            engine: Arc::clone(engine),
            retention: config.store.retention,
            nice: config.delivery.nice,
        },
    ));
    server.add_service(background_service(
        "admin",
        AdminService {
            listen: config.admin.listen,
            state: AdminState::new(Arc::clone(live), config.admin.token.as_deref(), p.listen)
                .with_capture(Limits {
                    max_capture_bytes: p.max_capture_bytes,
                    max_decoded_bytes: p.max_decoded_bytes,
                }),
            limits: admin::Limits {
                header_timeout: config.admin.header_timeout,
                max_connections: config.admin.max_connections,
            },
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
            wait_for_store: upgrade.then(|| Arc::clone(store)),
        },
    ));
    server.add_service(background_service(
        "reload",
        ReloadOnHangup(Arc::clone(live)),
    ));
}

/// Asks the running hooktap to hand its listening sockets over (SIGQUIT, pingora's graceful
/// upgrade). Sent just before this process starts waiting for them: the old process keeps
/// trying to connect for a few seconds, so the order does not matter.
fn signal_upgrade(pid: u32) -> Result<(), ServerError> {
    use nix::sys::signal::{Signal, kill};
    let signal_error = |source| ServerError::Signal { pid, source };
    // A pid beyond i32 names no process.
    let target = i32::try_from(pid)
        .map(nix::unistd::Pid::from_raw)
        .map_err(|_| signal_error(nix::errno::Errno::ESRCH))?;
    kill(target, Signal::SIGQUIT).map_err(signal_error)?;
    tracing::info!(pid, "asked the running hooktap to hand over its sockets");
    Ok(())
}
