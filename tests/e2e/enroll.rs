//! Device identities over the real gateway: enrollment with a secret and a node-issued
//! client certificate, rotation, revocation, and zero-touch enrollment with a manufacturer
//! certificate pending approval.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::support::Node;

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
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client")
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
fn leaf_b64(pem: &str) -> String {
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

async fn ota_node(extra: &str) -> Node {
    let (key, _) = outpost_ota::manifest::SigningKey::generate().expect("key");
    Node::start(&format!(
        "[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n{extra}",
        key.public().encoded()
    ))
    .await
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
    let (ok, out, err) = node.cli(&[
        "device",
        "enroll",
        "dev-b",
        "--profile",
        "Thermostat",
        "--service",
        "device-mqtt",
        "--label",
        "e2e",
    ]);
    assert!(ok, "{out}{err}");
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
        &[("x-outpost-client-cert", claimed)],
    )
    .await;
    assert_eq!(code, 401, "{body}");

    // The reference agent authenticates with the certificate too.
    let state = node.dir.path().join("agent-a");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args([
            "--server",
            &format!("https://127.0.0.1:{}/ota", node.ports.gateway),
            "--device",
            "dev-a",
            "--trusted-key",
            "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "--health-cmd",
            "true",
            "--once",
        ])
        .arg("--ca")
        .arg(a1.join("ca.pem"))
        .arg("--cert")
        .arg(a1.join("device.pem"))
        .arg("--key")
        .arg(a1.join("device.key"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("outpost-agent");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Rotation: new secret and certificate work, the old ones stop.
    let a2 = node.dir.path().join("dev-a-2");
    let (ok, out, err) = node.cli(&[
        "device",
        "rotate",
        "dev-a",
        "--out",
        a2.to_str().expect("path"),
    ]);
    assert!(ok, "{out}{err}");
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
    let (ok, out, _) = node.cli(&["device", "show", "dev-a"]);
    assert!(ok && out.contains("\"LOCKED\""), "{out}");
    // The other device is untouched.
    assert_eq!(poll(&node, &anon, "dev-b", Some(&b_secret)).await, 200);
    // Re-enrolling brings a decommissioned device back with new credentials.
    let (ok, out, err) = node.cli(&["device", "enroll", "dev-a"]);
    assert!(ok, "{out}{err}");
    let again = out.lines().last().unwrap_or_default().trim().to_string();
    poll_until(&node, &anon, "dev-a", Some(&again), 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_manufacturer_certificate_enrolls_itself_pending_approval() {
    // The manufacturer's CA, and certificates it gave two devices; another CA's too.
    let factory = tempfile::tempdir().expect("tempdir");
    let maker = outpost_pki::Paths::new(factory.path());
    outpost_pki::ensure_ca(&maker).expect("manufacturer CA");
    let stranger_dir = tempfile::tempdir().expect("tempdir");
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
    let (ok, out, _) = node.cli(&["device", "show", "zt-1"]);
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
    let (ok, out, err) = node.cli(&["device", "approve", "zt-1"]);
    assert!(ok, "{out}{err}");
    poll_until(&node, &zt, "zt-1", None, 200).await;
    let (ok, _, err) = node.cli(&["device", "approve", "zt-1"]);
    assert!(!ok && err.contains("no certificate waiting"), "{err}");

    // Revoked, it stays out: its manufacturer certificate does not enroll it again.
    let (ok, _, err) = node.cli(&["device", "revoke", "zt-1"]);
    assert!(ok, "{err}");
    poll_until(&node, &zt, "zt-1", None, 401).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(poll(&node, &zt, "zt-1", None).await, 401);
}
