//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, `pg_ctl
//! start` on a free loopback port, stopped (and removed) when dropped. Never a server that
//! happens to run on the machine.
//!
//! The server binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<v>/bin`,
//! the newest version found; `HOOKTAP_PG_BIN` overrides). `initdb` refuses to run as root, so
//! as root the cluster runs as the `postgres` user. Connections over TCP need the password
//! ([`PASSWORD`]), so a wrong one can be tested.
//!
//! Used by the unit tests (`store::postgres::tests`) and, through `#[path]`, by the
//! integration tests.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The password of the cluster's `postgres` user.
pub const PASSWORD: &str = "hooktap-test";

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// `ssl = on` with a certificate made for the test (see [`Cluster::start_tls`]).
    tls: Option<Certificates>,
}

/// A CA and a server certificate it signed, all PEM.
pub struct Certificates {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Certificates {
    /// A new CA, and a certificate it signs for `names` (DNS names or IP addresses).
    pub fn new(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Each CA its own name: another test CA is an unknown issuer, not a forged signature.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        ca.distinguished_name.push(
            DnType::CommonName,
            format!(
                "hooktap test CA {}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        Self {
            ca: ca_pem,
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn is_root() -> bool {
    // From /proc rather than libc::geteuid: this crate forbids unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HOOKTAP_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/<version>/bin): run scripts/install-deps.sh, or set HOOKTAP_PG_BIN"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Creates and starts a cluster that accepts TLS (`ssl = on`) with a certificate for
    /// `names` signed by a CA made here ([`Cluster::ca_file`]). Plain connections are still
    /// accepted.
    pub fn start_tls(names: &[&str]) -> Self {
        Self::start_with(Some(Certificates::new(names)))
    }

    fn start_with(tls: Option<Certificates>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hooktap-pg-")
            .tempdir()
            .expect("tempdir");
        let as_postgres = is_root();
        let mut cluster = Self {
            bin: bin_dir(),
            port: free_port(),
            as_postgres,
            dir,
            tls,
        };
        let pwfile = cluster.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        if let Some(tls) = &cluster.tls {
            use std::os::unix::fs::PermissionsExt;
            let dir = cluster.dir.path();
            std::fs::write(dir.join("ca.pem"), &tls.ca).expect("write the CA");
            std::fs::write(dir.join("server.crt"), &tls.cert).expect("write the certificate");
            let key = dir.join("server.key");
            std::fs::write(&key, &tls.key).expect("write the key");
            // The server refuses a key that others can read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod the key");
        }
        if as_postgres {
            check(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(cluster.dir.path())
                    .output(),
            );
        }
        check(
            "initdb",
            cluster
                .command("initdb")
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg("--pwfile")
                .arg(&pwfile)
                .arg("-D")
                .arg(cluster.data())
                .output(),
        );
        // A port picked free can be taken by another process before the server binds it:
        // then start again on another one.
        for attempt in 1.. {
            match cluster.try_start_server() {
                Ok(()) => break,
                Err(why)
                    if attempt < 3
                        && (why.contains("could not bind") || why.contains("already in use")) =>
                {
                    cluster.port = free_port();
                }
                Err(why) => panic!("pg_ctl start failed: {why}"),
            }
        }
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again, after [`Cluster::kill`]) on the same port.
    pub fn start_server(&self) {
        if let Err(why) = self.try_start_server() {
            panic!("pg_ctl start failed: {why}");
        }
    }

    fn try_start_server(&self) -> Result<(), String> {
        // HOOKTAP_PG_OPTIONS adds server options (e.g. `-c
        // shared_preload_libraries=pg_stat_statements` to see where a benchmark's time goes).
        let tls = if self.tls.is_some() {
            let dir = self.dir.path().display();
            format!("-c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key")
        } else {
            String::new()
        };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=200 {tls} {}",
            self.port,
            self.dir.path().display(),
            std::env::var("HOOKTAP_PG_OPTIONS").unwrap_or_default()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30", "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", &options, "start"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl start: {e}"));
        if out.status.success() {
            return Ok(());
        }
        // pg_ctl only says that the server stopped: its reason is in the server's log.
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "{}{}\nserver log (last lines):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&self) {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"])
                .output(),
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hooktap_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        check(
            "createdb",
            self.command("createdb")
                .args(["-h", &self.dir.path().display().to_string()])
                .args(["-p", &self.port.to_string(), "-U", "postgres", &name])
                .output(),
        );
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Runs `sql` with psql on `database` and returns what it printed.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = check(
            "psql",
            self.command("psql")
                .args(["-h", &self.dir.path().display().to_string()])
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-X", "-A", "-F", " | ", "-c", sql])
                .output(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signed the server's certificate (a cluster from [`Cluster::start_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls.is_some(), "a cluster without TLS has no CA");
        self.dir.path().join("ca.pem")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
    }
}

/// A connection of the test's own to the database at `url` (as an operator's psql), its
/// connection task running until the client is dropped.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    client
}
