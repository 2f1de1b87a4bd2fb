#!/usr/bin/env python3
"""Instructions per request by component, from scripts/bench-callgrind.sh's output.

    scripts/callgrind-groups.py DIR SERVER...

Reads DIR/callgrind.SERVER.measured (a callgrind dump) and DIR/SERVER.requests, sums
each function's exclusive instructions into a component by the function's name (the first
matching pattern below; generic code counts where its type parameter belongs, e.g.
`drop_in_place<pingora_core::…>` to pingora), and prints Markdown: one table of components
with a column per server, then each server's top functions. Inlined code counts in the function
it was inlined into (release builds), so a component is where the instructions ran, not
necessarily whose source they came from.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

# (component, pattern on the demangled function name), first match wins.
GROUPS = [
    ("kernel entry (libc syscall wrappers)",
     r"^(__libc_|__GI___libc_|__send|__recv|send$|recv$|sendto|recvfrom|writev|readv|epoll_wait|__GI_epoll|syscall|__GI___syscall|getpeername|getsockopt|__getsockopt|__getpeername|accept4|clock_gettime|__clock_gettime|__vdso|__GI___clock)"),
    ("malloc / free", r"(^|::)(malloc|free|cfree|calloc|realloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|unlink_chunk|tcache_|__libc_malloc|__libc_free|__libc_calloc|__libc_realloc|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|_rjem_|je_|arena_|tcache|sdallocx|mallocx|rallocx)|^alloc::alloc::"),
    ("memcpy / memmove / memset", r"(__)?mem(cpy|move|set|cmp|chr)|__memcpy|__memmove|__memset|__memcmp|__memchr|__nss_database_lookup|__strlen"),
    ("nginx", r"^ngx_"),
    ("hooktap", r"hooktap::"),
    ("pingora: HTTP/1 downstream session (read/parse request, write response)",
     r"pingora_core::protocols::http::v1::server"),
    ("pingora: HTTP/1 upstream session (write request, read/parse response)",
     r"pingora_core::protocols::http::v1::client"),
    ("pingora: HTTP/1 body and common (body reader/writer, header serialisation)",
     r"pingora_core::protocols::http::v1::(body|common)|pingora_core::protocols::http::v1::"),
    ("pingora: HTTP session wrappers (Session, ServerSession, conditional filters)",
     r"pingora_core::protocols::http::(server|client|conditional_filter|date|body_buffer|error_resp)|pingora_core::protocols::http::"),
    ("pingora: header maps (RequestHeader/ResponseHeader, case-preserving names)",
     r"pingora_http::"),
    ("pingora: proxy phases (pingora_proxy: process_new_http, proxy_to_h1_upstream, filters)",
     r"pingora_proxy::"),
    ("pingora: upstream connector and keep-alive pool",
     r"pingora_core::connectors|pingora_pool::|pingora_core::upstreams"),
    ("pingora: L4 stream (buffered reads/writes, digests, timing)",
     r"pingora_core::protocols::(l4|digest|raw_connect|tls|windows)|pingora_core::protocols::"),
    ("pingora: timeouts", r"pingora_timeout::"),
    ("pingora: server, listener, services", r"pingora_core::|pingora::|pingora_error::|pingora_runtime::"),
    ("hyper / hyper-util", r"hyper::|hyper_util::|want::|try_lock::"),
    ("http crate (HeaderMap, HeaderName, Uri, Method)", r"(^|<)http::"),
    ("httparse", r"httparse::"),
    ("tokio runtime, timers and I/O driver", r"tokio::|mio::|parking_lot|parking_lot_core::"),
    ("futures / async-trait / tracing / log", r"futures_|async_trait|tracing::|tracing_core::|log::"),
    ("bytes", r"(^|<)bytes::"),
    ("Rust std / core / alloc (fmt, strings, vectors, hashing, atomics)", r"(^|<)(core|std|alloc|hashbrown|smallvec|indexmap)::"),
    ("libc other", r".*"),
]
COMPILED = [(name, re.compile(p)) for name, p in GROUPS]
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(\s+\[(.*)\])?$")


def owner(function):
    """The name that decides the component: the type parameter of generic glue code."""
    for glue in ("core::ptr::drop_in_place<", "core::ptr::real_drop_in_place<", "<alloc::sync::Arc<"):
        if function.startswith(glue):
            return function[len(glue):]
    return function.lstrip("<")


def classify(function, obj):
    name = owner(function)
    if obj and "/libc" in obj and not re.search(COMPILED[0][1], name):
        for group, pat in COMPILED[1:3]:
            if pat.search(name):
                return group
        return "libc other"
    for group, pat in COMPILED:
        if pat.search(name):
            return group
    return "libc other"


def read(dir_, server):
    """Exclusive and inclusive Ir per function from DIR/callgrind.SERVER.measured.

    Parsed here rather than with callgrind_annotate: valgrind 3.19's annotate counts the cost of
    a call that was already running when the counters were zeroed (`calls=0`) as the caller's
    own, which puts everything under `clone`.
    """
    names = {"fn": {}, "ob": {}}
    self_cost = defaultdict(int)
    incl_cost = defaultdict(int)
    objs = {}
    total = 0
    fn = ob = None
    after_call = False

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?$", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), rest)

    for line in (dir_ / f"callgrind.{server}.measured").read_text(errors="replace").splitlines():
        if line.startswith("ob="):
            ob = name("ob", line[3:])
        elif line.startswith("fn="):
            fn = name("fn", line[3:])
            objs[fn] = ob or ""
        elif line.startswith("cob="):
            name("ob", line[4:])
        elif line.startswith("cfn="):
            name("fn", line[4:])
        elif line.startswith("calls="):
            after_call = True
        elif line.startswith("summary:"):
            total = int(line.split()[1])
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) < 2 or fn is None:
                continue
            cost = int(parts[1])
            if after_call:
                incl_cost[fn] += cost
                after_call = False
            else:
                self_cost[fn] += cost
                incl_cost[fn] += cost
    requests = int((dir_ / f"{server}.requests").read_text().strip() or 0)
    return total, self_cost, objs, requests, incl_cost


def main():
    dir_ = Path(sys.argv[1])
    servers = sys.argv[2:]
    data = {s: read(dir_, s) for s in servers}
    groups = {s: defaultdict(float) for s in servers}
    for s, (_, funcs, objs, req, _) in data.items():
        for f, c in funcs.items():
            groups[s][classify(f, objs[f])] += c / max(req, 1)
    print("| component (exclusive instructions per request) | " + " | ".join(servers) + " |")
    print("|---|" + "---:|" * len(servers))
    for name, _ in GROUPS:
        if any(groups[s].get(name, 0) >= 50 for s in servers):
            print(f"| {name} | " + " | ".join(f"{groups[s].get(name, 0):,.0f}" for s in servers) + " |")
    print("| **total (user space)** | " + " | ".join(
        f"**{data[s][0] / max(data[s][3], 1):,.0f}**" for s in servers) + " |")
    print("| requests counted | " + " | ".join(f"{data[s][3]:,}" for s in servers) + " |")
    for s in servers:
        _, funcs, objs, req, incl = data[s]
        print(f"\n{s}: top functions (exclusive instructions per request)\n")
        print("| instr/req | function | component |")
        print("|---:|---|---|")
        for f, c in sorted(funcs.items(), key=lambda kv: -kv[1])[:30]:
            short = f if len(f) <= 140 else f[:137] + "..."
            print(f"| {c / max(req, 1):,.0f} | `{short}` | {classify(f, objs[f])} |")
        print(f"\n{s}: inclusive instructions per request of its own code's functions (≥ 1 %)\n")
        print("| instr/req | function |")
        print("|---:|---|")
        mine = re.compile(r"pingora|hyper::|hyper_util::|ngx_|hooktap::")
        top = data[s][0]
        for f, c in sorted(incl.items(), key=lambda kv: -kv[1]):
            if c < top / 100:
                break
            if mine.search(owner(f)):
                short = f if len(f) <= 140 else f[:137] + "..."
                print(f"| {c / max(req, 1):,.0f} | `{short}` |")


if __name__ == "__main__":
    main()
