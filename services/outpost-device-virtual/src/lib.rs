//! device-virtual (port 59900): simulated devices of every EdgeX value type, for demos and
//! tests.
//!
//! A resource's value is generated on each read unless it was written (a write pins it, as
//! EdgeX's device-virtual does; `EnableRandomization_<resource>` = true releases it). The
//! generator is chosen per resource with the attribute `generator`:
//!
//! - `random` (default): uniform within the resource's `minimum`/`maximum`, or the type's
//!   range when they are absent;
//! - `sine`: `minimum + (maximum-minimum) * (1+sin(2πt/period))/2`, `period` seconds
//!   (attribute, default 60);
//! - `counter`: starts at `minimum` (or 0) and adds `step` (attribute, default 1) per read,
//!   wrapping past `maximum`.
//!
//! With `provision_examples` the service creates EdgeX's example profiles and devices
//! (`Random-Boolean-Device`, `Random-Integer-Device`, `Random-UnsignedInteger-Device`,
//! `Random-Float-Device`, `Random-Binary-Device`) when metadata does not have them.

pub mod examples;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use outpost_contracts::metadata::{DeviceResource, ReadWrite};
use outpost_contracts::value::ValueType;
use outpost_device_sdk::{
    CommandValue, DeviceChange, DeviceRef, Driver, DriverConfig, DriverError, ResourceRef, Sdk,
};
use serde::{Deserialize, Serialize};

/// The service's registry ID (EdgeX's name).
pub const SERVICE: &str = "device-virtual";

/// Prefix of the write-only resources that switch generation on and off.
pub const ENABLE_PREFIX: &str = "EnableRandomization_";

/// `[device_virtual.driver]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirtualConfig {
    /// Create EdgeX's example profiles and devices when missing.
    pub provision_examples: bool,
    /// Bytes of a generated Binary value.
    pub binary_bytes: usize,
    /// Elements of a generated array.
    pub array_len: usize,
    /// Devices discovery "finds": `virtual-1` ... `virtual-<n>`, each with the protocol
    /// `other: {Address: virtual-<i>}` for provision watchers to match.
    pub discoverable: usize,
}

impl Default for VirtualConfig {
    fn default() -> Self {
        Self {
            provision_examples: true,
            binary_bytes: 1024,
            array_len: 5,
            discoverable: 0,
        }
    }
}

impl DriverConfig for VirtualConfig {
    const SERVICE: &'static str = SERVICE;
    const SECTION: &'static str = "device_virtual";
    const PORT: u16 = 59900;
    const ENABLED: bool = false;

    fn driver(
        start: &outpost_kit::Start<Config>,
    ) -> Result<std::sync::Arc<dyn outpost_device_sdk::Driver>, outpost_kit::StartError> {
        Ok(std::sync::Arc::new(Virtual::new(start.cfg.driver.clone())))
    }

    fn validate(&self, p: &mut outpost_kit::config::Problems) {
        p.check(
            self.binary_bytes >= 1 && self.binary_bytes <= 16 * 1024 * 1024,
            "device_virtual.driver",
            "binary_bytes must be between 1 and 16 MiB",
        );
        p.check(
            self.array_len >= 1 && self.array_len <= 10_000,
            "device_virtual.driver",
            "array_len must be between 1 and 10000",
        );
        p.check(
            self.discoverable <= 10_000,
            "device_virtual.driver",
            "discoverable must be at most 10000",
        );
    }
}

pub type Config = outpost_device_sdk::Config<VirtualConfig>;

#[derive(Debug, Clone, Default)]
struct Slot {
    /// A written value, returned while generation is off.
    pinned: Option<CommandValue>,
    counter: Option<f64>,
}

/// The simulator.
pub struct Virtual {
    cfg: VirtualConfig,
    state: Mutex<HashMap<String, HashMap<String, Slot>>>,
    rng: Mutex<fastrand::Rng>,
}

