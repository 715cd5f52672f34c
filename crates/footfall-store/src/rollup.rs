//! The rollup model: what the processor maintains and queries read.
//!
//! Per property, buckets at local hour and local day granularity (in the property's time
//! zone at processing time). Each bucket holds event-level statistics (attributed to the
//! event's own time) and visit-level statistics (attributed to the visit's start).
//! Visit-level counters are signed because the processor retracts a visit's old
//! contribution when a later or late event changes it.

use std::collections::{BTreeMap, BTreeSet};

use crate::maps::KeyMap;

use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use serde::{Deserialize, Serialize};

use crate::hll::{CountingHll, Hll};

/// Event-level statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventStats {
    pub pageviews: u64,
    /// Page views and custom events.
    pub events: u64,
    pub visitors: Hll,
}

impl EventStats {
    pub fn merge(&mut self, o: &EventStats) {
        self.pageviews += o.pageviews;
        self.events += o.events;
        self.visitors.merge(&o.visitors);
    }
}

/// Visit-level statistics of the visits attributed to a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VisitStats {
    pub visits: i64,
    pub bounces: i64,
    /// Sum over visits of (last event time − first event time).
    pub duration_ms: i64,
    /// Page views inside these visits.
    pub pageviews: i64,
    /// Events (page views and custom events) inside these visits.
    pub events: i64,
    /// Visitors of these visits; removal is exact while small (see [`CountingHll`]).
    pub visitors: CountingHll,
}

impl VisitStats {
    pub fn merge(&mut self, o: &VisitStats) {
        self.visits += o.visits;
        self.bounces += o.bounces;
        self.duration_ms += o.duration_ms;
        self.pageviews += o.pageviews;
        self.events += o.events;
        self.visitors.merge(&o.visitors);
    }

    pub fn is_zero(&self) -> bool {
        self.visits == 0
            && self.bounces == 0
            && self.duration_ms == 0
            && self.pageviews == 0
            && self.events == 0
            && self.visitors.is_empty()
    }
}

/// One time bucket of one property.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub events: EventStats,
    pub visits: VisitStats,
    /// By `event:page` (URL path), events that carried a URL.
    pub pages: KeyMap<EventStats>,
    /// By `event:name`.
    pub names: KeyMap<EventStats>,
    /// By `visit:source`, visits that started in this bucket.
    pub sources: KeyMap<VisitStats>,
    /// By `visit:entry_page`, visits with at least one page view.
    pub entry_pages: KeyMap<VisitStats>,
    /// By the visit's whole attribute tuple ([`VisitKey`]): every other `visit:*`
    /// dimension, and combinations of them, are answered by grouping these entries.
    pub visit_keys: KeyMap<VisitStats>,
    /// By `event:props:<key>`: entries keyed `key \x1f value`.
    pub props: KeyMap<EventStats>,
    /// Revenue in millionths of the currency unit, keyed `event name \x1f currency`
    /// (integers, so sums are exact and independent of order).
    pub revenue: KeyMap<i64>,
    /// Events kept out of the statistics, by reason (`bot:crawler-pattern`, …).
    pub filtered: KeyMap<u64>,
}

/// Groups of a [`Bucket`]'s statistics that a store may keep, and a scan may ask for,
/// apart: a dashboard's totals and top pages need neither the visit keys nor the
/// properties of a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sections(u16);

