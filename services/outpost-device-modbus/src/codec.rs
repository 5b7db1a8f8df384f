//! Register and bit values to and from [`CommandValue`]s, per a resource's [`Point`].
//!
//! Registers are 16-bit words; a value's bytes are taken from its registers most significant
//! first (big-endian), after the swaps: `isByteSwap` swaps the two bytes of every register,
//! `isWordSwap` reverses the order of the registers (for 32- and 64-bit values). A string
//! holds two characters per register, the first in the high byte, padded with NUL.

use outpost_contracts::value::ValueType;
use outpost_device_sdk::CommandValue;

use crate::point::{Point, Raw};

/// The bytes of `words` in value order: swaps undone, most significant first.
fn ordered_bytes(p: &Point, words: &[u16]) -> Vec<u8> {
    let mut w: Vec<u16> = words.to_vec();
    if p.word_swap && w.len() > 1 && !matches!(p.raw, Raw::String(_)) {
        w.reverse();
    }
    w.iter()
        .flat_map(|v| {
            let b = v.to_be_bytes();
            if p.byte_swap { [b[1], b[0]] } else { b }
        })
        .collect()
}

/// The registers for value bytes (most significant first): the inverse of [`ordered_bytes`].
fn to_words(p: &Point, bytes: &[u8]) -> Vec<u16> {
    let mut w: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if p.byte_swap {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if p.word_swap && w.len() > 1 && !matches!(p.raw, Raw::String(_)) {
        w.reverse();
    }
    w
}

fn array<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

/// The value of a register point from its registers (exactly `p.count()` of them).
pub fn decode_registers(p: &Point, words: &[u16]) -> Result<CommandValue, String> {
    if words.len() != usize::from(p.count()) {
        return Err(format!(
            "expected {} registers, got {}",
            p.count(),
            words.len()
        ));
    }
    if let Raw::Bit(bit) = p.raw {
        let w = words[0];
        let w = if p.byte_swap { w.swap_bytes() } else { w };
        return Ok(CommandValue::Bool((w >> bit) & 1 == 1));
    }
    let b = ordered_bytes(p, words);
    Ok(match p.raw {
        Raw::Int16 => CommandValue::Int(i16::from_be_bytes(array(&b)?).into()),
        Raw::Uint16 => CommandValue::Uint(u16::from_be_bytes(array(&b)?).into()),
        Raw::Int32 => CommandValue::Int(i32::from_be_bytes(array(&b)?).into()),
        Raw::Uint32 => CommandValue::Uint(u32::from_be_bytes(array(&b)?).into()),
        Raw::Int64 => CommandValue::Int(i64::from_be_bytes(array(&b)?)),
        Raw::Uint64 => CommandValue::Uint(u64::from_be_bytes(array(&b)?)),
        Raw::Float32 => CommandValue::Float(f32::from_be_bytes(array(&b)?).into()),
        Raw::Float64 => CommandValue::Float(f64::from_be_bytes(array(&b)?)),
        Raw::String(_) => {
            let end = b.iter().rposition(|c| *c != 0).map_or(0, |i| i + 1);
            let start = b.iter().position(|c| *c != 0).unwrap_or(end);
            CommandValue::String(String::from_utf8_lossy(&b[start..end]).into_owned())
        }
        Raw::Bit(_) => CommandValue::Bool(false),
    })
}

/// A bool from a command value (`true`, 1, "1", "true").
fn as_bool(v: &CommandValue) -> Option<bool> {
    match v {
        CommandValue::Bool(b) => Some(*b),
        CommandValue::Int(i) => Some(*i != 0),
        CommandValue::Uint(u) => Some(*u != 0),
        CommandValue::String(s) => outpost_contracts::value::parse_bool(s.trim()),
        _ => None,
    }
}

/// A whole number from a value, rounding floats (a scaled register holds whole numbers).
fn as_i128(v: &CommandValue) -> Option<i128> {
    match v {
        CommandValue::Int(i) => Some((*i).into()),
        CommandValue::Uint(u) => Some((*u).into()),
        CommandValue::Bool(b) => Some((*b).into()),
        CommandValue::Float(f) if f.is_finite() => Some(f.round() as i128),
        CommandValue::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    }
}

fn as_f64(v: &CommandValue) -> Option<f64> {
    match v {
        CommandValue::String(s) => s.trim().parse::<f64>().ok(),
        v => v.as_f64(),
    }
}

/// Bool for a coil or discrete input.
pub fn encode_bit(v: &CommandValue) -> Result<bool, String> {
    as_bool(v).ok_or_else(|| format!("{v:?} is not a Bool"))
}

/// The registers that hold `v` at a register point. A bit of a register is written by the
/// caller (it needs the register's current value): see [`set_bit`].
pub fn encode_registers(p: &Point, v: &CommandValue) -> Result<Vec<u16>, String> {
    fn int<T: TryFrom<i128>>(v: &CommandValue, raw: Raw) -> Result<T, String> {
        let n = as_i128(v).ok_or_else(|| format!("{v:?} is not a number"))?;
        T::try_from(n).map_err(|_| format!("{n} does not fit the register type {raw:?}"))
    }
    let bytes: Vec<u8> = match p.raw {
        Raw::Int16 => int::<i16>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Uint16 => int::<u16>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Int32 => int::<i32>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Uint32 => int::<u32>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Int64 => int::<i64>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Uint64 => int::<u64>(v, p.raw)?.to_be_bytes().to_vec(),
        Raw::Float32 => {
            let f = as_f64(v).ok_or_else(|| format!("{v:?} is not a number"))?;
            if f.is_finite() && f.abs() > f64::from(f32::MAX) {
                return Err(format!("{f} does not fit Float32"));
            }
            (f as f32).to_be_bytes().to_vec()
        }
        Raw::Float64 => as_f64(v)
            .ok_or_else(|| format!("{v:?} is not a number"))?
            .to_be_bytes()
            .to_vec(),
        Raw::String(n) => {
            let s = match v {
                CommandValue::String(s) => s.clone(),
                other => return Err(format!("{other:?} is not a String")),
            };
            let max = usize::from(n) * 2;
            if s.len() > max {
                return Err(format!(
                    "'{s}' is {} bytes long; the resource holds {max} ({n} registers)",
                    s.len()
                ));
            }
            let mut b = s.into_bytes();
            b.resize(max, 0);
            b
        }
        Raw::Bit(_) => return Err("a bit of a register is written with set_bit".into()),
    };
    Ok(to_words(p, &bytes))
}

/// `register` with the point's bit set to `on`.
pub fn set_bit(p: &Point, register: u16, on: bool) -> u16 {
    let bit = match p.raw {
        Raw::Bit(b) => b,
        _ => 0,
    };
    let w = if p.byte_swap {
        register.swap_bytes()
    } else {
        register
    };
    let w = if on { w | (1 << bit) } else { w & !(1 << bit) };
    if p.byte_swap { w.swap_bytes() } else { w }
}

/// What a read bit becomes for the resource's value type.
pub fn decode_bit(p: &Point, on: bool) -> CommandValue {
    match p.value_type {
        ValueType::Bool => CommandValue::Bool(on),
        _ => CommandValue::Uint(on.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::Table;

    fn point(raw: Raw, byte_swap: bool, word_swap: bool) -> Point {
        Point {
            table: Table::HoldingRegisters,
            address: 0,
            raw,
            value_type: ValueType::Int64,
            byte_swap,
            word_swap,
        }
    }

    fn round_trip(p: &Point, v: CommandValue, words: &[u16]) {
        assert_eq!(
            encode_registers(p, &v).unwrap(),
            words,
            "{p:?} encode {v:?}"
        );
        assert_eq!(
            decode_registers(p, words).unwrap(),
            v,
            "{p:?} decode {words:x?}"
        );
    }

    #[test]
    fn integers_in_every_byte_and_word_order() {
        round_trip(
            &point(Raw::Int16, false, false),
            CommandValue::Int(-1234),
            &[0xFB2E],
        );
        round_trip(
            &point(Raw::Int16, true, false),
            CommandValue::Int(-1234),
            &[0x2EFB],
        );
        round_trip(
            &point(Raw::Uint16, false, false),
            CommandValue::Uint(65535),
            &[0xFFFF],
        );
        let v = CommandValue::Uint(0x1234_5678);
        round_trip(
            &point(Raw::Uint32, false, false),
            v.clone(),
            &[0x1234, 0x5678],
        );
        round_trip(
            &point(Raw::Uint32, false, true),
            v.clone(),
            &[0x5678, 0x1234],
        );
        round_trip(
            &point(Raw::Uint32, true, false),
            v.clone(),
            &[0x3412, 0x7856],
        );
        round_trip(&point(Raw::Uint32, true, true), v, &[0x7856, 0x3412]);
        round_trip(
            &point(Raw::Int32, false, false),
            CommandValue::Int(-2),
            &[0xFFFF, 0xFFFE],
        );
        let v = CommandValue::Int(0x0102_0304_0506_0708);
        round_trip(
            &point(Raw::Int64, false, false),
            v.clone(),
            &[0x0102, 0x0304, 0x0506, 0x0708],
        );
        round_trip(
            &point(Raw::Int64, false, true),
            v,
            &[0x0708, 0x0506, 0x0304, 0x0102],
        );
        round_trip(
            &point(Raw::Uint64, false, false),
            CommandValue::Uint(u64::MAX),
            &[0xFFFF; 4],
        );
    }

    #[test]
    fn floats_strings_and_bits() {
        round_trip(
            &point(Raw::Float32, false, false),
            CommandValue::Float(21.5),
            &[0x41AC, 0x0000],
        );
        round_trip(
            &point(Raw::Float32, false, true),
            CommandValue::Float(21.5),
            &[0x0000, 0x41AC],
        );
        round_trip(
            &point(Raw::Float64, false, false),
            CommandValue::Float(-0.5),
            &[0xBFE0, 0, 0, 0],
        );
        let s = point(Raw::String(4), false, false);
        round_trip(
            &s,
            CommandValue::String("OUTPOST".into()),
            &[0x4F55, 0x5450, 0x4F53, 0x5400],
        );
        assert!(encode_registers(&s, &CommandValue::String("too long!".into())).is_err());
        let sw = point(Raw::String(1), true, false);
        round_trip(&sw, CommandValue::String("AB".into()), &[0x4241]);
        let b = point(Raw::Bit(3), false, false);
        assert_eq!(
            decode_registers(&b, &[0b1000]).unwrap(),
            CommandValue::Bool(true)
        );
        assert_eq!(
            decode_registers(&b, &[0b0111]).unwrap(),
            CommandValue::Bool(false)
        );
        assert_eq!(set_bit(&b, 0b0001, true), 0b1001);
        assert_eq!(set_bit(&b, 0xFFFF, false), 0xFFF7);
        let bs = point(Raw::Bit(0), true, false);
        assert_eq!(
            decode_registers(&bs, &[0x0100]).unwrap(),
            CommandValue::Bool(true)
        );
        assert_eq!(set_bit(&bs, 0, true), 0x0100);
    }

    #[test]
    fn writes_are_checked_against_the_register_type() {
        // A scaled Float32 resource kept in an Int16: the SDK undid the scale, we round.
        let p = point(Raw::Int16, false, false);
        assert_eq!(
            encode_registers(&p, &CommandValue::Float(254.6)).unwrap(),
            [255]
        );
        assert!(encode_registers(&p, &CommandValue::Int(40_000)).is_err());
        assert!(
            encode_registers(&point(Raw::Uint16, false, false), &CommandValue::Int(-1)).is_err()
        );
        assert!(
            encode_registers(
                &point(Raw::Float32, false, false),
                &CommandValue::Float(1e39)
            )
            .is_err()
        );
        assert!(encode_registers(&p, &CommandValue::String("x".into())).is_err());
        assert!(decode_registers(&point(Raw::Int32, false, false), &[1]).is_err());
        assert!(encode_bit(&CommandValue::String("true".into())).unwrap());
        assert!(encode_bit(&CommandValue::Float(0.5)).is_err());
    }
}
