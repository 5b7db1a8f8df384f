//! The real core-metadata for the tests of the services that ask it: served on a socket as
//! they reach it in a node, and given device services, profiles, devices and secrets
//! through its own API.

use outpost_contracts::metadata::DeviceProfile;
use outpost_core_metadata::CoreMetadata;
use serde_json::{Value, json};

use crate::{Drive, Served, Service, TestContext, context, within};

/// The example Thermostat profile: Temperature (Float64, R), Humidity (Uint8, R), Setpoint
/// (Float64, RW, 5 to 35) and the read-only device command Climate.
pub const THERMOSTAT: &str = include_str!("../../../examples/thermostat.yaml");

/// core-metadata built as the node builds it, on the broker at `bus` (none: a bus
/// nowhere), served on a free port.
pub async fn serve(bus: Option<&str>) -> (Service, Served) {
    serve_at(bus, 0).await
}

/// core-metadata as [`serve`] starts it, on `port` of loopback (0: a free one), for
/// services that must know its address before it runs.
pub async fn serve_at(bus: Option<&str>, port: u16) -> (Service, Served) {
    let test = context("core-metadata", &[]);
    let test = match bus {
        Some(url) => test.with_bus(url),
        None => test.off_bus(),
    };
    serve_in(test, port).await
}

/// core-metadata in the context `test`, served on `port` of loopback (0: a free one).
pub async fn serve_in(test: TestContext, port: u16) -> (Service, Served) {
    let md = within(
        "core-metadata builds",
        Service::build_in::<CoreMetadata>(test, outpost_core_metadata::Config::default()),
    )
    .await;
    let served = within(
        "core-metadata serves",
        md.serve_at(([127, 0, 0, 1], port).into()),
    )
    .await;
    (md, served)
}

/// Adds `item` under `key` with a POST to `path`, which must be accepted (207 with 201).
pub async fn add(md: &Service, path: &str, key: &str, item: Value) {
    let (s, b) = md
        .call("POST", path, Some(json!([{"apiVersion": "v3", key: item}])))
        .await;
    assert_eq!(
        (s.as_u16(), b[0]["statusCode"].as_u64()),
        (207, Some(201)),
        "POST {path}: {b}"
    );
}

/// Adds the unlocked device service `name` at `base_address`.
pub async fn add_device_service(md: &Service, name: &str, base_address: &str) {
    let service = json!({"name": name, "baseAddress": base_address, "adminState": "UNLOCKED"});
    add(md, "/api/v3/deviceservice", "service", service).await;
}

/// Adds the profile in `yaml`, named `name` when given.
pub async fn add_profile_yaml(md: &Service, yaml: &str, name: Option<&str>) {
    let mut profile = DeviceProfile::from_yaml(yaml).expect("a profile");
    if let Some(name) = name {
        profile.name = name.to_string();
    }
    let profile = serde_json::to_value(profile).expect("json");
    add(md, "/api/v3/deviceprofile", "profile", profile).await;
}

/// A device as core-metadata takes it: by default a Thermostat, unlocked and up, without
/// labels, with protocols `{"other": {}}`.
pub struct Device {
    name: String,
    service: String,
    profile: String,
    admin: &'static str,
    labels: Vec<String>,
    protocols: Value,
}

/// Device `name` of the device service `service`.
pub fn device(name: &str, service: &str) -> Device {
    Device {
        name: name.to_string(),
        service: service.to_string(),
        profile: "Thermostat".to_string(),
        admin: "UNLOCKED",
        labels: Vec::new(),
        protocols: json!({"other": {}}),
    }
}

impl Device {
    pub fn profile(mut self, profile: &str) -> Self {
        self.profile = profile.to_string();
        self
    }

    /// `UNLOCKED` or `LOCKED`.
    pub fn admin(mut self, admin: &'static str) -> Self {
        self.admin = admin;
        self
    }

    pub fn labels(mut self, labels: &[&str]) -> Self {
        self.labels = labels.iter().map(|l| (*l).to_string()).collect();
        self
    }

    pub fn protocols(mut self, protocols: Value) -> Self {
        self.protocols = protocols;
        self
    }

    /// The device as JSON (without the request around it).
    pub fn json(&self) -> Value {
        json!({"name": self.name, "serviceName": self.service, "profileName": self.profile,
            "adminState": self.admin, "operatingState": "UP", "labels": self.labels,
            "protocols": self.protocols})
    }
}

/// Adds `device`.
pub async fn add_device(md: &Service, device: &Device) {
    add(md, "/api/v3/device", "device", device.json()).await;
}

/// Sets the secret of device `name`, which must be accepted.
pub async fn set_secret(md: &Service, name: &str, secret: &str) {
    let (s, b) = md
        .call(
            "PUT",
            &format!("/api/v3/device/name/{name}/secret"),
            Some(json!({"apiVersion": "v3", "secret": secret})),
        )
        .await;
    assert!(s.is_success(), "the secret of {name}: {b}");
}
