//! AutoEvents: periodic reads of a device's sources, published as events.
//!
//! One task per (device, autoEvent). With `onChange`, an event is published only when at
//! least one reading changed since the last published one (numbers by at least
//! `onChangeThreshold` when set), so an unchanged value is not sent again. A locked device
//! is skipped; a DOWN device is still read, which is how it comes back UP. A DOWN device
//! with no autoEvents is probed every `down_probe_interval_ms` instead. An autoEvent the
//! driver serves itself ([`Driver::pushes_autoevent`](crate::Driver::pushes_autoevent)) has
//! no task here: the driver pushes its events and keeps the device's health.

use outpost_contracts::metadata::{AutoEvent, OperatingState, parse_interval};

use crate::command::{read_targets, resolve};
use crate::driver::DeviceRef;
use crate::sdk::Sdk;

/// (Re)starts the autoEvents of `d`; the tasks are kept in the service's
/// [`AutoEvents`](crate::sdk::AutoEvents), which stops them with the device or the service.
pub(crate) fn restart(sdk: &Sdk, d: &DeviceRef) {
    let mut handles = Vec::new();
    for ae in &d.device.auto_events {
        if sdk.inner.driver.pushes_autoevent(d, ae) {
            continue;
        }
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
    sdk.inner.autoevents.replace(&d.device.name, handles);
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

/// Every `down_probe_interval_ms` until `stop`: each DOWN device without autoEvents (which
/// would notice its return) has its first readable resource read; the first answer brings it
/// back UP. The devices are probed at once, so a silent one does not hold up the others.
pub(crate) async fn probe_down_devices(sdk: Sdk, stop: outpost_kit::Shutdown) {
    loop {
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(sdk.inner.down_probe_interval) => {}
        }
        let down: Vec<DeviceRef> = sdk
            .devices()
            .into_iter()
            .filter(|d| {
                d.device.operating_state == OperatingState::Down && d.device.auto_events.is_empty()
            })
            .collect();
        let probes = down.iter().filter_map(|d| {
            let r = d
                .profile
                .device_resources
                .iter()
                .find(|r| r.properties.read_write.readable())?;
            let (targets, _) = resolve(d, &r.name)?;
            let sdk = &sdk;
            Some(async move {
                let _ = read_targets(sdk, d, "probe", &targets).await;
            })
        });
        futures_util::future::join_all(probes).await;
    }
}
