//! What devices send: a JSON or CBOR object of resource → value (with an optional
//! timestamp), or one bare value on a topic that names the resource.

use crate::CommandValue;
use serde_json::Value;

/// A decoded telemetry message.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// resource → value, and the origin in nanoseconds when the device gave one.
    Object {
        values: Vec<(String, CommandValue)>,
        origin: Option<i64>,
    },
    /// One value, for the resource the topic names.
    Value(CommandValue),
}

/// Why a message cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("payload is neither JSON, CBOR nor text: {0}")]
    Undecodable(String),
    #[error("timestamp field '{0}' is not a number of (milli/micro/nano)seconds or RFC 3339 text")]
    BadTimestamp(String),
}

/// Decodes a payload: JSON when it looks like JSON, else CBOR, else UTF-8 text (one value).
pub fn decode(bytes: &[u8], timestamp_field: &str) -> Result<Payload, PayloadError> {
    let first = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(PayloadError::Empty)?;
    let json_like = matches!(
        first,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    );
    let value = if json_like {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            // Text such as `on` or `fault` is a bare value.
            Err(e) if *first != b'{' && *first != b'[' => {
                text(bytes).ok_or_else(|| PayloadError::Undecodable(e.to_string()))?
            }
            Err(e) => return Err(PayloadError::Undecodable(e.to_string())),
        }
    } else if !matches!(first, 0xa0..=0xbf) {
        // A bare value is text (CBOR is accepted for objects, whose first byte is a map's).
        text(bytes)
            .ok_or_else(|| PayloadError::Undecodable("not UTF-8 text, JSON or a CBOR map".into()))?
    } else {
        parse(bytes, Format::Cbor)?
    };
    split(value, timestamp_field)
}

/// The encoding a device names for its payload (CoAP's Content-Format, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// UTF-8 text: one value.
    Text,
    Json,
    Cbor,
}

/// Decodes a payload in the encoding the device named: nothing is guessed, so text that
/// happens to look like JSON stays text.
pub fn decode_as(
    bytes: &[u8],
    format: Format,
    timestamp_field: &str,
) -> Result<Payload, PayloadError> {
    split(parse(bytes, format)?, timestamp_field)
}

/// A payload in the encoding the device named, as JSON (CBOR byte strings become base64
/// text; text is one string).
pub fn parse(bytes: &[u8], format: Format) -> Result<Value, PayloadError> {
    match format {
        Format::Text if bytes.iter().all(u8::is_ascii_whitespace) => Err(PayloadError::Empty),
        Format::Text => text(bytes).ok_or_else(|| {
            PayloadError::Undecodable("text is UTF-8 without control characters".into())
        }),
        Format::Json => serde_json::from_slice::<Value>(bytes)
            .map_err(|e| PayloadError::Undecodable(e.to_string())),
        Format::Cbor if bytes.is_empty() => Err(PayloadError::Empty),
        Format::Cbor => {
            let mut rest = bytes;
            match ciborium::from_reader::<ciborium::Value, _>(&mut rest) {
                Ok(v) if rest.is_empty() => cbor_to_json(v).map_err(PayloadError::Undecodable),
                Ok(_) => Err(PayloadError::Undecodable(
                    "bytes after the CBOR value".into(),
                )),
                Err(e) => Err(PayloadError::Undecodable(e.to_string())),
            }
        }
    }
}

/// The body of a message that carries one value of a resource of type `t` (a device-rest
/// POST, a CoAP POST to `/<device>/<resource>`). `Binary` takes the bytes as they are;
/// `Object` and array types take JSON, or CBOR when the device says so; any other type
/// takes text (the SDK parses it as the type), or JSON or CBOR when the device says so.
pub fn body_value(
    t: outpost_contracts::value::ValueType,
    body: &[u8],
    format: Option<Format>,
) -> Result<CommandValue, String> {
    use outpost_contracts::value::ValueType as T;
    let structured = |what: &str| {
        match format {
            Some(Format::Cbor) => parse(body, Format::Cbor),
            _ => parse(body, Format::Json),
        }
        .map_err(|e| format!("a {t} value is {what}: {e}"))
    };
    match t {
        T::Binary => Ok(CommandValue::Binary(body.to_vec())),
        T::Object | T::ObjectArray => structured("JSON or CBOR").map(CommandValue::Object),
        t if t.is_array() => {
            structured("a JSON or CBOR array").map(|v| CommandValue::from_json(&v))
        }
        _ => match format {
            None | Some(Format::Text) => std::str::from_utf8(body)
                .map(|s| CommandValue::String(s.trim().to_string()))
                .map_err(|_| "the value is not UTF-8 text".to_string()),
            Some(f) => parse(body, f)
                .map(|v| CommandValue::from_json(&v))
                .map_err(|e| e.to_string()),
        },
    }
}

