//! `/api/v2/query` answered from the columnar files with DataFusion: any number of
//! dimensions, any filter (with `and`, `or`, `not`, regular expressions) with any
//! breakdown. The numbers follow docs/METRICS.md exactly as the rollups do:
//!
//! - With no dimension and no filter, or only visit attributes: visit figures count the
//!   visits that *started* in the range and group, from each visit's first row; with no
//!   dimension or filter at all, `visitors`, `pageviews` and `events` count events by their
//!   own time (as the rollups do).
//! - Otherwise (an event dimension or filter): figures count the *events* that match, by
//!   their own time; a visit attribute in a filter or breakdown is that of the event's
//!   visit; visit figures (`visits`, `bounce_rate`, …) count the visits that have a
//!   matching event in the group.
//!
//! SQL is built here from whitelisted column names and quoted literals only; a regular
//! expression runs on Rust's `regex` engine (linear time) and is bounded in length.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use footfall_event::goal::Goal;
use footfall_query::{
    rate, round_to, FunnelRequest, Metric, QueryError, QueryRequest, RetentionRequest,
};
use footfall_store::VISIT_FIELDS;
use serde_json::{json, Value};

use crate::files::Columns;
use crate::table::{column_of, schema};

/// The `events` table over the day files given (objects under `store_url`).
pub(crate) fn listing_table(
    store_url: &url::Url,
    days: &[(NaiveDate, object_store::path::Path)],
) -> datafusion::error::Result<ListingTable> {
    let urls = days
        .iter()
        .map(|(_, p)| ListingTableUrl::parse(format!("{store_url}/{p}")))
        .collect::<Result<Vec<_>, _>>()?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    ListingTable::try_new(
        ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema()),
    )
}

/// The longest regular expression a `matches` filter takes.
pub const MAX_PATTERN: usize = 1000;

fn bad<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Invalid(msg.into()))
}

/// A dimension: its SQL expression and whether it belongs to the visit.
#[derive(Debug, Clone)]
struct Dim {
    /// The expression over the event's row (for time: over the event's local time).
    sql: String,
    /// For time dimensions, the same over the visit's start.
    visit_sql: Option<String>,
    visit_level: bool,
    time: Option<&'static str>,
    /// `event:goal`: the goal column of the goal rows (see [`goal_rows`]).
    goal: bool,
}

/// A filter as SQL.
struct Cond {
    sql: String,
    /// It reads only visit attributes.
    visit: bool,
    /// It names `event:goal` somewhere.
    goal: bool,
}

/// Which events complete `g`, as SQL over an event row.
fn goal_sql(g: &Goal) -> String {
    if let Some(re) = g.page_regex() {
        return format!("(pageview AND regexp_like(event_page, {}))", quote(&re));
    }
    let mut parts = vec![format!(
        "event_name = {}",
        quote(g.event.as_deref().unwrap_or_default())
    )];
    for (k, v) in &g.props {
        parts.push(format!(
            "array_element(prop_values, CAST(array_position(prop_keys, {}) AS BIGINT)) = {}",
            quote(k),
            quote(v)
        ));
    }
    format!("({})", parts.join(" AND "))
}

