#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*.

The seeds come from the repository's own examples: rules/ticket-shop.toml and its [[test]]s,
hooktap.toml, the TOML blocks of README.md and docs/, fuzz/rules.toml, and encoded bodies
(gzip, zlib, raw deflate, brotli if the `brotli` module is installed, chains, small bombs).
Run from anywhere; existing seed-* files are rewritten, what the fuzzer added is kept.
"""
import gzip
import json
import pathlib
import re
import tomllib
import zlib

try:
    import brotli
except ImportError:  # the brotli seeds are then left as they are
    brotli = None

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


def raw_deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


# --- config: hooktap.toml NUL rule file, or a rule file alone -------------------------------

shop = (ROOT / "rules" / "ticket-shop.toml").read_text()
fuzz_rules = (ROOT / "fuzz" / "rules.toml").read_text()
config = (ROOT / "hooktap.toml").read_text()
write("config", "ticket-shop", shop)
write("config", "fuzz-rules", fuzz_rules)
write("config", "hooktap-and-shop", config + "\0" + shop)
write("config", "empty-rules", config + "\0")
blocks = []
for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    blocks += re.findall(r"```toml\n(.*?)```", md.read_text(), re.S)
for i, block in enumerate(blocks):
    if "[[rule]]" in block or "[[test]]" in block:
        write("config", f"doc-{i}", block)
    else:
        write("config", f"doc-{i}", block + "\0" + shop)
GOOD = '[[rule]]\nname = "order created"\ntopic = "order.created"\nmethod = "POST"\npath = "/orders"\nstatus = [201]\n'
for name, extra in {
    "bad-jsonpath": 'when = [{ path = "$..[?(", equals = 1 }]\n',
    "dash-jsonpath": '[rule.payload]\nua = "$.request.headers.user-agent"\n',
    "regex-field": '[rule.payload]\nx = { path = "$.a", regex = "(((a{100}){100}){100})" }\n',
    "two-operators": 'when = [{ path = "$.a", equals = 1, lt = 2 }]\n',
    "required": 'required = ["id"]\n',
    "deep-when": 'when = [{ path = "$.a", equals = [[[[[[1]]]]]] }]\n',
}.items():
    write("config", name, GOOD + extra)
write("config", "many-params", GOOD.replace('"/orders"', '"' + "".join(f"/{{p{i}}}" for i in range(26)) + '"'))
write("config", "catch-all", GOOD.replace('"/orders"', '"/a/{*rest}/b"'))
write("config", "rule-test", GOOD + '\n[[test]]\nname = "t"\nrequest = { method = "POST", path = "/orders?x=1", headers = { content-encoding = "gzip" }, body = "x" }\nresponse = { status = 201, body = { id = 1 } }\nexpect = { topic = "order.created" }\n')
write("config", "webhook-table", config.replace('topics = ["order.*"]', 'topics = ["[x", "*.*"]\nsignature = "standard"\nmode = "batch"\nretry = "1s,5s,1m"') + "\0" + GOOD)

# --- decode: Content-Encoding NL Content-Type NL body ---------------------------------------

order = json.dumps({"id": 7, "email": "a@example.com", "items": [{"id": 1, "price": 5}]}).encode()
form = b"ticket=T-100&gate=north&tag=a&tag=b&e=a%40b.c&bad=%ZZ%FF"
cases = {
    "identity-json": (b"", b"application/json; charset=utf-8", order),
    "form": (b"identity", b"application/x-www-form-urlencoded", form),
    "text-invalid-utf8": (b"", b"text/plain", b"caf\xc3\xa9 \xff\xfe"),
    "problem-json": (b"", b"application/problem+json", b'{"a": [1, 2.5e3, null, true, "\\u00e9"]'),
    "gzip-json": (b"gzip", b"application/json", gzip.compress(order)),
    "x-gzip-form": (b"X-GZIP", b"application/x-www-form-urlencoded", gzip.compress(form)),
    "gzip-multi-member": (b"gzip", b"text/plain", gzip.compress(b"one ") + gzip.compress(b"two")),
    "zlib-json": (b"deflate", b"application/json", zlib.compress(order)),
    "raw-deflate": (b"deflate", b"text/plain", raw_deflate(b"hello, raw deflate")),
    "chain-gzip-deflate": (b"deflate, gzip", b"application/json", gzip.compress(zlib.compress(order))),
    "unknown": (b"compress", b"text/plain", b"\x1f\x9d\x90abc"),
    "truncated-gzip": (b"gzip", b"application/json", gzip.compress(order)[:-6]),
    "gzip-bomb": (b"gzip", b"text/plain", gzip.compress(b" " * (1 << 20), 9)),
    "deflate-bomb": (b"deflate", b"text/plain", raw_deflate(b"\0" * (1 << 20))),
}
if brotli is not None:
    cases |= {
        "br-json": (b"br", b"application/json", brotli.compress(order)),
        "br-gzip-chain": (b"gzip, br", b"application/json", brotli.compress(gzip.compress(order))),
        "br-bomb": (b"br", b"text/plain", brotli.compress(b"a" * (1 << 20))),
    }
for name, (enc, ctype, body) in cases.items():
    write("decode", name, enc + b"\n" + ctype + b"\n" + body)

# --- exchange: request half NUL response half -----------------------------------------------


def half(first, headers, body):
    """One half: its first line, headers, an empty line and the body (None: not captured)."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (str, bytes)):
        headers.setdefault("content-type", "application/json")
        body = json.dumps(body)
    head = first + "\n" + "".join(f"{k}: {v}\n" for k, v in headers.items())
    if body is None:
        return head.encode()
    return (head + "\n").encode() + (body if isinstance(body, bytes) else body.encode())


for i, test in enumerate(tomllib.loads(shop).get("test", [])):
    req, resp = test["request"], test["response"]
    data = half(f'{req["method"]} {req["path"]}', req.get("headers"), req.get("body", ""))
    data += b"\0" + half(str(resp["status"]), resp.get("headers"), resp.get("body", ""))
    write("exchange", f"shop-test-{i}", data)
write("exchange", "gzip-response", half("POST /orders", {"content-type": "application/json"}, {"email": "a@b.c"})
      + b"\0" + half("201", {"content-type": "application/json", "content-encoding": "gzip", "location": "/orders/9"}, gzip.compress(json.dumps({"id": 9, "status": "paid"}).encode())))
write("exchange", "not-captured", half("PATCH /orders/1", {}, None) + b"\0" + half("200", {}, None))
write("exchange", "any-path", half("OPTIONS /x/y%2Fz/?a=1&a=2&b", {"x-fuzz": "1", "host": "shop.example:8080"}, "")
      + b"\0" + half("204", {"content-length": "12"}, {"id": 1, "status": "s", "items": [{"id": 2, "price": 3, "name": "a"}, {"id": 4, "price": 30}]}))
write("exchange", "numbers", half("PUT /items/book/42", {}, {"amount": "12.5 ", "note": "hi", "a": {"b": {"c": [1, 2]}}, "tags": ["x"]})
      + b"\0" + half("201", {}, {"state": "ok"}))
write("exchange", "form", half("POST /form", {"content-type": "application/x-www-form-urlencoded"}, "kind=a&flag=on&flag=off")
      + b"\0" + half("404", {}, ""))
write("exchange", "document", half("GET /doc/1/2/3/4", {"cookie": "a=b"}, None) + b"\0" + half("503", {"retry-after": "5"}, "down"))
print(f"seeds written to {CORPUS}")
