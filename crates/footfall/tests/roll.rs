//! Rolling restarts and an upgrade under load (`scripts/cluster.sh roll`): while beacons,
//! batches and dashboard queries run through the gateway, every node of a local cluster
//! is restarted one by one, twice — the second time "onto another binary" (the same one:
//! the upgrade path). Afterwards: no request failed, no connection broke, every
//! acknowledged event is counted exactly once, and freshness never lapsed beyond 30 s
//! while processors handed their partitions around.
//!
//! Needs the binary built with the `kafka` feature and `FOOTFALL_TEST_CLUSTER=1`
//! (scripts/test.sh sets both under CI); skipped loudly otherwise.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use serde_json::{json, Value};

/// Long enough to cover both rolls (each about 35 s here) with load on either side.
const LOAD_SECONDS: u64 = 100;

fn loadgen(
    cluster: &Cluster,
    site: &Site,
    batch: usize,
    rate: u64,
    probe: bool,
) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "loadgen",
        "--url",
        &cluster.gateway,
        "--property",
        &site.tracking_id,
    ])
    .args([
        "--rate",
        &rate.to_string(),
        "--duration",
        &LOAD_SECONDS.to_string(),
    ])
    .args([
        "--batch",
        &batch.to_string(),
        "--concurrency",
        "4",
        "--json",
    ]);
    if probe {
        cmd.args(["--probe-key", &site.read_key]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child, what: &str) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    common::cluster::figure(
        "roll",
        &format!("{what} through the gateway while rolling: {v}"),
    );
    v
}

async fn count_events(c: &reqwest::Client, cluster: &Cluster, site: &Site) -> u64 {
    let v = query(
        c,
        &cluster.gateway,
        site,
        json!({"site_id": site.tracking_id, "metrics": ["events"], "date_range": "7d"}),
    )
    .await;
    v["results"][0]["metrics"][0].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_the_cluster_twice_fails_no_request() {
    if !common::cluster::enabled("rolling restart test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        gateway: String::new(),
        port_base: 26000,
    };
    let d = dir.path().to_str().unwrap().to_string();
    let out = cluster.script(&["up", &d, "--binary", BIN]);
    cluster.gateway = out.lines().last().unwrap().trim().to_string();
    let beacons_site = cluster.site("Beacons", "UTC");
    let batches_site = cluster.site("Batches", "Asia/Kolkata");

    let beacons = loadgen(&cluster, &beacons_site, 1, 300, true);
    let batches = loadgen(&cluster, &batches_site, 50, 2000, false);

    // Dashboard queries all along, counting every answer that is not a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, failed, retried) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let queries = {
        let (stop, asked, failed, retried) =
            (stop.clone(), asked.clone(), failed.clone(), retried.clone());
        let (url, site) = (cluster.gateway.clone(), batches_site.clone());
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let set = [
                json!({"site_id": site.tracking_id, "metrics": ["visitors", "visits", "pageviews"], "date_range": "7d"}),
                json!({"site_id": site.tracking_id, "metrics": ["visitors"], "dimensions": ["event:page"], "date_range": "7d", "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
            ];
            while !stop.load(Ordering::Relaxed) {
                for q in &set {
                    asked.fetch_add(1, Ordering::Relaxed);
                    let send = || {
                        c.post(format!("{url}/api/v2/query"))
                            .bearer_auth(&site.read_key)
                            .json(q)
                            .send()
                    };
                    let mut r = send().await;
                    // A read sent on a kept-alive connection the gateway closed as it
                    // reloaded is sent again, as browsers do (counted, printed).
                    if r.as_ref()
                        .is_err_and(|e| e.is_request() && !e.is_connect() && !e.is_timeout())
                    {
                        retried.fetch_add(1, Ordering::Relaxed);
                        r = send().await;
                    }
                    match r {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!(
                                "query answered {}: {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("query failed: {e}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut rolls = Vec::new();
    for args in [
        vec!["roll", d.as_str()],
        vec!["roll", d.as_str(), "--binary", BIN],
    ] {
        let started = Instant::now();
        let base = cluster.port_base;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            common::cluster::script(base, &a)
        })
        .await
        .unwrap();
        rolls.push(started.elapsed());
    }
    common::cluster::figure("roll", &format!("rolls took {rolls:?}"));

    let beacons =
        tokio::task::spawn_blocking(move || finish(beacons, "beacons (1 event per request)"))
            .await
            .unwrap();
    let batches =
        tokio::task::spawn_blocking(move || finish(batches, "batches (50 events per request)"))
            .await
            .unwrap();
    stop.store(true, Ordering::Relaxed);
    queries.await.unwrap();
    let (asked, failed, retried) = (
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
    );
    common::cluster::figure("roll", &format!(
        "dashboard queries while rolling: {asked} asked, {failed} not answered 200, {retried} sent again after the gateway closed a kept-alive connection"
    ));

    assert_eq!(beacons["errors"], 0, "beacons: {beacons}");
    assert_eq!(batches["errors"], 0, "batches: {batches}");
    assert_eq!(failed, 0, "queries that failed while rolling");
    assert!(asked > 100, "{asked} queries");
    let fresh = &beacons["freshness"];
    assert_eq!(fresh["not_visible"], 0, "{fresh}");
    assert!(
        fresh["max_ms"].as_f64().unwrap_or(f64::MAX) < 30_000.0,
        "freshness lapsed: {fresh}"
    );

    // Every acknowledged event counted once, and still once a while later. The beacon
    // run's freshness probes are page views of its property too (all acknowledged:
    // none failed, asserted above).
    let acknowledged = |lg: &Value| {
        lg["events_accepted"].as_u64().unwrap() + lg["freshness"]["probes"].as_u64().unwrap_or(0)
    };
    let c = reqwest::Client::new();
    for (site, lg) in [(&beacons_site, &beacons), (&batches_site, &batches)] {
        assert!(acknowledged(lg) > 1000, "{lg}");
        let want = acknowledged(lg);
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_events(&c, &cluster, site).await < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (site, lg) in [(&beacons_site, &beacons), (&batches_site, &batches)] {
        let counted = count_events(&c, &cluster, site).await;
        if counted != acknowledged(lg) {
            // What the topic holds of the property, and where each part's processor
            // checkpointed: tells a log that lost events from a processor that did.
            let count = Command::new(BIN)
                .arg("--config")
                .arg(cluster.dir.join("footfall.toml"))
                .args(["log", "count", "--property", &site.tracking_id])
                .output()
                .unwrap();
            eprintln!(
                "the topic holds: {}{}",
                String::from_utf8_lossy(&count.stdout),
                String::from_utf8_lossy(&count.stderr)
            );
        }
        common::cluster::figure(
            "roll",
            &format!(
                "{}: {} events acknowledged, {counted} counted",
                site.tracking_id,
                acknowledged(lg)
            ),
        );
        assert_eq!(counted, acknowledged(lg), "events counted");
    }
}
