//! `outpost up`: the whole edge node in the foreground.
//!
//! Every service runs as a child process of this binary (`outpost run <service>`):
//! - a crashed or killed child is restarted with exponential backoff (reset after a minute
//!   of good behaviour); the others keep serving, and the restarted one registers again. A
//!   child that exits with the configuration-error code is not restarted;
//! - children get a snapshot of the resolved configuration (`<data>/run/config.toml`), so a
//!   restarted child runs exactly what the supervisor announced, even if the file was
//!   edited meanwhile;
//! - children live in their own process group, so a terminal's Ctrl-C reaches only the
//!   supervisor, which then stops them in reverse start order: it closes each child's
//!   standard input (the child's signal to shut down gracefully: deregister, flush, exit),
//!   waits up to `stop_timeout_ms`, and kills a child that does not stop. Once stopping has
//!   begun nothing is restarted; a second signal kills whatever still runs;
//! - if the supervisor itself dies, its children see their standard input close and stop;
//! - children's log lines are forwarded with the service's name through a bounded queue: if
//!   the supervisor's own output stalls, lines are dropped (and counted), never the node;
//! - `<data>/run/outpost.lock` keeps a second node off the same data dir, each service
//!   holds `<data>/run/<service>.lock` while it runs, and `<data>/run/<service>.pid` says
//!   which process runs each service.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_kit::config::LogFormat;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

use crate::config::{NodeConfig, SERVICES, Service};
use crate::runner::{EXIT_CONFIG, SUPERVISED_ENV};

/// A child that ran this long is considered healthy again: its backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Longest forwarded log line; longer ones are cut.
const MAX_LINE: usize = 16 * 1024;
/// Log lines waiting for the supervisor's standard error.
const LOG_QUEUE: usize = 4096;

/// Prints to standard output, ignoring a closed or failing output (a status line must not
/// take the node down).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

struct Spec {
    exe: PathBuf,
    config_file: PathBuf,
    data_dir: PathBuf,
    log_format: LogFormat,
    stop_timeout: Duration,
    backoff_max: Duration,
    logs: LogSink,
}

impl Spec {
    fn spawn(&self, svc: Service) -> std::io::Result<Child> {
        let mut child = Command::new(&self.exe)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config_file)
            .arg("run")
            .arg(svc.name())
            .env(SUPERVISED_ENV, "1")
            // The allocator gives freed memory back at once rather than after a delay that
            // an idle service never reaches (a login's Argon2 buffer would stay resident),
            // except in the gateway, whose event loops return it themselves every second:
            // on its request path, giving pages back and faulting them in again cost 5 % of
            // its CPU. The operator's own setting wins.
            .env(
                "MIMALLOC_PURGE_DELAY",
                std::env::var_os("MIMALLOC_PURGE_DELAY").unwrap_or_else(|| {
                    if svc.info.manages_allocator {
                        "10"
                    } else {
                        "0"
                    }
                    .into()
                }),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_logs(
                svc.name(),
                stderr,
                self.log_format,
                self.logs.clone(),
            ));
        }
        write_atomically(
            &pid_file(&self.data_dir, svc),
            child
                .id()
                .map(|p| p.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        Ok(child)
    }
}

fn pid_file(data_dir: &Path, svc: Service) -> PathBuf {
    data_dir.join("run").join(format!("{}.pid", svc.name()))
}

/// Writes a small file so readers see the old or the new content, never a partial one.
fn write_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, contents).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The bounded queue between children's log pipes and the supervisor's standard error.
#[derive(Clone)]
struct LogSink {
    tx: std::sync::mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// Starts the writer thread: blocking writes happen there, never on the runtime.
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(LOG_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let _ = std::thread::Builder::new()
            .name("log-forwarder".into())
            .spawn(move || {
                let mut err = std::io::stderr();
                while let Ok(line) = rx.recv() {
                    let lost = counter.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let _ = writeln!(
                            err,
                            "(supervisor: {lost} log lines dropped: output too slow)"
                        );
                    }
                    let _ = err.write_all(line.as_bytes());
                }
            });
        Self { tx, dropped }
    }

    fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Copies a child's log lines to the sink, tagged with the service. Reading never waits
