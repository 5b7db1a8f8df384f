//! rules (port 59720): edge analytics. Pipelines (from `[[rules.pipelines]]` or
//! `POST /api/v3/pipeline`) take device readings from the bus, reduce them (deadband,
//! downsample, range, tumbling and sliding windows with min/max/mean/count/last/sum) and
//! publish what is left as EdgeX events on `<base>/events/rules/<pipeline>/<profile>/<device>`;
//! threshold and rate-of-change conditions raise alerts on `<base>/alerts/<pipeline>/<device>`
//! (the export service sends those first). Each pipeline counts readings in and out, so the
//! reduction is visible (`GET /api/v3/pipeline/all`, `outpost_rules_readings_*_total`).
//!
//! The subscription is durable: readings published while rules is down are delivered when
//! it is back. A reading is acknowledged only after what it caused (outputs, alerts) was
//! taken by the bus; while the bus is away (a broker restart) publishing is retried, and
//! nothing further is consumed meanwhile. Windows in progress live in memory, so a restart
//! of rules loses what they had gathered.
//!
//! Windows follow the readings' origin time: a window closes when a later reading arrives,
//! or `lateness_ms` after its end by the clock. A reading for a window already closed is
//! counted as late and not used.

pub mod pipeline;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_bus::{Bus, Consumer, Options};
use outpost_contracts::common::BaseRequest;
use outpost_contracts::event::{AddEventRequest, Event, Reading, ReadingValue};
use outpost_contracts::export::Alert;
use outpost_contracts::now_nanos;
use outpost_contracts::topics;
use outpost_contracts::value::ValueType;
use outpost_kit::error::Path;
use outpost_kit::{
    ApiError, Check, Context, Info, Parts, Shutdown, Stage, Start, StartError, Storage,
    health_probe,
};
use outpost_storage::rusqlite::params;
use outpost_storage::{Db, Migration};
use serde::{Deserialize, Serialize};

use pipeline::{Chain, PipelineSpec, Sample};

/// The service's registry ID.
pub const SERVICE: &str = "rules";

/// `[rules]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub port: u16,
    /// How long after its end (by the clock) a window is closed when no later reading
    /// closes it.
    pub lateness_ms: u64,
    pub pipelines: Vec<PipelineSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 59720,
            lateness_ms: 2000,
            pipelines: Vec::new(),
        }
    }
}

impl outpost_kit::ServiceConfig for Config {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        self.enabled
    }
}

impl outpost_kit::config::Validate for Config {
    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        let mut names = std::collections::HashSet::new();
        for spec in &self.pipelines {
            if let Err(e) = spec.check() {
                p.push("rules.pipelines", e);
            }
            p.check(
                names.insert(spec.name.clone()),
                "rules.pipelines",
                format!("pipeline {} is defined twice", spec.name),
            );
        }
    }
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "pipelines added over the API",
    sql: "CREATE TABLE pipelines (name TEXT PRIMARY KEY, spec TEXT NOT NULL);",
}];

#[derive(Debug, Default)]
struct Counts {
    readings_in: AtomicU64,
    readings_out: AtomicU64,
    events_out: AtomicU64,
    alerts: AtomicU64,
    late: AtomicU64,
}

struct Pipeline {
    spec: PipelineSpec,
    /// `config` or `api`.
    source: &'static str,
    /// (device, profile, resource) -> its chain.
    chains: Mutex<HashMap<(String, String, String), Chain>>,
    counts: Counts,
}

impl Pipeline {
    fn new(spec: PipelineSpec, source: &'static str) -> Self {
        Self {
            spec,
            source,
            chains: Mutex::default(),
            counts: Counts::default(),
        }
    }
}

struct Names {
    readings_in: &'static str,
    readings_out: &'static str,
    alerts: &'static str,
    late: &'static str,
    skipped: &'static str,
}

pub struct App {
    pipelines: RwLock<Vec<Arc<Pipeline>>>,
    db: Db,
    /// Set once the pipelines' consumer is subscribed.
    subscribed: std::sync::atomic::AtomicBool,
    base: String,
    names: Names,
}

/// What leaves a pipeline for one device after one input.
struct Output {
    pipeline: String,
    device: String,
    profile: String,
    samples: Vec<Sample>,
    alerts: Vec<Alert>,
}

