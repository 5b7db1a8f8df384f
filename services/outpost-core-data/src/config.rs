//! `[core_data]`.

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP port (EdgeX core-data's default).
    pub port: u16,
    /// Check events against core-metadata: the device exists, the profile matches, every
    /// reading names a resource of the profile, has its value type and lies within its
    /// minimum/maximum. Events that fail are refused (REST) or dropped and counted (bus).
    pub validate_events: bool,
    /// Store the events of devices core-metadata does not know, unchecked, as EdgeX does
    /// (off: they are refused with 404, so nothing unchecked is stored; see
    /// docs/decisions.md).
    pub accept_unknown_devices: bool,
    /// Most events committed in one transaction.
    pub max_batch_events: usize,
    /// Unacknowledged bus messages the broker may have in flight to core-data: enough for
    /// large commits; larger windows cost the broker time on every acknowledgement.
    pub max_inflight: u16,
    /// Store events (EdgeX `Writable.PersistData`). Off, events are checked and
    /// acknowledged but not stored; REST-added ones are still published.
    pub persist_data: bool,
    /// Publish events added over REST on the bus (`<base>/events/core/...`), as EdgeX does.
    pub publish_rest_events: bool,
    /// Delete a device's events when core-metadata announces its deletion.
    pub purge_on_device_delete: bool,
    pub retention: RetentionConfig,
    /// Where events are kept: the node's encrypted SQLite file (default), or a PostgreSQL
    /// database shared by several core-data instances (`backend = "postgres"`).
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59880,
            validate_events: true,
            accept_unknown_devices: false,
            max_batch_events: 2_000,
            max_inflight: 2_048,
            persist_data: true,
            publish_rest_events: true,
            purge_on_device_delete: false,
            retention: RetentionConfig::default(),
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

/// What changes while core-data runs: EdgeX's `Writable` keys
/// (`edgex/v4/core-data/Writable/PersistData`, `.../MaxResultCount`), first taken from the
/// configuration. `MaxResultCount` is EdgeX's `Service.MaxResultCount`, made writable
/// (docs/decisions.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Writable {
    pub persist_data: bool,
    pub max_result_count: u64,
}

impl outpost_kit::writable::Settings for Writable {
    fn check(&self) -> Result<(), String> {
        if self.max_result_count == 0 {
            return Err("MaxResultCount must be at least 1".into());
        }
        Ok(())
    }
}

/// `[core_data.retention]`: bounds on what is kept, so disk use is bounded.
///
/// By count with EdgeX's semantics: once more than `max_cap` readings are stored, the
/// oldest events are removed until at most `min_cap` readings remain. By age: events whose
/// origin is older than `max_age_s` are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub enabled: bool,
    /// How often retention runs.
    pub interval_ms: u64,
    /// Readings that trigger a purge.
    pub max_cap: u64,
    /// Readings left after a purge.
    pub min_cap: u64,
    /// Oldest event origin kept, seconds before now; 0 keeps events of any age.
    pub max_age_s: u64,
    /// Readings deleted per transaction, so ingest is never blocked for long.
    pub chunk_readings: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 30_000,
            max_cap: 50_000_000,
            min_cap: 40_000_000,
            max_age_s: 0,
            chunk_readings: 50_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.max_batch_events >= 1,
            "core_data",
            "max_batch_events must be at least 1",
        );
        p.check(
            self.max_inflight >= 1,
            "core_data",
            "max_inflight must be at least 1",
        );
        for problem in self.storage.problems() {
            p.check(false, "core_data.storage", problem);
        }
        let r = &self.retention;
        p.check(
            r.min_cap <= r.max_cap,
            "core_data.retention",
            format!(
                "min_cap ({}) must not exceed max_cap ({})",
                r.min_cap, r.max_cap
            ),
        );
        p.check(
            r.max_cap >= 1,
            "core_data.retention",
            "max_cap must be at least 1",
        );
        p.check(
            r.interval_ms >= 100,
            "core_data.retention",
            "interval_ms must be at least 100",
        );
        p.check(
            r.chunk_readings >= 100,
            "core_data.retention",
            "chunk_readings must be at least 100",
        );
    }
}

outpost_kit::service_config!(Config);