/// The goal rows: each event once per goal it completes, with the goal's name in
/// `goal` (what an `event:goal` breakdown groups).
fn goal_rows(goals: &[Goal]) -> String {
    if goals.is_empty() {
        return "SELECT *, CAST(NULL AS VARCHAR) AS goal FROM events WHERE false".into();
    }
    goals
        .iter()
        .map(|g| {
            format!(
                "SELECT *, {} AS goal FROM events WHERE {}",
                quote(&g.name),
                goal_sql(g)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn dimension(name: &str) -> Result<Dim, QueryError> {
    let col = |c: &str, visit_level| Dim {
        sql: c.to_string(),
        visit_sql: None,
        visit_level,
        time: None,
        goal: false,
    };
    let time = |unit: &'static str| Dim {
        sql: format!("CAST(date_trunc('{unit}', local_ts) AS BIGINT)"),
        visit_sql: Some(format!(
            "CAST(date_trunc('{unit}', visit_local_ts) AS BIGINT)"
        )),
        visit_level: false,
        time: Some(unit),
        goal: false,
    };
    Ok(match name {
        "time:hour" => time("hour"),
        "time:day" | "time" => time("day"),
        "time:week" => time("week"),
        "time:month" => time("month"),
        "event:page" => col("event_page", false),
        "event:name" => col("event_name", false),
        "event:hostname" => col("event_hostname", false),
        "event:goal" => Dim {
            goal: true,
            ..col("goal", false)
        },
        "visit:entry_page" => col("visit_entry_page", true),
        "visit:exit_page" => col("visit_exit_page", true),
        "visit:entry_page_hostname" => col("visit_entry_page_hostname", true),
        "visit:exit_page_hostname" => col("visit_exit_page_hostname", true),
        "visit:country_name" => col("country_name(visit_country)", true),
        "visit:region_name" => col("region_name(visit_region)", true),
        "visit:city_name" => col("visit_city", true),
        _ => {
            if let Some(k) = name.strip_prefix("event:props:").filter(|k| !k.is_empty()) {
                return Ok(col(
                    &format!(
                        "array_element(prop_values, CAST(array_position(prop_keys, {}) AS BIGINT))",
                        quote(k)
                    ),
                    false,
                ));
            }
            if VISIT_FIELDS.contains(&name) {
                return Ok(col(&column_of(name), true));
            }
            return bad(format!(
                "dimension `{name}` is not supported; supported: time, time:hour, time:day, time:week, time:month, event:page, event:name, event:hostname, event:goal, event:props:<key>, visit:entry_page, visit:exit_page, visit:entry_page_hostname, visit:exit_page_hostname, visit:country_name, visit:region_name, visit:city_name, {}",
                VISIT_FIELDS.join(", ")
            ));
        }
    })
}

/// A filter as SQL; `goals` are the property's (for `event:goal`).
fn filter(f: &Value, goals: &[Goal]) -> Result<Cond, QueryError> {
    let a = f
        .as_array()
        .ok_or_else(|| QueryError::Invalid(format!("filter {f} must be a list")))?;
    let op = a.first().and_then(Value::as_str).unwrap_or("");
    match op {
        "and" | "or" => {
            let parts = a
                .get(1)
                .and_then(Value::as_array)
                .filter(|p| !p.is_empty() && a.len() == 2)
                .ok_or_else(|| {
                    QueryError::Invalid(format!("`{op}` takes one non-empty list of filters"))
                })?;
            let (mut visit, mut goal) = (true, false);
            let mut sql = Vec::new();
            for p in parts {
                let c = filter(p, goals)?;
                visit &= c.visit;
                goal |= c.goal;
                sql.push(format!("({})", c.sql));
            }
            Ok(Cond {
                sql: sql.join(if op == "and" { " AND " } else { " OR " }),
                visit,
                goal,
            })
        }
        "not" => {
            let inner = a
                .get(1)
                .filter(|_| a.len() == 2)
                .ok_or_else(|| QueryError::Invalid("`not` takes one filter".into()))?;
            let c = filter(inner, goals)?;
            // A missing value is neither matched nor not matched (as in `is_not`).
            Ok(Cond {
                sql: format!("NOT coalesce(({}), false)", c.sql),
                ..c
            })
        }
        "is" | "is_not" | "contains" | "contains_not" | "matches" | "matches_not" => {
            if !(3..=4).contains(&a.len()) {
                return bad(format!(
                    "filter {f} must be [operator, dimension, [values]] or with a fourth {{\"case_sensitive\": …}}"
                ));
            }
            let dim_name = a[1].as_str().unwrap_or("");
            let d = dimension(dim_name)?;
            if d.time.is_some() {
                return bad(format!(
                    "filtering on `{dim_name}` is not supported: use date_range"
                ));
            }
            let values: Vec<&str> = a[2]
                .as_array()
                .ok_or_else(|| QueryError::Invalid("filter values must be a list".into()))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| QueryError::Invalid("filter values must be strings".into()))
                })
                .collect::<Result<_, _>>()?;
            if values.is_empty() {
                return bad(format!("filter {f} has no values"));
            }
            let case_sensitive = match a.get(3) {
                None => true,
                Some(o) => o
                    .get("case_sensitive")
                    .and_then(Value::as_bool)
                    .filter(|_| o.as_object().is_some_and(|m| m.len() == 1))
                    .ok_or_else(|| {
                        QueryError::Invalid(
                            "filter options may only be {\"case_sensitive\": true|false}".into(),
                        )
                    })?,
            };
            if d.goal {
                return goal_filter(op, &values, case_sensitive, goals);
            }
            let (col, vals): (String, Vec<String>) = if case_sensitive || op.starts_with("matches") {
                (d.sql.clone(), values.iter().map(|v| v.to_string()).collect())
            } else {
                (
                    format!("lower({})", d.sql),
                    values.iter().map(|v| v.to_lowercase()).collect(),
                )
            };
            let list = || vals.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ");
            let any_contains = || {
                vals.iter()
                    .map(|v| format!("strpos({col}, {}) > 0", quote(v)))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            };
            let any_match = || -> Result<String, QueryError> {
                let flags = if case_sensitive { "" } else { ", 'i'" };
                vals.iter()
                    .map(|v| {
                        if v.len() > MAX_PATTERN {
                            return bad(format!(
                                "a regular expression may be at most {MAX_PATTERN} bytes"
                            ));
                        }
                        Ok(format!("regexp_like({col}, {}{flags})", quote(v)))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.join(" OR "))
            };
            let sql = match op {
                "is" => format!("{col} IN ({})", list()),
                "is_not" => format!("{col} NOT IN ({})", list()),
                "contains" => format!("({})", any_contains()),
                "contains_not" => format!("{col} IS NOT NULL AND NOT ({})", any_contains()),
                "matches" => format!("({})", any_match()?),
                _ => format!("{col} IS NOT NULL AND NOT ({})", any_match()?),
            };
            Ok(Cond {
                sql,
                visit: d.visit_level,
                goal: false,
            })
        }
        "has_done" | "has_not_done" => {
            // A visit attribute: whether the visit has an event the inner filter keeps.
            let inner = a
                .get(1)
                .filter(|_| a.len() == 2)
                .ok_or_else(|| QueryError::Invalid(format!("`{op}` takes one filter")))?;
            let c = filter(inner, goals)?;
            let how = if op == "has_done" { "IN" } else { "NOT IN" };
            Ok(Cond {
                sql: format!("visit_id {how} (SELECT visit_id FROM events WHERE {})", c.sql),
                visit: true,
                goal: c.goal,
            })
        }
        _ => bad(format!(
            "filter operator `{op}` is not supported; supported: is, is_not, contains, contains_not, matches, matches_not, and, or, not, has_done, has_not_done"
        )),
    }
}

/// A filter on `event:goal`: the events that complete the goals its values pick out by
/// name (`is`: each must be a goal of the property; `contains`, `matches`: any goal whose
/// name matches); the negative operators keep the events that complete none of them.
fn goal_filter(
    op: &str,
    values: &[&str],
    case_sensitive: bool,
    goals: &[Goal],
) -> Result<Cond, QueryError> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let mut picked: Vec<&Goal> = Vec::new();
    for v in values {
        let matching: Vec<&Goal> = match op {
            "is" | "is_not" => {
                let found: Vec<&Goal> = goals.iter().filter(|g| fold(&g.name) == fold(v)).collect();
                if found.is_empty() {
                    return bad(format!("`{v}` is not a goal of this property"));
                }
                found
            }
            "contains" | "contains_not" => goals
                .iter()
                .filter(|g| fold(&g.name).contains(&fold(v)))
                .collect(),
            _ => {
                if v.len() > MAX_PATTERN {
                    return bad(format!(
                        "a regular expression may be at most {MAX_PATTERN} bytes"
                    ));
                }
                let re = regex::RegexBuilder::new(v)
                    .case_insensitive(!case_sensitive)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| QueryError::Invalid(format!("invalid regular expression: {e}")))?;
                goals.iter().filter(|g| re.is_match(&g.name)).collect()
            }
        };
        picked.extend(matching);
    }
    let any = if picked.is_empty() {
        "false".to_string()
    } else {
        picked
            .iter()
            .map(|g| goal_sql(g))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let sql = if op.ends_with("_not") {
        format!("NOT coalesce(({any}), false)")
    } else {
        format!("({any})")
    };
    Ok(Cond {
        sql,
        visit: false,
        goal: true,
    })
}

/// Aggregates of one result group.
#[derive(Debug, Default, Clone)]
struct Agg {
    /// Millionths of a unit, by currency.
    revenue: std::collections::BTreeMap<String, i64>,
    /// Events with revenue, by currency (`average_revenue`).
    revenue_events: std::collections::BTreeMap<String, i64>,
    /// Visitors under the filters that do not name a goal: over the whole range
    /// (`conversion_rate`) and within the row's other dimensions
    /// (`group_conversion_rate`).
    all_visitors: i64,
    group_visitors: i64,
    /// Milliseconds from page views to the next page view of their visit, and how many
    /// such page views (`time_on_page`).
    page_time_ms: i64,
    timed_pageviews: i64,
    /// Share of all visitors under the filters, in percent (`percentage`).
    percentage: f64,
    visitors: i64,
    pageviews: i64,
    events: i64,
    visits: i64,
    visit_pageviews: i64,
    bounces: i64,
    duration_ms: i64,
    /// Which part answered `visitors`, `pageviews` and `events`.
    from_visits: bool,
}

