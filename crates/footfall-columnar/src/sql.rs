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
use footfall_query::{QueryError, SqlFormat, SqlLimits};
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

/// Checks that `sql` is exactly one `SELECT` (or `WITH … SELECT`, `VALUES`) that writes
/// nothing ([`footfall_sqlguard::check_select`]).
pub fn check_statement(sql: &str) -> Result<(), QueryError> {
    footfall_sqlguard::check_select(sql).map_err(QueryError::Invalid)
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
    /// `[from, to]`, collected: `{"columns": [{"name", "type"}], "rows": [[...]],
    /// "truncated"}` (the streamed answer of [`Self::sql_stream`], whole).
    pub async fn sql(
        &self,
        property: &str,
        dates: (NaiveDate, NaiveDate),
        sql: &str,
        limits: SqlLimits,
    ) -> Result<Value, QueryError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let run = self.sql_stream(property, dates, sql, limits, SqlFormat::Json, tx);
        let collect = async {
            let mut body = Vec::new();
            while let Some(chunk) = rx.recv().await {
                body.extend(chunk?);
            }
            Ok::<_, QueryError>(body)
        };
        let ((), body) = tokio::join!(run, collect);
        let answer: Value = serde_json::from_slice(&body?)
            .map_err(|e| QueryError::Unavailable(format!("SQL answer: {e}")))?;
        match answer.get("error").and_then(Value::as_str) {
            Some(e) => Err(QueryError::Invalid(e.to_string())),
            None => Ok(answer),
        }
    }

    /// Runs one read-only statement over `property`'s events of the local dates
    /// `[from, to]` and sends the answer in chunks into `out` as rows come (see
    /// [`footfall_query::EventQuery::sql`]): at most `limits.max_rows` rows, within
    /// `limits.timeout` and `limits.memory_bytes`, on the statements' runtime.
    pub async fn sql_stream(
        &self,
        property: &str,
        (from, to): (NaiveDate, NaiveDate),
        sql: &str,
        limits: SqlLimits,
        format: SqlFormat,
        out: tokio::sync::mpsc::Sender<Result<Vec<u8>, QueryError>>,
    ) {
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let ctx = async {
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
            Ok(ctx)
        };
        let ctx = match ctx.await {
            Ok(ctx) => ctx,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let statement = sql.to_string();
        let late = out.clone();
        let mut task = statements_runtime().spawn(async move {
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let stream = async {
                let df = ctx.sql_with_options(&statement, options).await?;
                df.execute_stream().await
            };
            let mut stream = match tokio::time::timeout_at(deadline, stream).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = out.send(Err(engine_error(e, &limits))).await;
                    return;
                }
                Err(_) => {
                    let _ = out.send(Err(past_time(&limits))).await;
                    return;
                }
            };
            let mut answer = Answer::new(format, stream.schema().as_ref());
            loop {
                use futures::StreamExt;
                let batch = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(b))) => b,
                    Ok(Some(Err(e))) => {
                        answer.failed = Some(engine_error(e, &limits));
                        break;
                    }
                    Err(_) => {
                        answer.failed = Some(past_time(&limits));
                        break;
                    }
                };
                let chunk = match answer.rows(&batch, limits.max_rows) {
                    Ok(c) => c,
                    Err(e) => {
                        answer.failed = Some(QueryError::Unavailable(e.to_string()));
                        break;
                    }
                };
                // The receiver gone (the client left): stop; dropping the stream stops
                // the engine's work.
                if !chunk.is_empty() && out.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if answer.truncated {
                    break;
                }
            }
            match answer.finish() {
                Ok(tail) => {
                    let _ = out.send(Ok(tail)).await;
                }
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                }
            }
        });
        // A statement that holds the SQL thread past its deadline cannot see its own
        // timer: answer from here, and abort it (it stops at its next yield).
        let grace = std::time::Duration::from_millis(100);
        if tokio::time::timeout_at(deadline + grace, &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = late.send(Err(past_time(&limits))).await;
        }
    }
}

fn past_time(limits: &SqlLimits) -> QueryError {
    QueryError::Invalid(format!(
        "the statement ran past its time limit ({:.1} s)",
        limits.timeout.as_secs_f64()
    ))
}

/// An engine error as the caller's: past the memory limit, or the statement's fault.
fn engine_error(e: datafusion::error::DataFusionError, limits: &SqlLimits) -> QueryError {
    let s = e.to_string();
    if s.contains("Resources exhausted") || s.contains("memory") {
        QueryError::Invalid(format!(
            "the statement needs more than its memory limit ({} MiB): {s}",
            limits.memory_bytes >> 20
        ))
    } else {
        QueryError::Invalid(s)
    }
}

/// A statement's answer as it is written: the opening (sent with the first rows, so
/// that a failure before any row is a proper error answer), rows, then the end.
struct Answer {
    format: SqlFormat,
    head: Option<Vec<u8>>,
    rows: usize,
    truncated: bool,
    failed: Option<QueryError>,
}

impl Answer {
    fn new(format: SqlFormat, schema: &datafusion::arrow::datatypes::Schema) -> Self {
        let head = match format {
            SqlFormat::Json => {
                let columns: Vec<Value> = schema
                    .fields()
                    .iter()
                    .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
                    .collect();
                format!("{{\"columns\":{},\"rows\":[", Value::Array(columns))
            }
            SqlFormat::Csv => {
                let names: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| footfall_query::csv_field(&Value::String(f.name().clone())))
                    .collect();
                format!("{}\r\n", names.join(","))
            }
        };
        Self {
            format,
            head: Some(head.into_bytes()),
            rows: 0,
            truncated: false,
            failed: None,
        }
    }

    /// The batch's rows (up to `max_rows` in all), after the opening if not yet sent.
    fn rows(
        &mut self,
        batch: &RecordBatch,
        max_rows: usize,
    ) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
        let mut text = if batch.num_rows() > 0 {
            self.head.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let options = FormatOptions::default();
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            if self.rows == max_rows {
                self.truncated = true;
                break;
            }
            let cells = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(c, f)| cell(c.as_ref(), f, r));
            match self.format {
                SqlFormat::Json => {
                    if self.rows > 0 {
                        text.push(b',');
                    }
                    let row = Value::Array(cells.collect());
                    text.extend(row.to_string().into_bytes());
                }
                SqlFormat::Csv => {
                    let line: Vec<String> = cells.map(|v| footfall_query::csv_field(&v)).collect();
                    text.extend(line.join(",").into_bytes());
                    text.extend(b"\r\n");
                }
            }
            self.rows += 1;
        }
        Ok(text)
    }

    /// The end of the answer: with nothing sent yet, a failure is the error itself;
    /// after rows, JSON closes with an `"error"` member and CSV simply stops.
    fn finish(mut self) -> Result<Vec<u8>, QueryError> {
        let head = self.head.take();
        match (self.failed, head) {
            (Some(e), Some(_)) => Err(e),
            (failed, head) => {
                let mut text = head.unwrap_or_default();
                if self.format == SqlFormat::Json {
                    let mut end = format!("],\"truncated\":{}", self.truncated || failed.is_some());
                    if let Some(e) = failed {
                        end.push_str(&format!(",\"error\":{}", Value::String(e.to_string())));
                    }
                    end.push('}');
                    text.extend(end.into_bytes());
                }
                Ok(text)
            }
        }
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
