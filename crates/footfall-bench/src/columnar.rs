//! `footfall-bench columnar`: the columnar path measured (issue 20's speed targets).
//!
//! One run: fill a log with the data set, seal it into a real archive, then
//! - processing: rebuild the rollups from the archive (the baseline), and make the
//!   columnar files from the same archive (`Columns::refresh`); the ratio of the two
//!   times is what the files cost against processing;
//! - queries: the columnar query set through `ColumnarEngine`, `rounds` times, p50/p99
//!   per query and per set; the answers are written out (`--answers`) so that another
//!   engine (DuckDB, `benches/columnar-duckdb.py`) can be checked against them over the
//!   same Parquet files;
//! - SQL: five analyst questions ([`ANALYST_SQL`]) through the SQL API's engine path,
//!   timed the same way, and answered again by DuckDB over the same files.

use std::sync::Arc;
use std::time::Instant;

use footfall_columnar::{ColumnarEngine, Columns};
use footfall_event::goal::Goal;
use footfall_processor::PropertySettings;
use serde_json::{json, Value};

/// The columnar query set: what the rollups cannot answer. Each is named, with its
/// request; `benches/columnar-duckdb.py` holds the same questions in SQL.
pub fn query_set(site: &str, from: &str, to: &str) -> Vec<(&'static str, Value)> {
    let range = json!([from, to]);
    vec![
        (
            "pages_from_google",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "pageviews"],
                   "dimensions": ["event:page"], "filters": [["is", "visit:source", ["google.com"]]],
                   "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            "countries_of_matching_pages",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "pageviews"],
                   "dimensions": ["visit:country"], "filters": [["matches", "event:page", ["^/products/item-1[0-9]$"]]],
                   "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            "page_by_source",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "pageviews"],
                   "dimensions": ["event:page", "visit:source"],
                   "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            "signup_visits_by_source",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "visits"],
                   "dimensions": ["visit:source"], "filters": [["has_done", ["is", "event:name", ["Signup"]]]],
                   "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            "signup_conversion_by_source",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "conversion_rate"],
                   "dimensions": ["visit:source"], "filters": [["is", "event:goal", ["Signup"]]],
                   "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            // A funnel request (`POST /api/v2/funnel`): it has steps.
            "funnel_4_steps",
            json!({"site_id": site, "date_range": range,
                   "steps": ["Visit /", "Visit /products/**", "Visit /pricing", "Signup"]}),
        ),
    ]
}

/// The property's goals the set's conversion and funnel read (the data set's home page,
/// product pages, pricing page and sign-ups).
pub fn goals() -> Vec<Goal> {
    vec![
        Goal::page("/"),
        Goal::page("/products/**"),
        Goal::page("/pricing"),
        Goal::event("Signup", Default::default()),
    ]
}

