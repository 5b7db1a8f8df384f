//! `[device_modbus.driver]`: batching, timeouts and reconnects of the Modbus driver.
//!
//! A device's own protocol properties (`Timeout`, `IdleTimeout` in seconds, as EdgeX) win over
//! the defaults here.

use std::time::Duration;

use outpost_device_sdk::DriverConfig;
use outpost_kit::config::Problems;
use serde::{Deserialize, Serialize};

use crate::plan::{Limits, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ};

/// `[device_modbus.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {
    /// Read the resources of one command in as few requests as the register map allows.
    /// Off: one request per resource (for devices that refuse reads spanning several values).
    pub batching: bool,
    /// Unused registers one batched read may span to join two ranges.
    pub max_gap_registers: u16,
    /// Unused coils or discrete inputs one batched read may span to join two ranges.
    pub max_gap_bits: u16,
    /// Most registers in one read (the protocol allows 125; some devices take fewer).
    pub max_registers_per_read: u16,
    /// Most coils or discrete inputs in one read (the protocol allows 2000).
    pub max_bits_per_read: u16,
    /// Timeout of connecting and of one request, for devices without a `Timeout` property.
    pub timeout_ms: u64,
    /// A connection unused this long is closed, for devices without an `IdleTimeout` property.
    pub idle_timeout_ms: u64,
    /// Wait before the first reconnect after a failure; it doubles with every further failure.
    pub reconnect_backoff_min_ms: u64,
    /// Longest wait between reconnects.
    pub reconnect_backoff_max_ms: u64,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        Self {
            batching: true,
            max_gap_registers: 8,
            max_gap_bits: 64,
            max_registers_per_read: MAX_REGISTERS_PER_READ,
            max_bits_per_read: MAX_BITS_PER_READ,
            timeout_ms: 3_000,
            idle_timeout_ms: 60_000,
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 5_000,
        }
    }
}

impl ModbusConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            batching: self.batching,
            max_gap_registers: self.max_gap_registers,
            max_gap_bits: self.max_gap_bits,
            max_registers: self.max_registers_per_read,
            max_bits: self.max_bits_per_read,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl DriverConfig for ModbusConfig {
    const SERVICE: &'static str = crate::SERVICE;
    const SECTION: &'static str = "device_modbus";
    const PORT: u16 = 59901;
    const ENABLED: bool = false;

    fn driver(
        start: &outpost_kit::Start<crate::Config>,
    ) -> Result<std::sync::Arc<dyn outpost_device_sdk::Driver>, outpost_kit::StartError> {
        Ok(crate::driver::driver(start))
    }

    /// Serial lines (Modbus RTU) are named per device in core-metadata: every serial
    /// device present at start may be opened (`/dev/tty*`, `/dev/serial/`, pseudo-terminals),
    /// no other device (not the TPM); the service user's groups (`dialout`) decide which. A
    /// line plugged in later needs a restart of the service.
    fn sandbox(
        &self,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        use outpost_kit::sandbox::Access;
        for dir in ["/dev/serial", "/dev/pts"] {
            files.allow(dir, Access::Device);
        }
        if let Ok(entries) = std::fs::read_dir("/dev") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("tty") {
                    files.allow(e.path(), Access::Device);
                }
            }
        }
        Ok(())
    }

    fn validate(&self, p: &mut Problems) {
        let s = "device_modbus.driver";
        p.check(
            (1..=MAX_REGISTERS_PER_READ).contains(&self.max_registers_per_read),
            s,
            format!("max_registers_per_read must be between 1 and {MAX_REGISTERS_PER_READ}"),
        );
        p.check(
            (1..=MAX_BITS_PER_READ).contains(&self.max_bits_per_read),
            s,
            format!("max_bits_per_read must be between 1 and {MAX_BITS_PER_READ}"),
        );
        p.check(
            self.max_gap_registers < self.max_registers_per_read.max(1),
            s,
            "max_gap_registers must be less than max_registers_per_read",
        );
        p.check(
            self.max_gap_bits < self.max_bits_per_read.max(1),
            s,
            "max_gap_bits must be less than max_bits_per_read",
        );
        p.check(self.timeout_ms >= 10, s, "timeout_ms must be at least 10");
        p.check(
            self.idle_timeout_ms >= 100,
            s,
            "idle_timeout_ms must be at least 100",
        );
        p.check(
            self.reconnect_backoff_min_ms >= 1
                && self.reconnect_backoff_min_ms <= self.reconnect_backoff_max_ms,
            s,
            "reconnect_backoff_min_ms must be at least 1 and at most reconnect_backoff_max_ms",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_all_reported() {
        let mut p = Problems::default();
        ModbusConfig::default().validate(&mut p);
        assert!(p.into_result().is_ok());
        let bad = ModbusConfig {
            max_registers_per_read: 126,
            max_bits_per_read: 0,
            timeout_ms: 1,
            reconnect_backoff_min_ms: 10_000,
            ..ModbusConfig::default()
        };
        let mut p = Problems::default();
        bad.validate(&mut p);
        match p.into_result() {
            Err(outpost_kit::config::ConfigError::Invalid(all)) => {
                assert_eq!(all.len(), 5, "{all:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
