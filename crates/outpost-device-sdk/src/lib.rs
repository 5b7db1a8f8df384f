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

pub mod api;
pub mod autoevent;
pub mod catalog;
pub mod command;
pub mod config;
pub mod devices;
pub mod discovery;
pub mod driver;
pub mod messaging;
pub mod payload;
pub mod sdk;
pub mod service;
pub mod throttle;
pub mod value;

pub use config::{Config, DriverConfig};
pub use driver::{DeviceChange, DeviceRef, Discovered, DriverError, ResourceRef};
pub use sdk::{Driver, PushError, Sdk};
pub use service::{Adapter, build};
pub use value::CommandValue;
