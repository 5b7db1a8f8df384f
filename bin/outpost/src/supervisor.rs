//! `outpost up`: the whole edge node in the foreground.
//!
//! Every service runs as a child process of this binary (`outpost run <service>`):
//! - a crashed or killed child is restarted with exponential backoff (reset after a minute
//!   of good behaviour); the others keep serving, and the restarted one registers again;
//! - children live in their own process group, so a terminal's Ctrl-C reaches only the
//!   supervisor, which then stops them in reverse start order: it closes each child's
//!   standard input (the child's signal to shut down gracefully: deregister, flush, exit),
//!   waits up to `stop_timeout_ms`, and kills a child that does not stop;
//! - if the supervisor itself dies, its children see their standard input close and stop;
//! - children's log lines are forwarded with the service's name;
//! - `<data>/run/outpost.lock` keeps a second node off the same data dir, and
//!   `<data>/run/<service>.pid` says which process runs each service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_kit::config::LogFormat;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};

use crate::config::{NodeConfig, Service};
use crate::runner::SUPERVISED_ENV;

/// A child that ran this long is considered healthy again: its backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(60);

struct Spec {
    exe: PathBuf,
    config_file: Option<PathBuf>,
    data_dir: PathBuf,
    log_format: LogFormat,
    stop_timeout: Duration,
    backoff_max: Duration,
}

impl Spec {
    fn spawn(&self, svc: Service) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(f) = &self.config_file {
            cmd.arg("--config").arg(f);
        }
        cmd.arg("run")
            .arg(svc.name())
            .env(SUPERVISED_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_logs(svc.name(), stderr, self.log_format));
        }
        let _ = std::fs::write(
            pid_file(&self.data_dir, svc),
            child.id().map(|p| p.to_string()).unwrap_or_default(),
        );
        Ok(child)
    }
}

fn pid_file(data_dir: &Path, svc: Service) -> PathBuf {
    data_dir.join("run").join(format!("{}.pid", svc.name()))
}

/// Copies a child's log lines to our standard error, tagged with the service.
async fn forward_logs(name: &'static str, stderr: tokio::process::ChildStderr, format: LogFormat) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let out = match format {
            LogFormat::Json if line.starts_with('{') => {
                format!("{{\"service\":\"{name}\",{}", &line[1..])
            }
            _ => format!("{name:>13} | {line}"),
        };
        eprintln!("{out}");
    }
}

/// Keeps one service running until `stop` fires, then stops it gracefully.
async fn supervise(svc: Service, spec: std::sync::Arc<Spec>, stop: Shutdown, first: Child) {
    let mut child = Some(first);
    let mut backoff = Backoff::new(Duration::from_millis(100), spec.backoff_max);
    loop {
        let Some(mut running) = child.take() else {
            // Restart after a delay, unless told to stop meanwhile.
            let delay = backoff.next_delay();
            tokio::select! {
                () = stop.wait() => return,
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
            status = running.wait() => {
                drop(stdin);
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(service = svc.name(), %status, "exited unexpectedly; restarting");
            }
            () = stop.wait() => {
                drop(stdin);
                stop_child(svc, running, spec.stop_timeout).await;
                let _ = std::fs::remove_file(pid_file(&spec.data_dir, svc));
                return;
            }
        }
    }
}

/// Waits for a child whose standard input was closed (its signal to stop), and kills it
/// if it does not stop in time.
async fn stop_child(svc: Service, mut child: Child, timeout: Duration) {
    match tokio::time::timeout(timeout, child.wait()).await {
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

/// Waits until `url`'s ping answers or `deadline` passes.
async fn wait_ready(http: &reqwest::Client, url: String, deadline: Instant) -> bool {
    let ping = format!("{url}/api/v3/ping");
    while Instant::now() < deadline {
        if matches!(http.get(&ping).send().await, Ok(r) if r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs the node until SIGINT/SIGTERM.
pub async fn up(
    cfg: NodeConfig,
    data_dir: PathBuf,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    outpost_storage::ensure_private_dir(&data_dir)?;
    let data_dir = data_dir.canonicalize().context("data dir")?;
    let run_dir = data_dir.join("run");
    outpost_storage::ensure_private_dir(&run_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join("outpost.lock"))
        .context("cannot open the node lock")?;
    if lock.try_lock().is_err() {
        anyhow::bail!("another Outpost node is running on {}", data_dir.display());
    }
    std::fs::write(run_dir.join("outpost.pid"), std::process::id().to_string())?;

    let config_file = match config_file {
        Some(f) => Some(
            f.canonicalize()
                .with_context(|| format!("config file {}", f.display()))?,
        ),
        None => None,
    };
    let spec = std::sync::Arc::new(Spec {
        exe: std::env::current_exe().context("cannot find the outpost binary")?,
        config_file,
        data_dir: data_dir.clone(),
        log_format: cfg.log.format,
        stop_timeout: Duration::from_millis(cfg.supervisor.stop_timeout_ms),
        backoff_max: Duration::from_millis(cfg.supervisor.restart_backoff_max_ms),
    });
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals(false);

    let http = outpost_kit::http::client(Duration::from_millis(500));
    let services = cfg.services();
    let mut running = Vec::new();
    for svc in &services {
        if *svc != Service::CoreKeeper && *svc != Service::Broker && cfg.broker.enabled {
            // Bus users start once the broker serves (its MQTT listener is bound before its
            // HTTP side), so their first connect succeeds instead of retrying.
            let deadline = Instant::now() + Duration::from_secs(5);
            wait_ready(&http, cfg.url(Service::Broker), deadline).await;
        }
        let child = spec
            .spawn(*svc)
            .with_context(|| format!("cannot start {}", svc.name()))?;
        let pid = child.id().unwrap_or_default();
        let stop = Shutdown::new();
        let task = tokio::spawn(supervise(
            *svc,
            std::sync::Arc::clone(&spec),
            stop.clone(),
            child,
        ));
        running.push((*svc, pid, stop, task));
    }

    let deadline = Instant::now() + Duration::from_millis(cfg.supervisor.ready_timeout_ms);
    let checks = services
        .iter()
        .map(|s| wait_ready(&http, cfg.url(*s), deadline));
    let ready = tokio::select! {
        r = all_ready(checks) => Some(r),
        () = shutdown.wait() => None,
    };
    if let Some(ready) = ready {
        println!(
            "Outpost edge node up in {} ms (data dir {})",
            started.elapsed().as_millis(),
            data_dir.display()
        );
        for ((svc, pid, _, _), ok) in running.iter().zip(&ready) {
            let addr = match svc {
                Service::Broker => format!("mqtt://{} (http {})", cfg.broker.listen, cfg.url(*svc)),
                _ => cfg.url(*svc),
            };
            let state = if *ok {
                ""
            } else {
                "  NOT READY (still trying)"
            };
            println!("  {:<14} {addr:<48} pid {pid}{state}", svc.name());
        }
        println!("Stop with Ctrl-C.");
        shutdown.wait().await;
    }

    println!("Stopping the edge node...");
    // Reverse start order: data consumers first, the registry last so the others can
    // deregister.
    for (svc, _, stop, task) in running.into_iter().rev() {
        stop.trigger();
        if task.await.is_err() {
            tracing::warn!(service = svc.name(), "supervisor task failed");
        }
    }
    let _ = std::fs::remove_file(run_dir.join("outpost.pid"));
    println!("Stopped.");
    Ok(())
}

/// Awaits readiness checks that share one deadline; results in order.
async fn all_ready<F: std::future::Future<Output = bool>>(
    futs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}
