//! Device benchmarks: MQTT device telemetry into core-data with many devices (against
//! mosquitto's raw pub/sub rate for the same messages), and the command round trip through
//! core-command.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mqtt5::{ConnectOptions, MqttClient, QoS, SubscribeOptions};
use serde_json::{Value, json};

use super::gateway::cpu_ticks;
use super::{
    Node, count, free_port, mosquitto_unbounded, percentile, publish_counted, unix_nanos,
    wait_until,
};

const PROFILE: &str = "BenchMeter";

fn device(i: usize) -> String {
    format!("meter-{i:04}")
}

fn secret(i: usize) -> String {
    format!("bench-secret-{i:06}-xyz")
}

/// The telemetry a device sends: `readings` Float64 values in one JSON object.
fn telemetry(seq: u64, readings: usize) -> Vec<u8> {
    let m: serde_json::Map<String, Value> = (0..readings)
        .map(|r| {
            (
                format!("V{r:02}"),
                json!(20.0 + (seq % 100) as f64 / 10.0 + r as f64),
            )
        })
        .collect();
    Value::Object(m).to_string().into_bytes()
}

/// Connects one client per device.
async fn connect_all(
    url: &str,
    ca: Option<&[u8]>,
    devices: usize,
    creds: bool,
) -> anyhow::Result<Vec<Arc<MqttClient>>> {
    let mut clients = Vec::with_capacity(devices);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(50) {
        let mut joins = Vec::new();
        for &i in chunk {
            let (url, ca) = (url.to_string(), ca.map(<[u8]>::to_vec));
            joins.push(tokio::spawn(async move {
                let mut o = ConnectOptions::new(format!("bench-{}", device(i)));
                if creds {
                    o = o.with_credentials(device(i), secret(i));
                }
                let c = MqttClient::with_options(o);
                // Over TLS: trusting the node CA, the secret inside TLS.
                if ca.is_some() {
                    c.set_tls_config(None, None, ca).await;
                }
                c.connect(&url).await.map(|_| Arc::new(c))
            }));
        }
        for j in joins {
            clients.push(j.await?.context("connect a device")?);
        }
    }
    Ok(clients)
}

