#!/usr/bin/env bash
# Gateway vs nginx, Content-Length and chunked upstreams: builds the release binaries and runs
# `proxy-bench --vs-nginx --floor` (see bench/README.md), the load driven by wrk. Self-contained
# and bounded: installs nginx and wrk with apt-get if they are missing, needs Node.js (a test
# dependency), listens on 127.0.0.1 only, and takes about 2 minutes after the build with the
# defaults below.
#
#   bash bench/run.sh                      # 3 rounds, 32 connections, 3 s per scenario
#   bash bench/run.sh --rounds 5 --pin     # extra options go to proxy-bench
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/portcullis-target), NGINX (nginx binary),
# WRK (wrk binary), LOAD=in-process (proxy-bench's own load generator instead of wrk).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portcullis-target}"

# apt_install PACKAGE [FALLBACK]: installs PACKAGE (or FALLBACK if PACKAGE fails) with apt-get.
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$1" \
        || { [ -n "${2:-}" ] && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2"; }
}

NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
if [ ! -x "$NGINX" ]; then
    echo "run.sh: nginx not found; installing nginx-light (or nginx) with apt-get" >&2
    apt_install nginx-light nginx
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
fi
WRK_ARGS=()
if [ "${LOAD:-wrk}" != in-process ]; then
    WRK="${WRK:-$(command -v wrk || echo /usr/bin/wrk)}"
    if [ ! -x "$WRK" ]; then
        echo "run.sh: wrk not found; installing it with apt-get" >&2
        apt_install wrk
        WRK="$(command -v wrk || echo /usr/bin/wrk)"
    fi
    WRK_ARGS=(--wrk "$WRK")
fi
command -v node >/dev/null || { echo "run.sh: node (Node.js) is required for the chunked upstream" >&2; exit 69; }
command -v taskset >/dev/null || echo "run.sh: taskset missing; --pin will not work" >&2

cargo build --release --locked -p portcullis-cli -p portcullis-bench

# Three rounds unless the caller chose.
ROUNDS=(--rounds 3)
for a in "$@"; do
    case "$a" in --rounds|--rounds=*) ROUNDS=() ;; esac
done

# A hard upper bound on the run itself (the defaults need ~130 s).
timeout 600 "$CARGO_TARGET_DIR/release/proxy-bench" --vs-nginx \
    --portcullis-bin "$CARGO_TARGET_DIR/release/portcullis" \
    --nginx-bin "$NGINX" \
    --floor \
    ${WRK_ARGS[@]+"${WRK_ARGS[@]}"} \
    "${ROUNDS[@]}" \
    "$@"
