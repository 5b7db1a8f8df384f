//! device-rest (port 59986): devices that speak HTTP.
//!
//! - **Readings in**: EdgeX device-rest's `POST /api/v3/resource/{device}/{resource}` with
//!   the value as the body (text for numbers, booleans and strings; JSON for `Object`
//!   resources; raw bytes with the resource's `mediaType` as `Content-Type` for `Binary`).
//!   Outpost adds `POST /api/v3/resource/{device}`: a JSON or CBOR object of resource →
//!   value with an optional `timestamp`, one event for all of them.
//! - **Authentication**: each device presents its own secret as
//!   `Authorization: Bearer <secret>` (the same secret it uses as MQTT password); the token
//!   of one device is useless for another. core-metadata checks it; a verified token is
//!   trusted for `token_cache_s`.
//! - **Commands out**: for devices with a `REST` protocol block `{Host, Port, Path}`, a read
//!   of resource `r` is `GET http://Host:Port/Path/r` (the body is the value) and a write is
//!   `PUT` with the value as the body, as EdgeX device-rest does.
//! - Answers: 200 on success; 401 without a valid token; 404 unknown device or resource;
//!   400 a value of the wrong type or out of range; 405 a resource that is not readable; 413
//!   too large; 423 a locked device; 429 a device over its rate (`Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use outpost_contracts::metadata::Device;
use outpost_contracts::value::ValueType;
use outpost_device_sdk::payload::{Payload, decode};
use outpost_device_sdk::{
    CommandValue, DeviceRef, Driver, DriverConfig, DriverError, PushError, ResourceRef, Sdk,
    SecretError,
};
use outpost_kit::error::{ApiError, Path};
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-rest";

/// The protocol block of devices that take commands over HTTP.
pub const PROTOCOL: &str = "REST";

/// `[device_rest.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    /// Devices must present their secret as a bearer token.
    pub require_token: bool,
    /// How long a verified token is trusted before core-metadata is asked again.
    pub token_cache_s: u64,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            require_token: true,
            token_cache_s: 10,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl DriverConfig for RestConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_rest";
    const PORT: u16 = 59986;
    const ENABLED: bool = false;
    // Devices push readings with their own token.
    const OPEN_ROUTES: &'static [&'static str] = &["/api/v3/resource/"];

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<std::sync::Arc<dyn outpost_device_sdk::Driver>, outpost_kit::StartError> {
        Ok(Arc::new(Rest::new(start.cfg.driver.clone())))
    }

    fn credentials_for(&self) -> Duration {
        Duration::from_secs(self.token_cache_s)
    }

    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        let s = "device_rest.driver";
        p.check(
            self.token_cache_s <= 3600,
            s,
            "token_cache_s must be at most 3600",
        );
        p.check(
            (16..=64 * 1024 * 1024).contains(&self.max_body_bytes),
            s,
            "max_body_bytes must be between 16 and 64 MiB",
        );
    }
}

pub type Config = outpost_device_sdk::Config<RestConfig>;

/// The HTTP adapter.
pub struct Rest {
    cfg: RestConfig,
    http: reqwest::Client,
}

impl Rest {
    pub fn new(cfg: RestConfig) -> Self {
        Self {
            cfg,
            http: outpost_kit::http::external_client(Duration::from_secs(60)),
        }
    }

    /// Checks the bearer token of a request for `device`.
    async fn authorize(
        &self,
        sdk: &Sdk,
        device: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if !self.cfg.require_token {
            return Ok(());
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("a device token is required: Authorization: Bearer <device secret>")
            })?;
        secret_checked(sdk.check_secret(device, token).await)
    }

    fn base_url(device: &DeviceRef) -> Result<String, DriverError> {
        let p = device.protocol(PROTOCOL).ok_or_else(|| {
            DriverError::Invalid(format!(
                "device has no {PROTOCOL} protocol block; it only pushes"
            ))
        })?;
        let text = |k: &str| {
            p.get(k).map(|v| match v {
                serde_json::Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            })
        };
        let host = text("Host")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| DriverError::Invalid("REST.Host is missing".into()))?;
        let port = text("Port").unwrap_or_else(|| "80".into());
        let path = text("Path").unwrap_or_default();
        let path = path.trim_matches('/');
        Ok(if path.is_empty() {
            format!("http://{host}:{port}")
        } else {
            format!("http://{host}:{port}/{path}")
        })
    }
}

