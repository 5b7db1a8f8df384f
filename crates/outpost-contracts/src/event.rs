//! Events and readings (EdgeX `dtos.Event`, `dtos.BaseReading`).

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::{BaseRequest, BaseResponse, BaseWithTotalCountResponse};
use crate::names;
use crate::value::{ValueError, ValueType};

/// Free-form tags attached to events and readings.
pub type Tags = serde_json::Map<String, serde_json::Value>;

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

fn tags_empty(t: &Option<Tags>) -> bool {
    t.as_ref().is_none_or(serde_json::Map::is_empty)
}

/// A discrete event from one device source with one or more readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Event {
    #[serde(skip_serializing_if = "is_empty")]
    pub api_version: String,
    pub id: String,
    pub device_name: String,
    pub profile_name: String,
    pub source_name: String,
    pub origin: i64,
    pub readings: Vec<Reading>,
    #[serde(skip_serializing_if = "tags_empty")]
    pub tags: Option<Tags>,
}

/// The value of a reading: a simple value in string form, binary bytes, an object, or null.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ReadingValue {
    Simple(String),
    Binary {
        data: Vec<u8>,
        media_type: String,
    },
    Object(serde_json::Value),
    #[default]
    Null,
}

/// One reading: a typed value of one device resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub id: String,
    pub origin: i64,
    pub device_name: String,
    pub resource_name: String,
    pub profile_name: String,
    pub value_type: ValueType,
    pub units: String,
    pub tags: Option<Tags>,
    pub value: ReadingValue,
}

/// How a reading's simple value is rendered: EdgeX strings by default, JSON numbers with
/// `?numeric=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NumericMode {
    #[default]
    Strings,
    Numbers,
}

/// The wire shape of a reading (EdgeX inlines simple/binary/object readings in one object).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct WireReading {
    #[serde(skip_serializing_if = "String::is_empty")]
    id: String,
    origin: i64,
    device_name: String,
    resource_name: String,
    profile_name: String,
    value_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    units: String,
    #[serde(skip_serializing_if = "tags_empty")]
    tags: Option<Tags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_value: Option<BinaryValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_value: Option<serde_json::Value>,
}

/// `binaryValue`: Go's `[]byte`, so base64 text in JSON and a byte string in CBOR. Either
/// form is read from either encoding.
#[derive(Debug, Clone, PartialEq)]
struct BinaryValue(Vec<u8>);

