#!/usr/bin/env bash
# History queries against DuckDB on the same Parquet files, in one script, interleaved:
# a release citygate takes a day of traffic-counts (1 000 sensors every 10 s, 8.64 M
# readings; the last 6 h stay in its hot store), then benches/query/bench.py times the
# same four queries on citygate over HTTP and on DuckDB over the files.
#
#   scripts/query-bench.sh                       # SENSORS=1000 ROUNDS=5 LATEST_N=200
#   CITYGATE_BIN=/path/to/citygate scripts/query-bench.sh   # another build (none is made)
# Needs the peers' Python (pyarrow, duckdb): scripts/test.sh makes target/peers-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT

if [ -z "${CITYGATE_BIN:-}" ]; then cargo build --release --quiet; fi
bin=${CITYGATE_BIN:-target/release/citygate}
py=${CITYGATE_TEST_PYTHON:-target/peers-venv/bin/python}
export CITYGATE__STORAGE__DATA_DIR="$data"
export CITYGATE__HTTP__LISTEN=127.0.0.1:18090
export CITYGATE__MQTT__LISTEN=127.0.0.1:18893
# The load-test config, with answers big enough for a day's 15-minute buckets of 1 000
# sensors (96 000 rows) and no per-key query limit in the way of the latency loop.
config="$data/query-bench.toml"
cat config/loadtest.toml - >"$config" <<'TOML'

[query]
max_rows = 200000
rate_limit = { per_second = 100000, burst = 100000 }
TOML
device=$($bin --config "$config" keys create-device --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
key=$($bin --config "$config" keys create-provider --provider copenhagen 2>/dev/null)
$bin --config "$config" serve >"$data/gateway.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18090/readyz >/dev/null && break; sleep 0.1; done
"$py" benches/query/bench.py http://127.0.0.1:18090 "$device" "$key" "$data/parquet"
ps -o rss= -p "$pid" | awk '{ printf "citygate RSS at the end: %.0f MiB\n", $1 / 1024 }'
