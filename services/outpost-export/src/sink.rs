//! Where batches go: an Outpost cloud node (mutual TLS), any HTTPS webhook, or an external
//! MQTT broker (TLS).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use outpost_contracts::cloud::EdgeBundle;
use outpost_contracts::export::{Backlog, IngestResponse, Rejected};
use outpost_kit::BoxError;
use outpost_queue::Batch;
use reqwest::StatusCode;

use crate::config::{Destination, Kind};

/// Why a batch was not delivered. The reason is what the sender reports (`lastError`) and
/// keeps with dead letters.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Retrying later can help: the receiver is unreachable, slow, overloaded or refused
    /// our identity (which an operator can fix).
    #[error("{0}")]
    Transient(String),
    /// The receiver will never take this batch as it is.
    #[error("{0}")]
    Permanent(String),
}

/// Why a destination's sink cannot be made from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("a cloud destination needs an identity bundle")]
    NoIdentity,
    #[error("cannot read the identity bundle {}", path.display())]
    ReadIdentity {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an identity bundle from `outpost cloud enroll`", path.display())]
    NotABundle {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the identity bundle {} is not usable", path.display())]
    UnusableIdentity {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    /// A CA or password file.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {} is not usable", path.display())]
    UnusableCa {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("cannot make the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{0} is not an mqtt:// or mqtts:// URL")]
    NotMqttUrl(String),
    #[error("invalid port in {url}")]
    InvalidPort {
        url: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

/// What a delivered batch came back with.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Items the receiver will never take, with its reasons.
    pub rejected: Vec<Rejected>,
    pub duplicates: u64,
    /// Bytes on the wire (the body as sent).
    pub wire_bytes: usize,
}

pub struct Sink {
    kind: Kind,
    mqtt: Option<mqtt::MqttSink>,
    /// A cloud destination's identity bundle, followed for changes.
    identity: Option<Identity>,
    url: String,
    http: reqwest::Client,
    headers: Vec<(String, String)>,
    zstd_level: i32,
    /// The edge name the cloud knows this node by, as the destination opened.
    edge: Option<String>,
    /// More URLs of the same receiver, after the main one.
    failover: Vec<String>,
    /// Which of the main URL (0) and the failover ones batches go to now.
    active: std::sync::atomic::AtomicUsize,
}

/// A cloud destination's client, made from its identity bundle (`outpost cloud enroll`)
/// and made again when the file changes: a rotated identity (revoked, enrolled again, the
/// new bundle written over the old) is used from the next batch on, without a restart.
struct Identity {
    path: PathBuf,
    /// The destination's `url`, which overrides the bundle's.
    url: String,
    timeout: Duration,
    current: Mutex<Current>,
}

/// What a cloud destination sends with now.
struct Current {
    /// The file as it was when read, and as it was when a change could not be used
    /// (warned about once).
    read: Option<FileVersion>,
    refused: Option<FileVersion>,
    edge: String,
    url: String,
    http: reqwest::Client,
}

/// Which version of a file is on disk: a file renamed over it has another inode, a
/// rewrite another size or change time (which no tool can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl FileVersion {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }
}

impl Identity {
    /// The URL and client for the bundle as it is on disk now.
    fn client(&self) -> (String, reqwest::Client) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = FileVersion::of(&self.path);
        if now.is_some() && now != current.read {
            match cloud_client(&self.path, &self.url, self.timeout) {
                Ok((url, http, edge)) => {
                    if edge == current.edge {
                        tracing::info!(path = %self.path.display(), edge, "identity bundle changed; sending with it from now on");
                    } else {
                        tracing::warn!(path = %self.path.display(), was = current.edge, now = edge, "the changed identity bundle is another edge's; sending as that edge from now on");
                    }
                    *current = Current {
                        read: now,
                        refused: None,
                        edge,
                        url,
                        http,
                    };
                }
                // Half written, say: the next batch looks again, warned once per version.
                Err(e) => {
                    if current.refused != now {
                        current.refused = now;
                        tracing::warn!(
                            path = %self.path.display(),
                            error = %error_chain(&e),
                            "cannot use the changed identity bundle; keeping the previous one"
                        );
                    }
                }
            }
        }
        (current.url.clone(), current.http.clone())
    }

    /// The edge name the bundle in use gives.
    fn edge(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .edge
            .clone()
    }
}

fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(60))
        .no_proxy()
}

