use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::config::Config;
use crate::store::{MIGRATIONS, SqliteStore, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    state: Arc<crate::routes::AppState>,
}

async fn fixture(cfg: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = outpost_storage::Db::open(
        &outpost_storage::Location::new(dir.path(), "core-keeper"),
        &outpost_storage::OpenOptions::default(),
        MIGRATIONS,
        1,
    )
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::new(db));
    let state = crate::app(&cfg, Arc::clone(&store)).await.unwrap();
    Fixture {
        _dir: dir,
        store,
        state,
    }
}

async fn call(f: &Fixture, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = crate::routes::router(Arc::clone(&f.state))
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

fn reg(id: &str, kind: &str, interval: &str) -> Value {
    json!({"apiVersion": "v3", "registration": {
        "serviceId": id, "host": "127.0.0.1", "port": 59880,
        "healthCheck": {"interval": interval, "path": "/api/v3/ping", "type": kind}
    }})
}

#[tokio::test]
async fn register_conflict_update_and_deregister() {
    let f = fixture(Config::default()).await;
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "1s")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "1s")),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(body["statusCode"], 409);
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "2s")),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/registry",
        Some(reg("nobody", "heartbeat", "2s")),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, body) = call(&f, "GET", "/api/v3/registry/serviceId/core-data", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["registration"]["status"], "UP");
    assert_eq!(body["registration"]["healthCheck"]["interval"], "2s");

    let (s, _) = call(&f, "DELETE", "/api/v3/registry/serviceId/core-data", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&f, "GET", "/api/v3/registry/serviceId/core-data", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, body) = call(&f, "GET", "/api/v3/registry/all", None).await;
    assert_eq!(body["totalCount"], 0);
    let (_, body) = call(&f, "GET", "/api/v3/registry/all?deregistered=true", None).await;
    assert_eq!(body["registrations"][0]["status"], "HALT");
    // A heartbeat from a deregistered instance asks it to register again.
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/registry/serviceId/core-data/heartbeat",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // ... which it may.
    let (s, _) = call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "1s")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // An update to status HALT deregisters, too.
    let mut halt = reg("core-data", "heartbeat", "1s");
    halt["registration"]["status"] = "HALT".into();
    let (s, _) = call(&f, "PUT", "/api/v3/registry", Some(halt)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&f, "GET", "/api/v3/registry/serviceId/core-data", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_registrations_are_refused() {
    let f = fixture(Config::default()).await;
    for bad in [
        json!({"apiVersion": "v3", "registration": {"serviceId": "", "port": 1, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 0, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "carrier-pigeon"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "http", "path": "x"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "soon"}}}),
        json!({"apiVersion": "v2", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 70000, "healthCheck": {"type": "heartbeat"}}}),
    ] {
        let (s, body) = call(&f, "POST", "/api/v3/registry", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["statusCode"], 400);
    }
    let req = Request::builder()
        .method("POST")
        .uri("/api/v3/registry")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = crate::routes::router(Arc::clone(&f.state))
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (_, body) = call(&f, "GET", "/api/v3/registry/all", None).await;
    assert_eq!(body["totalCount"], 0);
}

#[tokio::test(start_paused = true)]
async fn missed_heartbeats_mark_down_then_remove() {
    let cfg = Config {
        remove_after_ms: 2_000,
        ..Config::default()
    };
    let f = fixture(cfg).await;
    call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "100ms")),
    )
    .await;
    let reg = &f.state.registry;
    let mut probes = tokio::task::JoinSet::new();
    tokio::time::advance(Duration::from_millis(250)).await;
    reg.sweep(&mut probes).await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "UP");
    // A heartbeat keeps it alive.
    call(
        &f,
        "PUT",
        "/api/v3/registry/serviceId/core-data/heartbeat",
        None,
    )
    .await;
    tokio::time::advance(Duration::from_millis(250)).await;
    reg.sweep(&mut probes).await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "UP");
    // Silence beyond three intervals: DOWN.
    tokio::time::advance(Duration::from_millis(100)).await;
    reg.sweep(&mut probes).await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "DOWN");
    // A late heartbeat brings it back.
    call(
        &f,
        "PUT",
        "/api/v3/registry/serviceId/core-data/heartbeat",
        None,
    )
    .await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "UP");
    // Silence again, past the grace period: removed, also from storage.
    tokio::time::advance(Duration::from_millis(400)).await;
    reg.sweep(&mut probes).await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "DOWN");
    tokio::time::advance(Duration::from_millis(2_100)).await;
    reg.sweep(&mut probes).await;
    assert!(reg.get("core-data").is_none());
    assert!(f.store.load_registrations().await.unwrap().is_empty());
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/registry/serviceId/core-data/heartbeat",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let f = fixture(Config::default()).await;
    call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "1s")),
    )
    .await;
    call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-metadata", "http", "10s")),
    )
    .await;
    let again = crate::app(&Config::default(), Arc::clone(&f.store))
        .await
        .unwrap();
    let (_, regs) = again.registry.list(false);
    let ids: Vec<_> = regs.iter().map(|r| r.service_id.as_str()).collect();
    assert_eq!(ids, ["core-data", "core-metadata"]);
}

