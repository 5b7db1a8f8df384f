//! `coap`: readings per second from `devices` simulated CoAP devices into core-data through
//! device-coap, against a bare aiocoap server (`tests/peers/coap_server.py`) answering the
//! very same datagrams, in the same run.
//!
//! Each device is a UDP socket of its own that sends confirmable POSTs to
//! `/<device>?secret=<secret>`, a CBOR map of two resources, one at a time (CoAP's NSTART
//! of 1): the next once the ACK came, the same again after 2 s without one (up to 4
//! times). The reference runs first: the same devices against the aiocoap server, which
//! decodes each payload and answers 2.04. Then a node starts with device-coap; the devices
//! are added with their secrets, and once each has been answered, the acknowledgements
//! and the readings core-data stored over `seconds` are counted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use coap_lite::option_value::OptionValueU32;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use super::{Node, free_port, post_json, start_ready_peer, wait_until};

#[derive(clap::Args, Clone)]
pub struct CoapArgs {
    #[arg(long)]
    outpost: PathBuf,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Seconds of counting, once every device has been answered.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The interpreter with aiocoap (`scripts/setup.sh --test` installs it).
    #[arg(long, default_value = "target/peers/aiocoap/bin/python")]
    python: PathBuf,
    #[arg(long, default_value = "tests/peers/coap_server.py")]
    server: PathBuf,
}

const PROFILE: &str = "BenchCoap";

fn device(i: usize) -> String {
    format!("coap-{i:04}")
}

fn secret(i: usize) -> String {
    format!("coap-{i:04}-secret-0123456789")
}

/// What the devices had answered.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    refused: AtomicU64,
    timeouts: AtomicU64,
}

