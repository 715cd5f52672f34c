"""The dashboard questions answered by DuckDB and by ClickHouse (chDB, in-process) over the
same events stored as Parquet: the baseline Footfall's query latency is compared with.

Usage: compare.py --csv events.csv --from 2026-10-28 --to 2026-11-26 --offset-minutes 330 \
           [--iterations 5] [--engines duckdb,chdb]
Prints one JSON object: per engine, the dashboard-set times and the answers.
"""
import argparse
import datetime as dt
import json
import os
import statistics
import time

GAP_MS = 30 * 60 * 1000


def bounds(frm, to, offset_min):
    """UTC millisecond bounds [lo, hi] of local dates frm..to at a fixed UTC offset."""
    off = dt.timedelta(minutes=offset_min)
    lo = dt.datetime.fromisoformat(frm).replace(tzinfo=dt.timezone.utc) - off
    hi = dt.datetime.fromisoformat(to).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1) - off
    return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000) - 1


def duckdb_queries(src, lo, hi, off_ms):
    visits = f"""
      visits AS (
        SELECT visitor, min(ts_ms) AS start, max(ts_ms) - min(ts_ms) AS dur,
               count(*) FILTER (WHERE name = 'pageview') AS pvs,
               count(*) FILTER (WHERE name <> 'pageview') AS customs,
               arg_min(source, ts_ms) AS source
        FROM (SELECT *, sum(nv) OVER (PARTITION BY visitor ORDER BY ts_ms ROWS UNBOUNDED PRECEDING) AS vno
              FROM (SELECT *, CASE WHEN ts_ms - lag(ts_ms) OVER (PARTITION BY visitor ORDER BY ts_ms) < {GAP_MS}
                                   THEN 0 ELSE 1 END AS nv FROM {src}))
        GROUP BY visitor, vno)"""
    rng = f"ts_ms BETWEEN {lo} AND {hi}"
    vr = f"start BETWEEN {lo} AND {hi}"
    return {
        "aggregate": f"""WITH {visits.strip()}
          SELECT (SELECT count(DISTINCT visitor) FROM {src} WHERE {rng}),
                 (SELECT count(*) FROM visits WHERE {vr}),
                 (SELECT count(*) FROM {src} WHERE name = 'pageview' AND {rng}),
                 (SELECT round(100.0 * avg(CASE WHEN pvs = 1 AND customs = 0 THEN 1 ELSE 0 END)) FROM visits WHERE {vr}),
                 (SELECT round(avg(dur) / 1000.0) FROM visits WHERE {vr})""",
        "timeseries": f"""SELECT strftime(make_timestamp((ts_ms + {off_ms}) * 1000), '%Y-%m-%d') AS d,
                 count(DISTINCT visitor), count(*) FILTER (WHERE name = 'pageview')
          FROM {src} WHERE {rng} GROUP BY d ORDER BY d""",
        "top_pages": f"""SELECT page, count(DISTINCT visitor) AS v, count(*) FILTER (WHERE name = 'pageview')
          FROM {src} WHERE {rng} GROUP BY page ORDER BY v DESC, page LIMIT 10""",
        "top_sources": f"""WITH {visits.strip()}
          SELECT source, count(DISTINCT visitor) AS v, count(*) FROM visits WHERE {vr}
          GROUP BY source ORDER BY v DESC, source LIMIT 10""",
    }


