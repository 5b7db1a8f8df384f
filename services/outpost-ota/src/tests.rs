//! Router tests: ota built as the node builds it and driven without sockets; devices and
//! their credentials come from the real core-metadata, served on a socket as ota reaches
//! it in a node. Artifacts are signed with a key made here and trusted by the config.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use outpost_core_metadata::CoreMetadata;
use outpost_manifest::SigningKey;
use outpost_testkit::{Served, Service, TestContext, context, free_port};
use serde_json::{Value, json};

use crate::{Config, Ota};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const PROFILE: &str = include_str!("../../../examples/thermostat.yaml");

/// Device secrets, as set in core-metadata.
const SECRET_1: &str = "secret-of-d1-0123456789";
const SECRET_2: &str = "secret-of-d2-0123456789";

/// A context whose bus is nowhere: no broker of anyone else's is ever joined, and devices
/// are not told to poll (they find their updates by polling).
fn no_bus(name: &str, addresses: &[(&str, String)]) -> TestContext {
    context(name, addresses).with_bus(&format!("mqtt://127.0.0.1:{}", free_port()))
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31) as u8).wrapping_add(seed))
        .collect()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

fn manifest(name: &str, version: &str, data: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "name": name, "version": version, "compatible": ["Thermostat"], "size": data.len(),
        "sha256": sha256(data), "payloadType": "file"
    }))
    .unwrap()
}

struct Fixture {
    svc: Service,
    signer: SigningKey,
    cfg: Config,
    /// core-metadata, when the test needs devices (kept as long as the fixture).
    _md: Option<(Service, Served)>,
}

/// A status, the headers and the body (JSON, or `Null`; the raw bytes as well).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
    json: Value,
}

impl Fixture {
    /// ota with a fresh signing key trusted, and no core-metadata.
    async fn alone() -> Self {
        let (signer, _) = SigningKey::generate().unwrap();
        let cfg = Config {
            enabled: true,
            trusted_keys: vec![signer.public().encoded()],
            ..Config::default()
        };
        let svc = Service::build_in::<Ota>(no_bus("ota", &[]), cfg.clone()).await;
        Self {
            svc,
            signer,
            cfg,
            _md: None,
        }
    }

    /// ota next to the real core-metadata, which has devices d1 and d2 (Thermostat, labels
    /// `site-a` and `d1`/`d2`, with secrets) and d3 (another profile, label `site-a`, no
    /// secret).
    async fn with_devices() -> Self {
        let md = Service::build_in::<CoreMetadata>(
            no_bus("core-metadata", &[]),
            outpost_core_metadata::Config::default(),
        )
        .await;
        let served = md.serve_at(([127, 0, 0, 1], 0).into()).await;
        let service = json!([{"apiVersion": "v3", "service": {"name": "device-mqtt",
            "baseAddress": "http://127.0.0.1:1", "adminState": "UNLOCKED"}}]);
        let (_, b) = md
            .call("POST", "/api/v3/deviceservice", Some(service))
            .await;
        assert_eq!(b[0]["statusCode"], 201, "{b}");
        let thermostat = outpost_contracts::metadata::DeviceProfile::from_yaml(PROFILE).unwrap();
        let mut other = thermostat.clone();
        other.name = "Other".into();
        for p in [&thermostat, &other] {
            let body = json!([{"apiVersion": "v3", "profile": serde_json::to_value(p).unwrap()}]);
            let (_, b) = md.call("POST", "/api/v3/deviceprofile", Some(body)).await;
            assert_eq!(b[0]["statusCode"], 201, "{b}");
        }
        for (name, profile, labels) in [
            ("d1", "Thermostat", json!(["site-a", "d1"])),
            ("d2", "Thermostat", json!(["site-a", "d2"])),
            ("d3", "Other", json!(["site-a"])),
        ] {
            let device = json!([{"apiVersion": "v3", "device": {"name": name,
                "serviceName": "device-mqtt", "profileName": profile, "adminState": "UNLOCKED",
                "operatingState": "UP", "labels": labels, "protocols": {"mqtt": {}}}}]);
            let (_, b) = md.call("POST", "/api/v3/device", Some(device)).await;
            assert_eq!(b[0]["statusCode"], 201, "{b}");
        }
        for (name, secret) in [("d1", SECRET_1), ("d2", SECRET_2)] {
            let (s, b) = md
                .call(
                    "PUT",
                    &format!("/api/v3/device/name/{name}/secret"),
                    Some(json!({"apiVersion": "v3", "secret": secret})),
                )
                .await;
            assert!(s.is_success(), "{b}");
        }
        let (signer, _) = SigningKey::generate().unwrap();
        let cfg = Config {
            enabled: true,
            trusted_keys: vec![signer.public().encoded()],
            ..Config::default()
        };
        let svc = Service::build_in::<Ota>(
            no_bus("ota", &[("core-metadata", served.url())]),
            cfg.clone(),
        )
        .await;
        Self {
            svc,
            signer,
            cfg,
            _md: Some((md, served)),
        }
    }

