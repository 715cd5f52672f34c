//! Deleting data (docs/SECURITY.md, "Deleting data"), end to end on a running server:
//! one visitor's events by user id, then a whole property's, and a property's retention.
//! After each, the deleted events are nowhere: not in the log's files (scanned as
//! bytes), not in the archive (decoded by Python's fastavro), not in the columnar files
//! (read back through the export), and not in the reports, whose numbers are those of
//! the events that remain, computed here.
//!
//! Needs the test venv's Python (scripts/test.sh); skipped loudly without it, failed
//! under CI.

#![cfg(feature = "columnar")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn admin_delete(data: &Path, url: &str, admin: &str, args: &[&str]) -> Value {
    let mut all = vec!["delete", "--url", url, "--key", admin];
    all.extend_from_slice(args);
    let out = cli(data, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Totals over all time: pageviews, visitors, visits.
async fn totals(c: &reqwest::Client, url: &str, site: &Site) -> Value {
    // Past the answer cache's second, so that the answer is computed anew.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    query(
        c,
        url,
        site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews", "visitors", "visits"], "date_range": "all"}),
    )
    .await["results"][0]["metrics"]
        .clone()
}

async fn export_csv(c: &reqwest::Client, url: &str, site: &Site) -> String {
    c.get(format!(
        "{url}/api/v1/export?site_id={}&date_range=all&format=csv",
        site.tracking_id
    ))
    .bearer_auth(&site.read_key)
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap()
}

