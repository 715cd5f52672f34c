#!/usr/bin/env bash
# Installs what scripts/bench.sh needs: nginx and wrk (Debian), and a Python venv with
# DuckDB and chDB (PyPI). Idempotent; safe to run on every bench run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bench-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The package starts a default server on :80; benchmarks run their own.
  service nginx stop >/dev/null 2>&1 || true
fi
venv="${FOOTFALL_BENCH_VENV:-$root/target/bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import duckdb, chdb" 2>/dev/null; then
  echo "bench-deps: pip install duckdb chdb"
  "$venv/bin/pip" install -q duckdb==2.0.0 chdb==4.4.0
fi
echo "$venv"
