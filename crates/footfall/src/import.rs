//! `footfall import access-log`: a web server's access log becomes historical page views,
//! sent through the running server's ingestion with a write key (so the collector stays
//! the only writer of the log).
//!
//! Importing the same file again does not count it twice: the file's SHA-256 and the
//! number of lines acknowledged so far are recorded per property in the metadata store,
//! after each acknowledged batch. A rerun of an interrupted import resumes after the last
//! acknowledged batch; a completed file is refused.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use footfall_import::{page_view, parse_line, Format, Skip};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;

#[derive(Args)]
pub struct AccessLogArgs {
    /// The log file.
    file: PathBuf,
    /// Property the page views belong to.
    #[arg(long)]
    property: String,
    /// `combined` (Apache/nginx default), `common`, or `tsv` (with a header line).
    #[arg(long, default_value = "combined")]
    format: String,
    /// Server URL (default: http:// + server.listen).
    #[arg(long)]
    url: Option<String>,
    /// A write key of the property (default: $FOOTFALL_WRITE_KEY).
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    json: bool,
}

const BATCH: usize = 500;

pub fn access_log(cfg: &Config, a: AccessLogArgs) -> anyhow::Result<()> {
    let format = Format::parse(&a.format).context("--format must be combined, common or tsv")?;
    let url = a
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.server.listen));
    let key = a
        .key
        .clone()
        .or_else(|| std::env::var("FOOTFALL_WRITE_KEY").ok())
        .context("a write key is needed: --key or FOOTFALL_WRITE_KEY")?;
    let data = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let fingerprint: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let meta = crate::open_meta(cfg)?;
    let (resume, complete) = meta
        .import_progress(&a.property, &fingerprint)?
        .unwrap_or((0, false));
    if complete {
        let out = json!({"file": a.file, "already_imported": true, "imported": 0});
        if a.json {
            println!("{out}");
        } else {
            println!(
                "{} was already imported into {}; nothing sent",
                a.file.display(),
                a.property
            );
        }
        return Ok(());
    }
    let total = data.len().max(1) as f64;
    let tty = std::io::stderr().is_terminal();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let endpoint = format!("{}/api/v1/events", url.trim_end_matches('/'));
    let mut tsv = None;
    let mut skipped: BTreeMap<Skip, u64> = BTreeMap::new();
    let (mut lines, mut imported, mut rejected, mut bytes) = (0u64, 0u64, 0u64, 0usize);
    let mut batch: Vec<Value> = Vec::with_capacity(BATCH);
    let flush = |batch: &mut Vec<Value>,
                 lines_done: u64,
                 imported: &mut u64,
                 rejected: &mut u64|
     -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = json!(batch);
        let r = rt
            .block_on(async {
                client
                    .post(&endpoint)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await
            })
            .with_context(|| format!("sending to {endpoint} (is `footfall serve` running?)"))?;
        *imported += r["accepted"].as_u64().unwrap_or(0);
        *rejected += r["rejected"]
            .as_array()
            .map(|v| v.len() as u64)
            .unwrap_or(0);
        meta.record_import(&a.property, &fingerprint, lines_done, false)?;
        batch.clear();
        Ok(())
    };
    for line in BufReader::new(&data[..]).lines() {
        let line = line.unwrap_or_default();
        lines += 1;
        bytes += line.len() + 1;
        if lines <= resume {
            if format == Format::Tsv && tsv.is_none() {
                let _ = parse_line(&line, format, &mut tsv);
            }
            continue;
        }
        let req = match parse_line(&line, format, &mut tsv).and_then(|r| page_view(&r).map(|_| r)) {
            Ok(r) => r,
            Err(why) => {
                *skipped.entry(why).or_default() += 1;
                continue;
            }
        };
        let mut e = json!({
            "tracking_id": a.property,
            "name": "pageview",
            "url": req.target,
            "timestamp": req.time_ms,
            "interactive": true,
            // A log's requests are browser-style traffic replayed with a write key: they
            // are counted only when their user agent names a browser.
            "server_side": false,
        });
        if let Some(r) = req.referrer {
            e["referrer"] = json!(r);
        }
        if let Some(ua) = req.user_agent {
            e["user_agent"] = json!(ua);
        }
        // Hosts that are not addresses (old logs resolve names) are hashed with the
        // user agent via `client_id`; addresses go through the server's usual path.
        if req.client.parse::<std::net::IpAddr>().is_ok() {
            e["ip"] = json!(req.client);
        } else {
            e["client_id"] = json!(format!("host:{}", req.client));
        }
        batch.push(e);
        if batch.len() == BATCH {
            flush(&mut batch, lines, &mut imported, &mut rejected)?;
            let frac = bytes as f64 / total;
            let filled = (frac * 30.0).round() as usize;
            let bar = format!(
                "[{}{}] {:>5.1}% {lines} lines, {imported} page views",
                "#".repeat(filled.min(30)),
                "-".repeat(30 - filled.min(30)),
                frac * 100.0
            );
            if tty {
                eprint!("\r{bar}");
            }
        }
    }
    flush(&mut batch, lines, &mut imported, &mut rejected)?;
    meta.record_import(&a.property, &fingerprint, lines, true)?;
    if tty {
        eprintln!();
    }
    if rejected > 0 && imported == 0 {
        bail!("the server rejected every event ({rejected})");
    }
    let skipped_json: BTreeMap<String, u64> = skipped
        .iter()
        .map(|(k, v)| {
            (
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap_or("other")
                    .to_string(),
                *v,
            )
        })
        .collect();
    let out = json!({
        "file": a.file, "lines_read": lines, "resumed_after_line": resume, "imported": imported,
        "rejected_by_server": rejected, "skipped": skipped_json,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "{lines} lines read, {imported} page views imported, {rejected} rejected by the server"
        );
        for (k, v) in &skipped_json {
            println!("  skipped {v}: {k}");
        }
    }
    Ok(())
}
