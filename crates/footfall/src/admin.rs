//! `footfall reprocess` and `footfall archive verify`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{NaiveDate, Timelike};
use clap::Args;
use footfall_archive::{Archive, ArchiverState};
use footfall_event::LoggedEvent;
use footfall_log::{EventLog, FileLog, FileLogOptions};
use serde_json::{json, Value};

use crate::config::Config;

/// Where the archiver keeps its position: in the data directory, or — on a Kafka log
/// with a shared database — in the database, named by the topic, because a cluster's
/// archiver may come back on a machine without its old data directory (docs/ARCHIVE.md).
/// With `adopt`, a position still in the data directory from before is moved into the
/// database once (the archiver does this at start; readers such as `archive verify` do not
/// write).
pub fn archiver_position(
    cfg: &Config,
    adopt: bool,
) -> anyhow::Result<Box<dyn footfall_archive::position::PositionStore>> {
    use footfall_archive::position::{FilePosition, PositionStore};
    let file = FilePosition::open(cfg.server.data_dir.join("archive-state"))?;
    if cfg.log.kafka_brokers.is_empty() || cfg.store.url.is_empty() {
        return Ok(Box::new(file));
    }
    let shared = footfall_pg::PgPosition::open(&cfg.store.url, &cfg.log.kafka_topic)
        .context("opening the archiver's position (store.url)")?;
    if adopt && shared.load()?.is_none() {
        if let Some(state) = file.load()? {
            shared.save(&state)?;
            tracing::info!("archiver position moved from the data directory into the database");
        }
    }
    Ok(Box::new(shared))
}

/// The archive the configuration names (local directory by default).
pub fn open_archive(cfg: &Config) -> anyhow::Result<Archive> {
    let a = &cfg.archive;
    Ok(if a.url.is_empty() {
        Archive::local(cfg.server.data_dir.join("archive"))?
    } else {
        Archive::from_url(&a.url, &a.s3_options())?
    })
}

#[derive(Args)]
pub struct ReprocessArgs {
    /// The property to rebuild.
    #[arg(long, conflicts_with = "all")]
    property: Option<String>,
    /// Rebuild every property.
    #[arg(long)]
    all: bool,
    /// First local date (YYYY-MM-DD), inclusive.
    #[arg(long)]
    from: NaiveDate,
    /// Last local date, inclusive.
    #[arg(long)]
    to: NaiveDate,
    /// Rebuild and report what would change, without swapping it in.
    #[arg(long)]
    dry_run: bool,
    /// Server URL (default: http:// + server.listen).
    #[arg(long)]
    url: Option<String>,
    /// Admin key (default: $FOOTFALL_ADMIN_KEY).
    #[arg(long)]
    key: Option<String>,
}

/// The server to ask (`--url`, else `http://` + `server.listen`) and the admin key
/// (`--key`, else `$FOOTFALL_ADMIN_KEY`).
fn server_and_key(
    cfg: &Config,
    url: Option<String>,
    key: Option<String>,
) -> anyhow::Result<(String, String)> {
    let url = url
        .unwrap_or_else(|| format!("http://{}", cfg.server.listen))
        .trim_end_matches('/')
        .to_string();
    let key = key
        .or_else(|| std::env::var("FOOTFALL_ADMIN_KEY").ok())
        .context(
        "an admin key is needed: --key or FOOTFALL_ADMIN_KEY (footfall key create --scope admin)",
    )?;
    Ok((url, key))
}

