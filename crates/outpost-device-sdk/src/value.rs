//! Values between drivers and the platform.
//!
//! A driver reads a [`CommandValue`] (a number, text, bytes, ...) and the SDK turns it into
//! a typed EdgeX reading as the device resource declares: the read transforms (`mask`,
//! `shift`, `base`, `scale`, `offset`, in EdgeX's order), a check that the result fits the
//! value type, the resource's `minimum`/`maximum`, and EdgeX's string form. A SET goes the
//! other way: the client's value is parsed as the resource's type, checked against its
//! bounds, and the write transforms are undone (`offset`, then `scale`, then `base`) before
//! the driver sees it.

use outpost_contracts::event::ReadingValue;
use outpost_contracts::metadata::ResourceProperties;
use outpost_contracts::value::{ValueType, check_bounds, parse_bool};

/// A value as a driver produces or consumes it.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandValue {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    String(String),
    Binary(Vec<u8>),
    Object(serde_json::Value),
    Array(Vec<CommandValue>),
}

/// Why a value cannot become a reading or a device write.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("resource '{resource}': {why}")]
    Invalid { resource: String, why: String },
    #[error("resource '{resource}': value {value} is outside [{min}, {max}]")]
    OutOfRange {
        resource: String,
        value: String,
        min: String,
        max: String,
    },
}

fn invalid(resource: &str, why: impl Into<String>) -> ValueError {
    ValueError::Invalid {
        resource: resource.to_string(),
        why: why.into(),
    }
}

impl CommandValue {
    /// A value as a device sent it in JSON (or CBOR decoded to JSON): numbers stay
    /// integers where they are, objects stay objects.
    pub fn from_json(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Bool(b) => Self::Bool(*b),
            J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Self::Int(i),
                (None, Some(u), _) => Self::Uint(u),
                (_, _, Some(f)) => Self::Float(f),
                _ => Self::String(n.to_string()),
            },
            J::String(s) => Self::String(s.clone()),
            J::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                Self::Array(items.iter().map(Self::from_json).collect())
            }
            J::Null => Self::String(String::new()),
            other => Self::Object(other.clone()),
        }
    }

    /// The numeric view of a scalar.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(v) => Some(*v as f64),
            Self::Uint(v) => Some(*v as f64),
            Self::Float(v) => Some(*v),
            Self::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// Whether `self` differs from `prev` by more than `threshold` (numbers) or at all
    /// (everything else): autoEvents' `onChange`, as EdgeX compares.
    pub fn changed_from(&self, prev: &Self, threshold: Option<f64>) -> bool {
        match (self.as_f64(), prev.as_f64(), threshold) {
            (Some(a), Some(b), Some(t)) if t > 0.0 => (a - b).abs() > t,
            _ => self != prev,
        }
    }
}

/// Integer range of a scalar integer type.
fn int_range(t: ValueType) -> Option<(i128, i128)> {
    Some(match t {
        ValueType::Uint8 => (0, u8::MAX.into()),
        ValueType::Uint16 => (0, u16::MAX.into()),
        ValueType::Uint32 => (0, u32::MAX.into()),
        ValueType::Uint64 => (0, u64::MAX.into()),
        ValueType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        ValueType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        ValueType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        ValueType::Int64 => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

fn is_unsigned(t: ValueType) -> bool {
    matches!(
        t,
        ValueType::Uint8 | ValueType::Uint16 | ValueType::Uint32 | ValueType::Uint64
    )
}

/// A number on its way through the transforms: integers stay exact while they can.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Self::Int(v) => v as f64,
            Self::Float(v) => v,
        }
    }
}

fn transforms(p: &ResourceProperties) -> bool {
    p.mask.is_some()
        || p.shift.is_some()
        || p.base.is_some()
        || p.scale.is_some()
        || p.offset.is_some()
}

