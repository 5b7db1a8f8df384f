//! HTTP API of the cloud node, and who may call it.
//!
//! Everything except ingest (which checks the client certificate itself), ping, health,
//! version and the CA certificate needs the cloud's admin token as a bearer token
//! ([`admin_only`], wrapped around the whole router, common routes included).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use outpost_contracts::cloud::{
    EdgeAlertsResponse, EdgeEventCountResponse, EdgeReadingsResponse, EdgeResponse, EdgesResponse,
    EnrollEdgeRequest,
};
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, SortedKeys};
use outpost_kit::ApiError;
use outpost_kit::error::{Path, Query, parse_json};
use outpost_kit::tls::Peer;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use crate::enroll::{EnrollError, Enroller};
use crate::ingest::Ingest;
use crate::store::{ReadingQuery, Store};

pub struct App {
    pub store: Arc<dyn Store>,
    pub ingest: Ingest,
    pub enroller: Enroller,
    /// The CA certificate edges trust (served as `ca.pem`).
    pub ca_cert: PathBuf,
    /// The admin token, as the bearer token carries it.
    pub admin_token: String,
}

type St = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v3/ingest", post(ingest))
        .route("/api/v3/ca.pem", get(ca_pem))
        .route("/api/v3/edge", post(enroll))
        .route("/api/v3/edge/all", get(edges))
        .route("/api/v3/edge/name/{name}", get(edge).delete(revoke))
        .route("/api/v3/reading/edge/{edge}", get(readings))
        .route("/api/v3/event/count/edge/{edge}", get(event_count))
        .route("/api/v3/alert/edge/{edge}", get(alerts))
        .with_state(app)
}

/// Routes anyone may call (ingest checks the client certificate itself).
fn public(path: &str) -> bool {
    matches!(
        path,
        "/api/v3/ingest" | "/api/v3/ping" | "/api/v3/health" | "/api/v3/version" | "/api/v3/ca.pem"
    )
}

/// Lets a request through to a public route, or with the admin token: 401 without a
/// bearer token, 403 with another one. Tokens are compared in constant time.
pub async fn admin_only(State(app): St, req: Request, next: Next) -> Response {
    if public(req.uri().path()) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if bool::from(t.trim().as_bytes().ct_eq(app.admin_token.as_bytes())) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "the token is not this cloud node's admin token",
        )
        .into_response(),
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (the cloud node's admin token)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn ca_pem(State(app): St) -> Result<Response, ApiError> {
    let pem = tokio::fs::read_to_string(&app.ca_cert)
        .await
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn ingest(
    State(app): St,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let answer = app.ingest.batch(&peer, encoding, &body).await?;
    Ok(Json(answer).into_response())
}

async fn enroll(State(app): St, body: Bytes) -> Result<Response, ApiError> {
    let req: EnrollEdgeRequest = parse_json(&body)?;
    match app.enroller.enroll(&req.name).await {
        Ok(bundle) => Ok((StatusCode::CREATED, Json(bundle)).into_response()),
        Err(e @ EnrollError::InvalidName) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ EnrollError::Enrolled(_)) => Err(ApiError::conflict(e.to_string())),
        Err(e) => Err(ApiError::internal(outpost_kit::tasks::chain(&e))),
    }
}

async fn edges(State(app): St) -> Result<Response, ApiError> {
    let edges = app.store.edges().await.map_err(ApiError::internal)?;
    Ok(Json(EdgesResponse {
        base: BaseResponse::new(200),
        total_count: edges.len(),
        edges,
    })
    .into_response())
}

async fn edge(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    let Some(edge) = app
        .store
        .edge(name.clone())
        .await
        .map_err(ApiError::internal)?
    else {
        known_edge(&app, &name).await?;
        return Err(ApiError::not_found(format!("no edge {name}")));
    };
    Ok(Json(SortedKeys(EdgeResponse {
        base: BaseResponse::new(200),
        edge,
    }))
    .into_response())
}

/// A 404 for an edge never enrolled here (revoked ones keep their data), with the nearest
/// name: an empty list would read as "no data yet".
async fn known_edge(app: &App, name: &str) -> Result<(), ApiError> {
    if app
        .store
        .edge(name.to_string())
        .await
        .map_err(ApiError::internal)?
        .is_some()
    {
        return Ok(());
    }
    let edges = app.store.edges().await.map_err(ApiError::internal)?;
    Err(ApiError::not_found(format!(
        "no edge {name}{}",
        outpost_kit::edgex::did_you_mean(name, edges.iter().map(|e| e.name.as_str()))
    )))
}

async fn revoke(State(app): St, Path(name): Path<String>) -> Result<Response, ApiError> {
    if !app
        .enroller
        .revoke(&name)
        .await
        .map_err(ApiError::internal)?
    {
        // Never enrolled: the 404 of `known_edge`, with the nearest name.
        known_edge(&app, &name).await?;
        return Err(ApiError::not_found(format!("no edge {name}")));
    }
    Ok(Json(BaseResponse::new(200)).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ReadingParams {
    device: Option<String>,
    resource: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
    offset: u64,
    limit: Option<u64>,
}

async fn readings(
    State(app): St,
    Path(edge): Path<String>,
    Query(q): Query<ReadingParams>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(20).min(10_000);
    known_edge(&app, &edge).await?;
    let (readings, total) = app
        .store
        .readings(ReadingQuery {
            edge,
            device: q.device,
            resource: q.resource,
            start: q.start,
            end: q.end,
            offset: q.offset,
            limit,
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SortedKeys(EdgeReadingsResponse {
        page: BaseWithTotalCountResponse::new(total),
        readings,
    }))
    .into_response())
}

async fn event_count(State(app): St, Path(edge): Path<String>) -> Result<Response, ApiError> {
    let count = app
        .store
        .event_count(edge)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SortedKeys(EdgeEventCountResponse {
        base: BaseResponse::new(200),
        count,
    }))
    .into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct AlertParams {
    limit: Option<u64>,
}

async fn alerts(
    State(app): St,
    Path(edge): Path<String>,
    Query(q): Query<AlertParams>,
) -> Result<Response, ApiError> {
    let alerts = app
        .store
        .alerts(edge, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(SortedKeys(EdgeAlertsResponse {
        base: BaseResponse::new(200),
        alerts,
    }))
    .into_response())
}
