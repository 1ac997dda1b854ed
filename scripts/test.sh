#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, store contract tests against real
# PostgreSQL and Redis, end-to-end tests against a real OpenID provider, and one real
# headless Chromium run. Installs what it needs (npm packages, chromium, database servers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One build cache for every clone on this machine (CI clones afresh each run).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/portcullis-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
bash scripts/install-test-deps.sh
eval "$(bash scripts/ensure-services.sh)"
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo nextest run --workspace --locked --no-fail-fast "$@"
