//! Least privilege (issue 20): a node started as root runs every process as its service
//! user with no capabilities, no way to gain privileges, a system-call filter and, in each
//! service, a Landlock sandbox that lets it open its own files only, checked from inside
//! that sandbox; everything it writes under the data dir is that user's alone. A start it
//! cannot make safe is refused with what to do.

use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let signing = crate::support::tempdir();
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
    needs_root("a node started as root, which becomes its service user");
    let user_uid = status_field(node.supervisor_pid(), "Uid")
        .split_whitespace()
        .next()
        .expect("uid")
        .to_string();
    assert_ne!(user_uid, "0", "the supervisor stayed root");
    for (name, pid) in &pids {
        let at = format!("{name} (pid {pid})");
        // Real, effective, saved and filesystem IDs: all the service user's.
        let uids = status_field(*pid, "Uid");
        assert!(
            uids.split_whitespace().all(|u| u == user_uid),
            "{at}: Uid {uids}"
        );
        assert_eq!(status_field(*pid, "NoNewPrivs"), "1", "{at}");
        assert_eq!(status_field(*pid, "CapEff"), "0000000000000000", "{at}");
        assert_eq!(status_field(*pid, "CapPrm"), "0000000000000000", "{at}");
        assert_eq!(status_field(*pid, "CapBnd"), "0000000000000000", "{at}");
        assert_eq!(status_field(*pid, "Seccomp"), "2", "{at}");
    }
    assert!(
        node.log().contains(&format!(
            "Privileges: user outpost (uid {user_uid}), no capabilities; each service in a \
             Landlock sandbox with a system-call filter"
        )),
        "{}",
        node.log()
    );
    // Each service says so in its health.
    for url in [node.data(), node.url(node.ports.gateway_http)] {
        let (s, h) = node.get(&format!("{url}/api/v3/health")).await;
        assert_eq!(s, 200, "{h}");
        let detail = h["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "sandbox"))
            .and_then(|c| c["detail"].as_str())
            .unwrap_or_else(|| panic!("no sandbox check: {h}"))
            .to_string();
        assert!(
            detail.starts_with("Landlock (ABI")
                && detail.ends_with(&format!("enforced; uid {user_uid}")),
            "{url}: {detail}"
        );
    }

    // From inside each service's sandbox, as the service runs: its own files open, those
    // of the others do not.
    let d = node.data_dir();
    let seen = |service: &str, paths: &[&str]| -> Vec<(String, String, String)> {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&node.config)
            .arg("--data-dir")
            .arg(&d)
            .arg("sandbox-check")
            .arg(service)
            // As the node's supervisor starts its services.
            .env("OUTPOST_SUPERVISED", "1")
            .args(paths.iter().map(|p| d.join(p)));
        let out = run_ok(&mut cmd, "outpost sandbox-check");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("sandbox\tLandlock (ABI"),
            "{service}: {text}"
        );
        // The system-call filter: a user namespace refused, threads still made.
        assert!(
            text.lines()
                .any(|l| l == "syscalls\tunshare=refused\tthread=ok"),
            "{service}: {text}"
        );
        text.lines()
            .skip(1)
            .filter(|l| !l.starts_with("syscalls\t"))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 3, "{l}");
                (
                    f[0].strip_prefix(&format!("{}/", d.display()))
                        .unwrap_or(f[0])
                        .to_string(),
                    f[1].to_string(),
                    f[2].to_string(),
                )
            })
            .collect()
    };
    let others = [
        "db/core-metadata.db",
        "db/gateway.db",
        "db/mqtt-broker.db",
        "db/export.db",
        "db/ota.db",
        "secrets/core-metadata.key",
        "secrets/gateway.key",
        "secrets/gateway-jwt.key",
        "secrets/admin-password",
        "secrets/export.key",
        "secrets/ota.key",
        "secrets/broker-journal.key",
        "secrets/clients/admin.key",
        "secrets/node-ca.key",
        "secrets/services/gateway/gateway.key",
        "secrets/gateway/tls.key",
        "journal/meta",
    ];
    let mut asked: Vec<&str> = vec!["db/core-data.db", "secrets/core-data.key", "tls/ca.pem"];
    asked.extend(others);
    let core_data = seen("core-data", &asked);
    assert_eq!(core_data.len(), asked.len());
    for (path, read, write) in &core_data {
        let expected = match path.as_str() {
            "db/core-data.db" => ("read=ok", "write=ok"),
            "secrets/core-data.key" | "tls/ca.pem" => ("read=ok", "write=denied"),
            _ => ("read=denied", "write=denied"),
        };
        assert_eq!(
            (read.as_str(), write.as_str()),
            expected,
            "core-data opening {path}"
        );
    }
    // The gateway reads the administrator's password and its own keys, not core-data's.
    let gateway = seen(
        "gateway",
        &[
            "secrets/admin-password",
            "secrets/gateway-jwt.key",
            "secrets/node-ca.key",
            "db/core-data.db",
            "secrets/core-data.key",
            "secrets/services/core-data/core-data.key",
        ],
    );
    // The node CA's key too: the gateway issues its own server certificate.
    let reads: Vec<&str> = gateway.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(
        reads,
        [
            "read=ok",
            "read=ok",
            "read=ok",
            "read=denied",
            "read=denied",
            "read=denied"
        ],
        "{gateway:?}"
    );

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
            assert_eq!(
                meta.uid().to_string(),
                user_uid,
                "{} is not the service user's",
                e.path().display()
            );
            seen += 1;
        }
    }
    for must in ["queue/hook", "ota", "run", "journal", "db", "secrets"] {
        assert!(node.data_dir().join(must).exists(), "{must} was not made");
    }
    assert!(seen > 30, "only {seen} entries checked");
}

