//! Encryption at rest: after ingesting known values, no file under the data dir contains
//! them (nor the device's name) in plaintext.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn no_plaintext_under_the_data_dir() {
    let mut node = Node::start("").await;
    let device = "canary-device-8c1f";
    provision(&node, &[device]);
    let value = "73519.0625";
    let text = "canary-reading-text-5e2a";
    let lines: Vec<String> = (0..50)
        .map(|i| {
            event_message(
                device,
                now_nanos() + i,
                &[
                    ("Temperature", "Float64", "100.125"),
                    ("Label", "String", text),
                ],
            )
            .1
        })
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic(device), &lines, &[]);
    assert!(out.status.success());
    // And one over REST with a value that is only ever sent once.
    let (_, m) = event_message(
        device,
        now_nanos(),
        &[
            ("Temperature", "Float64", "99.9375"),
            ("Label", "String", value),
        ],
    );
    let body: serde_json::Value = serde_json::from_str(&m).expect("json");
    let (s, _) = node
        .post(
            &format!(
                "{}/api/v3/event/device-mqtt/Thermostat/{device}/Temperature",
                node.data()
            ),
            &body["payload"],
        )
        .await;
    assert_eq!(s, 201);
    let data = node.data();
    eventually("51 events", Duration::from_secs(20), || async {
        node.get(&format!("{data}/api/v3/event/count")).await.1["count"] == 51
    })
    .await;
    // Check while running (WAL files present) and after a clean stop.
    let check = |node: &Node, when: &str| {
        let files = node.data_files();
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().ends_with("core-data.db")),
            "{files:?}"
        );
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_default();
            for needle in [value, text, "100.125", device] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{when}: {} contains '{needle}' in plaintext",
                    f.display()
                );
            }
        }
    };
    check(&node, "running");
    node.stop();
    check(&node, "stopped");
    // Secrets are private to the node's user: files 0600, directories (the services' keys)
    // 0700, all the way down.
    use std::os::unix::fs::PermissionsExt as _;
    let mut dirs = vec![node.data_dir().join("secrets")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for f in std::fs::read_dir(&dir).expect("secrets dir").flatten() {
            let meta = f.metadata().expect("meta");
            let mode = meta.permissions().mode() & 0o777;
            let want = if meta.is_dir() {
                dirs.push(f.path());
                0o700
            } else {
                files += 1;
                0o600
            };
            assert_eq!(mode, want, "{} has mode {mode:o}", f.path().display());
        }
    }
    assert!(
        files >= 3,
        "the node keeps its secrets there ({files} files)"
    );
}
