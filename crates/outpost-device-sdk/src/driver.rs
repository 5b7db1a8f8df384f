//! What a protocol adapter implements: reading and writing resources of its devices, and
//! optionally discovery and push-style input (through [`crate::Sdk`]).

use std::sync::Arc;

use async_trait::async_trait;
use outpost_contracts::metadata::{Device, DeviceResource, Map};

use crate::value::CommandValue;

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

/// A protocol adapter.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Called once the SDK is connected, before devices are loaded; push-style drivers
    /// keep the handle to publish what devices send.
    async fn start(&self, sdk: crate::Sdk) {
        let _ = sdk;
    }

    /// Called once the device service is registered in metadata and before its devices are
    /// loaded: the place to create the profiles and devices the adapter ships with.
    async fn provision(&self, sdk: &crate::Sdk) {
        let _ = sdk;
    }

    /// Reads `resources` of `device`; one value per resource, in order.
    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError>;

    /// Writes `values` to `device` in one go where the protocol allows.
    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError>;

    /// Checks a device's protocol properties before metadata accepts it
    /// (`POST /api/v3/validate/device`).
    fn validate(&self, device: &Device) -> Result<(), String> {
        let _ = device;
        Ok(())
    }

    /// Looks for devices on the network.
    async fn discover(&self) -> Result<Vec<Discovered>, DriverError> {
        Err(DriverError::Unsupported)
    }

    /// A device was added, changed or removed.
    async fn device_changed(&self, change: DeviceChange) {
        let _ = change;
    }

    /// The service stops.
    async fn stop(&self) {}

    /// HTTP routes of the protocol itself (device-rest's `/api/v3/resource/...`), served
    /// beside the device-service API.
    fn routes(&self, sdk: &crate::Sdk) -> Option<axum::Router> {
        let _ = sdk;
        None
    }
}
