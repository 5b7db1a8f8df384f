//! device-rest's router, built as the node builds it, against the real core-metadata (on a
//! socket, announcing its changes on a real broker), with its events watched on that
//! broker and its commands answered by a small HTTP device.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use outpost_contracts::value::ValueType;
use outpost_testkit::Drive;
use outpost_testkit::device::{DeviceNode, HttpDevice, float, json_numbers, simple};
use outpost_testkit::{free_port, metadata};
use serde_json::{Value, json};

use crate::{Config, DeviceRest, RestConfig};

const T1_SECRET: &str = "t1-secret-0123456789";
const T2_SECRET: &str = "t2-secret-0123456789";
const LOCKED_SECRET: &str = "tl-secret-0123456789";
const OTHER_SECRET: &str = "o1-secret-0123456789";

const REJECTED: &str = "outpost_device_rest_device_messages_rejected_total";

/// A broker, core-metadata on it with the Thermostat profile, device-rest with `driver`
/// (served on the address it registers) and a watcher of device events.
async fn start(driver: RestConfig) -> DeviceNode {
    DeviceNode::start::<DeviceRest>(|port| Config {
        port,
        driver,
        ..Config::default()
    })
    .await
}

/// Adds device `name` of `service` that only pushes readings (no REST block for
/// commands), with its secret.
async fn add_pusher(
    node: &DeviceNode,
    name: &str,
    service: &str,
    admin: &'static str,
    secret: &str,
) {
    let device = metadata::device(name, service).admin(admin);
    metadata::add_device(&node.md, &device.protocols(push_only())).await;
    metadata::set_secret(&node.md, name, secret).await;
}

