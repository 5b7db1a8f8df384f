//! core-metadata: device profiles, devices, device services and provision watchers
//! (port 59881), with EdgeX core-metadata v3's endpoints, status codes and multi-status
//! semantics.
//!
//! Objects live in the service's encrypted database ([`store`]); the rules that keep them
//! consistent (valid profiles, existing references, nothing in use deleted) are in
//! [`service`]; every change is announced on the bus as an EdgeX system event ([`events`]).

pub mod config;
pub mod events;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod store;
pub mod uom;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use outpost_kit::{Check, Context, health_probe};

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-metadata";

/// The node CA and the zero-touch policy.
fn enrollment(ctx: &Context) -> anyhow::Result<service::Enrollment> {
    let cfg = ctx.common.enrollment.clone();
    let mut manufacturer_pem = String::new();
    for f in &cfg.manufacturer_ca {
        let pem = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("cannot read manufacturer CA {}: {e}", f.display()))?;
        manufacturer_pem.push_str(&pem);
        manufacturer_pem.push('\n');
    }
    Ok(service::Enrollment {
        cfg,
        ca: Some(outpost_pki::Paths::new(&ctx.data_dir)),
        manufacturer_pem,
    })
}

/// Runs core-metadata until shutdown.
pub async fn run(ctx: Context, cfg: Config) -> anyhow::Result<()> {
    let db = outpost_storage::Db::open(
        &ctx.storage_location(),
        &ctx.common.storage.open_options(),
        store::MIGRATIONS,
        2,
    )?;
    let store: Arc<dyn store::Store> = Arc::new(store::SqliteStore::new(db));
    let uom = uom::load(cfg.uom_file.as_deref())?;

    let bus_slot: Arc<tokio::sync::OnceCell<outpost_bus::Bus>> = Arc::default();
    let announcer = {
        let (bus_cfg, data_dir, shutdown) = (
            ctx.common.bus.clone(),
            ctx.data_dir.clone(),
            ctx.shutdown.clone(),
        );
        let slot = Arc::clone(&bus_slot);
        events::Announcer::spawn(
            async move {
                let opts = outpost_bus::Options::plain(format!("outpost-{SERVICE}"));
                let bus = outpost_bus::Bus::connect(&bus_cfg, &data_dir, SERVICE, opts, &shutdown)
                    .await
                    .ok()?;
                let _ = slot.set(bus.clone());
                Some(bus)
            },
            cfg.full_system_event_details,
            ctx.metric("system_events_dropped_total"),
            ctx.metric("system_events_published_total"),
        )
    };
    let app = Arc::new(routes::App {
        md: service::Metadata::new(Arc::clone(&store), cfg.clone(), uom, announcer)
            .with_enrollment(enrollment(&ctx)?),
        max_result_count: ctx.common.node.max_result_count,
    });
    let health = {
        let app = Arc::clone(&app);
        let slot = Arc::clone(&bus_slot);
        health_probe(move || {
            let app = Arc::clone(&app);
            let slot = Arc::clone(&slot);
            async move {
                let mut checks = vec![match app.md.ping().await {
                    Ok(()) => Check::ok("storage"),
                    Err(e) => Check::failed("storage", e.to_string()),
                }];
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
    if let Some(bus) = bus_slot.get() {
        bus.disconnect().await;
    }
    served?;
    Ok(())
}