fn metric_value(m: Metric, a: &Agg) -> Value {
    match m {
        Metric::Visitors => json!(a.visitors),
        Metric::Pageviews if a.from_visits => json!(a.visit_pageviews),
        Metric::Pageviews => json!(a.pageviews),
        Metric::Events => json!(a.events),
        Metric::Visits => json!(a.visits),
        Metric::ViewsPerVisit => json!(round_to(rate(a.visit_pageviews, a.visits), 2)),
        Metric::BounceRate => json!(round_to(100.0 * rate(a.bounces, a.visits), 0) as i64),
        Metric::VisitDuration => json!(round_to(rate(a.duration_ms, a.visits) / 1000.0, 0) as i64),
        Metric::TotalRevenue => Value::Object(
            a.revenue
                .iter()
                .map(|(c, m)| (c.clone(), json!(round_to(*m as f64 / 1e6, 6))))
                .collect(),
        ),
        Metric::Percentage => json!(round_to(a.percentage, 1)),
        Metric::ConversionRate => json!(round_to(100.0 * rate(a.visitors, a.all_visitors), 2)),
        Metric::GroupConversionRate => {
            json!(round_to(100.0 * rate(a.visitors, a.group_visitors), 2))
        }
        Metric::TimeOnPage => {
            json!(round_to(rate(a.page_time_ms, a.timed_pageviews) / 1000.0, 0) as i64)
        }
        Metric::AverageRevenue => Value::Object(
            a.revenue
                .iter()
                .map(|(c, m)| {
                    let n = a.revenue_events.get(c).copied().unwrap_or(0);
                    (c.clone(), json!(round_to(rate(*m, n) / 1e6, 6)))
                })
                .collect(),
        ),
    }
}

/// The columnar query engine over [`Columns`].
pub struct ColumnarEngine {
    columns: Arc<Columns>,
    runtime: Arc<RuntimeEnv>,
    store_url: url::Url,
    /// Ranges' rows in memory for the query API ([`crate::resident`]).
    resident: crate::resident::Resident,
}

impl ColumnarEngine {
    pub fn new(columns: Arc<Columns>) -> Self {
        let runtime = Arc::new(RuntimeEnv::default());
        let store_url = url::Url::parse("footfall://columns").expect("a valid URL");
        runtime.register_object_store(&store_url, columns.archive().object_store().clone());
        Self {
            columns,
            runtime,
            store_url,
            resident: crate::resident::Resident::new(crate::resident::DEFAULT_BUDGET),
        }
    }

    /// At most `bytes` of resident tables (0: every question goes to DataFusion).
    pub fn with_resident_budget(mut self, bytes: usize) -> Self {
        self.resident = crate::resident::Resident::new(bytes);
        self
    }

