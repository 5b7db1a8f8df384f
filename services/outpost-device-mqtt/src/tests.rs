//! device-mqtt's router, built as the node builds it, against the real core-metadata (on a
//! socket, announcing its changes on a real broker), with devices played by plain MQTT
//! clients on that broker and its events watched there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_bus::{Bus, Delivery, Options};
use outpost_contracts::event::{Event, ReadingValue};
use outpost_contracts::metadata::DeviceProfile;
use outpost_contracts::value::ValueType;
use outpost_core_metadata::CoreMetadata;
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;
use outpost_testkit::{Mosquitto, Served, Service, context, free_port};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{Config, DeviceMqtt};

const WAIT: Duration = Duration::from_secs(20);

const PROFILE: &str = include_str!("../../../examples/thermostat.yaml");

const REJECTED: &str = "outpost_device_mqtt_device_messages_rejected_total";

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add(md: &Service, path: &str, key: &str, item: Value) {
    let (s, b) = md
        .call("POST", path, Some(json!([{"apiVersion": "v3", key: item}])))
        .await;
    assert_eq!(
        (s.as_u16(), b[0]["statusCode"].as_u64()),
        (207, Some(201)),
        "POST {path}: {b}"
    );
}

/// A broker, core-metadata on it with the Thermostat profile and the devices, device-mqtt
/// (served on the address it registers) with them loaded, and a watcher of device events.
struct Node {
    broker: Mosquitto,
    md_at: Served,
    ds: Service,
    ds_at: Served,
    events: UnboundedReceiver<Delivery>,
    /// Kept for the clients' credentials.
    dir: tempfile::TempDir,
    _watcher: Bus,
    _md: Service,
}