impl Virtual {
    pub fn new(cfg: VirtualConfig) -> Self {
        Self {
            cfg,
            state: Mutex::default(),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Slot>>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, fastrand::Rng> {
        self.rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generate(&self, r: &ResourceRef, slot: &mut Slot) -> Result<CommandValue, DriverError> {
        let p = &r.resource.properties;
        let t = p.value_type;
        if t == ValueType::Binary {
            let mut bytes = vec![0u8; self.cfg.binary_bytes];
            self.rng().fill(&mut bytes);
            return Ok(CommandValue::Binary(bytes));
        }
        if matches!(t, ValueType::Object | ValueType::ObjectArray) {
            let v = serde_json::from_str(&p.default_value).unwrap_or(serde_json::Value::Null);
            return Ok(CommandValue::Object(v));
        }
        if let Some(elem) = t.element() {
            let items = (0..self.cfg.array_len)
                .map(|_| self.scalar(r, elem, slot))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(CommandValue::Array(items));
        }
        self.scalar(r, t, slot)
    }

    fn scalar(
        &self,
        r: &ResourceRef,
        t: ValueType,
        slot: &mut Slot,
    ) -> Result<CommandValue, DriverError> {
        let p = &r.resource.properties;
        if t == ValueType::Bool {
            return Ok(CommandValue::Bool(self.rng().bool()));
        }
        if t == ValueType::String {
            let n = self.rng().u32(..);
            return Ok(CommandValue::String(format!("virtual-{n:08x}")));
        }
        let (tlo, thi) = type_range(t);
        let lo = p.minimum.unwrap_or(tlo).max(tlo);
        let hi = p.maximum.unwrap_or(thi).min(thi);
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (tlo, thi) };
        let generator = r.attribute("generator").unwrap_or_else(|| "random".into());
        let x = match generator.as_str() {
            "sine" => {
                let period = r
                    .attribute("period")
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|v| *v > 0.0)
                    .unwrap_or(60.0);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let (lo, hi) = if p.minimum.is_none() && p.maximum.is_none() {
                    (-1.0, 1.0)
                } else {
                    (lo, hi)
                };
                lo + (hi - lo) * (1.0 + (std::f64::consts::TAU * now / period).sin()) / 2.0
            }
            "counter" => {
                let step = r
                    .attribute("step")
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(1.0);
                let start = p.minimum.unwrap_or(0.0).max(tlo);
                let next = match slot.counter {
                    None => start,
                    Some(c) if c + step > hi || c + step < lo => start,
                    Some(c) => c + step,
                };
                slot.counter = Some(next);
                next
            }
            "random" => {
                let u = self.rng().f64();
                if is_float(t) {
                    // The whole float range would be noise; without bounds, values span
                    // ±1e6.
                    let (lo, hi) = if p.minimum.is_none() && p.maximum.is_none() {
                        (-1.0e6, 1.0e6)
                    } else {
                        (lo, hi)
                    };
                    lo + (hi - lo) * u
                } else {
                    (lo + (hi - lo + 1.0) * u).floor().min(hi)
                }
            }
            other => {
                return Err(DriverError::Invalid(format!(
                    "resource '{}': unknown generator '{other}' (random, sine or counter)",
                    r.name()
                )));
            }
        };
        Ok(if is_float(t) {
            CommandValue::Float(x)
        } else if matches!(
            t,
            ValueType::Uint8 | ValueType::Uint16 | ValueType::Uint32 | ValueType::Uint64
        ) {
            CommandValue::Uint(x.round().max(0.0) as u64)
        } else {
            CommandValue::Int(x.round() as i64)
        })
    }
}

fn is_float(t: ValueType) -> bool {
    matches!(t, ValueType::Float32 | ValueType::Float64)
}

fn type_range(t: ValueType) -> (f64, f64) {
    match t {
        ValueType::Uint8 => (0.0, f64::from(u8::MAX)),
        ValueType::Uint16 => (0.0, f64::from(u16::MAX)),
        ValueType::Uint32 => (0.0, f64::from(u32::MAX)),
        // Stay within what an f64 holds exactly.
        ValueType::Uint64 => (0.0, 9.0e15),
        ValueType::Int8 => (f64::from(i8::MIN), f64::from(i8::MAX)),
        ValueType::Int16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        ValueType::Int32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
        ValueType::Int64 => (-9.0e15, 9.0e15),
        ValueType::Float32 => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        _ => (-f64::MAX, f64::MAX),
    }
}

fn readable(r: &DeviceResource) -> bool {
    r.properties.read_write.readable() && r.properties.read_write != ReadWrite::W
}

#[async_trait]
impl Driver for Virtual {
    async fn discover(&self) -> Result<Vec<outpost_device_sdk::Discovered>, DriverError> {
        Ok((1..=self.cfg.discoverable)
            .map(|i| {
                let name = format!("virtual-{i}");
                let mut props = outpost_contracts::metadata::Map::new();
                props.insert("Address".into(), name.clone().into());
                outpost_device_sdk::Discovered {
                    description: format!("simulated device {i}"),
                    protocols: [("other".to_string(), props)].into_iter().collect(),
                    labels: vec!["virtual".into()],
                    name,
                    properties: None,
                }
            })
            .collect())
    }

    async fn provision(&self, sdk: &Sdk) {
        if self.cfg.provision_examples {
            examples::provision(sdk).await;
        }
    }

    async fn read(
        &self,
        device: &DeviceRef,
        resources: &[ResourceRef],
    ) -> Result<Vec<CommandValue>, DriverError> {
        let mut state = self.state();
        let slots = state.entry(device.name().to_string()).or_default();
        resources
            .iter()
            .map(|r| {
                let slot = slots.entry(r.name().to_string()).or_default();
                match &slot.pinned {
                    Some(v) => Ok(v.clone()),
                    None => self.generate(r, slot),
                }
            })
            .collect()
    }

    async fn write(
        &self,
        device: &DeviceRef,
        values: &[(ResourceRef, CommandValue)],
    ) -> Result<(), DriverError> {
        let mut state = self.state();
        let slots = state.entry(device.name().to_string()).or_default();
        for (r, v) in values {
            if let Some(target) = r.name().strip_prefix(ENABLE_PREFIX) {
                if *v == CommandValue::Bool(true) {
                    slots.entry(target.to_string()).or_default().pinned = None;
                }
                continue;
            }
            if r.resource.properties.value_type == ValueType::Binary {
                return Err(DriverError::Invalid(
                    "Binary resources cannot be written".into(),
                ));
            }
            slots.entry(r.name().to_string()).or_default().pinned = Some(v.clone());
        }
        Ok(())
    }

    async fn device_changed(&self, change: DeviceChange) {
        match change {
            DeviceChange::Added(_) => {}
            DeviceChange::Updated(d) => {
                // Forget state of resources the profile no longer has.
                if let Some(slots) = self.state().get_mut(d.name()) {
                    slots.retain(|name, _| d.profile.resource(name).is_some_and(readable));
                }
            }
            DeviceChange::Removed(d) => {
                self.state().remove(&d.name);
            }
        }
    }
}

/// The service, as the node runs it.
pub type DeviceVirtual = outpost_device_sdk::Adapter<VirtualConfig>;

#[cfg(test)]
mod tests;
