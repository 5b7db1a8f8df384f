//! GET and SET commands, as the REST API, the bus and autoEvents run them.
//!
//! A command name is a device command of the profile (its resource operations, in order)
//! or a single device resource. Checks, in EdgeX's order and with its status codes: the
//! device exists (404), the command exists (404), the device and the service are not locked
//! (423), a GET is not sent to a DOWN device (423), the command allows the method (405),
//! every SET value parses as its resource's type and lies within its bounds (400).

use std::sync::Arc;

use axum::http::StatusCode;
use outpost_contracts::event::{Event, ReadingValue};
use outpost_contracts::metadata::{DeviceResource, OperatingState, ReadWrite, ResourceOperation};
use outpost_contracts::now_nanos;
use outpost_kit::ApiError;

use crate::driver::{DeviceRef, DriverError, ResourceRef};
use crate::sdk::{Sdk, make_event, reading};
use crate::value::{CommandValue, from_setting, to_reading};

/// Query options of a GET (`ds-pushevent`, `ds-returnevent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetOptions {
    pub push_event: bool,
    pub return_event: bool,
}

impl Default for GetOptions {
    fn default() -> Self {
        Self {
            push_event: false,
            return_event: true,
        }
    }
}

/// Parses an EdgeX yes/no query value: `yes`/`no` (EdgeX's `ds-pushevent` form) or any
/// boolean Go's `strconv.ParseBool` reads, as EdgeX does.
pub fn parse_flag(name: &str, v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => outpost_contracts::common::parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be true or false, got '{v}'"))
        }),
    }
}

/// One resource a command touches.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: Arc<DeviceResource>,
    pub op: Option<ResourceOperation>,
}

/// The resources of `command` on `d`, and whether the command is readable and writable.
pub fn resolve(d: &DeviceRef, command: &str) -> Option<(Vec<Target>, ReadWrite)> {
    if let Some(c) = d.profile.command(command) {
        let targets = c
            .resource_operations
            .iter()
            .filter_map(|op| {
                d.profile.resource(&op.device_resource).map(|r| Target {
                    resource: Arc::new(r.clone()),
                    op: Some(op.clone()),
                })
            })
            .collect::<Vec<_>>();
        if targets.len() != c.resource_operations.len() {
            return None;
        }
        return Some((targets, c.read_write));
    }
    let r = d.profile.resource(command)?;
    Some((
        vec![Target {
            resource: Arc::new(r.clone()),
            op: None,
        }],
        r.properties.read_write,
    ))
}

fn lookup(
    sdk: &Sdk,
    device: &str,
    command: &str,
) -> Result<(DeviceRef, Vec<Target>, ReadWrite), ApiError> {
    let d = sdk
        .device(device)
        .ok_or_else(|| ApiError::not_found(format!("device '{device}' not found")))?;
    let (targets, rw) = resolve(&d, command).ok_or_else(|| {
        let names = d
            .profile
            .device_commands
            .iter()
            .map(|c| c.name.as_str())
            .chain(d.profile.device_resources.iter().map(|r| r.name.as_str()));
        ApiError::not_found(format!(
            "command or resource '{command}' not found in profile '{}'{}",
            d.device.profile_name,
            outpost_kit::edgex::did_you_mean(command, names)
        ))
    })?;
    if sdk.is_locked(&d) {
        return Err(ApiError::locked(format!("device '{device}' is locked")));
    }
    Ok((d, targets, rw))
}

/// The status a driver error answers with.
pub fn driver_error(device: &str, e: DriverError) -> ApiError {
    match e {
        DriverError::Unreachable(why) => {
            ApiError::unavailable(format!("device '{device}' did not answer: {why}"))
        }
        DriverError::Device(why) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("device '{device}' reported an error: {why}"),
        ),
        DriverError::Invalid(why) => ApiError::bad_request(why),
        DriverError::Unsupported => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not supported by this device service",
        ),
    }
}

/// Runs a GET: reads the resources, builds the event, pushes it if asked.
pub async fn get(
    sdk: &Sdk,
    device: &str,
    command: &str,
    opts: GetOptions,
) -> Result<Event, ApiError> {
    let (d, targets, rw) = lookup(sdk, device, command)?;
    if d.device.operating_state == OperatingState::Down {
        return Err(ApiError::locked(format!("device '{device}' is down")));
    }
    if !rw.readable() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("'{command}' is write-only"),
        ));
    }
    let (event, _) = read_targets(sdk, &d, command, &targets).await?;
    if opts.push_event {
        return sdk
            .publish(&d, event)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()));
    }
    Ok(event)
}

