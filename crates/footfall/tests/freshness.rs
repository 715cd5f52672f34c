//! Load-time check: under sustained load from `footfall loadgen`, the time from a 2xx to
//! the event being visible in /api/v2/query is measured and printed (p50/p99). The target
//! (p99 ≤ 2 s) is checked by the benchmark on a release build (scripts/bench.sh); here
//! the test requires every probe to become visible.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn freshness_under_sustained_load() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "Asia/Kolkata");
    let server = Server::start(dir.path(), &[]);
    let out = run_ok(std::process::Command::new(BIN).args([
        "loadgen",
        "--url",
        &server.url,
        "--property",
        &site.tracking_id,
        "--rate",
        "3000",
        "--duration",
        "6",
        "--batch",
        "20",
        "--concurrency",
        "8",
        "--probe-key",
        &site.read_key,
        "--json",
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("loadgen: {v}");
    let f = &v["freshness"];
    eprintln!(
        "freshness under {:.0} events/s: p50 {} ms, p99 {} ms over {} probes",
        v["events_per_second"].as_f64().unwrap(),
        f["p50_ms"],
        f["p99_ms"],
        f["probes"]
    );
    assert_eq!(v["errors"], 0);
    assert!(f["probes"].as_u64().unwrap() >= 10, "{f}");
    assert_eq!(f["not_visible"], 0, "every probe must become visible: {f}");
}
