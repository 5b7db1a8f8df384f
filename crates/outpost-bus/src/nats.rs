//! NATS JetStream as the bus (`bus.url = "nats://host:4222"`, or `tls://host:4222` for TLS
//! verified against `bus.ca_file`): the same topics, envelopes and guarantees as on MQTT.
//!
//! - Topics become subjects: each level is a token (`edgex/events/device/d1` is
//!   `edgex.events.device.d1`), `+` is `*` and `#` is `>`. A character NATS reserves inside
//!   a token (`.`, `*`, `>`, whitespace, and `%` itself) is written `%XX`, and an empty
//!   level `%`, so every topic comes back unchanged.
//! - One stream, `OUTPOST_<BASE>`, holds every subject under the base topic on disk. Its
//!   retention is by interest: a message stays until every durable consumer that wanted it
//!   acknowledged it, and the node's own durable consumers are created with the stream, so
//!   what is published before one of them first starts waits for it (as the embedded
//!   broker's journal does). It is bounded by `bus.stream_max_bytes`; when it is full,
//!   publishes are refused, so nothing acknowledged is dropped.
//! - [`crate::Bus::publish_raw`] returns once JetStream stored the message (its PubAck).
//! - A durable consumer is a JetStream pull consumer with explicit acknowledgement: a
//!   message is acknowledged only when the consumer says so; one not acknowledged within
//!   `bus.ack_wait_s` is delivered again. `$share/<group>/<filter>` names the consumer
//!   `<group>`, so instances that share it share the messages, each to one of them.
//! - Plain subscriptions (commands and their answers) are core NATS subscriptions.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use outpost_kit::Shutdown;
use outpost_kit::backoff::Backoff;
use outpost_kit::config::BusConfig;
use tokio::sync::mpsc;

use crate::{Admission, BusError, Delivery, Options, credentials};

/// Whether `url` names a NATS server.
pub fn is_nats(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// A connection to NATS and its JetStream context.
pub(crate) struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    ack_wait: Duration,
    /// Who consumes: the connection's client ID and most unacknowledged messages.
    client_id: String,
    receive_maximum: u16,
    /// Ends the consumers' tasks.
    shutdown: Shutdown,
    /// Set once this side closes the connection.
    closing: AtomicBool,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("stream", &self.stream)
            .finish()
    }
}