impl Sections {
    /// `events` and `visits`: every metric without a breakdown.
    pub const TOTALS: Sections = Sections(1);
    pub const PAGES: Sections = Sections(1 << 1);
    pub const NAMES: Sections = Sections(1 << 2);
    pub const SOURCES: Sections = Sections(1 << 3);
    pub const ENTRY_PAGES: Sections = Sections(1 << 4);
    pub const VISIT_KEYS: Sections = Sections(1 << 5);
    pub const PROPS: Sections = Sections(1 << 6);
    pub const REVENUE: Sections = Sections(1 << 7);
    pub const FILTERED: Sections = Sections(1 << 8);
    pub const NONE: Sections = Sections(0);
    pub const ALL: Sections = Sections((1 << 9) - 1);
    /// Each single section, in a fixed order, with a name fit for a column.
    pub const EACH: [(Sections, &'static str); 9] = [
        (Self::TOTALS, "totals"),
        (Self::PAGES, "pages"),
        (Self::NAMES, "names"),
        (Self::SOURCES, "sources"),
        (Self::ENTRY_PAGES, "entry_pages"),
        (Self::VISIT_KEYS, "visit_keys"),
        (Self::PROPS, "props"),
        (Self::REVENUE, "revenue"),
        (Self::FILTERED, "filtered"),
    ];

    pub fn contains(self, o: Sections) -> bool {
        self.0 & o.0 == o.0
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    pub fn from_bits(bits: u16) -> Sections {
        Sections(bits & Self::ALL.0)
    }
}

impl std::ops::BitOr for Sections {
    type Output = Sections;
    fn bitor(self, o: Sections) -> Sections {
        Sections(self.0 | o.0)
    }
}

impl Bucket {
    /// One single section of this bucket, encoded on its own.
    pub fn encode_section(&self, s: Sections) -> Result<Vec<u8>, postcard::Error> {
        match s {
            Sections::TOTALS => postcard::to_allocvec(&(&self.events, &self.visits)),
            Sections::PAGES => postcard::to_allocvec(&self.pages),
            Sections::NAMES => postcard::to_allocvec(&self.names),
            Sections::SOURCES => postcard::to_allocvec(&self.sources),
            Sections::ENTRY_PAGES => postcard::to_allocvec(&self.entry_pages),
            Sections::VISIT_KEYS => postcard::to_allocvec(&self.visit_keys),
            Sections::PROPS => postcard::to_allocvec(&self.props),
            Sections::REVENUE => postcard::to_allocvec(&self.revenue),
            Sections::FILTERED => postcard::to_allocvec(&self.filtered),
            _ => Err(postcard::Error::SerdeSerCustom),
        }
    }

    /// Sets one single section from what [`Self::encode_section`] made of it.
    pub fn decode_section(&mut self, s: Sections, b: &[u8]) -> Result<(), postcard::Error> {
        match s {
            Sections::TOTALS => (self.events, self.visits) = postcard::from_bytes(b)?,
            Sections::PAGES => self.pages = postcard::from_bytes(b)?,
            Sections::NAMES => self.names = postcard::from_bytes(b)?,
            Sections::SOURCES => self.sources = postcard::from_bytes(b)?,
            Sections::ENTRY_PAGES => self.entry_pages = postcard::from_bytes(b)?,
            Sections::VISIT_KEYS => self.visit_keys = postcard::from_bytes(b)?,
            Sections::PROPS => self.props = postcard::from_bytes(b)?,
            Sections::REVENUE => self.revenue = postcard::from_bytes(b)?,
            Sections::FILTERED => self.filtered = postcard::from_bytes(b)?,
            _ => return Err(postcard::Error::SerdeDeCustom),
        }
        Ok(())
    }

    /// Adds `o` into `self` (groups built from disjoint sets of visitors or events).
    pub fn merge(&mut self, o: &Bucket) {
        self.events.merge(&o.events);
        self.visits.merge(&o.visits);
        for (k, v) in &o.pages {
            self.pages.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.names {
            self.names.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.sources {
            self.sources.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.entry_pages {
            self.entry_pages.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.visit_keys {
            self.visit_keys.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.props {
            self.props.entry_ref(k.as_str()).or_default().merge(v);
        }
        for (k, v) in &o.revenue {
            *self.revenue.entry_ref(k.as_str()).or_default() += v;
        }
        for (k, v) in &o.filtered {
            *self.filtered.entry_ref(k.as_str()).or_default() += v;
        }
    }
}

impl PropertyRollup {
    /// Adds another rollup of the same property into this one.
    pub fn merge(&mut self, o: &PropertyRollup) {
        self.fold_all();
        merge_hours(&mut self.hours, o);
        self.merge_days_and_minutes(o);
        self.fold_unfolded_of(o);
    }

    /// [`Self::merge`] with the hours on a second thread (rebuilds merge large rollups).
    pub fn merge_on_two_threads(&mut self, o: &PropertyRollup) {
        self.fold_all();
        self.merge_hours_days_minutes(o);
        self.fold_unfolded_of(o);
    }

    /// The days of `o` lack its unfolded hours; they go into this rollup's days.
    fn fold_unfolded_of(&mut self, o: &PropertyRollup) {
        for h in &o.unfolded {
            if let Some(b) = o.hours.get(h) {
                self.days.entry(h.day()).or_default().merge(b);
                self.dirty_days.insert(h.day());
            }
        }
    }

    fn merge_hours_days_minutes(&mut self, o: &PropertyRollup) {
        let hours = &mut self.hours;
        let mut rest = DaysAndMinutes {
            days: &mut self.days,
            minutes: &mut self.minutes,
            dirty_days: &mut self.dirty_days,
        };
        std::thread::scope(|s| {
            s.spawn(|| merge_hours(hours, o));
            rest.merge(o);
        });
    }

    fn merge_days_and_minutes(&mut self, o: &PropertyRollup) {
        DaysAndMinutes {
            days: &mut self.days,
            minutes: &mut self.minutes,
            dirty_days: &mut self.dirty_days,
        }
        .merge(o);
    }
}

fn merge_hours(hours: &mut BTreeMap<LocalHour, Bucket>, o: &PropertyRollup) {
    for (h, b) in &o.hours {
        hours.entry(*h).or_default().merge(b);
    }
}

/// The parts of a [`PropertyRollup`] merged apart from its hours.
struct DaysAndMinutes<'a> {
    days: &'a mut BTreeMap<LocalDay, Bucket>,
    minutes: &'a mut BTreeMap<i64, MinuteStats>,
    dirty_days: &'a mut BTreeSet<LocalDay>,
}

impl DaysAndMinutes<'_> {
    fn merge(&mut self, o: &PropertyRollup) {
        for (d, b) in &o.days {
            self.days.entry(*d).or_default().merge(b);
            self.dirty_days.insert(*d);
        }
        for (m, s) in &o.minutes {
            let e = self.minutes.entry(*m).or_default();
            e.pageviews += s.pageviews;
            e.events += s.events;
            e.visitors.merge(&s.visitors);
        }
    }
}

/// Separator of the parts of composite keys (`visit_keys`, `props`, `revenue`); a
/// control character that the collectors strip from values.
pub const SEP: char = '\u{1f}';

/// The attributes a visit is grouped by, in the order they are joined into a
/// `visit_keys` key. Each is taken from the visit's first event.
pub const VISIT_FIELDS: [&str; 16] = [
    "visit:source",
    "visit:referrer",
    "visit:channel",
    "visit:utm_source",
    "visit:utm_medium",
    "visit:utm_campaign",
    "visit:utm_content",
    "visit:utm_term",
    "visit:browser",
    "visit:browser_version",
    "visit:os",
    "visit:os_version",
    "visit:device",
    "visit:country",
    "visit:region",
    "visit:city",
];

/// A `visit_keys` key: the [`VISIT_FIELDS`] values joined by [`SEP`].
pub struct VisitKey;

impl VisitKey {
    /// Joins field values (in [`VISIT_FIELDS`] order), replacing any separator inside
    /// them.
    pub fn join<'a>(fields: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = String::with_capacity(96);
        for (i, f) in fields.into_iter().enumerate() {
            if i > 0 {
                out.push(SEP);
            }
            if f.contains(SEP) {
                out.push_str(&f.replace(SEP, " "));
            } else {
                out.push_str(f);
            }
        }
        out
    }

    /// The value of field `i` of a joined key.
    pub fn field(key: &str, i: usize) -> &str {
        // SEP is one byte in UTF-8 and never part of another character's encoding, so
        // cutting at its bytes keeps to character boundaries; a byte scan is much
        // cheaper than `str::split` on the processor's hot path (every visit update
        // reads `visit:source`, field 0).
        const _: () = assert!(SEP.len_utf8() == 1);
        let sep = SEP as u8;
        let mut rest = key.as_bytes();
        for _ in 0..i {
            match rest.iter().position(|b| *b == sep) {
                Some(p) => rest = &rest[p + 1..],
                None => return "",
            }
        }
        let end = rest.iter().position(|b| *b == sep).unwrap_or(rest.len());
        let start = key.len() - rest.len();
        &key[start..start + end]
    }
}

/// Statistics of one UTC minute, for realtime views.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinuteStats {
    pub pageviews: u64,
    pub events: u64,
    pub visitors: Hll,
}

/// How many minutes of realtime statistics are kept behind the newest one.
pub const REALTIME_MINUTES: i64 = 120;

/// Rollups of one property.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PropertyRollup {
    /// Keyed by [`LocalHour`].
    pub hours: BTreeMap<LocalHour, Bucket>,
    /// Keyed by [`LocalDay`].
    pub days: BTreeMap<LocalDay, Bucket>,
    /// Keyed by minutes since the epoch (UTC), the last [`REALTIME_MINUTES`] only.
    pub minutes: BTreeMap<i64, MinuteStats>,
    /// Local days whose buckets changed since the last checkpoint.
    #[serde(skip)]
    pub dirty_days: BTreeSet<LocalDay>,
    /// Hours whose statistics are not yet in their day's bucket: the processor writes
    /// the newest hours of a property to their hour bucket alone and adds each to its
    /// day once, when a later hour begins ([`Self::buckets_mut`]). Readers of a day use
    /// [`Self::day_parts`]; checkpoints write [`Self::day_view`], so a loaded rollup
    /// has none.
    #[serde(skip)]
    pub unfolded: BTreeSet<LocalHour>,
    /// The newest hour [`Self::buckets_mut`] has seen (0: none yet).
    #[serde(skip)]
    newest: i64,
    /// Days kept only in the store's files, not in `days`/`hours` (the embedded store
    /// evicts cold days to bound its memory). A write to one loads it first, through
    /// `loader`.
    #[serde(skip)]
    pub evicted: BTreeSet<LocalDay>,
    /// Days whose day bucket is in memory but whose hour buckets are only in the
    /// store's files (most of a day's bytes are its 24 hours, and only hour-grain reads
    /// need them). A write to one loads them first, through `loader`.
    #[serde(skip)]
    pub hours_evicted: BTreeSet<LocalDay>,
    #[serde(skip)]
    pub loader: DayLoader,
}

/// One local day as stored: the day bucket and its hour buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DayData {
    pub day: Bucket,
    pub hours: Vec<(LocalHour, Bucket)>,
}

/// [`DayData`] borrowed from a live rollup, for writing (the same encoding).
#[derive(Serialize)]
pub struct DayDataRef<'a> {
    pub day: std::borrow::Cow<'a, Bucket>,
    pub hours: Vec<(LocalHour, &'a Bucket)>,
}

/// Loads an evicted day of one property from where the store keeps it.
#[derive(Clone, Default)]
pub struct DayLoader(pub Option<std::sync::Arc<dyn Fn(LocalDay) -> DayData + Send + Sync>>);

impl std::fmt::Debug for DayLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "DayLoader"
        } else {
            "NoLoader"
        })
    }
}

