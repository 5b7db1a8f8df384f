//! The service lifecycle: what a service declares, and how the kit runs it.
//!
//! A service is a unit type implementing [`Service`]: its [`Info`] (name, configuration
//! section, threads, whether it uses the bus or the registry), its configuration type (a
//! [`ServiceConfig`]: port, whether it is enabled, other listeners), the storage it needs
//! ([`Storage`]: migrations and readers), and a build step that turns a [`Start`] into the
//! [`Parts`] it runs: its API router, its health checks, its long-running tasks with their
//! stop stage ([`Stage`]), and optionally a TLS configuration. [`run`] does the rest, the
//! same way for every service:
//!
//! 0. when its instances take turns ([`Service::standby`]), waits for its turn
//!    ([`crate::turn`]);
//! 1. binds the HTTP port (a busy port fails at once, before anything is opened);
//! 2. opens the service's encrypted database and applies its migrations;
//! 3. follows the registry, when the service calls others by name;
//! 4. builds the service;
//! 5. registers, heartbeats and serves the API (with the common routes, request IDs,
//!    metrics, body limit) until shutdown or until a task fails;
//! 6. stops in one order, within [`STOP_BUDGET`]: deregisters, lets the HTTP server finish
//!    the requests in flight (at most [`HTTP_DRAIN`]), stops background tasks, then the
//!    after-serving tasks one by one in reverse declaration order (a task declared after
//!    what it uses stops first), then waits for request tasks.
//!    Whatever overruns the budget is aborted and named in the log.
//!
//! The binary lists the services in one table (`bin/outpost/src/services.rs`); that table is
//! all that knows them by name.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use outpost_storage::{Db, Migration};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{Problems, Validate};
use crate::routes::{Check, HealthProbe};
use crate::tasks::{BoxError, Stage, chain};
use crate::{Context, ServeError};

/// How long a stopping service may take in all, from the stop signal to the last task.
/// Shorter than the supervisor's default `stop_timeout_ms` (20 s), so a service stops by
/// itself, with its drain logged, before anything is killed.
pub const STOP_BUDGET: Duration = Duration::from_secs(15);

/// How long the HTTP server may take to finish the requests in flight (long polls and
/// event streams end on the stop signal themselves).
pub const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// What a service is: the facts the binary and the kit need before it runs.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// Registry ID, log and metric name (`core-data`).
    pub name: &'static str,
    /// Its section in the node's configuration (`core_data`).
    pub section: &'static str,
    /// Worker threads of its runtime: busy services get two, the others one, so an idle
    /// node fits in a few MB.
    pub worker_threads: usize,
    /// Whether it runs in an edge node's `outpost up` (the cloud node runs on its own).
    pub on_edge: bool,
    /// Whether it registers with the registry and heartbeats.
    pub registers: bool,
    /// Whether it calls other services by name (and so keeps a view of the registry).
    pub follows_registry: bool,
    /// Whether it connects to the bus, so `outpost up` starts it once the broker serves.
    pub uses_bus: bool,
    /// Whether it is the node's bus (the embedded broker).
    pub is_bus: bool,
    /// Whether it returns freed memory to the system on its own schedule, so the
    /// supervisor does not set a purge delay for it.
    pub manages_allocator: bool,
    /// Path prefixes of its API that devices call with credentials the service checks
    /// itself: open to callers without a certificate of the node's services when services
    /// use mutual TLS ([`crate::internal::guard`]).
    pub open_routes: &'static [&'static str],
}

impl Info {
    /// A service with the defaults: one worker thread, on the edge, registered, following
    /// the registry and using the bus.
    pub const fn new(name: &'static str, section: &'static str) -> Self {
        Self {
            name,
            section,
            worker_threads: 1,
            on_edge: true,
            registers: true,
            follows_registry: true,
            uses_bus: true,
            is_bus: false,
            manages_allocator: false,
            open_routes: &[],
        }
    }

    /// Routes devices call with their own credentials (see [`Info::open_routes`]).
    pub const fn open_routes(mut self, prefixes: &'static [&'static str]) -> Self {
        self.open_routes = prefixes;
        self
    }

    pub const fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n;
        self
    }

    /// Runs on its own, not in an edge node, and without a registry.
    pub const fn standalone(mut self) -> Self {
        self.on_edge = false;
        self.registers = false;
        self.follows_registry = false;
        self.uses_bus = false;
        self
    }

    /// Calls no other service by name.
    pub const fn no_registry_view(mut self) -> Self {
        self.follows_registry = false;
        self
    }

    /// The node's bus itself.
    pub const fn bus(mut self) -> Self {
        self.is_bus = true;
        self.uses_bus = false;
        self
    }

    /// Does not connect to the bus.
    pub const fn no_bus(mut self) -> Self {
        self.uses_bus = false;
        self
    }

    pub const fn manages_allocator(mut self) -> Self {
        self.manages_allocator = true;
        self
    }
}

