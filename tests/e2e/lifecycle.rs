//! Supervision and durability: a killed service comes back and re-registers while the
//! others keep serving; nothing acknowledged is lost across a service crash or a node
//! restart.

use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn events(device: &str, n: i64, base: i64) -> Vec<String> {
    (0..n)
        .map(|i| {
            event_message(
                device,
                base + i,
                &[
                    ("Temperature", "Float64", "21.5"),
                    ("Humidity", "Uint8", "41"),
                ],
            )
            .1
        })
        .collect()
}

#[tokio::test]
async fn killed_service_restarts_and_loses_nothing() {
    let node = Node::start("").await;
    provision(&node, &["t1"]);
    let data = node.data();
    let metadata = node.metadata();

    // Publish continuously from a real client (in chunks, so the stream lasts well past
    // core-data's restart) while core-data is killed mid-stream.
    let base = now_nanos();
    let port = node.ports.mqtt;
    let publisher = std::thread::spawn(move || {
        let mut outputs = Vec::new();
        for chunk in 0..30 {
            let lines = events("t1", 100, base + chunk * 100);
            outputs.push(mosquitto_pub_lines(port, &event_topic("t1"), &lines, &[]));
            std::thread::sleep(Duration::from_millis(100));
        }
        outputs
    });
    eventually("ingest to be under way", WAIT, || async {
        node.get(&format!("{data}/api/v3/event/count")).await.1["count"]
            .as_u64()
            .unwrap_or(0)
            >= 400
    })
    .await;
    let old = node.pid("core-data");
    // Killed mid-stream: the publisher has more to send than is stored. The supervisor is
    // held until 200 more events were published while core-data is away.
    let broker = node.url(node.ports.broker_http);
    let held = Paused::new(node.supervisor_pid());
    let at_kill = node.get(&format!("{data}/api/v3/event/count")).await.1["count"]
        .as_u64()
        .expect("a count");
    let received = node
        .metric(&broker, "outpost_mqtt_broker_publish_received_total")
        .await;
    signal(old, "KILL");
    assert!(
        at_kill < 3000 && !publisher.is_finished(),
        "the kill came after the stream ended"
    );
    eventually(
        "200 events published while core-data is away",
        WAIT,
        || async {
            node.metric(&broker, "outpost_mqtt_broker_publish_received_total")
                .await
                >= received + 200.0
        },
    )
    .await;
    drop(held);

    // The rest of the node keeps answering while core-data is down.
    let (s, _) = node.get(&format!("{metadata}/api/v3/device/name/t1")).await;
    assert_eq!(s, 200, "core-metadata must keep serving");

    for out in publisher.join().expect("publisher thread") {
        assert!(
            out.status.success(),
            "every event was acknowledged by the broker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    eventually("core-data to be restarted", WAIT, || async {
        node.pid("core-data") != old
    })
    .await;
    eventually("core-data to answer again", WAIT, || async {
        node.get(&format!("{data}/api/v3/ping")).await.0 == 200
    })
    .await;
    eventually("core-data to be registered and UP", WAIT, || async {
        node.status_of("core-data").await.as_deref() == Some("UP")
    })
    .await;
    // Every event is stored exactly once: redeliveries of what the killed process had not
    // acknowledged are recognised as duplicates.
    eventually("all 3000 events", WAIT, || async {
        node.get(&format!("{data}/api/v3/event/count")).await.1["count"] == 3000
    })
    .await;
    let (_, c) = node.get(&format!("{data}/api/v3/reading/count")).await;
    assert_eq!(c["count"], 6000);
    // The new core-data stored what the old one had not, and counted as duplicates what
    // it had stored without confirming.
    let stored = node
        .metric(&data, "outpost_core_data_events_persisted_total")
        .await;
    let duplicates = node
        .metric(&data, "outpost_core_data_events_duplicate_total")
        .await;
    eprintln!("{at_kill} stored at the kill; {stored} stored and {duplicates} duplicates after");
    assert!(
        stored > 0.0 && stored <= (3000 - at_kill) as f64,
        "the restarted core-data stored the rest, and only that ({stored})"
    );
    // A duplicate is a redelivery of what the old process stored: never more than that.
    assert!(
        duplicates <= 3000.0 - stored,
        "{duplicates} duplicates counted, but the old core-data stored only {}",
        3000.0 - stored
    );
    let log = node.log();
    assert!(
        log.contains("exited unexpectedly"),
        "the supervisor reports the crash"
    );
    assert!(
        log.matches("persisting device events from the bus").count() >= 2,
        "core-data started twice"
    );
}

