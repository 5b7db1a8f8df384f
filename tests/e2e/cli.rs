//! The command line: configuration handling and following the bus.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn config_default_is_valid_and_bad_config_reports_every_problem() {
    let out = Command::new(BIN)
        .args(["config", "default"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .args(["config", "check"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[core_data]\nport = 59881\n[core_data.retention]\nmin_cap = 10\nmax_cap = 5\n[log]\nlevel = \"[[[\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in ["port 59881", "min_cap", "level"] {
        assert!(err.contains(expected), "'{expected}' missing from: {err}");
    }
    // Unknown keys are refused, with their name.
    std::fs::write(&bad, "[core_data]\nprot = 1\n").expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prot"));
    // The environment overrides the file, and is validated too.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .env("OUTPOST_CORE_DATA__PORT", "0")
        .args(["config", "check"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn events_tail_follows_the_bus() {
    let node = Node::start("").await;
    provision(&node, &["t1"]);
    let mut tail = Command::new(BIN)
        .arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["events", "tail", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("events tail");
    let stdout = tail.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Publish until the subscriber (which connects asynchronously) has seen one.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let (_, msg) = event_message("t1", now_nanos(), &[("Temperature", "Float64", "23.75")]);
        assert!(
            mosquitto_pub(node.ports.mqtt, &event_topic("t1"), &msg, &[])
                .status
                .success()
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events tail printed nothing"
        );
    };
    let _ = tail.kill();
    let _ = tail.wait();
    let ev: serde_json::Value = serde_json::from_str(&line).expect("a JSON event per line");
    assert_eq!(ev["deviceName"], "t1");
    assert_eq!(ev["readings"][0]["value"], "23.75");
}
