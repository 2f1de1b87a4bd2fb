//! End-to-end benchmark: direct vs nginx vs hooktap, delivery throughput, lag and memory.
//!
//! Run it with `scripts/bench.sh` (which installs wrk and nginx-light, builds the release
//! binaries and then calls `cargo bench --bench proxy`). This one binary is also the upstream
//! and webhook receiver (`proxy upstream`), the in-process delivery benchmark
//! (`proxy delivery`), the fixed-rate load generator (`proxy rate`) and a helper that attaches
//! a profiler to a server under load (`proxy attach`); the orchestrator starts itself in those
//! roles, pinned with `taskset`.
//!
//! CPU layout on a 2-core machine (`--no-pin` turns it off): the load generator (wrk) and the
//! upstream share core 0; the proxy under test (nginx with one worker, or hooktap with one
//! thread) has core 1 to itself. "direct" leaves core 1 idle, so it is the most the load
//! generator and upstream can do together: the ceiling every proxied case is measured against.

mod bare;
mod delivery;
mod hyper_ref;
#[path = "../../src/store/postgres/cluster.rs"]
mod pg_cluster;
mod upstream;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

/// The request body of `POST /orders` (wrk and the rate generator send the same).
const ORDER_REQUEST: &str = r#"{"email":"buyer@example.com","event_id":3,"tickets":2,"seats":["A12","A13"],"coupon":null,"newsletter":false}"#;

#[derive(Parser)]
#[command(about = "hooktap end-to-end benchmark")]
struct Cli {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    all: AllOpts,
}

