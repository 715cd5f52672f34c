//! The native ingestion format (`POST /api/v1/events`): body shapes, field validation
//! and limits. Every rejection carries a stable machine-readable code.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::{Millis, PropValue, Revenue};

/// Limits of the native endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_events: usize,
    pub max_name_chars: usize,
    pub max_url_chars: usize,
    pub max_props: usize,
    pub max_prop_key_bytes: usize,
    pub max_prop_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_events: 500,
            max_name_chars: 120,
            max_url_chars: 2000,
            max_props: 30,
            max_prop_key_bytes: 300,
            max_prop_value_bytes: 2000,
        }
    }
}

/// A problem with the request body as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is not valid UTF-8")]
    InvalidUtf8,
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body must be an event object, an array of events or {{\"events\": [...]}}")]
    BadShape,
    #[error("{0} events in one request; the limit is {1}")]
    TooManyEvents(usize, usize),
    #[error("request body is empty")]
    Empty,
}

impl BodyError {
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::InvalidUtf8 => "invalid_utf8",
            BodyError::MalformedJson(_) => "malformed_json",
            BodyError::BadShape => "bad_shape",
            BodyError::TooManyEvents(..) => "too_many_events",
            BodyError::Empty => "empty_body",
        }
    }
}

/// Why one event of a batch was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
    /// Seconds after which the same event may be taken (rate limits and quotas).
    pub retry_after: Option<u32>,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A syntactically valid native event, before the collector applies authorisation,
/// time rules and identity.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeEvent {
    pub tracking_id: String,
    pub name: String,
    pub url: Option<String>,
    pub referrer: Option<String>,
    pub title: Option<String>,
    pub timestamp: Option<Millis>,
    pub client_id: Option<String>,
    pub user_id: Option<String>,
    pub props: BTreeMap<String, PropValue>,
    pub revenue: Option<Revenue>,
    pub interactive: bool,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// `server_side` as sent: whether a write-key sender speaks for a person it
    /// identified (the default with a key) or replays browser traffic (`false`, as
    /// `footfall import` does). Only a write key may say `true`.
    pub server_side: Option<bool>,
}

/// Splits a body into its event values.
pub fn parse_body(bytes: &[u8], limits: &Limits) -> Result<Vec<Value>, BodyError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BodyError::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    let v: Value =
        serde_json::from_str(text).map_err(|e| BodyError::MalformedJson(e.to_string()))?;
    let events = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("events") {
            Some(Value::Array(a)) if !o.contains_key("name") => a,
            Some(_) => return Err(BodyError::BadShape),
            None => vec![Value::Object(o)],
        },
        _ => return Err(BodyError::BadShape),
    };
    if events.len() > limits.max_events {
        return Err(BodyError::TooManyEvents(events.len(), limits.max_events));
    }
    Ok(events)
}

fn opt_string(o: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Rejection> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::new(
            "wrong_type",
            format!("`{key}` must be a string"),
        )),
    }
}

fn check_chars(key: &str, v: Option<&str>, max_chars: usize) -> Result<(), Rejection> {
    // Bytes bound characters from above: most values are decided without counting.
    match v {
        Some(s) if s.len() > max_chars && s.chars().count() > max_chars => Err(Rejection::new(
            "field_too_long",
            format!("`{key}` is longer than {max_chars} characters"),
        )),
        _ => Ok(()),
    }
}

/// Parses an RFC 3339 string or Unix milliseconds.
pub fn parse_timestamp(v: &Value) -> Result<Millis, Rejection> {
    match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                Rejection::new(
                    "invalid_timestamp",
                    format!("`timestamp` is not RFC 3339: {e}"),
                )
            }),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .filter(|ms| (0..=MAX_TIMESTAMP).contains(ms))
            .ok_or_else(|| Rejection::new("invalid_timestamp", "`timestamp` is out of range")),
        _ => Err(Rejection::new(
            "wrong_type",
            "`timestamp` must be an RFC 3339 string or Unix milliseconds",
        )),
    }
}