/// Applies EdgeX's read transforms: `mask` and `shift` (unsigned integers only), then
/// `base` (`base^v`), `scale` (`v*scale`), `offset` (`v+offset`).
fn read_transform(resource: &str, t: ValueType, p: &ResourceProperties, n: Num) -> Num {
    let _ = resource;
    let mut n = n;
    if is_unsigned(t)
        && let Num::Int(v) = n
    {
        let mut v = v;
        if let Some(mask) = p.mask {
            v &= i128::from(mask);
        }
        if let Some(shift) = p.shift {
            let s = shift.unsigned_abs().min(127) as u32;
            v = if shift >= 0 { v << s } else { v >> s };
        }
        n = Num::Int(v);
    }
    if let Some(base) = p.base {
        n = Num::Float(base.powf(n.f64()));
    }
    if let Some(scale) = p.scale {
        n = match n {
            Num::Int(v) if scale.fract() == 0.0 && scale.abs() < 1e18 => {
                Num::Int(v * scale as i128)
            }
            n => Num::Float(n.f64() * scale),
        };
    }
    if let Some(offset) = p.offset {
        n = match n {
            Num::Int(v) if offset.fract() == 0.0 && offset.abs() < 1e18 => {
                Num::Int(v + offset as i128)
            }
            n => Num::Float(n.f64() + offset),
        };
    }
    n
}

/// Undoes the transforms for a write: `offset`, then `scale`, then `base`.
fn write_transform(p: &ResourceProperties, n: Num) -> Num {
    let mut n = n;
    if let Some(offset) = p.offset {
        n = Num::Float(n.f64() - offset);
    }
    if let Some(scale) = p.scale
        && scale != 0.0
    {
        n = Num::Float(n.f64() / scale);
    }
    if let Some(base) = p.base
        && base > 0.0
        && base != 1.0
    {
        n = Num::Float(n.f64().ln() / base.ln());
    }
    n
}

/// Fits a number into an integer type: a float result of a transform is rounded, as a
/// register holds whole numbers.
fn fit_int(resource: &str, t: ValueType, n: Num) -> Result<i128, ValueError> {
    let (lo, hi) = int_range(t).ok_or_else(|| invalid(resource, "not an integer type"))?;
    let v = match n {
        Num::Int(v) => v,
        Num::Float(f) if f.is_finite() => f.round() as i128,
        Num::Float(f) => return Err(invalid(resource, format!("{f} is not a {t}"))),
    };
    if v < lo || v > hi {
        return Err(invalid(resource, format!("{v} does not fit {t}")));
    }
    Ok(v)
}

fn bounds(resource: &str, p: &ResourceProperties, v: f64) -> Result<(), ValueError> {
    check_bounds(resource, v, p.minimum, p.maximum).map_err(|_| {
        let show = |b: Option<f64>| b.map_or_else(|| "-".to_string(), |v| v.to_string());
        ValueError::OutOfRange {
            resource: resource.to_string(),
            value: v.to_string(),
            min: show(p.minimum),
            max: show(p.maximum),
        }
    })
}

/// Go's `strconv.FormatFloat(v, 'e', -1, bits)`, which EdgeX uses for float readings:
/// the shortest digits that read back, and an exponent of at least two digits with a sign.
pub fn format_float(v: f64, t: ValueType) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let s = if t == ValueType::Float32 {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn format_scalar(resource: &str, t: ValueType, v: &CommandValue) -> Result<String, ValueError> {
    Ok(match (t, v) {
        (ValueType::Bool, CommandValue::Bool(b)) => b.to_string(),
        (ValueType::Bool, CommandValue::Int(i)) => (*i != 0).to_string(),
        (ValueType::Bool, CommandValue::Uint(i)) => (*i != 0).to_string(),
        (ValueType::Bool, CommandValue::String(s)) => parse_bool(s.trim())
            .ok_or_else(|| invalid(resource, format!("'{s}' is not a boolean")))?
            .to_string(),
        (ValueType::String, CommandValue::String(s)) => s.clone(),
        (ValueType::String, other) => match other {
            CommandValue::Bool(b) => b.to_string(),
            CommandValue::Int(i) => i.to_string(),
            CommandValue::Uint(i) => i.to_string(),
            CommandValue::Float(f) => f.to_string(),
            CommandValue::Object(o) => o.to_string(),
            _ => return Err(invalid(resource, "not representable as a String")),
        },
        (t, v) if int_range(t).is_some() => {
            let n = number(resource, t, v)?;
            fit_int(resource, t, Num::Int(n))?.to_string()
        }
        (ValueType::Float32 | ValueType::Float64, v) => {
            let f = match v {
                CommandValue::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| invalid(resource, format!("'{s}' is not a number")))?,
                v => v
                    .as_f64()
                    .ok_or_else(|| invalid(resource, "not a number"))?,
            };
            if t == ValueType::Float32 && f.is_finite() && f.abs() > f64::from(f32::MAX) {
                return Err(invalid(resource, format!("{f} does not fit Float32")));
            }
            format_float(f, t)
        }
        (t, _) => return Err(invalid(resource, format!("value does not match {t}"))),
    })
}

