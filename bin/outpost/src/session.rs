//! How the CLI reaches a node through its gateway: over TLS trusting the node's CA, with a
//! token.
//!
//! - The gateway: `--gateway URL` (or `OUTPOST_GATEWAY`) for a remote node, else this
//!   node's own gateway (`gateway.listen`) when it is enabled. With the gateway disabled
//!   the CLI calls the services directly, as a process on the node may.
//! - The CA: `--ca FILE` (or `OUTPOST_CA`), else the one stored with the session by
//!   `outpost login`, else (for this node's own gateway) `<data>/tls/ca.pem`. No other
//!   certificate is trusted.
//! - The token: `--token` (or `OUTPOST_TOKEN`: an API key or access token), else the
//!   session of `outpost login` for that gateway (its access token, renewed with the
//!   refresh token when it expires), else, for this node's own gateway, the generated admin
//!   credential in `<data>/secrets/admin-password` (which needs read access to the node's
//!   secrets).
//!
//! Sessions live in `$XDG_CONFIG_HOME/outpost/sessions/` (or `~/.config/...`), one file
//! per gateway, mode 0600.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::NodeConfig;

/// What the command line says about the gateway.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    pub gateway: Option<String>,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
}

/// A stored login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub gateway: String,
    pub username: String,
    pub role: String,
    pub access_token: String,
    /// Unix seconds after which the access token is renewed.
    pub renew_at: i64,
    pub refresh_token: String,
    /// The CA trusted for this gateway (PEM), when it came from `--ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// A gateway the CLI talks to.
pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    ca_pem: String,
    ca_given: bool,
    fixed_token: Option<String>,
    /// This node's generated admin credential, when the gateway is this node's.
    admin_password: Option<PathBuf>,
    session_file: Option<PathBuf>,
    session: tokio::sync::Mutex<Option<Session>>,
}

fn now_s() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
    .unwrap_or(i64::MAX)
}

/// `~/.config/outpost/sessions/<host>_<port>.json`.
fn session_file(base: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let name: String = base
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(dir.join("outpost/sessions").join(format!("{name}.json")))
}

fn read_session(path: &Path) -> Option<Session> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// An HTTPS client that trusts only `ca_pem`.
fn trusting(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    let tls = outpost_pki::client_config(ca_pem, None)?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?)
}

impl Gateway {
    /// Whether this is the gateway of the node whose data dir the CLI was pointed at.
    pub fn is_this_nodes(&self) -> bool {
        self.admin_password.is_some()
    }

    /// The gateway to use, or `None` to call the services directly (gateway disabled and
    /// no `--gateway`).
    pub fn resolve(cfg: &NodeConfig, data_dir: &Path, r: &Remote) -> anyhow::Result<Option<Self>> {
        let base = match &r.gateway {
            Some(url) => {
                let url = url.trim_end_matches('/').to_string();
                if !url.starts_with("https://") {
                    bail!("--gateway must be an https:// URL, got {url}");
                }
                url
            }
            None if cfg.gateway.enabled => {
                let l = cfg.gateway.listen;
                let host = if l.ip().is_unspecified() || l.ip().is_loopback() {
                    "localhost".to_string()
                } else if l.is_ipv6() {
                    format!("[{}]", l.ip())
                } else {
                    l.ip().to_string()
                };
                format!("https://{host}:{}", l.port())
            }
            None => return Ok(None),
        };
        // This node's own files (CA, admin credential) count only for this node's gateway.
        let own_node = r.gateway.is_none();
        let session_file = session_file(&base);
        let stored = session_file.as_deref().and_then(read_session);
        let node_ca = data_dir.join("tls/ca.pem");
        let local_ca = || {
            own_node
                .then(|| std::fs::read_to_string(&node_ca).ok())
                .flatten()
        };
        let (ca_pem, ca_given) = if let Some(path) = &r.ca {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            (pem, true)
        } else if let Some(pem) = stored.as_ref().and_then(|s| s.ca.clone()) {
            (pem, false)
        } else if let Some(pem) = local_ca() {
            (pem, false)
        } else if own_node {
            bail!("{}", no_node(data_dir, &node_ca));
        } else {
            bail!(
                "the CA of {base} is not known: pass --ca FILE (the node's {} , also served at \
                 {base}/api/v3/ca.pem, to be checked out of band)",
                node_ca.display()
            );
        };
        Ok(Some(Self {
            http: trusting(&ca_pem)?,
            base,
            ca_pem,
            ca_given,
            fixed_token: r.token.clone().filter(|t| !t.is_empty()),
            admin_password: own_node.then(|| data_dir.join("secrets/admin-password")),
            session_file,
            session: tokio::sync::Mutex::new(stored),
        }))
    }

