//! The executor over a resident [`Table`]: filters as three-valued masks (SQL's true,
//! false and unknown, so that every answer is the one the SQL path gives), groups by
//! composed dictionary codes, and exact distinct counts by the rows' visitor order.

use std::borrow::Cow;
use std::collections::HashMap;

use footfall_event::goal::Goal;
use footfall_query::QueryError;
use footfall_store::VISIT_FIELDS;
use serde_json::Value;

use super::table::{Table, VISIT_TEXT};
use crate::engine::MAX_PATTERN;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

const F: u8 = 0;
const T: u8 = 1;
/// SQL's NULL: neither true nor false.
const N: u8 = 2;

fn and3(a: u8, b: u8) -> u8 {
    if a == F || b == F {
        F
    } else if a == N || b == N {
        N
    } else {
        T
    }
}

fn or3(a: u8, b: u8) -> u8 {
    if a == T || b == T {
        T
    } else if a == N || b == N {
        N
    } else {
        F
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Row,
    Visit,
}

/// A text column as the executor reads it: codes per row or per visit, and the string
/// of each code (code 0 is NULL).
pub(crate) struct Column<'t> {
    level: Level,
    codes: Cow<'t, [u32]>,
    values: Cow<'t, [Box<str>]>,
}

/// The column a dimension names; None where the executor does not hold it
/// (`event:goal`, time dimensions).
pub(crate) fn column<'t>(t: &'t Table, name: &str) -> Option<Column<'t>> {
    let row = |codes: &'t [u32], d: &'t super::table::Dict| Column {
        level: Level::Row,
        codes: Cow::Borrowed(codes),
        values: Cow::Borrowed(&d.values),
    };
    let visit = |i: usize| Column {
        level: Level::Visit,
        codes: Cow::Borrowed(&t.visit_text[i]),
        values: Cow::Borrowed(&t.visit_dicts[i].values),
    };
    let field = |f: &str| {
        VISIT_FIELDS
            .iter()
            .position(|x| *x == f)
            .map(|i| i + VISIT_TEXT.len())
    };
    let named = |i: usize, of: fn(&str) -> Option<&'static str>| {
        // Codes mapped to names; two codes of one name become one code.
        let mut names: Vec<Box<str>> = vec!["".into()];
        let mut index: Map<&str, u32> = Map::default();
        let mut remap = vec![0u32; t.visit_dicts[i].len()];
        for (c, v) in t.visit_dicts[i].values.iter().enumerate().skip(1) {
            let name = of(v).unwrap_or(v);
            let next = names.len() as u32;
            let code = *index.entry(name).or_insert(next);
            if code == next {
                names.push(name.into());
            }
            remap[c] = code;
        }
        Column {
            level: Level::Visit,
            codes: Cow::Owned(t.visit_text[i].iter().map(|&c| remap[c as usize]).collect()),
            values: Cow::Owned(names),
        }
    };
    Some(match name {
        "event:page" => row(&t.row_page, &t.pages),
        "event:name" => row(&t.row_name, &t.names),
        "event:hostname" => row(&t.row_host, &t.hosts),
        "visit:entry_page" => visit(0),
        "visit:exit_page" => visit(1),
        "visit:entry_page_hostname" => visit(2),
        "visit:exit_page_hostname" => visit(3),
        "visit:country_name" => named(
            field("visit:country")?,
            footfall_enrich::names::country_name,
        ),
        "visit:region_name" => named(field("visit:region")?, footfall_enrich::names::region_name),
        "visit:city_name" => visit(field("visit:city")?),
        _ => {
            if let Some(k) = name.strip_prefix("event:props:").filter(|k| !k.is_empty()) {
                // The value of the key's first occurrence, as the SQL's array_position.
                let codes = match t.prop_keys.find(k) {
                    Some(key) => (0..t.rows())
                        .map(|r| {
                            let (a, z) = (t.prop_at[r] as usize, t.prop_at[r + 1] as usize);
                            t.props[a..z]
                                .iter()
                                .find(|(pk, _)| *pk == key)
                                .map_or(0, |(_, v)| *v)
                        })
                        .collect(),
                    None => vec![0; t.rows()],
                };
                return Some(Column {
                    level: Level::Row,
                    codes: Cow::Owned(codes),
                    values: Cow::Borrowed(&t.prop_values.values),
                });
            }
            visit(field(name)?)
        }
    })
}

