"""Turns the measurements of scripts/bench.sh into a results JSON file and the
BENCHMARKS.md table (with benches/NOTES.md, the hand-written analysis, appended).
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_num(path):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def wrk_rps(path):
    try:
        text = open(path).read()
    except OSError:
        return None
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return float(m.group(1)) if m else None, int(non2xx.group(1)) if non2xx else 0


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(open("/proc/meminfo").readline().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError):
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem} RAM, {platform.system()} {platform.release()}"


def within(a, b, rel):
    return b == 0 and a == 0 or (b != 0 and abs(a - b) / abs(b) <= rel)


# Standard error of one HyperLogLog estimate at precision 14 (docs/METRICS.md).
HLL_SE = 1.04 / 2 ** 7


def visitors_ok(a, b):
    """Exact up to the sketch's exact limit; above it within four standard errors (3.2%).

    Each run compares about 40 estimated counts per engine, so the bound is for the
    largest of 40 errors, not for one: at 2.5 standard errors (the 2% used before) a
    correct sketch fails a run by chance about once in three (it did: one day of 30 at
    +2.05% while the 30 days' errors had mean +0.03% and deviation 0.76%).
    """
    if b <= 2048:
        return a == b
    return within(a, b, 4 * HLL_SE)


def compare_answers(ff, other):
    """Counts must be equal; visitors exact up to 2,048, else within the HLL bound."""
    problems = []
    checked = 0

    def rows(ans):
        return {tuple(r["dimensions"]) if isinstance(r, dict) else tuple(r[0]):
                (r["metrics"] if isinstance(r, dict) else r[1]) for r in ans}

    # aggregate: visitors, visits, pageviews, bounce_rate, visit_duration
    a, b = ff["aggregate"][0]["metrics"], other["aggregate"][0][1]
    checked += 5
    if not visitors_ok(a[0], b[0]):
        problems.append(f"aggregate visitors {a[0]} vs {b[0]}")
    for i, n in [(1, "visits"), (2, "pageviews"), (3, "bounce_rate"), (4, "visit_duration")]:
        if a[i] != b[i]:
            problems.append(f"aggregate {n} {a[i]} vs {b[i]}")
    for name, exact_idx in [("timeseries", 1), ("top_pages", 1), ("top_sources", 1)]:
        fr, orr = rows(ff[name]), rows(other[name])
        common = set(fr) & set(orr)
        if name == "timeseries" and set(fr) != set(orr):
            problems.append(f"timeseries days differ: {sorted(set(fr) ^ set(orr))}")
        for k in common:
            checked += 2
            if not visitors_ok(fr[k][0], orr[k][0]):
                problems.append(f"{name} {k} visitors {fr[k][0]} vs {orr[k][0]}")
            if fr[k][exact_idx] != orr[k][exact_idx]:
                problems.append(f"{name} {k} count {fr[k][exact_idx]} vs {orr[k][exact_idx]}")
        if name != "timeseries" and len(common) < min(len(fr), len(orr)):
            # Near-ties in estimated visitors may swap the tenth place; not an error.
            pass
    return checked, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()
    w = a.work
    sizes = [int(s) for s in a.sizes.split()]
    # The run's time is when its work directory was last written (so re-rendering the
    # report later, e.g. after editing NOTES.md, keeps the time of the measurements).
    when = max(os.path.getmtime(os.path.join(a.work, f)) for f in os.listdir(a.work))
    res = {"mode": a.mode,
           "when": dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "command": a.command}

    # Processing: the round with the median throughput (its own decode-only baseline
    # with it).
    proc_rounds = [r for r in (load(f"{w}/process-round{i}.json") for i in range(1, 10)) if r]
    proc_rounds_sorted = sorted(proc_rounds, key=lambda r: r["process_events_per_second"])
    proc = proc_rounds_sorted[len(proc_rounds_sorted) // 2] if proc_rounds else {}
    proc1 = load(f"{w}/process-1core.json")
    rep = load(f"{w}/reprocess.json", {})
    ing = load(f"{w}/ingest.json", {})
    ing_ng = load(f"{w}/ingest-nginx.json", {})
    ing1 = load(f"{w}/ingest-1core.json")
    fresh = load(f"{w}/freshness.json", {})
    # Beacon: rounds alternating Footfall and nginx; the medians of each are compared.
    b_rounds = []
    for i in range(1, 10):
        ff = wrk_rps(f"{w}/beacon-footfall-round{i}.txt")
        ng = wrk_rps(f"{w}/beacon-nginx-round{i}.txt")
        if ff and ng and ff[0] and ng[0]:
            b_rounds.append({"footfall_rps": ff[0], "footfall_non_2xx": ff[1], "nginx_rps": ng[0]})
    b_ff = statistics.median(r["footfall_rps"] for r in b_rounds) if b_rounds else None
    b_ng = statistics.median(r["nginx_rps"] for r in b_rounds) if b_rounds else None
    b_ff_err = sum(r["footfall_non_2xx"] for r in b_rounds)
    res.update(reprocessing=rep, processing=proc, processing_rounds=proc_rounds, processing_1core=proc1, ingest=ing,
               ingest_nginx=ing_ng, ingest_1core=ing1, freshness=fresh,
               beacon={"footfall_rps": b_ff, "footfall_non_2xx": b_ff_err, "nginx_rps": b_ng, "rounds": b_rounds})
    q = {}
    for n in sizes:
        qq = load(f"{w}/queries-{n}.json", {})
        cmp_ = load(f"{w}/compare-{n}.json", {})
        entry = {"footfall": {k: qq.get(k) for k in ("set_p50_ms", "set_p99_ms", "per_query", "iterations")},
                 "catchup_seconds": read_num(f"{w}/q{n}.catchup_seconds"),
                 "peak_rss_kb": read_num(f"{w}/queries-{n}.rss"),
                 "log_bytes": read_num(f"{w}/queries-{n}.logbytes"),
                 "rollup_bytes": read_num(f"{w}/queries-{n}.rollupbytes")}
        for eng in ("duckdb", "chdb"):
            if eng in cmp_ and qq.get("answers"):
                checked, problems = compare_answers(qq["answers"], cmp_[eng]["answers"])
                entry[eng] = {"set_p50_ms": cmp_[eng]["set_p50_ms"], "set_p99_ms": cmp_[eng]["set_p99_ms"],
                              "iterations": cmp_[eng]["iterations"], "values_checked": checked,
                              "mismatches": problems}
        q[str(n)] = entry
    res["queries"] = q
    res["ingest_peak_rss_kb"] = read_num(f"{w}/ingest.rss")
    os.makedirs("target/bench", exist_ok=True)
    with open(f"target/bench/results-{a.mode}.json", "w") as f:
        json.dump(res, f, indent=2)

    # --- the table ---
    def fmt(x, nd=0):
        return "n/a" if x is None else f"{x:,.{nd}f}"

    def ratio(x, y):
        return None if not x or not y else x / y

    def yes(ok):
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    big = str(sizes[-1])
    qb = q.get(big, {})
    ffq = (qb.get("footfall") or {})
    rows = []
    pe = proc.get("process_events_per_second")
    proc_note = ""
    if len(proc_rounds) > 1:
        proc_note = (f"; median of {len(proc_rounds)} rounds: "
                     + ", ".join(f"{fmt(r['process_events_per_second'])} ({fmt(r['ratio_to_decode_only'], 3)}×)"
                                 for r in proc_rounds))
    rows.append(("processing (sessionise + roll up from a pre-filled log, no HTTP)",
                 f"`footfall-bench process --events {proc.get('events')}`",
                 f"{fmt(pe)} events/s on one core (the processor is one thread){proc_note}",
                 f"decode-only pass over the same log: {fmt(proc.get('decode_only_events_per_second'))} events/s",
                 f"{fmt(ratio(pe, proc.get('decode_only_events_per_second')), 3)}× of decode-only",
                 "≥ 1,000,000 events/s per core", yes(pe and pe >= 1e6)))
    rr = rep.get("reprocess_events_per_second")
    rows.append(("reprocessing (Avro archive → sessions → rollups), one large property",
                 f"`footfall-bench reprocess --events {rep.get('events')}`",
                 f"{fmt(rr)} events/s (read+decode {fmt(rep.get('read_decode_seconds'), 2)} s, rebuild {fmt(rep.get('rebuild_seconds'), 2)} s); archive {fmt(rep.get('archive_bytes_per_event'), 1)} bytes/event; sealing {fmt(rep.get('seal_events_per_second'))} events/s",
                 f"live processing of the same size: {fmt(pe)} events/s",
                 f"{fmt(ratio(rr, pe), 2)}× processing", "≥ 500,000 events/s on 2 cores", yes(rr and rr >= 500000)))
    ir, nr = ing.get("events_per_second"), ing_ng.get("events_per_second")
    rows.append(("ingest, batched (100 events/request, durable 2xx)",
                 "`footfall loadgen --batch 100 --concurrency 8 --rate 2000000`",
                 f"{fmt(ir)} events/s, {fmt(ing.get('errors'))} errors, request p99 {fmt(ing.get('latency_ms_p99'), 1)} ms",
                 f"nginx answering 204 to the same load: {fmt(nr)} events/s",
                 f"{fmt(ratio(ir, nr), 2)}× nginx", "≥ 300,000 events/s (load generator included)",
                 yes(ir and ir >= 300000)))
    b_note = ""
    if len(b_rounds) > 1:
        b_note = (f"; medians of {len(b_rounds)} alternating rounds (Footfall / nginx): "
                  + ", ".join(f"{fmt(r['footfall_rps'])} / {fmt(r['nginx_rps'])}" for r in b_rounds))
    rows.append(("ingest, beacon (1 event/request)", "`wrk -t2 -c64` POST text/plain, 1,000 client ids in turn",
                 f"{fmt(b_ff)} requests/s ({b_ff_err} non-2xx){b_note}", f"nginx 204: {fmt(b_ng)} requests/s",
                 f"{fmt(ratio(b_ff, b_ng), 2)}× nginx", "≥ 0.5× nginx", yes(b_ff and b_ng and b_ff / b_ng >= 0.5)))
    fr = fresh.get("freshness", {})
    rows.append(("freshness (2xx → visible in /api/v2/query) at half the max ingest rate",
                 "`footfall loadgen --probe-key …`",
                 f"p50 {fmt(fr.get('p50_ms'), 1)} ms, p99 {fmt(fr.get('p99_ms'), 1)} ms over {fr.get('probes')} probes ({fr.get('not_visible')} not visible) at {fmt(fresh.get('events_per_second'))} events/s",
                 "—", "—", "p99 ≤ 2 s", yes(fr.get("p99_ms") is not None and fr.get("p99_ms") <= 2000 and not fr.get("not_visible"))))
    rows.append((f"dashboard query set ({int(big):,} events over 30 days): aggregate + 30-day series + top 10 pages + top 10 sources",
                 "`footfall-bench queries` over HTTP",
                 f"set p50 {fmt(ffq.get('set_p50_ms'), 2)} ms, p99 {fmt(ffq.get('set_p99_ms'), 2)} ms ({ffq.get('iterations')} runs)",
                 "—", "—", "p99 ≤ 20 ms", yes(ffq.get("set_p99_ms") is not None and ffq["set_p99_ms"] <= 20)))
    for eng, label in (("duckdb", "DuckDB"), ("chdb", "ClickHouse (chDB)")):
        e = qb.get(eng)
        if not e:
            continue
        r = ratio(e["set_p50_ms"], ffq.get("set_p50_ms"))
        rows.append((f"vs {label}, same questions over the same events as Parquet",
                     "`benches/compare.py`",
                     f"{label}: set p50 {fmt(e['set_p50_ms'], 1)} ms; answers: {e['values_checked']} values compared, {len(e['mismatches'])} mismatches",
                     f"{label} is the baseline", f"Footfall {fmt(r, 0)}× faster",
                     "≥ 10× faster, same answers", yes(r and r >= 10 and not e["mismatches"])))
    rss_i, rss_q = res.get("ingest_peak_rss_kb"), qb.get("peak_rss_kb")
    rows.append(("memory", "VmHWM of `serve`; processor state from `footfall-bench process`",
                 f"peak RSS {fmt((rss_i or 0) / 1024)} MiB during ingest, {fmt((rss_q or 0) / 1024)} MiB serving {int(big):,} events; "
                 f"{fmt(proc.get('state_bytes_per_open_visit'))} bytes of processor state per open visit ({fmt(proc.get('open_visits'))} open)",
                 "—", "—", "written down; visit state ≤ 256 bytes",
                 yes(proc.get("state_bytes_per_open_visit") is not None and proc["state_bytes_per_open_visit"] <= 256)))
    lb, rb = qb.get("log_bytes"), qb.get("rollup_bytes")
    rows.append(("storage", "`du -sb` of log/ and rollups/",
                 f"log {fmt((lb or 0) / int(big), 1)} bytes/event; rollups {fmt((rb or 0) / int(big), 1)} bytes/event ({int(big):,} events)",
                 "—", "—", "written down", "written down"))

    lines = []
    title = "# Benchmarks" if a.mode == "full" else "# Benchmarks (quick mode: tiny sizes, figures not meaningful)"
    lines += [title, "",
              f"Measured {res['when']} on {res['machine']} by `{a.command}`.",
              "Every figure below comes from that one run; each baseline was measured in the same run on the same machine.",
              "", "| what | how | result | baseline (same run) | ratio | target | |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    lines += ["", "## Scale", "", "| what | 1 core | 2 cores |", "|---|---|---|"]
    if proc1:
        lines.append(f"| processing, events/s | {fmt(proc1.get('process_events_per_second'))} | {fmt(pe)} |")
    if ing1:
        lines.append(f"| ingest batched, events/s (server pinned to one core; load on the other) | {fmt(ing1.get('events_per_second'))} | {fmt(ir)} (server and load share both cores) |")
    lines += ["", "| events over 30 days | query set p50 | query set p99 | catch-up after start (processing in the server) | peak RSS | log bytes/event | rollup bytes/event |",
              "|---|---|---|---|---|---|---|"]
    for n in sizes:
        e = q[str(n)]
        f = e["footfall"]
        lines.append(f"| {n:,} | {fmt(f.get('set_p50_ms'), 2)} ms | {fmt(f.get('set_p99_ms'), 2)} ms | "
                     f"{fmt(e.get('catchup_seconds'), 1)} s | {fmt((e.get('peak_rss_kb') or 0) / 1024)} MiB | "
                     f"{fmt((e.get('log_bytes') or 0) / n, 1)} | {fmt((e.get('rollup_bytes') or 0) / n, 1)} |")
    lines += ["", "Per query (largest size), p50 / p99 ms:", ""]
    for k, v in (ffq.get("per_query") or {}).items():
        lines.append(f"- {k}: {fmt(v['p50_ms'], 2)} / {fmt(v['p99_ms'], 2)}")
    for eng in ("duckdb", "chdb"):
        e = qb.get(eng)
        if e and e["mismatches"]:
            lines += ["", f"Mismatches against {eng}:", ""] + [f"- {m}" for m in e["mismatches"][:20]]
    # The distributed mode's rows come from their own run (scripts/bench-distributed.sh).
    dist = "benches/distributed.md"
    if os.path.exists(dist):
        lines += ["", "<!-- distributed:begin -->", "## Distributed mode", "",
                  open(dist).read().strip(), "<!-- distributed:end -->"]
    notes = "benches/NOTES.md"
    if os.path.exists(notes):
        lines += ["", open(notes).read().strip()]
    text = "\n".join(lines) + "\n"
    target = "BENCHMARKS.md" if a.mode == "full" else "target/bench/BENCHMARKS-quick.md"
    with open(target, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
