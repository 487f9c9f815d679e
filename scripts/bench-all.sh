#!/usr/bin/env bash
# Every benchmark of the project in one run, printed as one table: name, workload, figure,
# the baseline measured in the same run, and the ratio figure/baseline.
#
#   scripts/bench-all.sh            # everything (about 6 minutes on 2 cores after the build)
#   PLAYERS="1 10 50 200" scripts/bench-all.sh
#   RELAY_ONLY=1 PLAYERS="50 200" scripts/bench-all.sh
#
# The relay rows run the same load generator (examples/relay_load.rs, its own process)
# against Sluice and against examples/baseline_relay.rs (a plain webrtc-crate broadcast
# relay), alternating, with the same engine settings; the ratio is Sluice's server CPU per
# forwarded packet over the baseline's. Sluice runs three times: with a UDP socket per session
# (scripts/loopback, sessions on webrtc-rs 0.17), with all media on one mux socket whose
# output is batched (scripts/loopback-mux: GSO runs per player and sendmmsg, 0.17 sessions),
# and as it runs by default, with publishers and players on the sans-I/O `rtc` engine over
# that socket, the players on direct connections (scripts/loopback-rtc).
set -euo pipefail
cd "$(dirname "$0")/.."
players=${PLAYERS:-"1 10 50 200"}
out=$(mktemp -d)
# The servers start inside process substitutions, so they are not this shell's jobs: their
# PIDs are kept in a file, and a run that stops early still ends them.
trap 'kill $(jobs -p) $(cat "$out/pids" 2>/dev/null) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$out"' EXIT

echo "building (release)…" >&2
cargo build --release --benches --examples --bin sluice >&2
cargo build --release -p relay-021 >&2

# RELAY_ONLY=1 skips the cargo benches (for profiling the relay).
if [ -z "${RELAY_ONLY:-}" ]; then
  for bench in control_plane reload keepalive policy; do
    echo "running cargo bench --bench $bench…" >&2
    cargo bench --bench "$bench" 2>/dev/null | tee "$out/$bench.txt" >&2
  done
fi

start_server() { # $1 = label, rest = command; prints "PID ADDR"
  local label=$1; shift
  "$@" > "$out/$label.ready" 2>/dev/null &
  local pid=$!
  echo "$pid" >> "$out/pids"
  for _ in $(seq 100); do grep -q "ready" "$out/$label.ready" && break; sleep 0.1; done
  echo "$pid http://$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$out/$label.ready")"
}
read -r sluice_pid sluice_url < <(start_server sluice ./target/release/sluice serve --config scripts/loopback --http 127.0.0.1:0)
read -r base_pid base_url < <(start_server baseline ./target/release/examples/baseline_relay 127.0.0.1:0)
read -r r021_pid r021_url < <(start_server relay-021 ./target/release/relay-021 127.0.0.1:0)
read -r mux_pid mux_url < <(start_server sluice-mux ./target/release/sluice serve --config scripts/loopback-mux --http 127.0.0.1:0)
read -r rtc_pid rtc_url < <(start_server sluice-rtc ./target/release/sluice serve --config scripts/loopback-rtc --http 127.0.0.1:0)
for n in $players; do
  echo "relay: $n players, Sluice (a socket per session, one batched mux socket, Sluice as it runs by default), baseline, then the 0.21 relay…" >&2
  ./target/release/examples/relay_load --url "$sluice_url" --server-pid "$sluice_pid" --label sluice "$n" | tee -a "$out/relay.txt" >&2
  ./target/release/examples/relay_load --url "$mux_url" --server-pid "$mux_pid" --label sluice-mux "$n" | tee -a "$out/relay.txt" >&2
  ./target/release/examples/relay_load --url "$rtc_url" --server-pid "$rtc_pid" --label sluice-rtc "$n" | tee -a "$out/relay.txt" >&2
  ./target/release/examples/relay_load --url "$base_url" --server-pid "$base_pid" --label baseline "$n" | tee -a "$out/relay.txt" >&2
  ./target/release/examples/relay_load --url "$r021_url" --server-pid "$r021_pid" --label webrtc-0.21 "$n" | tee -a "$out/relay.txt" >&2