/// An event's `props` object (absent or null: none), typed.
pub fn parse_props(v: Option<&Value>) -> Result<BTreeMap<String, PropValue>, Rejection> {
    let mut props = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in p {
                let pv = match v {
                    Value::String(s) => PropValue::Str(s.clone()),
                    Value::Number(n) => PropValue::Num(n.as_f64().unwrap_or(0.0)),
                    Value::Bool(b) => PropValue::Bool(*b),
                    _ => {
                        return Err(Rejection::new(
                            "wrong_type",
                            format!("prop `{k}` must be a string, number or boolean"),
                        ))
                    }
                };
                props.insert(k.clone(), pv);
            }
        }
        Some(_) => return Err(Rejection::new("wrong_type", "`props` must be an object")),
    }
    Ok(props)
}

/// An event's `revenue` object (absent or null: none), typed; its currency is checked
/// by [`NativeEvent::validate`].
pub fn parse_revenue(v: Option<&Value>) -> Result<Option<Revenue>, Rejection> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(r)) => {
            let amount = r.get("amount").and_then(Value::as_f64).ok_or_else(|| {
                Rejection::new("invalid_revenue", "`revenue.amount` must be a number")
            })?;
            let currency = r.get("currency").and_then(Value::as_str).unwrap_or("");
            Ok(Some(Revenue {
                amount,
                currency: currency.to_string(),
            }))
        }
        Some(_) => Err(Rejection::new(
            "wrong_type",
            "`revenue` must be {\"amount\": n, \"currency\": \"XXX\"}",
        )),
    }
}

impl NativeEvent {
    /// An event of `name` for `tracking_id` with nothing else set (interactive, as
    /// events are unless they say otherwise).
    pub fn new(tracking_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tracking_id: tracking_id.into(),
            name: name.into(),
            url: None,
            referrer: None,
            title: None,
            timestamp: None,
            client_id: None,
            user_id: None,
            props: BTreeMap::new(),
            revenue: None,
            interactive: true,
            ip: None,
            user_agent: None,
            server_side: None,
        }
    }

    /// Checks the event against the limits every protocol shares, and normalises it
    /// (currency in upper case). Every protocol's events pass here before admission.
    pub fn validate(mut self, limits: &Limits) -> Result<Self, Rejection> {
        if self.tracking_id.is_empty() {
            return Err(Rejection::new(
                "missing_tracking_id",
                "`tracking_id` is required",
            ));
        }
        if self.name.trim().is_empty() {
            return Err(Rejection::new("missing_name", "`name` is required"));
        }
        for (key, v, max) in [
            ("tracking_id", Some(self.tracking_id.as_str()), 64),
            ("name", Some(self.name.as_str()), limits.max_name_chars),
            ("url", self.url.as_deref(), limits.max_url_chars),
            ("referrer", self.referrer.as_deref(), limits.max_url_chars),
            ("title", self.title.as_deref(), limits.max_url_chars),
            ("client_id", self.client_id.as_deref(), 256),
            ("user_id", self.user_id.as_deref(), 256),
            ("user_agent", self.user_agent.as_deref(), 1024),
        ] {
            check_chars(key, v, max)?;
        }
        if let Some(t) = self.timestamp {
            if !(0..=MAX_TIMESTAMP).contains(&t) {
                return Err(Rejection::new(
                    "invalid_timestamp",
                    "`timestamp` is out of range",
                ));
            }
        }
        if self.props.len() > limits.max_props {
            return Err(Rejection::new(
                "too_many_props",
                format!(
                    "{} props; the limit is {}",
                    self.props.len(),
                    limits.max_props
                ),
            ));
        }
        for (k, v) in &self.props {
            if k.is_empty() || k.len() > limits.max_prop_key_bytes {
                return Err(Rejection::new(
                    "invalid_prop_key",
                    format!("prop keys must be 1 to {} bytes", limits.max_prop_key_bytes),
                ));
            }
            if matches!(v, PropValue::Str(s) if s.len() > limits.max_prop_value_bytes) {
                return Err(Rejection::new(
                    "prop_value_too_long",
                    format!(
                        "prop `{k}` is longer than {} bytes",
                        limits.max_prop_value_bytes
                    ),
                ));
            }
        }
        if let Some(r) = &mut self.revenue {
            if r.currency.len() != 3 || !r.currency.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(Rejection::new(
                    "invalid_revenue",
                    "`revenue.currency` must be an ISO 4217 code",
                ));
            }
            if !r.amount.is_finite() {
                return Err(Rejection::new(
                    "invalid_revenue",
                    "`revenue.amount` must be finite",
                ));
            }
            r.currency.make_ascii_uppercase();
        }
        Ok(self)
    }
}

