//! `outpost run <service>`: one service in the foreground, as `outpost up` starts each child
//! and as a container runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outpost_kit::{Context, Registry, Shutdown, telemetry};

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
    // The busy services get two worker threads, the others one: a node idles in a few MB.
    // The gateway serves its traffic on event loops of its own (gateway.threads).
    let workers = match svc {
        Service::CoreData | Service::Broker | Service::Cloud => 2,
        Service::Gateway
        | Service::CoreKeeper
        | Service::CoreMetadata
        | Service::CoreCommand
        | Service::DeviceVirtual
        | Service::DeviceModbus
        | Service::DeviceMqtt
        | Service::DeviceRest
        | Service::Rules
        | Service::Export
        | Service::Ota => 1,
    };
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
        let registry = Registry::new(
            cfg.registry.url.clone(),
            Duration::from_millis(cfg.registry.request_timeout_ms),
            cfg.registry.watch_wait_ms,
            cfg.fallback_addresses(),
        );
        let watch = match svc {
            Service::Broker
            | Service::CoreMetadata
            | Service::CoreData
            | Service::CoreCommand
            | Service::DeviceVirtual
            | Service::DeviceModbus
            | Service::DeviceMqtt
            | Service::DeviceRest
            | Service::Gateway
            | Service::Rules
            | Service::Export
            | Service::Ota => Some(registry.spawn_watch(shutdown.clone())),
            Service::CoreKeeper | Service::Cloud => None,
        };
        let ctx = Context {
            name: svc.name().to_string(),
            common: Arc::new(cfg.common()),
            data_dir,
            shutdown: shutdown.clone(),
            registry,
            config_json: cfg.service_json(svc),
            metrics: telemetry::metrics_handle(),
        };
        tracing::info!(
            service = svc.name(),
            version = outpost_kit::VERSION,
            "starting"
        );
        let result = match svc {
            Service::Broker => outpost_broker::run(ctx, cfg.broker.clone()).await,
            Service::CoreKeeper => outpost_core_keeper::run(ctx, cfg.core_keeper.clone()).await,
            Service::CoreMetadata => {
                outpost_core_metadata::run(ctx, cfg.core_metadata.clone()).await
            }
            Service::CoreData => outpost_core_data::run(ctx, cfg.core_data.clone()).await,
            Service::CoreCommand => outpost_core_command::run(ctx, cfg.core_command.clone()).await,
            Service::DeviceVirtual => {
                outpost_device_virtual::run(ctx, cfg.device_virtual.clone()).await
            }
            Service::DeviceModbus => {
                outpost_device_modbus::run(ctx, cfg.device_modbus.clone()).await
            }
            Service::DeviceMqtt => outpost_device_mqtt::run(ctx, cfg.device_mqtt.clone()).await,
            Service::DeviceRest => outpost_device_rest::run(ctx, cfg.device_rest.clone()).await,
            Service::Gateway => outpost_gateway::run(ctx, cfg.gateway.clone()).await,
            Service::Rules => outpost_rules::run(ctx, cfg.rules.clone()).await,
            Service::Export => outpost_export::run(ctx, cfg.export.clone()).await,
            Service::Ota => outpost_ota::run(ctx, cfg.ota.clone()).await,
            Service::Cloud => outpost_cloud::run(ctx, cfg.cloud.clone()).await,
        };
        shutdown.trigger();
        if let Some(w) = watch {
            w.abort();
        }
        result
    });
    // Blocking tasks (SQLite work) get a moment to finish; a blocked read of standard input
    // must not keep the process alive, so the runtime is not simply dropped.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => {
            tracing::info!(service = svc.name(), "stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(service = svc.name(), error = format!("{e:#}"), "failed");
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