/// An object becomes resource → value (and its timestamp); anything else is one value.
fn split(value: Value, timestamp_field: &str) -> Result<Payload, PayloadError> {
    Ok(match value {
        Value::Object(map) => {
            let mut origin = None;
            let mut values = Vec::with_capacity(map.len());
            for (k, v) in map {
                if k == timestamp_field {
                    origin =
                        Some(timestamp(&v).ok_or_else(|| PayloadError::BadTimestamp(k.clone()))?);
                } else {
                    values.push((k, CommandValue::from_json(&v)));
                }
            }
            Payload::Object { values, origin }
        }
        other => Payload::Value(CommandValue::from_json(&other)),
    })
}

fn text(bytes: &[u8]) -> Option<Value> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    (!s.is_empty() && !s.chars().any(char::is_control)).then(|| Value::String(s.to_string()))
}

/// Seconds, milliseconds, microseconds or nanoseconds since the epoch (told apart by
/// magnitude), or RFC 3339 text; in nanoseconds.
fn timestamp(v: &Value) -> Option<i64> {
    if let Some(s) = v.as_str() {
        let t = humantime::parse_rfc3339_weak(s).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        return i64::try_from(d.as_nanos()).ok();
    }
    if let Some(i) = v.as_i64() {
        let scale = match i {
            ..=0 => return None,
            1..100_000_000_000 => 1_000_000_000,
            100_000_000_000..100_000_000_000_000 => 1_000_000,
            100_000_000_000_000..100_000_000_000_000_000 => 1_000,
            _ => 1,
        };
        return i.checked_mul(scale);
    }
    let n = v.as_f64()?;
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let ns = if n < 1e11 {
        n * 1e9
    } else if n < 1e14 {
        n * 1e6
    } else if n < 1e17 {
        n * 1e3
    } else {
        n
    };
    (ns < 9.2e18).then_some(ns as i64)
}

