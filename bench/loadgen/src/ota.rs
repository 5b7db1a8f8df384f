//! OTA: concurrent downloads of one artifact (aggregate throughput, the server's CPU and
//! peak memory), and device polls per second for a large fleet.
//!
//! Both go through the gateway (TLS, the way devices reach the node) and straight to the
//! OTA service, with every device's own secret. The download runs offer the artifact to the
//! devices through a rollout, so the server checks each request as it would in the field.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::gateway::{cpu_ticks, trusting_client};
use crate::{Node, free_port, memory_of, percentile, provision, wait_until};

#[derive(clap::Args, Clone)]
pub struct OtaArgs {
    #[arg(long)]
    outpost: std::path::PathBuf,
    /// Devices downloading at once.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Artifact size, MiB.
    #[arg(long, default_value_t = 50)]
    mib: usize,
    /// Devices in the polling fleet.
    #[arg(long, default_value_t = 10_000)]
    fleet: usize,
    /// Connections polling at once.
    #[arg(long, default_value_t = 64)]
    pollers: usize,
    /// Seconds per polling run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// The OTA service's and the gateway's processes among the node's.
fn service_pids(node: &Node) -> (Vec<u32>, Vec<u32>) {
    let (mut ota, mut gw) = (Vec::new(), Vec::new());
    for pid in node.pids() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"ota") {
            ota.push(pid);
        } else if args.iter().any(|a| *a == b"gateway") {
            gw.push(pid);
        }
    }
    (ota, gw)
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| memory_of(*p).0).sum()
}

