//! core-data: the node's local time-series store (port 59880).
//!
//! Persists every device event from the bus (`<base>/events/device/#`) and events added over
//! REST, serves EdgeX core-data v3's event and reading queries, and keeps the store within
//! its retention bounds. Ingest is durable: a bus message is acknowledged only after the
//! transaction holding its event committed ([`ingest`]).

pub mod config;
pub mod ingest;
pub mod retention;
pub mod routes;
pub mod sqlite;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_bus::{Bus, Options};
use outpost_contracts::system_event::{
    ACTION_DELETE, SystemEvent, TYPE_DEVICE, TYPE_DEVICE_PROFILE,
};
use outpost_kit::{Check, Context, health_probe};

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-data";

/// Opens the store and the ingest path over the service's database.
pub fn open(ctx: &Context, cfg: &Config) -> anyhow::Result<Arc<ingest::Ingest>> {
    let opts = ctx.common.storage.open_options();
    let db = outpost_storage::Db::open(&ctx.storage_location(), &opts, sqlite::MIGRATIONS, 2)?;
    db.checkpoint_in_background(
        &ctx.storage_location(),
        &opts,
        std::time::Duration::from_millis(250),
    )?;
    let store = sqlite::SqliteEventStore::start(
        db,
        sqlite::WriterMetrics {
            batch_events: ctx.metric("commit_batch_events"),
            commit_seconds: ctx.metric("commit_duration_seconds"),
        },
    )?;
    let validator = validate::Validator::new(
        cfg.validate_events,
        ctx.registry.clone(),
        ctx.metric("validation_skipped_total"),
    );
    Ok(Arc::new(ingest::Ingest::new(
        Arc::new(store),
        Arc::new(validator),
        ingest::IngestMetrics {
            events: ctx.metric("events_persisted_total"),
            readings: ctx.metric("readings_persisted_total"),
            duplicates: ctx.metric("events_duplicate_total"),
            rejected: ctx.metric("events_rejected_total"),
        },
    )))
}

/// Runs core-data until shutdown.
pub async fn run(ctx: Context, cfg: Config) -> anyhow::Result<()> {
    let ingest = open(&ctx, &cfg)?;
    let bus_slot: Arc<tokio::sync::OnceCell<Bus>> = Arc::default();

    let consumer = {
        let (ctx, ingest, slot) = (ctx.clone(), Arc::clone(&ingest), Arc::clone(&bus_slot));
        let (max_inflight, max_batch) = (cfg.max_inflight, cfg.max_batch_events);
        tokio::spawn(async move {
            let filter = format!("{}/events/device/#", ctx.common.bus.base_topic);
            let opts = Options::durable(format!("outpost-{SERVICE}"), max_inflight);
            let (bus, rx) = match Bus::durable_subscriber(
                &ctx.common.bus,
                &ctx.data_dir,
                SERVICE,
                opts,
                &filter,
                &ctx.shutdown,
            )
            .await
            {
                Ok(pair) => pair,
                Err(e) => {
                    if !ctx.shutdown.is_triggered() {
                        tracing::error!(error = %e, "cannot subscribe to device events");
                    }
                    return;
                }
            };
            let _ = slot.set(bus.clone());
            tracing::info!(filter, "persisting device events from the bus");
            let rx = ingest::run(ingest, bus.clone(), rx, max_batch, ctx.shutdown.clone()).await;
            if !bus.disconnect().await {
                // Still connected: late deliveries must not be answered with failure
                // acknowledgements as `rx` goes; the process is about to exit.
                std::mem::forget(rx);
            }
        })
    };

    let watcher = spawn_metadata_watcher(&ctx, &cfg, Arc::clone(&ingest));
    let retention = retention::spawn(
        Arc::clone(&ingest.store),
        cfg.retention.clone(),
        ctx.metric("retention_deleted_readings_total"),
        ctx.shutdown.clone(),
    );

    let app = Arc::new(routes::App {
        ingest: Arc::clone(&ingest),
        max_result_count: ctx.common.node.max_result_count,
        bus: Arc::clone(&bus_slot),
        publish_rest_events: cfg.publish_rest_events,
    });
    let health = {
        let (ingest, slot) = (Arc::clone(&ingest), Arc::clone(&bus_slot));
        health_probe(move || {
            let (ingest, slot) = (Arc::clone(&ingest), Arc::clone(&slot));
            async move {
                let mut checks = vec![match ingest.store.ping().await {
                    Ok(()) => Check::ok("storage"),
                    Err(e) => Check::failed("storage", e.to_string()),
                }];
                checks.push(match ingest.store.writer_health() {
                    Ok(()) => Check::ok("writes"),
                    Err(e) => Check::failed("writes", e),
                });
                checks.push(match slot.get() {
                    Some(bus) if bus.is_connected().await => Check::ok("bus"),
                    _ => Check::failed("bus", "not connected"),
                });
                checks
            }
        })
    };
    let router = ctx.router(routes::router(app), health);
    let served = ctx.serve(router, cfg.port).await;

    // Finish ingesting what arrived, acknowledge it, then close the connection.
    if tokio::time::timeout(Duration::from_secs(15), consumer)
        .await
        .is_err()
    {
        tracing::warn!(
            "ingest did not finish within 15 s; unacknowledged events stay with the broker"
        );
    }
    watcher.abort();
    retention.abort();
    served?;
    Ok(())
}

/// Follows core-metadata's system events: evicts changed devices and profiles from the
/// validation cache, and purges a deleted device's events when configured to.
fn spawn_metadata_watcher(
    ctx: &Context,
    cfg: &Config,
    ingest: Arc<ingest::Ingest>,
) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    let purge = cfg.purge_on_device_delete;
    tokio::spawn(async move {
        let opts = Options::plain(format!("outpost-{SERVICE}-metadata"));
        let Ok(bus) =
            Bus::connect(&ctx.common.bus, &ctx.data_dir, SERVICE, opts, &ctx.shutdown).await
        else {
            return;
        };
        let filter = format!(
            "{}/system-events/core-metadata/#",
            ctx.common.bus.base_topic
        );
        let mut rx = match bus.subscribe(&filter).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow metadata changes");
                return;
            }
        };
        loop {
            let d = tokio::select! {
                () = ctx.shutdown.wait() => break,
                d = rx.recv() => d,
            };
            let Some(d) = d else { break };
            let Some(env) = bus.decode::<SystemEvent>(&d) else {
                continue;
            };
            let ev = env.payload;
            let Some(name) = ev.object_name() else {
                continue;
            };
            match ev.kind.as_str() {
                TYPE_DEVICE => {
                    ingest.validator.forget_device(name);
                    if purge && ev.action == ACTION_DELETE {
                        let store = Arc::clone(&ingest.store);
                        let name = name.to_string();
                        tokio::spawn(async move {
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
                TYPE_DEVICE_PROFILE => ingest.validator.forget_profile(name),
                _ => {}
            }
        }
        bus.disconnect().await;
    })
}
