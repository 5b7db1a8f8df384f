//! `[support_scheduler]`: the service's section of the node configuration.

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// HTTP port (EdgeX support-scheduler's default).
    pub port: u16,
    /// Most items one list answer holds (`limit=-1` means this many).
    pub max_result_count: u64,
    /// Timeout of one action (a REST call, a device command), milliseconds.
    pub action_timeout_ms: u64,
    /// Makes the default jobs on the first start (see [`DefaultJobs`]).
    pub default_jobs: DefaultJobs,
    pub retention: Retention,
    /// Where jobs, records and secrets are kept: the service's SQLite database, or
    /// PostgreSQL (`backend = "postgres"`).
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 59863,
            max_result_count: 1024,
            action_timeout_ms: 10_000,
            default_jobs: DefaultJobs::default(),
            retention: Retention::default(),
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

/// The jobs made on the first start (once: a job removed afterwards stays removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultJobs {
    pub enabled: bool,
    /// `scrub-aged-events`: every `interval`, core-data removes the events older than
    /// `event_age` (Go durations).
    pub interval: String,
    pub event_age: String,
}

impl Default for DefaultJobs {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "24h".into(),
            event_age: "168h".into(),
        }
    }
}

/// Keeps the action records bounded: when there are `max_cap`, the oldest are removed
/// until `min_cap` remain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub enabled: bool,
    pub interval_ms: u64,
    pub max_cap: u64,
    pub min_cap: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 60 * 60 * 1000,
            max_cap: 10_000,
            min_cap: 8_000,
        }
    }
}

outpost_kit::service_config!(Config, enabled);

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        const S: &str = "support_scheduler";
        for problem in self.storage.problems() {
            p.check(false, "support_scheduler.storage", problem);
        }
        p.check(
            self.max_result_count >= 1,
            S,
            "max_result_count must be at least 1",
        );
        p.check(
            self.action_timeout_ms >= 10,
            S,
            "action_timeout_ms must be at least 10",
        );
        for (name, v) in [
            ("default_jobs.interval", &self.default_jobs.interval),
            ("default_jobs.event_age", &self.default_jobs.event_age),
        ] {
            p.check(
                crate::model::parse_duration(v).is_ok(),
                S,
                format!("{name} '{v}' is not a duration such as \"24h\""),
            );
        }
        p.check(
            self.retention.min_cap < self.retention.max_cap,
            S,
            "retention.min_cap must be below retention.max_cap",
        );
        p.check(
            self.retention.interval_ms >= 1000,
            S,
            "retention.interval_ms must be at least 1000",
        );
    }
}
