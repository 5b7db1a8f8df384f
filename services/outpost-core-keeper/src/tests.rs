use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use outpost_testkit::Drive;
use outpost_testkit::postgres::Backend;
use serde_json::{Value, json};

use crate::config::Config;
use crate::store::{MIGRATIONS, SqliteStore, Store};

struct Fixture {
    /// The SQLite database (none on PostgreSQL).
    _db: Option<outpost_testkit::TempDb>,
    _secrets: Option<tempfile::TempDir>,
    store: Arc<dyn Store>,
    state: Arc<crate::routes::AppState>,
}

async fn fixture(backend: Backend, cfg: Config) -> Fixture {
    let (db, secrets, store): (_, _, Arc<dyn Store>) = match backend {
        Backend::Sqlite => {
            let db = outpost_testkit::temp_db("core-keeper", MIGRATIONS, 1);
            let store = Arc::new(SqliteStore::new(db.db.clone()));
            (Some(db), None, store)
        }
        Backend::Postgres => {
            let secrets = tempfile::tempdir().unwrap();
            let store = crate::postgres::PgStore::open(&backend.storage(), secrets.path())
                .await
                .unwrap();
            (None, Some(secrets), Arc::new(store))
        }
    };
    let state = crate::app(&cfg, Arc::clone(&store)).await.unwrap();
    Fixture {
        _db: db,
        _secrets: secrets,
        store,
        state,
    }
}

impl Drive for Fixture {
    fn router(&self) -> axum::Router {
        crate::routes::router(Arc::clone(&self.state))
    }
}

fn reg(id: &str, kind: &str, interval: &str) -> Value {
    json!({"apiVersion": "v3", "registration": {
        "serviceId": id, "host": "127.0.0.1", "port": 59880,
        "healthCheck": {"interval": interval, "path": "/api/v3/ping", "type": kind}
    }})
}

outpost_testkit::on_both_backends!(
    register_conflict_update_and_deregister,
    bad_registrations_are_refused,
    registrations_survive_a_restart,
    long_poll_returns_on_change,
    key_values,
    key_value_watch_returns_on_change,
    a_service_writes_only_its_own_keys,
);

const REGISTRY: &str = "/api/v3/registry";
const CORE_DATA: &str = "/api/v3/registry/serviceId/core-data";

async fn register_conflict_update_and_deregister(b: Backend) {
    let f = fixture(b, Config::default()).await;
    let beats = |id: &str, interval: &str| Some(reg(id, "heartbeat", interval));
    let first = || beats("core-data", "1s");
    f.expect("POST", REGISTRY, first(), StatusCode::CREATED)
        .await;
    let body = f
        .expect(
            "POST",
            REGISTRY,
            beats("core-data", "1s"),
            StatusCode::CONFLICT,
        )
        .await;
    assert_eq!(body["statusCode"], 409);
    for (id, want) in [
        ("core-data", StatusCode::NO_CONTENT),
        ("nobody", StatusCode::NOT_FOUND),
    ] {
        f.expect("PUT", REGISTRY, beats(id, "2s"), want).await;
    }

    let body = f.expect("GET", CORE_DATA, None, StatusCode::OK).await;
    assert_eq!(body["registration"]["status"], "UP");
    // EdgeX's key, with its capital.
    assert_eq!(body["registration"]["HealthCheck"]["interval"], "2s");

    f.expect("DELETE", CORE_DATA, None, StatusCode::NO_CONTENT)
        .await;
    f.expect("GET", CORE_DATA, None, StatusCode::NOT_FOUND)
        .await;
    let (_, body) = f.call("GET", "/api/v3/registry/all", None).await;
    assert_eq!(body["totalCount"], 0);
    let (_, body) = f
        .call("GET", "/api/v3/registry/all?deregistered=true", None)
        .await;
    assert_eq!(body["registrations"][0]["status"], "HALT");
    // A heartbeat from a deregistered instance asks it to register again ...
    let heartbeat = format!("{CORE_DATA}/heartbeat");
    f.expect("PUT", &heartbeat, None, StatusCode::NOT_FOUND)
        .await;
    // ... which it may.
    f.expect("POST", REGISTRY, first(), StatusCode::CREATED)
        .await;
    // An update to status HALT deregisters, too.
    let mut halt = reg("core-data", "heartbeat", "1s");
    halt["registration"]["status"] = "HALT".into();
    f.expect("PUT", REGISTRY, Some(halt), StatusCode::NO_CONTENT)
        .await;
    f.expect("GET", CORE_DATA, None, StatusCode::NOT_FOUND)
        .await;
}

