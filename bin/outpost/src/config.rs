//! The node's configuration: every service's section composed into one TOML document.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_kit::config::{
    BusConfig, CommonConfig, ConfigError, EnrollmentConfig, LogConfig, NodeConfig as NodeSection,
    Problems, RegistryConfig, StorageConfig, Validate, apply_env_overrides, apply_overrides,
    from_table, parse_toml,
};
use serde::{Deserialize, Serialize};

/// The documented default configuration, printed by `outpost config default`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// `[supervisor]`: how `outpost up` runs its children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// How long a service may take to stop gracefully before it is killed.
    pub stop_timeout_ms: u64,
    /// How long `outpost up` waits for every service to answer.
    pub ready_timeout_ms: u64,
    /// Longest delay between restarts of a crashing service.
    pub restart_backoff_max_ms: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            stop_timeout_ms: 20_000,
            ready_timeout_ms: 30_000,
            restart_backoff_max_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub bus: BusConfig,
    pub storage: StorageConfig,
    pub enrollment: EnrollmentConfig,
    pub supervisor: SupervisorConfig,
    pub broker: outpost_broker::Config,
    pub core_keeper: outpost_core_keeper::Config,
    pub core_metadata: outpost_core_metadata::Config,
    pub core_data: outpost_core_data::Config,
    pub core_command: outpost_core_command::Config,
    pub device_virtual: outpost_device_virtual::Config,
    pub device_modbus: outpost_device_modbus::Config,
    pub device_mqtt: outpost_device_mqtt::Config,
    pub device_rest: outpost_device_rest::Config,
    pub gateway: outpost_gateway::Config,
    pub rules: outpost_rules::Config,
    pub ota: outpost_ota::Config,
    pub export: outpost_export::Config,
    pub cloud: outpost_cloud::Config,
}

/// A service the node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Broker,
    CoreKeeper,
    CoreMetadata,
    CoreData,
    CoreCommand,
    DeviceVirtual,
    DeviceModbus,
    DeviceMqtt,
    DeviceRest,
    Gateway,
    Rules,
    Export,
    Ota,
    Cloud,
}

