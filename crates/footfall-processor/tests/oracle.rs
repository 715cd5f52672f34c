//! Property tests: random event sets fed through the real processor (in any arrival
//! order within the lateness bound, with duplicates) answer every supported query
//! exactly as the batch oracle computes it from the same events sorted by time.
//!
//! Cases: PROPTEST_CASES (default 10000, about 10 s). Long run:
//! `PROPTEST_CASES=100000 cargo test --release -p footfall-processor --test oracle`.

use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;
use footfall_event::LoggedEvent;
use footfall_processor::{SessionRules, SessionState};
use footfall_store::{MemoryBudget, RollupStore, SnapshotStore};
use footfall_testkit::{check::check_report, local, report, OEvent};
use proptest::prelude::*;
use serde_json::Value;

const SITE: &str = "FF-PROPTEST";
const MIN: i64 = 60_000;
const GAP: i64 = 30 * MIN;

const ZONES: &[&str] = &[
    "UTC",
    "Asia/Kolkata",        // +05:30
    "America/St_Johns",    // −03:30, −02:30 in summer
    "Asia/Kathmandu",      // +05:45
    "Europe/London",       // DST: 23- and 25-hour days
    "America/New_York",    // DST
    "Australia/Lord_Howe", // a 30-minute DST shift
];

/// Instants near which events are generated: DST transitions and a local midnight.
fn anchors(tz: Tz) -> Vec<i64> {
    [
        (2026, 3, 8, 2),
        (2026, 3, 29, 1),
        (2026, 10, 25, 1),
        (2026, 11, 1, 1),
        (2026, 4, 5, 2),
        (2026, 11, 26, 0),
    ]
    .into_iter()
    .map(|(y, m, d, h)| {
        let naive = NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, 0, 0)
            .unwrap();
        // The local instant when it exists; inside a DST gap, the UTC reading (close by).
        tz.from_local_datetime(&naive)
            .earliest()
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| naive.and_utc().timestamp_millis())
    })
    .collect()
}

#[derive(Debug, Clone)]
struct Case {
    zone: &'static str,
    events: Vec<OEvent>,
    /// Arrival order (indices into `events`).
    order: Vec<usize>,
}

/// Time to the visitor's next event; 0 means "an exact duplicate of the previous one".
fn step_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(GAP - 1),
        Just(GAP),
        Just(GAP + 1),
        1_000i64..5 * MIN,
        5 * MIN..GAP,
        GAP..6 * 60 * MIN,
        Just(0),
    ]
}

/// Referrer, expected source and channel (by the rules of docs/METRICS.md).
const REFERRERS: [Option<(&str, &str, &str)>; 4] = [
    None,
    Some(("https://www.google.com/", "google.com", "Organic Search")),
    Some(("https://t.co/x", "t.co", "Organic Social")),
    Some(("https://shop.example/self", "Direct / None", "Direct")),
];

/// Per event: (time step, kind, page, referrer).
type Steps = Vec<(i64, u8, u8, u8)>;

fn build(base: i64, visitors: &[(i64, Steps)]) -> Vec<OEvent> {
    let mut events: Vec<OEvent> = Vec::new();
    for (vi, (offset, steps)) in visitors.iter().enumerate() {
        let mut t = base + offset;
        let mut last: Option<OEvent> = None;
        for &(step, kind, page, refi) in steps {
            if step == 0 {
                if let Some(l) = &last {
                    events.push(l.clone()); // a client retry: the same event twice
                    continue;
                }
            }
            t += step.max(1_000);
            let (name, interactive) = match kind {
                0..=4 => ("pageview", true),
                5 | 6 => ("Signup", true),
                _ => ("Ping", false),
            };
            let r = REFERRERS[refi as usize];
            let page = format!("/p{page}");
            let e = OEvent {
                visitor: format!("v{vi}"),
                ts: t,
                name: name.into(),
                url: Some(format!("https://shop.example{page}")),
                referrer: r.map(|x| x.0.to_string()),
                page: Some(page),
                source: r.map(|x| x.1).unwrap_or("Direct / None").to_string(),
                channel: r.map(|x| x.2).unwrap_or("Direct").to_string(),
                interactive,
            };
            last = Some(e.clone());
            events.push(e);
        }
    }
    events
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let visitor = (
        -(12 * 60 * MIN)..(12 * 60 * MIN),
        prop::collection::vec((step_strategy(), 0u8..8, 0u8..5, 0u8..4), 1..14),
    );
    (
        prop::sample::select(ZONES),
        0usize..6,
        prop::collection::vec(visitor, 1..6),
    )
        .prop_flat_map(|(zone, anchor, visitors)| {
            let tz: Tz = zone.parse().unwrap();
            let events = build(anchors(tz)[anchor], &visitors);
            let order: Vec<usize> = (0..events.len()).collect();
            (Just(zone), Just(events), Just(order).prop_shuffle())
        })
        .prop_map(|(zone, events, order)| Case {
            zone,
            events,
            order,
        })
}

