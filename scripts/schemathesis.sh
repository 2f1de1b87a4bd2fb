#!/usr/bin/env bash
# OpenAPI conformance: runs schemathesis against a real `hooktap run`, using the document that
# hooktap serves at /openapi.json, and fails on any finding: a 5xx, a status, media type,
# header or body the document does not describe, a valid request refused, an invalid one
# accepted, a token ignored. Settings and custom checks: scripts/schemathesis.toml and
# scripts/schemathesis_hooks.py.
#
#   scripts/schemathesis.sh                  # under a minute after the build; JUnit report in
#                                            # target/schemathesis/junit.xml
#   SCHEMATHESIS_EXAMPLES=200 scripts/schemathesis.sh
#   SCHEMATHESIS_SEED=123 scripts/schemathesis.sh          # replay the seed a run printed
#   HOOKTAP_BIN=path/to/hooktap scripts/schemathesis.sh    # another build
#
# - schemathesis is pinned (its command line changed between 3.x and 4.x) and installed from
#   PyPI into a venv under the target directory when missing.
# - hooktap runs with a config of its own in a temporary directory, with data to find: two
#   webhooks, and an event with a failed delivery made by one request through the proxy to a
#   Python web server. Their ids are handed to schemathesis, so the operations on a webhook,
#   delivery or event reach real ones, not only 404s.
# - No port is guessed: the admin API listens on port 0 and its address is read from the log;
#   the proxy's port is picked free, and hooktap is started again if another process took it.
# - When the machine allows it (`unshare`), everything runs in a network namespace with only
#   loopback: the pings and deliveries the fuzzer sets off reach no other machine.
# - Bounded: SCHEMATHESIS_EXAMPLES (default 30) cases per operation and phase, 5 s per request,
#   and schemathesis is stopped after SCHEMATHESIS_TIMEOUT seconds (default 300); starting
#   hooktap and making the data wait at most 30 and 10 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"
venv="$target/schemathesis-$version"
examples="${SCHEMATHESIS_EXAMPLES:-30}"
limit="${SCHEMATHESIS_TIMEOUT:-300}"

say() { echo "schemathesis.sh: $*" >&2; }

if [ -z "${HOOKTAP_CONFORMANCE_ISOLATED:-}" ]; then
  HOOKTAP_NO_BROWSER=1 scripts/install-deps.sh
  if [ -z "${HOOKTAP_BIN:-}" ]; then
    cargo build --locked --bin hooktap
    export HOOKTAP_BIN="$target/debug/hooktap"
  fi
  if [ ! -x "$venv/bin/schemathesis" ]; then
    say "installing schemathesis $version into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
  fi
  # The rest runs in a network namespace of its own when the kernel lets this user make one
  # (a container may not): then loopback is the only network there is.
  if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 &&
    unshare --user --map-root-user --net true 2>/dev/null; then
    exec env HOOKTAP_CONFORMANCE_ISOLATED=1 unshare --user --map-root-user --net "$0" "$@"
  fi
  say "warning: no network namespace (unshare refused); pings the fuzzer provokes may leave this machine"
else
  ip link set lo up
  say "in a network namespace of its own: loopback is the only network"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The upstream app and the webhooks' receiver: a static site with one page a shipped rule
# turns into a `download.tickets` event. It answers the deliveries' POSTs with 501, so they fail.
mkdir -p "$work/site/orders/7/tickets"
echo ticket >"$work/site/orders/7/tickets/a.pdf"
python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/site" >"$work/site.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  site="$(grep -o 'port [0-9]*' "$work/site.log" | head -1 | cut -d' ' -f2 || true)"
  [ -n "$site" ] && break
  sleep 0.1
done
[ -n "$site" ] || { say "the web server did not start:"; cat "$work/site.log" >&2; exit 1; }

