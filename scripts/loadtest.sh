#!/usr/bin/env bash
# End-to-end load test: a release citygate on config/loadtest.toml, wrk posting batches of
# JSON readings, and the server's own counters as the judge (what was acknowledged, what
# reached Parquet). Needs wrk (Debian: apt-get install wrk).
#
#   scripts/loadtest.sh [seconds] [connections] [batch]
#   FSYNC=never scripts/loadtest.sh ...     # the WAL's fsync mode (default: always)
#   CITYGATE_BIN=/path/to/citygate scripts/loadtest.sh ...   # another build (none is made)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
conns=${2:-32}
batch=${3:-100}
data=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT

if [ -z "${CITYGATE_BIN:-}" ]; then cargo build --release --quiet; fi
bin=${CITYGATE_BIN:-target/release/citygate}
export CITYGATE__STORAGE__DATA_DIR="$data"
export CITYGATE__HTTP__LISTEN=127.0.0.1:18080
export CITYGATE__MQTT__LISTEN=127.0.0.1:18883
export CITYGATE__WAL__FSYNC=${FSYNC:-always}
key=$($bin --config config/loadtest.toml keys create-device --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
$bin --config config/loadtest.toml serve &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done

metric() { curl -s http://127.0.0.1:18080/metrics | awk -v m="$1" '$1 ~ m { s += $2 } END { print s + 0 }'; }
before=$(metric '^citygate_readings_accepted_total')
KEY=$key BATCH=$batch wrk -t1 -c"$conns" -d"${secs}s" --latency -s benches/load/post_readings.lua http://127.0.0.1:18080
sleep 1 # requests wrk left in flight are answered
after=$(metric '^citygate_readings_accepted_total')

kill -TERM "$pid"
wait "$pid"
files=$(find "$data/parquet" -name '*.parquet' | wc -l)
accepted=$((after - before))
echo "wal fsync=$CITYGATE__WAL__FSYNC: accepted readings: $accepted in ${secs}s = $((accepted / secs)) readings/s (server counter)"
echo "parquet files after shutdown: $files"
py=target/peers-venv/bin/python
if [ -x "$py" ]; then
  $py -c "import pyarrow.dataset as d, sys; print('parquet rows (pyarrow):', d.dataset(sys.argv[1], partitioning='hive').count_rows())" "$data/parquet"
fi