/// Starts an admin job (`POST /api/v1/admin/{kind}`); answers its id.
async fn start_job(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    kind: &str,
    body: &Value,
) -> anyhow::Result<u64> {
    let r = client
        .post(format!("{url}/api/v1/admin/{kind}"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .with_context(|| format!("is `footfall serve` running at {url}?"))?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        bail!("server refused: {v}");
    }
    v["job"].as_u64().context("no job id")
}

fn bar(done: f64, width: usize) -> String {
    let filled = ((done.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

pub fn reprocess(cfg: &Config, a: ReprocessArgs) -> anyhow::Result<()> {
    if a.property.is_none() && !a.all {
        bail!("give --property ID or --all");
    }
    let (url, key) = server_and_key(cfg, a.url, a.key)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let body = json!({"property": a.property, "all": a.all, "from": a.from, "to": a.to, "dry_run": a.dry_run});
        let id = start_job(&client, &url, &key, "reprocess", &body).await?;
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s: Value = client
                .get(format!("{url}/api/v1/admin/reprocess/{id}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            let total = s["bytes_total"].as_f64().unwrap_or(0.0);
            let frac = if total > 0.0 { s["bytes_read"].as_f64().unwrap_or(0.0) / total } else { 0.0 };
            let line = format!(
                "{} {:>5.1}% {} events read, {:.0} events/s, ETA {:.0} s  {}",
                bar(frac, 30),
                frac * 100.0,
                s["events_read"],
                s["events_per_second"].as_f64().unwrap_or(0.0),
                s["eta_seconds"].as_f64().unwrap_or(0.0),
                s["phase"].as_str().unwrap_or("")
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            match s["state"].as_str() {
                Some("done") => {
                    if tty {
                        eprintln!();
                    }
                    println!("{}", serde_json::to_string_pretty(&s)?);
                    return Ok(());
                }
                Some("failed") => {
                    if tty {
                        eprintln!();
                    }
                    bail!("reprocess failed (the old data keeps serving): {}", s["error"]);
                }
                _ => {}
            }
        }
    })
}

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long)]
    property: Option<String>,
    /// First UTC date (YYYY-MM-DD) of the archive layout.
    #[arg(long, requires = "to")]
    from: Option<NaiveDate>,
    #[arg(long, requires = "from")]
    to: Option<NaiveDate>,
    #[arg(long)]
    json: bool,
}

#[derive(Default, serde::Serialize)]
struct Hour {
    files: u64,
    events: u64,
    duplicates: u64,
    log_events: Option<u64>,
    status: &'static str,
}

/// Compares the archive with the log it was sealed from: per (property, UTC date, hour),
/// the events in archive files against the log's records below the archiver's committed
/// offsets, and no (partition, offset) archived twice. Safe beside a running server (the
/// log is opened read-only).
pub fn verify(cfg: &Config, a: VerifyArgs) -> anyhow::Result<()> {
    let archive = open_archive(cfg)?;
    let dates = a.from.zip(a.to);
    let state: Option<ArchiverState> = archiver_position(cfg, false)?.load()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hours: BTreeMap<(String, NaiveDate, u32), Hour> = BTreeMap::new();
    rt.block_on(async {
        let files = archive.list(a.property.as_deref(), dates).await?;
        let mut seen = HashSet::new();
        for f in files {
            let events = archive.read_file(&f.path).await?;
            let h = hours
                .entry((f.property.clone(), f.date, f.hour))
                .or_default();
            h.files += 1;
            for e in events {
                if !seen.insert((e.log_partition, e.log_offset)) {
                    h.duplicates += 1;
                }
                h.events += 1;
            }
        }
        anyhow::Ok(())
    })?;
    // The log's side, where the log still holds everything the archive covers.
    let log_dir = cfg.server.data_dir.join("log");
    let mut log_complete = false;
    if let (Some(state), true) = (&state, log_dir.exists()) {
        let log = FileLog::open(
            &log_dir,
            FileLogOptions {
                partitions: state.offsets.len() as u32,
                read_only: true,
                ..Default::default()
            },
        )?;
        log_complete = (0..log.partitions()).all(|p| log.start_offset(p) == 0);
        if log_complete {
            for h in hours.values_mut() {
                h.log_events = Some(0);
            }
            for p in 0..log.partitions() {
                footfall_log::for_each_record(
                    &log,
                    p,
                    0,
                    state.offsets[p as usize],
                    4 << 20,
                    |r| {
                        let Ok(e) = LoggedEvent::decode(&r.payload) else {
                            return;
                        };
                        if a.property.as_deref().is_some_and(|p| p != e.property) {
                            return;
                        }
                        let t = chrono::DateTime::from_timestamp_millis(e.timestamp)
                            .unwrap_or_default();
                        if dates.is_some_and(|(f, to)| t.date_naive() < f || t.date_naive() > to) {
                            return;
                        }
                        let h = hours
                            .entry((e.property.clone(), t.date_naive(), t.hour()))
                            .or_default();
                        *h.log_events.get_or_insert(0) += 1;
                    },
                )?;
            }
        }
    }
    let mut all_ok = true;
    for h in hours.values_mut() {
        h.status = match h.log_events {
            _ if h.duplicates > 0 => "duplicates",
            Some(n) if n == h.events => "ok",
            Some(_) => "mismatch",
            None => "log_pruned",
        };
        all_ok &= h.status == "ok" || h.status == "log_pruned";
    }
    if a.json {
        let rows: Vec<Value> = hours
            .iter()
            .map(|((p, d, hr), h)| {
                json!({"property": p, "date": d, "hour": hr, "files": h.files, "events": h.events,
                "duplicates": h.duplicates, "log_events": h.log_events, "status": h.status})
            })
            .collect();
        println!(
            "{}",
            json!({"ok": all_ok, "log_complete": log_complete, "hours": rows})
        );
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "property\tdate\thour\tfiles\tevents\tlog_events\tstatus"
        )?;
        for ((p, d, hr), h) in &hours {
            let le = h
                .log_events
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "{p}\t{d}\t{hr:02}\t{}\t{}\t{le}\t{}",
                h.files, h.events, h.status
            )?;
        }
        writeln!(
            out,
            "{}",
            if all_ok {
                "archive OK"
            } else {
                "archive MISMATCH"
            }
        )?;
    }
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Args)]
pub struct LogCountArgs {
    /// Count only this property's events.
    #[arg(long)]
    property: Option<String>,
}

