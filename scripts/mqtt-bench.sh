#!/usr/bin/env bash
# MQTT benchmark: the same rumqttc load generator (examples/mqtt_load.rs: QoS 1, one reading
# per publish, an inflight window of 100 per connection) against
#   1. citygate (config/loadtest.toml): readings acknowledged once in the pipeline;
#   2. Debian's mosquitto as a plain broker, publish → one QoS 1 subscriber, with its
#      per-client inflight raised to 1000 (with the default of 20 the single subscriber is
#      the bottleneck and the comparison says nothing);
# then both again paced at 10 000 readings/s for PUBACK latency. Needs mosquitto (Debian).
#
#   scripts/mqtt-bench.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-16}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --bin citygate --example mqtt_load
load=target/release/examples/mqtt_load

run_citygate() {
  rm -rf "$work/data"
  export CITYGATE__STORAGE__DATA_DIR="$work/data" CITYGATE__HTTP__LISTEN=127.0.0.1:18080 \
         CITYGATE__MQTT__LISTEN=127.0.0.1:18883
  key=$(target/release/citygate --config config/loadtest.toml keys create-device \
        --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
  target/release/citygate --config config/loadtest.toml serve >"$work/citygate.log" 2>&1 &
  local pid=$!
  sleep 1
  echo -n "citygate   $*: "
  $load --port 18883 --key "$key" --connections "$conns" --duration "$secs" "$@" 2>/dev/null
  kill -TERM $pid && wait $pid
}

run_mosquitto() {
  printf 'listener 18884 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 1000000\n' >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local pid=$!
  sleep 1
  echo -n "mosquitto  $*: "
  $load --port 18884 --subscribe --connections "$conns" --duration "$secs" "$@" 2>/dev/null
  kill $pid && wait $pid 2>/dev/null || true
}

mosquitto -h 2>/dev/null | head -1 || true
run_citygate
run_mosquitto
run_citygate --rate 10000
run_mosquitto --rate 10000
