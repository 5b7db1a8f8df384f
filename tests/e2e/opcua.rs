//! device-opcua against a real OPC UA server (asyncua, `tests/peers/opcua_server.py`, its own
//! process on a free port), through the node as users reach it: a profile with EdgeX
//! device-opc-ua attributes, readings through core-command and autoEvents into core-data, a
//! SET through core-command changing the node on the server, a method called, a node the
//! server lacks refused clearly, and a server killed and started again taking its device
//! DOWN and back UP.

use std::time::Duration;

use outpost_testkit::opcua::Server;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

fn res(name: &str, vt: &str, rw: &str, attrs: Value) -> Value {
    json!({"name": name, "properties": {"valueType": vt, "readWrite": rw}, "attributes": attrs})
}

/// A profile over the test server's address space, as EdgeX's device-opc-ua writes one.
fn profile() -> Value {
    json!({"name": "OpcUa-Plant", "manufacturer": "Outpost", "model": "asyncua", "deviceResources": [
        res("Int16", "Int16", "R", json!({"nodeId": "ns=2;s=Plant.Int16"})),
        res("Double", "Float64", "R", json!({"namespace": "2", "symbol": "Plant.Double"})),
        res("Name", "String", "R", json!({"nodeId": "ns=2;s=Plant.String"})),
        res("Values", "Float64Array", "R", json!({"nodeId": "ns=2;s=Plant.Values"})),
        res("Counter", "Uint32", "R", json!({"nodeId": "ns=2;s=Plant.Counter"})),
        res("Setpoint", "Int16", "RW", json!({"nodeId": "ns=2;s=Plant.Setpoint"})),
        res("Add", "Int32", "RW", json!({"methodId": "ns=2;s=Plant.Add", "objectId": "ns=2;s=Plant", "inputMap": ["2", "3"]})),
        res("Missing", "Int32", "R", json!({"nodeId": "ns=2;s=Plant.Nope"})),
    ]})
}

async fn add(node: &Node, path: &str, body: &Value) {
    let (s, v) = node
        .post(&format!("{}/api/v3/{path}", node.metadata()), body)
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{path}: {v}");
}

#[tokio::test]
async fn opcua_reads_writes_methods_and_a_server_restart() {
    let dir = tempdir();
    let mut server = Server::start(dir.path(), "none");
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    add(
        &node,
        "deviceprofile",
        &json!([{"apiVersion": "v3", "profile": profile()}]),
    )
    .await;
    add(
        &node,
        "device",
        &json!([{"apiVersion": "v3", "device": {
            "name": "plant", "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"opcua": {"Endpoint": server.url()}},
            "autoEvents": [{"interval": "200ms", "onChange": false, "sourceName": "Counter"}]
        }}]),
    )
    .await;

    // device-opcua learns of the device from core-metadata's system event.
    node.wait_log(&["device-opcua", "device added", "device=plant"])
        .await;

    // Reads through core-command, each value as its resource's type.
    for (command, value_type, value) in [
        ("Int16", "Int16", json!("-1234")),
        ("Double", "Float64", json!("-2.5e-01")),
        ("Name", "String", json!("outpost")),
        ("Add", "Int32", json!("5")),
    ] {
        let (s, v) = node.get(&node.device_command("plant", command)).await;
        assert_eq!(s, 200, "{command}: {v}");
        let r = &v["event"]["readings"][0];
        assert_eq!(r["valueType"], value_type, "{command}: {v}");
        assert_eq!(r["value"], value, "{command}: {v}");
    }
    let (s, v) = node.get(&node.device_command("plant", "Values")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["event"]["readings"][0]["valueType"], "Float64Array",
        "{v}"
    );

    // A SET changes the node on the server.
    let (s, v) = node
        .put(
            &node.device_command("plant", "Setpoint"),
            &json!({"Setpoint": "55"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(server.read("ns=2;s=Plant.Setpoint")["value"], 55);

    // A node the server does not have: a clear error naming it, and the device stays UP.
    let (s, v) = node.get(&node.device_command("plant", "Missing")).await;
    assert!(s >= 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Missing"),
        "{v}"
    );
    assert_eq!(node.operating_state("plant").await, "UP");

    // The autoEvent's readings reach core-data.
    eventually("Counter readings in core-data", WAIT, || async {
        node.reading_count("plant").await >= 5
    })
    .await;

    // The server killed: the device goes DOWN; started again on its port: UP, readings again.
    let port = server.port;
    server.stop();
    eventually("plant DOWN", WAIT, || async {
        node.operating_state("plant").await == "DOWN"
    })
    .await;
    let _server = Server::start_on(port, dir.path(), "none");
    eventually("plant UP again", WAIT, || async {
        node.operating_state("plant").await == "UP"
    })
    .await;
    let before = node.reading_count("plant").await;
    eventually("readings again", WAIT, || async {
        node.reading_count("plant").await >= before + 3
    })
    .await;
}
