#!/usr/bin/env bash
# The columnar path's benchmark (issue 20): builds footfall-bench with the `columnar`
# feature, makes a data set's archive and columnar files, times the columnar query set
# and what making the files costs against processing the same events, then asks DuckDB
# the same questions over the same Parquet files (scripts/bench-deps.sh installs it) and
# compares answers. Writes target/bench/columnar.json.
#
#   scripts/bench-columnar.sh [--events N] [--rounds R]
#
# Not part of CI: DataFusion in an optimised build takes tens of minutes on 2 cores.
# The profile `bench-columnar` is the release profile without whole-program LTO (the
# same build for the processing baseline and the files, so their ratio is fair).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
events=10000000
rounds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
venv=$(scripts/bench-deps.sh | tail -1)
cargo build --profile bench-columnar --locked -q -p footfall-bench --features columnar
out="$root/target/bench"
mkdir -p "$out"
keep=$(mktemp -d)
trap 'rm -rf "$keep"' EXIT
end=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"$root/target/bench-columnar/footfall-bench" columnar --events "$events" --days 30 \
  --end "$end" --rounds "$rounds" --keep "$keep" > "$out/columnar-footfall.json"
"$venv/bin/python" benches/columnar-duckdb.py "$keep" "$rounds" > "$out/columnar-duckdb.json"
python3 - "$out" "$events" <<'PY'
import json, sys
out, events = sys.argv[1], int(sys.argv[2])
ff = json.load(open(f"{out}/columnar-footfall.json"))
dk = json.load(open(f"{out}/columnar-duckdb.json"))
res = {"events": events, "footfall": ff, "duckdb": dk,
       "set_p99_ratio_footfall_over_duckdb": ff["set_p99_ms"] / dk["set_p99_ms"]}
json.dump(res, open(f"{out}/columnar.json", "w"), indent=1)
print(f"columnar set p99 {ff['set_p99_ms']:.1f} ms (DuckDB {dk['set_p99_ms']:.1f} ms, "
      f"answers equal: {dk['all_equal']}); files cost {ff['columnar_over_processing']:.2f}x processing")
print(f"  cold set (resident table made) {ff['cold_set_ms']:.1f} ms; DataFusion alone: set p99 "
      f"{ff['datafusion_set_p99_ms']:.1f} ms (p50 {ff['datafusion_set_p50_ms']:.1f}, "
      f"{ff['datafusion_rounds']} rounds), answers equal: {ff['datafusion_answers_equal']}")
print(f"  executors: {ff['executors']}")
sl = ff["filtered_page_slowest"]
print(f"dashboard page under a source filter, {len(ff['filtered_page'])} queries through the columnar "
      f"engine: slowest p99 {sl['p99_ms']:.1f} ms ({sl['query']})")
for n, q in ff["queries"].items():
    print(f"  {n}: footfall p99 {q['p99_ms']:.1f} ms, duckdb p99 {dk['queries'][n]['p99_ms']:.1f} ms")
print(f"analyst SQL set p99 {ff['sql_set_p99_ms']:.1f} ms (p50 {ff['sql_set_p50_ms']:.1f}); DuckDB "
      f"{dk['sql_set_p99_ms']:.1f} ms (p50 {dk['sql_set_p50_ms']:.1f}); answers equal: {dk['sql_all_equal']}")
for n, q in ff["sql_queries"].items():
    d = dk["sql_queries"][n]
    print(f"  {n}: footfall p50 {q['p50_ms']:.1f} / p99 {q['p99_ms']:.1f} ms, "
          f"duckdb p50 {d['p50_ms']:.1f} / p99 {d['p99_ms']:.1f} ms, equal: {d['equal']}")
PY
