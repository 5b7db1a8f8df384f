//! Routes every service serves: EdgeX's `ping`, `version` and `config`, Outpost's `health`,
//! and Prometheus `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use outpost_contracts::API_VERSION;
use outpost_contracts::common::{ConfigResponse, PingResponse, VersionResponse};
use serde::Serialize;

/// The result of one health check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Check {
    pub fn ok(name: &'static str) -> Self {
        Self {
            name,
            ok: true,
            detail: String::new(),
        }
    }

    pub fn failed(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

/// A service's health probe: returns its checks (storage reachable, bus connected, ...).
pub type HealthProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>> + Send + Sync>;

/// What the common routes report about the service.
#[derive(Clone)]
pub struct ServiceInfo {
    pub name: String,
    pub version: String,
    pub config: serde_json::Value,
    /// The writable settings in force, shown under `Writable`.
    pub writable: crate::writable::Writable,
    pub metrics: PrometheusHandle,
    pub health: HealthProbe,
}

pub fn router(info: ServiceInfo) -> Router {
    Router::new()
        .route("/api/v3/ping", get(ping))
        .route("/api/v3/version", get(version))
        .route("/api/v3/config", get(config))
        .route("/api/v3/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(info))
}

async fn ping(State(info): State<Arc<ServiceInfo>>) -> axum::Json<PingResponse> {
    axum::Json(PingResponse {
        api_version: API_VERSION.into(),
        timestamp: httpdate::fmt_http_date(std::time::SystemTime::now()),
        service_name: info.name.clone(),
    })
}

async fn version(State(info): State<Arc<ServiceInfo>>) -> axum::Json<VersionResponse> {
    axum::Json(VersionResponse {
        api_version: API_VERSION.into(),
        version: outpost_contracts::EDGEX_RELEASE.into(),
        service_name: info.name.clone(),
        outpost_version: info.version.clone(),
    })
}

async fn config(State(info): State<Arc<ServiceInfo>>) -> axum::Json<ConfigResponse> {
    let mut config = info.config.clone();
    if let Some(map) = config.as_object_mut() {
        map.insert("Writable".into(), info.writable.values());
    }
    axum::Json(ConfigResponse {
        api_version: API_VERSION.into(),
        service_name: info.name.clone(),
        config,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthResponse {
    api_version: &'static str,
    service_name: String,
    status: &'static str,
    checks: Vec<Check>,
}

async fn health(State(info): State<Arc<ServiceInfo>>) -> impl IntoResponse {
    let checks = (info.health)().await;
    let up = checks.iter().all(|c| c.ok);
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(HealthResponse {
            api_version: API_VERSION,
            service_name: info.name.clone(),
            status: if up { "UP" } else { "DOWN" },
            checks,
        }),
    )
}

async fn metrics(State(info): State<Arc<ServiceInfo>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        info.metrics.render(),
    )
}
