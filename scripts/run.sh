#!/usr/bin/env bash
# Quick start: installs what is missing, builds hooktap in release mode and runs it with
# hooktap.toml (or the config given as first argument). Point `[proxy] upstream` at your app.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKTAP_NO_BROWSER=1 scripts/install-deps.sh
config="${1:-hooktap.toml}"
cargo build --release --locked
target/release/hooktap check -c "$config"
exec target/release/hooktap run -c "$config"
