//! The one table of the services this binary runs.
//!
//! Each line names a service's configuration section and the type that implements
//! [`outpost_kit::Service`]. Everything else that handles services (the node
//! configuration, `outpost run`, `outpost up`'s start order, port checks, the start
//! banner, fallback addresses, `/api/v3/config`) reads this table: adding a service is a
//! new crate and one line here (plus its dependency in `Cargo.toml`).
//!
//! The order is the start order of `outpost up` (and the reverse its stop order): the
//! registry first, then the bus, then what uses them, the gateway last.

use outpost_kit::sandbox::Files;
use outpost_kit::service::{AnySection, Info, RunError};
use outpost_kit::{Context, Service as _};

/// A running service, until it stops.
pub type Running = std::pin::Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>>;

/// A service of the table: its facts, its configuration section, and how to run it.
pub struct Entry {
    pub info: Info,
    /// The name of its configuration section (`broker` for mqtt-broker).
    pub section_name: &'static str,
    section: fn(&NodeConfig) -> &dyn AnySection,
    run: fn(Context, &NodeConfig) -> Running,
    storage: fn(&NodeConfig) -> Option<outpost_kit::Storage>,
    sandbox: fn(&NodeConfig, &mut Files) -> Result<(), outpost_storage::StorageError>,
}

/// A service of the table.
pub type Service = &'static Entry;

impl Entry {
    pub fn name(&self) -> &'static str {
        self.info.name
    }

    /// Its section of `cfg`.
    pub fn section<'a>(&self, cfg: &'a NodeConfig) -> &'a dyn AnySection {
        (self.section)(cfg)
    }

    /// The database it keeps, if any.
    pub fn storage(&self, cfg: &NodeConfig) -> Option<outpost_kit::Storage> {
        (self.storage)(cfg)
    }

    /// Declares what it opens on disk besides the common files (see
    /// [`outpost_kit::Service::sandbox`]).
    pub fn sandbox(
        &self,
        cfg: &NodeConfig,
        files: &mut Files,
    ) -> Result<(), outpost_storage::StorageError> {
        (self.sandbox)(cfg, files)
    }

    /// Runs it until its context's shutdown fires.
    pub fn run(&self, ctx: Context, cfg: &NodeConfig) -> Running {
        (self.run)(ctx, cfg)
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.info.name)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.info.name == other.info.name
    }
}

/// The service named `name`.
pub fn by_name(name: &str) -> Option<Service> {
    SERVICES.iter().find(|s| s.info.name == name)
}

/// Declares the node configuration (the common sections and one section per service) and
/// the table of services, from one list.
macro_rules! services {
    ($($section:ident: $service:ty),* $(,)?) => {
        /// The node's configuration: the sections every service reads and one per service.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct NodeConfig {
            pub node: outpost_kit::config::NodeConfig,
            pub log: outpost_kit::config::LogConfig,
            pub registry: outpost_kit::config::RegistryConfig,
            pub bus: outpost_kit::config::BusConfig,
            pub storage: outpost_kit::config::StorageConfig,
            pub enrollment: outpost_kit::config::EnrollmentConfig,
            pub security: outpost_kit::config::SecurityConfig,
            pub supervisor: crate::config::SupervisorConfig,
            $(pub $section: <$service as outpost_kit::Service>::Config,)*
        }

        /// Every service, in start order.
        pub static SERVICES: &[Entry] = &[$(
            Entry {
                info: <$service>::INFO,
                section_name: stringify!($section),
                section: |cfg| &cfg.$section,
                run: |ctx, cfg| {
                    Box::pin(outpost_kit::service::run::<$service>(ctx, cfg.$section.clone()))
                },
                storage: |cfg| <$service as outpost_kit::Service>::storage(&cfg.$section),
                sandbox: |cfg, files| {
                    <$service as outpost_kit::Service>::sandbox(&cfg.$section, files)
                },
            },
        )*];

        #[cfg(test)]
        const SECTIONS: &[&str] = &[$(stringify!($section)),*];
    };
}

services! {
    core_keeper: outpost_core_keeper::CoreKeeper,
    broker: outpost_broker::Broker,
    core_metadata: outpost_core_metadata::CoreMetadata,
    core_data: outpost_core_data::CoreData,
    core_command: outpost_core_command::CoreCommand,
    device_virtual: outpost_device_virtual::DeviceVirtual,
    device_modbus: outpost_device_modbus::DeviceModbus,
    device_mqtt: outpost_device_mqtt::DeviceMqtt,
    device_rest: outpost_device_rest::DeviceRest,
    device_opcua: outpost_device_opcua::DeviceOpcUa,
    device_coap: outpost_device_coap::DeviceCoap,
    rules: outpost_rules::Rules,
    export: outpost_export::Export,
    ota: outpost_ota::Ota,
    support_notifications: outpost_support_notifications::SupportNotifications,
    support_scheduler: outpost_support_scheduler::SupportScheduler,
    gateway: outpost_gateway::Gateway,
    cloud: outpost_cloud::Cloud,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_reads_the_section_it_declares_and_names_are_unique() {
        assert_eq!(SERVICES.len(), SECTIONS.len());
        for (svc, section) in SERVICES.iter().zip(SECTIONS) {
            assert_eq!(svc.info.section, *section, "{}", svc.name());
        }
        let mut names: Vec<_> = SERVICES.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVICES.len());
    }

    #[test]
    fn the_registry_starts_first_then_the_bus() {
        assert!(!SERVICES[0].info.registers || !SERVICES[0].info.follows_registry);
        assert_eq!(SERVICES[0].name(), outpost_core_keeper::SERVICE);
        assert!(SERVICES[1].info.is_bus);
    }
}
