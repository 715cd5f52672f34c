//! HTTP surface of Footfall: ingestion, queries, health and metrics, with auth and the
//! API error type. Handlers reach the subsystems only through their traits, held in
//! [`AppState`]; the binary chooses the implementations.

pub mod dashboard;
pub mod error;
mod extract;
pub mod fast;
pub mod metrics;
pub mod privacy;
pub mod protocols;
pub mod reprocess;
pub mod tracker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use footfall_collector::{client_ip, Admitted};
use footfall_event::native::{self, NativeEvent, Rejection};
use footfall_event::Clock;
use footfall_log::{Backlog, EventLog};
use footfall_meta::Scope;
use footfall_processor::Progress;
use footfall_store::RollupRead;
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

pub use error::ApiError;
pub use footfall_collector::{parse_proxy, IngestRules, Limit, PropertyLimits};
pub use footfall_meta::MetaCache;
pub use metrics::Metrics;

/// Everything handlers need; built once by the binary.
/// What one node serves. Which parts are present follows its roles: a collector has a
/// log to append to, a query node a store to read, a processor its statistics.
pub struct AppState {
    /// The log events are appended to (collector role); ingestion routes exist only
    /// with one.
    pub log: Option<Arc<dyn EventLog>>,
    /// Where reports are read from (query role); query routes exist only with one.
    pub store: Option<Arc<dyn RollupRead>>,
    pub cache: Arc<MetaCache>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The processing in this process (processor role: the embedded processor, or a
    /// cluster node's partition processors) and the log it reads.
    pub processor: Option<(Arc<dyn Progress>, Arc<dyn EventLog>)>,
    /// What this node's readiness depends on beyond not shutting down and its log's
    /// health: each check is named in `/readyz`'s answer when it fails (a database…).
    pub readiness: Vec<ReadinessCheck>,
    pub rules: IngestRules,
    /// Cleared when ingestion must stop: new ingestion gets 503.
    pub accepting: AtomicBool,
    /// Set when shutdown starts: `/readyz` answers 503 so that load balancers stop
    /// sending, while requests still arriving on open connections are answered (see
    /// [`fast::serve`]).
    pub draining: AtomicBool,
    /// Reprocessing (absent when the server runs without an archive).
    pub reprocessor: Option<Arc<reprocess::Reprocessor>>,
    /// Deleting data (beside reprocessing, which it uses).
    pub eraser: Option<Arc<privacy::Eraser>>,
    /// Segment `messageId`s recently kept, to recognise retries.
    pub message_ids: protocols::MessageIds,
    /// Another path the tracker script is served under (empty: only `/footfall.js`).
    pub tracker_path: String,
    /// Answers of `/api/v2/query` kept for a short while (in process or in Redis); None:
    /// every query is computed.
    pub query_cache: Option<Arc<dyn footfall_cache::ResultCache>>,
    /// The columnar engine (raw events), asked for what the rollups cannot answer; None:
    /// such queries get a 400 naming what the rollups lack.
    pub events: Option<Arc<dyn footfall_query::EventQuery>>,
    /// The limits of one SQL statement (`POST /api/v1/sql`).
    pub sql_limits: footfall_query::SqlLimits,
    /// Dashboard logins (query role; None: API keys only).
    pub auth: Option<Arc<footfall_auth::Auth>>,
    /// Session cookies only over TLS (`server.secure_cookies`); they are also when the
    /// gateway says the client came over TLS (`X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// Bytes of events handed to the log and not yet acknowledged by it, across all
    /// requests (`ingest.max_pending_mib`): beyond it, ingest answers 503 with
    /// `Retry-After` instead of queueing without bound.
    pub pending: Arc<tokio::sync::Semaphore>,
}

type AppRef = Arc<AppState>;

/// A named dependency of readiness; `check` must answer quickly (it is polled).
#[derive(Clone)]
pub struct ReadinessCheck {
    pub name: &'static str,
    pub check: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The router with every route and layer.
pub fn app(state: AppRef) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .max_age(std::time::Duration::from_secs(86400));
    let ingest = Router::new()
        .route("/api/v1/events", post(ingest_native))
        .route("/api/event", post(protocols::ingest_plausible))
        .route("/mp/collect", post(protocols::ga4_collect))
        .route("/debug/mp/collect", post(protocols::ga4_debug))
        .route(
            "/g/collect",
            get(protocols::gtag_collect).post(protocols::gtag_collect),
        )
        .route("/v1/{kind}", post(protocols::segment))
        .layer(cors);
    let tracker_path = state.tracker_path.clone();
    let mut router = Router::new();
    if state.log.is_some() {
        router = router
            .route("/footfall.js", get(tracker::script))
            .merge(ingest);
        if !tracker_path.is_empty() {
            router = router.route(&tracker_path, get(tracker::script));
        }
    }
    if state.store.is_some() {
        router = router
            .route("/api/v2/query", post(query))
            .route("/api/v1/stats/realtime/visitors", get(realtime_visitors))
            .route("/api/v1/stats/realtime", get(realtime_report))
            .route("/api/v1/stats/filtered", get(filtered_report))
            .route("/api/v1/goals", get(goals_list))
            .route("/api/v2/funnel", post(funnel))
            .route("/api/v2/retention", post(retention))
            .route("/api/v1/sql", post(sql_statement))
            .route("/api/v1/export", get(export_events));
    }
    if state.store.is_some() && state.auth.is_some() {
        router = router
            .route("/api/auth/login", post(dashboard::login))
            .route("/api/auth/logout", post(dashboard::logout))
            .route("/api/auth/me", get(dashboard::me))
            .route(
                "/api/ui/properties/{id}/keys",
                get(dashboard::list_keys).post(dashboard::create_key),
            )
            .route(
                "/api/ui/properties/{id}/keys/{key_id}",
                axum::routing::delete(dashboard::revoke_key),
            )
            .route(
                "/api/ui/properties/{id}/goals",
                get(dashboard::list_goals).put(dashboard::set_goals),
            )
            .route(
                "/api/ui/properties/{id}/shares",
                get(dashboard::list_shares).post(dashboard::create_share),
            )
            .route(
                "/api/ui/properties/{id}/shares/{share_id}",
                axum::routing::delete(dashboard::revoke_share),
            )
            .route(
                "/api/ui/accounts/{account}/invites",
                get(dashboard::list_invites).post(dashboard::create_invite),
            )
            .route(
                "/api/ui/accounts/{account}/invites/{invite_id}",
                axum::routing::delete(dashboard::revoke_invite),
            )
            .route("/api/invites/{token}", get(dashboard::show_invite))
            .route(
                "/api/invites/{token}/accept",
                post(dashboard::accept_invite),
            )
            .route("/api/share/me", get(dashboard::share_me))
            .route("/share/{token}", get(dashboard::shared_page))
            .route("/invite/{token}", get(dashboard::shared_page))
            .route("/", get(dashboard::page))
            .route("/dashboard.js", get(dashboard::script))
            .route("/dashboard.css", get(dashboard::style));
    }
    if state.reprocessor.is_some() {
        router = router
            .route("/api/v1/admin/reprocess", post(reprocess_start))
            .route("/api/v1/admin/reprocess/{id}", get(reprocess_status));
    }
    if state.eraser.is_some() {
        router = router
            .route("/api/v1/admin/delete", post(delete_start))
            .route("/api/v1/admin/delete/{id}", get(delete_status));
    }
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/openapi.json", get(openapi))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// How long a request body may take to arrive, whole: a client that trickles it is cut
/// off (408) rather than holding its connection and buffer without end.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
        Ok(r) => r.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {limit} bytes"),
            )
        }),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "metadata store failure");
    ApiError::unavailable(format!("metadata store unavailable: {e}"))
}

