//! Test support: the batch oracle every streaming result is checked against, and event
//! generators.
//!
//! The oracle is deliberately plain: sort each visitor's events by time, cut visits at
//! gaps of `gap_ms` or more, and count with exact sets. It shares no code with the
//! processor. Its definitions are those of docs/METRICS.md.

pub mod check;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A raw event as the oracle sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OEvent {
    /// Stable visitor identifier (what the client sent as `client_id`).
    pub visitor: String,
    /// Event time, ms since the epoch.
    pub ts: i64,
    pub name: String,
    /// What is sent: the full URL and referrer.
    pub url: Option<String>,
    pub referrer: Option<String>,
    /// Expected `event:page` (URL path), `visit:source` and `visit:channel` of this event
    /// (written by hand from the rules of docs/METRICS.md, not computed by product code).
    pub page: Option<String>,
    pub source: String,
    pub channel: String,
    pub interactive: bool,
}

impl OEvent {
    pub fn is_pageview(&self) -> bool {
        self.name == "pageview"
    }
}

/// Exact statistics of a group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Event level (by event time).
    pub visitors: BTreeSet<String>,
    pub pageviews: u64,
    pub events: u64,
    /// Visit level (visits that started in the group).
    pub visits: i64,
    pub bounces: i64,
    pub duration_ms: i64,
    pub visit_pageviews: i64,
    pub visit_events: i64,
    pub visit_visitors: BTreeSet<String>,
}

impl Stats {
    pub fn bounce_rate(&self) -> i64 {
        if self.visits == 0 {
            0
        } else {
            (100.0 * self.bounces as f64 / self.visits as f64).round() as i64
        }
    }
    /// Mean visit duration in whole seconds.
    pub fn visit_duration(&self) -> i64 {
        if self.visits == 0 {
            0
        } else {
            (self.duration_ms as f64 / self.visits as f64 / 1000.0).round() as i64
        }
    }
    pub fn views_per_visit(&self) -> f64 {
        if self.visits == 0 {
            0.0
        } else {
            (self.visit_pageviews as f64 / self.visits as f64 * 100.0).round() / 100.0
        }
    }
}

/// One visit, as the oracle cuts it.
#[derive(Debug, Clone)]
pub struct OVisit {
    pub visitor: String,
    pub start: i64,
    pub end: i64,
    pub pageviews: i64,
    pub events: i64,
    pub interactive_custom: i64,
    pub entry_page: Option<String>,
    pub source: String,
    pub channel: String,
}

impl OVisit {
    pub fn is_bounce(&self) -> bool {
        self.pageviews == 1 && self.interactive_custom == 0
    }
}

