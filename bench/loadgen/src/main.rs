//! The benchmark driver behind `bench/run.sh`.
//!
//! - `ingest`: persisted readings per second through the bus into core-data, against the raw
//!   pub/sub rate of mosquitto for the same messages, measured in the same run.
//! - `footprint`: time from start to every service registered and healthy, and the idle
//!   memory of all `outpost up` processes.
//! - `encoding`: bytes per reading on the bus, JSON against CBOR.
//! - `store`: core-data's encrypted store alone: appends per second and CPU per reading.
//! - `mqtt-devices` / `command`: readings from many MQTT devices into core-data against
//!   mosquitto's raw rate, with the CPU each process spent per reading; the command round
//!   trip ([`devices`]).
//! - `gateway`: the gateway against nginx ([`gateway`]).
//! - `modbus`: polled values per second through device-modbus against a pymodbus server,
//!   batching on and off, against pymodbus's own client ([`modbus`]).
//! - `opcua`: data changes per second from an asyncua server's subscriptions into core-data,
//!   against the rate the server publishes to an asyncua client ([`opcua`]).
//! - `coap`: readings per second from 1,000 CoAP devices (confirmable, CBOR) into core-data
//!   through device-coap, against a bare aiocoap server answering the same datagrams
//!   ([`coap`]).
//! - `queue` / `export`: the store-and-forward queue alone, and edge to cloud end to end
//!   ([`export`]).
//! - `ota`: concurrent artifact downloads and device polls per second ([`ota`]).
//! - `notifications` / `scheduler`: deliveries per second to a webhook, alert latency, and
//!   the lateness of many interval jobs ([`support`]).
//! - `scale-ingest` / `scale-cloud` / `bus-ingest`: core-data on PostgreSQL against SQLite
//!   with one to three instances, the cloud node's ingest from many edges into one and two
//!   instances, and core-data's ingest through NATS JetStream against the embedded broker,
//!   with CPU per reading of each part ([`scale`]).
//! - `pub` / `sub`: the load generator and the reference consumer (used by `ingest`).
//!
//! Every command prints a human summary and a JSON line (prefixed `RESULT `) for scripts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use mqtt5::{ConnectOptions, MqttClient, PublishOptions, QoS, SubscribeOptions};
use serde_json::{Value, json};

mod coap;
mod devices;
mod export;
mod fleet;
mod gateway;
mod modbus;
mod opcua;
mod ota;
mod scale;
mod support;

#[derive(Parser)]
#[command(about = "Outpost benchmark driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish EdgeX events (QoS 1) as fast as the broker acknowledges them.
    Pub(PubArgs),
    /// Count messages on a filter until `count` arrived; print the arrival times.
    Sub {
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value = "edgex/events/#")]
        filter: String,
    },
    /// Readings/s into core-data vs mosquitto's raw pub/sub rate for the same messages.
    Ingest {
        #[arg(long)]
        outpost: PathBuf,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// Bus encoding of the published messages: json or cbor.
        #[arg(long, default_value = "json")]
        encoding: String,
        /// MQTT connections the publisher spreads the devices over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
    },
    /// Start-to-healthy time and idle memory of `outpost up`.
    Footprint {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds to let the node idle before reading its memory.
        #[arg(long, default_value_t = 15)]
        idle_s: u64,
    },
    /// Bytes per reading on the bus, JSON vs CBOR.
    Encoding,
    /// Raw store throughput: batches appended straight to core-data's encrypted store.
    Store {
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// full or normal
        #[arg(long, default_value = "full")]
        sync: String,
    },
    /// Polled values/s through device-modbus against pymodbus, batching on and off.
    Modbus(modbus::ModbusArgs),
    /// Data changes/s from an OPC UA server's subscriptions into core-data vs an asyncua
    /// client's rate.
    Opcua(opcua::OpcUaArgs),
    /// Readings/s from many CoAP devices (confirmable, CBOR) into core-data vs a bare
    /// aiocoap server's rate.
    Coap(coap::CoapArgs),
    /// Readings/s from many MQTT devices (own credentials) into core-data, vs mosquitto.
    /// A fleet of MQTT devices connecting over TLS all at once, against mosquitto over TLS.
    Reconnect {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    MqttDevices {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 20)]
        per_device: u64,
        #[arg(long, default_value_t = 10)]
        readings: usize,
        /// Publishes in flight per device.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// The node's bus encoding: json or cbor.
        #[arg(long, default_value = "json")]
        encoding: String,
    },
    /// Requests/s and latency through the gateway (TLS + JWT) vs nginx as a TLS reverse
    /// proxy to the same backend route, with wrk.
    Gateway(gateway::GatewayArgs),
    /// The cloud node's fleet queries on PostgreSQL with millions of readings, against
    /// the same queries as written before migration 2.
    Fleet(fleet::FleetArgs),
    /// The store-and-forward queue alone: appends with fsync, reopen, drain.
    Queue(export::QueueArgs),
    /// Edge to cloud: enqueue and drain rates, bytes on the wire, latency, data reduction.
    Export(export::ExportArgs),
    /// OTA: concurrent downloads (throughput, server CPU and memory) and fleet polls/s.
    Ota(ota::OtaArgs),
    /// Notifications delivered/s to a webhook receiver vs the receiver's own rate; rules
    /// alert -> receiver latency.
    Notifications {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Deliveries at once (the service's), and the reference client's requests at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 200)]
        alerts: usize,
    },
    /// Lateness of many interval jobs at 1 s vs the same timers in this process.
    Scheduler {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// core-data on PostgreSQL against SQLite, with 1..N instances sharing the bus.
    ScaleIngest(scale::IngestArgs),
    /// The cloud node's ingest from many simulated edges into 1..N instances on PostgreSQL.
    ScaleCloud(scale::CloudArgs),
    /// core-data's ingest through NATS JetStream against the embedded broker.
    BusIngest(scale::BusArgs),
    /// Command round trip: REST -> core-command -> device service -> device -> back.
    Command {
        #[arg(long)]
        outpost: PathBuf,
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
}

/// How many events, of how many readings, from how many devices.
#[derive(clap::Args, Clone, Copy)]
struct Load {
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    #[arg(long, default_value_t = 10)]
    readings: usize,
    #[arg(long, default_value_t = 100)]
    devices: usize,
}

#[derive(clap::Args, Clone)]
struct PubArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 10)]
    readings: usize,
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Publishes in flight (awaiting their PUBACK) at once.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    #[arg(long, default_value = "json")]
    encoding: String,
    /// MQTT connections the devices' events are spread over (a device's events always go
    /// over the same one): 1 is one gateway publishing for every device, `devices` is each
    /// device with its own connection.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Over TLS: the client certificate, its key and the CA to trust (PEM), as the node's
    /// administrator (set by `ingest` with `OUTPOST_BENCH_TLS=1`).
    #[arg(skip)]
    tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

