//! Where a device resource lives on a Modbus device and how its value is laid out: EdgeX
//! device-modbus's resource attributes, accepted as they are.
//!
//! | attribute | meaning |
//! |---|---|
//! | `primaryTable` | `HOLDING_REGISTERS`, `INPUT_REGISTERS`, `COILS`, `DISCRETES_INPUT` |
//! | `startingAddress` | 0-based address, a number or a string; `"40.3"` is bit 3 (0 = least significant) of register 40, for a `Bool` |
//! | `rawType` | how the value is stored when it differs from `valueType` (a `Float32` resource kept in an `Int16` register, scaled by the profile's `scale`) |
//! | `isByteSwap` | the two bytes of every register are swapped |
//! | `isWordSwap` | the registers of a 32- or 64-bit value are in reverse order (least significant first) |
//! | `stringRegisterSize` | registers of a `String` (two characters each, 1 to 123) |
//!
//! Without `rawType` the value is stored as its `valueType` (`Int8`/`Uint8` in one register).
//! The registers of a value are big-endian (most significant word and byte first) unless
//! swapped. Scale, offset and the other transforms are applied by the SDK, not here.

use outpost_contracts::metadata::DeviceResource;
use outpost_contracts::value::ValueType;

/// The four Modbus tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Coils,
    DiscreteInputs,
    HoldingRegisters,
    InputRegisters,
}

impl Table {
    /// EdgeX's name, also accepted in other spellings.
    pub fn parse(s: &str) -> Option<Self> {
        let norm: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_uppercase();
        Some(match norm.as_str() {
            "COILS" | "COIL" => Self::Coils,
            "DISCRETESINPUT" | "DISCRETEINPUTS" | "DISCRETEINPUT" | "DISCRETESINPUTS" => {
                Self::DiscreteInputs
            }
            "HOLDINGREGISTERS" | "HOLDINGREGISTER" => Self::HoldingRegisters,
            "INPUTREGISTERS" | "INPUTREGISTER" => Self::InputRegisters,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Coils => "COILS",
            Self::DiscreteInputs => "DISCRETES_INPUT",
            Self::HoldingRegisters => "HOLDING_REGISTERS",
            Self::InputRegisters => "INPUT_REGISTERS",
        }
    }

    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Self::Coils | Self::DiscreteInputs)
    }

    pub fn writable(self) -> bool {
        matches!(self, Self::Coils | Self::HoldingRegisters)
    }

    /// What one element is called in messages.
    pub fn unit(self, n: u16) -> &'static str {
        match (self.is_bits(), n == 1) {
            (true, true) => "bit",
            (true, false) => "bits",
            (false, true) => "register",
            (false, false) => "registers",
        }
    }
}

/// How a value is stored in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// One bit: a coil, a discrete input, or bit `n` of a register.
    Bit(u8),
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    Float32,
    Float64,
    /// Text in this many registers.
    String(u16),
}

impl Raw {
    fn parse_numeric(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "INT16" | "INT8" => Self::Int16,
            "UINT16" | "UINT8" => Self::Uint16,
            "INT32" => Self::Int32,
            "UINT32" => Self::Uint32,
            "INT64" => Self::Int64,
            "UINT64" => Self::Uint64,
            "FLOAT32" => Self::Float32,
            "FLOAT64" => Self::Float64,
            _ => return None,
        })
    }

    /// Registers the value takes (1 for a bit).
    pub fn registers(self) -> u16 {
        match self {
            Self::Bit(_) | Self::Int16 | Self::Uint16 => 1,
            Self::Int32 | Self::Uint32 | Self::Float32 => 2,
            Self::Int64 | Self::Uint64 | Self::Float64 => 4,
            Self::String(n) => n,
        }
    }
}

/// A resource's place and layout on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub table: Table,
    /// Register or bit address (0-based).
    pub address: u16,
    pub raw: Raw,
    pub value_type: ValueType,
    pub byte_swap: bool,
    pub word_swap: bool,
}

impl Point {
    /// Registers (or bits) the point spans.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.raw.registers()
        }
    }

    /// `HOLDING_REGISTERS 40.3`, `COILS 7`, for messages.
    pub fn describe(&self) -> String {
        match self.raw {
            Raw::Bit(b) if !self.table.is_bits() => {
                format!("{} {}.{b}", self.table.name(), self.address)
            }
            _ => format!(
                "{} {} ({} {})",
                self.table.name(),
                self.address,
                self.count(),
                self.table.unit(self.count())
            ),
        }
    }
}

/// An attribute as text, whatever JSON type the profile used.
fn attribute(r: &DeviceResource, key: &str) -> Option<String> {
    let attrs = r.attributes.as_ref()?;
    let v = attrs.get(key).or_else(|| {
        attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })?;
    Some(match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    })
}

fn flag(r: &DeviceResource, key: &str) -> Result<bool, String> {
    match attribute(r, key) {
        None => Ok(false),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err(format!("{key} must be true or false, got '{v}'")),
        },
    }
}

