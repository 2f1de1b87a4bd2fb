//! How many files hooktap may open, and how many of them the proxy's client connections may take.
//!
//! The proxy, the admin API, the store and the delivery client share one process limit of open
//! files (`RLIMIT_NOFILE`). A listener that took them all would starve the rest: the proxy could
//! not reach the app, the admin API would accept nothing, the store could not write a payload
//! file. So at start hooktap raises its soft limit to the hard limit (what the Go runtime does
//! for every Go program; the hard limit stays the operator's choice, e.g. systemd's
//! `LimitNOFILE=`), sets aside a [`reserve`] for everything but the proxy's client connections,
//! and lets those take at most half of the rest ([`proxy_connections`]): each may also hold a
//! connection to the app. The admin API has its own, small cap inside the reserve.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Files an idle hooktap holds beside its per-thread ones (measured: 42 with 2 threads, in
/// runtimes, listeners, the log and the store), with room for the files the store opens while
/// it works (payloads, `pending/`, a reopened database).
const FIXED: u64 = 64;
/// Per pingora worker thread: each service's runtime holds an epoll and an eventfd per thread.
const PER_THREAD: u64 = 8;
/// The fewest client connections the proxy is given, however low the limit.
const MIN_PROXY_CONNECTIONS: usize = 16;

/// Raises the soft limit of open files to the hard limit; returns the limit in force after.
/// The kernel refuses a soft limit above `fs.nr_open`, which is where an unlimited hard limit
/// ends.
pub fn raise_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let ceiling = if hard == nix::sys::resource::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= ceiling {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, ceiling, hard)?;
    Ok(ceiling)
}

/// What the process needs besides the proxy's client connections and their connections to the
/// app: its own files and threads, the admin API's connections and listener, the delivery
/// client's connections (in flight and idle in its pool, up to twice `concurrency`), and the idle
/// connections to the app in pingora's pool.
pub fn reserve(
    threads: usize,
    admin_connections: usize,
    delivery_concurrency: usize,
    upstream_pool: usize,
) -> u64 {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    FIXED
        .saturating_add(PER_THREAD.saturating_mul(n(threads)))
        .saturating_add(n(admin_connections).saturating_add(1))
        .saturating_add(n(delivery_concurrency).saturating_mul(2))
        .saturating_add(n(upstream_pool))
}

/// The default cap on the proxy's client connections: half of what the reserve leaves (a
/// connection with a request in flight holds one to the app too), at least
/// `MIN_PROXY_CONNECTIONS`.
pub fn proxy_connections(limit: u64, reserve: u64) -> usize {
    usize::try_from(limit.saturating_sub(reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(MIN_PROXY_CONNECTIONS)
}

/// The files the proxy's client connections may need with `max` of them (the most, with each
/// request in flight).
pub fn needed(max_connections: usize, reserve: u64) -> u64 {
    u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_gets_half_of_what_the_reserve_leaves() {
        let reserve = reserve(2, 64, 64, 128);
        assert_eq!(reserve, 64 + 16 + 65 + 128 + 128);
        assert_eq!(proxy_connections(1024, reserve), (1024 - 401) / 2);
        assert_eq!(proxy_connections(524_288, reserve), (524_288 - 401) / 2);
        assert!(needed(proxy_connections(1024, reserve), reserve) <= 1024);
    }

    #[test]
    fn a_tiny_limit_still_leaves_a_few_connections() {
        assert_eq!(proxy_connections(256, reserve(2, 64, 64, 128)), 16);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert!(raise_limit().expect("raise") >= soft);
    }
}
