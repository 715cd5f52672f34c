//! The event model: what a collector accepts, what the log stores, and the pure
//! functions around it (validation, visitor identity, address truncation, the clock).
//!
//! This crate does no I/O. Everything here must be deterministic given its inputs so
//! that the processor can replay the log and reach the same state.

pub mod clock;
pub mod goal;
pub mod identity;
pub mod native;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock};

/// Format version written as the first byte of every log record.
///
/// Version 2 (current): the version byte, a flags byte ([`FLAG_SERVER_SIDE`]), then the
/// event in postcard. Version 1: the version byte, then postcard; it is still read, its
/// events taken as not server-side.
pub const RECORD_VERSION: u8 = 2;

/// Record flag: the event was sent with a write key by the merchant's own server, for a
/// person the merchant identified ([`LoggedEvent::server_side`]).
pub const FLAG_SERVER_SIDE: u8 = 1;

/// Splits a record into its server-side flag and its postcard body.
/// The first byte of an erased record: its payload is zeros (of the length it had), so
/// that its offset and every other record's stay where they were (docs/SECURITY.md,
/// "Deleting data").
pub const ERASED_VERSION: u8 = 0;

/// An erased record's payload, `len` bytes long.
pub fn erased_record(len: usize) -> Vec<u8> {
    vec![ERASED_VERSION; len]
}

fn record_body(bytes: &[u8]) -> Result<(bool, &[u8]), DecodeError> {
    match bytes {
        [ERASED_VERSION, ..] => Err(DecodeError::Erased),
        [2, flags, body @ ..] => Ok((flags & FLAG_SERVER_SIDE != 0, body)),
        [2] => Err(DecodeError::Corrupt("record without its flags".into())),
        [1, body @ ..] => Ok((false, body)),
        [v, ..] => Err(DecodeError::UnknownVersion(*v)),
        [] => Err(DecodeError::Corrupt("empty record".into())),
    }
}

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
    /// Sent with a write key by the merchant's server for a person it identified: such an
    /// event is counted whatever its user agent, while browser-style traffic (keyless
    /// requests, imported access logs) must name a browser (docs/METRICS.md, "Who is
    /// counted"). Kept in the record's flags byte, not in the postcard body.
    #[serde(skip)]
    pub server_side: bool,
}

impl LoggedEvent {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }

    /// Serialises to the log record format: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(RECORD_VERSION);
        out.push(if self.server_side {
            FLAG_SERVER_SIDE
        } else {
            0
        });
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (server_side, body) = record_body(bytes)?;
        let mut e: Self =
            postcard::from_bytes(body).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        e.server_side = server_side;
        Ok(e)
    }
}

/// A borrowed string of a record, checked with `simdutf8`: the processor decodes every
/// string of every event, and the standard check was ~5% of processing (NOTES.md).
/// The record format is unchanged (postcard writes strings as length-prefixed bytes).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de str, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = &'de str;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a UTF-8 string")
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, b: &'de [u8]) -> Result<&'de str, E> {
            simdutf8::basic::from_utf8(b).map_err(|_| E::custom("string is not UTF-8"))
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<&'de str, E> {
            Ok(s)
        }
    }
    d.deserialize_bytes(Text)
}

fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    struct OptText;
    impl<'de> serde::de::Visitor<'de> for OptText {
        type Value = Option<&'de str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an optional UTF-8 string")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            text(d).map(Some)
        }
    }
    d.deserialize_option(OptText)
}

/// A borrowed view of a log record, decoded without allocating for the common event.
/// Its fields mirror [`LoggedEvent`] in order (the record format is positional).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventView<'a> {
    #[serde(borrow, deserialize_with = "text")]
    pub property: &'a str,
    pub received_at: Millis,
    pub timestamp: Millis,
    pub visitor: u64,
    #[serde(borrow, deserialize_with = "text")]
    pub name: &'a str,
    #[serde(borrow, deserialize_with = "opt_text")]
    pub url: Option<&'a str>,
    #[serde(borrow, deserialize_with = "opt_text")]
    pub referrer: Option<&'a str>,
    #[serde(borrow, deserialize_with = "opt_text")]
    pub title: Option<&'a str>,
    #[serde(borrow)]
    pub props: BTreeMap<&'a str, PropValueView<'a>>,
    #[serde(borrow)]
    pub revenue: Option<RevenueView<'a>>,
    pub interactive: bool,
    #[serde(borrow, deserialize_with = "opt_text")]
    pub user_agent: Option<&'a str>,
    #[serde(borrow, deserialize_with = "opt_text")]
    pub ip_prefix: Option<&'a str>,
    /// As [`LoggedEvent::server_side`], from the record's flags.
    #[serde(skip)]
    pub server_side: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum PropValueView<'a> {
    #[serde(borrow, deserialize_with = "text")]
    Str(&'a str),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RevenueView<'a> {
    pub amount: f64,
    #[serde(borrow, deserialize_with = "text")]
    pub currency: &'a str,
}

impl<'a> EventView<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (server_side, body) = record_body(bytes)?;
        let mut e: Self =
            postcard::from_bytes(body).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        e.server_side = server_side;
        Ok(e)
    }

    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }
}

