#!/usr/bin/env python3
"""Instructions per request of hooktap's request path, counted by callgrind: repeatable on a
noisy machine where wall-clock figures are not.

    scripts/bench-callgrind.py [--hooktap target/release/hooktap] [--requests 2000]
                               [--cases get,post,orders,orders-active,orders-keyed] [--postgres]
                               [--connections 1]

Cases (the traffic of benches/proxy, sent one request at a time on one keep-alive connection):
  get            GET /orders/1: a router lookup that finds no candidate (passthrough)
  post           POST /basket with the POST /orders body: no rule's route (passthrough POST)
  orders         POST /orders -> 201: matched by `order created`, the webhook paused
                 (capture, document, rules, store; nothing sent)
  orders-active  the same with the webhook active: each event is also signed and sent to a
                 receiver (delivery's instructions count, on whatever thread it runs)
  orders-keyed   orders-active with `ordering_key = "$.id"` on the webhook: delivered in order
                 per key (every order its own key)

hooktap runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is switched on
after start-up, the counters are zeroed after a warm-up of 200 requests and dumped after
`--requests` more. The figure is all of hooktap's threads' instructions in that window divided by
the requests (idle background work is part of it; it is small beside a request at this rate).
The upstream and receiver are a small Python server here: only hooktap is counted.

--postgres runs hooktap on the PostgreSQL store, against a throwaway cluster this script starts
(initdb as the `postgres` user, pg_ctl on a free port, stopped at the end). The window then
ends once PostgreSQL holds every event of it: the shipper's moving them (reading the local
journal back, sending, forgetting) is counted with the requests, as delivery is in
orders-active. PostgreSQL itself is not counted.
"""

import argparse
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ORDER_REQUEST = (
    b'{"email":"buyer@example.com","event_id":3,"tickets":2,"seats":["A12","A13"],'
    b'"coupon":null,"newsletter":false}'
)
ORDER_TAIL = (
    ',"status":"paid","total":90.0,"currency":"EUR","created_at":"2026-06-01T18:00:00Z",'
    '"customer":{"name":"Ada Lovelace","phone":"+44 20 7946 0000","address":{'
    '"street":"12 Analytical Row","city":"London","postcode":"N1 9GU","country":"GB"}},'
    '"tickets":[{"id":"T-1001","seat":"A12","price":45.0,"type":"adult",'
    '"barcode":"8f14e45fceea167a5a36dedd4bea2543"},{"id":"T-1002","seat":"A13",'
    '"price":45.0,"type":"adult","barcode":"c9f0f895fb98ab9159f51fd0297e236d"}],'
    '"event":{"id":3,"name":"Symphony No. 9 - Opening Night","venue":"Royal Festival Hall",'
    '"starts_at":"2026-06-01T19:30:00Z","doors_at":"2026-06-01T18:45:00Z"},'
    '"payment":{"method":"card","brand":"visa","last4":"4242",'
    '"authorised_at":"2026-06-01T18:00:02Z","reference":"pi_3PqR5sT6uV7wX8yZ9aB0cD1e"},'
    '"notes":"Wheelchair space requested for seat A12; please contact the box office '
    'before the performance. Tickets are non-transferable.","channel":"online",'
    '"lang":"en-GB","source":"box-office-web","affiliate":null,"gift":false}'
)
GET_BODY = ('{"id":1' + ORDER_TAIL).encode()