/// for the output: the child can always write its logs.
async fn forward_logs(
    name: &'static str,
    stderr: tokio::process::ChildStderr,
    format: LogFormat,
    sink: LogSink,
) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        buf.truncate(MAX_LINE);
        let line = String::from_utf8_lossy(&buf);
        let out = match format {
            LogFormat::Json if line.starts_with('{') => {
                format!("{{\"process\":\"{name}\",{}\n", &line[1..])
            }
            _ => format!("{name:>13} | {line}\n"),
        };
        sink.send(out);
    }
}

/// Keeps one service running until `stop` fires, then stops it gracefully. Once the node
/// is stopping (`node`), an exiting child is not restarted.
async fn supervise(
    svc: Service,
    spec: Arc<Spec>,
    stop: Shutdown,
    node: Shutdown,
    force: Shutdown,
    first: Child,
) {
    let mut child = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), spec.backoff_max);
    loop {
        let Some(mut running) = child.take() else {
            let delay = backoff.next_delay();
            tokio::select! {
                biased;
                () = stop.wait() => break,
                () = node.wait() => {
                    stop.wait().await;
                    break;
                }
                () = tokio::time::sleep(delay) => {}
            }
            match spec.spawn(svc) {
                Ok(c) => {
                    tracing::info!(service = svc.name(), pid = c.id(), "restarted");
                    child = Some(c);
                }
                Err(e) => tracing::error!(service = svc.name(), error = %e, "cannot restart"),
            }
            continue;
        };
        let started = Instant::now();
        // `Child::wait` closes the child's stdin first; hold it apart so that only a stop
        // closes it.
        let stdin = running.stdin.take();
        tokio::select! {
            biased;
            () = stop.wait() => {
                drop(stdin);
                stop_child(svc, running, spec.stop_timeout, &force).await;
                break;
            }
            status = running.wait() => {
                drop(stdin);
                if node.is_triggered() {
                    // Stopping anyway (a signal reached the whole group, say).
                    stop.wait().await;
                    break;
                }
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                match status {
                    Ok(s) if s.code() == Some(EXIT_CONFIG) => {
                        tracing::error!(service = svc.name(), "cannot start with this configuration; not restarting it");
                        stop.wait().await;
                        break;
                    }
                    Ok(s) => tracing::warn!(service = svc.name(), status = %s, "exited unexpectedly; restarting"),
                    Err(e) => tracing::warn!(service = svc.name(), error = %e, "lost track of the process; restarting"),
                }
            }
        }
    }
    let _ = std::fs::remove_file(pid_file(&spec.data_dir, svc));
}

/// Waits for a child whose standard input was closed (its signal to stop), and kills it
/// if it does not stop in time or the stop is forced.
async fn stop_child(svc: Service, mut child: Child, timeout: Duration, force: &Shutdown) {
    let waited = tokio::select! {
        r = tokio::time::timeout(timeout, child.wait()) => r,
        () = force.wait() => {
            tracing::warn!(service = svc.name(), "forced stop: killing it");
            let _ = child.kill().await;
            return;
        }
    };
    match waited {
        Ok(Ok(status)) if status.success() => tracing::debug!(service = svc.name(), "stopped"),
        Ok(Ok(status)) => tracing::warn!(service = svc.name(), %status, "stopped with an error"),
        Ok(Err(e)) => {
            tracing::warn!(service = svc.name(), error = %e, "cannot wait for the service")
        }
        Err(_) => {
            tracing::warn!(
                service = svc.name(),
                ?timeout,
                "did not stop in time; killing it"
            );
            let _ = child.kill().await;
        }
    }
}

