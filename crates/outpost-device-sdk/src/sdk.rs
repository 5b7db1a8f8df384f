//! The handle a device service's parts and its driver share ([`Sdk`]), and the contract
//! between the SDK and a protocol adapter ([`Driver`]): the service's state (its devices,
//! their health, the bus and metadata), publishing events, and device health (a device that
//! stops answering goes DOWN after `allowed_fails` failures, its first answer brings it UP).
//!
//! This is the SDK's lowest layer: every other module builds on it, it builds on none of
//! them but the catalog and the driver's types.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use outpost_bus::Link;
use outpost_bus::metadata::{CREDENTIAL_GRACE, Credential, Lookup, MetadataView, Verdict};
use outpost_contracts::event::{AddEventRequest, Event, Reading};
use outpost_contracts::metadata::{AutoEvent, Device, OperatingState, UpdateDevice};
use outpost_contracts::{now_nanos, topics};
use outpost_kit::Context;
use outpost_kit::client::Metadata;
use outpost_kit::ratelog::RateLimitedLog;
use tokio::task::AbortHandle;

use crate::catalog::Catalog;
use crate::driver::{DeviceChange, DeviceRef, Discovered, DriverError, ResourceRef};
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

/// Why a device's secret was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("wrong secret for this device")]
    Wrong,
    #[error("cannot check the device secret now; retry")]
    Unavailable,
}

pub(crate) struct Metrics {
    pub events: String,
    pub readings: String,
    pub rejected: String,
    pub driver_errors: String,
    pub suppressed: String,
}

#[derive(Default)]
pub(crate) struct Health {
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
    pub health: Mutex<HashMap<String, Health>>,
    pub log: RateLimitedLog,
    pub metrics: Metrics,
    pub throttle: crate::throttle::Throttle,
    pub autoevents: AutoEvents,
    /// Set once the devices were loaded from metadata.
    pub loaded: std::sync::atomic::AtomicBool,
    pub provisioned: std::sync::atomic::AtomicBool,
    /// Discovery's settings, as core-keeper has them.
    pub live: outpost_kit::writable::Live<crate::config::Writable>,
    /// Secrets given with `POST /api/v3/secret`, by name, for a driver that does not keep
    /// them ([`DriverConfig::KEEPS_SECRETS`](crate::DriverConfig::KEEPS_SECRETS)): in memory.
    pub secrets: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Where a driver that keeps them has them: its encrypted database.
    pub secrets_db: Option<outpost_storage::Db>,
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

