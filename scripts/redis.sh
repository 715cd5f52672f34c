#!/usr/bin/env bash
# Redis for the tests and the local cluster (the shared query cache): Debian's
# redis-server, installed when missing, run in the foreground of its own process on
# loopback with nothing saved to disk.
#
#   scripts/redis.sh start PORT DIR   # prints redis://127.0.0.1:PORT/ (pid in DIR/redis.pid)
#   scripts/redis.sh stop DIR
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cmd=${1:-}
if ! command -v redis-server >/dev/null; then
  echo "redis.sh: installing redis-server from Debian" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi
case "$cmd" in
  start)
    port=${2:?port}
    dir=${3:?directory}
    mkdir -p "$dir"
    if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
      echo "redis://127.0.0.1:$port/"
      exit 0
    fi
    nohup redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$dir" --maxmemory 256mb --maxmemory-policy allkeys-lru \
      >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    for _ in $(seq 1 50); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "redis://127.0.0.1:$port/"
        exit 0
      fi
      sleep 0.1
    done
    echo "redis.sh: redis-server did not start" >&2
    cat "$dir/redis.log" >&2
    exit 1
    ;;
  stop)
    dir=${2:?directory}
    if [ -f "$dir/redis.pid" ]; then
      stop_and_wait "$(cat "$dir/redis.pid")"
      rm -f "$dir/redis.pid"
    fi
    ;;
  *)
    sed -n '2,7p' "$0" >&2
    exit 2
    ;;
esac
