//! device-modbus against a real Modbus TCP server (pymodbus, `tests/peers/modbus_server.py`,
//! its own process on a free port): readings of every kind of value reach core-data through
//! autoEvents, SET commands through core-command change the server's registers, reads are
//! batched, a Modbus exception is a clear error that leaves the other devices alone, and a
//! server that goes away takes its device DOWN and back UP when it returns.

use std::time::Duration;

use outpost_testkit::modbus::{self, BLOCK, Server as ModbusServer, values};
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

fn node_config() -> String {
    // Quick reconnects, so the device is seen UP soon after its server returns.
    "[device_modbus]\nenabled = true\n[device_modbus.driver]\nreconnect_backoff_max_ms = 300\n"
        .to_string()
}

fn device(name: &str, profile: &str, port: u16, auto_events: Value) -> Value {
    json!([{"apiVersion": "v3", "device": {
        "name": name, "profileName": profile, "serviceName": "device-modbus",
        "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": {"modbus-tcp": {"Address": "127.0.0.1", "Port": port.to_string(), "UnitID": "1", "Timeout": "2", "IdleTimeout": "30"}},
        "autoEvents": auto_events
    }}])
}

async fn add(node: &Node, path: &str, body: &Value) {
    let (s, v) = node
        .post(&format!("{}/api/v3/{path}", node.metadata()), body)
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{path}: {v}");
}

/// Waits for device-modbus in metadata, then adds the profiles.
async fn setup(node: &Node) {
    node.wait_device_service("device-modbus").await;
    for profile in [modbus::plc_profile(), modbus::broken_profile()] {
        add(
            node,
            "deviceprofile",
            &json!([{"apiVersion": "v3", "profile": profile}]),
        )
        .await;
    }
}

async fn latest(node: &Node, device: &str, resource: &str) -> Option<Value> {
    let (_, v) = node
        .get(&format!(
            "{}/api/v3/reading/device/name/{device}/resourceName/{resource}?limit=1",
            node.data()
        ))
        .await;
    v["readings"].get(0).cloned()
}

fn modbus_url(node: &Node) -> String {
    node.url(node.ports.modbus)
}

async fn put(node: &Node, device: &str, command: &str, body: Value) -> (u16, Value) {
    node.put(&node.device_command(device, command), &body).await
}

