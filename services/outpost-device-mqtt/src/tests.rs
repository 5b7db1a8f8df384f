//! device-mqtt's router, built as the node builds it, against the real core-metadata (on a
//! socket, announcing its changes on a real broker), with devices played by plain MQTT
//! clients on that broker and its events watched there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use outpost_contracts::event::ReadingValue;
use outpost_contracts::value::ValueType;
use outpost_testkit::Drive;
use outpost_testkit::device::{DeviceNode, float, json_numbers};
use outpost_testkit::{WAIT, bus, metadata, until};
use serde_json::{Value, json};

use crate::{Config, DeviceMqtt};

const REJECTED: &str = "outpost_device_mqtt_device_messages_rejected_total";

/// A broker, core-metadata on it with the Thermostat profile and `devices`, device-mqtt
/// (served on the address it registers) with them loaded, and a watcher of device events.
async fn start(devices: &[&str]) -> DeviceNode {
    let node = DeviceNode::start::<DeviceMqtt>(|port| Config {
        port,
        // A device that does not answer is given up on in time for the test.
        driver_timeout_ms: 2_000,
        ..Config::default()
    })
    .await;
    for name in devices {
        let device = metadata::device(name, "device-mqtt").protocols(json!({"mqtt": {}}));
        metadata::add_device(&node.md, &device).await;
    }
    for name in devices {
        node.known(name).await;
    }
    node
}

/// A plain MQTT client on the broker, as a device would be.
async fn device(node: &DeviceNode, client_id: &str) -> bus::Client {
    bus::Client::connect(&node.broker.url(), client_id).await
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
    async fn start(dev: bus::Client, name: &str, answers: HashMap<&str, Value>) -> Self {
        let mut rx = dev.subscribe(&format!("command/{name}/#")).await;
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
                    dev.bus.publish_raw(&topic, reply.to_string().into_bytes()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_ping_health_and_validates_mqtt_devices() {
    let node = start(&["t1"]).await;
    let b = node
        .ds
        .expect("GET", "/api/v3/ping", None, StatusCode::OK)
        .await;
    assert_eq!(b["serviceName"], "device-mqtt");
    assert_eq!(b["apiVersion"], "v3");
    // Healthy once on the bus with its devices loaded (they are: t1 is known).
    let b = node
        .ds
        .expect("GET", "/api/v3/health", None, StatusCode::OK)
        .await;
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
    let node = start(&["t1", "t2", "t3"]).await;
    let t1 = FakeDevice::start(
        device(&node, "device-t1").await,
        "t1",
        HashMap::from([
            ("Temperature", json!({"Temperature": 19.25})),
            ("Humidity", json!({"Humidity": 41})),
            ("Setpoint", json!({"Setpoint": 22.5})),
        ]),
    )
    .await;
    let t2 = FakeDevice::start(
        device(&node, "device-t2").await,
        "t2",
        HashMap::from([("Setpoint", json!({"error": "sensor fault"}))]),
    )
    .await;
    // t3 has no device behind it.
    let ds = &node.ds;
    let setpoint = "/api/v3/device/name/t1/Setpoint";

    let b = ds.expect("GET", setpoint, None, StatusCode::OK).await;
    let want = [("Setpoint".into(), "Float64".into(), 22.5)];
    assert_eq!(json_numbers(&b["event"]), want, "{b}");
    assert_eq!(
        t1.requests(),
        [("get".to_string(), "Setpoint".to_string(), json!({}))]
    );

    // A device command asks for each resource.
    let climate = "/api/v3/device/name/t1/Climate";
    let b = ds.expect("GET", climate, None, StatusCode::OK).await;
    assert_eq!(
        json_numbers(&b["event"]),
        [
            ("Temperature".into(), "Float64".into(), 19.25),
            ("Humidity".into(), "Uint8".into(), 41.0)
        ]
    );

    // A write carries the value under the resource's name.
    let write = Some(json!({"Setpoint": "23.5"}));
    ds.expect("PUT", setpoint, write, StatusCode::OK).await;
    let last = t1.requests().pop().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str()),
        ("set", "Setpoint"),
        "{last:?}"
    );
    assert_eq!(last.2["Setpoint"].as_f64(), Some(23.5), "{last:?}");

    // The device's own error, and no answer at all.
    let faulty = "/api/v3/device/name/t2/Setpoint";
    let b = ds
        .expect("GET", faulty, None, StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    assert!(
        b["message"].as_str().unwrap().contains("sensor fault"),
        "{b}"
    );
    assert_eq!(t2.requests().len(), 1);
    let absent = "/api/v3/device/name/t3/Setpoint";
    ds.expect("GET", absent, None, StatusCode::SERVICE_UNAVAILABLE)
        .await;

    // Refusals that never reach a device.
    let ghost = "/api/v3/device/name/ghost/Setpoint";
    ds.expect("GET", ghost, None, StatusCode::NOT_FOUND).await;
    let read_only = Some(json!({"Temperature": "20"}));
    ds.expect("PUT", climate, read_only, StatusCode::METHOD_NOT_ALLOWED)
        .await;
    assert_eq!(t1.requests().len(), 4);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_from_a_device_becomes_an_event_of_the_resource_type() {
    let mut node = start(&["t1"]).await;
    let dev = device(&node, "device-t1").await;

    dev.publish("incoming/data/t1/Temperature", br#"{"Temperature": 21.5}"#)
        .await;
    let ev = node.next_event_from("t1", "Temperature").await;
    assert_eq!(ev.source_name, "Temperature");
    assert_eq!(ev.readings.len(), 1);
    assert_eq!(ev.readings[0].value_type, ValueType::Float64);
    assert_eq!(float(&ev.readings[0].value), 21.5);

    // A bare value on a topic that names the resource.
    dev.publish("incoming/data/t1/Humidity", b"42").await;
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.source_name, "Humidity");
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value_type, ValueType::Uint8);
    assert_eq!(ev.readings[0].value, ReadingValue::Simple("42".into()));

    // Several resources with the device's timestamp (seconds), on the device's topic.
    let several = br#"{"Temperature": 20.25, "Humidity": 40, "timestamp": 1700000000}"#;
    dev.publish("incoming/data/t1", several).await;
    node.expect_climate_telemetry("t1", 1_700_000_000_000_000_000)
        .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_misaddressed_telemetry_is_counted_and_makes_no_event() {
    let mut node = start(&["t1"]).await;
    let dev = device(&node, "device-t1").await;
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
        dev.publish(topic, payload).await;
        until(
            &format!("{topic} is counted as {reason}"),
            WAIT,
            async || (node.metric(REJECTED, reason).await == was + 1).then_some(()),
        )
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
    dev.publish("incoming/data/t1", br#"{"Humidity": 55}"#)
        .await;
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert_eq!(ev.readings.len(), 1);
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value, ReadingValue::Simple("55".into()));
    node.stop().await;
}
