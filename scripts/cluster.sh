#!/usr/bin/env bash
# A local Footfall cluster on loopback, for trying the distributed mode and for tests:
# a Kafka-protocol broker (tansu), PostgreSQL 15, an S3-compatible server (moto), nginx
# in front of two collectors and two query nodes, two processors and an archiver — each
# a `footfall serve --role …` process with the same configuration file.
#
#   scripts/cluster.sh up DIR [--binary PATH] [--partitions N]
#   scripts/cluster.sh status DIR
#   scripts/cluster.sh restart DIR NAME      # e.g. processor-1 (after a kill -9)
#   scripts/cluster.sh roll DIR [--binary PATH]
#                                           # restarts every node one by one, without a
#                                           # failed request; onto PATH for an upgrade
#   scripts/cluster.sh down DIR [--purge]   # --purge also drops its database; PostgreSQL is
#                                           # stopped again if `up` started it
#
# `up` installs what is missing (nginx from Debian, tansu and moto into a cache outside
# the repository), writes DIR/footfall.toml (so `footfall --config DIR/footfall.toml
# property create …` works against the cluster), DIR/pids/<name>.pid and DIR/logs/,
# and prints the gateway URL last. Ports start at FOOTFALL_CLUSTER_PORT (18000).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${FOOTFALL_TOOLS:-$HOME/.cache/footfall-tools}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || {
  sed -n '2,18p' "$0" >&2
  exit 2
}
shift 2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
base=${FOOTFALL_CLUSTER_PORT:-18000}
gateway_port=$((base + 80))
kafka_port=$((base + 92))
redis_port=$((base + 79))
s3_port=$((base + 93))
nodes="collector-1:collector:$((base + 101)) collector-2:collector:$((base + 102)) query-1:query:$((base + 201)) query-2:query:$((base + 202)) processor-1:processor:$((base + 301)) processor-2:processor:$((base + 302)) archiver-1:archiver:$((base + 401))"

log() { echo "cluster.sh: $*" >&2; }

wait_http() {
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "no answer from $1"
  return 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_node() {
  local name=$1 role=$2 port=$3
  local bin
  bin=$(cat "$dir/binary")
  mkdir -p "$dir/data/$name"
  FOOTFALL_LOG=${FOOTFALL_LOG:-info} nohup "$bin" --config "$dir/footfall.toml" \
    --data-dir "$dir/data/$name" serve --role "$role" --listen "127.0.0.1:$port" \
    >>"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
}

up() {
  local binary="" partitions=4
  while [ $# -gt 0 ]; do
    case "$1" in
      --binary) binary=$2; shift 2 ;;
      --partitions) partitions=$2; shift 2 ;;
      *) log "unknown option $1"; exit 2 ;;
    esac
  done
  mkdir -p "$dir/pids" "$dir/logs" "$dir/nginx" "$dir/data"
  if [ -z "$binary" ]; then
    log "building footfall (release, with Kafka and the columnar engine)"
    (cd "$root" && cargo build --release --locked --features kafka,columnar -q)
    binary="$root/target/release/footfall"
  fi
  echo "$binary" >"$dir/binary"

  if ! command -v nginx >/dev/null; then
    log "installing nginx (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  fi
  if [ ! -x "$tools/moto/bin/moto_server" ]; then
    log "installing moto's S3 server (PyPI) into $tools/moto"
    python3 -m venv "$tools/moto"
    "$tools/moto/bin/pip" install -q "moto[server]==5.*"
  fi

  # PostgreSQL: one database per cluster directory. If the server was not running,
  # `down` stops it again.
  local pg db url
  if ! pg_ctlcluster 15 main status >/dev/null 2>&1; then
    touch "$dir/pids/postgres-started-here"
  fi
  pg=$("$root/scripts/pg.sh" start)
  db="ff_cluster_$(echo "$dir" | md5sum | cut -c1-10)"
  su postgres -c "psql -qAt -c \"SELECT 1 FROM pg_database WHERE datname = '$db'\"" | grep -q 1 ||
    su postgres -c "psql -q -c 'CREATE DATABASE $db OWNER footfall'" >&2
  url="${pg%/*}/$db"

  # The broker and the topic.
  if ! alive "$dir/pids/tansu.pid"; then
    "$root/scripts/kafka.sh" start "$kafka_port" "$dir/pids" >/dev/null
    mv -f "$dir/pids/tansu.log" "$dir/logs/tansu.log" 2>/dev/null || true
    "$root/scripts/kafka.sh" topic footfall-events "$partitions" "$kafka_port"
  fi

  # Redis: the query nodes' shared answer cache.
  "$root/scripts/redis.sh" start "$redis_port" "$dir/pids" >/dev/null

  # The S3-compatible server and a bucket.
  if ! alive "$dir/pids/moto.pid"; then
    nohup "$tools/moto/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$dir/logs/moto.log" 2>&1 &
    echo $! >"$dir/pids/moto.pid"
    wait_http "http://127.0.0.1:$s3_port/"
    curl -fsS -X PUT "http://127.0.0.1:$s3_port/footfall-archive" >/dev/null
  fi

  cat >"$dir/footfall.toml" <<TOML
