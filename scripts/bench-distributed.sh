#!/usr/bin/env bash
# The distributed mode's benchmarks, each against its embedded baseline in the same run:
#   - batched ingest through a collector on Kafka vs on the file log,
#   - processing from Kafka vs from the file log (one core each; the broker on the other),
#   - the dashboard query set from a query node on PostgreSQL (cold: a fresh node's first
#     round; cached: the rounds after) vs the embedded store,
#   - beacons and batches through nginx vs straight to the server,
#   - the dashboard set with the answer cache warm vs computed.
#
#   scripts/bench-distributed.sh           full run: writes benches/distributed.md (and the
#                                          section of BENCHMARKS.md between its markers)
#   scripts/bench-distributed.sh --quick   small sizes, for CI: target/bench/distributed-quick.md
#
# Servers come from the repo's scripts: PostgreSQL (scripts/pg.sh) and tansu
# (scripts/kafka.sh), both on loopback; the load from separate processes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=full
[ "${1:-}" = "--quick" ] && mode=quick
work="$root/target/bench/distributed-$mode"
rm -rf "$work"
mkdir -p "$work"
F="$root/target/release/footfall"
B="$root/target/release/footfall-bench"

if [ "$mode" = quick ]; then
  PROC_EVENTS=200000; DUR=3; Q_EVENTS=100000; ITER=10; COLD=2
else
  PROC_EVENTS=3000000; DUR=10; Q_EVENTS=10000000; ITER=100; COLD=5
fi
TZ_NAME=Asia/Kolkata
OFFSET_MIN=330

scripts/fetch-rules.sh
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || scripts/bench-deps.sh
if [ "$mode" = quick ]; then
  # As in bench.sh: quick mode checks the harness, on the debug build scripts/test.sh makes.
  echo "== build (debug, as scripts/test.sh)"
  cargo build --workspace --all-targets --all-features --locked -q
  F="$root/target/debug/footfall"
  B="$root/target/debug/footfall-bench"
else
  echo "== build (release, with Kafka)"
  cargo build --release --locked -q -p footfall -p footfall-bench \
    --features footfall/kafka,footfall-bench/kafka
fi
PG=$(scripts/pg.sh start)
DB="ff_bench_$mode"
su postgres -c "psql -q -c 'DROP DATABASE IF EXISTS $DB WITH (FORCE)'" >&2
su postgres -c "psql -q -c 'CREATE DATABASE $DB OWNER footfall'" >&2
DB_URL="${PG%/*}/$DB"
KPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The broker on core 1, so that what is measured on core 0 is Footfall's.
taskset -c 1 true 2>/dev/null && PIN1=(taskset -c 1) || PIN1=()
scripts/kafka.sh install >/dev/null
mkdir -p "$work/kafka"
KAFKA=$("${PIN1[@]}" scripts/kafka.sh start "$KPORT" "$work/kafka")

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  scripts/kafka.sh stop "$work/kafka"
  [ -f "$work/gw/pids/nginx.pid" ] && kill "$(cat "$work/gw/pids/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
# Rows measure the stores, not the answer cache, except the cache's own row.
export FOOTFALL_QUERY__CACHE=off
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start DIR PORT [serve args…] -> SERVER_PID; environment passes through.
start() {
  local dir=$1 port=$2
  shift 2
  FOOTFALL_LOG=warn "$F" --data-dir "$dir" serve --listen "127.0.0.1:$port" "$@" >"$dir.serve.log" 2>&1 &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not start" >&2; cat "$dir.serve.log" >&2; return 1
}
stop() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
new_site() { # DIR -> "ID READ_KEY" (environment passes through: meta.url)
  local tid key
  tid=$("$F" --data-dir "$1" property create --name Bench --timezone "$TZ_NAME")
  key=$("$F" --data-dir "$1" key create --property "$tid" --scope read)
  echo "$tid $key"
}
loadgen() { # URL SITE OUT [BATCH]
  "$F" loadgen --url "$1" --property "$2" --rate 2000000 --duration "$DUR" --batch "${4:-100}" \
    --concurrency 8 --json >"$3"
}

echo "== ingest, batched: a collector on the file log vs on Kafka"
mkdir -p "$work/ingest-file" "$work/ingest-kafka"
read -r S1 _ <<<"$(new_site "$work/ingest-file")"
P=$(free_port); start "$work/ingest-file" "$P"
loadgen "http://127.0.0.1:$P" "$S1" "$work/ingest-file.json"; stop
"$root/scripts/kafka.sh" topic ingest 2 "$KPORT"
read -r S2 _ <<<"$(new_site "$work/ingest-kafka")"
P=$(free_port)
FOOTFALL_LOG__KAFKA_BROKERS="$KAFKA" FOOTFALL_LOG__KAFKA_TOPIC=ingest start "$work/ingest-kafka" "$P" --role collector
loadgen "http://127.0.0.1:$P" "$S2" "$work/ingest-kafka.json"; stop

