//! The API gateway (service `gateway`): the node's one entry point from outside.
//!
//! - [`conn`]: the TLS listener (HTTP/1.1 and HTTP/2, slow-client limits), which hands each
//!   request to the [`front`] (through [`conn::Dispatch`], so it knows nothing above it).
//! - [`front`]: own routes to [`routes`], everything else to the proxy ([`front::proxied`]).
//! - [`admission`]: the one admission policy of both paths: identity (access token or API
//!   key), the role the route needs ([`auth`]), rate limits per identity and route.
//! - [`observe`], [`stats`], [`tally`], [`access`]: the access log line and metrics of every
//!   request, kept per event loop and handed over once a second.
//! - [`proxy`], [`upstream`], [`pool`], [`cache`]: routing by registry, balancing, retries,
//!   upstream connections per event loop, caching.
//! - [`token`], [`users`]: JWTs, users, API keys, refresh tokens.
//! - [`app`]: the state both paths share; [`openapi`]: the API documents.
//! - The node CA, the gateway certificate and reloading are `outpost_pki`'s.
//!
//! Every request passes, outermost first: request ID (accepted or minted, returned, passed
//! upstream) → access log and metrics → authentication, role and rate limit → the gateway's
//! own routes or the proxy.
//!
//! Modules depend downwards only: `conn` and the leaves (`access`, `cache`, `pool`,
//! `tally`, `users`, `config`) know nothing above them; `app` → `observe` → `admission` →
//! `proxy` → `front`/`routes`; this file wires them.

pub mod access;
pub mod admission;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod conn;
pub mod console;
pub mod front;
pub mod live;
pub use outpost_kit::limit;
pub mod observe;
pub mod openapi;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod stats;
pub mod tally;
pub mod token;
pub mod upstream;
pub mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_kit::{Info, Parts, Shutdown, Stage, Start, StartError, Storage};
use outpost_pki as tls;
use tokio::sync::broadcast;

pub use config::Config;

/// The first administrator's password, under the secrets directory.
pub const ADMIN_PASSWORD: &str = "admin-password";

use crate::app::App;
use crate::limit::Limiter;
use crate::users::Users;

