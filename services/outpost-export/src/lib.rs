//! export (port 59730): forwards device data, aggregates and alerts to destinations (an
//! Outpost cloud node, HTTPS webhooks) through a durable, encrypted, bounded
//! store-and-forward queue per destination (`crates/outpost-queue`, `docs/queue.md`).
//!
//! - **In**: bus messages on each destination's `sources` (a durable MQTT session; a
//!   message is acknowledged to the broker only once every destination that takes it has
//!   it on disk, synced), and `POST /api/v3/event/{service}/{profile}/{device}/{source}`
//!   (EdgeX's AddEvent; `201` once durable, `503` with `Retry-After` when a queue is full
//!   under `refuse-new`, `507` when the disk is full).
//! - **Out**: one sender per destination sends batches in order, high priority (alerts)
//!   first, zstd-compressed; on success the batch is consumed and the next one goes at once;
//!   on a transient failure (unreachable, timeout, 5xx, 401/403/404/408/429) it retries with
//!   exponential backoff and jitter; on a permanent one (other 4xx), and for items the
//!   receiver rejects, the items go to the dead-letter store with the reason.
//! - **Status**: `GET /api/v3/export/status`, metrics `outpost_export_*`, dead letters at
//!   `/api/v3/export/deadletter/{destination}`.

pub mod config;
mod deadletter;
pub mod sink;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_bus::{Consumer, Options};
use outpost_contracts::event::AddEventRequest;
use outpost_contracts::export::{Alert, Backlog, ExportItem};
use outpost_contracts::topics;
use outpost_kit::error::{Path, Query};
use outpost_kit::{
    ApiError, Check, Context, Info, Parts, Shutdown, Stage, Start, StartError, Storage,
    health_probe,
};
use outpost_queue::{Priority, Queue, QueueError};
use serde::{Deserialize, Serialize};

pub use config::Config;
use config::{Destination, topic_matches};
use deadletter::DeadLetters;
use sink::{SendError, Sink};

/// The service's registry ID.
pub const SERVICE: &str = "export";

fn now_ms() -> u64 {
    u64::try_from(outpost_contracts::now_millis()).unwrap_or(0)
}

/// How a destination's sender is doing.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendState {
    /// Whether the last attempt succeeded.
    pub connected: bool,
    pub last_success_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// When the next retry goes, if it is backing off.
    pub next_retry_ms: Option<u64>,
    pub sent_items: u64,
    pub sent_batches: u64,
    pub wire_bytes: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub transient_failures: u64,
    pub permanent_failures: u64,
    /// Items refused because they can never fit in the queue.
    pub too_large: u64,
}

struct Metrics {
    items: &'static str,
    bytes: &'static str,
    oldest: &'static str,
    appended: &'static str,
    sent: &'static str,
    wire: &'static str,
    failures: &'static str,
    dropped: &'static str,
    dead: &'static str,
}

/// One destination: its queue, its sink and how sending goes.
pub struct Dest {
    pub cfg: Destination,
    queue: Mutex<Queue>,
    incarnation: u64,
    wake: tokio::sync::Notify,
    sink: Sink,
    state: Mutex<SendState>,
    /// Queue counters already turned into metrics.
    reported: Mutex<outpost_queue::Counters>,
}

impl Dest {
    fn state(&self) -> std::sync::MutexGuard<'_, SendState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn priority_of(&self, topic: &str) -> Priority {
        if self
            .cfg
            .high_priority
            .iter()
            .any(|f| topic_matches(f, topic))
        {
            Priority::High
        } else {
            Priority::Normal
        }
    }

    fn takes(&self, topic: &str) -> bool {
        self.cfg.sources.iter().any(|f| topic_matches(f, topic))
    }
}

pub struct App {
    dests: Vec<Arc<Dest>>,
    dead: DeadLetters,
    base_topic: String,
    metrics: Metrics,
}

fn queue_config(d: &Destination) -> outpost_queue::Config {
    outpost_queue::Config {
        max_bytes: d.max_bytes,
        segment_bytes: 0,
        max_item_bytes: 1024 * 1024,
        ttl: (d.ttl_s > 0).then(|| Duration::from_secs(d.ttl_s)),
        overflow: match d.overflow {
            config::Overflow::DropOldest => outpost_queue::Overflow::DropOldest,
            config::Overflow::RefuseNew => outpost_queue::Overflow::RefuseNew,
        },
        sync: match d.sync {
            config::Sync::Batch => outpost_queue::SyncPolicy::Batch,
            config::Sync::None => outpost_queue::SyncPolicy::None,
        },
    }
}

