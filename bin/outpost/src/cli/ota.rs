//! `outpost ota ...`: signing keys, artifact uploads (streamed, with progress) and listing.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use outpost_contracts::common::SortedKeys;
use outpost_contracts::ota::{
    ArtifactRef, ArtifactUploaded, DeviceState, MultiArtifactsResponse, MultiRolloutsResponse,
    NewRollout as RolloutRequest, Policy, RolloutState, RolloutView, Target, Window,
};
use outpost_ota::manifest::{Manifest, SigningKey};
use tokio::io::AsyncReadExt as _;

use super::client::{Client, decode, enc};
use super::progress::{Progress, Unit};
use super::table::{show, show_table, table};

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
    if text.trim_start().starts_with("ed25519:") {
        bail!(
            "{} is the public key (it goes in ota.trusted_keys); sign with the private key \
             next to it: --key {}",
            path.display(),
            path.with_extension("key").display()
        );
    }
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

/// What `outpost ota sign` and `outpost ota upload` sign: a file and its manifest's fields.
#[derive(clap::Args)]
pub struct Sign {
    /// The firmware or package file.
    pub file: PathBuf,
    /// The artifact's name (rollouts refer to it).
    #[arg(long)]
    pub name: String,
    /// The artifact's version (any text; compared as it is, e.g. 2.1 or 2026.12-rc1).
    #[arg(long)]
    pub version: String,
    /// The signing key (ota-signing.key from `outpost ota keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Device types (profile names) that may install it (repeatable).
    #[arg(long = "compatible", required = true)]
    pub compatible: Vec<String>,
    /// What the agent does with it: `file` (install as is) or a type the device's agent knows.
    #[arg(long, default_value = "file")]
    pub payload_type: String,
}

/// `outpost ota upload`.
#[derive(clap::Args)]
pub struct Upload {
    #[command(flatten)]
    pub what: Sign,
}

/// The manifest of `s.file` as signed: its bytes (JSON with sorted keys), their signature
/// (base64) and the payload's size.
async fn signed(s: &Sign) -> anyhow::Result<(Vec<u8>, String, u64)> {
    let key = read_key(&s.key)?;
    let (sha256, size) = digest(&s.file).await?;
    let manifest = Manifest {
        name: s.name.clone(),
        version: s.version.clone(),
        compatible: s.compatible.clone(),
        size,
        sha256,
        payload_type: s.payload_type.clone(),
    };
    // Signed as manifests always were: with sorted keys.
    let bytes = serde_json::to_vec(&SortedKeys(&manifest))?;
    Manifest::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let signature = key.sign(&bytes);
    Ok((bytes, signature, size))
}

/// The signature file `outpost ota sign` writes next to the payload, for uploads from the
/// web console: the manifest as uploaded (`manifest`, base64) and its signature.
#[derive(serde::Serialize)]
struct SignatureFile {
    manifest: String,
    signature: String,
}

/// `outpost ota sign`: writes `<file>.sig.json`, so the payload can be uploaded where the
/// signing key is not (the web console takes the file and its signature file).
pub async fn sign(s: Sign) -> anyhow::Result<()> {
    let (bytes, signature, size) = signed(&s).await?;
    let mut out = s.file.clone().into_os_string();
    out.push(".sig.json");
    let out = PathBuf::from(out);
    let text = serde_json::to_string_pretty(&SignatureFile {
        manifest: B64.encode(&bytes),
        signature,
    })?;
    std::fs::write(&out, format!("{text}\n"))
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "signed {} {} ({size} bytes): {}",
        s.name,
        s.version,
        out.display()
    );
    Ok(())
}

/// Signs the manifest, then streams the file to the OTA service.
pub async fn upload(c: &Client, u: Upload) -> anyhow::Result<()> {
    let u = u.what;
    let (bytes, signature, size) = signed(&u).await?;

    let file = tokio::fs::File::open(&u.file)
        .await
        .with_context(|| format!("cannot open {}", u.file.display()))?;
    let progress = Progress::new("upload", Unit::Bytes, size).lines();
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
    let answer = c
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
    let up: ArtifactUploaded = decode(answer)?;
    println!(
        "uploaded {} {} ({} bytes, sha256 {}), signed by key {}",
        up.name, up.version, up.size, up.sha256, up.key_id
    );
    Ok(())
}

pub async fn list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_ota::SERVICE, "/artifact/all").await?;
    show_table(
        v,
        json,
        &["NAME", "VERSION", "SIZE", "COMPATIBLE", "SHA256", "KEY"],
        |all: MultiArtifactsResponse| {
            all.artifacts
                .into_iter()
                .map(|a| {
                    let m = a.manifest;
                    vec![
                        m.name,
                        m.version,
                        m.size.to_string(),
                        m.compatible.join(","),
                        m.sha256.chars().take(12).collect(),
                        a.key_id,
                    ]
                })
                .collect()
        },
    )
}

