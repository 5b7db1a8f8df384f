//! What the tests of every Outpost crate share, so each service's tests are only about the
//! service:
//!
//! - [`Service`]: a service built exactly as the node builds it ([`outpost_kit::service::assemble`]:
//!   its storage opened in a temporary data dir, its tasks started), with its whole router
//!   (API, common routes, health) driven without sockets ([`Drive::call`]).
//! - [`context`]: a service context over a temporary data dir, with a registry that knows
//!   only the addresses a test gives it.
//! - [`temp_db`]: an encrypted database with a service's migrations, in a temporary dir.
//! - [`call`] / [`request`]: one request through any router, answered as status and JSON.
//! - [`expect`]: one request whose status is asserted, answered as JSON.
//! - [`Drive`]: those requests through a [`Service`], or a router a test builds itself.
//! - [`each`]: the items of a JSON array, mapped.
//! - [`within`] / [`until`]: a future, or a condition polled, given a deadline.
//! - [`Mosquitto`]: a real MQTT broker on a free port, restartable, stopped on drop.
//! - [`bus`]: plain bus clients on a broker, as devices and watchers are.
//! - [`metadata`]: the real core-metadata, served on a socket, and what tests put in it.
//! - [`device`]: a device service next to core-metadata on a broker, and an HTTP device.
//! - [`firmware`]: payloads and manifests of firmware artifacts.
//! - [`tpm::Swtpm`]: a real TPM 2.0 (swtpm) on a free port, with its own or a given state.
//!
//! A test dependency only: nothing here is built into the node.

mod broker;
pub mod bus;
pub mod device;
pub mod firmware;
pub mod metadata;
pub mod modbus;
pub mod nats;
pub mod opcua;
pub mod postgres;
pub mod tpm;
pub mod webhook;

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

/// How long a test waits for what it waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// `f`, which must be done within [`WAIT`]; `what` names it when it is not.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// Asks `f` every 20 ms until it answers `Some`, and fails with `what` when it has not
/// within `deadline`.
pub async fn until<T>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A program of a test peer that `scripts/setup.sh --test` installs under `target/peers`
/// (`rel` below it, e.g. `pymodbus/bin/python`); a clear failure when it is missing.
pub fn peer(rel: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/peers")
        .join(rel);
    assert!(
        path.exists(),
        "{rel} is not installed ({} is missing): run scripts/setup.sh --test",
        path.display()
    );
    path
}

/// Where [`free_port`] hands out ports: below Linux's ephemeral range (32768–60999), so a
/// port handed out is never taken meanwhile as the source port of some outgoing connection.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free TCP port on loopback, distinct from every other port handed out by any test
/// process of this user recently: the next one of `PORTS` that can be bound, taken
/// under a lock on a file shared by all test processes (nextest runs each test in its own
/// process, so a per-process record would not do), wrapping around after 12,000.
pub fn free_port() -> u16 {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::unix::fs::MetadataExt as _;
    // One file per user: a file root made is not writable by a later run as another user.
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let path = std::env::temp_dir().join(format!("outpost-test-ports-{uid}"));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut next = text
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| PORTS.contains(p))
        .unwrap_or(PORTS.start);
    let mut port = None;
    for _ in 0..PORTS.len() {
        let candidate = next;
        next = if next + 1 >= PORTS.end {
            PORTS.start
        } else {
            next + 1
        };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            port = Some(candidate);
            break;
        }
    }
    let written = file
        .rewind()
        .and_then(|()| file.set_len(0))
        .and_then(|()| file.write_all(next.to_string().as_bytes()));
    if let Err(e) = written {
        panic!("{}: {e}", path.display());
    }
    // The lock ends with the file.
    port.expect("no free port below the ephemeral range")
}

/// The lines `child` prints on its stdout (which must be piped), read by a thread, until
/// it closes them or the receiver is dropped.
pub fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    lines_from(child.stdout.take().expect("stdout"))
}

