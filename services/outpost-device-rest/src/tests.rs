//! device-rest's router, built as the node builds it, against the real core-metadata (on a
//! socket, announcing its changes on a real broker), with its events watched on that
//! broker and its commands answered by a small HTTP device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use outpost_bus::{Bus, Delivery, Options};
use outpost_contracts::event::{Event, ReadingValue};
use outpost_contracts::metadata::DeviceProfile;
use outpost_contracts::value::ValueType;
use outpost_core_metadata::CoreMetadata;
use outpost_kit::Shutdown;
use outpost_kit::config::BusConfig;
use outpost_testkit::{Mosquitto, Served, Service, context, free_port};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{Config, DeviceRest, RestConfig};

const WAIT: Duration = Duration::from_secs(20);

const PROFILE: &str = include_str!("../../../examples/thermostat.yaml");

const T1_SECRET: &str = "t1-secret-0123456789";
const T2_SECRET: &str = "t2-secret-0123456789";
const LOCKED_SECRET: &str = "tl-secret-0123456789";
const OTHER_SECRET: &str = "o1-secret-0123456789";

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

/// A device that speaks HTTP the way device-rest reaches it: `GET <prefix>/<resource>`
/// answers the value as text, `PUT <prefix>/<resource>` takes one.
#[derive(Clone, Default)]
struct HttpDevice {
    values: Arc<Mutex<HashMap<String, String>>>,
    writes: Arc<Mutex<Vec<(String, String)>>>,
}

