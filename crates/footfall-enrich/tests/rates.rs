//! Enrichment measured against data nobody on this project wrote:
//! - uap-core's own test cases (`shared/data/uap-core/test_ua.yaml`, `test_os.yaml`):
//!   pass rate on family (target ≥ 99%), and on the full version for information;
//! - bots: every example user agent of npm `crawler-user-agents` (target ≥ 99% caught)
//!   and the real browser user agents of npm `user-agents` (target ≤ 0.1% flagged).
//!
//! Data that is absent makes a test say so loudly and skip (scripts/test.sh fetches the
//! npm packages; the uap-core cases are the project's shared test data).

use std::path::PathBuf;

use footfall_enrich::{bot_reason, parse_user_agent};
use serde::Deserialize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared(rel: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var("FOOTFALL_SHARED_DATA")
            .ok()
            .map(PathBuf::from),
        Some(root().join("../shared/data")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join(rel))
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("\n*** SKIPPED: shared/data/{rel} not found (set FOOTFALL_SHARED_DATA) ***\n");
    }
    found
}

fn npm(rel: &str) -> Option<PathBuf> {
    let p = root().join("target/test-data/npm").join(rel);
    if p.exists() {
        Some(p)
    } else {
        if std::env::var("CI").is_ok() {
            panic!(
                "{} missing under CI: scripts/test.sh fetches it",
                p.display()
            );
        }
        eprintln!(
            "\n*** SKIPPED: {} not found (run scripts/test-deps.sh) ***\n",
            p.display()
        );
        None
    }
}

#[derive(Deserialize)]
struct Cases<T> {
    test_cases: Vec<T>,
}

#[derive(Deserialize)]
struct UaCase {
    user_agent_string: String,
    family: String,
    major: Option<String>,
    minor: Option<String>,
}

#[derive(Deserialize)]
struct OsCase {
    user_agent_string: String,
    family: String,
    major: Option<String>,
    minor: Option<String>,
}

fn version(major: &Option<String>, minor: &Option<String>) -> String {
    match (
        major.as_deref().filter(|s| !s.is_empty()),
        minor.as_deref().filter(|s| !s.is_empty()),
    ) {
        (Some(a), Some(b)) => format!("{a}.{b}"),
        (Some(a), None) => a.to_string(),
        _ => String::new(),
    }
}

#[test]
fn uap_core_browser_and_os_families() {
    let (Some(ua), Some(os)) = (
        shared("uap-core/test_ua.yaml"),
        shared("uap-core/test_os.yaml"),
    ) else {
        return;
    };
    let ua: Cases<UaCase> = serde_yaml::from_str(&std::fs::read_to_string(ua).unwrap()).unwrap();
    let (mut fam, mut ver) = (0, 0);
    let mut misses = Vec::new();
    for c in &ua.test_cases {
        let got = parse_user_agent(&c.user_agent_string);
        if got.browser == c.family {
            fam += 1;
        } else if misses.len() < 5 {
            misses.push(format!(
                "{:?}: got {} want {}",
                c.user_agent_string, got.browser, c.family
            ));
        }
        ver += (got.browser == c.family && got.browser_version == version(&c.major, &c.minor))
            as usize;
    }
    let n = ua.test_cases.len();
    let ua_rate = fam as f64 / n as f64;
    eprintln!(
        "uap-core test_ua.yaml: family {fam}/{n} = {:.2}%, family+major.minor {ver}/{n} = {:.2}%; first misses: {misses:#?}",
        100.0 * ua_rate,
        100.0 * ver as f64 / n as f64
    );

    let os: Cases<OsCase> = serde_yaml::from_str(&std::fs::read_to_string(os).unwrap()).unwrap();
    let (mut fam, mut ver) = (0, 0);
    for c in &os.test_cases {
        let got = parse_user_agent(&c.user_agent_string);
        fam += (got.os == c.family) as usize;
        ver += (got.os == c.family && got.os_version == version(&c.major, &c.minor)) as usize;
    }
    let n = os.test_cases.len();
    let os_rate = fam as f64 / n as f64;
    eprintln!(
        "uap-core test_os.yaml: family {fam}/{n} = {:.2}%, family+major.minor {ver}/{n} = {:.2}%",
        100.0 * os_rate,
        100.0 * ver as f64 / n as f64
    );
    assert!(ua_rate >= 0.99, "browser family pass rate {ua_rate}");
    assert!(os_rate >= 0.99, "OS family pass rate {os_rate}");
}

#[derive(Deserialize)]
struct Crawler {
    #[serde(default)]
    instances: Vec<String>,
}

#[derive(Deserialize)]
struct Browser {
    #[serde(rename = "userAgent")]
    user_agent: String,
}

#[test]
fn bots_are_caught_and_browsers_are_not() {
    let rules = std::env::var_os("FOOTFALL_RULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/rules"));
    let crawlers: Vec<Crawler> = serde_json::from_str(
        &std::fs::read_to_string(rules.join("crawler-user-agents.json")).unwrap(),
    )
    .unwrap();
    let instances: Vec<&str> = crawlers
        .iter()
        .flat_map(|c| c.instances.iter().map(String::as_str))
        .collect();
    let caught = instances.iter().filter(|u| bot_reason(u).is_some()).count();
    let rate = caught as f64 / instances.len() as f64;
    eprintln!(
        "crawler-user-agents 1.60.0 examples: {caught}/{} caught = {:.2}%",
        instances.len(),
        100.0 * rate
    );
    assert!(rate >= 0.99, "bot catch rate {rate}");

    let Some(path) = npm("user-agents-2.1.198/dist/user-agents.json") else {
        return;
    };
    let browsers: Vec<Browser> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let flagged: Vec<&str> = browsers
        .iter()
        .map(|b| b.user_agent.as_str())
        .filter(|u| bot_reason(u).is_some())
        .collect();
    let mut distinct: Vec<&str> = browsers.iter().map(|b| b.user_agent.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let rate = flagged.len() as f64 / browsers.len() as f64;
    eprintln!(
        "user-agents 2.1.198 browsers: {}/{} flagged = {:.3}% ({} distinct user agents); flagged: {:?}",
        flagged.len(),
        browsers.len(),
        100.0 * rate,
        distinct.len(),
        flagged.iter().take(5).collect::<Vec<_>>()
    );
    assert!(rate <= 0.001, "browser false-positive rate {rate}");
}

