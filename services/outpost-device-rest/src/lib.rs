//! device-rest (port 59986): HTTP devices: readings POSTed with a device token, the EdgeX device-rest endpoints.

use async_trait::async_trait;
use outpost_device_sdk::{CommandValue, DeviceRef, Driver, DriverConfig, DriverError, ResourceRef};
use outpost_kit::Context;
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-rest";

/// `[device_rest.driver]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {}

impl DriverConfig for RestConfig {
    const SERVICE: &'static str = SERVICE;
    const PORT: u16 = 59986;
    const ENABLED: bool = false;
}

pub type Config = outpost_device_sdk::Config<RestConfig>;

struct Rest;

#[async_trait]
impl Driver for Rest {
    async fn read(
        &self,
        _device: &DeviceRef,
        _resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        Err(DriverError::Unsupported)
    }

    async fn write(
        &self,
        _device: &DeviceRef,
        _values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        Err(DriverError::Unsupported)
    }
}

pub async fn run(ctx: Context, cfg: Config) -> anyhow::Result<()> {
    outpost_device_sdk::run(ctx, cfg, std::sync::Arc::new(Rest)).await
}
