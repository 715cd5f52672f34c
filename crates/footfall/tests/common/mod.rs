//! Runs the real `footfall` binary as a child process for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use footfall_testkit::OEvent;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_footfall");

/// Runs a CLI command against a data directory and returns its stdout.
pub fn cli(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run footfall");
    assert!(
        out.status.success(),
        "footfall {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub struct Site {
    pub tracking_id: String,
    pub read_key: String,
    pub write_key: String,
}

pub fn create_site(data_dir: &Path, tz: &str) -> Site {
    let p: Value = serde_json::from_str(&cli(
        data_dir,
        &[
            "property",
            "create",
            "--name",
            "Test shop",
            "--timezone",
            tz,
            "--json",
        ],
    ))
    .unwrap();
    let tid = p["tracking_id"].as_str().unwrap().to_string();
    let key = |scope: &str| -> String {
        let v: Value = serde_json::from_str(&cli(
            data_dir,
            &[
                "key",
                "create",
                "--property",
                &tid,
                "--scope",
                scope,
                "--json",
            ],
        ))
        .unwrap();
        v["key"].as_str().unwrap().to_string()
    };
    Site {
        read_key: key("read"),
        write_key: key("write"),
        tracking_id: tid,
    }
}

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Server {
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"]);
        cmd.env("FOOTFALL_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn footfall serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("footfall listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let t = Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let st = self.child.wait().unwrap();
        (st, t.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn to_json(site: &Site, e: &OEvent) -> Value {
    let mut v = json!({
        "tracking_id": site.tracking_id,
        "name": e.name,
        "timestamp": e.ts,
        "client_id": e.visitor,
        "interactive": e.interactive,
    });
    if let Some(u) = &e.url {
        v["url"] = json!(u);
    }
    if let Some(r) = &e.referrer {
        v["referrer"] = json!(r);
    }
    v
}

pub async fn query(client: &reqwest::Client, url: &str, site: &Site, q: Value) -> Value {
    let r = client
        .post(format!("{url}/api/v2/query"))
        .bearer_auth(&site.read_key)
        .json(&q)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status.as_u16(), 200, "query {q} failed: {v}");
    v
}

/// Polls until the total event count over `date_range` reaches `expected`.
pub async fn wait_for_events(
    client: &reqwest::Client,
    url: &str,
    site: &Site,
    date_range: Value,
    expected: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = query(
            client,
            url,
            site,
            json!({"site_id": site.tracking_id, "metrics": ["events"], "date_range": date_range}),
        )
        .await;
        let n = v["results"][0]["metrics"][0].as_u64().unwrap_or(0);
        if n >= expected {
            assert_eq!(n, expected, "more events than were sent");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {expected} events visible after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Visitors are exact up to 1,000 distinct (in fact up to 2,048) and within 2% above.
pub fn assert_visitors(got: &Value, exact: usize, what: &str) {
    let got = got
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: visitors {got} is not a count"));
    if exact <= 1000 {
        assert_eq!(got, exact as u64, "{what}: visitors must be exact");
    } else {
        let err = (got as f64 - exact as f64).abs() / exact as f64;
        assert!(
            err <= 0.02,
            "{what}: visitors {got} vs exact {exact} ({:.2}% off)",
            err * 100.0
        );
    }
}

fn rows_by_dim(v: &Value) -> std::collections::BTreeMap<String, Vec<Value>> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap().to_string(),
                r["metrics"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// Compares every supported report over `[from, to]` with the oracle.
pub async fn check_against_oracle(
    client: &reqwest::Client,
    url: &str,
    site: &Site,
    r: &footfall_testkit::Report,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) {
    let range = json!([from.to_string(), to.to_string()]);
    let q = |metrics: Value, dims: Value| {
        json!({"site_id": site.tracking_id, "metrics": metrics, "date_range": range, "dimensions": dims,
               "pagination": {"limit": 1_000_000}})
    };

    // Totals.
    let v = query(
        client,
        url,
        site,
        q(
            json!([
                "visitors",
                "visits",
                "pageviews",
                "events",
                "bounce_rate",
                "visit_duration",
                "views_per_visit"
            ]),
            json!([]),
        ),
    )
    .await;
    let m = &v["results"][0]["metrics"];
    assert_visitors(&m[0], r.total.visitors.len(), "total");
    assert_eq!(m[1], json!(r.total.visits), "total visits");
    assert_eq!(m[2], json!(r.total.pageviews), "total pageviews");
    assert_eq!(m[3], json!(r.total.events), "total events");
    assert_eq!(m[4], json!(r.total.bounce_rate()), "total bounce_rate");
    assert_eq!(
        m[5],
        json!(r.total.visit_duration()),
        "total visit_duration"
    );
    assert_eq!(
        m[6].as_f64().unwrap(),
        r.total.views_per_visit(),
        "total views_per_visit"
    );

    // Per day.
    let v = query(
        client,
        url,
        site,
        q(
            json!([
                "visitors",
                "visits",
                "pageviews",
                "events",
                "bounce_rate",
                "visit_duration",
                "views_per_visit"
            ]),
            json!(["time:day"]),
        ),
    )
    .await;
    let got = rows_by_dim(&v);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        r.days.keys().map(|d| d.to_string()).collect::<Vec<_>>(),
        "days with data"
    );
    for (d, s) in &r.days {
        let m = &got[&d.to_string()];
        assert_visitors(&m[0], s.visitors.len(), &format!("day {d}"));
        assert_eq!(
            (&m[1], &m[2], &m[3], &m[4], &m[5], m[6].as_f64().unwrap()),
            (
                &json!(s.visits),
                &json!(s.pageviews),
                &json!(s.events),
                &json!(s.bounce_rate()),
                &json!(s.visit_duration()),
                s.views_per_visit()
            ),
            "day {d}: visits, pageviews, events, bounce_rate, visit_duration, views_per_visit"
        );
    }

    // Per hour: counts.
    let v = query(
        client,
        url,
        site,
        q(json!(["pageviews", "visits"]), json!(["time:hour"])),
    )
    .await;
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.hours.len(), "hours with data");
    for (h, s) in &r.hours {
        let m = &got[&h.format("%Y-%m-%d %H:%M:%S").to_string()];
        assert_eq!(
            (&m[0], &m[1]),
            (&json!(s.pageviews), &json!(s.visits)),
            "hour {h}"
        );
    }

    // Per page.
    let v = query(
        client,
        url,
        site,
        q(
            json!(["visitors", "pageviews", "events"]),
            json!(["event:page"]),
        ),
    )
    .await;
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.pages.len(), "pages");
    for (p, s) in &r.pages {
        let m = &got[p];
        assert_visitors(&m[0], s.visitors.len(), &format!("page {p}"));
        assert_eq!(
            (&m[1], &m[2]),
            (&json!(s.pageviews), &json!(s.events)),
            "page {p}"
        );
    }

    // Per event name.
    let v = query(
        client,
        url,
        site,
        q(json!(["events", "visitors"]), json!(["event:name"])),
    )
    .await;
    let got = rows_by_dim(&v);
    for (n, s) in &r.names {
        assert_eq!(got[n][0], json!(s.events), "name {n}");
        assert_visitors(&got[n][1], s.visitors.len(), &format!("name {n}"));
    }

    // Per source and entry page (visit level).
    let v = query(
        client,
        url,
        site,
        q(
            json!([
                "visitors",
                "visits",
                "bounce_rate",
                "visit_duration",
                "pageviews",
                "views_per_visit"
            ]),
            json!(["visit:source"]),
        ),
    )
    .await;
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.sources.len(), "sources");
    for (k, s) in &r.sources {
        let m = &got[k];
        assert_visitors(&m[0], s.visit_visitors.len(), &format!("source {k}"));
        assert_eq!(
            (&m[1], &m[2], &m[3], &m[4], m[5].as_f64().unwrap()),
            (
                &json!(s.visits),
                &json!(s.bounce_rate()),
                &json!(s.visit_duration()),
                &json!(s.visit_pageviews),
                s.views_per_visit()
            ),
            "source {k}"
        );
    }
    let v = query(
        client,
        url,
        site,
        q(
            json!(["visits", "bounce_rate"]),
            json!(["visit:entry_page"]),
        ),
    )
    .await;
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.entry_pages.len(), "entry pages");
    for (k, s) in &r.entry_pages {
        assert_eq!(
            (&got[k][0], &got[k][1]),
            (&json!(s.visits), &json!(s.bounce_rate())),
            "entry page {k}"
        );
    }

    // A filter: pageviews of pages containing "/p1", per day, summed over the range.
    let mut fq = q(json!(["pageviews"]), json!(["time:day"]));
    fq["filters"] = json!([["contains", "event:page", ["/p1"]]]);
    let v = query(client, url, site, fq).await;
    let got = rows_by_dim(&v);
    let total: u64 = got.values().map(|m| m[0].as_u64().unwrap()).sum();
    let want: u64 = r
        .pages
        .iter()
        .filter(|(p, _)| p.contains("/p1"))
        .map(|(_, s)| s.pageviews)
        .sum();
    assert_eq!(total, want, "filtered pageviews");
}
