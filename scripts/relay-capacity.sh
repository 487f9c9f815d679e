#!/usr/bin/env bash
# How many players one publisher can feed on this machine: starts a release server on
# loopback, runs the relay load generator (a separate process) for each player count, and
# stops the server. Usage: scripts/relay-capacity.sh [PLAYERS...]   (default 1 10 50 100 200)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin sluice --example relay_load
port_file=$(mktemp)
./target/release/sluice serve --config scripts/loopback --http 127.0.0.1:0 > "$port_file" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$port_file"' EXIT
for _ in $(seq 100); do grep -q "sluice ready" "$port_file" && break; sleep 0.1; done
url="http://$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$port_file")"
./target/release/examples/relay_load --url "$url" --server-pid "$server" "$@"
