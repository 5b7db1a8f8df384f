//! device-mqtt with real MQTT clients as devices (mosquitto_pub/sub): per-device
//! credentials in the node's broker, telemetry in JSON, CBOR and bare values becoming typed
//! readings, a command answered by a device, and every kind of bad input: wrong
//! credentials, publishing or subscribing as another device, garbage, unknown resources,
//! wrong types and a flooding device that is throttled while the others are served.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

const MQTT: &str = "[device_mqtt]\nenabled = true\ndevice_messages_per_s = 20.0\ndevice_messages_burst = 50\n[broker]\ndevice_auth_cache_s = 1\nauth_failure_burst = 3\nauth_failure_refill_s = 2\n";

pub fn profile() -> Value {
    profile_request(
        "Press",
        "P-7",
        json!([
            {"name": "Pressure", "properties": {"valueType": "Float32", "readWrite": "R", "units": "bar"}},
            {"name": "Cycles", "properties": {"valueType": "Uint32", "readWrite": "R"}},
            {"name": "Running", "properties": {"valueType": "Bool", "readWrite": "R"}},
            {"name": "Setpoint", "properties": {"valueType": "Float64", "readWrite": "RW",
                "minimum": 0, "maximum": 100}}
        ]),
    )
}

pub fn device(name: &str, mqtt: Value) -> Value {
    json!({"apiVersion": "v3", "device": {
        "name": name, "profileName": "Press", "serviceName": "device-mqtt",
        "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": {"mqtt": mqtt}
    }})
}

/// Waits until `device` has a `resource` reading with `value`.
async fn wait_value(node: &Node, device: &str, resource: &str, value: &str) {
    eventually(&format!("{device}/{resource} = {value}"), WAIT, || async {
        node.readings(device, resource)
            .await
            .iter()
            .any(|r| r["value"] == value)
    })
    .await;
}

/// mosquitto_pub to the node's broker, MQTT 5 (so refusals are reported), QoS 1.
fn mosquitto_pub_v5(node: &Node) -> Command {
    mosquitto_v5(node, "mosquitto_pub")
}

/// A mosquitto client (`program`) for the node's broker, MQTT 5, QoS 1.
fn mosquitto_v5(node: &Node, program: &str) -> Command {
    let mut c = Command::new(program);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &node.ports.mqtt.to_string(),
        "-V",
        "mqttv5",
        "-q",
        "1",
    ]);
    c
}

/// mosquitto_pub as a device (v5, so refusals are reported).
fn publish(node: &Node, user: &str, secret: &str, topic: &str, msg: &[u8]) -> std::process::Output {
    publish_as(
        node,
        &["-u", user, "-P", secret, "-i", &format!("{user}-pub")],
        topic,
        msg,
    )
}

/// mosquitto_pub as `device` on its own telemetry topic.
fn publish_own(node: &Node, device: &str, secret: &str, msg: &[u8]) -> std::process::Output {
    publish(
        node,
        device,
        secret,
        &format!("incoming/data/{device}"),
        msg,
    )
}