#[tokio::test]
async fn modbus_values_commands_batching_and_exceptions() {
    let server = ModbusServer::start();
    let node = Node::start(&node_config()).await;
    setup(&node).await;
    let ds = modbus_url(&node);

    // A device's protocol properties are checked when it is added.
    let mut bad = device("bad", "ModbusPLC", server.port, json!([]));
    bad[0]["device"]["protocols"]["modbus-tcp"]["Port"] = json!("abc");
    bad[0]["device"]["protocols"]["modbus-tcp"]["UnitID"] = json!(300);
    let (s, v) = node
        .post(&format!("{}/api/v3/device", node.metadata()), &bad)
        .await;
    assert_eq!(s, 207, "{v}");
    let msg = v[0]["message"].as_str().unwrap_or("");
    assert!(
        v[0]["statusCode"] == 400 && msg.contains("Port 'abc'") && msg.contains("UnitID '300'"),
        "{v}"
    );

    // Batching: the six values of `Block` (14 contiguous registers) are one request.
    add(
        &node,
        "device",
        &device("probe", "ModbusPLC", server.port, json!([])),
    )
    .await;
    let requests = || node.metric(&ds, "outpost_device_modbus_requests_total");
    let block_url = format!("{ds}/api/v3/device/name/probe/Block");
    let get_block = || node.get(&block_url);
    eventually("device-modbus to load the probe", WAIT, || async {
        get_block().await.0 == 200
    })
    .await;
    let before = requests().await;
    let asked = |from: usize| -> Vec<Value> {
        server
            .received()
            .into_iter()
            .filter(|r| r.get("fc").is_some())
            .skip(from)
            .collect()
    };
    let seen = asked(0).len();
    let (s, v) = get_block().await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(values(&v), BLOCK);
    // What the server received: one read of the 14 holding registers (function 3).
    assert_eq!(
        asked(seen),
        vec![json!({"fc": 3, "address": 0, "count": 14})],
        "one request for six values"
    );
    assert_eq!(requests().await - before, 1.0, "and counted as one");

    // AutoEvents of a command over every table and type; the values reach core-data.
    let ae = json!([{"interval": "200ms", "sourceName": "Telemetry"}]);
    add(
        &node,
        "device",
        &device("plc", "ModbusPLC", server.port, ae),
    )
    .await;
    let expect = [
        ("Int16Value", "Int16", "-1234"),
        ("Uint32Swapped", "Uint32", "305419896"),
        ("Float32Value", "Float32", "2.15e+01"),
        ("ScaledTemp", "Float32", "2.35e+01"),
        ("Int64Value", "Int64", "-5000000000"),
        ("Float64Value", "Float64", "-5e-01"),
        ("Name", "String", "OUTPOST"),
        ("Alarm", "Bool", "true"),
        ("InputCount", "Uint16", "4242"),
        ("Running", "Bool", "true"),
        ("DoorOpen", "Bool", "true"),
    ];
    eventually("the plc's readings in core-data", WAIT, || async {
        latest(&node, "plc", "DoorOpen").await.is_some()
    })
    .await;
    for (resource, vt, value) in expect {
        let r = latest(&node, "plc", resource).await.expect(resource);
        assert_eq!(
            (r["valueType"].as_str(), r["value"].as_str()),
            (Some(vt), Some(value)),
            "{resource}: {r}"
        );
    }
    let r = latest(&node, "plc", "ScaledTemp")
        .await
        .expect("ScaledTemp");
    assert_eq!(r["units"], "C");

    // SET through core-command: a command of two adjacent values, a coil, a register bit.
    let (s, v) = put(
        &node,
        "plc",
        "Settings",
        json!({"Setpoint": "1234", "Level": "42.5"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // 42.5 as a Float32 is 0x422A0000.
    assert_eq!(
        server.read("holding", 30, 3)["values"],
        json!([1234, 0x422A, 0])
    );
    let (s, v) = put(&node, "plc", "Running", json!({"Running": "false"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        server.read("coils", 0, 3)["values"],
        json!([false, false, true])
    );
    let (s, v) = put(&node, "plc", "Alarm", json!({"Alarm": false})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(server.read("holding", 40, 1)["values"], json!([0]));
    // Read back through core-command, and a value that does not fit is refused unwritten.
    let (s, v) = node.get(&node.device_command("plc", "Settings")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "1234");
    assert_eq!(v["event"]["readings"][1]["value"], "4.25e+01");
    let (s, _) = put(&node, "plc", "Setpoint", json!({"Setpoint": "70000"})).await;
    assert_eq!(s, 400);
    assert_eq!(server.read("holding", 30, 1)["values"], json!([1234]));
    // Read-only tables cannot be written.
    let (s, v) = put(&node, "plc", "InputCount", json!({"InputCount": "1"})).await;
    assert_eq!(s, 405, "{v}");

    // A Modbus exception: a clear error, the device stays UP, the other device keeps going.
    add(
        &node,
        "device",
        &device(
            "broken",
            "ModbusBroken",
            server.port,
            json!([{"interval": "100ms", "sourceName": "Missing"}]),
        ),
    )
    .await;
    let missing = node.device_command("broken", "Missing");
    eventually("device-modbus to load the broken device", WAIT, || async {
        node.get(&missing).await.0 != 404
    })
    .await;
    let (s, v) = node.get(&missing).await;
    let msg = v["message"].as_str().unwrap_or("");
    assert!(
        s == 500
            && msg.contains("'Missing'")
            && msg.contains("HOLDING_REGISTERS 9000")
            && msg.contains("illegal data address"),
        "{s} {v}"
    );
    let before = node.reading_count("plc").await;
    eventually("the plc's readings to go on", WAIT, || async {
        node.reading_count("plc").await >= before + 3 * 11
    })
    .await;
    let (_, v) = node
        .get(&format!("{}/api/v3/device/name/broken", node.metadata()))
        .await;
    assert_eq!(
        v["device"]["operatingState"], "UP",
        "an exception is an answer"
    );
    assert!(
        node.metric(
            &ds,
            "outpost_device_modbus_request_errors_total{reason=\"exception\"}"
        )
        .await
            >= 3.0
    );
    // One connection served every device: the server saw one, and so did the service.
    assert_eq!(
        server.connections_from_others(),
        1,
        "connections the server accepted from the node"
    );
    assert_eq!(
        node.metric(&ds, "outpost_device_modbus_connections_opened_total")
            .await,
        1.0
    );
}

#[tokio::test]
async fn modbus_device_goes_down_with_its_server_and_comes_back() {
    let mut server = ModbusServer::start();
    let port = server.port;
    let node = Node::start(&node_config()).await;
    setup(&node).await;
    let ae = json!([{"interval": "100ms", "sourceName": "Int16Value"}]);
    add(
        &node,
        "device",
        &device("plc", "ModbusPLC", port, ae.clone()),
    )
    .await;
    eventually("readings from the plc", WAIT, || async {
        latest(&node, "plc", "Int16Value").await.is_some()
    })
    .await;
    // A device whose server was never there (every read: connection refused) is DOWN too,
    // and the one that answers keeps being read.
    let nobody = outpost_testkit::free_port();
    add(
        &node,
        "device",
        &device("plc-absent", "ModbusPLC", nobody, ae),
    )
    .await;
    eventually("the absent plc to go DOWN", WAIT, || async {
        node.operating_state("plc-absent").await == "DOWN"
    })
    .await;
    let before = node.reading_count("plc").await;
    eventually("the plc read meanwhile", WAIT, || async {
        node.reading_count("plc").await > before
    })
    .await;

    server.stop();
    eventually("the plc to go DOWN", WAIT, || async {
        node.operating_state("plc").await == "DOWN"
    })
    .await;
    let (s, v) = node.get(&node.device_command("plc", "Int16Value")).await;
    assert_eq!(s, 423, "a DOWN device is not read on demand: {v}");

    let _server = ModbusServer::start_on(port);
    eventually("the plc to come back UP", WAIT, || async {
        node.operating_state("plc").await == "UP"
    })
    .await;
    let before = node.reading_count("plc").await;
    eventually("readings again", WAIT, || async {
        node.reading_count("plc").await > before
    })
    .await;
}

#[tokio::test]
async fn modbus_rtu_over_a_serial_line() {
    let (_server, path) = ModbusServer::start_rtu();
    // As a serial adapter's device is: the `dialout` group's, which the node's user is in
    // (a pseudo-terminal is root's only).
    let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    let dialout: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("dialout:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .expect("a dialout group");
    std::os::unix::fs::chown(&path, None, Some(dialout)).expect("chgrp dialout");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
        .expect("chmod");
    let node = Node::start(&node_config()).await;
    setup(&node).await;
    let dev = json!([{"apiVersion": "v3", "device": {
        "name": "rtu1", "profileName": "ModbusPLC", "serviceName": "device-modbus",
        "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": {"modbus-rtu": {"Address": path, "BaudRate": "19200", "DataBits": "8",
            "StopBits": "1", "Parity": "N", "UnitID": "1", "Timeout": "2"}}
    }}]);
    add(&node, "device", &dev).await;
    let block = node.device_command("rtu1", "Block");
    eventually("a read over the serial line", WAIT, || async {
        node.get(&block).await.0 == 200
    })
    .await;
    let (s, v) = node.get(&block).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(values(&v), BLOCK);
    let (s, v) = put(&node, "rtu1", "Setpoint", json!({"Setpoint": "77"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = node.get(&node.device_command("rtu1", "Setpoint")).await;
    assert_eq!(
        (s, &v["event"]["readings"][0]["value"]),
        (200, &json!("77")),
        "{v}"
    );
}
