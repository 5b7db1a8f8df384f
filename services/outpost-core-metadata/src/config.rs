//! `[core_metadata]`.

use std::path::PathBuf;

use outpost_kit::config::{Problems, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP port (EdgeX core-metadata's default).
    pub port: u16,
    /// Check every device resource's `units` against the units of measure (EdgeX
    /// `Writable.UoM.Validation`, off by default as in EdgeX).
    pub uom_validation: bool,
    /// Units of measure file (YAML, JSON or TOML in EdgeX's `uom.yaml` shape); the built-in
    /// list when unset.
    pub uom_file: Option<PathBuf>,
    /// Lock device profiles against replacement and the removal of resources and commands
    /// (EdgeX `Writable.ProfileChange.StrictDeviceProfileChanges`: 423).
    pub strict_profile_changes: bool,
    /// Lock device profiles against deletion (EdgeX
    /// `Writable.ProfileChange.StrictDeviceProfileDeletes`: 423).
    pub strict_profile_deletes: bool,
    /// Put the whole object into system events' `details` (what EdgeX device services
    /// expect) instead of its identifying fields only.
    pub full_system_event_details: bool,
    /// Timeout of the device service's `/validate/device` callback when a device is added.
    pub device_validation_timeout_ms: u64,
    /// Where profiles, devices, device services and provision watchers are kept: the
    /// service's SQLite database (the default), or PostgreSQL for several instances.
    pub storage: outpost_kit::pg::StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59881,
            uom_validation: false,
            uom_file: None,
            strict_profile_changes: false,
            strict_profile_deletes: false,
            full_system_event_details: false,
            device_validation_timeout_ms: 2_000,
            storage: outpost_kit::pg::StorageConfig::default(),
        }
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
        for problem in self.storage.problems() {
            p.check(false, "core_metadata.storage", problem);
        }
        if let Some(f) = &self.uom_file {
            p.check(
                f.exists(),
                "core_metadata",
                format!("uom_file {} does not exist", f.display()),
            );
        }
        p.check(
            self.device_validation_timeout_ms >= 10,
            "core_metadata",
            "device_validation_timeout_ms must be at least 10",
        );
    }
}

outpost_kit::service_config!(Config);

/// What changes while core-metadata runs: EdgeX's `Writable` keys
/// (`edgex/v4/core-metadata/Writable/ProfileChange/StrictDeviceProfileChanges`, ...),
/// first taken from this section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Writable {
    pub profile_change: ProfileChange,
    #[serde(rename = "UoM")]
    pub uom: Uom,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProfileChange {
    pub strict_device_profile_changes: bool,
    pub strict_device_profile_deletes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Uom {
    pub validation: bool,
}

impl outpost_kit::writable::Settings for Writable {}

impl From<&Config> for Writable {
    fn from(c: &Config) -> Self {
        Self {
            profile_change: ProfileChange {
                strict_device_profile_changes: c.strict_profile_changes,
                strict_device_profile_deletes: c.strict_profile_deletes,
            },
            uom: Uom {
                validation: c.uom_validation,
            },
        }
    }
}
