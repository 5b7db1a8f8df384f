//! device-opcua against a real OPC UA server (asyncua, `tests/peers/opcua_server.py`, its own
//! process on a free port), through the node as users reach it: a profile with EdgeX
//! device-opc-ua attributes, readings through core-command and autoEvents into core-data, a
//! SET through core-command changing the node on the server, a method called, a node the
//! server lacks refused clearly, and a server killed and started again taking its device
//! DOWN and back UP; and `onChange` autoEvents served by a subscription (monitored items
//! with a deadband), which a server restart does not lose or double; and Basic256Sha256
//! SignAndEncrypt with the node CA's application certificate, to a server whose certificate
//! the device pins, while a server nobody trusts is refused; and sessions as a user (its
//! password a secret kept encrypted) or by certificate.

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
        res("Temperature", "Float64", "R", json!({"namespace": "urn:outpost:test", "symbol": "Plant.Temperature"})),
        res("Setpoint", "Int16", "RW", json!({"nodeId": "ns=2;s=Plant.Setpoint"})),
        res("Add", "Int32", "RW", json!({"methodId": "ns=2;s=Plant.Add", "objectId": "ns=2;s=Plant", "inputMap": ["2", "3"]})),
        res("Missing", "Int32", "R", json!({"nodeId": "ns=2;s=Plant.Nope"})),
        res("Shifty", "Int32", "R", json!({"nodeId": "ns=2;s=Plant.Shifty"})),
        res("Retype", "Bool", "R", json!({"methodId": "ns=2;s=Plant.Retype", "objectId": "ns=2;s=Plant"})),
    ]})
}

/// Kills `server` (kill -9) and waits for `device` to go DOWN, then starts it again on its
/// port (same certificate) and waits for `device` to come back UP.
async fn restart(node: &Node, mut server: Server, dir: &std::path::Path, device: &str) -> Server {
    let port = server.port;
    server.stop();
    eventually(&format!("{device} DOWN"), WAIT, || async {
        node.operating_state(device).await == "DOWN"
    })
    .await;
    let server = Server::start_on(port, dir, "none");
    eventually(&format!("{device} UP again"), WAIT, || async {
        node.operating_state(device).await == "UP"
    })
    .await;
    server
}

