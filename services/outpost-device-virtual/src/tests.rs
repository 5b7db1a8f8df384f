//! device-virtual's router, built as the node builds it, against the real core-metadata (on a
//! socket, announcing its changes on a real broker): what each generator yields, what a
//! write pins and what releases it, what cannot be written, and the examples it provisions.

use axum::http::StatusCode;
use outpost_testkit::Drive;
use outpost_testkit::device::DeviceNode;
use outpost_testkit::{WAIT, metadata, until};
use serde_json::{Value, json};

use crate::{Config, DeviceVirtual, VirtualConfig};

/// A broker, core-metadata on it, device-virtual with `driver`, and the profile `Gen` with a
/// device `g1` of it that device-virtual knows.
async fn start(driver: VirtualConfig) -> DeviceNode {
    let node = DeviceNode::start::<DeviceVirtual>(|port| Config {
        port,
        driver,
        ..Config::default()
    })
    .await;
    metadata::add(&node.md, "/api/v3/deviceprofile", "profile", profile()).await;
    let device = metadata::device("g1", "device-virtual").profile("Gen");
    metadata::add_device(&node.md, &device).await;
    node.known("g1").await;
    node
}

/// One resource per generator and type of interest.
fn profile() -> Value {
    let resource = |name: &str, properties: Value, attributes: Value| json!({"name": name, "properties": properties, "attributes": attributes});
    json!({
        "name": "Gen", "manufacturer": "Outpost", "model": "G1",
        "deviceResources": [
            resource("Count", json!({"valueType": "Int16", "readWrite": "R",
                "minimum": 10, "maximum": 12}), json!({"generator": "counter"})),
            resource("Wave", json!({"valueType": "Float64", "readWrite": "R",
                "minimum": 5, "maximum": 6}), json!({"generator": "sine", "period": "7"})),
            resource("Small", json!({"valueType": "Uint8", "readWrite": "RW",
                "minimum": 3, "maximum": 4}), json!({})),
            resource("Level", json!({"valueType": "Float32", "readWrite": "RW"}), json!({})),
            resource("EnableRandomization_Level", json!({"valueType": "Bool",
                "readWrite": "W"}), json!({})),
            resource("Blob", json!({"valueType": "Binary", "readWrite": "RW",
                "mediaType": "application/octet-stream"}), json!({})),
            resource("Many", json!({"valueType": "Int8Array", "readWrite": "R"}), json!({})),
            resource("Odd", json!({"valueType": "Int32", "readWrite": "R"}),
                json!({"generator": "zigzag"})),
        ],
    })
}

const RESOURCE: &str = "/api/v3/device/name/g1";

/// Reads `resource` of g1, which must succeed, and returns its only reading.
async fn read(node: &DeviceNode, resource: &str) -> Value {
    let path = format!("{RESOURCE}/{resource}");
    let b = node.ds.expect("GET", &path, None, StatusCode::OK).await;
    let readings = b["event"]["readings"].as_array().expect("readings");
    assert_eq!(readings.len(), 1, "{b}");
    readings[0].clone()
}

