//! Dashboard logins over HTTP (`footfall_auth`): `POST /api/auth/login`,
//! `POST /api/auth/logout`, `GET /api/auth/me`. A session is the `ff_session` cookie
//! (HttpOnly, SameSite=Strict, Secure when served over TLS); reads with it go through the
//! same endpoints and query engine as API keys (`/api/v2/query`, realtime), limited to
//! the properties of the user's accounts — any other property is "not found", so its
//! existence is not revealed. Every state-changing call with a session must send the
//! session's CSRF token in `X-CSRF-Token`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};

use crate::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use footfall_auth::{check_csrf, AuthError};
use footfall_meta::Session;
use serde_json::json;

use crate::{internal, read_body, ApiError, AppRef, AppState};

/// The session cookie's name.
pub const COOKIE: &str = "ff_session";

fn auth(app: &AppState) -> Result<&footfall_auth::Auth, ApiError> {
    app.auth
        .as_deref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no dashboard here"))
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::BadCredentials => ApiError::unauthorized(e.to_string()),
        AuthError::Throttled(d) => {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_logins",
                e.to_string(),
            );
            r.retry_after = Some(d.as_secs().max(1) as u32);
            r
        }
        AuthError::Invalid(m) => ApiError::bad_request("invalid", m),
        AuthError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"),
        AuthError::LogInFirst(_) => {
            ApiError::new(StatusCode::CONFLICT, "log_in_first", e.to_string())
        }
        AuthError::Store(footfall_meta::Error::Invalid(m)) => ApiError::bad_request("invalid", m),
        AuthError::Store(e) => internal(e),
    }
}

/// The session cookie's value, if the request has one.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

/// The open session the request's cookie names, if any (none without a dashboard).
pub(crate) fn session_of(app: &AppState, headers: &HeaderMap) -> Result<Option<Session>, ApiError> {
    let (Some(auth), Some(token)) = (app.auth.as_deref(), cookie_token(headers)) else {
        return Ok(None);
    };
    auth.session(token, app.clock.now_millis())
        .map_err(auth_error)
}

/// Whether a session may read a property: yes for the properties of its accounts;
/// otherwise "not found", as for a property that does not exist.
pub(crate) fn authorise_session_read(
    app: &AppState,
    s: &Session,
    site_id: &str,
) -> Result<(), ApiError> {
    match auth(app)?.role_for_property(&s.user, site_id) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such site_id",
        )),
        Err(e) => Err(auth_error(e)),
    }
}

/// The session of a state-changing call, its CSRF token checked.
fn changing_session(app: &AppState, headers: &HeaderMap) -> Result<(Session, String), ApiError> {
    let token = cookie_token(headers)
        .ok_or_else(|| ApiError::unauthorized("not logged in"))?
        .to_string();
    let s = session_of(app, headers)?.ok_or_else(|| ApiError::unauthorized("not logged in"))?;
    csrf_sent(&s, headers)?;
    Ok((s, token))
}

/// 403 unless the request echoes the session's CSRF token in `X-CSRF-Token`.
fn csrf_sent(s: &Session, headers: &HeaderMap) -> Result<(), ApiError> {
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !check_csrf(s, sent) {
        return Err(ApiError::forbidden(
            "missing or wrong `X-CSRF-Token` header",
        ));
    }
    Ok(())
}

fn set_cookie(app: &AppState, headers: &HeaderMap, value: &str, max_age_s: i64) -> HeaderValue {
    // Secure when configured, or when the gateway says the client came over TLS.
    let tls = app.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("a token is a valid header value")
}

#[derive(serde::Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
}

