//! Metadata DTOs: device profiles, devices, device services, provision watchers, units of
//! measure (EdgeX `dtos` as served by core-metadata v3).
//!
//! One struct serves both create and read for each object (the server fills `id`, `created`,
//! `modified`); `Update*` structs have every field optional, as EdgeX PATCH semantics need.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::common::{BaseResponse, BaseWithTotalCountResponse};
use crate::names;
use crate::value::ValueType;

pub type Map = serde_json::Map<String, serde_json::Value>;

fn is_empty(s: &str) -> bool {
    s.is_empty()
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Profiles written for EdgeX 2 carry numbers as strings (`minimum: "0"`); EdgeX 3 uses
/// numbers. Both are accepted; an empty string means "not set".
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Ok(Some(n)),
        Some(NumOrStr::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(NumOrStr::Str(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("'{s}' is not a number"))),
    }
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = lenient_f64(d)?;
    match v {
        None => Ok(None),
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(f as i64)),
        Some(f) => Err(serde::de::Error::custom(format!("{f} is not an integer"))),
    }
}

/// `R`, `W` or `RW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReadWrite {
    #[default]
    R,
    W,
    RW,
    #[serde(rename = "WR")]
    WR,
}

impl ReadWrite {
    pub fn readable(self) -> bool {
        matches!(self, Self::R | Self::RW | Self::WR)
    }
    pub fn writable(self) -> bool {
        matches!(self, Self::W | Self::RW | Self::WR)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AdminState {
    Locked,
    #[default]
    Unlocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OperatingState {
    Up,
    Down,
    #[default]
    Unknown,
}

/// How a device resource's value is typed, bounded and transformed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceProperties {
    pub value_type: ValueType,
    pub read_write: ReadWrite,
    #[serde(skip_serializing_if = "is_empty")]
    pub units: String,
    #[serde(
        deserialize_with = "lenient_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum: Option<f64>,
    #[serde(
        deserialize_with = "lenient_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub maximum: Option<f64>,
    #[serde(skip_serializing_if = "is_empty")]
    pub default_value: String,
    #[serde(
        deserialize_with = "lenient_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub mask: Option<i64>,
    #[serde(
        deserialize_with = "lenient_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub shift: Option<i64>,
    #[serde(
        deserialize_with = "lenient_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<f64>,
    #[serde(
        deserialize_with = "lenient_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub offset: Option<f64>,
    #[serde(
        deserialize_with = "lenient_f64",
        skip_serializing_if = "Option::is_none"
    )]
    pub base: Option<f64>,
    #[serde(skip_serializing_if = "is_empty")]
    pub assertion: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<Map>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceResource {
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    pub name: String,
    /// Always written, `false` included, as EdgeX writes it.
    pub is_hidden: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map>,
    pub properties: ResourceProperties,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceOperation {
    pub device_resource: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub default_value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceCommand {
    pub name: String,
    pub is_hidden: bool,
    pub read_write: ReadWrite,
    pub resource_operations: Vec<ResourceOperation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceProfile {
    #[serde(skip_serializing_if = "is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    #[serde(skip_serializing_if = "is_empty")]
    pub manufacturer: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub model: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub device_resources: Vec<DeviceResource>,
    pub device_commands: Vec<DeviceCommand>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_device_count: Option<u64>,
}

impl DeviceProfile {
    pub fn resource(&self, name: &str) -> Option<&DeviceResource> {
        self.device_resources.iter().find(|r| r.name == name)
    }

    pub fn command(&self, name: &str) -> Option<&DeviceCommand> {
        self.device_commands.iter().find(|c| c.name == name)
    }

    /// What EdgeX accepts in a profile but cannot be used as written: a minimum or maximum
    /// on a resource that is not numeric (EdgeX's own sample profiles put them on Bool
    /// resources), a defaultValue its valueType cannot read (EdgeX's Modbus sample). Such a
    /// profile is stored; these are reported (logged), and the bounds or default are not
    /// applied.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.device_resources {
            let p = &r.properties;
            if (p.minimum.is_some() || p.maximum.is_some()) && !p.value_type.is_numeric() {
                out.push(format!(
                    "deviceResource '{}': minimum/maximum do not apply to valueType {}",
                    r.name, p.value_type
                ));
            }
            if !p.default_value.is_empty()
                && !matches!(p.value_type, ValueType::Binary | ValueType::Object)
                && let Err(e) = p.value_type.parse(&p.default_value)
            {
                out.push(format!("deviceResource '{}' defaultValue: {e}", r.name));
            }
        }
        out
    }

    /// Structural checks EdgeX applies to a profile; `units` is the set of valid units when
    /// unit-of-measure validation is on. All problems are reported together.
    pub fn validate(&self, units: Option<&dyn Fn(&str) -> bool>) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = names::check("name", &self.name) {
            errs.push(e);
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.device_resources {
            if let Err(e) = names::check("deviceResource name", &r.name) {
                errs.push(e);
            }
            if !seen.insert(r.name.as_str()) {
                errs.push(format!("deviceResource '{}' is defined twice", r.name));
            }
            let p = &r.properties;
            if let (Some(lo), Some(hi)) = (p.minimum, p.maximum)
                && lo > hi
            {
                errs.push(format!(
                    "deviceResource '{}': minimum {lo} is greater than maximum {hi}",
                    r.name
                ));
            }
            if let Some(ok) = units
                && !p.units.is_empty()
                && !ok(&p.units)
            {
                errs.push(format!(
                    "deviceResource '{}': units '{}' is not a known unit of measure",
                    r.name, p.units
                ));
            }
        }
        for c in &self.device_commands {
            if let Err(e) = names::check("deviceCommand name", &c.name) {
                errs.push(e);
            }
            if !seen.insert(c.name.as_str()) {
                errs.push(format!(
                    "deviceCommand '{}' reuses the name of another resource or command",
                    c.name
                ));
            }
            if c.resource_operations.is_empty() {
                errs.push(format!(
                    "deviceCommand '{}' has no resourceOperations",
                    c.name
                ));
            }
            for op in &c.resource_operations {
                match self.resource(&op.device_resource) {
                    None => errs.push(format!(
                        "deviceCommand '{}' refers to unknown deviceResource '{}'",
                        c.name, op.device_resource
                    )),
                    Some(r) => {
                        if c.read_write.readable() && !r.properties.read_write.readable()
                            || c.read_write.writable() && !r.properties.read_write.writable()
                        {
                            errs.push(format!(
                                "deviceCommand '{}' readWrite {:?} exceeds deviceResource '{}' readWrite {:?}",
                                c.name, c.read_write, r.name, r.properties.read_write
                            ));
                        }
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    /// Parses a profile from an EdgeX YAML (or JSON, which is YAML) document.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_norway::from_str(text).map_err(|e| format!("invalid device profile YAML: {e}"))
    }

    /// The basic info view of the profile.
    pub fn basic_info(&self) -> DeviceProfileBasicInfo {
        DeviceProfileBasicInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            manufacturer: self.manufacturer.clone(),
            model: self.model.clone(),
            labels: self.labels.clone(),
            linked_device_count: self.linked_device_count,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceProfileBasicInfo {
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub manufacturer: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub model: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_device_count: Option<u64>,
}

/// Partial update of a profile's basic info (`PATCH /deviceprofile/basicinfo`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDeviceProfileBasicInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub labels: Option<Vec<String>>,
}

/// Retention policy of an auto event (EdgeX 4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Retention {
    #[serde(skip_serializing_if = "is_zero")]
    pub max_cap: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub min_cap: i64,
    #[serde(skip_serializing_if = "is_empty")]
    pub duration: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AutoEvent {
    pub interval: String,
    #[serde(skip_serializing_if = "is_false")]
    pub on_change: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_change_threshold: Option<f64>,
    pub source_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// Protocol properties: protocol name to its properties (`{"modbus-tcp": {"Address": ...}}`).
pub type Protocols = BTreeMap<String, Map>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Device {
    #[serde(skip_serializing_if = "is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    pub name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub parent: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    pub admin_state: AdminState,
    pub operating_state: OperatingState,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<serde_json::Value>,
    pub service_name: String,
    pub profile_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_events: Vec<AutoEvent>,
    pub protocols: Protocols,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map>,
}

impl Device {
    /// Checks of the device on its own (references are checked by the service).
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        for (field, v) in [("name", &self.name), ("serviceName", &self.service_name)] {
            if let Err(e) = names::check(field, v) {
                errs.push(e);
            }
        }
        if !self.profile_name.is_empty()
            && let Err(e) = names::check("profileName", &self.profile_name)
        {
            errs.push(e);
        }
        // `protocols: {}` is accepted, as EdgeX accepts it (a device its service reaches
        // by other means, or not yet).
        if !self.parent.is_empty() && self.parent == self.name {
            errs.push("a device cannot be its own parent".to_string());
        }
        for ae in &self.auto_events {
            if let Err(e) = parse_interval(&ae.interval) {
                errs.push(format!("autoEvent '{}': {e}", ae.source_name));
            }
            if ae.source_name.is_empty() {
                errs.push("autoEvent sourceName must not be empty".to_string());
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

/// Parses an EdgeX duration string (`"10s"`, `"500ms"`, `"1m30s"`, `"1h"`).
/// The longest interval: Go's `time.Duration` (i64 nanoseconds).
pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_nanos(i64::MAX as u64);

pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("interval must not be empty".into());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("interval '{s}' has a number without a unit"))?;
        if digits == 0 {
            return Err(format!("interval '{s}' is not a duration"));
        }
        let num: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("interval '{s}' is not a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ns" => num / 1e9,
            "us" | "µs" => num / 1e6,
            "ms" => num / 1e3,
            "s" => num,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            _ => return Err(format!("interval '{s}' has an unknown unit '{unit}'")),
        };
        // Go's time.ParseDuration (what EdgeX uses) refuses anything beyond i64
        // nanoseconds (about 292 years); so does this, instead of overflowing.
        total = std::time::Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_INTERVAL)
            .ok_or_else(|| format!("interval '{s}' is out of range"))?;
    }
    if total.is_zero() {
        return Err(format!("interval '{s}' must be positive"));
    }
    Ok(total)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDevice {
    pub id: Option<String>,
    pub name: Option<String>,
    pub parent: Option<String>,
    pub description: Option<String>,
    pub admin_state: Option<AdminState>,
    pub operating_state: Option<OperatingState>,
    pub labels: Option<Vec<String>>,
    pub location: Option<serde_json::Value>,
    pub service_name: Option<String>,
    pub profile_name: Option<String>,
    pub auto_events: Option<Vec<AutoEvent>>,
    pub protocols: Option<Protocols>,
    pub tags: Option<Map>,
    pub properties: Option<Map>,
}

impl UpdateDevice {
    /// Applies the set fields onto `d`.
    pub fn apply(self, d: &mut Device) {
        if let Some(v) = self.name {
            d.name = v;
        }
        if let Some(v) = self.parent {
            d.parent = v;
        }
        if let Some(v) = self.description {
            d.description = v;
        }
        if let Some(v) = self.admin_state {
            d.admin_state = v;
        }
        if let Some(v) = self.operating_state {
            d.operating_state = v;
        }
        if let Some(v) = self.labels {
            d.labels = v;
        }
        if let Some(v) = self.location {
            d.location = Some(v);
        }
        if let Some(v) = self.service_name {
            d.service_name = v;
        }
        if let Some(v) = self.profile_name {
            d.profile_name = v;
        }
        if let Some(v) = self.auto_events {
            d.auto_events = v;
        }
        if let Some(v) = self.protocols {
            d.protocols = v;
        }
        if let Some(v) = self.tags {
            d.tags = Some(v);
        }
        if let Some(v) = self.properties {
            d.properties = Some(v);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceService {
    #[serde(skip_serializing_if = "is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    pub name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub base_address: String,
    pub admin_state: AdminState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map>,
}

impl DeviceService {
    pub fn validate(&self) -> Result<(), String> {
        names::check("name", &self.name)?;
        check_base_address(&self.base_address)
    }
}

fn check_base_address(addr: &str) -> Result<(), String> {
    let ok = ["http://", "https://"]
        .iter()
        .any(|p| addr.starts_with(p) && addr.len() > p.len());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "baseAddress '{addr}' must be an http:// or https:// URL"
        ))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDeviceService {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub labels: Option<Vec<String>>,
    pub base_address: Option<String>,
    pub admin_state: Option<AdminState>,
    pub properties: Option<Map>,
}

impl UpdateDeviceService {
    pub fn apply(self, s: &mut DeviceService) {
        if let Some(v) = self.name {
            s.name = v;
        }
        if let Some(v) = self.description {
            s.description = v;
        }
        if let Some(v) = self.labels {
            s.labels = v;
        }
        if let Some(v) = self.base_address {
            s.base_address = v;
        }
        if let Some(v) = self.admin_state {
            s.admin_state = v;
        }
        if let Some(v) = self.properties {
            s.properties = Some(v);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiscoveredDevice {
    #[serde(skip_serializing_if = "is_empty")]
    pub profile_name: String,
    pub admin_state: AdminState,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_events: Vec<AutoEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProvisionWatcher {
    #[serde(skip_serializing_if = "is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub modified: i64,
    pub name: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub service_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    pub identifiers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub blocking_identifiers: BTreeMap<String, Vec<String>>,
    pub admin_state: AdminState,
    pub discovered_device: DiscoveredDevice,
}

impl ProvisionWatcher {
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = names::check("name", &self.name) {
            errs.push(e);
        }
        if self.identifiers.is_empty() {
            errs.push("identifiers must not be empty".to_string());
        }
        for (k, pattern) in &self.identifiers {
            if let Err(e) = names::check_pattern(pattern) {
                errs.push(format!("identifier '{k}': {e}"));
            }
        }
        for ae in &self.discovered_device.auto_events {
            if let Err(e) = parse_interval(&ae.interval) {
                errs.push(format!("autoEvent '{}': {e}", ae.source_name));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDiscoveredDevice {
    pub profile_name: Option<String>,
    pub admin_state: Option<AdminState>,
    pub auto_events: Option<Vec<AutoEvent>>,
    pub properties: Option<Map>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateProvisionWatcher {
    pub id: Option<String>,
    pub name: Option<String>,
    pub service_name: Option<String>,
    pub labels: Option<Vec<String>>,
    pub identifiers: Option<BTreeMap<String, String>>,
    pub blocking_identifiers: Option<BTreeMap<String, Vec<String>>>,
    pub admin_state: Option<AdminState>,
    pub discovered_device: Option<UpdateDiscoveredDevice>,
}

impl UpdateProvisionWatcher {
    pub fn apply(self, w: &mut ProvisionWatcher) {
        if let Some(v) = self.name {
            w.name = v;
        }
        if let Some(v) = self.service_name {
            w.service_name = v;
        }
        if let Some(v) = self.labels {
            w.labels = v;
        }
        if let Some(v) = self.identifiers {
            w.identifiers = v;
        }
        if let Some(v) = self.blocking_identifiers {
            w.blocking_identifiers = v;
        }
        if let Some(v) = self.admin_state {
            w.admin_state = v;
        }
        if let Some(dd) = self.discovered_device {
            if let Some(v) = dd.profile_name {
                w.discovered_device.profile_name = v;
            }
            if let Some(v) = dd.admin_state {
                w.discovered_device.admin_state = v;
            }
            if let Some(v) = dd.auto_events {
                w.discovered_device.auto_events = v;
            }
            if let Some(v) = dd.properties {
                w.discovered_device.properties = Some(v);
            }
        }
    }
}

/// One category of units of measure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitCategory {
    #[serde(skip_serializing_if = "is_empty")]
    pub source: String,
    #[serde(alias = "value")]
    pub values: Vec<String>,
}

/// The units of measure core-metadata validates `units` against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitsOfMeasure {
    #[serde(skip_serializing_if = "is_empty")]
    pub source: String,
    pub units: BTreeMap<String, UnitCategory>,
}

impl UnitsOfMeasure {
    pub fn contains(&self, unit: &str) -> bool {
        self.units
            .values()
            .any(|c| c.values.iter().any(|u| u == unit))
    }
}

// ---- request and response wrappers ----

macro_rules! request {
    ($name:ident { $field:ident : $ty:ty $(, $extra:ident : $ety:ty)* }) => {
        $crate::edgex_request! {
            #[derive(PartialEq)]
            pub struct $name {
                $(pub $extra: $ety,)*
                pub $field: $ty,
            }
        }
    };
}

request!(AddDeviceRequest { device: Device });
request!(UpdateDeviceRequest {
    device: UpdateDevice
});
request!(AddDeviceProfileRequest {
    profile: DeviceProfile
});
request!(UpdateDeviceProfileRequest {
    profile: DeviceProfile
});
request!(DeviceProfileBasicInfoRequest {
    basicinfo: UpdateDeviceProfileBasicInfo
});
request!(AddDeviceServiceRequest {
    service: DeviceService
});
request!(UpdateDeviceServiceRequest {
    service: UpdateDeviceService
});
request!(AddProvisionWatcherRequest {
    provisionwatcher: ProvisionWatcher
});
request!(UpdateProvisionWatcherRequest {
    provisionwatcher: UpdateProvisionWatcher
});
request!(DeviceResourceRequest {
    resource: DeviceResource,
    profile_name: String
});
request!(DeviceCommandRequest {
    device_command: DeviceCommand,
    profile_name: String
});

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDeviceResource {
    pub name: String,
    pub description: Option<String>,
    pub is_hidden: Option<bool>,
}
request!(UpdateDeviceResourceRequest {
    resource: UpdateDeviceResource,
    profile_name: String
});

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateDeviceCommand {
    pub name: String,
    pub is_hidden: Option<bool>,
}
request!(UpdateDeviceCommandRequest {
    device_command: UpdateDeviceCommand,
    profile_name: String
});

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateTags {
    pub name: String,
    pub tags: Map,
}

crate::edgex_request! {
    #[derive(PartialEq)]
    pub struct DeviceProfileTagsRequest {
        pub device_resources: Vec<UpdateTags>,
        pub device_commands: Vec<UpdateTags>,
    }
}

macro_rules! single_response {
    ($name:ident { $field:ident : $ty:ty }) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(flatten)]
            pub base: BaseResponse,
            pub $field: $ty,
        }
    };
}

macro_rules! multi_response {
    ($name:ident { $field:ident : $ty:ty }) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(flatten)]
            pub page: BaseWithTotalCountResponse,
            pub $field: Vec<$ty>,
        }
    };
}

single_response!(DeviceResponse { device: Device });
single_response!(DeviceProfileResponse {
    profile: DeviceProfile
});
single_response!(DeviceResourceResponse {
    resource: DeviceResource
});
single_response!(DeviceServiceResponse {
    service: DeviceService
});
single_response!(ProvisionWatcherResponse {
    provision_watcher: ProvisionWatcher
});
single_response!(UnitsOfMeasureResponse {
    uom: UnitsOfMeasure
});
multi_response!(MultiDevicesResponse { devices: Device });
multi_response!(MultiDeviceProfilesResponse {
    profiles: DeviceProfile
});
multi_response!(MultiDeviceProfileBasicInfosResponse {
    profiles: DeviceProfileBasicInfo
});
multi_response!(MultiDeviceServicesResponse {
    services: DeviceService
});
multi_response!(MultiProvisionWatchersResponse {
    provision_watchers: ProvisionWatcher
});

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE_YAML: &str = r#"
name: "Random-Integer-Device"
manufacturer: "IOTech"
model: "Device-Virtual-01"
labels:
  - "device-virtual-example"
description: "Example of Device-Virtual"
deviceResources:
  -
    name: "EnableRandomization_Int8"
    isHidden: true
    description: "used to decide whether to re-generate a random value"
    properties:
      valueType: "Bool"
      readWrite: "W"
      defaultValue: "true"
  -
    name: "Int8"
    isHidden: false
    description: "Generate random int8 value"
    properties:
      valueType: "Int8"
      readWrite: "RW"
      minimum: "-100"
      maximum: 100
      defaultValue: "0"
      units: "C"
deviceCommands:
  -
    name: "WriteInt8Value"
    readWrite: "W"
    isHidden: false
    resourceOperations:
      - { deviceResource: "Int8" }
      - { deviceResource: "EnableRandomization_Int8", defaultValue: "false" }
"#;

    #[test]
    fn edgex_yaml_profile_parses_and_validates() {
        let p = DeviceProfile::from_yaml(PROFILE_YAML).unwrap();
        assert_eq!(p.device_resources.len(), 2);
        let int8 = p.resource("Int8").unwrap();
        assert_eq!(int8.properties.minimum, Some(-100.0));
        assert_eq!(int8.properties.maximum, Some(100.0));
        assert_eq!(int8.properties.value_type, ValueType::Int8);
        p.validate(None).unwrap();
        let known = |u: &str| u == "F";
        assert!(p.validate(Some(&known)).is_err());
    }

    #[test]
    fn what_edgex_accepts_but_cannot_apply_is_a_warning_not_a_refusal() {
        let mut p = DeviceProfile::from_yaml(PROFILE_YAML).unwrap();
        p.device_resources[1].properties.value_type = ValueType::Bool;
        p.device_resources[1].properties.minimum = Some(0.0);
        p.device_resources[1].properties.maximum = Some(1.0);
        p.device_resources[0].properties.default_value = "not a number".into();
        p.validate(None).unwrap();
        let w = p.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.contains("do not apply to valueType Bool")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("defaultValue")), "{w:?}");
    }

    #[test]
    fn profile_validation_reports_every_problem() {
        let mut p = DeviceProfile::from_yaml(PROFILE_YAML).unwrap();
        p.device_resources[1].properties.minimum = Some(200.0);
        p.device_commands[0].resource_operations[0].device_resource = "Nope".into();
        let err = p.validate(None).unwrap_err();
        assert!(err.contains("minimum"), "{err}");
        assert!(err.contains("Nope"), "{err}");
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("10s").unwrap().as_secs(), 10);
        assert_eq!(parse_interval("1m30s").unwrap().as_secs(), 90);
        assert_eq!(parse_interval("250ms").unwrap().as_millis(), 250);
        assert!(parse_interval("10").is_err());
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5 parsecs").is_err());
        // Out of range is an error, never a panic (these crashed core-metadata before).
        for huge in [
            "99999999999999999999h",
            "1e400s",
            "2562048h",
            "2562047h2562047h",
            "18446744073709551615s18446744073709551615s",
        ] {
            assert!(parse_interval(huge).is_err(), "{huge}");
        }
        assert!(parse_interval("2562047h").is_ok());
    }

    #[test]
    fn device_json_round_trip() {
        let j = serde_json::json!({
            "name": "d1", "serviceName": "device-virtual", "profileName": "p",
            "adminState": "UNLOCKED", "operatingState": "UP",
            "protocols": {"other": {"Address": "simulated"}},
            "autoEvents": [{"interval": "10s", "onChange": true, "sourceName": "Int8"}]
        });
        let d: Device = serde_json::from_value(j).unwrap();
        d.validate().unwrap();
        assert_eq!(d.admin_state, AdminState::Unlocked);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["autoEvents"][0]["onChange"], true);
        assert!(back.get("id").is_none());
    }
}

// ---- core-command ----

/// A parameter of a core command: a reading a GET returns, or a value a SET takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CoreCommandParameter {
    pub resource_name: String,
    pub value_type: ValueType,
}

/// A command of a device as core-command lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CoreCommand {
    pub name: String,
    #[serde(skip_serializing_if = "is_false")]
    pub get: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub set: bool,
    pub path: String,
    pub url: String,
    pub parameters: Vec<CoreCommandParameter>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceCoreCommand {
    pub device_name: String,
    pub profile_name: String,
    pub core_commands: Vec<CoreCommand>,
}

single_response!(DeviceCoreCommandResponse {
    device_core_command: DeviceCoreCommand
});
multi_response!(MultiDeviceCoreCommandsResponse {
    device_core_commands: DeviceCoreCommand
});

impl DeviceProfile {
    /// The commands of a device of this profile, as core-command lists them: every device
    /// command that is not hidden, then every visible resource without a command of its
    /// name.
    pub fn core_commands(&self, device: &str, url: &str) -> Vec<CoreCommand> {
        let path = |c: &str| format!("/api/v3/device/name/{device}/{c}");
        let mut out = Vec::new();
        for c in self.device_commands.iter().filter(|c| !c.is_hidden) {
            out.push(CoreCommand {
                name: c.name.clone(),
                get: c.read_write.readable(),
                set: c.read_write.writable(),
                path: path(&c.name),
                url: url.to_string(),
                parameters: c
                    .resource_operations
                    .iter()
                    .map(|op| CoreCommandParameter {
                        resource_name: op.device_resource.clone(),
                        value_type: self
                            .resource(&op.device_resource)
                            .map(|r| r.properties.value_type)
                            .unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        for r in self.device_resources.iter().filter(|r| !r.is_hidden) {
            if self.command(&r.name).is_some() {
                continue;
            }
            out.push(CoreCommand {
                name: r.name.clone(),
                get: r.properties.read_write.readable(),
                set: r.properties.read_write.writable(),
                path: path(&r.name),
                url: url.to_string(),
                parameters: vec![CoreCommandParameter {
                    resource_name: r.name.clone(),
                    value_type: r.properties.value_type,
                }],
            });
        }
        out
    }
}

// ---- device credentials (an Outpost extension of core-metadata) ----

crate::edgex_request! {
    /// `PUT /api/v3/device/name/{name}/secret`: sets a device's secret, or has one generated
    /// when `secret` is absent.
    #[derive(PartialEq)]
    pub struct DeviceSecretRequest {
        pub secret: Option<String>,
    }
}

/// The answer to [`DeviceSecretRequest`]: the generated secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSecretResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

crate::edgex_request! {
    /// `POST /api/v3/device/auth`: checks a device's credential (the broker, device-rest and
    /// ota ask): its secret, or the client certificate it presented to the gateway (DER,
    /// base64); 200 with the device, 401, or 403 while a zero-touch device awaits approval.
    #[derive(PartialEq)]
    pub struct DeviceAuthRequest {
        pub name: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        pub secret: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub certificate: Option<String>,
    }
}

crate::edgex_request! {
    /// `POST /api/v3/device/name/{name}/certificate`: a PKCS#10 signing request (PEM) for a
    /// client certificate from the node CA; `replace` revokes the device's other certificates.
    #[derive(PartialEq)]
    pub struct DeviceCertificateRequest {
        pub csr: String,
        pub replace: bool,
    }
}

/// The issued certificate (PEM, followed by the node CA's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCertificateResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub certificate: String,
    pub fingerprint: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}