/// The service's registry ID.
pub const SERVICE: &str = "gateway";

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the access log {path}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &std::path::Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| {
        StartError::other(Error::Read {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// The service, as the node runs it.
pub struct Gateway;

impl outpost_kit::Service for Gateway {
    type Config = Config;

    const INFO: Info = Info::new(SERVICE, "gateway").manages_allocator();

    fn storage(cfg: &Config) -> Option<Storage> {
        if cfg.storage.is_postgres() {
            return None;
        }
        Some(Storage::new(users::MIGRATIONS, 2))
    }

    fn sandbox(
        cfg: &Config,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        use outpost_kit::sandbox::Access;
        let data = files.data_dir().to_path_buf();
        // Its server certificate, renewed while it runs, in directories of its own. A pair
        // of the older layout is dropped; the node CA issues a new one at once.
        // It issues its own server certificate from the node CA.
        files.node_ca();
        files.own_dir("tls/gateway")?;
        files.own_dir("secrets/gateway")?;
        for old in [
            "tls/gateway.pem",
            "tls/gateway.json",
            "secrets/gateway-tls.key",
        ] {
            let _ = std::fs::remove_file(data.join(old));
        }
        files.secret("gateway-jwt.key")?;
        files.secret(tls::vouch::KEY_FILE)?;
        // The first administrator's password, made before the sandbox closes and read
        // when the user is created. On PostgreSQL whether users exist is not known yet:
        // made whenever it is missing, and used only if the store has no user.
        let admin = files.secrets_dir().join(ADMIN_PASSWORD);
        if (files.first_start() || cfg.storage.is_postgres()) && !admin.exists() {
            let password = format!("{}\n", users::random_token(18));
            outpost_storage::write_secret_file(&admin, password.as_bytes())?;
        }
        files.allow(admin, Access::Read);
        if !cfg.access_log.is_empty() && cfg.access_log != "-" {
            let log = data.join(&cfg.access_log);
            match log.parent() {
                // Rotation renames within its directory.
                Some(dir) if dir != data => {
                    outpost_storage::ensure_private_dir(dir)?;
                    files.allow(dir, Access::Own);
                }
                _ => {
                    files.allow(log, Access::ReadWrite);
                }
            }
        }
        files.config_file(cfg.static_dir.as_deref());
        files.replaced_config_file(cfg.cert_file.as_deref());
        files.replaced_config_file(cfg.key_file.as_deref());
        cfg.storage.sandbox(files, SERVICE)
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let (users, db) = if cfg.storage.is_postgres() {
            let pg = users::postgres::PgUsers::open(&cfg.storage, &ctx.secrets_dir())
                .await
                .map_err(StartError::other)?;
            tracing::info!(
                url = %outpost_kit::pg::redact(&cfg.storage.url),
                "users, API keys and tokens are kept in PostgreSQL"
            );
            let users = Users::open_pg(pg).await.map_err(StartError::other)?;
            let following = users.clone();
            ctx.tasks
                .spawn("users", Stage::Background, move |stop| async move {
                    following.follow(stop).await;
                });
            (users, None)
        } else {
            let db = start.db()?;
            (
                Users::open(db.clone()).await.map_err(StartError::other)?,
                Some(db),
            )
        };
        // Health: the SQLite store's check, or whether PostgreSQL answers.
        let health = match db {
            Some(db) => outpost_kit::service::storage_probe(db),
            None => {
                let users = users.clone();
                outpost_kit::health_probe(move || {
                    let users = users.clone();
                    async move {
                        match users.reachable().await {
                            Ok(()) => vec![outpost_kit::Check::ok("storage")],
                            Err(e) => vec![outpost_kit::Check::failed("storage", e.to_string())],
                        }
                    }
                })
            }
        };
        users
            .ensure_admin(&ctx.secrets_dir().join(ADMIN_PASSWORD))
            .await
            .map_err(StartError::other)?;
        let jwt_key =
            outpost_storage::load_or_create_secret(&ctx.secrets_dir().join("gateway-jwt.key"))
                .map_err(StartError::other)?;

        // Certificates: the operator's, or the node's own.
        let paths = tls::Paths::new(&ctx.data_dir);
        let (cert, key) = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => {
                // The CA still exists for clients that fetch it, and for later uses.
                tls::ensure_ca(&paths).map_err(StartError::other)?;
                (c.clone(), k.clone())
            }
            _ => {
                let names = tls::default_names(&ctx.common.node.advertise_host, &cfg.tls_names);
                tls::ensure_server_cert(&paths, &names).map_err(StartError::other)?;
                (paths.cert.clone(), paths.key.clone())
            }
        };
        let mut reloader = tls::Reloader::new(cert, key).map_err(StartError::other)?;
        // Devices may present a client certificate: one from the node CA (`outpost device
        // enroll --cert`) or from a manufacturer CA (zero-touch). The gateway checks the
        // chain; whether the certificate is a device's, and which one's, core-metadata
        // decides.
        let mut device_cas = read(&paths.ca_cert)?;
        for f in &ctx.common.enrollment.manufacturer_ca {
            device_cas.push('\n');
            device_cas.push_str(&read(f)?);
        }
        let server_config = Arc::new(
            tls::server_config_with_clients(Arc::clone(&reloader.resolver), &device_cas)
                .map_err(StartError::other)?,
        );
        {
            let every = Duration::from_secs(cfg.cert_reload_s);
            let own = cfg.cert_file.is_none();
            let (paths, names) = (
                paths.clone(),
                tls::default_names(&ctx.common.node.advertise_host, &cfg.tls_names),
            );
            ctx.tasks
                .spawn("certificates", Stage::Background, move |stop| async move {
                    let mut tick = tokio::time::interval(every);
                    let mut checks: u64 = 0;
                    loop {
                        tokio::select! {
                            () = stop.wait() => return,
                            _ = tick.tick() => {}
                        }
                        checks += 1;
                        // Renewal of the node-issued certificate, checked about hourly.
                        if own && checks.is_multiple_of((3600 / every.as_secs().max(1)).max(1)) {
                            let (p, n) = (paths.clone(), names.clone());
                            let r = tokio::task::spawn_blocking(move || {
                                tls::ensure_server_cert(&p, &n)
                            })
                            .await;
                            if let Ok(Err(e)) = r {
                                tracing::warn!(
                                    error = format!("{e:#}"),
                                    "cannot renew the gateway certificate"
                                );
                            }
                        }
                        reloader.check();
                    }
                });
        }

        let m = stats::Metrics::new(ctx);
        let access = match cfg.access_log.as_str() {
            "" => access::AccessLog::off(),
            "-" => access::AccessLog::node_log(),
            file => {
                let path = ctx.data_dir.join(file);
                access::AccessLog::file(
                    path.clone(),
                    access::Rotation {
                        max_bytes: cfg.access_log_max_bytes,
                        keep: cfg.access_log_keep,
                    },
                    metrics::counter!(m.access_log_dropped),
                )
                .map_err(|source| StartError::other(Error::AccessLog { path, source }))?
            }
        };
        let login_refill = 1.0 / cfg.login_refill_s as f64;
        let app = Arc::new(App {
            users,
            signer: token::Signer::new(&jwt_key),
            upstreams: upstream::Upstreams::new(
                ctx.registry.clone(),
                Duration::from_millis(cfg.eject_ms),
                cfg.retry_ratio,
                cfg.retry_min_per_s,
            ),
            cache: cache::Cache::new(
                Duration::from_secs(cfg.cache_ttl_s),
                Duration::from_secs(cfg.cache_stale_s),
                cfg.cache_entries,
            ),
            limiter: Limiter::new(cfg.rate_per_s, cfg.rate_burst),
            route_limiters: cfg
                .route_limits
                .iter()
                .map(|l| (l.prefix.clone(), Limiter::new(l.rate_per_s, l.burst)))
                .collect(),
            login_by_user_addr: Limiter::new(login_refill, f64::from(cfg.login_burst)),
            login_by_user: Limiter::new(login_refill, f64::from(cfg.login_burst) * 10.0),
            login_by_addr: Limiter::new(login_refill * 4.0, f64::from(cfg.login_burst) * 4.0),
            m,
            max_body: ctx.common.node.max_body_bytes,
            ca_pem: paths.ca_cert.clone(),
            cert_mac_key: outpost_storage::load_or_create_secret(
                &ctx.secrets_dir().join(tls::vouch::KEY_FILE),
            )
            .map_err(StartError::other)?,
            metadata: outpost_kit::client::ServiceClient::new(
                ctx.registry.clone(),
                Duration::from_millis(cfg.upstream_timeout_ms),
            ),
            access,
            live: live::Hub::new(
                ctx.shutdown.clone(),
                Duration::from_secs(cfg.access_token_ttl_s.max(1)),
            ),
            cfg: cfg.clone(),
        });
        {
            let (hub, ctx2) = (Arc::clone(&app.live), ctx.clone());
            ctx.tasks
                .spawn("live-readings", Stage::Background, move |stop| {
                    hub.run(ctx2, stop)
                });
        }
        if cfg.static_dir.is_none() && !console::built() {
            tracing::warn!(
                "this binary holds no web console: build it (scripts/setup.sh, or npm ci && npm run build in web/) and build the binary again"
            );
        }

        // Metadata changes empty the cache.
        let view = MetadataView::start(ctx, ViewConfig::default());
        {
            let (view, app) = (view.clone(), Arc::clone(&app));
            ctx.tasks
                .spawn("metadata-changes", Stage::Background, move |stop| {
                    follow_metadata(view, app, stop)
                });
        }

        let info = outpost_kit::routes::ServiceInfo {
            name: ctx.name.clone(),
            version: outpost_kit::VERSION.to_string(),
            config: ctx.config_json.clone(),
            writable: ctx.writable.clone(),
            metrics: ctx.metrics.clone(),
            health,
        };
        let public = routes::router(Arc::clone(&app), info, ctx.common.node.max_body_bytes);
        let limits = conn::Limits {
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_header_bytes: cfg.max_header_bytes,
        };
        let loops = cfg.event_loops();
        let front = front::Front {
            app: Arc::clone(&app),
            router: public,
        };
        let handles = conn::spawn_loops(
            cfg.listen,
            loops,
            server_config,
            front,
            limits,
            ctx.shutdown.clone(),
        )
        .map_err(|source| {
            StartError::other(Error::Listen {
                addr: cfg.listen,
                source,
            })
        })?;
        tracing::info!(listen = %cfg.listen, event_loops = loops, "gateway listening (TLS)");
        // The event loops stop accepting when the service starts stopping, finish their
        // connections (up to 10 s) and end; then the access log is flushed.
        ctx.tasks
            .spawn("event-loops", Stage::AfterServing, move |stop| async move {
                stop.wait().await;
                let _ = tokio::task::spawn_blocking(move || {
                    for h in handles {
                        let _ = h.join();
                    }
                })
                .await;
                app.access.close();
            });
        // The plain side on loopback: health, metrics, registration.
        Ok(Parts::new(Router::new()).health(view.probe()))
    }
}

/// Empties the response cache whenever metadata changes (or may have changed while the
/// view was away).
async fn follow_metadata(view: MetadataView, app: Arc<App>, stop: Shutdown) {
    let mut changes = view.changes();
    loop {
        tokio::select! {
            () = stop.wait() => return,
            change = changes.recv() => match change {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => app.cache.invalidate(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
