//! core-command's router against the real core-metadata (served on a socket), and for
//! commands the real device-rest in front of a small HTTP device, both on sockets, as
//! core-command reaches them in a node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use outpost_contracts::metadata::{DeviceCoreCommandResponse, MultiDeviceCoreCommandsResponse};
use outpost_contracts::value::ValueType;
use outpost_device_rest::DeviceRest;
use outpost_testkit::Drive;
use outpost_testkit::device::{DeviceNode, HttpDevice, json_numbers};
use outpost_testkit::metadata::{self, THERMOSTAT};
use outpost_testkit::{Served, Service, bus, free_port, within};
use serde_json::{Value, json};

use crate::{CoreCommand, check_flags};

async fn core_command(cfg: crate::Config, md: &Served) -> Service {
    within(
        "core-command builds",
        Service::build::<CoreCommand>(cfg, &[("core-metadata", md.url())]),
    )
    .await
}

/// The protocols of a device reached over HTTP at `port`.
fn rest(port: impl ToString) -> Value {
    json!({"REST": {"Host": "127.0.0.1", "Port": port.to_string()}})
}

/// What core-command lists for a Thermostat device `device`, served at `url`: the device
/// command first, then the resources without a command of their name.
fn thermostat_commands(device: &str, url: &str) -> Vec<(String, bool, bool, String, String)> {
    [
        ("Climate", true, false),
        ("Temperature", true, false),
        ("Humidity", true, false),
        ("Setpoint", true, true),
    ]
    .into_iter()
    .map(|(n, g, s)| {
        (
            n.to_string(),
            g,
            s,
            format!("/api/v3/device/name/{device}/{n}"),
            url.to_string(),
        )
    })
    .collect()
}

fn listed(
    cmds: &outpost_contracts::metadata::DeviceCoreCommand,
) -> Vec<(String, bool, bool, String, String)> {
    cmds.core_commands
        .iter()
        .map(|c| (c.name.clone(), c.get, c.set, c.path.clone(), c.url.clone()))
        .collect()
}

