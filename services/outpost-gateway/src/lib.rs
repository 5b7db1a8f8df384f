//! The API gateway (service `gateway`): the node's one entry point from outside.
//!
//! - [`conn`]: the TLS listener (HTTP/1.1 and HTTP/2, slow-client limits).
//! - [`tls`]: the node CA, the gateway certificate, reloading.
//! - [`auth`], [`token`], [`users`]: who may call what; JWTs, API keys, refresh tokens.
//! - [`proxy`], [`upstream`], [`pool`], [`cache`]: routing by registry, balancing, retries,
//!   upstream connections per event loop, caching.
//! - [`limit`] (outpost-kit's): rate limits per client identity and route.
//! - [`access`]: the access log, buffered off the request path.
//! - [`openapi`]: the API documents served under `/api/v3/openapi`.
//! - [`routes`]: the gateway's own API (login, users, keys, overview, CA, static files).
//!
//! Every request passes, outermost first: request ID (accepted or minted, returned, passed
//! upstream) → access log and metrics → authentication, role and rate limit → the gateway's
//! own routes or the proxy.

pub mod access;
pub mod auth;
pub mod cache;
pub mod config;
pub mod conn;
pub use outpost_kit::limit;
pub mod openapi;
pub mod pool;
pub mod proxy;
pub mod routes;
pub mod tally;
pub mod token;
pub mod upstream;
pub mod users;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderValue, StatusCode};
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_kit::{ApiError, Info, Parts, Shutdown, Stage, Start, StartError, Storage};
use outpost_pki as tls;
use tokio::sync::broadcast;

pub use config::Config;

use crate::auth::Need;
use crate::limit::Limiter;
use crate::users::{Identity, Users};

/// The service's registry ID.
pub const SERVICE: &str = "gateway";

/// Metric names, made once at start and kept for the life of the process (a metric
/// macro given a `&'static str` name does not allocate per request).
pub struct Metrics {
    requests: &'static str,
    duration: &'static str,
    upstream_requests: &'static str,
    upstream_duration: &'static str,
    cache: &'static str,
    rate_limited: &'static str,
    retries: &'static str,
    auth_failures: &'static str,
    access_log_dropped: &'static str,
}

pub struct App {
    pub cfg: Config,
    pub users: Users,
    pub signer: token::Signer,
    pub upstreams: upstream::Upstreams,
    pub cache: cache::Cache,
    limiter: Limiter,
    route_limiters: Vec<(String, Limiter)>,
    pub login_by_user: Limiter,
    pub login_by_addr: Limiter,
    pub m: Metrics,
    pub max_body: usize,
    pub ca_pem: PathBuf,
    /// Keys the MAC with which the gateway vouches for client certificates.
    pub cert_mac_key: [u8; 32],
    /// Calls to services for composed answers.
    pub metadata: outpost_kit::client::ServiceClient,
    pub access: access::AccessLog,
}

impl App {
    fn timeout_for(&self, path: &str) -> Duration {
        let ms = self
            .cfg
            .route_timeouts
            .iter()
            .filter(|t| path.starts_with(&t.prefix))
            .max_by_key(|t| t.prefix.len())
            .map_or(self.cfg.upstream_timeout_ms, |t| t.timeout_ms);
        Duration::from_millis(ms)
    }
}

/// A status class label.
pub fn class(s: StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// What inner layers tell the access log about a request.
#[derive(Debug, Clone, Default)]
pub struct LogSlot(Arc<Mutex<LogInfo>>);

#[derive(Debug, Default)]
struct LogInfo {
    identity: Option<Arc<str>>,
    route: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    cache: Option<&'static str>,
}

impl LogSlot {
    fn with(&self, f: impl FnOnce(&mut LogInfo)) {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }
    pub fn set_identity(&self, id: &Arc<str>) {
        self.with(|i| i.identity = Some(Arc::clone(id)));
    }
    /// The route label: the service name when it is known, else `unknown` (bounded).
    pub fn set_route(&self, service: Option<&Arc<str>>) {
        let r = service.map_or_else(|| Arc::from("unknown"), Arc::clone);
        self.with(|i| i.route = Some(r));
    }
    pub fn set_upstream(&self, id: &Arc<str>) {
        self.with(|i| i.upstream = Some(Arc::clone(id)));
    }
    pub fn set_cache(&self, c: &'static str) {
        self.with(|i| i.cache = Some(c));
    }
}

/// What the access log and metrics need to know about a request, taken before it is
/// handled.
struct Seen {
    method: http::Method,
    /// The request's URI (shares the request's memory): the log shows its path.
    uri: http::Uri,
    peer: Arc<str>,
    version: http::Version,
    start: Instant,
}

impl Seen {
    fn of(req: &Request, client: Option<&conn::Client>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            peer: match client {
                Some(c) => Arc::clone(&c.text),
                None => req
                    .extensions()
                    .get::<conn::Peer>()
                    .map(|p| p.0.to_string())
                    .unwrap_or_default()
                    .into(),
            },
            version: req.version(),
            start: Instant::now(),
        }
    }
}

