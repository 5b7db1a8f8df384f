//! Scale-out on real engines: core-data on PostgreSQL against SQLite with one to N
//! instances sharing the bus (`scale-ingest`), the cloud node's ingest from many edges into
//! one and two instances sharing one PostgreSQL (`scale-cloud`), and core-data's ingest
//! through NATS JetStream against the embedded broker (`bus-ingest`). Each prints the rate
//! and the CPU each part spent per reading, so a capacity model can extrapolate from them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::export::Cloud;
use crate::{
    Load, Metrics, Node, Proc, PubArgs, count, device_name, free_port, provision, publish,
    resource_name, spawn_quiet, unix_nanos, wait_until,
};

#[derive(clap::Args, Clone)]
pub struct IngestArgs {
    #[arg(long)]
    pub outpost: PathBuf,
    #[command(flatten)]
    pub(crate) load: Load,
    /// core-data instances on PostgreSQL, up to this many (1, 2, … N).
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// MQTT connections the publisher spreads the devices over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
}

#[derive(clap::Args, Clone)]
pub struct BusArgs {
    #[arg(long)]
    pub outpost: PathBuf,
    #[command(flatten)]
    pub(crate) load: Load,
    /// Publishes in flight (awaiting their acknowledgement) at once.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
}

#[derive(clap::Args, Clone)]
pub struct CloudArgs {
    #[arg(long)]
    pub outpost: PathBuf,
    /// Simulated edges, each sending its batches one after another on its own connection.
    #[arg(long, default_value_t = 50)]
    pub edges: usize,
    /// Batches each edge sends.
    #[arg(long, default_value_t = 10)]
    pub batches: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Readings per event.
    #[arg(long, default_value_t = 10)]
    pub readings: usize,
    /// Cloud instances, up to this many (1, 2, … N).
    #[arg(long, default_value_t = 2)]
    pub instances: usize,
}

/// Clock ticks (10 ms) `pid` and its children spent, those it already reaped included.
/// A child that exits between two readings moves from the second sum to the first's
/// reaped part, so differences stay right.
fn tree_ticks(pid: u32) -> u64 {
    let stat = |p: u32| -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = text.rsplit_once(") ")?.1;
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // utime, stime, cutime, cstime.
        Some(f.get(11..15)?.to_vec())
    };
    let own: u64 = stat(pid).map_or(0, |f| f.iter().sum());
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(tree_ticks)
        .sum();
    own + children
}

/// The postmaster of the PostgreSQL cluster in `data`.
fn postmaster(data: &Path) -> anyhow::Result<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("the postmaster's pid")
}

/// CPU microseconds per reading of `ticks` clock ticks over `readings`.
fn us_per(ticks: u64, readings: u64) -> f64 {
    (ticks as f64 * 10_000.0 / readings.max(1) as f64 * 100.0).round() / 100.0
}

