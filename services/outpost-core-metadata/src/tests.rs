use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_testkit::Drive;
use outpost_testkit::postgres::Backend;
use serde_json::{Value, json};

use crate::config::Config;
use crate::events::Announcer;
use crate::routes::App;
use crate::service::Metadata;
use crate::store::{MIGRATIONS, SqliteStore, Store};

outpost_testkit::on_both_backends!(
    multi_status_reports_each_item,
    malformed_bodies_are_400_and_change_nothing,
    profiles_yaml_upload_queries_and_in_use_protection,
    profile_resources_and_commands,
    device_service_patch_by_id_keeps_its_name,
    strict_profile_settings_lock_profiles_as_edgex_does,
    device_updates_queries_and_hierarchy,
    units_of_measure_validation,
    provision_watchers,
    device_services_validate_devices,
    device_secrets,
    every_batch_is_refused_whole_when_an_item_fails_its_own_validation,
    a_deleted_devices_credential_and_unrevoked_certificates_go_with_it,
);

struct Fixture {
    /// What keeps the store: a SQLite file, or the PostgreSQL store's values key.
    _kept: (Option<outpost_testkit::TempDb>, Option<tempfile::TempDir>),
    app: Arc<App>,
}

/// A fresh store of backend `b`, and what keeps it.
async fn store_of(
    b: Backend,
) -> (
    Arc<dyn Store>,
    (Option<outpost_testkit::TempDb>, Option<tempfile::TempDir>),
) {
    match b {
        Backend::Sqlite => {
            let db = outpost_testkit::temp_db("core-metadata", MIGRATIONS, 1);
            (Arc::new(SqliteStore::new(db.db.clone())), (Some(db), None))
        }
        Backend::Postgres => {
            let keys = tempfile::tempdir().unwrap();
            let pg = crate::postgres::PgStore::open(&b.storage(), keys.path())
                .await
                .unwrap();
            (Arc::new(pg), (None, Some(keys)))
        }
    }
}

/// The service's routes over a fresh store of backend `b`.
async fn fixture(b: Backend, cfg: Config) -> Fixture {
    let (store, kept) = store_of(b).await;
    let uom = crate::uom::load(None).unwrap();
    let app = Arc::new(App {
        md: Metadata::new(store, cfg, uom, Announcer::disabled()),
        max_result_count: 100,
    });
    Fixture { _kept: kept, app }
}

impl Drive for Fixture {
    fn router(&self) -> axum::Router {
        crate::routes::router(Arc::clone(&self.app))
    }
}

const DEVICES: &str = "/api/v3/device";
const AUTH: &str = "/api/v3/device/auth";

impl Fixture {
    /// Adds `devices` in one request; the multi-status answer.
    async fn add_devices(&self, devices: &[Value]) -> Value {
        let body = Some(Value::Array(devices.to_vec()));
        self.expect("POST", DEVICES, body, StatusCode::MULTI_STATUS)
            .await
    }

    /// Whether `secret` lets device `name` in: the status of its authentication.
    async fn auth(&self, name: &str, secret: &str) -> (StatusCode, Value) {
        let body = json!({"apiVersion": "v3", "name": name, "secret": secret});
        self.call("POST", AUTH, Some(body)).await
    }

    /// Uploads `content` as a profile file (multipart, with the file's own content type
    /// when given).
    async fn upload(&self, content_type: Option<&str>, content: &str) -> (StatusCode, Value) {
        let boundary = "XBOUNDARYX";
        let part_type = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.yaml\"\r\n{part_type}\r\n{content}\r\n--{boundary}--\r\n"
        );
        let req = Request::builder()
            .method("POST")
            .uri("/api/v3/deviceprofile/uploadfile")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }
}

/// The status of each item of a multi-status answer, in order.
fn statuses(body: &Value) -> Vec<u64> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].as_u64().unwrap())
        .collect()
}

const PROFILE_YAML: &str = r#"
labels: ["hvac"]
name: "Thermostat"
manufacturer: "Acme"
model: "T-1000"
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

