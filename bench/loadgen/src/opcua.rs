//! `opcua`: data changes per second delivered into core-data by device-opcua's subscriptions,
//! from one asyncua server (`tests/peers/opcua_server.py`) with `nodes` variables all
//! changing every `tick_ms`, against the rate the server itself publishes to an asyncua
//! client subscribed to the same nodes, in the same run.
//!
//! The reference runs first, alone: the asyncua client counts the data changes it is sent
//! over `seconds`. Then a node starts with device-opcua; `devices` devices each take an
//! equal share of the nodes through one device command, whose `onChange` autoEvent at the
//! tick's interval makes them monitored items of one subscription. After a warm-up, the
//! readings core-data stored over `seconds` are counted (`GET /api/v3/reading/count`), with
//! the data changes device-opcua received (its `data_changes_total` metric).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Node, free_port, post_json, prometheus_sum, start_ready_peer, wait_until};

#[derive(clap::Args, Clone)]
pub struct OpcUaArgs {
    #[arg(long)]
    outpost: PathBuf,
    /// Variables on the server, all subscribed.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// How often the server changes every variable.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Devices sharing the variables (one subscription for all: one endpoint).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Seconds of counting, after a warm-up of 3 s.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The interpreter with asyncua (`scripts/setup.sh --test` installs it).
    #[arg(long, default_value = "target/peers/asyncua/bin/python")]
    python: PathBuf,
    #[arg(long, default_value = "tests/peers/opcua_server.py")]
    server: PathBuf,
}

async fn provision(
    http: &reqwest::Client,
    node: &Node,
    url: &str,
    a: &OpcUaArgs,
) -> anyhow::Result<()> {
    let md = format!("{}/api/v3", node.url(node.metadata));
    let per = a.nodes / a.devices;
    let ops: Vec<Value> = (0..per)
        .map(|i| json!({"deviceResource": format!("B{i:04}")}))
        .collect();
    // One profile per device: each reads its own share of the nodes.
    for d in 0..a.devices {
        let resources: Vec<Value> = (0..per)
            .map(|i| {
                json!({"name": format!("B{i:04}"), "properties": {"valueType": "Float64", "readWrite": "R"},
                       "attributes": {"namespace": "urn:outpost:test", "symbol": format!("Bench.{}", d * per + i)}})
            })
            .collect();
        let profile = json!([{"apiVersion": "v3", "profile": {"name": format!("BenchUA-{d:02}"),
            "deviceResources": resources,
            "deviceCommands": [{"name": "All", "readWrite": "R", "resourceOperations": ops}]}}]);
        let v = post_json(http, &format!("{md}/deviceprofile"), &profile).await?;
        if v[0]["statusCode"] != 201 {
            bail!("profile not created: {v}");
        }
    }
    let devices: Vec<Value> = (0..a.devices)
        .map(|d| {
            json!({"apiVersion": "v3", "device": {"name": format!("ua-{d:02}"), "profileName": format!("BenchUA-{d:02}"),
                "serviceName": "device-opcua", "adminState": "UNLOCKED", "operatingState": "UP",
                "protocols": {"opcua": {"Endpoint": url}},
                "autoEvents": [{"interval": format!("{}ms", a.tick_ms), "onChange": true, "sourceName": "All"}]}})
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

/// The readings core-data holds.
async fn readings(http: &reqwest::Client, node: &Node) -> anyhow::Result<f64> {
    let v: Value = http
        .get(format!("{}/api/v3/reading/count", node.url(node.data)))
        .send()
        .await?
        .json()
        .await?;
    v["count"].as_f64().context("reading count")
}

pub async fn run(a: &OpcUaArgs) -> anyhow::Result<()> {
    let python = Path::new(&a.python);
    super::need_peer(python, "asyncua")?;
    if a.devices == 0 || !a.nodes.is_multiple_of(a.devices) {
        bail!("--nodes must be a multiple of --devices");
    }
    let dir = std::env::temp_dir().join(format!("outpost-bench-opcua-{}", std::process::id()));
    let port = free_port()?;
    let mut serve = tokio::process::Command::new(python);
    serve
        .arg(&a.server)
        .args(["serve", "--port", &port.to_string(), "--dir"])
        .arg(&dir)
        .args(["--nodes", &a.nodes.to_string()])
        .args(["--tick-ms", &a.tick_ms.to_string()]);
    let _server = start_ready_peer(serve, "the asyncua server", Duration::from_secs(60)).await?;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let offered = a.nodes as f64 * 1000.0 / a.tick_ms as f64;

    // Reference: what the server publishes to an asyncua client subscribed to every node.
    let out = tokio::process::Command::new(python)
        .arg(&a.server)
        .args(["count", "--url", &url, "--nodes", &a.nodes.to_string()])
        .args(["--seconds", &a.seconds.to_string()])
        .output()
        .await
        .context("run the asyncua client")?;
    if !out.status.success() {
        bail!("asyncua client: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reference: Value = serde_json::from_slice(&out.stdout).context("asyncua client output")?;
    let ref_rate =
        reference["changes"].as_f64().unwrap_or(0.0) / reference["seconds"].as_f64().unwrap_or(1.0);
    println!(
        "asyncua client: {} nodes changing every {} ms ({offered:.0} changes/s offered): {ref_rate:.0} data changes/s published to it",
        a.nodes, a.tick_ms
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ua = free_port()?;
    let mut node = Node::spawn(
        &a.outpost,
        &format!("[device_opcua]\nenabled = true\nport = {ua}\n"),
    )?;
    let http = if node.tls { node.client() } else { http };
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    let ds = node.url(ua);
    node.device_service(&http, "device-opcua").await?;
    provision(&http, &node, &url, a).await?;
    wait_until("readings to flow", Duration::from_secs(60), || async {
        readings(&http, &node).await.is_ok_and(|n| n > 0.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stored_before, received_before) = (
        readings(&http, &node).await?,
        prometheus_sum(&http, &ds, "outpost_device_opcua_data_changes_total").await,
    );
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    let (stored_after, received_after) = (
        readings(&http, &node).await?,
        prometheus_sum(&http, &ds, "outpost_device_opcua_data_changes_total").await,
    );
    let secs = start.elapsed().as_secs_f64();
    let dropped = prometheus_sum(
        &http,
        &ds,
        "outpost_device_opcua_notifications_dropped_total",
    )
    .await;
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let stored = (stored_after - stored_before) / secs;
    let received = (received_after - received_before) / secs;
    println!(
        "outpost: {} devices x {} monitored items: {received:.0} data changes/s received, {stored:.0} readings/s stored in core-data = {:.2}x the asyncua client's rate; {dropped:.0} notification messages dropped",
        a.devices,
        a.nodes / a.devices,
        stored / ref_rate.max(1.0)
    );
    println!(
        "RESULT {}",
        json!({"bench": "opcua", "nodes": a.nodes, "tick_ms": a.tick_ms, "devices": a.devices,
               "offered_changes_per_s": offered.round(),
               "asyncua_client_changes_per_s": ref_rate.round(),
               "outpost_received_per_s": received.round(), "outpost_stored_per_s": stored.round(),
               "ratio_to_asyncua_client": (stored / ref_rate.max(1.0) * 100.0).round() / 100.0,
               "notification_messages_dropped": dropped})
    );
    Ok(())
}