impl App {
    fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.pipelines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs an event through every pipeline.
    fn process(&self, ev: &Event) -> Vec<Output> {
        let mut outputs = Vec::new();
        for p in self.pipelines() {
            let mut samples = Vec::new();
            let mut alerts = Vec::new();
            let mut chains = p
                .chains
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for r in &ev.readings {
                if !p
                    .spec
                    .takes(&ev.device_name, &ev.profile_name, &r.resource_name)
                {
                    continue;
                }
                let Some(value) = numeric(r) else {
                    metrics::counter!(self.names.skipped, "pipeline" => p.spec.name.clone())
                        .increment(1);
                    continue;
                };
                p.counts.readings_in.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(self.names.readings_in, "pipeline" => p.spec.name.clone())
                    .increment(1);
                let chain = chains
                    .entry((
                        ev.device_name.clone(),
                        ev.profile_name.clone(),
                        r.resource_name.clone(),
                    ))
                    .or_insert_with(|| Chain::new(&p.spec, &r.resource_name));
                let late_before = chain.late;
                let origin = if r.origin != 0 { r.origin } else { ev.origin };
                let mut fired = Vec::new();
                samples.extend(chain.push(&p.spec, origin, value, &mut fired));
                let late = chain.late - late_before;
                if late > 0 {
                    p.counts.late.fetch_add(late, Ordering::Relaxed);
                    metrics::counter!(self.names.late, "pipeline" => p.spec.name.clone())
                        .increment(late);
                }
                for f in fired {
                    let rule = &p.spec.alerts[f.rule];
                    alerts.push(Alert {
                        id: uuid::Uuid::new_v4().to_string(),
                        pipeline: p.spec.name.clone(),
                        device_name: ev.device_name.clone(),
                        resource_name: r.resource_name.clone(),
                        value: format_value(f.value),
                        condition: f.condition,
                        severity: rule.severity.clone(),
                        origin: f.origin,
                        message: rule.message.clone(),
                    });
                }
            }
            drop(chains);
            if !samples.is_empty() || !alerts.is_empty() {
                outputs.push(Output {
                    pipeline: p.spec.name.clone(),
                    device: ev.device_name.clone(),
                    profile: ev.profile_name.clone(),
                    samples,
                    alerts,
                });
            }
        }
        outputs
    }

    /// Closes windows that ended more than `lateness` ago.
    fn flush(&self, now: i64) -> Vec<Output> {
        let mut outputs: Vec<Output> = Vec::new();
        for p in self.pipelines() {
            let mut chains = p
                .chains
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((device, profile, _), chain) in chains.iter_mut() {
                let samples = chain.flush(&p.spec, now);
                if samples.is_empty() {
                    continue;
                }
                match outputs
                    .iter_mut()
                    .find(|o| o.pipeline == p.spec.name && &o.device == device)
                {
                    Some(o) => o.samples.extend(samples),
                    None => outputs.push(Output {
                        pipeline: p.spec.name.clone(),
                        device: device.clone(),
                        profile: profile.clone(),
                        samples,
                        alerts: Vec::new(),
                    }),
                }
            }
        }
        outputs
    }