#[test]
fn flags_are_true_or_false() {
    let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    assert!(check_flags(&q("ds-pushevent", "true")).is_ok());
    assert!(check_flags(&q("ds-returnevent", "false")).is_ok());
    assert!(check_flags(&q("ds-returnevent", "yes")).is_err());
    assert!(check_flags(&q("other", "x")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_listed_from_the_profile_and_unknown_or_locked_devices_are_refused() {
    let (md, md_at) = metadata::serve(None).await;
    // Nothing listens there: commands that reach the service would fail with 503.
    metadata::add_device_service(&md, "device-rest", "http://127.0.0.1:1").await;
    metadata::add_profile_yaml(&md, THERMOSTAT, None).await;
    for (name, admin) in [("t1", "UNLOCKED"), ("t2", "LOCKED")] {
        let device = metadata::device(name, "device-rest").admin(admin);
        metadata::add_device(&md, &device.protocols(rest(1))).await;
    }
    let port = free_port();
    let cc = core_command(
        crate::Config {
            port,
            ..crate::Config::default()
        },
        &md_at,
    )
    .await;
    let own = format!("http://127.0.0.1:{port}");

    let b = cc
        .expect("GET", "/api/v3/device/all", None, StatusCode::OK)
        .await;
    assert_eq!(b["totalCount"], 2, "{b}");
    let all: MultiDeviceCoreCommandsResponse = serde_json::from_value(b).unwrap();
    let mut names: Vec<_> = all
        .device_core_commands
        .iter()
        .map(|d| d.device_name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["t1", "t2"]);
    for d in &all.device_core_commands {
        assert_eq!(d.profile_name, "Thermostat");
        assert_eq!(listed(d), thermostat_commands(&d.device_name, &own));
    }

    // Paging is core-metadata's: one device per page, two in all.
    let b = cc
        .expect(
            "GET",
            "/api/v3/device/all?offset=1&limit=1",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(b["totalCount"], 2, "{b}");
    assert_eq!(b["deviceCoreCommands"].as_array().map(Vec::len), Some(1));

    let b = cc
        .expect("GET", "/api/v3/device/name/t1", None, StatusCode::OK)
        .await;
    let one: DeviceCoreCommandResponse = serde_json::from_value(b).unwrap();
    assert_eq!(one.device_core_command.device_name, "t1");
    assert_eq!(
        listed(&one.device_core_command),
        thermostat_commands("t1", &own)
    );
    // A device command names the resources it reads, with their types.
    let climate = &one.device_core_command.core_commands[0];
    let params: Vec<_> = climate
        .parameters
        .iter()
        .map(|p| (p.resource_name.as_str(), p.value_type))
        .collect();
    assert_eq!(
        params,
        [
            ("Temperature", ValueType::Float64),
            ("Humidity", ValueType::Uint8)
        ]
    );

    // Unknown devices.
    let nope = "/api/v3/device/name/nope";
    let b = cc.expect("GET", nope, None, StatusCode::NOT_FOUND).await;
    assert_eq!(b["statusCode"], 404);
    let setpoint = || Some(json!({"Setpoint": "20"}));
    let nope = format!("{nope}/Setpoint");
    let nope = nope.as_str();
    let locked = "/api/v3/device/name/t2/Setpoint";
    let unlocked = "/api/v3/device/name/t1/Setpoint";
    for (method, uri, body, want) in [
        ("GET", nope, None, StatusCode::NOT_FOUND),
        ("PUT", nope, setpoint(), StatusCode::NOT_FOUND),
        // A locked device is refused before its service is asked (which would be a 503).
        ("GET", locked, None, StatusCode::LOCKED),
        ("PUT", locked, setpoint(), StatusCode::LOCKED),
        // Bad flags and settings that are not an object never leave core-command.
        (
            "GET",
            "/api/v3/device/name/t1/Setpoint?ds-pushevent=maybe",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            unlocked,
            Some(json!(["20"])),
            StatusCode::BAD_REQUEST,
        ),
        // Settings that set nothing.
        ("PUT", unlocked, Some(json!({})), StatusCode::BAD_REQUEST),
        // The unlocked device's service is asked, and cannot be reached.
        ("GET", unlocked, None, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let b = cc.expect(method, uri, body, want).await;
        if (method, uri) == ("GET", locked) {
            assert!(b["message"].as_str().unwrap().contains("locked"), "{b}");
        }
    }
    // A body over the node's limit is refused in EdgeX's form, like every other error.
    let big = Request::builder()
        .method("PUT")
        .uri(unlocked)
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; 10 * 1024 * 1024]))
        .unwrap();
    let (status, b) = cc.send(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b["statusCode"], 413, "{b}");
    assert_eq!(b["apiVersion"], "v3", "{b}");
    assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    md_at.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_device_through_its_device_service_and_the_answer_comes_back() {
    // device-rest, on the port it registers under in core-metadata: core-command finds it
    // by that record.
    let mut node = DeviceNode::start::<DeviceRest>(|port| outpost_device_rest::Config {
        port,
        ..outpost_device_rest::Config::default()
    })
    .await;
    let (device, device_port) = HttpDevice::start(
        "",
        &[
            ("Setpoint", "22.5"),
            ("Temperature", "19.25"),
            ("Humidity", "41"),
        ],
    )
    .await;
    let t1 = metadata::device("t1", "device-rest").protocols(rest(device_port));
    metadata::add_device(&node.md, &t1).await;
    node.known("t1").await;

    let cc = core_command(crate::Config::default(), &node.md_at).await;

    // A read: the device's value, as device-rest's event.
    let b = cc
        .expect(
            "GET",
            "/api/v3/device/name/t1/Setpoint",
            None,
            StatusCode::OK,
        )
        .await;
    let readings = b["event"]["readings"].as_array().unwrap();
    assert_eq!(b["event"]["deviceName"], "t1");
    assert_eq!(readings.len(), 1, "{b}");
    assert_eq!(readings[0]["resourceName"], "Setpoint");
    assert_eq!(readings[0]["valueType"], "Float64");
    let value: f64 = readings[0]["value"].as_str().unwrap().parse().unwrap();
    assert!((value - 22.5).abs() < 1e-9, "{b}");

    // A device command reads each of its resources.
    let b = cc
        .expect(
            "GET",
            "/api/v3/device/name/t1/Climate",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(
        json_numbers(&b["event"]),
        [
            ("Temperature".into(), "Float64".into(), 19.25),
            ("Humidity".into(), "Uint8".into(), 41.0)
        ]
    );

    // The query goes along: no event returned, one pushed on the bus.
    let req =
        Request::get("/api/v3/device/name/t1/Humidity?ds-pushevent=true&ds-returnevent=false")
            .body(Body::empty())
            .unwrap();
    let (s, _, body) = outpost_testkit::request(&cc.router, req).await;
    assert_eq!(s, StatusCode::OK);
    // No event: EdgeX's base response, as the API document says.
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        answer,
        serde_json::json!({"apiVersion": "v3", "statusCode": 200})
    );
    let pushed = bus::next(&mut node.events, "the pushed event").await;
    assert_eq!(
        pushed.topic,
        "edgex/events/device/device-rest/Thermostat/t1/Humidity"
    );
    let env = outpost_contracts::envelope::decode_event(&pushed.payload).unwrap();
    assert_eq!(env.payload.event.readings[0].value_type, ValueType::Uint8);

    // A write reaches the device with the value.
    let setpoint = "/api/v3/device/name/t1/Setpoint";
    let to = |value: &str| Some(json!({"Setpoint": value}));
    let b = cc.expect("PUT", setpoint, to("23"), StatusCode::OK).await;
    assert_eq!(b["statusCode"], 200, "{b}");
    assert_eq!(
        device.writes(),
        [("Setpoint".to_string(), "23".to_string())]
    );

    // The device service's refusals come back with their status, and reach no device.
    let b = cc
        .expect("PUT", setpoint, to("99"), StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(b["statusCode"], 400, "out of range: {b}");
    let read_only = json!({"Temperature": "20"});
    let climate = "/api/v3/device/name/t1/Climate";
    cc.expect(
        "PUT",
        climate,
        Some(read_only),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    let unknown = "/api/v3/device/name/t1/NoSuchCommand";
    let b = cc.expect("GET", unknown, None, StatusCode::NOT_FOUND).await;
    let message = b["message"].as_str().unwrap();
    assert!(message.contains("NoSuchCommand"), "{b}");
    assert_eq!(device.writes().len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_service_that_does_not_answer_in_time_is_a_504_and_one_that_is_away_a_503() {
    let (md, md_at) = metadata::serve(None).await;
    // A device service that takes requests and never answers them; it has no validation
    // endpoint (404), so core-metadata accepts its devices.
    let app = Router::new().route("/api/v3/device/name/{name}/{command}", get(hang).put(hang));
    let listener = within(
        "the silent service binds",
        tokio::net::TcpListener::bind("127.0.0.1:0"),
    )
    .await
    .unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let away = format!("http://127.0.0.1:{}", free_port());
    metadata::add_device_service(&md, "device-silent", &silent).await;
    metadata::add_device_service(&md, "device-away", &away).await;
    metadata::add_profile_yaml(&md, THERMOSTAT, None).await;
    for (name, service) in [("s1", "device-silent"), ("a1", "device-away")] {
        metadata::add_device(&md, &metadata::device(name, service)).await;
    }
    let cc = core_command(
        crate::Config {
            request_timeout_ms: 300,
            ..crate::Config::default()
        },
        &md_at,
    )
    .await;

    for method in ["GET", "PUT"] {
        let started = Instant::now();
        let body = (method == "PUT").then(|| json!({"Setpoint": "20"}));
        let (s, b) = cc
            .call(method, "/api/v3/device/name/s1/Setpoint", body)
            .await;
        let took = started.elapsed();
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{method}: {b}");
        assert!(
            b["message"].as_str().unwrap().contains("device-silent"),
            "{b}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{method} answered after {took:?}"
        );
    }

    let a1 = "/api/v3/device/name/a1/Setpoint";
    let b = cc
        .expect("GET", a1, None, StatusCode::SERVICE_UNAVAILABLE)
        .await;
    let message = b["message"].as_str().unwrap();
    assert!(message.contains("device-away"), "{b}");
    md_at.stop().await;
}

async fn hang() -> StatusCode {
    std::future::pending::<()>().await;
    StatusCode::OK
}
