//! The container image, compose and Kubernetes (issue 20), run for real with podman:
//! the image `localhost/outpost:dev` that `deploy/build-image.sh` builds (scripts/test.sh
//! builds it before the suite), brought up as one container per service with
//! podman-compose and as Kubernetes Deployments with `podman kube play`. Each passes the
//! foundation's flow from outside its network: a profile and a device through the
//! gateway, an event a device publishes over MQTT with TLS, the reading fetched back
//! through the gateway.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const IMAGE: &str = "localhost/outpost:dev";

/// The reading the device sends (21.25), as EdgeX writes a Float64 value.
const READING: &str = "2.125e+01";

/// The repository, where deploy/ is.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// podman with the runtime that works on these machines (runc; see the README).
/// Podman with the tests' settings (tests/peers/containers.conf).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]).env(
        "CONTAINERS_CONF",
        repo().join("tests/peers/containers.conf"),
    );
    c
}

fn output(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails loudly when the image was not built: these tests are never skipped in silence.
fn needs_image() {
    needs_root("podman");
    let found = podman()
        .args(["image", "exists", IMAGE])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the image {IMAGE} is missing: build it with deploy/build-image.sh (scripts/test.sh does)"
    );
}

/// When the test fails, prints the end of the log of each container whose name holds
/// `names`: what a failure far from the cause (a reading that never arrives) needs.
struct LogsOnFailure {
    names: String,
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(listed) = podman()
            .args(["ps", "-a", "--format", "{{.Names}}"])
            .output()
        else {
            return;
        };
        for name in String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|n| n.contains(&self.names))
        {
            if let Ok(out) = podman().args(["logs", "--tail", "60", name]).output() {
                eprintln!(
                    "---- {name}, last lines ----\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: &str, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The host PID of a container's process.
fn container_pid(name: &str) -> String {
    output(
        podman().args(["inspect", "-f", "{{.State.Pid}}", name]),
        "podman inspect",
    )
}

/// Checks a running container as the issue asks: its process is user 65532 with
/// no_new_privs, no capabilities and a seccomp filter; its /tmp refuses to execute a file
/// (`noexec_tmp`: Kubernetes cannot mount an emptyDir noexec); its root filesystem refuses
/// a write.
fn check_hardened(name: &str, noexec_tmp: bool) {
    let pid = container_pid(name);
    let uids = status_field(&pid, "Uid");
    assert!(
        !uids.is_empty() && uids.split_whitespace().all(|u| u == "65532"),
        "{name}: Uid {uids}"
    );
    assert_eq!(status_field(&pid, "NoNewPrivs"), "1", "{name}");
    assert_eq!(status_field(&pid, "CapEff"), "0000000000000000", "{name}");
    assert_eq!(status_field(&pid, "CapBnd"), "0000000000000000", "{name}");
    assert_eq!(status_field(&pid, "Seccomp"), "2", "{name}");
    if noexec_tmp {
        check_noexec_tmp(name);
    }
    // Nothing can be written to the root filesystem: a data dir there cannot be made.
    let wrote = podman()
        .args(["exec", name, "/outpost", "--data-dir", "/written", "up"])
        .output()
        .expect("podman exec");
    let err = String::from_utf8_lossy(&wrote.stderr);
    assert!(
        !wrote.status.success() && err.contains("Read-only file system"),
        "{name}: the root filesystem took a write: {err}"
    );
}

/// An executable copied into the container's /tmp does not run there.
fn check_noexec_tmp(name: &str) {
    // A small one: /tmp is 16 MB.
    let bin = Path::new("/usr/bin/true");
    output(
        podman()
            .arg("cp")
            .arg(bin)
            .arg(format!("{name}:/tmp/copied")),
        "podman cp",
    );
    let ran = podman()
        .args(["exec", name, "/tmp/copied", "--version"])
        .output()
        .expect("podman exec");
    let err = String::from_utf8_lossy(&ran.stderr).to_lowercase();
    assert!(
        !ran.status.success() && err.contains("permission denied"),
        "{name}: /tmp executed a file: {err}"
    );
}

/// The CLI pointed at the gateway `gateway` (trusting `ca`), with `args`.
fn cli_command<S: AsRef<std::ffi::OsStr>>(
    home: &Path,
    gateway: &str,
    ca: &Path,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--gateway", gateway, "--ca"])
        .arg(ca)
        .arg("--data-dir")
        .arg(home.join("no-node-here"))
        .args(args)
        .env("XDG_CONFIG_HOME", home);
    cmd
}

/// The foundation's flow from outside: profile and device through the gateway at
/// `gateway` (trusting `ca`), an event published by the device over MQTT with TLS on
/// `mqtts`, its reading read back through the gateway.
async fn smoke(
    home: &Path,
    gateway: &str,
    ca: &Path,
    password: &str,
    mqtts: u16,
    device: &str,
    device_mqtt: &str,
) {
    let cli = |args: &[&str], stdin: Option<&str>| {
        let cmd = cli_command(home, gateway, ca, args);
        let (ok, out, err) = run_cli(cmd, stdin);
        assert!(ok, "outpost {}: {out}{err}", args.join(" "));
        out
    };
    // Each step once, when what it needs is ready. A bound, not a timing: nine containers
    // starting at once on a busy 2-core machine take a while.
    let ready = Duration::from_secs(120);
    let https = https_client(trusting(ca));
    eventually("the gateway to answer", ready, || async {
        https
            .get(format!("{gateway}/api/v3/ping"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    cli(
        &["login", "--user", "admin", "--password-stdin"],
        Some(password),
    );
    // The gateway routes core-metadata once it has its first view of the registry, and
    // device-mqtt registers itself with core-metadata once it runs.
    eventually("device-mqtt known to core-metadata", ready, || async {
        let cmd = cli_command(home, gateway, ca, ["device-service", "list", "--json"]);
        let (ok, out, _) = run_cli(cmd, None);
        ok && out.contains("\"device-mqtt\"")
    })
    .await;
    let profile = home.join("thermostat.yaml");
    std::fs::write(&profile, PROFILE_YAML).expect("profile");
    cli(&["profile", "apply", profile.to_str().expect("path")], None);
    cli(
        &[&["device", "add", "--name", device][..], &A_THERMOSTAT].concat(),
        None,
    );
    // The generated secret is the one line on standard output.
    let secret = cli(&["device", "secret", device], None).trim().to_string();
    assert!(secret.len() >= 16, "no secret: {secret}");
    // device-mqtt says when it takes device telemetry and when it knows the new device.
    eventually("device-mqtt to serve the device", ready, || async {
        let out = podman()
            .args(["logs", device_mqtt])
            .output()
            .expect("podman logs");
        let logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        logs.contains("taking device telemetry")
            && logs
                .lines()
                .any(|l| l.contains("device added") && l.contains(&format!("device={device}")))
    })
    .await;
    // The device publishes from outside the node's network, over TLS, with its secret, on
    // its own topic (EdgeX device-mqtt's), once: QoS 1, MQTT 5, so a refusal comes back in
    // the PUBACK, which -d shows. device-mqtt makes the event; core-data stores it.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &mqtts.to_string(), "--cafile"])
        .arg(ca)
        .args(["-u", device, "-P", &secret, "-q", "1", "-V", "mqttv5", "-d"])
        .args(["-t", &format!("incoming/data/{device}")])
        .args(["-m", r#"{"Temperature": 21.25}"#])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_pub must be installed (Debian package mosquitto-clients)");
    // mosquitto_pub exits 0 when the PUBACK refuses; -d shows the reason code.
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && shown.contains("received PUBACK") && !shown.contains("failed"),
        "the device's publish: {shown}"
    );
    eventually("the reading back through the gateway", ready, || async {
        let cmd = cli_command(home, gateway, ca, ["readings", device, "--json"]);
        let (read, readings, _) = run_cli(cmd, None);
        read && readings.contains(READING)
    })
    .await;
}

/// Where a podman volume's files are on this host.
fn volume_dir(volume: &str) -> PathBuf {
    PathBuf::from(output(
        podman().args(["volume", "inspect", "-f", "{{.Mountpoint}}", volume]),
        "podman volume inspect",
    ))
}

/// Waits for a file the node makes in its volume.
async fn file_in(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A compose project, brought down with its volume when dropped.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn command(&self) -> Command {
        let mut c = Command::new(repo().join("target/peers/podman-compose/bin/podman-compose"));
        c.args(["--podman-args=--runtime runc", "-p", &self.project, "-f"])
            .arg(repo().join("deploy/compose.yaml"))
            .env(
                "CONTAINERS_CONF",
                repo().join("tests/peers/containers.conf"),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.command().args(["down", "-v"]).output();
        let _ = podman()
            .args(["volume", "rm", "-f", &format!("{}_data", self.project)])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_runs_one_hardened_container_per_service_and_replaces_a_killed_one() {
    needs_image();
    let https = free_port();
    let mqtts = free_port();
    let compose = Compose {
        project: format!("outpost-e2e-{}", std::process::id()),
        env: vec![
            ("OUTPOST_PUBLISH_ADDR".into(), "127.0.0.1".into()),
            ("OUTPOST_HTTPS_PORT".into(), https.to_string()),
            ("OUTPOST_MQTTS_PORT".into(), mqtts.to_string()),
        ],
    };
    let started = Instant::now();
    let up = compose
        .command()
        .args(["up", "-d"])
        .output()
        .expect("podman-compose");
    assert!(
        up.status.success(),
        "podman-compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let _logs = LogsOnFailure {
        names: compose.project.clone(),
    };
    let data = volume_dir(&format!("{}_data", compose.project));
    let password = file_in(&data, "secrets/admin-password").await;
    let home = tempdir();
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, file_in(&data, "tls/ca.pem").await).expect("ca");
    let gateway = format!("https://127.0.0.1:{https}");
    smoke(
        home.path(),
        &gateway,
        &ca,
        &password,
        mqtts,
        "boxed-1",
        &format!("{}_device-mqtt_1", compose.project),
    )
    .await;
    eprintln!(
        "compose: up and through the flow in {} ms",
        started.elapsed().as_millis()
    );

    let container = |service: &str| format!("{}_{service}_1", compose.project);
    for service in [
        "core-keeper",
        "mqtt-broker",
        "core-metadata",
        "core-data",
        "core-command",
        "device-mqtt",
        "support-notifications",
        "support-scheduler",
        "gateway",
    ] {
        check_hardened(&container(service), true);
        // The image's health check passes.
        output(
            podman().args(["healthcheck", "run", &container(service)]),
            "podman healthcheck run",
        );
    }

    // core-data dies (killed from outside, as by the kernel): the others keep serving,
    // and it is started again and serves what it stored.
    let core_data = container("core-data");
    let before = container_pid(&core_data);
    let killed = Command::new("kill")
        .args(["-9", &before])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut cmd = Command::new(BIN);
    cmd.args(["--gateway", &gateway, "--ca"])
        .arg(&ca)
        .arg("--data-dir")
        .arg(home.path().join("no-node-here"))
        .args(["device", "show", "boxed-1"])
        .env("XDG_CONFIG_HOME", home.path());
    let (ok, out, err) = run_cli(cmd, None);
    assert!(
        ok,
        "metadata through the gateway while core-data is down: {out}{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = container_pid(&core_data);
        if now != "0" && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "core-data was not restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut cmd = Command::new(BIN);
        cmd.args(["--gateway", &gateway, "--ca"])
            .arg(&ca)
            .arg("--data-dir")
            .arg(home.path().join("no-node-here"))
            .args(["readings", "boxed-1", "--json"])
            .env("XDG_CONFIG_HOME", home.path());
        let (ok, out, _) = run_cli(cmd, None);
        if ok && out.contains(READING) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted core-data does not serve its readings: {out}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `kubectl kustomize` of a directory of deploy/kubernetes.
fn kustomize(dir: &str) -> String {
    output(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy/kubernetes").join(dir)),
        "kubectl kustomize",
    )
}

/// Every object of `rendered` against the Kubernetes API schemas, strictly (unknown
/// fields refused), offline.
fn validate(rendered: &str) {
    let dir = tempdir();
    let file = dir.path().join("outpost.yaml");
    std::fs::write(&file, rendered).expect("write");
    let validate = repo().join("target/peers/kubernetes-validate/bin/kubernetes-validate");
    let out = Command::new(&validate)
        .args(["--strict", "--quiet", "-k", "1.32.0"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/setup.sh --test installs it)",
                validate.display()
            )
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas_and_the_unit_its_exposure_bound() {
    // Every object against the Kubernetes API schemas, strictly (unknown fields refused),
    // offline.
    let rendered = kustomize("base");
    validate(&rendered);
    for kind in [
        "kind: Deployment",
        "kind: PodDisruptionBudget",
        "kind: NetworkPolicy",
        "kind: Service",
        "kind: PersistentVolumeClaim",
    ] {
        assert!(rendered.contains(kind), "no {kind} in the manifests");
    }
    // Every pod as the restricted pod security standard wants it: one Deployment per
    // service of the compose file.
    // The scaled variant: the same pods, hardened the same way; the services whose state
    // is in PostgreSQL run as several replicas, each with its storage there and the
    // operator's Secret mounted read-only; the node's volume is ReadWriteMany.
    let scaled = kustomize("scaled");
    validate(&scaled);
    for manifests in [&rendered, &scaled] {
        let pods = manifests.matches("kind: Deployment").count();
        assert_eq!(pods, 9, "{manifests}");
        for setting in [
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "type: RuntimeDefault",
        ] {
            assert_eq!(manifests.matches(setting).count(), pods, "{setting}");
        }
    }
    let deployments: Vec<&str> = scaled
        .split("\n---\n")
        .filter(|d| d.contains("kind: Deployment"))
        .collect();
    for (service, section, replicas) in [
        ("core-data", "CORE_DATA", 3),
        ("core-metadata", "CORE_METADATA", 2),
        ("support-scheduler", "SUPPORT_SCHEDULER", 2),
        ("support-notifications", "SUPPORT_NOTIFICATIONS", 2),
        ("gateway", "GATEWAY", 2),
    ] {
        let d = deployments
            .iter()
            .find(|d| d.contains(&format!("\n  name: {service}\n")))
            .unwrap_or_else(|| panic!("no Deployment {service}"));
        assert!(d.contains(&format!("replicas: {replicas}")), "{d}");
        assert!(d.contains("type: RollingUpdate"), "{d}");
        for key in ["BACKEND", "URL", "PASSWORD_FILE", "CA"] {
            assert!(
                d.contains(&format!("name: OUTPOST_{section}__STORAGE__{key}\n")),
                "{service} {key}: {d}"
            );
        }
        assert!(d.contains("secretName: outpost-postgres"), "{d}");
        assert!(d.contains("readOnly: true"), "{d}");
    }
    for service in ["core-keeper", "mqtt-broker", "device-mqtt"] {
        let d = deployments
            .iter()
            .find(|d| d.contains(&format!("\n  name: {service}\n")))
            .unwrap_or_else(|| panic!("no Deployment {service}"));
        assert!(d.contains("replicas: 1") && !d.contains("STORAGE__"), "{d}");
    }
    assert!(scaled.contains("- ReadWriteMany"), "{scaled}");
    assert!(scaled.contains("type: ExternalName"), "{scaled}");

    // The systemd unit: systemd's own rating, at most what docs/deploy.md states.
    let check = repo().join("deploy/systemd/check.sh");
    let out = Command::new(&check)
        .output()
        .expect("deploy/systemd/check.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pods played from a file, taken down with their volume and network when dropped.
struct Played {
    file: PathBuf,
    volume: String,
    network: String,
}

impl Drop for Played {
    fn drop(&mut self) {
        let _ = podman().arg("kube").arg("down").arg(&self.file).output();
        let _ = podman().args(["volume", "rm", "-f", &self.volume]).output();
        let _ = podman()
            .args(["network", "rm", "-f", &self.network])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_deployments_run_with_podman_kube_play() {
    needs_image();
    let https = free_port();
    let mqtts = free_port();
    let tag = std::process::id();
    // The podman overlay of the base, with this run's ports, volume and network.
    let rendered = kustomize("podman")
        .replace("hostPort: 8443", &format!("hostPort: {https}"))
        .replace("hostPort: 8883", &format!("hostPort: {mqtts}"))
        .replace(
            "claimName: outpost-data",
            &format!("claimName: outpost-data-{tag}"),
        )
        .replace("name: outpost-data", &format!("name: outpost-data-{tag}"));
    let dir = tempdir();
    let file = dir.path().join("outpost.yaml");
    std::fs::write(&file, &rendered).expect("write");
    let played = Played {
        file: file.clone(),
        volume: format!("outpost-data-{tag}"),
        network: format!("outpost-kube-{tag}"),
    };
    output(
        podman().args(["network", "create", &played.network]),
        "podman network create",
    );
    let out = podman()
        .args(["kube", "play", "--network", &played.network])
        .arg(&file)
        .output()
        .expect("podman kube play");
    assert!(
        out.status.success(),
        "podman kube play: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Dropped before `played` takes the containers down.
    let _logs = LogsOnFailure {
        names: "-pod-0-".into(),
    };
    let data = volume_dir(&played.volume);
    let password = file_in(&data, "secrets/admin-password").await;
    let home = tempdir();
    let ca = home.path().join("ca.pem");
    std::fs::write(&ca, file_in(&data, "tls/ca.pem").await).expect("ca");
    smoke(
        home.path(),
        &format!("https://127.0.0.1:{https}"),
        &ca,
        &password,
        mqtts,
        "podded-1",
        "device-mqtt-pod-0-device-mqtt",
    )
    .await;
    for deployment in ["core-keeper", "mqtt-broker", "core-data", "gateway"] {
        check_hardened(&format!("{deployment}-pod-0-{deployment}"), false);
    }
}
