//! The web console in a real browser: `web/e2e/console.mjs` and the flows of each page in
//! `web/e2e/pages/` (playwright-core driving Debian's chromium) against a node started here
//! with device-virtual, ota, rules and export, at phone and desktop size, with an axe-core
//! scan of every page and screenshots in `target/console-screenshots/`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A device-virtual device of the example integer profile, read by `auto_events`.
async fn virtual_device(node: &Node, name: &str, auto_events: serde_json::Value) {
    let profile = format!(
        "{}/api/v3/deviceprofile/name/Random-Integer-Device",
        node.metadata()
    );
    eventually(
        "device-virtual's example profiles",
        Duration::from_secs(30),
        || async { node.get(&profile).await.0 == 200 },
    )
    .await;
    let (code, v) = node
        .post(
            &format!("{}/api/v3/device", node.metadata()),
            &json!([{"apiVersion": "v3", "device": {
                "name": name, "profileName": "Random-Integer-Device",
                "serviceName": "device-virtual", "adminState": "UNLOCKED",
                "operatingState": "UP", "protocols": {"other": {}},
                "autoEvents": auto_events}}]),
        )
        .await;
    assert_eq!(code, 207, "{v}");
    assert_eq!(v[0]["statusCode"], 201, "{v}");
}

/// The node's configuration for the browser test: device-virtual; ota trusting `key`;
/// rules with a pipeline on the fast device; export to a webhook that is down, so its queue
/// has depth and age to show; the gateway's cache of device lists short, so that a paused
/// core-metadata is seen soon. `OUTPOST_CONSOLE_DIST` (a `web/dist` built since the binary)
/// is served instead of the console inside the binary, to try pages without a rebuild.
fn config(key: &str) -> String {
    let mut c = format!(
        r#"[device_virtual]
enabled = true

[ota]
enabled = true
trusted_keys = ["{key}"]

[rules]
enabled = true
[[rules.pipelines]]
name = "console-int8"
devices = ["console-*"]
resources = ["Int8"]
steps = [{{ type = "tumbling", size_ms = 5000, functions = ["min", "max", "count"] }}]
alerts = [{{ above = 200.0, severity = "warning", message = "Int8 out of its range" }}]

[export]
enabled = true
[[export.destinations]]
name = "historian"
kind = "webhook"
url = "http://127.0.0.1:1/historian"
sources = ["edgex/events/#"]
"#
    );
    // Device lists are fresh for 2 s, and core-metadata gets 2 s to give one: when it does
    // not (the browser test pauses it), the gateway serves the last list, marked stale.
    c.push_str(
        "\n[gateway]\ncache_ttl_s = 2\nroute_timeouts = [{ prefix = \"/core-metadata/api/v3/device/all\", timeout_ms = 2000 }]\n",
    );
    if let Some(dist) = std::env::var_os("OUTPOST_CONSOLE_DIST") {
        c.push_str(&format!("static_dir = {:?}\n", std::path::Path::new(&dist)));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_the_console_in_a_browser_at_phone_and_desktop_size() {
    // A signing key, and a firmware file signed for an upload from the browser.
    let keys = tempdir();
    let ok = Command::new(BIN)
        .args(["ota", "keygen", "--out"])
        .arg(keys.path())
        .output()
        .expect("outpost ota keygen");
    assert!(ok.status.success(), "{ok:?}");
    let public = std::fs::read_to_string(keys.path().join("ota-signing.pub")).expect("key");
    let firmware = keys.path().join("pump-fw-2.1.bin");
    std::fs::write(&firmware, vec![0x5a_u8; 64 * 1024]).expect("firmware");
    let signed = Command::new(BIN)
        .args(["ota", "sign"])
        .arg(&firmware)
        .args(["--name", "pump-fw", "--version", "2.1", "--compatible"])
        .args(["Random-Integer-Device", "--key"])
        .arg(keys.path().join("ota-signing.key"))
        .output()
        .expect("outpost ota sign");
    assert!(signed.status.success(), "{signed:?}");

    let node = Node::start(&config(public.trim())).await;
    // Int8 read every second, so a chart moves quickly; and a device whose settings the
    // browser changes.
    let every_second = json!([{"interval": "1s", "onChange": false, "sourceName": "Int8"}]);
    virtual_device(&node, "console-1", every_second).await;
    virtual_device(&node, "console-spare", json!([])).await;
    let (ok, _, err) = node.cli_with(
        &["user", "add", "vic", "--role", "viewer", "--password-stdin"],
        &[],
        Some("viewer password 1\n"),
    );
    assert!(ok, "{err}");
    let admin = std::fs::read_to_string(node.data_dir().join("secrets/admin-password"))
        .expect("admin password");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("target/console-screenshots");
    // Only this run's screenshots count below.
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("node")
        .arg(root.join("web/e2e/console.mjs"))
        .current_dir(root.join("web"))
        .env("OUTPOST_URL", node.url(node.ports.gateway))
        .env("OUTPOST_ADMIN", admin.trim())
        .env("OUTPOST_VIEWER", "vic:viewer password 1")
        .env("OUTPOST_DEVICE", "console-1")
        .env("OUTPOST_SPARE", "console-spare")
        .env("OUTPOST_SHOTS", &shots)
        .env("OUTPOST_FIRMWARE", &firmware)
        .env(
            "OUTPOST_METADATA_PID",
            node.pid("core-metadata").to_string(),
        )
        .output()
        .expect("node (Node.js) runs the browser test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    if !out.status.success() {
        // What the node said while the browser ran: a failed request is explained there.
        let log = node.log();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("exited"))
            .collect();
        panic!(
            "{stdout}\n{stderr}\nthe node's warnings and errors:\n{}",
            said[said.len().saturating_sub(80)..].join("\n")
        );
    }
    if std::env::var_os("OUTPOST_ONLY").is_some() {
        return;
    }
    for size in ["phone", "desktop"] {
        for page in [
            "overview",
            "overview-summary",
            "device",
            "viewer",
            "settings",
            "profile-errors",
            "data",
            "firmware-rollout-paused",
            "access",
        ] {
            let shot = shots.join(format!("{size}-{page}.png"));
            assert!(
                std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
                "{} saved",
                shot.display()
            );
        }
    }
}
