#!/usr/bin/env bash
# Where hooktap's time goes under load: perf profiles (by thread, by function, with callers)
# and syscalls per request compared with nginx (strace -c), for passthrough and matched
# traffic. Uses the `profiling` cargo profile (release + line tables) so perf can unwind.
#
#   scripts/bench-profile.sh            # results in target/bench/profile/
#
# Each load run is `wrk -t1 -c32` for a few seconds on 127.0.0.1 (see benches/proxy/main.rs,
# subcommand `attach`); perf/strace attach to the server under test only.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bench.sh --install-only
command -v perf >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
command -v strace >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null

cargo build --profile profiling --bin hooktap
cargo bench --no-run --bench proxy
bin="$PWD/target/profiling/hooktap"
out="$PWD/target/bench/profile"
mkdir -p "$out"
attach() { cargo bench --bench proxy -- attach --hooktap "$bin" "$@"; }

for case in hooktap-get hooktap-post; do
  echo "== perf: $case" >&2
  attach --case "$case" --duration 5 \
    --cmd "perf record -F 999 --call-graph dwarf,32768 -o $out/perf-$case.data -p {pids}" \
    | tee "$out/perf-$case.load.txt"
  perf report -i "$out/perf-$case.data" --no-children --sort comm --stdio 2>/dev/null \
    | grep -v '^$' > "$out/perf-$case.threads.txt" || true
  perf report -i "$out/perf-$case.data" --no-children --sort dso,symbol --stdio -g none \
    --percent-limit 0.5 2>/dev/null | grep -v '^$' > "$out/perf-$case.self.txt" || true
  perf report -i "$out/perf-$case.data" --children --sort symbol --stdio -g none \
    --percent-limit 2 2>/dev/null | grep -v '^$' > "$out/perf-$case.children.txt" || true
done

for case in nginx-get hooktap-get nginx-post hooktap-post; do
  echo "== strace -c: $case" >&2
  attach --case "$case" --duration 3 --cmd "strace -c -f -o $out/strace-$case.txt -p {pids}" \
    | tee "$out/strace-$case.load.txt"
done

echo "== syscalls per request" >&2
for case in nginx-get hooktap-get nginx-post hooktap-post; do
  req=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' "$out/strace-$case.load.txt")
  awk -v req="$req" -v case="$case" '
    $NF=="total" { total=$4 }
    /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ && $NF!="total" { calls[$NF]=$4 }
    END {
      printf "%-14s %8.2f syscalls/request:", case, total/req
      n=0; for (s in calls) { if (calls[s]/req >= 0.05) printf " %s=%.2f", s, calls[s]/req }
      printf "\n"
    }' "$out/strace-$case.txt"
done | tee "$out/syscalls-per-request.txt"
