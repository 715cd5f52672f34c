#!/usr/bin/env bash
# A Kafka-protocol broker for the tests and the local cluster: tansu (crates.io,
# Apache-2.0), built once with cargo and kept outside the repository (about 20 minutes
# on 2 cores; later runs reuse it).
#
#   scripts/kafka.sh install                  # prints the tansu binary's path
#   scripts/kafka.sh start PORT DIR           # broker on 127.0.0.1:PORT, pid in DIR
#   scripts/kafka.sh topic NAME PARTITIONS PORT
#   scripts/kafka.sh stop DIR
#
# The broker keeps its data in memory (tansu's `memory://` engine): enough for tests
# and for trying the cluster; a production deployment uses a real Kafka cluster.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
tools=${FOOTFALL_TOOLS:-$HOME/.cache/footfall-tools}
tansu="$tools/tansu/bin/tansu"
version=0.6.0

install() {
  if [ -x "$tansu" ] && "$tansu" --version 2>/dev/null | grep -q "$version"; then
    echo "$tansu"
    return
  fi
  echo "kafka.sh: building tansu $version from crates.io into $tools (once; ~20 min)" >&2
  mkdir -p "$tools"
  cargo install tansu --version "$version" --locked --features dynostore \
    --root "$tools/tansu" --target-dir "$tools/tansu-target" >&2
  rm -rf "$tools/tansu-target"
  echo "$tansu"
}

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "kafka.sh: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

case "${1:-}" in
  install)
    install
    ;;
  start)
    port=${2:?port}
    dir=${3:?dir}
    bin=$(install)
    mkdir -p "$dir"
    nohup "$bin" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" >"$dir/tansu.log" 2>&1 &
    echo $! >"$dir/tansu.pid"
    wait_port "$port"
    echo "127.0.0.1:$port"
    ;;
  topic)
    name=${2:?name}
    partitions=${3:?partitions}
    port=${4:?port}
    "$(install)" topic create "$name" --partitions "$partitions" \
      --broker "tcp://127.0.0.1:$port" >&2
    ;;
  stop)
    dir=${2:?dir}
    if [ -f "$dir/tansu.pid" ]; then
      stop_and_wait "$(cat "$dir/tansu.pid")"
      rm -f "$dir/tansu.pid"
    fi
    ;;
  *)
    echo "usage: $0 install|start PORT DIR|topic NAME PARTITIONS PORT|stop DIR" >&2
    exit 2
    ;;
esac
