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

use std::collections::HashMap;
use std::sync::Arc;

use footfall_enrich::UaCache;
use footfall_event::{url_host, url_path, EventView, Millis, PropValueView};

use crate::sessions::visit_key;

/// One visit, shared by its events' rows.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitRow {
    pub start: Millis,
    pub end: Millis,
    pub pageviews: u32,
    pub events: u32,
    pub bounce: bool,
    pub entry_page: Option<String>,
    pub exit_page: Option<String>,
    /// The hosts of the entry and exit pages.
    pub entry_hostname: Option<String>,
    pub exit_hostname: Option<String>,
    /// The visit's attributes as a [`footfall_store::VisitKey`] (fields in
    /// [`footfall_store::VISIT_FIELDS`] order).
    pub key: Arc<str>,
}

/// One event and its visit.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub timestamp: Millis,
    pub visitor: u64,
    pub name: String,
    pub pageview: bool,
    /// The path of the event's URL (as `event:page`), and its host.
    pub page: Option<String>,
    pub hostname: Option<String>,
    /// Custom properties, values as text (as the rollups key them).
    pub props: Vec<(String, String)>,
    /// Revenue: currency and millionths of a unit.
    pub revenue: Option<(String, i64)>,
    /// Whether this row is its visit's earliest event: visit-level figures count the
    /// rows that are (one per visit).
    pub visit_first: bool,
    /// The event's place in its visit (0 for the first), in time order, ties in log order:
    /// what "later in the visit" means for funnels.
    pub visit_seq: u32,
    pub visit: Arc<VisitRow>,
}

/// Sessionises `events` (any order; ties in time keep their given order) into rows, in
/// visitor then time order.
pub fn event_rows(events: &[EventView<'_>], gap_ms: i64) -> Vec<EventRow> {
    let mut ua = UaCache::default();
    let mut by_visitor: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if ua.get(e.user_agent).filtered(e.server_side).is_some() {
            continue;
        }
        by_visitor.entry(e.visitor).or_default().push(i);
    }
    let mut visitors: Vec<u64> = by_visitor.keys().copied().collect();
    visitors.sort_unstable();
    let mut out = Vec::with_capacity(events.len());
    for v in visitors {
        let mut idx = by_visitor.remove(&v).unwrap_or_default();
        idx.sort_by_key(|&i| events[i].timestamp); // stable: ties keep log order
        let mut start = 0;
        while start < idx.len() {
            let mut end = start + 1;
            while end < idx.len()
                && events[idx[end]].timestamp - events[idx[end - 1]].timestamp < gap_ms
            {
                end += 1;
            }
            push_visit(events, &idx[start..end], &mut ua, &mut out);
            start = end;
        }
    }
    out
}

fn push_visit(events: &[EventView<'_>], idx: &[usize], ua: &mut UaCache, out: &mut Vec<EventRow>) {
    let first = &events[idx[0]];
    let last = &events[idx[idx.len() - 1]];
    let mut pageviews = 0u32;
    let mut interactive_custom = 0u32;
    let mut entry: Option<String> = None;
    let mut exit: Option<String> = None;
    let (mut entry_host, mut exit_host): (Option<String>, Option<String>) = (None, None);
    for &i in idx {
        let e = &events[i];
        if e.is_pageview() {
            pageviews += 1;
            if let Some(u) = e.url {
                let p = url_path(u).into_owned();
                let h = url_host(u).map(|h| h.into_owned());
                if entry.is_none() {
                    entry = Some(p.clone());
                    entry_host = h.clone();
                }
                exit = Some(p);
                exit_host = h;
            }
        } else if e.interactive {
            interactive_custom += 1;
        }
    }
    let info = ua.get(first.user_agent).clone();
    let visit = Arc::new(VisitRow {
        start: first.timestamp,
        end: last.timestamp,
        pageviews,
        events: idx.len() as u32,
        bounce: pageviews == 1 && interactive_custom == 0,
        entry_page: entry,
        exit_page: exit,
        entry_hostname: entry_host,
        exit_hostname: exit_host,
        key: visit_key(first, &info).into(),
    });
    for (n, &i) in idx.iter().enumerate() {
        let e = &events[i];
        out.push(EventRow {
            timestamp: e.timestamp,
            visitor: e.visitor,
            name: e.name.to_string(),
            pageview: e.is_pageview(),
            page: e.url.map(|u| url_path(u).into_owned()),
            hostname: e.url.and_then(url_host).map(|h| h.into_owned()),
            props: e
                .props
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        PropValueView::Str(s) => s.to_string(),
                        PropValueView::Num(n) => n.to_string(),
                        PropValueView::Bool(b) => b.to_string(),
                    };
                    (k.to_string(), v)
                })
                .collect(),
            revenue: e
                .revenue
                .as_ref()
                .map(|r| (r.currency.to_string(), (r.amount * 1e6).round() as i64)),
            visit_first: n == 0,
            visit_seq: n as u32,
            visit: visit.clone(),
        });
    }
}
