//! OPC UA values to and from the SDK's [`CommandValue`]: every built-in scalar type and
//! one-dimensional arrays of them, by the resource's EdgeX `valueType` when writing (a server
//! refuses a write whose Variant type is not the node's: `BadTypeMismatch`).

use opcua::types::{
    Array, ByteString, DateTime, LocalizedText, UAString, Variant, VariantScalarTypeId,
};
use outpost_contracts::value::ValueType;
use outpost_device_sdk::CommandValue;

/// A value read from a node, as the SDK takes it; `None` for what has no EdgeX form
/// (an empty value, a structure the profile cannot describe).
pub fn from_variant(v: &Variant) -> Option<CommandValue> {
    Some(match v {
        Variant::Empty => return None,
        Variant::Boolean(b) => CommandValue::Bool(*b),
        Variant::SByte(n) => CommandValue::Int(i64::from(*n)),
        Variant::Int16(n) => CommandValue::Int(i64::from(*n)),
        Variant::Int32(n) => CommandValue::Int(i64::from(*n)),
        Variant::Int64(n) => CommandValue::Int(*n),
        Variant::Byte(n) => CommandValue::Uint(u64::from(*n)),
        Variant::UInt16(n) => CommandValue::Uint(u64::from(*n)),
        Variant::UInt32(n) => CommandValue::Uint(u64::from(*n)),
        Variant::UInt64(n) => CommandValue::Uint(*n),
        Variant::Float(f) => CommandValue::Float(f64::from(*f)),
        Variant::Double(f) => CommandValue::Float(*f),
        Variant::String(s) => CommandValue::String(text(s)),
        Variant::LocalizedText(t) => CommandValue::String(text(&t.text)),
        Variant::QualifiedName(q) => CommandValue::String(text(&q.name)),
        Variant::NodeId(n) => CommandValue::String(n.to_string()),
        Variant::Guid(g) => CommandValue::String(g.to_string()),
        Variant::StatusCode(c) => CommandValue::Uint(u64::from(c.bits())),
        // As EdgeX's device-opc-ua gives a DateTime: milliseconds since the Unix epoch.
        Variant::DateTime(d) => CommandValue::Int(d.as_chrono().timestamp_millis()),
        Variant::ByteString(b) => CommandValue::Binary(b.value.clone().unwrap_or_default()),
        Variant::Variant(inner) => return from_variant(inner),
        Variant::Array(a) => {
            CommandValue::Array(a.values.iter().filter_map(from_variant).collect())
        }
        _ => return None,
    })
}

fn text(s: &UAString) -> String {
    s.value().clone().unwrap_or_default()
}

/// The Variant type a resource of `t` is written as; `None` for EdgeX types with no OPC UA
/// scalar (objects).
fn scalar_of(t: ValueType) -> Option<VariantScalarTypeId> {
    use ValueType as V;
    use VariantScalarTypeId as S;
    Some(match t {
        V::Bool | V::BoolArray => S::Boolean,
        V::Int8 | V::Int8Array => S::SByte,
        V::Uint8 | V::Uint8Array => S::Byte,
        V::Int16 | V::Int16Array => S::Int16,
        V::Uint16 | V::Uint16Array => S::UInt16,
        V::Int32 | V::Int32Array => S::Int32,
        V::Uint32 | V::Uint32Array => S::UInt32,
        V::Int64 | V::Int64Array => S::Int64,
        V::Uint64 | V::Uint64Array => S::UInt64,
        V::Float32 | V::Float32Array => S::Float,
        V::Float64 | V::Float64Array => S::Double,
        V::String | V::StringArray => S::String,
        V::Binary => S::ByteString,
        V::Object | V::ObjectArray => return None,
    })
}

fn is_array(t: ValueType) -> bool {
    use ValueType as V;
    matches!(
        t,
        V::BoolArray
            | V::StringArray
            | V::Uint8Array
            | V::Uint16Array
            | V::Uint32Array
            | V::Uint64Array
            | V::Int8Array
            | V::Int16Array
            | V::Int32Array
            | V::Int64Array
            | V::Float32Array
            | V::Float64Array
    )
}

/// `v`, which the SDK checked against `t`, as the Variant a node of `t` takes.
pub fn to_variant(t: ValueType, v: &CommandValue) -> Result<Variant, String> {
    let scalar =
        scalar_of(t).ok_or_else(|| format!("{t:?} values cannot be written over OPC UA"))?;
    if is_array(t) {
        let CommandValue::Array(items) = v else {
            return Err(format!("a {t:?} value must be an array"));
        };
        let values = items
            .iter()
            .map(|i| scalar_variant(scalar, i))
            .collect::<Result<Vec<_>, _>>()?;
        let array = Array::new(scalar, values).map_err(|e| format!("{e:?}"))?;
        return Ok(Variant::Array(Box::new(array)));
    }
    scalar_variant(scalar, v)
}

