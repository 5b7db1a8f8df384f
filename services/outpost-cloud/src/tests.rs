//! Router tests: the cloud node built as `outpost cloud` builds it, its whole router (the
//! admin guard included) driven without sockets. The client certificate of a TLS
//! connection reaches the routes as a [`Peer`]; here the test puts it on the request.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use outpost_testkit::Service;
use outpost_testkit::postgres::Backend;
use serde_json::{Value, json};

use crate::{Cloud, Config, Peer};

struct Node {
    svc: Service,
    token: String,
}

outpost_testkit::on_both_backends!(
    admin_routes_need_the_admin_token_and_public_ones_do_not,
    enrollment_answers_a_bundle_once_per_name,
    an_enrolled_edge_ingests_once_and_its_data_can_be_queried,
    batches_are_checked_before_anything_is_stored,
    unknown_and_revoked_certificates_are_refused_and_the_data_stays,
    pages_merge_series_newest_first_and_retention_keeps_the_counts,
);

async fn node(b: Backend) -> Node {
    node_with(b, Config::default()).await
}

/// Data of any age is kept: the origins here are from 2023, and retention, which runs as
/// the node starts, would take alerts that old as they land.
fn keep_all(mut cfg: Config) -> Config {
    cfg.retention.max_age_s = 0;
    cfg
}

async fn node_with(b: Backend, mut cfg: Config) -> Node {
    cfg.storage = b.storage();
    let svc = Service::build::<Cloud>(keep_all(cfg), &[]).await;
    let token = outpost_storage::load_or_create_token(&svc.test.ctx.secrets_dir(), "cloud-admin")
        .expect("the admin token");
    Node { svc, token }
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

impl Node {
    /// A request with `token` as its bearer token, if any.
    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, bytes::Bytes) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        outpost_testkit::request(&self.svc.router, req).await
    }

    /// A request as the admin.
    async fn admin(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, _, b) = self.send(method, uri, body, Some(&self.token)).await;
        (s, json_of(&b))
    }

    /// A batch sent over a connection whose client certificate has `fingerprint`.
    async fn ingest(
        &self,
        fingerprint: Option<&str>,
        encoding: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method("POST").uri("/api/v3/ingest");
        if let Some(e) = encoding {
            req = req.header(header::CONTENT_ENCODING, e);
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(Peer {
            addr: "192.0.2.7:40000".parse().unwrap(),
            fingerprint: fingerprint.map(str::to_string),
        });
        let (s, _, b) = outpost_testkit::request(&self.svc.router, req).await;
        (s, json_of(&b))
    }

    async fn enroll(&self, name: &str) -> Value {
        let (s, bundle) = self
            .admin("POST", "/api/v3/edge", Some(json!({"name": name})))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{bundle}");
        bundle
    }
}

fn event_item(seq: u64, id: &str, device: &str, origin: i64, values: &[(&str, &str)]) -> Value {
    let readings: Vec<Value> = values
        .iter()
        .map(|(resource, value)| {
            json!({"id": format!("{id}-{resource}"), "origin": origin, "deviceName": device,
                "resourceName": resource, "profileName": "Tank", "valueType": "Float64",
                "units": "cm", "value": value})
        })
        .collect();
    json!({"seq": seq, "enqueuedMs": 1, "data": {"kind": "event", "event": {"apiVersion": "v3",
        "id": id, "deviceName": device, "profileName": "Tank", "sourceName": "level",
        "origin": origin, "readings": readings}}})
}

fn alert_item(seq: u64, id: &str, origin: i64) -> Value {
    json!({"seq": seq, "enqueuedMs": 1, "data": {"kind": "alert", "alert": {"id": id,
        "pipeline": "tank", "deviceName": "tank-1", "resourceName": "level", "value": "90.0",
        "condition": "level > 80", "severity": "critical", "origin": origin}}})
}

fn batch(priority: &str, items: Vec<Value>) -> Vec<u8> {
    json!({"incarnation": 7, "priority": priority, "items": items,
        "backlog": {"items": 12, "bytes": 3400, "oldestMs": 1_700_000_000_000u64}})
    .to_string()
    .into_bytes()
}

const T0: i64 = 1_700_000_000_000_000_000;

