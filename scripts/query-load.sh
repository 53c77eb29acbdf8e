#!/usr/bin/env bash
# Do heavy history queries slow intake or live feeds? A release citygate takes a day of
# traffic-counts (as scripts/query-bench.sh), then, in interleaved rounds, quiet and with
# QUERY_CLIENTS clients asking day-long queries without pause (benches/query/hammer.py):
#   - HTTP intake at full rate: wrk posting batches of 100 readings (readings/s, server counter)
#   - a live feed: examples/feed_bench, one MQTT device paced at RATE readings/s to
#     SUBSCRIBERS SSE clients (p50/p99 publish -> receive), then unpaced (deliveries/s).
#
#   scripts/query-load.sh [seconds] [rounds]     # SECONDS=10 ROUNDS=2 per phase
#   QUERY_CLIENTS=4 RATE=2000 SUBSCRIBERS=10 scripts/query-load.sh
# Needs wrk (Debian: apt-get install wrk) and the peers' Python (scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-2}
clients=${QUERY_CLIENTS:-4}
rate=${RATE:-2000}
subs=${SUBSCRIBERS:-10}
data=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT

cargo build --release --quiet --bin citygate --example feed_bench
bin=target/release/citygate
py=${CITYGATE_TEST_PYTHON:-target/peers-venv/bin/python}
admin=cg_$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)
export CITYGATE_ADMIN_KEY=$admin
export CITYGATE__STORAGE__DATA_DIR="$data"
export CITYGATE__HTTP__LISTEN=127.0.0.1:18090
export CITYGATE__MQTT__LISTEN=127.0.0.1:18893
config="$data/query-load.toml"
cat config/loadtest.toml - >"$config" <<'TOML'

[query]
max_rows = 200000
rate_limit = { per_second = 100000, burst = 100000 }
TOML
device=$($bin --config "$config" keys create-device --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
key=$($bin --config "$config" keys create-provider --provider copenhagen 2>/dev/null)
$bin --config "$config" serve >"$data/gateway.log" 2>&1 &
for _ in $(seq 100); do curl -sf http://127.0.0.1:18090/readyz >/dev/null && break; sleep 0.1; done
# A day of readings (and the query figures against DuckDB, once).
ROUNDS=1 LATEST_N=10 "$py" benches/query/bench.py http://127.0.0.1:18090 "$device" "$key" "$data/parquet" \
  | grep -E '^(loaded|hot store)'

metric() { curl -s http://127.0.0.1:18090/metrics | awk -v m="$1" '$1 ~ m { s += $2 } END { print s + 0 }'; }
phase() {
  local label=$1 hammer=""
  if [ "$label" = queries ]; then
    # The query clients run at the lowest priority too: on this one machine they stand for
    # planners elsewhere, and must not take the CPU the load generators need.
    nice -n 19 "$py" benches/query/hammer.py http://127.0.0.1:18090 "$key" "$((2 * secs + 5))" "$clients" \
      >"$data/hammer.out" &
    hammer=$!
    sleep 1
  fi
  local before after
  before=$(metric '^citygate_readings_accepted_total')
  KEY=$device BATCH=100 wrk -t1 -c32 -d"${secs}s" -s benches/load/post_readings.lua \
    http://127.0.0.1:18090 >/dev/null
  after=$(metric '^citygate_readings_accepted_total')
  echo "[$label] HTTP intake: $(((after - before) / secs)) readings/s"
  target/release/examples/feed_bench --http http://127.0.0.1:18090 --mqtt-port 18893 \
    --admin-key "$admin" --protocol sse --subscribers "$subs" --rate "$rate" \
    --duration "$((secs / 2))" 2>&1 | sed "s/^/[$label] feed: /"
  if [ -n "$hammer" ]; then
    wait "$hammer"
    sed "s/^/[$label] /" "$data/hammer.out"
  fi
}
for _ in $(seq "$rounds"); do
  phase quiet
  phase queries
done
