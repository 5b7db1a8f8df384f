//! core-command's router against the real core-metadata (served on a socket), and for
//! commands the real device-rest in front of a small HTTP device, both on sockets, as
//! core-command reaches them in a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpost_bus::{Bus, Options};
use outpost_contracts::metadata::{
    DeviceCoreCommandResponse, DeviceProfile, MultiDeviceCoreCommandsResponse,
};
use outpost_contracts::value::ValueType;
use outpost_core_metadata::CoreMetadata;
use outpost_device_rest::DeviceRest;
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;
use outpost_testkit::{Mosquitto, Served, Service, context, free_port};
use serde_json::{Value, json};

use crate::{CoreCommand, check_flags};

const WAIT: Duration = Duration::from_secs(20);

const PROFILE: &str = include_str!("../../../examples/thermostat.yaml");

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real core-metadata, on the bus when a broker is given, served on a free port.
async fn core_metadata(broker: Option<&Mosquitto>) -> (Service, Served) {
    let mut test = context("core-metadata", &[]);
    if let Some(b) = broker {
        test = test.with_bus(&b.url());
    }
    let md = within(
        "core-metadata builds",
        Service::build_in::<CoreMetadata>(test, outpost_core_metadata::Config::default()),
    )
    .await;
    let served = within(
        "core-metadata serves",
        md.serve_at(([127, 0, 0, 1], 0).into()),
    )
    .await;
    (md, served)
}

async fn add(md: &Service, path: &str, key: &str, item: Value) {
    let (s, b) = md
        .call("POST", path, Some(json!([{"apiVersion": "v3", key: item}])))
        .await;
    assert_eq!(
        (s.as_u16(), b[0]["statusCode"].as_u64()),
        (207, Some(201)),
        "POST {path}: {b}"
    );
}

async fn add_service(md: &Service, name: &str, base_address: &str) {
    let service = json!({"name": name, "baseAddress": base_address, "adminState": "UNLOCKED"});
    add(md, "/api/v3/deviceservice", "service", service).await;
}

async fn add_profile(md: &Service) {
    let profile =
        serde_json::to_value(DeviceProfile::from_yaml(PROFILE).expect("profile")).expect("json");
    add(md, "/api/v3/deviceprofile", "profile", profile).await;
}

async fn add_device(md: &Service, name: &str, service: &str, admin: &str, protocols: Value) {
    let device = json!({"name": name, "serviceName": service, "profileName": "Thermostat",
        "adminState": admin, "operatingState": "UP", "protocols": protocols});
    add(md, "/api/v3/device", "device", device).await;
}

async fn core_command(cfg: crate::Config, md: &Served) -> Service {
    within(
        "core-command builds",
        Service::build::<CoreCommand>(cfg, &[("core-metadata", md.url())]),
    )
    .await
}

/// A device that speaks HTTP the way device-rest reaches it: `GET /<resource>` answers the
/// value as text, `PUT /<resource>` takes one.
#[derive(Clone, Default)]
struct HttpDevice {
    values: Arc<Mutex<HashMap<String, String>>>,
    writes: Arc<Mutex<Vec<(String, String)>>>,
}