impl HttpDevice {
    async fn start(prefix: &str, values: &[(&str, &str)]) -> (Self, u16) {
        let dev = Self::default();
        dev.values.lock().unwrap().extend(
            values
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        let app = Router::new()
            .route(
                &format!("{prefix}/{{resource}}"),
                get(device_read).put(device_write),
            )
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

/// A broker, core-metadata on it with the Thermostat profile, device-rest (served on the
/// address it registers) with its devices loaded, and a watcher of device events.
struct Node {
    md: Service,
    md_at: Served,
    ds: Service,
    ds_at: Served,
    events: UnboundedReceiver<Delivery>,
    _watcher: Bus,
    _watcher_dir: tempfile::TempDir,
    _broker: Mosquitto,
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

impl Node {
    async fn start(driver: RestConfig) -> Self {
        let broker = Mosquitto::start();
        let md = within(
            "core-metadata builds",
            Service::build_in::<CoreMetadata>(
                context("core-metadata", &[]).with_bus(&broker.url()),
                outpost_core_metadata::Config::default(),
            ),
        )
        .await;
        let md_at = within(
            "core-metadata serves",
            md.serve_at(([127, 0, 0, 1], 0).into()),
        )
        .await;
        let port = free_port();
        let ds = within(
            "device-rest builds",
            Service::build_in::<DeviceRest>(
                context("device-rest", &[("core-metadata", md_at.url())]).with_bus(&broker.url()),
                Config {
                    port,
                    driver,
                    ..Config::default()
                },
            ),
        )
        .await;
        let ds_at = within(
            "device-rest serves",
            ds.serve_at(([127, 0, 0, 1], port).into()),
        )
        .await;
        let watcher_dir = tempfile::tempdir().unwrap();
        let bus_cfg = BusConfig {
            url: broker.url(),
            ..BusConfig::default()
        };
        let watcher = within(
            "the watcher connects",
            Bus::connect(
                &bus_cfg,
                watcher_dir.path(),
                "test",
                Options::plain("events-watcher"),
                &Shutdown::new(),
            ),
        )
        .await
        .unwrap();
        let events = within(
            "the watcher subscribes",
            watcher.subscribe("edgex/events/device/#"),
        )
        .await
        .unwrap();
        let node = Self {
            md,
            md_at,
            ds,
            ds_at,
            events,
            _watcher: watcher,
            _watcher_dir: watcher_dir,
            _broker: broker,
        };
        // Devices added once device-rest is registered are validated by it and reach it
        // as core-metadata's changes.
        until("device-rest registers in core-metadata", async || {
            let (s, b) = node
                .md
                .call("GET", "/api/v3/deviceservice/name/device-rest", None)
                .await;
            (s == StatusCode::OK && b["service"]["baseAddress"] == node.ds_at.url()).then_some(())
        })
        .await;
        let profile = serde_json::to_value(DeviceProfile::from_yaml(PROFILE).expect("profile"))
            .expect("json");
        add(&node.md, "/api/v3/deviceprofile", "profile", profile).await;
        node
    }

    /// Adds a device of `service` with `protocols` and, when given, its secret.
    async fn device(
        &self,
        name: &str,
        service: &str,
        admin: &str,
        protocols: Value,
        secret: Option<&str>,
    ) {
        let device = json!({"name": name, "serviceName": service, "profileName": "Thermostat",
            "adminState": admin, "operatingState": "UP", "protocols": protocols});
        add(&self.md, "/api/v3/device", "device", device).await;
        if let Some(secret) = secret {
            let (s, b) = self
                .md
                .call(
                    "PUT",
                    &format!("/api/v3/device/name/{name}/secret"),
                    Some(json!({"apiVersion": "v3", "secret": secret})),
                )
                .await;
            assert!(s.is_success(), "{b}");
        }
    }

    /// Waits until device-rest has device `name` (it then tells an unknown command from an
    /// unknown device).
    async fn known(&self, name: &str) {
        until(&format!("device-rest knows {name}"), async || {
            let (s, b) = self
                .ds
                .call(
                    "GET",
                    &format!("/api/v3/device/name/{name}/NoSuchCommand"),
                    None,
                )
                .await;
            (s == StatusCode::NOT_FOUND && b["message"].as_str()?.contains("NoSuchCommand"))
                .then_some(())
        })
        .await;
    }

    async fn post(
        &self,
        path: &str,
        auth: Option<&str>,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(path).header(header::CONTENT_TYPE, content_type);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let (s, _, bytes) =
            outpost_testkit::request(&self.ds.router, req.body(body.into()).unwrap()).await;
        (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The next device event on the bus, with its topic.
    async fn next_event(&mut self) -> (String, Event) {
        let d = within("a device event", self.events.recv())
            .await
            .expect("the watcher is subscribed");
        let env = outpost_contracts::envelope::decode_event(&d.payload).unwrap();
        (d.topic.clone(), env.payload.event)
    }

    async fn metric(&self, name: &str, reason: &str) -> u64 {
        let req = Request::get("/metrics").body(Body::empty()).unwrap();
        let (s, _, body) = outpost_testkit::request(&self.ds.router, req).await;
        assert_eq!(s, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let series = format!("{name}{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    async fn stop(self) {
        self.ds_at.stop().await;
        self.md_at.stop().await;
    }
}

fn bearer(secret: &str) -> Option<String> {
    Some(format!("Bearer {secret}"))
}

fn simple(v: &ReadingValue) -> &str {
    match v {
        ReadingValue::Simple(s) => s,
        other => panic!("not a simple value: {other:?}"),
    }
}

fn float(v: &ReadingValue) -> f64 {
    simple(v).parse().unwrap()
}

/// The protocols of a device that only pushes readings (no REST block for commands).
fn push_only() -> Value {
    json!({"other": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_posted_with_the_device_secret_is_published_as_an_event_of_the_resource_type() {
    let mut node = Node::start(RestConfig::default()).await;
    node.device(
        "t1",
        "device-rest",
        "UNLOCKED",
        push_only(),
        Some(T1_SECRET),
    )
    .await;
    node.known("t1").await;
    let auth = bearer(T1_SECRET);

    let (s, b) = node
        .post(
            "/api/v3/resource/t1/Temperature",
            auth.as_deref(),
            "text/plain",
            "21.5",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (topic, ev) = node.next_event().await;
    assert_eq!(
        topic,
        "edgex/events/device/device-rest/Thermostat/t1/Temperature"
    );
    assert_eq!(
        (
            ev.device_name.as_str(),
            ev.profile_name.as_str(),
            ev.source_name.as_str()
        ),
        ("t1", "Thermostat", "Temperature")
    );
    assert_eq!(ev.readings.len(), 1);
    let r = &ev.readings[0];
    assert_eq!(
        (r.resource_name.as_str(), r.value_type, r.units.as_str()),
        ("Temperature", ValueType::Float64, "C")
    );
    assert!((float(&r.value) - 21.5).abs() < 1e-9, "{r:?}");

    let (s, b) = node
        .post(
            "/api/v3/resource/t1/Humidity",
            auth.as_deref(),
            "text/plain",
            "42",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.readings[0].resource_name, "Humidity");
    assert_eq!(ev.readings[0].value_type, ValueType::Uint8);
    assert_eq!(simple(&ev.readings[0].value), "42");

    // Several resources at once, with the device's own timestamp (milliseconds).
    let (s, b) = node
        .post(
            "/api/v3/resource/t1",
            auth.as_deref(),
            "application/json",
            json!({"Temperature": 20.25, "Humidity": 40, "timestamp": 1_700_000_000_000_i64})
                .to_string(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (topic, ev) = node.next_event().await;
    assert_eq!(
        topic,
        "edgex/events/device/device-rest/Thermostat/t1/telemetry"
    );
    assert_eq!(ev.origin, 1_700_000_000_000_000_000);
    let mut got: Vec<_> = ev
        .readings
        .iter()
        .map(|r| (r.resource_name.as_str(), r.value_type, float(&r.value)))
        .collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        got,
        [
            ("Humidity", ValueType::Uint8, 40.0),
            ("Temperature", ValueType::Float64, 20.25)
        ]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_without_the_device_s_own_secret_is_refused_and_publishes_nothing() {
    let mut node = Node::start(RestConfig::default()).await;
    node.device(
        "t1",
        "device-rest",
        "UNLOCKED",
        push_only(),
        Some(T1_SECRET),
    )
    .await;
    node.device(
        "t2",
        "device-rest",
        "UNLOCKED",
        push_only(),
        Some(T2_SECRET),
    )
    .await;
    node.known("t1").await;
    node.known("t2").await;
    let rejected = "outpost_device_rest_device_messages_rejected_total";
    let bad_tokens = node.metric(rejected, "bad_token").await;

    let path = "/api/v3/resource/t1/Temperature";
    for (why, auth) in [
        ("no token", None),
        ("an empty token", Some("Bearer ".to_string())),
        ("not a bearer token", Some(format!("Basic {T1_SECRET}"))),
        ("a wrong token", bearer("not-the-secret-of-t1")),
        ("another device's token", bearer(T2_SECRET)),
    ] {
        let (s, b) = node.post(path, auth.as_deref(), "text/plain", "21.5").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{why}: {b}");
        assert_eq!(b["statusCode"], 401, "{why}: {b}");
    }
    // A device core-metadata does not know has no secret to match.
    let (s, b) = node
        .post(
            "/api/v3/resource/ghost/Temperature",
            bearer(T1_SECRET).as_deref(),
            "text/plain",
            "21.5",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // Wrong secrets (not missing ones) are counted.
    assert_eq!(node.metric(rejected, "bad_token").await, bad_tokens + 3);

    // The refused readings published nothing: the next event is the accepted one.
    let (s, b) = node
        .post(path, bearer(T1_SECRET).as_deref(), "text/plain", "30")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert!((float(&ev.readings[0].value) - 30.0).abs() < 1e-9);
    node.stop().await;
}

/// A reading device-rest refuses, and with what status.
struct Refused {
    why: &'static str,
    path: &'static str,
    auth: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
    want: StatusCode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_for_unknown_devices_or_resources_wrong_values_and_large_bodies_are_refused() {
    let mut node = Node::start(RestConfig {
        max_body_bytes: 64,
        ..RestConfig::default()
    })
    .await;
    add(
        &node.md,
        "/api/v3/deviceservice",
        "service",
        json!({"name": "device-other", "baseAddress": format!("http://127.0.0.1:{}", free_port()),
            "adminState": "UNLOCKED"}),
    )
    .await;
    node.device(
        "t1",
        "device-rest",
        "UNLOCKED",
        push_only(),
        Some(T1_SECRET),
    )
    .await;
    node.device(
        "tl",
        "device-rest",
        "LOCKED",
        push_only(),
        Some(LOCKED_SECRET),
    )
    .await;
    node.device(
        "o1",
        "device-other",
        "UNLOCKED",
        push_only(),
        Some(OTHER_SECRET),
    )
    .await;
    node.known("t1").await;
    node.known("tl").await;
    let t1 = bearer(T1_SECRET);
    let t1 = t1.as_deref();

    let cases = [
        Refused {
            why: "a device of another service (its secret is right)",
            path: "/api/v3/resource/o1/Temperature",
            auth: bearer(OTHER_SECRET),
            content_type: "text/plain",
            body: b"21.5".to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "an unknown resource",
            path: "/api/v3/resource/t1/Pressure",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"1013".to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "text for a Float64",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"warm".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a value above the maximum",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"500".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a Uint8 out of its range",
            path: "/api/v3/resource/t1/Humidity",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: b"-3".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "bytes that are not text",
            path: "/api/v3/resource/t1/Temperature",
            auth: t1.map(str::to_string),
            content_type: "text/plain",
            body: vec![0xff, 0xfe, 0x00],
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "an object with an unknown resource",
            path: "/api/v3/resource/t1",
            auth: t1.map(str::to_string),
            content_type: "application/json",
            body: br#"{"Pressure": 1013}"#.to_vec(),
            want: StatusCode::NOT_FOUND,
        },
        Refused {
            why: "a bare value where an object is expected",
            path: "/api/v3/resource/t1",
            auth: t1.map(str::to_string),
            content_type: "application/json",
            body: b"21.5".to_vec(),
            want: StatusCode::BAD_REQUEST,
        },
        Refused {
            why: "a locked device",
            path: "/api/v3/resource/tl/Temperature",
            auth: bearer(LOCKED_SECRET),
            content_type: "text/plain",
            body: b"21.5".to_vec(),
            want: StatusCode::LOCKED,
        },
    ];
    for Refused {
        why,
        path,
        auth,
        content_type,
        body,
        want,
    } in cases
    {
        let (s, b) = node.post(path, auth.as_deref(), content_type, body).await;
        assert_eq!(s, want, "{why}: {b}");
        assert_eq!(b["statusCode"], want.as_u16(), "{why}: {b}");
    }

    // Over max_body_bytes, whatever the token.
    let big = format!("{:0>100}", 1);
    for path in ["/api/v3/resource/t1/Temperature", "/api/v3/resource/t1"] {
        let (s, _) = node.post(path, t1, "text/plain", big.clone()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }

    // Nothing was published for any of them.
    let (s, b) = node
        .post("/api/v3/resource/t1/Temperature", t1, "text/plain", "-12.5")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, ev) = node.next_event().await;
    assert_eq!(ev.device_name, "t1");
    assert!((float(&ev.readings[0].value) + 12.5).abs() < 1e-9);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_read_and_write_a_rest_device_over_http() {
    let mut node = Node::start(RestConfig::default()).await;
    let (device, port) =
        HttpDevice::start("/sensor", &[("Setpoint", "22.5"), ("Temperature", "19.25")]).await;
    let rest = |port: u16| json!({"REST": {"Host": "127.0.0.1", "Port": port.to_string(), "Path": "/sensor/"}});
    node.device("t1", "device-rest", "UNLOCKED", rest(port), None)
        .await;
    // Nothing listens on this one's port.
    node.device("t3", "device-rest", "UNLOCKED", rest(free_port()), None)
        .await;
    node.device("p1", "device-rest", "UNLOCKED", push_only(), None)
        .await;
    for d in ["t1", "t3", "p1"] {
        node.known(d).await;
    }

    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let r = &b["event"]["readings"][0];
    assert_eq!(
        (&r["resourceName"], &r["valueType"]),
        (&json!("Setpoint"), &json!("Float64"))
    );
    assert!(
        (r["value"].as_str().unwrap().parse::<f64>().unwrap() - 22.5).abs() < 1e-9,
        "{b}"
    );

    // A write goes to the device as text, and what was written is published.
    let (s, b) = node
        .ds
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!({"Setpoint": "23.5"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        device.writes(),
        [("Setpoint".to_string(), "23.5".to_string())]
    );
    let (topic, ev) = node.next_event().await;
    assert_eq!(
        topic,
        "edgex/events/device/device-rest/Thermostat/t1/Setpoint"
    );
    assert!((float(&ev.readings[0].value) - 23.5).abs() < 1e-9);
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["event"]["readings"][0]["value"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        23.5
    );

    // Out of range: refused before the device sees it.
    let (s, b) = node
        .ds
        .call(
            "PUT",
            "/api/v3/device/name/t1/Setpoint",
            Some(json!({"Setpoint": "40"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(device.writes().len(), 1);

    // The device refuses a resource it does not have (Humidity): its error comes back.
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t1/Humidity", None)
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
    assert!(b["message"].as_str().unwrap().contains("404"), "{b}");
    // A device that does not answer, and one that cannot take commands.
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/t3/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    let (s, b) = node
        .ds
        .call("GET", "/api/v3/device/name/p1/Setpoint", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b["message"].as_str().unwrap().contains("REST"), "{b}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_metadata_asks_device_rest_to_validate_the_rest_block_of_a_device() {
    let node = Node::start(RestConfig::default()).await;
    let device = |protocols: Value| {
        json!({"apiVersion": "v3", "device": {"name": "v1", "serviceName": "device-rest",
            "profileName": "Thermostat", "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": protocols}})
    };
    for (why, protocols, want) in [
        ("no host", json!({"REST": {"Host": " ", "Port": "80"}}), 400),
        ("port 0", json!({"REST": {"Host": "h", "Port": "0"}}), 400),
        (
            "not a port",
            json!({"REST": {"Host": "h", "Port": 70000}}),
            400,
        ),
        (
            "a REST device",
            json!({"REST": {"Host": "h", "Port": 8080}}),
            200,
        ),
        ("a device that only pushes", push_only(), 200),
    ] {
        let (s, b) = node
            .ds
            .call(
                "POST",
                "/api/v3/validate/device",
                Some(device(protocols.clone())),
            )
            .await;
        assert_eq!(s.as_u16(), want, "{why}: {b}");
    }
    // core-metadata refuses what device-rest refuses.
    let (s, b) = node
        .md
        .call(
            "POST",
            "/api/v3/device",
            Some(json!([device(json!({"REST": {"Host": "", "Port": "80"}}))])),
        )
        .await;
    assert_eq!(s.as_u16(), 207, "{b}");
    assert_eq!(b[0]["statusCode"], 400, "{b}");
    assert!(
        b[0]["message"].as_str().unwrap().contains("REST.Host"),
        "{b}"
    );
    node.stop().await;
}