/// Publishes `msg` on `topic` with QoS 1: done once the broker acknowledged it.
async fn publish_qos1(client: &MqttClient, topic: String, msg: Vec<u8>) -> mqtt5::Result<()> {
    let opts = PublishOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    client
        .publish_with_options(topic, msg, opts)
        .await
        .map(drop)
}

/// Publishes `msg` on `topic` with QoS 1 and counts it in `acked` if the broker acknowledged
/// it; then gives back `permit`.
async fn publish_counted(
    client: &MqttClient,
    (topic, msg): (String, Vec<u8>),
    acked: &AtomicU64,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if publish_qos1(client, topic, msg).await.is_ok() {
        acked.fetch_add(1, Ordering::Relaxed);
    }
    drop(permit);
}

/// Starts `cmd` (`what` names it) with no stdin and its output discarded, killed when the
/// returned process is dropped.
fn spawn_quiet(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {what}"))?;
    Ok(Proc(child))
}

/// A reference mosquitto started with `args`, once it listens on `port`.
async fn mosquitto(args: &[&std::ffi::OsStr], port: u16) -> anyhow::Result<Proc> {
    let mosq = spawn_quiet(
        tokio::process::Command::new("mosquitto").args(args),
        "mosquitto (Debian package mosquitto)",
    )?;
    wait_until("mosquitto", Duration::from_secs(10), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await?;
    Ok(mosq)
}

/// mosquitto on `port` with its queue limits lifted, so it delivers every message (by
/// default it drops beyond 1,000 queued for a slow subscriber), as the node's broker does.
async fn mosquitto_unbounded(port: u16) -> anyhow::Result<Proc> {
    let conf = std::env::temp_dir().join(format!(
        "outpost-bench-mosquitto-{}-{port}.conf",
        std::process::id()
    ));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\npersistence false\n"
        ),
    )?;
    let mosq = mosquitto(&["-c".as_ref(), conf.as_os_str()], port).await;
    let _ = std::fs::remove_file(&conf);
    mosq
}

/// POSTs `body` as JSON; the answer as JSON.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<Value> {
    Ok(http.post(url).json(body).send().await?.json().await?)
}