async fn bad_registrations_are_refused(b: Backend) {
    let f = fixture(b, Config::default()).await;
    for bad in [
        json!({"apiVersion": "v3", "registration": {"serviceId": "", "port": 1, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 0, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "carrier-pigeon"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "http", "path": "x"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "soon"}}}),
        json!({"apiVersion": "v2", "registration": {"serviceId": "a", "port": 1, "healthCheck": {"type": "heartbeat"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "port": 70000, "healthCheck": {"type": "heartbeat"}}}),
        // What EdgeX requires: a host and an interval.
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "1s"}}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "h", "port": 1, "healthCheck": {"type": "heartbeat", "interval": ""}}}),
        // Outpost's additions: a version a console can show, a start that is a time.
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "h", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "1s"}, "version": "x".repeat(65)}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "h", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "1s"}, "version": "1.0\u{1b}[31m"}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "h", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "1s"}, "started": -5}}),
        json!({"apiVersion": "v3", "registration": {"serviceId": "a", "host": "h", "port": 1, "healthCheck": {"type": "heartbeat", "interval": "1s"}, "started": i64::MAX}}),
    ] {
        let body = f
            .expect("POST", REGISTRY, Some(bad.clone()), StatusCode::BAD_REQUEST)
            .await;
        assert_eq!(body["statusCode"], 400);
    }
    let req = Request::builder()
        .method("POST")
        .uri(REGISTRY)
        .body(Body::from("{not json"))
        .unwrap();
    let (status, _, _) = outpost_testkit::request(&f.router(), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, body) = f.call("GET", "/api/v3/registry/all", None).await;
    assert_eq!(body["totalCount"], 0);
}

/// The status of `id` after `ms` of (paused) time and a sweep; `None` once it is removed.
async fn status_after(
    reg: &Arc<crate::registry::Registry>,
    probes: &mut tokio::task::JoinSet<()>,
    id: &str,
    ms: u64,
) -> Option<String> {
    tokio::time::advance(Duration::from_millis(ms)).await;
    reg.sweep(probes).await;
    reg.get(id).map(|r| r.status.as_str().to_string())
}

#[tokio::test(start_paused = true)]
async fn missed_heartbeats_mark_down_then_remove() {
    let cfg = Config {
        remove_after_ms: 2_000,
        ..Config::default()
    };
    let f = fixture(Backend::Sqlite, cfg).await;
    f.call(
        "POST",
        REGISTRY,
        Some(reg("core-data", "heartbeat", "100ms")),
    )
    .await;
    let heartbeat = format!("{CORE_DATA}/heartbeat");
    let reg = &f.state.registry;
    let mut probes = tokio::task::JoinSet::new();
    let up = Some("UP".to_string());
    let down = Some("DOWN".to_string());
    assert_eq!(status_after(reg, &mut probes, "core-data", 250).await, up);
    // A heartbeat keeps it alive.
    f.call("PUT", &heartbeat, None).await;
    assert_eq!(status_after(reg, &mut probes, "core-data", 250).await, up);
    // Silence beyond three intervals: DOWN.
    assert_eq!(status_after(reg, &mut probes, "core-data", 100).await, down);
    // A late heartbeat brings it back.
    f.call("PUT", &heartbeat, None).await;
    assert_eq!(reg.get("core-data").unwrap().status.as_str(), "UP");
    // Silence again, past the grace period: removed, also from storage.
    assert_eq!(status_after(reg, &mut probes, "core-data", 400).await, down);
    assert_eq!(
        status_after(reg, &mut probes, "core-data", 2_100).await,
        None
    );
    assert!(f.store.load_registrations().await.unwrap().is_empty());
    f.expect("PUT", &heartbeat, None, StatusCode::NOT_FOUND)
        .await;
}

async fn registrations_survive_a_restart(b: Backend) {
    let f = fixture(b, Config::default()).await;
    for (id, check, interval) in [
        ("core-data", "heartbeat", "1s"),
        ("core-metadata", "http", "10s"),
    ] {
        f.call("POST", REGISTRY, Some(reg(id, check, interval)))
            .await;
    }
    let again = crate::app(&Config::default(), Arc::clone(&f.store))
        .await
        .unwrap();
    let (_, regs) = again.registry.list(false);
    let ids: Vec<_> = regs.iter().map(|r| r.service_id.as_str()).collect();
    assert_eq!(ids, ["core-data", "core-metadata"]);
}

async fn long_poll_returns_on_change(b: Backend) {
    let f = fixture(b, Config::default()).await;
    let (_, body) = f.call("GET", "/api/v3/registry/all", None).await;
    let index = body["index"].as_u64().unwrap();
    let router = f.router();
    let waiter = tokio::spawn(async move {
        let uri = format!("/api/v3/registry/all?waitIndex={index}&waitMs=10000");
        outpost_testkit::call(&router, "GET", &uri, None).await.1
    });
    f.call("POST", REGISTRY, Some(reg("core-data", "heartbeat", "1s")))
        .await;
    let body = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("long-poll did not return on change")
        .unwrap();
    assert!(body["index"].as_u64().unwrap() > index);
    assert_eq!(body["registrations"][0]["serviceId"], "core-data");
}

