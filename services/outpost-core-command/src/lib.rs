//! core-command (port 59882): reads and writes devices through their device service.
//!
//! - `GET /api/v3/device/all`, `GET /api/v3/device/name/{name}`: the commands of devices,
//!   built from their profiles.
//! - `GET`/`PUT /api/v3/device/name/{name}/{command}`: checks the device exists (404) and is
//!   not locked (423), then forwards the request with its query (`ds-pushevent`,
//!   `ds-returnevent`) to the device's service, found through the registry (its metadata
//!   `baseAddress` when the registry does not know it), and relays the answer with its
//!   status. The device service checks the command, the method and the values (404, 405,
//!   400). A device service that does not answer within `request_timeout_ms` gives 504.
//! - On the bus, requests on `<base>/core/command/request/<device>/<command>/<get|set>` are
//!   forwarded to `<base>/device/command/request/<service>/<device>/<command>/<method>` and the
//!   device service's answer is sent on to `<base>/response/core-command/<requestId>`; a
//!   request that cannot be forwarded is answered with an error envelope at once.

pub mod bus;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpost_contracts::common::{BaseResponse, BaseWithTotalCountResponse, Paging};
use outpost_contracts::metadata::{
    AdminState, Device, DeviceCoreCommand, DeviceCoreCommandResponse,
    MultiDeviceCoreCommandsResponse, OperatingState,
};
use outpost_kit::client::{CallError, Metadata, ServiceClient};
use outpost_kit::error::{Path, Query};
use outpost_kit::{ApiError, Info, Parts, Stage, Start, StartError};
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-command";

/// `[core_command]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP port (EdgeX core-command's default).
    pub port: u16,
    /// Longest wait for a device service's answer.
    pub request_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59882,
            request_timeout_ms: 10_000,
        }
    }
}

outpost_kit::service_config!(Config);

impl outpost_kit::config::Validate for Config {
    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        p.check(
            self.request_timeout_ms >= 10,
            "core_command",
            "request_timeout_ms must be at least 10",
        );
    }
}

pub struct App {
    metadata: Metadata,
    http: reqwest::Client,
    /// This service's own address, for the `url` of listed commands.
    own_url: String,
    max_result_count: u64,
}

/// The service, as the node runs it.
pub struct CoreCommand;

impl outpost_kit::Service for CoreCommand {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "core_command");

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let metadata = Metadata::new(ServiceClient::new(
            ctx.registry.clone(),
            Duration::from_secs(5),
        ));
        let app = Arc::new(App {
            metadata: metadata.clone(),
            http: outpost_kit::http::client(timeout),
            own_url: start.own_url(),
            max_result_count: ctx.common.node.max_result_count,
        });
        let task_ctx = ctx.clone();
        ctx.tasks
            .spawn("bus-commands", Stage::Background, move |stop| {
                bus::run(task_ctx, metadata, timeout, stop)
            });
        Ok(Parts::new(router(app)))
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v3/device/all", get(all_commands))
        .route("/api/v3/device/name/{name}", get(device_commands))
        .route(
            "/api/v3/device/name/{name}/{command}",
            get(get_command).put(set_command),
        )
        .with_state(app)
}

fn metadata_error(e: &CallError) -> ApiError {
    e.to_api_error()
}

impl App {
    async fn device(&self, name: &str) -> Result<Device, ApiError> {
        self.metadata
            .device(name)
            .await
            .map_err(|e| metadata_error(&e))?
            .ok_or_else(|| ApiError::not_found(format!("device '{name}' not found")))
    }

    async fn core_commands(&self, d: &Device) -> Result<DeviceCoreCommand, ApiError> {
        let profile = self
            .metadata
            .profile(&d.profile_name)
            .await
            .map_err(|e| metadata_error(&e))?
            .ok_or_else(|| {
                ApiError::not_found(format!("device profile '{}' not found", d.profile_name))
            })?;
        Ok(DeviceCoreCommand {
            device_name: d.name.clone(),
            profile_name: d.profile_name.clone(),
            core_commands: profile.core_commands(&d.name, &self.own_url),
        })
    }

    /// A 404 with the nearest name when `command` is certainly not a device command or
    /// resource of `d`'s profile; asked only when the device service, which decides (EdgeX
    /// device services also take a regular expression of resource names), cannot answer.
    /// Anything uncertain (a pattern, no profile, core-metadata away) is left to the caller.
    async fn has_command(&self, d: &Device, command: &str) -> Result<(), ApiError> {
        if command.contains(['.', '*', '+', '?', '[', '(', '{', '|', '^', '$', '\\']) {
            return Ok(());
        }
        let Ok(Some(profile)) = self.metadata.profile(&d.profile_name).await else {
            return Ok(());
        };
        let names = || {
            profile
                .device_commands
                .iter()
                .map(|c| c.name.as_str())
                .chain(profile.device_resources.iter().map(|r| r.name.as_str()))
        };
        if names().any(|n| n == command) {
            return Ok(());
        }
        Err(ApiError::not_found(format!(
            "device '{}' (profile '{}') has no command or resource '{command}'{}",
            d.name,
            d.profile_name,
            outpost_kit::edgex::did_you_mean(command, names())
        )))
    }

