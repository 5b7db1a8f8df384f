//! device-coap with real CoAP clients as the devices: libcoap's `coap-client` (Debian's
//! libcoap3-bin) and aiocoap (PyPI, tests/peers/coap_client.py). The README's commands
//! connect a device; readings in text, JSON, CBOR and in blocks are stored by core-data;
//! what is refused stores nothing; and a confirmable reading is acknowledged only once the
//! bus has it, and stored once however often the device sent it meanwhile.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const SECRET: &str = "soil1-secret-0001";
const WAIT: Duration = Duration::from_secs(20);

/// A node running device-coap, with the README's soil sensor `soil1` connected as the
/// README connects it (its profile, the device, its secret).
async fn soil_node() -> Node {
    let node = Node::start("[device_coap]\nenabled = true\n").await;
    node.wait_device_service("device-coap").await;
    node.cli_ok(&[
        "profile",
        "apply",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/coap-soil.yaml"),
    ]);
    node.cli_ok(&[
        "device",
        "add",
        "soil1",
        "--profile",
        "Coap-Soil-Sensor",
        "--service",
        "device-coap",
    ]);
    node.cli_ok(&["device", "secret", "soil1", "--secret", SECRET]);
    node.wait_log(&["device-coap", "device added", "device=soil1"])
        .await;
    node
}

fn url(node: &Node, path: &str, secret: &str) -> String {
    format!(
        "coap://127.0.0.1:{}/{path}?secret={secret}",
        node.ports.coap_udp
    )
}

/// libcoap's client, without TLS: what it printed (answers that are errors show their
/// code, e.g. `4.01`).
fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(["-B", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("coap-client-notls must be installed (Debian package libcoap3-bin)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// aiocoap as the device: `<code> <seconds> <payload>`.
fn aiocoap(args: &[&str]) -> Command {
    let mut c = Command::new(outpost_testkit::peer("aiocoap/bin/python"));
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/peers/coap_client.py"
    ))
    .args(args)
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    c
}

fn aiocoap_answer(args: &[&str]) -> String {
    let out = aiocoap(args).output().expect("aiocoap runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The stored readings of `resource` whose value `pred` accepts.
async fn stored(node: &Node, resource: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    node.readings("soil1", resource)
        .await
        .into_iter()
        .filter(|r| pred(&r["value"]))
        .collect()
}

fn number(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

async fn wait_stored(node: &Node, resource: &str, what: &str, pred: impl Fn(&Value) -> bool) {
    eventually(what, WAIT, || async {
        !stored(node, resource, &pred).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_client_and_aiocoap_post_readings_that_core_data_stores() {
    let mut node = soil_node().await;

    // libcoap: one value as text, several as JSON, and JSON in 32-byte blocks.
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "0",
        "-e",
        "21.5",
        &url(&node, "soil1/Temperature", SECRET),
    ]);
    assert!(!out.contains("4.") && !out.contains("5."), "{out}");
    wait_stored(&node, "Temperature", "Temperature 21.5", |v| {
        (number(v) - 21.5).abs() < 1e-6
    })
    .await;
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"Temperature": 22.5, "Moisture": 33}"#,
        &url(&node, "soil1", SECRET),
    ]);
    assert!(!out.contains("4.") && !out.contains("5."), "{out}");
    wait_stored(&node, "Moisture", "Moisture 33", |v| v == "33").await;
    let label = "north field, row 7, ".repeat(10);
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-b",
        "32",
        "-e",
        &serde_json::json!({ "Label": label }).to_string(),
        &url(&node, "soil1", SECRET),
    ]);
    assert!(!out.contains("4.") && !out.contains("5."), "{out}");
    wait_stored(&node, "Label", "the label sent in blocks", |v| {
        v.as_str() == Some(label.as_str())
    })
    .await;

    // aiocoap: CBOR, confirmable, and a non-confirmable text value.
    let answer = aiocoap_answer(&[
        &url(&node, "soil1", SECRET),
        "--cbor",
        r#"{"Moisture": 41, "Battery": 3.25}"#,
    ]);
    assert!(answer.starts_with("2.04 "), "{answer}");
    wait_stored(&node, "Battery", "Battery 3.25", |v| {
        (number(v) - 3.25).abs() < 1e-6
    })
    .await;
    let answer = aiocoap_answer(&[
        &url(&node, "soil1/Moisture", SECRET),
        "--text",
        "44",
        "--non",
    ]);
    assert!(answer.starts_with("2.04 "), "{answer}");
    wait_stored(&node, "Moisture", "Moisture 44", |v| v == "44").await;

    // Refused, and nothing of it stored: a wrong secret, an unknown resource, a value out
    // of range, a method readings do not come by.
    let refused = [
        (
            coap_client(&[
                "-m",
                "post",
                "-e",
                "77",
                &url(&node, "soil1/Moisture", "wrong-secret"),
            ]),
            "4.01",
        ),
        (
            coap_client(&[
                "-m",
                "post",
                "-e",
                "77",
                &url(&node, "soil1/Pressure", SECRET),
            ]),
            "4.04",
        ),
        (
            coap_client(&[
                "-m",
                "post",
                "-e",
                "177",
                &url(&node, "soil1/Moisture", SECRET),
            ]),
            "4.00",
        ),
        (
            coap_client(&["-m", "delete", &url(&node, "soil1/Moisture", SECRET)]),
            "4.05",
        ),
    ];
    for (out, code) in refused {
        assert!(out.contains(code), "expected {code}: {out}");
    }
    let answer = aiocoap_answer(&[&url(&node, "soil1", SECRET), "--cbor", "21.5"]);
    assert!(answer.starts_with("4.00 "), "{answer}");
    assert!(
        stored(&node, "Moisture", |v| v == "77" || v == "177")
            .await
            .is_empty()
    );
    let coap = node.url(node.ports.coap);
    assert!(
        node.metric(&coap, "outpost_device_coap_requests_total{code=\"4.01\"}")
            .await
            >= 1.0
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmable_reading_is_acknowledged_only_once_the_bus_has_it_and_stored_once() {
    let mut node = soil_node().await;
    let answer = aiocoap_answer(&[&url(&node, "soil1/Moisture", SECRET), "--text", "10"]);
    assert!(answer.starts_with("2.04 "), "{answer}");

    // The broker stops taking anything: the device hears nothing, and sends its message
    // again (aiocoap retransmits with the same Message ID) while it waits.
    let paused = Paused::new(node.pid("mqtt-broker"));
    let started = Instant::now();
    let mut device = aiocoap(&[&url(&node, "soil1/Moisture", SECRET), "--text", "11"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("aiocoap runs");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        device.try_wait().expect("wait").is_none(),
        "the device was answered while the bus took nothing"
    );
    let coap = node.url(node.ports.coap);
    let copies = node
        .metric(
            &coap,
            "outpost_device_coap_datagrams_dropped_total{reason=\"duplicate\"}",
        )
        .await;
    assert!(copies >= 1.0, "aiocoap retransmitted within 5 s: {copies}");
    // The bus back: the ACK comes, and the reading is stored once.
    drop(paused);
    let out = device.wait_with_output().expect("aiocoap ends");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(answer.starts_with("2.04 "), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(5));
    wait_stored(&node, "Moisture", "Moisture 11", |v| v == "11").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored(&node, "Moisture", |v| v == "11").await.len(), 1);
    node.stop();
}