token="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
start_hooktap() {
  proxy="$(free_port)"
  cat >"$work/hooktap.toml" <<EOF
rules = ["$PWD/rules/ticket-shop.toml"]

[proxy]
listen = "127.0.0.1:$proxy"
upstream = "127.0.0.1:$site"
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
token = "$token"

[[webhook]]
name = "conformance"
url = "http://127.0.0.1:$site/hooks"
secret = "conformance-secret"
topics = ["*"]
retry = ""

[[webhook]]
name = "spare"
url = "http://127.0.0.1:$site/hooks"
secret = "spare-secret"
topics = ["order.*"]
EOF
  rm -rf "$work/data"
  HOOKTAP_LOG=info "$HOOKTAP_BIN" --log-format json run -c "$work/hooktap.toml" 2>"$work/hooktap.log" &
  hooktap=$!
  admin=""
  for _ in $(seq 300); do
    if ! kill -0 "$hooktap" 2>/dev/null; then
      say "hooktap exited:"; cat "$work/hooktap.log" >&2; exit 1
    fi
    if grep -q 'is in use' "$work/hooktap.log"; then
      kill "$hooktap"; wait "$hooktap" || true
      return 1
    fi
    admin="$(grep 'admin API listening' "$work/hooktap.log" | grep -o '"listen":"[^"]*"' | cut -d'"' -f4 || true)"
    if [ -n "$admin" ] && (: </dev/tcp/127.0.0.1/"$proxy") 2>/dev/null; then
      pids+=("$hooktap")
      return 0
    fi
    sleep 0.1
  done
  say "hooktap did not start listening:"; cat "$work/hooktap.log" >&2; exit 1
}
for attempt in 1 2 3; do
  start_hooktap && break
  [ "$attempt" -lt 3 ] || { say "the proxy's port was taken three times"; exit 1; }
done
say "hooktap: admin API at $admin, proxy at 127.0.0.1:$proxy"

api() { curl -sf -H "Authorization: Bearer $token" "http://$admin$1"; }
webhook_id() { api "/webhooks" | json "next(w['id'] for w in d if w['name'] == '$1')"; }
HOOKTAP_WEBHOOK_ID="$(webhook_id conformance)"
HOOKTAP_SPARE_WEBHOOK_ID="$(webhook_id spare)"
curl -sf -o /dev/null "http://127.0.0.1:$proxy/orders/7/tickets/a.pdf"
for _ in $(seq 100); do
  HOOKTAP_DELIVERY_ID="$(api "/webhooks/$HOOKTAP_WEBHOOK_ID/deliveries?outcome=failed" | json "d[0]['id'] if d else ''")"
  [ -n "$HOOKTAP_DELIVERY_ID" ] && break
  sleep 0.1
done
[ -n "$HOOKTAP_DELIVERY_ID" ] || { say "no failed delivery came of the seeding request"; cat "$work/hooktap.log" >&2; exit 1; }
HOOKTAP_EVENT_ID="$(api "/events" | json "d[0]['id']")"
export HOOKTAP_WEBHOOK_ID HOOKTAP_SPARE_WEBHOOK_ID HOOKTAP_DELIVERY_ID HOOKTAP_EVENT_ID
say "webhooks $HOOKTAP_WEBHOOK_ID (conformance), $HOOKTAP_SPARE_WEBHOOK_ID (spare); delivery $HOOKTAP_DELIVERY_ID; event $HOOKTAP_EVENT_ID"

# What schemathesis and hypothesis keep between runs goes beside the reports, not into the tree.
export SCHEMATHESIS_CACHE="$target/schemathesis/cache"
export HYPOTHESIS_STORAGE_DIRECTORY="$target/schemathesis/hypothesis"
seed=()
[ -z "${SCHEMATHESIS_SEED:-}" ] || seed=(--seed "$SCHEMATHESIS_SEED")
status=0
timeout --kill-after=10 "$limit" "$venv/bin/schemathesis" --config-file scripts/schemathesis.toml \
  run "http://$admin/openapi.json" \
  --header "Authorization: Bearer $token" \
  --max-examples "$examples" \
  --request-timeout 5 \
  --report junit --report-junit-path "$target/schemathesis/junit.xml" \
  "${seed[@]}" || status=$?
if grep -q 'panicked' "$work/hooktap.log"; then
  say "hooktap panicked:"; grep -A3 'panicked' "$work/hooktap.log" >&2; exit 1
fi
case "$status" in
  0) ;;
  124|137) say "stopped after ${limit}s"; exit 1 ;;
  *) exit "$status" ;;
esac