/// The `count` a URL of core-data answers; 0 when it does not answer.
async fn count(http: &reqwest::Client, url: &str) -> u64 {
    match http.get(url).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const PROFILE: &str = "BenchSensor";
const SERVICE: &str = "bench-service";

fn device_name(i: usize) -> String {
    format!("bench-device-{i:04}")
}

fn resource_name(i: usize) -> String {
    format!("Value{i:02}")
}

/// An EdgeX event of `readings` Float64 readings, in an envelope, encoded.
fn event_message(
    device: &str,
    origin: i64,
    readings: usize,
    seq: u64,
    encoding: &str,
) -> anyhow::Result<Vec<u8>> {
    let rs: Vec<Value> = (0..readings)
        .map(|r| {
            json!({"id": uuid::Uuid::new_v4().to_string(), "origin": origin, "deviceName": device,
                   "resourceName": resource_name(r), "profileName": PROFILE, "valueType": "Float64",
                   "value": format!("{}.{}", 20 + (seq % 10), r)})
        })
        .collect();
    let payload = json!({"apiVersion": "v3", "event": {"apiVersion": "v3", "id": uuid::Uuid::new_v4().to_string(),
        "deviceName": device, "profileName": PROFILE, "sourceName": resource_name(0), "origin": origin, "readings": rs}});
    let req: outpost_contracts::event::AddEventRequest = serde_json::from_value(payload)?;
    let enc = match encoding {
        "cbor" => outpost_contracts::envelope::Encoding::Cbor,
        _ => outpost_contracts::envelope::Encoding::Json,
    };
    let correlation = uuid::Uuid::new_v4().to_string();
    Ok(outpost_contracts::envelope::encode_event(
        &req,
        &correlation,
        enc,
    )?)
}

/// An EdgeX event of one Float64 reading `value` of `resource`, in a JSON envelope.
fn one_reading_event(
    device: &str,
    profile: &str,
    resource: &str,
    origin: i64,
    value: &str,
) -> anyhow::Result<Vec<u8>> {
    let payload = json!({"apiVersion": "v3", "event": {"apiVersion": "v3", "id": uuid::Uuid::new_v4().to_string(),
        "deviceName": device, "profileName": profile, "sourceName": resource, "origin": origin,
        "readings": [{"id": uuid::Uuid::new_v4().to_string(), "origin": origin, "deviceName": device,
            "resourceName": resource, "profileName": profile, "valueType": "Float64", "value": value}]}});
    let req: outpost_contracts::event::AddEventRequest = serde_json::from_value(payload)?;
    Ok(outpost_contracts::envelope::encode_event(
        &req,
        &uuid::Uuid::new_v4().to_string(),
        outpost_contracts::envelope::Encoding::Json,
    )?)
}

fn topic(device: &str) -> String {
    format!(
        "edgex/events/device/{SERVICE}/{PROFILE}/{device}/{}",
        resource_name(0)
    )
}

/// Publishes `count` events; returns (start unix ns, seconds, acknowledged).
async fn publish(a: &PubArgs) -> anyhow::Result<(i64, f64, u64)> {
    // Build every message first: generation must not count as broker time.
    let base = unix_nanos();
    let mut msgs = Vec::with_capacity(usize::try_from(a.count)?);
    for i in 0..a.count {
        let d = usize::try_from(i)? % a.devices.max(1);
        let dev = device_name(d);
        let origin = base + i64::try_from(i)?;
        msgs.push((
            d % a.connections.max(1),
            (
                topic(&dev),
                event_message(&dev, origin, a.readings, i, &a.encoding)?,
            ),
        ));
    }
    let mut clients = Vec::with_capacity(a.connections.max(1));
    for n in 0..a.connections.max(1) {
        let client = Arc::new(MqttClient::with_options(ConnectOptions::new(format!(
            "bench-pub-{}-{n}",
            std::process::id()
        ))));
        if let Some((cert, key, ca)) = &a.tls {
            client
                .set_tls_config(Some(cert.clone()), Some(key.clone()), Some(ca.clone()))
                .await;
        }
        client.connect(&a.url).await.context("connect")?;
        clients.push(client);
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(a.window));
    let acked = Arc::new(AtomicU64::new(0));
    let start_unix = unix_nanos();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(msgs.len());
    for (c, (t, m)) in msgs {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (c, acked) = (Arc::clone(&clients[c]), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            publish_counted(&c, (t, m), &acked, permit).await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    for c in clients {
        let _ = c.disconnect().await;
    }
    Ok((start_unix, secs, acked.load(Ordering::Relaxed)))
}

/// Counts messages; returns (first arrival, last arrival) as unix ns.
async fn subscribe(
    url: &str,
    count: u64,
    filter: &str,
    ready: impl FnOnce(),
) -> anyhow::Result<(i64, i64)> {
    let client = MqttClient::with_options(ConnectOptions::new(format!(
        "bench-sub-{}",
        std::process::id()
    )));
    client.connect(url).await.context("connect")?;
    let n = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let last = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (n2, f2, l2) = (Arc::clone(&n), Arc::clone(&first), Arc::clone(&last));
    let opts = SubscribeOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    client
        .subscribe_with_options(filter, opts, move |_m| {
            let now = unix_nanos();
            let _ = f2.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
            l2.store(now, Ordering::Relaxed);
            n2.fetch_add(1, Ordering::Relaxed);
        })
        .await?;
    ready();
    while n.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = client.disconnect().await;
    Ok((first.load(Ordering::Relaxed), last.load(Ordering::Relaxed)))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process that is killed when dropped.
struct Proc(tokio::process::Child);

impl Proc {
    /// SIGTERM, then waits up to `timeout` for the process to exit.
    async fn stop(mut self, timeout: Duration) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(timeout, self.0.wait()).await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

struct Node {
    _dir: TempDir,
    proc: Option<Proc>,
    keeper: u16,
    data: u16,
    metadata: u16,
    mqtt: u16,
    /// MQTT over TLS.
    mqtts: u16,
    /// The broker's HTTP port (health, metrics).
    broker: u16,
    /// Mutual TLS on every hop (`OUTPOST_BENCH_TLS=1`), or EdgeX's plaintext internal API.
    tls: bool,
}

/// The Prometheus text a service of the node serves on `/metrics` (empty when it does
/// not answer).
struct Metrics(String);

impl Metrics {
    /// From the service at `base` (`scheme://host:port`).
    async fn at(http: &reqwest::Client, base: &str) -> Self {
        let text = match http.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Self(text)
    }

    /// The value of the first series starting with `name`; 0 when there is none.
    fn get(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "outpost-bench-{tag}-{}-{}",
            std::process::id(),
            unix_nanos()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a test peer (`tests/peers/*.py serve ...`) and waits until it prints its `ready`
/// line; it is killed when the returned handle drops.
async fn start_ready_peer(
    mut cmd: tokio::process::Command,
    what: &str,
    wait: Duration,
) -> anyhow::Result<Proc> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {what}"))?;
    let stdout = child.stdout.take().context("the peer's stdout")?;
    let peer = Proc(child);
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    match tokio::time::timeout(wait, lines.next_line()).await {
        Ok(Ok(Some(l))) if l.starts_with("ready") => Ok(peer),
        other => anyhow::bail!("{what} did not start: {other:?}"),
    }
}

/// A metric of the service at `base` (`scheme://host:port`), summed over its labels; 0
/// when it cannot be read.
async fn prometheus_sum(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
        return 0.0;
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0
}

/// Waits up to 30 s until a GET of `url` succeeds.
async fn wait_ok(http: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(30), || async {
        http.get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// Fails, saying what installs it, when a Python peer's interpreter is missing.
fn need_peer(python: &Path, package: &str) -> anyhow::Result<()> {
    if !python.exists() {
        anyhow::bail!(
            "{} is missing: run scripts/setup.sh --test (it installs {package})",
            python.display()
        );
    }
    Ok(())
}

impl Node {
    /// Waits until device service `name` has registered in core-metadata.
    async fn device_service(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<()> {
        let url = format!(
            "{}/api/v3/deviceservice/name/{name}",
            self.url(self.metadata)
        );
        wait_ok(http, &url, &format!("{name} in core-metadata")).await
    }

    fn spawn(outpost: &Path, extra: &str) -> anyhow::Result<Self> {
        let dir = TempDir::new("node")?;
        let (keeper, metadata, data, broker, mqtt, mqtts) = (
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
        );
        // The benchmarks call services directly, as EdgeX tools do: EdgeX's plaintext
        // internal API, compared with EdgeX's own; with OUTPOST_BENCH_TLS=1, the node's
        // default, mutual TLS on every hop (the benchmark then holds the administrator's
        // certificate).
        let tls = std::env::var("OUTPOST_BENCH_TLS").is_ok_and(|v| v == "1");
        // The services' sandbox (Landlock and seccomp), on as by default unless
        // OUTPOST_BENCH_SANDBOX=0.
        let sandbox = !std::env::var("OUTPOST_BENCH_SANDBOX").is_ok_and(|v| v == "0");
        let cfg = format!(
            "[security]\ninternal_tls = {tls}\nsandbox = {sandbox}\n\
             [broker]\nlisten = \"127.0.0.1:{mqtt}\"\ntls_listen = \"127.0.0.1:{mqtts}\"\n\
             port = {broker}\n[core_keeper]\nport = {keeper}\n\
             [core_metadata]\nport = {metadata}\n[core_data]\nport = {data}\n{extra}"
        );
        let cfg_path = dir.0.join("outpost.toml");
        std::fs::write(&cfg_path, cfg)?;
        let mut up = tokio::process::Command::new(outpost);
        up.arg("--config")
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .arg("up");
        let proc = spawn_quiet(&mut up, "outpost up")?;
        Ok(Self {
            _dir: dir,
            proc: Some(proc),
            keeper,
            data,
            metadata,
            mqtt,
            mqtts,
            broker,
            tls,
        })
    }

    /// `scheme://127.0.0.1:port` of one of the node's services.
    fn url(&self, port: u16) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// Where devices and the benchmark's publishers reach the bus, and the CA to trust
    /// there (PEM) with TLS.
    fn bus(&self) -> (String, Option<Vec<u8>>) {
        if self.tls {
            let ca = std::fs::read(self.data_dir().join("tls/ca.pem")).ok();
            (format!("mqtts://127.0.0.1:{}", self.mqtts), ca)
        } else {
            (format!("mqtt://127.0.0.1:{}", self.mqtt), None)
        }
    }

    /// A client of the services: with TLS, trusting the node CA and holding the node
    /// administrator's certificate (a plain client until the node made them).
    fn client(&self) -> reqwest::Client {
        let plain = reqwest::Client::new;
        if !self.tls {
            return plain();
        }
        let data = self.data_dir();
        let read = |p: &str| std::fs::read_to_string(data.join(p)).ok();
        let (Some(ca), Some(cert), Some(key)) = (
            read("tls/ca.pem"),
            read("tls/clients/admin.pem"),
            read("secrets/clients/admin.key"),
        ) else {
            return plain();
        };
        match outpost_pki::client_config(&ca, Some((&cert, &key))) {
            Ok(mut tls) => {
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .build()
                    .unwrap_or_else(|_| plain())
            }
            Err(_) => plain(),
        }
    }

    /// What the broker's journal did, for the report: messages written and group commits
    /// (each one fsync with `storage.sync = "full"`), with `secs` of load, as a line and a
    /// JSON value. The journal is on unless `OUTPOST_BROKER__JOURNAL=false` is set.
    async fn journal(&self, http: &reqwest::Client, secs: f64) -> (String, Value) {
        let own = self.tls.then(|| self.client());
        let http = own.as_ref().unwrap_or(http);
        let metrics = Metrics::at(http, &self.url(self.broker)).await;
        let get = |name: &str| metrics.get(name);
        let (appended, commits) = (
            get("outpost_mqtt_broker_journal_appended_total"),
            get("outpost_mqtt_broker_journal_commits_total"),
        );
        let on = std::env::var("OUTPOST_BROKER__JOURNAL").map_or(true, |v| v != "false");
        (
            format!(
                "broker journal {}: {appended:.0} messages in {commits:.0} group commits ({:.0} fsyncs/s, {:.1} messages per commit)",
                if on { "on" } else { "off" },
                commits / secs.max(1e-9),
                appended / commits.max(1.0)
            ),
            json!({"journal": on, "messages": appended, "commits": commits, "fsyncs_per_s": (commits / secs.max(1e-9)).round()}),
        )
    }

    fn data_dir(&self) -> PathBuf {
        self._dir.0.join("data")
    }

    /// The node's configuration file.
    fn config_path(&self) -> PathBuf {
        self._dir.0.join("outpost.toml")
    }

    /// Healthy (see [`Node::healthy`]), and the service on `port` answers its ping.
    async fn serving(&self, http: &reqwest::Client, port: u16) -> bool {
        self.healthy(http).await
            && http
                .get(format!("http://127.0.0.1:{port}/api/v3/ping"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
    }

    async fn healthy(&self, http: &reqwest::Client) -> bool {
        let own = self.tls.then(|| self.client());
        let http = own.as_ref().unwrap_or(http);
        let Ok(r) = http
            .get(format!("{}/api/v3/registry/all", self.url(self.keeper)))
            .send()
            .await
        else {
            return false;
        };
        let Ok(v) = r.json::<Value>().await else {
            return false;
        };
        let up = v["registrations"]
            .as_array()
            .map(|a| a.iter().filter(|r| r["status"] == "UP").count())
            .unwrap_or(0);
        if up < 4 {
            return false;
        }
        for port in [self.data, self.metadata] {
            match http
                .get(format!("{}/api/v3/health", self.url(port)))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {}
                _ => return false,
            }
        }
        true
    }

    fn pids(&self) -> Vec<u32> {
        let Some(root) = self.proc.as_ref().and_then(|p| p.0.id()) else {
            return Vec::new();
        };
        let mut pids = vec![root];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// Each process of the node by name (`up` for the supervisor, else the service name).
    fn services(&self) -> Vec<(String, u32)> {
        self.pids()
            .into_iter()
            .map(|pid| {
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                let mut words = cmd
                    .split_whitespace()
                    .skip_while(|w| *w != "run" && *w != "up");
                let name = match words.next() {
                    Some("run") => words.next().unwrap_or("?").to_string(),
                    Some(w) => w.to_string(),
                    None => "?".to_string(),
                };
                (name, pid)
            })
            .collect()
    }

    async fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop(Duration::from_secs(30)).await;
        }
    }
}

/// kB values of `Rss` and `Pss` from `/proc/<pid>/smaps_rollup`.
fn memory_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The `p` quantile (0 to 1) of `sorted`, by nearest rank; 0 for no samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The `q` quantile of `v`, sorted in place.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, q)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

async fn provision(
    http: &reqwest::Client,
    node: &Node,
    readings: usize,
    devices: usize,
) -> anyhow::Result<()> {
    let md = format!("{}/api/v3", node.url(node.metadata));
    let svc = json!([{"apiVersion": "v3", "service": {"name": SERVICE, "baseAddress": "http://127.0.0.1:1", "adminState": "UNLOCKED"}}]);
    http.post(format!("{md}/deviceservice"))
        .json(&svc)
        .send()
        .await?
        .error_for_status()?;
    let resources: Vec<Value> = (0..readings)
        .map(|r| json!({"name": resource_name(r), "properties": {"valueType": "Float64", "readWrite": "R"}}))
        .collect();
    let profile =
        json!([{"apiVersion": "v3", "profile": {"name": PROFILE, "deviceResources": resources}}]);
    http.post(format!("{md}/deviceprofile"))
        .json(&profile)
        .send()
        .await?
        .error_for_status()?;
    for chunk in (0..devices).collect::<Vec<_>>().chunks(100) {
        let reqs: Vec<Value> = chunk
            .iter()
            .map(|d| {
                json!({"apiVersion": "v3", "device": {"name": device_name(*d), "serviceName": SERVICE, "profileName": PROFILE,
                    "adminState": "UNLOCKED", "operatingState": "UP", "protocols": {"other": {"Address": "bench"}}}})
            })
            .collect();
        http.post(format!("{md}/device?bypassValidation=true"))
            .json(&reqs)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

async fn ingest(
    outpost: &Path,
    load: Load,
    window: usize,
    encoding: &str,
    connections: usize,
) -> anyhow::Result<()> {
    let Load {
        events,
        readings,
        devices,
    } = load;
    let total_readings = events * readings as u64;
    let http = reqwest::Client::new();
    let args = |url: String| PubArgs {
        url,
        count: events,
        readings,
        devices,
        window,
        encoding: encoding.to_string(),
        connections,
        tls: None,
    };

    // Reference: mosquitto, a subscriber process, the same publisher.
    let mport = free_port()?;
    let _mosq = mosquitto_unbounded(mport).await?;
    let exe = std::env::current_exe()?;
    let mut sub = tokio::process::Command::new(&exe)
        .args([
            "sub",
            "--url",
            &format!("mqtt://127.0.0.1:{mport}"),
            "--count",
            &events.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut sub_out = tokio::io::BufReader::new(sub.stdout.take().context("sub stdout")?);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut sub_out, &mut line).await?; // "ready"
    let (start, pub_secs, acked) = publish(&args(format!("mqtt://127.0.0.1:{mport}"))).await?;
    line.clear();
    tokio::io::AsyncBufReadExt::read_line(&mut sub_out, &mut line).await?;
    let times: Value = serde_json::from_str(line.trim()).context("sub result")?;
    let last = times["last"].as_i64().unwrap_or(0);
    let raw_secs = (last - start) as f64 / 1e9;
    let raw_readings_s = total_readings as f64 / raw_secs;
    println!(
        "mosquitto: {events} events ({acked} acknowledged) pub {pub_secs:.2}s, delivered in {raw_secs:.2}s: {:.0} msgs/s = {raw_readings_s:.0} readings/s",
        events as f64 / raw_secs
    );

    // Outpost: the embedded broker into core-data, validation on, fsync per commit.
    let mut node = Node::spawn(outpost, &format!("[bus]\nencoding = \"{encoding}\"\n"))?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    // With TLS on every hop (`OUTPOST_BENCH_TLS=1`): the services' APIs with the
    // administrator's certificate, and the publisher on MQTT over TLS with it, as a
    // service of the node would be.
    let http = node.client();
    provision(&http, &node, readings, devices).await?;
    let count_url = format!("{}/api/v3/reading/count", node.url(node.data));
    let (bus_url, ca) = node.bus();
    let mut pub_args = args(bus_url);
    if let Some(ca) = ca {
        let data = node.data_dir();
        pub_args.tls = Some((
            std::fs::read(data.join("tls/clients/admin.pem"))?,
            std::fs::read(data.join("secrets/clients/admin.key"))?,
            ca,
        ));
    }
    let services = node.services();
    let cpu_before: Vec<u64> = services
        .iter()
        .map(|(_, p)| gateway::cpu_ticks(&[*p]))
        .collect();
    let (start, pub_secs, acked) = publish(&pub_args).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let n = count(&http, &count_url).await;
        if n >= total_readings {
            break unix_nanos();
        }
        if Instant::now() > deadline {
            bail!("only {n} of {total_readings} readings persisted after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let secs = (done - start) as f64 / 1e9;
    let readings_s = total_readings as f64 / secs;
    // The node's CPU per reading (clock ticks of 10 ms), from the first publish to the last
    // reading persisted.
    let node_ticks: u64 = services
        .iter()
        .zip(&cpu_before)
        .map(|((_, p), b)| gateway::cpu_ticks(&[*p]).saturating_sub(*b))
        .sum();
    let node_us = node_ticks as f64 * 10_000.0 / total_readings as f64;
    {
        let metrics = Metrics::at(&http, &node.url(node.data)).await;
        let get = |name: &str| metrics.get(name);
        let commits = get("outpost_core_data_commit_batch_events_count");
        println!(
            "core-data: {commits:.0} commits, {:.0} events per commit, {:.1} ms per commit",
            get("outpost_core_data_commit_batch_events_sum") / commits.max(1.0),
            1000.0 * get("outpost_core_data_commit_duration_seconds_sum") / commits.max(1.0)
        );
    }
    let (journal_line, journal) = node.journal(&http, secs).await;
    println!("{journal_line}");
    let tls = node.tls;
    node.stop().await;
    println!(
        "outpost:   {events} events ({acked} acknowledged) pub {pub_secs:.2}s, persisted in {secs:.2}s: {:.0} events/s = {readings_s:.0} readings/s ({}), node CPU {node_us:.2} µs per reading",
        events as f64 / secs,
        if tls {
            "mutual TLS on every hop, the publisher over TLS"
        } else {
            "plaintext"
        }
    );
    let ratio = readings_s / raw_readings_s;
    println!("ratio outpost/mosquitto: {ratio:.2}");
    println!(
        "RESULT {}",
        json!({"bench": "ingest", "events": events, "readings_per_event": readings, "devices": devices, "encoding": encoding,
               "mosquitto_readings_per_s": raw_readings_s.round(), "outpost_readings_per_s": readings_s.round(),
               "ratio": (ratio * 100.0).round() / 100.0, "broker": journal, "connections": connections,
               "tls": tls, "node_cpu_us_per_reading": (node_us * 100.0).round() / 100.0})
    );
    Ok(())
}

async fn footprint(outpost: &Path, runs: usize, idle_s: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let mut cold = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut node = Node::spawn(outpost, "")?;
        wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        node.stop().await;
    }
    let cold_ms = median(&mut cold);
    println!(
        "start to all services registered and healthy (first start, fresh data dir): median {cold_ms:.0} ms over {runs} runs {cold:.0?}"
    );

    let node = Node::spawn(outpost, "")?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let mut rss = 0;
    let mut pss = 0;
    let mut per = Vec::new();
    for (name, pid) in node.services() {
        let (r, p) = memory_of(pid);
        let name = if name == "up" {
            name
        } else {
            format!("run {name}")
        };
        per.push(format!("{name}: RSS {r} kB, PSS {p} kB"));
        rss += r;
        pss += p;
    }
    for p in &per {
        println!("  {p}");
    }
    println!(
        "idle memory of all {} processes after {idle_s}s: RSS {:.1} MB (sum), PSS {:.1} MB (shared pages counted once)",
        per.len(),
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    println!(
        "RESULT {}",
        json!({"bench": "footprint", "startup_ms_median": cold_ms.round(), "runs": runs, "processes": per.len(),
               "idle_rss_mb": (rss as f64 / 102.4).round() / 10.0, "idle_pss_mb": (pss as f64 / 102.4).round() / 10.0})
    );
    Ok(())
}

fn encoding_sizes() -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for readings in [1usize, 10] {
        let json = event_message(
            &device_name(42),
            1_763_763_000_000_000_000,
            readings,
            7,
            "json",
        )?;
        let cbor = event_message(
            &device_name(42),
            1_763_763_000_000_000_000,
            readings,
            7,
            "cbor",
        )?;
        let per = |b: &[u8]| b.len() as f64 / readings as f64;
        println!(
            "{readings:>2} reading(s) per event: JSON {} B ({:.0} B/reading), CBOR {} B ({:.0} B/reading), CBOR/JSON {:.2}",
            json.len(),
            per(&json),
            cbor.len(),
            per(&cbor),
            cbor.len() as f64 / json.len() as f64
        );
        rows.push(json!({"readings_per_event": readings, "json_bytes_per_reading": per(&json).round(),
                         "cbor_bytes_per_reading": per(&cbor).round(),
                         "cbor_over_json": (cbor.len() as f64 / json.len() as f64 * 100.0).round() / 100.0}));
    }
    println!("RESULT {}", json!({"bench": "encoding", "rows": rows}));
    Ok(())
}

async fn store(load: Load, batch: usize, sync: &str) -> anyhow::Result<()> {
    let Load {
        events,
        readings,
        devices,
    } = load;
    use outpost_core_data::store::{EventStore as _, IngestEvent};
    let dir = TempDir::new("store")?;
    let opts = outpost_storage::OpenOptions {
        sync: if sync == "normal" {
            outpost_storage::SyncMode::Normal
        } else {
            outpost_storage::SyncMode::Full
        },
        cache_kib: 8192,
    };
    let loc = outpost_storage::Location::new(&dir.0, "core-data");
    let db = outpost_storage::Db::open(&loc, &opts, outpost_core_data::sqlite::MIGRATIONS, 1)?;
    db.checkpoint_in_background(&loc, &opts, Duration::from_millis(250))?;
    let st = outpost_core_data::sqlite::SqliteEventStore::start(
        db,
        outpost_core_data::sqlite::WriterMetrics {
            batch_events: "b",
            commit_seconds: "c",
        },
    )?;
    let base = unix_nanos();
    let mut all = Vec::new();
    for i in 0..events {
        let dev = device_name(usize::try_from(i)? % devices.max(1));
        let bytes = event_message(&dev, base + i64::try_from(i)?, readings, i, "json")?;
        let env = outpost_contracts::envelope::decode_event(&bytes)?;
        let nums = env.payload.event.validate().map_err(anyhow::Error::msg)?;
        all.push(IngestEvent {
            event: env.payload.event,
            nums,
        });
    }
    let me = std::process::id();
    let cpu_before = gateway::cpu_ticks(&[me]);
    let t = Instant::now();
    for chunk in all.chunks(batch) {
        st.append(chunk.to_vec().into()).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = gateway::cpu_ticks(&[me]).saturating_sub(cpu_before);
    let total = events * readings as u64;
    println!(
        "store: {events} events x {readings} readings in batches of {batch} (sync {sync}): {secs:.2}s, {:.0} readings/s, {:.1} ms per batch, {:.2} µs CPU per reading",
        total as f64 / secs,
        1000.0 * secs / (events as f64 / batch as f64),
        cpu as f64 * 10_000.0 / total as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Pub(a) => {
                let (_, secs, acked) = publish(&a).await?;
                println!(
                    "{}",
                    json!({"published": a.count, "acknowledged": acked, "seconds": secs})
                );
                Ok(())
            }
            Cmd::Sub { url, count, filter } => {
                let (first, last) = subscribe(&url, count, &filter, || println!("ready")).await?;
                println!("{}", json!({"first": first, "last": last}));
                Ok(())
            }
            Cmd::Ingest {
                outpost,
                load,
                window,
                encoding,
                connections,
            } => ingest(&outpost, load, window, &encoding, connections).await,
            Cmd::Footprint {
                outpost,
                runs,
                idle_s,
            } => footprint(&outpost, runs, idle_s).await,
            Cmd::Encoding => encoding_sizes(),
            Cmd::Store { load, batch, sync } => store(load, batch, &sync).await,
            Cmd::Modbus(a) => modbus::run(&a).await,
            Cmd::Opcua(a) => opcua::run(&a).await,
            Cmd::Coap(a) => coap::run(&a).await,
            Cmd::MqttDevices {
                outpost,
                devices,
                per_device,
                readings,
                window,
                encoding,
            } => {
                devices::mqtt_devices(&outpost, devices, per_device, readings, window, &encoding)
                    .await
            }
            Cmd::Reconnect {
                outpost,
                devices,
                rounds,
            } => devices::reconnect(&outpost, devices, rounds).await,
            Cmd::Command { outpost, requests } => devices::command_rtt(&outpost, requests).await,
            Cmd::Gateway(a) => gateway::run(&a).await,
            Cmd::Queue(a) => export::queue(&a),
            Cmd::Fleet(a) => fleet::run(&a).await,
            Cmd::ScaleIngest(a) => scale::ingest(&a).await,
            Cmd::ScaleCloud(a) => scale::cloud(&a).await,
            Cmd::BusIngest(a) => scale::bus(&a).await,
            Cmd::Export(a) => export::export(&a).await,
            Cmd::Ota(a) => ota::run(&a).await,
            Cmd::Notifications {
                outpost,
                count,
                concurrency,
                alerts,
            } => support::notifications(&outpost, count, concurrency, alerts).await,
            Cmd::Scheduler {
                outpost,
                jobs,
                seconds,
            } => support::scheduler(&outpost, jobs, seconds).await,
        }
    })
}