/// When core-data's reading count at `count_url` reached `total` (unix ns), once every
/// one of the `(acked, sent)` events was acknowledged.
async fn persisted(
    http: &reqwest::Client,
    count_url: &str,
    (acked, sent): (u64, u64),
    total: u64,
) -> anyhow::Result<i64> {
    if acked != sent {
        bail!("{acked} of {sent} events acknowledged");
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let got = count(http, count_url).await;
        if got >= total {
            return Ok(unix_nanos());
        }
        if Instant::now() > deadline {
            bail!("only {got} of {total} readings persisted after 900 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Another core-data instance of `node` (named `name`, on `port`), on the node's
/// configuration and data dir as a second container or host would run it.
fn core_data_instance(outpost: &Path, node: &Node, name: &str, port: u16) -> anyhow::Result<Proc> {
    let mut c = tokio::process::Command::new(outpost);
    c.arg("--config")
        .arg(node.config_path())
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(["--set", &format!("core_data.port={port}")])
        .args(["--set", &format!("node.instance=\"{name}\"")])
        .args(["run", "core-data"]);
    spawn_quiet(&mut c, "a core-data instance")
}

pub async fn ingest(a: &IngestArgs) -> anyhow::Result<()> {
    let Load {
        events,
        readings,
        devices,
    } = a.load;
    let total = events * readings as u64;
    let pg = tokio::task::spawn_blocking(outpost_testkit::postgres::Private::start)
        .await
        .context("start PostgreSQL")?;
    let pg_pid = postmaster(&pg.data_dir())?;
    let mut runs = vec![("sqlite", 1)];
    runs.extend((1..=a.instances.max(1)).map(|n| ("postgres", n)));
    let mut results = Vec::new();
    for (backend, n) in runs {
        let storage = if backend == "postgres" {
            pg.database().storage_toml("core_data")
        } else {
            String::new()
        };
        let mut node = Node::spawn(&a.outpost, &storage)?;
        let http = reqwest::Client::new();
        wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
        provision(&http, &node, readings, devices).await?;
        let mut extra = Vec::new();
        for i in 1..n {
            let port = free_port()?;
            let proc = core_data_instance(&a.outpost, &node, &format!("i{i}"), port)?;
            extra.push((proc, port));
        }
        for (_, port) in &extra {
            // Consuming once its health reports the bus check.
            let url = format!("http://127.0.0.1:{port}/api/v3/health");
            wait_until("a core-data instance", Duration::from_secs(60), || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    match http.get(url).send().await {
                        Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"ingest\"")),
                        Err(_) => false,
                    }
                }
            })
            .await?;
        }
        let services = node.services();
        let of = |name: &str| -> Vec<u32> {
            services
                .iter()
                .filter(|(s, _)| s == name)
                .map(|(_, p)| *p)
                .collect()
        };
        let mut core_data = of("core-data");
        core_data.extend(extra.iter().filter_map(|(p, _)| p.0.id()));
        let broker = of("mqtt-broker");
        let root = node.pids().first().copied().unwrap_or(0);
        let ticks = |pids: &[u32]| -> u64 { pids.iter().map(|p| tree_ticks(*p)).sum() };
        let sample = || {
            (
                ticks(&core_data),
                ticks(&broker),
                tree_ticks(root)
                    + extra
                        .iter()
                        .filter_map(|(p, _)| p.0.id())
                        .map(tree_ticks)
                        .sum::<u64>(),
                tree_ticks(pg_pid),
            )
        };
        let before = sample();
        let count_url = format!("{}/api/v3/reading/count", node.url(node.data));
        let (start, _pub_s, acked) = publish(&PubArgs {
            url: node.bus().0,
            count: events,
            readings,
            devices,
            window: 1024,
            encoding: "json".into(),
            connections: a.connections,
            tls: None,
        })
        .await?;
        let done = persisted(&http, &count_url, (acked, events), total).await?;
        let after = sample();
        let secs = (done - start) as f64 / 1e9;
        let rate = total as f64 / secs;
        let mut commits = 0.0;
        let mut committed = 0.0;
        let mut urls = vec![node.url(node.data)];
        urls.extend(extra.iter().map(|(_, p)| format!("http://127.0.0.1:{p}")));
        for u in &urls {
            let m = Metrics::at(&http, u).await;
            commits += m.get("outpost_core_data_commit_batch_events_count");
            committed += m.get("outpost_core_data_commit_batch_events_sum");
        }
        let cpu = json!({
            "core_data": us_per(after.0 - before.0, total),
            "broker": us_per(after.1 - before.1, total),
            "postgres": if backend == "postgres" { us_per(after.3 - before.3, total) } else { 0.0 },
            "node": us_per(after.2 - before.2, total),
        });
        // The SQLite store counts its commits; the PostgreSQL one does not.
        let per_commit = (commits > 0.0).then(|| (committed / commits).round());
        println!(
            "core-data on {backend}, {n} instance(s): {total} readings persisted in {secs:.2} s = {rate:.0} readings/s{}; CPU µs per reading: core-data {} (all instances), broker {}, PostgreSQL {}, node (every process of the node and the instances) {}",
            per_commit.map_or(String::new(), |c| format!(", {c} events per commit")),
            cpu["core_data"],
            cpu["broker"],
            cpu["postgres"],
            cpu["node"]
        );
        let result = json!({"bench": "scale-ingest", "backend": backend, "instances": n,
            "events": events, "readings_per_event": readings, "readings_per_s": rate.round(),
            "events_per_commit": per_commit, "cpu_us_per_reading": cpu});
        println!("RESULT {result}");
        results.push(result);
        for (p, _) in extra {
            p.stop(Duration::from_secs(20)).await;
        }
        node.stop().await;
    }
    Ok(())
}

/// One simulated edge: its name, client (its enrollment's certificate) and batches, zstd
/// compressed as the export service sends them.
struct Edge {
    name: String,
    http: reqwest::Client,
    bodies: Vec<Vec<u8>>,
}