done
kill "$sluice_pid" "$mux_pid" "$rtc_pid" "$base_pid" "$r021_pid" 2>/dev/null || true

{
  echo "benchmark|workload|figure|baseline|ratio"
  cat "$out"/*.txt | { grep '^RESULT|' || true; } | cut -d'|' -f2-
  # RELAY|label|players|µs/pkt|loss|first ms|srv CPU|gen CPU|KiB/player|RSS KiB before|live|after
  awk -F'|' '
    /^RELAY\|sluice\|/   { s[$3] = $0; order[++count] = $3 }
    /^RELAY\|baseline\|/ { b[$3] = $0 }
    /^RELAY\|webrtc-0.21\|/ { r[$3] = $0 }
    /^RELAY\|sluice-mux\|/ { m[$3] = $0 }
    /^RELAY\|sluice-rtc\|/ { t[$3] = $0 }
    END {
      for (i = 1; i <= count; i++) { n = order[i]; if (!(n in b)) continue;
        split(s[n], x, "|"); split(b[n], y, "|");
        printf "relay server CPU per forwarded packet|1 publisher (1.5 Mbit/s VP8 + Opus), %s players|%s µs (loss %s %%, first pkt %s ms, gen CPU %s %%)|%s µs (loss %s %%, first pkt %s ms)|%.2f\n", n, x[4], x[5], x[6], x[8], y[4], y[5], y[6], x[4] / y[4];
        if (x[9] != "-" && y[9] != "-") printf "relay server memory per player|%s players|%s KiB|%s KiB (baseline)|%.2f\n", n, x[9], y[9], (y[9] > 0 ? x[9] / y[9] : 0);
        if (n in m) { split(m[n], w, "|");
          printf "relay server CPU per forwarded packet, Sluice on one batched mux socket|%s players|%s µs (loss %s %%, first pkt %s ms, gen CPU %s %%)|%s µs (loss %s %%, first pkt %s ms)|%.2f\n", n, w[4], w[5], w[6], w[8], y[4], y[5], y[6], w[4] / y[4];
        }
        if (n in t) { split(t[n], v, "|");
          printf "relay server CPU per forwarded packet, Sluice as it runs by default (rtc: direct players)|%s players|%s µs (loss %s %%, first pkt %s ms, gen CPU %s %%)|%s µs (loss %s %%, first pkt %s ms)|%.2f\n", n, v[4], v[5], v[6], v[8], y[4], y[5], y[6], v[4] / y[4];
          if (v[9] != "-" && y[9] != "-") printf "relay server memory per player, Sluice as it runs by default|%s players|%s KiB|%s KiB (baseline)|%.2f\n", n, v[9], y[9], (y[9] > 0 ? v[9] / y[9] : 0);
          if (v[12] != "" && v[12] != "-") printf "relay server RSS 2 s after the players left, over RSS before they came, Sluice as it runs by default|%s players|%.1f MiB after, %.1f before (%.1f live)|-|%.2f\n", n, v[12] / 1024, v[10] / 1024, v[11] / 1024, (v[10] > 0 ? v[12] / v[10] : 0);
        }
        if (n in r) { split(r[n], z, "|");
          printf "relay server CPU per forwarded packet, plain relay on webrtc 0.21|%s players|%s µs (loss %s %%)|%s µs (loss %s %%, plain relay on 0.17)|%.2f\n", n, z[4], z[5], y[4], y[5], z[4] / y[4];
          if (z[9] != "-" && y[9] != "-") printf "relay server memory per player, plain relay on webrtc 0.21|%s players|%s KiB|%s KiB (plain relay on 0.17)|%.2f\n", n, z[9], y[9], (y[9] > 0 ? z[9] / y[9] : 0);
        }
        if (x[12] != "" && x[12] != "-" && y[12] != "" && y[12] != "-") printf "relay server RSS 2 s after the players left, over RSS before they came|%s players|%.1f MiB after, %.1f before (%.1f live)|%.1f MiB after, %.1f before (baseline)|%.2f\n", n, x[12] / 1024, x[10] / 1024, x[11] / 1024, y[12] / 1024, y[10] / 1024, (x[10] > 0 ? x[12] / x[10] : 0);
      }
    }' "$out/relay.txt"
} | column -t -s'|'
