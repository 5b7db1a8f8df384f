//! EdgeX value types and the checks a reading value must pass.
//!
//! EdgeX carries simple values as strings (`"21.5"`, `"true"`, `"[1,2]"`); this module parses
//! them by declared type, checks ranges of the declared type and of a profile's
//! `minimum`/`maximum`, and exposes a numeric view for aggregation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The value types a reading or device resource can declare.
///
/// Names are read case-insensitively (`float64` is `Float64`), as EdgeX normalises them,
/// and always written in their canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum ValueType {
    Bool,
    #[default]
    String,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Binary,
    BoolArray,
    StringArray,
    Uint8Array,
    Uint16Array,
    Uint32Array,
    Uint64Array,
    Int8Array,
    Int16Array,
    Int32Array,
    Int64Array,
    Float32Array,
    Float64Array,
    Object,
    ObjectArray,
}

const ALL: [ValueType; 27] = [
    ValueType::Bool,
    ValueType::String,
    ValueType::Uint8,
    ValueType::Uint16,
    ValueType::Uint32,
    ValueType::Uint64,
    ValueType::Int8,
    ValueType::Int16,
    ValueType::Int32,
    ValueType::Int64,
    ValueType::Float32,
    ValueType::Float64,
    ValueType::Binary,
    ValueType::BoolArray,
    ValueType::StringArray,
    ValueType::Uint8Array,
    ValueType::Uint16Array,
    ValueType::Uint32Array,
    ValueType::Uint64Array,
    ValueType::Int8Array,
    ValueType::Int16Array,
    ValueType::Int32Array,
    ValueType::Int64Array,
    ValueType::Float32Array,
    ValueType::Float64Array,
    ValueType::Object,
    ValueType::ObjectArray,
];

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "Bool",
            Self::String => "String",
            Self::Uint8 => "Uint8",
            Self::Uint16 => "Uint16",
            Self::Uint32 => "Uint32",
            Self::Uint64 => "Uint64",
            Self::Int8 => "Int8",
            Self::Int16 => "Int16",
            Self::Int32 => "Int32",
            Self::Int64 => "Int64",
            Self::Float32 => "Float32",
            Self::Float64 => "Float64",
            Self::Binary => "Binary",
            Self::BoolArray => "BoolArray",
            Self::StringArray => "StringArray",
            Self::Uint8Array => "Uint8Array",
            Self::Uint16Array => "Uint16Array",
            Self::Uint32Array => "Uint32Array",
            Self::Uint64Array => "Uint64Array",
            Self::Int8Array => "Int8Array",
            Self::Int16Array => "Int16Array",
            Self::Int32Array => "Int32Array",
            Self::Int64Array => "Int64Array",
            Self::Float32Array => "Float32Array",
            Self::Float64Array => "Float64Array",
            Self::Object => "Object",
            Self::ObjectArray => "ObjectArray",
        }
    }

    /// A small stable code for storage.
    pub fn code(self) -> u8 {
        ALL.iter()
            .position(|v| *v == self)
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(u8::MAX)
    }

    pub fn from_code(code: u8) -> Option<Self> {
        ALL.get(usize::from(code)).copied()
    }

    pub fn is_numeric(self) -> bool {
        self.scalar_range().is_some()
            || matches!(
                self,
                Self::Float32 | Self::Float64 | Self::Uint64 | Self::Int64
            )
    }

    pub fn is_array(self) -> bool {
        self.element().is_some()
    }

    /// The element type of an array type.
    pub fn element(self) -> Option<Self> {
        Some(match self {
            Self::BoolArray => Self::Bool,
            Self::StringArray => Self::String,
            Self::Uint8Array => Self::Uint8,
            Self::Uint16Array => Self::Uint16,
            Self::Uint32Array => Self::Uint32,
            Self::Uint64Array => Self::Uint64,
            Self::Int8Array => Self::Int8,
            Self::Int16Array => Self::Int16,
            Self::Int32Array => Self::Int32,
            Self::Int64Array => Self::Int64,
            Self::Float32Array => Self::Float32,
            Self::Float64Array => Self::Float64,
            Self::ObjectArray => Self::Object,
            _ => return None,
        })
    }

    /// Integer range of the smaller integer types (the 64-bit ones are parsed natively).
    fn scalar_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::Uint8 => (0, u8::MAX.into()),
            Self::Uint16 => (0, u16::MAX.into()),
            Self::Uint32 => (0, u32::MAX.into()),
            Self::Int8 => (i8::MIN.into(), i8::MAX.into()),
            Self::Int16 => (i16::MIN.into(), i16::MAX.into()),
            Self::Int32 => (i32::MIN.into(), i32::MAX.into()),
            _ => return None,
        })
    }

    /// Parses a simple (non-binary, non-object) value in EdgeX's string form and returns
    /// its numeric view (`None` for strings, booleans and arrays).
    pub fn parse(self, raw: &str) -> Result<Option<f64>, ValueError> {
        let bad = |why: &str| ValueError::Invalid {
            value_type: self,
            value: truncate(raw),
            why: why.to_string(),
        };
        match self {
            Self::Bool => parse_bool(raw)
                .map(|_| None)
                .ok_or_else(|| bad("not a boolean")),
            Self::String => Ok(None),
            Self::Uint64 => raw
                .trim()
                .parse::<u64>()
                .map(|v| Some(v as f64))
                .map_err(|e| bad(&e.to_string())),
            Self::Int64 => raw
                .trim()
                .parse::<i64>()
                .map(|v| Some(v as f64))
                .map_err(|e| bad(&e.to_string())),
            Self::Float32 | Self::Float64 => {
                let v = raw.trim().parse::<f64>().map_err(|e| bad(&e.to_string()))?;
                if self == Self::Float32 && v.is_finite() && v.abs() > f64::from(f32::MAX) {
                    return Err(bad("out of the Float32 range"));
                }
                Ok(Some(v))
            }
            Self::Binary | Self::Object => Err(bad("has no string form")),
            t if t.scalar_range().is_some() => {
                let (lo, hi) = t.scalar_range().unwrap_or((0, 0));
                let v = raw
                    .trim()
                    .parse::<i128>()
                    .map_err(|e| bad(&e.to_string()))?;
                if v < lo || v > hi {
                    return Err(bad("out of the type's range"));
                }
                Ok(Some(v as f64))
            }
            t => {
                let elem = t.element().ok_or_else(|| bad("unsupported type"))?;
                if let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(raw) {
                    for item in items {
                        let s = match &item {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        if elem != Self::Object {
                            elem.parse(&s)?;
                        }
                    }
                    return Ok(None);
                }
                // Go's formatting of a slice, as EdgeX device services send it: `[1 2 3]`,
                // `[a b]`, or comma-separated `[a, b]`.
                let inner = raw
                    .trim()
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(|| bad("not an array"))?;
                if elem == Self::Object {
                    return Err(bad("not a JSON array"));
                }
                let items: Vec<&str> = if inner.contains(',') {
                    inner.split(',').map(str::trim).collect()
                } else {
                    inner.split_whitespace().collect()
                };
                for item in items {
                    elem.parse(item)?;
                }
                Ok(None)
            }
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ValueType {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .copied()
            .ok_or_else(|| ValueError::UnknownType(truncate(s)))
    }
}

impl<'de> Deserialize<'de> for ValueType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ValueType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an EdgeX value type name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ValueType, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Every value type's name, for an error that lists them.
fn type_names() -> String {
    ALL.iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Go's `strconv.ParseBool`, which EdgeX uses.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("unknown value type '{0}': one of {types}", types = type_names())]
    UnknownType(String),
    #[error("value '{value}' is not a valid {value_type}: {why}")]
    Invalid {
        value_type: ValueType,
        value: String,
        why: String,
    },
    #[error("value {value} is outside [{min}, {max}] of resource '{resource}'")]
    OutOfRange {
        resource: String,
        value: f64,
        min: String,
        max: String,
    },
}

/// Checks a numeric value against a resource's optional `minimum`/`maximum`.
pub fn check_bounds(
    resource: &str,
    value: f64,
    minimum: Option<f64>,
    maximum: Option<f64>,
) -> Result<(), ValueError> {
    // NaN compares false with everything: a bounded resource refuses it explicitly.
    let below = minimum.is_some_and(|m| value.is_nan() || value < m);
    let above = maximum.is_some_and(|m| value.is_nan() || value > m);
    if below || above {
        let show = |b: Option<f64>| b.map_or_else(|| "-".to_string(), |v| v.to_string());
        return Err(ValueError::OutOfRange {
            resource: resource.to_string(),
            value,
            min: show(minimum),
            max: show(maximum),
        });
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_is_outside_every_range_and_infinities_are_compared() {
        assert!(check_bounds("t", f64::NAN, Some(-40.0), Some(125.0)).is_err());
        assert!(check_bounds("t", f64::NAN, None, Some(125.0)).is_err());
        assert!(check_bounds("t", f64::NAN, Some(-40.0), None).is_err());
        assert!(
            check_bounds("t", f64::NAN, None, None).is_ok(),
            "unbounded: NaN is a value"
        );
        assert!(check_bounds("t", f64::INFINITY, None, Some(125.0)).is_err());
        assert!(check_bounds("t", f64::NEG_INFINITY, Some(-40.0), None).is_err());
        assert!(check_bounds("t", 20.0, Some(-40.0), Some(125.0)).is_ok());
    }

    #[test]
    fn names_round_trip_and_codes_are_stable() {
        for v in ALL {
            assert_eq!(v.as_str().parse::<ValueType>().unwrap(), v);
            assert_eq!(ValueType::from_code(v.code()), Some(v));
        }
        assert!("Float128".parse::<ValueType>().is_err());
        let v: ValueType = serde_json::from_str("\"float64\"").unwrap();
        assert_eq!(v, ValueType::Float64);
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"Float64\"");
        assert!(serde_json::from_str::<ValueType>("\"Float128\"").is_err());
        assert!(serde_json::from_str::<ValueType>("3").is_err());
    }

    #[test]
    fn parses_by_type() {
        assert_eq!(ValueType::Float64.parse("21.5").unwrap(), Some(21.5));
        assert_eq!(ValueType::Float32.parse("1.5e+01").unwrap(), Some(15.0));
        assert_eq!(ValueType::Int8.parse("-128").unwrap(), Some(-128.0));
        assert!(ValueType::Int8.parse("128").is_err());
        assert!(ValueType::Uint16.parse("-1").is_err());
        assert!(ValueType::Int32.parse("abc").is_err());
        assert_eq!(ValueType::Bool.parse("true").unwrap(), None);
        assert!(ValueType::Bool.parse("yes").is_err());
        assert_eq!(ValueType::String.parse("anything").unwrap(), None);
        assert!(ValueType::Int16Array.parse("[1, 2, -3]").is_ok());
        assert!(ValueType::Int16Array.parse("[1, 99999]").is_err());
        // Go's slice formatting, as EdgeX device services send arrays.
        assert!(ValueType::Int16Array.parse("[1 2 -3]").is_ok());
        assert!(ValueType::Int16Array.parse("[1 99999]").is_err());
        assert!(ValueType::StringArray.parse("[a b]").is_ok());
        assert!(ValueType::StringArray.parse("[a, b c]").is_ok());
        assert!(ValueType::BoolArray.parse("[true false]").is_ok());
        assert!(ValueType::BoolArray.parse("[true, maybe]").is_err());
        assert!(ValueType::Float64Array.parse("[1.5e+00 2]").is_ok());
        assert!(ValueType::Int8Array.parse("1 2").is_err());
        assert!(ValueType::ObjectArray.parse("[a b]").is_err());
        assert!(ValueType::Int8Array.parse("[]").is_ok());
        assert!(ValueType::BoolArray.parse("[true,false]").is_ok());
        assert!(ValueType::Float64Array.parse("nope").is_err());
        assert!(ValueType::Float32.parse("1e300").is_err());
    }

    #[test]
    fn bounds() {
        assert!(check_bounds("t", 5.0, Some(0.0), Some(10.0)).is_ok());
        assert!(check_bounds("t", -1.0, Some(0.0), None).is_err());
        assert!(check_bounds("t", 11.0, None, Some(10.0)).is_err());
    }
}