/// The access log line and metrics of a handled request.
fn record(app: &App, seen: &Seen, slot: &LogSlot, status: StatusCode) {
    let elapsed = seen.start.elapsed();
    let info = std::mem::take(
        &mut *slot
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let route = info.route.unwrap_or_else(|| "unknown".into());
    count_request(app, &route, &seen.method, status, elapsed.as_secs_f64());
    let id = outpost_kit::request_id::current();
    app.access.record(&access::Line {
        time: access::Line::now(),
        request_id: id.as_deref().unwrap_or("-"),
        peer: &seen.peer,
        method: seen.method.as_str(),
        path: seen.uri.path(),
        version: version_str(seen.version),
        status: status.as_u16(),
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        identity: info.identity.as_deref().unwrap_or("-"),
        route: &route,
        upstream: info.upstream.as_deref().unwrap_or("-"),
        cache: info.cache.unwrap_or("-"),
    });
}

/// Request count and latency by route, kept per thread (routes are service names, a
/// bounded set) and handed over by [`tally::flush_thread`].
struct RouteHandles {
    duration: tally::Histogram,
    requests: Vec<(http::Method, &'static str, tally::Counter)>,
}

thread_local! {
    static ROUTES: std::cell::RefCell<std::collections::HashMap<String, RouteHandles>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn count_request(app: &App, route: &str, method: &http::Method, status: StatusCode, secs: f64) {
    let class = class(status);
    ROUTES.with(|h| {
        let mut h = h.borrow_mut();
        if !h.contains_key(route) {
            h.insert(
                route.to_string(),
                RouteHandles {
                    duration: tally::Histogram::new(
                        metrics::histogram!(app.m.duration, "route" => route.to_string()),
                    ),
                    requests: Vec::new(),
                },
            );
        }
        let Some(r) = h.get_mut(route) else {
            return;
        };
        r.duration.record(secs);
        if let Some((_, _, c)) = r
            .requests
            .iter_mut()
            .find(|(m, k, _)| m == method && *k == class)
        {
            c.increment();
            return;
        }
        let c = metrics::counter!(app.m.requests, "route" => route.to_string(), "method" => method.to_string(), "status" => class);
        // Methods are client input: only a few combinations are kept.
        if r.requests.len() < 32 {
            let mut c = tally::Counter::new(c);
            c.increment();
            r.requests.push((method.clone(), class, c));
        } else {
            c.increment(1);
        }
    });
}

/// Hands this thread's request counts and latencies to the recorder.
fn flush_request_metrics() {
    ROUTES.with(|h| {
        for r in h.borrow_mut().values_mut() {
            r.duration.flush();
            for (_, _, c) in &mut r.requests {
                c.flush();
            }
        }
    });
}

/// Access log line and metrics per request (the gateway's own routes).
async fn observe(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let slot = LogSlot::default();
    req.extensions_mut().insert(slot.clone());
    let client = req.extensions().get::<Arc<conn::Client>>().cloned();
    let seen = Seen::of(&req, client.as_deref());
    let path = seen.uri.path();
    if path.starts_with("/api/v3/") || path.starts_with("/ui") || path == "/metrics" {
        slot.set_route(Some(&Arc::from("gateway")));
    }
    let resp = next.run(req).await;
    record(&app, &seen, &slot, resp.status());
    resp
}

/// Whether a path is one of the gateway's own routes (served by its router) rather than
/// proxied to a service.
pub fn is_own(path: &str) -> bool {
    path.starts_with("/api/") || path == "/ui" || path.starts_with("/ui/") || path == "/metrics"
}

/// A proxied request, start to end: request ID, admission, proxy, access log and metrics;
/// the same steps as the middleware around the gateway's own routes, in one function on
/// the hot path.
pub async fn proxied(app: Arc<App>, mut req: Request, client: Arc<conn::Client>) -> Response {
    use outpost_kit::request_id;
    let id: Arc<str> = match request_id::carried(req.headers()) {
        Some(id) => id.into(),
        None => request_id::mint_shared(),
    };
    // One copy of the ID for the header upstream and the one on the answer.
    let id_header =
        HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(id.as_bytes())).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert(request_id::HEADER, v.clone());
    }
    let mut resp = request_id::scope(Arc::clone(&id), async move {
        let slot = LogSlot::default();
        let seen = Seen::of(&req, Some(&client));
        let admitted = admit(
            &app,
            req.method(),
            req.uri().path(),
            req.headers(),
            Some(client.addr),
            &slot,
        );
        let resp = match admitted {
            Err(refused) => *refused,
            Ok(_) => proxy::forward(&app, req, &slot, Some(&client)).await,
        };
        record(&app, &seen, &slot, resp.status());
        resp
    })
    .await;
    if let Some(v) = id_header {
        resp.headers_mut().insert(request_id::HEADER, v);
    }
    resp
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "?",
    }
}

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"outpost\""),
    );
    r
}

