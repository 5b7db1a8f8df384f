//! The support services: notifications delivered per second to a webhook receiver (against
//! the receiver's rate from a plain HTTP client, the same concurrency), the latency from a
//! rules alert to the receiver (with the bus hop alone beside it), and the lateness of
//! 1,000 interval jobs at 1 s (against the same timers run in this process).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mqtt5::{ConnectOptions, MqttClient, QoS, SubscribeOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Node, free_port, publish_qos1, quantile, unix_nanos, wait_until};

/// What a receiver got: arrival (unix ns), path, body.
type Got = Arc<Mutex<Vec<(i64, String, String)>>>;

/// A minimal HTTP/1.1 receiver (keep-alive, `Content-Length` bodies) that answers 200 and
/// records what arrived: a webhook as cheap as one can be, so the figures are the sender's.
struct Receiver {
    port: u16,
    got: Got,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let got: Got = Arc::default();
        let g = Arc::clone(&got);
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(tcp, Arc::clone(&g)));
            }
        });
        Ok(Self { port, got, server })
    }

    fn count(&self, prefix: &str) -> usize {
        self.lock()
            .iter()
            .filter(|(_, p, _)| p.starts_with(prefix))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(i64, String, String)>> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Vec<(i64, String, String)> {
        std::mem::take(&mut *self.lock())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves one connection's requests until it closes.
async fn connection(mut tcp: tokio::net::TcpStream, got: Got) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // The head, then a body of its Content-Length.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        got.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((unix_nanos(), path, body));
        buf.drain(..head_end + length);
        if tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn post_ok(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .context(url.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status} {v}");
    }
    // Batches answer 207 with an outcome per item.
    if let Some(items) = v.as_array()
        && let Some(bad) = items.iter().find(|i| i["statusCode"].as_u64() >= Some(300))
    {
        bail!("{url}: {bad}");
    }
    Ok(v)
}

/// Notifications delivered per second, and alert-to-receiver latency.
pub async fn notifications(
    outpost: &Path,
    count: usize,
    concurrency: usize,
    alerts: usize,
) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let content = |i: usize| format!("bench notification {i:06}: pump 3 pressure out of band");

    // Reference: the receiver's rate from a plain client, as many requests at once as the
    // service's deliveries (support_notifications.concurrency).
    let http = reqwest::Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let (http, url) = (
            http.clone(),
            format!("http://127.0.0.1:{}/ref", receiver.port),
        );
        let body = content(i);
        tasks.push(tokio::spawn(async move {
            let _ = http
                .post(url)
                .header("content-type", "text/plain")
                .body(body)
                .send()
                .await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let ref_secs = started.elapsed().as_secs_f64();
    let ref_rate = receiver.count("/ref") as f64 / ref_secs;
    receiver.take();

    let (np, rp) = (free_port()?, free_port()?);
    let extra = format!(
        "[support_notifications]\nport = {np}\nconcurrency = {concurrency}\n\
         [support_scheduler]\nenabled = false\n\
         [rules]\nenabled = true\nport = {rp}\nlateness_ms = 0\n\
         [[rules.pipelines]]\nname = \"hot\"\ndevices = [\"bench-*\"]\nsteps = []\n\
         alerts = [{{ above = 90.0, severity = \"critical\", message = \"too hot\" }}]\n"
    );
    let mut node = Node::spawn(outpost, &extra)?;
    wait_until("the node", Duration::from_secs(60), || async {
        node.serving(&http, np).await
    })
    .await?;
    let http = node.client();
    let base = node.url(np);
    let subscribe = |name: &str, category: &str, path: &str| {
        json!([{"apiVersion": "v3", "subscription": {"name": name, "categories": [category],
            "receiver": "bench", "adminState": "UNLOCKED",
            "channels": [{"type": "REST", "host": "127.0.0.1", "port": receiver.port,
                          "path": path, "httpMethod": "POST"}]}}])
    };
    let url = format!("{base}/api/v3/subscription");
    post_ok(&http, &url, &subscribe("bench", "bench", "/n")).await?;
    post_ok(&http, &url, &subscribe("alerts", "rules-alert", "/alert")).await?;

    // Accepted in batches of 100 (EdgeX batch bodies), delivered as fast as they go.
    let started = Instant::now();
    let url = format!("{base}/api/v3/notification");
    for first in (0..count).step_by(100) {
        let batch: Vec<Value> = (first..(first + 100).min(count))
            .map(|i| {
                json!({"apiVersion": "v3", "notification": {"category": "bench", "content": content(i),
                    "contentType": "text/plain", "sender": "bench", "severity": "NORMAL"}})
            })
            .collect();
        post_ok(&http, &url, &Value::Array(batch)).await?;
    }
    let accepted_secs = started.elapsed().as_secs_f64();
    wait_until(
        "every notification delivered",
        Duration::from_secs(300),
        || async { receiver.count("/n") >= count },
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let rate = count as f64 / secs;

    // Alerts one at a time: publish a reading above the threshold, wait for its
    // notification at the receiver; beside it, when the alert appears on the bus.
    let (bus_url, _) = node.bus();
    let client = MqttClient::with_options(ConnectOptions::new(format!(
        "bench-alerts-{}",
        std::process::id()
    )));
    client
        .connect(&bus_url)
        .await
        .context("connect to the bus")?;
    let on_bus: Arc<Mutex<Vec<i64>>> = Arc::default();
    {
        let on_bus = Arc::clone(&on_bus);
        let opts = SubscribeOptions {
            qos: QoS::AtMostOnce,
            ..Default::default()
        };
        let subscribed = client
            .subscribe_with_options("edgex/alerts/#", opts, move |_m| {
                on_bus
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(unix_nanos());
            })
            .await;
        if let Err(e) = subscribed {
            eprintln!("alerts on the bus not observed: {e}");
        }
    }
    receiver.take();
    let mut end_to_end = Vec::with_capacity(alerts);
    let mut bus_hop = Vec::with_capacity(alerts);
    for i in 0..alerts {
        let device = format!("bench-{i:04}");
        let sent = unix_nanos();
        publish_qos1(&client, alert_topic(&device), alert_event(&device, sent)?).await?;
        wait_until(
            "the alert at the receiver",
            Duration::from_secs(30),
            || async { receiver.count("/alert") > i },
        )
        .await?;
        let got = receiver
            .lock()
            .iter()
            .rev()
            .find(|(_, p, _)| p == "/alert")
            .map(|g| g.0);
        if let Some(at) = got {
            end_to_end.push((at - sent) as f64 / 1e6);
        }
        if let Some(at) = on_bus
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(i)
        {
            bus_hop.push((at - sent) as f64 / 1e6);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    node.stop().await;

    let (p50, p99) = (
        quantile(&mut end_to_end, 0.5),
        quantile(&mut end_to_end, 0.99),
    );
    let (b50, b99) = (quantile(&mut bus_hop, 0.5), quantile(&mut bus_hop, 0.99));
    println!(
        "notifications: {count} delivered to a webhook in {secs:.2} s = {rate:.0}/s \
         (accepted in {accepted_secs:.2} s; {concurrency} deliveries at once); \
         the receiver from a plain client: {ref_rate:.0}/s (ratio {:.2})",
        rate / ref_rate
    );
    println!(
        "rules alert -> receiver: p50 {p50:.1} ms, p99 {p99:.1} ms over {} alerts \
         (of which reading -> alert on the bus: p50 {b50:.1} ms, p99 {b99:.1} ms)",
        end_to_end.len()
    );
    println!(
        "RESULT {}",
        json!({"bench": "notifications", "count": count, "secs": secs, "per_s": rate.round(),
               "reference_per_s": ref_rate.round(), "concurrency": concurrency,
               "alert_p50_ms": p50, "alert_p99_ms": p99, "bus_p50_ms": b50, "bus_p99_ms": b99,
               "alerts": end_to_end.len()})
    );
    Ok(())
}

fn alert_topic(device: &str) -> String {
    format!("edgex/events/device/device-bench/Bench/{device}/Temperature")
}

/// One Float64 reading of 95.5 (above the alert's 90) from `device`, in an envelope.
fn alert_event(device: &str, origin: i64) -> anyhow::Result<Vec<u8>> {
    super::one_reading_event(device, "Bench", "Temperature", origin, "95.5")
}

/// Lateness (ms) of each arrival against a schedule of every `period` from `t0` (unix ns).
fn lateness(arrivals: &[(i64, String, String)], prefix: &str, t0: i64, period: i64) -> Vec<f64> {
    arrivals
        .iter()
        .filter(|(at, p, _)| p.starts_with(prefix) && *at >= t0)
        .map(|(at, _, _)| {
            let k = (at - t0) / period;
            // Nearest slot at or before the arrival: early arrivals do not exist here.
            (at - (t0 + k * period)) as f64 / 1e6
        })
        .collect()
}

/// 1,000 interval jobs at 1 s: how late each run reaches the receiver, against the same
/// timers run in this process.
pub async fn scheduler(outpost: &Path, jobs: usize, seconds: u64) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let period = 1_000_000_000i64;
    let second_after = |delay_s: i64| {
        let now = unix_nanos();
        (now / period + delay_s) * period
    };

    // Reference: one task per job in this process, a tokio interval from a whole second,
    // each run a POST to the receiver over a shared client.
    let http = reqwest::Client::new();
    let t0 = second_after(2);
    let stop_at = Instant::now() + Duration::from_secs(seconds + 2);
    let mut timers = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let (http, url) = (
            http.clone(),
            format!("http://127.0.0.1:{}/ref/{j}", receiver.port),
        );
        let wait = Duration::from_nanos(u64::try_from(t0 - unix_nanos()).unwrap_or(0));
        timers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + wait,
                Duration::from_secs(1),
            );
            while Instant::now() < stop_at {
                tick.tick().await;
                let _ = http.post(&url).send().await;
            }
        }));
    }
    for t in timers {
        t.await?;
    }
    let mut reference = lateness(&receiver.take(), "/ref/", t0, period);

    let sp = free_port()?;
    let extra =
        format!("[support_scheduler]\nport = {sp}\n[support_notifications]\nenabled = false\n");
    let mut node = Node::spawn(outpost, &extra)?;
    wait_until("the node", Duration::from_secs(60), || async {
        node.serving(&http, sp).await
    })
    .await?;
    let http = node.client();
    let url = format!("{}/api/v3/job", node.url(sp));
    // Created before the first run: the jobs start together on a whole second.
    let t0 = second_after(i64::try_from(jobs / 200 + 3)?);
    let t0_ms = t0 / 1_000_000;
    for first in (0..jobs).step_by(100) {
        let batch: Vec<Value> = (first..(first + 100).min(jobs))
            .map(|j| {
                json!({"apiVersion": "v3", "scheduleJob": {"name": format!("bench-{j:04}"),
                    "definition": {"type": "INTERVAL", "interval": "1s", "startTimestamp": t0_ms},
                    "actions": [{"type": "REST", "method": "POST",
                        "address": format!("http://127.0.0.1:{}/job/{j}", receiver.port)}],
                    "adminState": "UNLOCKED"}})
            })
            .collect();
        post_ok(&http, &url, &Value::Array(batch)).await?;
    }
    if unix_nanos() > t0 {
        bail!("creating the jobs took past their start; use fewer jobs");
    }
    let end = t0 + i64::try_from(seconds)? * period;
    tokio::time::sleep(Duration::from_nanos(
        u64::try_from(end - unix_nanos()).unwrap_or(0) + 500_000_000,
    ))
    .await;
    // When the scheduler started each run (its own histogram, in ms), apart from the time
    // the requests then took to reach the receiver.
    let metrics = super::Metrics::at(&http, &node.url(sp)).await;
    let started = bucket_quantiles(&metrics.0, "outpost_support_scheduler_run_lateness_ms");
    node.stop().await;
    let arrivals: Vec<_> = receiver
        .take()
        .into_iter()
        .filter(|(at, _, _)| *at < end)
        .collect();
    let runs = arrivals.len();
    let mut outpost_late = lateness(&arrivals, "/job/", t0, period);
    let expected = jobs * usize::try_from(seconds)?;

    let q = |v: &mut Vec<f64>| {
        (
            quantile(v, 0.5),
            quantile(v, 0.99),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let (o50, o99, omax) = q(&mut outpost_late);
    let (r50, r99, rmax) = q(&mut reference);
    println!(
        "scheduler: {jobs} interval jobs at 1 s for {seconds} s: {runs} of {expected} runs \
         reached the receiver; lateness p50 {o50:.1} ms, p99 {o99:.1} ms, max {omax:.1} ms"
    );
    println!(
        "  runs started by the scheduler (its run_lateness_ms histogram, bucket bounds): \
         p50 <= {} ms, p99 <= {} ms over {} runs",
        started.0, started.1, started.2
    );
    println!(
        "  the same {jobs} timers in this process (tokio intervals, the same receiver): \
         p50 {r50:.1} ms, p99 {r99:.1} ms, max {rmax:.1} ms"
    );
    println!(
        "RESULT {}",
        json!({"bench": "scheduler", "jobs": jobs, "seconds": seconds, "runs": runs,
               "expected": expected, "p50_ms": o50, "p99_ms": o99, "max_ms": omax,
               "reference_p50_ms": r50, "reference_p99_ms": r99, "reference_max_ms": rmax,
               "start_p50_ms_at_most": started.0, "start_p99_ms_at_most": started.1})
    );
    Ok(())
}

/// The bucket bounds under which half and 99 % of a Prometheus histogram's observations
/// fall (`+Inf` beyond the last bucket), and how many observations it has.
fn bucket_quantiles(text: &str, name: &str) -> (String, String, u64) {
    let mut buckets: Vec<(f64, String, u64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, le, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.2);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|b| b.2 as f64 >= q * total as f64)
            .map_or_else(|| "?".to_string(), |b| b.1.clone())
    };
    (at(0.5), at(0.99), total)
}
