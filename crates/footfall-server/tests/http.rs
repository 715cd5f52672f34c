//! In-process HTTP tests through `app()` with the real embedded log, store and metadata.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use footfall_event::{Clock, ManualClock};
use footfall_log::{AppendCallback, EventLog, FileLog, FileLogOptions, Offset, Record};
use footfall_meta::{MetaStore, Scope, SqliteMeta};
use footfall_processor::{Processor, ProcessorOptions, ProcessorStats};
use footfall_server::{app, AppState, IngestRules, MetaCache, Metrics};
use footfall_store::{RollupStore, SnapshotStore};
use serde_json::{json, Value};
use tower::ServiceExt;

const NOW: i64 = 1_795_600_000_000; // 2026-11-24T08:26:40Z

struct Harness {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    router: Router,
    meta: Arc<SqliteMeta>,
    processor: Mutex<Processor>,
}

fn harness_with_log(log: Option<Arc<dyn EventLog>>) -> Harness {
    harness_with(log, 64 << 20)
}

fn harness_with(log: Option<Arc<dyn EventLog>>, pending_bytes: usize) -> Harness {
    harness_full(log, pending_bytes, IngestRules::default())
}

/// A harness whose every property has `limit` (each its own allowance).
fn harness_with_limits(limit: footfall_server::Limit) -> Harness {
    let rules = IngestRules {
        property_limits: Arc::new(footfall_server::PropertyLimits::new(
            limit,
            Default::default(),
        )),
        ..Default::default()
    };
    harness_full(None, 64 << 20, rules)
}

fn harness_full(
    log: Option<Arc<dyn EventLog>>,
    pending_bytes: usize,
    rules: IngestRules,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(SqliteMeta::open(dir.path().join("meta.db")).unwrap());
    let log: Arc<dyn EventLog> = log.unwrap_or_else(|| {
        Arc::new(FileLog::open(dir.path().join("log"), FileLogOptions::default()).unwrap())
    });
    let store: Arc<dyn RollupStore> =
        Arc::new(SnapshotStore::open(dir.path().join("rollups")).unwrap());
    let cache = Arc::new(MetaCache::new(meta.clone()).unwrap());
    let stats = Arc::new(ProcessorStats::new(log.partitions()));
    let zc = cache.clone();
    let processor = Processor::new(
        log.clone(),
        store.clone(),
        Arc::new(move |id: &str| footfall_processor::PropertySettings {
            tz: zc
                .property(id)
                .ok()
                .flatten()
                .map(|p| p.tz())
                .unwrap_or(chrono_tz::UTC),
            gap_ms: None,
        }),
        ProcessorOptions::default(),
        stats.clone(),
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(NOW));
    let state = Arc::new(AppState {
        log: Some(log.clone()),
        store: Some(store),
        cache,
        clock,
        metrics: Arc::new(Metrics::default()),
        processor: Some((stats, log)),
        readiness: Vec::new(),
        rules,
        accepting: AtomicBool::new(true),
        message_ids: footfall_server::protocols::MessageIds::new(1_000_000),
        tracker_path: String::new(),
        query_cache: None,
        events: None,
        sql_limits: Default::default(),
        draining: std::sync::atomic::AtomicBool::new(false),
        reprocessor: None,
        eraser: None,
        auth: Some(Arc::new(footfall_auth::Auth::new(
            meta.clone(),
            footfall_auth::AuthOptions::default(),
        ))),
        secure_cookies: false,
        pending: Arc::new(tokio::sync::Semaphore::new(pending_bytes)),
    });
    let router = app(state.clone()).layer(MockConnectInfo(SocketAddr::from((
        [198, 51, 100, 7],
        40000,
    ))));
    Harness {
        _dir: dir,
        state,
        router,
        meta,
        processor: Mutex::new(processor),
    }
}

fn harness() -> Harness {
    harness_with_log(None)
}

impl Harness {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v, headers)
    }

    async fn ingest(&self, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut h = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            h.push(("authorization", a.as_str()));
        }
        let (s, v, _) = self
            .send(
                "POST",
                "/api/v1/events",
                &h,
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        (s, v)
    }

    async fn query(&self, key: &str, q: Value) -> (StatusCode, Value) {
        self.processor.lock().unwrap().catch_up().unwrap();
        let auth = format!("Bearer {key}");
        let (s, v, _) = self
            .send(
                "POST",
                "/api/v2/query",
                &[("authorization", &auth)],
                serde_json::to_vec(&q).unwrap(),
            )
            .await;
        (s, v)
    }

    fn property(&self, tz: &str, domains: &[&str]) -> (String, String, String) {
        let d: Vec<String> = domains.iter().map(|s| s.to_string()).collect();
        let p = self.meta.create_property("Shop", tz, &d).unwrap();
        let (r, _) = self.meta.create_key(&p.tracking_id, Scope::Read).unwrap();
        let (w, _) = self.meta.create_key(&p.tracking_id, Scope::Write).unwrap();
        (p.tracking_id, r, w)
    }
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

fn ev(tid: &str, name: &str) -> Value {
    json!({"tracking_id": tid, "name": name, "url": "https://shop.example/a", "timestamp": NOW - 1000})
}

/// Per-property rate limits and quotas: a property over its allowance gets 429 with
/// `Retry-After` in each protocol's own shape (items of a batch beyond it are refused by
/// name, the others kept); another property's events are still taken. The harness's
/// clock stands still, so no allowance comes back during the test.
#[tokio::test]
async fn property_rate_limits_and_quotas_in_each_protocol_shape() {
    let h = harness_with_limits(footfall_server::Limit {
        events_per_second: 1.0,
        burst: 3.0,
        daily_quota: 0,
    });
    let (a, read_a, write_a) = h.property("UTC", &["a.example"]);
    let (b, read_b, _) = h.property("UTC", &[]);
    let page = |tid: &str, i: usize| {
        json!({"tracking_id": tid, "name": "pageview", "url": format!("https://a.example/{i}"),
            "timestamp": NOW - 1000, "client_id": format!("c{i}")})
    };
    // A batch beyond the burst: three kept, the fourth refused by name (202).
    let batch: Vec<Value> = (0..4).map(|i| page(&a, i)).collect();
    let (s, v) = h.ingest(json!(batch), Some(&write_a)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["rejected"][0]["code"], "rate_limited", "{v}");
    assert_eq!(v["rejected"][0]["retry_after"], 1);
    // Then nothing of A: 429 with Retry-After, native shape.
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/v1/events",
            &[
                ("content-type", "application/json"),
                ("user-agent", FIREFOX),
            ],
            serde_json::to_vec(&page(&a, 9)).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert_eq!(hd["retry-after"], "1");
    // Plausible's shape.
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/event",
            &[("content-type", "text/plain"), ("user-agent", FIREFOX)],
            serde_json::to_vec(
                &json!({"n": "pageview", "u": "https://a.example/p", "d": "a.example"}),
            )
            .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        v["errors"]["event"][0]
            .as_str()
            .unwrap()
            .contains("rate_limited"),
        "{v}"
    );
    assert_eq!(hd["retry-after"], "1");
    // Segment's, with the write key in the body.
    let (s, v, hd) = h
        .send(
            "POST",
            "/v1/track",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json!({"writeKey": write_a, "userId": "u1", "event": "Signup"}))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(hd["retry-after"], "1");
    // GA4's: a 429 rather than its usual 204, since nothing was kept.
    let (s, v, _) = h
        .send(
            "POST",
            &format!("/mp/collect?measurement_id={a}&api_secret={write_a}"),
            &[],
            serde_json::to_vec(&json!({"client_id": "g1", "events": [{"name": "page_view", "params": {"page_location": "https://a.example/g"}}]})).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // Another property is untouched.
    let (s, v) = h.ingest(json!([page(&b, 1), page(&b, 2)]), None).await;
    assert_eq!(
        (s, v["accepted"].clone()),
        (StatusCode::ACCEPTED, json!(2)),
        "{v}"
    );
    let count = |tid: String, key: String| {
        let h = &h;
        async move {
            let (_, v) = h
                .query(
                    &key,
                    json!({"site_id": tid, "metrics": ["pageviews"], "date_range": "7d"}),
                )
                .await;
            v["results"][0]["metrics"][0].clone()
        }
    };
    assert_eq!(
        count(a.clone(), read_a).await,
        json!(3),
        "only what was acknowledged"
    );
    assert_eq!(count(b.clone(), read_b).await, json!(2));

    // A daily quota: 429 `quota_exceeded` until midnight UTC.
    let h = harness_with_limits(footfall_server::Limit {
        events_per_second: 0.0,
        burst: 0.0,
        daily_quota: 2,
    });
    let (q, _, wq) = h.property("UTC", &[]);
    let (s, v) = h.ingest(json!([page(&q, 1), page(&q, 2)]), Some(&wq)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/v1/events",
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {wq}")),
            ],
            serde_json::to_vec(&page(&q, 3)).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    let wait: i64 = hd["retry-after"].to_str().unwrap().parse().unwrap();
    let midnight = (NOW / 86_400_000 + 1) * 86_400_000;
    assert_eq!(wait, (midnight - NOW + 999) / 1000);
}