/// 429 with `Retry-After`.
pub fn too_many(wait: Duration, what: &str) -> Response {
    let secs = limit::retry_after_secs(wait);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{what}; retry in {secs} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

/// Establishes who calls, checks the role the route needs, and applies rate limits:
/// the caller's identity (none on public routes without a token), or the refusal.
fn admit(
    app: &App,
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    slot: &LogSlot,
) -> Result<Option<Identity>, Box<Response>> {
    let need = auth::need(method, path);
    let identity = match auth::bearer(headers) {
        Some(t) => match identify(app, t) {
            Some(i) => Some(i),
            None => {
                metrics::counter!(app.m.auth_failures, "reason" => "invalid_token").increment(1);
                if need != Need::Public {
                    return Err(Box::new(unauthorized("invalid or expired token")));
                }
                None
            }
        },
        None => None,
    };
    if let Need::Role(role) = need {
        let Some(id) = &identity else {
            metrics::counter!(app.m.auth_failures, "reason" => "no_token").increment(1);
            return Err(Box::new(unauthorized(
                "this route needs a token: log in at POST /api/v3/auth/login",
            )));
        };
        if id.role < role {
            metrics::counter!(app.m.auth_failures, "reason" => "role").increment(1);
            return Err(Box::new(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} on {path} needs the {} role; {} has {}",
                        role.as_str(),
                        id.name,
                        id.role.as_str()
                    ),
                )
                .into_response(),
            ));
        }
    }
    let anonymous;
    let key: &str = match &identity {
        Some(i) => &i.id,
        None => {
            anonymous = peer.map_or_else(|| "addr:?".to_string(), |p| format!("addr:{}", p.ip()));
            &anonymous
        }
    };
    if let Some(i) = &identity {
        slot.set_identity(&i.id);
    }
    if let Err(wait) = app.limiter.take(key) {
        metrics::counter!(app.m.rate_limited, "limit" => "client").increment(1);
        return Err(Box::new(too_many(wait, "too many requests")));
    }
    if let Some((prefix, l)) = app
        .route_limiters
        .iter()
        .filter(|(p, _)| path.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        && let Err(wait) = l.take(&format!("{key} {prefix}"))
    {
        metrics::counter!(app.m.rate_limited, "limit" => prefix.clone()).increment(1);
        return Err(Box::new(too_many(wait, "too many requests on this route")));
    }
    Ok(identity)
}

/// [`admit`] as middleware (the gateway's own routes).
async fn gate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let slot = req
        .extensions()
        .get::<LogSlot>()
        .cloned()
        .unwrap_or_default();
    match admit_request(&app, &mut req, &slot) {
        Err(refused) => *refused,
        Ok(()) => next.run(req).await,
    }
}

