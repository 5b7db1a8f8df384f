//! `outpost-agent`: the reference device agent for Outpost OTA (docs/ota.md).
//!
//! It polls the OTA service for the device, downloads an offered artifact with HTTP ranges
//! (an interrupted download resumes where it stopped, also across restarts), verifies the
//! manifest's Ed25519 signature against the keys it trusts and the payload's size and
//! SHA-256, installs it into the inactive one of two slots (`slot-a`, `slot-b`), switches,
//! runs a health check, and commits on success or switches back on failure, reporting each
//! step. Its state (`state.json`, written atomically) records the step it is at, so a
//! restart at any point carries on from there. Reports that cannot be delivered are kept
//! and sent later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::Parser;
use futures_util::StreamExt as _;
use outpost_contracts::ddi;
use outpost_manifest::{Manifest, PublicKey};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

/// Standard output in place of `std`'s `println!`, which panics when it cannot write: the
/// agent is a daemon, and a log reader that went away must not stop its updates.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

// The CLI's progress line, shared: this agent writes it as lines to its log.
#[allow(dead_code)]
#[path = "../cli/progress.rs"]
mod progress;
use progress::{Progress, Unit};

#[derive(Parser, Debug)]
#[command(name = "outpost-agent", version, about = "Outpost OTA device agent")]
struct Args {
    /// The OTA service: `http://HOST:59750`, or through the gateway `https://HOST:8443/ota`.
    #[arg(long, env = "OUTPOST_AGENT_SERVER")]
    server: String,
    /// This device's name.
    #[arg(long, env = "OUTPOST_AGENT_DEVICE")]
    device: String,
    /// A file holding this device's secret.
    #[arg(long, required_unless_present = "cert")]
    token_file: Option<PathBuf>,
    /// This device's client certificate (PEM, as `outpost device enroll --cert` writes it,
    /// or one from its manufacturer), presented to the gateway instead of a secret.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The key of `--cert` (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Keys whose signatures are accepted (`ed25519:<base64>`, repeatable).
    #[arg(long = "trusted-key", required = true)]
    trusted_keys: Vec<String>,
    /// Where the agent keeps its state and the two slots.
    #[arg(long)]
    state_dir: PathBuf,
    /// Run (with `sh -c`) after switching to a new version; exit status 0 commits it.
    /// `OUTPOST_SLOT`, `OUTPOST_ARTIFACT_NAME` and `OUTPOST_ARTIFACT_VERSION` are set.
    #[arg(long)]
    health_cmd: String,
    /// A CA certificate (PEM) to trust for `https://` servers.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Seconds between polls (default: what the server suggests).
    #[arg(long)]
    poll_s: Option<u64>,
    /// Download at most this many bytes per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Stop after the first poll that offers nothing (with nothing left to do).
    #[arg(long)]
    once: bool,
    /// An attribute this device reports for the inventory, `key=value` (repeatable), e.g.
    /// `--attr hardware=rev3`; the firmware name, version and active slot are added.
    #[arg(long = "attr")]
    attrs: Vec<String>,
    /// The node's MQTT broker (`mqtt://HOST:1883`): the agent connects with its name and
    /// secret and polls at once when the server says so, instead of at the next interval.
    #[arg(long, requires = "token_file")]
    mqtt: Option<String>,
    /// The topic the server uses to say "poll now" (default `command/<device>/ota`).
    #[arg(long)]
    mqtt_topic: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    name: String,
    version: String,
    size: u64,
    sha256: String,
    manifest_base64: String,
    signature: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Step {
    Downloading,
    Installed,
    Switched,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    action: String,
    artifact: Artifact,
    download: String,
    feedback: String,
    step: Step,
    /// The slot to go back to.
    previous: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    feedback: String,
    status: String,
    details: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    active: String,
    /// What the active slot holds (name, version, sha256).
    installed: Option<(String, String, String)>,
    pending: Option<Pending>,
    unsent: Vec<Report>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            active: "a".into(),
            installed: None,
            pending: None,
            unsent: Vec::new(),
        }
    }
}

struct Agent {
    args: Args,
    http: reqwest::Client,
    token: Option<String>,
    keys: Vec<PublicKey>,
    state: State,
    etag: Option<String>,
}

