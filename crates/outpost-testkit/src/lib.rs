//! What the tests of every Outpost crate share, so each service's tests are only about the
//! service:
//!
//! - [`Service`]: a service built exactly as the node builds it ([`outpost_kit::service::assemble`]:
//!   its storage opened in a temporary data dir, its tasks started), with its whole router
//!   (API, common routes, health) driven without sockets ([`Service::call`]).
//! - [`context`]: a service context over a temporary data dir, with a registry that knows
//!   only the addresses a test gives it.
//! - [`temp_db`]: an encrypted database with a service's migrations, in a temporary dir.
//! - [`call`] / [`request`]: one request through any router, answered as status and JSON.
//! - [`Mosquitto`]: a real MQTT broker on a free port, restartable, stopped on drop.
//!
//! A test dependency only: nothing here is built into the node.

mod broker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use outpost_kit::config::CommonConfig;
use outpost_kit::{Context, Registry, Shutdown, Tasks};
use serde_json::Value;
use tower::ServiceExt as _;

pub use broker::Mosquitto;

/// A free TCP port on loopback (bound and released; a small race with other processes is
/// accepted). Ports already handed out in this process are never handed out again, so the
/// ports of one node are always distinct.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A database with `migrations` in a temporary dir (kept as long as the value).
pub struct TempDb {
    pub db: outpost_storage::Db,
    pub dir: tempfile::TempDir,
}

/// An encrypted database named `name` with `migrations` and `readers` read connections.
pub fn temp_db(name: &str, migrations: &[outpost_storage::Migration], readers: usize) -> TempDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = outpost_storage::Db::open(
        &outpost_storage::Location::new(dir.path(), name),
        &outpost_storage::OpenOptions::default(),
        migrations,
        readers,
    )
    .expect("open a temporary database");
    TempDb { db, dir }
}

/// A service's context over a temporary data dir (kept as long as the value).
pub struct TestContext {
    pub ctx: Context,
    pub dir: tempfile::TempDir,
}

impl TestContext {
    /// The same context, on the bus at `url` (a [`Mosquitto`]'s).
    pub fn with_bus(mut self, url: &str) -> Self {
        Arc::make_mut(&mut self.ctx.common).bus.url = url.to_string();
        self
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        // The service's tasks end with the test.
        self.ctx.shutdown.trigger();
    }
}

/// A context for the service `name` whose registry is unreachable and knows only
/// `addresses` (service name → base URL), the way a node's services know each other before
/// the registry answers.
pub fn context(name: &str, addresses: &[(&str, String)]) -> TestContext {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut common = CommonConfig::default();
    // Nothing listens there: registry calls fail fast and the fallbacks are used.
    common.registry.url = format!("http://127.0.0.1:{}", free_port());
    let registry = Registry::new(
        common.registry.url.clone(),
        Duration::from_millis(500),
        1_000,
        addresses
            .iter()
            .map(|(n, u)| ((*n).to_string(), u.clone()))
            .collect::<HashMap<_, _>>(),
    );
    let shutdown = Shutdown::new();
    let ctx = Context {
        name: name.to_string(),
        common: Arc::new(common),
        data_dir: dir.path().to_path_buf(),
        shutdown: shutdown.clone(),
        registry,
        config_json: Value::Null,
        metrics: outpost_kit::telemetry::metrics_handle(),
        tasks: Tasks::new(shutdown),
    };
    TestContext { ctx, dir }
}

/// A service built as the node builds it, driven without sockets.
pub struct Service {
    pub router: Router,
    pub test: TestContext,
}

impl Service {
    /// Builds `S` with `cfg` in a fresh temporary data dir; `addresses` are the other
    /// services it may call (see [`context`]).
    pub async fn build<S: outpost_kit::Service>(
        cfg: S::Config,
        addresses: &[(&str, String)],
    ) -> Self {
        let test = context(S::INFO.name, addresses);
        Self::build_in::<S>(test, cfg).await
    }

    /// Builds `S` in `test`'s context (one prepared by the test, or kept from an earlier
    /// build to see what survives a restart).
    pub async fn build_in<S: outpost_kit::Service>(test: TestContext, cfg: S::Config) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], outpost_kit::ServiceConfig::port(&cfg)));
        let assembled = outpost_kit::service::assemble::<S>(&test.ctx, cfg, addr)
            .await
            .unwrap_or_else(|e| panic!("{} did not build: {e:?}", S::INFO.name));
        Self {
            router: assembled.router,
            test,
        }
    }

    /// One request, answered as status and JSON (`Null` when the body is not JSON).
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(&self.router, method, uri, body).await
    }

    /// Serves the router on `addr` (port 0: a free one), for clients that reach the
    /// service over the network.
    pub async fn serve_at(&self, addr: SocketAddr) -> Served {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the test server");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Served { addr, stop, task }
    }

    /// Stops the service's tasks in order, as the node does when it stops.
    pub async fn stop(self) -> TestContext {
        self.test.ctx.shutdown.trigger();
        self.test
            .ctx
            .tasks
            .drain(tokio::time::Instant::now() + outpost_kit::service::STOP_BUDGET)
            .await;
        self.test
    }
}

/// One request through `router` with a JSON body, answered as status and JSON.
pub async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let (status, _, bytes) = request(router, req).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Any request through `router`, answered as status, headers and body.
pub async fn request(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, bytes::Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(30), router.clone().oneshot(req))
        .await
        .expect("the router answered within 30 s")
        .expect("routers are infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .expect("the body can be read");
    (parts.status, parts.headers, bytes)
}

/// A service served on a socket by [`Service::serve_at`].
pub struct Served {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and closes every connection: the service is gone for its clients.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
