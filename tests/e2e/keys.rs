//! `outpost keys rotate`: every database, queue and journal of a node re-encrypted under new
//! keys, killed with kill -9 at several points and run again, and nothing lost.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::export::{post_event, status};
use crate::support::*;

fn rotate_cmd(node: &Node) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["keys", "rotate"]);
    cmd
}

fn key_files(node: &Node) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(node.data_dir().join("secrets")).expect("secrets") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if name.ends_with(".key") {
            out.insert(name, std::fs::read(&p).expect("key"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_re_encrypts_everything_and_resumes_after_kill_9() {
    // Export to a receiver that is not there: the items stay queued.
    let dead = free_port();
    let hook = format!("url = \"http://127.0.0.1:{dead}/ingest\"\nretry_initial_ms = 50");
    let signing = crate::support::tempdir();
    let mut keygen = Command::new(BIN);
    keygen.args(["ota", "keygen", "--out"]).arg(signing.path());
    run_ok(&mut keygen, "outpost ota keygen");
    let public = std::fs::read_to_string(signing.path().join("ota-signing.pub")).expect("pub");
    let extra = export_config(&[("hook", "webhook", hook)])
        + &format!(
            "[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n",
            public.trim()
        );
    let mut node = Node::start(&extra).await;
    let device = "rotated-thermo";
    let count = stored_readings(&node, device, 30, "20.5").await;
    for n in 0..20 {
        assert_eq!(
            post_event(&node, "valve", &n.to_string())
                .await
                .status()
                .as_u16(),
            201
        );
    }
    // The 30 events from the bus are queued for export too: 50 in all.
    eventually(
        "the export queue to hold 50",
        Duration::from_secs(10),
        || async { status(&node).await["queue"]["items"] == 50 },
    )
    .await;

    // Refused while the node runs.
    let (ok, _, err) = run_cli(rotate_cmd(&node), None);
    assert!(!ok && err.contains("is running"), "{err}");
    node.stop();
    let before = key_files(&node);

    // Killed with kill -9 a few ms later each time, until a kill lands in the middle of a
    // rotation (a key's successor made, what it protects partly re-encrypted).
    let secrets = node.data_dir().join("secrets");
    let mut kills = 0;
    let interrupted = loop {
        assert!(kills < 60, "no kill landed in the middle of a rotation");
        let mut child = rotate_cmd(&node)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rotate");
        std::thread::sleep(Duration::from_millis(2 + 4 * kills));
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        let pending = outpost_storage::protect::unfinished_rotations(&secrets);
        if !pending.is_empty() {
            // The successors as they are now: the run that finishes must use these.
            break pending
                .iter()
                .map(|p| {
                    let name = p.file_name().expect("name").to_string_lossy();
                    let key = name.trim_end_matches(".next").to_string();
                    (key, std::fs::read(p).expect("successor"))
                })
                .collect::<BTreeMap<_, _>>();
        }
    };
    eprintln!(
        "kill {kills} left {interrupted:?} unfinished",
        interrupted = interrupted.keys()
    );
    // The node does not start on a rotation left unfinished.
    let mut up = Command::new(BIN);
    up.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .arg("up");
    let (ok, _, err) = run_cli(up, None);
    assert!(!ok && err.contains("key rotation did not finish"), "{err}");

    let out = run_ok(&mut rotate_cmd(&node), "outpost keys rotate");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("Every key rotated"), "{out}");
    eprintln!("{out}");
    for (what, line) in [
        ("the events", "rotated core-data.key: core-data.db"),
        (
            "the export queue",
            "rotated export.key: export.db, 1 queue(s)",
        ),
        ("the journal", "rotated broker-journal.key: 1 queue(s)"),
        ("OTA", "rotated ota.key: ota.db, 0 artifact(s) (0 damaged)"),
    ] {
        assert!(out.contains(line), "{what}: {out}");
    }
    // Numbered as it goes: [1/N] to [N/N], N the keys the closing line counts.
    let steps: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
    let n = steps.len();
    assert!(n >= 4, "{out}");
    for (i, l) in steps.iter().enumerate() {
        assert!(l.starts_with(&format!("[{}/{n}] rotated ", i + 1)), "{out}");
    }
    assert!(out.contains(&format!("Every key rotated ({n})")), "{out}");
    assert!(outpost_storage::protect::unfinished_rotations(&secrets).is_empty());
    let after = key_files(&node);
    for (key, successor) in &interrupted {
        assert_eq!(
            after.get(key),
            Some(successor),
            "{key}: the rotation did not finish with the key it had begun with"
        );
    }
    for key in [
        "core-data.key",
        "core-metadata.key",
        "core-keeper.key",
        "export.key",
        "broker-journal.key",
        "ota.key",
    ] {
        assert!(before.contains_key(key), "{key}: {before:?}");
        assert_ne!(before.get(key), after.get(key), "{key} was not rotated");
    }

    // Everything is there under the new keys.
    node.launch().await;
    assert_eq!(node.get(&count).await.1["count"], 30);
    assert_eq!(status(&node).await["queue"]["items"], 50);
    node.stop();
}
