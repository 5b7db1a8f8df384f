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

use outpost_bus::{Bus, BusError, Consumer, Delivery, Options};
use outpost_contracts::common::BaseRequest;
use outpost_contracts::event::{AddEventRequest, Event, Reading, ReadingValue};
use outpost_contracts::export::Alert;
use outpost_contracts::value::ValueType;
use outpost_contracts::{now_nanos, topics};
use outpost_kit::backoff::Backoff;
use outpost_kit::{Context, Shutdown};
use serde::Serialize;

use crate::pipeline::{Chain, PipelineSpec, Sample};
use crate::store::{ChainRow, PipelineStore};

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

/// A chain's key: (device, profile, resource).
type Key = (String, String, String);

/// A chain, and whether it changed since its state was last checkpointed.
struct Held {
    chain: Chain,
    dirty: bool,
}

/// A pipeline and its state: one chain per device resource it took readings of.
pub struct Pipeline {
    pub spec: PipelineSpec,
    pub source: Source,
    /// The digest of `spec`, kept with its chains' checkpoints: a chain checkpointed under
    /// another spec is not taken back.
    digest: String,
    chains: Mutex<HashMap<Key, Held>>,
    counts: Counts,
}

impl Pipeline {
    fn new(spec: PipelineSpec, source: Source) -> Self {
        let json = serde_json::to_vec(&spec).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &json);
        Self {
            digest: hex::encode(&digest.as_ref()[..16]),
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
                let held = chains
                    .entry((
                        ev.device_name.clone(),
                        ev.profile_name.clone(),
                        r.resource_name.clone(),
                    ))
                    .or_insert_with(|| Held {
                        chain: Chain::new(&p.spec, &r.resource_name),
                        dirty: false,
                    });
                held.dirty = true;
                let chain = &mut held.chain;
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
                        id: derived_id(&[
                            b"alert",
                            p.spec.name.as_bytes(),
                            ev.device_name.as_bytes(),
                            r.resource_name.as_bytes(),
                            &f.rule.to_le_bytes(),
                            &f.origin.to_le_bytes(),
                        ]),
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
            for ((device, profile, _), held) in chains.iter_mut() {
                let samples = held.chain.flush(&p.spec, now);
                if samples.is_empty() {
                    continue;
                }
                held.dirty = true;
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

    /// The state of every chain that changed since the last call, to be stored; each is
    /// then taken as clean ([`Engine::redirty`] when storing failed).
    pub fn checkpoint(&self) -> Vec<ChainRow> {
        let mut rows = Vec::new();
        for p in self.pipelines() {
            let mut chains = p.chains.lock().unwrap_or_else(PoisonError::into_inner);
            for ((device, profile, resource), held) in chains.iter_mut() {
                if !held.dirty {
                    continue;
                }
                let mut state = Vec::new();
                if let Err(e) = ciborium::into_writer(&held.chain, &mut state) {
                    tracing::warn!(pipeline = p.spec.name, device, resource, error = %e, "cannot encode a chain's state");
                    continue;
                }
                held.dirty = false;
                rows.push(ChainRow {
                    pipeline: p.spec.name.clone(),
                    device: device.clone(),
                    profile: profile.clone(),
                    resource: resource.clone(),
                    spec: p.digest.clone(),
                    state,
                });
            }
        }
        rows
    }

    /// Marks the chains of `rows` as changed again: their state was not stored.
    pub fn redirty(&self, rows: &[ChainRow]) {
        for p in self.pipelines() {
            let mut chains = p.chains.lock().unwrap_or_else(PoisonError::into_inner);
            for r in rows.iter().filter(|r| r.pipeline == p.spec.name) {
                let key = (r.device.clone(), r.profile.clone(), r.resource.clone());
                if let Some(held) = chains.get_mut(&key) {
                    held.dirty = true;
                }
            }
        }
    }

    /// Takes back checkpointed chains (at start, before consuming): those of pipelines
    /// that run with the spec they were checkpointed under. How many were taken back.
    pub fn restore(&self, rows: Vec<ChainRow>) -> usize {
        let mut taken = 0;
        for p in self.pipelines() {
            let mut chains = p.chains.lock().unwrap_or_else(PoisonError::into_inner);
            for r in rows
                .iter()
                .filter(|r| r.pipeline == p.spec.name && r.spec == p.digest)
            {
                match ciborium::from_reader::<Chain, _>(r.state.as_slice()) {
                    Ok(chain) => {
                        let key = (r.device.clone(), r.profile.clone(), r.resource.clone());
                        chains.insert(
                            key,
                            Held {
                                chain,
                                dirty: false,
                            },
                        );
                        taken += 1;
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = r.pipeline, device = r.device, resource = r.resource, error = %e, "a chain's stored state cannot be read; it starts afresh")
                    }
                }
            }
        }
        taken
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
/// The ID of what a pipeline made from `parts` (its pipeline, device, origin, ...): the same
/// whenever it is made again, so an output made twice (readings delivered again after an
/// instance died between publishing an output and acknowledging its reading, and run again
/// by the next) is stored once by core-data, export and the cloud, which keep an event ID
/// once. A version 8 UUID of SHA-256 of the parts.
fn derived_id(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"outpost-rules");
    for p in parts {
        ctx.update(&(p.len() as u64).to_le_bytes());
        ctx.update(p);
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&ctx.finish().as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

pub(crate) fn event(
    pipeline: &str,
    device: &str,
    profile: &str,
    origin: i64,
    samples: Vec<Sample>,
) -> Event {
    let origin_bytes = origin.to_le_bytes();
    let mut names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let names = names.join("\0");
    let id = derived_id(&[
        b"event",
        pipeline.as_bytes(),
        device.as_bytes(),
        profile.as_bytes(),
        &origin_bytes,
        names.as_bytes(),
    ]);
    Event {
        api_version: "v3".into(),
        id: id.clone(),
        device_name: device.to_string(),
        profile_name: profile.to_string(),
        source_name: pipeline.to_string(),
        origin,
        readings: samples
            .into_iter()
            .map(|s| Reading {
                id: derived_id(&[b"reading", id.as_bytes(), s.name.as_bytes()]),
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

/// Readings taken before their chains' state is checkpointed and they are acknowledged.
pub const CHECKPOINT_READINGS: usize = 256;

/// How often what was taken is checkpointed and acknowledged when fewer readings came.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Runs the pipelines on device events until `stop`. A durable session: readings published
/// while rules is down (a restart, an upgrade, the next instance taking its turn) are
/// delivered when it is back.
///
/// A reading is acknowledged once what it caused went out (outputs, alerts) and the state
/// it left in its chains (an open window, a deadband) is checkpointed in `store`: a rules
/// that dies goes on, when started again or when the next instance takes over, from the
/// last checkpoint, with the readings taken since delivered again. An output made again
/// from those has the ID it had (`derived_id`) and is stored once downstream.
///
/// A reading whose effect was checkpointed but whose acknowledgement may not have reached
/// the bus before the last instance died comes again: `applied` (the events of the last
/// two checkpoints) tells it, and it is acknowledged without being run again.
pub async fn consume(
    ctx: Context,
    engine: Arc<Engine>,
    store: Arc<dyn PipelineStore>,
    applied: Vec<String>,
    lateness: Duration,
    stop: Shutdown,
) {
    let filter = topics::device_events(&ctx.common.bus.base_topic);
    let opts = Options::durable(SESSION, 1024);
    let Some(mut consumer) = Consumer::start(&ctx, opts, &[filter], &stop).await else {
        return;
    };
    tracing::info!("running pipelines on device events");
    engine.subscribed.store(true, Ordering::Release);
    let bus = consumer.bus().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut save = tokio::time::interval(CHECKPOINT_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batches = Batches {
        startup: applied.into_iter().collect(),
        ..Batches::default()
    };
    // Whether the chains hold what went out to nobody (stopping during a bus outage): they
    // are then not checkpointed, and everything taken comes again.
    let mut unsent = false;
    loop {
        tokio::select! {
            () = stop.wait() => break,
            _ = tick.tick() => {
                let outputs = engine.flush(now_nanos() - lateness.as_nanos() as i64);
                if !engine.publish(&bus, outputs, &stop).await {
                    unsent = true;
                    break;
                }
            }
            _ = save.tick() => checkpoint(&engine, store.as_ref(), &mut batches).await,
            d = consumer.recv(&stop) => {
                let Some(d) = d else { break };
                if let Some(env) = bus.decode_event(&d) {
                    let ev = &env.payload.event;
                    if batches.seen(&ev.id) {
                        // Delivered again (an acknowledgement lost, or taken before the
                        // checkpoint this instance started from): its effect is in the
                        // chains already. Acknowledged with the next checkpoint.
                        batches.taken.push(d);
                        continue;
                    }
                    if !engine.publish(&bus, engine.process(ev), &stop).await {
                        // Stopping with outputs not sent: left unacknowledged, so the
                        // reading is delivered again after the restart.
                        d.abandon();
                        unsent = true;
                        break;
                    }
                    batches.remember(&ev.id);
                }
                batches.taken.push(d);
                if batches.taken.len() >= CHECKPOINT_READINGS {
                    checkpoint(&engine, store.as_ref(), &mut batches).await;
                }
            }
        }
    }
    // What was taken is checkpointed and acknowledged, or (outputs unsent, the store
    // refusing) left to be delivered again.
    if !unsent {
        checkpoint(&engine, store.as_ref(), &mut batches).await;
    }
    for d in batches.taken {
        d.abandon();
    }
    consumer.close().await;
}

/// Event IDs remembered in memory against readings delivered again while rules runs.
const RECENT: usize = 4096;

/// The readings taken since the last checkpoint, and which events were applied: those of
/// this batch and the one before (stored with each checkpoint), those the checkpoint this
/// instance started from listed and that have not come again, and the last [`RECENT`].
#[derive(Default)]
struct Batches {
    taken: Vec<Delivery>,
    ids: Vec<String>,
    previous: Vec<String>,
    startup: std::collections::HashSet<String>,
    recent: std::collections::VecDeque<String>,
    recent_set: std::collections::HashSet<String>,
}

impl Batches {
    /// Whether the event `id` was applied already (a startup ID is forgotten once seen).
    fn seen(&mut self, id: &str) -> bool {
        self.startup.remove(id) || self.recent_set.contains(id)
    }

    fn remember(&mut self, id: &str) {
        self.ids.push(id.to_string());
        if self.recent.len() == RECENT
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        self.recent.push_back(id.to_string());
        self.recent_set.insert(id.to_string());
    }

    /// What a checkpoint stores as applied.
    fn applied(&self) -> Vec<String> {
        let mut all = [self.previous.as_slice(), self.ids.as_slice()].concat();
        all.extend(self.startup.iter().cloned());
        all
    }
}

/// Stores the state of the chains that changed, then acknowledges the readings `taken`
/// (all of them went through those chains). When the store refuses, nothing is
/// acknowledged and the chains are stored with the next checkpoint.
async fn checkpoint(engine: &Engine, store: &dyn PipelineStore, batches: &mut Batches) {
    let rows = engine.checkpoint();
    if rows.is_empty() && batches.taken.is_empty() {
        return;
    }
    let applied = batches.applied();
    if let Err(e) = store.save_chains(rows.clone(), applied).await {
        tracing::warn!(error = %e, readings = batches.taken.len(), "cannot checkpoint the pipelines; the readings stay unacknowledged");
        engine.redirty(&rows);
        return;
    }
    for d in batches.taken.drain(..) {
        d.ack();
    }
    batches.previous = std::mem::take(&mut batches.ids);
}

#[cfg(test)]
mod batches_tests {
    use super::*;

    #[test]
    fn events_applied_are_known_again_until_forgotten() {
        let mut b = Batches {
            startup: ["s1".to_string()].into_iter().collect(),
            ..Batches::default()
        };
        // What the checkpoint started from listed: known once, stored until it comes again.
        assert!(b.applied().contains(&"s1".to_string()));
        assert!(b.seen("s1"));
        assert!(!b.seen("s1"));
        assert!(!b.applied().contains(&"s1".to_string()));
        // Applied while running: known again (a lost acknowledgement) for RECENT events.
        b.remember("e0");
        assert!(b.seen("e0"));
        for i in 1..=RECENT {
            b.remember(&format!("e{i}"));
        }
        assert!(!b.seen("e0"), "forgotten after {RECENT} more");
        assert!(b.seen(&format!("e{RECENT}")));
        // A checkpoint stores this batch and the one before.
        b.previous = std::mem::take(&mut b.ids);
        b.remember("next");
        let stored = b.applied();
        assert!(stored.contains(&"next".to_string()) && stored.contains(&"e1".to_string()));
    }
}
