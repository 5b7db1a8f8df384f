//! Router tests: the service built as the node builds it, with a webhook destination whose
//! receiver is a real HTTP server in the test that records every batch it is sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use outpost_testkit::{Drive, until};
use serde_json::{Value, json};

use crate::Export;
use crate::config::{Config, Destination, Kind, Overflow};

/// One batch as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    /// The batch, decompressed when it came with `Content-Encoding: zstd`.
    body: Value,
    /// What the receiver answered.
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    answer: AtomicU16,
    batches: Mutex<Vec<Received>>,
}

/// A webhook receiver on 127.0.0.1: answers every batch with the status it is set to
/// (400 with a reason, 503 or 200) and records what it got.
#[derive(Clone)]
struct Receiver {
    state: Arc<ReceiverState>,
    url: String,
}

impl Receiver {
    async fn start(answer: u16) -> Self {
        let state = Arc::new(ReceiverState {
            answer: AtomicU16::new(answer),
            batches: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/ingest", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ingest", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, url }
    }

    fn answer(&self, status: u16) {
        self.state.answer.store(status, Ordering::SeqCst);
    }

    fn batches(&self) -> Vec<Received> {
        self.state.batches.lock().unwrap().clone()
    }

    /// The ids of the events in the batches answered `status`.
    fn ids_answered(&self, status: u16) -> Vec<String> {
        self.batches()
            .iter()
            .filter(|b| b.answered == status)
            .flat_map(|b| b.body["items"].as_array().cloned().unwrap_or_default())
            .map(|i| i["data"]["event"]["id"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let json = if headers.get("content-encoding").is_some_and(|v| v == "zstd") {
        zstd::stream::decode_all(&body[..]).unwrap()
    } else {
        body.to_vec()
    };
    let answered = state.answer.load(Ordering::SeqCst);
    state.batches.lock().unwrap().push(Received {
        headers,
        body: serde_json::from_slice(&json).unwrap(),
        answered,
    });
    let reason = if answered == 400 {
        r#"{"message":"schema mismatch"}"#
    } else {
        "{}"
    };
    (StatusCode::from_u16(answered).unwrap(), reason.to_string())
}

/// `[export]` with one webhook destination `hook` sending to `url`, changed by `f`.
fn config(url: &str, f: impl FnOnce(&mut Destination)) -> Config {
    let mut d = Destination {
        name: "hook".into(),
        kind: Kind::Webhook,
        url: url.into(),
        zstd_level: 0,
        retry_initial_ms: 20,
        retry_max_ms: 200,
        timeout_ms: 5_000,
        max_bytes: 1 << 20,
        ..Destination::default()
    };
    f(&mut d);
    Config {
        enabled: true,
        destinations: vec![d],
        ..Config::default()
    }
}

/// A receiver answering `answer`, and export with one webhook destination to it, which `f`
/// sets up.
async fn start(
    answer: u16,
    f: impl FnOnce(&mut Destination),
) -> (Receiver, outpost_testkit::Service) {
    let rx = Receiver::start(answer).await;
    outpost_kit::http::install_tls_provider();
    let svc = outpost_testkit::Service::build::<Export>(config(&rx.url, f), &[]).await;
    (rx, svc)
}

fn event(id: &str, device: &str) -> Value {
    json!({
        "apiVersion": "v3",
        "event": {
            "apiVersion": "v3", "id": id, "deviceName": device, "profileName": "meter",
            "sourceName": "level", "origin": 1_700_000_000_000_000_000i64,
            "readings": [{
                "id": format!("{id}-r"), "origin": 1_700_000_000_000_000_000i64,
                "deviceName": device, "resourceName": "level", "profileName": "meter",
                "valueType": "Int64", "value": "7"
            }]
        }
    })
}

fn ingest_path(device: &str) -> String {
    format!("/api/v3/event/export-test/meter/{device}/level")
}

/// A raw request: status, headers and the body as JSON (`Null` when it is not JSON).
async fn raw(
    svc: &outpost_testkit::Service,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, headers, bytes) = outpost_testkit::request(&svc.router, req).await;
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Adds event `id` of `device` over REST, which must be answered with `want`.
async fn add_event(
    svc: &outpost_testkit::Service,
    id: &str,
    device: &str,
    want: StatusCode,
) -> Value {
    let event = Some(event(id, device));
    svc.expect("POST", &ingest_path(device), event, want).await
}

async fn status(svc: &outpost_testkit::Service) -> Value {
    let v = svc
        .expect("GET", "/api/v3/export/status", None, StatusCode::OK)
        .await;
    v["destinations"][0].clone()
}

/// How long a delivery, a drain or a count may take to show.
const SETTLE: Duration = Duration::from_secs(15);

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_string()).collect()
}

#[tokio::test]
async fn status_shows_each_destination_with_its_queue_and_sender() {
    let (rx, svc) = start(200, |d| d.max_bytes = 300_000).await;
    let v = svc
        .expect("GET", "/api/v3/export/status", None, StatusCode::OK)
        .await;
    assert_eq!(v["apiVersion"], "v3");
    assert_eq!(v["statusCode"], 200);
    let dests = v["destinations"].as_array().expect("destinations");
    assert_eq!(dests.len(), 1, "{v}");
    let d = &dests[0];
    assert_eq!(
        keys(d),
        set(&["name", "kind", "url", "edge", "queue", "sender"])
    );
    assert_eq!(d["name"], "hook");
    assert_eq!(d["kind"], "webhook");
    assert_eq!(d["url"], rx.url.as_str());
    assert_eq!(d["edge"], Value::Null);

    let q = &d["queue"];
    assert_eq!(
        keys(q),
        set(&[
            "incarnation",
            "items",
            "bytes",
            "maxBytes",
            "oldestAgeMs",
            "priorities",
            "appended",
            "droppedOverflow",
            "expired",
            "refused",
            "diskFull",
            "corruptRecords",
        ])
    );
    assert_eq!(q["maxBytes"], 300_000);
    assert_eq!(q["items"], 0);
    assert_eq!(q["appended"], 0);
    assert_eq!(q["oldestAgeMs"], Value::Null);
    assert!(q["incarnation"].is_u64(), "{q}");
    let priorities = q["priorities"].as_array().expect("priorities");
    let names: Vec<_> = priorities.iter().map(|p| p["priority"].clone()).collect();
    assert_eq!(names, vec![json!("high"), json!("normal")]);
    for p in priorities {
        assert_eq!(keys(p), set(&["priority", "items", "bytes", "nextSeq"]));
        assert_eq!(p["items"], 0);
    }

    let s = &d["sender"];
    assert_eq!(
        keys(s),
        set(&[
            "connected",
            "lastSuccessMs",
            "lastError",
            "lastErrorMs",
            "consecutiveFailures",
            "nextRetryMs",
            "sentItems",
            "sentBatches",
            "wireBytes",
            "duplicates",
            "deadLettered",
            "transientFailures",
            "permanentFailures",
            "tooLarge",
        ])
    );
    assert_eq!(s["connected"], false);
    assert_eq!(s["sentItems"], 0);
    assert_eq!(s["consecutiveFailures"], 0);
    assert_eq!(s["lastError"], Value::Null);
}

#[tokio::test]
async fn an_event_added_over_rest_is_queued_and_reaches_the_receiver() {
    let (rx, svc) = start(200, |d| {
        d.zstd_level = 3;
        d.headers
            .insert("Authorization".into(), "Bearer test-token".into());
    })
    .await;
    let id = "8f0c7a52-4a7e-4f43-9f0e-1d2c3b4a5e6f";
    let v = add_event(&svc, id, "tank", StatusCode::CREATED).await;
    assert_eq!(v["statusCode"], 201);
    assert_eq!(v["id"], id);
    assert_eq!(v["destinations"], json!(["hook"]));

    until("the batch at the receiver", SETTLE, async || {
        (!rx.batches().is_empty()).then_some(())
    })
    .await;
    let batches = rx.batches();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let b = &batches[0];
    assert_eq!(b.headers["content-encoding"], "zstd");
    assert_eq!(b.headers["content-type"], "application/json");
    assert_eq!(b.headers["authorization"], "Bearer test-token");
    assert_eq!(b.body["priority"], "normal");
    let items = b.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", b.body);
    assert_eq!(items[0]["data"]["kind"], "event");
    assert_eq!(items[0]["data"]["event"]["id"], id);
    assert_eq!(items[0]["data"]["event"]["deviceName"], "tank");
    assert_eq!(items[0]["data"]["event"]["readings"][0]["value"], "7");
    assert_eq!(b.body["backlog"]["items"], 0);

    until("the sender to count the delivery", SETTLE, async || {
        (status(&svc).await["sender"]["sentItems"] == 1).then_some(())
    })
    .await;
    let s = status(&svc).await;
    assert_eq!(b.body["incarnation"], s["queue"]["incarnation"]);
    assert_eq!(s["queue"]["appended"], 1);
    assert_eq!(s["queue"]["items"], 0);
    assert_eq!(s["sender"]["sentBatches"], 1);
    assert_eq!(s["sender"]["connected"], true);
    assert_eq!(s["sender"]["deadLettered"], 0);
    assert!(s["sender"]["wireBytes"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test]
async fn events_on_high_priority_sources_go_in_high_priority_batches() {
    let (rx, svc) = start(200, |d| {
        d.high_priority = vec!["edgex/events/device/export-test/meter/alarm/#".into()];
    })
    .await;
    add_event(&svc, "a-1", "alarm", StatusCode::CREATED).await;
    add_event(&svc, "n-1", "tank", StatusCode::CREATED).await;
    until("both batches at the receiver", SETTLE, async || {
        (rx.ids_answered(200).len() == 2).then_some(())
    })
    .await;
    let by_id: HashMap<String, Value> = rx
        .batches()
        .iter()
        .flat_map(|b| {
            let p = b.body["priority"].clone();
            b.body["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |i| {
                    (
                        i["data"]["event"]["id"].as_str().unwrap().to_string(),
                        p.clone(),
                    )
                })
        })
        .collect();
    assert_eq!(by_id["a-1"], "high");
    assert_eq!(by_id["n-1"], "normal");
}

#[tokio::test]
async fn a_malformed_event_is_refused_with_400_and_nothing_is_queued() {
    let (rx, svc) = start(200, |_| {}).await;
    let no_readings = json!({"apiVersion": "v3", "event": {
        "apiVersion": "v3", "id": "x", "deviceName": "valve", "profileName": "meter",
        "sourceName": "level", "origin": 1, "readings": []
    }});
    let no_id = event("", "valve");
    let cases = [
        ("not JSON", "{".to_string(), "invalid JSON"),
        ("empty", String::new(), "empty"),
        (
            "not an event",
            r#"{"apiVersion":"v3","event":"valve"}"#.to_string(),
            "invalid JSON",
        ),
        (
            "another device than the path's",
            event("e-1", "other").to_string(),
            "the path says",
        ),
        (
            "no readings",
            no_readings.to_string(),
            "at least one reading",
        ),
        ("no id", no_id.to_string(), "needs an id"),
    ];
    for (what, body, message) in cases {
        let (code, _, v) = raw(&svc, "POST", &ingest_path("valve"), &body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["statusCode"], 400, "{what}: {v}");
        assert!(
            v["message"].as_str().unwrap_or_default().contains(message),
            "{what}: {v}"
        );
    }
    let s = status(&svc).await;
    assert_eq!(s["queue"]["appended"], 0, "{s}");
    assert_eq!(s["queue"]["items"], 0, "{s}");
    // A good event after them is the first and only one the receiver gets.
    add_event(&svc, "good", "valve", StatusCode::CREATED).await;
    until("the good event at the receiver", SETTLE, async || {
        (!rx.ids_answered(200).is_empty()).then_some(())
    })
    .await;
    assert_eq!(rx.ids_answered(200), vec!["good".to_string()]);
}

#[tokio::test]
async fn unknown_destinations_and_routes_are_404() {
    let (_rx, svc) = start(200, |_| {}).await;
    for (method, uri) in [
        ("GET", "/api/v3/export/deadletter/nope"),
        ("DELETE", "/api/v3/export/deadletter/nope"),
        ("POST", "/api/v3/export/deadletter/nope/requeue"),
    ] {
        let v = svc.expect(method, uri, None, StatusCode::NOT_FOUND).await;
        assert_eq!(v["statusCode"], 404, "{method} {uri}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("no destination nope"),
            "{method} {uri}: {v}"
        );
    }
    for (method, uri) in [
        ("POST", "/api/v3/event/export-test/meter/valve"),
        ("GET", "/api/v3/export/nothing"),
        ("GET", "/api/v3/export/deadletter"),
    ] {
        let (code, _, _) = raw(&svc, method, uri, &event("e", "valve").to_string()).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    // The known destination answers on the same routes.
    let letters = "/api/v3/export/deadletter/hook";
    let v = svc.expect("GET", letters, None, StatusCode::OK).await;
    assert_eq!(v["totalCount"], 0);
    assert_eq!(status(&svc).await["queue"]["appended"], 0);
}

#[tokio::test]
async fn an_event_no_destination_takes_is_422() {
    let (_rx, svc) = start(200, |d| {
        d.sources = vec!["edgex/events/device/other-service/#".into()];
    })
    .await;
    let v = add_event(&svc, "e-1", "valve", StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(
        v["message"].as_str().unwrap_or_default().contains(
            "no destination takes events on edgex/events/device/export-test/meter/valve/level"
        ),
        "{v}"
    );
    assert_eq!(status(&svc).await["queue"]["appended"], 0);
}

#[tokio::test]
async fn a_batch_refused_for_good_becomes_dead_letters_that_can_be_requeued_or_removed() {
    let (rx, svc) = start(400, |_| {}).await;
    let ids = ["d-1", "d-2", "d-3"];
    for id in ids {
        add_event(&svc, id, "valve", StatusCode::CREATED).await;
    }
    let letters_uri = "/api/v3/export/deadletter/hook";
    until("three dead letters", SETTLE, async || {
        (svc.call("GET", letters_uri, None).await.1["totalCount"] == 3).then_some(())
    })
    .await;
    let v = svc.expect("GET", letters_uri, None, StatusCode::OK).await;
    assert_eq!(v["statusCode"], 200);
    let letters = v["deadLetters"].as_array().expect("deadLetters");
    assert_eq!(letters.len(), 3, "{v}");
    let mut got: Vec<_> = letters
        .iter()
        .map(|l| l["data"]["event"]["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ids);
    for l in letters {
        let reason = l["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("400") && reason.contains("schema mismatch"),
            "{l}"
        );
        assert_eq!(l["priority"], "normal");
        assert!(
            l["failedMs"].as_u64().unwrap() >= l["enqueuedMs"].as_u64().unwrap(),
            "{l}"
        );
    }
    // Newest first, and the limit bounds the list but not the count.
    let seqs: Vec<u64> = letters.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    let (_, v) = svc
        .call("GET", &format!("{letters_uri}?limit=1"), None)
        .await;
    assert_eq!(v["totalCount"], 3);
    assert_eq!(v["deadLetters"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["deadLetters"][0]["seq"], seqs[0]);

    let s = status(&svc).await;
    assert_eq!(s["queue"]["items"], 0, "{s}");
    assert_eq!(s["sender"]["deadLettered"], 3, "{s}");
    assert_eq!(s["sender"]["sentItems"], 0, "{s}");
    assert!(
        s["sender"]["permanentFailures"].as_u64().unwrap() >= 1,
        "{s}"
    );
    assert!(
        s["sender"]["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{s}"
    );
    let mut refused = rx.ids_answered(400);
    refused.sort();
    assert_eq!(refused, ids);

    // The receiver is fixed: the letters go again, and only once.
    rx.answer(200);
    let (code, headers, v) = raw(&svc, "POST", &format!("{letters_uri}/requeue"), "{}").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["requeued"], 3);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(svc.call("GET", letters_uri, None).await.1["totalCount"], 0);
    until("the requeued letters at the receiver", SETTLE, async || {
        (rx.ids_answered(200).len() == 3).then_some(())
    })
    .await;
    let mut delivered = rx.ids_answered(200);
    delivered.sort();
    assert_eq!(delivered, ids);

    // Refused again, then removed.
    rx.answer(400);
    add_event(&svc, "d-4", "valve", StatusCode::CREATED).await;
    until("one dead letter", SETTLE, async || {
        (svc.call("GET", letters_uri, None).await.1["totalCount"] == 1).then_some(())
    })
    .await;
    let v = svc
        .expect("DELETE", letters_uri, None, StatusCode::OK)
        .await;
    assert_eq!(v["removed"], 1);
    assert_eq!(svc.call("GET", letters_uri, None).await.1["totalCount"], 0);
}

#[tokio::test]
async fn a_full_queue_under_refuse_new_answers_503_with_retry_after() {
    // The receiver is down for now (503): nothing leaves the queue.
    let (rx, svc) = start(503, |d| {
        d.max_bytes = 65_536;
        d.overflow = Overflow::RefuseNew;
    })
    .await;
    let mut accepted = 0u64;
    let mut refusal = None;
    for n in 0..5_000 {
        let (code, headers, v) = raw(
            &svc,
            "POST",
            &ingest_path("silo"),
            &event(&format!("f-{n}"), "silo").to_string(),
        )
        .await;
        match code {
            StatusCode::CREATED => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refusal = Some((headers, v));
                break;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let (headers, v) = refusal.expect("the queue never filled");
    assert!(accepted > 10, "only {accepted} accepted");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(v["statusCode"], 503);
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("destination hook") && message.contains("retry later"),
        "{v}"
    );
    // Nothing was dropped to make room, and the refused event was not queued.
    let s = status(&svc).await;
    assert_eq!(s["queue"]["appended"], accepted, "{s}");
    assert_eq!(s["queue"]["items"], accepted, "{s}");
    assert_eq!(s["queue"]["droppedOverflow"], 0, "{s}");
    assert!(s["queue"]["refused"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["queue"]["bytes"].as_u64().unwrap() <= 65_536, "{s}");
    assert!(
        s["sender"]["transientFailures"].as_u64().unwrap() >= 1,
        "{s}"
    );

    // The receiver comes back: the queue drains and new events are taken again.
    rx.answer(200);
    until("the queue to drain", SETTLE, async || {
        (status(&svc).await["queue"]["items"] == 0).then_some(())
    })
    .await;
    assert_eq!(rx.ids_answered(200).len() as u64, accepted);
    add_event(&svc, "after", "silo", StatusCode::CREATED).await;
}
