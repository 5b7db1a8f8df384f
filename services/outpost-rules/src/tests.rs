//! Router tests (the service built as the node builds it, driven without sockets), the
//! engine on events, and the pipelines on a real broker.

use axum::http::StatusCode;
use outpost_contracts::common::BaseRequest;
use outpost_contracts::event::{AddEventRequest, Event, Reading, ReadingValue};
use outpost_contracts::export::Alert;
use outpost_contracts::topics;
use outpost_contracts::value::ValueType;
use outpost_testkit::Drive;
use outpost_testkit::bus::{Client, next};
use outpost_testkit::{Mosquitto, Service, WAIT, context, until};
use serde_json::{Value, json};

use crate::engine::{Engine, Metrics};
use crate::pipeline::PipelineSpec;
use crate::{Config, Rules};

fn spec(name: &str) -> Value {
    json!({"name": name, "devices": ["tank-*"], "resources": ["level"],
        "steps": [{"type": "tumbling", "size_ms": 1000, "functions": ["max", "count"]}],
        "alerts": [{"above": 80.0, "severity": "critical", "message": "too full"}]})
}

fn config(configured: &[&str]) -> Config {
    Config {
        pipelines: configured
            .iter()
            .map(|n| serde_json::from_value(spec(n)).unwrap())
            .collect(),
        ..Config::default()
    }
}

/// rules on a bus nowhere: the router is tested alone.
async fn rules(cfg: Config) -> Service {
    Service::build_in::<Rules>(context("rules", &[]).off_bus(), cfg).await
}

/// Adds pipeline `name` (see [`spec`]) over the API, which must answer `want`.
async fn add(svc: &Service, name: &str, want: StatusCode) -> Value {
    svc.expect("POST", "/api/v3/pipeline", Some(spec(name)), want)
        .await
}

