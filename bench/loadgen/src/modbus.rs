//! `modbus`: polled resources per second through device-modbus against a real Modbus TCP
//! server (pymodbus, `tests/peers/modbus_server.py`), with batching on and off, and the same
//! registers polled by a raw pymodbus client as the reference, all in one run.
//!
//! `devices` devices of one profile with `resources` values on contiguous registers
//! (alternately Uint16 and Float32, 1.5 registers each on average) and a device command
//! reading all of them. For `seconds`, one client per device GETs that command from
//! device-modbus as fast as it answers (the event comes back in the response; nothing goes
//! to the bus). Every device reaches the server through device-modbus's one connection, as
//! the reference does through its own. Requests per poll come from device-modbus's
//! `requests_total` metric.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Node, free_port, post_json, start_ready_peer, wait_until};

#[derive(clap::Args, Clone)]
pub struct ModbusArgs {
    #[arg(long)]
    outpost: PathBuf,
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Values per device (one device command reads them all).
    #[arg(long, default_value_t = 100)]
    resources: usize,
    /// Seconds of polling per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The interpreter with pymodbus (`scripts/setup.sh --test` installs it).
    #[arg(long, default_value = "target/peers/pymodbus/bin/python")]
    python: PathBuf,
    #[arg(long, default_value = "tests/peers/modbus_server.py")]
    server: PathBuf,
}

/// First register of the server's benchmark block.
const BLOCK: usize = 1000;

