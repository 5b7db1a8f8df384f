//! Router tests: ota built as the node builds it and driven without sockets; devices and
//! their credentials come from the real core-metadata, served on a socket as ota reaches
//! it in a node. Artifacts are signed with a key made here and trusted by the config.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use outpost_manifest::SigningKey;
use outpost_testkit::Drive;
use outpost_testkit::firmware::{manifest, payload, sha256};
use outpost_testkit::postgres::Backend;
use outpost_testkit::{Served, Service, context, metadata};
use serde_json::{Value, json};

use crate::{Config, Ota};

outpost_testkit::on_both_backends!(
    a_trusted_upload_is_stored_listed_and_shown_and_a_second_one_conflicts,
    untrusted_tampered_and_truncated_uploads_are_refused_and_nothing_is_kept,
    payloads_are_served_whole_and_by_range,
    rollouts_are_created_listed_paused_and_resumed,
    a_device_polls_with_its_secret_and_gets_the_action_offered_to_it,
    feedback_moves_the_device_through_the_rollout_and_into_its_history,
    groups_are_created_listed_shown_and_deleted,
    devices_report_attributes_and_their_check_ins_show_in_the_inventory,
);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Device secrets, as set in core-metadata.
const SECRET_1: &str = "secret-of-d1-0123456789";
const SECRET_2: &str = "secret-of-d2-0123456789";

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

/// The service itself, for the requests that need nothing of the fixture.
impl std::ops::Deref for Fixture {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.svc
    }
}

impl Fixture {
    /// ota with a fresh signing key trusted, next to `md` when given.
    async fn start(backend: Backend, md: Option<(Service, Served)>) -> Self {
        let (signer, _) = SigningKey::generate().unwrap();
        let cfg = Config {
            enabled: true,
            trusted_keys: vec![signer.public().encoded()],
            storage: backend.storage(),
            ..Config::default()
        };
        let addresses = md
            .as_ref()
            .map(|(_, served)| ("core-metadata", served.url()));
        let test = context("ota", addresses.as_slice()).off_bus();
        let svc = Service::build_in::<Ota>(test, cfg.clone()).await;
        Self {
            svc,
            signer,
            cfg,
            _md: md,
        }
    }

    /// ota with no core-metadata.
    async fn alone(backend: Backend) -> Self {
        Self::start(backend, None).await
    }