fn scalar_variant(s: VariantScalarTypeId, v: &CommandValue) -> Result<Variant, String> {
    use VariantScalarTypeId as S;
    let out_of_range = || format!("{} does not fit {s:?}", show(v));
    let int = || match v {
        CommandValue::Int(n) => Ok(i128::from(*n)),
        CommandValue::Uint(n) => Ok(i128::from(*n)),
        CommandValue::Bool(b) => Ok(i128::from(*b)),
        other => Err(format!("{} is not an integer", show(other))),
    };
    Ok(match s {
        S::Boolean => match v {
            CommandValue::Bool(b) => Variant::Boolean(*b),
            other => return Err(format!("{} is not a boolean", show(other))),
        },
        S::SByte => Variant::SByte(i8::try_from(int()?).map_err(|_| out_of_range())?),
        S::Byte => Variant::Byte(u8::try_from(int()?).map_err(|_| out_of_range())?),
        S::Int16 => Variant::Int16(i16::try_from(int()?).map_err(|_| out_of_range())?),
        S::UInt16 => Variant::UInt16(u16::try_from(int()?).map_err(|_| out_of_range())?),
        S::Int32 => Variant::Int32(i32::try_from(int()?).map_err(|_| out_of_range())?),
        S::UInt32 => Variant::UInt32(u32::try_from(int()?).map_err(|_| out_of_range())?),
        S::Int64 => Variant::Int64(i64::try_from(int()?).map_err(|_| out_of_range())?),
        S::UInt64 => Variant::UInt64(u64::try_from(int()?).map_err(|_| out_of_range())?),
        // Narrowed as EdgeX's Float32 is: the nearest f32.
        S::Float => Variant::Float(
            v.as_f64()
                .ok_or_else(|| format!("{} is not a number", show(v)))? as f32,
        ),
        S::Double => Variant::Double(
            v.as_f64()
                .ok_or_else(|| format!("{} is not a number", show(v)))?,
        ),
        S::String => match v {
            CommandValue::String(t) => Variant::String(UAString::from(t.as_str())),
            other => Variant::String(UAString::from(show(other))),
        },
        S::ByteString => match v {
            CommandValue::Binary(b) => Variant::ByteString(ByteString::from(b.clone())),
            other => return Err(format!("{} is not binary", show(other))),
        },
        S::DateTime => match v {
            CommandValue::Int(ms) => {
                let t = chrono_ms(*ms).ok_or_else(out_of_range)?;
                Variant::DateTime(Box::new(t))
            }
            other => return Err(format!("{} is not a time in ms", show(other))),
        },
        S::LocalizedText => Variant::LocalizedText(Box::new(LocalizedText::new("", &show(v)))),
        other => return Err(format!("writing {other:?} nodes is not supported")),
    })
}

/// A method argument of the built-in data type `data_type` (a namespace-0 id, as the
/// method's `InputArguments` give it) from `v`; text (an `inputMap` entry, a written
/// value) is read as that type.
pub fn argument(data_type: u32, v: &CommandValue) -> Result<Variant, String> {
    use VariantScalarTypeId as S;
    let scalar = match data_type {
        1 => S::Boolean,
        2 => S::SByte,
        3 => S::Byte,
        4 => S::Int16,
        5 => S::UInt16,
        6 => S::Int32,
        7 => S::UInt32,
        8 => S::Int64,
        9 => S::UInt64,
        10 => S::Float,
        11 => S::Double,
        12 => S::String,
        13 => S::DateTime,
        15 => S::ByteString,
        other => {
            return Err(format!(
                "arguments of data type i={other} are not supported"
            ));
        }
    };
    let CommandValue::String(text) = v else {
        return scalar_variant(scalar, v);
    };
    let t = text.trim();
    let parsed = match scalar {
        S::String => CommandValue::String(text.clone()),
        S::Boolean => CommandValue::Bool(
            t.parse::<bool>()
                .map_err(|_| format!("'{t}' is not true or false"))?,
        ),
        S::Float | S::Double => CommandValue::Float(
            t.parse::<f64>()
                .map_err(|_| format!("'{t}' is not a number"))?,
        ),
        S::Byte | S::UInt16 | S::UInt32 | S::UInt64 => CommandValue::Uint(
            t.parse::<u64>()
                .map_err(|_| format!("'{t}' is not a whole number"))?,
        ),
        S::ByteString => CommandValue::Binary(text.as_bytes().to_vec()),
        _ => CommandValue::Int(
            t.parse::<i64>()
                .map_err(|_| format!("'{t}' is not a whole number"))?,
        ),
    };
    scalar_variant(scalar, &parsed)
}

