#!/usr/bin/env bash
# Installs what the JavaScript side of the tests needs, idempotently and quietly:
#   - npm packages from package-lock.json (npm ci) when node_modules is missing or older
#     than the lock file;
#   - Debian's chromium (for testing/browser/e2e.mjs) when /usr/bin/chromium is missing.
#   - kubernetes-validate (PyPI) for the deployment-example test when it is missing.
# Prints nothing on success; on failure prints the failing step's output and exits non-zero.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

run() {
  if ! "$@" >"$log" 2>&1; then
    echo "install-test-deps: '$*' failed:" >&2
    cat "$log" >&2
    exit 1
  fi
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install-test-deps: node and npm are required (node >= 20.19)" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  run npm ci --no-audit --no-fund
  touch node_modules
fi

# openssl makes the TLS test's throw-away CA; redis-server runs the private Redis of the
# outage test (even when a shared Redis already answers on 6379).
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  run "${sudo[@]}" apt-get update
  run "${sudo[@]}" apt-get install -y "${missing[@]}"
fi

if [ ! -x /usr/bin/chromium ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  run "${sudo[@]}" apt-get update
  run "${sudo[@]}" apt-get install -y chromium
fi

# kubernetes-validate (PyPI) checks deploy/kubernetes/ against the Kubernetes API schemas
# (tests/deploy_examples.rs); systemd-analyze verifies deploy/systemd/ where systemd is.
if ! command -v kubernetes-validate >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
  run python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
  if command -v pyenv >/dev/null 2>&1; then
    run pyenv rehash
  fi
fi