#[derive(Subcommand)]
enum Sub {
    /// Serve the upstream / webhook receiver.
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
        /// 0: one current-thread runtime.
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[arg(long, default_value_t = 1800)]
        lifetime: u64,
    },
    /// Serve a bare pingora proxy (no filters): the reference for what pingora itself costs.
    Bare {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        knobs: bare::Knobs,
    },
    /// Serve a minimal hyper/tokio reverse proxy: the second reference, beside bare pingora.
    Hyper {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Print the hooktap config the benchmark runs (store in `dir`, the webhook receiver on the
    /// upstream), for tools that start hooktap themselves (scripts/bench-callgrind.sh).
    Config {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value = "active")]
        webhook_status: String,
    },
    /// The in-process delivery benchmark (one run).
    Delivery {
        #[arg(long)]
        receiver: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Delivery on sled, then on PostgreSQL with one, two and three instances (a throwaway
    /// cluster); prints one `SHARED` line per case.
    Shared {
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// The delivery threads' nice value (the product's `[delivery] nice`).
        #[arg(long, default_value_t = hooktap::delivery::DEFAULT_NICE)]
        nice: u8,
    },
    /// POST /orders at a fixed rate.
    Rate {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Start a case's servers, put load on them and run a command against the server's pids
    /// (`{pid}`, `{pids}` comma-separated with child processes) while the load runs.
    Attach {
        #[arg(long)]
        case: String,
        #[arg(long)]
        cmd: String,
        #[command(flatten)]
        opts: Box<AllOpts>,
    },
}

#[derive(Args, Clone)]
struct AllOpts {
    /// Measured runs per case (interleaved).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Seconds of warm-up before each measured run (not counted).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// hooktap `[proxy] threads` (and nginx `worker_processes`).
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Do not pin processes to cores.
    #[arg(long)]
    no_pin: bool,
    /// Run the upstream/receiver as SCHED_FIFO (`chrt -f 10`), so that sharing core 0 with wrk
    /// does not add wrk's scheduler slices to every proxied request's upstream time.
    #[arg(long)]
    upstream_rt: bool,
    /// A run during which other processes used more than this % of a core is repeated.
    #[arg(long, default_value_t = 10.0)]
    max_noise: f64,
    /// How often a noisy run is repeated at most (the last try is kept either way).
    #[arg(long, default_value_t = 3)]
    retries: usize,
    /// Sections to run: e2e, delivery, lag, memory.
    #[arg(long, value_delimiter = ',', default_value = "e2e,delivery,lag,memory")]
    only: Vec<String>,
    /// Cases of the e2e section (default: all nine): direct-get, nginx-get, pingora-get,
    /// hyper-get, hooktap-get, direct-post, nginx-post, hooktap-post, hooktap-durable-post
    /// (`flush = "every-event"`).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Events queued in the delivery benchmark.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 3)]
    delivery_runs: usize,
    #[arg(long, default_value_t = 1000)]
    lag_rate: u64,
    #[arg(long, default_value_t = 10)]
    lag_seconds: u64,
    #[arg(long, default_value_t = 3)]
    lag_runs: usize,
    /// MiB moved by each memory transfer.
    #[arg(long, default_value_t = 100)]
    transfer_mib: u64,
    /// The hooktap binary (default: $HOOKTAP_BIN, else target/release/hooktap).
    #[arg(long)]
    hooktap: Option<PathBuf>,
    /// Environment for hooktap, `KEY=VALUE` (repeatable), e.g.
    /// `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2` or `HOOKTAP_LOG=warn`.
    #[arg(long)]
    hooktap_env: Vec<String>,
    /// The status of hooktap's webhook in the e2e, lag and memory sections: `active`, or
    /// `paused` to measure capture and store without delivery.
    #[arg(long, default_value = "active")]
    webhook_status: String,
    /// hooktap's `[store] flush` in the lag and memory sections (`interval` or `every-event`);
    /// the e2e section measures both (`hooktap-post`, `hooktap-durable-post`).
    #[arg(long, default_value = "interval", value_parser = ["interval", "every-event"])]
    flush: String,
    /// Seconds after each e2e run's load to measure the server's RSS again (idle; 0: not).
    #[arg(long, default_value_t = 0)]
    idle_rss_after: u64,
    /// An argument for bare pingora (repeatable; one of its knobs, see `proxy bare --help`),
    /// e.g. `--bare-arg=--keepalive-pool=16`.
    #[arg(long, allow_hyphen_values = true)]
    bare_arg: Vec<String>,
    /// Extra `[proxy]` lines for hooktap's config, e.g. `max_capture_bytes = 65536`.
    #[arg(long)]
    hooktap_proxy_extra: Option<String>,
    /// Extra `[store]` lines for hooktap's config, e.g. `commit_delay = "0s"`.
    #[arg(long)]
    hooktap_store_extra: Option<String>,
    /// Extra `[delivery]` lines for hooktap's config, e.g. `nice = 0`.
    #[arg(long)]
    hooktap_delivery_extra: Option<String>,
    /// Run hooktap on the PostgreSQL store (a throwaway cluster, a new database per start)
    /// instead of sled.
    #[arg(long)]
    postgres: bool,
    /// Where the Markdown report goes.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Upstream {
            listen,
            threads,
            lifetime,
        }) => upstream::serve(listen, threads, Duration::from_secs(lifetime)).map_err(Into::into),
        Some(Sub::Bare {
            listen,
            upstream,
            threads,
            dir,
            knobs,
        }) => {
            bare::serve(listen, upstream, threads, &dir, knobs);
            Ok(())
        }
        Some(Sub::Hyper {
            listen,
            upstream,
            threads,
        }) => hyper_ref::serve(listen, upstream, threads),
        Some(Sub::Config {
            dir,
            listen,
            upstream,
            threads,
            webhook_status,
        }) => {
            print!(
                "{}",
                delivery::config_text(&dir, listen, upstream, upstream, &webhook_status, threads)
            );
            Ok(())
        }
        Some(Sub::Delivery {
            receiver,
            events,
            threads,
            timeout,
        }) => cmd_delivery(receiver, events, threads, Duration::from_secs(timeout)),
        Some(Sub::Shared {
            events,
            threads,
            runs,
            nice,
        }) => cmd_shared(events, threads, runs, nice),
        Some(Sub::Rate { url, rate, seconds }) => cmd_rate(&url, rate, seconds),
        Some(Sub::Attach { case, cmd, opts }) => cmd_attach(&opts, &case, &cmd),
        None => cmd_all(&cli.all),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// --- processes --------------------------------------------------------------------------------

/// A child process that is stopped (TERM, then KILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        cpus: Option<&str>,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(name, &[], cpus, program, args, envs, log)
    }

    /// As [`Proc::spawn`], run through `prefix` (e.g. `chrt -f 10`).
    fn spawn_with(
        name: &str,
        prefix: &[&str],
        cpus: Option<&str>,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut argv: Vec<std::ffi::OsString> = prefix.iter().map(Into::into).collect();
        if let Some(c) = cpus {
            argv.extend(["taskset".into(), "-c".into(), c.into()]);
        }
        argv.push(program.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let out = std::fs::File::create(&log)?;
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process and its child processes (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(children(self.pid()));
        pids
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr` accepts connections.
    fn wait_ready(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} is not listening on {addr} after 20 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Waits for `child` up to `limit`, killing it past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("child process ran longer than {limit:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

// --- /proc --------------------------------------------------------------------------------------

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| status_kb(p, "VmRSS")).sum()
}

fn hwm_kb(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| status_kb(p, "VmHWM")).sum()
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// User + system CPU ticks of the processes.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of the line; the 12th and 13th after the command name.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// (busy, total) ticks per core from /proc/stat.
fn core_ticks() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1).max(1) as f64;
            100.0 * a.0.saturating_sub(b.0) as f64 / total
        })
        .collect()
}

// --- tiny HTTP client for control requests -------------------------------------------------

fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

fn receiver_stats(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&http(addr, "GET", "/stats")?)?)
}

fn reset_receiver(addr: SocketAddr) -> anyhow::Result<()> {
    http(addr, "POST", "/stats/reset").map(drop)
}

fn stat(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

// --- the environment: binaries, layout, upstream --------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Nginx,
    /// pingora with no filters: a reference, not a contender.
    Pingora,
    /// hyper and tokio with no filters: the second reference.
    Hyper,
    Hooktap,
    /// hooktap with `[store] flush = "every-event"`.
    HooktapDurable,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Traffic {
    /// GET of a 1 KB JSON document that no rule matches: passthrough.
    Get,
    /// POST /orders → 201: every request matches the `order created` rule.
    Orders,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    target: Target,
    traffic: Traffic,
}

const CASES: [Case; 9] = [
    Case {
        name: "direct GET",
        target: Target::Direct,
        traffic: Traffic::Get,
    },
    Case {
        name: "nginx GET",
        target: Target::Nginx,
        traffic: Traffic::Get,
    },
    Case {
        name: "bare pingora GET (reference)",
        target: Target::Pingora,
        traffic: Traffic::Get,
    },
    Case {
        name: "hyper GET (reference)",
        target: Target::Hyper,
        traffic: Traffic::Get,
    },
    Case {
        name: "hooktap GET (passthrough)",
        target: Target::Hooktap,
        traffic: Traffic::Get,
    },
    Case {
        name: "direct POST /orders",
        target: Target::Direct,
        traffic: Traffic::Orders,
    },
    Case {
        name: "nginx POST /orders",
        target: Target::Nginx,
        traffic: Traffic::Orders,
    },
    Case {
        name: "hooktap POST /orders (matched)",
        target: Target::Hooktap,
        traffic: Traffic::Orders,
    },
    Case {
        name: "hooktap POST /orders (matched, every-event)",
        target: Target::HooktapDurable,
        traffic: Traffic::Orders,
    },
];

fn case_key(c: &Case) -> String {
    let t = match c.target {
        Target::Direct => "direct",
        Target::Nginx => "nginx",
        Target::Pingora => "pingora",
        Target::Hyper => "hyper",
        Target::Hooktap => "hooktap",
        Target::HooktapDurable => "hooktap-durable",
    };
    let r = match c.traffic {
        Traffic::Get => "get",
        Traffic::Orders => "post",
    };
    format!("{t}-{r}")
}

/// The path GET load asks for: `/orders/{id}` is a route of the example rules, but only for
/// PUT/PATCH/DELETE, so a GET is a router lookup that finds no candidate (passthrough).
const GET_PATH: &str = "/orders/1";

struct Env {
    /// The PostgreSQL cluster of `--postgres`.
    postgres: Option<pg_cluster::Cluster>,
    opts: AllOpts,
    hooktap: PathBuf,
    me: PathBuf,
    dir: tempfile::TempDir,
    upstream_addr: SocketAddr,
    upstream: Proc,
    get_lua: PathBuf,
    post_lua: PathBuf,
    ticks: u64,
}

impl Env {
    fn cpus(&self, role: &str) -> Option<&'static str> {
        if self.opts.no_pin {
            return None;
        }
        Some(match role {
            "proxy" => "1",
            _ => "0",
        })
    }

    fn new(opts: &AllOpts) -> anyhow::Result<Self> {
        let hooktap = opts
            .hooktap
            .clone()
            .or_else(|| std::env::var_os("HOOKTAP_BIN").map(PathBuf::from))
            .unwrap_or_else(|| {
                let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                    || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
                    PathBuf::from,
                );
                target.join("release/hooktap")
            });
        if !hooktap.exists() {
            bail!(
                "{} is missing: run `cargo build --release` (scripts/bench.sh does)",
                hooktap.display()
            );
        }
        for tool in ["wrk", "taskset", "timeout"] {
            if !tool_exists(tool) {
                bail!("`{tool}` is missing: run scripts/bench.sh, which installs it");
            }
        }
        let me = std::env::current_exe()?;
        let dir = tempfile::Builder::new()
            .prefix("hooktap-bench-")
            .tempdir()?;
        let get_lua = dir.path().join("get.lua");
        let post_lua = dir.path().join("post.lua");
        std::fs::write(&get_lua, WRK_DONE)?;
        std::fs::write(
            &post_lua,
            format!(
                "wrk.method = \"POST\"\nwrk.body = [[{ORDER_REQUEST}]]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{WRK_DONE}"
            ),
        )?;
        let upstream_addr = free_port()?;
        let no_pin = opts.no_pin;
        let prefix: &[&str] = if opts.upstream_rt {
            &["chrt", "-f", "10"]
        } else {
            &[]
        };
        let mut upstream = Proc::spawn_with(
            "upstream",
            prefix,
            (!no_pin).then_some("0"),
            &me,
            &[
                "upstream".into(),
                "--listen".into(),
                upstream_addr.to_string(),
                "--lifetime".into(),
                "1800".into(),
            ],
            &[],
            dir.path().join("upstream.log"),
        )?;
        upstream.wait_ready(upstream_addr)?;
        Ok(Self {
            postgres: opts.postgres.then(pg_cluster::Cluster::start),
            opts: opts.clone(),
            hooktap,
            me,
            dir,
            upstream_addr,
            upstream,
            get_lua,
            post_lua,
            ticks: clock_ticks(),
        })
    }

    fn scratch(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.path().join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn start_nginx(&self, name: &str) -> anyhow::Result<(Proc, SocketAddr)> {
        let dir = self.scratch(name)?;
        let addr = free_port()?;
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                r#"worker_processes {workers};
daemon off;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream app {{
        server {up};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
                workers = self.opts.proxy_threads,
                up = self.upstream_addr,
            ),
        )?;
        let mut p = Proc::spawn(
            "nginx",
            self.cpus("proxy"),
            Path::new("nginx"),
            &[
                "-p".into(),
                format!("{d}/"),
                "-c".into(),
                conf.display().to_string(),
                "-e".into(),
                format!("{d}/error.log"),
            ],
            &[],
            dir.join("stdout.log"),
        )?;
        p.wait_ready(addr)?;
        Ok((p, addr))
    }

    fn start_bare(&self, name: &str) -> anyhow::Result<(Proc, SocketAddr)> {
        let dir = self.scratch(name)?;
        let mut args = vec!["--dir".into(), dir.display().to_string()];
        args.extend(self.opts.bare_arg.iter().cloned());
        self.start_reference("bare pingora", "bare", &args, &dir)
    }

    fn start_hyper(&self, name: &str) -> anyhow::Result<(Proc, SocketAddr)> {
        let dir = self.scratch(name)?;
        self.start_reference("hyper reference", "hyper", &[], &dir)
    }

    /// One of the reference proxies this binary serves (`sub`), in front of the upstream.
    fn start_reference(
        &self,
        label: &str,
        sub: &str,
        extra: &[String],
        dir: &Path,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let addr = free_port()?;
        let mut args = vec![
            sub.to_owned(),
            "--listen".into(),
            addr.to_string(),
            "--upstream".into(),
            self.upstream_addr.to_string(),
            "--threads".into(),
            self.opts.proxy_threads.to_string(),
        ];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(
            label,
            self.cpus("proxy"),
            &self.me,
            &args,
            &[],
            dir.join(format!("{sub}.log")),
        )?;
        p.wait_ready(addr)?;
        Ok((p, addr))
    }

    fn start_hooktap(&self, name: &str, durable: bool) -> anyhow::Result<(Proc, SocketAddr)> {
        let dir = self.scratch(name)?;
        let addr = free_port()?;
        let mut text = delivery::config_text(
            &dir,
            addr,
            self.upstream_addr,
            self.upstream_addr,
            &self.opts.webhook_status,
            self.opts.proxy_threads,
        );
        if let Some(extra) = &self.opts.hooktap_proxy_extra {
            text = text.replacen("[store]", &format!("{extra}\n\n[store]"), 1);
        }
        if let Some(extra) = &self.opts.hooktap_store_extra {
            text = text.replacen("[store]\n", &format!("[store]\n{extra}\n"), 1);
        }
        if let Some(extra) = &self.opts.hooktap_delivery_extra {
            anyhow::ensure!(
                text.contains("[delivery]\n"),
                "--hooktap-delivery-extra: the bench config has no [delivery] section"
            );
            text = text.replacen("[delivery]\n", &format!("[delivery]\n{extra}\n"), 1);
        }
        if let Some(cluster) = &self.postgres {
            let url = cluster.database();
            text = text.replacen(
                "[store]\n",
                &format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
                1,
            );
        }
        if durable {
            text = text.replacen("flush = \"interval\"", "flush = \"every-event\"", 1);
        }
        let conf = dir.join("hooktap.toml");
        std::fs::write(&conf, text)?;
        let envs: Vec<(&str, &str)> = self
            .opts
            .hooktap_env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let mut p = Proc::spawn(
            "hooktap",
            self.cpus("proxy"),
            &self.hooktap,
            &["run".into(), "-c".into(), conf.display().to_string()],
            &envs,
            dir.join("hooktap.log"),
        )?;
        p.wait_ready(addr)?;
        Ok((p, addr))
    }

    fn start(&self, target: Target, name: &str) -> anyhow::Result<(Option<Proc>, SocketAddr)> {
        Ok(match target {
            Target::Direct => (None, self.upstream_addr),
            Target::Nginx => {
                let (p, a) = self.start_nginx(name)?;
                (Some(p), a)
            }
            Target::Pingora => {
                let (p, a) = self.start_bare(name)?;
                (Some(p), a)
            }
            Target::Hyper => {
                let (p, a) = self.start_hyper(name)?;
                (Some(p), a)
            }
            Target::Hooktap | Target::HooktapDurable => {
                let (p, a) = self.start_hooktap(name, target == Target::HooktapDurable)?;
                (Some(p), a)
            }
        })
    }

    fn wrk(&self, addr: SocketAddr, traffic: Traffic, seconds: u64) -> anyhow::Result<WrkResult> {
        let (script, path) = match traffic {
            Traffic::Get => (&self.get_lua, GET_PATH),
            Traffic::Orders => (&self.post_lua, "/orders"),
        };
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &(seconds + 20).to_string()]);
        if let Some(c) = self.cpus("load") {
            cmd.args(["taskset", "-c", c]);
        }
        cmd.arg("wrk")
            .arg(format!("-t{}", self.opts.wrk_threads))
            .arg(format!("-c{}", self.opts.connections))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "2s", "--latency", "-s"])
            .arg(script)
            .arg(format!("http://{addr}{path}"));
        let log = self.dir.path().join("wrk.out");
        let err = self.dir.path().join("wrk.err");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&err)?);
        let mut child = cmd.spawn().context("cannot run wrk")?;
        // wrk's own CPU time, sampled while it runs (it is a child of `timeout`): what the load
        // generator used, so that what the cores did beyond it and the servers can be told.
        let mut cpu = 0;
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            let mut pids = vec![child.id()];
            pids.extend(children(child.id()));
            cpu = cpu.max(cpu_ticks(&pids));
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut result = WrkResult::parse(&text).with_context(|| {
            format!(
                "wrk printed no result line:\n{text}\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        })?;
        result.cpu_ticks = cpu;
        Ok(result)
    }
}

fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// --- wrk ------------------------------------------------------------------------------------------

/// wrk's `done` hook: one machine-readable line (latencies in microseconds).
const WRK_DONE: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

#[derive(Clone, Debug, Default)]
struct WrkResult {
    requests: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
    /// CPU ticks wrk used (sampled; the last 25 ms may be missing).
    cpu_ticks: u64,
}

impl WrkResult {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("BENCH "))
            .context("no BENCH line")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if v.len() < 12 {
            bail!("short BENCH line: {line}");
        }
        Ok(Self {
            requests: v[0] as u64,
            seconds: v[1] / 1e6,
            p50_us: v[2],
            p99_us: v[4],
            p999_us: v[5],
            errors: v[7..12].iter().sum::<f64>() as u64,
            cpu_ticks: 0,
        })
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

// --- the e2e section ----------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Sample {
    wrk: WrkResult,
    /// CPU time of the server under test (the upstream for direct) per request.
    cpu_us_per_req: f64,
    /// Busy % of each core during the run.
    cores: Vec<f64>,
    /// CPU used by processes other than ours during the run, in % of one core.
    foreign: f64,
    rss_kb: u64,
    hwm_kb: u64,
    /// RSS `--idle-rss-after` seconds after the load stopped (0 when not asked for).
    idle_rss_kb: u64,
    /// Webhooks the receiver got during the measured run (matched case only).
    hooks: Option<u64>,
}

fn run_case(env: &Env, case: &Case, run: usize) -> anyhow::Result<Sample> {
    let name = format!("{}-{run}", case_key(case));
    let (server, addr) = env.start(case.target, &name)?;
    let pids = server
        .as_ref()
        .map_or_else(|| vec![env.upstream.pid()], Proc::pids);
    if env.opts.warmup > 0 {
        env.wrk(addr, case.traffic, env.opts.warmup)?;
    }
    let matched = matches!(case.target, Target::Hooktap | Target::HooktapDurable)
        && case.traffic == Traffic::Orders;
    if matched {
        reset_receiver(env.upstream_addr)?;
    }
    let upstream = [env.upstream.pid()];
    let others: &[u32] = if server.is_some() { &upstream } else { &[] };
    let (cpu0, other0, cores0) = (cpu_ticks(&pids), cpu_ticks(others), core_ticks());
    let wrk = env.wrk(addr, case.traffic, env.opts.duration)?;
    let (cpu1, other1, cores1) = (cpu_ticks(&pids), cpu_ticks(others), core_ticks());
    let hooks = if matched {
        Some(stat(&receiver_stats(env.upstream_addr)?, "hooks"))
    } else {
        None
    };
    // What the cores did beyond wrk, the upstream and the server: other processes on the
    // machine (noise), in % of one core.
    let busy: u64 = cores0
        .iter()
        .zip(&cores1)
        .map(|(b, a)| a.0.saturating_sub(b.0))
        .sum();
    let wall = cores0
        .iter()
        .zip(&cores1)
        .map(|(b, a)| a.1.saturating_sub(b.1))
        .max()
        .unwrap_or(1)
        .max(1);
    let ours = (cpu1 - cpu0) + (other1 - other0) + wrk.cpu_ticks;
    let foreign = 100.0 * busy.saturating_sub(ours) as f64 / wall as f64;
    let (rss, hwm) = (rss_kb(&pids), hwm_kb(&pids));
    let idle_rss_kb = if env.opts.idle_rss_after > 0 {
        std::thread::sleep(Duration::from_secs(env.opts.idle_rss_after));
        rss_kb(&pids)
    } else {
        0
    };
    let sample = Sample {
        cpu_us_per_req: (cpu1 - cpu0) as f64 * 1e6 / env.ticks as f64 / wrk.requests.max(1) as f64,
        cores: core_busy(&cores0, &cores1),
        foreign,
        rss_kb: rss,
        hwm_kb: hwm,
        idle_rss_kb,
        hooks,
        wrk,
    };
    drop(server);
    Ok(sample)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Clone, Debug, Default)]
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: f64,
    errors: u64,
    hooks_per_s: Option<f64>,
}

fn summarise(samples: &[Sample]) -> Summary {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    Summary {
        rps: m(|s| s.wrk.rps()),
        p50: m(|s| s.wrk.p50_us),
        p99: m(|s| s.wrk.p99_us),
        p999: m(|s| s.wrk.p999_us),
        cpu: m(|s| s.cpu_us_per_req),
        errors: samples.iter().map(|s| s.wrk.errors).sum(),
        hooks_per_s: samples
            .iter()
            .all(|s| s.hooks.is_some())
            .then(|| m(|s| s.hooks.unwrap_or(0) as f64 / s.wrk.seconds.max(1e-9))),
    }
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

struct Report {
    text: String,
    checks: Vec<(String, bool, String)>,
}

impl Report {
    fn say(&mut self, s: &str) {
        println!("{s}");
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn check(&mut self, target: &str, ok: bool, measured: String) {
        self.checks.push((target.to_owned(), ok, measured));
    }
}

fn e2e(env: &Env, report: &mut Report) -> anyhow::Result<BTreeMap<String, Summary>> {
    let cases: Vec<Case> = CASES
        .iter()
        .copied()
        .filter(|c| env.opts.cases.is_empty() || env.opts.cases.contains(&case_key(c)))
        .collect();
    let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut raw = String::new();
    for run in 0..env.opts.runs {
        // Interleaved, and rotated per run so that no case always follows the same one.
        for i in 0..cases.len() {
            let case = &cases[(i + run) % cases.len()];
            let mut tries = 0;
            let s = loop {
                let s = run_case(env, case, run)
                    .with_context(|| format!("case `{}`, run {}", case.name, run + 1))?;
                tries += 1;
                if s.foreign <= env.opts.max_noise || tries > env.opts.retries {
                    break s;
                }
                eprintln!(
                    "   {} run {}: other processes used {:.0}% of a core; repeating in 5 s",
                    case.name,
                    run + 1,
                    s.foreign
                );
                std::thread::sleep(Duration::from_secs(5));
            };
            let line = format!(
                "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {} | {:.0}{} | {:.1} / {:.1}{} | {} |",
                run + 1,
                case.name,
                s.wrk.rps(),
                ms(s.wrk.p50_us),
                ms(s.wrk.p99_us),
                ms(s.wrk.p999_us),
                s.cpu_us_per_req,
                s.cores
                    .iter()
                    .map(|c| format!("{c:.0}"))
                    .collect::<Vec<_>>()
                    .join("/"),
                s.foreign,
                if tries > 1 {
                    format!(" (try {tries})")
                } else {
                    String::new()
                },
                s.rss_kb as f64 / 1024.0,
                s.hwm_kb as f64 / 1024.0,
                if s.idle_rss_kb > 0 {
                    format!(" / idle {:.1}", s.idle_rss_kb as f64 / 1024.0)
                } else {
                    String::new()
                },
                s.hooks.map_or_else(String::new, |h| h.to_string()),
            );
            eprintln!("{line}");
            raw.push_str(&line);
            raw.push('\n');
            samples.entry(case_key(case)).or_default().push(s);
        }
    }
    let sums: BTreeMap<String, Summary> = samples
        .iter()
        .map(|(k, v)| (k.clone(), summarise(v)))
        .collect();

    report.say(&format!(
        "\n### End to end: medians of {} interleaved runs of `wrk -t{} -c{} -d{}s` ({} s warm-up each)\n",
        env.opts.runs, env.opts.wrk_threads, env.opts.connections, env.opts.duration, env.opts.warmup
    ));
    report.say("| case | requests/s | p50 ms | p99 ms | p99.9 ms | ×direct | ×nginx | server CPU µs/req | errors | webhooks/s delivered during the run |");
    report.say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in &cases {
        let Some(s) = sums.get(&case_key(case)) else {
            continue;
        };
        let prefix = match case.traffic {
            Traffic::Get => "get",
            Traffic::Orders => "post",
        };
        let ratio = |other: &str| {
            sums.get(&format!("{other}-{prefix}"))
                .filter(|_| case.target != Target::Direct)
                .map_or_else(String::new, |o| format!("{:.2}", s.rps / o.rps))
        };
        let vs_nginx = if matches!(
            case.target,
            Target::Hooktap | Target::HooktapDurable | Target::Pingora | Target::Hyper
        ) {
            ratio("nginx")
        } else {
            String::new()
        };
        report.say(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            case.name,
            s.rps,
            ms(s.p50),
            ms(s.p99),
            ms(s.p999),
            ratio("direct"),
            vs_nginx,
            s.cpu,
            s.errors,
            s.hooks_per_s
                .map_or_else(String::new, |h| format!("{h:.0}")),
        ));
    }
    report.say("\nEvery run (cores: busy % of core 0 / core 1 during the run; other processes: CPU the machine spent on anything but wrk, the upstream and the server, in % of one core — noise from outside the benchmark; a run above the noise limit is repeated):\n");
    report.say("| run | case | requests/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | cores % | other processes % | server RSS / peak MiB (/ idle after `--idle-rss-after`) | webhooks received |");
    report.say("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    report.say(raw.trim_end());

    if let (Some(h), Some(n)) = (sums.get("hooktap-get"), sums.get("nginx-get")) {
        report.check(
            "passthrough throughput ≥ nginx",
            h.rps >= n.rps,
            format!("{:.0} vs {:.0} req/s (×{:.2})", h.rps, n.rps, h.rps / n.rps),
        );
        report.check(
            "passthrough p99 ≤ nginx p99",
            h.p99 <= n.p99,
            format!("{} vs {} ms", ms(h.p99), ms(n.p99)),
        );
    }
    if let (Some(d), Some(m)) = (sums.get("hooktap-durable-post"), sums.get("hooktap-post")) {
        report.check(
            "matched every-event ≥ 80% of matched interval",
            d.rps >= 0.8 * m.rps,
            format!("{:.0} vs {:.0} req/s (×{:.2})", d.rps, m.rps, d.rps / m.rps),
        );
    }
    if let (Some(m), Some(p)) = (sums.get("hooktap-post"), sums.get("hooktap-get")) {
        report.check(
            "matched ≥ 80% of passthrough",
            m.rps >= 0.8 * p.rps,
            format!("{:.0} vs {:.0} req/s (×{:.2})", m.rps, p.rps, m.rps / p.rps),
        );
    }
    Ok(sums)
}

// --- delivery -------------------------------------------------------------------------------------

fn cmd_delivery(
    receiver: SocketAddr,
    events: u64,
    threads: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("hooktap-delivery-")
        .tempdir()?;
    let o = delivery::run(dir.path(), receiver, events, threads, timeout)?;
    println!(
        "DELIVERY events={} enqueue_ms={} deliver_ms={} delivered={} failed={}",
        o.events,
        o.enqueue.as_millis(),
        o.deliver.as_millis(),
        o.delivered,
        o.failed
    );
    Ok(())
}

/// The PostgreSQL server's processes: the postmaster (first line of postmaster.pid) and its
/// children.
fn postgres_pids(cluster: &pg_cluster::Cluster) -> Vec<u32> {
    let pid = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
    pid.map(|p| {
        let mut all = vec![p];
        all.extend(children(p));
        all
    })
    .unwrap_or_default()
}

fn cmd_shared(events: u64, threads: usize, runs: usize, nice: u8) -> anyhow::Result<()> {
    let receiver = free_port()?;
    std::thread::spawn(move || upstream::serve(receiver, 1, Duration::from_secs(3600)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(receiver).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cluster = pg_cluster::Cluster::start();
    let hz = clock_ticks() as f64;
    for run in 0..runs {
        for (label, instances) in [
            ("sled", 1),
            ("postgres", 1),
            ("postgres", 2),
            ("postgres", 3),
        ] {
            let url = (label == "postgres").then(|| cluster.database());
            let dir = tempfile::Builder::new()
                .prefix("hooktap-shared-")
                .tempdir()?;
            let pids = || postgres_pids(&cluster);
            let backend = delivery::Backend {
                postgres: url.as_deref(),
                instances,
                server_pids: &pids,
                nice,
            };
            let o = delivery::run_on(
                dir.path(),
                receiver,
                events,
                threads,
                Duration::from_secs(300),
                &backend,
            )?;
            let per_event = |ticks: u64| ticks as f64 / hz * 1e6 / o.events.max(1) as f64;
            if let (Some(url), true) = (
                &url,
                std::env::var("HOOKTAP_PG_OPTIONS").is_ok_and(|o| o.contains("pg_stat_statements")),
            ) {
                let db = url.rsplit('/').next().unwrap_or_default();
                let _ = cluster.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
                eprintln!("{}", cluster.psql(db, "SELECT calls, plans, round(total_plan_time) AS plan_ms, round(total_exec_time) AS ms, round(mean_exec_time::numeric, 3) AS mean_ms, shared_blks_hit + shared_blks_read AS blks, wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"));
                let _ = cluster.psql(db, "SELECT pg_stat_statements_reset()");
            }
            println!(
                "SHARED run={} backend={label} instances={instances} events={} enqueue_ms={} ship_ms={} deliver_ms={} delivered={} failed={} stored_per_s={:.0} webhooks_per_s={:.0} intake_cpu_us_per_event={:.1} deliver_cpu_us_per_event={:.1} pg_intake_cpu_us_per_event={:.1} pg_deliver_cpu_us_per_event={:.1}",
                run + 1,
                o.events,
                o.enqueue.as_millis(),
                o.ship.as_millis(),
                o.deliver.as_millis(),
                o.delivered,
                o.failed,
                o.events as f64 / (o.enqueue + o.ship).as_secs_f64().max(1e-9),
                o.delivered as f64 / o.deliver.as_secs_f64().max(1e-9),
                per_event(o.cpu_intake),
                per_event(o.cpu_deliver),
                per_event(o.pg_intake),
                per_event(o.pg_deliver),
            );
        }
    }
    Ok(())
}

fn delivery_section(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for run in 0..env.opts.delivery_runs {
        reset_receiver(env.upstream_addr)?;
        let mut cmd = match env.cpus("proxy") {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", c]).arg(&env.me);
                cmd
            }
            None => Command::new(&env.me),
        };
        cmd.args([
            "delivery",
            "--receiver",
            &env.upstream_addr.to_string(),
            "--events",
            &env.opts.events.to_string(),
            "--threads",
            &env.opts.proxy_threads.to_string(),
        ])
        .env("TMPDIR", env.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            so.read_to_string(&mut out)?;
        }
        wait_bounded(&mut child, Duration::from_secs(300))?;
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("DELIVERY "))
            .with_context(|| format!("delivery run printed no result:\n{out}"))?;
        let kv: BTreeMap<&str, u64> = line
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        let stats = receiver_stats(env.upstream_addr)?;
        let (enq_ms, del_ms) = (kv["enqueue_ms"] as f64, kv["deliver_ms"] as f64);
        let delivered = kv["delivered"];
        let rate = delivered as f64 / (del_ms / 1000.0).max(1e-9);
        rates.push(rate);
        let row = format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {} | {} | {} |",
            run + 1,
            kv["events"],
            enq_ms / 1000.0,
            kv["events"] as f64 / (enq_ms / 1000.0).max(1e-9),
            del_ms / 1000.0,
            rate,
            kv["failed"],
            stat(&stats, "hooks"),
            stat(&stats, "unsigned"),
        );
        eprintln!("{row}");
        rows.push(row);
    }
    let rate = median(rates);
    report.say(&format!(
        "\n### Delivery: {} events queued while paused, then resumed (median {:.0} webhooks/s)\n",
        env.opts.events, rate
    ));
    report.say("| run | events | enqueue s | events stored/s | deliver s | webhooks/s | failed | receiver got | unsigned |");
    report.say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        report.say(&r);
    }
    report.check(
        "≥ 10,000 signed webhooks/s",
        rate >= 10_000.0,
        format!("{rate:.0} webhooks/s"),
    );
    Ok(())
}

// --- lag --------------------------------------------------------------------------------------------

fn cmd_rate(url: &str, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(5))
            .build()?;
        let total = rate * seconds;
        let ok = Arc::new(AtomicU64::new(0));
        // Each 201's time from sending its request to having read its whole response, in µs.
        let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(total as usize);
        for _ in 0..total {
            tick.tick().await;
            let (client, ok, url) = (client.clone(), Arc::clone(&ok), url.to_owned());
            let latencies = Arc::clone(&latencies);
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(ORDER_REQUEST)
                    .send()
                    .await;
                if let Ok(resp) = r {
                    let created = resp.status().as_u16() == 201;
                    if resp.bytes().await.is_ok() && created {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if let Ok(mut l) = latencies.lock() {
                            l.push(us);
                        }
                    }
                }
            }));
        }
        let sent_in = started.elapsed();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        let ok = ok.load(Ordering::Relaxed);
        let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "RATE sent={total} ok={ok} errors={} seconds={:.3} request_p50_us={} request_p99_us={}",
            total - ok,
            sent_in.as_secs_f64(),
            pct(0.5),
            pct(0.99)
        );
        anyhow::Ok(())
    })
}

struct LagRun {
    ok: u64,
    /// The client's request → whole response, p50 and p99, in µs.
    request_us: (u64, u64),
    stats: serde_json::Value,
    rss_kb: u64,
}

fn lag_run(env: &Env, run: usize) -> anyhow::Result<LagRun> {
    let (mut hooktap, addr) =
        env.start_hooktap(&format!("lag-{run}"), env.opts.flush == "every-event")?;
    // Let the first connections be made before measuring.
    env.wrk(addr, Traffic::Get, 1)?;
    reset_receiver(env.upstream_addr)?;
    let mut cmd = match env.cpus("load") {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(&env.me);
            cmd
        }
        None => Command::new(&env.me),
    };
    cmd.args([
        "rate",
        "--url",
        &format!("http://{addr}/orders"),
        "--rate",
        &env.opts.lag_rate.to_string(),
        "--seconds",
        &env.opts.lag_seconds.to_string(),
    ])
    .stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        so.read_to_string(&mut out)?;
    }
    wait_bounded(&mut child, Duration::from_secs(env.opts.lag_seconds + 60))?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RATE "))
        .with_context(|| format!("rate generator printed no result:\n{out}"))?
        .to_owned();
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let ok = field("ok");
    let request_us = (field("request_p50_us"), field("request_p99_us"));
    // Wait (bounded) for the last webhooks.
    let deadline = Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let s = receiver_stats(env.upstream_addr)?;
        if stat(&s, "lag_count") >= ok || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rss_kb = rss_kb(&[hooktap.pid()]);
    hooktap.stop();
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/bench/lag-arrivals-{}.csv", run + 1));
    if let Some(parent) = csv.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&csv, http(env.upstream_addr, "GET", "/stats/arrivals")?)?;
    Ok(LagRun {
        ok,
        request_us,
        stats,
        rss_kb,
    })
}

fn lag_section(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in 0..env.opts.lag_runs {
        let r = lag_run(env, run).with_context(|| format!("lag run {}", run + 1))?;
        eprintln!(
            "lag run {}: p50 {} ms, p99 {} ms, {} of {} received",
            run + 1,
            ms(stat(&r.stats, "lag_p50_us") as f64),
            ms(stat(&r.stats, "lag_p99_us") as f64),
            stat(&r.stats, "lag_count"),
            r.ok
        );
        runs.push(r);
    }
    report.say(&format!(
        "\n### Lag at a fixed {} events/s, {} runs of {} s: upstream answer made → webhook at the receiver\n",
        env.opts.lag_rate, env.opts.lag_runs, env.opts.lag_seconds
    ));
    report.say(&format!(
        "hooktap's `[store] flush`: `{}`.\n",
        env.opts.flush
    ));
    report.say("| run | orders sent | 201s | request p50 ms | request p99 ms | webhooks received | lag p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | hooktap RSS after MiB |");
    report.say("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in runs.iter().enumerate() {
        let st = |k| ms(stat(&r.stats, k) as f64);
        report.say(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            i + 1,
            env.opts.lag_rate * env.opts.lag_seconds,
            r.ok,
            ms(r.request_us.0 as f64),
            ms(r.request_us.1 as f64),
            stat(&r.stats, "lag_count"),
            st("lag_p50_us"),
            st("lag_p90_us"),
            st("lag_p99_us"),
            st("lag_p999_us"),
            st("lag_max_us"),
            r.rss_kb as f64 / 1024.0
        ));
    }
    for (i, r) in runs.iter().enumerate() {
        report.say(&format!(
            "\nRun {}: the slowest webhooks, as [ms after the first arrived, lag ms]: {} (every arrival: target/bench/lag-arrivals-{}.csv)",
            i + 1,
            r.stats
                .get("worst_at_ms_lag_ms")
                .map_or_else(String::new, ToString::to_string),
            i + 1
        ));
    }
    let med = |k: &str| median(runs.iter().map(|r| stat(&r.stats, k) as f64).collect());
    let (p50, p99) = (med("lag_p50_us"), med("lag_p99_us"));
    let all_in = runs
        .iter()
        .all(|r| r.ok > 0 && stat(&r.stats, "lag_count") >= r.ok);
    report.say(&format!(
        "\nMedian over the runs: lag p50 {} ms, p99 {} ms.",
        ms(p50),
        ms(p99)
    ));
    report.check(
        "lag p99 ≤ 20 ms at 1,000 events/s",
        p99 <= 20_000.0 && all_in,
        format!(
            "median p99 {} ms (runs: {}), every webhook received: {}",
            ms(p99),
            runs.iter()
                .map(|r| ms(stat(&r.stats, "lag_p99_us") as f64))
                .collect::<Vec<_>>()
                .join(", "),
            if all_in { "yes" } else { "no" }
        ),
    );
    Ok(())
}

// --- memory ---------------------------------------------------------------------------------------

/// Samples the RSS of `pid` every 2 ms while `f` runs; returns (before, peak, after) in KiB.
fn watch_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (u64, u64, u64, T) {
    let before = rss_kb(&[pid]);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(&[pid]), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let after = rss_kb(&[pid]);
    (before, peak.load(Ordering::Relaxed).max(after), after, out)
}

/// Sends `bytes` as the body of `method path`; returns the answer's status and the seconds taken.
fn upload(addr: SocketAddr, path: &str, bytes: u64) -> anyhow::Result<(u16, f64)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let status = String::from_utf8_lossy(&answer[..answer.len().min(12)])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, started.elapsed().as_secs_f64()))
}

/// Downloads `path`; returns the status, the bytes received (headers included) and seconds.
fn download(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, u64, f64)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut status = 0u16;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if total == 0 {
            status = String::from_utf8_lossy(&buf[..n.min(12)])
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        total += n as u64;
    }
    Ok((status, total, started.elapsed().as_secs_f64()))
}

fn memory_section(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let (hooktap, addr) = env.start_hooktap("memory", env.opts.flush == "every-event")?;
    let pid = hooktap.pid();
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kb(&[pid]);
    let bytes = env.opts.transfer_mib * 1024 * 1024;
    let mib = |kb: u64| kb as f64 / 1024.0;
    let growth = |before: u64, peak: u64| peak.saturating_sub(before);

    let mut rows = Vec::new();
    let mut worst_passthrough = 0u64;
    let (b, p, a, up) = watch_rss(pid, || upload(addr, "/upload", bytes));
    let (status, secs) = up?;
    worst_passthrough = worst_passthrough.max(growth(b, p));
    rows.push(format!(
        "| upload {} MiB, POST /upload (no rule) | {status} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        env.opts.transfer_mib,
        env.opts.transfer_mib as f64 / secs,
        mib(b),
        mib(p),
        mib(a),
        mib(growth(b, p))
    ));
    let (b, p, a, down) = watch_rss(pid, || download(addr, &format!("/download/{bytes}")));
    let (status, got, secs) = down?;
    worst_passthrough = worst_passthrough.max(growth(b, p));
    rows.push(format!(
        "| download {} MiB, GET /download (no rule; {} bytes received) | {status} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        env.opts.transfer_mib,
        got,
        env.opts.transfer_mib as f64 / secs,
        mib(b),
        mib(p),
        mib(a),
        mib(growth(b, p))
    ));
    let (b, p, a, up) = watch_rss(pid, || upload(addr, "/orders", bytes));
    let (status, secs) = up?;
    let matched_growth = growth(b, p);
    rows.push(format!(
        "| upload {} MiB, POST /orders (matching rule; capture limit 1 MiB) | {status} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        env.opts.transfer_mib,
        env.opts.transfer_mib as f64 / secs,
        mib(b),
        mib(p),
        mib(a),
        mib(matched_growth)
    ));
    let hwm = hwm_kb(&[pid]);
    drop(hooktap);

    report.say(&format!(
        "\n### Memory (hooktap, `threads = {}`)\n\nIdle RSS 2 s after start: **{:.1} MiB**. Peak RSS over the whole section (VmHWM): {:.1} MiB.\n",
        env.opts.proxy_threads,
        mib(idle),
        mib(hwm)
    ));
    report.say("| transfer | status | MiB/s | RSS before MiB | RSS peak MiB | RSS after MiB | growth MiB |");
    report.say("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        report.say(&r);
    }
    report.check(
        "idle RSS < 64 MB",
        idle < 64 * 1024,
        format!("{:.1} MiB", mib(idle)),
    );
    report.check(
        "100 MB upload/download (no rule): RSS growth ≤ a few MB (8 MiB)",
        worst_passthrough <= 8 * 1024,
        format!("worst {:.1} MiB", mib(worst_passthrough)),
    );
    report.check(
        "100 MB upload to a matching rule: growth bounded by max_capture_bytes (≤ 1 MiB + 8 MiB)",
        matched_growth <= 9 * 1024,
        format!("{:.1} MiB", mib(matched_growth)),
    );
    Ok(())
}

// --- routing check from the criterion results -----------------------------------------------------

fn criterion_mean_ns(id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let text =
        std::fs::read_to_string(target.join("criterion").join(id).join("new/estimates.json"))
            .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.pointer("/mean/point_estimate")?.as_f64()
}

fn routing_check(report: &mut Report) {
    for kind in ["hit", "miss"] {
        let one = criterion_mean_ns(&format!("route/{kind}/1"));
        let many = criterion_mean_ns(&format!("route/{kind}/10000"));
        if let (Some(one), Some(many)) = (one, many) {
            report.check(
                &format!("routing ({kind}) with 10,000 rules ≤ 2× 1 rule (criterion)"),
                many <= 2.0 * one,
                format!("{many:.0} ns vs {one:.0} ns (×{:.2})", many / one),
            );
        }
    }
}

// --- all --------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let run = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                s.push_str(&String::from_utf8_lossy(&o.stderr));
                s.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "- date: {}\n- machine: {cores} cores, {cpu}, kernel {}\n- tools: {}, {}, {}",
        run("date -u '+%Y-%m-%d %H:%M UTC'"),
        run("uname -r"),
        run("nginx -v"),
        run("wrk -v"),
        run("rustc --version"),
    )
}

fn cmd_all(opts: &AllOpts) -> anyhow::Result<()> {
    let env = Env::new(opts)?;
    let mut report = Report {
        text: String::new(),
        checks: Vec::new(),
    };
    report.say("## hooktap benchmark\n");
    report.say(&machine());
    report.say(&format!(
        "- layout: {}\n- hooktap: example rules (rules/ticket-shop.toml), `[proxy] threads = {}`, one webhook to the receiver; nginx: `worker_processes {}`, upstream `keepalive 64`",
        if opts.no_pin {
            "nothing pinned".to_owned()
        } else {
            "wrk and the upstream/receiver pinned to core 0 (`taskset -c 0`), the proxy under test (and the delivery benchmark) to core 1".to_owned()
        },
        opts.proxy_threads,
        opts.proxy_threads
    ));
    let wants = |s: &str| opts.only.iter().any(|o| o == s);
    if wants("e2e") {
        e2e(&env, &mut report)?;
    }
    if wants("delivery") {
        delivery_section(&env, &mut report)?;
    }
    if wants("lag") {
        lag_section(&env, &mut report)?;
    }
    if wants("memory") {
        memory_section(&env, &mut report)?;
    }
    routing_check(&mut report);
    let mut checks = String::from("\n### Targets\n\n| target | met | measured |\n|---|---|---|\n");
    for (t, ok, m) in &report.checks {
        let _ = writeln!(
            checks,
            "| {t} | {} | {m} |",
            if *ok { "yes" } else { "**no**" }
        );
    }
    report.say(checks.trim_end());
    let out = opts.out.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/proxy-results.md")
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &report.text)?;
    eprintln!("\nreport written to {}", out.display());
    Ok(())
}

// --- attach ---------------------------------------------------------------------------------------

fn cmd_attach(opts: &AllOpts, case: &str, cmd: &str) -> anyhow::Result<()> {
    let env = Env::new(opts)?;
    let c = CASES
        .iter()
        .find(|c| case_key(c) == case)
        .with_context(|| format!("unknown case `{case}`: one of direct-get, nginx-get, pingora-get, hyper-get, hooktap-get, direct-post, nginx-post, hooktap-post, hooktap-durable-post"))?;
    let (server, addr) = env.start(c.target, "attach")?;
    let pids = server
        .as_ref()
        .map_or_else(|| vec![env.upstream.pid()], Proc::pids);
    env.wrk(addr, c.traffic, opts.warmup.max(1))?;
    let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let full = cmd
        .replace("{pids}", &pid_list.join(","))
        .replace("{pid}", &pid_list[0]);
    eprintln!("attach: {full}");
    let mut tool = Command::new("sh")
        .args(["-c", &format!("exec {full}")])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = cpu_ticks(&pids);
    let w = env.wrk(addr, c.traffic, opts.duration)?;
    let cpu1 = cpu_ticks(&pids);
    // perf and strace stop and write their summary on SIGINT; `sh -c` execs the tool.
    signal(tool.id(), "INT");
    wait_bounded(&mut tool, Duration::from_secs(120))?;
    println!(
        "ATTACH case={case} requests={} rps={:.0} p50_ms={} p99_ms={} cpu_us_per_req={:.1}",
        w.requests,
        w.rps(),
        ms(w.p50_us),
        ms(w.p99_us),
        (cpu1 - cpu0) as f64 * 1e6 / env.ticks as f64 / w.requests.max(1) as f64
    );
    drop(server);
    Ok(())
}
