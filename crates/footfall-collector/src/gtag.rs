//! gtag browser hits (`/g/collect`): a hit is URL-encoded parameters, in the query string
//! or one per line of a POST body.

use std::collections::{BTreeMap, HashMap};

use footfall_event::native::{NativeEvent, Rejection};
use footfall_event::{PropValue, Revenue, PAGEVIEW};

use crate::query_map;

/// The hits of one request: the query string alone, or one per non-empty body line,
/// each line's parameters overriding the query string's.
pub fn hits(query: &str, body: &str) -> Vec<HashMap<String, String>> {
    let base = query_map(query);
    let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return vec![base];
    }
    lines
        .iter()
        .map(|l| {
            let mut p = base.clone();
            p.extend(query_map(l.trim()));
            p
        })
        .collect()
}

/// One hit's parameters as a typed event.
pub fn event(p: &HashMap<String, String>) -> Result<NativeEvent, Rejection> {
    let tid = p
        .get("tid")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Rejection::new("missing_tracking_id", "`tid` is required"))?;
    let en = p.get("en").map(String::as_str).unwrap_or("page_view");
    let mut props = BTreeMap::new();
    for (k, v) in p {
        if let Some(name) = k.strip_prefix("ep.") {
            props.insert(name.to_string(), PropValue::Str(v.clone()));
        } else if let Some(name) = k.strip_prefix("epn.") {
            let n: f64 = v
                .parse()
                .map_err(|_| Rejection::new("wrong_type", format!("`{k}` must be a number")))?;
            props.insert(name.to_string(), PropValue::Num(n));
        }
    }
    let mut ev = NativeEvent::new(tid.clone(), if en == "page_view" { PAGEVIEW } else { en });
    let nonempty = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    ev.client_id = nonempty("cid");
    ev.url = nonempty("dl");
    ev.referrer = nonempty("dr");
    ev.title = nonempty("dt");
    if let Some(et) = p.get("_et") {
        ev.interactive = et.parse::<f64>().unwrap_or(0.0) > 0.0;
    }
    if matches!(en, "purchase" | "refund") {
        if let (Some(PropValue::Num(v)), Some(cu)) = (props.remove("value"), p.get("cu")) {
            let amount = if en == "refund" { -v.abs() } else { v };
            ev.revenue = Some(Revenue {
                amount,
                currency: cu.clone(),
            });
        }
    }
    ev.props = props;
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtag_hit_mapping() {
        let p = query_map(
            "v=2&tid=FF-1&cid=1.2&en=purchase&dl=https%3A%2F%2Fa.example%2Fx&epn.value=12.5&cu=EUR&ep.coupon=X",
        );
        let e = event(&p).unwrap();
        assert_eq!(e.name, "purchase");
        assert_eq!(
            e.revenue,
            Some(Revenue {
                amount: 12.5,
                currency: "EUR".into()
            })
        );
        assert_eq!(
            e.props,
            BTreeMap::from([("coupon".to_string(), PropValue::Str("X".into()))])
        );
        assert_eq!(e.client_id.as_deref(), Some("1.2"));
        let p = query_map("v=2&tid=FF-1&cid=1&dl=https%3A%2F%2Fa.example%2F");
        assert_eq!(event(&p).unwrap().name, "pageview");
        assert_eq!(
            event(&query_map("v=2&cid=1")).unwrap_err().code,
            "missing_tracking_id"
        );
    }

    #[test]
    fn body_lines_override_the_query_string() {
        let h = hits("tid=FF-1&en=a", "en=b\n\nen=c&dl=x\n");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0]["en"], "b");
        assert_eq!(h[1]["dl"], "x");
        assert_eq!(h[1]["tid"], "FF-1");
        assert_eq!(hits("tid=FF-1", "  ")[0]["tid"], "FF-1");
    }
}
