#!/usr/bin/env bash
# The demo: a real OpenID provider (oidc-provider), a JWT-checking API, and the portcullis
# gateway serving the sample SPA, on the embedded SQLite session store. Ctrl-C stops all.
#
#   GATEWAY_PORT (8080), IDP_PORT (9000), API_PORT (9100) can be overridden.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

GATEWAY_PORT="${GATEWAY_PORT:-8080}"
IDP_PORT="${IDP_PORT:-9000}"
API_PORT="${API_PORT:-9100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/tmp}/.cache/portcullis-target}"

command -v node >/dev/null || { echo "demo: node (>= 20) and npm are required" >&2; exit 1; }
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
  echo "demo: installing npm packages (oidc-provider, jose)..."
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules
fi
echo "demo: building portcullis..."
cargo build --quiet -p portcullis-cli
bin="$CARGO_TARGET_DIR/debug/portcullis"

state="$root/.demo"
mkdir -p "$state"
origin="http://127.0.0.1:$GATEWAY_PORT"
cat > "$state/idp.json" <<JSON
{ "clients": [ { "client_id": "spa-bff", "client_secret": "demo-secret-change-me-0123456789",
    "redirect_uris": ["$origin/signin-oidc"],
    "post_logout_redirect_uris": ["$origin/signout-callback-oidc"],
    "backchannel_logout_uri": "$origin/bff/backchannel",
    "backchannel_logout_session_required": true,
    "token_endpoint_auth_method": "client_secret_basic",
    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
    "scope": "openid profile email offline_access" } ],
  "access_token_ttl": 120, "state_file": "$state/idp-state.json" }
JSON
cat > "$state/portcullis.toml" <<TOML
# Demo configuration (plain http on loopback: cookies lose the __Host- prefix, see the warning).
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
public_url = "$origin"
data_dir = "data"

[oidc]
issuer = "http://127.0.0.1:$IDP_PORT"
client_id = "spa-bff"
client_secret = "demo-secret-change-me-0123456789"
scopes = ["openid", "profile", "email", "offline_access", "api"]

[session]
store = "sqlite://data/sessions.db"
idle_timeout = "8h"
absolute_timeout = "7d"

[[routes]]
path = "/api"
upstream = "http://127.0.0.1:$API_PORT"
token = "user"

[spa]
dir = "$root/examples/spa"
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_ready() { # file, name
  for _ in $(seq 1 150); do
    grep -q '^READY' "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "demo: $2 did not start; its output:" >&2; cat "$1" >&2; exit 1
}

node testing/idp/server.mjs --port "$IDP_PORT" --config "$state/idp.json" --quiet >"$state/idp.out" 2>"$state/idp.log" &
pids+=($!)
wait_ready "$state/idp.out" "the identity provider"
node examples/api/server.mjs --port "$API_PORT" --issuer "http://127.0.0.1:$IDP_PORT" --quiet >"$state/api.out" 2>"$state/api.log" &
pids+=($!)
wait_ready "$state/api.out" "the API"
"$bin" serve --config "$state/portcullis.toml" > "$state/gateway.out" 2> >(tee "$state/gateway.log" >&2) &
pids+=($!)
wait_ready "$state/gateway.out" "the gateway"

cat <<MSG

  Portcullis demo is running.
    Open         $origin
    Log in as    alice / alice   (or bob / bob)
    IdP          http://127.0.0.1:$IDP_PORT   API  http://127.0.0.1:$API_PORT
    Config       $state/portcullis.toml     Logs  $state/*.log
  Press Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
