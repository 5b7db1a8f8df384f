//! device-mqtt (port 59982): MQTT devices: telemetry from devices with their own credentials, commands correlated by request id.

use async_trait::async_trait;
use outpost_device_sdk::{CommandValue, DeviceRef, Driver, DriverConfig, DriverError, ResourceRef};
use outpost_kit::Context;
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-mqtt";

/// `[device_mqtt.driver]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {}

impl DriverConfig for MqttConfig {
    const SERVICE: &'static str = SERVICE;
    const PORT: u16 = 59982;
    const ENABLED: bool = false;
}

pub type Config = outpost_device_sdk::Config<MqttConfig>;

struct Mqtt;

#[async_trait]
impl Driver for Mqtt {
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
    outpost_device_sdk::run(ctx, cfg, std::sync::Arc::new(Mqtt)).await
}