async fn ingest_native(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Also checked by `ingest_native_body`; here it spares reading a refused body.
    check_accepting(&app)?;
    let bytes = read_body(body, app.rules.limits.max_body_bytes)
        .await
        .inspect_err(|_| {
            app.metrics.reject("payload_too_large");
        })?;
    let (status, body) = ingest_native_body(&app, peer, &headers, &bytes).await?;
    Ok((status, Json(body)).into_response())
}

/// The native endpoint once its body is read: shared by the router and the beacon fast
/// path ([`fast`]), so both answer every request alike.
pub(crate) async fn ingest_native_body(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    check_accepting(app)?;
    let limits = &app.rules.limits;
    let values = native::parse_body(bytes, limits).map_err(|e| {
        app.metrics.reject(e.code());
        let status = match e {
            native::BodyError::TooManyEvents(..) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code(), e.to_string())
    })?;
    let grant = match bearer(headers) {
        None => None,
        Some(k) => match app.cache.key(k).map_err(internal)? {
            Some(g) if g.scope == Scope::Write => Some(g),
            Some(_) => {
                return Err(ApiError::forbidden(
                    "this key has read scope; ingestion needs a write key",
                ))
            }
            None => return Err(ApiError::unauthorized("unknown API key")),
        },
    };
    let sender = Sender {
        grant: grant.as_ref(),
        peer,
        headers,
        header_ua: true,
        check_url_host: true,
    };
    let events = values.iter().map(native::read_event).enumerate().collect();
    let (records, bad) = admit(app, events, &sender)?;
    let rejected: Vec<serde_json::Value> = bad.iter().map(|(i, r)| rejection_json(*i, r)).collect();
    if records.is_empty() {
        return Err(no_valid_events(rejected));
    }
    let n = records.len();
    append_durable(app, records).await?;
    Ok((
        StatusCode::ACCEPTED,
        json!({"accepted": n, "rejected": rejected}),
    ))
}

/// Ingestion is refused (503) once shutdown has started.
fn check_accepting(app: &AppState) -> Result<(), ApiError> {
    if app.accepting.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::unavailable("server is shutting down"))
    }
}