/// Latest timestamp accepted: the end of year 9999.
const MAX_TIMESTAMP: Millis = 253_402_300_799_000;

/// Parses and validates one native event object.
pub fn parse_event(v: &Value, limits: &Limits) -> Result<NativeEvent, Rejection> {
    read_event(v)?.validate(limits)
}

/// Reads one native event object into its typed form, checking types only; the
/// limits are [`NativeEvent::validate`]'s.
pub fn read_event(v: &Value) -> Result<NativeEvent, Rejection> {
    let o = v
        .as_object()
        .ok_or_else(|| Rejection::new("wrong_type", "an event must be a JSON object"))?;
    let tracking_id = opt_string(o, "tracking_id")?.unwrap_or_default();
    let name = opt_string(o, "name")?.unwrap_or_default();
    let mut e = NativeEvent::new(tracking_id, name);
    e.url = opt_string(o, "url")?;
    e.referrer = opt_string(o, "referrer")?;
    e.title = opt_string(o, "title")?;
    e.client_id = opt_string(o, "client_id")?;
    e.user_id = opt_string(o, "user_id")?;
    e.user_agent = opt_string(o, "user_agent")?;
    e.ip = match opt_string(o, "ip")? {
        None => None,
        Some(s) => Some(parse_ip(&s)?),
    };
    e.timestamp = match o.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(t) => Some(parse_timestamp(t)?),
    };
    e.interactive = match o.get("interactive") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Rejection::new(
                "wrong_type",
                "`interactive` must be a boolean",
            ))
        }
    };
    e.server_side = match o.get("server_side") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(Rejection::new(
                "wrong_type",
                "`server_side` must be a boolean",
            ))
        }
    };
    e.props = parse_props(o.get("props"))?;
    e.revenue = parse_revenue(o.get("revenue"))?;
    Ok(e)
}

/// A client address given in an event (`ip`), for server-side senders.
pub fn parse_ip(s: &str) -> Result<IpAddr, Rejection> {
    s.parse::<IpAddr>()
        .map_err(|_| Rejection::new("invalid_ip", "`ip` is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let l = Limits::default();
        assert_eq!(parse_body(br#"{"name":"a"}"#, &l).unwrap().len(), 1);
        assert_eq!(parse_body(br#"[{},{}]"#, &l).unwrap().len(), 2);
        assert_eq!(parse_body(br#"{"events":[{}]}"#, &l).unwrap().len(), 1);
        assert_eq!(parse_body(b"\xff", &l), Err(BodyError::InvalidUtf8));
        assert_eq!(parse_body(b"1", &l), Err(BodyError::BadShape));
        assert!(matches!(
            parse_body(b"{", &l),
            Err(BodyError::MalformedJson(_))
        ));
        let many = serde_json::to_vec(&vec![json!({}); 501]).unwrap();
        assert_eq!(
            parse_body(&many, &l),
            Err(BodyError::TooManyEvents(501, 500))
        );
    }

    #[test]
    fn fields() {
        let l = Limits::default();
        let e = parse_event(
            &json!({"tracking_id":"FF-1","name":"pageview","timestamp":"2026-11-26T10:00:00+05:30",
                    "props":{"a":1,"b":"x","c":true},"revenue":{"amount":12.5,"currency":"inr"}}),
            &l,
        )
        .unwrap();
        let utc = chrono::DateTime::parse_from_rfc3339("2026-11-26T04:30:00Z").unwrap();
        assert_eq!(e.timestamp, Some(utc.timestamp_millis()));
        assert_eq!(e.revenue.unwrap().currency, "INR");
        assert!(e.interactive);
        let code = |v: Value| parse_event(&v, &l).unwrap_err().code;
        assert_eq!(code(json!({"tracking_id":"FF-1"})), "missing_name");
        assert_eq!(code(json!({"name":"x"})), "missing_tracking_id");
        assert_eq!(code(json!({"tracking_id":"FF-1","name":5})), "wrong_type");
        assert_eq!(
            code(json!({"tracking_id":"FF-1","name":"x".repeat(121)})),
            "field_too_long"
        );
        assert_eq!(
            code(json!({"tracking_id":"FF-1","name":"x","timestamp":"yesterday"})),
            "invalid_timestamp"
        );
        assert_eq!(
            code(json!({"tracking_id":"FF-1","name":"x","props":{"a":[1]}})),
            "wrong_type"
        );
    }
}
