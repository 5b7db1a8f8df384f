//! Events from a real MQTT client reach core-data and come back over REST and the CLI; bad
//! input is refused, counted, and changes nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn mqtt_events_are_persisted_and_queryable() {
    let node = Node::start("[bus]\nmax_payload_bytes = 4096\n").await;
    provision(&node, &["t1", "t2"]);

    // 2 devices x 100 events x 3 readings, through mosquitto_pub (QoS 1).
    let base = now_nanos();
    for dev in ["t1", "t2"] {
        let lines: Vec<String> = (0..100)
            .map(|i| {
                let t = format!("{}.25", 20 + i % 10);
                event_message(
                    dev,
                    base + i,
                    &[
                        ("Temperature", "Float64", &t),
                        ("Humidity", "Uint8", "40"),
                        ("Label", "String", "ok"),
                    ],
                )
                .1
            })
            .collect();
        let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic(dev), &lines, &[]);
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data = node.data();
    eventually("200 events in core-data", WAIT, || async {
        node.get(&format!("{data}/api/v3/event/count")).await.1["count"] == 200
    })
    .await;
    let (_, c) = node.get(&format!("{data}/api/v3/reading/count")).await;
    assert_eq!(c["count"], 600);

    // The newest Temperature of t1 is the last one published (i = 99 -> 29.25).
    let (s, r) = node
        .get(&format!(
            "{data}/api/v3/reading/device/name/t1/resourceName/Temperature?limit=1"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["totalCount"], 100);
    assert_eq!(r["readings"][0]["value"], "29.25");
    assert_eq!(r["readings"][0]["valueType"], "Float64");
    assert_eq!(r["readings"][0]["profileName"], "Thermostat");
    let (_, r) = node
        .get(&format!("{data}/api/v3/reading/device/name/t1/resourceName/Temperature?aggregateFunc=AVG&numeric=true"))
        .await;
    assert_eq!(r["readings"][0]["value"], json!(24.75));

    // The CLI sees the same data.
    let out = node.cli_ok(&[
        "readings",
        "--device",
        "t2",
        "--resource",
        "Humidity",
        "--since",
        "1h",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("CLI JSON");
    assert_eq!(v["totalCount"], 100);
    let (ok, out, _) = node.cli(&["readings", "--device", "t1", "--limit", "3"]);
    assert!(
        ok && out.contains("Temperature") && out.contains("29.25"),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["device", "list", "--label", "e2e", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("CLI JSON");
    assert_eq!(v["totalCount"], 2);
    let (ok, out, _) = node.cli(&["device", "show", "t1", "--json"]);
    assert!(
        ok && out.contains("\"profileName\": \"Thermostat\""),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["services", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("CLI JSON");
    // keeper, broker, metadata, data, command, the support services, gateway
    assert_eq!(v["totalCount"], node.registering());
}

#[tokio::test]
async fn bad_bus_input_is_counted_and_changes_nothing() {
    let node = Node::start("[bus]\nmax_payload_bytes = 4096\n").await;
    provision(&node, &["t1"]);
    let count = format!("{}/api/v3/event/count", node.data());
    // A good event of t1 from `origin`, published on the bus: then core-data has `stored`.
    let good = async |origin: i64, value: &str, stored: u64| {
        let (_, good) = event_message("t1", origin, &[("Temperature", "Float64", value)]);
        let published = mosquitto_pub(node.ports.mqtt, &event_topic("t1"), &good, &[]);
        assert!(published.status.success());
        eventually(&format!("good event {stored}"), WAIT, || async {
            node.get(&count).await.1["count"] == stored
        })
        .await;
    };
    let now = now_nanos();
    good(now, "21.5", 1).await;
    let data = node.data();

    let bad = [
        "garbage that is not an envelope".to_string(),
        "{\"payload\": {\"event\": 42}}".to_string(),
        event_message("ghost", now, &[("Temperature", "Float64", "1")]).1,
        event_message("t1", now, &[("Temperature", "Int32", "1")]).1,
        event_message("t1", now, &[("Temperature", "Float64", "500")]).1,
        event_message("t1", now, &[("NoSuchResource", "Float64", "1")]).1,
        event_message("t1", now, &[("Temperature", "Float64", "hot")]).1,
        format!("{{\"pad\": \"{}\"}}", "x".repeat(10_000)),
    ];
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic("t1"), &bad, &[]);
    assert!(out.status.success());
    eventually("every bad message to be counted", WAIT, || async {
        let invalid = node
            .metric(&data, "outpost_core_data_bus_messages_invalid_total")
            .await;
        let rejected = node
            .metric(&data, "outpost_core_data_events_rejected_total")
            .await;
        invalid == 3.0 && rejected == 5.0
    })
    .await;
    let (_, c) = node.get(&count).await;
    assert_eq!(c["count"], 1, "nothing bad was stored");
    // Still serving, and a good event still goes through.
    good(now + 1, "22.5", 2).await;
    let (s, h) = node.get(&format!("{data}/api/v3/health")).await;
    assert_eq!((s, h["status"].as_str()), (200, Some("UP")));
}

#[tokio::test]
async fn rest_ingest_status_codes() {
    let node = Node::start("").await;
    provision(&node, &["t1"]);
    let data = node.data();
    let url = format!("{data}/api/v3/event/device-mqtt/Thermostat/t1/Temperature");
    let msg = |device: &str, vt: &str, v: &str| -> Value {
        let (_, m) = event_message(device, now_nanos(), &[("Temperature", vt, v)]);
        let env: Value = serde_json::from_str(&m).expect("json");
        env["payload"].clone()
    };
    let good = msg("t1", "Float64", "20.5");
    let (s, body) = node.post(&url, &good).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["id"], good["event"]["id"]);
    let (s, _) = node.post(&url, &good).await;
    assert_eq!(s, 409, "duplicate id");
    let (s, body) = node.post(&url, &msg("t1", "Float64", "999")).await;
    assert_eq!(s, 400, "out of range: {body}");
    assert!(message_has(&body, "outside"), "{body}");
    let (s, _) = node.post(&url, &msg("t1", "Bool", "true")).await;
    assert_eq!(s, 400, "wrong type");
    let ghost_url = format!("{data}/api/v3/event/device-mqtt/Thermostat/ghost/Temperature");
    let (s, _) = node.post(&ghost_url, &msg("ghost", "Float64", "1")).await;
    assert_eq!(s, 404, "unknown device");
    let r = node
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"apiVersion\": \"v3\", \"event\": ")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 400);
    // The server closes a connection whose oversized body it refused, so use a client of
    // its own for it.
    let r = node
        .fresh_client()
        .post(&url)
        .body(vec![b'x'; 5 * 1024 * 1024])
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 413, "oversized body");
    let (_, c) = node.get(&format!("{data}/api/v3/event/count")).await;
    assert_eq!(c["count"], 1);
    // Every answer carries a correlation ID, the client's own when it sent one.
    let r = node
        .http
        .get(format!("{data}/api/v3/ping"))
        .header("X-Correlation-ID", "e2e-correlation-1")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.headers()["x-correlation-id"], "e2e-correlation-1");
    let r = node
        .http
        .get(format!("{data}/api/v3/version"))
        .send()
        .await
        .expect("GET");
    assert!(r.headers().contains_key("x-correlation-id"));
    let (s, body) = node.get(&format!("{data}/api/v3/no/such/route")).await;
    assert_eq!((s, body["statusCode"].as_u64()), (404, Some(404)));
    // Metadata's side of bad input.
    let (s, body) = node
        .post(
            &format!("{}/api/v3/device", node.metadata()),
            &json!([{"apiVersion": "v3", "device": {"name": "x"}}]),
        )
        .await;
    // An item failing its own validation (no service) refuses the body, as EdgeX does.
    assert_eq!((s, body["statusCode"].as_u64()), (400, Some(400)), "{body}");
}