/// A numeric visitor id for an oracle visitor (what the collector's identity hash would
/// give): any mapping that keeps visitors distinct will do; FNV-1a.
pub fn visitor_hash(v: &str) -> u64 {
    v.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Cuts visits: a visitor's events sorted by time, a new visit at every gap ≥ `gap_ms`.
pub fn visits(events: &[OEvent], gap_ms: i64) -> Vec<OVisit> {
    let mut by_visitor: HashMap<&str, Vec<&OEvent>> = HashMap::new();
    for e in events {
        by_visitor.entry(&e.visitor).or_default().push(e);
    }
    let mut out = Vec::new();
    for (v, mut evs) in by_visitor {
        evs.sort_by_key(|e| e.ts);
        let mut current: Vec<&OEvent> = Vec::new();
        let mut flush = |cur: &mut Vec<&OEvent>| {
            if cur.is_empty() {
                return;
            }
            let pvs: Vec<&&OEvent> = cur.iter().filter(|e| e.is_pageview()).collect();
            out.push(OVisit {
                visitor: v.to_string(),
                start: cur[0].ts,
                end: cur.last().unwrap().ts,
                pageviews: pvs.len() as i64,
                events: cur.len() as i64,
                interactive_custom: cur
                    .iter()
                    .filter(|e| !e.is_pageview() && e.interactive)
                    .count() as i64,
                entry_page: pvs.first().and_then(|e| e.page.clone()),
                source: cur[0].source.clone(),
                channel: cur[0].channel.clone(),
            });
            cur.clear();
        };
        for e in evs {
            if let Some(last) = current.last() {
                if e.ts - last.ts >= gap_ms {
                    flush(&mut current);
                }
            }
            current.push(e);
        }
        flush(&mut current);
    }
    out
}

pub fn local(tz: &Tz, ms: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(tz)
        .naive_local()
}

/// Every report the query API offers, over local dates `[from, to]`.
#[derive(Debug, Default)]
pub struct Report {
    pub total: Stats,
    pub days: BTreeMap<NaiveDate, Stats>,
    /// Local wall-clock hour starts.
    pub hours: BTreeMap<NaiveDateTime, Stats>,
    /// Keyed by the local week's Monday.
    pub weeks: BTreeMap<NaiveDate, Stats>,
    /// Keyed by the local month's first day.
    pub months: BTreeMap<NaiveDate, Stats>,
    pub pages: BTreeMap<String, Stats>,
    pub names: BTreeMap<String, Stats>,
    pub sources: BTreeMap<String, Stats>,
    pub channels: BTreeMap<String, Stats>,
    pub entry_pages: BTreeMap<String, Stats>,
}

pub fn report(events: &[OEvent], tz: Tz, gap_ms: i64, from: NaiveDate, to: NaiveDate) -> Report {
    let mut r = Report::default();
    let in_range = |t: &NaiveDateTime| t.date() >= from && t.date() <= to;
    let hour_of = |t: NaiveDateTime| t.date().and_hms_opt(t.hour(), 0, 0).unwrap();
    let week_of = |t: NaiveDateTime| {
        t.date() - chrono::Duration::days(t.date().weekday().num_days_from_monday() as i64)
    };
    let month_of = |t: NaiveDateTime| t.date().with_day(1).unwrap();
    fn count_event(g: &mut Stats, e: &OEvent) {
        g.visitors.insert(e.visitor.clone());
        g.events += 1;
        g.pageviews += e.is_pageview() as u64;
    }
    fn count_visit(g: &mut Stats, v: &OVisit) {
        g.visits += 1;
        g.bounces += v.is_bounce() as i64;
        g.duration_ms += v.end - v.start;
        g.visit_pageviews += v.pageviews;
        g.visit_events += v.events;
        g.visit_visitors.insert(v.visitor.clone());
    }
    for e in events {
        let t = local(&tz, e.ts);
        if !in_range(&t) {
            continue;
        }
        count_event(&mut r.total, e);
        count_event(r.days.entry(t.date()).or_default(), e);
        count_event(r.hours.entry(hour_of(t)).or_default(), e);
        count_event(r.weeks.entry(week_of(t)).or_default(), e);
        count_event(r.months.entry(month_of(t)).or_default(), e);
        if let Some(p) = &e.page {
            count_event(r.pages.entry(p.clone()).or_default(), e);
        }
        count_event(r.names.entry(e.name.clone()).or_default(), e);
    }
    for v in visits(events, gap_ms) {
        let t = local(&tz, v.start);
        if !in_range(&t) {
            continue;
        }
        count_visit(&mut r.total, &v);
        count_visit(r.days.entry(t.date()).or_default(), &v);
        count_visit(r.hours.entry(hour_of(t)).or_default(), &v);
        count_visit(r.weeks.entry(week_of(t)).or_default(), &v);
        count_visit(r.months.entry(month_of(t)).or_default(), &v);
        count_visit(r.sources.entry(v.source.clone()).or_default(), &v);
        count_visit(r.channels.entry(v.channel.clone()).or_default(), &v);
        if let Some(p) = &v.entry_page {
            count_visit(r.entry_pages.entry(p.clone()).or_default(), &v);
        }
    }
    r
}

/// Parameters of generated traffic.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub seed: u64,
    pub visitors: usize,
    /// Events are spread over `[start_ms, start_ms + span_ms)`.
    pub start_ms: i64,
    pub span_ms: i64,
    pub max_visits_per_visitor: usize,
    pub host: String,
}

/// Referrer, campaign tags of the landing URL, expected source and channel.
type Acquisition = (
    Option<&'static str>,
    &'static str,
    &'static str,
    &'static str,
);

