//! Device services as they run in a node: next to the real core-metadata on a real broker,
//! registered under the address they serve on, with their events watched on the bus; and
//! a small HTTP device for the services that reach devices over HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use outpost_bus::Delivery;
use outpost_contracts::event::{Event, ReadingValue};
use outpost_contracts::value::ValueType;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    Drive, Mosquitto, Served, Service, WAIT, bus, context, free_port, metadata, until, within,
};

/// A broker, core-metadata on it with the Thermostat profile, a device service (served on
/// the address it registers in core-metadata) and a watcher of the device events on the bus.
pub struct DeviceNode {
    pub broker: Mosquitto,
    pub md: Service,
    pub md_at: Served,
    pub ds: Service,
    pub ds_at: Served,
    /// Every device event published on the bus, in order.
    pub events: UnboundedReceiver<Delivery>,
    _watcher: bus::Client,
}

impl DeviceNode {
    /// Starts the node with the device service `S`, whose config `cfg` makes for its port.
    pub async fn start<S: outpost_kit::Service>(cfg: impl FnOnce(u16) -> S::Config) -> Self {
        let broker = Mosquitto::start();
        let (md, md_at) = metadata::serve(Some(&broker.url())).await;
        let name = S::INFO.name;
        let port = free_port();
        let test = context(name, &[("core-metadata", md_at.url())]).with_bus(&broker.url());
        let ds = within(
            &format!("{name} builds"),
            Service::build_in::<S>(test, cfg(port)),
        )
        .await;
        let ds_at = within(
            &format!("{name} serves"),
            ds.serve_at(([127, 0, 0, 1], port).into()),
        )
        .await;
        let watcher = bus::Client::connect(&broker.url(), "events-watcher").await;
        let events = watcher.subscribe("edgex/events/device/#").await;
        // Devices added once the service is registered are validated by it and reach it as
        // core-metadata's changes.
        let path = format!("/api/v3/deviceservice/name/{name}");
        let registered = until(
            &format!("{name} registers in core-metadata"),
            WAIT,
            async || {
                let (s, b) = md.call("GET", &path, None).await;
                (s == StatusCode::OK).then(|| b["service"]["baseAddress"].clone())
            },
        )
        .await;
        assert_eq!(registered, ds_at.url(), "{name} registers where it serves");
        metadata::add_profile_yaml(&md, metadata::THERMOSTAT, None).await;
        Self {
            broker,
            md,
            md_at,
            ds,
            ds_at,
            events,
            _watcher: watcher,
        }
    }

    /// Waits until the device service has device `name` (it then tells an unknown command
    /// from an unknown device).
    pub async fn known(&self, name: &str) {
        let path = format!("/api/v3/device/name/{name}/NoSuchCommand");
        until(
            &format!("the device service knows {name}"),
            WAIT,
            async || {
                let (s, b) = self.ds.call("GET", &path, None).await;
                (s == StatusCode::NOT_FOUND && b["message"].as_str()?.contains("NoSuchCommand"))
                    .then_some(())
            },
        )
        .await;
    }

    /// The next device event on the bus, with its topic.
    pub async fn next_event(&mut self) -> (String, Event) {
        let d = bus::next(&mut self.events, "a device event").await;
        let env = outpost_contracts::envelope::decode_event(&d.payload).expect("an event");
        (d.topic.clone(), env.payload.event)
    }

    /// The next device event, which must be Thermostat `device`'s, published on the topic
    /// of `source` (a resource, or `telemetry` for several at once).
    pub async fn next_event_from(&mut self, device: &str, source: &str) -> Event {
        let (topic, ev) = self.next_event().await;
        let service = self.ds.test.ctx.name.as_str();
        assert_eq!(
            topic,
            format!("edgex/events/device/{service}/Thermostat/{device}/{source}")
        );
        assert_eq!(
            (ev.device_name.as_str(), ev.profile_name.as_str()),
            (device, "Thermostat")
        );
        ev
    }