/// Gives devices `first..first+n` the secret `<name>-bench-secret-0`, 32 at a time.
async fn secrets(http: &reqwest::Client, md: u16, names: &[String]) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let names = Arc::new(names.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (http, next, names) = (http.clone(), Arc::clone(&next), Arc::clone(&names));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(n) = names.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                http.put(format!(
                    "http://127.0.0.1:{md}/api/v3/device/name/{n}/secret"
                ))
                .json(&json!({"apiVersion": "v3", "secret": format!("{n}-bench-secret-0")}))
                .send()
                .await?
                .error_for_status()?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One download round: every device fetches the whole payload at once.
async fn downloads(
    http: &reqwest::Client,
    base: &str,
    devices: &[String],
    rollout: &str,
    size: u64,
    node: &Node,
    label: &str,
) -> anyhow::Result<Value> {
    let (ota, gw) = service_pids(node);
    let server: Vec<u32> = ota.iter().chain(gw.iter()).copied().collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, server) = (Arc::clone(&peak), Arc::clone(&sampling), server.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(&server), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let idle_rss = rss_kib(&server);
    let cpu0 = cpu_ticks(&server);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in devices {
        let (http, url, token) = (
            http.clone(),
            format!("{base}/api/v3/ddi/{d}/action/{rollout}/payload"),
            format!("{d}-bench-secret-0"),
        );
        tasks.push(tokio::spawn(async move {
            let mut r = http
                .get(&url)
                .header("x-outpost-device-token", token)
                .send()
                .await?
                .error_for_status()?;
            let mut got = 0u64;
            while let Some(chunk) = r.chunk().await? {
                got += chunk.len() as u64;
            }
            Ok::<_, anyhow::Error>(got)
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        let got = t.await??;
        if got != size {
            bail!("a download ended at {got} of {size} bytes");
        }
        total += got;
    }
    let secs = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let cpu_s = cpu_ticks(&server).saturating_sub(cpu0) as f64 / 100.0;
    let mib_s = total as f64 / 1_048_576.0 / secs;
    let v = json!({
        "path": label, "devices": devices.len(), "artifact_mib": size as f64 / 1_048_576.0,
        "seconds": secs, "aggregate_mib_s": mib_s,
        "server_cpu_s": cpu_s, "server_cpu_cores": cpu_s / secs,
        "server_rss_idle_mib": idle_rss as f64 / 1024.0,
        "server_rss_peak_mib": peak.load(Ordering::Relaxed) as f64 / 1024.0,
    });
    println!(
        "downloads ({label}): {} devices x {:.0} MiB in {secs:.1} s = {mib_s:.0} MiB/s aggregate; \
         server (ota + gateway) CPU {:.2} cores, RSS {:.0} MiB idle, {:.0} MiB peak",
        devices.len(),
        size as f64 / 1_048_576.0,
        cpu_s / secs,
        idle_rss as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
    );
    Ok(v)
}

/// Polls for `seconds` from `pollers` connections, each device answering with the ETag it
/// was last given (as devices do, so unchanged polls are 304).
async fn polls(
    http: &reqwest::Client,
    base: &str,
    fleet: &[String],
    pollers: usize,
    seconds: u64,
    label: &str,
) -> anyhow::Result<Value> {
    let fleet = Arc::new(fleet.to_vec());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..pollers {
        let (http, fleet, base) = (http.clone(), Arc::clone(&fleet), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut not_modified, mut errors) = (0u64, 0u64);
            let mut etags: std::collections::HashMap<usize, String> = Default::default();
            let mut i = w;
            while Instant::now() < deadline {
                let d = &fleet[i % fleet.len()];
                let mut req = http
                    .get(format!("{base}/api/v3/ddi/{d}"))
                    .header("x-outpost-device-token", format!("{d}-bench-secret-0"));
                if let Some(e) = etags.get(&(i % fleet.len())) {
                    req = req.header("if-none-match", e.clone());
                }
                let t = Instant::now();
                match req.send().await {
                    Ok(r) if r.status().as_u16() == 304 => not_modified += 1,
                    Ok(r) if r.status().is_success() => {
                        if let Some(e) = r.headers().get("etag").and_then(|v| v.to_str().ok()) {
                            etags.insert(i % fleet.len(), e.to_string());
                        }
                        let _ = r.bytes().await;
                    }
                    _ => errors += 1,
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                i += pollers;
            }
            (lat, not_modified, errors)
        }));
    }
    let (mut lat, mut not_modified, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        let (l, n, e) = t.await?;
        lat.extend(l);
        not_modified += n;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let rate = lat.len() as f64 / secs;
    let v = json!({
        "path": label, "fleet": fleet.len(), "pollers": pollers, "polls": lat.len(),
        "polls_per_s": rate, "not_modified": not_modified, "errors": errors,
        "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
        "fleet_at_30s_interval": rate * 30.0,
    });
    println!(
        "polls ({label}): {rate:.0}/s over {} devices ({} not modified, {errors} errors), \
         p50 {:.2} ms, p99 {:.2} ms: a fleet of {:.0} devices polling every 30 s",
        fleet.len(),
        not_modified,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        rate * 30.0
    );
    Ok(v)
}

pub async fn run(a: &OtaArgs) -> anyhow::Result<()> {
    let (key, _) = outpost_manifest::SigningKey::generate().map_err(anyhow::Error::msg)?;
    let (ota, gw, gw_http) = (free_port()?, free_port()?, free_port()?);
    let node = Node::spawn(
        &a.outpost,
        &format!(
            "[ota]\nenabled = true\nport = {ota}\ntrusted_keys = [\"{}\"]\n\
             [gateway]\nlisten = \"127.0.0.1:{gw}\"\nport = {gw_http}\nrate_per_s = 0.0\n",
            key.public().encoded()
        ),
    )?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_until("the node", Duration::from_secs(30), || {
        let (http, node) = (http.clone(), &node);
        async move {
            node.serving(&http, ota).await
                && std::fs::metadata(node.data_dir().join("tls/ca.pem")).is_ok()
        }
    })
    .await?;
    let tls = trusting_client(&node.data_dir().join("tls/ca.pem"))?;
    let direct = format!("http://127.0.0.1:{ota}");
    let gateway = format!("https://127.0.0.1:{gw}/ota");

    // The fleet: devices of the bench profile, each with its own secret.
    let n = a.fleet.max(a.agents);
    let t = Instant::now();
    provision(&http, &node, 1, n).await?;
    let names: Vec<String> = (0..n).map(crate::device_name).collect();
    secrets(&http, node.metadata, &names).await?;
    println!(
        "provisioned {n} devices with secrets in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The artifact, signed, uploaded once; a rollout offering it to the downloaders.
    let size = a.mib * 1_048_576;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, &data);
    let sha: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let manifest = serde_json::to_vec(&json!({
        "name": "bench-fw", "version": "1.0", "compatible": [crate::PROFILE], "size": size,
        "sha256": sha, "payloadType": "file"
    }))?;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    http.post(format!("{direct}/api/v3/artifact"))
        .header("x-outpost-manifest", b64.encode(&manifest))
        .header("x-outpost-signature", key.sign(&manifest))
        .body(data)
        .send()
        .await?
        .error_for_status()
        .context("upload")?;
    let agents: Vec<String> = names[..a.agents].to_vec();
    http.post(format!("{direct}/api/v3/rollout"))
        .json(
            &json!({"name": "bench", "artifact": {"name": "bench-fw", "version": "1.0"},
                      "target": {"devices": agents}, "policy": {"phases": [100.0]}}),
        )
        .send()
        .await?
        .error_for_status()
        .context("rollout")?;

    let mut results = Vec::new();
    results.push(
        downloads(
            &tls,
            &gateway,
            &agents,
            "bench",
            size as u64,
            &node,
            "gateway",
        )
        .await?,
    );
    results.push(
        downloads(
            &http,
            &direct,
            &agents,
            "bench",
            size as u64,
            &node,
            "direct",
        )
        .await?,
    );
    // A first pass checks every device's secret with core-metadata; then cached.
    let fleet = &names[..a.fleet];
    results.push(polls(&http, &direct, fleet, a.pollers, a.seconds, "direct, cold").await?);
    results.push(polls(&http, &direct, fleet, a.pollers, a.seconds, "direct").await?);
    results.push(polls(&tls, &gateway, fleet, a.pollers, a.seconds, "gateway").await?);
    println!("RESULT {}", json!({"bench": "ota", "runs": results}));
    Ok(())
}
