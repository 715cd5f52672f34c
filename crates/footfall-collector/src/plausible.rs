//! Plausible's Events API (`POST /api/event`): `n`/`name`, `u`/`url`, `d`/`domain`
//! (comma-separated; each names the properties listing that domain), `r`/`referrer`,
//! `p`/`props` (an object or a JSON string), `$`/`revenue`, `i`/`interactive`, `h`
//! (hash-based routing).

use footfall_event::native::{parse_props, parse_revenue, NativeEvent, Rejection};
use serde_json::{json, Value};

/// One request: the event (without its property, which the domains name; or why it
/// cannot be one) and the domains it goes to.
pub struct Request {
    pub event: Result<NativeEvent, Rejection>,
    /// Lower case, without `www.`.
    pub domains: Vec<String>,
}

/// A request Plausible would refuse as a whole: the field and the message of its
/// `{"errors": {field: [message]}}` answer.
pub type Refusal = (&'static str, String);

/// Reads a request body.
pub fn parse(body: &[u8]) -> Result<Request, Refusal> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ("request", format!("invalid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or(("request", "must be a JSON object".to_string()))?;
    let get = |short: &str, long: &str| {
        o.get(long)
            .or_else(|| o.get(short))
            .filter(|x| !x.is_null())
    };
    let blank = |field: &'static str| (field, "can't be blank".to_string());
    let name = get("n", "name")
        .and_then(Value::as_str)
        .ok_or_else(|| blank("name"))?;
    let url = get("u", "url")
        .and_then(Value::as_str)
        .ok_or_else(|| blank("url"))?;
    let domains = get("d", "domain")
        .and_then(Value::as_str)
        .ok_or_else(|| blank("domain"))?;
    // Hash-based routing (`h`): the route in the fragment is part of the page, joined to
    // the path as the tracker's `data-hash` does (`/app#/settings` → `/app/settings`).
    let hash_routing = get("h", "hashMode")
        .is_some_and(|h| h.as_bool().unwrap_or(false) || h.as_i64().unwrap_or(0) != 0);
    let url = if hash_routing {
        hash_route_url(url)
    } else {
        url.to_string()
    };
    let props = match get("p", "props") {
        Some(Value::String(s)) => Some(
            serde_json::from_str::<Value>(s)
                .map_err(|_| ("props", "is not valid JSON".to_string()))?,
        ),
        p => p.cloned(),
    };
    let event = (|| {
        let mut e = NativeEvent::new(String::new(), name);
        e.url = Some(url);
        e.props = parse_props(props.as_ref())?;
        if let Some(r) = get("$", "revenue") {
            let amount = match &r["amount"] {
                Value::String(s) => s.parse::<f64>().ok().map(|a| json!(a)),
                x => Some(x.clone()),
            };
            e.revenue = parse_revenue(Some(&json!({"amount": amount, "currency": r["currency"]})))?;
        }
        match get("r", "referrer") {
            None => {}
            Some(Value::String(r)) => e.referrer = Some(r.clone()),
            Some(_) => return Err(Rejection::new("wrong_type", "`referrer` must be a string")),
        }
        match get("i", "interactive") {
            None => {}
            Some(Value::Bool(b)) => e.interactive = *b,
            Some(_) => {
                return Err(Rejection::new(
                    "wrong_type",
                    "`interactive` must be a boolean",
                ))
            }
        }
        Ok(e)
    })();
    let domains = domains
        .split(',')
        .map(|d| {
            let d = d.trim().to_ascii_lowercase();
            d.strip_prefix("www.").map(String::from).unwrap_or(d)
        })
        .collect();
    Ok(Request { event, domains })
}

/// `https://x.com/app?q=1#/settings/a` → `https://x.com/app/settings/a?q=1`.
pub fn hash_route_url(url: &str) -> String {
    let Some((base, frag)) = url.split_once('#') else {
        return url.to_string();
    };
    let route = frag.trim_start_matches('/');
    if route.is_empty() {
        return base.to_string();
    }
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut out = format!("{}/{route}", path.trim_end_matches('/'));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_one_event_for_its_domains() {
        let r = parse(br#"{"n":"pageview","u":"https://a.example/x#/b","h":1,"d":"www.A.example, b.example","p":"{\"plan\":\"pro\"}","$":{"amount":"9.5","currency":"eur"}}"#).unwrap();
        assert_eq!(r.domains, vec!["a.example", "b.example"]);
        let e = r.event.unwrap();
        assert_eq!(e.url.as_deref(), Some("https://a.example/x/b"));
        assert_eq!(e.props.len(), 1);
        assert_eq!(e.revenue.unwrap().amount, 9.5);
        assert_eq!(parse(br#"{"n":"x","d":"a"}"#).err().unwrap().0, "url");
        let bad = parse(br#"{"n":"x","u":"https://a/","d":"a","i":"yes"}"#).unwrap();
        assert_eq!(bad.event.unwrap_err().code, "wrong_type");
    }
}
