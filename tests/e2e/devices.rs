//! Device services: device-virtual's readings flow with autoEvents into core-data, commands
//! go through core-command (REST and bus) to the device service and back, onChange
//! suppresses repeats, and bad commands get EdgeX's status codes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

const VIRTUAL: &str =
    "[device_virtual]\nenabled = true\n[device_virtual.driver]\nprovision_examples = false\n";

/// A simulated profile: a counter, a bounded level, a read-only serial, a switch, and a
/// command setting two of them.
fn sim_profile() -> Value {
    json!([{"apiVersion": "v3", "profile": {
        "name": "Sim", "manufacturer": "Outpost", "model": "S1",
        "deviceResources": [
            {"name": "Counter", "properties": {"valueType": "Int32", "readWrite": "RW",
                "minimum": 0, "maximum": 1000000}, "attributes": {"generator": "counter"}},
            {"name": "Level", "properties": {"valueType": "Float64", "readWrite": "RW",
                "minimum": 0, "maximum": 100, "units": "%"}},
            {"name": "Serial", "properties": {"valueType": "String", "readWrite": "R"}},
            {"name": "Switch", "properties": {"valueType": "Bool", "readWrite": "RW"}}
        ],
        "deviceCommands": [
            {"name": "Settings", "readWrite": "RW", "resourceOperations": [
                {"deviceResource": "Level"}, {"deviceResource": "Switch"}]}
        ]
    }}])
}

fn device(name: &str, auto_events: Value) -> Value {
    json!([{"apiVersion": "v3", "device": {
        "name": name, "profileName": "Sim", "serviceName": "device-virtual",
        "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": {"other": {"Address": name}},
        "autoEvents": auto_events
    }}])
}

async fn setup(node: &Node) {
    let md = node.metadata();
    node.add_profiles(&sim_profile()).await;
    // device-virtual registers itself in metadata; devices can refer to it once it has.
    node.wait_device_service("device-virtual").await;
    let ae = json!([{"interval": "150ms", "sourceName": "Counter"}]);
    let (s, v) = node
        .post(&format!("{md}/api/v3/device"), &device("sim1", ae))
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{v}");
    let ae = json!([{"interval": "100ms", "sourceName": "Level", "onChange": true}]);
    let (s, v) = node
        .post(&format!("{md}/api/v3/device"), &device("sim2", ae))
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{v}");
}

