//! The devices of the service, as metadata has them: loading them all at start, putting a
//! device into the catalog (or taking it out) and telling the driver and the autoEvents,
//! following a profile's changes, and registering the service itself in metadata.

use std::time::Duration;

use outpost_contracts::metadata::{AdminState, Device, DeviceService, UpdateDeviceService};
use outpost_kit::backoff::Backoff;
use outpost_kit::client::CallError;

use crate::catalog::Put;
use crate::driver::DeviceChange;
use crate::sdk::Sdk;

impl Sdk {
    /// Puts a device (fetched from metadata) into the catalog with its profile and tells the
    /// driver and the autoEvents.
    pub(crate) async fn load_device(&self, device: Device) -> Result<(), CallError> {
        if device.service_name != self.inner.name {
            self.drop_device(&device.name).await;
            return Ok(());
        }
        let cached = self.catalog().profile(&device.profile_name);
        let profile = match cached {
            Some(p) => p,
            None => match self
                .inner
                .view
                .profile(&device.profile_name)
                .await
                .current()?
            {
                Some(p) => self.catalog_mut().put_profile((*p).clone()),
                None => {
                    tracing::warn!(device = %device.name, profile = %device.profile_name, "the device's profile does not exist; device ignored");
                    return Ok(());
                }
            },
        };
        let (r, put) = self.catalog_mut().put_device(device, profile);
        match put {
            // Said once the driver was told and its autoEvents run (a driver that cannot
            // serve it, a device-mqtt without its broker say, warns on its own).
            Put::Added => {
                self.inner
                    .driver
                    .device_changed(DeviceChange::Added(r.clone()))
                    .await;
                crate::autoevent::restart(self, &r);
                tracing::info!(device = %r.device.name, "device added");
            }
            Put::Changed => {
                self.inner
                    .driver
                    .device_changed(DeviceChange::Updated(r.clone()))
                    .await;
                crate::autoevent::restart(self, &r);
                tracing::info!(device = %r.device.name, "device updated");
            }
            Put::Same => {}
        }
        Ok(())
    }

    pub(crate) async fn drop_device(&self, name: &str) {
        let removed = self.catalog_mut().remove_device(name);
        if let Some(d) = removed {
            tracing::info!(device = name, "device removed");
            self.inner.autoevents.stop(name);
            self.health().remove(name);
            self.inner.throttle.forget(name);
            self.inner
                .driver
                .device_changed(DeviceChange::Removed(d.device))
                .await;
        }
    }

    /// Re-reads a profile after metadata changed it; devices using it follow.
    pub(crate) async fn reload_profile(&self, name: &str) -> Result<(), CallError> {
        if self.catalog().profile(name).is_none() {
            return Ok(());
        }
        let Some(p) = self.inner.view.profile(name).await.current()? else {
            return Ok(());
        };
        let changed = self.catalog_mut().refresh_profile((*p).clone());
        for d in changed {
            self.inner
                .driver
                .device_changed(DeviceChange::Updated(d.clone()))
                .await;
            crate::autoevent::restart(self, &d);
        }
        Ok(())
    }

    /// Loads every device of this service from metadata.
    pub(crate) async fn load_all(&self) -> Result<(), CallError> {
        let devices = self
            .inner
            .view
            .client()
            .devices_of_service(&self.inner.name)
            .await?;
        let names: std::collections::HashSet<String> =
            devices.iter().map(|d| d.name.clone()).collect();
        for d in devices {
            self.load_device(d).await?;
        }
        let gone: Vec<String> = self
            .devices()
            .into_iter()
            .map(|d| d.device.name.to_string())
            .filter(|n| !names.contains(n))
            .collect();
        for n in gone {
            self.drop_device(&n).await;
        }
        self.inner
            .loaded
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(devices = names.len(), "devices loaded from metadata");
        Ok(())
    }
}

/// Registers the device service in metadata (or updates its address) and loads its
/// devices, retrying until metadata answers.
pub(crate) async fn register_and_load(sdk: &Sdk, base_address: &str, labels: Vec<String>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let shutdown = sdk.inner.ctx.shutdown.clone();
    loop {
        match register(sdk, base_address, &labels).await {
            Ok(()) => match provision_then_load(sdk).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot load devices yet; retrying"),
            },
            Err(e) if backoff.attempts() >= 3 => {
                tracing::warn!(error = %e, "cannot register with core-metadata yet; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn provision_then_load(sdk: &Sdk) -> Result<(), CallError> {
    if !sdk
        .inner
        .provisioned
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        sdk.inner.driver.provision(sdk).await;
    }
    sdk.load_all().await
}

async fn register(sdk: &Sdk, base_address: &str, labels: &[String]) -> Result<(), CallError> {
    let md = sdk.inner.view.client();
    let name = &sdk.inner.name;
    match md.device_service(name).await? {
        None => {
            md.add_device_service(DeviceService {
                name: name.clone(),
                description: format!("Outpost {name}"),
                labels: labels.to_vec(),
                base_address: base_address.to_string(),
                admin_state: AdminState::Unlocked,
                ..DeviceService::default()
            })
            .await?;
        }
        Some(existing) => {
            sdk.catalog_mut().service_locked = existing.admin_state == AdminState::Locked;
            if existing.base_address != base_address {
                md.update_device_service(UpdateDeviceService {
                    name: Some(name.clone()),
                    base_address: Some(base_address.to_string()),
                    ..UpdateDeviceService::default()
                })
                .await?;
            }
        }
    }
    Ok(())
}
