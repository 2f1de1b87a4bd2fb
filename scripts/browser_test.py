"""The console in a real browser: headless Debian chromium driven by Playwright, against a real
`hooktap run` with a real upstream app and a real webhook receiver on loopback.

Run it through scripts/browser-test.sh, which builds hooktap and installs Playwright:

    python browser_test.py <hooktap binary> <screenshots dir>

Every wait is bounded (Playwright's timeout, 15 s); the whole run stops after 240 s. Ports are
never guessed: the upstream, the receiver and the admin API bind port 0 and are read back; the
proxy's port is picked free and hooktap started again if another process took it meanwhile.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zoneinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect, sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_MS = 15_000
# The browser's time zone: not UTC, so that local/UTC mix-ups in time inputs show.
BROWSER_TIMEZONE = "Asia/Kolkata"
SECRET = "browser-" + secrets.token_hex(12)
TOKEN = secrets.token_hex(16)

# A rule with a CEL `when` and a `dedupe`, so the rules page shows what a rule does beyond its path.
EXTRA_RULES = """
[[rule]]
name = "echo once"
topic = { expr = "'echo.' + response.body.kind" }
path = "/echo"
when = "response.body.ok == true"
dedupe = { key = "$.request.headers['idempotency-key']", window = "1h" }
"""


def signature(secret, body):
    """The hooktap profile's signature: base64 HMAC-SHA256 of the body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def header(request, name):
    return next((v for k, v in request["headers"].items() if k.lower() == name.lower()), None)


def say(*args):
    print("browser_test:", *args, file=sys.stderr, flush=True)


def fail(message):
    raise AssertionError(message)


