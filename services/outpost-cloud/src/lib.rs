//! The cloud node (`outpost cloud`, port 59740, HTTPS): receives what edges export, stores
//! it once, and serves queries and a fleet view.
//!
//! - `POST /api/v3/ingest`: a batch from an edge, which proves who it is with the client
//!   certificate it got from `outpost cloud enroll`. JSON, optionally `Content-Encoding:
//!   zstd`. Items at or below the stream's high-water mark and events stored before (by id)
//!   are counted as duplicates, items that can never be stored are rejected with a reason;
//!   the answer says which. Anything the cloud cannot take right now is a 503, so the edge
//!   retries.
//! - `POST /api/v3/edge` `{"name": ...}`: enrolls an edge and answers its identity bundle
//!   (certificate, key, the CA to trust, the URL); `DELETE /api/v3/edge/name/{name}` revokes
//!   it (its certificate stops working at once; its data stays).
//! - `GET /api/v3/edge/all`, `GET /api/v3/edge/name/{name}`: the fleet: last seen, backlog
//!   each edge reported, received, duplicates, rejected.
//! - `GET /api/v3/reading/edge/{edge}` (`device`, `resource`, `start`, `end`, `offset`,
//!   `limit`), `GET /api/v3/event/count/edge/{edge}`, `GET /api/v3/alert/edge/{edge}`.
//!
//! Everything except ingest, ping, health, version and the CA certificate needs the cloud's
//! admin token (`<data>/secrets/cloud-admin.token`) as a bearer token.
//!
//! Retention (`[cloud.retention]`): events older than `max_age_s` (by origin, and at least
//! that long after they arrived) go with their readings, alerts too (by origin), and the
//! oldest events go while more than `max_readings` readings are stored; a pass every
//! `interval_s`, in transactions of `chunk_events` events. Data an edge sends late, or with
//! an origin in milliseconds or 0, is kept `max_age_s` after it arrived.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use outpost_contracts::common::BaseResponse;
use outpost_contracts::export::{IngestBatch, IngestResponse};
use outpost_contracts::now_millis as now_ms;
use outpost_kit::error::{Path, Query};
use outpost_kit::{ApiError, Info, Parts, Stage, Start, StartError, Storage};
use serde::{Deserialize, Serialize};

pub use outpost_kit::tls::Peer;
use store::{ReadingQuery, Store};

/// The service's name.
pub const SERVICE: &str = "cloud";

/// `[cloud]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTPS port.
    pub port: u16,
    /// Names the cloud's certificate covers besides localhost, the host name and
    /// `node.advertise_host`.
    pub tls_names: Vec<String>,
    /// The URL edges reach this node at, put in their identity bundles; empty =
    /// `https://<node.advertise_host>:<port>`.
    pub public_url: String,
    /// Lifetime of an edge's client certificate.
    pub client_cert_days: u32,
    /// Largest batch body, compressed as sent.
    pub max_body_bytes: usize,
    /// Largest batch after decompression.
    pub max_batch_bytes: usize,
    /// Page cache of the cloud's database, KiB (a cloud node has more memory than an edge).
    pub cache_kib: u32,
    /// How long data is kept, and how much.
    pub retention: Retention,
}

/// `[cloud.retention]`: what the cloud node keeps. Events older than `max_age_s` (by their
/// origin, and at least that long after they arrived) go with their readings, and so do
/// alerts; while more than `max_readings`
/// readings are stored, the oldest events go. Removal runs in steps of `chunk_events`
/// events, each its own transaction, so ingest is never held up for long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// 0 keeps data of any age.
    pub max_age_s: u64,
    /// 0 sets no bound on the number of readings.
    pub max_readings: u64,
    /// Seconds between retention passes.
    pub interval_s: u64,
    /// Events removed per transaction.
    pub chunk_events: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_s: 90 * 24 * 3600,
            max_readings: 0,
            interval_s: 60,
            chunk_events: 1_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59740,
            tls_names: Vec::new(),
            public_url: String::new(),
            client_cert_days: 825,
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
            cache_kib: 65536,
            retention: Retention::default(),
        }
    }
}