/// Waits until the columnar files hold `rows` events of `site` (the export's lines).
async fn wait_for_columns(c: &reqwest::Client, url: &str, site: &Site, rows: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let csv = export_csv(c, url, site).await;
        let n = csv.lines().count().saturating_sub(1);
        if n == rows {
            return csv;
        }
        assert!(
            Instant::now() < deadline,
            "columnar files hold {n} rows, not {rows}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The archive's records, decoded, as one text.
fn archive_text(py: &str, data: &Path) -> String {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut files = Vec::new();
    files_under(&data.join("archive"), &mut files);
    if !files
        .iter()
        .any(|f| f.extension().is_some_and(|x| x == "avro"))
    {
        return String::new();
    }
    archive_records(py, data, out.path());
    std::fs::read_to_string(out.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitors_and_a_propertys_events_are_deleted_everywhere() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let shop = create_site(data, "Asia/Kolkata");
    let other = create_site(data, "UTC");
    let admin = cli(data, &["key", "create", "--scope", "admin"]);
    let server = Server::start(
        data,
        &[
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__REFRESH_INTERVAL", "200ms"),
        ],
    );
    let c = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    // Alice (by user id) on two days; Bob; and anonymous visitors. Each event's marker
    // prop names whose it is, so that a scan can find it.
    let ev = |who: &str, user: Option<&str>, client: &str, ago_ms: i64, page: usize| {
        let mut e = json!({"tracking_id": shop.tracking_id, "name": "pageview",
            "url": format!("https://shop.example/p{page}"), "client_id": client,
            "timestamp": now - ago_ms, "props": {"marker": format!("{who}-marker")}});
        if let Some(u) = user {
            e["user_id"] = json!(u);
        }
        e
    };
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(ev(
            "alice",
            Some("alice@example.com"),
            "a-browser",
            i * 60_000,
            i as usize,
        ));
    }
    events.push(ev(
        "alice",
        Some("alice@example.com"),
        "a-phone",
        86_400_000,
        9,
    ));
    for i in 0..3 {
        events.push(ev("bob", Some("bob@example.com"), "b", i * 60_000, 1));
    }
    for i in 0..12 {
        events.push(ev(
            "anon",
            None,
            &format!("anon-{}", i % 5),
            i * 90_000,
            i as usize % 3,
        ));
    }
    assert_eq!(
        post_events(&c, &server.url, &shop.write_key, &json!(events)).await,
        20
    );
    let other_events: Vec<Value> = (0..6)
        .map(|i| json!({"tracking_id": other.tracking_id, "name": "pageview", "url": "https://other.example/",
                        "client_id": format!("o{i}"), "props": {"marker": "other-marker"}}))
        .collect();
    assert_eq!(
        post_events(&c, &server.url, &other.write_key, &json!(other_events)).await,
        6
    );
    wait_for_events(&c, &server.url, &shop, json!("all"), 20).await;
    wait_for_events(&c, &server.url, &other, json!("all"), 6).await;
    let csv = wait_for_columns(&c, &server.url, &shop, 20).await;
    assert!(csv.contains("alice-marker"));
    wait_for_columns(&c, &server.url, &other, 6).await;
    // Before: every copy holds Alice's events (so that the checks below can fail).
    assert!(!holding(&data.join("log"), b"alice-marker").is_empty());
    assert!(archive_text(&py, data).contains("alice-marker"));
    // Pageviews, visitors, visits: Alice is one visitor with two visits.
    assert_eq!(totals(&c, &server.url, &shop).await, json!([20, 7, 8]));

    // 1. Alice, by her user id.
    let report = admin_delete(
        data,
        &server.url,
        &admin,
        &[
            "--property",
            &shop.tracking_id,
            "--user-id",
            "alice@example.com",
        ],
    );
    println!("{report:#}");
    assert_eq!(report["archive"]["events_deleted"], json!(5), "{report}");
    assert_eq!(report["log"]["records_erased"], json!(5), "{report}");
    assert_eq!(totals(&c, &server.url, &shop).await, json!([15, 6, 6]));
    let csv = wait_for_columns(&c, &server.url, &shop, 15).await;
    assert!(!csv.contains("alice-marker") && csv.contains("bob-marker"));
    assert!(holding(&data.join("log"), b"alice-marker").is_empty());
    assert!(!holding(&data.join("log"), b"bob-marker").is_empty());
    let archived = archive_text(&py, data);
    assert!(!archived.contains("alice-marker") && archived.contains("bob-marker"));
    // Once more: nothing left to delete.
    let again = admin_delete(
        data,
        &server.url,
        &admin,
        &[
            "--property",
            &shop.tracking_id,
            "--user-id",
            "alice@example.com",
        ],
    );
    assert_eq!(again["archive"]["events_deleted"], json!(0), "{again}");
    // The other property is untouched.
    assert_eq!(totals(&c, &server.url, &other).await, json!([6, 6, 6]));

    // 2. The other property, all of it.
    let report = admin_delete(
        data,
        &server.url,
        &admin,
        &["--property", &other.tracking_id, "--everything"],
    );
    println!("{report:#}");
    assert_eq!(report["archive"]["events_deleted"], json!(6), "{report}");
    assert_eq!(totals(&c, &server.url, &other).await, json!([0, 0, 0]));
    wait_for_columns(&c, &server.url, &other, 0).await;
    assert!(holding(&data.join("log"), b"other-marker").is_empty());
    assert!(!archive_text(&py, data).contains("other-marker"));
    // The shop keeps what it had.
    assert_eq!(totals(&c, &server.url, &shop).await, json!([15, 6, 6]));
    // New events after a deletion count as usual.
    let more = json!([ev("alice", Some("alice@example.com"), "a-browser", 0, 1)]);
    assert_eq!(
        post_events(&c, &server.url, &shop.write_key, &more).await,
        1
    );
    wait_for_events(&c, &server.url, &shop, json!("all"), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_propertys_retention_deletes_its_older_events() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let site = create_site(data, "America/New_York");
    let mut server = Server::start(data, &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms")]);
    let c = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000i64;
    // 4 events 100 days ago, 3 events 40 days ago, 5 today.
    let mut events = Vec::new();
    for (ago, n, marker) in [(100, 4, "old"), (40, 3, "mid"), (0, 5, "new")] {
        for i in 0..n {
            events.push(json!({"tracking_id": site.tracking_id, "name": "pageview", "url": "https://shop.example/",
                "client_id": format!("{marker}{i}"), "timestamp": now - ago * day - i * 1000,
                "props": {"marker": format!("{marker}-marker")}}));
        }
    }
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &json!(events)).await,
        12
    );
    wait_for_events(&c, &server.url, &site, json!("all"), 12).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !archive_text(&py, data).contains("new-marker") {
        assert!(Instant::now() < deadline, "not archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.terminate();
    // Two months of retention: the events of 100 days ago go, those of 40 days stay.
    let server = Server::start(
        data,
        &[
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_RETENTION__MONTHS", "2"),
            ("FOOTFALL_RETENTION__CHECK_INTERVAL", "500ms"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = totals(&c, &server.url, &site).await;
        if t[0] == json!(8) {
            break;
        }
        assert_eq!(t[0], json!(12), "{t}");
        assert!(Instant::now() < deadline, "retention not applied: {t}");
    }
    let archived = archive_text(&py, data);
    assert!(
        !archived.contains("old-marker"),
        "old events still archived"
    );
    assert!(archived.contains("mid-marker") && archived.contains("new-marker"));
    assert!(holding(&data.join("log"), b"old-marker").is_empty());
    assert!(!holding(&data.join("log"), b"mid-marker").is_empty());
}
