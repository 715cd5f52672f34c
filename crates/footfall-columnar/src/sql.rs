//! SQL over one property's raw events (`POST /api/v1/sql`, docs/SQL.md): a read-only
//! `SELECT` over two tables, `events` (one row per event) and `visits` (one row per
//! visit), and nothing else — no other property, file, URL, catalog or setting — within
//! a time and a memory limit.
//!
//! What keeps a statement in: the session holds only this property's two tables (no
//! catalog, no `information_schema`, no URL tables); the statement must be exactly one
//! `SELECT` (parsed here, then DataFusion's own `SQLOptions` refuse DDL, DML and
//! statements again on the plan); the runtime's memory pool bounds what operators hold;
//! the statement runs on a runtime of its own (one thread), so that a heavy one cannot
//! take the threads that collect events and answer dashboards, and past its time it is
//! aborted.

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::context::SQLOptions;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use footfall_query::{QueryError, SqlLimits};
use serde_json::{json, Value};

use crate::engine::ColumnarEngine;

/// The `visits` table: the visit columns of each visit's first event.
pub(crate) const VISITS_VIEW: &str = "CREATE VIEW visits AS SELECT visit_id, visitor, \
    visit_local_date AS local_date, visit_local_ts AS local_ts, visit_pageviews AS pageviews, \
    visit_events AS events, visit_bounce AS bounce, visit_duration_ms AS duration_ms, \
    visit_entry_page AS entry_page, visit_exit_page AS exit_page, \
    visit_entry_page_hostname AS entry_page_hostname, visit_exit_page_hostname AS exit_page_hostname, \
    visit_source AS source, visit_referrer AS referrer, visit_channel AS channel, \
    visit_utm_source AS utm_source, visit_utm_medium AS utm_medium, visit_utm_campaign AS utm_campaign, \
    visit_utm_content AS utm_content, visit_utm_term AS utm_term, visit_device AS device, \
    visit_browser AS browser, visit_browser_version AS browser_version, visit_os AS os, \
    visit_os_version AS os_version, visit_country AS country, visit_region AS region, visit_city AS city \
    FROM events WHERE visit_first";

/// Checks that `sql` is exactly one `SELECT` (or `WITH … SELECT`, `VALUES`).
pub fn check_statement(sql: &str) -> Result<(), QueryError> {
    let statements = DFParser::parse_sql(sql)
        .map_err(|e| QueryError::Invalid(format!("SQL does not parse: {e}")))?;
    if statements.len() != 1 {
        return Err(QueryError::Invalid(format!(
            "exactly one statement, please (got {})",
            statements.len()
        )));
    }
    match statements.front() {
        Some(DfStatement::Statement(s)) if matches!(**s, Statement::Query(_)) => Ok(()),
        _ => Err(QueryError::Invalid(
            "only a SELECT over `events` and `visits` is allowed (no DDL, DML, COPY, SET, SHOW or EXPLAIN)".into(),
        )),
    }
}

/// One cell as JSON: numbers and booleans as such, everything else as its text.
fn cell(col: &dyn Array, f: &ArrayFormatter<'_>, row: usize) -> Value {
    if col.is_null(row) {
        return Value::Null;
    }
    let text = f.value(row).to_string();
    match col.data_type() {
        DataType::Boolean => json!(text == "true"),
        t if t.is_integer() => text
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| text.parse::<u64>().map(Value::from))
            .unwrap_or(Value::String(text)),
        t if t.is_floating() => text
            .parse::<f64>()
            .ok()
            .and_then(|x| serde_json::Number::from_f64(x).map(Value::Number))
            .unwrap_or(Value::String(text)),
        _ => Value::String(text),
    }
}

/// The one thread SQL statements run on — those of `POST /api/v1/sql`, exports, and the
/// PostgreSQL wire protocol's connections — so that a heavy statement cannot take the
/// threads that collect events and answer dashboards (never dropped, so never shut
/// down inside another runtime).
pub fn statements_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("footfall-sql")
            .enable_all()
            .build()
            .expect("the SQL runtime starts")
    })
}