impl Serialize for BinaryValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for BinaryValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BinaryValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("base64 text or a byte string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BinaryValue, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map(BinaryValue)
                    .map_err(|e| E::custom(format!("binaryValue: {e}")))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BinaryValue, E> {
                Ok(BinaryValue(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BinaryValue, E> {
                Ok(BinaryValue(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_wire(NumericMode::Strings).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireReading::deserialize(d)?;
        let value_type: ValueType = w.value_type.parse().map_err(serde::de::Error::custom)?;
        let value = if let Some(BinaryValue(data)) = w.binary_value {
            ReadingValue::Binary {
                data,
                media_type: w.media_type.unwrap_or_default(),
            }
        } else if let Some(obj) = w.object_value {
            ReadingValue::Object(obj)
        } else {
            match w.value {
                None | Some(serde_json::Value::Null) => ReadingValue::Null,
                Some(serde_json::Value::String(s)) => ReadingValue::Simple(s),
                // Numbers and booleans are accepted in their natural JSON form too.
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    ReadingValue::Simple(v.to_string())
                }
                Some(v) if value_type == ValueType::Object => ReadingValue::Object(v),
                Some(v) => ReadingValue::Simple(v.to_string()),
            }
        };
        Ok(Reading {
            id: w.id,
            origin: w.origin,
            device_name: w.device_name,
            resource_name: w.resource_name,
            profile_name: w.profile_name,
            value_type,
            units: w.units,
            tags: w.tags,
            value,
        })
    }
}

impl Reading {
    fn to_wire(&self, mode: NumericMode) -> WireReading {
        let mut w = WireReading {
            id: self.id.clone(),
            origin: self.origin,
            device_name: self.device_name.clone(),
            resource_name: self.resource_name.clone(),
            profile_name: self.profile_name.clone(),
            value_type: self.value_type.as_str().to_string(),
            units: self.units.clone(),
            tags: self.tags.clone(),
            ..WireReading::default()
        };
        match &self.value {
            ReadingValue::Simple(s) => {
                let numeric = (mode == NumericMode::Numbers && self.value_type.is_numeric())
                    .then(|| s.trim().parse::<serde_json::Number>().ok())
                    .flatten();
                w.value = Some(match numeric {
                    Some(n) => serde_json::Value::Number(n),
                    None => serde_json::Value::String(s.clone()),
                });
            }
            ReadingValue::Binary { data, media_type } => {
                w.binary_value = Some(BinaryValue(data.clone()));
                w.media_type = Some(media_type.clone());
            }
            ReadingValue::Object(v) => w.object_value = Some(v.clone()),
            ReadingValue::Null => w.value = Some(serde_json::Value::Null),
        }
        w
    }

    /// The reading as JSON, with numbers rendered per `mode`.
    pub fn to_json(&self, mode: NumericMode) -> serde_json::Value {
        serde_json::to_value(self.to_wire(mode)).unwrap_or(serde_json::Value::Null)
    }

    /// Checks the reading on its own (EdgeX's DTO validation) and returns its numeric view.
    pub fn validate(&self) -> Result<Option<f64>, String> {
        names::check("resourceName", &self.resource_name)?;
        if !self.id.is_empty() && uuid::Uuid::parse_str(&self.id).is_err() {
            return Err(format!("reading id '{}' is not a UUID", self.id));
        }
        if self.origin <= 0 {
            return Err(format!(
                "reading '{}' has no origin (nanoseconds since the Unix epoch, positive)",
                self.resource_name
            ));
        }
        match (&self.value, self.value_type) {
            (ReadingValue::Simple(s), t) => t.parse(s).map_err(|e: ValueError| e.to_string()),
            // As EdgeX: no bytes is a null reading; bytes need their mediaType.
            (ReadingValue::Binary { data, .. }, ValueType::Binary) if data.is_empty() => Ok(None),
            (ReadingValue::Binary { media_type, .. }, ValueType::Binary) => {
                if media_type.trim().is_empty() {
                    return Err(format!(
                        "binary reading '{}' needs a mediaType",
                        self.resource_name
                    ));
                }
                Ok(None)
            }
            (ReadingValue::Object(_), ValueType::Object | ValueType::ObjectArray) => Ok(None),
            (ReadingValue::Null, _) => Ok(None),
            (_, t) => Err(format!(
                "reading '{}' carries a value that does not match its valueType {t}",
                self.resource_name
            )),
        }
    }
}

impl Event {
    /// The event as JSON, with reading numbers rendered per `mode`.
    pub fn to_json(&self, mode: NumericMode) -> serde_json::Value {
        let mut v = serde_json::to_value(EventHead {
            api_version: if self.api_version.is_empty() {
                crate::API_VERSION
            } else {
                &self.api_version
            },
            id: &self.id,
            device_name: &self.device_name,
            profile_name: &self.profile_name,
            source_name: &self.source_name,
            origin: self.origin,
            tags: &self.tags,
        })
        .unwrap_or(serde_json::Value::Null);
        if let Some(map) = v.as_object_mut() {
            map.insert(
                "readings".into(),
                serde_json::Value::Array(self.readings.iter().map(|r| r.to_json(mode)).collect()),
            );
        }
        v
    }

    /// EdgeX's DTO validation: identifying fields present, a UUID id, at least one reading,
    /// readings that belong to this event's device and profile, values that parse as their
    /// declared type. Returns each reading's numeric view.
    pub fn validate(&self) -> Result<Vec<Option<f64>>, String> {
        if uuid::Uuid::parse_str(&self.id).is_err() {
            return Err(format!("event id '{}' is not a UUID", self.id));
        }
        names::check("deviceName", &self.device_name)?;
        names::check("profileName", &self.profile_name)?;
        names::check("sourceName", &self.source_name)?;
        if !self.api_version.is_empty() && self.api_version != crate::API_VERSION {
            let mut v = self.api_version.clone();
            v.truncate(v.floor_char_boundary(16));
            return Err(format!(
                "event apiVersion must be '{}', got '{v}'",
                crate::API_VERSION
            ));
        }
        if self.origin <= 0 {
            return Err("event has no origin (nanoseconds since the Unix epoch, positive)".into());
        }
        if self.readings.is_empty() {
            return Err("event has no readings".into());
        }
        let mut nums = Vec::with_capacity(self.readings.len());
        let mut ids = std::collections::HashSet::with_capacity(self.readings.len());
        for r in &self.readings {
            if !r.id.is_empty() && !ids.insert(r.id.as_str()) {
                return Err(format!("reading id '{}' appears twice in the event", r.id));
            }
            if r.device_name != self.device_name || r.profile_name != self.profile_name {
                return Err(format!(
                    "reading '{}' belongs to device '{}'/profile '{}', not the event's '{}'/'{}'",
                    r.resource_name,
                    r.device_name,
                    r.profile_name,
                    self.device_name,
                    self.profile_name
                ));
            }
            nums.push(r.validate()?);
        }
        Ok(nums)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventHead<'a> {
    api_version: &'a str,
    id: &'a str,
    device_name: &'a str,
    profile_name: &'a str,
    source_name: &'a str,
    origin: i64,
    #[serde(skip_serializing_if = "tags_empty")]
    tags: &'a Option<Tags>,
}

crate::edgex_request! {
    /// `POST /api/v3/event/{service}/{profile}/{device}/{source}` and the bus payload of an event.
    #[derive(PartialEq)]
    pub struct AddEventRequest {
        pub event: Event,
    }
}

impl AddEventRequest {
    pub fn new(event: Event) -> Self {
        Self {
            base: BaseRequest::new(),
            event,
        }
    }
}

/// `GET /event/id/{id}`, and a device service's answer to a read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub event: serde_json::Value,
}

/// Event lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiEventsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    pub events: Vec<serde_json::Value>,
}

/// Reading lists (and aggregates, which add `aggregateFunc`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MultiReadingsResponse {
    #[serde(flatten)]
    pub page: BaseWithTotalCountResponse,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_func: Option<String>,
    pub readings: Vec<serde_json::Value>,
}

/// What started a retention run (core-data, an Outpost extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionTrigger {
    /// The periodic pass.
    Interval,
    /// A request over the API (`POST /api/v3/retention/run`).
    Request,
}

/// Where a retention run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionState {
    Running,
    Done,
    Failed,
}

