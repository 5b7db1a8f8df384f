//! `outpost ota ...`: signing keys, artifact uploads (streamed, with progress) and listing.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use outpost_ota::manifest::{Manifest, SigningKey};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use super::client::{Client, enc, ok_or_message};
use super::table::{print_json, s, table};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Writes a new Ed25519 key pair: `<dir>/ota-signing.key` (PKCS#8, base64, mode 0600) and
/// `<dir>/ota-signing.pub` (the `ed25519:...` line for `ota.trusted_keys`).
pub fn keygen(dir: &Path) -> anyhow::Result<()> {
    let (key, pkcs8) = SigningKey::generate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let private = dir.join("ota-signing.key");
    let public = dir.join("ota-signing.pub");
    if private.exists() {
        bail!("{} exists; choose another --out", private.display());
    }
    outpost_storage::write_secret_file(&private, B64.encode(&pkcs8).as_bytes())?;
    let line = key.public().encoded();
    std::fs::write(&public, format!("{line}\n"))
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!(
        "signing key: {} (keep it secret, off the node)",
        private.display()
    );
    println!(
        "public key:  {} (key id {})",
        public.display(),
        key.public().id()
    );
    println!();
    println!("Trust it on the node (keep the old key listed while rotating):");
    println!();
    println!("  [ota]");
    println!("  enabled = true");
    println!("  trusted_keys = [\"{line}\"]");
    Ok(())
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let der = B64
        .decode(text.trim())
        .with_context(|| format!("{} is not a key from `outpost ota keygen`", path.display()))?;
    SigningKey::from_pkcs8(&der).map_err(anyhow::Error::msg)
}

/// SHA-256 and size of a file, read once.
async fn digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(ctx.finish().as_ref()), size))
}

/// `outpost ota upload`.
#[derive(clap::Args)]
pub struct Upload {
    pub file: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub version: String,
    /// The signing key (ota-signing.key from `outpost ota keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Device types (profile names) that may install it (repeatable).
    #[arg(long = "compatible", required = true)]
    pub compatible: Vec<String>,
    #[arg(long, default_value = "file")]
    pub payload_type: String,
}

/// Builds and signs the manifest, then streams the file to the OTA service.
pub async fn upload(c: &Client, u: Upload) -> anyhow::Result<()> {
    let key = read_key(&u.key)?;
    let (sha256, size) = digest(&u.file).await?;
    let manifest = serde_json::json!({
        "name": u.name, "version": u.version, "compatible": u.compatible, "size": size,
        "sha256": sha256, "payloadType": u.payload_type,
    });
    let bytes = serde_json::to_vec(&manifest)?;
    Manifest::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let signature = key.sign(&bytes);

    let file = tokio::fs::File::open(&u.file)
        .await
        .with_context(|| format!("cannot open {}", u.file.display()))?;
    let progress = Progress::new(size);
    let stream = futures_util::stream::unfold((file, progress), |(mut f, mut p)| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => {
                p.done();
                None
            }
            Ok(n) => {
                buf.truncate(n);
                p.add(n as u64);
                Some((Ok::<_, std::io::Error>(buf), (f, p)))
            }
            Err(e) => Some((Err(e), (f, p))),
        }
    });
    let v = c
        .upload(
            outpost_ota::SERVICE,
            "/artifact",
            &[
                ("x-outpost-manifest", B64.encode(&bytes)),
                ("x-outpost-signature", signature),
            ],
            reqwest::Body::wrap_stream(stream),
            size,
        )
        .await?;
    println!(
        "uploaded {} {} ({} bytes, sha256 {}), signed by key {}",
        s(&v, "name"),
        s(&v, "version"),
        v["size"],
        s(&v, "sha256"),
        s(&v, "keyId")
    );
    Ok(())
}

