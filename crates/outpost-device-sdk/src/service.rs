//! A device service as the node runs it: [`Adapter`] is the service a driver's
//! configuration declares, and [`build`] wires the SDK's parts around the driver.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use outpost_bus::Link;
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_kit::ratelog::RateLimitedLog;
use outpost_kit::{Check, Parts, Stage, Start, StartError, health_probe};

use crate::config::{Config, DriverConfig};
use crate::sdk::{Driver, Inner, Metrics, Sdk};

/// The database of a device service that keeps secrets.
const SECRETS: &[outpost_storage::Migration] = &[outpost_storage::Migration {
    version: 1,
    description: "secrets",
    sql: outpost_storage::secrets::TABLE,
}];

/// A device service: the SDK around the driver its configuration makes.
pub struct Adapter<D>(std::marker::PhantomData<D>);

impl<D: DriverConfig> outpost_kit::Service for Adapter<D> {
    type Config = Config<D>;

    const INFO: outpost_kit::Info =
        outpost_kit::Info::new(D::SERVICE, D::SECTION).open_routes(D::OPEN_ROUTES);

    /// A database only to keep secrets, for a driver that keeps them.
    fn storage(_cfg: &Config<D>) -> Option<outpost_kit::Storage> {
        D::KEEPS_SECRETS.then(|| outpost_kit::Storage::new(SECRETS, 1))
    }

    fn standby(cfg: &Config<D>) -> Option<&outpost_kit::pg::StorageConfig> {
        Some(&cfg.standby)
    }

    fn sandbox(
        cfg: &Config<D>,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        cfg.standby.sandbox(files, D::SERVICE)?;
        cfg.driver.sandbox(files)
    }

    async fn build(start: Start<Config<D>>) -> Result<Parts, StartError> {
        let driver = D::driver(&start)?;
        build(start, driver).await
    }
}

/// Builds a device service around `driver`: the SDK's API and the driver's own routes,
/// and its tasks: startup (bus, driver, followers, registration in metadata, first load),
/// periodic discovery, and on the way out the driver's stop before the bus closes.
pub async fn build<D: DriverConfig>(
    start: Start<Config<D>>,
    driver: Arc<dyn Driver>,
) -> Result<Parts, StartError> {
    let Start { ctx, cfg, .. } = &start;
    let name = ctx.name.clone();
    let m = |n: &str| ctx.metric(n);
    // Declared first, so it closes last: the driver stops before it.
    let link = Link::start(ctx);
    let view = MetadataView::start(
        ctx,
        ViewConfig {
            credentials_for: cfg.driver.credentials_for(),
            ..ViewConfig::default()
        },
    );
    let sdk = Sdk {
        inner: Arc::new(Inner {
            ctx: ctx.clone(),
            name: name.clone(),
            allowed_fails: cfg.allowed_fails,
            down_probe_interval: Duration::from_millis(cfg.down_probe_interval_ms),
            driver_timeout: Duration::from_millis(cfg.driver_timeout_ms),
            driver: Arc::clone(&driver),
            view: view.clone(),
            bus: link.clone(),
            catalog: RwLock::default(),
            health: Mutex::default(),
            log: RateLimitedLog::new(Duration::from_secs(1)),
            metrics: Metrics {
                events: m("events_published_total"),
                readings: m("readings_published_total"),
                rejected: m("device_messages_rejected_total"),
                driver_errors: m("driver_errors_total"),
                suppressed: m("autoevent_unchanged_total"),
            },
            throttle: crate::throttle::Throttle::new(
                cfg.device_messages_per_s,
                cfg.device_messages_burst,
            ),
            autoevents: crate::sdk::AutoEvents::default(),
            loaded: std::sync::atomic::AtomicBool::new(false),
            provisioned: std::sync::atomic::AtomicBool::new(false),
            live: start.writable(crate::config::Writable::from(cfg)),
            secrets: Mutex::default(),
            secrets_db: if D::KEEPS_SECRETS {
                Some(start.db()?)
            } else {
                None
            },
        }),
    };
    let base_address = start.own_url();

    {
        let sdk = sdk.clone();
        let labels = cfg.labels.clone();
        ctx.tasks
            .spawn("startup", Stage::Background, move |stop| async move {
                let bus = tokio::select! {
                    bus = sdk.inner.bus.connected() => bus,
                    () = stop.wait() => return,
                };
                sdk.inner.driver.start(sdk.clone()).await;
                // System events are followed from before the first load, so no change made
                // while loading is missed.
                crate::messaging::follow(&sdk, &bus).await;
                crate::devices::register_and_load(&sdk, &base_address, labels).await;
            });
    }
    {
        let sdk = sdk.clone();
        ctx.tasks
            .spawn("down-probes", Stage::Background, move |stop| {
                crate::autoevent::probe_down_devices(sdk, stop)
            });
    }
    {
        let sdk = sdk.clone();
        ctx.tasks
            .spawn("discovery", Stage::Background, move |stop| {
                crate::discovery::periodic(sdk, stop)
            });
    }
    {
        let sdk = sdk.clone();
        ctx.tasks
            .spawn("driver", Stage::AfterServing, move |stop| async move {
                stop.wait().await;
                sdk.inner.autoevents.stop_all();
                sdk.inner.driver.stop().await;
            });
    }

    let health = {
        let sdk = sdk.clone();
        health_probe(move || {
            let sdk = sdk.clone();
            async move {
                let mut checks = vec![sdk.inner.bus.check().await];
                checks.push(
                    if sdk.inner.loaded.load(std::sync::atomic::Ordering::Acquire) {
                        Check::ok("devices")
                    } else {
                        Check::failed("devices", "not loaded from core-metadata yet")
                    },
                );
                checks
            }
        })
    };
    let mut api = crate::api::router(sdk.clone());
    if let Some(own) = driver.routes(&sdk) {
        api = api.merge(own);
    }
    Ok(Parts::new(api).health(health))
}
