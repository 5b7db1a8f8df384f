//! The EdgeX device-service REST API.
//!
//! | route | |
//! |---|---|
//! | `GET /api/v3/device/name/{name}/{command}` | read; `ds-pushevent`, `ds-returnevent` |
//! | `PUT /api/v3/device/name/{name}/{command}` | write; body: resource → value |
//! | `POST /api/v3/discovery` | start discovery (202) |
//! | `POST /api/v3/validate/device` | core-metadata asks whether a device is acceptable |
//!
//! With mutual TLS between services, only core-command and the gateway (and the node's
//! administrator) may call the command routes: another service of the node cannot drive
//! devices through them. (On the bus every service is the node's internal user, command
//! topics included: the bus has no per-service rules yet.)

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use outpost_contracts::common::BaseResponse;
use outpost_contracts::event::{EventResponse, NumericMode};
use outpost_contracts::metadata::AddDeviceRequest;
use outpost_kit::ApiError;
use outpost_kit::error::{Json, Path, Query};

use crate::command::{self, get_options};
use crate::sdk::Sdk;

pub fn router(sdk: Sdk) -> Router {
    Router::new()
        .route(
            "/api/v3/device/name/{name}/{command}",
            get(get_command).put(set_command),
        )
        .route("/api/v3/discovery", post(discovery))
        .route("/api/v3/secret", post(add_secret))
        .route("/api/v3/validate/device", post(validate_device))
        .with_state(sdk)
}

/// Who may call the command routes.
const COMMANDERS: [&str; 2] = ["core-command", "gateway"];

type Caller = Option<Extension<outpost_kit::internal::Caller>>;

async fn get_command(
    State(sdk): State<Sdk>,
    caller: Caller,
    Path((name, cmd)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    outpost_kit::internal::only(caller.as_deref(), &COMMANDERS)?;
    let opts = get_options(&q)?;
    let event = command::get(&sdk, &name, &cmd, opts).await?;
    if !opts.return_event {
        // EdgeX answers a JSON body without the event.
        return Ok(axum::Json(BaseResponse::new(200)).into_response());
    }
    Ok(axum::Json(EventResponse {
        base: BaseResponse::new(200),
        event: event.to_json(NumericMode::Strings),
    })
    .into_response())
}

async fn set_command(
    State(sdk): State<Sdk>,
    caller: Caller,
    Path((name, cmd)): Path<(String, String)>,
    Json(settings): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    outpost_kit::internal::only(caller.as_deref(), &COMMANDERS)?;
    command::set(&sdk, &name, &cmd, &settings).await?;
    Ok(axum::Json(BaseResponse::new(200)).into_response())
}

async fn discovery(State(sdk): State<Sdk>) -> Result<Response, ApiError> {
    if !sdk.inner.live.get().discovery.enabled {
        return Err(ApiError::unavailable(format!(
            "device discovery is disabled for '{}'",
            sdk.name()
        )));
    }
    if sdk.catalog().service_locked {
        return Err(ApiError::locked(format!(
            "device service '{}' is locked",
            sdk.name()
        )));
    }
    let request_id = outpost_kit::request_id::current_or_mint().to_string();
    crate::discovery::start(&sdk, request_id.clone());
    let mut body = BaseResponse::with_message(202, "Device Discovery is triggered.");
    body.request_id = request_id;
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

async fn validate_device(
    State(sdk): State<Sdk>,
    Json(req): Json<AddDeviceRequest>,
) -> Result<Response, ApiError> {
    sdk.inner
        .driver
        .validate(&req.device)
        .map_err(|why| ApiError::bad_request(format!("device '{}': {why}", req.device.name)))?;
    Ok(axum::Json(BaseResponse::new(200)).into_response())
}

/// Keeps a secret for the driver (EdgeX's `POST /api/v3/secret`): in its encrypted
/// database when it keeps secrets, else in memory.
async fn add_secret(State(sdk): State<Sdk>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req = outpost_kit::edgex::SecretRequest::parse(&body)?;
    sdk.set_secret(req.secret_name.clone(), req.pairs())
        .await
        .map_err(|e| ApiError::internal(format!("cannot keep the secret: {e}")))?;
    Ok(req.created())
}
