#!/usr/bin/env bash
# jemalloc's settings against hooktap's memory under matched load: for each round, every
# variant runs the end-to-end `hooktap-post` case once (POST /orders, every request matches a
# rule, webhook active; wrk -t1 -c32), with `_RJEM_MALLOC_CONF` set to the variant's options
# (it applies on top of what src/main.rs compiles in). RSS is read at the end of the load and
# again IDLE seconds later.
#
#   scripts/bench-jemalloc.sh                       # 2 rounds, 5 s of load, idle RSS after 10 s
#   ROUNDS=3 IDLE=20 scripts/bench-jemalloc.sh
#   VARIANTS="as built|;decay 1 s|dirty_decay_ms:1000" scripts/bench-jemalloc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-2}
duration=${DURATION:-5}
idle=${IDLE:-10}
IFS=';' read -r -a variants <<<"${VARIANTS:-as built|;8 arenas|narenas:8;background thread|background_thread:true;dirty decay 1 s|dirty_decay_ms:1000;2 arenas|narenas:2;background thread + 2 arenas + decay 1 s|background_thread:true,narenas:2,dirty_decay_ms:1000}"
cargo build --release --bin hooktap >/dev/null 2>&1
cargo bench --no-run --bench proxy >/dev/null 2>&1
out=$(mktemp)
for round in $(seq 1 "$rounds"); do
  for i in "${!variants[@]}"; do
    v=${variants[$(( (i + round) % ${#variants[@]} ))]}
    name=${v%%|*}; conf=${v#*|}
    env=()
    [ -z "$conf" ] || env=("--hooktap-env=_RJEM_MALLOC_CONF=$conf")
    line=$(cargo bench --bench proxy -- --only e2e --cases hooktap-post --runs 1 \
      --duration "$duration" --retries 0 --max-noise 1000 --idle-rss-after "$idle" "${env[@]}" 2>&1 \
      | grep '^| 1 | hooktap POST' | head -1)
    load=$(cut -d' ' -f1 /proc/loadavg)
    # | run | case | rps | p50 | p99 | p99.9 | cpu | cores | other % | rss / hwm / idle x | hooks |
    echo "$line" | awk -F'|' -v n="$name" -v r="$round" -v l="$load" \
      '{gsub(/ /,"",$4); gsub(/ /,"",$8); split($11, m, " / "); gsub(/ /,"",m[1]); gsub(/ /,"",m[2]);
        sub(/idle /,"",m[3]); gsub(/ /,"",m[3]); gsub(/ /,"",$12);
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, n, $4, $8, m[1], m[2], m[3], $12, l}' | tee -a "$out"
  done
done
echo
echo "| jemalloc setting | matched req/s | server CPU µs/req | RSS at end of load MiB | peak MiB | RSS ${idle} s later MiB | runs (req/s; RSS) |"
echo "|---|---:|---:|---:|---:|---:|---|"
python3 - "$out" "${variants[@]%%|*}" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for name in sys.argv[2:]:
    rs = [r for r in rows if r[1] == name and len(r) >= 7]
    if not rs:
        continue
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    runs = "; ".join(f"{r[2]} / {r[4]} / {r[6]}" for r in rs)
    print(f"| {name} | {med(2):,.0f} | {med(3):.1f} | {med(4):.1f} | {med(5):.1f} | {med(6):.1f} | {runs} |")
PY