/// Loaders do not take part in comparing rollups.
impl PartialEq for DayLoader {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// All rollups, by tracking id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollups {
    pub properties: KeyMap<PropertyRollup>,
}

/// A local calendar day: days since 1970-01-01 in the property's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalDay(pub i32);

/// A local clock hour: `day * 24 + hour` of local wall-clock time. In a 25-hour day the
/// repeated hour is one bucket (as wall clocks show it); a 23-hour day has no bucket for
/// the skipped hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalHour(pub i64);

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();

impl LocalDay {
    pub fn from_date(d: NaiveDate) -> Self {
        LocalDay((d - EPOCH).num_days() as i32)
    }
    pub fn date(self) -> NaiveDate {
        EPOCH + chrono::Duration::days(self.0 as i64)
    }
}

impl LocalHour {
    pub fn from_naive(t: NaiveDateTime) -> Self {
        LocalHour(LocalDay::from_date(t.date()).0 as i64 * 24 + t.hour() as i64)
    }
    pub fn day(self) -> LocalDay {
        LocalDay(self.0.div_euclid(24) as i32)
    }
    pub fn hour(self) -> u32 {
        self.0.rem_euclid(24) as u32
    }
    pub fn naive(self) -> NaiveDateTime {
        self.day().date().and_hms_opt(self.hour(), 0, 0).unwrap()
    }
}

