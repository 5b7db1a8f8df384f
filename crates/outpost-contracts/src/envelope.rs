//! The bus message envelope (EdgeX `types.MessageEnvelope`) and its two encodings.
//!
//! JSON (the default) is byte-compatible with EdgeX 3.1+/4.0: the payload is embedded as a
//! JSON value. Envelopes from EdgeX services that still base64-encode the payload
//! (`EDGEX_MSG_BASE64_PAYLOAD=true`) are accepted too. CBOR is the compact option: the same
//! envelope and payload as a CBOR map, `contentType: application/cbor`. Decoding detects the
//! encoding from the first byte, so a node can switch encodings without a flag day.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::compact::CompactEvent;
use crate::event::AddEventRequest;

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_CBOR: &str = "application/cbor";

/// Payload encoding on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Json,
    Cbor,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => CONTENT_TYPE_JSON,
            Self::Cbor => CONTENT_TYPE_CBOR,
        }
    }

    /// Detects the encoding of a message from its first meaningful byte.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        let first = *bytes.iter().find(|b| !b.is_ascii_whitespace())?;
        match first {
            b'{' => Some(Self::Json),
            // CBOR major type 5 (map), definite or indefinite length.
            0xa0..=0xbb | 0xbf => Some(Self::Cbor),
            _ => None,
        }
    }
}

/// The envelope around every bus message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(rename = "receivedTopic", default)]
    pub received_topic: String,
    #[serde(rename = "correlationID", default)]
    pub correlation_id: String,
    #[serde(rename = "requestID", default)]
    pub request_id: String,
    #[serde(rename = "errorCode", default)]
    pub error_code: i32,
    pub payload: T,
    #[serde(rename = "contentType", default)]
    pub content_type: String,
    #[serde(
        rename = "queryParams",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub query_params: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is empty")]
    Empty,
    #[error("message is neither a JSON nor a CBOR envelope")]
    UnknownEncoding,
    #[error("malformed JSON envelope: {0}")]
    Json(String),
    #[error("malformed CBOR envelope: {0}")]
    Cbor(String),
    #[error("cannot encode envelope: {0}")]
    Encode(String),
}

impl<T> Envelope<T> {
    pub fn new(payload: T, correlation_id: impl Into<String>, encoding: Encoding) -> Self {
        Self {
            api_version: crate::API_VERSION.to_string(),
            received_topic: String::new(),
            correlation_id: correlation_id.into(),
            request_id: String::new(),
            error_code: 0,
            payload,
            content_type: encoding.content_type().to_string(),
            query_params: BTreeMap::new(),
        }
    }

    /// The same envelope around its payload turned by `f` into another form (decoded,
    /// expanded).
    fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Envelope<U>, E> {
        Ok(Envelope {
            payload: f(self.payload)?,
            api_version: self.api_version,
            received_topic: self.received_topic,
            correlation_id: self.correlation_id,
            request_id: self.request_id,
            error_code: self.error_code,
            content_type: self.content_type,
            query_params: self.query_params,
        })
    }
}

impl<T: Serialize> Envelope<T> {
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, EnvelopeError> {
        match encoding {
            Encoding::Json => {
                serde_json::to_vec(self).map_err(|e| EnvelopeError::Encode(e.to_string()))
            }
            Encoding::Cbor => {
                let mut out = Vec::with_capacity(256);
                ciborium::into_writer(self, &mut out)
                    .map_err(|e| EnvelopeError::Encode(e.to_string()))?;
                Ok(out)
            }
        }
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Decodes an envelope in either encoding; a base64 string payload (older EdgeX) is
    /// unwrapped and decoded per its `contentType`.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        match Encoding::detect(bytes) {
            Some(Encoding::Json) => match serde_json::from_slice::<Self>(bytes) {
                Ok(env) => Ok(env),
                Err(direct) => Self::decode_base64_payload(bytes)
                    .ok_or_else(|| EnvelopeError::Json(direct.to_string())),
            },
            Some(Encoding::Cbor) => ciborium::from_reader::<Self, _>(bytes)
                .map_err(|e| EnvelopeError::Cbor(e.to_string())),
            None => Err(EnvelopeError::UnknownEncoding),
        }
    }

    fn decode_base64_payload(bytes: &[u8]) -> Option<Self> {
        let env: Envelope<String> = serde_json::from_slice(bytes).ok()?;
        let cbor = env.content_type == CONTENT_TYPE_CBOR;
        env.try_map(|payload| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload.as_bytes())
                .map_err(drop)?;
            if cbor {
                ciborium::from_reader(raw.as_slice()).map_err(drop)
            } else {
                serde_json::from_slice(&raw).map_err(drop)
            }
        })
        .ok()
    }
}

