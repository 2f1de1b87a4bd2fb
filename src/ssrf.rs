//! SSRF guard: which destination addresses a delivery may reach.
//!
//! A leaf module: it imports nothing from the crate. [`crate::config`] builds a [`Guard`] from
//! `[delivery] allow_networks`, [`crate::webhook`] checks URLs with it and [`crate::delivery`]
//! installs its resolver.
//!
//! Webhook URLs come from configuration and the admin API, so a delivery must not be usable to
//! reach the proxy's own network: loopback, private ranges, link-local (including the cloud
//! metadata address 169.254.169.254) and the other special-purpose ranges are blocked unless
//! `[delivery] allow_networks` opens them.
//!
//! This module owns two things:
//!
//! - [`Guard::check_ip`]: the decision for one address. IPv4-mapped (`::ffff:a.b.c.d`) and
//!   IPv4-compatible (`::a.b.c.d`) IPv6 addresses are judged as the IPv4 address they embed,
//!   since that is where the packets go.
//! - [`GuardedResolver`]: the DNS resolver installed in the delivery client. It resolves names
//!   itself and hands the connector only the addresses that passed the check. The connector
//!   connects to exactly those addresses and never resolves again, so a DNS answer that changes
//!   between check and connect (DNS rebinding) cannot slip a blocked address through.
//!
//! The connector does not call the resolver for URLs whose host is an IP literal, so those are
//! checked with [`Guard::check_url`] before sending.

use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A destination refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "requests to {ip} are blocked: it is a {range} address (allow it with [delivery] allow_networks)"
)]
pub struct Blocked {
    /// The address as requested (not converted from IPv4-mapped form).
    pub ip: IpAddr,
    /// A human name for the blocked range, like "loopback" or "private (RFC 1918)".
    pub range: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, name: &'static str) -> (Ipv4Net, &'static str) {
    // `new_assert` panics on a bad prefix; in a const table that is a compile error.
    (Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix), name)
}

const fn v6(segments: [u16; 8], prefix: u8, name: &'static str) -> (Ipv6Net, &'static str) {
    let [a, b, c, d, e, f, g, h] = segments;
    (
        Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix),
        name,
    )
}

/// Blocked IPv4 ranges. The first match names the range, so narrower entries come first.
const BLOCKED_V4: &[(Ipv4Net, &str)] = &[
    v4(0, 0, 0, 0, 32, "unspecified"),
    v4(0, 0, 0, 0, 8, "\"this network\""),
    v4(10, 0, 0, 0, 8, "private (RFC 1918)"),
    v4(100, 64, 0, 0, 10, "carrier-grade NAT"),
    v4(127, 0, 0, 0, 8, "loopback"),
    v4(169, 254, 0, 0, 16, "link-local"),
    v4(172, 16, 0, 0, 12, "private (RFC 1918)"),
    v4(192, 0, 0, 0, 24, "IETF special-purpose"),
    v4(192, 0, 2, 0, 24, "documentation"),
    v4(192, 88, 99, 0, 24, "6to4 relay"),
    v4(192, 168, 0, 0, 16, "private (RFC 1918)"),
    v4(198, 18, 0, 0, 15, "benchmarking"),
    v4(198, 51, 100, 0, 24, "documentation"),
    v4(203, 0, 113, 0, 24, "documentation"),
    v4(224, 0, 0, 0, 4, "multicast"),
    v4(255, 255, 255, 255, 32, "broadcast"),
    v4(240, 0, 0, 0, 4, "reserved"),
];

/// Blocked IPv6 ranges (IPv4-mapped and -compatible addresses are judged by [`BLOCKED_V4`]).
const BLOCKED_V6: &[(Ipv6Net, &str)] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "NAT64"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF special-purpose"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local (ULA)"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

/// The address packets to `ip` actually go to: the embedded IPv4 address for IPv4-mapped
/// (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses, else `ip` itself.
fn judged(ip: IpAddr) -> IpAddr {
    match ip {
        // `::` and `::1` are also "compatible" in form, but they are the IPv6 unspecified and
        // loopback addresses, not 0.0.0.0 and 0.0.0.1.
        IpAddr::V6(v6) if !v6.is_unspecified() && !v6.is_loopback() => {
            v6.to_ipv4().map_or(ip, IpAddr::V4)
        }
        _ => ip,
    }
}

