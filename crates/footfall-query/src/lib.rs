//! The query engine behind `POST /api/v2/query` (Plausible Stats API v2 shape), answered
//! from rollups through the [`RollupStore`] trait.
//!
//! It never touches the log or raw events, and never decides who may see what: the
//! server authorises the property before calling [`execute`].

use std::collections::{HashMap, HashSet};

use chrono::{Datelike, Duration, NaiveDate, TimeZone};
use chrono_tz::Tz;
use footfall_store::rollup::{local_time, month_start};
use footfall_store::{
    Bucket, EventStats, Grain, LocalDay, LocalHour, RollupRead, Sections, VisitKey, VisitStats,
    SEP, VISIT_FIELDS,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query is not valid (a 400, with this message).
    #[error("{0}")]
    Invalid(String),
    /// The store could not answer now (a 503: retry).
    #[error("{0}")]
    Unavailable(String),
    /// A valid query the rollups cannot answer (they hold one dimension at a time): the
    /// planner asks the [`EventQuery`] engine, or answers 400 with this message when
    /// there is none.
    #[error("{0}")]
    Unsupported(String),
}

/// Answers `/api/v2/query` from raw events (the columnar path), for what the rollups
/// cannot answer.
///
/// Contract: the request and the answer have the shape of [`execute`]'s, with
/// `meta.engine` saying which engine answered; wherever both engines can answer a query,
/// they give the same numbers (unique visitors within the rollups' sketch error: exact
/// below 16,384, 0.81% standard error above); what it cannot answer either is
/// `Invalid`, naming what; a store that cannot answer now is `Unavailable`. Its data
/// may lag the rollups' by the time the columnar files take to be made (the archive's
/// seal interval plus the refresh interval).
pub trait EventQuery: Send + Sync {
    /// Answers `req` for a property in zone `tz` over the local dates `dates`
    /// (inclusive).
    fn query<'a>(
        &'a self,
        req: &'a QueryRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>;

    /// Answers a retention table ([`RetentionRequest`], docs/METRICS.md "Retention").
    fn retention<'a>(
        &'a self,
        req: &'a RetentionRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>;

    /// Runs one read-only SQL statement over a property's raw events of the local dates
    /// `dates` (docs/SQL.md) and sends its answer as `format`, in chunks, into `out`, as
    /// rows come: JSON `{"columns", "rows", "truncated"}`, or CSV. Anything but a
    /// `SELECT` over that property's tables is `Invalid`, as are statements past their
    /// limits: sent as the only item when nothing was sent yet; after the first chunk a
    /// JSON answer ends with an `"error"` member instead, and a CSV one is cut short.
    fn sql<'a>(
        &'a self,
        property: &'a str,
        dates: (NaiveDate, NaiveDate),
        sql: &'a str,
        limits: SqlLimits,
        format: SqlFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

    /// Sends a property's raw events of the local dates `dates` (the `events` table of
    /// docs/SQL.md) as `format`, in chunks, into `out`; a failure is sent as the last
    /// item (before any chunk: nothing was exported). Returns when all is sent or the
    /// receiver is gone.
    fn export<'a>(
        &'a self,
        property: &'a str,
        dates: (NaiveDate, NaiveDate),
        format: ExportFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

    /// Answers a funnel ([`FunnelRequest`], docs/METRICS.md "Funnels") the same way.
    fn funnel<'a>(
        &'a self,
        req: &'a FunnelRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>;
}

/// The form of a SQL statement's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFormat {
    Json,
    Csv,
}

/// The file format of a raw export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Parquet,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Result<Self, QueryError> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "parquet" => Ok(ExportFormat::Parquet),
            other => bad(format!("format `{other}`: csv or parquet")),
        }
    }
}

/// The limits of one SQL statement (`POST /api/v1/sql`, docs/SQL.md).
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub timeout: std::time::Duration,
    /// Memory the statement's operators may hold (sorts, joins, aggregations).
    pub memory_bytes: usize,
    /// Rows answered at most; beyond, the answer says it was cut.
    pub max_rows: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(30),
            memory_bytes: 512 << 20,
            max_rows: 100_000,
        }
    }
}

/// `POST /api/v2/retention`: visitors by the week or month of their first visit, and how
/// many of them visited again in each later period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    pub site_id: String,
    pub date_range: Value,
    /// `week` (Monday to Sunday, the default) or `month`.
    #[serde(default)]
    pub period: Option<String>,
    /// Filters on visit attributes: only the visits they keep count.
    #[serde(default)]
    pub filters: Vec<Value>,
}

/// `POST /api/v2/funnel`: visitors who completed the property's goals `steps` in order
/// within one visit, by step, optionally by visit attributes (`dimensions`) and under
/// filters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelRequest {
    pub site_id: String,
    pub date_range: Value,
    /// Goal names, 2 to 8.
    pub steps: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Value>,
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// The property's goals, set by the server from the property (not sent).
    #[serde(skip)]
    pub goals: Vec<footfall_event::goal::Goal>,
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Unsupported(msg.into()))
}

impl From<footfall_store::Error> for QueryError {
    fn from(e: footfall_store::Error) -> Self {
        QueryError::Unavailable(e.to_string())
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Invalid(msg.into()))
}

/// The request body, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub site_id: String,
    pub metrics: Vec<String>,
    pub date_range: Value,
    #[serde(default)]
    pub dimensions: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Value>,
    #[serde(default)]
    pub order_by: Option<Vec<(String, String)>>,
    #[serde(default)]
    pub include: Option<Include>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
    /// The property's goals, set by the planner from the property (not sent): what
    /// `event:goal` and the conversion metrics read.
    #[serde(skip)]
    pub goals: Vec<footfall_event::goal::Goal>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Include {
    #[serde(default)]
    pub total_rows: bool,
    #[serde(default)]
    pub imports: bool,
    /// Every label of the query's time dimension over the range, in `meta.time_labels`
    /// (rows are only returned for buckets with data).
    #[serde(default)]
    pub time_labels: bool,
    /// Footfall's extension: `"previous_period"` or `"year_over_year"`; each row gets
    /// the same row of that period and the change (see [`attach_comparison`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<String>,
}