/// `outpost ota rollout create`.
#[derive(clap::Args)]
pub struct NewRollout {
    /// The rollout's name.
    pub name: String,
    /// The artifact's name (`outpost ota list`).
    #[arg(long)]
    pub artifact: String,
    /// The artifact's version.
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
    /// Share of updated devices that must succeed for the rollout to succeed (percent; default: the service's).
    #[arg(long)]
    pub success_percent: Option<f64>,
    /// Pause the rollout after this many failed devices (default: the service's).
    #[arg(long)]
    pub failure_count: Option<u32>,
    /// Pause the rollout when this share of devices failed (percent; default: the service's).
    #[arg(long)]
    pub failure_percent: Option<f64>,
    /// Devices that must have finished before --failure-percent is judged.
    #[arg(long)]
    pub min_sample: Option<u32>,
}

pub async fn rollout_create(c: &Client, r: NewRollout) -> anyhow::Result<()> {
    // What is not given is the service's default.
    let mut policy = Policy::default();
    if !r.phases.is_empty() {
        policy.phases = r.phases;
    }
    if let Some(v) = r.success_percent {
        policy.success_percent = v;
    }
    if let Some(v) = r.failure_count {
        policy.failure_count = v;
    }
    if let Some(v) = r.failure_percent {
        policy.failure_percent = v;
    }
    if let Some(v) = r.min_sample {
        policy.min_sample = v;
    }
    if let Some(w) = &r.window {
        let (start, end) = w
            .split_once('-')
            .with_context(|| format!("--window '{w}' must be HH:MM-HH:MM (UTC)"))?;
        policy.window = Some(Window {
            start: start.to_string(),
            end: end.to_string(),
        });
    }
    let body = RolloutRequest {
        name: r.name,
        artifact: ArtifactRef {
            name: r.artifact,
            version: r.version,
        },
        target: Target {
            devices: r.devices,
            labels: r.labels,
            group: r.group,
        },
        policy,
    };
    let answer = c
        .call(
            reqwest::Method::POST,
            outpost_ota::SERVICE,
            "/rollout",
            &body,
        )
        .await?;
    let rollout: RolloutView = decode(answer)?;
    println!(
        "created rollout {} to {} device{}",
        rollout.name,
        rollout.devices,
        if rollout.devices == 1 { "" } else { "s" }
    );
    print_rollout(&rollout);
    Ok(())
}

fn print_rollout(r: &RolloutView) {
    let reason = match &r.status {
        RolloutState::Paused { reason, .. } | RolloutState::Failed { reason }
            if !reason.is_empty() =>
        {
            format!(" ({reason})")
        }
        _ => String::new(),
    };
    println!(
        "{} {} {}: {}{reason}",
        r.name,
        r.artifact.name,
        r.artifact.version,
        r.status.name()
    );
    let states: Vec<String> = DeviceState::ALL.iter().map(|s| s.name()).collect();
    let mut headers = vec!["PHASE", "PERCENT", "DEVICES"];
    headers.extend(states.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = r
        .phases
        .iter()
        .map(|p| {
            let open = if p.phase <= r.open_phase {
                " (open)"
            } else {
                ""
            };
            let mut row = vec![
                format!("{}{open}", p.phase),
                p.percent.map_or_else(|| "-".into(), |v| format!("{v}%")),
                p.devices.to_string(),
            ];
            row.extend(
                DeviceState::ALL
                    .iter()
                    .map(|st| p.counts.get(st).copied().unwrap_or(0).to_string()),
            );
            row
        })
        .collect();
    table(&headers, &rows);
}

pub async fn rollout_status(
    c: &Client,
    name: Option<&str>,
    json: bool,
    watch: bool,
) -> anyhow::Result<()> {
    match name {
        Some(n) if watch => watch_rollout(c, n, json).await,
        Some(n) => {
            let v = c
                .get(outpost_ota::SERVICE, &format!("/rollout/name/{}", enc(n)))
                .await?;
            show(v, json, |r: RolloutView| {
                print_rollout(&r);
                Ok(())
            })
        }
        None => {
            let v = c.get(outpost_ota::SERVICE, "/rollout/all").await?;
            show(v, json, |all: MultiRolloutsResponse| {
                for r in &all.rollouts {
                    print_rollout(r);
                    println!();
                }
                Ok(())
            })
        }
    }
}

/// `rollout status NAME --watch`: the rollout again each time it changes, until it ends;
/// a rollout that failed or was canceled is an error (exit status 1), for scripts.
async fn watch_rollout(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/rollout/name/{}", enc(name));
    let mut last = None;
    loop {
        let v = c.get(outpost_ota::SERVICE, &path).await?;
        let r: RolloutView = decode(v.clone())?;
        let now = (r.status.clone(), r.counts.clone(), r.open_phase);
        if last.as_ref() != Some(&now) {
            if json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                print_rollout(&r);
                println!();
            }
            last = Some(now);
        }
        match r.status {
            RolloutState::Finished => return Ok(()),
            RolloutState::Failed { reason } => bail!("rollout {name} failed: {reason}"),
            RolloutState::Canceled => bail!("rollout {name} was canceled"),
            RolloutState::Running | RolloutState::Paused { .. } => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

pub async fn rollout_control(c: &Client, name: &str, action: &str) -> anyhow::Result<()> {
    let path = format!("/rollout/name/{}/{action}", enc(name));
    let answer = c
        .call(
            reqwest::Method::POST,
            outpost_ota::SERVICE,
            &path,
            &serde_json::json!({}),
        )
        .await?;
    print_rollout(&decode(answer)?);
    Ok(())
}