    /// The base URL of `service`: its registration, else its metadata `baseAddress`.
    async fn service_url(&self, service: &str) -> Result<String, ApiError> {
        if let Some(url) = self.metadata.client().registry().resolve(service) {
            return Ok(url);
        }
        let ds = self
            .metadata
            .device_service(service)
            .await
            .map_err(|e| metadata_error(&e))?
            .ok_or_else(|| ApiError::not_found(format!("device service '{service}' not found")))?;
        Ok(ds.base_address)
    }
}

async fn all_commands(
    State(app): State<Arc<App>>,
    Query(paging): Query<Paging>,
) -> Result<Response, ApiError> {
    let (offset, limit) = paging
        .resolve(app.max_result_count)
        .map_err(ApiError::bad_request)?;
    let (devices, total) = app
        .metadata
        .devices_page(offset, i64::try_from(limit).unwrap_or(i64::MAX))
        .await
        .map_err(|e| metadata_error(&e))?;
    let mut out = Vec::with_capacity(devices.len());
    for d in &devices {
        out.push(app.core_commands(d).await?);
    }
    Ok(axum::Json(MultiDeviceCoreCommandsResponse {
        page: BaseWithTotalCountResponse {
            base: BaseResponse::new(200),
            total_count: total,
        },
        device_core_commands: out,
    })
    .into_response())
}

async fn device_commands(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let d = app.device(&name).await?;
    Ok(axum::Json(DeviceCoreCommandResponse {
        base: BaseResponse::new(200),
        device_core_command: app.core_commands(&d).await?,
    })
    .into_response())
}

/// Checks `ds-pushevent`/`ds-returnevent` are `true` or `false`, as EdgeX requires.
pub fn check_flags(q: &HashMap<String, String>) -> Result<(), ApiError> {
    for key in ["ds-pushevent", "ds-returnevent"] {
        if let Some(v) = q.get(key)
            && v != "true"
            && v != "false"
        {
            return Err(ApiError::bad_request(format!(
                "invalid query parameter, {key} has to be 'true' or 'false'"
            )));
        }
    }
    Ok(())
}

async fn get_command(
    State(app): State<Arc<App>>,
    Path((name, command)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_flags(&q)?;
    forward(&app, reqwest::Method::GET, &name, &command, raw, None).await
}

async fn set_command(
    State(app): State<Arc<App>>,
    Path((name, command)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The settings must be a JSON object; anything else is refused here, before a device
    // service or a device sees it.
    let settings: serde_json::Map<String, serde_json::Value> =
        outpost_kit::error::parse_json(&body)?;
    if settings.is_empty() {
        return Err(ApiError::bad_request(
            "the request sets nothing: give at least one resource and its value",
        ));
    }
    forward(
        &app,
        reqwest::Method::PUT,
        &name,
        &command,
        raw,
        Some(serde_json::to_vec(&settings).map_err(ApiError::internal)?),
    )
    .await
}

async fn forward(
    app: &App,
    method: reqwest::Method,
    device: &str,
    command: &str,
    raw_query: Option<String>,
    body: Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let d = app.device(device).await?;
    if d.admin_state == AdminState::Locked {
        return Err(ApiError::locked(format!("device '{device}' is locked")));
    }
    // EdgeX: a device that is down is 423 too (not forwarded).
    if d.operating_state == OperatingState::Down {
        return Err(ApiError::locked(format!("device '{device}' is down")));
    }
    let base = app.service_url(&d.service_name).await?;
    let mut url = reqwest::Url::parse(&base)
        .map_err(|e| ApiError::internal(format!("device service address '{base}': {e}")))?;
    url.path_segments_mut()
        .map_err(|()| ApiError::internal(format!("device service address '{base}'")))?
        .pop_if_empty()
        .extend(["api", "v3", "device", "name", device, command]);
    url.set_query(raw_query.as_deref().filter(|q| !q.is_empty()));
    let mut rb = app.http.request(method, url);
    if let Some(b) = body {
        rb = rb
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b);
    }
    let sent = outpost_kit::http::correlated(rb).send().await;
    if sent.is_err() {
        // A device service that cannot answer cannot say the command is unknown: the
        // profile can, before "unreachable" hides a misspelt name.
        app.has_command(&d, command).await?;
    }
    let resp = sent.map_err(|e| {
        if e.is_timeout() {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("device service '{}' did not answer in time", d.service_name),
            )
        } else {
            ApiError::unavailable(format!(
                "device service '{}' is unreachable",
                d.service_name
            ))
        }
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let bytes = resp.bytes().await.map_err(|_| {
        ApiError::unavailable(format!(
            "device service '{}' broke off its answer",
            d.service_name
        ))
    })?;
    if status.is_success() && bytes.is_empty() {
        // A read with ds-returnevent=false: the device service answers no body (as EdgeX's
        // do); core-command answers EdgeX's base response, so that its answer is the JSON
        // its API document promises (EdgeX itself sends an empty body typed JSON).
        return Ok((status, axum::Json(BaseResponse::new(status.as_u16()))).into_response());
    }
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