fn regex(pattern: &str, case_sensitive: bool) -> Result<regex::Regex, QueryError> {
    if pattern.len() > MAX_PATTERN {
        return Err(QueryError::Invalid(format!(
            "a regular expression may be at most {MAX_PATTERN} bytes"
        )));
    }
    regex::RegexBuilder::new(pattern)
        .case_insensitive(!case_sensitive)
        .build()
        .map_err(|e| QueryError::Invalid(format!("invalid regular expression: {e}")))
}

/// The value of a comparison per code of `values` (code 0, NULL, as SQL has it).
fn lut(
    values: &[Box<str>],
    op: &str,
    wanted: &[&str],
    case_sensitive: bool,
) -> Result<Vec<u8>, QueryError> {
    let fold = |s: &str| -> String {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let wanted_folded: Vec<String> = wanted.iter().map(|v| fold(v)).collect();
    let res: Vec<regex::Regex> = if op.starts_with("matches") {
        wanted
            .iter()
            .map(|p| regex(p, case_sensitive))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let null = match op {
        "contains_not" | "matches_not" => F,
        _ => N,
    };
    let mut out = Vec::with_capacity(values.len());
    out.push(null);
    for v in &values[1..] {
        let hit = match op {
            "is" | "is_not" => {
                let v = fold(v);
                wanted_folded.contains(&v)
            }
            "contains" | "contains_not" => {
                let v = fold(v);
                wanted_folded.iter().any(|w| v.contains(w.as_str()))
            }
            _ => res.iter().any(|re| re.is_match(v)),
        };
        let positive = matches!(op, "is" | "contains" | "matches");
        out.push(if hit == positive { T } else { F });
    }
    Ok(out)
}

/// Which events complete a goal, as codes to compare.
pub(crate) struct GoalTest {
    /// A page goal: per page code, whether it matches (code 0 unknown).
    pages: Option<Vec<u8>>,
    /// An event goal: the name's code (None: no event has the name).
    name: Option<u32>,
    /// Property conditions: the key's and the value's codes.
    props: Vec<(Option<u32>, Option<u32>)>,
}

impl GoalTest {
    fn new(t: &Table, g: &Goal) -> Result<Self, QueryError> {
        if let Some(re) = g.page_regex() {
            let re = regex(&re, true)?;
            let mut pages = vec![N];
            pages.extend(
                t.pages.values[1..]
                    .iter()
                    .map(|p| if re.is_match(p) { T } else { F }),
            );
            return Ok(Self {
                pages: Some(pages),
                name: None,
                props: Vec::new(),
            });
        }
        Ok(Self {
            pages: None,
            name: t.names.find(g.event.as_deref().unwrap_or_default()),
            props: g
                .props
                .iter()
                .map(|(k, v)| (t.prop_keys.find(k), t.prop_values.find(v)))
                .collect(),
        })
    }

    fn at(&self, t: &Table, r: usize) -> u8 {
        if let Some(pages) = &self.pages {
            return if t.row_pageview[r] {
                pages[t.row_page[r] as usize]
            } else {
                F
            };
        }
        if self.name != Some(t.row_name[r]) {
            return F;
        }
        let mut out = T;
        let (a, z) = (t.prop_at[r] as usize, t.prop_at[r + 1] as usize);
        for (k, v) in &self.props {
            let found = k.and_then(|k| t.props[a..z].iter().find(|(pk, _)| *pk == k));
            let x = match found {
                None | Some((_, 0)) => N,
                Some((_, got)) => {
                    if Some(*got) == *v {
                        T
                    } else {
                        F
                    }
                }
            };
            out = and3(out, x);
        }
        out
    }
}

/// A compiled filter.
pub(crate) enum Pred<'t> {
    Leaf(Column<'t>, Vec<u8>),
    /// Events completing any of the goals; `negate`: none of them (unknown as false).
    Goals(Vec<GoalTest>, bool),
    And(Vec<Pred<'t>>),
    Or(Vec<Pred<'t>>),
    /// `NOT coalesce(x, false)`.
    Not(Box<Pred<'t>>),
    /// Whether the visit has a row the inner filter keeps (`has_not_done`: negated).
    HasDone(Box<Pred<'t>>, bool),
}

/// Compiles a filter the SQL path has already accepted; None where the executor has no
/// column for it.
pub(crate) fn compile<'t>(
    t: &'t Table,
    f: &Value,
    goals: &[Goal],
) -> Result<Option<Pred<'t>>, QueryError> {
    let Some(a) = f.as_array() else {
        return Ok(None);
    };
    let op = a.first().and_then(Value::as_str).unwrap_or("");
    Ok(Some(match op {
        "and" | "or" => {
            let mut parts = Vec::new();
            for p in a.get(1).and_then(Value::as_array).into_iter().flatten() {
                match compile(t, p, goals)? {
                    Some(p) => parts.push(p),
                    None => return Ok(None),
                }
            }
            if op == "and" {
                Pred::And(parts)
            } else {
                Pred::Or(parts)
            }
        }
        "not" | "has_done" | "has_not_done" => {
            let Some(inner) = a
                .get(1)
                .map(|i| compile(t, i, goals))
                .transpose()?
                .flatten()
            else {
                return Ok(None);
            };
            match op {
                "not" => Pred::Not(Box::new(inner)),
                _ => Pred::HasDone(Box::new(inner), op == "has_not_done"),
            }
        }
        _ => {
            let dim = a.get(1).and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = a
                .get(2)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let case_sensitive = a
                .get(3)
                .and_then(|o| o.get("case_sensitive"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if dim == "event:goal" {
                return goal_filter(t, op, &values, case_sensitive, goals).map(Some);
            }
            let Some(col) = column(t, dim) else {
                return Ok(None);
            };
            let l = lut(&col.values, op, &values, case_sensitive)?;
            Pred::Leaf(col, l)
        }
    }))
}

fn goal_filter<'t>(
    t: &'t Table,
    op: &str,
    values: &[&str],
    case_sensitive: bool,
    goals: &[Goal],
) -> Result<Pred<'t>, QueryError> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let mut picked = Vec::new();
    for v in values {
        for g in goals {
            let hit = match op {
                "is" | "is_not" => fold(&g.name) == fold(v),
                "contains" | "contains_not" => fold(&g.name).contains(&fold(v)),
                _ => regex(v, case_sensitive)?.is_match(&g.name),
            };
            if hit {
                picked.push(GoalTest::new(t, g)?);
            }
        }
    }
    Ok(Pred::Goals(picked, op.ends_with("_not")))
}

/// Three-valued results per row or per visit.
#[derive(Clone)]
pub(crate) struct Mask {
    level: Level,
    v: Vec<u8>,
}

impl Mask {
    fn into_rows(self, t: &Table) -> Vec<u8> {
        match self.level {
            Level::Row => self.v,
            Level::Visit => t.row_visit.iter().map(|&v| self.v[v as usize]).collect(),
        }
    }
}

pub(crate) fn eval(t: &Table, p: &Pred) -> Mask {
    match p {
        Pred::Leaf(c, lut) => Mask {
            level: c.level,
            v: c.codes.iter().map(|&x| lut[x as usize]).collect(),
        },
        Pred::Goals(goals, negate) => {
            let v = (0..t.rows())
                .map(|r| {
                    let any = goals.iter().fold(F, |acc, g| or3(acc, g.at(t, r)));
                    if *negate {
                        if any == T {
                            F
                        } else {
                            T
                        }
                    } else {
                        any
                    }
                })
                .collect();
            Mask {
                level: Level::Row,
                v,
            }
        }
        Pred::And(parts) | Pred::Or(parts) => combine(
            t,
            parts.iter().map(|x| eval(t, x)).collect(),
            matches!(p, Pred::And(_)),
        ),
        Pred::Not(inner) => {
            let mut m = eval(t, inner);
            for x in m.v.iter_mut() {
                *x = if *x == T { F } else { T };
            }
            m
        }
        Pred::HasDone(inner, negate) => {
            let m = eval(t, inner);
            let done: Vec<bool> = match m.level {
                Level::Visit => m.v.iter().map(|&x| x == T).collect(),
                Level::Row => (0..t.visits())
                    .map(|v| {
                        let (a, z) = (t.visit_rows[v] as usize, t.visit_rows[v + 1] as usize);
                        m.v[a..z].contains(&T)
                    })
                    .collect(),
            };
            Mask {
                level: Level::Visit,
                v: done
                    .into_iter()
                    .map(|d| if d != *negate { T } else { F })
                    .collect(),
            }
        }
    }
}

/// Masks combined by SQL's `AND` (`and`) or `OR`, per visit when all are of the
/// visit, else per row.
fn combine(t: &Table, masks: Vec<Mask>, and: bool) -> Mask {
    let level = if masks.iter().all(|m| m.level == Level::Visit) {
        Level::Visit
    } else {
        Level::Row
    };
    let mut out: Option<Vec<u8>> = None;
    for m in masks {
        let v = if level == Level::Row {
            m.into_rows(t)
        } else {
            m.v
        };
        out = Some(match out {
            None => v,
            Some(mut acc) => {
                for (a, b) in acc.iter_mut().zip(v) {
                    *a = if and { and3(*a, b) } else { or3(*a, b) };
                }
                acc
            }
        });
    }
    Mask {
        level,
        v: out.unwrap_or_default(),
    }
}

/// Every filter's mask together (none keeps everything).
pub(crate) fn and_all(t: &Table, masks: Vec<Mask>) -> Mask {
    if masks.is_empty() {
        return Mask {
            level: Level::Visit,
            v: vec![T; t.visits()],
        };
    }
    combine(t, masks, true)
}

/// Whether row `r` passes the mask.
#[inline]
fn row_passes(t: &Table, m: &Mask, r: usize) -> bool {
    match m.level {
        Level::Row => m.v[r] == T,
        Level::Visit => m.v[t.row_visit[r] as usize] == T,
    }
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// A time dimension's unit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unit {
    Hour,
    Day,
    Week,
    Month,
}

impl Unit {
    pub fn parse(name: &str) -> Option<Unit> {
        Some(match name {
            "time:hour" => Unit::Hour,
            "time:day" | "time" => Unit::Day,
            "time:week" => Unit::Week,
            "time:month" => Unit::Month,
            _ => return None,
        })
    }

    /// The bucket of local milliseconds, as a number.
    fn bucket(self, ms: i64) -> i64 {
        match self {
            Unit::Hour => ms.div_euclid(HOUR),
            Unit::Day => ms.div_euclid(DAY),
            // Weeks from Monday: 1970-01-01 was a Thursday.
            Unit::Week => (ms.div_euclid(DAY) + 3).div_euclid(7),
            Unit::Month => {
                let d = chrono::DateTime::from_timestamp_millis(ms)
                    .unwrap_or_default()
                    .date_naive();
                chrono::Datelike::year(&d) as i64 * 12 + chrono::Datelike::month0(&d) as i64
            }
        }
    }

    /// The bucket's first local millisecond (what `date_trunc` gives).
    fn start(self, b: i64) -> i64 {
        match self {
            Unit::Hour => b * HOUR,
            Unit::Day => b * DAY,
            Unit::Week => (b * 7 - 3) * DAY,
            Unit::Month => chrono::NaiveDate::from_ymd_opt(
                b.div_euclid(12) as i32,
                b.rem_euclid(12) as u32 + 1,
                1,
            )
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(0, |d| d.and_utc().timestamp_millis()),
        }
    }
}

/// A dimension of a breakdown.
pub(crate) enum Dim<'t> {
    Text(Column<'t>),
    /// A time unit, over the event's local time (or the visit's start, for visit
    /// figures), with the buckets' span `[lo, hi]`.
    Time(Unit, i64, i64),
}

impl<'t> Dim<'t> {
    pub fn new(t: &'t Table, name: &str, dates: (i32, i32)) -> Option<Dim<'t>> {
        if let Some(u) = Unit::parse(name) {
            let lo = u.bucket(dates.0 as i64 * DAY);
            let hi = u.bucket(dates.1 as i64 * DAY + DAY - 1);
            return Some(Dim::Time(u, lo, hi));
        }
        column(t, name).map(Dim::Text)
    }

    fn card(&self) -> u64 {
        match self {
            Dim::Text(c) => c.values.len() as u64,
            Dim::Time(_, lo, hi) => (hi - lo + 1) as u64,
        }
    }

    /// The code of row `r`'s value; None for a value outside the span.
    #[inline]
    fn row_code(&self, t: &Table, r: usize) -> Option<u64> {
        match self {
            Dim::Text(c) => Some(match c.level {
                Level::Row => c.codes[r],
                Level::Visit => c.codes[t.row_visit[r] as usize],
            } as u64),
            Dim::Time(u, lo, hi) => {
                let b = u.bucket(t.row_local[r]);
                (b >= *lo && b <= *hi).then(|| (b - lo) as u64)
            }
        }
    }

    #[inline]
    fn visit_code(&self, t: &Table, v: usize) -> Option<u64> {
        match self {
            Dim::Text(c) => Some(c.codes[v] as u64),
            Dim::Time(u, lo, hi) => {
                let b = u.bucket(t.visit_local[v]);
                (b >= *lo && b <= *hi).then(|| (b - lo) as u64)
            }
        }
    }

    fn render(&self, code: u64) -> Option<String> {
        match self {
            Dim::Text(c) => (code != 0).then(|| c.values[code as usize].to_string()),
            Dim::Time(u, lo, _) => Some(u.start(code as i64 + lo).to_string()),
        }
    }

    fn is_text(&self) -> bool {
        matches!(self, Dim::Text(_))
    }
}

/// Groups by the dimensions' codes composed into one number.
pub(crate) struct Keys<'d, 't> {
    dims: &'d [Dim<'t>],
    strides: Vec<u64>,
    /// Rows whose text dimension is NULL have no group (a breakdown lists the values
    /// that are there), except in funnels.
    skip_null: bool,
}

/// Groups' slots: a direct table when the product of the cardinalities is small.
struct Slots {
    dense: Option<Vec<u32>>,
    sparse: Map<u64, u32>,
    keys: Vec<u64>,
}

const DENSE_MAX: u64 = 1 << 22;

impl Slots {
    fn new(space: u64) -> Self {
        Self {
            dense: (space <= DENSE_MAX).then(|| vec![u32::MAX; space as usize]),
            sparse: Map::default(),
            keys: Vec::new(),
        }
    }

    /// The group of `key`, and whether it is new.
    #[inline]
    fn slot(&mut self, key: u64) -> (usize, bool) {
        let next = self.keys.len() as u32;
        let s = match &mut self.dense {
            Some(d) => {
                let s = &mut d[key as usize];
                if *s == u32::MAX {
                    *s = next;
                }
                *s
            }
            None => *self.sparse.entry(key).or_insert(next),
        };
        let new = s == next;
        if new {
            self.keys.push(key);
        }
        (s as usize, new)
    }
}

impl<'d, 't> Keys<'d, 't> {
    /// None when the composed key would not fit 64 bits.
    pub fn new(dims: &'d [Dim<'t>], skip_null: bool) -> Option<Self> {
        let mut strides = Vec::with_capacity(dims.len());
        let mut space = 1u64;
        for d in dims.iter().rev() {
            strides.push(space);
            space = space.checked_mul(d.card())?;
        }
        strides.reverse();
        Some(Self {
            dims,
            strides,
            skip_null,
        })
    }

    fn space(&self) -> u64 {
        self.dims.iter().map(Dim::card).product()
    }

    #[inline]
    fn of_row(&self, t: &Table, r: usize) -> Option<u64> {
        let mut k = 0;
        for (d, s) in self.dims.iter().zip(&self.strides) {
            let c = d.row_code(t, r)?;
            if c == 0 && self.skip_null && d.is_text() {
                return None;
            }
            k += c * s;
        }
        Some(k)
    }

    #[inline]
    fn of_visit(&self, t: &Table, v: usize) -> Option<u64> {
        let mut k = 0;
        for (d, s) in self.dims.iter().zip(&self.strides) {
            let c = d.visit_code(t, v)?;
            if c == 0 && self.skip_null && d.is_text() {
                return None;
            }
            k += c * s;
        }
        Some(k)
    }

    pub fn render(&self, key: u64) -> Vec<Option<String>> {
        self.dims
            .iter()
            .zip(&self.strides)
            .map(|(d, s)| d.render((key / s) % d.card()))
            .collect()
    }
}

/// Sums of one group.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sums {
    pub visitors: i64,
    pub pageviews: i64,
    pub events: i64,
    pub visits: i64,
    pub visit_pageviews: i64,
    pub visit_events: i64,
    pub bounces: i64,
    pub duration_ms: i64,
    /// Revenue by currency code: millionths and events.
    pub revenue: Vec<(u32, i64, i64)>,
}

/// Which rows an event-level pass reads: the time bounds and the filters.
pub(crate) struct RowScope<'a> {
    /// UTC milliseconds, inclusive.
    pub bounds: Option<(i64, i64)>,
    pub mask: &'a Mask,
}

/// Event figures by group over the rows in scope: distinct visitors, page views,
/// events, and (with `visits`) the visits with a row in the group; and the distinct
/// visitors of the rows in scope whatever their group (a percentage's or conversion
/// rate's whole).
pub(crate) fn by_rows(
    t: &Table,
    keys: &Keys,
    scope: &RowScope,
    visits: bool,
    revenue: bool,
) -> (Vec<(u64, Sums)>, i64) {
    let parts = halves(t, |vs| {
        let rows = t.visit_rows[vs.start] as usize..t.visit_rows[vs.end] as usize;
        by_rows_in(t, keys, scope, visits, revenue, rows)
    });
    let total = parts.iter().map(|p| p.1).sum();
    (merge(parts.into_iter().map(|p| p.0)), total)
}

/// Splits the visits in two at a change of visitor (so that each visitor is counted in
/// one half only) and runs `f` on both halves at once (always, even when small: a
/// thread costs tens of microseconds, and every test then runs the merge).
fn halves<R: Send>(t: &Table, f: impl Fn(std::ops::Range<usize>) -> R + Sync) -> Vec<R> {
    let n = t.visits();
    let mut mid = n / 2;
    while mid < n && mid > 0 && t.visit_visitor[mid] == t.visit_visitor[mid - 1] {
        mid += 1;
    }
    if n < 2 {
        return vec![f(0..n)];
    }
    std::thread::scope(|s| {
        let h = s.spawn(|| f(mid..n));
        let first = f(0..mid);
        vec![first, h.join().expect("a scan does not panic")]
    })
}

/// The halves' groups added up (their visitors are different people).
fn merge(parts: impl Iterator<Item = Vec<(u64, Sums)>>) -> Vec<(u64, Sums)> {
    let mut parts: Vec<Vec<(u64, Sums)>> = parts.collect();
    if parts.len() == 1 {
        return parts.pop().expect("one");
    }
    let mut at: Map<u64, usize> = Map::default();
    let mut out: Vec<(u64, Sums)> = Vec::new();
    for part in parts {
        for (k, s) in part {
            match at.get(&k) {
                Some(&i) => {
                    let o = &mut out[i].1;
                    o.visitors += s.visitors;
                    o.pageviews += s.pageviews;
                    o.events += s.events;
                    o.visits += s.visits;
                    o.visit_pageviews += s.visit_pageviews;
                    o.visit_events += s.visit_events;
                    o.bounces += s.bounces;
                    o.duration_ms += s.duration_ms;
                    for (c, m, n) in s.revenue {
                        match o.revenue.iter_mut().find(|x| x.0 == c) {
                            Some(x) => {
                                x.1 += m;
                                x.2 += n;
                            }
                            None => o.revenue.push((c, m, n)),
                        }
                    }
                }
                None => {
                    at.insert(k, out.len());
                    out.push((k, s));
                }
            }
        }
    }
    out
}

fn by_rows_in(
    t: &Table,
    keys: &Keys,
    scope: &RowScope,
    visits: bool,
    revenue: bool,
    rows: std::ops::Range<usize>,
) -> (Vec<(u64, Sums)>, i64) {
    let mut slots = Slots::new(keys.space());
    let mut sums: Vec<Sums> = Vec::new();
    let mut last_visitor: Vec<u32> = Vec::new();
    let mut last_visit: Vec<u32> = Vec::new();
    let (mut total, mut last_any) = (0i64, u32::MAX);
    for r in rows {
        if !row_passes(t, scope.mask, r) {
            continue;
        }
        if let Some((a, b)) = scope.bounds {
            let ts = t.row_ts[r];
            if ts < a || ts > b {
                continue;
            }
        }
        let v = t.row_visit[r];
        let who = t.visit_visitor[v as usize];
        if who != last_any {
            last_any = who;
            total += 1;
        }
        let Some(key) = keys.of_row(t, r) else {
            continue;
        };
        let (g, new) = slots.slot(key);
        if new {
            sums.push(Sums::default());
            last_visitor.push(u32::MAX);
            last_visit.push(u32::MAX);
        }
        let s = &mut sums[g];
        s.events += 1;
        s.pageviews += t.row_pageview[r] as i64;
        if last_visitor[g] != who {
            last_visitor[g] = who;
            s.visitors += 1;
        }
        if revenue && t.row_currency[r] != 0 {
            let c = t.row_currency[r];
            match s.revenue.iter_mut().find(|x| x.0 == c) {
                Some(x) => {
                    x.1 += t.row_micros[r];
                    x.2 += 1;
                }
                None => s.revenue.push((c, t.row_micros[r], 1)),
            }
        }
        if visits && last_visit[g] != v {
            last_visit[g] = v;
            let v = v as usize;
            s.visits += 1;
            s.visit_pageviews += t.visit_pageviews[v];
            s.visit_events += t.visit_events[v];
            s.bounces += t.visit_bounce[v] as i64;
            s.duration_ms += t.visit_duration[v];
        }
    }
    (slots.keys.into_iter().zip(sums).collect(), total)
}

/// Which visits a visit-level pass reads: those whose first row is in the table, that
/// started within the local dates and wall-clock bounds, and that the filters keep.
pub(crate) struct VisitScope<'a> {
    pub dates: (i32, i32),
    /// Local wall-clock milliseconds, inclusive.
    pub wall: Option<(i64, i64)>,
    pub mask: &'a Mask,
}

