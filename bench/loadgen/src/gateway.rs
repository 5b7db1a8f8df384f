//! The gateway against nginx: requests/s and latency of a trivial backend route through
//! Outpost's gateway (TLS, JWT validation, rate limiting, access log, metrics) and through
//! nginx configured as a TLS reverse proxy to the same backend, with wrk as the client, in
//! the same run; plus the latency each adds over calling the backend directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{Node, TempDir, free_port, wait_until};

#[derive(clap::Args, Clone)]
pub struct GatewayArgs {
    #[arg(long)]
    outpost: std::path::PathBuf,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open connections in the throughput runs.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Alternating rounds of (nginx, gateway); the median of each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// A wrk duration such as `812.00us`, `1.25ms` or `2.01s`, in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut w = Wrk {
        rps: 0.0,
        requests: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().context("wrk requests/s")?,
            [n, "requests", "in", ..] => w.requests = n.parse().context("wrk requests")?,
            ["50%", v] => w.p50_ms = wrk_ms(v).context("wrk p50")?,
            ["99%", v] => w.p99_ms = wrk_ms(v).context("wrk p99")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                w.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if w.rps == 0.0 {
        bail!("wrk printed no rate:\n{out}");
    }
    Ok(w)
}

async fn wrk(
    url: &str,
    token: Option<&str>,
    threads: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Wrk> {
    let mut cmd = tokio::process::Command::new("wrk");
    cmd.arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run wrk (Debian package wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let w = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
    if w.errors > 0 {
        bail!("{url}: {} failed requests", w.errors);
    }
    Ok(w)
}

/// CPU time (user + system, clock ticks of 10 ms) used so far by processes.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = stat.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// The direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A wrk run and the CPU microseconds per request the proxy processes spent in it.
async fn wrk_cpu(
    url: &str,
    token: Option<&str>,
    a: &GatewayArgs,
    proxy: &[u32],
) -> anyhow::Result<(Wrk, f64)> {
    let before = cpu_ticks(proxy);
    let w = wrk(url, token, a.threads, a.connections, a.seconds).await?;
    let ticks = cpu_ticks(proxy).saturating_sub(before);
    let us = ticks as f64 * 10_000.0 / w.requests.max(1) as f64;
    Ok((w, us))
}

/// An HTTPS client that trusts only the node's CA.
pub(crate) fn trusting_client(ca: &Path) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).context("node CA")? {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .no_proxy()
        .build()?)
}

/// nginx as a TLS reverse proxy to `backend`, with the gateway's certificate, keep-alive
/// to the upstream, one worker per core and its default access log.
/// The node's CA and administrator's certificate and key, for nginx to reach core-data over
/// mutual TLS as the gateway does (with `OUTPOST_BENCH_TLS=1`).
struct UpstreamTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn nginx_conf(
    dir: &Path,
    port: u16,
    backend: u16,
    cert: &Path,
    key: &Path,
    upstream: Option<&UpstreamTls>,
) -> String {
    let d = dir.display();
    let (scheme, upstream_tls) = match upstream {
        Some(u) => (
            "https",
            format!(
                "      proxy_ssl_certificate {};\n      proxy_ssl_certificate_key {};\n\
                 \x20     proxy_ssl_trusted_certificate {};\n      proxy_ssl_verify on;\n\
                 \x20     proxy_ssl_name localhost;\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n",
                u.cert.display(),
                u.key.display(),
                u.ca.display()
            ),
        ),
        None => ("http", String::new()),
    };
    format!(
        "worker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n  keepalive_requests 100000;\n\
           upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port} ssl http2;\n\
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             location /core-data/ {{\n      proxy_pass {scheme}://backend/;\n{upstream_tls}\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// nginx's master, stopped with SIGTERM so that it takes its workers along (SIGKILL would
/// leave them running).
struct Nginx(tokio::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            for _ in 0..100 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.start_kill();
    }
}

fn median_by<F: Fn(&Wrk) -> f64>(runs: &[Wrk], f: F) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    crate::median(&mut v)
}

fn summary(runs: &[Wrk]) -> Value {
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "rps": median_by(runs, |w| w.rps).round(),
        "p50_ms": r2(median_by(runs, |w| w.p50_ms)),
        "p99_ms": r2(median_by(runs, |w| w.p99_ms)),
        "runs_rps": runs.iter().map(|w| w.rps.round()).collect::<Vec<_>>(),
    })
}

