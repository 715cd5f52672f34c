//! The comparison of query results with the oracle, shared by every test that checks
//! numbers (in-process property tests and HTTP end-to-end tests).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::{json, Value};

use crate::Report;

/// Visitors are exact up to 1,000 distinct (in fact up to 2,048) and within 2% above.
pub fn assert_visitors(got: &Value, exact: usize, what: &str) {
    let got = got
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: visitors {got} is not a count"));
    if exact <= 1000 {
        assert_eq!(got, exact as u64, "{what}: visitors must be exact");
    } else {
        let err = (got as f64 - exact as f64).abs() / exact as f64;
        assert!(
            err <= 0.02,
            "{what}: visitors {got} vs exact {exact} ({:.2}% off)",
            err * 100.0
        );
    }
}

fn rows_by_dim(v: &Value) -> BTreeMap<String, Vec<Value>> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap().to_string(),
                r["metrics"].as_array().unwrap().clone(),
            )
        })
        .collect()
}

/// Compares every supported report over `[from, to]` with the oracle. `query` runs one
/// query body and returns the response body.
pub fn check_report(
    query: &mut dyn FnMut(Value) -> Value,
    site_id: &str,
    r: &Report,
    from: NaiveDate,
    to: NaiveDate,
) {
    let range = json!([from.to_string(), to.to_string()]);
    let q = |metrics: Value, dims: Value| {
        json!({"site_id": site_id, "metrics": metrics, "date_range": range, "dimensions": dims,
               "pagination": {"limit": 1_000_000}})
    };

    // Totals.
    let v = query(q(
        json!([
            "visitors",
            "visits",
            "pageviews",
            "events",
            "bounce_rate",
            "visit_duration",
            "views_per_visit"
        ]),
        json!([]),
    ));
    let m = &v["results"][0]["metrics"];
    assert_visitors(&m[0], r.total.visitors.len(), "total");
    assert_eq!(m[1], json!(r.total.visits), "total visits");
    assert_eq!(m[2], json!(r.total.pageviews), "total pageviews");
    assert_eq!(m[3], json!(r.total.events), "total events");
    assert_eq!(m[4], json!(r.total.bounce_rate()), "total bounce_rate");
    assert_eq!(
        m[5],
        json!(r.total.visit_duration()),
        "total visit_duration"
    );
    assert_eq!(
        m[6].as_f64().unwrap(),
        r.total.views_per_visit(),
        "total views_per_visit"
    );

    // Per day.
    let v = query(q(
        json!([
            "visitors",
            "visits",
            "pageviews",
            "events",
            "bounce_rate",
            "visit_duration",
            "views_per_visit"
        ]),
        json!(["time:day"]),
    ));
    let got = rows_by_dim(&v);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        r.days.keys().map(|d| d.to_string()).collect::<Vec<_>>(),
        "days with data"
    );
    for (d, s) in &r.days {
        let m = &got[&d.to_string()];
        assert_visitors(&m[0], s.visitors.len(), &format!("day {d}"));
        assert_eq!(
            (&m[1], &m[2], &m[3], &m[4], &m[5], m[6].as_f64().unwrap()),
            (
                &json!(s.visits),
                &json!(s.pageviews),
                &json!(s.events),
                &json!(s.bounce_rate()),
                &json!(s.visit_duration()),
                s.views_per_visit()
            ),
            "day {d}: visits, pageviews, events, bounce_rate, visit_duration, views_per_visit"
        );
    }

    // Per week and per month.
    for (dim, expected) in [("time:week", &r.weeks), ("time:month", &r.months)] {
        let v = query(q(
            json!(["visitors", "visits", "pageviews", "bounce_rate"]),
            json!([dim]),
        ));
        let got = rows_by_dim(&v);
        // A range that starts mid-week labels its first week with its first day.
        let label = |d: &NaiveDate| match dim {
            "time:week" => (*d).max(from).to_string(),
            _ => d.to_string(),
        };
        assert_eq!(
            got.keys().cloned().collect::<Vec<_>>(),
            expected.keys().map(label).collect::<Vec<_>>(),
            "{dim}: groups with data"
        );
        for (d, s) in expected {
            let m = &got[&label(d)];
            assert_visitors(&m[0], s.visitors.len(), &format!("{dim} {d}"));
            assert_eq!(
                (&m[1], &m[2], &m[3]),
                (
                    &json!(s.visits),
                    &json!(s.pageviews),
                    &json!(s.bounce_rate())
                ),
                "{dim} {d}: visits, pageviews, bounce_rate"
            );
        }
    }

    // Per hour: counts.
    let v = query(q(json!(["pageviews", "visits"]), json!(["time:hour"])));
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.hours.len(), "hours with data");
    for (h, s) in &r.hours {
        let m = &got[&h.format("%Y-%m-%d %H:%M:%S").to_string()];
        assert_eq!(
            (&m[0], &m[1]),
            (&json!(s.pageviews), &json!(s.visits)),
            "hour {h}"
        );
    }

    // Per page.
    let v = query(q(
        json!(["visitors", "pageviews", "events"]),
        json!(["event:page"]),
    ));
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.pages.len(), "pages");
    for (p, s) in &r.pages {
        let m = &got[p];
        assert_visitors(&m[0], s.visitors.len(), &format!("page {p}"));
        assert_eq!(
            (&m[1], &m[2]),
            (&json!(s.pageviews), &json!(s.events)),
            "page {p}"
        );
    }

    // Per event name.
    let v = query(q(json!(["events", "visitors"]), json!(["event:name"])));
    let got = rows_by_dim(&v);
    for (n, s) in &r.names {
        assert_eq!(got[n][0], json!(s.events), "name {n}");
        assert_visitors(&got[n][1], s.visitors.len(), &format!("name {n}"));
    }

    // Per source and entry page (visit level).
    let v = query(q(
        json!([
            "visitors",
            "visits",
            "bounce_rate",
            "visit_duration",
            "pageviews",
            "views_per_visit"
        ]),
        json!(["visit:source"]),
    ));
    let got = rows_by_dim(&v);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        r.sources.keys().collect::<Vec<_>>(),
        "sources"
    );
    for (k, s) in &r.sources {
        let m = &got[k];
        assert_visitors(&m[0], s.visit_visitors.len(), &format!("source {k}"));
        assert_eq!(
            (&m[1], &m[2], &m[3], &m[4], m[5].as_f64().unwrap()),
            (
                &json!(s.visits),
                &json!(s.bounce_rate()),
                &json!(s.visit_duration()),
                &json!(s.visit_pageviews),
                s.views_per_visit()
            ),
            "source {k}"
        );
    }
    // Per channel (from the visit keys).
    let v = query(q(
        json!(["visitors", "visits", "bounce_rate", "visit_duration"]),
        json!(["visit:channel"]),
    ));
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.channels.len(), "channels: {v}");
    for (k, s) in &r.channels {
        let m = &got[k];
        assert_visitors(&m[0], s.visit_visitors.len(), &format!("channel {k}"));
        assert_eq!(
            (&m[1], &m[2], &m[3]),
            (
                &json!(s.visits),
                &json!(s.bounce_rate()),
                &json!(s.visit_duration())
            ),
            "channel {k}"
        );
    }
    let v = query(q(
        json!(["visits", "bounce_rate"]),
        json!(["visit:entry_page"]),
    ));
    let got = rows_by_dim(&v);
    assert_eq!(got.len(), r.entry_pages.len(), "entry pages");
    for (k, s) in &r.entry_pages {
        assert_eq!(
            (&got[k][0], &got[k][1]),
            (&json!(s.visits), &json!(s.bounce_rate())),
            "entry page {k}"
        );
    }

    // A filter: pageviews of pages containing "/p1", per day, summed over the range.
    let mut fq = q(json!(["pageviews"]), json!(["time:day"]));
    fq["filters"] = json!([["contains", "event:page", ["/p1"]]]);
    let v = query(fq);
    let got = rows_by_dim(&v);
    let total: u64 = got.values().map(|m| m[0].as_u64().unwrap()).sum();
    let want: u64 = r
        .pages
        .iter()
        .filter(|(p, _)| p.contains("/p1"))
        .map(|(_, s)| s.pageviews)
        .sum();
    assert_eq!(total, want, "filtered pageviews");

    // A short top list by visitors (answered without merging every group's sketch) is
    // the head of the full list (answered by merging all of them).
    for dim in [
        "event:page",
        "event:name",
        "visit:source",
        "visit:entry_page",
    ] {
        let metrics = if dim.starts_with("event:") {
            json!(["visitors", "pageviews", "events"])
        } else {
            json!(["visitors", "visits", "bounce_rate"])
        };
        let mut q = json!({"site_id": site_id, "metrics": metrics, "date_range": range, "dimensions": [dim],
            "order_by": [["visitors", "desc"]], "pagination": {"limit": 3}});
        let short = query(q.clone());
        q["pagination"] = json!({"limit": 1_000_000});
        q["include"] = json!({"total_rows": true});
        let full = query(q);
        let head: Vec<Value> = full["results"]
            .as_array()
            .unwrap()
            .iter()
            .take(3)
            .cloned()
            .collect();
        assert_eq!(short["results"], json!(head), "top 3 by visitors of {dim}");
    }
}
