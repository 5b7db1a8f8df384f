//! The device-service SDK: everything a protocol adapter shares, so an adapter is only its
//! protocol code (a [`Driver`]).
//!
//! - [`build`] is what a device service's `build` returns: it registers the device service
//!   in core-metadata, loads the devices and profiles assigned to it, follows metadata's
//!   system events, serves the EdgeX device-service API and answers command requests from
//!   the bus, all as tasks of the service.
//! - [`value`] turns what a driver reads into typed EdgeX readings per the profile (value
//!   type, `mask`/`shift`/`base`/`scale`/`offset`, units, `minimum`/`maximum`), and SET
//!   values back into what the driver writes.
//! - [`command`] executes GET/SET commands; [`autoevent`] runs periodic reads with
//!   `onChange`; [`discovery`] finds devices and matches them against provision watchers.
//! - Device health: a device that stops answering goes DOWN in metadata after
//!   `allowed_fails` failures and comes back UP on its first answer.

pub mod payload;
pub mod value;

// Without the `service` feature the crate is only the two modules above, which the fuzz
// targets build with none of the service's dependencies.
#[cfg(feature = "service")]
pub mod api;
#[cfg(feature = "service")]
pub mod autoevent;
#[cfg(feature = "service")]
pub mod catalog;
#[cfg(feature = "service")]
pub mod command;
#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "service")]
pub mod devices;
#[cfg(feature = "service")]
pub mod discovery;
#[cfg(feature = "service")]
pub mod driver;
#[cfg(feature = "service")]
pub mod messaging;
#[cfg(feature = "service")]
pub mod sdk;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "service")]
pub mod throttle;

#[cfg(feature = "service")]
pub use config::{Config, DriverConfig};
#[cfg(feature = "service")]
pub use driver::{DeviceChange, DeviceRef, Discovered, DriverError, ResourceRef};
#[cfg(feature = "service")]
pub use sdk::{Driver, PushError, Sdk, SecretError};
#[cfg(feature = "service")]
pub use service::{Adapter, build};
pub use value::CommandValue;
