#!/usr/bin/env bash
# A whole citygate cluster on one machine: mosquitto (the broker the nodes share), PostgreSQL
# (one marketplace), moto's S3 server (the lake) and three citygate nodes, each with its own
# data directory, all under target/cluster/.
#
#   scripts/cluster.sh up      # builds the release binary, starts a fresh cluster, prints where
#   scripts/cluster.sh down    # stops everything; the data goes with it (moto keeps the lake
#                              # in memory only, so nothing could start again on it)
#
# Needs Debian's mosquitto and postgresql (scripts/test.sh installs them) and moto's server
# from PyPI (in target/peers-venv, as scripts/test.sh makes it). CITYGATE_BIN names a built
# binary to use instead of building one; CLUSTER_DIR and CLUSTER_PORT_BASE (default 18000)
# move it elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLUSTER_DIR:-target/cluster}
base=${CLUSTER_PORT_BASE:-18000}
broker_port=$((base + 83))
pg_port=$((base + 32))
s3_port=$((base + 50))
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
secrets="$dir/secrets.env"

stop_pidfile() { # pid file, a word the process's command line holds
  local f=$1 word=$2
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if grep -qa -- "$word" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_port() { # port, name, pid, log
  local port=$1 what=$2 pid=$3 log=$4
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster.sh: $what did not come up on port $port; the end of $log:" >&2
  tail -5 "$log" >&2 || true
  exit 1
}

port_free() { # port
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "cluster.sh: port $1 is taken; set CLUSTER_PORT_BASE elsewhere" >&2
    exit 1
  fi
}

down() {
  for n in 1 2 3; do stop_pidfile "$dir/node-$n.pid" citygate; done
  stop_pidfile "$dir/moto.pid" moto
  stop_pidfile "$dir/mosquitto.pid" mosquitto
  if [ -f "$dir/postgres/PG_VERSION" ]; then
    run=()
    [ "$(id -u)" -ne 0 ] || run=(runuser -u postgres --)
    "${run[@]}" "/usr/lib/postgresql/$(cat "$dir/postgres/PG_VERSION")/bin/pg_ctl" \
      -D "$dir/postgres" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

up() {
  down
  mkdir -p "$dir"
  trap 'echo "cluster.sh: stopping what started" >&2; down' ERR
  for port in "$broker_port" "$pg_port" "$s3_port" $((base + 180)) $((base + 280)) \
              $((base + 380)) $((base + 1884)) $((base + 1885)) $((base + 1886)); do
    port_free "$port"
  done
  local bin=${CITYGATE_BIN:-}
  if [ -z "$bin" ]; then
    echo "==> cargo build --release"
    cargo build --release --quiet
    bin=target/release/citygate
  fi
  python=target/peers-venv/bin/python
  "$python" -c 'import moto.server' 2>/dev/null || {
    echo "cluster.sh: moto's server is not installed (run scripts/test.sh once, or" \
         "$python -m pip install 'moto[server]==5.2.5')" >&2
    exit 1
  }
  # The admin key and the nodes' shared secret, readable by this user only.
  (umask 077 && "$python" - > "$secrets" <<'PY'
import secrets, string
alnum = string.ascii_letters + string.digits
print("ADMIN_KEY=cg_" + "".join(secrets.choice(alnum) for _ in range(43)))
print("CLUSTER_SECRET=" + secrets.token_hex(24))
PY
  )
  # shellcheck disable=SC1090
  . "$secrets"

  echo "==> mosquitto on $broker_port"
  mkdir -p "$dir/mosquitto"
  chmod 777 "$dir/mosquitto"
  cat > "$dir/mosquitto/mosquitto.conf" <<EOF
listener $broker_port 127.0.0.1
allow_anonymous true
max_queued_messages 100000
persistence true
persistence_location $dir/mosquitto/
EOF
  (cd "$dir/mosquitto" && exec /usr/sbin/mosquitto -c mosquitto.conf >mosquitto.log 2>&1) &
  echo $! > "$dir/mosquitto.pid"
  wait_port "$broker_port" mosquitto "$(cat "$dir/mosquitto.pid")" "$dir/mosquitto/mosquitto.log"

  echo "==> PostgreSQL on $pg_port"
  mkdir -p "$dir/postgres"
  admin_url=$(scripts/postgres.sh "$dir/postgres" "$pg_port")
  db_url=$admin_url

  echo "==> moto's S3 server on $s3_port"
  "$python" -m moto.server -H 127.0.0.1 -p "$s3_port" >"$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  wait_port "$s3_port" "moto" "$(cat "$dir/moto.pid")" "$dir/moto.log"
  "$python" - "$s3_port" <<'PY'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/citygate-lake", method="PUT")
urllib.request.urlopen(req).read()
PY

  export CITYGATE_ADMIN_KEY=$ADMIN_KEY
  for n in 1 2 3; do
    http=$((base + 80 + n * 100))
    mqtt=$((base + 1883 + n))
    echo "==> node-$n: HTTP $http, MQTT $mqtt"
    mkdir -p "$dir/node-$n"
    env CITYGATE__STORAGE__DATA_DIR="$dir/node-$n" \
      CITYGATE__DATABASE__URL="$db_url" \
      CITYGATE__HTTP__LISTEN="127.0.0.1:$http" \
      CITYGATE__MQTT__LISTEN="127.0.0.1:$mqtt" \
      CITYGATE__CLUSTER__BROKER="mqtt://127.0.0.1:$broker_port" \
      CITYGATE__CLUSTER__NODE_ID="node-$n" \
      CITYGATE__CLUSTER__SECRET="$CLUSTER_SECRET" \
      CITYGATE__LAKE__URL="s3://citygate-lake/city" \
      CITYGATE__LAKE__ENDPOINT="http://127.0.0.1:$s3_port" \
      CITYGATE__LAKE__ALLOW_HTTP=true \
      CITYGATE__LAKE__ACCESS_KEY_ID=cluster \
      CITYGATE__LAKE__SECRET_ACCESS_KEY=cluster \
      CITYGATE__LOG__FORMAT=json \
      "$bin" serve >"$dir/node-$n.log" 2>&1 &
    echo $! > "$dir/node-$n.pid"
    wait_port "$http" "node-$n" "$(cat "$dir/node-$n.pid")" "$dir/node-$n.log"
  done
  cat <<EOF

The cluster is up (data in $dir):
  node-1  http://127.0.0.1:$((base + 180))   mqtt://127.0.0.1:$((base + 1884))
  node-2  http://127.0.0.1:$((base + 280))   mqtt://127.0.0.1:$((base + 1885))
  node-3  http://127.0.0.1:$((base + 380))   mqtt://127.0.0.1:$((base + 1886))
  broker  mqtt://127.0.0.1:$broker_port   (the nodes share readings on citygate/readings/+)
  marketplace  $db_url
  lake    s3://citygate-lake/city at http://127.0.0.1:$s3_port (moto; key id and secret: cluster)
  admin key    $ADMIN_KEY   (in $secrets)
Logs: $dir/node-N.log. Stop with: scripts/cluster.sh down (the data goes with it)
EOF
  trap - ERR
}

case "${1:-}" in
  up) up ;;
  down) down; echo "the cluster is down" ;;
  *) echo "usage: scripts/cluster.sh up|down" >&2; exit 2 ;;
esac
