//! The configuration every device service shares, around its driver's own section.

use outpost_kit::config::{Problems, Validate};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a driver's configuration section provides besides its fields: the facts of its
/// device service, and how its driver is made. A device service is then
/// [`Adapter<ItsConfig>`](crate::Adapter).
pub trait DriverConfig:
    Default + Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The service's name in the registry and in metadata (`device-modbus`).
    const SERVICE: &'static str;
    /// Its section of the node configuration (`device_modbus`).
    const SECTION: &'static str;
    /// EdgeX's default port for the service.
    const PORT: u16;
    /// Whether `outpost up` runs the service without being asked.
    const ENABLED: bool;
    /// Whether secrets given with `POST /api/v3/secret` (a server's user name and password,
    /// a pre-shared key) are kept in the service's encrypted database, across restarts,
    /// rather than in memory only. Such a service has a database of its own.
    const KEEPS_SECRETS: bool = false;

    /// Path prefixes devices call with credentials the driver checks itself (see
    /// [`outpost_kit::Info::open_routes`]).
    const OPEN_ROUTES: &'static [&'static str] = &[];

    /// Makes the driver; anything it runs in the background is started on
    /// `start.ctx.tasks`.
    fn driver(
        start: &outpost_kit::Start<Config<Self>>,
    ) -> Result<std::sync::Arc<dyn crate::Driver>, outpost_kit::StartError>;

    fn validate(&self, p: &mut Problems) {
        let _ = p;
    }

    /// What the driver opens on disk (see [`outpost_kit::Service::sandbox`]): a serial
    /// line's device, say.
    fn sandbox(
        &self,
        files: &mut outpost_kit::sandbox::Files,
    ) -> Result<(), outpost_kit::sandbox::StorageError> {
        let _ = files;
        Ok(())
    }

    /// The sockets the driver listens on besides the service's HTTP port (device-coap's
    /// UDP port), so the node checks them for clashes before it starts.
    fn listeners(&self) -> Vec<outpost_kit::service::Listener> {
        Vec::new()
    }

    /// How long a device credential core-metadata accepted is used without asking again.
    fn credentials_for(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
}

/// `[device_<protocol>]`: one device service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, bound = "D: DriverConfig")]
pub struct Config<D: DriverConfig> {
    /// Whether `outpost up` runs this service.
    pub enabled: bool,
    /// HTTP port (EdgeX's default for the service).
    pub port: u16,
    /// Consecutive failed reads or writes (device unreachable) before the device is marked
    /// DOWN in metadata. It comes back UP on the first answer.
    pub allowed_fails: u32,
    /// How often a DOWN device without autoEvents is tried again.
    pub down_probe_interval_ms: u64,
    /// Longest time a driver may take for one read or write.
    pub driver_timeout_ms: u64,
    /// Labels of the device service in metadata.
    pub labels: Vec<String>,
    /// Whether discovery runs at all (EdgeX's `Device.Discovery.Enabled`): off, a
    /// `POST /api/v3/discovery` is answered 503.
    pub discovery_enabled: bool,
    /// Run discovery this often (0: only when asked, `POST /api/v3/discovery`).
    pub discovery_interval_s: u64,
    /// Messages per second one device may push on average (MQTT telemetry, REST POSTs);
    /// more are dropped and counted, so a flooding device cannot starve the others.
    /// 0 turns the limit off.
    pub device_messages_per_s: f64,
    /// Messages a device may push at once above that rate.
    pub device_messages_burst: u32,
    /// Where instances take turns (`backend = "postgres"`): one instance serves the
    /// devices (polls, autoEvents, the broker session), the others stand by and the first
    /// to take the lease serves them when it dies. Default: no turns.
    pub standby: outpost_kit::pg::StorageConfig,
    /// The protocol's own settings.
    pub driver: D,
}

impl<D: DriverConfig> Default for Config<D> {
    fn default() -> Self {
        Self {
            enabled: D::ENABLED,
            port: D::PORT,
            allowed_fails: 3,
            down_probe_interval_ms: 5_000,
            driver_timeout_ms: 5_000,
            labels: Vec::new(),
            discovery_enabled: true,
            discovery_interval_s: 0,
            device_messages_per_s: 1000.0,
            device_messages_burst: 2000,
            standby: outpost_kit::pg::StorageConfig::default(),
            driver: D::default(),
        }
    }
}

impl<D: DriverConfig> Validate for Config<D> {
    fn validate(&self, p: &mut Problems) {
        let section = D::SERVICE.replace('-', "_");
        p.check(
            self.allowed_fails >= 1,
            &section,
            "allowed_fails must be at least 1",
        );
        p.check(
            self.down_probe_interval_ms >= 100,
            &section,
            "down_probe_interval_ms must be at least 100",
        );
        p.check(
            self.driver_timeout_ms >= 10,
            &section,
            "driver_timeout_ms must be at least 10",
        );
        p.check(
            self.device_messages_per_s >= 0.0 && self.device_messages_per_s.is_finite(),
            &section,
            "device_messages_per_s must be 0 (no limit) or more",
        );
        p.check(
            self.device_messages_burst >= 1,
            &section,
            "device_messages_burst must be at least 1",
        );
        for problem in self.standby.problems() {
            p.check(false, &format!("{section}.standby"), problem);
        }
        self.driver.validate(p);
    }
}

impl<D: DriverConfig> outpost_kit::ServiceConfig for Config<D> {
    fn port(&self) -> u16 {
        self.port
    }

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn listeners(&self) -> Vec<outpost_kit::service::Listener> {
        self.driver.listeners()
    }
}

/// What changes while a device service runs: EdgeX's `Device.Discovery` settings, kept as
/// `edgex/v4/<service>/Writable/Discovery/Enabled` and `.../Interval` (docs/decisions.md),
/// first taken from `discovery_enabled` and `discovery_interval_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Writable {
    pub discovery: Discovery,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Discovery {
    pub enabled: bool,
    /// How often discovery runs by itself, as a duration (`"30s"`); `"0s"` only when asked.
    pub interval: String,
}

impl Discovery {
    /// How often discovery runs by itself, if it does.
    pub fn every(&self) -> Option<std::time::Duration> {
        let i = self.interval.trim();
        if !self.enabled || matches!(i, "" | "0" | "0s") {
            return None;
        }
        outpost_contracts::metadata::parse_interval(i).ok()
    }
}

impl outpost_kit::writable::Settings for Writable {
    fn check(&self) -> Result<(), String> {
        match self.discovery.interval.trim() {
            "" | "0" | "0s" => Ok(()),
            i => outpost_contracts::metadata::parse_interval(i).map(|_| ()),
        }
    }
}

impl<D: DriverConfig> From<&Config<D>> for Writable {
    fn from(c: &Config<D>) -> Self {
        Self {
            discovery: Discovery {
                enabled: c.discovery_enabled,
                interval: format!("{}s", c.discovery_interval_s),
            },
        }
    }
}
