//! Acquisition: where a visit came from — source, referrer, channel and UTM tags.
//! The channel rules are defined in docs/METRICS.md; this is their one implementation.

use std::collections::HashMap;
use std::sync::OnceLock;

use footfall_event::url_host;
use serde::Deserialize;

/// `visit:source` and `visit:referrer` of visits without a referrer or campaign.
pub const DIRECT: &str = "Direct / None";

/// The UTM tags kept as dimensions, in `visit:utm_*` order.
pub const UTM_KEYS: [&str; 5] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
];

/// Medium of a known referrer host (referer-parser's grouping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Search,
    Social,
    Email,
    Unknown,
}

struct Known {
    /// Host (and sub-hosts) → medium and display name.
    hosts: HashMap<String, (Medium, String)>,
    /// Lower-case display name → medium, for `utm_source=google`-style tags.
    names: HashMap<String, Medium>,
}

#[derive(Deserialize)]
struct Entry {
    domains: Vec<String>,
}

fn known() -> &'static Known {
    static K: OnceLock<Known> = OnceLock::new();
    K.get_or_init(|| {
        let json = include_str!(concat!(env!("OUT_DIR"), "/referers.json"));
        let all: HashMap<String, HashMap<String, Entry>> =
            serde_json::from_str(json).expect("embedded referrer list parses");
        let mut hosts = HashMap::new();
        let mut names = HashMap::new();
        for (medium, by_name) in all {
            let m = match medium.as_str() {
                "search" => Medium::Search,
                "social" => Medium::Social,
                "email" => Medium::Email,
                _ => Medium::Unknown,
            };
            for (name, e) in by_name {
                // A name listed under several media (Google: search and "unknown"
                // support hosts) keeps its specific medium.
                let n = names.entry(name.to_ascii_lowercase()).or_insert(m);
                if *n == Medium::Unknown {
                    *n = m;
                }
                for d in e.domains {
                    // Entries with a path (`google.com/products`) are matched by host only.
                    let host = d.split('/').next().unwrap_or(&d).to_ascii_lowercase();
                    let host = host.strip_prefix("www.").unwrap_or(&host).to_string();
                    let e = hosts.entry(host).or_insert((m, name.clone()));
                    if e.0 == Medium::Unknown {
                        *e = (m, name.clone());
                    }
                }
            }
        }
        Known { hosts, names }
    })
}

/// The medium and name of a referrer host (`www.` already stripped), trying the host
/// and then each parent domain (`news.google.co.uk` → `google.co.uk`).
pub fn known_host(host: &str) -> Option<(Medium, &'static str)> {
    let k = known();
    let mut h = host;
    loop {
        if let Some((m, n)) = k.hosts.get(h) {
            return Some((*m, n.as_str()));
        }
        match h.split_once('.') {
            Some((_, rest)) if rest.contains('.') => h = rest,
            _ => return None,
        }
    }
}

/// Where a visit came from, from its first event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// Campaign source tag, else the referrer's host without `www.`, else [`DIRECT`].
    pub source: String,
    /// The external referrer as `host/path` (no scheme, query or fragment), else
    /// [`DIRECT`].
    pub referrer: String,
    pub channel: &'static str,
    /// `utm_source`, `utm_medium`, `utm_campaign`, `utm_content`, `utm_term`; empty when
    /// absent.
    pub utm: [String; 5],
}

/// Ad click ids: their presence marks the visit as paid, whatever else it says.
const PAID_SEARCH_CLICK_IDS: [&str; 5] = ["gclid", "gbraid", "wbraid", "msclkid", "dclid"];
const PAID_SOCIAL_CLICK_IDS: [&str; 6] =
    ["fbclid", "ttclid", "twclid", "li_fat_id", "epik", "ScCid"];