#[tokio::test]
async fn virtual_readings_flow_and_commands_round_trip() {
    let node = Node::start(VIRTUAL).await;
    setup(&node).await;
    let cmd = node.command();

    // AutoEvents: the counter's readings reach core-data, typed and increasing.
    eventually("counter readings in core-data", WAIT, || async {
        node.readings("sim1", "Counter").await.len() >= 3
    })
    .await;
    let rs = node.readings("sim1", "Counter").await;
    let mut values: Vec<i64> = rs
        .iter()
        .map(|r| {
            assert_eq!(r["valueType"], "Int32");
            assert_eq!(r["profileName"], "Sim");
            r["value"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("an Int32 value")
        })
        .collect();
    values.sort_unstable();
    values.dedup();
    assert!(values.len() >= 3, "the counter advances: {values:?}");

    // The command list comes from the profile.
    let (s, v) = node.get(&format!("{cmd}/api/v3/device/name/sim1")).await;
    assert_eq!(s, 200, "{v}");
    let cmds = v["deviceCoreCommand"]["coreCommands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cmds.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["Settings", "Counter", "Level", "Serial", "Switch"]);
    let serial = cmds.iter().find(|c| c["name"] == "Serial").expect("Serial");
    assert_eq!(
        (serial["get"].as_bool(), serial.get("set")),
        (Some(true), None)
    );
    let (s, v) = node.get(&format!("{cmd}/api/v3/device/all")).await;
    assert_eq!((s, v["totalCount"].as_u64()), (200, Some(2)), "{v}");

    // GET through core-command reads the device.
    let (s, v) = node.get(&node.device_command("sim1", "Counter")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["deviceName"], "sim1");
    assert_eq!(v["event"]["readings"][0]["valueType"], "Int32");

    // SET a device command, then read the values back.
    let settings = json!({"Level": "42.5", "Switch": "true"});
    let (s, v) = node
        .put(&node.device_command("sim2", "Settings"), &settings)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = node.get(&node.device_command("sim2", "Settings")).await;
    assert_eq!(s, 200, "{v}");
    let rs = &v["event"]["readings"];
    assert_eq!(rs[0]["resourceName"], "Level");
    assert_eq!(rs[0]["value"], "4.25e+01");
    assert_eq!(rs[0]["units"], "%");
    assert_eq!(rs[1]["value"], "true");
    // ds-returnevent=false: no event in the answer (EdgeX's base response);
    // ds-pushevent=true: the event reaches core-data.
    let push_serial = || async {
        let url =
            format!("{cmd}/api/v3/device/name/sim1/Serial?ds-returnevent=false&ds-pushevent=true");
        node.get(&url).await
    };
    assert_eq!(
        push_serial().await,
        (200, json!({"apiVersion": "v3", "statusCode": 200}))
    );
    eventually("the pushed Serial reading", WAIT, || async {
        !node.readings("sim1", "Serial").await.is_empty()
    })
    .await;

    // onChange: the pinned level is published once, then not again while unchanged.
    eventually("the pinned level in core-data", WAIT, || async {
        node.readings("sim2", "Level")
            .await
            .iter()
            .any(|r| r["value"] == "4.25e+01")
    })
    .await;
    // Three autoEvent ticks after the pinned value was stored were unchanged, and left out.
    let virtual_ = node.url(node.ports.virtual_);
    let unchanged = || async {
        node.metric_if_any(
            &virtual_,
            "outpost_device_virtual_autoevent_unchanged_total",
        )
        .await
        .unwrap_or(0.0)
    };
    eventually("an unchanged tick", WAIT, || async {
        unchanged().await >= 1.0
    })
    .await;
    let before = node.readings("sim2", "Level").await.len();
    let from = unchanged().await;
    eventually("three more unchanged ticks", WAIT, || async {
        unchanged().await >= from + 3.0
    })
    .await;
    // An event pushed through the same service afterwards is stored: anything sent
    // before it would be too.
    assert_eq!(push_serial().await.0, 200);
    eventually("the second pushed Serial reading", WAIT, || async {
        node.readings("sim1", "Serial").await.len() >= 2
    })
    .await;
    let after = node.readings("sim2", "Level").await.len();
    assert_eq!(before, after, "an unchanged value was sent again");
}

#[tokio::test]
async fn bad_commands_get_edgex_status_codes() {
    let node = Node::start(VIRTUAL).await;
    setup(&node).await;
    let cmd = node.command();
    let put = async |path: String, body: Value| node.put(&path, &body).await;
    // Unknown device and command: 404 with EdgeX's error body.
    let (s, v) = node.get(&node.device_command("nope", "Counter")).await;
    assert_eq!((s, v["statusCode"].as_u64()), (404, Some(404)), "{v}");
    let (s, _) = node.get(&node.device_command("sim1", "Nope")).await;
    assert_eq!(s, 404);
    // A misspelt name, answered by the device service itself: the nearest one is named.
    let (s, v) = node.get(&node.device_command("sim1", "Countr")).await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("did you mean 'Counter'?")),
        "{v}"
    );
    // Read-only resource, out of range, wrong type, not an object: refused, nothing written.
    let (s, v) = put(
        node.device_command("sim1", "Serial"),
        json!({"Serial": "x"}),
    )
    .await;
    assert_eq!(s, 405, "{v}");
    let (s, v) = put(
        node.device_command("sim2", "Level"),
        json!({"Level": "150"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("outside"),
        "{v}"
    );
    let (s, _) = put(
        node.device_command("sim2", "Level"),
        json!({"Level": "warm"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = put(node.device_command("sim2", "Level"), json!([1])).await;
    assert_eq!(s, 400);
    let (s, _) = put(
        node.device_command("sim2", "Settings"),
        json!({"Level": "5"}),
    )
    .await;
    assert_eq!(
        s, 400,
        "a command needs every value (Switch has no default)"
    );
    let (s, _) = node
        .get(&format!(
            "{cmd}/api/v3/device/name/sim1/Counter?ds-returnevent=maybe"
        ))
        .await;
    assert_eq!(s, 400);
    // A good write still works after all that, and its value is what was set.
    let (s, _) = put(node.device_command("sim2", "Level"), json!({"Level": 7})).await;
    assert_eq!(s, 200);
    let (_, v) = node.get(&node.device_command("sim2", "Level")).await;
    assert_eq!(v["event"]["readings"][0]["value"], "7e+00");

    // The CLI writes and reads through core-command; a bad value is refused with the reason.
    node.cli_ok(&["command", "sim2", "Level", "Level=12"]);
    let (ok, out, err) = node.cli(&["command", "sim2", "Level"]);
    // People read 12, not EdgeX's 1.2e+01 (which --json keeps).
    assert!(
        ok && out.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.contains(&"Level") && cells.contains(&"12") && cells.contains(&"%")
        }),
        "{out}{err}"
    );
    let (ok, out, err) = node.cli(&["command", "sim2", "Level", "--json"]);
    assert!(ok && out.contains("1.2e+01"), "{out}{err}");
    let (ok, _, err) = node.cli(&["command", "sim2", "Level", "--set", "Level=500"]);
    assert!(!ok && err.contains("400"), "{err}");
    let (ok, _, err) = node.cli(&["command", "nope", "Level"]);
    assert!(!ok && err.contains("404"), "{err}");

    // A locked device answers 423, through core-command and at the device service.
    let md = node.metadata();
    let r = node
        .http
        .patch(format!("{md}/api/v3/device"))
        .json(&json!([{"apiVersion": "v3", "device": {"name": "sim1", "adminState": "LOCKED"}}]))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status().as_u16(), 207);
    let (s, _) = node.get(&node.device_command("sim1", "Counter")).await;
    assert_eq!(s, 423);
    eventually("device-virtual to see the lock", WAIT, || async {
        node.get(&format!(
            "{}/api/v3/device/name/sim1/Counter",
            node.url(node.ports.virtual_)
        ))
        .await
        .0 == 423
    })
    .await;
}

#[tokio::test]
async fn commands_over_the_bus_are_answered() {
    let node = Node::start(VIRTUAL).await;
    setup(&node).await;
    let rid = uuid::Uuid::new_v4().to_string();
    let sub = MosquittoSub::start(
        node.ports.mqtt,
        &format!("edgex/response/core-command/{rid}"),
    );
    let request = json!({
        "apiVersion": "v3", "requestID": rid, "correlationID": uuid::Uuid::new_v4().to_string(),
        "contentType": "application/json", "payload": null,
        "queryParams": {"ds-returnevent": "true"}
    })
    .to_string();
    let (_, payload) = sub.first_after(WAIT, || {
        let out = mosquitto_pub(
            node.ports.mqtt,
            "edgex/core/command/request/sim1/Counter/get",
            &request,
            &[],
        );
        assert!(out.status.success());
    });
    let v: Value = serde_json::from_str(&payload).expect("response envelope");
    assert_eq!(v["requestID"], rid.as_str());
    assert_eq!(v["errorCode"], 0, "{v}");
    assert_eq!(v["payload"]["event"]["deviceName"], "sim1");
    assert_eq!(
        v["payload"]["event"]["readings"][0]["resourceName"],
        "Counter"
    );

    // An unknown device is answered with an error, not silence.
    let rid = uuid::Uuid::new_v4().to_string();
    let sub = MosquittoSub::start(
        node.ports.mqtt,
        &format!("edgex/response/core-command/{rid}"),
    );
    let request = json!({"apiVersion": "v3", "requestID": rid, "payload": null}).to_string();
    let (_, payload) = sub.first_after(WAIT, || {
        mosquitto_pub(
            node.ports.mqtt,
            "edgex/core/command/request/nope/Counter/get",
            &request,
            &[],
        );
    });
    let v: Value = serde_json::from_str(&payload).expect("error envelope");
    assert_eq!(v["errorCode"], 1);
    assert!(
        v["payload"].as_str().unwrap_or("").contains("not found"),
        "{v}"
    );
}

/// `outpost device discover`: device-virtual "finds" virtual-1..3; a provision watcher takes
/// the ones its identifiers match and its blocking identifiers do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_adds_what_provision_watchers_accept() {
    let node = Node::start(&format!("{VIRTUAL}discoverable = 3\n")).await;
    setup(&node).await;
    let md = node.metadata();
    let watcher = json!([{"apiVersion": "v3", "provisionwatcher": {
        "name": "virtuals", "serviceName": "device-virtual", "adminState": "UNLOCKED",
        "identifiers": {"Address": "virtual-[12]$"},
        "blockingIdentifiers": {"Address": ["virtual-2"]},
        "discoveredDevice": {"profileName": "Sim", "adminState": "UNLOCKED"}
    }}]);
    let (s, v) = node
        .post(&format!("{md}/api/v3/provisionwatcher"), &watcher)
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{v}");

    let out = node.cli_ok(&["device", "discover", "device-virtual", "--wait", "2s"]);
    assert_eq!(out.trim(), "added virtual-1", "{out}");
    let (s, v) = node
        .get(&format!("{md}/api/v3/device/name/virtual-1"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["device"]["profileName"], "Sim");
    assert!(
        v["device"]["labels"]
            .as_array()
            .unwrap()
            .contains(&json!("virtual")),
        "{v}"
    );
    for blocked in ["virtual-2", "virtual-3"] {
        let (s, _) = node
            .get(&format!("{md}/api/v3/device/name/{blocked}"))
            .await;
        assert_eq!(s, 404, "{blocked} must not be added");
    }
    // A second run finds nothing new; an unknown service is an error.
    let (ok, out, err) = node.cli(&["device", "discover", "device-virtual", "--wait", "1s"]);
    assert!(ok && out.contains("no new devices"), "{out}{err}");
    // As JSON, what was added as metadata has it: here a watcher that takes virtual-3.
    let watcher = json!([{"apiVersion": "v3", "provisionwatcher": {
        "name": "third", "serviceName": "device-virtual", "adminState": "UNLOCKED",
        "identifiers": {"Address": "virtual-3$"},
        "discoveredDevice": {"profileName": "Sim", "adminState": "UNLOCKED"}
    }}]);
    let (s, v) = node
        .post(&format!("{md}/api/v3/provisionwatcher"), &watcher)
        .await;
    assert!(s == 207 && v[0]["statusCode"] == 201, "{v}");
    let out = node.cli_ok(&[
        "device",
        "discover",
        "device-virtual",
        "--wait",
        "2s",
        "--json",
    ]);
    let found: Value = serde_json::from_str(&out).expect("discover --json is JSON");
    assert_eq!(found["service"], "device-virtual", "{found}");
    let added = found["added"].as_array().expect("added");
    assert_eq!(added.len(), 1, "{found}");
    assert_eq!(
        (&added[0]["name"], &added[0]["profileName"]),
        (&json!("virtual-3"), &json!("Sim")),
        "{found}"
    );
    let (ok, _, err) = node.cli(&["device", "discover", "device-nothing"]);
    assert!(!ok && err.contains("not a device service"), "{err}");
}