    /// Publishes until the bus takes it; `false` only when the service is stopping. An
    /// output is never dropped because the broker was restarting, and the reading it came
    /// from is acknowledged only after it went out (the caller waits here meanwhile).
    async fn until_sent<F, Fut>(&self, what: &str, stop: &Shutdown, mut send: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), outpost_bus::BusError>>,
    {
        let mut backoff =
            outpost_kit::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match send().await {
                Ok(()) => return true,
                Err(e) => {
                    if backoff.attempts() == 0 {
                        tracing::warn!(error = %e, "cannot publish {what}; retrying until the bus takes it");
                    }
                    tokio::select! {
                        () = stop.wait() => return false,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    /// Publishes `outputs` on `bus`; `false` if `stop` fired before all went out.
    async fn publish(&self, bus: &Bus, outputs: Vec<Output>, stop: &Shutdown) -> bool {
        for o in outputs {
            let p = self
                .pipelines()
                .into_iter()
                .find(|p| p.spec.name == o.pipeline);
            for alert in &o.alerts {
                if let Some(p) = &p {
                    p.counts.alerts.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!(self.names.alerts, "pipeline" => o.pipeline.clone()).increment(1);
                tracing::info!(
                    pipeline = o.pipeline,
                    device = o.device,
                    condition = alert.condition,
                    severity = alert.severity,
                    "alert"
                );
                let topic = topics::alert(&self.base, &o.pipeline, &o.device);
                if !self
                    .until_sent("an alert", stop, || bus.publish(&topic, alert))
                    .await
                {
                    return false;
                }
            }
            if o.samples.is_empty() {
                continue;
            }
            // Samples of one origin go together in one event.
            let mut by_origin: Vec<(i64, Vec<Sample>)> = Vec::new();
            for s in o.samples {
                match by_origin.iter_mut().find(|(t, _)| *t == s.origin) {
                    Some((_, v)) => v.push(s),
                    None => by_origin.push((s.origin, vec![s])),
                }
            }
            for (origin, samples) in by_origin {
                let n = samples.len() as u64;
                let event = Event {
                    api_version: "v3".into(),
                    id: uuid::Uuid::new_v4().to_string(),
                    device_name: o.device.clone(),
                    profile_name: o.profile.clone(),
                    source_name: o.pipeline.clone(),
                    origin,
                    readings: samples
                        .into_iter()
                        .map(|s| Reading {
                            id: uuid::Uuid::new_v4().to_string(),
                            origin,
                            device_name: o.device.clone(),
                            resource_name: s.name,
                            profile_name: o.profile.clone(),
                            value_type: ValueType::Float64,
                            units: String::new(),
                            tags: None,
                            value: ReadingValue::Simple(format_value(s.value)),
                        })
                        .collect(),
                    tags: None,
                };
                let topic = topics::rules_event(&self.base, &o.pipeline, &o.profile, &o.device);
                let req = AddEventRequest {
                    base: BaseRequest::default(),
                    event,
                };
                if !self
                    .until_sent("a pipeline's output", stop, || {
                        bus.publish_event(&topic, &req)
                    })
                    .await
                {
                    return false;
                }
                if let Some(p) = &p {
                    p.counts.readings_out.fetch_add(n, Ordering::Relaxed);
                    p.counts.events_out.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!(self.names.readings_out, "pipeline" => o.pipeline.clone())
                    .increment(n);
            }
        }
        true
    }
}

fn format_value(v: f64) -> String {
    // EdgeX Float64 readings are text; keep them exact and short.
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// A reading's value as a number, if it is one.
fn numeric(r: &Reading) -> Option<f64> {
    match &r.value {
        ReadingValue::Simple(s) => match r.value_type {
            ValueType::Bool => match s.as_str() {
                "true" => Some(1.0),
                "false" => Some(0.0),
                _ => None,
            },
            _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
        },
        _ => None,
    }
}

/// The service, as the node runs it.
pub struct Rules;

impl outpost_kit::Service for Rules {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "rules").no_registry_view();

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(MIGRATIONS, 1))
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let db = start.db()?;
        let stored: Vec<PipelineSpec> = db
            .read(|c| {
                let mut st = c.prepare("SELECT spec FROM pipelines ORDER BY name")?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(0))?
                    .filter_map(|r| r.ok())
                    .filter_map(|s| serde_json::from_str(&s).ok())
                    .collect();
                Ok::<_, outpost_storage::StorageError>(rows)
            })
            .await
            .map_err(StartError::other)?;
        let mut pipelines: Vec<Arc<Pipeline>> = cfg
            .pipelines
            .iter()
            .cloned()
            .map(|s| Arc::new(Pipeline::new(s, "config")))
            .collect();
        for spec in stored {
            if pipelines.iter().any(|p| p.spec.name == spec.name) {
                tracing::warn!(
                    pipeline = spec.name,
                    "a pipeline added over the API has the name of a configured one; the configured one is used"
                );
                continue;
            }
            pipelines.push(Arc::new(Pipeline::new(spec, "api")));
        }
        tracing::info!(pipelines = pipelines.len(), "rules loaded");
        let app = Arc::new(App {
            pipelines: RwLock::new(pipelines),
            db,
            subscribed: std::sync::atomic::AtomicBool::new(false),
            base: ctx.common.bus.base_topic.clone(),
            names: Names {
                readings_in: ctx.metric_static("readings_in_total"),
                readings_out: ctx.metric_static("readings_out_total"),
                alerts: ctx.metric_static("alerts_total"),
                late: ctx.metric_static("readings_late_total"),
                skipped: ctx.metric_static("readings_not_numeric_total"),
            },
        });
        {
            let (ctx, app) = (ctx.clone(), Arc::clone(&app));
            let lateness = Duration::from_millis(cfg.lateness_ms);
            ctx.clone()
                .tasks
                .spawn("pipelines", Stage::AfterServing, move |stop| {
                    consume(ctx, app, lateness, stop)
                });
        }
        let health = {
            let app = Arc::clone(&app);
            health_probe(move || {
                let subscribed = app.subscribed.load(Ordering::Acquire);
                async move {
                    if subscribed {
                        vec![Check::ok("bus")]
                    } else {
                        vec![Check::failed("bus", "not subscribed yet")]
                    }
                }
            })
        };
        Ok(Parts::new(router(app)).health(health))
    }
}

/// Runs the pipelines on device events until `stop`. A durable session: readings published
/// while rules is down (a restart, an upgrade) are delivered when it is back, and each is
/// acknowledged once its outputs are published.
async fn consume(ctx: Context, app: Arc<App>, lateness: Duration, stop: Shutdown) {
    let filter = topics::device_events(&ctx.common.bus.base_topic);
    let opts = Options::durable(format!("outpost-{SERVICE}"), 1024);
    let Some(mut consumer) = Consumer::start(&ctx, opts, &[filter], &stop).await else {
        return;
    };
    tracing::info!("running pipelines on device events");
    app.subscribed.store(true, Ordering::Release);
    let bus = consumer.bus().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = tick.tick() => {
                let outputs = app.flush(now_nanos() - lateness.as_nanos() as i64);
                if !app.publish(&bus, outputs, &stop).await {
                    break;
                }
            }
            d = consumer.recv(&stop) => {
                let Some(d) = d else { break };
                if let Some(env) = bus.decode_event(&d)
                    && !app.publish(&bus, app.process(&env.payload.event), &stop).await
                {
                    // Stopping with outputs not sent: left unacknowledged, so the reading
                    // is delivered again after the restart.
                    d.abandon();
                    break;
                }
                d.ack();
            }
        }
    }
    consumer.close().await;
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v3/pipeline", post(add))
        .route("/api/v3/pipeline/all", get(all))
        .route("/api/v3/pipeline/name/{name}", get(one).delete(remove))
        .with_state(app)
}

fn view(p: &Pipeline) -> serde_json::Value {
    let c = &p.counts;
    let (i, o) = (
        c.readings_in.load(Ordering::Relaxed),
        c.readings_out.load(Ordering::Relaxed),
    );
    serde_json::json!({
        "pipeline": p.spec,
        "source": p.source,
        "readingsIn": i,
        "readingsOut": o,
        "eventsOut": c.events_out.load(Ordering::Relaxed),
        "alerts": c.alerts.load(Ordering::Relaxed),
        "late": c.late.load(Ordering::Relaxed),
        "reduction": if o > 0 { Some(i as f64 / o as f64) } else { None },
    })
}

async fn all(State(app): State<Arc<App>>) -> Response {
    let list: Vec<_> = app.pipelines().iter().map(|p| view(p)).collect();
    Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "totalCount": list.len(), "pipelines": list}))
        .into_response()
}