/// mosquitto_pub with these login arguments.
fn publish_as(node: &Node, login: &[&str], topic: &str, msg: &[u8]) -> std::process::Output {
    let mut child = mosquitto_pub_v5(node)
        .args(login)
        .args(["-t", topic, "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub must be installed (Debian package mosquitto-clients)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(msg)
        .expect("write to mosquitto_pub");
    child.wait_with_output().expect("mosquitto_pub")
}

/// mosquitto_pub as `device` (client ID `<device>-held`) that stays connected and publishes
/// each line written to its stdin as telemetry.
fn held_publisher(node: &Node, device: &str, secret: &str) -> std::process::Child {
    mosquitto_pub_v5(node)
        .args([
            "-u",
            device,
            "-P",
            secret,
            "-i",
            &format!("{device}-held"),
            "-t",
            &format!("incoming/data/{device}"),
            "-l",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub")
}

/// Asserts that mosquitto reported `why` (lower case) for a refusal.
pub fn refused_with(o: &std::process::Output, why: &str) {
    assert!(text(o).to_lowercase().contains(why), "{}", text(o));
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A device made of mosquitto clients: answers `get` of Setpoint with the last value set,
/// and acknowledges `set`.
fn responder(node: &Node, name: &str, secret: &str) -> Responder {
    responder_with(
        name,
        &format!("-h 127.0.0.1 -p {} -u {name} -P {secret}", node.ports.mqtt),
    )
}

/// The same, connecting with the mosquitto arguments `connection` (address and login);
/// returns once the broker acknowledged its subscription to the device's commands.
pub fn responder_with(name: &str, connection: &str) -> Responder {
    // With -d, mosquitto_sub also prints each packet (`Client <id> received SUBACK`, ...)
    // and the granted QoS (`Subscribed (mid: 1): 1`): the SUBACK is the signal it listens,
    // said on the script's output.
    let script = format!(
        r#"
value=12.5
stdbuf -oL mosquitto_sub {connection} -V mqttv5 -q 1 -d -i {name}-cmd -t 'command/{name}/#' -v |
while read -r topic payload; do
  case "$topic" in
    Client) case "$payload" in *"received SUBACK"*) echo ready;; esac; continue;;
    Subscribed) continue;;
  esac
  id=${{topic##*/}}
  rest=${{topic%/*}}; method=${{rest##*/}}; rest=${{rest%/*}}; resource=${{rest##*/}}
  if [ "$method" = set ]; then
    value=$(printf '%s' "$payload" | sed -E 's/.*:[[:space:]]*"?([^"}}]*)"?[[:space:]]*}}.*/\1/')
    reply='{{}}'
  elif [ "$resource" = Setpoint ]; then
    reply="{{\"Setpoint\": $value}}"
  else
    reply='{{"error": "no such sensor"}}'
  fi
  mosquitto_pub {connection} -V mqttv5 -q 1 -i {name}-reply -t "command/response/$id" -m "$reply"
done
"#
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("bash");
    let said = lines_of(&mut child);
    let responder = Responder(child);
    assert_eq!(
        said.recv_timeout(WAIT).ok().as_deref(),
        Some("ready"),
        "the device {name} did not subscribe to its commands"
    );
    responder
}

/// The responder's process group, killed when dropped (also when a test fails).
pub struct Responder(std::process::Child);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.0.id()))
            .status();
        let _ = self.0.wait();
    }
}

/// A node with device-mqtt and three presses (press-3 on a custom topic), each with its
/// secret, served by device-mqtt.
struct Presses {
    node: Node,
    /// press-1's secret, generated by the CLI.
    s1: String,
}

const S2: &str = "press-2-secret-000";
const S3: &str = "press-3-secret-000";

impl Presses {
    async fn start() -> Self {
        let node = Node::start(MQTT).await;
        let md = node.metadata();
        node.add_profiles(&profile()).await;
        node.wait_device_service("device-mqtt").await;
        let custom = json!({"TelemetryTopic": "plant/line1/press3", "Resource": "Pressure"});
        let (s, v) = node
            .post(
                &format!("{md}/api/v3/device"),
                &json!([
                    device("press-1", json!({})),
                    device("press-2", json!({})),
                    device("press-3", custom)
                ]),
            )
            .await;
        assert!(
            s == 207
                && v.as_array()
                    .expect("answers")
                    .iter()
                    .all(|r| r["statusCode"] == 201),
            "{v}"
        );
        // Secrets: one generated by the CLI (printed once), the others chosen.
        let out = node.cli_ok(&["device", "secret", "press-1"]);
        let s1 = out.trim().to_string();
        assert_eq!(s1.len(), 32, "{out}");
        node.cli_ok(&["device", "secret", "press-2", "--secret", S2]);
        node.cli_ok(&["device", "secret", "press-3", "--secret", S3]);
        for d in ["press-1", "press-2", "press-3"] {
            node.wait_mqtt_device(d).await;
        }
        Self { node, s1 }
    }

    /// A counter of device-mqtt's refused device messages with `reason`, once it exists.
    async fn rejected(&self, reason: &str) -> f64 {
        let dm = self.node.url(self.node.ports.device_mqtt);
        self.node
            .metric_if_any(
                &dm,
                &format!(
                    "outpost_device_mqtt_device_messages_rejected_total{{reason=\"{reason}\"}}"
                ),
            )
            .await
            .unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_in_json_cbor_and_bare_values_becomes_typed_readings() {
    let Presses { node, s1 } = Presses::start().await;
    let md = node.metadata();
    // A TelemetryTopic in another device's tree is refused by device-mqtt's validation.
    let (_, v) = node
        .post(
            &format!("{md}/api/v3/device"),
            &json!([device(
                "press-9",
                json!({"TelemetryTopic": "incoming/data/press-1"})
            )]),
        )
        .await;
    assert_eq!(v[0]["statusCode"], 400, "{v}");
    let (ok, _, err) = node.cli(&["device", "secret", "press-2", "--secret", "short"]);
    assert!(!ok && err.contains("16"), "{err}");

    // A JSON object with a timestamp, on EdgeX's topic: sent once.
    let ts = 1_795_341_600_000i64; // ms
    let msg = json!({"Pressure": 3.5, "Cycles": 42, "Running": true, "timestamp": ts}).to_string();
    let o = publish(
        &node,
        "press-1",
        &s1,
        "incoming/data/press-1/status",
        msg.as_bytes(),
    );
    assert!(o.status.success(), "{}", text(&o));
    wait_value(&node, "press-1", "Cycles", "42").await;
    let r = &node.readings("press-1", "Pressure").await[0];
    assert_eq!(r["value"], "3.5e+00");
    assert_eq!(r["valueType"], "Float32");
    assert_eq!(r["origin"], ts * 1_000_000);
    assert_eq!(
        node.readings("press-1", "Running").await[0]["value"],
        "true"
    );
    let (_, ev) = node
        .get(&format!("{}/api/v3/event/device/name/press-1", node.data()))
        .await;
    assert_eq!(ev["events"][0]["sourceName"], "status", "{ev}");

    // CBOR: {"Cycles": 43}; a bare value on a resource topic; a custom topic.
    let cbor = [&[0xa1u8, 0x66][..], b"Cycles", &[0x18, 43]].concat();
    assert!(
        publish(&node, "press-1", &s1, "incoming/data/press-1", &cbor)
            .status
            .success()
    );
    wait_value(&node, "press-1", "Cycles", "43").await;
    assert!(
        publish(
            &node,
            "press-1",
            &s1,
            "incoming/data/press-1/Pressure",
            b"4.25"
        )
        .status
        .success()
    );
    wait_value(&node, "press-1", "Pressure", "4.25e+00").await;
    let o = publish(&node, "press-3", S3, "plant/line1/press3", b"7.5");
    assert!(o.status.success(), "{}", text(&o));
    wait_value(&node, "press-3", "Pressure", "7.5e+00").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_device_gets_in_with_wrong_credentials_or_speaks_or_listens_for_another() {
    let Presses { node, s1 } = Presses::start().await;
    // Wrong credentials are refused at connect.
    for (user, secret) in [
        ("press-1", "wrong-secret-0000"),
        ("press-1", S2),
        ("ghost", S2),
    ] {
        let o = publish(
            &node,
            user,
            secret,
            "incoming/data/press-1",
            b"{\"Cycles\": 1}",
        );
        assert!(!o.status.success(), "{user} got in: {}", text(&o));
        refused_with(&o, "bad user name or password");
    }
    // No device can speak for another: not press-1 with its own credentials, not an
    // anonymous local client, not on another device's custom topic.
    let o = publish(
        &node,
        "press-1",
        &s1,
        "incoming/data/press-2/status",
        b"{\"Cycles\": 999}",
    );
    refused_with(&o, "not authorized");
    let o = publish(&node, "press-1", &s1, "plant/line1/press3", b"999");
    refused_with(&o, "not authorized");
    let anon = publish_as(
        &node,
        &[],
        "incoming/data/press-2/status",
        b"{\"Cycles\": 999}",
    );
    refused_with(&anon, "not authorized");
    // Nor may it listen to another device's commands.
    let sub = mosquitto_v5(&node, "mosquitto_sub")
        .args([
            "-u",
            "press-1",
            "-P",
            &s1,
            "-t",
            "command/press-2/#",
            "-W",
            "3",
        ])
        .output()
        .expect("mosquitto_sub");
    refused_with(&sub, "denied");
    // Each device's own message after the forged ones arrives, and none of those did.
    publish_own(&node, "press-2", S2, b"{\"Cycles\": 5}");
    wait_value(&node, "press-2", "Cycles", "5").await;
    publish(&node, "press-3", S3, "plant/line1/press3", b"6.5");
    wait_value(&node, "press-3", "Pressure", "6.5e+00").await;
    let forged = node.readings("press-2", "Cycles").await;
    assert!(forged.iter().all(|r| r["value"] != "999"), "{forged:?}");
    let forged = node.readings("press-3", "Pressure").await;
    assert!(
        forged.iter().all(|r| r["value"] != "9.99e+02"),
        "{forged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_unknown_resources_and_wrong_types_are_counted_and_the_device_keeps_working() {
    let p = Presses::start().await;
    let (node, s1) = (&p.node, &p.s1);
    for payload in [
        &b"{not json"[..],
        b"{\"Nope\": 1}",
        b"{\"Cycles\": \"many\"}",
        b"{\"Cycles\": -1}",
    ] {
        assert!(
            publish(node, "press-1", s1, "incoming/data/press-1", payload)
                .status
                .success()
        );
    }
    publish_own(node, "press-1", s1, b"{\"Cycles\": 44}");
    wait_value(node, "press-1", "Cycles", "44").await;
    assert_eq!(p.rejected("bad_payload").await, 1.0);
    assert_eq!(p.rejected("unknown_resource").await, 1.0);
    assert_eq!(p.rejected("bad_value").await, 2.0);
    let cycles = node.readings("press-1", "Cycles").await;
    assert!(
        cycles
            .iter()
            .all(|r| r["value"] != "-1" && r["value"] != "many"),
        "{cycles:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_checked_then_answered_by_the_device() {
    let Presses { node, .. } = Presses::start().await;
    // A command through core-command, answered by a device made of mosquitto clients.
    let dev = responder(&node, "press-2", S2);
    let url = node.device_command("press-2", "Setpoint");
    let (s, v) = node.get(&url).await;
    assert_eq!(
        (s, &v["event"]["readings"][0]["value"]),
        (200, &json!("1.25e+01")),
        "{v}"
    );
    let (s, v) = node.put(&url, &json!({"Setpoint": "55.5"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = node.get(&url).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "5.55e+01");
    // Out of range: refused before it reaches the device.
    let (s, v) = node.put(&url, &json!({"Setpoint": "500"})).await;
    assert_eq!(s, 400, "{v}");
    let (_, v) = node.get(&url).await;
    assert_eq!(v["event"]["readings"][0]["value"], "5.55e+01", "{v}");
    // A device-side error is reported as such.
    let (s, v) = node.get(&node.device_command("press-2", "Pressure")).await;
    assert!(s >= 500, "{s} {v}");
    assert!(message_has(&v, "no such sensor"), "{v}");
    // A device that does not answer times out.
    let (s, _) = node.get(&node.device_command("press-1", "Setpoint")).await;
    assert!(s >= 500, "{s}");
    drop(dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_throttled_while_the_others_are_served() {
    let p = Presses::start().await;
    let (node, s1) = (&p.node, &p.s1);
    // press-2 floods from a connection it holds, until told to stop.
    let mut flood = Spawned(held_publisher(node, "press-2", S2));
    let mut flood_in = flood.stdin.take().expect("stdin");
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let flooding = std::sync::Arc::clone(&flooding);
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed)
                && writeln!(flood_in, "{{\"Cycles\": {}}}", 10_000 + sent).is_ok()
            {
                sent += 1;
            }
            sent
        })
    };
    eventually("the flood throttled", WAIT, || async {
        p.rejected("throttled").await >= 1.0
    })
    .await;
    // While it floods, press-1 is served.
    let o = publish_own(node, "press-1", s1, b"{\"Cycles\": 45}");
    assert!(o.status.success(), "{}", text(&o));
    wait_value(node, "press-1", "Cycles", "45").await;
    assert!(
        !writer.is_finished(),
        "the flood ended before press-1 was served"
    );
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().expect("flood writer");
    drop(flood);
    let stored = node.readings("press-2", "Cycles").await.len() as u64;
    eprintln!("{stored} of {sent} flood messages stored");
    assert!(
        stored < sent,
        "{stored} of {sent} flood messages were stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_ends_the_old_connection_and_a_removed_one_its_subscriptions() {
    let Presses { node, s1 } = Presses::start().await;
    // A rotated secret ends what an open connection made with the old one may do.
    let mut held = Spawned(held_publisher(&node, "press-1", &s1));
    let mut held_in = held.stdin.take().expect("stdin");
    writeln!(held_in, "{{\"Cycles\": 46}}").expect("write");
    wait_value(&node, "press-1", "Cycles", "46").await;
    let rotated = "press-1-rotated-000";
    node.cli_ok(&["device", "secret", "press-1", "--secret", rotated]);
    // The device reconnects with its new secret, and the old connection, still open, is
    // refused from then on (also past the broker's cache time, 1 s here).
    publish_own(&node, "press-1", rotated, b"{\"Cycles\": 47}");
    wait_value(&node, "press-1", "Cycles", "47").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writeln!(held_in, "{{\"Cycles\": 777}}").expect("write");
    drop(held_in);
    let _ = held.wait();
    assert!(publish_own(&node, "press-1", &s1, b"{}").status.code() != Some(0));
    publish_own(&node, "press-1", rotated, b"{\"Cycles\": 48}");
    wait_value(&node, "press-1", "Cycles", "48").await;
    let cycles = node.readings("press-1", "Cycles").await;
    assert!(
        cycles.iter().all(|r| r["value"] != "777"),
        "the old secret still worked: {cycles:?}"
    );

    // A removed secret locks the device out (after the broker's cache time), and a
    // subscription it made gets nothing more: commands for it no longer reach it. An
    // observer with the node's bus token sees every command sent to it.
    let port = node.ports.mqtt.to_string();
    let press3 = MosquittoSub::with(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-u",
            "press-3",
            "-P",
            S3,
            "-i",
            "press-3-cmd",
        ],
        "command/press-3/#",
    );
    let observer = MosquittoSub::start(node.ports.mqtt, "command/press-3/#");
    // Commands as the node sends them: with the bus token.
    let token =
        std::fs::read_to_string(node.data_dir().join("secrets/bus.token")).expect("bus token");
    let command = |id: &str| {
        let o = publish_as(
            &node,
            &["-u", "outpost", "-P", token.trim()],
            &format!("command/press-3/Setpoint/get/{id}"),
            b"{}",
        );
        assert!(o.status.success(), "{}", text(&o));
    };
    let got = |sub: &MosquittoSub| sub.next_line(WAIT).map(|(topic, _)| topic);
    command("before");
    assert_eq!(
        got(&press3).as_deref(),
        Some("command/press-3/Setpoint/get/before")
    );
    assert_eq!(
        got(&observer).as_deref(),
        Some("command/press-3/Setpoint/get/before")
    );
    node.cli_ok(&["device", "secret", "press-3", "--remove"]);
    eventually("press-3 locked out", WAIT, || async {
        !publish(&node, "press-3", S3, "plant/line1/press3", b"1")
            .status
            .success()
    })
    .await;
    // Two commands the observer sees, in order: by the second, the broker has long
    // decided about the first for press-3's subscription too.
    command("after");
    command("later");
    assert_eq!(
        got(&observer).as_deref(),
        Some("command/press-3/Setpoint/get/after")
    );
    assert_eq!(
        got(&observer).as_deref(),
        Some("command/press-3/Setpoint/get/later")
    );
    let leaked = press3.next_line(Duration::ZERO);
    assert!(
        leaked.is_none(),
        "a command reached the device after its secret was removed: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_is_its_devices_own_also_across_a_broker_crash() {
    let Presses { node, s1 } = Presses::start().await;
    // Another device, even with its own valid credentials, or an anonymous client asking
    // for a device's client ID is refused, and the device's connection goes on (the
    // broker would otherwise end it and hand its session over).
    let mut held2 = Spawned(held_publisher(&node, "press-2", S2));
    let mut held2_in = held2.stdin.take().expect("stdin");
    writeln!(held2_in, "{{\"Cycles\": 60}}").expect("write");
    wait_value(&node, "press-2", "Cycles", "60").await;
    for login in [
        &["-u", "press-1", "-P", &s1, "-i", "press-2-held"][..],
        &["-i", "press-2-held"][..],
    ] {
        let o = publish_as(&node, login, "incoming/data/press-1", b"{\"Cycles\": 61}");
        assert!(!o.status.success(), "{login:?} took the client ID");
        // An anonymous client is refused before its client ID is looked at, with mutual
        // TLS between services (the default) taking no anonymous clients on loopback.
        let why = text(&o).to_lowercase();
        assert!(
            why.contains("client identifier not valid")
                || (login.len() == 2 && why.contains("not authorized")),
            "{login:?}: {why}"
        );
    }
    writeln!(held2_in, "{{\"Cycles\": 62}}").expect("write");
    wait_value(&node, "press-2", "Cycles", "62").await;
    drop(held2_in);
    let _ = held2.wait();

    // Client IDs stay their devices' across a crash of the broker: before press-2 is back,
    // press-1 (valid credentials of its own) still cannot take press-2's ID.
    let broker = node.pid("mqtt-broker");
    signal(broker, "KILL");
    let me = &node;
    eventually("the broker to come back", WAIT, || async {
        me.pid("mqtt-broker") != broker
            && publish(me, "press-1", &s1, "incoming/data/press-1", b"{}")
                .status
                .success()
    })
    .await;
    let o = publish_as(
        &node,
        &["-u", "press-1", "-P", &s1, "-i", "press-2-held"],
        "incoming/data/press-1",
        b"{\"Cycles\": 90}",
    );
    refused_with(&o, "client identifier not valid");
    let o = publish_as(
        &node,
        &["-u", "press-2", "-P", S2, "-i", "press-2-held"],
        "incoming/data/press-2",
        b"{\"Cycles\": 91}",
    );
    assert!(o.status.success(), "{}", text(&o));
    wait_value(&node, "press-2", "Cycles", "91").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_secret_is_throttled_per_address_and_the_throttle_refills() {
    let Presses { node, s1 } = Presses::start().await;
    // After three failures from this address the right secret is refused unchecked too,
    // another device's still gets in, and after the refill time (2 s here) the device
    // does again.
    for i in 0..3 {
        let o = publish(
            &node,
            "press-2",
            &format!("guess-{i}-000000000"),
            "incoming/data/press-2",
            b"{}",
        );
        refused_with(&o, "bad user name or password");
    }
    let o = publish_own(&node, "press-2", S2, b"{\"Cycles\": 63}");
    refused_with(&o, "connection rate exceeded");
    let o = publish_own(&node, "press-1", &s1, b"{\"Cycles\": 49}");
    assert!(o.status.success(), "{}", text(&o));
    wait_value(&node, "press-1", "Cycles", "49").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let o = publish_own(&node, "press-2", S2, b"{\"Cycles\": 64}");
    assert!(o.status.success(), "{}", text(&o));
    wait_value(&node, "press-2", "Cycles", "64").await;
}