def clickhouse_queries(src, lo, hi, off_ms):
    visits = f"""
      visits AS (
        SELECT visitor, min(ts_ms) AS start, max(ts_ms) - min(ts_ms) AS dur,
               countIf(name = 'pageview') AS pvs, countIf(name != 'pageview') AS customs,
               argMin(source, ts_ms) AS source
        FROM (SELECT *, sum(nv) OVER (PARTITION BY visitor ORDER BY ts_ms ROWS UNBOUNDED PRECEDING) AS vno
              FROM (SELECT *, if(ts_ms - lagInFrame(ts_ms, 1, toInt64(-100000000000)) OVER
                                   (PARTITION BY visitor ORDER BY ts_ms ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) < {GAP_MS},
                                 0, 1) AS nv FROM {src}))
        GROUP BY visitor, vno)"""
    rng = f"ts_ms BETWEEN {lo} AND {hi}"
    vr = f"start BETWEEN {lo} AND {hi}"
    return {
        "aggregate": f"""WITH {visits.strip()}
          SELECT (SELECT uniqExact(visitor) FROM {src} WHERE {rng}),
                 (SELECT count() FROM visits WHERE {vr}),
                 (SELECT count() FROM {src} WHERE name = 'pageview' AND {rng}),
                 (SELECT round(100.0 * avg(if(pvs = 1 AND customs = 0, 1, 0))) FROM visits WHERE {vr}),
                 (SELECT round(avg(dur) / 1000.0) FROM visits WHERE {vr})""",
        "timeseries": f"""SELECT formatDateTime(toDateTime(intDiv(ts_ms + {off_ms}, 1000), 'UTC'), '%Y-%m-%d') AS d,
                 uniqExact(visitor), countIf(name = 'pageview')
          FROM {src} WHERE {rng} GROUP BY d ORDER BY d""",
        "top_pages": f"""SELECT page, uniqExact(visitor) AS v, countIf(name = 'pageview')
          FROM {src} WHERE {rng} GROUP BY page ORDER BY v DESC, page LIMIT 10""",
        "top_sources": f"""WITH {visits.strip()}
          SELECT source, uniqExact(visitor) AS v, count() FROM visits WHERE {vr}
          GROUP BY source ORDER BY v DESC, source LIMIT 10""",
    }


def shape(name, rows):
    """Footfall's answer shape: [[dimensions...], [metrics...]] rows."""
    if name == "aggregate":
        return [[[], [int(x) for x in rows[0]]]]
    return [[[str(r[0])], [int(x) for x in r[1:]]] for r in rows]


def run(engine, parquet, lo, hi, off_ms, iterations):
    if engine == "duckdb":
        import duckdb
        con = duckdb.connect()
        qs = duckdb_queries(f"read_parquet('{parquet}')", lo, hi, off_ms)
        execute = lambda sql: con.execute(sql).fetchall()
    else:
        import chdb
        qs = clickhouse_queries(f"file('{parquet}', Parquet)", lo, hi, off_ms)

        def execute(sql):
            res = chdb.query(sql, "JSONCompact")
            return json.loads(res.bytes() if hasattr(res, "bytes") else str(res))["data"]
    times, answers = [], {}
    for i in range(iterations + 1):
        t0 = time.perf_counter()
        for name, sql in qs.items():
            rows = execute(sql)
            if i == 0:
                answers[name] = shape(name, rows)
        if i > 0:  # the first round warms caches
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"set_p50_ms": statistics.median(times), "set_p99_ms": times[-1], "iterations": iterations, "answers": answers}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--from", dest="frm", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--offset-minutes", type=int, default=330)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--engines", default="duckdb,chdb")
    a = ap.parse_args()
    import duckdb
    parquet = os.path.splitext(a.csv)[0] + ".parquet"
    duckdb.execute(
        f"""COPY (SELECT * FROM read_csv('{a.csv}', header = true,
              columns = {{'ts_ms': 'BIGINT', 'visitor': 'UBIGINT', 'name': 'VARCHAR', 'page': 'VARCHAR', 'source': 'VARCHAR'}}))
            TO '{parquet}' (FORMAT parquet)"""
    )
    lo, hi = bounds(a.frm, a.to, a.offset_minutes)
    out = {"parquet_bytes": os.path.getsize(parquet)}
    for e in a.engines.split(","):
        out[e] = run(e, parquet, lo, hi, a.offset_minutes * 60000, a.iterations)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
