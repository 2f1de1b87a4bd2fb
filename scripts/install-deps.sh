#!/usr/bin/env bash
# Installs what building and testing hooktap needs and a fresh Debian machine lacks: cmake
# (pingora's zlib dependency builds with it), a C compiler, e2fsprogs (the reliability suite
# formats an ext4 image), PostgreSQL's server binaries (the shared-store tests start their own
# throwaway cluster; no server is started here), python3-venv and iproute2
# (scripts/schemathesis.sh and scripts/browser-test.sh make venvs; the first also brings up
# loopback in a network namespace), strace (the durability test traces hooktap's fdatasync
# calls), and chromium (scripts/browser-test.sh drives it headless through Playwright, which
# it installs into its venv; no browser is downloaded). Safe to run again: it installs only
# what is missing.
# HOOKTAP_NO_BROWSER=1 skips chromium when only building.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The reliability suite puts the store on an ext4 image to fail the disk under it.
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
# The PostgreSQL store's tests run initdb/pg_ctl from /usr/lib/postgresql/<version>/bin.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# The OpenAPI conformance run and the browser test install schemathesis and Playwright into
# venvs (Debian splits venv out).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The durability test watches hooktap's fdatasync calls with strace.
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ -z "${HOOKTAP_NO_BROWSER:-}" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's package starts a cluster of its own; hooktap's tests never use it.
  if printf '%s\n' "${missing[@]}" | grep -qx postgresql; then
    $sudo_cmd service postgresql stop >/dev/null 2>&1 || true
  fi
fi
command -v cargo >/dev/null 2>&1 || {
  echo "cargo is missing: install Rust 1.86 or newer (https://rustup.rs)" >&2
  exit 1
}