#[tokio::test]
async fn node_restart_keeps_every_acknowledged_event() {
    let mut node = Node::start("").await;
    provision(&node, &["t1", "t2"]);
    // core-data paused: all 1000 events the broker acknowledges now are a backlog when
    // core-data is told to stop; it continues only then.
    let paused = Paused::new(node.pid("core-data"));
    let base = now_nanos();
    for dev in ["t1", "t2"] {
        let out = mosquitto_pub_lines(
            node.ports.mqtt,
            &event_topic(dev),
            &events(dev, 500, base),
            &[],
        );
        assert!(out.status.success());
    }
    // Stop at once: every event the broker acknowledged must be stored by the time the
    // node has started again, whether or not core-data had caught up.
    // The supervisor stops services in reverse start order: once core-command is gone,
    // core-data is the next one told to stop, with all 1000 still in front of it.
    let command_pid = node.data_dir().join("run/core-command.pid");
    node.stop_then(|| {
        let deadline = std::time::Instant::now() + WAIT;
        while command_pid.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "core-command did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(paused);
    });
    assert!(node.log().contains("Stopped."), "{}", node.log());
    node.launch().await;
    let data = node.data();
    let (_, c) = node.get(&format!("{data}/api/v3/event/count")).await;
    assert_eq!(c["count"], 1000, "{}", node.log());
    let (_, c) = node
        .get(&format!("{data}/api/v3/reading/count/device/name/t2"))
        .await;
    assert_eq!(c["count"], 1000);
    // Metadata and the registry survived too.
    let (s, d) = node
        .get(&format!("{}/api/v3/device/name/t1", node.metadata()))
        .await;
    assert_eq!(
        (s, d["device"]["profileName"].as_str()),
        (200, Some("Thermostat"))
    );
    node.stop();
}

#[tokio::test]
async fn sigterm_to_the_node_stops_every_service() {
    let mut node = Node::start("").await;
    let pids: Vec<u32> = [
        "core-keeper",
        "mqtt-broker",
        "core-metadata",
        "core-data",
        "core-command",
    ]
    .iter()
    .map(|s| node.pid(s))
    .collect();
    node.stop();
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} still running after the node stopped"
        );
    }
    // Nothing is left listening.
    assert!(std::net::TcpStream::connect(("127.0.0.1", node.ports.data)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", node.ports.mqtt)).is_err());
}

#[tokio::test]
async fn killing_the_supervisor_takes_the_children_down() {
    let node = Node::start("").await;
    let child = node.pid("core-data");
    signal(node.supervisor_pid(), "KILL");
    let deadline = std::time::Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{child}/status")).exists()
        && !std::fs::read_to_string(format!("/proc/{child}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "core-data outlived its supervisor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let mut node = Node::start("").await;
    let data = node.pid("core-data");
    // Another core-data on the same data dir would share its database: it must refuse
    // to start and leave the running one alone.
    let (ok, _, stderr) = node.cli(&["run", "core-data"]);
    assert!(!ok, "a second core-data started");
    assert!(stderr.contains("already runs"), "stderr: {stderr}");
    // A second node is refused the same way, before it starts anything.
    // One line, status 1, and no banner: nothing says it started.
    let (code, stdout, stderr) = node.cli_code(&["up"]);
    assert_eq!(code, Some(1), "a second node: {stdout}{stderr}");
    assert!(
        stderr.contains("another Outpost node is running"),
        "stderr: {stderr}"
    );
    assert!(
        !stdout.contains("up in") && !stdout.contains("Way in"),
        "a banner for a node that did not start: {stdout}{stderr}"
    );
    assert_eq!(
        node.pid("core-data"),
        data,
        "the running core-data was disturbed"
    );
    let (s, _) = node.get(&format!("{}/api/v3/ping", node.data())).await;
    assert_eq!(s, 200);
    node.stop();
}