def wait_for(check, what, timeout=TIMEOUT_MS / 1000):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class Shop(BaseHTTPRequestHandler):
    """The upstream app: a tiny shop. POST /orders answers 201 with a new order."""

    next_id = 100

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/orders":
            return self.answer(404, {"error": "not found"})
        Shop.next_id += 1
        order = {"id": Shop.next_id, "status": "new", "total": 90.0}
        try:
            order["echo"] = json.loads(body or b"{}").get("email")
        except ValueError:
            pass
        self.answer(201, order, {"Location": f"/orders/{Shop.next_id}"})

    def do_GET(self):
        if self.path.startswith("/orders/") and "/tickets/" in self.path:
            return self.answer(200, {"ticket": self.path})
        self.answer(404, {"error": "not found"})

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class Receiver(BaseHTTPRequestHandler):
    """The webhook receiver: answers 200 `ok` and keeps every request. A body that mentions
    `flaky` is answered 500 the first time."""

    received = []
    failed_once = set()
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with Receiver.lock:
            Receiver.received.append({"headers": dict(self.headers), "body": body})
            fail_now = b"flaky" in body and body not in Receiver.failed_once
            if fail_now:
                Receiver.failed_once.add(body)
        data = b"not now" if fail_now else b"ok"
        self.send_response(500 if fail_now else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @classmethod
    def deliveries(cls):
        """The requests with a body (a ping has none)."""
        with cls.lock:
            return [r for r in cls.received if r["body"]]

    @classmethod
    def pings(cls):
        with cls.lock:
            return [r for r in cls.received if not r["body"]]


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hooktap:
    """`hooktap run` with a config of its own in a temporary directory."""

    def __init__(self, binary, work, upstream_port):
        self.binary, self.work, self.upstream_port = binary, work, upstream_port
        self.process = None
        self.log_path = os.path.join(work, "hooktap.log")

    def start(self):
        for _ in range(3):
            if self._try_start():
                return
        fail("the proxy's port was taken three times")

    def _try_start(self):
        self.proxy_port = free_port()
        extra = os.path.join(self.work, "extra.toml")
        with open(extra, "w") as f:
            f.write(EXTRA_RULES)
        config = os.path.join(self.work, "hooktap.toml")
        with open(config, "w") as f:
            f.write(f"""rules = ["{ROOT}/rules/ticket-shop.toml", "{extra}"]

[proxy]
listen = "127.0.0.1:{self.proxy_port}"
upstream = "127.0.0.1:{self.upstream_port}"
threads = 1
grace_period = "0s"
shutdown_timeout = "1s"

[store]
path = "data"

[delivery]
allow_networks = ["127.0.0.0/8"]
timeout = "2s"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"
""")
        shutil.rmtree(os.path.join(self.work, "data"), ignore_errors=True)
        env = dict(os.environ, HOOKTAP_LOG="info")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [self.binary, "--log-format", "json", "run", "-c", config],
                stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                fail("hooktap exited:\n" + self.log())
            text = self.log()
            if "is in use" in text:
                self.stop()
                return False
            m = re.search(r'admin API listening.*?"listen":"([^"]+)"', text)
            if m and self._proxy_accepts():
                self.admin = "http://" + m.group(1)
                return True
            time.sleep(0.1)
        fail("hooktap did not start listening:\n" + self.log())

    def _proxy_accepts(self):
        try:
            with socket.create_connection(("127.0.0.1", self.proxy_port), timeout=1):
                return True
        except OSError:
            return False

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, method, path, body=None):
        """The admin API, to check what the browser did. Returns (status, JSON or None)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            return e.code, json.loads(text) if text else None

    def order(self, email):
        """A request through the proxy that the `order created` rule turns into an event."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.proxy_port}/orders", method="POST",
            data=json.dumps({"email": email, "tickets": 2}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 201:
                fail(f"the order answered {r.status}")


class Run:
    def __init__(self, page, hooktap, shots):
        self.page, self.hooktap, self.shots = page, hooktap, shots
        self.taken = []

    def shot(self, name):
        path = os.path.join(self.shots, f"{name}.png")
        self.page.screenshot(path=path, full_page=True)
        self.taken.append(path)

    def nav(self, label):
        link = self.page.get_by_role("navigation", name="Console").get_by_role("link", name=label)
        link.click()
        self.ready(link.get_attribute("href"))

    def ready(self, hash_):
        """Waits until the console has drawn `hash_`'s first data: a hash change returns at
        once, before the page's requests (the console marks `#main` when it is done)."""
        expect(self.page.locator("#main")).to_have_attribute("data-ready", hash_)

    def open(self, hash_):
        """Goes to a page of the console (a hash) and waits until it is drawn."""
        self.page.goto(self.hooktap.admin + "/" + hash_)
        self.ready(hash_)

    def horizontal_overflow(self):
        return self.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def scenario(run):
    page, hooktap = run.page, run.hooktap
    admin = hooktap.admin

    # The page and its policy: nothing inline may run, so the policy needs no 'unsafe-inline'.
    response = page.goto(admin + "/")
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    if "script-src 'self'" not in csp or "unsafe-inline" in csp:
        fail(f"the page's Content-Security-Policy is {csp!r}")
    if headers.get("x-content-type-options") != "nosniff":
        fail("the page has no X-Content-Type-Options: nosniff")
    run.shot("01-sign-in")

    # Sign in: a wrong token is refused, the right one opens the overview.
    page.get_by_label("Admin token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    if page.evaluate("localStorage.length") != 0:
        fail("something was kept in localStorage")
    if page.evaluate("sessionStorage.getItem('hooktap-token')") != TOKEN:
        fail("the token is not in sessionStorage")

    # Keyboard only: Tab to "Add webhook", Enter opens the form with focus inside, Escape closes
    # it and gives focus back to the button.
    run.nav("Webhooks")
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "add-webhook":
            break
    else:
        fail("Tab never reached the Add webhook button")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    if outline in ("", "none"):
        fail("the focused button shows no focus outline")
    page.keyboard.press("Enter")
    expect(page.locator("dialog[open]")).to_be_visible()
    if page.evaluate("document.activeElement.id") != "wf-name":
        fail("focus did not move into the form: " + page.evaluate("document.activeElement.outerHTML"))
    page.keyboard.type("typed by keyboard")
    page.keyboard.press("Escape")
    expect(page.locator("dialog")).to_have_count(0)
    if page.evaluate("document.activeElement.id") != "add-webhook":
        fail("focus did not come back to the Add webhook button")

    # Create a webhook through the form. Every input has a label; an error shows beside its field.
    page.get_by_role("button", name="Add webhook").click()
    dialog = page.locator("dialog[open]")
    unlabelled = page.evaluate("""[...document.querySelectorAll('dialog input, dialog select, dialog textarea')]
        .filter(e => !e.labels || !e.labels.length).map(e => e.name)""")
    if unlabelled:
        fail(f"inputs without a label: {unlabelled}")
    for label in ["Name", "URL", "Secret", "Topics"]:
        expect(dialog.get_by_label(label, exact=True)).to_be_visible()
    expect(dialog.get_by_label("Retry schedule")).to_have_value("5s,30s,1m,5m,20m,1h,4h,6h,12h,12h,24h")
    dialog.get_by_label("Name", exact=True).fill("browser-test")
    dialog.get_by_label("URL", exact=True).fill("ftp://127.0.0.1/nope")
    dialog.get_by_label("Secret", exact=True).fill(SECRET)
    dialog.get_by_label("Topics", exact=True).fill("order.*")
    dialog.get_by_label("Ordering key").fill("$.id")
    dialog.get_by_label("Rate limit").fill("50/s")
    run.shot("02-add-webhook")
    dialog.get_by_role("button", name="Create webhook").click()
    expect(page.locator("#wf-url-error")).not_to_be_empty()
    expect(dialog.get_by_label("URL", exact=True)).to_have_attribute("aria-invalid", "true")
    run.shot("03-add-webhook-error")
    receiver_url = f"http://127.0.0.1:{RECEIVER_PORT}/hooks"
    dialog.get_by_label("URL", exact=True).fill(receiver_url)
    dialog.get_by_role("button", name="Create webhook").click()
    expect(page.get_by_role("heading", name="browser-test", level=1)).to_be_visible()
    expect(page.locator("#settings")).to_contain_text("circuit closed · ordered per $.id · at most 50/s")
    webhook_id = page.url.split("#/webhooks/")[1].split("?")[0]
    status, w = hooktap.api("GET", f"/webhooks/{webhook_id}")
    if status != 200 or w["url"] != receiver_url or w["topics"] != ["order.*"] or w["ordering_key"] != "$.id":
        fail(f"the webhook is not what the form said: {status} {w}")
    wait_for(lambda: Receiver.pings(), "the creation ping")

    # The secret is never shown again: not on the page, not in the edit form.
    if SECRET in page.content():
        fail("the secret is on the webhook page")
    page.get_by_role("button", name="Edit").click()
    expect(page.locator("dialog[open]").get_by_label("Secret", exact=True)).to_have_value("")
    if SECRET in page.content():
        fail("the secret is in the edit form")
    page.keyboard.press("Escape")

    # Ping: a signed request with an empty body, its answer shown.
    pings = len(Receiver.pings())
    page.get_by_role("button", name="Ping").click()
    expect(page.locator("#ping-result")).to_contain_text("Succeeded: HTTP 200 OK")
    expect(page.locator("#ping-result")).to_contain_text("X-Hooktap-Webhook-Signature")
    wait_for(lambda: len(Receiver.pings()) > pings, "the ping at the receiver")

    # Traffic through the proxy: the delivery, and the chart with a data point.
    hooktap.order("browser@example.com")
    wait_for(lambda: Receiver.deliveries(), "the delivery at the receiver")
    delivery_row = page.locator("table.deliveries tbody tr").first
    expect(delivery_row).to_contain_text("delivered", timeout=TIMEOUT_MS)
    expect(page.locator("svg.chart-deliveries rect.bar-ok").first).to_be_attached()
    expect(page.locator("svg.chart-latency circle").first).to_be_attached()
    expect(page.locator("svg.chart-lag circle").first).to_be_attached()
    expect(page.locator("#totals")).to_contain_text("1 succeeded")
    run.shot("04-webhook")
    # A receiver that fails once: a failed bar, the last error, then the retry (5 s later).
    hooktap.order("flaky@example.com")
    expect(page.locator("svg.chart-deliveries rect.bar-fail").first).to_be_attached()
    expect(page.locator("#last-error")).to_contain_text("HTTP 500")
    expect(page.locator("table.deliveries tbody tr").first).to_contain_text("delivered", timeout=20_000)
    expect(page.locator("#totals")).to_contain_text("2 succeeded, 1 failed")
    page.get_by_role("button", name="Last day").click()
    expect(page.get_by_role("button", name="Last day")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("svg.chart-deliveries rect.bar-ok").first).to_be_attached()
    expect(page.locator("svg.chart-deliveries rect.bar-fail").first).to_be_attached()
    run.shot("04-webhook-day")
    page.get_by_role("button", name="Last hour").click()

    # The delivery's page: the attempt with request and response, headers and bodies.
    page.locator("table.deliveries tbody tr").last.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile(r"^Delivery "), level=1)).to_be_visible()
    attempt = page.locator("details.attempt").first
    expect(attempt).to_contain_text("X-Hooktap-Webhook-Signature")
    expect(attempt).to_contain_text("browser@example.com")
    expect(attempt).to_contain_text("200 OK")
    run.shot("05-delivery")

    # Redeliver: a second attempt, at the receiver and on the page.
    delivered = len(Receiver.deliveries())
    page.get_by_role("button", name="Redeliver").click()
    wait_for(lambda: len(Receiver.deliveries()) > delivered, "the redelivery at the receiver")
    expect(page.locator("details.attempt")).to_have_count(2)
    first = next(r for r in Receiver.deliveries() if b"browser@example.com" in r["body"])
    again = Receiver.deliveries()[-1]
    if first["body"] != again["body"]:
        fail("the redelivery sent another body")

    # Find the event by its id: its payload, rule and deliveries with their attempts.
    event_id = page.locator("#event-link").inner_text()
    run.nav("Events")
    page.get_by_label("Event id").fill(event_id)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#event-id")).to_have_text(event_id)
    expect(page.locator("#event-payload")).to_contain_text("browser@example.com")
    expect(page.locator("#event-rule")).to_have_text("order created")
    expect(page.locator(".event-delivery")).to_contain_text("browser-test")
    expect(page.locator(".event-delivery details.attempt")).to_have_count(2)
    run.shot("06-event")
    # An unknown id is an error beside the id field.
    run.nav("Events")
    page.get_by_label("Event id").fill("01234567-89ab-7def-8123-456789abcdef")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#es-id-error")).to_contain_text("No event")
    # Payload text and topic.
    hooktap.order("someone-else@example.com")
    page.get_by_label("Event id").fill("")
    page.get_by_label("Topic").fill("order.*")
    page.get_by_label("Payload text").fill("BROWSER@example")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    expect(page.locator("table.events tbody tr")).to_contain_text("browser@example.com")
    run.shot("07-events")
    # A time range, typed in the browser's local time (not UTC): the last hour has it, the next
    # hour has nothing. Read as UTC, either range would be 5.5 hours off and find nothing.
    now = datetime.datetime.now(zoneinfo.ZoneInfo(BROWSER_TIMEZONE))
    local = lambda t: t.strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("Since").fill(local(now - datetime.timedelta(hours=1)))
    page.get_by_label("Until").fill(local(now + datetime.timedelta(minutes=2)))
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    page.get_by_label("Since").fill(local(now + datetime.timedelta(minutes=2)))
    page.get_by_label("Until").fill(local(now + datetime.timedelta(hours=1)))
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No event matches.")).to_be_visible()

    # Rules: match counts, what a rule does, and trying the rules on a pasted exchange.
    run.nav("Rules")
    expect(page.locator('table.rules tr[data-name="order created"]')).to_contain_text("order.created")
    echo = page.locator('table.rules tr[data-name="echo once"]')
    expect(echo).to_contain_text("'echo.' + response.body.kind")
    expect(echo).to_contain_text("when response.body.ok == true")
    expect(echo).to_contain_text("dedupe $.request.headers['idempotency-key'] within 1h")
    events = page.locator('table.rules tr[data-name="order created"] td.num').first.inner_text()
    if int(events) < 2:
        fail(f"the order rule's match count is {events}")
    page.get_by_label("Method").fill("POST")
    page.get_by_label("Path and query").fill("/orders")
    page.get_by_label("Request headers").fill("Content-Type: application/json")
    page.get_by_label("Request body").fill('{"email": "try@example.com", "tickets": 3}')
    page.get_by_label("Status", exact=True).fill("201")
    page.get_by_label("Response headers").fill("Content-Type: application/json\nLocation: /orders/55")
    page.get_by_label("Response body").fill('{"id": 55, "status": "new", "total": 12.5}')
    page.get_by_role("button", name="Try the rules").click()
    match = page.locator('.try-match[data-rule="order created"]')
    expect(match).to_contain_text("order.created")
    expect(match).to_contain_text("try@example.com")
    expect(match).to_contain_text('"location": "55"')
    run.shot("08-rules")
    status, listed = hooktap.api("GET", "/events?per_page=100&q=try%40example.com")
    if status != 200 or listed:
        fail(f"trying a rule derived an event: {status} {listed}")
    # A rule whose method and path match but that derives nothing says why.
    page.get_by_label("Status", exact=True).fill("422")
    page.get_by_role("button", name="Try the rules").click()
    expect(page.locator("#try-result")).to_contain_text("No rule matches")
    expect(page.locator('table.misses tr[data-rule="order created"]')).to_contain_text("422")
    # An exchange that cannot be HTTP is refused with the error beside the field.
    page.get_by_label("Status", exact=True).fill("700")
    page.get_by_role("button", name="Try the rules").click()
    expect(page.locator("#try-response-status-error")).not_to_be_empty()
    expect(page.get_by_label("Status", exact=True)).to_have_attribute("aria-invalid", "true")

    # Live: events as they are stored, a pause that holds them, and a topic filter.
    run.nav("Live")
    expect(page.locator("#live-state")).to_contain_text("connected")
    hooktap.order("live-1@example.com")
    expect(page.locator("#live-list")).to_contain_text("live-1@example.com")
    page.get_by_role("button", name="Pause").click()
    hooktap.order("live-2@example.com")
    expect(page.locator("#live-state")).to_contain_text("1 held")
    hooktap.order("live-2b@example.com")
    expect(page.locator("#live-state")).to_contain_text("2 held")
    if "live-2@example.com" in page.locator("#live-list").inner_text():
        fail("a paused stream showed a new event")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#live-list")).to_contain_text("live-2@example.com")
    # The held events in the order they came: the newest on top, as if never paused.
    expect(page.locator("#live-list .live-item").first).to_contain_text("live-2b@example.com")
    expect(page.locator("#live-list .live-item").nth(1)).to_contain_text("live-2@example.com")
    page.get_by_label("Topic filter").fill("download.*")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#live-state")).to_contain_text("topic download.*")
    expect(page.locator("#live-state")).to_contain_text("connected")
    hooktap.order("live-3@example.com")
    urllib.request.urlopen(f"http://127.0.0.1:{hooktap.proxy_port}/orders/7/tickets/a.pdf", timeout=10).read()
    expect(page.locator('#live-list [data-topic="download.tickets"]').first).to_be_visible()
    if "live-3@example.com" in page.locator("#live-list").inner_text():
        fail("the topic filter let an order.created event through")
    run.shot("09-live")

    # The overview: every webhook's health with its sparkline, and the store's backlog.
    run.nav("Overview")
    row = page.locator(f'table.overview tr[data-id="{webhook_id}"]')
    expect(row).to_contain_text("browser-test")
    expect(row.locator("svg.sparkline rect.bar-ok").first).to_be_attached()
    expect(page.get_by_role("heading", name="Store")).to_be_visible()
    run.shot("10-overview")

    # 800 px wide: no page scrolls sideways, and each page is photographed.
    # Each page with what its data draws, present as soon as the page says it is ready.
    pages = {
        "overview": ("#/overview", "table.overview svg.sparkline"),
        "webhooks": ("#/webhooks", "table.webhooks tbody tr"),
        "webhook": (f"#/webhooks/{webhook_id}", "svg.chart-deliveries rect.bar-ok"),
        "events": ("#/events", "table.events tbody tr"),
        "event": (f"#/events/{event_id}", ".event-delivery details.attempt"),
        "rules": ("#/rules", "table.rules tbody tr"),
        "live": ("#/live", "#live-list > *"),
    }
    for width in (1280, 800):
        page.set_viewport_size({"width": width, "height": 900})
        for name, (hash_, drawn) in pages.items():
            run.open(hash_)
            if page.locator(drawn).count() == 0:
                fail(f"{name} said it was drawn without {drawn}")
            overflow = run.horizontal_overflow()
            if overflow > 0:
                fail(f"{name} at {width} px scrolls sideways by {overflow} px")
            unlabelled = page.evaluate("""[...document.querySelectorAll('main input, main select, main textarea')]
                .filter(e => !e.labels || !e.labels.length).map(e => e.name || e.outerHTML)""")
            if unlabelled:
                fail(f"inputs without a label on {name}: {unlabelled}")
            if width == 800:
                run.shot(f"11-{name}-800px")
    page.set_viewport_size({"width": 1280, "height": 900})

    # "Skip to content" moves focus to the page and leaves the hash (and so the page) alone.
    run.open("#/rules")
    page.locator("a.skip").focus()
    page.keyboard.press("Enter")
    if page.evaluate("location.hash") != "#/rules":
        fail(f"the skip link changed the page to {page.evaluate('location.hash')}")
    if page.evaluate("document.activeElement && document.activeElement.id") != "main":
        fail("the skip link did not move focus to the page")
    expect(page.locator("table.rules")).to_be_visible()

    # A periodic refresh leaves keyboard focus where it is: the focused window toggle survives
    # the next refresh of the charts (drawn before the deliveries list is read again).
    run.open(f"#/webhooks/{webhook_id}")
    page.get_by_role("button", name="Last day").focus()
    with page.expect_response(lambda r: f"/webhooks/{webhook_id}/deliveries?" in r.url, timeout=TIMEOUT_MS):
        pass
    focused = page.evaluate("document.activeElement && document.activeElement.textContent")
    if focused != "Last day":
        fail(f"a refresh of the webhook page moved focus to {focused!r}")

    # An older hooktap without the console's newer endpoints (its OpenAPI document does not
    # list them): each view that needs one says so, and the rest still works.
    newer = ["/overview", "/webhooks/{id}/stats", "/events/{id}/deliveries", "/rules/try"]

    def older_document(route):
        doc = route.fetch().json()
        for path in newer:
            doc["paths"].pop(path, None)
        for p in doc["paths"]["/events"]["get"]["parameters"]:
            if p["name"] == "q":
                doc["paths"]["/events"]["get"]["parameters"].remove(p)
        route.fulfill(json=doc)

    page.route("**/openapi.json", older_document)
    page.goto(admin + "/#/overview")
    page.reload()
    expect(page.locator("main")).to_contain_text("needs GET /overview")
    expect(page.locator('table.webhooks tr[data-name="browser-test"]')).to_be_visible()
    page.goto(admin + f"/#/webhooks/{webhook_id}")
    expect(page.locator("main")).to_contain_text("Charts needs GET /webhooks/{id}/stats")
    expect(page.locator("table.deliveries tbody tr").first).to_be_visible()
    page.goto(admin + f"/#/events/{event_id}")
    expect(page.locator("main")).to_contain_text("needs GET /events/{id}/deliveries")
    expect(page.locator(".event-delivery details.attempt")).to_have_count(2)
    page.goto(admin + "/#/events?q=browser")
    expect(page.locator("main")).to_contain_text("needs GET /events?q=")
    page.goto(admin + "/#/rules")
    expect(page.locator("main")).to_contain_text("needs POST /rules/try")
    expect(page.locator('table.rules tr[data-name="order created"]')).to_be_visible()
    run.shot("12-older-hooktap")
    page.unroute("**/openapi.json")
    page.reload()

    # Manage it through the forms: edit (an error beside its field first), rotate the secret,
    # reset the counters, recover a window, duplicate.
    page.goto(admin + f"/#/webhooks/{webhook_id}")
    expect(page.get_by_role("heading", name="browser-test", level=1)).to_be_visible()
    timeout_before = hooktap.api("GET", f"/webhooks/{webhook_id}")[1]["timeout"]
    page.get_by_role("button", name="Edit").click()
    dialog = page.locator("dialog[open]")
    expect(dialog.get_by_label("Topics", exact=True)).to_have_value("order.*")
    expect(dialog.get_by_label("Rate limit")).to_have_value("50/s")
    dialog.get_by_label("Rate limit").fill("fast")
    dialog.get_by_label("Timeout").fill("3s")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator("#wf-rate_limit-error")).not_to_be_empty()
    expect(dialog.get_by_label("Rate limit")).to_have_attribute("aria-invalid", "true")
    if hooktap.api("GET", f"/webhooks/{webhook_id}")[1]["timeout"] != timeout_before:
        fail("a refused edit changed the webhook")
    dialog.get_by_label("Rate limit").fill("")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator("dialog")).to_have_count(0)
    _, w = hooktap.api("GET", f"/webhooks/{webhook_id}")
    if w["timeout"] != "3s" or w["rate_limit"] is not None or w["url"] != receiver_url:
        fail(f"the edit did not save what the form said: {w}")

    new_secret = "rotated-" + secrets.token_hex(8)
    page.get_by_role("button", name="Rotate secret").click()
    page.locator("dialog[open]").get_by_label("New secret").fill(new_secret)
    page.locator("dialog[open]").get_by_role("button", name="Rotate").click()
    expect(page.locator("dialog")).to_have_count(0)
    before = len(Receiver.deliveries())
    hooktap.order("rotated@example.com")
    wait_for(lambda: len(Receiver.deliveries()) > before, "a delivery after the rotation")
    sent = Receiver.deliveries()[-1]
    if header(sent, "X-Hooktap-Webhook-Signature") != signature(new_secret, sent["body"]):
        fail("the delivery after Rotate secret is not signed with the new secret")
    if header(Receiver.deliveries()[0], "X-Hooktap-Webhook-Signature") != signature(SECRET, Receiver.deliveries()[0]["body"]):
        fail("the first delivery was not signed with the form's secret")
    if new_secret in page.content():
        fail("the new secret is on the page")

    page.get_by_role("button", name="Reset counters").click()
    expect(page.locator("#flash")).to_contain_text("Counters reset.")
    expect(page.locator("main dl.kv")).to_contain_text("0 / 0 (retries 0)")

    page.get_by_role("button", name="Recover…").click()
    recover = page.locator("dialog[open]")
    recover.get_by_label("Until").fill("2000-01-01T00:00")
    recover.get_by_role("button", name="Recover").click()
    expect(page.locator("#rec-until-error")).to_contain_text("after since")
    recover.get_by_label("Until").fill("")
    recover.get_by_role("button", name="Recover").click()
    expect(page.locator("#flash")).to_contain_text("queued again")
    run.shot("13-webhook-managed")

    page.get_by_role("button", name="Duplicate").click()
    expect(page.get_by_role("heading", name="browser-test (copy)", level=1)).to_be_visible()
    expect(page.locator("main .page-head .badge")).to_have_text("disabled")
    copy_id = page.url.split("#/webhooks/")[1].split("?")[0]
    page.get_by_role("button", name="Delete").click()
    page.locator("dialog[open]").get_by_role("button", name="Delete webhook").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    if hooktap.api("GET", f"/webhooks/{copy_id}")[0] != 404:
        fail("the copy is still there after Delete")

    # A pause made elsewhere (another instance, curl) reaches the heading with the State
    # card's refresh (every 5 s), and the Resume button it brings works.
    page.goto(admin + f"/#/webhooks/{webhook_id}")
    expect(page.locator("main .page-head .badge")).to_have_text("active")
    if hooktap.api("PUT", f"/webhooks/{webhook_id}", {"status": "paused"})[0] != 200:
        fail("pausing through the API failed")
    expect(page.locator("main .page-head .badge")).to_have_text("paused", timeout=15000)
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#flash")).to_contain_text("Resumed.")
    expect(page.locator("main .page-head .badge")).to_have_text("active")

    # Pause the webhook, then delete it (after a confirmation).
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("main .page-head .badge")).to_have_text("paused")
    status, w = hooktap.api("GET", f"/webhooks/{webhook_id}")
    if w["status"] != "paused":
        fail(f"the webhook is {w['status']} after Pause")
    page.get_by_role("button", name="Delete").click()
    confirm = page.locator("dialog[open]")
    expect(confirm).to_contain_text("Delete browser-test?")
    confirm.get_by_role("button", name="Cancel").click()
    if hooktap.api("GET", f"/webhooks/{webhook_id}")[0] != 200:
        fail("Cancel deleted the webhook")
    page.get_by_role("button", name="Delete").click()
    page.locator("dialog[open]").get_by_role("button", name="Delete webhook").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    expect(page.locator('table.webhooks tr[data-name="browser-test"]')).to_have_count(0)
    if hooktap.api("GET", f"/webhooks/{webhook_id}")[0] != 404:
        fail("the webhook is still there after Delete")
    run.shot("14-webhooks-after-delete")

    # Signing out forgets the token.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    if page.evaluate("sessionStorage.getItem('hooktap-token')") is not None:
        fail("the token outlived signing out")


