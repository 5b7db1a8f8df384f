//! The driver against a real OPC UA server (asyncua, `tests/peers/opcua_server.py`): every
//! built-in scalar type and an array read with their values, a set-point written and read
//! back by another client, a method called, a Bad status and a server that is gone.

use std::sync::Arc;

use outpost_contracts::metadata::{Device, DeviceProfile, DeviceResource};
use outpost_device_opcua::{OpcUa, OpcUaConfig};
use outpost_device_sdk::{CommandValue, DeviceRef, Driver, DriverError, ResourceRef};
use outpost_testkit::opcua::Server;
use serde_json::json;

fn resource(name: &str, value_type: &str, attributes: serde_json::Value) -> ResourceRef {
    let r: DeviceResource = serde_json::from_value(json!({
        "name": name, "properties": {"valueType": value_type, "readWrite": "RW"},
        "attributes": attributes
    }))
    .expect("a resource");
    ResourceRef {
        resource: Arc::new(r),
    }
}

fn device(url: &str) -> DeviceRef {
    let d: Device = serde_json::from_value(json!({
        "name": "plant", "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
        "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": {"opcua": {"Endpoint": url}}
    }))
    .expect("a device");
    let p: DeviceProfile =
        serde_json::from_value(json!({"name": "OpcUa-Plant"})).expect("a profile");
    DeviceRef {
        device: Arc::new(d),
        profile: Arc::new(p),
    }
}

fn node(id: &str) -> serde_json::Value {
    json!({ "nodeId": id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_calls_against_a_real_server() {
    let dir = tempfile::tempdir().expect("a directory");
    let mut server = Server::start(dir.path(), "none");
    let driver = OpcUa::new(OpcUaConfig::default(), dir.path().join("pki"));
    let d = device(&server.url());

    // Every built-in scalar type, by nodeId and by namespace + symbol, and an array.
    let scalars = [
        ("Boolean", "Bool", CommandValue::Bool(true)),
        ("SByte", "Int8", CommandValue::Int(-8)),
        ("Byte", "Uint8", CommandValue::Uint(200)),
        ("Int16", "Int16", CommandValue::Int(-1234)),
        ("UInt16", "Uint16", CommandValue::Uint(4242)),
        ("Int32", "Int32", CommandValue::Int(-123456)),
        ("UInt32", "Uint32", CommandValue::Uint(305419896)),
        ("Int64", "Int64", CommandValue::Int(-5_000_000_000)),
        ("UInt64", "Uint64", CommandValue::Uint(9_000_000_000)),
        ("Float", "Float32", CommandValue::Float(21.5)),
        ("Double", "Float64", CommandValue::Float(-0.25)),
        ("String", "String", CommandValue::String("outpost".into())),
        ("DateTime", "Int64", CommandValue::Int(1_767_323_045_000)),
        (
            "ByteString",
            "Binary",
            CommandValue::Binary(vec![1, 2, 255]),
        ),
    ];
    let resources: Vec<ResourceRef> = scalars
        .iter()
        .map(|(n, vt, _)| resource(n, vt, node(&format!("ns=2;s=Plant.{n}"))))
        .chain([resource(
            "Values",
            "Float64Array",
            node("ns=2;s=Plant.Values"),
        )])
        .collect();
    let values = driver.read(&d, &resources).await.expect("read");
    let want: Vec<CommandValue> = scalars
        .iter()
        .map(|(_, _, v)| v.clone())
        .chain([CommandValue::Array(vec![
            CommandValue::Float(1.5),
            CommandValue::Float(2.5),
            CommandValue::Float(3.5),
        ])])
        .collect();
    assert_eq!(values, want);
    let symbol = resource(
        "Int32",
        "Int32",
        json!({"namespace": "urn:outpost:test", "symbol": "Plant.Int32"}),
    );
    let numeric = resource("Numeric", "Int32", node("ns=2;i=1001"));
    assert_eq!(
        driver
            .read(&d, &[symbol, numeric])
            .await
            .expect("read by namespace URI and numeric id"),
        [CommandValue::Int(-123456), CommandValue::Int(77)]
    );

    // A set-point written, as another client then reads it.
    let setpoint = resource("Setpoint", "Int16", node("ns=2;s=Plant.Setpoint"));
    driver
        .write(&d, &[(setpoint.clone(), CommandValue::Int(55))])
        .await
        .expect("write");
    assert_eq!(server.read("ns=2;s=Plant.Setpoint")["value"], 55);
    assert_eq!(
        driver.read(&d, &[setpoint]).await.expect("read back"),
        [CommandValue::Int(55)]
    );

    // A method: read with its inputMap, written with the values as arguments.
    let add = resource(
        "Add",
        "Int32",
        json!({"methodId": "ns=2;s=Plant.Add", "objectId": "ns=2;s=Plant", "inputMap": ["2", "3"]}),
    );
    assert_eq!(
        driver
            .read(&d, std::slice::from_ref(&add))
            .await
            .expect("call"),
        [CommandValue::Int(5)]
    );
    driver
        .write(
            &d,
            &[(
                add.clone(),
                CommandValue::Array(vec![CommandValue::Int(4), CommandValue::Int(5)]),
            )],
        )
        .await
        .expect("call with the written values");
    match driver
        .write(
            &d,
            &[(
                add,
                CommandValue::Array(vec![CommandValue::String("four".into())]),
            )],
        )
        .await
    {
        Err(DriverError::Invalid(why)) => assert!(why.contains("'four'"), "{why}"),
        other => panic!("an argument that is not its type is refused: {other:?}"),
    }

    // A node the server does not have: the server answered, the device is not unreachable.
    let missing = resource("Missing", "Int32", node("ns=2;s=Plant.Nope"));
    match driver.read(&d, &[missing]).await {
        Err(DriverError::Device(why)) => assert!(why.contains("Missing"), "{why}"),
        other => panic!("a Bad status is the device's answer: {other:?}"),
    }

    // The server gone: unreachable, which counts towards DOWN.
    server.stop();
    let counter = resource("Counter", "Uint32", node("ns=2;s=Plant.Counter"));
    match driver.read(&d, &[counter]).await {
        Err(DriverError::Unreachable(_)) => {}
        other => panic!("a server that is gone is unreachable: {other:?}"),
    }
}
