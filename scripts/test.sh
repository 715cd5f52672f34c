#!/usr/bin/env bash
# The project's test command (README). Installs what the tests need (a Python venv with
# fastavro and moto's S3 server, from PyPI), then runs the whole suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/fetch-rules.sh
scripts/test-deps.sh

venv="$root/target/test-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Published client libraries drive the protocol tests: GA4 Measurement Protocol (ga4mp)
# and Segment (segment-analytics-python); mmdb-writer builds a tiny geo database; Python's
# ua-parser is the independent bot check of the access-log import test; DuckDB reads the
# columnar files directly, as analysts' tools do; psycopg is the PostgreSQL driver of the
# wire-protocol test (psql comes with Debian's PostgreSQL); schemathesis checks the server
# against its OpenAPI document.
if ! "$venv/bin/python" -c "import fastavro, moto, ga4mp, segment.analytics, mmdb_writer, netaddr, ua_parser, duckdb, psycopg, schemathesis" 2>/dev/null \
    || [ ! -x "$venv/bin/moto_server" ]; then
  echo "test.sh: installing the Python test packages into $venv"
  "$venv/bin/pip" install -q "fastavro==1.*" "moto[server]==5.*" "ga4mp==2.0.4" \
    "segment-analytics-python==2.4.0" "mmdb-writer==0.2.7" "netaddr==1.3.0" \
    "ua-parser==1.0.2" "ua-parser-builtins==202610" "duckdb==2.0.0" \
    "psycopg[binary]==3.3.9" "schemathesis==4.32.5"
fi
export FOOTFALL_TEST_PYTHON="$venv/bin/python"

# Servers the distributed tests use: Debian's PostgreSQL 15 (a database per test) and a
# Kafka-protocol broker (tansu, built once from crates.io and kept outside the repo).
FOOTFALL_TEST_PG_URL=$(scripts/pg.sh start)
export FOOTFALL_TEST_PG_URL
FOOTFALL_TEST_TANSU=$(scripts/kafka.sh install)
export FOOTFALL_TEST_TANSU
servers="$root/target/test-servers"
scripts/kafka.sh stop "$servers"
FOOTFALL_TEST_KAFKA=$(scripts/kafka.sh start "${FOOTFALL_TEST_KAFKA_PORT:-19092}" "$servers")
export FOOTFALL_TEST_KAFKA
trap 'scripts/kafka.sh stop "$servers"' EXIT
# Redis for the shared query cache's contract (Debian's redis-server).
FOOTFALL_TEST_REDIS=$(scripts/redis.sh start "${FOOTFALL_TEST_REDIS_PORT:-16379}" "$servers")
export FOOTFALL_TEST_REDIS
trap 'scripts/kafka.sh stop "$servers"; scripts/redis.sh stop "$servers"' EXIT
# The local cluster test (scripts/cluster.sh: nginx, moto, tansu, PostgreSQL, Redis).
export FOOTFALL_TEST_CLUSTER=1

# Every feature: the Kafka log is built and tested too.
cargo build --workspace --all-targets --all-features --locked
# Figures tests measured (crates/footfall/tests/common/cluster.rs, `figure`), printed below.
rm -rf target/test-figures
set +e
# Every test binary runs even after one fails, so that one run shows every failure.
cargo test --workspace --all-features --locked --no-fail-fast 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
for f in target/test-figures/*.txt; do
  [ -f "$f" ] && { echo "== figures: $(basename "$f" .txt)"; cat "$f"; }
done
# One plain closing line over all test binaries.
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' \
  target/test-output.log | tee target/test-summary.txt
exit "$status"
