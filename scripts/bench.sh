#!/usr/bin/env bash
# Footfall's benchmarks, end to end: builds release binaries, generates data, runs every
# benchmark with its baseline in the same run, and writes the results.
#
#   scripts/bench.sh           full run (~6 min after a ~4 min clean build): writes BENCHMARKS.md and
#                              target/bench/results-full.json
#   scripts/bench.sh --quick   small sizes (~2-3 min after the build), for CI: writes
#                              target/bench/BENCHMARKS-quick.md and results-quick.json
#   scripts/bench.sh --scale N the dashboard query set alone at N events over 30 days
#                              (fill, catch-up, queries, memory, disk; no comparisons),
#                              for the scale row: writes target/bench/scale-N.json
#   scripts/bench.sh --dashboard N  the dashboard page at N events over 30 days: every
#                              query the page sends (alone and as a page load), and the
#                              page in headless Chromium (first paint, all panels
#                              filled): writes target/bench/dashboard-N.json
#
# Load comes from separate processes on this machine over loopback (footfall loadgen,
# wrk), every run bounded in time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=full
[ "${1:-}" = "--quick" ] && mode=quick
if [ "${1:-}" = "--scale" ]; then
  mode=scale
  SCALE_N=${2:?"--scale needs a number of events"}
fi
if [ "${1:-}" = "--dashboard" ]; then
  mode=dashboard
  SCALE_N=${2:?"--dashboard needs a number of events"}
  scripts/test-deps.sh
fi

work="$root/target/bench/work-$mode"
rm -rf "$work"
mkdir -p "$work"
F="$root/target/release/footfall"
B="$root/target/release/footfall-bench"

scripts/fetch-rules.sh
if [ "$mode" = quick ]; then
  # Quick mode checks that the harness runs, not the figures: it uses the debug build of
  # every crate and feature, the same command as scripts/test.sh (so in CI, no build at
  # all) instead of paying for a second optimised build.
  echo "== build (debug, as scripts/test.sh)"
  cargo build --workspace --all-targets --all-features --locked -q
  F="$root/target/debug/footfall"
  B="$root/target/debug/footfall-bench"
else
  echo "== build (release)"
  cargo build --release --locked -q -p footfall -p footfall-bench
fi
venv=$(scripts/bench-deps.sh | tail -n 1)
PY="$venv/bin/python"

if [ "$mode" = quick ]; then
  PROC_EVENTS=200000; REPROC_EVENTS=100000; DUR=3; QUERY_SIZES="100000"; ITER=10; CMP_ITER=1; SCALE=0
  ROUNDS=1
else
  PROC_EVENTS=5000000; REPROC_EVENTS=3000000; DUR=10; QUERY_SIZES="1000000 10000000"; ITER=100; CMP_ITER=3; SCALE=1
  # Processing and beacon ingest are measured in rounds (beacon alternating with its
  # nginx baseline) and reported by their median: single runs on this shared machine
  # vary by ±5% from one minute to the next.
  ROUNDS=3
fi
TZ_NAME=Asia/Kolkata
OFFSET_MIN=330

pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx/nginx.pid" ] && kill "$(cat "$work/nginx/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
# The query rows measure the engine and the store against their baselines, not the
# answer cache (scripts/bench-distributed.sh measures that on its own).
export FOOTFALL_QUERY__CACHE=off

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server DIR PORT [CPUS] -> sets SERVER_PID
start_server() {
  local dir=$1 port=$2 cpus=${3:-}
  local cmd=("$F" --data-dir "$dir" serve --listen "127.0.0.1:$port")
  if [ -n "$cpus" ]; then cmd=(taskset -c "$cpus" "${cmd[@]}"); fi
  FOOTFALL_LOG=warn "${cmd[@]}" > "$dir.serve.log" 2>&1 &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not start" >&2; cat "$dir.serve.log" >&2; return 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; }
peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
wait_caught_up() { # PORT [TENTHS OF A SECOND to wait]
  local port=$1
  for _ in $(seq 1 "${2:-6000}"); do
    curl -sf "http://127.0.0.1:$port/metrics" | grep -qx 'footfall_processor_lag_bytes 0' && return 0
    sleep 0.1
  done
  echo "processor did not catch up" >&2; return 1
}
new_site() { # DIR -> "TRACKING_ID READ_KEY"
  local tid key
  tid=$("$F" --data-dir "$1" property create --name Bench --timezone "$TZ_NAME")
  key=$("$F" --data-dir "$1" key create --property "$tid" --scope read)
  echo "$tid $key"
}

# Sets TODAY (local to the bench zone), FROM (29 days before) and END (now, UTC): the
# 30 days the scale and dashboard runs fill and query.
last_30_days() {
  TODAY=$(python3 -c "import datetime as d; print((d.datetime.now(d.timezone.utc)+d.timedelta(minutes=$OFFSET_MIN)).date())")
  FROM=$(python3 -c "import datetime as d; print(d.date.fromisoformat('$TODAY')-d.timedelta(days=29))")
  END=$(python3 -c "import datetime as d; print(d.datetime.now(d.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))")
}

if [ "$mode" = dashboard ]; then
  N=$SCALE_N; dir="$work/d$N"; mkdir -p "$dir"
  last_30_days
  read -r QSITE QKEY <<<"$(new_site "$dir")"
  ACCT=$("$F" --data-dir "$dir" account create --name Bench --property "$QSITE")
  PW="a bench password, long enough"
  FOOTFALL_PASSWORD="$PW" "$F" --data-dir "$dir" user create --email bench@footfall.example --account "$ACCT" --role owner >/dev/null
  echo "== fill $N events over 30 days"
  "$B" fill --data-dir "$dir" --property "$QSITE" --events "$N" --days 30 --end "$END" --partitions 2
  PORT=$(free_port)
  start_server "$dir" "$PORT"
  wait_caught_up "$PORT" 18000
  echo "== every query of the page, 100 times; then 100 page loads"
  "$B" queries --url "http://127.0.0.1:$PORT" --site "$QSITE" --key "$QKEY" --from "$FROM" --to "$TODAY" \
    --iterations 100 --set page > "$work/page-queries.json"
  echo "== the page in headless Chromium, 20 rounds"
  NPM="$root/target/test-data/npm" node benches/dashboard-paint.js "http://127.0.0.1:$PORT" \
    bench@footfall.example "$PW" "$QSITE" 20 > "$work/paint.json"
  stop_server
  "$PY" - "$work/page-queries.json" "$work/paint.json" "$N" > "$root/target/bench/dashboard-$N.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); paint = json.load(open(sys.argv[2]))
q.pop("answers", None)
print(json.dumps({"events": int(sys.argv[3]), "queries": q, "browser": paint}, indent=1))
PY
  cat "$root/target/bench/dashboard-$N.json"
  rm -rf "$dir"
  exit 0
fi

if [ "$mode" = scale ]; then
  N=$SCALE_N; dir="$work/q$N"; mkdir -p "$dir"
  last_30_days
  read -r QSITE QKEY <<<"$(new_site "$dir")"
  echo "== fill $N events over 30 days"
  t0=$(date +%s.%N)
  "$B" fill --data-dir "$dir" --property "$QSITE" --events "$N" --days 30 --end "$END" --partitions 2
  t1=$(date +%s.%N)
  echo "== catch up and query"
  PORT=$(free_port)
  start_server "$dir" "$PORT"
  wait_caught_up "$PORT" 18000
  t2=$(date +%s.%N)
  "$B" queries --url "http://127.0.0.1:$PORT" --site "$QSITE" --key "$QKEY" --from "$FROM" --to "$TODAY" \
    --iterations 100 > "$work/queries-$N.json"
  RSS=$(peak_rss_kb "$SERVER_PID")
  stop_server
  LOGB=$(du -sb "$dir/log" | cut -f1); ROLLB=$(du -sb "$dir/rollups" | cut -f1)
  "$PY" - "$work/queries-$N.json" "$N" "$t0" "$t1" "$t2" "$RSS" "$LOGB" "$ROLLB" > "$root/target/bench/scale-$N.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
n, t0, t1, t2, rss, logb, rollb = sys.argv[2:]
n = int(n)
print(json.dumps({"events": n, "fill_seconds": float(t1) - float(t0),
                  "catchup_seconds": float(t2) - float(t1), "peak_rss_mib": int(rss) / 1024,
                  "log_bytes_per_event": int(logb) / n, "rollup_bytes_per_event": int(rollb) / n,
                  "queries": q}, indent=1))
PY
  cat "$root/target/bench/scale-$N.json"
  rm -rf "$dir"
  exit 0
fi

echo "== processing (pre-filled log, no HTTP; baseline: decode-only pass), $ROUNDS round(s)"
for r in $(seq 1 "$ROUNDS"); do
  "$B" process --events "$PROC_EVENTS" > "$work/process-round$r.json"
done
if [ "$SCALE" = 1 ]; then
  taskset -c 0 "$B" process --events "$PROC_EVENTS" > "$work/process-1core.json"
fi

echo "== reprocessing (read the Avro archive back and rebuild rollups; baseline: processing above)"
"$B" reprocess --events "$REPROC_EVENTS" > "$work/reprocess.json"

echo "== nginx baseline server"
mkdir -p "$work/nginx/logs"
NGINX_PORT=$(free_port)
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_buffer_size 2m;
  client_max_body_size 2m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { return 204; }
  }
}
NGINX
/usr/sbin/nginx -c "$work/nginx/nginx.conf" -p "$work/nginx"
sleep 0.5

run_ingest() { # NAME URL SITE CPUS(server) -> loadgen json
  local name=$1 url=$2 site=$3 extra=${4:-}
  "$F" loadgen --url "$url" --property "$site" --rate 2000000 --duration "$DUR" --batch 100 \
    --concurrency 8 --json $extra > "$work/$name.json"
}

