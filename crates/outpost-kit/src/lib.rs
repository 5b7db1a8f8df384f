//! The service kit: what every Outpost service is built from, so a service is only its own
//! routes and logic.
//!
//! - [`config`]: shared configuration sections, TOML loading with environment overrides,
//!   validation that reports every problem at once.
//! - [`telemetry`]: structured logs (text or JSON) and the Prometheus recorder.
//! - [`request_id`]: `X-Correlation-ID` accepted or minted, returned, carried through the
//!   request's task into downstream calls and bus messages, and on every log line.
//! - [`routes`]: `ping`, `version`, `config`, `health` and `/metrics`.
//! - [`error`]: EdgeX-shaped errors and extractors.
//! - [`registry`]: registry client with a last-known view, and the registration agent.
//! - [`service`]: the service lifecycle: a service declares what it is and what it runs,
//!   and [`service::run`] binds, opens storage, builds, registers, serves and stops it in
//!   order. [`tasks`] owns every task a service starts.
//! - [`tls`]: an API served over TLS with client certificates; [`internal`]: mutual TLS
//!   between the node's services.
//! - [`writable`]: settings changed while the service runs, through core-keeper's
//!   `edgex/v4/<service>/Writable` keys.
//! - [`Context`]: everything a running service is handed.

pub mod backoff;
pub mod client;
pub mod config;
pub mod edgex;
pub mod error;
pub mod group;
pub mod http;
pub mod internal;
pub mod limit;
pub mod pg;
pub mod ratelog;
pub mod refused;
pub mod registry;
pub mod request_id;
pub mod routes;
pub mod sandbox;
pub mod service;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod turn;
pub mod wire;
pub mod writable;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::PrometheusHandle;
use outpost_contracts::registry::{HEALTH_HEARTBEAT, HealthCheck, Registration, ServiceStatus};

pub use config::CommonConfig;
pub use error::{ApiError, ApiResult};
pub use registry::Registry;
pub use routes::{Check, HealthProbe};
pub use service::{Info, Parts, Service, ServiceConfig, Start, StartError, Storage};
pub use shutdown::Shutdown;
pub use tasks::{BoxError, Stage, Tasks};

/// The version every service reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// When this service started, ms since the Unix epoch: taken as it starts to run
/// ([`service::run`]).
static STARTED: std::sync::LazyLock<i64> = std::sync::LazyLock::new(outpost_contracts::now_millis);

/// When this service started (ms since the Unix epoch). Services run one per process (the
/// supervisor starts each as `outpost run <service>`), so this is the process's service.
pub fn started() -> i64 {
    *STARTED
}

/// Everything a running service is handed by the process that starts it.
#[derive(Clone)]
pub struct Context {
    /// The service's registry ID and log name (`core-data`).
    pub name: String,
    pub common: Arc<CommonConfig>,
    pub data_dir: PathBuf,
    pub shutdown: Shutdown,
    pub registry: Registry,
    /// The service's effective configuration, for `GET /api/v3/config`.
    pub config_json: serde_json::Value,
    pub metrics: PrometheusHandle,
    /// The owner of every task the service starts.
    pub tasks: Tasks,
    /// Its settings that change while it runs ([`writable`]).
    pub writable: writable::Writable,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl Context {
    /// Where this service's encrypted database and key live.
    pub fn storage_location(&self) -> outpost_storage::Location {
        outpost_storage::Location::new(&self.data_dir, &self.name)
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secrets")
    }

    /// A metric name in this service's namespace.
    pub fn metric(&self, name: &str) -> String {
        telemetry::metric_name(&self.name, name)
    }

    /// A metric name in this service's namespace, kept for the life of the process: for
    /// metrics recorded with labels on hot paths, without an allocation per record.
    pub fn metric_static(&self, name: &str) -> &'static str {
        telemetry::intern(telemetry::metric_name(&self.name, name))
    }

    /// A counter in this service's namespace, to keep and increment.
    pub fn counter(&self, name: &str) -> metrics::Counter {
        metrics::counter!(self.metric(name))
    }

    /// A gauge in this service's namespace, to keep and set.
    pub fn gauge(&self, name: &str) -> metrics::Gauge {
        metrics::gauge!(self.metric(name))
    }

    /// The ID this process registers as: the service name, or `<service>@<instance>` when
    /// `node.instance` is set.
    pub fn service_id(&self) -> String {
        registry::instance_id(&self.name, &self.common.node.instance)
    }