def stop_on_sigterm(signum, _frame):
    """`timeout` ends a run that took too long with SIGTERM: leave through the `finally`
    below, which stops hooktap, rather than die and leave it running."""
    raise SystemExit(128 + signum)


def main():
    global RECEIVER_PORT
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    binary, shots = sys.argv[1], sys.argv[2]
    os.makedirs(shots, exist_ok=True)
    for old in os.listdir(shots):
        if old.endswith(".png"):
            os.remove(os.path.join(shots, old))
    work = tempfile.mkdtemp(prefix="hooktap-browser-")
    _, upstream_port = serve(Shop)
    _, RECEIVER_PORT = serve(Receiver)
    hooktap = Hooktap(binary, work, upstream_port)
    problems = []
    try:
        hooktap.start()
        say(f"hooktap: admin API at {hooktap.admin}, proxy at 127.0.0.1:{hooktap.proxy_port}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB",
                                          # Not UTC: a time input read as UTC (or as local
                                          # where UTC is meant) is then 5.5 hours off.
                                          timezone_id=BROWSER_TIMEZONE)
            context.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page = context.new_page()
            # Script errors and policy violations fail the run.
            page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
            # (Answers such as the 401 of a wrong token and the 404 of an unknown id are
            # expected: Chromium logs each as "Failed to load resource".)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" and "Failed to load resource" not in m.text else None)
            run = Run(page, hooktap, shots)
            try:
                scenario(run)
            except Exception:
                run.shot("failure")
                raise
            finally:
                browser.close()
                say(f"{len(run.taken)} screenshots in {shots}")
        if problems:
            fail("the page reported problems:\n" + "\n".join(problems))
        if "panicked" in hooktap.log():
            fail("hooktap panicked:\n" + hooktap.log())
    except BaseException:
        log = hooktap.log().splitlines() if os.path.exists(hooktap.log_path) else []
        say("the end of hooktap's log:\n" + "\n".join(log[-30:]))
        raise
    finally:
        hooktap.stop()
        shutil.rmtree(work, ignore_errors=True)
    say("passed")


RECEIVER_PORT = 0

if __name__ == "__main__":
    main()
