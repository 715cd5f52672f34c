//! Events with their visits, for the columnar files (raw events in columns).
//!
//! The rollups keep counts by one dimension at a time; the columnar files keep every
//! event with the attributes of the visit it belongs to, so that any filter combines with
//! any breakdown. Both must give the same numbers, so the visit rules here are the
//! processor's: a visit is a visitor's events with less than `gap_ms` between
//! neighbours; its attributes ([`VisitKey`]) come from its earliest event, computed by
//! the same function the live path uses; its entry page is its first page view and its
//! exit page its last; it is a bounce when it has one page view and no interactive
//! custom event. Bots are left out, as from every statistic.
//!
//! This is a batch pass over a span of events: visits are cut where the span is cut, so
//! callers read a margin around the days they keep (see `footfall-columnar`).

use std::borrow::Cow;
use std::sync::Arc;

use footfall_enrich::UaCache;
use footfall_event::{url_host, url_path, EventView, Millis, PropValueView};

use crate::sessions::visit_key;

/// One visit, shared by its events' rows. Strings borrow from the events where they can.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitRow<'a> {
    pub start: Millis,
    pub end: Millis,
    pub pageviews: u32,
    pub events: u32,
    pub bounce: bool,
    pub entry_page: Option<Cow<'a, str>>,
    pub exit_page: Option<Cow<'a, str>>,
    /// The hosts of the entry and exit pages.
    pub entry_hostname: Option<Cow<'a, str>>,
    pub exit_hostname: Option<Cow<'a, str>>,
    /// The visit's attributes as a [`footfall_store::VisitKey`] (fields in
    /// [`footfall_store::VISIT_FIELDS`] order).
    pub key: Arc<str>,
}

/// One event and its visit.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow<'a> {
    pub timestamp: Millis,
    pub visitor: u64,
    pub name: &'a str,
    pub pageview: bool,
    /// The path of the event's URL (as `event:page`), and its host.
    pub page: Option<Cow<'a, str>>,
    pub hostname: Option<Cow<'a, str>>,
    /// Custom properties, values as text (as the rollups key them).
    pub props: Vec<(&'a str, Cow<'a, str>)>,
    /// Revenue: currency and millionths of a unit.
    pub revenue: Option<(&'a str, i64)>,
    /// Whether this row is its visit's earliest event: visit-level figures count the
    /// rows that are (one per visit).
    pub visit_first: bool,
    /// The event's place in its visit (0 for the first), in time order, ties in log order:
    /// what "later in the visit" means for funnels.
    pub visit_seq: u32,
    pub visit: Arc<VisitRow<'a>>,
}

/// Sessionises `events` (any order; ties in time keep their given order) into rows, in
/// visitor then time order.
pub fn event_rows<'a>(events: &[EventView<'a>], gap_ms: i64) -> Vec<EventRow<'a>> {
    let mut ua = UaCache::default();
    // (visitor, time, position): sorted, a visitor's events in time order with ties in
    // the given order — one sort instead of a list per visitor.
    let mut order: Vec<(u64, Millis, u32)> = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        if ua.get(e.user_agent).filtered(e.server_side).is_some() {
            continue;
        }
        order.push((e.visitor, e.timestamp, i as u32));
    }
    order.sort_unstable();
    let mut out = Vec::with_capacity(order.len());
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len()
            && order[end].0 == order[start].0
            && order[end].1 - order[end - 1].1 < gap_ms
        {
            end += 1;
        }
        push_visit(events, &order[start..end], &mut ua, &mut out);
        start = end;
    }
    out
}

/// An event's page path and host.
type Place<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>);

fn push_visit<'a>(
    events: &[EventView<'a>],
    visit: &[(u64, Millis, u32)],
    ua: &mut UaCache,
    out: &mut Vec<EventRow<'a>>,
) {
    let event = |k: usize| &events[visit[k].2 as usize];
    let (first, last) = (event(0), event(visit.len() - 1));
    // Each event's page and host, worked out once for the visit and its rows.
    let places: Vec<Place<'a>> = (0..visit.len())
        .map(|k| {
            let u = event(k).url;
            (u.map(url_path), u.and_then(url_host))
        })
        .collect();
    let mut pageviews = 0u32;
    let mut interactive_custom = 0u32;
    let (mut entry, mut exit) = (None, None);
    for k in 0..visit.len() {
        let e = event(k);
        if e.is_pageview() {
            pageviews += 1;
            if e.url.is_some() {
                entry = entry.or(Some(k));
                exit = Some(k);
            }
        } else if e.interactive {
            interactive_custom += 1;
        }
    }
    let info = ua.get(first.user_agent).clone();
    let visit_row = Arc::new(VisitRow {
        start: first.timestamp,
        end: last.timestamp,
        pageviews,
        events: visit.len() as u32,
        bounce: pageviews == 1 && interactive_custom == 0,
        entry_page: entry.and_then(|k| places[k].0.clone()),
        exit_page: exit.and_then(|k| places[k].0.clone()),
        entry_hostname: entry.and_then(|k| places[k].1.clone()),
        exit_hostname: exit.and_then(|k| places[k].1.clone()),
        key: visit_key(first, &info).into(),
    });
    for (n, (page, hostname)) in places.into_iter().enumerate() {
        let e = event(n);
        out.push(EventRow {
            timestamp: e.timestamp,
            visitor: e.visitor,
            name: e.name,
            pageview: e.is_pageview(),
            page,
            hostname,
            props: e
                .props
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        PropValueView::Str(s) => Cow::Borrowed(*s),
                        PropValueView::Num(n) => Cow::Owned(n.to_string()),
                        PropValueView::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
                    };
                    (*k, v)
                })
                .collect(),
            revenue: e
                .revenue
                .as_ref()
                .map(|r| (r.currency, (r.amount * 1e6).round() as i64)),
            visit_first: n == 0,
            visit_seq: n as u32,
            visit: visit_row.clone(),
        });
    }
}