/// One device: confirmable POSTs, one at a time, until `stop`.
async fn run_device(
    i: usize,
    server: SocketAddr,
    counts: Arc<Counts>,
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let mut buf = vec![0u8; 1500];
    let mut first = true;
    let mut id = fastrand::u16(..);
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = id;
        p.set_token(id.to_be_bytes().to_vec());
        p.add_option(CoapOption::UriPath, device(i).into_bytes());
        p.add_option(CoapOption::ContentFormat, OptionValueU32(60).into());
        p.add_option(
            CoapOption::UriQuery,
            format!("secret={}", secret(i)).into_bytes(),
        );
        let mut body = Vec::new();
        let map = ciborium::Value::Map(vec![
            (
                "Temperature".into(),
                ciborium::Value::Float(20.0 + f64::from(id % 100) / 10.0),
            ),
            (
                "Humidity".into(),
                ciborium::Value::Integer((id % 100).into()),
            ),
        ]);
        ciborium::into_writer(&map, &mut body)?;
        p.payload = body;
        let bytes = p.to_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut answer = None;
        'tries: for _ in 0..5 {
            socket.send_to(&bytes, server).await?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                let Ok(r) = tokio::time::timeout(left, socket.recv_from(&mut buf)).await else {
                    break;
                };
                let (n, _) = r?;
                if let Ok(a) = Packet::from_bytes(&buf[..n])
                    && a.header.message_id == id
                    && a.header.get_type() == MessageType::Acknowledgement
                {
                    answer = Some(a.header.code);
                    break 'tries;
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        match answer {
            Some(MessageClass::Response(ResponseType::Changed)) => {
                counts.acked.fetch_add(1, Ordering::Relaxed);
                if first {
                    first = false;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                counts.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// The devices against `server`: once all have been answered (or `ready_wait` passed),
/// what was acknowledged over `seconds`, per second; and the counts at the end.
struct Run {
    acked_per_s: f64,
    refused: u64,
    timeouts: u64,
}

async fn drive<F, Fut>(
    server: SocketAddr,
    devices: usize,
    seconds: f64,
    ready_wait: Duration,
    mut stored: F,
) -> anyhow::Result<(Run, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let counts = Arc::new(Counts::default());
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..devices {
        tasks.spawn(run_device(
            i,
            server,
            Arc::clone(&counts),
            Arc::clone(&answered),
            Arc::clone(&stop),
        ));
    }
    let deadline = Instant::now() + ready_wait;
    while answered.load(Ordering::Relaxed) < devices as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = answered.load(Ordering::Relaxed);
    if ready < devices as u64 {
        println!("  only {ready} of {devices} devices answered within {ready_wait:?}");
    }
    let (acked_before, stored_before, start) = (
        counts.acked.load(Ordering::Relaxed),
        stored().await,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (acked_after, stored_after, end) = (
        counts.acked.load(Ordering::Relaxed),
        stored().await,
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = (end - start).as_secs_f64();
    Ok((
        Run {
            acked_per_s: (acked_after - acked_before) as f64 / secs,
            refused: counts.refused.load(Ordering::Relaxed),
            timeouts: counts.timeouts.load(Ordering::Relaxed),
        },
        (stored_after - stored_before) / secs,
    ))
}

async fn provision(http: &reqwest::Client, node: &Node, devices: usize) -> anyhow::Result<()> {
    let md = format!("{}/api/v3", node.url(node.metadata));
    let profile = json!([{"apiVersion": "v3", "profile": {"name": PROFILE, "deviceResources": [
        {"name": "Temperature", "properties": {"valueType": "Float64", "readWrite": "R"}},
        {"name": "Humidity", "properties": {"valueType": "Uint8", "readWrite": "R"}}]}}]);
    let v = post_json(http, &format!("{md}/deviceprofile"), &profile).await?;
    if v[0]["statusCode"] != 201 {
        bail!("profile not created: {v}");
    }
    for chunk in (0..devices).collect::<Vec<_>>().chunks(100) {
        let reqs: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"apiVersion": "v3", "device": {"name": device(*i), "serviceName": "device-coap",
                    "profileName": PROFILE, "adminState": "UNLOCKED", "operatingState": "UP",
                    "protocols": {"other": {}}}})
            })
            .collect();
        let v = post_json(http, &format!("{md}/device"), &Value::Array(reqs)).await?;
        if v.as_array()
            .is_none_or(|a| a.iter().any(|r| r["statusCode"] != 201))
        {
            bail!("devices not created: {v}");
        }
    }
    for i in 0..devices {
        http.put(format!("{md}/device/name/{}/secret", device(i)))
            .json(&json!({"apiVersion": "v3", "secret": secret(i)}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// The readings core-data holds.
async fn readings(http: &reqwest::Client, node: &Node) -> f64 {
    let Ok(r) = http
        .get(format!("{}/api/v3/reading/count", node.url(node.data)))
        .send()
        .await
    else {
        return f64::NAN;
    };
    r.json::<Value>()
        .await
        .ok()
        .and_then(|v| v["count"].as_f64())
        .unwrap_or(f64::NAN)
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub async fn run(a: &CoapArgs) -> anyhow::Result<()> {
    let python = Path::new(&a.python);
    super::need_peer(python, "aiocoap")?;
    // Reference: the bare aiocoap server.
    let port = free_udp_port()?;
    let mut serve = tokio::process::Command::new(python);
    serve.arg(&a.server).args(["--port", &port.to_string()]);
    let peer = start_ready_peer(serve, "the aiocoap server", Duration::from_secs(30)).await?;
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    let (reference, _) = drive(
        at,
        a.devices,
        a.seconds,
        Duration::from_secs(30),
        || async { 0.0 },
    )
    .await?;
    drop(peer);
    println!(
        "aiocoap server: {} devices, confirmable CBOR POSTs: {:.0} requests/s answered ({} refused, {} retransmissions timed out)",
        a.devices, reference.acked_per_s, reference.refused, reference.timeouts
    );

    // Outpost: device-coap, every device with its secret, readings stored by core-data.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (ds, coap) = (free_port()?, free_udp_port()?);
    let mut node = Node::spawn(
        &a.outpost,
        &format!(
            "[device_coap]\nenabled = true\nport = {ds}\ndevice_messages_per_s = 0.0\n[device_coap.driver]\nbind = \"127.0.0.1\"\ncoap_port = {coap}\n"
        ),
    )?;
    let http = if node.tls { node.client() } else { http };
    wait_until("the node", Duration::from_secs(60), || node.healthy(&http)).await?;
    node.device_service(&http, "device-coap").await?;
    provision(&http, &node, a.devices)
        .await
        .context("provision the devices")?;
    let at = SocketAddr::from(([127, 0, 0, 1], coap));
    let (outpost, stored) = drive(at, a.devices, a.seconds, Duration::from_secs(120), || {
        readings(&http, &node)
    })
    .await?;
    let ds_url = node.url(ds);
    let dropped = super::prometheus_sum(
        &http,
        &ds_url,
        "outpost_device_coap_datagrams_dropped_total",
    )
    .await;
    node.stop().await;
    println!(
        "outpost: {:.0} requests/s acknowledged, {stored:.0} readings/s stored in core-data ({:.0} events/s) = {:.2}x the aiocoap server's rate; {} refused, {} retransmissions timed out, {dropped:.0} datagrams dropped (copies included)",
        outpost.acked_per_s,
        stored / 2.0,
        outpost.acked_per_s / reference.acked_per_s.max(1.0),
        outpost.refused,
        outpost.timeouts
    );
    println!(
        "RESULT {}",
        json!({"bench": "coap", "devices": a.devices, "seconds": a.seconds,
               "aiocoap_requests_per_s": reference.acked_per_s.round(),
               "outpost_acked_per_s": outpost.acked_per_s.round(),
               "outpost_readings_stored_per_s": stored.round(),
               "ratio_to_aiocoap": (outpost.acked_per_s / reference.acked_per_s.max(1.0) * 100.0).round() / 100.0,
               "outpost_refused": outpost.refused, "outpost_timeouts": outpost.timeouts})
    );
    Ok(())
}