echo "== ingest, batched (100 events/request; baseline: nginx 204, same load)"
mkdir -p "$work/ingest"; read -r SITE READ <<<"$(new_site "$work/ingest")"
PORT=$(free_port); start_server "$work/ingest" "$PORT"
run_ingest ingest "http://127.0.0.1:$PORT" "$SITE"
echo "$(peak_rss_kb "$SERVER_PID")" > "$work/ingest.rss"
INGEST_RATE=$("$PY" -c "import json; print(int(json.load(open('$work/ingest.json'))['events_per_second']))")
echo "== freshness at half the measured ingest rate ($((INGEST_RATE / 2)) events/s)"
"$F" loadgen --url "http://127.0.0.1:$PORT" --property "$SITE" --rate $((INGEST_RATE / 2)) \
  --duration "$DUR" --batch 100 --concurrency 8 --probe-key "$READ" --json > "$work/freshness.json"
stop_server
run_ingest ingest-nginx "http://127.0.0.1:$NGINX_PORT" "$SITE" --any-2xx
du -sb "$work/ingest/log" | cut -f1 > "$work/ingest.logbytes"

if [ "$SCALE" = 1 ]; then
  echo "== ingest on one core (server pinned to CPU 0, load on CPU 1)"
  mkdir -p "$work/ingest1"; read -r SITE1 _ <<<"$(new_site "$work/ingest1")"
  PORT=$(free_port); start_server "$work/ingest1" "$PORT" 0
  taskset -c 1 "$F" loadgen --url "http://127.0.0.1:$PORT" --property "$SITE1" --rate 2000000 \
    --duration "$DUR" --batch 100 --concurrency 8 --json > "$work/ingest-1core.json"
  stop_server
fi

echo "== ingest, beacon (one event/request; baseline: nginx 204, same wrk load)"
# 1,000 visitors (client ids) in turn, as browsers would send: one fixed body would put
# every event in one log partition, which spares the server the flushes of the others.
cat > "$work/beacon.lua" <<LUA
local reqs, n = {}, 0
init = function(args)
  for i = 1, 1000 do
    reqs[i] = wrk.format("POST", nil, {["Content-Type"] = "text/plain"},
      '{"tracking_id":"$SITE","client_id":"c' .. i .. '","name":"pageview","url":"https://shop.example/","referrer":"https://www.google.com/"}')
  end
end
request = function()
  n = n % 1000 + 1
  return reqs[n]
end
LUA
mkdir -p "$work/beacon"; read -r BSITE _ <<<"$(new_site "$work/beacon")"
sed -i "s/$SITE/$BSITE/" "$work/beacon.lua"
# One server for every round (a restart would spend the next round catching up on the
# last one's events); it is idle, its processor caught up, while nginx is measured.
PORT=$(free_port); start_server "$work/beacon" "$PORT"
for r in $(seq 1 "$ROUNDS"); do
  wrk -t2 -c64 -d"${DUR}s" -s "$work/beacon.lua" "http://127.0.0.1:$PORT/api/v1/events" > "$work/beacon-footfall-round$r.txt"
  wait_caught_up "$PORT"
  wrk -t2 -c64 -d"${DUR}s" -s "$work/beacon.lua" "http://127.0.0.1:$NGINX_PORT/api/v1/events" > "$work/beacon-nginx-round$r.txt"
done
stop_server

echo "== dashboard queries (and DuckDB / chDB on the same events as Parquet)"
TODAY=$(python3 -c "import datetime as d; print((d.datetime.now(d.timezone.utc)+d.timedelta(minutes=$OFFSET_MIN)).date())")
FROM=$(python3 -c "import datetime as d; print(d.date.fromisoformat('$TODAY')-d.timedelta(days=29))")
END=$(python3 -c "import datetime as d; print(d.datetime.now(d.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))")
for N in $QUERY_SIZES; do
  dir="$work/q$N"; mkdir -p "$dir"
  read -r QSITE QKEY <<<"$(new_site "$dir")"
  "$B" fill --data-dir "$dir" --property "$QSITE" --events "$N" --days 30 --end "$END" --partitions 2
  PORT=$(free_port)
  t0=$(date +%s.%N)
  start_server "$dir" "$PORT"
  wait_caught_up "$PORT"
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)" > "$dir.catchup_seconds"
  "$B" queries --url "http://127.0.0.1:$PORT" --site "$QSITE" --key "$QKEY" --from "$FROM" --to "$TODAY" \
    --iterations "$ITER" > "$work/queries-$N.json"
  echo "$(peak_rss_kb "$SERVER_PID")" > "$work/queries-$N.rss"
  stop_server
  du -sb "$dir/log" | cut -f1 > "$work/queries-$N.logbytes"
  du -sb "$dir/rollups" | cut -f1 > "$work/queries-$N.rollupbytes"
  "$B" csv --property "$QSITE" --events "$N" --days 30 --end "$END" --out "$dir/events.csv"
  "$PY" benches/compare.py --csv "$dir/events.csv" --from "$FROM" --to "$TODAY" \
    --offset-minutes "$OFFSET_MIN" --iterations "$CMP_ITER" > "$work/compare-$N.json"
  rm -f "$dir/events.csv"
done

echo "== report"
"$PY" benches/report.py --work "$work" --mode "$mode" --sizes "$QUERY_SIZES" \
  --command "scripts/bench.sh$([ "$mode" = quick ] && echo ' --quick')"
