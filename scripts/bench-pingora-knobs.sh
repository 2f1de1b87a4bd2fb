#!/usr/bin/env bash
# pingora's settings, tried on the bare pingora reference: for each round, every variant runs
# once (`cargo bench --bench proxy -- --only e2e --cases pingora-get --runs 1`, wrk -t1 -c32,
# proxy pinned to core 1), so the variants are interleaved and share the machine's noise.
#
#   scripts/bench-pingora-knobs.sh                 # 3 rounds of 3 s per variant
#   ROUNDS=5 DURATION=5 scripts/bench-pingora-knobs.sh
#
# Prints one line per run (variant, requests/s, p99 ms, server CPU µs/request, other processes'
# % of a core, load average) and the medians per variant at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-3}
variants=(
  "default|"
  "no work stealing|--no-work-stealing"
  "upstream pool 1024|--keepalive-pool=1024"
  "listener SO_SNDBUF/SO_RCVBUF 1 MiB|--sndbuf=1048576 --rcvbuf=1048576"
  "listener SO_SNDBUF/SO_RCVBUF 16 KiB|--sndbuf=16384 --rcvbuf=16384"
  "upstream SO_RCVBUF 1 MiB|--peer-rcvbuf=1048576"
  "SO_REUSEPORT + TCP fast open|--reuseport --fastopen=256"
  "upstream idle timeout 60 s|--peer-idle-timeout=60"
)
cargo bench --no-run --bench proxy >/dev/null 2>&1
out=$(mktemp)
for round in $(seq 1 "$rounds"); do
  for i in "${!variants[@]}"; do
    # Rotate the order per round so that no variant always follows the same one.
    v=${variants[$(( (i + round) % ${#variants[@]} ))]}
    name=${v%%|*}; args=${v#*|}
    bare=()
    for a in $args; do bare+=("--bare-arg=$a"); done
    line=$(cargo bench --bench proxy -- --only e2e --cases pingora-get --runs 1 \
      --duration "$duration" --retries 0 --max-noise 1000 "${bare[@]}" 2>&1 \
      | grep '^| 1 | bare pingora' | head -1)
    load=$(cut -d' ' -f1 /proc/loadavg)
    # | run | case | rps | p50 | p99 | p99.9 | cpu | cores | other % | rss |
    echo "$line" | awk -F'|' -v n="$name" -v r="$round" -v l="$load" \
      '{gsub(/ /,"",$4); gsub(/ /,"",$6); gsub(/ /,"",$8); gsub(/ /,"",$10);
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r, n, $4, $6, $8, $10, l}' | tee -a "$out"
  done
done
echo
echo "| setting | requests/s (median) | p99 ms | server CPU µs/req | runs (req/s) |"
echo "|---|---:|---:|---:|---|"
python3 - "$out" "${variants[@]%%|*}" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
for name in sys.argv[2:]:
    rs = [r for r in rows if r[1] == name]
    if not rs:
        continue
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    print(f"| {name} | {med(2):,.0f} | {med(3):.2f} | {med(4):.1f} | {', '.join(r[2] for r in rs)} |")
PY