#[tokio::test]
async fn unknown_devices_events_are_stored_unchecked_only_when_asked() {
    let node = Node::start("[core_data]\naccept_unknown_devices = true\n").await;
    provision(&node, &["t1"]);
    let data = node.data();
    let msg = |device: &str, v: &str| -> Value {
        let (_, m) = event_message(device, now_nanos(), &[("Temperature", "Float64", v)]);
        let env: Value = serde_json::from_str(&m).expect("json");
        env["payload"].clone()
    };
    // EdgeX's behaviour: stored, unchecked (999 is beyond the profile's maximum) and counted.
    let ghost = format!("{data}/api/v3/event/device-mqtt/Thermostat/ghost/Temperature");
    let (s, body) = node.post(&ghost, &msg("ghost", "999")).await;
    assert_eq!(s, 201, "{body}");
    let (_, c) = node
        .get(&format!("{data}/api/v3/event/count/device/name/ghost"))
        .await;
    assert_eq!(c["count"], 1);
    let skipped = node
        .metric(&data, "outpost_core_data_validation_skipped_total")
        .await;
    assert!(skipped >= 1.0, "skipped {skipped}");
    // A device core-metadata knows is still checked.
    let known = format!("{data}/api/v3/event/device-mqtt/Thermostat/t1/Temperature");
    let (s, body) = node.post(&known, &msg("t1", "999")).await;
    assert_eq!(s, 400, "{body}");
}

