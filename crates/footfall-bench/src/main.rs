//! `footfall-bench`: the measurement commands scripts/bench.sh runs.

// mimalloc: the processor and collector allocate many small strings per event; it
// measured markedly faster than the system allocator here (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use footfall_bench::{generate, DataSpec};
use footfall_event::EventView;
use footfall_log::{partition_for, EventLog, FileLog, FileLogOptions};
use footfall_processor::{Processor, ProcessorOptions, ProcessorStats, PropertySettings};
use footfall_store::{RollupStore, SnapshotStore};
use serde_json::json;

#[cfg(feature = "columnar")]
mod columnar;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, clap::Args)]
struct DataArgs {
    /// Tracking id the events belong to.
    #[arg(long, default_value = "FF-BENCH000")]
    property: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 30)]
    days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// End of the period, RFC 3339 (default: now).
    #[arg(long)]
    end: Option<String>,
}

impl DataArgs {
    fn spec(&self) -> anyhow::Result<DataSpec> {
        let end_ms = match &self.end {
            Some(e) => chrono::DateTime::parse_from_rfc3339(e)?.timestamp_millis(),
            None => chrono::Utc::now().timestamp_millis(),
        };
        Ok(DataSpec {
            property: self.property.clone(),
            events: self.events,
            days: self.days,
            end_ms,
            seed: self.seed,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The columnar path: what making the columnar files costs against processing the
    /// same events, and the columnar query set's latency (with the `columnar` feature).
    #[cfg(feature = "columnar")]
    Columnar {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        #[arg(long, default_value = "Asia/Kolkata")]
        timezone: String,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Keeps the archive, the Parquet files and the answers here.
        #[arg(long)]
        keep: PathBuf,
    },
    /// Processing throughput from a pre-filled log, without HTTP, against a decode-only
    /// pass over the same log as the baseline.
    Process {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        /// Time zone of the property.
        #[arg(long, default_value = "Asia/Kolkata")]
        timezone: String,
        /// Read from a Kafka-protocol broker (`host:port`) instead of the file log: the
        /// data set goes into a new topic of `partitions` partitions first.
        #[arg(long)]
        kafka: Option<String>,
    },
    /// Reprocessing throughput: seal the data set into archive files, then time reading
    /// them back and rebuilding rollups (the path `footfall reprocess` takes).
    Reprocess {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        #[arg(long, default_value = "Asia/Kolkata")]
        timezone: String,
    },
    /// Appends the data set to the log of a data directory, as the collector would.
    Fill {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Times the dashboard query set through /api/v2/query and prints the answers.
    Queries {
        #[arg(long)]
        url: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        key: String,
        /// Local dates, inclusive.
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// `api`: four typical API queries; `page`: every query the dashboard page sends
        /// for the range, also timed all sent at once over six connections, as a
        /// browser sends them.
        #[arg(long, default_value = "api")]
        set: String,
    },
    /// Writes the data set as CSV (ts_ms, visitor, name, page, source) for other engines.
    Csv {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    footfall_processor::disable_transparent_huge_pages();
    match Cli::parse().cmd {
        Cmd::Process {
            data,
            partitions,
            timezone,
            kafka,
        } => process(&data, partitions, &timezone, kafka.as_deref()),
        Cmd::Fill {
            data,
            data_dir,
            partitions,
        } => {
            let log = FileLog::open(
                data_dir.join("log"),
                FileLogOptions {
                    partitions,
                    ..Default::default()
                },
            )?;
            let n = fill(&log, &data.spec()?)?;
            eprintln!("appended {n} events");
            Ok(())
        }
        #[cfg(feature = "columnar")]
        Cmd::Columnar {
            data,
            partitions,
            timezone,
            rounds,
            keep,
        } => columnar::run(columnar::Args {
            data: &data,
            partitions,
            timezone: &timezone,
            rounds,
            keep,
        }),
        Cmd::Reprocess {
            data,
            partitions,
            timezone,
        } => reprocess(&data, partitions, &timezone),
        Cmd::Queries {
            url,
            site,
            key,
            from,
            to,
            iterations,
            set,
        } => queries(&url, &site, &key, &from, &to, iterations, &set),
        Cmd::Csv { data, out } => {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            writeln!(w, "ts_ms,visitor,name,page,source")?;
            generate(&data.spec()?, |events| {
                for e in events {
                    let page = footfall_event::url_path(e.url.as_deref().unwrap_or("/"));
                    let source = footfall_processor::sessions::source_of(
                        e.url.as_deref(),
                        e.referrer.as_deref(),
                    );
                    writeln!(
                        w,
                        "{},{},{},{},{}",
                        e.timestamp, e.visitor, e.name, page, source
                    )
                    .unwrap();
                }
            });
            w.flush()?;
            Ok(())
        }
    }
}

/// Appends in batches of 10,000 (one fsync each), returning the count.
/// Appends the data set as collectors do: batched requests of `FILL_BATCH` events,
/// `FILL_IN_FLIGHT` at a time (what a log packs per append decides how it reads back).
fn fill(log: &dyn EventLog, spec: &DataSpec) -> anyhow::Result<u64> {
    const FILL_BATCH: usize = 100;
    const FILL_IN_FLIGHT: usize = 64;
    let mut n = 0u64;
    let mut err = None;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut in_flight = 0usize;
    let wait_one = |in_flight: &mut usize, err: &mut Option<footfall_log::Error>| {
        if let Err(e) = rx.recv().expect("every append is answered") {
            err.get_or_insert(e);
        }
        *in_flight -= 1;
    };
    generate(spec, |events| {
        for chunk in events.chunks(FILL_BATCH) {
            let recs: Vec<(u32, Vec<u8>)> = chunk
                .iter()
                .map(|e| (partition_for(e.visitor, log.partitions()), e.encode()))
                .collect();
            n += recs.len() as u64;
            let tx = tx.clone();
            log.append(recs, Box::new(move |r| tx.send(r).unwrap()));
            in_flight += 1;
            if in_flight >= FILL_IN_FLIGHT {
                wait_one(&mut in_flight, &mut err);
            }
        }
    });
    while in_flight > 0 {
        wait_one(&mut in_flight, &mut err);
    }
    match err {
        Some(e) => Err(e.into()),
        None => Ok(n),
    }
}

/// A fresh log in a temporary directory (kept alive by the returned guard).
fn temp_log(partitions: u32) -> anyhow::Result<(tempfile::TempDir, Arc<FileLog>)> {
    let dir = tempfile::tempdir()?;
    let log = FileLog::open(
        dir.path().join("log"),
        FileLogOptions {
            partitions,
            ..Default::default()
        },
    )?;
    Ok((dir, Arc::new(log)))
}

/// The log `process` reads — the file log, or a new topic on a broker — and a
/// temporary directory that lives as long as it.
fn bench_log(
    partitions: u32,
    kafka: Option<&str>,
) -> anyhow::Result<(tempfile::TempDir, Arc<dyn EventLog>)> {
    match kafka {
        None => {
            let (dir, log) = temp_log(partitions)?;
            Ok((dir, log))
        }
        Some(brokers) => Ok((tempfile::tempdir()?, open_kafka(brokers, partitions)?)),
    }
}

#[cfg(feature = "kafka")]
fn open_kafka(brokers: &str, partitions: u32) -> anyhow::Result<Arc<dyn EventLog>> {
    let opts = footfall_kafka::KafkaOptions {
        brokers: brokers.into(),
        topic: format!("bench-{}-{}", std::process::id(), rand::random::<u32>()),
        delivery_timeout: std::time::Duration::from_secs(60),
        // As scripts/cluster.sh sets for tansu (docs/DISTRIBUTED.md).
        fetch_wait: std::time::Duration::from_millis(10),
        ..Default::default()
    };
    footfall_kafka::KafkaLog::create_topic(&opts, partitions, 1)?;
    Ok(Arc::new(footfall_kafka::KafkaLog::open(opts)?))
}

#[cfg(not(feature = "kafka"))]
fn open_kafka(_: &str, _: u32) -> anyhow::Result<Arc<dyn EventLog>> {
    anyhow::bail!("built without the `kafka` feature")
}

fn process(
    data: &DataArgs,
    partitions: u32,
    timezone: &str,
    kafka: Option<&str>,
) -> anyhow::Result<()> {
    let (dir, log) = bench_log(partitions, kafka)?;
    let spec = data.spec()?;
    let t = Instant::now();
    let n = fill(log.as_ref(), &spec)?;
    let fill_s = t.elapsed().as_secs_f64();

    // Baseline: read and decode every record (as the processor does), nothing else.
    let t = Instant::now();
    let mut decoded = 0u64;
    for p in 0..partitions {
        let mut at = log.start_offset(p);
        loop {
            let recs = log.read(p, at, 1 << 20)?;
            if recs.is_empty() {
                break;
            }
            for r in &recs {
                std::hint::black_box(EventView::decode(&r.payload)?);
                decoded += 1;
                at = r.next;
            }
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(decoded == n, "decoded {decoded} of {n}");

    let tz: chrono_tz::Tz = timezone.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let store: Arc<dyn RollupStore> = Arc::new(SnapshotStore::open(dir.path().join("rollups"))?);
    let stats = Arc::new(ProcessorStats::new(partitions));
    let mut processor = Processor::new(
        log.clone(),
        store.clone(),
        Arc::new(move |_: &str| PropertySettings { tz, gap_ms: None }),
        ProcessorOptions::default(),
        stats,
    )
    .context("processor")?;
    let t = Instant::now();
    processor.catch_up()?;
    let process_s = t.elapsed().as_secs_f64();
    let open_visits = processor.state().open_visits();
    let state_bytes = processor.state().approx_heap_bytes();
    let t = Instant::now();
    processor.checkpoint()?;
    let checkpoint_s = t.elapsed().as_secs_f64();
    let log_bytes = log.retained_bytes();
    let out = json!({
        "log": if kafka.is_some() { "kafka" } else { "file" },
        "events": n,
        "partitions": partitions,
        "fill_seconds": fill_s,
        "decode_only_seconds": decode_s,
        "decode_only_events_per_second": n as f64 / decode_s,
        "process_seconds": process_s,
        "process_events_per_second": n as f64 / process_s,
        "ratio_to_decode_only": decode_s / process_s,
        "open_visits": open_visits,
        "state_bytes_per_open_visit": state_bytes as f64 / open_visits.max(1) as f64,
        "checkpoint_seconds": checkpoint_s,
        "checkpoint_bytes": store.checkpoint_bytes(),
        "log_bytes_per_event": log_bytes as f64 / n as f64,
        "rollup_checkpoint_bytes_per_event": store.checkpoint_bytes() as f64 / n as f64,
    });
    println!("{out}");
    Ok(())
}

/// The dashboard: totals, a daily series, top pages, top sources.
pub fn dashboard(site: &str, from: &str, to: &str) -> Vec<(&'static str, serde_json::Value)> {
    let range = json!([from, to]);
    vec![
        (
            "aggregate",
            json!({"site_id": site, "date_range": range,
            "metrics": ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"]}),
        ),
        (
            "timeseries",
            json!({"site_id": site, "date_range": range,
            "metrics": ["visitors", "pageviews"], "dimensions": ["time:day"]}),
        ),
        (
            "top_pages",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "pageviews"],
            "dimensions": ["event:page"], "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
        (
            "top_sources",
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "visits"],
            "dimensions": ["visit:source"], "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        ),
    ]
}

/// What the dashboard page asks for one range (crates/footfall-server/assets/
/// dashboard.js, `load`): the totals, the chart, every top-10 panel the rollups answer
/// and revenue. The exit pages panel comes from the columnar engine (docs/QUERIES.md)
/// and is not in this set.
pub fn page(site: &str, from: &str, to: &str) -> Vec<(String, serde_json::Value)> {
    const PANELS: [&str; 17] = [
        "event:page",
        "visit:entry_page",
        "visit:source",
        "visit:channel",
        "visit:referrer",
        "visit:utm_source",
        "visit:utm_medium",
        "visit:utm_campaign",
        "visit:utm_content",
        "visit:utm_term",
        "visit:country",
        "visit:region",
        "visit:city",
        "visit:device",
        "visit:browser",
        "visit:os",
        "event:name",
    ];
    let range = json!([from, to]);
    let mut set = vec![
        (
            "totals".to_string(),
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "visits", "pageviews",
                "views_per_visit", "bounce_rate", "visit_duration"]}),
        ),
        (
            "chart".to_string(),
            json!({"site_id": site, "date_range": range, "metrics": ["visitors"], "dimensions": ["time:day"]}),
        ),
        (
            "revenue".to_string(),
            json!({"site_id": site, "date_range": range, "metrics": ["total_revenue", "events"],
                "dimensions": ["event:name"], "pagination": {"limit": 1000}}),
        ),
    ];
    set.extend(PANELS.iter().map(|d| {
        (
            d.to_string(),
            json!({"site_id": site, "date_range": range, "metrics": ["visitors", "pageviews"],
                "dimensions": [d], "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
        )
    }));
    set
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

fn queries(
    url: &str,
    site: &str,
    key: &str,
    from: &str,
    to: &str,
    iterations: usize,
    which: &str,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let set: Vec<(String, serde_json::Value)> = match which {
            "api" => dashboard(site, from, to)
                .into_iter()
                .map(|(n, q)| (n.to_string(), q))
                .collect(),
            "page" => page(site, from, to),
            other => anyhow::bail!("--set is api or page, not {other}"),
        };
        let endpoint = format!("{}/api/v2/query", url.trim_end_matches('/'));
        let mut answers = serde_json::Map::new();
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); set.len()];
        let mut totals = Vec::new();
        // The untimed first round, on its own: a query node's cold cache.
        let mut first = vec![0.0; set.len()];
        let mut first_round = 0.0;
        // One warm-up round, then timed rounds.
        for round in 0..=iterations {
            let t_set = Instant::now();
            for (i, (name, q)) in set.iter().enumerate() {
                let t = Instant::now();
                let r = client
                    .post(&endpoint)
                    .bearer_auth(key)
                    .json(q)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "{name}: HTTP {}", r.status());
                let v: serde_json::Value = r.json().await?;
                if round > 0 {
                    per[i].push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    first[i] = t.elapsed().as_secs_f64() * 1000.0;
                    answers.insert(name.to_string(), v["results"].clone());
                }
            }
            if round > 0 {
                totals.push(t_set.elapsed().as_secs_f64() * 1000.0);
            } else {
                first_round = t_set.elapsed().as_secs_f64() * 1000.0;
            }
        }
        let mut per_query = serde_json::Map::new();
        let mut worst_p99 = 0.0f64;
        for (i, (name, _)) in set.iter().enumerate() {
            let p99 = pct(&mut per[i], 0.99);
            worst_p99 = worst_p99.max(p99);
            per_query.insert(
                name.to_string(),
                json!({"p50_ms": pct(&mut per[i], 0.5), "p99_ms": p99, "first_ms": first[i]}),
            );
        }
        // As a page load: every query at once, six in flight (a browser's limit per
        // origin over HTTP/1.1); the time until the last answer.
        let mut loads = Vec::new();
        if which == "page" {
            let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(6));
            for _ in 0..iterations {
                let t = Instant::now();
                let mut tasks = Vec::new();
                for (name, q) in &set {
                    let (client, gate, endpoint, key) = (
                        client.clone(),
                        gate.clone(),
                        endpoint.clone(),
                        key.to_string(),
                    );
                    let (name, q) = (name.clone(), q.clone());
                    tasks.push(async move {
                        let _permit = gate.acquire().await?;
                        let r = client
                            .post(&endpoint)
                            .bearer_auth(&key)
                            .json(&q)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().is_success(), "{name}: HTTP {}", r.status());
                        r.bytes().await?;
                        anyhow::Ok(())
                    });
                }
                for r in futures::future::join_all(tasks).await {
                    r?;
                }
                loads.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        println!(
            "{}",
            json!({
                "iterations": iterations,
                "set_p50_ms": pct(&mut totals, 0.5),
                "set_p99_ms": pct(&mut totals, 0.99),
                "worst_query_p99_ms": worst_p99,
                "page_load_p50_ms": pct(&mut loads, 0.5),
                "page_load_p99_ms": pct(&mut loads, 0.99),
                "first_round_ms": first_round,
                "per_query": per_query,
                "answers": answers,
            })
        );
        Ok(())
    })
}

fn reprocess(data: &DataArgs, partitions: u32, timezone: &str) -> anyhow::Result<()> {
    let (dir, log) = temp_log(partitions)?;
    let spec = data.spec()?;
    let n = fill(log.as_ref(), &spec)?;
    let archive = footfall_archive::Archive::local(dir.path().join("archive"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let t = Instant::now();
    let mut archiver =
        footfall_archive::Archiver::open(archive.clone(), log.clone(), dir.path().join("state"))?;
    let sealed = rt.block_on(archiver.seal())?;
    let seal_s = t.elapsed().as_secs_f64();
    let tz: chrono_tz::Tz = timezone.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    let files = rt.block_on(archive.list(Some(&spec.property), None))?;
    let input =
        rt.block_on(archive.read_for_rebuild(&files, partitions as usize, 2, |_| true, |_, _| {}))?;
    let read_s = t.elapsed().as_secs_f64();
    let read_events = input.len();
    let t2 = Instant::now();
    let (_state, rollups) = footfall_processor::rebuild_parallel(
        input.partitions(),
        |p, f| input.for_each(p, f),
        PropertySettings { tz, gap_ms: None },
        footfall_processor::SessionRules::default(),
    );
    let rebuild_s = t2.elapsed().as_secs_f64();
    let total_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(read_events as u64 == n, "read back {read_events} of {n}");
    std::hint::black_box(rollups);
    println!(
        "{}",
        json!({
            "events": n,
            "archive_files": files.len(),
            "archive_bytes": sealed.bytes,
            "archive_bytes_per_event": sealed.bytes as f64 / n as f64,
            "seal_seconds": seal_s,
            "seal_events_per_second": n as f64 / seal_s,
            "read_decode_seconds": read_s,
            "rebuild_seconds": rebuild_s,
            "reprocess_seconds": total_s,
            "reprocess_events_per_second": n as f64 / total_s,
        })
    );
    Ok(())
}