impl outpost_kit::ServiceConfig for Config {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        // Not part of an edge node: `outpost cloud` runs it.
        false
    }
}

impl outpost_kit::config::Validate for Config {
    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        p.check(self.port != 0, "cloud", "port must not be 0");
        p.check(
            self.client_cert_days >= 1,
            "cloud",
            "client_cert_days must be at least 1",
        );
        p.check(
            self.max_body_bytes >= 1024 && self.max_batch_bytes >= self.max_body_bytes,
            "cloud",
            "max_body_bytes must be at least 1024 and max_batch_bytes at least max_body_bytes",
        );
        p.check(
            self.public_url.is_empty() || self.public_url.starts_with("https://"),
            "cloud",
            "public_url must be an https:// URL",
        );
        p.check(
            self.retention.interval_s >= 1 && self.retention.chunk_events >= 1,
            "cloud.retention",
            "interval_s and chunk_events must be at least 1",
        );
    }
}

/// The identity an edge gets at enrollment: everything it needs to send to this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeBundle {
    pub edge: String,
    pub url: String,
    /// The CA that issued the cloud's certificate (and the edge's).
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub fingerprint: String,
}

pub struct App {
    store: Store,
    pki: outpost_pki::Paths,
    admin_token: String,
    public_url: String,
    cfg: Config,
    metrics: Metrics,
}

struct Metrics {
    batches: &'static str,
    accepted: &'static str,
    duplicates: &'static str,
    rejected: &'static str,
    refused: &'static str,
}

/// The service, as `outpost cloud` runs it.
pub struct Cloud;

impl outpost_kit::Service for Cloud {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "cloud").worker_threads(2).standalone();

    fn storage(cfg: &Config) -> Option<Storage> {
        Some(
            Storage::new(store::MIGRATIONS, 2)
                .min_cache_kib(cfg.cache_kib)
                .checkpoint_every(Duration::from_secs(30)),
        )
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store = Store::new(start.db()?);
        let admin_token = outpost_storage::load_or_create_token(&ctx.secrets_dir(), "cloud-admin")
            .map_err(StartError::other)?;
        let pki = outpost_pki::Paths::cloud(&ctx.data_dir);
        let names = outpost_pki::default_names(&ctx.common.node.advertise_host, &cfg.tls_names);
        {
            let (p, n) = (pki.clone(), names.clone());
            tokio::task::spawn_blocking(move || outpost_pki::ensure_server_cert(&p, &n))
                .await
                .map_err(StartError::other)?
                .map_err(StartError::other)?;
        }
        let reloader = outpost_pki::Reloader::new(pki.cert.clone(), pki.key.clone())
            .map_err(StartError::other)?;
        let ca_pem = std::fs::read_to_string(&pki.ca_cert).map_err(StartError::other)?;
        let tls = Arc::new(
            outpost_pki::server_config_with_clients(Arc::clone(&reloader.resolver), &ca_pem)
                .map_err(StartError::other)?,
        );
        let public_url = if cfg.public_url.is_empty() {
            let host = &ctx.common.node.advertise_host;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("https://{host}:{}", cfg.port)
        } else {
            cfg.public_url.trim_end_matches('/').to_string()
        };
        tracing::info!(url = %public_url, "cloud node");
        let app = Arc::new(App {
            store: store.clone(),
            pki,
            admin_token,
            public_url,
            metrics: Metrics {
                batches: ctx.metric_static("batches_total"),
                accepted: ctx.metric_static("items_accepted_total"),
                duplicates: ctx.metric_static("items_duplicate_total"),
                rejected: ctx.metric_static("items_rejected_total"),
                refused: ctx.metric_static("batches_refused_total"),
            },
            cfg: cfg.clone(),
        });
        // Reload a changed certificate pair without a restart.
        ctx.tasks.spawn(
            "certificate-reload",
            Stage::Background,
            move |stop| async move {
                let mut reloader = reloader;
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        () = stop.wait() => return,
                        _ = tick.tick() => { reloader.check(); }
                    }
                }
            },
        );
        {
            let (store, retention, metrics) = (
                store,
                cfg.retention.clone(),
                RetentionMetrics {
                    removed: ctx.metric("retention_removed_readings_total"),
                    stored: ctx.metric("readings_stored"),
                },
            );
            ctx.tasks
                .spawn("retention", Stage::Background, move |stop| {
                    retain(store, retention, metrics, stop)
                });
        }
        let guard = Arc::clone(&app);
        Ok(Parts::new(router(app))
            .tls(tls)
            .wrap(move |r| r.layer(axum::middleware::from_fn_with_state(guard, admin_only))))
    }
}

