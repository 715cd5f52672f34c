//! Segment's HTTP Tracking API (`/v1/*`): messages as typed events, with Segment's
//! limits, write keys, clock-skew correction and `messageId` retries.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::sync::Mutex;

use footfall_event::native::{parse_ip, NativeEvent, Rejection};
use footfall_event::{Revenue, PAGEVIEW};
use http::{header, HeaderMap};
use serde_json::Value;

use crate::prop_value;

/// Largest message Segment takes.
pub const MAX_MESSAGE: usize = 32 * 1024;
/// Largest batch Segment takes.
pub const MAX_BATCH: usize = 500 * 1024;

/// (property, message id) pairs, as a set and in arrival order for eviction.
type SeenIds = (HashSet<(String, String)>, VecDeque<(String, String)>);

/// Recently seen `messageId`s, per property, so a client's retry is not counted twice.
/// Held in memory: a retry across a server restart is not recognised.
pub struct MessageIds {
    inner: Mutex<SeenIds>,
    capacity: usize,
}

impl MessageIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
            capacity,
        }
    }

    pub fn seen(&self, property: &str, id: &str) -> bool {
        let g = self.inner.lock().unwrap();
        g.0.contains(&(property.to_string(), id.to_string()))
    }

    pub fn remember(&self, property: &str, id: &str) {
        let mut g = self.inner.lock().unwrap();
        let k = (property.to_string(), id.to_string());
        if g.0.insert(k.clone()) {
            g.1.push_back(k);
            while g.1.len() > self.capacity {
                if let Some(old) = g.1.pop_front() {
                    g.0.remove(&old);
                }
            }
        }
    }
}

/// Bodies may be gzip whatever their headers say: the magic bytes decide. Decompresses
/// at most `MAX_BATCH + 1` bytes (the caller refuses more).
pub fn maybe_gunzip(body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if body.len() < 2 || body[0] != 0x1f || body[1] != 0x8b {
        return Ok(None);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_BATCH as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("invalid gzip body: {e}"))?;
    Ok(Some(out))
}

/// The write key: HTTP Basic user name, else `writeKey` in the body.
pub fn write_key(headers: &HeaderMap, body: &Value) -> Option<String> {
    use base64::Engine;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.split_once(':').map(|(u, _)| u.to_string()).unwrap_or(s))
        .filter(|s| !s.is_empty());
    basic.or_else(|| {
        body.get("writeKey")
            .and_then(Value::as_str)
            .map(String::from)
    })
}

