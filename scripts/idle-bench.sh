#!/usr/bin/env bash
# Idle connections: what N quiet devices cost a server in memory. Opens N MQTT 3.1.1
# connections (examples/mqtt_load.rs --idle: connected, authenticated with a password,
# keep-alive off, nothing sent) to citygate (config/loadtest.toml) and to Debian's mosquitto
# (with a password file, so both check a password per connection), ROUNDS times,
# interleaved, and reports each server's resident memory (VmRSS) before and with the
# connections, and the difference per connection.
#
#   scripts/idle-bench.sh [connections] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-10000}
rounds=${2:-1}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# One descriptor per connection on each side, and some to spare.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((conns + 1000)) ]; then
  echo "the open-file limit ($(ulimit -n)) is too low for $conns connections" >&2
  exit 1
fi

. scripts/bench-lib.sh
bench_build mqtt_load
load=target/release/examples/mqtt_load

# Holds the idle connections against the server with pid $1 on port $2 (password $3) and
# prints the server's memory before and with them.
measure() {
  local pid=$1 port=$2 key=$3 before after
  sleep 1
  before=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  $load --port "$port" --key "$key" --idle "$conns" --duration 600 >"$work/idle.out" 2>&1 &
  local load_pid=$!
  for _ in $(seq 1200); do
    grep -q "connected" "$work/idle.out" && break
    kill -0 $load_pid 2>/dev/null || { cat "$work/idle.out" >&2; exit 1; }
    sleep 0.1
  done
  sleep 3
  after=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  kill $load_pid && wait $load_pid 2>/dev/null || true
  awk -v b="$before" -v a="$after" -v n="$conns" 'BEGIN {
    printf "RSS %.1f MB idle, %.1f MB with %d connections: +%.1f MB, %.2f KB per connection\n",
      b / 1024, a / 1024, n, (a - b) / 1024, (a - b) / n }'
}

run_citygate() {
  CITYGATE__MQTT__MAX_CONNECTIONS=$((conns + 100)) start_citygate
  echo -n "citygate   "
  measure $pid 18883 "$key"
  kill -TERM $pid && wait $pid
}

run_mosquitto() {
  local key=idle-bench-password
  mosquitto_passwd -b -c "$work/passwords" device "$key" 2>/dev/null
  # Started as root, mosquitto reads its files as the user `mosquitto`.
  chmod a+rx "$work" && chmod a+r "$work/passwords"
  printf 'listener 18884 127.0.0.1\nallow_anonymous false\npassword_file %s\nmax_connections -1\n' \
    "$work/passwords" >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local pid=$!
  echo -n "mosquitto  "
  measure $pid 18884 "$key"
  kill $pid && wait $pid 2>/dev/null || true
}

mosquitto -h 2>/dev/null | head -1 || true
for round in $(seq "$rounds"); do
  echo "# round $round"
  run_citygate
  run_mosquitto
done
