//! What a device sends: an MQTT telemetry payload (JSON, CBOR or text, with an optional
//! timestamp field) or a device-rest body, turned into readings of a resource by the device
//! SDK (transforms, type fit, bounds), and a SET command's value parsed for a resource.
//! Nothing may panic, and a reading that passes must lie within the resource's bounds.
#![no_main]

use outpost_contracts::event::ReadingValue;
use outpost_contracts::metadata::ResourceProperties;
use outpost_contracts::value::ValueType;
use outpost_device_sdk::CommandValue;
use outpost_device_sdk::payload::{Payload, decode};
use outpost_device_sdk::value::{from_setting, to_reading};

const TYPES: [&str; 16] = [
    "Bool",
    "String",
    "Uint8",
    "Uint16",
    "Uint32",
    "Uint64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Float32",
    "Float64",
    "Binary",
    "Object",
    "Float32Array",
    "Int16Array",
];

fn properties(selector: u8, flags: u8) -> Option<ResourceProperties> {
    let mut p = serde_json::json!({
        "valueType": TYPES[usize::from(selector) % TYPES.len()],
        "readWrite": "RW",
    });
    if flags & 1 != 0 {
        p["minimum"] = (-40.0).into();
        p["maximum"] = 125.0.into();
    }
    if flags & 2 != 0 {
        p["scale"] = 0.1.into();
    }
    if flags & 4 != 0 {
        p["offset"] = (-273.15).into();
    }
    if flags & 8 != 0 {
        p["mask"] = 0xff.into();
        p["shift"] = (-4).into();
    }
    if flags & 16 != 0 {
        p["base"] = 2.0.into();
    }
    serde_json::from_value(p).ok()
}

fn check(p: &ResourceProperties, raw: CommandValue) {
    if let Ok((reading, _)) = to_reading("r", p, raw)
        && p.value_type.is_numeric()
        && let ReadingValue::Simple(text) = &reading
        && let Ok(n) = text.parse::<f64>()
    {
        assert!(
            !n.is_nan() || (p.minimum.is_none() && p.maximum.is_none()),
            "NaN passed bounds"
        );
        if let Some(min) = p.minimum {
            assert!(n >= min, "{n} below minimum {min}");
        }
        if let Some(max) = p.maximum {
            assert!(n <= max, "{n} above maximum {max}");
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [selector, flags, payload @ ..] = data else {
        return;
    };
    let Some(p) = properties(*selector, *flags) else {
        return;
    };
    // device-mqtt: the payload decoded, every value made a reading.
    match decode(payload, "ts") {
        Ok(Payload::Object { values, .. }) => {
            for (_, v) in values {
                check(&p, v);
            }
        }
        Ok(Payload::Value(v)) => check(&p, v),
        Err(_) => {}
    }
    // device-rest: a scalar body is its text.
    if p.value_type != ValueType::Binary
        && let Ok(text) = std::str::from_utf8(payload)
    {
        check(&p, CommandValue::String(text.trim().to_string()));
    }
    // A SET command: EdgeX sends text, clients may send any JSON.
    let setting = serde_json::from_slice::<serde_json::Value>(payload)
        .unwrap_or_else(|_| String::from_utf8_lossy(payload).into_owned().into());
    let _ = from_setting("r", &p, &setting);
});
