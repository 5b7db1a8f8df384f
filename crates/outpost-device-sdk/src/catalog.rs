//! The devices and profiles a device service owns, as last loaded from core-metadata.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_contracts::metadata::{AdminState, Device, DeviceProfile, OperatingState};

use crate::driver::DeviceRef;

#[derive(Default)]
pub struct Catalog {
    devices: HashMap<String, DeviceRef>,
    profiles: HashMap<String, Arc<DeviceProfile>>,
    /// The device service's own adminState.
    pub service_locked: bool,
}

/// What changed when a device was put into the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Added,
    /// Something a driver or an autoEvent depends on changed.
    Changed,
    /// Only bookkeeping changed (operatingState, modified time): nothing to restart.
    Same,
}

impl Catalog {
    pub fn device(&self, name: &str) -> Option<DeviceRef> {
        self.devices.get(name).cloned()
    }

    pub fn devices(&self) -> Vec<DeviceRef> {
        let mut v: Vec<_> = self.devices.values().cloned().collect();
        v.sort_by(|a, b| a.device.name.cmp(&b.device.name));
        v
    }

    pub fn profile(&self, name: &str) -> Option<Arc<DeviceProfile>> {
        self.profiles.get(name).cloned()
    }

    /// The name under which a device with `id` is held.
    pub fn name_of_id(&self, id: &str) -> Option<String> {
        self.devices
            .values()
            .find(|d| d.device.id == id)
            .map(|d| d.device.name.clone())
    }

    pub fn put_profile(&mut self, profile: DeviceProfile) -> Arc<DeviceProfile> {
        let p = Arc::new(profile);
        self.profiles.insert(p.name.clone(), Arc::clone(&p));
        p
    }

    /// Devices using `profile`, re-pointed at its new version.
    pub fn refresh_profile(&mut self, profile: DeviceProfile) -> Vec<DeviceRef> {
        let p = self.put_profile(profile);
        let mut changed = Vec::new();
        for d in self.devices.values_mut() {
            if d.device.profile_name == p.name {
                d.profile = Arc::clone(&p);
                changed.push(d.clone());
            }
        }
        changed
    }

    pub fn put_device(&mut self, device: Device, profile: Arc<DeviceProfile>) -> (DeviceRef, Put) {
        let put = match self.devices.get(&device.name) {
            None => Put::Added,
            Some(old) if same_config(&old.device, &device) && old.profile == profile => Put::Same,
            Some(_) => Put::Changed,
        };
        let r = DeviceRef {
            device: Arc::new(device),
            profile,
        };
        self.devices.insert(r.device.name.clone(), r.clone());
        (r, put)
    }

    pub fn remove_device(&mut self, name: &str) -> Option<DeviceRef> {
        let d = self.devices.remove(name)?;
        let still_used = self
            .devices
            .values()
            .any(|o| o.device.profile_name == d.device.profile_name);
        if !still_used {
            self.profiles.remove(&d.device.profile_name);
        }
        Some(d)
    }

    /// Sets a device's operating state locally; true if it changed.
    pub fn set_operating(&mut self, name: &str, state: OperatingState) -> bool {
        let Some(d) = self.devices.get_mut(name) else {
            return false;
        };
        if d.device.operating_state == state {
            return false;
        }
        let mut dev = (*d.device).clone();
        dev.operating_state = state;
        d.device = Arc::new(dev);
        true
    }

    pub fn is_locked(&self, d: &DeviceRef) -> bool {
        self.service_locked || d.device.admin_state == AdminState::Locked
    }
}

/// Whether two versions of a device differ only in bookkeeping.
fn same_config(a: &Device, b: &Device) -> bool {
    a.profile_name == b.profile_name
        && a.protocols == b.protocols
        && a.auto_events == b.auto_events
        && a.admin_state == b.admin_state
        && a.properties == b.properties
        && a.tags == b.tags
        && a.labels == b.labels
        && a.description == b.description
}
