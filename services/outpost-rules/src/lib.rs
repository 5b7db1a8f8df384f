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
//! taken by the bus and the state it left (windows in progress, deadbands, alerts raised)
//! was checkpointed in the service's database; while the bus is away (a broker restart)
//! publishing is retried, and nothing further is consumed meanwhile. A restart, or the
//! next instance taking its turn (`[rules.standby]`), goes on from the last checkpoint:
//! windows keep what they had gathered, and an output made again from readings delivered
//! again has its first ID, so it is stored once.
//!
//! Windows follow the readings' origin time: a window closes when a later reading arrives,
//! or `lateness_ms` after its end by the clock. A reading for a window already closed is
//! counted as late and not used.
//!
//! Modules, lowest first: [`pipeline`] (the pure state machines), [`config`], [`store`]
//! (pipelines added over the API), [`engine`] (the running pipelines and the bus),
//! [`routes`] (the API).

pub mod config;
pub mod engine;
pub mod pipeline;
pub mod routes;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::{Check, Info, Parts, Stage, Start, StartError, Storage, health_probe};

pub use config::Config;

/// The service's registry ID.
pub const SERVICE: &str = "rules";

/// The service, as the node runs it.
pub struct Rules;

impl outpost_kit::Service for Rules {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "rules").no_registry_view();

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(store::MIGRATIONS, 1))
    }

    fn standby(cfg: &Config) -> Option<&outpost_kit::pg::StorageConfig> {
        Some(&cfg.standby)
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        cfg.standby.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store: Arc<dyn store::PipelineStore> = Arc::new(store::SqliteStore::new(start.db()?));
        let stored = store.load().await.map_err(StartError::other)?;
        let engine = Arc::new(engine::Engine::new(
            cfg.pipelines.clone(),
            stored,
            ctx.common.bus.base_topic.clone(),
            engine::Metrics::new(ctx),
        ));
        let (chains, applied) = store.chains().await.map_err(StartError::other)?;
        let restored = engine.restore(chains);
        tracing::info!(
            pipelines = engine.pipelines().len(),
            chains = restored,
            "rules loaded"
        );
        {
            let (ctx, engine, store) = (ctx.clone(), Arc::clone(&engine), Arc::clone(&store));
            let lateness = Duration::from_millis(cfg.lateness_ms);
            ctx.clone()
                .tasks
                .spawn("pipelines", Stage::AfterServing, move |stop| {
                    engine::consume(ctx, engine, store, applied, lateness, stop)
                });
        }
        let health = {
            let engine = Arc::clone(&engine);
            health_probe(move || {
                let subscribed = engine.is_subscribed();
                async move {
                    if subscribed {
                        vec![Check::ok("bus")]
                    } else {
                        vec![Check::failed("bus", "not subscribed yet")]
                    }
                }
            })
        };
        let app = Arc::new(routes::App { engine, store });
        Ok(Parts::new(routes::router(app)).health(health))
    }
}
