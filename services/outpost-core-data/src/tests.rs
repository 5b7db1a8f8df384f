use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::config::RetentionConfig;
use crate::ingest::{Ingest, IngestMetrics};
use crate::routes::App;
use crate::sqlite::{MIGRATIONS, SqliteEventStore, WriterMetrics};
use crate::store::{IngestEvent, Outcome};
use crate::validate::Validator;
use outpost_bus::metadata::{MetadataView, ViewConfig};
use outpost_testkit::postgres::Backend;
use outpost_testkit::{Drive, each, until};

struct Fixture {
    /// The SQLite database (none on PostgreSQL).
    _db: Option<outpost_testkit::TempDb>,
    _ctx: outpost_testkit::TestContext,
    _secrets: Option<tempfile::TempDir>,
    app: Arc<App>,
}

async fn fixture_on(backend: Backend) -> Fixture {
    let test = outpost_testkit::context("core-data", &[]);
    let (db, secrets, store): (_, _, Arc<dyn crate::store::EventStore>) = match backend {
        Backend::Sqlite => {
            let db = outpost_testkit::temp_db("core-data", MIGRATIONS, 2);
            let store =
                SqliteEventStore::start(db.db.clone(), WriterMetrics::new(&test.ctx)).unwrap();
            (Some(db), None, Arc::new(store))
        }
        Backend::Postgres => {
            let database = outpost_testkit::postgres::server().database();
            let secrets = tempfile::tempdir().unwrap();
            let store = crate::postgres::PgEventStore::open(&database.storage(), secrets.path())
                .await
                .unwrap();
            (None, Some(secrets), Arc::new(store))
        }
    };
    let view = MetadataView::without_events(&test.ctx, ViewConfig::default());
    let ingest = Ingest::new(
        store,
        Arc::new(Validator::new(false, view, "s".into())),
        IngestMetrics::new(&test.ctx),
    )
    .with_writable(outpost_kit::writable::Live::fixed(
        crate::config::Writable {
            persist_data: true,
            max_result_count: 1000,
        },
    ));
    let ingest = Arc::new(ingest);
    let retention = Arc::new(crate::retention::Retention::new(
        Arc::clone(&ingest.store),
        crate::config::RetentionConfig {
            max_cap: 500,
            min_cap: 300,
            chunk_readings: 100,
            ..crate::config::RetentionConfig::default()
        },
        "retention_deleted_readings_total".into(),
    ));
    let app = Arc::new(App {
        ingest,
        retention,
        bus: outpost_bus::Link::default(),
        tasks: test.ctx.tasks.clone(),
        publish_rest_events: false,
    });
    Fixture {
        _db: db,
        _ctx: test,
        _secrets: secrets,
        app,
    }
}

outpost_testkit::on_both_backends!(
    fixture = fixture_on;
    add_get_duplicate_and_bad_events,
    cbor_events_are_accepted,
    reading_queries_paging_and_aggregates,
    deletions_keep_counts_right,
    retention_by_count_keeps_the_newest,
    a_retention_run_asked_for_reports_its_progress,
    duplicates_inside_one_batch_and_across_batches,
);

impl Drive for Fixture {
    fn router(&self) -> axum::Router {
        crate::routes::router(Arc::clone(&self.app))
    }
}

fn event(device: &str, origin: i64, readings: &[(&str, &str, &str)]) -> Value {
    let rs: Vec<Value> = readings
        .iter()
        .map(|(res, vt, v)| {
            json!({"deviceName": device, "profileName": "p", "resourceName": res, "origin": origin,
                   "valueType": vt, "value": v, "id": uuid::Uuid::new_v4().to_string()})
        })
        .collect();
    json!({"apiVersion": "v3", "event": {"apiVersion": "v3", "id": uuid::Uuid::new_v4().to_string(),
        "deviceName": device, "profileName": "p", "sourceName": "s", "origin": origin, "readings": rs,
        "tags": {"site": "north"}}})
}

async fn post(f: &Fixture, ev: &Value) -> (StatusCode, Value) {
    let d = ev["event"]["deviceName"].as_str().unwrap().to_string();
    f.call(
        "POST",
        &format!("/api/v3/event/svc/p/{d}/s"),
        Some(ev.clone()),
    )
    .await
}

