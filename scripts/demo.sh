#!/usr/bin/env bash
# Quick start: installs what is missing, builds hooktap and runs `hooktap demo`: a ticket shop,
# hooktap in front of it, a receiver that checks signatures, and some traffic. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKTAP_NO_BROWSER=1 scripts/install-deps.sh
cargo build --release --locked
exec target/release/hooktap demo "$@"
