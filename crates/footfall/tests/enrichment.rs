//! Enrichment end to end on the real binary: geo from a MaxMind-format database the test
//! builds itself (PyPI `mmdb-writer`), user agents, channels and click ids, bots kept
//! out of the statistics but counted, visit attributes combined as filters, and
//! Plausible's hash-routing flag.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// A GeoIP2-City-shaped network and a DB-IP-shaped (flat `country_code`) one.
const MMDB_PY: &str = r#"
import sys
from mmdb_writer import MMDBWriter
from netaddr import IPSet
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
w.insert_network(IPSet(["203.0.113.0/24"]), {
    "country": {"iso_code": "DE", "names": {"en": "Germany"}},
    "subdivisions": [{"iso_code": "BE", "names": {"en": "Berlin"}}],
    "city": {"names": {"en": "Berlin"}}})
w.insert_network(IPSet(["198.51.100.0/24"]), {"country_code": "JP"})
w.to_db_file(sys.argv[1])
"#;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_devices_channels_and_bots() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    run_ok(Command::new(&py).args(["-c", MMDB_PY]).arg(&db));
    let site = create_site(dir.path(), "UTC");
    cli(
        dir.path(),
        &[
            "property",
            "update",
            &site.tracking_id,
            "--domain",
            "shop.example",
        ],
    );
    let server = Server::start(
        dir.path(),
        &[("FOOTFALL_ENRICH__GEOIP_PATH", db.to_str().unwrap())],
    );
    let c = reqwest::Client::new();
    let ev = |ip: &str, ua: &str, url: &str, referrer: Option<&str>| {
        json!({"tracking_id": site.tracking_id, "name": "pageview", "url": url, "referrer": referrer,
               "ip": ip, "user_agent": ua})
    };
    let body = json!([
        ev(
            "203.0.113.9",
            CHROME,
            "https://shop.example/?gclid=abc",
            Some("https://www.google.com/")
        ),
        ev("203.0.113.9", CHROME, "https://shop.example/cart", None),
        ev(
            "198.51.100.4",
            IPHONE,
            "https://shop.example/",
            Some("https://m.facebook.com/")
        ),
        ev(
            "192.0.2.1",
            FIREFOX,
            "https://shop.example/?utm_source=nl&utm_medium=email&utm_campaign=spring",
            None
        ),
        ev("192.0.2.77", GOOGLEBOT, "https://shop.example/", None),
        ev("192.0.2.77", GOOGLEBOT, "https://shop.example/about", None),
    ]);
    assert_eq!(
        post_events(&c, &server.url, &site.write_key, &body).await,
        6
    );
    // Plausible with hash routing: the fragment's route is part of the page.
    let r = c
        .post(format!("{}/api/event", server.url))
        .header("user-agent", FIREFOX)
        .header("x-forwarded-for", "198.51.100.200")
        .body(json!({"n": "pageview", "u": "https://shop.example/app#/settings/billing", "d": "shop.example", "h": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    // Bots are not counted: 5 events of 4 visits remain.
    wait_for_events(&c, &server.url, &site, json!("day"), 5).await;
    let by = |dim: &str, filters: Value| {
        let c = c.clone();
        let (url, site_id) = (server.url.clone(), site.tracking_id.clone());
        let site = Site {
            tracking_id: site_id.clone(),
            read_key: site.read_key.clone(),
            write_key: String::new(),
        };
        let dim = dim.to_string();
        async move {
            let v = query(&c, &url, &site, json!({"site_id": site_id, "metrics": ["visits"], "date_range": "day", "dimensions": [dim], "filters": filters})).await;
            counts_by_dimension(&v)
        }
    };
    let m = map_of;
    assert_eq!(
        by("visit:country", json!([])).await,
        m(&[("DE", 1), ("JP", 2), ("(unknown)", 1)])
    );
    assert_eq!(
        by("visit:region", json!([])).await,
        m(&[("DE-BE", 1), ("(unknown)", 3)])
    );
    assert_eq!(
        by("visit:city", json!([])).await,
        m(&[("Berlin", 1), ("(unknown)", 3)])
    );
    assert_eq!(
        by("visit:browser", json!([])).await,
        m(&[("Chrome", 1), ("Mobile Safari", 1), ("Firefox", 2)])
    );
    assert_eq!(
        by("visit:os", json!([])).await,
        m(&[("Windows", 1), ("iOS", 1), ("Ubuntu", 2)])
    );
    assert_eq!(
        by("visit:device", json!([])).await,
        m(&[("Desktop", 3), ("Mobile", 1)])
    );
    assert_eq!(
        by("visit:channel", json!([])).await,
        m(&[
            ("Paid Search", 1),
            ("Organic Social", 1),
            ("Email", 1),
            ("Direct", 1)
        ])
    );
    assert_eq!(
        by(
            "visit:utm_campaign",
            json!([["is", "visit:utm_medium", ["email"]]])
        )
        .await,
        m(&[("spring", 1)])
    );
    // Visit attributes combine: browsers of visits from Japan.
    assert_eq!(
        by("visit:browser", json!([["is", "visit:country", ["JP"]]])).await,
        m(&[("Mobile Safari", 1), ("Firefox", 1)])
    );
    assert_eq!(
        by("visit:source", json!([["is", "visit:device", ["Mobile"]]])).await,
        m(&[("m.facebook.com", 1)])
    );
    let pages = query(&c, &server.url, &site, json!({"site_id": site.tracking_id, "metrics": ["pageviews"], "date_range": "day", "dimensions": ["event:page"]})).await;
    assert_eq!(
        counts_by_dimension(&pages).get("/app/settings/billing"),
        Some(&1)
    );

    // …and counted, by reason.
    let v = filtered(&c, &server.url, &site, "day").await;
    assert_eq!(v["filtered"], json!({"bot:crawler-pattern": 2}), "{v}");
}

/// `visit:country_name`, `visit:region_name` and `visit:city_name` (docs/METRICS.md):
/// the names of the stored codes, as breakdowns and as filters (`is`, `contains`
/// without case, `matches`) under another breakdown, in two time zones. The rollups
/// keep codes, so the columnar engine answers.
#[cfg(feature = "columnar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_region_and_city_names() {
    let Some(py) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    run_ok(Command::new(&py).args(["-c", MMDB_PY]).arg(&db));
    let sites = [
        create_site(dir.path(), "Asia/Kolkata"),
        create_site(dir.path(), "UTC"),
    ];
    let server = Server::start(
        dir.path(),
        &[
            ("FOOTFALL_ENRICH__GEOIP_PATH", db.to_str().unwrap()),
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__REFRESH_INTERVAL", "200ms"),
        ],
    );
    let c = reqwest::Client::new();
    for site in &sites {
        let ev = |ip: &str, page: &str| {
            json!({"tracking_id": site.tracking_id, "name": "pageview",
                   "url": format!("https://shop.example{page}"), "ip": ip, "user_agent": CHROME})
        };
        // Berlin (DE, DE-BE) with two pages; Japan without region or city; no entry.
        let body = json!([
            ev("203.0.113.9", "/a"),
            ev("203.0.113.9", "/b"),
            ev("198.51.100.4", "/a"),
            ev("192.0.2.1", "/c")
        ]);
        assert_eq!(
            post_events(&c, &server.url, &site.write_key, &body).await,
            4
        );
    }
    for site in &sites {
        let ask = |dims: Value, filters: Value, metric: &str| {
            let (c, url, site) = (c.clone(), server.url.clone(), site.clone());
            let metric = metric.to_string();
            async move {
                let q = json!({"site_id": site.tracking_id, "metrics": [metric], "date_range": "day",
                               "dimensions": dims, "filters": filters});
                query(&c, &url, &site, q).await
            }
        };
        // The columnar files are made from the archive within a second or two.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let by_country = loop {
            let v = ask(json!(["visit:country_name"]), json!([]), "visits").await;
            let m = counts_by_dimension(&v);
            if m.values().sum::<u64>() == 3 {
                assert_eq!(v["meta"]["engine"], "columnar", "{v}");
                break m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no columnar answer: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        let m = map_of;
        assert_eq!(
            by_country,
            m(&[("Germany", 1), ("Japan", 1), ("(unknown)", 1)])
        );
        let by = |dim: &str| ask(json!([dim]), json!([]), "visits");
        assert_eq!(
            counts_by_dimension(&by("visit:region_name").await),
            m(&[("Berlin", 1), ("(unknown)", 2)])
        );
        assert_eq!(
            counts_by_dimension(&by("visit:city_name").await),
            m(&[("Berlin", 1), ("(unknown)", 2)])
        );
        let pages = |filters: Value| ask(json!(["event:page"]), filters, "pageviews");
        let germany = m(&[("/a", 1), ("/b", 1)]);
        assert_eq!(
            counts_by_dimension(&pages(json!([["is", "visit:country_name", ["Germany"]]])).await),
            germany
        );
        assert_eq!(
            counts_by_dimension(
                &pages(
                    json!([["contains", "visit:country_name", ["GERM"], {"case_sensitive": false}]])
                )
                .await
            ),
            germany
        );
        assert_eq!(
            counts_by_dimension(&pages(json!([["is", "visit:region_name", ["Berlin"]]])).await),
            germany
        );
        assert_eq!(
            counts_by_dimension(
                &ask(
                    json!(["visit:country"]),
                    json!([["matches", "visit:country_name", ["^J"]]]),
                    "visits"
                )
                .await
            ),
            m(&[("JP", 1)])
        );
    }
}
