//! User agents: browser, OS and device type by the uap-core rules; bots by the crawler
//! patterns of `crawler-user-agents` and uap-core's `Spider` device family.

use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;

use crate::UNKNOWN;

/// What a user agent says about the visitor's software and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaInfo {
    pub browser: String,
    /// Major.minor, or empty.
    pub browser_version: String,
    pub os: String,
    /// Major.minor, or empty.
    pub os_version: String,
    /// `Desktop`, `Mobile`, `Tablet`, `TV`, `Bot` or `Other`.
    pub device: &'static str,
    /// Why this user agent is a bot, if it is one.
    pub bot: Option<&'static str>,
    /// Whether the user agent names a browser ([`names_browser`]); true when absent.
    pub names_browser: bool,
}

impl UaInfo {
    /// The answer for an event without a user agent (server-side protocols).
    pub fn absent() -> Self {
        UaInfo {
            browser: UNKNOWN.into(),
            browser_version: String::new(),
            os: UNKNOWN.into(),
            os_version: String::new(),
            device: "Other",
            bot: None,
            // No user agent at all is not a client naming itself as something else; such
            // events are counted (docs/METRICS.md, "Who is counted").
            names_browser: true,
        }
    }

    /// Why an event with this user agent stays out of the statistics, if it does: a
    /// bot's, or (unless sent `server_side`) one whose user agent names no browser
    /// (`no-browser`). The one rule the processor and the columnar rows share.
    pub fn filtered(&self, server_side: bool) -> Option<&'static str> {
        self.bot
            .or((!server_side && !self.names_browser).then_some("no-browser"))
    }
}

/// uap-core browser families whose user agents may not begin with `Mozilla/`: older
/// mobile and text-mode browsers, used by people.
const BROWSERS_WITHOUT_MOZILLA: &[&str] = &[
    "Opera Mobile",
    "Opera Mini",
    "Midori",
    "NetFront",
    "Obigo",
    "Polaris",
    "Dolfin",
    "Dolphin",
    "Openwave",
    "BlackBerry WebKit",
    "Konqueror",
    "Epiphany",
    "Links",
    "Lynx",
    "w3m",
    "ELinks",
    "HbbTV",
];

/// uap-core families of clients whose user agents begin with `Mozilla/` but which are not
/// a person viewing a page: mail programs fetching a message's images, and Office
/// checking a link before it opens the browser (`ms-office`).
const NOT_BROWSERS_WITH_MOZILLA: &[&str] = &[
    "Outlook",
    "Windows Live Mail",
    "Apple Mail",
    "Thunderbird",
    "Airmail",
    "Google-HTTP-Java-Client",
];

/// Handset browsers from before `Mozilla/` was universal name their platform instead.
const HANDSET_TOKENS: &[&str] = &["MIDP-", "UP.Browser", "Openwave", "MAUI"];

/// Whether a user agent names a browser, given its uap-core browser family. Every
/// current browser, and the web views inside apps, begins with `Mozilla/` (or `Opera/`
/// for old Opera) and is recognised by uap-core; feed readers, HTTP libraries, command
/// line tools and scripts do not (`UniversalFeedParser/4.2`, `python-requests/2.31`,
/// `Mozilla/4.0 (compatible;)`), nor does Safari's background fetcher
/// (`Safari/9537 CFNetwork/673`). A few browsers of people without the prefix, and a few
/// clients with it that are not browsers, are named here.
pub fn names_browser(ua: &str, family: &str) -> bool {
    if ua.starts_with("Mozilla/") || ua.starts_with("Opera/") {
        return family != "Other"
            && !NOT_BROWSERS_WITH_MOZILLA.contains(&family)
            && !ua.contains("ms-office");
    }
    family.ends_with(" Browser")
        || family.contains(" Browser ")
        || BROWSERS_WITHOUT_MOZILLA.contains(&family)
        || HANDSET_TOKENS.iter().any(|t| ua.contains(t))
}

fn extractor() -> &'static ua_parser::Extractor<'static> {
    static EX: OnceLock<ua_parser::Extractor<'static>> = OnceLock::new();
    EX.get_or_init(|| {
        let yaml = include_str!(concat!(env!("OUT_DIR"), "/regexes.yaml"));
        let regexes: ua_parser::Regexes<'static> =
            serde_yaml::from_str(yaml).expect("embedded uap-core rules parse");
        ua_parser::Extractor::try_from(regexes).expect("embedded uap-core rules compile")
    })
}

#[derive(Deserialize)]
struct CrawlerEntry {
    pattern: String,
}

/// All crawler patterns as one alternation: one pass of the lazy DFA per user agent,
/// instead of 1,500 separate regexes.
fn crawlers() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let json = include_str!(concat!(env!("OUT_DIR"), "/crawler-user-agents.json"));
        let entries: Vec<CrawlerEntry> =
            serde_json::from_str(json).expect("embedded crawler patterns parse");
        // The list is written for JavaScript regexes; keep the (few) patterns Rust's
        // engine reads differently out rather than fail: each is checked on its own.
        let ok: Vec<String> = entries
            .iter()
            .filter(|e| Regex::new(&e.pattern).is_ok())
            .map(|e| format!("(?:{})", e.pattern))
            .collect();
        regex::RegexBuilder::new(&ok.join("|"))
            .size_limit(64 << 20)
            .dfa_size_limit(64 << 20)
            .build()
            .expect("crawler alternation compiles")
    })
}

