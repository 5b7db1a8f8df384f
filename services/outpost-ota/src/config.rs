//! `[ota]`: the service's section of the node configuration.

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

use outpost_manifest::PublicKey;

/// `[ota]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    pub port: u16,
    /// Public keys whose signatures are accepted (`ed25519:<base64>`, as `outpost ota
    /// keygen` prints them); more than one for rotation.
    pub trusted_keys: Vec<String>,
    /// Largest artifact payload.
    pub max_artifact_bytes: u64,
    /// How often devices are told to poll, seconds.
    pub poll_seconds: u64,
    /// A device not seen for this long is overdue, seconds (0: three poll intervals).
    pub overdue_after_s: u64,
    /// Where artifacts, rollouts, the inventory and groups are kept: the service's SQLite
    /// database, or PostgreSQL (`backend = "postgres"`). Payloads stay in the data dir.
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 59750,
            trusted_keys: Vec::new(),
            max_artifact_bytes: 4 * 1024 * 1024 * 1024,
            poll_seconds: 30,
            overdue_after_s: 0,
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

impl Config {
    /// How long a device may go without checking in before it is overdue, milliseconds.
    pub fn overdue_ms(&self) -> i64 {
        let overdue_s = if self.overdue_after_s == 0 {
            3 * self.poll_seconds
        } else {
            self.overdue_after_s
        };
        i64::try_from(overdue_s.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

outpost_kit::service_config!(Config, enabled);

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        for k in &self.trusted_keys {
            if let Err(e) = PublicKey::parse(k) {
                p.push("ota.trusted_keys", format!("{k}: {e}"));
            }
        }
        p.check(
            (1..=86_400).contains(&self.poll_seconds),
            "ota",
            "poll_seconds must be 1 to 86400",
        );
        p.check(
            !self.enabled || !self.trusted_keys.is_empty(),
            "ota",
            "trusted_keys must name at least one key (see `outpost ota keygen`)",
        );
        for problem in self.storage.problems() {
            p.check(false, "ota.storage", problem);
        }
    }
}