/// One question of the set through the engine: a funnel when it has steps, else a query.
async fn ask(
    engine: &ColumnarEngine,
    q: &Value,
    tz: chrono_tz::Tz,
    range: (chrono::NaiveDate, chrono::NaiveDate),
) -> anyhow::Result<Value> {
    let answer = if q.get("steps").is_some() {
        let mut req: footfall_query::FunnelRequest = serde_json::from_value(q.clone())?;
        req.goals = goals();
        engine.funnel(&req, tz, range).await
    } else {
        let mut req: footfall_query::QueryRequest = serde_json::from_value(q.clone())?;
        req.goals = goals();
        engine.execute(&req, tz, range).await
    };
    answer.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Five questions an analyst asks in SQL (issue 21), in SQL both engines take: through
/// `ColumnarEngine::sql` (what `POST /api/v1/sql` and the wire protocol run) here, and in
/// DuckDB over the same files with the same `events` and `visits` (the script reads
/// these texts from `answers.json`, so each question is written once).
pub const ANALYST_SQL: &[(&str, &str)] = &[
    (
        "daily_traffic",
        "SELECT local_date, COUNT(DISTINCT visitor) AS visitors, \
         SUM(CASE WHEN pageview THEN 1 ELSE 0 END) AS pageviews, COUNT(*) AS events \
         FROM events GROUP BY local_date ORDER BY local_date",
    ),
    (
        "landing_pages_bounce",
        "SELECT entry_page, COUNT(*) AS visits, \
         SUM(CASE WHEN bounce THEN 1 ELSE 0 END) AS bounces, SUM(duration_ms) AS duration_ms \
         FROM visits GROUP BY entry_page ORDER BY visits DESC, entry_page LIMIT 20",
    ),
    (
        "channels_and_sources",
        "SELECT channel, source, COUNT(*) AS visits, COUNT(DISTINCT visitor) AS visitors, \
         SUM(pageviews) AS pageviews FROM visits GROUP BY channel, source \
         ORDER BY visits DESC, channel, source LIMIT 20",
    ),
    (
        "signup_conversion_by_device",
        "SELECT v.device, COUNT(*) AS visits, COUNT(s.visit_id) AS converted \
         FROM visits v LEFT JOIN (SELECT DISTINCT visit_id FROM events \
         WHERE event_name = 'Signup') s ON s.visit_id = v.visit_id \
         GROUP BY v.device ORDER BY visits DESC, v.device",
    ),
    (
        "top_pages_per_visitor",
        "SELECT event_page, COUNT(*) AS pageviews, COUNT(DISTINCT visitor) AS visitors, \
         COUNT(DISTINCT visit_id) AS visits FROM events WHERE pageview \
         GROUP BY event_page ORDER BY pageviews DESC, event_page LIMIT 25",
    ),
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub struct Args<'a> {
    pub data: &'a crate::DataArgs,
    pub partitions: u32,
    pub timezone: &'a str,
    pub rounds: usize,
    /// Where the Parquet files and the answers stay for the DuckDB run.
    pub keep: std::path::PathBuf,
}

pub fn run(a: Args<'_>) -> anyhow::Result<()> {
    let (dir, log) = crate::temp_log(a.partitions)?;
    let spec = a.data.spec()?;
    let n = crate::fill(log.as_ref(), &spec)?;
    std::fs::create_dir_all(&a.keep)?;
    let archive = footfall_archive::Archive::local(a.keep.join("archive"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut archiver =
        footfall_archive::Archiver::open(archive.clone(), log.clone(), dir.path().join("state"))?;
    rt.block_on(archiver.seal())?;
    let tz: chrono_tz::Tz = a.timezone.parse().map_err(|e| anyhow::anyhow!("{e}"))?;

    // Baseline: processing the same events (read the archive back, rebuild rollups).
    let t = Instant::now();
    let files = rt.block_on(archive.list(Some(&spec.property), None))?;
    let input = rt.block_on(archive.read_for_rebuild(
        &files,
        a.partitions as usize,
        2,
        |_| true,
        |_, _| {},
    ))?;
    let (_state, rollups) = footfall_processor::rebuild_parallel(
        input.partitions(),
        |p, f| input.for_each(p, f),
        PropertySettings { tz, gap_ms: None },
        footfall_processor::SessionRules::default(),
    );
    let process_s = t.elapsed().as_secs_f64();
    std::hint::black_box(rollups);
    drop(input);

    // The columnar files from the same archive.
    let columns = Arc::new(Columns::new(archive));
    let property = spec.property.clone();
    let gap = footfall_processor::SessionRules::default().gap_ms;
    let t = Instant::now();
    let made =
        rt.block_on(columns.refresh(&move |p: &str| (p == property).then_some((tz, gap))))?;
    let columnar_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(made.rows == n, "columnar rows {} of {n}", made.rows);

    let engine = ColumnarEngine::new(columns.clone());
    // The same files with every question to DataFusion: the resident executor's baseline.
    let datafusion_only = ColumnarEngine::new(columns).with_resident_budget(0);
    let end = chrono::DateTime::from_timestamp_millis(spec.end_ms).unwrap();
    let to = end.with_timezone(&tz).date_naive();
    let from = to - chrono::Duration::days(spec.days as i64 - 1);
    let set = query_set(&spec.property, &from.to_string(), &to.to_string());
    let mut per_query: Vec<Vec<f64>> = vec![Vec::new(); set.len()];
    let mut sets = Vec::new();
    let mut answers = serde_json::Map::new();
    let mut executors = serde_json::Map::new();
    let mut cold_set_ms = 0.0;
    for round in 0..a.rounds + 1 {
        let set_start = Instant::now();
        for (i, (name, q)) in set.iter().enumerate() {
            let t = Instant::now();
            let v = rt
                .block_on(ask(&engine, q, tz, (from, to)))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            // Round 0 warms the caches (the resident table, the files' metadata); it is
            // reported as the cold set, not counted in the percentiles.
            if round > 0 {
                per_query[i].push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                answers.insert(name.to_string(), v["results"].clone());
                executors.insert(name.to_string(), v["meta"]["executor"].clone());
            }
        }
        if round > 0 {
            sets.push(set_start.elapsed().as_secs_f64() * 1000.0);
        } else {
            cold_set_ms = set_start.elapsed().as_secs_f64() * 1000.0;
        }
    }
    sets.sort_by(f64::total_cmp);

    // The dashboard page with a filter the rollups do not hold for every panel (a
    // click on a source: `visit:source is google.com`), plus the exit pages panel:
    // every query through the columnar engine (the planner sends the visit panels to
    // the rollups, which are faster; this is the bound). Issue 19: each under 100 ms.
    let mut page = crate::page(&spec.property, &from.to_string(), &to.to_string());
    page.push((
        "visit:exit_page".to_string(),
        json!({"site_id": spec.property, "date_range": [from.to_string(), to.to_string()],
               "metrics": ["visitors", "pageviews"], "dimensions": ["visit:exit_page"],
               "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
    ));
    let mut page_times: Vec<Vec<f64>> = vec![Vec::new(); page.len()];
    let mut page_executors = serde_json::Map::new();
    for round in 0..a.rounds + 1 {
        for (i, (name, q)) in page.iter_mut().enumerate() {
            q["filters"] = json!([["is", "visit:source", ["google.com"]]]);
            let t = Instant::now();
            let v = rt
                .block_on(ask(&engine, q, tz, (from, to)))
                .map_err(|e| anyhow::anyhow!("page {name}: {e}"))?;
            if round > 0 {
                page_times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                page_executors.insert(name.clone(), v["meta"]["executor"].clone());
            }
        }
    }
    let mut filtered_page = serde_json::Map::new();
    let mut slowest = (String::new(), 0.0f64);
    for (i, (name, _)) in page.iter().enumerate() {
        let mut t = page_times[i].clone();
        t.sort_by(f64::total_cmp);
        let p99 = percentile(&t, 0.99);
        if p99 > slowest.1 {
            slowest = (name.clone(), p99);
        }
        filtered_page.insert(
            name.clone(),
            json!({"p50_ms": percentile(&t, 0.5), "p99_ms": p99, "executor": page_executors[name]}),
        );
    }

    // The same set through DataFusion alone, fewer rounds (seconds each), same answers.
    let df_rounds = a.rounds.clamp(1, 3);
    let mut df_sets = Vec::new();
    let mut df_equal = true;
    for round in 0..df_rounds + 1 {
        let set_start = Instant::now();
        for (name, q) in &set {
            let v = rt
                .block_on(ask(&datafusion_only, q, tz, (from, to)))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if round == 0 && answers.get(*name) != Some(&v["results"]) {
                eprintln!("{name}: the resident executor and DataFusion differ");
                df_equal = false;
            }
        }
        if round > 0 {
            df_sets.push(set_start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    df_sets.sort_by(f64::total_cmp);

    // The analyst's SQL, on the SQL API's path and limits (generous: this measures speed).
    let limits = footfall_query::SqlLimits {
        timeout: std::time::Duration::from_secs(600),
        memory_bytes: 4 << 30,
        max_rows: 100_000,
    };
    let mut sql_times: Vec<Vec<f64>> = vec![Vec::new(); ANALYST_SQL.len()];
    let mut sql_sets = Vec::new();
    let mut sql_answers = serde_json::Map::new();
    for round in 0..a.rounds + 1 {
        let set_start = Instant::now();
        for (i, (name, sql)) in ANALYST_SQL.iter().enumerate() {
            let t = Instant::now();
            let v = rt
                .block_on(engine.sql(&spec.property, (from, to), sql, limits))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if round > 0 {
                sql_times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                sql_answers.insert(name.to_string(), v["rows"].clone());
            }
        }
        if round > 0 {
            sql_sets.push(set_start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    sql_sets.sort_by(f64::total_cmp);
    let mut sql_queries = serde_json::Map::new();
    for (i, (name, _)) in ANALYST_SQL.iter().enumerate() {
        let mut t = sql_times[i].clone();
        t.sort_by(f64::total_cmp);
        sql_queries.insert(
            name.to_string(),
            json!({"p50_ms": percentile(&t, 0.5), "p99_ms": percentile(&t, 0.99)}),
        );
    }

    let mut queries = serde_json::Map::new();
    for (i, (name, _)) in set.iter().enumerate() {
        let mut t = per_query[i].clone();
        t.sort_by(f64::total_cmp);
        queries.insert(
            name.to_string(),
            json!({"p50_ms": percentile(&t, 0.5), "p99_ms": percentile(&t, 0.99)}),
        );
    }
    std::fs::write(
        a.keep.join("answers.json"),
        serde_json::to_vec_pretty(&json!({"from": from.to_string(), "to": to.to_string(),
            "property": spec.property, "answers": answers,
            "sql": ANALYST_SQL.iter().map(|(n, q)| (n.to_string(), json!(q))).collect::<serde_json::Map<_, _>>(),
            "sql_answers": sql_answers}))?,
    )?;
    println!(
        "{}",
        json!({
            "events": n,
            "process_seconds": process_s,
            "columnar_seconds": columnar_s,
            "columnar_days": made.days,
            "columnar_over_processing": columnar_s / process_s,
            "rounds": a.rounds,
            "set_p50_ms": percentile(&sets, 0.5),
            "set_p99_ms": percentile(&sets, 0.99),
            "cold_set_ms": cold_set_ms,
            "filtered_page": filtered_page,
            "filtered_page_slowest": {"query": slowest.0, "p99_ms": slowest.1},
            "executors": executors,
            "datafusion_rounds": df_rounds,
            "datafusion_set_p50_ms": percentile(&df_sets, 0.5),
            "datafusion_set_p99_ms": percentile(&df_sets, 0.99),
            "datafusion_answers_equal": df_equal,
            "queries": queries,
            "sql_set_p50_ms": percentile(&sql_sets, 0.5),
            "sql_set_p99_ms": percentile(&sql_sets, 0.99),
            "sql_queries": sql_queries,
        })
    );
    Ok(())
}
