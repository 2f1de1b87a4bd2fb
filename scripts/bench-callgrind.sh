#!/usr/bin/env bash
# User-space instructions per passthrough request, by function, for nginx, the hyper reference,
# bare pingora and hooktap: each server runs under `valgrind --tool=callgrind` in front of the
# benchmark's upstream; after a warm-up its counters are zeroed, wrk sends keep-alive GETs
# (`/orders/1`, 1 KB answer) for SECONDS, and the counters are dumped; the figures are per
# request wrk completed (the at most CONNECTIONS-1 requests in flight when wrk stops are counted
# in the instructions but not in the requests: < 0.1 % at the usual counts). Instruction counts
# do not depend on what else the machine is doing, so this runs on a busy machine too.
#
#   scripts/bench-callgrind.sh                  # all four, 30 s of load each
#   SECONDS_OF_LOAD=10 scripts/bench-callgrind.sh pingora hyper
#   BARE_ARGS=--no-work-stealing LABEL=-nows scripts/bench-callgrind.sh pingora   # a knob
#
# Output in $CARGO_TARGET_DIR/bench/callgrind/ (default target/): callgrind.<server>.measured
# (the dump of the measured load, for kcachegrind), <server>.requests, and summary.md
# (instructions per request grouped by component, top functions; scripts/callgrind-groups.py).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SECONDS_OF_LOAD:-30}
connections=${CONNECTIONS:-8}
servers=("$@")
[ ${#servers[@]} -gt 0 ] || servers=(nginx hyper pingora hooktap)
target=${CARGO_TARGET_DIR:-$PWD/target}
out="$target/bench/callgrind"
mkdir -p "$out"

for tool in valgrind callgrind_control callgrind_annotate wrk nginx; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install valgrind wrk nginx-light)" >&2; exit 1; }
done
# Release builds keep their symbols, which is all a by-function count needs.
cargo build --release --bin hooktap
bench=$(cargo bench --no-run --bench proxy --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="proxy" and m.get("executable"): print(m["executable"])')
[ -x "$bench" ] || { echo "cannot find the proxy bench binary" >&2; exit 1; }

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

work=$(mktemp -d)
up=$(port)
taskset -c 0 "$bench" upstream --listen "127.0.0.1:$up" --lifetime 3600 >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_port "$up"

cat >"$work/count.lua" <<LUA
done = function(summary) io.write(string.format("REQUESTS %d %d\n", summary.requests,
  summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
  + summary.errors.timeout)) end
LUA
# wrk for $2 seconds against port $1; prints the requests it completed (fails on errors).
load() {
  local r
  r=$(taskset -c 0 wrk -t1 -c"$connections" -d"$2"s --timeout 30s -s "$work/count.lua" \
    "http://127.0.0.1:$1/orders/1" | sed -n 's/^REQUESTS //p')
  [ "${r#* }" = 0 ] || { echo "wrk saw errors: $r" >&2; return 1; }
  echo "${r% *}"
}

names=()
vg=(valgrind --tool=callgrind --separate-threads=no --dump-instr=no)
for server in "${servers[@]}"; do
  listen=$(port)
  dir="$work/$server"; mkdir -p "$dir"
  name="$server${LABEL:-}"
  cg="$out/callgrind.$name"
  rm -f "$cg" "$cg".*
  case "$server" in
    nginx)
      cat >"$dir/nginx.conf" <<NGINX
worker_processes 1; master_process off; daemon off; user root root; pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $dir/cb; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f;
  uwsgi_temp_path $dir/u; scgi_temp_path $dir/s; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$up; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$listen; location / { proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
      cmd=(nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log") ;;
    hyper)
      cmd=("$bench" hyper --listen "127.0.0.1:$listen" --upstream "127.0.0.1:$up" --threads 1) ;;
    pingora)
      cmd=("$bench" bare --listen "127.0.0.1:$listen" --upstream "127.0.0.1:$up" --threads 1
           --dir "$dir" ${BARE_ARGS:-}) ;;
    hooktap)
      "$bench" config --dir "$dir" --listen "127.0.0.1:$listen" --upstream "127.0.0.1:$up" \
        --threads 1 >"$dir/hooktap.toml"
      cmd=("$target/release/hooktap" run -c "$dir/hooktap.toml") ;;
    *) echo "unknown server $server: nginx, hyper, pingora or hooktap" >&2; exit 1 ;;
  esac
  echo "== $server" >&2
  taskset -c 1 "${vg[@]}" --callgrind-out-file="$cg" "${cmd[@]}" >"$dir/stdout.log" 2>&1 &
  vpid=$!; pids+=($vpid)
  wait_port "$listen"
  load "$listen" 3 >/dev/null
  callgrind_control -z "$vpid" >/dev/null
  n=$(load "$listen" "$seconds")
  callgrind_control -d "$vpid" >/dev/null
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  # The dump callgrind_control asked for is part 1; the final one at exit is not wanted.
  [ -f "$cg.1" ] || { echo "callgrind wrote no dump $cg.1" >&2; exit 1; }
  mv "$cg.1" "$cg.measured"
  rm -f "$cg"
  echo "$n" >"$out/$name.requests"
  echo "$name: $n requests" >&2
  names+=("$name")
done
python3 scripts/callgrind-groups.py "$out" "${names[@]}" | tee "$out/summary${LABEL:-}.md"
