//! Several instances of a service sharing the work on real engines: core-data instances
//! on one PostgreSQL consume device events from the bus as one group, so each event is
//! stored once and handled by one of them, and what an instance killed mid-way had taken
//! goes to the other.

use std::time::Duration;

use crate::export::Cloud;
use crate::support::*;

/// An event of `device` with one reading, numbered `i` (its origin).
fn numbered(device: &str, base: i64, i: i64) -> String {
    event_message(
        device,
        base + i,
        &[("Temperature", "Float64", &format!("{}.5", i % 100))],
    )
    .1
}

/// The metrics of a core-data instance at `url`: events it persisted and duplicates it saw.
async fn handled(node: &Node, url: &str) -> (f64, f64) {
    (
        node.metric_if_any(url, "outpost_core_data_events_persisted_total")
            .await
            .unwrap_or(0.0),
        node.metric_if_any(url, "outpost_core_data_events_duplicate_total")
            .await
            .unwrap_or(0.0),
    )
}

/// Three core-data instances on one PostgreSQL share the bus as one group: each event is
/// taken by one of them. Then 100,000 events from eight devices at once while one instance
/// is killed with kill -9 and started again: every event the broker acknowledged is stored,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_data_instances_share_the_bus_and_store_each_event_once() {
    let db = outpost_testkit::postgres::server().database();
    // A message an instance took and did not confirm goes to another after 2 s.
    let node = Node::start(&format!(
        "{}[broker]\njournal_redeliver_s = 2\n",
        db.storage_toml("core_data")
    ))
    .await;
    let devices: Vec<String> = (1..=8).map(|d| format!("t{d}")).collect();
    provision(
        &node,
        &devices.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let (port_b, port_c) = (free_port(), free_port());
    let (log_b, log_c) = (
        node.dir.path().join("core-data-b.log"),
        node.dir.path().join("core-data-c.log"),
    );
    let core_data = ("core-data", "core_data");
    let _b = instance(&node, core_data, "b", port_b, Some(&log_b));
    let mut c = instance(&node, core_data, "c", port_c, Some(&log_c));
    let urls = [node.data(), node.url(port_b), node.url(port_c)];
    // Consuming once registered and its health reports the bus check.
    for (name, url) in [("core-data@b", &urls[1]), ("core-data@c", &urls[2])] {
        eventually(
            &format!("{name} consuming"),
            Duration::from_secs(30),
            || async {
                node.status_of(name).await.as_deref() == Some("UP")
                    && node
                        .get(&format!("{url}/api/v3/health"))
                        .await
                        .1
                        .to_string()
                        .contains("\"ingest\"")
            },
        )
        .await;
    }
    let count = |what: &'static str| {
        let url = format!("{}/api/v3/{what}/count", urls[0]);
        let node = &node;
        async move { node.get(&url).await.1["count"].as_u64().unwrap_or(0) }
    };

    let base = now_nanos();
    let first: Vec<String> = (0..3000).map(|i| numbered("t1", base, i)).collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic("t1"), &first, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("3000 events stored", Duration::from_secs(30), || async {
        count("event").await == 3000
    })
    .await;
    let mut shares = Vec::new();
    for url in &urls {
        shares.push(handled(&node, url).await);
    }
    assert!(
        shares.iter().all(|(persisted, _)| *persisted > 0.0),
        "each instance took a share: {shares:?}"
    );
    assert_eq!(
        shares.iter().map(|(p, _)| p).sum::<f64>(),
        3000.0,
        "each event handled once: {shares:?}"
    );
    // The journal held each for the group, not for each instance: all released by the
    // confirmation of the one that took it, none delivered again to another.
    let broker = node.url(node.ports.broker_http);
    eventually(
        "the journal released everything",
        Duration::from_secs(30),
        || async {
            node.metric_if_any(&broker, "outpost_mqtt_broker_journal_pending")
                .await
                .unwrap_or(0.0)
                == 0.0
        },
    )
    .await;
    let again = node
        .metric_if_any(&broker, "outpost_mqtt_broker_journal_redelivered_total")
        .await
        .unwrap_or(0.0);
    let seen_twice: f64 = shares.iter().map(|(_, d)| d).sum();
    assert_eq!((again, seen_twice), (0.0, 0.0), "redelivered, duplicates");

    // 100,000 more from eight devices at once, each on its own connection with QoS 1.
    // c dies at once while it is storing them, and is started again while they still come:
    // what it had taken and not stored goes to another; every acknowledged event is
    // stored, once.
    let per_device = 12_500;
    let port = node.ports.mqtt;
    let publishers: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(d, device)| {
            let device = device.clone();
            let base = base + 1_000_000 * (d as i64 + 1);
            std::thread::spawn(move || {
                let lines: Vec<String> = (0..per_device)
                    .map(|i| numbered(&device, base, i))
                    .collect();
                mosquitto_pub_lines(port, &event_topic(&device), &lines, &[])
            })
        })
        .collect();
    let on_c = shares[2].0;
    eventually(
        "c storing the second run",
        Duration::from_secs(60),
        || async { handled(&node, &urls[2]).await.0 > on_c + 500.0 },
    )
    .await;
    c.kill().expect("kill -9 core-data@c");
    let _ = c.wait();
    let at_kill = count("event").await;
    eventually("more stored without c", Duration::from_secs(60), || async {
        count("event").await > at_kill + 5000
    })
    .await;
    let _c = instance(&node, core_data, "c", port_c, Some(&log_c));
    for p in publishers {
        let out = p.join().expect("publisher");
        assert!(
            out.status.success(),
            "every event acknowledged: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = 3000 + 8 * per_device as u64;
    eventually(
        &format!("{total} events stored"),
        Duration::from_secs(180),
        || async { count("event").await >= total },
    )
    .await;
    assert_eq!(count("event").await, total, "none stored twice");
    assert_eq!(
        count("reading").await,
        total,
        "one reading an event, none twice"
    );
    assert!(
        at_kill < total,
        "c was killed in the middle ({at_kill} of {total} stored then)"
    );
}

/// Two cloud instances on one PostgreSQL (sharing the cloud's CA and keys), an edge sending
/// to the first with the second as its failover URL: the edge enrolled on one is known to
/// both, and when the first goes away the edge carries on with the second; every event
/// arrives, each stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_instances_share_postgresql_and_an_edge_fails_over() {
    let db = outpost_testkit::postgres::server().database();
    let settings = db.settings("cloud");
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut a = Cloud::start_with(&settings).await;
    let identity = a.enroll("edge-s");
    let b = Cloud::start_beside(&a, &settings).await;
    let (s, edges) = b.get("/edge/all").await;
    assert!(
        s == 200 && edges.to_string().contains("\"edge-s\""),
        "the second instance knows the edge the first enrolled: {s} {edges}"
    );
    let node = Node::start(&cloud_export(
        &identity,
        &format!(
            "failover_urls = [\"{}\"]\nretry_initial_ms = 50\nretry_max_ms = 500",
            b.url()
        ),
    ))
    .await;
    provision(&node, &["s1"]);
    let value = |i: i64| format!("{}.{:02}", i / 100, i % 100);
    let publish = |from: i64, to: i64| {
        let base = now_nanos();
        let lines: Vec<String> = (from..to)
            .map(|i| event_message("s1", base + i, &[("Temperature", "Float64", &value(i))]).1)
            .collect();
        let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic("s1"), &lines, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    publish(0, 150);
    eventually(
        "150 events in the cloud",
        Duration::from_secs(30),
        || async { a.values("edge-s", "s1").await.len() == 150 },
    )
    .await;
    // The first instance goes away; the edge fails over to the second.
    a.stop();
    publish(150, 300);
    eventually(
        "300 events in the cloud",
        Duration::from_secs(60),
        || async { b.values("edge-s", "s1").await.len() == 300 },
    )
    .await;
    let seen = b.values("edge-s", "s1").await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for i in 0..300 {
        assert!(seen.contains_key(&value(i)), "{} missing", value(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_instances_run_a_job_once_and_a_survivor_takes_over_from_a_kill_9() {
    let db = outpost_testkit::postgres::server().database();
    let node = Node::start(&db.storage_toml("support_scheduler")).await;
    let port_b = free_port();
    let mut b = instance_b(
        &node,
        "support-scheduler",
        "support_scheduler",
        port_b,
        None,
    );
    eventually(
        "support-scheduler@b registered",
        Duration::from_secs(20),
        || async { node.status_of("support-scheduler@b").await.as_deref() == Some("UP") },
    )
    .await;
    let (a_url, b_url) = (node.url(node.ports.scheduler), node.url(port_b));
    let hook_port = free_port();
    let hook = outpost_testkit::webhook::Webhook::start(hook_port, 0).await;
    node.cli_ok(&[
        "schedule",
        "add",
        "tick",
        "--every",
        "1s",
        "--rest",
        "POST",
        &format!("http://127.0.0.1:{hook_port}/tick"),
    ]);
    eventually("three runs", Duration::from_secs(20), || async {
        hook.got().len() >= 3
    })
    .await;
    // One of them runs the jobs; the other stands by.
    let runs_jobs = "outpost_support_scheduler_runs_jobs";
    let (on_a, on_b) = (
        node.metric_if_any(&a_url, runs_jobs).await.unwrap_or(0.0),
        node.metric_if_any(&b_url, runs_jobs).await.unwrap_or(0.0),
    );
    assert_eq!(on_a + on_b, 1.0, "runners: a {on_a}, b {on_b}");
    // The runner dies at once; the survivor takes over when its lease runs out.
    if on_b == 1.0 {
        b.kill().expect("kill -9 support-scheduler@b");
        let _ = b.wait();
    } else {
        signal(node.pid("support-scheduler"), "KILL");
    }
    let before = hook.got().len();
    eventually(
        "runs after the runner died",
        Duration::from_secs(40),
        || async { hook.got().len() >= before + 3 },
    )
    .await;
    // Every scheduled time ran once, by one runner: a second apart at least.
    let url = if on_b == 1.0 { &a_url } else { &b_url };
    let (_, page) = node
        .get(&format!(
            "{url}/api/v3/scheduleactionrecord/job/name/tick?limit=1000"
        ))
        .await;
    outpost_testkit::one_runner(&outpost_testkit::scheduled_times(&page), 1_000, 6);
}
