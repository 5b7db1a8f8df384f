//! EdgeX device-virtual's example profiles and devices, created in metadata when missing.

use outpost_contracts::metadata::{
    AdminState, AutoEvent, Device, DeviceCommand, DeviceProfile, DeviceResource, OperatingState,
    ReadWrite, ResourceOperation, ResourceProperties,
};
use outpost_contracts::value::ValueType;
use outpost_device_sdk::Sdk;

use crate::ENABLE_PREFIX;

fn resource(
    name: &str,
    t: ValueType,
    rw: ReadWrite,
    default: &str,
    hidden: bool,
) -> DeviceResource {
    DeviceResource {
        name: name.to_string(),
        description: format!("{name} value"),
        is_hidden: hidden,
        properties: ResourceProperties {
            value_type: t,
            read_write: rw,
            default_value: default.to_string(),
            media_type: if t == ValueType::Binary {
                "application/octet-stream".into()
            } else {
                String::new()
            },
            ..ResourceProperties::default()
        },
        ..DeviceResource::default()
    }
}

/// A profile with, per value type, the value resource, its `EnableRandomization_` switch
/// and a `Write<Type>Value` command, as EdgeX's profiles have.
fn profile(name: &str, types: &[ValueType]) -> DeviceProfile {
    let mut resources = Vec::new();
    let mut commands = Vec::new();
    for &t in types {
        let n = t.as_str();
        if t == ValueType::Binary {
            resources.push(resource(n, t, ReadWrite::R, "", false));
            continue;
        }
        let default = if t.is_array() {
            if t == ValueType::BoolArray {
                "[true]"
            } else {
                "[0]"
            }
        } else if t == ValueType::Bool {
            "true"
        } else {
            "0"
        };
        resources.push(resource(n, t, ReadWrite::RW, default, false));
        let enable = format!("{ENABLE_PREFIX}{n}");
        resources.push(resource(
            &enable,
            ValueType::Bool,
            ReadWrite::W,
            "true",
            true,
        ));
        commands.push(DeviceCommand {
            name: format!("Write{n}Value"),
            is_hidden: false,
            read_write: ReadWrite::W,
            resource_operations: vec![
                ResourceOperation {
                    device_resource: n.to_string(),
                    ..ResourceOperation::default()
                },
                ResourceOperation {
                    device_resource: enable,
                    default_value: "false".into(),
                    ..ResourceOperation::default()
                },
            ],
            ..DeviceCommand::default()
        });
    }
    DeviceProfile {
        name: name.to_string(),
        manufacturer: "Outpost".into(),
        model: "Virtual".into(),
        description: format!("Simulated device: {name}"),
        labels: vec!["device-virtual-example".into()],
        device_resources: resources,
        device_commands: commands,
        ..DeviceProfile::default()
    }
}

/// The example profiles, and the device of each with its autoEvents.
pub fn catalog() -> Vec<(DeviceProfile, Vec<AutoEvent>)> {
    use ValueType::*;
    let ae = |interval: &str, sources: &[ValueType]| -> Vec<AutoEvent> {
        sources
            .iter()
            .map(|s| AutoEvent {
                interval: interval.into(),
                on_change: false,
                source_name: s.as_str().into(),
                ..AutoEvent::default()
            })
            .collect()
    };
    vec![
        (
            profile("Random-Boolean-Device", &[Bool, BoolArray]),
            ae("10s", &[Bool]),
        ),
        (
            profile(
                "Random-Integer-Device",
                &[
                    Int8, Int16, Int32, Int64, Int8Array, Int16Array, Int32Array, Int64Array,
                ],
            ),
            ae("15s", &[Int8, Int16, Int32, Int64]),
        ),
        (
            profile(
                "Random-UnsignedInteger-Device",
                &[
                    Uint8,
                    Uint16,
                    Uint32,
                    Uint64,
                    Uint8Array,
                    Uint16Array,
                    Uint32Array,
                    Uint64Array,
                ],
            ),
            ae("20s", &[Uint8, Uint16, Uint32, Uint64]),
        ),
        (
            profile(
                "Random-Float-Device",
                &[Float32, Float64, Float32Array, Float64Array],
            ),
            ae("30s", &[Float32, Float64]),
        ),
        (profile("Random-Binary-Device", &[Binary]), Vec::new()),
    ]
}

/// Creates the example profiles and devices that metadata does not have.
pub async fn provision(sdk: &Sdk) {
    let md = sdk.metadata();
    for (profile, auto_events) in catalog() {
        let name = profile.name.clone();
        match md.profile(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Err(e) = md.add_profile(profile).await {
                    tracing::warn!(profile = %name, error = %e, "cannot create an example profile");
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot provision the example devices");
                return;
            }
        }
        match md.device(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let device = Device {
                    name: name.clone(),
                    description: format!("Example {name}"),
                    admin_state: AdminState::Unlocked,
                    operating_state: OperatingState::Up,
                    labels: vec!["device-virtual-example".into()],
                    service_name: sdk.name().to_string(),
                    profile_name: name.clone(),
                    auto_events,
                    protocols: [(
                        "other".to_string(),
                        serde_json::json!({"Address": format!("virtual-{}", name.to_lowercase())})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )]
                    .into(),
                    ..Device::default()
                };
                match md.add_device(device).await {
                    Ok(()) => tracing::info!(device = %name, "example device created"),
                    Err(e) => {
                        tracing::warn!(device = %name, error = %e, "cannot create an example device")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot provision the example devices"),
        }
    }
}