/// Encodes an event message: an EdgeX JSON envelope, or in CBOR the compact event form
/// ([`crate::compact`]). Like EdgeX publishers, it leaves `receivedTopic` to the receiver.
pub fn encode_event(
    req: &AddEventRequest,
    correlation_id: &str,
    encoding: Encoding,
) -> Result<Vec<u8>, EnvelopeError> {
    if encoding == Encoding::Cbor
        && let Some(compact) = CompactEvent::from_event(&req.event)
    {
        return Envelope::new(compact, correlation_id, encoding).encode(encoding);
    }
    Envelope::new(req, correlation_id, encoding).encode(encoding)
}

/// Decodes an event message in any form Outpost or EdgeX sends: JSON (raw or base64
/// payload), compact CBOR, or a CBOR image of the JSON shape.
pub fn decode_event(bytes: &[u8]) -> Result<Envelope<AddEventRequest>, EnvelopeError> {
    if Encoding::detect(bytes) == Some(Encoding::Cbor)
        && let Ok(env) = ciborium::from_reader::<Envelope<CompactEvent>, _>(bytes)
    {
        return env.try_map(|compact| compact.into_request().map_err(EnvelopeError::Cbor));
    }
    Envelope::<AddEventRequest>::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v3",
            "event": {
                "apiVersion": "v3", "id": "563513b3-f020-46fa-ae44-0fdd1d129185",
                "deviceName": "d1", "profileName": "p", "sourceName": "Int8",
                "origin": 1692721935934211905i64,
                "readings": [{"deviceName": "d1", "resourceName": "Int8", "profileName": "p",
                              "origin": 1692721935934211905i64, "valueType": "Int8", "value": "42"}]
            }
        })
    }

    #[test]
    fn json_and_cbor_round_trip() {
        let req: AddEventRequest = serde_json::from_value(event_json()).unwrap();
        for enc in [Encoding::Json, Encoding::Cbor] {
            let env = Envelope::new(req.clone(), "c0ffee", enc);
            let bytes = env.encode(enc).unwrap();
            assert_eq!(Encoding::detect(&bytes), Some(enc));
            let back = Envelope::<AddEventRequest>::decode(&bytes).unwrap();
            assert_eq!(back.payload, req);
            assert_eq!(back.correlation_id, "c0ffee");
            assert_eq!(back.content_type, enc.content_type());
        }
    }

    #[test]
    fn edgex_base64_payload_is_accepted() {
        let payload = serde_json::to_vec(&event_json()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        let msg = serde_json::json!({
            "apiVersion": "v3", "receivedTopic": "", "correlationID": "x", "requestID": "y",
            "errorCode": 0, "payload": b64, "contentType": "application/json"
        });
        let env = Envelope::<AddEventRequest>::decode(&serde_json::to_vec(&msg).unwrap()).unwrap();
        assert_eq!(env.payload.event.device_name, "d1");
    }

    #[test]
    fn compact_cbor_events_round_trip_and_are_small() {
        let mut req: AddEventRequest = serde_json::from_value(event_json()).unwrap();
        req.event.readings[0].units = "C".into();
        let mut second = req.event.readings[0].clone();
        second.resource_name = "Img".into();
        second.value_type = crate::value::ValueType::Binary;
        second.value = crate::event::ReadingValue::Binary {
            data: vec![0, 1, 2, 255],
            media_type: "image/png".into(),
        };
        second.origin += 5;
        second.id = "b3f2f8a0-0000-4000-8000-000000000001".into();
        req.event.readings.push(second);
        let json = encode_event(&req, "c", Encoding::Json).unwrap();
        let cbor = encode_event(&req, "c", Encoding::Cbor).unwrap();
        assert!(
            cbor.len() * 2 < json.len(),
            "compact {} vs json {}",
            cbor.len(),
            json.len()
        );
        for bytes in [&json, &cbor] {
            let back = decode_event(bytes).unwrap();
            assert_eq!(back.payload.event, req.event);
            assert_eq!(back.correlation_id, "c");
        }
        // A CBOR image of the JSON shape is read too.
        let full = Envelope::new(req.clone(), "c", Encoding::Cbor)
            .encode(Encoding::Cbor)
            .unwrap();
        assert_eq!(decode_event(&full).unwrap().payload.event, req.event);
        // Corrupt compact messages are errors.
        assert!(decode_event(&cbor[..cbor.len() / 2]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"not json",
            b"{\"payload\": 12",
            b"{\"payload\": {\"event\": 5}}",
            &[0xa1, 0x00],
            &[0xbf, 0xff, 0xff, 0x00],
        ] {
            assert!(Envelope::<AddEventRequest>::decode(bad).is_err(), "{bad:?}");
        }
    }
}
