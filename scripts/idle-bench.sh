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

if [ -z "${CITYGATE_BIN:-}" ]; then
  cargo build --release --quiet --bin citygate --example mqtt_load
else
  cargo build --release --quiet --example mqtt_load
fi
bin=${CITYGATE_BIN:-target/release/citygate}
load=target/release/examples/mqtt_load

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

# Holds the idle connections against the server with pid $1 on port $2 (password $3) and
# prints the server's memory before and with them.
measure() {
  local pid=$1 port=$2 key=$3 before after
  sleep 1
  before=$(rss_kb "$pid")
  $load --port "$port" --key "$key" --idle "$conns" --duration 600 >"$work/idle.out" 2>&1 &
  local load_pid=$!
  for _ in $(seq 1200); do
    grep -q "connected" "$work/idle.out" && break
    kill -0 $load_pid 2>/dev/null || { cat "$work/idle.out" >&2; exit 1; }
    sleep 0.1
  done
  sleep 3
  after=$(rss_kb "$pid")
  kill $load_pid && wait $load_pid 2>/dev/null || true
  awk -v b="$before" -v a="$after" -v n="$conns" 'BEGIN {
    printf "RSS %.1f MB idle, %.1f MB with %d connections: +%.1f MB, %.2f KB per connection\n",
      b / 1024, a / 1024, n, (a - b) / 1024, (a - b) / n }'
}

run_citygate() {
  rm -rf "$work/data"
  export CITYGATE__STORAGE__DATA_DIR="$work/data" CITYGATE__HTTP__LISTEN=127.0.0.1:18080 \
         CITYGATE__MQTT__LISTEN=127.0.0.1:18883 \
         CITYGATE__MQTT__MAX_CONNECTIONS=$((conns + 100))
  key=$($bin --config config/loadtest.toml keys create-device \
        --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
  $bin --config config/loadtest.toml serve >"$work/citygate.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
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
