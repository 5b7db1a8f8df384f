//! Checking events against metadata.
//!
//! Devices and profiles are fetched from core-metadata on first use and cached; metadata's
//! system events evict changed entries, so the cache follows edits without polling. An
//! unknown device is remembered for a short while, so a flood of events for it does not
//! become a flood of metadata lookups. When core-metadata cannot be reached, events are
//! stored unchecked (and counted) rather than lost: losing data is worse than storing a
//! reading that a later metadata check would have refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use outpost_contracts::event::Event;
use outpost_contracts::metadata::{DeviceProfileResponse, DeviceResponse};
use outpost_contracts::value::{ValueType, check_bounds};
use outpost_kit::Registry;

use crate::store::IngestEvent;

/// How long an unknown device is remembered as unknown.
const MISSING_TTL: Duration = Duration::from_secs(2);

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: StatusCode,
    /// Metric label.
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(status: StatusCode, reason: &'static str, message: String) -> Self {
        Self {
            status,
            reason,
            message,
        }
    }
}

struct ResourceInfo {
    value_type: ValueType,
    minimum: Option<f64>,
    maximum: Option<f64>,
}

#[derive(Default)]
struct Cache {
    /// Device name to its profile name.
    devices: HashMap<String, String>,
    profiles: HashMap<String, Arc<HashMap<String, ResourceInfo>>>,
    missing: HashMap<String, Instant>,
}

enum Lookup<T> {
    Found(T),
    Missing,
    /// Metadata could not be asked.
    Unknown,
}

pub struct Validator {
    enabled: bool,
    registry: Registry,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    skipped_metric: String,
}

impl Validator {
    pub fn new(enabled: bool, registry: Registry, skipped_metric: String) -> Self {
        Self {
            enabled,
            registry,
            http: outpost_kit::http::client(Duration::from_secs(2)),
            cache: RwLock::default(),
            skipped_metric,
        }
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets a device (after metadata changed it).
    pub fn forget_device(&self, name: &str) {
        let mut c = self.cache_mut();
        c.devices.remove(name);
        c.missing.remove(name);
    }

    /// Forgets a profile (after metadata changed it).
    pub fn forget_profile(&self, name: &str) {
        self.cache_mut().profiles.remove(name);
    }

    /// Validates `event` and returns it ready to store.
    pub async fn prepare(&self, event: Event) -> Result<IngestEvent, Rejection> {
        let nums = event
            .validate()
            .map_err(|m| Rejection::new(StatusCode::BAD_REQUEST, "invalid", m))?;
        if self.enabled {
            self.check_metadata(&event, &nums).await?;
        }
        Ok(IngestEvent { event, nums })
    }

    async fn check_metadata(&self, event: &Event, nums: &[Option<f64>]) -> Result<(), Rejection> {
        let profile_name = match self.device_profile(&event.device_name).await {
            Lookup::Found(p) => p,
            Lookup::Missing => {
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device '{}' does not exist", event.device_name),
                ));
            }
            Lookup::Unknown => {
                metrics::counter!(self.skipped_metric.clone()).increment(1);
                return Ok(());
            }
        };
        if profile_name != event.profile_name {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "profile_mismatch",
                format!(
                    "device '{}' uses profile '{}', not '{}'",
                    event.device_name, profile_name, event.profile_name
                ),
            ));
        }
        let resources = match self.profile(&profile_name).await {
            Lookup::Found(r) => r,
            Lookup::Missing => {
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    "unknown_profile",
                    format!("device profile '{profile_name}' does not exist"),
                ));
            }
            Lookup::Unknown => {
                metrics::counter!(self.skipped_metric.clone()).increment(1);
                return Ok(());
            }
        };
        for (r, num) in event.readings.iter().zip(nums) {
            let Some(info) = resources.get(&r.resource_name) else {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_resource",
                    format!(
                        "profile '{profile_name}' has no resource '{}'",
                        r.resource_name
                    ),
                ));
            };
            if info.value_type != r.value_type {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "wrong_type",
                    format!(
                        "resource '{}' is {}, the reading says {}",
                        r.resource_name, info.value_type, r.value_type
                    ),
                ));
            }
            if let Some(v) = num {
                check_bounds(&r.resource_name, *v, info.minimum, info.maximum).map_err(|e| {
                    Rejection::new(StatusCode::BAD_REQUEST, "out_of_range", e.to_string())
                })?;
            }
        }
        Ok(())
    }

    fn metadata_url(&self, segments: &[&str]) -> Option<reqwest::Url> {
        let base = self.registry.resolve("core-metadata")?;
        let mut url = reqwest::Url::parse(&base).ok()?;
        url.path_segments_mut().ok()?.extend(segments);
        Some(url)
    }

    async fn device_profile(&self, device: &str) -> Lookup<String> {
        {
            let c = self.cache();
            if let Some(p) = c.devices.get(device) {
                return Lookup::Found(p.clone());
            }
            if c.missing
                .get(device)
                .is_some_and(|t| t.elapsed() < MISSING_TTL)
            {
                return Lookup::Missing;
            }
        }
        let Some(url) = self.metadata_url(&["api", "v3", "device", "name", device]) else {
            return Lookup::Unknown;
        };
        match outpost_kit::http::correlated(self.http.get(url))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                let mut c = self.cache_mut();
                if c.missing.len() > 10_000 {
                    c.missing.clear();
                }
                c.missing.insert(device.to_string(), Instant::now());
                Lookup::Missing
            }
            Ok(r) if r.status().is_success() => match r.json::<DeviceResponse>().await {
                Ok(d) => {
                    let profile = d.device.profile_name;
                    let mut c = self.cache_mut();
                    c.missing.remove(device);
                    c.devices.insert(device.to_string(), profile.clone());
                    Lookup::Found(profile)
                }
                Err(_) => Lookup::Unknown,
            },
            _ => Lookup::Unknown,
        }
    }

    async fn profile(&self, name: &str) -> Lookup<Arc<HashMap<String, ResourceInfo>>> {
        if let Some(p) = self.cache().profiles.get(name) {
            return Lookup::Found(Arc::clone(p));
        }
        let Some(url) = self.metadata_url(&["api", "v3", "deviceprofile", "name", name]) else {
            return Lookup::Unknown;
        };
        match outpost_kit::http::correlated(self.http.get(url))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::NOT_FOUND => Lookup::Missing,
            Ok(r) if r.status().is_success() => match r.json::<DeviceProfileResponse>().await {
                Ok(p) => {
                    let map: HashMap<_, _> = p
                        .profile
                        .device_resources
                        .into_iter()
                        .map(|r| {
                            (
                                r.name,
                                ResourceInfo {
                                    value_type: r.properties.value_type,
                                    minimum: r.properties.minimum,
                                    maximum: r.properties.maximum,
                                },
                            )
                        })
                        .collect();
                    let map = Arc::new(map);
                    self.cache_mut()
                        .profiles
                        .insert(name.to_string(), Arc::clone(&map));
                    Lookup::Found(map)
                }
                Err(_) => Lookup::Unknown,
            },
            _ => Lookup::Unknown,
        }
    }
}