impl Node {
    async fn start(devices: &[&str]) -> Self {
        let broker = Mosquitto::start();
        let md = within(
            "core-metadata builds",
            Service::build_in::<CoreMetadata>(
                context("core-metadata", &[]).with_bus(&broker.url()),
                outpost_core_metadata::Config::default(),
            ),
        )
        .await;
        let md_at = within(
            "core-metadata serves",
            md.serve_at(([127, 0, 0, 1], 0).into()),
        )
        .await;
        let port = free_port();
        let ds = within(
            "device-mqtt builds",
            Service::build_in::<DeviceMqtt>(
                context("device-mqtt", &[("core-metadata", md_at.url())]).with_bus(&broker.url()),
                Config {
                    port,
                    // A device that does not answer is given up on in time for the test.
                    driver_timeout_ms: 2_000,
                    ..Config::default()
                },
            ),
        )
        .await;
        let ds_at = within(
            "device-mqtt serves",
            ds.serve_at(([127, 0, 0, 1], port).into()),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let watcher = client(&broker, &dir, "events-watcher").await;
        let events = within(
            "the watcher subscribes",
            watcher.subscribe("edgex/events/device/#"),
        )
        .await
        .unwrap();
        until("device-mqtt registers in core-metadata", async || {
            let (s, b) = md
                .call("GET", "/api/v3/deviceservice/name/device-mqtt", None)
                .await;
            (s == StatusCode::OK && b["service"]["baseAddress"] == ds_at.url()).then_some(())
        })
        .await;
        let profile = serde_json::to_value(DeviceProfile::from_yaml(PROFILE).expect("profile"))
            .expect("json");
        add(&md, "/api/v3/deviceprofile", "profile", profile).await;
        for name in devices {
            let device = json!({"name": name, "serviceName": "device-mqtt",
                "profileName": "Thermostat", "adminState": "UNLOCKED", "operatingState": "UP",
                "protocols": {"mqtt": {}}});
            add(&md, "/api/v3/device", "device", device).await;
        }
        let node = Self {
            broker,
            md_at,
            ds,
            ds_at,
            events,
            dir,
            _watcher: watcher,
            _md: md,
        };
        for name in devices {
            node.known(name).await;
        }
        node
    }

    /// Waits until device-mqtt has device `name` (it then tells an unknown command from an
    /// unknown device).
    async fn known(&self, name: &str) {
        until(&format!("device-mqtt knows {name}"), async || {
            let (s, b) = self
                .ds
                .call(
                    "GET",
                    &format!("/api/v3/device/name/{name}/NoSuchCommand"),
                    None,
                )
                .await;
            (s == StatusCode::NOT_FOUND && b["message"].as_str()?.contains("NoSuchCommand"))
                .then_some(())
        })
        .await;
    }

    /// A plain MQTT client on the broker, as a device would be.
    async fn device(&self, client_id: &str) -> Bus {
        client(&self.broker, &self.dir, client_id).await
    }

    /// The next device event on the bus, with its topic.
    async fn next_event(&mut self) -> (String, Event) {
        let d = within("a device event", self.events.recv())
            .await
            .expect("the watcher is subscribed");
        let env = outpost_contracts::envelope::decode_event(&d.payload).unwrap();
        (d.topic.clone(), env.payload.event)
    }

    async fn metric(&self, name: &str, reason: &str) -> u64 {
        let req = Request::get("/metrics").body(Body::empty()).unwrap();
        let (s, _, body) = outpost_testkit::request(&self.ds.router, req).await;
        assert_eq!(s, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let series = format!("{name}{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn stop(self) {
        self.ds_at.stop().await;
        self.md_at.stop().await;
    }
}

async fn client(broker: &Mosquitto, dir: &tempfile::TempDir, client_id: &str) -> Bus {
    let cfg = BusConfig {
        url: broker.url(),
        ..BusConfig::default()
    };
    within(
        "a client connects",
        Bus::connect(
            &cfg,
            dir.path(),
            "test",
            Options::plain(client_id),
            &Shutdown::new(),
        ),
    )
    .await
    .unwrap()
}

async fn publish(bus: &Bus, topic: &str, payload: &[u8]) {
    within("a publish", bus.publish_raw(topic, payload.to_vec()))
        .await
        .unwrap();
}

/// A device answering the commands of device-mqtt on `command/<name>/<resource>/<method>/<id>`
/// on `command/response/<id>`: a read with `answers[resource]`, a write with `{}`. Stops
/// when dropped.
struct FakeDevice {
    /// (method, resource, request payload), in arrival order.
    requests: Arc<Mutex<Vec<(String, String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDevice {
    async fn start(bus: Bus, name: &str, answers: HashMap<&str, Value>) -> Self {
        let mut rx = within(
            "the device subscribes",
            bus.subscribe(&format!("command/{name}/#")),
        )
        .await
        .unwrap();
        let prefix = format!("command/{name}/");
        let answers: HashMap<String, Value> = answers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let rest = d.topic.strip_prefix(&prefix).unwrap_or_default();
                let [resource, method, id] = rest.split('/').collect::<Vec<_>>()[..] else {
                    panic!("unexpected command topic {}", d.topic);
                };
                let payload = serde_json::from_slice(&d.payload).unwrap_or(Value::Null);
                seen.lock()
                    .unwrap()
                    .push((method.to_string(), resource.to_string(), payload));
                let reply = match method {
                    "get" => answers
                        .get(resource)
                        .cloned()
                        .unwrap_or_else(|| json!({"error": "no such resource"})),
                    _ => json!({}),
                };
                let topic = format!("command/response/{id}");
                let sent = tokio::time::timeout(
                    WAIT,
                    bus.publish_raw(&topic, reply.to_string().into_bytes()),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        });
        Self { requests, task }
    }

    fn requests(&self) -> Vec<(String, String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn float(v: &ReadingValue) -> f64 {
    match v {
        ReadingValue::Simple(s) => s.parse().unwrap(),
        other => panic!("not a simple value: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_ping_health_and_validates_mqtt_devices() {
    let node = Node::start(&["t1"]).await;
    let (s, b) = node.ds.call("GET", "/api/v3/ping", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["serviceName"], "device-mqtt");
    assert_eq!(b["apiVersion"], "v3");
    // Healthy once on the bus with its devices loaded (they are: t1 is known).
    let (s, b) = node.ds.call("GET", "/api/v3/health", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "UP", "{b}");

    let device = |mqtt: Value| {
        json!({"apiVersion": "v3", "device": {"name": "v1", "serviceName": "device-mqtt",
            "profileName": "Thermostat", "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"mqtt": mqtt}}})
    };
    for (why, mqtt, want) in [
        ("the default topics", json!({}), StatusCode::OK),
        (
            "its own command topic",
            json!({"CommandTopic": "site/a/v1"}),
            StatusCode::OK,
        ),
        (
            "a command topic of another device",
            json!({"CommandTopic": "command/t1"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a telemetry topic on the bus",
            json!({"TelemetryTopic": "edgex/events/device/x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a topic that is not text",
            json!({"TelemetryTopic": 5}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = node
            .ds
            .call("POST", "/api/v3/validate/device", Some(device(mqtt)))
            .await;
        assert_eq!(s, want, "{why}: {b}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_out_on_the_device_s_command_topic_and_its_reply_comes_back() {
    let node = Node::start(&["t1", "t2", "t3"]).await;
    let t1 = FakeDevice::start(
        node.device("device-t1").await,
        "t1",
        HashMap::from([
            ("Temperature", json!({"Temperature": 19.25})),
            ("Humidity", json!({"Humidity": 41})),
            ("Setpoint", json!({"Setpoint": 22.5})),
        ]),
    )
    .await;
    let t2 = FakeDevice::start(
        node.device("device-t2").await,
        "t2",
        HashMap::from([("Setpoint", json!({"error": "sensor fault"}))]),
    )
    .await;
    // t3 has no device behind it.

    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let r = &b["event"]["readings"][0];
    assert_eq!(
        (&r["resourceName"], &r["valueType"]),
        (&json!("Setpoint"), &json!("Float64"))
    );
    assert_eq!(
        r["value"].as_str().unwrap().parse::<f64>().unwrap(),
        22.5,
        "{b}"
    );
    assert_eq!(
        t1.requests(),
        [("get".to_string(), "Setpoint".to_string(), json!({}))]
    );

    // A device command asks for each resource.
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t1/Climate", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let got: Vec<_> = b["event"]["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resourceName"].as_str().unwrap().to_string(),
                r["valueType"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Temperature".into(), "Float64".into(), 19.25),
            ("Humidity".into(), "Uint8".into(), 41.0)
        ]
    );

    // A write carries the value under the resource's name.
    let (s, b) = node
        .ds
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!({"Setpoint": "23.5"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let last = t1.requests().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("set", "Setpoint"),
        "{last:?}"
    );
    assert_eq!(last.2["Setpoint"].as_f64(), Some(23.5), "{last:?}");

    // The device's own error, and no answer at all.
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t2/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("sensor fault"),
        "{b}"
    );
    assert_eq!(t2.requests().len(), 1);
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t3/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");

    // Refusals that never reach a device.
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/ghost/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = node
        .ds
        .call(
            "PUT",
            "/api/v3/device/name/t1/Climate",
            Some(json!({"Temperature": "20"})),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{b}");
    assert_eq!(t1.requests().len(), 4);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_a_device_becomes_an_event_of_the_resource_type() {
    let mut node = Node::start(&["t1"]).await;
    let dev = node.device("device-t1").await;

    publish(
        &dev,
        "incoming/data/t1/Temperature",
        br#"{"Temperature": 21.5}"#,
    )
    .await;
    let (topic, ev) = node.next_event().await;
    assert_eq!(
        topic,
        "edgex/events/device/device-mqtt/Thermostat/t1/Temperature"
    );
    assert_eq!(
        (
            ev.device_name.as_str(),
            ev.profile_name.as_str(),
            ev.source_name.as_str()
        ),
        ("t1", "Thermostat", "Temperature")
    );
    assert_eq!(ev.readings.len(), 1);
    assert_eq!(ev.readings[0].value_type, ValueType::Float64);
    assert_eq!(float(&ev.readings[0].value), 21.5);

    // A bare value on a topic that names the resource.
    publish(&dev, "incoming/data/t1/Humidity", b"42").await;
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.source_name, "Humidity");
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value_type, ValueType::Uint8);
    assert_eq!(ev.readings[0].value, ReadingValue::Simple("42".into()));

    // Several resources with the device's timestamp (seconds), on the device's topic.
    publish(
        &dev,
        "incoming/data/t1",
        br#"{"Temperature": 20.25, "Humidity": 40, "timestamp": 1700000000}"#,
    )
    .await;
    let (topic, ev) = node.next_event().await;
    assert_eq!(
        topic,
        "edgex/events/device/device-mqtt/Thermostat/t1/telemetry"
    );
    assert_eq!(ev.origin, 1_700_000_000_000_000_000);
    let mut got: Vec<_> = ev
        .readings
        .iter()
        .map(|r| (r.resource_name.as_str(), r.value_type, float(&r.value)))
        .collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        got,
        [
            ("Humidity", ValueType::Uint8, 40.0),
            ("Temperature", ValueType::Float64, 20.25)
        ]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_misaddressed_telemetry_is_counted_and_makes_no_event() {
    let mut node = Node::start(&["t1"]).await;
    let dev = node.device("device-t1").await;
    let before: HashMap<&str, u64> = {
        let mut m = HashMap::new();
        for reason in [
            "bad_payload",
            "unknown_device",
            "unknown_resource",
            "bad_value",
        ] {
            m.insert(reason, node.metric(REJECTED, reason).await);
        }
        m
    };

    for (topic, payload, reason) in [
        ("incoming/data/t1", &b"{not json"[..], "bad_payload"),
        ("incoming/data/t1", b"21.5", "bad_payload"),
        (
            "incoming/data/ghost",
            br#"{"Temperature": 1}"#,
            "unknown_device",
        ),
        (
            "incoming/data/t1",
            br#"{"Pressure": 1013}"#,
            "unknown_resource",
        ),
        ("incoming/data/t1/Temperature", b"warm", "bad_value"),
    ] {
        let was = node.metric(REJECTED, reason).await;
        publish(&dev, topic, payload).await;
        until(&format!("{topic} is counted as {reason}"), async || {
            (node.metric(REJECTED, reason).await == was + 1).then_some(())
        })
        .await;
    }
    for (reason, n) in [
        ("bad_payload", 2),
        ("unknown_device", 1),
        ("unknown_resource", 1),
        ("bad_value", 1),
    ] {
        assert_eq!(
            node.metric(REJECTED, reason).await,
            before[reason] + n,
            "{reason}"
        );
    }

    // None of them made an event: the next one is from the next good message.
    publish(&dev, "incoming/data/t1", br#"{"Humidity": 55}"#).await;
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert_eq!(ev.readings.len(), 1);
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value, ReadingValue::Simple("55".into()));
    node.stop().await;
}
