#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the peers the tests talk to, then runs
# the format check, clippy and every test (unit, integration, doc, and the benches built in
# test mode), then every fuzz target for FUZZ_SECONDS (60) each.
#
# Peers, none written here: pyarrow, pandas and DuckDB (they read our Parquet files and Arrow
# answers), the official
# InfluxDB Python client (writes to our /api/v2/write), paho-mqtt (an MQTT 5 device), rdflib
# (reads our DCAT-AP catalog), localstripe (a Stripe API server), sseclient-py (a
# browser-style EventSource client) and schemathesis (tests the API against its OpenAPI
# document), from PyPI into a
# virtualenv under target/; mosquitto, VictoriaMetrics and PostgreSQL from
# Debian, and for the web console headless Chromium with chromedriver and Firefox ESR (Debian)
# driven by Selenium (PyPI), Firefox through geckodriver (built from crates.io), the pages
# checked by axe-core (npm, fetched by the test). The unit and integration tests run twice: on SQLite (the default database) and on
# a throwaway PostgreSQL cluster, each test in a database of its own.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/peers-venv
if ! "$venv/bin/python" -c 'import pyarrow, pandas, duckdb, influxdb_client, paho.mqtt, rdflib, localstripe, sseclient, requests, schemathesis, selenium, moto.server' 2>/dev/null; then
  echo "==> installing Python test peers into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    pyarrow pandas duckdb influxdb-client paho-mqtt rdflib localstripe==1.15.10 sseclient-py requests \
    schemathesis==4.32.5 selenium 'moto[server]==5.2.5'
fi
export CITYGATE_TEST_PYTHON="$PWD/$venv/bin/python"

# Debian packages: mosquitto (the broker upstream intake subscribes to) and its clients, and
# VictoriaMetrics as the InfluxDB-API store (the tests start their own instances on free
# ports).
need=()
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
command -v firefox-esr >/dev/null || need+=(firefox-esr)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

# geckodriver, Firefox's WebDriver server, is not packaged by Debian: built from crates.io.
tools=target/peers-tools
[ -x "$tools/bin/geckodriver" ] || {
  echo "==> building geckodriver"
  cargo install geckodriver --locked --version 0.37.1 --root "$tools" --quiet
}
export GECKODRIVER="$PWD/$tools/bin/geckodriver"

# Tests open thousands of sockets (the client's and the gateway's ends, in one process).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test (SQLite)"
cargo test --all-targets --locked
cargo test --doc --locked

echo "==> cargo test (PostgreSQL)"
pg_dir=$(mktemp -d /tmp/citygate-pg.XXXXXX)
pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop_pg() {
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$bindir/pg_ctl" -D "$pg_dir" -m immediate stop >/dev/null 2>&1 || true
  else
    "$bindir/pg_ctl" -D "$pg_dir" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$pg_dir"
}
trap stop_pg EXIT
CITYGATE_TEST_POSTGRES=$(scripts/postgres.sh "$pg_dir" "$pg_port")
export CITYGATE_TEST_POSTGRES
cargo test --lib --test it --locked

# Fuzzing (fuzz/): every target for FUZZ_SECONDS, starting from the seed corpora and what
# earlier runs on this machine found. A crash fails the suite and leaves its input under
# fuzz/artifacts/. cargo-fuzz needs the nightly toolchain, which these machines have.
echo "==> fuzzing (${FUZZ_SECONDS:-60} s per target)"
rustup run nightly true 2>/dev/null || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
fuzz_flags=(-s none -O --debug-assertions)
cargo +nightly fuzz build "${fuzz_flags[@]}"
for target in $(cargo +nightly fuzz list); do
  mkdir -p "target/fuzz-corpus/$target"
  log="target/fuzz-$target.log"
  if ! cargo +nightly fuzz run "${fuzz_flags[@]}" "$target" "target/fuzz-corpus/$target" \
    "fuzz/corpus/$target" -- -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $target failed (its input is under fuzz/artifacts/$target/)"
    exit 1
  fi
  echo "$target: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs, no crash"
done
