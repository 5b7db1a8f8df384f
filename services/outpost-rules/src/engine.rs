//! The running pipelines: the set of them (configured and added over the API), what each
//! did so far, and the work on the bus: every device event through every pipeline, the
//! windows the clock closes, and what comes out published as events and alerts.
//!
//! A reading is acknowledged only after what it caused was taken by the bus
//! ([`consume`]); while the bus is away publishing is retried and nothing further is
//! consumed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use outpost_bus::{Bus, BusError, Consumer, Options};
use outpost_contracts::common::BaseRequest;
use outpost_contracts::event::{AddEventRequest, Event, Reading, ReadingValue};
use outpost_contracts::export::Alert;
use outpost_contracts::value::ValueType;
use outpost_contracts::{now_nanos, topics};
use outpost_kit::backoff::Backoff;
use outpost_kit::{Context, Shutdown};
use serde::Serialize;

use crate::pipeline::{Chain, PipelineSpec, Sample};

/// Where a pipeline comes from (shown as `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `[[rules.pipelines]]`: changed in the file, not over the API.
    Config,
    /// `POST /api/v3/pipeline`: stored, removable over the API.
    Api,
}

#[derive(Debug, Default)]
struct Counts {
    readings_in: AtomicU64,
    readings_out: AtomicU64,
    events_out: AtomicU64,
    alerts: AtomicU64,
    late: AtomicU64,
    /// Output events made and not yet taken by the bus.
    waiting: AtomicU64,
}

/// What a pipeline did since rules started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub readings_in: u64,
    pub readings_out: u64,
    pub events_out: u64,
    pub alerts: u64,
    pub late: u64,
    /// Output events made and not yet taken by the bus (while it is away).
    pub waiting: u64,
}

/// A pipeline and its state: one chain per device resource it took readings of.
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub source: Source,
    /// (device, profile, resource) -> its chain.
    chains: Mutex<HashMap<(String, String, String), Chain>>,
    counts: Counts,
}

impl Pipeline {
    fn new(spec: PipelineSpec, source: Source) -> Self {
        Self {
            spec,
            source,
            chains: Mutex::default(),
            counts: Counts::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        let c = &self.counts;
        Totals {
            readings_in: c.readings_in.load(Ordering::Relaxed),
            readings_out: c.readings_out.load(Ordering::Relaxed),
            events_out: c.events_out.load(Ordering::Relaxed),
            alerts: c.alerts.load(Ordering::Relaxed),
            late: c.late.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
        }
    }
}

outpost_kit::metric_names! {
    /// The names of the engine's metrics (counted per pipeline).
    pub struct Metrics {
        readings_in = "readings_in_total",
        readings_out = "readings_out_total",
        alerts = "alerts_total",
        /// Readings for a window already closed.
        late = "readings_late_total",
        /// Readings whose value is not a number.
        skipped = "readings_not_numeric_total",
    }
}

/// What leaves a pipeline for one device after one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub pipeline: String,
    pub device: String,
    pub profile: String,
    pub samples: Vec<Sample>,
    pub alerts: Vec<Alert>,
}

pub struct Engine {
    pipelines: RwLock<Vec<Arc<Pipeline>>>,
    /// Set once the pipelines' consumer is subscribed.
    subscribed: AtomicBool,
    /// The bus's base topic.
    base: String,
    metrics: Metrics,
}

impl Engine {
    /// The configured pipelines, then the stored ones. A stored pipeline with the name of
    /// a configured one does not run: the file wins.
    pub fn new(
        configured: Vec<PipelineSpec>,
        stored: Vec<PipelineSpec>,
        base: String,
        metrics: Metrics,
    ) -> Self {
        let mut pipelines: Vec<Arc<Pipeline>> = configured
            .into_iter()
            .map(|s| Arc::new(Pipeline::new(s, Source::Config)))
            .collect();
        for spec in stored {
            if pipelines.iter().any(|p| p.spec.name == spec.name) {
                tracing::warn!(
                    pipeline = spec.name,
                    "a pipeline added over the API has the name of a configured one; the configured one is used"
                );
                continue;
            }
            pipelines.push(Arc::new(Pipeline::new(spec, Source::Api)));
        }
        Self {
            pipelines: RwLock::new(pipelines),
            subscribed: AtomicBool::new(false),
            base,
            metrics,
        }
    }

