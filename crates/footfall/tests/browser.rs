//! Browser clients in a real headless Chromium (Debian's `chromium`), against the real
//! server, checked through the query API:
//! - Footfall's own tracker, served under a configured path: a page view, an SPA
//!   navigation (history API), a custom event with props and revenue, and a file
//!   download;
//! - Plausible's published tracker (npm `@plausible-analytics/tracker` 0.4.6) on
//!   `/api/event`;
//! - a published gtag-protocol client (npm `@minimal-analytics/ga4` 1.8.7) on `/g/collect`.
//!
//! Pages are served by a small static HTTP server (Python's `http.server`) on another
//! origin, as a merchant's site would be. Needs `chromium` and the npm packages that
//! scripts/test-deps.sh installs; without them the test skips loudly (fails under CI).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A real desktop Chrome user agent: headless Chromium says `HeadlessChrome`, which the
/// bot rules rightly filter out.
const DESKTOP_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

fn npm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-data/npm")
}

fn prerequisites() -> bool {
    let chromium = Command::new("chromium").arg("--version").output().is_ok();
    let npm = npm_dir().join("VERSIONS").exists();
    if chromium && npm {
        return true;
    }
    let msg = format!("chromium present: {chromium}, npm test packages present: {npm} (scripts/test-deps.sh installs both)");
    if std::env::var("CI").is_ok() {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    false
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `python3 -m http.server` on a free port; returns the process and its base URL.
fn static_server(dir: &Path) -> (Kill, String) {
    let mut child = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 http.server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port = line
        .split("port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected http.server output {line:?}"));
    (Kill(child), format!("http://127.0.0.1:{port}"))
}

fn chromium(url: &str, profile: &Path) -> Kill {
    Kill(
        Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-agent={DESKTOP_UA}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromium"),
    )
}

async fn counts(
    c: &reqwest::Client,
    s: &Server,
    site: &Site,
    metric: &str,
    dim: &str,
) -> std::collections::BTreeMap<String, u64> {
    let v = query(c, &s.url, site, json!({"site_id": site.tracking_id, "metrics": [metric], "date_range": "day", "dimensions": [dim]})).await;
    counts_by_dimension(&v)
}

/// Polls until `site` has at least these events by name (or fails after 40 s).
async fn wait(c: &reqwest::Client, s: &Server, site: &Site, want: &[(&str, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = counts(c, s, site, "events", "event:name").await;
        if want
            .iter()
            .all(|(k, n)| got.get(*k).copied().unwrap_or(0) >= *n)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {got:?}, waiting for {want:?}",
            site.tracking_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_and_published_browser_clients_in_headless_chromium() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ff = create_site(dir.path(), "UTC");
    let pl = create_site(dir.path(), "UTC");
    cli(
        dir.path(),
        &[
            "property",
            "update",
            &pl.tracking_id,
            "--domain",
            "plausible.test",
        ],
    );
    let ga = create_site(dir.path(), "UTC");
    let server = Server::start(
        dir.path(),
        &[("FOOTFALL_TRACKER__SCRIPT_PATH", "/js/app-4f2a.js")],
    );
    let api = &server.url;

    let web = tempfile::tempdir().unwrap();
    let npm = npm_dir();
    std::fs::copy(
        npm.join("plausible-analytics-tracker-0.4.6/plausible.js"),
        web.path().join("plausible.js"),
    )
    .unwrap();
    std::fs::copy(
        npm.join("minimal-analytics-ga4-1.8.7/dist/index.js"),
        web.path().join("ga4.js"),
    )
    .unwrap();
    let write = |name: &str, html: String| std::fs::write(web.path().join(name), html).unwrap();
    write(
        "ff.html",
        format!(
            r#"<!doctype html><html><head><title>Footfall shop</title>
<script>window.footfall = window.footfall || function () {{ (window.footfall.q = window.footfall.q || []).push(arguments) }};</script>
<script defer data-site="{tid}" data-api="{api}/api/v1/events" data-file-downloads src="{api}/js/app-4f2a.js"></script>
</head><body><p>shop</p><a id="dl" href="/files/price-list.pdf" download>price list</a><script>
window.addEventListener('load', function () {{
  setTimeout(function () {{
    history.pushState({{}}, '', '/spa/checkout');
    footfall('Signup', {{props: {{plan: 'pro'}}, revenue: {{amount: 10.5, currency: 'EUR'}}}});
    document.getElementById('dl').click();
  }}, 300);
}});
</script></body></html>"#,
            tid = ff.tracking_id
        ),
    );
    write(
        "pl.html",
        format!(
            r#"<!doctype html><html><head><title>Plausible page</title></head><body>
<script type="module">
import {{ init, track }} from './plausible.js';
init({{ domain: 'plausible.test', endpoint: '{api}/api/event', captureOnLocalhost: true, logging: false }});
setTimeout(() => {{
  history.pushState({{}}, '', '/pl/next');
  setTimeout(() => track('Purchase', {{ props: {{ tier: 'gold' }}, revenue: {{ amount: 15.99, currency: 'USD' }} }}), 200);
}}, 300);
</script></body></html>"#
        ),
    );
    write(
        "ga.html",
        format!(
            r#"<!doctype html><html><head><title>GA page</title>
<script>window.minimalAnalytics = {{ trackingId: '{tid}', analyticsEndpoint: '{api}/g/collect', autoTrack: true, defineGlobal: true }};</script>
<script src="./ga4.js"></script>
</head><body><p>ga</p><script>
setTimeout(function () {{ window.track({{ type: 'sign_up', event: {{ 'ep.method': 'chromium' }} }}); }}, 500);
</script></body></html>"#,
            tid = ga.tracking_id
        ),
    );
    let (_web_server, origin) = static_server(web.path());

    let c = reqwest::Client::new();
    let profiles = tempfile::tempdir().unwrap();
    {
        let _b = chromium(
            &format!("{origin}/ff.html?utm_source=chromium&utm_medium=email"),
            &profiles.path().join("ff"),
        );
        wait(
            &c,
            &server,
            &ff,
            &[("pageview", 2), ("Signup", 1), ("File Download", 1)],
        )
        .await;
    }
    {
        let _b = chromium(&format!("{origin}/pl.html"), &profiles.path().join("pl"));
        wait(&c, &server, &pl, &[("pageview", 2), ("Purchase", 1)]).await;
    }
    {
        let _b = chromium(&format!("{origin}/ga.html"), &profiles.path().join("ga"));
        wait(&c, &server, &ga, &[("pageview", 1), ("sign_up", 1)]).await;
    }
    // Late beacons from the pages have had time to land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m = map_of;
    // Footfall's tracker: page view, SPA navigation, custom event with props and revenue.
    assert_eq!(
        counts(&c, &server, &ff, "pageviews", "event:page").await,
        m(&[("/ff.html", 1), ("/spa/checkout", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "events", "event:name").await,
        m(&[("pageview", 2), ("Signup", 1), ("File Download", 1)])
    );
    let url = format!("{origin}/files/price-list.pdf");
    assert_eq!(
        counts(&c, &server, &ff, "events", "event:props:url").await,
        m(&[(url.as_str(), 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "events", "event:props:plan").await,
        m(&[("pro", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "visits", "visit:channel").await,
        m(&[("Email", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "visits", "visit:utm_source").await,
        m(&[("chromium", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "visits", "visit:browser").await,
        m(&[("Chrome", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "visits", "visit:os").await,
        m(&[("Linux", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ff, "visits", "visit:device").await,
        m(&[("Desktop", 1)])
    );
    let rev = query(
        &c,
        api,
        &ff,
        json!({"site_id": ff.tracking_id, "metrics": ["total_revenue"], "date_range": "day"}),
    )
    .await;
    assert_eq!(rev["results"][0]["metrics"][0], json!({"EUR": 10.5}));

    // Plausible's tracker: its page view, its SPA page view, a custom event with revenue.
    assert_eq!(
        counts(&c, &server, &pl, "pageviews", "event:page").await,
        m(&[("/pl.html", 1), ("/pl/next", 1)])
    );
    assert_eq!(
        counts(&c, &server, &pl, "events", "event:props:tier").await,
        m(&[("gold", 1)])
    );
    let rev = query(&c, api, &pl, json!({"site_id": pl.tracking_id, "metrics": ["total_revenue"], "date_range": "day", "dimensions": ["event:name"]})).await;
    let purchase = rev["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dimensions"][0] == "Purchase")
        .cloned();
    assert_eq!(
        purchase.map(|r| r["metrics"][0].clone()),
        Some(json!({"USD": 15.99}))
    );

    // gtag protocol: its page_view is a page view; the custom event keeps its params.
    let ga_names = counts(&c, &server, &ga, "events", "event:name").await;
    assert_eq!(ga_names.get("pageview"), Some(&1), "{ga_names:?}");
    assert_eq!(ga_names.get("sign_up"), Some(&1), "{ga_names:?}");
    assert_eq!(
        counts(&c, &server, &ga, "pageviews", "event:page").await,
        m(&[("/ga.html", 1)])
    );
    assert_eq!(
        counts(&c, &server, &ga, "events", "event:props:method").await,
        m(&[("chromium", 1)])
    );
    eprintln!("browser: footfall.js, @plausible-analytics/tracker 0.4.6 and @minimal-analytics/ga4 1.8.7 in headless Chromium → all checks passed");
}