const REFERRERS: &[Acquisition] = &[
    (None, "", "Direct / None", "Direct"),
    (None, "", "Direct / None", "Direct"),
    (
        Some("https://www.google.com/search?q=x"),
        "",
        "google.com",
        "Organic Search",
    ),
    (
        Some("https://duckduckgo.com/"),
        "",
        "duckduckgo.com",
        "Organic Search",
    ),
    (Some("https://t.co/abc"), "", "t.co", "Organic Social"),
    (
        Some("https://news.ycombinator.com/item?id=1"),
        "",
        "news.ycombinator.com",
        "Organic Social",
    ),
    (
        Some("https://blog.example.net/post?id=1"),
        "",
        "blog.example.net",
        "Referral",
    ),
    (
        None,
        "&utm_source=newsletter&utm_medium=email",
        "newsletter",
        "Email",
    ),
    (
        Some("https://www.google.com/"),
        "&gclid=Cj0KCQ",
        "google.com",
        "Paid Search",
    ),
];

/// Visitors with single- and multi-page visits, custom events (some non-interactive),
/// gaps on both sides of 30 minutes, spread over several days. Per visitor, timestamps
/// are distinct so that entry pages are unambiguous.
pub fn generate(spec: &GenSpec) -> Vec<OEvent> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut out = Vec::new();
    for v in 0..spec.visitors {
        let visitor = format!("visitor-{}-{v}", spec.seed);
        let mut t = spec.start_ms + rng.random_range(0..spec.span_ms.max(1));
        let n_visits = 1 + rng.random_range(0..spec.max_visits_per_visitor.max(1));
        for _ in 0..n_visits {
            let (referrer, tags, source, channel) = REFERRERS[rng.random_range(0..REFERRERS.len())];
            let n = if rng.random_bool(0.4) {
                1
            } else {
                rng.random_range(2..8)
            };
            for i in 0..n {
                let custom = i > 0 && rng.random_bool(0.2);
                let page = format!(
                    "/p{}",
                    (rng.random_range(1..60u32) as f64).powf(1.5) as u32 / 7
                );
                out.push(OEvent {
                    visitor: visitor.clone(),
                    ts: t,
                    name: if custom {
                        "Signup".into()
                    } else {
                        "pageview".into()
                    },
                    url: Some(format!(
                        "https://{}{page}?x={i}{}",
                        spec.host,
                        if i == 0 { tags } else { "" }
                    )),
                    referrer: if i == 0 {
                        referrer.map(String::from)
                    } else {
                        None
                    },
                    page: Some(page),
                    // Only the first event carries the referrer; the others are direct.
                    source: if i == 0 {
                        source.into()
                    } else {
                        "Direct / None".into()
                    },
                    channel: if i == 0 { channel } else { "Direct" }.into(),
                    interactive: !(custom && rng.random_bool(0.5)),
                });
                // Within a visit: up to just under 30 minutes, edge cases included.
                t += match rng.random_range(0..10) {
                    0 => 30 * 60_000 - 1,
                    1 => 1000 + rng.random_range(0..1000),
                    _ => rng.random_range(5_000..20 * 60_000),
                };
            }
            // Between visits: 30 minutes exactly (a new visit) up to a few hours.
            t += match rng.random_range(0..4) {
                0 => 30 * 60_000,
                _ => rng.random_range(31 * 60_000..6 * 3_600_000),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(visitor: &str, ts_min: i64, name: &str, page: &str) -> OEvent {
        OEvent {
            visitor: visitor.into(),
            ts: ts_min * 60_000,
            name: name.into(),
            url: None,
            referrer: None,
            page: Some(page.into()),
            source: "Direct / None".into(),
            channel: "Direct".into(),
            interactive: true,
        }
    }

    #[test]
    fn oracle_cuts_at_thirty_minutes() {
        let evs = vec![
            e("a", 0, "pageview", "/"),
            e("a", 29, "pageview", "/x"),
            e("a", 59, "pageview", "/y"), // gap 30 → new visit
            e("b", 10, "pageview", "/"),
            e("b", 12, "Signup", "/"),
        ];
        let vs = visits(&evs, 30 * 60_000);
        assert_eq!(vs.len(), 3);
        let r = report(
            &evs,
            chrono_tz::UTC,
            30 * 60_000,
            NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
        );
        assert_eq!(r.total.visits, 3);
        assert_eq!(
            r.total.bounces, 1,
            "a's second visit; b's has an interactive event"
        );
        assert_eq!(r.total.visitors.len(), 2);
        assert_eq!(r.total.duration_ms, 29 * 60_000 + 2 * 60_000);
    }
}
