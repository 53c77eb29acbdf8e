#!/usr/bin/env bash
# MQTT benchmark: the same rumqttc load generator (examples/mqtt_load.rs: QoS 1, one reading
# per publish, an inflight window of 100 per connection) against
#   1. citygate (config/loadtest.toml, fsync always): readings acknowledged once durable;
#   2. Debian's mosquitto as a plain broker, publish → one QoS 1 subscriber, with its
#      per-client inflight raised to 1000 (with the default of 20 the single subscriber is
#      the bottleneck and the comparison says nothing);
# unpaced, then paced at 10 000 readings/s for PUBACK latency; ROUNDS times, interleaved.
# The server runs on CPU 1 and the generator on CPU 0 (`taskset`; PIN=0 turns it off), and
# each run reports the server process's CPU time per message (user + system, from
# /proc/PID/stat): per acknowledged publish for citygate, per relayed message for mosquitto.
# Needs mosquitto (Debian).
#
#   scripts/mqtt-bench.sh [seconds] [connections] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-16}
rounds=${3:-1}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. scripts/bench-lib.sh
bench_build mqtt_load
load=target/release/examples/mqtt_load

# Runs the generator against a server with pid $1 on port $2; prints its line with the
# server's CPU per message, counted by field $3 (acked or received).
measure() {
  local pid=$1 port=$2 count=$3; shift 3
  local before after out n
  before=$(cpu_of "$pid")
  out=$("${load_cpu[@]}" $load --port "$port" --connections "$conns" --duration "$secs" "$@" 2>/dev/null)
  after=$(cpu_of "$pid")
  n=$(sed -E "s/.* $count ([0-9]+).*/\1/" <<<"$out")
  [ "$count" = acked ] || n=$(sed -E 's/.*received by subscriber ([0-9]+).*/\1/' <<<"$out")
  awk -v a="$after" -v b="$before" -v n="$n" -v out="$out" \
    'BEGIN { printf "%s  server cpu %.2f s, %.2f us/message\n", out, a - b, (n > 0 ? (a - b) * 1e6 / n : 0) }'
}

run_citygate() {
  start_citygate "${server_cpu[@]}"
  echo -n "citygate   $*: "
  measure $pid 18883 acked --key "$key" "$@"
  kill -TERM $pid && wait $pid
}

run_mosquitto() {
  printf 'listener 18884 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 1000000\n' >"$work/mosquitto.conf"
  "${server_cpu[@]}" mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local pid=$!
  sleep 1
  echo -n "mosquitto  $*: "
  measure $pid 18884 received --subscribe "$@"
  kill $pid && wait $pid 2>/dev/null || true
}

mosquitto -h 2>/dev/null | head -1 || true
echo "pinned: ${server_cpu[*]:-no} (server) / ${load_cpu[*]:-no} (generator)"
for round in $(seq "$rounds"); do
  echo "# round $round"
  run_citygate
  run_mosquitto
  run_citygate --rate 10000
  run_mosquitto --rate 10000
done
