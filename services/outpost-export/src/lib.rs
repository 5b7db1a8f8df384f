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
//!
//! Modules: [`config`] (the `[export]` section), [`sink`] (where a batch goes and how its
//! delivery failed), [`dest`] (a destination: its queue, sink and send state; appending),
//! [`consume`] (the bus side), [`send`] (the sender of one destination), [`gauges`] (queue
//! metrics), [`store`] (what export keeps in its database: dead letters) and [`sqlite`]
//! (that store in SQLite), [`routes`] (the HTTP API).

pub mod config;
pub mod consume;
pub mod dest;
pub mod gauges;
pub mod routes;
pub mod send;
pub mod sink;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use outpost_bus::Options;
use outpost_kit::{Info, Parts, Stage, Start, StartError, Storage, health_probe};

pub use config::Config;
use dest::{Dest, Metrics};
use store::DeadLetterStore;

/// The service's registry ID.
pub const SERVICE: &str = "export";

/// The service, as the node runs it.
pub struct Export;

impl outpost_kit::Service for Export {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "export").no_registry_view();

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(sqlite::MIGRATIONS, 1))
    }

    fn standby(cfg: &Config) -> Option<&outpost_kit::pg::StorageConfig> {
        Some(&cfg.standby)
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        cfg.standby.sandbox(files, SERVICE)?;
        files.own_dir("queue")?;
        files.secret("export.key")?;
        for d in &cfg.destinations {
            // The identity bundle is followed for changes: a rotated one is written over it.
            files.replaced_config_file(d.identity.as_deref());
            for f in [&d.ca_file, &d.cert_file, &d.key_file, &d.password_file] {
                files.config_file(f.as_deref());
            }
        }
        Ok(())
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let key = outpost_storage::load_or_create_secret(&ctx.secrets_dir().join("export.key"))
            .map_err(StartError::other)?;
        let queue_root = ctx.data_dir.join("queue");
        outpost_storage::ensure_private_dir(&queue_root).map_err(StartError::other)?;
        dest::warn_orphaned_queues(&queue_root, &cfg.destinations);
        let mut dests = Vec::new();
        for d in &cfg.destinations {
            let d = Dest::open(d, &queue_root, key)
                .await
                .map_err(StartError::other)?;
            dests.push(Arc::new(d));
        }
        let dead: Arc<dyn DeadLetterStore> = Arc::new(sqlite::SqliteDeadLetters::new(start.db()?));
        let names = Metrics::new(ctx);
        for d in &dests {
            let (d, dead) = (Arc::clone(d), Arc::clone(&dead));
            ctx.tasks.spawn("sender", Stage::Background, move |stop| {
                send::run(d, dead, names, stop)
            });
        }
        if !dests.is_empty() {
            let (ctx, dests) = (ctx.clone(), dests.clone());
            let opts = Options::durable(format!("outpost-{SERVICE}"), cfg.max_inflight);
            let max_append_batch = cfg.max_append_batch;
            ctx.clone()
                .tasks
                .spawn("consumer", Stage::AfterServing, move |stop| {
                    consume::run(ctx, dests, names, opts, max_append_batch, stop)
                });
        }
        {
            let dests = dests.clone();
            ctx.tasks.spawn("gauges", Stage::Background, move |stop| {
                gauges::run(dests, names, stop)
            });
        }
        let health = {
            let dests = dests.clone();
            health_probe(move || {
                let checks: Vec<_> = dests.iter().map(|d| d.check()).collect();
                async move { checks }
            })
        };
        let app = Arc::new(routes::App {
            dests,
            dead,
            base_topic: ctx.common.bus.base_topic.clone(),
            metrics: names,
        });
        Ok(Parts::new(routes::router(app)).health(health))
    }
}