/// `footfall log count`: reads every partition from its start until no more comes and
/// prints one JSON object: per partition, its offsets, records and events (of the
/// property). For checking what a log holds against what was acknowledged or counted.
pub fn log_count(cfg: &Config, a: LogCountArgs) -> anyhow::Result<()> {
    let (_, log) = crate::open_log(cfg)?;
    let mut parts = Vec::new();
    let (mut records, mut events, mut undecodable) = (0u64, 0u64, 0u64);
    for p in 0..log.partitions() {
        // To the end by reading until nothing comes: a broker's reported end can lag
        // (tansu 0.6 reports its last batch's first offset + 1).
        let start = log.start_offset(p);
        let (mut at, mut r_n, mut e_n) = (start, 0u64, 0u64);
        loop {
            let recs = log.read(p, at, 4 << 20)?;
            let Some(last) = recs.last() else { break };
            at = last.next;
            for r in &recs {
                r_n += 1;
                match LoggedEvent::decode(&r.payload) {
                    Ok(e) if a.property.as_deref().is_none_or(|p| p == e.property) => e_n += 1,
                    Ok(_) => {}
                    Err(footfall_event::DecodeError::Erased) => {}
                    Err(_) => undecodable += 1,
                }
            }
        }
        let end = at;
        records += r_n;
        events += e_n;
        parts.push(
            json!({"partition": p, "start": start, "end": end, "records": r_n, "events": e_n}),
        );
    }
    let out = json!({"partitions": parts, "records": records, "events": events, "undecodable": undecodable});
    println!("{out}");
    Ok(())
}

#[derive(Args)]
pub struct RepairArgs {
    /// Move the store aside even when it opens (to rebuild it on purpose).
    #[arg(long)]
    force: bool,
}

/// Where `footfall repair rollups` asks the next start to rebuild the rollups from the
/// archive (beside the store, so that it survives the store being replaced).
pub fn rebuild_marker(cfg: &Config) -> std::path::PathBuf {
    cfg.server.data_dir.join("rollups.rebuild")
}