/// What only the admin may read.
const ADMIN_ONLY: [&str; 7] = [
    "/api/v3/edge/all",
    "/api/v3/edge/name/edge-1",
    "/api/v3/reading/edge/edge-1",
    "/api/v3/event/count/edge/edge-1",
    "/api/v3/alert/edge/edge-1",
    "/api/v3/config",
    "/metrics",
];

/// What anyone may read.
const PUBLIC: [&str; 4] = [
    "/api/v3/ping",
    "/api/v3/health",
    "/api/v3/version",
    "/api/v3/ca.pem",
];

async fn admin_routes_need_the_admin_token_and_public_ones_do_not(b: Backend) {
    let n = node(b).await;
    for uri in ADMIN_ONLY {
        let (s, headers, _) = n.send("GET", uri, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri} without a token");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer", "{uri}");
        let (s, _, body) = n.send("GET", uri, None, Some("not-the-token")).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri} with another token");
        assert!(
            json_of(&body)["message"]
                .as_str()
                .unwrap()
                .contains("admin token")
        );
    }
    // Of the same length as the real one, one character off.
    let mut near = n.token.clone().into_bytes();
    near[0] = if near[0] == b'0' { b'1' } else { b'0' };
    let near = String::from_utf8(near).unwrap();
    let (s, _, _) = n.send("GET", "/api/v3/edge/all", None, Some(&near)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = n
        .send("POST", "/api/v3/edge", Some(json!({"name": "e"})), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "enrollment is the admin's");
    let (s, _, _) = n
        .send("DELETE", "/api/v3/edge/name/e", None, Some("nope"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "revocation is the admin's");

    let (s, v) = n.admin("GET", "/api/v3/edge/all", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["totalCount"], 0);

    for uri in PUBLIC {
        let (s, _, _) = n.send("GET", uri, None, None).await;
        assert_eq!(s, StatusCode::OK, "{uri} is public");
    }
    let (_, headers, pem) = n.send("GET", "/api/v3/ca.pem", None, None).await;
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-pem-file");
    assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
    // Ingest needs no token, but a client certificate.
    let (s, v) = n.ingest(None, None, batch("normal", vec![])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{v}"
    );
}

async fn enrollment_answers_a_bundle_once_per_name(b: Backend) {
    let n = node(b).await;
    let bundle = n.enroll(" edge-1 ").await;
    assert_eq!(bundle["edge"], "edge-1", "the name is trimmed");
    assert_eq!(bundle["url"], "https://127.0.0.1:59740");
    let (_, _, ca) = n.send("GET", "/api/v3/ca.pem", None, None).await;
    assert_eq!(bundle["ca"], String::from_utf8_lossy(&ca).as_ref());
    assert!(
        bundle["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(bundle["key"].as_str().unwrap().contains("PRIVATE KEY"));
    let fp = bundle["fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 64, "SHA-256, hex: {fp}");

    let (s, _) = n
        .admin("POST", "/api/v3/edge", Some(json!({"name": "edge-1"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    for bad in [
        json!({"name": ""}),
        json!({"name": "a b"}),
        json!({"name": "x".repeat(129)}),
        json!({}),
    ] {
        let (s, v) = n.admin("POST", "/api/v3/edge", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    let (s, v) = n.admin("GET", "/api/v3/edge/name/edge-1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["edge"]["fingerprint"], fp);
    assert_eq!(v["edge"]["received"], 0);
    assert_eq!(v["edge"]["lastSeenMs"], Value::Null);
    assert!(v["edge"].get("revokedMs").is_none(), "{v}");
    let (s, _) = n.admin("GET", "/api/v3/edge/name/edge-2", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn an_enrolled_edge_ingests_once_and_its_data_can_be_queried(b: Backend) {
    let n = node(b).await;
    let fp = n.enroll("edge-1").await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let items = vec![
        event_item(
            1,
            "ev-1",
            "tank-1",
            T0,
            &[("level", "50.5"), ("temp", "20")],
        ),
        event_item(2, "ev-2", "tank-2", T0 + 1_000, &[("level", "70")]),
        alert_item(3, "al-1", T0 + 2_000),
        // Never storable: rejected alone, with the reason.
        json!({"seq": 4, "enqueuedMs": 1, "data": {"kind": "event", "event": {"id": "ev-x",
            "deviceName": "tank-1", "readings": []}}}),
        json!({"seq": 5, "enqueuedMs": 1, "data": {"kind": "nonsense"}}),
    ];
    let (s, v) = n
        .ingest(Some(&fp), None, batch("normal", items.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    assert_eq!(v["hwm"], 5);
    let rejected: Vec<_> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rejected.len(), 2, "{v}");
    assert_eq!(rejected[0], (4, "event without readings".to_string()));
    assert!(
        rejected[1].1.starts_with("not an export item"),
        "{rejected:?}"
    );

    // The same batch again (the edge did not hear the answer): all duplicates. The same
    // events under new sequence numbers (a new incarnation): duplicates by id.
    let (s, v) = n.ingest(Some(&fp), None, batch("normal", items)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(5)),
        "{v}"
    );
    assert_eq!(v["rejected"], json!([]));
    let again = vec![
        event_item(1, "ev-1", "tank-1", T0, &[("level", "50.5")]),
        alert_item(2, "al-1", T0 + 2_000),
        event_item(3, "ev-3", "tank-1", T0 + 3_000, &[("level", "60")]),
    ];
    let (_, v) = n.ingest(Some(&fp), None, batch("high", again)).await;
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );

    let (_, v) = n
        .admin("GET", "/api/v3/event/count/edge/edge-1", None)
        .await;
    assert_eq!(v["Count"], 3);
    let (_, v) = n.admin("GET", "/api/v3/reading/edge/edge-1", None).await;
    assert_eq!(v["totalCount"], 4, "{v}");
    let newest = &v["readings"][0];
    assert_eq!(
        (
            &newest["deviceName"],
            &newest["resourceName"],
            &newest["value"],
            &newest["origin"]
        ),
        (
            &json!("tank-1"),
            &json!("level"),
            &json!("60"),
            &json!(T0 + 3_000)
        )
    );
    assert_eq!(newest["units"], "cm");
    assert_eq!(newest["edge"], "edge-1");
    let (_, v) = n
        .admin(
            "GET",
            "/api/v3/reading/edge/edge-1?device=tank-1&resource=level&limit=1",
            None,
        )
        .await;
    assert_eq!(v["totalCount"], 2, "{v}");
    assert_eq!(v["readings"].as_array().unwrap().len(), 1);
    let (_, v) = n
        .admin(
            "GET",
            &format!("/api/v3/reading/edge/edge-1?start={T0}&end={}", T0 + 1_000),
            None,
        )
        .await;
    assert_eq!(v["totalCount"], 3, "{v}");
    let (_, v) = n.admin("GET", "/api/v3/alert/edge/edge-1", None).await;
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{v}");
    assert_eq!(
        (&alerts[0]["id"], &alerts[0]["severity"]),
        (&json!("al-1"), &json!("critical"))
    );
    // An edge never enrolled is a 404 naming the nearest one, not an empty page.
    let (status, v) = n.admin("GET", "/api/v3/reading/edge/edge-2", None).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        v["message"], "no edge edge-2 (did you mean 'edge-1'?)",
        "{v}"
    );
    // As are one edge's view and a revocation.
    for (method, path) in [
        ("GET", "/api/v3/edge/name/edge-2"),
        ("DELETE", "/api/v3/edge/name/edge-2"),
    ] {
        let (status, v) = n.admin(method, path, None).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert_eq!(
            v["message"], "no edge edge-2 (did you mean 'edge-1'?)",
            "{v}"
        );
    }

    // The fleet view: what the edge sent and the backlog it reported last.
    let (_, v) = n.admin("GET", "/api/v3/edge/all", None).await;
    assert_eq!(v["totalCount"], 1);
    let e = &v["edges"][0];
    assert_eq!(
        (
            e["received"].as_i64(),
            e["duplicates"].as_i64(),
            e["rejected"].as_i64()
        ),
        (Some(4), Some(7), Some(2)),
        "{e}"
    );
    assert_eq!(e["lastAddress"], "192.0.2.7:40000");
    assert!(e["lastSeenMs"].as_i64().unwrap() > 0);
    assert_eq!(
        e["backlog"],
        json!({"items": 12, "bytes": 3400, "oldestMs": 1_700_000_000_000u64})
    );
}

async fn batches_are_checked_before_anything_is_stored(b: Backend) {
    // Limits below the node's request body limit, so the cloud's own checks answer.
    let cfg = Config {
        max_body_bytes: 2048,
        max_batch_bytes: 4096,
        ..Config::default()
    };
    let (max_body, max_batch) = (cfg.max_body_bytes, cfg.max_batch_bytes);
    let n = node_with(b, cfg).await;
    let fp = n.enroll("edge-1").await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let one = || {
        batch(
            "normal",
            vec![event_item(1, "ev-1", "d", T0, &[("r", "1")])],
        )
    };

    // Compressed with zstd.
    let packed = zstd::encode_all(&one()[..], 3).unwrap();
    let (s, v) = n.ingest(Some(&fp), Some("zstd"), packed).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 1);

    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Some("gzip"),
            one(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "gzip",
        ),
        (
            Some("zstd"),
            b"not zstd".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid zstd body: ",
        ),
        (
            None,
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid JSON body: ",
        ),
        (None, Vec::new(), StatusCode::BAD_REQUEST, "empty"),
        (
            None,
            batch("urgent", vec![]),
            StatusCode::BAD_REQUEST,
            "unknown priority urgent",
        ),
        (
            None,
            batch(
                "normal",
                vec![
                    event_item(3, "a", "d", T0, &[("r", "1")]),
                    event_item(2, "b", "d", T0, &[("r", "1")]),
                ],
            ),
            StatusCode::BAD_REQUEST,
            "increasing sequence order",
        ),
        (
            None,
            vec![b' '; max_body + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
        ),
    ];
    for (encoding, body, status, message) in cases {
        let (s, v) = n.ingest(Some(&fp), encoding, body).await;
        assert_eq!(s, status, "{message}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(message),
            "{message}: {v}"
        );
    }
    // More than the limit once decompressed.
    let big = vec![b' '; max_batch + 1];
    let packed = zstd::encode_all(&big[..], 3).unwrap();
    let (s, v) = n.ingest(Some(&fp), Some("zstd"), packed).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("uncompressed"),
        "{v}"
    );

    let (_, v) = n
        .admin("GET", "/api/v3/event/count/edge/edge-1", None)
        .await;
    assert_eq!(v["Count"], 1, "only the good batch was stored");
}

async fn unknown_and_revoked_certificates_are_refused_and_the_data_stays(b: Backend) {
    let n = node(b).await;
    let body = || {
        batch(
            "normal",
            vec![event_item(1, "ev-1", "d", T0, &[("r", "1")])],
        )
    };
    let (s, v) = n.ingest(Some(&"ab".repeat(32)), None, body()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no enrolled edge"),
        "{v}"
    );

    let fp = n.enroll("edge-1").await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = n.ingest(Some(&fp), None, body()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, _) = n.admin("DELETE", "/api/v3/edge/name/edge-1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = n.admin("DELETE", "/api/v3/edge/name/edge-2", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = n.ingest(Some(&fp), None, body()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a revoked certificate: {v}");
    let (_, v) = n.admin("GET", "/api/v3/edge/name/edge-1", None).await;
    assert!(v["edge"]["revokedMs"].as_i64().unwrap() > 0, "{v}");
    let (_, v) = n
        .admin("GET", "/api/v3/event/count/edge/edge-1", None)
        .await;
    assert_eq!(v["Count"], 1, "its data stays");

    // Enrolled again: a new certificate; the old one stays refused.
    let new_fp = n.enroll("edge-1").await["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_fp, fp);
    let (s, _) = n.ingest(Some(&fp), None, body()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = n
        .ingest(
            Some(&new_fp),
            None,
            batch(
                "normal",
                vec![event_item(2, "ev-2", "d", T0, &[("r", "2")])],
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 1);
    let (_, v) = n.admin("GET", "/api/v3/edge/name/edge-1", None).await;
    assert!(v["edge"].get("revokedMs").is_none(), "{v}");
}

/// The store behind the node, opened as the node opens it.
async fn store_of(
    b: Backend,
) -> (
    Box<dyn std::any::Any>,
    std::sync::Arc<dyn crate::store::Store>,
) {
    match b {
        Backend::Sqlite => {
            let db = outpost_testkit::temp_db("cloud", crate::sqlite::MIGRATIONS, 2);
            let store = crate::sqlite::SqliteStore::new(db.db.clone());
            (Box::new(db), std::sync::Arc::new(store))
        }
        Backend::Postgres => {
            let secrets = tempfile::tempdir().unwrap();
            let store = crate::postgres::PgStore::open(&b.storage(), secrets.path())
                .await
                .unwrap();
            (Box::new(secrets), std::sync::Arc::new(store))
        }
    }
}

/// A page of an edge's readings is the newest across all its series, in origin order
/// whichever series they are in, at any offset; a listing's total follows what retention
/// removes, with and without filters.
async fn pages_merge_series_newest_first_and_retention_keeps_the_counts(b: Backend) {
    use crate::store::{Incoming, ReadingQuery};
    let (_keep, store) = store_of(b).await;
    store.enroll("edge-1".into(), "fp".into(), 1).await.unwrap();
    // Six events of two devices, interleaved in time; two resources each.
    let items: Vec<_> = (0..6i64)
        .map(|i| {
            let device = if i % 2 == 0 { "tank-1" } else { "tank-2" };
            let item = event_item(
                i as u64 + 1,
                &format!("ev-{i}"),
                device,
                T0 + i * 1_000,
                &[("level", &format!("{i}")), ("temp", &format!("{}", 10 + i))],
            );
            serde_json::from_str(&item.to_string()).unwrap()
        })
        .collect();
    // A batch of edge-1's one stream, straight to the store.
    let batch = |items| Incoming {
        edge: "edge-1".into(),
        address: "192.0.2.7:1".into(),
        incarnation: 1,
        priority: 1,
        items,
        backlog: Default::default(),
    };
    let stored = store.ingest(batch(items)).await.unwrap();
    assert_eq!(stored.accepted, 6);
    // An id repeated inside a batch, and one stored before: each stored once.
    let items: Vec<_> = [(7, "ev-0"), (8, "ev-x"), (9, "ev-x")]
        .iter()
        .map(|(seq, id)| {
            let item = event_item(*seq, id, "tank-1", T0 - 1_000, &[("level", "1")]);
            serde_json::from_str(&item.to_string()).unwrap()
        })
        .collect();
    let again = store.ingest(batch(items)).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (1, 2));
    let query = |device: Option<&str>, offset: u64, limit: u64| ReadingQuery {
        edge: "edge-1".into(),
        device: device.map(str::to_string),
        offset,
        limit,
        ..ReadingQuery::default()
    };
    let origins = |rows: &[outpost_contracts::cloud::EdgeReading]| -> Vec<i64> {
        rows.iter().map(|r| (r.origin - T0) / 1_000).collect()
    };
    // Shallow pages take each series' newest (4 series x 3 deep is no more than the 13
    // that match), deeper ones the matching rows sorted whole: the same answers.
    let (rows, total) = store.readings(query(None, 0, 3)).await.unwrap();
    assert_eq!(total, 13);
    assert_eq!(origins(&rows), [5, 5, 4]);
    let (rows, _) = store.readings(query(None, 1, 2)).await.unwrap();
    assert_eq!(origins(&rows), [5, 4]);
    let (rows, _) = store.readings(query(Some("tank-1"), 1, 2)).await.unwrap();
    assert_eq!(origins(&rows), [4, 2]);
    let (rows, total) = store.readings(query(None, 0, 5)).await.unwrap();
    assert_eq!(total, 13);
    assert_eq!(origins(&rows), [5, 5, 4, 4, 3]);
    let (rows, _) = store.readings(query(None, 5, 4)).await.unwrap();
    assert_eq!(origins(&rows), [3, 2, 2, 1]);
    let (rows, total) = store.readings(query(Some("tank-1"), 1, 3)).await.unwrap();
    assert_eq!(total, 7);
    assert_eq!(origins(&rows), [4, 2, 2]);
    // Retention by count: the three oldest events go (by origin: ev-x, ev-0, ev-1).
    let removed = store.remove_old(None, 8, 100).await.unwrap();
    assert_eq!((removed.events, removed.readings), (3, 5));
    let (rows, total) = store.readings(query(None, 0, 100)).await.unwrap();
    assert_eq!(total, 8);
    assert_eq!(origins(&rows), [5, 5, 4, 4, 3, 3, 2, 2]);
    let (_, total) = store.readings(query(Some("tank-2"), 0, 1)).await.unwrap();
    assert_eq!(total, 4);
    let (_, total) = store.readings(query(Some("tank-1"), 0, 1)).await.unwrap();
    assert_eq!(total, 4);
    assert_eq!(store.reading_total().await.unwrap(), 8);
}