/// The batches of edge `e`: `batches` of `batch` events of `readings` Float64 readings,
/// sequence numbers from 1, as an export queue numbers them.
fn edge_batches(e: usize, a: &CloudArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    let base = unix_nanos();
    let mut bodies = Vec::with_capacity(a.batches);
    for b in 0..a.batches {
        let items: Vec<Value> = (0..a.batch)
            .map(|k| {
                let seq = (b * a.batch + k + 1) as u64;
                let device = device_name(k % 50);
                let origin = base + seq as i64;
                let readings: Vec<Value> = (0..a.readings)
                    .map(|r| {
                        json!({"id": uuid::Uuid::new_v4().to_string(), "origin": origin,
                        "deviceName": device, "resourceName": resource_name(r),
                        "profileName": crate::PROFILE, "valueType": "Float64",
                        "value": format!("{}.{}", seq % 1000, r)})
                    })
                    .collect();
                json!({"seq": seq, "enqueuedMs": origin / 1_000_000, "data": {"kind": "event", "event": {
                    "apiVersion": "v3", "id": uuid::Uuid::new_v4().to_string(), "deviceName": device,
                    "profileName": crate::PROFILE, "sourceName": "all", "origin": origin,
                    "readings": readings}}})
            })
            .collect();
        let body = serde_json::to_vec(&json!({"incarnation": 1 + e as u64, "priority": "normal",
            "items": items, "backlog": {"items": 0, "bytes": 0}}))?;
        let mut z = zstd::Encoder::new(Vec::new(), 3)?;
        z.write_all(&body)?;
        bodies.push(z.finish()?);
    }
    Ok(bodies)
}

impl Edge {
    fn new(name: String, identity: &Path, bodies: Vec<Vec<u8>>) -> anyhow::Result<Self> {
        let b: Value = serde_json::from_slice(&std::fs::read(identity)?)?;
        let field = |k: &str| b[k].as_str().map(str::to_owned).context("identity bundle");
        let tls =
            outpost_pki::client_config(&field("ca")?, Some((&field("cert")?, &field("key")?)))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { name, http, bodies })
    }

    /// Sends every batch to `url`, one after another; a 503 is sent again.
    async fn send(&self, url: &str) -> anyhow::Result<u64> {
        let mut accepted = 0;
        for body in &self.bodies {
            loop {
                let r = self
                    .http
                    .post(format!("{url}/api/v3/ingest"))
                    .header("content-type", "application/json")
                    .header("content-encoding", "zstd")
                    .body(body.clone())
                    .send()
                    .await?;
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let status = r.status();
                let v: Value = r.json().await?;
                if !status.is_success() || v["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
                    bail!("{}: {status} {v}", self.name);
                }
                accepted += v["accepted"].as_u64().unwrap_or(0);
                break;
            }
        }
        Ok(accepted)
    }
}

pub async fn cloud(a: &CloudArgs) -> anyhow::Result<()> {
    let pg = tokio::task::spawn_blocking(outpost_testkit::postgres::Private::start)
        .await
        .context("start PostgreSQL")?;
    let pg_pid = postmaster(&pg.data_dir())?;
    let per_edge = (a.batches * a.batch) as u64;
    let readings = a.edges as u64 * per_edge * a.readings as u64;
    for n in 1..=a.instances.max(1) {
        let db = pg.database();
        let mut clouds = vec![Cloud::start_with(&a.outpost, db.settings("cloud")).await?];
        for _ in 1..n {
            let beside = Cloud::start_beside(&clouds[0], &a.outpost).await?;
            clouds.push(beside);
        }
        let mut edges = Vec::with_capacity(a.edges);
        for e in 0..a.edges {
            let name = format!("bench-edge-{e}");
            let identity = clouds[0].enroll(&a.outpost, &name)?;
            edges.push(Arc::new(Edge::new(name, &identity, edge_batches(e, a)?)?));
        }
        let urls: Vec<String> = clouds
            .iter()
            .map(|c| format!("https://127.0.0.1:{}", c.port))
            .collect();
        let pids: Vec<u32> = clouds.iter().filter_map(Cloud::pid).collect();
        let sample = || {
            (
                pids.iter().map(|p| tree_ticks(*p)).sum::<u64>(),
                tree_ticks(pg_pid),
            )
        };
        let before = sample();
        let start = Instant::now();
        let tasks: Vec<_> = edges
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (e, url) = (Arc::clone(e), urls[i % urls.len()].clone());
                tokio::spawn(async move { e.send(&url).await })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        let after = sample();
        if accepted != a.edges as u64 * per_edge {
            bail!(
                "{accepted} of {} events accepted",
                a.edges as u64 * per_edge
            );
        }
        let rate = readings as f64 / secs;
        let (cloud_us, pg_us) = (
            us_per(after.0 - before.0, readings),
            us_per(after.1 - before.1, readings),
        );
        // What the data takes on the database's disk (tables and indexes, values sealed),
        // less what an empty database of the cloud's schema takes.
        let size = |db: &str| -> f64 {
            pg.psql_in(db, "SELECT pg_database_size(current_database())")
                .trim()
                .parse()
                .unwrap_or(0.0)
        };
        let bytes_per = (size(&db.name) - size("template1")) / readings as f64;
        println!(
            "cloud, {n} instance(s) on PostgreSQL: {} edges x {per_edge} events x {} readings = {readings} readings in {secs:.2} s = {rate:.0} readings/s; CPU µs per reading: cloud {cloud_us} (all instances), PostgreSQL {pg_us}; {bytes_per:.0} bytes per reading in the database",
            a.edges, a.readings
        );
        println!(
            "RESULT {}",
            json!({"bench": "scale-cloud", "instances": n, "edges": a.edges, "readings": readings,
                "readings_per_s": rate.round(), "cpu_us_per_reading": {"cloud": cloud_us, "postgres": pg_us},
                "database_bytes_per_reading": bytes_per.round()})
        );
        for mut c in clouds {
            c.stop().await;
        }
    }
    Ok(())
}

