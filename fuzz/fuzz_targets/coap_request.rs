//! A datagram sent to device-coap: the CoAP message, the route read from its options, its
//! payload decoded as the Content-Format says (and as a resource's type takes it), and a
//! Block1 transfer fed with it. Nothing may panic, and a route names a device.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::block_handler::BlockValue;
use coap_lite::{CoapOption, Packet};
use outpost_contracts::value::ValueType;
use outpost_device_coap::exchange::{Assemblies, Block};
use outpost_device_coap::route;
use outpost_device_sdk::payload::{body_value, decode, decode_as};

const TYPES: [ValueType; 5] = [
    ValueType::Float32,
    ValueType::Uint8,
    ValueType::String,
    ValueType::Binary,
    ValueType::Object,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::from_bytes(data) else {
        return;
    };
    if let Ok(r) = route::parse(&p) {
        assert!(!r.device.is_empty());
        let format = r.encoding.format();
        let t = TYPES[usize::from(data.len() as u8) % TYPES.len()];
        let _ = body_value(t, &p.payload, format);
        let _ = match format {
            Some(f) => decode_as(&p.payload, f, "timestamp"),
            None => decode(&p.payload, "timestamp"),
        };
    }
    if let Some(Ok(b)) = p.get_first_option_as::<BlockValue>(CoapOption::Block1) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 5683));
        let mut a = Assemblies::new(4096, 4, Duration::from_secs(60));
        let now = Instant::now();
        // Block 0 first, then the message's own block: never more than the limit.
        let first = BlockValue { num: 0, ..b.clone() };
        for block in [first, b] {
            if let Block::Complete(body, _) = a.take((peer, "d/r".into()), &block, &p.payload, now) {
                assert!(body.len() <= 4096);
            }
        }
    }
});