fn visit_passes(t: &Table, scope: &VisitScope, v: usize) -> bool {
    if !t.visit_has_first[v] {
        return false;
    }
    let d = t.visit_date[v];
    if d < scope.dates.0 || d > scope.dates.1 {
        return false;
    }
    if let Some((a, b)) = scope.wall {
        let l = t.visit_local[v];
        if l < a || l > b {
            return false;
        }
    }
    match scope.mask.level {
        Level::Visit => scope.mask.v[v] == T,
        // A visit attribute's mask promoted to rows: its first row says.
        Level::Row => scope.mask.v[t.visit_rows[v] as usize] == T,
    }
}

/// Visit figures by group over the visits in scope.
pub(crate) fn by_visits(t: &Table, keys: &Keys, scope: &VisitScope) -> Vec<(u64, Sums)> {
    merge(halves(t, |vs| by_visits_in(t, keys, scope, vs)).into_iter())
}

fn by_visits_in(
    t: &Table,
    keys: &Keys,
    scope: &VisitScope,
    visits: std::ops::Range<usize>,
) -> Vec<(u64, Sums)> {
    let mut slots = Slots::new(keys.space());
    let mut sums: Vec<Sums> = Vec::new();
    let mut last_visitor: Vec<u32> = Vec::new();
    for v in visits {
        if !visit_passes(t, scope, v) {
            continue;
        }
        let Some(key) = keys.of_visit(t, v) else {
            continue;
        };
        let (g, new) = slots.slot(key);
        if new {
            sums.push(Sums::default());
            last_visitor.push(u32::MAX);
        }
        let s = &mut sums[g];
        let who = t.visit_visitor[v];
        if last_visitor[g] != who {
            last_visitor[g] = who;
            s.visitors += 1;
        }
        s.visits += 1;
        s.visit_pageviews += t.visit_pageviews[v];
        s.visit_events += t.visit_events[v];
        s.bounces += t.visit_bounce[v] as i64;
        s.duration_ms += t.visit_duration[v];
    }
    slots.keys.into_iter().zip(sums).collect()
}