impl LoggedEvent {
    /// A borrowed view of this event (as the processor sees records).
    pub fn view(&self) -> EventView<'_> {
        EventView {
            property: &self.property,
            received_at: self.received_at,
            timestamp: self.timestamp,
            visitor: self.visitor,
            name: &self.name,
            url: self.url.as_deref(),
            referrer: self.referrer.as_deref(),
            title: self.title.as_deref(),
            props: self
                .props
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        PropValue::Str(s) => PropValueView::Str(s),
                        PropValue::Num(n) => PropValueView::Num(*n),
                        PropValue::Bool(b) => PropValueView::Bool(*b),
                    };
                    (k.as_str(), v)
                })
                .collect(),
            revenue: self.revenue.as_ref().map(|r| RevenueView {
                amount: r.amount,
                currency: &r.currency,
            }),
            interactive: self.interactive,
            user_agent: self.user_agent.as_deref(),
            ip_prefix: self.ip_prefix.as_deref(),
            server_side: self.server_side,
        }
    }
}

/// Anything the processor can read as an [`EventView`].
pub trait AsEventView {
    fn as_view(&self) -> EventView<'_>;
}

impl AsEventView for LoggedEvent {
    fn as_view(&self) -> EventView<'_> {
        self.view()
    }
}

/// The event name of a page view.
pub const PAGEVIEW: &str = "pageview";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record was erased (a deletion of its visitor's or property's data): readers
    /// skip it.
    #[error("erased record")]
    Erased,
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
    let b = rest.as_bytes();
    // Host: [A-Za-z0-9.-]+ then an optional :port, ending at / ? # or the end.
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'.') {
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let host = &rest[..i];
    if i < b.len() && b[i] == b':' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < b.len() && !matches!(b[i], b'/' | b'?' | b'#') {
        return None; // userinfo, backslashes, brackets and other rarities
    }
    // Path: URL-safe bytes without dot segments or escaped dots.
    let path_start = i;
    let mut prev = b'/';
    while i < b.len() && !matches!(b[i], b'?' | b'#') {
        let c = b[i];
        let safe = c.is_ascii_alphanumeric() || b"-_~/!$&'()*+,;=:@".contains(&c);
        if !(safe
            || (c == b'.' && prev != b'/')
            || (c == b'%' && !rest[i..].starts_with("%2e") && !rest[i..].starts_with("%2E")))
        {
            return None;
        }
        prev = c;
        i += 1;
    }
    let path = &rest[path_start..i];
    let query = if i < b.len() && b[i] == b'?' {
        let q = &rest[i + 1..];
        Some(q.split('#').next().unwrap_or(""))
    } else {
        None
    };
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
            server_side: false,
        };
        assert_eq!(LoggedEvent::decode(&e.encode()).unwrap(), e);
        // The server-side flag travels in the flags byte, through both decoders.
        let keyed = LoggedEvent {
            server_side: true,
            ..e.clone()
        };
        assert_eq!(LoggedEvent::decode(&keyed.encode()).unwrap(), keyed);
        assert!(EventView::decode(&keyed.encode()).unwrap().server_side);
        // A version-1 record (no flags byte) still reads, as not server-side.
        let mut v1 = keyed.encode();
        v1.remove(1);
        v1[0] = 1;
        assert_eq!(LoggedEvent::decode(&v1).unwrap(), e);
        assert_eq!(EventView::decode(&v1).unwrap(), e.view());
        assert!(LoggedEvent::decode(&[2]).is_err());
        let bytes = e.encode();
        assert_eq!(EventView::decode(&bytes).unwrap(), e.view());
        // Every string field is checked: a byte that is not UTF-8 in any of them, in
        // either decoder, is a corrupt record (non-ASCII text decodes).
        let with = |f: &dyn Fn(&mut LoggedEvent, String)| {
            let mut x = e.clone();
            f(&mut x, "ü-MARK".into());
            let mut bytes = x.encode();
            let mark = "ü-MARK".as_bytes();
            let at = bytes.windows(mark.len()).position(|w| w == mark).unwrap();
            assert_eq!(EventView::decode(&bytes).unwrap(), x.view());
            bytes[at + 1] = 0xff;
            assert!(EventView::decode(&bytes).is_err());
            assert!(LoggedEvent::decode(&bytes).is_err());
        };
        with(&|x, s| x.property = s);
        with(&|x, s| x.name = s);
        with(&|x, s| x.url = Some(s));
        with(&|x, s| x.referrer = Some(s));
        with(&|x, s| x.title = Some(s));
        with(&|x, s| x.user_agent = Some(s));
        with(&|x, s| x.ip_prefix = Some(s));
        assert!(matches!(
            LoggedEvent::decode(&[9, 1]),
            Err(DecodeError::UnknownVersion(9))
        ));
    }

    /// The fast path must agree with the full WHATWG parser wherever it answers.
    #[test]
    fn fast_path_agrees_with_the_url_crate() {
        let parts = [
            "a", ".", "..", "%2e", "%2E", "x.y", "~u", "@", "a b", "ü", "", ";p=1", "%41",
        ];
        let hosts = ["a.com", "WWW.A.com", "a.com:8080", "u@a.com", "a_b.com"];
        for h in hosts {
            for x in parts {
                for y in parts {
                    for tail in ["", "?q=1", "#f", "/"] {
                        let u = format!("https://{h}/{x}/{y}{tail}");
                        if let Ok(parsed) = url::Url::parse(&u) {
                            assert_eq!(url_path(&u), parsed.path(), "{u}");
                            let host = parsed.host_str().unwrap().to_ascii_lowercase();
                            let host = host.strip_prefix("www.").unwrap_or(&host).to_string();
                            assert_eq!(url_host(&u).unwrap(), host, "{u}");
                        }
                    }
                }
            }
        }
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