/// One retention run of core-data and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRun {
    pub id: uuid::Uuid,
    pub trigger: RetentionTrigger,
    pub state: RetentionState,
    /// Nanoseconds since the epoch.
    pub started: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<i64>,
    /// The age bound of this run, seconds (0: none).
    pub max_age_seconds: u64,
    pub removed_readings: u64,
    pub removed_events: u64,
    /// Readings the run expects to remove, counted as it starts (runs asked for; 0 for
    /// the periodic pass, which does not count first).
    pub to_remove: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v3/retention`: the bounds, what is stored, and the running or last run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionStatus {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub enabled: bool,
    pub interval_ms: u64,
    pub max_cap: u64,
    pub min_cap: u64,
    pub max_age_seconds: u64,
    pub stored_events: u64,
    pub stored_readings: u64,
    /// Outpost's addition: what the stored data takes on disk (the SQLite database's
    /// pages, its write-ahead log aside, or the PostgreSQL tables with their indexes and
    /// TOAST), bytes; 0 when it cannot be told.
    #[serde(default)]
    pub stored_bytes: u64,
    /// The run under way, or the last one that was asked for, removed anything or failed.
    pub run: Option<RetentionRun>,
}

/// Outpost's `GET /api/v3/device/summary`: what core-data holds of each device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummariesResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub devices: Vec<DeviceSummary>,
}

/// One device's stored events and readings, and its newest event's origin (ns; when the
/// device was last heard from).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSummary {
    pub device_name: String,
    pub event_count: u64,
    pub reading_count: u64,
    pub last_origin: i64,
}

/// `POST /api/v3/retention/run`'s answer: 202 with the run started, or 409 with the run
/// already under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRunResponse {
    #[serde(flatten)]
    pub base: BaseResponse,
    pub run: RetentionRun,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v3",
            "event": {
                "apiVersion": "v3",
                "id": "563513b3-f020-46fa-ae44-0fdd1d129185",
                "deviceName": "Random-Boolean-Device",
                "profileName": "Random-Boolean-Device",
                "sourceName": "Bool",
                "origin": 1692721935934211905i64,
                "tags": {"Gateway": "HoustonStore-000123"},
                "readings": [
                    {"deviceName": "Random-Boolean-Device", "resourceName": "Bool",
                     "profileName": "Random-Boolean-Device", "origin": 1692721935934211905i64,
                     "valueType": "Bool", "value": "false"},
                    {"deviceName": "Random-Boolean-Device", "resourceName": "Img",
                     "profileName": "Random-Boolean-Device", "origin": 1692721935934211905i64,
                     "valueType": "Binary", "binaryValue": "AQID", "mediaType": "image/png"},
                    {"deviceName": "Random-Boolean-Device", "resourceName": "Obj",
                     "profileName": "Random-Boolean-Device", "origin": 1692721935934211905i64,
                     "valueType": "Object", "objectValue": {"a": 1}}
                ]
            }
        })
    }

    fn parsed(v: serde_json::Value) -> Event {
        serde_json::from_value::<AddEventRequest>(v)
            .expect("an AddEventRequest")
            .event
    }

    #[test]
    fn what_edgex_refuses_is_refused() {
        assert!(parsed(sample()).validate().is_ok());
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "negative origin",
                Box::new(|v| v["event"]["origin"] = (-1).into()),
            ),
            (
                "negative reading origin",
                Box::new(|v| v["event"]["readings"][0]["origin"] = (-5).into()),
            ),
            (
                "apiVersion v2",
                Box::new(|v| v["event"]["apiVersion"] = "v2".into()),
            ),
            (
                "a huge apiVersion",
                Box::new(|v| v["event"]["apiVersion"] = "v".repeat(70_000).into()),
            ),
            (
                "one reading id twice",
                Box::new(|v| {
                    let id = "6a6b0e9c-4c2f-4c3e-9b3c-0c4d7e9a1f00";
                    v["event"]["readings"][0]["id"] = id.into();
                    v["event"]["readings"][1]["id"] = id.into();
                }),
            ),
            (
                "device '..'",
                Box::new(|v| {
                    v["event"]["deviceName"] = "..".into();
                    for r in v["event"]["readings"].as_array_mut().into_iter().flatten() {
                        r["deviceName"] = "..".into();
                    }
                }),
            ),
        ];
        for (what, change) in cases {
            let mut v = sample();
            change(&mut v);
            let err = parsed(v).validate().expect_err(what);
            assert!(
                err.len() < 200,
                "{what}: the error quotes too much: {}",
                err.len()
            );
        }
    }

    #[test]
    fn edgex_event_round_trips() {
        let req: AddEventRequest = serde_json::from_value(sample()).unwrap();
        req.event.validate().unwrap();
        assert_eq!(req.event.readings.len(), 3);
        assert_eq!(
            req.event.readings[1].value,
            ReadingValue::Binary {
                data: vec![1, 2, 3],
                media_type: "image/png".into()
            }
        );
        let again: AddEventRequest =
            serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
        assert_eq!(again, req);
    }

    #[test]
    fn binary_readings_need_a_media_type_and_no_bytes_is_a_null_reading() {
        let reading = |extra: serde_json::Value| -> Reading {
            let mut r =
                serde_json::json!({"resourceName": "Image", "origin": 1, "valueType": "Binary"});
            if let (Some(r), Some(e)) = (r.as_object_mut(), extra.as_object()) {
                r.extend(e.clone());
            }
            serde_json::from_value(r).unwrap()
        };
        assert!(
            reading(serde_json::json!({"binaryValue": "AQID"}))
                .validate()
                .is_err()
        );
        assert!(
            reading(serde_json::json!({"binaryValue": "AQID", "mediaType": "image/png"}))
                .validate()
                .is_ok()
        );
        assert!(
            reading(serde_json::json!({"binaryValue": null, "mediaType": "image/png"}))
                .validate()
                .is_ok()
        );
        assert!(
            reading(serde_json::json!({"binaryValue": "", "mediaType": "image/png"}))
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn cbor_binary_values_are_byte_strings() {
        let req: AddEventRequest = serde_json::from_value(sample()).unwrap();
        let mut cbor = Vec::new();
        ciborium::into_writer(&req, &mut cbor).unwrap();
        // Written as a CBOR byte string, the way EdgeX's Go services encode `[]byte`...
        let tree: ciborium::Value = ciborium::from_reader(&cbor[..]).unwrap();
        let readings = tree
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("event")))
            .and_then(|(_, e)| e.as_map())
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("readings")))
            .and_then(|(_, r)| r.as_array())
            .unwrap();
        let binary = readings[1]
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("binaryValue")))
            .map(|(_, v)| v.clone())
            .unwrap();
        assert_eq!(binary, ciborium::Value::Bytes(vec![1, 2, 3]));
        let back: AddEventRequest = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, req);
        // ...and base64 text in CBOR is read too.
        let mut text = sample();
        text["event"]["readings"][1]["binaryValue"] = "AQID".into();
        let mut cbor = Vec::new();
        ciborium::into_writer(&text, &mut cbor).unwrap();
        let back: AddEventRequest = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, req);
        let mut bad = sample();
        bad["event"]["readings"][1]["binaryValue"] = "not base64!".into();
        assert!(serde_json::from_value::<AddEventRequest>(bad).is_err());
    }

    #[test]
    fn numeric_mode_renders_numbers() {
        let mut req: AddEventRequest = serde_json::from_value(sample()).unwrap();
        req.event.readings[0].value_type = ValueType::Float64;
        req.event.readings[0].value = ReadingValue::Simple("21.5".into());
        let v = req.event.readings[0].to_json(NumericMode::Numbers);
        assert_eq!(v["value"], serde_json::json!(21.5));
        let v = req.event.readings[0].to_json(NumericMode::Strings);
        assert_eq!(v["value"], serde_json::json!("21.5"));
    }

    #[test]
    fn validation_catches_bad_events() {
        let base: AddEventRequest = serde_json::from_value(sample()).unwrap();
        let mut e = base.event.clone();
        e.id = "nope".into();
        assert!(e.validate().is_err());
        let mut e = base.event.clone();
        e.readings.clear();
        assert!(e.validate().is_err());
        let mut e = base.event.clone();
        e.readings[0].value = ReadingValue::Simple("maybe".into());
        assert!(e.validate().is_err());
        let mut e = base.event.clone();
        e.readings[0].device_name = "other".into();
        assert!(e.validate().is_err());
        let bad_type = serde_json::json!({"resourceName":"x","valueType":"Float99","value":"1"});
        assert!(serde_json::from_value::<Reading>(bad_type).is_err());
    }
}
