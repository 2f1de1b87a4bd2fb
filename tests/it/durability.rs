//! `flush = "every-event"` is a durability barrier: between an event's store write and the
//! response that confirms it, sled's log file is `fdatasync`ed. Proven from outside: strace
//! records every `fsync`/`fdatasync` of the store's `db` file with its start and duration, and
//! each client records when it sent its request and when its response arrived. For every
//! confirmed event, one sync must lie entirely within that window (sled alone, without the
//! barrier, syncs about twice a second: most windows would hold none).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::*;

/// A sync of the store's log file: when it started and ended (seconds since the epoch).
#[derive(Debug, Clone, Copy)]
struct Sync {
    start: f64,
    end: f64,
}

/// strace attached to a running hooktap and all its threads, recording syncs.
struct Trace {
    child: tokio::process::Child,
    out: std::path::PathBuf,
}

impl Trace {
    /// Attaches to `pid` and returns once every thread is traced.
    async fn attach(pid: u32, out: std::path::PathBuf) -> Self {
        let mut child = tokio::process::Command::new("strace")
            .args([
                "-f",
                "-ttt",
                "-T",
                "-y",
                "-e",
                "trace=fsync,fdatasync",
                "-o",
            ])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("strace (scripts/install-deps.sh installs it)");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        // strace says "Process <tid> attached" for each thread; the main thread's comes first.
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("strace stderr") {
                if line.contains(&format!("Process {pid} attached")) {
                    return;
                }
                assert!(
                    !line.contains("Operation not permitted"),
                    "strace cannot trace here: {line}"
                );
            }
            panic!("strace exited before attaching");
        })
        .await
        .expect("strace attaches within 20 s");
        // The remaining threads' lines follow at once; drain stderr so strace never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tokio::time::sleep(Duration::from_millis(200)).await;
        Self { child, out }
    }

    /// Detaches (hooktap runs on) and returns the syncs of `db_file` that succeeded.
    async fn finish(mut self, db_file: &str) -> Vec<Sync> {
        let pid = self.child.id().expect("strace pid");
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("kill");
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("strace detaches")
            .expect("wait");
        let text = std::fs::read_to_string(&self.out).expect("strace output");
        let syncs = parse(&text, db_file);
        if syncs.is_empty() {
            let head: Vec<&str> = text.lines().take(20).collect();
            eprintln!(
                "strace recorded no sync of {db_file}; it began:\n{}",
                head.join("\n")
            );
        }
        assert!(text.lines().count() > 0, "strace recorded nothing:\n{text}");
        syncs
    }
}