/// The service, as the node runs it.
pub struct Export;

impl outpost_kit::Service for Export {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "export").no_registry_view();

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(deadletter::MIGRATIONS, 1))
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let key = outpost_storage::load_or_create_secret(&ctx.secrets_dir().join("export.key"))
            .map_err(StartError::other)?;
        let queue_root = ctx.data_dir.join("queue");
        outpost_storage::ensure_private_dir(&queue_root).map_err(StartError::other)?;
        // A destination taken out of the configuration keeps its queue: nothing is dropped
        // because a configuration changed. Say so, with what it holds.
        if let Ok(entries) = std::fs::read_dir(&queue_root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.path().is_dir() && !cfg.destinations.iter().any(|d| d.name == name) {
                    let bytes = dir_bytes(&e.path());
                    tracing::warn!(
                        destination = name,
                        bytes,
                        "a queue of a destination no longer configured is kept; configure the destination again to send it, or remove the directory"
                    );
                }
            }
        }
        let mut dests = Vec::new();
        for d in &cfg.destinations {
            let dir = queue_root.join(&d.name);
            let qc = queue_config(d);
            let queue = tokio::task::spawn_blocking(move || Queue::open(&dir, &key, qc))
                .await
                .map_err(StartError::other)?
                .map_err(StartError::other)?;
            let c = queue.counters();
            if c.corrupt_records > 0 || c.truncated_bytes > 0 {
                tracing::warn!(
                    destination = d.name,
                    corrupt_records = c.corrupt_records,
                    corrupt_bytes = c.corrupt_bytes,
                    truncated_bytes = c.truncated_bytes,
                    "queue opened with damage skipped"
                );
            }
            let sink = Sink::new(d).map_err(StartError::other)?;
            tracing::info!(
                destination = d.name,
                url = sink.url(),
                items = queue.len(),
                bytes = queue.bytes(),
                "destination ready"
            );
            dests.push(Arc::new(Dest {
                incarnation: queue.incarnation(),
                queue: Mutex::new(queue),
                cfg: d.clone(),
                wake: tokio::sync::Notify::new(),
                sink,
                state: Mutex::new(SendState::default()),
                reported: Mutex::new(outpost_queue::Counters::default()),
            }));
        }
        let app = Arc::new(App {
            dests,
            dead: DeadLetters::new(start.db()?),
            base_topic: ctx.common.bus.base_topic.clone(),
            metrics: Metrics {
                items: ctx.metric_static("queue_items"),
                bytes: ctx.metric_static("queue_bytes"),
                oldest: ctx.metric_static("queue_oldest_age_seconds"),
                appended: ctx.metric_static("items_queued_total"),
                sent: ctx.metric_static("items_sent_total"),
                wire: ctx.metric_static("wire_bytes_total"),
                failures: ctx.metric_static("send_failures_total"),
                dropped: ctx.metric_static("items_dropped_total"),
                dead: ctx.metric_static("items_dead_lettered_total"),
            },
        });
        for d in &app.dests {
            let (app, d) = (Arc::clone(&app), Arc::clone(d));
            ctx.tasks.spawn("sender", Stage::Background, move |stop| {
                sender(app, d, stop)
            });
        }
        if !app.dests.is_empty() {
            let (ctx, app, cfg) = (ctx.clone(), Arc::clone(&app), cfg.clone());
            ctx.clone()
                .tasks
                .spawn("consumer", Stage::AfterServing, move |stop| {
                    consume(ctx, app, cfg, stop)
                });
        }
        {
            let app = Arc::clone(&app);
            ctx.tasks
                .spawn("gauges", Stage::Background, move |stop| gauges(app, stop));
        }
        let health = {
            let app = Arc::clone(&app);
            health_probe(move || {
                let app = Arc::clone(&app);
                async move {
                    app.dests
                        .iter()
                        .map(|d| {
                            let s = d.state();
                            if s.consecutive_failures > 0 {
                                Check::failed(
                                    "destination",
                                    format!(
                                        "{}: {}",
                                        d.cfg.name,
                                        s.last_error.clone().unwrap_or_default()
                                    ),
                                )
                            } else {
                                Check::ok("destination")
                            }
                        })
                        .collect()
                }
            })
        };
        Ok(Parts::new(router(app)).health(health))
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Appends items to one destination's queue, off the runtime.
async fn append(d: &Arc<Dest>, priority: Priority, items: Vec<Vec<u8>>) -> Result<u64, QueueError> {
    let dest = Arc::clone(d);
    let r = tokio::task::spawn_blocking(move || dest.queue().append(priority, &items, now_ms()))
        .await
        .map_err(|e| QueueError::Io {
            dir: Default::default(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let appended = r?;
    d.wake.notify_one();
    Ok(appended.dropped)
}

/// The bus side: appends each batch of messages to the queues that take them, then
/// acknowledges them.
async fn consume(ctx: Context, app: Arc<App>, cfg: Config, stop: Shutdown) {
    let mut filters: Vec<String> = app
        .dests
        .iter()
        .flat_map(|d| d.cfg.sources.iter().cloned())
        .collect();
    filters.sort();
    filters.dedup();
    let opts = Options::durable(format!("outpost-{SERVICE}"), cfg.max_inflight);
    let Some(mut consumer) = Consumer::start(&ctx, opts, &filters, &stop).await else {
        return;
    };
    let bus = consumer.bus().clone();
    let alerts_prefix = topics::alerts_prefix(&app.base_topic);
    while let Some(batch) = consumer.batch(cfg.max_append_batch, &stop).await {
        // Per destination and priority, the items of this batch in arrival order.
        let mut groups: Vec<(usize, Priority, Vec<Vec<u8>>)> = Vec::new();
        for d in &batch {
            let item = if d.topic.starts_with(&alerts_prefix) {
                bus.decode::<Alert>(d)
                    .map(|env| ExportItem::Alert { alert: env.payload })
            } else {
                bus.decode_event(d).map(|env| ExportItem::Event {
                    event: env.payload.event,
                })
            };
            let Some(item) = item else { continue };
            let Ok(bytes) = serde_json::to_vec(&item) else {
                continue;
            };
            for (i, dest) in app.dests.iter().enumerate() {
                if !dest.takes(&d.topic) {
                    continue;
                }
                let p = dest.priority_of(&d.topic);
                match groups.iter_mut().find(|(gi, gp, _)| *gi == i && *gp == p) {
                    Some((_, _, items)) => items.push(bytes.clone()),
                    None => groups.push((i, p, vec![bytes.clone()])),
                }
            }
        }
        for (i, p, items) in groups {
            if !append_until_done(&app, &app.dests[i], p, items, &stop).await {
                // Not acknowledged: the broker delivers these again after the restart.
                drop(batch);
                consumer.close().await;
                return;
            }
        }
        for d in batch {
            d.ack();
        }
    }
    consumer.close().await;
}

/// Appends, retrying while the queue is full (refuse-new) or the disk fails; `false` if
/// shutdown came first. Items that can never fit are counted and given up.
async fn append_until_done(
    app: &App,
    d: &Arc<Dest>,
    p: Priority,
    items: Vec<Vec<u8>>,
    shutdown: &outpost_kit::Shutdown,
) -> bool {
    let mut backoff =
        outpost_kit::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let n = items.len() as u64;
    loop {
        match append(d, p, items.clone()).await {
            Ok(_) => {
                metrics::counter!(app.metrics.appended, "destination" => d.cfg.name.clone())
                    .increment(n);
                return true;
            }
            Err(QueueError::TooLarge { what, size, limit }) => {
                d.state().too_large += n;
                metrics::counter!(app.metrics.dropped, "destination" => d.cfg.name.clone(), "cause" => "too-large").increment(n);
                tracing::error!(
                    destination = d.cfg.name,
                    what,
                    size,
                    limit,
                    "items can never fit in the queue; dropped"
                );
                return true;
            }
            Err(e) => {
                if backoff.attempts() == 0 {
                    tracing::warn!(destination = d.cfg.name, error = %e, "cannot queue; holding the messages and retrying");
                }
                tokio::select! {
                    () = shutdown.wait() => return false,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// Sends one destination's queue, batch after batch.
async fn sender(app: Arc<App>, d: Arc<Dest>, shutdown: outpost_kit::Shutdown) {
    let mut backoff = outpost_kit::backoff::Backoff::new(
        Duration::from_millis(d.cfg.retry_initial_ms),
        Duration::from_millis(d.cfg.retry_max_ms),
    );
    let name = d.cfg.name.clone();
    let mut idle = true;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        if idle && d.cfg.linger_ms > 0 {
            // The first item after a quiet spell: let the batch fill a little.
            tokio::time::sleep(Duration::from_millis(d.cfg.linger_ms)).await;
        }
        let peeked = {
            let d = Arc::clone(&d);
            tokio::task::spawn_blocking(move || {
                let mut q = d.queue();
                let batch = q.peek(d.cfg.batch_max_items, d.cfg.batch_max_bytes, now_ms());
                let stats = q.stats();
                (batch, stats)
            })
            .await
        };
        let (batch, stats) = match peeked {
            Ok((Ok(b), s)) => (b, s),
            Ok((Err(e), _)) => {
                tracing::error!(destination = name, error = %e, "cannot read the queue");
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(_) => return,
        };
        let Some(batch) = batch else {
            idle = true;
            tokio::select! {
                () = shutdown.wait() => return,
                () = d.wake.notified() => {}
                // TTL expiry and gauges move even when nothing arrives.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        idle = false;
        // What waits besides this batch.
        let backlog = Backlog {
            items: stats
                .priorities
                .iter()
                .map(|p| p.items)
                .sum::<u64>()
                .saturating_sub(batch.items.len() as u64),
            bytes: stats.bytes,
            oldest_ms: stats.priorities.iter().filter_map(|p| p.oldest_ms).min(),
        };
        let result = tokio::select! {
            () = shutdown.wait() => return,
            r = d.sink.send(&batch, d.incarnation, backlog) => r,
        };
        let n = batch.items.len() as u64;
        match result {
            Ok(delivered) => {
                let mut dead = 0;
                if !delivered.rejected.is_empty() {
                    let items: Vec<_> = delivered
                        .rejected
                        .iter()
                        .filter_map(|r| {
                            batch
                                .items
                                .iter()
                                .find(|i| i.seq == r.seq)
                                .map(|i| (i.clone(), r.reason.clone()))
                        })
                        .collect();
                    dead = items.len() as u64;
                    if let Err(e) = app.dead.put(&name, batch.priority, items).await {
                        tracing::error!(destination = name, error = %e, "cannot store dead letters; retrying the batch");
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
                let acked = {
                    let d = Arc::clone(&d);
                    tokio::task::spawn_blocking(move || d.queue().ack(&batch)).await
                };
                if let Ok(Err(e)) = acked {
                    tracing::error!(destination = name, error = %e, "cannot record the sent batch; it may be sent again");
                }
                backoff.reset();
                let mut s = d.state();
                if !s.connected && s.consecutive_failures > 0 {
                    tracing::info!(
                        destination = name,
                        after_failures = s.consecutive_failures,
                        "destination reachable again; draining the queue"
                    );
                }
                s.connected = true;
                s.consecutive_failures = 0;
                s.next_retry_ms = None;
                s.last_success_ms = Some(now_ms());
                s.sent_items += n - dead;
                s.sent_batches += 1;
                s.wire_bytes += delivered.wire_bytes as u64;
                s.duplicates += delivered.duplicates;
                s.dead_lettered += dead;
                drop(s);
                metrics::counter!(app.metrics.sent, "destination" => name.clone())
                    .increment(n - dead);
                metrics::counter!(app.metrics.wire, "destination" => name.clone())
                    .increment(delivered.wire_bytes as u64);
                if dead > 0 {
                    metrics::counter!(app.metrics.dead, "destination" => name.clone())
                        .increment(dead);
                    tracing::warn!(
                        destination = name,
                        items = dead,
                        "the receiver rejected items; kept as dead letters"
                    );
                }
            }
            Err(SendError::Permanent(reason)) => {
                let items: Vec<_> = batch
                    .items
                    .iter()
                    .map(|i| (i.clone(), reason.clone()))
                    .collect();
                if let Err(e) = app.dead.put(&name, batch.priority, items).await {
                    tracing::error!(destination = name, error = %e, "cannot store dead letters; retrying the batch");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                let acked = {
                    let d = Arc::clone(&d);
                    tokio::task::spawn_blocking(move || d.queue().ack(&batch)).await
                };
                if let Ok(Err(e)) = acked {
                    tracing::error!(destination = name, error = %e, "cannot record the dead-lettered batch");
                }
                tracing::error!(
                    destination = name,
                    items = n,
                    reason,
                    "the receiver refused a batch for good; kept as dead letters"
                );
                let mut s = d.state();
                s.permanent_failures += 1;
                s.dead_lettered += n;
                s.last_error = Some(reason);
                s.last_error_ms = Some(now_ms());
                drop(s);
                metrics::counter!(app.metrics.failures, "destination" => name.clone(), "kind" => "permanent").increment(1);
                metrics::counter!(app.metrics.dead, "destination" => name.clone()).increment(n);
            }
            Err(SendError::Transient(reason)) => {
                let delay = backoff.next_delay();
                {
                    let mut s = d.state();
                    if s.consecutive_failures == 0 {
                        tracing::warn!(
                            destination = name,
                            error = reason,
                            "cannot send; keeping the data and retrying"
                        );
                    } else {
                        tracing::debug!(
                            destination = name,
                            error = reason,
                            failures = s.consecutive_failures,
                            "still cannot send"
                        );
                    }
                    s.connected = false;
                    s.consecutive_failures += 1;
                    s.transient_failures += 1;
                    s.last_error = Some(reason);
                    s.last_error_ms = Some(now_ms());
                    s.next_retry_ms = Some(now_ms() + delay.as_millis() as u64);
                }
                metrics::counter!(app.metrics.failures, "destination" => name.clone(), "kind" => "transient").increment(1);
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Queue gauges and drop counters, every second.
async fn gauges(app: Arc<App>, shutdown: outpost_kit::Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = now_ms();
        for d in &app.dests {
            let stats = d.queue().stats();
            let name = d.cfg.name.clone();
            for p in &stats.priorities {
                let prio = p.priority.as_str();
                metrics::gauge!(app.metrics.items, "destination" => name.clone(), "priority" => prio).set(p.items as f64);
                let age = p
                    .oldest_ms
                    .map_or(0.0, |o| now.saturating_sub(o) as f64 / 1000.0);
                metrics::gauge!(app.metrics.oldest, "destination" => name.clone(), "priority" => prio).set(age);
            }
            metrics::gauge!(app.metrics.bytes, "destination" => name.clone())
                .set(stats.bytes as f64);
            let mut reported = d
                .reported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let c = stats.counters;
            for (cause, now_v, before) in [
                ("overflow", c.dropped_overflow, reported.dropped_overflow),
                ("expired", c.expired, reported.expired),
                ("corrupt", c.corrupt_records, reported.corrupt_records),
            ] {
                if now_v > before {
                    metrics::counter!(app.metrics.dropped, "destination" => name.clone(), "cause" => cause).increment(now_v - before);
                }
            }
            *reported = c;
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/api/v3/event/{service}/{profile}/{device}/{source}",
            post(add_event),
        )
        .route("/api/v3/export/status", get(status))
        .route(
            "/api/v3/export/deadletter/{destination}",
            get(dead_letters).delete(purge_dead_letters),
        )
        .route(
            "/api/v3/export/deadletter/{destination}/requeue",
            post(requeue_dead_letters),
        )
        .with_state(app)
}

async fn add_event(
    State(app): State<Arc<App>>,
    Path((service, profile, device, source)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddEventRequest = outpost_kit::error::parse_json(&body)?;
    let ev = &req.event;
    if ev.profile_name != profile || ev.device_name != device || ev.source_name != source {
        return Err(ApiError::bad_request(format!(
            "event is for {}/{}/{}, the path says {profile}/{device}/{source}",
            ev.profile_name, ev.device_name, ev.source_name
        )));
    }
    if ev.id.is_empty() || ev.readings.is_empty() {
        return Err(ApiError::bad_request(
            "an event needs an id and at least one reading",
        ));
    }
    let id = ev.id.clone();
    let topic =
        outpost_contracts::topics::event(&app.base_topic, &service, &profile, &device, &source);
    let bytes =
        serde_json::to_vec(&ExportItem::Event { event: req.event }).map_err(ApiError::internal)?;
    let mut taken = Vec::new();
    for d in app.dests.iter().filter(|d| d.takes(&topic)) {
        match append(d, d.priority_of(&topic), vec![bytes.clone()]).await {
            Ok(_) => {
                metrics::counter!(app.metrics.appended, "destination" => d.cfg.name.clone())
                    .increment(1);
                taken.push(d.cfg.name.clone());
            }
            Err(e) => return Err(queue_error(&d.cfg.name, &e)),
        }
    }
    if taken.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no destination takes events on {topic}"),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 201, "id": id, "destinations": taken})),
    )
        .into_response())
}

fn queue_error(dest: &str, e: &QueueError) -> ApiError {
    match e {
        QueueError::Full { .. } => {
            let mut err = ApiError::unavailable(format!("destination {dest}: {e}"));
            err.message.push_str("; retry later");
            err
        }
        QueueError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("destination {dest}: {e}"),
        ),
        e if e.is_disk_full() => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("destination {dest}: the disk is full; nothing was queued"),
        ),
        e => ApiError::unavailable(format!("destination {dest}: {e}")),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueueStatus {
    incarnation: u64,
    items: u64,
    bytes: u64,
    max_bytes: u64,
    oldest_age_ms: Option<u64>,
    priorities: Vec<serde_json::Value>,
    appended: u64,
    dropped_overflow: u64,
    expired: u64,
    refused: u64,
    disk_full: u64,
    corrupt_records: u64,
}

async fn status(State(app): State<Arc<App>>) -> Response {
    let now = now_ms();
    let dests: Vec<_> = app
        .dests
        .iter()
        .map(|d| {
            let stats = d.queue().stats();
            let c = stats.counters;
            let queue = QueueStatus {
                incarnation: stats.incarnation,
                items: stats.priorities.iter().map(|p| p.items).sum(),
                bytes: stats.bytes,
                max_bytes: stats.max_bytes,
                oldest_age_ms: stats
                    .priorities
                    .iter()
                    .filter_map(|p| p.oldest_ms)
                    .min()
                    .map(|o| now.saturating_sub(o)),
                priorities: stats
                    .priorities
                    .iter()
                    .map(|p| serde_json::json!({"priority": p.priority.as_str(), "items": p.items, "bytes": p.bytes, "nextSeq": p.next_seq}))
                    .collect(),
                appended: c.appended,
                dropped_overflow: c.dropped_overflow,
                expired: c.expired,
                refused: c.refused,
                disk_full: c.disk_full,
                corrupt_records: c.corrupt_records,
            };
            serde_json::json!({
                "name": d.cfg.name,
                "kind": d.cfg.kind,
                "url": d.sink.url(),
                "edge": d.sink.edge,
                "queue": queue,
                "sender": *d.state(),
            })
        })
        .collect();
    Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "destinations": dests}))
        .into_response()
}

fn dest<'a>(app: &'a App, name: &str) -> Result<&'a Arc<Dest>, ApiError> {
    app.dests
        .iter()
        .find(|d| d.cfg.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no destination {name}")))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Limit {
    limit: Option<u64>,
}

async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Response, ApiError> {
    dest(&app, &name)?;
    let (total, items) = app
        .dead
        .list(&name, q.limit.unwrap_or(100).min(10_000))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "totalCount": total, "deadLetters": items})).into_response())
}

async fn purge_dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    dest(&app, &name)?;
    let n = app.dead.purge(&name).await.map_err(ApiError::internal)?;
    tracing::info!(destination = name, items = n, "dead letters removed");
    Ok(
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "removed": n}))
            .into_response(),
    )
}

/// Puts dead letters back in the queue (after the receiver was fixed).
async fn requeue_dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let d = dest(&app, &name)?;
    let (letters, max_id) = app.dead.take_all(&name).await.map_err(ApiError::internal)?;
    let mut requeued = 0u64;
    for (priority, items) in letters {
        let n = items.len() as u64;
        if let Err(e) = append(d, priority, items).await {
            return Err(queue_error(&name, &e));
        }
        requeued += n;
    }
    app.dead
        .purge_upto(&name, max_id)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(
        destination = name,
        items = requeued,
        "dead letters queued again"
    );
    let mut resp =
        Json(serde_json::json!({"apiVersion": "v3", "statusCode": 200, "requeued": requeued}))
            .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
