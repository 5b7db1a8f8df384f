//! Acknowledged means durable: what the broker acknowledged to a publisher is stored, once,
//! whatever was killed with SIGKILL meanwhile.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_bus::{Bus, Options};
use outpost_kit::config::BusConfig;
use serde_json::json;

use crate::support::*;

/// A device publishing events with QoS 1 as fast as the broker acknowledges them.
struct Publisher {
    stop: Arc<AtomicBool>,
    /// The IDs of the events the broker acknowledged so far.
    acked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Publishes EdgeX events for `device` on the bus as a node service would.
    async fn start(node: &Node, device: &str, creds: &tempfile::TempDir) -> Self {
        // With the node's bus token: loopback takes no anonymous clients with mutual TLS.
        let cfg = BusConfig {
            url: format!("mqtt://127.0.0.1:{}", node.ports.mqtt),
            username: outpost_bus::INTERNAL_USER.into(),
            password_file: Some(node.data_dir().join("secrets/bus.token")),
            ..BusConfig::default()
        };
        let device = device.to_string();
        Self::with(cfg, creds, &format!("durability-{device}"), move |_| {
            let (id, msg) =
                event_message(&device, now_nanos(), &[("Temperature", "Float64", "20.5")]);
            (id, event_topic(&device), msg.into_bytes())
        })
        .await
    }

    /// Publishes what `make(n)` gives for n = 1, 2, ...: (the key counted once
    /// acknowledged, topic, payload), over a connection made with `cfg`.
    async fn with(
        cfg: BusConfig,
        creds: &tempfile::TempDir,
        client_id: &str,
        make: impl Fn(u64) -> (String, String, Vec<u8>) + Send + 'static,
    ) -> Self {
        let opts = Options {
            create_credentials: false,
            ..Options::plain(client_id.to_string())
        };
        let bus = Bus::connect(
            &cfg,
            creds.path(),
            "test",
            opts,
            &outpost_kit::Shutdown::new(),
        )
        .await
        .expect("publisher connects");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (flag, keys) = (Arc::clone(&stop), Arc::clone(&acked));
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                let (key, topic, payload) = make(n);
                // Ok only once the broker acknowledged it (PUBACK); a publish that may
                // have been lost with the connection is not counted.
                if bus.publish_raw(&topic, payload).await.is_ok() {
                    keys.lock().expect("keys").push(key);
                }
            }
        });
        Self { stop, acked, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("ids").len()
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the publisher to stop")
            .expect("publisher");
        std::mem::take(&mut *self.acked.lock().expect("ids"))
    }
}

/// A client sending one request after another until stopped; a request `send(n)`
/// answers `Some(key)` for (n = 1, 2, ...) counts `key` as acknowledged.
struct Sender {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    /// Whether a request is out, waiting for its answer.
    asking: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    fn start<F, Fut>(send: F) -> Self
    where
        F: Fn(u64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let asking = Arc::new(AtomicBool::new(false));
        let (flag, keys, out) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&asking));
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                out.store(true, Ordering::Relaxed);
                let answered = send(n).await;
                out.store(false, Ordering::Relaxed);
                match answered {
                    Some(key) => keys.lock().expect("keys").push(key),
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        Self {
            stop,
            acked,
            asking,
            task,
        }
    }

    /// 1 while a request waits for its answer, else 0.
    fn waiting(&self) -> i64 {
        i64::from(self.asking.load(Ordering::Relaxed))
    }

    /// What was acknowledged so far.
    fn acked(&self) -> Vec<String> {
        self.acked.lock().expect("acked").clone()
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the sender to stop")
            .expect("sender");
        std::mem::take(&mut *self.acked.lock().expect("acked"))
    }
}

/// Every event id core-data holds for `device`.
async fn stored_ids(node: &Node, device: &str) -> Vec<String> {
    paged(node, &format!("event/device/name/{device}"), "events", "id").await
}

