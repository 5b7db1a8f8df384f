//! The message bus as services use it: MQTT 5 to the node's broker (embedded by default, or an
//! external mosquitto/EMQX), or NATS JetStream ([`nats`]); EdgeX topics and envelopes, JSON
//! or CBOR.
//!
//! Delivery guarantees:
//! - [`Bus::publish`] uses QoS 1 and returns once the broker acknowledged the message.
//! - A [`Consumer`] receives QoS 1 messages with an acknowledgement it resolves only after
//!   it durably handled the message (deferred PUBACK, see [`delivery`]). The session is
//!   persistent: if the consumer crashes, the broker redelivers every unacknowledged message
//!   and queues new ones until it is back. Delivery is at-least-once; consumers deduplicate.
//! - A [`Link`] is a service's plain connection, opened in the background and closed after
//!   the service stopped serving, for routes that publish.
//! - Oversized and undecodable messages are counted (`..._bus_messages_invalid_total`),
//!   logged at a limited rate, and acknowledged so they do not come back.
//!
//! Credentials: a configured `bus.username`/`bus.password_file`, or else the node's internal
//! credential (user `outpost`, password from `<data>/secrets/bus.token`), which the embedded
//! broker also reads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mqtt5::{
    AckToken, ConnectOptions, ConnectionEvent, IndeterminateReason, MqttClient, PublishOptions,
    PublishOutcome, PublishResult, QoS, SubscribeOptions,
};

mod consumer;
pub mod delivery;
pub mod journal;
mod link;
pub mod metadata;
pub mod nats;
mod tls;

pub use consumer::{Consumer, Received, Subscriber};
pub use delivery::{Ack, Delivery};
pub use link::Link;

/// What the broker's journal topics contain (`<base>/_journal/...`).
const JOURNAL_TOPICS: &str = "/_journal/";

/// Times a message that may have been lost with a connection is sent again.
pub const REPUBLISH_ATTEMPTS: u32 = 5;
use outpost_contracts::envelope::{self, Encoding, Envelope, EnvelopeError};
use outpost_contracts::event::AddEventRequest;
use outpost_kit::backoff::Backoff;
use outpost_kit::config::BusConfig;
use outpost_kit::ratelog::RateLimitedLog;
use outpost_kit::{Shutdown, request_id, telemetry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// The internal bus user of the node's own services.
pub const INTERNAL_USER: &str = "outpost";
/// Name of the internal bus password under `<data>/secrets/` (`bus.token`).
pub const INTERNAL_SECRET: &str = "bus";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus.username needs bus.password_file")]
    NoPasswordFile,
    #[error("cannot read the bus password {path}: {source}")]
    PasswordFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the node's bus credential: {0}")]
    Credential(#[source] outpost_storage::StorageError),
    /// The broker did not take the message; the reason is its answer or what happened to
    /// the connection.
    #[error("publish to {topic} failed: {reason}")]
    Publish { topic: String, reason: String },
    #[error("subscribe to {filter} failed: {source}")]
    Subscribe {
        filter: String,
        #[source]
        source: mqtt5::error::MqttError,
    },
    #[error("a durable consumer of {filters} needs Options::durable")]
    NotDurable { filters: String },
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("shut down before the bus connected")]
    ShutDown,
    #[error("NATS: {0}")]
    Nats(String),
    /// The server turned the client away for good (credentials, its certificate): trying
    /// again cannot help.
    #[error("the bus refused the connection: {0}")]
    Refused(String),
}

/// How a connection behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// MQTT client ID; stable per consumer so its persistent session survives restarts.
    pub client_id: String,
    /// Keep a persistent session and acknowledge messages only when told to.
    pub deferred_ack: bool,
    /// Most unacknowledged messages in flight to this client (MQTT 5 receive maximum).
    pub receive_maximum: u16,
    /// How long the broker keeps the session while the client is away, seconds.
    pub session_expiry_s: u32,
    /// Create the internal credential if missing (services do; the CLI only reads it).
    pub create_credentials: bool,
    /// Connections [`Bus::publish_raw`] spreads topics over (at least 1). A broker
    /// handles one connection's messages one after another, and the embedded broker
    /// acknowledges a journaled message only once it is on disk, so a service publishing
    /// from many tasks at once gets its messages into one group commit only over several
    /// connections.
    pub publishers: u16,
}