/// The pipelines' names and sources, as listed.
async fn listed(svc: &Service) -> Vec<(String, String)> {
    let body = svc
        .expect("GET", "/api/v3/pipeline/all", None, StatusCode::OK)
        .await;
    let list = body["pipelines"].as_array().unwrap();
    assert_eq!(body["totalCount"], list.len());
    list.iter()
        .map(|p| {
            (
                p["pipeline"]["name"].as_str().unwrap().to_string(),
                p["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
        .collect()
}

#[tokio::test]
async fn pipelines_are_added_listed_and_removed_over_the_api() {
    let svc = rules(config(&["configured"])).await;

    let body = add(&svc, "added", StatusCode::CREATED).await;
    assert_eq!(body["name"], "added");
    // A name that runs already, added or configured.
    for name in ["added", "configured"] {
        add(&svc, name, StatusCode::CONFLICT).await;
    }
    // Specs that cannot run.
    let mut no_work = spec("idle");
    no_work["steps"] = json!([]);
    no_work["alerts"] = json!([]);
    let mut window_first = spec("window-first");
    window_first["steps"] = json!([{"type": "tumbling", "size_ms": 1000},
        {"type": "deadband", "delta": 1.0}]);
    let mut unknown_field = spec("typo");
    unknown_field["stepz"] = json!([]);
    for bad in [
        spec("bad name"),
        no_work,
        window_first,
        unknown_field,
        json!("x"),
    ] {
        svc.expect(
            "POST",
            "/api/v3/pipeline",
            Some(bad.clone()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_eq!(
        listed(&svc).await,
        pairs(&[("configured", "config"), ("added", "api")])
    );

    let one = svc
        .expect("GET", "/api/v3/pipeline/name/added", None, StatusCode::OK)
        .await;
    assert_eq!(one["statusCode"], 200);
    assert_eq!(one["source"], "api");
    assert_eq!(one["pipeline"]["steps"][0]["size_ms"], 1000);
    assert_eq!(one["pipeline"]["alerts"][0]["severity"], "critical");
    for counter in ["readingsIn", "readingsOut", "eventsOut", "alerts", "late"] {
        assert_eq!(one[counter], 0, "{counter}");
    }
    assert_eq!(one["reduction"], Value::Null, "nothing out yet");

    // A configured pipeline is removed in the file, not here.
    svc.expect(
        "DELETE",
        "/api/v3/pipeline/name/configured",
        None,
        StatusCode::CONFLICT,
    )
    .await;
    svc.expect(
        "DELETE",
        "/api/v3/pipeline/name/added",
        None,
        StatusCode::OK,
    )
    .await;
    for method in ["GET", "DELETE"] {
        svc.expect(
            method,
            "/api/v3/pipeline/name/added",
            None,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    assert_eq!(listed(&svc).await, pairs(&[("configured", "config")]));
    // Removed, the name can be used again.
    add(&svc, "added", StatusCode::CREATED).await;

    // Not subscribed (no bus here): the health check says so.
    let body = svc
        .expect(
            "GET",
            "/api/v3/health",
            None,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    assert!(body.to_string().contains("not subscribed yet"), "{body}");
}

#[tokio::test]
async fn pipelines_added_over_the_api_survive_a_restart_and_the_file_wins_a_name() {
    let svc = rules(config(&["configured"])).await;
    for name in ["kept", "gone", "later-configured"] {
        add(&svc, name, StatusCode::CREATED).await;
    }
    svc.expect("DELETE", "/api/v3/pipeline/name/gone", None, StatusCode::OK)
        .await;

    let svc = Service::build_in::<Rules>(svc.stop().await, config(&["configured"])).await;
    assert_eq!(
        listed(&svc).await,
        pairs(&[
            ("configured", "config"),
            ("kept", "api"),
            ("later-configured", "api"),
        ])
    );
    let (_, one) = svc.call("GET", "/api/v3/pipeline/name/kept", None).await;
    let parse = |v: Value| serde_json::from_value::<PipelineSpec>(v).unwrap();
    assert_eq!(
        parse(one["pipeline"].clone()),
        parse(spec("kept")),
        "the spec as it was added"
    );

    // The file now defines a pipeline of that name: the file's runs, once, and cannot be
    // removed over the API.
    let mut cfg = config(&["configured", "later-configured"]);
    cfg.pipelines[1].alerts.clear();
    let svc = Service::build_in::<Rules>(svc.stop().await, cfg).await;
    assert_eq!(
        listed(&svc).await,
        pairs(&[
            ("configured", "config"),
            ("later-configured", "config"),
            ("kept", "api"),
        ])
    );
    let (_, one) = svc
        .call("GET", "/api/v3/pipeline/name/later-configured", None)
        .await;
    assert_eq!(one["pipeline"]["alerts"], json!([]), "the file's spec");
    svc.expect(
        "DELETE",
        "/api/v3/pipeline/name/later-configured",
        None,
        StatusCode::CONFLICT,
    )
    .await;
}

fn engine(specs: &[Value]) -> Engine {
    let specs: Vec<PipelineSpec> = specs
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    Engine::new(
        specs,
        Vec::new(),
        "edgex".into(),
        Metrics {
            readings_in: "test_readings_in_total",
            readings_out: "test_readings_out_total",
            alerts: "test_alerts_total",
            late: "test_late_total",
            skipped: "test_not_numeric_total",
        },
    )
}

fn reading(resource: &str, value_type: ValueType, value: &str, origin: i64) -> Reading {
    Reading {
        id: uuid::Uuid::new_v4().to_string(),
        origin,
        device_name: "tank-1".into(),
        resource_name: resource.into(),
        profile_name: "Tank".into(),
        value_type,
        value: ReadingValue::Simple(value.into()),
        ..Reading::default()
    }
}

fn event(device: &str, origin: i64, readings: Vec<Reading>) -> Event {
    Event {
        api_version: "v3".into(),
        id: uuid::Uuid::new_v4().to_string(),
        device_name: device.into(),
        profile_name: "Tank".into(),
        source_name: "level".into(),
        origin,
        readings,
        tags: None,
    }
}

const S: i64 = 1_000_000_000;
/// An origin on a second boundary (2023-11-14).
const T0: i64 = 1_700_000_000 * S;

#[test]
fn the_engine_takes_numbers_and_booleans_of_the_devices_and_resources_it_filters() {
    let e = engine(&[json!({"name": "pass", "devices": ["tank-*"],
        "steps": [{"type": "range", "min": 0.0}],
        "alerts": [{"above": 0.5, "severity": "info"}]})]);
    let readings = vec![
        reading("level", ValueType::Float64, "42.5", T0),
        // No origin of its own: the event's.
        reading("open", ValueType::Bool, "true", 0),
        reading("label", ValueType::String, "north", T0),
        reading("level", ValueType::Float64, "NaN", T0),
        reading("level", ValueType::Float64, "-3", T0),
    ];
    let out = e.process(&event("tank-1", T0 + 5, readings));
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(
        (o.pipeline.as_str(), o.device.as_str(), o.profile.as_str()),
        ("pass", "tank-1", "Tank")
    );
    let samples: Vec<_> = o
        .samples
        .iter()
        .map(|s| (s.name.as_str(), s.value, s.origin))
        .collect();
    // -3 is out of range; the text and NaN are no numbers.
    assert_eq!(samples, vec![("level", 42.5, T0), ("open", 1.0, T0 + 5)]);
    // Alerts fire per resource, on the edge.
    let alerts: Vec<_> = o
        .alerts
        .iter()
        .map(|a| {
            (
                a.resource_name.as_str(),
                a.value.as_str(),
                a.severity.as_str(),
            )
        })
        .collect();
    assert_eq!(
        alerts,
        vec![("level", "42.5", "info"), ("open", "1.0", "info")]
    );
    assert_eq!(e.get("pass").unwrap().totals().readings_in, 3);

    // Another device is not this pipeline's.
    let other = e.process(&event(
        "pump-1",
        T0,
        vec![reading("level", ValueType::Float64, "1", T0)],
    ));
    assert!(other.is_empty());
}

#[test]
fn windows_close_on_a_later_reading_or_by_the_clock_and_late_readings_are_counted() {
    let e = engine(&[spec("tank")]);
    let first = e.process(&event(
        "tank-1",
        T0,
        vec![
            reading("level", ValueType::Float64, "50", T0),
            reading("level", ValueType::Float64, "70", T0 + S / 2),
        ],
    ));
    assert!(first.is_empty(), "the window is open, nothing above 80");
    let next = e.process(&event(
        "tank-1",
        T0 + S,
        vec![reading("level", ValueType::Float64, "10", T0 + S)],
    ));
    let samples: Vec<_> = next[0]
        .samples
        .iter()
        .map(|s| (s.name.as_str(), s.value, s.origin))
        .collect();
    assert_eq!(
        samples,
        vec![("level_max", 70.0, T0 + S), ("level_count", 2.0, T0 + S)]
    );
    // Too late for the closed window.
    e.process(&event(
        "tank-1",
        T0,
        vec![reading("level", ValueType::Float64, "1", T0 + 1)],
    ));
    assert_eq!(e.get("tank").unwrap().totals().late, 1);
    // Nothing ends before its end; the clock past it closes it.
    assert!(e.flush(T0 + S).is_empty());
    let flushed = e.flush(T0 + 2 * S);
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].samples[1].name, "level_count");
    assert_eq!(flushed[0].samples[1].value, 1.0);
}

#[test]
fn checkpointed_chains_go_on_where_they_were_in_another_engine_and_a_changed_spec_starts_afresh() {
    let e = engine(&[spec("tank")]);
    assert!(e.checkpoint().is_empty(), "nothing changed yet");
    e.process(&event(
        "tank-1",
        T0,
        vec![
            reading("level", ValueType::Float64, "50", T0),
            reading("level", ValueType::Float64, "70", T0 + S / 2),
        ],
    ));
    let rows = e.checkpoint();
    assert_eq!(rows.len(), 1, "one chain changed");
    assert!(e.checkpoint().is_empty(), "taken as stored");
    // A store that refused: the chain goes with the next checkpoint.
    e.redirty(&rows);
    assert_eq!(e.checkpoint(), rows);

    // The next engine (a restart, the next instance) takes the open window back: the
    // reading that closes it counts what the first engine had gathered.
    let next = engine(&[spec("tank")]);
    assert_eq!(next.restore(rows.clone()), 1);
    let out = next.process(&event(
        "tank-1",
        T0 + S,
        vec![reading("level", ValueType::Float64, "10", T0 + S)],
    ));
    let samples: Vec<_> = out[0]
        .samples
        .iter()
        .map(|s| (s.name.as_str(), s.value))
        .collect();
    assert_eq!(samples, vec![("level_max", 70.0), ("level_count", 2.0)]);
    // The same output made twice (readings delivered again) has one event ID.
    let again = engine(&[spec("tank")]);
    again.restore(rows.clone());
    let twice = again.process(&event(
        "tank-1",
        T0 + S,
        vec![reading("level", ValueType::Float64, "10", T0 + S)],
    ));
    assert_eq!(twice, out);
    let as_event = |o: &crate::engine::Output, origin| {
        crate::engine::event(
            &o.pipeline,
            &o.device,
            &o.profile,
            origin,
            o.samples.clone(),
        )
    };
    let (first, second) = (as_event(&out[0], T0 + S), as_event(&twice[0], T0 + S));
    assert_eq!(first.id, second.id);
    assert_eq!(first.readings[1].id, second.readings[1].id);
    assert_ne!(first.readings[0].id, first.readings[1].id);
    assert_ne!(as_event(&out[0], T0 + 2 * S).id, first.id, "another window");

    // Under another spec (a changed window), the stored chain is not taken back.
    let mut changed = spec("tank");
    changed["steps"][0]["size_ms"] = json!(2000);
    let other = engine(&[changed]);
    assert_eq!(other.restore(rows), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_events_on_the_bus_come_out_as_the_pipelines_events_and_alerts() {
    let broker = Mosquitto::start();
    let svc = Service::build_in::<Rules>(
        context("rules", &[]).with_bus(&broker.url()),
        Config::default(),
    )
    .await;
    add(&svc, "tank", StatusCode::CREATED).await;
    // Its session exists once it is subscribed: what is published from then on is its.
    until("rules subscribed to device events", WAIT, async || {
        (svc.call("GET", "/api/v3/health", None).await.0 == StatusCode::OK).then_some(())
    })
    .await;

    let client = Client::connect(&broker.url(), "rules-test-client").await;
    let base = client.cfg.base_topic.clone();
    let mut events = client.subscribe(&format!("{base}/events/rules/#")).await;
    let mut alerts = client
        .subscribe(&format!("{}#", topics::alerts_prefix(&base)))
        .await;
    let bus = &client.bus;

    // One event: a reading above the alert's threshold, and one in the next window, which
    // closes the first.
    let ev = event(
        "tank-1",
        T0,
        vec![
            reading("level", ValueType::Float64, "50", T0),
            reading("level", ValueType::Float64, "90", T0 + S / 2),
            reading("temperature", ValueType::Float64, "20", T0),
            reading("level", ValueType::Float64, "20", T0 + S + S / 5),
        ],
    );
    let topic = topics::event(&base, "device-virtual", "Tank", "tank-1", "level");
    bus.publish_event(
        &topic,
        &AddEventRequest {
            base: BaseRequest::default(),
            event: ev,
        },
    )
    .await
    .expect("published");

    let d = next(&mut alerts, "the alert").await;
    assert_eq!(d.topic, topics::alert(&base, "tank", "tank-1"));
    let alert: Alert = bus.decode(&d).expect("an alert").payload;
    assert_eq!(
        (
            alert.pipeline.as_str(),
            alert.device_name.as_str(),
            alert.resource_name.as_str(),
            alert.value.as_str(),
            alert.severity.as_str(),
            alert.message.as_str(),
            alert.origin,
        ),
        (
            "tank",
            "tank-1",
            "level",
            "90.0",
            "critical",
            "too full",
            T0 + S / 2
        )
    );
    assert!(alert.condition.contains("> 80"), "{}", alert.condition);

    // The first window, closed by the later reading; the second closes by the clock.
    let mut windows = Vec::new();
    while windows.len() < 2 {
        let d = next(&mut events, "the pipeline's events").await;
        assert_eq!(
            d.topic,
            topics::rules_event(&base, "tank", "Tank", "tank-1")
        );
        let out = bus.decode_event(&d).expect("an event").payload.event;
        assert_eq!(
            (out.device_name.as_str(), out.source_name.as_str()),
            ("tank-1", "tank")
        );
        let values: Vec<_> = out
            .readings
            .iter()
            .map(|r| match &r.value {
                ReadingValue::Simple(v) => (r.resource_name.clone(), v.clone(), r.value_type),
                other => panic!("{other:?}"),
            })
            .collect();
        windows.push((out.origin, values));
    }
    windows.sort_by_key(|(origin, _)| *origin);
    let f = |n: &str, v: &str| (n.to_string(), v.to_string(), ValueType::Float64);
    assert_eq!(
        windows,
        vec![
            (
                T0 + S,
                vec![f("level_max", "90.0"), f("level_count", "2.0")]
            ),
            (
                T0 + 2 * S,
                vec![f("level_max", "20.0"), f("level_count", "1.0")]
            ),
        ]
    );

    let counts = until("the pipeline counted what went out", WAIT, async || {
        let (_, v) = svc.call("GET", "/api/v3/pipeline/name/tank", None).await;
        (v["eventsOut"] == 2).then_some(v)
    })
    .await;
    assert_eq!(counts["readingsIn"], 3, "{counts}");
    assert_eq!(counts["readingsOut"], 4, "{counts}");
    assert_eq!(counts["alerts"], 1, "{counts}");
    assert_eq!(counts["late"], 0, "{counts}");
    assert_eq!(counts["reduction"], 0.75, "{counts}");
    bus.disconnect().await;
    svc.stop().await;
}