/// Every device publishes `per_device` messages (QoS 1, `window` in flight per device);
/// returns (start unix ns, acknowledged).
async fn publish_all(
    clients: &[Arc<MqttClient>],
    per_device: u64,
    readings: usize,
    window: usize,
    topic: impl Fn(usize) -> String,
) -> anyhow::Result<(i64, u64)> {
    let msgs: Vec<Vec<Vec<u8>>> = clients
        .iter()
        .map(|_| (0..per_device).map(|s| telemetry(s, readings)).collect())
        .collect();
    let acked = Arc::new(AtomicU64::new(0));
    let start = unix_nanos();
    let mut tasks = Vec::new();
    for (i, (c, ms)) in clients.iter().zip(msgs).enumerate() {
        let (c, acked, t) = (Arc::clone(c), Arc::clone(&acked), topic(i));
        tasks.push(tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(window));
            let mut inner = Vec::new();
            for m in ms {
                let Ok(permit) = Arc::clone(&sem).acquire_owned().await else {
                    break;
                };
                let (c, acked, t) = (Arc::clone(&c), Arc::clone(&acked), t.clone());
                inner.push(tokio::spawn(async move {
                    publish_counted(&c, (t, m), &acked, permit).await;
                }));
            }
            for t in inner {
                let _ = t.await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((start, acked.load(Ordering::Relaxed)))
}

async fn post_ok(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<()> {
    let r = http.post(url).json(body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    let items_ok = v.as_array().is_none_or(|a| {
        a.iter()
            .all(|i| i["statusCode"].as_u64().is_some_and(|c| c < 300))
    });
    if !status.is_success() || !items_ok {
        bail!("POST {url}: {status} {v}");
    }
    Ok(())
}

/// The benchmark's profile (`readings` Float64 values) and `devices` devices of device-mqtt
/// in core-metadata at `md`, each with its own secret.
async fn provision(
    http: &reqwest::Client,
    md: &str,
    devices: usize,
    readings: usize,
) -> anyhow::Result<()> {
    wait_until(
        "device-mqtt registered",
        Duration::from_secs(30),
        || async {
            http.get(format!("{md}/deviceservice/name/device-mqtt"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await?;
    let resources: Vec<Value> = (0..readings)
        .map(|r| json!({"name": format!("V{r:02}"), "properties": {"valueType": "Float64", "readWrite": "R"}}))
        .collect();
    post_ok(
        http,
        &format!("{md}/deviceprofile"),
        &json!([{"apiVersion": "v3", "profile": {"name": PROFILE, "deviceResources": resources}}]),
    )
    .await?;
    for chunk in (0..devices).collect::<Vec<_>>().chunks(100) {
        let reqs: Vec<Value> = chunk
            .iter()
            .map(|d| json!({"apiVersion": "v3", "device": {"name": device(*d), "serviceName": "device-mqtt",
                "profileName": PROFILE, "adminState": "UNLOCKED", "operatingState": "UP", "protocols": {"mqtt": {}}}}))
            .collect();
        post_ok(
            http,
            &format!("{md}/device?bypassValidation=true"),
            &Value::Array(reqs),
        )
        .await?;
    }
    for i in 0..devices {
        let r = http
            .put(format!("{md}/device/name/{}/secret", device(i)))
            .json(&json!({"apiVersion": "v3", "secret": secret(i)}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("set secret: {}", r.status());
        }
    }
    Ok(())
}

/// `bench mqtt-devices`: readings/s from many MQTT devices into core-data.
pub async fn mqtt_devices(
    outpost: &Path,
    devices: usize,
    per_device: u64,
    readings: usize,
    window: usize,
    encoding: &str,
) -> anyhow::Result<()> {
    let total_msgs = devices as u64 * per_device;
    let total_readings = total_msgs * readings as u64;
    let http = reqwest::Client::new();

    // Reference: mosquitto, one connection per device, a subscriber counting.
    let mport = free_port()?;
    let _mosq = mosquitto_unbounded(mport).await?;
    let murl = format!("mqtt://127.0.0.1:{mport}");
    let sub = MqttClient::with_options(ConnectOptions::new("bench-sub"));
    sub.connect(&murl).await?;
    let got = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (g2, l2) = (Arc::clone(&got), Arc::clone(&last));
    sub.subscribe_with_options(
        "incoming/data/#",
        SubscribeOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
        move |_| {
            g2.fetch_add(1, Ordering::Relaxed);
            l2.store(unix_nanos(), Ordering::Relaxed);
        },
    )
    .await?;
    let clients = connect_all(&murl, None, devices, false).await?;
    let me = std::process::id();
    let mosq_pid = _mosq.0.id().context("mosquitto exited")?;
    let cpu_before = (cpu_ticks(&[mosq_pid]), cpu_ticks(&[me]));
    let (start, acked) = publish_all(&clients, per_device, readings, window, |i| {
        format!("incoming/data/{}", device(i))
    })
    .await?;
    wait_until("mosquitto delivery", Duration::from_secs(120), || async {
        got.load(Ordering::Relaxed) >= total_msgs
    })
    .await
    .with_context(|| format!("{} of {total_msgs} delivered", got.load(Ordering::Relaxed)))?;
    let mosq_cpu = [
        (
            "mosquitto",
            cpu_ticks(&[mosq_pid]).saturating_sub(cpu_before.0),
        ),
        (
            "load generator",
            cpu_ticks(&[me]).saturating_sub(cpu_before.1),
        ),
    ];
    let raw_secs = (last.load(Ordering::Relaxed) - start) as f64 / 1e9;
    let raw_rate = total_readings as f64 / raw_secs;
    println!(
        "mosquitto: {devices} devices x {per_device} messages x {readings} values ({acked} acknowledged), delivered in {raw_secs:.2}s: {raw_rate:.0} readings/s"
    );
    for c in clients {
        let _ = c.disconnect().await;
    }
    let _ = sub.disconnect().await;

    // Outpost: devices with their own credentials on the embedded broker → device-mqtt →
    // bus → core-data (fsync per commit).
    let (cmd_port, dm_port) = (free_port()?, free_port()?);
    let mut node = Node::spawn(
        outpost,
        &format!(
            "[bus]\nencoding = \"{encoding}\"\n[core_command]\nport = {cmd_port}\n[device_mqtt]\nenabled = true\nport = {dm_port}\ndevice_messages_per_s = 0.0\n"
        ),
    )?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    // With TLS on every hop: the administrator's certificate.
    let http = node.client();
    let md = format!("{}/api/v3", node.url(node.metadata));
    provision(&http, &md, devices, readings).await?;
    let (url, ca) = node.bus();
    let clients = connect_all(&url, ca.as_deref(), devices, true).await?;
    let count_url = format!("{}/api/v3/reading/count", node.url(node.data));
    // device-mqtt learns devices from metadata's events: wait until the last one is known.
    let probe = telemetry(0, readings);
    let last_client = clients.last().context("no devices")?;
    let t = format!("incoming/data/{}", device(devices - 1));
    wait_until(
        "device-mqtt knows every device",
        Duration::from_secs(60),
        || async {
            let _ = last_client.publish_qos1(&t, probe.clone()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            count(&http, &count_url).await > 0
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = count(&http, &count_url).await;
    let services = node.services();
    let node_before: Vec<u64> = services.iter().map(|(_, p)| cpu_ticks(&[*p])).collect();
    let me_before = cpu_ticks(&[me]);
    let (start, acked) = publish_all(&clients, per_device, readings, window, |i| {
        format!("incoming/data/{}", device(i))
    })
    .await?;
    let pub_done = unix_nanos();
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let n = count(&http, &count_url).await.saturating_sub(base);
        if n >= total_readings {
            break unix_nanos();
        }
        if Instant::now() > deadline {
            bail!("only {n} of {total_readings} readings persisted after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut node_cpu: Vec<(String, u64)> = services
        .iter()
        .zip(&node_before)
        .map(|((name, pid), before)| (name.clone(), cpu_ticks(&[*pid]).saturating_sub(*before)))
        .filter(|(_, t)| *t > 0)
        .collect();
    node_cpu.sort_by_key(|b| std::cmp::Reverse(b.1));
    let gen_ticks = cpu_ticks(&[me]).saturating_sub(me_before);
    for c in clients {
        let _ = c.disconnect().await;
    }
    let secs = (done - start) as f64 / 1e9;
    let (journal_line, journal) = node.journal(&http, secs).await;
    println!("{journal_line}");
    let tls = node.tls;
    node.stop().await;
    let rate = total_readings as f64 / secs;
    let ratio = rate / raw_rate;
    println!(
        "outpost:   {devices} devices ({acked} acknowledged, published in {:.2}s), persisted in {secs:.2}s: {rate:.0} readings/s ({})",
        (pub_done - start) as f64 / 1e9,
        if tls {
            "mutual TLS on every hop, devices over TLS"
        } else {
            "plaintext"
        }
    );
    println!("ratio outpost/mosquitto: {ratio:.2}");
    // CPU time per reading (clock ticks of 10 ms, from the first publish to the last
    // reading delivered or persisted): where the two cores went in each run.
    let per_reading = |ticks: u64| ticks as f64 * 10_000.0 / total_readings as f64;
    let show = |parts: &[(String, u64)]| {
        parts
            .iter()
            .map(|(n, t)| format!("{n} {:.2}", per_reading(*t)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mosq_parts: Vec<(String, u64)> =
        mosq_cpu.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    let node_ticks: u64 = node_cpu.iter().map(|(_, t)| t).sum();
    let mosq_ticks = mosq_cpu[0].1;
    println!("CPU µs per reading, mosquitto run: {}", show(&mosq_parts));
    println!(
        "CPU µs per reading, outpost run: node {:.2} ({}), load generator {:.2}",
        per_reading(node_ticks),
        show(&node_cpu),
        per_reading(gen_ticks)
    );
    println!(
        "RESULT {}",
        json!({"bench": "mqtt-devices", "tls": tls, "encoding": encoding, "devices": devices, "messages_per_device": per_device, "readings_per_message": readings,
               "mosquitto_readings_per_s": raw_rate.round(), "outpost_readings_per_s": rate.round(),
               "ratio": (ratio * 100.0).round() / 100.0,
               "cpu_us_per_reading": {"mosquitto": per_reading(mosq_ticks), "mosquitto_load_generator": per_reading(mosq_cpu[1].1),
                   "node": per_reading(node_ticks), "node_load_generator": per_reading(gen_ticks),
                   "services": node_cpu.iter().map(|(n, t)| (n.clone(), json!(per_reading(*t)))).collect::<serde_json::Map<_, _>>()},
               "broker": journal})
    );
    Ok(())
}

/// Times `n` sequential GETs of `url`; (p50, p99, max) in ms.
async fn time_gets(http: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(url).send().await?;
        let status = r.status();
        let _ = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0),
    ))
}

/// `bench command`: REST → core-command → device service → device → back.
pub async fn command_rtt(outpost: &Path, requests: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let (cmd, virt, dm) = (free_port()?, free_port()?, free_port()?);
    let mut node = Node::spawn(
        outpost,
        &format!(
            "[core_command]\nport = {cmd}\n[device_virtual]\nenabled = true\nport = {virt}\n\
             [device_virtual.driver]\nprovision_examples = false\n\
             [device_mqtt]\nenabled = true\nport = {dm}\n"
        ),
    )?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    let md = format!("http://127.0.0.1:{}/api/v3", node.metadata);
    for svc in ["device-virtual", "device-mqtt"] {
        wait_until(svc, Duration::from_secs(30), || async {
            http.get(format!("{md}/deviceservice/name/{svc}"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
    }
    post_ok(
        &http,
        &format!("{md}/deviceprofile"),
        &json!([{"apiVersion": "v3", "profile": {"name": "Dial", "deviceResources": [
            {"name": "Level", "properties": {"valueType": "Float64", "readWrite": "RW"}}]}}]),
    )
    .await?;
    let dev = |name: &str, svc: &str, protocols: Value| {
        json!({"apiVersion": "v3", "device": {"name": name, "serviceName": svc, "profileName": "Dial",
            "adminState": "UNLOCKED", "operatingState": "UP", "protocols": protocols}})
    };
    post_ok(
        &http,
        &format!("{md}/device"),
        &json!([
            dev("dial-virtual", "device-virtual", json!({"other": {}})),
            dev("dial-mqtt", "device-mqtt", json!({"mqtt": {}}))
        ]),
    )
    .await?;
    http.put(format!("{md}/device/name/dial-mqtt/secret"))
        .json(&json!({"apiVersion": "v3", "secret": "dial-mqtt-secret-01"}))
        .send()
        .await?
        .error_for_status()?;
    // The MQTT device: answers every GET with its level.
    let device = Arc::new(MqttClient::with_options(
        ConnectOptions::new("dial-mqtt").with_credentials("dial-mqtt", "dial-mqtt-secret-01"),
    ));
    device
        .connect(&format!("mqtt://127.0.0.1:{}", node.mqtt))
        .await?;
    let responder = Arc::clone(&device);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    device
        .subscribe_with_options(
            "command/dial-mqtt/#",
            SubscribeOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
            move |m| {
                let _ = tx.send(m.topic.clone());
            },
        )
        .await?;
    tokio::spawn(async move {
        while let Some(topic) = rx.recv().await {
            let id = topic.rsplit('/').next().unwrap_or_default();
            let _ = responder
                .publish_qos1(
                    &format!("command/response/{id}"),
                    br#"{"Level": 42.5}"#.to_vec(),
                )
                .await;
        }
    });

    let mut results = Vec::new();
    for (label, url) in [
        (
            "device-virtual direct",
            format!("http://127.0.0.1:{virt}/api/v3/device/name/dial-virtual/Level"),
        ),
        (
            "core-command -> device-virtual",
            format!("http://127.0.0.1:{cmd}/api/v3/device/name/dial-virtual/Level"),
        ),
        (
            "core-command -> device-mqtt -> MQTT device",
            format!("http://127.0.0.1:{cmd}/api/v3/device/name/dial-mqtt/Level"),
        ),
    ] {
        wait_until(label, Duration::from_secs(30), || async {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
        time_gets(&http, &url, requests / 10).await?; // warm-up
        let (p50, p99, max) = time_gets(&http, &url, requests).await?;
        println!(
            "{label:45} p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms  ({requests} sequential GETs)"
        );
        results.push(json!({"path": label, "p50_ms": (p50 * 100.0).round() / 100.0, "p99_ms": (p99 * 100.0).round() / 100.0}));
    }
    let _ = device.disconnect().await;
    node.stop().await;
    println!(
        "RESULT {}",
        json!({"bench": "command", "requests": requests, "results": results})
    );
    Ok(())
}

/// Connects `devices` clients with their own secrets over TLS all at once; the seconds
/// until the last was connected and each one's connect latency (ms, sorted). The clients
/// are disconnected again afterwards.
async fn storm(url: &str, ca: &[u8], devices: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    let start = Instant::now();
    let mut joins = Vec::with_capacity(devices);
    for i in 0..devices {
        let (url, ca) = (url.to_string(), ca.to_vec());
        joins.push(tokio::spawn(async move {
            let o = ConnectOptions::new(format!("bench-{}", device(i)))
                .with_credentials(device(i), secret(i));
            let c = MqttClient::with_options(o);
            c.set_tls_config(None, None, Some(ca)).await;
            let t = Instant::now();
            c.connect(&url).await.map(|_| (c, t.elapsed()))
        }));
    }
    let mut clients = Vec::with_capacity(devices);
    let mut latencies = Vec::with_capacity(devices);
    for j in joins {
        let (c, took) = j.await?.context("connect a device")?;
        latencies.push(took.as_secs_f64() * 1000.0);
        clients.push(c);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    for c in clients {
        let _ = c.disconnect().await;
    }
    Ok((secs, latencies))
}

/// `bench reconnect`: a fleet of `devices` MQTT devices, each with its own secret, all
/// connecting over TLS at once (a gateway's uplink coming back), `rounds` times, to the
/// node's broker (the credentials checked with core-metadata, cached for an hour) and to
/// mosquitto over TLS with a password file holding the same devices, with the same server
/// certificate: handshakes per second, the time until all are back, and each connect's
/// latency. Needs the node with TLS (`OUTPOST_BENCH_TLS=1`).
pub async fn reconnect(outpost: &Path, devices: usize, rounds: usize) -> anyhow::Result<()> {
    let mut node = Node::spawn(
        outpost,
        "[device_mqtt]\nenabled = true\ndevice_messages_per_s = 0.0\n",
    )?;
    if !node.tls {
        bail!("the reconnect benchmark measures TLS: run it with OUTPOST_BENCH_TLS=1");
    }
    let plain = reqwest::Client::new();
    wait_until("the node", Duration::from_secs(60), || node.healthy(&plain)).await?;
    let http = node.client();
    let md = format!("{}/api/v3", node.url(node.metadata));
    provision(&http, &md, devices, 1).await?;
    let (url, ca) = node.bus();
    let ca = ca.context("the node CA")?;

    // mosquitto over TLS with the node's server certificate (names 127.0.0.1) and the
    // devices' secrets in a password file (hashed by mosquitto_passwd).
    let tmp = super::TempDir::new("reconnect")?;
    let dir = &tmp.0;
    let passwords = dir.join("passwd");
    let lines: String = (0..devices)
        .map(|i| format!("{}:{}\n", device(i), secret(i)))
        .collect();
    std::fs::write(&passwords, lines)?;
    let hashed = tokio::process::Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(&passwords)
        .status()
        .await
        .context("mosquitto_passwd (Debian package mosquitto)")?;
    if !hashed.success() {
        bail!("mosquitto_passwd -U failed");
    }
    let mport = free_port()?;
    let data = node.data_dir();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {mport} 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous false\npassword_file {}\nmax_connections -1\npersistence false\n{}",
            data.join("tls/gateway/gateway.pem").display(),
            data.join("secrets/gateway/tls.key").display(),
            passwords.display(),
            // As root, mosquitto would switch to its own user, which cannot read the
            // node's key and the password file.
            if std::fs::metadata("/proc/self").is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt as _;
                m.uid() == 0
            }) {
                "user root\n"
            } else {
                ""
            }
        ),
    )?;
    let mosq = super::mosquitto(&["-c".as_ref(), conf.as_os_str()], mport).await?;
    let murl = format!("mqtts://127.0.0.1:{mport}");

    let mut results = Vec::new();
    let mosq_pid = mosq.0.id().context("mosquitto exited")?;
    let broker_pids: Vec<u32> = node
        .services()
        .into_iter()
        .filter(|(n, _)| n == "mqtt-broker" || n == "core-metadata")
        .map(|(_, p)| p)
        .collect();
    for round in 1..=rounds {
        for (name, url, pids) in [
            ("mosquitto", murl.as_str(), vec![mosq_pid]),
            ("outpost", url.as_str(), broker_pids.clone()),
        ] {
            let before = cpu_ticks(&pids);
            let (secs, lat) = storm(url, &ca, devices).await?;
            let cpu_ms = cpu_ticks(&pids).saturating_sub(before) as f64 * 10.0;
            let rate = devices as f64 / secs;
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            println!(
                "round {round} {name:<9}: {devices} devices back in {secs:.2}s, {rate:.0} handshakes/s, connect p50 {p50:.0} ms p99 {p99:.0} ms, server CPU {:.2} ms per connect",
                cpu_ms / devices as f64
            );
            results.push(
                json!({"round": round, "broker": name, "secs": (secs * 1000.0).round() / 1000.0,
                "handshakes_per_s": rate.round(), "p50_ms": p50.round(), "p99_ms": p99.round(),
                "server_cpu_ms_per_connect": (cpu_ms / devices as f64 * 100.0).round() / 100.0}),
            );
            // Let the brokers see every disconnect before the next storm.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    drop(mosq);
    node.stop().await;
    drop(tmp);
    println!(
        "RESULT {}",
        json!({"bench": "reconnect", "devices": devices, "tls": true, "rounds": results})
    );
    Ok(())
}
