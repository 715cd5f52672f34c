//! Shared engines failing under a running node: the answer is a clear 503 with
//! Retry-After (never a hang, never a 2xx for what was not kept), `/readyz` names what
//! is missing, and the node recovers by itself when the engine is back.
//!
//! The database is cut by a TCP proxy between the query node and PostgreSQL (the server
//! `scripts/pg.sh` starts, `FOOTFALL_TEST_PG_URL`); the broker is a tansu of the test's
//! own (`FOOTFALL_TEST_TANSU`), killed. Skipped loudly without them; failures under CI.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use footfall_pg::testing::TestDb;
use serde_json::{json, Value};

/// A TCP proxy that can be cut: open connections are closed and new ones refused
/// (accepted and closed at once) until it is restored.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                o.lock().unwrap().push(client.try_clone().unwrap());
                o.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by the proxy's.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, path) = rest.split_once('/').unwrap_or((rest, ""));
    let creds = auth
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{creds}127.0.0.1:{port}/{path}")
}

/// Sends a request and answers its status, whether it said Retry-After, its body, and
/// how long the answer took.
async fn timed(req: reqwest::RequestBuilder) -> (u16, bool, String, Duration) {
    let started = Instant::now();
    let r = req.send().await.unwrap();
    let took = started.elapsed();
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    (status, retry, r.text().await.unwrap(), took)
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_answers_503_while_its_database_is_cut_and_recovers() {
    let Some(db) = TestDb::create("a_query_node_answers_503_while_its_database_is_cut") else {
        return;
    };
    let host_port = db
        .url()
        .split_once('@')
        .and_then(|(_, r)| r.split('/').next())
        .unwrap()
        .to_string();
    let proxy = Proxy::start(host_port);
    let proxied = through(db.url(), proxy.port);
    let direct = [
        ("FOOTFALL_META__URL", db.url()),
        ("FOOTFALL_STORE__URL", db.url()),
        ("FOOTFALL_PROCESSOR__CHECKPOINT_INTERVAL_MS", "300"),
    ];
    let via_proxy = [
        ("FOOTFALL_META__URL", proxied.as_str()),
        ("FOOTFALL_STORE__URL", proxied.as_str()),
        ("FOOTFALL_STORE__READ_MAX_STALENESS_MS", "250"),
        // The answer cache would answer the same query from memory for its ttl: this
        // test is about the database path.
        ("FOOTFALL_QUERY__CACHE", "off"),
    ];
    let (wd, qd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let site = create_site_with(wd.path(), "UTC", &direct);
    let writer = Server::start(wd.path(), &direct);
    let query_node = Server::start_with(qd.path(), &["--role", "query"], &via_proxy);
    let c = reqwest::Client::new();
    let body: Vec<Value> = (0..50)
        .map(|i| json!({"tracking_id": site.tracking_id, "name": "pageview", "url": "https://a.example/", "client_id": format!("c{i}")}))
        .collect();
    post_events(&c, &writer.url, &site.write_key, &json!(body)).await;
    wait_for_events(&c, &query_node.url, &site, json!("day"), 50).await;

    proxy.cut();
    // Within its staleness window the node may answer from its last look; after it,
    // it must ask the database.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = json!({"site_id": site.tracking_id, "metrics": ["events"], "date_range": "day"});
    let (status, retry, text, took) = timed(
        c.post(format!("{}/api/v2/query", query_node.url))
            .bearer_auth(&site.read_key)
            .json(&q),
    )
    .await;
    println!(
        "query with the database cut: {status} in {} ms: {text}",
        took.as_millis()
    );
    assert_eq!(status, 503, "{text}");
    assert!(retry, "Retry-After");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(took < Duration::from_secs(10), "answered in {took:?}");
    let (s, text) = get(&c, &format!("{}/readyz", query_node.url)).await;
    println!("readyz with the database cut: {s} {text}");
    assert_eq!(s, 503);
    assert!(text.contains("database"), "{text}");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, _) = get(&c, &format!("{}/readyz", query_node.url)).await;
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = query(&c, &query_node.url, &site, q).await;
    assert_eq!(v["results"][0]["metrics"][0], 50, "{v}");
    drop(writer);
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_answers_503_when_its_broker_dies() {
    use footfall_kafka::{KafkaLog, KafkaOptions};
    let Some(mut broker) =
        footfall_kafka::testing::Broker::start("a_collector_answers_503_when_its_broker_dies")
    else {
        return;
    };
    let brokers = broker.address();
    let topic = KafkaOptions {
        brokers: brokers.clone(),
        topic: "events".into(),
        ..Default::default()
    };
    KafkaLog::create_topic(&topic, 2, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let env = [
        ("FOOTFALL_LOG__KAFKA_BROKERS", brokers.as_str()),
        ("FOOTFALL_LOG__KAFKA_TOPIC", "events"),
        ("FOOTFALL_LOG__KAFKA_DELIVERY_TIMEOUT_MS", "2000"),
    ];
    let collector = Server::start_with(dir.path(), &["--role", "collector"], &env);
    let c = reqwest::Client::new();
    let ev = json!([{"tracking_id": site.tracking_id, "name": "pageview", "url": "https://a.example/", "client_id": "x"}]);
    assert_eq!(
        post_events(&c, &collector.url, &site.write_key, &ev).await,
        1
    );

    broker.kill();
    let (status, retry, text, took) = timed(
        c.post(format!("{}/api/v1/events", collector.url))
            .bearer_auth(&site.write_key)
            .json(&ev),
    )
    .await;
    println!(
        "ingest with the broker dead: {status} in {} ms: {text}",
        took.as_millis()
    );
    assert_eq!(status, 503, "{text}");
    assert!(retry, "Retry-After");
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, text) = get(&c, &format!("{}/readyz", collector.url)).await;
    println!("readyz with the broker dead: {s} {text}");
    assert_eq!(s, 503);
    assert!(text.contains("event log"), "{text}");
}
