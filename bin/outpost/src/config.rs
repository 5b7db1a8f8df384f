//! The node's configuration: every service's section composed into one TOML document.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_kit::config::{
    CommonConfig, ConfigError, Problems, Validate, apply_env_overrides, apply_overrides,
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

pub use crate::services::{NodeConfig, SERVICES, Service};

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
                "{}://{}:{}",
                self.scheme(),
                host(&self.node.advertise_host),
                self.core_keeper.port
            );
        }
        // With mutual TLS between services, services reach the embedded broker over TLS
        // with their certificates.
        let at = |addr: std::net::SocketAddr| {
            if self.broker.host.is_empty() {
                connect_addr(addr)
            } else {
                format!("{}:{}", host(&self.broker.host), addr.port())
            }
        };
        let embedded = match self.broker.tls_listen {
            Some(tls) if self.security.internal_tls => format!("mqtts://{}", at(tls)),
            _ => format!("mqtt://{}", at(self.broker.listen)),
        };
        if self.bus.url.is_empty() && self.broker.enabled {
            self.bus.url.clone_from(&embedded);
        }
        self.bus.journal = self.broker.enabled && self.bus.url == embedded;
        self.bus.durable_consumers = self
            .own_durable_consumers()
            .into_iter()
            .map(|c| (c.client, c.filters))
            .collect();
        // The node's own, beside any configured (a configured one of the same client ID
        // stands).
        for own in self.own_durable_consumers() {
            if !self
                .broker
                .durable_consumers
                .iter()
                .any(|c| c.client == own.client)
            {
                self.broker.durable_consumers.push(own);
            }
        }
    }

    /// The node's own durable consumers, as they subscribe: what the broker journals for
    /// from its first start (`broker.durable_consumers`). device-mqtt's whether or not this
    /// configuration enables it (in containers the broker's is not device-mqtt's), unless
    /// its devices use a broker of their own; one that never connects is forgotten.
    fn own_durable_consumers(&self) -> Vec<outpost_broker::config::DurableConsumer> {
        use outpost_contracts::topics;
        let consumer = |client: String, filter: String| outpost_broker::config::DurableConsumer {
            client,
            filters: vec![filter],
        };
        let base = &self.bus.base_topic;
        let mut own = Vec::new();
        // core-data always runs (as a group of instances when they share PostgreSQL).
        let (client, filter) = outpost_core_data::bus_consumer(&self.core_data, "", base);
        own.push(consumer(client, filter));
        // On the node's bus only: a broker of the devices' own keeps no journal of ours.
        if self.device_mqtt.driver.broker_url.is_empty() {
            own.push(consumer(
                outpost_device_mqtt::TELEMETRY_CLIENT.to_string(),
                format!("{}/#", topics::device::TELEMETRY_PREFIX),
            ));
        }
        if self.support_notifications.enabled {
            own.push(consumer(
                outpost_support_notifications::alerts::SESSION.to_string(),
                format!("{}#", topics::alerts_prefix(base)),
            ));
        }
        own
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.common().validate(&mut p);
        for svc in SERVICES {
            svc.section(self).validate(&mut p);
        }
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
        // No two enabled services may listen on one port: HTTP ports among themselves, and
        // other listeners (MQTT, HTTPS) against those and each other where their addresses
        // overlap.
        let mut ports: HashMap<u16, &str> = HashMap::new();
        for svc in self.services() {
            let port = self.port(svc);
            if port == 0 {
                p.push(svc.name(), "port must not be 0");
            } else if let Some(other) = ports.insert(port, svc.name()) {
                p.push(svc.name(), format!("port {port} is also used by {other}"));
            }
        }
        let mut listeners: Vec<(std::net::SocketAddr, bool, &str)> = Vec::new();
        for svc in self.services() {
            for l in svc.section(self).listeners() {
                let section = svc.info.section;
                if l.addr.port() == 0 {
                    p.push(section, "listen needs a port other than 0");
                    continue;
                }
                let overlaps = |ip: std::net::IpAddr| {
                    ip == l.addr.ip() || ip.is_unspecified() || l.addr.ip().is_unspecified()
                };
                // HTTP ports are TCP: a UDP listener (CoAP) cannot clash with them.
                if let Some(other) = ports
                    .get(&l.addr.port())
                    .filter(|_| !l.is_udp() && overlaps(self.node.bind))
                {
                    p.push(
                        section,
                        format!("listen port {} is also {other}'s HTTP port", l.addr.port()),
                    );
                }
                if let Some((_, _, other)) = listeners.iter().find(|(a, udp, _)| {
                    a.port() == l.addr.port() && *udp == l.is_udp() && overlaps(a.ip())
                }) {
                    p.push(
                        section,
                        format!("listen port {} is also {other}'s", l.addr.port()),
                    );
                }
                listeners.push((l.addr, l.is_udp(), svc.name()));
            }
        }
        p.check(
            !self.bus.url.is_empty(),
            "bus",
            "url is required when broker.enabled = false (the external broker to use)",
        );
        p.check(
            !(self.device_mqtt.enabled
                && outpost_bus::nats::is_nats(&self.bus.url)
                && self.device_mqtt.driver.broker_url.is_empty()),
            "device_mqtt",
            "driver.broker_url is required when the bus is NATS JetStream (the MQTT broker \
             its devices connect to)",
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
            security: self.security.clone(),
        }
    }

    pub fn port(&self, svc: Service) -> u16 {
        svc.section(self).port()
    }

    /// Whether `outpost up` runs `svc`.
    pub fn enabled(&self, svc: Service) -> bool {
        svc.info.on_edge && svc.section(self).enabled()
    }

    /// `http://host:port` of a service of this node (`https` with mutual TLS between
    /// services).
    pub fn url(&self, svc: Service) -> String {
        format!(
            "{}://{}:{}",
            self.scheme(),
            host(&self.node.advertise_host),
            self.port(svc)
        )
    }

    /// How the node's services serve their APIs.
    pub fn scheme(&self) -> &'static str {
        if self.security.internal_tls {
            "https"
        } else {
            "http"
        }
    }

    /// The services `outpost up` runs, in start order (stop order is the reverse).
    pub fn services(&self) -> Vec<Service> {
        SERVICES.iter().filter(|s| self.enabled(s)).collect()
    }

    /// `http://host:port` of the service named `name` (one of the table's).
    pub fn url_of(&self, name: &str) -> Option<String> {
        crate::services::by_name(name).map(|s| self.url(s))
    }

    /// Addresses used until the registry answers.
    pub fn fallback_addresses(&self) -> HashMap<String, String> {
        SERVICES
            .iter()
            .map(|s| (s.name().to_string(), self.url(s)))
            .collect()
    }

    /// A service's effective configuration, for its `/api/v3/config`.
    pub fn service_json(&self, svc: Service) -> serde_json::Value {
        serde_json::json!({
            "node": self.node, "log": self.log, "registry": self.registry, "bus": self.bus,
            "storage": self.storage, "service": svc.section(self).to_json(),
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

/// Whether `--set KEY=VALUE` names a configuration key (`SECTION.KEY`, its section one of
/// the node's), as opposed to a device resource to write (`outpost command`).
pub fn is_setting(set: &str) -> bool {
    let key = set.split_once('=').map_or(set, |(k, _)| k);
    let Some((section, _)) = key.split_once('.') else {
        return false;
    };
    parse_toml(DEFAULT_TOML, "default.toml")
        .map(|t| matches!(t.get(section), Some(toml::Value::Table(_))))
        .unwrap_or(false)
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
    fn the_broker_journals_for_the_nodes_own_consumers_before_they_connect() {
        let clients = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let cfg = NodeConfig::load(None, &sets).unwrap();
            cfg.broker
                .durable_consumers
                .iter()
                .map(|c| (c.client.clone(), c.filters.clone()))
                .collect::<Vec<_>>()
        };
        let own = |c: &str, f: &str| (c.to_string(), vec![f.to_string()]);
        let core_data = own("outpost-core-data", "edgex/events/device/#");
        let alerts = own("support-notifications-alerts", "edgex/alerts/#");
        let telemetry = own("outpost-device-mqtt-telemetry", "incoming/data/#");
        let all = [core_data.clone(), telemetry.clone(), alerts.clone()];
        assert_eq!(clients(&[]), all);
        // Devices on a broker of their own: nothing of theirs passes this one's journal.
        assert_eq!(
            clients(&[
                "device_mqtt.driver.broker_url=mqtt://devices:1883",
                "support_notifications.enabled=false",
            ]),
            std::slice::from_ref(&core_data)
        );
        // Configured ones come first and stand; the node's own are added.
        let set = clients(&[
            r#"broker.durable_consumers=[{client = "c", filters = ["t/#"]}, {client = "outpost-core-data", filters = ["x/#"]}]"#,
        ]);
        assert_eq!(
            set,
            [
                own("c", "t/#"),
                own("outpost-core-data", "x/#"),
                telemetry,
                alerts
            ]
        );
    }

    #[test]
    fn a_set_is_configuration_when_it_names_a_section() {
        assert!(is_setting("core_data.port=59880"));
        assert!(is_setting("core_data.retention.max_age=1h"));
        assert!(!is_setting("Setpoint=21.5"));
        assert!(!is_setting("Setpoint.x=1"), "no section Setpoint");
        assert!(!is_setting("node=1"), "a section alone is not a key");
    }

    #[test]
    fn documented_default_is_the_default() {
        let table = parse_toml(DEFAULT_TOML, "default.toml").unwrap();
        let parsed: NodeConfig = from_table(table, "default.toml").unwrap();
        assert_eq!(parsed, NodeConfig::default());
        let mut cfg = parsed;
        cfg.derive();
        cfg.validate().unwrap();
        // Mutual TLS by default: the registry and the embedded bus over TLS.
        assert_eq!(cfg.registry.url, "https://127.0.0.1:59890");
        assert_eq!(cfg.bus.url, "mqtts://127.0.0.1:8883");
        assert!(cfg.bus.journal, "the embedded broker, with its journal");
        // EdgeX's plaintext mode, on request.
        let mut plain = NodeConfig::default();
        plain.security.internal_tls = false;
        plain.derive();
        plain.validate().unwrap();
        assert_eq!(plain.registry.url, "http://127.0.0.1:59890");
        assert_eq!(plain.bus.url, "mqtt://127.0.0.1:1883");
        assert!(plain.bus.journal);
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
    fn a_udp_listener_shares_no_ports_with_tcp_ones() {
        // device-coap's CoAP port (UDP) on the number of an HTTP port (TCP): no clash.
        let mut cfg = NodeConfig::default();
        cfg.device_coap.enabled = true;
        cfg.device_coap.driver.coap_port = cfg.core_data.port;
        cfg.derive();
        cfg.validate().unwrap();
        // Nor on the number of the broker's MQTT listener (TCP).
        let mut cfg = NodeConfig::default();
        cfg.device_coap.enabled = true;
        cfg.device_coap.driver.coap_port = 1883;
        cfg.broker.listen = "0.0.0.0:1883".parse().unwrap();
        cfg.derive();
        cfg.validate().unwrap();
        assert!(
            cfg.services().iter().any(|s| s.name() == "device-coap"),
            "device-coap runs"
        );
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
