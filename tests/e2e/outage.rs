//! A real network outage: the cloud node in its own network namespace, reached over a veth
//! link that is cut while the edge keeps ingesting, until a backlog waits or the queue is
//! full and dropping. Needs root (CI has it).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::export::{Cloud, Ingest, event, ingest_url, post_event, status};
use crate::support::{
    BIN, Node, Spawned, Tmpfs, cloud_export, eventually, free_port, message_has, needs_root,
    run_cli, run_ok, spawn_logged,
};

fn ip(args: &[&str]) {
    run_ok(
        Command::new("ip").args(args),
        &format!("ip (iproute2) {}", args.join(" ")),
    );
}

/// A namespace joined to this one by a veth pair; removed (with what runs in it) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 60_000;
        let (a, b) = (10 + id / 250, id % 250);
        let name = format!("op-cloud-{id}");
        let host_if = format!("opc{id}h");
        let ns_if = format!("opc{id}n");
        let host_ip = format!("10.{a}.{b}.1");
        let ns_ip = format!("10.{a}.{b}.2");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A cloud node in a namespace of its own, with an edge enrolled.
struct NsCloud {
    ns: Netns,
    port: u16,
    data: std::path::PathBuf,
    identity: std::path::PathBuf,
    _cloud: Spawned,
    _dir: tempfile::TempDir,
}

impl NsCloud {
    /// Starts the cloud node in a new namespace and enrolls `edge` once it listens.
    async fn start(edge: &str) -> Self {
        needs_root("network namespaces");
        outpost_kit::http::install_tls_provider();
        let ns = Netns::new();
        let dir = crate::support::tempdir();
        let data = dir.path().join("cloud");
        let port = free_port();
        let mut cmd = ns.exec();
        Self::args(&mut cmd, &data, port, &ns.ns_ip);
        let log = dir.path().join("cloud.log");
        let cloud = Spawned(spawn_logged(cmd.arg("cloud"), &log, "cloud"));
        let addr = format!("{}:{port}", ns.ns_ip);
        // Its CA first: the port alone may answer while `outpost cloud` checks that it is
        // free, before the node has made anything.
        let ca = data.join("tls/cloud-ca.pem");
        eventually(
            "the cloud node to listen",
            Duration::from_secs(20),
            || async { ca.exists() && std::net::TcpStream::connect(&addr).is_ok() },
        )
        .await;
        let identity = dir.path().join(format!("{edge}.identity.json"));
        let mut cmd = ns.exec();
        Self::args(&mut cmd, &data, port, &ns.ns_ip);
        cmd.args(["cloud", "enroll", edge, "--out"])
            .arg(&identity)
            .args(["--url", &format!("https://127.0.0.1:{port}")]);
        let (ok, out, err) = run_cli(cmd, None);
        assert!(ok, "enroll with the cloud node in {}: {out}{err}", ns.name);
        crate::support::give_to_node_user(&identity);
        Self {
            ns,
            port,
            data,
            identity,
            _cloud: cloud,
            _dir: dir,
        }
    }

    fn args(cmd: &mut Command, data: &std::path::Path, port: u16, ns_ip: &str) {
        cmd.arg(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["--set", &format!("cloud.port={port}")])
            .args(["--set", "node.bind=0.0.0.0"])
            .args(["--set", &format!("node.advertise_host={ns_ip}")]);
    }

    /// An edge node exporting to this cloud, its queue bounded to `max_bytes`, retrying
    /// quickly. Batches are small: a batch in flight when the link goes may have reached
    /// the cloud with its answer lost, and the tests tell such items from dropped ones
    /// only if a batch holds far fewer items than an outage drops.
    async fn edge(&self, max_bytes: u64) -> Node {
        let settings = format!(
            "max_bytes = {max_bytes}\nretry_initial_ms = 100\nretry_max_ms = 2000\ntimeout_ms = 3000\n\
             batch_max_items = 100"
        );
        Node::start(&cloud_export(&self.identity, &settings)).await
    }