fn value_text(v: &CommandValue) -> Vec<u8> {
    match v {
        CommandValue::Bool(b) => b.to_string().into_bytes(),
        CommandValue::Int(i) => i.to_string().into_bytes(),
        CommandValue::Uint(u) => u.to_string().into_bytes(),
        CommandValue::Float(f) => f.to_string().into_bytes(),
        CommandValue::String(s) => s.clone().into_bytes(),
        CommandValue::Binary(b) => b.clone(),
        CommandValue::Object(o) => o.to_string().into_bytes(),
        CommandValue::Array(a) => {
            serde_json::to_vec(&a.iter().map(json_of).collect::<Vec<_>>()).unwrap_or_default()
        }
    }
}

/// An array element as JSON (numbers stay numbers).
fn json_of(v: &CommandValue) -> serde_json::Value {
    match v {
        CommandValue::Bool(b) => (*b).into(),
        CommandValue::Int(i) => (*i).into(),
        CommandValue::Uint(u) => (*u).into(),
        CommandValue::Float(f) => (*f).into(),
        CommandValue::Object(o) => o.clone(),
        CommandValue::Array(a) => a.iter().map(json_of).collect(),
        other => String::from_utf8_lossy(&value_text(other))
            .into_owned()
            .into(),
    }
}

#[async_trait]
impl Driver for Rest {
    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        let base = Self::base_url(device)?;
        let mut out = Vec::with_capacity(resources.len());
        for r in resources {
            let resp = self
                .http
                .get(format!("{base}/{}", r.name()))
                .send()
                .await
                .map_err(|e| DriverError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| DriverError::Unreachable(e.to_string()))?;
            if !status.is_success() {
                return Err(DriverError::Device(format!(
                    "GET {}: {status} {}",
                    r.name(),
                    String::from_utf8_lossy(&body).trim()
                )));
            }
            out.push(
                body_value(r.resource.properties.value_type, &body).map_err(DriverError::Device)?,
            );
        }
        Ok(out)
    }

    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        let base = Self::base_url(device)?;
        for (r, v) in values {
            let resp = self
                .http
                .put(format!("{base}/{}", r.name()))
                .body(value_text(v))
                .send()
                .await
                .map_err(|e| DriverError::Unreachable(e.to_string()))?;
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                return Err(DriverError::Device(format!(
                    "PUT {}: {status} {}",
                    r.name(),
                    body.trim()
                )));
            }
        }
        Ok(())
    }

    fn validate(&self, device: &Device) -> Result<(), String> {
        let Some(p) = device.protocols.get(PROTOCOL) else {
            return Ok(());
        };
        let host = p.get("Host").and_then(|v| v.as_str()).unwrap_or("").trim();
        if host.is_empty() {
            return Err("REST.Host is required".into());
        }
        if let Some(port) = p.get("Port") {
            let n = match port {
                serde_json::Value::String(s) => s.trim().parse::<u16>().ok(),
                other => other.as_u64().and_then(|n| u16::try_from(n).ok()),
            };
            if n.is_none_or(|n| n == 0) {
                return Err(format!("REST.Port {port} is not a port number"));
            }
        }
        Ok(())
    }

    fn routes(&self, sdk: &Sdk) -> Option<Router> {
        let limit = self.cfg.max_body_bytes;
        Some(
            Router::new()
                .route("/api/v3/resource/{device}/{resource}", post(push_one))
                .route("/api/v3/resource/{device}", post(push_many))
                .layer(DefaultBodyLimit::max(limit))
                .with_state(Shared {
                    sdk: sdk.clone(),
                    rest: self.handle(),
                }),
        )
    }
}

