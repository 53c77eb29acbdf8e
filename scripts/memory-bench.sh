#!/usr/bin/env bash
# Memory under load.
#
#   scripts/memory-bench.sh peak [seconds] [rounds]
#     Peak resident memory (VmHWM) at full HTTP intake: citygate (config/loadtest.toml,
#     fsync always, Parquet) taking wrk's JSON batches of traffic readings
#     (benches/load/post_readings.lua, 100 per request, 32 connections), against Debian's
#     VictoriaMetrics taking the same readings as line protocol (examples/lp_load.rs, 5000
#     per request, 8 connections) at full rate; ROUNDS times, interleaved.
#
#   scripts/memory-bench.sh soak [seconds] [rate]
#     citygate's resident memory (VmRSS) every 10 s while 16 MQTT devices publish RATE
#     readings/s in total (examples/mqtt_load.rs, QoS 1, one reading per publish): a curve
#     that must stay flat.
#
# Needs wrk and victoria-metrics (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-peak}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. scripts/bench-lib.sh
bench_build lp_load mqtt_load
metric() { curl -s "$1/metrics" | awk -v m="$2" '$1 ~ m { s += $2 } END { printf "%d\n", s }'; }

peak_citygate() {
  local secs=$1 accepted
  start_citygate
  echo -n "citygate         idle $(mem_of $pid VmRSS) MB; "
  KEY=$key BATCH=100 wrk -t1 -c32 -d"${secs}s" -s benches/load/post_readings.lua \
    http://127.0.0.1:18080 >"$work/wrk.out" 2>&1
  accepted=$(metric http://127.0.0.1:18080 '^citygate_readings_accepted_total')
  echo "$((accepted / secs)) readings/s, peak RSS $(mem_of $pid VmHWM) MB"
  kill -TERM $pid && wait $pid
}

peak_victoria() {
  local secs=$1 points
  rm -rf "$work/vm"
  victoria-metrics -httpListenAddr=127.0.0.1:18428 -storageDataPath="$work/vm" \
    -retentionPeriod=100y -loggerLevel=ERROR >"$work/vm.log" 2>&1 &
  local vm=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18428/health >/dev/null && break; sleep 0.05; done
  echo -n "victoria-metrics idle $(mem_of $vm VmRSS) MB; "
  target/release/examples/lp_load --url http://127.0.0.1:18428 --connections 8 \
    --duration "$secs" >/dev/null
  # Five samples (fields) per reading.
  points=$(( $(metric http://127.0.0.1:18428 '^vm_rows_inserted_total\\{type="influx"\\}') / 5 ))
  echo "$((points / secs)) readings/s, peak RSS $(mem_of $vm VmHWM) MB"
  kill $vm && wait $vm 2>/dev/null || true
}

case $mode in
  peak)
    secs=${2:-20}
    rounds=${3:-1}
    for round in $(seq "$rounds"); do
      echo "# round $round"
      peak_citygate "$secs"
      peak_victoria "$secs"
    done
    ;;
  soak)
    secs=${2:-600}
    rate=${3:-10000}
    start_citygate
    target/release/examples/mqtt_load --port 18883 --key "$key" --connections 16 \
      --rate "$rate" --duration "$secs" >"$work/load.out" 2>/dev/null &
    load=$!
    echo "seconds  rss_mb  readings_accepted"
    start=$(date +%s)
    while kill -0 $load 2>/dev/null; do
      echo "$(( $(date +%s) - start ))  $(mem_of $pid VmRSS)  $(metric http://127.0.0.1:18080 '^citygate_readings_accepted_total')"
      sleep 10
    done
    cat "$work/load.out"
    echo "peak RSS $(mem_of $pid VmHWM) MB"
    kill -TERM $pid && wait $pid
    ;;
  *)
    echo "usage: $0 peak [seconds] [rounds] | soak [seconds] [rate]" >&2
    exit 2
    ;;
esac