/// The successful syncs of `db_file` in strace's output. A line is
/// `<tid> <start> fdatasync(<fd></path/db>) = 0 <duration>`; when another thread's call comes
/// in between, strace splits it into `... <unfinished ...>` and, later on the same thread,
/// `<tid> <time> <... fdatasync resumed>) = 0 <duration>`.
fn parse(text: &str, db_file: &str) -> Vec<Sync> {
    let call = |c: &str| c.starts_with("fdatasync(") || c.starts_with("fsync(");
    let names_db = |c: &str| {
        c.contains(&format!("{db_file}>)")) || c.contains(&format!("{db_file}> <unfinished"))
    };
    let mut unfinished: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    let mut syncs = Vec::new();
    for line in text.lines() {
        // strace pads the thread id to a fixed width: split on runs of spaces.
        let Some((tid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        let start = if call(rest) && names_db(rest) {
            if rest.ends_with("<unfinished ...>") {
                unfinished.insert(tid, time);
                continue;
            }
            time
        } else if rest.starts_with("<... fdatasync resumed>")
            || rest.starts_with("<... fsync resumed>")
        {
            match unfinished.remove(tid) {
                Some(start) => start,
                None => continue,
            }
        } else {
            continue;
        };
        // `... = 0 <0.000234>`
        let mut tail = rest.rsplit(' ');
        let duration = tail
            .next()
            .and_then(|d| d.trim_matches(['<', '>']).parse::<f64>().ok());
        let result = tail.next();
        if let (Some(duration), Some("0")) = (duration, result) {
            syncs.push(Sync {
                start,
                end: start + duration,
            });
        }
    }
    syncs
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Sends one order and returns when it was sent and when its whole response had arrived.
async fn timed_order(client: &reqwest::Client, url: &str, email: &str) -> (f64, f64) {
    let sent = now();
    let r = client
        .post(url)
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), 201);
    r.bytes().await.expect("order body");
    (sent, now())
}

/// The windows that hold no complete sync.
fn unsynced(windows: &[(f64, f64)], syncs: &[Sync]) -> Vec<(f64, f64)> {
    windows
        .iter()
        .copied()
        .filter(|&(sent, answered)| !syncs.iter().any(|s| s.start >= sent && s.end <= answered))
        .collect()
}

/// hooktap in `every-event` mode in front of the shop, with strace attached.
struct Traced {
    proxy: TestProxy,
    trace: Trace,
    _receiver: TestReceiver,
    _upstream: TestUpstream,
}

impl Traced {
    async fn start() -> Self {
        let (upstream, addr) = TestUpstream::start().await;
        let receiver = TestReceiver::start(200).await;
        let setup = Setup::new(addr).webhook("shop", &receiver, "topics = [\"order.*\"]");
        let proxy = TestProxy::start_edited(&setup, |c| {
            c.replace("[store]\n", "[store]\nflush = \"every-event\"\n")
        })
        .await;
        let trace = Trace::attach(
            proxy.pid().expect("running"),
            proxy.dir.path().join("strace.txt"),
        )
        .await;
        Self {
            proxy,
            trace,
            _receiver: receiver,
            _upstream: upstream,
        }
    }

    /// Detaches strace; the syncs of the store's log file (`path = "data"` is relative to the
    /// config file's directory).
    async fn syncs(self) -> (TestProxy, Vec<Sync>) {
        let db = self.proxy.dir.path().join("data/db").display().to_string();
        let syncs = self.trace.finish(&db).await;
        (self.proxy, syncs)
    }
}

/// One client, one order at a time: each confirmed event had its own sync in its window.
#[tokio::test]
async fn every_event_syncs_before_it_answers() {
    let traced = Traced::start().await;
    let client = client();
    let url = traced.proxy.url("/orders");
    let mut windows = Vec::new();
    for i in 0..30 {
        windows.push(timed_order(&client, &url, &format!("buyer{i}@example.com")).await);
    }
    let (proxy, syncs) = traced.syncs().await;
    let missing = unsynced(&windows, &syncs);
    assert!(
        missing.is_empty(),
        "{} of {} confirmed events had no fdatasync of the store between request and response \
         ({} syncs traced): {missing:?}",
        missing.len(),
        windows.len(),
        syncs.len()
    );
    assert_eq!(proxy.metric_sum("hooktap_events_total").await, 30.0);
}

/// Many clients at once: every response still waited for a sync, and the events shared them
/// (fewer syncs than events: the group commit at work).
#[tokio::test]
async fn concurrent_events_share_syncs() {
    let traced = Traced::start().await;
    let client = client();
    let url = Arc::new(traced.proxy.url("/orders"));
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (client, url) = (client.clone(), Arc::clone(&url));
            tokio::spawn(async move {
                let mut windows = Vec::new();
                for i in 0..5 {
                    windows
                        .push(timed_order(&client, &url, &format!("c{c}-{i}@example.com")).await);
                }
                windows
            })
        })
        .collect();
    let mut windows = Vec::new();
    for c in clients {
        windows.extend(c.await.expect("client"));
    }
    let (proxy, syncs) = traced.syncs().await;
    let missing = unsynced(&windows, &syncs);
    assert!(
        missing.is_empty(),
        "{} of {} confirmed events had no fdatasync in their window: {missing:?}",
        missing.len(),
        windows.len()
    );
    assert!(
        syncs.len() < windows.len(),
        "{} syncs for {} events: no group commit",
        syncs.len(),
        windows.len()
    );
    let synced = proxy.metric_sum("hooktap_store_synced_events_total").await;
    assert!(
        synced >= 160.0,
        "hooktap_store_synced_events_total = {synced}"
    );
    assert_eq!(proxy.metric_sum("hooktap_events_total").await, 160.0);
}
