//! AutoEvents: periodic reads of a device's sources, published as events.
//!
//! One task per (device, autoEvent). With `onChange`, an event is published only when at
//! least one reading changed since the last published one (numbers by at least
//! `onChangeThreshold` when set), so an unchanged value is not sent again. A locked device
//! is skipped; a DOWN device is still read, which is how it comes back UP. A DOWN device
//! with no autoEvents is probed every `down_probe_interval_ms` instead.

use std::collections::HashMap;
use std::sync::Mutex;

use outpost_contracts::metadata::{AutoEvent, OperatingState, parse_interval};
use tokio::task::AbortHandle;

use crate::command::{read_targets, resolve};
use crate::driver::DeviceRef;
use crate::service::Sdk;

#[derive(Default)]
pub struct AutoEvents {
    tasks: Mutex<HashMap<String, Vec<AbortHandle>>>,
    probes: Mutex<HashMap<String, AbortHandle>>,
}

impl AutoEvents {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<AbortHandle>>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// (Re)starts the autoEvents of `d`.
    pub(crate) fn restart(&self, sdk: &Sdk, d: &DeviceRef) {
        self.stop(&d.device.name);
        let mut handles = Vec::new();
        for ae in &d.device.auto_events {
            match parse_interval(&ae.interval) {
                Ok(every) if !every.is_zero() => {
                    let task = tokio::spawn(run_one(
                        sdk.clone(),
                        d.device.name.clone(),
                        ae.clone(),
                        every,
                    ));
                    handles.push(task.abort_handle());
                }
                _ => {
                    tracing::warn!(device = %d.device.name, source = %ae.source_name, interval = %ae.interval, "autoEvent with an unusable interval ignored")
                }
            }
        }
        if !handles.is_empty() {
            self.tasks().insert(d.device.name.clone(), handles);
        }
    }

    pub(crate) fn stop(&self, device: &str) {
        if let Some(hs) = self.tasks().remove(device) {
            for h in hs {
                h.abort();
            }
        }
        if let Some(p) = self.probes().remove(device) {
            p.abort();
        }
    }

    pub(crate) fn stop_all(&self) {
        for (_, hs) in self.tasks().drain() {
            for h in hs {
                h.abort();
            }
        }
        for (_, p) in self.probes().drain() {
            p.abort();
        }
    }
}

async fn run_one(sdk: Sdk, device: String, ae: AutoEvent, every: std::time::Duration) {
    let shutdown = sdk.context().shutdown.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<crate::CommandValue>> = None;
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        // The latest version of the device (its state may have changed since the start).
        let Some(d) = sdk.device(&device) else { return };
        if sdk.is_locked(&d) {
            continue;
        }
        let Some((targets, rw)) = resolve(&d, &ae.source_name) else {
            sdk.reject(
                &device,
                "unknown_source",
                &format!(
                    "autoEvent source '{}' is not a command or resource of the profile",
                    ae.source_name
                ),
            );
            continue;
        };
        if !rw.readable() {
            continue;
        }
        let Ok((event, values)) = read_targets(&sdk, &d, &ae.source_name, &targets).await else {
            continue;
        };
        if ae.on_change
            && let Some(prev) = &last
            && prev.len() == values.len()
            && !values
                .iter()
                .zip(prev)
                .any(|(v, p)| v.changed_from(p, ae.on_change_threshold))
        {
            metrics::counter!(sdk.inner.metrics.suppressed.clone()).increment(1);
            continue;
        }
        match sdk.publish(&d, event).await {
            Ok(_) => last = Some(values),
            Err(e) => {
                tracing::warn!(device, source = %ae.source_name, error = %e, "cannot publish an autoEvent")
            }
        }
    }
}

/// While `d` is DOWN and has no autoEvents to notice its return, reads its first readable
/// resource now and then; the first answer brings it back UP.
pub(crate) fn spawn_down_probe(sdk: &Sdk, d: DeviceRef) {
    if !d.device.auto_events.is_empty() {
        return;
    }
    let name = d.device.name.clone();
    let mut probes = sdk.inner.autoevents.probes();
    if probes.get(&name).is_some_and(|h| !h.is_finished()) {
        return;
    }
    let sdk2 = sdk.clone();
    let task = tokio::spawn(async move {
        let sdk = sdk2;
        let shutdown = sdk.context().shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(sdk.inner.down_probe_interval) => {}
            }
            let Some(d) = sdk.device(&name) else { return };
            if d.device.operating_state != OperatingState::Down {
                return;
            }
            let Some(r) = d
                .profile
                .device_resources
                .iter()
                .find(|r| r.properties.read_write.readable())
            else {
                return;
            };
            if let Some((targets, _)) = resolve(&d, &r.name.clone()) {
                let _ = read_targets(&sdk, &d, "probe", &targets).await;
            }
        }
    });
    probes.insert(d.device.name.clone(), task.abort_handle());
}
