//! Sessionisation and rollup updates: the core of Footfall's numbers.
//!
//! State is kept per log partition. Every visitor's events live in one partition, so the
//! state of a partition depends only on that partition's records in log order: replaying
//! a partition from a checkpoint reproduces exactly the same state, whatever the
//! interleaving with other partitions.
//!
//! A visitor's recent visits are kept as summaries. An event joins every visit it is
//! within the session gap of (so a late event can extend a visit or join two); the old
//! contributions of those visits are retracted from the rollups and the merged visit is
//! added. The result equals sessionising the same events sorted by time, as long as the
//! visits it touches are still held (see `lateness_ms`).

use std::collections::hash_map::Entry;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use chrono_tz::Tz;
use footfall_enrich::{attribution, UaCache};
use footfall_event::{url_path, EventView, Millis, PropValueView};
use footfall_store::rollup::local_time;
use footfall_store::{
    Bucket, EventStats, IdMap, KeyMap, LocalHour, PropertyRollup, Rollups, VisitKey, VisitStats,
    SEP,
};
use serde::{Deserialize, Serialize};

pub use footfall_enrich::DIRECT;

#[derive(Debug, Clone, Copy)]
pub struct SessionRules {
    /// A visit ends after this long without events (gaps under it continue the visit).
    pub gap_ms: Millis,
    /// How long a visit is kept after its last event arrived, so that late events can
    /// still extend or join it; measured against the partition's watermark (latest
    /// receive time).
    pub lateness_ms: Millis,
}

impl Default for SessionRules {
    fn default() -> Self {
        Self {
            gap_ms: 30 * 60 * 1000,
            lateness_ms: 72 * 3600 * 1000,
        }
    }
}

/// Summary of one visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    pub start: Millis,
    pub end: Millis,
    pub pageviews: u32,
    pub events: u32,
    /// Custom (non-pageview) events marked interactive.
    pub interactive_custom: u32,
    /// Time and path of the first page view.
    pub entry: Option<(Millis, Box<str>)>,
    /// Time and path of the last page view when it is not the first; `None` means the
    /// exit is the entry (saves a string for the many single-page visits).
    pub exit: Option<(Millis, Box<str>)>,
    /// Time of the earliest event and the visit's attributes taken from it (a
    /// [`VisitKey`]: source, referrer, channel, UTM tags, browser, OS, device, geo),
    /// shared between the visits that have the same ones.
    pub source: (Millis, Arc<str>),
    /// Latest receive time of the visit's events: visits are forgotten a lateness bound
    /// after they were last touched, so back-filled history sessionises like live data.
    pub touched: Millis,
    /// Local start hour the visit's contribution was added under (kept so retraction
    /// hits the same bucket even if the property's zone changed meanwhile).
    /// As a [`LocalHour`] number; 32 bits reach the year 246,000 and keep the struct
    /// at 112 bytes.
    pub bucket: i32,
}

impl Visit {
    /// `visit:source`, the first attribute of the key.
    pub fn source_name(&self) -> &str {
        VisitKey::field(&self.source.1, 0)
    }

    pub fn is_bounce(&self) -> bool {
        self.pageviews == 1 && self.interactive_custom == 0
    }

    pub fn bucket(&self) -> LocalHour {
        LocalHour(self.bucket as i64)
    }

    /// The last page view (time, path).
    pub fn exit_page(&self) -> Option<(Millis, &str)> {
        self.exit
            .as_ref()
            .or(self.entry.as_ref())
            .map(|(t, p)| (*t, &**p))
    }