/// A progress line on standard error, when it is a terminal.
struct Progress {
    total: u64,
    sent: u64,
    started: Instant,
    shown: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: u64) -> Self {
        let now = Instant::now();
        Self {
            total,
            sent: 0,
            started: now,
            shown: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn add(&mut self, n: u64) {
        self.sent += n;
        if self.tty && self.shown.elapsed().as_millis() >= 100 {
            self.shown = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let frac = if self.total == 0 {
            1.0
        } else {
            self.sent as f64 / self.total as f64
        };
        let width = 30;
        let full = (frac * width as f64) as usize;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let _ = write!(
            std::io::stderr(),
            "\r[{}{}] {:>5.1}% {:.1}/{:.1} MB {:.1} MB/s",
            "#".repeat(full),
            " ".repeat(width - full.min(width)),
            frac * 100.0,
            self.sent as f64 / 1e6,
            self.total as f64 / 1e6,
            self.sent as f64 / 1e6 / secs
        );
    }

    fn done(&mut self) {
        if self.tty {
            self.draw();
            let _ = writeln!(std::io::stderr());
        }
    }
}

pub async fn list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_ota::SERVICE, "/artifact/all").await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["artifacts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let m = &a["manifest"];
            vec![
                s(m, "name"),
                s(m, "version"),
                m["size"].to_string(),
                m["compatible"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                s(m, "sha256").chars().take(12).collect(),
                s(a, "keyId"),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "SIZE", "COMPATIBLE", "SHA256", "KEY"],
        &rows,
    );
    Ok(())
}

/// `outpost ota rollout create`.
#[derive(clap::Args)]
pub struct NewRollout {
    pub name: String,
    /// The artifact's name and version.
    #[arg(long)]
    pub artifact: String,
    #[arg(long)]
    pub version: String,
    /// Target devices by name (repeatable)...
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// ...or those carrying all these labels (repeatable)...
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// ...or the members of a group (`outpost device group add`).
    #[arg(long)]
    pub group: Option<String>,
    /// Maintenance window, daily in UTC, e.g. --window 22:00-04:00: devices start the
    /// update only inside it.
    #[arg(long)]
    pub window: Option<String>,
    /// Cumulative percentages, e.g. --phases 1,10,100.
    #[arg(long, value_delimiter = ',')]
    pub phases: Vec<f64>,
    #[arg(long)]
    pub success_percent: Option<f64>,
    #[arg(long)]
    pub failure_count: Option<u32>,
    #[arg(long)]
    pub failure_percent: Option<f64>,
    #[arg(long)]
    pub min_sample: Option<u32>,
}

pub async fn rollout_create(c: &Client, r: NewRollout) -> anyhow::Result<()> {
    let mut policy = serde_json::Map::new();
    if !r.phases.is_empty() {
        policy.insert("phases".into(), serde_json::json!(r.phases));
    }
    if let Some(v) = r.success_percent {
        policy.insert("successPercent".into(), v.into());
    }
    if let Some(v) = r.failure_count {
        policy.insert("failureCount".into(), v.into());
    }
    if let Some(v) = r.failure_percent {
        policy.insert("failurePercent".into(), v.into());
    }
    if let Some(v) = r.min_sample {
        policy.insert("minSample".into(), v.into());
    }
    if let Some(w) = &r.window {
        let (start, end) = w
            .split_once('-')
            .with_context(|| format!("--window '{w}' must be HH:MM-HH:MM (UTC)"))?;
        policy.insert(
            "window".into(),
            serde_json::json!({"start": start, "end": end}),
        );
    }
    let body = serde_json::json!({
        "name": r.name, "artifact": {"name": r.artifact, "version": r.version},
        "target": {"devices": r.devices, "labels": r.labels, "group": r.group}, "policy": policy,
    });
    let (status, v) = c.post(outpost_ota::SERVICE, "/rollout", &body).await?;
    let v = ok_or_message(status, v)?;
    println!(
        "created rollout {} to {} devices",
        s(&v, "name"),
        v["devices"]
    );
    print_rollout(&v);
    Ok(())
}

fn print_rollout(v: &Value) {
    let state = s(&v["status"], "state");
    let reason = s(&v["status"], "reason");
    println!(
        "{} {} {}: {state}{}",
        s(v, "name"),
        s(&v["artifact"], "name"),
        s(&v["artifact"], "version"),
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        }
    );
    let states = [
        "waiting",
        "offered",
        "downloading",
        "installing",
        "succeeded",
        "failed",
        "rolledBack",
        "canceled",
    ];
    let mut headers = vec!["PHASE", "PERCENT", "DEVICES"];
    headers.extend(states.iter().copied());
    let rows: Vec<Vec<String>> = v["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let open = p["phase"].as_u64() <= v["openPhase"].as_u64();
            let mut row = vec![
                format!("{}{}", p["phase"], if open { " (open)" } else { "" }),
                p["percent"].to_string(),
                p["devices"].to_string(),
            ];
            row.extend(states.iter().map(|st| p["counts"][*st].to_string()));
            row
        })
        .collect();
    table(&headers, &rows);
}

pub async fn rollout_status(c: &Client, name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let v = match name {
        Some(n) => {
            c.get(outpost_ota::SERVICE, &format!("/rollout/name/{}", enc(n)))
                .await?
        }
        None => c.get(outpost_ota::SERVICE, "/rollout/all").await?,
    };
    if json {
        print_json(&v);
        return Ok(());
    }
    match name {
        Some(_) => print_rollout(&v),
        None => {
            for r in v["rollouts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                print_rollout(r);
                println!();
            }
        }
    }
    Ok(())
}

pub async fn rollout_control(c: &Client, name: &str, action: &str) -> anyhow::Result<()> {
    let (status, v) = c
        .post(
            outpost_ota::SERVICE,
            &format!("/rollout/name/{}/{action}", enc(name)),
            &serde_json::json!({}),
        )
        .await?;
    let v = ok_or_message(status, v)?;
    print_rollout(&v);
    Ok(())
}
