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
        # Goal "Signup" (the event): converted visitors by their visit's source, and the
        # share of all the range's visitors (docs/METRICS.md, conversion_rate).
        "signup_conversion_by_source": f"""
            SELECT visit_source, COUNT(DISTINCT visitor) AS v,
                   ROUND(100.0 * COUNT(DISTINCT visitor)
                         / (SELECT COUNT(DISTINCT visitor) FROM {src} WHERE {rng}), 2)
            FROM {src} WHERE event_name = 'Signup' AND {rng}
            GROUP BY 1 ORDER BY v DESC, 1 LIMIT 10""",
        # Goals "Visit /", "Visit /products/**", "Visit /pricing", "Signup" in order within
        # a visit, each step by an event later in the visit than the step before
        # (docs/METRICS.md, Funnels): visitors per step.
        "funnel_4_steps": f"""
            WITH base AS (
              SELECT visit_id, visitor, visit_seq AS seq,
                     pageview AND regexp_matches(event_page, '^/$') AS s0,
                     pageview AND regexp_matches(event_page, '^/products/.*$') AS s1,
                     pageview AND regexp_matches(event_page, '^/pricing$') AS s2,
                     event_name = 'Signup' AS s3
              FROM {src} WHERE {rng}),
            f0 AS (SELECT visit_id, MIN(seq) AS t FROM base WHERE s0 GROUP BY 1),
            f1 AS (SELECT b.visit_id, MIN(b.seq) AS t FROM base b JOIN f0 USING (visit_id)
                   WHERE b.s1 AND b.seq > f0.t GROUP BY 1),
            f2 AS (SELECT b.visit_id, MIN(b.seq) AS t FROM base b JOIN f1 USING (visit_id)
                   WHERE b.s2 AND b.seq > f1.t GROUP BY 1),
            f3 AS (SELECT b.visit_id, MIN(b.seq) AS t FROM base b JOIN f2 USING (visit_id)
                   WHERE b.s3 AND b.seq > f2.t GROUP BY 1),
            vis AS (SELECT DISTINCT visit_id, visitor FROM base)
            SELECT 1, COUNT(DISTINCT visitor) FROM f0 JOIN vis USING (visit_id)
            UNION ALL SELECT 2, COUNT(DISTINCT visitor) FROM f1 JOIN vis USING (visit_id)
            UNION ALL SELECT 3, COUNT(DISTINCT visitor) FROM f2 JOIN vis USING (visit_id)
            UNION ALL SELECT 4, COUNT(DISTINCT visitor) FROM f3 JOIN vis USING (visit_id)
            ORDER BY 1""",
    }


def footfall_rows(answer):
    """Footfall's answer as rows: dimensions then metrics; a funnel's as (step, visitors)."""
    rows = []
    for x in answer:
        if "steps" in x:
            rows += [list(x["dimensions"]) + [s["step"], s["visitors"]] for s in x["steps"]]
        else:
            rows.append(list(x["dimensions"]) + list(x["metrics"]))
    return rows


def same(a, b):
    """Rows equal, numbers to 2 decimals (rates are rounded by each engine)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb):
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if abs(float(x) - float(y)) > 0.0051:
                    return False
            elif x != y:
                return False
    return True


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
                want = footfall_rows(meta["answers"][name])
                got = [list(row) for row in rows]
                equal[name] = same(got, want)
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
