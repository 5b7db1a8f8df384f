//! `[core_keeper]`: the registry.

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP port (EdgeX core-keeper's default).
    pub port: u16,
    /// Heartbeat intervals an instance may miss before it is marked DOWN.
    pub missed_heartbeats: u32,
    /// How long an instance stays DOWN or deregistered before it is removed; 0 keeps it.
    pub remove_after_ms: u64,
    /// Timeout of one active HTTP health check.
    pub health_check_timeout_ms: u64,
    /// Longest wait a long-polling client may ask for.
    pub max_wait_ms: u64,
    /// How often expiry is evaluated.
    pub sweep_interval_ms: u64,
    /// Where registrations and key/values are kept: the service's SQLite database, or
    /// PostgreSQL (`backend = "postgres"`).
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59890,
            missed_heartbeats: 3,
            remove_after_ms: 60_000,
            health_check_timeout_ms: 2_000,
            max_wait_ms: 60_000,
            sweep_interval_ms: 100,
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.missed_heartbeats >= 1,
            "core_keeper",
            "missed_heartbeats must be at least 1",
        );
        p.check(
            self.health_check_timeout_ms >= 10,
            "core_keeper",
            "health_check_timeout_ms must be at least 10",
        );
        p.check(
            (10..=10_000).contains(&self.sweep_interval_ms),
            "core_keeper",
            "sweep_interval_ms must be between 10 and 10000",
        );
        for problem in self.storage.problems() {
            p.check(false, "core_keeper.storage", problem);
        }
    }
}

outpost_kit::service_config!(Config);
