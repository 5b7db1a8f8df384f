//! The bus over TLS (`broker.tls_listen`) with mutual TLS between services on: the node's
//! services reach the broker over TLS with their certificates; devices connect with the
//! certificate they got at enrollment (real mosquitto clients), which makes them exactly
//! that device; loopback is no longer a way onto the bus without credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::mqtt_devices::{device, profile, refused_with, responder_with, text};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A device's enrollment bundle (`outpost device enroll --cert --out DIR`).
struct Bundle(PathBuf);

impl Bundle {
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    /// mosquitto arguments: the broker's TLS port, trusting the node CA, presenting this
    /// bundle's certificate.
    fn tls_args(&self, node: &Node) -> Vec<String> {
        let mut a = tls_to(node, &self.file("ca.pem"));
        a.extend([
            "--cert".into(),
            self.file("device.pem"),
            "--key".into(),
            self.file("device.key"),
        ]);
        a
    }
}

/// mosquitto arguments for the broker's TLS port, trusting `ca`.
fn tls_to(node: &Node, ca: &str) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &node.ports.mqtts.to_string(),
        "--cafile",
        ca,
    ]
    .map(String::from)
    .to_vec()
}

fn enroll(node: &Node, name: &str) -> Bundle {
    let dir = node.dir.path().join(format!("{name}-bundle"));
    let (ok, out, err) = node.cli(&[
        "device",
        "enroll",
        name,
        "--cert",
        "--out",
        dir.to_str().expect("path"),
    ]);
    assert!(ok, "{out}{err}");
    Bundle(dir)
}