/// Local wall-clock time of a UTC instant in `tz`.
pub fn local_time<Tz: TimeZone>(tz: &Tz, millis: i64) -> NaiveDateTime {
    let utc = chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default();
    utc.with_timezone(tz).naive_local()
}

/// First day of the month of `d`.
pub fn month_start(d: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(d.year(), d.month(), 1).unwrap()
}

impl Rollups {
    /// Adds `o` into `self`, moving the properties `self` does not have rather than
    /// copying them (rollups of disjoint partitions).
    pub fn absorb(&mut self, o: Rollups) {
        for (id, pr) in o.properties {
            match self.properties.get_mut(&id) {
                Some(mine) => mine.merge_on_two_threads(&pr),
                None => {
                    self.properties.insert(id, pr);
                }
            }
        }
    }

    pub fn property_mut(&mut self, id: &str) -> &mut PropertyRollup {
        self.properties.entry_ref(id).or_default()
    }
}

impl PropertyRollup {
    /// Counts an event in its realtime minute; minutes far behind the newest are dropped.
    pub fn count_minute(&mut self, ts_ms: i64, pageview: bool, visitor: u64) {
        let minute = ts_ms.div_euclid(60_000);
        let newest = self.minutes.keys().next_back().copied().unwrap_or(minute);
        if minute < newest - REALTIME_MINUTES {
            return;
        }
        if minute > newest {
            self.minutes = self.minutes.split_off(&(minute - REALTIME_MINUTES));
        }
        let m = self.minutes.entry(minute).or_default();
        m.pageviews += pageview as u64;
        m.events += 1;
        m.visitors.insert(visitor);
    }