/// A Thermostat of device-virtual with nothing else.
fn thermostat(name: &str) -> Value {
    device_req(name, "Thermostat", json!({}))
}

async fn seed(f: &Fixture) {
    let services = Some(json!([service_req("device-virtual")]));
    let body = f
        .expect(
            "POST",
            "/api/v3/deviceservice",
            services,
            StatusCode::MULTI_STATUS,
        )
        .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let profiles = json!([{"apiVersion": "v3", "profile": profile_json("Thermostat")}]);
    let (_, body) = f
        .call("POST", "/api/v3/deviceprofile", Some(profiles))
        .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
}

async fn multi_status_reports_each_item(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let body = f
        .add_devices(&[
            device_req("t1", "Thermostat", json!({"labels": ["floor1"]})),
            thermostat("t1"),
            device_req("t2", "NoSuchProfile", json!({})),
            device_req(
                "t3",
                "Thermostat",
                json!({"autoEvents": [{"interval": "10s", "sourceName": "Nope"}]}),
            ),
        ])
        .await;
    // A profile that does not exist is a bad reference (EdgeX: 400), not a 404.
    assert_eq!(statuses(&body), [201, 409, 400, 400]);
    assert!(uuid::Uuid::parse_str(body[0]["id"].as_str().unwrap()).is_ok());
    // An item failing its own validation (a name, the apiVersion) refuses the whole body,
    // as EdgeX does: nothing of it is stored.
    for bad in [
        thermostat("bad/name"),
        json!({"apiVersion": "v2", "requestId": "8b9b1c5e-4a55-4b7e-9a3a-000000000001", "device": {"name": "t4"}}),
    ] {
        let e = f
            .expect(
                "POST",
                "/api/v3/device",
                Some(json!([thermostat("t9"), bad])),
                StatusCode::BAD_REQUEST,
            )
            .await;
        assert!(
            e["message"].as_str().unwrap_or("").contains("item 1"),
            "{e}"
        );
        f.expect("GET", "/api/v3/device/name/t9", None, StatusCode::NOT_FOUND)
            .await;
    }
    assert!(
        body[2]["message"]
            .as_str()
            .unwrap()
            .contains("NoSuchProfile")
    );
    // Only the good one was stored.
    let (_, all) = f.call("GET", "/api/v3/device/all", None).await;
    assert_eq!(all["totalCount"], 1);
    assert_eq!(all["devices"][0]["name"], "t1");
}

