#!/usr/bin/env bash
# The console in a real browser: headless chromium (Debian's package, never a downloaded one),
# driven by Playwright for Python, against a real `hooktap run` with a real upstream app and a
# real webhook receiver on loopback. The scenario is scripts/browser_test.py: sign in, create
# a webhook through the form, send traffic through the proxy, see the delivery and its chart,
# open the delivery, redeliver it, find the event by id and by payload text, try the rules on
# a pasted exchange, the live stream (pause, topic filter), the overview, every page at 800 px
# wide, a keyboard-only step, then pause and delete the webhook.
#
#   scripts/browser-test.sh                  # screenshots of each page in
#                                            # target/console-screenshots/ (path printed)
#   HOOKTAP_BIN=path/to/hooktap scripts/browser-test.sh    # another build
#
# - Playwright is pinned and installed from PyPI into a venv under the target directory when
#   missing; it drives /usr/bin/chromium (scripts/install-deps.sh installs it), so no browser
#   is downloaded.
# - No port is guessed: the upstream, the receiver and the admin API bind port 0 and are read
#   back; the proxy's port is picked free and hooktap started again if it was taken.
# - Bounded: every wait in the scenario gives up after 15 s, the whole run after
#   BROWSER_TEST_TIMEOUT seconds (default 240).
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.65.2
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"
venv="$target/playwright-$version"
shots="$target/console-screenshots"
limit="${BROWSER_TEST_TIMEOUT:-240}"

say() { echo "browser-test.sh: $*" >&2; }

scripts/install-deps.sh
if [ -z "${HOOKTAP_BIN:-}" ]; then
  cargo build --locked --bin hooktap
  HOOKTAP_BIN="$target/debug/hooktap"
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
  say "installing playwright $version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "playwright==$version"
fi

status=0
timeout --kill-after=10 "$limit" "$venv/bin/python" scripts/browser_test.py "$HOOKTAP_BIN" "$shots" || status=$?
say "screenshots: $shots"
case "$status" in
  0) ;;
  124|137) say "stopped after ${limit}s"; exit 1 ;;
  *) exit "$status" ;;
esac