struct RetentionMetrics {
    removed: String,
    stored: String,
}

/// Keeps the store within `[cloud.retention]`: a pass every `interval_s`, each step of it
/// its own transaction.
async fn retain(
    store: Store,
    cfg: Retention,
    metrics: RetentionMetrics,
    shutdown: outpost_kit::Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_s.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let mut pass = store::Removed::default();
        loop {
            let cutoff = (cfg.max_age_s > 0).then(|| {
                let age =
                    i64::try_from(cfg.max_age_s.saturating_mul(1_000_000_000)).unwrap_or(i64::MAX);
                outpost_contracts::now_nanos().saturating_sub(age)
            });
            match store
                .remove_old(cutoff, cfg.max_readings, cfg.chunk_events)
                .await
            {
                Ok(r) if r == store::Removed::default() => break,
                Ok(r) => {
                    pass.events += r.events;
                    pass.readings += r.readings;
                    pass.alerts += r.alerts;
                    metrics::counter!(metrics.removed.clone()).increment(r.readings);
                    if shutdown.is_triggered() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention step failed; the next pass retries");
                    break;
                }
            }
        }
        if pass != store::Removed::default() {
            tracing::info!(
                events = pass.events,
                readings = pass.readings,
                alerts = pass.alerts,
                "retention removed old data"
            );
        }
        if let Ok(n) = store.reading_total().await {
            metrics::gauge!(metrics.stored.clone()).set(n as f64);
        }
    }
}

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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn admin_only(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if public(req.uri().path()) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if constant_time_eq(t.trim().as_bytes(), app.admin_token.as_bytes()) => {
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
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

async fn ca_pem(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let pem = tokio::fs::read_to_string(&app.pki.ca_cert)
        .await
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::Read as _;
    let decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| ApiError::bad_request(format!("invalid zstd body: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("invalid zstd body: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the batch is larger than {limit} bytes uncompressed"),
        ));
    }
    Ok(out)
}

async fn ingest(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(fingerprint) = peer.fingerprint.clone() else {
        metrics::counter!(app.metrics.refused, "reason" => "no-certificate").increment(1);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ingest needs the client certificate this edge got at enrollment",
        ));
    };
    let edge = app
        .store
        .edge_by_fingerprint(fingerprint)
        .await
        .map_err(|e| ApiError::unavailable(format!("storage: {e}")))?;
    let Some(edge) = edge else {
        metrics::counter!(app.metrics.refused, "reason" => "unknown-edge").increment(1);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this certificate belongs to no enrolled edge (never enrolled, re-enrolled since, or revoked)",
        ));
    };
    if body.len() > app.cfg.max_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the batch is too large",
        ));
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let plain = match encoding {
        "zstd" => decompress(&body, app.cfg.max_batch_bytes)?,
        "identity" => body.to_vec(),
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding {other} is not supported (zstd or none)"),
            ));
        }
    };
    // Items stay raw text until each is parsed on its own: one bad item is rejected alone.
    let batch: IngestBatch<Box<serde_json::value::RawValue>> =
        outpost_kit::error::parse_json(&plain)?;
    let priority = match batch.priority.as_str() {
        "high" => 0,
        "normal" => 1,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown priority {other} (high or normal)"
            )));
        }
    };
    if batch.items.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err(ApiError::bad_request(
            "items must be in increasing sequence order",
        ));
    }
    let items = batch.items.len();
    let stored = app
        .store
        .ingest(store::Incoming {
            edge: edge.clone(),
            address: peer.addr.to_string(),
            incarnation: batch.incarnation,
            priority,
            items: batch.items,
            backlog: batch.backlog,
        })
        .await
        .map_err(|e| ApiError::unavailable(format!("storage: {e}")))?;
    metrics::counter!(app.metrics.batches, "edge" => edge.clone()).increment(1);
    metrics::counter!(app.metrics.accepted, "edge" => edge.clone()).increment(stored.accepted);
    metrics::counter!(app.metrics.duplicates, "edge" => edge.clone()).increment(stored.duplicates);
    metrics::counter!(app.metrics.rejected, "edge" => edge.clone())
        .increment(stored.rejected.len() as u64);
    for r in &stored.rejected {
        tracing::warn!(edge, seq = r.seq, reason = %r.reason, "rejected an exported item");
    }
    tracing::debug!(
        edge,
        items,
        accepted = stored.accepted,
        duplicates = stored.duplicates,
        "stored a batch"
    );
    Ok(Json(IngestResponse {
        api_version: "v3".into(),
        status_code: 200,
        accepted: stored.accepted,
        duplicates: stored.duplicates,
        rejected: stored.rejected,
        hwm: stored.hwm,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
struct EnrollRequest {
    name: String,
}

async fn enroll(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let req: EnrollRequest = outpost_kit::error::parse_json(&body)?;
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ApiError::bad_request(
            "an edge name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    let (pki, days, n) = (
        app.pki.clone(),
        i64::from(app.cfg.client_cert_days),
        name.clone(),
    );
    let identity =
        tokio::task::spawn_blocking(move || outpost_pki::issue_client_cert(&pki, &n, days))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let enrolled = app
        .store
        .enroll(name.clone(), identity.fingerprint.clone(), now_ms())
        .await
        .map_err(ApiError::internal)?;
    if !enrolled {
        return Err(ApiError::conflict(format!(
            "edge {name} is enrolled already; revoke it first to enroll it again"
        )));
    }
    let ca = tokio::fs::read_to_string(&app.pki.ca_cert)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(
        edge = name,
        fingerprint = identity.fingerprint,
        "enrolled an edge"
    );
    let bundle = EdgeBundle {
        edge: name,
        url: app.public_url.clone(),
        ca,
        cert: identity.cert_pem,
        key: identity.key_pem,
        fingerprint: identity.fingerprint,
    };
    Ok((StatusCode::CREATED, Json(bundle)).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgesResponse {
    #[serde(flatten)]
    base: BaseResponse,
    total_count: usize,
    edges: Vec<store::EdgeRow>,
}

async fn edges(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let edges = app.store.edges().await.map_err(ApiError::internal)?;
    Ok(Json(EdgesResponse {
        base: BaseResponse::new(200),
        total_count: edges.len(),
        edges,
    })
    .into_response())
}

async fn edge(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let edge = app
        .store
        .edge(name.clone())
        .await
        .map_err(ApiError::internal)?;
    let edge = edge.ok_or_else(|| ApiError::not_found(format!("no edge {name}")))?;
    Ok(
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "edge": edge}))
            .into_response(),
    )
}

async fn revoke(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if !app
        .store
        .revoke(name.clone(), now_ms())
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found(format!("no edge {name}")));
    }
    tracing::info!(edge = name, "revoked an edge");
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
    State(app): State<Arc<App>>,
    Path(edge): Path<String>,
    Query(q): Query<ReadingParams>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(20).min(10_000);
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
    Ok(Json(serde_json::json!({
        "apiVersion": "v3", "statusCode": 200, "totalCount": total, "readings": readings
    }))
    .into_response())
}

async fn event_count(
    State(app): State<Arc<App>>,
    Path(edge): Path<String>,
) -> Result<Response, ApiError> {
    let count = app
        .store
        .event_count(edge)
        .await
        .map_err(ApiError::internal)?;
    Ok(
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "Count": count}))
            .into_response(),
    )
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct AlertParams {
    limit: Option<u64>,
}

async fn alerts(
    State(app): State<Arc<App>>,
    Path(edge): Path<String>,
    Query(q): Query<AlertParams>,
) -> Result<Response, ApiError> {
    let alerts = app
        .store
        .alerts(edge, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::internal)?;
    Ok(
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "alerts": alerts}))
            .into_response(),
    )
}
