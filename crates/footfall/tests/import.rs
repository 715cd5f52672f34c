//! `footfall import access-log` with a real Apache log (shared/data/access-logs): page
//! views per day and per path equal an independent count made here; a second import of
//! the same file counts nothing twice.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

/// The real log in the project's shared test data: `$FOOTFALL_SHARED_DATA`, else
/// `shared/` beside the checkout (where sessions and CI have it).
fn shared_log() -> Option<PathBuf> {
    let rel = "access-logs/apache_combined_2015-05.log";
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var("FOOTFALL_SHARED_DATA")
            .ok()
            .map(PathBuf::from),
        Some(manifest.join("../../../shared/data")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join(rel).exists() {
            return Some(c.join(rel));
        }
    }
    eprintln!("\n*** SKIPPED: shared/data/{rel} not found (set FOOTFALL_SHARED_DATA) ***\n");
    println!("SKIPPED: shared test data not found");
    None
}

/// The independent count: split on quotes, keep GET 2xx requests whose last path segment
/// has no asset extension (the rule in docs/API.md), group by UTC day and by path.
/// Also returns the user agent of each page view, for the bot check below.
/// Page views per day and per path, and (day, path, user agent) of each page view.
type Expected = (
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
    Vec<(String, String, String)>,
);

fn expected(text: &str) -> Expected {
    const ASSET: &[&str] = &[
        "css", "js", "mjs", "map", "png", "jpg", "jpeg", "gif", "svg", "ico", "webp", "avif",
        "bmp", "tif", "tiff", "woff", "woff2", "ttf", "otf", "eot", "mp3", "mp4", "webm", "ogg",
        "wav", "avi", "mov", "mpg", "mpeg", "zip", "gz", "tgz", "bz2", "xz", "rar", "7z", "tar",
        "iso", "dmg", "exe", "pdf", "xbm", "swf", "json", "xml", "txt", "rss", "atom",
    ];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (mut days, mut paths, mut views) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for line in text.lines() {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() < 3 {
            continue;
        }
        let req: Vec<&str> = parts[1].split(' ').collect();
        let status: u16 = parts[2]
            .trim()
            .split(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if req.len() < 2 || req[0] != "GET" || !(200..300).contains(&status) {
            continue;
        }
        let path = req[1].split('?').next().unwrap();
        let last = path.rsplit('/').next().unwrap();
        if let Some((_, ext)) = last.rsplit_once('.') {
            if ASSET.contains(&ext.to_lowercase().as_str()) {
                continue;
            }
        }
        let date = &parts[0][parts[0].find('[').unwrap() + 1..];
        let (d, rest) = date.split_once('/').unwrap();
        let (mon, rest) = rest.split_once('/').unwrap();
        let year = &rest[..4];
        let m = months.iter().position(|x| *x == mon).unwrap() + 1;
        let day = format!("{year}-{m:02}-{d}");
        *days.entry(day.clone()).or_insert(0) += 1;
        *paths.entry(path.to_string()).or_insert(0) += 1;
        views.push((
            day,
            path.to_string(),
            parts.get(5).copied().unwrap_or("").to_string(),
        ));
    }
    (days, paths, views)
}

/// Which user agents are kept out of the statistics, decided outside the product: bots
/// by Python's `re` over the crawler-user-agents patterns and the Python uap-core parser's
/// `Spider` device (PyPI ua-parser); and user agents that name no browser, by the rule of
/// docs/METRICS.md ("Who is counted") written again here over that parser's families.
/// Returns (bots, not browsers) among `uas`.
type KeptOut = (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
);

fn kept_out(uas: &[&str]) -> Option<KeptOut> {
    let py = test_python()?;
    let rules = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/rules/crawler-user-agents.json");
    let script = r#"
import json, re, sys
from ua_parser import parse
patterns = []
for e in json.load(open(sys.argv[1])):
    try:
        patterns.append(re.compile(e["pattern"]))
    except re.error:
        pass
WITHOUT_MOZILLA = {"Opera Mobile", "Opera Mini", "Midori", "NetFront", "Obigo", "Polaris",
    "Dolfin", "Dolphin", "Openwave", "BlackBerry WebKit", "Konqueror", "Epiphany", "Links",
    "Lynx", "w3m", "ELinks", "HbbTV"}
NOT_BROWSERS = {"Outlook", "Windows Live Mail", "Apple Mail", "Thunderbird", "Airmail",
    "Google-HTTP-Java-Client"}
def browser(ua):
    # No user agent known ("-" in the log, as the importer reads it) is counted.
    if not ua or ua == "-":
        return True
    r = parse(ua).user_agent
    family = r.family if r else "Other"
    if ua.startswith("Mozilla/") or ua.startswith("Opera/"):
        return family != "Other" and family not in NOT_BROWSERS and "ms-office" not in ua
    return (family.endswith(" Browser") or " Browser " in family or family in WITHOUT_MOZILLA
        or any(t in ua for t in ("MIDP-", "UP.Browser", "Openwave", "MAUI")))
bots, others = [], []
for ua in json.load(sys.stdin):
    dev = parse(ua).device
    if any(p.search(ua) for p in patterns) or (dev is not None and dev.family == "Spider"):
        bots.append(ua)
    elif not browser(ua):
        others.append(ua)
print(json.dumps([bots, others]))
"#;
    let mut child = std::process::Command::new(py)
        .args(["-c", script])
        .arg(rules)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(uas).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let (bots, others): (Vec<String>, Vec<String>) = serde_json::from_slice(&out.stdout).unwrap();
    Some((bots.into_iter().collect(), others.into_iter().collect()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_log_import_matches_an_independent_count() {
    let Some(log) = shared_log() else { return };
    let dir = tempfile::tempdir().unwrap();
    let site = create_site(dir.path(), "UTC");
    let server = Server::start(dir.path(), &[]);
    let import = || {
        let out = run_ok(std::process::Command::new(BIN).args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "import",
            "access-log",
            log.to_str().unwrap(),
            "--property",
            &site.tracking_id,
            "--url",
            &server.url,
            "--key",
            &site.write_key,
            "--json",
        ]));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = import();
    eprintln!("import: {first}");
    let (all_days, _, views) = expected(&std::fs::read_to_string(&log).unwrap());
    let imported: u64 = all_days.values().sum();
    assert_eq!(first["imported"], json!(imported));
    assert_eq!(first["lines_read"], 10_000);
    // Bots' page views are imported (kept in the log) but kept out of the statistics.
    let mut uas: Vec<&str> = views.iter().map(|v| v.2.as_str()).collect();
    uas.sort_unstable();
    uas.dedup();
    let Some((mut bots, not_browsers)) = kept_out(&uas) else {
        return;
    };
    // Footfall's uap-core engine (the `ua-parser` crate) turns bounded repetitions such as
    // the generic spider rule's `^.{0,100}(…|slurp|…)` into unbounded ones, so it also
    // flags these two crawlers, whose telling word comes after the 100th character.
    // Python's engine keeps the bound. Both are crawlers; the difference is named here.
    for ua in [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/32.0.1700.107 Safari/537.36 slurp",
        "Mozilla/5.0 (X11; U; Linux x86_64; en-US; rv:1.9.0.19; aggregator:Spinn3r (Spinn3r 3.1); http://spinn3r.com/robot) Gecko/2010040121 Firefox/3.0.19",
    ] {
        assert!(!bots.contains(ua), "the independent check now agrees on {ua}");
        bots.insert(ua.to_string());
    }
    // The feed reader of the report that asked for this rule is among them.
    let feed = "UniversalFeedParser/4.2-pre-314-svn +http://feedparser.org/";
    assert!(not_browsers.contains(feed));
    let feed_views = views.iter().filter(|v| v.2 == feed).count();
    let (mut days, mut paths) = (BTreeMap::new(), BTreeMap::new());
    for (d, p, ua) in &views {
        if !bots.contains(ua) && !not_browsers.contains(ua) {
            *days.entry(d.clone()).or_insert(0u64) += 1;
            *paths.entry(p.clone()).or_insert(0u64) += 1;
        }
    }
    let total: u64 = days.values().sum();
    let range = json!(["2015-05-16", "2015-05-21"]);
    wait_for_events(
        &reqwest::Client::new(),
        &server.url,
        &site,
        range.clone(),
        total,
    )
    .await;
    let second = import();
    assert_eq!(second["already_imported"], true);

    let client = reqwest::Client::new();
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews"],
        "date_range": range, "dimensions": ["time:day"]}),
    )
    .await;
    let got = counts_by_dimension(&v);
    assert_eq!(got, days, "page views per day");
    let v = query(
        &client,
        &server.url,
        &site,
        json!({"site_id": site.tracking_id, "metrics": ["pageviews"],
        "date_range": range, "dimensions": ["event:page"], "pagination": {"limit": 1_000_000}}),
    )
    .await;
    let got = counts_by_dimension(&v);
    assert_eq!(got, paths, "page views per path");
    let filtered = filtered(&client, &server.url, &site, "2015-05-16,2015-05-21").await;
    assert_eq!(filtered["total"], json!(imported - total), "{filtered}");
    let no_browser: u64 = views.iter().filter(|v| not_browsers.contains(&v.2)).count() as u64;
    assert_eq!(
        filtered["filtered"]["bot:no-browser"],
        json!(no_browser),
        "{filtered}"
    );
    assert!(feed_views > 300 && no_browser >= feed_views as u64);
    eprintln!(
        "{imported} page views imported; {} filtered ({}), {feed_views} of them the feed reader's; {} page views over {} days and {} paths match",
        imported - total,
        filtered["filtered"],
        total,
        days.len(),
        paths.len()
    );
}