fn other(slot: &str) -> &'static str {
    if slot == "a" { "b" } else { "a" }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Agent {
    /// The device's secret as a header, when it authenticates with one (a certificate is
    /// presented in the TLS handshake instead).
    fn auth(&self) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(t) = &self.token
            && let Ok(v) = reqwest::header::HeaderValue::from_str(t)
        {
            h.insert("x-outpost-device-token", v);
        }
        h
    }

    /// Reports the inventory attributes: the given ones, the installed firmware, the slot.
    async fn report_attributes(&self) {
        let mut attributes: outpost_contracts::ota::Attributes = self
            .args
            .attrs
            .iter()
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some((name, version, _)) = &self.state.installed {
            attributes.insert("firmware.name".into(), name.clone());
            attributes.insert("firmware.version".into(), version.clone());
        }
        attributes.insert("agent.slot".into(), self.state.active.clone());
        let sent = self
            .http
            .put(self.url(&format!("/api/v3/ddi/{}/attributes", self.args.device)))
            .headers(self.auth())
            .json(&ddi::Reported { attributes })
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!("{}: attributes refused: {}", self.args.device, r.status()),
            Err(e) => eprintln!("{}: cannot report attributes: {e}", self.args.device),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.args.state_dir.join("state.json")
    }

    fn slot(&self, name: &str) -> PathBuf {
        self.args.state_dir.join(format!("slot-{name}"))
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync of the directory).
    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.args.state_dir.join("state.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(&self.state)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.state_path())?;
        sync_dir(&self.args.state_dir);
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.args.server.trim_end_matches('/'))
    }

    fn report(
        &mut self,
        feedback: &str,
        status: &str,
        details: impl Into<String>,
    ) -> anyhow::Result<()> {
        let details = details.into();
        // For people: "rolled back: health check failed (exit 1); back on slot a".
        let said = match status {
            "rolledBack" => "rolled back",
            other => other,
        };
        if details.is_empty() {
            println!("{}: {said}", self.args.device);
        } else {
            println!("{}: {said}: {details}", self.args.device);
        }
        self.state.unsent.push(Report {
            feedback: feedback.to_string(),
            status: status.to_string(),
            details,
        });
        self.save()
    }

    /// Sends the kept reports in order; stops at the first that cannot be delivered now.
    async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.state.unsent.first().cloned() {
            let sent = self
                .http
                .post(self.url(&r.feedback))
                .headers(self.auth())
                .json(&serde_json::json!({"status": r.status, "details": r.details}))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() || resp.status().is_client_error() => {
                    if resp.status().is_client_error() {
                        eprintln!(
                            "{}: the server refused a report ({}); dropping it",
                            self.args.device,
                            resp.status()
                        );
                    }
                    self.state.unsent.remove(0);
                    self.save()?;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Polls; returns the suggested interval and starts an offered action.
    async fn poll(&mut self) -> anyhow::Result<u64> {
        let mut req = self
            .http
            .get(self.url(&format!("/api/v3/ddi/{}", self.args.device)))
            .headers(self.auth());
        if let Some(e) = &self.etag {
            req = req.header("if-none-match", e);
        }
        let resp = req.send().await.context("poll")?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(30);
        }
        if !resp.status().is_success() {
            bail!("poll answered {}", resp.status());
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.context("poll")?;
        let poll = ddi::Poll::parse(&body).map_err(|e| anyhow::anyhow!("poll answer: {e}"))?;
        let interval = poll.poll_seconds;
        let Some(action) = poll.action else {
            self.etag = etag;
            return Ok(interval);
        };
        let artifact = Artifact {
            name: action.artifact.name,
            version: action.artifact.version,
            size: action.artifact.size,
            sha256: action.artifact.sha256,
            manifest_base64: action.artifact.manifest_base64,
            signature: action.artifact.signature,
        };
        if self
            .state
            .installed
            .as_ref()
            .is_some_and(|(_, _, sha)| *sha == artifact.sha256)
        {
            // Already running this payload (a report got lost): say so.
            self.report(&action.feedback, "succeeded", "already installed")?;
            self.etag = etag;
            return Ok(interval);
        }
        self.state.pending = Some(Pending {
            action: action.id,
            download: action.download,
            feedback: action.feedback,
            artifact,
            step: Step::Downloading,
            previous: self.state.active.clone(),
        });
        self.save()?;
        Ok(interval)
    }

    /// Downloads the payload into `download.part`, resuming a partial one; retries with
    /// backoff until it is complete.
    async fn download(&mut self, p: &Pending) -> anyhow::Result<PathBuf> {
        let part = self.args.state_dir.join("download.part");
        let owner = self.args.state_dir.join("download.sha256");
        if std::fs::read_to_string(&owner).ok().as_deref() != Some(p.artifact.sha256.as_str()) {
            let _ = std::fs::remove_file(&part);
            std::fs::write(&owner, &p.artifact.sha256)?;
        }
        let mut delay = Duration::from_millis(200);
        let have = std::fs::metadata(&part).map_or(0, |m| m.len());
        let mut progress = Progress::new(
            format!(
                "{}: downloading {} {}",
                self.args.device, p.artifact.name, p.artifact.version
            ),
            Unit::Bytes,
            p.artifact.size,
        )
        .lines()
        .starting_at(have);
        loop {
            let have = std::fs::metadata(&part).map_or(0, |m| m.len());
            progress.set(have, p.artifact.size);
            if have >= p.artifact.size {
                progress.done();
                return Ok(part);
            }
            match self.fetch(p, &part, have, &mut progress).await {
                Ok(()) => delay = Duration::from_millis(200),
                Err(e) => {
                    eprintln!(
                        "{}: download interrupted at {have} bytes: {e:#}; retrying",
                        self.args.device
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn fetch(
        &self,
        p: &Pending,
        part: &Path,
        have: u64,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let mut req = self.http.get(self.url(&p.download)).headers(self.auth());
        if have > 0 {
            req = req
                .header("range", format!("bytes={have}-"))
                .header("if-range", format!("\"{}\"", p.artifact.sha256));
        }
        let resp = req.send().await?;
        let mut file = match resp.status().as_u16() {
            206 => {
                tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(part)
                    .await?
            }
            200 => tokio::fs::File::create(part).await?,
            s => bail!("download answered {s}"),
        };
        let started = Instant::now();
        let mut got = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await?;
            got += chunk.len() as u64;
            progress.set(have + got, p.artifact.size);
            if let Some(rate) = self.args.rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64(got as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    file.flush().await?;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        file.sync_all().await?;
        Ok(())
    }

    /// Checks the signature, the manifest and the payload; the reason if any fails.
    fn verify(&self, p: &Pending, part: &Path) -> Result<(), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&p.artifact.manifest_base64)
            .map_err(|_| "the manifest is not base64".to_string())?;
        let key = outpost_manifest::verify(&bytes, &p.artifact.signature, &self.keys)
            .map_err(|e| e.to_string())?;
        let m = Manifest::parse(&bytes).map_err(|e| e.to_string())?;
        if m.sha256 != p.artifact.sha256 || m.size != p.artifact.size {
            return Err("the offered artifact differs from its signed manifest".into());
        }
        let data = std::fs::read(part).map_err(|e| format!("cannot read the download: {e}"))?;
        if data.len() as u64 != m.size {
            return Err(format!(
                "the payload has {} bytes, the manifest says {}",
                data.len(),
                m.size
            ));
        }
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data));
        if sha != m.sha256 {
            return Err(format!(
                "the payload's SHA-256 is {sha}, the signed manifest says {}: not installed",
                m.sha256
            ));
        }
        println!(
            "{}: verified {} {} (key {key})",
            self.args.device, m.name, m.version
        );
        Ok(())
    }

    /// Carries the pending action on from its step to the end.
    async fn run_action(&mut self, mut p: Pending) -> anyhow::Result<()> {
        if p.step == Step::Downloading {
            if self.state.unsent.is_empty() {
                self.report(&p.feedback.clone(), "downloading", "")?;
            }
            let part = self.download(&p).await?;
            if let Err(why) = self.verify(&p, &part) {
                let _ = std::fs::remove_file(&part);
                self.state.pending = None;
                return self.report(&p.feedback, "failed", why);
            }
            // Into the inactive slot, synced, before anything points at it.
            let target = other(&self.state.active);
            let slot = self.slot(target);
            let _ = std::fs::remove_dir_all(&slot);
            std::fs::create_dir_all(&slot)?;
            std::fs::rename(&part, slot.join("payload"))?;
            let manifest = base64::engine::general_purpose::STANDARD
                .decode(&p.artifact.manifest_base64)
                .unwrap_or_default();
            std::fs::write(slot.join("manifest.json"), manifest)?;
            std::fs::write(slot.join("manifest.sig"), &p.artifact.signature)?;
            if let Ok(f) = std::fs::File::open(slot.join("payload")) {
                let _ = f.sync_all();
            }
            sync_dir(&slot);
            p.step = Step::Installed;
            self.state.pending = Some(p.clone());
            self.report(&p.feedback, "installing", format!("into slot {target}"))?;
        }
        if p.step == Step::Installed {
            p.previous = self.state.active.clone();
            self.state.active = other(&p.previous).to_string();
            p.step = Step::Switched;
            self.state.pending = Some(p.clone());
            self.save()?;
        }
        // Switched: the health check decides.
        let slot = self.slot(&self.state.active);
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&self.args.health_cmd)
                .env("OUTPOST_SLOT", &slot)
                .env("OUTPOST_ARTIFACT_NAME", &p.artifact.name)
                .env("OUTPOST_ARTIFACT_VERSION", &p.artifact.version)
                .output(),
        )
        .await;
        let healthy = match &out {
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => {
                let said: String = String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .chars()
                    .take(300)
                    .collect();
                let code = o
                    .status
                    .code()
                    .map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
                Err(if said.is_empty() {
                    format!("health check failed ({code})")
                } else {
                    format!("health check failed ({code}): {said}")
                })
            }
            Ok(Err(e)) => Err(format!("health check could not run: {e}")),
            Err(_) => Err("health check timed out".into()),
        };
        self.state.pending = None;
        match healthy {
            Ok(()) => {
                self.state.installed = Some((
                    p.artifact.name.clone(),
                    p.artifact.version.clone(),
                    p.artifact.sha256.clone(),
                ));
                self.report(
                    &p.feedback,
                    "succeeded",
                    format!(
                        "running {} from slot {}",
                        p.artifact.version, self.state.active
                    ),
                )
            }
            Err(why) => {
                self.state.active = p.previous.clone();
                self.report(
                    &p.feedback,
                    "rolledBack",
                    format!("{why}; back on slot {}", p.previous),
                )
            }
        }
    }
}

fn client(args: &Args) -> anyhow::Result<reqwest::Client> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .no_proxy();
    if let Some(ca) = &args.ca {
        let pem = read(ca)?;
        let identity = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let cfg = outpost_pki::client_config(
            &pem,
            identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )?;
        b = b.tls_backend_preconfigured(cfg);
    } else if args.cert.is_some() {
        bail!("--cert needs --ca (the gateway's CA): a certificate is presented over TLS only");
    }
    Ok(b.build()?)
}

