//! device-mqtt (port 59982): devices that speak MQTT.
//!
//! Devices connect to the node's broker (the embedded one unless `broker_url` names
//! another) with their own credentials: user name = device name, password = the device's
//! secret. The broker lets each device publish only its own topics
//! ([`outpost_contracts::topics::device`]).
//!
//! - **Telemetry**: a device publishes on `incoming/data/<device>/<source>` (EdgeX
//!   device-mqtt's topic), on `incoming/data/<device>`, or on the `TelemetryTopic` of its
//!   `mqtt` protocol block. The payload is a JSON or CBOR object of resource → value with an
//!   optional timestamp (`TimestampField`, default `timestamp`), or one bare value when the
//!   topic's last level (or `Resource`) names the resource. Values become typed readings per
//!   the profile; messages are acknowledged to the broker only once their event is on the
//!   bus, and the subscription's session outlives restarts of this service.
//! - **Commands**: a read or write of resource `r` is published to
//!   `<CommandTopic>/<r>/<get|set>/<request id>` (`CommandTopic` defaults to
//!   `command/<device>`; a SET carries `{"r": value}`); the device answers on
//!   `command/response/<request id>` with `{"r": value}` or `{"error": "why"}`. No answer
//!   within the service's `driver_timeout_ms` is a timeout (and counts towards DOWN).
//! - Garbage, unknown devices or resources, wrong types and floods are counted and logged
//!   at a limited rate per device; nothing a device sends stops the others being served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use outpost_bus::{Bus, Consumer, Delivery, Options, Subscriber};
use outpost_contracts::metadata::Device;
use outpost_contracts::topics::device::{
    DeviceTopics, PROTOCOL, RESPONSE_PREFIX, TELEMETRY_PREFIX,
};
use outpost_device_sdk::{
    CommandValue, DeviceChange, DeviceRef, Driver, DriverConfig, DriverError, PushError,
    ResourceRef, Sdk,
};
use outpost_kit::config::BusConfig;
use outpost_kit::{Shutdown, Stage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use outpost_device_sdk::payload::{self, Payload, decode};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-mqtt";

/// The client ID of device-mqtt's durable consumer of device telemetry.
pub const TELEMETRY_CLIENT: &str = "outpost-device-mqtt-telemetry";

/// `[device_mqtt.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The broker devices connect to; empty: the node's bus broker.
    pub broker_url: String,
    /// User name on that broker (with `password_file`); empty: the node's credentials.
    pub username: String,
    pub password_file: Option<std::path::PathBuf>,
    /// Telemetry messages handled at once. Messages of one device keep their order.
    pub workers: usize,
    /// Unacknowledged telemetry messages the broker may have in flight to this service.
    pub receive_maximum: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            broker_url: String::new(),
            username: String::new(),
            password_file: None,
            workers: 32,
            receive_maximum: 1024,
        }
    }
}

impl DriverConfig for MqttConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_mqtt";
    const PORT: u16 = 59982;
    const ENABLED: bool = false;

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<std::sync::Arc<dyn outpost_device_sdk::Driver>, outpost_kit::StartError> {
        Ok(Arc::new(Mqtt::new(start.cfg.driver.clone())))
    }

    fn sandbox(
        &self,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        files.config_file(self.password_file.as_deref());
        Ok(())
    }

    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        let s = "device_mqtt.driver";
        p.check(
            (1..=1024).contains(&self.workers),
            s,
            "workers must be between 1 and 1024",
        );
        p.check(
            self.receive_maximum >= 1,
            s,
            "receive_maximum must be at least 1",
        );
        p.check(
            self.broker_url.is_empty()
                || self.broker_url.starts_with("mqtt://")
                || self.broker_url.starts_with("mqtts://"),
            s,
            "broker_url must be empty (the node's broker) or an mqtt:// or mqtts:// URL",
        );
        p.check(
            self.username.is_empty() || self.password_file.is_some(),
            s,
            "username needs password_file",
        );
    }
}

pub type Config = outpost_device_sdk::Config<MqttConfig>;