    /// The hour bucket and its day bucket, marked as changed, for tests that write both
    /// at once (the processor writes through [`Self::buckets_mut`]).
    #[cfg(test)]
    pub fn hour_and_day_mut(&mut self, h: LocalHour) -> [&mut Bucket; 2] {
        self.dirty_days.insert(h.day());
        if self.unfolded.contains(&h) {
            self.fold(h);
        }
        let hour = self.hours.entry(h).or_default();
        let day = self.days.entry(h.day()).or_default();
        [hour, day]
    }

    /// The buckets a write to hour `h` must reach, marked as changed (every write to
    /// buckets goes through here, so checkpoints can write only what changed): its hour
    /// bucket, and its day bucket unless the hour is unfolded. The newest two hours of a property start unfolded —
    /// most events fall in them, and each is then added to its day once, in one merge,
    /// instead of with every event — and are folded when a later hour begins. A write
    /// to any other hour (a late event) goes to both buckets at once.
    pub fn buckets_mut(&mut self, h: LocalHour) -> (&mut Bucket, Option<&mut Bucket>) {
        // Most writes are to the newest hour and day: the last entries, reached without
        // comparing keys. A dirty day is never evicted, so only another day can need
        // loading.
        if self.dirty_days.last() != Some(&h.day()) {
            if !self.evicted.is_empty() || !self.hours_evicted.is_empty() {
                self.make_resident(h.day());
            }
            self.dirty_days.insert(h.day());
        }
        if h.0 > self.newest {
            self.newest = h.0;
            self.fold_before(LocalHour(h.0 - 1));
        }
        let unfolded = self.unfolded.contains(&h)
            || (h.0 >= self.newest - 1 && !self.hours.contains_key(&h) && self.unfolded.insert(h));
        let hour = if self.hours.last_key_value().is_some_and(|(k, _)| *k == h) {
            self.hours.last_entry().expect("checked above").into_mut()
        } else {
            self.hours.entry(h).or_default()
        };
        if unfolded {
            (hour, None)
        } else {
            (hour, Some(self.days.entry(h.day()).or_default()))
        }
    }

    /// Loads an evicted day, or its evicted hours, back (before a write to it).
    pub fn make_resident(&mut self, day: LocalDay) {
        let whole = self.evicted.remove(&day);
        let hours = self.hours_evicted.remove(&day);
        if whole || hours {
            let loader = self
                .loader
                .0
                .as_ref()
                .expect("a rollup with evicted days has a loader");
            let d = loader(day);
            if whole {
                self.days.insert(day, d.day);
            }
            self.hours.extend(d.hours);
        }
    }

    /// Whether a day may leave memory (whole, or its hours): a clean day (its file
    /// holds it) in memory, with no unfolded hour.
    fn evictable(&self, day: LocalDay) -> bool {
        let lo = LocalHour(day.0 as i64 * 24);
        !self.dirty_days.contains(&day)
            && self.days.contains_key(&day)
            && self
                .unfolded
                .range(lo..LocalHour(lo.0 + 24))
                .next()
                .is_none()
    }

    /// Removes a day's hour buckets from memory; returns how many there were.
    fn drop_hours(&mut self, day: LocalDay) -> usize {
        let lo = LocalHour(day.0 as i64 * 24);
        let hours: Vec<LocalHour> = self
            .hours
            .range(lo..LocalHour(lo.0 + 24))
            .map(|(h, _)| *h)
            .collect();
        for h in &hours {
            self.hours.remove(h);
        }
        hours.len()
    }