/// `footfall repair rollups`: checks the embedded rollup store the way a start does
/// (every file's checksum); when it is damaged (or with `--force`), moves it aside
/// (`rollups.damaged-<time>`, kept for inspection) and leaves the marker that makes the
/// next start rebuild every archived day into a fresh store. The processor reads the
/// log from its first retained record into the fresh store, so events not archived yet
/// are counted too; reprocessing replaces the archived days whole, so none twice.
pub fn repair_rollups(cfg: &Config, a: RepairArgs) -> anyhow::Result<()> {
    if !cfg.store.url.is_empty() {
        bail!("the rollups are in the database (store.url): a database is repaired with its own tools, or rebuilt with `footfall reprocess --all`");
    }
    let dir = cfg.server.data_dir.join("rollups");
    if !dir.exists() {
        bail!("no rollup store in {}", dir.display());
    }
    match footfall_store::SnapshotStore::open(&dir) {
        Ok(_) if !a.force => {
            println!(
                "the rollup store in {} opens and every file checks: nothing to repair",
                dir.display()
            );
            return Ok(());
        }
        Ok(_) => println!("the rollup store opens; moving it aside anyway (--force)"),
        Err(e) => println!("the rollup store is damaged: {e}"),
    }
    let aside = cfg.server.data_dir.join(format!(
        "rollups.damaged-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::rename(&dir, &aside)
        .with_context(|| format!("moving {} to {}", dir.display(), aside.display()))?;
    let marker = rebuild_marker(cfg);
    std::fs::write(
        &marker,
        format!(
            "rollups moved to {} at {}\n",
            aside.display(),
            chrono::Utc::now()
        ),
    )?;
    println!("moved the store to {}", aside.display());
    println!(
        "the next `footfall serve` rebuilds the rollups: every archived day from the archive, \
         the rest from the log (progress in its log; {} is removed when done)",
        marker.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct DeleteArgs {
    /// The property whose data is deleted.
    #[arg(long)]
    property: String,
    /// One visitor: the `user_id` its events were sent with.
    #[arg(long, conflicts_with_all = ["client_id", "everything"])]
    user_id: Option<String>,
    /// One visitor: the `client_id` its events were sent with.
    #[arg(long, conflicts_with = "everything")]
    client_id: Option<String>,
    /// Every event of the property (its settings, keys and goals stay).
    #[arg(long)]
    everything: bool,
    /// Server URL (default: http:// + server.listen).
    #[arg(long)]
    url: Option<String>,
    /// Admin key (default: $FOOTFALL_ADMIN_KEY).
    #[arg(long)]
    key: Option<String>,
}

/// `footfall delete`: asks the running server to delete a visitor's or a property's
/// events everywhere they are kept, waits, and prints the report.
pub fn delete(cfg: &Config, a: DeleteArgs) -> anyhow::Result<()> {
    if a.user_id.is_none() && a.client_id.is_none() && !a.everything {
        bail!("give --user-id, --client-id or --everything");
    }
    let (url, key) = server_and_key(cfg, a.url, a.key)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut body = json!({"property": a.property});
        if let Some(u) = &a.user_id {
            body["user_id"] = json!(u);
        }
        if let Some(c) = &a.client_id {
            body["client_id"] = json!(c);
        }
        if a.everything {
            body["everything"] = json!(true);
        }
        let id = start_job(&client, &url, &key, "delete", &body).await?;
        let mut last_phase = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s: Value = client
                .get(format!("{url}/api/v1/admin/delete/{id}"))
                .bearer_auth(&key)
                .send()
                .await?
                .json()
                .await?;
            let phase = s["phase"].as_str().unwrap_or("").to_string();
            if phase != last_phase {
                eprintln!("{phase}");
                last_phase = phase;
            }
            match s["state"].as_str() {
                Some("done") => {
                    println!("{}", serde_json::to_string_pretty(&s["report"])?);
                    return Ok(());
                }
                Some("failed") => bail!("deletion failed: {}", s["error"]),
                _ => {}
            }
        }
    })
}