impl Service {
    pub const ALL: [Service; 14] = [
        Self::Broker,
        Self::CoreKeeper,
        Self::CoreMetadata,
        Self::CoreData,
        Self::CoreCommand,
        Self::DeviceVirtual,
        Self::DeviceModbus,
        Self::DeviceMqtt,
        Self::DeviceRest,
        Self::Gateway,
        Self::Rules,
        Self::Export,
        Self::Ota,
        Self::Cloud,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Broker => outpost_broker::SERVICE,
            Self::CoreKeeper => outpost_core_keeper::SERVICE,
            Self::CoreMetadata => outpost_core_metadata::SERVICE,
            Self::CoreData => outpost_core_data::SERVICE,
            Self::CoreCommand => outpost_core_command::SERVICE,
            Self::DeviceVirtual => outpost_device_virtual::SERVICE,
            Self::DeviceModbus => outpost_device_modbus::SERVICE,
            Self::DeviceMqtt => outpost_device_mqtt::SERVICE,
            Self::DeviceRest => outpost_device_rest::SERVICE,
            Self::Gateway => outpost_gateway::SERVICE,
            Self::Rules => outpost_rules::SERVICE,
            Self::Export => outpost_export::SERVICE,
            Self::Ota => outpost_ota::SERVICE,
            Self::Cloud => outpost_cloud::SERVICE,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl NodeConfig {
    /// Loads defaults, then `file`, then `OUTPOST_*` variables, then `--set` overrides;
    /// fills derived values and validates everything.
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_toml(&text, &path.display().to_string())?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut table, std::env::vars_os())?;
        apply_overrides(&mut table, sets)?;
        let origin = match file {
            Some(p) => format!("{} (with environment and --set overrides)", p.display()),
            None => "configuration (environment and --set overrides)".to_string(),
        };
        let mut cfg: NodeConfig = from_table(table, &origin)?;
        cfg.derive();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fills the values that default to this node's own services.
    pub fn derive(&mut self) {
        if self.registry.url.is_empty() {
            self.registry.url = format!(
                "http://{}:{}",
                host(&self.node.advertise_host),
                self.core_keeper.port
            );
        }
        if self.bus.url.is_empty() && self.broker.enabled {
            self.bus.url = format!("mqtt://{}", connect_addr(self.broker.listen));
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.common().validate(&mut p);
        self.broker.validate(&mut p);
        self.core_keeper.validate(&mut p);
        self.core_metadata.validate(&mut p);
        self.core_data.validate(&mut p);
        self.core_command.validate(&mut p);
        self.device_virtual.validate(&mut p);
        self.device_modbus.validate(&mut p);
        self.device_mqtt.validate(&mut p);
        self.device_rest.validate(&mut p);
        self.gateway.validate(&mut p);
        self.rules.validate(&mut p);
        self.export.validate(&mut p);
        self.ota.validate(&mut p);
        self.cloud.validate(&mut p);
        let s = &self.supervisor;
        p.check(
            s.stop_timeout_ms >= 100,
            "supervisor",
            "stop_timeout_ms must be at least 100",
        );
        p.check(
            s.ready_timeout_ms >= 100,
            "supervisor",
            "ready_timeout_ms must be at least 100",
        );
        p.check(
            s.restart_backoff_max_ms >= 100,
            "supervisor",
            "restart_backoff_max_ms must be at least 100",
        );
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for svc in Service::ALL {
            if !self.enabled(svc) {
                continue;
            }
            let port = self.port(svc);
            if port == 0 {
                p.push(svc.name(), "port must not be 0");
            } else if let Some(other) = ports.insert(port, svc.name()) {
                p.push(svc.name(), format!("port {port} is also used by {other}"));
            }
        }
        if self.broker.enabled {
            let listen = self.broker.listen;
            p.check(
                listen.port() != 0,
                "broker",
                "listen needs a port other than 0",
            );
            let overlaps = listen.ip() == self.node.bind
                || listen.ip().is_unspecified()
                || self.node.bind.is_unspecified();
            if let Some(other) = ports.get(&listen.port()).filter(|_| overlaps) {
                p.push(
                    "broker",
                    format!("listen port {} is also {other}'s HTTP port", listen.port()),
                );
            }
        }
        if self.gateway.enabled {
            let listen = self.gateway.listen;
            let overlaps = listen.ip() == self.node.bind
                || listen.ip().is_unspecified()
                || self.node.bind.is_unspecified();
            if let Some(other) = ports.get(&listen.port()).filter(|_| overlaps) {
                p.push(
                    "gateway",
                    format!("listen port {} is also {other}'s HTTP port", listen.port()),
                );
            }
        }
        p.check(
            !self.bus.url.is_empty(),
            "bus",
            "url is required when broker.enabled = false (the external broker to use)",
        );
        let bind = self.node.bind;
        let advertised_loopback = self.node.advertise_host == "localhost"
            || self
                .node
                .advertise_host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        p.check(
            bind.is_loopback() || bind.is_unspecified() || !advertised_loopback,
            "node",
            format!(
                "services bind {bind} but advertise {}: other services could not reach them; set advertise_host",
                self.node.advertise_host
            ),
        );
        p.into_result()
    }

    pub fn common(&self) -> CommonConfig {
        CommonConfig {
            node: self.node.clone(),
            log: self.log.clone(),
            registry: self.registry.clone(),
            bus: self.bus.clone(),
            storage: self.storage.clone(),
            enrollment: self.enrollment.clone(),
        }
    }

    pub fn port(&self, svc: Service) -> u16 {
        match svc {
            Service::Broker => self.broker.port,
            Service::CoreKeeper => self.core_keeper.port,
            Service::CoreMetadata => self.core_metadata.port,
            Service::CoreData => self.core_data.port,
            Service::CoreCommand => self.core_command.port,
            Service::DeviceVirtual => self.device_virtual.port,
            Service::DeviceModbus => self.device_modbus.port,
            Service::DeviceMqtt => self.device_mqtt.port,
            Service::DeviceRest => self.device_rest.port,
            Service::Gateway => self.gateway.port,
            Service::Rules => self.rules.port,
            Service::Export => self.export.port,
            Service::Ota => self.ota.port,
            Service::Cloud => self.cloud.port,
        }
    }

    /// Whether `outpost up` runs `svc`.
    pub fn enabled(&self, svc: Service) -> bool {
        match svc {
            Service::Broker => self.broker.enabled,
            Service::DeviceVirtual => self.device_virtual.enabled,
            Service::DeviceModbus => self.device_modbus.enabled,
            Service::DeviceMqtt => self.device_mqtt.enabled,
            Service::DeviceRest => self.device_rest.enabled,
            Service::Gateway => self.gateway.enabled,
            Service::Rules => self.rules.enabled,
            Service::Export => self.export.enabled,
            Service::Ota => self.ota.enabled,
            // The cloud node runs on its own (`outpost cloud`), never in an edge's `up`.
            Service::Cloud => false,
            Service::CoreKeeper
            | Service::CoreMetadata
            | Service::CoreData
            | Service::CoreCommand => true,
        }
    }

    /// `http://host:port` of a service of this node.
    pub fn url(&self, svc: Service) -> String {
        format!(
            "http://{}:{}",
            host(&self.node.advertise_host),
            self.port(svc)
        )
    }

    /// The services `outpost up` runs, in start order (stop order is the reverse).
    pub fn services(&self) -> Vec<Service> {
        [
            Service::CoreKeeper,
            Service::Broker,
            Service::CoreMetadata,
            Service::CoreData,
            Service::CoreCommand,
            Service::DeviceVirtual,
            Service::DeviceModbus,
            Service::DeviceMqtt,
            Service::DeviceRest,
            Service::Rules,
            Service::Export,
            Service::Ota,
            Service::Gateway,
        ]
        .into_iter()
        .filter(|s| self.enabled(*s))
        .collect()
    }

    /// Addresses used until the registry answers.
    pub fn fallback_addresses(&self) -> HashMap<String, String> {
        Service::ALL
            .into_iter()
            .map(|s| (s.name().to_string(), self.url(s)))
            .collect()
    }

    /// A service's effective configuration, for its `/api/v3/config`.
    pub fn service_json(&self, svc: Service) -> serde_json::Value {
        let section = match svc {
            Service::Broker => serde_json::to_value(&self.broker),
            Service::CoreKeeper => serde_json::to_value(&self.core_keeper),
            Service::CoreMetadata => serde_json::to_value(&self.core_metadata),
            Service::CoreData => serde_json::to_value(&self.core_data),
            Service::CoreCommand => serde_json::to_value(&self.core_command),
            Service::DeviceVirtual => serde_json::to_value(&self.device_virtual),
            Service::DeviceModbus => serde_json::to_value(&self.device_modbus),
            Service::DeviceMqtt => serde_json::to_value(&self.device_mqtt),
            Service::DeviceRest => serde_json::to_value(&self.device_rest),
            Service::Gateway => serde_json::to_value(&self.gateway),
            Service::Rules => serde_json::to_value(&self.rules),
            Service::Export => serde_json::to_value(&self.export),
            Service::Ota => serde_json::to_value(&self.ota),
            Service::Cloud => serde_json::to_value(&self.cloud),
        }
        .unwrap_or_default();
        serde_json::json!({
            "node": self.node, "log": self.log, "registry": self.registry, "bus": self.bus,
            "storage": self.storage, "service": section,
        })
    }
}

fn host(h: &str) -> String {
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// Where to connect to a listener (a wildcard listener is reached on loopback).
fn connect_addr(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        if listen.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if listen.is_ipv6() {
        format!("[{}]", listen.ip())
    } else {
        listen.ip().to_string()
    };
    format!("{ip}:{}", listen.port())
}

/// The data dir: the flag or `OUTPOST_DATA_DIR`, else the user's data directory.
pub fn default_data_dir() -> PathBuf {
    // The owner of /proc/self is the process's effective user.
    use std::os::unix::fs::MetadataExt as _;
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if is_root {
        return PathBuf::from("/var/lib/outpost");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d).join("outpost"),
        None => std::env::var_os("HOME").map_or_else(
            || PathBuf::from("outpost-data"),
            |h| PathBuf::from(h).join(".local/share/outpost"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_is_the_default() {
        let table = parse_toml(DEFAULT_TOML, "default.toml").unwrap();
        let parsed: NodeConfig = from_table(table, "default.toml").unwrap();
        assert_eq!(parsed, NodeConfig::default());
        let mut cfg = parsed;
        cfg.derive();
        cfg.validate().unwrap();
        assert_eq!(cfg.registry.url, "http://127.0.0.1:59890");
        assert_eq!(cfg.bus.url, "mqtt://127.0.0.1:1883");
    }

    #[test]
    fn port_clashes_and_bad_values_are_all_reported() {
        let mut cfg = NodeConfig::default();
        cfg.core_data.port = cfg.core_metadata.port;
        cfg.core_data.retention.min_cap = cfg.core_data.retention.max_cap + 1;
        cfg.log.format = outpost_kit::config::LogFormat::Json;
        cfg.supervisor.stop_timeout_ms = 1;
        cfg.derive();
        match cfg.validate() {
            Err(ConfigError::Invalid(v)) => assert_eq!(v.len(), 3, "{v:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wildcard_listener_is_reached_on_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:1883".parse().unwrap()),
            "127.0.0.1:1883"
        );
        assert_eq!(connect_addr("[::]:1883".parse().unwrap()), "[::1]:1883");
        assert_eq!(
            connect_addr("10.0.0.2:1883".parse().unwrap()),
            "10.0.0.2:1883"
        );
    }
}
