//! The analytics protocols merchants' existing clients speak: GA4 Measurement Protocol
//! (`/mp/collect`, `/debug/mp/collect`), gtag browser hits (`/g/collect`) and Segment's
//! HTTP Tracking API (`/v1/*`). Each translates its input into native events and goes
//! through the same admission ([`crate::admit`]) and durable append as `/api/v1/events`,
//! so every protocol ends in the one event model.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use footfall_event::native::Rejection;
use footfall_meta::{KeyGrant, Scope};
use serde_json::{json, Map, Value};

use crate::{
    admit_all, append_durable, check_accepting, internal, no_valid_events, read_body,
    rejection_json, ApiError, AppRef, AppState, Sender,
};

/// Footfall's name for page views, whatever a protocol calls them.
const PAGEVIEW: &str = footfall_event::PAGEVIEW;

/// A scalar parameter as a prop value; objects and arrays (GA4 `items`) are not props.
fn scalar(v: &Value) -> Option<Value> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// GA4 Measurement Protocol

/// One entry of `/debug/mp/collect`'s `validationMessages`.
fn vmsg(path: impl Into<String>, code: &str, description: impl Into<String>) -> Value {
    json!({"fieldPath": path.into(), "description": description.into(), "validationCode": code})
}

const GA4_MAX_BODY: usize = 130 * 1024;
const GA4_MAX_EVENTS: usize = 25;
const GA4_MAX_PARAMS: usize = 25;
const GA4_MAX_USER_PROPS: usize = 25;
const GA4_MAX_NAME: usize = 40;
const GA4_MAX_USER_PROP_NAME: usize = 24;
const GA4_MAX_PARAM_VALUE: usize = 100;
const GA4_MAX_BACKDATE_MS: i64 = 72 * 3600 * 1000;

/// Event names GA4 reserves for its own use.
const GA4_RESERVED_EVENTS: &[&str] = &[
    "ad_activeview",
    "ad_click",
    "ad_exposure",
    "ad_impression",
    "ad_query",
    "ad_reward",
    "adunit_exposure",
    "app_background",
    "app_clear_data",
    "app_exception",
    "app_install",
    "app_remove",
    "app_store_refund",
    "app_store_subscription_cancel",
    "app_store_subscription_convert",
    "app_store_subscription_renew",
    "app_update",
    "app_upgrade",
    "dynamic_link_app_open",
    "dynamic_link_app_update",
    "dynamic_link_first_open",
    "error",
    "firebase_campaign",
    "firebase_in_app_message_action",
    "firebase_in_app_message_dismiss",
    "firebase_in_app_message_impression",
    "first_open",
    "first_visit",
    "in_app_purchase",
    "notification_dismiss",
    "notification_foreground",
    "notification_open",
    "notification_receive",
    "notification_send",
    "os_update",
    "session_start",
    "user_engagement",
];
const GA4_RESERVED_PREFIXES: &[&str] = &["google_", "ga_", "firebase_"];
/// Parameters that map to event fields rather than props.
const GA4_FIELD_PARAMS: &[&str] = &[
    "page_location",
    "page_referrer",
    "page_title",
    "session_id",
    "engagement_time_msec",
    "value",
    "currency",
    "items",
    "debug_mode",
    "timestamp_micros",
];