/// [`admit`] for a request: the admitted identity goes into its extensions.
fn admit_request(app: &App, req: &mut Request, slot: &LogSlot) -> Result<(), Box<Response>> {
    let peer = req.extensions().get::<conn::Peer>().map(|p| p.0);
    let identity = admit(
        app,
        req.method(),
        req.uri().path(),
        req.headers(),
        peer,
        slot,
    )?;
    if let Some(i) = identity {
        req.extensions_mut().insert(i);
    }
    Ok(())
}

fn identify(app: &App, token: &str) -> Option<Identity> {
    if token.starts_with("opk_") {
        return app.users.check_key(token);
    }
    let v = verified(app, token)?;
    // The user's current role counts (a demoted or removed user loses access at once).
    let role = app.users.token_role(&v.name, v.iat)?;
    Some(Identity {
        id: v.id,
        name: v.name,
        role,
    })
}

/// What a valid access token says, as a request needs it.
#[derive(Clone)]
struct Verified {
    /// `user:<name>`.
    id: Arc<str>,
    name: Arc<str>,
    iat: i64,
    exp: i64,
}

/// Who a valid, unexpired access token is for. Signatures already checked are remembered
/// per thread (a token is sent with every request of a session), so the common case is a
/// map lookup; expiry is checked every time, and revocation by [`Users::token_role`] at the
/// caller.
fn verified(app: &App, token: &str) -> Option<Verified> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    const MAX: usize = 4096;
    // Keyed by the signature (the last segment: short, and unique per token) rather than
    // the whole token, which is hashed on every request; the whole token must match too.
    /// Signature → (whole token, what it says).
    type Seen = HashMap<Box<str>, (Box<str>, Verified)>;
    thread_local! {
        static SEEN: RefCell<Seen> = RefCell::new(HashMap::new());
    }
    let key = token.rsplit('.').next().unwrap_or(token);
    let now = users::now_s();
    if let Some(v) = SEEN.with(|m| {
        m.borrow()
            .get(key)
            .filter(|(t, _)| &**t == token)
            .map(|(_, v)| v.clone())
    }) {
        return (v.exp > now).then_some(v);
    }
    let claims = app.signer.verify(token, now).ok()?;
    let v = Verified {
        id: format!("user:{}", claims.sub).into(),
        name: claims.sub.into(),
        iat: claims.iat,
        exp: claims.exp,
    };
    SEEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MAX {
            m.retain(|_, (_, v)| v.exp > now);
            if m.len() >= MAX {
                m.clear();
            }
        }
        m.insert(key.into(), (token.into(), v.clone()));
    });
    Some(v)
}

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

    fn storage(_: &Config) -> Option<Storage> {
        Some(Storage::new(users::MIGRATIONS, 2))
    }

    async fn build(start: Start<Config>) -> Result<Parts, StartError> {
        let Start { ctx, cfg, .. } = &start;
        let db = start.db()?;
        let users = Users::open(db.clone()).await.map_err(StartError::other)?;
        users
            .ensure_admin(&ctx.secrets_dir().join("admin-password"))
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

        let m = Metrics {
            requests: ctx.metric_static("requests_total"),
            duration: ctx.metric_static("request_duration_seconds"),
            upstream_requests: ctx.metric_static("upstream_requests_total"),
            upstream_duration: ctx.metric_static("upstream_duration_seconds"),
            cache: ctx.metric_static("cache_total"),
            rate_limited: ctx.metric_static("rate_limited_total"),
            retries: ctx.metric_static("retries_total"),
            auth_failures: ctx.metric_static("auth_failures_total"),
            access_log_dropped: ctx.metric_static("access_log_dropped_total"),
        };
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
            login_by_user: Limiter::new(login_refill, f64::from(cfg.login_burst)),
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
            cfg: cfg.clone(),
        });

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
            metrics: ctx.metrics.clone(),
            health: outpost_kit::service::storage_probe(db),
        };
        let public = routes::router(Arc::clone(&app), info, ctx.common.node.max_body_bytes);
        let limits = conn::Limits {
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_header_bytes: cfg.max_header_bytes,
        };
        let loops = cfg.event_loops();
        let handles = conn::spawn_loops(
            cfg.listen,
            loops,
            server_config,
            Arc::clone(&app),
            public,
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
