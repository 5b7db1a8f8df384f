//! ota (port 59750): signed firmware artifacts, stored once by SHA-256 and encrypted at rest,
//! served with HTTP ranges so interrupted downloads resume; rollouts of them to devices in
//! phases; the devices' inventory and groups.
//!
//! Modules, lowest first (a module uses only modules listed before it):
//! - [`config`], [`rollout`] (the rollout state machine), [`blob`] (encrypted payloads);
//! - [`store`] (what ota keeps, as a trait) and [`sqlite`] (its SQLite implementation);
//! - [`artifacts`] (uploads, listing, downloads) and [`devices`] (credentials, check-ins,
//!   selection by labels and groups);
//! - [`fleet`] (rollouts and the device protocol) and [`inventory`] (inventory and groups);
//! - [`routes`] (every route).
//!
//! The manifest format and the signature are documented in docs/ota.md.

pub mod artifacts;
pub mod blob;
pub mod config;
pub mod devices;
pub mod fleet;
pub mod inventory;
pub mod postgres;
pub use outpost_manifest as manifest;
pub mod rollout;
pub mod routes;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_kit::{Info, Parts, Stage, Start, StartError, Storage};

pub use config::Config;
use manifest::PublicKey;

/// The service's registry ID.
pub const SERVICE: &str = "ota";

/// Why ota cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a trusted key is not valid: {0}")]
    TrustedKey(String),
    #[error("cannot load what was stored")]
    Load(#[source] store::StoreError),
}

/// The service, as the node runs it.
pub struct Ota;

impl outpost_kit::Service for Ota {
    type Config = Config;

    // Devices poll, download and report with their own token or certificate (checked by
    // the device routes), also when they reach the service directly.
    const INFO: Info = Info::new(SERVICE, "ota").open_routes(&["/api/v3/ddi/"]);

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(Storage::new(sqlite::MIGRATIONS, sqlite::READERS))
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        cfg.storage.sandbox(files, SERVICE)?;
        files.own_dir("ota")?;
        files.secret("ota.key")?;
        // Shared with the gateway, which vouches for device certificates with it.
        files.secret(outpost_pki::vouch::KEY_FILE)?;
        Ok(())
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let keys = cfg
            .trusted_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| StartError::other(Error::TrustedKey(e))))
            .collect::<Result<Vec<_>, _>>()?;
        let master = outpost_storage::load_or_create_secret(&ctx.secrets_dir().join("ota.key"))
            .map_err(StartError::other)?;
        let store = start
            .store::<dyn store::Store>(
                &cfg.storage,
                "artifacts, rollouts and the inventory",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(sqlite::SqliteStore::new(db)),
            )
            .await?;
        tracing::info!(keys = ?keys.iter().map(PublicKey::id).collect::<Vec<_>>(), "trusted signing keys");
        let artifacts = Arc::new(
            artifacts::Artifacts::open(
                Arc::clone(&store),
                keys,
                ctx.data_dir.join("ota").join("blobs"),
                master,
                cfg.max_artifact_bytes,
            )
            .map_err(StartError::other)?,
        );
        let load = |e| StartError::other(Error::Load(e));
        let rollouts = store.rollouts().await.map_err(load)?;
        let (mut seen, mut attributes) = (HashMap::new(), HashMap::new());
        for row in store.inventory().await.map_err(load)? {
            if let Some(t) = row.last_seen_ms {
                seen.insert(row.device.clone(), t);
            }
            attributes.insert(row.device, row.attributes);
        }
        let link = outpost_bus::Link::start(ctx);
        // Credentials are checked often (every poll): remembered for a minute, and
        // forgotten at once when their device changes.
        let view = MetadataView::start(
            ctx,
            ViewConfig {
                credentials_for: std::time::Duration::from_secs(60),
                ..ViewConfig::default()
            },
        );
        let devices = Arc::new(devices::Devices::new(
            view.clone(),
            Arc::clone(&store),
            ctx.secrets_dir().join(outpost_pki::vouch::KEY_FILE),
            seen,
        ));
        let fleet = fleet::Fleet::new(
            Arc::clone(&store),
            Arc::clone(&artifacts),
            Arc::clone(&devices),
            link,
            ctx.tasks.clone(),
            cfg.poll_seconds,
            rollouts,
        );
        let inventory =
            inventory::Inventory::new(store, Arc::clone(&devices), attributes, cfg.overdue_ms());
        // Check-in times are written once more after the last request.
        ctx.tasks
            .spawn("inventory", Stage::AfterServing, move |stop| {
                devices.keep_saving(stop)
            });
        let fleet = Arc::new(fleet);
        if cfg.storage.is_postgres() {
            // Other instances may share the database: follow what they change.
            let fleet = Arc::clone(&fleet);
            ctx.tasks
                .spawn("rollouts", Stage::AfterServing, move |stop| {
                    fleet.follow(stop)
                });
        }
        let app = routes::App {
            artifacts,
            fleet,
            inventory: Arc::new(inventory),
        };
        Ok(Parts::new(routes::router(&app)).health(view.probe()))
    }
}