    fn merge(mut self, o: Visit) -> Visit {
        self.start = self.start.min(o.start);
        self.end = self.end.max(o.end);
        self.pageviews += o.pageviews;
        self.events += o.events;
        self.interactive_custom += o.interactive_custom;
        self.touched = self.touched.max(o.touched);
        let self_exit = self.exit.take().or_else(|| self.entry.clone());
        let o_exit = o.exit.or_else(|| o.entry.clone());
        self.entry = match (self.entry, o.entry) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let exit = match (self_exit, o_exit) {
            (Some(a), Some(b)) => Some(if b.0 >= a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        self.exit = exit.filter(|e| self.entry.as_ref() != Some(e));
        if o.source.0 < self.source.0 {
            self.source = o.source;
        }
        self
    }
}

/// The `visit:source` of an event: a campaign source in the URL (`utm_source`, `ref`,
/// `source`), else the referrer's host without `www.` unless it is the page's own host,
/// else [`DIRECT`].
pub fn source_of(url: Option<&str>, referrer: Option<&str>) -> String {
    attribution(url, referrer).source
}

fn intern(keys: &mut HashSet<Arc<str>>, key: String) -> Arc<str> {
    if let Some(k) = keys.get(key.as_str()) {
        return k.clone();
    }
    let k: Arc<str> = key.into();
    keys.insert(k.clone());
    k
}

/// Visit keys by the fields they are computed from (URL, referrer, user agent, address
/// prefix): a new visit whose first event repeats a recent one's gets the same shared key
/// without attribution, user-agent fields, geo lookup and interning again. A memo, not
/// state; bounded: emptied when full and at every clean-up of the shared keys.
#[derive(Default)]
struct KeyMemo {
    table: hashbrown::HashTable<MemoEntry>,
    hasher: foldhash::fast::RandomState,
}

struct MemoEntry {
    hash: u64,
    /// The inputs back to back; `ends[i]` is where input `i` stops (`u32::MAX`: absent).
    inputs: Box<str>,
    ends: [u32; 4],
    key: Arc<str>,
}

/// What a visit key is computed from, in [`visit_key`]'s terms.
type KeyInputs<'a> = [Option<&'a str>; 4];

const KEY_MEMO_ENTRIES: usize = 8192;

impl MemoEntry {
    fn matches(&self, inputs: &KeyInputs<'_>) -> bool {
        let mut start = 0;
        for (input, &end) in inputs.iter().zip(&self.ends) {
            match (input, end) {
                (None, u32::MAX) => {}
                (Some(s), end) if end != u32::MAX => {
                    let end = end as usize;
                    if self.inputs.as_bytes().get(start..end) != Some(s.as_bytes()) {
                        return false;
                    }
                    start = end;
                }
                _ => return false,
            }
        }
        true
    }
}

impl KeyMemo {
    fn hash(&self, inputs: &KeyInputs<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(inputs)
    }

    fn get(&self, hash: u64, inputs: &KeyInputs<'_>) -> Option<&Arc<str>> {
        self.table
            .find(hash, |e| e.hash == hash && e.matches(inputs))
            .map(|e| &e.key)
    }

    fn insert(&mut self, hash: u64, inputs: &KeyInputs<'_>, key: Arc<str>) {
        if self.table.len() >= KEY_MEMO_ENTRIES {
            self.table.clear();
        }
        let mut all = String::new();
        let mut ends = [u32::MAX; 4];
        for (input, end) in inputs.iter().zip(&mut ends) {
            if let Some(s) = input {
                all.push_str(s);
                *end = all.len() as u32;
            }
        }
        let entry = MemoEntry {
            hash,
            inputs: all.into(),
            ends,
            key,
        };
        self.table.insert_unique(hash, entry, |e| e.hash);
    }

    fn clear(&mut self) {
        self.table.clear();
    }
}

impl Clone for KeyMemo {
    /// A clone starts empty: the memo only repeats a pure function.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMemo({} entries)", self.table.len())
    }
}

/// The [`VisitKey`] of a visit whose first event is `ev`.
pub(crate) fn visit_key(ev: &EventView<'_>, ua: &footfall_enrich::UaInfo) -> String {
    // Reads url, referrer, user_agent (as `ua`) and ip_prefix: the memo's `KeyInputs`.
    let a = attribution(ev.url, ev.referrer);
    let geo = footfall_enrich::global().geo(ev.ip_prefix);
    let [us, um, uc, uo, ut] = &a.utm;
    VisitKey::join([
        a.source.as_str(),
        a.referrer.as_str(),
        a.channel,
        us,
        um,
        uc,
        uo,
        ut,
        ua.browser.as_str(),
        ua.browser_version.as_str(),
        ua.os.as_str(),
        ua.os_version.as_str(),
        ua.device,
        geo.country.as_str(),
        geo.region.as_str(),
        geo.city.as_str(),
    ])
}

