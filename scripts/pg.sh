#!/usr/bin/env bash
# PostgreSQL for the tests and the local cluster: starts Debian's PostgreSQL 15 (installed
# on these machines; installed from Debian's packages where it is not), makes sure a
# `footfall` role with a password exists (it creates one database per test), and prints
# the URL to reach it.
#
#   scripts/pg.sh start   # prints postgres://footfall:footfall@127.0.0.1:5432/postgres
#   scripts/pg.sh stop
set -euo pipefail
cmd=${1:-start}
port=${FOOTFALL_PG_PORT:-5432}
url="postgres://footfall:footfall@127.0.0.1:$port/postgres"

if ! command -v pg_ctlcluster >/dev/null || [ ! -d /etc/postgresql/15/main ]; then
  echo "pg.sh: installing PostgreSQL 15 from Debian" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2
fi

case "$cmd" in
  start)
    if ! pg_ctlcluster 15 main status >/dev/null 2>&1; then
      pg_ctlcluster 15 main start >&2
    fi
    for _ in $(seq 1 50); do
      su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
      sleep 0.2
    done
    su postgres -c "psql -qAt" >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'footfall') THEN
    CREATE ROLE footfall LOGIN CREATEDB PASSWORD 'footfall';
  END IF;
END $$;
SQL
    echo "$url"
    ;;
  stop)
    pg_ctlcluster 15 main stop >&2 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
