//! Roles on shared PostgreSQL: a node that collects and processes writes its rollups,
//! checkpoints and metadata to the database, and a separate query node answers from the
//! database alone. Generated traffic in Asia/Kolkata, a kill -9 of the writer in the
//! middle, and the query node's answers checked against the batch oracle (every
//! acknowledged event counted once).
//!
//! Needs the server `scripts/pg.sh` starts (`FOOTFALL_TEST_PG_URL`); skipped loudly
//! without one, and a failure under CI.

mod common;

use std::time::{Duration, Instant};

use common::*;
use footfall_pg::testing::TestDb;
use footfall_testkit::{generate, report, GenSpec};
use serde_json::{json, Value};

const GAP: i64 = 30 * 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_on_postgres_answers_what_a_writer_processed() {
    let Some(db) = TestDb::create("a_query_node_on_postgres_answers_what_a_writer_processed")
    else {
        return;
    };
    let env = [
        ("FOOTFALL_META__URL", db.url()),
        ("FOOTFALL_STORE__URL", db.url()),
        ("FOOTFALL_PROCESSOR__CHECKPOINT_INTERVAL_MS", "300"),
    ];
    let (writer_dir, query_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The CLI on any node's configuration reaches the shared metadata.
    let site = create_site_with(query_dir.path(), "Asia/Kolkata", &env);
    let probe_site = create_site_with(writer_dir.path(), "UTC", &env);
    let mut writer = Server::start(writer_dir.path(), &env);
    let query_node = Server::start_with(query_dir.path(), &["--role", "query"], &env);
    let client = reqwest::Client::new();

    // The query node answers reports and readiness, and does not collect.
    let r = client
        .get(format!("{}/readyz", query_node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = client
        .post(format!("{}/api/v1/events", query_node.url))
        .json(&json!({"tracking_id": site.tracking_id, "name": "pageview", "url": "https://a.example/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "a query node has no ingestion routes"
    );

    // Freshness: an event acknowledged by the writer is answered by the query node.
    let probe = json!({"tracking_id": probe_site.tracking_id, "name": "probe", "url": "https://a.example/", "client_id": "probe"});
    let sent = Instant::now();
    post_events(&client, &writer.url, &probe_site.write_key, &json!([probe])).await;
    wait_for_events(&client, &query_node.url, &probe_site, json!("day"), 1).await;
    let freshness = sent.elapsed();
    println!("freshness through PostgreSQL: {} ms", freshness.as_millis());
    assert!(freshness < Duration::from_secs(2), "{freshness:?}");

    let now = chrono::Utc::now().timestamp_millis();
    let spec = GenSpec {
        seed: 11,
        visitors: 1500,
        start_ms: now - 5 * 86_400_000,
        span_ms: 4 * 86_400_000,
        max_visits_per_visitor: 3,
        host: "shop.example".into(),
    };
    let events: Vec<_> = generate(&spec).into_iter().filter(|e| e.ts < now).collect();
    let half = events.len() / 2;
    for chunk in events[..half].chunks(500) {
        let body: Vec<Value> = chunk.iter().map(|e| to_json(&site, e)).collect();
        assert_eq!(
            post_events(&client, &writer.url, &site.write_key, &json!(body)).await,
            chunk.len() as u64
        );
    }
    // Killed mid-stream: the restart resumes from the checkpoint in the database.
    writer.kill9();
    let writer = Server::start(writer_dir.path(), &env);
    for chunk in events[half..].chunks(500) {
        let body: Vec<Value> = chunk.iter().map(|e| to_json(&site, e)).collect();
        assert_eq!(
            post_events(&client, &writer.url, &site.write_key, &json!(body)).await,
            chunk.len() as u64
        );
    }
    let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
    let from = footfall_testkit::local(&tz, spec.start_ms).date() - chrono::Duration::days(1);
    let to = footfall_testkit::local(&tz, now).date();
    wait_for_events(
        &client,
        &query_node.url,
        &site,
        json!([from.to_string(), to.to_string()]),
        events.len() as u64,
    )
    .await;
    let r = report(&events, tz, GAP, from, to);
    check_against_oracle(&client, &query_node.url, &site, &r, from, to).await;
    // The query node and the writer give the same answers.
    let q = json!({"site_id": site.tracking_id, "metrics": ["visitors", "visits", "pageviews", "bounce_rate", "visit_duration"], "date_range": [from.to_string(), to.to_string()], "dimensions": ["visit:source"]});
    let a = query(&client, &query_node.url, &site, q.clone()).await;
    let b = query(&client, &writer.url, &site, q).await;
    assert_eq!(a["results"], b["results"]);
}