pub async fn run(a: &GatewayArgs) -> anyhow::Result<()> {
    let (gw, gw_http, nginx_port) = (free_port()?, free_port()?, free_port()?);
    // The bench client is one identity sending far more than the per-client default of
    // 500 requests/s: the limiter stays on, with room for the load.
    let mut node = Node::spawn(
        &a.outpost,
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{gw}\"\nport = {gw_http}\n\
             rate_per_s = 10000000.0\nrate_burst = 10000000.0\naccess_token_ttl_s = 86400\n"
        ),
    )?;
    let plain = reqwest::Client::builder().no_proxy().build()?;
    wait_until("the node", Duration::from_secs(60), || node.healthy(&plain)).await?;
    let data_dir = node.data_dir();
    let ca = data_dir.join("tls/ca.pem");
    let base = format!("https://localhost:{gw}");
    wait_until("the gateway", Duration::from_secs(30), || async {
        ca.exists()
            && match trusting_client(&ca) {
                Ok(c) => c
                    .get(format!("{base}/api/v3/ping"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            }
    })
    .await?;
    let https = trusting_client(&ca)?;
    let password = std::fs::read_to_string(data_dir.join("secrets/admin-password"))
        .context("admin password")?;
    let login: Value = https
        .post(format!("{base}/api/v3/auth/login"))
        .json(&json!({"username": "admin", "password": password.trim()}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["accessToken"]
        .as_str()
        .context("no access token")?
        .to_string();

    let ndir = TempDir::new("nginx")?;
    let conf = ndir.0.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(
            &ndir.0,
            nginx_port,
            node.data,
            &data_dir.join("tls/gateway/gateway.pem"),
            &data_dir.join("secrets/gateway/tls.key"),
            node.tls
                .then(|| UpstreamTls {
                    ca: ca.clone(),
                    cert: data_dir.join("tls/clients/admin.pem"),
                    key: data_dir.join("secrets/clients/admin.key"),
                })
                .as_ref(),
        ),
    )?;
    let nginx = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(&ndir.0)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start nginx (Debian package nginx)")?;
    let nginx = Nginx(nginx);
    let via_nginx = format!("https://localhost:{nginx_port}/core-data/api/v3/ping");
    wait_until("nginx", Duration::from_secs(10), || async {
        https
            .get(&via_nginx)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    let gateway_pid: Vec<u32> = node
        .services()
        .into_iter()
        .filter_map(|(name, pid)| (name == "gateway").then_some(pid))
        .collect();
    let nginx_pids = nginx.0.id().map(children).unwrap_or_default();
    if gateway_pid.is_empty() || nginx_pids.is_empty() {
        bail!("cannot find the gateway's or nginx's worker processes");
    }
    // With TLS on every hop, core-data's ping over TLS (open to callers without a
    // certificate, which wrk cannot present).
    let direct = format!("{}/api/v3/ping", node.url(node.data));
    let via_gw = format!("{base}/core-data/api/v3/ping");
    let nginx_version = std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    println!(
        "{nginx_version}; wrk -t{} -c{} -d{}s; route GET /core-data/api/v3/ping; upstream {}",
        a.threads,
        a.connections,
        a.seconds,
        if node.tls {
            "over mutual TLS (the gateway with its service certificate, nginx with the administrator's)"
        } else {
            "plain HTTP"
        }
    );

    // Warm-up of all three paths.
    for (url, t) in [
        (&direct, None),
        (&via_nginx, None),
        (&via_gw, Some(token.as_str())),
    ] {
        wrk(url, t, a.threads, a.connections, 2).await?;
    }

    // Throughput: alternating rounds so drift on the machine hits both alike.
    let (mut ng, mut og, mut dir) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ncpu, mut gcpu) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let d = wrk(&direct, None, a.threads, a.connections, a.seconds).await?;
        let (n, nc) = wrk_cpu(&via_nginx, None, a, &nginx_pids).await?;
        let (g, gc) = wrk_cpu(&via_gw, Some(&token), a, &gateway_pid).await?;
        println!(
            "round {round}: direct {:.0}/s | nginx {:.0}/s p50 {:.2} ms p99 {:.2} ms, {nc:.1} us CPU/request | gateway {:.0}/s p50 {:.2} ms p99 {:.2} ms, {gc:.1} us CPU/request",
            d.rps, n.rps, n.p50_ms, n.p99_ms, g.rps, g.p50_ms, g.p99_ms
        );
        dir.push(d);
        ng.push(n);
        og.push(g);
        ncpu.push(nc);
        gcpu.push(gc);
    }
    let (ncpu, gcpu) = (crate::median(&mut ncpu), crate::median(&mut gcpu));
    // Added latency: one connection, one request at a time.
    let d1 = wrk(&direct, None, 1, 1, a.seconds).await?;
    let n1 = wrk(&via_nginx, None, 1, 1, a.seconds).await?;
    let g1 = wrk(&via_gw, Some(&token), 1, 1, a.seconds).await?;

    let (ns, gs) = (summary(&ng), summary(&og));
    let ratio = |a: &Value, b: &Value, k: &str| {
        let (x, y) = (a[k].as_f64().unwrap_or(0.0), b[k].as_f64().unwrap_or(0.0));
        if y > 0.0 {
            (x / y * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let tput = ratio(&gs, &ns, "rps");
    let p99 = ratio(&gs, &ns, "p99_ms");
    println!(
        "throughput ({} connections, median of {}): direct {:.0}/s, nginx {:.0}/s, gateway {:.0}/s = {tput}x nginx; p99 nginx {} ms, gateway {} ms = {p99}x",
        a.connections,
        a.rounds,
        median_by(&dir, |w| w.rps),
        ns["rps"],
        gs["rps"],
        ns["p99_ms"],
        gs["p99_ms"]
    );
    println!(
        "CPU per request (median): nginx workers {ncpu:.1} us, gateway {gcpu:.1} us = {:.2}x",
        gcpu / ncpu.max(0.001)
    );
    println!(
        "one request at a time (p50 / p99): direct {:.3} / {:.3} ms, nginx {:.3} / {:.3} ms (+{:.3}), gateway {:.3} / {:.3} ms (+{:.3})",
        d1.p50_ms,
        d1.p99_ms,
        n1.p50_ms,
        n1.p99_ms,
        n1.p50_ms - d1.p50_ms,
        g1.p50_ms,
        g1.p99_ms,
        g1.p50_ms - d1.p50_ms
    );
    drop(nginx);
    let node_tls = node.tls;
    node.stop().await;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    println!(
        "RESULT {}",
        json!({
            "bench": "gateway", "tls_upstream": node_tls, "connections": a.connections, "seconds": a.seconds,
            "direct_rps": median_by(&dir, |w| w.rps).round(),
            "nginx": ns, "gateway": gs,
            "throughput_vs_nginx": tput, "p99_vs_nginx": p99,
            "cpu_us_per_request": {"nginx": (ncpu * 10.0).round() / 10.0, "gateway": (gcpu * 10.0).round() / 10.0},
            "serial_p50_ms": {"direct": r3(d1.p50_ms), "nginx": r3(n1.p50_ms), "gateway": r3(g1.p50_ms)},
            "added_p50_ms": {"nginx": r3(n1.p50_ms - d1.p50_ms), "gateway": r3(g1.p50_ms - d1.p50_ms)},
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ https://localhost:1/x\n  1 threads and 10 connections\n\
          Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   812.00us  100.00us   2.00ms   90.00%\n\
          Latency Distribution\n     50%  790.00us\n     75%    1.00ms\n     90%    1.20ms\n     99%    1.80ms\n\
          24000 requests in 2.00s, 3.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  12000.50\nTransfer/sec:      1.50MB\n";
        let w = parse_wrk(out).expect("parse");
        assert!((w.rps - 12000.5).abs() < 1e-9);
        assert!((w.p50_ms - 0.79).abs() < 1e-9);
        assert!((w.p99_ms - 1.8).abs() < 1e-9);
        assert_eq!(w.errors, 3);
        assert_eq!(w.requests, 24000);
        assert_eq!(wrk_ms("2.5s"), Some(2500.0));
        assert!(parse_wrk("garbage").is_err());
    }
}
