//! The raw archive and reprocessing, against the real binary.
//!
//! Tests needing Python packages (fastavro, moto's S3 server) use the interpreter in
//! FOOTFALL_TEST_PYTHON, which scripts/test.sh installs and sets; without it they say
//! so loudly and skip — except under CI=true, where they fail.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use footfall_testkit::{generate, report, GenSpec};
use serde_json::{json, Value};

use common::post_events as send;

fn archive_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)
            } else if p.extension().is_some_and(|x| x == "avro") {
                out.push(p)
            }
        }
    }
    let mut v = Vec::new();
    walk(&dir.join("archive"), &mut v);
    v.sort();
    v
}

/// A property processed with the wrong time zone is corrected and reprocessed while
/// another task keeps ingesting into it; afterwards every metric of the range equals a
/// fresh computation with the right zone, and every concurrently sent event counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_fixes_a_wrong_time_zone_while_ingesting() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC"); // the defect: the shop is in India
    let admin = cli(dir.path(), &["key", "create", "--scope", "admin"]);
    let server = Server::start(dir.path(), &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "1s")]);
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp_millis();
    let spec = GenSpec {
        seed: 11,
        visitors: 800,
        start_ms: now - 6 * 86_400_000,
        span_ms: 3 * 86_400_000,
        max_visits_per_visitor: 3,
        host: "shop.example".into(),
    };
    let history = generate(&spec);
    for chunk in history.chunks(500) {
        let body: Vec<Value> = chunk.iter().map(|e| to_json(&site, e)).collect();
        send(&client, &server.url, &site.write_key, &json!(body)).await;
    }
    let ist: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let min_ts = history.iter().map(|e| e.ts).min().unwrap();
    let max_ts = history.iter().map(|e| e.ts).max().unwrap();
    let from = footfall_testkit::local(&chrono_tz::UTC, min_ts).date() - chrono::Duration::days(1);
    let to = footfall_testkit::local(&ist, max_ts).date() + chrono::Duration::days(1);
    let range = json!([from.to_string(), to.to_string()]);
    wait_for_events(
        &client,
        &server.url,
        &site,
        range.clone(),
        history.len() as u64,
    )
    .await;

    // Correct the zone, then reprocess while live traffic keeps coming in.
    cli(
        dir.path(),
        &[
            "property",
            "update",
            &site.tracking_id,
            "--timezone",
            "Asia/Kolkata",
        ],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live_acked = Arc::new(AtomicU64::new(0));
    let live = {
        let (client, url, tid, key, stop, acked) = (
            client.clone(),
            server.url.clone(),
            site.tracking_id.clone(),
            site.write_key.clone(),
            stop.clone(),
            live_acked.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body: Vec<Value> = (0..20).map(|j| json!({"tracking_id": tid, "name": "pageview",
                    "url": format!("https://shop.example/live/{i}/{j}"), "client_id": format!("live-{i}")})).collect();
                acked.fetch_add(
                    send(&client, &url, &key, &json!(body)).await,
                    Ordering::SeqCst,
                );
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::task::spawn_blocking({
        let (dir, url, tid, from, to) = (
            dir.path().to_path_buf(),
            server.url.clone(),
            site.tracking_id.clone(),
            from,
            to,
        );
        move || {
            Command::new(BIN)
                .args([
                    "--data-dir",
                    dir.to_str().unwrap(),
                    "reprocess",
                    "--property",
                    &tid,
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--url",
                    &url,
                    "--key",
                    &admin,
                ])
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "reprocess failed");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("reprocess: {}", result["result"]);
    assert_eq!(result["state"], "done");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    live.await.unwrap();
    let acked = live_acked.load(Ordering::SeqCst);
    assert!(acked > 0);

    // Every live event counted once (today, local).
    let today = footfall_testkit::local(&ist, chrono::Utc::now().timestamp_millis()).date();
    let mut q = json!({"site_id": site.tracking_id, "metrics": ["pageviews"], "date_range": [today.to_string(), today.to_string()],
        "filters": [["contains", "event:page", ["/live/"]]]});
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = query(&client, &server.url, &site, q.clone()).await;
        let n = v["results"][0]["metrics"][0].as_u64().unwrap_or(0);
        if n == acked {
            break;
        }
        assert!(
            n < acked,
            "live events counted more than once: {n} > {acked}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "live events missing: {n} of {acked}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    q["filters"] = json!([]);

    // The range equals a fresh computation in the right zone.
    let r = report(
        &history,
        ist,
        30 * 60_000,
        from,
        today.pred_opt().unwrap().min(to),
    );
    check_against_oracle(
        &client,
        &server.url,
        &site,
        &r,
        from,
        today.pred_opt().unwrap().min(to),
    )
    .await;
}

/// Archive files are standard Avro: an independent reader (fastavro) reads them back,
/// and `footfall archive verify` finds every acknowledged event archived exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_files_are_read_by_fastavro_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let mut server = Server::start(dir.path(), &[("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms")]);
    let client = reqwest::Client::new();
    let body: Vec<Value> = (0..300)
        .map(|i| json!({"tracking_id": site.tracking_id, "name": if i % 3 == 0 {"Signup"} else {"pageview"},
            "url": format!("https://shop.example/p{i}"), "client_id": format!("c{}", i % 50),
            "props": {"plan": "pro", "n": i, "ok": true}, "revenue": {"amount": 12.5, "currency": "INR"}}))
        .collect();
    assert_eq!(
        send(&client, &server.url, &site.write_key, &json!(body)).await,
        300
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let count = || -> usize { archive_files(dir.path()).iter().map(|_| 1).sum() };
    while count() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.terminate();
    let v = cli(dir.path(), &["archive", "verify", "--json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let total: u64 = v["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["events"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 300, "{v}");
    assert!(
        v["hours"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "ok"),
        "{v}"
    );

    let Some(py) = test_python() else { return };
    let files = archive_files(dir.path());
    let script = r#"
import json, sys, fastavro
rows = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        r = fastavro.reader(f)
        assert r.codec == "deflate", r.codec
        assert r.writer_schema["name"].endswith("Event")
        rows.extend(r)
print(json.dumps({"n": len(rows), "first": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in rows[0].items()},
                  "offsets": len({(x["log_partition"], x["log_offset"]) for x in rows})}))
"#;
    let out = run_ok(Command::new(&py).arg("-c").arg(script).args(&files));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 300);
    assert_eq!(v["offsets"], 300, "every record once");
    let first = &v["first"];
    assert_eq!(first["property"], site.tracking_id);
    assert!(first["url"]
        .as_str()
        .unwrap()
        .starts_with("https://shop.example/p"));
    assert_eq!(first["props"]["plan"]["string"], "pro");
    assert_eq!(first["revenue"]["currency"], "INR");
    assert!(
        first["ip_prefix"].as_str().unwrap().ends_with(".0"),
        "no full IP: {first}"
    );
}

/// The archive on a real S3-compatible server (moto's server mode from PyPI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_on_an_s3_compatible_server() {
    let Some(py) = test_python() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let moto = std::path::Path::new(&py).with_file_name("moto_server");
    let mut s3 = Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Create the bucket (S3 CreateBucket is a PUT on the bucket).
    loop {
        if let Ok(r) = client
            .put(format!("{endpoint}/footfall-archive"))
            .send()
            .await
        {
            if r.status().is_success() {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let env = [
        ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
        ("FOOTFALL_ARCHIVE__URL", "s3://footfall-archive/prod"),
        ("FOOTFALL_ARCHIVE__S3_ENDPOINT", endpoint.as_str()),
        ("FOOTFALL_ARCHIVE__S3_REGION", "us-east-1"),
        ("FOOTFALL_ARCHIVE__S3_ACCESS_KEY_ID", "test"),
        ("FOOTFALL_ARCHIVE__S3_SECRET_ACCESS_KEY", "test"),
        ("FOOTFALL_ARCHIVE__S3_ALLOW_HTTP", "true"),
    ];
    let mut server = Server::start(dir.path(), &env);
    let body: Vec<Value> = (0..120)
        .map(|i| json!({"tracking_id": site.tracking_id, "name": "pageview", "url": format!("https://a.example/{i}"), "client_id": format!("c{i}")}))
        .collect();
    assert_eq!(
        send(&client, &server.url, &site.write_key, &json!(body)).await,
        120
    );
    // Wait until the archiver has sealed everything, then check through the S3 API.
    let verify = |dir: &std::path::Path| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--data-dir",
            dir.to_str().unwrap(),
            "archive",
            "verify",
            "--json",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let v = loop {
        let out = verify(dir.path());
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let n: u64 = v["hours"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["events"].as_u64().unwrap())
                .sum();
            if n == 120 {
                break v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "archive on S3 incomplete: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(v["ok"], true);
    let listing = client
        .get(format!(
            "{endpoint}/footfall-archive?list-type=2&prefix=prod/events/"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&format!("prod/events/property={}/date=", site.tracking_id)),
        "{listing}"
    );
    assert!(listing.contains(".avro"), "{listing}");
    server.terminate();
    let _ = s3.kill();
    let _ = s3.wait();
}
