//! Discovery: the driver looks for devices, provision watchers decide which become devices.
//!
//! A discovered device is added when an unlocked provision watcher of this service matches
//! it: every `identifiers` entry is a regular expression that must match (anywhere, as
//! EdgeX matches) the protocol property of that name, and no `blockingIdentifiers` value may
//! equal it.
//! The device gets the watcher's profile, admin state and autoEvents; a device whose name
//! metadata already knows is left alone, so discovery can run as often as wanted.

use std::sync::atomic::{AtomicBool, Ordering};

use outpost_contracts::metadata::{AdminState, Device, OperatingState, ProvisionWatcher};

use crate::driver::Discovered;
use crate::sdk::Sdk;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Starts a discovery run in the background unless one is running (then the request joins
/// it, as EdgeX answers 202 either way).
pub fn start(sdk: &Sdk, id: String) {
    if RUNNING.swap(true, Ordering::AcqRel) {
        tracing::info!(request_id = %id, "discovery already running");
        return;
    }
    let sdk2 = sdk.clone();
    let rid = id.clone();
    sdk.context().tasks.spawn_child(async move {
        let sdk = sdk2;
        match run(&sdk).await {
            Ok(added) => tracing::info!(request_id = %rid, added, "discovery finished"),
            Err(e) => tracing::warn!(request_id = %rid, error = %outpost_kit::tasks::chain(&e), "discovery failed"),
        }
        RUNNING.store(false, Ordering::Release);
    });
}

/// Starts a discovery run every `Discovery/Interval` while `Discovery/Enabled`, until
/// `stop` (not while the service is locked); follows changes of both at once.
pub(crate) async fn periodic(sdk: Sdk, stop: outpost_kit::Shutdown) {
    let mut settings = sdk.inner.live.subscribe();
    loop {
        let every = settings.borrow_and_update().discovery.every();
        let changed = async {
            // Settings that can no longer change (no writer left) never wake this.
            if settings.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let due = async {
            match every {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.wait() => return,
            () = changed => continue,
            () = due => {}
        }
        if !sdk.catalog().service_locked {
            start(&sdk, uuid::Uuid::new_v4().to_string());
        }
    }
}

/// Why a discovery run stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the driver cannot discover")]
    Driver(#[from] crate::driver::DriverError),
    #[error("core-metadata cannot be asked")]
    Metadata(#[from] outpost_kit::client::CallError),
}

/// One discovery run; returns how many devices were added.
async fn run(sdk: &Sdk) -> Result<usize, DiscoveryError> {
    let found = sdk.inner.driver.discover().await?;
    if found.is_empty() {
        return Ok(0);
    }
    let watchers = sdk
        .metadata()
        .provision_watchers_of_service(sdk.name())
        .await?;
    let mut added = 0;
    for f in found {
        let Some(w) = watchers
            .iter()
            .find(|w| w.admin_state == AdminState::Unlocked && matches(w, &f))
        else {
            tracing::debug!(device = %f.name, "discovered device matches no provision watcher");
            continue;
        };
        if sdk.metadata().device(&f.name).await?.is_some() {
            continue;
        }
        let mut labels = f.labels.clone();
        labels.extend(w.labels.iter().cloned());
        let device = Device {
            name: f.name.clone(),
            description: f.description.clone(),
            admin_state: w.discovered_device.admin_state,
            operating_state: OperatingState::Up,
            labels,
            service_name: sdk.name().to_string(),
            profile_name: w.discovered_device.profile_name.clone(),
            auto_events: w.discovered_device.auto_events.clone(),
            protocols: f.protocols.clone(),
            properties: f
                .properties
                .clone()
                .or_else(|| w.discovered_device.properties.clone()),
            ..Device::default()
        };
        match sdk.metadata().add_device(device).await {
            Ok(()) => {
                tracing::info!(device = %f.name, watcher = %w.name, "discovered device added");
                added += 1;
            }
            Err(e) => {
                tracing::warn!(device = %f.name, error = %e, "cannot add a discovered device")
            }
        }
    }
    Ok(added)
}

/// Whether `w` accepts `f`.
pub fn matches(w: &ProvisionWatcher, f: &Discovered) -> bool {
    let property = |key: &str| -> Option<String> {
        f.protocols.values().find_map(|props| {
            props.get(key).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
    };
    for (key, pattern) in &w.identifiers {
        let Some(value) = property(key) else {
            return false;
        };
        let Ok(re) = regex::Regex::new(pattern) else {
            return false;
        };
        if !re.is_match(&value) {
            return false;
        }
    }
    for (key, blocked) in &w.blocking_identifiers {
        if let Some(value) = property(key)
            && blocked.contains(&value)
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn watchers_match_identifiers_and_respect_blocks() {
        let w = ProvisionWatcher {
            identifiers: BTreeMap::from([("Address".into(), "10\\.0\\.0\\.[0-9]+".into())]),
            blocking_identifiers: BTreeMap::from([("Port".into(), vec!["503".to_string()])]),
            ..ProvisionWatcher::default()
        };
        let found = |addr: &str, port: &str| Discovered {
            name: "d".into(),
            protocols: BTreeMap::from([(
                "modbus-tcp".to_string(),
                serde_json::json!({"Address": addr, "Port": port})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )]),
            ..Discovered::default()
        };
        assert!(matches(&w, &found("10.0.0.7", "1502")));
        assert!(!matches(&w, &found("10.0.0.7", "503")));
        assert!(!matches(&w, &found("10.0.1.7", "1502")));
        assert!(!matches(&w, &found("10.0.0.x", "1502")));
    }
}