/// A device's telemetry settings from its `mqtt` protocol block.
#[derive(Debug, Clone, PartialEq)]
struct Telemetry {
    topics: DeviceTopics,
    timestamp_field: String,
    /// For bare values on `TelemetryTopic`: the resource they are for.
    resource: Option<String>,
}

impl Telemetry {
    fn of(d: &Device) -> Self {
        let prop = |k: &str| {
            d.protocols
                .get(PROTOCOL)
                .and_then(|p| p.get(k))
                .and_then(|v| v.as_str())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Self {
            topics: DeviceTopics::of(d),
            timestamp_field: prop("TimestampField").unwrap_or_else(|| "timestamp".into()),
            resource: prop("Resource"),
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<bytes::Bytes>>>>;

struct State {
    sdk: Sdk,
    commands: Bus,
    /// Adds and removes custom telemetry topics on the telemetry session.
    telemetry: Subscriber,
    /// Custom telemetry topic → device.
    custom: Mutex<HashMap<String, String>>,
    pending: Pending,
}

/// The MQTT adapter.
pub struct Mqtt {
    cfg: MqttConfig,
    state: tokio::sync::OnceCell<Arc<State>>,
}

impl Mqtt {
    pub fn new(cfg: MqttConfig) -> Self {
        Self {
            cfg,
            state: tokio::sync::OnceCell::new(),
        }
    }

    fn broker(&self, node: &BusConfig) -> BusConfig {
        let mut b = node.clone();
        if !self.cfg.broker_url.is_empty() {
            b.url = self.cfg.broker_url.clone();
        }
        // Only the node's own broker keeps a journal.
        b.journal = node.journal && b.url == node.url;
        if !self.cfg.username.is_empty() {
            b.username = self.cfg.username.clone();
            b.password_file = self.cfg.password_file.clone();
        }
        b
    }

    fn state(&self) -> Result<&Arc<State>, DriverError> {
        self.state
            .get()
            .ok_or_else(|| DriverError::Unreachable("not connected to the broker yet".into()))
    }

    /// Sends one command request and waits for the device's answer.
    async fn request(
        &self,
        device: &DeviceRef,
        resource: &str,
        method: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, DriverError> {
        let st = self.state()?;
        let id = uuid::Uuid::new_v4().to_string();
        let topics = DeviceTopics::of(&device.device);
        let topic = format!("{}/{resource}/{method}/{id}", topics.command);
        let (tx, rx) = oneshot::channel();
        let _waiting = Waiting::new(&st.pending, &id, tx);
        st.commands
            .publish_raw(&topic, body)
            .await
            .map_err(|e| DriverError::Unreachable(e.to_string()))?;
        // The SDK bounds the wait with the service's driver timeout.
        let reply = rx
            .await
            .map_err(|_| DriverError::Unreachable("the reply channel closed".into()))?;
        let value = match decode(&reply, "") {
            Ok(Payload::Object { values, .. }) => serde_json::Value::Object(
                values
                    .into_iter()
                    .map(|(k, v)| (k, command_value_json(v)))
                    .collect(),
            ),
            Ok(Payload::Value(v)) => command_value_json(v),
            Err(payload::PayloadError::Empty) => serde_json::Value::Null,
            Err(e) => return Err(DriverError::Device(format!("unreadable reply: {e}"))),
        };
        if let Some(err) = value.get("error") {
            let msg = err.as_str().map_or_else(|| err.to_string(), str::to_string);
            return Err(DriverError::Device(msg));
        }
        Ok(value)
    }
}

fn command_value_json(v: CommandValue) -> serde_json::Value {
    match v {
        CommandValue::Bool(b) => b.into(),
        CommandValue::Int(i) => i.into(),
        CommandValue::Uint(u) => u.into(),
        CommandValue::Float(f) => f.into(),
        CommandValue::String(s) => s.into(),
        CommandValue::Object(o) => o,
        CommandValue::Array(a) => a.into_iter().map(command_value_json).collect(),
        CommandValue::Binary(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b).into()
        }
    }
}

/// A request waiting for its reply; leaves the table when dropped (answered or not).
struct Waiting<'a> {
    pending: &'a Pending,
    id: String,
}

impl<'a> Waiting<'a> {
    fn new(pending: &'a Pending, id: &str, tx: oneshot::Sender<bytes::Bytes>) -> Self {
        lock(pending).insert(id.to_string(), tx);
        Self {
            pending,
            id: id.to_string(),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Driver for Mqtt {
    async fn start(&self, sdk: Sdk) {
        let ctx = sdk.context().clone();
        let broker = self.broker(&ctx.common.bus);
        let connect = || async {
            let telemetry = Consumer::connect(
                &broker,
                &ctx.data_dir,
                SERVICE,
                Options::durable(TELEMETRY_CLIENT, self.cfg.receive_maximum),
                &[format!("{TELEMETRY_PREFIX}/#")],
                &ctx.shutdown,
            )
            .await?;
            let commands = Bus::connect(
                &broker,
                &ctx.data_dir,
                SERVICE,
                Options::plain("outpost-device-mqtt-commands"),
                &ctx.shutdown,
            )
            .await?;
            Ok::<_, outpost_bus::BusError>((telemetry, commands))
        };
        // Every failure is retried: a broker restarting, or a connection lost between
        // connecting and subscribing, must not leave the service without its devices.
        let mut backoff = outpost_kit::backoff::Backoff::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        );
        let (telemetry, commands) = loop {
            match connect().await {
                Ok(c) => break c,
                Err(_) if ctx.shutdown.is_triggered() => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect to the device broker; retrying");
                    tokio::select! {
                        () = ctx.shutdown.wait() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        };
        // Subscribed (the broker acknowledged it): from here on what devices publish on
        // the telemetry topics waits for this service.
        tracing::info!(filter = %format!("{TELEMETRY_PREFIX}/#"), "taking device telemetry");
        let state = Arc::new(State {
            sdk,
            commands,
            telemetry: telemetry.subscriber(),
            custom: Mutex::default(),
            pending: Pending::default(),
        });
        match state
            .commands
            .subscribe(&format!("{RESPONSE_PREFIX}/+"))
            .await
        {
            Ok(replies) => {
                let pending = Arc::clone(&state.pending);
                ctx.tasks
                    .spawn("command-replies", Stage::Background, move |stop| {
                        route_replies(pending, replies, stop)
                    });
            }
            Err(e) => tracing::error!(error = %e, "cannot subscribe to command replies"),
        }
        let (st, workers) = (Arc::clone(&state), self.cfg.workers);
        // Declared after the SDK's own tasks: it stops (and closes the telemetry session)
        // before the driver does and before the bus the events go out on.
        ctx.tasks
            .spawn("telemetry", Stage::AfterServing, move |stop| {
                route_telemetry(st, telemetry, workers, stop)
            });
        let _ = self.state.set(state);
    }

    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        let asks = resources.iter().map(|r| async move {
            let v = self
                .request(device, r.name(), "get", b"{}".to_vec())
                .await?;
            let v = match v {
                serde_json::Value::Object(mut m) if m.contains_key(r.name()) => {
                    m.remove(r.name()).unwrap_or_default()
                }
                serde_json::Value::Object(_) => {
                    return Err(DriverError::Device(format!(
                        "the reply has no value for '{}'",
                        r.name()
                    )));
                }
                other => other,
            };
            Ok(CommandValue::from_json(&v))
        });
        futures_util::future::try_join_all(asks).await
    }

    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        let sets = values.iter().map(|(r, v)| async move {
            let body = serde_json::json!({ r.name(): command_value_json(v.clone()) });
            self.request(device, r.name(), "set", body.to_string().into_bytes())
                .await
                .map(drop)
        });
        futures_util::future::try_join_all(sets).await.map(drop)
    }

    fn validate(&self, device: &Device) -> Result<(), String> {
        if let Some(p) = device.protocols.get(PROTOCOL) {
            for key in [
                "CommandTopic",
                "TelemetryTopic",
                "Resource",
                "TimestampField",
            ] {
                if p.get(key).is_some_and(|v| !v.is_string()) {
                    return Err(format!("mqtt.{key} must be text"));
                }
            }
        }
        let topics = DeviceTopics::of(device);
        let base = self.state.get().map_or_else(
            || "edgex".to_string(),
            |s| s.sdk.context().common.bus.base_topic.clone(),
        );
        topics.check(&base).map_err(|why| format!("mqtt: {why}"))?;
        // Two devices on one telemetry topic could speak for each other.
        if let (Some(t), Some(st)) = (&topics.telemetry, self.state.get())
            && let Some(other) = st.sdk.devices().into_iter().find(|d| {
                d.name() != device.name && DeviceTopics::of(&d.device).telemetry.as_ref() == Some(t)
            })
        {
            return Err(format!(
                "mqtt.TelemetryTopic '{t}' is already device '{}''s",
                other.name()
            ));
        }
        Ok(())
    }

    async fn device_changed(&self, change: DeviceChange) {
        let Some(st) = self.state.get() else { return };
        let (name, wanted) = match &change {
            DeviceChange::Added(d) | DeviceChange::Updated(d) => (
                d.name().to_string(),
                Telemetry::of(&d.device).topics.telemetry,
            ),
            DeviceChange::Removed(d) => (d.name.clone(), None),
        };
        let old: Vec<String> = lock(&st.custom)
            .iter()
            .filter(|(t, dev)| **dev == name && Some(*t) != wanted.as_ref())
            .map(|(t, _)| t.clone())
            .collect();
        for t in old {
            lock(&st.custom).remove(&t);
            if let Err(e) = st.telemetry.unsubscribe(&t).await {
                tracing::warn!(topic = t, error = %e, "cannot unsubscribe");
            }
        }
        if let Some(t) = wanted {
            let new = lock(&st.custom).insert(t.clone(), name.clone()).is_none();
            if new && let Err(e) = st.telemetry.subscribe(&t).await {
                tracing::warn!(topic = t, device = name, error = %e, "cannot subscribe to the device's telemetry topic");
            }
        }
    }

    async fn stop(&self) {
        if let Some(st) = self.state.get() {
            st.commands.disconnect().await;
        }
    }
}

/// Hands each reply to the request waiting for it.
async fn route_replies(
    pending: Pending,
    mut replies: mpsc::UnboundedReceiver<Delivery>,
    stop: Shutdown,
) {
    loop {
        let d = tokio::select! {
            () = stop.wait() => return,
            d = replies.recv() => match d {
                Some(d) => d,
                None => return,
            },
        };
        let id = d.topic.rsplit('/').next().unwrap_or_default().to_string();
        let waiter = lock(&pending).remove(&id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(d.payload.clone());
            }
            None => tracing::debug!(id, "a reply nobody waits for (late or unknown)"),
        }
        d.ack();
    }
}

/// Spreads telemetry over `workers` queues by device, so one device's messages stay in
/// order while many devices are handled at once. On `stop`, the workers finish what they
/// were given (bounded by the session's receive maximum) and the session is closed; what
/// could not be turned into an event by then stays with the broker.
async fn route_telemetry(st: Arc<State>, mut consumer: Consumer, workers: usize, stop: Shutdown) {
    let mut running = tokio::task::JoinSet::new();
    let queues: Vec<mpsc::UnboundedSender<Delivery>> = (0..workers.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            running.spawn(work(Arc::clone(&st), rx, stop.clone()));
            tx
        })
        .collect();
    while let Some(d) = consumer.recv(&stop).await {
        let key = device_of(&st, &d.topic).unwrap_or_default();
        let i = (fxhash(&key) % queues.len() as u64) as usize;
        if let Some(q) = queues.get(i)
            && let Err(mpsc::error::SendError(d)) = q.send(d)
        {
            // The worker is gone: leave the message with the broker.
            d.abandon();
        }
    }
    drop(queues);
    while running.join_next().await.is_some() {}
    consumer.close().await;
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The device a telemetry topic belongs to.
fn device_of(st: &State, topic: &str) -> Option<String> {
    if let Some(rest) = topic
        .strip_prefix(TELEMETRY_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    {
        return rest.split('/').next().map(str::to_string);
    }
    lock(&st.custom).get(topic).cloned()
}

async fn work(st: Arc<State>, mut rx: mpsc::UnboundedReceiver<Delivery>, stop: Shutdown) {
    // Messages the broker kept for this service while it was away arrive at once; the
    // devices they are for must be known first.
    tokio::select! {
        () = st.sdk.wait_loaded() => {}
        () = stop.wait() => return,
    }
    while let Some(mut d) = rx.recv().await {
        let message_id = d.message_id.take();
        let (topic, payload, ack) = d.into_parts();
        match handle(&st, &topic, &payload, message_id.as_deref(), &stop).await {
            // Unusable messages are acknowledged too: redelivering them cannot help.
            Handled::Done => ack.ack(),
            Handled::NotYet => ack.abandon(),
        }
    }
}

/// What became of a telemetry message.
enum Handled {
    /// Its event is on the bus, or it was refused for good.
    Done,
    /// Its event could not be published before the service stopped.
    NotYet,
}

/// Turns one telemetry message into an event on the bus.
async fn handle(
    st: &State,
    topic: &str,
    payload: &[u8],
    message_id: Option<&str>,
    stop: &Shutdown,
) -> Handled {
    let sdk = &st.sdk;
    let Some(name) = device_of(st, topic) else {
        sdk.reject(
            "?",
            "unknown_topic",
            &format!("telemetry on unknown topic {topic}"),
        );
        return Handled::Done;
    };
    let Some(device) = sdk.device(&name) else {
        sdk.reject(
            &name,
            "unknown_device",
            &format!("telemetry for '{name}', which is not a device of {SERVICE}"),
        );
        return Handled::Done;
    };
    let tel = Telemetry::of(&device.device);
    // incoming/data/<device>/<source>: the source names a command or a resource.
    let source_level = topic
        .strip_prefix(TELEMETRY_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split_once('/'))
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty());
    if source_level.as_deref().is_some_and(|s| s.contains('/')) {
        sdk.reject(
            &name,
            "unknown_topic",
            &format!("{topic}: one level after the device name at most"),
        );
        return Handled::Done;
    }
    let decoded = match decode(payload, &tel.timestamp_field) {
        Ok(p) => p,
        Err(e) => {
            sdk.reject(&name, "bad_payload", &format!("{topic}: {e}"));
            return Handled::Done;
        }
    };
    let (source, values, origin) = match decoded {
        Payload::Object { values, origin } => {
            let source = source_level
                .clone()
                .unwrap_or_else(|| match values.as_slice() {
                    [(only, _)] => only.clone(),
                    _ => "telemetry".to_string(),
                });
            (source, values, origin)
        }
        Payload::Value(v) => {
            let Some(resource) = source_level.clone().or_else(|| tel.resource.clone()) else {
                sdk.reject(
                    &name,
                    "bad_payload",
                    &format!("{topic}: a bare value needs a topic that names the resource (or mqtt.Resource)"),
                );
                return Handled::Done;
            };
            (resource.clone(), vec![(resource, v)], None)
        }
    };
    // Unknown resources are reported; the rest of the message is still used.
    let mut known = Vec::with_capacity(values.len());
    for (resource, v) in values {
        if device.profile.resource(&resource).is_some() {
            known.push((resource, v));
        } else {
            sdk.reject(
                &name,
                "unknown_resource",
                &format!("device '{name}' has no resource '{resource}'"),
            );
        }
    }
    if known.is_empty() {
        return Handled::Done;
    }
    // The message is acknowledged only once its event is on the bus: a bus failure is
    // retried (with backoff, until shutdown) rather than dropped.
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match sdk
            .push_derived(&name, &source, known.clone(), origin, message_id)
            .await
        {
            Ok(_) => return Handled::Done,
            Err(e @ PushError::Bus(_)) => {
                tracing::warn!(device = name, error = %e, "cannot publish telemetry; retrying");
                tokio::select! {
                    () = stop.wait() => return Handled::NotYet,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                sdk.reject(&name, e.reason(), &format!("{topic}: {e}"));
                return Handled::Done;
            }
        }
    }
}

/// The service, as the node runs it.
pub type DeviceMqtt = outpost_device_sdk::Adapter<MqttConfig>;

#[cfg(test)]
mod tests;