/// `outpost retention run`: a run by hand with the configured bounds, its progress on
/// standard error and its outcome on standard output; `--older-than` adds an age of its
/// own; `retention status --json` reports the last run.
#[tokio::test]
async fn retention_runs_by_hand_say_what_they_removed() {
    // The periodic pass ran at start, on an empty store, and waits an hour for its next.
    let node = Node::start(
        "[core_data.retention]\nmax_cap = 300\nmin_cap = 100\nchunk_readings = 100\n\
         interval_ms = 3600000\n",
    )
    .await;
    provision(&node, &["t1"]);
    let base = now_nanos();
    let lines: Vec<String> = (0..200)
        .map(|i| {
            event_message(
                "t1",
                base + i,
                &[
                    ("Temperature", "Float64", "20.5"),
                    ("Humidity", "Uint8", "40"),
                    ("Label", "String", "ok"),
                ],
            )
            .1
        })
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic("t1"), &lines, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = node.data();
    eventually("600 readings in core-data", WAIT, || async {
        node.get(&format!("{data}/api/v3/reading/count")).await.1["count"] == 600
    })
    .await;

    let (ok, out, err) = node.cli(&["retention", "run"]);
    assert!(ok, "{out}{err}");
    // Not a terminal: a line at each tenth of the way, the last at 100 %.
    assert!(
        err.contains("retention [##############################] 100.0% ")
            && err.contains("readings"),
        "{err}"
    );
    let (_, c) = node.get(&format!("{data}/api/v3/reading/count")).await;
    let left = c["count"].as_u64().expect("count");
    assert!(
        (97..=100).contains(&left),
        "at most min_cap readings remain: {c}"
    );
    assert!(
        out.starts_with("done (asked for")
            && out.contains(&format!("removed {} readings", 600 - left)),
        "{out}"
    );
    let status: Value =
        serde_json::from_str(&node.cli_ok(&["retention", "status", "--json"])).expect("JSON");
    let run = &status["run"];
    assert_eq!(
        (&run["trigger"], &run["state"], &run["toRemove"]),
        (&json!("request"), &json!("done"), &json!(500)),
        "{status}"
    );
    assert_eq!(run["removedReadings"], 600 - left, "{status}");
    assert_eq!(status["storedReadings"], left, "{status}");
    let human = node.cli_ok(&["retention", "status"]);
    assert!(
        human.contains("over 300 readings, the oldest go until 100 remain")
            && human.contains(&format!("stored     {left} readings")),
        "{human}"
    );

    // An age of its own: everything published is older than a second by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ok, out, err) = node.cli(&["retention", "run", "--older-than", "1s", "--json"]);
    assert!(ok, "{out}{err}");
    let end: Value = serde_json::from_str(&out).expect("retention run --json is JSON");
    assert_eq!(
        (
            &end["run"]["maxAgeSeconds"],
            &end["run"]["removedReadings"],
            &end["storedReadings"]
        ),
        (&json!(1), &json!(left), &json!(0)),
        "{end}"
    );
    // Not a duration: a usage error that says what is expected.
    let (ok, _, err) = node.cli(&["retention", "run", "--older-than", "a week"]);
    assert!(!ok && err.contains("is not a duration"), "{err}");
}
