//! core-metadata: device profiles, devices, device services and provision watchers
//! (port 59881), with EdgeX core-metadata v3's endpoints, status codes and multi-status
//! semantics.
//!
//! Objects live in the service's encrypted database ([`store`]); the rules that keep them
//! consistent (valid profiles, existing references, nothing in use deleted) are in
//! [`service`]; every change is announced on the bus as an EdgeX system event ([`events`]).

pub mod config;
pub mod enrollment;
pub mod events;
pub mod identity;
pub mod postgres;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod store;
pub mod uom;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use outpost_kit::{Context, Info, Parts, Start, StartError, Storage};

pub use config::Config;

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "core-metadata";

/// Why core-metadata cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read manufacturer CA {path}")]
    ManufacturerCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Uom(#[from] uom::UomError),
}

/// The node CA and the zero-touch policy.
fn enrollment(ctx: &Context) -> Result<enrollment::Enrollment, Error> {
    let cfg = ctx.common.enrollment.clone();
    let mut manufacturer_pem = String::new();
    for f in &cfg.manufacturer_ca {
        let pem = std::fs::read_to_string(f).map_err(|source| Error::ManufacturerCa {
            path: f.clone(),
            source,
        })?;
        manufacturer_pem.push_str(&pem);
        manufacturer_pem.push('\n');
    }
    Ok(enrollment::Enrollment {
        cfg,
        ca: Some(outpost_pki::Paths::new(&ctx.data_dir)),
        manufacturer_pem,
    })
}

/// The service, as the node runs it.
pub struct CoreMetadata;

impl outpost_kit::Service for CoreMetadata {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "core_metadata");

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        files.config_file(cfg.uom_file.as_deref());
        // Devices' certificates come from the node CA.
        files.node_ca();
        cfg.storage.sandbox(files, SERVICE)
    }

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(Storage::new(store::MIGRATIONS, 2))
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store = start
            .store::<dyn store::Store>(
                &cfg.storage,
                "profiles, devices, device services and provision watchers",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(store::SqliteStore::new(db)),
            )
            .await?;
        let uom = uom::load(cfg.uom_file.as_deref()).map_err(StartError::other)?;
        let link = outpost_bus::Link::start(ctx);
        let announcer = events::Announcer::start(
            &ctx.tasks,
            link.clone(),
            cfg.full_system_event_details,
            ctx.metric("system_events_dropped_total"),
            ctx.metric("system_events_published_total"),
        );
        let app = Arc::new(routes::App {
            md: service::Metadata::new(Arc::clone(&store), cfg.clone(), uom, announcer)
                .with_writable(start.writable(config::Writable::from(cfg)))
                .with_enrollment(enrollment(ctx).map_err(StartError::other)?),
            max_result_count: ctx.common.node.max_result_count,
        });
        Ok(Parts::new(routes::router(app)).health(link.probe()))
    }
}