echo "== ingest through nginx vs straight to the server (beacons and batches)"
mkdir -p "$work/gw" "$work/gw/nginx" "$work/gw/logs" "$work/gw/pids"
read -r S3 _ <<<"$(new_site "$work/gw")"
P=$(free_port); start "$work/gw" "$P"
GP=$(free_port)
python3 - deploy/nginx/cluster.conf.template "$work/gw/nginx.conf" "$work/gw" "$GP" "        server 127.0.0.1:$P;" "        server 127.0.0.1:$P;" <<'PY'
import sys
t = open(sys.argv[1]).read()
for k, v in [("@DIR@", sys.argv[3]), ("@PORT@", sys.argv[4]), ("@COLLECTORS@", sys.argv[5]), ("@QUERIES@", sys.argv[6])]:
    t = t.replace(k, v)
open(sys.argv[2], "w").write(t)
PY
nginx -c "$work/gw/nginx.conf" -p "$work/gw/nginx"
for b in 1 100; do
  loadgen "http://127.0.0.1:$P" "$S3" "$work/gw-direct-$b.json" "$b"
  loadgen "http://127.0.0.1:$GP" "$S3" "$work/gw-nginx-$b.json" "$b"
done
nginx -c "$work/gw/nginx.conf" -p "$work/gw/nginx" -s stop
stop

echo "== processing, one core: from the file log vs from Kafka"
taskset -c 0 "$B" process --events "$PROC_EVENTS" --partitions 2 >"$work/process-file.json"
taskset -c 0 "$B" process --events "$PROC_EVENTS" --partitions 2 --kafka "$KAFKA" >"$work/process-kafka.json"

echo "== dashboard at $Q_EVENTS events: embedded store vs a query node on PostgreSQL"
TODAY=$(python3 -c "import datetime as d; print((d.datetime.now(d.timezone.utc)+d.timedelta(minutes=$OFFSET_MIN)).date())")
FROM=$(python3 -c "import datetime as d; print(d.date.fromisoformat('$TODAY')-d.timedelta(days=29))")
END=$(python3 -c "import datetime as d; print(d.datetime.now(d.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))")
export FOOTFALL_META__URL="$DB_URL"
dir="$work/q"; mkdir -p "$dir"
read -r QS QK <<<"$(new_site "$dir")"
"$B" fill --data-dir "$dir" --property "$QS" --events "$Q_EVENTS" --days 30 --end "$END" --partitions 2
wait_lag0() {
  for _ in $(seq 1 18000); do
    curl -sf "http://127.0.0.1:$1/metrics" | grep -qx 'footfall_processor_lag_bytes 0' && return 0
    sleep 0.1
  done
  return 1
}
# Embedded: every role in one process, rollups in the data directory.
P=$(free_port); start "$dir" "$P"; wait_lag0 "$P"
"$B" queries --url "http://127.0.0.1:$P" --site "$QS" --key "$QK" --from "$FROM" --to "$TODAY" \
  --iterations "$ITER" >"$work/queries-embedded.json"
stop
# The answer cache: the same set on the same store with the cache on (memory, 1 s):
# the first round computes and stores, the rounds after are answered from the cache.
FOOTFALL_QUERY__CACHE=memory start "$dir" "$P"
"$B" queries --url "http://127.0.0.1:$P" --site "$QS" --key "$QK" --from "$FROM" --to "$TODAY" \
  --iterations "$ITER" >"$work/queries-cached.json"
stop
# The same log processed into PostgreSQL, then read by query nodes.
rm -rf "$dir/rollups"
P=$(free_port)
FOOTFALL_STORE__URL="$DB_URL" FOOTFALL_PROCESSOR__CHECKPOINT_INTERVAL_MS=1000 start "$dir" "$P"
wait_lag0 "$P"
stop
mkdir -p "$work/query-node"
for c in $(seq 1 "$COLD"); do
  P=$(free_port)
  FOOTFALL_STORE__URL="$DB_URL" start "$work/query-node" "$P" --role query
  "$B" queries --url "http://127.0.0.1:$P" --site "$QS" --key "$QK" --from "$FROM" --to "$TODAY" \
    --iterations "$ITER" >"$work/queries-pg-$c.json"
  stop
done
unset FOOTFALL_META__URL