/// Another socket a service listens on besides its HTTP port (the broker's MQTT port,
/// the gateway's HTTPS port): checked for clashes and shown when the node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// `mqtt`, `https`, `coap` (UDP).
    pub scheme: &'static str,
    pub addr: SocketAddr,
}

impl Listener {
    /// Whether it is a UDP socket (CoAP's), which shares no ports with TCP ones.
    pub fn is_udp(&self) -> bool {
        matches!(self.scheme, "coap" | "coaps")
    }
}

/// A service's section of the node configuration.
pub trait ServiceConfig:
    Validate
    + Default
    + Clone
    + std::fmt::Debug
    + PartialEq
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Its HTTP port.
    fn port(&self) -> u16;

    /// Whether `outpost up` runs it.
    fn enabled(&self) -> bool {
        true
    }

    /// The sockets it listens on besides its HTTP port.
    fn listeners(&self) -> Vec<Listener> {
        Vec::new()
    }
}

/// Implements [`ServiceConfig`] for a service's configuration with a `port` field:
/// `service_config!(Config)` (always run), `service_config!(Config, enabled)` (run when its
/// `enabled` field says so), and further sockets as `scheme => field`:
/// `service_config!(Config, enabled, "mqtt" => listen)`.
#[macro_export]
macro_rules! service_config {
    (@listeners $($scheme:literal => $field:ident),*) => {
        fn listeners(&self) -> ::std::vec::Vec<$crate::service::Listener> {
            ::std::vec![$($crate::service::Listener {
                scheme: $scheme,
                addr: self.$field,
            }),*]
        }
    };
    ($config:ty, enabled $(, $scheme:literal => $field:ident)*) => {
        impl $crate::ServiceConfig for $config {
            fn port(&self) -> u16 {
                self.port
            }

            fn enabled(&self) -> bool {
                self.enabled
            }

            $crate::service_config!(@listeners $($scheme => $field),*);
        }
    };
    ($config:ty $(, $scheme:literal => $field:ident)*) => {
        impl $crate::ServiceConfig for $config {
            fn port(&self) -> u16 {
                self.port
            }

            $crate::service_config!(@listeners $($scheme => $field),*);
        }
    };
}

/// The database a service needs: opened, keyed and migrated by the kit before the
/// service is built.
#[derive(Debug, Clone, Copy)]
pub struct Storage {
    pub migrations: &'static [Migration],
    /// Read connections beside the writer.
    pub readers: usize,
    /// A larger page cache than `[storage] cache_kib`, for write-heavy stores.
    pub min_cache_kib: u32,
    /// Move WAL checkpoints to a background thread running this often (write-heavy
    /// stores, so commits do not pay for checkpoints).
    pub checkpoint_every: Option<Duration>,
}

impl Storage {
    pub const fn new(migrations: &'static [Migration], readers: usize) -> Self {
        Self {
            migrations,
            readers,
            min_cache_kib: 0,
            checkpoint_every: None,
        }
    }

    pub const fn min_cache_kib(mut self, kib: u32) -> Self {
        self.min_cache_kib = kib;
        self
    }

    pub const fn checkpoint_every(mut self, every: Duration) -> Self {
        self.checkpoint_every = Some(every);
        self
    }
}

/// What a service is built from.
pub struct Start<C> {
    pub ctx: Context,
    pub cfg: C,
    /// The address its HTTP port is bound to.
    pub addr: SocketAddr,
    db: Option<Db>,
}

impl<C> Start<C> {
    /// The service's database (declared with [`Service::storage`]).
    pub fn db(&self) -> Result<Db, StartError> {
        self.db.clone().ok_or(StartError::NoStorage)
    }