class Upstream(http.server.BaseHTTPRequestHandler):
    """The app and the webhook receiver: what benches/proxy/upstream.rs answers."""

    protocol_version = "HTTP/1.1"
    next_id = [1]
    hooks = [0]

    def log_message(self, *args):
        pass

    def answer(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(200, GET_BODY)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        if self.path == "/orders":
            self.next_id[0] += 1
            i = self.next_id[0]
            body = ('{"id":%d' % i + ORDER_TAIL).encode()
            self.answer(201, body, [("Location", "/orders/%d" % i)])
        elif self.path == "/hooks":
            self.hooks[0] += 1
            self.answer(200, b"ok")
        else:
            self.answer(200, b'{"received":%d}' % n)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(dir_, listen, upstream, status, flush="interval", pg_url=None, keyed=False):
    backend = f'backend = "postgres"\nurl = "{pg_url}"\n' if pg_url else ""
    ordering = 'ordering_key = "$.id"\n' if keyed else ""
    return f'''rules = ["{ROOT}/rules/*.toml"]

[proxy]
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
threads = 1

[store]
path = "{dir_}/store"
flush = "{flush}"
{backend}
[delivery]
source = "https://tickets.example.com/"
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://127.0.0.1:{upstream}/hooks"
secret = "s3cret"
topics = ["order.*"]
status = "{status}"
{ordering}'''


def request(conn, case):
    if case == "get":
        conn.request("GET", "/orders/1")
    else:
        path = "/basket" if case == "post" else "/orders"
        conn.request("POST", path, body=ORDER_REQUEST, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status


def wait_port(port, proc, seconds=600):
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("hooktap exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("hooktap did not start listening")


def callgrind_control(*args):
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL)


class Postgres:
    """A throwaway PostgreSQL cluster in a temp directory, owned by the `postgres` user."""

    def __init__(self):
        bins = sorted(d for d in os.listdir("/usr/lib/postgresql") if d.isdigit())
        if not bins:
            raise SystemExit("PostgreSQL is missing: scripts/install-deps.sh installs it")
        self.bin = f"/usr/lib/postgresql/{bins[-1]}/bin"
        self.dir = tempfile.mkdtemp(prefix="hooktap-cg-pg-")
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_postgres(f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust")
        self.as_postgres(f"{self.bin}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w",
                         "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def as_postgres(self, *cmd):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + list(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def count_events(self):
        out = subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-tAc", "SELECT count(*) FROM events"], capture_output=True, text=True)
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0

    def wait_events(self, n, seconds=120):
        end = time.time() + seconds
        while self.count_events() < n:
            if time.time() > end:
                raise SystemExit(f"PostgreSQL did not get {n} events in {seconds} s")
            time.sleep(0.2)

    def reset(self):
        subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qc",
                        "DROP SCHEMA public CASCADE; CREATE SCHEMA public"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        self.as_postgres(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def run_case(hooktap, case, requests, upstream_port, keep, flush, pg=None, connections=1):
    dir_ = tempfile.mkdtemp(prefix=f"hooktap-cg-{case}-")
    listen = free_port()
    active = case in ("orders-active", "orders-keyed")
    status = "active" if active else "paused"
    conf = os.path.join(dir_, "hooktap.toml")
    with open(conf, "w") as f:
        f.write(config(dir_, listen, upstream_port, status, flush, pg.url if pg else None,
                       keyed=case == "orders-keyed"))
    out = os.path.join(dir_, "callgrind.out")
    env = dict(os.environ, HOOKTAP_LOG="warn")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
         hooktap, "run", "-c", conf],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(dir_, "log"), "w"), env=env)
    try:
        wait_port(listen, proc)
        pid = str(proc.pid)
        callgrind_control("-i", "on", pid)
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=60)
        for _ in range(200):
            request(conn, case)
        if active:
            time.sleep(2)  # let the warm-up's webhooks go out before counting
        matched = case.startswith("orders")
        if pg and matched:
            pg.wait_events(200)
        hooks0 = Upstream.hooks[0]
        callgrind_control("-z", pid)
        statuses = {}
        lock = threading.Lock()

        def client(n):
            c = conn if connections == 1 else http.client.HTTPConnection("127.0.0.1", listen, timeout=60)
            for _ in range(n):
                s = request(c, case)
                with lock:
                    statuses[s] = statuses.get(s, 0) + 1

        shares = [requests // connections + (i < requests % connections) for i in range(connections)]
        clients = [threading.Thread(target=client, args=(n,)) for n in shares]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        if active:
            # Count the sending of this window's webhooks too.
            end = time.time() + 60
            while Upstream.hooks[0] - hooks0 < requests and time.time() < end:
                time.sleep(0.2)
        if pg and matched:
            pg.wait_events(200 + requests)
        callgrind_control("-d", pid)
        conn.close()
        dumps = sorted(p for p in os.listdir(dir_) if p.startswith("callgrind.out.") and "." in p[len("callgrind.out."):])
        total = 0
        for d in dumps:
            with open(os.path.join(dir_, d)) as f:
                for line in f:
                    m = re.match(r"^(?:summary|totals): (\d+)", line)
                    if m:
                        total += int(m.group(1))
                        break
        hooks = Upstream.hooks[0] - hooks0
        return total / requests, statuses, hooks
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not keep:
            shutil.rmtree(dir_, ignore_errors=True)
        if pg:
            pg.reset()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--hooktap", default=os.path.join(target, "release", "hooktap"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--cases", default="get,post,orders,orders-active")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps")
    ap.add_argument("--flush", default="interval", choices=["interval", "every-event"],
                    help="[store] flush (every-event: one request at a time, so one barrier each)")
    ap.add_argument("--connections", type=int, default=1,
                    help="send the counted requests over this many connections at once (the store "
                         "and the shipper then work in groups, as under load)")
    ap.add_argument("--postgres", action="store_true",
                    help="run on the PostgreSQL store (a throwaway cluster); the shipper is counted")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is missing: apt-get install valgrind")
    up = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    port = up.server_address[1]
    results = {}
    pg = Postgres() if args.postgres else None
    backend = "postgres" if pg else "sled"
    try:
        for case in args.cases.split(","):
            per_req, statuses, hooks = run_case(args.hooktap, case, args.requests, port, args.keep, args.flush, pg,
                                                args.connections)
            results[case] = per_req
            print(f"CALLGRIND case={case} backend={backend} flush={args.flush} connections={args.connections} requests={args.requests} instructions_per_request={per_req:.0f} "
                  f"statuses={json.dumps(statuses)} webhooks={hooks}", flush=True)
    finally:
        if pg:
            pg.stop()
    for base in ("get", "post"):
        for case in ("orders", "orders-active"):
            if base in results and case in results:
                print(f"RATIO {case}/{base} = {results[case] / results[base]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