    fn store(&self, s: &Session) -> anyhow::Result<()> {
        let Some(path) = &self.session_file else {
            bail!("cannot store the session: neither XDG_CONFIG_HOME nor HOME is set");
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        outpost_storage::replace_secret_file(path, &serde_json::to_vec_pretty(s)?)
            .with_context(|| format!("cannot store the session in {}", path.display()))?;
        Ok(())
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| unreachable(&self.base, &e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    fn session_of(&self, v: &Value, ca: Option<String>) -> anyhow::Result<Session> {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("the gateway's answer has no {k}"))
        };
        let expires_in = v.get("expiresIn").and_then(Value::as_i64).unwrap_or(60);
        Ok(Session {
            gateway: self.base.clone(),
            username: s("username")?,
            role: s("role")?,
            access_token: s("accessToken")?,
            // Renewed a little before it expires.
            renew_at: now_s() + expires_in - expires_in.min(30),
            refresh_token: s("refreshToken")?,
            ca,
        })
    }

    /// Logs in and stores the session.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Session> {
        let (status, body) = self
            .post(
                "/api/v3/auth/login",
                &json!({"username": username, "password": password}),
            )
            .await?;
        if status != 200 {
            bail!("login refused: {status} {}", message(&body));
        }
        let ca = self.ca_given.then(|| self.ca_pem.clone());
        let session = self.session_of(&body, ca)?;
        self.store(&session)?;
        *self.session.lock().await = Some(session.clone());
        Ok(session)
    }

    /// Ends the stored session: its refresh token is revoked and the file removed.
    pub async fn logout(&self) -> anyhow::Result<bool> {
        let Some(s) = self.session.lock().await.take() else {
            return Ok(false);
        };
        let _ = self
            .http
            .post(format!("{}/api/v3/auth/logout", self.base))
            .bearer_auth(&s.access_token)
            .json(&json!({"refreshToken": s.refresh_token}))
            .send()
            .await;
        if let Some(path) = &self.session_file {
            let _ = std::fs::remove_file(path);
        }
        Ok(true)
    }

    /// The token for the next request.
    pub async fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.fixed_token {
            return Ok(t.clone());
        }
        if let Some(s) = self.session.lock().await.as_ref()
            && s.renew_at > now_s()
        {
            return Ok(s.access_token.clone());
        }
        self.renew().await
    }

    /// A new access token: by the session's refresh token, else the node's admin
    /// credential.
    pub async fn renew(&self) -> anyhow::Result<String> {
        if self.fixed_token.is_some() {
            bail!("the token given with --token / OUTPOST_TOKEN was refused");
        }
        let current = self.session.lock().await.clone();
        if let Some(s) = current {
            let (status, body) = self
                .post(
                    "/api/v3/auth/refresh",
                    &json!({"refreshToken": s.refresh_token}),
                )
                .await?;
            if status == 200 {
                let fresh = self.session_of(&body, s.ca.clone())?;
                self.store(&fresh)?;
                let token = fresh.access_token.clone();
                *self.session.lock().await = Some(fresh);
                return Ok(token);
            }
        }
        match self
            .admin_password
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            Some(p) => Ok(self.login("admin", p.trim()).await?.access_token),
            None => bail!(
                "not logged in to {}: run `outpost login` (or pass an API key with --token)",
                self.base
            ),
        }
    }
}

pub fn unreachable(base: &str, e: &reqwest::Error) -> anyhow::Error {
    let mut msg = format!("{base} is not reachable: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    if msg.contains("UnknownIssuer") || msg.contains("BadSignature") {
        return anyhow::anyhow!(
            "{base} is not the node the CLI trusts: its certificate is not signed by the CA \
             the CLI was given or keeps from `outpost login` ({msg}); pass that node's CA with \
             --ca FILE (its <data dir>/tls/ca.pem, also at /api/v3/ca.pem), then log in again"
        );
    }
    anyhow::anyhow!("{msg}; is the node up (outpost up)?")
}

pub fn message(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .map_or_else(|| body.to_string(), str::to_string)
}

/// A password: the first line of stdin with `--password-stdin`, else asked for on the
/// terminal (twice when `confirm`).
pub fn read_password(from_stdin: bool, prompt: &str, confirm: bool) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _};
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        if p.is_empty() {
            bail!("no password on stdin");
        }
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password: use --password-stdin");
    }
    let p = rpassword::prompt_password(prompt)?;
    if confirm && rpassword::prompt_password("Again: ")? != p {
        bail!("the passwords differ");
    }
    Ok(p)
}

/// A random password for a new user: 24 characters from the system's random source.
pub fn generate_password() -> anyhow::Result<String> {
    use std::io::Read as _;
    // 56 symbols: 4 bytes of randomness per character, reduced without noticeable bias.
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut b = [0u8; 96];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b.chunks_exact(4)
        .map(|c| {
            let n = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            char::from(ALPHABET[n % ALPHABET.len()])
        })
        .collect())
}

/// Whether a node runs on `data_dir` (it holds the data dir's lock); `None` when this
/// user cannot tell (the lock is the service user's and not this user's to open).
pub fn node_running(data_dir: &Path) -> Option<bool> {
    lock_held(&data_dir.join("run/outpost.lock"))
}

