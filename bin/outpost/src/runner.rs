//! `outpost run <service>`: one service in the foreground, as `outpost up` starts each child
//! and as a container runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_kit::{Context, Registry, Shutdown, Tasks, telemetry};

use crate::config::{NodeConfig, Service};

/// Set by the supervisor on its children: stop when standard input closes.
pub const SUPERVISED_ENV: &str = "OUTPOST_SUPERVISED";

/// Exit code for an invalid configuration: restarting cannot help.
pub const EXIT_CONFIG: i32 = 2;

/// Runs `svc` until it is told to stop; the exit code says whether it stopped cleanly.
pub fn run(svc: Service, cfg: NodeConfig, data_dir: PathBuf) -> std::process::ExitCode {
    telemetry::init_logs(&cfg.log);
    // A panic anywhere (even in a spawned task) ends the process, so the supervisor
    // restarts it instead of leaving a service running with a dead part.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(service = svc.name(), "panicked: {info}");
        std::process::exit(70);
    }));
    if let Err(e) = outpost_storage::ensure_private_dir(&data_dir) {
        tracing::error!(error = %e, "cannot use the data dir");
        return std::process::ExitCode::FAILURE;
    }
    // One process per service and data dir: a second one (or a previous one still
    // stopping) would share its database and ports.
    let id = outpost_kit::registry::instance_id(svc.name(), &cfg.node.instance);
    let _lock = match lock_service(&data_dir, &id) {
        Ok(lock) => lock,
        Err(e) => {
            tracing::error!(
                service = svc.name(),
                error = format!("{e:#}"),
                "cannot start"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    // Its keys and files open, then the sandbox closes around them: before any thread.
    let held = match crate::sandbox::close(svc, &cfg, &data_dir, &id) {
        Ok(held) => held,
        Err(e) => {
            tracing::error!(
                service = svc.name(),
                error = format!("{e:#}"),
                "cannot start"
            );
            return if cfg.security.require_sandbox {
                std::process::ExitCode::from(EXIT_CONFIG as u8)
            } else {
                std::process::ExitCode::FAILURE
            };
        }
    };
    tracing::info!(service = svc.name(), sandbox = %held.enforced, "sandbox closed");
    // The busy services get two worker threads, the others one: a node idles in a few MB.
    // The gateway serves its traffic on event loops of its own (gateway.threads).
    let workers = svc.info.worker_threads;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(8)
        .thread_keep_alive(Duration::from_secs(10))
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let supervised = std::env::var_os(SUPERVISED_ENV).is_some();
    let result = rt.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals(supervised);
        // The keys open (unsealed by the TPM when one protects them) before anything else.
        match outpost_storage::protect::in_force(&data_dir.join("secrets")) {
            Ok(keys) => tracing::info!(keys = %keys, "keys at rest"),
            Err(e) => {
                return Err(outpost_kit::service::RunError::Start(
                    outpost_kit::StartError::other(e),
                ));
            }
        }
        // Before any client is built: they present the process's certificate.
        if cfg.security.internal_tls {
            let names = outpost_pki::default_names(&cfg.node.advertise_host, &[]);
            if let Err(e) = outpost_kit::internal::establish(
                &data_dir,
                &id,
                &names,
                Duration::from_secs(cfg.security.service_cert_s),
                shutdown.clone(),
            ) {
                return Err(outpost_kit::service::RunError::Start(
                    outpost_kit::StartError::other(e),
                ));
            }
        }
        // Until the registry answers, the node's own addresses stand in for it: where the
        // services share a host (under the supervisor, or all on loopback). A service
        // running alone elsewhere (a container) waits for the registry instead of trying
        // its own host.
        let fallback = if supervised || is_loopback(&cfg.node.advertise_host) {
            cfg.fallback_addresses()
        } else {
            std::collections::HashMap::new()
        };
        let registry = Registry::new(
            cfg.registry.url.clone(),
            Duration::from_millis(cfg.registry.request_timeout_ms),
            cfg.registry.watch_wait_ms,
            fallback,
        );
        let ctx = Context {
            name: svc.name().to_string(),
            common: Arc::new(cfg.common()),
            data_dir,
            shutdown: shutdown.clone(),
            registry,
            config_json: cfg.service_json(svc),
            metrics: telemetry::metrics_handle(),
            tasks: Tasks::new(shutdown.clone()),
            writable: Default::default(),
        };
        tracing::info!(
            service = svc.name(),
            version = outpost_kit::VERSION,
            "starting"
        );
        let result = svc.run(ctx, &cfg).await;
        shutdown.trigger();
        result
    });
    // Blocking tasks (SQLite work) get a moment to finish; a blocked read of standard input
    // must not keep the process alive, so the runtime is not simply dropped.
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(held);
    match result {
        Ok(()) => {
            tracing::info!(service = svc.name(), "stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(
                service = svc.name(),
                error = outpost_kit::service::describe(&e),
                "failed"
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// Holds `<data>/run/<service>.lock` for the life of the process.
fn lock_service(data_dir: &std::path::Path, id: &str) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    let run_dir = data_dir.join("run");
    outpost_storage::ensure_private_dir(&run_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join(format!("{id}.lock")))
        .context("cannot open the service lock")?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("{id} already runs on {}", data_dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).context("cannot lock the service"),
    }
}

/// Whether `host` names this host's loopback.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