/// `POST /api/auth/login` `{"email", "password"}`: 200 with the user, the CSRF token
/// and the accounts, and the session cookie; 401 for a wrong address or password; 429
/// with Retry-After once throttled.
pub(crate) async fn login(
    State(app): State<AppRef>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 16 * 1024).await?;
    let req: LoginRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid",
            format!("expected {{\"email\", \"password\"}}: {e}"),
        )
    })?;
    let client = footfall_collector::client_ip(peer.ip(), &headers, &app.rules.trusted_proxies);
    let now = app.clock.now_millis();
    let a = app.clone();
    // Hashing takes tens of milliseconds: off the event loop.
    let login = tokio::task::spawn_blocking(move || {
        auth(&a)?
            .login(&req.email, &req.password, &client.to_string(), now)
            .map_err(auth_error)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))??;
    let memberships = auth(&app)?.memberships(&login.user).map_err(auth_error)?;
    let max_age = (login.expires_at - now) / 1000;
    let mut r = Json(json!({
        "user": login.user,
        "csrf_token": login.csrf,
        "expires_at": login.expires_at,
        "accounts": accounts_json(&app, memberships)?,
    }))
    .into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&app, &headers, &login.token, max_age),
    );
    Ok(r)
}

/// `POST /api/auth/logout` (CSRF-checked): ends the session, clears the cookie.
pub(crate) async fn logout(
    State(app): State<AppRef>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, token) = changing_session(&app, &headers)?;
    auth(&app)?.logout(&token).map_err(auth_error)?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&app, &headers, "", 0));
    Ok(r)
}

/// `GET /api/auth/me`: the session's user, CSRF token and accounts with their
/// properties (names and time zones); 401 without a session.
pub(crate) async fn me(
    State(app): State<AppRef>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = session_of(&app, &headers)?.ok_or_else(|| ApiError::unauthorized("not logged in"))?;
    let memberships = auth(&app)?.memberships(&s.user).map_err(auth_error)?;
    Ok(Json(json!({
        "user": s.user,
        "csrf_token": s.csrf,
        "expires_at": s.expires_at,
        "accounts": accounts_json(&app, memberships)?,
    }))
    .into_response())
}

fn accounts_json(
    app: &AppState,
    memberships: Vec<footfall_auth::Membership>,
) -> Result<serde_json::Value, ApiError> {
    let mut out = Vec::new();
    for m in memberships {
        let mut props = Vec::new();
        for id in &m.properties {
            if let Some(p) = app.cache.property(id).map_err(internal)? {
                props.push(
                    json!({"tracking_id": p.tracking_id, "name": p.name, "timezone": p.timezone}),
                );
            }
        }
        out.push(json!({"id": m.account.id, "name": m.account.name, "role": m.role, "properties": props}));
    }
    Ok(json!(out))
}

/// The session of a call about one property, with at least `least` role there: 401
/// without a session, 404 for a property not among the user's (as for a missing one),
/// 403 below the role, and for a state-changing call without the CSRF token.
fn session_for(
    app: &AppState,
    headers: &HeaderMap,
    property: &str,
    least: footfall_meta::Role,
    changing: bool,
) -> Result<Session, ApiError> {
    let s = if changing {
        changing_session(app, headers)?.0
    } else {
        session_of(app, headers)?.ok_or_else(|| ApiError::unauthorized("not logged in"))?
    };
    match auth(app)?
        .role_for_property(&s.user, property)
        .map_err(auth_error)?
    {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such property",
        )),
        Some(r) if r < least => Err(ApiError::forbidden(format!(
            "this needs the {} role",
            least.as_str()
        ))),
        Some(_) => Ok(s),
    }
}

/// `GET /api/ui/properties/{id}/keys` (admins): the property's API keys, ids and
/// scopes only.
pub(crate) async fn list_keys(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, false)?;
    let keys = app.cache.store().keys(&property).map_err(internal)?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

/// `GET /api/ui/properties/{id}/goals` (any role): the property's goals.
pub(crate) async fn list_goals(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(
        &app,
        &headers,
        &property,
        footfall_meta::Role::Viewer,
        false,
    )?;
    let p = app
        .cache
        .store()
        .property(&property)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such property"))?;
    Ok(Json(json!({ "goals": p.goals })).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Goals {
    goals: Vec<footfall_meta::Goal>,
}

/// `PUT /api/ui/properties/{id}/goals` `{"goals": [...]}` (admins, CSRF): replaces the
/// property's goals; an invalid goal is a 400 naming it.
pub(crate) async fn set_goals(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, true)?;
    let bytes = read_body(body, 256 * 1024).await?;
    let req: Goals = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid", format!("expected {{\"goals\": [...]}}: {e}"))
    })?;
    let p = app
        .cache
        .store()
        .update_property(
            &property,
            footfall_meta::PropertyChanges {
                goals: Some(&req.goals),
                ..Default::default()
            },
        )
        .map_err(|e| match e {
            footfall_meta::Error::Invalid(m) => ApiError::bad_request("invalid", m),
            other => internal(other),
        })?;
    app.cache.invalidate();
    Ok(Json(json!({ "goals": p.goals })).into_response())
}

