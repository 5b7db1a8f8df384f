//! The command line: configuration handling and following the bus.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

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
            .args(["events", "tail"])
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
    // EdgeX's exponent form on the bus; people read a decimal (`--json` keeps the form sent,
    // as the next test reads).
    let (_, msg) = event_message(
        "t1",
        now_nanos(),
        &[("Temperature", "Float64", "2.375e+01")],
    );
    assert!(
        mosquitto_pub(node.ports.mqtt, &event_topic("t1"), &msg, &[])
            .status
            .success()
    );
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("events tail prints the event");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        ["t1", "Temperature", "Temperature=23.75"],
        "{line}"
    );
}

#[tokio::test]
async fn events_tail_ends_quietly_when_its_reader_goes_away() {
    let node = Node::start("").await;
    provision(&node, &["t1"]);
    // `outpost events tail --json | head -1`: a reader that takes the first line and
    // closes the pipe.
    let mut tail = Spawned(
        node.cli_command(&["events", "tail", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("events tail"),
    );
    let stdout = tail.stdout.take().expect("stdout");
    let (first, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        // The pipe closes here, before the test hears of the line.
        drop(reader);
        let _ = first.send(line);
    });
    let said = lines_from(tail.stderr.take().expect("stderr"));
    while !said
        .recv_timeout(Duration::from_secs(20))
        .expect("events tail says what it follows")
        .starts_with("following ")
    {}
    let publish = |value: &str| {
        let (_, msg) = event_message("t1", now_nanos(), &[("Temperature", "Float64", value)]);
        assert!(
            mosquitto_pub(node.ports.mqtt, &event_topic("t1"), &msg, &[])
                .status
                .success()
        );
    };
    publish("23.75");
    let line = read
        .recv_timeout(Duration::from_secs(20))
        .expect("events tail prints the event");
    let ev: Value = serde_json::from_str(&line).expect("a JSON event per line");
    assert_eq!(ev["deviceName"], "t1");
    // The next event has nowhere to go: the command ends, with success and without a word.
    let mut status = None;
    for _ in 0..20 {
        publish("24.5");
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = tail.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
    }
    let status = status.expect("events tail ends once its reader is gone");
    let stderr: Vec<String> = said.iter().collect();
    assert!(status.success(), "{status}: {stderr:?}");
    assert!(stderr.is_empty(), "{stderr:?}");
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
        )) && banner.contains("Try: outpost services"),
        "{banner}"
    );
    // The gateway's line: its https and mqtt sockets first; the loopback HTTP port, which
    // only answers ping and status, labelled for what it is.
    let gateway = banner
        .lines()
        .find(|l| l.trim_start().starts_with("gateway ") && l.contains(" pid "))
        .unwrap_or_else(|| panic!("no gateway line: {banner}"));
    assert!(
        gateway.contains(&format!(
            "https://127.0.0.1:{} (status ",
            node.ports.gateway
        )),
        "{gateway}"
    );
    // `outpost up` with the first node's configuration on `data_dir`, which must give up
    // at once: its exit status, stdout and stderr. (The first node keeps its record for
    // the CLI in the runtime dir they share: it runs.)
    let second_up = |data_dir: &Path| {
        let mut second = Command::new(BIN);
        second
            .arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("up")
            .env("XDG_RUNTIME_DIR", node.runtime_dir())
            .stdin(Stdio::null());
        let mut second = tokio::process::Command::from(second);
        // Killed if it does not give up in time (it would run on).
        second.kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(Duration::from_secs(20), second.output())
                .await
                .expect("the second node gives up at once")
                .expect("run");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // A second node with the same ports (another data dir): one line per busy socket, the
    // exit status of a node that refuses what it was given (2, as `outpost cloud`'s), no
    // banner, and nothing left running.
    let other = crate::support::tempdir();
    let (code, stdout, stderr) = second_up(other.path()).await;
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "core-data cannot listen on 127.0.0.1:{} (http)",
            node.ports.data
        )) && stderr.contains(&format!("127.0.0.1:{} (mqtt)", node.ports.mqtt)),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.trim_start().starts_with("core-data cannot listen on")),
        "one line per busy socket: {stderr}"
    );
    assert!(!stdout.contains("up in"), "no success banner: {stdout}");
    assert!(
        !other.path().join("run/core-data.pid").exists(),
        "no service was started"
    );
    // A data dir anyone may write to: refused before anything starts, with the same status.
    let elsewhere = crate::support::tempdir();
    let open = elsewhere.path().join("data");
    std::fs::create_dir_all(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let (code, stdout, stderr) = second_up(&open).await;
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("anyone may write to it"), "{stderr}");
    assert!(!stdout.contains("up in"), "no success banner: {stdout}");
    assert!(!open.join("run").exists(), "nothing was started: {stderr}");

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