    /// The service's store on the backend `storage` names. PostgreSQL: `postgres` connects
    /// and migrates (given the section and the secrets dir, where the values key is), and
    /// the start is logged as keeping `what` there. Otherwise `sqlite` makes it of the
    /// service's database (declared with [`Service::storage`] for that backend).
    pub async fn store<T: ?Sized>(
        &self,
        storage: &crate::pg::StorageConfig,
        what: &str,
        postgres: impl AsyncFnOnce(
            &crate::pg::StorageConfig,
            &std::path::Path,
        ) -> Result<Arc<T>, crate::pg::PgError>,
        sqlite: impl FnOnce(Db) -> Arc<T>,
    ) -> Result<Arc<T>, StartError> {
        if !storage.is_postgres() {
            return Ok(sqlite(self.db()?));
        }
        let store = postgres(storage, &self.ctx.secrets_dir())
            .await
            .map_err(StartError::other)?;
        tracing::info!(url = %crate::pg::redact(&storage.url), "{what} are kept in PostgreSQL");
        Ok(store)
    }

    /// The base URL this instance registers with (`http://host:port`).
    pub fn own_url(&self) -> String {
        self.ctx.registration(self.addr.port()).base_url()
    }

    /// Declares the service's writable settings with the values of its configuration:
    /// from then on they follow core-keeper's `edgex/v4/<service>/Writable/` keys
    /// ([`crate::writable`]).
    pub fn writable<W: crate::writable::Settings>(&self, initial: W) -> crate::writable::Live<W> {
        self.ctx.writable.declare(initial)
    }
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the service declared no storage")]
    NoStorage,
    #[error(transparent)]
    Other(#[from] BoxError),
}

impl StartError {
    /// Any error, as a start error.
    pub fn other(e: impl Into<BoxError>) -> Self {
        Self::Other(e.into())
    }
}

/// What wraps a service's whole router (its API and the common routes).
type Wrap = Box<dyn FnOnce(Router) -> Router + Send>;

/// What a built service runs.
pub struct Parts {
    api: Router,
    checks: Vec<HealthProbe>,
    tls: Option<Arc<rustls::ServerConfig>>,
    wrap: Option<Wrap>,
}

impl Parts {
    /// A service serving `api` (its own routes; the kit adds the common ones).
    pub fn new(api: Router) -> Self {
        Self {
            api,
            checks: Vec::new(),
            tls: None,
            wrap: None,
        }
    }

    /// Wraps the whole router, common routes included (an authentication layer of a
    /// service that is its own entry point, as the cloud node is).
    pub fn wrap(mut self, f: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        self.wrap = Some(Box::new(f));
        self
    }

    /// Adds health checks (storage is checked by the kit when the service has storage).
    pub fn health(mut self, probe: HealthProbe) -> Self {
        self.checks.push(probe);
        self
    }

    /// Serves the API over TLS with this configuration (client certificates reach the
    /// routes as [`crate::tls::Peer`]).
    pub fn tls(mut self, cfg: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(cfg);
        self
    }
}

/// A service the kit can run.
pub trait Service: Send + Sync + 'static {
    /// Its section of the node configuration.
    type Config: ServiceConfig;

    const INFO: Info;

    /// The database it needs, if any.
    fn storage(_cfg: &Self::Config) -> Option<Storage> {
        None
    }

    /// What it opens on disk besides its database, its database key and what every
    /// service may ([`crate::sandbox::Files::common`]): its own directories, its keys
    /// (created here when missing), configured files. Runs before the process's sandbox
    /// closes and its runtime starts; a file missing from here cannot be opened later.
    fn sandbox(
        _cfg: &Self::Config,
        _files: &mut crate::sandbox::Files,
    ) -> Result<(), outpost_storage::StorageError> {
        Ok(())
    }

    /// Where its instances take turns, for a service one instance of which runs at a time
    /// ([`crate::turn`]): the database of the lease. `None` (the default), or a SQLite
    /// backend: the instance runs at once.
    fn standby(_cfg: &Self::Config) -> Option<&crate::pg::StorageConfig> {
        None
    }

    /// Builds the service: opens what else it needs, starts its tasks on `start.ctx.tasks`,
    /// and returns what it serves.
    fn build(start: Start<Self::Config>) -> impl Future<Output = Result<Parts, StartError>> + Send;
}

