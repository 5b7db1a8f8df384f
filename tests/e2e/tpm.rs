//! Keys sealed by a TPM 2.0 (swtpm as the TPM): the node seals its keys at first start, says
//! so at start and in `/health`, and its data dir opens with that TPM only: not with
//! another TPM (a copied disk, or the TPM's state replaced), not without one.

use std::process::Command;
use std::time::{Duration, Instant};

use outpost_testkit::tpm::Swtpm;

use crate::support::*;

fn tpm_config(tcti: &str) -> String {
    format!("[security]\ntpm = \"{tcti}\"\n")
}

/// `outpost up` on `node`'s data dir with its config's TPM set to `tcti`: it must refuse to
/// start (exit within 30 s); its standard error.
fn refused_with(node: &Node, tcti: &str) -> String {
    std::fs::write(&node.config, config_text(&node.ports, &tpm_config(tcti))).expect("config");
    let log = node.dir.path().join("refused.log");
    let _ = std::fs::remove_file(&log);
    let mut up = Command::new(BIN);
    up.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .arg("up");
    let mut child = crate::support::Spawned(spawn_logged(&mut up, &log, "outpost up"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            signal(child.id(), "TERM");
            let _ = child.wait();
            panic!(
                "the node started with {tcti}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sealed_by_its_tpm_opens_with_that_tpm_only() {
    let state = crate::support::tempdir();
    let mut tpm = Swtpm::at(state.path());
    let mut node = Node::start(&tpm_config(&tpm.tcti())).await;
    let device = "sealed-thermo-7f";
    let count = stored_readings(&node, device, 20, "21.5").await;

    // Which protection is in force: in every service's health, and in the start banner.
    let sealed = format!("sealed by the TPM ({})", tpm.tcti());
    for url in [
        node.data(),
        node.metadata(),
        node.url(node.ports.gateway_http),
    ] {
        let (s, h) = node.get(&format!("{url}/api/v3/health")).await;
        assert_eq!(s, 200, "{h}");
        let keys = h["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "keys"))
            .unwrap_or_else(|| panic!("no keys check: {h}"));
        assert_eq!(
            (keys["ok"].as_bool(), keys["detail"].as_str()),
            (Some(true), Some(sealed.as_str()))
        );
    }
    assert!(
        node.log().contains(&format!("Keys at rest: {sealed}")),
        "{}",
        node.log()
    );
    node.stop();

    // Every key file is sealed: the storage keys, the CA key, the token-signing secret.
    let secrets = node.data_dir().join("secrets");
    let mut keys = Vec::new();
    for e in std::fs::read_dir(&secrets).expect("secrets") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "key") {
            let text = std::fs::read_to_string(&p).expect("key file");
            assert!(
                text.starts_with("outpost-sealed-v1:"),
                "{} is not sealed: {text}",
                p.display()
            );
            keys.push(p.file_name().expect("name").to_string_lossy().into_owned());
        }
    }
    for must in [
        "core-data.key",
        "core-metadata.key",
        "node-ca.key",
        "gateway-jwt.key",
    ] {
        assert!(keys.iter().any(|k| k == must), "{must} missing: {keys:?}");
    }
    let before: Vec<_> = keys
        .iter()
        .map(|k| std::fs::read(secrets.join(k)).expect("key"))
        .collect();

    // Another TPM (a new seed): as if the disk were copied to another machine, or this TPM
    // were cleared. The node stops at once, says why, and regenerates nothing.
    let other = Swtpm::start();
    let err = refused_with(&node, &other.tcti());
    assert!(err.contains("sealed by another TPM"), "{err}");
    // Key files only: refused, not silently replaced by new keys.
    let err = refused_with(&node, "off");
    assert!(err.contains("security.tpm is off"), "{err}");
    // Its TPM gone.
    tpm.stop();
    let err = refused_with(&node, &format!("swtpm:host=127.0.0.1,port={}", tpm.port));
    assert!(err.contains("cannot reach the TPM"), "{err}");
    let after: Vec<_> = keys
        .iter()
        .map(|k| std::fs::read(secrets.join(k)).expect("key"))
        .collect();
    assert!(
        before == after,
        "a key file changed while the node was refused"
    );

    // With its TPM back, the node opens and everything stored is there.
    let tpm = Swtpm::at(state.path());
    std::fs::write(
        &node.config,
        config_text(&node.ports, &tpm_config(&tpm.tcti())),
    )
    .expect("config");
    node.launch().await;
    assert_eq!(node.get(&count).await.1["count"], 20);
    node.stop();
}
