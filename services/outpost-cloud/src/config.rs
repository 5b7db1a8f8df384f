//! `[cloud]` and `[cloud.retention]`: the cloud node's section of its configuration.

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTPS port.
    pub port: u16,
    /// Names the cloud's certificate covers besides localhost, the host name and
    /// `node.advertise_host`.
    pub tls_names: Vec<String>,
    /// The URL edges reach this node at, put in their identity bundles; empty =
    /// `https://<node.advertise_host>:<port>`.
    pub public_url: String,
    /// Lifetime of an edge's client certificate.
    pub client_cert_days: u32,
    /// Largest batch body, compressed as sent.
    pub max_body_bytes: usize,
    /// Largest batch after decompression.
    pub max_batch_bytes: usize,
    /// Page cache of the cloud's database, KiB (a cloud node has more memory than an edge).
    pub cache_kib: u32,
    /// How long data is kept, and how much.
    pub retention: Retention,
    /// Where what edges send is kept: the node's encrypted SQLite file, or a PostgreSQL
    /// database several cloud instances share (`backend = "postgres"`).
    pub storage: outpost_kit::pg::StorageConfig,
}

/// `[cloud.retention]`: what the cloud node keeps. Events older than `max_age_s` (by their
/// origin, and at least that long after they arrived) go with their readings, and so do
/// alerts; while more than `max_readings`
/// readings are stored, the oldest events go. Removal runs in steps of `chunk_events`
/// events, each its own transaction, so ingest is never held up for long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// 0 keeps data of any age.
    pub max_age_s: u64,
    /// 0 sets no bound on the number of readings.
    pub max_readings: u64,
    /// Seconds between retention passes.
    pub interval_s: u64,
    /// Events removed per transaction.
    pub chunk_events: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_s: 90 * 24 * 3600,
            max_readings: 0,
            interval_s: 60,
            chunk_events: 1_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59740,
            tls_names: Vec::new(),
            public_url: String::new(),
            client_cert_days: 825,
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_bytes: 64 * 1024 * 1024,
            cache_kib: 65536,
            retention: Retention::default(),
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

impl Config {
    /// The URL put in identity bundles: `public_url`, or `https://<advertise_host>:<port>`.
    pub fn public_url(&self, advertise_host: &str) -> String {
        if self.public_url.is_empty() {
            let host = if advertise_host.contains(':') {
                format!("[{advertise_host}]")
            } else {
                advertise_host.to_string()
            };
            format!("https://{host}:{}", self.port)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }
}

impl outpost_kit::ServiceConfig for Config {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        // Not part of an edge node: `outpost cloud` runs it.
        false
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        p.check(self.port != 0, "cloud", "port must not be 0");
        for problem in self.storage.problems() {
            p.check(false, "cloud.storage", problem);
        }
        p.check(
            self.client_cert_days >= 1,
            "cloud",
            "client_cert_days must be at least 1",
        );
        p.check(
            self.max_body_bytes >= 1024 && self.max_batch_bytes >= self.max_body_bytes,
            "cloud",
            "max_body_bytes must be at least 1024 and max_batch_bytes at least max_body_bytes",
        );
        p.check(
            self.public_url.is_empty() || self.public_url.starts_with("https://"),
            "cloud",
            "public_url must be an https:// URL",
        );
        p.check(
            self.retention.interval_s >= 1 && self.retention.chunk_events >= 1,
            "cloud.retention",
            "interval_s and chunk_events must be at least 1",
        );
    }
}