const KVS: &str = "/api/v3/kvs/key";

async fn key_values(b: Backend) {
    let f = fixture(b, Config::default()).await;
    let config = json!({"value": {"MaxEventSize": 25000,
        "Writable": {"LogLevel": "INFO", "PersistData": true}}});
    let flatten = format!("{KVS}/edgex/v4/core-data?flatten=true");
    let body = f
        .expect("PUT", &flatten, Some(config), StatusCode::OK)
        .await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    let writable = format!("{KVS}/edgex/v4/core-data/Writable?plaintext=true");
    let body = f.expect("GET", &writable, None, StatusCode::OK).await;
    let kvs = body["response"].as_array().unwrap();
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[0]["key"], "edgex/v4/core-data/Writable/LogLevel");
    assert_eq!(kvs[0]["value"], "INFO");
    // Values are kept as text, as EdgeX's configuration clients read them.
    assert_eq!(kvs[1]["value"], "true");
    let log_level = format!("{KVS}/edgex/v4/core-data/Writable/LogLevel");
    let (_, body) = f.call("GET", &log_level, None).await;
    assert_eq!(body["response"][0]["value"], "SU5GTw==");
    let keys = format!("{KVS}/edgex?keyOnly=true");
    let (_, body) = f.call("GET", &keys, None).await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    // A key that merely shares a prefix string is not below it.
    let database = format!("{KVS}/edgex/v4/core-database");
    f.call("PUT", &database, Some(json!({"value": "x"}))).await;
    let keys = format!("{KVS}/edgex/v4/core-data?keyOnly=true");
    let (_, body) = f.call("GET", &keys, None).await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    let core_data = format!("{KVS}/edgex/v4/core-data");
    // An exact delete of a key with keys below it.
    f.expect("DELETE", &core_data, None, StatusCode::CONFLICT)
        .await;
    let nothing = format!("{KVS}/edgex/v4/nothing");
    f.expect("DELETE", &nothing, None, StatusCode::NOT_FOUND)
        .await;
    let below = format!("{core_data}?prefixMatch=true");
    let body = f.expect("DELETE", &below, None, StatusCode::OK).await;
    assert_eq!(body["response"].as_array().unwrap().len(), 3);
    f.expect("GET", &core_data, None, StatusCode::NOT_FOUND)
        .await;
    let empty_segment = format!("{KVS}/a//b");
    let one = Some(json!({"value": 1}));
    f.expect("PUT", &empty_segment, one, StatusCode::BAD_REQUEST)
        .await;
    // Flattening leaves out nulls and empty objects; nothing left to store is an error.
    let app = format!("{KVS}/app?flatten=true");
    let sparse = json!({"value": {"a": null, "b": {}, "c": {"d": 2.5}}});
    let body = f.expect("PUT", &app, Some(sparse), StatusCode::OK).await;
    assert_eq!(body["response"], json!(["app/c/d"]));
    let leaf = format!("{KVS}/app/c/d");
    let (_, body) = f.call("GET", &format!("{leaf}?plaintext=true"), None).await;
    assert_eq!(body["response"][0]["value"], "2.5");
    let nulls = Some(json!({"value": {"a": null}}));
    f.expect("PUT", &app, nulls, StatusCode::BAD_REQUEST).await;
    // A leaf delete removes only that key.
    let body = f.expect("DELETE", &leaf, None, StatusCode::OK).await;
    assert_eq!(body["response"], json!(["app/c/d"]));
}

