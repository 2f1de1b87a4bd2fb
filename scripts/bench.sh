#!/usr/bin/env bash
# The benchmark, in one command: installs what is missing (wrk, nginx-light, cmake, a C
# compiler), builds the release binaries, runs the criterion micro-benchmarks and then the
# end-to-end benchmark (direct vs nginx vs hooktap, delivery, lag, memory).
#
#   scripts/bench.sh                  # everything, ~10 minutes on 2 cores after the build
#   scripts/bench.sh --skip-micro     # only the end-to-end part
#   scripts/bench.sh -- --runs 5      # anything after `--` goes to `cargo bench --bench proxy`
#
# Results: printed, and written as Markdown to target/bench/proxy-results.md (criterion's own
# reports are under target/criterion/). Every server listens on 127.0.0.1 only and every load
# run is bounded in time; see benches/RESULTS.md for what the numbers mean.
set -euo pipefail
cd "$(dirname "$0")/.."

micro=1
install_only=0
proxy_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-micro) micro=0 ;;
    --install-only) install_only=1 ;;
    --) shift; proxy_args=("$@"); break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

scripts/install-deps.sh
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # Installing nginx must not start a system-wide nginx: while it installs, a policy-rc.d
  # (only if there is none already) refuses every service start.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  [ -z "$policy" ] || $sudo_cmd rm -f "$policy"
fi
[ "$install_only" = 1 ] && exit 0

echo "== build (release)" >&2
cargo build --release --bin hooktap
cargo bench --no-run --bench proxy
[ "$micro" = 1 ] && cargo bench --no-run --bench micro

if [ "$micro" = 1 ]; then
  echo "== micro-benchmarks: cargo bench --bench micro" >&2
  cargo bench --bench micro
fi

echo "== end to end: cargo bench --bench proxy ${proxy_args[*]:-}" >&2
HOOKTAP_BIN="$PWD/target/release/hooktap" cargo bench --bench proxy -- "${proxy_args[@]}"