# Written by scripts/cluster.sh: the configuration of every node of this cluster.
[server]
trusted_proxies = ["127.0.0.1"]
shutdown_timeout_secs = 10

[log]
kafka_brokers = "127.0.0.1:$kafka_port"
kafka_topic = "footfall-events"
# tansu holds fetches for this long even with records to send (docs/DISTRIBUTED.md).
kafka_fetch_wait_ms = 10

[processor]
checkpoint_interval_ms = 500
lease_ms = 10000

[meta]
url = "$url"

[store]
url = "$url"
# A query answer is at most the checkpoint interval plus this old (0.6 s here).
read_max_staleness_ms = 100

[query]
# Answers shared by the query nodes through Redis, each for 500 ms: with the checkpoint
# interval and read staleness above, an answer is at most about 1.1 s old.
cache = "redis"
redis_url = "redis://127.0.0.1:$redis_port/"
cache_ttl_ms = 500

[archive]
url = "s3://footfall-archive/events"
seal_interval = "2s"
s3_endpoint = "http://127.0.0.1:$s3_port"
s3_region = "us-east-1"
s3_access_key_id = "test"
s3_secret_access_key = "test"
s3_allow_http = true

[columnar]
# The archiver makes the columnar files (any filter with any breakdown) from the archive
# on S3; the query nodes read them there.
refresh_interval = "2s"
TOML

  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    alive "$dir/pids/$name.pid" || start_node "$name" "$role" "$port"
  done
  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    wait_http "http://127.0.0.1:$port/readyz" || { tail -20 "$dir/logs/$name.log" >&2; exit 1; }
  done
  gateway
  wait_http "http://127.0.0.1:$gateway_port/healthz"
  echo "http://127.0.0.1:$gateway_port"
}

# Writes nginx's configuration with every collector and query node and starts nginx
# (reloads it if it runs).
gateway() {
  local collectors="" queries="" line
  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    # max_fails=0: nginx never counts a node failed. On loopback a stopped node refuses
    # at once and nginx tries the next one; counted failures outlast a restart, and
    # two nodes of a kind counted failed at once leave none ("no live upstreams").
    line="        server 127.0.0.1:$port max_fails=0"
    case "$role" in
      collector) collectors+="$line;"$'\n' ;;
      query) queries+="$line;"$'\n' ;;
    esac
  done
  python3 - "$root/deploy/nginx/cluster.conf.template" "$dir/nginx.conf" "$dir" "$gateway_port" "$collectors" "$queries" <<'PY'
import sys
t = open(sys.argv[1]).read()
for k, v in [("@DIR@", sys.argv[3]), ("@PORT@", sys.argv[4]), ("@COLLECTORS@", sys.argv[5].rstrip("\n")), ("@QUERIES@", sys.argv[6].rstrip("\n"))]:
    t = t.replace(k, v)
open(sys.argv[2], "w").write(t)
PY
  if alive "$dir/pids/nginx.pid"; then
    nginx -c "$dir/nginx.conf" -p "$dir/nginx" -s reload
  else
    nginx -c "$dir/nginx.conf" -p "$dir/nginx"
  fi
}

