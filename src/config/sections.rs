//! The `[store]`, `[delivery]`, `[admin]` and `[proxy]` sections: raw values checked into the
//! components' configs.

use super::*;

pub(super) fn compile_store(r: &mut Reporter, s: raw::RawStore, base: &Path) -> StoreConfig {
    let flush_interval = |r: &mut Reporter| {
        duration(
            r,
            s.flush_interval.clone(),
            "flush_interval",
            Duration::from_millis(500),
        )
    };
    let backend = compile_backend(r, &s, base);
    let flush = match s.flush {
        None => FlushMode::EveryEvent,
        Some(f) if f.get_ref() == "interval" => FlushMode::Interval(flush_interval(r)),
        Some(f) if f.get_ref() == "every-event" => FlushMode::EveryEvent,
        Some(f) => {
            r.at(
                f.span(),
                format!(
                    "`flush` = \"{}\" must be \"interval\" or \"every-event\"",
                    f.get_ref()
                ),
            );
            FlushMode::EveryEvent
        }
    };
    let min_free_space = match s.min_free_space {
        None => 64 * 1024 * 1024,
        Some(v) => v
            .get_ref()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .unwrap_or_else(|e| {
                r.at(
                    v.span(),
                    format!(
                        "`min_free_space` = \"{}\" is not a size such as 64MiB: {e}",
                        v.get_ref()
                    ),
                );
                0
            }),
    };
    StoreConfig {
        backend,
        path: base.join(
            s.path
                .map_or_else(|| "data/hooktap".to_owned(), Spanned::into_inner),
        ),
        flush,
        retention: duration(
            r,
            s.retention,
            "retention",
            Duration::from_secs(30 * 24 * 3600),
        ),
        min_free_space,
    }
}

/// `backend` and the keys of a PostgreSQL backend.
fn compile_backend(r: &mut Reporter, s: &raw::RawStore, base: &Path) -> Backend {
    let postgres_keys = [&s.url, &s.url_env, &s.lease, &s.ca_file]
        .into_iter()
        .flatten()
        .map(Spanned::span)
        .chain(s.pool_size.as_ref().map(Spanned::span));
    match s.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("sled") => {
            for span in postgres_keys {
                r.at(
                    span,
                    "this key is for `backend = \"postgres\"` only; the store's backend is sled",
                );
            }
            Backend::Sled
        }
        Some("postgres") => {
            let url = match (&s.url, &s.url_env) {
                (Some(u), None) => Some(u.get_ref().clone()),
                (None, Some(var)) => from_env(r, var.get_ref(), var.span(), ""),
                (Some(u), Some(_)) => {
                    r.at(u.span(), "set either `url` or `url_env`, not both");
                    None
                }
                (None, None) => {
                    let span = s.backend.as_ref().map_or(0..0, Spanned::span);
                    r.at(
                        span,
                        "`backend = \"postgres\"` needs `url` or `url_env` (postgres://user:password@host:port/database)",
                    );
                    None
                }
            };
            let span = s
                .url
                .as_ref()
                .or(s.url_env.as_ref())
                .map_or(0..0, Spanned::span);
            // Relative to the config file, like `path`.
            let ca_file = s.ca_file.as_ref().and_then(|f| {
                let path = base.join(f.get_ref());
                match PgConfig::check_ca_file(&path) {
                    Ok(()) => Some(path),
                    Err(e) => {
                        r.at(f.span(), format!("`ca_file`: {e}"));
                        None
                    }
                }
            });
            let url = url.and_then(|u| match PgConfig::parse_url(&u, ca_file.as_deref()) {
                Ok(()) => Some(u),
                Err(e) => {
                    r.at(span.clone(), format!("`url`: {e}"));
                    None
                }
            });
            let lease = duration(r, s.lease.clone(), "lease", Duration::from_secs(60));
            if lease < Duration::from_secs(1) {
                let span = s.lease.as_ref().map_or(0..0, Spanned::span);
                r.at(span, "`lease` must be at least 1s");
            }
            let pool_size = s.pool_size.as_ref().map_or(8, |p| *p.get_ref());
            if pool_size == 0 {
                let span = s.pool_size.as_ref().map_or(0..0, Spanned::span);
                r.at(span, "`pool_size` must be at least 1");
            }
            Backend::Postgres(PgConfig {
                url: url.unwrap_or_default(),
                lease,
                pool_size: pool_size.max(1),
                ca_file,
            })
        }
        Some(other) => {
            let span = s.backend.as_ref().map_or(0..0, Spanned::span);
            r.at(
                span,
                format!("`backend` = \"{other}\" must be \"sled\" or \"postgres\""),
            );
            Backend::Sled
        }
    }
}

pub(super) fn compile_delivery(
    r: &mut Reporter,
    d: raw::RawDelivery,
    proxy: &ProxyConfig,
) -> DeliveryConfig {
    let mut allow = Vec::new();
    for n in &d.allow_networks {
        match Guard::new(std::slice::from_ref(n.get_ref())) {
            Ok(_) => allow.push(n.get_ref().clone()),
            Err(e) => r.at(n.span(), format!("allow_networks: {e}")),
        }
    }
    // Every entry was checked one by one above, so this only fails if one was rejected.
    let guard = Guard::new(&allow).unwrap_or_default();
    DeliveryConfig {
        source: d
            .source
            .map_or_else(|| format!("http://{}/", proxy.listen), Spanned::into_inner),
        timeout: duration(r, d.timeout, "timeout", Duration::from_secs(10)),
        concurrency: positive(r, d.concurrency, "concurrency", 64),
        https_only: d.https_only,
        guard,
        secret_rotation_grace: duration(
            r,
            d.secret_rotation_grace,
            "secret_rotation_grace",
            Duration::from_secs(24 * 3600),
        ),
        nice: nice(r, d.nice),
    }
}