#[tokio::test]
async fn the_cli_finds_the_node_its_user_started_with_neither_data_dir_nor_config() {
    // A node with its own data dir and ports (none of them the defaults).
    let mut node = Node::start("").await;
    let (runtime, home) = (node.runtime_dir(), node.cli_home());
    let bare = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("OUTPOST_DATA_DIR")
            .env_remove("OUTPOST_CONFIG")
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The node recorded where it runs; the CLI reads the node's own configuration for its
    // gateway's port.
    let data_dir = node.data_dir().canonicalize().expect("data dir");
    let (code, out, err) = bare(&["status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("Node: running on {}", data_dir.display()))
            && out.contains(&format!("Way in: https://127.0.0.1:{}", node.ports.gateway)),
        "{out}"
    );
    let (code, out, err) = bare(&["whoami", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"admin\""), "{out}");
    // Stopped, the node is no longer found (its record, if it could not remove it, names
    // a data dir no node runs on).
    node.stop();
    let (_, out, _) = bare(&["status"]);
    assert!(!out.contains(&data_dir.display().to_string()), "{out}");
}

#[tokio::test]
async fn a_gateway_the_cli_does_not_trust_is_said_to_be_untrusted_not_down() {
    let node = Node::start("").await;
    let other = crate::support::tempdir();
    let paths = outpost_pki::Paths::new(other.path());
    outpost_pki::issue_client_cert(&paths, "admin", 1).expect("another CA");
    let gateway = format!("https://127.0.0.1:{}", node.ports.gateway);
    let (code, out, err) = node.cli_code(&[
        "--gateway",
        &gateway,
        "--ca",
        &paths.ca_cert.display().to_string(),
        "--token",
        "opk_whatever",
        "device",
        "list",
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("is not the node the CLI trusts") && err.contains("--ca FILE"),
        "{err}"
    );
    assert!(!err.contains("is the node up"), "{err}");
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
    // `outpost status` there: not running, said, with the not-found status.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&stopped)
        .arg("status")
        .env("XDG_CONFIG_HOME", dir.path().join("home"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Node: not running on") && said.contains("outpost up"),
        "{said}"
    );
    // And as JSON, for scripts: the same answer and the same status.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&stopped)
        .args(["status", "--json"])
        .env("XDG_CONFIG_HOME", dir.path().join("home"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    let said: Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(
        (&said["running"], &said["dataDir"]),
        (&json!(false), &json!(stopped.display().to_string())),
        "{said}"
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

/// The CLI's exit status for "no such thing" (1 is any other failure, 2 a usage error).
const NOT_FOUND: Option<i32> = Some(4);

#[tokio::test]
async fn mistakes_get_an_answer_that_says_what_to_do_and_an_exit_status_scripts_can_read() {
    let node = Node::start("").await;
    // Thermostats of a device-mqtt registered at an address where nothing answers.
    provision(&node, &["t1"]);

    // Names the node does not know: not an empty table, the nearest name and status 4.
    let (code, out, err) = node.cli_code(&["readings", "t11"]);
    assert_eq!(code, NOT_FOUND, "{out}{err}");
    assert!(err.contains("no device t11 (did you mean 't1'?)"), "{err}");
    let (code, _, err) = node.cli_code(&["readings", "t1", "--resource", "Temprature"]);
    assert_eq!(code, NOT_FOUND, "{err}");
    assert!(
        err.contains("has no resource Temprature (did you mean 'Temperature'?)"),
        "{err}"
    );
    // A known device with nothing stored yet is an empty listing, not an error.
    let (code, out, err) = node.cli_code(&["readings", "t1", "--resource", "Humidity", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let page: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(page["readings"].as_array().map(Vec::len), Some(0), "{out}");
    let (code, _, err) = node.cli_code(&["device", "show", "t11"]);
    assert_eq!(code, NOT_FOUND, "{err}");
    assert!(err.contains("(did you mean 't1'?)"), "{err}");
    // A misspelt profile: refused (a bad reference, as in EdgeX), with the nearest name.
    let (code, _, err) = node.cli_code(&[
        "device",
        "add",
        "t9",
        "--profile",
        "Thermostt",
        "--service",
        "device-mqtt",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("did you mean 'Thermostat'?"), "{err}");
    // core-command names the misspelt command when the device service cannot answer
    // (it is not reachable here: a real command gets 503 and the general failure status).
    let (code, _, err) = node.cli_code(&["command", "t1", "Temprature"]);
    assert_eq!(code, NOT_FOUND, "{err}");
    assert!(err.contains("did you mean 'Temperature'?"), "{err}");
    let (code, _, err) = node.cli_code(&["command", "t1", "Temperature"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("503"), "{err}");

    // A device its service could not validate is added, with a warning saying why.
    let (code, out, err) =
        node.cli_code(&[&["device", "add", "--name", "t2"][..], &A_THERMOSTAT].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("added device t2"), "{out}");
    assert!(
        err.contains(
            "warning: device t2: not validated: device service 'device-mqtt' is not reachable"
        ),
        "{err}"
    );

    // The example device file (EdgeX's deviceList) is taken as written, with no unknown key.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/devices.yaml");
    let (code, out, err) = node.cli_code(&["device", "add", "-f", example]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("added device thermostat-lobby")
            && out.contains("added device thermostat-office"),
        "{out}"
    );
    assert!(!err.contains("unknown key"), "{err}");

    // Wide: the protocols, autoEvents and last change too; an output it does not have is
    // a usage error that lists the ones it has.
    let out = node.cli_ok(&["device", "list", "-o", "wide"]);
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.contains("PROTOCOLS") && header.contains("AUTO EVENTS"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("t1 ") && l.contains("ago")),
        "{out}"
    );
    let (code, _, err) = node.cli_code(&["device", "list", "-o", "yaml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("wide"), "{err}");

    // A device for people, and with --json every field; a generated secret as JSON.
    let out = node.cli_ok(&["device", "show", "t1"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("Profile") && l.ends_with("Thermostat")),
        "{out}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["device", "show", "t1", "--json"])).expect("JSON");
    assert_eq!(shown["profileName"], "Thermostat", "{shown}");
    let secret: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["device", "secret", "t1", "--json"])).expect("JSON");
    assert_eq!(secret["device"], "t1");
    assert!(
        secret["secret"].as_str().is_some_and(|s| s.len() >= 16),
        "{secret}"
    );

    // A profile with a value type EdgeX does not have: the valid ones are listed.
    let bad = node.dir.path().join("bad-profile.yaml");
    std::fs::write(
        &bad,
        PROFILE_YAML
            .replace("Float64", "Float")
            .replace("Thermostat", "Bad"),
    )
    .expect("write");
    let (code, _, err) = node.cli_code(&["profile", "apply", bad.to_str().expect("path")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("unknown value type 'Float'") && err.contains("Float32, Float64"),
        "{err}"
    );

    // A misspelt key drops what it holds (EdgeX ignores unknown keys): a warning names it
    // and its line.
    let typo = node.dir.path().join("typo-profile.yaml");
    std::fs::write(
        &typo,
        PROFILE_YAML
            .replace("deviceResources:", "deviceResource:")
            .replace("Thermostat", "Typo"),
    )
    .expect("write");
    let (code, out, err) =
        node.cli_code(&["profile", "apply", typo.to_str().expect("path"), "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("unknown key 'deviceResource' (line 5), ignored"),
        "{err}"
    );
    let entry: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(entry["statusCode"], 201, "{out}");
    // The same for a device file (`device add -f`): the device is added without what the
    // misspelt key held, and the warning names the key and its line.
    let typo = node.dir.path().join("typo-devices.yaml");
    std::fs::write(
        &typo,
        "deviceList:\n  - name: \"t5\"\n    profileName: \"Thermostat\"\n    \
         serviceName: \"device-mqtt\"\n    label: [\"hvac\"]\n    protocols:\n      \
         mqtt: { CommandTopic: \"command/t5\" }\n",
    )
    .expect("write");
    let (code, out, err) = node.cli_code(&["device", "add", "-f", typo.to_str().expect("path")]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("added device t5"), "{out}");
    assert!(
        err.contains(&format!(
            "warning: {}: unknown key 'deviceList.0.label' (line 5), ignored",
            typo.display()
        )),
        "{err}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["device", "show", "t5", "--json"])).expect("JSON");
    assert!(
        shown["labels"].as_array().is_none_or(Vec::is_empty),
        "{shown}"
    );

    // The public signing key where the private one belongs.
    let keys = node.dir.path().join("keys");
    run_ok(
        Command::new(BIN)
            .args(["ota", "keygen", "--out"])
            .arg(&keys),
        "ota keygen",
    );
    let public = keys.join("ota-signing.pub");
    let (code, _, err) = node.cli_code(&[
        "ota",
        "upload",
        public.to_str().expect("path"),
        "--name",
        "fw",
        "--version",
        "1",
        "--key",
        public.to_str().expect("path"),
        "--compatible",
        "Thermostat",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is the public key") && err.contains("ota-signing.key"),
        "{err}"
    );

    // A service that is off on this node (the gateway has no such route): what to set.
    let (code, _, err) = node.cli_code(&["ota", "list"]);
    assert_eq!(code, NOT_FOUND, "{err}");
    assert!(
        err.contains(
            "ota is not enabled on this node: its configuration needs [ota] enabled = true"
        ) && err.contains("trusted_keys"),
        "{err}"
    );
    let (code, _, err) = node.cli_code(&["export", "status"]);
    assert_eq!(code, NOT_FOUND, "{err}");
    assert!(err.contains("[export] enabled = true"), "{err}");

    // What the banner said, at any time; the gateway's entry point among its sockets.
    let out = node.cli_ok(&["status"]);
    assert!(
        out.contains("Node: running on")
            && out.contains("Way in: https://")
            && out.contains("Try: outpost"),
        "{out}"
    );
    let out = node.cli_ok(&["status", "--json"]);
    let status: Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(
        (
            &status["running"],
            &status["wayIn"]["url"],
            &status["wayIn"]["user"]
        ),
        (
            &json!(true),
            &json!(format!("https://127.0.0.1:{}", node.ports.gateway)),
            &json!("admin")
        ),
        "{status}"
    );
    let up = status["servicesUp"].as_array().expect("servicesUp");
    assert!(
        up.contains(&json!("core-data")) && status["servicesNotUp"].is_array(),
        "{status}"
    );
    let out = node.cli_ok(&["services"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("gateway") && l.contains("(status)") && l.contains("https :")),
        "{out}"
    );

    // Misspelt commands get clap's suggestion (usage error: 2).
    let (code, _, err) = node.cli_code(&["devices", "list"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("similar subcommand") && err.contains("'device'"),
        "{err}"
    );
    // ...and misspelt flags too.
    let (code, _, err) = node.cli_code(&["readings", "t1", "--resorce", "Temperature"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("similar argument") && err.contains("'--resource'"),
        "{err}"
    );
    // `outpost run --help` names every service it can run.
    let help = node.cli_ok(&["run", "--help"]);
    for service in [
        "core-data",
        "core-metadata",
        "gateway",
        "device-modbus",
        "ota",
    ] {
        assert!(
            help.contains(service),
            "{service} missing from run --help: {help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_prints_json_scripts_can_parse() {
    // OTA on (it takes a signing key), so that its listings answer too: artifacts,
    // rollouts, groups, the inventory.
    let keys = crate::support::tempdir();
    run_ok(
        Command::new(BIN)
            .args(["ota", "keygen", "--out"])
            .arg(keys.path()),
        "ota keygen",
    );
    let public = std::fs::read_to_string(keys.path().join("ota-signing.pub")).expect("key");
    let node = Node::start(&format!(
        "[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n",
        public.trim()
    ))
    .await;

    // Something in each list, made as an operator makes it.
    let thermostat = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/thermostat.yaml"
    );
    node.cli_ok(&["profile", "apply", thermostat]);
    node.cli_ok(&[
        "device-service",
        "add",
        "device-mqtt",
        "--base-address",
        "http://127.0.0.1:1",
    ]);
    node.cli_ok(&[&["device", "add", "t1"][..], &A_THERMOSTAT].concat());
    let (ok, out, err) = node.cli_with(
        &["user", "add", "vic", "--role", "viewer", "--password-stdin"],
        &[],
        Some("viewer password 1\n"),
    );
    assert!(ok, "{out}{err}");
    let created = node.cli_ok(&["apikey", "create", "ci", "--role", "operator"]);
    let key = created
        .split_whitespace()
        .find(|w| w.starts_with("opk_"))
        .expect("the key is printed")
        .to_string();
    node.cli_ok(&[
        "notify",
        "subscribe",
        "--name",
        "on-call",
        "--category",
        "alarm",
        "--webhook",
        "http://127.0.0.1:1/on-call",
    ]);
    node.cli_ok(&["notify", "send", "--category", "alarm", "boiler too hot"]);
    node.cli_ok(&[
        "schedule",
        "add",
        "--name",
        "ping-data",
        "--every",
        "1h",
        "--rest",
        "GET",
        "http://core-data/api/v3/ping",
        "--locked",
    ]);
    node.cli_ok(&["schedule", "trigger", "ping-data"]);
    node.cli_ok(&["device", "group", "add", "hvac", "--label", "e2e"]);
    let firmware = node.dir.path().join("fw.bin");
    std::fs::write(&firmware, b"firmware 1").expect("write");
    node.cli_ok(&[
        "ota",
        "upload",
        firmware.to_str().expect("path"),
        "--name",
        "fw",
        "--version",
        "1",
        "--key",
        keys.path().join("ota-signing.key").to_str().expect("path"),
        "--compatible",
        "Thermostat",
    ]);
    node.cli_ok(&[
        "ota",
        "rollout",
        "create",
        "r1",
        "--artifact",
        "fw",
        "--version",
        "1",
        "--device",
        "t1",
    ]);
    publish_readings(&node, "t1", 1, "21.5");

    // A listing with --json: one JSON document (what the service answered), its items an
    // array under `key`.
    let listed = |args: &[&str], key: &str| -> Vec<Value> {
        let out = node.cli_ok(&[args, &["--json"]].concat());
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("outpost {} --json is not JSON ({e}): {out}", args.join(" "))
        });
        v[key]
            .as_array()
            .unwrap_or_else(|| {
                panic!(
                    "outpost {} --json has no array '{key}': {v}",
                    args.join(" ")
                )
            })
            .clone()
    };
    // ...and among them one whose field at `pointer` is `name`.
    let lists = |args: &[&str], key: &str, pointer: &str, name: &str| {
        let items = listed(args, key);
        assert!(
            items
                .iter()
                .any(|i| i.pointer(pointer) == Some(&json!(name))),
            "outpost {} --json: no {name} at {pointer} in '{key}': {items:?}",
            args.join(" ")
        );
    };
    lists(&["profile", "list"], "profiles", "/name", "Thermostat");
    lists(&["device", "list"], "devices", "/name", "t1");
    lists(
        &["device-service", "list"],
        "services",
        "/name",
        "device-mqtt",
    );
    lists(&["user", "list"], "users", "/username", "vic");
    lists(&["user", "list"], "users", "/username", "admin");
    lists(&["apikey", "list"], "apiKeys", "/name", "ci");
    // Never the key itself.
    let out = node.cli_ok(&["apikey", "list", "--json"]);
    assert!(!out.contains(&key), "{out}");
    lists(&["services"], "registrations", "/serviceId", "core-data");
    lists(
        &["notify", "list"],
        "notifications",
        "/content",
        "boiler too hot",
    );
    lists(
        &["notify", "subscriptions"],
        "subscriptions",
        "/name",
        "on-call",
    );
    lists(&["schedule", "list"], "scheduleJobs", "/name", "ping-data");
    lists(&["device", "group", "list"], "groups", "/name", "hvac");
    let group: Value =
        serde_json::from_str(&node.cli_ok(&["device", "group", "show", "hvac", "--json"]))
            .expect("device group show --json is JSON");
    assert_eq!(group["members"], json!(["t1"]), "{group}");
    // Adding answers with what core-metadata said: one entry, created.
    let added: Value = serde_json::from_str(
        &node.cli_ok(&[&["device", "add", "t2", "--json"][..], &A_THERMOSTAT].concat()),
    )
    .expect("device add --json is JSON");
    assert_eq!(added[0]["statusCode"], 201, "{added}");
    lists(&["device", "inventory"], "devices", "/name", "t1");
    lists(&["ota", "list"], "artifacts", "/manifest/name", "fw");
    lists(&["ota", "rollout", "status"], "rollouts", "/name", "r1");
    // What services do in the background shows a moment later: the delivery to the
    // (unreachable) webhook, the triggered job's run, the reading stored.
    for (args, key, pointer, name) in [
        (
            &["notify", "transmissions"][..],
            "transmissions",
            "/subscriptionName",
            "on-call",
        ),
        (
            &["schedule", "records"],
            "scheduleActionRecords",
            "/jobName",
            "ping-data",
        ),
        (&["readings", "t1"], "readings", "/deviceName", "t1"),
    ] {
        eventually(
            &format!("{name} in outpost {} --json", args.join(" ")),
            Duration::from_secs(20),
            || {
                let found = listed(args, key)
                    .iter()
                    .any(|i| i.pointer(pointer) == Some(&json!(name)));
                async move { found }
            },
        )
        .await;
    }
}

#[test]
fn completions_and_the_manual_come_from_the_commands_definitions() {
    let out = run_ok(
        Command::new(BIN).args(["completions", "bash"]),
        "completions",
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_outpost()") && script.contains("rollout"),
        "{script}"
    );
    for (shell, marker) in [("zsh", "#compdef outpost"), ("fish", "complete -c outpost")] {
        let out = run_ok(Command::new(BIN).args(["completions", shell]), shell);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker) && script.contains("rollout"),
            "{shell}: {script}"
        );
    }
    let out = run_ok(Command::new(BIN).arg("man"), "man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH outpost") && page.contains("readings"),
        "{page}"
    );
    let dir = crate::support::tempdir();
    run_ok(
        Command::new(BIN).args(["man", "--out"]).arg(dir.path()),
        "man --out",
    );
    for page in [
        "outpost.1",
        "outpost-device-add.1",
        "outpost-ota-rollout-status.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} not written");
    }
}
