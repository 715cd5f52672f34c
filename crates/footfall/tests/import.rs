//! `footfall import access-log` with a real Apache log (shared/data/access-logs): page
//! views per day and per path equal an independent count made here; a second import of
//! the same file counts nothing twice.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

/// The real log in the project's shared test data: `$FOOTFALL_SHARED_DATA`, else
/// `shared/` beside the checkout (where sessions and CI have it).
fn shared_log() -> Option<PathBuf> {
    let rel = "access-logs/apache_combined_2015-05.log";
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var("FOOTFALL_SHARED_DATA")
            .ok()
            .map(PathBuf::from),
        Some(manifest.join("../../../shared/data")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join(rel).exists() {
            return Some(c.join(rel));
        }
    }
    eprintln!("\n*** SKIPPED: shared/data/{rel} not found (set FOOTFALL_SHARED_DATA) ***\n");
    println!("SKIPPED: shared test data not found");
    None
}

/// The independent count: split on quotes, keep GET 2xx requests whose last path segment
/// has no asset extension (the rule in docs/API.md), group by UTC day and by path.
fn expected(text: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    const ASSET: &[&str] = &[
        "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif",
        "bmp", "tif", "tiff", "woff", "woff2", "ttf", "otf", "eot", "mp3", "mp4", "webm", "ogg",
        "wav", "avi", "mov", "mpg", "mpeg", "zip", "gz", "tgz", "bz2", "xz", "rar", "7z", "tar",
        "iso", "dmg", "exe", "pdf", "xbm", "swf", "json", "xml", "txt", "rss", "atom",
    ];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (mut days, mut paths) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() < 3 {
            continue;
        }
        let req: Vec<&str> = parts[1].split(' ').collect();
        let status: u16 = parts[2]
            .trim()
            .split(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if req.len() < 2 || req[0] != "GET" || !(200..300).contains(&status) {
            continue;
        }
        let path = req[1].split('?').next().unwrap();
        let last = path.rsplit('/').next().unwrap();
        if let Some((_, ext)) = last.rsplit_once('.') {
            if ASSET.contains(&ext.to_lowercase().as_str()) {
                continue;
            }
        }
        let date = &parts[0][parts[0].find('[').unwrap() + 1..];
        let (d, rest) = date.split_once('/').unwrap();
        let (mon, rest) = rest.split_once('/').unwrap();
        let year = &rest[..4];
        let m = months.iter().position(|x| *x == mon).unwrap() + 1;
        *days.entry(format!("{year}-{m:02}-{d}")).or_insert(0) += 1;
        *paths.entry(path.to_string()).or_insert(0) += 1;
    }
    (days, paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_log_import_matches_an_independent_count() {
    let Some(log) = shared_log() else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let server = Server::start(dir.path(), &[]);
    let import = || {
        let out = std::process::Command::new(BIN)
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "import",
                "access-log",
                log.to_str().unwrap(),
                "--property",
                &site.tracking_id,
                "--url",
                &server.url,
                "--key",
                &site.write_key,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = import();
    eprintln!("import: {first}");
    let (days, paths) = expected(&std::fs::read_to_string(&log).unwrap());
    let total: u64 = days.values().sum();
    assert_eq!(first["imported"], json!(total));
    assert_eq!(first["lines_read"], 10_000);
    let range = json!(["2015-05-16", "2015-05-21"]);
    wait_for_events(
        &reqwest::Client::new(),
        &server.url,
        &site,
        range.clone(),
        total,
    )
    .await;
    let second = import();
    assert_eq!(second["already_imported"], true);

    let client = reqwest::Client::new();
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews"],
        "date_range": range, "dimensions": ["time:day"]}),
    )
    .await;
    let got = counts_by_dimension(&v);
    assert_eq!(got, days, "page views per day");
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews"],
        "date_range": range, "dimensions": ["event:page"], "pagination": {"limit": 1_000_000}}),
    )
    .await;
    let got = counts_by_dimension(&v);
    assert_eq!(got, paths, "page views per path");
    eprintln!(
        "{} page views over {} days and {} paths match",
        total,
        days.len(),
        paths.len()
    );
}