    /// Drops a day's hour buckets from memory, keeping its day bucket: only a clean day
    /// (its file holds it) without unfolded hours. Returns whether any were dropped.
    pub fn evict_hours(&mut self, day: LocalDay) -> bool {
        if !self.evictable(day) || self.drop_hours(day) == 0 {
            return false;
        }
        self.hours_evicted.insert(day);
        true
    }

    /// Drops a day from memory, leaving it to the store's files: only a clean day (its
    /// file holds it) without unfolded hours. Returns whether it was evicted.
    pub fn evict(&mut self, day: LocalDay) -> bool {
        if !self.evictable(day) {
            return false;
        }
        self.days.remove(&day);
        self.drop_hours(day);
        self.hours_evicted.remove(&day);
        self.evicted.insert(day);
        true
    }

    /// Adds an unfolded hour to its day.
    fn fold(&mut self, h: LocalHour) {
        if self.unfolded.remove(&h) {
            if let Some(b) = self.hours.get(&h) {
                self.days.entry(h.day()).or_default().merge(b);
            }
            self.dirty_days.insert(h.day());
        }
    }

    fn fold_before(&mut self, limit: LocalHour) {
        while let Some(h) = self.unfolded.first().copied().filter(|h| *h < limit) {
            self.fold(h);
        }
    }

    /// Folds every unfolded hour: afterwards each day bucket holds all its hours.
    pub fn fold_all(&mut self) {
        while let Some(h) = self.unfolded.first().copied() {
            self.fold(h);
        }
    }

    /// What a day's statistics are made of: its day bucket (if any) and its unfolded
    /// hours. Merging them gives the day.
    pub fn day_parts(&self, day: LocalDay) -> impl Iterator<Item = &Bucket> {
        let lo = LocalHour(day.0 as i64 * 24);
        let hi = LocalHour(day.0 as i64 * 24 + 24);
        self.days.get(&day).into_iter().chain(
            self.unfolded
                .range(lo..hi)
                .filter_map(|h| self.hours.get(h)),
        )
    }

    /// The days with statistics in `range`, each with its parts ([`Self::day_parts`]).
    pub fn days_in(
        &self,
        range: std::ops::RangeInclusive<LocalDay>,
    ) -> impl Iterator<Item = (LocalDay, impl Iterator<Item = &Bucket>)> {
        let mut days: BTreeSet<LocalDay> =
            self.days.range(range.clone()).map(|(d, _)| *d).collect();
        days.extend(
            self.unfolded
                .iter()
                .map(|h| h.day())
                .filter(|d| range.contains(d)),
        );
        days.into_iter().map(|d| (d, self.day_parts(d)))
    }

