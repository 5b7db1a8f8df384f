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
    /// Refuse changes to profiles that devices use (EdgeX `StrictDeviceProfileChanges`).
    pub strict_profile_changes: bool,
    /// Put the whole object into system events' `details` (what EdgeX device services
    /// expect) instead of its identifying fields only.
    pub full_system_event_details: bool,
    /// Timeout of the device service's `/validate/device` callback when a device is added.
    pub device_validation_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 59881,
            uom_validation: false,
            uom_file: None,
            strict_profile_changes: false,
            full_system_event_details: false,
            device_validation_timeout_ms: 2_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self, p: &mut Problems) {
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
