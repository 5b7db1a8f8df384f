//! The running device service: its state, start-up, device health and publishing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use outpost_bus::Link;
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_contracts::event::{AddEventRequest, Event, Reading};
use outpost_contracts::metadata::{
    AdminState, Device, DeviceService, OperatingState, UpdateDevice, UpdateDeviceService,
};
use outpost_contracts::{now_nanos, topics};
use outpost_kit::backoff::Backoff;
use outpost_kit::client::{CallError, Metadata};
use outpost_kit::ratelog::RateLimitedLog;
use outpost_kit::{Check, Context, Parts, Stage, Start, StartError, health_probe};

use crate::catalog::{Catalog, Put};
use crate::config::{Config, DriverConfig};
use crate::driver::{DeviceChange, DeviceRef, Driver, DriverError};
use crate::value::{CommandValue, ValueError, to_reading};

/// Why values pushed by a device were not published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    #[error("device '{0}' is not a device of this service")]
    UnknownDevice(String),
    #[error("device '{0}' is locked")]
    Locked(String),
    #[error("device '{device}' has no resource '{resource}'")]
    UnknownResource { device: String, resource: String },
    #[error("resource '{resource}' of device '{device}' is not readable")]
    NotReadable { device: String, resource: String },
    #[error("{0}")]
    BadValue(#[from] ValueError),
    #[error("no values")]
    Empty,
    #[error("device '{0}' sends faster than allowed; message dropped")]
    Throttled(String),
    #[error("cannot publish: {0}")]
    Bus(String),
}

impl PushError {
    /// The HTTP status for a device that pushed this over HTTP.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::UnknownDevice(_) | Self::UnknownResource { .. } => S::NOT_FOUND,
            Self::Locked(_) => S::LOCKED,
            Self::NotReadable { .. } => S::METHOD_NOT_ALLOWED,
            Self::BadValue(_) | Self::Empty => S::BAD_REQUEST,
            Self::Throttled(_) => S::TOO_MANY_REQUESTS,
            Self::Bus(_) => S::SERVICE_UNAVAILABLE,
        }
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownDevice(_) => "unknown_device",
            Self::Locked(_) => "locked",
            Self::UnknownResource { .. } => "unknown_resource",
            Self::NotReadable { .. } => "not_readable",
            Self::BadValue(_) => "bad_value",
            Self::Empty => "empty",
            Self::Throttled(_) => "throttled",
            Self::Bus(_) => "bus",
        }
    }
}

pub(crate) struct Metrics {
    pub events: String,
    pub readings: String,
    pub rejected: String,
    pub driver_errors: String,
    pub suppressed: String,
}

#[derive(Default)]
struct Health {
    fails: u32,
}

/// How long an event may wait for the bus before its publisher is told it failed.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Inner {
    pub ctx: Context,
    pub name: String,
    pub allowed_fails: u32,
    pub down_probe_interval: Duration,
    pub driver_timeout: Duration,
    pub driver: Arc<dyn Driver>,
    /// core-metadata: devices and profiles, credentials, and its changes.
    pub view: MetadataView,
    pub bus: Link,
    pub catalog: RwLock<Catalog>,
    health: Mutex<HashMap<String, Health>>,
    pub log: RateLimitedLog,
    pub metrics: Metrics,
    pub throttle: crate::throttle::Throttle,
    pub autoevents: crate::autoevent::AutoEvents,
    /// Set once the devices were loaded from metadata.
    pub loaded: std::sync::atomic::AtomicBool,
    provisioned: std::sync::atomic::AtomicBool,
}

/// A handle on the running device service, for the SDK's parts and for push-style drivers.
#[derive(Clone)]
pub struct Sdk {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sdk")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Sdk {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// core-metadata's client, for writes and lists.
    pub fn metadata(&self) -> &Metadata {
        self.inner.view.client()
    }

    /// The process's view of core-metadata (cached reads, credentials, changes).
    pub fn view(&self) -> &MetadataView {
        &self.inner.view
    }

    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.inner
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.inner
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A device of this service.
    pub fn device(&self, name: &str) -> Option<DeviceRef> {
        self.catalog().device(name)
    }

    /// Every device of this service.
    pub fn devices(&self) -> Vec<DeviceRef> {
        self.catalog().devices()
    }

