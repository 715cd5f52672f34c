//! Damaged rollup files: the server refuses to start with a message that names the
//! file and the command that repairs it; `footfall repair rollups` moves the store aside
//! and the next start rebuilds it from the archive and the log, to the same numbers.
//! Tried with a day file whose bytes changed, and with a truncated manifest.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Per local day: pageviews, visitors, visits and bounce rate over the last 7 days.
async fn by_day(c: &reqwest::Client, url: &str, site: &Site) -> Value {
    query(
        c,
        url,
        site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews", "visitors", "visits", "bounce_rate"],
               "date_range": "7d", "dimensions": ["time:day"]}),
    )
    .await["results"]
        .clone()
}

/// `footfall serve` on a damaged store: it exits with an error; answers its stderr.
fn refused_start(data: &Path) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("FOOTFALL_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started on a damaged store");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts the server on a repaired store and waits for the rebuild to finish.
async fn rebuilt(data: &Path, c: &reqwest::Client, site: &Site) -> (Server, Value) {
    let server = Server::start(data, &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while data.join("rollups.rebuild").exists() {
        assert!(Instant::now() < deadline, "no rebuild after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = by_day(c, &server.url, site).await;
    (server, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_rollup_files_are_refused_named_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let site = create_site(data, "Asia/Kolkata");
    let mut server = Server::start(data, &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms")]);
    let c = reqwest::Client::new();
    // Three days of visits, so that several day files exist.
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..300)
        .map(|i| {
            json!({"tracking_id": site.tracking_id, "name": "pageview",
                   "url": format!("https://shop.example/p{}", i % 6),
                   "client_id": format!("v{}", i % 40),
                   "timestamp": now - (i % 3) * 86_400_000 - i * 1000})
        })
        .collect();
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &json!(events)).await,
        300
    );
    wait_for_events(&c, &server.url, &site, json!("7d"), 300).await;
    // Archived (the rebuild reads the archive), then a final checkpoint at the stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut files = Vec::new();
        files_under(&data.join("archive"), &mut files);
        if files
            .iter()
            .any(|f| f.extension().is_some_and(|x| x == "avro"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = by_day(&c, &server.url, &site).await;
    assert!(before.as_array().unwrap().len() >= 3, "{before}");
    server.terminate();

    // 1. A day file whose bytes changed.
    let mut days = Vec::new();
    files_under(&data.join("rollups/days"), &mut days);
    let day = days
        .iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&day).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&day, bytes).unwrap();
    let err = refused_start(data);
    let name = day.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains(&name), "the message names the file: {err}");
    assert!(err.contains("footfall repair rollups"), "{err}");
    println!("refused: {err}");
    let out = cli(data, &["repair", "rollups"]);
    assert!(out.contains("damaged"), "{out}");
    let (mut server, after) = rebuilt(data, &c, &site).await;
    assert_eq!(after, before, "rebuilt from the archive and the log");
    // New events count on top, once.
    let more = json!([{"tracking_id": site.tracking_id, "name": "pageview", "url": "https://shop.example/new", "client_id": "new"}]);
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &more).await,
        1
    );
    wait_for_events(&c, &server.url, &site, json!("7d"), 301).await;
    // Past the answer cache's second, so that the answer is computed anew.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = by_day(&c, &server.url, &site).await;
    server.terminate();

    // 2. A truncated manifest.
    let current = data.join("rollups/CURRENT");
    let len = std::fs::metadata(&current).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&current)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = refused_start(data);
    assert!(err.contains("CURRENT"), "the message names the file: {err}");
    assert!(err.contains("footfall repair rollups"), "{err}");
    cli(data, &["repair", "rollups"]);
    let (server, after) = rebuilt(data, &c, &site).await;
    assert_eq!(after, before, "rebuilt again, the later event included");
    drop(server);
    // Nothing to repair on a sound store.
    let out = cli(data, &["repair", "rollups"]);
    assert!(out.contains("nothing to repair"), "{out}");
}