/// Who sent a request, as a handler sees it.
pub(crate) struct Sender<'a> {
    /// The write key's grant (server-side senders), if any.
    pub grant: Option<&'a footfall_meta::KeyGrant>,
    pub peer: SocketAddr,
    pub headers: &'a HeaderMap,
    /// Take the user agent from the request (browser protocols), or only from the payload
    /// (server protocols, whose HTTP client is not the visitor).
    pub header_ua: bool,
    /// Check browser events' page host against the property's domains.
    pub check_url_host: bool,
}

/// Admits a request's typed events, each with its index in the request (those its
/// protocol could not read are refusals already): the records to append, and the
/// refusals by index, counted in the metrics.
pub(crate) fn admit(
    app: &AppState,
    items: Vec<(usize, Result<NativeEvent, Rejection>)>,
    s: &Sender<'_>,
) -> Result<Admitted, ApiError> {
    let log = app
        .log
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this node does not collect events"))?;
    let mut bad = Vec::new();
    let mut index = Vec::with_capacity(items.len());
    let mut events = Vec::with_capacity(items.len());
    for (i, e) in items {
        match e {
            Ok(e) => {
                index.push(i);
                events.push(e);
            }
            Err(r) => bad.push((i, r)),
        }
    }
    let sender = footfall_collector::Sender {
        grant: s.grant,
        ip: client_ip(s.peer.ip(), s.headers, &app.rules.trusted_proxies),
        user_agent: s
            .header_ua
            .then(|| s.headers.get(header::USER_AGENT)?.to_str().ok())
            .flatten()
            .map(String::from),
        check_url_host: s.check_url_host,
    };
    let now = app.clock.now_millis();
    let (records, refused) = footfall_collector::admit_all(
        &app.cache,
        &app.rules,
        now,
        log.partitions(),
        events,
        &sender,
    )
    .map_err(internal)?;
    bad.extend(refused.into_iter().map(|(j, r)| (index[j], r)));
    bad.sort_by_key(|(i, _)| *i);
    for (_, r) in &bad {
        app.metrics.reject(r.code);
    }
    Ok((records, bad))
}

/// One refused item in the native `rejected` list.
pub(crate) fn rejection_json(index: usize, r: &Rejection) -> serde_json::Value {
    let mut v = json!({"index": index, "code": r.code, "message": r.message});
    if let Some(s) = r.retry_after {
        v["retry_after"] = json!(s);
    }
    v
}

/// When every refusal is a property's rate limit or quota: the seconds to wait (the
/// longest of them), for a 429 with `Retry-After`.
pub(crate) fn all_limited(bad: &[(usize, Rejection)]) -> Option<u32> {
    let limited = |r: &Rejection| matches!(r.code, "rate_limited" | "quota_exceeded");
    if bad.is_empty() || !bad.iter().all(|(_, r)| limited(r)) {
        return None;
    }
    bad.iter()
        .filter_map(|(_, r)| r.retry_after)
        .max()
        .or(Some(1))
}

/// The answer when no item of a request was admitted: 429 with `Retry-After` when every
/// item was over its property's rate or quota, 404 when every item named an unknown
/// tracking id, else 400, with the per-item list.
pub(crate) fn no_valid_events(rejected: Vec<serde_json::Value>) -> ApiError {
    let limited =
        |r: &serde_json::Value| r["code"] == "rate_limited" || r["code"] == "quota_exceeded";
    if !rejected.is_empty() && rejected.iter().all(limited) {
        let wait = rejected
            .iter()
            .filter_map(|r| r["retry_after"].as_u64())
            .max()
            .unwrap_or(1);
        let code = rejected[0]["code"].as_str().unwrap_or("rate_limited");
        let code = if code == "quota_exceeded" {
            "quota_exceeded"
        } else {
            "rate_limited"
        };
        let message = rejected[0]["message"].as_str().unwrap_or("").to_string();
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            .with("rejected", json!(rejected));
        e.retry_after = Some(wait as u32);
        return e;
    }
    let all_unknown = rejected.iter().all(|r| r["code"] == "unknown_tracking_id");
    let (status, code) = if all_unknown {
        (StatusCode::NOT_FOUND, "unknown_tracking_id")
    } else {
        (StatusCode::BAD_REQUEST, "no_valid_events")
    };
    let first = rejected
        .first()
        .and_then(|r| r["message"].as_str())
        .unwrap_or("no events")
        .to_string();
    ApiError::new(status, code, first).with("rejected", json!(rejected))
}

#[derive(serde::Deserialize)]
struct SiteParam {
    site_id: String,
}

