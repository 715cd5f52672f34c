//! HTTP surface of Footfall: ingestion, queries, health and metrics, with auth and the
//! API error type. Handlers reach the subsystems only through their traits, held in
//! [`AppState`]; the binary chooses the implementations.

pub mod cache;
pub mod error;
pub mod fast;
pub mod metrics;
pub mod protocols;
pub mod reprocess;
pub mod tracker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use footfall_event::identity::{truncate_ip, visitor_id, IdentitySource};
use footfall_event::native::{self, Limits, Rejection};
use footfall_event::{Clock, LoggedEvent};
use footfall_log::{partition_for, EventLog};
use footfall_meta::Scope;
use footfall_processor::ProcessorStats;
use footfall_store::RollupRead;
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

pub use cache::MetaCache;
pub use error::ApiError;
pub use metrics::Metrics;

/// Ingestion time rules.
#[derive(Debug, Clone)]
pub struct IngestRules {
    pub limits: Limits,
    /// Browser events older than this are refused; write-key senders may backdate.
    pub max_past_ms: i64,
    /// Timestamps further than this in the future are clamped to the receive time.
    pub max_future_ms: i64,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` / `Forwarded` entries
    /// are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for IngestRules {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_past_ms: 72 * 3600 * 1000,
            max_future_ms: 60 * 1000,
            trusted_proxies: vec![
                IpAddr::from([127, 0, 0, 1]).into(),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST).into(),
            ],
        }
    }
}

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
    /// The processor in this process (processor role) and the log it reads.
    pub processor: Option<(Arc<ProcessorStats>, Arc<dyn EventLog>)>,
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
    /// Segment `messageId`s recently kept, to recognise retries.
    pub message_ids: protocols::MessageIds,
    /// Another path the tracker script is served under (empty: only `/footfall.js`).
    pub tracker_path: String,
    /// Answers of `/api/v2/query` kept for a short while (in process or in Redis); None:
    /// every query is computed.
    pub query_cache: Option<Arc<dyn footfall_cache::ResultCache>>,
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
        .route("/api/event", post(ingest_plausible))
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
            .route("/api/v1/stats/filtered", get(filtered_report));
    }
    if state.reprocessor.is_some() {
        router = router
            .route("/api/v1/admin/reprocess", post(reprocess_start))
            .route("/api/v1/admin/reprocess/{id}", get(reprocess_status));
    }
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
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

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    })
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
    let (records, bad) = admit_all(app, &values, &sender)?;
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

/// Who sent a request, and what admission may take from it.
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

/// Records ready to append and, per input index, the events refused.
pub(crate) type Admitted = (Vec<(u32, Vec<u8>)>, Vec<(usize, Rejection)>);

/// Admits native event objects (every protocol translates into them); refusals are
/// counted in the metrics.
pub(crate) fn admit_all(
    app: &AppState,
    events: &[serde_json::Value],
    s: &Sender<'_>,
) -> Result<Admitted, ApiError> {
    let now = app.clock.now_millis();
    let salt = app
        .cache
        .salt(now.div_euclid(86_400_000))
        .map_err(internal)?;
    let secret = *app.cache.secret();
    let ip = client_ip(s.peer.ip(), s.headers, &app.rules.trusted_proxies);
    let ua = if s.header_ua {
        s.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    } else {
        None
    };
    let (mut ok, mut bad) = (Vec::with_capacity(events.len()), Vec::new());
    let log = app
        .log
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this node does not collect events"))?;
    let partitions = log.partitions();
    for (i, e) in events.iter().enumerate() {
        match admit(
            app,
            e,
            s.grant,
            now,
            ip,
            &ua,
            &salt,
            &secret,
            s.check_url_host,
        ) {
            Ok(ev) => ok.push((partition_for(ev.visitor, partitions), ev.encode())),
            Err(r) => {
                app.metrics.reject(r.code);
                bad.push((i, r));
            }
        }
    }
    Ok((ok, bad))
}

/// One refused item in the native `rejected` list.
pub(crate) fn rejection_json(index: usize, r: &Rejection) -> serde_json::Value {
    json!({"index": index, "code": r.code, "message": r.message})
}

/// The answer when no item of a request was admitted: 404 when every item named an
/// unknown tracking id, else 400, with the per-item list.
pub(crate) fn no_valid_events(rejected: Vec<serde_json::Value>) -> ApiError {
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

/// Turns one body item into a log record, or says why not.
#[allow(clippy::too_many_arguments)]
fn admit(
    app: &AppState,
    v: &serde_json::Value,
    grant: Option<&footfall_meta::KeyGrant>,
    now: i64,
    peer_ip: IpAddr,
    header_ua: &Option<String>,
    salt: &[u8; 16],
    secret: &[u8; 16],
    check_url_host: bool,
) -> Result<LoggedEvent, Rejection> {
    let e = native::parse_event(v, &app.rules.limits)?;
    let property = app
        .cache
        .property(&e.tracking_id)
        .map_err(|err| Rejection::new("unavailable", err.to_string()))?
        .ok_or_else(|| {
            Rejection::new(
                "unknown_tracking_id",
                format!("no property has tracking id `{}`", e.tracking_id),
            )
        })?;
    if let Some(g) = grant {
        if g.property != e.tracking_id {
            return Err(Rejection::new(
                "forbidden",
                "the write key belongs to another property",
            ));
        }
    }
    let server_side = grant.is_some();
    let mut ts = e.timestamp.unwrap_or(now);
    if ts > now + app.rules.max_future_ms {
        ts = now;
    }
    if !server_side && ts < now - app.rules.max_past_ms {
        return Err(Rejection::new(
            "timestamp_too_old",
            "timestamps older than 72 hours need a write key",
        ));
    }
    if check_url_host && !server_side && !property.domains.is_empty() {
        if let Some(host) = e.url.as_deref().and_then(footfall_event::url_host) {
            if !property.allows_host(&host) {
                return Err(Rejection::new(
                    "domain_not_allowed",
                    format!("`{host}` is not an allowed domain of this property"),
                ));
            }
        }
    }
    let ip = if server_side {
        e.ip.unwrap_or(peer_ip)
    } else {
        peer_ip
    };
    let user_agent = if server_side {
        e.user_agent.clone().or_else(|| header_ua.clone())
    } else {
        header_ua.clone()
    };
    let source = if let Some(u) = e.user_id.as_deref() {
        IdentitySource::UserId(u)
    } else if let Some(c) = e.client_id.as_deref() {
        IdentitySource::ClientId(c)
    } else {
        IdentitySource::Address {
            ip,
            user_agent: user_agent.as_deref().unwrap_or(""),
            daily_salt: salt,
        }
    };
    let visitor = visitor_id(secret, &e.tracking_id, source);
    Ok(LoggedEvent {
        property: e.tracking_id,
        received_at: now,
        timestamp: ts,
        visitor,
        name: e.name,
        url: e.url,
        referrer: e.referrer,
        title: e.title,
        props: e.props,
        revenue: e.revenue,
        interactive: e.interactive,
        user_agent,
        ip_prefix: Some(truncate_ip(ip)),
    })
}

#[derive(serde::Deserialize)]
struct SiteParam {
    site_id: String,
}

/// Checks a read key against `site_id`; the error never carries data.
fn authorise_read(app: &AppState, headers: &HeaderMap, site_id: &str) -> Result<(), ApiError> {
    let key = bearer(headers).ok_or_else(|| {
        ApiError::unauthorized("missing `Authorization: Bearer <read key>` header")
    })?;
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

/// Plausible's realtime shape: a bare number of visitors in the last 5 minutes.
async fn realtime_visitors(
    State(app): State<AppRef>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<SiteParam>,
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
    axum::extract::Query(p): axum::extract::Query<SiteParam>,
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
    axum::extract::Query(p): axum::extract::Query<FilteredParams>,
) -> Result<Response, ApiError> {
    authorise_read(&app, &headers, &p.site_id)?;
    let property = app
        .cache
        .property(&p.site_id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such site_id"))?;
    let range = match p.date_range.split_once(',') {
        Some((a, b)) => json!([a, b]),
        None => json!(p.date_range),
    };
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
    if bearer(&headers).is_none() {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <read key>` header",
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
    let result =
        tokio::task::spawn_blocking(move || footfall_query::execute(&req, tz, store.as_ref(), now))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(query_error)?;
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
    format!(
        "v1\x1f{site_id}\x1f{}\x1f{}\x1f{canonical}",
        property.timezone,
        now_ms.div_euclid(60_000)
    )
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An invalid query is the client's to fix (400); a store that cannot answer now is
/// retried (503 with Retry-After).
fn query_error(e: footfall_query::QueryError) -> ApiError {
    match e {
        footfall_query::QueryError::Invalid(m) => ApiError::bad_request("invalid_query", m),
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
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> Result<Response, ApiError> {
    authorise_admin(&app, &headers)?;
    let s = reprocessor(&app)?
        .status(id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such job"))?;
    Ok(Json(s).into_response())
}

fn query_store(app: &AppState) -> Result<&Arc<dyn RollupRead>, ApiError> {
    app.store
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this node does not answer queries"))
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
    if let Some((p, log)) = &app.processor {
        let mut lag = 0i64;
        for part in 0..log.partitions() {
            let end = log.end_offset(part);
            let at = p.offsets[part as usize].load(Ordering::SeqCst);
            lag += end.saturating_sub(at) as i64;
        }
        m.lag_bytes.set(lag);
        let last = p.last_received_at.load(Ordering::Relaxed);
        let lag_s = if lag > 0 && last > 0 {
            (app.clock.now_millis() - last) as f64 / 1000.0
        } else {
            0.0
        };
        m.lag_seconds.set(lag_s);
        m.processed
            .set(p.events_processed.load(Ordering::Relaxed) as i64);
        m.open_visits
            .set(p.open_visits.load(Ordering::Relaxed) as i64);
        m.checkpoint_bytes
            .set(p.checkpoint_bytes.load(Ordering::Relaxed) as i64);
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

/// A `server.trusted_proxies` entry: an address (`10.0.0.7`) or a network
/// (`10.0.0.0/8`, `fd00::/8`).
pub fn parse_proxy(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(Into::into))
}

/// The client address. From a peer that is not a trusted proxy, the peer's. From a
/// trusted proxy, the right-most address of `X-Forwarded-For` (else of `Forwarded`'s
/// `for=`) that is not itself a trusted proxy: each proxy appends the address it was
/// reached from, so entries to the left of that one were written by the client and
/// prove nothing — a client cannot choose its address by sending the header. When every
/// entry is a trusted proxy, the left-most; an entry that is not an address ends the
/// walk at the proxy that passed it on.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let chain: Vec<Option<IpAddr>> = if !xff.is_empty() {
        xff.iter().map(|v| v.parse().ok()).collect()
    } else {
        headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').map(str::trim).find_map(|p| {
                    p.get(..4)
                        .filter(|k| k.eq_ignore_ascii_case("for="))
                        .map(|_| &p[4..])
                })
            })
            .map(forwarded_node)
            .collect()
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            None => return client,
        }
    }
    client
}

