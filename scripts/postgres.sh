#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster (Debian's postgresql package) on 127.0.0.1:PORT with
# its data in DIR, trusting local connections of user `citygate`; prints the admin URL.
# Stop it with: pg_ctl -D DIR stop  (scripts/test.sh does).
#
#   scripts/postgres.sh DIR PORT
set -euo pipefail
dir=$1
port=$2
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bindir" ] || { echo "postgres.sh: no PostgreSQL server installed (apt-get install postgresql)" >&2; exit 1; }
run=()
if [ "$(id -u)" -eq 0 ]; then
  # The server refuses to run as root: run it as Debian's postgres user.
  run=(runuser -u postgres --)
  chown postgres: "$dir"
fi
"${run[@]}" "$bindir/initdb" -D "$dir" -U citygate -A trust --no-sync >/dev/null
"${run[@]}" "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
  -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c max_connections=300" \
  start >/dev/null
echo "postgres://citygate@127.0.0.1:$port/postgres"
