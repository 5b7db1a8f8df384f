//! Checking events against metadata.
//!
//! Devices and profiles come from the process's metadata view
//! ([`outpost_bus::metadata`]): fetched on first use, kept current by metadata's system
//! events, an unknown device remembered as unknown for a short while. While core-metadata
//! cannot be asked, events are checked against the last view; with no view of their device
//! or profile at all, they are stored unchecked (and counted) rather than lost: losing data
//! is worse than storing a reading that a later metadata check would have refused.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use outpost_bus::metadata::{Lookup, MetadataView};
use outpost_contracts::event::Event;
use outpost_contracts::metadata::DeviceProfile;
use outpost_contracts::value::{ValueType, check_bounds};

use crate::store::IngestEvent;

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

/// A profile's resources by name, made once per profile the view hands out.
struct Resources {
    of: Arc<DeviceProfile>,
    by_name: Arc<HashMap<String, ResourceInfo>>,
}

/// What a lookup gave, for validation.
enum Known<T> {
    Found(T),
    Missing,
    /// Metadata cannot be asked and nothing is known.
    Unknown,
}

impl<T> From<Lookup<T>> for Known<T> {
    fn from(l: Lookup<T>) -> Self {
        match l {
            // The last view is better than none.
            Lookup::Found(v) | Lookup::Stale { value: v, .. } => Known::Found(v),
            Lookup::Missing => Known::Missing,
            Lookup::Unavailable(_) => Known::Unknown,
        }
    }
}

pub struct Validator {
    enabled: bool,
    /// Store events of devices core-metadata does not know, unchecked (EdgeX's way).
    accept_unknown: bool,
    view: MetadataView,
    resources: RwLock<HashMap<String, Resources>>,
    skipped_metric: String,
}

impl Validator {
    pub fn new(enabled: bool, view: MetadataView, skipped_metric: String) -> Self {
        Self {
            enabled,
            accept_unknown: false,
            view,
            resources: RwLock::default(),
            skipped_metric,
        }
    }

    /// Stores the events of devices core-metadata does not know, unchecked, as EdgeX does
    /// (`core_data.accept_unknown_devices`).
    pub fn accept_unknown_devices(mut self, yes: bool) -> Self {
        self.accept_unknown = yes;
        self
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
        let profile_name = match Known::from(self.view.device(&event.device_name).await) {
            Known::Found(d) => d.profile_name.clone(),
            Known::Missing if self.accept_unknown => {
                metrics::counter!(self.skipped_metric.clone()).increment(1);
                return Ok(());
            }
            Known::Missing => {
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("device '{}' does not exist", event.device_name),
                ));
            }
            Known::Unknown => {
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
        let resources = match Known::from(self.view.profile(&profile_name).await) {
            Known::Found(p) => self.resources_of(p),
            Known::Missing => {
                return Err(Rejection::new(
                    StatusCode::NOT_FOUND,
                    "unknown_profile",
                    format!("device profile '{profile_name}' does not exist"),
                ));
            }
            Known::Unknown => {
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

    /// The resources of `profile` by name, made again only when the view hands out
    /// another version of it.
    fn resources_of(&self, profile: Arc<DeviceProfile>) -> Arc<HashMap<String, ResourceInfo>> {
        if let Some(r) = self
            .resources
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&profile.name)
            .filter(|r| Arc::ptr_eq(&r.of, &profile))
        {
            return Arc::clone(&r.by_name);
        }
        let by_name: Arc<HashMap<_, _>> = Arc::new(
            profile
                .device_resources
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        ResourceInfo {
                            value_type: r.properties.value_type,
                            minimum: r.properties.minimum,
                            maximum: r.properties.maximum,
                        },
                    )
                })
                .collect(),
        );
        let mut all = self
            .resources
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() > 10_000 {
            all.clear();
        }
        all.insert(
            profile.name.clone(),
            Resources {
                of: profile,
                by_name: Arc::clone(&by_name),
            },
        );
        by_name
    }
}
