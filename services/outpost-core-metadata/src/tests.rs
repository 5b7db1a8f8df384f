use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::config::Config;
use crate::events::Announcer;
use crate::routes::App;
use crate::service::Metadata;
use crate::store::{MIGRATIONS, SqliteStore, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    app: Arc<App>,
}

fn fixture(cfg: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = outpost_storage::Db::open(
        &outpost_storage::Location::new(dir.path(), "core-metadata"),
        &outpost_storage::OpenOptions::default(),
        MIGRATIONS,
        1,
    )
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::new(db));
    let uom = crate::uom::load(None).unwrap();
    let app = Arc::new(App {
        md: Metadata::new(store, cfg, uom, Announcer::disabled()),
        max_result_count: 100,
    });
    Fixture { _dir: dir, app }
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, Value) {
    let resp = crate::routes::router(Arc::clone(&f.app))
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn call(f: &Fixture, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    send(f, req).await
}

const PROFILE_YAML: &str = r#"
name: "Thermostat"
manufacturer: "Acme"
model: "T-1000"
labels: ["hvac"]
deviceResources:
  - name: "Temperature"
    properties: { valueType: "Float64", readWrite: "R", units: "C", minimum: -40, maximum: 125 }
  - name: "Setpoint"
    properties: { valueType: "Float64", readWrite: "RW", units: "C", minimum: 5, maximum: 35 }
deviceCommands:
  - name: "Climate"
    readWrite: "R"
    resourceOperations: [{ deviceResource: "Temperature" }, { deviceResource: "Setpoint" }]
"#;

fn profile_json(name: &str) -> Value {
    let mut p: Value = serde_json::to_value(
        outpost_contracts::metadata::DeviceProfile::from_yaml(PROFILE_YAML).unwrap(),
    )
    .unwrap();
    p["name"] = json!(name);
    p
}

fn service_req(name: &str) -> Value {
    json!({"apiVersion": "v3", "service": {"name": name, "baseAddress": "http://127.0.0.1:1", "adminState": "UNLOCKED"}})
}

fn device_req(name: &str, profile: &str, extra: Value) -> Value {
    let mut d = json!({"name": name, "serviceName": "device-virtual", "profileName": profile,
        "adminState": "UNLOCKED", "operatingState": "UP", "protocols": {"other": {"Address": "sim"}}});
    if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v3", "device": d})
}

async fn seed(f: &Fixture) {
    let (s, body) = call(
        f,
        "POST",
        "/api/v3/deviceservice",
        Some(json!([service_req("device-virtual")])),
    )
    .await;
    assert_eq!(s, StatusCode::MULTI_STATUS);
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let (_, body) = call(
        f,
        "POST",
        "/api/v3/deviceprofile",
        Some(json!([{"apiVersion": "v3", "profile": profile_json("Thermostat")}])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
}

#[tokio::test]
async fn multi_status_reports_each_item() {
    let f = fixture(Config::default());
    seed(&f).await;
    let (s, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([
            device_req("t1", "Thermostat", json!({"labels": ["floor1"]})),
            device_req("t1", "Thermostat", json!({})),
            device_req("t2", "NoSuchProfile", json!({})),
            device_req("t3", "Thermostat", json!({"autoEvents": [{"interval": "10s", "sourceName": "Nope"}]})),
            device_req("bad/name", "Thermostat", json!({})),
            {"apiVersion": "v2", "requestId": "8b9b1c5e-4a55-4b7e-9a3a-000000000001", "device": {"name": "t4"}},
        ])),
    )
    .await;
    assert_eq!(s, StatusCode::MULTI_STATUS);
    let codes: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 409, 404, 400, 400, 400]);
    assert!(uuid::Uuid::parse_str(body[0]["id"].as_str().unwrap()).is_ok());
    assert_eq!(body[5]["requestId"], "8b9b1c5e-4a55-4b7e-9a3a-000000000001");
    assert!(
        body[2]["message"]
            .as_str()
            .unwrap()
            .contains("NoSuchProfile")
    );
    // Only the good one was stored.
    let (_, all) = call(&f, "GET", "/api/v3/device/all", None).await;
    assert_eq!(all["totalCount"], 1);
    assert_eq!(all["devices"][0]["name"], "t1");
}

