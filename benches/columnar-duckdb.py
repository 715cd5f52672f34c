#!/usr/bin/env python3
"""The columnar query set in DuckDB over the Parquet files Footfall made, timed the same
way, with each answer compared to Footfall's.

    columnar-duckdb.py DIR [ROUNDS]

DIR is `footfall-bench columnar --keep DIR`'s directory: `archive/columns/...` and
`answers.json` (the range, the property and Footfall's answers). Prints one JSON line.
The questions are those of `crates/footfall-bench/src/columnar.rs` (`query_set`), in
SQL over the same columns; ties are broken as Footfall breaks them (visitors
descending, then the dimension values ascending).
"""
import json
import statistics
import sys
import time

import duckdb


def queries(src, lo, hi):
    rng = f"local_date BETWEEN DATE '{lo}' AND DATE '{hi}'"
    return {
        "pages_from_google": f"""
            SELECT event_page, COUNT(DISTINCT visitor) AS v, SUM(CAST(pageview AS BIGINT))
            FROM {src} WHERE visit_source = 'google.com' AND event_page IS NOT NULL AND {rng}
            GROUP BY 1 ORDER BY v DESC, 1 LIMIT 10""",
        "countries_of_matching_pages": f"""
            SELECT visit_country, COUNT(DISTINCT visitor) AS v, SUM(CAST(pageview AS BIGINT))
            FROM {src} WHERE regexp_matches(event_page, '^/products/item-1[0-9]$') AND {rng}
            GROUP BY 1 ORDER BY v DESC, 1 LIMIT 10""",
        "page_by_source": f"""
            SELECT event_page, visit_source, COUNT(DISTINCT visitor) AS v,
                   SUM(CAST(pageview AS BIGINT))
            FROM {src} WHERE event_page IS NOT NULL AND {rng}
            GROUP BY 1, 2 ORDER BY v DESC, 1, 2 LIMIT 10""",
        "signup_visits_by_source": f"""
            SELECT visit_source, COUNT(DISTINCT visitor) AS v, COUNT(*)
            FROM {src}
            WHERE visit_first AND visit_local_date BETWEEN DATE '{lo}' AND DATE '{hi}'
              AND visit_id IN (SELECT visit_id FROM {src} WHERE event_name = 'Signup')
            GROUP BY 1 ORDER BY v DESC, 1 LIMIT 10""",
    }


# The `visits` view as Footfall defines it (footfall-columnar src/sql.rs, VISITS_VIEW).
VISITS_VIEW = """CREATE VIEW visits AS SELECT visit_id, visitor,
    visit_local_date AS local_date, visit_local_ts AS local_ts, visit_pageviews AS pageviews,
    visit_events AS events, visit_bounce AS bounce, visit_duration_ms AS duration_ms,
    visit_entry_page AS entry_page, visit_exit_page AS exit_page,
    visit_entry_page_hostname AS entry_page_hostname,
    visit_exit_page_hostname AS exit_page_hostname,
    visit_source AS source, visit_referrer AS referrer, visit_channel AS channel,
    visit_utm_source AS utm_source, visit_utm_medium AS utm_medium,
    visit_utm_campaign AS utm_campaign, visit_utm_content AS utm_content,
    visit_utm_term AS utm_term, visit_device AS device, visit_browser AS browser,
    visit_browser_version AS browser_version, visit_os AS os, visit_os_version AS os_version,
    visit_country AS country, visit_region AS region, visit_city AS city
    FROM events WHERE visit_first"""


def norm(x):
    """One cell, comparable across the engines: dates and numbers as text of one form."""
    if isinstance(x, (int, float)) or (isinstance(x, str) and x.lstrip("-").isdigit()):
        return float(x)
    return str(x)


def main():
    root = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    meta = json.load(open(f"{root}/answers.json"))
    src = (
        f"read_parquet('{root}/archive/columns/property={meta['property']}/date=*/events.parquet')"
    )
    con = duckdb.connect()
    qs = queries(src, meta["from"], meta["to"])
    times = {name: [] for name in qs}
    sets = []
    equal = {}
    for r in range(rounds + 1):
        start = time.perf_counter()
        for name, sql in qs.items():
            t = time.perf_counter()
            rows = con.execute(sql).fetchall()
            if r == 0:
                # Footfall's rows: dimensions then metrics, in its order.
                want = [
                    list(x["dimensions"]) + list(x["metrics"]) for x in meta["answers"][name]
                ]
                got = [list(row) for row in rows]
                equal[name] = got == want
                if not equal[name]:
                    print(f"{name}: duckdb {got[:3]} footfall {want[:3]}", file=sys.stderr)
            else:
                times[name].append((time.perf_counter() - t) * 1000)
        if r > 0:
            sets.append((time.perf_counter() - start) * 1000)

    def p(xs, q):
        xs = sorted(xs)
        return xs[round((len(xs) - 1) * q)] if xs else 0.0

    # The analyst's SQL (the texts Footfall ran, from answers.json) over the same tables:
    # `events` the files, `visits` the view Footfall defines (footfall-columnar sql.rs).
    # Footfall's statement read the day files of [from, to]; so does this view.
    con.execute(f"CREATE VIEW events AS SELECT * FROM {src} "
                f"WHERE local_date BETWEEN DATE '{meta['from']}' AND DATE '{meta['to']}'")
    con.execute(VISITS_VIEW)
    sql_times = {name: [] for name in meta["sql"]}
    sql_sets = []
    sql_equal = {}
    for r in range(rounds + 1):
        start = time.perf_counter()
        for name, sql in meta["sql"].items():
            t = time.perf_counter()
            rows = con.execute(sql).fetchall()
            if r == 0:
                got = [[norm(x) for x in row] for row in rows]
                want = [[norm(x) for x in row] for row in meta["sql_answers"][name]]
                sql_equal[name] = got == want
                if not sql_equal[name]:
                    print(f"{name}: duckdb {got[:3]} footfall {want[:3]}", file=sys.stderr)
            else:
                sql_times[name].append((time.perf_counter() - t) * 1000)
        if r > 0:
            sql_sets.append((time.perf_counter() - start) * 1000)

    print(json.dumps({
        "rounds": rounds,
        "set_p50_ms": p(sets, 0.5),
        "set_p99_ms": p(sets, 0.99),
        "queries": {n: {"p50_ms": p(t, 0.5), "p99_ms": p(t, 0.99), "equal": equal[n]}
                    for n, t in times.items()},
        "all_equal": all(equal.values()),
        "median_set_ms": statistics.median(sets) if sets else 0.0,
        "sql_set_p50_ms": p(sql_sets, 0.5),
        "sql_set_p99_ms": p(sql_sets, 0.99),
        "sql_queries": {n: {"p50_ms": p(t, 0.5), "p99_ms": p(t, 0.99), "equal": sql_equal[n]}
                        for n, t in sql_times.items()},
        "sql_all_equal": all(sql_equal.values()),
    }))


if __name__ == "__main__":
    main()
