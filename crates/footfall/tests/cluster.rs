//! The local cluster of `scripts/cluster.sh` (tansu, PostgreSQL, moto's S3 server, nginx,
//! two collectors, two processors, a query node, an archiver), end to end through the
//! gateway: oracle traffic in Asia/Kolkata with a processor and a collector killed -9
//! mid-stream and restarted, load-generator traffic, then every acknowledged event
//! counted once (per-day metrics equal the oracle), each archived once, partitions
//! handed over within 30 s, and freshness through the database.
//!
//! Needs the binary built with the `kafka` feature and `FOOTFALL_TEST_CLUSTER=1`
//! (scripts/test.sh sets both under CI); skipped loudly otherwise.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use footfall_testkit::{generate, report, GenSpec};
use serde_json::{json, Value};

const GAP: i64 = 30 * 60_000;

async fn send_all(
    c: &reqwest::Client,
    cl: &Cluster,
    site: &Site,
    events: &[footfall_testkit::OEvent],
) {
    for chunk in events.chunks(250) {
        let body: Vec<Value> = chunk.iter().map(|e| to_json(site, e)).collect();
        assert_eq!(
            post_events(c, &cl.gateway, &site.write_key, &json!(body)).await,
            chunk.len() as u64
        );
    }
}

async fn total_events(c: &reqwest::Client, url: &str, site: &Site, range: Value) -> u64 {
    query(
        c,
        url,
        site,
        json!({"site_id": site.tracking_id, "metrics": ["events"], "date_range": range}),
    )
    .await["results"][0]["metrics"][0]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_every_acknowledged_event_once_through_kills() {
    if !common::cluster::enabled("cluster test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        gateway: String::new(),
        port_base: 28000,
    };
    let started = Instant::now();
    let out = cluster.script(&["up", dir.path().to_str().unwrap(), "--binary", BIN]);
    cluster.gateway = out.lines().last().unwrap().trim().to_string();
    println!(
        "cluster up in {:.1} s at {}",
        started.elapsed().as_secs_f64(),
        cluster.gateway
    );
    let c = reqwest::Client::new();
    let site = cluster.site("Shop", "Asia/Kolkata");
    let probe_site = cluster.site("Probes", "UTC");

    // The dashboard and its login are served through the gateway by the query nodes.
    for (path, want) in [("/", "dashboard.js"), ("/dashboard.js", "/api/auth/me")] {
        let r = c
            .get(format!("{}{path}", cluster.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path} through the gateway");
        assert!(r.text().await.unwrap().contains(want), "GET {path}");
    }
    let r = c
        .get(format!("{}/api/auth/me", cluster.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the login endpoints are the query nodes'");

    // A forged X-Forwarded-For changes nothing: beacons through the gateway from one
    // browser, each claiming another address, are one visitor (nginx appends the
    // address it was reached from, and that right-most entry is the one used). The
    // browser connects from 127.0.0.2: an address that is not a trusted proxy.
    let forged = cluster.site("Forged", "UTC");
    let browser = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().ok())
        .build()
        .unwrap();
    for i in 0..5 {
        let r = browser
            .post(format!("{}/api/v1/events", cluster.gateway))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            )
            .json(&json!({"tracking_id": forged.tracking_id, "name": "pageview", "url": format!("https://f.example/{i}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "beacon {i}: {}", r.status());
    }
    wait_for_events(&c, &cluster.gateway, &forged, json!("day"), 5).await;
    let v = query(
        &c,
        &cluster.gateway,
        &forged,
        json!({"site_id": forged.tracking_id, "metrics": ["visitors", "pageviews"], "date_range": "day"}),
    )
    .await;
    println!("five beacons with forged X-Forwarded-For through the gateway: {v}");
    assert_eq!(
        v["results"][0]["metrics"],
        json!([1, 5]),
        "forged X-Forwarded-For entries must not make other visitors"
    );

    // The query nodes share answers through Redis: a query answered by query-1 is a hit
    // on query-2. New events still show within the freshness bound.
    let node = |offset: u16| format!("http://127.0.0.1:{}", cluster.port_base + offset);
    let (q1, q2) = (node(201), node(202));
    let hits = |url: String| {
        let c = c.clone();
        async move {
            let text = c
                .get(format!("{url}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("footfall_query_cache_hits_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
    };
    let q = json!({"site_id": forged.tracking_id, "metrics": ["pageviews"], "date_range": "day"});
    let mut shared = false;
    // Twice at most: keys carry the minute, and a minute may turn between the two.
    for _ in 0..2 {
        let before = hits(q2.clone()).await;
        let a = query(&c, &q1, &forged, q.clone()).await;
        let b = query(&c, &q2, &forged, q.clone()).await;
        assert_eq!(a, b, "both nodes answer alike");
        if hits(q2.clone()).await == before + 1 {
            shared = true;
            break;
        }
    }
    assert!(
        shared,
        "query-2 did not answer from the answer query-1 cached"
    );
    for i in 5..8 {
        let r = browser
            .post(format!("{}/api/v1/events", cluster.gateway))
            .json(&json!({"tracking_id": forged.tracking_id, "name": "pageview", "url": format!("https://f.example/{i}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let posted = Instant::now();
    loop {
        let v = query(&c, &q2, &forged, q.clone()).await;
        if v["results"][0]["metrics"][0] == 8 {
            break;
        }
        assert!(
            posted.elapsed() < Duration::from_secs(2),
            "new events not visible through the cached query node within 2 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "shared query cache: a hit on query-2 for query-1's answer; new events visible through it after {} ms",
        posted.elapsed().as_millis()
    );

    let now = chrono::Utc::now().timestamp_millis();
    let spec = GenSpec {
        seed: 23,
        visitors: 2000,
        start_ms: now - 5 * 86_400_000,
        span_ms: 4 * 86_400_000,
        max_visits_per_visitor: 3,
        host: "shop.example".into(),
    };
    let events: Vec<_> = generate(&spec).into_iter().filter(|e| e.ts < now).collect();
    let third = events.len() / 3;
    send_all(&c, &cluster, &site, &events[..third]).await;

    // Kill -9 a processor and a collector between requests.
    cluster.kill9("processor-1");
    cluster.kill9("collector-1");
    let killed = Instant::now();
    // Probes over many visitors (so over every partition) must all be counted: the
    // killed processor's partitions have moved to the other one.
    let probes: Vec<Value> = (0..64)
        .map(|i| json!({"tracking_id": probe_site.tracking_id, "name": "pageview", "url": "https://p.example/", "client_id": format!("probe-{i}")}))
        .collect();
    assert_eq!(
        post_events(&c, &cluster.gateway, &probe_site.write_key, &json!(probes)).await,
        64,
        "the gateway sends around the dead collector"
    );
    loop {
        let n = total_events(&c, &cluster.gateway, &probe_site, json!("day")).await;
        if n == 64 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(45),
            "only {n} of 64 probes counted {:?} after the kill",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let handover = killed.elapsed();
    println!(
        "partitions of the killed processor processed again after {} ms",
        handover.as_millis()
    );
    assert!(handover < Duration::from_secs(30), "{handover:?}");

    send_all(&c, &cluster, &site, &events[third..2 * third]).await;
    cluster.script(&["restart", dir.path().to_str().unwrap(), "processor-1"]);
    cluster.script(&["restart", dir.path().to_str().unwrap(), "collector-1"]);
    send_all(&c, &cluster, &site, &events[2 * third..]).await;

    // The restarted processor takes its share back; freshness is then measured with the
    // partitions settled (each processor's metrics say how many it owns).
    let settling = Instant::now();
    loop {
        let mut owned = Vec::new();
        for offset in [301, 302] {
            let text = match c.get(format!("{}/metrics", node(offset))).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            owned.push(
                text.lines()
                    .find_map(|l| l.strip_prefix("footfall_processor_partitions_owned "))
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(0),
            );
        }
        if owned == [2, 2] {
            println!(
                "partitions settled after the restart: 2 and 2, {} ms after the last batch",
                settling.elapsed().as_millis()
            );
            break;
        }
        assert!(
            settling.elapsed() < Duration::from_secs(30),
            "partitions owned by the processors: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Load-generator traffic through the gateway, with freshness probes.
    let lg_site = cluster.site("Load", "Europe/London");
    let out = Command::new(BIN)
        .args([
            "loadgen",
            "--url",
            &cluster.gateway,
            "--property",
            &lg_site.tracking_id,
        ])
        .args([
            "--rate",
            "300",
            "--duration",
            "6",
            "--concurrency",
            "8",
            "--json",
        ])
        .args(["--probe-key", &lg_site.read_key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lg: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("loadgen through the gateway: {lg}");
    assert_eq!(lg["errors"], 0, "{lg}");
    let lg_accepted = lg["events_accepted"].as_u64().unwrap();
    assert!(lg_accepted > 1000, "{lg}");
    let probes_sent = lg["freshness"]["probes"].as_u64().unwrap_or(0);

    // Every acknowledged event counted once.
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let from = footfall_testkit::local(&tz, spec.start_ms).date() - chrono::Duration::days(1);
    let to = footfall_testkit::local(&tz, now).date();
    wait_for_events(
        &c,
        &cluster.gateway,
        &site,
        json!([from.to_string(), to.to_string()]),
        events.len() as u64,
    )
    .await;
    let r = report(&events, tz, GAP, from, to);
    check_against_oracle(&c, &cluster.gateway, &site, &r, from, to).await;
    // What only the columnar engine answers (two breakdowns at once), from the files the
    // archiver made on S3, through the gateway: every page view once.
    if cfg!(feature = "columnar") {
        let range = json!([from.to_string(), to.to_string()]);
        let q = json!({"site_id": site.tracking_id, "metrics": ["pageviews"], "date_range": range,
            "dimensions": ["event:page", "visit:source"], "pagination": {"limit": 100000}});
        let want: u64 = r.pages.values().map(|p| p.pageviews).sum();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let v = query(&c, &cluster.gateway, &site, q.clone()).await;
            assert_eq!(v["meta"]["engine"], "columnar", "{v}");
            let got: u64 = v["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row["metrics"][0].as_u64().unwrap())
                .sum();
            if got == want {
                println!("columnar engine across the cluster: {got} page views by page and source");
                break;
            }
            assert!(got < want, "more page views than sent: {got} > {want}");
            assert!(
                Instant::now() < deadline,
                "columnar files: {got} of {want} page views"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // SQL over the same files, through the gateway (routed to the query nodes).
        let r = c
            .post(format!("{}/api/v1/sql", cluster.gateway))
            .bearer_auth(&site.read_key)
            .json(&json!({"site_id": site.tracking_id, "date_range": range,
                "sql": "SELECT count(*) AS n FROM events WHERE pageview"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST /api/v1/sql through the gateway");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["rows"][0][0].as_u64(), Some(want), "{v}");
        println!("SQL through the gateway: {want} page views");
    }
    wait_for_events(
        &c,
        &cluster.gateway,
        &lg_site,
        json!("7d"),
        lg_accepted + probes_sent,
    )
    .await;
    println!(
        "acknowledged {} oracle events, {} load-generator events (+{} probes): all counted once",
        events.len(),
        lg_accepted,
        probes_sent
    );
    let p99 = lg["freshness"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    println!("freshness through the cluster: p99 {p99} ms");
    assert!(p99 <= 2000.0, "freshness p99 {p99} ms");

    // Each processor's /metrics tells what it processed, and no lag once every
    // acknowledged event is counted.
    for offset in [301, 302] {
        let url = format!("{}/metrics", node(offset));
        let text = c.get(&url).send().await.unwrap().text().await.unwrap();
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from {url}"))
        };
        let (events, lag, lag_s) = (
            gauge("footfall_processor_events"),
            gauge("footfall_processor_lag_messages"),
            gauge("footfall_processor_lag_seconds"),
        );
        println!(
            "processor on port +{offset}: {events} events processed, lag {lag} messages, {lag_s} s"
        );
        assert!(events > 0.0, "{url}: no events processed");
        assert_eq!(lag, 0.0, "{url}: lag after every event was counted");
        assert_eq!(lag_s, 0.0, "{url}: lag after every event was counted");
    }

    // The archive holds each acknowledged event once.
    let archived = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v: Value = serde_json::from_str(&cluster.cli(&[
                "--data-dir",
                dir.path().join("data/archiver-1").to_str().unwrap(),
                "archive",
                "verify",
                "--property",
                &site.tracking_id,
                "--json",
            ]))
            .unwrap();
            let hours = v["hours"].as_array().unwrap();
            let archived: u64 = hours.iter().map(|h| h["events"].as_u64().unwrap()).sum();
            let dups: u64 = hours
                .iter()
                .map(|h| h["duplicates"].as_u64().unwrap())
                .sum();
            assert_eq!(dups, 0, "no event archived twice");
            if archived == want {
                println!("archive: {archived} events, 0 duplicates");
                return;
            }
            assert!(
                archived < want,
                "more archived ({archived}) than acknowledged ({want})"
            );
            assert!(Instant::now() < deadline, "archived {archived} of {want}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    archived(events.len() as u64);

    // The archiver's machine is lost with its disk (a pod's emptyDir): the one that
    // replaces it goes on from the position in the database, archiving nothing twice.
    cluster.kill9("archiver-1");
    std::fs::remove_dir_all(dir.path().join("data/archiver-1")).unwrap();
    cluster.script(&["restart", dir.path().to_str().unwrap(), "archiver-1"]);
    let more: Vec<_> = generate(&GenSpec {
        seed: 24,
        visitors: 50,
        ..spec.clone()
    })
    .into_iter()
    .filter(|e| e.ts < now)
    .collect();
    send_all(&c, &cluster, &site, &more).await;
    // Two seal rounds (2 s each) after the new events, for any duplicate to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    archived((events.len() + more.len()) as u64);
    println!(
        "archiver replaced without its data directory: {} more events archived, none twice",
        more.len()
    );
    let status = cluster.script(&["status", dir.path().to_str().unwrap()]);
    println!("{status}");
}
