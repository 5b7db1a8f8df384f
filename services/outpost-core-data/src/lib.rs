//! core-data: the node's local time-series store (port 59880).
//!
//! Persists every device event from the bus (`<base>/events/device/#`) and events added over
//! REST, serves EdgeX core-data v3's event and reading queries, and keeps the store within
//! its retention bounds. Ingest is durable: a bus message is acknowledged only after the
//! transaction holding its event committed ([`ingest`]).

pub mod config;
pub mod ingest;
pub mod postgres;
pub mod retention;
pub mod routes;
pub mod sqlite;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_bus::metadata::{Change, MetadataView, ViewConfig};
use outpost_bus::{Consumer, Link, Options};
use outpost_contracts::system_event::{ACTION_DELETE, TYPE_DEVICE};
use outpost_contracts::topics;
use outpost_kit::{
    Check, Context, Info, Parts, Shutdown, Stage, Start, StartError, Storage, health_probe,
};
use tokio::sync::broadcast;

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-data";

/// The client ID of core-data's durable consumer of device events on the bus.
pub const BUS_CLIENT: &str = "outpost-core-data";

/// The group core-data's instances consume device events as, when they share a store.
pub const BUS_GROUP: &str = "core-data";

/// core-data's consumer of device events: its client ID and filter. With its own store
/// (SQLite) one instance consumes everything; instances sharing one (PostgreSQL) consume as
/// the group [`BUS_GROUP`] (`$share/core-data/...`), so the bus hands each event to one of
/// them and the broker's journal redelivers to another what one that died left.
pub fn bus_consumer(cfg: &Config, instance: &str, base_topic: &str) -> (String, String) {
    let filter = topics::device_events(base_topic);
    let client = if instance.is_empty() {
        BUS_CLIENT.to_string()
    } else {
        format!("{BUS_CLIENT}-{instance}")
    };
    if cfg.storage.is_postgres() {
        (client, format!("$share/{BUS_GROUP}/{filter}"))
    } else {
        (client, filter)
    }
}

/// The ingest path over `store`, checking events against `view`.
pub fn open(
    ctx: &Context,
    cfg: &Config,
    store: Arc<dyn store::EventStore>,
    view: MetadataView,
    live: outpost_kit::writable::Live<config::Writable>,
) -> Arc<ingest::Ingest> {
    let validator = validate::Validator::new(
        cfg.validate_events,
        view,
        ctx.metric("validation_skipped_total"),
    )
    .accept_unknown_devices(cfg.accept_unknown_devices);
    Arc::new(
        ingest::Ingest::new(store, Arc::new(validator), ingest::IngestMetrics::new(ctx))
            .with_writable(live),
    )
}

/// The configured store: the service's SQLite database, or PostgreSQL.
async fn store(start: &Start<Config>) -> Result<Arc<dyn store::EventStore>, StartError> {
    let Start { ctx, cfg, .. } = start;
    if cfg.storage.is_postgres() {
        let pg = postgres::PgEventStore::open(&cfg.storage, &ctx.secrets_dir())
            .await
            .map_err(StartError::other)?;
        tracing::info!(
            url = %outpost_kit::pg::redact(&cfg.storage.url),
            "events are kept in PostgreSQL"
        );
        return Ok(Arc::new(pg));
    }
    let sqlite = sqlite::SqliteEventStore::start(start.db()?, sqlite::WriterMetrics::new(ctx))
        .map_err(StartError::other)?;
    Ok(Arc::new(sqlite))
}

/// The service, as the node runs it.
pub struct CoreData;