echo "== report"
python3 - "$work" "$mode" "$Q_EVENTS" "$COLD" <<'PY' >"$work/distributed.md"
import json, sys, glob, datetime, platform
work, mode, q_events, cold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
j = lambda n: json.load(open(f"{work}/{n}"))
f, k = j("ingest-file.json"), j("ingest-kafka.json")
pf, pk = j("process-file.json"), j("process-kafka.json")
emb = j("queries-embedded.json")
qc = j("queries-cached.json")
gw = {(w, b): j(f"gw-{w}-{b}.json") for w in ("direct", "nginx") for b in (1, 100)}
pgs = [j(f"queries-pg-{c}.json") for c in range(1, cold + 1)]
firsts = sorted(p["first_round_ms"] for p in pgs)
cached = sorted(p["set_p99_ms"] for p in pgs)
def verdict(ok): return "**met**" if ok else "**missed**"
r_ing = k["events_per_second"] / f["events_per_second"]
r_proc = pk["process_events_per_second"] / pf["process_events_per_second"]
same = all(p["answers"] == emb["answers"] for p in pgs)
out = []
out.append(f"Measured {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} by `scripts/bench-distributed.sh{' --quick' if mode == 'quick' else ''}` on this machine (2 cores; the broker, PostgreSQL and the load share them with Footfall).")
out.append("")
out.append("| what | how | result | baseline (same run) | ratio | target | |")
out.append("|---|---|---|---|---|---|---|")
out.append(f"| ingest, batched, through a collector on Kafka (tansu, 2 partitions) | `serve --role collector`, `loadgen --batch 100 --concurrency 8` | {k['events_per_second']:,.0f} events/s, {k['errors']} errors, request p99 {k['latency_ms_p99']:.1f} ms | the file log (`serve`, every role): {f['events_per_second']:,.0f} events/s | {r_ing:.2f}× | ≥ 0.7× | {verdict(r_ing >= 0.7)} |")
out.append(f"| processing from Kafka, one core | `taskset -c 0 footfall-bench process --kafka` ({pk['events']:,} events) | {pk['process_events_per_second']:,.0f} events/s (decode-only from Kafka {pk['decode_only_events_per_second']:,.0f}) | from the file log: {pf['process_events_per_second']:,.0f} events/s ({pf['ratio_to_decode_only']:.3f}× of its decode-only pass) | {r_proc:.2f}× | ≥ 0.7×; embedded ≥ 0.19× decode-only | {verdict(r_proc >= 0.7)}; embedded {verdict(pf['ratio_to_decode_only'] >= 0.19)} |")
out.append(f"| dashboard set from a query node on PostgreSQL, cold ({q_events:,} events over 30 days) | a fresh `serve --role query`, its first round (×{cold} nodes) | first round {', '.join(f'{x:.1f}' for x in firsts)} ms (max {firsts[-1]:.1f}) | — | — | ≤ 20 ms | {verdict(firsts[-1] <= 20)} |")
out.append(f"| dashboard set from a query node on PostgreSQL, cached | `footfall-bench queries`, {pgs[0]['iterations']} rounds per node | set p99 {max(cached):.2f} ms (p50 {pgs[0]['set_p50_ms']:.2f} ms); answers equal the embedded store's: {'yes' if same else 'NO'} | embedded store: set p99 {emb['set_p99_ms']:.2f} ms (p50 {emb['set_p50_ms']:.2f} ms) | {max(cached) / emb['set_p99_ms']:.1f}× the embedded p99 | ≤ 5 ms | {verdict(max(cached) <= 5 and same)} |")
for b, what in ((1, "beacons (1 event per request)"), (100, "batches (100 events per request)")):
    d, n = gw[("direct", b)], gw[("nginx", b)]
    out.append(f"| ingest, {what}, through nginx | `loadgen --batch {b} --concurrency 8` to nginx (`deploy/nginx/cluster.conf.template`) in front of `serve` | {n['events_per_second']:,.0f} events/s, {n['errors']} errors, request p99 {n['latency_ms_p99']:.1f} ms | straight to `serve`: {d['events_per_second']:,.0f} events/s, request p99 {d['latency_ms_p99']:.1f} ms | {n['events_per_second'] / d['events_per_second']:.2f}× | — | |")
out.append(f"| dashboard set, answer cache warm ({q_events:,} events, embedded store) | `query.cache = \"memory\"`, `footfall-bench queries`, {qc['iterations']} rounds | set p99 {qc['set_p99_ms']:.2f} ms (p50 {qc['set_p50_ms']:.2f} ms); cold (first round, computed and stored): {qc['first_round_ms']:.1f} ms; answers equal the uncached ones: {'yes' if qc['answers'] == emb['answers'] else 'NO'} | computed every time (`query.cache = \"off\"`): set p99 {emb['set_p99_ms']:.2f} ms | {qc['set_p99_ms'] / emb['set_p99_ms']:.2f}× | — | |")
print("\n".join(out))
json.dump({"ingest_file": f, "ingest_kafka": k, "process_file": pf, "process_kafka": pk,
           "queries_embedded": emb, "queries_pg": pgs, "queries_cached": qc,
           "gateway": {f"{w}-{b}": v for (w, b), v in gw.items()}}, open(f"{work}/distributed.json", "w"), indent=1)
PY
cat "$work/distributed.md"
if [ "$mode" = full ]; then
  cp "$work/distributed.md" benches/distributed.md
  python3 - <<'PY'
import re
b = open("BENCHMARKS.md").read()
section = "<!-- distributed:begin -->\n## Distributed mode\n\n" + open("benches/distributed.md").read().strip() + "\n<!-- distributed:end -->"
if "<!-- distributed:begin -->" in b:
    b = re.sub(r"<!-- distributed:begin -->.*?<!-- distributed:end -->", lambda m: section, b, flags=re.S)
else:
    marker = "\n## Scale"
    i = b.find(marker)
    b = (b[:i] + "\n\n" + section + "\n" + b[i:]) if i >= 0 else (b.rstrip() + "\n\n" + section + "\n")
open("BENCHMARKS.md", "w").write(b)
PY
else
  cp "$work/distributed.md" target/bench/distributed-quick.md
fi