/// Checks a read key against `site_id`; the error never carries data.
/// Reads are authorised by a read key of the property (`Authorization: Bearer`), by a
/// share link's token for it (`X-Footfall-Share`), or by a dashboard session whose
/// accounts hold it (see [`dashboard`]).
fn authorise_read(app: &AppState, headers: &HeaderMap, site_id: &str) -> Result<(), ApiError> {
    let Some(key) = bearer(headers) else {
        if let Some(token) = dashboard::share_token(headers) {
            return dashboard::authorise_share_read(app, token, site_id);
        }
        return match dashboard::session_of(app, headers)? {
            Some(s) => dashboard::authorise_session_read(app, &s, site_id),
            None => Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <read key>` header (or a dashboard session)",
            )),
        };
    };
    let grant = app
        .cache
        .key(key)
        .map_err(internal)?
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if grant.scope != Scope::Read {
        return Err(ApiError::forbidden("queries need a read key"));
    }
    if grant.property != site_id {
        return Err(ApiError::forbidden(
            "this key does not grant access to that site_id",
        ));
    }
    Ok(())
}

/// The property `site_id`, once the caller may read it ([`authorise_read`]).
fn readable_property(
    app: &AppState,
    headers: &HeaderMap,
    site_id: &str,
) -> Result<Arc<footfall_meta::Property>, ApiError> {
    authorise_read(app, headers, site_id)?;
    app.cache
        .property(site_id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such site_id"))
}

/// A `date_range` given in a query string: a named range, or `FROM,TO`.
fn range_param(s: &str) -> serde_json::Value {
    match s.split_once(',') {
        Some((a, b)) => json!([a, b]),
        None => json!(s),
    }
}

/// `GET /api/v1/goals?site_id=` (read key or a session that may read the property): the
/// property's goals, as `event:goal` and the conversion metrics read them.
async fn goals_list(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Query(p): extract::Query<SiteParam>,
) -> Result<Response, ApiError> {
    let property = readable_property(&app, &headers, &p.site_id)?;
    Ok(Json(serde_json::json!({ "goals": property.goals })).into_response())
}

/// What a columnar-only report needs: the caller may read `site_id`, the node has the
/// engine, and the range resolves (as a query's does). Answers the engine, the property
/// and its dates.
async fn columnar_report<'a>(
    app: &'a AppState,
    headers: &HeaderMap,
    site_id: &str,
    date_range: &serde_json::Value,
    what: &str,
) -> Result<
    (
        &'a Arc<dyn footfall_query::EventQuery>,
        Arc<footfall_meta::Property>,
        (chrono::NaiveDate, chrono::NaiveDate),
    ),
    ApiError,
> {
    let property = readable_property(app, headers, site_id)?;
    let Some(engine) = &app.events else {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{what} are answered by the columnar engine, which is not enabled on this node (the `columnar` feature and `columnar.enabled`)"),
        ));
    };
    let dates_of: footfall_query::QueryRequest = serde_json::from_value(serde_json::json!({
        "site_id": site_id, "metrics": ["visitors"], "date_range": date_range,
    }))
    .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let store = query_store(app)?.clone();
    let (_, _, dates) = query_dates(dates_of, store, property.tz(), app.clock.now_millis())
        .await
        .map_err(query_error)?;
    Ok((engine, property, dates.map_err(query_error)?))
}

/// `POST /api/v2/funnel` (read key or a session that may read the property): visitors who
/// completed the property's goals in order within a visit (docs/METRICS.md, "Funnels").
async fn funnel(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 64 * 1024).await?;
    let mut req: footfall_query::FunnelRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("invalid funnel: {e}")))?;
    let (engine, property, dates) =
        columnar_report(&app, &headers, &req.site_id, &req.date_range, "funnels").await?;
    req.goals = property.goals.clone();
    let answer = engine
        .funnel(&req, property.tz(), dates)
        .await
        .map_err(query_error)?;
    Ok(Json(answer).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    site_id: String,
    sql: String,
    /// Which days' events the tables hold (default `all`).
    #[serde(default)]
    date_range: Option<serde_json::Value>,
    /// `json` (default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

/// `POST /api/v1/sql` (read key or a session that may read the property): one read-only
/// statement over the property's `events` and `visits` (docs/SQL.md), answered as JSON
/// (`columns`, `rows`, `truncated`) or CSV, streamed as rows come.
async fn sql_statement(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 64 * 1024).await?;
    let req: SqlRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_sql",
            format!("expected {{\"site_id\", \"sql\"}}: {e}"),
        )
    })?;
    let format = match req.format.as_deref().unwrap_or("json") {
        "json" => footfall_query::SqlFormat::Json,
        "csv" => footfall_query::SqlFormat::Csv,
        other => {
            return Err(ApiError::bad_request(
                "invalid_sql",
                format!("format `{other}`: json or csv"),
            ))
        }
    };
    let range = req.date_range.clone().unwrap_or(serde_json::json!("all"));
    let (engine, _, dates) =
        columnar_report(&app, &headers, &req.site_id, &range, "SQL statements").await?;
    let engine = engine.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let limits = app.sql_limits;
    tokio::spawn(async move {
        engine
            .sql(&req.site_id, dates, &req.sql, limits, format, tx)
            .await
    });
    // The first chunk decides the answer: a statement refused or failed before its
    // first row is a proper error answer.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(footfall_query::QueryError::Invalid(m))) => {
            return Err(ApiError::bad_request("invalid_sql", m))
        }
        Some(Err(e)) => return Err(query_error(e)),
        None => Vec::new(),
    };
    let kind = match format {
        footfall_query::SqlFormat::Json => "application/json",
        footfall_query::SqlFormat::Csv => "text/csv; charset=utf-8",
    };
    Ok((
        [(header::CONTENT_TYPE, kind)],
        Body::from_stream(Chunks {
            first: Some(first),
            rest: rx,
        }),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
struct ExportParams {
    site_id: String,
    /// A named range or `YYYY-MM-DD,YYYY-MM-DD` (default `all`).
    #[serde(default)]
    date_range: Option<String>,
    /// `csv` (default) or `parquet`.
    #[serde(default)]
    format: Option<String>,
}

/// The chunks of an export as a response body: the first (already received), then the
/// rest as they come.
struct Chunks {
    first: Option<Vec<u8>>,
    rest: tokio::sync::mpsc::Receiver<Result<Vec<u8>, footfall_query::QueryError>>,
}

impl futures_core::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(Bytes::from(first))));
        }
        self.rest.poll_recv(cx).map(|c| {
            c.map(|r| {
                r.map(Bytes::from)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        })
    }
}

/// `GET /api/v1/export?site_id=&date_range=&format=csv|parquet` (read key or a session
/// that may read the property): the property's raw events (the `events` table of
/// docs/SQL.md), streamed as they are read. A failure before the first byte is an error
/// answer; after it, the body ends early (the client sees a cut file).
async fn export_events(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Query(p): extract::Query<ExportParams>,
) -> Result<Response, ApiError> {
    let format = footfall_query::ExportFormat::parse(p.format.as_deref().unwrap_or("csv"))
        .map_err(query_error)?;
    let range = range_param(p.date_range.as_deref().unwrap_or("all"));
    let (engine, _, dates) = columnar_report(&app, &headers, &p.site_id, &range, "exports").await?;
    let engine = engine.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let site = p.site_id.clone();
    tokio::spawn(async move { engine.export(&site, dates, format, tx).await });
    // The first chunk decides the answer: an error before any byte is a proper one.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(query_error(e)),
        None => Vec::new(),
    };
    let (kind, ext) = match format {
        footfall_query::ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        footfall_query::ExportFormat::Parquet => ("application/vnd.apache.parquet", "parquet"),
    };
    let disposition = format!("attachment; filename=\"{}-events.{ext}\"", p.site_id);
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(Chunks {
            first: Some(first),
            rest: rx,
        }),
    )
        .into_response())
}

/// `POST /api/v2/retention` (read key or a session that may read the property):
/// visitors by the week or month of their first visit, and their return in each period
/// since (docs/METRICS.md, "Retention").
async fn retention(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 64 * 1024).await?;
    let req: footfall_query::RetentionRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("invalid retention: {e}")))?;
    let (engine, property, dates) = columnar_report(
        &app,
        &headers,
        &req.site_id,
        &req.date_range,
        "retention tables",
    )
    .await?;
    let answer = engine
        .retention(&req, property.tz(), dates)
        .await
        .map_err(query_error)?;
    Ok(Json(answer).into_response())
}

/// Plausible's realtime shape: a bare number of visitors in the last 5 minutes.
async fn realtime_visitors(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Query(p): extract::Query<SiteParam>,
) -> Result<Response, ApiError> {
    authorise_read(&app, &headers, &p.site_id)?;
    let r = footfall_query::realtime(
        query_store(&app)?.as_ref(),
        &p.site_id,
        app.clock.now_millis(),
    )
    .map_err(query_error)?;
    Ok(Json(r["visitors_last_5_minutes"].clone()).into_response())
}

async fn realtime_report(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Query(p): extract::Query<SiteParam>,
) -> Result<Response, ApiError> {
    authorise_read(&app, &headers, &p.site_id)?;
    Ok(Json(
        footfall_query::realtime(
            query_store(&app)?.as_ref(),
            &p.site_id,
            app.clock.now_millis(),
        )
        .map_err(query_error)?,
    )
    .into_response())
}

#[derive(serde::Deserialize)]
struct FilteredParams {
    site_id: String,
    #[serde(default = "default_range")]
    date_range: String,
}

fn default_range() -> String {
    "30d".into()
}

/// Events kept out of the statistics (bots), by reason: `GET
/// /api/v1/stats/filtered?site_id=…&date_range=7d` (a named range or `FROM,TO`).
async fn filtered_report(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Query(p): extract::Query<FilteredParams>,
) -> Result<Response, ApiError> {
    let property = readable_property(&app, &headers, &p.site_id)?;
    let range = range_param(&p.date_range);
    let v = footfall_query::filtered(
        query_store(&app)?.as_ref(),
        &p.site_id,
        &range,
        property.tz(),
        app.clock.now_millis(),
    )
    .map_err(query_error)?;
    Ok(Json(v).into_response())
}

async fn query(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Credentials present at all (checked by `authorise_read`, which looks the session
    // up once): spares reading the body of a request that has none.
    if bearer(&headers).is_none()
        && dashboard::share_token(&headers).is_none()
        && dashboard::cookie_token(&headers).is_none()
    {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <read key>` header (or a dashboard session)",
        ));
    }
    let bytes = read_body(body, 64 * 1024).await?;
    let req: footfall_query::QueryRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("invalid query: {e}")))?;
    authorise_read(&app, &headers, &req.site_id)?;
    let property = app
        .cache
        .property(&req.site_id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such site_id"))?;
    let store = query_store(&app)?.clone();
    let now = app.clock.now_millis();
    let tz = property.tz();
    let key = app
        .query_cache
        .as_ref()
        .map(|_| query_cache_key(&req.site_id, &property, now, &bytes));
    if let (Some(cache), Some(key)) = (&app.query_cache, &key) {
        let looked = Instant::now();
        let hit = cache.get(key).await;
        app.metrics
            .query_cache_seconds
            .observe(looked.elapsed().as_secs_f64());
        if let Some(answer) = hit {
            app.metrics.query_cache_hits.inc();
            app.metrics
                .query_seconds
                .observe(started.elapsed().as_secs_f64());
            return Ok(json_bytes(answer));
        }
        app.metrics.query_cache_misses.inc();
    }
    let mut req = req;
    req.goals = property.goals.clone();
    let result = plan(&app, req, tz, store, now).await.map_err(query_error)?;
    let answer = Bytes::from(serde_json::to_vec(&result).map_err(internal)?);
    if let (Some(cache), Some(key)) = (&app.query_cache, &key) {
        cache.put(key, answer.clone()).await;
    }
    app.metrics
        .query_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(json_bytes(answer))
}

/// What decides a query's answer, as a cache key: the property and its time zone, the
/// request (its JSON with keys in order, so equal requests are equal keys), and the
/// current minute — relative ranges (`day`, `7d`) move at local midnight, which is
/// always on a minute. The data is not in the key: answers are kept only for the
/// cache's `ttl`, chosen within the freshness bound.
fn query_cache_key(
    site_id: &str,
    property: &footfall_meta::Property,
    now_ms: i64,
    body: &[u8],
) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    // Goals change what `event:goal` and the conversion metrics answer.
    let goals = if property.goals.is_empty() {
        String::new()
    } else {
        footfall_meta::hash_key(&footfall_meta::goals_to_text(&property.goals))
    };
    format!(
        "v1\x1f{site_id}\x1f{}\x1f{goals}\x1f{}\x1f{canonical}",
        property.timezone,
        now_ms.div_euclid(60_000)
    )
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The planner, with what comes on top of either engine: `include.time_labels` (every
/// label of the time dimension over the range) and `include.comparison` (the same query
/// over the comparison period, attached row by row with the change).
async fn plan(
    app: &AppState,
    mut req: footfall_query::QueryRequest,
    tz: chrono_tz::Tz,
    store: Arc<dyn RollupRead>,
    now: i64,
) -> Result<serde_json::Value, footfall_query::QueryError> {
    use footfall_query::QueryError;
    let include = req.include.clone().unwrap_or_default();
    if !include.time_labels && include.comparison.is_none() {
        return plan_one(app, req, tz, store, now).await;
    }
    let time_dim = req
        .dimensions
        .iter()
        .find(|d| d.starts_with("time"))
        .cloned();
    if include.time_labels && time_dim.is_none() {
        return Err(QueryError::Invalid(
            "include.time_labels needs a time dimension".into(),
        ));
    }
    // The range, resolved once: both periods and the labels use these dates.
    let (req_back, s2, dates) = query_dates(req, store, tz, now).await?;
    req = req_back;
    let (from, to) = dates?;
    let compared = include
        .comparison
        .as_deref()
        .map(|mode| footfall_query::comparison_range(mode, from, to))
        .transpose()?;
    req.date_range = serde_json::json!([from.to_string(), to.to_string()]);
    let mut answer = plan_one(app, req.clone(), tz, s2.clone(), now).await?;
    let labels = time_dim
        .as_deref()
        .and_then(|d| footfall_query::time_labels(d, from, to));
    if let Some((cf, ct)) = compared {
        let mut old_req = req.clone();
        old_req.date_range = serde_json::json!([cf.to_string(), ct.to_string()]);
        old_req.pagination = None;
        let old = plan_one(app, old_req, tz, s2, now).await?;
        let old_labels = time_dim
            .as_deref()
            .and_then(|d| footfall_query::time_labels(d, cf, ct));
        footfall_query::attach_comparison(
            &mut answer,
            &old,
            &req.dimensions,
            &req.metrics,
            labels.as_deref().zip(old_labels.as_deref()),
        );
        answer["meta"]["comparison_date_range"] = old["query"]["date_range"].clone();
    }
    if include.time_labels {
        answer["meta"]["time_labels"] = serde_json::json!(labels.unwrap_or_default());
    }
    Ok(answer)
}

/// The local dates of a query's range ("today" in the property's zone, `all` from its
/// first day), resolved off the async threads (a remote store may be asked); hands the
/// request and store back.
async fn query_dates(
    req: footfall_query::QueryRequest,
    store: Arc<dyn RollupRead>,
    tz: chrono_tz::Tz,
    now: i64,
) -> Result<
    (
        footfall_query::QueryRequest,
        Arc<dyn RollupRead>,
        Result<(chrono::NaiveDate, chrono::NaiveDate), footfall_query::QueryError>,
    ),
    footfall_query::QueryError,
> {
    tokio::task::spawn_blocking(move || {
        let d = footfall_query::property_date_range(
            store.as_ref(),
            &req.site_id,
            &req.date_range,
            tz,
            now,
        );
        (req, store, d)
    })
    .await
    .map_err(|e| footfall_query::QueryError::Unavailable(e.to_string()))
}

/// The planner: the rollups answer when they can (milliseconds); what they cannot answer
/// (several dimensions, a filter on another dimension than the breakdown, logical and
/// regular-expression filters…) goes to the columnar engine over raw events. The
/// answer's `meta.engine` says which answered, and `meta.engine_reason` why not the
/// rollups.
async fn plan_one(
    app: &AppState,
    req: footfall_query::QueryRequest,
    tz: chrono_tz::Tz,
    store: Arc<dyn RollupRead>,
    now: i64,
) -> Result<serde_json::Value, footfall_query::QueryError> {
    use footfall_query::QueryError;
    let blocking = |e: tokio::task::JoinError| QueryError::Unavailable(e.to_string());
    let (req, store, first) = tokio::task::spawn_blocking(move || {
        let r = footfall_query::execute(&req, tz, store.as_ref(), now);
        (req, store, r)
    })
    .await
    .map_err(blocking)?;
    let why = match first {
        Err(QueryError::Unsupported(why)) => why,
        other => return other,
    };
    let Some(engine) = &app.events else {
        return Err(QueryError::Invalid(format!(
            "{why}; the columnar engine that answers such queries is not enabled on this node (the `columnar` feature and `columnar.enabled`)"
        )));
    };
    let (req, _, dates) = query_dates(req, store, tz, now).await?;
    let mut answer = engine.query(&req, tz, dates?).await?;
    answer["meta"]["engine_reason"] = serde_json::Value::String(why);
    Ok(answer)
}

/// An invalid query is the client's to fix (400); a store that cannot answer now is
/// retried (503 with Retry-After).
fn query_error(e: footfall_query::QueryError) -> ApiError {
    match e {
        footfall_query::QueryError::Invalid(m) | footfall_query::QueryError::Unsupported(m) => {
            ApiError::bad_request("invalid_query", m)
        }
        footfall_query::QueryError::Unavailable(m) => {
            tracing::warn!(error = %m, "query store unavailable");
            ApiError::unavailable(m)
        }
    }
}

fn authorise_admin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing `Authorization: Bearer <admin key>` header")
    })?;
    match app.cache.key(key).map_err(internal)? {
        Some(g) if g.scope == Scope::Admin => Ok(()),
        Some(_) => Err(ApiError::forbidden("this needs an admin key")),
        None => Err(ApiError::unauthorized("unknown API key")),
    }
}

fn reprocessor(app: &AppState) -> Result<&Arc<reprocess::Reprocessor>, ApiError> {
    app.reprocessor.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_available",
            "this server has no archive",
        )
    })
}

async fn reprocess_start(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorise_admin(&app, &headers)?;
    let r = reprocessor(&app)?;
    let bytes = read_body(body, 64 * 1024).await?;
    let req: reprocess::ReprocessRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    if req.property.is_some() == req.all {
        return Err(ApiError::bad_request(
            "invalid_request",
            "give exactly one of `property` or `all: true`",
        ));
    }
    if let Some(p) = &req.property {
        if app.cache.property(p).map_err(internal)?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_property",
                format!("no property `{p}`"),
            ));
        }
    }
    let id = r.start(req);
    Ok((StatusCode::ACCEPTED, Json(json!({"job": id}))).into_response())
}

async fn reprocess_status(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Path(id): extract::Path<u64>,
) -> Result<Response, ApiError> {
    authorise_admin(&app, &headers)?;
    let s = reprocessor(&app)?
        .status(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such job"))?;
    Ok(Json(s).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRequest {
    property: String,
    /// One visitor, by the `user_id` or `client_id` its events were sent with.
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    /// Every event of the property (given explicitly, so that a request that names no
    /// visitor by mistake deletes nothing).
    #[serde(default)]
    everything: bool,
}

/// `POST /api/v1/admin/delete` (admin key): deletes a property's events, or one
/// visitor's, from the archive, the log, the rollups and the columnar files
/// (docs/SECURITY.md, "Deleting data"); answers `202 {"job": id}`.
async fn delete_start(
    State(app): State<AppRef>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorise_admin(&app, &headers)?;
    let eraser = app.eraser.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_available",
            "this server has no archive",
        )
    })?;
    let bytes = read_body(body, 64 * 1024).await?;
    let req: DeleteRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    use footfall_event::identity::{visitor_id, IdentitySource};
    let target = match (&req.user_id, &req.client_id, req.everything) {
        (Some(u), None, false) if !u.is_empty() => privacy::Target::Visitor(visitor_id(
            app.cache.secret(),
            &req.property,
            IdentitySource::UserId(u),
        )),
        (None, Some(c), false) if !c.is_empty() => privacy::Target::Visitor(visitor_id(
            app.cache.secret(),
            &req.property,
            IdentitySource::ClientId(c),
        )),
        (None, None, true) => privacy::Target::Everything,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "give exactly one of `user_id`, `client_id` or `everything: true`",
            ))
        }
    };
    if app
        .cache
        .property(&req.property)
        .map_err(internal)?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_property",
            format!("no property `{}`", req.property),
        ));
    }
    let id = eraser.start(req.property, target);
    Ok((StatusCode::ACCEPTED, Json(json!({"job": id}))).into_response())
}

async fn delete_status(
    State(app): State<AppRef>,
    headers: HeaderMap,
    extract::Path(id): extract::Path<u64>,
) -> Result<Response, ApiError> {
    authorise_admin(&app, &headers)?;
    let s = app
        .eraser
        .as_ref()
        .and_then(|e| e.status(id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such job"))?;
    Ok(Json(s).into_response())
}

fn query_store(app: &AppState) -> Result<&Arc<dyn RollupRead>, ApiError> {
    app.store
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this node does not answer queries"))
}

/// The OpenAPI document of every endpoint (docs/API.md in machine form; schemathesis
/// checks the server against it in the tests).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// 200 `ready`, or 503 naming what is not: `shutting down`, or each failed check.
async fn readyz(State(app): State<AppRef>) -> Response {
    if !app.accepting.load(Ordering::SeqCst) || app.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down").into_response();
    }
    let mut checks = app.readiness.clone();
    // A collector needs its log, a processor the log it reads.
    let logs = app
        .log
        .iter()
        .chain(app.processor.iter().map(|(_, l)| l))
        .take(1);
    for log in logs {
        let log = log.clone();
        checks.push(ReadinessCheck {
            name: "event log",
            check: Arc::new(move || log.healthy()),
        });
    }
    let failed: Vec<&'static str> = tokio::task::spawn_blocking(move || {
        checks
            .iter()
            .filter(|c| !(c.check)())
            .map(|c| c.name)
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec!["readiness check panicked"]);
    if failed.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failed.join(", ")),
        )
            .into_response()
    }
}

async fn metrics_text(State(app): State<AppRef>) -> Response {
    let m = &app.metrics;
    if let Some((p, log)) = app.processor.clone() {
        // A broker's end offsets are a round trip each: off the async threads.
        let backlog = tokio::task::spawn_blocking(move || {
            let (mut bytes, mut messages) = (0u64, 0u64);
            for (part, at) in p.positions() {
                match log.backlog(part, at) {
                    Backlog::Bytes(n) => bytes += n,
                    Backlog::Messages(n) => messages += n,
                }
            }
            (bytes, messages, p)
        })
        .await;
        if let Ok((bytes, messages, p)) = backlog {
            m.lag_bytes.set(bytes as i64);
            m.lag_messages.set(messages as i64);
            let last = p.last_received_at();
            let lag_s = if bytes + messages > 0 && last > 0 {
                (app.clock.now_millis() - last) as f64 / 1000.0
            } else {
                0.0
            };
            m.lag_seconds.set(lag_s);
            m.processed.set(p.events() as i64);
            m.open_visits.set(p.open_visits() as i64);
            m.checkpoint_bytes.set(p.checkpoint_bytes() as i64);
        }
    }
    if let Some(log) = &app.log {
        m.log_bytes.set(log.retained_bytes() as i64);
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &m.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Appends records and waits until they are durable; a failure is a 503.
async fn append_durable(app: &AppState, records: Vec<(u32, Vec<u8>)>) -> Result<(), ApiError> {
    let n = records.len();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let Some(log) = &app.log else {
        return Err(ApiError::unavailable("this node does not collect events"));
    };
    // Held until the log answers: the queue in front of the log stays bounded.
    let bytes: usize = records.iter().map(|(_, r)| r.len() + 16).sum();
    let _pending = match app
        .pending
        .try_acquire_many(u32::try_from(bytes).unwrap_or(u32::MAX))
    {
        Ok(p) => p,
        Err(_) => {
            app.metrics.reject("overloaded");
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many events are waiting to be stored; retry shortly",
            );
            e.retry_after = Some(1);
            return Err(e);
        }
    };
    log.append(
        records,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "append failed; refusing events");
            app.metrics.reject("storage_unavailable");
            return Err(ApiError::unavailable(format!(
                "events were not stored: {e}"
            )));
        }
        Err(_) => return Err(ApiError::unavailable("log writer stopped")),
    }
    app.metrics
        .append_seconds
        .observe(started.elapsed().as_secs_f64());
    app.metrics.accepted.inc_by(n as u64);
    Ok(())
}
