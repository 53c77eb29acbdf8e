#!/usr/bin/env bash
# Intake through a broker (`[[upstream]]`) against citygate's own MQTT endpoint, with the same
# rumqttc load generator (examples/mqtt_load.rs: QoS 1, one reading per publish):
#   1. the generator publishes to citygate's endpoint (each PUBACK after the log's fsync);
#   2. the generator publishes to Debian's mosquitto, and citygate, subscribed to it as an
#      upstream, takes every message and acknowledges it to mosquitto once durable.
# For each: readings per second into citygate's log (for 2, from the first publish until
# citygate has acknowledged the last message) and citygate's CPU time per reading. Run
# interleaved, twice. Needs mosquitto (Debian).
#
#   scripts/upstream-bench.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --bin citygate --example mqtt_load
load=target/release/examples/mqtt_load
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() {
  curl -s 127.0.0.1:18080/metrics | awk -v name="$1" '$1 == name { print int($2) }'
}
accepted='citygate_readings_accepted_total{dataset="traffic-counts"}'

start_citygate() {
  rm -rf "$work/data"
  export CITYGATE__STORAGE__DATA_DIR="$work/data" CITYGATE__HTTP__LISTEN=127.0.0.1:18080 \
         CITYGATE__MQTT__LISTEN=127.0.0.1:18883
  key=$(target/release/citygate --config "$1" keys create-device \
        --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
  target/release/citygate --config "$1" serve >"$work/citygate.log" 2>&1 &
  pid=$!
  until curl -sf 127.0.0.1:18080/healthz >/dev/null; do sleep 0.1; done
}

report() { # label, readings, cpu ticks, seconds
  awk -v l="$1" -v n="$2" -v c="$3" -v t="$4" -v k="$tick" 'BEGIN {
    printf "%-22s %9d readings in %5.1f s: %8.0f readings/s, citygate CPU %5.1f us/reading\n",
      l, n, t, n / t, c / k * 1e6 / n }'
}

own() {
  start_citygate config/loadtest.toml
  local c0 t0 t1
  c0=$(cpu $pid); t0=$(date +%s.%N)
  $load --port 18883 --key "$key" --connections "$conns" --duration "$secs" >/dev/null 2>&1
  t1=$(date +%s.%N)
  report "own endpoint" "$(metric "$accepted")" "$(( $(cpu $pid) - c0 ))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  kill -TERM $pid && wait $pid
}

through_broker() {
  printf 'listener 18884 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 10000000\n' \
    >"$work/mosquitto.conf"
  /usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local broker=$!
  sleep 0.5
  cat config/loadtest.toml - >"$work/upstream.toml" <<'TOML'

[[upstream]]
name = "bench"
url = "mqtt://127.0.0.1:18884"
topic = "citygate/{dataset}/{sensor_id}"
allow_datasets = ["traffic-counts"]
client_id = "citygate-bench"
max_in_flight = 1000
TOML
  start_citygate "$work/upstream.toml"
  until [ "$(metric 'citygate_upstream_connected{upstream="bench"}')" = 1 ]; do sleep 0.1; done
  sleep 0.5
  local c0 t0 t1 published
  c0=$(cpu $pid); t0=$(date +%s.%N)
  published=$($load --port 18884 --connections "$conns" --duration "$secs" 2>/dev/null \
              | sed -n 's/.*published \([0-9]*\).*/\1/p')
  until [ "$(metric 'citygate_upstream_acks_total{upstream="bench"}')" -ge "$published" ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  report "through mosquitto" "$(metric "$accepted")" "$(( $(cpu $pid) - c0 ))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  kill -TERM $pid && wait $pid
  kill $broker && wait $broker 2>/dev/null || true
}

for round in 1 2; do
  own
  through_broker
done