/// mosquitto_pub (MQTT 5, QoS 1, so refusals are reported) with `args`, one message.
fn publish(args: &[String], client_id: &str, topic: &str, msg: &str) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(args)
        .args([
            "-V", "mqttv5", "-q", "1", "-i", client_id, "-t", topic, "-m", msg,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub must be installed (Debian package mosquitto-clients)")
}

/// The same, which the broker must acknowledge.
fn publish_ok(args: &[String], client_id: &str, topic: &str, msg: &str) {
    let o = publish(args, client_id, topic, msg);
    assert!(o.status.success(), "{}", text(&o));
}

/// A certificate and key for `name` from a CA that is not the node's.
fn foreign_identity(dir: &Path, name: &str) -> Vec<String> {
    let other = outpost_pki::Paths::new(dir);
    let id = outpost_pki::issue_client_cert(&other, name, 30).expect("certificate");
    let (cert, key) = (dir.join("foreign.pem"), dir.join("foreign.key"));
    std::fs::write(&cert, &id.cert_pem).expect("write");
    std::fs::write(&key, &id.key_pem).expect("write");
    vec![
        "--cert".into(),
        cert.to_string_lossy().into_owned(),
        "--key".into(),
        key.to_string_lossy().into_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_devices_are_their_certificates_and_services_theirs() {
    let node = Node::start(
        "[security]\ninternal_tls = true\n[device_mqtt]\nenabled = true\n\
         [broker]\ndevice_auth_cache_s = 1\n",
    )
    .await;
    node.add_profiles(&profile()).await;
    node.wait_device_service("device-mqtt").await;
    let (s, v) = node
        .post(
            &format!("{}/api/v3/device", node.metadata()),
            &json!([device("press-1", json!({})), device("press-2", json!({}))]),
        )
        .await;
    assert_eq!(s, 207, "{v}");
    let p1 = enroll(&node, "press-1");
    let p2 = enroll(&node, "press-2");
    let ca = node.data_dir().join("tls/ca.pem");
    let ca = ca.to_string_lossy();

    // A device with its certificate alone (no user name, no secret) publishes its
    // telemetry over TLS; device-mqtt and core-data, on the bus over TLS with their own
    // certificates, store it.
    let own = p1.tls_args(&node);
    node.wait_mqtt_device("press-1").await;
    publish_ok(
        &own,
        "press-1-pub",
        "incoming/data/press-1",
        r#"{"Pressure": 3.5}"#,
    );
    eventually("press-1's reading over TLS", WAIT, || async {
        !node.readings("press-1", "Pressure").await.is_empty()
    })
    .await;

    // It receives commands on its own topic: a GET through core-command is answered by a
    // device made of mosquitto clients connected with the certificate.
    let _dev = responder_with("press-1", &own.join(" "));
    let url = node.device_command("press-1", "Setpoint");
    let (s, v) = node.get(&url).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "1.25e+01", "{v}");

    // Another device's certificate cannot speak for press-1: not on press-1's topic, not
    // by naming press-1 as its user.
    let theirs = p2.tls_args(&node);
    let o = publish(
        &theirs,
        "press-2-pub",
        "incoming/data/press-1",
        r#"{"Pressure": 999}"#,
    );
    refused_with(&o, "not authorized");
    let o = publish(
        &[theirs.clone(), vec!["-u".into(), "press-1".into()]].concat(),
        "press-2-as-1",
        "incoming/data/press-1",
        r#"{"Pressure": 999}"#,
    );
    refused_with(&o, "bad user name or password");
    // Nor can it take the client ID press-1 connected with.
    let o = publish(
        &theirs,
        "press-1-pub",
        "incoming/data/press-2",
        r#"{"Pressure": 2.5}"#,
    );
    refused_with(&o, "client identifier not valid");

    // A certificate is public: given as a password (the base64 DER the broker checked a
    // moment ago for the same device), it is no secret.
    let der_b64 = crate::enroll::leaf_b64(
        &std::fs::read_to_string(p1.0.join("device.pem")).expect("certificate"),
    );
    // Checked just before (device_auth_cache_s = 1), so a credential cache that did not
    // tell certificates from secrets would still hold it.
    publish_ok(
        &own,
        "press-1-pub",
        "incoming/data/press-1",
        r#"{"Pressure": 3.5}"#,
    );
    let o = publish(
        &[
            tls_to(&node, &ca),
            vec!["-u".into(), "press-1".into(), "-P".into(), der_b64],
        ]
        .concat(),
        "press-1-by-cert-as-password",
        "incoming/data/press-1",
        r#"{"Pressure": 999}"#,
    );
    refused_with(&o, "bad user name or password");

    // Over TLS without a certificate: a device gives its secret inside TLS; with neither,
    // the client is refused, also from loopback.
    let anonymous_tls = tls_to(&node, &ca);
    let secret = std::fs::read_to_string(p2.0.join("device.secret")).expect("secret");
    publish_ok(
        &[
            anonymous_tls.clone(),
            ["-u", "press-2", "-P", secret.trim()]
                .map(String::from)
                .to_vec(),
        ]
        .concat(),
        "press-2-secret",
        "incoming/data/press-2",
        r#"{"Pressure": 2.5}"#,
    );
    let o = publish(&anonymous_tls, "tool", "edgex/x", "x");
    refused_with(&o, "not authorized");
    // Plain MQTT on loopback is for clients with credentials only now.
    let o = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &node.ports.mqtt.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", "edgex/x", "-m", "x"])
        .output()
        .expect("mosquitto_pub");
    refused_with(&o, "not authorized");

    // A certificate from another CA, named like the device, fails the handshake.
    let o = publish(
        &[
            tls_to(&node, &ca),
            foreign_identity(node.dir.path(), "press-1"),
        ]
        .concat(),
        "press-1-forged",
        "incoming/data/press-1",
        r#"{"Pressure": 999}"#,
    );
    assert!(!o.status.success(), "{}", text(&o));

    // The node's administrator certificate is the node on the bus: it may read everything.
    let admin = [
        tls_to(&node, &ca),
        vec![
            "--cert".into(),
            node.data_dir()
                .join("tls/clients/admin.pem")
                .to_string_lossy()
                .into_owned(),
            "--key".into(),
            node.data_dir()
                .join("secrets/clients/admin.key")
                .to_string_lossy()
                .into_owned(),
        ],
    ]
    .concat();
    publish_ok(&admin, "admin-tool", "edgex/admin-check", "x");
}

/// tcpdump on loopback for `ports`, writing `file`; stopped (and the file complete) when
/// dropped or [`Capture::finish`]ed.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    fn start(file: &Path, ports: &[u16]) -> Self {
        needs_root("capturing loopback traffic with tcpdump");
        let filter = ports
            .iter()
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        // -U: each packet written at once; -Z root: the file is in a root-only directory.
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-s", "0", "-Z", "root", "-w"])
            .arg(file)
            .arg(format!("tcp and ({filter})"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump must be installed (Debian package tcpdump)");
        // It says so on stderr once it listens.
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).expect("tcpdump's first line");
        assert!(line.contains("listening on lo"), "tcpdump: {line}");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self {
            child,
            file: file.to_path_buf(),
        }
    }

    /// Stops the capture; what it holds.
    fn finish(mut self) -> Vec<u8> {
        signal(self.child.id(), "INT");
        let _ = self.child.wait();
        std::fs::read(&self.file).expect("capture file")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_every_hop_nothing_crosses_loopback_in_clear() {
    let node = Node::create("[security]\ninternal_tls = true\n[device_mqtt]\nenabled = true\n");
    let p = node.ports;
    let ports = [
        p.keeper,
        p.metadata,
        p.data,
        p.broker_http,
        p.mqtt,
        p.mqtts,
        p.command,
        p.device_mqtt,
        p.gateway,
        p.gateway_http,
    ];
    // From before the node starts: the services' first registrations and connections to
    // the bus are in it too.
    let capture = Capture::start(&node.dir.path().join("lo.pcap"), &ports);
    let mut node = node;
    node.launch().await;
    node.add_profiles(&profile()).await;
    node.wait_device_service("device-mqtt").await;
    let (s, v) = node
        .post(
            &format!("{}/api/v3/device", node.metadata()),
            &json!([device("press-1", json!({}))]),
        )
        .await;
    assert_eq!(s, 207, "{v}");
    let bundle = enroll(&node, "press-1");
    let secret = std::fs::read_to_string(bundle.0.join("device.secret")).expect("secret");

    // Readings come in over TLS with the device's certificate and with its secret; a
    // user logs in at the gateway with the admin password; a command goes down and back.
    let value = "8642.125";
    let args = bundle.tls_args(&node);
    node.wait_mqtt_device("press-1").await;
    publish_ok(
        &args,
        "press-1-pub",
        "incoming/data/press-1",
        &format!(r#"{{"Pressure": {value}}}"#),
    );
    eventually("the marked reading stored", WAIT, || async {
        node.readings("press-1", "Pressure")
            .await
            .iter()
            .any(|r| r["value"] == "8.642125e+03")
    })
    .await;
    let ca = node.data_dir().join("tls/ca.pem");
    let by_secret = [
        tls_to(&node, &ca.to_string_lossy()),
        ["-u", "press-1", "-P", secret.trim()]
            .map(String::from)
            .to_vec(),
    ]
    .concat();
    publish_ok(
        &by_secret,
        "press-1-secret",
        "incoming/data/press-1",
        r#"{"Cycles": 97531}"#,
    );
    let password = std::fs::read_to_string(node.data_dir().join("secrets/admin-password"))
        .expect("admin password");
    let gateway = https_client(trusting(&ca));
    let r = gateway
        .post(format!("https://127.0.0.1:{}/api/v3/auth/login", p.gateway))
        .json(&json!({"username": "admin", "password": password.trim()}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    let login: serde_json::Value = r.json().await.expect("login JSON");
    let access = login["accessToken"].as_str().expect("a token").to_string();
    let _dev = responder_with("press-1", &args.join(" "));
    let url = node.device_command("press-1", "Setpoint");
    let (s, v) = node.get(&url).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["readings"][0]["value"], "1.25e+01", "{v}");
    eventually("the reading sent with the secret stored", WAIT, || async {
        node.readings("press-1", "Cycles")
            .await
            .iter()
            .any(|r| r["value"] == "97531")
    })
    .await;

    let pcap = capture.finish();
    let token =
        std::fs::read_to_string(node.data_dir().join("secrets/bus.token")).expect("bus token");
    // The capture saw the traffic (TLS records: content type 23, version 3.3) ...
    assert!(
        pcap.len() > 20_000 && pcap.windows(3).filter(|w| w == &[23, 3, 3]).count() > 50,
        "the capture holds the node's traffic ({} bytes)",
        pcap.len()
    );
    // ... and none of it in clear text.
    for (what, needle) in [
        ("a reading value", value),
        ("a reading value as stored", "8.642125e+03"),
        ("another reading value", "97531"),
        ("the device's secret", secret.trim()),
        ("the bus token", token.trim()),
        ("the admin password", password.trim()),
        ("an access token", &access),
        ("a device name", "press-1"),
    ] {
        assert!(
            !contains(&pcap, needle),
            "{what} crossed loopback in clear text"
        );
    }
}

/// A device with a manufacturer's certificate (zero-touch) over MQTT/TLS: its first
/// connection registers it, waiting for approval, and is refused; approved, it publishes
/// with its certificate alone and its readings are stored; a certificate of the same name
/// from another CA fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_touch_device_enrolls_itself_over_mqtt_tls_pending_approval() {
    let factory = crate::support::tempdir();
    let maker = outpost_pki::Paths::new(factory.path());
    outpost_pki::ensure_ca(&maker).expect("manufacturer CA");
    let id = outpost_pki::issue_client_cert(&maker, "zt-press", 30).expect("certificate");
    let (cert, key) = (factory.path().join("zt.pem"), factory.path().join("zt.key"));
    std::fs::write(&cert, &id.cert_pem).expect("write");
    std::fs::write(&key, &id.key_pem).expect("write");
    let node = Node::start(&format!(
        "[device_mqtt]\nenabled = true\n[broker]\ndevice_auth_cache_s = 1\n\
         [enrollment]\nmanufacturer_ca = [\"{}\"]\napproval = true\nprofile = \"Press\"\n\
         service = \"device-mqtt\"\nlabels = [\"zero-touch\"]\n",
        maker.ca_cert.display()
    ))
    .await;
    node.add_profiles(&profile()).await;
    node.wait_device_service("device-mqtt").await;
    let ca = node.data_dir().join("tls/ca.pem");
    let mut args = tls_to(&node, &ca.to_string_lossy());
    args.extend([
        "--cert".into(),
        cert.to_string_lossy().into_owned(),
        "--key".into(),
        key.to_string_lossy().into_owned(),
    ]);

    // First contact: registered, locked, waiting for approval; the connection is refused.
    let o = publish(
        &args,
        "zt-press",
        "incoming/data/zt-press",
        r#"{"Pressure": 1.5}"#,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let (ok, out, _) = node.cli(&["device", "credentials", "zt-press"]);
    assert!(
        ok && out.contains("pending") && out.contains("manufacturer"),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["device", "show", "zt-press", "--json"]);
    assert!(
        ok && out.contains("zero-touch") && out.contains("\"LOCKED\""),
        "{out}"
    );

    // Approved: its certificate alone gets it onto the bus as itself.
    node.cli_ok(&["device", "approve", "zt-press"]);
    // Once device-mqtt serves it unlocked, the broker takes its connection (past its 1 s
    // cache of the refusal); the first reading it acknowledges is stored.
    node.wait_log(&["device-mqtt", "taking device telemetry"])
        .await;
    node.wait_log(&["device-mqtt", "device updated", "device=zt-press"])
        .await;
    eventually("the broker to take zt-press", WAIT, || async {
        publish(
            &args,
            "zt-press",
            "incoming/data/zt-press",
            r#"{"Pressure": 2.5}"#,
        )
        .status
        .success()
    })
    .await;
    eventually("zt-press's reading over TLS", WAIT, || async {
        !node.readings("zt-press", "Pressure").await.is_empty()
    })
    .await;
    // Not as another device.
    let o = publish(
        &args,
        "zt-press",
        "incoming/data/press-9",
        r#"{"Pressure": 9}"#,
    );
    refused_with(&o, "not authorized");
    // The same name from a CA the node does not trust: no handshake.
    let stranger = crate::support::tempdir();
    let mut forged = tls_to(&node, &ca.to_string_lossy());
    forged.extend(foreign_identity(stranger.path(), "zt-press"));
    let o = publish(
        &forged,
        "zt-forged",
        "incoming/data/zt-press",
        r#"{"Pressure": 7}"#,
    );
    assert!(!o.status.success(), "{}", text(&o));
    let values: Vec<String> = node
        .readings("zt-press", "Pressure")
        .await
        .iter()
        .map(|r| r["value"].to_string())
        .collect();
    assert!(
        values.iter().all(|v| !v.contains('7') && !v.contains('9')),
        "{values:?}"
    );
}