/// `field` of every item of `list` core-data answers at `/api/v3/<path>`, page by page.
async fn paged(node: &Node, path: &str, list: &str, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let (status, body) = node
            .get(&format!(
                "{}/api/v3/{path}?offset={}&limit=1000",
                node.data(),
                out.len()
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let page: Vec<String> = body[list]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[field].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// A small random number source; the seed is printed so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("OUTPOST_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::try_from(now_nanos()).unwrap_or(1) | 1);
        eprintln!("OUTPOST_TEST_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// The pid of `service` now, if its pid file is there (not while it restarts).
fn pid_now(node: &Node, service: &str) -> Option<u32> {
    std::fs::read_to_string(node.data_dir().join("run").join(format!("{service}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until `service` runs in a process other than `old` and answers on its port (its
/// registration may still be the old process's).
async fn restarted(node: &Node, service: &str, old: u32) {
    eventually(
        &format!("{service} to come back"),
        Duration::from_secs(30),
        || async {
            if pid_now(node, service).is_none_or(|p| p == old) {
                return false;
            }
            let regs = node.registrations().await;
            let Some(port) = regs
                .iter()
                .find(|r| r["serviceId"] == service && r["status"] == "UP")
                .and_then(|r| r["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
            else {
                return false;
            };
            node.get(&format!("{}/api/v3/ping", node.url(port))).await.0 == 200
        },
    )
    .await;
}

/// `rounds` times, after a random pause of 0.2 to 1.5 s: kill -9 of one of `victims` (a
/// service, or `node` for every process at once), and waits until it is back. The last
/// round kills the whole node if no round did yet and `node` is a victim.
///
/// `in_flight` tells, just before each kill, how much was acknowledged and not yet where
/// it is going (acknowledged minus stored, read in that order, so never more than was in
/// flight at the read); at least one kill must have hit such work, or the test proved
/// nothing.
async fn kill_at_random(
    node: &mut Node,
    victims: &[&str],
    rounds: u32,
    in_flight: impl AsyncFn(&Node) -> i64,
) {
    kill_at_random_with(node, None, victims, rounds, in_flight).await;
}

/// [`kill_at_random`] where the victims may also be `nats-server`, the node's bus: killed
/// with kill -9 and started again on its store.
async fn kill_at_random_with(
    node: &mut Node,
    mut nats: Option<&mut outpost_testkit::nats::NatsServer>,
    victims: &[&str],
    rounds: u32,
    in_flight: impl AsyncFn(&Node) -> i64,
) {
    let mut rng = Rng::new();
    let mut hit = Vec::new();
    let mut node_killed = false;
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1300))).await;
        let mut victim = victims[usize::try_from(rng.below(victims.len() as u64)).unwrap_or(0)];
        if round + 1 == rounds && !node_killed && victims.contains(&"node") {
            victim = "node";
        }
        node_killed |= victim == "node";
        let backlog = in_flight(node).await;
        hit.push(backlog);
        eprintln!("round {round}: kill -9 {victim} with {backlog} in flight");
        if victim == "node" {
            node.kill_all();
            node.launch().await;
        } else if victim == "nats-server" {
            let nats = nats.as_deref_mut().expect("a NATS server to kill");
            nats.kill();
            nats.start_again();
        } else {
            let pid = node.pid(victim);
            signal(pid, "KILL");
            restarted(node, victim, pid).await;
        }
    }
    assert!(
        hit.iter().any(|b| *b > 0),
        "no kill hit acknowledged work in flight: {hit:?}"
    );
}

/// How many items core-data counts at `/api/v3/<path>` (`event/count/...`,
/// `reading/count/...`).
async fn count(node: &Node, path: &str) -> i64 {
    let (status, body) = node.get(&format!("{}/api/v3/{path}", node.data())).await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_i64().expect("a count")
}

/// Waits until every id of `acked` is stored for `device`; then none may be there twice.
async fn all_stored_once(node: &Node, device: &str, acked: &[String], within: Duration) {
    let missing = || async {
        let stored: HashSet<String> = stored_ids(node, device).await.into_iter().collect();
        acked.iter().filter(|id| !stored.contains(*id)).count()
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut left = missing().await;
    while left > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = missing().await;
    }
    assert_eq!(
        left,
        0,
        "{left} of {} acknowledged events lost",
        acked.len()
    );
    let stored = stored_ids(node, device).await;
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "an event stored twice");
}

/// Adds device `name` of `service` (with `protocols`) whose profile has one String
/// resource, `Label`, once the service is registered.
async fn tag_device(node: &Node, name: &str, service: &str, protocols: serde_json::Value) {
    let labels =
        json!([{"name": "Label", "properties": {"valueType": "String", "readWrite": "R"}}]);
    node.add_profiles(&profile_request("Tag", "T-1", labels))
        .await;
    node.wait_device_service(service).await;
    let device = json!([{"apiVersion": "v3", "device": {"name": name, "profileName": "Tag",
        "serviceName": service, "adminState": "UNLOCKED", "operatingState": "UP",
        "protocols": protocols}}]);
    let (status, v) = node
        .post(&format!("{}/api/v3/device", node.metadata()), &device)
        .await;
    assert!(status < 300 && v[0]["statusCode"] == 201, "{v}");
}

/// A device of device-rest with one String resource, `Label`, and a token of its own,
/// known to device-rest: how it posts values (trusting the node CA, as a device would).
#[derive(Clone)]
struct RestDevice {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl RestDevice {
    async fn add(node: &Node, name: &str) -> Self {
        tag_device(
            node,
            name,
            "device-rest",
            json!({"REST": {"Host": "127.0.0.1", "Port": "9", "Path": "tag"}}),
        )
        .await;
        let token = format!("{name}-token-000000000000");
        node.cli_ok(&["device", "secret", name, "--secret", &token]);
        node.wait_log(&["device-rest", "device added", &format!("device={name}")])
            .await;
        Self {
            http: node.tls_client(None),
            url: format!("{}/api/v3/resource/{name}/Label", node.url(node.ports.rest)),
            token,
        }
    }

    /// Posts `value`: the value if device-rest answered 2xx.
    async fn post(self, value: String) -> Option<String> {
        let r = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .body(value.clone())
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(value)
    }
}

/// Waits until every value of `acked` is among the readings at core-data's `path`; then
/// at most `duplicates` may be there twice.
async fn all_values_stored_once(
    node: &Node,
    path: &str,
    acked: &[String],
    duplicates: usize,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    let missing = loop {
        let stored: HashSet<String> = paged(node, path, "readings", "value")
            .await
            .into_iter()
            .collect();
        let missing = acked.iter().filter(|v| !stored.contains(*v)).count();
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged values lost",
        acked.len()
    );
    let stored = paged(node, path, "readings", "value").await;
    let unique: HashSet<&String> = stored.iter().collect();
    let twice = stored.len() - unique.len();
    eprintln!(
        "{} of {} acknowledged values stored, {twice} of them twice",
        unique.len(),
        acked.len()
    );
    assert!(
        twice <= duplicates,
        "{twice} values stored twice (at most {duplicates} may be)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_acknowledged_survives_its_crash_while_core_data_is_away() {
    let node = Node::start("").await;
    provision(&node, &["j1"]);
    let creds = crate::support::tempdir();
    let count = || async {
        node.get(&format!(
            "{}/api/v3/event/count/device/name/j1",
            node.data()
        ))
        .await
        .1["count"]
            .as_u64()
            .unwrap_or(0)
    };
    // core-data consumes, so the broker journals for it.
    let first = Publisher::start(&node, "j1", &creds).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = first.stop().await;
    assert!(!before.is_empty());
    eventually("the first events stored", outpost_testkit::WAIT, || async {
        count().await == before.len() as u64
    })
    .await;
    // core-data cannot take anything now: what the broker acknowledges next is only in
    // the broker when it is killed.
    let core_data = node.pid("core-data");
    let paused_core_data = Paused::new(core_data);
    let held = Publisher::start(&node, "j1", &creds).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = held.stop().await;
    assert!(!acked.is_empty());
    let broker = node.pid("mqtt-broker");
    signal(broker, "KILL");
    restarted(&node, "mqtt-broker", broker).await;
    drop(paused_core_data);
    let all: Vec<String> = before.into_iter().chain(acked).collect();
    all_stored_once(&node, "j1", &all, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_node_kill_9_while_core_data_is_behind_loses_no_acknowledged_event() {
    // The case that once lost acknowledged events: the broker has acknowledged what
    // core-data has not stored yet (here core-data is paused, so everything acknowledged
    // meanwhile is held only by the broker) when every process of the node dies at once,
    // in the middle of a publisher's stream.
    let mut node = Node::start("").await;
    provision(&node, &["w1"]);
    let creds = crate::support::tempdir();
    let publisher = Publisher::start(&node, "w1", &creds).await;
    eventually("ingest under way", outpost_testkit::WAIT, || async {
        count(&node, "event/count/device/name/w1").await >= 200
    })
    .await;
    let paused = Paused::new(node.pid("core-data"));
    let at_pause = publisher.count();
    eventually(
        "events acknowledged while core-data is away",
        outpost_testkit::WAIT,
        || async { publisher.count() >= at_pause + 500 },
    )
    .await;
    // Nothing acknowledged since the pause can be stored: core-data is stopped.
    let behind = publisher.count() - at_pause;
    node.kill_all();
    drop(paused);
    node.launch().await;
    let acked = publisher.stop().await;
    all_stored_once(&node, "w1", &acked, Duration::from_secs(90)).await;
    // What the node had acknowledged and not stored when it died was stored by the new
    // core-data; whatever it received again of what the old one had stored was
    // recognised as a duplicate.
    let data = node.data();
    let stored_since = node
        .metric(&data, "outpost_core_data_events_persisted_total")
        .await;
    let duplicates = node
        .metric(&data, "outpost_core_data_events_duplicate_total")
        .await;
    eprintln!(
        "{behind} acknowledged behind core-data at the kill; {stored_since} stored and {duplicates} duplicates since"
    );
    assert!(
        stored_since >= behind as f64,
        "the backlog was stored after the kill ({stored_since} < {behind})"
    );
    // A duplicate is a redelivery of what the old node stored: never more than that.
    let stored_before = count(&node, "event/count/device/name/w1").await as f64 - stored_since;
    assert!(
        duplicates <= stored_before,
        "{duplicates} duplicates counted, but the old node stored only {stored_before}"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_or_stored_twice_through_twenty_random_kill_9() {
    let rounds: u32 = std::env::var("OUTPOST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut node = Node::start("").await;
    provision(&node, &["k1"]);
    let creds = crate::support::tempdir();
    let publisher = Publisher::start(&node, "k1", &creds).await;
    kill_at_random(
        &mut node,
        &["core-data", "mqtt-broker", "core-metadata", "node"],
        rounds,
        async |node| {
            let acked = publisher.count() as i64;
            acked - count(node, "event/count/device/name/k1").await
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = publisher.stop().await;
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    eprintln!("{} events acknowledged through {rounds} kills", acked.len());
    all_stored_once(&node, "k1", &acked, Duration::from_secs(120)).await;
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledgements_loses_nothing_and_ingest_resumes_with_space() {
    use std::os::unix::fs::PermissionsExt as _;
    needs_root("mounting a small filesystem");
    let mut node = Node::create("");
    std::fs::create_dir_all(node.data_dir()).expect("mkdir");
    std::fs::set_permissions(node.data_dir(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    // The broker's journal on a disk of 1 MiB; its own bound (256 MiB) is far away.
    let disk = Tmpfs::mount(&node.data_dir().join("journal"), "1m");
    node.launch().await;
    provision(&node, &["f1"]);
    let creds = crate::support::tempdir();
    // core-data is held, so nothing leaves the journal and the disk fills.
    let core_data = node.pid("core-data");
    let paused_core_data = Paused::new(core_data);
    let publisher = Publisher::start(&node, "f1", &creds).await;
    let broker = node.url(node.ports.broker_http);
    eventually(
        "the journal to run out of disk",
        Duration::from_secs(60),
        || async {
            node.metric(&broker, "outpost_mqtt_broker_journal_append_waits_total")
                .await
                >= 1.0
        },
    )
    .await;
    // Acknowledgements have stopped: the publisher waits. Once the broker has tried the
    // write again (an acknowledgement sent before the disk filled has arrived by then),
    // and twice more after that, still finding no room, nothing more was acknowledged.
    let waits = || node.metric(&broker, "outpost_mqtt_broker_journal_append_waits_total");
    let tried_again = async |times: f64| {
        let from = waits().await;
        eventually(
            "the broker to try the journal again",
            Duration::from_secs(60),
            || async { waits().await >= from + times },
        )
        .await;
    };
    tried_again(1.0).await;
    let stalled = publisher.count();
    assert!(
        stalled > 100,
        "only {stalled} acknowledged before the disk filled"
    );
    tried_again(2.0).await;
    assert_eq!(
        publisher.count(),
        stalled,
        "acknowledged without room on disk"
    );
    // Space comes back: acknowledgements resume, and core-data takes everything.
    disk.grow("64m");
    eventually(
        "acknowledgements to resume",
        Duration::from_secs(30),
        || async { publisher.count() > stalled + 50 },
    )
    .await;
    drop(paused_core_data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = publisher.stop().await;
    all_stored_once(&node, "f1", &acked, Duration::from_secs(90)).await;
    // The broker restarts on what is on the disk, unharmed.
    let pid = node.pid("mqtt-broker");
    signal(pid, "KILL");
    restarted(&node, "mqtt-broker", pid).await;
    let log = node.log();
    assert!(
        !log.contains("journal records that cannot be read"),
        "corrupt journal records"
    );
    node.stop();
    let checked = databases_intact(&node);
    assert!(checked.iter().any(|d| d == "core-data"), "{checked:?}");
}

/// Fills the filesystem `dir` is on with a file in it, until no byte more fits.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut size = chunk.len();
    while size > 0 {
        match f.write(&chunk[..size]) {
            Ok(0) | Err(_) => size /= 2,
            Ok(_) => {}
        }
    }
    let _ = f.sync_all();
    path
}

/// Runs SQLite's `PRAGMA integrity_check` on every database of the stopped `node` (each
/// opened with its own key): every one must answer "ok". Returns the databases checked.
fn databases_intact(node: &Node) -> Vec<String> {
    let secrets = node.data_dir().join("secrets");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(node.data_dir().join("db")).expect("db dir") {
        let path = entry.expect("entry").path();
        let (Some(stem), Some("db")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if !secrets.join(format!("{stem}.key")).exists() {
            continue;
        }
        let key = outpost_storage::load_or_create_key(&secrets, stem).expect("key");
        let conn = outpost_storage::open(&path, &key, &outpost_storage::OpenOptions::default())
            .unwrap_or_else(|e| panic!("{} does not open: {e}", path.display()));
        let verdict: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(verdict, "ok", "{}", path.display());
        checked.push(stem.to_string());
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_disk_that_is_full_makes_core_data_hold_events_refuse_posts_and_resume() {
    use std::os::unix::fs::PermissionsExt as _;
    needs_root("mounting a small filesystem");
    let mut node = Node::create("");
    std::fs::create_dir_all(node.data_dir()).expect("mkdir");
    std::fs::set_permissions(node.data_dir(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    // The node's databases on a small disk of their own; the broker's journal elsewhere.
    let disk = Tmpfs::mount(&node.data_dir().join("db"), "16m");
    node.launch().await;
    provision(&node, &["df1"]);
    let data = node.data();
    let creds = crate::support::tempdir();
    let publisher = Publisher::start(&node, "df1", &creds).await;
    eventually("ingest under way", outpost_testkit::WAIT, || async {
        count(&node, "event/count/device/name/df1").await >= 100
    })
    .await;
    let filler = fill(&node.data_dir().join("db"));
    // A REST post needing space is refused as the server's trouble, not the client's.
    let url = format!("{data}/api/v3/event/device-mqtt/Thermostat/df1/Temperature");
    let big = "y".repeat(16 * 1024);
    let mut refused = None;
    for i in 0..500 {
        let (_, m) = event_message("df1", now_nanos() + i, &[("Label", "String", &big)]);
        let body: serde_json::Value = serde_json::from_str(&m).expect("json");
        let (s, v) = node.post(&url, &body["payload"]).await;
        if s != 201 {
            refused = Some((s, v));
            break;
        }
    }
    let (s, v) = refused.expect("a full disk refused a post");
    assert_eq!(s, 503, "{v}");
    // Health says why. (A bus batch small enough for pages SQLite freed may succeed in
    // between and clear the check for a moment: it is DOWN while writes keep failing.)
    let health = format!("{data}/api/v3/health");
    eventually(
        "health DOWN with its writes check failing",
        outpost_testkit::WAIT,
        || async {
            let (s, h) = node.get(&health).await;
            let writes_fail = h["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "writes" && c["ok"] == false));
            s == 503 && h["status"] == "DOWN" && writes_fail
        },
    )
    .await;
    // What the broker acknowledges meanwhile is held, not lost: core-data stores none of
    // it and does not acknowledge it.
    // (A small batch may still fit in pages SQLite freed inside its files, so the count
    // need not stand still; what matters is that most of what was acknowledged waits.)
    let at_full = count(&node, "event/count/device/name/df1").await;
    eventually(
        "events acknowledged while core-data cannot write",
        outpost_testkit::WAIT,
        || async { publisher.count() as i64 >= at_full + 200 },
    )
    .await;
    let stored = count(&node, "event/count/device/name/df1").await;
    let published = publisher.count() as i64;
    assert!(
        stored + 150 <= published,
        "core-data stored {stored} of {published} acknowledged events on a full disk"
    );
    // Space again: everything is stored, once, and health recovers.
    std::fs::remove_file(&filler).expect("remove the filler");
    let acked = publisher.stop().await;
    all_stored_once(&node, "df1", &acked, Duration::from_secs(90)).await;
    eventually("core-data healthy again", outpost_testkit::WAIT, || async {
        node.get(&format!("{data}/api/v3/health")).await.0 == 200
    })
    .await;
    node.stop();
    // No database was harmed by the writes that failed.
    let checked = databases_intact(&node);
    assert!(checked.iter().any(|d| d == "core-data"), "{checked:?}");
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_data_answers_201_only_for_events_that_survive_random_kill_9() {
    let mut node = Node::start("").await;
    provision(&node, &["rp"]);
    let url = format!(
        "{}/api/v3/event/device-mqtt/Thermostat/rp/Temperature",
        node.data()
    );
    // A client posting events one after another; a 201 counts the event as stored.
    let http = node.http.clone();
    let poster = Sender::start(move |_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (id, m) = event_message("rp", now_nanos(), &[("Temperature", "Float64", "20.5")]);
            let body: serde_json::Value = serde_json::from_str(&m).expect("json");
            let r = http.post(&url).json(&body["payload"]).send().await.ok()?;
            (r.status().as_u16() == 201).then_some(id)
        }
    });
    let rounds: u32 = std::env::var("OUTPOST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(8, |r: u32| r.div_ceil(2));
    kill_at_random(
        &mut node,
        &["core-data", "node"],
        rounds,
        // A post waiting for its answer.
        async |_| poster.waiting(),
    )
    .await;
    let acked = poster.stop().await;
    assert!(acked.len() > 50, "only {} stored", acked.len());
    // Answered 201 means committed: there at once, nothing to wait for.
    all_stored_once(&node, "rp", &acked, Duration::ZERO).await;
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_rest_answers_503_when_the_bus_takes_nothing_for_ten_seconds() {
    let node = Node::start("[device_rest]\nenabled = true\ndevice_messages_per_s = 0.0\n").await;
    let device = RestDevice::add(&node, "rb").await;
    let push = |value: &'static str| {
        let device = device.clone();
        async move {
            let r = device
                .http
                .post(&device.url)
                .bearer_auth(&device.token)
                .body(value)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("device-rest answers");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(push("first").await.0, 200);
    // The broker stops taking anything: the device is told to retry, in bounded time.
    let paused = Paused::new(node.pid("mqtt-broker"));
    let started = std::time::Instant::now();
    let (status, body) = push("held").await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("10 s"), "{body}");
    assert!(
        waited >= Duration::from_secs(9),
        "answered after {waited:?}, before the bus had its 10 s"
    );
    let rest = node.url(node.ports.rest);
    assert!(
        node.metric(
            &rest,
            "outpost_device_rest_device_messages_rejected_total{reason=\"bus\"}"
        )
        .await
            >= 1.0
    );
    // The bus back: pushes are taken again.
    drop(paused);
    eventually(
        "device-rest takes pushes again",
        outpost_testkit::WAIT,
        || async { push("again").await.0 == 200 },
    )
    .await;
    eventually(
        "the value after the outage stored",
        outpost_testkit::WAIT,
        || async {
            node.readings("rb", "Label")
                .await
                .iter()
                .any(|r| r["value"] == "again")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_rest_answers_2xx_only_for_what_survives_random_kill_9() {
    let node = Node::start("[device_rest]\nenabled = true\ndevice_messages_per_s = 0.0\n").await;
    device_rest_through_kills(
        node,
        None,
        &["device-rest", "mqtt-broker", "core-data", "node"],
    )
    .await;
}

/// The same with NATS JetStream as the bus (TLS, a password), and the NATS server among
/// the victims: a device's 2xx still means stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_rest_answers_2xx_only_for_what_survives_random_kill_9_on_nats_jetstream() {
    let mut nats = outpost_testkit::nats::NatsServer::start();
    let node = Node::start(&format!(
        "{}ack_wait_s = 5\n[broker]\nenabled = false\n\
         [device_rest]\nenabled = true\ndevice_messages_per_s = 0.0\n",
        nats.bus_toml()
    ))
    .await;
    device_rest_through_kills(
        node,
        Some(&mut nats),
        &["device-rest", "core-data", "nats-server", "node"],
    )
    .await;
}

/// The same with an external mosquitto as the bus: what it acknowledged waits in
/// core-data's session there while core-data, device-rest or the whole node is killed.
/// (What mosquitto itself holds in memory is its own persistence's to keep:
/// docs/durability.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_rest_answers_2xx_only_for_what_survives_random_kill_9_on_an_external_mosquitto() {
    let mosquitto = outpost_testkit::Mosquitto::start();
    let node = Node::start(&format!(
        "[bus]\nurl = \"{}\"\n[broker]\nenabled = false\n\
         [device_rest]\nenabled = true\ndevice_messages_per_s = 0.0\n",
        mosquitto.url()
    ))
    .await;
    device_rest_through_kills(node, None, &["device-rest", "core-data", "node"]).await;
}

/// Two core-data instances on one PostgreSQL consume NATS JetStream as one shared durable
/// consumer (`$share/core-data/...`): each value is taken by one of them, and when one is
/// killed with kill -9 what it had taken and not acknowledged goes to the other after
/// `bus.ack_wait_s`: every value device-rest answered 2xx is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_data_instances_share_one_jetstream_consumer_through_a_kill_9() {
    let nats = outpost_testkit::nats::NatsServer::start();
    let db = outpost_testkit::postgres::server().database();
    let node = Node::start(&format!(
        "{}{}ack_wait_s = 3\n[broker]\nenabled = false\n\
         [device_rest]\nenabled = true\ndevice_messages_per_s = 0.0\n",
        db.storage_toml("core_data"),
        nats.bus_toml()
    ))
    .await;
    let port_b = free_port();
    let mut b = instance_b(&node, "core-data", "core_data", port_b, None);
    let (a_url, b_url) = (node.data(), node.url(port_b));
    eventually("core-data@b consuming", Duration::from_secs(30), || async {
        node.status_of("core-data@b").await.as_deref() == Some("UP")
            && node
                .get(&format!("{b_url}/api/v3/health"))
                .await
                .1
                .to_string()
                .contains("\"ingest\"")
    })
    .await;
    let device = RestDevice::add(&node, "sh").await;
    let post = move |value: String| device.clone().post(value);
    // Both take a share while both live, and nothing is handled twice.
    let mut first = Vec::new();
    for n in 0..400 {
        first.push(post(format!("s{n}")).await.expect("a 2xx while all is up"));
    }
    let path = "reading/device/name/sh/resourceName/Label";
    all_values_stored_once(&node, path, &first, 0, Duration::from_secs(30)).await;
    let persisted = "outpost_core_data_events_persisted_total";
    let (on_a, on_b) = (
        node.metric_if_any(&a_url, persisted).await.unwrap_or(0.0),
        node.metric_if_any(&b_url, persisted).await.unwrap_or(0.0),
    );
    assert!(
        on_a > 0.0 && on_b > 0.0,
        "both instances took a share: a {on_a}, b {on_b}"
    );
    assert_eq!(
        on_a + on_b,
        400.0,
        "each value handled once: a {on_a}, b {on_b}"
    );

    // b dies at once while values keep coming.
    let poster = Sender::start(move |n| post(format!("k{n}")));
    eventually("b storing more", Duration::from_secs(30), || async {
        node.metric_if_any(&b_url, persisted).await.unwrap_or(0.0) > on_b + 20.0
    })
    .await;
    b.kill().expect("kill -9 core-data@b");
    let _ = b.wait();
    eventually("a storing without b", Duration::from_secs(30), || async {
        poster.acked().len() > 300
    })
    .await;
    let acked = poster.stop().await;
    all_values_stored_once(&node, path, &acked, 0, Duration::from_secs(60)).await;
}

/// A device posting values to device-rest one after another while `victims` are killed
/// with kill -9 at random: every value answered 2xx is stored, none twice.
async fn device_rest_through_kills(
    mut node: Node,
    nats: Option<&mut outpost_testkit::nats::NatsServer>,
    victims: &[&str],
) {
    let device = RestDevice::add(&node, "rk").await;
    assert!(
        device.clone().post("ready".into()).await.is_some(),
        "device-rest takes a value"
    );

    // A device posting values one after another; a 2xx answer counts it as acknowledged.
    let poster = Sender::start(move |n| device.clone().post(format!("v{n}")));
    let rounds: u32 = std::env::var("OUTPOST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    kill_at_random_with(
        &mut node,
        nats,
        victims,
        rounds,
        // A request waiting for its answer, and values answered and not stored yet (by
        // counts: listing every reading each round would grow with the run).
        async |node| {
            let waiting = poster.waiting();
            let acked = poster.acked().len() as i64;
            let stored = count(node, "reading/count/device/name/rk").await;
            waiting + (acked - stored).max(0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = poster.stop().await;
    assert!(acked.len() > 50, "only {} acknowledged", acked.len());
    eprintln!("{} values acknowledged through {rounds} kills", acked.len());
    let path = "reading/device/name/rk/resourceName/Label";
    all_values_stored_once(&node, path, &acked, 0, Duration::from_secs(90)).await;
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_mqtt_telemetry_acknowledged_by_the_broker_survives_random_kill_9() {
    // What a killed device-mqtt had taken but not confirmed is delivered again after 5 s,
    // not the default minute, which keeps the test short.
    let mut node = Node::start(
        "[device_mqtt]\nenabled = true\ndevice_messages_per_s = 0.0\n\
         [broker]\njournal_redeliver_s = 5\n",
    )
    .await;
    tag_device(&node, "mk", "device-mqtt", json!({"mqtt": {}})).await;
    let creds = crate::support::tempdir();
    let secret = creds.path().join("secret");
    std::fs::write(&secret, "mk-secret-0000000000").expect("secret");
    node.cli_ok(&["device", "secret", "mk", "--secret", "mk-secret-0000000000"]);
    // The device, with its own credential, publishing values with QoS 1: a PUBACK counts
    // the value as acknowledged.
    let cfg = BusConfig {
        url: format!("mqtt://127.0.0.1:{}", node.ports.mqtt),
        username: "mk".into(),
        password_file: Some(secret),
        ..BusConfig::default()
    };
    let publisher = Publisher::with(cfg, &creds, "mk", |n| {
        let value = format!("v{n}");
        (
            value.clone(),
            "incoming/data/mk/Label".to_string(),
            value.into_bytes(),
        )
    })
    .await;
    eventually(
        "device-mqtt stores mk's values",
        Duration::from_secs(30),
        || async { !node.readings("mk", "Label").await.is_empty() },
    )
    .await;
    let rounds: u32 = std::env::var("OUTPOST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // OUTPOST_KILL_VICTIMS=device-mqtt,node narrows the victims (to find which kill loses).
    let victims: Vec<String> = std::env::var("OUTPOST_KILL_VICTIMS").map_or_else(
        |_| {
            vec![
                "device-mqtt".into(),
                "mqtt-broker".into(),
                "core-data".into(),
                "node".into(),
            ]
        },
        |v| v.split(',').map(str::to_string).collect(),
    );
    let victims: Vec<&str> = victims.iter().map(String::as_str).collect();
    kill_at_random(&mut node, &victims, rounds, async |node| {
        let acked = publisher.count() as i64;
        acked - count(node, "reading/count/device/name/mk").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = publisher.stop().await;
    assert!(acked.len() > 50, "only {} acknowledged", acked.len());
    eprintln!("{} values acknowledged through {rounds} kills", acked.len());
    let path = "reading/device/name/mk/resourceName/Label";
    // QoS 1 lets the device send again a message whose PUBACK died with the broker: at
    // most the one message it had in flight at each kill arrives twice. Anything more
    // would be the node's own redelivery, which message ids make idempotent.
    all_values_stored_once(
        &node,
        path,
        &acked,
        rounds as usize,
        Duration::from_secs(120),
    )
    .await;
    node.stop();
}

/// What a subscriber to `filter` gets right after subscribing: the retained messages, as
/// `topic → payload` (collected until nothing arrives for a second).
fn retained_now(port: u16, filter: &str) -> std::collections::BTreeMap<String, String> {
    let sub = MosquittoSub::start(port, filter);
    let mut got = std::collections::BTreeMap::new();
    // The first line may take a moment (connect, subscribe); then one quiet second ends it.
    let mut wait = Duration::from_secs(5);
    while let Some((topic, payload)) = sub.next_line(wait) {
        got.insert(topic, payload);
        wait = Duration::from_secs(1);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_the_broker_acknowledged_survive_its_kill_9() {
    let node = Node::start("").await;
    let port = node.ports.mqtt;
    let publish = |topic: &str, payload: &str| {
        let out = mosquitto_pub(port, topic, payload, &["-r"]);
        assert!(
            out.status.success(),
            "{topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut expected = std::collections::BTreeMap::new();
    for round in 0..3 {
        // Set, overwrite and clear retained messages (QoS 1: mosquitto_pub returns after
        // the PUBACK), then kill the broker at once: what it acknowledged must be back.
        for i in 0..4 {
            let (topic, payload) = (
                format!("site/status/{i}"),
                format!("round {round} value {i}"),
            );
            publish(&topic, &payload);
            expected.insert(topic, payload);
        }
        let cleared = format!("site/status/{}", round % 4);
        publish(&cleared, "");
        expected.remove(&cleared);
        let broker = node.pid("mqtt-broker");
        signal(broker, "KILL");
        restarted(&node, "mqtt-broker", broker).await;
        // The registry may still show the killed instance UP: wait for the new one's
        // listener (it listens once it has restored what it keeps).
        eventually(
            "the broker to listen again",
            outpost_testkit::WAIT,
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        let got = tokio::task::spawn_blocking(move || retained_now(port, "site/status/#"))
            .await
            .expect("subscriber");
        assert_eq!(
            got, expected,
            "round {round}: retained messages after kill -9"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_notification_is_delivered_through_random_kill_9() {
    let mut node = Node::start("").await;
    let port = crate::support::free_port();
    let hook = outpost_testkit::webhook::Webhook::start(port, 0).await;
    let webhook = format!("http://127.0.0.1:{port}/durable");
    node.cli_ok(&[
        "notify",
        "subscribe",
        "--name",
        "durable",
        "--category",
        "durable",
        "--webhook",
        &webhook,
    ]);
    let url = format!("{}/api/v3/notification", node.url(node.ports.notifications));
    // Notifications sent one after another; a 201 for the item counts it as accepted.
    let http = node.http.clone();
    let sender = Sender::start(move |n| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let content = format!("durable notification {n}");
            let body = json!([{"apiVersion": "v3", "notification": {"category": "durable",
                "content": content, "sender": "e2e", "severity": "NORMAL"}}]);
            let r = http.post(&url).json(&body).send().await.ok()?;
            let v = r.json::<serde_json::Value>().await.ok()?;
            (v[0]["statusCode"] == 201).then_some(content)
        }
    });
    let rounds: u32 = std::env::var("OUTPOST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(6, |r: u32| r.div_ceil(3));
    kill_at_random(
        &mut node,
        &["support-notifications", "node"],
        rounds,
        // A notification waiting for its answer, and accepted ones not delivered yet.
        async |_| {
            let waiting = sender.waiting();
            let got: HashSet<String> = hook.got().into_iter().map(|(_, body)| body).collect();
            let accepted = sender.acked();
            waiting + accepted.iter().filter(|c| !got.contains(*c)).count() as i64
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = sender.stop().await;
    assert!(accepted.len() > 50, "only {} accepted", accepted.len());
    let missing = || {
        let got: HashSet<String> = hook.got().into_iter().map(|(_, body)| body).collect();
        accepted.iter().filter(|c| !got.contains(*c)).count()
    };
    eventually(
        "every accepted notification at the webhook",
        Duration::from_secs(90),
        || async { missing() == 0 },
    )
    .await;
    let delivered = hook.got().len();
    eprintln!(
        "{} notifications accepted through {rounds} kills, {delivered} deliveries ({} again after a kill)",
        accepted.len(),
        delivered.saturating_sub(accepted.len())
    );
}

/// core-data on PostgreSQL through a PostgreSQL crash (kill -9 of its postmaster): what the
/// broker acknowledged meanwhile waits in its journal, since core-data confirms only what
/// committed; REST posts are answered 503, not 201; once PostgreSQL has recovered, every
/// acknowledged event is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_acknowledged_while_postgresql_was_down_is_stored_once_it_is_back() {
    let pg = outpost_testkit::postgres::Private::start();
    let db = pg.database();
    let node = Node::start(&db.storage_toml("core_data")).await;
    provision(&node, &["p1"]);
    let data = node.data();
    let count = |what: &'static str| {
        let url = format!("{data}/api/v3/{what}/count");
        let node = &node;
        async move { node.get(&url).await.1["count"].as_u64() }
    };
    publish_readings(&node, "p1", 300, "21.5");
    eventually("300 events stored", Duration::from_secs(20), || async {
        count("event").await == Some(300)
    })
    .await;

    pg.kill9();
    // The broker acknowledges these: they are in its journal.
    publish_readings(&node, "p1", 300, "22.5");
    let (_, m) = event_message("p1", now_nanos(), &[("Temperature", "Float64", "23.5")]);
    let body: serde_json::Value = serde_json::from_str(&m).expect("json");
    let (s, v) = node
        .post(
            &format!("{data}/api/v3/event/device-mqtt/Thermostat/p1/Temperature"),
            &body["payload"],
        )
        .await;
    assert_eq!(
        s, 503,
        "a post the database cannot take is not acknowledged: {v}"
    );

    pg.restart();
    eventually("600 events stored", Duration::from_secs(60), || async {
        count("event").await == Some(600)
    })
    .await;
    assert_eq!(
        count("reading").await,
        Some(600),
        "one reading each, none twice"
    );
}

/// core-data started on the node's data dir with `settings` (`--set` values) on its own
/// port: its exit status and log when it stops within 30 s, `None` while it runs on.
fn core_data_alone(node: &Node, settings: &[String]) -> Option<(i32, String)> {
    let log = node
        .dir
        .path()
        .join(format!("core-data-{}.log", free_port()));
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(&node.config)
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--set", &format!("core_data.port={}", free_port())])
        .args(["--set", "node.instance=\"alone\""]);
    for s in settings {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .args(["run", "core-data"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("core-data");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Some((status.code().unwrap_or(-1), text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// PostgreSQL refusing core-data, each with a message that says why, and nothing served:
/// a wrong password, a server whose certificate the configured CA did not sign, a server
/// that is down (refused with the URL, password redacted). Then a node whose PostgreSQL is
/// down when core-data starts: it is started again by the supervisor until PostgreSQL is
/// back, and stores what the broker acknowledged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_refusals_are_named_and_a_database_down_at_start_is_waited_for() {
    let pg = outpost_testkit::postgres::Private::start();
    let db = pg.database();
    let node = Node::start(&db.storage_toml("core_data")).await;
    provision(&node, &["q1"]);
    let wrong = node.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    let cases = [
        (
            format!("core_data.storage.password_file=\"{}\"", wrong.display()),
            "password authentication failed",
        ),
        (
            format!(
                "core_data.storage.ca=\"{}\"",
                node.data_dir().join("tls").join("ca.pem").display()
            ),
            "certificate",
        ),
        (
            "core_data.storage.url=\"postgres://outpost@127.0.0.1:1/outpost\"".to_string(),
            "127.0.0.1:1",
        ),
    ];
    for (setting, why) in &cases {
        let (code, log) = core_data_alone(&node, std::slice::from_ref(setting))
            .unwrap_or_else(|| panic!("core-data with {setting} runs on"));
        assert_ne!(code, 0, "{setting}: {log}");
        assert!(
            log.contains(why) && log.contains("PostgreSQL"),
            "{setting}: the log says why ({why}): {log}"
        );
        assert!(!log.contains("not-the-password"), "{log}");
        let said = log.lines().rfind(|l| l.contains(why)).unwrap_or("");
        eprintln!("{setting}:\n  {said}");
    }

    // Down when core-data starts: the supervisor starts it again until it is back.
    let count = format!("{}/api/v3/event/count", node.data());
    pg.kill9();
    signal(node.pid("core-data"), "KILL");
    publish_readings(&node, "q1", 50, "20.5");
    eventually(
        "core-data refused at start",
        Duration::from_secs(30),
        || async { node.log().contains("cannot start") && node.get(&count).await.0 != 200 },
    )
    .await;
    pg.restart();
    eventually(
        "core-data back with what was acknowledged",
        Duration::from_secs(90),
        || async { node.get(&count).await.1["count"] == 50 },
    )
    .await;
}