/// How many nice levels below the proxy's priority delivery runs: 0 (the same) to 19; a priority
/// above the proxy's is not offered (it would need privileges).
fn nice(r: &mut Reporter, n: Option<Spanned<i64>>) -> u8 {
    let Some(n) = n else {
        return crate::delivery::DEFAULT_NICE;
    };
    match u8::try_from(*n.get_ref()) {
        Ok(v) if v <= 19 => v,
        _ => {
            r.at(
                n.span(),
                format!(
                    "`nice` = {} must be between 0 and 19 (nice levels below the proxy's priority)",
                    n.get_ref()
                ),
            );
            crate::delivery::DEFAULT_NICE
        }
    }
}

/// What `header_timeout` is when unset, on both listeners: a request head is a few KiB, which
/// any client that can use the app sends in well under a second; ten seconds leave room for a
/// bad mobile link while a client that trickles its head gives up its connection soon.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn compile_admin(r: &mut Reporter, a: raw::RawAdmin) -> AdminConfig {
    let default = SocketAddr::from(([127, 0, 0, 1], 9090));
    let listen = match &a.listen {
        None => default,
        Some(l) => l.get_ref().parse().unwrap_or_else(|e| {
            r.at(
                l.span(),
                format!(
                    "`listen` = \"{}\" is not an address such as 127.0.0.1:9090: {e}",
                    l.get_ref()
                ),
            );
            default
        }),
    };
    let token = match (a.token, a.token_env) {
        (Some(t), None) if !t.get_ref().is_empty() => Some(t.into_inner()),
        (Some(t), None) => {
            r.at(t.span(), "`token` must not be empty");
            None
        }
        (None, Some(var)) => from_env(r, var.get_ref(), var.span(), ""),
        (Some(t), Some(_)) => {
            r.at(t.span(), "set either `token` or `token_env`, not both");
            None
        }
        (None, None) => None,
    };
    if token.is_none() && !listen.ip().is_loopback() {
        let span = a.listen.as_ref().map_or(0..0, Spanned::span);
        r.at(
            span,
            format!("the admin API on {listen} needs `token` or `token_env`: without a token it may only listen on loopback"),
        );
    }
    AdminConfig {
        listen,
        token,
        header_timeout: positive_duration(r, a.header_timeout, "header_timeout", HEADER_TIMEOUT),
        max_connections: positive(r, a.max_connections, "max_connections", 64),
    }
}

pub(super) fn compile_proxy(r: &mut Reporter, p: raw::RawProxy, base: &Path) -> ProxyConfig {
    let listen = p.listen.get_ref().parse().unwrap_or_else(|e| {
        r.at(
            p.listen.span(),
            format!(
                "`listen` = \"{}\" is not an address such as 127.0.0.1:8080: {e}",
                p.listen.get_ref()
            ),
        );
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let upstream = p.upstream.get_ref().clone();
    let upstream_host = match upstream.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            host.trim_matches(['[', ']']).to_owned()
        }
        _ => {
            r.at(
                p.upstream.span(),
                format!("`upstream` = \"{upstream}\" must be host:port, such as 127.0.0.1:8000"),
            );
            String::new()
        }
    };
    let bytes = |r: &mut Reporter, v: Option<Spanned<u64>>, key: &str, default: usize| match v {
        None => default,
        Some(n) => usize::try_from(*n.get_ref()).unwrap_or_else(|_| {
            r.at(n.span(), format!("`{key}` is too large"));
            default
        }),
    };
    let max_capture_bytes = bytes(r, p.max_capture_bytes, "max_capture_bytes", 1 << 20);
    let tls = match (p.tls_cert, p.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let mut file = |s: &Spanned<String>, what: &str| {
                let path = base.join(s.get_ref());
                if let Err(e) = std::fs::metadata(&path) {
                    r.at(s.span(), format!("{what} `{}`: {e}", path.display()));
                }
                path
            };
            Some((file(&cert, "tls_cert"), file(&key, "tls_key")))
        }
        (Some(s), None) | (None, Some(s)) => {
            r.at(
                s.span(),
                "`tls_cert` and `tls_key` go together: set both or neither",
            );
            None
        }
    };
    ProxyConfig {
        listen,
        upstream,
        upstream_tls: p.upstream_tls,
        upstream_sni: p.upstream_sni.unwrap_or(upstream_host),
        max_capture_bytes,
        max_decoded_bytes: bytes(
            r,
            p.max_decoded_bytes,
            "max_decoded_bytes",
            max_capture_bytes.saturating_mul(8),
        ),
        threads: positive(
            r,
            p.threads,
            "threads",
            std::thread::available_parallelism().map_or(1, usize::from),
        ),
        grace_period: duration(r, p.grace_period, "grace_period", Duration::from_secs(1)),
        shutdown_timeout: duration(
            r,
            p.shutdown_timeout,
            "shutdown_timeout",
            Duration::from_secs(3),
        ),
        tls,
        forwarded_headers: p.forwarded_headers.unwrap_or(true),
        header_timeout: positive_duration(r, p.header_timeout, "header_timeout", HEADER_TIMEOUT),
        keepalive_timeout: positive_duration(
            r,
            p.keepalive_timeout,
            "keepalive_timeout",
            Duration::from_secs(60),
        ),
        max_connections: p
            .max_connections
            .map(|n| positive(r, Some(n), "max_connections", 1)),
    }
}