/// An integer from a command value (used for values that already went through transforms).
fn number(resource: &str, t: ValueType, v: &CommandValue) -> Result<i128, ValueError> {
    match v {
        CommandValue::Int(i) => Ok(i128::from(*i)),
        CommandValue::Uint(u) => Ok(i128::from(*u)),
        CommandValue::Bool(b) => Ok(i128::from(*b)),
        CommandValue::Float(f) if f.fract() == 0.0 && f.is_finite() => Ok(*f as i128),
        CommandValue::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| invalid(resource, format!("'{s}' is not a {t}"))),
        _ => Err(invalid(resource, format!("value is not a {t}"))),
    }
}

/// Turns what a driver read into a reading value of `resource`: transforms, type fit,
/// bounds, EdgeX string form.
pub fn to_reading(
    resource: &str,
    p: &ResourceProperties,
    raw: CommandValue,
) -> Result<(ReadingValue, CommandValue), ValueError> {
    let t = p.value_type;
    let value = if t.is_numeric() && transforms(p) {
        let n = match &raw {
            CommandValue::Int(v) => Num::Int(i128::from(*v)),
            CommandValue::Uint(v) => Num::Int(i128::from(*v)),
            CommandValue::Float(v) => Num::Float(*v),
            CommandValue::Bool(b) => Num::Int(i128::from(*b)),
            CommandValue::String(s) => s
                .trim()
                .parse::<i128>()
                .map(Num::Int)
                .or_else(|_| s.trim().parse::<f64>().map(Num::Float))
                .map_err(|_| invalid(resource, format!("'{s}' is not a number")))?,
            _ => return Err(invalid(resource, format!("value is not a {t}"))),
        };
        let n = read_transform(resource, t, p, n);
        if int_range(t).is_some() {
            let v = fit_int(resource, t, n)?;
            if is_unsigned(t) {
                CommandValue::Uint(u64::try_from(v).unwrap_or(u64::MAX))
            } else {
                CommandValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
            }
        } else {
            CommandValue::Float(n.f64())
        }
    } else {
        raw
    };
    let reading = match (t, &value) {
        (ValueType::Binary, CommandValue::Binary(b)) => ReadingValue::Binary {
            data: b.clone(),
            media_type: if p.media_type.is_empty() {
                "application/octet-stream".into()
            } else {
                p.media_type.clone()
            },
        },
        (ValueType::Object | ValueType::ObjectArray, CommandValue::Object(o)) => {
            ReadingValue::Object(o.clone())
        }
        (ValueType::Object, CommandValue::String(s)) => ReadingValue::Object(
            serde_json::from_str(s).map_err(|_| invalid(resource, "not a JSON object"))?,
        ),
        (t, CommandValue::Array(items)) if t.is_array() => {
            let elem = t.element().unwrap_or(ValueType::String);
            let parts = items
                .iter()
                .map(|i| format_scalar(resource, elem, i))
                .collect::<Result<Vec<_>, _>>()?;
            // EdgeX device services render arrays with Go's `%v`: `[1 2 3]`.
            ReadingValue::Simple(format!("[{}]", parts.join(" ")))
        }
        (ValueType::Binary | ValueType::Object | ValueType::ObjectArray, _) => {
            return Err(invalid(resource, format!("value does not match {t}")));
        }
        (t, _) if t.is_array() => {
            return Err(invalid(resource, format!("value is not a {t}")));
        }
        (t, v) => ReadingValue::Simple(format_scalar(resource, t, v)?),
    };
    if t.is_numeric()
        && let ReadingValue::Simple(s) = &reading
        && let Ok(v) = s.parse::<f64>()
    {
        bounds(resource, p, v)?;
    }
    Ok((reading, value))
}