#[tokio::test]
async fn long_poll_returns_on_change() {
    let f = fixture(Config::default()).await;
    let (_, body) = call(&f, "GET", "/api/v3/registry/all", None).await;
    let index = body["index"].as_u64().unwrap();
    let state = Arc::clone(&f.state);
    let waiter = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!(
                "/api/v3/registry/all?waitIndex={index}&waitMs=10000"
            ))
            .body(Body::empty())
            .unwrap();
        let resp = crate::routes::router(state).oneshot(req).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    });
    call(
        &f,
        "POST",
        "/api/v3/registry",
        Some(reg("core-data", "heartbeat", "1s")),
    )
    .await;
    let body = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("long-poll did not return on change")
        .unwrap();
    assert!(body["index"].as_u64().unwrap() > index);
    assert_eq!(body["registrations"][0]["serviceId"], "core-data");
}

#[tokio::test]
async fn key_values() {
    let f = fixture(Config::default()).await;
    let (s, body) = call(
        &f,
        "PUT",
        "/api/v3/kvs/key/edgex/v4/core-data?flatten=true",
        Some(json!({"value": {"MaxEventSize": 25000, "Writable": {"LogLevel": "INFO", "PersistData": true}}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    let (s, body) = call(
        &f,
        "GET",
        "/api/v3/kvs/key/edgex/v4/core-data/Writable?plaintext=true",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let kvs = body["response"].as_array().unwrap();
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[0]["key"], "edgex/v4/core-data/Writable/LogLevel");
    assert_eq!(kvs[0]["value"], "INFO");
    // Values are kept as text, as EdgeX's configuration clients read them.
    assert_eq!(kvs[1]["value"], "true");
    let (_, body) = call(
        &f,
        "GET",
        "/api/v3/kvs/key/edgex/v4/core-data/Writable/LogLevel",
        None,
    )
    .await;
    assert_eq!(body["response"][0]["value"], "SU5GTw==");
    let (_, body) = call(&f, "GET", "/api/v3/kvs/key/edgex?keyOnly=true", None).await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    // A key that merely shares a prefix string is not below it.
    call(
        &f,
        "PUT",
        "/api/v3/kvs/key/edgex/v4/core-database",
        Some(json!({"value": "x"})),
    )
    .await;
    let (_, body) = call(
        &f,
        "GET",
        "/api/v3/kvs/key/edgex/v4/core-data?keyOnly=true",
        None,
    )
    .await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    let (s, _) = call(&f, "DELETE", "/api/v3/kvs/key/edgex/v4/core-data", None).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "exact delete of a key with keys below it"
    );
    let (s, _) = call(&f, "DELETE", "/api/v3/kvs/key/edgex/v4/nothing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = call(
        &f,
        "DELETE",
        "/api/v3/kvs/key/edgex/v4/core-data?prefixMatch=true",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    let (s, _) = call(&f, "GET", "/api/v3/kvs/key/edgex/v4/core-data", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f, "PUT", "/api/v3/kvs/key/a//b", Some(json!({"value": 1}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Flattening leaves out nulls and empty objects; nothing left to store is an error.
    let (s, body) = call(
        &f,
        "PUT",
        "/api/v3/kvs/key/app?flatten=true",
        Some(json!({"value": {"a": null, "b": {}, "c": {"d": 2.5}}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["response"], json!(["app/c/d"]));
    let (_, body) = call(&f, "GET", "/api/v3/kvs/key/app/c/d?plaintext=true", None).await;
    assert_eq!(body["response"][0]["value"], "2.5");
    let (s, _) = call(
        &f,
        "PUT",
        "/api/v3/kvs/key/app?flatten=true",
        Some(json!({"value": {"a": null}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A leaf delete removes only that key.
    let (s, body) = call(&f, "DELETE", "/api/v3/kvs/key/app/c/d", None).await;
    assert_eq!(
        (s, &body["response"]),
        (StatusCode::OK, &json!(["app/c/d"]))
    );
}

#[tokio::test]
async fn http_checked_services_are_probed() {
    let f = fixture(Config::default()).await;
    // A real service on a real socket that answers its health check.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/api/v3/ping", axum::routing::get(|| async { "pong" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut r = reg("edgex-service", "http", "100ms");
    r["registration"]["port"] = json!(port);
    let (s, _) = call(&f, "POST", "/api/v3/registry", Some(r)).await;
    assert_eq!(s, StatusCode::CREATED);
    let reg = Arc::clone(&f.state.registry);
    assert_eq!(reg.get("edgex-service").unwrap().status.as_str(), "UNKNOWN");
    let status = |want: &'static str| {
        let reg = Arc::clone(&reg);
        async move {
            let mut probes = tokio::task::JoinSet::new();
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    reg.sweep(&mut probes).await;
                    if reg.get("edgex-service").unwrap().status.as_str() == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never became {want}"));
        }
    };
    status("UP").await;
    server.abort();
    let _ = server.await;
    status("DOWN").await;
}