/// The lines read from `source` (a child's piped stderr, say) by a thread, until it
/// closes or the receiver is dropped.
pub fn lines_from(
    source: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(source)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
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

    /// The same context, logging in to the bus as the node's services do, with the bus
    /// token of the node whose data dir is `node_dir` (an embedded broker's).
    pub fn with_bus_token_of(mut self, node_dir: &std::path::Path) -> Self {
        let bus = &mut Arc::make_mut(&mut self.ctx.common).bus;
        bus.username = outpost_bus::INTERNAL_USER.to_string();
        bus.password_file = Some(
            node_dir
                .join("secrets")
                .join(format!("{}.token", outpost_bus::INTERNAL_SECRET)),
        );
        self
    }

    /// The same context, on a bus nowhere (a free port nothing listens on): no broker of
    /// anyone else's is ever joined.
    pub fn off_bus(self) -> Self {
        self.with_bus(&format!("mqtt://127.0.0.1:{}", free_port()))
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
    // Services driven without sockets have no TLS peers to tell them apart: the plaintext
    // internal API (mutual TLS between services is tested end to end).
    common.security.internal_tls = false;
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
        writable: Default::default(),
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

    /// Stops the service's tasks in order, as the node does when it stops; the context
    /// it answers (same data dir) is ready for the next start.
    pub async fn stop(self) -> TestContext {
        let mut test = self.test;
        test.ctx.shutdown.trigger();
        test.ctx
            .tasks
            .drain(tokio::time::Instant::now() + outpost_kit::service::STOP_BUDGET)
            .await;
        let shutdown = Shutdown::new();
        test.ctx.tasks = Tasks::new(shutdown.clone());
        test.ctx.shutdown = shutdown;
        test.ctx.writable = Default::default();
        test
    }
}

/// The `scheduledAt` times of the records in a support-scheduler record page, oldest first.
pub fn scheduled_times(page: &Value) -> Vec<i64> {
    let mut at: Vec<i64> = page["scheduleActionRecords"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["scheduledAt"].as_i64()).collect())
        .unwrap_or_default();
    at.sort_unstable();
    at
}

/// Asserts that the scheduled times of a job run every `interval_ms` (records of runs and
/// of missed runs) come from one runner at a time: at least `min` of them, none closer
/// together than the interval (two runners would each keep times of their own).
pub fn one_runner(runs: &[i64], interval_ms: i64, min: usize) {
    assert!(
        runs.len() >= min,
        "{} runs, fewer than {min}: {runs:?}",
        runs.len()
    );
    for w in runs.windows(2) {
        assert!(
            w[1] - w[0] >= interval_ms,
            "two runs {} ms apart: {runs:?}",
            w[1] - w[0]
        );
    }
}

/// The items of the JSON array `list`, each mapped by `f`; `list` must be an array.
pub fn each<T>(list: &Value, f: impl FnMut(&Value) -> T) -> Vec<T> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(f)
        .collect()
}

/// A fixture that gives a router: tests that build a service's router themselves (from its
/// app state) drive it with the same requests as a [`Service`].
// The tests await these where they call them: no `Send` bound on the futures is needed.
#[allow(async_fn_in_trait)]
pub trait Drive {
    /// The router, as the service serves it.
    fn router(&self) -> Router;

    /// One request, answered as status and JSON (`Null` when the body is not JSON).
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(&self.router(), method, uri, body).await
    }

    /// One request that must be answered with `want`; its JSON body.
    async fn expect(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> Value {
        expect(&self.router(), method, uri, body, want).await
    }

    /// The value of the series `series` (name and labels, as exposed) on `/metrics`; 0
    /// when it is not there yet.
    async fn metric(&self, series: &str) -> u64 {
        let req = Request::get("/metrics")
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = request(&self.router(), req).await;
        assert_eq!(status, StatusCode::OK, "GET /metrics");
        let text = String::from_utf8(body.to_vec()).expect("metrics are text");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().expect("a whole number"))
    }

    /// Any request, answered as status and JSON (`Null` when the body is not JSON).
    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, _, bytes) = request(&self.router(), req).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
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

/// One request through `router` that must be answered with `want`; its JSON body.
pub async fn expect(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    want: StatusCode,
) -> Value {
    let (status, body) = call(router, method, uri, body).await;
    assert_eq!(status, want, "{method} {uri}: {body}");
    body
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

impl Drive for Service {
    fn router(&self) -> Router {
        self.router.clone()
    }
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

/// Stops a peer's process gracefully (SIGTERM) and waits for it; nothing if none runs.
pub(crate) fn terminate(child: Option<std::process::Child>) {
    if let Some(mut child) = child {
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = child.wait();
    }
}

/// Kills a peer's process (SIGKILL), as a crash would, and waits for it.
pub(crate) fn kill(child: Option<std::process::Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs a peer's Python `script` with `args` until it prints "ready ..."; returns the child
/// and what follows "ready". `what` names it in failures.
pub(crate) fn spawn_peer(
    python: &std::path::Path,
    script: &std::path::Path,
    args: &[&str],
    what: &str,
) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let rx = lines_of(&mut child);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(l) => {
                if let Some(rest) = l.strip_prefix("ready") {
                    return (child, rest.trim().to_string());
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{what} exited with {status}");
                }
                assert!(std::time::Instant::now() < deadline, "{what} did not start");
            }
        }
    }
}