    /// ota next to the real core-metadata, which has devices d1 and d2 (Thermostat, labels
    /// `site-a` and `d1`/`d2`, with secrets) and d3 (another profile, label `site-a`, no
    /// secret).
    async fn with_devices(backend: Backend) -> Self {
        let (md, served) = metadata::serve(None).await;
        metadata::add_device_service(&md, "device-mqtt", "http://127.0.0.1:1").await;
        metadata::add_profile_yaml(&md, metadata::THERMOSTAT, None).await;
        metadata::add_profile_yaml(&md, metadata::THERMOSTAT, Some("Other")).await;
        for (name, profile, labels) in [
            ("d1", "Thermostat", &["site-a", "d1"][..]),
            ("d2", "Thermostat", &["site-a", "d2"]),
            ("d3", "Other", &["site-a"]),
        ] {
            let device = metadata::device(name, "device-mqtt").profile(profile);
            let device = device.labels(labels).protocols(json!({"mqtt": {}}));
            metadata::add_device(&md, &device).await;
        }
        for (name, secret) in [("d1", SECRET_1), ("d2", SECRET_2)] {
            metadata::set_secret(&md, name, secret).await;
        }
        Self::start(backend, Some((md, served))).await
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

    /// A GET of `uri` with `headers`.
    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Answer {
        self.send("GET", uri, headers, Body::empty()).await
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

    /// The manifest of `data` as `name` `version`, and its signature by the trusted key.
    fn signed(&self, name: &str, version: &str, data: &[u8]) -> (Vec<u8>, String) {
        let m = manifest(name, version, data);
        let signature = self.signer.sign(&m);
        (m, signature)
    }

    /// Uploads `data` as `name` `version`, signed with the trusted key: it is stored.
    async fn upload_signed(&self, name: &str, version: &str, data: &[u8]) -> Value {
        let (m, signature) = self.signed(name, version, data);
        let (s, b) = self.upload(&m, &signature, data.to_vec()).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
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

    /// Creates rollout `name` of `fw 1.0.0` to `target` with every device in one phase,
    /// which must be answered with `want`.
    async fn rollout(&self, name: &str, target: Value, want: StatusCode) -> Value {
        let rollout = json!({"name": name, "artifact": {"name": "fw", "version": "1.0.0"},
            "target": target, "policy": {"phases": [100.0]}});
        self.expect("POST", "/api/v3/rollout", Some(rollout), want)
            .await
    }

    /// A device's poll for what it has to do, with its secret.
    async fn poll(&self, device: &str, secret: Option<&str>) -> Answer {
        let uri = format!("/api/v3/ddi/{device}");
        self.device("GET", &uri, secret, None).await
    }

    /// Posts `action` (pause, resume, cancel) to rollout `name`, which must be answered
    /// with `want`.
    async fn act(&self, name: &str, action: &str, want: StatusCode) -> Value {
        let uri = format!("/api/v3/rollout/name/{name}/{action}");
        self.expect("POST", &uri, None, want).await
    }

    /// A device's feedback `status` on `uri` with its secret.
    async fn feedback(&self, uri: &str, secret: Option<&str>, status: &str) -> Answer {
        let feedback = json!({"status": status, "details": format!("now {status}")});
        self.device("POST", uri, secret, Some(feedback)).await
    }
}

async fn a_trusted_upload_is_stored_listed_and_shown_and_a_second_one_conflicts(b: Backend) {
    let ota = Fixture::alone(b).await;
    let data = payload(5000, 1);
    let (m, sig) = ota.signed("fw", "1.0.0", &data);
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

    let artifacts = "/api/v3/artifact/all";
    let b = ota.expect("GET", artifacts, None, StatusCode::OK).await;
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["artifacts"][0]["manifest"]["name"], "fw");

    // The manifest as stored is the signed bytes.
    let v100 = "/api/v3/artifact/name/fw/version/1.0.0";
    let b = ota.expect("GET", v100, None, StatusCode::OK).await;
    let a = &b["artifact"];
    assert_eq!(a["manifestBase64"], B64.encode(&m));
    assert_eq!(a["signature"], sig);
    assert_eq!(a["keyId"], ota.signer.public().id());
    assert_eq!(a["manifest"]["sha256"], sha256(&data));
    let v999 = "/api/v3/artifact/name/fw/version/9.9.9";
    ota.expect("GET", v999, None, StatusCode::NOT_FOUND).await;

    // The same name and version again: refused, whatever the payload.
    let (s, b) = ota.upload(&m, &sig, data.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (_, b) = ota.call("GET", artifacts, None).await;
    assert_eq!(b["totalCount"], 1, "{b}");

    // The same payload under another version is stored once.
    ota.upload_signed("fw", "1.0.1", &data).await;
    assert_eq!(ota.blobs(), [sha256(&data)]);
    // Deleting one keeps the payload the other still has; deleting both removes it.
    ota.expect("DELETE", v100, None, StatusCode::OK).await;
    assert_eq!(ota.blobs(), [sha256(&data)]);
    let v101 = "/api/v3/artifact/name/fw/version/1.0.1";
    let a = ota.get(&format!("{v101}/payload"), &[]).await;
    assert_eq!((a.status, a.bytes.len()), (StatusCode::OK, data.len()));
    ota.expect("DELETE", v101, None, StatusCode::OK).await;
    assert!(ota.blobs().is_empty(), "{:?}", ota.blobs());
    let (_, b) = ota.call("GET", artifacts, None).await;
    assert_eq!(b["totalCount"], 0, "{b}");
}

async fn untrusted_tampered_and_truncated_uploads_are_refused_and_nothing_is_kept(b: Backend) {
    let ota = Fixture::alone(b).await;
    let data = payload(70_000, 2);
    let (m, good) = ota.signed("fw", "1.0.0", &data);

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

async fn payloads_are_served_whole_and_by_range(b: Backend) {
    let ota = Fixture::alone(b).await;
    // Over two 64 KiB blob chunks, so ranges cross chunk boundaries.
    let data = payload(150_000, 4);
    ota.upload_signed("fw", "1.0.0", &data).await;
    let uri = "/api/v3/artifact/name/fw/version/1.0.0/payload";
    let etag = format!("\"{}\"", sha256(&data));

    let a = ota.get(uri, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.bytes == data, "the whole payload");
    assert_eq!(a.headers[header::ETAG], etag.as_str());
    assert_eq!(a.headers[header::ACCEPT_RANGES], "bytes");

    let a = ota.get(uri, &[("range", "bytes=65000-70999")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[65_000..71_000]);
    assert_eq!(a.headers[header::CONTENT_RANGE], "bytes 65000-70999/150000");
    assert_eq!(a.headers[header::CONTENT_LENGTH], "6000");

    // The rest from an offset (a resumed download), and a suffix.
    let a = ota.get(uri, &[("range", "bytes=100000-")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[100_000..]);
    let a = ota.get(uri, &[("range", "bytes=-10")]).await;
    assert!(a.bytes == data[data.len() - 10..]);

    // A range of another payload (If-Range with another ETag) gets the whole one.
    let a = ota
        .get(uri, &[("range", "bytes=0-9"), ("if-range", "\"other\"")])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes.len(), data.len());
    let a = ota
        .get(uri, &[("range", "bytes=0-9"), ("if-range", &etag)])
        .await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[..10]);

    // Past the end.
    let a = ota.get(uri, &[("range", "bytes=150000-")]).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.headers[header::CONTENT_RANGE], "bytes */150000");

    let a = ota
        .get("/api/v3/artifact/name/fw/version/2/payload", &[])
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

async fn rollouts_are_created_listed_paused_and_resumed(b: Backend) {
    let ota = Fixture::with_devices(b).await;
    let site_a = || json!({"labels": ["site-a"]});
    // No artifact yet.
    ota.rollout("r1", site_a(), StatusCode::NOT_FOUND).await;
    ota.upload_signed("fw", "1.0.0", &payload(1000, 5)).await;

    // Labels pick d1, d2 and d3; d3 is of a profile the artifact is not for.
    let b = ota.rollout("r1", site_a(), StatusCode::CREATED).await;
    assert_eq!(b["devices"], 2, "{b}");
    assert_eq!(b["counts"]["offered"], 2, "{b}");
    assert_eq!(b["status"]["state"], "running", "{b}");
    let d1 = || json!({"devices": ["d1"]});
    for (name, target, want) in [
        ("r1", d1(), StatusCode::CONFLICT),
        // Only misfits.
        (
            "r2",
            json!({"devices": ["d3"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("r2", json!({"devices": ["nobody"]}), StatusCode::NOT_FOUND),
        ("bad name", d1(), StatusCode::BAD_REQUEST),
        ("r2", json!({}), StatusCode::BAD_REQUEST),
    ] {
        ota.rollout(name, target, want).await;
    }

    let all = "/api/v3/rollout/all";
    let b = ota.expect("GET", all, None, StatusCode::OK).await;
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["rollouts"][0]["name"], "r1");
    let r1 = "/api/v3/rollout/name/r1";
    let b = ota.expect("GET", r1, None, StatusCode::OK).await;
    assert_eq!(b["artifact"]["version"], "1.0.0");
    let r9 = "/api/v3/rollout/name/r9";
    ota.expect("GET", r9, None, StatusCode::NOT_FOUND).await;

    // Paused, a rollout offers nothing to devices that have not started.
    let b = ota.act("r1", "pause", StatusCode::OK).await;
    assert_eq!(b["status"]["state"], "paused", "{b}");
    assert_eq!(b["status"]["automatic"], false, "{b}");
    let a = ota.poll("d1", Some(SECRET_1)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);
    // Already paused.
    ota.act("r1", "pause", StatusCode::CONFLICT).await;

    // What the store kept is what a restarted service shows.
    let ota = ota.restart().await;
    let (_, b) = ota.call("GET", r1, None).await;
    assert_eq!(b["status"]["state"], "paused", "{b}");
    assert_eq!(b["counts"]["offered"], 2, "{b}");

    let b = ota.act("r1", "resume", StatusCode::OK).await;
    assert_eq!(b["status"]["state"], "running", "{b}");
    let a = ota.poll("d1", Some(SECRET_1)).await;
    assert_eq!(a.json["action"]["id"], "r1", "{}", a.json);
    // Already running; no such action.
    ota.act("r1", "resume", StatusCode::CONFLICT).await;
    ota.act("r1", "restart", StatusCode::NOT_FOUND).await;

    let b = ota.act("r1", "cancel", StatusCode::OK).await;
    assert_eq!(b["counts"]["canceled"], 2, "{b}");
}

async fn a_device_polls_with_its_secret_and_gets_the_action_offered_to_it(b: Backend) {
    let ota = Fixture::with_devices(b).await;
    let data = payload(3000, 6);
    ota.upload_signed("fw", "1.0.0", &data).await;
    ota.rollout("r1", json!({"devices": ["d1"]}), StatusCode::CREATED)
        .await;

    let a = ota.poll("d1", Some(SECRET_1)).await;
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
    let token = ("x-outpost-device-token", SECRET_1);
    let a = ota
        .get("/api/v3/ddi/d1", &[token, ("if-none-match", &etag)])
        .await;
    assert_eq!(a.status, StatusCode::NOT_MODIFIED);

    // A device outside the rollout has nothing to do.
    let a = ota.poll("d2", Some(SECRET_2)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);

    // Another device's secret, a wrong one, none: refused, and nothing is offered.
    let download = "/api/v3/ddi/d1/action/r1/payload";
    for secret in [Some(SECRET_2), Some("not-the-secret-of-d1-at-all"), None] {
        let a = ota.poll("d1", secret).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{secret:?}: {}", a.json);
        let a = ota.device("GET", download, secret, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{secret:?}");
        assert!(a.bytes != data);
    }
    // A device core-metadata does not know.
    let a = ota.poll("ghost", Some(SECRET_1)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    // The payload through the device's own path, resumed with a range.
    let a = ota.get(download, &[token, ("range", "bytes=1000-")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert!(a.bytes == data[1000..]);
    // Not a device of the rollout: no download.
    let elsewhere = "/api/v3/ddi/d2/action/r1/payload";
    let a = ota.device("GET", elsewhere, Some(SECRET_2), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

async fn feedback_moves_the_device_through_the_rollout_and_into_its_history(b: Backend) {
    let ota = Fixture::with_devices(b).await;
    ota.upload_signed("fw", "1.0.0", &payload(100, 7)).await;
    ota.rollout("r1", json!({"devices": ["d1", "d2"]}), StatusCode::CREATED)
        .await;
    let uri = "/api/v3/ddi/d1/action/r1/feedback";
    let r1 = "/api/v3/rollout/name/r1";

    let a = ota.feedback(uri, Some(SECRET_1), "downloading").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let a = ota.poll("d1", Some(SECRET_1)).await;
    assert_eq!(a.json["action"]["state"], "downloading", "{}", a.json);
    let (_, b) = ota.call("GET", r1, None).await;
    assert_eq!(
        (&b["counts"]["downloading"], &b["counts"]["offered"]),
        (&json!(1), &json!(1)),
        "{b}"
    );

    // Only the device itself reports, and only what may follow.
    let a = ota.feedback(uri, Some(SECRET_2), "succeeded").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ota.feedback(uri, None, "succeeded").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = ota.feedback(uri, Some(SECRET_1), "offered").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.json);
    let r9 = "/api/v3/ddi/d1/action/r9/feedback";
    let a = ota.feedback(r9, Some(SECRET_1), "installing").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let exploded = Some(json!({"status": "exploded"}));
    let a = ota.device("POST", uri, Some(SECRET_1), exploded).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    for step in ["installing", "succeeded"] {
        let a = ota.feedback(uri, Some(SECRET_1), step).await;
        assert_eq!(a.status, StatusCode::OK, "{step}: {}", a.json);
    }
    let of_d1 = "/api/v3/rollout/name/r1/device/d1";
    let b = ota.expect("GET", of_d1, None, StatusCode::OK).await;
    assert_eq!(b["state"], "succeeded");
    let history: Vec<_> = b["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["status"].as_str(), h["details"].as_str()))
        .collect();
    assert_eq!(
        history,
        [
            (Some("downloading"), Some("now downloading")),
            (Some("installing"), Some("now installing")),
            (Some("succeeded"), Some("now succeeded"))
        ]
    );
    let of_d3 = "/api/v3/rollout/name/r1/device/d3";
    ota.expect("GET", of_d3, None, StatusCode::NOT_FOUND).await;
    // Done: nothing more for d1.
    let a = ota.poll("d1", Some(SECRET_1)).await;
    assert_eq!(a.json["action"], Value::Null, "{}", a.json);

    // The last device ends the rollout, failed: 1 of 2 succeeded where the policy needs
    // 100 %. All of it survives a restart.
    let of_d2 = "/api/v3/ddi/d2/action/r1/feedback";
    let a = ota.feedback(of_d2, Some(SECRET_2), "failed").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let ota = ota.restart().await;
    let (_, b) = ota.call("GET", r1, None).await;
    assert_eq!(b["status"]["state"], "failed", "{b}");
    assert_eq!(
        b["status"]["reason"], "1 of 2 devices succeeded (the policy needs 100%)",
        "{b}"
    );
    assert_eq!(
        (&b["counts"]["succeeded"], &b["counts"]["failed"]),
        (&json!(1), &json!(1)),
        "{b}"
    );
    let (_, b) = ota.call("GET", of_d1, None).await;
    assert_eq!(b["history"].as_array().unwrap().len(), 3, "{b}");
}

async fn groups_are_created_listed_shown_and_deleted(b: Backend) {
    let ota = Fixture::with_devices(b).await;
    let group = |name: &str, labels: Value| json!({"name": name, "labels": labels});
    let thermostats = json!({"name": "thermostats", "labels": [], "profile": "Thermostat"});
    for (group, want) in [
        (group("site-a", json!(["site-a"])), StatusCode::CREATED),
        (thermostats, StatusCode::CREATED),
        (group("site-a", json!(["d1"])), StatusCode::CONFLICT),
        (group("no/slash", json!(["d1"])), StatusCode::BAD_REQUEST),
        (group("empty", json!([])), StatusCode::BAD_REQUEST),
    ] {
        ota.expect("POST", "/api/v3/group", Some(group), want).await;
    }

    let all = "/api/v3/group/all";
    let b = ota.expect("GET", all, None, StatusCode::OK).await;
    assert_eq!(b["totalCount"], 2, "{b}");
    let listed: Vec<_> = b["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["members"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("site-a", 3), ("thermostats", 2)]);

    let b = ota
        .expect(
            "GET",
            "/api/v3/group/name/thermostats",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(b["members"], json!(["d1", "d2"]), "{b}");
    assert_eq!(b["profile"], "Thermostat");
    let in_site_a = "/api/v3/inventory/all?group=site-a";
    let (_, b) = ota.call("GET", in_site_a, None).await;
    assert_eq!(b["totalCount"], 3, "{b}");
    let d2 = "/api/v3/inventory/all?group=thermostats&labels=d2";
    let (_, b) = ota.call("GET", d2, None).await;
    assert_eq!(b["devices"][0]["name"], "d2", "{b}");
    assert_eq!(b["totalCount"], 1, "{b}");

    // A rollout to a group takes its members now (and only compatible ones).
    ota.upload_signed("fw", "1.0.0", &payload(10, 8)).await;
    let b = ota
        .rollout("r1", json!({"group": "site-a"}), StatusCode::CREATED)
        .await;
    assert_eq!(b["devices"], 2, "{b}");
    ota.rollout("r2", json!({"group": "nowhere"}), StatusCode::NOT_FOUND)
        .await;

    // Groups are kept.
    let ota = ota.restart().await;
    let site_a = "/api/v3/group/name/site-a";
    for (method, uri, want) in [
        ("DELETE", site_a, StatusCode::OK),
        ("DELETE", site_a, StatusCode::NOT_FOUND),
        ("GET", site_a, StatusCode::NOT_FOUND),
        ("GET", in_site_a, StatusCode::NOT_FOUND),
    ] {
        ota.expect(method, uri, None, want).await;
    }
    let (_, b) = ota.call("GET", all, None).await;
    assert_eq!(b["totalCount"], 1, "{b}");
    assert_eq!(b["groups"][0]["name"], "thermostats");
}

async fn devices_report_attributes_and_their_check_ins_show_in_the_inventory(b: Backend) {
    let ota = Fixture::with_devices(b).await;
    let d1 = "/api/v3/inventory/name/d1";
    let b = ota.expect("GET", d1, None, StatusCode::OK).await;
    assert_eq!(b["checkIn"], "never", "{b}");
    assert_eq!(b["lastSeenMs"], Value::Null);

    let uri = "/api/v3/ddi/d1/attributes";
    let attrs = json!({"attributes": {"firmware": "0.9", "hardware": "rev3"}});
    let too_long = json!({"attributes": {"firmware": "x".repeat(257)}});
    for (secret, body, want) in [
        (None, attrs.clone(), StatusCode::UNAUTHORIZED),
        (Some(SECRET_2), attrs.clone(), StatusCode::UNAUTHORIZED),
        (Some(SECRET_1), too_long, StatusCode::BAD_REQUEST),
        (Some(SECRET_1), attrs, StatusCode::OK),
    ] {
        let a = ota.device("PUT", uri, secret, Some(body)).await;
        assert_eq!(a.status, want, "{secret:?}: {}", a.json);
    }

    let (_, b) = ota.call("GET", d1, None).await;
    assert_eq!(b["attributes"]["hardware"], "rev3", "{b}");
    assert_eq!(b["checkIn"], "ok", "{b}");
    let seen = b["lastSeenMs"].as_i64().expect("a check-in time");
    let (_, b) = ota.call("GET", "/api/v3/inventory/name/d2", None).await;
    assert_eq!(b["checkIn"], "never", "{b}");
    let ghost = "/api/v3/inventory/name/ghost";
    ota.expect("GET", ghost, None, StatusCode::NOT_FOUND).await;

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
