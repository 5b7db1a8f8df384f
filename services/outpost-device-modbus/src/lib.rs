//! device-modbus (port 59901): Modbus TCP and RTU devices: registers and coils read in batches, written by SET commands.

use async_trait::async_trait;
use outpost_device_sdk::{CommandValue, DeviceRef, Driver, DriverConfig, DriverError, ResourceRef};
use outpost_kit::Context;
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-modbus";

/// `[device_modbus.driver]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModbusConfig {}

impl DriverConfig for ModbusConfig {
    const SERVICE: &'static str = SERVICE;
    const PORT: u16 = 59901;
    const ENABLED: bool = false;
}

pub type Config = outpost_device_sdk::Config<ModbusConfig>;

struct Modbus;

#[async_trait]
impl Driver for Modbus {
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
    outpost_device_sdk::run(ctx, cfg, std::sync::Arc::new(Modbus)).await
}
