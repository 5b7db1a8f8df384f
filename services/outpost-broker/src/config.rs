//! `[broker]`: the embedded MQTT broker.

use std::net::SocketAddr;

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run the embedded broker under `outpost up`. Turn off when `bus.url` names an
    /// external broker (mosquitto, EMQX).
    pub enabled: bool,
    /// Plain MQTT listener (MQTT 3.1.1 and 5), for local tools. Clients that do not
    /// connect from loopback must authenticate.
    pub listen: SocketAddr,
    /// MQTT over TLS ([`crate::front`]): the broker's certificate from the node CA, client
    /// certificates of the node CA or a manufacturer CA as identities. `None`: off.
    pub tls_listen: Option<SocketAddr>,
    /// HTTP port of the broker service (health, metrics, registration).
    pub port: u16,
    /// The host other services reach this broker at, when it runs on another host or in
    /// another container (`mqtt-broker` under compose); empty: this host. The bus is then
    /// still this broker, with its journal.
    pub host: String,
    /// Let clients on loopback connect without credentials (local tools such as
    /// mosquitto_pub). Clients from other hosts always need credentials. `None`: while
    /// `security.internal_tls` is off.
    pub allow_anonymous_loopback: Option<bool>,
    /// Most simultaneous clients.
    pub max_clients: usize,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_bytes: usize,
    /// QoS 1/2 messages sent to one client and not yet acknowledged (further capped by the
    /// client's receive maximum). Durable consumers acknowledge after committing, so this
    /// window is what lets them batch commits.
    pub max_inflight_per_client: u16,
    /// Messages the broker holds for a disconnected persistent session (for example
    /// core-data while it restarts).
    pub max_queued_messages_per_client: usize,
    /// Bytes the broker holds for a disconnected persistent session.
    pub max_queued_bytes_per_client: usize,
    /// Publish `$SYS` statistics topics.
    pub sys_topics: bool,
    /// Longest a client's session is kept while it is away, seconds (clients may ask less).
    pub max_session_expiry_s: u64,
    /// Most retained messages the broker keeps.
    pub max_retained_messages: usize,
    /// Let devices connect with their own credentials (user name = device name, password =
    /// the device secret kept by core-metadata); each may then only use its own topics.
    pub device_auth: bool,
    /// How long a device's verified credential and topics are trusted before metadata is
    /// asked again (so a removed or rotated secret stops working within this time).
    pub device_auth_cache_s: u64,
    /// Failed logins of one device from one address before further attempts are refused
    /// unchecked (from one address for any device: ten times as many).
    pub auth_failure_burst: u32,
    /// Seconds until one more attempt is allowed after that.
    pub auth_failure_refill_s: u64,
    /// Acknowledge a QoS 1/2 message for the node's durable consumers only once it is in
    /// the broker's journal on disk (encrypted, synced per `storage.sync`), and deliver
    /// what the journal holds again after a crash. Off: such messages live in memory
    /// until consumed, and a crash of the broker loses what it had acknowledged.
    pub journal: bool,
    /// Bound on the journal's files, bytes; when full, publishers wait for their
    /// acknowledgement until consumers catch up.
    pub journal_max_bytes: u64,
    /// A journaled message a connected consumer did not confirm within this many seconds
    /// is delivered to it again.
    pub journal_redeliver_s: u64,
    /// Durable consumers the journal keeps messages for from the broker's first start,
    /// before they ever connected: services started together (containers, Kubernetes)
    /// may publish before the consumer of what they publish has subscribed. The node's
    /// own (core-data, device-mqtt's telemetry on this broker, support-notifications'
    /// alerts when enabled) are added to those listed; a consumer that never connects is
    /// forgotten after ten minutes.
    pub durable_consumers: Vec<DurableConsumer>,
}

/// A durable consumer the journal knows before it connects: its client ID and filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableConsumer {
    pub client: String,
    pub filters: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            port: 59898,
            host: String::new(),
            allow_anonymous_loopback: None,
            max_clients: 10_000,
            max_packet_bytes: 1024 * 1024 + 4096,
            max_inflight_per_client: 8192,
            max_queued_messages_per_client: 200_000,
            max_queued_bytes_per_client: 256 * 1024 * 1024,
            sys_topics: false,
            max_session_expiry_s: 7 * 24 * 3600,
            max_retained_messages: 10_000,
            device_auth: true,
            device_auth_cache_s: 10,
            auth_failure_burst: 5,
            auth_failure_refill_s: 10,
            journal: true,
            journal_max_bytes: 256 * 1024 * 1024,
            journal_redeliver_s: 60,
            durable_consumers: Vec::new(),
        }
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.max_clients >= 1,
            "broker",
            "max_clients must be at least 1",
        );
        p.check(
            self.max_packet_bytes >= 1024,
            "broker",
            "max_packet_bytes must be at least 1024",
        );
        p.check(
            self.max_inflight_per_client >= 1,
            "broker",
            "max_inflight_per_client must be at least 1",
        );
        p.check(
            self.max_queued_messages_per_client >= 1,
            "broker",
            "max_queued_messages_per_client must be at least 1",
        );
        p.check(
            self.auth_failure_burst >= 1 && self.auth_failure_refill_s >= 1,
            "broker",
            "auth_failure_burst and auth_failure_refill_s must be at least 1",
        );
        p.check(
            self.journal_max_bytes >= 1024 * 1024,
            "broker",
            "journal_max_bytes must be at least 1 MiB",
        );
        p.check(
            self.journal_redeliver_s >= 1,
            "broker",
            "journal_redeliver_s must be at least 1",
        );
        p.check(
            self.device_auth_cache_s <= 3600,
            "broker",
            "device_auth_cache_s must be at most 3600",
        );
    }
}

impl outpost_kit::ServiceConfig for Config {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn listeners(&self) -> Vec<outpost_kit::service::Listener> {
        let mut l = vec![outpost_kit::service::Listener {
            scheme: "mqtt",
            addr: self.listen,
        }];
        if let Some(addr) = self.tls_listen {
            l.push(outpost_kit::service::Listener {
                scheme: "mqtts",
                addr,
            });
        }
        l
    }
}