    /// Stops ota and builds it again on the same data (core-metadata stays).
    async fn restart(self) -> Self {
        let test = self.svc.stop().await;
        let svc = Service::build_in::<Ota>(test, self.cfg.clone()).await;
        Self { svc, ..self }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (status, headers, bytes) =
            outpost_testkit::request(&self.svc.router, req.body(body.into()).unwrap()).await;
        Answer {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            bytes: bytes.to_vec(),
        }
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.svc.call(method, uri, body).await
    }

    /// Uploads `data` under `manifest`, signed with `signature`.
    async fn upload(&self, manifest: &[u8], signature: &str, data: Vec<u8>) -> (StatusCode, Value) {
        let m = B64.encode(manifest);
        let a = self
            .send(
                "POST",
                "/api/v3/artifact",
                &[
                    ("x-outpost-manifest", &m),
                    ("x-outpost-signature", signature),
                ],
                data,
            )
            .await;
        (a.status, a.json)
    }

    /// Uploads `data` as `name` `version`, signed with the trusted key.
    async fn upload_signed(&self, name: &str, version: &str, data: &[u8]) -> (StatusCode, Value) {
        let m = manifest(name, version, data);
        self.upload(&m, &self.signer.sign(&m), data.to_vec()).await
    }

    /// A device's request with its secret (none when `secret` is `None`).
    async fn device(
        &self,
        method: &str,
        uri: &str,
        secret: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(s) = secret {
            headers.push(("x-outpost-device-token", s));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        self.send(method, uri, &headers, body).await
    }

    /// Files in ota's blob directory.
    fn blobs(&self) -> Vec<String> {
        let dir = self.svc.test.ctx.data_dir.join("ota").join("blobs");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Creates rollout `name` of `fw 1.0.0` to `target` with every device in one phase.
    async fn rollout(&self, name: &str, target: Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/api/v3/rollout",
            Some(
                json!({"name": name, "artifact": {"name": "fw", "version": "1.0.0"},
                "target": target, "policy": {"phases": [100.0]}}),
            ),
        )
        .await
    }
}

#[tokio::test]
async fn a_trusted_upload_is_stored_listed_and_shown_and_a_second_one_conflicts() {
    let ota = Fixture::alone().await;
    let data = payload(5000, 1);
    let m = manifest("fw", "1.0.0", &data);
    let sig = ota.signer.sign(&m);
    let (s, b) = ota.upload(&m, &sig, data.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["sha256"], sha256(&data));
    assert_eq!(b["size"], 5000);
    assert_eq!(b["keyId"], ota.signer.public().id());
    assert_eq!(
        ota.blobs(),
        [sha256(&data)],
        "one blob, named by its SHA-256"
    );

    let (s, b) = ota.call("GET", "/api/v3/artifact/all", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["artifacts"][0]["manifest"]["name"], "fw");

    // The manifest as stored is the signed bytes.
    let (s, b) = ota
        .call("GET", "/api/v3/artifact/name/fw/version/1.0.0", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let a = &b["artifact"];
    assert_eq!(a["manifestBase64"], B64.encode(&m));
    assert_eq!(a["signature"], sig);
    assert_eq!(a["keyId"], ota.signer.public().id());
    assert_eq!(a["manifest"]["sha256"], sha256(&data));
    let (s, _) = ota
        .call("GET", "/api/v3/artifact/name/fw/version/9.9.9", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The same name and version again: refused, whatever the payload.
    let (s, b) = ota.upload(&m, &sig, data.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (_, b) = ota.call("GET", "/api/v3/artifact/all", None).await;
    assert_eq!(b["totalCount"], 1, "{b}");

    // The same payload under another version is stored once.
    let (s, b) = ota.upload_signed("fw", "1.0.1", &data).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(ota.blobs(), [sha256(&data)]);
    // Deleting one keeps the payload the other still has; deleting both removes it.
    let (s, _) = ota
        .call("DELETE", "/api/v3/artifact/name/fw/version/1.0.0", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ota.blobs(), [sha256(&data)]);
    let a = ota
        .send(
            "GET",
            "/api/v3/artifact/name/fw/version/1.0.1/payload",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!((a.status, a.bytes.len()), (StatusCode::OK, data.len()));
    let (s, _) = ota
        .call("DELETE", "/api/v3/artifact/name/fw/version/1.0.1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(ota.blobs().is_empty(), "{:?}", ota.blobs());
    let (_, b) = ota.call("GET", "/api/v3/artifact/all", None).await;
    assert_eq!(b["totalCount"], 0, "{b}");
}

#[tokio::test]
async fn untrusted_tampered_and_truncated_uploads_are_refused_and_nothing_is_kept() {
    let ota = Fixture::alone().await;
    let data = payload(70_000, 2);
    let m = manifest("fw", "1.0.0", &data);
    let good = ota.signer.sign(&m);

    // Signed by a key the service does not trust.
    let (stranger, _) = SigningKey::generate().unwrap();
    let (s, b) = ota.upload(&m, &stranger.sign(&m), data.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // The manifest changed after it was signed.
    let forged = manifest("fw", "1.0.0", &payload(70_000, 3));
    let (s, b) = ota.upload(&forged, &good, payload(70_000, 3)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // The payload changed after signing (same size): its SHA-256 does not match.
    let mut other = data.clone();
    other[12_345] ^= 1;
    let (s, b) = ota.upload(&m, &good, other).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b["message"].as_str().unwrap().contains("tampered"), "{b}");
    // Truncated, and too long.
    let (s, b) = ota.upload(&m, &good, data[..1000].to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let mut longer = data.clone();
    longer.push(0);
    let (s, b) = ota.upload(&m, &good, longer).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // Without a signature, with one that is not a signature, without a manifest.
    let a = ota
        .send(
            "POST",
            "/api/v3/artifact",
            &[("x-outpost-manifest", &B64.encode(&m))],
            data.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.json);
    let (s, b) = ota.upload(&m, "bm90IGEgc2lnbmF0dXJl", data.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let a = ota
        .send(
            "POST",
            "/api/v3/artifact",
            &[("x-outpost-signature", &good)],
            data.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.json);

    let (_, b) = ota.call("GET", "/api/v3/artifact/all", None).await;
    assert_eq!(b["totalCount"], 0, "{b}");
    assert!(ota.blobs().is_empty(), "{:?}", ota.blobs());
    // The genuine upload still goes through afterwards.
    let (s, b) = ota.upload(&m, &good, data).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn payloads_are_served_whole_and_by_range() {
    let ota = Fixture::alone().await;
    // Over two 64 KiB blob chunks, so ranges cross chunk boundaries.
    let data = payload(150_000, 4);
    let (s, b) = ota.upload_signed("fw", "1.0.0", &data).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let uri = "/api/v3/artifact/name/fw/version/1.0.0/payload";
    let etag = format!("\"{}\"", sha256(&data));

    let a = ota.send("GET", uri, &[], Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.bytes == data, "the whole payload");
    assert_eq!(a.headers[header::ETAG], etag.as_str());
    assert_eq!(a.headers[header::ACCEPT_RANGES], "bytes");

    let a = ota
        .send("GET", uri, &[("range", "bytes=65000-70999")], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[65_000..71_000]);
    assert_eq!(a.headers[header::CONTENT_RANGE], "bytes 65000-70999/150000");
    assert_eq!(a.headers[header::CONTENT_LENGTH], "6000");

    // The rest from an offset (a resumed download), and a suffix.
    let a = ota
        .send("GET", uri, &[("range", "bytes=100000-")], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[100_000..]);
    let a = ota
        .send("GET", uri, &[("range", "bytes=-10")], Body::empty())
        .await;
    assert!(a.bytes == data[data.len() - 10..]);

    // A range of another payload (If-Range with another ETag) gets the whole one.
    let a = ota
        .send(
            "GET",
            uri,
            &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes.len(), data.len());
    let a = ota
        .send(
            "GET",
            uri,
            &[("range", "bytes=0-9"), ("if-range", &etag)],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[..10]);

    // Past the end.
    let a = ota
        .send("GET", uri, &[("range", "bytes=150000-")], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.headers[header::CONTENT_RANGE], "bytes */150000");

    let a = ota
        .send(
            "GET",
            "/api/v3/artifact/name/fw/version/2/payload",
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rollouts_are_created_listed_paused_and_resumed() {
    let ota = Fixture::with_devices().await;
    let (s, b) = ota.rollout("r1", json!({"labels": ["site-a"]})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no artifact yet: {b}");
    let (s, b) = ota.upload_signed("fw", "1.0.0", &payload(1000, 5)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // Labels pick d1, d2 and d3; d3 is of a profile the artifact is not for.
    let (s, b) = ota.rollout("r1", json!({"labels": ["site-a"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["devices"], 2, "{b}");
    assert_eq!(b["counts"]["offered"], 2, "{b}");
    assert_eq!(b["status"]["state"], "running", "{b}");
    let (s, b) = ota.rollout("r1", json!({"devices": ["d1"]})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = ota.rollout("r2", json!({"devices": ["d3"]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "only misfits: {b}");
    let (s, b) = ota.rollout("r2", json!({"devices": ["nobody"]})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = ota.rollout("bad name", json!({"devices": ["d1"]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = ota.rollout("r2", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

    let (s, b) = ota.call("GET", "/api/v3/rollout/all", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["rollouts"][0]["name"], "r1");
    let (s, b) = ota.call("GET", "/api/v3/rollout/name/r1", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["artifact"]["version"], "1.0.0");
    let (s, _) = ota.call("GET", "/api/v3/rollout/name/r9", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Paused, a rollout offers nothing to devices that have not started.
    let (s, b) = ota
        .call("POST", "/api/v3/rollout/name/r1/pause", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"]["state"], "paused", "{b}");
    assert_eq!(b["status"]["automatic"], false, "{b}");
    let a = ota
        .device("GET", "/api/v3/ddi/d1", Some(SECRET_1), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);
    let (s, _) = ota
        .call("POST", "/api/v3/rollout/name/r1/pause", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "already paused");

    // What the store kept is what a restarted service shows.
    let ota = ota.restart().await;
    let (_, b) = ota.call("GET", "/api/v3/rollout/name/r1", None).await;
    assert_eq!(b["status"]["state"], "paused", "{b}");
    assert_eq!(b["counts"]["offered"], 2, "{b}");

    let (s, b) = ota
        .call("POST", "/api/v3/rollout/name/r1/resume", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"]["state"], "running", "{b}");
    let a = ota
        .device("GET", "/api/v3/ddi/d1", Some(SECRET_1), None)
        .await;
    assert_eq!(a.json["action"]["id"], "r1", "{}", a.json);
    let (s, _) = ota
        .call("POST", "/api/v3/rollout/name/r1/resume", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "already running");
    let (s, _) = ota
        .call("POST", "/api/v3/rollout/name/r1/restart", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, b) = ota
        .call("POST", "/api/v3/rollout/name/r1/cancel", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["counts"]["canceled"], 2, "{b}");
}

#[tokio::test]
async fn a_device_polls_with_its_secret_and_gets_the_action_offered_to_it() {
    let ota = Fixture::with_devices().await;
    let data = payload(3000, 6);
    let (s, b) = ota.upload_signed("fw", "1.0.0", &data).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = ota.rollout("r1", json!({"devices": ["d1"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    let a = ota
        .device("GET", "/api/v3/ddi/d1", Some(SECRET_1), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(a.json["pollSeconds"], 30);
    let action = &a.json["action"];
    assert_eq!(action["id"], "r1", "{}", a.json);
    assert_eq!(action["state"], "offered");
    assert_eq!(action["artifact"]["sha256"], sha256(&data));
    assert_eq!(action["artifact"]["size"], 3000);
    assert_eq!(action["artifact"]["keyId"], ota.signer.public().id());
    assert_eq!(action["download"], "/api/v3/ddi/d1/action/r1/payload");
    // What the device verifies: the manifest as signed, with its signature.
    let signed = B64
        .decode(action["artifact"]["manifestBase64"].as_str().unwrap())
        .unwrap();
    outpost_manifest::verify(
        &signed,
        action["artifact"]["signature"].as_str().unwrap(),
        &[ota.signer.public()],
    )
    .unwrap();

    // Nothing new: 304 on the same ETag.
    let etag = a.headers[header::ETAG].to_str().unwrap().to_string();
    let a = ota
        .send(
            "GET",
            "/api/v3/ddi/d1",
            &[
                ("x-outpost-device-token", SECRET_1),
                ("if-none-match", &etag),
            ],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);

    // A device outside the rollout has nothing to do.
    let a = ota
        .device("GET", "/api/v3/ddi/d2", Some(SECRET_2), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);

    // Another device's secret, a wrong one, none: refused, and nothing is offered.
    for secret in [Some(SECRET_2), Some("not-the-secret-of-d1-at-all"), None] {
        let a = ota.device("GET", "/api/v3/ddi/d1", secret, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{secret:?}: {}", a.json);
        let a = ota
            .device("GET", "/api/v3/ddi/d1/action/r1/payload", secret, None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{secret:?}");
        assert!(a.bytes != data);
    }
    // A device core-metadata does not know.
    let a = ota
        .device("GET", "/api/v3/ddi/ghost", Some(SECRET_1), None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // The payload through the device's own path, resumed with a range.
    let a = ota
        .send(
            "GET",
            "/api/v3/ddi/d1/action/r1/payload",
            &[
                ("x-outpost-device-token", SECRET_1),
                ("range", "bytes=1000-"),
            ],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[1000..]);
    // Not a device of the rollout: no download.
    let a = ota
        .device(
            "GET",
            "/api/v3/ddi/d2/action/r1/payload",
            Some(SECRET_2),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn feedback_moves_the_device_through_the_rollout_and_into_its_history() {
    let ota = Fixture::with_devices().await;
    let (s, b) = ota.upload_signed("fw", "1.0.0", &payload(100, 7)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = ota.rollout("r1", json!({"devices": ["d1", "d2"]})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let feedback = |status: &str| json!({"status": status, "details": format!("now {status}")});
    let uri = "/api/v3/ddi/d1/action/r1/feedback";

    let a = ota
        .device("POST", uri, Some(SECRET_1), Some(feedback("downloading")))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let a = ota
        .device("GET", "/api/v3/ddi/d1", Some(SECRET_1), None)
        .await;
    assert_eq!(a.json["action"]["state"], "downloading", "{}", a.json);
    let (_, b) = ota.call("GET", "/api/v3/rollout/name/r1", None).await;
    assert_eq!(
        (&b["counts"]["downloading"], &b["counts"]["offered"]),
        (&json!(1), &json!(1)),
        "{b}"
    );

    // Only the device itself reports, and only what may follow.
    let a = ota
        .device("POST", uri, Some(SECRET_2), Some(feedback("succeeded")))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ota
        .device("POST", uri, None, Some(feedback("succeeded")))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ota
        .device("POST", uri, Some(SECRET_1), Some(feedback("offered")))
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    let a = ota
        .device(
            "POST",
            "/api/v3/ddi/d1/action/r9/feedback",
            Some(SECRET_1),
            Some(feedback("installing")),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = ota
        .device(
            "POST",
            uri,
            Some(SECRET_1),
            Some(json!({"status": "exploded"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    for step in ["installing", "succeeded"] {
        let a = ota
            .device("POST", uri, Some(SECRET_1), Some(feedback(step)))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{step}: {}", a.json);
    }
    let (s, b) = ota
        .call("GET", "/api/v3/rollout/name/r1/device/d1", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "succeeded");
    let history: Vec<_> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["status"].as_str().unwrap(),
                h["details"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("downloading", "now downloading"),
            ("installing", "now installing"),
            ("succeeded", "now succeeded")
        ]
    );
    let (s, _) = ota
        .call("GET", "/api/v3/rollout/name/r1/device/d3", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Done: nothing more for d1.
    let a = ota
        .device("GET", "/api/v3/ddi/d1", Some(SECRET_1), None)
        .await;
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);

    // The last device finishes the rollout; all of it survives a restart.
    let a = ota
        .device(
            "POST",
            "/api/v3/ddi/d2/action/r1/feedback",
            Some(SECRET_2),
            Some(feedback("failed")),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let ota = ota.restart().await;
    let (_, b) = ota.call("GET", "/api/v3/rollout/name/r1", None).await;
    assert_eq!(b["status"]["state"], "finished", "{b}");
    assert_eq!(
        (&b["counts"]["succeeded"], &b["counts"]["failed"]),
        (&json!(1), &json!(1)),
        "{b}"
    );
    let (_, b) = ota
        .call("GET", "/api/v3/rollout/name/r1/device/d1", None)
        .await;
    assert_eq!(b["history"].as_array().unwrap().len(), 3, "{b}");
}

#[tokio::test]
async fn groups_are_created_listed_shown_and_deleted() {
    let ota = Fixture::with_devices().await;
    let group = |name: &str, labels: Value| json!({"name": name, "labels": labels});

    let (s, b) = ota
        .call(
            "POST",
            "/api/v3/group",
            Some(group("site-a", json!(["site-a"]))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = ota
        .call(
            "POST",
            "/api/v3/group",
            Some(json!({"name": "thermostats", "labels": [], "profile": "Thermostat"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = ota
        .call(
            "POST",
            "/api/v3/group",
            Some(group("site-a", json!(["d1"]))),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = ota
        .call(
            "POST",
            "/api/v3/group",
            Some(group("no/slash", json!(["d1"]))),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = ota
        .call("POST", "/api/v3/group", Some(group("empty", json!([]))))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");

    let (s, b) = ota.call("GET", "/api/v3/group/all", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["totalCount"], 2, "{b}");
    let listed: Vec<_> = b["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("site-a", 3), ("thermostats", 2)]);

    let (s, b) = ota
        .call("GET", "/api/v3/group/name/thermostats", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["members"], json!(["d1", "d2"]), "{b}");
    assert_eq!(b["profile"], "Thermostat");
    let (_, b) = ota
        .call("GET", "/api/v3/inventory/all?group=site-a", None)
        .await;
    assert_eq!(b["totalCount"], 3, "{b}");
    let (_, b) = ota
        .call(
            "GET",
            "/api/v3/inventory/all?group=thermostats&labels=d2",
            None,
        )
        .await;
    assert_eq!(b["devices"][0]["name"], "d2", "{b}");
    assert_eq!(b["totalCount"], 1, "{b}");

    // A rollout to a group takes its members now (and only compatible ones).
    let (s, b) = ota.upload_signed("fw", "1.0.0", &payload(10, 8)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = ota.rollout("r1", json!({"group": "site-a"})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["devices"], 2, "{b}");
    let (s, _) = ota.rollout("r2", json!({"group": "nowhere"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Groups are kept.
    let ota = ota.restart().await;
    let (s, _) = ota.call("DELETE", "/api/v3/group/name/site-a", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = ota.call("DELETE", "/api/v3/group/name/site-a", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = ota.call("GET", "/api/v3/group/name/site-a", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = ota
        .call("GET", "/api/v3/inventory/all?group=site-a", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, b) = ota.call("GET", "/api/v3/group/all", None).await;
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["groups"][0]["name"], "thermostats");
}

#[tokio::test]
async fn devices_report_attributes_and_their_check_ins_show_in_the_inventory() {
    let ota = Fixture::with_devices().await;
    let (s, b) = ota.call("GET", "/api/v3/inventory/name/d1", None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["checkIn"], "never", "{b}");
    assert_eq!(b["lastSeenMs"], Value::Null);

    let uri = "/api/v3/ddi/d1/attributes";
    let attrs = json!({"attributes": {"firmware": "0.9", "hardware": "rev3"}});
    let a = ota.device("PUT", uri, None, Some(attrs.clone())).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ota
        .device("PUT", uri, Some(SECRET_2), Some(attrs.clone()))
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let too_long = json!({"attributes": {"firmware": "x".repeat(257)}});
    let a = ota.device("PUT", uri, Some(SECRET_1), Some(too_long)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = ota.device("PUT", uri, Some(SECRET_1), Some(attrs)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);

    let (_, b) = ota.call("GET", "/api/v3/inventory/name/d1", None).await;
    assert_eq!(b["attributes"]["hardware"], "rev3", "{b}");
    assert_eq!(b["checkIn"], "ok", "{b}");
    let seen = b["lastSeenMs"].as_i64().expect("a check-in time");
    let (_, b) = ota.call("GET", "/api/v3/inventory/name/d2", None).await;
    assert_eq!(b["checkIn"], "never", "{b}");
    let (s, _) = ota.call("GET", "/api/v3/inventory/name/ghost", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Attributes and the check-in time (written when the service stops) are kept.
    let ota = ota.restart().await;
    let (_, b) = ota
        .call("GET", "/api/v3/inventory/all?labels=d1", None)
        .await;
    assert_eq!(b["totalCount"], 1, "{b}");
    let d1 = &b["devices"][0];
    assert_eq!(d1["attributes"]["firmware"], "0.9", "{b}");
    assert_eq!(d1["lastSeenMs"], seen, "{b}");
}