fn ga4_name_ok(n: &str, max: usize) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && n.len() <= max
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn ga4_reserved(n: &str) -> bool {
    GA4_RESERVED_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// A GA4 request checked: its validation messages, the grant when the credentials hold,
/// and its valid events as native events.
type Ga4Request = (Vec<Value>, Option<KeyGrant>, Vec<Value>);

/// Validates a GA4 request and translates its valid events. Returns the validation
/// messages, the tracking id and grant (when the credentials hold) and native events.
fn ga4_translate(
    app: &AppState,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<Ga4Request, ApiError> {
    let mut msgs = Vec::new();
    let mid = q.get("measurement_id").or_else(|| q.get("firebase_app_id"));
    let grant = match (mid, q.get("api_secret")) {
        (None, _) => {
            msgs.push(vmsg(
                "measurement_id",
                "VALUE_REQUIRED",
                "measurement_id is required in the query string",
            ));
            None
        }
        (_, None) => {
            msgs.push(vmsg(
                "api_secret",
                "VALUE_REQUIRED",
                "api_secret is required in the query string",
            ));
            None
        }
        (Some(m), Some(secret)) => match app.cache.key(secret).map_err(internal)? {
            Some(g) if g.scope == Scope::Write && g.property == *m => Some(g),
            Some(g) if g.scope == Scope::Write => {
                msgs.push(vmsg(
                    "measurement_id",
                    "VALUE_INVALID",
                    format!("api_secret does not belong to measurement_id {m}"),
                ));
                None
            }
            _ => {
                msgs.push(vmsg(
                    "api_secret",
                    "VALUE_INVALID",
                    "api_secret is not a write key of this property",
                ));
                None
            }
        },
    };
    if body.len() >= GA4_MAX_BODY {
        msgs.push(vmsg(
            "",
            "VALUE_OUT_OF_BOUNDS",
            format!(
                "payload is {} bytes; it must be under {GA4_MAX_BODY}",
                body.len()
            ),
        ));
        return Ok((msgs, grant, Vec::new()));
    }
    let root: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            msgs.push(vmsg(
                "",
                "VALUE_INVALID",
                "the payload must be a JSON object",
            ));
            return Ok((msgs, grant, Vec::new()));
        }
        Err(e) => {
            msgs.push(vmsg(
                "",
                "VALUE_INVALID",
                format!("unable to parse the Measurement Protocol JSON payload: {e}"),
            ));
            return Ok((msgs, grant, Vec::new()));
        }
    };
    let client_id = root
        .get("client_id")
        .or_else(|| root.get("app_instance_id"))
        .and_then(Value::as_str);
    if client_id.is_none_or(str::is_empty) {
        msgs.push(vmsg("client_id", "VALUE_REQUIRED", "client_id is required"));
    }
    if let Some(up) = root.get("user_properties").and_then(Value::as_object) {
        if up.len() > GA4_MAX_USER_PROPS {
            msgs.push(vmsg(
                "user_properties",
                "EXCEEDED_MAX_ENTITIES",
                format!("{} user properties; at most {GA4_MAX_USER_PROPS}", up.len()),
            ));
        }
        for k in up.keys() {
            if !ga4_name_ok(k, GA4_MAX_USER_PROP_NAME) {
                msgs.push(vmsg(format!("user_properties.{k}"), "NAME_INVALID", format!("user property names are letters, digits and _, start with a letter, at most {GA4_MAX_USER_PROP_NAME} characters")));
            } else if ga4_reserved(k) {
                msgs.push(vmsg(
                    format!("user_properties.{k}"),
                    "NAME_RESERVED",
                    format!("`{k}` is a reserved name"),
                ));
            }
        }
    }
    let now = app.clock.now_millis();
    let micros_to_ms = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str()?.parse().ok())
            .map(|m| m / 1000)
    };
    let root_ts = root.get("timestamp_micros").and_then(micros_to_ms);
    let events = root.get("events").and_then(Value::as_array);
    let Some(events) = events.filter(|e| !e.is_empty()) else {
        msgs.push(vmsg(
            "events",
            "VALUE_REQUIRED",
            "events must be a non-empty array",
        ));
        return Ok((msgs, grant, Vec::new()));
    };
    if events.len() > GA4_MAX_EVENTS {
        msgs.push(vmsg(
            "events",
            "EXCEEDED_MAX_ENTITIES",
            format!(
                "{} events; at most {GA4_MAX_EVENTS} per request",
                events.len()
            ),
        ));
        return Ok((msgs, grant, Vec::new()));
    }
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let at = |f: &str| format!("events[{i}]{f}");
        let before = msgs.len();
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            msgs.push(vmsg(
                at(".name"),
                "VALUE_REQUIRED",
                "event name is required",
            ));
        } else if !ga4_name_ok(name, GA4_MAX_NAME) {
            msgs.push(vmsg(at(".name"), "NAME_INVALID", format!("event name `{name}` must start with a letter and use letters, digits and _, at most {GA4_MAX_NAME} characters")));
        } else if GA4_RESERVED_EVENTS.contains(&name) || ga4_reserved(name) {
            msgs.push(vmsg(
                at(".name"),
                "NAME_RESERVED",
                format!("event name `{name}` is reserved"),
            ));
        }
        let empty = Map::new();
        let params = e.get("params").and_then(Value::as_object).unwrap_or(&empty);
        if params.len() > GA4_MAX_PARAMS {
            msgs.push(vmsg(
                at(".params"),
                "EXCEEDED_MAX_ENTITIES",
                format!(
                    "{} params; at most {GA4_MAX_PARAMS} per event",
                    params.len()
                ),
            ));
        }
        let mut props = Map::new();
        for (k, v) in params {
            let path = at(&format!(".params.{k}"));
            if !ga4_name_ok(k, GA4_MAX_NAME) {
                msgs.push(vmsg(path, "NAME_INVALID", format!("parameter `{k}` must start with a letter and use letters, digits and _, at most {GA4_MAX_NAME} characters")));
                continue;
            }
            if ga4_reserved(k) {
                msgs.push(vmsg(
                    path,
                    "NAME_RESERVED",
                    format!("parameter `{k}` is reserved"),
                ));
                continue;
            }
            let long_ok = matches!(k.as_str(), "page_location" | "page_referrer" | "page_title");
            if let Some(s) = v.as_str() {
                let max = if long_ok { 1000 } else { GA4_MAX_PARAM_VALUE };
                if s.chars().count() > max {
                    msgs.push(vmsg(
                        path,
                        "VALUE_OUT_OF_BOUNDS",
                        format!("value is longer than {max} characters"),
                    ));
                    continue;
                }
            }
            if !GA4_FIELD_PARAMS.contains(&k.as_str()) {
                if let Some(s) = scalar(v) {
                    props.insert(k.clone(), s);
                }
            }
        }
        let ts = e.get("timestamp_micros").and_then(micros_to_ms).or(root_ts);
        if let Some(t) = ts {
            if t < now - GA4_MAX_BACKDATE_MS {
                msgs.push(vmsg(
                    at(".timestamp_micros"),
                    "VALUE_OUT_OF_BOUNDS",
                    "timestamp_micros may be at most 72 hours in the past",
                ));
            }
        }
        if msgs.len() > before || client_id.is_none_or(str::is_empty) {
            continue;
        }
        let Some(g) = &grant else { continue };
        let s = |k: &str| params.get(k).and_then(Value::as_str);
        let mut ev = json!({
            "tracking_id": g.property,
            "name": if name == "page_view" { PAGEVIEW } else { name },
            "client_id": client_id,
            "props": props,
        });
        for (field, param) in [
            ("url", "page_location"),
            ("referrer", "page_referrer"),
            ("title", "page_title"),
        ] {
            if let Some(v) = s(param) {
                ev[field] = json!(v);
            }
        }
        if let Some(t) = ts {
            ev["timestamp"] = json!(t);
        }
        if let Some(ip) = root.get("ip_override").and_then(Value::as_str) {
            ev["ip"] = json!(ip);
        }
        if let Some(ua) = root.pointer("/device/user_agent").and_then(Value::as_str) {
            ev["user_agent"] = json!(ua);
        }
        // An event counts as engagement when GA4 would count it: engagement time > 0.
        if let Some(et) = params.get("engagement_time_msec") {
            let ms = et
                .as_f64()
                .or_else(|| et.as_str()?.parse().ok())
                .unwrap_or(0.0);
            ev["interactive"] = json!(ms > 0.0);
        }
        if matches!(name, "purchase" | "refund") {
            if let (Some(value), Some(cur)) = (
                params
                    .get("value")
                    .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok())),
                s("currency"),
            ) {
                let amount = if name == "refund" {
                    -value.abs()
                } else {
                    value
                };
                ev["revenue"] = json!({"amount": amount, "currency": cur});
            }
        }
        out.push(ev);
    }
    Ok((msgs, grant, out))
}