#[tokio::test]
async fn malformed_bodies_are_400_and_change_nothing() {
    let f = fixture(Config::default());
    seed(&f).await;
    for body in [
        "{not json",
        "[]",
        "[{\"apiVersion\": \"v3\", \"device\": 12}]",
        "42",
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/api/v3/device")
            .body(Body::from(body))
            .unwrap();
        let (s, resp) = send(&f, req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp["statusCode"], 400);
        assert_eq!(resp["apiVersion"], "v3");
    }
    let (_, all) = call(&f, "GET", "/api/v3/deviceprofile/all", None).await;
    assert_eq!(all["totalCount"], 1);
}

#[tokio::test]
async fn profiles_yaml_upload_queries_and_in_use_protection() {
    let f = fixture(Config::default());
    seed(&f).await;
    // YAML upload of a second profile.
    let boundary = "XBOUNDARYX";
    let yaml = PROFILE_YAML
        .replace("Thermostat", "Thermostat2")
        .replace("T-1000", "T-2000");
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.yaml\"\r\nContent-Type: application/x-yaml\r\n\r\n{yaml}\r\n--{boundary}--\r\n"
    );
    let req = Request::builder()
        .method("POST")
        .uri("/api/v3/deviceprofile/uploadfile")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body.clone()))
        .unwrap();
    let (s, resp) = send(&f, req).await;
    assert_eq!(s, StatusCode::CREATED, "{resp}");
    let req = Request::builder()
        .method("POST")
        .uri("/api/v3/deviceprofile/uploadfile")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (s, _) = send(&f, req).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let bad = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.yaml\"\r\n\r\nname: [unclosed\r\n--{boundary}--\r\n"
    );
    let req = Request::builder()
        .method("POST")
        .uri("/api/v3/deviceprofile/uploadfile")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(bad))
        .unwrap();
    let (s, _) = send(&f, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (_, r) = call(
        &f,
        "GET",
        "/api/v3/deviceprofile/manufacturer/Acme/model/T-2000",
        None,
    )
    .await;
    assert_eq!(r["totalCount"], 1);
    assert_eq!(r["profiles"][0]["name"], "Thermostat2");
    let (_, r) = call(&f, "GET", "/api/v3/deviceprofile/manufacturer/Acme", None).await;
    assert_eq!(r["totalCount"], 2);
    let (_, r) = call(
        &f,
        "GET",
        "/api/v3/deviceprofile/basicinfo/all?labels=hvac",
        None,
    )
    .await;
    assert_eq!(r["totalCount"], 2);
    assert!(r["profiles"][0].get("deviceResources").is_none());
    let (s, r) = call(
        &f,
        "GET",
        "/api/v3/deviceresource/profile/Thermostat/resource/Setpoint",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["resource"]["properties"]["maximum"], 35.0);

    call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([device_req("t1", "Thermostat", json!({}))])),
    )
    .await;
    let (_, r) = call(&f, "GET", "/api/v3/deviceprofile/name/Thermostat", None).await;
    assert_eq!(r["profile"]["linkedDeviceCount"], 1);
    let (s, _) = call(&f, "DELETE", "/api/v3/deviceprofile/name/Thermostat", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &f,
        "DELETE",
        "/api/v3/deviceservice/name/device-virtual",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(&f, "DELETE", "/api/v3/deviceprofile/name/Thermostat2", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f, "DELETE", "/api/v3/deviceprofile/name/Thermostat2", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn profile_resources_and_commands() {
    let f = fixture(Config::default());
    seed(&f).await;
    call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([device_req(
            "t1",
            "Thermostat",
            json!({"autoEvents": [{"interval": "10s", "sourceName": "Temperature"}]})
        )])),
    )
    .await;
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/deviceprofile/resource",
        Some(json!([
            {"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R", "units": "%"}}},
            {"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R"}}},
            {"apiVersion": "v3", "profileName": "Nope", "resource": {"name": "X", "properties": {"valueType": "Uint8", "readWrite": "R"}}},
        ])),
    )
    .await;
    let codes: Vec<_> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 409, 404]);
    // A resource a command uses, or a device reads, cannot be deleted.
    let (s, _) = call(
        &f,
        "DELETE",
        "/api/v3/deviceprofile/name/Thermostat/resource/Setpoint",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &f,
        "DELETE",
        "/api/v3/deviceprofile/name/Thermostat/deviceCommand/Climate",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f,
        "DELETE",
        "/api/v3/deviceprofile/name/Thermostat/resource/Temperature",
        None,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "device t1 reads it in an autoEvent"
    );
    let (s, _) = call(
        &f,
        "DELETE",
        "/api/v3/deviceprofile/name/Thermostat/resource/Humidity",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/deviceprofile/deviceCommand",
        Some(json!([{"apiVersion": "v3", "profileName": "Thermostat", "deviceCommand":
            {"name": "Both", "readWrite": "RW", "resourceOperations": [{"deviceResource": "Temperature"}]}}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 400, "Temperature is read-only: {r}");
    let (_, r) = call(
        &f,
        "PATCH",
        "/api/v3/deviceprofile/resource",
        Some(json!([{"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Setpoint", "isHidden": true, "description": "target"}}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 200);
    let (_, r) = call(&f, "GET", "/api/v3/deviceprofile/name/Thermostat", None).await;
    let sp = r["profile"]["deviceResources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "Setpoint")
        .unwrap()
        .clone();
    assert_eq!(sp["isHidden"], true);
    assert_eq!(sp["description"], "target");
}

#[tokio::test]
async fn device_updates_queries_and_hierarchy() {
    let f = fixture(Config::default());
    seed(&f).await;
    call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([
            device_req("gw", "Thermostat", json!({"labels": ["gateway"]})),
            device_req(
                "child",
                "Thermostat",
                json!({"parent": "gw", "labels": ["floor1"]})
            ),
            device_req("grandchild", "Thermostat", json!({"parent": "child"})),
        ])),
    )
    .await;
    let (_, r) = call(&f, "GET", "/api/v3/device/all?descendantsOf=gw", None).await;
    assert_eq!(r["totalCount"], 2);
    let (_, r) = call(
        &f,
        "GET",
        "/api/v3/device/all?descendantsOf=gw&maxLevels=1",
        None,
    )
    .await;
    assert_eq!(r["totalCount"], 1);
    assert_eq!(r["devices"][0]["name"], "child");
    let (_, r) = call(&f, "GET", "/api/v3/device/all?labels=floor1,gateway", None).await;
    assert_eq!(r["totalCount"], 2);
    let (s, _) = call(&f, "DELETE", "/api/v3/device/name/gw", None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // A cycle is refused.
    let (_, r) = call(
        &f,
        "PATCH",
        "/api/v3/device",
        Some(json!([{"apiVersion": "v3", "device": {"name": "gw", "parent": "grandchild"}}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 400, "{r}");
    // A valid update.
    let (_, r) = call(
        &f,
        "PATCH",
        "/api/v3/device",
        Some(json!([{"apiVersion": "v3", "device": {"name": "grandchild", "adminState": "LOCKED", "description": "x"}}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 200, "{r}");
    let (_, r) = call(&f, "GET", "/api/v3/device/name/grandchild", None).await;
    assert_eq!(r["device"]["adminState"], "LOCKED");
    let id = r["device"]["id"].as_str().unwrap().to_string();
    let (s, r) = call(&f, "GET", &format!("/api/v3/device/id/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["device"]["name"], "grandchild");
    let (s, _) = call(&f, "GET", "/api/v3/device/id/not-a-uuid", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&f, "GET", "/api/v3/device/check/name/gw", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f, "GET", "/api/v3/device/check/name/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, r) = call(
        &f,
        "GET",
        "/api/v3/device/service/name/device-virtual?limit=2",
        None,
    )
    .await;
    assert_eq!(r["totalCount"], 3);
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    let (s, r) = call(&f, "GET", "/api/v3/device/all?offset=10", None).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r["statusCode"], 416);
    let (s, _) = call(&f, "GET", "/api/v3/device/all?limit=abc", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Force replaces an existing device.
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/device?force=true",
        Some(json!([device_req(
            "gw",
            "Thermostat",
            json!({"description": "forced"})
        )])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 201);
    let (_, r) = call(&f, "GET", "/api/v3/device/name/gw", None).await;
    assert_eq!(r["device"]["description"], "forced");
}

#[tokio::test]
async fn units_of_measure_validation() {
    let f = fixture(Config {
        uom_validation: true,
        ..Config::default()
    });
    let mut p = profile_json("Odd");
    p["deviceResources"][0]["properties"]["units"] = json!("furlongs");
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/deviceprofile",
        Some(json!([{"apiVersion": "v3", "profile": p}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 400);
    assert!(r[0]["message"].as_str().unwrap().contains("furlongs"));
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/deviceprofile",
        Some(json!([{"apiVersion": "v3", "profile": profile_json("Fine")}])),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 201);
    let (s, r) = call(&f, "GET", "/api/v3/uom", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        r["uom"]["units"]["temperature"]["values"]
            .as_array()
            .unwrap()
            .contains(&json!("C"))
    );
}

#[tokio::test]
async fn provision_watchers() {
    let f = fixture(Config::default());
    seed(&f).await;
    let (_, r) = call(
        &f,
        "POST",
        "/api/v3/provisionwatcher",
        Some(json!([
            {"apiVersion": "v3", "provisionwatcher": {"name": "w1", "serviceName": "device-virtual",
              "identifiers": {"Address": "10\\.0\\..*"}, "adminState": "UNLOCKED",
              "discoveredDevice": {"profileName": "Thermostat", "adminState": "UNLOCKED"}}},
            {"apiVersion": "v3", "provisionwatcher": {"name": "w2", "serviceName": "device-virtual",
              "identifiers": {"Address": "(unclosed"}, "discoveredDevice": {"profileName": "Thermostat"}}},
            {"apiVersion": "v3", "provisionwatcher": {"name": "w3", "serviceName": "nope",
              "identifiers": {"Address": ".*"}, "discoveredDevice": {"profileName": "Thermostat"}}},
        ])),
    )
    .await;
    let codes: Vec<_> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [201, 400, 404]);
    let (_, r) = call(
        &f,
        "GET",
        "/api/v3/provisionwatcher/profile/name/Thermostat",
        None,
    )
    .await;
    assert_eq!(r["totalCount"], 1);
    let (_, r) = call(
        &f,
        "PATCH",
        "/api/v3/provisionwatcher",
        Some(
            json!({"apiVersion": "v3", "provisionwatcher": {"name": "w1", "adminState": "LOCKED"}}),
        ),
    )
    .await;
    assert_eq!(r[0]["statusCode"], 200);
    let (_, r) = call(&f, "GET", "/api/v3/provisionwatcher/name/w1", None).await;
    assert_eq!(r["provisionWatcher"]["adminState"], "LOCKED");
    let (s, _) = call(&f, "DELETE", "/api/v3/deviceprofile/name/Thermostat", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "a watcher uses it");
    let (s, _) = call(&f, "DELETE", "/api/v3/provisionwatcher/name/w1", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// A device service's validation endpoint, on a real socket: it accepts devices whose
/// `Address` is `ok`, refuses `bad` the way EdgeX device services do (an error body), and
/// fails without a body for `crash`.
async fn validating_service() -> (String, tokio::task::JoinHandle<()>) {
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/api/v3/validate/device",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            match body["device"]["protocols"]["other"]["Address"].as_str() {
                Some("ok") => StatusCode::OK.into_response(),
                Some("crash") => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"apiVersion": "v3", "statusCode": 500,
                        "message": "Address must be ok"})),
                )
                    .into_response(),
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn device_services_validate_devices() {
    let f = fixture(Config::default());
    seed(&f).await;
    let (base, server) = validating_service().await;
    let mut svc = service_req("device-checked");
    svc["service"]["baseAddress"] = json!(base);
    let (_, body) = call(&f, "POST", "/api/v3/deviceservice", Some(json!([svc]))).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let dev = |name: &str, address: &str| {
        device_req(
            name,
            "Thermostat",
            json!({"serviceName": "device-checked", "protocols": {"other": {"Address": address}}}),
        )
    };
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([dev("good", "ok")])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([dev("bad", "nope")])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 400, "{body}");
    assert!(
        body[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Address must be ok")),
        "{body}"
    );
    let (s, _) = call(&f, "GET", "/api/v3/device/name/bad", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused device is not stored");
    // The service's verdict can be bypassed on purpose.
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device?bypassValidation=true",
        Some(json!([dev("bad", "nope")])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    // A broken service (500 without a verdict) or one that is gone does not block
    // provisioning.
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([dev("c1", "crash")])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    // Updates are validated too, and a refused one changes nothing.
    let patch = |address: &str| {
        json!([{"apiVersion": "v3", "device": {"name": "good",
            "protocols": {"other": {"Address": address}}}}])
    };
    let (_, body) = call(&f, "PATCH", "/api/v3/device", Some(patch("nope"))).await;
    assert_eq!(body[0]["statusCode"], 400, "{body}");
    let (_, body) = call(&f, "GET", "/api/v3/device/name/good", None).await;
    assert_eq!(body["device"]["protocols"]["other"]["Address"], "ok");
    server.abort();
    let _ = server.await;
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([dev("c2", "nope")])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
}

#[tokio::test]
async fn device_secrets() {
    let f = fixture(Config::default());
    seed(&f).await;
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([device_req("press-7", "Thermostat", json!({}))])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let auth =
        |name: &str, secret: &str| json!({"apiVersion": "v3", "name": name, "secret": secret});

    // No secret yet: nobody gets in.
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "0123456789abcdef")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A generated secret is returned once and works; a wrong one does not.
    let (s, body) = call(&f, "PUT", "/api/v3/device/name/press-7/secret", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    let (s, body) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", &secret)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["device"]["name"], "press-7");
    let (s, body) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "0123456789abcdef")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("wrong secret"));
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("nobody", &secret)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The device document never carries the secret.
    let (_, body) = call(&f, "GET", "/api/v3/device/name/press-7", None).await;
    assert!(!body.to_string().contains(&secret));

    // A chosen secret replaces it; the old one stops working.
    let chosen = json!({"apiVersion": "v3", "secret": "chosen-secret-0001"});
    let (s, body) = call(
        &f,
        "PUT",
        "/api/v3/device/name/press-7/secret",
        Some(chosen),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.get("secret").is_none(),
        "a chosen secret is not echoed: {body}"
    );
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", &secret)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "chosen-secret-0001")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // Bad input.
    for (uri, body, want) in [
        (
            "/api/v3/device/name/nobody/secret",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v3/device/name/press-7/secret",
            Some(json!({"apiVersion": "v3", "secret": "short"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v3/device/name/press-7/secret",
            Some(json!({"apiVersion": "v3", "secret": 42})),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, b) = call(&f, "PUT", uri, body).await;
        assert_eq!(s, want, "{uri}: {b}");
    }
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(json!(["not", "an", "object"])),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The failed attempts changed nothing.
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "chosen-secret-0001")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // Removing the secret, or the device, locks it out.
    let (s, _) = call(&f, "DELETE", "/api/v3/device/name/press-7/secret", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "chosen-secret-0001")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/device/name/press-7/secret",
        Some(json!({"apiVersion": "v3", "secret": "chosen-secret-0002"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f, "DELETE", "/api/v3/device/name/press-7", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, body) = call(
        &f,
        "POST",
        "/api/v3/device",
        Some(json!([device_req("press-7", "Thermostat", json!({}))])),
    )
    .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/device/auth",
        Some(auth("press-7", "chosen-secret-0002")),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a new device of the same name has no secret"
    );
}
