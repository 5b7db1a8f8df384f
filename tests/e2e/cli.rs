//! The command line: configuration handling and following the bus.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `outpost --config <config> config check`, with `env` set.
fn check(config: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .args(["config", "check"]);
    cmd
}

/// Runs `cmd`, which must fail as a bad configuration does (exit code 2); its stderr.
fn refused(mut cmd: Command) -> String {
    let out = cmd.output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn config_default_is_valid_and_bad_config_reports_every_problem() {
    let out = run_ok(Command::new(BIN).args(["config", "default"]), "run");
    let dir = crate::support::tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &out.stdout).expect("write");
    run_ok(&mut check(&good, &[]), "config check");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[core_data]\nport = 59881\n[core_data.retention]\nmin_cap = 10\nmax_cap = 5\n[log]\nlevel = \"[[[\"\n",
    )
    .expect("write");
    let err = refused(check(&bad, &[]));
    for expected in ["port 59881", "min_cap", "level"] {
        assert!(err.contains(expected), "'{expected}' missing from: {err}");
    }
    // Unknown keys are refused, with their name.
    std::fs::write(&bad, "[core_data]\nprot = 1\n").expect("write");
    assert!(refused(check(&bad, &[])).contains("prot"));
    // The environment overrides the file, and is validated too.
    refused(check(&good, &[("OUTPOST_CORE_DATA__PORT", "0")]));
}

#[tokio::test]
async fn events_tail_follows_the_bus() {
    let node = Node::start("").await;
    provision(&node, &["t1"]);
    let mut tail = Spawned(
        Command::new(BIN)
            .arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(["events", "tail", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("events tail"),
    );
    let rx = lines_of(&mut tail);
    // It says it follows once the broker acknowledged its subscription: one event then.
    let said = lines_from(tail.stderr.take().expect("stderr"));
    while !said
        .recv_timeout(Duration::from_secs(20))
        .expect("events tail says what it follows")
        .starts_with("following ")
    {}
    let (_, msg) = event_message("t1", now_nanos(), &[("Temperature", "Float64", "23.75")]);
    assert!(
        mosquitto_pub(node.ports.mqtt, &event_topic("t1"), &msg, &[])
            .status
            .success()
    );
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("events tail prints the event");
    let ev: serde_json::Value = serde_json::from_str(&line).expect("a JSON event per line");
    assert_eq!(ev["deviceName"], "t1");
    assert_eq!(ev["readings"][0]["value"], "23.75");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_busy_ports_refuses_to_start_and_a_closed_pipe_ends_the_cli_quietly() {
    let node = Node::start("").await;
    // The banner says where to go in and what to try first.
    let banner = node.log();
    assert!(
        banner.contains(&format!(
            "Way in: https://127.0.0.1:{} (trust {}",
            node.ports.gateway,
            node.data_dir().join("tls/ca.pem").display()
        )) && banner.contains(&format!(
            "Try: outpost --data-dir {} services",
            node.data_dir().display()
        )),
        "{banner}"
    );
    // A second node with the same ports (another data dir): one line per busy socket, a
    // failure exit, no banner, and nothing left running.
    let other = crate::support::tempdir();
    let mut second = Command::new(BIN);
    second
        .arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(other.path())
        .arg("up")
        .stdin(Stdio::null());
    let mut second = tokio::process::Command::from(second);
    // Killed if it does not give up in time (it would run on).
    second.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), second.output())
        .await
        .expect("the second node gives up at once")
        .expect("run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "core-data cannot listen on 127.0.0.1:{} (http)",
            node.ports.data
        )) && stderr.contains(&format!("127.0.0.1:{} (mqtt)", node.ports.mqtt)),
        "{stderr}"
    );
    assert!(!stdout.contains("up in"), "no success banner: {stdout}");
    assert!(
        !other.path().join("run/core-data.pid").exists(),
        "no service was started"
    );

    // A reader that goes away before the CLI writes (`outpost services --json | head`):
    // the CLI ends with success and says nothing.
    let mut cli = Command::new(BIN);
    cli.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["services", "--json"])
        .env("XDG_CONFIG_HOME", node.cli_home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cli.spawn().expect("run the CLI");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_cli_says_why_it_finds_no_node_and_how_to_point_it_at_one() {
    let dir = crate::support::tempdir();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, config_text(&Ports::free(), "")).expect("config");
    let cli = |data_dir: &Path| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("services")
            .env("XDG_CONFIG_HOME", dir.path().join("home"))
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A data dir no node ever used: the likely mistake is the data dir.
    let err = cli(&dir.path().join("elsewhere"));
    assert!(
        err.contains("no Outpost node uses") && err.contains("--data-dir"),
        "{err}"
    );
    // A node's data dir, node stopped: start it, or the running one is elsewhere.
    let stopped = dir.path().join("stopped");
    std::fs::create_dir_all(stopped.join("run")).expect("dir");
    let err = cli(&stopped);
    assert!(
        err.contains("no Outpost node is running on") && err.contains("outpost up"),
        "{err}"
    );
    // A malformed argument says what is expected (a usage error: exit code 2).
    let out = Command::new(BIN)
        .args(["readings", "--device", "t1", "--since", "yesterday"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'yesterday' is not a duration") && err.contains("2h"),
        "{err}"
    );
}