    /// The resident table of `property`'s files in `[from, to]`, if it can be held.
    async fn resident_table(
        &self,
        property: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<Arc<crate::resident::Table>>, QueryError> {
        let objects: Vec<object_store::ObjectMeta> = self
            .columns
            .day_objects(property, from, to)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        let scope = format!("{property}/{from}/{to}");
        Ok(self
            .resident
            .table(self.columns.archive().object_store(), &scope, &objects)
            .await)
    }

    /// A context with the `events` table over `property`'s days in `[from, to]`; None
    /// when there is no file in the range.
    pub(crate) async fn context(
        &self,
        property: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Option<SessionContext>, QueryError> {
        self.context_in(property, from, to, self.runtime.clone())
            .await
    }

    /// A runtime of its own with at most `memory_bytes` for operators that hold data
    /// (sorts, joins, aggregations), over the same files, and no spilling to disk.
    pub(crate) fn limited_runtime(
        &self,
        memory_bytes: usize,
    ) -> Result<Arc<RuntimeEnv>, QueryError> {
        use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
        // No spilling: the limit is a hard one, and a statement cannot fill the disk.
        let rt = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(memory_bytes, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        rt.register_object_store(
            &self.store_url,
            self.columns.archive().object_store().clone(),
        );
        Ok(rt)
    }

    /// [`Self::context`] on the runtime given.
    pub(crate) async fn context_in(
        &self,
        property: &str,
        from: NaiveDate,
        to: NaiveDate,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<Option<SessionContext>, QueryError> {
        let days = self
            .columns
            .day_files(property, from, to)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        if days.is_empty() {
            return Ok(None);
        }
        let unavailable =
            |e: datafusion::error::DataFusionError| QueryError::Unavailable(e.to_string());
        let config = SessionConfig::new().with_target_partitions(2);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        crate::names::register(&ctx);
        let table = listing_table(&self.store_url, &days).map_err(unavailable)?;
        ctx.register_table("events", Arc::new(table))
            .map_err(unavailable)?;
        Ok(Some(ctx))
    }

    /// A session for one client connection of the PostgreSQL wire protocol: `events`
    /// over the property's whole history (listed again at every statement, so that a
    /// long-lived connection sees new days), the `visits` view, `information_schema`,
    /// and operators within `memory_bytes`. The catalog is named after the property.
    pub async fn connection_context(
        &self,
        property: &str,
        memory_bytes: usize,
    ) -> Result<SessionContext, QueryError> {
        let unavailable =
            |e: datafusion::error::DataFusionError| QueryError::Unavailable(e.to_string());
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true)
            .with_default_catalog_and_schema(property, "public");
        let ctx = SessionContext::new_with_config_rt(config, self.limited_runtime(memory_bytes)?);
        crate::names::register(&ctx);
        let history = crate::history::History::new(
            self.columns.clone(),
            self.store_url.clone(),
            property.to_string(),
        );
        ctx.register_table("events", Arc::new(history))
            .map_err(unavailable)?;
        ctx.sql(crate::sql::VISITS_VIEW)
            .await
            .map_err(unavailable)?;
        Ok(ctx)
    }

    /// Distinct visitors of the events that meet every condition.
    async fn visitors(ctx: &SessionContext, conditions: &[String]) -> Result<i64, QueryError> {
        let sql = format!(
            "SELECT COUNT(DISTINCT visitor) FROM events WHERE {}",
            conditions.join(" AND ")
        );
        Ok(Self::rows(ctx, &sql, 0)
            .await?
            .first()
            .map_or(0, |(_, v)| v[0]))
    }

    async fn rows(
        ctx: &SessionContext,
        sql: &str,
        dims: usize,
    ) -> Result<Vec<(Vec<Option<String>>, Vec<i64>)>, QueryError> {
        let fail = |e: datafusion::error::DataFusionError| {
            // Errors from the engine on a well-formed query are the query's values (a
            // bad regular expression); everything else is unavailability.
            let s = e.to_string();
            if s.contains("regex") || s.contains("Regular expression") {
                QueryError::Invalid(format!("invalid regular expression: {s}"))
            } else {
                QueryError::Unavailable(s)
            }
        };
        let batches: Vec<RecordBatch> = ctx
            .sql(sql)
            .await
            .map_err(fail)?
            .collect()
            .await
            .map_err(fail)?;
        let mut out = Vec::new();
        for b in batches {
            let cols = b.columns();
            for r in 0..b.num_rows() {
                let mut keys = Vec::with_capacity(dims);
                for c in &cols[..dims] {
                    keys.push(if c.is_null(r) {
                        None
                    } else if let Some(s) = c.as_string_opt::<i32>() {
                        Some(s.value(r).to_string())
                    } else if let Some(s) = c.as_string_view_opt() {
                        Some(s.value(r).to_string())
                    } else if let Some(x) = c.as_primitive_opt::<Int64Type>() {
                        Some(x.value(r).to_string())
                    } else {
                        return Err(QueryError::Unavailable(format!(
                            "unexpected column type {}",
                            c.data_type()
                        )));
                    });
                }
                let mut vals = Vec::new();
                for c in &cols[dims..] {
                    let x = c.as_primitive_opt::<Int64Type>().ok_or_else(|| {
                        QueryError::Unavailable(format!("unexpected column type {}", c.data_type()))
                    })?;
                    vals.push(if x.is_null(r) { 0 } else { x.value(r) });
                }
                out.push((keys, vals));
            }
        }
        Ok(out)
    }

    /// Answers `req` for a property in zone `tz` over the local dates `[from, to]`.
    pub async fn execute(
        &self,
        req: &QueryRequest,
        tz: Tz,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Value, QueryError> {
        if req.metrics.is_empty() {
            return bad("at least one metric is required");
        }
        let metrics: Vec<Metric> = req
            .metrics
            .iter()
            .map(|m| Metric::parse(m))
            .collect::<Result<_, _>>()?;
        let dims: Vec<Dim> = req
            .dimensions
            .iter()
            .map(|d| dimension(d))
            .collect::<Result<_, _>>()?;
        if dims.iter().filter(|d| d.time.is_some()).count() > 1 {
            return bad("at most one time dimension");
        }
        if dims.iter().filter(|d| d.goal).count() > 1 {
            return bad("`event:goal` may be a dimension once");
        }
        let mut where_sql = Vec::new();
        let mut filters_visit = true;
        // The filters that do not name a goal: a conversion rate's denominator.
        let mut non_goal = Vec::new();
        let mut goal_filtered = false;
        for f in &req.filters {
            let c = filter(f, &req.goals)?;
            filters_visit &= c.visit;
            goal_filtered |= c.goal;
            if !c.goal {
                non_goal.push(format!("({})", c.sql));
            }
            where_sql.push(format!("({})", c.sql));
        }
        let goal_dim = dims.iter().position(|d| d.goal);
        let conversions = metrics
            .iter()
            .any(|m| matches!(m, Metric::ConversionRate | Metric::GroupConversionRate));
        if conversions && !goal_filtered && goal_dim.is_none() {
            return bad(
                "metrics `conversion_rate` and `group_conversion_rate` need an event:goal filter or dimension",
            );
        }
        if goal_dim.is_some() && metrics.contains(&Metric::TimeOnPage) {
            return bad("metric `time_on_page` is not available with an event:goal breakdown");
        }
        // An `event:goal` breakdown reads the goal rows (an event once per goal it
        // completes) under the name `events`, so that every query below reads them.
        let table = match goal_dim {
            Some(_) => format!("({}) AS events", goal_rows(&req.goals)),
            None => "events".to_string(),
        };
        // The filters alone (the whole a `percentage` is a share of).
        let filters_only = where_sql.clone();
        if metrics.contains(&Metric::Percentage) && dims.iter().all(|d| d.time.is_some()) {
            return bad("metric `percentage` needs a non-time dimension to break down by");
        }
        let plain = req.filters.is_empty() && dims.iter().all(|d| d.time.is_some());
        // Every dimension and filter is of the visit (and there is one): visit figures.
        let visit_family =
            !plain && filters_visit && dims.iter().all(|d| d.visit_level || d.time.is_some());
        // A breakdown lists the values that are there: rows without one are left out (an
        // event without the property, a visit without a page view).
        for d in dims.iter().filter(|d| d.time.is_none()) {
            where_sql.push(format!("{} IS NOT NULL", d.sql));
        }
        // A date-time range also bounds events by their instant, and visits by their
        // local start (the wall clock of the bounds).
        let bounds = footfall_query::datetime_bounds(&req.date_range, tz)?;
        let range = |col: &str| {
            let mut r = format!(
                "{col} BETWEEN DATE '{}' AND DATE '{}'",
                from.format("%Y-%m-%d"),
                to.format("%Y-%m-%d")
            );
            if let Some((a, b)) = bounds {
                if col == "visit_local_date" {
                    let wall = |ms: i64| {
                        footfall_store::rollup::local_time(&tz, ms)
                            .format("%Y-%m-%d %H:%M:%S%.3f")
                            .to_string()
                    };
                    r.push_str(&format!(
                        " AND visit_local_ts BETWEEN TIMESTAMP '{}' AND TIMESTAMP '{}'",
                        wall(a),
                        wall(b)
                    ));
                } else {
                    r.push_str(&format!(" AND ts BETWEEN {a} AND {b}"));
                }
            }
            r
        };
        let n = dims.len();
        let want_visits = visit_family || metrics.iter().any(|m| m.is_visit_level());
        // The resident executor answers what it holds; the rest is DataFusion's.
        let revenue =
            metrics.contains(&Metric::TotalRevenue) || metrics.contains(&Metric::AverageRevenue);
        // Revenue in visit figures would add groups of visits that started before the
        // range; those stay with DataFusion.
        let resident_can = !(plain
            || goal_dim.is_some()
            || metrics.contains(&Metric::TimeOnPage)
            || revenue && visit_family);
        if resident_can {
            if let Some(t) = self.resident_table(&req.site_id, from, to).await? {
                let q = ResidentQuery {
                    dimensions: req.dimensions.clone(),
                    filters: req.filters.clone(),
                    goals: req.goals.clone(),
                    visit_family,
                    want_visits,
                    revenue,
                    conversions,
                    percentage: metrics.contains(&Metric::Percentage),
                    top: top_of(req, &metrics),
                    bounds,
                    wall: bounds.map(|(a, b)| {
                        let wall = |ms: i64| {
                            footfall_store::rollup::local_time(&tz, ms)
                                .and_utc()
                                .timestamp_millis()
                        };
                        (wall(a), wall(b))
                    }),
                    dates: (crate::table::date32(from), crate::table::date32(to)),
                };
                let answer = tokio::task::spawn_blocking(move || q.run(&t))
                    .await
                    .map_err(|e| QueryError::Unavailable(e.to_string()))??;
                if let Some(rows) = answer {
                    return finish(req, tz, (from, to), &dims, &metrics, rows, "resident");
                }
            }
        }
        let mut groups: HashMap<Vec<Option<String>>, Agg> = HashMap::new();
        if let Some(ctx) = self.context(&req.site_id, from, to).await? {
            let where_all = |extra: &str| {
                let mut w = where_sql.clone();
                w.push(extra.to_string());
                w.join(" AND ")
            };
            let group_by = |visit_time: bool| -> (String, String) {
                let exprs: Vec<String> = dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let e = match (&d.visit_sql, visit_time) {
                            (Some(v), true) => v.clone(),
                            _ => d.sql.clone(),
                        };
                        format!("{e} AS d{i}")
                    })
                    .collect();
                let keys: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
                (exprs.join(", "), keys.join(", "))
            };
            let select = |exprs: &str, aggs: &str| {
                if exprs.is_empty() {
                    aggs.to_string()
                } else {
                    format!("{exprs}, {aggs}")
                }
            };
            let grouped = |keys: &str| {
                if keys.is_empty() {
                    String::new()
                } else {
                    format!(" GROUP BY {keys}")
                }
            };
            // Visits: from each visit's first row (visit family and plain queries), or
            // the visits with a matching event (event family).
            if want_visits {
                let sql = if visit_family || plain {
                    let (exprs, keys) = group_by(true);
                    format!(
                        "SELECT {} FROM {table} WHERE {}{}",
                        select(&exprs, "COUNT(DISTINCT visitor), COUNT(*), SUM(visit_pageviews), SUM(visit_events), SUM(CAST(visit_bounce AS BIGINT)), SUM(visit_duration_ms)"),
                        where_all(&format!("visit_first AND {}", range("visit_local_date"))),
                        grouped(&keys)
                    )
                } else {
                    let (exprs, keys) = group_by(false);
                    let inner_cols: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
                    let inner_sel = select(&exprs, "visit_id, visitor, visit_pageviews, visit_events, visit_bounce, visit_duration_ms");
                    format!(
                        "SELECT {} FROM (SELECT DISTINCT {inner_sel} FROM {table} WHERE {}) AS v{}",
                        select(&inner_cols.join(", "), "COUNT(DISTINCT visitor), COUNT(*), SUM(visit_pageviews), SUM(visit_events), SUM(CAST(visit_bounce AS BIGINT)), SUM(visit_duration_ms)"),
                        where_all(&range("local_date")),
                        grouped(&keys)
                    )
                };
                for (k, v) in Self::rows(&ctx, &sql, n).await? {
                    let g = groups.entry(k).or_default();
                    g.visits = v[1];
                    g.visit_pageviews = v[2];
                    g.bounces = v[4];
                    g.duration_ms = v[5];
                    if visit_family {
                        g.visitors = v[0];
                        g.events = v[3];
                        g.from_visits = true;
                    }
                }
            }
            if !visit_family {
                let (exprs, keys) = group_by(false);
                let sql = format!(
                    "SELECT {} FROM {table} WHERE {}{}",
                    select(
                        &exprs,
                        "COUNT(DISTINCT visitor), SUM(CAST(pageview AS BIGINT)), COUNT(*)"
                    ),
                    where_all(&range("local_date")),
                    grouped(&keys)
                );
                for (k, v) in Self::rows(&ctx, &sql, n).await? {
                    let g = groups.entry(k).or_default();
                    g.visitors = v[0];
                    g.pageviews = v[1];
                    g.events = v[2];
                }
            }
            if metrics.contains(&Metric::TotalRevenue) || metrics.contains(&Metric::AverageRevenue)
            {
                let (exprs, keys) = group_by(false);
                let keys = if keys.is_empty() {
                    "revenue_currency".to_string()
                } else {
                    format!("{keys}, revenue_currency")
                };
                let sql = format!(
                    "SELECT {} FROM {table} WHERE {} GROUP BY {keys}",
                    select(&exprs, "revenue_currency, SUM(revenue_micros), COUNT(*)"),
                    where_all(&format!(
                        "revenue_micros IS NOT NULL AND {}",
                        range("local_date")
                    )),
                );
                for (mut k, v) in Self::rows(&ctx, &sql, n + 1).await? {
                    let currency = k.pop().flatten().unwrap_or_default();
                    let g = groups.entry(k).or_default();
                    *g.revenue.entry(currency.clone()).or_default() += v[0];
                    *g.revenue_events.entry(currency).or_default() += v[1];
                }
            }
            if metrics.contains(&Metric::TimeOnPage) {
                // Each page view with the time to the next page view of its visit; the
                // last page view of a visit (or of the files read) has none.
                let (exprs, keys) = group_by(false);
                let timed = "(SELECT *, LEAD(ts) OVER (PARTITION BY visit_id ORDER BY visit_seq) AS next_ts FROM events WHERE pageview) AS events";
                let sql = format!(
                    "SELECT {} FROM {timed} WHERE {}{}",
                    select(&exprs, "SUM(next_ts - ts), COUNT(next_ts)"),
                    where_all(&range("local_date")),
                    grouped(&keys)
                );
                for (k, v) in Self::rows(&ctx, &sql, n).await? {
                    let g = groups.entry(k).or_default();
                    g.page_time_ms = v[0];
                    g.timed_pageviews = v[1];
                }
            }
            if conversions {
                // Denominators: visitors under the filters that name no goal, over the
                // range, and within each row's values of its other dimensions.
                let mut w = non_goal.clone();
                w.push(range("local_date"));
                let all = Self::visitors(&ctx, &w).await?;
                let others: Vec<(usize, &Dim)> =
                    dims.iter().enumerate().filter(|(_, d)| !d.goal).collect();
                let mut w = non_goal.clone();
                for (_, d) in others.iter().filter(|(_, d)| d.time.is_none()) {
                    w.push(format!("{} IS NOT NULL", d.sql));
                }
                w.push(range("local_date"));
                let exprs: Vec<String> = others
                    .iter()
                    .map(|(i, d)| format!("{} AS d{i}", d.sql))
                    .collect();
                let keys: Vec<String> = others.iter().map(|(i, _)| format!("d{i}")).collect();
                let sql = format!(
                    "SELECT {} FROM events WHERE {}{}",
                    select(&exprs.join(", "), "COUNT(DISTINCT visitor)"),
                    w.join(" AND "),
                    grouped(&keys.join(", "))
                );
                let by_group: HashMap<Vec<Option<String>>, i64> =
                    Self::rows(&ctx, &sql, others.len())
                        .await?
                        .into_iter()
                        .map(|(k, v)| (k, v[0]))
                        .collect();
                for (k, g) in groups.iter_mut() {
                    let mut rest = k.clone();
                    if let Some(i) = goal_dim {
                        rest.remove(i);
                    }
                    g.all_visitors = all;
                    g.group_visitors = by_group.get(&rest).copied().unwrap_or(0);
                }
            }
            if metrics.contains(&Metric::Percentage) {
                let (cond, date) = if visit_family {
                    ("visit_first AND ", "visit_local_date")
                } else {
                    ("", "local_date")
                };
                let mut w = filters_only.clone();
                w.push(format!("{cond}{}", range(date)));
                let total = Self::visitors(&ctx, &w).await?;
                for g in groups.values_mut() {
                    g.percentage = 100.0 * rate(g.visitors, total);
                }
            }
        }
        finish(
            req,
            tz,
            (from, to),
            &dims,
            &metrics,
            groups.into_iter().collect(),
            "datafusion",
        )
    }
}

/// The groups that have something, in the response's shape.
fn finish(
    req: &QueryRequest,
    tz: Tz,
    dates: (NaiveDate, NaiveDate),
    dims: &[Dim],
    metrics: &[Metric],
    groups: Vec<(Vec<Option<String>>, Agg)>,
    executor: &str,
) -> Result<Value, QueryError> {
    let mut rows: Vec<(Vec<Option<String>>, Agg)> = groups
        .into_iter()
        .filter(|(_, a)| a.events > 0 || a.visits > 0 || !a.revenue.is_empty())
        .collect();
    if dims.is_empty() && rows.is_empty() {
        rows.push((Vec::new(), Agg::default()));
    }
    let mut answer = respond(req, tz, dates, dims, metrics, rows)?;
    answer["meta"]["executor"] = json!(executor);
    Ok(answer)
}

/// A group's values of the dimensions (None: NULL) and its aggregates.
type Group = (Vec<Option<String>>, Agg);
/// A funnel group's values of the dimensions and its visitors per step.
type FunnelGroup = (Vec<Option<String>>, Vec<i64>);

/// A query for the resident executor: what [`ColumnarEngine::execute`] decided about it,
/// owned so that it runs off the async threads.
struct ResidentQuery {
    dimensions: Vec<String>,
    filters: Vec<Value>,
    goals: Vec<Goal>,
    visit_family: bool,
    want_visits: bool,
    revenue: bool,
    conversions: bool,
    percentage: bool,
    /// The page's ordering metric, direction and rows (see [`top_cut`]).
    top: Option<(Metric, bool, usize)>,
    /// UTC milliseconds of a date-time range, and the same as local wall-clock ones.
    bounds: Option<(i64, i64)>,
    wall: Option<(i64, i64)>,
    /// Local dates as days since 1970.
    dates: (i32, i32),
}

impl ResidentQuery {
    /// The groups, as the SQL below would give them; None where the executor does not
    /// hold a dimension or filter.
    fn run(&self, t: &crate::resident::Table) -> Result<Option<Vec<Group>>, QueryError> {
        use crate::resident::exec;
        let mut dims = Vec::new();
        for d in &self.dimensions {
            match exec::Dim::new(t, d, self.dates) {
                Some(d) => dims.push(d),
                None => return Ok(None),
            }
        }
        // Each filter evaluated once: all of them, and (for a conversion rate's
        // denominators) those that name no goal.
        let mut masks = Vec::new();
        let mut goal_named = Vec::new();
        for f in &self.filters {
            let Some(p) = exec::compile(t, f, &self.goals)? else {
                return Ok(None);
            };
            masks.push(exec::eval(t, &p));
            goal_named.push(names_goal(f));
        }
        let denominators = self.conversions.then(|| {
            let kept = masks
                .iter()
                .zip(&goal_named)
                .filter(|(_, g)| !**g)
                .map(|(m, _)| m.clone())
                .collect();
            exec::and_all(t, kept)
        });
        let Some(keys) = exec::Keys::new(&dims, true) else {
            return Ok(None);
        };
        let mask = exec::and_all(t, masks);
        let rows = exec::RowScope {
            bounds: self.bounds,
            mask: &mask,
        };
        let visits = exec::VisitScope {
            dates: self.dates,
            wall: self.wall,
            mask: &mask,
        };
        // Distinct visitors of the rows in scope (event figures), whatever their group.
        let mut row_total = 0;
        let mut groups: Vec<(u64, Agg)> = if self.visit_family {
            exec::by_visits(t, &keys, &visits)
                .into_iter()
                .map(|(k, s)| {
                    (
                        k,
                        Agg {
                            visitors: s.visitors,
                            visits: s.visits,
                            visit_pageviews: s.visit_pageviews,
                            events: s.visit_events,
                            bounces: s.bounces,
                            duration_ms: s.duration_ms,
                            from_visits: true,
                            ..Agg::default()
                        },
                    )
                })
                .collect()
        } else {
            let (groups, total) = exec::by_rows(t, &keys, &rows, self.want_visits, self.revenue);
            row_total = total;
            groups
                .into_iter()
                .map(|(k, s)| {
                    let mut a = Agg {
                        visitors: s.visitors,
                        pageviews: s.pageviews,
                        events: s.events,
                        ..Agg::default()
                    };
                    for (c, micros, n) in &s.revenue {
                        let c = t.currencies.values[*c as usize].to_string();
                        a.revenue.insert(c.clone(), *micros);
                        a.revenue_events.insert(c, *n);
                    }
                    if self.want_visits {
                        a.visits = s.visits;
                        a.visit_pageviews = s.visit_pageviews;
                        a.bounces = s.bounces;
                        a.duration_ms = s.duration_ms;
                    }
                    (k, a)
                })
                .collect()
        };
        if let Some(denominators) = denominators {
            let scope = exec::RowScope {
                bounds: self.bounds,
                mask: &denominators,
            };
            let (by_group, total) = exec::by_rows(t, &keys, &scope, false, false);
            let by_group: HashMap<u64, i64> =
                by_group.into_iter().map(|(k, s)| (k, s.visitors)).collect();
            for (k, a) in groups.iter_mut() {
                a.all_visitors = total;
                a.group_visitors = by_group.get(k).copied().unwrap_or(0);
            }
        }
        if self.percentage {
            let total = if self.visit_family {
                exec::visitors_of_visits(t, &visits)
            } else {
                row_total
            };
            for (_, a) in groups.iter_mut() {
                a.percentage = 100.0 * rate(a.visitors, total);
            }
        }
        if let Some((m, desc, n)) = self.top {
            top_cut(&mut groups, m, desc, n);
        }
        Ok(Some(
            groups
                .into_iter()
                .map(|(k, a)| (keys.render(k), a))
                .collect(),
        ))
    }
}

/// Keeps the groups that can be among the first `n` when the answer is ordered by
/// `m` first: those at or beyond the n-th value (ties kept, so that the full order
/// decides among them as it would among all).
fn top_cut<K>(groups: &mut Vec<(K, Agg)>, m: Metric, desc: bool, n: usize) {
    if groups.len() <= n || n == 0 {
        return;
    }
    let value = |a: &Agg| metric_value(m, a).as_f64().unwrap_or(0.0);
    let mut values: Vec<f64> = groups.iter().map(|(_, a)| value(a)).collect();
    let (_, nth, _) = values.select_nth_unstable_by(n - 1, |a, b| {
        let o = a.total_cmp(b);
        if desc {
            o.reverse()
        } else {
            o
        }
    });
    let nth = *nth;
    groups.retain(|(_, a)| {
        let v = value(a);
        if desc {
            v >= nth
        } else {
            v <= nth
        }
    });
}

/// The first ordering of `req` when it is a metric that [`top_cut`] can cut by, with
/// how many rows the page needs; None when every group is needed (the total count
/// of rows is asked for, or time comes first).
fn top_of(req: &QueryRequest, metrics: &[Metric]) -> Option<(Metric, bool, usize)> {
    if req.include.as_ref().is_some_and(|i| i.total_rows) {
        return None;
    }
    let order = footfall_query::order_of(req).ok()?;
    let (k, desc) = order.first()?;
    let m = Metric::parse(k).ok()?;
    if !metrics.contains(&m) {
        return None;
    }
    let page = req.pagination.as_ref()?;
    Some((m, *desc, page.offset.checked_add(page.limit)?))
}

/// Whether a filter names `event:goal` anywhere (a conversion rate's denominator
/// leaves such filters out).
fn names_goal(f: &Value) -> bool {
    let Some(a) = f.as_array() else { return false };
    match a.first().and_then(Value::as_str) {
        Some("and" | "or") => a
            .get(1)
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(names_goal)),
        Some("not" | "has_done" | "has_not_done") => a.get(1).is_some_and(names_goal),
        _ => a.get(1).and_then(Value::as_str) == Some("event:goal"),
    }
}

impl ColumnarEngine {
    /// A retention table (docs/METRICS.md, "Retention"): the visitors whose first visit
    /// (in the property's whole history, under the filters) falls in each week or month
    /// of the range, and how many of them visited in each period since, up to the end of
    /// the range.
    pub async fn retention(
        &self,
        req: &RetentionRequest,
        _tz: Tz,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Value, QueryError> {
        let unit = match req.period.as_deref().unwrap_or("week") {
            u @ ("week" | "month") => u,
            other => return bad(format!("period `{other}` is not supported; week or month")),
        };
        let mut w = vec![
            "visit_first".to_string(),
            format!("visit_local_date <= DATE '{}'", to.format("%Y-%m-%d")),
        ];
        for f in &req.filters {
            let c = filter(f, &[])?;
            if !c.visit {
                return bad("retention filters take visit attributes only");
            }
            w.push(format!("({})", c.sql));
        }
        // Periods as local wall-clock milliseconds of their first day.
        let start_of = |d: NaiveDate| -> NaiveDate {
            if unit == "week" {
                d - chrono::Duration::days(
                    chrono::Datelike::weekday(&d).num_days_from_monday() as i64
                )
            } else {
                chrono::Datelike::with_day0(&d, 0).expect("day 1 exists")
            }
        };
        let first_period = start_of(from);
        let ms = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp_millis()
        };
        let sql = format!(
            "WITH v AS (SELECT visitor, CAST(date_trunc('{unit}', visit_local_ts) AS BIGINT) AS p FROM events WHERE {}), \
             f AS (SELECT visitor, MIN(p) AS c FROM v GROUP BY visitor), \
             a AS (SELECT DISTINCT visitor, p FROM v) \
             SELECT f.c, a.p, COUNT(DISTINCT a.visitor) FROM f JOIN a ON f.visitor = a.visitor \
             WHERE f.c >= {} AND a.p >= f.c GROUP BY f.c, a.p",
            w.join(" AND "),
            ms(first_period)
        );
        // Cohort → period → visitors.
        let mut table: std::collections::BTreeMap<i64, std::collections::BTreeMap<i64, i64>> =
            Default::default();
        let earliest = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
        if let Some(ctx) = self.context(&req.site_id, earliest, to).await? {
            for (k, v) in Self::rows(&ctx, &sql, 2).await? {
                let num = |i: usize| k[i].as_deref().and_then(|s| s.parse::<i64>().ok());
                if let (Some(c), Some(p)) = (num(0), num(1)) {
                    table.entry(c).or_default().insert(p, v[0]);
                }
            }
        }
        // Every period from the cohort's to the range's last, zeros included.
        let day_of = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .date_naive()
        };
        let next = |d: NaiveDate| {
            if unit == "week" {
                d + chrono::Duration::days(7)
            } else {
                d.checked_add_months(chrono::Months::new(1))
                    .expect("a month later")
            }
        };
        let last = start_of(to);
        let results: Vec<Value> = table
            .into_iter()
            .map(|(c, by_period)| {
                let cohort = day_of(c);
                let size = by_period.get(&c).copied().unwrap_or(0);
                let mut periods = Vec::new();
                let mut d = cohort;
                let mut k = 0;
                while d <= last {
                    let n = by_period.get(&ms(d)).copied().unwrap_or(0);
                    periods.push(json!({"period": k, "visitors": n,
                        "percentage": round_to(100.0 * rate(n, size), 1)}));
                    d = next(d);
                    k += 1;
                }
                json!({"cohort": cohort.to_string(), "visitors": size, "retention": periods})
            })
            .collect();
        Ok(json!({
            "results": results,
            "meta": {"engine": "columnar", "period": unit, "date_range": [from.to_string(), to.to_string()]},
        }))
    }