/// One topic level as a subject token.
fn token(level: &str) -> String {
    if level.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(level.len());
    for c in level.chars() {
        match c {
            '.' | '*' | '>' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_whitespace() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The subject of an MQTT topic.
pub fn subject(topic: &str) -> String {
    topic.split('/').map(token).collect::<Vec<_>>().join(".")
}

/// The subject filter of an MQTT topic filter.
pub(crate) fn subject_filter(filter: &str) -> String {
    filter
        .split('/')
        .map(|l| match l {
            "+" => "*".to_string(),
            "#" => ">".to_string(),
            l => token(l),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The MQTT topic of a subject (the inverse of [`subject`]).
pub(crate) fn topic(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| {
            if t == "%" {
                return String::new();
            }
            let bytes = t.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (bytes[i], hex) {
                    (b'%', Some(b)) => {
                        out.push(b);
                        i += 3;
                    }
                    (b, _) => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A durable consumer's name and subject filter for `filter` of the consumer `client`:
/// the group of a shared subscription, or else the client ID with the filter (one
/// JetStream consumer per filter). Names keep only what NATS allows in them.
pub(crate) fn durable(client: &str, filter: &str) -> (String, String) {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((group, f)) = rest.split_once('/')
    {
        return (clean(group), subject_filter(f));
    }
    (clean(&format!("{client}-{filter}")), subject_filter(filter))
}

impl Nats {
    /// Connects (retrying with backoff until the server answers or `shutdown`), and makes
    /// sure the stream and the node's own durable consumers exist.
    pub(crate) async fn connect(
        cfg: &BusConfig,
        data_dir: &Path,
        opts: &Options,
        shutdown: &Shutdown,
    ) -> Result<Self, BusError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            let attempt = async {
                let client = connect_options(cfg, data_dir, opts)?
                    .connect(cfg.url.as_str())
                    .await
                    .map_err(|e| {
                        let what = format!("connect to {}: {e}", cfg.url);
                        if turned_away(&e) {
                            BusError::Refused(what)
                        } else {
                            BusError::Nats(what)
                        }
                    })?;
                let nats = Self {
                    js: jetstream::new(client.clone()),
                    client,
                    stream: stream_name(&cfg.base_topic),
                    ack_wait: Duration::from_secs(u64::from(cfg.ack_wait_s.max(1))),
                    client_id: opts.client_id.clone(),
                    receive_maximum: opts.receive_maximum,
                    shutdown: shutdown.clone(),
                    closing: AtomicBool::new(false),
                };
                nats.prepare(cfg).await?;
                Ok::<_, BusError>(nats)
            };
            match attempt.await {
                Ok(n) => {
                    tracing::info!(url = %cfg.url, stream = %n.stream, "connected to NATS JetStream");
                    return Ok(n);
                }
                Err(
                    e @ (BusError::NoPasswordFile
                    | BusError::PasswordFile { .. }
                    | BusError::Refused(_)),
                ) => {
                    tracing::error!(url = %cfg.url, error = %e, "NATS refused this client");
                    return Err(e);
                }
                Err(e) => {
                    if !warned && started.elapsed() >= Duration::from_secs(2) {
                        tracing::warn!(url = %cfg.url, error = %e, "NATS not reachable yet; retrying");
                        warned = true;
                    }
                }
            }
            tokio::select! {
                () = shutdown.wait() => return Err(BusError::ShutDown),
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// The stream, and the node's own durable consumers.
    async fn prepare(&self, cfg: &BusConfig) -> Result<(), BusError> {
        let base = subject_filter(&cfg.base_topic);
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{base}.>")],
                retention: stream::RetentionPolicy::Interest,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::New,
                max_bytes: i64::try_from(cfg.stream_max_bytes).unwrap_or(i64::MAX),
                max_message_size: i32::try_from(cfg.max_payload_bytes).unwrap_or(i32::MAX),
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Nats(format!("the stream {}: {e}", self.stream)))?;
        for (client, filters) in &cfg.durable_consumers {
            for filter in filters {
                let (name, subject) = durable(client, filter);
                // Only what the stream holds (device-mqtt's devices use an MQTT broker).
                if !subject.starts_with(&format!("{base}.")) {
                    continue;
                }
                self.consumer(&stream, &name, subject, 1024, consumer::DeliverPolicy::All)
                    .await?;
            }
        }
        Ok(())
    }

    async fn consumer(
        &self,
        stream: &stream::Stream,
        name: &str,
        filter_subject: String,
        max_ack_pending: u16,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, BusError> {
        stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_ack_pending: i64::from(max_ack_pending.max(1)),
                    deliver_policy,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::Nats(format!("the consumer {name}: {e}")))
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes to JetStream and waits until it stored the message. While the server
    /// cannot answer (a restart, a lost connection) this tries again, under one message
    /// id, so JetStream stores the message once however many tries reached it; what the
    /// server refuses (its stream full, say) fails at once. Once the connection is closed
    /// by this side, a publish fails.
    pub(crate) async fn publish(&self, topic: &str, bytes: Bytes) -> Result<(), String> {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        let subject = subject(topic);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = message_id() {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let mut waiting = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let attempt = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), bytes.clone())
                    .await?
                    .await
            };
            let e = match attempt.await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let retry = matches!(
                e.kind(),
                Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound | Kind::MaxAckPending
            );
            if !retry || self.closing.load(Ordering::Relaxed) {
                return Err(e.to_string());
            }
            tokio::time::sleep(waiting.next_delay()).await;
        }
    }

    /// A core NATS subscription, acknowledged by nothing.
    pub(crate) async fn subscribe(
        &self,
        filter: &str,
        admission: Arc<Admission>,
    ) -> Result<mpsc::UnboundedReceiver<Delivery>, BusError> {
        let mut sub = self
            .client
            .subscribe(subject_filter(filter))
            .await
            .map_err(|e| BusError::Nats(format!("subscribe to {filter}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let topic = topic(msg.subject.as_str());
                if let Some(payload) = admission.admit(&topic, &msg.payload) {
                    let d = Delivery::new(topic, payload, None);
                    if tx.send(d).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Consumes `filter` durably as this connection's client, sending what arrives to `tx`
    /// with an acknowledgement to resolve, until the connection's shutdown fires or `tx`
    /// closes. A message refused by `admission` is acknowledged at once.
    pub(crate) async fn consume(
        &self,
        filter: &str,
        (tx, admission): (mpsc::UnboundedSender<Delivery>, Arc<Admission>),
    ) -> Result<(), BusError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| BusError::Nats(format!("the stream {}: {e}", self.stream)))?;
        let (name, subject) = durable(&self.client_id, filter);
        // A consumer the node did not know beforehand starts with what comes from now on.
        let consumer = self
            .consumer(
                &stream,
                &name,
                subject,
                self.receive_maximum,
                consumer::DeliverPolicy::New,
            )
            .await?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::Nats(format!("consume {name}: {e}")))?;
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.wait() => break,
                    () = tx.closed() => break,
                    n = messages.next() => n,
                };
                match next {
                    Some(Ok(msg)) => {
                        let (msg, acker) = msg.split();
                        let topic = topic(msg.subject.as_str());
                        match admission.admit(&topic, &msg.payload) {
                            Some(payload) => {
                                let d = Delivery::new(topic, payload, None).acked_by(acker);
                                if tx.send(d).is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = acker.ack().await;
                            }
                        }
                    }
                    // The client reconnects on its own; the stream goes on after it.
                    Some(Err(e)) => {
                        tracing::debug!(consumer = %name, error = %e, "JetStream consumer");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None => break,
                }
            }
        });
        Ok(())
    }

    /// Sends what is buffered and closes the connection.
    pub(crate) async fn close(&self) -> bool {
        self.closing.store(true, Ordering::Relaxed);
        let flushed = tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .is_ok_and(|r| r.is_ok());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await;
        flushed
    }
}

/// A message id JetStream deduplicates retries by (within its two-minute window); none
/// if the system's random source fails, as a shared id would drop other messages.
fn message_id() -> Option<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The stream of the node's base topic (NATS names allow no `.`, `*`, `>` or spaces).
fn stream_name(base: &str) -> String {
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("OUTPOST_{clean}")
}

/// Whether the server turned the client away for good: its credentials, the server's
/// certificate (a TLS handshake that failed on it surfaces as an I/O error), a URL that
/// does not parse. A server that is down or restarting is not.
fn turned_away(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    match e.kind() {
        Kind::AuthorizationViolation | Kind::Authentication | Kind::Tls | Kind::ServerParse => true,
        Kind::Io => {
            let mut cause: Option<&dyn std::error::Error> = Some(e);
            while let Some(c) = cause {
                if c.to_string().contains("invalid peer certificate") {
                    return true;
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

fn connect_options(
    cfg: &BusConfig,
    data_dir: &Path,
    opts: &Options,
) -> Result<async_nats::ConnectOptions, BusError> {
    let mut co = async_nats::ConnectOptions::new()
        .name(opts.client_id.clone())
        .connection_timeout(Duration::from_secs(5))
        // The first connection is retried by `Nats::connect`; once connected, the client
        // reconnects on its own for as long as it lives.
        .max_reconnects(None);
    // An external server's own user, when configured; never the node's internal one.
    if !cfg.username.is_empty()
        && let Some((user, password)) = credentials(cfg, data_dir, false)?
    {
        co = co.user_and_password(user, password);
    }
    if cfg.url.starts_with("tls://") || cfg.ca_file.is_some() {
        co = co.require_tls(true);
        if let Some(ca) = &cfg.ca_file {
            co = co.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            co = co.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(co)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_become_subjects_and_come_back_unchanged() {
        for t in [
            "edgex/events/device/svc/profile/d1/all",
            "edgex/events/device/svc/p.1/dev ice*/>x%",
            "edgex//trailing/",
            "edgex/ünï/tab\there",
        ] {
            let s = subject(t);
            assert!(
                s.split('.')
                    .all(|tok| !tok.is_empty() && !tok.contains(['*', '>', ' ', '\t'])),
                "{t} -> {s}"
            );
            assert_eq!(topic(&s), t, "{s}");
        }
        assert_eq!(
            subject_filter("edgex/events/device/#"),
            "edgex.events.device.>"
        );
        assert_eq!(subject_filter("edgex/+/x.y"), "edgex.*.x%2Ey");
    }

    #[test]
    fn shared_subscriptions_name_their_group_and_others_their_client() {
        assert_eq!(
            durable(
                "outpost-core-data-b",
                "$share/core-data/edgex/events/device/#"
            ),
            ("core-data".to_string(), "edgex.events.device.>".to_string())
        );
        let (name, subject) = durable("outpost-export", "edgex/events/device/#");
        assert_eq!(subject, "edgex.events.device.>");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(name, durable("outpost-export", "edgex/alerts/#").0);
    }
}