impl HttpDevice {
    async fn start(values: &[(&str, &str)]) -> (Self, u16) {
        let dev = Self::default();
        dev.values.lock().unwrap().extend(
            values
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        let app = Router::new()
            .route("/{resource}", get(device_read).put(device_write))
            .with_state(dev.clone());
        let listener = within(
            "the device binds",
            tokio::net::TcpListener::bind("127.0.0.1:0"),
        )
        .await
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (dev, port)
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.writes.lock().unwrap().clone()
    }
}

async fn device_read(State(d): State<HttpDevice>, UrlPath(r): UrlPath<String>) -> Response {
    let value = d.values.lock().unwrap().get(&r).cloned();
    match value {
        Some(v) => v.into_response(),
        None => (StatusCode::NOT_FOUND, "no such resource").into_response(),
    }
}

async fn device_write(
    State(d): State<HttpDevice>,
    UrlPath(r): UrlPath<String>,
    body: String,
) -> StatusCode {
    d.writes.lock().unwrap().push((r.clone(), body.clone()));
    d.values.lock().unwrap().insert(r, body);
    StatusCode::OK
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
    let (md, md_at) = core_metadata(None).await;
    // Nothing listens there: commands that reach the service would fail with 503.
    add_service(&md, "device-rest", "http://127.0.0.1:1").await;
    add_profile(&md).await;
    let rest = json!({"REST": {"Host": "127.0.0.1", "Port": "1"}});
    add_device(&md, "t1", "device-rest", "UNLOCKED", rest.clone()).await;
    add_device(&md, "t2", "device-rest", "LOCKED", rest).await;
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

    let (s, b) = cc.call("GET", "/api/v3/device/all", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
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
    let (s, b) = cc
        .call("GET", "/api/v3/device/all?offset=1&limit=1", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["totalCount"], 2, "{b}");
    assert_eq!(b["deviceCoreCommands"].as_array().map(Vec::len), Some(1));

    let (s, b) = cc.call("GET", "/api/v3/device/name/t1", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
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
    let (s, b) = cc.call("GET", "/api/v3/device/name/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(b["statusCode"], 404);
    let (s, b) = cc
        .call("GET", "/api/v3/device/name/nope/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/nope/Setpoint",
            Some(json!({"Setpoint": "20"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // A locked device is refused before its service is asked (which would be a 503 here).
    let (s, b) = cc
        .call("GET", "/api/v3/device/name/t2/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::LOCKED, "{b}");
    assert!(b["message"].as_str().unwrap().contains("locked"), "{b}");
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/t2/Setpoint",
            Some(json!({"Setpoint": "20"})),
        )
        .await;
    assert_eq!(s, StatusCode::LOCKED, "{b}");

    // Bad flags and settings that are not an object never leave core-command.
    let (s, b) = cc
        .call(
            "GET",
            "/api/v3/device/name/t1/Setpoint?ds-pushevent=maybe",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!(["20"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

    // The unlocked device's service is asked, and cannot be reached.
    let (s, b) = cc
        .call("GET", "/api/v3/device/name/t1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    md_at.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_device_through_its_device_service_and_the_answer_comes_back() {
    let broker = Mosquitto::start();
    let (md, md_at) = core_metadata(Some(&broker)).await;
    let (device, device_port) = HttpDevice::start(&[
        ("Setpoint", "22.5"),
        ("Temperature", "19.25"),
        ("Humidity", "41"),
    ])
    .await;

    // device-rest, on the port it registers under in core-metadata: core-command finds it
    // by that record.
    let ds_port = free_port();
    let ds_cfg = outpost_device_rest::Config {
        port: ds_port,
        ..outpost_device_rest::Config::default()
    };
    let ds = within(
        "device-rest builds",
        Service::build_in::<DeviceRest>(
            context("device-rest", &[("core-metadata", md_at.url())]).with_bus(&broker.url()),
            ds_cfg,
        ),
    )
    .await;
    let ds_at = within(
        "device-rest serves",
        ds.serve_at(([127, 0, 0, 1], ds_port).into()),
    )
    .await;
    let registered = until("device-rest registers in core-metadata", async || {
        let (s, b) = md
            .call("GET", "/api/v3/deviceservice/name/device-rest", None)
            .await;
        (s == StatusCode::OK).then(|| b["service"]["baseAddress"].clone())
    })
    .await;
    assert_eq!(registered, ds_at.url());

    add_profile(&md).await;
    add_device(
        &md,
        "t1",
        "device-rest",
        "UNLOCKED",
        json!({"REST": {"Host": "127.0.0.1", "Port": device_port.to_string()}}),
    )
    .await;
    until("device-rest knows t1", async || {
        let (s, b) = ds
            .call("GET", "/api/v3/device/name/t1/NoSuchCommand", None)
            .await;
        (s == StatusCode::NOT_FOUND && b["message"].as_str()?.contains("NoSuchCommand"))
            .then_some(())
    })
    .await;

    let cc = core_command(crate::Config::default(), &md_at).await;

    // A read: the device's value, as device-rest's event.
    let (s, b) = cc
        .call("GET", "/api/v3/device/name/t1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let readings = b["event"]["readings"].as_array().unwrap();
    assert_eq!(b["event"]["deviceName"], "t1");
    assert_eq!(readings.len(), 1, "{b}");
    assert_eq!(readings[0]["resourceName"], "Setpoint");
    assert_eq!(readings[0]["valueType"], "Float64");
    let value: f64 = readings[0]["value"].as_str().unwrap().parse().unwrap();
    assert!((value - 22.5).abs() < 1e-9, "{b}");

    // A device command reads each of its resources.
    let (s, b) = cc.call("GET", "/api/v3/device/name/t1/Climate", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let got: Vec<_> = b["event"]["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resourceName"].as_str().unwrap().to_string(),
                r["value"].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Temperature".to_string(), 19.25),
            ("Humidity".to_string(), 41.0)
        ]
    );

    // The query goes along: no event returned, one pushed on the bus.
    let dir = tempfile::tempdir().unwrap();
    let bus_cfg = BusConfig {
        url: broker.url(),
        ..BusConfig::default()
    };
    let watcher = within(
        "the watcher connects",
        Bus::connect(
            &bus_cfg,
            dir.path(),
            "test",
            Options::plain("events-watcher"),
            &Shutdown::new(),
        ),
    )
    .await
    .unwrap();
    let mut events = within(
        "the watcher subscribes",
        watcher.subscribe("edgex/events/device/#"),
    )
    .await
    .unwrap();
    let req =
        Request::get("/api/v3/device/name/t1/Humidity?ds-pushevent=true&ds-returnevent=false")
            .body(Body::empty())
            .unwrap();
    let (s, _, body) = outpost_testkit::request(&cc.router, req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.is_empty(), "{body:?}");
    let pushed = within("the pushed event", events.recv()).await.unwrap();
    assert_eq!(
        pushed.topic,
        "edgex/events/device/device-rest/Thermostat/t1/Humidity"
    );
    let env = outpost_contracts::envelope::decode_event(&pushed.payload).unwrap();
    assert_eq!(env.payload.event.readings[0].value_type, ValueType::Uint8);

    // A write reaches the device with the value.
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!({"Setpoint": "23"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["statusCode"], 200, "{b}");
    assert_eq!(
        device.writes(),
        [("Setpoint".to_string(), "23".to_string())]
    );

    // The device service's refusals come back with their status, and reach no device.
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!({"Setpoint": "99"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "out of range: {b}");
    assert_eq!(b["statusCode"], 400, "{b}");
    let (s, b) = cc
        .call(
            "PUT",
            "/api/v3/device/name/t1/Climate",
            Some(json!({"Temperature": "20"})),
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "read-only: {b}");
    let (s, b) = cc
        .call("GET", "/api/v3/device/name/t1/NoSuchCommand", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("NoSuchCommand"),
        "{b}"
    );
    assert_eq!(device.writes().len(), 1);

    ds_at.stop().await;
    md_at.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_service_that_does_not_answer_in_time_is_a_504_and_one_that_is_away_a_503() {
    let (md, md_at) = core_metadata(None).await;
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
    add_service(&md, "device-silent", &silent).await;
    add_service(
        &md,
        "device-away",
        &format!("http://127.0.0.1:{}", free_port()),
    )
    .await;
    add_profile(&md).await;
    add_device(&md, "s1", "device-silent", "UNLOCKED", json!({"other": {}})).await;
    add_device(&md, "a1", "device-away", "UNLOCKED", json!({"other": {}})).await;
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

    let (s, b) = cc
        .call("GET", "/api/v3/device/name/a1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("device-away"),
        "{b}"
    );
    md_at.stop().await;
}

async fn hang() -> StatusCode {
    std::future::pending::<()>().await;
    StatusCode::OK
}
