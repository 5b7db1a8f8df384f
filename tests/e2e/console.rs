//! The web console in a real browser: `web/e2e/console.mjs` (playwright-core driving
//! Debian's chromium) against a node started here with device-virtual, at phone and desktop
//! size, screenshots in `target/console-screenshots/`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A device-virtual device whose Int8 is read every second, so a chart moves quickly.
async fn fast_device(node: &Node, name: &str) {
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
                "autoEvents": [{"interval": "1s", "onChange": false, "sourceName": "Int8"}]}}]),
        )
        .await;
    assert_eq!(code, 207, "{v}");
    assert_eq!(v[0]["statusCode"], 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_charts_live_readings_writes_commands_and_keeps_viewers_read_only() {
    let node = Node::start("[device_virtual]\nenabled = true\n").await;
    fast_device(&node, "console-1").await;
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
    let out = Command::new("node")
        .arg(root.join("web/e2e/console.mjs"))
        .current_dir(root.join("web"))
        .env("OUTPOST_URL", node.url(node.ports.gateway))
        .env("OUTPOST_ADMIN", admin.trim())
        .env("OUTPOST_VIEWER", "vic:viewer password 1")
        .env("OUTPOST_DEVICE", "console-1")
        .env("OUTPOST_SHOTS", &shots)
        .output()
        .expect("node (Node.js) runs the browser test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for size in ["phone", "desktop"] {
        for page in ["overview", "device", "viewer"] {
            let shot = shots.join(format!("{size}-{page}.png"));
            assert!(
                std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
                "{} saved",
                shot.display()
            );
        }
    }
}
