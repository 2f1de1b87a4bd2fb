#!/usr/bin/env bash
# The longer reliability suites (tests/it/crash.rs): SIGKILL loops under load in both flush
# modes, SIGTERM restarts and zero-downtime upgrades under load, a full disk and a disk that
# turns read-only (these need root: they mount a small tmpfs and an ext4 image on a loop
# device). Each prints a RESULT line with its figures; the whole run takes about three minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKTAP_NO_BROWSER=1 scripts/install-deps.sh
log="${CARGO_TARGET_DIR:-target}/reliability.log"
mkdir -p "$(dirname "$log")"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --test it --run-ignored only --no-fail-fast --no-capture "$@" 2>&1 | tee "$log"
else
  cargo test --test it --no-fail-fast -- --ignored --nocapture "$@" 2>&1 | tee "$log"
fi
echo
echo "figures:"
grep '^RESULT' "$log" || true