    /// Waits until the devices were loaded from metadata (or shutdown starts): push-style
    /// drivers hold what arrives before that, so nothing is refused as "unknown device"
    /// just because it came early.
    pub async fn wait_loaded(&self) {
        let shutdown = &self.inner.ctx.shutdown;
        while !self.inner.loaded.load(std::sync::atomic::Ordering::Acquire)
            && !shutdown.is_triggered()
        {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    pub fn is_locked(&self, d: &DeviceRef) -> bool {
        self.catalog().is_locked(d)
    }

    /// Counts and logs (rate-limited per device and reason) a message a device sent that
    /// could not be used.
    pub fn reject(&self, device: &str, reason: &'static str, detail: &str) {
        metrics::counter!(self.inner.metrics.rejected.clone(), "reason" => reason).increment(1);
        if let Some(suppressed) = self.inner.log.check(&format!("{device}\u{0}{reason}")) {
            tracing::warn!(device, reason, suppressed, "{detail}");
        }
    }

    /// Publishes values a device pushed (MQTT telemetry, a REST POST): each is converted to
    /// a reading of the named resource, and the event goes on the bus.
    pub async fn push(
        &self,
        device: &str,
        source: &str,
        values: Vec<(String, CommandValue)>,
        origin: Option<i64>,
    ) -> Result<Event, PushError> {
        let d = self
            .device(device)
            .ok_or_else(|| PushError::UnknownDevice(device.to_string()))?;
        if !self.inner.throttle.admit(device) {
            return Err(PushError::Throttled(device.to_string()));
        }
        if self.is_locked(&d) {
            return Err(PushError::Locked(device.to_string()));
        }
        if values.is_empty() {
            return Err(PushError::Empty);
        }
        let mut readings = Vec::with_capacity(values.len());
        let origin = origin.unwrap_or_else(now_nanos);
        for (resource, v) in values {
            let Some(r) = d.profile.resource(&resource) else {
                return Err(PushError::UnknownResource {
                    device: device.to_string(),
                    resource,
                });
            };
            if !r.properties.read_write.readable() {
                return Err(PushError::NotReadable {
                    device: device.to_string(),
                    resource,
                });
            }
            let (value, _) = to_reading(&r.name, &r.properties, v)?;
            readings.push(reading(&d, r, value, origin));
        }
        let event = make_event(&d, source, readings, origin);
        let event = self.publish(&d, event).await?;
        self.device_answered(&d.device.name).await;
        Ok(event)
    }

    /// Publishes an event of `d` on the bus and hands it back; an error if the bus has not
    /// taken it within [`PUBLISH_WAIT`] (the broker is away), so callers answer in time.
    pub(crate) async fn publish(&self, d: &DeviceRef, event: Event) -> Result<Event, PushError> {
        let bus = self
            .inner
            .bus
            .get()
            .ok_or_else(|| PushError::Bus("not connected yet".into()))?;
        let topic = topics::event(
            bus.base_topic(),
            &self.inner.name,
            &d.device.profile_name,
            &d.device.name,
            &event.source_name,
        );
        let req = AddEventRequest::new(event);
        match tokio::time::timeout(PUBLISH_WAIT, bus.publish_event(&topic, &req)).await {
            Ok(r) => r.map_err(|e| PushError::Bus(e.to_string()))?,
            Err(_) => {
                return Err(PushError::Bus(format!(
                    "the bus did not take the event within {} s",
                    PUBLISH_WAIT.as_secs()
                )));
            }
        }
        metrics::counter!(self.inner.metrics.events.clone()).increment(1);
        metrics::counter!(self.inner.metrics.readings.clone())
            .increment(req.event.readings.len() as u64);
        Ok(req.event)
    }

    /// Calls the driver with the configured timeout and keeps the device's health.
    pub(crate) async fn with_driver<T, F>(&self, d: &DeviceRef, f: F) -> Result<T, DriverError>
    where
        F: std::future::Future<Output = Result<T, DriverError>>,
    {
        let r = match tokio::time::timeout(self.inner.driver_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::Unreachable(format!(
                "no answer within {:?}",
                self.inner.driver_timeout
            ))),
        };
        match &r {
            Ok(_) | Err(DriverError::Device(_)) => self.device_answered(&d.device.name).await,
            Err(DriverError::Unreachable(why)) => {
                metrics::counter!(self.inner.metrics.driver_errors.clone(), "kind" => "unreachable")
                    .increment(1);
                self.device_failed(&d.device.name, why).await;
            }
            Err(_) => {
                metrics::counter!(self.inner.metrics.driver_errors.clone(), "kind" => "other")
                    .increment(1);
            }
        }
        r
    }

    fn health(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device answered: it is UP.
    pub(crate) async fn device_answered(&self, name: &str) {
        if let Some(h) = self.health().get_mut(name) {
            h.fails = 0;
        }
        let was_down = self
            .device(name)
            .is_some_and(|d| d.device.operating_state == OperatingState::Down);
        if was_down {
            self.set_operating(name, OperatingState::Up).await;
        }
    }

    /// The device did not answer: after `allowed_fails` in a row it is DOWN.
    pub(crate) async fn device_failed(&self, name: &str, why: &str) {
        let fails = {
            let mut h = self.health();
            let e = h.entry(name.to_string()).or_default();
            e.fails = e.fails.saturating_add(1);
            e.fails
        };
        let up = self
            .device(name)
            .is_some_and(|d| d.device.operating_state != OperatingState::Down);
        if up && fails >= self.inner.allowed_fails {
            tracing::warn!(
                device = name,
                fails,
                reason = why,
                "device is not answering"
            );
            self.set_operating(name, OperatingState::Down).await;
        }
    }

    async fn set_operating(&self, name: &str, state: OperatingState) {
        if !self.catalog_mut().set_operating(name, state) {
            return;
        }
        tracing::info!(device = name, state = ?state, "operating state changed");
        let update = UpdateDevice {
            name: Some(name.to_string()),
            operating_state: Some(state),
            ..UpdateDevice::default()
        };
        if let Err(e) = self.inner.view.client().update_device(update).await {
            tracing::warn!(device = name, error = %e, "cannot record the operating state in metadata");
        }
        if state == OperatingState::Down
            && let Some(d) = self.device(name)
        {
            crate::autoevent::spawn_down_probe(self, d);
        }
    }

    /// Puts a device (fetched from metadata) into the catalog with its profile and tells the
    /// driver and the autoEvents.
    pub(crate) async fn load_device(&self, device: Device) -> Result<(), CallError> {
        if device.service_name != self.inner.name {
            self.drop_device(&device.name).await;
            return Ok(());
        }
        let cached = self.catalog().profile(&device.profile_name);
        let profile = match cached {
            Some(p) => p,
            None => match self
                .inner
                .view
                .profile(&device.profile_name)
                .await
                .current()?
            {
                Some(p) => self.catalog_mut().put_profile((*p).clone()),
                None => {
                    tracing::warn!(device = %device.name, profile = %device.profile_name, "the device's profile does not exist; device ignored");
                    return Ok(());
                }
            },
        };
        let (r, put) = self.catalog_mut().put_device(device, profile);
        match put {
            Put::Added => {
                tracing::info!(device = %r.device.name, "device added");
                self.inner
                    .driver
                    .device_changed(DeviceChange::Added(r.clone()))
                    .await;
                self.inner.autoevents.restart(self, &r);
            }
            Put::Changed => {
                tracing::info!(device = %r.device.name, "device updated");
                self.inner
                    .driver
                    .device_changed(DeviceChange::Updated(r.clone()))
                    .await;
                self.inner.autoevents.restart(self, &r);
            }
            Put::Same => {}
        }
        if r.device.operating_state == OperatingState::Down {
            crate::autoevent::spawn_down_probe(self, r);
        }
        Ok(())
    }

    pub(crate) async fn drop_device(&self, name: &str) {
        let removed = self.catalog_mut().remove_device(name);
        if let Some(d) = removed {
            tracing::info!(device = name, "device removed");
            self.inner.autoevents.stop(name);
            self.health().remove(name);
            self.inner.throttle.forget(name);
            self.inner
                .driver
                .device_changed(DeviceChange::Removed(d.device))
                .await;
        }
    }

    /// Re-reads a profile after metadata changed it; devices using it follow.
    pub(crate) async fn reload_profile(&self, name: &str) -> Result<(), CallError> {
        if self.catalog().profile(name).is_none() {
            return Ok(());
        }
        let Some(p) = self.inner.view.profile(name).await.current()? else {
            return Ok(());
        };
        let changed = self.catalog_mut().refresh_profile((*p).clone());
        for d in changed {
            self.inner
                .driver
                .device_changed(DeviceChange::Updated(d.clone()))
                .await;
            self.inner.autoevents.restart(self, &d);
        }
        Ok(())
    }

    /// Loads every device of this service from metadata.
    pub(crate) async fn load_all(&self) -> Result<(), CallError> {
        let devices = self
            .inner
            .view
            .client()
            .devices_of_service(&self.inner.name)
            .await?;
        let names: std::collections::HashSet<String> =
            devices.iter().map(|d| d.name.clone()).collect();
        for d in devices {
            self.load_device(d).await?;
        }
        let gone: Vec<String> = self
            .devices()
            .into_iter()
            .map(|d| d.device.name.to_string())
            .filter(|n| !names.contains(n))
            .collect();
        for n in gone {
            self.drop_device(&n).await;
        }
        self.inner
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(devices = names.len(), "devices loaded from metadata");
        Ok(())
    }
}

/// A new random (version 4) ID for an event or reading. IDs only need to be unique, not
/// unpredictable, so they come from a fast thread-local generator instead of a system call
/// per ID (an event of ten readings needs eleven).
pub(crate) fn new_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

pub(crate) fn reading(
    d: &DeviceRef,
    r: &outpost_contracts::metadata::DeviceResource,
    value: outpost_contracts::event::ReadingValue,
    origin: i64,
) -> Reading {
    Reading {
        id: new_id(),
        origin,
        device_name: d.device.name.clone(),
        resource_name: r.name.clone(),
        profile_name: d.device.profile_name.clone(),
        value_type: r.properties.value_type,
        units: r.properties.units.clone(),
        tags: r.tags.clone(),
        value,
    }
}

pub(crate) fn make_event(
    d: &DeviceRef,
    source: &str,
    readings: Vec<Reading>,
    origin: i64,
) -> Event {
    Event {
        api_version: outpost_contracts::API_VERSION.to_string(),
        id: new_id(),
        device_name: d.device.name.clone(),
        profile_name: d.device.profile_name.clone(),
        source_name: source.to_string(),
        origin,
        readings,
        tags: None,
    }
}

/// A device service: the SDK around the driver its configuration makes.
pub struct Adapter<D>(std::marker::PhantomData<D>);

impl<D: DriverConfig> outpost_kit::Service for Adapter<D> {
    type Config = Config<D>;

    const INFO: outpost_kit::Info = outpost_kit::Info::new(D::SERVICE, D::SECTION);

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
            autoevents: crate::autoevent::AutoEvents::default(),
            loaded: std::sync::atomic::AtomicBool::new(false),
            provisioned: std::sync::atomic::AtomicBool::new(false),
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
                register_and_load(&sdk, &base_address, labels).await;
            });
    }
    if cfg.discovery_interval_s > 0 {
        let (sdk, every) = (sdk.clone(), Duration::from_secs(cfg.discovery_interval_s));
        ctx.tasks
            .spawn("discovery", Stage::Background, move |stop| {
                crate::discovery::periodic(sdk, every, stop)
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

/// Registers the device service in metadata (or updates its address) and loads its
/// devices, retrying until metadata answers.
async fn register_and_load(sdk: &Sdk, base_address: &str, labels: Vec<String>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let shutdown = sdk.inner.ctx.shutdown.clone();
    loop {
        match register(sdk, base_address, &labels).await {
            Ok(()) => match provision_then_load(sdk).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot load devices yet; retrying"),
            },
            Err(e) if backoff.attempts() >= 3 => {
                tracing::warn!(error = %e, "cannot register with core-metadata yet; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn provision_then_load(sdk: &Sdk) -> Result<(), CallError> {
    if !sdk
        .inner
        .provisioned
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        sdk.inner.driver.provision(sdk).await;
    }
    sdk.load_all().await
}

async fn register(sdk: &Sdk, base_address: &str, labels: &[String]) -> Result<(), CallError> {
    let md = sdk.inner.view.client();
    let name = &sdk.inner.name;
    match md.device_service(name).await? {
        None => {
            md.add_device_service(DeviceService {
                name: name.clone(),
                description: format!("Outpost {name}"),
                labels: labels.to_vec(),
                base_address: base_address.to_string(),
                admin_state: AdminState::Unlocked,
                ..DeviceService::default()
            })
            .await?;
        }
        Some(existing) => {
            sdk.catalog_mut().service_locked = existing.admin_state == AdminState::Locked;
            if existing.base_address != base_address {
                md.update_device_service(UpdateDeviceService {
                    name: Some(name.clone()),
                    base_address: Some(base_address.to_string()),
                    ..UpdateDeviceService::default()
                })
                .await?;
            }
        }
    }
    Ok(())
}