/// Renews the certificates of service instances `ids` (reissued with half their life of
/// `secs` left, as a service renewing its own does) until the node stops; each service
/// picks its new one up from its files.
async fn renew_certificates(
    data_dir: PathBuf,
    ids: Vec<String>,
    names: Vec<String>,
    secs: u64,
    node: Shutdown,
) {
    let life = Duration::from_secs(secs);
    let every = Duration::from_secs(60)
        .min(life / 8)
        .max(Duration::from_secs(1));
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    // Each service makes its first certificate itself as it starts.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.wait() => return,
            _ = tick.tick() => {}
        }
        for id in &ids {
            let (d, i, n) = (data_dir.clone(), id.clone(), names.clone());
            let renewed = tokio::task::spawn_blocking(move || {
                outpost_pki::internal::ensure_service_cert_lasting(&d, &i, &n, secs)
            })
            .await;
            if let Ok(Err(e)) = renewed {
                tracing::warn!(service = %id, error = %e, "cannot renew the service's certificate");
            }
        }
    }
}

/// Waits until `url`'s ping answers or `deadline` passes (probing at least once).
async fn wait_ready(http: reqwest::Client, url: String, deadline: Instant) -> bool {
    let ping = format!("{url}/api/v3/ping");
    loop {
        if matches!(http.get(&ping).send().await, Ok(r) if r.status().is_success()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first SIGINT/SIGTERM/SIGHUP starts an orderly stop; a second one forces it.
fn listen_for_signals(node: Shutdown, force: Shutdown) {
    tokio::spawn(async move {
        let Ok(mut signals) = outpost_kit::shutdown::StopSignals::install() else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for stage in 0..2 {
            signals.next().await;
            if stage == 0 {
                node.trigger();
            } else {
                force.trigger();
            }
        }
    });
}

/// A running service under supervision.
struct Supervised {
    svc: Service,
    pid: u32,
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

/// Where people come in: the gateway's HTTPS entry point, the CA to trust and the admin
/// password's file.
pub(crate) struct WayIn {
    pub url: String,
    pub ca: std::path::PathBuf,
    pub password_file: std::path::PathBuf,
}

/// The way in, when the gateway is among the `running` services.
pub(crate) fn way_in(
    cfg: &NodeConfig,
    data_dir: &std::path::Path,
    mut running: impl Iterator<Item = Service>,
) -> Option<WayIn> {
    let l = running
        .find(|s| s.name() == "gateway")
        .into_iter()
        .flat_map(|s| s.section(cfg).listeners())
        .find(|l| l.scheme == "https")?;
    let host = if l.addr.ip().is_unspecified() {
        "localhost".to_string()
    } else {
        l.addr.ip().to_string()
    };
    Some(WayIn {
        url: format!("https://{host}:{}", l.addr.port()),
        ca: data_dir.join("tls/ca.pem"),
        password_file: data_dir.join("secrets/admin-password"),
    })
}

/// What the start banner says after the services: where to go in (the gateway's HTTPS
/// address, the CA to trust, the admin credential) and the first command to try.
pub(crate) fn next_steps(
    cfg: &NodeConfig,
    data_dir: &std::path::Path,
    found: bool,
    keys: Option<&outpost_storage::protect::InForce>,
    running: impl Iterator<Item = Service>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = way_in(cfg, data_dir, running) {
        out.push(format!(
            "Way in: {} (trust {}; user admin, password in {})",
            w.url,
            w.ca.display(),
            w.password_file.display()
        ));
    }
    // The CLI of the user who started the node finds it by the node's record (or as the
    // default data dir's); otherwise it is told where.
    let dir_flag = if found {
        String::new()
    } else {
        format!(" --data-dir {}", data_dir.display())
    };
    out.push(format!(
        "Try: outpost{dir_flag} services    (on this machine the CLI logs in by itself)"
    ));
    if let Some(keys) = keys {
        out.push(format!("Keys at rest: {keys}"));
    }
    if !cfg.security.internal_tls {
        out.push(
            "Warning: security.internal_tls is off: the services' APIs and the bus are plain \
             text on this host, and anyone on it may use them without credentials"
                .to_string(),
        );
    }
    out
}

/// How much of the Landlock sandbox this kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landlock {
    Full,
    /// An older ABI: part of the rules (e.g. not truncation or device controls).
    Partial,
    Missing,
    Off,
}

/// What the start banner says about least privilege.
fn sandbox_line(run_as: &crate::sandbox::RunAs, landlock: Landlock) -> String {
    let fs = match landlock {
        Landlock::Off => "NO sandbox (security.sandbox is off)",
        Landlock::Full => "each service in a Landlock sandbox with a system-call filter",
        Landlock::Partial => {
            "each service in a Landlock sandbox the kernel enforces only in part (an older \
             ABI); system calls filtered"
        }
        Landlock::Missing => "NO Landlock sandbox (the kernel lacks it); system calls filtered",
    };
    let warn = if run_as.unprivileged() && landlock == Landlock::Full {
        ""
    } else {
        "Warning: "
    };
    format!("{warn}Privileges: {run_as}; {fs}")
}

/// Why a node refuses to start on what it was given: a port in use, a data dir it cannot
/// safely use. Restarting cannot help, so `outpost up` exits with [`EXIT_CONFIG`] as
/// `outpost cloud` does in the same situation (a node already running on the data dir is
/// an ordinary failure: it goes away).
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The sockets the node's services would listen on that cannot be bound now, as one line
/// each (`core-data cannot listen on 127.0.0.1:59880 (http): Address in use`).
pub(crate) fn busy_sockets(
    cfg: &NodeConfig,
    services: impl IntoIterator<Item = Service>,
) -> Vec<String> {
    let mut busy = Vec::new();
    for svc in services {
        let section = svc.section(cfg);
        let http = std::net::SocketAddr::new(cfg.node.bind, section.port());
        let others = section
            .listeners()
            .into_iter()
            .map(|l| (l.scheme, l.addr, l.is_udp()));
        for (scheme, addr, udp) in std::iter::once(("http", http, false)).chain(others) {
            let bound = if udp {
                std::net::UdpSocket::bind(addr).map(drop)
            } else {
                std::net::TcpListener::bind(addr).map(drop)
            };
            if let Err(e) = bound {
                busy.push(format!(
                    "{} cannot listen on {addr} ({scheme}): {e}",
                    svc.name()
                ));
            }
        }
    }
    busy
}

/// Key files that group or others may read: a node whose secrets were opened up must not
/// start (each service would refuse its key, one by one).
fn exposed_secrets(secrets: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut exposed = Vec::new();
    let mut stack = vec![secrets.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.permissions().mode() & 0o077 != 0 {
                exposed.push(entry.path());
            }
        }
    }
    exposed.sort();
    exposed
}

/// Runs the node until SIGINT/SIGTERM/SIGHUP.
/// Runs the node on `data_dir` until it is told to stop; `found` says whether a CLI given
/// no `--data-dir` finds it (its record written, or the default data dir).
pub async fn up(
    cfg: NodeConfig,
    data_dir: PathBuf,
    run_as: crate::sandbox::RunAs,
    found: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let unusable =
        |e: outpost_storage::StorageError| Refused(format!("cannot use the data dir: {e}"));
    outpost_storage::ensure_private_dir(&data_dir).map_err(unusable)?;
    let data_dir = data_dir.canonicalize().context("data dir")?;
    let exposed = exposed_secrets(&data_dir.join("secrets"));
    if let Some(first) = exposed.first() {
        return Err(Refused(format!(
            "{} secret files may be read by others than the node's user ({} first): a key \
             anyone may have read protects nothing; make them private (chmod -R go= {}) and, \
             if others could have read them, rotate the keys (`outpost keys rotate`)",
            exposed.len(),
            first.display(),
            data_dir.join("secrets").display()
        ))
        .into());
    }
    let landlock = if !cfg.security.sandbox {
        Landlock::Off
    } else if outpost_kit::sandbox::kernel_supports() {
        Landlock::Full
    } else if outpost_kit::sandbox::kernel_has_landlock() {
        Landlock::Partial
    } else {
        Landlock::Missing
    };
    if cfg.security.require_sandbox && landlock != Landlock::Full {
        anyhow::bail!(
            "the sandbox is required (security.require_sandbox) and this kernel cannot \
             enforce it: Landlock needs Linux 5.13 or newer (6.10 for every right asked \
             for) with lsm=landlock"
        );
    }
    let run_dir = data_dir.join("run");
    outpost_storage::ensure_private_dir(&run_dir).map_err(unusable)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join("outpost.lock"))
        .context("cannot open the node lock")?;
    // A CLI asking whether a node runs holds the lock for a moment: a lock held for a
    // second is a node's.
    let mut tries = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("another Outpost node is running on {}", data_dir.display())
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).context("cannot lock the data dir");
            }
        }
    }
    // Every socket must be free before anything starts: another node or program on a port
    // is one clear line each and no start, not services restarting forever. A previous
    // node's processes that are still exiting (killed a moment ago) get a few seconds.
    let mut busy = busy_sockets(&cfg, cfg.services());
    let grace = Instant::now() + Duration::from_secs(3);
    while !busy.is_empty() && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(100)).await;
        busy = busy_sockets(&cfg, cfg.services());
    }
    if !busy.is_empty() {
        return Err(Refused(format!(
            "cannot start:\n  {}\nanother node or program listens there: stop it, or give \
             this node other ports (`--set <service>.port=...`, `broker.listen`, \
             `gateway.listen`)",
            busy.join("\n  ")
        ))
        .into());
    }
    // Leftovers of a previous run that did not stop cleanly.
    for svc in SERVICES {
        let _ = std::fs::remove_file(pid_file(&data_dir, svc));
    }
    write_atomically(
        &run_dir.join("outpost.pid"),
        std::process::id().to_string().as_bytes(),
    );
    let config_file = run_dir.join("config.toml");
    write_atomically(
        &config_file,
        toml::to_string(&cfg)
            .context("cannot write the configuration snapshot")?
            .as_bytes(),
    );

    // The running executable, even if its file was replaced since (a rebuild).
    let self_exe = PathBuf::from("/proc/self/exe");
    let exe = if self_exe.exists() {
        self_exe
    } else {
        std::env::current_exe().context("cannot find the outpost binary")?
    };
    let spec = Arc::new(Spec {
        exe,
        config_file,
        data_dir: data_dir.clone(),
        log_format: cfg.log.format,
        stop_timeout: Duration::from_millis(cfg.supervisor.stop_timeout_ms),
        backoff_max: Duration::from_millis(cfg.supervisor.restart_backoff_max_ms),
        logs: LogSink::start(),
    });
    let node = Shutdown::new();
    let force = Shutdown::new();
    listen_for_signals(node.clone(), force.clone());

    // The node's keys open (unsealed by its TPM when one protects them) before any service
    // starts: a data dir sealed by another TPM, or without its TPM, stops here.
    let keys = outpost_storage::protect::in_force(&data_dir.join("secrets"))
        .context("cannot open the node's keys")?;
    let unfinished = outpost_storage::protect::unfinished_rotations(&data_dir.join("secrets"));
    if let Some(first) = unfinished.first() {
        anyhow::bail!(
            "a key rotation did not finish ({} and {} more): run `outpost keys rotate` again \
             to finish it before the node starts",
            first.display(),
            unfinished.len() - 1
        );
    }
    if cfg.security.internal_tls {
        // The node CA exists before any service starts, and the readiness checks below
        // speak TLS as the node's administrator.
        outpost_kit::internal::establish_admin(&data_dir)
            .context("cannot make the node's internal certificates")?;
    }
    // The services' certificates are renewed here: their sandboxes keep the node CA's key
    // from them (each issues its first one before its sandbox closes).
    tokio::spawn(renew_certificates(
        data_dir.clone(),
        cfg.services()
            .into_iter()
            .filter(|s| cfg.security.internal_tls || s.info.is_bus)
            .map(|s| outpost_kit::registry::instance_id(s.name(), &cfg.node.instance))
            .collect(),
        outpost_pki::default_names(&cfg.node.advertise_host, &[]),
        cfg.security.service_cert_s,
        node.clone(),
    ));
    let http = outpost_kit::http::client(Duration::from_millis(500));
    let mut running: Vec<Supervised> = Vec::new();
    let mut failure = None;
    let bus = cfg.services().into_iter().find(|s| s.info.is_bus);
    for svc in cfg.services() {
        if node.is_triggered() {
            break;
        }
        if let Some(bus) = bus.filter(|_| svc.info.uses_bus) {
            // Bus users start once the broker serves (its MQTT listener is bound before its
            // HTTP side), so their first connect succeeds instead of retrying.
            let deadline = Instant::now() + Duration::from_secs(5);
            wait_ready(http.clone(), cfg.url(bus), deadline).await;
        }
        match spec.spawn(svc) {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                let stop = Shutdown::new();
                let task = tokio::spawn(supervise(
                    svc,
                    Arc::clone(&spec),
                    stop.clone(),
                    node.clone(),
                    force.clone(),
                    child,
                ));
                running.push(Supervised {
                    svc,
                    pid,
                    stop,
                    task,
                });
            }
            Err(e) => {
                failure =
                    Some(anyhow::Error::new(e).context(format!("cannot start {}", svc.name())));
                break;
            }
        }
    }

    if failure.is_none() && !node.is_triggered() {
        let deadline = Instant::now() + Duration::from_millis(cfg.supervisor.ready_timeout_ms);
        let checks: Vec<_> = running
            .iter()
            .map(|s| tokio::spawn(wait_ready(http.clone(), cfg.url(s.svc), deadline)))
            .collect();
        let mut ready = Vec::with_capacity(checks.len());
        for c in checks {
            ready.push(c.await.unwrap_or(false));
        }
        let all = ready.iter().all(|r| *r);
        if all {
            say!(
                "Outpost edge node up in {} ms (data dir {})",
                started.elapsed().as_millis(),
                data_dir.display()
            );
        } else {
            say!(
                "Outpost edge node started with services NOT READY (data dir {})",
                data_dir.display()
            );
        }
        let width = running
            .iter()
            .map(|s| s.svc.name().len())
            .max()
            .unwrap_or(0);
        for (s, ok) in running.iter().zip(&ready) {
            let others: Vec<String> = s
                .svc
                .section(&cfg)
                .listeners()
                .iter()
                .map(|l| format!("{}://{}", l.scheme, l.addr))
                .collect();
            let addr = if others.is_empty() {
                cfg.url(s.svc)
            } else {
                format!("{} (status {})", others.join(" "), cfg.url(s.svc))
            };
            let state = if *ok {
                ""
            } else {
                "  NOT READY (still trying)"
            };
            say!("  {:<width$} {addr:<48} pid {}{state}", s.svc.name(), s.pid);
        }
        let services = running.iter().map(|s| s.svc);
        for line in next_steps(&cfg, &data_dir, found, Some(&keys), services) {
            say!("{line}");
        }
        say!("{}", sandbox_line(&run_as, landlock));
        say!("Stop with Ctrl-C.");
        node.wait().await;
    }

    say!("Stopping the edge node...");
    node.trigger();
    // Reverse start order: data consumers first, the registry last so the others can
    // deregister.
    for s in running.into_iter().rev() {
        s.stop.trigger();
        if s.task.await.is_err() {
            tracing::warn!(service = s.svc.name(), "supervisor task failed");
        }
    }
    let _ = std::fs::remove_file(run_dir.join("outpost.pid"));
    crate::session::forget_node();
    match failure {
        Some(e) => Err(e),
        None => {
            say!("Stopped.");
            Ok(())
        }
    }
}