fn chrono_ms(ms: i64) -> Option<DateTime> {
    let t = opcua::types::DateTimeUtc::from_timestamp_millis(ms)?;
    Some(DateTime::from(t))
}

fn show(v: &CommandValue) -> String {
    match v {
        CommandValue::String(s) => s.clone(),
        CommandValue::Bool(b) => b.to_string(),
        CommandValue::Int(n) => n.to_string(),
        CommandValue::Uint(n) => n.to_string(),
        CommandValue::Float(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scalar_type_reads_as_its_edgex_kind() {
        let cases = [
            (Variant::Boolean(true), CommandValue::Bool(true)),
            (Variant::SByte(-8), CommandValue::Int(-8)),
            (Variant::Byte(200), CommandValue::Uint(200)),
            (Variant::Int16(-1234), CommandValue::Int(-1234)),
            (Variant::UInt16(4242), CommandValue::Uint(4242)),
            (Variant::Int32(-123456), CommandValue::Int(-123456)),
            (Variant::UInt32(305419896), CommandValue::Uint(305419896)),
            (
                Variant::Int64(-5_000_000_000),
                CommandValue::Int(-5_000_000_000),
            ),
            (
                Variant::UInt64(9_000_000_000),
                CommandValue::Uint(9_000_000_000),
            ),
            (Variant::Float(21.5), CommandValue::Float(21.5)),
            (Variant::Double(-0.25), CommandValue::Float(-0.25)),
            (
                Variant::String("outpost".into()),
                CommandValue::String("outpost".into()),
            ),
            (
                Variant::ByteString(ByteString::from(vec![1, 2, 255])),
                CommandValue::Binary(vec![1, 2, 255]),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(from_variant(&v), Some(want), "{v:?}");
        }
        let t = chrono_ms(1_767_323_045_000).expect("a time");
        assert_eq!(
            from_variant(&Variant::DateTime(Box::new(t))),
            Some(CommandValue::Int(1_767_323_045_000))
        );
        assert_eq!(from_variant(&Variant::Empty), None);
    }

    #[test]
    fn method_arguments_take_their_declared_types() {
        let text = |t: &str| CommandValue::String(t.into());
        assert_eq!(argument(6, &text("2")), Ok(Variant::Int32(2)));
        assert_eq!(argument(11, &text("2.5")), Ok(Variant::Double(2.5)));
        assert_eq!(argument(1, &text("true")), Ok(Variant::Boolean(true)));
        assert_eq!(argument(12, &text("x")), Ok(Variant::String("x".into())));
        assert_eq!(argument(4, &CommandValue::Int(7)), Ok(Variant::Int16(7)));
        assert!(argument(6, &text("two")).is_err());
        assert!(argument(2, &text("300")).is_err());
        assert!(argument(22, &text("{}")).is_err());
    }

    #[test]
    fn writes_take_the_nodes_type_and_refuse_what_does_not_fit() {
        assert_eq!(
            to_variant(ValueType::Int16, &CommandValue::Int(55)),
            Ok(Variant::Int16(55))
        );
        assert_eq!(
            to_variant(ValueType::Uint8, &CommandValue::Uint(255)),
            Ok(Variant::Byte(255))
        );
        assert!(to_variant(ValueType::Int8, &CommandValue::Int(300)).is_err());
        assert!(to_variant(ValueType::Uint32, &CommandValue::Int(-1)).is_err());
        assert_eq!(
            to_variant(ValueType::Float32, &CommandValue::Float(1.5)),
            Ok(Variant::Float(1.5))
        );
        assert!(to_variant(ValueType::Bool, &CommandValue::Int(1)).is_err());
        assert!(to_variant(ValueType::Object, &CommandValue::Int(1)).is_err());
        let a = to_variant(
            ValueType::Float64Array,
            &CommandValue::Array(vec![CommandValue::Float(1.5), CommandValue::Float(2.5)]),
        )
        .expect("an array");
        assert_eq!(
            from_variant(&a),
            Some(CommandValue::Array(vec![
                CommandValue::Float(1.5),
                CommandValue::Float(2.5)
            ]))
        );
    }
}