/// The name of the blocked range `ip` (already [`judged`]) falls in, if any.
fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => BLOCKED_V4
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|&(_, name)| name),
        IpAddr::V6(ip) => BLOCKED_V6
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|&(_, name)| name),
    }
}

/// Decides which destination addresses deliveries may reach: everything except the blocked
/// special-purpose ranges, plus whatever the allowed networks open.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Networks permitted even when they lie in a blocked range.
    allow: Vec<IpNet>,
}

impl Guard {
    /// Parses `allow_networks` entries ("10.0.0.0/8", "::1/128", or a bare address meaning a
    /// single host). The error names the bad entry and why.
    pub fn new(allow_networks: &[String]) -> Result<Self, NetworkError> {
        let allow = allow_networks
            .iter()
            .map(|entry| parse_network(entry))
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Ok if `ip` may be reached; Err(Blocked) otherwise.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        let judged = judged(ip);
        // Match both forms so "127.0.0.0/8" opens ::ffff:127.0.0.1 and an IPv6 entry still
        // matches the address exactly as written.
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&judged))
        {
            return Ok(());
        }
        match blocked_range(judged) {
            Some(range) => Err(Blocked { ip, range }),
            None => Ok(()),
        }
    }

    /// For URLs whose host is an IP literal (reqwest's connector does not call the resolver for
    /// those): check it. Hostnames return Ok(()) here (they are checked at resolve time).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(ip.into()),
            // For http(s) the url crate already turns IP hosts into the variants above; this
            // mirrors the connector, which skips DNS for any host string that parses as an IP.
            Some(url::Host::Domain(host)) => match host.parse::<IpAddr>() {
                Ok(ip) => self.check_ip(ip),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// A reqwest resolver that resolves with tokio::net::lookup_host and returns only permitted
    /// addresses; if every address is blocked it fails with an error whose message is the
    /// Blocked text.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
            lookup: Arc::new(|host| {
                Box::pin(
                    async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) },
                )
            }),
        })
    }

    /// A resolver that asks `lookup` instead of the system (tests use it to play a DNS
    /// server whose answer changes).
    pub fn resolver_with(&self, lookup: Lookup) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
            lookup,
        })
    }
}

/// An `allow_networks` entry that is not a network or an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("`{0}` is not a network (like 10.0.0.0/8 or ::1/128) or an IP address")]
    NotANetwork(String),
    #[error("`{entry}`: `{addr}` is not an IP address")]
    BadAddress { entry: String, addr: String },
    #[error("`{entry}`: prefix length must be a number from 0 to {max}")]
    BadPrefix { entry: String, max: u8 },
}

/// Parses one `allow_networks` entry: a network in CIDR form or a bare address.
fn parse_network(entry: &str) -> Result<IpNet, NetworkError> {
    let entry = entry.trim();
    let Some((addr, prefix)) = entry.split_once('/') else {
        return entry
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| NetworkError::NotANetwork(entry.to_owned()));
    };
    let addr: IpAddr = addr.parse().map_err(|_| NetworkError::BadAddress {
        entry: entry.to_owned(),
        addr: addr.to_owned(),
    })?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    prefix
        .parse::<u8>()
        .ok()
        .and_then(|len| IpNet::new(addr, len).ok())
        .map(|net| net.trunc())
        .ok_or_else(|| NetworkError::BadPrefix {
            entry: entry.to_owned(),
            max,
        })
}

/// Where a [`GuardedResolver`] gets a name's addresses (the port is 0).
pub type Lookup = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The delivery client's DNS resolver: resolves a name and returns only the addresses the
/// [`Guard`] permits. Made by [`Guard::resolver`].
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Guard,
    lookup: Lookup,
}