/// Compiles the user-agent rules now rather than at the first user agent: a processor
/// calls it when it starts, so that the first event after a start does not wait the
/// ~0.1 s the rule sets take to build.
pub fn warm_up() {
    extractor();
    crawlers();
}

/// Why `ua` is a bot (`crawler-pattern`, `spider-device`), or `None` for a browser.
pub fn bot_reason(ua: &str) -> Option<&'static str> {
    if crawlers().is_match(ua) {
        return Some("crawler-pattern");
    }
    if extractor()
        .dev
        .extract(ua)
        .is_some_and(|d| d.device == "Spider")
    {
        return Some("spider-device");
    }
    None
}

fn version(major: Option<&str>, minor: Option<&str>) -> String {
    match (major, minor) {
        (Some(a), Some(b)) if !b.is_empty() => format!("{a}.{b}"),
        (Some(a), _) => a.to_string(),
        _ => String::new(),
    }
}

/// Parses one user agent. Costs tens of microseconds: callers cache by string
/// ([`UaCache`]).
pub fn parse_user_agent(ua: &str) -> UaInfo {
    if ua.trim().is_empty() {
        return UaInfo::absent();
    }
    let ex = extractor();
    let (b, os, dev) = ex.extract(ua);
    let (browser, browser_version) = match b {
        Some(b) => (b.family.to_string(), version(b.major, b.minor)),
        None => ("Other".into(), String::new()),
    };
    let (os_name, os_version) = match os {
        Some(o) => (
            o.os.to_string(),
            version(o.major.as_deref(), o.minor.as_deref()),
        ),
        None => ("Other".into(), String::new()),
    };
    let device_family = dev.map(|d| d.device.to_string()).unwrap_or_default();
    let bot = bot_reason(ua);
    let device = if bot.is_some() {
        "Bot"
    } else {
        device_type(ua, &device_family, &os_name)
    };
    UaInfo {
        names_browser: names_browser(ua, &browser),
        browser,
        browser_version,
        os: os_name,
        os_version,
        device,
        bot,
    }
}

/// Device type from the uap-core device family, the OS and a few well-known tokens.
fn device_type(ua: &str, family: &str, os: &str) -> &'static str {
    let tablet_family = family == "iPad"
        || family.contains("Tablet")
        || family.starts_with("Kindle")
        || family.contains("Galaxy Tab");
    if tablet_family || ua.contains("Tablet") {
        return "Tablet";
    }
    if ua.contains("SmartTV") || ua.contains("SMART-TV") || family.contains("TV") {
        return "TV";
    }
    // Android without "Mobile" is a tablet by Google's own convention.
    if os == "Android" && !ua.contains("Mobile") {
        return "Tablet";
    }
    if ua.contains("Mobi")
        || matches!(os, "iOS" | "Android" | "Windows Phone" | "BlackBerry OS")
        || family == "iPhone"
        || family.contains("Smartphone")
        || family.contains("Feature Phone")
    {
        return "Mobile";
    }
    if matches!(
        os,
        "Windows" | "Mac OS X" | "Linux" | "Ubuntu" | "Chrome OS" | "Fedora" | "FreeBSD"
    ) {
        return "Desktop";
    }
    "Other"
}

/// Memoises [`parse_user_agent`] by user-agent string. A few thousand distinct user
/// agents cover nearly all traffic; past `capacity` the cache starts over rather than
/// track recency.
pub struct UaCache {
    map: hashbrown::HashMap<Box<str>, UaInfo, foldhash::fast::RandomState>,
    capacity: usize,
}

impl Clone for UaCache {
    /// A clone starts empty: the cache is only a memo of a pure function.
    fn clone(&self) -> Self {
        Self::with_capacity(self.capacity)
    }
}

impl std::fmt::Debug for UaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UaCache({} entries)", self.map.len())
    }
}

impl Default for UaCache {
    fn default() -> Self {
        Self::with_capacity(20_000)
    }
}

impl UaCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: hashbrown::HashMap::default(),
            capacity,
        }
    }

    /// The parsed user agent (borrowed: the cache is consulted once per event, and a
    /// reference count per event showed in profiles).
    pub fn get(&mut self, ua: Option<&str>) -> &UaInfo {
        static ABSENT: OnceLock<UaInfo> = OnceLock::new();
        let Some(ua) = ua else {
            return ABSENT.get_or_init(UaInfo::absent);
        };
        if self.map.len() >= self.capacity && !self.map.contains_key(ua) {
            self.map.clear();
        }
        self.map
            .entry_ref(ua)
            .or_insert_with(|| parse_user_agent(ua))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_browsers() {
        let i = parse_user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36");
        assert_eq!(
            (i.browser.as_str(), i.os.as_str(), i.device),
            ("Chrome", "Windows", "Desktop")
        );
        assert_eq!(i.browser_version, "120.0");
        let i = parse_user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1");
        assert_eq!(
            (i.browser.as_str(), i.os.as_str(), i.device),
            ("Mobile Safari", "iOS", "Mobile")
        );
        let i = parse_user_agent("Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 Mobile/15E148 Safari/604.1");
        assert_eq!(i.device, "Tablet");
        let i = parse_user_agent(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        );
        assert_eq!((i.device, i.bot), ("Bot", Some("crawler-pattern")));
        assert_eq!(UaCache::default().get(None).browser, UNKNOWN);
    }
}
