//! Crash test: `footfall serve` is killed with SIGKILL at random moments while events
//! stream in (during appends, processing and checkpoint writes), restarted each time,
//! and at the end every event that got a 2xx is counted exactly once and every report
//! equals the oracle over the events the log kept.
//!
//! Kills: FOOTFALL_TEST_KILLS (default 20).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use footfall_testkit::{generate, report, GenSpec, OEvent};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Outcome {
    NotSent,
    Acked,
    Unknown,
}

async fn lag_is_zero(client: &reqwest::Client, url: &str) -> bool {
    let Ok(r) = client.get(format!("{url}/metrics")).send().await else {
        return false;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines().any(|l| l == "footfall_processor_lag_bytes 0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged_and_counts_once() {
    let kills: usize = std::env::var("FOOTFALL_TEST_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let site = Arc::new(create_site(dir.path(), "Asia/Kolkata"));
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = generate(&GenSpec {
        seed: 99,
        visitors: 4000,
        start_ms: now - 2 * 86_400_000,
        span_ms: 86_400_000,
        max_visits_per_visitor: 3,
        host: "shop.example".into(),
    });
    events.retain(|e| e.ts < now);
    // A unique page per event tells, after the fact, exactly which events were counted.
    for (i, e) in events.iter_mut().enumerate() {
        e.page = Some(format!("/e{i}"));
        // Keep the query string: its campaign tags decide source and channel.
        let query = e
            .url
            .as_deref()
            .and_then(|u| u.find('?').map(|q| u[q..].to_string()));
        e.url = Some(format!(
            "https://shop.example/e{i}{}",
            query.unwrap_or_default()
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
    let mut at = 0;
    while at < events.len() {
        let n = rng.random_range(1..60).min(events.len() - at);
        batches.push(at..at + n);
        at += n;
    }
    let events = Arc::new(events);
    let batches = Arc::new(batches);
    let outcomes = Arc::new(Mutex::new(vec![Outcome::NotSent; batches.len()]));
    let next = Arc::new(AtomicUsize::new(0));
    let env = [
        ("FOOTFALL_PROCESSOR__CHECKPOINT_INTERVAL_MS", "150"),
        ("FOOTFALL_LOG__SEGMENT_BYTES", "65536"),
        ("FOOTFALL_LOG__PARTITIONS", "3"),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for round in 0..kills {
        let mut server = Server::start(dir.path(), &env);
        let url = server.url.clone();
        let mut senders = Vec::new();
        for _ in 0..3 {
            let (client, url, site, events, batches, outcomes, next) = (
                client.clone(),
                url.clone(),
                site.clone(),
                events.clone(),
                batches.clone(),
                outcomes.clone(),
                next.clone(),
            );
            senders.push(tokio::spawn(async move {
                loop {
                    // Paced so the stream spans every kill round.
                    let pause = rand::random_range(10..50);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    if b >= batches.len() {
                        return;
                    }
                    let body: Vec<Value> = events[batches[b].clone()]
                        .iter()
                        .map(|e| to_json(&site, e))
                        .collect();
                    outcomes.lock().unwrap()[b] = Outcome::Unknown;
                    let r = client
                        .post(format!("{url}/api/v1/events"))
                        .bearer_auth(&site.write_key)
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            if v["accepted"] == json!(body.len()) {
                                outcomes.lock().unwrap()[b] = Outcome::Acked;
                            }
                        }
                        _ => return, // the server died under us
                    }
                }
            }));
        }
        let wait = rng.random_range(150..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        for s in senders {
            let _ = s.await;
        }
        eprintln!(
            "round {round}: killed after {wait} ms; {} of {} batches handed out",
            next.load(Ordering::SeqCst).min(batches.len()),
            batches.len()
        );
    }
    // Send whatever is left, then let the last server drain.
    let server = Server::start(dir.path(), &env);
    let start = next.load(Ordering::SeqCst);
    for b in start..batches.len() {
        let body: Vec<Value> = events[batches[b].clone()]
            .iter()
            .map(|e| to_json(&site, e))
            .collect();
        post_events(&client, &server.url, &site.write_key, &json!(body)).await;
        outcomes.lock().unwrap()[b] = Outcome::Acked;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lag_is_zero(&client, &server.url).await {
        assert!(Instant::now() < deadline, "processor did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let from = footfall_testkit::local(&tz, now - 3 * 86_400_000).date();
    let to = footfall_testkit::local(&tz, now).date();
    let v = query(&client, &server.url, &site, json!({"site_id": site.tracking_id, "metrics": ["events"],
        "date_range": [from.to_string(), to.to_string()], "dimensions": ["event:page"], "pagination": {"limit": 1_000_000}})).await;
    let counted: BTreeMap<String, u64> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap().to_string(),
                r["metrics"][0].as_u64().unwrap(),
            )
        })
        .collect();
    let outcomes = outcomes.lock().unwrap().clone();
    let (mut acked, mut lost, mut doubled, mut unacked_kept) = (0, 0, 0, 0);
    let mut present: Vec<OEvent> = Vec::new();
    for (b, range) in batches.iter().enumerate() {
        for i in range.clone() {
            let n = counted.get(&format!("/e{i}")).copied().unwrap_or(0);
            doubled += (n > 1) as usize;
            match outcomes[b] {
                Outcome::Acked => {
                    acked += 1;
                    lost += (n == 0) as usize;
                }
                Outcome::Unknown => unacked_kept += (n == 1) as usize,
                Outcome::NotSent => assert_eq!(n, 0, "an event never sent was counted"),
            }
            if n >= 1 {
                present.push(events[i].clone());
            }
        }
    }
    eprintln!("{kills} kills: {acked} acknowledged events, {lost} lost, {doubled} counted twice; {unacked_kept} unacknowledged events were kept");
    assert_eq!(lost, 0, "acknowledged events lost");
    assert_eq!(doubled, 0, "events counted more than once");
    assert_eq!(counted.len(), present.len(), "unknown pages counted");
    let r = report(&present, tz, 30 * 60_000, from, to);
    check_against_oracle(&client, &server.url, &site, &r, from, to).await;
}
