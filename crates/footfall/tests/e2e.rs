//! End to end over HTTP against the real binary: generated traffic for a property in
//! Asia/Kolkata over several days, checked against the batch oracle.

mod common;

use std::time::Duration;

use common::*;
use footfall_testkit::{generate, report, GenSpec};
use serde_json::{json, Value};

const GAP: i64 = 30 * 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_traffic_matches_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "Asia/Kolkata");
    let server = Server::start(dir.path(), &[]);
    let now = chrono::Utc::now().timestamp_millis();
    let spec = GenSpec {
        seed: 7,
        visitors: 3000,
        start_ms: now - 5 * 86_400_000,
        span_ms: 4 * 86_400_000,
        max_visits_per_visitor: 3,
        host: "shop.example".into(),
    };
    let events: Vec<_> = generate(&spec).into_iter().filter(|e| e.ts < now).collect();
    assert!(events.len() > 15_000, "{} events", events.len());
    let client = reqwest::Client::new();
    // Shuffled-order batches of up to 500 events with the write key (timestamps are days old).
    for chunk in events.chunks(500) {
        let body: Vec<Value> = chunk.iter().map(|e| to_json(&site, e)).collect();
        let accepted = post_events(&client, &server.url, &site.write_key, &json!(body)).await;
        assert_eq!(accepted, chunk.len() as u64);
    }
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let from = footfall_testkit::local(&tz, spec.start_ms).date() - chrono::Duration::days(1);
    let to = footfall_testkit::local(&tz, now).date();
    wait_for_events(
        &client,
        &server.url,
        &site,
        json!([from.to_string(), to.to_string()]),
        events.len() as u64,
    )
    .await;
    let r = report(&events, tz, GAP, from, to);
    assert!(
        r.total.visitors.len() > 2048,
        "the run must exercise the estimated range too"
    );
    check_against_oracle(&client, &server.url, &site, &r, from, to).await;

    // A sub-range: one local day in the middle.
    let mid = from + chrono::Duration::days(3);
    let r = report(&events, tz, GAP, mid, mid);
    check_against_oracle(&client, &server.url, &site, &r, mid, mid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_over_local_midnight_belongs_to_its_start_day() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "Asia/Kolkata");
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    // 23:50 IST on 2026-11-20 = 18:20 UTC; the visit continues to 00:15 IST.
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-20T23:50:00+05:30")
        .unwrap()
        .timestamp_millis();
    let mk = |min: i64, page: &str| {
        json!({"tracking_id": site.tracking_id, "name": "pageview", "client_id": "night-owl",
        "url": format!("https://shop.example{page}"), "timestamp": start + min * 60_000})
    };
    let body = json!([mk(0, "/a"), mk(12, "/b"), mk(25, "/c")]);
    post_events(&client, &server.url, &site.write_key, &body).await;
    let range = json!(["2026-11-20", "2026-11-21"]);
    wait_for_events(&client, &server.url, &site, range.clone(), 3).await;
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "date_range": range,
        "metrics": ["visits", "pageviews", "visit_duration"], "dimensions": ["time:day"]}),
    )
    .await;
    assert_eq!(
        v["results"],
        json!([
            {"dimensions": ["2026-11-20"], "metrics": [1, 1, 1500]},
            {"dimensions": ["2026-11-21"], "metrics": [0, 2, 0]}
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_checkpoints_and_exits_zero_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let mut server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let body: Vec<Value> = (0..200)
        .map(|i| json!({"tracking_id": site.tracking_id, "name": "pageview", "url": "https://a.example/", "client_id": format!("c{i}")}))
        .collect();
    let r = client
        .post(format!("{}/api/v1/events", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let (status, took) = server.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    // Everything was processed and checkpointed: the restart has it without replay.
    let server = Server::start(dir.path(), &[]);
    let v = query(&client, &server.url, &site, json!({"site_id": site.tracking_id, "metrics": ["pageviews", "visitors"], "date_range": "day"})).await;
    assert_eq!(v["results"][0]["metrics"], json!([200, 200]));
}

#[test]
fn config_command_prints_layered_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("footfall.toml");
    std::fs::write(&f, "[log]\npartitions = 2\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            f.to_str().unwrap(),
            "--data-dir",
            "/tmp/ff-x",
            "config",
        ])
        .env("FOOTFALL_SERVER__LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("partitions = 2"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:9999\""), "{text}");
    assert!(text.contains("data_dir = \"/tmp/ff-x\""), "{text}");
    let bad = std::process::Command::new(BIN)
        .args(["config"])
        .env("FOOTFALL_SERVER__LISTN", "x")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("listn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_reach_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let server = Server::start(dir.path(), &[]);
    // Changed while serving: a 10-minute session gap and a new zone.
    cli(
        dir.path(),
        &[
            "property",
            "update",
            &site.tracking_id,
            "--session-gap-minutes",
            "10",
            "--timezone",
            "Asia/Kathmandu",
        ],
    );
    let listed: Value =
        serde_json::from_str(&cli(dir.path(), &["property", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["timezone"], "Asia/Kathmandu");
    assert_eq!(listed[0]["session_gap_minutes"], 10);
    // A key made now works at once (the server refreshes its metadata cache).
    let fresh_key = cli(
        dir.path(),
        &[
            "key",
            "create",
            "--property",
            &site.tracking_id,
            "--scope",
            "write",
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = reqwest::Client::new();
    // 23:55 and 00:10 Nepal time, 15 minutes apart: two visits under a 10-minute gap.
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-20T23:55:00+05:45")
        .unwrap()
        .timestamp_millis();
    let body = json!([
        {"tracking_id": site.tracking_id, "name": "pageview", "client_id": "x", "url": "https://a.example/", "timestamp": t0},
        {"tracking_id": site.tracking_id, "name": "pageview", "client_id": "x", "url": "https://a.example/", "timestamp": t0 + 15 * 60_000},
    ]);
    post_events(&client, &server.url, &fresh_key, &body).await;
    let range = json!(["2026-11-20", "2026-11-21"]);
    wait_for_events(&client, &server.url, &site, range.clone(), 2).await;
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "date_range": range,
        "metrics": ["visits"], "dimensions": ["time:day"]}),
    )
    .await;
    assert_eq!(
        v["results"],
        json!([{"dimensions": ["2026-11-20"], "metrics": [1]}, {"dimensions": ["2026-11-21"], "metrics": [1]}])
    );
}