/// Distinct visitors of the visits in scope.
pub(crate) fn visitors_of_visits(t: &Table, scope: &VisitScope) -> i64 {
    let (mut n, mut last) = (0, u32::MAX);
    for v in 0..t.visits() {
        if visit_passes(t, scope, v) && t.visit_visitor[v] != last {
            last = t.visit_visitor[v];
            n += 1;
        }
    }
    n
}

/// A funnel's counts: per group of visit attributes (NULL values kept), the distinct
/// visitors whose visit completed steps `0..=k`, for each k. Each step is completed by
/// the first row after the previous step's that completes its goal, among the rows the
/// filters keep.
pub(crate) fn funnel(
    t: &Table,
    keys: &Keys,
    mask: &Mask,
    steps: &[GoalTest],
) -> Vec<(u64, Vec<i64>)> {
    let mut at: Map<u64, usize> = Map::default();
    let mut out: Vec<(u64, Vec<i64>)> = Vec::new();
    for part in halves(t, |vs| funnel_in(t, keys, mask, steps, vs)) {
        for (k, c) in part {
            match at.get(&k) {
                Some(&i) => {
                    for (o, x) in out[i].1.iter_mut().zip(c) {
                        *o += x;
                    }
                }
                None => {
                    at.insert(k, out.len());
                    out.push((k, c));
                }
            }
        }
    }
    out
}