pub fn time(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The message's event time: `timestamp` if given, else `originalTimestamp` corrected for
/// the client's clock skew (`receivedAt − (sentAt − originalTimestamp)`), as Segment does.
fn timestamp(m: &Value, batch_sent_at: Option<i64>, received: i64) -> Option<i64> {
    if let Some(t) = time(m.get("timestamp")) {
        return Some(t);
    }
    let original = time(m.get("originalTimestamp"))?;
    match time(m.get("sentAt")).or(batch_sent_at) {
        Some(sent) => Some(received - (sent - original)),
        None => Some(original),
    }
}

/// A Segment message as a native event; `None` for messages that carry no analytics
/// event (`identify`, `group`, `alias`: traits and identities, which Footfall does not
/// keep).
pub fn event(
    m: &Value,
    kind: &str,
    property: &str,
    batch_sent_at: Option<i64>,
    received: i64,
) -> Result<Option<NativeEvent>, Rejection> {
    let ctx = m.get("context").cloned().unwrap_or(Value::Null);
    let page = ctx.get("page").cloned().unwrap_or(Value::Null);
    let props_in = m.get("properties").and_then(Value::as_object);
    let prop_str = |k: &str| props_in.and_then(|p| p.get(k)).and_then(Value::as_str);
    let (name, url, title) = match kind {
        "track" => {
            let e = m
                .get("event")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .ok_or_else(|| Rejection::new("missing_name", "track messages need `event`"))?;
            (
                e.to_string(),
                page.get("url").and_then(Value::as_str).map(String::from),
                None,
            )
        }
        "page" => (
            PAGEVIEW.to_string(),
            prop_str("url")
                .or(page.get("url").and_then(Value::as_str))
                .map(String::from),
            prop_str("title")
                .or(page.get("title").and_then(Value::as_str))
                .map(String::from),
        ),
        "screen" => {
            // An app screen: its name is the page, under an app:// URL.
            let n = m.get("name").and_then(Value::as_str).unwrap_or("unknown");
            let path: String = n
                .split('/')
                .map(|s| s.replace(' ', "%20"))
                .collect::<Vec<_>>()
                .join("/");
            (
                PAGEVIEW.to_string(),
                Some(format!("app://screen/{path}")),
                Some(n.to_string()),
            )
        }
        "identify" | "group" | "alias" => return Ok(None),
        other => {
            return Err(Rejection::new(
                "unknown_type",
                format!("unknown message type `{other}`"),
            ))
        }
    };
    let mut ev = NativeEvent::new(property, name);
    let anon = m
        .get("anonymousId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let user = m
        .get("userId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match (anon, user) {
        (Some(a), _) => ev.client_id = Some(a.to_string()),
        (None, Some(u)) => ev.user_id = Some(u.to_string()),
        (None, None) => {
            return Err(Rejection::new(
                "missing_identity",
                "`anonymousId` or `userId` is required",
            ))
        }
    }
    ev.url = url;
    ev.title = title;
    let referrer = prop_str("referrer").or(page.get("referrer").and_then(Value::as_str));
    ev.referrer = referrer.filter(|r| !r.is_empty()).map(String::from);
    if let Some(ip) = ctx.get("ip").and_then(Value::as_str) {
        ev.ip = Some(parse_ip(ip)?);
    }
    ev.user_agent = ctx
        .get("userAgent")
        .and_then(Value::as_str)
        .map(String::from);
    ev.timestamp = timestamp(m, batch_sent_at, received);
    if let Some(p) = props_in {
        for (k, v) in p {
            let field = matches!(
                k.as_str(),
                "url" | "title" | "referrer" | "path" | "search" | "revenue" | "currency"
            );
            if !field {
                if let Some(pv) = prop_value(v) {
                    ev.props.insert(k.clone(), pv);
                }
            }
        }
        if let Some(r) = p
            .get("revenue")
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
        {
            let cur = p.get("currency").and_then(Value::as_str).unwrap_or("USD");
            ev.revenue = Some(Revenue {
                amount: r,
                currency: cur.to_ascii_uppercase(),
            });
        }
    }
    Ok(Some(ev))
}

pub fn kind(path: &str) -> Option<&'static str> {
    Some(match path {
        "batch" | "b" | "import" => "batch",
        "track" | "t" => "track",
        "page" | "p" => "page",
        "screen" | "s" => "screen",
        "identify" | "i" => "identify",
        "group" | "g" => "group",
        "alias" | "a" => "alias",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn segment_corrects_client_clock_skew() {
        let received = ms("2026-11-26T12:00:10Z");
        // The client's clock is 1 hour fast: it stamped the event 5 s before sending.
        let m =
            json!({"originalTimestamp": "2026-11-26T13:00:00Z", "sentAt": "2026-11-26T13:00:05Z"});
        assert_eq!(
            timestamp(&m, None, received),
            Some(ms("2026-11-26T12:00:05Z"))
        );
        // A batch-level sentAt applies to messages without their own.
        let m = json!({"originalTimestamp": "2026-11-26T13:00:00Z"});
        let sent = Some(ms("2026-11-26T13:00:05Z"));
        assert_eq!(
            timestamp(&m, sent, received),
            Some(ms("2026-11-26T12:00:05Z"))
        );
        // An explicit timestamp is taken as it is.
        let m = json!({"timestamp": "2026-11-20T08:00:00Z", "originalTimestamp": "2026-11-26T13:00:00Z"});
        assert_eq!(
            timestamp(&m, sent, received),
            Some(ms("2026-11-20T08:00:00Z"))
        );
        assert_eq!(timestamp(&json!({}), sent, received), None);
    }
}
