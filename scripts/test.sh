#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the peers the tests talk to, then runs
# the format check, clippy and every test (unit, integration, doc, and the benches built in
# test mode).
#
# Peers, none written here: pyarrow and DuckDB (they read our Parquet files), the official
# InfluxDB Python client (writes to our /api/v2/write) and paho-mqtt (an MQTT 5 device), from
# PyPI into a virtualenv under target/; mosquitto_pub and VictoriaMetrics from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/peers-venv
if ! "$venv/bin/python" -c 'import pyarrow, duckdb, influxdb_client, paho.mqtt' 2>/dev/null; then
  echo "==> installing Python test peers into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    pyarrow duckdb influxdb-client paho-mqtt
fi
export CITYGATE_TEST_PYTHON="$PWD/$venv/bin/python"

# Debian packages: mosquitto_pub, and VictoriaMetrics as the InfluxDB-API store (the tests
# start their own instances on free ports).
need=()
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

# One test opens a thousand MQTT connections (two sockets each, in one process).
ulimit -n 65536 2>/dev/null || ulimit -n 4096 2>/dev/null || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --all-targets --locked
cargo test --doc --locked