impl GuardedResolver {
    /// Resolves `host` and keeps the permitted addresses; fails if none is left.
    async fn resolve_checked(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn Error + Send + Sync>> {
        // lookup_host needs a port. Port 0 means "none": hyper-util's HttpConnector (and
        // reqwest's own resolve path) replace port 0 with the URL's port or the scheme default.
        let resolved = (self.lookup)(host.to_owned()).await?;
        let mut permitted = Vec::new();
        let mut first_blocked = None;
        for addr in resolved {
            match self.guard.check_ip(addr.ip()) {
                Ok(()) => permitted.push(addr),
                Err(blocked) => {
                    tracing::debug!(host, %blocked, "dropping blocked address from DNS answer");
                    first_blocked.get_or_insert(blocked);
                }
            }
        }
        match first_blocked {
            Some(blocked) if permitted.is_empty() => Err(Box::new(blocked)),
            _ if permitted.is_empty() => Err(format!("no addresses found for {host}").into()),
            _ => Ok(permitted),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve_checked(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard(allow: &[&str]) -> Guard {
        Guard::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn blocks_special_ranges_by_default() {
        let g = Guard::default();
        for s in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "64:ff9b::7f00:1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "fec0::1",
            "100::1",
        ] {
            assert!(g.check_ip(ip(s)).is_err(), "{s} should be blocked");
        }
    }

    #[test]
    fn allows_public_addresses_by_default() {
        let g = Guard::default();
        for s in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(g.check_ip(ip(s)), Ok(()), "{s} should be allowed");
        }
    }

    #[test]
    fn blocked_names_the_range_and_the_requested_address() {
        let g = Guard::default();
        let err = g.check_ip(ip("::ffff:127.0.0.1")).unwrap_err();
        assert_eq!(
            err,
            Blocked {
                ip: ip("::ffff:127.0.0.1"),
                range: "loopback"
            }
        );
        assert_eq!(
            err.to_string(),
            "requests to ::ffff:127.0.0.1 are blocked: it is a loopback address \
             (allow it with [delivery] allow_networks)"
        );
        assert_eq!(
            g.check_ip(ip("10.0.0.1")).unwrap_err().range,
            "private (RFC 1918)"
        );
        assert_eq!(
            g.check_ip(ip("169.254.169.254")).unwrap_err().range,
            "link-local"
        );
        assert_eq!(g.check_ip(ip("0.0.0.0")).unwrap_err().range, "unspecified");
        assert_eq!(g.check_ip(ip("::")).unwrap_err().range, "unspecified");
        assert_eq!(g.check_ip(ip("::1")).unwrap_err().range, "loopback");
        assert_eq!(
            g.check_ip(ip("255.255.255.255")).unwrap_err().range,
            "broadcast"
        );
        assert_eq!(g.check_ip(ip("2001::1")).unwrap_err().range, "Teredo");
    }

    #[test]
    fn allow_networks_open_exactly_their_range() {
        let g = guard(&["127.0.0.0/8"]);
        assert_eq!(g.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(g.check_ip(ip("127.255.0.9")), Ok(()));
        assert_eq!(g.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(g.check_ip(ip("10.0.0.1")).is_err());
        assert!(g.check_ip(ip("::1")).is_err());

        let g = guard(&["::1/128", "10.1.2.3", " fd00::/8 "]);
        assert_eq!(g.check_ip(ip("::1")), Ok(()));
        assert_eq!(g.check_ip(ip("10.1.2.3")), Ok(()));
        assert!(g.check_ip(ip("10.1.2.4")).is_err());
        assert_eq!(g.check_ip(ip("fd12::1")), Ok(()));
        assert!(g.check_ip(ip("fc00::1")).is_err());
    }

    #[test]
    fn bad_allow_entries_are_rejected_by_name() {
        for bad in [
            "",
            "localhost",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "1.2.3.4/",
        ] {
            let err = Guard::new(&["127.0.0.0/8".to_string(), bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{bad}`")),
                "{err:?} should name {bad:?}"
            );
        }
        let err = Guard::new(&["10.0.0.0/33".to_string()]).unwrap_err();
        assert_eq!(
            err,
            NetworkError::BadPrefix {
                entry: "10.0.0.0/33".into(),
                max: 32
            }
        );
        assert!(err.to_string().contains("0 to 32"), "{err}");
    }

    #[test]
    fn check_url_checks_ip_literals_only() {
        let g = Guard::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(g.check_url(&url("http://127.0.0.1:8080/x")).is_err());
        assert!(g.check_url(&url("http://[::1]/")).is_err());
        assert!(
            g.check_url(&url("https://[::ffff:169.254.169.254]/"))
                .is_err()
        );
        // The url crate normalizes shorthand IPv4 forms, so these are literals too.
        assert!(g.check_url(&url("http://2130706433/")).is_err());
        assert!(g.check_url(&url("http://127.1/")).is_err());
        assert_eq!(g.check_url(&url("http://example.com/")), Ok(()));
        assert_eq!(g.check_url(&url("http://localhost/")), Ok(()));
        assert_eq!(g.check_url(&url("https://1.1.1.1/")), Ok(()));
    }

    async fn resolve(g: &Guard, host: &str) -> Result<Vec<SocketAddr>, String> {
        let name = Name::from_str(host).unwrap();
        let resolving = g.resolver().resolve(name);
        resolving
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn resolver_returns_only_permitted_addresses() {
        let err = resolve(&Guard::default(), "localhost").await.unwrap_err();
        assert!(err.contains("blocked"), "{err}");

        let addrs = resolve(&guard(&["127.0.0.0/8", "::1/128"]), "localhost")
            .await
            .unwrap();
        assert!(addrs.contains(&"127.0.0.1:0".parse().unwrap()), "{addrs:?}");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 0));

        // Only the allowed family survives when localhost also resolves to ::1.
        let addrs = resolve(&guard(&["127.0.0.0/8"]), "localhost")
            .await
            .unwrap();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.is_ipv4()),
            "{addrs:?}"
        );
    }

    /// A loopback HTTP server on `addr` that answers 200 and counts the requests it got.
    async fn counting_server(
        addr: SocketAddr,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (addr, hits)
    }

    /// DNS rebinding: a name whose answer alternates between a permitted address and a blocked
    /// one. Through the real delivery client, every request whose answer was blocked fails
    /// with the guard's error and nothing ever reaches the blocked address: the connector
    /// connects only to what the guard returned, and never resolves on its own.
    #[tokio::test]
    async fn a_name_whose_answer_changes_never_reaches_a_blocked_address() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // 127.0.0.2 plays a public address (allowed), 127.0.0.1 the internal one (blocked).
        let (internal, internal_hits) = counting_server("127.0.0.1:0".parse().unwrap()).await;
        let (public, public_hits) =
            counting_server(SocketAddr::new(ip("127.0.0.2"), internal.port())).await;
        let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&answers);
        let lookup: Lookup = Arc::new(move |host| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                assert_eq!(host, "rebind.test");
                let ip = if n % 2 == 0 {
                    public.ip()
                } else {
                    internal.ip()
                };
                Ok(vec![SocketAddr::new(ip, 0)])
            })
        });
        // The delivery client as hooktap builds it (only this test reaches up into delivery).
        let client =
            crate::delivery::client_builder(false, guard(&["127.0.0.2/32"]).resolver_with(lookup))
                // A fresh connection (and so a fresh lookup) for every request.
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
        let url = format!("http://rebind.test:{}/hook", internal.port());
        let mut outcomes = Vec::new();
        for _ in 0..6 {
            outcomes.push(match client.post(&url).body("{}").send().await {
                Ok(r) => format!("answered {}", r.status().as_u16()),
                Err(e) => {
                    let mut chain = e.to_string();
                    let mut source = e.source();
                    while let Some(inner) = source {
                        chain.push_str(": ");
                        chain.push_str(&inner.to_string());
                        source = inner.source();
                    }
                    assert!(chain.contains("127.0.0.1 are blocked"), "{chain}");
                    "blocked".to_owned()
                }
            });
        }
        assert_eq!(
            outcomes,
            ["answered 200", "blocked"].repeat(3),
            "each answer is judged as it comes"
        );
        assert_eq!(
            answers.load(std::sync::atomic::Ordering::SeqCst),
            6,
            "one lookup per request"
        );
        assert_eq!(public_hits.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(
            internal_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the blocked address was never connected to"
        );
    }
}
