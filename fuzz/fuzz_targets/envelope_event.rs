//! A bus message as core-data, rules and export decode it (EdgeX JSON envelope or compact
//! CBOR), then EdgeX's validation of the event: neither may panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(env) = outpost_contracts::envelope::decode_event(data) {
        let _ = env.payload.event.validate();
        let _ = env
            .payload
            .event
            .to_json(outpost_contracts::event::NumericMode::default());
    }
});