/// The address of a `Forwarded` node (`192.0.2.1`, `"[2001:db8::1]:4711"`, …).
fn forwarded_node(f: &str) -> Option<IpAddr> {
    let f = f.trim_matches('"');
    let f = match f.strip_prefix('[') {
        Some(x) => x.split(']').next().unwrap_or(x),
        None => f,
    };
    f.parse()
        .ok()
        .or_else(|| f.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
}

/// Appends records and waits until they are durable; a failure is a 503.
async fn append_durable(app: &AppState, records: Vec<(u32, Vec<u8>)>) -> Result<(), ApiError> {
    let n = records.len();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let Some(log) = &app.log else {
        return Err(ApiError::unavailable("this node does not collect events"));
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

/// `https://x.com/app?q=1#/settings/a` → `https://x.com/app/settings/a?q=1`.
fn hash_route_url(url: &str) -> String {
    let Some((base, frag)) = url.split_once('#') else {
        return url.to_string();
    };
    let route = frag.trim_start_matches('/');
    if route.is_empty() {
        return base.to_string();
    }
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut out = format!("{}/{route}", path.trim_end_matches('/'));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn plausible_error(status: StatusCode, field: &str, msg: &str) -> Response {
    (status, Json(json!({"errors": {field: [msg]}}))).into_response()
}

/// Plausible's Events API (`POST /api/event`): `n`/`name`, `u`/`url`, `d`/`domain`
/// (comma-separated; each names the properties listing that domain), `r`/`referrer`,
/// `p`/`props` (an object or a JSON string), `$`/`revenue`, `i`/`interactive`.
/// Answers 202 `ok` once durable, else Plausible's `{"errors": {...}}` shape.
async fn ingest_plausible(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match plausible_inner(&app, peer, &headers, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn plausible_inner(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let bad = |field: &str, msg: &str| plausible_error(StatusCode::BAD_REQUEST, field, msg);
    check_accepting(app).map_err(IntoResponse::into_response)?;
    let bytes = read_body(body, app.rules.limits.max_body_bytes)
        .await
        .map_err(IntoResponse::into_response)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad("request", &format!("invalid JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| bad("request", "must be a JSON object"))?;
    let get = |short: &str, long: &str| {
        o.get(long)
            .or_else(|| o.get(short))
            .filter(|x| !x.is_null())
    };
    let name = get("n", "name")
        .and_then(|x| x.as_str())
        .ok_or_else(|| bad("name", "can't be blank"))?;
    let url = get("u", "url")
        .and_then(|x| x.as_str())
        .ok_or_else(|| bad("url", "can't be blank"))?;
    let domains = get("d", "domain")
        .and_then(|x| x.as_str())
        .ok_or_else(|| bad("domain", "can't be blank"))?;
    // Hash-based routing (`h`): the route in the fragment is part of the page, joined to
    // the path as the tracker's `data-hash` does (`/app#/settings` → `/app/settings`).
    let hash_routing = get("h", "hashMode")
        .is_some_and(|h| h.as_bool().unwrap_or(false) || h.as_i64().unwrap_or(0) != 0);
    let url = if hash_routing {
        hash_route_url(url)
    } else {
        url.to_string()
    };
    let mut event = json!({"name": name, "url": url});
    match get("p", "props") {
        Some(serde_json::Value::String(s)) => {
            event["props"] =
                serde_json::from_str(s).map_err(|_| bad("props", "is not valid JSON"))?;
        }
        Some(p) => event["props"] = p.clone(),
        None => {}
    }
    if let Some(r) = get("$", "revenue") {
        let amount = match &r["amount"] {
            serde_json::Value::String(s) => s.parse::<f64>().ok().map(|a| json!(a)),
            x => Some(x.clone()),
        };
        event["revenue"] = json!({"amount": amount, "currency": r["currency"]});
    }
    if let Some(r) = get("r", "referrer") {
        event["referrer"] = r.clone();
    }
    if let Some(i) = get("i", "interactive") {
        event["interactive"] = i.clone();
    }
    let meta_err = |e: footfall_meta::Error| internal(e).into_response();
    let (mut properties, mut events) = (Vec::new(), Vec::new());
    for d in domains.split(',') {
        let d = d.trim().to_ascii_lowercase();
        let d = d.strip_prefix("www.").unwrap_or(&d);
        for property in app.cache.properties_for_domain(d).map_err(meta_err)? {
            let mut e = event.clone();
            e["tracking_id"] = json!(property);
            properties.push(property);
            events.push(e);
        }
    }
    let matched = !events.is_empty();
    // The `d` parameter named each property by one of its domains; like Plausible, the
    // page's own host is not checked (one event may go to several).
    let sender = Sender {
        grant: None,
        peer,
        headers,
        header_ua: true,
        check_url_host: false,
    };
    let (records, bad) = admit_all(app, &events, &sender).map_err(IntoResponse::into_response)?;
    let problems: Vec<String> = bad
        .iter()
        .map(|(i, r)| format!("{}: {} ({})", properties[*i], r.message, r.code))
        .collect();
    if !matched {
        app.metrics.reject("unknown_domain");
        return Err(plausible_error(
            StatusCode::NOT_FOUND,
            "domain",
            "no site has this domain",
        ));
    }
    if records.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": {"event": problems}})),
        )
            .into_response());
    }
    append_durable(app, records)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((StatusCode::ACCEPTED, "ok").into_response())
}
