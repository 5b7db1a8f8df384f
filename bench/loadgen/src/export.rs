//! Edge to cloud: the export service's queue and the cloud node.
//!
//! - `queue`: the raw queue: batches appended with an fsync each, then drained.
//! - `export`: through a real edge node and a real cloud node on loopback: the sustained
//!   enqueue rate from the bus with the cloud down (every append synced), the drain rate
//!   when the cloud comes back, bytes on the wire per reading, device-to-cloud latency with
//!   the link up, and the data reduction of a typical rules pipeline (1 Hz readings to
//!   one-minute aggregates plus a threshold alert).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mqtt5::{ConnectOptions, MqttClient};
use serde_json::{Value, json};

use crate::{
    Node, Proc, PubArgs, TempDir, event_message, free_port, median, publish, publish_qos1,
    spawn_quiet, topic, unix_nanos, wait_until,
};

#[derive(clap::Args, Clone)]
pub struct QueueArgs {
    /// Items appended in all.
    #[arg(long, default_value_t = 200_000)]
    pub items: u64,
    /// Items per append (each append is synced).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Bytes per item (an EdgeX event of 10 readings as JSON is about 2.3 KB).
    #[arg(long, default_value_t = 2300)]
    pub item_bytes: usize,
}

/// Raw queue throughput: appends with fsync, then peek + ack until empty.
pub fn queue(a: &QueueArgs) -> anyhow::Result<()> {
    use outpost_queue::{Config, Priority, Queue};
    let dir = TempDir::new("queue")?;
    let cfg = Config {
        max_bytes: (a.items * (a.item_bytes as u64 + 64)).max(1 << 20) * 2,
        ..Config::default()
    };
    let mut q = Queue::open(&dir.0.join("q"), &[7; 32], cfg)?;
    let item: Vec<u8> = (0..a.item_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let batch: Vec<&[u8]> = vec![&item; a.batch];
    let start = Instant::now();
    let mut n = 0u64;
    while n < a.items {
        q.append(Priority::Normal, &batch, 1)?;
        n += a.batch as u64;
    }
    let append_s = start.elapsed().as_secs_f64();
    drop(q);
    // Reopen: what a restarted node does before sending.
    let start = Instant::now();
    let mut q = Queue::open(
        &dir.0.join("q"),
        &[7; 32],
        Config {
            max_bytes: u64::MAX / 4,
            ..Config::default()
        },
    )?;
    let open_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut drained = 0u64;
    while let Some(b) = q.peek(1000, 1 << 20, 1)? {
        drained += b.items.len() as u64;
        q.ack(&b)?;
    }
    let drain_s = start.elapsed().as_secs_f64();
    if drained != n {
        bail!("drained {drained} of {n} items");
    }
    let mb = (n * a.item_bytes as u64) as f64 / 1e6;
    println!(
        "queue: {n} items of {} B in appends of {} (fsync each): {:.0} items/s ({:.0} MB/s); reopen {:.2} s; drain {:.0} items/s ({:.0} MB/s)",
        a.item_bytes,
        a.batch,
        n as f64 / append_s,
        mb / append_s,
        open_s,
        n as f64 / drain_s,
        mb / drain_s
    );
    println!(
        "RESULT {}",
        json!({"bench": "queue", "items": n, "item_bytes": a.item_bytes, "batch": a.batch,
               "append_items_per_s": n as f64 / append_s, "append_mb_per_s": mb / append_s,
               "reopen_s": open_s, "drain_items_per_s": n as f64 / drain_s})
    );
    Ok(())
}

#[derive(clap::Args, Clone)]
pub struct ExportArgs {
    #[arg(long)]
    pub outpost: PathBuf,
    /// Events published for the enqueue and drain phases.
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    #[arg(long, default_value_t = 10)]
    pub readings: usize,
    /// The outage phase: events/s published throughout (the ingest rate), and how long the
    /// cloud is down.
    #[arg(long, default_value_t = 1000)]
    pub outage_rate: u64,
    #[arg(long, default_value_t = 20)]
    pub outage_s: u64,
    /// Events for the latency phase, published at `latency_rate` per second.
    #[arg(long, default_value_t = 2000)]
    pub latency_events: u64,
    #[arg(long, default_value_t = 200)]
    pub latency_rate: u64,
    /// Devices and simulated hours of 1 Hz readings for the reduction phase.
    #[arg(long, default_value_t = 20)]
    pub reduction_devices: usize,
    #[arg(long, default_value_t = 1)]
    pub reduction_hours: u64,
}

/// A cloud node for the benchmark.
pub(crate) struct Cloud {
    dir: TempDir,
    pub(crate) port: u16,
    proc: Option<Proc>,
    http: reqwest::Client,
    token: String,
    /// `--set` settings it runs with (its storage, say).
    settings: Vec<String>,
}

impl Cloud {
    async fn start(outpost: &Path) -> anyhow::Result<Self> {
        Self::start_with(outpost, Vec::new()).await
    }

    /// A cloud node run with `settings` (`--set` each).
    pub(crate) async fn start_with(outpost: &Path, settings: Vec<String>) -> anyhow::Result<Self> {
        let mut c = Self::new(settings)?;
        c.launch(outpost).await?;
        Ok(c)
    }

    /// Not started yet: its own data dir and port.
    fn new(settings: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            dir: TempDir::new("cloud")?,
            port: free_port()?,
            proc: None,
            http: reqwest::Client::new(),
            token: String::new(),
            settings,
        })
    }

    /// Another instance of `other`'s cloud sharing its store: its CA, keys and admin
    /// token (copied before it starts), its own port and data dir.
    pub(crate) async fn start_beside(other: &Cloud, outpost: &Path) -> anyhow::Result<Self> {
        let mut c = Self::new(other.settings.clone())?;
        let data = c.dir.0.join("data");
        std::fs::create_dir_all(&data)?;
        for d in ["tls", "secrets"] {
            let st = std::process::Command::new("cp")
                .arg("-a")
                .arg(other.dir.0.join("data").join(d))
                .arg(&data)
                .status()?;
            if !st.success() {
                bail!("copy the cloud's {d}");
            }
        }
        std::process::Command::new("chown")
            .arg("--reference")
            .arg(other.dir.0.join("data"))
            .arg(&data)
            .status()?;
        c.launch(outpost).await?;
        Ok(c)
    }

    /// The cloud node's process, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.0.id())
    }

    async fn launch(&mut self, outpost: &Path) -> anyhow::Result<()> {
        let mut cloud = tokio::process::Command::new(outpost);
        cloud
            .arg("--data-dir")
            .arg(self.dir.0.join("data"))
            .args(["--set", &format!("cloud.port={}", self.port)]);
        for s in &self.settings {
            cloud.args(["--set", s]);
        }
        cloud.arg("cloud");
        self.proc = Some(spawn_quiet(&mut cloud, "outpost cloud")?);
        let ca = self.dir.0.join("data/tls/cloud-ca.pem");
        wait_until("the cloud CA", Duration::from_secs(20), || {
            let ca = ca.clone();
            async move { ca.exists() }
        })
        .await?;
        let tls = outpost_pki::client_config(&std::fs::read_to_string(&ca)?, None)?;
        self.http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .build()?;
        self.token = std::fs::read_to_string(self.dir.0.join("data/secrets/cloud-admin.token"))?
            .trim()
            .to_string();
        let (http, url) = (
            self.http.clone(),
            format!("https://127.0.0.1:{}/api/v3/ping", self.port),
        );
        wait_until("the cloud node", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop(Duration::from_secs(20)).await;
        }
    }

    pub(crate) fn enroll(&self, outpost: &Path, edge: &str) -> anyhow::Result<PathBuf> {
        let out = self.dir.0.join(format!("{edge}.json"));
        let mut cmd = std::process::Command::new(outpost);
        cmd.arg("--data-dir").arg(self.dir.0.join("data"));
        for s in &self.settings {
            cmd.args(["--set", s]);
        }
        let st = cmd
            .args(["cloud", "enroll", edge, "--out"])
            .arg(&out)
            .args(["--url", &format!("https://127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("enroll failed");
        }
        Ok(out)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("https://127.0.0.1:{}/api/v3{path}", self.port))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

async fn export_status(http: &reqwest::Client, port: u16) -> anyhow::Result<Value> {
    let v: Value = http
        .get(format!("http://127.0.0.1:{port}/api/v3/export/status"))
        .send()
        .await?
        .json()
        .await?;
    Ok(v["destinations"][0].clone())
}

async fn edge(outpost: &Path, identity: &Path, extra: &str) -> anyhow::Result<(Node, u16)> {
    let port = free_port()?;
    let node = Node::spawn(
        outpost,
        &format!(
            "[export]\nenabled = true\nport = {port}\n[[export.destinations]]\nname = \"cloud\"\nkind = \"cloud\"\n\
             identity = \"{}\"\nmax_bytes = 4294967296\nretry_initial_ms = 100\nretry_max_ms = 1000\n{extra}",
            identity.display()
        ),
    )?;
    let http = reqwest::Client::new();
    wait_until("the edge node", Duration::from_secs(30), || {
        node.serving(&http, port)
    })
    .await?;
    Ok((node, port))
}

pub async fn export(a: &ExportArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut cloud = Cloud::start(&a.outpost).await?;
    let identity = cloud.enroll(&a.outpost, "bench-edge")?;

    // 1. Enqueue with the cloud down: every append synced before the bus message is acked.
    cloud.stop().await;
    let (mut node, port) = edge(&a.outpost, &identity, "").await?;
    let url = format!("mqtt://127.0.0.1:{}", node.mqtt);
    let args = PubArgs {
        url: url.clone(),
        count: a.events,
        readings: a.readings,
        devices: 100,
        window: 1024,
        encoding: "json".into(),
        connections: 1,
        tls: None,
    };
    let start = Instant::now();
    let (_, pub_s, acked) = publish(&args).await?;
    let want = acked;
    wait_until("everything queued", Duration::from_secs(600), || {
        let http = http.clone();
        async move {
            export_status(&http, port)
                .await
                .is_ok_and(|s| s["queue"]["appended"].as_u64().unwrap_or(0) >= want)
        }
    })
    .await?;
    let enqueue_s = start.elapsed().as_secs_f64();
    let s = export_status(&http, port).await?;
    let queued_bytes = s["queue"]["bytes"].as_u64().unwrap_or(0);
    let readings = want * a.readings as u64;
    let enqueue_rate = readings as f64 / enqueue_s;
    println!(
        "enqueue (cloud down, fsync per batch): {want} events x {} readings in {enqueue_s:.2} s = {enqueue_rate:.0} readings/s (publisher done after {pub_s:.2} s); queue {:.1} MB",
        a.readings,
        queued_bytes as f64 / 1e6
    );

    // 2. Drain when the cloud comes back.
    cloud.launch(&a.outpost).await?;
    let start = Instant::now();
    wait_until("the backlog to drain", Duration::from_secs(600), || {
        let http = http.clone();
        async move {
            export_status(&http, port)
                .await
                .is_ok_and(|s| s["queue"]["items"].as_u64() == Some(0))
        }
    })
    .await?;
    let drain_s = start.elapsed().as_secs_f64();
    let drain_rate = readings as f64 / drain_s;
    let s = export_status(&http, port).await?;
    let wire = s["sender"]["wireBytes"].as_u64().unwrap_or(0);
    let sent = s["sender"]["sentItems"].as_u64().unwrap_or(0);
    let wire_per_reading = wire as f64 / (sent.max(1) * a.readings as u64) as f64;
    let stored = cloud.get("/event/count/edge/bench-edge").await?["Count"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "drain: {want} events in {drain_s:.2} s = {drain_rate:.0} readings/s ({:.1}x the enqueue rate); {wire_per_reading:.1} bytes/reading on the wire (zstd, batches of up to 5000 items or 4 MiB); cloud stored {stored} events",
        drain_rate / enqueue_rate
    );

    // 3. An outage under steady ingest: the cloud goes away for `outage_s` while events keep
    //    coming at `outage_rate`; when it is back, how fast the backlog drains while they
    //    still come.
    let (outage_rate, outage_backlog, outage_drain_s, gross_drain) = {
        cloud.stop().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pacer = {
            let (stop, url, rate, readings) =
                (Arc::clone(&stop), url.clone(), a.outage_rate, a.readings);
            tokio::spawn(async move {
                let client = MqttClient::with_options(ConnectOptions::new(format!(
                    "bench-steady-{}",
                    std::process::id()
                )));
                client.connect(&url).await.context("connect")?;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let per_tick = (rate / 100).max(1);
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let dev = format!("steady-{:03}", sent % 100);
                        let msg = event_message(&dev, unix_nanos(), readings, sent, "json")?;
                        publish_qos1(&client, topic(&dev), msg).await?;
                        sent += 1;
                    }
                }
                let _ = client.disconnect().await;
                anyhow::Ok(sent)
            })
        };
        tokio::time::sleep(Duration::from_secs(a.outage_s)).await;
        let backlog = export_status(&http, port).await?["queue"]["items"]
            .as_u64()
            .unwrap_or(0);
        let sent_before = export_status(&http, port).await?["sender"]["sentItems"]
            .as_u64()
            .unwrap_or(0);
        cloud.launch(&a.outpost).await?;
        let start = Instant::now();
        let small = (a.outage_rate / 10).max(10);
        wait_until(
            "the outage backlog to drain",
            Duration::from_secs(600),
            || {
                let http = http.clone();
                async move {
                    export_status(&http, port)
                        .await
                        .is_ok_and(|s| s["queue"]["items"].as_u64().unwrap_or(u64::MAX) < small)
                }
            },
        )
        .await?;
        let drain_s = start.elapsed().as_secs_f64();
        let sent_after = export_status(&http, port).await?["sender"]["sentItems"]
            .as_u64()
            .unwrap_or(0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let published = pacer.await??;
        let measured_rate = published as f64 / (a.outage_s as f64 + drain_s);
        let gross = (sent_after - sent_before) as f64 / drain_s;
        println!(
            "outage under steady ingest ({:.0} events/s = {:.0} readings/s, cloud down {} s): backlog {backlog} events drained in {drain_s:.1} s while ingest went on; sending ran at {:.0} readings/s = {:.1}x the ingest rate",
            measured_rate,
            measured_rate * a.readings as f64,
            a.outage_s,
            gross * a.readings as f64,
            gross / measured_rate
        );
        (measured_rate, backlog, drain_s, gross)
    };

    // 4. Latency, device to cloud, with the link up.
    let client = MqttClient::with_options(ConnectOptions::new(format!(
        "bench-lat-{}",
        std::process::id()
    )));
    client.connect(&url).await.context("connect")?;
    let every = Duration::from_secs_f64(1.0 / a.latency_rate.max(1) as f64);
    let mut tick = tokio::time::interval(every);
    let dev = "latency-device";
    for i in 0..a.latency_events {
        tick.tick().await;
        let msg = event_message(dev, unix_nanos(), 1, i, "json")?;
        publish_qos1(&client, topic(dev), msg).await?;
    }
    let _ = client.disconnect().await;
    let n = a.latency_events;
    let cloud_ref = &cloud;
    wait_until(
        "the latency events in the cloud",
        Duration::from_secs(60),
        || async move {
            cloud_ref
                .get(&format!("/reading/edge/bench-edge?device={dev}&limit=1"))
                .await
                .is_ok_and(|v| v["totalCount"].as_u64() == Some(n))
        },
    )
    .await?;
    let v = cloud
        .get(&format!("/reading/edge/bench-edge?device={dev}&limit={n}"))
        .await?;
    let mut lat: Vec<f64> = v["readings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some(r["receivedMs"].as_f64()? - r["origin"].as_f64()? / 1e6))
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let (p50, p99, max) = (pct(0.50), pct(0.99), lat.last().copied().unwrap_or(0.0));
    println!(
        "latency device -> cloud ({n} events at {}/s, link up): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        a.latency_rate
    );
    node.stop().await;

    // 5. Data reduction of a typical pipeline.
    let (mut node, port) = edge(
        &a.outpost,
        &identity,
        "sources = [\"edgex/events/rules/#\", \"edgex/alerts/#\"]\n\
         [rules]\nenabled = true\nlateness_ms = 0\n[[rules.pipelines]]\nname = \"minute\"\n\
         steps = [{ type = \"tumbling\", size_ms = 60000, functions = [\"min\", \"max\", \"mean\", \"count\"] }]\n\
         alerts = [{ above = 95.0, severity = \"critical\" }]\n",
    )
    .await?;
    wait_until("rules to register", Duration::from_secs(20), || {
        let http = http.clone();
        let keeper = node.keeper;
        async move {
            let Ok(r) = http
                .get(format!("http://127.0.0.1:{keeper}/api/v3/registry/all"))
                .send()
                .await
            else {
                return false;
            };
            r.json::<Value>().await.is_ok_and(|v| {
                v["registrations"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r["serviceId"] == "rules"))
            })
        }
    })
    .await?;
    let rules_port = {
        // The rules service registers; find its port in the registry.
        let v: Value = http
            .get(format!(
                "http://127.0.0.1:{}/api/v3/registry/all",
                node.keeper
            ))
            .send()
            .await?
            .json()
            .await?;
        v["registrations"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["serviceId"] == "rules"))
            .and_then(|r| r["port"].as_u64())
            .context("rules is not registered")?
    };
    let secs = a.reduction_hours * 3600;
    let minute = 60_000_000_000i64;
    let base = (unix_nanos() - (secs as i64 + 3600) * 1_000_000_000) / minute * minute;
    let client = MqttClient::with_options(ConnectOptions::new(format!(
        "bench-red-{}",
        std::process::id()
    )));
    client
        .connect(&format!("mqtt://127.0.0.1:{}", node.mqtt))
        .await
        .context("connect")?;
    let mut published = 0u64;
    let mut value = vec![50.0f64; a.reduction_devices];
    for t in 0..secs {
        for (d, v) in value.iter_mut().enumerate() {
            // A mean-reverting random walk with rare jumps above the alert threshold.
            *v = (*v + fastrand_step(t, d) + 0.02 * (50.0 - *v)).clamp(0.0, 100.0);
            let dev = format!("reduce-{d:03}");
            let origin = base + (t as i64) * 1_000_000_000;
            let msg = reduction_message(&dev, origin, *v)?;
            publish_qos1(&client, topic(&dev), msg).await?;
            published += 1;
        }
    }
    let _ = client.disconnect().await;
    let rules = format!("http://127.0.0.1:{rules_port}/api/v3/pipeline/name/minute");
    let expect_out = a.reduction_devices as u64 * (secs / 60) * 4;
    wait_until("the pipeline to finish", Duration::from_secs(120), || {
        let (http, rules) = (http.clone(), rules.clone());
        async move {
            let Ok(r) = http.get(rules).send().await else {
                return false;
            };
            let Ok(v) = r.json::<Value>().await else {
                return false;
            };
            v["readingsIn"].as_u64() == Some(published)
                && v["readingsOut"].as_u64() >= Some(expect_out)
        }
    })
    .await?;
    let v: Value = http.get(&rules).send().await?.json().await?;
    let (r_in, r_out, alerts) = (
        v["readingsIn"].as_u64().unwrap_or(0),
        v["readingsOut"].as_u64().unwrap_or(0),
        v["alerts"].as_u64().unwrap_or(0),
    );
    wait_until("the reduced data sent", Duration::from_secs(60), || {
        let http = http.clone();
        async move {
            export_status(&http, port).await.is_ok_and(|s| {
                s["queue"]["items"].as_u64() == Some(0)
                    && s["sender"]["sentItems"].as_u64().unwrap_or(0) > 0
            })
        }
    })
    .await?;
    let s = export_status(&http, port).await?;
    let red_wire = s["sender"]["wireBytes"].as_u64().unwrap_or(0);
    println!(
        "reduction (1 Hz, {} devices x {} h -> 1-minute min/max/mean/count + alert above 95): {r_in} readings in, {r_out} out + {alerts} alerts = {:.1}x fewer; {:.0} KB on the wire ({:.1} bytes per input reading)",
        a.reduction_devices,
        a.reduction_hours,
        r_in as f64 / (r_out + alerts).max(1) as f64,
        red_wire as f64 / 1e3,
        red_wire as f64 / r_in.max(1) as f64
    );
    node.stop().await;
    cloud.stop().await;
    let mut l = lat.clone();
    println!(
        "RESULT {}",
        json!({"bench": "export", "events": want, "readings_per_event": a.readings,
               "enqueue_readings_per_s": enqueue_rate, "drain_readings_per_s": drain_rate,
               "drain_over_enqueue": drain_rate / enqueue_rate,
               "outage": {"ingest_events_per_s": outage_rate, "backlog_events": outage_backlog,
                          "drain_s": outage_drain_s, "send_events_per_s": gross_drain,
                          "send_over_ingest": gross_drain / outage_rate},
               "wire_bytes_per_reading": wire_per_reading,
               "latency_ms": {"p50": p50, "p99": p99, "max": max, "median": median(&mut l)},
               "reduction": {"in": r_in, "out": r_out, "alerts": alerts, "wire_bytes": red_wire}})
    );
    Ok(())
}

/// A deterministic pseudo-random step in [-1, 1], with a rare jump.
fn fastrand_step(t: u64, d: usize) -> f64 {
    let mut x =
        t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (d as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let u = (x % 2001) as f64 / 1000.0 - 1.0;
    if x.is_multiple_of(5000) { 40.0 } else { u }
}

fn reduction_message(device: &str, origin: i64, value: f64) -> anyhow::Result<Vec<u8>> {
    crate::one_reading_event(
        device,
        crate::PROFILE,
        "level",
        origin,
        &format!("{value:.2}"),
    )
}
