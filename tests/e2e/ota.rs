//! Firmware artifacts: signing keys, signed uploads through the gateway, refusals of
//! tampered and untrusted artifacts, and downloads that resume with HTTP ranges.

use std::process::Command;

use base64::Engine as _;
use outpost_ota::manifest::SigningKey;
use outpost_testkit::firmware::{manifest, payload, sha256};
use serde_json::{Value, json};

use crate::support::{BIN, Node, Spawned, message_has, run_cli};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn post_artifact(
    node: &Node,
    manifest: &[u8],
    signature: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = node
        .http
        .post(format!("{}/api/v3/artifact", node.url(node.ports.ota)))
        .header("x-outpost-manifest", B64.encode(manifest))
        .header("x-outpost-signature", signature)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_artifacts_are_stored_once_and_download_resumably_and_bad_ones_are_refused() {
    // A signing key made off the node, as an operator would.
    let keys = crate::support::tempdir();
    let mut cmd = Command::new(BIN);
    cmd.args(["ota", "keygen", "--out"]).arg(keys.path());
    let (ok, out, err) = run_cli(cmd, None);
    assert!(ok, "{err}");
    let public = std::fs::read_to_string(keys.path().join("ota-signing.pub")).expect("pub");
    assert!(out.contains(public.trim()), "{out}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(keys.path().join("ota-signing.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let node = Node::start(&format!(
        "[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n",
        public.trim()
    ))
    .await;
    let ota = format!("{}/api/v3", node.url(node.ports.ota));

    // Upload through the gateway with the CLI.
    let data = payload(300_000, 1);
    let key = keys.path().join("ota-signing.key");
    let out = upload(&node, &key, "fw", "1.0.0", &data);
    assert!(out.contains(&sha256(&data)), "{out}");
    // Larger than the gateway's body limit (node.max_body_bytes, 4 MiB): streamed through.
    // Its progress on standard error: a line at every tenth of the way (not a terminal).
    let big = payload(6 * 1024 * 1024 + 123, 9);
    let file = node.dir.path().join("fw-big.bin");
    std::fs::write(&file, &big).expect("write");
    let (ok, out, err) = node.cli(&[
        "ota",
        "upload",
        file.to_str().expect("path"),
        "--name",
        "fw-big",
        "--version",
        "1",
        "--key",
        key.to_str().expect("path"),
        "--compatible",
        "Thermostat",
    ]);
    assert!(ok && out.contains(&sha256(&big)), "{out}{err}");
    let tenths: Vec<&str> = err.lines().filter(|l| l.starts_with("upload [")).collect();
    assert!(
        tenths.len() >= 5
            && tenths.last().is_some_and(
                |l| l.starts_with("upload [##############################] 100.0% 6.3/6.3 MB")
            ),
        "{err}"
    );
    let big_url = format!("{ota}/artifact/name/fw-big/version/1");
    let r = node.get_with(&format!("{big_url}/payload"), &[]).await;
    assert_eq!(sha256(&r.bytes().await.expect("body")), sha256(&big));
    let r = node.http.delete(big_url).send().await.expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let (ok, out, _) = node.cli(&["ota", "list"]);
    assert!(
        ok && out.contains("fw") && out.contains("1.0.0") && out.contains("Thermostat"),
        "{out}"
    );

    // The manifest as stored verifies with the public key, byte for byte.
    let (code, v) = node
        .get(&format!("{ota}/artifact/name/fw/version/1.0.0"))
        .await;
    assert_eq!(code, 200, "{v}");
    let signed = B64
        .decode(v["artifact"]["manifestBase64"].as_str().expect("b64"))
        .expect("b64");
    let pk = outpost_ota::manifest::PublicKey::parse(public.trim()).expect("key");
    outpost_ota::manifest::verify(
        &signed,
        v["artifact"]["signature"].as_str().expect("sig"),
        &[pk],
    )
    .expect("the stored manifest verifies");

    // Downloads: whole, a range, a resume from the middle, a stale If-Range, a bad range.
    let url = format!("{ota}/artifact/name/fw/version/1.0.0/payload");
    let r = node.get_with(&url, &[]).await;
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    assert_eq!(etag, format!("\"{}\"", sha256(&data)));
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[..]);
    let r = node.get_with(&url, &[("range", "bytes=1000-2999")]).await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-2999/300000");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[1000..3000]);
    let r = node
        .get_with(&url, &[("range", "bytes=150001-"), ("if-range", &etag)])
        .await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[150_001..]);
    let r = node
        .get_with(
            &url,
            &[("range", "bytes=150001-"), ("if-range", "\"stale\"")],
        )
        .await;
    assert_eq!(
        r.status().as_u16(),
        200,
        "a stale If-Range gets the whole payload"
    );
    assert_eq!(r.bytes().await.expect("body").len(), data.len());
    let r = node.get_with(&url, &[("range", "bytes=300000-")]).await;
    assert_eq!(r.status().as_u16(), 416);

    // Refusals; none of them leaves anything behind.
    let signer = SigningKey::from_pkcs8(
        &B64.decode(std::fs::read_to_string(&key).expect("key").trim())
            .expect("b64"),
    )
    .expect("key");
    let (stranger, _) = SigningKey::generate().expect("key");
    let other = payload(300_000, 2);
    let m = manifest("fw", "2.0.0", &data);
    // Bytes changed after signing: the payload does not match the manifest.
    let (code, v) = post_artifact(&node, &m, &signer.sign(&m), other.clone()).await;
    assert_eq!(code, 422, "{v}");
    assert!(message_has(&v, "tampered"), "{v}");
    // The manifest changed after signing.
    let mut forged = m.clone();
    let at = forged.len() - 10;
    forged[at] = b'x';
    let (code, _) = post_artifact(&node, &forged, &signer.sign(&m), data.clone()).await;
    assert!(code == 403 || code == 400, "{code}");
    // An unknown key: refused before the payload is read.
    let (code, v) = post_artifact(&node, &m, &stranger.sign(&m), data.clone()).await;
    assert_eq!(code, 403, "{v}");
    // Truncated: fewer bytes than the manifest says.
    let (code, _) = post_artifact(&node, &m, &signer.sign(&m), data[..1000].to_vec()).await;
    assert_eq!(code, 400);
    // Too large, missing headers, a name that exists.
    let huge = serde_json::to_vec(&json!({"name": "big", "version": "1", "compatible": ["x"],
        "size": 1u64 << 50, "sha256": sha256(b""), "payloadType": "file"}))
    .expect("json");
    let (code, _) = post_artifact(&node, &huge, &signer.sign(&huge), Vec::new()).await;
    assert_eq!(code, 413);
    let (code, _) = post_artifact(&node, b"{}", "x", Vec::new()).await;
    assert_eq!(code, 400);
    let m1 = manifest("fw", "1.0.0", &data);
    let (code, _) = post_artifact(&node, &m1, &signer.sign(&m1), data.clone()).await;
    assert_eq!(code, 409);
    // The same payload under another version is stored once.
    let (code, v) = post_artifact(&node, &m, &signer.sign(&m), data.clone()).await;
    assert_eq!(code, 201, "{v}");
    let blobs: Vec<_> = std::fs::read_dir(node.data_dir().join("ota/blobs"))
        .expect("blobs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs, vec![sha256(&data)], "one blob, no leftovers");
    // Stored encrypted: the payload's bytes are nowhere on disk.
    let blob = std::fs::read(node.data_dir().join("ota/blobs").join(sha256(&data))).expect("blob");
    assert!(!blob.windows(64).any(|w| w == &data[5000..5064]));
    let (_, v) = node.get(&format!("{ota}/artifact/all")).await;
    assert_eq!(v["totalCount"], 2);
}

/// A node with OTA on and a new signing key trusted, and devices provisioned with their
/// secrets (`<name>-secret-000`).
struct OtaNode {
    node: Node,
    /// The signing key's file, and its public key line.
    key: std::path::PathBuf,
    public: String,
    /// OTA's API: `https://127.0.0.1:<port>/api/v3` (plain `http` without mutual TLS).
    api: String,
    _keys: tempfile::TempDir,
}

impl std::ops::Deref for OtaNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

async fn ota_node<S: AsRef<str>>(devices: &[S]) -> OtaNode {
    let keys = crate::support::tempdir();
    let (key, public) = keygen(keys.path());
    let node = Node::start(&format!(
        "[ota]\nenabled = true\ntrusted_keys = [\"{public}\"]\n"
    ))
    .await;
    let names: Vec<&str> = devices.iter().map(AsRef::as_ref).collect();
    crate::support::provision(&node, &names);
    with_secrets(&node, devices);
    let api = format!("{}/api/v3", node.url(node.ports.ota));
    OtaNode {
        node,
        key,
        public,
        api,
        _keys: keys,
    }
}

impl OtaNode {
    /// Creates rollout `name` of `fw` `version` to `devices` in one phase.
    async fn roll_out(&self, name: &str, version: &str, devices: &[&str]) {
        let rollout = json!({"name": name, "artifact": {"name": "fw", "version": version},
            "target": {"devices": devices}, "policy": {"phases": [100.0]}});
        let (code, v) = self.post(&format!("{}/rollout", self.api), &rollout).await;
        assert_eq!(code, 201, "{v}");
    }
}

/// Gives each device the secret `<name>-secret-000`, with the CLI.
pub(crate) fn with_secrets<S: AsRef<str>>(node: &Node, devices: &[S]) {
    for d in devices {
        let d = d.as_ref();
        node.cli_ok(&[
            "device",
            "secret",
            d,
            "--secret",
            &format!("{d}-secret-000"),
        ]);
    }
}

/// Uploads `data` as `name` `version` with the CLI (through the gateway); returns its output.
pub(crate) fn upload(
    node: &Node,
    key: &std::path::Path,
    name: &str,
    version: &str,
    data: &[u8],
) -> String {
    let file = node.dir.path().join(format!("{name}-{version}.bin"));
    std::fs::write(&file, data).expect("write");
    node.cli_ok(&[
        "ota",
        "upload",
        file.to_str().expect("path"),
        "--name",
        name,
        "--version",
        version,
        "--key",
        key.to_str().expect("path"),
        "--compatible",
        "Thermostat",
    ])
}

/// Makes a signing key with the CLI; returns (key file, public key line).
pub(crate) fn keygen(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["ota", "keygen", "--out"]).arg(dir);
    let (ok, _, err) = run_cli(cmd, None);
    assert!(ok, "{err}");
    let public = std::fs::read_to_string(dir.join("ota-signing.pub")).expect("pub");
    (dir.join("ota-signing.key"), public.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_offers_by_phase_pauses_on_failures_and_devices_use_their_own_credential() {
    let names = ["ota-0", "ota-1", "ota-2", "ota-3"];
    let node = ota_node(&names).await;
    let ota = &node.api;
    let data = payload(200_000, 3);
    upload(&node, &node.key, "fw", "2.0", &data);

    // Rollouts that cannot be: unknown artifact, nothing compatible, bad policy.
    let rollout = |name: &str, version: &str, policy: Value| {
        json!({"name": name, "artifact": {"name": "fw", "version": version},
               "target": {"devices": names}, "policy": policy})
    };
    let (code, _) = node
        .post(&format!("{ota}/rollout"), &rollout("x", "9.9", json!({})))
        .await;
    assert_eq!(code, 404);
    let (code, _) = node
        .post(
            &format!("{ota}/rollout"),
            &rollout("x", "2.0", json!({"phases": [50.0, 40.0]})),
        )
        .await;
    assert_eq!(code, 400);
    let (code, v) = node
        .post(
            &format!("{ota}/rollout"),
            &rollout(
                "r1",
                "2.0",
                json!({"phases": [50.0, 100.0], "failureCount": 1}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["phases"][0]["devices"], 2);

    let poll = |device: &str, token: Option<String>, etag: Option<String>| {
        let mut req = node.http.get(format!("{ota}/ddi/{device}"));
        if let Some(t) = token {
            req = req.header("x-outpost-device-token", t);
        }
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.send()
    };
    let token = |d: &str| Some(format!("{d}-secret-000"));
    // What a device's poll offers it.
    let action = async |device: &str| {
        let r = poll(device, token(device), None).await.expect("poll");
        r.json::<Value>().await.expect("json")["action"].clone()
    };
    // Credentials: none, wrong, right.
    assert_eq!(
        poll("ota-0", None, None)
            .await
            .expect("poll")
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        poll("ota-0", Some("wrong-secret-000".into()), None)
            .await
            .expect("poll")
            .status()
            .as_u16(),
        401
    );
    let r = poll("ota-0", token("ota-0"), None).await.expect("poll");
    assert_eq!(r.status().as_u16(), 200);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["action"]["id"], "r1", "{v}");
    assert_eq!(v["action"]["artifact"]["sha256"], sha256(&data));
    // An unchanged poll is cheap.
    let r = poll("ota-0", token("ota-0"), Some(etag))
        .await
        .expect("poll");
    assert_eq!(r.status().as_u16(), 304);
    // Phase 2 is not open: nothing for ota-2, and its download is refused.
    let v = action("ota-2").await;
    assert!(v.is_null(), "{v}");
    let dl = |device: &str| {
        node.http
            .get(format!("{ota}/ddi/{device}/action/r1/payload"))
            .header("x-outpost-device-token", format!("{device}-secret-000"))
    };
    assert_eq!(
        dl("ota-2").send().await.expect("get").status().as_u16(),
        403
    );
    // ota-0 downloads in two parts, the second resuming where the first stopped.
    let first = dl("ota-0")
        .header("range", "bytes=0-99999")
        .send()
        .await
        .expect("get");
    assert_eq!(first.status().as_u16(), 206);
    let mut got = first.bytes().await.expect("body").to_vec();
    let rest = dl("ota-0")
        .header("range", format!("bytes={}-", got.len()))
        .send()
        .await
        .expect("get");
    assert_eq!(rest.status().as_u16(), 206);
    got.extend_from_slice(&rest.bytes().await.expect("body"));
    assert_eq!(sha256(&got), sha256(&data));

    let report = |device: &str, status: &str| {
        node.http
            .post(format!("{ota}/ddi/{device}/action/r1/feedback"))
            .header("x-outpost-device-token", format!("{device}-secret-000"))
            .json(&json!({"status": status, "details": format!("{device} {status}")}))
            .send()
    };
    for s in ["downloading", "installing", "succeeded"] {
        assert_eq!(
            report("ota-0", s).await.expect("report").status().as_u16(),
            200,
            "{s}"
        );
    }
    assert_eq!(
        report("ota-0", "downloading")
            .await
            .expect("report")
            .status()
            .as_u16(),
        409
    );
    assert_eq!(
        report("ota-2", "downloading")
            .await
            .expect("report")
            .status()
            .as_u16(),
        404
    );
    // One failure pauses it (failureCount 1) before phase 2 opens.
    assert_eq!(
        report("ota-1", "rolledBack")
            .await
            .expect("report")
            .status()
            .as_u16(),
        200
    );
    let (_, v) = node.get(&format!("{ota}/rollout/name/r1")).await;
    assert_eq!(v["status"]["state"], "paused", "{v}");
    assert_eq!(v["status"]["automatic"], true);
    assert_eq!(v["counts"]["succeeded"], 1);
    assert_eq!(v["counts"]["rolledBack"], 1);
    assert_eq!(v["counts"]["waiting"], 2);
    assert_eq!(v["openPhase"], 0);
    let (_, h) = node
        .get(&format!("{ota}/rollout/name/r1/device/ota-1"))
        .await;
    assert_eq!(h["history"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h["state"], "rolledBack");

    // Resume (phase 1 still short of 100 % successes), then cancel.
    let (code, v) = node
        .post(&format!("{ota}/rollout/name/r1/resume"), &json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"]["state"], "running");
    let (code, _) = node
        .post(&format!("{ota}/rollout/name/r1/resume"), &json!({}))
        .await;
    assert_eq!(code, 409);
    let (code, v) = node
        .post(&format!("{ota}/rollout/name/r1/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["counts"]["canceled"], 2);
    assert_eq!(v["counts"]["succeeded"], 1);
    assert!(action("ota-2").await.is_null());
}

/// The reference agent, the package's second binary.
fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_outpost-agent")
}

struct Agents(Vec<std::process::Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agent for `device` of the OTA server at `server`, with `token` (written to its token
/// file) and its state in `dir`; the caller adds the key, health check and poll interval.
fn agent(server: &str, dir: &std::path::Path, device: &str, token: &str) -> Command {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("token"), token).expect("token");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--server", server, "--device", device])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    // What it says (steps on stdout, download progress on stderr) in `dir/agent.log`.
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent.log");
    cmd.stderr(log.try_clone().expect("agent.log")).stdout(log);
    cmd
}

/// Starts the agent for `device` of `node`, polling every second, with its state in `dir`.
fn start_agent(
    node: &OtaNode,
    dir: &std::path::Path,
    device: &str,
    health: &str,
    extra: &[&str],
) -> std::process::Child {
    let server = node.url(node.ports.ota);
    agent(&server, dir, device, &format!("{device}-secret-000"))
        .arg("--ca")
        .arg(node.data_dir().join("tls/ca.pem"))
        .args(["--trusted-key", &node.public, "--health-cmd", health])
        .args(["--poll-s", "1"])
        .args(extra)
        .spawn()
        .expect("outpost-agent")
}

fn agent_state(dir: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap_or_default())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_roll_out_in_phases_and_failures_pause_and_roll_back() {
    let names: Vec<String> = (0..20).map(|i| format!("agent-{i:02}")).collect();
    let node = ota_node(&names).await;
    let ota = &node.api;
    let data = payload(100_000, 7);
    upload(&node, &node.key, "fw", "3.0", &data);
    // Through the gateway with the CLI.
    let mut args = vec![
        "ota",
        "rollout",
        "create",
        "wave",
        "--artifact",
        "fw",
        "--version",
        "3.0",
        "--phases",
        "25,50,100",
        "--failure-count",
        "3",
        "--failure-percent",
        "100",
    ];
    for d in &names {
        args.extend(["--device", d.as_str()]);
    }
    let out = node.cli_ok(&args);
    assert!(out.contains("to 20 devices"), "{out}");

    // Agents 00-02 (in the first phase of 5) fail their health check.
    let root = crate::support::tempdir();
    let mut agents = Agents(Vec::new());
    for (i, d) in names.iter().enumerate() {
        let health = if i < 3 {
            "echo broken >&2; exit 1"
        } else {
            "test -s \"$OUTPOST_SLOT/payload\""
        };
        agents
            .0
            .push(start_agent(&node, &root.path().join(d), d, health, &[]));
    }
    let status = || async { node.get(&format!("{ota}/rollout/name/wave")).await.1 };
    eventually_v("the rollout to pause", &status, |v| {
        v["status"]["state"] == "paused"
            && v["counts"]["rolledBack"] == 3
            && v["counts"]["succeeded"] == 2
    })
    .await;
    let v = status().await;
    assert_eq!(v["status"]["automatic"], true, "{v}");
    assert_eq!(v["openPhase"], 0, "later phases never started: {v}");
    assert_eq!(v["counts"]["waiting"], 15, "{v}");
    for d in &names[..3] {
        let s = agent_state(&root.path().join(d));
        assert_eq!(s["active"], "a", "{d} rolled back: {s}");
        assert!(s["installed"].is_null());
        let (_, h) = node
            .get(&format!("{ota}/rollout/name/wave/device/{d}"))
            .await;
        let last = h["history"]
            .as_array()
            .and_then(|a| a.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(last["status"], "rolledBack", "{h}");
        assert!(
            last["details"]
                .as_str()
                .unwrap_or_default()
                .contains("broken"),
            "{h}"
        );
        // What the agent told its log, as people read it: the download's progress to the
        // end, then the rollback and why.
        let log = std::fs::read_to_string(root.path().join(d).join("agent.log")).expect("log");
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("{d}: downloading fw 3.0 ["))
                    && l.contains("100.0%")),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "{d}: rolled back: health check failed (exit 1): broken; back on slot a"
            )),
            "{log}"
        );
    }
    for d in &names[3..5] {
        let s = agent_state(&root.path().join(d));
        assert_eq!(s["active"], "b", "{d}: {s}");
        assert_eq!(s["installed"][1], "3.0");
        assert_eq!(
            std::fs::read(root.path().join(d).join("state/slot-b/payload")).expect("payload"),
            data
        );
    }
    let (ok, out, _) = node.cli(&["ota", "rollout", "status", "wave"]);
    assert!(
        ok && out.contains("paused") && out.contains("0 (open)"),
        "{out}"
    );
    // Resume: earlier failures no longer count, but the first phase is short of 100 %
    // successes, so nothing more opens; cancel ends it.
    let resumed_ms = crate::support::now_nanos() / 1_000_000;
    let (ok, out, err) = node.cli(&["ota", "rollout", "resume", "wave"]);
    assert!(ok && out.contains("running"), "{out}{err}");
    // Every waiting agent asked again since: none was offered anything.
    let inventory = || async { node.get(&format!("{ota}/inventory/all")).await.1 };
    eventually_v(
        "every waiting agent to poll after the resume",
        &inventory,
        |v| {
            names[5..].iter().all(|d| {
                v["devices"].as_array().is_some_and(|all| {
                    all.iter().any(|x| {
                        x["name"] == d.as_str()
                            && x["lastSeenMs"].as_i64().is_some_and(|t| t > resumed_ms)
                    })
                })
            })
        },
    )
    .await;
    let v = status().await;
    assert_eq!(v["status"]["state"], "running", "{v}");
    assert_eq!(v["counts"]["waiting"], 15, "{v}");
    let (ok, out, err) = node.cli(&["ota", "rollout", "cancel", "wave"]);
    assert!(ok && out.contains("canceled"), "{out}{err}");
    let (ok, _, _) = node.cli(&["ota", "rollout", "cancel", "wave"]);
    assert!(!ok, "a canceled rollout cannot be canceled again");
    let v = status().await;
    assert_eq!(v["counts"]["canceled"], 15, "{v}");
    assert_eq!(v["counts"]["succeeded"], 2);
    assert_eq!(v["counts"]["rolledBack"], 3);
    // Watching an ended rollout ends at once, and says how it ended (exit status 1).
    let (code, _, err) = node.cli_code(&["ota", "rollout", "status", "wave", "--watch"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("rollout wave was canceled"), "{err}");

    // A rollout whose only device rolls back (its health check still fails) is failed,
    // not finished; --watch follows it until then.
    node.roll_out("solo", "3.0", &[names[0].as_str()]).await;
    let (code, out, err) = node.cli_code(&["ota", "rollout", "status", "solo", "--watch"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("rollout solo failed: 0 of 1 devices succeeded (the policy needs 100%)"),
        "{err}"
    );
    assert!(out.contains("solo fw 3.0: failed"), "{out}");
    drop(agents);
}

async fn eventually_v<F, Fut>(what: &str, get: &F, ok: impl Fn(&Value) -> bool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = get().await;
        if ok(&v) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_resumes_its_download_where_it_stopped() {
    let node = ota_node(&["slow-1"]).await;
    let ota = &node.api;
    let data = payload(3_000_000, 5);
    upload(&node, &node.key, "fw", "4.0", &data);
    node.roll_out("slow", "4.0", &["slow-1"]).await;
    // 500 KB/s: six seconds for the whole payload; killed after about one.
    let dir = crate::support::tempdir();
    let health = "test -s \"$OUTPOST_SLOT/payload\"";
    let rated = ["--rate", "500000"];
    let mut agent = Agents(vec![start_agent(
        &node,
        dir.path(),
        "slow-1",
        health,
        &rated,
    )]);
    let part = dir.path().join("state/download.part");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&part).map_or(0, |m| m.len()) < 400_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    agent.0[0].kill().expect("kill");
    agent.0[0].wait().expect("wait");
    let kept = std::fs::metadata(&part).expect("part").len();
    assert!(kept > 0 && kept < data.len() as u64, "{kept}");
    // Started again without a rate limit: it asks for the rest only, and finishes.
    agent
        .0
        .push(start_agent(&node, dir.path(), "slow-1", health, &[]));
    eventually_v(
        "the install",
        &|| async { node.get(&format!("{ota}/rollout/name/slow")).await.1 },
        |v| v["counts"]["succeeded"] == 1,
    )
    .await;
    let log = node.log();
    let resumed = log
        .lines()
        .filter(|l| l.contains("device download") && l.contains("slow-1"))
        .filter_map(|l| l.split("range=\"bytes=").nth(1))
        .filter_map(|r| r.split('-').next()?.parse::<u64>().ok())
        .collect::<Vec<_>>();
    assert!(
        resumed.iter().any(|start| *start >= kept),
        "no download resumed from {kept} or later: {resumed:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("state/slot-b/payload")).expect("payload"),
        data
    );
}

/// The agent as [`start_agent`] starts it, at `server`, in a process group of its own
/// (its health check too), killed with the group when dropped.
fn agent_group(node: &OtaNode, server: &str, dir: &std::path::Path, health: &str) -> AgentGroup {
    use std::os::unix::process::CommandExt as _;
    let child = agent(server, dir, "mid-1", "mid-1-secret-000")
        .arg("--ca")
        .arg(node.data_dir().join("tls/ca.pem"))
        .args(["--trusted-key", &node.public, "--health-cmd", health])
        .args(["--poll-s", "1"])
        .process_group(0)
        .spawn()
        .expect("outpost-agent");
    AgentGroup(child)
}

/// An agent's process group, killed with SIGKILL when dropped.
struct AgentGroup(std::process::Child);

impl Drop for AgentGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_install_resumes_from_its_step_and_sends_its_reports_later() {
    let node = ota_node(&["mid-1"]).await;
    let ota = &node.api;
    let data = payload(200_000, 3);
    upload(&node, &node.key, "fw", "4.0", &data);
    node.roll_out("mid", "4.0", &["mid-1"]).await;
    // The first health check hangs (the new firmware is booting): the agent is killed
    // there, switched to the new slot and not yet decided.
    let dir = crate::support::tempdir();
    let mark = dir.path().join("booted-once");
    let health = format!(
        "if [ -e '{m}' ]; then test -s \"$OUTPOST_SLOT/payload\"; else touch '{m}'; sleep 600; fi",
        m = mark.display()
    );
    let server = node.url(node.ports.ota);
    let first = agent_group(&node, &server, dir.path(), &health);
    let state = || async { agent_state(dir.path()) };
    eventually_v("the agent in its health check", &state, |s| {
        s["pending"]["step"] == "switched" && s["active"] == "b" && mark.exists()
    })
    .await;
    drop(first);
    // Started again where no server answers: it goes on from its recorded step (no
    // download is possible), decides, and keeps the report it cannot send.
    let nowhere = format!("https://127.0.0.1:{}", crate::support::free_port());
    let offline = agent_group(&node, &nowhere, dir.path(), &health);
    eventually_v("the install finished offline", &state, |s| {
        s["pending"].is_null()
            && s["installed"][1] == "4.0"
            && s["unsent"]
                .as_array()
                .is_some_and(|u| u.iter().any(|r| r["status"] == "succeeded"))
    })
    .await;
    drop(offline);
    let rollout = || async { node.get(&format!("{ota}/rollout/name/mid")).await.1 };
    assert_eq!(rollout().await["counts"]["succeeded"], 0);
    assert_eq!(
        std::fs::read(dir.path().join("state/slot-b/payload")).expect("payload"),
        data
    );
    // Back online: the kept report is delivered, and the rollout counts it.
    let _online = agent_group(&node, &server, dir.path(), &health);
    eventually_v("the report delivered", &rollout, |v| {
        v["counts"]["succeeded"] == 1
    })
    .await;
    eventually_v("nothing left unsent", &state, |s| {
        s["unsent"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_tampered_artifact_from_a_rogue_server() {
    // A rogue server offers a correctly signed manifest with other bytes as the payload.
    let keys = crate::support::tempdir();
    let (key, public) = keygen(keys.path());
    let signer = SigningKey::from_pkcs8(
        &B64.decode(std::fs::read_to_string(&key).expect("key").trim())
            .expect("b64"),
    )
    .expect("key");
    let good = payload(10_000, 1);
    let evil = payload(10_000, 2);
    let m = manifest("fw", "6.6", &good);
    let port = crate::support::free_port();
    let dir = crate::support::tempdir();
    let action = json!({"pollSeconds": 1, "action": {
        "id": "rogue", "state": "offered",
        "artifact": {"name": "fw", "version": "6.6", "size": good.len(), "sha256": sha256(&good),
                     "payloadType": "file", "manifestBase64": B64.encode(&m), "signature": signer.sign(&m), "keyId": "x"},
        "download": "/api/v3/ddi/dev/action/rogue/payload",
        "feedback": "/api/v3/ddi/dev/action/rogue/feedback"}});
    std::fs::write(dir.path().join("poll.json"), action.to_string()).expect("poll");
    std::fs::write(dir.path().join("payload"), &evil).expect("payload");
    let script = format!(
        r#"
import http.server, os
D = {dir:?}
class H(http.server.BaseHTTPRequestHandler):
    def send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.endswith("/payload"):
            self.send(200, open(os.path.join(D, "payload"), "rb").read(), "application/octet-stream")
        else:
            self.send(200, open(os.path.join(D, "poll.json"), "rb").read())
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        open(os.path.join(D, "feedback.log"), "ab").write(body + b"\n")
        self.send(200, b"{{}}")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
"#,
        dir = dir.path().display().to_string()
    );
    let server = Spawned(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .spawn()
            .expect("python3"),
    );
    let state = dir.path().join("agent");
    let rogue = format!("http://127.0.0.1:{port}");
    let agent = Spawned(
        agent(&rogue, &state, "dev", "anything")
            .args(["--trusted-key", &public, "--health-cmd", "true"])
            .args(["--poll-s", "1"])
            .spawn()
            .expect("agent"),
    );
    let feedback = dir.path().join("feedback.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&feedback)
        .unwrap_or_default()
        .contains("failed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never reported the refusal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&feedback).expect("feedback");
    assert!(log.contains("SHA-256"), "{log}");
    assert!(
        !log.contains("installing") && !log.contains("succeeded"),
        "{log}"
    );
    let s = agent_state(&state);
    assert_eq!(s["active"], "a");
    assert!(s["installed"].is_null());
    assert!(
        !state.join("state/slot-b/payload").exists(),
        "a tampered payload reached a slot"
    );
    drop(agent);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_agent_is_told_over_mqtt_to_poll_now() {
    let node = ota_node(&["live-1"]).await;
    let ota = &node.api;
    let root = crate::support::tempdir();
    let dir = root.path().join("live-1");
    // It polls once an hour: only the message can make it fetch the update soon.
    let server = node.url(node.ports.ota);
    let mqtt = format!("mqtt://127.0.0.1:{}", node.ports.mqtt);
    let log = root.path().join("agent.log");
    let agents = Agents(vec![
        agent(&server, &dir, "live-1", "live-1-secret-000")
            .arg("--ca")
            .arg(node.data_dir().join("tls/ca.pem"))
            .args(["--trusted-key", &node.public, "--health-cmd", "true"])
            .args(["--poll-s", "3600", "--mqtt", &mqtt])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("outpost-agent"),
    ]);
    let data = payload(50_000, 5);
    upload(&node, &node.key, "fw", "4.0", &data);
    // Its first poll (at start) found nothing. The agent polls only once its subscription
    // to "poll now" is acknowledged: from its first check-in on, it listens.
    let inventory = || async { node.get(&format!("{ota}/inventory/name/live-1")).await.1 };
    eventually_v("the agent's first check-in", &inventory, |v| {
        v["checkIn"] == "ok"
    })
    .await;
    node.roll_out("now", "4.0", &["live-1"]).await;
    // The agent polls once an hour (`--poll-s 3600`); `eventually_v` gives up after a
    // minute, so an install seen at all came from the "poll now" message.
    let status = || async { node.get(&format!("{ota}/rollout/name/now")).await.1 };
    eventually_v("the update to be installed", &status, |v| {
        v["counts"]["succeeded"] == 1
    })
    .await;

    let s = agent_state(&dir);
    assert_eq!(s["installed"][1], "4.0", "{s}");
    // Its log says how the download went (a line at every tenth of the way).
    let said = std::fs::read_to_string(&log).expect("agent log");
    assert!(
        said.contains("live-1: downloading fw 4.0 [##############################] 100.0% ")
            && said.contains(" MB/s"),
        "{said}"
    );
    // The inventory shows the firmware the agent now runs.
    eventually_v("the new firmware in the inventory", &inventory, |v| {
        v["attributes"]["firmware.version"] == "4.0"
    })
    .await;
    drop(agents);
}
