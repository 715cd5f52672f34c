//! The collector role's policy, apart from HTTP: every ingestion protocol is read into
//! typed events ([`NativeEvent`]) straight from its own body — GA4 Measurement Protocol
//! ([`ga4`]), gtag hits ([`gtag`]), Segment ([`segment`]), Plausible ([`plausible`]) and
//! the native format (`footfall_event::native`) — and every event, whatever its
//! protocol, goes through the same validation and admission ([`admit`]) into a log
//! record. The server crate maps requests and answers onto these functions.

pub mod address;
pub mod admit;
pub mod ga4;
pub mod gtag;
pub mod limits;
pub mod plausible;
pub mod segment;

use std::collections::HashMap;

use footfall_event::PropValue;
use serde_json::Value;

pub use address::{client_ip, parse_proxy};
pub use admit::{admit_all, Admitted, IngestRules, Sender};
pub use footfall_event::native::{NativeEvent, Rejection};
pub use limits::{Limit, PropertyLimits};

/// A query string's parameters (later ones win).
pub fn query_map(q: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}

/// A scalar parameter as a prop value; objects and arrays (GA4 `items`) are not props.
pub fn prop_value(v: &Value) -> Option<PropValue> {
    match v {
        Value::String(s) => Some(PropValue::Str(s.clone())),
        Value::Number(n) => Some(PropValue::Num(n.as_f64().unwrap_or(0.0))),
        Value::Bool(b) => Some(PropValue::Bool(*b)),
        _ => None,
    }
}