impl Options {
    /// A plain connection: clean session, automatic acknowledgements.
    pub fn plain(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            deferred_ack: false,
            receive_maximum: 1024,
            session_expiry_s: 0,
            create_credentials: true,
            publishers: 1,
        }
    }

    /// The same, publishing over `n` connections (see [`Options::publishers`]).
    pub fn with_publishers(mut self, n: u16) -> Self {
        self.publishers = n.max(1);
        self
    }

    /// A durable consumer: persistent session, deferred acknowledgements.
    pub fn durable(client_id: impl Into<String>, receive_maximum: u16) -> Self {
        Self {
            client_id: client_id.into(),
            deferred_ack: true,
            receive_maximum: receive_maximum.max(1),
            session_expiry_s: 7 * 24 * 3600,
            create_credentials: true,
            publishers: 1,
        }
    }
}

struct Metrics {
    received: String,
    invalid: String,
    published: String,
    publish_errors: String,
}

/// What every received message passes before it reaches a consumer: the size limit and the
/// accounting of invalid messages. Shared with the client's delivery callbacks, which must
/// not hold the client itself (that would keep it alive forever).
struct Admission {
    max_payload: usize,
    metrics: Metrics,
    bad_input_log: RateLimitedLog,
}

impl Admission {
    /// Counts a message and refuses oversized ones.
    fn admit(&self, topic: &str, payload: &Bytes) -> Option<Bytes> {
        metrics::counter!(self.metrics.received.clone()).increment(1);
        if payload.len() > self.max_payload {
            self.invalid(
                "oversized",
                topic,
                &format!(
                    "{} bytes exceed the {} byte limit",
                    payload.len(),
                    self.max_payload
                ),
            );
            return None;
        }
        Some(payload.clone())
    }

    fn invalid(&self, reason: &'static str, topic: &str, detail: &str) {
        metrics::counter!(self.metrics.invalid.clone(), "reason" => reason).increment(1);
        if let Some(suppressed) = self.bad_input_log.check(reason) {
            tracing::warn!(
                reason,
                topic,
                detail,
                suppressed,
                "dropped an invalid bus message"
            );
        }
    }
}

/// A connection to the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    /// The MQTT connection; on a NATS bus, an MQTT client that is never connected, as
    /// every call goes to `nats` instead.
    client: Arc<MqttClient>,
    /// The NATS JetStream connection, when the bus is NATS.
    nats: Option<Arc<nats::Nats>>,
    /// Further connections for publishing; empty when there is only `client`.
    publishers: Arc<[MqttClient]>,
    encoding: Encoding,
    base_topic: String,
    admission: Arc<Admission>,
    url: String,
    /// Set once this side disconnects, so the close is not reported as a loss.
    closing: Arc<AtomicBool>,
    /// How many times the connection was (re)established.
    connections: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("url", &self.url).finish()
    }
}