async fn malformed_bodies_are_400_and_change_nothing(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    for body in [
        "{not json",
        "[]",
        "[{\"apiVersion\": \"v3\", \"device\": 12}]",
        "42",
    ] {
        let req = Request::builder()
            .method("POST")
            .uri(DEVICES)
            .body(Body::from(body))
            .unwrap();
        let (s, resp) = f.send(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(resp["statusCode"], 400);
        assert_eq!(resp["apiVersion"], "v3");
    }
    let (_, all) = f.call("GET", "/api/v3/deviceprofile/all", None).await;
    assert_eq!(all["totalCount"], 1);
}

async fn profiles_yaml_upload_queries_and_in_use_protection(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    // YAML upload of a second profile.
    let yaml = PROFILE_YAML
        .replace("Thermostat", "Thermostat2")
        .replace("T-1000", "T-2000");
    let (s, resp) = f.upload(Some("application/x-yaml"), &yaml).await;
    assert_eq!(s, StatusCode::CREATED, "{resp}");
    let (s, _) = f.upload(Some("application/x-yaml"), &yaml).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = f.upload(None, "name: [unclosed").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let by_model = "/api/v3/deviceprofile/manufacturer/Acme/model/T-2000";
    let (_, r) = f.call("GET", by_model, None).await;
    assert_eq!(r["totalCount"], 1);
    assert_eq!(r["profiles"][0]["name"], "Thermostat2");
    let by_maker = "/api/v3/deviceprofile/manufacturer/Acme";
    let (_, r) = f.call("GET", by_maker, None).await;
    assert_eq!(r["totalCount"], 2);
    let basic = "/api/v3/deviceprofile/basicinfo/all?labels=hvac";
    let (_, r) = f.call("GET", basic, None).await;
    assert_eq!(r["totalCount"], 2);
    assert!(r["profiles"][0].get("deviceResources").is_none());
    let setpoint = "/api/v3/deviceresource/profile/Thermostat/resource/Setpoint";
    let r = f.expect("GET", setpoint, None, StatusCode::OK).await;
    assert_eq!(r["resource"]["properties"]["maximum"], 35.0);

    f.add_devices(&[thermostat("t1")]).await;
    let profile = "/api/v3/deviceprofile/name/Thermostat";
    let (_, r) = f.call("GET", profile, None).await;
    assert_eq!(r["profile"]["linkedDeviceCount"], 1);
    let thermostat2 = "/api/v3/deviceprofile/name/Thermostat2";
    for (uri, want) in [
        (profile, StatusCode::CONFLICT),
        (
            "/api/v3/deviceservice/name/device-virtual",
            StatusCode::CONFLICT,
        ),
        (thermostat2, StatusCode::OK),
        (thermostat2, StatusCode::NOT_FOUND),
    ] {
        f.expect("DELETE", uri, None, want).await;
    }
}

async fn profile_resources_and_commands(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let reads_temperature =
        json!({"autoEvents": [{"interval": "10s", "sourceName": "Temperature"}]});
    f.add_devices(&[device_req("t1", "Thermostat", reads_temperature)])
        .await;
    let (_, r) = f
        .call(
            "POST",
            "/api/v3/deviceprofile/resource",
            Some(json!([
                {"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R", "units": "%"}}},
                {"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R"}}},
                {"apiVersion": "v3", "profileName": "Nope", "resource": {"name": "X", "properties": {"valueType": "Uint8", "readWrite": "R"}}},
            ])),
        )
        .await;
    // A duplicate name fails the profile's validation (EdgeX: 400).
    assert_eq!(statuses(&r), [201, 400, 404]);
    // With a device on the profile nothing can be removed from it (EdgeX: 409).
    let profile = "/api/v3/deviceprofile/name/Thermostat";
    for part in ["deviceCommand/Climate", "resource/Humidity"] {
        f.expect(
            "DELETE",
            &format!("{profile}/{part}"),
            None,
            StatusCode::CONFLICT,
        )
        .await;
    }
    f.expect("DELETE", "/api/v3/device/name/t1", None, StatusCode::OK)
        .await;
    // Without one, a resource a command uses still cannot be.
    for (part, want) in [
        ("resource/Setpoint", StatusCode::CONFLICT),
        ("deviceCommand/Climate", StatusCode::OK),
        ("resource/Humidity", StatusCode::OK),
        ("resource/Humidity", StatusCode::NOT_FOUND),
    ] {
        f.expect("DELETE", &format!("{profile}/{part}"), None, want)
            .await;
    }
    let (_, r) = f
        .call(
            "POST",
            "/api/v3/deviceprofile/deviceCommand",
            Some(json!([{"apiVersion": "v3", "profileName": "Thermostat", "deviceCommand":
                {"name": "Both", "readWrite": "RW", "resourceOperations": [{"deviceResource": "Temperature"}]}}])),
        )
        .await;
    assert_eq!(r[0]["statusCode"], 400, "Temperature is read-only: {r}");
    let (_, r) = f
        .call(
            "PATCH",
            "/api/v3/deviceprofile/resource",
            Some(json!([{"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Setpoint", "isHidden": true, "description": "target"}}])),
        )
        .await;
    assert_eq!(r[0]["statusCode"], 200);
    let (_, r) = f.call("GET", profile, None).await;
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