    /// How often the cloud holds each value of `device`'s readings from `edge`.
    fn values(&self, edge: &str, device: &str) -> std::collections::HashMap<String, u32> {
        let mut cmd = self.ns.exec();
        Self::args(&mut cmd, &self.data, self.port, &self.ns.ns_ip);
        cmd.args([
            "cloud",
            "readings",
            edge,
            "--device",
            device,
            "--limit",
            "100000",
            "--json",
            "--url",
            &format!("https://127.0.0.1:{}", self.port),
        ]);
        let (ok, out, err) = run_cli(cmd, None);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        let mut seen = std::collections::HashMap::<String, u32>::new();
        for r in v["readings"].as_array().expect("readings") {
            *seen
                .entry(r["value"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        seen
    }
}

/// Cuts the link once data flows, until `enough` holds of the export status; then
/// restores it. The queue's bytes are checked against `max_bytes` at every look; the
/// status at the end of the outage, and the most bytes seen queued.
async fn outage_until(
    cloud: &NsCloud,
    node: &Node,
    max_bytes: u64,
    enough: impl Fn(&Value) -> bool,
) -> (Value, u64) {
    eventually(
        "data flowing to the cloud",
        Duration::from_secs(20),
        || async {
            status(node).await["sender"]["sentItems"]
                .as_u64()
                .unwrap_or(0)
                > 20
        },
    )
    .await;
    cloud.ns.link(false);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    let s = loop {
        let s = status(node).await;
        let bytes = s["queue"]["bytes"].as_u64().expect("bytes");
        assert!(
            bytes <= max_bytes,
            "queue {bytes} bytes > bound {max_bytes}"
        );
        peak = peak.max(bytes);
        if enough(&s) {
            break s;
        }
        assert!(Instant::now() < deadline, "the outage never got there: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        s["sender"]["consecutiveFailures"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    cloud.ns.link(true);
    (s, peak)
}

/// Once the link is back: waits until the backlog has drained (to fewer than 50 items,
/// which ingest keeps adding), stops `ingest` and waits for the last items. What ingest had
/// acknowledged, and how long the backlog took to drain.
async fn drain(node: &Node, ingest: &mut Ingest) -> (Vec<u64>, Duration) {
    let restored = Instant::now();
    eventually("the backlog to drain", Duration::from_secs(90), || async {
        status(node).await["queue"]["items"].as_u64().unwrap_or(1) < 50
    })
    .await;
    let drained_in = restored.elapsed();
    let acked = ingest.stop().await;
    eventually("the last items", Duration::from_secs(30), || async {
        status(node).await["queue"]["items"] == 0
    })
    .await;
    (acked, drained_in)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_outage_loses_nothing_and_the_backlog_drains_when_the_link_is_back() {
    let cloud = NsCloud::start("edge-ns").await;
    let max_bytes = 16 * 1024 * 1024u64;
    let node = cloud.edge(max_bytes).await;
    let mut ingest = Ingest::start(&node, "well", Duration::from_millis(2));
    // Down until 3000 items wait, far below the bound: nothing may be dropped.
    let (at_end, _) = outage_until(&cloud, &node, max_bytes, |s| {
        s["queue"]["items"].as_u64().unwrap_or(0) >= 3000
    })
    .await;
    assert_eq!(at_end["queue"]["droppedOverflow"], 0, "{at_end}");
    let (acked, drained_in) = drain(&node, &mut ingest).await;
    // Every acknowledged reading is in the cloud, once.
    let seen = cloud.values("edge-ns", "well");
    assert_eq!(missing(&acked, &seen), 0, "acknowledged readings missing");
    assert!(seen.values().all(|c| *c == 1), "a reading was stored twice");
    eprintln!(
        "outage: {} readings acknowledged, backlog drained in {:.1} s",
        acked.len(),
        drained_in.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_outage_longer_than_the_queue_holds_its_bound_and_drops_only_the_oldest() {
    let cloud = NsCloud::start("edge-nb").await;
    let max_bytes = 256 * 1024u64;
    let node = cloud.edge(max_bytes).await;
    let mut ingest = Ingest::start(&node, "bore", Duration::from_millis(2));
    // Down until the queue is full and has dropped for a while.
    let (at_end, peak) = outage_until(&cloud, &node, max_bytes, |s| {
        s["queue"]["droppedOverflow"].as_u64().unwrap_or(0) >= 500
    })
    .await;
    assert!(
        peak * 10 >= max_bytes * 9,
        "the queue never neared its bound: {peak} of {max_bytes} bytes"
    );
    let (acked, _) = drain(&node, &mut ingest).await;
    // What is missing in the cloud was counted as dropped, and is the oldest of the
    // outage: one run of the acknowledged readings.
    let s = status(&node).await;
    let dropped = s["queue"]["droppedOverflow"].as_u64().expect("dropped");
    assert!(dropped >= 500, "{at_end}");
    let seen = cloud.values("edge-nb", "bore");
    assert!(seen.values().all(|c| *c == 1), "a reading was stored twice");
    let gone: Vec<usize> = acked
        .iter()
        .enumerate()
        .filter(|(_, n)| !seen.contains_key(&n.to_string()))
        .map(|(i, _)| i)
        .collect();
    // (A dropped item may have reached the cloud before the link went, its answer lost:
    // so at most, not exactly, what was dropped is missing.)
    assert!(
        !gone.is_empty() && gone.len() as u64 <= dropped,
        "{} gone: {s}",
        gone.len()
    );
    // One run of the acknowledged readings, no longer than what was dropped: items of a
    // batch in flight when the link went may be in the cloud, inside that run.
    let span = gone.last().zip(gone.first()).map_or(0, |(l, f)| l - f + 1);
    assert!(
        span as u64 <= dropped,
        "the missing readings span {span} positions, more than the {dropped} dropped: {:?}..",
        &gone[..gone.len().min(20)]
    );
}

/// A cloud (stopped) with `edge` enrolled, and that edge node, its queue on a 256 KiB
/// filesystem (its own bound, 256 MiB, is far away), exporting to the cloud with overflow
/// policy `overflow`. Only root can mount it (see [`needs_root`]).
async fn node_on_a_small_disk(edge: &str, overflow: &str) -> (Cloud, Node, Tmpfs) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut cloud = Cloud::start().await;
    let identity = cloud.enroll(edge);
    cloud.stop();
    let settings = format!("overflow = \"{overflow}\"\nretry_initial_ms = 50\nretry_max_ms = 300");
    let mut node = Node::create(&cloud_export(&identity, &settings));
    let queue = node.data_dir().join("queue");
    std::fs::create_dir_all(&queue).expect("mkdir");
    std::fs::set_permissions(node.data_dir(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let mounted = Tmpfs::mount(&queue, "256k");
    node.launch().await;
    (cloud, node, mounted)
}

/// How many of `sent` (event values) are not among the values the cloud has, `got`.
fn missing<V>(sent: &[u64], got: &std::collections::HashMap<String, V>) -> usize {
    sent.iter()
        .filter(|n| !got.contains_key(&n.to_string()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_data_clearly_and_keeps_what_it_has() {
    needs_root("mounting a small filesystem");
    let (mut cloud, mut node, _mounted) = node_on_a_small_disk("edge-full", "refuse-new").await;

    let mut accepted = Vec::new();
    let mut refusal = None;
    for n in 0..5000u64 {
        let r = post_event(&node, "silo", &n.to_string()).await;
        match r.status().as_u16() {
            201 => accepted.push(n),
            507 => {
                refusal = Some(r.json::<Value>().await.expect("json"));
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refusal = refusal.expect("the disk never filled");
    assert!(message_has(&refusal, "disk is full"), "{refusal}");
    assert!(accepted.len() > 100, "{}", accepted.len());
    // Still refused, and still alive.
    let r = post_event(&node, "silo", "x").await;
    assert_eq!(r.status().as_u16(), 507);
    let s = status(&node).await;
    assert!(s["queue"]["diskFull"].as_u64().unwrap_or(0) >= 2, "{s}");

    // The cloud comes back: everything accepted arrives, the space is freed, new data is
    // taken again.
    cloud.launch().await;
    eventually("the queue to drain", Duration::from_secs(30), || async {
        status(&node).await["queue"]["items"] == 0
    })
    .await;
    let got = cloud.values("edge-full", "silo").await;
    assert_eq!(missing(&accepted, &got), 0, "accepted readings missing");
    assert_eq!(status(&node).await["queue"]["corruptRecords"], 0);
    let me = &node;
    eventually(
        "new data accepted again",
        Duration::from_secs(10),
        || async {
            me.http
                .post(ingest_url(me, "silo"))
                .json(&event("silo", "after"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 201)
        },
    )
    .await;
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_drop_oldest_keeps_taking_data_and_counts_what_it_dropped() {
    needs_root("mounting a small filesystem");
    let (mut cloud, mut node, _mounted) = node_on_a_small_disk("edge-full-2", "drop-oldest").await;
    let total = 3000u64;
    for n in 0..total {
        let r = post_event(&node, "silo", &n.to_string()).await;
        assert_eq!(r.status().as_u16(), 201, "event {n}");
    }
    let s = status(&node).await;
    let dropped = s["queue"]["droppedOverflow"].as_u64().expect("dropped");
    assert!(dropped > 0, "the disk never filled: {s}");
    assert!(
        node.log()
            .contains("disk full: dropped the oldest queued items")
    );
    cloud.launch().await;
    eventually("the queue to drain", Duration::from_secs(30), || async {
        status(&node).await["queue"]["items"] == 0
    })
    .await;
    let got = cloud.values("edge-full-2", "silo").await;
    assert_eq!(
        got.len() as u64 + dropped,
        total,
        "delivered + dropped = accepted"
    );
    assert!(
        got.contains_key(&(total - 1).to_string()),
        "the newest survived"
    );
    node.stop();
}