/// Why a service stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot open the database")]
    Storage(#[from] outpost_storage::StorageError),
    #[error("cannot start")]
    Start(#[source] StartError),
    #[error("task {task} failed")]
    Task {
        task: &'static str,
        #[source]
        source: BoxError,
    },
}

/// A service built and ready to serve: its whole router (API, common routes, health) and
/// how it is served. Its tasks already run, owned by its context.
pub struct Assembled {
    pub router: Router,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// How long a starting service waits for core-keeper's writable values before it serves
/// with its configuration's (and takes core-keeper's when they arrive).
const FIRST_SYNC: Duration = Duration::from_secs(2);

/// Opens `S`'s storage, starts its registry view, and builds it for an HTTP port bound to
/// `addr`: everything [`run`] does before it serves. Tests drive the router this returns
/// without sockets.
pub async fn assemble<S: Service>(
    ctx: &Context,
    cfg: S::Config,
    addr: SocketAddr,
) -> Result<Assembled, RunError> {
    let db = match S::storage(&cfg) {
        Some(spec) => Some(open_storage(ctx, &spec)?),
        None => None,
    };
    if S::INFO.follows_registry {
        let registry = ctx.registry.clone();
        ctx.tasks
            .spawn("registry-view", Stage::Background, move |stop| {
                registry.watch(stop)
            });
    }
    let start = Start {
        ctx: ctx.clone(),
        cfg,
        addr,
        db: db.clone(),
    };
    let built = match S::build(start).await {
        Ok(parts) => parts,
        Err(e) => {
            // Tasks started before the failure stop with the service.
            ctx.shutdown.trigger();
            ctx.tasks
                .drain(tokio::time::Instant::now() + STOP_BUDGET)
                .await;
            return Err(RunError::Start(e));
        }
    };
    // Writable settings follow core-keeper wherever there is one to register with; the
    // values it holds are taken before serving when it answers within FIRST_SYNC (not
    // for core-keeper itself, which does not serve yet).
    if S::INFO.registers {
        let url = ctx.registry.url().to_string();
        let service = crate::registry::service_of(&ctx.name).to_string();
        let mut watcher = crate::writable::Watcher::new(ctx.writable.clone(), &url, &service);
        if !url.ends_with(&format!(":{}", addr.port())) {
            // core-keeper may be starting too: asked again until the time is up.
            let _ = tokio::time::timeout(FIRST_SYNC, async {
                while watcher.step().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
        }
        ctx.tasks
            .spawn("writable", Stage::Background, move |stop| watcher.run(stop));
    }
    let mut checks = built.checks;
    checks.push(keys_probe(ctx.secrets_dir()));
    checks.push(sandbox_probe());
    let mut router = ctx.router(built.api, health(db, checks), S::INFO.open_routes);
    if let Some(wrap) = built.wrap {
        router = wrap(router);
    }
    Ok(Assembled {
        router,
        tls: built.tls,
    })
}

/// Runs `S` until its context's shutdown fires (or a task of it fails), then stops it in
/// order (see the module documentation).
pub async fn run<S: Service>(ctx: Context, cfg: S::Config) -> Result<(), RunError> {
    // Its uptime (the registry shows it) counts from here.
    crate::started();
    if let Some(turns) = S::standby(&cfg).filter(|c| c.is_postgres())
        && !crate::turn::wait(&ctx, S::INFO.name, turns)
            .await
            .map_err(|e| RunError::Start(StartError::other(e)))?
    {
        return Ok(());
    }
    let listener = ctx.bind(ServiceConfig::port(&cfg)).await?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let assembled = assemble::<S>(&ctx, cfg, addr).await?;
    // A service's own TLS (the cloud node's) first; else, with mutual TLS between services,
    // the process's identity.
    let tls = assembled.tls.or_else(|| {
        ctx.common
            .security
            .internal_tls
            .then(crate::internal::process)
            .flatten()
            .map(|i| Arc::clone(&i.server))
    });
    let served = serve(&ctx, listener, assembled.router, tls, S::INFO.registers).await;
    ctx.shutdown.trigger();
    let stop_started = tokio::time::Instant::now();
    ctx.tasks.drain(stop_started + STOP_BUDGET).await;
    tracing::debug!(
        elapsed_ms = stop_started.elapsed().as_millis() as u64,
        "every task stopped"
    );
    served?;
    match ctx.tasks.take_failure() {
        Some((task, source)) => Err(RunError::Task { task, source }),
        None => Ok(()),
    }
}

fn open_storage(ctx: &Context, spec: &Storage) -> Result<Db, outpost_storage::StorageError> {
    let mut opts = ctx.common.storage.open_options();
    opts.cache_kib = opts.cache_kib.max(spec.min_cache_kib);
    let location = ctx.storage_location();
    let db = Db::open(&location, &opts, spec.migrations, spec.readers)?;
    if let Some(every) = spec.checkpoint_every {
        db.checkpoint_in_background(&location, &opts, every)?;
    }
    Ok(db)
}

/// The `keys` check: how the node's keys are protected at rest (sealed by a TPM, or key
/// files only), or why they cannot be opened.
fn keys_probe(secrets: std::path::PathBuf) -> HealthProbe {
    Arc::new(move || {
        let secrets = secrets.clone();
        Box::pin(async move {
            // Known after the service's first key; the first call may talk to the TPM.
            let found =
                tokio::task::spawn_blocking(move || outpost_storage::protect::in_force(&secrets))
                    .await;
            vec![match found {
                Ok(Ok(protection)) => Check {
                    name: "keys",
                    ok: true,
                    detail: protection.to_string(),
                },
                Ok(Err(e)) => Check::failed("keys", e.to_string()),
                Err(e) => Check::failed("keys", e.to_string()),
            }]
        })
    })
}

/// The `sandbox` check: how far the process's sandbox closed, and as which user it runs.
/// Passing unless the node requires the sandbox and it is not fully in force.
fn sandbox_probe() -> HealthProbe {
    Arc::new(move || {
        Box::pin(async move {
            let enforced = crate::sandbox::status();
            let uid = process_uid();
            let detail = format!(
                "{}; uid {uid}",
                enforced.map_or_else(|| "not set up".to_string(), ToString::to_string)
            );
            vec![Check {
                name: "sandbox",
                ok: true,
                detail,
            }]
        })
    })
}

/// The process's user ID, from `/proc` (no libc call needed).
fn process_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// The `storage` check of a database, as a probe.
pub fn storage_probe(db: Db) -> HealthProbe {
    health(Some(db), Vec::new())
}

/// The service's checks, after the storage check when it has storage.
fn health(db: Option<Db>, probes: Vec<HealthProbe>) -> HealthProbe {
    Arc::new(move || {
        let (db, probes) = (db.clone(), probes.clone());
        Box::pin(async move {
            let mut checks = Vec::new();
            if let Some(db) = db {
                checks.push(match db.ping().await {
                    Ok(()) => Check::ok("storage"),
                    Err(e) => Check::failed("storage", e.to_string()),
                });
            }
            for p in probes {
                checks.extend(p().await);
            }
            checks
        })
    })
}

/// Registers (when the service does), serves until shutdown, deregisters first on the
/// way out, then gives requests in flight [`HTTP_DRAIN`] to finish.
async fn serve(
    ctx: &Context,
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    registers: bool,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(service = %ctx.name, addr = %local, tls = tls.is_some(), "listening");
    let agent = registers.then(|| {
        crate::registry::spawn_agent(
            ctx.registry.clone(),
            ctx.registration(local.port()),
            Duration::from_millis(ctx.common.registry.heartbeat_interval_ms),
            ctx.shutdown.clone(),
        )
    });
    // On shutdown the service first deregisters, then stops serving: a clean stop leaves
    // the registry at once, and the registry itself can still answer its own
    // deregistration.
    let stopping = {
        let shutdown = ctx.shutdown.clone();
        async move {
            shutdown.wait().await;
            if let Some(agent) = agent {
                let _ = agent.await;
            }
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = async move {
        match tls {
            Some(tls) => {
                crate::tls::serve(listener, tls, router, rx).await;
                Ok(())
            }
            None => {
                crate::tls::serve_plain(listener, router, rx).await;
                Ok(())
            }
        }
    };
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        () = stopping => {}
    }
    let _ = tx.send(());
    match tokio::time::timeout(HTTP_DRAIN, server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                "requests still in flight after {} s; closing them",
                HTTP_DRAIN.as_secs()
            );
            Ok(())
        }
    }
}

/// A failure as one log value: the error and its sources.
pub fn describe(e: &RunError) -> String {
    chain(e)
}

/// The type-erased view of a service's configuration section, for code that handles every
/// service alike (port checks, the start banner, `/api/v3/config`).
pub trait AnySection: Send + Sync {
    fn port(&self) -> u16;
    fn enabled(&self) -> bool;
    fn listeners(&self) -> Vec<Listener>;
    fn validate(&self, p: &mut Problems);
    fn to_json(&self) -> serde_json::Value;
}

impl<C: ServiceConfig> AnySection for C {
    fn port(&self) -> u16 {
        ServiceConfig::port(self)
    }

    fn enabled(&self) -> bool {
        ServiceConfig::enabled(self)
    }

    fn listeners(&self) -> Vec<Listener> {
        ServiceConfig::listeners(self)
    }

    fn validate(&self, p: &mut Problems) {
        Validate::validate(self, p);
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}
