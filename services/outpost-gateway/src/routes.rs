//! The gateway's own API, at the root of the TLS listener:
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v3/auth/login` | anyone | `{username, password}` → access token (JWT), refresh token |
//! | `POST /api/v3/auth/refresh` | anyone | `{refreshToken}` → new pair; the old refresh token is used up |
//! | `POST /api/v3/auth/logout` | any role | `{refreshToken}` → revoked |
//! | `GET /api/v3/auth/whoami` | any role | the caller's identity and role |
//! | `PUT /api/v3/auth/password` | any role | `{password}`: the caller's own (users only) |
//! | `GET/POST /api/v3/auth/user`, `DELETE /api/v3/auth/user/{name}`, `PUT /api/v3/auth/user/{name}/password` | admin | users |
//! | `GET/POST /api/v3/auth/apikey`, `DELETE /api/v3/auth/apikey/{id}` | admin | API keys |
//! | `GET /api/v3/overview/device/{name}` | viewer | device, profile, latest readings and commands in one answer |
//! | `GET /api/v3/ca.pem` | anyone | the node CA certificate |
//! | `GET /api/v3/ping`, `/health` | anyone | liveness and health |
//! | `GET /api/v3/version`, `/config`, `/metrics` | viewer, admin, operator | as every service |
//! | `GET /ui/...` | anyone | static files of the web dashboard (`gateway.static_dir`) |
//!
//! Every other path is proxied (see [`crate::proxy`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use outpost_kit::error::{Json, Path};
use outpost_kit::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admission::too_many;
use crate::app::App;
use crate::token::Claims;
use crate::users::{Identity, Role, UserError};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => ApiError::bad_request(m),
            UserError::Exists(m) => ApiError::conflict(format!("{m} already exists")),
            UserError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
            UserError::BadCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid credentials")
            }
            UserError::Conflict(m) => ApiError::conflict(m),
            UserError::Storage(e) => ApiError::internal(e),
        }
    }
}

pub fn router(app: Arc<App>, info: outpost_kit::routes::ServiceInfo, max_body: usize) -> Router {
    let own = Router::new()
        .route("/api/v3/auth/login", post(login))
        .route("/api/v3/auth/refresh", post(refresh))
        .route("/api/v3/auth/logout", post(logout))
        .route("/api/v3/auth/whoami", get(whoami))
        .route("/api/v3/auth/password", put(own_password))
        .route("/api/v3/auth/user", get(list_users).post(add_user))
        .route("/api/v3/auth/user/{name}", delete(remove_user))
        .route("/api/v3/auth/user/{name}/password", put(set_password))
        .route("/api/v3/auth/apikey", get(list_keys).post(create_key))
        .route("/api/v3/auth/apikey/{id}", delete(revoke_key))
        .route("/api/v3/overview/device/{name}", get(overview))
        .route("/api/v3/ca.pem", get(ca_pem))
        .route("/api/v3/openapi", get(openapi_index))
        .route("/api/v3/openapi/{document}", get(openapi_document))
        .route("/", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route("/api/v3/stream/device/{name}", get(crate::live::stream))
        .route("/api/v3/stream/node", get(crate::live::node_stream))
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(static_file))
        .route("/ui/{*path}", get(static_file))
        .fallback(crate::proxy::handle)
        .with_state(Arc::clone(&app))
        .merge(outpost_kit::routes::router(info));
    own.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&app),
        crate::admission::gate,
    ))
    .layer(axum::extract::DefaultBodyLimit::max(max_body))
    .layer(axum::middleware::from_fn(
        outpost_kit::refused::finish_refused_bodies,
    ))
    .layer(axum::middleware::from_fn_with_state(
        Arc::clone(&app),
        crate::observe::observe,
    ))
    // Whatever refuses a request (a route's method, the body limit, a proxied service)
    // answers with EdgeX's error body.
    .layer(axum::middleware::from_fn(outpost_kit::error::edgex_errors))
    .layer(axum::middleware::from_fn(outpost_kit::request_id::layer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    api_version: &'static str,
    status_code: u16,
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
    refresh_expires_in: u64,
    username: String,
    role: Role,
}

/// Tokens for `user`, whose credential was checked when its `valid_after` was `seen`.
async fn tokens(app: &App, user: &str, role: Role, seen: Option<i64>) -> ApiResult<TokenResponse> {
    // A password changed since the credential was checked ends what it would have given.
    let first = app.users.valid_after(user);
    if first != seen {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the password changed meanwhile: log in again",
        ));
    }
    // Tokens carry whole seconds, and a password changed in this second ends this second's
    // tokens: issued from the next second, or they would be refused at once.
    let first = first.unwrap_or(0);
    for _ in 0..40 {
        if crate::users::now_s() >= first {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = crate::users::now_s();
    let claims = Claims {
        sub: user.to_string(),
        role,
        iat: now,
        exp: now + app.cfg.access_token_ttl_s as i64,
        jti: crate::users::random_token(12),
    };
    let refresh = app
        .users
        .issue_refresh(user, app.cfg.refresh_token_ttl_s)
        .await?;
    Ok(TokenResponse {
        api_version: "v3",
        status_code: 200,
        access_token: app.signer.sign(&claims),
        token_type: "Bearer",
        expires_in: app.cfg.access_token_ttl_s,
        refresh_token: refresh,
        refresh_expires_in: app.cfg.refresh_token_ttl_s,
        username: user.to_string(),
        role,
    })
}

/// Logs a user in. Failed attempts are limited per account and address, per address, and
/// per account from addresses it never logged in from: a stranger guessing an account's
/// password exhausts only their own allowances, so the owner, from an address they logged
/// in from before, can still log in (and tokens already issued keep working).
async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> Response {
    let ip = peer.ip();
    let user_key = format!("user:{}", req.username);
    let pair_key = format!("user:{}@{ip}", req.username);
    let addr_key = format!("addr:{ip}");
    let known = app.users.known_address(&req.username, ip);
    // Failed attempts spend tokens; when a bucket that applies is empty, logins wait.
    let mut limits = vec![
        (&app.login_by_user_addr, &pair_key),
        (&app.login_by_addr, &addr_key),
    ];
    if !known {
        limits.push((&app.login_by_user, &user_key));
    }
    for (l, k) in &limits {
        if let Err(wait) = l.check(k) {
            metrics::counter!(app.m.rate_limited, "limit" => "login").increment(1);
            return too_many(wait, "too many failed logins");
        }
    }
    let seen = app.users.valid_after(&req.username);
    match app.users.login(&req.username, &req.password).await {
        Ok(role) => match tokens(&app, &req.username, role, seen).await {
            Ok(t) => {
                tracing::info!(user = %req.username, "logged in");
                // Remembered across restarts; a failure to write costs only the next
                // login's allowance from this address, so it is logged, not refused.
                if let Err(e) = app.users.remember_address(&req.username, ip).await {
                    tracing::warn!(user = %req.username, error = %e, "cannot remember the login's address");
                }
                axum::Json(t).into_response()
            }
            Err(e) => e.into_response(),
        },
        Err(UserError::BadCredentials) => {
            for (l, k) in &limits {
                let _ = l.take(k);
            }
            metrics::counter!(app.m.auth_failures, "reason" => "login").increment(1);
            tracing::warn!(user = %req.username, peer = %ip, "failed login");
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid user name or password").into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    State(app): State<Arc<App>>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<axum::Json<TokenResponse>> {
    let (user, role) = app
        .users
        .use_refresh(&req.refresh_token)
        .await
        .map_err(|e| match e {
            UserError::BadCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid, expired or already used refresh token",
            ),
            e => e.into(),
        })?;
    let seen = app.users.valid_after(&user);
    Ok(axum::Json(tokens(&app, &user, role, seen).await?))
}

/// Ends the session: the refresh token given, and the access token the request carries
/// (refused from now on, though it has not expired).
async fn logout(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    app.users.revoke_refresh(&req.refresh_token).await?;
    if let Some(claims) =
        crate::auth::bearer(&headers).and_then(|t| app.signer.verify(t, crate::users::now_s()).ok())
    {
        app.users.revoke_access(&claims.jti, claims.exp).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn whoami(Extension(id): Extension<Identity>) -> axum::Json<Value> {
    axum::Json(json!({
        "apiVersion": "v3", "statusCode": 200,
        "id": &*id.id, "name": &*id.name, "role": id.role,
    }))
}

#[derive(Deserialize)]
struct PasswordRequest {
    password: String,
}

async fn own_password(
    State(app): State<Arc<App>>,
    Extension(id): Extension<Identity>,
    Json(req): Json<PasswordRequest>,
) -> ApiResult<StatusCode> {
    if !id.id.starts_with("user:") {
        return Err(ApiError::bad_request("an API key has no password"));
    }
    app.users.set_password(&id.name, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Json(req): Json<PasswordRequest>,
) -> ApiResult<StatusCode> {
    app.users.set_password(&name, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let users = app.users.list();
    axum::Json(json!({
        "apiVersion": "v3", "statusCode": 200, "totalCount": users.len(), "users": users,
    }))
}

#[derive(Deserialize)]
struct AddUser {
    username: String,
    password: String,
    role: Role,
}

async fn add_user(
    State(app): State<Arc<App>>,
    Json(req): Json<AddUser>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    app.users
        .add(&req.username, &req.password, req.role)
        .await?;
    tracing::info!(user = %req.username, role = req.role.as_str(), "user added");
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({"apiVersion": "v3", "statusCode": 201, "username": req.username, "role": req.role}),
        ),
    ))
}

async fn remove_user(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.users.remove(&name).await?;
    tracing::info!(user = %name, "user removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_keys(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let keys = app.users.list_keys();
    axum::Json(json!({
        "apiVersion": "v3", "statusCode": 200, "totalCount": keys.len(), "apiKeys": keys,
    }))
}

#[derive(Deserialize)]
struct CreateKey {
    name: String,
    role: Role,
}

async fn create_key(
    State(app): State<Arc<App>>,
    Extension(id): Extension<Identity>,
    Json(req): Json<CreateKey>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let owner = id.id.strip_prefix("user:").unwrap_or(&id.id);
    let (info, key) = app.users.create_key(&req.name, req.role, owner).await?;
    tracing::info!(key = %info.id, name = %info.name, role = info.role.as_str(), "API key created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "apiVersion": "v3", "statusCode": 201, "id": info.id, "name": info.name,
            "role": info.role, "key": key,
        })),
    ))
}

async fn revoke_key(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app.users.revoke_key(&id).await?;
    tracing::info!(key = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi_index() -> axum::Json<Value> {
    let docs: Vec<Value> = crate::openapi::DOCS
        .iter()
        .map(|d| json!({"name": d.name, "services": d.services, "url": format!("/api/v3/openapi/{}", d.name)}))
        .collect();
    axum::Json(json!({"apiVersion": "v3", "statusCode": 200, "documents": docs}))
}

async fn openapi_document(Path(name): Path<String>) -> ApiResult<Response> {
    let doc = crate::openapi::find(&name)
        .ok_or_else(|| ApiError::not_found(format!("no API document {name}")))?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/yaml")],
        doc.served(),
    )
        .into_response())
}

async fn ca_pem(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let pem = tokio::fs::read(&app.ca_pem)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the CA certificate: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-pem-file"),
        )],
        pem,
    )
        .into_response())
}

/// The device overview: device, profile, latest readings and commands, fetched in
/// parallel. A part that fails is `null` and explained under `errors`; the answer is 200 as
/// long as the device itself was found.
async fn overview(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<Response> {
    use http::Method;
    let c = &app.metadata;
    let device_path = ["api", "v3", "device", "name", name.as_str()];
    let readings_path = ["api", "v3", "reading", "device", "name", name.as_str()];
    let device = c.call_raw("core-metadata", Method::GET, &device_path, &[], None);
    let readings = c.call_raw(
        "core-data",
        Method::GET,
        &readings_path,
        &[("limit", "20")],
        None,
    );
    let commands = c.call_raw("core-command", Method::GET, &device_path, &[], None);
    let (device, readings, commands) = tokio::join!(device, readings, commands);
    let device: Value = match device {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.get("device").cloned())
            .ok_or_else(|| ApiError::internal("core-metadata answered an unreadable device"))?,
        Err(e) => return Err(e.to_api_error()),
    };
    let mut errors = serde_json::Map::new();
    let profile_name = device
        .get("profileName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let profile = match c
        .call_raw(
            "core-metadata",
            Method::GET,
            &["api", "v3", "deviceprofile", "name", &profile_name],
            &[],
            None,
        )
        .await
    {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.get("profile").cloned()),
        Err(e) => {
            errors.insert("profile".into(), Value::String(e.to_string()));
            None
        }
    };
    let readings = match readings {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.get("readings").cloned()),
        Err(e) => {
            errors.insert("readings".into(), Value::String(e.to_string()));
            None
        }
    };
    let commands = match commands {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.pointer("/deviceCoreCommand/coreCommands").cloned()),
        Err(e) => {
            errors.insert("commands".into(), Value::String(e.to_string()));
            None
        }
    };
    let partial = !errors.is_empty();
    let mut resp = axum::Json(json!({
        "apiVersion": "v3", "statusCode": 200,
        "device": device, "profile": profile, "readings": readings, "commands": commands,
        "partial": partial, "errors": errors,
    }))
    .into_response();
    if partial {
        resp.headers_mut()
            .insert("x-outpost-partial", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The web console under `/ui/` (`crate::console`): from `gateway.static_dir` when one is
/// configured (only plain relative paths: no `..`, no hidden files, no symlinks out of the
/// directory; `index.html` for directories), else as built into the binary.
async fn static_file(
    State(app): State<Arc<App>>,
    uri: http::Uri,
    headers: http::HeaderMap,
) -> ApiResult<Response> {
    let rel = uri
        .path()
        .strip_prefix("/ui/")
        .or_else(|| uri.path().strip_prefix("/ui"))
        .unwrap_or("");
    let rel = percent_decode(rel).ok_or_else(|| ApiError::not_found("no such file"))?;
    let Some(root) = &app.cfg.static_dir else {
        if !crate::console::built() {
            return Err(ApiError::not_found(
                "this binary holds no web console: build it (scripts/setup.sh, or npm ci && \
                 npm run build in web/) and build the binary again",
            ));
        }
        return crate::console::serve(&rel, &headers)
            .ok_or_else(|| ApiError::not_found("no such file"));
    };
    let mut path = root.clone();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        if seg == ".." || seg.starts_with('.') || seg.contains('\\') || seg.contains('\0') {
            return Err(ApiError::not_found("no such file"));
        }
        path.push(seg);
    }
    let root_real = tokio::fs::canonicalize(root)
        .await
        .map_err(|_| ApiError::not_found("no such file"))?;
    let mut real = tokio::fs::canonicalize(&path)
        .await
        .map_err(|_| ApiError::not_found("no such file"))?;
    if tokio::fs::metadata(&real).await.is_ok_and(|m| m.is_dir()) {
        // Resolved again: `index.html` may itself be a link pointing elsewhere.
        real = tokio::fs::canonicalize(real.join("index.html"))
            .await
            .map_err(|_| ApiError::not_found("no such file"))?;
    }
    if !real.starts_with(&root_real) {
        return Err(ApiError::not_found("no such file"));
    }
    let bytes = tokio::fs::read(&real)
        .await
        .map_err(|_| ApiError::not_found("no such file"))?;
    let ext = real.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok((crate::console::headers(ext), bytes).into_response())
}

/// A path decoded as percent-encoding defines it (RFC 3986): `%` and two hex digits is a
/// byte; anything else, such as `%+2`, stays as it is. `None` when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%2e%2E/b").as_deref(), Some("a../b"));
        // Not escapes: kept as they are, never read as a byte.
        assert_eq!(super::percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(super::percent_decode("%2").as_deref(), Some("%2"));
        assert_eq!(super::percent_decode("%+2").as_deref(), Some("%+2"));
        assert_eq!(super::percent_decode("%ff"), None, "not UTF-8");
    }
}
