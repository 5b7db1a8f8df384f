//! Edge to cloud: the export service's queue and senders against a real cloud node
//! (`outpost cloud`, mutual TLS), through crashes, outages, overflow and refusals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    BIN, MosquittoSub, Node, Paused, Spawned, cloud_export, event_message, event_topic, eventually,
    export_config, free_port, https_client, mosquitto_pub_lines, now_nanos, rules_config,
    run_cli_code, signal, spawn_logged,
};

/// A cloud node in its own data dir.
pub struct Cloud {
    pub dir: tempfile::TempDir,
    pub port: u16,
    settings: Vec<String>,
    child: Option<Child>,
}

impl Cloud {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A cloud node with `settings` (`key=value`, as `--set` takes them).
    pub async fn start_with(settings: &[&str]) -> Self {
        outpost_kit::http::install_tls_provider();
        let mut cloud = Self {
            dir: crate::support::tempdir(),
            port: free_port(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        cloud.launch().await;
        cloud
    }

    /// Another instance of `other`'s cloud: its CA, keys and admin token (copied before it
    /// starts), its own port and data dir; `settings` name the store they share.
    pub async fn start_beside(other: &Cloud, settings: &[&str]) -> Self {
        let mut cloud = Self {
            dir: crate::support::tempdir(),
            port: free_port(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        std::fs::create_dir_all(cloud.data_dir()).expect("data dir");
        for d in ["tls", "secrets"] {
            let out = Command::new("cp")
                .arg("-a")
                .arg(other.data_dir().join(d))
                .arg(cloud.data_dir())
                .output()
                .expect("cp");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The data dir is the cloud's as the first one's is.
        let _ = Command::new("chown")
            .arg("--reference")
            .arg(other.data_dir())
            .arg(cloud.data_dir())
            .output();
        cloud.launch().await;
        cloud
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--set")
            .arg(format!("cloud.port={}", self.port));
        for s in &self.settings {
            cmd.arg("--set").arg(s);
        }
        cmd
    }

    pub async fn launch(&mut self) {
        let log = self.dir.path().join("cloud.log");
        let child = spawn_logged(self.command().arg("cloud"), &log, "outpost cloud");
        self.child = Some(child);
        let me = &*self;
        eventually(
            "the cloud node to answer",
            Duration::from_secs(20),
            || async { me.get("/ping").await.0 == 200 },
        )
        .await;
    }

    /// Stops the cloud node and starts it again with `setting` added.
    pub async fn restart_with(&mut self, setting: &str) {
        self.stop();
        self.settings.push(setting.to_string());
        self.launch().await;
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "cloud exited with {status}:\n{}",
                self.log()
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cloud.log")).unwrap_or_default()
    }

    /// Runs `outpost cloud ARGS` on the cloud's machine.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let (code, out, err) = self.cli_code(args);
        (code == Some(0), out, err)
    }

    /// [`Cloud::cli`] with the exit status.
    pub fn cli_code(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let mut cmd = self.command();
        cmd.arg("cloud").args(args).arg("--url").arg(self.url());
        run_cli_code(cmd, None)
    }

    /// A metric of the cloud node (its `/metrics`, with the admin token); fails when the
    /// cloud has no such series.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http(None)
            .get(format!("{}/metrics", self.url()))
            .bearer_auth(self.token())
            .send()
            .await
            .expect("the cloud's metrics")
            .text()
            .await
            .expect("metrics text");
        crate::support::metric_in(&text, name)
            .unwrap_or_else(|| panic!("the cloud has no metric {name}"))
    }

    /// Enrolls `edge`; returns its identity file.
    pub fn enroll(&self, edge: &str) -> PathBuf {
        self.enroll_to(edge, &self.dir.path().join(format!("{edge}.identity.json")))
    }

    /// Enrolls `edge` with its identity written to `out` (which must not exist); `out`.
    pub fn enroll_to(&self, edge: &str, out: &std::path::Path) -> PathBuf {
        let (ok, stdout, stderr) =
            self.cli(&["enroll", edge, "--out", out.to_str().expect("path")]);
        assert!(ok, "enroll failed: {stdout}{stderr}");
        crate::support::give_to_node_user(out);
        out.to_path_buf()
    }

    fn http(&self, identity: Option<&PathBuf>) -> reqwest::Client {
        let ca =
            std::fs::read_to_string(self.data_dir().join("tls/cloud-ca.pem")).unwrap_or_default();
        let id: Option<Value> = identity
            .map(|p| serde_json::from_slice(&std::fs::read(p).expect("identity")).expect("json"));
        let pair = id.as_ref().map(|v| {
            (
                v["cert"].as_str().expect("cert").to_string(),
                v["key"].as_str().expect("key").to_string(),
            )
        });
        let tls = match outpost_pki::client_config(
            &ca,
            pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        ) {
            Ok(t) => t,
            // No CA yet (still starting): a client that fails every request.
            Err(_) => return reqwest::Client::new(),
        };
        https_client(tls)
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("secrets/cloud-admin.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// GET with the admin token; status 0 when unreachable.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http(None)
            .get(format!("{}/api/v3{path}", self.url()))
            .bearer_auth(self.token())
            .send()
            .await;
        match r {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Every reading value of `device` from `edge`, with how often each arrived.
    pub async fn values(&self, edge: &str, device: &str) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let mut offset = 0;
        loop {
            let (status, v) = self
                .get(&format!(
                    "/reading/edge/{edge}?device={device}&limit=5000&offset={offset}"
                ))
                .await;
            assert_eq!(status, 200, "{v}");
            let page = v["readings"].as_array().cloned().unwrap_or_default();
            for r in &page {
                *out.entry(r["value"].as_str().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
            if page.len() < 5000 {
                return out;
            }
            offset += 5000;
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node's config that exports to the cloud quickly retrying, with `extra` keys for the
/// destination.
fn to_cloud(identity: &std::path::Path, extra: &str) -> String {
    cloud_export(
        identity,
        &format!("retry_initial_ms = 50\nretry_max_ms = 500\n{extra}"),
    )
}

pub(crate) fn event(device: &str, value: &str) -> Value {
    event_at(device, value, now_nanos())
}

fn event_at(device: &str, value: &str, now: i64) -> Value {
    json!({
        "apiVersion": "v3",
        "event": {
            "apiVersion": "v3", "id": uuid(), "deviceName": device, "profileName": "meter",
            "sourceName": "level", "origin": now,
            "readings": [{
                "id": uuid(), "origin": now, "deviceName": device, "resourceName": "level",
                "profileName": "meter", "valueType": "Int64", "value": value
            }]
        }
    })
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("uuid")
        .trim()
        .to_string()
}

/// POSTs an event of one reading to the export service's ingest API.
pub(crate) async fn post_event(node: &Node, device: &str, value: &str) -> reqwest::Response {
    node.http
        .post(ingest_url(node, device))
        .json(&event(device, value))
        .send()
        .await
        .expect("post")
}

pub(crate) fn ingest_url(node: &Node, device: &str) -> String {
    format!(
        "{}/api/v3/event/export-test/meter/{device}/level",
        node.url(node.ports.export)
    )
}

pub(crate) async fn status(node: &Node) -> Value {
    let (code, v) = node
        .get(&format!(
            "{}/api/v3/export/status",
            node.url(node.ports.export)
        ))
        .await;
    assert_eq!(code, 200, "{v}");
    v["destinations"][0].clone()
}

/// Posts events with values from `next` on until `stop`, `pause` apart (0: as fast as they
/// are answered); returns the values answered 201.
/// Events of one device posted one after the other (values 0, 1, 2, ...) until stopped.
pub(crate) struct Ingest {
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Ingest {
    /// Starts posting events of `device` to `node`, waiting `pause` after each.
    pub(crate) fn start(node: &Node, device: &str, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let url = ingest_url(node, device);
        let device = device.to_string();
        // The node's client: with mutual TLS, the administrator's certificate.
        let http = node.http.clone();
        let (stopped, counter) = (Arc::clone(&stop), Arc::clone(&next));
        let task = tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match http
                    .post(&url)
                    .json(&event(&device, &n.to_string()))
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 201 => acked.push(n),
                    // Down, restarting or unreachable: not acknowledged.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            acked
        });
        Self { stop, next, task }
    }

    /// How many events were posted (acknowledged or not) so far.
    pub(crate) fn sent(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Stops posting; the values of the events that were acknowledged.
    pub(crate) async fn stop(&mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.expect("ingest")
    }
}

/// Waits until `ingest` has had 50 more events acknowledged and the edge's queue holds
/// items (taken, not yet confirmed by the cloud); the items held.
async fn busy(node: &Node, ingest: &Ingest) -> u64 {
    let from = ingest.sent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let items = status(node).await["queue"]["items"].as_u64().unwrap_or(0);
        if ingest.sent() >= from + 50 && items > 0 {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backlog while ingesting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_reading_reaches_the_cloud_exactly_once_through_kill_9() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-1");
    let mut node = Node::start(&to_cloud(&identity, "")).await;

    let mut ingest = Ingest::start(&node, "tank", Duration::ZERO);
    // Each kill comes once the edge has taken more and holds some of it unconfirmed by
    // the cloud.
    let mut hit = Vec::new();
    // kill -9 the export service, three times; the supervisor restarts it.
    for _ in 0..3 {
        hit.push(busy(&node, &ingest).await);
        let pid = node.pid("export");
        signal(pid, "KILL");
        let me = &node;
        eventually("export to come back", Duration::from_secs(20), || async {
            me.pid("export") != pid
                && me
                    .get(&format!("{}/api/v3/ping", me.url(me.ports.export)))
                    .await
                    .0
                    == 200
        })
        .await;
    }
    // kill -9 the whole node, twice, and start it again.
    for _ in 0..2 {
        hit.push(busy(&node, &ingest).await);
        node.kill_all();
        node.launch().await;
    }
    hit.push(busy(&node, &ingest).await);
    eprintln!("items queued at each kill: {hit:?}");
    let acked = ingest.stop().await;
    assert!(
        acked.len() > 100,
        "only {} events acknowledged",
        acked.len()
    );

    let cloud = &cloud;
    let acked_ref = &acked;
    eventually(
        "every acknowledged reading in the cloud",
        Duration::from_secs(30),
        || async move {
            let got = cloud.values("edge-1", "tank").await;
            acked_ref.iter().all(|n| got.contains_key(&n.to_string()))
        },
    )
    .await;
    let got = cloud.values("edge-1", "tank").await;
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    // Anything beyond the acknowledged ones was sent by a client that saw no answer.
    assert!(got.len() as u64 <= ingest.sent());
    eventually("the queue to drain", Duration::from_secs(10), || async {
        status(&node).await["queue"]["items"] == 0
    })
    .await;
    // After the drain, every kill and recovery included.
    let s = status(&node).await;
    assert_eq!(s["queue"]["corruptRecords"], 0, "{s}");
    // The cloud accepted each stored reading once; whatever the edge sent again after a
    // kill was recognised as a duplicate, not stored.
    let (_, edges) = cloud.get("/edge/all").await;
    let edge = &edges["edges"][0];
    assert_eq!(edge["received"].as_u64(), Some(got.len() as u64), "{edges}");
    eprintln!(
        "the cloud recognised {} items sent again",
        edge["duplicates"]
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_ridden_out_and_the_backlog_drains_in_order_when_the_cloud_returns() {
    let mut cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-2");
    let node = Node::start(&to_cloud(&identity, "")).await;
    let http = node.http.clone();
    let post = |n: u64| {
        let (http, url) = (http.clone(), ingest_url(&node, "pump"));
        async move {
            let r = http
                .post(url)
                .json(&event("pump", &n.to_string()))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status().as_u16(), 201);
        }
    };
    post(0).await;
    eventually(
        "the first reading in the cloud",
        Duration::from_secs(10),
        || async { cloud.values("edge-2", "pump").await.contains_key("0") },
    )
    .await;

    cloud.stop();
    for n in 1..=300 {
        post(n).await;
    }
    eventually(
        "the sender to notice the outage",
        Duration::from_secs(10),
        || async {
            let s = status(&node).await;
            s["sender"]["consecutiveFailures"].as_u64().unwrap_or(0) > 0
                && s["queue"]["items"].as_u64() == Some(300)
        },
    )
    .await;
    // For people: items, size against the bound in units, the oldest item's age.
    let out = node.cli_ok(&["export", "status"]);
    let row = out
        .lines()
        .find(|l| l.contains("failing"))
        .unwrap_or_else(|| panic!("no failing destination:\n{out}"));
    assert!(
        row.contains(" 300 ") && row.contains(" / ") && row.contains("iB"),
        "{out}"
    );
    // For scripts: the service's answer as it came.
    let out = node.cli_ok(&["export", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("export status --json is JSON");
    assert_eq!(v["destinations"][0]["queue"]["items"], 300, "{v}");
    // Watched, the table comes again when the backlog has drained.
    let mut watch = node.cli_command(&["export", "status", "--watch"]);
    let mut watch = Spawned(
        watch
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("export status --watch"),
    );
    let lines = crate::support::line_channel(watch.stdout.take().expect("stdout"));
    let seen = |what: &str, pred: &dyn Fn(&str) -> bool| loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if pred(&l) => return,
            Ok(_) => {}
            Err(_) => panic!("export status --watch never showed {what}"),
        }
    };
    seen("the outage", &|l| {
        l.contains("failing") && l.contains(" 300 ")
    });

    cloud.launch().await;
    eventually("the backlog to drain", Duration::from_secs(20), || async {
        status(&node).await["queue"]["items"] == 0
    })
    .await;
    seen("the drained queue", &|l| {
        let cells: Vec<&str> = l.split_whitespace().collect();
        cells.get(2) == Some(&"0") && l.ends_with(" ok")
    });
    drop(watch);
    let got = cloud.values("edge-2", "pump").await;
    assert_eq!(got.len(), 301);
    assert!(got.values().all(|c| *c == 1));
    // In order: the cloud keeps an item of a stream only above the highest sequence number
    // it has taken from it, so a backlog sent out of order would have lost items to it as
    // duplicates; there were none, and every reading is there.
    let (_, edges) = cloud.get("/edge/all").await;
    let e = &edges["edges"][0];
    assert_eq!(e["name"], "edge-2");
    assert!(e["lastSeenMs"].as_i64().unwrap_or(0) > 0);
    assert_eq!(e["received"], 301, "{edges}");
    assert_eq!(e["duplicates"], 0, "{edges}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_counts_every_drop() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-3");
    // The cloud is stopped from the start: everything stays queued.
    let mut cloud = cloud;
    cloud.stop();
    let node = Node::start(&to_cloud(&identity, "max_bytes = 65536\nzstd_level = 1")).await;
    let total = 1200u64;
    for n in 0..total {
        let r = post_event(&node, "meter", &n.to_string()).await;
        assert_eq!(r.status().as_u16(), 201);
    }
    let s = status(&node).await;
    let q = &s["queue"];
    let dropped = q["droppedOverflow"].as_u64().expect("dropped");
    assert!(dropped > 0, "{s}");
    assert!(q["bytes"].as_u64().expect("bytes") <= 65536, "{s}");
    assert_eq!(q["items"].as_u64().expect("items") + dropped, total, "{s}");
    let export = node.url(node.ports.export);
    eventually("the drop metric", Duration::from_secs(5), || async {
        node.metric(&export, "outpost_export_items_dropped_total")
            .await as u64
            == dropped
    })
    .await;
    assert!(node.log().contains("dropped the oldest items"));

    cloud.launch().await;
    eventually("the rest to drain", Duration::from_secs(20), || async {
        status(&node).await["queue"]["items"] == 0
    })
    .await;
    let got = cloud.values("edge-3", "meter").await;
    assert_eq!(got.len() as u64 + dropped, total);
    // What was dropped is the oldest: the newest reading made it.
    assert!(got.contains_key(&(total - 1).to_string()));
    assert!(!got.contains_key("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_go_to_dead_letters_and_bad_input_gets_clear_errors() {
    // A receiver that refuses every batch for good (400).
    let port = free_port();
    let script = format!(
        r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        body = b'{{"message":"schema mismatch"}}'
        self.send_response(400)
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()
"#
    );
    let receiver = Spawned(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .spawn()
            .expect("python3"),
    );
    let hook =
        format!("url = \"http://127.0.0.1:{port}/ingest\"\nzstd_level = 0\nretry_initial_ms = 50");
    let node = Node::start(&export_config(&[("hook", "webhook", hook)])).await;
    let export = node.url(node.ports.export);
    for n in 0..5 {
        let r = post_event(&node, "valve", &n.to_string()).await;
        assert_eq!(r.status().as_u16(), 201);
    }
    eventually("dead letters", Duration::from_secs(15), || async {
        node.get(&format!("{export}/api/v3/export/deadletter/hook"))
            .await
            .1["totalCount"]
            == 5
    })
    .await;
    let (_, v) = node
        .get(&format!("{export}/api/v3/export/deadletter/hook"))
        .await;
    let letter = &v["deadLetters"][0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{v}"
    );
    assert_eq!(letter["data"]["event"]["deviceName"], "valve");
    let s = status(&node).await;
    assert_eq!(s["queue"]["items"], 0);
    assert_eq!(s["sender"]["deadLettered"], 5);

    // Bad input on the ingest API: nothing is queued.
    let bad = [
        ("not json", "{", 400),
        ("wrong path", &event("other", "1").to_string(), 400),
        ("no readings", &json!({"apiVersion":"v3","event":{"apiVersion":"v3","id":"x","deviceName":"valve","profileName":"meter","sourceName":"level","origin":1,"readings":[]}}).to_string(), 400),
    ];
    for (what, body, code) in bad {
        let r = node
            .http
            .post(ingest_url(&node, "valve"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), code, "{what}");
    }
    let (code, _) = node
        .get(&format!("{export}/api/v3/export/deadletter/nope"))
        .await;
    assert_eq!(code, 404);
    assert_eq!(status(&node).await["queue"]["appended"], 5);

    // Requeued after the receiver is fixed (here: it still refuses, so they come back).
    let (code, v) = node
        .post(
            &format!("{export}/api/v3/export/deadletter/hook/requeue"),
            &json!({}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["requeued"], 5);
    eventually(
        "requeued letters refused again",
        Duration::from_secs(15),
        || async {
            node.get(&format!("{export}/api/v3/export/deadletter/hook"))
                .await
                .1["totalCount"]
                == 5
        },
    )
    .await;
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_keeps_only_what_its_retention_allows() {
    // First by age alone: data older than 2 s (by origin, and 2 s after it arrived) goes,
    // removed 2 events per step.
    let mut cloud = Cloud::start_with(&[
        "cloud.retention.max_age_s=2",
        "cloud.retention.interval_s=1",
        "cloud.retention.chunk_events=2",
    ])
    .await;
    let identity = cloud.enroll("edge-r");
    let node = Node::start(&to_cloud(&identity, "")).await;
    let two_hours_ago = now_nanos() - 2 * 3600 * 1_000_000_000;
    let r = node
        .http
        .post(ingest_url(&node, "m-r"))
        .json(&event_at("m-r", "old", two_hours_ago))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 201);
    // The others are dated an hour ahead, so age never takes them here.
    let ahead = now_nanos() + 3600 * 1_000_000_000;
    for v in 0..8i64 {
        let r = node
            .http
            .post(ingest_url(&node, "m-r"))
            .json(&event_at("m-r", &v.to_string(), ahead + v * 1_000_000))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 201);
    }
    // Everything arrived (the cloud counts what it accepted), and only the old one went.
    let fresh: HashMap<String, u32> = (0..8).map(|v| (v.to_string(), 1)).collect();
    eventually(
        "all 9 events accepted and the old one removed",
        Duration::from_secs(30),
        || async {
            let (_, e) = cloud.get("/edge/name/edge-r").await;
            e["edge"]["received"] == 9 && cloud.values("edge-r", "m-r").await == fresh
        },
    )
    .await;
    // Then with a bound of 5 readings: the five newest stay.
    cloud.restart_with("cloud.retention.max_readings=5").await;
    let newest: HashMap<String, u32> = (3..8).map(|v| (v.to_string(), 1)).collect();
    eventually(
        "only the 5 newest readings kept",
        Duration::from_secs(30),
        || async { cloud.values("edge-r", "m-r").await == newest },
    )
    .await;
    let (status, v) = cloud.get("/event/count/edge/edge-r").await;
    assert_eq!((status, v["Count"].as_u64()), (200, Some(5)), "{v}");
    // Two passes later, the bound still holds and nothing more went.
    let passes = cloud.metric("outpost_cloud_retention_passes_total").await;
    eventually(
        "two more retention passes",
        Duration::from_secs(10),
        || async { cloud.metric("outpost_cloud_retention_passes_total").await >= passes + 2.0 },
    )
    .await;
    assert_eq!(cloud.values("edge-r", "m-r").await, newest);
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_says_where_to_go_and_refuses_to_start_twice_or_on_a_busy_port() {
    let mut cloud = Cloud::start().await;
    // The banner: its URL, the admin token, the CA, how to enroll an edge.
    let banner = cloud.log();
    assert!(
        banner.contains("Outpost cloud node at https://")
            && banner.contains(&format!(":{}", cloud.port))
            && banner.contains(
                &cloud
                    .data_dir()
                    .join("secrets/cloud-admin.token")
                    .display()
                    .to_string()
            )
            && banner.contains("/api/v3/ca.pem")
            && banner.contains("outpost cloud enroll NAME"),
        "{banner}"
    );
    let second = |cmd: &mut Command| {
        let out = cmd.arg("cloud").stdin(Stdio::null()).output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A second cloud node on the same data dir (another port): one line, no banner.
    let mut same_dir = cloud.command();
    same_dir
        .arg("--set")
        .arg(format!("cloud.port={}", free_port()));
    let (code, err) = second(&mut same_dir);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a cloud node already runs on") && !err.contains("Outpost cloud node at"),
        "{err}"
    );
    // Another data dir on the same port: the port is named, no banner.
    let other = crate::support::tempdir();
    let mut same_port = Command::new(BIN);
    same_port
        .arg("--data-dir")
        .arg(other.path().join("data"))
        .arg("--set")
        .arg(format!("cloud.port={}", cloud.port));
    let (code, err) = second(&mut same_port);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 0.0.0.0:{}", cloud.port))
            || err.contains(&format!(":{} (", cloud.port)),
        "{err}"
    );
    assert!(!err.contains("Outpost cloud node at"), "{err}");
    // A data dir anyone may write to: refused before anything starts.
    let open = other.path().join("open");
    std::fs::create_dir_all(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let mut open_dir = Command::new(BIN);
    open_dir
        .arg("--data-dir")
        .arg(&open)
        .arg("--set")
        .arg(format!("cloud.port={}", free_port()));
    let (code, err) = second(&mut open_dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("anyone may write to it") && !err.contains("Outpost cloud node at"),
        "{err}"
    );
    cloud.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_takes_only_enrolled_edges_and_admins() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-4");
    let url = format!("{}/api/v3/ingest", cloud.url());
    let batch = json!({"incarnation": 7, "priority": "normal", "items": [
        {"seq": 1, "enqueuedMs": 1, "data": {"kind": "event", "event": event("d", "1")["event"]}},
        {"seq": 2, "enqueuedMs": 1, "data": {"kind": "nonsense"}}
    ]});
    // Without a client certificate: 401; admin routes without the token: 401, wrong: 403.
    let anon = cloud.http(None);
    let r = anon.post(&url).json(&batch).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let r = anon
        .get(format!("{}/api/v3/edge/all", cloud.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let r = anon
        .get(format!("{}/api/v3/edge/all", cloud.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 403);

    // With the edge's certificate: stored once, the bad item rejected with a reason.
    let edge = cloud.http(Some(&identity));
    let r = edge.post(&url).json(&batch).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["rejected"][0]["seq"], 2, "{v}");
    let r = edge.post(&url).json(&batch).send().await.expect("again");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["accepted"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(2)),
        "{v}"
    );
    // Garbage bodies: 400 and 415, nothing stored.
    for (body, enc, code) in [
        (b"not zstd".to_vec(), "zstd", 400),
        (b"{}".to_vec(), "gzip", 415),
        (b"{\"incarnation\":1}".to_vec(), "identity", 400),
    ] {
        let r = edge
            .post(&url)
            .header("content-encoding", enc)
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), code);
    }
    let (_, v) = cloud.get("/event/count/edge/edge-4").await;
    assert_eq!(v["Count"], 1);
    // The CLI lists what the edge sent, the edge named as the other commands name things
    // (`--edge NAME`, the older form, is taken too).
    let (code, out, err) = cloud.cli_code(&["readings", "edge-4", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let page: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(page["readings"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["readings"][0]["deviceName"], "d", "{page}");
    let (code, out, err) = cloud.cli_code(&["readings", "--edge", "edge-4"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("(1 of 1)"), "{out}");
    // An edge never enrolled is no empty list: the not-found status and the nearest name.
    let (code, out, err) = cloud.cli_code(&["readings", "edge-44"]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(
        err.contains("no edge edge-44 (did you mean 'edge-4'?)"),
        "{err}"
    );

    // Revoked: the certificate stops working at once.
    let (ok, _, err) = cloud.cli(&["revoke", "edge-4"]);
    assert!(ok, "{err}");
    let r = edge.post(&url).json(&batch).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let (ok, out, _) = cloud.cli(&["edges"]);
    assert!(
        ok && out.contains("edge-4") && out.contains("revoked"),
        "{out}"
    );
    // The same for scripts: the service's answer, the revocation's time on the edge.
    let (ok, out, err) = cloud.cli(&["edges", "--json"]);
    assert!(ok, "{err}");
    let edges: Value = serde_json::from_str(&out).expect("cloud edges --json is JSON");
    let e4 = edges["edges"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == "edge-4"))
        .unwrap_or_else(|| panic!("no edge-4: {edges}"));
    assert!(e4["revokedMs"].as_i64().is_some_and(|t| t > 0), "{e4}");

    // A certificate from another CA does not even complete the handshake.
    let other = Cloud::start().await;
    let foreign = other.enroll("edge-4");
    let v: Value = serde_json::from_slice(&std::fs::read(&foreign).expect("read")).expect("json");
    let ca = std::fs::read_to_string(cloud.data_dir().join("tls/cloud-ca.pem")).expect("ca");
    let tls = outpost_pki::client_config(
        &ca,
        Some((
            v["cert"].as_str().expect("cert"),
            v["key"].as_str().expect("key"),
        )),
    )
    .expect("tls");
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .expect("client");
    let r = client.post(&url).json(&batch).send().await;
    assert!(r.is_err(), "a foreign certificate was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_edge_identity_is_used_without_a_restart_and_nothing_queued_is_lost() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-r");
    let node = Node::start(&to_cloud(&identity, "")).await;
    let export_pid = node.pid("export");
    let posted = |n: u64| {
        let node = &node;
        async move {
            let r = post_event(node, "rot", &n.to_string()).await;
            assert_eq!(r.status().as_u16(), 201);
        }
    };
    posted(1).await;
    eventually(
        "the first reading in the cloud",
        Duration::from_secs(15),
        || async { cloud.values("edge-r", "rot").await.contains_key("1") },
    )
    .await;
    // The cloud's operator rotates the edge's identity: the old certificate is revoked
    // at once, and what the edge takes meanwhile waits in its queue.
    let old = std::fs::read(&identity).expect("old bundle");
    let (ok, _, err) = cloud.cli(&["revoke", "edge-r"]);
    assert!(ok, "{err}");
    posted(2).await;
    posted(3).await;
    eventually(
        "the old identity refused",
        Duration::from_secs(15),
        || async {
            let s = status(&node).await;
            s["sender"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("403"))
                && s["queue"]["items"] == 2
        },
    )
    .await;
    // The new bundle, renamed over the old one, is used without a restart.
    let renewed = cloud.enroll_to("edge-r", &identity.with_extension("new"));
    std::fs::rename(&renewed, &identity).expect("rename over");
    assert_ne!(std::fs::read(&identity).expect("new bundle"), old);
    posted(4).await;
    eventually(
        "the queued readings sent with the new identity",
        Duration::from_secs(20),
        || async {
            let got = cloud.values("edge-r", "rot").await;
            ["1", "2", "3", "4"].iter().all(|v| got.get(*v) == Some(&1))
        },
    )
    .await;
    assert_eq!(node.pid("export"), export_pid, "export was restarted");
    assert!(
        node.log().contains("identity bundle changed"),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_shrink_one_hertz_readings_to_minute_aggregates_and_alerts_that_reach_the_cloud() {
    let cloud = Cloud::start().await;
    let identity = cloud.enroll("edge-5");
    let pipeline = rules_config(
        r#"name = "tank-1m"
devices = ["tank-*"]
resources = ["Temperature"]
steps = [{ type = "tumbling", size_ms = 60000, functions = ["min", "max", "mean", "count"] }]
alerts = [{ above = 80.0, severity = "critical", message = "too hot" }]"#,
    );
    // Only what the rules make goes to the cloud.
    let export = to_cloud(
        &identity,
        r#"sources = ["edgex/events/rules/#", "edgex/alerts/#"]"#,
    );
    let node = Node::start(&format!("{pipeline}{export}")).await;
    let rules = node.url(node.ports.rules);
    // Three minutes of 1 Hz readings, an hour ago, with one excursion above 80.
    let minute = 60_000_000_000i64;
    let start = (now_nanos() - 60 * minute) / minute * minute;
    let lines: Vec<String> = (0..180i64)
        .map(|i| {
            let v = match i {
                100 => 90.0,
                101 => 95.0,
                _ => 20.0 + (i % 60) as f64 / 10.0,
            };
            event_message(
                "tank-1",
                start + i * 1_000_000_000,
                &[("Temperature", "Float64", &v.to_string())],
            )
            .1
        })
        .collect();
    let out = mosquitto_pub_lines(node.ports.mqtt, &event_topic("tank-1"), &lines, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    eventually(
        "the aggregates in the cloud",
        Duration::from_secs(20),
        || async { cloud.values("edge-5", "tank-1").await.values().sum::<u32>() == 12 },
    )
    .await;
    let (_, v) = cloud
        .get("/reading/edge/edge-5?device=tank-1&resource=Temperature_max&limit=10")
        .await;
    let maxes: Vec<&str> = v["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| r["value"].as_str().unwrap_or_default())
        .collect();
    // Newest first: the third minute, the second (with 95), the first.
    assert_eq!(maxes, vec!["25.9", "95.0", "25.9"], "{v}");
    let (_, v) = cloud
        .get("/reading/edge/edge-5?device=tank-1&resource=Temperature_count&limit=10")
        .await;
    assert!(
        v["readings"]
            .as_array()
            .expect("readings")
            .iter()
            .all(|r| r["value"] == "60.0"),
        "{v}"
    );
    eventually(
        "the alert in the cloud",
        Duration::from_secs(10),
        || async {
            cloud.get("/alert/edge/edge-5").await.1["alerts"]
                .as_array()
                .map(Vec::len)
                == Some(1)
        },
    )
    .await;
    let (_, v) = cloud.get("/alert/edge/edge-5").await;
    let alert = &v["alerts"][0];
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["value"], "90.0");
    assert_eq!(alert["pipeline"], "tank-1m");

    let (_, v) = node
        .get(&format!("{rules}/api/v3/pipeline/name/tank-1m"))
        .await;
    assert_eq!(v["readingsIn"], 180, "{v}");
    assert_eq!(v["readingsOut"], 12, "{v}");
    assert_eq!(v["alerts"], 1, "{v}");
    assert_eq!(v["reduction"], 15.0, "{v}");

    // Pipelines over the API: added, refused when broken or taken, removed.
    let spec = json!({"name": "dedup", "steps": [{"type": "deadband", "delta": 0.5}]});
    let (code, v) = node.post(&format!("{rules}/api/v3/pipeline"), &spec).await;
    assert_eq!(code, 201, "{v}");
    let (code, _) = node.post(&format!("{rules}/api/v3/pipeline"), &spec).await;
    assert_eq!(code, 409);
    for bad in [
        json!({"name": "x", "steps": []}),
        json!({"name": "x", "steps": [{"type": "downsample", "every_ms": 0}]}),
        json!({"name": "x", "steps": [{"type": "tumbling", "size_ms": 1000}, {"type": "deadband", "delta": 1}]}),
        json!({"name": "bad name", "steps": [{"type": "deadband", "delta": 1}]}),
        json!({"name": "x", "steps": [{"type": "nonsense"}]}),
    ] {
        let (code, v) = node.post(&format!("{rules}/api/v3/pipeline"), &bad).await;
        assert_eq!(code, 400, "{bad}: {v}");
    }
    let del = |name: &str| {
        let url = format!("{rules}/api/v3/pipeline/name/{name}");
        let http = node.http.clone();
        async move {
            http.delete(url)
                .send()
                .await
                .expect("delete")
                .status()
                .as_u16()
        }
    };
    assert_eq!(del("tank-1m").await, 409);
    assert_eq!(del("dedup").await, 200);
    assert_eq!(del("dedup").await, 404);
    let (_, v) = node.get(&format!("{rules}/api/v3/pipeline/all")).await;
    assert_eq!(v["totalCount"], 1);

    // Readings published while rules is down are not lost: its session is durable. The
    // publisher is connected before the kill.
    let bus_cfg = outpost_kit::config::BusConfig {
        url: format!("mqtt://127.0.0.1:{}", node.ports.mqtt),
        ..Default::default()
    };
    let publisher = outpost_bus::Bus::connect(
        &bus_cfg,
        &node.data_dir(),
        "e2e",
        outpost_bus::Options::plain("e2e-rules-publisher"),
        &outpost_kit::Shutdown::new(),
    )
    .await
    .expect("bus");
    let pid = node.pid("rules");
    // The supervisor is held while rules is down, so every reading is published before
    // rules can be restarted, however fast or slow the machine.
    let held = crate::support::Paused::new(node.supervisor_pid());
    crate::support::signal(pid, "KILL");
    // All at once, so the broker journals them in a few group commits.
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..120i64 {
        let (_, msg) = event_message(
            "tank-2",
            start + i * 1_000_000_000,
            &[("Temperature", "Float64", "30.5")],
        );
        let publisher = publisher.clone();
        sent.spawn(async move {
            publisher
                .publish_raw(&event_topic("tank-2"), msg.into_bytes())
                .await
        });
    }
    while let Some(r) = sent.join_next().await {
        r.expect("publisher task").expect("publish");
    }
    drop(held);
    eventually(
        "the aggregates of tank-2 in the cloud",
        Duration::from_secs(30),
        || async { cloud.values("edge-5", "tank-2").await.values().sum::<u32>() == 8 },
    )
    .await;
    assert_ne!(node.pid("rules"), pid, "rules was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_closes_while_the_broker_is_down_is_published_when_it_is_back() {
    let node = Node::start(&rules_config(
        r#"name = "t-1s"
devices = ["tank-9"]
steps = [{ type = "tumbling", size_ms = 1000, functions = ["count"] }]"#,
    ))
    .await;
    let rules = format!("{}/api/v3/pipeline/name/t-1s", node.url(node.ports.rules));
    // Readings 1.5 s ahead: their window ends 1.5 to 2.5 s from now, after the broker has
    // gone below, and closes by the clock within the following second.
    let ahead = now_nanos() + 1_500_000_000;
    let lines: Vec<String> = (0..3)
        .map(|i| event_message("tank-9", ahead + i, &[("Temperature", "Float64", "20.5")]).1)
        .collect();
    assert!(
        mosquitto_pub_lines(node.ports.mqtt, &event_topic("tank-9"), &lines, &[])
            .status
            .success()
    );
    eventually(
        "the readings in the open window",
        Duration::from_secs(20),
        || async { node.get(&rules).await.1["readingsIn"] == 3 },
    )
    .await;
    assert!(
        now_nanos() < ahead,
        "the window may have closed already; the test proves nothing"
    );
    // The broker goes and stays away (its supervisor held) for longer than the window and
    // rules' once-a-second flush: the window closes while there is no bus.
    let supervisor = node.supervisor_pid();
    let paused_supervisor = Paused::new(supervisor);
    signal(node.pid("mqtt-broker"), "KILL");
    eventually(
        "the window closed, its output waiting for the bus",
        Duration::from_secs(20),
        || async { node.get(&rules).await.1["outputsWaiting"] == 1 },
    )
    .await;
    let (_, v) = node.get(&rules).await;
    assert_eq!(v["readingsOut"], 0, "published without a broker? {v}");
    drop(paused_supervisor);
    eventually(
        "the window's output published once the broker is back",
        Duration::from_secs(20),
        || async {
            let v = node.get(&rules).await.1;
            v["readingsOut"] == 1 && v["outputsWaiting"] == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_reach_an_external_mqtt_broker_over_tls_and_an_untrusted_one_gets_nothing() {
    use std::os::unix::fs::PermissionsExt as _;
    // A real mosquitto with a TLS listener, its certificate from a CA of the test's own,
    // asking every client for a certificate of that CA.
    let pki_dir = crate::support::tempdir();
    let paths = outpost_pki::Paths::cloud(pki_dir.path());
    outpost_pki::ensure_server_cert(&paths, &["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let broker_dir = crate::support::tempdir();
    std::fs::set_permissions(broker_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let (ca, cert, key) = (
        broker_dir.path().join("ca.pem"),
        broker_dir.path().join("server.pem"),
        broker_dir.path().join("server.key"),
    );
    for (from, to) in [
        (&paths.ca_cert, &ca),
        (&paths.cert, &cert),
        (&paths.key, &key),
    ] {
        std::fs::copy(from, to).expect("copy");
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let port = free_port();
    let conf = broker_dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\npersistence false\n",
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("conf");
    let broker = Spawned(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Client certificates of the broker's CA: the subscriber's and the node's.
    let client_cert = |name: &str| {
        let id = outpost_pki::issue_client_cert(&paths, name, 30).expect("client cert");
        let (c, k) = (
            broker_dir.path().join(format!("{name}.pem")),
            broker_dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, id.cert_pem).expect("write");
        std::fs::write(&k, id.key_pem).expect("write");
        (c, k)
    };
    let (sub_cert, sub_key) = client_cert("subscriber");
    let (edge_cert, edge_key) = client_cert("edge-1");
    let tls = |p: &std::path::Path| p.display().to_string();
    let sub = MosquittoSub::with(
        &[
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            port.to_string(),
            "--cafile".into(),
            tls(&ca),
            "--cert".into(),
            tls(&sub_cert),
            "--key".into(),
            tls(&sub_key),
        ],
        "site/7/#",
    );

    let url = format!("url = \"mqtts://localhost:{port}\"\ntopic = \"site/7\"");
    let trusted = format!(
        "{url}\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nzstd_level = 0",
        ca.display(),
        edge_cert.display(),
        edge_key.display()
    );
    let untrusted = format!("{url}\nretry_initial_ms = 50");
    let node = Node::start(&export_config(&[
        ("broker", "mqtt", trusted),
        ("untrusted", "mqtt", untrusted),
    ]))
    .await;
    for n in 0..3 {
        let r = post_event(&node, "gauge", &format!("{n}")).await;
        assert_eq!(r.status().as_u16(), 201);
    }
    let (mut values, mut seqs) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while values.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {values:?} arrived"
        );
        let Some((topic, payload)) = sub.next_line(Duration::from_millis(500)) else {
            continue;
        };
        assert_eq!(topic, "site/7/normal");
        let batch: Value = serde_json::from_str(&payload).expect("a JSON batch");
        for item in batch["items"].as_array().expect("items") {
            seqs.push(item["seq"].as_u64().expect("seq"));
            values.push(
                item["data"]["event"]["readings"][0]["value"]
                    .as_str()
                    .expect("value")
                    .to_string(),
            );
        }
    }
    assert_eq!(values, vec!["0", "1", "2"]);
    // Numbered in the order taken, so a receiver can tell a resend from new data.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The destination without the CA never gets a TLS session: its items stay queued.
    let (_, v) = node
        .get(&format!(
            "{}/api/v3/export/status",
            node.url(node.ports.export)
        ))
        .await;
    let untrusted = v["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["name"] == "untrusted")
        .cloned()
        .expect("untrusted");
    assert_eq!(untrusted["sender"]["sentItems"], 0, "{untrusted}");
    assert_eq!(untrusted["queue"]["items"], 3, "{untrusted}");
    assert!(
        untrusted["sender"]["consecutiveFailures"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{untrusted}"
    );
    drop(sub);
    drop(broker);
}