    /// A funnel (docs/METRICS.md, "Funnels"): per group of visit attributes, the
    /// visitors whose visit completed the goals in order, each step by an event later in
    /// the visit than the step before (`visit_seq`), among the events of the range under
    /// the filters.
    pub async fn funnel(
        &self,
        req: &FunnelRequest,
        _tz: Tz,
        (from, to): (NaiveDate, NaiveDate),
    ) -> Result<Value, QueryError> {
        if !(2..=8).contains(&req.steps.len()) {
            return bad("a funnel has 2 to 8 steps");
        }
        let steps: Vec<&Goal> = req
            .steps
            .iter()
            .map(|n| {
                req.goals.iter().find(|g| g.name == *n).ok_or_else(|| {
                    QueryError::Invalid(format!("`{n}` is not a goal of this property"))
                })
            })
            .collect::<Result<_, _>>()?;
        let dims: Vec<Dim> = req
            .dimensions
            .iter()
            .map(|d| dimension(d))
            .collect::<Result<_, _>>()?;
        if let Some((name, _)) = req
            .dimensions
            .iter()
            .zip(&dims)
            .find(|(_, d)| !d.visit_level)
        {
            return bad(format!(
                "a funnel breaks down by visit attributes only, not `{name}`"
            ));
        }
        let mut w = Vec::new();
        for f in &req.filters {
            w.push(format!("({})", filter(f, &req.goals)?.sql));
        }
        w.push(format!(
            "local_date BETWEEN DATE '{}' AND DATE '{}'",
            from.format("%Y-%m-%d"),
            to.format("%Y-%m-%d")
        ));
        let n = dims.len();
        if let Some(t) = self.resident_table(&req.site_id, from, to).await? {
            let (names, filters, goals) = (
                req.dimensions.clone(),
                req.filters.clone(),
                req.goals.clone(),
            );
            let owned: Vec<Goal> = steps.iter().map(|g| (*g).clone()).collect();
            let dates = (crate::table::date32(from), crate::table::date32(to));
            let answer = tokio::task::spawn_blocking(move || {
                resident_funnel(&t, &names, &filters, &goals, &owned, dates)
            })
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))??;
            if let Some(rows) = answer {
                return Ok(funnel_response(rows, &steps, n, (from, to), "resident"));
            }
        }
        let dim_cols: String = (0..n).map(|i| format!(", d{i}")).collect();
        let dim_exprs: String = dims
            .iter()
            .enumerate()
            .map(|(i, d)| format!(", {} AS d{i}", d.sql))
            .collect();
        let flags: String = steps
            .iter()
            .enumerate()
            .map(|(k, g)| format!(", {} AS s{k}", goal_sql(g)))
            .collect();
        let mut ctes = vec![
            format!(
                "base AS (SELECT visit_id, visitor, visit_seq AS seq{dim_exprs}{flags} FROM events WHERE {})",
                w.join(" AND ")
            ),
            "f0 AS (SELECT visit_id, MIN(seq) AS t FROM base WHERE s0 GROUP BY visit_id)".into(),
        ];
        for k in 1..steps.len() {
            let p = k - 1;
            ctes.push(format!(
                "f{k} AS (SELECT b.visit_id, MIN(b.seq) AS t FROM base b JOIN f{p} ON b.visit_id = f{p}.visit_id WHERE b.s{k} AND b.seq > f{p}.t GROUP BY b.visit_id)"
            ));
        }
        ctes.push(format!(
            "visits AS (SELECT DISTINCT visit_id, visitor{dim_cols} FROM base)"
        ));
        let keys: String = (0..n).map(|i| format!("visits.d{i}, ")).collect();
        let group = if n == 0 {
            String::new()
        } else {
            format!(
                " GROUP BY {}",
                (0..n)
                    .map(|i| format!("visits.d{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let parts: Vec<String> = (0..steps.len())
            .map(|k| {
                format!(
                    "SELECT {keys}CAST({k} AS BIGINT) AS step, COUNT(DISTINCT visits.visitor) FROM f{k} JOIN visits ON f{k}.visit_id = visits.visit_id{group}"
                )
            })
            .collect();
        let sql = format!("WITH {} {}", ctes.join(", "), parts.join(" UNION ALL "));
        let mut groups: HashMap<Vec<Option<String>>, Vec<i64>> = HashMap::new();
        if let Some(ctx) = self.context(&req.site_id, from, to).await? {
            for (k, v) in Self::rows(&ctx, &sql, n).await? {
                let counts = groups.entry(k).or_insert_with(|| vec![0; steps.len()]);
                counts[v[0] as usize] = v[1];
            }
        }
        let rows: Vec<(Vec<Option<String>>, Vec<i64>)> = groups.into_iter().collect();
        Ok(funnel_response(rows, &steps, n, (from, to), "datafusion"))
    }
}

/// A funnel's groups from the resident table; None where it does not hold a dimension
/// or filter.
fn resident_funnel(
    t: &crate::resident::Table,
    names: &[String],
    filters: &[Value],
    goals: &[Goal],
    steps: &[Goal],
    dates: (i32, i32),
) -> Result<Option<Vec<FunnelGroup>>, QueryError> {
    use crate::resident::exec;
    let mut dims = Vec::new();
    for d in names {
        match exec::Dim::new(t, d, dates) {
            Some(d) => dims.push(d),
            None => return Ok(None),
        }
    }
    let mut preds = Vec::new();
    for f in filters {
        match exec::compile(t, f, goals)? {
            Some(p) => preds.push(p),
            None => return Ok(None),
        }
    }
    // A funnel groups by visit attributes and keeps visits without a value.
    let Some(keys) = exec::Keys::new(&dims, false) else {
        return Ok(None);
    };
    let mask = exec::and_all(t, preds.iter().map(|p| exec::eval(t, p)).collect());
    let steps: Vec<&Goal> = steps.iter().collect();
    let tests = exec::goal_tests(t, &steps)?;
    Ok(Some(
        exec::funnel(t, &keys, &mask, &tests)
            .into_iter()
            .map(|(k, c)| (keys.render(k), c))
            .collect(),
    ))
}

/// The funnel's response from its groups' counts per step.
fn funnel_response<G: std::borrow::Borrow<Goal>>(
    rows: Vec<(Vec<Option<String>>, Vec<i64>)>,
    steps: &[G],
    dimensions: usize,
    (from, to): (NaiveDate, NaiveDate),
    executor: &str,
) -> Value {
    let mut rows: Vec<(Vec<Option<String>>, Vec<i64>)> =
        rows.into_iter().filter(|(_, c)| c[0] > 0).collect();
    if dimensions == 0 && rows.is_empty() {
        rows.push((Vec::new(), vec![0; steps.len()]));
    }
    rows.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then_with(|| a.0.cmp(&b.0)));
    let results: Vec<Value> = rows
        .into_iter()
        .map(|(k, counts)| {
            let steps: Vec<Value> = steps
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let v = counts[i];
                    let before = if i == 0 { v } else { counts[i - 1] };
                    json!({
                        "step": i + 1,
                        "goal": g.borrow().name,
                        "visitors": v,
                        "conversion_rate": round_to(100.0 * rate(v, counts[0]), 2),
                        "dropoff": before - v,
                        "dropoff_rate": round_to(100.0 * rate(before - v, before), 2),
                    })
                })
                .collect();
            let dims: Vec<Value> = k
                .into_iter()
                .map(|d| json!(d.unwrap_or_default()))
                .collect();
            json!({"dimensions": dims, "steps": steps})
        })
        .collect();
    json!({
        "results": results,
        "meta": {"engine": "columnar", "executor": executor, "date_range": [from.to_string(), to.to_string()]},
    })
}