async fn add_get_duplicate_and_bad_events(f: Fixture) {
    let ev = event(
        "d1",
        1_000,
        &[("temp", "Float64", "21.5"), ("on", "Bool", "true")],
    );
    let (s, body) = post(&f, &ev).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["id"], ev["event"]["id"]);
    let (s, _) = post(&f, &ev).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let id = ev["event"]["id"].as_str().unwrap();
    let got = f
        .expect(
            "GET",
            &format!("/api/v3/event/id/{id}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(got["event"]["readings"].as_array().unwrap().len(), 2);
    assert_eq!(got["event"]["readings"][0]["value"], "21.5");
    assert_eq!(
        got["event"]["readings"][0]["id"],
        ev["event"]["readings"][0]["id"]
    );
    assert_eq!(got["event"]["tags"]["site"], "north");
    let (_, got) = f
        .call("GET", &format!("/api/v3/event/id/{id}?numeric=true"), None)
        .await;
    assert_eq!(got["event"]["readings"][0]["value"], 21.5);

    // Bad input: each is refused and nothing changes.
    let mut wrong_path = event("d1", 2_000, &[("temp", "Float64", "1")]);
    wrong_path["event"]["profileName"] = json!("other");
    for (uri, body) in [
        ("/api/v3/event/svc/p/d1/s", json!("{not json")),
        (
            "/api/v3/event/svc/p/d1/s",
            event("d1", 3_000, &[("temp", "Float64", "warm")]),
        ),
        (
            "/api/v3/event/svc/p/d1/s",
            event("d1", 3_000, &[("small", "Int8", "300")]),
        ),
        (
            "/api/v3/event/svc/p/d1/s",
            event("d1", 0, &[("temp", "Float64", "1")]),
        ),
        (
            "/api/v3/event/svc/p/d1/s",
            json!({"apiVersion": "v3", "event": {"id": "nope"}}),
        ),
        ("/api/v3/event/svc/p/d1/s", wrong_path),
        (
            "/api/v3/event/svc/p/d2/s",
            event("d1", 3_000, &[("temp", "Float64", "1")]),
        ),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri(uri)
            .body(Body::from(if body.is_string() {
                body.as_str().unwrap().to_string()
            } else {
                body.to_string()
            }))
            .unwrap();
        let (s, resp) = f.send(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(resp["statusCode"], 400);
    }
    let (_, c) = f.call("GET", "/api/v3/event/count", None).await;
    assert_eq!(c["count"], 1);
    let (_, c) = f.call("GET", "/api/v3/reading/count", None).await;
    assert_eq!(c["count"], 2);
    f.expect(
        "GET",
        "/api/v3/event/id/not-a-uuid",
        None,
        StatusCode::BAD_REQUEST,
    )
    .await;
    f.expect(
        "GET",
        &format!("/api/v3/event/id/{}", uuid::Uuid::new_v4()),
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
}

async fn cbor_events_are_accepted(f: Fixture) {
    let ev = event("d1", 5, &[("temp", "Float64", "1.25")]);
    let req: outpost_contracts::event::AddEventRequest =
        serde_json::from_value(ev.clone()).unwrap();
    let mut bytes = Vec::new();
    ciborium::into_writer(&req, &mut bytes).unwrap();
    let r = Request::builder()
        .method("POST")
        .uri("/api/v3/event/svc/p/d1/s")
        .header("content-type", "application/cbor")
        .body(Body::from(bytes))
        .unwrap();
    let (s, body) = f.send(r).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let r = Request::builder()
        .method("POST")
        .uri("/api/v3/event/svc/p/d1/s")
        .header("content-type", "application/cbor")
        .body(Body::from(vec![0xa1, 0xff]))
        .unwrap();
    let (s, _) = f.send(r).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn seed(f: &Fixture) {
    for i in 0..10i64 {
        post(
            f,
            &event(
                "d1",
                1_000 + i,
                &[
                    ("temp", "Float64", &format!("{}.5", i)),
                    ("count", "Int32", &i.to_string()),
                ],
            ),
        )
        .await;
        post(
            f,
            &event(
                "d2",
                2_000 + i,
                &[("temp", "Float64", "100"), ("label", "String", "x")],
            ),
        )
        .await;
    }
}

async fn reading_queries_paging_and_aggregates(f: Fixture) {
    seed(&f).await;
    let (_, r) = f.call("GET", "/api/v3/reading/all?limit=3", None).await;
    assert_eq!(r["totalCount"], 40);
    let rs = r["readings"].as_array().unwrap();
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0]["deviceName"], "d2", "newest first");
    let (_, r) = f
        .call("GET", "/api/v3/reading/device/name/d1?limit=-1", None)
        .await;
    assert_eq!(r["totalCount"], 20);
    assert_eq!(r["readings"].as_array().unwrap().len(), 20);
    let counts = "/api/v3/reading/device/name/d1/resourceName/count?limit=2&numeric=true";
    let (_, r) = f.call("GET", counts, None).await;
    assert_eq!(r["totalCount"], 10);
    assert_eq!(r["readings"][0]["value"], 9);
    // What each query finds in all (whatever the page).
    for (uri, total) in [
        ("/api/v3/reading/resourceName/temp", 20),
        ("/api/v3/reading/device/name/d1/start/1002/end/1004", 6),
        ("/api/v3/reading/resourceName/temp/start/1000/end/1004", 5),
        (
            "/api/v3/reading/device/name/d1/resourceName/temp/start/1000/end/1001",
            2,
        ),
        ("/api/v3/reading/start/2005/end/3000", 10),
        ("/api/v3/reading/device/name/nobody", 0),
        ("/api/v3/reading/device/name/d1/start/0/end/5000", 20),
        ("/api/v3/event/start/1005/end/2001", 7),
    ] {
        let (_, r) = f.call("GET", uri, None).await;
        assert_eq!(r["totalCount"], total, "{uri}: {r}");
    }
    for uri in [
        "/api/v3/reading/start/10/end/5",
        "/api/v3/reading/start/abc/end/5",
        "/api/v3/reading/all?aggregateFunc=MEDIAN",
    ] {
        f.expect("GET", uri, None, StatusCode::BAD_REQUEST).await;
    }
    let past = "/api/v3/reading/all?offset=41";
    f.expect("GET", past, None, StatusCode::RANGE_NOT_SATISFIABLE)
        .await;
    let last = "/api/v3/reading/all?offset=-1&limit=5";
    let r = f.expect("GET", last, None, StatusCode::OK).await;
    assert_eq!(r["readings"].as_array().unwrap().len(), 5);

    // Aggregates, one per device and resource.
    let sums = "/api/v3/reading/device/name/d1?aggregateFunc=SUM";
    let (_, r) = f.call("GET", sums, None).await;
    assert_eq!(r["aggregateFunc"], "SUM");
    let by: HashMap<String, Value> = each(&r["readings"], |x| {
        (x["resourceName"].as_str().unwrap().to_string(), x.clone())
    })
    .into_iter()
    .collect();
    // Aggregates are JSON numbers, as EdgeX renders them.
    assert_eq!(by["count"]["value"], 45);
    assert_eq!(by["count"]["valueType"], "Int64");
    assert_eq!(by["temp"]["value"], 50);
    assert_eq!(by["temp"]["valueType"], "Float64");
    let avgs = "/api/v3/reading/resourceName/temp?aggregateFunc=avg&numeric=true";
    let (_, r) = f.call("GET", avgs, None).await;
    let avgs = each(&r["readings"], |x| x["value"].as_f64().unwrap());
    assert_eq!(avgs, [5.0, 100.0]);
    let text = "/api/v3/reading/device/name/d2/resourceName/label?aggregateFunc=MAX";
    let (_, r) = f.call("GET", text, None).await;
    assert_eq!(
        r["readings"][0]["value"], "",
        "no numeric value to aggregate"
    );
    let (_, r) = f
        .call("GET", "/api/v3/reading/all?aggregateFunc=COUNT", None)
        .await;
    assert_eq!(r["readings"].as_array().unwrap().len(), 4);

    // EdgeX's multi-resource query: resource names in the body of a GET.
    let d1 = "/api/v3/reading/device/name/d1/start/0/end/5000";
    let names = Some(json!({"resourceNames": ["count", "nope"]}));
    let r = f.expect("GET", d1, names, StatusCode::OK).await;
    assert_eq!(r["totalCount"], 10);
    assert!(
        r["readings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["resourceName"] == "count")
    );
    // An empty collection answers an empty page at any offset.
    let (s, r) = f
        .call("GET", "/api/v3/reading/device/name/nobody?offset=50", None)
        .await;
    assert_eq!((s, r["totalCount"].as_u64()), (StatusCode::OK, Some(0)));

    // Events.
    let (_, r) = f
        .call("GET", "/api/v3/event/device/name/d2?limit=2", None)
        .await;
    assert_eq!(r["totalCount"], 10);
    assert_eq!(r["events"][0]["origin"], 2_009);
    assert_eq!(r["events"][0]["readings"].as_array().unwrap().len(), 2);
    for (uri, count) in [
        ("/api/v3/event/count/device/name/d1", 10),
        ("/api/v3/reading/count/device/name/d2", 20),
    ] {
        let (_, r) = f.call("GET", uri, None).await;
        assert_eq!(r["count"], count, "{uri}");
    }
}

/// The count `uri` answers.
async fn count(f: &Fixture, uri: &str) -> Value {
    f.call("GET", uri, None).await.1["count"].clone()
}

/// Waits until `uri` counts nothing, as a deletion that runs in the background leaves it.
async fn until_none(f: &Fixture, what: &str, uri: &str) {
    until(what, Duration::from_secs(10), async || {
        (count(f, uri).await == 0).then_some(())
    })
    .await;
}

async fn deletions_keep_counts_right(f: Fixture) {
    seed(&f).await;
    // Each device's counts and newest origin, from the kept counts and the index.
    assert_eq!(
        summary(&f).await,
        [("d1".into(), 10, 20, 1_009), ("d2".into(), 10, 20, 2_009)]
    );
    let (_, r) = f
        .call("GET", "/api/v3/event/device/name/d1?limit=1", None)
        .await;
    let id = r["events"][0]["id"].as_str().unwrap().to_string();
    let event = format!("/api/v3/event/id/{id}");
    f.expect("DELETE", &event, None, StatusCode::OK).await;
    f.expect("DELETE", &event, None, StatusCode::NOT_FOUND)
        .await;
    let readings = "/api/v3/reading/count";
    assert_eq!(count(&f, "/api/v3/reading/count/device/name/d1").await, 18);

    let d2 = "/api/v3/event/device/name/d2";
    f.expect("DELETE", d2, None, StatusCode::ACCEPTED).await;
    until_none(&f, "device deletion", "/api/v3/event/count/device/name/d2").await;
    assert_eq!(count(&f, readings).await, 18);
    // The newest event of d1 was the one deleted.
    assert_eq!(summary(&f).await, [("d1".into(), 9, 18, 1_008)]);

    // Every stored origin is ancient, so an age of one second deletes them all.
    let a_second = "/api/v3/event/age/1000000000";
    f.expect("DELETE", a_second, None, StatusCode::ACCEPTED)
        .await;
    until_none(&f, "age deletion", "/api/v3/event/count").await;
    assert_eq!(count(&f, readings).await, 0);
    assert!(summary(&f).await.is_empty(), "no device is left");
    let negative = "/api/v3/event/age/-5";
    f.expect("DELETE", negative, None, StatusCode::BAD_REQUEST)
        .await;
}

/// `GET /api/v3/device/summary` as (device, events, readings, newest origin).
async fn summary(f: &Fixture) -> Vec<(String, u64, u64, i64)> {
    let v = f
        .expect("GET", "/api/v3/device/summary", None, StatusCode::OK)
        .await;
    v["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["deviceName"].as_str().unwrap_or_default().to_string(),
                d["eventCount"].as_u64().unwrap_or(0),
                d["readingCount"].as_u64().unwrap_or(0),
                d["lastOrigin"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn ingest_event(device: &str, origin: i64, n: usize) -> IngestEvent {
    let v: Value = event(device, origin, &vec![("r", "Float64", "1.0"); n]);
    let req: outpost_contracts::event::AddEventRequest = serde_json::from_value(v).unwrap();
    let nums = req.event.validate().unwrap();
    IngestEvent {
        event: req.event,
        nums,
    }
}

async fn retention_by_count_keeps_the_newest(f: Fixture) {
    let store = Arc::clone(&f.app.ingest.store);
    let batch: Vec<IngestEvent> = (0..100)
        .map(|i| ingest_event("d1", 1_000 + i, 10))
        .collect();
    let outcomes = store.append(batch.into()).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Stored));
    let cfg = RetentionConfig {
        max_cap: 500,
        min_cap: 300,
        chunk_readings: 100,
        ..RetentionConfig::default()
    };
    // Under the cap nothing happens.
    let under = RetentionConfig {
        max_cap: 2_000,
        ..cfg.clone()
    };
    assert_eq!(
        crate::retention::run_once(Arc::clone(&store), &under)
            .await
            .unwrap(),
        0
    );
    let removed = crate::retention::run_once(Arc::clone(&store), &cfg)
        .await
        .unwrap();
    assert_eq!(removed, 700);
    let t = store.totals(None).await.unwrap();
    assert_eq!((t.events, t.readings), (30, 300));
    let (_, r) = f.call("GET", "/api/v3/event/all?limit=-1", None).await;
    let origins = each(&r["events"], |e| e["origin"].as_i64().unwrap());
    assert_eq!(origins.iter().min(), Some(&1_070), "the oldest went first");
    // By age: everything here is ancient.
    let aged = RetentionConfig {
        max_age_s: 60,
        ..cfg
    };
    assert_eq!(
        crate::retention::run_once(Arc::clone(&store), &aged)
            .await
            .unwrap(),
        300
    );
    assert_eq!(store.totals(None).await.unwrap().readings, 0);
}

/// A run asked for over the API counts what it will remove, reports it chunk by chunk,
/// and ends done; an age of its own removes what the configured bounds keep.
async fn a_retention_run_asked_for_reports_its_progress(f: Fixture) {
    let store = Arc::clone(&f.app.ingest.store);
    let batch: Vec<IngestEvent> = (0..100)
        .map(|i| ingest_event("d1", 1_000 + i, 10))
        .collect();
    store.append(batch.into()).await.unwrap();
    let before = f
        .expect("GET", "/api/v3/retention", None, StatusCode::OK)
        .await;
    assert_eq!(
        (
            &before["storedReadings"],
            &before["maxCap"],
            &before["minCap"]
        ),
        (&json!(1000), &json!(500), &json!(300)),
        "{before}"
    );
    assert!(before["run"].is_null(), "no run yet: {before}");

    let wait_done = |id: String| {
        let f = &f;
        async move {
            for _ in 0..200 {
                let (_, s) = f.call("GET", "/api/v3/retention", None).await;
                if s["run"]["id"] == id.as_str() && s["run"]["state"] != "running" {
                    return s;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            panic!("the run {id} did not end");
        }
    };
    let started = f
        .expect("POST", "/api/v3/retention/run", None, StatusCode::ACCEPTED)
        .await;
    assert_eq!(started["run"]["trigger"], "request", "{started}");
    let id = started["run"]["id"].as_str().unwrap().to_owned();
    let s = wait_done(id).await;
    let run = &s["run"];
    assert_eq!(run["state"], "done", "{s}");
    assert_eq!(
        (
            &run["toRemove"],
            &run["removedReadings"],
            &run["removedEvents"]
        ),
        (&json!(700), &json!(700), &json!(70)),
        "{s}"
    );
    assert_eq!(s["storedReadings"], 300, "{s}");
    // What the store takes on disk is said, whichever the backend.
    assert!(s["storedBytes"].as_u64().is_some_and(|b| b > 4096), "{s}");
    assert!(run["finished"].as_i64().unwrap() >= run["started"].as_i64().unwrap());

    // Everything here is ancient: an age of a minute removes the rest.
    let started = f
        .expect(
            "POST",
            "/api/v3/retention/run",
            Some(json!({"maxAgeSeconds": 60})),
            StatusCode::ACCEPTED,
        )
        .await;
    let s = wait_done(started["run"]["id"].as_str().unwrap().to_owned()).await;
    assert_eq!(
        (
            &s["run"]["maxAgeSeconds"],
            &s["run"]["toRemove"],
            &s["run"]["removedReadings"]
        ),
        (&json!(60), &json!(300), &json!(300)),
        "{s}"
    );
    assert_eq!(store.totals(None).await.unwrap().readings, 0);

    // A misspelt field is refused, in EdgeX's error form.
    let bad = f
        .expect(
            "POST",
            "/api/v3/retention/run",
            Some(json!({"maxAge": 60})),
            StatusCode::BAD_REQUEST,
        )
        .await;
    assert!(bad["message"].as_str().unwrap().contains("maxAge"), "{bad}");
}

async fn duplicates_inside_one_batch_and_across_batches(f: Fixture) {
    let store = Arc::clone(&f.app.ingest.store);
    let a = ingest_event("d1", 1, 2);
    let b = ingest_event("d1", 2, 2);
    let out = store
        .append(vec![a.clone(), b.clone(), a.clone()].into())
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Stored, Outcome::Stored, Outcome::Duplicate]);
    let out = store
        .append(vec![b, ingest_event("d2", 3, 1)].into())
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Duplicate, Outcome::Stored]);
    let t = store.totals(None).await.unwrap();
    assert_eq!((t.events, t.readings), (3, 5));
}

#[tokio::test]
async fn a_store_that_cannot_write_answers_503_says_why_in_health_and_recovers() {
    let f = fixture_on(Backend::Sqlite).await;
    let db = f._db.as_ref().expect("SQLite").db.clone();
    let store = Arc::clone(&f.app.ingest.store);
    let (s, _) = post(&f, &event("full", 1, &[("t", "Float64", "1.5")])).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(store.writer_health(), Ok(()));
    // The disk is full: the database may not grow by a page from now on.
    let pages: i64 = db.write_blocking(|c| {
        let n: i64 = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page count");
        c.pragma_update(None, "max_page_count", n)
            .expect("max_page_count");
        n
    });
    let big = "x".repeat(8192);
    let mut stored = 1;
    let refused = loop {
        let (s, v) = post(&f, &event("full", 2, &[("t", "String", &big)])).await;
        if s != StatusCode::CREATED {
            break (s, v);
        }
        stored += 1;
        assert!(
            stored < 100,
            "{stored} events of 8 KiB stored in {pages} pages"
        );
    };
    // Not the client's fault, and said so: retry later.
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
    assert!(
        refused.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry later")),
        "{}",
        refused.1
    );
    let why = store
        .writer_health()
        .expect_err("health says the writes fail");
    assert!(why.contains("full"), "{why}");
    // Nothing stored before is lost.
    assert_eq!(count(&f, "/api/v3/event/count").await, stored);
    // Space again: the next write succeeds and health recovers.
    db.write_blocking(|c| {
        c.pragma_update(None, "max_page_count", 1_073_741_823_i64)
            .expect("max_page_count");
    });
    let (s, v) = post(&f, &event("full", 3, &[("t", "String", &big)])).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(store.writer_health(), Ok(()));
    assert_eq!(count(&f, "/api/v3/event/count").await, stored + 1);
}

/// Instances sharing PostgreSQL take turns by lease: one holds it and renews it; another
/// gets it only once it ran out.
#[tokio::test]
async fn one_instance_at_a_time_holds_a_lease() {
    let database = outpost_testkit::postgres::server().database();
    let secrets = tempfile::tempdir().unwrap();
    let storage = database.storage();
    let open = || crate::postgres::PgEventStore::open(&storage, secrets.path());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    use crate::store::EventStore as _;
    let long = Duration::from_secs(30);
    assert!(a.lease("retention", long).await.unwrap());
    assert!(!b.lease("retention", long).await.unwrap(), "a holds it");
    assert!(
        a.lease("retention", Duration::from_millis(200))
            .await
            .unwrap(),
        "renewed"
    );
    assert!(!b.lease("retention", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.lease("retention", long).await.unwrap(),
        "ran out: b takes it"
    );
    assert!(!a.lease("retention", long).await.unwrap());
    // Other work has leases of its own.
    assert!(a.lease("other", long).await.unwrap());
}

/// An instance with another values key than the database was written with does not start
/// (it would write rows the others cannot open).
#[tokio::test]
async fn an_instance_with_another_values_key_is_refused() {
    let database = outpost_testkit::postgres::server().database();
    let storage = database.storage();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    crate::postgres::PgEventStore::open(&storage, first.path())
        .await
        .unwrap();
    let refused = crate::postgres::PgEventStore::open(&storage, second.path())
        .await
        .err()
        .expect("another key is refused");
    assert!(
        refused.to_string().contains("another values key"),
        "{refused}"
    );
    // The same key (copied, as the documentation says) is taken.
    std::fs::copy(
        first.path().join("core-data-values.key"),
        second.path().join("core-data-values.key"),
    )
    .unwrap();
    crate::postgres::PgEventStore::open(&storage, second.path())
        .await
        .unwrap();
}