    /// Every pipeline, configured ones first, the others in the order they were added.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.pipelines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.spec.name == name)
            .cloned()
    }

    /// Runs `spec` from now on, as a pipeline added over the API.
    pub fn insert(&self, spec: PipelineSpec) {
        self.pipelines
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(Pipeline::new(spec, Source::Api)));
    }

    /// Stops running the pipeline `name` (what its windows gathered is dropped).
    pub fn remove(&self, name: &str) {
        self.pipelines
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p.spec.name != name);
    }

    /// Whether the pipelines' consumer is subscribed to device events.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Runs an event through every pipeline.
    pub fn process(&self, ev: &Event) -> Vec<Output> {
        let mut outputs = Vec::new();
        for p in self.pipelines() {
            let mut samples = Vec::new();
            let mut alerts = Vec::new();
            let mut chains = p.chains.lock().unwrap_or_else(PoisonError::into_inner);
            for r in &ev.readings {
                if !p
                    .spec
                    .takes(&ev.device_name, &ev.profile_name, &r.resource_name)
                {
                    continue;
                }
                let Some(value) = numeric(r) else {
                    metrics::counter!(self.metrics.skipped, "pipeline" => p.spec.name.clone())
                        .increment(1);
                    continue;
                };
                p.counts.readings_in.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(self.metrics.readings_in, "pipeline" => p.spec.name.clone())
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
                    metrics::counter!(self.metrics.late, "pipeline" => p.spec.name.clone())
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

    /// Closes windows that ended before `now` (nanoseconds): what no later reading closed.
    pub fn flush(&self, now: i64) -> Vec<Output> {
        let mut outputs: Vec<Output> = Vec::new();
        for p in self.pipelines() {
            let mut chains = p.chains.lock().unwrap_or_else(PoisonError::into_inner);
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

    /// Publishes `outputs` on `bus`; `false` if `stop` fired before all went out.
    pub async fn publish(&self, bus: &Bus, outputs: Vec<Output>, stop: &Shutdown) -> bool {
        for o in outputs {
            let p = self.get(&o.pipeline);
            for alert in &o.alerts {
                if let Some(p) = &p {
                    p.counts.alerts.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!(self.metrics.alerts, "pipeline" => o.pipeline.clone())
                    .increment(1);
                tracing::info!(
                    pipeline = o.pipeline,
                    device = o.device,
                    condition = alert.condition,
                    severity = alert.severity,
                    "alert"
                );
                let topic = topics::alert(&self.base, &o.pipeline, &o.device);
                if !until_sent("an alert", stop, || bus.publish(&topic, alert)).await {
                    return false;
                }
            }
            if o.samples.is_empty() {
                continue;
            }
            for (origin, samples) in by_origin(o.samples) {
                let n = samples.len() as u64;
                let req = AddEventRequest {
                    base: BaseRequest::default(),
                    event: event(&o.pipeline, &o.device, &o.profile, origin, samples),
                };
                let topic = topics::rules_event(&self.base, &o.pipeline, &o.profile, &o.device);
                if let Some(p) = &p {
                    p.counts.waiting.fetch_add(1, Ordering::Relaxed);
                }
                if !until_sent("a pipeline's output", stop, || {
                    bus.publish_event(&topic, &req)
                })
                .await
                {
                    return false;
                }
                if let Some(p) = &p {
                    p.counts.waiting.fetch_sub(1, Ordering::Relaxed);
                    p.counts.readings_out.fetch_add(n, Ordering::Relaxed);
                    p.counts.events_out.fetch_add(1, Ordering::Relaxed);
                }
                metrics::counter!(self.metrics.readings_out, "pipeline" => o.pipeline.clone())
                    .increment(n);
            }
        }
        true
    }
}

/// Samples grouped by origin, in the order the origins first appear: samples of one
/// origin go together in one event.
fn by_origin(samples: Vec<Sample>) -> Vec<(i64, Vec<Sample>)> {
    let mut groups: Vec<(i64, Vec<Sample>)> = Vec::new();
    for s in samples {
        match groups.iter_mut().find(|(t, _)| *t == s.origin) {
            Some((_, v)) => v.push(s),
            None => groups.push((s.origin, vec![s])),
        }
    }
    groups
}

/// The EdgeX event a pipeline emits for a device: its source is the pipeline, its
/// readings Float64.
fn event(pipeline: &str, device: &str, profile: &str, origin: i64, samples: Vec<Sample>) -> Event {
    Event {
        api_version: "v3".into(),
        id: uuid::Uuid::new_v4().to_string(),
        device_name: device.to_string(),
        profile_name: profile.to_string(),
        source_name: pipeline.to_string(),
        origin,
        readings: samples
            .into_iter()
            .map(|s| Reading {
                id: uuid::Uuid::new_v4().to_string(),
                origin,
                device_name: device.to_string(),
                resource_name: s.name,
                profile_name: profile.to_string(),
                value_type: ValueType::Float64,
                units: String::new(),
                tags: None,
                value: ReadingValue::Simple(format_value(s.value)),
            })
            .collect(),
        tags: None,
    }
}

/// Publishes until the bus takes it; `false` only when the service is stopping. An output
/// is never dropped because the broker was restarting, and the reading it came from is
/// acknowledged only after it went out (the caller waits here meanwhile).
async fn until_sent<F, Fut>(what: &str, stop: &Shutdown, mut send: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
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

/// A value as EdgeX Float64 reading text: exact and short, always with a decimal point
/// or an exponent.
pub fn format_value(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// A reading's value as a number, if it is one (booleans are 1 and 0).
pub fn numeric(r: &Reading) -> Option<f64> {
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

/// The client ID of the durable session: stable across restarts, so the broker keeps what
/// arrives while rules is down for it.
pub const SESSION: &str = "outpost-rules";

/// Runs the pipelines on device events until `stop`. A durable session: readings published
/// while rules is down (a restart, an upgrade) are delivered when it is back, and each is
/// acknowledged once its outputs are published.
pub async fn consume(ctx: Context, engine: Arc<Engine>, lateness: Duration, stop: Shutdown) {
    let filter = topics::device_events(&ctx.common.bus.base_topic);
    let opts = Options::durable(SESSION, 1024);
    let Some(mut consumer) = Consumer::start(&ctx, opts, &[filter], &stop).await else {
        return;
    };
    tracing::info!("running pipelines on device events");
    engine.subscribed.store(true, Ordering::Release);
    let bus = consumer.bus().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = tick.tick() => {
                let outputs = engine.flush(now_nanos() - lateness.as_nanos() as i64);
                if !engine.publish(&bus, outputs, &stop).await {
                    break;
                }
            }
            d = consumer.recv(&stop) => {
                let Some(d) = d else { break };
                if let Some(env) = bus.decode_event(&d)
                    && !engine.publish(&bus, engine.process(&env.payload.event), &stop).await
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