/// Query parameters the rules read, from one pass over the URL's query string.
#[derive(Default)]
struct Params {
    utm: [String; 5],
    /// `ref`, then `source`: campaign sources other tools use.
    other_source: [String; 2],
    search_click: bool,
    social_click: bool,
}

fn params(url: Option<&str>) -> Params {
    let mut p = Params::default();
    let Some(q) = url
        .and_then(|u| u.split_once('?'))
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
    else {
        return p;
    };
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if v.is_empty() {
            continue;
        }
        if let Some(i) = UTM_KEYS.iter().position(|u| *u == k) {
            if p.utm[i].is_empty() {
                p.utm[i] = v.into_owned();
            }
        } else if k == "ref" || k == "source" {
            let i = (k == "source") as usize;
            if p.other_source[i].is_empty() {
                p.other_source[i] = v.into_owned();
            }
        } else if PAID_SEARCH_CLICK_IDS.contains(&k.as_ref()) {
            p.search_click = true;
        } else if PAID_SOCIAL_CLICK_IDS.contains(&k.as_ref()) {
            p.social_click = true;
        }
    }
    p
}

/// The acquisition of a visit whose first event had `url` and `referrer`.
pub fn attribution(url: Option<&str>, referrer: Option<&str>) -> Attribution {
    let p = params(url);
    let utm = p.utm;
    let own_host = url.and_then(url_host);
    let ext_ref =
        referrer.filter(|r| url_host(r).is_some_and(|rh| Some(rh.as_ref()) != own_host.as_deref()));
    let ref_host = ext_ref.and_then(url_host).map(|h| h.into_owned());

    let mut source = String::new();
    for v in [&utm[0], &p.other_source[0], &p.other_source[1]] {
        if !v.is_empty() {
            source = v.clone();
            break;
        }
    }
    if source.is_empty() {
        source = ref_host.clone().unwrap_or_else(|| DIRECT.to_string());
    }
    let referrer = match ext_ref {
        Some(r) => clean_referrer(r),
        None => DIRECT.to_string(),
    };

    let known_ref = ref_host.as_deref().and_then(known_host).map(|(m, _)| m);
    let tag_medium = (!utm[0].is_empty())
        .then(|| known().names.get(&utm[0].to_ascii_lowercase()).copied())
        .flatten()
        .or_else(|| {
            (!utm[0].is_empty())
                .then(|| known_host(&utm[0].to_ascii_lowercase()).map(|(m, _)| m))
                .flatten()
        });
    let source_medium = tag_medium.or(known_ref);
    let channel = channel(
        &utm[1].to_ascii_lowercase(),
        &utm[2].to_ascii_lowercase(),
        source_medium,
        p.search_click,
        p.social_click,
        ext_ref.is_some(),
        source != DIRECT,
    );
    Attribution {
        source,
        referrer,
        channel,
        utm,
    }
}

/// The channel rules of docs/METRICS.md, first match wins.
fn channel(
    medium: &str,
    campaign: &str,
    source_medium: Option<Medium>,
    search_click: bool,
    social_click: bool,
    has_referrer: bool,
    has_source: bool,
) -> &'static str {
    let social = source_medium == Some(Medium::Social);
    let search = source_medium == Some(Medium::Search);
    if search_click {
        return "Paid Search";
    }
    if social_click {
        return "Paid Social";
    }
    let paid_medium = medium.contains("cp")
        || medium == "ppc"
        || medium == "retargeting"
        || medium.starts_with("paid");
    if paid_medium {
        return if social || medium.contains("social") {
            "Paid Social"
        } else if search || medium.contains("search") {
            "Paid Search"
        } else if medium.contains("video") {
            "Paid Video"
        } else {
            "Paid Other"
        };
    }
    if campaign.contains("shop") {
        return "Organic Shopping";
    }
    match medium {
        "email" | "e-mail" | "e_mail" | "e mail" | "newsletter" => return "Email",
        "affiliate" | "affiliates" => return "Affiliates",
        "display" | "banner" | "expandable" | "interstitial" | "cpm" => return "Display",
        "social" | "social-network" | "social-media" | "sm" | "social network" | "social media" => {
            return "Organic Social"
        }
        "organic" => return "Organic Search",
        "sms" => return "SMS",
        "audio" => return "Audio",
        "referral" | "app" | "link" => return "Referral",
        _ => {}
    }
    match source_medium {
        Some(Medium::Search) => return "Organic Search",
        Some(Medium::Social) => return "Organic Social",
        Some(Medium::Email) => return "Email",
        _ => {}
    }
    if has_referrer {
        return "Referral";
    }
    if has_source || !medium.is_empty() {
        return "Unassigned";
    }
    "Direct"
}

