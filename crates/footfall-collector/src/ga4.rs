//! GA4 Measurement Protocol (`/mp/collect`, `/debug/mp/collect`): GA4's own limits and
//! validation messages, and each valid event as a typed event.

use std::collections::HashMap;

use footfall_event::native::{parse_ip, NativeEvent, Rejection};
use footfall_event::{Revenue, PAGEVIEW};
use footfall_meta::{KeyGrant, MetaCache, Scope};
use serde_json::{json, Map, Value};

use crate::prop_value;

/// One entry of `/debug/mp/collect`'s `validationMessages`.
fn vmsg(path: impl Into<String>, code: &str, description: impl Into<String>) -> Value {
    json!({"fieldPath": path.into(), "description": description.into(), "validationCode": code})
}

/// Largest body GA4 takes.
pub const MAX_BODY: usize = 130 * 1024;
pub const GA4_MAX_EVENTS: usize = 25;
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
pub type Ga4Request = (
    Vec<Value>,
    Option<KeyGrant>,
    Vec<Result<NativeEvent, Rejection>>,
);

/// Validates a GA4 request and translates its valid events. Returns the validation
/// messages, the tracking id and grant (when the credentials hold) and native events.
pub fn translate(
    cache: &MetaCache,
    q: &HashMap<String, String>,
    body: &[u8],
    now: i64,
) -> footfall_meta::Result<Ga4Request> {
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
        (Some(m), Some(secret)) => match cache.key(secret)? {
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
    if body.len() >= MAX_BODY {
        msgs.push(vmsg(
            "",
            "VALUE_OUT_OF_BOUNDS",
            format!(
                "payload is {} bytes; it must be under {MAX_BODY}",
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
        let mut props = std::collections::BTreeMap::new();
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
                if let Some(p) = prop_value(v) {
                    props.insert(k.clone(), p);
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
        let mut ev = NativeEvent::new(
            g.property.clone(),
            if name == "page_view" { PAGEVIEW } else { name },
        );
        ev.client_id = client_id.map(String::from);
        ev.props = props;
        ev.url = s("page_location").map(String::from);
        ev.referrer = s("page_referrer").map(String::from);
        ev.title = s("page_title").map(String::from);
        ev.timestamp = ts;
        ev.user_agent = root
            .pointer("/device/user_agent")
            .and_then(Value::as_str)
            .map(String::from);
        // An event counts as engagement when GA4 would count it: engagement time > 0.
        if let Some(et) = params.get("engagement_time_msec") {
            let ms = et
                .as_f64()
                .or_else(|| et.as_str()?.parse().ok())
                .unwrap_or(0.0);
            ev.interactive = ms > 0.0;
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
                ev.revenue = Some(Revenue {
                    amount,
                    currency: cur.to_string(),
                });
            }
        }
        match root.get("ip_override").and_then(Value::as_str) {
            Some(ip) => out.push(parse_ip(ip).map(|ip| {
                ev.ip = Some(ip);
                ev
            })),
            None => out.push(Ok(ev)),
        }
    }
    Ok((msgs, grant, out))
}
