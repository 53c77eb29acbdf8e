#!/usr/bin/env bash
# The cost of cross-node fan-out (`[cluster]`): the rumqttc load generator
# (examples/mqtt_load.rs: QoS 1, one reading per publish, the worst case: one log record per
# reading) publishes to node A's own MQTT endpoint, and
#   1. node A runs alone (no [cluster]);
#   2. node A publishes every record to Debian's mosquitto and node B follows it into its
#      feed hub and hot store.
# For each: readings per second into node A's log, node A's CPU time per reading; for 2 also
# node B's and mosquitto's CPU per reading, measured until node B has taken every reading.
# Run interleaved, twice. Needs mosquitto (Debian).
#
#   scripts/cluster-bench.sh [seconds] [connections]
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
metric() { # port, name
  curl -s "127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { print int($2) }'
}
accepted='citygate_readings_accepted_total{dataset="traffic-counts"}'
received='citygate_cluster_readings_received_total'
secret=benchmark-cluster-secret

start_node() { # name, http port, mqtt port, [cluster on: 1]
  rm -rf "$work/$1"
  local env=(CITYGATE__STORAGE__DATA_DIR="$work/$1" CITYGATE__HTTP__LISTEN="127.0.0.1:$2"
             CITYGATE__MQTT__LISTEN="127.0.0.1:$3")
  if [ "${4:-0}" = 1 ]; then
    env+=(CITYGATE__CLUSTER__BROKER=mqtt://127.0.0.1:18884 CITYGATE__CLUSTER__NODE_ID="$1"
          CITYGATE__CLUSTER__SECRET=$secret CITYGATE__CLUSTER__MAX_IN_FLIGHT=1000)
  fi
  key=$(env "${env[@]}" target/release/citygate --config config/loadtest.toml keys create-device \
        --provider copenhagen --datasets traffic-counts --create-database 2>"$work/$1.keys.log") \
    || { cat "$work/$1.keys.log" >&2; exit 1; }
  env "${env[@]}" target/release/citygate --config config/loadtest.toml serve >"$work/$1.log" 2>&1 &
  pid=$!
  until_true "node $1" up "$2"
}

until_true() { # what, command...: waits up to 120 s for the command to succeed
  local what=$1; shift
  for _ in $(seq 1200); do "$@" && return 0; sleep 0.1; done
  echo "cluster-bench.sh: gave up waiting for $what" >&2
  exit 1
}
up() { curl -sf "127.0.0.1:$1/healthz" >/dev/null; }
following() { [ "$(metric 18090 'citygate_cluster_connected{direction="in"}')" = 1 ]; }
received_all() { [ "$(metric 18090 "$received")" -ge "$1" ]; }
broker_up() { (exec 3<>/dev/tcp/127.0.0.1/18884) 2>/dev/null; }

per_reading() { # cpu ticks, readings
  awk -v c="$1" -v n="$2" -v k="$tick" 'BEGIN { printf "%.1f", c / k * 1e6 / n }'
}

alone() {
  start_node a 18080 18883
  local a=$pid c0 t0 t1 n
  c0=$(cpu $a); t0=$(date +%s.%N)
  $load --port 18883 --key "$key" --connections "$conns" --duration "$secs" >/dev/null 2>&1
  t1=$(date +%s.%N)
  n=$(metric 18080 "$accepted")
  printf '%-26s %9d readings, %8.0f readings/s; node A %s us/reading\n' "one node" "$n" \
    "$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }')" \
    "$(per_reading $(( $(cpu $a) - c0 )) "$n")"
  kill -TERM $a && wait $a
}

shared() {
  printf 'listener 18884 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 10000000\n' \
    >"$work/mosquitto.conf"
  /usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local broker=$!
  until_true mosquitto broker_up
  start_node b 18090 18893 1
  local b=$pid
  start_node a 18080 18883 1
  local a=$pid
  until_true "node B following" following
  local ca cb cm t0 t1 n
  ca=$(cpu $a); cb=$(cpu $b); cm=$(cpu $broker); t0=$(date +%s.%N)
  $load --port 18883 --key "$key" --connections "$conns" --duration "$secs" >/dev/null 2>&1
  t1=$(date +%s.%N)
  n=$(metric 18080 "$accepted")
  until_true "node B to take every reading" received_all "$n"
  printf '%-26s %9d readings, %8.0f readings/s; node A %s, node B %s, mosquitto %s us/reading\n' \
    "two nodes through mosquitto" "$n" \
    "$(awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }')" \
    "$(per_reading $(( $(cpu $a) - ca )) "$n")" "$(per_reading $(( $(cpu $b) - cb )) "$n")" \
    "$(per_reading $(( $(cpu $broker) - cm )) "$n")"
  kill -TERM $a $b && wait $a $b
  kill $broker && wait $broker 2>/dev/null || true
}

for round in 1 2; do
  alone
  shared
done