async fn one(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = app
        .pipelines()
        .into_iter()
        .find(|p| p.spec.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name}")))?;
    let mut v = view(&p);
    v["apiVersion"] = "v3".into();
    v["statusCode"] = 200.into();
    Ok(Json(v).into_response())
}

async fn add(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let spec: PipelineSpec = outpost_kit::error::parse_json(&body)?;
    spec.check().map_err(ApiError::bad_request)?;
    if app.pipelines().iter().any(|p| p.spec.name == spec.name) {
        return Err(ApiError::conflict(format!("pipeline {} exists", spec.name)));
    }
    let (name, json) = (
        spec.name.clone(),
        serde_json::to_string(&spec).map_err(ApiError::internal)?,
    );
    app.db
        .write(move |c| {
            c.execute(
                "INSERT INTO pipelines (name, spec) VALUES (?1, ?2)",
                params![name, json],
            )?;
            Ok::<_, outpost_storage::StorageError>(())
        })
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(pipeline = spec.name, "pipeline added");
    let name = spec.name.clone();
    app.pipelines
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Arc::new(Pipeline::new(spec, "api")));
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 201, "name": name})),
    )
        .into_response())
}

async fn remove(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let p = app
        .pipelines()
        .into_iter()
        .find(|p| p.spec.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no pipeline {name}")))?;
    if p.source == "config" {
        return Err(ApiError::conflict(format!(
            "pipeline {name} comes from the configuration file; remove it there"
        )));
    }
    let n = name.clone();
    app.db
        .write(move |c| {
            c.execute("DELETE FROM pipelines WHERE name = ?1", [n])?;
            Ok::<_, outpost_storage::StorageError>(())
        })
        .await
        .map_err(ApiError::internal)?;
    app.pipelines
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|p| p.spec.name != name);
    tracing::info!(pipeline = name, "pipeline removed");
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200})).into_response())
}
