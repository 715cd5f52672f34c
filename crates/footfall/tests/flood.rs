//! One property flooded (a merchant's bug, a bot): beyond its configured rate its events
//! are refused with 429 and `Retry-After` — never taken and then lost — while another
//! property's events are all taken and counted, and the server's memory stays flat.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::figure;
use common::*;
use serde_json::{json, Value};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_property_leaves_the_others_and_memory_alone() {
    let dir = tempfile::tempdir().unwrap();
    let flooded = create_site(dir.path(), "UTC");
    let other = create_site(dir.path(), "UTC");
    let (rate, burst, secs) = (2_000u64, 4_000u64, 6u64);
    let server = Server::start(
        dir.path(),
        &[
            (
                "FOOTFALL_INGEST__PROPERTY_EVENTS_PER_SECOND",
                &rate.to_string(),
            ),
            ("FOOTFALL_INGEST__PROPERTY_BURST", &burst.to_string()),
        ],
    );
    let pid = server.child.id();
    let flood = Command::new(BIN)
        .args([
            "loadgen",
            "--url",
            &server.url,
            "--property",
            &flooded.tracking_id,
            "--key",
            &flooded.write_key,
            "--rate",
            "1000000",
            "--duration",
            &secs.to_string(),
            "--batch",
            "50",
            "--concurrency",
            "8",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(pid);
    let (mut peak, mut sent) = (base, 0u64);
    // The other property sends throughout the flood; every request is taken.
    for i in 0..40u64 {
        let events: Vec<Value> = (0..5)
            .map(|j| {
                json!({"tracking_id": other.tracking_id, "name": "pageview",
                "url": format!("https://other.example/{i}"), "client_id": format!("o{i}-{j}")})
            })
            .collect();
        sent += post_events(&c, &server.url, &other.write_key, &json!(events)).await;
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = flood.wait_with_output().unwrap();
    let lg: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (accepted, refused) = (
        lg["events_accepted"].as_u64().unwrap(),
        lg["errors"].as_u64().unwrap(),
    );
    // What the flooded property had a right to: the burst and the rate over the run
    // (the run takes a little longer than its nominal duration).
    let allowance = burst + rate * (secs + 2);
    assert!(accepted > 0 && accepted <= allowance, "{lg}");
    assert!(refused > accepted, "most of the flood refused: {lg}");
    assert_eq!(sent, 200);
    wait_for_events(&c, &server.url, &other, json!("day"), sent).await;
    wait_for_events(&c, &server.url, &flooded, json!("day"), accepted).await;
    let grew = peak.saturating_sub(base);
    figure(
        "flood",
        &format!(
            "flood of one property: {accepted} taken, {refused} refused with 429; the other property's {sent} all taken; RSS {} MiB at 1 s, peak {} MiB",
            base / 1024,
            peak / 1024
        ),
    );
    assert!(grew < 64 * 1024, "memory grew {grew} KiB during the flood");
}
