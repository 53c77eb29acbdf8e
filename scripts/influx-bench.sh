#!/usr/bin/env bash
# InfluxDB sink benchmark: how fast readings reach VictoriaMetrics through citygate, against
# VictoriaMetrics fed the same readings directly as line protocol.
#   1. direct: examples/lp_load.rs posts 5000-point line-protocol batches to VictoriaMetrics'
#      /api/v2/write over 8 connections; rate = points VictoriaMetrics inserted per second.
#   2. backlog: wrk posts JSON batches to citygate (config/loadtest.toml, influx sink on,
#      fsync always) while the store is down; then VictoriaMetrics starts and the sink drains
#      the log into it; rate = points / time from the first point landing to the last.
#   3. live: the same with the store up throughout; rate = readings acknowledged / time from
#      the first request until VictoriaMetrics holds every one.
# Needs wrk and victoria-metrics (Debian). On a small machine the feeder and the store share
# the CPUs, so every microsecond the feeder spends is taken from the store; PIN=1 gives the
# store CPU 0 and everything else the other CPUs, as when the store has a machine of its own.
#
#   scripts/influx-bench.sh [seconds]
#   PIN=1 scripts/influx-bench.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait; cat "$work/vm.log" | tail -5; rm -rf "$work"' EXIT

cargo build --release --quiet --bin citygate --example lp_load
bin=target/release/citygate
vm=http://127.0.0.1:18428
now() { date +%s.%N; }
store_cpu=() feeder_cpu=()
if [ "${PIN:-0}" = 1 ]; then
  store_cpu=(taskset -c 0) feeder_cpu=(taskset -c "1-$(( $(nproc) - 1 ))")
fi
py() { python3 -c "print($1)"; }

start_vm() {
  "${store_cpu[@]}" victoria-metrics -httpListenAddr=127.0.0.1:18428 -storageDataPath="$work/vm" \
    -retentionPeriod=100y -loggerLevel=ERROR >>"$work/vm.log" 2>&1 &
  vm_pid=$!
  for _ in $(seq 100); do curl -sf $vm/health >/dev/null && return; sleep 0.05; done
}
stop_vm() { kill "$vm_pid"; wait "$vm_pid" || true; rm -rf "$work/vm"; }

# Sums a Prometheus counter (lines whose name matches $2) from the /metrics page at $1.
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 ~ m { s += $2 } END { printf "%d\n", s }'; }
# VictoriaMetrics counts a sample per field; every point here has five (vehicle_count,
# mean_speed, lat, lon, seq).
vm_points() { echo $(( $(metric $vm '^vm_rows_inserted_total\\{type="influx"\\}') / 5 )); }
# Waits until VictoriaMetrics holds $1 points (at most a minute).
await_points() { for _ in $(seq 1200); do [ "$(vm_points)" -ge "$1" ] && return; sleep 0.05; done; }

start_vm
before=$(vm_points)
"${feeder_cpu[@]}" target/release/examples/lp_load --url $vm --connections 8 --duration "$secs" | sed 's/^/  lp_load: /'
sleep 0.5
direct=$(( ($(vm_points) - before) / secs ))
echo "1. direct line protocol -> victoria-metrics: $direct points/s"
stop_vm

start_citygate() {
  rm -rf "$work/data"
  export CITYGATE__STORAGE__DATA_DIR="$work/data" CITYGATE__HTTP__LISTEN=127.0.0.1:18080 \
         CITYGATE__MQTT__LISTEN=127.0.0.1:18883 CITYGATE__INFLUX__ENABLED=true \
         CITYGATE__INFLUX__URL=$vm CITYGATE__INFLUX__TOKEN=bench CITYGATE__INFLUX__MAX_RETRY_DELAY=1s
  key=$($bin --config config/loadtest.toml keys create-device --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
  "${feeder_cpu[@]}" $bin --config config/loadtest.toml serve >>"$work/citygate.log" 2>&1 &
  cg_pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
}
intake() {
  KEY=$key BATCH=100 "${feeder_cpu[@]}" wrk -t1 -c8 -d"${secs}s" -s benches/load/post_readings.lua http://127.0.0.1:18080 >"$work/wrk.txt"
  accepted=$(metric http://127.0.0.1:18080 '^citygate_readings_accepted_total')
}

start_citygate
intake
start_vm
await_points 1
first=$(now)
await_points "$accepted"
end=$(now)
landed=$(vm_points)
backlog=$(py "int($landed / ($end - $first))")
echo "2. backlog of $accepted acknowledged readings, drained into victoria-metrics: $landed points in $(py "round($end - $first, 1)")s = $backlog points/s"
kill -TERM $cg_pid && wait $cg_pid
stop_vm

start_vm
start_citygate
start=$(now)
intake
await_points "$accepted"
end=$(now)
landed=$(vm_points)
live=$(py "int($landed / ($end - $start))")
echo "3. live: $accepted readings acknowledged in ${secs}s, all $landed in victoria-metrics after $(py "round($end - $start, 1)")s = $live points/s"
kill -TERM $cg_pid && wait $cg_pid

echo "ratio to direct: backlog $(py "round($backlog / $direct, 2)"), live $(py "round($live / $direct, 2)")"
