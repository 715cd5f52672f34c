//! Published client libraries against the real server, then the query API:
//! - GA4 Measurement Protocol: PyPI `ga4mp` 2.0.4 (its `GtagMP` client);
//! - Segment HTTP Tracking API: PyPI `segment-analytics-python` 2.4.0 (gzip on);
//!
//! plus each protocol's bad inputs (wrong key, unknown property, malformed body, limits,
//! bad gzip) and the answers the protocols document, with nothing valid lost.
//! The browser libraries (Plausible, gtag-style GA4, Footfall's own tracker) run in
//! headless Chromium: see `browser.rs`.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Drives both Python libraries; prints one JSON line with what they reported.
const CLIENTS_PY: &str = r#"
import json, sys
url, tid, key = sys.argv[1], sys.argv[2], sys.argv[3]

from ga4mp import GtagMP
ga = GtagMP(api_secret=key, measurement_id=tid, client_id="1234567890.1700000000")
# The library's collection host, pointed at Footfall (a merchant changes one host name).
ga._base_domain = url + "/mp/collect"
ga._validation_domain = url + "/debug/mp/collect"
ga.send([{"name": "page_view", "params": {
    "page_location": "https://shop.example/ga4/landing?utm_source=newsletter&utm_medium=email&utm_campaign=bf",
    "page_referrer": "https://mail.example.org/inbox", "page_title": "Landing"}}])
ga.send([{"name": "sign_up", "params": {"method": "email"}}])
ga.send([{"name": "purchase", "params": {"currency": "EUR", "value": 42.5, "transaction_id": "T-1"}}])

errors = []
import segment.analytics as analytics
analytics.write_key = key
analytics.host = url
analytics.sync_mode = True
analytics.gzip = True
analytics.max_retries = 0
analytics.on_error = lambda e, batch: errors.append(str(e))
analytics.page(anonymous_id="anon-1", name="Pricing", properties={
    "url": "https://shop.example/segment/pricing", "title": "Pricing",
    "referrer": "https://www.google.com/search?q=shoes"})
analytics.track(anonymous_id="anon-1", event="Order Completed", message_id="order-1",
    properties={"revenue": 19.99, "currency": "usd", "plan": "pro"})
# A retry of the same message (same messageId) must not count twice.
analytics.track(anonymous_id="anon-1", event="Order Completed", message_id="order-1",
    properties={"revenue": 19.99, "currency": "usd", "plan": "pro"})
analytics.screen(anonymous_id="anon-2", name="Home")
analytics.identify(anonymous_id="anon-1", user_id="u-1", traits={"plan": "pro"})
analytics.flush()
print(json.dumps({"segment_errors": errors}))
"#;

async fn q(c: &reqwest::Client, s: &Server, site: &Site, body: Value) -> Value {
    let mut body = body;
    body["site_id"] = json!(site.tracking_id);
    body["date_range"] = json!("day");
    query(c, &s.url, site, body).await
}

fn rows(v: &Value) -> Vec<(String, Value)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap_or("").to_string(),
                r["metrics"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ga4_and_segment_clients_reach_the_query_api() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let server = Server::start(dir.path(), &[]);
    let out = Command::new(&py)
        .args([
            "-c",
            CLIENTS_PY,
            &server.url,
            &site.tracking_id,
            &site.write_key,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["segment_errors"], json!([]), "{report}");

    let c = reqwest::Client::new();
    // GA4: page_view, sign_up, purchase; Segment: page, one Order Completed (the retry is
    // a duplicate), screen. identify carries no event.
    wait_for_events(&c, &server.url, &site, json!("day"), 6).await;
    let names = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["events"], "dimensions": ["event:name"]}),
    )
    .await;
    assert_eq!(
        counts_by_dimension(&names),
        [
            ("pageview", 3),
            ("sign_up", 1),
            ("purchase", 1),
            ("Order Completed", 1)
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    );
    let pages = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["pageviews"], "dimensions": ["event:page"]}),
    )
    .await;
    let pages = counts_by_dimension(&pages);
    assert_eq!(pages.get("/ga4/landing"), Some(&1), "{pages:?}");
    assert_eq!(pages.get("/segment/pricing"), Some(&1), "{pages:?}");
    assert_eq!(pages.get("/Home"), Some(&1), "{pages:?}");
    let channels = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["visits"], "dimensions": ["visit:channel"]}),
    )
    .await;
    let channels = counts_by_dimension(&channels);
    assert_eq!(channels.get("Email"), Some(&1), "{channels:?}");
    assert_eq!(channels.get("Organic Search"), Some(&1), "{channels:?}");
    let refs = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["visits"], "dimensions": ["visit:referrer"]}),
    )
    .await;
    let refs = counts_by_dimension(&refs);
    assert_eq!(refs.get("mail.example.org/inbox"), Some(&1), "{refs:?}");
    assert_eq!(refs.get("google.com/search"), Some(&1), "{refs:?}");
    let camp = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["visits"], "dimensions": ["visit:utm_campaign"]}),
    )
    .await;
    assert_eq!(counts_by_dimension(&camp).get("bf"), Some(&1));
    let method = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["events"], "dimensions": ["event:props:method"]}),
    )
    .await;
    assert_eq!(
        counts_by_dimension(&method),
        [("email".to_string(), 1)].into()
    );
    let plan = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["events"], "dimensions": ["event:props:plan"]}),
    )
    .await;
    assert_eq!(counts_by_dimension(&plan), [("pro".to_string(), 1)].into());
    let revenue = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["total_revenue"], "dimensions": ["event:name"]}),
    )
    .await;
    let revenue: std::collections::BTreeMap<String, Value> = rows(&revenue)
        .into_iter()
        .map(|(k, m)| (k, m[0].clone()))
        .collect();
    assert_eq!(revenue["purchase"], json!({"EUR": 42.5}));
    assert_eq!(revenue["Order Completed"], json!({"USD": 19.99}));
    let total = q(
        &c,
        &server,
        &site,
        json!({"metrics": ["total_revenue", "events"]}),
    )
    .await;
    assert_eq!(
        total["results"][0]["metrics"],
        json!([{"EUR": 42.5, "USD": 19.99}, 6])
    );
    eprintln!(
        "clients: ga4mp 2.0.4 and segment-analytics-python 2.4.0 → names {names}",
        names = names["results"]
    );
}