/// (startingAddress, valueType) of each resource, back to back from `BLOCK`.
fn layout(resources: usize) -> (Vec<(usize, &'static str)>, usize) {
    let mut at = BLOCK;
    let mut out = Vec::with_capacity(resources);
    for i in 0..resources {
        let (vt, n) = if i % 2 == 0 {
            ("Uint16", 1)
        } else {
            ("Float32", 2)
        };
        out.push((at, vt));
        at += n;
    }
    (out, at - BLOCK)
}

async fn provision(
    http: &reqwest::Client,
    metadata: u16,
    server_port: u16,
    a: &ModbusArgs,
) -> anyhow::Result<()> {
    let md = format!("http://127.0.0.1:{metadata}/api/v3");
    let (points, _) = layout(a.resources);
    let resources: Vec<Value> = points
        .iter()
        .enumerate()
        .map(|(i, (addr, vt))| {
            json!({"name": format!("V{i:03}"), "properties": {"valueType": vt, "readWrite": "R"},
                   "attributes": {"primaryTable": "HOLDING_REGISTERS", "startingAddress": addr}})
        })
        .collect();
    let ops: Vec<Value> = (0..a.resources)
        .map(|i| json!({"deviceResource": format!("V{i:03}")}))
        .collect();
    let profile = json!([{"apiVersion": "v3", "profile": {"name": "BenchPLC", "deviceResources": resources,
        "deviceCommands": [{"name": "All", "readWrite": "R", "resourceOperations": ops}]}}]);
    let v = post_json(http, &format!("{md}/deviceprofile"), &profile).await?;
    if v[0]["statusCode"] != 201 {
        bail!("profile not created: {v}");
    }
    let devices: Vec<Value> = (0..a.devices)
        .map(|d| {
            json!({"apiVersion": "v3", "device": {"name": format!("plc-{d:03}"), "profileName": "BenchPLC",
                "serviceName": "device-modbus", "adminState": "UNLOCKED", "operatingState": "UP",
                "protocols": {"modbus-tcp": {"Address": "127.0.0.1", "Port": server_port.to_string(), "UnitID": "1"}}}})
        })
        .collect();
    let v = post_json(http, &format!("{md}/device"), &devices).await?;
    if v.as_array()
        .is_none_or(|a| a.iter().any(|r| r["statusCode"] != 201))
    {
        bail!("devices not created: {v}");
    }
    Ok(())
}

/// A counter of the service on `port` (summed over its labels).
async fn metric(http: &reqwest::Client, port: u16, name: &str) -> f64 {
    super::prometheus_sum(http, &format!("http://127.0.0.1:{port}"), name).await
}

struct Measured {
    polls: u64,
    secs: f64,
    requests_per_poll: f64,
}

/// Starts a node with device-modbus (`batching` on or off), polls every device's command for
/// `seconds`, and stops the node.
async fn measure(a: &ModbusArgs, server_port: u16, batching: bool) -> anyhow::Result<Measured> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let (command, modbus) = (free_port()?, free_port()?);
    let extra = format!(
        "[core_command]\nport = {command}\n[device_modbus]\nenabled = true\nport = {modbus}\n\
         [device_modbus.driver]\nbatching = {batching}\n"
    );
    let mut node = Node::spawn(&a.outpost, &extra)?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    let ds = format!("http://127.0.0.1:{modbus}");
    node.device_service(&http, "device-modbus").await?;
    provision(&http, node.metadata, server_port, a).await?;
    let names: Vec<String> = (0..a.devices).map(|d| format!("plc-{d:03}")).collect();
    for n in &names {
        let url = format!("{ds}/api/v3/device/name/{n}/All");
        super::wait_ok(&http, &url, "device-modbus to load the devices").await?;
    }
    let requests_before = metric(&http, modbus, "outpost_device_modbus_requests_total").await;
    let polls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let mut tasks = Vec::new();
    for n in names {
        let (http, polls, failed) = (http.clone(), Arc::clone(&polls), Arc::clone(&failed));
        let url = format!("{ds}/api/v3/device/name/{n}/All");
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let ok = match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    polls.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let requests =
        metric(&http, modbus, "outpost_device_modbus_requests_total").await - requests_before;
    node.stop().await;
    let (polls, failed) = (
        polls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    if failed > 0 {
        bail!("{failed} polls failed (batching {batching})");
    }
    Ok(Measured {
        polls,
        secs,
        requests_per_poll: requests / polls.max(1) as f64,
    })
}

pub async fn run(a: &ModbusArgs) -> anyhow::Result<()> {
    let python = Path::new(&a.python);
    super::need_peer(python, "pymodbus")?;
    let (_, registers) = layout(a.resources);
    if BLOCK + registers > 4000 {
        bail!(
            "{} resources need {registers} registers; the server's block has 3000",
            a.resources
        );
    }
    let port = free_port()?;
    let mut serve = tokio::process::Command::new(python);
    serve
        .arg(&a.server)
        .args(["serve", "--port", &port.to_string()]);
    let _server = start_ready_peer(serve, "the pymodbus server", Duration::from_secs(20)).await?;

    // Reference: pymodbus's own client polls the same registers over one connection.
    let out = tokio::process::Command::new(python)
        .arg(&a.server)
        .args([
            "poll",
            "--port",
            &port.to_string(),
            "--address",
            &BLOCK.to_string(),
        ])
        .args([
            "--count",
            &registers.to_string(),
            "--seconds",
            &a.seconds.to_string(),
        ])
        .output()
        .await
        .context("run the pymodbus client")?;
    if !out.status.success() {
        bail!("pymodbus client: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference: Value = serde_json::from_slice(&out.stdout).context("pymodbus client output")?;
    let ref_polls = reference["polls"].as_f64().unwrap_or(0.0);
    let ref_secs = reference["seconds"].as_f64().unwrap_or(1.0);
    let ref_rate = ref_polls * a.resources as f64 / ref_secs;
    let ref_requests = registers.div_ceil(125);
    println!(
        "pymodbus client: {registers} registers ({} values) in {ref_requests} requests per poll: {:.0} polls/s = {ref_rate:.0} values/s",
        a.resources,
        ref_polls / ref_secs
    );

    let mut rows = Vec::new();
    for batching in [true, false] {
        let m = measure(a, port, batching).await?;
        let polls_s = m.polls as f64 / m.secs;
        let values_s = polls_s * a.resources as f64;
        println!(
            "outpost, batching {}: {} devices x {} values: {:.0} polls/s = {values_s:.0} values/s, {:.2} Modbus requests per poll, {:.2}x the pymodbus client",
            if batching { "on " } else { "off" },
            a.devices,
            a.resources,
            polls_s,
            m.requests_per_poll,
            values_s / ref_rate.max(1.0)
        );
        rows.push(json!({"batching": batching, "polls_per_s": polls_s.round(), "values_per_s": values_s.round(),
                         "requests_per_poll": (m.requests_per_poll * 100.0).round() / 100.0,
                         "ratio_to_pymodbus_client": (values_s / ref_rate.max(1.0) * 100.0).round() / 100.0}));
    }
    println!(
        "RESULT {}",
        json!({"bench": "modbus", "devices": a.devices, "values_per_device": a.resources, "registers": registers,
               "pymodbus_client_values_per_s": ref_rate.round(), "pymodbus_client_requests_per_poll": ref_requests,
               "outpost": rows})
    );
    Ok(())
}
