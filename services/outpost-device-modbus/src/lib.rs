//! device-modbus (port 59901): Modbus TCP and RTU devices, with EdgeX device-modbus's device
//! profiles and protocol properties.
//!
//! A [`Driver`](outpost_device_sdk::Driver) run by the device-service SDK, which does everything that is not Modbus
//! (metadata, commands, autoEvents, transforms such as `scale`, health).
//!
//! - [`point`]: where a resource is (`primaryTable`, `startingAddress`, `rawType`,
//!   `isByteSwap`, `isWordSwap`, `stringRegisterSize`); [`codec`]: its value to and from
//!   registers; [`endpoint`]: where a device is (`modbus-tcp`, `modbus-rtu`).
//! - [`plan`]: a read of several resources (a device command, an autoEvent) becomes as few
//!   Modbus requests as the register map allows; `[device_modbus.driver]` sets the gaps and
//!   sizes ([`config`]). Should a batched request span an address the device does not have
//!   (it answers with an exception), its resources are read one by one instead and the
//!   device's reads stop bridging gaps.
//! - [`client`]: one connection per endpoint, reused, reconnected with backoff.
//! - A Modbus exception is [`DriverError::Device`](outpost_device_sdk::DriverError::Device) (the device answered); a timeout, a refused
//!   or broken connection is [`DriverError::Unreachable`](outpost_device_sdk::DriverError::Unreachable) (counts towards DOWN), as is a
//!   gateway's "target device failed to respond".
//!
//! Metrics: `outpost_device_modbus_requests_total{kind}` (read, write),
//! `outpost_device_modbus_request_errors_total{reason}`, `outpost_device_modbus_values_read_total`,
//! `outpost_device_modbus_connections_opened_total`.

pub mod codec;
pub mod point;

// Without the `driver` feature the crate is only its register codec ([`point`], [`codec`]),
// which the fuzz targets build with none of the service's dependencies.
#[cfg(feature = "driver")]
pub mod client;
#[cfg(feature = "driver")]
pub mod config;
#[cfg(feature = "driver")]
mod driver;
#[cfg(feature = "driver")]
pub mod endpoint;
#[cfg(feature = "driver")]
pub mod plan;
#[cfg(feature = "driver")]
pub mod serial;

#[cfg(feature = "driver")]
pub use driver::{Config, DeviceModbus, Modbus, ModbusConfig, SERVICE};
