//! The dashboard end to end in Debian's headless Chromium, driven by playwright-core
//! (tests/dashboard/e2e.js): log in, switch property, change the date range, filter by
//! clicking a row, export a CSV, open a bookmarked view, log out; a user of another
//! account cannot reach the first account's property by URL or API. Every number the
//! page shows is checked against `/api/v2/query` with a read key, and axe-core checks
//! the page. Screenshots of each step go to target/test-output/dashboard/.
//!
//! Needs `chromium` and the npm packages scripts/test-deps.sh installs; skipped loudly
//! without them (failed under CI).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn npm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/npm")
}

fn prerequisites() -> bool {
    let chromium = Command::new("chromium").arg("--version").output().is_ok();
    let pw = npm_dir().join("playwright-core-1.65.1").exists();
    if chromium && pw {
        return true;
    }
    let msg = format!(
        "dashboard test: chromium present: {chromium}, playwright-core present: {pw} (scripts/test-deps.sh installs both)"
    );
    if std::env::var("CI").is_ok() {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

async fn visitors(c: &reqwest::Client, url: &str, site: &Site, q: Value) -> Vec<(String, u64)> {
    let v = query(c, url, site, q).await;
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"]
                    .get(0)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                r["metrics"][0].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_end_to_end_in_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let run = |args: &[&str]| cli(data, args);
    let (a1, a2, b) = (
        create_site_by(run, "Shop A1", "Asia/Kolkata"),
        create_site_by(run, "Shop A2", "UTC"),
        create_site_by(run, "Shop B", "UTC"),
    );
    let (ann_pw, bob_pw) = ("ann's long passphrase", "bob's long passphrase");
    create_account_with_user(
        data,
        "Acme",
        &[&a1.tracking_id, &a2.tracking_id],
        ("ann@a.example", ann_pw, "owner"),
    );
    create_account_with_user(
        data,
        "Bravo",
        &[&b.tracking_id],
        ("bob@b.example", bob_pw, "viewer"),
    );

    // The columnar files (any filter with any breakdown) are made from the archive:
    // seal and refresh often so that the page can show them.
    let server = Server::start(
        data,
        &[
            ("FOOTFALL_ARCHIVE__SEAL_INTERVAL", "200ms"),
            ("FOOTFALL_COLUMNAR__REFRESH_INTERVAL", "200ms"),
        ],
    );
    let c = reqwest::Client::new();
    // A1: five visitors on /, three of them also on /pricing, from two sources; A2: two.
    let mut events = Vec::new();
    for v in 0..5 {
        let referrer = if v % 2 == 0 {
            "https://www.google.com/"
        } else {
            "https://news.ycombinator.com/"
        };
        events.push(json!({"tracking_id": a1.tracking_id, "name": "pageview", "client_id": format!("v{v}"), "url": "https://a1.example/", "referrer": referrer}));
        if v < 3 {
            events.push(json!({"tracking_id": a1.tracking_id, "name": "pageview", "client_id": format!("v{v}"), "url": "https://a1.example/pricing"}));
        }
        if v < 2 {
            let plan = if v == 0 { "pro" } else { "team" };
            events.push(json!({"tracking_id": a1.tracking_id, "name": "purchase", "client_id": format!("v{v}"), "url": "https://a1.example/pricing",
                "props": {"plan": plan}, "revenue": {"amount": 19.99, "currency": "EUR"}}));
        }
    }
    let a2_events: Vec<Value> = (0..2)
        .map(|v| json!({"tracking_id": a2.tracking_id, "name": "pageview", "client_id": format!("w{v}"), "url": "https://a2.example/"}))
        .collect();
    let n1 = post_events(&c, &server.url, &a1.write_key, &json!(events)).await;
    let n2 = post_events(&c, &server.url, &a2.write_key, &json!(a2_events)).await;
    assert_eq!(n1, events.len() as u64, "every event accepted");
    wait_for_events(&c, &server.url, &a1, json!("7d"), n1).await;
    wait_for_events(&c, &server.url, &a2, json!("7d"), n2).await;
    // Sources of the visitors who saw /pricing: the rollups hold one dimension at a
    // time, so the columnar engine answers, once the files are made.
    let sources_of_pricing = json!({"site_id": a1.tracking_id, "metrics": ["visitors"], "date_range": "7d",
        "dimensions": ["visit:source"], "filters": [["is", "event:page", ["/pricing"]]]});
    if cfg!(feature = "columnar") {
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = visitors(&c, &server.url, &a1, sources_of_pricing.clone()).await;
            if !rows.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            rows,
            vec![
                ("google.com".to_string(), 2),
                ("news.ycombinator.com".to_string(), 1)
            ]
        );
        // Goals from the command line, answered over all history at once: 3 of the 5
        // visitors saw /pricing, 1 bought the pro plan.
        let id = a1.tracking_id.as_str();
        run(&["goal", "add", "--property", id, "--page", "/pricing"]);
        let added = run(&[
            "goal",
            "add",
            "--property",
            id,
            "--event",
            "purchase",
            "--prop",
            "plan=pro",
            "--name",
            "Pro purchase",
        ]);
        assert_eq!(added.trim(), "Visit /pricing\nPro purchase");
        let listed: Value =
            serde_json::from_str(&run(&["goal", "list", "--property", id, "--json"])).unwrap();
        // The running server sees the command line's change within its metadata refresh
        // (a second).
        let mut api = Value::Null;
        for _ in 0..50 {
            api = c
                .get(format!("{}/api/v1/goals?site_id={id}", server.url))
                .bearer_auth(&a1.read_key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if api["goals"] == listed {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(api["goals"], listed);
        let v = query(
            &c,
            &server.url,
            &a1,
            json!({"site_id": id, "metrics": ["visitors", "events", "conversion_rate", "average_revenue"],
                "date_range": "7d", "dimensions": ["event:goal"]}),
        )
        .await;
        assert_eq!(v["meta"]["engine"], "columnar", "{v}");
        assert_eq!(
            v["results"],
            json!([
                {"dimensions": ["Visit /pricing"], "metrics": [3, 3, 60.0, {}]},
                {"dimensions": ["Pro purchase"], "metrics": [1, 1, 20.0, {"EUR": 19.99}]},
            ]),
            "{v}"
        );
        // A funnel of the two goals, in order within a visit: the events were sent in
        // one batch at one time, so their order in the visit is the order sent.
        let f: Value = c
            .post(format!("{}/api/v2/funnel", server.url))
            .bearer_auth(&a1.read_key)
            .json(&json!({"site_id": id, "date_range": "7d", "steps": ["Visit /pricing", "Pro purchase"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            f["results"][0]["steps"],
            json!([
                {"step": 1, "goal": "Visit /pricing", "visitors": 3, "conversion_rate": 100.0, "dropoff": 0, "dropoff_rate": 0.0},
                {"step": 2, "goal": "Pro purchase", "visitors": 1, "conversion_rate": 33.33, "dropoff": 2, "dropoff_rate": 66.67},
            ]),
            "{f}"
        );
        // Retention: the five visitors are this week's cohort, all active in it.
        let r: Value = c
            .post(format!("{}/api/v2/retention", server.url))
            .bearer_auth(&a1.read_key)
            .json(&json!({"site_id": id, "date_range": "day", "period": "week"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["results"][0]["visitors"], 5, "{r}");
        assert_eq!(
            r["results"][0]["retention"][0],
            json!({"period": 0, "visitors": 5, "percentage": 100.0}),
            "{r}"
        );
        // SQL over the same events: JSON and CSV; DDL refused; another property's key
        // reads nothing.
        let sql = |key: &str, body: Value| {
            c.post(format!("{}/api/v1/sql", server.url))
                .bearer_auth(key)
                .json(&body)
                .send()
        };
        let r = sql(&a1.read_key, json!({"site_id": id, "sql": "SELECT event_page, COUNT(DISTINCT visitor) AS v FROM events WHERE pageview GROUP BY event_page ORDER BY v DESC"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["rows"], json!([["/", 5], ["/pricing", 3]]), "{v}");
        let r = sql(&a1.read_key, json!({"site_id": id, "format": "csv", "sql": "SELECT source, COUNT(*) AS visits FROM visits GROUP BY source ORDER BY source"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.unwrap(),
            "source,visits\r\ngoogle.com,3\r\nnews.ycombinator.com,2\r\n"
        );
        let r = sql(
            &a1.read_key,
            json!({"site_id": id, "sql": "CREATE TABLE t AS SELECT * FROM events"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400);
        let r = sql(
            &b.read_key,
            json!({"site_id": id, "sql": "SELECT COUNT(*) FROM events"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 403);
        // The raw events, exported: CSV from the API, Parquet from the command line
        // (read back with DuckDB), as many rows as the events table has.
        let n = sql(
            &a1.read_key,
            json!({"site_id": id, "sql": "SELECT COUNT(*) FROM events"}),
        )
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["rows"][0][0]
            .as_u64()
            .unwrap();
        let r = c
            .get(format!(
                "{}/api/v1/export?site_id={id}&date_range=7d&format=csv",
                server.url
            ))
            .bearer_auth(&a1.read_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.starts_with("ts,local_date,local_ts,visitor,event_name"),
            "{text}"
        );
        assert_eq!(text.lines().count() as u64, n + 1, "{text}");
        let file = data.join("export.parquet");
        run(&[
            "export",
            "--url",
            &server.url,
            "--property",
            id,
            "--key",
            &a1.read_key,
            "--format",
            "parquet",
            "--output",
            file.to_str().unwrap(),
        ]);
        if let Some(py) = std::env::var_os("FOOTFALL_TEST_PYTHON") {
            let out = Command::new(py)
                .args(["-c", "import duckdb, sys; print(duckdb.sql(f\"SELECT count(*) FROM read_parquet('{sys.argv[1]}')\").fetchall()[0][0])"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n.to_string());
        } else {
            assert!(std::fs::read(&file).unwrap().starts_with(b"PAR1"));
        }
        run(&["goal", "remove", "--property", id, "Pro purchase"]);
        let left: Value =
            serde_json::from_str(&run(&["goal", "list", "--property", id, "--json"])).unwrap();
        assert_eq!(
            left,
            json!([{"name": "Visit /pricing", "page": "/pricing"}])
        );
    }

    let shots =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-output/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/e2e.js");
    let out = Command::new("node")
        .arg(&script)
        .arg(&server.url)
        .arg(&shots)
        .env("NPM", npm_dir())
        .env("A1", &a1.tracking_id)
        .env("A2", &a2.tracking_id)
        .env("B", &b.tracking_id)
        .env("ANN_PW", ann_pw)
        .env("BOB_PW", bob_pw)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "the browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("dashboard run: {seen}");
    common::cluster::figure(
        "dashboard",
        &format!(
            "login page shown {} ms after navigation (debug build, headless Chromium); axe-core violations: {}",
            seen["login_form_ms"], seen["axe_violations"]
        ),
    );

    let total = |site: &Site, range: &str, filters: Value| {
        let q = json!({"site_id": site.tracking_id, "metrics": ["visitors"], "date_range": range, "filters": filters});
        let (c, url, site) = (c.clone(), server.url.clone(), site.clone());
        async move { visitors(&c, &url, &site, q).await[0].1.to_string() }
    };
    assert_eq!(seen["site_after_login"], a1.tracking_id.as_str());
    // Realtime: the same figure as the API's realtime endpoint.
    let rt: Value = c
        .get(format!(
            "{}/api/v1/stats/realtime/visitors?site_id={}",
            server.url, a1.tracking_id
        ))
        .bearer_auth(&a1.read_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["realtime"],
        format!("● {rt} current visitors"),
        "{seen}"
    );
    assert_eq!(rt, 5);
    assert_eq!(
        seen["visitors_7d"],
        total(&a1, "7d", json!([])).await,
        "{seen}"
    );
    assert_eq!(seen["visitors_7d"], "5");
    assert_eq!(seen["visitors_a2"], total(&a2, "7d", json!([])).await);
    assert!(seen["hash_a2"].as_str().unwrap().contains(&a2.tracking_id));
    assert_eq!(seen["visitors_30d"], total(&a1, "30d", json!([])).await);
    let pricing = json!([["is", "event:page", ["/pricing"]]]);
    assert_eq!(
        seen["visitors_filtered"],
        total(&a1, "30d", pricing.clone()).await
    );
    assert_eq!(seen["visitors_filtered"], "3");
    assert!(
        seen["hash_filtered"]
            .as_str()
            .unwrap()
            .contains("f=event%3Apage%7C%2Fpricing"),
        "{seen}"
    );
    assert_eq!(
        seen["visitors_bookmarked"], seen["visitors_filtered"],
        "a bookmarked view opens filtered"
    );
    // The CSV equals the API's breakdown under the same filter.
    let pages = visitors(
        &c,
        &server.url,
        &a1,
        json!({"site_id": a1.tracking_id, "metrics": ["visitors", "pageviews"], "dimensions": ["event:page"], "date_range": "30d", "filters": pricing, "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
    )
    .await;
    let csv = seen["csv"].as_str().unwrap();
    let rows: Vec<(String, u64)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].trim_matches('"').to_string(), f[1].parse().unwrap())
        })
        .collect();
    assert_eq!(rows, pages, "CSV: {csv}");
    assert_eq!(rows, vec![("/pricing".to_string(), 3)]);
    // Under a filter on a page, the sources panel shows the sources of those visits
    // (from the columnar engine); a binary without it says the panel is not supported
    // instead of showing wrong numbers.
    // Exit pages: v0–v2 left from /pricing, v3 and v4 from /.
    let exit_pages = seen["exit_pages"].as_str().unwrap();
    if cfg!(feature = "columnar") {
        assert!(
            exit_pages.contains("/pricing3") && exit_pages.contains("From raw events"),
            "{seen}"
        );
    } else {
        assert!(exit_pages.contains("not supported"), "{seen}");
    }
    // The goals panel: the goal set above, under the page's filter at that step.
    let goals = seen["goals"].as_str().unwrap();
    if cfg!(feature = "columnar") {
        assert!(goals.contains("Visit /pricing"), "{seen}");
    } else {
        assert!(goals.contains("columnar engine"), "{seen}");
    }
    let sources_filtered = seen["sources_filtered"].as_str().unwrap();
    if cfg!(feature = "columnar") {
        assert!(
            sources_filtered.contains("google.com")
                && sources_filtered.contains("news.ycombinator.com")
                && !sources_filtered.contains("not supported"),
            "{seen}"
        );
    } else {
        assert!(sources_filtered.contains("not supported"), "{seen}");
    }
    assert_eq!(seen["after_logout_me"], 401);
    // The chart: page views by week, as the API answers them.
    let weeks = visitors(
        &c,
        &server.url,
        &a1,
        json!({"site_id": a1.tracking_id, "metrics": ["pageviews"], "dimensions": ["time:week"], "date_range": "30d"}),
    )
    .await;
    let bars: Vec<(String, u64)> = seen["chart_week"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let (d, rest) = t.as_str().unwrap().split_once(": ").unwrap();
            (
                d.to_string(),
                rest.split(' ')
                    .next()
                    .unwrap()
                    .replace(',', "")
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(bars, weeks, "{seen}");
    assert_eq!(seen["chart_title"], "Page views by week");
    assert!(seen["hash_chart"]
        .as_str()
        .unwrap()
        .contains("metric=pageviews"));
    // Custom event properties and revenue, as the API answers them.
    let plans = visitors(
        &c,
        &server.url,
        &a1,
        json!({"site_id": a1.tracking_id, "metrics": ["visitors", "pageviews"], "dimensions": ["event:props:plan"], "date_range": "30d", "order_by": [["visitors", "desc"]], "pagination": {"limit": 10}}),
    )
    .await;
    assert_eq!(plans.len(), 2, "{plans:?}");
    let shown: Vec<String> = seen["props_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        shown,
        plans
            .iter()
            .map(|(k, n)| format!("{k}|{n}"))
            .collect::<Vec<_>>(),
        "{seen}"
    );
    let rev = query(
        &c,
        &server.url,
        &a1,
        json!({"site_id": a1.tracking_id, "metrics": ["total_revenue"], "dimensions": ["event:name"], "date_range": "30d"}),
    )
    .await;
    let eur = rev["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dimensions"][0] == "purchase")
        .unwrap()["metrics"][0]["EUR"]
        .as_f64()
        .unwrap();
    assert_eq!(eur, 39.98);
    assert_eq!(
        seen["revenue_row"],
        format!("purchase|EUR {eur:.2}|2"),
        "{seen}"
    );
    // The invitation: cy joined Acme as a viewer and sees its properties, not Bravo's.
    assert_eq!(seen["invited_visitors"], seen["visitors_7d"], "{seen}");
    assert_eq!(
        seen["invited_me"],
        json!(["cy@a.example", "Acme", "viewer"]),
        "{seen}"
    );
    assert_eq!(seen["invite_reused_status"], 404);
    // A phone-sized screen: nothing wider than the screen.
    assert!(
        seen["phone_overflow_px"].as_i64().unwrap() <= 0,
        "the page is wider than a phone: {seen}"
    );
    // The comparison: the 30 days before the last 30, as the API counts them.
    let today = {
        let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
        chrono::Utc::now().with_timezone(&tz).date_naive()
    };
    let (from, to) = (
        today - chrono::Duration::days(59),
        today - chrono::Duration::days(30),
    );
    let q = json!({"site_id": a1.tracking_id, "metrics": ["visitors"], "date_range": [from.to_string(), to.to_string()]});
    let previous = visitors(&c, &server.url, &a1, q).await[0].1;
    assert_eq!(seen["compare_before"], previous.to_string(), "{seen}");
    assert!(seen["hash_compare"]
        .as_str()
        .unwrap()
        .contains("compare=previous"));
    // The shared link, logged out: the property's numbers, no logout button, and no
    // other property through its token.
    assert_eq!(seen["shared_visitors"], seen["visitors_7d"]);
    assert_eq!(seen["shared_logout_button"], false);
    assert_eq!(seen["shared_other_status"], 404);
    // Keys from the page: the new one read (200) until revoked (401); never listed in full.
    assert_eq!(
        (
            seen["new_key_status"].as_u64(),
            seen["revoked_key_status"].as_u64()
        ),
        (Some(200), Some(401)),
        "{seen}"
    );
    let new_key = seen["new_key"].as_str().unwrap();
    assert!(new_key.starts_with("ffr_"));
    assert!(!seen["keys_listed"].to_string().contains(new_key));
    // And from the command line: list shows ids, revoke stops a key.
    let listed: Value = serde_json::from_str(&cli(
        data,
        &["key", "list", "--property", &a1.tracking_id, "--json"],
    ))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    cli(
        data,
        &[
            "key",
            "revoke",
            "--property",
            &a1.tracking_id,
            &a1.read_key[..10],
        ],
    );
    let q = json!({"site_id": a1.tracking_id, "metrics": ["visitors"], "date_range": "7d"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = c
            .post(format!("{}/api/v2/query", server.url))
            .bearer_auth(&a1.read_key)
            .json(&q)
            .send()
            .await
            .unwrap()
            .status();
        if s == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a key revoked by the CLI still reads: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(seen["bob_api_status"], json!(["bob@b.example", 404]));
    let serious: Vec<&Value> = seen["axe_violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(serious.is_empty(), "axe-core: {serious:?}");
    common::cluster::figure(
        "dashboard",
        &format!(
            "first contentful paint {} ms; login to every panel filled {} ms (debug build, headless Chromium, tiny data set)",
            seen["first_paint_ms"], seen["panels_ms"]
        ),
    );
    for step in [
        "01-login",
        "02-dashboard",
        "05-filtered",
        "05c-chart-by-week",
        "05d-properties-and-revenue",
        "07-other-account-not-found",
        "08-invitation",
        "09-invited-user",
        "10-phone",
    ] {
        assert!(shots.join(format!("{step}.png")).exists(), "{step}");
    }
}
