//! core-keeper: the service registry and key/value configuration store (port 59890).
//!
//! Speaks EdgeX core-keeper's v3 API and adds what it lacks: push heartbeats with a TTL
//! (an instance whose heartbeats stop is DOWN, and removed after a grace period), active HTTP
//! checks for instances that do not heartbeat, and change notifications by long-poll
//! (`/registry/all?waitIndex=`) or server-sent events (`/registry/watch`). State is kept in
//! the service's encrypted database and survives restarts.

pub mod config;
pub mod postgres;
pub mod registry;
pub mod routes;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use outpost_kit::{Info, Parts, Stage, Start, StartError, Storage};

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-keeper";

/// Builds the API router over a store (used by [`CoreKeeper`] and by tests).
pub async fn app(
    cfg: &Config,
    store: Arc<dyn store::Store>,
) -> Result<Arc<routes::AppState>, outpost_storage::StorageError> {
    let registry = registry::Registry::load(cfg.clone(), Arc::clone(&store)).await?;
    Ok(Arc::new(routes::AppState {
        registry,
        store,
        max_wait_ms: cfg.max_wait_ms,
        registry_polls: long_polls("registry"),
        kv_polls: long_polls("kv"),
        kv_index: tokio::sync::watch::channel(
            u64::try_from(outpost_contracts::now_millis()).unwrap_or_default(),
        )
        .0,
    }))
}

/// The gauge of requests waiting in a long-poll on the registry or on the key/value store.
fn long_polls(on: &'static str) -> metrics::Gauge {
    let name = outpost_kit::telemetry::metric_name(SERVICE, "long_polls_waiting");
    metrics::gauge!(name, "on" => on)
}

/// The service, as the node runs it.
pub struct CoreKeeper;

impl outpost_kit::Service for CoreKeeper {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "core_keeper")
        .no_registry_view()
        .no_bus();

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(Storage::new(store::MIGRATIONS, 2))
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        cfg.storage.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let store = start
            .store::<dyn store::Store>(
                &start.cfg.storage,
                "registrations and key/values",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(store::SqliteStore::new(db)),
            )
            .await?;
        let state = app(&start.cfg, store).await.map_err(StartError::other)?;
        let registry = Arc::clone(&state.registry);
        start
            .ctx
            .tasks
            .spawn("expiry", Stage::Background, move |stop| {
                registry.keep_sweeping(stop)
            });
        Ok(Parts::new(routes::router(state)))
    }
}
