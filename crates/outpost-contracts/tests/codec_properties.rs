//! Properties of the bus codecs: any event survives both encodings unchanged, and no byte
//! string makes a decoder panic.

use outpost_contracts::envelope::{Encoding, decode_event, encode_event};
use outpost_contracts::event::{AddEventRequest, Event, Reading, ReadingValue};
use outpost_contracts::value::ValueType;
use proptest::prelude::*;

fn value_type() -> impl Strategy<Value = ValueType> {
    prop::sample::select(vec![
        ValueType::Bool,
        ValueType::String,
        ValueType::Int8,
        ValueType::Uint64,
        ValueType::Float32,
        ValueType::Float64,
        ValueType::Binary,
        ValueType::Object,
        ValueType::Int16Array,
    ])
}

fn reading(device: String, profile: String, origin: i64) -> impl Strategy<Value = Reading> {
    (
        "[A-Za-z][A-Za-z0-9_-]{0,12}",
        value_type(),
        any::<[u8; 16]>(),
        -5i64..5,
        "[ -~]{0,16}",
        prop::collection::vec(any::<u8>(), 1..32),
        prop::option::of("[a-z%]{1,4}"),
    )
        .prop_map(move |(resource, vt, id, delta, text, bytes, units)| {
            let value = match vt {
                ValueType::Binary => ReadingValue::Binary {
                    data: bytes,
                    media_type: "application/octet-stream".into(),
                },
                ValueType::Object => ReadingValue::Object(serde_json::json!({"k": text})),
                _ => ReadingValue::Simple(text),
            };
            Reading {
                id: uuid::Uuid::from_bytes(id).to_string(),
                origin: origin + delta,
                device_name: device.clone(),
                resource_name: resource,
                profile_name: profile.clone(),
                value_type: vt,
                units: units.unwrap_or_default(),
                tags: None,
                value,
            }
        })
}

fn event() -> impl Strategy<Value = AddEventRequest> {
    (
        "[a-z][a-z0-9-]{0,10}",
        "[A-Z][A-Za-z]{0,10}",
        1i64..i64::MAX / 2,
        any::<[u8; 16]>(),
    )
        .prop_flat_map(|(device, profile, origin, id)| {
            let readings =
                prop::collection::vec(reading(device.clone(), profile.clone(), origin), 1..6);
            (Just((device, profile, origin, id)), readings)
        })
        .prop_map(|((device, profile, origin, id), readings)| {
            AddEventRequest::new(Event {
                api_version: "v3".into(),
                id: uuid::Uuid::from_bytes(id).to_string(),
                device_name: device,
                profile_name: profile,
                source_name: "src".into(),
                origin,
                readings,
                tags: None,
            })
        })
}

proptest! {
    #[test]
    fn events_round_trip_in_both_encodings(req in event()) {
        for enc in [Encoding::Json, Encoding::Cbor] {
            let bytes = encode_event(&req, "corr", enc).unwrap();
            let back = decode_event(&bytes).unwrap();
            prop_assert_eq!(&back.payload.event, &req.event);
            prop_assert_eq!(back.correlation_id.as_str(), "corr");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_is_an_event(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // Whatever decodes is a whole event: encoded again, it decodes to itself.
        if let Ok(env) = decode_event(&bytes) {
            let again = encode_event(&env.payload, "c", Encoding::Json).unwrap();
            prop_assert_eq!(&decode_event(&again).unwrap().payload.event, &env.payload.event);
        }
    }

    #[test]
    fn a_cut_message_is_refused_and_a_damaged_one_is_refused_or_decodes_whole(
        req in event(),
        cut in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        for enc in [Encoding::Json, Encoding::Cbor] {
            let whole = encode_event(&req, "c", enc).unwrap();
            let i = cut.index(whole.len());
            // Every strict prefix is refused: a message cut in transit is not taken as a
            // shorter event.
            prop_assert!(decode_event(&whole[..i]).is_err(), "{:?} prefix of {} bytes decoded", enc, i);
            // One damaged byte: refused, or (a flipped letter case in a key, a changed
            // digit of a value) decoded into an event that encodes and decodes to itself;
            // never a panic. EdgeX's envelope carries no checksum, so a changed digit is
            // another valid event: integrity on the wire is TLS's, and on disk the
            // journal's and the export queue's AEAD, which refuses any flipped bit
            // (`outpost-queue` format::a_sealed_frame_opens_and_any_flipped_bit_is_refused).
            let mut bytes = whole.clone();
            bytes[i] ^= flip;
            if let Ok(env) = decode_event(&bytes) {
                let again = encode_event(&env.payload, "c", enc).unwrap();
                prop_assert_eq!(&decode_event(&again).unwrap().payload.event, &env.payload.event);
            }
        }
    }
}
