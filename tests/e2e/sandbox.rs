//! Least privilege, first steps (issue 20): every process of the node can never gain
//! privileges through exec (no_new_privs), and everything it writes under the data dir is
//! its user's alone, queues, artifacts and run files included.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

use crate::export::post_event;
use crate::support::*;

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_cannot_gain_privileges_and_keep_their_files_private() {
    let signing = tempfile::tempdir().expect("tempdir");
    let mut keygen = Command::new(BIN);
    keygen.args(["ota", "keygen", "--out"]).arg(signing.path());
    run_ok(&mut keygen, "outpost ota keygen");
    let public = std::fs::read_to_string(signing.path().join("ota-signing.pub")).expect("pub");
    let hook = format!(
        "url = \"http://127.0.0.1:{}/ingest\"\nretry_initial_ms = 50",
        free_port()
    );
    let mut node = Node::start(
        &(export_config(&[("hook", "webhook", hook)])
            + &format!(
                "[ota]\nenabled = true\ntrusted_keys = [\"{}\"]\n",
                public.trim()
            )),
    )
    .await;
    // Something in every store: a queued export item, readings, the journal.
    assert_eq!(post_event(&node, "valve", "1").await.status().as_u16(), 201);
    provision(&node, &["private-thermo"]);
    publish_readings(&node, "private-thermo", 5, "20.5");

    // Every process of the node: the supervisor and each service.
    let mut pids = vec![("supervisor".to_string(), node.supervisor_pid())];
    for e in std::fs::read_dir(node.data_dir().join("run"))
        .expect("run dir")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(service) = name.strip_suffix(".pid")
            && service != "outpost"
        {
            pids.push((service.to_string(), node.pid(service)));
        }
    }
    assert!(pids.len() >= 8, "{pids:?}");
    for (name, pid) in &pids {
        assert_eq!(status_field(*pid, "NoNewPrivs"), "1", "{name} (pid {pid})");
    }

    // Nothing under the data dir is open to group or others, all the way down.
    node.stop();
    let mut dirs: Vec<PathBuf> = vec![node.data_dir()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("dir").flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                dirs.push(e.path());
            }
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", e.path().display());
            seen += 1;
        }
    }
    for must in ["queue/hook", "ota", "run", "journal", "db", "secrets"] {
        assert!(node.data_dir().join(must).exists(), "{must} was not made");
    }
    assert!(seen > 30, "only {seen} entries checked");
}