/// The rows in the rollup engine's shape (time labels as it writes them), ordered and
/// paged by the same code.
fn respond(
    req: &QueryRequest,
    tz: Tz,
    dates: (NaiveDate, NaiveDate),
    dims: &[Dim],
    metrics: &[Metric],
    rows: Vec<(Vec<Option<String>>, Agg)>,
) -> Result<Value, QueryError> {
    let time_at = dims.iter().position(|d| d.time.is_some());
    let rows = rows
        .into_iter()
        .map(|(k, a)| {
            // Time groups come back as local wall-clock milliseconds.
            let time = time_at.and_then(|i| k[i].as_deref().and_then(|s| s.parse::<i64>().ok()));
            let dims = k
                .iter()
                .zip(dims)
                .map(|(v, d)| match (d.time, time) {
                    (Some(unit), Some(ms)) => {
                        let t = chrono::DateTime::from_timestamp_millis(ms)
                            .unwrap_or_default()
                            .naive_utc();
                        json!(if unit == "hour" {
                            t.format("%Y-%m-%d %H:%M:%S").to_string()
                        } else {
                            t.format("%Y-%m-%d").to_string()
                        })
                    }
                    _ => json!(v.clone().unwrap_or_default()),
                })
                .collect();
            footfall_query::ResultRow {
                time,
                dims,
                metrics: metrics.iter().map(|m| metric_value(*m, &a)).collect(),
            }
        })
        .collect();
    footfall_query::respond(req, tz, dates, rows, "columnar")
}