    /// The next event, which must be Thermostat `device`'s telemetry from `origin` (in ns)
    /// with Humidity 40 and Temperature 20.25: what the tests of device services send as
    /// several resources at once.
    pub async fn expect_climate_telemetry(&mut self, device: &str, origin: i64) {
        let ev = self.next_event_from(device, "telemetry").await;
        assert_eq!(ev.origin, origin);
        assert_eq!(
            numbers(&ev),
            [
                ("Humidity", ValueType::Uint8, 40.0),
                ("Temperature", ValueType::Float64, 20.25)
            ]
        );
    }

    /// The device service's counter `name` for `reason`.
    pub async fn metric(&self, name: &str, reason: &str) -> u64 {
        self.ds
            .metric(&format!("{name}{{reason=\"{reason}\"}}"))
            .await
    }

    /// Stops serving both services.
    pub async fn stop(self) {
        self.ds_at.stop().await;
        self.md_at.stop().await;
    }
}

/// A reading's value as text; it must be a simple one.
pub fn simple(v: &ReadingValue) -> &str {
    match v {
        ReadingValue::Simple(s) => s,
        other => panic!("not a simple value: {other:?}"),
    }
}

/// A reading's value as a number; it must be a simple one.
pub fn float(v: &ReadingValue) -> f64 {
    simple(v).parse().expect("a number")
}

/// The readings of `ev` as (resource, type, value), by resource name.
pub fn numbers(ev: &Event) -> Vec<(&str, ValueType, f64)> {
    let mut got: Vec<_> = ev
        .readings
        .iter()
        .map(|r| (r.resource_name.as_str(), r.value_type, float(&r.value)))
        .collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    got
}

/// The readings of an event as JSON (a command's answer) as (resource, type, value), in
/// their order; every value must be a number as text.
pub fn json_numbers(event: &serde_json::Value) -> Vec<(String, String, f64)> {
    let text = |v: &serde_json::Value| v.as_str().expect("text").to_string();
    event["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| {
            let value = text(&r["value"]).parse().expect("a number");
            (text(&r["resourceName"]), text(&r["valueType"]), value)
        })
        .collect()
}

/// A device that speaks HTTP the way device-rest reaches it: `GET <prefix>/<resource>`
/// answers the value as text (404 for a resource it does not have), `PUT
/// <prefix>/<resource>` takes one. Served until the test ends.
#[derive(Clone, Default)]
pub struct HttpDevice {
    values: Arc<Mutex<HashMap<String, String>>>,
    writes: Arc<Mutex<Vec<(String, String)>>>,
}

impl HttpDevice {
    /// Serves a device with `values` under `prefix` on a free port; the device and the port.
    pub async fn start(prefix: &str, values: &[(&str, &str)]) -> (Self, u16) {
        let dev = Self::default();
        dev.lock_values().extend(
            values
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        let app = Router::new()
            .route(
                &format!("{prefix}/{{resource}}"),
                get(device_read).put(device_write),
            )
            .with_state(dev.clone());
        let listener = within(
            "the device binds",
            tokio::net::TcpListener::bind("127.0.0.1:0"),
        )
        .await
        .expect("bind the device");
        let port = listener.local_addr().expect("local address").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (dev, port)
    }

    /// What was written to the device, (resource, value) in order.
    pub fn writes(&self) -> Vec<(String, String)> {
        self.writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock_values(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn device_read(State(d): State<HttpDevice>, Path(r): Path<String>) -> Response {
    let value = d.lock_values().get(&r).cloned();
    match value {
        Some(v) => v.into_response(),
        None => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

async fn device_write(
    State(d): State<HttpDevice>,
    Path(r): Path<String>,
    body: String,
) -> StatusCode {
    d.writes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((r.clone(), body.clone()));
    d.lock_values().insert(r, body);
    StatusCode::OK
}