#[derive(serde::Deserialize)]
struct NewKey {
    scope: String,
}

/// `POST /api/ui/properties/{id}/keys` `{"scope": "read"|"write"}` (admins, CSRF): a
/// new key, shown this once.
pub(crate) async fn create_key(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, true)?;
    let bytes = read_body(body, 4096).await?;
    let req: NewKey = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid", format!("expected {{\"scope\"}}: {e}")))?;
    let scope = match footfall_meta::Scope::parse(&req.scope) {
        Some(s @ (footfall_meta::Scope::Read | footfall_meta::Scope::Write)) => s,
        _ => return Err(ApiError::bad_request("invalid", "scope is read or write")),
    };
    let (key, grant) = app
        .cache
        .store()
        .create_key(&property, scope)
        .map_err(internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"key": key, "key_id": grant.key_id, "scope": grant.scope, "property": grant.property})),
    )
        .into_response())
}

/// `DELETE /api/ui/properties/{id}/keys/{key_id}` (admins, CSRF): the key stops
/// working (at once here; on other nodes within their metadata refresh).
pub(crate) async fn revoke_key(
    State(app): State<AppRef>,
    Path((property, key_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, true)?;
    let found = app
        .cache
        .store()
        .revoke_key(&property, &key_id)
        .map_err(internal)?;
    app.cache.invalidate();
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such key",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The share token a request carries (`X-Footfall-Share`), if any.
pub(crate) fn share_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-footfall-share")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
}

/// Whether a share token opens `site_id`: reads only, that property only; anything else
/// is "not found".
pub(crate) fn authorise_share_read(
    app: &AppState,
    token: &str,
    site_id: &str,
) -> Result<(), ApiError> {
    match auth(app)?.shared_property(token).map_err(auth_error)? {
        Some(p) if p == site_id => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such site_id",
        )),
    }
}

/// `GET /api/share/me` with `X-Footfall-Share`: the shared property (id, name, zone).
pub(crate) async fn share_me(
    State(app): State<AppRef>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such link");
    let token = share_token(&headers).ok_or_else(not_found)?;
    let id = auth(&app)?
        .shared_property(token)
        .map_err(auth_error)?
        .ok_or_else(not_found)?;
    let p = app
        .cache
        .property(&id)
        .map_err(internal)?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({"property": {"tracking_id": p.tracking_id, "name": p.name, "timezone": p.timezone}}),
    )
    .into_response())
}

/// `GET /api/ui/properties/{id}/shares` (admins): the property's read-only links.
pub(crate) async fn list_shares(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, false)?;
    let links = auth(&app)?.store().shares(&property).map_err(internal)?;
    Ok(Json(json!({ "shares": links })).into_response())
}

/// `POST /api/ui/properties/{id}/shares` (admins, CSRF): a new read-only link, its URL
/// shown this once.
pub(crate) async fn create_share(
    State(app): State<AppRef>,
    Path(property): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, true)?;
    let (token, link) = auth(&app)?.create_share(&property).map_err(auth_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": link.id, "path": format!("/share/{token}"), "created_at": link.created_at})),
    )
        .into_response())
}

