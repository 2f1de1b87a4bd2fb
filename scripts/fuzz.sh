#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer, AddressSanitizer): builds the targets in fuzz/ and runs
# each for a bounded time; exits 1 when a target crashed (panic, sanitizer report, timeout or
# out-of-memory), with the input saved in fuzz/artifacts/<target>/. Not part of the test command
# or CI: run it by hand after changing a parser, decoder or the evaluator.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh decode exchange
#
# Targets (fuzz/fuzz_targets/): `config` (hooktap.toml and a rule file through Config::load,
# then the rule file's [[test]]s), `decode` (BodyCapture and decode_body: gzip, deflate, brotli,
# chains, JSON, forms, text), `exchange` (the exchange document and rule evaluation).
#
# cargo-fuzz needs flags only a nightly compiler accepts (-Zsanitizer=address and libFuzzer's
# instrumentation); RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. It is set for the
# cargo-fuzz commands alone, which build into their own directory,
# ${CARGO_TARGET_DIR:-target}/fuzz, so ordinary builds never see those flags.
#
# Each run starts from the committed corpus (fuzz/corpus/<target>, only read) and what earlier
# runs found (${CARGO_TARGET_DIR:-target}/fuzz/corpus/<target>, where new inputs are written).
# To commit new inputs, merge them into a minimal set:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir target/fuzz <target> fuzz/corpus/<target> \
#     target/fuzz/corpus/<target> -- -merge=1
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKTAP_NO_BROWSER=1 scripts/install-deps.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

seconds=${FUZZ_SECONDS:-60}
target_dir="${CARGO_TARGET_DIR:-target}/fuzz"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# Builds every target (the first time, the whole dependency tree: several minutes).
RUSTC_BOOTSTRAP=1 cargo fuzz build --target-dir "$target_dir"
failed=()
for t in "${targets[@]}"; do
  found="$target_dir/corpus/$t"
  mkdir -p "$found" "fuzz/artifacts/$t"
  log="$target_dir/$t.log"
  echo "== $t: ${seconds}s" >&2
  # -timeout: one input taking 10 s is a finding; -rss_limit_mb: so is using 2 GB.
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$target_dir" "$t" "$found" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" >&2 || true
  else
    tail -n 40 "$log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/, logs in $target_dir/*.log)" >&2
  exit 1
fi
echo "fuzzing found nothing: ${targets[*]}, ${seconds}s each" >&2
