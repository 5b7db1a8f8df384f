//! core-keeper: the service registry and key/value configuration store (port 59890).
//!
//! Speaks EdgeX core-keeper's v3 API and adds what it lacks: push heartbeats with a TTL
//! (an instance whose heartbeats stop is DOWN, and removed after a grace period), active HTTP
//! checks for instances that do not heartbeat, and change notifications by long-poll
//! (`/registry/all?waitIndex=`) or server-sent events (`/registry/watch`). State is kept in
//! the service's encrypted database and survives restarts.

pub mod config;
pub mod registry;
pub mod routes;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use outpost_kit::{Check, Context, health_probe};

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-keeper";

/// Builds the API router over a store (used by [`run`] and by tests).
pub async fn app(
    cfg: &Config,
    store: Arc<dyn store::Store>,
) -> anyhow::Result<Arc<routes::AppState>> {
    let registry = registry::Registry::load(cfg.clone(), Arc::clone(&store)).await?;
    Ok(Arc::new(routes::AppState {
        registry,
        store,
        max_wait_ms: cfg.max_wait_ms,
    }))
}

/// Runs core-keeper until shutdown.
pub async fn run(ctx: Context, cfg: Config) -> anyhow::Result<()> {
    let db = outpost_storage::Db::open(
        &ctx.storage_location(),
        &ctx.common.storage.open_options(),
        store::MIGRATIONS,
        2,
    )?;
    let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::new(db));
    let state = app(&cfg, store).await?;
    let sweeper = state.registry.spawn_sweeper(ctx.shutdown.clone());
    let reg = Arc::clone(&state.registry);
    let health = health_probe(move || {
        let reg = Arc::clone(&reg);
        async move {
            match reg.ping_store().await {
                Ok(()) => vec![Check::ok("storage")],
                Err(e) => vec![Check::failed("storage", e.to_string())],
            }
        }
    });
    let router = ctx.router(routes::router(state), health);
    let served = ctx.serve(router, cfg.port).await;
    sweeper.abort();
    served?;
    Ok(())
}
