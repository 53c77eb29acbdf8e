#!/usr/bin/env bash
# Live-feed benchmark (examples/feed_bench.rs): one MQTT device publishes traffic readings
# (QoS 1, each acknowledged after the write-ahead log's fsync); SUBSCRIBERS clients follow
# the dataset over SSE, WebSocket and MQTT in turn, each on a fresh gateway
# (config/loadtest.toml). Per protocol: paced at RATE readings/s for the latency figures
# (device publish -> subscriber receive, p50/p99/p99.9, loss), then unpaced for the most
# deliveries per second.
#
#   scripts/feed-bench.sh [seconds] [subscribers] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
subs=${2:-100}
rate=${3:-10000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --bin citygate --example feed_bench
admin=cg_$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)

run() {
  local protocol=$1 rate=$2
  rm -rf "$work/data"
  CITYGATE_ADMIN_KEY=$admin CITYGATE__STORAGE__DATA_DIR="$work/data" \
    CITYGATE__HTTP__LISTEN=127.0.0.1:18080 CITYGATE__MQTT__LISTEN=127.0.0.1:18883 \
    target/release/citygate --config config/loadtest.toml serve >"$work/citygate.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  target/release/examples/feed_bench --http http://127.0.0.1:18080 --mqtt-port 18883 \
    --admin-key "$admin" --protocol "$protocol" --subscribers "$subs" --rate "$rate" \
    --duration "$secs"
  kill -TERM $pid && wait $pid
}

for protocol in sse ws mqtt; do
  run "$protocol" "$rate"
done
for protocol in sse ws mqtt; do
  run "$protocol" 0
done