/// Whether a process holds the lock file `lock`; `None` when this user cannot tell.
pub fn lock_held(lock: &Path) -> Option<bool> {
    match std::fs::OpenOptions::new().write(true).open(lock) {
        Ok(f) => Some(matches!(
            f.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
        Err(_) => Some(false),
    }
}

/// Where a running node records its data dir for its user's CLI: `$XDG_RUNTIME_DIR/outpost`
/// when that directory is this user's (root keeps a user's `XDG_RUNTIME_DIR` under `su` or
/// `sudo -E`: not trusted), else `/run/outpost` for root, else `~/.local/state/outpost`.
fn record_file() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = rustix::process::geteuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.uid() == uid));
    let dir = if let Some(d) = runtime {
        d.join("outpost")
    } else if uid == 0 {
        PathBuf::from("/run/outpost")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".local/state/outpost")
    };
    Some(dir.join("node.json"))
}

/// Whether `path` (the record, or its directory) is this user's alone: owned by it and
/// writable by no one else, so no other user could have planted or changed it.
fn own_alone(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let uid = rustix::process::geteuid().as_raw();
    std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == uid && m.mode() & 0o022 == 0)
}

/// The record at `path`, if it is this user's alone.
fn read_record(path: &Path) -> Option<Record> {
    let dir = path.parent()?;
    if !(own_alone(dir) && own_alone(path)) {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What a running node records of itself for the CLI of its user.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    data_dir: PathBuf,
    pid: u32,
}

/// Records that this process runs the node on `data_dir`, so `outpost` without
/// `--data-dir` finds it; best effort (a CLI given the data dir does not need it). Whether
/// the record names this node now.
pub fn record_node(data_dir: &Path) -> bool {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let Some(path) = record_file() else {
        return false;
    };
    let data_dir = data_dir
        .canonicalize()
        .or_else(|_| std::path::absolute(data_dir))
        .unwrap_or_else(|_| data_dir.to_path_buf());
    // A node that runs keeps its record: a second start elsewhere may fail (its ports
    // are taken) and must not hide the first from the CLI.
    if let Some(r) = read_record(&path)
        && r.data_dir != data_dir
        && node_running(&r.data_dir) == Some(true)
    {
        return false;
    }
    let record = Record {
        data_dir,
        pid: std::process::id(),
    };
    let (Some(dir), Ok(json)) = (path.parent(), serde_json::to_vec(&record)) else {
        return false;
    };
    // A file of its own name made here (never one that exists, never through a link),
    // then renamed over the record, in a directory only this user may write to.
    let tmp = dir.join(format!("node.json.{}.tmp", std::process::id()));
    let written = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| {
            if own_alone(dir) {
                Ok(())
            } else {
                Err(std::io::Error::other("others may write to it"))
            }
        })
        .and_then(|()| {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&json)
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    match written {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), error = %e, "cannot record the node for the CLI");
            false
        }
    }
}

/// Removes this process's record, if it is still this process's (and this process may:
/// a node that became its service user leaves root's record, which names a data dir no
/// node runs on once it stopped, and is passed over then).
pub fn forget_node() {
    let Some(path) = record_file() else { return };
    if read_record(&path).is_some_and(|r| r.pid == std::process::id()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The data dir of the node the CLI talks to when none is given: the node its user
/// started last while it runs, else `default` (the default data dir).
pub fn locate_node(default: PathBuf) -> PathBuf {
    record_file()
        .and_then(|p| read_record(&p))
        .map(|r| r.data_dir)
        .filter(|d| node_running(d) == Some(true))
        .unwrap_or(default)
}

/// The configuration of the node running on `data_dir` (`run/config.toml`, what its
/// services were given), when one runs there and this user may read it.
pub fn running_config(data_dir: &Path) -> Option<PathBuf> {
    let snapshot = data_dir.join("run/config.toml");
    (node_running(data_dir) == Some(true) && std::fs::File::open(&snapshot).is_ok())
        .then_some(snapshot)
}

/// Why the CLI found no node to talk to next to it, and what to do about it: the data dir
/// is not a node's, no node runs on it, or the node has not made its CA yet.
fn no_node(data_dir: &Path, node_ca: &Path) -> String {
    let running = node_running(data_dir).unwrap_or(true);
    if !data_dir.join("run").exists() {
        format!(
            "no Outpost node uses {}: if the node runs with another data dir, pass it with \
             --data-dir DIR (or OUTPOST_DATA_DIR); a node elsewhere: --gateway URL --ca FILE",
            data_dir.display()
        )
    } else if !running {
        format!(
            "no Outpost node is running on {}: start it with `outpost up` (same --data-dir), \
             or pass the data dir of the running node with --data-dir DIR",
            data_dir.display()
        )
    } else {
        format!(
            "the node running on {} has no CA yet ({} is missing): is its gateway enabled and \
             started? `outpost services` through --gateway, or wait a moment",
            data_dir.display(),
            node_ca.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_files_are_named_by_gateway() {
        let p = session_file("https://edge-7.local:8443");
        if let Some(p) = p {
            assert!(p.ends_with("outpost/sessions/edge-7.local_8443.json"));
        }
        let pw = generate_password().unwrap();
        assert_eq!(pw.chars().count(), 24);
        assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