    /// The whole day as one bucket (borrowed when no hour of it is unfolded).
    pub fn day_view(&self, day: LocalDay) -> Option<std::borrow::Cow<'_, Bucket>> {
        let mut parts = self.day_parts(day);
        let first = parts.next()?;
        let mut rest = parts.peekable();
        if rest.peek().is_none() && self.days.contains_key(&day) {
            return Some(std::borrow::Cow::Borrowed(first));
        }
        let mut b = first.clone();
        for p in rest {
            b.merge(p);
        }
        Some(std::borrow::Cow::Owned(b))
    }

    /// One day as stores keep it: the whole day (its unfolded hours folded in, so that
    /// a loaded rollup has none) and its hours. None if the day has no statistics.
    pub fn day_data(&self, day: LocalDay) -> Option<DayDataRef<'_>> {
        let lo = LocalHour(day.0 as i64 * 24);
        let hi = LocalHour(day.0 as i64 * 24 + 24);
        Some(DayDataRef {
            day: self.day_view(day)?,
            hours: self.hours.range(lo..hi).map(|(h, b)| (*h, b)).collect(),
        })
    }

    /// The first day with statistics (in memory or evicted).
    pub fn first_day(&self) -> Option<LocalDay> {
        let d = self.days.keys().next().copied();
        let h = self.unfolded.first().map(|h| h.day());
        let e = self.evicted.first().copied();
        d.into_iter().chain(h).chain(e).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One write of the test below: to an hour, a page view by a visitor, and a visit
    /// added (or retracted) for a source.
    fn write(b: &mut Bucket, page: &str, visitor: u64, sign: i64) {
        b.events.events += 1;
        b.events.visitors.insert(visitor);
        let p = b.pages.entry_ref(page).or_default();
        p.pageviews += 1;
        p.visitors.insert(visitor);
        let v = b.sources.entry_ref("google.com").or_default();
        v.visits += sign;
        if sign > 0 {
            v.visitors.insert(visitor);
        } else {
            v.visitors.remove(visitor);
        }
    }

    #[test]
    fn sections_encode_apart_and_rebuild_the_bucket() {
        let mut b = Bucket::default();
        write(&mut b, "/a", 1, 1);
        write(&mut b, "/b", 2, 1);
        b.props.insert("k\x1fv".into(), EventStats::default());
        b.revenue.insert("buy\x1fEUR".into(), 1_500_000);
        b.filtered.insert("bot:x".into(), 3);
        let mut rebuilt = Bucket::default();
        for (s, _) in Sections::EACH {
            rebuilt
                .decode_section(s, &b.encode_section(s).unwrap())
                .unwrap();
        }
        assert_eq!(rebuilt, b);
        assert!(Sections::ALL.contains(Sections::PAGES | Sections::TOTALS));
        assert!(!Sections::TOTALS.contains(Sections::PAGES));
    }

    #[test]
    fn days_read_with_unfolded_hours_equal_days_written_directly() {
        // Mostly in time order, with late writes to older hours and retractions of
        // earlier additions, crossing day boundaries.
        let mut folded = PropertyRollup::default();
        let mut direct = PropertyRollup::default();
        let base = 20_000 * 24;
        let mut added: Vec<(LocalHour, u64)> = Vec::new();
        for i in 0..3_000i64 {
            let mut h = LocalHour(base + i / 40);
            if i % 7 == 0 {
                h = LocalHour(h.0 - (i % 30)); // a late event
            }
            let visitor = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) % 500;
            let page = ["/", "/a", "/b"][(i % 3) as usize];
            let (h, visitor, sign) = if i % 11 == 0 && !added.is_empty() {
                let (h, v) = added.remove((i as usize) % added.len());
                (h, v, -1)
            } else {
                added.push((h, visitor));
                (h, visitor, 1)
            };
            let (hour, day) = folded.buckets_mut(h);
            write(hour, page, visitor, sign);
            if let Some(day) = day {
                write(day, page, visitor, sign);
            }
            for b in direct.hour_and_day_mut(h) {
                write(b, page, visitor, sign);
            }
        }
        assert!(
            !folded.unfolded.is_empty(),
            "the newest hours stay unfolded"
        );
        let days: Vec<LocalDay> = direct.days.keys().copied().collect();
        assert!(days.len() > 2);
        for d in &days {
            assert_eq!(
                folded.day_view(*d).as_deref(),
                direct.days.get(d),
                "day {d:?}"
            );
        }
        let read: Vec<LocalDay> = folded
            .days_in(days[0]..=days[days.len() - 1])
            .map(|(d, _)| d)
            .collect();
        assert_eq!(read, days);
        assert_eq!(folded.hours, direct.hours);
        folded.fold_all();
        assert_eq!(folded.days, direct.days);
    }

    #[test]
    fn visit_key_fields() {
        let key = VisitKey::join(["google.com", "", "Organic Search", "ünï\u{1f}code", "x"]);
        let fields: Vec<&str> = (0..6).map(|i| VisitKey::field(&key, i)).collect();
        assert_eq!(
            fields,
            ["google.com", "", "Organic Search", "ünï code", "x", ""]
        );
        for i in 0..6 {
            assert_eq!(
                VisitKey::field(&key, i),
                key.split(SEP).nth(i).unwrap_or(""),
                "field {i}"
            );
        }
        assert_eq!(VisitKey::field("", 0), "");
        assert_eq!(VisitKey::field("", 1), "");
    }

    #[test]
    fn local_keys() {
        let tz: chrono_tz::Tz = "Asia/Kolkata".parse().unwrap();
        // 2026-11-26T18:40Z is 00:10 on the 27th in India.
        let ms = chrono::DateTime::parse_from_rfc3339("2026-11-26T18:40:00Z")
            .unwrap()
            .timestamp_millis();
        let t = local_time(&tz, ms);
        let h = LocalHour::from_naive(t);
        assert_eq!(
            h.day().date(),
            NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
        );
        assert_eq!(h.hour(), 0);
        assert_eq!(h.naive().to_string(), "2026-11-27 00:00:00");
    }
}