/// Who is counted (docs/METRICS.md): browser-style traffic whose user agent names no
/// browser is kept (202) but out of the statistics, under `bot:no-browser`; a write-key
/// sender's events count whatever their user agent unless they say `server_side: false`
/// (as `footfall import` does); only a write key may say `server_side: true`.
#[tokio::test]
async fn only_people_are_counted() {
    let h = harness();
    let (tid, read, write) = h.property("UTC", &[]);
    let page = |path: &str| {
        json!({"tracking_id": tid, "name": "pageview", "url": format!("https://shop.example{path}"),
            "timestamp": NOW - 1000})
    };
    let send = |body: Value, ua: &'static str, key: Option<String>| {
        let h = &h;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let mut hd = vec![("content-type", "application/json"), ("user-agent", ua)];
            if let Some(a) = &auth {
                hd.push(("authorization", a.as_str()));
            }
            let (s, v, _) = h
                .send(
                    "POST",
                    "/api/v1/events",
                    &hd,
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
            (s, v)
        }
    };
    let feed = "UniversalFeedParser/4.2-pre-314-svn +http://feedparser.org/";
    assert_eq!(
        send(page("/browser"), FIREFOX, None).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(page("/feed"), feed, None).await.0,
        StatusCode::ACCEPTED
    );
    let mut backend = page("/backend");
    backend["user_agent"] = json!("ShopBackend/3.1");
    assert_eq!(
        send(backend, "ShopBackend/3.1", Some(write.clone()))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let mut replayed = page("/replayed");
    replayed["user_agent"] = json!(feed);
    replayed["server_side"] = json!(false);
    assert_eq!(
        send(replayed, feed, Some(write.clone())).await.0,
        StatusCode::ACCEPTED
    );
    let mut claim = page("/claim");
    claim["server_side"] = json!(true);
    let (s, v) = send(claim, FIREFOX, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["rejected"][0]["code"], "server_side_needs_key", "{v}");

    let (_, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["pageviews"], "date_range": "7d", "dimensions": ["event:page"]}),
        )
        .await;
    assert_eq!(
        v["results"],
        json!([
            {"dimensions": ["/backend"], "metrics": [1]},
            {"dimensions": ["/browser"], "metrics": [1]},
        ]),
        "{v}"
    );
    let (s, v, _) = h
        .send(
            "GET",
            &format!("/api/v1/stats/filtered?site_id={tid}&date_range=7d"),
            &[("authorization", &format!("Bearer {read}"))],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["filtered"], json!({"bot:no-browser": 2}), "{v}");
}

#[tokio::test]
async fn bad_input_gets_specific_errors_and_valid_events_are_kept() {
    let h = harness();
    let (tid, read, _) = h.property("Asia/Kolkata", &[]);
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"{\"name\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            b"\xff\xfe{}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_utf8",
        ),
        (b"42".to_vec(), StatusCode::BAD_REQUEST, "bad_shape"),
        (b"".to_vec(), StatusCode::BAD_REQUEST, "empty_body"),
        (
            serde_json::to_vec(&vec![ev(&tid, "pageview"); 501]).unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
        ),
        (
            vec![b' '; 1024 * 1024 + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            serde_json::to_vec(&json!({"tracking_id": "FF-NOPENOPE", "name": "pageview"})).unwrap(),
            StatusCode::NOT_FOUND,
            "unknown_tracking_id",
        ),
        (
            serde_json::to_vec(&json!({"tracking_id": tid, "url": "/x"})).unwrap(),
            StatusCode::BAD_REQUEST,
            "no_valid_events",
        ),
        (
            serde_json::to_vec(&json!({"tracking_id": tid, "name": ["x"]})).unwrap(),
            StatusCode::BAD_REQUEST,
            "no_valid_events",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v, _) = h
            .send(
                "POST",
                "/api/v1/events",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(s, status, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    // Mixed batch: the valid events are accepted, the others reported by index.
    let body = json!({"events": [
        ev(&tid, "pageview"),
        {"tracking_id": tid},
        {"tracking_id": tid, "name": "x", "props": {"k": {"nested": 1}}},
        {"tracking_id": "FF-NOPENOPE", "name": "pageview"},
        {"tracking_id": tid, "name": "x", "timestamp": NOW - 100 * 3600 * 1000},
        ev(&tid, "Signup"),
    ]});
    let (s, v) = h.ingest(body, None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 2);
    let codes: Vec<(u64, &str)> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, "missing_name"),
            (2, "wrong_type"),
            (3, "unknown_tracking_id"),
            (4, "timestamp_too_old")
        ]
    );
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["events", "pageviews"], "date_range": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["metrics"], json!([2, 1]));
}

