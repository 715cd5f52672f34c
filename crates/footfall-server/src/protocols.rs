//! The HTTP side of the protocols merchants' existing clients speak: GA4 Measurement
//! Protocol (`/mp/collect`, `/debug/mp/collect`), gtag browser hits (`/g/collect`),
//! Segment's HTTP Tracking API (`/v1/*`) and Plausible's Events API (`/api/event`).
//! Reading each protocol into typed events is `footfall_collector`'s; here requests are
//! read, credentials looked up, events admitted ([`crate::admit`]) and made durable like
//! `/api/v1/events`' ones, and each protocol's own answers given.

use std::collections::HashSet;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};

use crate::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use footfall_collector::{ga4, gtag, plausible, query_map, segment};
use footfall_meta::Scope;
use serde_json::{json, Value};

use crate::{
    admit, all_limited, append_durable, check_accepting, internal, no_valid_events, read_body,
    rejection_json, ApiError, AppRef, AppState, Sender,
};

pub use footfall_collector::segment::MessageIds;

// ---------------------------------------------------------------------------------------
// GA4 Measurement Protocol

/// `POST /mp/collect`: like GA4, answers 204 whatever the payload says (problems are
/// counted in `/metrics` and explained by `/debug/mp/collect`); valid events are durable
/// before the answer, and a storage failure is a 503.
pub(crate) async fn ga4_collect(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let q = query_map(q.as_deref().unwrap_or(""));
    let body = read_body(body, ga4::MAX_BODY * 4).await?;
    let (msgs, grant, events) =
        ga4::translate(&app.cache, &q, &body, app.clock.now_millis()).map_err(internal)?;
    for _ in &msgs {
        app.metrics.reject("ga4_invalid");
    }
    if let Some(g) = &grant {
        let s = Sender {
            grant: Some(g),
            peer,
            headers: &headers,
            header_ua: false,
            check_url_host: true,
        };
        let (records, bad) = admit(&app, events.into_iter().enumerate().collect(), &s)?;
        // GA4 answers 2xx whatever the payload says, but an event refused for the
        // property's rate or quota is not kept: the sender hears so, to retry.
        if records.is_empty() {
            if let Some(wait) = all_limited(&bad) {
                return Err(no_valid_events(
                    bad.iter().map(|(i, r)| rejection_json(*i, r)).collect(),
                )
                .retry_in(wait));
            }
        }
        if !records.is_empty() {
            append_durable(&app, records).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /debug/mp/collect`: the validation messages; nothing is stored (as in GA4).
pub(crate) async fn ga4_debug(
    State(app): State<AppRef>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let q = query_map(q.as_deref().unwrap_or(""));
    let body = read_body(body, ga4::MAX_BODY * 4).await?;
    let (msgs, _, _) =
        ga4::translate(&app.cache, &q, &body, app.clock.now_millis()).map_err(internal)?;
    Ok(Json(json!({"validationMessages": msgs})).into_response())
}

// ---------------------------------------------------------------------------------------
// gtag browser hits

/// `GET|POST /g/collect`: the query string is one hit; a POST body may hold several,
/// one per line, each line's parameters overriding the query string's. Answers 204 once
/// durable; a request with no valid hit gets 400 (404 for unknown tracking ids) with the
/// native error body.
pub(crate) async fn gtag_collect(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let body = read_body(body, app.rules.limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_utf8", "body is not UTF-8"))?;
    let hits = gtag::hits(q.as_deref().unwrap_or(""), text);
    let max = app.rules.limits.max_events;
    if hits.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} hits; at most {max}", hits.len()),
        ));
    }
    let s = Sender {
        grant: None,
        peer,
        headers: &headers,
        header_ua: true,
        check_url_host: true,
    };
    let events = hits.iter().map(gtag::event).enumerate().collect();
    let (records, bad) = admit(&app, events, &s)?;
    if records.is_empty() {
        return Err(no_valid_events(
            bad.iter().map(|(i, r)| rejection_json(*i, r)).collect(),
        ));
    }
    append_durable(&app, records).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------
// Segment HTTP Tracking API

fn segment_error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, "segment_error", msg)
}

/// `POST /v1/{batch,track,page,screen,identify,group,alias}` and the short forms.
/// Answers `200 {"success": true}` once the events are durable; 400 for malformed JSON,
/// bad gzip or size limits (Segment's documented answers); 401 for a missing or unknown
/// write key (Segment would answer 200; Footfall never acknowledges what it did not keep).
pub(crate) async fn segment(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_accepting(&app)?;
    let kind = segment::kind(&path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Segment endpoint /v1/{path}"),
        )
    })?;
    let raw = read_body(body, segment::MAX_BATCH * 2).await?;
    let unzipped =
        segment::maybe_gunzip(&raw).map_err(|e| segment_error(StatusCode::BAD_REQUEST, e))?;
    let body = unzipped.as_deref().unwrap_or(&raw);
    let limit = if kind == "batch" {
        segment::MAX_BATCH
    } else {
        segment::MAX_MESSAGE
    };
    if body.len() > limit {
        return Err(segment_error(
            StatusCode::BAD_REQUEST,
            format!("payload is {} bytes; the limit is {limit}", body.len()),
        ));
    }
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| segment_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
    if !root.is_object() {
        return Err(segment_error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    let key = segment::write_key(&headers, &root).ok_or_else(|| {
        ApiError::unauthorized("missing write key (HTTP Basic user name or `writeKey`)")
    })?;
    let grant = match app.cache.key(&key).map_err(internal)? {
        Some(g) if g.scope == Scope::Write => g,
        Some(_) => return Err(ApiError::forbidden("this key cannot write")),
        None => return Err(ApiError::unauthorized("unknown write key")),
    };
    let received = app.clock.now_millis();
    let sent_at = segment::time(root.get("sentAt"));
    let messages: Vec<(&Value, &str)> = if kind == "batch" {
        root.get("batch")
            .and_then(Value::as_array)
            .ok_or_else(|| segment_error(StatusCode::BAD_REQUEST, "`batch` must be an array"))?
            .iter()
            .map(|m| (m, m.get("type").and_then(Value::as_str).unwrap_or("")))
            .collect()
    } else {
        vec![(&root, kind)]
    };
    let mut too_large = Vec::new();
    let mut events = Vec::new();
    // Per message taken: its messageId, remembered once it is kept.
    let mut ids: Vec<(usize, &str)> = Vec::new();
    for (i, (m, t)) in messages.iter().enumerate() {
        let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(0);
        if size > segment::MAX_MESSAGE {
            app.metrics.reject("message_too_large");
            too_large.push(json!({"index": i, "code": "message_too_large", "message": format!("message is {size} bytes; the limit is {}", segment::MAX_MESSAGE)}));
            continue;
        }
        let mid = m.get("messageId").and_then(Value::as_str);
        if let Some(id) = mid {
            if app.message_ids.seen(&grant.property, id) || ids.iter().any(|(_, x)| *x == id) {
                continue; // a retry of a message already kept
            }
        }
        match segment::event(m, t, &grant.property, sent_at, received) {
            Ok(None) => {}
            Ok(Some(e)) => {
                ids.push((i, mid.unwrap_or("")));
                events.push((i, Ok(e)));
            }
            Err(r) => events.push((i, Err(r))),
        }
    }
    let s = Sender {
        grant: Some(&grant),
        peer,
        headers: &headers,
        header_ua: false,
        check_url_host: true,
    };
    let (records, bad) = admit(&app, events, &s)?;
    let bad_idx: HashSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    let mut rejected = too_large;
    rejected.extend(bad.iter().map(|(i, r)| rejection_json(*i, r)));
    if records.is_empty() && !rejected.is_empty() {
        if let Some(wait) = all_limited(&bad) {
            return Err(segment_error(
                StatusCode::TOO_MANY_REQUESTS,
                "this source's property is over its rate or daily quota",
            )
            .with("rejected", json!(rejected))
            .retry_in(wait));
        }
        return Err(segment_error(StatusCode::BAD_REQUEST, "no valid message")
            .with("rejected", json!(rejected)));
    }
    if !records.is_empty() {
        append_durable(&app, records).await?;
    }
    for (i, id) in ids {
        if !id.is_empty() && !bad_idx.contains(&i) {
            app.message_ids.remember(&grant.property, id);
        }
    }
    let mut out = json!({"success": true});
    if !rejected.is_empty() {
        out["rejected"] = json!(rejected);
    }
    Ok(Json(out).into_response())
}

// ---------------------------------------------------------------------------------------
// Plausible Events API

fn plausible_error(status: StatusCode, field: &str, msg: &str) -> Response {
    (status, Json(json!({"errors": {field: [msg]}}))).into_response()
}

/// `POST /api/event` (see `footfall_collector::plausible`). Answers 202 `ok` once
/// durable, else Plausible's `{"errors": {...}}` shape.
pub(crate) async fn ingest_plausible(
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
    check_accepting(app).map_err(IntoResponse::into_response)?;
    let bytes = read_body(body, app.rules.limits.max_body_bytes)
        .await
        .map_err(IntoResponse::into_response)?;
    let req = plausible::parse(&bytes)
        .map_err(|(field, msg)| plausible_error(StatusCode::BAD_REQUEST, field, &msg))?;
    let meta_err = |e: footfall_meta::Error| internal(e).into_response();
    let (mut properties, mut events) = (Vec::new(), Vec::new());
    for d in &req.domains {
        for property in app.cache.properties_for_domain(d).map_err(meta_err)? {
            let e = req.event.clone().map(|mut e| {
                e.tracking_id = property.clone();
                e
            });
            events.push((properties.len(), e));
            properties.push(property);
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
    let (records, bad) = admit(app, events, &sender).map_err(IntoResponse::into_response)?;
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
        if let Some(wait) = all_limited(&bad) {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"errors": {"event": problems}})),
            )
                .into_response();
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, wait.into());
            return Err(r);
        }
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