/// `https://www.example.com/a/b?x=1#y` → `example.com/a/b`; a bare `/` path is dropped.
fn clean_referrer(r: &str) -> String {
    let rest = r.split_once("://").map_or(r, |(_, rest)| rest);
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = rest[..end].trim_end_matches('/');
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host);
    if path.is_empty() {
        host.to_string()
    } else {
        format!("{host}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(url: &str, r: Option<&str>) -> &'static str {
        attribution(Some(url), r).channel
    }

    #[test]
    fn channels() {
        let u = "https://shop.example/p";
        assert_eq!(ch(u, None), "Direct");
        assert_eq!(ch(u, Some("https://shop.example/")), "Direct");
        assert_eq!(
            ch(u, Some("https://www.google.com/search?q=x")),
            "Organic Search"
        );
        assert_eq!(ch(u, Some("https://www.google.co.uk/")), "Organic Search");
        assert_eq!(ch(u, Some("https://duckduckgo.com/")), "Organic Search");
        assert_eq!(ch(u, Some("https://t.co/abc")), "Organic Social");
        assert_eq!(ch(u, Some("https://m.facebook.com/")), "Organic Social");
        assert_eq!(ch(u, Some("https://blog.somewhere.net/post")), "Referral");
        assert_eq!(
            ch(&format!("{u}?gclid=abc"), Some("https://www.google.com/")),
            "Paid Search"
        );
        assert_eq!(
            ch(&format!("{u}?fbclid=abc"), Some("https://facebook.com/")),
            "Paid Social"
        );
        assert_eq!(
            ch(&format!("{u}?utm_source=google&utm_medium=cpc"), None),
            "Paid Search"
        );
        assert_eq!(
            ch(&format!("{u}?utm_source=facebook&utm_medium=paid"), None),
            "Paid Social"
        );
        assert_eq!(
            ch(&format!("{u}?utm_source=news&utm_medium=email"), None),
            "Email"
        );
        assert_eq!(
            ch(
                &format!("{u}?utm_source=partner&utm_medium=affiliate"),
                None
            ),
            "Affiliates"
        );
        assert_eq!(ch(&format!("{u}?utm_source=whatever"), None), "Unassigned");
        assert_eq!(
            ch(&format!("{u}?utm_campaign=summer-shop"), None),
            "Organic Shopping"
        );
        let a = attribution(
            Some("https://shop.example/?utm_source=nl&utm_medium=email&utm_campaign=bf&utm_content=hero&utm_term=shoes"),
            Some("https://WWW.Mail.Example.org/inbox/?id=1#x"),
        );
        assert_eq!(
            a.utm,
            ["nl", "email", "bf", "hero", "shoes"].map(String::from)
        );
        assert_eq!(a.source, "nl");
        assert_eq!(a.referrer, "mail.example.org/inbox");
    }

    #[test]
    fn known_hosts_from_the_list() {
        assert_eq!(known_host("google.com").map(|x| x.0), Some(Medium::Search));
        assert_eq!(
            known_host("mail.yahoo.com").map(|x| x.0),
            Some(Medium::Email)
        );
        assert_eq!(known_host("example.org"), None);
    }
}