impl Rest {
    /// A handle for the HTTP handlers.
    fn handle(&self) -> Arc<Rest> {
        Arc::new(Rest {
            cfg: self.cfg.clone(),
            http: self.http.clone(),
        })
    }
}

#[derive(Clone)]
struct Shared {
    sdk: Sdk,
    rest: Arc<Rest>,
}

/// A body as a value of type `t`: as its `Content-Type` would say, were it not the
/// resource's type that tells (text for numbers, JSON for objects and arrays).
fn body_value(t: ValueType, body: &[u8]) -> Result<CommandValue, String> {
    outpost_device_sdk::payload::body_value(t, body, None)
}

/// A device secret's check as the answer to a request.
fn secret_checked(checked: Result<(), SecretError>) -> Result<(), ApiError> {
    match checked {
        Ok(()) => Ok(()),
        Err(SecretError::Wrong) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong token for this device",
        )),
        Err(e @ SecretError::Unavailable) => Err(ApiError::unavailable(e.to_string())),
    }
}

fn push_failed(sdk: &Sdk, device: &str, e: &PushError) -> Response {
    sdk.reject(device, e.reason(), &e.to_string());
    let mut resp = ApiError::new(e.status(), e.to_string()).into_response();
    if matches!(e, PushError::Throttled(_)) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}

async fn push_one(
    State(s): State<Shared>,
    Path((device, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.rest.authorize(&s.sdk, &device, &headers).await?;
    let Some(d) = s.sdk.device(&device) else {
        let e = PushError::UnknownDevice(device.clone());
        return Ok(push_failed(&s.sdk, &device, &e));
    };
    let Some(r) = d.profile.resource(&resource) else {
        let e = PushError::UnknownResource {
            device: device.clone(),
            resource,
        };
        return Ok(push_failed(&s.sdk, &device, &e));
    };
    let t = r.properties.value_type;
    if t == ValueType::Binary && !r.properties.media_type.is_empty() {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.eq_ignore_ascii_case(&r.properties.media_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "resource '{resource}' takes Content-Type {}",
                    r.properties.media_type
                ),
            ));
        }
    }
    let value = body_value(t, &body).map_err(|why| {
        s.sdk.reject(&device, "bad_value", &why);
        ApiError::bad_request(format!("resource '{resource}': {why}"))
    })?;
    // The SDK bounds the wait for the bus (503 then, so the device retries).
    match s
        .sdk
        .push(&device, &resource, vec![(resource.clone(), value)], None)
        .await
    {
        Ok(_) => Ok(StatusCode::OK.into_response()),
        Err(e) => Ok(push_failed(&s.sdk, &device, &e)),
    }
}

async fn push_many(
    State(s): State<Shared>,
    Path(device): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.rest.authorize(&s.sdk, &device, &headers).await?;
    let (values, origin) = match decode(&body, "timestamp") {
        Ok(Payload::Object { values, origin }) => (values, origin),
        Ok(Payload::Value(_)) => {
            return Err(ApiError::bad_request(
                "the body is an object of resource → value (or POST to /api/v3/resource/{device}/{resource})",
            ));
        }
        Err(e) => {
            s.sdk.reject(&device, "bad_payload", &e.to_string());
            return Err(ApiError::bad_request(e.to_string()));
        }
    };
    match s.sdk.push(&device, "telemetry", values, origin).await {
        Ok(_) => Ok(StatusCode::OK.into_response()),
        Err(e) => Ok(push_failed(&s.sdk, &device, &e)),
    }
}

/// The service, as the node runs it.
pub type DeviceRest = outpost_device_sdk::Adapter<RestConfig>;

#[cfg(test)]
mod tests;