async fn post(
    c: &reqwest::Client,
    url: String,
    body: impl Into<reqwest::Body>,
    basic: Option<&str>,
) -> (u16, String) {
    let mut r = c.post(url).body(body);
    if let Some(k) = basic {
        r = r.basic_auth(k, Some(""));
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_each_protocols_answer_and_valid_items_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let other = create_site(dir.path(), "UTC");
    let server = Server::start(dir.path(), &[]);
    let c = reqwest::Client::new();
    let u = &server.url;
    let (tid, key) = (&site.tracking_id, &site.write_key);

    // GA4 debug endpoint: each problem named, nothing stored.
    let debug = |mid: &str, secret: &str| {
        format!("{u}/debug/mp/collect?measurement_id={mid}&api_secret={secret}")
    };
    let msgs = |body: &str| -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(body).unwrap();
        v["validationMessages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["fieldPath"].as_str().unwrap().to_string(),
                    m["validationCode"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let ok_event = json!({"client_id": "c1", "events": [{"name": "page_view", "params": {"page_location": "https://shop.example/a"}}]});
    let (s, b) = post(&c, debug(tid, "ffw_wrong"), ok_event.to_string(), None).await;
    assert_eq!(
        (s, msgs(&b)),
        (200, vec![("api_secret".into(), "VALUE_INVALID".into())])
    );
    let (_, b) = post(
        &c,
        debug(&other.tracking_id, key),
        ok_event.to_string(),
        None,
    )
    .await;
    assert_eq!(
        msgs(&b),
        vec![("measurement_id".into(), "VALUE_INVALID".into())]
    );
    let (_, b) = post(&c, debug(tid, key), "{not json", None).await;
    assert_eq!(msgs(&b)[0].1, "VALUE_INVALID");
    let many: Vec<Value> = (0..26).map(|_| json!({"name": "x"})).collect();
    let (_, b) = post(
        &c,
        debug(tid, key),
        json!({"client_id": "c", "events": many}).to_string(),
        None,
    )
    .await;
    assert_eq!(
        msgs(&b),
        vec![("events".into(), "EXCEEDED_MAX_ENTITIES".into())]
    );
    let (_, b) = post(&c, debug(tid, key), json!({"client_id": "c", "events": [
        {"name": "1bad"}, {"name": "session_start"}, {"name": "ok", "params": {"google_x": 1, "v": "x".repeat(101)}},
        {"name": "old", "timestamp_micros": 1_000_000_000_000_000i64}
    ]}).to_string(), None).await;
    assert_eq!(
        msgs(&b),
        vec![
            ("events[0].name".into(), "NAME_INVALID".into()),
            ("events[1].name".into(), "NAME_RESERVED".into()),
            ("events[2].params.google_x".into(), "NAME_RESERVED".into()),
            ("events[2].params.v".into(), "VALUE_OUT_OF_BOUNDS".into()),
            (
                "events[3].timestamp_micros".into(),
                "VALUE_OUT_OF_BOUNDS".into()
            ),
        ]
    );
    let (_, b) = post(
        &c,
        debug(tid, key),
        json!({"events": [{"name": "x"}]}).to_string(),
        None,
    )
    .await;
    assert_eq!(
        msgs(&b),
        vec![("client_id".into(), "VALUE_REQUIRED".into())]
    );
    let (_, b) = post(&c, debug(tid, key), ok_event.to_string(), None).await;
    assert_eq!(msgs(&b), vec![], "a valid payload has no messages");

    // GA4 collect: 204 whatever it says (as GA4), but only valid events are kept.
    let collect = format!("{u}/mp/collect?measurement_id={tid}&api_secret={key}");
    assert_eq!(post(&c, collect.clone(), "{not json", None).await.0, 204);
    assert_eq!(
        post(
            &c,
            format!("{u}/mp/collect?measurement_id={tid}&api_secret=nope"),
            ok_event.to_string(),
            None
        )
        .await
        .0,
        204
    );
    let mixed = json!({"client_id": "c1", "events": [{"name": "1bad"}, {"name": "kept_ga4", "params": {"a": "b"}}]});
    assert_eq!(post(&c, collect, mixed.to_string(), None).await.0, 204);

    // gtag: missing tid 400, unknown tid 404, a multi-line body keeps its valid lines.
    let g = |qs: &str| format!("{u}/g/collect?v=2&{qs}");
    assert_eq!(post(&c, g("cid=1&en=page_view"), "", None).await.0, 400);
    assert_eq!(post(&c, g("tid=FF-NOPE0000&cid=1"), "", None).await.0, 404);
    let body = "en=kept_gtag&ep.plan=pro\nen=purchase&epn.value=abc\nen=page_view&dl=https%3A%2F%2Fshop.example%2Fg";
    let (s, b) = post(
        &c,
        g(&format!(
            "tid={tid}&cid=9.9&dl=https%3A%2F%2Fshop.example%2Fq"
        )),
        body,
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let r = c
        .get(g(&format!(
            "tid={tid}&cid=9.9&en=kept_get&dl=https%3A%2F%2Fshop.example%2Fget"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);

    // Segment: wrong key 401, malformed 400, bad gzip 400, over 500 KB 400, a message over
    // 32 KB refused while the rest of its batch is kept.
    let seg = |p: &str| format!("{u}/v1/{p}");
    let track = json!({"type": "track", "event": "kept_segment", "anonymousId": "a1"});
    assert_eq!(
        post(&c, seg("track"), track.to_string(), Some("ffw_wrong"))
            .await
            .0,
        401
    );
    assert_eq!(post(&c, seg("track"), track.to_string(), None).await.0, 401);
    assert_eq!(post(&c, seg("batch"), "{nope", Some(key)).await.0, 400);
    let mut bad_gz = gzip(b"{}");
    bad_gz.truncate(8);
    assert_eq!(post(&c, seg("batch"), bad_gz, Some(key)).await.0, 400);
    let huge = json!({"batch": (0..40).map(|_| json!({"type": "track", "event": "x", "anonymousId": "a", "properties": {"p": "y".repeat(14_000)}})).collect::<Vec<_>>()});
    assert_eq!(
        post(&c, seg("batch"), huge.to_string(), Some(key)).await.0,
        400
    );
    let batch = json!({"writeKey": key, "batch": [
        {"type": "track", "event": "too_big", "anonymousId": "a", "properties": {"p": "y".repeat(33_000)}},
        {"type": "track", "anonymousId": "a"},
        track,
        {"type": "page", "anonymousId": "a2", "properties": {"url": "https://shop.example/seg-short"}},
    ]});
    let (s, b) = post(&c, seg("b"), gzip(batch.to_string().as_bytes()), None).await;
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["success"], json!(true));
    let codes: Vec<&str> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["message_too_large", "missing_name"]);
    let (s, b) = post(
        &c,
        seg("t"),
        json!({"type": "track", "event": "kept_short", "anonymousId": "a3"}).to_string(),
        Some(key),
    )
    .await;
    assert_eq!((s, b.as_str()), (200, r#"{"success":true}"#));

    // Everything valid above, and nothing else, is visible.
    wait_for_events(&c, u, &site, json!("day"), 7).await;
    let names = query(&c, u, &site, json!({"site_id": tid, "metrics": ["events"], "date_range": "day", "dimensions": ["event:name"]})).await;
    assert_eq!(
        counts_by_dimension(&names),
        [
            ("kept_ga4", 1),
            ("kept_gtag", 1),
            ("pageview", 2),
            ("kept_get", 1),
            ("kept_segment", 1),
            ("kept_short", 1)
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    );
}