/// Every clean day leaves memory at each checkpoint: later events (late ones,
/// retractions) reach days that must be loaded back from their files first.
const NOTHING_RESIDENT: MemoryBudget = MemoryBudget {
    resident_bytes: 0,
    keep_newest_days: 0,
    read_cache_bytes: 1 << 20,
    cold_hours_on_disk: true,
};

/// Every clean day's hours leave memory at each checkpoint; day buckets stay.
const HOURS_ON_DISK: MemoryBudget = MemoryBudget {
    resident_bytes: u64::MAX,
    ..NOTHING_RESIDENT
};

fn run_case(case: &Case, evicting: bool) {
    let tz: Tz = case.zone.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = if evicting {
        // Half the cases evict whole days, half only their hours.
        let budget = if case.order.len() % 2 == 0 {
            NOTHING_RESIDENT
        } else {
            HOURS_ON_DISK
        };
        SnapshotStore::open_with(dir.path(), budget).unwrap()
    } else {
        SnapshotStore::open(dir.path()).unwrap()
    };
    let rules = SessionRules::default();
    let partitions = 3;
    let mut state = SessionState::new(partitions);
    let max_ts = case.events.iter().map(|e| e.ts).max().unwrap();
    // Everything arrives after the latest event time, within the lateness bound; with
    // eviction, in slices with a checkpoint after each.
    let slice = if evicting {
        case.order.len().div_ceil(4).max(1)
    } else {
        case.order.len().max(1)
    };
    for (n, chunk) in case.order.chunks(slice).enumerate() {
        store.update(&mut |rollups| {
            for (k, &i) in chunk.iter().enumerate() {
                let arrival = n * slice + k;
                let e = &case.events[i];
                let visitor = footfall_testkit::visitor_hash(&e.visitor);
                let logged = LoggedEvent {
                    property: SITE.into(),
                    received_at: max_ts + 1_000 + arrival as i64,
                    timestamp: e.ts,
                    visitor,
                    name: e.name.clone(),
                    url: e.url.clone(),
                    referrer: e.referrer.clone(),
                    title: None,
                    props: Default::default(),
                    revenue: None,
                    interactive: e.interactive,
                    user_agent: None,
                    ip_prefix: None,
                    server_side: false,
                };
                let p = (visitor % partitions as u64) as usize;
                state.apply(p, &logged.view(), &tz, &rules, rollups);
            }
        });
        if evicting {
            store
                .checkpoint(&[0], &footfall_store::state_bytes(&[]))
                .unwrap();
        }
    }
    let from = local(&tz, case.events.iter().map(|e| e.ts).min().unwrap()).date();
    let to = local(&tz, max_ts).date();
    let r = report(&case.events, tz, GAP, from, to);
    let mut run = |q: Value| -> Value {
        let req: footfall_query::QueryRequest = serde_json::from_value(q.clone()).unwrap();
        footfall_query::execute(&req, tz, &store, max_ts)
            .unwrap_or_else(|e| panic!("query {q} failed: {e}"))
    };
    check_report(&mut run, SITE, &r, from, to);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn streaming_equals_batch_oracle(case in case_strategy()) {
        run_case(&case, false);
    }

    #[test]
    fn streaming_with_days_evicted_equals_batch_oracle(case in case_strategy()) {
        run_case(&case, true);
    }
}