/// Subscribes to the "poll now" topic; every message there wakes the poll loop. The client
/// reconnects by itself; a broker that cannot be reached only means polling at intervals.
async fn listen(
    args: &Args,
    token: &str,
    url: &str,
    wake: &Arc<tokio::sync::Notify>,
) -> mqtt5::MqttClient {
    // Client IDs starting with "outpost-" are the node's own.
    let opts = mqtt5::ConnectOptions::new(format!("{}-ota-agent", args.device))
        .with_credentials(args.device.clone(), token.as_bytes())
        .with_keep_alive(Duration::from_secs(30))
        .with_automatic_reconnect(true)
        .with_reconnect_delay(Duration::from_millis(200), Duration::from_secs(10));
    let client = mqtt5::MqttClient::with_options(opts);
    let topic = args
        .mqtt_topic
        .clone()
        .unwrap_or_else(|| format!("command/{}/ota", args.device));
    match client.connect(url).await {
        Ok(()) => {
            let w = Arc::clone(wake);
            if let Err(e) = client
                .subscribe(topic.clone(), move |_| w.notify_one())
                .await
            {
                eprintln!("{}: cannot subscribe to {topic}: {e}", args.device);
            }
        }
        Err(e) => eprintln!("{}: cannot reach the broker at {url}: {e}", args.device),
    }
    client
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(bad) = args.attrs.iter().find(|a| !a.contains('=')) {
        bail!("--attr '{bad}' must be key=value");
    }
    std::fs::create_dir_all(&args.state_dir)?;
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let keys = args
        .trusted_keys
        .iter()
        .map(|k| PublicKey::parse(k).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state = match std::fs::read(args.state_dir.join("state.json")) {
        Ok(b) => serde_json::from_slice(&b).context("state.json is not readable")?,
        Err(_) => State::default(),
    };
    let mut agent = Agent {
        http: client(&args)?,
        token,
        keys,
        state,
        etag: None,
        args,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let _mqtt = match &agent.args.mqtt {
        Some(url) => Some(
            listen(
                &agent.args,
                agent.token.as_deref().unwrap_or(""),
                url,
                &wake,
            )
            .await,
        ),
        None => None,
    };
    agent.report_attributes().await;
    loop {
        let _ = agent.flush().await;
        if let Some(p) = agent.state.pending.clone() {
            agent.run_action(p).await?;
            let _ = agent.flush().await;
            agent.report_attributes().await;
            continue;
        }
        let interval = match agent.poll().await {
            Ok(i) => i,
            Err(e) => {
                eprintln!("{}: {e:#}", agent.args.device);
                5
            }
        };
        if agent.state.pending.is_some() {
            continue;
        }
        if agent.args.once && agent.state.unsent.is_empty() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(
                agent.args.poll_s.unwrap_or(interval).max(1),
            )) => {}
            () = wake.notified() => {
                agent.etag = None;
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