/// The username and password this node's services use.
///
/// `create` makes the internal credential on first use (services); without it (the CLI),
/// a missing credential means connecting anonymously, which the embedded broker allows on
/// loopback.
pub fn credentials(
    cfg: &BusConfig,
    data_dir: &Path,
    create: bool,
) -> Result<Option<(String, String)>, BusError> {
    if !cfg.username.is_empty() {
        let path = cfg.password_file.as_ref().ok_or(BusError::NoPasswordFile)?;
        let pw = std::fs::read_to_string(path).map_err(|source| BusError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        return Ok(Some((cfg.username.clone(), pw.trim_end().to_string())));
    }
    let secrets = data_dir.join("secrets");
    let token = if create {
        outpost_storage::load_or_create_token(&secrets, INTERNAL_SECRET)
    } else {
        let path = secrets.join(format!("{INTERNAL_SECRET}.token"));
        if !path.exists() {
            return Ok(None);
        }
        outpost_storage::read_token(&path).map(hex_encode)
    }
    .map_err(BusError::Credential)?;
    Ok(Some((INTERNAL_USER.to_string(), token)))
}

fn hex_encode(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Bus {
    /// Connects, retrying with backoff until the broker answers or shutdown starts.
    ///
    /// `service` names the metrics (`outpost_<service>_bus_...`).
    pub async fn connect(
        cfg: &BusConfig,
        data_dir: &Path,
        service: &str,
        opts: Options,
        shutdown: &Shutdown,
    ) -> Result<Self, BusError> {
        if nats::is_nats(&cfg.url) {
            // Boxed: the NATS client's connection future is large, and would make every
            // caller's future as large.
            return Box::pin(Self::connect_nats(cfg, data_dir, service, &opts, shutdown)).await;
        }
        let client = build_client(cfg, data_dir, &opts)?;
        let mut bus = Self::wrap(client, cfg, service);
        bus.watch_connection().await;
        connect_loop(&bus.client, cfg, data_dir, &opts, shutdown).await?;
        let mut extra = Vec::new();
        for i in 1..opts.publishers {
            let o = Options {
                client_id: format!("{}-{i}", opts.client_id),
                ..Options::plain("")
            };
            let c = build_client(cfg, data_dir, &o)?;
            connect_loop(&c, cfg, data_dir, &o, shutdown).await?;
            extra.push(c);
        }
        bus.publishers = extra.into();
        Ok(bus)
    }

    /// A connection to NATS JetStream.
    async fn connect_nats(
        cfg: &BusConfig,
        data_dir: &Path,
        service: &str,
        opts: &Options,
        shutdown: &Shutdown,
    ) -> Result<Self, BusError> {
        let n = nats::Nats::connect(cfg, data_dir, opts, shutdown).await?;
        let mut bus = Self::wrap(
            MqttClient::with_options(ConnectOptions::new(opts.client_id.clone())),
            cfg,
            service,
        );
        bus.nats = Some(Arc::new(n));
        bus.connections.send_modify(|n| *n += 1);
        Ok(bus)
    }

    /// Records a message refused for being too large (and so on), as every path does.
    pub(crate) fn admission(&self) -> Arc<Admission> {
        Arc::clone(&self.admission)
    }

    /// The connection a publish on `topic` goes over: always the same one for a topic, so
    /// the messages of one topic (one device's events) keep their order.
    fn publisher(&self, topic: &str) -> &MqttClient {
        use std::hash::{BuildHasher as _, BuildHasherDefault};
        let n = self.publishers.len();
        // What a consumer tells the broker's journal speaks for its own session.
        if n == 0 || topic.contains(JOURNAL_TOPICS) {
            return &self.client;
        }
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(topic);
        match usize::try_from(h % (n as u64 + 1)).unwrap_or(0) {
            0 => &self.client,
            i => &self.publishers[i - 1],
        }
    }

    /// Logs connection losses and recoveries (not the ones this side asked for).
    async fn watch_connection(&self) {
        let closing = Arc::clone(&self.closing);
        let connections = Arc::clone(&self.connections);
        let url = self.url.clone();
        let _ = self
            .client
            .on_connection_event(move |ev| match ev {
                ConnectionEvent::Disconnected { reason } if !closing.load(Ordering::Relaxed) => {
                    tracing::warn!(url = %url, ?reason, "lost the bus connection; reconnecting");
                }
                ConnectionEvent::Connected {
                    session_present, ..
                } => {
                    connections.send_modify(|n| *n += 1);
                    if !closing.load(Ordering::Relaxed) {
                        tracing::debug!(url = %url, session_present, "bus connection established");
                    }
                }
                _ => {}
            })
            .await;
    }

    /// Changes each time the connection is (re)established: what a subscriber that may
    /// have missed messages while it was away (a clean session gets none of them) follows.
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.subscribe()
    }

    fn wrap(client: MqttClient, cfg: &BusConfig, service: &str) -> Self {
        Self {
            client: Arc::new(client),
            nats: None,
            publishers: Arc::from(Vec::new()),
            encoding: cfg.encoding,
            base_topic: cfg.base_topic.clone(),
            admission: Arc::new(Admission {
                max_payload: cfg.max_payload_bytes,
                metrics: Metrics {
                    received: telemetry::metric_name(service, "bus_messages_received_total"),
                    invalid: telemetry::metric_name(service, "bus_messages_invalid_total"),
                    published: telemetry::metric_name(service, "bus_messages_published_total"),
                    publish_errors: telemetry::metric_name(service, "bus_publish_errors_total"),
                },
                bad_input_log: RateLimitedLog::default(),
            }),
            url: cfg.url.clone(),
            closing: Arc::default(),
            connections: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The deferred-ack callback: admitted messages go to `tx` with their token;
    /// refused ones are acknowledged at once.
    fn ack_callback(
        &self,
        tx: mpsc::UnboundedSender<Delivery>,
        confirm: Option<journal::Confirm>,
    ) -> impl Fn(mqtt5::packet::publish::PublishPacket, AckToken) + Send + Sync + Clone + 'static
    {
        let admission = Arc::clone(&self.admission);
        move |publish, token| {
            if let Some(payload) = admission.admit(&publish.topic_name, &publish.payload) {
                // Consumers keep the receiver open until they have disconnected, so a
                // message is never dropped here while the connection could ack it.
                let d = Delivery::new(publish.topic_name.clone(), payload, Some(token))
                    .identified(&publish);
                let _ = tx.send(d.confirmed(confirm.as_ref()));
            } else {
                token.ack();
                if let Some(c) = &confirm {
                    c.handled(journal::key(&publish.topic_name, &publish.payload));
                }
            }
        }
    }

    pub fn base_topic(&self) -> &str {
        &self.base_topic
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub async fn is_connected(&self) -> bool {
        match &self.nats {
            Some(n) => n.is_connected(),
            None => self.client.is_connected().await,
        }
    }

    /// Publishes `payload` in an envelope carrying the current correlation ID, QoS 1.
    pub async fn publish<T: Serialize>(&self, topic: &str, payload: T) -> Result<(), BusError> {
        let correlation = request_id::current_or_mint();
        let bytes =
            Envelope::new(payload, correlation.as_ref(), self.encoding).encode(self.encoding)?;
        self.publish_raw(topic, bytes).await
    }

    /// Publishes an event: EdgeX JSON, or compact CBOR when the bus encoding is CBOR.
    pub async fn publish_event(&self, topic: &str, req: &AddEventRequest) -> Result<(), BusError> {
        let correlation = request_id::current_or_mint();
        let bytes = envelope::encode_event(req, &correlation, self.encoding)?;
        self.publish_raw(topic, bytes).await
    }

    /// Publishes already encoded bytes, QoS 1, and returns once the broker has
    /// acknowledged them.
    ///
    /// While the connection is down this waits for the reconnect (a persistent session's
    /// client queues the message meanwhile; a clean one sends it once it is back), so
    /// "published" always means "the broker has it", never "it is in this process's
    /// memory": callers acknowledge what they were given only after this. Callers that
    /// must answer within a time bound it themselves. A message that may have been lost
    /// with the connection (sent, unacknowledged, and the session not resumed) is sent
    /// again, up to [`REPUBLISH_ATTEMPTS`] times; consumers drop the duplicates by event
    /// id. Once this side disconnected, a publish fails at once.
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Result<(), BusError> {
        let bytes = Bytes::from(bytes);
        if let Some(n) = &self.nats {
            let result = n.publish(topic, bytes).await;
            return self.published(topic, result);
        }
        let mut attempts = 0;
        let mut waiting = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let result = loop {
            let opts = PublishOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            };
            let outcome = match self
                .publisher(topic)
                .publish_with_options(topic, bytes.clone(), opts)
                .await
            {
                Ok(PublishResult::Sent(_)) => break Ok(()),
                Ok(PublishResult::Queued(handle)) => handle.outcome().await,
                Err(mqtt5::error::MqttError::NotConnected)
                    if !self.closing.load(Ordering::Relaxed) =>
                {
                    // Reconnecting: nothing was sent; try again once it may be back.
                    tokio::time::sleep(waiting.next_delay()).await;
                    continue;
                }
                Err(e) => break Err(e.to_string()),
            };
            attempts += 1;
            match outcome {
                PublishOutcome::Delivered(_) => break Ok(()),
                PublishOutcome::Rejected(r) => break Err(format!("refused: {r:?}")),
                PublishOutcome::Indeterminate(IndeterminateReason::Abandoned) => {
                    break Err("the client stopped".into());
                }
                PublishOutcome::Indeterminate(why) if attempts >= REPUBLISH_ATTEMPTS => {
                    break Err(format!("maybe lost with the connection ({why:?})"));
                }
                PublishOutcome::Indeterminate(_) => {}
            }
        };
        self.published(topic, result)
    }

    /// Counts a publish and says how it went.
    fn published(&self, topic: &str, result: Result<(), String>) -> Result<(), BusError> {
        match result {
            Ok(()) => {
                metrics::counter!(self.admission.metrics.published.clone()).increment(1);
                Ok(())
            }
            Err(reason) => {
                metrics::counter!(self.admission.metrics.publish_errors.clone()).increment(1);
                Err(BusError::Publish {
                    topic: topic.to_string(),
                    reason,
                })
            }
        }
    }

    /// Adds a subscription to a durable consumer's connection: its messages reach `tx`
    /// with deferred acknowledgement, like those of the first filter.
    pub(crate) async fn subscribe_deferred(
        &self,
        filter: &str,
        tx: mpsc::UnboundedSender<Delivery>,
        confirm: Option<journal::Confirm>,
    ) -> Result<(), BusError> {
        if let Some(n) = &self.nats {
            return n.consume(filter, (tx, self.admission())).await;
        }
        let sub = SubscribeOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        self.client
            .subscribe_with_ack(filter, sub, self.ack_callback(tx, confirm))
            .await
            .map(drop)
            .map_err(|source| BusError::Subscribe {
                filter: filter.to_string(),
                source,
            })
    }

    /// Ends a subscription.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), BusError> {
        if self.nats.is_some() {
            // A JetStream consumer outlives its subscriber; what it holds waits for it.
            return Ok(());
        }
        self.client
            .unsubscribe(filter)
            .await
            .map_err(|source| BusError::Subscribe {
                filter: filter.to_string(),
                source,
            })
    }

    /// Subscribes with automatic acknowledgement.
    pub async fn subscribe(
        &self,
        filter: &str,
    ) -> Result<mpsc::UnboundedReceiver<Delivery>, BusError> {
        if let Some(n) = &self.nats {
            return n.subscribe(filter, self.admission()).await;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let admission = Arc::clone(&self.admission);
        let opts = SubscribeOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        self.client
            .subscribe_with_options(filter, opts, move |msg| {
                let payload = Bytes::from(msg.payload);
                if let Some(payload) = admission.admit(&msg.topic, &payload) {
                    let _ = tx.send(Delivery::new(msg.topic, payload, None));
                }
            })
            .await
            .map_err(|source| BusError::Subscribe {
                filter: filter.to_string(),
                source,
            })?;
        Ok(rx)
    }

    /// Records an invalid message: a metric by reason and a rate-limited warning.
    pub fn invalid(&self, reason: &'static str, topic: &str, detail: &str) {
        self.admission.invalid(reason, topic, detail);
    }

    /// Decodes a delivery's envelope, recording it as invalid on failure.
    pub fn decode<T: DeserializeOwned>(&self, d: &Delivery) -> Option<Envelope<T>> {
        match Envelope::<T>::decode(&d.payload) {
            Ok(env) => Some(env),
            Err(e) => {
                self.invalid("malformed", &d.topic, &e.to_string());
                None
            }
        }
    }

    /// Decodes an event message in any encoding, recording it as invalid on failure.
    pub fn decode_event(&self, d: &Delivery) -> Option<Envelope<AddEventRequest>> {
        match envelope::decode_event(&d.payload) {
            Ok(env) => Some(env),
            Err(e) => {
                self.invalid("malformed", &d.topic, &e.to_string());
                None
            }
        }
    }

    /// Disconnects cleanly (the broker keeps a durable session for the next start);
    /// false if the broker could not be told in time.
    pub async fn disconnect(&self) -> bool {
        self.closing.store(true, Ordering::Relaxed);
        if let Some(n) = &self.nats {
            return n.close().await;
        }
        for p in self.publishers.iter() {
            let _ = tokio::time::timeout(Duration::from_secs(2), p.disconnect()).await;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await,
            Ok(Ok(()))
        )
    }
}

fn build_client(cfg: &BusConfig, data_dir: &Path, opts: &Options) -> Result<MqttClient, BusError> {
    let mut co = ConnectOptions::new(opts.client_id.clone());
    // To the embedded broker over TLS, the service's certificate says who it is.
    let by_certificate = tls::Files::of(cfg, data_dir).is_some_and(|f| f.is_node_identity(cfg));
    if !by_certificate
        && let Some((user, password)) = credentials(cfg, data_dir, opts.create_credentials)?
    {
        co = co.with_credentials(user, password.as_bytes());
    }
    let mut co = co
        .with_keep_alive(Duration::from_secs(u64::from(cfg.keep_alive_s.max(5))))
        .with_automatic_reconnect(true)
        .with_reconnect_delay(Duration::from_millis(100), Duration::from_secs(5))
        .with_receive_maximum(opts.receive_maximum);
    if opts.deferred_ack {
        co = co
            .with_clean_start(false)
            .with_resume_existing_session(true)
            .with_session_expiry_interval(opts.session_expiry_s.max(1))
            .with_deferred_ack(true);
    } else {
        co = co.with_clean_start(true);
    }
    Ok(MqttClient::with_options(co))
}

async fn connect_loop(
    client: &MqttClient,
    cfg: &BusConfig,
    data_dir: &Path,
    opts: &Options,
    shutdown: &Shutdown,
) -> Result<(), BusError> {
    let files = tls::Files::of(cfg, data_dir);
    if let Some(files) = files.clone() {
        files.keep_applied(client, shutdown).await;
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    let mut warned = false;
    // After a first attempt fails in a way the client retries on its own (a broker not
    // listening yet), the client's reconnect task keeps trying: another `connect` would
    // race it and, once it won, fail with "already connected" for ever, and each failed
    // attempt would start one more reconnect task. So from then on this only waits.
    let mut retried_by_client = false;
    loop {
        if retried_by_client && client.is_connected().await {
            tracing::info!(url = %cfg.url, client_id = %opts.client_id, "connected to the bus");
            return Ok(());
        }
        let failed = if retried_by_client {
            None
        } else {
            match client.connect(&cfg.url).await {
                Ok(()) | Err(mqtt5::error::MqttError::AlreadyConnected) => {
                    tracing::info!(url = %cfg.url, client_id = %opts.client_id, "connected to the bus");
                    return Ok(());
                }
                Err(e) => {
                    retried_by_client = mqtt5::client::is_recoverable(
                        &e,
                        &mqtt5::client::ErrorRecoveryConfig::default(),
                    )
                    .is_some();
                    Some(e)
                }
            }
        };
        if !warned && started.elapsed() >= Duration::from_secs(2) {
            match &failed {
                Some(e) => {
                    tracing::warn!(url = %cfg.url, error = %e, "bus not reachable yet; retrying");
                }
                None => tracing::warn!(url = %cfg.url, "bus not reachable yet; retrying"),
            }
            warned = true;
        }
        if let Some(files) = &files
            && let Err(e) = files.apply(client).await
        {
            tracing::debug!(error = %e, "cannot read the bus TLS files yet");
        }
        tokio::select! {
            () = shutdown.wait() => {
                // The client's own reconnect task would go on connecting a client no one
                // holds (under this session's client ID).
                let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
                return Err(BusError::ShutDown);
            }
            () = tokio::time::sleep(if retried_by_client {
                Duration::from_millis(100)
            } else {
                backoff.next_delay()
            }) => {}
        }
    }
}