/// Parses a SET value for `resource` (EdgeX sends strings; JSON numbers, booleans, arrays
/// and objects are accepted too), checks it against the resource's bounds and undoes the
/// transforms, giving the value the driver writes.
pub fn from_setting(
    resource: &str,
    p: &ResourceProperties,
    raw: &serde_json::Value,
) -> Result<CommandValue, ValueError> {
    use serde_json::Value as J;
    let t = p.value_type;
    let text = match raw {
        J::String(s) => s.clone(),
        J::Null => return Err(invalid(resource, "no value")),
        other => other.to_string(),
    };
    match t {
        ValueType::Bool => parse_bool(text.trim())
            .map(CommandValue::Bool)
            .ok_or_else(|| invalid(resource, format!("'{text}' is not a Bool"))),
        ValueType::String => Ok(CommandValue::String(text)),
        ValueType::Binary => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map(CommandValue::Binary)
                .map_err(|_| invalid(resource, "a Binary value is base64 text"))
        }
        ValueType::Object | ValueType::ObjectArray => match raw {
            J::String(s) => serde_json::from_str(s)
                .map(CommandValue::Object)
                .map_err(|_| invalid(resource, "not JSON")),
            other => Ok(CommandValue::Object(other.clone())),
        },
        t if t.is_array() => {
            let elem = t.element().unwrap_or(ValueType::String);
            let items: Vec<J> = match raw {
                J::Array(a) => a.clone(),
                _ => serde_json::from_str(&text)
                    .map_err(|_| invalid(resource, format!("'{text}' is not a JSON array")))?,
            };
            let scalar = ResourceProperties {
                value_type: elem,
                ..p.clone()
            };
            items
                .iter()
                .map(|i| from_setting(resource, &scalar, i))
                .collect::<Result<Vec<_>, _>>()
                .map(CommandValue::Array)
        }
        t => {
            let s = text.trim();
            let n = if int_range(t).is_some() {
                match s.parse::<i128>() {
                    Ok(v) => Num::Int(v),
                    Err(_) if transforms(p) => s
                        .parse::<f64>()
                        .map(Num::Float)
                        .map_err(|_| invalid(resource, format!("'{s}' is not a {t}")))?,
                    Err(_) => return Err(invalid(resource, format!("'{s}' is not a {t}"))),
                }
            } else {
                Num::Float(
                    s.parse::<f64>()
                        .map_err(|_| invalid(resource, format!("'{s}' is not a {t}")))?,
                )
            };
            bounds(resource, p, n.f64())?;
            if !transforms(p) && int_range(t).is_some() {
                // The value itself must fit the declared type.
                fit_int(resource, t, n)?;
            }
            if t == ValueType::Float32 && n.f64().abs() > f64::from(f32::MAX) {
                return Err(invalid(resource, format!("{s} does not fit Float32")));
            }
            let raw = if transforms(p) {
                write_transform(p, n)
            } else {
                n
            };
            Ok(match (t, raw) {
                (ValueType::Float32 | ValueType::Float64, n) => CommandValue::Float(n.f64()),
                (t, n) if is_unsigned(t) => {
                    let v = fit_int(resource, ValueType::Uint64, n)?;
                    CommandValue::Uint(u64::try_from(v).unwrap_or(u64::MAX))
                }
                (_, n) => {
                    let v = fit_int(resource, ValueType::Int64, n)?;
                    CommandValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(t: ValueType) -> ResourceProperties {
        ResourceProperties {
            value_type: t,
            ..ResourceProperties::default()
        }
    }

    fn simple(r: Result<(ReadingValue, CommandValue), ValueError>) -> String {
        match r {
            Ok((ReadingValue::Simple(s), _)) => s,
            other => panic!("not a simple reading: {other:?}"),
        }
    }

    #[test]
    fn floats_are_formatted_as_edgex_does() {
        assert_eq!(format_float(21.5, ValueType::Float64), "2.15e+01");
        assert_eq!(format_float(0.001, ValueType::Float64), "1e-03");
        assert_eq!(format_float(0.1, ValueType::Float32), "1e-01");
        assert_eq!(format_float(-3.0e120, ValueType::Float64), "-3e+120");
        assert_eq!(format_float(0.0, ValueType::Float64), "0e+00");
    }

    #[test]
    fn read_transforms_follow_edgex_order() {
        // Raw register 0x1234: mask the low byte, shift right 4, scale 0.5, offset 1.
        let mut p = props(ValueType::Uint16);
        p.mask = Some(0x00ff);
        p.shift = Some(-4);
        let v = simple(to_reading("r", &p, CommandValue::Uint(0x1234)));
        assert_eq!(v, "3");
        // A scaled integer register read as a float.
        let mut p = props(ValueType::Float32);
        p.scale = Some(0.1);
        p.offset = Some(-40.0);
        let v = simple(to_reading("t", &p, CommandValue::Int(655)));
        assert_eq!(v, "2.55e+01");
        // An integer scale keeps integers exact.
        let mut p = props(ValueType::Int32);
        p.scale = Some(10.0);
        assert_eq!(simple(to_reading("i", &p, CommandValue::Int(-7))), "-70");
    }

    #[test]
    fn readings_must_fit_their_type_and_bounds() {
        let mut p = props(ValueType::Uint8);
        assert!(to_reading("u", &p, CommandValue::Int(300)).is_err());
        assert!(to_reading("u", &p, CommandValue::Int(-1)).is_err());
        p.maximum = Some(100.0);
        assert!(matches!(
            to_reading("u", &p, CommandValue::Uint(101)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(simple(to_reading("u", &p, CommandValue::Uint(100))), "100");
        let b = props(ValueType::Bool);
        assert_eq!(simple(to_reading("b", &b, CommandValue::Uint(1))), "true");
        let a = props(ValueType::Int16Array);
        let arr = CommandValue::Array(vec![CommandValue::Int(1), CommandValue::Int(-2)]);
        assert_eq!(simple(to_reading("a", &a, arr)), "[1 -2]");
        assert!(to_reading("s", &props(ValueType::Binary), CommandValue::Int(1)).is_err());
    }

    #[test]
    fn settings_are_parsed_checked_and_untransformed() {
        let mut p = props(ValueType::Float32);
        p.scale = Some(0.1);
        p.minimum = Some(-10.0);
        p.maximum = Some(50.0);
        let v = from_setting("t", &p, &serde_json::json!("25.5")).unwrap();
        match v {
            CommandValue::Float(f) => assert!((f - 255.0).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_setting("t", &p, &serde_json::json!("51")),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(from_setting("t", &p, &serde_json::json!("warm")).is_err());
        let u = props(ValueType::Uint16);
        assert_eq!(
            from_setting("u", &u, &serde_json::json!(7)).unwrap(),
            CommandValue::Uint(7)
        );
        assert!(from_setting("u", &u, &serde_json::json!("70000")).is_err());
        assert!(from_setting("u", &u, &serde_json::json!("-1")).is_err());
        let b = props(ValueType::Bool);
        assert_eq!(
            from_setting("b", &b, &serde_json::json!("true")).unwrap(),
            CommandValue::Bool(true)
        );
        let a = props(ValueType::Int8Array);
        assert_eq!(
            from_setting("a", &a, &serde_json::json!("[1,2]")).unwrap(),
            CommandValue::Array(vec![CommandValue::Int(1), CommandValue::Int(2)])
        );
    }

    #[test]
    fn on_change_thresholds() {
        let a = CommandValue::Float(20.0);
        assert!(!CommandValue::Float(20.5).changed_from(&a, Some(0.5)));
        assert!(CommandValue::Float(20.6).changed_from(&a, Some(0.5)));
        assert!(CommandValue::Float(20.01).changed_from(&a, None));
        assert!(!CommandValue::Float(20.0).changed_from(&a, None));
        let s = CommandValue::String("x".into());
        assert!(!CommandValue::String("x".into()).changed_from(&s, Some(1.0)));
    }
}
