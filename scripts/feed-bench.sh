#!/usr/bin/env bash
# Live-feed benchmark (examples/feed_bench.rs): one MQTT device publishes traffic readings
# (QoS 1, each acknowledged after the write-ahead log's fsync); SUBSCRIBERS clients follow
# the dataset over SSE, WebSocket and MQTT in turn, each on a fresh gateway
# (config/loadtest.toml), and then the peer: Debian's mosquitto relaying the same device's
# readings to as many MQTT subscribers (the same client, QoS 0). Per protocol: paced at RATE
# readings/s for the latency figures (device publish -> subscriber receive, p50/p99/p99.9,
# loss), then unpaced for the most deliveries per second; ROUNDS times, interleaved.
# The server runs on CPU 1 and the generator on CPU 0 (`taskset`; PIN=0 turns it off);
# each run reports the server's CPU time per delivery (user + system, /proc/PID/stat) and
# the generator's own CPU time.
#
#   scripts/feed-bench.sh [seconds] [subscribers] [rate] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
subs=${2:-100}
rate=${3:-10000}
rounds=${4:-1}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

. scripts/bench-lib.sh
bench_build feed_bench
admin=cg_$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)

# Runs the generator against the server with pid $1; prints its line with the server's CPU
# per delivery.
measure() {
  local pid=$1; shift
  local before after out n
  before=$(cpu_of "$pid")
  out=$("${load_cpu[@]}" target/release/examples/feed_bench --subscribers "$subs" \
        --duration "$secs" "$@")
  after=$(cpu_of "$pid")
  n=$(sed -E 's/.*delivered ([0-9]+) of.*/\1/' <<<"$out")
  awk -v a="$after" -v b="$before" -v n="$n" -v out="$out" \
    'BEGIN { printf "%s; server cpu %.2f s, %.2f us/delivery\n", out, a - b, (n > 0 ? (a - b) * 1e6 / n : 0) }'
}

run_citygate() {
  local protocol=$1 rate=$2
  rm -rf "$work/data"
  CITYGATE_ADMIN_KEY=$admin CITYGATE__STORAGE__DATA_DIR="$work/data" \
    CITYGATE__HTTP__LISTEN=127.0.0.1:18080 CITYGATE__MQTT__LISTEN=127.0.0.1:18883 \
    "${server_cpu[@]}" $bin --config config/loadtest.toml serve >"$work/citygate.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  measure $pid --http http://127.0.0.1:18080 --mqtt-port 18883 --admin-key "$admin" \
    --protocol "$protocol" --rate "$rate"
  kill -TERM $pid && wait $pid
}

run_mosquitto() {
  local rate=$1
  printf 'listener 18884 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 1000000\n' >"$work/mosquitto.conf"
  "${server_cpu[@]}" mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  local pid=$!
  sleep 1
  measure $pid --mqtt-port 18884 --protocol broker --rate "$rate"
  kill $pid && wait $pid 2>/dev/null || true
}

mosquitto -h 2>/dev/null | head -1 || true
echo "pinned: ${server_cpu[*]:-no} (server) / ${load_cpu[*]:-no} (generator)"
for round in $(seq "$rounds"); do
  echo "# round $round"
  for r in "$rate" 0; do
    for protocol in sse ws mqtt; do
      run_citygate "$protocol" "$r"
    done
    echo -n "mosquitto "
    run_mosquitto "$r"
  done
done
