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

/// The value event `i` of a run carries: `i` as hundredths, so each is told apart.
fn value(i: i64) -> String {
    format!("{}.{:02}", i / 100, i % 100)
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
    let publish = |from: i64, to: i64| {
        let base = now_nanos();
        publish_events(&node, "s1", from..to, |i| base + i, value);
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

/// Two ota instances on one PostgreSQL hold one rollout: devices report to either (each
/// step of a device through the other instance than the last), the phase opens once, on
/// the instance whose report completed it, and both show it. Then the instance the next
/// phase's devices started with is killed with kill -9: they finish through the survivor,
/// which takes over from what the dead one stored, and every report answered 200 is in the
/// devices' histories once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ota_instances_share_a_rollout_and_a_phase_opens_once_through_a_kill_9() {
    let db = outpost_testkit::postgres::server().database();
    let keys = crate::support::tempdir();
    let (key, public) = crate::ota::keygen(keys.path());
    let node = Node::start(&format!(
        "{}[ota]\nenabled = true\ntrusted_keys = [\"{public}\"]\n",
        db.storage_toml("ota")
    ))
    .await;
    let devices: Vec<String> = (0..8).map(|d| format!("fwdev-{d}")).collect();
    provision(
        &node,
        &devices.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    crate::ota::with_secrets(&node, &devices);
    let data = outpost_testkit::firmware::payload(50_000, 7);
    crate::ota::upload(&node, &key, "fw", "2.0", &data);
    let port_b = free_port();
    let log_b = node.dir.path().join("ota-b.log");
    let mut b = instance(&node, ("ota", "ota"), "b", port_b, Some(&log_b));
    eventually("ota@b registered", Duration::from_secs(30), || async {
        node.status_of("ota@b").await.as_deref() == Some("UP")
    })
    .await;
    let (a, b_api) = (
        format!("{}/api/v3", node.url(node.ports.ota)),
        format!("{}/api/v3", node.url(port_b)),
    );
    let (code, v) = node
        .post(
            &format!("{a}/rollout"),
            &serde_json::json!({"name": "r1", "artifact": {"name": "fw", "version": "2.0"},
                "target": {"devices": devices}, "policy": {"phases": [50.0, 100.0]}}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let report = |api: &str, device: &str, status: &str| {
        node.http
            .post(format!("{api}/ddi/{device}/action/r1/feedback"))
            .header("x-outpost-device-token", format!("{device}-secret-000"))
            .json(&serde_json::json!({"status": status, "details": status}))
            .send()
    };
    let view = async |api: &str| node.get(&format!("{api}/rollout/name/r1")).await.1;
    let steps = ["downloading", "installing", "succeeded"];
    let phase_one: Vec<&str> = devices[..4].iter().map(String::as_str).collect();
    // Each device of the first phase reports through a, b, a or b, a, b; devices at once.
    let reports = phase_one.iter().enumerate().map(|(d, device)| {
        let (a, b_api, report) = (&a, &b_api, &report);
        async move {
            for (i, s) in steps.iter().enumerate() {
                let api = if (d + i) % 2 == 0 { a } else { b_api };
                let r = report(api, device, s).await.expect("report");
                let code = r.status().as_u16();
                assert_eq!(
                    code,
                    200,
                    "{device} {s}: {}",
                    r.text().await.unwrap_or_default()
                );
            }
        }
    });
    futures_util::future::join_all(reports).await;
    for api in [&a, &b_api] {
        eventually(
            "both instances show phase 2 open",
            Duration::from_secs(10),
            || async {
                let v = view(api).await;
                v["openPhase"] == 1 && v["counts"]["succeeded"] == 4 && v["counts"]["offered"] == 4
            },
        )
        .await;
    }
    // The second phase starts through b; b dies; the devices finish through a.
    for device in &devices[4..] {
        let r = report(&b_api, device, "downloading").await.expect("report");
        assert_eq!(r.status().as_u16(), 200, "{device} downloading through b");
    }
    b.kill().expect("kill -9 ota@b");
    let _ = b.wait();
    for device in &devices[4..] {
        for s in &steps[1..] {
            let r = report(&a, device, s).await.expect("report");
            assert_eq!(r.status().as_u16(), 200, "{device} {s} through a");
        }
    }
    let v = view(&a).await;
    assert_eq!(v["status"]["state"], "finished", "{v}");
    assert_eq!(v["counts"]["succeeded"], 8, "{v}");
    for device in &devices {
        let (_, h) = node
            .get(&format!("{a}/rollout/name/r1/device/{device}"))
            .await;
        let got: Vec<&str> = h["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|e| e["status"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(got, steps, "{device}: each report once, in order: {h}");
    }
    // b started again reads the same rollout from the database.
    let _b = instance(&node, ("ota", "ota"), "b", port_b, Some(&log_b));
    eventually("ota@b back", Duration::from_secs(30), || async {
        view(&b_api).await["status"]["state"] == "finished"
    })
    .await;
}

/// Whether something answers `ping` on `port`.
async fn listening(node: &Node, port: u16) -> bool {
    node.http
        .get(format!("{}/api/v3/ping", node.url(port)))
        .send()
        .await
        .is_ok()
}

/// Two export instances take turns on one PostgreSQL lease, their queues on the data dir
/// they share: one runs, the other stands by without listening. The running one is killed
/// with kill -9 while 300 events wait in its queue for the cloud (down meanwhile); the
/// next instance to take the turn (the standby, or the killed one started again by
/// `outpost up`) sends them from the queue it finds, and sends on: every event arrives in
/// the cloud, once, and one instance runs at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_instances_take_turns_and_the_next_sends_what_a_killed_one_queued() {
    let db = outpost_testkit::postgres::server().database();
    let mut cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-t");
    let node = Node::start(&format!(
        "{}{}",
        cloud_export(&identity, "retry_initial_ms = 50\nretry_max_ms = 500"),
        db.table_toml("export.standby")
    ))
    .await;
    provision(&node, &["t1"]);
    let port_b = free_port();
    let log_b = node.dir.path().join("export-b.log");
    let _b = instance(&node, ("export", "export"), "b", port_b, Some(&log_b));
    eventually("export@b standing by", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("standing by"))
    })
    .await;
    assert!(!listening(&node, port_b).await, "a standby does not listen");
    let publish = |from: i64, to: i64| {
        let base = now_nanos();
        publish_events(&node, "t1", from..to, |i| base + i, value);
    };
    publish(0, 100);
    eventually(
        "100 events in the cloud",
        Duration::from_secs(30),
        || async { cloud.values("edge-t", "t1").await.len() == 100 },
    )
    .await;
    // The cloud goes away; 300 events wait in the running instance's queue.
    cloud.stop();
    publish(100, 400);
    eventually("300 events queued", Duration::from_secs(30), || async {
        crate::export::status(&node).await["queue"]["items"] == 300
    })
    .await;
    signal(node.pid("export"), "KILL");
    cloud.launch().await;
    publish(400, 500);
    eventually(
        "500 events in the cloud",
        Duration::from_secs(90),
        || async { cloud.values("edge-t", "t1").await.len() == 500 },
    )
    .await;
    let seen = cloud.values("edge-t", "t1").await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for i in 0..500 {
        assert!(seen.contains_key(&value(i)), "{} missing", value(i));
    }
    let (a, b) = (
        listening(&node, node.ports.export).await,
        listening(&node, port_b).await,
    );
    assert!(a != b, "one instance runs at a time: a {a}, b {b}");
}

/// Two rules instances take turns on one PostgreSQL lease: one runs the pipelines, the
/// other stands by. The running one is killed with kill -9; the next to take the turn (the
/// standby, or the killed one started again) runs the pipelines on the readings published
/// meanwhile (the durable session kept them) from the killed one's last checkpoint: every
/// one-second window comes out, the one open at the kill too, each once (an output made
/// again by the next instance has the same event ID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_instances_take_turns_and_the_next_runs_the_windows_after_a_kill_9() {
    let db = outpost_testkit::postgres::server().database();
    let node = Node::start(&format!(
        "{}{}",
        rules_config(
            r#"name = "win"
devices = ["w1"]
steps = [{ type = "tumbling", size_ms = 1000, functions = ["count"] }]"#
        ),
        db.table_toml("rules.standby")
    ))
    .await;
    provision(&node, &["w1"]);
    let port_b = free_port();
    let log_b = node.dir.path().join("rules-b.log");
    let _b = instance(&node, ("rules", "rules"), "b", port_b, Some(&log_b));
    eventually("rules@b standing by", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("standing by"))
    })
    .await;
    assert!(!listening(&node, port_b).await, "a standby does not listen");
    // Readings a second apart, each in its own window, a minute in the past: a window
    // closes when the next reading arrives.
    let base = (now_nanos() / 1_000_000_000 - 60) * 1_000_000_000;
    let publish = |from: i64, to: i64| {
        publish_events(&node, "w1", from..to, |i| base + i * 1_000_000_000, value);
    };
    // The windows' outputs as they leave rules: by origin (a window's end), each output's
    // event ID and count.
    let sub = MosquittoSub::start(node.ports.mqtt, "edgex/events/rules/win/#");
    let mut outputs = std::collections::HashMap::<i64, Vec<(String, String)>>::new();
    let mut windows = |until: Duration| {
        while let Some((_, payload)) = sub.next_line(until) {
            let v: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
            let ev = &v["payload"]["event"];
            let count = ev["readings"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["resourceName"] == "Temperature_count")
                .map(|r| r["value"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default();
            outputs
                .entry(ev["origin"].as_i64().unwrap_or(0))
                .or_default()
                .push((ev["id"].as_str().unwrap_or_default().to_string(), count));
        }
        outputs.clone()
    };
    publish(0, 11);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while windows(Duration::from_millis(200)).len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "10 windows out: {outputs:?}"
        );
    }
    signal(node.pid("rules"), "KILL");
    publish(11, 31);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while windows(Duration::from_millis(200)).len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "30 windows out: {outputs:?}"
        );
    }
    let seen = windows(Duration::from_millis(500));
    // A window's output has its end as origin; the window open when rules died (its
    // reading taken and checkpointed by the killed instance) comes out too. Each window
    // counts its one reading once, and an output made twice has one ID.
    for i in 0..30 {
        let origin = base + (i + 1) * 1_000_000_000;
        let out = seen
            .get(&origin)
            .unwrap_or_else(|| panic!("window {i} missing: {seen:?}"));
        assert!(
            out.iter()
                .all(|(id, count)| *id == out[0].0 && count == "1.0"),
            "window {i}: {out:?}"
        );
    }
    let (a, b) = (
        listening(&node, node.ports.rules).await,
        listening(&node, port_b).await,
    );
    assert!(a != b, "one instance runs at a time: a {a}, b {b}");
}