/// The test profile (`profile()`) in core-metadata.
async fn add_profile(node: &Node) {
    add(
        node,
        "deviceprofile",
        &json!([{"apiVersion": "v3", "profile": profile()}]),
    )
    .await;
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
    let server = Server::start(dir.path(), "none");
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    add_profile(&node).await;
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

    // A node whose type the server changes: refused as what it now is, the device UP and its
    // other nodes read.
    let (s, v) = node.get(&node.device_command("plant", "Shifty")).await;
    assert_eq!(
        (s, &v["event"]["readings"][0]["value"]),
        (200, &json!("7")),
        "{v}"
    );
    let (s, v) = node.get(&node.device_command("plant", "Retype")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = node.get(&node.device_command("plant", "Shifty")).await;
    assert!(s >= 400, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("Shifty"), "{v}");
    let (s, v) = node.get(&node.device_command("plant", "Int16")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(node.operating_state("plant").await, "UP");

    // The autoEvent's readings reach core-data.
    eventually("Counter readings in core-data", WAIT, || async {
        node.reading_count("plant").await >= 5
    })
    .await;

    // The server killed: the device goes DOWN; started again on its port: UP, readings again.
    let _server = restart(&node, server, dir.path(), "plant").await;
    let before = node.reading_count("plant").await;
    eventually("readings again", WAIT, || async {
        node.reading_count("plant").await >= before + 3
    })
    .await;
}

/// The readings of `resource` as (origin, value), oldest first.
async fn series(node: &Node, device: &str, resource: &str) -> Vec<(i64, Value)> {
    let mut out: Vec<(i64, Value)> = node
        .readings(device, resource)
        .await
        .iter()
        .map(|r| (r["origin"].as_i64().unwrap_or_default(), r["value"].clone()))
        .collect();
    out.sort_by_key(|(origin, _)| *origin);
    out
}

/// How many readings appear twice (the same value at the same origin).
fn doubled(series: &[(i64, Value)]) -> usize {
    let distinct: std::collections::HashSet<(i64, String)> =
        series.iter().map(|(o, v)| (*o, v.to_string())).collect();
    series.len() - distinct.len()
}

#[tokio::test]
async fn opcua_subscriptions_deliver_changes_and_a_server_restart_loses_or_doubles_none() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "none");
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    let ds = node.url(node.ports.opcua);
    // The README's example profile, applied as the README does.
    node.cli_ok(&[
        "profile",
        "apply",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/opcua-plant.yaml"
        ),
    ]);
    // onChange autoEvents: monitored items sampled every 100 ms (the server's tick), the
    // temperature with an absolute deadband of 2.
    add(
        &node,
        "device",
        &json!([{"apiVersion": "v3", "device": {
            "name": "line", "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"opcua": {"Endpoint": server.url()}},
            "autoEvents": [
                {"interval": "100ms", "onChange": true, "sourceName": "Counter"},
                {"interval": "100ms", "onChange": true, "onChangeThreshold": 2.0, "sourceName": "Temperature"},
                {"interval": "100ms", "onChange": true, "sourceName": "Setpoint"}
            ]
        }}]),
    )
    .await;
    node.wait_log(&["device-opcua", "device added", "device=line"])
        .await;

    // Changes arrive as the resources' types, from one subscription, not from reads.
    eventually("Counter changes in core-data", WAIT, || async {
        node.reading_count("line").await >= 20
    })
    .await;
    assert_eq!(
        node.metric(&ds, "outpost_device_opcua_subscriptions").await,
        1.0
    );
    assert!(
        node.metric(&ds, "outpost_device_opcua_data_changes_total")
            .await
            >= 20.0
    );
    let counter = node.readings("line", "Counter").await;
    assert!(
        counter.iter().all(|r| r["valueType"] == "Uint32"),
        "{counter:?}"
    );

    // The deadband: only temperature changes of 2 or more since the last one published
    // (the server adds 0.1 a tick, and 5 every 20 ticks).
    eventually("Temperature jumps in core-data", WAIT, || async {
        series(&node, "line", "Temperature").await.len() >= 3
    })
    .await;
    let temps: Vec<f64> = series(&node, "line", "Temperature")
        .await
        .iter()
        .filter_map(|(_, v)| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    for w in temps.windows(2) {
        assert!(
            w[1] - w[0] >= 2.0 - 1e-9,
            "a change under the deadband published: {temps:?}"
        );
    }

    // A value another client writes arrives with no read asked for.
    server.write("ns=2;s=Plant.Setpoint", "Int16", "321");
    eventually("the written set-point in core-data", WAIT, || async {
        series(&node, "line", "Setpoint")
            .await
            .iter()
            .any(|(_, v)| v == "321")
    })
    .await;

    // The server killed: DOWN. Started again on its port: UP, one subscription again, and
    // changes flow; no reading is in core-data twice.
    let _server = restart(&node, server, dir.path(), "line").await;
    let before = series(&node, "line", "Counter").await.len();
    eventually("Counter changes again", WAIT, || async {
        series(&node, "line", "Counter").await.len() >= before + 10
    })
    .await;
    assert_eq!(
        node.metric(&ds, "outpost_device_opcua_subscriptions").await,
        1.0
    );
    let counter = series(&node, "line", "Counter").await;
    assert_eq!(doubled(&counter), 0, "{counter:?}");
    // After the restart the counter starts again from 1, each tick once.
    let after: Vec<u64> = counter[before..]
        .iter()
        .filter_map(|(_, v)| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    for w in after.windows(2) {
        assert!(w[1] > w[0], "the counter went back or repeated: {after:?}");
    }
}

#[tokio::test]
async fn opcua_sign_and_encrypt_with_a_pinned_server_and_an_untrusted_one_refused() {
    let (dir, other) = (tempdir(), tempdir());
    // Each offers None too, for the test's own client; the devices ask for SignAndEncrypt.
    let server = Server::start(dir.path(), "none,encrypt");
    let stranger = Server::start(other.path(), "none,encrypt");
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    add_profile(&node).await;
    let secure = |name: &str, url: String, pem: Option<String>| {
        let mut block = json!({"Endpoint": url, "SecurityPolicy": "Basic256Sha256",
            "SecurityMode": "SignAndEncrypt"});
        if let Some(pem) = pem {
            block["RemotePemCert"] = json!(pem);
        }
        json!({"apiVersion": "v3", "device": {
            "name": name, "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP", "protocols": {"opcua": block}
        }})
    };
    add(
        &node,
        "device",
        &json!([
            secure("vault", server.url(), Some(server.cert_pem())),
            secure("stranger", stranger.url(), None)
        ]),
    )
    .await;
    node.wait_log(&["device-opcua", "device added", "device=stranger"])
        .await;

    // The pinned server: reads and a SET over the encrypted channel.
    let (s, v) = node.get(&node.device_command("vault", "Int16")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "-1234", "{v}");
    let (s, v) = node
        .put(
            &node.device_command("vault", "Setpoint"),
            &json!({"Setpoint": "-7"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(server.read("ns=2;s=Plant.Setpoint")["value"], -7);

    // The server nobody trusts: refused with the reason, its certificate set aside for an
    // operator, and the trust list holds only the pinned one.
    let (s, v) = node.get(&node.device_command("stranger", "Int16")).await;
    assert!(s >= 500, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("Untrusted"), "{v}");
    let files = |sub: &str| -> Vec<String> {
        std::fs::read_dir(node.data_dir().join("opcua-pki").join(sub))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(files("rejected").len(), 1, "{:?}", files("rejected"));
    assert_eq!(files("trusted").len(), 1, "{:?}", files("trusted"));
    assert!(
        files("trusted")[0].contains("urn:outpost:test:server"),
        "{:?}",
        files("trusted")
    );
}

#[tokio::test]
async fn opcua_identities_a_user_from_a_kept_secret_and_a_certificate() {
    let dir = tempdir();
    let server = Server::start_with(
        outpost_testkit::free_port(),
        dir.path(),
        "none,sign",
        &[
            "--user",
            "operator:s3cret-pass",
            "--certificates",
            "--no-anonymous",
        ],
    );
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    let ds = node.url(node.ports.opcua);
    add_profile(&node).await;
    let device = |name: &str, auth: Value| {
        let mut block = json!({"Endpoint": server.url()});
        if let (Some(b), Some(a)) = (block.as_object_mut(), auth.as_object()) {
            b.extend(a.clone());
        }
        json!({"apiVersion": "v3", "device": {
            "name": name, "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP", "protocols": {"opcua": block}
        }})
    };
    add(
        &node,
        "device",
        &json!([
            // A password and a certificate identity each go over a signed channel (the
            // password encrypted to the server's key).
            device(
                "login",
                json!({"AuthType": "Username", "SecretName": "plc-login",
                "SecurityPolicy": "Basic256Sha256", "SecurityMode": "Sign",
                "RemotePemCert": server.cert_pem()})
            ),
            device(
                "badge",
                json!({"AuthType": "Certificate", "SecurityPolicy": "Basic256Sha256",
                "SecurityMode": "Sign", "RemotePemCert": server.cert_pem()})
            ),
            device("anon", json!({}))
        ]),
    )
    .await;
    node.wait_log(&["device-opcua", "device added", "device=anon"])
        .await;
    let int16 = |device: &str| {
        let url = node.device_command(device, "Int16");
        let node = &node;
        async move { node.get(&url).await }
    };
    let secret = |password: &str| {
        json!({"apiVersion": "v3", "secretName": "plc-login", "secretData": [
            {"key": "username", "value": "operator"}, {"key": "password", "value": password}]})
    };

    // A password in a device's document is refused when the device is added (core-metadata
    // asks device-opcua to validate it).
    let (s, v) = node
        .post(
            &format!("{}/api/v3/device", node.metadata()),
            &json!([device(
                "leaky",
                json!({"AuthType": "Username", "Password": "s3cret-pass",
                "SecurityPolicy": "Basic256Sha256", "SecurityMode": "Sign"})
            )]),
        )
        .await;
    assert_eq!(s, 207, "{v}");
    assert_eq!(v[0]["statusCode"], 400, "{v}");
    assert!(
        v[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("secret"),
        "{v}"
    );

    // A user whose secret was not given yet: the error says what to do.
    let (s, v) = int16("login").await;
    assert!(s >= 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("POST /api/v3/secret"),
        "{v}"
    );
    // Given to device-opcua with the CLI (the password from standard input): reads as that
    // user.
    let (ok, out, err) = node.cli_with(
        &[
            "device-service",
            "secret",
            "device-opcua",
            "plc-login",
            "username=operator",
            "password=-",
        ],
        &[],
        Some("s3cret-pass\n"),
    );
    assert!(ok, "{out}{err}");
    let (s, v) = int16("login").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "-1234", "{v}");
    // The application certificate as the identity.
    let (s, v) = int16("badge").await;
    assert_eq!(s, 200, "{v}");
    // Anonymous, which this server refuses: refused, with its status.
    let (s, v) = int16("anon").await;
    assert!(s >= 500, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains("Bad"),
        "{v}"
    );
    // A wrong password replacing the secret: the session is made again, and refused.
    let (s, _) = node
        .post(&format!("{ds}/api/v3/secret"), &secret("wrong"))
        .await;
    assert_eq!(s, 201);
    let (s, v) = int16("login").await;
    assert!(s >= 500, "{v}");

    // The password is nowhere on disk in the clear.
    let mut stack = vec![node.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes.windows(11).any(|w| w == b"s3cret-pass"),
                    "{} holds the password",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn opcua_a_server_that_never_answers_holds_up_only_its_own_device() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "none");
    // Takes connections (the kernel's backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let silent_url = format!(
        "opc.tcp://127.0.0.1:{}/",
        silent.local_addr().expect("its address").port()
    );
    let node = Node::start("[device_opcua]\nenabled = true\n").await;
    node.wait_device_service("device-opcua").await;
    add_profile(&node).await;
    let device = |name: &str, url: &str| {
        json!({"apiVersion": "v3", "device": {
            "name": name, "profileName": "OpcUa-Plant", "serviceName": "device-opcua",
            "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"opcua": {"Endpoint": url}}
        }})
    };
    add(
        &node,
        "device",
        &json!([device("mute", &silent_url), device("plant", &server.url())]),
    )
    .await;
    node.wait_log(&["device-opcua", "device added", "device=plant"])
        .await;

    // A read of the silent server's device waits out its connect; meanwhile the other
    // device answers.
    let mute = {
        let url = node.device_command("mute", "Int16");
        let http = node.http.clone();
        tokio::spawn(async move { http.get(&url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, v) = node.get(&node.device_command("plant", "Int16")).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !mute.is_finished(),
        "the silent server's read ended first: the other device was not held up, but the test proves nothing"
    );
    // The silent one: an error that says it did not answer, and DOWN after the allowed
    // failures.
    let status = mute
        .await
        .expect("the task")
        .expect("an answer from core-command");
    assert_eq!(status, 503);
    eventually("mute DOWN", WAIT, || async {
        let _ = node.get(&node.device_command("mute", "Int16")).await;
        node.operating_state("mute").await == "DOWN"
    })
    .await;
    assert_eq!(node.operating_state("plant").await, "UP");
}

#[tokio::test]
async fn opcua_discovery_browses_the_server_and_a_watcher_adds_what_it_matches() {
    let dir = tempdir();
    let server = Server::start(dir.path(), "none");
    let node = Node::start(&format!(
        "[device_opcua]\nenabled = true\n[device_opcua.driver]\ndiscovery_urls = [\"{}\"]\n",
        server.url()
    ))
    .await;
    node.wait_device_service("device-opcua").await;
    add_profile(&node).await;
    add(
        &node,
        "provisionwatcher",
        &json!([{"apiVersion": "v3", "provisionwatcher": {
            "name": "plants", "serviceName": "device-opcua", "adminState": "UNLOCKED",
            "identifiers": {"BrowseName": "^Plant$"},
            "discoveredDevice": {"profileName": "OpcUa-Plant", "adminState": "UNLOCKED"}
        }}]),
    )
    .await;
    let out = node.cli_ok(&["device", "discover", "device-opcua", "--wait", "3s"]);
    assert_eq!(out.trim(), "added 127.0.0.1-Plant", "{out}");
    let (s, v) = node
        .get(&format!(
            "{}/api/v3/device/name/127.0.0.1-Plant",
            node.metadata()
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let block = &v["device"]["protocols"]["opcua"];
    assert_eq!(block["Endpoint"], server.url(), "{v}");
    assert_eq!(block["NodeId"], "ns=2;s=Plant", "{v}");
    // The device found reads like one added by hand.
    node.wait_log(&["device-opcua", "device added", "device=127.0.0.1-Plant"])
        .await;
    let (s, v) = node
        .get(&node.device_command("127.0.0.1-Plant", "Int16"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "-1234", "{v}");
}
