//! The cloud node (`outpost cloud`, port 59740, HTTPS): receives what edges export, stores
//! it once, and serves queries and a fleet view.
//!
//! - `POST /api/v3/ingest`: a batch from an edge, which proves who it is with the client
//!   certificate it got from `outpost cloud enroll`. JSON, optionally `Content-Encoding:
//!   zstd`. Items at or below the stream's high-water mark and events stored before (by id)
//!   are counted as duplicates, items that can never be stored are rejected with a reason;
//!   the answer says which. Anything the cloud cannot take right now is a 503, so the edge
//!   retries ([`ingest`]).
//! - `POST /api/v3/edge` `{"name": ...}`: enrolls an edge and answers its identity bundle
//!   (certificate, key, the CA to trust, the URL); `DELETE /api/v3/edge/name/{name}` revokes
//!   it (its certificate stops working at once; its data stays) ([`enroll`]).
//! - `GET /api/v3/edge/all`, `GET /api/v3/edge/name/{name}`: the fleet: last seen, backlog
//!   each edge reported, received, duplicates, rejected.
//! - `GET /api/v3/reading/edge/{edge}` (`device`, `resource`, `start`, `end`, `offset`,
//!   `limit`), `GET /api/v3/event/count/edge/{edge}`, `GET /api/v3/alert/edge/{edge}`.
//!
//! Everything except ingest, ping, health, version and the CA certificate needs the cloud's
//! admin token (`<data>/secrets/cloud-admin.token`) as a bearer token ([`routes`]).
//!
//! Retention (`[cloud.retention]`): events older than `max_age_s` (by origin, and at least
//! that long after they arrived) go with their readings, alerts too (by origin), and the
//! oldest events go while more than `max_readings` readings are stored; a pass every
//! `interval_s`, in transactions of `chunk_events` events. Data an edge sends late, or with
//! an origin in milliseconds or 0, is kept `max_age_s` after it arrived ([`retention`]).
//!
//! Modules, lowest first: [`config`], [`store`] (what the cloud needs from storage),
//! [`sqlite`] (its SQLite implementation), [`ingest`], [`enroll`], [`retention`],
//! [`routes`].

pub mod config;
pub mod enroll;
pub mod ingest;
pub mod postgres;
pub mod retention;
pub mod routes;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use outpost_kit::{Info, Parts, Stage, Start, StartError, Storage};

pub use config::Config;
pub use outpost_contracts::cloud::EdgeBundle;
pub use outpost_kit::tls::Peer;

/// The service's name.
pub const SERVICE: &str = "cloud";

/// How often the certificate pair is checked for a change on disk.
const CERT_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The service, as `outpost cloud` runs it.
pub struct Cloud;

impl outpost_kit::Service for Cloud {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "cloud").worker_threads(2).standalone();

    /// The cloud node runs alone on its data dir: everything in it is its own.
    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        let dir = files.data_dir().to_path_buf();
        files.allow(dir, outpost_kit::sandbox::Access::Own);
        for f in cfg.storage.files() {
            files.config_file(Some(f));
        }
        Ok(())
    }

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(
            Storage::new(sqlite::MIGRATIONS, 2)
                .min_cache_kib(cfg.cache_kib)
                .checkpoint_every(Duration::from_secs(30)),
        )
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let store = start
            .store::<dyn store::Store>(
                &cfg.storage,
                "what edges send (events, readings, alerts)",
                async |c, secrets| Ok(Arc::new(postgres::PgStore::open(c, secrets).await?) as _),
                |db| Arc::new(sqlite::SqliteStore::new(db)),
            )
            .await?;
        let admin_token = outpost_storage::load_or_create_token(&ctx.secrets_dir(), "cloud-admin")
            .map_err(StartError::other)?;
        let pki = outpost_pki::Paths::cloud(&ctx.data_dir);
        let names = outpost_pki::default_names(&ctx.common.node.advertise_host, &cfg.tls_names);
        {
            let (p, n) = (pki.clone(), names.clone());
            tokio::task::spawn_blocking(move || outpost_pki::ensure_server_cert(&p, &n))
                .await
                .map_err(StartError::other)?
                .map_err(StartError::other)?;
        }
        let reloader = outpost_pki::Reloader::new(pki.cert.clone(), pki.key.clone())
            .map_err(StartError::other)?;
        let ca_pem = std::fs::read_to_string(&pki.ca_cert).map_err(StartError::other)?;
        let tls = Arc::new(
            outpost_pki::server_config_with_clients(Arc::clone(&reloader.resolver), &ca_pem)
                .map_err(StartError::other)?,
        );
        let public_url = cfg.public_url(&ctx.common.node.advertise_host);
        tracing::info!(url = %public_url, "cloud node");
        let app = Arc::new(routes::App {
            store: Arc::clone(&store),
            ingest: ingest::Ingest {
                store: Arc::clone(&store),
                max_body_bytes: cfg.max_body_bytes,
                max_batch_bytes: cfg.max_batch_bytes,
                metrics: ingest::Metrics::new(ctx),
            },
            enroller: enroll::Enroller {
                store: Arc::clone(&store),
                client_cert_days: cfg.client_cert_days,
                public_url,
                pki: pki.clone(),
            },
            ca_cert: pki.ca_cert.clone(),
            admin_token,
        });
        // Reload a changed certificate pair without a restart.
        ctx.tasks.spawn(
            "certificate-reload",
            Stage::Background,
            move |stop| async move {
                let mut reloader = reloader;
                let mut tick = tokio::time::interval(CERT_RELOAD_EVERY);
                loop {
                    tokio::select! {
                        () = stop.wait() => return,
                        _ = tick.tick() => { reloader.check(); }
                    }
                }
            },
        );
        {
            let (retention, metrics) = (
                cfg.retention.clone(),
                retention::Metrics {
                    removed: ctx.metric("retention_removed_readings_total"),
                    stored: ctx.metric("readings_stored"),
                    passes: ctx.metric("retention_passes_total"),
                },
            );
            ctx.tasks
                .spawn("retention", Stage::Background, move |stop| {
                    retention::keep(store, retention, metrics, stop)
                });
        }
        let guard = Arc::clone(&app);
        Ok(Parts::new(routes::router(app)).tls(tls).wrap(move |r| {
            r.layer(axum::middleware::from_fn_with_state(
                guard,
                routes::admin_only,
            ))
        }))
    }
}