/// Reads `targets` of `d` into an event named `source`, returning the raw values too (for
/// `onChange`).
pub(crate) async fn read_targets(
    sdk: &Sdk,
    d: &DeviceRef,
    source: &str,
    targets: &[Target],
) -> Result<(Event, Vec<CommandValue>), ApiError> {
    let refs: Vec<ResourceRef> = targets
        .iter()
        .map(|t| ResourceRef {
            resource: Arc::clone(&t.resource),
        })
        .collect();
    let driver = Arc::clone(&sdk.inner.driver);
    let values = sdk
        .with_driver(d, async { driver.read(d, &refs).await })
        .await
        .map_err(|e| driver_error(&d.device.name, e))?;
    if values.len() != targets.len() {
        return Err(ApiError::internal(format!(
            "driver returned {} values for {} resources",
            values.len(),
            targets.len()
        )));
    }
    let origin = now_nanos();
    let mut readings = Vec::with_capacity(values.len());
    let mut raws = Vec::with_capacity(values.len());
    for (t, v) in targets.iter().zip(values) {
        let r = &t.resource;
        let (mut value, raw) = to_reading(&r.name, &r.properties, v).map_err(|e| {
            sdk.reject(&d.device.name, "bad_value", &e.to_string());
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })?;
        // A mapped value (`"1"` → `"On"`) is a String reading, as EdgeX makes it.
        let mut mapped = false;
        if let (Some(op), ReadingValue::Simple(s)) = (&t.op, &mut value)
            && let Some(m) = op.mappings.as_ref().and_then(|m| m.get(s.as_str()))
        {
            *s = m.clone();
            mapped = true;
        }
        let mut rd = reading(d, r, value, origin);
        if mapped {
            rd.value_type = outpost_contracts::value::ValueType::String;
        }
        readings.push(rd);
        raws.push(raw);
    }
    Ok((make_event(d, source, readings, origin), raws))
}

/// Runs a SET: every resource of the command gets its value from `settings` (or its
/// default), checked and converted, then the driver writes them in one call.
pub async fn set(
    sdk: &Sdk,
    device: &str,
    command: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApiError> {
    let (d, targets, rw) = lookup(sdk, device, command)?;
    // EdgeX answers a write to a device that is down 423, as a read.
    if d.device.operating_state == OperatingState::Down {
        return Err(ApiError::locked(format!("device '{device}' is down")));
    }
    if !rw.writable() {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("'{command}' is read-only"),
        ));
    }
    // Defaults fill the resources a request leaves out, but a request that names none of
    // them is a mistake (an empty body, a misspelt name), not a write of every default.
    if !targets
        .iter()
        .any(|t| settings.contains_key(&t.resource.name))
    {
        return Err(ApiError::bad_request(format!(
            "the request sets none of the resources of '{command}'"
        )));
    }
    let mut values = Vec::with_capacity(targets.len());
    for t in &targets {
        let r = &t.resource;
        let given = settings.get(&r.name).cloned().or_else(|| {
            let op_default = t.op.as_ref().map(|o| o.default_value.as_str());
            [op_default, Some(r.properties.default_value.as_str())]
                .into_iter()
                .flatten()
                .find(|s| !s.is_empty())
                .map(|s| serde_json::Value::String(s.to_string()))
        });
        let Some(mut given) = given else {
            return Err(ApiError::bad_request(format!(
                "no value for resource '{}'",
                r.name
            )));
        };
        // A mapped name (`"On"`) is written as what it maps from (`"1"`).
        if let (Some(map), serde_json::Value::String(s)) =
            (t.op.as_ref().and_then(|o| o.mappings.as_ref()), &given)
            && let Some((raw, _)) = map.iter().find(|(_, v)| *v == s)
        {
            given = serde_json::Value::String(raw.clone());
        }
        let v = from_setting(&r.name, &r.properties, &given)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        values.push((
            ResourceRef {
                resource: Arc::clone(r),
            },
            v,
        ));
    }
    if values.is_empty() {
        return Err(ApiError::bad_request("nothing to set"));
    }
    let driver = Arc::clone(&sdk.inner.driver);
    sdk.with_driver(&d, async { driver.write(&d, &values).await })
        .await
        .map_err(|e| driver_error(device, e))?;
    // Like EdgeX, what was written is published as an event, unless the command is
    // write-only (its values are not meant to be read).
    if rw.readable() {
        let origin = now_nanos();
        let readings = values
            .into_iter()
            .filter_map(|(r, v)| {
                let res = &r.resource;
                to_reading(&res.name, &res.properties, v)
                    .ok()
                    .map(|(value, _)| reading(&d, res, value, origin))
            })
            .collect::<Vec<_>>();
        if !readings.is_empty() {
            let event = make_event(&d, command, readings, origin);
            if let Err(e) = sdk.publish(&d, event).await {
                tracing::warn!(device, error = %e, "cannot publish the event of a SET");
            }
        }
    }
    Ok(())
}

/// `ds-pushevent` / `ds-returnevent` from query parameters.
pub fn get_options(q: &std::collections::HashMap<String, String>) -> Result<GetOptions, ApiError> {
    let mut o = GetOptions::default();
    if let Some(v) = q.get("ds-pushevent") {
        o.push_event = parse_flag("ds-pushevent", v)?;
    }
    if let Some(v) = q.get("ds-returnevent") {
        o.return_event = parse_flag("ds-returnevent", v)?;
    }
    Ok(o)
}
