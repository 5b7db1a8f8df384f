//! The compact CBOR form of events, the bus's binary encoding.
//!
//! Events dominate bus traffic, so their CBOR form is shaped for size, not just re-encoded
//! JSON: single-letter keys, ids as 16 raw bytes, and readings that inherit the device, the
//! profile and (unless they differ) the origin from their event. Values keep EdgeX's string
//! form, so a value crosses the bus exactly as the device reported it. Decoding restores the
//! full EdgeX event.
//!
//! | key | event | reading |
//! |---|---|---|
//! | `i` | id (16 bytes) | id (16 bytes, absent if none) |
//! | `d`, `p`, `s` | device, profile, source | — |
//! | `o` | origin (ns) | origin minus the event's (absent when equal) |
//! | `n` | — | resource name |
//! | `y` | — | value type ([`ValueType::code`]) |
//! | `u` | — | units |
//! | `v` / `b` + `m` / `j` | — | simple value / binary value + media type / object value |
//! | `t` | tags | tags |
//! | `r` | readings | — |

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{AddEventRequest, Event, Reading, ReadingValue, Tags};
use crate::value::ValueType;

/// Sixteen raw bytes (a UUID) as a CBOR byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id([u8; 16]);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = ByteBuf::deserialize(d)?;
        let arr: [u8; 16] = bytes
            .0
            .try_into()
            .map_err(|_| D::Error::custom("an id must be 16 bytes"))?;
        Ok(Self(arr))
    }
}

/// An owned byte string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn zero(v: &i64) -> bool {
    *v == 0
}

fn empty(s: &str) -> bool {
    s.is_empty()
}

fn no_tags(t: &Option<Tags>) -> bool {
    t.as_ref().is_none_or(serde_json::Map::is_empty)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactReading {
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    id: Option<Id>,
    #[serde(rename = "o", default, skip_serializing_if = "zero")]
    origin_delta: i64,
    #[serde(rename = "n")]
    resource: String,
    #[serde(rename = "y")]
    value_type: u8,
    #[serde(rename = "u", default, skip_serializing_if = "empty")]
    units: String,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    binary: Option<ByteBuf>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    object: Option<serde_json::Value>,
    #[serde(rename = "t", default, skip_serializing_if = "no_tags")]
    tags: Option<Tags>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactEvent {
    #[serde(rename = "i")]
    id: Id,
    #[serde(rename = "d")]
    device: String,
    #[serde(rename = "p")]
    profile: String,
    #[serde(rename = "s")]
    source: String,
    #[serde(rename = "o")]
    origin: i64,
    #[serde(rename = "t", default, skip_serializing_if = "no_tags")]
    tags: Option<Tags>,
    #[serde(rename = "r")]
    readings: Vec<CompactReading>,
}

fn uuid_bytes(s: &str) -> Option<Id> {
    uuid::Uuid::parse_str(s).ok().map(|u| Id(*u.as_bytes()))
}

impl CompactEvent {
    /// The compact form of `event`; `None` if its id is not a UUID (send it as full CBOR).
    pub fn from_event(e: &Event) -> Option<Self> {
        let readings = e
            .readings
            .iter()
            .map(|r| {
                let (value, binary, media_type, object) = match &r.value {
                    ReadingValue::Simple(s) => (Some(s.clone()), None, None, None),
                    ReadingValue::Binary { data, media_type } => (
                        None,
                        Some(ByteBuf(data.clone())),
                        Some(media_type.clone()),
                        None,
                    ),
                    ReadingValue::Object(v) => (None, None, None, Some(v.clone())),
                    ReadingValue::Null => (None, None, None, None),
                };
                Some(CompactReading {
                    id: if r.id.is_empty() {
                        None
                    } else {
                        Some(uuid_bytes(&r.id)?)
                    },
                    origin_delta: r.origin.wrapping_sub(e.origin),
                    resource: r.resource_name.clone(),
                    value_type: r.value_type.code(),
                    units: r.units.clone(),
                    value,
                    binary,
                    media_type,
                    object,
                    tags: r.tags.clone(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            id: uuid_bytes(&e.id)?,
            device: e.device_name.clone(),
            profile: e.profile_name.clone(),
            source: e.source_name.clone(),
            origin: e.origin,
            tags: e.tags.clone(),
            readings,
        })
    }

    /// The full EdgeX event.
    pub fn into_request(self) -> Result<AddEventRequest, String> {
        let mut readings = Vec::with_capacity(self.readings.len());
        for r in self.readings {
            let value_type = ValueType::from_code(r.value_type)
                .ok_or_else(|| format!("unknown value type code {}", r.value_type))?;
            let value = match (r.value, r.binary, r.object) {
                (Some(v), _, _) => ReadingValue::Simple(v),
                (_, Some(b), _) => ReadingValue::Binary {
                    data: b.0,
                    media_type: r.media_type.unwrap_or_default(),
                },
                (_, _, Some(o)) => ReadingValue::Object(o),
                _ => ReadingValue::Null,
            };
            readings.push(Reading {
                id: r
                    .id
                    .map(|i| uuid::Uuid::from_bytes(i.0).to_string())
                    .unwrap_or_default(),
                origin: self.origin.wrapping_add(r.origin_delta),
                device_name: self.device.clone(),
                resource_name: r.resource,
                profile_name: self.profile.clone(),
                value_type,
                units: r.units,
                tags: r.tags,
                value,
            });
        }
        Ok(AddEventRequest::new(Event {
            api_version: crate::API_VERSION.to_string(),
            id: uuid::Uuid::from_bytes(self.id.0).to_string(),
            device_name: self.device,
            profile_name: self.profile,
            source_name: self.source,
            origin: self.origin,
            readings,
            tags: self.tags,
        }))
    }
}
