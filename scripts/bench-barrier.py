#!/usr/bin/env python3
"""What the durability barrier of `flush = "every-event"` does under load, per request and per
thread: figures that hold on a noisy machine where requests/s do not.

    scripts/bench-barrier.py [--case hooktap-durable-post] [--connections 64] [--duration 5]
                             [--hooktap BIN] [-- more arguments for `proxy attach`]

It runs `cargo bench --bench proxy -- attach` (the e2e case's server under wrk) with itself as
the attached command, which reads, at the start and the end of the measured wrk run:
  - hooktap's barrier counters from its admin API (`hooktap_store_syncs_total`,
    `hooktap_store_synced_events_total`): barriers per event and the mean group size;
  - every thread's voluntary and involuntary context switches and user/system CPU
    (`/proc/<pid>/task/*`), grouped by thread name (sled's seven `sled-io-N` threads as one).
`--driver` runs an already built benchmark binary (target/release/deps/proxy-*) instead of
`cargo bench`, e.g. while the sources are being changed.
"""

import argparse
import ast
import collections
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def threads(pids):
    """name -> [threads, voluntary, involuntary, user ticks, system ticks]."""
    out = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = f.read()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = re.sub(r"-\d+$", "", name) if name.startswith("sled-io") else name
            row = out[name]
            row[0] += 1
            row[1] += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
            row[2] += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)[1])
            row[3] += int(fields[11])
            row[4] += int(fields[12])
    return out


def barrier_counters(pids):
    """The barrier counters from whichever of the server's listening ports serves them."""
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    for pid in pids:
        for line in listening.splitlines():
            if f"pid={pid}," not in line:
                continue
            port = line.split()[3].rsplit(":", 1)[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            found = dict(
                re.findall(r"^hooktap_store_(syncs|synced_events)_total (\d+)", text, re.M)
            )
            if found:
                return {k: int(v) for k, v in found.items()}
    return {}


def sample(out, pids):
    """The attached command: snapshots now and at SIGINT (when the measured run ends)."""
    before = (threads(pids), barrier_counters(pids))
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.1)
    after = (threads(pids), barrier_counters(pids))
    with open(out, "w") as f:
        f.write(repr(tuple((dict(t), b) for t, b in (before, after))))


def report(out, requests):
    with open(out) as f:
        (t0, b0), (t1, b1) = ast.literal_eval(f.read())
    if b1:
        syncs = b1["syncs"] - b0.get("syncs", 0)
        events = b1["synced_events"] - b0.get("synced_events", 0)
        print(f"barriers {syncs}, events {events}: {syncs / max(events, 1):.3f} barriers per "
              f"event, {events / max(syncs, 1):.1f} events per barrier")
    print(f"{'thread':16} {'n':>3} {'vol cs/req':>10} {'invol/req':>9} {'user µs/req':>11} "
          f"{'sys µs/req':>10}")
    rows = []
    for name, row in t1.items():
        base = t0.get(name, [0, 0, 0, 0, 0])
        d = [row[i] - base[i] for i in range(5)]
        rows.append((name, row[0], d[1] / requests, d[2] / requests,
                     d[3] * 1e6 / TICK / requests, d[4] * 1e6 / TICK / requests))
    for r in sorted(rows, key=lambda r: -(r[4] + r[5])):
        if r[4] + r[5] + r[2] + r[3] > 0:
            print(f"{r[0]:16} {r[1]:3} {r[2]:10.2f} {r[3]:9.2f} {r[4]:11.1f} {r[5]:10.1f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--sample":
        sample(sys.argv[2], [int(p) for p in sys.argv[3].split(",")])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--case", default="hooktap-durable-post")
    p.add_argument("--connections", default="64")
    p.add_argument("--duration", default="5")
    p.add_argument("--hooktap")
    p.add_argument("--driver", help="a built benchmark binary to run instead of cargo bench")
    p.add_argument("rest", nargs="*")
    a = p.parse_args()
    out = os.path.abspath(f"target/bench/barrier-{a.case}-{os.getpid()}.txt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    driver = [a.driver] if a.driver else ["cargo", "bench", "--bench", "proxy", "--"]
    cmd = driver + ["attach", "--case", a.case,
           "--connections", a.connections, "--duration", a.duration,
           "--cmd", f"python3 {os.path.abspath(__file__)} --sample {out} {{pids}}"]
    if a.hooktap:
        cmd += ["--hooktap", a.hooktap]
    run = subprocess.run(cmd + a.rest, capture_output=True, text=True)
    line = next((l for l in run.stdout.splitlines() if l.startswith("ATTACH")), None)
    if line is None:
        sys.exit(f"no ATTACH line from the benchmark:\n{run.stdout}\n{run.stderr}")
    print(line)
    report(out, int(re.search(r"requests=(\d+)", line)[1]))


if __name__ == "__main__":
    main()