/// `POST /mp/collect`: like GA4, answers 204 whatever the payload says (problems are
/// counted in `/metrics` and explained by `/debug/mp/collect`); valid events are durable
/// before the answer, and a storage failure is a 503.
pub(crate) async fn ga4_collect(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let q = query_map(q.as_deref().unwrap_or(""));
    let body = read_body(body, GA4_MAX_BODY * 4).await?;
    let (msgs, grant, events) = ga4_translate(&app, &q, &body)?;
    for _ in &msgs {
        app.metrics.reject("ga4_invalid");
    }
    if let Some(g) = &grant {
        let s = Sender {
            grant: Some(g),
            peer,
            headers: &headers,
            header_ua: false,
            check_url_host: true,
        };
        let (records, _) = admit_all(&app, &events, &s)?;
        if !records.is_empty() {
            append_durable(&app, records).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /debug/mp/collect`: the validation messages; nothing is stored (as in GA4).
pub(crate) async fn ga4_debug(
    State(app): State<AppRef>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let q = query_map(q.as_deref().unwrap_or(""));
    let body = read_body(body, GA4_MAX_BODY * 4).await?;
    let (msgs, _, _) = ga4_translate(&app, &q, &body)?;
    Ok(Json(json!({"validationMessages": msgs})).into_response())
}

fn query_map(q: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

// ---------------------------------------------------------------------------------------
// gtag browser hits

/// One `/g/collect` hit's parameters as a native event.
fn gtag_event(p: &HashMap<String, String>) -> Result<Value, Rejection> {
    let tid = p
        .get("tid")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Rejection::new("missing_tracking_id", "`tid` is required"))?;
    let en = p.get("en").map(String::as_str).unwrap_or("page_view");
    let mut props = Map::new();
    for (k, v) in p {
        if let Some(name) = k.strip_prefix("ep.") {
            props.insert(name.to_string(), json!(v));
        } else if let Some(name) = k.strip_prefix("epn.") {
            let n: f64 = v
                .parse()
                .map_err(|_| Rejection::new("wrong_type", format!("`{k}` must be a number")))?;
            props.insert(name.to_string(), json!(n));
        }
    }
    let mut ev = json!({
        "tracking_id": tid,
        "name": if en == "page_view" { PAGEVIEW } else { en },
    });
    if let Some(c) = p.get("cid").filter(|c| !c.is_empty()) {
        ev["client_id"] = json!(c);
    }
    for (field, k) in [("url", "dl"), ("referrer", "dr"), ("title", "dt")] {
        if let Some(v) = p.get(k).filter(|v| !v.is_empty()) {
            ev[field] = json!(v);
        }
    }
    if let Some(et) = p.get("_et") {
        ev["interactive"] = json!(et.parse::<f64>().unwrap_or(0.0) > 0.0);
    }
    if matches!(en, "purchase" | "refund") {
        if let (Some(Value::Number(v)), Some(cu)) = (props.remove("value"), p.get("cu")) {
            let v = v.as_f64().unwrap_or(0.0);
            let amount = if en == "refund" { -v.abs() } else { v };
            ev["revenue"] = json!({"amount": amount, "currency": cu});
        }
    }
    ev["props"] = Value::Object(props);
    Ok(ev)
}

/// `GET|POST /g/collect`: the query string is one hit; a POST body may hold several,
/// one per line, each line's parameters overriding the query string's. Answers 204 once
/// durable; a request with no valid hit gets 400 (404 for unknown tracking ids) with the
/// native error body.
pub(crate) async fn gtag_collect(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let base = query_map(q.as_deref().unwrap_or(""));
    let body = read_body(body, app.rules.limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_utf8", "body is not UTF-8"))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let hits: Vec<HashMap<String, String>> = if lines.is_empty() {
        vec![base]
    } else {
        lines
            .iter()
            .map(|l| {
                let mut p = base.clone();
                p.extend(query_map(l.trim()));
                p
            })
            .collect()
    };
    if hits.len() > app.rules.limits.max_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "{} hits; at most {}",
                hits.len(),
                app.rules.limits.max_events
            ),
        ));
    }
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for (i, h) in hits.iter().enumerate() {
        match gtag_event(h) {
            Ok(e) => events.push((i, e)),
            Err(r) => rejected.push(rejection_json(i, &r)),
        }
    }
    let values: Vec<Value> = events.iter().map(|(_, e)| e.clone()).collect();
    let s = Sender {
        grant: None,
        peer,
        headers: &headers,
        header_ua: true,
        check_url_host: true,
    };
    let (records, bad) = admit_all(&app, &values, &s)?;
    for (i, r) in bad {
        rejected.push(rejection_json(events[i].0, &r));
    }
    if records.is_empty() {
        return Err(no_valid_events(rejected));
    }
    append_durable(&app, records).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------
// Segment HTTP Tracking API

const SEGMENT_MAX_MESSAGE: usize = 32 * 1024;
const SEGMENT_MAX_BATCH: usize = 500 * 1024;

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

    fn seen(&self, property: &str, id: &str) -> bool {
        let g = self.inner.lock().unwrap();
        g.0.contains(&(property.to_string(), id.to_string()))
    }

    fn remember(&self, property: &str, id: &str) {
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

fn segment_error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, "segment_error", msg)
}

/// Bodies may be gzip whatever their headers say: the magic bytes decide.
fn maybe_gunzip(body: Bytes) -> Result<Bytes, ApiError> {
    if body.len() < 2 || body[0] != 0x1f || body[1] != 0x8b {
        return Ok(body);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(SEGMENT_MAX_BATCH as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| segment_error(StatusCode::BAD_REQUEST, format!("invalid gzip body: {e}")))?;
    Ok(out.into())
}

/// The write key: HTTP Basic user name, else `writeKey` in the body.
fn segment_key(headers: &HeaderMap, body: &Value) -> Option<String> {
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

fn segment_time(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The message's event time: `timestamp` if given, else `originalTimestamp` corrected for
/// the client's clock skew (`receivedAt − (sentAt − originalTimestamp)`), as Segment does.
fn segment_timestamp(m: &Value, batch_sent_at: Option<i64>, received: i64) -> Option<i64> {
    if let Some(t) = segment_time(m.get("timestamp")) {
        return Some(t);
    }
    let original = segment_time(m.get("originalTimestamp"))?;
    match segment_time(m.get("sentAt")).or(batch_sent_at) {
        Some(sent) => Some(received - (sent - original)),
        None => Some(original),
    }
}

/// A Segment message as a native event; `None` for messages that carry no analytics
/// event (`identify`, `group`, `alias`: traits and identities, which Footfall does not
/// keep).
fn segment_event(
    m: &Value,
    kind: &str,
    property: &str,
    batch_sent_at: Option<i64>,
    received: i64,
) -> Result<Option<Value>, Rejection> {
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
    let mut ev = json!({"tracking_id": property, "name": name});
    let anon = m
        .get("anonymousId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let user = m
        .get("userId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match (anon, user) {
        (Some(a), _) => ev["client_id"] = json!(a),
        (None, Some(u)) => ev["user_id"] = json!(u),
        (None, None) => {
            return Err(Rejection::new(
                "missing_identity",
                "`anonymousId` or `userId` is required",
            ))
        }
    }
    if let Some(u) = url {
        ev["url"] = json!(u);
    }
    if let Some(t) = title {
        ev["title"] = json!(t);
    }
    let referrer = prop_str("referrer").or(page.get("referrer").and_then(Value::as_str));
    if let Some(r) = referrer.filter(|r| !r.is_empty()) {
        ev["referrer"] = json!(r);
    }
    if let Some(ip) = ctx.get("ip").and_then(Value::as_str) {
        ev["ip"] = json!(ip);
    }
    if let Some(ua) = ctx.get("userAgent").and_then(Value::as_str) {
        ev["user_agent"] = json!(ua);
    }
    if let Some(t) = segment_timestamp(m, batch_sent_at, received) {
        ev["timestamp"] = json!(t);
    }
    let mut props = Map::new();
    if let Some(p) = props_in {
        for (k, v) in p {
            let field = matches!(
                k.as_str(),
                "url" | "title" | "referrer" | "path" | "search" | "revenue" | "currency"
            );
            if !field {
                if let Some(s) = scalar(v) {
                    props.insert(k.clone(), s);
                }
            }
        }
        if let Some(r) = p
            .get("revenue")
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
        {
            let cur = p.get("currency").and_then(Value::as_str).unwrap_or("USD");
            ev["revenue"] = json!({"amount": r, "currency": cur.to_ascii_uppercase()});
        }
    }
    ev["props"] = Value::Object(props);
    Ok(Some(ev))
}

fn segment_kind(path: &str) -> Option<&'static str> {
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

/// `POST /v1/{batch,track,page,screen,identify,group,alias}` and the short forms.
/// Answers `200 {"success": true}` once the events are durable; 400 for malformed JSON,
/// bad gzip or size limits (Segment's documented answers); 401 for a missing or unknown
/// write key (Segment would answer 200; Footfall never acknowledges what it did not keep).
pub(crate) async fn segment(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let kind = segment_kind(&path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Segment endpoint /v1/{path}"),
        )
    })?;
    let raw = read_body(body, SEGMENT_MAX_BATCH * 2).await?;
    let body = maybe_gunzip(raw)?;
    let limit = if kind == "batch" {
        SEGMENT_MAX_BATCH
    } else {
        SEGMENT_MAX_MESSAGE
    };
    if body.len() > limit {
        return Err(segment_error(
            StatusCode::BAD_REQUEST,
            format!("payload is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    let root: Value = serde_json::from_slice(&body)
        .map_err(|e| segment_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    if !root.is_object() {
        return Err(segment_error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    let key = segment_key(&headers, &root).ok_or_else(|| {
        ApiError::unauthorized("missing write key (HTTP Basic user name or `writeKey`)")
    })?;
    let grant = match app.cache.key(&key).map_err(internal)? {
        Some(g) if g.scope == Scope::Write => g,
        Some(_) => return Err(ApiError::forbidden("this key cannot write")),
        None => return Err(ApiError::unauthorized("unknown write key")),
    };
    let received = app.clock.now_millis();
    let sent_at = segment_time(root.get("sentAt"));
    let messages: Vec<(Value, String)> = if kind == "batch" {
        root.get("batch")
            .and_then(Value::as_array)
            .ok_or_else(|| segment_error(StatusCode::BAD_REQUEST, "`batch` must be an array"))?
            .iter()
            .map(|m| {
                let t = m
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                (m.clone(), t)
            })
            .collect()
    } else {
        vec![(root.clone(), kind.to_string())]
    };
    let mut rejected = Vec::new();
    let mut events = Vec::new();
    let mut ids = Vec::new();
    for (i, (m, t)) in messages.iter().enumerate() {
        let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(0);
        if size > SEGMENT_MAX_MESSAGE {
            app.metrics.reject("message_too_large");
            rejected.push(json!({"index": i, "code": "message_too_large", "message": format!("message is {size} bytes; the limit is {SEGMENT_MAX_MESSAGE}")}));
            continue;
        }
        let mid = m.get("messageId").and_then(Value::as_str);
        if let Some(id) = mid {
            if app.message_ids.seen(&grant.property, id) || ids.iter().any(|(_, x)| x == id) {
                continue; // a retry of a message already kept
            }
        }
        match segment_event(m, t, &grant.property, sent_at, received) {
            Ok(Some(e)) => {
                events.push((i, e));
                ids.push((events.len() - 1, mid.unwrap_or("").to_string()));
            }
            Ok(None) => {}
            Err(r) => {
                app.metrics.reject(r.code);
                rejected.push(rejection_json(i, &r));
            }
        }
    }
    let values: Vec<Value> = events.iter().map(|(_, e)| e.clone()).collect();
    let s = Sender {
        grant: Some(&grant),
        peer,
        headers: &headers,
        header_ua: false,
        check_url_host: true,
    };
    let (records, bad) = admit_all(&app, &values, &s)?;
    let bad_idx: HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    for (i, r) in bad {
        rejected.push(rejection_json(events[i].0, &r));
    }
    if records.is_empty() && !rejected.is_empty() {
        return Err(segment_error(StatusCode::BAD_REQUEST, "no valid message")
            .with("rejected", json!(rejected)));
    }
    if !records.is_empty() {
        append_durable(&app, records).await?;
    }
    for (i, id) in ids {
        if !id.is_empty() && !bad_idx.contains(&i) {
            app.message_ids.remember(&grant.property, &id);
        }
    }
    let mut out = json!({"success": true});
    if !rejected.is_empty() {
        out["rejected"] = json!(rejected);
    }
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            segment_timestamp(&m, None, received),
            Some(ms("2026-11-26T12:00:05Z"))
        );
        // A batch-level sentAt applies to messages without their own.
        let m = json!({"originalTimestamp": "2026-11-26T13:00:00Z"});
        let sent = Some(ms("2026-11-26T13:00:05Z"));
        assert_eq!(
            segment_timestamp(&m, sent, received),
            Some(ms("2026-11-26T12:00:05Z"))
        );
        // An explicit timestamp is taken as it is.
        let m = json!({"timestamp": "2026-11-20T08:00:00Z", "originalTimestamp": "2026-11-26T13:00:00Z"});
        assert_eq!(
            segment_timestamp(&m, sent, received),
            Some(ms("2026-11-20T08:00:00Z"))
        );
        assert_eq!(segment_timestamp(&json!({}), sent, received), None);
    }

    #[test]
    fn gtag_hit_mapping() {
        let p: HashMap<String, String> = query_map(
            "v=2&tid=FF-1&cid=1.2&en=purchase&dl=https%3A%2F%2Fa.example%2Fx&epn.value=12.5&cu=EUR&ep.coupon=X",
        );
        let e = gtag_event(&p).unwrap();
        assert_eq!(e["name"], "purchase");
        assert_eq!(e["revenue"], json!({"amount": 12.5, "currency": "EUR"}));
        assert_eq!(e["props"], json!({"coupon": "X"}));
        assert_eq!(e["client_id"], "1.2");
        let p = query_map("v=2&tid=FF-1&cid=1&dl=https%3A%2F%2Fa.example%2F");
        assert_eq!(gtag_event(&p).unwrap()["name"], "pageview");
        assert_eq!(
            gtag_event(&query_map("v=2&cid=1")).unwrap_err().code,
            "missing_tracking_id"
        );
    }
}