/// `outpost up` on `data` with the test settings (`extra` as `--set` values), as `cmd`
/// leaves it; its output once it exits.
fn up_refused(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempdir();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, config_text(&Ports::free(), "")).expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&config).arg("--data-dir").arg(data);
    for s in extra {
        cmd.args(["--set", s]);
    }
    let out = cmd
        .arg("up")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run outpost up");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("edge node up"),
        "a node started that should not have: {text}"
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_start_that_cannot_be_made_safe_is_refused_with_what_to_do() {
    needs_root("a node started as root, which becomes its service user");
    let dir = tempdir();

    // A data dir of another user.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
    let (code, text) = up_refused(&foreign, &[], &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("belongs to uid 65534") && text.contains("chown -R outpost:"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&foreign).expect("dir").uid(),
        65534,
        "the foreign data dir was taken"
    );

    // A data dir the service user could not reach (a private parent).
    let private = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let (code, text) = up_refused(&private.path().join("data"), &[], &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("cannot reach the data dir") && text.contains("mode 700"),
        "{text}"
    );

    // A service user that does not exist and cannot be made (a name longer than the
    // system allows), with the sandbox required.
    let absent = "outpost-absent-with-a-name-longer-than-useradd-takes";
    let user = format!("security.user={absent}");
    let (code, text) = up_refused(
        &dir.path().join("nouser"),
        &[&user, "security.require_sandbox=true"],
        &[],
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("{absent} does not exist and cannot be made")),
        "{text}"
    );

    // Secrets others may read: refused before anything starts.
    let opened = dir.path().join("opened");
    std::fs::create_dir_all(opened.join("secrets")).expect("mkdir");
    let key = opened.join("secrets/core-data.key");
    std::fs::write(&key, "00".repeat(32)).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, text) = up_refused(&opened, &[], &[]);
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("secret files may be read by others") && text.contains("chmod -R go="),
        "{text}"
    );
    assert!(!opened.join("run/outpost.pid").exists(), "{text}");

    // A kernel without Landlock, with the sandbox required.
    let mut cmd = Command::new(BIN);
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, config_text(&Ports::free(), "")).expect("config");
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("nolandlock"))
        .args(["--set", "security.require_sandbox=true", "up"])
        .stdin(Stdio::null());
    without_landlock(&mut cmd);
    let out = cmd.output().expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("this kernel cannot enforce it: Landlock needs Linux 5.13"),
        "{text}"
    );
}

/// Makes `cmd` run as on a kernel without Landlock: a seccomp filter installed between
/// fork and exec answers ENOSYS to the Landlock system calls, as such a kernel does.
fn without_landlock(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let rules = [
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
        if cfg!(target_arch = "aarch64") {
            seccompiler::TargetArch::aarch64
        } else {
            seccompiler::TargetArch::x86_64
        },
    )
    .expect("filter");
    let program: seccompiler::BpfProgram = filter.try_into().expect("compile the filter");
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is sound. `apply_filter` makes two system calls (prctl and
    // seccomp) with a `sock_fprog` built on the stack from `program`, compiled above; on
    // success it allocates nothing and takes no lock, and its error path is replaced by a
    // plain errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program)
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_landlock_the_node_runs_and_says_its_services_are_not_sandboxed() {
    needs_root("a node started as root, which becomes its service user");
    let node = Node::create("");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .arg("up")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    without_landlock(&mut cmd);
    let mut child = ChildGuard(cmd.spawn().expect("outpost up"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut banner = String::new();
    let privileges = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no start banner: {banner}"));
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Privileges:") {
            break line;
        }
    };
    assert!(banner.contains("edge node up"), "{banner}");
    assert_eq!(
        privileges.split_once("; ").map(|(_, fs)| fs),
        Some("NO Landlock sandbox (the kernel lacks it); system calls filtered"),
        "{privileges}"
    );
    assert!(
        privileges.starts_with("Warning: Privileges: user outpost (uid "),
        "{privileges}"
    );
    // And every service says it in its health.
    let http = node.admin_client();
    let health: serde_json::Value = http
        .get(format!("{}/api/v3/health", node.data()))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    let detail = health["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "sandbox"))
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default();
    assert!(
        detail.starts_with("NOT enforced: the kernel has no Landlock"),
        "{health}"
    );
}

/// Stops the node it holds when dropped (the test failed or ended), as Ctrl-C does.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.0.wait();
    }
}