/// Local hours of UTC instants, remembered per UTC quarter hour (a memo; not state).
/// A quarter hour is remembered only when its first and last millisecond have the same
/// offset and the same local hour, so every instant inside it has that hour too.
#[derive(Debug, Clone, Default)]
struct HourMemo {
    entries: [Option<(Tz, i64, LocalHour)>; 4],
}

const QUARTER_HOUR_MS: i64 = 15 * 60 * 1000;

impl HourMemo {
    fn get(&mut self, tz: &Tz, ms: Millis) -> LocalHour {
        let slot = ms.div_euclid(QUARTER_HOUR_MS);
        let i = slot.rem_euclid(4) as usize;
        if let Some((t, s, h)) = self.entries[i] {
            if s == slot && t == *tz {
                return h;
            }
        }
        let hour = LocalHour::from_naive(local_time(tz, ms));
        let (lo, hi) = (slot * QUARTER_HOUR_MS, (slot + 1) * QUARTER_HOUR_MS - 1);
        let (l, h) = (local_time(tz, lo), local_time(tz, hi));
        let same_offset = (h - l).num_milliseconds() == hi - lo;
        if same_offset && LocalHour::from_naive(l) == hour && LocalHour::from_naive(h) == hour {
            self.entries[i] = Some((*tz, slot, hour));
        }
        hour
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionState {
    /// Latest receive time seen in this partition.
    pub watermark: Millis,
    last_sweep: Millis,
    /// Visits per visitor (visitor ids already include the property), sorted by start.
    pub visitors: IdMap<Vec<Visit>>,
    /// (receive time, visitor) entries, roughly in arrival order, at least one per
    /// visitor with visits: expiry pops from the front instead of scanning every
    /// visitor. An entry is added when a visit is created or merged (not on every event);
    /// a popped visitor that still has visits is queued again. Rebuilt on load.
    #[serde(skip)]
    expiry: VecDeque<(Millis, u64)>,
    /// Parsed user agents (a memo; not state).
    #[serde(skip)]
    ua: UaCache,
    #[serde(skip)]
    hours: HourMemo,
    /// Visit keys shared by open visits; entries no visit holds are dropped at sweeps.
    #[serde(skip)]
    keys: HashSet<Arc<str>>,
    #[serde(skip)]
    key_memo: KeyMemo,
    /// Size of `keys` after its last clean-up: it is scanned again only once it has
    /// doubled, so the scan costs O(1) per key interned rather than a pass per sweep.
    #[serde(skip)]
    keys_kept: usize,
}

impl PartitionState {
    /// Rebuilds what is not serialised after a load: visit keys shared again (decoding
    /// gives every visit its own copy) and the expiry queue.
    fn rebuild_indexes(&mut self) {
        let mut keys = std::mem::take(&mut self.keys);
        for vs in self.visitors.values_mut() {
            for v in vs {
                match keys.get(&v.source.1) {
                    Some(k) => v.source.1 = k.clone(),
                    None => {
                        keys.insert(v.source.1.clone());
                    }
                }
            }
        }
        self.keys = keys;
        let mut all: Vec<(Millis, u64)> = self
            .visitors
            .iter()
            .map(|(id, vs)| (vs.iter().map(|v| v.touched).min().unwrap_or(0), *id))
            .collect();
        all.sort_unstable();
        self.expiry = all.into();
    }

    /// Forgets visits no late event may touch any more (once a minute of watermark).
    fn maybe_expire(&mut self, rules: &SessionRules) {
        if self.watermark - self.last_sweep > 60_000 {
            self.last_sweep = self.watermark;
            self.expire(self.watermark - rules.lateness_ms - rules.gap_ms);
            if self.keys.len() > 2 * self.keys_kept + 1024 {
                // The memo holds keys too; it must let go of them to see which are unused.
                self.key_memo.clear();
                self.keys.retain(|k| Arc::strong_count(k) > 1);
                self.keys_kept = self.keys.len();
            }
        }
    }

    /// Loads ahead what expiring the next visitors will touch: each is a cache miss
    /// otherwise (visitors are expired about three days after their last event). The
    /// visitor 8 places ahead has its visits fetched; the one 4 ahead, found in cache
    /// by then, has the page strings that dropping its visits will free.
    #[inline]
    fn prefetch_expiring(&self, horizon: Millis) {
        let due = |k: usize| {
            self.expiry
                .get(k)
                .filter(|(t, _)| *t < horizon)
                .and_then(|(_, id)| self.visitors.get(id))
        };
        if let Some(vs) = due(8) {
            prefetch(vs.as_ptr());
        }
        if let Some(v) = due(4).and_then(|vs| vs.first()) {
            if let Some((_, p)) = &v.entry {
                prefetch(p.as_ptr());
            }
            if let Some((_, p)) = &v.exit {
                prefetch(p.as_ptr());
            }
        }
    }

    /// Forgets visits last touched before `horizon`.
    fn expire(&mut self, horizon: Millis) {
        while let Some(&(t, id)) = self.expiry.front() {
            if t >= horizon {
                break;
            }
            self.expiry.pop_front();
            self.prefetch_expiring(horizon);
            if let Entry::Occupied(mut o) = self.visitors.entry(id) {
                let vs = o.get_mut();
                vs.retain(|v| v.touched >= horizon);
                if vs.is_empty() {
                    o.remove();
                } else {
                    let next = vs.iter().map(|v| v.touched).min().unwrap_or(horizon);
                    vs.shrink_to_fit();
                    self.expiry.push_back((next, id));
                }
            }
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint; never faults).
#[inline]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally: any address is allowed.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The processor's state: one [`PartitionState`] per log partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionState {
    pub partitions: Vec<PartitionState>,
}

impl SessionState {
    pub fn new(partitions: usize) -> Self {
        Self {
            partitions: vec![PartitionState::default(); partitions],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("serialising to memory cannot fail")
    }

    /// Streams the encoding of [`Self::encode`] into `w`.
    pub fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        postcard::to_io(self, w)
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut s: Self = postcard::from_bytes(bytes)?;
        for p in &mut s.partitions {
            p.rebuild_indexes();
        }
        Ok(s)
    }

    /// Approximate heap bytes of the state: hash tables, visit vectors and strings.
    pub fn approx_heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let s = |x: &str| x.len();
        self.partitions
            .iter()
            .map(|p| {
                let table =
                    p.visitors.capacity() * (size_of::<u64>() + size_of::<Vec<Visit>>() + 1);
                let visits: usize = p
                    .visitors
                    .values()
                    .map(|vs| {
                        vs.capacity() * size_of::<Visit>()
                            + vs.iter()
                                .map(|v| {
                                    v.entry.as_ref().map(|e| s(&e.1)).unwrap_or(0)
                                        + v.exit.as_ref().map(|e| s(&e.1)).unwrap_or(0)
                                })
                                .sum::<usize>()
                    })
                    .sum();
                // Shared visit keys: each string once, plus its Arc header and slot.
                let keys: usize = p.keys.iter().map(|k| k.len() + 16 + 17).sum();
                table + visits + keys + p.expiry.capacity() * size_of::<(Millis, u64)>()
            })
            .sum()
    }

    pub fn open_visits(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.visitors.values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

fn add_event(b: &mut EventStats, pageview: bool, visitor: u64) {
    b.events += 1;
    b.pageviews += pageview as u64;
    b.visitors.insert(visitor);
}

fn stats_entry<'a, V: Default>(map: &'a mut KeyMap<V>, key: &str) -> &'a mut V {
    // Looks up by &str; the key is allocated only for a new entry.
    map.entry_ref(key).or_default()
}

/// The change of a visit's counters when an event extends it in place (same start
/// bucket, source and entry page, so the same groups and the same visitor).
#[derive(Clone, Copy)]
struct VisitDelta {
    bounces: i64,
    duration_ms: i64,
    pageviews: i64,
    events: i64,
}

fn apply_delta(v: &mut VisitStats, d: VisitDelta) {
    v.bounces += d.bounces;
    v.duration_ms += d.duration_ms;
    v.pageviews += d.pageviews;
    v.events += d.events;
}

/// Runs `f` on every bucket a write to hour `h` must reach (see
/// [`PropertyRollup::buckets_mut`]).
fn each_bucket(prop: &mut PropertyRollup, h: LocalHour, mut f: impl FnMut(&mut Bucket)) {
    let (hour, day) = prop.buckets_mut(h);
    f(hour);
    if let Some(day) = day {
        f(day);
    }
}

fn contribute_delta(prop: &mut PropertyRollup, visit: &Visit, d: VisitDelta) {
    each_bucket(prop, visit.bucket(), |b| delta_bucket(b, visit, d));
}

fn delta_bucket(b: &mut Bucket, visit: &Visit, d: VisitDelta) {
    apply_delta(&mut b.visits, d);
    apply_delta(stats_entry(&mut b.sources, visit.source_name()), d);
    apply_delta(stats_entry(&mut b.visit_keys, &visit.source.1), d);
    if let Some((_, page)) = &visit.entry {
        apply_delta(stats_entry(&mut b.entry_pages, page), d);
    }
}

fn apply_visit(v: &mut VisitStats, visit: &Visit, sign: i64, visitor: u64) {
    v.visits += sign;
    v.bounces += sign * visit.is_bounce() as i64;
    v.duration_ms += sign * (visit.end - visit.start);
    v.pageviews += sign * visit.pageviews as i64;
    v.events += sign * visit.events as i64;
    if sign > 0 {
        v.visitors.insert(visitor);
    } else {
        v.visitors.remove(visitor);
    }
}

fn apply_keyed(map: &mut KeyMap<VisitStats>, key: &str, visit: &Visit, sign: i64, visitor: u64) {
    let e = stats_entry(map, key);
    apply_visit(e, visit, sign, visitor);
    if e.is_zero() {
        map.remove(key);
    }
}

fn contribute(prop: &mut PropertyRollup, visit: &Visit, sign: i64, visitor: u64) {
    each_bucket(prop, visit.bucket(), |b| {
        contribute_bucket(b, visit, sign, visitor)
    });
}

fn contribute_bucket(b: &mut Bucket, visit: &Visit, sign: i64, visitor: u64) {
    apply_visit(&mut b.visits, visit, sign, visitor);
    apply_keyed(&mut b.sources, visit.source_name(), visit, sign, visitor);
    apply_keyed(&mut b.visit_keys, &visit.source.1, visit, sign, visitor);
    if let Some((_, page)) = &visit.entry {
        apply_keyed(&mut b.entry_pages, page, visit, sign, visitor);
    }
}

impl SessionState {
    /// Applies one event of `partition` to the session state and the rollups.
    pub fn apply(
        &mut self,
        partition: usize,
        ev: &EventView<'_>,
        tz: &Tz,
        rules: &SessionRules,
        rollups: &mut Rollups,
    ) {
        let ps = &mut self.partitions[partition];
        ps.watermark = ps.watermark.max(ev.received_at);
        let prop = rollups.property_mut(ev.property);
        let hour = ps.hours.get(tz, ev.timestamp);
        let ua = ps.ua.get(ev.user_agent);
        // Bots, and browser-style traffic naming no browser, stay in the log and archive
        // but out of every statistic; only counted.
        if let Some(reason) = ua.filtered(ev.server_side) {
            let key = format!("bot:{reason}");
            each_bucket(prop, hour, |b| {
                *stats_entry(&mut b.filtered, &key) += 1;
            });
            return;
        }
        let pageview = ev.is_pageview();
        let page = ev.url.map(url_path);
        let page = page.as_deref();
        // Composite keys are built once, for both the hour and the day bucket.
        let prop_keys: Vec<String> = ev
            .props
            .iter()
            .map(|(k, v)| match v {
                PropValueView::Str(s) => format!("{k}{SEP}{s}"),
                PropValueView::Num(n) => format!("{k}{SEP}{n}"),
                PropValueView::Bool(x) => format!("{k}{SEP}{x}"),
            })
            .collect();
        let revenue = ev.revenue.as_ref().map(|r| {
            (
                format!("{}{SEP}{}", ev.name, r.currency),
                (r.amount * 1e6).round() as i64,
            )
        });

        // Event-level statistics, by the event's own local time.
        prop.count_minute(ev.timestamp, pageview, ev.visitor);
        // Kept for the visit's update below when the visit started in the same hour (most
        // do), which then needs no second bucket lookup.
        let (hour_bucket, mut day_bucket) = prop.buckets_mut(hour);
        for b in std::iter::once(&mut *hour_bucket).chain(day_bucket.as_deref_mut()) {
            add_event(&mut b.events, pageview, ev.visitor);
            if let Some(p) = &page {
                add_event(stats_entry(&mut b.pages, p), pageview, ev.visitor);
            }
            add_event(stats_entry(&mut b.names, ev.name), pageview, ev.visitor);
            for k in &prop_keys {
                add_event(stats_entry(&mut b.props, k), pageview, ev.visitor);
            }
            if let Some((key, micros)) = &revenue {
                *stats_entry(&mut b.revenue, key) += micros;
            }
        }

        // Visit-level statistics.
        let t = ev.timestamp;
        let gap = rules.gap_ms;
        let visits = ps
            .visitors
            .entry(ev.visitor)
            .or_insert_with(|| Vec::with_capacity(1));
        let touching = |v: &Visit| t - v.end < gap && v.start - t < gap;
        let first = visits.iter().position(touching);
        let count = first.map_or(0, |i| {
            visits[i..].iter().take_while(|v| touching(v)).count()
        });
        // Fast path: the event extends one visit without moving its start, source or
        // entry page; only counters change, by a delta.
        if let (Some(i), 1) = (first, count) {
            let v = &mut visits[i];
            let entry_kept = !pageview || v.entry.as_ref().is_some_and(|(et, _)| *et <= t);
            if t >= v.start && entry_kept {
                let was_bounce = v.is_bounce() as i64;
                let old_duration = v.end - v.start;
                v.end = v.end.max(t);
                v.pageviews += pageview as u32;
                v.events += 1;
                v.interactive_custom += (!pageview && ev.interactive) as u32;
                v.touched = v.touched.max(ev.received_at);
                if pageview {
                    if let (Some(p), Some((last, _))) = (page, v.exit_page()) {
                        if t >= last {
                            match v.exit.as_mut() {
                                Some(exit) => {
                                    exit.0 = t;
                                    if *exit.1 != *p {
                                        exit.1 = p.into();
                                    }
                                }
                                None => v.exit = Some((t, p.into())),
                            }
                        }
                    }
                }
                let d = VisitDelta {
                    bounces: v.is_bounce() as i64 - was_bounce,
                    duration_ms: (v.end - v.start) - old_duration,
                    pageviews: pageview as i64,
                    events: 1,
                };
                if v.bucket() == hour {
                    delta_bucket(hour_bucket, v, d);
                    if let Some(day) = day_bucket {
                        delta_bucket(day, v, d);
                    }
                } else {
                    contribute_delta(prop, v, d);
                }
                ps.maybe_expire(rules);
                return;
            }
        }
        // General path: retract every visit the event touches, merge, add the result.
        let inputs: KeyInputs<'_> = [ev.url, ev.referrer, ev.user_agent, ev.ip_prefix];
        let hash = ps.key_memo.hash(&inputs);
        let key = match ps.key_memo.get(hash, &inputs) {
            Some(k) => k.clone(),
            None => {
                let k = intern(&mut ps.keys, visit_key(ev, ua));
                ps.key_memo.insert(hash, &inputs, k.clone());
                k
            }
        };
        let mut merged = Visit {
            start: t,
            end: t,
            pageviews: pageview as u32,
            events: 1,
            interactive_custom: (!pageview && ev.interactive) as u32,
            entry: page.filter(|_| pageview).map(|p| (t, p.into())),
            exit: None,
            source: (t, key),
            touched: ev.received_at,
            bucket: 0,
        };
        if let Some(i) = first {
            for old in visits.drain(i..i + count).collect::<Vec<_>>() {
                contribute(prop, &old, -1, ev.visitor);
                merged = old.merge(merged);
            }
            merged.bucket = ps.hours.get(tz, merged.start).0 as i32;
            contribute(prop, &merged, 1, ev.visitor);
        } else {
            // A new visit starts at this event: in the event's hour.
            merged.bucket = hour.0 as i32;
            contribute_bucket(hour_bucket, &merged, 1, ev.visitor);
            if let Some(day) = day_bucket {
                contribute_bucket(day, &merged, 1, ev.visitor);
            }
        }
        let pos = visits.partition_point(|v| v.start < merged.start);
        visits.reserve_exact(1); // most visitors hold one or two visits: no slack
        visits.insert(pos, merged);
        ps.expiry.push_back((ev.received_at, ev.visitor));
        ps.maybe_expire(rules);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_local_hours_equal_computed_ones() {
        // Zones with half- and quarter-hour offsets and with daylight saving, over a
        // month of transitions, every 7 minutes and odd milliseconds, in an order that
        // revisits slots; and Monrovia in 1971, whose offset (−0:44:30) puts local hour
        // boundaries inside UTC quarter hours, which must then not be remembered.
        let at = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        };
        for (zone, start) in [
            ("America/New_York", at("2026-03-07T00:00:00Z")),
            ("Asia/Kolkata", at("2026-03-07T00:00:00Z")),
            ("Asia/Kathmandu", at("2026-03-07T00:00:00Z")),
            ("Australia/Lord_Howe", at("2026-03-07T00:00:00Z")),
            ("Europe/London", at("2026-03-07T00:00:00Z")),
            ("UTC", at("2026-03-07T00:00:00Z")),
            ("Africa/Monrovia", at("1971-06-01T00:00:00Z")),
        ] {
            let tz: Tz = zone.parse().unwrap();
            let mut memo = HourMemo::default();
            for i in 0..31 * 24 * 60 / 7 {
                for back in [0, 3 * 3_600_000 + 999] {
                    let ms = start + i * 7 * 60_000 + 17 - back;
                    assert_eq!(
                        memo.get(&tz, ms),
                        LocalHour::from_naive(local_time(&tz, ms)),
                        "{zone} at {ms}"
                    );
                }
            }
        }
    }

    #[test]
    fn remembered_visit_keys_equal_computed_ones() {
        // Every combination of present and absent inputs, inputs whose concatenations are
        // equal (the memo must tell where each ends), each combination twice (the second
        // from the memo) and a memo overflowing its bound; every new visit's key must be
        // the one computed directly.
        use footfall_event::LoggedEvent;
        let urls = [
            None,
            Some("https://a.com/x?utm_source=news&utm_medium=email"),
            Some("https://a.com/ab"),
            Some("https://a.com/a"),
        ];
        let referrers = [None, Some("https://www.google.com/"), Some("c"), Some("bc")];
        let agents = [
            None,
            Some("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
        ];
        let ips = [None, Some("203.0.113.0"), Some("")];
        let mut events = Vec::new();
        for round in 0..2 {
            for u in urls {
                for r in referrers {
                    for a in agents {
                        for i in ips {
                            events.push((u.map(String::from), r.map(String::from), a, i, round));
                        }
                    }
                }
            }
        }
        for n in 0..KEY_MEMO_ENTRIES + 10 {
            let u = format!("https://a.com/p?utm_source=s{}", n % (KEY_MEMO_ENTRIES + 3));
            events.push((Some(u), None, agents[1], ips[1], 2));
        }
        let mut state = SessionState::new(1);
        let mut rollups = Rollups::default();
        let mut ua = UaCache::default();
        for (n, (url, referrer, agent, ip, _)) in events.into_iter().enumerate() {
            let e = LoggedEvent {
                property: "FF-T".into(),
                received_at: 1_000 + n as i64,
                timestamp: 1_000 + n as i64,
                visitor: n as u64 + 1,
                name: "pageview".into(),
                url,
                referrer,
                title: None,
                props: Default::default(),
                revenue: None,
                interactive: true,
                user_agent: agent.map(String::from),
                ip_prefix: ip.map(String::from),
                server_side: false,
            };
            let v = e.view();
            state.apply(0, &v, &Tz::UTC, &SessionRules::default(), &mut rollups);
            let held = &state.partitions[0].visitors[&e.visitor][0].source.1;
            let direct = visit_key(&v, ua.get(v.user_agent));
            assert_eq!(**held, *direct, "event {n}: {e:?}");
        }
    }

    #[test]
    fn visit_summary_stays_small() {
        assert_eq!(std::mem::size_of::<Visit>(), 112);
    }

    #[test]
    fn sources() {
        assert_eq!(source_of(Some("https://a.com/"), None), DIRECT);
        assert_eq!(
            source_of(
                Some("https://a.com/"),
                Some("https://www.google.com/search")
            ),
            "google.com"
        );
        assert_eq!(
            source_of(Some("https://a.com/x"), Some("https://a.com/")),
            DIRECT
        );
        assert_eq!(
            source_of(
                Some("https://a.com/?utm_source=newsletter"),
                Some("https://t.co/x")
            ),
            "newsletter"
        );
    }
}