/// Publishes `msgs` (subject, payload) to JetStream with `window` awaiting their
/// acknowledgement at once; returns (start unix ns, acknowledged).
async fn publish_nats(
    nats: &outpost_testkit::nats::NatsServer,
    msgs: Vec<(String, Vec<u8>)>,
    window: usize,
) -> anyhow::Result<(i64, u64)> {
    let client = async_nats::ConnectOptions::new()
        .user_and_password(
            outpost_testkit::nats::USER.into(),
            std::fs::read_to_string(&nats.password_file)?.trim().into(),
        )
        .require_tls(true)
        .add_root_certificates(nats.ca.clone())
        .connect(nats.url())
        .await?;
    let js = async_nats::jetstream::new(client);
    let sem = Arc::new(tokio::sync::Semaphore::new(window.max(1)));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = unix_nanos();
    let mut tasks = Vec::with_capacity(msgs.len());
    for (subject, payload) in msgs {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let ack = js.publish(subject, payload.into()).await?;
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            if ack.await.is_ok() {
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((start, acked.load(std::sync::atomic::Ordering::Relaxed)))
}

/// core-data (SQLite) fed through the embedded broker (100 MQTT connections, QoS 1) and
/// through NATS JetStream (one connection, `window` publishes awaiting their
/// acknowledgement), the same events.
pub async fn bus(a: &BusArgs) -> anyhow::Result<()> {
    let Load {
        events,
        readings,
        devices,
    } = a.load;
    let total = events * readings as u64;
    for engine in ["embedded", "nats"] {
        let nats = (engine == "nats").then(outpost_testkit::nats::NatsServer::start);
        // On NATS the embedded broker still runs (idle: nothing uses it).
        let extra = nats
            .as_ref()
            .map_or_else(String::new, outpost_testkit::nats::NatsServer::bus_toml);
        let mut node = Node::spawn(&a.outpost, &extra)?;
        let http = reqwest::Client::new();
        wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
        provision(&http, &node, readings, devices).await?;
        let root = node.pids().first().copied().unwrap_or(0);
        let server = nats
            .as_ref()
            .and_then(outpost_testkit::nats::NatsServer::pid);
        let sample = || (tree_ticks(root), server.map_or(0, tree_ticks));
        let count_url = format!("{}/api/v3/reading/count", node.url(node.data));
        let before = sample();
        let (start, acked) = match &nats {
            None => {
                let (start, _, acked) = publish(&PubArgs {
                    url: node.bus().0,
                    count: events,
                    readings,
                    devices,
                    window: a.window,
                    encoding: "json".into(),
                    connections: 100,
                    tls: None,
                })
                .await?;
                (start, acked)
            }
            Some(n) => {
                let base = unix_nanos();
                let mut msgs = Vec::with_capacity(usize::try_from(events)?);
                for i in 0..events {
                    let d = usize::try_from(i)? % devices.max(1);
                    let dev = device_name(d);
                    let payload =
                        crate::event_message(&dev, base + i64::try_from(i)?, readings, i, "json")?;
                    msgs.push((outpost_bus::nats::subject(&crate::topic(&dev)), payload));
                }
                publish_nats(n, msgs, a.window).await?
            }
        };
        let done = persisted(&http, &count_url, (acked, events), total)
            .await
            .with_context(|| format!("through {engine}"))?;
        let after = sample();
        let secs = (done - start) as f64 / 1e9;
        let rate = total as f64 / secs;
        let (node_us, server_us) = (
            us_per(after.0 - before.0, total),
            us_per(after.1 - before.1, total),
        );
        println!(
            "bus {engine}: {total} readings persisted in {secs:.2} s = {rate:.0} readings/s; CPU µs per reading: node {node_us}{}",
            if nats.is_some() {
                format!(", nats-server {server_us}")
            } else {
                String::new()
            }
        );
        println!(
            "RESULT {}",
            json!({"bench": "bus-ingest", "engine": engine, "events": events, "readings_per_event": readings,
                "readings_per_s": rate.round(), "cpu_us_per_reading": {"node": node_us, "nats_server": server_us}})
        );
        node.stop().await;
    }
    Ok(())
}
