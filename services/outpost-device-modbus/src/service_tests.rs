//! device-modbus's router, built as the node builds it, against the real core-metadata and a
//! real Modbus server (pymodbus): how many requests a command becomes under each batching
//! setting, writes reaching the registers, and what a device's exception and a server that
//! is gone look like to the caller.

use axum::http::StatusCode;
use outpost_testkit::Drive;
use outpost_testkit::device::DeviceNode;
use outpost_testkit::metadata;
use outpost_testkit::modbus::{self, BLOCK, Server, values};
use serde_json::json;

use crate::{Config, DeviceModbus, ModbusConfig};

const READS: &str = "outpost_device_modbus_requests_total{kind=\"read\"}";

/// A node with device-modbus set up with `driver`, the PLC and broken profiles, and device
/// `name` of `profile` on `server`.
async fn start(driver: ModbusConfig, server: &Server, devices: &[(&str, &str)]) -> DeviceNode {
    let node = DeviceNode::start::<DeviceModbus>(|port| Config {
        port,
        driver,
        ..Config::default()
    })
    .await;
    for profile in [modbus::plc_profile(), modbus::broken_profile()] {
        metadata::add(&node.md, "/api/v3/deviceprofile", "profile", profile).await;
    }
    for (name, profile) in devices {
        let tcp = json!({"modbus-tcp": {"Address": "127.0.0.1", "Port": server.port.to_string(),
            "UnitID": "1", "Timeout": "2"}});
        let device = metadata::device(name, "device-modbus")
            .profile(profile)
            .protocols(tcp);
        metadata::add_device(&node.md, &device).await;
        node.known(name).await;
    }
    node
}

/// Reads `Block` of `plc`: its values, and how many Modbus reads it took.
async fn block(node: &DeviceNode) -> (Vec<String>, u64) {
    let before = node.ds.metric(READS).await;
    let path = "/api/v3/device/name/plc/Block";
    let b = node.ds.expect("GET", path, None, StatusCode::OK).await;
    let reads = node.ds.metric(READS).await - before;
    (values(&b).into_iter().map(String::from).collect(), reads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_as_few_reads_as_the_settings_allow() {
    let server = Server::start();
    let plc = [("plc", "ModbusPLC")];

    // Batched: the six values (14 contiguous registers) are one read.
    let node = start(ModbusConfig::default(), &server, &plc).await;
    assert_eq!(block(&node).await, (BLOCK.map(String::from).to_vec(), 1));
    node.stop().await;

    // At most 4 registers per read: 14 registers take four reads, and the values are the
    // same.
    let small = ModbusConfig {
        max_registers_per_read: 4,
        ..ModbusConfig::default()
    };
    let node = start(small, &server, &plc).await;
    assert_eq!(block(&node).await, (BLOCK.map(String::from).to_vec(), 4));
    node.stop().await;

    // Batching off: one read per resource.
    let off = ModbusConfig {
        batching: false,
        ..ModbusConfig::default()
    };
    let node = start(off, &server, &plc).await;
    assert_eq!(block(&node).await, (BLOCK.map(String::from).to_vec(), 6));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_the_registers_and_failures_say_whose_they_are() {
    let mut server = Server::start();
    let devices = [("plc", "ModbusPLC"), ("broken", "ModbusBroken")];
    let node = start(ModbusConfig::default(), &server, &devices).await;
    let ds = &node.ds;

    // One write of a device command sets both registers.
    let settings = Some(json!({"Setpoint": "1234", "Level": "2.5"}));
    let path = "/api/v3/device/name/plc/Settings";
    ds.expect("PUT", path, settings, StatusCode::OK).await;
    assert_eq!(
        server.read("holding", 30, 3)["values"],
        json!([1234, 16416, 0]),
        "Setpoint 1234, Level 2.5 as Float32 (0x40200000)"
    );
    let back = ds.expect("GET", path, None, StatusCode::OK).await;
    assert_eq!(values(&back), ["1234", "2.5e+00"]);

    // A value out of the resource's range never reaches the device.
    let too_big = Some(json!({"Setpoint": "70000"}));
    ds.expect("PUT", path, too_big, StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(server.read("holding", 30, 1)["values"], json!([1234]));

    // The device's exception (an address it does not have) is its error; the other device
    // is unaffected.
    let missing = "/api/v3/device/name/broken/Missing";
    let b = ds
        .expect("GET", missing, None, StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    let message = b["message"].as_str().unwrap_or_default();
    assert!(message.to_lowercase().contains("illegal"), "{b}");
    assert_eq!(block(&node).await.0, BLOCK);

    // The server is gone: the device is unreachable, which is not the caller's fault.
    server.stop();
    let block = "/api/v3/device/name/plc/Block";
    ds.expect("GET", block, None, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    node.stop().await;
}
