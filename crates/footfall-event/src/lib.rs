//! The event model: what a collector accepts, what the log stores, and the pure
//! functions around it (validation, visitor identity, address truncation, the clock).
//!
//! This crate does no I/O. Everything here must be deterministic given its inputs so
//! that the processor can replay the log and reach the same state.

pub mod clock;
pub mod identity;
pub mod native;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock};

/// Format version written as the first byte of every log record.
pub const RECORD_VERSION: u8 = 1;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A property value: string, number or boolean, as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PropValue {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl PropValue {
    pub fn to_display(&self) -> String {
        match self {
            PropValue::Str(s) => s.clone(),
            PropValue::Num(n) => n.to_string(),
            PropValue::Bool(b) => b.to_string(),
        }
    }
}

/// Revenue attached to an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revenue {
    pub amount: f64,
    pub currency: String,
}

/// One accepted event exactly as the collector made it durable.
///
/// Enrichment (user agent, bots, geo, channel) is deliberately absent: it happens in the
/// processor so that a reprocess with fixed code can correct it. No full IP address is
/// ever stored: `ip_prefix` holds the truncated network only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Tracking id of the property (`FF-…`).
    pub property: String,
    /// When the collector received the event (server clock).
    pub received_at: Millis,
    /// When the event happened (client-supplied or `received_at`).
    pub timestamp: Millis,
    /// Keyed hash identifying the visitor; see [`identity`].
    pub visitor: u64,
    pub name: String,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub title: Option<String>,
    pub props: BTreeMap<String, PropValue>,
    pub revenue: Option<Revenue>,
    pub interactive: bool,
    pub user_agent: Option<String>,
    /// Truncated client address (IPv4 /24, IPv6 /48), for geo lookup.
    pub ip_prefix: Option<String>,
}

impl LoggedEvent {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }

    /// Serialises to the log record format: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(RECORD_VERSION);
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            Some(&RECORD_VERSION) => {
                postcard::from_bytes(&bytes[1..]).map_err(|e| DecodeError::Corrupt(e.to_string()))
            }
            Some(v) => Err(DecodeError::UnknownVersion(*v)),
            None => Err(DecodeError::Corrupt("empty record".into())),
        }
    }
}

/// The event name of a page view.
pub const PAGEVIEW: &str = "pageview";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The parts of an `http(s)://` URL, found without allocating, when the URL is plain
/// enough that the full WHATWG parser would return them unchanged: an ASCII host without
/// escapes, a path of URL-safe characters without dot segments. Anything else is left
/// to the `url` crate.
fn split_plain_url(url: &str) -> Option<(&str, &str, Option<&str>)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let auth_end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    if authority.contains('@') || authority.starts_with('[') {
        return None;
    }
    let host = authority.split(':').next().unwrap_or("");
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    let after = &rest[auth_end..];
    let after = after.split('#').next().unwrap_or("");
    let (path, query) = match after.find('?') {
        Some(i) => (&after[..i], Some(&after[i + 1..])),
        None => (after, None),
    };
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@%".contains(&b);
    if !path.bytes().all(safe)
        || path.contains("/.")
        || path.contains("%2e")
        || path.contains("%2E")
    {
        return None;
    }
    Some((host, if path.is_empty() { "/" } else { path }, query))
}

/// The path of a URL (`event:page`), without query string or fragment. Accepts absolute
/// URLs and bare paths; an unparsable value is kept as sent.
pub fn url_path(url: &str) -> Cow<'_, str> {
    if let Some((_, path, _)) = split_plain_url(url) {
        return Cow::Borrowed(path);
    }
    if let Ok(u) = url::Url::parse(url) {
        if u.cannot_be_a_base() {
            return Cow::Borrowed(url);
        }
        return Cow::Owned(u.path().to_string());
    }
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let p = &url[..end];
    if p.is_empty() {
        Cow::Borrowed("/")
    } else {
        Cow::Borrowed(p)
    }
}

/// Lower-cased host of a URL without a leading `www.`.
pub fn url_host(url: &str) -> Option<Cow<'_, str>> {
    if let Some((host, _, _)) = split_plain_url(url) {
        let host = host.strip_prefix("www.").unwrap_or(host);
        return Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let h = host.to_ascii_lowercase();
            Cow::Owned(h.strip_prefix("www.").map(str::to_string).unwrap_or(h))
        } else {
            Cow::Borrowed(host)
        });
    }
    let u = url::Url::parse(url).ok()?;
    let h = u.host_str()?.to_ascii_lowercase();
    Some(Cow::Owned(
        h.strip_prefix("www.").map(str::to_string).unwrap_or(h),
    ))
}

/// Value of a query parameter of a URL (form-decoded), if present and not empty.
pub fn url_query_param<'a>(url: &'a str, key: &str) -> Option<Cow<'a, str>> {
    if let Some((_, _, query)) = split_plain_url(url) {
        let query = query?;
        if !query.contains(key) {
            return None;
        }
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == key {
                if v.is_empty() {
                    return None;
                }
                if !v.contains(['%', '+']) {
                    return Some(Cow::Borrowed(v));
                }
                break;
            }
        }
    }
    let u = url::Url::parse(url).ok()?;
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| Cow::<str>::Owned(v.into_owned()))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let e = LoggedEvent {
            property: "FF-ABCDEFGH".into(),
            received_at: 1,
            timestamp: 2,
            visitor: 3,
            name: "pageview".into(),
            url: Some("https://a.example/x?y=1".into()),
            referrer: None,
            title: None,
            props: [("k".to_string(), PropValue::Num(1.5))].into(),
            revenue: Some(Revenue {
                amount: 1.0,
                currency: "INR".into(),
            }),
            interactive: true,
            user_agent: Some("ua".into()),
            ip_prefix: Some("1.2.3.0".into()),
        };
        assert_eq!(LoggedEvent::decode(&e.encode()).unwrap(), e);
        assert!(matches!(
            LoggedEvent::decode(&[9, 1]),
            Err(DecodeError::UnknownVersion(9))
        ));
    }

    #[test]
    fn paths_and_hosts() {
        assert_eq!(url_path("https://www.a.com/x/y?z=1#f"), "/x/y");
        assert_eq!(url_path("https://a.com"), "/");
        assert_eq!(url_path("/docs?x"), "/docs");
        assert_eq!(
            url_host("https://WWW.Google.com/search").unwrap(),
            "google.com"
        );
        assert_eq!(
            url_query_param("https://a.com/?utm_source=news", "utm_source").unwrap(),
            "news"
        );
    }
}
