#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the peers the tests talk to, then runs
# the format check, clippy and every test (unit, integration, doc, and the benches built in
# test mode).
#
# Peers: pyarrow and DuckDB (they read our Parquet files) and the official InfluxDB Python
# client (it writes to our /api/v2/write), from PyPI into a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/peers-venv
if ! "$venv/bin/python" -c 'import pyarrow, duckdb, influxdb_client' 2>/dev/null; then
  echo "==> installing test peers (pyarrow, duckdb, influxdb-client) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyarrow duckdb influxdb-client
fi
export CITYGATE_TEST_PYTHON="$PWD/$venv/bin/python"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --all-targets --locked
cargo test --doc --locked