async fn device_service_patch_by_id_keeps_its_name(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let (_, r) = f
        .call("GET", "/api/v3/deviceservice/name/device-virtual", None)
        .await;
    let id = r["service"]["id"].as_str().unwrap().to_string();
    let (_, r) = f
        .call(
            "PATCH",
            "/api/v3/deviceservice",
            Some(json!([
                {"apiVersion": "v3", "service": {"id": id, "name": "device-other", "description": "x"}},
                {"apiVersion": "v3", "service": {"id": id, "name": "device-virtual", "description": "y"}},
            ])),
        )
        .await;
    assert_eq!(statuses(&r), [400, 200], "{r}");
    let (_, r) = f
        .call("GET", "/api/v3/deviceservice/name/device-virtual", None)
        .await;
    assert_eq!(r["service"]["description"], "y");
}

async fn strict_profile_settings_lock_profiles_as_edgex_does(b: Backend) {
    let f = fixture(
        b,
        Config {
            strict_profile_changes: true,
            strict_profile_deletes: true,
            ..Config::default()
        },
    )
    .await;
    seed(&f).await;
    let profile = "/api/v3/deviceprofile/name/Thermostat";
    let (_, p) = f.call("GET", profile, None).await;
    let (_, r) = f
        .call(
            "PUT",
            "/api/v3/deviceprofile",
            Some(json!([{"apiVersion": "v3", "profile": p["profile"]}])),
        )
        .await;
    assert_eq!(statuses(&r), [423], "{r}");
    for part in ["", "/resource/Humidity", "/deviceCommand/Climate"] {
        f.expect(
            "DELETE",
            &format!("{profile}{part}"),
            None,
            StatusCode::LOCKED,
        )
        .await;
    }
    // What is not a change to what devices rely on stays open.
    let (_, r) = f
        .call(
            "POST",
            "/api/v3/deviceprofile/resource",
            Some(json!([{"apiVersion": "v3", "profileName": "Thermostat", "resource": {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R"}}}])),
        )
        .await;
    assert_eq!(statuses(&r), [201], "{r}");
}

async fn device_updates_queries_and_hierarchy(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    f.add_devices(&[
        device_req("gw", "Thermostat", json!({"labels": ["gateway"]})),
        device_req(
            "child",
            "Thermostat",
            json!({"parent": "gw", "labels": ["floor1"]}),
        ),
        device_req("grandchild", "Thermostat", json!({"parent": "child"})),
    ])
    .await;
    let listed = async |query: &str| {
        let uri = format!("/api/v3/device/all?{query}");
        f.call("GET", &uri, None).await.1
    };
    assert_eq!(listed("descendantsOf=gw").await["totalCount"], 2);
    let r = listed("descendantsOf=gw&maxLevels=1").await;
    assert_eq!(r["totalCount"], 1);
    assert_eq!(r["devices"][0]["name"], "child");
    assert_eq!(listed("labels=floor1,gateway").await["totalCount"], 2);
    let gw = "/api/v3/device/name/gw";
    f.expect("DELETE", gw, None, StatusCode::CONFLICT).await;
    // A cycle is refused; a valid update is not.
    for (device, want) in [
        (json!({"name": "gw", "parent": "grandchild"}), 400),
        (
            json!({"name": "grandchild", "adminState": "LOCKED", "description": "x"}),
            200,
        ),
    ] {
        let update = json!([{"apiVersion": "v3", "device": device}]);
        let (_, r) = f.call("PATCH", DEVICES, Some(update)).await;
        assert_eq!(r[0]["statusCode"], want, "{r}");
    }
    let (_, r) = f.call("GET", "/api/v3/device/name/grandchild", None).await;
    assert_eq!(r["device"]["adminState"], "LOCKED");
    let id = r["device"]["id"].as_str().unwrap().to_string();
    let by_id = format!("/api/v3/device/id/{id}");
    let r = f.expect("GET", &by_id, None, StatusCode::OK).await;
    assert_eq!(r["device"]["name"], "grandchild");
    for (uri, want) in [
        ("/api/v3/device/id/not-a-uuid", StatusCode::BAD_REQUEST),
        ("/api/v3/device/check/name/gw", StatusCode::OK),
        ("/api/v3/device/check/name/nope", StatusCode::NOT_FOUND),
    ] {
        f.expect("GET", uri, None, want).await;
    }
    let of_service = "/api/v3/device/service/name/device-virtual?limit=2";
    let (_, r) = f.call("GET", of_service, None).await;
    assert_eq!(r["totalCount"], 3);
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    let past = "/api/v3/device/all?offset=10";
    let r = f
        .expect("GET", past, None, StatusCode::RANGE_NOT_SATISFIABLE)
        .await;
    assert_eq!(r["statusCode"], 416);
    let bad_limit = "/api/v3/device/all?limit=abc";
    f.expect("GET", bad_limit, None, StatusCode::BAD_REQUEST)
        .await;
    // Force replaces an existing device.
    let forced = device_req("gw", "Thermostat", json!({"description": "forced"}));
    let (_, r) = f
        .call("POST", "/api/v3/device?force=true", Some(json!([forced])))
        .await;
    assert_eq!(r[0]["statusCode"], 201);
    let (_, r) = f.call("GET", gw, None).await;
    assert_eq!(r["device"]["description"], "forced");
}

async fn units_of_measure_validation(b: Backend) {
    let f = fixture(
        b,
        Config {
            uom_validation: true,
            ..Config::default()
        },
    )
    .await;
    let mut odd = profile_json("Odd");
    odd["deviceResources"][0]["properties"]["units"] = json!("furlongs");
    let add = async |profile: Value| {
        let profiles = json!([{"apiVersion": "v3", "profile": profile}]);
        f.call("POST", "/api/v3/deviceprofile", Some(profiles))
            .await
            .1
    };
    let r = add(odd).await;
    assert_eq!(r[0]["statusCode"], 400);
    assert!(r[0]["message"].as_str().unwrap().contains("furlongs"));
    let r = add(profile_json("Fine")).await;
    assert_eq!(r[0]["statusCode"], 201);
    let r = f.expect("GET", "/api/v3/uom", None, StatusCode::OK).await;
    assert!(
        r["uom"]["units"]["temperature"]["values"]
            .as_array()
            .unwrap()
            .contains(&json!("C"))
    );
}

async fn provision_watchers(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let (_, r) = f
        .call(
            "POST",
            "/api/v3/provisionwatcher",
            Some(json!([
                {"apiVersion": "v3", "provisionwatcher": {"name": "w1", "serviceName": "device-virtual",
                  "identifiers": {"Address": "10\\.0\\..*"}, "adminState": "UNLOCKED",
                  "discoveredDevice": {"profileName": "Thermostat", "adminState": "UNLOCKED"}}},
                {"apiVersion": "v3", "provisionwatcher": {"name": "w3", "serviceName": "nope",
                  "identifiers": {"Address": ".*"}, "discoveredDevice": {"profileName": "Thermostat"}}},
            ])),
        )
        .await;
    // A watcher of a service not registered yet is taken, as EdgeX takes it.
    assert_eq!(statuses(&r), [201, 201]);
    // One that fails its own validation (an identifier that is no regular expression)
    // refuses its batch whole.
    let bad = json!([
        {"apiVersion": "v3", "provisionwatcher": {"name": "w4", "serviceName": "device-virtual",
          "identifiers": {"Address": ".*"}, "discoveredDevice": {"profileName": "Thermostat"}}},
        {"apiVersion": "v3", "provisionwatcher": {"name": "w2", "serviceName": "device-virtual",
          "identifiers": {"Address": "(unclosed"}, "discoveredDevice": {"profileName": "Thermostat"}}},
    ]);
    f.expect(
        "POST",
        "/api/v3/provisionwatcher",
        Some(bad),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let of_profile = "/api/v3/provisionwatcher/profile/name/Thermostat";
    let (_, r) = f.call("GET", of_profile, None).await;
    assert_eq!(r["totalCount"], 2);
    let lock =
        json!({"apiVersion": "v3", "provisionwatcher": {"name": "w1", "adminState": "LOCKED"}});
    let (_, r) = f
        .call("PATCH", "/api/v3/provisionwatcher", Some(lock))
        .await;
    assert_eq!(r[0]["statusCode"], 200);
    let w1 = "/api/v3/provisionwatcher/name/w1";
    let (_, r) = f.call("GET", w1, None).await;
    assert_eq!(r["provisionWatcher"]["adminState"], "LOCKED");
    // A watcher uses the profile.
    let profile = "/api/v3/deviceprofile/name/Thermostat";
    f.expect("DELETE", profile, None, StatusCode::CONFLICT)
        .await;
    f.expect("DELETE", w1, None, StatusCode::OK).await;
    f.expect(
        "DELETE",
        "/api/v3/provisionwatcher/name/w3",
        None,
        StatusCode::OK,
    )
    .await;
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

async fn device_services_validate_devices(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let (base, server) = validating_service().await;
    let mut svc = service_req("device-checked");
    svc["service"]["baseAddress"] = json!(base);
    let (_, body) = f
        .call("POST", "/api/v3/deviceservice", Some(json!([svc])))
        .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let dev = |name: &str, address: &str| {
        device_req(
            name,
            "Thermostat",
            json!({"serviceName": "device-checked", "protocols": {"other": {"Address": address}}}),
        )
    };
    let body = f.add_devices(&[dev("good", "ok")]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let body = f.add_devices(&[dev("bad", "nope")]).await;
    assert_eq!(body[0]["statusCode"], 400, "{body}");
    assert!(
        body[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Address must be ok")),
        "{body}"
    );
    // A refused device is not stored.
    let bad = "/api/v3/device/name/bad";
    f.expect("GET", bad, None, StatusCode::NOT_FOUND).await;
    // The service's verdict can be bypassed on purpose.
    let bypass = "/api/v3/device?bypassValidation=true";
    let (_, body) = f
        .call("POST", bypass, Some(json!([dev("bad", "nope")])))
        .await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    // A broken service (500 without a verdict) or one that is gone does not block
    // provisioning.
    let body = f.add_devices(&[dev("c1", "crash")]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    // Updates are validated too, and a refused one changes nothing.
    let patch = json!([{"apiVersion": "v3", "device": {"name": "good",
        "protocols": {"other": {"Address": "nope"}}}}]);
    let (_, body) = f.call("PATCH", DEVICES, Some(patch)).await;
    assert_eq!(body[0]["statusCode"], 400, "{body}");
    let (_, body) = f.call("GET", "/api/v3/device/name/good", None).await;
    assert_eq!(body["device"]["protocols"]["other"]["Address"], "ok");
    server.abort();
    let _ = server.await;
    let body = f.add_devices(&[dev("c2", "nope")]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
}

async fn device_secrets(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let body = f.add_devices(&[thermostat("press-7")]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    let secret_of = "/api/v3/device/name/press-7/secret";
    let chosen = "chosen-secret-0001";

    // No secret yet: nobody gets in.
    let (s, _) = f.auth("press-7", "0123456789abcdef").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A generated secret is returned once and works; a wrong one does not.
    let body = f.expect("PUT", secret_of, None, StatusCode::OK).await;
    let secret = body["secret"].as_str().unwrap().to_string();
    let (s, body) = f.auth("press-7", &secret).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["device"]["name"], "press-7");
    let (s, body) = f.auth("press-7", "0123456789abcdef").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("wrong secret"));
    let (s, _) = f.auth("nobody", &secret).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The device document never carries the secret.
    let (_, body) = f.call("GET", "/api/v3/device/name/press-7", None).await;
    assert!(!body.to_string().contains(&secret));

    // A chosen secret replaces it; the old one stops working.
    let choose = |secret: &str| Some(json!({"apiVersion": "v3", "secret": secret}));
    let body = f
        .expect("PUT", secret_of, choose(chosen), StatusCode::OK)
        .await;
    assert!(
        body.get("secret").is_none(),
        "a chosen secret is not echoed: {body}"
    );
    assert_eq!(f.auth("press-7", &secret).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(f.auth("press-7", chosen).await.0, StatusCode::OK);

    // Bad input.
    for (uri, body, want) in [
        (
            "/api/v3/device/name/nobody/secret",
            None,
            StatusCode::NOT_FOUND,
        ),
        (secret_of, choose("short"), StatusCode::BAD_REQUEST),
        (
            secret_of,
            Some(json!({"apiVersion": "v3", "secret": 42})),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        f.expect("PUT", uri, body, want).await;
    }
    let not_an_object = Some(json!(["not", "an", "object"]));
    f.expect("POST", AUTH, not_an_object, StatusCode::BAD_REQUEST)
        .await;
    // The failed attempts changed nothing.
    assert_eq!(f.auth("press-7", chosen).await.0, StatusCode::OK);

    // Removing the secret, or the device, locks it out.
    f.expect("DELETE", secret_of, None, StatusCode::OK).await;
    assert_eq!(f.auth("press-7", chosen).await.0, StatusCode::UNAUTHORIZED);
    let next = "chosen-secret-0002";
    f.expect("PUT", secret_of, choose(next), StatusCode::OK)
        .await;
    let device = "/api/v3/device/name/press-7";
    f.expect("DELETE", device, None, StatusCode::OK).await;
    let body = f.add_devices(&[thermostat("press-7")]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    // A new device of the same name has no secret.
    assert_eq!(f.auth("press-7", next).await.0, StatusCode::UNAUTHORIZED);
}

async fn every_batch_is_refused_whole_when_an_item_fails_its_own_validation(b: Backend) {
    let f = fixture(b, Config::default()).await;
    seed(&f).await;
    let good_patch =
        json!({"apiVersion": "v3", "service": {"name": "device-virtual", "description": "x"}});
    for (method, uri, bad) in [
        (
            "PATCH",
            "/api/v3/device",
            json!({"apiVersion": "v3", "device": {"description": "no id, no name"}}),
        ),
        (
            "PATCH",
            "/api/v3/deviceservice",
            json!({"apiVersion": "v3", "service": {"id": "not-a-uuid"}}),
        ),
        (
            "PATCH",
            "/api/v3/provisionwatcher",
            json!({"apiVersion": "v3", "provisionwatcher": {"name": ""}}),
        ),
        (
            "PATCH",
            "/api/v3/deviceprofile/basicinfo",
            json!({"apiVersion": "v3", "basicinfo": {"model": "x"}}),
        ),
        (
            "PUT",
            "/api/v3/deviceprofile",
            json!({"apiVersion": "v3", "profile": {"name": ""}}),
        ),
        (
            "POST",
            "/api/v3/deviceprofile/resource",
            json!({"apiVersion": "v3", "profileName": "",
            "resource": {"name": "H", "properties": {"valueType": "Uint8", "readWrite": "R"}}}),
        ),
        (
            "POST",
            "/api/v3/deviceprofile/deviceCommand",
            json!({"apiVersion": "v3", "profileName": "Thermostat",
            "deviceCommand": {"name": "Empty", "readWrite": "R", "resourceOperations": []}}),
        ),
        (
            "PATCH",
            "/api/v3/deviceprofile/resource",
            json!({"apiVersion": "v3", "profileName": "Thermostat",
            "resource": {"name": ""}}),
        ),
    ] {
        // Beside a valid item: nothing of the batch is done.
        let body = json!([good_patch.clone(), bad]);
        let answer = f
            .expect(method, uri, Some(body), StatusCode::BAD_REQUEST)
            .await;
        assert!(
            answer["message"].as_str().unwrap().contains("item 1"),
            "{uri}: {answer}"
        );
    }
    let (_, r) = f
        .call("GET", "/api/v3/deviceservice/name/device-virtual", None)
        .await;
    assert_ne!(
        r["service"]["description"], "x",
        "the valid item was not applied"
    );
}

/// On PostgreSQL an object's JSON (a device's protocol properties among it) and a device
/// credential reach the rows sealed; what queries select on does not.
#[tokio::test]
async fn objects_and_device_credentials_reach_postgresql_sealed() {
    let server = outpost_testkit::postgres::server();
    let database = server.database();
    let keys = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        crate::postgres::PgStore::open(&database.storage(), keys.path())
            .await
            .unwrap(),
    );
    let app = Arc::new(App {
        md: Metadata::new(
            store,
            Config::default(),
            crate::uom::load(None).unwrap(),
            Announcer::disabled(),
        ),
        max_result_count: 100,
    });
    let f = Fixture {
        _kept: (None, Some(keys)),
        app,
    };
    seed(&f).await;
    let canary = device_req(
        "sealed-dev",
        "Thermostat",
        json!({"protocols": {"other": {"Address": "canary-plc-5e91.example"}}}),
    );
    let body = f.add_devices(&[canary]).await;
    assert_eq!(body[0]["statusCode"], 201, "{body}");
    f.expect(
        "PUT",
        "/api/v3/device/name/sealed-dev/secret",
        Some(json!({"apiVersion": "v3", "secret": "canary-secret-77aa"})),
        StatusCode::OK,
    )
    .await;
    let hex_of = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let rows = server.psql_in(
        &database.name,
        "SELECT name, service, encode(body, 'hex') FROM core_metadata.objects",
    );
    assert!(
        rows.contains("sealed-dev") && rows.contains("device-virtual"),
        "{rows}"
    );
    assert!(
        !rows.contains(&hex_of("canary-plc-5e91")),
        "protocol properties in clear: {rows}"
    );
    let rows = server.psql_in(
        &database.name,
        "SELECT device_id, encode(sealed, 'hex') FROM core_metadata.device_secrets",
    );
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert_eq!(
        f.auth("sealed-dev", "canary-secret-77aa").await.0,
        StatusCode::OK
    );
}

/// Deleting a device takes its credential and its certificates with it, but a revoked
/// certificate stays on record (it must not enroll the device again).
async fn a_deleted_devices_credential_and_unrevoked_certificates_go_with_it(b: Backend) {
    use crate::store::{CertIssuer, CertRecord, CertStatus, Doc, Kind, StoredSecret};
    let (store, _kept) = store_of(b).await;
    let doc = Doc {
        id: "dev-id-1".into(),
        name: "dev-1".into(),
        modified: 1,
        refs: crate::store::Refs::default(),
        body: "{}".into(),
    };
    store.insert(Kind::Device, doc).await.unwrap();
    let secret = StoredSecret {
        salt: vec![1; 16],
        hash: vec![2; 32],
    };
    store
        .set_secret("dev-id-1", Some(secret.clone()))
        .await
        .unwrap();
    assert_eq!(store.secret("dev-id-1").await.unwrap(), Some(secret));
    let cert = |fp: &str, status| CertRecord {
        fingerprint: fp.into(),
        issuer: CertIssuer::Node,
        status,
        not_after: 2_000_000_000,
        created: 1,
    };
    store
        .put_cert("dev-id-1", cert("fp-active", CertStatus::Active))
        .await
        .unwrap();
    store
        .put_cert("dev-id-1", cert("fp-revoked", CertStatus::Active))
        .await
        .unwrap();
    assert_eq!(
        store
            .set_cert_status("dev-id-1", Some(CertStatus::Active), CertStatus::Revoked)
            .await
            .unwrap(),
        2
    );
    store
        .set_cert_status("dev-id-1", None, CertStatus::Active)
        .await
        .unwrap();
    store
        .put_cert("dev-id-1", cert("fp-revoked", CertStatus::Revoked))
        .await
        .unwrap();
    assert_eq!(store.certs("dev-id-1").await.unwrap().len(), 2);
    assert!(store.delete(Kind::Device, "dev-1").await.unwrap());
    assert_eq!(store.secret("dev-id-1").await.unwrap(), None);
    assert_eq!(
        store.cert_by_fingerprint("fp-active").await.unwrap(),
        None,
        "an unrevoked certificate outlived its device"
    );
    let (device, kept) = store
        .cert_by_fingerprint("fp-revoked")
        .await
        .unwrap()
        .expect("a revoked certificate stays on record");
    assert_eq!(
        (device.as_str(), kept.status),
        ("dev-id-1", CertStatus::Revoked)
    );
}