/// The value of a simple reading, as a number.
fn number(r: &Value) -> f64 {
    r["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number: {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_generator_yields_values_of_the_resource_type_within_its_bounds() {
    let node = start(VirtualConfig {
        provision_examples: false,
        array_len: 3,
        ..VirtualConfig::default()
    })
    .await;

    // The counter starts at the minimum, steps by one and wraps past the maximum.
    let mut counts = Vec::new();
    for _ in 0..5 {
        let r = read(&node, "Count").await;
        assert_eq!(r["valueType"], "Int16");
        counts.push(number(&r));
    }
    assert_eq!(counts, [10.0, 11.0, 12.0, 10.0, 11.0]);

    // Sine and random stay within the bounds; integers are whole.
    for _ in 0..20 {
        let wave = number(&read(&node, "Wave").await);
        assert!((5.0..=6.0).contains(&wave), "{wave}");
        let small = read(&node, "Small").await;
        assert_eq!(small["valueType"], "Uint8");
        assert!(
            ["3", "4"].contains(&small["value"].as_str().unwrap()),
            "{small}"
        );
    }

    // An array has array_len elements of the element type.
    let many = read(&node, "Many").await;
    assert_eq!(many["valueType"], "Int8Array");
    // EdgeX writes arrays as Go prints them: `[1 -2 3]`.
    let text = many["value"].as_str().unwrap_or_default();
    let items: Vec<i64> = text
        .trim_matches(['[', ']'])
        .split_whitespace()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("an Int8: {text}")))
        .collect();
    assert_eq!(items.len(), 3, "{many}");
    assert!(items.iter().all(|v| i8::try_from(*v).is_ok()), "{items:?}");

    // A generator the service does not have is the device's error, not a made-up value.
    let path = format!("{RESOURCE}/Odd");
    let b = node
        .ds
        .expect("GET", &path, None, StatusCode::BAD_REQUEST)
        .await;
    let message = b["message"].as_str().unwrap_or_default();
    assert!(message.contains("zigzag"), "{b}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pins_the_value_until_randomization_is_enabled_again() {
    let node = start(VirtualConfig {
        provision_examples: false,
        binary_bytes: 16,
        ..VirtualConfig::default()
    })
    .await;
    let ds = &node.ds;

    let level = format!("{RESOURCE}/Level");
    ds.expect(
        "PUT",
        &level,
        Some(json!({"Level": "42.5"})),
        StatusCode::OK,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(number(&read(&node, "Level").await), 42.5);
    }
    // Pins are per device and resource: Small still varies within its bounds.
    let small = number(&read(&node, "Small").await);
    assert!((3.0..=4.0).contains(&small), "{small}");

    // Writing false leaves the pin; true releases it.
    let enable = format!("{RESOURCE}/EnableRandomization_Level");
    let off = Some(json!({"EnableRandomization_Level": "false"}));
    ds.expect("PUT", &enable, off, StatusCode::OK).await;
    assert_eq!(number(&read(&node, "Level").await), 42.5);
    let on = Some(json!({"EnableRandomization_Level": "true"}));
    ds.expect("PUT", &enable, on, StatusCode::OK).await;
    let mut values = Vec::new();
    for _ in 0..5 {
        values.push(number(&read(&node, "Level").await));
    }
    assert!(
        values.iter().any(|v| *v != 42.5),
        "random again: {values:?}"
    );

    // A write out of the resource's type is refused before the driver sees it; a Binary
    // resource is generated but cannot be written.
    let bad = Some(json!({"Small": "300"}));
    ds.expect(
        "PUT",
        &format!("{RESOURCE}/Small"),
        bad,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let blob = read(&node, "Blob").await;
    assert_eq!(blob["valueType"], "Binary");
    let blob_path = format!("{RESOURCE}/Blob");
    let b = ds
        .expect(
            "PUT",
            &blob_path,
            Some(json!({"Blob": "AAE="})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(
        b["message"].as_str().unwrap_or_default().contains("Binary"),
        "{b}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_devices_are_provisioned_once_and_read() {
    let node = start(VirtualConfig::default()).await;
    let examples = [
        "Random-Boolean-Device",
        "Random-Integer-Device",
        "Random-UnsignedInteger-Device",
        "Random-Float-Device",
        "Random-Binary-Device",
    ];
    let all = until("the examples are provisioned", WAIT, async || {
        let (s, b) = node
            .md
            .call("GET", "/api/v3/device/service/name/device-virtual", None)
            .await;
        let names: Vec<String> = b["devices"]
            .as_array()?
            .iter()
            .filter_map(|d| d["name"].as_str().map(String::from))
            .collect();
        (s == StatusCode::OK && examples.iter().all(|e| names.iter().any(|n| n == e)))
            .then_some(names)
    })
    .await;
    assert_eq!(all.len(), examples.len() + 1, "{all:?}");
    for name in examples {
        let (s, b) = node
            .md
            .call("GET", &format!("/api/v3/deviceprofile/name/{name}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        node.known(name).await;
        let resources = b["profile"]["deviceResources"]
            .as_array()
            .expect("resources");
        let first = resources
            .iter()
            .find(|r| r["properties"]["readWrite"] != "W")
            .expect("a readable resource");
        let path = format!(
            "/api/v3/device/name/{name}/{}",
            first["name"].as_str().unwrap()
        );
        let b = node.ds.expect("GET", &path, None, StatusCode::OK).await;
        assert_eq!(b["event"]["deviceName"], name, "{b}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgex_answers_for_a_down_device_secrets_discovery_and_a_read_without_its_event() {
    let node = DeviceNode::start::<DeviceVirtual>(|port| Config {
        port,
        discovery_enabled: false,
        driver: VirtualConfig {
            provision_examples: false,
            ..VirtualConfig::default()
        },
        ..Config::default()
    })
    .await;
    metadata::add(&node.md, "/api/v3/deviceprofile", "profile", profile()).await;
    metadata::add_device(
        &node.md,
        &metadata::device("g1", "device-virtual").profile("Gen"),
    )
    .await;
    node.known("g1").await;
    let ds = &node.ds;
    // A read that does not return its event still answers EdgeX's JSON.
    let b = ds
        .expect(
            "GET",
            &format!("{RESOURCE}/Count?ds-returnevent=false"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(b, json!({"apiVersion": "v3", "statusCode": 200}));
    // Discovery switched off: 503.
    ds.expect(
        "POST",
        "/api/v3/discovery",
        None,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    // Secrets for the driver.
    let secret = json!({"apiVersion": "v3", "secretName": "creds",
        "secretData": [{"key": "username", "value": "u"}]});
    ds.expect("POST", "/api/v3/secret", Some(secret), StatusCode::CREATED)
        .await;
    let missing_value =
        json!({"apiVersion": "v3", "secretName": "creds", "secretData": [{"key": "username"}]});
    ds.expect(
        "POST",
        "/api/v3/secret",
        Some(missing_value),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Marked DOWN in metadata: reads and writes are 423.
    node.md
        .expect(
            "PATCH",
            "/api/v3/device",
            Some(json!([{"apiVersion": "v3", "device": {"name": "g1", "operatingState": "DOWN"}}])),
            StatusCode::MULTI_STATUS,
        )
        .await;
    until("device-virtual sees g1 down", WAIT, async || {
        let (s, _) = ds.call("GET", &format!("{RESOURCE}/Count"), None).await;
        (s == StatusCode::LOCKED).then_some(())
    })
    .await;
    ds.expect(
        "PUT",
        &format!("{RESOURCE}/Level"),
        Some(json!({"Level": "1.5"})),
        StatusCode::LOCKED,
    )
    .await;
}