impl outpost_kit::Service for CoreData {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "core_data").worker_threads(2);

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        // Commits stay short: checkpoints run beside the writer.
        Some(Storage::new(sqlite::MIGRATIONS, 2).checkpoint_every(Duration::from_millis(250)))
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        cfg.storage.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let view = MetadataView::start(ctx, ViewConfig::default());
        let live = start.writable(config::Writable {
            persist_data: cfg.persist_data,
            max_result_count: ctx.common.node.max_result_count,
        });
        let ingest = open(ctx, cfg, store(&start).await?, view.clone(), live);
        // REST-added events are republished through the service's own connection, which
        // closes after the last request was served.
        let link = Link::start(ctx);
        let consumer = Arc::new(ConsumerState::default());
        {
            let (ctx, ingest, state) = (ctx.clone(), Arc::clone(&ingest), Arc::clone(&consumer));
            let (max_inflight, max_batch) = (cfg.max_inflight, cfg.max_batch_events);
            let consumer = bus_consumer(cfg, &ctx.common.node.instance, &ctx.common.bus.base_topic);
            ctx.clone()
                .tasks
                .spawn("ingest", Stage::AfterServing, move |stop| async move {
                    consume(ctx, ingest, state, consumer, max_inflight, max_batch, stop).await;
                });
        }
        if cfg.purge_on_device_delete {
            let (view, ingest) = (view.clone(), Arc::clone(&ingest));
            ctx.tasks
                .spawn("purge-deleted", Stage::Background, move |stop| {
                    purge_deleted(view, ingest, stop)
                });
        }
        let retention = Arc::new(retention::Retention::new(
            Arc::clone(&ingest.store),
            cfg.retention.clone(),
            ctx.metric("retention_deleted_readings_total"),
        ));
        {
            let retention = Arc::clone(&retention);
            ctx.tasks
                .spawn("retention", Stage::Background, move |stop| {
                    retention.keep(stop)
                });
        }
        let app = Arc::new(routes::App {
            ingest: Arc::clone(&ingest),
            retention,
            bus: link.clone(),
            tasks: ctx.tasks.clone(),
            publish_rest_events: cfg.publish_rest_events,
        });
        let health = health_probe(move || {
            let (ingest, consumer, link) =
                (Arc::clone(&ingest), Arc::clone(&consumer), link.clone());
            let metadata = view.check();
            async move {
                let writes = match ingest.store.writer_health() {
                    Ok(()) => Check::ok("writes"),
                    Err(e) => Check::failed("writes", e),
                };
                let bus = match consumer.bus.get() {
                    Some(bus) if bus.is_connected().await => Check::ok("ingest"),
                    _ => Check::failed("ingest", "not subscribed to device events"),
                };
                let link = link.check().await;
                vec![writes, bus, link, metadata]
            }
        });
        Ok(Parts::new(routes::router(app)).health(health))
    }
}

/// The ingest connection, once subscribed (for health).
#[derive(Default)]
struct ConsumerState {
    bus: std::sync::OnceLock<outpost_bus::Bus>,
}

/// Persists device events from the bus until `stop`, then drains and closes.
async fn consume(
    ctx: Context,
    ingest: Arc<ingest::Ingest>,
    state: Arc<ConsumerState>,
    (client, filter): (String, String),
    max_inflight: u16,
    max_batch: usize,
    stop: Shutdown,
) {
    let opts = Options::durable(client, max_inflight);
    let Some(mut consumer) = Consumer::start(&ctx, opts, &[filter], &stop).await else {
        return;
    };
    tracing::info!("persisting device events from the bus");
    let _ = state.bus.set(consumer.bus().clone());
    ingest::run(ingest, &mut consumer, max_batch, stop).await;
    consumer.close().await;
}

/// Purges the events of devices core-metadata deletes (`purge_on_device_delete`).
async fn purge_deleted(view: MetadataView, ingest: Arc<ingest::Ingest>, stop: Shutdown) {
    let mut changes = view.changes();
    // Purges run one at a time, owned here.
    let mut purges = tokio::task::JoinSet::new();
    loop {
        let change = tokio::select! {
            () = stop.wait() => return,
            c = changes.recv() => c,
        };
        while purges.try_join_next().is_some() {}
        let ev = match change {
            Ok(Change::Event(ev)) => ev,
            Ok(Change::Resync) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "metadata changes came faster than they were read"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if ev.kind != TYPE_DEVICE || ev.action != ACTION_DELETE {
            continue;
        }
        let Some(name) = ev.object_name().map(str::to_string) else {
            continue;
        };
        let store = Arc::clone(&ingest.store);
        purges.spawn(async move {
            match store.delete_device(name.clone()).await {
                Ok(n) => {
                    tracing::info!(device = %name, readings = n, "purged a deleted device's events")
                }
                Err(e) => {
                    tracing::warn!(device = %name, error = %e, "cannot purge a deleted device's events")
                }
            }
        });
    }
}
