#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test (unit and integration),
# then the console's browser test (scripts/browser-test.sh: headless chromium driven by
# Playwright; screenshots in target/console-screenshots/). HOOKTAP_NO_BROWSER=1 leaves the
# browser test out (and chromium uninstalled).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
if [ -z "${HOOKTAP_NO_BROWSER:-}" ]; then
  scripts/browser-test.sh
fi