#[tokio::test]
async fn http_checked_services_are_probed() {
    let f = fixture(Backend::Sqlite, Config::default()).await;
    // A real service on a real socket that answers its health check.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/api/v3/ping", axum::routing::get(|| async { "pong" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut r = reg("edgex-service", "http", "100ms");
    r["registration"]["port"] = json!(port);
    f.expect("POST", REGISTRY, Some(r), StatusCode::CREATED)
        .await;
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

fn kv_index(headers: &axum::http::HeaderMap) -> u64 {
    headers[crate::routes::KV_INDEX_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn key_value_watch_returns_on_change(b: Backend) {
    let f = fixture(b, Config::default()).await;
    let level = format!("{KVS}/edgex/v4/core-data/Writable/LogLevel");
    f.expect(
        "PUT",
        &level,
        Some(json!({"value": "INFO"})),
        StatusCode::OK,
    )
    .await;
    let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();
    let (status, headers, _) = outpost_testkit::request(
        &f.router(),
        get(format!("{KVS}/edgex/v4/core-data/Writable")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let index = kv_index(&headers);
    // Nothing changed: the watch waits its time out and answers the same index.
    let (_, headers, _) = outpost_testkit::request(
        &f.router(),
        get(format!(
            "{KVS}/edgex/v4/core-data/Writable?waitIndex={index}&waitMs=200"
        )),
    )
    .await;
    assert_eq!(kv_index(&headers), index);
    let router = f.router();
    let waiter = tokio::spawn(async move {
        let uri = format!(
            "{KVS}/edgex/v4/core-data/Writable?plaintext=true&waitIndex={index}&waitMs=10000"
        );
        outpost_testkit::request(&router, get(uri)).await
    });
    f.expect(
        "PUT",
        &level,
        Some(json!({"value": "DEBUG"})),
        StatusCode::OK,
    )
    .await;
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the watch did not return on change")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(kv_index(&headers) > index);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["response"][0]["value"], "DEBUG");
    // A missing key answers 404 with the index, so a watcher can wait for its creation.
    let (status, headers, _) =
        outpost_testkit::request(&f.router(), get(format!("{KVS}/edgex/v4/nothing"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(kv_index(&headers) > index);
}

async fn a_service_writes_only_its_own_keys(b: Backend) {
    use outpost_kit::internal::{Caller, Identity};
    let f = fixture(b, Config::default()).await;
    let put = |who: Identity, key: &str| {
        Request::put(format!("{KVS}/{key}"))
            .header("content-type", "application/json")
            .extension(Caller(Some(who)))
            .body(Body::from(r#"{"value": "DEBUG"}"#))
            .unwrap()
    };
    let service = |id: &str| Identity::Service(id.into());
    for (who, key, want) in [
        (
            service("core-data"),
            "edgex/v4/core-data/Writable/LogLevel",
            StatusCode::OK,
        ),
        (
            service("core-data@2"),
            "edgex/v4/core-data/Writable/LogLevel",
            StatusCode::OK,
        ),
        (
            service("core-data"),
            "edgex/v4/core-metadata/Writable/LogLevel",
            StatusCode::FORBIDDEN,
        ),
        (
            service("core-data"),
            "edgex/v4/core-database/x",
            StatusCode::FORBIDDEN,
        ),
        (service("core-data"), "other/key", StatusCode::FORBIDDEN),
        (
            Identity::Admin("admin".into()),
            "edgex/v4/core-metadata/Writable/LogLevel",
            StatusCode::OK,
        ),
    ] {
        let (status, _, body) = outpost_testkit::request(&f.router(), put(who, key)).await;
        assert_eq!(status, want, "{key}: {}", String::from_utf8_lossy(&body));
    }
    // Its whole configuration at once, as EdgeX uploads it: every key its own.
    let upload = |key: &str| {
        Request::put(format!("{KVS}/{key}?flatten=true"))
            .header("content-type", "application/json")
            .extension(Caller(Some(service("core-data"))))
            .body(Body::from(
                r#"{"value": {"Writable": {"PersistData": true}}}"#,
            ))
            .unwrap()
    };
    let (status, _, _) = outpost_testkit::request(&f.router(), upload("edgex/v4/core-data")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = outpost_testkit::request(&f.router(), upload("edgex/v4")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a key outside its own");
    let delete = Request::delete(format!("{KVS}/edgex/v4/core-metadata/Writable/LogLevel"))
        .extension(Caller(Some(service("core-data"))))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = outpost_testkit::request(&f.router(), delete).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// What PostgreSQL's files hold of a key/value: its key, and the value sealed.
#[tokio::test]
async fn key_values_reach_postgresql_sealed() {
    let database = outpost_testkit::postgres::server().database();
    let secrets = tempfile::tempdir().unwrap();
    let store = crate::postgres::PgStore::open(&database.storage(), secrets.path())
        .await
        .unwrap();
    let secret = "a-password-only-the-service-knows";
    store
        .kv_put(vec![("app/Writable/Password".into(), json!(secret))], 1)
        .await
        .unwrap();
    let stored = outpost_testkit::postgres::server().psql_in(
        &database.name,
        "SELECT key, encode(value, 'hex') FROM core_keeper.kv",
    );
    assert!(stored.contains("app/Writable/Password"), "{stored}");
    let hex_of = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(
        !stored.contains(&hex_of(secret)),
        "the value in plaintext: {stored}"
    );
    let back = store.kv_get("app".into()).await.unwrap();
    assert_eq!(back[0].value, json!(secret));
    // Another values key cannot read it: the store refuses to start.
    let other = tempfile::tempdir().unwrap();
    assert!(
        crate::postgres::PgStore::open(&database.storage(), other.path())
            .await
            .is_err()
    );
}