    /// Checks the secret a device presented (device-rest's bearer token, device-coap's
    /// `secret=`) with core-metadata. The view remembers a verified secret for the
    /// service's `credentials_for`, forgets it when the device changes, and honours it for
    /// [`CREDENTIAL_GRACE`] while core-metadata cannot be asked. A wrong one is counted and
    /// logged as `bad_token`.
    pub async fn check_secret(&self, device: &str, secret: &str) -> Result<(), SecretError> {
        match self.view().verify(device, Credential::Secret(secret)).await {
            Lookup::Missing | Lookup::Found(Verdict::Pending) => {
                self.reject(device, "bad_token", "a request with a wrong device secret");
                Err(SecretError::Wrong)
            }
            found => match found.within(CREDENTIAL_GRACE) {
                Some(_) => Ok(()),
                None => {
                    tracing::warn!(
                        device,
                        "cannot check a device secret: core-metadata unreachable"
                    );
                    Err(SecretError::Unavailable)
                }
            },
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
        self.push_derived(device, source, values, origin, None)
            .await
    }

    /// [`Sdk::push`] for values read from a message the node's broker journaled
    /// (`message_id`, see [`outpost_bus::journal::MESSAGE_ID`]): the event's and readings'
    /// ids are derived from it, and its origin, when the values carry none, is when the
    /// broker received it ([`outpost_bus::journal::received_at`]); so a redelivery of that
    /// message (after a crash, before its confirmation reached the broker) yields the same
    /// event, which core-data stores once.
    pub async fn push_derived(
        &self,
        device: &str,
        source: &str,
        values: Vec<(String, CommandValue)>,
        origin: Option<i64>,
        message_id: Option<&str>,
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
        // Values without a time of their own from a journaled message are dated when the
        // broker received it, the same on every redelivery (so the same event, which
        // core-data stores once however late the redelivery comes).
        let origin = origin
            .or_else(|| message_id.and_then(outpost_bus::journal::received_at))
            .unwrap_or_else(now_nanos);
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
        let mut event = make_event(&d, source, readings, origin);
        if let Some(m) = message_id {
            derive_ids(&mut event, m);
        }
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

    pub(crate) fn health(&self) -> std::sync::MutexGuard<'_, HashMap<String, Health>> {
        self.inner
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key/value pairs of the secret `name` given with `POST /api/v3/secret` (`None`
    /// when there is none).
    pub async fn secret(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(String, String)>>, outpost_storage::StorageError> {
        let pairs = match &self.inner.secrets_db {
            Some(db) => outpost_storage::secrets::get(db, name).await?,
            None => self
                .inner
                .secrets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
                .cloned()
                .unwrap_or_default(),
        };
        Ok((!pairs.is_empty()).then_some(pairs))
    }

    /// Keeps the secret `name` (in the database when the driver keeps secrets) and tells
    /// the driver.
    pub async fn set_secret(
        &self,
        name: String,
        pairs: Vec<(String, String)>,
    ) -> Result<(), outpost_storage::StorageError> {
        match &self.inner.secrets_db {
            Some(db) => outpost_storage::secrets::put(db, name.clone(), pairs).await?,
            None => {
                self.inner
                    .secrets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(name.clone(), pairs);
            }
        }
        self.inner.driver.secret_changed(&name).await;
        Ok(())
    }

    /// A push-style driver heard from `name` outside a read or write (a subscription made,
    /// a notification): it is UP, as after any answer.
    pub async fn device_reachable(&self, name: &str) {
        self.device_answered(name).await;
    }

    /// A push-style driver could not reach `name` (its session lost, a reconnect refused):
    /// counted as a failed read, so after `allowed_fails` in a row the device is DOWN.
    pub async fn device_unreachable(&self, name: &str, why: &str) {
        metrics::counter!(self.inner.metrics.driver_errors.clone(), "kind" => "unreachable")
            .increment(1);
        self.device_failed(name, why).await;
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
    }
}

/// The autoEvent tasks of each device (started by the `autoevent` module), aborted when the
/// device goes or the service stops.
#[derive(Default)]
pub struct AutoEvents {
    tasks: Mutex<HashMap<String, Vec<AbortHandle>>>,
}

impl AutoEvents {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<AbortHandle>>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts `handles` in place of `device`'s tasks, which are aborted.
    pub(crate) fn replace(&self, device: &str, handles: Vec<AbortHandle>) {
        self.stop(device);
        if !handles.is_empty() {
            self.tasks().insert(device.to_string(), handles);
        }
    }

    pub(crate) fn stop(&self, device: &str) {
        if let Some(hs) = self.tasks().remove(device) {
            for h in hs {
                h.abort();
            }
        }
    }

    pub(crate) fn stop_all(&self) {
        for (_, hs) in self.tasks().drain() {
            for h in hs {
                h.abort();
            }
        }
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

/// Ids for `event` and its readings derived from the bus message it was made from.
fn derive_ids(event: &mut Event, message_id: &str) {
    let id = |part: &str| {
        let k = outpost_bus::journal::key(
            &event.device_name,
            format!("{message_id}\0{part}").as_bytes(),
        );
        uuid::Builder::from_random_bytes(k).into_uuid().to_string()
    };
    event.id = id("event");
    let ids: Vec<String> = (0..event.readings.len())
        .map(|i| id(&i.to_string()))
        .collect();
    for (r, i) in event.readings.iter_mut().zip(ids) {
        r.id = i;
    }
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

/// A protocol adapter.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Called once the SDK is connected, before devices are loaded; push-style drivers
    /// keep the handle to publish what devices send.
    async fn start(&self, sdk: Sdk) {
        let _ = sdk;
    }

    /// Called once the device service is registered in metadata and before its devices are
    /// loaded: the place to create the profiles and devices the adapter ships with.
    async fn provision(&self, sdk: &Sdk) {
        let _ = sdk;
    }

    /// Reads `resources` of `device`; one value per resource, in order.
    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError>;

    /// Writes `values` to `device` in one go where the protocol allows.
    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError>;

    /// Checks a device's protocol properties before metadata accepts it
    /// (`POST /api/v3/validate/device`).
    fn validate(&self, device: &Device) -> Result<(), String> {
        let _ = device;
        Ok(())
    }

    /// Whether the driver serves `ae` of `d` itself, pushing its events with [`Sdk::push`]
    /// (OPC UA monitored items, CoAP Observe) instead of the SDK reading it every interval.
    /// Asked whenever the device is added or changed, after [`Driver::device_changed`].
    fn pushes_autoevent(&self, d: &DeviceRef, ae: &AutoEvent) -> bool {
        let _ = (d, ae);
        false
    }

    /// Looks for devices on the network.
    async fn discover(&self) -> Result<Vec<Discovered>, DriverError> {
        Err(DriverError::Unsupported)
    }

    /// A device was added, changed or removed.
    async fn device_changed(&self, change: DeviceChange) {
        let _ = change;
    }

    /// The secret `name` was given or replaced (`POST /api/v3/secret`): a driver holding a
    /// session made with it makes it again.
    async fn secret_changed(&self, name: &str) {
        let _ = name;
    }

    /// The service stops.
    async fn stop(&self) {}

    /// HTTP routes of the protocol itself (device-rest's `/api/v3/resource/...`), served
    /// beside the device-service API.
    fn routes(&self, sdk: &Sdk) -> Option<axum::Router> {
        let _ = sdk;
        None
    }
}