#[tokio::test]
async fn text_plain_bodies_cors_and_write_keys() {
    let h = harness();
    let (tid, read, write) = h.property("UTC", &["shop.example"]);
    // sendBeacon sends text/plain.
    let (s, v, _) = h
        .send(
            "POST",
            "/api/v1/events",
            &[("content-type", "text/plain")],
            serde_json::to_vec(&ev(&tid, "pageview")).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // Preflight.
    let (s, _, headers) = h
        .send(
            "OPTIONS",
            "/api/v1/events",
            &[
                ("origin", "https://shop.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], "*");
    // Every browser-facing protocol answers preflights too.
    for path in [
        "/api/event",
        "/g/collect",
        "/v1/t",
        "/v1/batch",
        "/mp/collect",
    ] {
        let (s, _, headers) = h
            .send(
                "OPTIONS",
                path,
                &[
                    ("origin", "https://shop.example"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type"),
                ],
                vec![],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{path}");
    }
    // Browser events from a foreign domain are refused; server-side with a key may backdate.
    let (s, v) = h
        .ingest(
            json!({"tracking_id": tid, "name": "pageview", "url": "https://evil.example/"}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rejected"][0]["code"], "domain_not_allowed");
    let old = json!({"tracking_id": tid, "name": "pageview", "url": "https://shop.example/old", "timestamp": NOW - 10 * 86_400_000, "ip": "203.0.113.5", "user_agent": "server"});
    let (s, _) = h.ingest(old.clone(), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = h.ingest(old, Some(&write)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // A read key cannot ingest; an unknown key is 401.
    let (s, _) = h.ingest(ev(&tid, "pageview"), Some(&read)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h.ingest(ev(&tid, "pageview"), Some("ffw_bogus")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["pageviews"], "date_range": "30d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"][0]["metrics"], json!([2]));
}

#[tokio::test]
async fn keys_are_isolated_between_properties() {
    let h = harness();
    let (a, read_a, write_a) = h.property("UTC", &[]);
    let (b, read_b, _) = h.property("UTC", &[]);
    h.ingest(ev(&b, "pageview"), None).await;
    // A's read key asking for B's data: an error, never data.
    let (s, v) = h
        .query(
            &read_a,
            json!({"site_id": b, "metrics": ["pageviews"], "date_range": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v.get("results").is_none());
    assert_eq!(v["error"]["code"], "forbidden");
    // A's write key cannot write into B.
    let (s, v) = h.ingest(ev(&b, "pageview"), Some(&write_a)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rejected"][0]["code"], "forbidden");
    // Write keys cannot query; no key is 401.
    let (s, _) = h
        .query(
            &write_a,
            json!({"site_id": a, "metrics": ["pageviews"], "date_range": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = h.send("POST", "/api/v2/query", &[], b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = h
        .query(
            &read_b,
            json!({"site_id": b, "metrics": ["pageviews"], "date_range": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["results"][0]["metrics"], json!([1]));
}

#[tokio::test]
async fn unsupported_queries_say_what_is_unsupported() {
    let h = harness();
    let (tid, read, _) = h.property("UTC", &[]);
    let cases = [
        (
            json!({"site_id": tid, "metrics": ["revenue_per_cat"], "date_range": "7d"}),
            "unknown metric",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "7d", "dimensions": ["event:page"]}),
            "not supported with event:page",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "7d", "dimensions": ["visit:source"], "filters": [["is", "event:page", ["/"]]]}),
            "combining",
        ),
        (
            json!({"site_id": tid, "metrics": ["total_revenue"], "date_range": "7d", "dimensions": ["visit:country"]}),
            "total_revenue",
        ),
        (
            json!({"site_id": tid, "metrics": ["visitors"], "date_range": "7d", "dimensions": ["event:props:a"], "filters": [["is", "event:props:b", ["x"]]]}),
            "one event:props key",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "fortnight"}),
            "unsupported date_range",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "7d", "dimensions": ["visit:planet"]}),
            "not supported",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "7d", "filters": [["matches", "event:page", ["/"]]]}),
            "operator",
        ),
        (
            json!({"site_id": tid, "metrics": ["visits"], "date_range": "7d", "colour": 1}),
            "unknown field",
        ),
    ];
    for (q, needle) in cases {
        let (s, v) = h.query(&read, q).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    }
}

/// A log whose storage has failed: every append errors.
struct FailingLog;

impl EventLog for FailingLog {
    fn partitions(&self) -> u32 {
        1
    }
    fn append(&self, _: Vec<(u32, Vec<u8>)>, done: AppendCallback) {
        done(Err(footfall_log::Error::Poisoned(
            "fsync failed: EIO".into(),
        )))
    }
    fn end_offset(&self, _: u32) -> Offset {
        0
    }
    fn start_offset(&self, _: u32) -> Offset {
        0
    }
    fn read(&self, _: u32, _: Offset, _: usize) -> footfall_log::Result<Vec<Record>> {
        Ok(vec![])
    }
    fn wait_for_append(&self, g: u64, _: Duration) -> u64 {
        g
    }
    fn generation(&self) -> u64 {
        0
    }
    fn enforce_retention(&self, _: &[Offset], _: Duration, _: u64) -> footfall_log::Result<u64> {
        Ok(0)
    }
    fn healthy(&self) -> bool {
        false
    }
    fn retained_bytes(&self) -> u64 {
        0
    }
}

#[tokio::test]
async fn storage_failure_is_503_with_retry_after_never_2xx() {
    let h = harness_with_log(Some(Arc::new(FailingLog)));
    let (tid, _, _) = h.property("UTC", &[]);
    let (s, v, headers) = h
        .send(
            "POST",
            "/api/v1/events",
            &[],
            serde_json::to_vec(&ev(&tid, "pageview")).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(headers["retry-after"], "1");
    let (s, _, _) = h.send("GET", "/readyz", &[], vec![]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn health_and_metrics() {
    let h = harness();
    let (tid, _, _) = h.property("UTC", &[]);
    h.ingest(json!([ev(&tid, "pageview"), {"tracking_id": tid}]), None)
        .await;
    let (s, _, _) = h.send("GET", "/healthz", &[], vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = h.send("GET", "/readyz", &[], vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let resp = h
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("footfall_events_accepted_total 1"), "{text}");
    assert!(
        text.contains("footfall_events_rejected_total{reason=\"missing_name\"} 1"),
        "{text}"
    );
    assert!(text.contains("footfall_processor_lag_bytes"));
    assert!(text.contains("footfall_log_append_seconds_bucket"));
}

#[tokio::test]
async fn realtime_visitors_last_5_and_30_minutes() {
    let h = harness();
    let (tid, read, _) = h.property("UTC", &[]);
    let at = |min: i64, who: &str| json!({"tracking_id": tid, "name": "pageview", "url": "https://a.example/", "client_id": who, "timestamp": NOW - min * 60_000 - 1});
    let (s, _) = h
        .ingest(
            json!([
                at(0, "a"),
                at(2, "a"),
                at(3, "b"),
                at(10, "c"),
                at(29, "d"),
                at(40, "e")
            ]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    h.processor.lock().unwrap().catch_up().unwrap();
    let auth = format!("Bearer {read}");
    let (s, v, _) = h
        .send(
            "GET",
            &format!("/api/v1/stats/realtime/visitors?site_id={tid}"),
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!(2), "a and b were active in the last 5 minutes");
    let (_, v, _) = h
        .send(
            "GET",
            &format!("/api/v1/stats/realtime?site_id={tid}"),
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(v["visitors_last_30_minutes"], 4);
    assert_eq!(v["pageviews_last_30_minutes"], 5);
    let (other, _, _) = h.property("UTC", &[]);
    let (s, _, _) = h
        .send(
            "GET",
            &format!("/api/v1/stats/realtime/visitors?site_id={other}"),
            &[("authorization", &auth)],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn plausible_events_api() {
    let h = harness();
    let a = h
        .meta
        .create_property("A", "UTC", &["shop.example".into()])
        .unwrap()
        .tracking_id;
    let b = h
        .meta
        .create_property("B", "UTC", &["blog.example".into()])
        .unwrap()
        .tracking_id;
    let (ra, _) = h.meta.create_key(&a, Scope::Read).unwrap();
    let (rb, _) = h.meta.create_key(&b, Scope::Read).unwrap();
    // Plausible's tracker sends text/plain; short field names; two domains at once.
    let body = json!({"n": "pageview", "u": "https://shop.example/pricing?x=1", "d": "shop.example,www.blog.example",
        "r": "https://www.google.com/", "p": "{\"plan\":\"pro\"}"});
    let (s, _, _) = h
        .send(
            "POST",
            "/api/event",
            &[
                ("content-type", "text/plain"),
                ("user-agent", FIREFOX),
                ("x-forwarded-for", "203.0.113.7"),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let custom = json!({"name": "Purchase", "url": "https://shop.example/checkout", "domain": "shop.example",
        "revenue": {"amount": "12.50", "currency": "INR"}, "props": {"items": 2}});
    let (s, _, _) = h
        .send(
            "POST",
            "/api/event",
            &[],
            serde_json::to_vec(&custom).unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let q = |site: &str| json!({"site_id": site, "metrics": ["pageviews", "events"], "date_range": "7d", "dimensions": ["event:page"]});
    let (_, v) = h.query(&ra, q(&a)).await;
    assert_eq!(
        v["results"],
        json!([
            {"dimensions": ["/pricing"], "metrics": [1, 1]},
            {"dimensions": ["/checkout"], "metrics": [0, 1]},
        ])
    );
    let (_, v) = h.query(&rb, q(&b)).await;
    assert_eq!(
        v["results"][0]["metrics"],
        json!([1, 1]),
        "the event went to both domains' properties"
    );
    // Plausible's error shape.
    let (s, v, _) = h
        .send(
            "POST",
            "/api/event",
            &[],
            br#"{"n":"pageview","u":"https://x.example/"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["errors"]["domain"][0], "can't be blank");
    let (s, v, _) = h
        .send(
            "POST",
            "/api/event",
            &[],
            br#"{"n":"pageview","u":"https://x.example/","d":"nobody.example"}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["errors"]["domain"].is_array());
    let (s, _, _) = h
        .send("POST", "/api/event", &[], b"{not json".to_vec())
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// One HTTP/1.1 answer read off a raw connection: status, headers (lower-case names,
/// without `date`), body.
type RawAnswer = (u16, Vec<(String, String)>, Vec<u8>);

async fn read_answer(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<RawAnswer> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut lines);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(buf) {
            let mut headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .filter(|(n, _)| n != "date")
                .collect();
            headers.sort();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= head + len {
                let status = resp.code.unwrap();
                let body = buf[head..head + len].to_vec();
                buf.drain(..head + len);
                return Some((status, headers, body));
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The router's answer to the same request, in the same shape.
async fn router_answer(h: &Harness, raw: &[u8]) -> RawAnswer {
    let mut lines = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut lines);
    let head = match req.parse(raw).unwrap() {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("test request is incomplete"),
    };
    let mut b = Request::builder()
        .method(req.method.unwrap())
        .uri(req.path.unwrap());
    for l in req.headers.iter() {
        assert!(
            !l.name.eq_ignore_ascii_case("transfer-encoding"),
            "compare chunked bodies by hand"
        );
        b = b.header(l.name, l.value);
    }
    let body = raw[head..].to_vec();
    let resp = h
        .router
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() != "date")
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    if !headers.iter().any(|(n, _)| n == "content-length") {
        headers.push(("content-length".into(), body.len().to_string()));
    }
    headers.sort();
    (status, headers, body)
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: collect.example\r\ncontent-type: text/plain\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn beacon_fast_path_answers_as_the_router_and_hands_other_requests_to_it() {
    use tokio::io::AsyncWriteExt;
    let h = harness();
    let (tid, read, _write) = h.property("UTC", &["shop.example"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(footfall_server::fast::serve(
        listener,
        h.state.clone(),
        app(h.state.clone()),
        Default::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let good = |name: &str| {
        format!(r#"{{"tracking_id":"{tid}","name":"{name}","url":"https://shop.example/a"}}"#)
    };
    let many: Vec<Value> = (0..501)
        .map(|_| json!({"tracking_id": tid, "name": "x"}))
        .collect();
    let auth = format!("authorization: Bearer {read}\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("beacon", post("/api/v1/events", "", &good("pageview"))),
        (
            "query string and origin",
            post(
                "/api/v1/events?x=1",
                "origin: https://shop.example\r\n",
                &good("signup"),
            ),
        ),
        (
            "mixed batch",
            post(
                "/api/v1/events",
                "",
                &format!(r#"[{},{{"name":"x"}}]"#, good("pageview")),
            ),
        ),
        (
            "unknown tracking id",
            post("/api/v1/events", "", r#"{"tracking_id":"nope","name":"x"}"#),
        ),
        ("malformed", post("/api/v1/events", "", "[1")),
        ("empty", post("/api/v1/events", "", "")),
        ("read key", post("/api/v1/events", &auth, &good("pageview"))),
        (
            "too many events",
            post("/api/v1/events", "", &serde_json::to_string(&many).unwrap()),
        ),
    ];
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for (what, raw) in &cases {
        conn.write_all(raw).await.unwrap();
        let fast = read_answer(&mut conn, &mut buf).await.expect(what);
        let routed = router_answer(&h, raw).await;
        assert_eq!(
            (fast.0, &fast.1, String::from_utf8_lossy(&fast.2)),
            (routed.0, &routed.1, String::from_utf8_lossy(&routed.2)),
            "{what}"
        );
    }
    // Pipelined requests in one write, split at an odd place.
    let mut two = post("/api/v1/events", "", &good("a"));
    two.extend(post("/api/v1/events", "", &good("b")));
    let (x, y) = two.split_at(two.len() / 2 + 3);
    conn.write_all(x).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.write_all(y).await.unwrap();
    for _ in 0..2 {
        let (status, _, body) = read_answer(&mut conn, &mut buf).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (202, &br#"{"accepted":1,"rejected":[]}"#[..])
        );
    }
    // Another request moves the connection to hyper and the router, which also answer
    // later beacons on it.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_answer(&mut conn, &mut buf).await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    let raw = post("/api/v1/events", "", &good("after"));
    conn.write_all(&raw).await.unwrap();
    let via_hyper = read_answer(&mut conn, &mut buf).await.unwrap();
    assert_eq!(via_hyper, router_answer(&h, &raw).await);
    // Shapes the fast path leaves to hyper: chunked bodies, bodies over the limit,
    // `Expect`, HTTP/1.0.
    let mut c2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = good("chunked");
    let chunked = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    c2.write_all(chunked.as_bytes()).await.unwrap();
    let mut b2 = Vec::new();
    let (status, _, body) = read_answer(&mut c2, &mut b2).await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (202, &br#"{"accepted":1,"rejected":[]}"#[..])
    );
    let mut c3 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let big = format!("[{}]", vec![good("big"); 20_000].join(","));
    assert!(big.len() > 1024 * 1024);
    c3.write_all(&post("/api/v1/events", "", &big))
        .await
        .unwrap();
    let mut b3 = Vec::new();
    let (status, _, body) = read_answer(&mut c3, &mut b3).await.unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let mut c4 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = good("old");
    c4.write_all(
        format!(
            "POST /api/v1/events HTTP/1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut b4 = Vec::new();
    let (status, _, _) = read_answer(&mut c4, &mut b4).await.unwrap();
    assert_eq!(status, 202);

    // Every acknowledged event counts: the fast path kept 3 of the compared requests
    // (beacon, signup, the valid one of the mixed batch) and the router its 3 copies;
    // then 2 pipelined, 2 after the hand-over (hyper's and the router's copy), 1 chunked
    // and 1 over HTTP/1.0.
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["events"], "date_range": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["metrics"], json!([12]), "{v}");

    // Shutdown: beacons are refused with 503 once ingestion stops, idle connections
    // close, and serve returns.
    h.state
        .accepting
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let raw = post("/api/v1/events", "", &good("late"));
    let mut c5 = tokio::net::TcpStream::connect(addr).await.unwrap();
    c5.write_all(&raw).await.unwrap();
    let mut b5 = Vec::new();
    let refused = read_answer(&mut c5, &mut b5).await.unwrap();
    assert_eq!(refused.0, 503);
    assert!(refused
        .1
        .iter()
        .any(|(n, v)| n == "retry-after" && v == "1"));
    assert_eq!(refused, router_answer(&h, &raw).await);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns once connections close")
        .unwrap()
        .unwrap();
    assert!(read_answer(&mut c5, &mut b5).await.is_none());
}

/// Dashboard logins: the session cookie's attributes, reads limited to the user's
/// accounts (another account's property is "not found", as a missing one), CSRF on
/// logout, and throttling after repeated failures.
#[tokio::test]
async fn dashboard_sessions_csrf_throttling_and_tenants() {
    use footfall_meta::{AccountStore, Role};
    let h = harness();
    let pa = h.meta.create_property("Shop A", "UTC", &[]).unwrap();
    let pb = h.meta.create_property("Shop B", "UTC", &[]).unwrap();
    let (a, b) = (
        h.meta.create_account("A").unwrap(),
        h.meta.create_account("B").unwrap(),
    );
    h.meta.assign_property(&a.id, &pa.tracking_id).unwrap();
    h.meta.assign_property(&b.id, &pb.tracking_id).unwrap();
    let auth = h.state.auth.clone().unwrap();
    auth.create_user("ann@a.example", "ann's long password", &a.id, Role::Viewer)
        .unwrap();
    auth.create_user("bob@b.example", "bob's long password", &b.id, Role::Owner)
        .unwrap();
    let (s, _) = h
        .ingest(
            json!({"tracking_id": pa.tracking_id, "name": "pageview", "url": "https://a.example/"}),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    h.processor.lock().unwrap().catch_up().unwrap();

    let json_h = [("content-type", "application/json")];
    let login = |email: &str, password: &str| {
        serde_json::to_vec(&json!({"email": email, "password": password})).unwrap()
    };
    let (s, _, _) = h.send("GET", "/api/auth/me", &[], vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = h
        .send(
            "POST",
            "/api/auth/login",
            &json_h,
            login("ann@a.example", "wrong"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/auth/login",
            &json_h,
            login("Ann@A.example", "ann's long password"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let set = hd["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(
        v["accounts"][0]["properties"][0]["tracking_id"],
        pa.tracking_id
    );
    assert_eq!(v["accounts"][0]["role"], "viewer");
    // Behind a TLS gateway the cookie is Secure.
    let mut tls = json_h.to_vec();
    tls.push(("x-forwarded-proto", "https"));
    let (_, _, hd2) = h
        .send(
            "POST",
            "/api/auth/login",
            &tls,
            login("ann@a.example", "ann's long password"),
        )
        .await;
    assert!(hd2["set-cookie"].to_str().unwrap().contains("; Secure"));

    let with_cookie = [
        ("content-type", "application/json"),
        ("cookie", cookie.as_str()),
    ];
    let (s, v, _) = h.send("GET", "/api/auth/me", &with_cookie, vec![]).await;
    assert_eq!(
        (s, v["user"]["email"].as_str()),
        (StatusCode::OK, Some("ann@a.example"))
    );
    let q = |site: &str| {
        serde_json::to_vec(&json!({"site_id": site, "metrics": ["events"], "date_range": "day"}))
            .unwrap()
    };
    let (s, v, _) = h
        .send("POST", "/api/v2/query", &with_cookie, q(&pa.tracking_id))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["results"][0]["metrics"][0], 1,
        "the same engine as API keys: {v}"
    );
    // Another account's property, and one that does not exist, answer alike.
    let (s_other, v_other, _) = h
        .send("POST", "/api/v2/query", &with_cookie, q(&pb.tracking_id))
        .await;
    let (s_none, v_none, _) = h
        .send("POST", "/api/v2/query", &with_cookie, q("FF-NOPE0000"))
        .await;
    assert_eq!(
        (s_other, s_none),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND)
    );
    assert_eq!(v_other, v_none, "no hint that the other property exists");
    let (s, _, _) = h
        .send(
            "GET",
            &format!("/api/v1/stats/realtime/visitors?site_id={}", pb.tracking_id),
            &with_cookie,
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = h
        .send("POST", "/api/v2/query", &json_h, q(&pa.tracking_id))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no cookie, no key");

    // Logout needs the CSRF token.
    let (s, _, _) = h
        .send("POST", "/api/auth/logout", &with_cookie, vec![])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut bad = with_cookie.to_vec();
    bad.push(("x-csrf-token", "0123"));
    let (s, _, _) = h.send("POST", "/api/auth/logout", &bad, vec![]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut good = with_cookie.to_vec();
    good.push(("x-csrf-token", csrf.as_str()));
    let (s, _, hd) = h.send("POST", "/api/auth/logout", &good, vec![]).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(hd["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (s, _, _) = h.send("GET", "/api/auth/me", &with_cookie, vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the session ended");

    // Five failures lock the address out, even for the right password.
    for _ in 0..5 {
        let (s, _, _) = h
            .send(
                "POST",
                "/api/auth/login",
                &json_h,
                login("bob@b.example", "guess"),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/auth/login",
            &json_h,
            login("bob@b.example", "bob's long password"),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(hd.contains_key("retry-after"));
}

/// Logs in through the API; returns the cookie pair and the CSRF token.
async fn log_in(h: &Harness, email: &str, password: &str) -> (String, String) {
    let body = serde_json::to_vec(&json!({"email": email, "password": password})).unwrap();
    let (s, v, hd) = h
        .send(
            "POST",
            "/api/auth/login",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cookie = hd["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, v["csrf_token"].as_str().unwrap().to_string())
}

/// Goals: admins replace a property's goals from the dashboard (CSRF-checked), viewers
/// and read keys list them, an invalid goal is a 400 naming it, another account finds
/// no such property.
#[tokio::test]
async fn goals_by_role_and_key() {
    use footfall_meta::{AccountStore, Role};
    let h = harness();
    let (tid, read, _) = h.property("UTC", &[]);
    let other = h.meta.create_property("Other", "UTC", &[]).unwrap();
    let (a, b) = (
        h.meta.create_account("A").unwrap(),
        h.meta.create_account("B").unwrap(),
    );
    h.meta.assign_property(&a.id, &tid).unwrap();
    h.meta.assign_property(&b.id, &other.tracking_id).unwrap();
    let auth = h.state.auth.clone().unwrap();
    for (email, account, role) in [
        ("ann@a.example", &a.id, Role::Admin),
        ("vic@a.example", &a.id, Role::Viewer),
        ("bob@b.example", &b.id, Role::Owner),
    ] {
        auth.create_user(email, "a long enough password", account, role)
            .unwrap();
    }
    let path = format!("/api/ui/properties/{tid}/goals");
    let goals = json!({"goals": [
        {"name": "Checkout", "page": "/checkout/**"},
        {"name": "Pro signup", "event": "Signup", "props": {"plan": "pro"}}
    ]});
    let body = serde_json::to_vec(&goals).unwrap();
    let (cookie, csrf) = log_in(&h, "ann@a.example", "a long enough password").await;
    let plain = [
        ("content-type", "application/json"),
        ("cookie", cookie.as_str()),
    ];
    let mut with_csrf = plain.to_vec();
    with_csrf.push(("x-csrf-token", csrf.as_str()));
    let (s, _, _) = h.send("PUT", &path, &plain, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, v, _) = h.send("PUT", &path, &with_csrf, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, goals);
    let bad = serde_json::to_vec(&json!({"goals": [{"name": "X", "page": "no-slash"}]})).unwrap();
    let (s, v, _) = h.send("PUT", &path, &with_csrf, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("starts with `/`"), "{v}");

    let (vc, vcsrf) = log_in(&h, "vic@a.example", "a long enough password").await;
    let viewer = [("cookie", vc.as_str()), ("x-csrf-token", vcsrf.as_str())];
    let (s, v, _) = h.send("GET", &path, &viewer, vec![]).await;
    assert_eq!((s, &v), (StatusCode::OK, &goals));
    let (s, _, _) = h.send("PUT", &path, &viewer, body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewers do not change goals");
    let (bc, bcsrf) = log_in(&h, "bob@b.example", "a long enough password").await;
    let (s, _, _) = h
        .send(
            "PUT",
            &path,
            &[("cookie", bc.as_str()), ("x-csrf-token", bcsrf.as_str())],
            body,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another account's property");

    let (s, v, _) = h
        .send(
            "GET",
            &format!("/api/v1/goals?site_id={tid}"),
            &[("authorization", &format!("Bearer {read}"))],
            vec![],
        )
        .await;
    assert_eq!((s, &v), (StatusCode::OK, &goals));
    // The rollups do not hold goals: without the columnar engine the query says so.
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["visitors", "conversion_rate"], "date_range": "day",
                "dimensions": ["event:goal"]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("event:goal"), "{v}");
}

/// API keys from the dashboard: admins list, create and revoke them (CSRF-checked); a
/// viewer may not; another account's user finds no such property; a revoked key stops
/// working at once.
#[tokio::test]
async fn dashboard_api_keys_and_shared_links_by_role() {
    use footfall_meta::{AccountStore, Role};
    let h = harness();
    let pa = h.meta.create_property("Shop A", "UTC", &[]).unwrap();
    let pb = h.meta.create_property("Shop B", "UTC", &[]).unwrap();
    let (a, b) = (
        h.meta.create_account("A").unwrap(),
        h.meta.create_account("B").unwrap(),
    );
    h.meta.assign_property(&a.id, &pa.tracking_id).unwrap();
    h.meta.assign_property(&b.id, &pb.tracking_id).unwrap();
    let auth = h.state.auth.clone().unwrap();
    for (email, account, role) in [
        ("ann@a.example", &a.id, Role::Admin),
        ("vic@a.example", &a.id, Role::Viewer),
        ("bob@b.example", &b.id, Role::Owner),
    ] {
        auth.create_user(email, "a long enough password", account, role)
            .unwrap();
    }
    let keys = format!("/api/ui/properties/{}/keys", pa.tracking_id);
    let (cookie, csrf) = log_in(&h, "ann@a.example", "a long enough password").await;
    let plain = [
        ("content-type", "application/json"),
        ("cookie", cookie.as_str()),
    ];
    let mut with_csrf = plain.to_vec();
    with_csrf.push(("x-csrf-token", csrf.as_str()));
    let read = serde_json::to_vec(&json!({"scope": "read"})).unwrap();
    let (s, _, _) = h.send("POST", &keys, &plain, read.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, v, _) = h.send("POST", &keys, &with_csrf, read.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (key, key_id) = (
        v["key"].as_str().unwrap().to_string(),
        v["key_id"].as_str().unwrap().to_string(),
    );
    let admin_only = serde_json::to_vec(&json!({"scope": "admin"})).unwrap();
    let (s, _, _) = h.send("POST", &keys, &with_csrf, admin_only).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "no admin keys from the dashboard"
    );
    let (s, v, _) = h.send("GET", &keys, &plain, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["keys"][0]["key_id"], key_id.as_str());
    assert!(!v.to_string().contains(&key), "a listing never shows a key");
    let (s, _) = h
        .query(
            &key,
            json!({"site_id": pa.tracking_id, "metrics": ["visitors"], "date_range": "day"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the new key reads");

    let (vc, _) = log_in(&h, "vic@a.example", "a long enough password").await;
    let (s, _, _) = h
        .send("GET", &keys, &[("cookie", vc.as_str())], vec![])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewers do not manage keys");
    let (bc, bcsrf) = log_in(&h, "bob@b.example", "a long enough password").await;
    let (s, _, _) = h
        .send("GET", &keys, &[("cookie", bc.as_str())], vec![])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another account's property");
    let (s, _, _) = h
        .send(
            "DELETE",
            &format!("{keys}/{key_id}"),
            &[("cookie", bc.as_str()), ("x-csrf-token", bcsrf.as_str())],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _, _) = h
        .send("DELETE", &format!("{keys}/{key_id}"), &plain, vec![])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, _, _) = h
        .send("DELETE", &format!("{keys}/{key_id}"), &with_csrf, vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .query(
            &key,
            json!({"site_id": pa.tracking_id, "metrics": ["visitors"], "date_range": "day"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a revoked key stops at once");
    let (s, _, _) = h
        .send("DELETE", &format!("{keys}/{key_id}"), &with_csrf, vec![])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Read-only links: made by admins (CSRF), read that property only, until revoked.
    let shares = format!("/api/ui/properties/{}/shares", pa.tracking_id);
    let (s, _, _) = h.send("POST", &shares, &plain, vec![]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    let (s, v, _) = h.send("POST", &shares, &with_csrf, vec![]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["path"]
        .as_str()
        .unwrap()
        .strip_prefix("/share/")
        .unwrap()
        .to_string();
    let share_id = v["id"].as_str().unwrap().to_string();
    let (s, v, _) = h.send("GET", &shares, &plain, vec![]).await;
    assert_eq!(
        (s, v["shares"][0]["id"].as_str()),
        (StatusCode::OK, Some(share_id.as_str()))
    );
    assert!(
        !v.to_string().contains(&token),
        "a listing never shows a token"
    );
    let by_token = |site: &str| {
        serde_json::to_vec(&json!({"site_id": site, "metrics": ["visitors"], "date_range": "day"}))
            .unwrap()
    };
    let shared = [
        ("content-type", "application/json"),
        ("x-footfall-share", token.as_str()),
    ];
    let (s, _, _) = h
        .send("POST", "/api/v2/query", &shared, by_token(&pa.tracking_id))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = h
        .send("POST", "/api/v2/query", &shared, by_token(&pb.tracking_id))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a link opens its property only");
    let (s, v, _) = h.send("GET", "/api/share/me", &shared, vec![]).await;
    assert_eq!(
        (s, v["property"]["tracking_id"].as_str()),
        (StatusCode::OK, Some(pa.tracking_id.as_str()))
    );
    let (s, _, _) = h
        .send(
            "DELETE",
            &format!("{shares}/{share_id}"),
            &with_csrf,
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = h
        .send("POST", "/api/v2/query", &shared, by_token(&pa.tracking_id))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a revoked link opens nothing");
}

/// Invitations from the dashboard: owners make, list and withdraw them (CSRF-checked);
/// admins and other accounts' owners cannot; a new address accepts by choosing a
/// password and is logged in; an address with a login accepts while logged in as it;
/// a used link opens nothing.
#[tokio::test]
async fn dashboard_invitations_by_owners() {
    use footfall_meta::{AccountStore, Role};
    let h = harness();
    let pa = h.meta.create_property("Shop A", "UTC", &[]).unwrap();
    let (a, b) = (
        h.meta.create_account("A").unwrap(),
        h.meta.create_account("B").unwrap(),
    );
    h.meta.assign_property(&a.id, &pa.tracking_id).unwrap();
    let auth = h.state.auth.clone().unwrap();
    for (email, account, role) in [
        ("own@a.example", &a.id, Role::Owner),
        ("adm@a.example", &a.id, Role::Admin),
        ("own@b.example", &b.id, Role::Owner),
    ] {
        auth.create_user(email, "a long enough password", account, role)
            .unwrap();
    }
    let url = format!("/api/ui/accounts/{}/invites", a.id);
    let json_body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let (oc, ocsrf) = log_in(&h, "own@a.example", "a long enough password").await;
    let owner = [
        ("content-type", "application/json"),
        ("cookie", oc.as_str()),
        ("x-csrf-token", ocsrf.as_str()),
    ];
    let invite = json_body(json!({"email": "New@A.example", "role": "viewer"}));
    let (s, _, _) = h.send("POST", &url, &owner[..2], invite.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no CSRF token");
    for (who, status) in [
        ("adm@a.example", StatusCode::NOT_FOUND),
        ("own@b.example", StatusCode::NOT_FOUND),
    ] {
        let (c, t) = log_in(&h, who, "a long enough password").await;
        let hd = [
            ("content-type", "application/json"),
            ("cookie", c.as_str()),
            ("x-csrf-token", t.as_str()),
        ];
        let (s, _, _) = h.send("POST", &url, &hd, invite.clone()).await;
        assert_eq!(s, status, "{who} may not invite to A");
        let (s, _, _) = h.send("GET", &url, &hd[1..2], vec![]).await;
        assert_eq!(s, status, "{who} may not list A's invitations");
    }
    let bad = json_body(json!({"email": "x@a.example", "role": "god"}));
    let (s, _, _) = h.send("POST", &url, &owner, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v, _) = h.send("POST", &url, &owner, invite).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    let token = path.strip_prefix("/invite/").unwrap().to_string();
    let (s, v, _) = h.send("GET", &url, &owner[1..2], vec![]).await;
    assert_eq!(
        (s, v["invites"][0]["email"].as_str()),
        (StatusCode::OK, Some("new@a.example"))
    );
    assert!(
        !v.to_string().contains(&token),
        "a listing never shows a token"
    );
    let (s, _, hd) = h.send("GET", &path, &[], vec![]).await;
    assert_eq!(s, StatusCode::OK, "the invitation page");
    assert!(hd["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let (s, v, _) = h
        .send("GET", &format!("/api/invites/{token}"), &[], vec![])
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["account"]["name"].as_str(),
            v["role"].as_str(),
            v["has_login"].as_bool()
        ),
        (Some("A"), Some("viewer"), Some(false))
    );
    let accept = format!("/api/invites/{token}/accept");
    let ct = [("content-type", "application/json")];
    let (s, _, _) = h
        .send(
            "POST",
            &accept,
            &ct,
            json_body(json!({"password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a short password");
    let (s, v, hd) = h
        .send(
            "POST",
            &accept,
            &ct,
            json_body(json!({"password": "the new one, long"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accounts"][0]["name"], "A");
    let cookie = hd["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (s, v, _) = h
        .send(
            "GET",
            "/api/auth/me",
            &[("cookie", cookie.as_str())],
            vec![],
        )
        .await;
    assert_eq!(
        (s, v["user"]["email"].as_str()),
        (StatusCode::OK, Some("new@a.example"))
    );
    let (s, _, _) = h
        .send(
            "POST",
            "/api/v2/query",
            &[
                ("content-type", "application/json"),
                ("cookie", cookie.as_str()),
            ],
            json_body(
                json!({"site_id": pa.tracking_id, "metrics": ["visitors"], "date_range": "day"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the new viewer reads A's property");
    let (s, _, _) = h
        .send(
            "POST",
            &accept,
            &ct,
            json_body(json!({"password": "the new one, long"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "used up");

    // An address with a login: 409 logged out, joins while logged in as it.
    let (bc, bt) = log_in(&h, "own@b.example", "a long enough password").await;
    let burl = format!("/api/ui/accounts/{}/invites", b.id);
    let (s, v, _) = h
        .send(
            "POST",
            &burl,
            &[
                ("content-type", "application/json"),
                ("cookie", bc.as_str()),
                ("x-csrf-token", bt.as_str()),
            ],
            json_body(json!({"email": "adm@a.example", "role": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let t2 = v["path"]
        .as_str()
        .unwrap()
        .strip_prefix("/invite/")
        .unwrap()
        .to_string();
    let a2 = format!("/api/invites/{t2}/accept");
    let (s, _, _) = h
        .send(
            "POST",
            &a2,
            &ct,
            json_body(json!({"password": "whatever long"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (ac, at) = log_in(&h, "adm@a.example", "a long enough password").await;
    let (s, _, _) = h
        .send("POST", &a2, &[("cookie", ac.as_str())], vec![])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "logged in: CSRF token needed");
    let (s, v, _) = h
        .send(
            "POST",
            &a2,
            &[("cookie", ac.as_str()), ("x-csrf-token", at.as_str())],
            vec![],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accounts"].as_array().unwrap().len(), 2, "{v}");

    // Withdrawn invitations open nothing.
    let (s, v, _) = h
        .send(
            "POST",
            &url,
            &owner,
            json_body(json!({"email": "late@a.example", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (id, t3) = (
        v["invite"]["id"].as_str().unwrap().to_string(),
        v["path"]
            .as_str()
            .unwrap()
            .strip_prefix("/invite/")
            .unwrap()
            .to_string(),
    );
    let (s, _, _) = h
        .send("DELETE", &format!("{url}/{id}"), &owner, vec![])
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = h
        .send("GET", &format!("/api/invites/{t3}"), &[], vec![])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A request: path, headers, body.
type Made = (String, Vec<(String, String)>, Vec<u8>);
/// Makes the request of a row with a credential (a key, or none).
type Maker = Box<dyn Fn(Option<&str>) -> Made>;

/// One endpoint of the tenant-isolation table: its route as `app()` mounts it, how the
/// request is made with a credential, and what the credential may do there.
struct Endpoint {
    route: &'static str,
    method: &'static str,
    kind: Access,
    make: Maker,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Access {
    /// Reads property A's data with A's read key; every other credential: an error.
    Read,
    /// Writes events into property A with A's write key (or, keyless, as a browser);
    /// another credential must not write into A.
    Ingest { keyless: bool },
    /// Browser protocols (Plausible, gtag): keyless by design, a credential sent is
    /// ignored and the events are taken as a browser's (no server-side privileges).
    Browser,
    /// A dashboard session or a share or invitation token; keys open nothing here.
    Session,
    /// No property's data whatever is sent (pages, scripts, health, metrics).
    Public,
    /// Mounted only with an archive (the harness has none: 404 for all).
    Admin,
}

/// The routes `app()` mounts, read from its source, so that a new endpoint without a
/// row in the table below fails the test.
fn mounted_routes() -> std::collections::BTreeSet<String> {
    let src = include_str!("../src/lib.rs");
    let mut out = std::collections::BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let t = rest.trim_start();
        if let Some(q) = t.strip_prefix('"') {
            out.insert(q[..q.find('"').unwrap()].to_string());
        }
    }
    out
}

/// The OpenAPI document (`/api/openapi.json`) lists every mounted route and no other;
/// schemathesis checks the answers against it (crates/footfall/tests/openapi.rs).
#[test]
fn the_openapi_document_lists_every_route() {
    let doc: Value = serde_json::from_str(include_str!("../src/openapi.json")).unwrap();
    let paths: std::collections::BTreeSet<String> =
        doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(paths, mounted_routes());
}

/// Tenant isolation: every endpoint × (no key, a wrong key, another property's key, a
/// write key where a read key is needed, a revoked key) → an error, never data; and no
/// credential but A's own writes into A.
#[tokio::test]
async fn tenant_isolation_every_endpoint_every_wrong_credential() {
    let h = harness();
    let a = h.meta.create_property("Shop A", "UTC", &[]).unwrap();
    let b = h.meta.create_property("Shop B", "UTC", &[]).unwrap();
    let key =
        |p: &footfall_meta::Property, s: Scope| h.meta.create_key(&p.tracking_id, s).unwrap().0;
    let (a_read, a_write, b_read, b_write) = (
        key(&a, Scope::Read),
        key(&a, Scope::Write),
        key(&b, Scope::Read),
        key(&b, Scope::Write),
    );
    let (revoked, grant) = h.meta.create_key(&a.tracking_id, Scope::Read).unwrap();
    assert!(h.meta.revoke_key(&a.tracking_id, &grant.key_id).unwrap());
    h.state.cache.invalidate();
    const MARK: &str = "tenant-secret-page";
    let (s, _) = h
        .ingest(
            json!([{"tracking_id": a.tracking_id, "name": "pageview", "url": format!("https://a.example/{MARK}"), "client_id": "v1"}]),
            Some(&a_write),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    h.processor.lock().unwrap().catch_up().unwrap();
    let a_events = || async {
        h.processor.lock().unwrap().catch_up().unwrap();
        let (_, v) = h
            .query(
                &a_read,
                json!({"site_id": a.tracking_id, "metrics": ["events"], "date_range": "day"}),
            )
            .await;
        v["results"][0]["metrics"][0].as_u64().unwrap()
    };
    assert_eq!(a_events().await, 1);

    // A's goals carry the mark too, so that goals shown to the wrong caller are seen.
    h.meta
        .update_property(
            &a.tracking_id,
            footfall_meta::PropertyChanges {
                goals: Some(&[footfall_meta::Goal::page(&format!("/{MARK}"))]),
                ..Default::default()
            },
        )
        .unwrap();
    let site = a.tracking_id.clone();
    fn bearer(c: Option<&str>) -> Vec<(String, String)> {
        let mut v = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(c) = c {
            v.push(("authorization".into(), format!("Bearer {c}")));
        }
        v
    }
    let get = |route: &'static str, kind: Access, path: String| Endpoint {
        route,
        method: "GET",
        kind,
        make: Box::new(move |c| (path.clone(), bearer(c), vec![])),
    };
    let post = |route: &'static str, kind: Access, path: String, body: Value| Endpoint {
        route,
        method: "POST",
        kind,
        make: Box::new(move |c| (path.clone(), bearer(c), serde_json::to_vec(&body).unwrap())),
    };
    let delete = |route: &'static str, path: String| Endpoint {
        route,
        method: "DELETE",
        kind: Access::Session,
        make: Box::new(move |c| (path.clone(), bearer(c), vec![])),
    };
    let ui = format!("/api/ui/properties/{site}");
    let event = json!([{"tracking_id": site, "name": "pageview", "url": "https://a.example/x", "client_id": "w"}]);
    let s2 = site.clone();
    let s3 = site.clone();
    let table: Vec<Endpoint> = vec![
        post(
            "/api/v2/query",
            Access::Read,
            "/api/v2/query".into(),
            json!({"site_id": site, "metrics": ["visitors", "pageviews"], "dimensions": ["event:page"], "date_range": "day"}),
        ),
        get(
            "/api/v1/stats/realtime/visitors",
            Access::Read,
            format!("/api/v1/stats/realtime/visitors?site_id={site}"),
        ),
        get(
            "/api/v1/stats/realtime",
            Access::Read,
            format!("/api/v1/stats/realtime?site_id={site}"),
        ),
        get(
            "/api/v1/stats/filtered",
            Access::Read,
            format!("/api/v1/stats/filtered?site_id={site}&date_range=day"),
        ),
        get(
            "/api/v1/goals",
            Access::Read,
            format!("/api/v1/goals?site_id={site}"),
        ),
        post(
            "/api/v2/funnel",
            Access::Read,
            "/api/v2/funnel".into(),
            json!({"site_id": site, "date_range": "day", "steps": ["Checkout", "Signup"]}),
        ),
        get(
            "/api/v1/export",
            Access::Read,
            format!("/api/v1/export?site_id={site}&format=csv"),
        ),
        post(
            "/api/v1/sql",
            Access::Read,
            "/api/v1/sql".into(),
            json!({"site_id": site, "sql": "SELECT COUNT(*) FROM events"}),
        ),
        post(
            "/api/v2/retention",
            Access::Read,
            "/api/v2/retention".into(),
            json!({"site_id": site, "date_range": "30d", "period": "week"}),
        ),
        get(
            "/api/ui/properties/{id}/goals",
            Access::Session,
            format!("{ui}/goals"),
        ),
        Endpoint {
            route: "/api/ui/properties/{id}/goals",
            method: "PUT",
            kind: Access::Session,
            make: Box::new({
                let path = format!("{ui}/goals");
                move |c| {
                    (
                        path.clone(),
                        bearer(c),
                        serde_json::to_vec(&json!({"goals": []})).unwrap(),
                    )
                }
            }),
        },
        post(
            "/api/v1/events",
            Access::Ingest { keyless: true },
            "/api/v1/events".into(),
            event.clone(),
        ),
        Endpoint {
            route: "/api/event",
            method: "POST",
            kind: Access::Browser,
            make: Box::new(|c| {
                let mut hd = bearer(c);
                hd.push((
                    "user-agent".into(),
                    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0".into(),
                ));
                (
                    "/api/event".into(),
                    hd,
                    json!({"n": "pageview", "u": "https://a.example/p", "d": "a.example"})
                        .to_string()
                        .into_bytes(),
                )
            }),
        },
        Endpoint {
            route: "/mp/collect",
            method: "POST",
            kind: Access::Ingest { keyless: false },
            make: Box::new(move |c| {
                (
                format!("/mp/collect?measurement_id={s2}&api_secret={}", c.unwrap_or("")),
                vec![],
                json!({"client_id": "g1", "events": [{"name": "page_view", "params": {"page_location": "https://a.example/g"}}]}).to_string().into_bytes(),
            )
            }),
        },
        Endpoint {
            route: "/debug/mp/collect",
            method: "POST",
            kind: Access::Public,
            make: Box::new(move |c| {
                (
                    format!(
                        "/debug/mp/collect?measurement_id={s3}&api_secret={}",
                        c.unwrap_or("")
                    ),
                    vec![],
                    json!({"client_id": "g1", "events": [{"name": "page_view"}]})
                        .to_string()
                        .into_bytes(),
                )
            }),
        },
        Endpoint {
            route: "/g/collect",
            method: "POST",
            kind: Access::Browser,
            make: Box::new({
                let site = site.clone();
                move |c| {
                    (
                    format!("/g/collect?v=2&tid={site}&cid=1.2&en=page_view&dl=https%3A%2F%2Fa.example%2Fgt"),
                    {
                        let mut hd = bearer(c);
                        hd.push(("user-agent".into(), "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0".into()));
                        hd
                    },
                    vec![],
                )
                }
            }),
        },
        Endpoint {
            route: "/v1/{kind}",
            method: "POST",
            kind: Access::Ingest { keyless: false },
            make: Box::new(|c| {
                (
                "/v1/page".into(),
                vec![("content-type".into(), "application/json".into())],
                json!({"writeKey": c.unwrap_or(""), "anonymousId": "s1", "type": "page", "properties": {"url": "https://a.example/s"}}).to_string().into_bytes(),
            )
            }),
        },
        get("/footfall.js", Access::Public, "/footfall.js".into()),
        post(
            "/api/auth/login",
            Access::Public,
            "/api/auth/login".into(),
            json!({"email": "x@y.example", "password": "wrong password"}),
        ),
        post(
            "/api/auth/logout",
            Access::Session,
            "/api/auth/logout".into(),
            json!({}),
        ),
        get("/api/auth/me", Access::Session, "/api/auth/me".into()),
        get(
            "/api/ui/properties/{id}/keys",
            Access::Session,
            format!("{ui}/keys"),
        ),
        post(
            "/api/ui/properties/{id}/keys",
            Access::Session,
            format!("{ui}/keys"),
            json!({"scope": "read"}),
        ),
        delete(
            "/api/ui/properties/{id}/keys/{key_id}",
            format!("{ui}/keys/{}", &a_read[..10]),
        ),
        get(
            "/api/ui/properties/{id}/shares",
            Access::Session,
            format!("{ui}/shares"),
        ),
        post(
            "/api/ui/properties/{id}/shares",
            Access::Session,
            format!("{ui}/shares"),
            json!({}),
        ),
        delete(
            "/api/ui/properties/{id}/shares/{share_id}",
            format!("{ui}/shares/SH-AAAAAAAA"),
        ),
        get(
            "/api/ui/accounts/{account}/invites",
            Access::Session,
            "/api/ui/accounts/AC-AAAAAAAA/invites".into(),
        ),
        post(
            "/api/ui/accounts/{account}/invites",
            Access::Session,
            "/api/ui/accounts/AC-AAAAAAAA/invites".into(),
            json!({"email": "x@y.example", "role": "owner"}),
        ),
        delete(
            "/api/ui/accounts/{account}/invites/{invite_id}",
            "/api/ui/accounts/AC-AAAAAAAA/invites/IN-AAAAAAAA".into(),
        ),
        get(
            "/api/invites/{token}",
            Access::Session,
            "/api/invites/not-a-token".into(),
        ),
        post(
            "/api/invites/{token}/accept",
            Access::Session,
            "/api/invites/not-a-token/accept".into(),
            json!({"password": "a long password"}),
        ),
        get("/api/share/me", Access::Session, "/api/share/me".into()),
        get(
            "/share/{token}",
            Access::Public,
            "/share/not-a-token".into(),
        ),
        get(
            "/invite/{token}",
            Access::Public,
            "/invite/not-a-token".into(),
        ),
        get("/", Access::Public, "/".into()),
        get("/dashboard.js", Access::Public, "/dashboard.js".into()),
        get("/dashboard.css", Access::Public, "/dashboard.css".into()),
        post(
            "/api/v1/admin/reprocess",
            Access::Admin,
            "/api/v1/admin/reprocess".into(),
            json!({"property": site}),
        ),
        get(
            "/api/v1/admin/reprocess/{id}",
            Access::Admin,
            "/api/v1/admin/reprocess/1".into(),
        ),
        post(
            "/api/v1/admin/delete",
            Access::Admin,
            "/api/v1/admin/delete".into(),
            json!({"property": site, "everything": true}),
        ),
        get(
            "/api/v1/admin/delete/{id}",
            Access::Admin,
            "/api/v1/admin/delete/1".into(),
        ),
        get("/healthz", Access::Public, "/healthz".into()),
        get("/readyz", Access::Public, "/readyz".into()),
        get("/metrics", Access::Public, "/metrics".into()),
        get(
            "/api/openapi.json",
            Access::Public,
            "/api/openapi.json".into(),
        ),
    ];
    let listed: std::collections::BTreeSet<String> =
        table.iter().map(|e| e.route.to_string()).collect();
    assert_eq!(
        listed,
        mounted_routes(),
        "every mounted route needs rows in this table (and no row a route that is gone)"
    );

    // Authorised, the read rows do show the data (so their check below can fail).
    let (path, hd, body) = (table[0].make)(Some(&a_read));
    let hd: Vec<(&str, &str)> = hd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (s, v, _) = h.send("POST", &path, &hd, body).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.to_string().contains(MARK));

    let wrong = "ffr_0000000000000000000000000000000000000000";
    let creds: [(&str, Option<&str>); 6] = [
        ("no key", None),
        ("a wrong key", Some(wrong)),
        ("another property's read key", Some(&b_read)),
        ("another property's write key", Some(&b_write)),
        ("a write key for a read", Some(&a_write)),
        ("a revoked key", Some(&revoked)),
    ];
    let mut rows = 0;
    for e in &table {
        for (what, cred) in creds {
            let (path, hd, body) = (e.make)(cred);
            let hd: Vec<(&str, &str)> = hd.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let before = a_events().await;
            let (s, v, _) = h.send(e.method, &path, &hd, body).await;
            let after = a_events().await;
            let ctx = format!("{} {} with {what}: {s} {v}", e.method, e.route);
            assert!(!v.to_string().contains(MARK), "data leaked: {ctx}");
            assert!(!s.is_server_error(), "{ctx}");
            match e.kind {
                Access::Read | Access::Session | Access::Admin => {
                    assert!(s.is_client_error(), "{ctx}");
                }
                Access::Ingest { keyless } => {
                    let own = cred == Some(a_write.as_str()) || (keyless && cred.is_none());
                    if !own {
                        assert_eq!(after, before, "written into A: {ctx}");
                    }
                }
                Access::Public | Access::Browser => {}
            }
            rows += 1;
        }
    }
    assert_eq!(rows, table.len() * creds.len());
}

/// A log that answers no append until told to.
#[derive(Default)]
struct StalledLog {
    waiting: Mutex<Vec<AppendCallback>>,
}

impl StalledLog {
    fn release(&self) -> usize {
        let waiting: Vec<AppendCallback> = std::mem::take(&mut *self.waiting.lock().unwrap());
        let n = waiting.len();
        for done in waiting {
            done(Ok(vec![0]));
        }
        n
    }
}

impl EventLog for StalledLog {
    fn partitions(&self) -> u32 {
        1
    }
    fn append(&self, _: Vec<(u32, Vec<u8>)>, done: AppendCallback) {
        self.waiting.lock().unwrap().push(done);
    }
    fn end_offset(&self, _: u32) -> Offset {
        0
    }
    fn start_offset(&self, _: u32) -> Offset {
        0
    }
    fn read(&self, _: u32, _: Offset, _: usize) -> footfall_log::Result<Vec<Record>> {
        Ok(vec![])
    }
    fn wait_for_append(&self, g: u64, _: Duration) -> u64 {
        g
    }
    fn generation(&self) -> u64 {
        0
    }
    fn enforce_retention(&self, _: &[Offset], _: Duration, _: u64) -> footfall_log::Result<u64> {
        Ok(0)
    }
    fn healthy(&self) -> bool {
        true
    }
    fn retained_bytes(&self) -> u64 {
        0
    }
}

/// A slow log does not make the server queue without bound: beyond the pending budget
/// ingest answers 503 with Retry-After (nothing acknowledged), and once the log catches
/// up the same request is taken.
#[tokio::test]
async fn ingest_beyond_the_pending_budget_answers_503() {
    let log = Arc::new(StalledLog::default());
    const BUDGET: usize = 1 << 20;
    let h = harness_with(Some(log.clone()), BUDGET);
    let p = h.meta.create_property("Shop", "UTC", &[]).unwrap();
    let (key, _) = h.meta.create_key(&p.tracking_id, Scope::Write).unwrap();
    let batch = |tag: &str| {
        json!((0..10)
            .map(|i| json!({"tracking_id": p.tracking_id, "name": "pageview",
                "url": format!("https://shop.example/{tag}/{i}"), "client_id": format!("c{i}")}))
            .collect::<Vec<_>>())
    };
    let (first, second) = tokio::join!(h.ingest(batch("a"), Some(&key)), async {
        // The first batch is waiting on the log by now. Shrink what is left of the
        // budget to half a batch, so that a second batch of the same size is over it.
        while log.waiting.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let left = h.state.pending.available_permits();
        let batch_bytes = BUDGET - left;
        assert!(
            batch_bytes > 0,
            "the waiting batch holds part of the budget"
        );
        h.state.pending.forget_permits(left - batch_bytes / 2);
        let (s, v, hd) = h
            .send(
                "POST",
                "/api/v1/events",
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {key}")),
                ],
                serde_json::to_vec(&batch("b")).unwrap(),
            )
            .await;
        assert_eq!(log.release(), 1, "only the first batch reached the log");
        (s, v, hd)
    });
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    let (s, v, hd) = second;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(hd["retry-after"], "1");
    // The budget is back once the log answered: the refused batch is taken now.
    let (s, v) = tokio::join!(h.ingest(batch("b"), Some(&key)), async {
        while log.release() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .0;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

/// `include.comparison` (Footfall's extension) and `include.time_labels`, on top of
/// either engine.
#[tokio::test]
async fn comparisons_and_time_labels() {
    let h = harness();
    let (tid, read, _) = h.property("UTC", &[]);
    let day = 86_400_000;
    let at = |t: i64, v: &str| json!({"tracking_id": tid, "name": "pageview", "client_id": v, "url": "https://shop.example/a", "timestamp": t});
    // Today: three visitors; yesterday: one; three days ago: two.
    let events = json!([
        at(NOW - 1000, "a"),
        at(NOW - 1000, "b"),
        at(NOW - 1000, "c"),
        at(NOW - day, "d"),
        at(NOW - 3 * day, "e"),
        at(NOW - 3 * day, "f")
    ]);
    let (s, _) = h.ingest(events, None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["pageviews", "bounce_rate"], "date_range": "day",
                   "include": {"comparison": "previous_period"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let row = &v["results"][0];
    assert_eq!(row["metrics"], json!([3, 100]));
    assert_eq!(row["comparison"]["metrics"], json!([1, 100]));
    assert_eq!(row["comparison"]["change"], json!([200, 0.0]));
    let today = chrono::NaiveDate::parse_from_str(
        &v["query"]["date_range"][0].as_str().unwrap()[..10],
        "%Y-%m-%d",
    )
    .unwrap();
    let label = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let days_ago = |n: i64| label(today - chrono::Duration::days(n));
    // By day over yesterday and today, with every label, against the two days before.
    let (s, v) = h
        .query(
            &read,
            json!({"site_id": tid, "metrics": ["visitors"], "date_range": [days_ago(1), days_ago(0)],
                   "dimensions": ["time:day"], "include": {"comparison": "previous_period", "time_labels": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["meta"]["time_labels"], json!([days_ago(1), days_ago(0)]));
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    // Yesterday's counterpart is three days ago; today's is two days ago (nobody).
    assert_eq!(rows[0]["dimensions"], json!([days_ago(1)]));
    assert_eq!(rows[0]["metrics"], json!([1]));
    assert_eq!(rows[0]["comparison"]["dimensions"], json!([days_ago(3)]));
    assert_eq!(rows[0]["comparison"]["metrics"], json!([2]));
    assert_eq!(rows[0]["comparison"]["change"], json!([-50]));
    assert_eq!(rows[1]["metrics"], json!([3]));
    assert_eq!(rows[1]["comparison"]["dimensions"], json!([days_ago(2)]));
    assert_eq!(rows[1]["comparison"]["metrics"], json!([0]));
    assert_eq!(rows[1]["comparison"]["change"], json!([100]));
    // Labels need a time dimension; modes are named.
    for (include, want) in [
        (json!({"time_labels": true}), "time dimension"),
        (json!({"comparison": "last_tuesday"}), "previous_period"),
    ] {
        let (s, v) = h
            .query(
                &read,
                json!({"site_id": tid, "metrics": ["visitors"], "date_range": "7d", "include": include}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
}

/// Connection limits: one client address holds at most its share (429), the node at
/// most its total (503); both answer in the API's error shape with `Retry-After` and
/// close, and a connection that ends gives its place back.
#[tokio::test]
async fn connections_beyond_the_limits_are_answered_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(footfall_server::fast::serve(
        listener,
        h.state.clone(),
        app(h.state.clone()),
        footfall_server::fast::ConnectionLimits {
            max: 3,
            per_client: 2,
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    // A connection from `from` (loopback addresses are all local) that asks for
    // /healthz: its status and body; the connection stays open when it was accepted.
    async fn ask(from: &str, port: u16) -> (tokio::net::TcpStream, u16, String) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = sock
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if n == 0 || text.ends_with("ok") || text.contains("}}") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text[9..12].parse().unwrap();
        (s, status, text)
    }
    let (a1, s, _) = ask("127.0.0.1", port).await;
    assert_eq!(s, 200);
    let (_a2, s, _) = ask("127.0.0.1", port).await;
    assert_eq!(s, 200);
    let (_, s, text) = ask("127.0.0.1", port).await;
    assert_eq!(s, 429, "{text}");
    assert!(
        text.contains("too_many_connections") && text.contains("retry-after: 1"),
        "{text}"
    );
    let (_b1, s, _) = ask("127.0.0.2", port).await;
    assert_eq!(s, 200, "another client still has room");
    let (_, s, text) = ask("127.0.0.3", port).await;
    assert_eq!(s, 503, "the node is full: {text}");
    assert!(
        text.contains("too_many_connections") && text.contains("retry-after: 1"),
        "{text}"
    );
    // A connection that ends gives its place back.
    drop(a1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_c, s, _) = ask("127.0.0.3", port).await;
        if s == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    drop(server);
}

/// Slow clients are cut off: a beacon whose body stops arriving is closed after the
/// read timeout (30 s), and a router request whose body stops is answered 408 within the
/// body timeout (30 s) rather than holding its connection and buffer.
#[tokio::test]
async fn slow_clients_are_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(footfall_server::fast::serve(
        listener,
        h.state.clone(),
        app(h.state.clone()),
        Default::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    // Sends a head promising 100 bytes of body, then 10 of them, then nothing: answers
    // what came back and when.
    let stall = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\nauthorization: Bearer x\r\ncontent-length: 100\r\n\r\n0123456789"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let t = std::time::Instant::now();
        let mut got = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(45), s.read_to_end(&mut got)).await;
        (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
    };
    let ((beacon, beacon_t), (query, query_t)) =
        tokio::join!(stall("/api/v1/events"), stall("/api/v2/query"));
    assert!(beacon.is_empty(), "the beacon path closes: {beacon}");
    assert!(
        beacon_t >= std::time::Duration::from_secs(29)
            && beacon_t < std::time::Duration::from_secs(40),
        "{beacon_t:?}"
    );
    assert!(query.starts_with("HTTP/1.1 408"), "{query}");
    assert!(query.contains("request_timeout"), "{query}");
    assert!(query_t < std::time::Duration::from_secs(40), "{query_t:?}");
    let _ = stop_tx.send(());
    drop(server);
}
