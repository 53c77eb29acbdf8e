# Shared by the benchmark scripts (sourced, not run): the build, core pinning, a process's
# CPU time and memory, and a citygate on config/loadtest.toml. Expects `work` (a temp dir).

# Builds the release binary (unless CITYGATE_BIN names another build) and the examples
# named; sets `bin`.
bench_build() {
  local examples=()
  for e in "$@"; do examples+=(--example "$e"); done
  if [ -z "${CITYGATE_BIN:-}" ]; then
    cargo build --release --quiet --bin citygate "${examples[@]}"
  else
    cargo build --release --quiet "${examples[@]}"
  fi
  bin=${CITYGATE_BIN:-target/release/citygate}
}

# The server on CPU 1, the load generator on CPU 0, where there are two and taskset is
# there (PIN=0 turns it off): prefixes `server_cpu` and `load_cpu`.
server_cpu=() load_cpu=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  server_cpu=(taskset -c 1) load_cpu=(taskset -c 0)
fi
tick=$(getconf CLK_TCK)

# CPU seconds (user + system) process $1 has used so far.
cpu_of() { awk -v t="$tick" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }

# Field $2 (VmRSS, VmHWM) of process $1's status, in MB.
mem_of() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Starts citygate on config/loadtest.toml with a fresh data dir, HTTP on 18080 and MQTT on
# 18883, prefixed by $@ (e.g. a taskset), and waits until it is ready; sets `pid` and
# `key` (a device key for traffic-counts).
start_citygate() {
  rm -rf "$work/data"
  export CITYGATE__STORAGE__DATA_DIR="$work/data" CITYGATE__HTTP__LISTEN=127.0.0.1:18080 \
         CITYGATE__MQTT__LISTEN=127.0.0.1:18883
  key=$($bin --config config/loadtest.toml keys create-device \
        --provider copenhagen --datasets traffic-counts --create-database 2>/dev/null)
  "$@" $bin --config config/loadtest.toml serve >"$work/citygate.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -fs http://127.0.0.1:18080/readyz >/dev/null 2>&1 && return
    sleep 0.1
  done
}