/// Every label of time dimension `dim` (`time:hour|day|week|month`) over the local
/// dates `[from, to]`, as the engines label rows; None for other dimensions.
pub fn time_labels(dim: &str, from: NaiveDate, to: NaiveDate) -> Option<Vec<String>> {
    let days = from.iter_days().take_while(|d| *d <= to);
    let mut out: Vec<String> = match dim {
        "time:hour" => days
            .flat_map(|d| (0..24).map(move |h| format!("{} {h:02}:00:00", d.format("%Y-%m-%d"))))
            .collect(),
        "time:day" | "time" => days.map(|d| d.format("%Y-%m-%d").to_string()).collect(),
        // The first, partial week under the range's first day (as [`respond`] labels it).
        "time:week" => days
            .map(|d| {
                (d - Duration::days(d.weekday().num_days_from_monday() as i64))
                    .max(from)
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect(),
        "time:month" => days
            .map(|d| month_start(d).format("%Y-%m-%d").to_string())
            .collect(),
        _ => return None,
    };
    out.dedup();
    Some(out)
}

/// The dates a comparison (`include.comparison`) is made with: the same number of days
/// just before (`previous_period`), or the same dates a year before
/// (`year_over_year`; 29 February becomes the 28th).
pub fn comparison_range(
    mode: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), QueryError> {
    match mode {
        "previous_period" => {
            let len = (to - from).num_days() + 1;
            Ok((from - Duration::days(len), from - Duration::days(1)))
        }
        "year_over_year" => {
            let back = |d: NaiveDate| {
                d.checked_sub_months(chrono::Months::new(12))
                    .unwrap_or(d - Duration::days(365))
            };
            Ok((back(from), back(to)))
        }
        _ => bad(format!(
            "include.comparison `{mode}` is not supported; use previous_period or year_over_year"
        )),
    }
}

/// The change of one metric from `old` to `new`: percent change rounded to a whole
/// number for counts and averages (100 when it grew from 0, 0 when both are 0), the
/// difference in points for rates and shares; None where there is no single number
/// (revenue per currency).
fn change(metric: &str, new: &Value, old: &Value) -> Value {
    let (Some(n), Some(o)) = (new.as_f64(), old.as_f64()) else {
        return Value::Null;
    };
    if matches!(
        metric,
        "bounce_rate" | "percentage" | "conversion_rate" | "group_conversion_rate"
    ) {
        return json!(round_to(n - o, 1));
    }
    if o == 0.0 {
        return json!(if n > 0.0 { 100 } else { 0 });
    }
    json!(round_to((n - o) / o * 100.0, 0) as i64)
}

/// Gives every row of `answer` the row of `comparison` (the same query over the
/// comparison period) with the same non-time dimension values and, for a time
/// dimension, the label at the same position in the two periods' labels
/// (`labels` = (this period's, the comparison's)): `"comparison": {"dimensions",
/// "metrics", "change"}`; a row with no counterpart compares with zeros.
pub fn attach_comparison(
    answer: &mut Value,
    comparison: &Value,
    dimensions: &[String],
    metrics: &[String],
    labels: Option<(&[String], &[String])>,
) {
    let time_at = dimensions.iter().position(|d| d.starts_with("time"));
    let key_of = |dims: &Value, shift: &dyn Fn(&str) -> Option<String>| -> Option<Vec<String>> {
        dims.as_array()?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                if Some(i) == time_at {
                    shift(&s)
                } else {
                    Some(s)
                }
            })
            .collect()
    };
    let same = |s: &str| Some(s.to_string());
    let mut old: HashMap<Vec<String>, &Value> = HashMap::new();
    for r in comparison["results"].as_array().into_iter().flatten() {
        if let Some(k) = key_of(&r["dimensions"], &same) {
            old.insert(k, r);
        }
    }
    let to_old = |s: &str| -> Option<String> {
        let (now, then) = labels?;
        let i = now.iter().position(|l| l == s)?;
        then.get(i).cloned()
    };
    let zeros: Vec<Value> = metrics
        .iter()
        .map(|m| {
            if m == "total_revenue" || m == "average_revenue" {
                json!({})
            } else {
                json!(0)
            }
        })
        .collect();
    for r in answer["results"].as_array_mut().into_iter().flatten() {
        let key = key_of(&r["dimensions"], &to_old);
        let (dims, ms) = match key.as_ref().and_then(|k| old.get(k).map(|o| (k, o))) {
            Some((_, o)) => (
                o["dimensions"].clone(),
                o["metrics"].as_array().cloned().unwrap_or_default(),
            ),
            None => {
                let mut d = r["dimensions"].clone();
                if let (Some(i), Some(k)) = (time_at, &key) {
                    d[i] = json!(k[i]);
                }
                (d, zeros.clone())
            }
        };
        let changes: Vec<Value> = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| change(m, &r["metrics"][i], ms.get(i).unwrap_or(&Value::Null)))
            .collect();
        r["comparison"] = json!({"dimensions": dims, "metrics": ms, "change": changes});
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    #[serde(default = "default_limit")]
    pub limit: usize,
    #[serde(default)]
    pub offset: usize,
}

fn default_limit() -> usize {
    10_000
}

