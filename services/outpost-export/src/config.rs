//! `[export]` and its destinations.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[export]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Whether `outpost up` runs the export service.
    pub enabled: bool,
    /// HTTP port (status, ingest over REST, dead letters).
    pub port: u16,
    /// Bus messages held unacknowledged at once (their acknowledgement waits for the
    /// queue's sync).
    pub max_inflight: u16,
    /// Most bus messages appended (and synced) together.
    pub max_append_batch: usize,
    pub destinations: Vec<Destination>,
    /// Where instances take turns (`backend = "postgres"`): one instance runs export, the
    /// others stand by and the first to take the lease runs it when it dies. The queues
    /// are then on a volume every instance mounts (`<data>/queue`). Default: no turns, the
    /// instance runs at once.
    pub standby: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 59730,
            max_inflight: 1024,
            max_append_batch: 512,
            destinations: Vec::new(),
            standby: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

/// Where a destination sends; its status shows it too.
pub use outpost_contracts::export::DestinationKind as Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    #[default]
    DropOldest,
    RefuseNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    #[default]
    Batch,
    None,
}

/// `[[export.destinations]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Destination {
    /// Names the queue directory (`<data>/queue/<name>`), metrics and the status.
    pub name: String,
    pub kind: Kind,
    /// Where to send; for `cloud`, empty takes the URL from the identity bundle.
    pub url: String,
    /// `cloud`, `webhook`: more URLs of the same receiver (several cloud instances sharing
    /// one store; for `cloud` each its base, `https://HOST:PORT`), tried in order when the one in use cannot be reached or answers 502,
    /// 503 or 504; the sender stays with the one that answered. A batch that reached an
    /// instance whose answer was lost, sent again to another, is stored once there.
    pub failover_urls: Vec<String>,
    /// `cloud`: the identity bundle written by `outpost cloud enroll`.
    pub identity: Option<PathBuf>,
    /// `webhook`, `mqtt`: a CA file to trust instead of the system's roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// `mqtt` over TLS: a client certificate (PEM, with its chain) and its key, for brokers
    /// that ask for one (mosquitto's `require_certificate`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `mqtt`: topic prefix; batches go to `<topic>/high` and `<topic>/normal`.
    pub topic: String,
    /// `mqtt`: credentials (the password read from a file).
    pub username: String,
    pub password_file: Option<PathBuf>,
    /// `webhook`: headers sent with every batch (e.g. `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// Bus topic filters whose messages this destination takes.
    pub sources: Vec<String>,
    /// Of those, the filters whose messages go first (alerts): sent before everything
    /// else and dropped last.
    pub high_priority: Vec<String>,
    /// Bound on the queue's files, bytes.
    pub max_bytes: u64,
    /// Items older than this are dropped (counted); 0 keeps them until sent.
    pub ttl_s: u64,
    pub overflow: Overflow,
    /// `batch`: every append is synced before it is acknowledged (survives power loss).
    pub sync: Sync,
    /// Largest batch on the wire.
    pub batch_max_items: usize,
    pub batch_max_bytes: usize,
    /// How long a batch may wait for more items once the first arrived.
    pub linger_ms: u64,
    /// zstd level on the wire; 0 sends uncompressed.
    pub zstd_level: i32,
    /// Retries: exponential with jitter from the first to the longest delay.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Longest wait for the receiver's answer to one batch.
    pub timeout_ms: u64,
}

impl Default for Destination {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: Kind::Cloud,
            url: String::new(),
            failover_urls: Vec::new(),
            identity: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            topic: "outpost/export".into(),
            username: String::new(),
            password_file: None,
            headers: BTreeMap::new(),
            sources: vec!["edgex/events/#".into(), "edgex/alerts/#".into()],
            high_priority: vec!["edgex/alerts/#".into()],
            max_bytes: 256 * 1024 * 1024,
            ttl_s: 0,
            overflow: Overflow::DropOldest,
            sync: Sync::Batch,
            batch_max_items: 5000,
            batch_max_bytes: 4 * 1024 * 1024,
            linger_ms: 2,
            zstd_level: 3,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

outpost_kit::service_config!(Config, enabled);

impl outpost_kit::config::Validate for Config {
    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        p.check(
            self.max_inflight >= 1,
            "export",
            "max_inflight must be at least 1",
        );
        p.check(
            self.max_append_batch >= 1,
            "export",
            "max_append_batch must be at least 1",
        );
        for problem in self.standby.problems() {
            p.check(false, "export.standby", problem);
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.destinations {
            let at = format!("export.destinations[{}]", d.name);
            p.check(
                valid_name(&d.name),
                &at,
                "name must be 1 to 64 letters, digits, '-' or '_'",
            );
            p.check(names.insert(d.name.clone()), &at, "name is used twice");
            for u in &d.failover_urls {
                p.check(
                    u.starts_with("https://") || u.starts_with("http://"),
                    &at,
                    format!("failover url '{u}' must be http(s)://"),
                );
            }
            p.check(
                d.failover_urls.is_empty() || d.kind != Kind::Mqtt,
                &at,
                "failover_urls are for cloud and webhook destinations",
            );
            match d.kind {
                Kind::Cloud => p.check(
                    d.identity.is_some(),
                    &at,
                    "kind cloud needs identity (the bundle from `outpost cloud enroll`)",
                ),
                Kind::Webhook => p.check(
                    d.url.starts_with("https://") || d.url.starts_with("http://"),
                    &at,
                    "kind webhook needs an http(s):// url",
                ),
                Kind::Mqtt => {
                    p.check(
                        d.url.starts_with("mqtts://") || d.url.starts_with("mqtt://"),
                        &at,
                        "kind mqtt needs an mqtts:// (or mqtt://) url",
                    );
                    p.check(
                        !d.topic.is_empty() && !d.topic.contains(['+', '#']),
                        &at,
                        "topic must be a topic name without wildcards",
                    );
                    p.check(
                        d.cert_file.is_some() == d.key_file.is_some(),
                        &at,
                        "cert_file and key_file go together",
                    );
                    p.check(
                        d.cert_file.is_none() || d.url.starts_with("mqtts://"),
                        &at,
                        "a client certificate needs an mqtts:// url",
                    );
                }
            }
            p.check(!d.sources.is_empty(), &at, "sources must not be empty");
            p.check(
                d.max_bytes >= 64 * 1024,
                &at,
                "max_bytes must be at least 65536",
            );
            p.check(
                d.batch_max_items >= 1 && d.batch_max_bytes >= 1024,
                &at,
                "batch_max_items must be at least 1 and batch_max_bytes at least 1024",
            );
            p.check(
                (0..=19).contains(&d.zstd_level),
                &at,
                "zstd_level must be 0 (off) to 19",
            );
            p.check(
                d.retry_initial_ms >= 1 && d.retry_max_ms >= d.retry_initial_ms,
                &at,
                "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
            );
            p.check(d.timeout_ms >= 10, &at, "timeout_ms must be at least 10");
        }
    }
}

/// Whether an MQTT topic filter (`+`, `#`) matches `topic`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches(
            "edgex/events/#",
            "edgex/events/device/a/b/c/d"
        ));
        assert!(topic_matches("edgex/+/device/#", "edgex/events/device/x"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("#", "anything/at/all"));
    }
}
