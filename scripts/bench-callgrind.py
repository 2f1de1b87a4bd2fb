#!/usr/bin/env python3
"""Instructions per request of hooktap's request path, counted by callgrind: repeatable on a
noisy machine where wall-clock figures are not.

    scripts/bench-callgrind.py [--hooktap target/release/hooktap] [--requests 2000]
                               [--cases get,post,orders,orders-active]

Cases (the traffic of benches/proxy, sent one request at a time on one keep-alive connection):
  get            GET /orders/1: a router lookup that finds no candidate (passthrough)
  post           POST /basket with the POST /orders body: no rule's route (passthrough POST)
  orders         POST /orders -> 201: matched by `order created`, the webhook paused
                 (capture, document, rules, store; nothing sent)
  orders-active  the same with the webhook active: each event is also signed and sent to a
                 receiver (delivery's instructions count, on whatever thread it runs)

hooktap runs under `valgrind --tool=callgrind --instr-atstart=no`; instrumentation is switched on
after start-up, the counters are zeroed after a warm-up of 200 requests and dumped after
`--requests` more. The figure is all of hooktap's threads' instructions in that window divided by
the requests (idle background work is part of it; it is small beside a request at this rate).
The upstream and receiver are a small Python server here: only hooktap is counted.
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


def config(dir_, listen, upstream, status, flush="interval"):
    return f'''rules = ["{ROOT}/rules/*.toml"]

[proxy]
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{upstream}"
threads = 1

[store]
path = "{dir_}/store"
flush = "{flush}"

[delivery]
source = "https://tickets.example.com/"
allow_networks = ["127.0.0.0/8"]

[[webhook]]
name = "crm"
url = "http://127.0.0.1:{upstream}/hooks"
secret = "s3cret"
topics = ["order.*"]
status = "{status}"
'''


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


def run_case(hooktap, case, requests, upstream_port, keep, flush):
    dir_ = tempfile.mkdtemp(prefix=f"hooktap-cg-{case}-")
    listen = free_port()
    status = "active" if case == "orders-active" else "paused"
    conf = os.path.join(dir_, "hooktap.toml")
    with open(conf, "w") as f:
        f.write(config(dir_, listen, upstream_port, status, flush))
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
        if case == "orders-active":
            time.sleep(2)  # let the warm-up's webhooks go out before counting
        hooks0 = Upstream.hooks[0]
        callgrind_control("-z", pid)
        statuses = {}
        for _ in range(requests):
            s = request(conn, case)
            statuses[s] = statuses.get(s, 0) + 1
        if case == "orders-active":
            # Count the sending of this window's webhooks too.
            end = time.time() + 60
            while Upstream.hooks[0] - hooks0 < requests and time.time() < end:
                time.sleep(0.2)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--hooktap", default=os.path.join(target, "release", "hooktap"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--cases", default="get,post,orders,orders-active")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps")
    ap.add_argument("--flush", default="interval", choices=["interval", "every-event"],
                    help="[store] flush (every-event: one request at a time, so one barrier each)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is missing: apt-get install valgrind")
    up = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    port = up.server_address[1]
    results = {}
    for case in args.cases.split(","):
        per_req, statuses, hooks = run_case(args.hooktap, case, args.requests, port, args.keep, args.flush)
        results[case] = per_req
        print(f"CALLGRIND case={case} flush={args.flush} requests={args.requests} instructions_per_request={per_req:.0f} "
              f"statuses={json.dumps(statuses)} webhooks={hooks}", flush=True)
    for base in ("get", "post"):
        for case in ("orders", "orders-active"):
            if base in results and case in results:
                print(f"RATIO {case}/{base} = {results[case] / results[base]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