/// A metric of the Stats API that one of the engines answers (docs/METRICS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Visitors,
    Visits,
    Pageviews,
    Events,
    ViewsPerVisit,
    BounceRate,
    VisitDuration,
    TotalRevenue,
    /// Only the columnar engine: the rollups answer `Unsupported` for these.
    Percentage,
    ConversionRate,
    GroupConversionRate,
    AverageRevenue,
    TimeOnPage,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Self, QueryError> {
        Ok(match s {
            "visitors" => Metric::Visitors,
            "visits" => Metric::Visits,
            "pageviews" => Metric::Pageviews,
            "events" => Metric::Events,
            "views_per_visit" => Metric::ViewsPerVisit,
            "bounce_rate" => Metric::BounceRate,
            "visit_duration" => Metric::VisitDuration,
            "total_revenue" => Metric::TotalRevenue,
            "percentage" => Metric::Percentage,
            "conversion_rate" => Metric::ConversionRate,
            "group_conversion_rate" => Metric::GroupConversionRate,
            "average_revenue" => Metric::AverageRevenue,
            "time_on_page" => Metric::TimeOnPage,
            _ => return bad(format!(
                "unknown metric `{s}`; supported: visitors, visits, pageviews, events, views_per_visit, bounce_rate, visit_duration, time_on_page, total_revenue, average_revenue, percentage, conversion_rate, group_conversion_rate"
            )),
        })
    }
    pub fn is_visit_level(self) -> bool {
        matches!(
            self,
            Metric::Visits | Metric::ViewsPerVisit | Metric::BounceRate | Metric::VisitDuration
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeDim {
    Hour,
    Day,
    /// Weeks from Monday, labelled by their Monday.
    Week,
    Month,
}

/// A breakdown dimension, answered from one map of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyDim {
    Page,
    Name,
    Source,
    EntryPage,
    /// Field `i` of the visit keys ([`VISIT_FIELDS`]); `visit:source` is `Visit(0)` when
    /// it is combined with another visit attribute.
    Visit(usize),
    /// `event:props:<key>`; the key is held beside the dimension (one per query).
    Prop,
}

const SUPPORTED_DIMS: &str = "time:hour, time:day, time:week, time:month, event:page, event:name, event:props:<key>, visit:entry_page, visit:source, visit:referrer, visit:channel, visit:utm_source, visit:utm_medium, visit:utm_campaign, visit:utm_content, visit:utm_term, visit:browser, visit:browser_version, visit:os, visit:os_version, visit:device, visit:country, visit:region, visit:city";

impl KeyDim {
    /// The dimension and, for `event:props:<key>`, its property key.
    fn parse(s: &str) -> Option<(Self, Option<String>)> {
        Some(match s {
            "event:page" => (KeyDim::Page, None),
            "event:name" => (KeyDim::Name, None),
            "visit:source" => (KeyDim::Source, None),
            "visit:entry_page" => (KeyDim::EntryPage, None),
            _ => {
                if let Some(k) = s.strip_prefix("event:props:").filter(|k| !k.is_empty()) {
                    return Some((KeyDim::Prop, Some(k.to_string())));
                }
                let i = VISIT_FIELDS.iter().position(|f| *f == s)?;
                (KeyDim::Visit(i), None)
            }
        })
    }
    fn is_event_level(self) -> bool {
        matches!(self, KeyDim::Page | KeyDim::Name | KeyDim::Prop)
    }
    /// Its field in the visit keys, for the dimensions answerable from them.
    fn visit_field(self) -> Option<usize> {
        match self {
            KeyDim::Source => Some(0),
            KeyDim::Visit(i) => Some(i),
            _ => None,
        }
    }
}

/// One entry of a bucket's map: event-level or visit-level statistics.
enum Stat<'a> {
    Ev(&'a EventStats),
    Vi(&'a VisitStats),
}

/// Calls `f(group, full_key, stats)` for each entry of `b`'s map for `dim`. `group` is
/// the dimension's value; `full_key` is the map key (the whole visit key for
/// [`KeyDim::Visit`]), which filters read.
fn for_each_entry<'a>(
    b: &'a Bucket,
    dim: KeyDim,
    prop: &str,
    f: &mut dyn FnMut(&'a str, &'a str, Stat<'a>),
) {
    match dim {
        KeyDim::Page => b.pages.iter().for_each(|(k, s)| f(k, k, Stat::Ev(s))),
        KeyDim::Name => b.names.iter().for_each(|(k, s)| f(k, k, Stat::Ev(s))),
        KeyDim::Source => b.sources.iter().for_each(|(k, s)| f(k, k, Stat::Vi(s))),
        KeyDim::EntryPage => b.entry_pages.iter().for_each(|(k, s)| f(k, k, Stat::Vi(s))),
        KeyDim::Visit(i) => b
            .visit_keys
            .iter()
            .for_each(|(k, s)| f(VisitKey::field(k, i), k, Stat::Vi(s))),
        KeyDim::Prop => {
            for (k, s) in &b.props {
                if let Some(v) = k.strip_prefix(prop).and_then(|r| r.strip_prefix(SEP)) {
                    f(v, k, Stat::Ev(s));
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Predicate {
    Is(Vec<String>),
    IsNot(Vec<String>),
    Contains(Vec<String>),
}

impl Predicate {
    fn matches(&self, v: &str) -> bool {
        match self {
            Predicate::Is(xs) => xs.iter().any(|x| x == v),
            Predicate::IsNot(xs) => xs.iter().all(|x| x != v),
            Predicate::Contains(xs) => xs.iter().any(|x| v.contains(x.as_str())),
        }
    }
}

/// Accumulated statistics of one result row.
#[derive(Default)]
struct Acc {
    events: EventStats,
    visits: VisitStats,
    /// Millionths of a unit, by currency.
    revenue: std::collections::BTreeMap<String, i64>,
}

impl Acc {
    fn add(&mut self, s: Stat<'_>) {
        match s {
            Stat::Ev(e) => self.events.merge(e),
            Stat::Vi(v) => self.visits.merge(v),
        }
    }
}

/// The local date range a `date_range` value stands for, relative to `today`.
pub fn resolve_date_range(
    v: &Value,
    today: NaiveDate,
    earliest: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate), QueryError> {
    let months_back = |n: u32| {
        let first = month_start(today);
        let mut y = first.year();
        let mut m = first.month() as i32 - n as i32;
        while m < 1 {
            m += 12;
            y -= 1;
        }
        NaiveDate::from_ymd_opt(y, m as u32, 1).unwrap()
    };
    match v {
        Value::String(s) => Ok(match s.as_str() {
            "day" => (today, today),
            "7d" => (today - Duration::days(6), today),
            "28d" => (today - Duration::days(27), today),
            "30d" => (today - Duration::days(29), today),
            "91d" => (today - Duration::days(90), today),
            "month" => (month_start(today), today),
            "6mo" => (months_back(5), today),
            "12mo" => (months_back(11), today),
            "year" => (NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap(), today),
            "all" => (earliest.unwrap_or(today).min(today), today),
            other => {
                return bad(format!(
                    "unsupported date_range `{other}`; use day, 7d, 28d, 30d, 91d, month, 6mo, 12mo, year, all or [\"YYYY-MM-DD\", \"YYYY-MM-DD\"]"
                ))
            }
        }),
        Value::Array(a) if a.len() == 2 => {
            let d = |x: &Value| -> Result<NaiveDate, QueryError> {
                let s = x.as_str().ok_or_else(|| QueryError::Invalid("date_range dates must be strings".into()))?;
                NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                    .map_err(|_| QueryError::Invalid(format!("`{s}` is not a YYYY-MM-DD date")))
            };
            let (a, b) = (d(&a[0])?, d(&a[1])?);
            if b < a {
                return bad("date_range ends before it starts");
            }
            Ok((a, b))
        }
        _ => bad("date_range must be a string such as \"7d\" or a [start, end] pair of dates"),
    }
}

/// A `date_range` of two date-times (`["2026-11-21T10:30:00+05:30",
/// "2026-11-21T18:00:00+05:30"]`, or without an offset: the property's wall clock): the
/// first and last millisecond it covers, the end inclusive to its second. `None` for
/// every other range (named ranges, pairs of dates).
pub fn datetime_bounds(v: &Value, tz: Tz) -> Result<Option<(i64, i64)>, QueryError> {
    let Some([a, b]) = v.as_array().map(Vec::as_slice) else {
        return Ok(None);
    };
    let (Some(a), Some(b)) = (a.as_str(), b.as_str()) else {
        return Ok(None);
    };
    if a.len() <= 10 && b.len() <= 10 {
        return Ok(None);
    }
    let instant = |s: &str| -> Result<i64, QueryError> {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(t.timestamp_millis());
        }
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
            .map_err(|_| {
                QueryError::Invalid(format!(
                    "`{s}` is not an ISO 8601 date-time (YYYY-MM-DDTHH:MM:SS, with or without an offset)"
                ))
            })?;
        tz.from_local_datetime(&naive)
            .earliest()
            .map(|t| t.timestamp_millis())
            .ok_or_else(|| QueryError::Invalid(format!("`{s}` does not exist in {tz}")))
    };
    let (from, to) = (instant(a)?, instant(b)? + 999);
    if to < from {
        return bad("date_range ends before it starts");
    }
    Ok(Some((from, to)))
}

/// Whether date-time bounds cover whole local days exactly (the rollups answer those).
pub fn whole_days(bounds: (i64, i64), tz: Tz) -> bool {
    let (a, b) = (local_time(&tz, bounds.0), local_time(&tz, bounds.1 + 1));
    a.time() == chrono::NaiveTime::MIN && b.time() == chrono::NaiveTime::MIN
}

/// The local dates a `date_range` stands for in a property: "today" in its zone, and
/// `all` from its first day with data.
pub fn property_date_range(
    store: &dyn RollupRead,
    site_id: &str,
    date_range: &Value,
    tz: Tz,
    now_ms: i64,
) -> Result<(NaiveDate, NaiveDate), QueryError> {
    let today = local_time(&tz, now_ms).date();
    if let Some((a, b)) = datetime_bounds(date_range, tz)? {
        return Ok((local_time(&tz, a).date(), local_time(&tz, b).date()));
    }
    // Only `all` needs the first day: other ranges do not ask a remote store for it.
    let earliest = if date_range.as_str() == Some("all") {
        store.first_day(site_id)?.map(|d| d.date())
    } else {
        None
    };
    resolve_date_range(date_range, today, earliest)
}

/// One CSV field of a JSON value (RFC 4180): empty for null, text as is, quoted when
/// it holds a comma, a quote or a line break. The SQL answers and exports share it.
pub fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `num / den`, 0 when there is nothing to divide by.
pub fn rate(num: i64, den: i64) -> f64 {
    if den <= 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Rounds half away from zero to `places` decimals.
pub fn round_to(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn metric_value(m: Metric, acc: &Acc, visit_family: bool) -> Value {
    let v = &acc.visits;
    match m {
        Metric::Visitors => {
            if visit_family {
                json!(v.visitors.count())
            } else {
                json!(acc.events.visitors.count())
            }
        }
        Metric::Visits => json!(v.visits),
        Metric::Pageviews => {
            if visit_family {
                json!(v.pageviews)
            } else {
                json!(acc.events.pageviews)
            }
        }
        Metric::Events => {
            if visit_family {
                json!(v.events)
            } else {
                json!(acc.events.events)
            }
        }
        Metric::ViewsPerVisit => json!(round_to(rate(v.pageviews, v.visits), 2)),
        Metric::BounceRate => json!(round_to(100.0 * rate(v.bounces, v.visits), 0) as i64),
        Metric::VisitDuration => json!(round_to(rate(v.duration_ms, v.visits) / 1000.0, 0) as i64),
        // Refused before any scan (`Unsupported`).
        Metric::Percentage
        | Metric::ConversionRate
        | Metric::GroupConversionRate
        | Metric::AverageRevenue
        | Metric::TimeOnPage => Value::Null,
        Metric::TotalRevenue => Value::Object(
            acc.revenue
                .iter()
                .map(|(c, m)| (c.clone(), json!(round_to(*m as f64 / 1e6, 6))))
                .collect(),
        ),
    }
}

/// The `n` groups of `dim` with the most visitors over `buckets`, with their statistics.
///
/// Counters are summed for every group, but unique-visitor sketches — the expensive part —
/// are merged only for groups in decreasing order of an upper bound of their visitors,
/// stopping once the bound falls below the n-th best union found. A bucket adds its exact
/// visitor count to the bound, or for a dense sketch its events (page and event groups) or
/// visits (visit groups), which no visitor count can exceed, widened by 1/16 + 64 so that
/// the sketch's estimate (0.81% standard error) cannot pass it either. Equal bounds are
/// still examined, so ties resolve as in the full computation.
fn top_by_visitors<'a>(
    buckets: &[(Option<i64>, &'a Bucket)],
    dim: KeyDim,
    prop: &str,
    n: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Vec<(&'a str, Acc)> {
    /// Counters of a group, and the head of its list of entries in `entries`.
    struct Group {
        bound: u64,
        pageviews: u64,
        events: u64,
        /// Visit counters (visitors are merged later, for examined groups only).
        visits: [i64; 5],
        visit_level: bool,
        head: u32,
    }
    const NONE: u32 = u32::MAX;
    let mut index: HashMap<&'a str, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut groups: Vec<(&'a str, Group)> = Vec::new();
    // Every entry once, linked per group (no allocation per group).
    let mut entries: Vec<(Stat<'a>, u32)> = Vec::new();
    for (_, b) in buckets {
        for_each_entry(b, dim, prop, &mut |k, full, st| {
            if !keep(k, full) {
                return;
            }
            let gi = *index.entry(k).or_insert_with(|| {
                groups.push((
                    k,
                    Group {
                        bound: 0,
                        pageviews: 0,
                        events: 0,
                        visits: [0; 5],
                        visit_level: false,
                        head: NONE,
                    },
                ));
                (groups.len() - 1) as u32
            });
            let g = &mut groups[gi as usize].1;
            match st {
                Stat::Ev(s) => {
                    g.bound = g.bound.saturating_add(visitor_bound(&st));
                    g.pageviews += s.pageviews;
                    g.events += s.events;
                }
                Stat::Vi(s) => {
                    g.bound = g.bound.saturating_add(visitor_bound(&st));
                    let v = &mut g.visits;
                    v[0] += s.visits;
                    v[1] += s.bounces;
                    v[2] += s.duration_ms;
                    v[3] += s.pageviews;
                    v[4] += s.events;
                    g.visit_level = true;
                }
            }
            entries.push((st, g.head));
            g.head = (entries.len() - 1) as u32;
        });
    }
    let mut order: Vec<(u64, &'a str, u32)> = groups
        .iter()
        .enumerate()
        .map(|(i, (k, g))| (g.bound, *k, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    // The n best so far, in result order: visitors descending, then key ascending (the
    // query's own tie-break), so cutting at n keeps exactly the rows it would return.
    let mut best: Vec<(u64, &'a str, Acc)> = Vec::with_capacity(n + 1);
    for (bound, k, gi) in order {
        if best.len() >= n && bound < best[n - 1].0 {
            break;
        }
        let g = &groups[gi as usize].1;
        let mut acc = Acc::default();
        acc.events.pageviews = g.pageviews;
        acc.events.events = g.events;
        let [visits, bounces, duration_ms, pageviews, events] = g.visits;
        acc.visits = VisitStats {
            visits,
            bounces,
            duration_ms,
            pageviews,
            events,
            visitors: Default::default(),
        };
        let mut at = g.head;
        while at != NONE {
            let (st, next) = &entries[at as usize];
            match st {
                Stat::Ev(s) => acc.events.visitors.merge(&s.visitors),
                Stat::Vi(s) => acc.visits.visitors.merge(&s.visitors),
            }
            at = *next;
        }
        offer(&mut best, n, k, acc, g.visit_level);
    }
    best.into_iter().map(|(_, k, acc)| (k, acc)).collect()
}

/// Puts a merged group into the n best so far, kept in result order: visitors
/// descending, then key ascending (the query's own tie-break), so cutting at n keeps
/// exactly the rows the full computation would return.
fn offer<'a>(
    best: &mut Vec<(u64, &'a str, Acc)>,
    n: usize,
    k: &'a str,
    acc: Acc,
    visit_level: bool,
) {
    let visitors = if visit_level {
        acc.visits.visitors.count()
    } else {
        acc.events.visitors.count()
    };
    let pos = best.partition_point(|(v, key, _)| {
        (*v, std::cmp::Reverse(*key)) > (visitors, std::cmp::Reverse(k))
    });
    if pos < n {
        best.insert(pos, (visitors, k, acc));
        best.truncate(n);
    }
}

/// Upper bound of the visitors of one bucket entry: exact while the sketch is exact;
/// for a dense sketch its events (event groups) or visits (visit groups), which no
/// visitor count can exceed, widened by 1/16 + 64 so that the sketch's estimate (0.81%
/// standard error) cannot pass it either.
fn visitor_bound(st: &Stat<'_>) -> u64 {
    let widen = |x: u64| x.saturating_add(x / 16).saturating_add(64);
    match st {
        Stat::Ev(s) => s.visitors.exact_count().unwrap_or_else(|| widen(s.events)),
        Stat::Vi(s) => s
            .visitors
            .exact_count()
            .unwrap_or_else(|| widen(s.visits.max(0) as u64)),
    }
}

/// The entry for `key` of `b`'s map for `dim` (dimensions whose group is the map key).
fn entry_of<'a>(b: &'a Bucket, dim: KeyDim, key: &str) -> Option<Stat<'a>> {
    match dim {
        KeyDim::Page => b.pages.get(key).map(Stat::Ev),
        KeyDim::Name => b.names.get(key).map(Stat::Ev),
        KeyDim::Source => b.sources.get(key).map(Stat::Vi),
        KeyDim::EntryPage => b.entry_pages.get(key).map(Stat::Vi),
        KeyDim::Visit(_) | KeyDim::Prop => None,
    }
}

/// [`top_by_visitors`] without grouping every entry, for dimensions whose group is the
/// map key: Fagin's threshold algorithm. Each bucket's entries are ranked by their
/// visitor bound (only the best [`RANK_DEPTH`] kept, found by selection, not sorting);
/// the lists are read row by row, every group met is looked up in all buckets and
/// merged if it can still reach the top, and reading stops once the sum of the current
/// row's bounds — a bound for every group not yet met — is below the n-th best. Answers
/// `None` (the caller groups everything) when a list runs out of ranked entries first.
fn top_by_threshold<'a>(
    buckets: &[(Option<i64>, &'a Bucket)],
    dim: KeyDim,
    n: usize,
    keep: &dyn Fn(&str, &str) -> bool,
) -> Option<Vec<(&'a str, Acc)>> {
    const RANK_DEPTH: usize = 512;
    if matches!(dim, KeyDim::Visit(_) | KeyDim::Prop) {
        return None;
    }
    // Per bucket: (bound, key) of its best entries, and whether some were left out.
    let mut lists: Vec<(Vec<(u64, &'a str)>, bool)> = Vec::with_capacity(buckets.len());
    for (_, b) in buckets {
        let mut l: Vec<(u64, &'a str)> = Vec::new();
        for_each_entry(b, dim, "", &mut |k, full, st| {
            if keep(k, full) {
                l.push((visitor_bound(&st), k));
            }
        });
        let cut = l.len() > RANK_DEPTH;
        if cut {
            l.select_nth_unstable_by(RANK_DEPTH, |a, b| b.0.cmp(&a.0));
            l.truncate(RANK_DEPTH);
        }
        l.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        lists.push((l, cut));
    }
    let mut seen: HashSet<&'a str, foldhash::fast::RandomState> = HashSet::default();
    let mut best: Vec<(u64, &'a str, Acc)> = Vec::with_capacity(n + 1);
    for depth in 0.. {
        let mut threshold = 0u64;
        let mut more = false;
        for (l, cut) in &lists {
            match l.get(depth) {
                Some((b, _)) => {
                    threshold = threshold.saturating_add(*b);
                    more = true;
                }
                None if *cut => return None,
                None => {}
            }
        }
        if !more || (best.len() >= n && threshold < best[n - 1].0) {
            break;
        }
        for (l, _) in &lists {
            let Some(&(_, k)) = l.get(depth) else {
                continue;
            };
            if !seen.insert(k) {
                continue;
            }
            let stats: Vec<Stat<'a>> = buckets
                .iter()
                .filter_map(|(_, b)| entry_of(b, dim, k))
                .collect();
            let bound = stats
                .iter()
                .fold(0u64, |t, st| t.saturating_add(visitor_bound(st)));
            if best.len() >= n && bound < best[n - 1].0 {
                continue;
            }
            let mut acc = Acc::default();
            for st in stats {
                acc.add(st);
            }
            offer(
                &mut best,
                n,
                k,
                acc,
                matches!(dim, KeyDim::Source | KeyDim::EntryPage),
            );
        }
    }
    Some(best.into_iter().map(|(_, k, acc)| (k, acc)).collect())
}

fn parse_filter(f: &Value) -> Result<((KeyDim, Option<String>), Predicate), QueryError> {
    let a = f
        .as_array()
        .filter(|a| a.len() == 3)
        .ok_or_else(|| QueryError::Unsupported(format!("filter {f}: the rollups take [operator, dimension, [values]] only (no logical operators or options)")))?;
    let op = a[0].as_str().unwrap_or("");
    let dim_name = a[1].as_str().unwrap_or("");
    let dim = KeyDim::parse(dim_name).ok_or_else(|| {
        QueryError::Unsupported(format!(
            "filtering on `{dim_name}` is not supported; supported: {}",
            &SUPPORTED_DIMS[SUPPORTED_DIMS.find("event:").unwrap_or(0)..]
        ))
    })?;
    let values: Vec<String> = a[2]
        .as_array()
        .ok_or_else(|| QueryError::Invalid("filter values must be a list".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .ok_or_else(|| QueryError::Invalid("filter values must be strings".into()))
        })
        .collect::<Result<_, _>>()?;
    let p = match op {
        "is" => Predicate::Is(values),
        "is_not" => Predicate::IsNot(values),
        "contains" => Predicate::Contains(values),
        _ => {
            return unsupported(format!(
                "filter operator `{op}` is not supported by the rollups; supported: is, is_not, contains"
            ))
        }
    };
    Ok((dim, p))
}

/// Runs a query for a property whose zone is `tz`, at wall-clock time `now_ms`.
pub fn execute(
    req: &QueryRequest,
    tz: Tz,
    store: &dyn RollupRead,
    now_ms: i64,
) -> Result<Value, QueryError> {
    if req.metrics.is_empty() {
        return bad("at least one metric is required");
    }
    let metrics: Vec<Metric> = req
        .metrics
        .iter()
        .map(|m| Metric::parse(m))
        .collect::<Result<_, _>>()?;
    if let Some(b) = datetime_bounds(&req.date_range, tz)? {
        if !whole_days(b, tz) {
            return unsupported(
                "a date_range of date-times that are not whole local days is not held by the rollups",
            );
        }
    }
    let mut time_dim = None;
    let mut key_dim = None;
    // The property key of an `event:props:<key>` dimension or filter.
    let mut prop_key: Option<String> = None;
    let mut set_prop = |k: Option<String>| -> Result<(), QueryError> {
        match (k, &prop_key) {
            (Some(k), Some(p)) if k != *p => bad("a query may use one event:props key at a time"),
            (Some(k), _) => {
                prop_key = Some(k);
                Ok(())
            }
            _ => Ok(()),
        }
    };
    for d in &req.dimensions {
        match d.as_str() {
            "time:hour" | "time:day" | "time:week" | "time:month" => {
                if time_dim.is_some() {
                    return bad("at most one time dimension");
                }
                time_dim = Some(match d.as_str() {
                    "time:hour" => TimeDim::Hour,
                    "time:day" => TimeDim::Day,
                    "time:week" => TimeDim::Week,
                    _ => TimeDim::Month,
                });
            }
            other => match KeyDim::parse(other) {
                Some((k, p)) if key_dim.is_none() => {
                    set_prop(p)?;
                    key_dim = Some(k)
                }
                Some(_) => {
                    return unsupported("breaking down by two non-time dimensions at once is not supported by the rollups")
                }
                None => {
                    return unsupported(format!(
                        "dimension `{other}` is not supported by the rollups; supported: {SUPPORTED_DIMS}"
                    ))
                }
            },
        }
    }
    let mut filters: Vec<(KeyDim, Predicate)> = Vec::new();
    for f in &req.filters {
        let ((d, p), pred) = parse_filter(f)?;
        set_prop(p)?;
        filters.push((d, pred));
    }
    let prop_key = prop_key.unwrap_or_default();
    // Visit attributes combine freely: they are all fields of the visit keys.
    let visit_combo = {
        let mut ds: Vec<KeyDim> = filters.iter().map(|(d, _)| *d).collect();
        ds.extend(key_dim);
        ds.dedup();
        ds.len() > 1
            && ds.iter().all(|d| d.visit_field().is_some())
            && ds.iter().any(|d| *d != ds[0])
    };
    let key_dim = match key_dim {
        Some(d) if visit_combo => Some(KeyDim::Visit(d.visit_field().unwrap())),
        k => k,
    };
    // Which bucket map answers the query: the breakdown's, else the filters'.
    let mut map_dim = key_dim;
    for (d, _) in &filters {
        let d = if visit_combo {
            KeyDim::Visit(d.visit_field().unwrap())
        } else {
            *d
        };
        match map_dim {
            None => map_dim = Some(d),
            Some(m) if m == d || visit_combo => {}
            Some(m) => {
                return unsupported(format!(
                    "combining {} with a filter on {} is not supported (rollups hold one dimension at a time)",
                    dim_name(m),
                    dim_name(d)
                ))
            }
        }
    }
    let visit_family = map_dim.map(|d| !d.is_event_level()).unwrap_or(false);
    if let Some(m) = metrics.iter().position(|m| {
        matches!(
            m,
            Metric::Percentage
                | Metric::ConversionRate
                | Metric::GroupConversionRate
                | Metric::AverageRevenue
                | Metric::TimeOnPage
        )
    }) {
        return unsupported(format!(
            "metric `{}` is not held by the rollups",
            req.metrics[m]
        ));
    }
    let revenue = metrics.contains(&Metric::TotalRevenue);
    if revenue && map_dim.is_some_and(|d| d != KeyDim::Name) {
        return unsupported("metric `total_revenue` is supported by the rollups with time dimensions and event:name (as a dimension or filter)");
    }
    if let Some(d) = map_dim.filter(|d| d.is_event_level()) {
        if let Some(m) = metrics.iter().find(|m| m.is_visit_level()) {
            return unsupported(format!(
                "metric `{}` is not supported with {} (supported: visitors, pageviews, events)",
                req.metrics[metrics.iter().position(|x| x == m).unwrap()],
                dim_name(d)
            ));
        }
    }

    let (from, to) = property_date_range(store, &req.site_id, &req.date_range, tz, now_ms)?;

    struct Row {
        time: Option<i64>,
        key: Option<String>,
        metrics: Vec<Value>,
    }
    let order = order_of(req)?;
    let pagination = req.pagination.clone().unwrap_or(Pagination {
        limit: default_limit(),
        offset: 0,
    });
    let include = req.include.clone().unwrap_or_default();
    // Top-N by visitors over a breakdown: unique counts are only merged for the groups
    // that can still reach the top (see `top_by_visitors`); the answer is the same.
    let top_n = (time_dim.is_none()
        && key_dim.is_some()
        && key_dim == map_dim
        && !include.total_rows
        && order
            .first()
            .is_some_and(|(k, desc)| k == "visitors" && *desc))
    .then(|| pagination.offset.saturating_add(pagination.limit))
    .filter(|n| (1..=1000).contains(n));
    let mut rows: Vec<Row> = Vec::new();
    let grain = if time_dim == Some(TimeDim::Hour) {
        Grain::Hour
    } else {
        Grain::Day
    };
    let days = LocalDay::from_date(from)..=LocalDay::from_date(to);
    let sections = sections_for(map_dim, revenue);
    store.scan(&req.site_id, days, grain, sections, &mut |parts| {
        if parts.is_empty() {
            return;
        }
        // Groups borrow their keys from the buckets; a key is copied once per result row.
        let mut groups: HashMap<(Option<i64>, Option<&str>), Acc, foldhash::fast::RandomState> =
            HashMap::default();
        // The buckets of the range, with the time group each falls in.
        let buckets: Vec<(Option<i64>, &Bucket)> = parts
            .iter()
            .map(|(k, b)| {
                let key = match time_dim {
                    Some(TimeDim::Hour) | Some(TimeDim::Day) => Some(*k),
                    Some(TimeDim::Week) => {
                        let day = LocalDay(*k as i32);
                        Some((day.0 - day.date().weekday().num_days_from_monday() as i32) as i64)
                    }
                    Some(TimeDim::Month) => {
                        Some(LocalDay::from_date(month_start(LocalDay(*k as i32).date())).0 as i64)
                    }
                    None => None,
                };
                (key, *b)
            })
            .collect();
        // Filters read the group value, or in visit-key mode their own field of the key.
        let keep = |k: &str, full: &str| {
            filters
                .iter()
                .all(|(d, p)| match (visit_combo, d.visit_field()) {
                    (true, Some(i)) => p.matches(VisitKey::field(full, i)),
                    _ => p.matches(k),
                })
        };
        if let (Some(n), Some(dim)) = (top_n.filter(|_| !revenue), key_dim) {
            rows = top_by_threshold(&buckets, dim, n, &keep)
                .unwrap_or_else(|| top_by_visitors(&buckets, dim, &prop_key, n, &keep))
                .into_iter()
                .map(|(k, acc)| Row {
                    time: None,
                    key: Some(k.to_string()),
                    metrics: metrics
                        .iter()
                        .map(|m| metric_value(*m, &acc, visit_family))
                        .collect(),
                })
                .collect();
            return;
        }
        for (time_key, b) in buckets {
            match map_dim {
                None => {
                    let acc = groups.entry((time_key, None)).or_default();
                    acc.events.merge(&b.events);
                    acc.visits.merge(&b.visits);
                }
                Some(dim) => for_each_entry(b, dim, &prop_key, &mut |k, full, st| {
                    if keep(k, full) {
                        groups
                            .entry((time_key, key_dim.map(|_| k)))
                            .or_default()
                            .add(st);
                    }
                }),
            }
            if revenue {
                for (k, m) in &b.revenue {
                    let (name, currency) = k.split_once(SEP).unwrap_or((k, ""));
                    if map_dim.is_some() && !keep(name, name) {
                        continue;
                    }
                    let acc = groups.entry((time_key, key_dim.map(|_| name))).or_default();
                    *acc.revenue.entry(currency.to_string()).or_default() += m;
                }
            }
        }
        rows = groups
            .into_iter()
            .filter(|(_, acc)| {
                acc.events.events > 0 || acc.visits.visits > 0 || !acc.revenue.is_empty()
            })
            .map(|((t, k), acc)| Row {
                time: t,
                key: k.map(str::to_string),
                metrics: metrics
                    .iter()
                    .map(|m| metric_value(*m, &acc, visit_family))
                    .collect(),
            })
            .collect();
    })?;

    let time_label = |k: i64| -> String {
        match time_dim {
            Some(TimeDim::Hour) => LocalHour(k).naive().format("%Y-%m-%d %H:%M:%S").to_string(),
            _ => LocalDay(k as i32).date().format("%Y-%m-%d").to_string(),
        }
    };
    if req.dimensions.is_empty() && rows.is_empty() {
        let acc = Acc::default();
        rows.push(Row {
            time: None,
            key: None,
            metrics: metrics
                .iter()
                .map(|m| metric_value(*m, &acc, visit_family))
                .collect(),
        });
    }

    let rows = rows
        .into_iter()
        .map(|r| ResultRow {
            time: r.time,
            dims: req
                .dimensions
                .iter()
                .map(|d| {
                    if d.starts_with("time:") {
                        json!(time_label(r.time.unwrap_or(0)))
                    } else {
                        json!(r.key.clone().unwrap_or_default())
                    }
                })
                .collect(),
            metrics: r.metrics,
        })
        .collect();
    respond(req, tz, (from, to), rows, "rollups")
}

/// One row of an answer before ordering: its time group (the sort key of the time
/// dimension), its dimension values in the request's order, its metrics.
pub struct ResultRow {
    pub time: Option<i64>,
    pub dims: Vec<Value>,
    pub metrics: Vec<Value>,
}

/// The order of the rows: `order_by` as asked, else time ascending, then the first
/// metric descending (ties: the dimension values ascending, see [`respond`]).
pub fn order_of(req: &QueryRequest) -> Result<Vec<(String, bool)>, QueryError> {
    Ok(match &req.order_by {
        Some(o) => o
            .iter()
            .map(|(k, dir)| match dir.as_str() {
                "asc" => Ok((k.clone(), false)),
                "desc" => Ok((k.clone(), true)),
                _ => bad(format!("order direction `{dir}` must be asc or desc")),
            })
            .collect::<Result<_, _>>()?,
        None => {
            let mut o = Vec::new();
            if let Some(t) = req.dimensions.iter().find(|d| d.starts_with("time")) {
                o.push((t.clone(), false));
            }
            o.push((req.metrics[0].clone(), true));
            o
        }
    })
}

/// Orders, pages and shapes an answer over the local dates `[from, to]`: where both
/// engines end, so that they answer in one shape and one order (`meta.engine` names
/// the one that answered).
pub fn respond(
    req: &QueryRequest,
    tz: Tz,
    (from, to): (NaiveDate, NaiveDate),
    mut rows: Vec<ResultRow>,
    engine: &str,
) -> Result<Value, QueryError> {
    type RowCmp = Box<dyn Fn(&ResultRow, &ResultRow) -> std::cmp::Ordering>;
    // A range that starts mid-week: its first week is labelled with the range's first
    // day, as Plausible labels it (the bucket still starts on the Monday).
    if let Some(i) = req.dimensions.iter().position(|d| d == "time:week") {
        let first = from.format("%Y-%m-%d").to_string();
        for r in &mut rows {
            if r.dims[i].as_str().is_some_and(|l| l < first.as_str()) {
                r.dims[i] = json!(first);
            }
        }
    }
    let has_time = req.dimensions.iter().any(|d| d.starts_with("time"));
    let mut sorters: Vec<(RowCmp, bool)> = Vec::new();
    for (k, desc) in order_of(req)? {
        if let Some(i) = req.metrics.iter().position(|m| *m == k) {
            sorters.push((
                Box::new(move |a: &ResultRow, b: &ResultRow| {
                    a.metrics[i]
                        .as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&b.metrics[i].as_f64().unwrap_or(0.0))
                }),
                desc,
            ));
        } else if k.starts_with("time") && has_time {
            sorters.push((
                Box::new(|a: &ResultRow, b: &ResultRow| a.time.cmp(&b.time)),
                desc,
            ));
        } else if let Some(i) = req.dimensions.iter().position(|d| *d == k) {
            sorters.push((
                Box::new(move |a: &ResultRow, b: &ResultRow| {
                    a.dims[i].as_str().cmp(&b.dims[i].as_str())
                }),
                desc,
            ));
        } else {
            return bad(format!(
                "cannot order by `{k}`: it is neither a requested metric nor a dimension"
            ));
        }
    }
    let keys: Vec<usize> = (0..req.dimensions.len())
        .filter(|&i| !req.dimensions[i].starts_with("time"))
        .collect();
    rows.sort_by(|a, b| {
        for (f, desc) in &sorters {
            let o = f(a, b);
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        a.time.cmp(&b.time).then_with(|| {
            keys.iter()
                .map(|&i| a.dims[i].as_str().cmp(&b.dims[i].as_str()))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    let pagination = req.pagination.clone().unwrap_or(Pagination {
        limit: default_limit(),
        offset: 0,
    });
    let include = req.include.clone().unwrap_or_default();
    let total_rows = rows.len();
    let results: Vec<Value> = rows
        .into_iter()
        .skip(pagination.offset)
        .take(pagination.limit)
        .map(|r| json!({"dimensions": r.dims, "metrics": r.metrics}))
        .collect();
    let start = tz
        .from_local_datetime(&from.and_hms_opt(0, 0, 0).unwrap())
        .earliest();
    let end = tz
        .from_local_datetime(&to.and_hms_opt(23, 59, 59).unwrap())
        .latest();
    let mut meta = serde_json::Map::new();
    if include.total_rows {
        meta.insert("total_rows".into(), json!(total_rows));
    }
    meta.insert("time_zone".into(), json!(tz.name()));
    meta.insert("engine".into(), json!(engine));
    Ok(json!({
        "results": results,
        "meta": meta,
        "query": {
            "site_id": req.site_id,
            "metrics": req.metrics,
            "date_range": [
                start.map(|s| s.to_rfc3339()),
                end.map(|e| e.to_rfc3339()),
            ],
            "dimensions": req.dimensions,
            "filters": req.filters,
            "order_by": req.order_by,
            "include": include,
            "pagination": pagination,
        }
    }))
}

/// The sections of a bucket a query reads: the totals, the map of its breakdown or
/// filters, and revenue when asked for (a remote store fetches only these).
fn sections_for(map_dim: Option<KeyDim>, revenue: bool) -> Sections {
    let map = match map_dim {
        None => Sections::NONE,
        Some(KeyDim::Page) => Sections::PAGES,
        Some(KeyDim::Name) => Sections::NAMES,
        Some(KeyDim::Source) => Sections::SOURCES,
        Some(KeyDim::EntryPage) => Sections::ENTRY_PAGES,
        Some(KeyDim::Visit(_)) => Sections::VISIT_KEYS,
        Some(KeyDim::Prop) => Sections::PROPS,
    };
    let revenue = if revenue {
        Sections::REVENUE
    } else {
        Sections::NONE
    };
    Sections::TOTALS | map | revenue
}

fn dim_name(d: KeyDim) -> &'static str {
    match d {
        KeyDim::Page => "event:page",
        KeyDim::Name => "event:name",
        KeyDim::Source => "visit:source",
        KeyDim::EntryPage => "visit:entry_page",
        KeyDim::Visit(i) => VISIT_FIELDS[i],
        KeyDim::Prop => "event:props",
    }
}

/// Events kept out of the statistics (bots), by reason, over a date range of the
/// property's local days: `{"filtered": {"bot:crawler-pattern": 12, …}, "total": 12}`.
pub fn filtered(
    store: &dyn RollupRead,
    site_id: &str,
    date_range: &Value,
    tz: Tz,
    now_ms: i64,
) -> Result<Value, QueryError> {
    let (from, to) = property_date_range(store, site_id, date_range, tz, now_ms)?;
    let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
    let range = LocalDay::from_date(from)..=LocalDay::from_date(to);
    store.scan(
        site_id,
        range,
        Grain::Day,
        Sections::FILTERED,
        &mut |parts| {
            for (_, b) in parts {
                for (k, n) in &b.filtered {
                    *by_reason.entry(k.clone()).or_default() += n;
                }
            }
        },
    )?;
    let total: u64 = by_reason.values().sum();
    Ok(json!({
        "filtered": by_reason,
        "total": total,
        "date_range": [from.to_string(), to.to_string()],
    }))
}

/// Realtime figures of a property at wall-clock time `now_ms`, from per-minute
/// statistics: a window of N minutes is the minute buckets from `floor(now) − N + 1`
/// to `floor(now)` (the current, partial minute included).
pub fn realtime(store: &dyn RollupRead, site_id: &str, now_ms: i64) -> Result<Value, QueryError> {
    let now_min = now_ms.div_euclid(60_000);
    let mut v5 = footfall_store::Hll::new();
    let mut v30 = footfall_store::Hll::new();
    let (mut pv30, mut ev30) = (0u64, 0u64);
    let mut per_minute = Vec::new();
    store.minutes(site_id, now_min - 29..=now_min, &mut |minutes| {
        for (m, s) in minutes {
            v30.merge(&s.visitors);
            if *m > now_min - 5 {
                v5.merge(&s.visitors);
            }
            pv30 += s.pageviews;
            ev30 += s.events;
            per_minute.push(json!({
                "minute": chrono::DateTime::from_timestamp(m * 60, 0).map(|t| t.to_rfc3339()),
                "visitors": s.visitors.count(),
                "pageviews": s.pageviews,
                "events": s.events,
            }));
        }
    })?;
    Ok(json!({
        "visitors_last_5_minutes": v5.count(),
        "visitors_last_30_minutes": v30.count(),
        "pageviews_last_30_minutes": pv30,
        "events_last_30_minutes": ev30,
        "per_minute": per_minute,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_ranges() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let b = |a: &str, z: &str| datetime_bounds(&json!([a, z]), tz);
        // With an offset, and on the wall clock: the same instants.
        let with = b("2026-11-21T10:30:00+05:30", "2026-11-21T18:45:59+05:30")
            .unwrap()
            .unwrap();
        let wall = b("2026-11-21T10:30:00", "2026-11-21T18:45:59")
            .unwrap()
            .unwrap();
        assert_eq!(with, wall);
        assert_eq!(with.1 - with.0, (8 * 3600 + 15 * 60 + 59) * 1000 + 999);
        assert!(!whole_days(with, tz));
        let day = b("2026-11-21T00:00:00", "2026-11-21T23:59:59")
            .unwrap()
            .unwrap();
        assert!(whole_days(day, tz));
        assert_eq!(
            datetime_bounds(&json!(["2026-11-21", "2026-11-22"]), tz).unwrap(),
            None
        );
        assert!(b("2026-11-21T10:00:00", "2026-11-21T09:00:00").is_err());
        assert!(b("2026-11-21T25:00:00", "2026-11-21T26:00:00").is_err());
    }

    #[test]
    fn time_labels_and_comparison_ranges() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        // 2026-11-25 is a Wednesday: its partial week is labelled by the range's first
        // day, the next weeks by their Mondays.
        assert_eq!(
            time_labels("time:week", d("2026-11-25"), d("2026-12-07")).unwrap(),
            ["2026-11-25", "2026-11-30", "2026-12-07"]
        );
        assert_eq!(
            time_labels("time:week", d("2026-11-23"), d("2026-11-30")).unwrap(),
            ["2026-11-23", "2026-11-30"]
        );
        assert_eq!(
            time_labels("time:month", d("2026-11-25"), d("2027-01-02")).unwrap(),
            ["2026-11-01", "2026-12-01", "2027-01-01"]
        );
        let hours = time_labels("time:hour", d("2026-11-25"), d("2026-11-26")).unwrap();
        assert_eq!(hours.len(), 48);
        assert_eq!(hours[25], "2026-11-26 01:00:00");
        assert_eq!(
            time_labels("event:page", d("2026-11-25"), d("2026-11-25")),
            None
        );
        assert_eq!(
            comparison_range("previous_period", d("2026-11-01"), d("2026-11-30")).unwrap(),
            (d("2026-10-02"), d("2026-10-31"))
        );
        assert_eq!(
            comparison_range("year_over_year", d("2028-02-29"), d("2028-03-01")).unwrap(),
            (d("2027-02-28"), d("2027-03-01"))
        );
        assert!(comparison_range("sometime", d("2026-11-01"), d("2026-11-30")).is_err());
        // Change: percent for counts, points for rates, 100 from nothing.
        assert_eq!(change("visitors", &json!(150), &json!(100)), json!(50));
        assert_eq!(change("visitors", &json!(3), &json!(0)), json!(100));
        assert_eq!(change("visitors", &json!(0), &json!(0)), json!(0));
        assert_eq!(change("bounce_rate", &json!(40), &json!(55)), json!(-15.0));
        assert_eq!(
            change("total_revenue", &json!({"EUR": 1.0}), &json!({})),
            Value::Null
        );
    }

    /// The threshold algorithm answers exactly what grouping every entry answers: with
    /// exact and dense sketches, lists cut at the rank depth, filters, and a depth that
    /// runs out (the fallback).
    #[test]
    fn threshold_top_n_equals_full_grouping() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut days: Vec<Bucket> = Vec::new();
        for day in 0..4u64 {
            let mut b = Bucket::default();
            for page in 0..3000u64 {
                // Popularity ranks differ per day (a permutation of the pages), and
                // pages 0..30 are steady mid-rank pages that win only over all days.
                let rank = (page * (2 * day + 1) * 7 + day * 11) % 3000;
                let visitors = if page < 30 {
                    400 + page
                } else {
                    (6000 / (rank + 1)).max(1) + next() % 3
                };
                let s = b.pages.entry(format!("/p/{page}")).or_default();
                for _ in 0..visitors {
                    // A pool per page, so days overlap and unions differ from sums.
                    let v = next() % (visitors * 3) + page * 1_000_000;
                    s.visitors.insert(v.wrapping_mul(0x2545_f491_4f6c_dd1d));
                    s.events += 1 + next() % 2;
                    s.pageviews += 1;
                }
            }
            days.push(b);
        }
        let buckets: Vec<(Option<i64>, &Bucket)> = days.iter().map(|b| (None, b)).collect();
        let all = |_: &str, _: &str| true;
        let no_sevens = |k: &str, _: &str| !k.contains('7');
        let mut fallbacks = 0;
        for keep in [&all as &dyn Fn(&str, &str) -> bool, &no_sevens] {
            for n in [1, 3, 10, 40, 700] {
                let full = top_by_visitors(&buckets, KeyDim::Page, "", n, keep);
                let Some(fast) = top_by_threshold(&buckets, KeyDim::Page, n, keep) else {
                    fallbacks += 1;
                    continue;
                };
                let view = |r: &[(&str, Acc)]| -> Vec<(String, u64, u64, u64)> {
                    r.iter()
                        .map(|(k, a)| {
                            (
                                k.to_string(),
                                a.events.visitors.count(),
                                a.events.pageviews,
                                a.events.events,
                            )
                        })
                        .collect()
                };
                assert_eq!(view(&fast), view(&full), "n={n}");
                assert_eq!(fast.len(), n.min(3000));
            }
        }
        // Only the 700-row lists outrun the rank depth.
        assert_eq!(fallbacks, 2);
    }

    #[test]
    fn date_ranges() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let r = |v: Value| resolve_date_range(&v, today, None).unwrap();
        assert_eq!(r(json!("day")), (today, today));
        assert_eq!(
            r(json!("7d")).0,
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
        );
        assert_eq!(
            r(json!("month")).0,
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        assert_eq!(
            r(json!("6mo")).0,
            NaiveDate::from_ymd_opt(2026, 6, 1).unwrap()
        );
        assert_eq!(
            r(json!("12mo")).0,
            NaiveDate::from_ymd_opt(2025, 12, 1).unwrap()
        );
        assert_eq!(
            r(json!(["2026-11-01", "2026-11-07"])),
            (
                NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 11, 7).unwrap()
            )
        );
        assert!(resolve_date_range(&json!("fortnight"), today, None).is_err());
    }
}