/// `DELETE /api/ui/properties/{id}/shares/{share_id}` (admins, CSRF): the link stops
/// opening anything.
pub(crate) async fn revoke_share(
    State(app): State<AppRef>,
    Path((property, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    session_for(&app, &headers, &property, footfall_meta::Role::Admin, true)?;
    if !auth(&app)?
        .store()
        .revoke_share(&property, &id)
        .map_err(internal)?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such link",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize)]
struct NewInvite {
    email: String,
    role: String,
}

/// `GET /api/ui/accounts/{account}/invites` (owners): the account's pending invitations.
pub(crate) async fn list_invites(
    State(app): State<AppRef>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = session_of(&app, &headers)?.ok_or_else(|| ApiError::unauthorized("not logged in"))?;
    let invites = auth(&app)?.invites(&s.user, &account).map_err(auth_error)?;
    Ok(Json(json!({ "invites": invites })).into_response())
}

/// `POST /api/ui/accounts/{account}/invites` `{"email", "role"}` (owners, CSRF): an
/// invitation link, shown this once (Footfall sends no mail: the owner passes it on).
pub(crate) async fn create_invite(
    State(app): State<AppRef>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (s, _) = changing_session(&app, &headers)?;
    let bytes = read_body(body, 4096).await?;
    let req: NewInvite = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid", format!("expected {{\"email\", \"role\"}}: {e}"))
    })?;
    let role = footfall_meta::Role::parse(&req.role)
        .map_err(|e| ApiError::bad_request("invalid", e.to_string()))?;
    let (token, invite) = auth(&app)?
        .create_invite(&s.user, &account, &req.email, role, app.clock.now_millis())
        .map_err(auth_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"invite": invite, "path": format!("/invite/{token}")})),
    )
        .into_response())
}

/// `DELETE /api/ui/accounts/{account}/invites/{invite_id}` (owners, CSRF).
pub(crate) async fn revoke_invite(
    State(app): State<AppRef>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (s, _) = changing_session(&app, &headers)?;
    auth(&app)?
        .revoke_invite(&s.user, &account, &id)
        .map_err(auth_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/invites/{token}`: what an invitation offers — the account's name, the
/// address and role, and whether that address already has a login; 404 once used,
/// revoked or expired.
pub(crate) async fn show_invite(
    State(app): State<AppRef>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (invite, account, exists) = auth(&app)?
        .invite(&token, app.clock.now_millis())
        .map_err(auth_error)?;
    Ok(Json(json!({
        "account": {"name": account.name},
        "email": invite.email,
        "role": invite.role,
        "expires_at": invite.expires_at,
        "has_login": exists,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
struct AcceptInvite {
    #[serde(default)]
    password: Option<String>,
}

/// `POST /api/invites/{token}/accept`: with a session (CSRF-checked) of the invited
/// address, joins its account; without one, for an address with no login,
/// `{"password"}` creates the user, joins, and logs in (sets the cookie). 409 when the
/// address already has a login and the caller is not logged in as it.
pub(crate) async fn accept_invite(
    State(app): State<AppRef>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, 4096).await?;
    let req: AcceptInvite = if bytes.is_empty() {
        AcceptInvite { password: None }
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request("invalid", format!("expected {{\"password\"}}: {e}"))
        })?
    };
    // An open session must send its CSRF token; an expired one counts as none.
    let session = session_of(&app, &headers)?;
    if let Some(s) = &session {
        csrf_sent(s, &headers)?;
    }
    let now = app.clock.now_millis();
    let a = app.clone();
    // A new password is hashed: off the event loop.
    let (user, login) = tokio::task::spawn_blocking(move || {
        auth(&a)?
            .accept_invite(
                &token,
                session.as_ref().map(|s| &s.user),
                req.password.as_deref(),
                now,
            )
            .map_err(auth_error)
    })
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))??;
    let memberships = auth(&app)?.memberships(&user).map_err(auth_error)?;
    let mut body = json!({"user": user, "accounts": accounts_json(&app, memberships)?});
    let mut r;
    if let Some(login) = login {
        body["csrf_token"] = json!(login.csrf);
        body["expires_at"] = json!(login.expires_at);
        r = Json(body).into_response();
        r.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(
                &app,
                &headers,
                &login.token,
                (login.expires_at - now) / 1000,
            ),
        );
    } else {
        r = Json(body).into_response();
    }
    Ok(r)
}

/// `GET /share/{token}` and `GET /invite/{token}`: the dashboard — read-only for the
/// linked property, or showing the invitation (the page reads the token from its
/// address).
pub(crate) async fn shared_page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The dashboard's page, script and style sheet, embedded in the binary (written by
/// hand, no build step, nothing from a CDN).
const PAGE: &str = include_str!("../assets/dashboard.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Only this origin's script and styles; never framed (clickjacking).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard.
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
