//! What drivers deal with: a device with its profile ([`DeviceRef`]), the resources a
//! command reads or writes ([`ResourceRef`]), changes to the devices, what discovery finds,
//! and why a read or write failed. The `Driver` trait itself is beside the
//! handle it is given, in the `sdk` module.

use std::sync::Arc;

use outpost_contracts::metadata::{Device, DeviceResource, Map};

/// A device together with its profile, as the SDK hands it to a driver.
#[derive(Debug, Clone)]
pub struct DeviceRef {
    pub device: Arc<Device>,
    pub profile: Arc<outpost_contracts::metadata::DeviceProfile>,
}

impl DeviceRef {
    pub fn name(&self) -> &str {
        &self.device.name
    }

    /// The properties of one protocol of the device (`modbus-tcp`, `mqtt`, ...).
    pub fn protocol(&self, name: &str) -> Option<&Map> {
        self.device.protocols.get(name)
    }
}

/// A resource a command reads or writes, with its attributes (the protocol's addressing).
#[derive(Debug, Clone)]
pub struct ResourceRef {
    pub resource: Arc<DeviceResource>,
}

impl ResourceRef {
    pub fn name(&self) -> &str {
        &self.resource.name
    }

    /// An attribute of the resource as text, whatever JSON type the profile used.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let v = self.resource.attributes.as_ref()?.get(key)?;
        Some(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// Why a driver could not read or write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// The device did not answer (connection refused, timeout): counts towards marking it
    /// DOWN.
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// The device answered with an error (a Modbus exception, an error reply).
    #[error("device error: {0}")]
    Device(String),
    /// The request cannot be carried out as asked (bad attributes, unsupported type).
    #[error("{0}")]
    Invalid(String),
    #[error("not supported by this device service")]
    Unsupported,
}

/// A device found by discovery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    /// Suggested name (made unique by the SDK if taken).
    pub name: String,
    pub description: String,
    pub protocols: outpost_contracts::metadata::Protocols,
    pub labels: Vec<String>,
    pub properties: Option<Map>,
}

/// A change to the devices the service owns, announced to the driver.
#[derive(Debug, Clone)]
pub enum DeviceChange {
    Added(DeviceRef),
    Updated(DeviceRef),
    Removed(Arc<Device>),
}