/// A reading posted to device-rest, with `auth` as its Authorization.
async fn post(
    node: &DeviceNode,
    path: &str,
    auth: Option<&str>,
    content_type: &str,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::post(path).header(header::CONTENT_TYPE, content_type);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let (s, _, bytes) =
        outpost_testkit::request(&node.ds.router, req.body(body.into()).unwrap()).await;
    (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn bearer(secret: &str) -> Option<String> {
    Some(format!("Bearer {secret}"))
}

/// The protocols of a device that only pushes readings (no REST block for commands).
fn push_only() -> Value {
    json!({"other": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_posted_with_the_device_secret_is_published_as_an_event_of_the_resource_type() {
    let mut node = start(RestConfig::default()).await;
    add_pusher(&node, "t1", "device-rest", "UNLOCKED", T1_SECRET).await;
    node.known("t1").await;
    let auth = bearer(T1_SECRET);
    let auth = auth.as_deref();

    let path = "/api/v3/resource/t1/Temperature";
    let (s, b) = post(&node, path, auth, "text/plain", "21.5").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ev = node.next_event_from("t1", "Temperature").await;
    assert_eq!(ev.source_name, "Temperature");
    assert_eq!(ev.readings.len(), 1);
    let r = &ev.readings[0];
    assert_eq!(
        (r.resource_name.as_str(), r.value_type, r.units.as_str()),
        ("Temperature", ValueType::Float64, "C")
    );
    assert!((float(&r.value) - 21.5).abs() < 1e-9, "{r:?}");

    let path = "/api/v3/resource/t1/Humidity";
    let (s, b) = post(&node, path, auth, "text/plain", "42").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value_type, ValueType::Uint8);
    assert_eq!(simple(&ev.readings[0].value), "42");

    // Several resources at once, with the device's own timestamp (milliseconds).
    let body = json!({"Temperature": 20.25, "Humidity": 40, "timestamp": 1_700_000_000_000_i64});
    let path = "/api/v3/resource/t1";
    let (s, b) = post(&node, path, auth, "application/json", body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    node.expect_climate_telemetry("t1", 1_700_000_000_000_000_000)
        .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_without_the_device_s_own_secret_is_refused_and_publishes_nothing() {
    let mut node = start(RestConfig::default()).await;
    add_pusher(&node, "t1", "device-rest", "UNLOCKED", T1_SECRET).await;
    add_pusher(&node, "t2", "device-rest", "UNLOCKED", T2_SECRET).await;
    node.known("t1").await;
    node.known("t2").await;
    let bad_tokens = node.metric(REJECTED, "bad_token").await;
    let t1 = bearer(T1_SECRET);
    let t1 = t1.as_deref();

    let path = "/api/v3/resource/t1/Temperature";
    for (why, auth) in [
        ("no token", None),
        ("an empty token", Some("Bearer ".to_string())),
        ("not a bearer token", Some(format!("Basic {T1_SECRET}"))),
        ("a wrong token", bearer("not-the-secret-of-t1")),
        ("another device's token", bearer(T2_SECRET)),
    ] {
        let (s, b) = post(&node, path, auth.as_deref(), "text/plain", "21.5").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {b}");
        assert_eq!(b["statusCode"], 401, "{why}: {b}");
    }
    // A device core-metadata does not know has no secret to match.
    let ghost = "/api/v3/resource/ghost/Temperature";
    let (s, b) = post(&node, ghost, t1, "text/plain", "21.5").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // Wrong secrets (not missing ones) are counted.
    assert_eq!(node.metric(REJECTED, "bad_token").await, bad_tokens + 3);

    // The refused readings published nothing: the next event is the accepted one.
    let (s, b) = post(&node, path, t1, "text/plain", "30").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert!((float(&ev.readings[0].value) - 30.0).abs() < 1e-9);
    node.stop().await;
}

/// A reading device-rest refuses, and with what status.
struct Refused {
    why: &'static str,
    path: &'static str,
    auth: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
    want: StatusCode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_for_unknown_devices_or_resources_wrong_values_and_large_bodies_are_refused() {
    let mut node = start(RestConfig {
        max_body_bytes: 64,
        ..RestConfig::default()
    })
    .await;
    let other = format!("http://127.0.0.1:{}", free_port());
    metadata::add_device_service(&node.md, "device-other", &other).await;
    add_pusher(&node, "t1", "device-rest", "UNLOCKED", T1_SECRET).await;
    add_pusher(&node, "tl", "device-rest", "LOCKED", LOCKED_SECRET).await;
    add_pusher(&node, "o1", "device-other", "UNLOCKED", OTHER_SECRET).await;
    node.known("t1").await;
    node.known("tl").await;
    let t1 = bearer(T1_SECRET);
    let t1 = t1.as_deref();

    let cases = [
        Refused {
            why: "a device of another service (its secret is right)",
            path: "/api/v3/resource/o1/Temperature",
            auth: bearer(OTHER_SECRET),
            content_type: "text/plain",
            body: b"21.5".to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "an unknown resource",
            path: "/api/v3/resource/t1/Pressure",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"1013".to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "text for a Float64",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"warm".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a value above the maximum",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"500".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a Uint8 out of its range",
            path: "/api/v3/resource/t1/Humidity",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"-3".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "bytes that are not text",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: vec![0xff, 0xfe, 0x00],
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "an object with an unknown resource",
            path: "/api/v3/resource/t1",
            auth: t1.map(str::to_string),
            content_type: "application/json",
            body: br#"{"Pressure": 1013}"#.to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "a bare value where an object is expected",
            path: "/api/v3/resource/t1",
            auth: t1.map(str::to_string),
            content_type: "application/json",
            body: b"21.5".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a locked device",
            path: "/api/v3/resource/tl/Temperature",
            auth: bearer(LOCKED_SECRET),
            content_type: "text/plain",
            body: b"21.5".to_vec(),
            want: StatusCode::LOCKED,
        },
    ];
    for Refused {
        why,
        path,
        auth,
        content_type,
        body,
        want,
    } in cases
    {
        let (s, b) = post(&node, path, auth.as_deref(), content_type, body).await;
        assert_eq!(s, want, "{why}: {b}");
        assert_eq!(b["statusCode"], want.as_u16(), "{why}: {b}");
    }

    // Over max_body_bytes, whatever the token.
    let big = format!("{:0>100}", 1);
    for path in ["/api/v3/resource/t1/Temperature", "/api/v3/resource/t1"] {
        let (s, _) = post(&node, path, t1, "text/plain", big.clone()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }

    // Nothing was published for any of them.
    let path = "/api/v3/resource/t1/Temperature";
    let (s, b) = post(&node, path, t1, "text/plain", "-12.5").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert!((float(&ev.readings[0].value) + 12.5).abs() < 1e-9);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_read_and_write_a_rest_device_over_http() {
    let mut node = start(RestConfig::default()).await;
    let (device, port) =
        HttpDevice::start("/sensor", &[("Setpoint", "22.5"), ("Temperature", "19.25")]).await;
    let rest = |port: u16| json!({"REST": {"Host": "127.0.0.1", "Port": port.to_string(), "Path": "/sensor/"}});
    // t3: nothing listens on its port.
    for (name, protocols) in [
        ("t1", rest(port)),
        ("t3", rest(free_port())),
        ("p1", push_only()),
    ] {
        let device = metadata::device(name, "device-rest").protocols(protocols);
        metadata::add_device(&node.md, &device).await;
    }
    for d in ["t1", "t3", "p1"] {
        node.known(d).await;
    }
    let ds = &node.ds;
    let setpoint = "/api/v3/device/name/t1/Setpoint";

    let b = ds.expect("GET", setpoint, None, StatusCode::OK).await;
    let want = [("Setpoint".into(), "Float64".into(), 22.5)];
    assert_eq!(json_numbers(&b["event"]), want, "{b}");

    // A write goes to the device as text, and what was written is published.
    let write = Some(json!({"Setpoint": "23.5"}));
    ds.expect("PUT", setpoint, write, StatusCode::OK).await;
    assert_eq!(
        device.writes(),
        [("Setpoint".to_string(), "23.5".to_string())]
    );
    let ev = node.next_event_from("t1", "Setpoint").await;
    assert!((float(&ev.readings[0].value) - 23.5).abs() < 1e-9);
    let ds = &node.ds;
    let b = ds.expect("GET", setpoint, None, StatusCode::OK).await;
    assert_eq!(
        b["event"]["readings"][0]["value"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        23.5
    );

    // Out of range: refused before the device sees it.
    let write = Some(json!({"Setpoint": "40"}));
    ds.expect("PUT", setpoint, write, StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(device.writes().len(), 1);

    // The device refuses a resource it does not have (Humidity): its error comes back.
    let humidity = "/api/v3/device/name/t1/Humidity";
    let b = ds
        .expect("GET", humidity, None, StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    assert!(b["message"].as_str().unwrap().contains("404"), "{b}");
    // A device that does not answer, and one that cannot take commands.
    let silent = "/api/v3/device/name/t3/Setpoint";
    ds.expect("GET", silent, None, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    let pusher = "/api/v3/device/name/p1/Setpoint";
    let b = ds
        .expect("GET", pusher, None, StatusCode::BAD_REQUEST)
        .await;
    assert!(b["message"].as_str().unwrap().contains("REST"), "{b}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_metadata_asks_device_rest_to_validate_the_rest_block_of_a_device() {
    let node = start(RestConfig::default()).await;
    let device = |protocols: Value| {
        json!({"apiVersion": "v3", "device": {"name": "v1", "serviceName": "device-rest",
            "profileName": "Thermostat", "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": protocols}})
    };
    for (why, protocols, want) in [
        ("no host", json!({"REST": {"Host": " ", "Port": "80"}}), 400),
        ("port 0", json!({"REST": {"Host": "h", "Port": "0"}}), 400),
        (
            "not a port",
            json!({"REST": {"Host": "h", "Port": 70000}}),
            400,
        ),
        (
            "a REST device",
            json!({"REST": {"Host": "h", "Port": 8080}}),
            200,
        ),
        ("a device that only pushes", push_only(), 200),
    ] {
        let (s, b) = node
            .ds
            .call(
                "POST",
                "/api/v3/validate/device",
                Some(device(protocols.clone())),
            )
            .await;
        assert_eq!(s.as_u16(), want, "{why}: {b}");
    }
    // core-metadata refuses what device-rest refuses.
    let (s, b) = node
        .md
        .call(
            "POST",
            "/api/v3/device",
            Some(json!([device(json!({"REST": {"Host": "", "Port": "80"}}))])),
        )
        .await;
    assert_eq!(s.as_u16(), 207, "{b}");
    assert_eq!(b[0]["statusCode"], 400, "{b}");
    assert!(
        b[0]["message"].as_str().unwrap().contains("REST.Host"),
        "{b}"
    );
    node.stop().await;
}