/// A number that may be written as text, in decimal or `0x` hex.
pub fn parse_uint(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        // Hex digits only: `from_str_radix` would also take a sign (`0x+1F`).
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None => s.parse::<u64>().ok().or_else(|| {
            s.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                .map(|f| f as u64)
        }),
    }
}

/// `startingAddress`: a register or bit address, optionally `register.bit`.
fn parse_address(s: &str) -> Result<(u16, Option<u8>), String> {
    let bad =
        || format!("startingAddress '{s}' is not an address from 0 to 65535 (or register.bit)");
    let (reg, bit) = match s.split_once('.') {
        Some((r, b)) if !b.trim().chars().all(|c| c == '0') => (r, Some(b.trim())),
        Some((r, _)) => (r, None),
        None => (s, None),
    };
    let reg = parse_uint(reg)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(bad)?;
    let bit =
        match bit {
            None => None,
            Some(b) => Some(b.parse::<u8>().ok().filter(|b| *b < 16).ok_or_else(|| {
                format!("startingAddress '{s}': the bit after '.' must be 0 to 15")
            })?),
        };
    Ok((reg, bit))
}

/// The point of a resource, or every reason it has none.
pub fn parse(r: &DeviceResource) -> Result<Point, String> {
    let mut errs = Vec::new();
    let t = r.properties.value_type;
    let table = match attribute(r, "primaryTable") {
        None => {
            errs.push("attribute primaryTable is missing".to_string());
            None
        }
        Some(s) => Table::parse(&s).or_else(|| {
            errs.push(format!(
                "primaryTable '{s}' is not HOLDING_REGISTERS, INPUT_REGISTERS, COILS or DISCRETES_INPUT"
            ));
            None
        }),
    };
    let address = match attribute(r, "startingAddress") {
        None => {
            errs.push("attribute startingAddress is missing".to_string());
            None
        }
        Some(s) => parse_address(&s).map_err(|e| errs.push(e)).ok(),
    };
    let byte_swap = flag(r, "isByteSwap")
        .map_err(|e| errs.push(e))
        .unwrap_or(false);
    let word_swap = flag(r, "isWordSwap")
        .map_err(|e| errs.push(e))
        .unwrap_or(false);
    let raw_attr = attribute(r, "rawType").filter(|s| !s.is_empty());
    let raw = match (table, t) {
        (Some(table), ValueType::Bool) => {
            if raw_attr.is_some() {
                errs.push("rawType does not apply to a Bool".to_string());
            }
            let bit = address.and_then(|(_, b)| b);
            if table.is_bits() && bit.is_some() {
                errs.push(format!(
                    "{} are addressed bit by bit: startingAddress takes no '.bit'",
                    table.name()
                ));
            }
            Some(Raw::Bit(bit.unwrap_or(0)))
        }
        (Some(table), _) if table.is_bits() => {
            errs.push(format!("{} hold Bool values, not {t}", table.name()));
            None
        }
        (Some(_), ValueType::String) => {
            if raw_attr.is_some() {
                errs.push("rawType does not apply to a String".to_string());
            }
            match attribute(r, "stringRegisterSize") {
                None => {
                    errs.push(
                        "a String needs the attribute stringRegisterSize (1 to 123)".to_string(),
                    );
                    None
                }
                Some(s) => match parse_uint(&s).filter(|n| (1..=123).contains(n)) {
                    Some(n) => u16::try_from(n).ok().map(Raw::String),
                    None => {
                        errs.push(format!("stringRegisterSize '{s}' must be 1 to 123"));
                        None
                    }
                },
            }
        }
        (Some(_), t) if t.is_numeric() => {
            let name = raw_attr.clone().unwrap_or_else(|| t.to_string());
            match Raw::parse_numeric(&name) {
                Some(raw) => Some(raw),
                None => {
                    errs.push(format!(
                        "rawType '{name}' is not Int16, Uint16, Int32, Uint32, Int64, Uint64, Float32 or Float64"
                    ));
                    None
                }
            }
        }
        (Some(_), t) => {
            errs.push(format!("valueType {t} cannot be kept in Modbus registers"));
            None
        }
        (None, _) => None,
    };
    if let (Some((_, Some(_))), false) = (address, t == ValueType::Bool) {
        errs.push("a '.bit' in startingAddress is for Bool resources".to_string());
    }
    if let (Some(raw), Some((addr, _))) = (raw, address) {
        let count = if table.is_some_and(Table::is_bits) {
            1
        } else {
            raw.registers()
        };
        if u32::from(addr) + u32::from(count) > 65_536 {
            errs.push(format!(
                "the value runs past address 65535 ({count} from {addr})"
            ));
        }
    }
    match (table, address, raw, errs.is_empty()) {
        (Some(table), Some((address, _)), Some(raw), true) => Ok(Point {
            table,
            address,
            raw,
            value_type: t,
            byte_swap,
            word_swap,
        }),
        _ => Err(errs.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(vt: &str, attrs: serde_json::Value) -> DeviceResource {
        serde_json::from_value(json!({
            "name": "r", "properties": {"valueType": vt, "readWrite": "RW"}, "attributes": attrs
        }))
        .unwrap()
    }

    #[test]
    fn numbers_are_decimal_or_hex_digits_and_nothing_else() {
        assert_eq!(parse_uint("0x1F"), Some(31));
        assert_eq!(parse_uint(" 0XfF "), Some(255));
        assert_eq!(parse_uint("42"), Some(42));
        assert_eq!(parse_uint("3.0"), Some(3));
        for bad in ["0x+1F", "0x-1", "0x", "0x 1", "0x1g", "-1", "1.5"] {
            assert_eq!(parse_uint(bad), None, "{bad}");
        }
    }

    #[test]
    fn edgex_attributes_are_accepted_as_they_are() {
        let p = parse(&resource(
            "Float32",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "3", "isWordSwap": "true"}),
        ))
        .unwrap();
        assert_eq!(
            (p.table, p.address, p.raw, p.word_swap),
            (Table::HoldingRegisters, 3, Raw::Float32, true)
        );
        assert_eq!(p.count(), 2);
        let p = parse(&resource(
            "Float32",
            json!({"primaryTable": "INPUT_REGISTERS", "startingAddress": 5, "rawType": "Int16"}),
        ))
        .unwrap();
        assert_eq!((p.raw, p.count()), (Raw::Int16, 1));
        let p = parse(&resource(
            "Bool",
            json!({"primaryTable": "COILS", "startingAddress": 0}),
        ))
        .unwrap();
        assert_eq!((p.table, p.raw), (Table::Coils, Raw::Bit(0)));
        let p = parse(&resource(
            "Bool",
            json!({"primaryTable": "DISCRETES_INPUT", "startingAddress": "0x10"}),
        ))
        .unwrap();
        assert_eq!((p.table, p.address), (Table::DiscreteInputs, 16));
        let p = parse(&resource(
            "String",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 20, "stringRegisterSize": "4"}),
        ))
        .unwrap();
        assert_eq!((p.raw, p.count()), (Raw::String(4), 4));
        // A bit of a register, as a number or a string.
        for a in [json!(40.3), json!("40.3")] {
            let p = parse(&resource(
                "Bool",
                json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": a}),
            ))
            .unwrap();
            assert_eq!((p.address, p.raw, p.count()), (40, Raw::Bit(3), 1));
            assert_eq!(p.describe(), "HOLDING_REGISTERS 40.3");
        }
        let p = parse(&resource(
            "Uint8",
            json!({"primaryTable": "holding_registers", "startingAddress": 1.0}),
        ))
        .unwrap();
        assert_eq!((p.address, p.raw), (1, Raw::Uint16));
    }

    #[test]
    fn every_problem_of_a_resource_is_reported() {
        let e = parse(&resource(
            "Int32",
            json!({"primaryTable": "MEMORY", "startingAddress": "70000", "isByteSwap": "maybe"}),
        ))
        .unwrap_err();
        assert!(e.contains("primaryTable 'MEMORY'"), "{e}");
        assert!(e.contains("startingAddress '70000'"), "{e}");
        assert!(e.contains("isByteSwap"), "{e}");
        let e = parse(&resource("Int32", json!({}))).unwrap_err();
        assert!(
            e.contains("primaryTable is missing") && e.contains("startingAddress is missing"),
            "{e}"
        );
        let e = parse(&resource(
            "Int16",
            json!({"primaryTable": "COILS", "startingAddress": 1}),
        ))
        .unwrap_err();
        assert!(e.contains("COILS hold Bool values"), "{e}");
        let e = parse(&resource(
            "String",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 1}),
        ))
        .unwrap_err();
        assert!(e.contains("stringRegisterSize"), "{e}");
        let e = parse(&resource("String", json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 1, "stringRegisterSize": 124}))).unwrap_err();
        assert!(e.contains("1 to 123"), "{e}");
        let e = parse(&resource(
            "Float32",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 1, "rawType": "Int12"}),
        ))
        .unwrap_err();
        assert!(e.contains("rawType 'Int12'"), "{e}");
        let e = parse(&resource(
            "Bool",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "4.16"}),
        ))
        .unwrap_err();
        assert!(e.contains("0 to 15"), "{e}");
        let e = parse(&resource(
            "Int16",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": "4.2"}),
        ))
        .unwrap_err();
        assert!(e.contains("for Bool"), "{e}");
        let e = parse(&resource(
            "Float64",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 65534}),
        ))
        .unwrap_err();
        assert!(e.contains("past address 65535"), "{e}");
        let e = parse(&resource(
            "Binary",
            json!({"primaryTable": "HOLDING_REGISTERS", "startingAddress": 1}),
        ))
        .unwrap_err();
        assert!(e.contains("cannot be kept"), "{e}");
    }
}
