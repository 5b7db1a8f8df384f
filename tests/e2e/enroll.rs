//! Device identities over the real gateway: enrollment with a secret and a node-issued
//! client certificate, rotation, revocation, and zero-touch enrollment with a manufacturer
//! certificate pending approval.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::support::{A_THERMOSTAT, Node, eventually, https_client, run_ok};

/// A client of the gateway trusting the node CA, presenting `identity` (chain, key) if given.
fn client(node: &Node, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = std::fs::read_to_string(node.data_dir().join("tls/ca.pem")).expect("node CA");
    let identity = identity.map(|(c, k)| {
        (
            std::fs::read_to_string(c).expect("cert"),
            std::fs::read_to_string(k).expect("key"),
        )
    });
    let cfg = outpost_pki::client_config(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    )
    .expect("tls config");
    https_client(cfg)
}

/// A device's poll through the gateway: its status code.
async fn poll(node: &Node, http: &reqwest::Client, device: &str, token: Option<&str>) -> u16 {
    poll_with(node, http, device, token, &[]).await.0
}

async fn poll_with(
    node: &Node,
    http: &reqwest::Client,
    device: &str,
    token: Option<&str>,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut req = http.get(format!(
        "https://127.0.0.1:{}/ota/api/v3/ddi/{device}",
        node.ports.gateway
    ));
    if let Some(t) = token {
        req = req.header("x-outpost-device-token", t);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.expect("poll through the gateway");
    let code = r.status().as_u16();
    (code, r.text().await.unwrap_or_default())
}

/// Waits until `device`'s poll answers `want` (credential caches follow changes within a
/// moment).
async fn poll_until(
    node: &Node,
    http: &reqwest::Client,
    device: &str,
    token: Option<&str>,
    want: u16,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = poll(node, http, device, token).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{device}'s poll answers {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the reference agent for `device` once through the gateway (`extra`: its credential
/// and CA); it must poll successfully and exit.
fn agent_once(node: &Node, device: &str, extra: &[&std::ffi::OsStr]) {
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"));
    agent
        .args([
            "--server",
            &format!("https://127.0.0.1:{}/ota", node.ports.gateway),
            "--device",
            device,
            "--trusted-key",
            "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "--health-cmd",
            "true",
            "--once",
        ])
        .args(extra)
        .arg("--state-dir")
        .arg(node.dir.path().join(format!("agent-{device}")));
    run_ok(&mut agent, &format!("outpost-agent for {device}"));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// The first certificate of a PEM chain, DER, base64: what a client could claim in a header.
pub(crate) fn leaf_b64(pem: &str) -> String {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("pem");
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// A node with OTA on (`ota_extra` added to its `[ota]`, `extra` after) and a signing key
/// it trusts: (node, the key's directory, the key file).
async fn ota_node_with(
    ota_extra: &str,
    extra: &str,
) -> (Node, tempfile::TempDir, std::path::PathBuf) {
    let keys = crate::support::tempdir();
    let (key, public) = crate::ota::keygen(keys.path());
    let node = Node::start(&format!(
        "[ota]\nenabled = true\ntrusted_keys = [\"{public}\"]\n{ota_extra}{extra}"
    ))
    .await;
    (node, keys, key)
}

async fn ota_node(extra: &str) -> Node {
    ota_node_with("", extra).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_enrolled_rotated_and_revoked_over_the_gateway() {
    let node = ota_node("").await;
    crate::support::provision(&node, &["dev-a"]);
    let anon = client(&node, None);

    // An existing device, with a certificate; the key is made by the CLI and kept there.
    let a1 = node.dir.path().join("dev-a-1");
    let (ok, out, err) = node.cli(&[
        "device",
        "enroll",
        "dev-a",
        "--cert",
        "--out",
        a1.to_str().expect("path"),
    ]);
    assert!(ok && out.contains("written to"), "{out}{err}");
    assert_eq!(mode(&a1.join("device.secret")), 0o600);
    assert_eq!(mode(&a1.join("device.key")), 0o600);
    assert!(read(&a1.join("device.pem")).contains("BEGIN CERTIFICATE"));
    assert_eq!(
        read(&a1.join("ca.pem")),
        read(&node.data_dir().join("tls/ca.pem")),
        "the bundle carries the node CA"
    );
    // A new device, created by enrolling it; the secret printed once.
    let out = node.cli_ok(&[&["device", "enroll", "dev-b"][..], &A_THERMOSTAT].concat());
    let b_secret = out.lines().last().unwrap_or_default().trim().to_string();
    assert!(b_secret.len() >= 16, "{out}");
    // Enrolling an unknown device without a profile says what is missing.
    let (ok, _, err) = node.cli(&["device", "enroll", "dev-x"]);
    assert!(!ok && err.contains("--profile"), "{err}");
    let (ok, _, err) = node.cli(&["device", "enroll", "dev-a", "--cert"]);
    assert!(!ok && err.contains("--out"), "{err}");

    // Each credential works for its own device only, through the gateway.
    let a1_cert = client(
        &node,
        Some((&a1.join("device.pem"), &a1.join("device.key"))),
    );
    let a1_secret = read(&a1.join("device.secret"));
    assert_eq!(poll(&node, &a1_cert, "dev-a", None).await, 200);
    assert_eq!(poll(&node, &anon, "dev-a", Some(&a1_secret)).await, 200);
    assert_eq!(poll(&node, &anon, "dev-b", Some(&b_secret)).await, 200);
    assert_eq!(poll(&node, &a1_cert, "dev-b", None).await, 401);
    assert_eq!(poll(&node, &anon, "dev-b", Some(&a1_secret)).await, 401);
    assert_eq!(poll(&node, &anon, "dev-a", None).await, 401);
    // A certificate claimed in a header instead of presented in the handshake is ignored.
    let claimed = leaf_b64(&read(&a1.join("device.pem")));
    let (code, body) = poll_with(
        &node,
        &anon,
        "dev-a",
        None,
        &[("x-outpost-client-cert", claimed.clone())],
    )
    .await;
    assert_eq!(code, 401, "{body}");
    // Nor can a caller reaching the service without the gateway claim it: the gateway's MAC
    // is missing or wrong.
    for mac in [None, Some("00".repeat(32))] {
        let mut req = node
            .http
            .get(format!("{}/api/v3/ddi/dev-a", node.url(node.ports.ota)))
            .header("x-outpost-client-cert", &claimed);
        if let Some(m) = &mac {
            req = req.header("x-outpost-client-cert-mac", m);
        }
        let r = req.send().await.expect("direct poll");
        assert_eq!(r.status().as_u16(), 401, "MAC {mac:?}");
    }

    // The reference agent authenticates with the certificate too.
    agent_once(
        &node,
        "dev-a",
        &[
            "--ca".as_ref(),
            a1.join("ca.pem").as_os_str(),
            "--cert".as_ref(),
            a1.join("device.pem").as_os_str(),
            "--key".as_ref(),
            a1.join("device.key").as_os_str(),
        ],
    );

    // Rotation: new secret and certificate work, the old ones stop.
    let a2 = node.dir.path().join("dev-a-2");
    node.cli_ok(&[
        "device",
        "rotate",
        "dev-a",
        "--out",
        a2.to_str().expect("path"),
    ]);
    let a2_cert = client(
        &node,
        Some((&a2.join("device.pem"), &a2.join("device.key"))),
    );
    let a2_secret = read(&a2.join("device.secret"));
    assert_ne!(a1_secret, a2_secret);
    poll_until(&node, &anon, "dev-a", Some(&a1_secret), 401).await;
    poll_until(&node, &a1_cert, "dev-a", None, 401).await;
    assert_eq!(poll(&node, &a2_cert, "dev-a", None).await, 200);
    assert_eq!(poll(&node, &anon, "dev-a", Some(&a2_secret)).await, 200);
    let (ok, out, _) = node.cli(&["device", "credentials", "dev-a", "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["status"], "active", "{v}");
    let certs = v["certificates"].as_array().cloned().unwrap_or_default();
    assert_eq!(certs.len(), 2, "{v}");
    assert_eq!(certs[0]["status"], "revoked", "{v}");
    assert_eq!(certs[1]["status"], "active", "{v}");

    // Revocation: nothing of dev-a's gets in any more; the device and its record stay.
    let (ok, out, err) = node.cli(&["device", "revoke", "dev-a"]);
    assert!(ok && out.contains("revoked dev-a"), "{out}{err}");
    poll_until(&node, &a2_cert, "dev-a", None, 401).await;
    poll_until(&node, &anon, "dev-a", Some(&a2_secret), 401).await;
    let (ok, out, _) = node.cli(&["device", "credentials", "dev-a"]);
    assert!(ok && out.contains("dev-a: revoked (secret: none)"), "{out}");
    let (ok, out, _) = node.cli(&["device", "show", "dev-a", "--json"]);
    assert!(ok && out.contains("\"LOCKED\""), "{out}");
    // The other device is untouched.
    assert_eq!(poll(&node, &anon, "dev-b", Some(&b_secret)).await, 200);
    // Re-enrolling brings a decommissioned device back with new credentials.
    let out = node.cli_ok(&["device", "enroll", "dev-a"]);
    let again = out.lines().last().unwrap_or_default().trim().to_string();
    poll_until(&node, &anon, "dev-a", Some(&again), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_manufacturer_certificate_enrolls_itself_pending_approval() {
    // The manufacturer's CA, and certificates it gave two devices; another CA's too.
    let factory = crate::support::tempdir();
    let maker = outpost_pki::Paths::new(factory.path());
    outpost_pki::ensure_ca(&maker).expect("manufacturer CA");
    let stranger_dir = crate::support::tempdir();
    let stranger = outpost_pki::Paths::new(stranger_dir.path());
    let write = |dir: &Path, id: &outpost_pki::ClientIdentity| {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("device.pem"), &id.cert_pem).expect("write");
        std::fs::write(dir.join("device.key"), &id.key_pem).expect("write");
    };
    let zt1 = factory.path().join("zt-1");
    write(
        &zt1,
        &outpost_pki::issue_client_cert(&maker, "zt-1", 30).expect("cert"),
    );
    let forged = factory.path().join("forged");
    write(
        &forged,
        &outpost_pki::issue_client_cert(&stranger, "zt-1", 30).expect("cert"),
    );

    let node = ota_node(&format!(
        "[enrollment]\nmanufacturer_ca = [\"{}\"]\napproval = true\nprofile = \"Thermostat\"\nservice = \"device-mqtt\"\nlabels = [\"zero-touch\"]\n",
        maker.ca_cert.display()
    ))
    .await;
    crate::support::provision(&node, &[]);
    let zt = client(
        &node,
        Some((&zt1.join("device.pem"), &zt1.join("device.key"))),
    );

    // First contact registers the device, waiting for approval.
    let (code, body) = poll_with(&node, &zt, "zt-1", None, &[]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("approval"), "{body}");
    let (ok, out, _) = node.cli(&["device", "show", "zt-1", "--json"]);
    assert!(
        ok && out.contains("zero-touch") && out.contains("\"LOCKED\""),
        "{out}"
    );
    let (ok, out, _) = node.cli(&["device", "credentials", "zt-1"]);
    assert!(
        ok && out.contains("pending") && out.contains("manufacturer"),
        "{out}"
    );
    // Its certificate names zt-1 only.
    assert_eq!(poll(&node, &zt, "zt-2", None).await, 401);
    assert!(
        !node.cli(&["device", "show", "zt-2"]).0,
        "no device zt-2 was made"
    );
    // A certificate from a CA the node does not trust fails the handshake.
    let bad = client(
        &node,
        Some((&forged.join("device.pem"), &forged.join("device.key"))),
    );
    assert!(
        bad.get(format!(
            "https://127.0.0.1:{}/ota/api/v3/ddi/zt-1",
            node.ports.gateway
        ))
        .send()
        .await
        .is_err(),
        "an untrusted certificate is refused in the handshake"
    );

    // Approved, it gets in.
    node.cli_ok(&["device", "approve", "zt-1"]);
    poll_until(&node, &zt, "zt-1", None, 200).await;
    let (ok, _, err) = node.cli(&["device", "approve", "zt-1"]);
    assert!(!ok && err.contains("no certificate waiting"), "{err}");

    // Revoked, it stays out: its manufacturer certificate does not enroll it again.
    node.cli_ok(&["device", "revoke", "zt-1"]);
    poll_until(&node, &zt, "zt-1", None, 401).await;
    // (Each call decides then and there, with nothing cached: one more is enough.)
    assert_eq!(poll(&node, &zt, "zt-1", None).await, 401);
    // Nor once the device is deleted: its revoked certificate stays on record.
    node.cli_ok(&["device", "rm", "zt-1"]);
    assert_eq!(poll(&node, &zt, "zt-1", None).await, 401);
    assert!(
        !node.cli(&["device", "show", "zt-1", "--json"]).0,
        "the deleted device was not registered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_shows_what_devices_report_and_groups_pick_up_new_devices() {
    let (node, _keys, key) = ota_node_with("poll_seconds = 1\noverdue_after_s = 2\n", "").await;
    crate::support::provision(&node, &["inv-1", "inv-2"]);
    crate::ota::with_secrets(&node, &["inv-1", "inv-2"]);
    // A group by label, then a device added later with that label is in it.
    let (ok, out, err) = node.cli(&["device", "group", "add", "site-a", "--label", "e2e"]);
    assert!(ok && out.contains("2 devices now"), "{out}{err}");
    let (ok, _, err) = node.cli(&["device", "group", "add", "site-a", "--label", "x"]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = node.cli(&["device", "group", "add", "nothing"]);
    assert!(!ok && err.contains("selects by"), "{err}");
    node.cli_ok(&[&["device", "add", "--name", "inv-3"][..], &A_THERMOSTAT].concat());
    let (ok, out, _) = node.cli(&["device", "group", "show", "site-a"]);
    assert!(
        ok && out.lines().collect::<Vec<_>>() == ["inv-1", "inv-2", "inv-3"],
        "{out}"
    );

    // inv-1 checks in through the gateway with the agent and reports attributes.
    let token = node.dir.path().join("inv-1.token");
    std::fs::write(&token, "inv-1-secret-000").expect("token");
    agent_once(
        &node,
        "inv-1",
        &[
            "--ca".as_ref(),
            node.data_dir().join("tls/ca.pem").as_os_str(),
            "--token-file".as_ref(),
            token.as_os_str(),
            "--attr".as_ref(),
            "hardware=rev3".as_ref(),
        ],
    );
    let (ok, out, _) = node.cli(&["device", "inventory", "--group", "site-a", "--json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let by = |name: &str| {
        v["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(v["totalCount"], 3, "{v}");
    let d1 = by("inv-1");
    assert_eq!(d1["attributes"]["hardware"], "rev3", "{d1}");
    assert_eq!(d1["attributes"]["agent.slot"], "a", "{d1}");
    assert_eq!(d1["labels"][0], "e2e", "operator-owned labels beside: {d1}");
    assert_eq!(d1["checkIn"], "ok", "{d1}");
    assert_eq!(by("inv-2")["checkIn"], "never");
    // A device may not report a nonsense inventory, nor for another device.
    let anon = client(&node, None);
    let put = |device: &str, token: &str, body: Value| {
        anon.put(format!(
            "https://127.0.0.1:{}/ota/api/v3/ddi/{device}/attributes",
            node.ports.gateway
        ))
        .header("x-outpost-device-token", token.to_string())
        .json(&body)
        .send()
    };
    let r = put(
        "inv-2",
        "inv-1-secret-000",
        serde_json::json!({"attributes": {"a": "b"}}),
    )
    .await
    .expect("put");
    assert_eq!(r.status().as_u16(), 401);
    let r = put(
        "inv-2",
        "inv-2-secret-000",
        serde_json::json!({"attributes": {"a": 1}}),
    )
    .await
    .expect("put");
    assert_eq!(r.status().as_u16(), 400);
    // Silent for longer than the expected check-in interval: overdue.
    let inv1 = || {
        let (_, out, _) = node.cli(&["device", "inventory", "--label", "e2e"]);
        out.lines()
            .find(|l| l.starts_with("inv-1"))
            .unwrap_or_default()
            .to_string()
    };
    eventually("inv-1 overdue", Duration::from_secs(20), || async {
        inv1().contains("overdue")
    })
    .await;
    let row = inv1();
    assert!(row.contains("hardware=rev3"), "{row}");

    // A rollout to the group, in a maintenance window that is not now: the devices are in
    // it, and nothing is offered until the window opens.
    crate::ota::upload(&node, &key, "fw", "1.0", b"firmware bytes");
    let hour = (outpost_contracts::now_millis() / 3_600_000) % 24;
    let window = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    // `ota rollout create <name>` of fw 1.0 to a group, with `more` arguments.
    let create = |name: &str, group: &str, more: &[&str]| {
        let of_fw = ["--artifact", "fw", "--version", "1.0", "--group", group];
        node.cli(&[&["ota", "rollout", "create", name][..], &of_fw, more].concat())
    };
    let (ok, out, err) = create("night", "site-a", &["--window", &window, "--phases", "100"]);
    assert!(ok && out.contains("to 3 devices"), "{out}{err}");
    let (code, body) = poll_with(&node, &anon, "inv-2", Some("inv-2-secret-000"), &[]).await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v["action"].is_null(), "outside the window: {v}");
    let (ok, _, err) = create("bad", "site-a", &["--window", "25:00-26:00"]);
    assert!(!ok && err.contains("window"), "{err}");
    let (ok, _, err) = create("none", "no-such-group", &[]);
    assert!(!ok && err.contains("no group"), "{err}");
}
