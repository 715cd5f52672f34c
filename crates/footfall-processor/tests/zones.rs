//! Local day boundaries per named time zone, with explicit expected values: a visit
//! that starts at 23:50 local and continues past midnight belongs to its start day, and
//! daylight-saving days have 23 and 25 hours.

use chrono::{Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;
use footfall_event::LoggedEvent;
use footfall_processor::{SessionRules, SessionState};
use footfall_store::{RollupStore, SnapshotStore};
use serde_json::{json, Value};

const SITE: &str = "FF-ZONES";

struct Harness {
    tz: Tz,
    _dir: tempfile::TempDir,
    store: SnapshotStore,
    state: SessionState,
}

impl Harness {
    fn new(zone: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            tz: zone.parse().unwrap(),
            store: SnapshotStore::open(dir.path()).unwrap(),
            _dir: dir,
            state: SessionState::new(1),
        }
    }

    fn local_ms(&self, date: (i32, u32, u32), h: u32, m: u32) -> i64 {
        let naive = NaiveDate::from_ymd_opt(date.0, date.1, date.2)
            .unwrap()
            .and_hms_opt(h, m, 0)
            .unwrap();
        self.tz
            .from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .timestamp_millis()
    }

    fn pageview(&mut self, visitor: u64, ts: i64, page: &str) {
        let e = LoggedEvent {
            property: SITE.into(),
            received_at: ts + 1000,
            timestamp: ts,
            visitor,
            name: "pageview".into(),
            url: Some(format!("https://shop.example{page}")),
            referrer: None,
            title: None,
            props: Default::default(),
            revenue: None,
            interactive: true,
            user_agent: None,
            ip_prefix: None,
            server_side: false,
        };
        let (tz, rules) = (self.tz, SessionRules::default());
        let state = &mut self.state;
        self.store
            .update(&mut |r| state.apply(0, &e.view(), &tz, &rules, r));
    }

    fn query(&self, metrics: Value, dims: Value, range: Value) -> Value {
        let req = serde_json::from_value(
            json!({"site_id": SITE, "metrics": metrics, "dimensions": dims, "date_range": range}),
        )
        .unwrap();
        footfall_query::execute(&req, self.tz, &self.store, 0).unwrap()["results"].clone()
    }
}

fn midnight_visit(zone: &str, offset_label: &str) {
    let mut h = Harness::new(zone);
    let start = h.local_ms((2026, 11, 20), 23, 50);
    h.pageview(1, start, "/a");
    h.pageview(1, start + 15 * 60_000, "/b"); // 00:05 next day
    h.pageview(1, start + 40 * 60_000, "/c"); // 00:30
    h.pageview(2, h.local_ms((2026, 11, 21), 0, 0), "/"); // exactly local midnight
    let r = h.query(
        json!(["visits", "pageviews", "visit_duration", "visitors"]),
        json!(["time:day"]),
        json!(["2026-11-20", "2026-11-21"]),
    );
    assert_eq!(
        r,
        json!([
            {"dimensions": ["2026-11-20"], "metrics": [1, 1, 2400, 1]},
            {"dimensions": ["2026-11-21"], "metrics": [1, 3, 0, 2]},
        ]),
        "{zone} ({offset_label})"
    );
    let hours = h.query(
        json!(["pageviews"]),
        json!(["time:hour"]),
        json!(["2026-11-20", "2026-11-21"]),
    );
    assert_eq!(
        hours,
        json!([
            {"dimensions": ["2026-11-20 23:00:00"], "metrics": [1]},
            {"dimensions": ["2026-11-21 00:00:00"], "metrics": [3]},
        ]),
        "{zone} ({offset_label})"
    );
}

#[test]
fn india_plus_0530() {
    midnight_visit("Asia/Kolkata", "UTC+05:30");
}

#[test]
fn newfoundland_minus_0330() {
    midnight_visit("America/St_Johns", "UTC−03:30 in November");
}

#[test]
fn nepal_plus_0545() {
    midnight_visit("Asia/Kathmandu", "UTC+05:45");
}

#[test]
fn utc_and_a_dst_zone_outside_transitions() {
    midnight_visit("UTC", "UTC");
    midnight_visit("America/New_York", "UTC−05:00");
}

/// One page view per real hour across a local day, each by a new visitor.
fn hourly_through(zone: &str, day: (i32, u32, u32)) -> (Value, Value) {
    let mut h = Harness::new(zone);
    let from = h.local_ms(day, 0, 0);
    let next = {
        let d = NaiveDate::from_ymd_opt(day.0, day.1, day.2)
            .unwrap()
            .succ_opt()
            .unwrap();
        h.local_ms((d.year(), d.month(), d.day()), 0, 0)
    };
    let mut t = from;
    let mut v = 1;
    while t < next {
        h.pageview(v, t + 60_000, "/");
        t += 3_600_000;
        v += 1;
    }
    let date = format!("{:04}-{:02}-{:02}", day.0, day.1, day.2);
    let days = h.query(
        json!(["pageviews", "visits"]),
        json!(["time:day"]),
        json!([date, date]),
    );
    let hours = h.query(
        json!(["pageviews"]),
        json!(["time:hour"]),
        json!([date, date]),
    );
    (days, hours)
}

#[test]
fn dst_days_have_23_and_25_hours() {
    // London springs forward on 2026-03-29 (01:00 → 02:00): 23 real hours.
    let (days, hours) = hourly_through("Europe/London", (2026, 3, 29));
    assert_eq!(
        days,
        json!([{"dimensions": ["2026-03-29"], "metrics": [23, 23]}])
    );
    let labels: Vec<&str> = hours
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dimensions"][0].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 23);
    assert!(
        !labels.contains(&"2026-03-29 01:00:00"),
        "the skipped hour has no row"
    );
    // London falls back on 2026-10-25 (02:00 → 01:00): 25 real hours; the repeated
    // 01:00 hour is one row holding both.
    let (days, hours) = hourly_through("Europe/London", (2026, 10, 25));
    assert_eq!(
        days,
        json!([{"dimensions": ["2026-10-25"], "metrics": [25, 25]}])
    );
    let rows = hours.as_array().unwrap();
    assert_eq!(rows.len(), 24);
    let one = rows
        .iter()
        .find(|r| r["dimensions"][0] == "2026-10-25 01:00:00")
        .unwrap();
    assert_eq!(one["metrics"], json!([2]));
    // New York: 23 hours on 2026-03-08, 25 on 2026-11-01.
    assert_eq!(
        hourly_through("America/New_York", (2026, 3, 8)).0[0]["metrics"],
        json!([23, 23])
    );
    assert_eq!(
        hourly_through("America/New_York", (2026, 11, 1)).0[0]["metrics"],
        json!([25, 25])
    );
}