/// The ingest URL, client and edge name of the identity bundle at `path` (`url` overrides
/// the bundle's address when set).
fn cloud_client(
    path: &Path,
    url: &str,
    timeout: Duration,
) -> Result<(String, reqwest::Client, String), SinkError> {
    let text = std::fs::read(path).map_err(|source| SinkError::ReadIdentity {
        path: path.to_path_buf(),
        source,
    })?;
    let b: EdgeBundle = serde_json::from_slice(&text).map_err(|source| SinkError::NotABundle {
        path: path.to_path_buf(),
        source,
    })?;
    let tls = outpost_pki::client_config(&b.ca, Some((&b.cert, &b.key))).map_err(|e| {
        SinkError::UnusableIdentity {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })?;
    let url = if url.is_empty() {
        b.url
    } else {
        url.to_string()
    };
    Ok((
        format!("{}/api/v3/ingest", url.trim_end_matches('/')),
        client_builder(timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(SinkError::Client)?,
        b.edge,
    ))
}

impl Sink {
    pub fn new(d: &Destination) -> Result<Self, SinkError> {
        let timeout = Duration::from_millis(d.timeout_ms);
        let builder = client_builder(timeout);
        let mut identity = None;
        let (url, http, edge) = match d.kind {
            Kind::Cloud => {
                let path = d.identity.as_ref().ok_or(SinkError::NoIdentity)?;
                let read = FileVersion::of(path);
                let (url, http, edge) = cloud_client(path, &d.url, timeout)?;
                identity = Some(Identity {
                    path: path.clone(),
                    url: d.url.clone(),
                    timeout,
                    current: Mutex::new(Current {
                        read,
                        refused: None,
                        edge: edge.clone(),
                        url: url.clone(),
                        http: http.clone(),
                    }),
                });
                (url, http, Some(edge))
            }
            Kind::Mqtt => (
                d.url.clone(),
                builder.build().map_err(SinkError::Client)?,
                None,
            ),
            Kind::Webhook => {
                let http = match &d.ca_file {
                    Some(ca) => {
                        let pem =
                            std::fs::read_to_string(ca).map_err(|source| SinkError::Read {
                                path: ca.clone(),
                                source,
                            })?;
                        let tls = outpost_pki::client_config(&pem, None).map_err(|e| {
                            SinkError::UnusableCa {
                                path: ca.clone(),
                                source: e.into(),
                            }
                        })?;
                        builder
                            .tls_backend_preconfigured(tls)
                            .build()
                            .map_err(SinkError::Client)?
                    }
                    None => builder.build().map_err(SinkError::Client)?,
                };
                (d.url.clone(), http, None)
            }
        };
        let mqtt = match d.kind {
            Kind::Mqtt => Some(mqtt::MqttSink::new(d)?),
            _ => None,
        };
        Ok(Self {
            mqtt,
            identity,
            kind: d.kind,
            url,
            http,
            headers: d
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            zstd_level: d.zstd_level,
            edge,
            // A cloud's URLs are its base, as the bundle's is; batches go to its ingest.
            failover: d
                .failover_urls
                .iter()
                .map(|u| match d.kind {
                    Kind::Cloud => format!("{}/api/v3/ingest", u.trim_end_matches('/')),
                    _ => u.clone(),
                })
                .collect(),
            active: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Where batches go now (a changed identity bundle may name another cloud; a failover
    /// URL after the main one could not be reached).
    pub fn url(&self) -> String {
        let main = match &self.identity {
            Some(id) => id.client().0,
            None => self.url.clone(),
        };
        match self.active.load(std::sync::atomic::Ordering::Relaxed) {
            0 => main,
            i => self.failover.get(i - 1).cloned().unwrap_or(main),
        }
    }

    /// The edge name the cloud knows this node by (a cloud destination's), now.
    pub fn edge(&self) -> Option<String> {
        match &self.identity {
            Some(id) => Some(id.edge()),
            None => self.edge.clone(),
        }
    }

    /// The batch as JSON: items are stored as JSON already, so they are spliced in as
    /// they are.
    fn body(batch: &Batch, incarnation: u64, backlog: Backlog) -> Vec<u8> {
        let data: usize = batch.items.iter().map(|i| i.data.len() + 48).sum();
        let mut out = Vec::with_capacity(data + 160);
        out.extend_from_slice(
            format!(
                "{{\"incarnation\":{incarnation},\"priority\":\"{}\",\"backlog\":{},\"items\":[",
                batch.priority.as_str(),
                serde_json::to_string(&backlog).unwrap_or_else(|_| "{}".into())
            )
            .as_bytes(),
        );
        for (i, item) in batch.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                format!(
                    "{{\"seq\":{},\"enqueuedMs\":{},\"data\":",
                    item.seq, item.enqueued_ms
                )
                .as_bytes(),
            );
            out.extend_from_slice(&item.data);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    pub async fn send(
        &self,
        batch: &Batch,
        incarnation: u64,
        backlog: Backlog,
    ) -> Result<Delivered, SendError> {
        let json = Self::body(batch, incarnation, backlog);
        let (body, encoding) = if self.zstd_level > 0 {
            let level = self.zstd_level;
            let compressed =
                tokio::task::spawn_blocking(move || zstd::bulk::compress(&json, level))
                    .await
                    .map_err(|e| SendError::Transient(format!("compression task: {e}")))?
                    .map_err(|e| SendError::Transient(format!("compression: {e}")))?;
            (compressed, Some("zstd"))
        } else {
            (json, None)
        };
        let wire_bytes = body.len();
        if let Some(m) = &self.mqtt {
            m.publish(batch.priority.as_str(), body, encoding.is_some())
                .await?;
            return Ok(Delivered {
                wire_bytes,
                ..Delivered::default()
            });
        }
        let (main, http) = match &self.identity {
            Some(id) => id.client(),
            None => (self.url.clone(), self.http.clone()),
        };
        let urls: Vec<&str> = std::iter::once(main.as_str())
            .chain(self.failover.iter().map(String::as_str))
            .collect();
        let body = bytes::Bytes::from(body);
        let first = self.active.load(std::sync::atomic::Ordering::Relaxed) % urls.len();
        let mut tried = 0;
        let (resp, from_failover) = loop {
            let at = (first + tried) % urls.len();
            let outcome = self.post(&http, urls[at], body.clone(), encoding).await;
            let unreachable = match &outcome {
                Err(_) => true,
                Ok(r) => matches!(
                    r.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
            };
            tried += 1;
            if !unreachable || tried == urls.len() {
                // Stays with a URL only once it took a batch: one answering 4xx (another
                // receiver, say) does not capture the destination.
                let took = outcome.as_ref().is_ok_and(|r| r.status().is_success());
                if took && at != first {
                    self.active.store(at, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        from = urls[first],
                        to = urls[at],
                        "failed over to another URL of the destination"
                    );
                }
                break (outcome?, at != 0);
            }
            if let Err(e) = &outcome {
                tracing::info!(url = urls[at], error = %e, "cannot reach this URL of the destination; trying the next");
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let mut delivered = Delivered {
                wire_bytes,
                ..Delivered::default()
            };
            if self.kind == Kind::Cloud {
                let answer: IngestResponse = serde_json::from_str(&text).map_err(|e| {
                    SendError::Transient(format!(
                        "the cloud answered {status} with an unreadable body: {e}"
                    ))
                })?;
                delivered.rejected = answer.rejected;
                delivered.duplicates = answer.duplicates;
            }
            return Ok(delivered);
        }
        let detail = format!("{status}: {}", text.chars().take(300).collect::<String>());
        // A batch is refused for good only by the main URL: a failover URL refusing it
        // (a receiver that is not this destination's) is retried.
        if status.is_client_error() && !transient_client_error(status) && !from_failover {
            Err(SendError::Permanent(detail))
        } else {
            Err(SendError::Transient(detail))
        }
    }
}

impl Sink {
    /// One POST of a batch to `url`.
    async fn post(
        &self,
        http: &reqwest::Client,
        url: &str,
        body: bytes::Bytes,
        encoding: Option<&str>,
    ) -> Result<reqwest::Response, SendError> {
        let mut req = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(enc) = encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, enc);
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            SendError::Transient(format!("{what}: {}", error_chain(&e)))
        })
    }
}

/// 4xx answers that are about us (identity, rate, time), not about the batch.
fn transient_client_error(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

mod mqtt {
    //! The MQTT sink: one QoS 1 message per batch; delivered when the broker acknowledged it.

    use std::time::Duration;

    use mqtt5::{ConnectOptions, MqttClient, PublishOptions, QoS};

    use super::{SendError, SinkError};
    use crate::config::Destination;

    pub struct MqttSink {
        host: String,
        port: u16,
        tls: bool,
        ca_pem: Option<Vec<u8>>,
        /// Client certificate and key (PEM).
        identity: Option<(Vec<u8>, Vec<u8>)>,
        topic: String,
        client_id: String,
        credentials: Option<(String, String)>,
        timeout: Duration,
        client: tokio::sync::Mutex<Option<MqttClient>>,
    }

    impl MqttSink {
        pub fn new(d: &Destination) -> Result<Self, SinkError> {
            let (tls, rest) = match d.url.split_once("://") {
                Some(("mqtts", rest)) => (true, rest),
                Some(("mqtt", rest)) => (false, rest),
                _ => return Err(SinkError::NotMqttUrl(d.url.clone())),
            };
            let rest = rest.trim_end_matches('/');
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.trim_matches(['[', ']']).to_string(),
                    p.parse().map_err(|source| SinkError::InvalidPort {
                        url: d.url.clone(),
                        source,
                    })?,
                ),
                None => (rest.to_string(), if tls { 8883 } else { 1883 }),
            };
            let read = |p: &std::path::PathBuf| {
                std::fs::read(p).map_err(|source| SinkError::Read {
                    path: p.clone(),
                    source,
                })
            };
            let ca_pem = d.ca_file.as_ref().map(read).transpose()?;
            let identity = match (&d.cert_file, &d.key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            let credentials = match (&d.username, &d.password_file) {
                (u, Some(f)) if !u.is_empty() => Some((
                    u.clone(),
                    std::fs::read_to_string(f)
                        .map_err(|source| SinkError::Read {
                            path: f.clone(),
                            source,
                        })?
                        .trim()
                        .to_string(),
                )),
                (u, None) if !u.is_empty() => Some((u.clone(), String::new())),
                _ => None,
            };
            if !tls {
                tracing::warn!(
                    destination = d.name,
                    url = d.url,
                    "MQTT destination without TLS: data crosses the network in the clear"
                );
            }
            Ok(Self {
                host,
                port,
                tls,
                ca_pem,
                identity,
                topic: d.topic.trim_end_matches('/').to_string(),
                client_id: format!("outpost-export-{}", d.name),
                credentials,
                timeout: Duration::from_millis(d.timeout_ms),
                client: tokio::sync::Mutex::new(None),
            })
        }

        async fn connect(&self) -> Result<MqttClient, String> {
            let mut opts = ConnectOptions::new(self.client_id.clone())
                .with_clean_start(true)
                .with_keep_alive(Duration::from_secs(30))
                .with_automatic_reconnect(false);
            if let Some((u, p)) = &self.credentials {
                opts = opts.with_credentials(u.clone(), p.as_bytes());
            }
            let client = MqttClient::with_options(opts.clone());
            if self.tls {
                let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
                    .next()
                    .ok_or_else(|| format!("{} has no address", self.host))?;
                let mut tls = mqtt5::transport::tls::TlsConfig::new(addr, self.host.clone())
                    .with_connect_timeout(self.timeout);
                if let Some(ca) = &self.ca_pem {
                    tls.load_ca_cert_pem_bytes(ca)
                        .map_err(|e| format!("CA file: {e}"))?;
                    tls = tls.with_system_roots(false);
                }
                if let Some((cert, key)) = &self.identity {
                    tls.load_client_cert_pem_bytes(cert)
                        .map_err(|e| format!("client certificate: {e}"))?;
                    tls.load_client_key_pem_bytes(key)
                        .map_err(|e| format!("client key: {e}"))?;
                }
                client
                    .connect_with_tls_and_options(tls, opts)
                    .await
                    .map_err(|e| {
                        format!("cannot connect to mqtts://{}:{}: {e}", self.host, self.port)
                    })?;
            } else {
                client
                    .connect(&format!("mqtt://{}:{}", self.host, self.port))
                    .await
                    .map_err(|e| {
                        format!("cannot connect to mqtt://{}:{}: {e}", self.host, self.port)
                    })?;
            }
            Ok(client)
        }

        pub async fn publish(
            &self,
            priority: &str,
            body: Vec<u8>,
            zstd: bool,
        ) -> Result<(), SendError> {
            let mut guard = self.client.lock().await;
            let connected = match guard.as_ref() {
                Some(c) => c.is_connected().await,
                None => false,
            };
            if !connected {
                let c = tokio::time::timeout(self.timeout, self.connect())
                    .await
                    .map_err(|_| SendError::Transient("timed out connecting to the broker".into()))?
                    .map_err(SendError::Transient)?;
                *guard = Some(c);
            }
            let Some(client) = guard.as_ref() else {
                return Err(SendError::Transient("not connected".into()));
            };
            let mut opts = PublishOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            };
            opts.properties.content_type = Some("application/json".into());
            if zstd {
                opts.properties
                    .user_properties
                    .push(("content-encoding".into(), "zstd".into()));
            }
            let topic = format!("{}/{priority}", self.topic);
            match tokio::time::timeout(
                self.timeout,
                client.publish_with_options(&topic, body, opts),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    *guard = None;
                    Err(SendError::Transient(format!(
                        "publish to {topic} failed: {e}"
                    )))
                }
                Err(_) => {
                    *guard = None;
                    Err(SendError::Transient(format!(
                        "no acknowledgement for {topic} in time"
                    )))
                }
            }
        }
    }
}