# SIGTERM and wait: the node drains (a processor checkpoints and hands its partitions
# back); one that has not stopped after 60 s is killed.
stop_node() {
  local pidfile="$dir/pids/$1.pid"
  alive "$pidfile" || return 0
  kill "$(cat "$pidfile")"
  for _ in $(seq 1 600); do alive "$pidfile" || return 0; sleep 0.1; done
  log "$1 did not stop within 60 s: killed"
  kill -9 "$(cat "$pidfile")" || true
}

# Every node in turn, each back and ready before the next goes. nginx is not touched:
# a node sent SIGTERM closes its listener (nginx's next connection to it is refused and
# retried on another server), answers what still arrives on open connections with
# `Connection: close`, and exits; nginx idles out its other connections to it first.
# Processors hand their partitions to the others while they restart.
roll() {
  local binary=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --binary) binary=$2; shift 2 ;;
      *) log "unknown option $1"; exit 2 ;;
    esac
  done
  [ -n "$binary" ] && echo "$binary" >"$dir/binary"
  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    stop_node "$name"
    start_node "$name" "$role" "$port"
    wait_http "http://127.0.0.1:$port/readyz" || { tail -20 "$dir/logs/$name.log" >&2; exit 1; }
    log "rolled $name ($(cat "$dir/binary"))"
  done
}

status() {
  local ok=0
  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    if alive "$dir/pids/$name.pid"; then
      printf '%-12s %-9s pid %-7s %s\n' "$name" "$role" "$(cat "$dir/pids/$name.pid")" \
        "$(curl -sS "http://127.0.0.1:$port/readyz" 2>&1 || true)"
    else
      printf '%-12s %-9s down\n' "$name" "$role"
      ok=1
    fi
  done
  for s in tansu moto nginx redis; do
    if alive "$dir/pids/$s.pid"; then printf '%-12s up\n' "$s"; else printf '%-12s down\n' "$s"; ok=1; fi
  done
  return $ok
}

restart() {
  local want=${1:?node name}
  for n in $nodes; do
    IFS=: read -r name role port <<<"$n"
    if [ "$name" = "$want" ]; then
      stop_node "$name"
      start_node "$name" "$role" "$port"
      wait_http "http://127.0.0.1:$port/readyz"
      return
    fi
  done
  log "no node named $want"
  exit 2
}

down() {
  local purge=${1:-}
  for n in $nodes; do
    IFS=: read -r name _ _ <<<"$n"
    if alive "$dir/pids/$name.pid"; then kill "$(cat "$dir/pids/$name.pid")" || true; fi
  done
  for n in $nodes; do
    IFS=: read -r name _ _ <<<"$n"
    for _ in $(seq 1 100); do alive "$dir/pids/$name.pid" || break; sleep 0.1; done
    if alive "$dir/pids/$name.pid"; then kill -9 "$(cat "$dir/pids/$name.pid")" || true; fi
    rm -f "$dir/pids/$name.pid"
  done
  if alive "$dir/pids/nginx.pid"; then stop_and_wait "$(cat "$dir/pids/nginx.pid")"; fi
  "$root/scripts/kafka.sh" stop "$dir/pids"
  "$root/scripts/redis.sh" stop "$dir/pids"
  if alive "$dir/pids/moto.pid"; then stop_and_wait "$(cat "$dir/pids/moto.pid")"; fi
  rm -f "$dir/pids/moto.pid"
  if [ "$purge" = "--purge" ]; then
    local db
    db="ff_cluster_$(echo "$dir" | md5sum | cut -c1-10)"
    su postgres -c "psql -q -c 'DROP DATABASE IF EXISTS $db WITH (FORCE)'" >&2 || true
    log "stopped; database $db dropped"
  else
    log "stopped (data kept in $dir and its PostgreSQL database)"
  fi
  if [ -f "$dir/pids/postgres-started-here" ]; then
    "$root/scripts/pg.sh" stop
    rm -f "$dir/pids/postgres-started-here"
  fi
}

case "$cmd" in
  up) up "$@" ;;
  status) status ;;
  restart) restart "$@" ;;
  roll) roll "$@" ;;
  down) down "$@" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