/// Two device-virtual instances take turns: one serves the devices (their autoEvents),
/// the other stands by without listening; when the serving one is killed with kill -9, the
/// next to take the turn serves them and their events go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_service_instances_take_turns_and_the_next_serves_after_a_kill_9() {
    let db = outpost_testkit::postgres::server().database();
    let node = Node::start(&format!(
        "[device_virtual]\nenabled = true\n{}",
        db.table_toml("device_virtual.standby")
    ))
    .await;
    let port_b = free_port();
    let log_b = node.dir.path().join("device-virtual-b.log");
    let _b = instance(
        &node,
        ("device-virtual", "device_virtual"),
        "b",
        port_b,
        Some(&log_b),
    );
    eventually(
        "device-virtual@b standing by",
        Duration::from_secs(30),
        || async { std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("standing by")) },
    )
    .await;
    assert!(!listening(&node, port_b).await, "a standby does not listen");
    let count = format!(
        "{}/api/v3/event/count/device/name/Random-Integer-Device",
        node.data()
    );
    let events = async || node.get(&count).await.1["count"].as_u64().unwrap_or(0);
    eventually("autoEvents stored", Duration::from_secs(60), || async {
        events().await > 0
    })
    .await;
    signal(node.pid("device-virtual"), "KILL");
    let at_kill = events().await;
    eventually(
        "autoEvents again after the kill",
        Duration::from_secs(90),
        || async { events().await > at_kill + 1 },
    )
    .await;
    let (a, b) = (
        listening(&node, node.ports.virtual_).await,
        listening(&node, port_b).await,
    );
    assert!(a != b, "one instance serves at a time: a {a}, b {b}");
}