fn funnel_in(
    t: &Table,
    keys: &Keys,
    mask: &Mask,
    steps: &[GoalTest],
    visits: std::ops::Range<usize>,
) -> Vec<(u64, Vec<i64>)> {
    let mut slots = Slots::new(keys.space());
    let mut counts: Vec<Vec<i64>> = Vec::new();
    let mut last: Vec<Vec<u32>> = Vec::new();
    for v in visits {
        let (a, z) = (t.visit_rows[v] as usize, t.visit_rows[v + 1] as usize);
        let mut reached = 0usize;
        let mut any = false;
        for r in a..z {
            if !row_passes(t, mask, r) {
                continue;
            }
            any = true;
            if reached < steps.len() && steps[reached].at(t, r) == T {
                reached += 1;
            }
        }
        if !any || reached == 0 {
            continue;
        }
        let Some(key) = keys.of_visit(t, v) else {
            continue;
        };
        let (g, new) = slots.slot(key);
        if new {
            counts.push(vec![0; steps.len()]);
            last.push(vec![u32::MAX; steps.len()]);
        }
        let who = t.visit_visitor[v];
        for k in 0..reached {
            if last[g][k] != who {
                last[g][k] = who;
                counts[g][k] += 1;
            }
        }
    }
    slots.keys.into_iter().zip(counts).collect()
}

/// The steps of a funnel as tests.
pub(crate) fn goal_tests(t: &Table, goals: &[&Goal]) -> Result<Vec<GoalTest>, QueryError> {
    goals.iter().map(|g| GoalTest::new(t, g)).collect()
}
