//! JSON read as EdgeX reads it: field names matched without regard to case.
//!
//! EdgeX is written in Go, whose `encoding/json` matches an object's keys to a struct's
//! fields case-insensitively (an exact match first), so EdgeX clients and tests send
//! `"AdminState"`, `"devicecommand"` or `healthCheck.Interval` and expect them taken.
//! [`from_slice`] does the same for any `Deserialize` type: each object read into a struct
//! has its keys renamed to the struct's field names they match in another case (a key that
//! matches exactly is kept; of several keys for one field, the exact one wins). Objects
//! read as maps keep their keys. A struct that flattens another (`#[serde(flatten)]`) is
//! read as a map, whose keys (and everything inside them) must then match exactly: EdgeX's
//! request wrappers, which carry `apiVersion` beside their own fields, are declared with
//! [`crate::edgex_request!`] instead, which names every field.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer as _, MapAccess,
    SeqAccess, Visitor,
};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON into `T`, matching field names case-insensitively.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let v: Value = serde_json::from_slice(bytes)?;
    T::deserialize(Loose(v))
}

/// Reads `v` into `T`, matching field names case-insensitively.
pub fn from_value<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Loose(v))
}

/// A JSON value whose objects match struct fields case-insensitively.
struct Loose(Value);

/// `map`'s keys renamed to the `fields` they match in another case.
fn rename(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    if map.keys().all(|k| fields.contains(&k.as_str())) {
        return map;
    }
    let mut out = Map::with_capacity(map.len());
    let mut inexact = Vec::new();
    for (k, v) in map {
        if fields.contains(&k.as_str()) {
            out.insert(k, v);
        } else {
            inexact.push((k, v));
        }
    }
    for (k, v) in inexact {
        match fields.iter().find(|f| f.eq_ignore_ascii_case(&k)) {
            // The exact key, if also given, wins.
            Some(f) if !out.contains_key(*f) => {
                out.insert((*f).to_string(), v);
            }
            Some(_) => {}
            None => {
                out.insert(k, v);
            }
        }
    }
    out
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = serde_json::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Loose(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        seed.deserialize(Loose(v))
    }
}

impl<'de> Deserializer<'de> for Loose {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => visitor.visit_seq(Seq(a.into_iter())),
            Value::Object(m) => visitor.visit_map(Entries {
                iter: m.into_iter(),
                value: None,
            }),
            // Scalars have nothing inside to match.
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(Loose(v)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: rename(m, fields).into_iter(),
                value: None,
            }),
            // Go reads a struct from an object only; serde would take an array in field
            // order.
            Value::Array(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &visitor)),
            other => Loose(other).deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Inner {
        admin_state: String,
        interval: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        health_check: Inner,
        items: Vec<Inner>,
        labels: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn keys_match_their_fields_in_any_case_the_exact_one_first() {
        let v: Outer = from_slice(
            br#"{"HealthCheck": {"AdminState": "LOCKED", "Interval": "1s"},
                 "ITEMS": [{"adminstate": "UNLOCKED", "adminState": "LOCKED"}],
                 "Labels": {"KeepMe": "as is"}}"#,
        )
        .unwrap();
        assert_eq!(v.health_check.admin_state, "LOCKED");
        assert_eq!(v.health_check.interval.as_deref(), Some("1s"));
        assert_eq!(v.items[0].admin_state, "LOCKED");
        assert_eq!(v.items[0].interval, None);
        assert_eq!(v.labels.get("KeepMe").map(String::as_str), Some("as is"));
    }

    #[test]
    fn type_errors_and_bad_json_are_still_errors() {
        assert!(from_slice::<Inner>(br#"{"adminState": 5}"#).is_err());
        assert!(from_slice::<Inner>(b"{not json").is_err());
        assert!(
            from_slice::<Inner>(br#"["LOCKED", "1s"]"#).is_err(),
            "an array is no struct"
        );
        assert!(from_slice::<Inner>(br#"{"interval": "1s"}"#).is_err());
    }

    #[test]
    fn request_wrappers_match_their_own_keys_and_everything_inside() {
        let r: crate::metadata::AddDeviceRequest = from_slice(
            br#"{"APIVersion": "v3", "RequestID": "r1", "Device": {"Name": "d",
                "ServiceName": "s", "ProfileName": "p", "adminstate": "LOCKED",
                "Protocols": {"Other": {"Address": "x"}}}}"#,
        )
        .unwrap();
        assert_eq!(r.base.api_version, "v3");
        assert_eq!(r.base.request_id, "r1");
        let d = serde_json::to_value(&r.device).unwrap();
        assert_eq!(
            (d["name"].as_str(), d["serviceName"].as_str()),
            (Some("d"), Some("s"))
        );
        assert_eq!(d["adminState"], "LOCKED");
        // A map keeps its keys: protocol names are the user's.
        assert_eq!(d["protocols"]["Other"]["Address"], "x");
        // Written flat, as EdgeX writes it.
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["apiVersion"], "v3");
        assert_eq!(back["device"]["name"], "d");
        let c: crate::metadata::DeviceCommandRequest = from_slice(
            br#"{"apiVersion": "v3", "profilename": "p", "devicecommand": {"name": "c"}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.profile_name.as_str(), c.device_command.name.as_str()),
            ("p", "c")
        );
    }
}