    /// The complete HTTP stack of a service around its API routes.
    ///
    /// Order matters, outermost first: the request ID is established before anything else
    /// so every later log line carries it; a refused request's unread body is read before
    /// the answer ([`refused`]); the body limit applies to every route; metrics
    /// are recorded per matched route (bounded label cardinality); unknown routes get an
    /// EdgeX-shaped 404, and every other error answer is made EdgeX-shaped too
    /// ([`error::edgex_errors`]).
    ///
    /// With mutual TLS between services (`security.internal_tls`), [`internal::guard`]
    /// admits only the node's services and administrator, except to `ping` and the `open`
    /// path prefixes (routes for devices, which the service authenticates itself).
    pub fn router(
        &self,
        api: Router,
        health: HealthProbe,
        open: &'static [&'static str],
    ) -> Router {
        let info = routes::ServiceInfo {
            name: self.name.clone(),
            version: VERSION.to_string(),
            config: self.config_json.clone(),
            writable: self.writable.clone(),
            metrics: self.metrics.clone(),
            health,
        };
        let names = Arc::new(HttpMetricNames {
            requests: self.metric("http_requests_total"),
            duration: self.metric("http_request_duration_seconds"),
        });
        let routed = api
            .merge(routes::router(info))
            .route_layer(axum::middleware::from_fn_with_state(names, http_metrics))
            .fallback(error::not_found_fallback)
            .method_not_allowed_fallback(error::method_not_allowed_fallback);
        // The path is rewritten before routing, so this wraps the routed service whole.
        let routed = tower::Layer::layer(&axum::middleware::map_request(plus_as_space), routed);
        let mut router = Router::new().fallback_service(routed);
        if self.common.security.internal_tls {
            router = router.layer(axum::middleware::from_fn(move |req, next| {
                internal::guard(open, req, next)
            }));
        }
        router
            .layer(DefaultBodyLimit::max(self.common.node.max_body_bytes))
            .layer(axum::middleware::from_fn(error::edgex_errors))
            .layer(axum::middleware::from_fn(refused::finish_refused_bodies))
            .layer(axum::middleware::from_fn(request_id::layer))
    }

    /// The registration this service announces: heartbeat-checked, at the advertised host.
    pub fn registration(&self, port: u16) -> Registration {
        Registration {
            service_id: self.service_id(),
            status: ServiceStatus::Up,
            host: self.common.node.advertise_host.clone(),
            port,
            health_check: HealthCheck {
                interval: format!("{}ms", self.common.registry.heartbeat_interval_ms),
                path: "/api/v3/ping".into(),
                kind: HEALTH_HEARTBEAT.into(),
            },
            scheme: if self.common.security.internal_tls {
                "https".into()
            } else {
                String::new()
            },
            version: VERSION.into(),
            started: started(),
            ..Registration::default()
        }
    }

    /// Binds the service's HTTP port.
    pub async fn bind(&self, port: u16) -> Result<tokio::net::TcpListener, ServeError> {
        let addr = SocketAddr::new(self.common.node.bind, port);
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    }
}

struct HttpMetricNames {
    requests: String,
    duration: String,
}

async fn http_metrics(
    State(names): State<Arc<HttpMetricNames>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let class = match resp.status().as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(names.requests.clone(), "route" => route.clone(), "method" => method, "status" => class)
        .increment(1);
    metrics::histogram!(names.duration.clone(), "route" => route).record(elapsed.as_secs_f64());
    tracing::debug!(
        status = resp.status().as_u16(),
        elapsed_us = elapsed.as_micros() as u64,
        "served"
    );
    resp
}

/// A health probe from an async closure.
pub fn health_probe<F, Fut>(f: F) -> HealthProbe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<Check>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// EdgeX clients escape names in paths the way Go's `url.QueryEscape` does, so a space
/// arrives as `+`. Names cannot contain `+`, so it always means a space in a path.
async fn plus_as_space(mut req: Request) -> Request {
    let uri = req.uri();
    if uri.path().contains('+') {
        let path = uri.path().replace('+', "%20");
        let rewritten = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(pq) = ::http::uri::PathAndQuery::try_from(rewritten) {
            parts.path_and_query = Some(pq);
            if let Ok(new) = ::http::Uri::from_parts(parts) {
                *req.uri_mut() = new;
            }
        }
    }
    req
}

#[cfg(test)]
mod plus_tests {
    use super::*;

    #[tokio::test]
    async fn plus_in_a_path_is_a_space() {
        let req = Request::builder()
            .uri("/api/v3/device/name/my+device?labels=a+b")
            .body(axum::body::Body::empty())
            .unwrap();
        let req = plus_as_space(req).await;
        assert_eq!(
            req.uri().to_string(),
            "/api/v3/device/name/my%20device?labels=a+b"
        );
    }
}