/// Who is counted (docs/METRICS.md): on real lists, every browser of npm `user-agents`
/// names a browser; every crawler example is kept out, as a bot or as naming no browser;
/// and the non-browser clients of uap-core's own cases (HTTP libraries, feed readers,
/// tools) and of a real access log are kept out while its browsers are not.
#[test]
fn only_browsers_are_counted() {
    let rules = std::env::var_os("FOOTFALL_RULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/rules"));
    let crawlers: Vec<Crawler> = serde_json::from_str(
        &std::fs::read_to_string(rules.join("crawler-user-agents.json")).unwrap(),
    )
    .unwrap();
    let instances: Vec<&str> = crawlers
        .iter()
        .flat_map(|c| c.instances.iter().map(String::as_str))
        .collect();
    let counted: Vec<&&str> = instances
        .iter()
        .filter(|u| parse_user_agent(u).filtered(false).is_none())
        .collect();
    eprintln!(
        "crawler-user-agents examples counted as people: {}/{}: {:?}",
        counted.len(),
        instances.len(),
        counted.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        counted.len() as f64 <= 0.005 * instances.len() as f64,
        "crawlers counted: {}",
        counted.len()
    );
    // A server-side sender's events are counted whatever the user agent, bots excepted.
    let reader = parse_user_agent("UniversalFeedParser/4.2-pre-314-svn +http://feedparser.org/");
    assert_eq!(reader.filtered(false), Some("no-browser"));
    assert_eq!(reader.filtered(true), None);
    let bot = parse_user_agent("python-requests/2.31.0");
    assert_eq!(bot.filtered(true), Some("crawler-pattern"));
    assert_eq!(footfall_enrich::UaInfo::absent().filtered(false), None);

    // uap-core's cases by family: the major browsers must be counted; the clients that
    // are not browsers must not.
    if let Some(ua) = shared("uap-core/test_ua.yaml") {
        let ua: Cases<UaCase> =
            serde_yaml::from_str(&std::fs::read_to_string(ua).unwrap()).unwrap();
        const BROWSERS: &[&str] = &[
            "Chrome",
            "Firefox",
            "Safari",
            "Mobile Safari",
            "Edge",
            "IE",
            "Opera",
            "Samsung Internet",
            "Chrome Mobile",
            "Firefox Mobile",
            "Chrome Mobile iOS",
            "Chrome Mobile WebView",
            "Mobile Safari UI/WKWebView",
            "Yandex Browser",
            "Edge Mobile",
            "IE Mobile",
            "Firefox iOS",
            "Silk",
            "Vivaldi",
        ];
        const CLIENTS: &[&str] = &[
            "Python Requests",
            "Python-urllib",
            "curl",
            "Wget",
            "Java",
            "Go-http-client",
            "Apache-HttpClient",
            "okhttp",
            "aws-sdk-java",
            "Google-HTTP-Java-Client",
            "Scrapy",
            "NewsGator",
            "WordPress",
            "Windows Live Mail",
            "Outlook",
            "Apple Mail",
            "Thunderbird",
        ];
        // Named exceptions: Safari's background fetches (page previews) go through the
        // system's HTTP library and say so (`Safari/… CFNetwork/…`), not as the browser,
        // and Google Web Preview is Google's renderer, not a person.
        let not_a_person = |u: &str| {
            (u.starts_with("Safari/") && u.contains("CFNetwork/"))
                || u.contains("Google Web Preview")
        };
        let (mut browsers, mut missed) = (0, Vec::new());
        let (mut clients, mut let_in) = (0, Vec::new());
        for c in &ua.test_cases {
            let u = c.user_agent_string.as_str();
            let kept_out = parse_user_agent(u).filtered(false).is_some();
            if BROWSERS.contains(&c.family.as_str()) && !not_a_person(u) {
                browsers += 1;
                if kept_out {
                    missed.push(u);
                }
            } else if CLIENTS.contains(&c.family.as_str()) {
                clients += 1;
                if !kept_out {
                    let_in.push(u);
                }
            }
        }
        eprintln!(
            "uap-core cases: browsers kept out {}/{browsers} {missed:?}; clients counted {}/{clients} {let_in:?}",
            missed.len(),
            let_in.len()
        );
        assert!(
            missed.len() * 100 <= browsers,
            "browsers kept out: {missed:#?}"
        );
        assert!(let_in.is_empty(), "clients counted: {let_in:#?}");
    }

    let Some(path) = npm("user-agents-2.1.198/dist/user-agents.json") else {
        return;
    };
    let browsers: Vec<Browser> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let kept_out: Vec<&str> = browsers
        .iter()
        .map(|b| b.user_agent.as_str())
        .filter(|u| parse_user_agent(u).filtered(false).is_some())
        .collect();
    eprintln!(
        "user-agents browsers kept out: {}/{}: {:?}",
        kept_out.len(),
        browsers.len(),
        kept_out.iter().take(5).collect::<Vec<_>>()
    );
    assert!(kept_out.len() as f64 <= 0.001 * browsers.len() as f64);
}