impl ColumnarEngine {
    /// Runs one read-only statement over `property`'s events of the local dates
    /// `[from, to]`: `{"columns": [{"name", "type"}], "rows": [[...]], "truncated"}`.
    pub async fn sql(
        &self,
        property: &str,
        (from, to): (NaiveDate, NaiveDate),
        sql: &str,
        limits: SqlLimits,
    ) -> Result<Value, QueryError> {
        check_statement(sql)?;
        let runtime = self.limited_runtime(limits.memory_bytes)?;
        let Some(ctx) = self.context_in(property, from, to, runtime).await? else {
            return Err(QueryError::Invalid(
                "this property has no raw events in that date range yet".into(),
            ));
        };
        ctx.sql(VISITS_VIEW)
            .await
            .map_err(|e| QueryError::Unavailable(e.to_string()))?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let invalid = |e: datafusion::error::DataFusionError| {
            let s = e.to_string();
            if s.contains("Resources exhausted") || s.contains("memory") {
                QueryError::Invalid(format!(
                    "the statement needs more than its memory limit ({} MiB): {s}",
                    limits.memory_bytes >> 20
                ))
            } else {
                QueryError::Invalid(s)
            }
        };
        let statement = sql.to_string();
        let mut run = statements_runtime().spawn(async move {
            let df = ctx.sql_with_options(&statement, options).await?;
            df.collect().await
        });
        let batches: Vec<RecordBatch> = match tokio::time::timeout(limits.timeout, &mut run).await {
            Ok(Ok(r)) => r.map_err(invalid)?,
            Ok(Err(e)) => return Err(QueryError::Unavailable(e.to_string())),
            Err(_) => {
                run.abort();
                return Err(QueryError::Invalid(format!(
                    "the statement ran past its time limit ({:.1} s)",
                    limits.timeout.as_secs_f64()
                )));
            }
        };
        let columns: Vec<Value> = match batches.first() {
            Some(b) => b
                .schema()
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                .collect(),
            None => Vec::new(),
        };
        let options = FormatOptions::default();
        let mut rows = Vec::new();
        let mut truncated = false;
        'all: for b in &batches {
            let formatters: Vec<ArrayFormatter<'_>> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<_, _>>()
                .map_err(|e| QueryError::Unavailable(e.to_string()))?;
            for r in 0..b.num_rows() {
                if rows.len() == limits.max_rows {
                    truncated = true;
                    break 'all;
                }
                rows.push(Value::Array(
                    b.columns()
                        .iter()
                        .zip(&formatters)
                        .map(|(c, f)| cell(c.as_ref(), f, r))
                        .collect(),
                ));
            }
        }
        Ok(json!({"columns": columns, "rows": rows, "truncated": truncated}))
    }
}

/// A buffer the Parquet writer writes into while its bytes are sent on as they come.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A batch's rows as CSV lines.
fn csv_rows(batch: &RecordBatch) -> Result<String, datafusion::arrow::error::ArrowError> {
    let options = FormatOptions::default();
    let formatters: Vec<ArrayFormatter<'_>> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<_, _>>()?;
    let mut text = String::new();
    for r in 0..batch.num_rows() {
        let cells: Vec<String> = batch
            .columns()
            .iter()
            .zip(&formatters)
            .map(|(c, f)| footfall_query::csv_field(&cell(c.as_ref(), f, r)))
            .collect();
        text.push_str(&cells.join(","));
        text.push_str("\r\n");
    }
    Ok(text)
}

impl ColumnarEngine {
    /// A property's raw events of `[from, to]` (the `events` table) as CSV or Parquet,
    /// a chunk per batch into `out`, on the statements' runtime.
    pub async fn export(
        &self,
        property: &str,
        (from, to): (NaiveDate, NaiveDate),
        format: footfall_query::ExportFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) {
        let ctx = match self.context(property, from, to).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => {
                let _ = out
                    .send(Err(QueryError::Invalid(
                        "this property has no raw events in that date range yet".into(),
                    )))
                    .await;
                return;
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let task = statements_runtime().spawn(async move {
            use futures::StreamExt;
            let fail = |e: &dyn std::fmt::Display| QueryError::Unavailable(e.to_string());
            let stream = async {
                let df = ctx.table("events").await?;
                df.execute_stream().await
            }
            .await;
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let _ = out.send(Err(fail(&e))).await;
                    return;
                }
            };
            let schema = stream.schema();
            let buf = SharedBuf::default();
            let mut parquet = match format {
                footfall_query::ExportFormat::Parquet => {
                    match datafusion::parquet::arrow::ArrowWriter::try_new(
                        buf.clone(),
                        schema.clone(),
                        None,
                    ) {
                        Ok(w) => Some(w),
                        Err(e) => {
                            let _ = out.send(Err(fail(&e))).await;
                            return;
                        }
                    }
                }
                footfall_query::ExportFormat::Csv => {
                    let names: Vec<String> = schema
                        .fields()
                        .iter()
                        .map(|f| footfall_query::csv_field(&Value::String(f.name().clone())))
                        .collect();
                    if out
                        .send(Ok(format!("{}\r\n", names.join(",")).into_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    None
                }
            };
            while let Some(batch) = stream.next().await {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = out.send(Err(fail(&e))).await;
                        return;
                    }
                };
                let chunk = match &mut parquet {
                    Some(w) => match w.write(&batch).and_then(|_| w.flush()) {
                        Ok(()) => buf.take(),
                        Err(e) => {
                            let _ = out.send(Err(fail(&e))).await;
                            return;
                        }
                    },
                    None => match csv_rows(&batch) {
                        Ok(text) => text.into_bytes(),
                        Err(e) => {
                            let _ = out.send(Err(fail(&e))).await;
                            return;
                        }
                    },
                };
                // The receiver gone (the client left): stop reading.
                if !chunk.is_empty() && out.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            if let Some(w) = parquet {
                match w.close() {
                    Ok(_) => {
                        let _ = out.send(Ok(buf.take())).await;
                    }
                    Err(e) => {
                        let _ = out.send(Err(fail(&e))).await;
                    }
                }
            }
        });
        let _ = task.await;
    }
}