/// Runs `answer` again, once, when it failed reading a file: a day's file is replaced
/// whole when the day is made again (the archiver's refresh), and a statement that
/// listed the old file but read the new one finds a footer that is not where the
/// listing said. The second run lists the files again.
async fn again_if_a_file_changed<F, Fut>(answer: F) -> Result<Value, QueryError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Value, QueryError>>,
{
    match answer().await {
        Err(QueryError::Unavailable(m))
            if ["Parquet", "parquet", "Object Store", "Arrow error", "range"]
                .iter()
                .any(|w| m.contains(w)) =>
        {
            tracing::debug!(error = %m, "a columnar file changed while read: asking again");
            answer().await
        }
        other => other,
    }
}

impl footfall_query::EventQuery for ColumnarEngine {
    fn query<'a>(
        &'a self,
        req: &'a QueryRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>
    {
        Box::pin(again_if_a_file_changed(move || {
            self.execute(req, tz, dates)
        }))
    }

    fn sql<'a>(
        &'a self,
        property: &'a str,
        dates: (NaiveDate, NaiveDate),
        sql: &'a str,
        limits: footfall_query::SqlLimits,
        format: footfall_query::SqlFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(ColumnarEngine::sql_stream(
            self, property, dates, sql, limits, format, out,
        ))
    }

    fn export<'a>(
        &'a self,
        property: &'a str,
        dates: (NaiveDate, NaiveDate),
        format: footfall_query::ExportFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(ColumnarEngine::export(self, property, dates, format, out))
    }

    fn retention<'a>(
        &'a self,
        req: &'a RetentionRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>
    {
        Box::pin(again_if_a_file_changed(move || {
            ColumnarEngine::retention(self, req, tz, dates)
        }))
    }

    fn funnel<'a>(
        &'a self,
        req: &'a FunnelRequest,
        tz: Tz,
        dates: (NaiveDate, NaiveDate),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, QueryError>> + Send + 'a>>
    {
        Box::pin(again_if_a_file_changed(move || {
            ColumnarEngine::funnel(self, req, tz, dates)
        }))
    }
}