/// CBOR as JSON; byte strings become base64 text (a Binary resource's form). Map keys are
/// text or integers, as JSON's are names: a key that is itself a map or an array is
/// refused (written out as text, nested keys grow exponentially with their depth).
fn cbor_to_json(v: ciborium::Value) -> Result<Value, String> {
    use base64::Engine as _;
    use ciborium::Value as C;
    Ok(match v {
        C::Integer(i) => {
            let i = i128::from(i);
            if let Ok(n) = i64::try_from(i) {
                Value::from(n)
            } else if let Ok(n) = u64::try_from(i) {
                Value::from(n)
            } else {
                Value::String(i.to_string())
            }
        }
        C::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        C::Bool(b) => Value::Bool(b),
        C::Text(s) => Value::String(s),
        C::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        C::Array(items) => Value::Array(
            items
                .into_iter()
                .map(cbor_to_json)
                .collect::<Result<_, _>>()?,
        ),
        C::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        C::Text(s) => s,
                        C::Integer(i) => i128::from(i).to_string(),
                        _ => return Err("a CBOR map key is text or an integer".to_string()),
                    };
                    Ok((key, cbor_to_json(v)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        C::Tag(_, inner) => cbor_to_json(*inner)?,
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_format_is_taken_as_named() {
        // Text that looks like JSON stays text.
        assert_eq!(
            decode_as(b"true", Format::Text, "ts"),
            Ok(Payload::Value(CommandValue::String("true".into())))
        );
        // A bare CBOR value (here -1, byte 0x20, which is also ASCII space) is one value.
        assert_eq!(
            decode_as(&[0x20], Format::Cbor, "ts"),
            Ok(Payload::Value(CommandValue::Int(-1)))
        );
        // A CBOR map {"t": 21.5, "ts": 1700000000}: values and their time.
        let mut cbor = Vec::new();
        let map = ciborium::Value::Map(vec![
            ("t".into(), ciborium::Value::Float(21.5)),
            ("ts".into(), ciborium::Value::Integer(1_700_000_000.into())),
        ]);
        ciborium::into_writer(&map, &mut cbor).expect("cbor");
        assert_eq!(
            decode_as(&cbor, Format::Cbor, "ts"),
            Ok(Payload::Object {
                values: vec![("t".into(), CommandValue::Float(21.5))],
                origin: Some(1_700_000_000_000_000_000),
            })
        );
        assert!(matches!(
            decode_as(b"{", Format::Json, "ts"),
            Err(PayloadError::Undecodable(_))
        ));
        assert_eq!(
            decode_as(b" ", Format::Text, "ts"),
            Err(PayloadError::Empty)
        );
        assert_eq!(decode_as(b"", Format::Cbor, "ts"), Err(PayloadError::Empty));
        assert!(decode_as(&[0xa1, 0x61], Format::Cbor, "ts").is_err());
    }

    #[test]
    fn cbor_keys_that_are_maps_are_refused_not_grown() {
        // 37 maps each used as the key of the next: 148 bytes that, written out as text
        // key by key, needed more than 2 GiB (found by fuzz/fuzz_targets/device_payload.rs).
        let bytes: &[u8] = &[
            0xbf, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1,
            0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1,
            0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1, 0xa1,
            0xa1, 0xa1, 0xa1, 0xa1, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0xfb, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x30, 0x30,
            0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30,
            0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x31, 0x33, 0x35, 0x31, 0x36, 0x34,
            0x34, 0x37, 0x36, 0x31, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
        ];
        assert!(matches!(
            decode(bytes, "ts"),
            Err(PayloadError::Undecodable(_))
        ));
        // Integer keys are kept, as their decimal text.
        let ok = decode(&[0xa1, 0x05, 0x63, b'o', b'f', b'f'], "ts").unwrap();
        assert_eq!(
            ok,
            Payload::Object {
                values: vec![("5".to_string(), CommandValue::String("off".into()))],
                origin: None
            }
        );
    }

    #[test]
    fn json_objects_values_and_timestamps() {
        let p = decode(
            br#"{"Temperature": 21.5, "Count": 7, "On": true, "timestamp": 1700000000123}"#,
            "timestamp",
        )
        .unwrap();
        assert_eq!(
            p,
            Payload::Object {
                values: vec![
                    ("Count".into(), CommandValue::Int(7)),
                    ("On".into(), CommandValue::Bool(true)),
                    ("Temperature".into(), CommandValue::Float(21.5)),
                ],
                origin: Some(1_700_000_000_123_000_000),
            }
        );
        assert_eq!(
            decode(b"21.5", "timestamp").unwrap(),
            Payload::Value(CommandValue::Float(21.5))
        );
        assert_eq!(
            decode(b" on ", "timestamp").unwrap(),
            Payload::Value(CommandValue::String("on".into()))
        );
        assert_eq!(
            decode(b"\"x\"", "timestamp").unwrap(),
            Payload::Value(CommandValue::String("x".into()))
        );
        let rfc = decode(br#"{"a": 1, "ts": "2026-11-22T10:00:00Z"}"#, "ts").unwrap();
        assert!(
            matches!(rfc, Payload::Object { origin: Some(o), .. } if o == 1_795_341_600_000_000_000)
        );
        for s in [
            1_700_000_000i64,
            1_700_000_000_000,
            1_700_000_000_000_000,
            1_700_000_000_000_000_000,
        ] {
            let p = decode(
                format!(r#"{{"a":1,"timestamp":{s}}}"#).as_bytes(),
                "timestamp",
            )
            .unwrap();
            assert!(
                matches!(
                    p,
                    Payload::Object {
                        origin: Some(1_700_000_000_000_000_000),
                        ..
                    }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn cbor() {
        let mut buf = Vec::new();
        let v = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("Temperature".into()),
                ciborium::Value::Float(-3.25),
            ),
            (
                ciborium::Value::Text("Raw".into()),
                ciborium::Value::Bytes(vec![1, 2, 3]),
            ),
        ]);
        ciborium::into_writer(&v, &mut buf).unwrap();
        let p = decode(&buf, "timestamp").unwrap();
        assert_eq!(
            p,
            Payload::Object {
                values: vec![
                    ("Raw".into(), CommandValue::String("AQID".into())),
                    ("Temperature".into(), CommandValue::Float(-3.25)),
                ],
                origin: None,
            }
        );
    }

    #[test]
    fn garbage() {
        assert_eq!(decode(b"", "t"), Err(PayloadError::Empty));
        assert_eq!(decode(b"   ", "t"), Err(PayloadError::Empty));
        assert!(matches!(
            decode(b"{not json", "t"),
            Err(PayloadError::Undecodable(_))
        ));
        assert!(matches!(
            decode(&[0xff, 0x00, 0xfe], "t"),
            Err(PayloadError::Undecodable(_))
        ));
        assert!(matches!(
            decode(br#"{"a":1,"timestamp":"yesterday"}"#, "timestamp"),
            Err(PayloadError::BadTimestamp(_))
        ));
        assert!(matches!(
            decode(br#"{"a":1,"timestamp":-5}"#, "timestamp"),
            Err(PayloadError::BadTimestamp(_))
        ));
    }
}
